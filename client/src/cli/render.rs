//! How results reach the terminal: a key/value view of one task, an aligned
//! table of many, humanised durations, colour only where it helps (a
//! terminal, no NO_COLOR) — or, with `--output json`, one JSON object per line.

use std::{
    io::IsTerminal,
    time::{Duration, SystemTime},
};

use anstyle::{AnsiColor, Style};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use serde_json::Value;
use vow_client::{Error, Submitted, Task, TaskState, proto};

use super::{ColorChoice, ExitStatus, OutputFormat, commands::Failure, json};

/// Output longer than this is pretty-printed on lines of its own.
const INLINE_JSON_WIDTH: usize = 72;

/// Prints results in the chosen format.
pub struct Output {
    format: OutputFormat,
    color: bool,
}

impl Output {
    /// Decides once whether to colour: only a terminal, and never with NO_COLOR set.
    pub fn new(format: OutputFormat, choice: ColorChoice) -> Self {
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        Self { format, color }
    }

    /// A freshly submitted task: its id alone (so `ID=$(vow submit …)` works),
    /// or the task with `deduplicated` in JSON.
    pub fn submitted(&self, submitted: &Submitted) {
        match self.format {
            OutputFormat::Json => {
                let mut object = json::task(&submitted.task);
                object["deduplicated"] = submitted.deduplicated.into();
                println!("{object}");
            }
            OutputFormat::Human => {
                println!("{}", submitted.task.id);
                if submitted.deduplicated {
                    eprintln!(
                        "(an earlier submit with the same idempotency key created this task)"
                    );
                }
            }
        }
    }

    /// One task, as a key/value view.
    pub fn task(&self, task: &Task) {
        if self.format == OutputFormat::Json {
            println!("{}", json::task(task));
            return;
        }
        let mut lines: Vec<(&str, String)> = vec![
            ("id", task.id.clone()),
            ("kind", task.kind.clone()),
            ("state", self.state(task)),
            (
                "attempt",
                format!("{} of {}", task.attempt, task.max_attempts),
            ),
        ];
        if !task.labels.is_empty() {
            lines.push(("labels", labels(task)));
        }
        if task.priority != 0 {
            lines.push(("priority", task.priority.to_string()));
        }
        if let Some(created) = json::system_time(task.create_time.as_ref()) {
            lines.push(("created", format!("{} ago", human_duration(age(created)))));
        }
        if let Some(took) = run_time(task) {
            lines.push(("took", human_duration(took)));
        }
        if let Some(progress) = task.progress.as_ref().filter(|_| !is_terminal(task)) {
            lines.push((
                "progress",
                format!("{:.0}% {}", progress.percent, progress.message),
            ));
        }
        if let Some(output) = &task.output {
            lines.push(("output", payload_text(output)));
        }
        if let Some(error) = &task.error {
            lines.push((
                "error",
                self.paint(
                    error_text(error),
                    Style::new().fg_color(Some(AnsiColor::Red.into())),
                ),
            ));
        }
        if !task.trace_id.is_empty() {
            lines.push(("trace", task.trace_id.clone()));
        }
        let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
        for (key, value) in lines {
            let key = self.paint(format!("{key:<width$}"), Style::new().dimmed());
            println!("{key}  {value}");
        }
    }

    /// One watch message: a line with the revision, state and progress (or
    /// one JSON object with the event type and the task).
    pub fn watch_event(&self, event: &vow_client::WatchEvent) {
        let event_type = event
            .event_type
            .as_str_name()
            .trim_start_matches("WATCH_EVENT_TYPE_")
            .to_lowercase();
        if self.format == OutputFormat::Json {
            let task = event.task.as_ref().map(json::task);
            println!("{}", serde_json::json!({"type": event_type, "task": task}));
            return;
        }
        let Some(task) = &event.task else {
            println!(
                "{}",
                self.paint(format!("{event_type:<9}"), Style::new().dimmed())
            );
            return;
        };
        let mut line = format!(
            "{event_type:<9} rev {:<5} {}",
            task.revision,
            self.state(task)
        );
        if let Some(progress) = task.progress.as_ref().filter(|_| !is_terminal(task)) {
            line.push_str(&format!("  {:.0}% {}", progress.percent, progress.message));
        }
        if let Some(output) = &task.output {
            line.push_str(&format!("  output {}", payload_text(output)));
        }
        if let Some(error) = &task.error {
            line.push_str(&format!("  {}", error_text(error)));
        }
        println!("{line}");
    }

    /// Many tasks, as a table (or one JSON object per line).
    pub fn tasks(&self, tasks: &[Task]) {
        if self.format == OutputFormat::Json {
            for task in tasks {
                println!("{}", json::task(task));
            }
            return;
        }
        if tasks.is_empty() {
            println!("no tasks");
            return;
        }
        let mut table = Table::new();
        table
            .load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(["ID", "KIND", "STATE", "ATTEMPT", "AGE", "TOOK", "LABELS"]);
        if self.color {
            table.enforce_styling();
        } else {
            table.force_no_tty();
        }
        for task in tasks {
            let age = json::system_time(task.create_time.as_ref())
                .map(|created| human_duration(age(created)))
                .unwrap_or_default();
            table.add_row([
                Cell::new(&task.id),
                Cell::new(&task.kind),
                Cell::new(json::state_name(task.state())).fg(state_color(task.state())),
                Cell::new(format!("{}/{}", task.attempt, task.max_attempts)),
                Cell::new(age),
                Cell::new(run_time(task).map(human_duration).unwrap_or_default()),
                Cell::new(labels(task)),
            ]);
        }
        print_table(&mut table);
    }

    /// The server's kinds, as a table (or one JSON object per line).
    pub fn kinds(&self, kinds: &[vow_client::proto::KindInfo]) {
        if self.format == OutputFormat::Json {
            for kind in kinds {
                let last_poll = json::system_time(kind.last_poll_time.as_ref())
                    .map(|at| humantime::format_rfc3339_millis(at).to_string());
                println!(
                    "{}",
                    serde_json::json!({
                        "name": kind.name,
                        "remote": kind.remote,
                        "queued": kind.queued,
                        "pollers": kind.pollers,
                        "last_poll_time": last_poll,
                    })
                );
            }
            return;
        }
        let mut table = Table::new();
        table
            .load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(["KIND", "RUNS", "QUEUED", "POLLERS", "LAST POLL"]);
        if self.color {
            table.enforce_styling();
        } else {
            table.force_no_tty();
        }
        for kind in kinds {
            let last_poll = match json::system_time(kind.last_poll_time.as_ref()) {
                Some(at) => format!("{} ago", human_duration(age(at))),
                None if kind.remote => "never".to_owned(),
                None => String::new(),
            };
            let never_polled = kind.remote && kind.last_poll_time.is_none();
            table.add_row([
                Cell::new(&kind.name),
                Cell::new(if kind.remote { "remote" } else { "built in" }),
                Cell::new(kind.queued),
                Cell::new(if kind.remote {
                    kind.pollers.to_string()
                } else {
                    String::new()
                }),
                Cell::new(last_poll).fg(if never_polled {
                    Color::Yellow
                } else {
                    Color::Reset
                }),
            ]);
        }
        print_table(&mut table);
    }

    /// A deleted task.
    pub fn deleted(&self, id: &str) {
        match self.format {
            OutputFormat::Json => println!("{}", serde_json::json!({"id": id, "deleted": true})),
            OutputFormat::Human => println!("deleted {id}"),
        }
    }

    /// Reports a failed command on stderr and returns its exit status.
    pub fn failure(&self, failure: &Failure) -> ExitStatus {
        let status = failure.exit_status();
        let (code, message, error) = match failure {
            Failure::Client(error) => (error_code(error), error_message(error), Some(error)),
            Failure::Usage(message) => ("INVALID_ARGUMENT".to_owned(), message.clone(), None),
            Failure::Other(message) => ("UNKNOWN".to_owned(), message.clone(), None),
        };
        if self.format == OutputFormat::Json {
            // The server's own message; code and reason have fields of their own.
            let raw = error
                .and_then(Error::rpc)
                .map_or(message, |rpc| rpc.message.clone());
            eprintln!("{}", json::error(&code, &raw, error));
            return status;
        }
        eprintln!("vow: {message}");
        if let Some(error) = error {
            for (field, description) in error.violations() {
                eprintln!("  {field}: {description}");
            }
            if error.reason() == Some("TASK_NOT_FINISHED") {
                eprintln!("  `vow rm --force` cancels it first.");
            }
        }
        if let Some(Error::TlsRejected { .. }) = error {
            eprintln!(
                "  check --tls-ca-cert (the CA that signed the server's certificate), --tls-domain \
                 (a name in it) and, for mutual TLS, --tls-client-cert and --tls-client-key."
            );
        } else if status == ExitStatus::Unreachable {
            eprintln!("  is vowd running there? Point vow at it with --server or VOW_SERVER.");
        }
        status
    }

    fn state(&self, task: &Task) -> String {
        let mut name = json::state_name(task.state()).to_owned();
        if task.cancel_requested && !is_terminal(task) {
            name.push_str(" (cancel requested)");
        }
        let color = match task.state() {
            TaskState::Succeeded => AnsiColor::Green,
            TaskState::Failed => AnsiColor::Red,
            TaskState::Cancelled | TaskState::RetryWait => AnsiColor::Yellow,
            _ => AnsiColor::Cyan,
        };
        self.paint(name, Style::new().bold().fg_color(Some(color.into())))
    }

    fn paint(&self, text: String, style: Style) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text
        }
    }
}

/// Prints a borderless table: columns two spaces apart, no trailing blanks.
pub fn print_table(table: &mut Table) {
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}

/// `NOT_FOUND: no task abc [TASK_NOT_FOUND]` for server errors, the error itself otherwise.
fn error_message(error: &Error) -> String {
    let Some(rpc) = error.rpc() else {
        return error.to_string();
    };
    let mut message = format!("{}: {}", json::code_name(rpc.code as i32), rpc.message);
    if let Some(reason) = &rpc.reason {
        message.push_str(&format!(" [{reason}]"));
    }
    message
}

fn error_code(error: &Error) -> String {
    match error.code() {
        Some(code) => json::code_name(code as i32),
        None => "INVALID_ARGUMENT".to_owned(),
    }
}

fn state_color(state: TaskState) -> Color {
    match state {
        TaskState::Succeeded => Color::Green,
        TaskState::Failed => Color::Red,
        TaskState::Cancelled | TaskState::RetryWait => Color::Yellow,
        _ => Color::Cyan,
    }
}

fn is_terminal(task: &Task) -> bool {
    vow_client::TaskExt::is_terminal(task)
}

fn labels(task: &Task) -> String {
    let mut pairs: Vec<_> = task
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    pairs.sort();
    pairs.join(",")
}

fn age(time: SystemTime) -> Duration {
    SystemTime::now().duration_since(time).unwrap_or_default()
}

/// From the start of the last attempt to the end of the task.
fn run_time(task: &Task) -> Option<Duration> {
    let started = json::system_time(task.start_time.as_ref())?;
    let ended = json::system_time(task.end_time.as_ref())?;
    ended.duration_since(started).ok()
}

fn payload_text(payload: &proto::Payload) -> String {
    match &payload.data {
        Some(proto::payload::Data::Json(value)) => {
            let value: Value = vow_client::value_to_json(value);
            let inline = value.to_string();
            if inline.len() <= INLINE_JSON_WIDTH {
                return inline;
            }
            let pretty = serde_json::to_string_pretty(&value).unwrap_or(inline);
            format!("\n{}", indent(&pretty, "  "))
        }
        Some(proto::payload::Data::Binary(bytes)) => {
            format!("{} bytes of {}", bytes.len(), payload.content_type)
        }
        None => String::new(),
    }
}

fn error_text(status: &tonic_types::pb::Status) -> String {
    let mut text = format!("{}: {}", json::code_name(status.code), status.message);
    if let Some((reason, _)) = json::error_info(status) {
        text.push_str(&format!(" [{reason}]"));
    }
    text
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|line| format!("{prefix}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A duration as a person reads it: `850µs`, `12ms`, `1.5s`, `3m 4s`, `2h 5m`, `3d 4h`.
pub fn human_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    let seconds = duration.as_secs();
    match () {
        () if micros < 1_000 => format!("{micros}µs"),
        () if micros < 10_000 => format!("{:.1}ms", micros as f64 / 1_000.0),
        () if micros < 1_000_000 => format!("{}ms", micros / 1_000),
        () if seconds < 10 => format!("{:.2}s", duration.as_secs_f64()),
        () if seconds < 60 => format!("{:.1}s", duration.as_secs_f64()),
        () if seconds < 3_600 => format!("{}m {}s", seconds / 60, seconds % 60),
        () if seconds < 86_400 => format!("{}h {}m", seconds / 3_600, seconds % 3_600 / 60),
        () => format!("{}d {}h", seconds / 86_400, seconds % 86_400 / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally_at_every_scale() {
        let cases = [
            (Duration::from_micros(850), "850µs"),
            (Duration::from_micros(2_340), "2.3ms"),
            (Duration::from_millis(120), "120ms"),
            (Duration::from_millis(1_500), "1.50s"),
            (Duration::from_secs(42), "42.0s"),
            (Duration::from_secs(184), "3m 4s"),
            (Duration::from_secs(7_500), "2h 5m"),
            (Duration::from_secs(3 * 86_400 + 4 * 3_600), "3d 4h"),
        ];
        for (duration, text) in cases {
            assert_eq!(human_duration(duration), text);
        }
    }
}
