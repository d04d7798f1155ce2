//! The submit builder: every option of a `SubmitRequest`, sent as a Submit
//! (returns at once) or as a Run (waits, bound to the call).

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use crate::{Client, Error, Task, duration_to_proto, json_to_value, proto};

/// An accepted task.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub task: Task,
    /// An earlier submit with the same idempotency key created it.
    pub deduplicated: bool,
}

/// Options of a task to submit. Unset options take the server's defaults.
#[must_use = "a builder does nothing until sent"]
pub struct SubmitBuilder {
    client: Client,
    request: proto::SubmitRequest,
}

impl SubmitBuilder {
    pub(crate) fn new(client: Client, kind: &str) -> Self {
        Self {
            client,
            request: proto::SubmitRequest {
                kind: kind.to_owned(),
                ..Default::default()
            },
        }
    }

    /// JSON input.
    pub fn input_json(mut self, input: serde_json::Value) -> Self {
        self.request.input = Some(proto::Payload {
            data: Some(proto::payload::Data::Json(json_to_value(&input))),
            content_type: String::new(),
        });
        self
    }

    /// Binary input with its MIME type.
    pub fn input_bytes(mut self, input: impl Into<Vec<u8>>, content_type: &str) -> Self {
        self.request.input = Some(proto::Payload {
            data: Some(proto::payload::Data::Binary(input.into())),
            content_type: content_type.to_owned(),
        });
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.request.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Replaces every label.
    pub fn labels(mut self, labels: HashMap<String, String>) -> Self {
        self.request.labels = labels;
        self
    }

    /// Higher runs first among due tasks (-1000..=1000).
    pub fn priority(mut self, priority: i32) -> Self {
        self.request.priority = priority;
        self
    }

    /// The first attempt starts no earlier than this.
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.request.not_before = Some(at.into());
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry_policy().max_attempts = attempts;
        self
    }

    /// Exponential backoff between attempts.
    pub fn backoff(mut self, initial: Duration, max: Duration, multiplier: f64) -> Self {
        let retry = self.retry_policy();
        retry.initial_backoff = Some(duration_to_proto(initial));
        retry.max_backoff = Some(duration_to_proto(max));
        retry.backoff_multiplier = Some(multiplier);
        self
    }

    /// Random spread of each backoff, a fraction in [0, 1].
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.retry_policy().jitter = Some(jitter);
        self
    }

    /// Error reasons that end the task at once.
    pub fn non_retryable_reason(mut self, reason: &str) -> Self {
        self.retry_policy()
            .non_retryable_reasons
            .push(reason.to_owned());
        self
    }

    fn retry_policy(&mut self) -> &mut proto::RetryPolicy {
        self.request.retry.get_or_insert_with(Default::default)
    }

    /// Bound of one attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.request.attempt_timeout = Some(duration_to_proto(timeout));
        self
    }

    /// Bound of the whole task, relative to now.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.request.ttl = Some(duration_to_proto(ttl));
        self.request.deadline = None;
        self
    }

    /// Bound of the whole task, absolute.
    pub fn deadline(mut self, at: SystemTime) -> Self {
        self.request.deadline = Some(at.into());
        self.request.ttl = None;
        self
    }

    /// How long the finished task is kept.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.request.retention = Some(duration_to_proto(retention));
        self
    }

    /// Deduplicates submits: the same key and request return the same task.
    pub fn idempotency_key(mut self, key: &str) -> Self {
        self.request.idempotency_key = key.to_owned();
        self
    }

    /// The request as it will be sent.
    pub fn request(&self) -> &proto::SubmitRequest {
        &self.request
    }

    /// Submits the task and returns it as stored. Without an idempotency key,
    /// one is generated so that retries after a lost reply create one task.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// use std::time::Duration;
    /// let submitted = client
    ///     .submit("resize")
    ///     .input_json(serde_json::json!({"url": "https://example.com/a.png"}))
    ///     .label("team", "media")
    ///     .max_attempts(5)
    ///     .attempt_timeout(Duration::from_secs(30))
    ///     .idempotency_key("resize-a.png")
    ///     .send()
    ///     .await?;
    /// println!("{} deduplicated={}", submitted.task.id, submitted.deduplicated);
    /// # Ok(()) }
    /// ```
    pub async fn send(mut self) -> Result<Submitted, Error> {
        if self.request.idempotency_key.is_empty() {
            // Time-ordered (UUIDv7): keys made close in time sit close
            // together in the store's index of keys.
            self.request.idempotency_key = format!("vow-client-{}", uuid::Uuid::now_v7().simple());
        }
        let timeout = self.client.call_timeout;
        let response = self
            .client
            .call(
                timeout,
                // Keyed: a repeat answers with the task the first one made.
                crate::Repeat::Safe,
                |mut tasks, request| async move { tasks.submit(request).await },
                self.request,
            )
            .await?;
        Ok(Submitted {
            task: response.task.unwrap_or_default(),
            deduplicated: response.deduplicated,
        })
    }

    /// Runs the task and waits for its end, bound to this call: the task's
    /// deadline is `timeout`, and dropping the future cancels the task.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// use std::time::Duration;
    /// use vow_client::TaskExt;
    /// let task = client
    ///     .submit("echo")
    ///     .input_json(serde_json::json!({"hello": "world"}))
    ///     .run(Duration::from_secs(5))
    ///     .await?;
    /// assert!(task.is_terminal());
    /// # Ok(()) }
    /// ```
    pub async fn run(self, timeout: Duration) -> Result<Task, Error> {
        let request = self.request;
        let run = proto::RunRequest {
            kind: request.kind,
            input: request.input,
            labels: request.labels,
            priority: request.priority,
            not_before: request.not_before,
            retry: request.retry,
            attempt_timeout: request.attempt_timeout,
            deadline: request.deadline,
            ttl: request.ttl,
            retention: request.retention,
            idempotency_key: request.idempotency_key,
        };
        let response = self
            .client
            .call(
                Some(timeout),
                // A Run that was served and lost its caller cancelled its task.
                crate::Repeat::IfUnserved,
                |mut tasks, request| async move { tasks.run(request).await },
                run,
            )
            .await?;
        Ok(response.task.unwrap_or_default())
    }
}
