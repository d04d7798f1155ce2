//! Task records and their vocabulary: ids, states, payloads, errors, and the
//! submit specification. Plain data shared by the engine and the stores; no I/O.

use std::{
    collections::BTreeMap,
    fmt,
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::retry::RetryPolicy;

/// Unguessable 128-bit task identifier, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(u128);

/// Random bits below the millisecond timestamp of a [`TaskId`].
const TASK_ID_RANDOM_BITS: u32 = 80;

impl TaskId {
    /// A new id: the current Unix time in milliseconds in the top 48 bits and
    /// 80 bits from the thread-local CSPRNG below (the layout of UUIDv7, less
    /// the version bits). Still unguessable, and ids made close in time sort
    /// close together, so the stores' primary-key indexes take new tasks at
    /// one end instead of dirtying a random page for each.
    pub fn generate() -> Self {
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        let random = rand::random::<u128>() & ((1 << TASK_ID_RANDOM_BITS) - 1);
        Self((millis << TASK_ID_RANDOM_BITS) | random)
    }

    /// The id as 16 big-endian bytes (byte order keeps id order).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// An id from its 16 big-endian bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    /// The smallest id, for range bounds.
    pub const MIN: TaskId = TaskId(0);
    /// The largest id, for range bounds.
    pub const MAX: TaskId = TaskId(u128::MAX);
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a task id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a task id is 32 lowercase hexadecimal digits")]
pub struct MalformedTaskId;

impl FromStr for TaskId {
    type Err = MalformedTaskId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let well_formed = text.len() == 32
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !well_formed {
            return Err(MalformedTaskId);
        }
        u128::from_str_radix(text, 16)
            .map(TaskId)
            .map_err(|_| MalformedTaskId)
    }
}

/// Where a task is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Queued,
    Running,
    RetryWait,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    /// True for the states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// True for the states an executor may claim.
    pub fn is_claimable(self) -> bool {
        matches!(self, Self::Queued | Self::RetryWait)
    }

    /// Lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::RetryWait => "retry_wait",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Input or output of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub data: PayloadData,
    /// MIME type; empty when the submitter gave none.
    pub content_type: String,
}

/// The two shapes a payload takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PayloadData {
    Json(serde_json::Value),
    Binary(#[serde(with = "hex::serde")] Vec<u8>),
}

impl Payload {
    /// A JSON payload without content type.
    pub fn json(value: serde_json::Value) -> Self {
        Self {
            data: PayloadData::Json(value),
            content_type: String::new(),
        }
    }

    /// The JSON value, when the payload is JSON.
    pub fn as_json(&self) -> Option<&serde_json::Value> {
        match &self.data {
            PayloadData::Json(value) => Some(value),
            PayloadData::Binary(_) => None,
        }
    }

    /// Approximate encoded size, used for the input size limit.
    pub fn encoded_len(&self) -> usize {
        let data_len = match &self.data {
            PayloadData::Json(value) => serde_json::to_vec(value).map_or(0, |bytes| bytes.len()),
            PayloadData::Binary(bytes) => bytes.len(),
        };
        data_len + self.content_type.len()
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::json(serde_json::Value::Null)
    }
}

/// Canonical status codes (the numbering of `google.rpc.Code`), so errors keep
/// their meaning in every language without the engine knowing gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl ErrorCode {
    const ALL: [ErrorCode; 16] = [
        Self::Cancelled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The `SCREAMING_SNAKE_CASE` name used by every gRPC implementation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "CANCELLED",
            Self::Unknown => "UNKNOWN",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Aborted => "ABORTED",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
            Self::DataLoss => "DATA_LOSS",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The numeric value of `google.rpc.Code`.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// Looks a code up by its canonical name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == name)
    }
}

/// Why an attempt or a task failed; becomes a `google.rpc.Status` with an `ErrorInfo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: ErrorCode,
    pub message: String,
    /// `ErrorInfo.reason`: a stable UPPER_SNAKE_CASE identifier.
    pub reason: String,
    /// `ErrorInfo.metadata`.
    pub metadata: BTreeMap<String, String>,
}

impl TaskError {
    /// An error whose reason is derived from its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: code.as_str().to_owned(),
            metadata: BTreeMap::new(),
        }
    }

    /// Replaces the reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// The latest progress a handler reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub percent: f32,
    pub message: String,
    pub updated_at: SystemTime,
}

/// W3C trace context captured from the submitter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
    pub baggage: String,
}

impl TraceContext {
    /// The 32-hex-digit trace id of a well-formed `traceparent`.
    pub fn trace_id(&self) -> Option<&str> {
        trace_id_of(&self.traceparent)
    }
}

/// The 32-hex-digit trace id of a well-formed W3C `traceparent`.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && trace_id.bytes().any(|byte| byte != b'0');
    valid.then_some(trace_id)
}

/// An executor's claim on a running task. Every lease change also bumps the
/// task's revision, so a compare-and-set on revision fences stale holders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node that holds it.
    pub owner: String,
    /// Fencing token, increasing with every claim in the store.
    pub token: u64,
    pub expires_at: SystemTime,
}

/// Bound of the whole task, as the submitter gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskDeadline {
    At(SystemTime),
    After(Duration),
}

/// What a client asks for at submit, validated for shape but not yet against
/// the server's limits. Its digest identifies the request for idempotency.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubmitSpec {
    pub kind: String,
    pub input: Payload,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub not_before: Option<SystemTime>,
    pub retry: RetryOverrides,
    pub attempt_timeout: Option<Duration>,
    pub deadline: Option<TaskDeadline>,
    pub retention: Option<Duration>,
    pub idempotency_key: Option<String>,
}

impl SubmitSpec {
    /// SHA-256 of the request, so a reused idempotency key with a different
    /// request can be told apart from a retry of the same one.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        // serde_json maps are sorted, so equal specs serialize identically.
        let canonical = serde_json::to_vec(self).expect("a submit spec always serializes");
        hex::encode(Sha256::digest(canonical))
    }
}

/// Retry settings a submitter may override; `None` takes the server default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RetryOverrides {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<Duration>,
    pub max_backoff: Option<Duration>,
    pub backoff_multiplier: Option<f64>,
    pub jitter: Option<f64>,
    pub non_retryable_reasons: Vec<String>,
}

/// A task as stored: the spec with defaults applied, its state and its result.
/// The embedded store writes it by field position: see `encode_record`
/// before reordering or retyping fields here or in the types it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub kind: String,
    pub state: TaskState,
    /// Shared, so copies of the record for updates and events stay cheap.
    pub input: Arc<Payload>,
    pub output: Option<Arc<Payload>>,
    pub error: Option<TaskError>,
    pub attempt: u32,
    pub retry: RetryPolicy,
    pub progress: Option<Progress>,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub trace: TraceContext,
    pub revision: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    /// When the task may next be claimed (QUEUED or RETRY_WAIT); `None` means now.
    pub next_attempt_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
    pub deadline: Option<SystemTime>,
    pub attempt_timeout: Option<Duration>,
    pub retention: Duration,
    pub idempotency_key: Option<String>,
    /// Digest of the submit request, compared on idempotent resubmits.
    pub request_fingerprint: String,
    pub cancel_requested: bool,
    /// Why a client asked to cancel, for the error message.
    pub cancel_reason: String,
    pub lease: Option<Lease>,
}

impl TaskRecord {
    /// True once the task can no longer change state.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// When the task becomes claimable, if it is waiting to be claimed.
    pub fn due_at(&self) -> Option<SystemTime> {
        self.state
            .is_claimable()
            .then(|| self.next_attempt_at.unwrap_or(self.created_at))
    }

    /// The trace id of the submitter's context, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace.trace_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_through_text() {
        let id = TaskId::generate();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<TaskId>(), Ok(id));
    }

    #[test]
    fn malformed_task_ids_are_refused() {
        for text in [
            "",
            "xyz",
            &"A".repeat(32),
            &"0".repeat(31),
            &"0".repeat(33),
            "+0000000000000000000000000000001",
        ] {
            assert_eq!(text.parse::<TaskId>(), Err(MalformedTaskId), "{text:?}");
        }
    }

    #[test]
    fn fingerprints_depend_on_every_field() {
        let base = SubmitSpec {
            kind: "echo".into(),
            input: Payload::json(serde_json::json!({"a": 1, "b": 2})),
            ..SubmitSpec::default()
        };
        let reordered = SubmitSpec {
            input: Payload::json(serde_json::json!({"b": 2, "a": 1})),
            ..base.clone()
        };
        assert_eq!(base.fingerprint(), reordered.fingerprint());
        let other_priority = SubmitSpec {
            priority: 1,
            ..base.clone()
        };
        assert_ne!(base.fingerprint(), other_priority.fingerprint());
    }

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        let trace = |traceparent: &str| TraceContext {
            traceparent: traceparent.into(),
            ..TraceContext::default()
        };
        assert_eq!(
            trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").trace_id(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace("00-00000000000000000000000000000000-00f067aa0ba902b7-01").trace_id(),
            None
        );
        assert_eq!(trace("garbage").trace_id(), None);
    }
}
