//! Reading what the user typed: task input (`JSON`, `@FILE`, `-`) and
//! `KEY=VALUE` labels.

use std::io::Read;

/// Parses a `KEY=VALUE` label.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// The task input named by the positional argument: JSON text, `@FILE`, or
/// `-` for standard input. `None` when no input was given.
pub fn read_input(argument: Option<&str>) -> Result<Option<serde_json::Value>, String> {
    let Some(argument) = argument else {
        return Ok(None);
    };
    let (text, origin) = if argument == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| format!("cannot read standard input: {error}"))?;
        (text, "standard input".to_owned())
    } else if let Some(path) = argument.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {path}: {error}"))?;
        (text, path.to_owned())
    } else {
        (argument.to_owned(), "the input argument".to_owned())
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| format!("{origin} is not valid JSON: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_label("query=a=b"),
            Ok(("query".to_owned(), "a=b".to_owned()))
        );
        assert_eq!(
            parse_label("empty="),
            Ok(("empty".to_owned(), String::new()))
        );
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=value").is_err());
    }

    #[test]
    fn inline_json_is_parsed_and_bad_json_is_explained() {
        assert_eq!(
            read_input(Some(r#"{"n": 1}"#)),
            Ok(Some(serde_json::json!({"n": 1})))
        );
        assert_eq!(read_input(None), Ok(None));
        let error = read_input(Some("{nope")).unwrap_err();
        assert!(error.contains("not valid JSON"), "{error}");
    }
}
