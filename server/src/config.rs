//! `vowd`'s configuration: every flag also reads a `VOW_*` environment
//! variable, and `--help` explains each.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use crate::engine::{EngineConfig, KindSettings, retry::RetryPolicy};

/// vowd — the Vow task service: submit tasks, then await or watch their results over gRPC.
#[derive(Clone, Debug, Parser)]
#[command(name = "vowd", version, about, long_about = None)]
pub struct Config {
    /// Address to serve gRPC on. Use 0.0.0.0:50051 (or [::]:50051) to listen on all interfaces;
    /// port 0 picks a free port, printed on stdout at start.
    #[arg(long, env = "VOW_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the Prometheus `/metrics` endpoint (its own port); off when unset.
    #[arg(long, env = "VOW_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Where tasks are kept: `embedded` in one durable file under --data-dir; `memory` in this process only;
    /// `postgres` in the PostgreSQL database at --database-url, shared by several vowd replicas.
    #[arg(long, env = "VOW_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,

    /// PostgreSQL database of `--store postgres`, as postgres://user:password@host:port/database.
    /// Needs a session (not a transaction-pooling) connection: replicas LISTEN for each other's changes.
    #[arg(long, env = "VOW_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Most PostgreSQL connections this replica opens for queries (plus one that listens for changes).
    #[arg(long, env = "VOW_DATABASE_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub database_max_connections: u32,

    /// PostgreSQL connections kept open while idle.
    #[arg(long, env = "VOW_DATABASE_MIN_CONNECTIONS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub database_min_connections: u32,

    /// Directory of the embedded store (created if its parent exists).
    #[arg(long, env = "VOW_DATA_DIR", default_value = "./vow-data")]
    pub data_dir: PathBuf,

    /// What an acknowledged write survives: `full` fsyncs every commit (process, OS and power crashes);
    /// `normal` survives a process crash but may lose the last commits on an OS crash or power loss.
    #[arg(long, env = "VOW_DURABILITY", value_enum, default_value_t = DurabilityMode::Full)]
    pub durability: DurabilityMode,

    /// Log format on stderr: human-readable `text` or one JSON object per line.
    #[arg(long, env = "VOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Attempts executing at once; further due tasks wait in the queue.
    #[arg(long, env = "VOW_MAX_CONCURRENT_TASKS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_tasks: u32,

    /// Tasks allowed to wait in the queue; beyond it Submit answers RESOURCE_EXHAUSTED with RetryInfo.
    #[arg(long, env = "VOW_MAX_QUEUED_TASKS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_tasks: u64,

    /// Largest task input accepted, in bytes.
    #[arg(long, env = "VOW_MAX_INPUT_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=(64 * 1024 * 1024)))]
    pub max_input_bytes: u64,

    /// Attempts per task when the submitter sets none (the first included).
    #[arg(long, env = "VOW_DEFAULT_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub default_max_attempts: u32,

    /// Wait before the first retry when the submitter sets none.
    #[arg(long, env = "VOW_DEFAULT_INITIAL_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub default_initial_backoff: Duration,

    /// Longest wait between attempts when the submitter sets none.
    #[arg(long, env = "VOW_DEFAULT_MAX_BACKOFF", default_value = "1m", value_parser = humantime::parse_duration)]
    pub default_max_backoff: Duration,

    /// How long finished tasks are kept when the submitter sets no retention.
    #[arg(long, env = "VOW_DEFAULT_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub default_retention: Duration,

    /// Longest retention a submitter may ask for (longer requests are capped).
    #[arg(long, env = "VOW_MAX_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub max_retention: Duration,

    /// Longest single Await, whatever the caller's deadline.
    #[arg(long, env = "VOW_MAX_AWAIT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_await: Duration,

    /// On SIGTERM/SIGINT, how long vowd keeps serving with health NOT_SERVING before it drains, so
    /// that load balancers stop sending it calls first (their health-check interval, e.g. 5s).
    #[arg(long, env = "VOW_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// On SIGTERM/SIGINT, how long running attempts may take to finish before they are handed back.
    #[arg(long, env = "VOW_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// How long a cancelled or timed-out handler may take to return before it is abandoned.
    #[arg(long, env = "VOW_CANCEL_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cancel_grace: Duration,

    /// Least time between two progress updates of one attempt; faster reports are coalesced.
    #[arg(long, env = "VOW_PROGRESS_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,

    /// Changes kept per watched task, so a broken Watch resumes with `after_revision` without a gap.
    #[arg(long, env = "VOW_EVENT_HISTORY", default_value_t = crate::engine::DEFAULT_EVENT_HISTORY as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub event_history: u64,

    /// Idle time after which a Watch stream gets a heartbeat message (keeps proxies from closing it).
    #[arg(long, env = "VOW_WATCH_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub watch_heartbeat: Duration,

    /// Most task ids one AwaitMany may name.
    #[arg(long, env = "VOW_AWAIT_MANY_LIMIT", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub await_many_limit: u64,

    /// Lease of a running attempt; renewed at a third of it, reaped when it lapses. Also the lease a
    /// remote worker gets when it asks for none.
    #[arg(long, env = "VOW_LEASE_DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// Longest lease a remote worker may ask for in Poll.
    #[arg(long, env = "VOW_MAX_LEASE_DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_lease_duration: Duration,

    /// A kind run by remote workers (WorkerService); repeat the flag, or list them in VOW_REMOTE_KINDS=a,b.
    /// A Submit of a kind that is neither built in nor declared is refused.
    #[arg(
        long = "remote-kind",
        env = "VOW_REMOTE_KINDS",
        value_delimiter = ',',
        value_name = "KIND"
    )]
    pub remote_kinds: Vec<String>,

    /// TOML file of per-kind settings: `[kinds.NAME]` with `remote`, `attempt_timeout` and `retry`.
    #[arg(long, env = "VOW_KINDS_FILE")]
    pub kinds_file: Option<PathBuf>,

    /// TOML file of who may call (API keys, JWTs, client certificates), in which namespace, and
    /// each namespace's quotas; access control is off without it. Reloaded when it changes.
    #[arg(long, env = "VOW_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Open Awaits, AwaitManys and Runs on this replica at most; beyond, RESOURCE_EXHAUSTED.
    #[arg(long, env = "VOW_MAX_WAITERS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_waiters: u64,

    /// Open Watch streams on this replica at most; beyond, RESOURCE_EXHAUSTED.
    #[arg(long, env = "VOW_MAX_WATCHERS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_watchers: u64,

    /// Drop the `namespace` label of the task counters (one series per namespace and kind is
    /// too many with thousands of namespaces); they then say `namespace="all"`.
    #[arg(long, env = "VOW_METRICS_WITHOUT_NAMESPACE", value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics_without_namespace: bool,

    /// Serve TLS with this certificate chain (PEM, the server's certificate first); needs --tls-key.
    /// Reloaded when it changes: new connections get the new certificate, open ones keep theirs.
    #[arg(long, env = "VOW_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert; reloaded with it.
    #[arg(long, env = "VOW_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: admit only clients presenting a certificate signed by this CA (PEM); reloaded
    /// when it changes. Needs --tls-cert.
    #[arg(
        long,
        env = "VOW_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Longest a client may take to finish its TLS handshake before its connection is closed.
    #[arg(long, env = "VOW_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// Largest request message accepted, in bytes (default: --max-input-bytes plus 1 MiB); a larger
    /// one is answered RESOURCE_EXHAUSTED before it is read.
    #[arg(long, env = "VOW_MAX_REQUEST_BYTES", value_parser = clap::value_parser!(u64).range(1024..=(128 * 1024 * 1024)))]
    pub max_request_bytes: Option<u64>,

    /// Most concurrent calls (HTTP/2 streams) on one connection; a client queues the others.
    #[arg(long, env = "VOW_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_concurrent_streams: u32,

    /// Largest header block of one call (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE), in bytes.
    #[arg(long, env = "VOW_HTTP2_MAX_HEADER_LIST_SIZE", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub http2_max_header_list_size: u32,

    /// How often vowd pings a connection (HTTP/2 PING) to find dead peers; 0s turns pings off.
    #[arg(long, env = "VOW_HTTP2_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, env = "VOW_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Idle time before the kernel probes a connection (TCP keepalive); 0s turns probes off.
    #[arg(long, env = "VOW_TCP_KEEPALIVE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive: Duration,

    /// Age after which a connection is asked to close (HTTP/2 GOAWAY; the client reconnects, which
    /// also rebalances replicas behind a load balancer). Closes idle and silent connections too. Off
    /// when unset.
    #[arg(long, env = "VOW_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    pub max_connection_age: Option<Duration>,

    /// After --max-connection-age, how long calls in flight may still run before the connection
    /// is closed.
    #[arg(long, env = "VOW_MAX_CONNECTION_AGE_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,

    /// Streams a client opened and reset that may wait at once, per connection, for vowd to read
    /// them; past it the connection is closed (GOAWAY): the HTTP/2 rapid-reset defence (CVE-2023-44487).
    #[arg(long, env = "VOW_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub http2_max_pending_accept_reset_streams: u64,

    /// Streams vowd may reset because of a client's protocol errors, per connection, before the
    /// connection is closed (GOAWAY): the defence against "MadeYouReset" (CVE-2025-8671).
    #[arg(long, env = "VOW_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub http2_max_local_error_reset_streams: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools beside serving.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// API keys of the auth file.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `vowd keys …`
#[derive(Clone, Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Prints a new API key once, and the `[[api_keys]]` entry to add to the auth file (which holds
    /// only the key's SHA-256).
    New {
        /// The namespace the key acts in, or `*` for an administrator of every namespace.
        #[arg(long)]
        namespace: String,
        /// What the key may do.
        #[arg(long, value_delimiter = ',', required = true)]
        permissions: Vec<crate::auth::Permission>,
        /// Names the key in logs.
        #[arg(long)]
        name: String,
    },
}

/// Storage backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// One SQLite file under --data-dir; survives crashes and restarts.
    Embedded,
    /// In this process only; everything is lost when it exits.
    Memory,
    /// A PostgreSQL database at --database-url, shared by several replicas.
    Postgres,
}

/// Commit durability of the embedded store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityMode {
    /// fsync every commit: survives process, OS and power crashes.
    Full,
    /// fsync at checkpoints: survives a process crash only.
    Normal,
}

/// Log line formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Parses flags and environment of a `vowd` command line (for tests and embedding).
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
    }

    /// Checks relations between flags that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--lease-duration", self.lease_duration),
            ("--max-await", self.max_await),
            ("--progress-interval", self.progress_interval),
            ("--watch-heartbeat", self.watch_heartbeat),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            return Err(format!("{flag} must be positive"));
        }
        if self.default_initial_backoff > self.default_max_backoff {
            return Err("--default-initial-backoff must not exceed --default-max-backoff".into());
        }
        if self.default_retention > self.max_retention {
            return Err("--default-retention must not exceed --max-retention".into());
        }
        if self.store == StoreKind::Postgres && self.database_url.is_none() {
            return Err("--store postgres needs --database-url (or VOW_DATABASE_URL)".into());
        }
        if self.database_min_connections > self.database_max_connections {
            return Err(
                "--database-min-connections must not exceed --database-max-connections".into(),
            );
        }
        if let Some(max_request_bytes) = self.max_request_bytes
            && max_request_bytes <= self.max_input_bytes
        {
            return Err("--max-request-bytes must exceed --max-input-bytes (a request holds an input and more)".into());
        }
        if self.tls_handshake_timeout.is_zero() {
            return Err("--tls-handshake-timeout must be positive".into());
        }
        if self.max_lease_duration < Duration::from_secs(1) {
            return Err("--max-lease-duration must be at least 1s".into());
        }
        self.kinds().map(drop)
    }

    /// The kinds of `--kinds-file` and `--remote-kind`.
    pub fn kinds(&self) -> Result<BTreeMap<String, KindSettings>, String> {
        let mut kinds = match &self.kinds_file {
            Some(path) => crate::kinds_file::load(path)?,
            None => BTreeMap::new(),
        };
        for kind in &self.remote_kinds {
            let declared = kinds.entry(kind.clone()).or_insert_with(|| KindSettings {
                remote: true,
                ..KindSettings::default()
            });
            if !declared.remote {
                return Err(format!(
                    "--remote-kind {kind}: the kinds file declares it with remote = false"
                ));
            }
        }
        Ok(kinds)
    }

    /// The TLS files, when vowd serves TLS.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            certificate: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// Largest request message, in bytes: `--max-request-bytes`, or the
    /// input limit with room for the rest of a request.
    pub fn max_request_bytes(&self) -> usize {
        const REQUEST_OVERHEAD_BYTES: u64 = 1024 * 1024;
        self.max_request_bytes
            .unwrap_or(self.max_input_bytes + REQUEST_OVERHEAD_BYTES) as usize
    }

    /// The engine's share of the configuration.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_concurrent_tasks: self.max_concurrent_tasks as usize,
            max_queued_tasks: self.max_queued_tasks as usize,
            max_input_bytes: self.max_input_bytes as usize,
            default_retry: RetryPolicy {
                max_attempts: self.default_max_attempts,
                initial_backoff: self.default_initial_backoff,
                max_backoff: self.default_max_backoff,
                ..RetryPolicy::default()
            },
            default_retention: self.default_retention,
            max_retention: self.max_retention,
            max_await: self.max_await,
            lease_duration: self.lease_duration,
            cancel_grace: self.cancel_grace,
            progress_interval: self.progress_interval,
            watch_heartbeat: self.watch_heartbeat,
            await_many_limit: self.await_many_limit as usize,
            shared_store: self.store == StoreKind::Postgres,
            max_lease_duration: self.max_lease_duration,
            ..EngineConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_args(["vowd"]).expect("defaults parse");
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn durations_are_human() {
        let config = Config::from_args(["vowd", "--drain-timeout", "1m 30s"]).expect("parses");
        assert_eq!(config.drain_timeout, Duration::from_secs(90));
        assert!(Config::from_args(["vowd", "--drain-timeout", "-1s"]).is_err());
    }

    #[test]
    fn postgres_needs_a_database_url_and_shares_the_store() {
        let config = Config::from_args(["vowd", "--store", "postgres"]).expect("parses");
        if std::env::var_os("VOW_DATABASE_URL").is_none() {
            assert!(config.validate().unwrap_err().contains("--database-url"));
        }
        let config = Config::from_args([
            "vowd",
            "--store",
            "postgres",
            "--database-url",
            "postgres://postgres@127.0.0.1/vow",
        ])
        .expect("parses");
        assert_eq!(config.validate(), Ok(()));
        assert!(config.engine_config().shared_store);
        assert!(
            !Config::from_args(["vowd"])
                .expect("parses")
                .engine_config()
                .shared_store
        );
    }
}
