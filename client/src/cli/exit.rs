//! The exit-code contract of `vow`, documented in `--help`: what a task's end
//! or an error means to a calling script.

use tonic::Code;
use vow_client::{Error, Task, TaskState};

/// The process exit code of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// The command succeeded; for commands that wait, the task SUCCEEDED.
    Succeeded = 0,
    /// The task FAILED, or the server refused the request for another reason.
    Failed = 1,
    /// A usage or validation error: bad flag, unreadable input, INVALID_ARGUMENT.
    Usage = 2,
    /// The task was CANCELLED.
    Cancelled = 3,
    /// The wait ended before the task did.
    TimedOut = 4,
    /// The server could not be reached.
    Unreachable = 5,
}

impl ExitStatus {
    /// The status of a command that waited for `task`; `done` is false when
    /// the wait ended first.
    pub fn of_waited_task(task: &Task, done: bool) -> Self {
        if !done {
            return Self::TimedOut;
        }
        match task.state() {
            TaskState::Succeeded => Self::Succeeded,
            TaskState::Cancelled => Self::Cancelled,
            TaskState::Failed => Self::Failed,
            // A server that says done about an unfinished task is answered as a timeout:
            // the caller did not get a result.
            TaskState::Unspecified
            | TaskState::Queued
            | TaskState::Running
            | TaskState::RetryWait => Self::TimedOut,
        }
    }

    /// The status of a command that ended with `error`.
    pub fn of_error(error: &Error) -> Self {
        match error {
            Error::InvalidEndpoint { .. } => Self::Usage,
            Error::Unreachable { .. } | Error::TlsRejected { .. } => Self::Unreachable,
            Error::Rpc(rpc) => match rpc.code {
                Code::Unavailable => Self::Unreachable,
                Code::InvalidArgument | Code::OutOfRange => Self::Usage,
                // Too large a request: fixing it is the user's job, like a bad argument.
                Code::ResourceExhausted
                    if matches!(
                        rpc.reason.as_deref(),
                        Some("PAYLOAD_TOO_LARGE" | "REQUEST_TOO_LARGE")
                    ) =>
                {
                    Self::Usage
                }
                Code::DeadlineExceeded => Self::TimedOut,
                _ => Self::Failed,
            },
        }
    }
}
