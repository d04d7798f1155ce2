//! Watching tasks: a stream that survives broken connections by resuming
//! after the last revision it delivered, and waiting for many tasks at once.

use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::{Client, Error, Task, duration_to_proto, proto};

pub use proto::{AwaitManySummary, AwaitMode, WatchEventType};

/// One message of a watch.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub event_type: WatchEventType,
    /// The task after the change; `None` for heartbeats.
    pub task: Option<Task>,
}

/// Result of an AwaitMany.
#[derive(Clone, Debug)]
pub struct AwaitedMany {
    pub done: bool,
    pub finished: Vec<Task>,
    pub not_found_ids: Vec<String>,
    pub summary: AwaitManySummary,
}

impl Client {
    /// Streams a task's changes: a snapshot, then every change in revision
    /// order, ending after the terminal one. If the connection breaks, the
    /// stream reconnects (with the client's retry policy) and resumes after
    /// the last revision it delivered, so no change is missed or repeated.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client, id: &str) -> Result<(), vow_client::Error> {
    /// use futures::StreamExt;
    /// let mut events = std::pin::pin!(client.watch(id));
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     println!("{:?} {:?}", event.event_type, event.task.map(|task| task.state()));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn watch(&self, id: &str) -> impl Stream<Item = Result<WatchEvent, Error>> + Send + use<> {
        let client = self.clone();
        let id = id.to_owned();
        async_stream::try_stream! {
            let mut after_revision = 0;
            let mut failures = 0;
            loop {
                let request = proto::WatchRequest {
                    id: id.clone(),
                    after_revision,
                    ..Default::default()
                };
                let opened = client.tasks.clone().watch(request).await;
                let mut messages = match opened {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        let error = Error::from(status);
                        failures += 1;
                        if !error.is_transient() || failures >= client.retry.max_attempts {
                            Err(error)?;
                        }
                        tokio::time::sleep(client.backoff(failures)).await;
                        continue;
                    }
                };
                let mut broken = None;
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(message) => {
                            failures = 0;
                            if let Some(task) = &message.task {
                                after_revision = after_revision.max(task.revision);
                            }
                            yield WatchEvent {
                                event_type: message.r#type(),
                                task: message.task,
                            };
                        }
                        Err(status) => {
                            broken = Some(Error::from(status));
                            break;
                        }
                    }
                }
                let Some(error) = broken else {
                    // The server ended the stream: the task finished or the call's time is up.
                    break;
                };
                failures += 1;
                if !error.is_transient() || failures >= client.retry.max_attempts {
                    Err(error)?;
                }
                tokio::time::sleep(client.backoff(failures)).await;
            }
        }
    }

    /// Waits up to `timeout` for all (`AwaitMode::All`) or any
    /// (`AwaitMode::Any`) of `ids` to finish.
    pub async fn await_many(
        &self,
        ids: &[String],
        mode: AwaitMode,
        timeout: Duration,
    ) -> Result<AwaitedMany, Error> {
        let request = proto::AwaitManyRequest {
            ids: ids.to_vec(),
            mode: mode as i32,
            timeout: Some(duration_to_proto(timeout)),
        };
        let response = self
            .call_shrinking(
                Some(timeout + crate::WAIT_SLACK),
                crate::Repeat::Safe,
                |mut tasks, request| async move { tasks.await_many(request).await },
                request,
                |request, left| {
                    request.timeout =
                        Some(duration_to_proto(left.saturating_sub(crate::WAIT_SLACK)));
                },
            )
            .await?;
        Ok(AwaitedMany {
            done: response.done,
            finished: response.finished,
            not_found_ids: response.not_found_ids,
            summary: response.summary.unwrap_or_default(),
        })
    }

    /// Backoff before retry number `failures` (1-based), with full jitter.
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let ceiling = self
            .retry
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.retry.max_backoff);
        ceiling.mul_f64(rand::random::<f64>())
    }
}
