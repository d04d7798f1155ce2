//! The vocabulary a handler works with: task ids, payloads, and the errors
//! an attempt ends with. Plain data, shared by `vowd`'s engine and the
//! Rust worker, so a handler reads the same wherever it runs.

use std::{
    collections::BTreeMap,
    fmt,
    str::FromStr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

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

    /// The code of a `google.rpc.Code` number, if it is one (OK is not).
    pub fn from_i32(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_i32() == value)
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
    /// How long to wait before the next attempt (a `RetryInfo`), instead
    /// of the retry policy's backoff.
    #[serde(default)]
    pub retry_after: Option<Duration>,
}

impl TaskError {
    /// An error whose reason is derived from its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: code.as_str().to_owned(),
            metadata: BTreeMap::new(),
            retry_after: None,
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
