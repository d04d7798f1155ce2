//! The Prometheus recorder behind the `metrics`
//! facade, and the `/metrics` endpoint that renders it on its own port.

use std::{future::Future, sync::OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// From half a millisecond (an echo round trip) to five minutes (a long attempt).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The process's metrics recorder, installed on first use. The `metrics`
/// macros record nothing until it is installed.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Buckets make real histograms (aggregatable across replicas), not summaries.
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_SECONDS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// Serves `GET /metrics` in the Prometheus text format until `shutdown`, on
/// a plain `TcpListener` or on TLS connections (`crate::tls::TlsListener`).
pub async fn serve_metrics<L>(
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let handle = metrics_handle();
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Names and labels of every metric, in one place. The `metrics` macros
/// record nothing (and cost next to nothing) until a recorder is installed.
pub mod record {
    use std::{
        collections::BTreeMap,
        sync::atomic::{AtomicBool, Ordering},
        time::Duration,
    };

    /// Whether task counters carry a `namespace` label (on by default).
    static NAMESPACE_LABEL: AtomicBool = AtomicBool::new(true);

    /// Drops the `namespace` label, for a vowd with too many namespaces
    /// for a series each.
    pub fn without_namespace_label() {
        NAMESPACE_LABEL.store(false, Ordering::Relaxed);
    }

    /// A namespace as a label value; one value for all when the label is off.
    fn namespace_label(namespace: &str) -> String {
        if NAMESPACE_LABEL.load(Ordering::Relaxed) {
            namespace.to_owned()
        } else {
            "all".to_owned()
        }
    }

    /// A task was accepted.
    pub fn submitted(kind: &str, namespace: &str) {
        metrics::counter!(
            "vow_tasks_submitted_total",
            "kind" => kind.to_owned(),
            "namespace" => namespace_label(namespace)
        )
        .increment(1);
    }

    /// A task reached a terminal state, `submit_to_finish` after it was accepted.
    pub fn finished(kind: &str, namespace: &str, state: &'static str, submit_to_finish: Duration) {
        metrics::counter!(
            "vow_tasks_finished_total",
            "kind" => kind.to_owned(),
            "namespace" => namespace_label(namespace),
            "state" => state
        )
        .increment(1);
        metrics::histogram!("vow_task_submit_to_finish_seconds", "kind" => kind.to_owned())
            .record(submit_to_finish.as_secs_f64());
    }

    /// An attempt started; a first attempt after waiting `queue_wait` since submit.
    pub fn attempt_started(kind: &str, queue_wait: Option<Duration>) {
        metrics::counter!("vow_attempts_total", "kind" => kind.to_owned()).increment(1);
        if let Some(queue_wait) = queue_wait {
            metrics::histogram!("vow_task_queue_wait_seconds", "kind" => kind.to_owned())
                .record(queue_wait.as_secs_f64());
        }
    }

    /// An attempt ended after `run_time`; `outcome` is succeeded, failed,
    /// timed_out, deadline_exceeded, cancelled, panicked or handed_back.
    pub fn attempt_finished(kind: &str, outcome: &'static str, run_time: Duration) {
        metrics::histogram!("vow_attempt_duration_seconds", "kind" => kind.to_owned(), "outcome" => outcome)
            .record(run_time.as_secs_f64());
        if outcome == "panicked" {
            metrics::counter!("vow_handler_panics_total", "kind" => kind.to_owned()).increment(1);
        }
    }

    /// The outcome of an attempt could not be stored before its lease was
    /// lost: the attempt's work is lost, and the task runs again if
    /// attempts remain.
    pub fn outcome_lost(kind: &str) {
        metrics::counter!("vow_outcomes_lost_total", "kind" => kind.to_owned()).increment(1);
    }

    /// How long this replica has not heard other replicas' changes (zero
    /// while it listens).
    pub fn listener_deaf(for_how_long: Duration) {
        metrics::gauge!("vow_change_listener_deaf_seconds").set(for_how_long.as_secs_f64());
    }

    /// Followers of some tasks (`scope` "tasks") or of all (`scope` "all")
    /// were told to read the store again: changes were committed that this
    /// replica could not read.
    pub fn resynced(scope: &'static str) {
        metrics::counter!("vow_change_resyncs_total", "scope" => scope).increment(1);
    }

    /// A failed attempt will be retried.
    pub fn retry_scheduled(kind: &str) {
        metrics::counter!("vow_retries_total", "kind" => kind.to_owned()).increment(1);
    }

    /// Attempts running in this process.
    pub fn running(count: usize) {
        metrics::gauge!("vow_running_tasks").set(count as f64);
    }

    /// Waiting tasks (`vow_queue_depth`) and held leases, in-process and
    /// remote (`vow_leases_held`), per kind, over every executor; kinds no
    /// longer counted are set to zero.
    pub fn kind_counts<C: KindCountsView>(
        counts: &BTreeMap<String, C>,
        previous_kinds: &mut Vec<String>,
    ) {
        for kind in previous_kinds
            .iter()
            .filter(|kind| !counts.contains_key(*kind))
        {
            metrics::gauge!("vow_queue_depth", "kind" => kind.clone()).set(0.0);
            metrics::gauge!("vow_leases_held", "kind" => kind.clone()).set(0.0);
        }
        for (kind, counts) in counts {
            metrics::gauge!("vow_queue_depth", "kind" => kind.clone()).set(counts.queued() as f64);
            metrics::gauge!("vow_leases_held", "kind" => kind.clone()).set(counts.running() as f64);
        }
        *previous_kinds = counts.keys().cloned().collect();
    }

    /// What [`kind_counts`] reads of a kind's counts.
    pub trait KindCountsView {
        fn queued(&self) -> usize;
        fn running(&self) -> usize;
    }

    /// How long ago a worker last polled for a remote kind (`None`: never).
    pub fn kind_last_poll_age(kind: &str, age: Option<Duration>) {
        let seconds = age.map_or(f64::INFINITY, |age| age.as_secs_f64());
        metrics::gauge!("vow_kind_last_poll_age_seconds", "kind" => kind.to_owned()).set(seconds);
    }

    /// Workers waiting in Poll for a kind on this replica.
    pub fn pollers(kind: &str, waiting: usize) {
        metrics::gauge!("vow_pollers", "kind" => kind.to_owned()).set(waiting as f64);
    }

    /// A Poll ended after `waited`, with leases or without.
    pub fn poll_ended(leased: bool, waited: Duration) {
        let outcome = if leased { "leased" } else { "empty" };
        metrics::histogram!("vow_poll_wait_seconds", "outcome" => outcome)
            .record(waited.as_secs_f64());
    }

    /// A lease lapsed without an outcome; `cause` is expired,
    /// attempt_timeout, task_deadline or cancelled.
    pub fn lease_lost(kind: &str, cause: &'static str) {
        metrics::counter!("vow_leases_lost_total", "kind" => kind.to_owned(), "cause" => cause)
            .increment(1);
    }

    /// A worker call (`Heartbeat`, `Complete` or `Release`) ended with
    /// `result`: ok, repeated, lease_lost or invalid.
    pub fn worker_call(method: &'static str, result: &'static str) {
        metrics::counter!("vow_worker_calls_total", "method" => method, "result" => result)
            .increment(1);
    }

    /// An RPC answered with `code` after `duration`.
    pub fn rpc(method: &'static str, code: &'static str, duration: Duration) {
        metrics::counter!("vow_rpc_requests_total", "method" => method, "code" => code)
            .increment(1);
        metrics::histogram!("vow_rpc_duration_seconds", "method" => method)
            .record(duration.as_secs_f64());
    }

    /// A change of the TLS files was loaded (`ok`) or refused as invalid.
    pub fn tls_reload(ok: bool) {
        let result = if ok { "ok" } else { "invalid" };
        metrics::counter!("vow_tls_reloads_total", "result" => result).increment(1);
    }
}
