//! JSON and `google.protobuf.Value`, both ways, as every Rust side of Vow
//! needs them: a payload's JSON travels as a `Value` so grpcurl users type
//! plain JSON.

use prost_types::value::Kind;

/// Largest magnitude below which every integer is exact in a double (2^53).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// JSON has no NaN or infinity; a `Value` that holds one has no JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFiniteNumber;

impl std::fmt::Display for NonFiniteNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("numbers must be finite")
    }
}

impl std::error::Error for NonFiniteNumber {}

/// JSON as a `google.protobuf.Value`.
pub fn to_value(json: &serde_json::Value) -> prost_types::Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(flag) => Kind::BoolValue(*flag),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        serde_json::Value::String(text) => Kind::StringValue(text.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(prost_types::Struct {
            fields: object
                .iter()
                .map(|(key, value)| (key.clone(), to_value(value)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `google.protobuf.Value` as JSON. Protobuf numbers are doubles; integral
/// ones become JSON integers, so `{"ms": 250}` reads back as an integer.
pub fn from_value(value: &prost_types::Value) -> Result<serde_json::Value, NonFiniteNumber> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(*flag),
        Some(Kind::NumberValue(number)) => number_to_json(*number)?,
        Some(Kind::StringValue(text)) => serde_json::Value::String(text.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .iter()
                .map(from_value)
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(object)) => serde_json::Value::Object(
            object
                .fields
                .iter()
                .map(|(key, value)| Ok((key.clone(), from_value(value)?)))
                .collect::<Result<_, NonFiniteNumber>>()?,
        ),
    })
}

fn number_to_json(number: f64) -> Result<serde_json::Value, NonFiniteNumber> {
    if number.fract() == 0.0 && number.abs() <= EXACT_INTEGER_LIMIT {
        return Ok(serde_json::Value::from(number as i64));
    }
    serde_json::Number::from_f64(number)
        .map(serde_json::Value::Number)
        .ok_or(NonFiniteNumber)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_the_round_trip() {
        let json = serde_json::json!({"a": [1, 2.5, null, true, "x"], "b": {"c": {}}, "big": 9007199254740992i64});
        assert_eq!(from_value(&to_value(&json)), Ok(json));
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let nan = prost_types::Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert_eq!(from_value(&nan), Err(NonFiniteNumber));
    }
}
