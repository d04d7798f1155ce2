//! Doorways for the fuzz targets in `fuzz/` (cargo feature `fuzzing`):
//! the conversions and checks every RPC runs on its request before it
//! calls the engine, the `grpc-timeout` and `traceparent` parsers, the auth
//! file and JWT checks, and the embedded store's record codec. Nothing here
//! is new logic: each item is the code the server runs, re-exported or
//! wrapped with the defaults `vowd` starts with. Not an API: only `fuzz/`
//! builds this feature.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    auth::file::JwtEntry,
    engine::{HandlerRegistry, KindSettings, retry::RetryPolicy, task::Lease, transitions},
    handlers::builtin_registry,
};
pub use crate::{
    auth::{
        AccessConfig, Denial, Grant, NamespaceGrant, Permission, authenticate, authorize,
        jwt::JwtVerifier, permission_for,
    },
    engine::{
        EngineConfig, EngineError, Kinds, Scope,
        task::{SubmitSpec, TaskDeadline, TaskId, TaskRecord, TaskState, TraceContext},
        transitions::AttemptOutcome,
        workers::{LeaseToken, PollSpec, RemoteOutcome},
    },
    grpc::{
        convert::{
            await_many, await_timeout, cancel_reason, encode_page_token, list_query, run_as_submit,
            submit_spec, task_id, task_to_proto, watch_filter,
        },
        deadline::{await_bound, call_timeout, parse_grpc_timeout, usable},
        worker_convert::{outcome, poll_spec, progress, release},
    },
    store::embedded::schema::{Columns, decode_record, encode_record},
    telemetry::propagation::{parse_traceparent, trace_id_of, traceparent_of},
};

/// The kind the fuzzing engine declares as run by remote workers.
pub const REMOTE_KIND: &str = "remote";

/// What a submit or a poll is checked against: `vowd`'s default configuration, its
/// built-in handlers and one remote kind.
pub struct SubmitChecks {
    pub config: EngineConfig,
    kinds: Kinds,
    handlers: HandlerRegistry,
}

impl Default for SubmitChecks {
    fn default() -> Self {
        let handlers = builtin_registry();
        let configured = [(
            REMOTE_KIND.to_owned(),
            KindSettings {
                remote: true,
                ..KindSettings::default()
            },
        )]
        .into();
        let kinds = Kinds::new(&handlers, &configured).expect("a valid remote kind");
        Self {
            config: EngineConfig::default(),
            kinds,
            handlers,
        }
    }
}

impl SubmitChecks {
    /// The engine's validation of a converted Submit or Run.
    pub fn validate(&self, spec: &SubmitSpec, now: SystemTime) -> Result<(), EngineError> {
        crate::engine::validate::validate(spec, &self.config, &self.kinds, &self.handlers, now)
    }

    /// The engine's check of a converted Poll.
    pub fn check_poll(&self, spec: &PollSpec) -> Result<(), EngineError> {
        crate::engine::workers::check_poll(spec, &self.kinds, self.config.max_lease_duration)
    }
}

/// A remote attempt of a `remote` task, running since `now`, as a poll
/// leaves it: attempt `attempt` of `max_attempts`.
pub fn running_remote_task(attempt: u32, max_attempts: u32, now: SystemTime) -> TaskRecord {
    TaskRecord {
        id: TaskId::generate(),
        kind: REMOTE_KIND.into(),
        state: TaskState::Running,
        input: Arc::default(),
        output: None,
        error: None,
        attempt,
        retry: RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        },
        progress: None,
        labels: Default::default(),
        priority: 0,
        trace: TraceContext::default(),
        revision: 2,
        created_at: now,
        updated_at: now,
        started_at: Some(now),
        ended_at: None,
        next_attempt_at: None,
        expires_at: None,
        deadline: None,
        attempt_timeout: None,
        retention: Duration::from_secs(60),
        idempotency_key: None,
        request_fingerprint: String::new(),
        cancel_requested: false,
        cancel_reason: String::new(),
        lease: Some(Lease {
            owner: "worker".into(),
            token: 1,
            expires_at: now + Duration::from_secs(30),
            remote: None,
        }),
        worker_id: "worker".into(),
        completed_by: None,
        namespace: "default".into(),
    }
}

/// Applies a worker's Complete to a running task, as the engine's
/// `complete` does inside its compare-and-set.
pub fn finish_remote_attempt(
    task: &mut TaskRecord,
    outcome: &RemoteOutcome,
    now: SystemTime,
    unit_random: f64,
) {
    let attempt_outcome = match outcome {
        RemoteOutcome::Output(output) => AttemptOutcome::Succeeded(output.clone()),
        RemoteOutcome::Error(error) => AttemptOutcome::Failed(error.clone()),
    };
    transitions::finish_attempt(task, attempt_outcome, now, unit_random);
}

/// A verifier of JWTs against the JWKS `jwks` (as if read from a file),
/// for tokens of `issuer` and `audience`, with the default claim names.
pub fn jwt_verifier(jwks: &str, issuer: &str, audience: &str) -> Result<JwtVerifier, String> {
    let entry = JwtEntry {
        jwks_file: "jwks.json".into(),
        issuer: issuer.into(),
        audience: audience.into(),
        namespace_claim: "vow_namespace".into(),
        permissions_claim: "vow_permissions".into(),
        name_claim: "sub".into(),
    };
    JwtVerifier::from_jwks(entry, jwks, Path::new("jwks.json"))
}
