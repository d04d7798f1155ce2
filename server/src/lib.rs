//! Vow's server: the task engine, its stores, the built-in handlers and the
//! gRPC services, assembled by [`serve`].
//!
//! `main.rs` only parses flags, sets up logging and signals, and calls
//! [`serve`]; tests and embedders call it with their own listener, handlers
//! and shutdown future.

pub mod auth;
pub mod config;
pub mod engine;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod grpc;
pub mod handlers;
pub mod kinds_file;
pub mod store;
pub mod telemetry;
pub mod tls;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use vow_proto::v1::{
    task_service_server::TaskServiceServer, worker_service_server::WorkerServiceServer,
};

pub use config::Config;
pub use engine::{Engine, HandlerRegistry};

use crate::{
    engine::EventHub,
    grpc::{TaskServiceImpl, WorkerServiceImpl},
    store::{ChangeFeed, Store},
};

/// How long open connections (health watches, idle clients) may delay the
/// exit once the engine has drained.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// How long calls are still served normally after the GOAWAY: the time a
/// proxy on the same network takes to read it and answer its ping.
const GOAWAY_GRACE: Duration = Duration::from_millis(500);
/// How long a PostgreSQL query waits for a connection (and opening waits
/// for the database) before failing as unavailable.
const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The opened store and the event hub it reports its changes to.
pub struct Storage {
    pub hub: Arc<EventHub>,
    pub store: Arc<dyn Store>,
}

impl Storage {
    /// Opens the configured store (recovering what a previous process left).
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let limits = engine::quota::ListenerLimits {
            max_waiters: usize::try_from(config.max_waiters).unwrap_or(usize::MAX),
            max_watchers: usize::try_from(config.max_watchers).unwrap_or(usize::MAX),
        };
        let hub = Arc::new(EventHub::with_limits(config.event_history as usize, limits));
        let store = open_store(config, hub.clone()).await?;
        Ok(Self { hub, store })
    }
}

/// Opens the configured store, reporting its changes to `feed`.
pub async fn open_store(
    config: &Config,
    feed: Arc<dyn ChangeFeed>,
) -> anyhow::Result<Arc<dyn Store>> {
    match config.store {
        config::StoreKind::Memory => Ok(Arc::new(store::MemoryStore::new(feed))),
        config::StoreKind::Embedded => {
            let durability = match config.durability {
                config::DurabilityMode::Full => store::Durability::Full,
                config::DurabilityMode::Normal => store::Durability::Normal,
            };
            let data_dir = config.data_dir.clone();
            // Opening may migrate and recover a large file: keep it off the runtime threads.
            let store = tokio::task::spawn_blocking(move || {
                store::EmbeddedStore::open(&data_dir, durability, feed)
            })
            .await??;
            Ok(Arc::new(store))
        }
        config::StoreKind::Postgres => {
            let options = store::PostgresOptions {
                url: config.database_url.clone().unwrap_or_default(),
                max_connections: config.database_max_connections,
                min_connections: config.database_min_connections,
                acquire_timeout: POSTGRES_ACQUIRE_TIMEOUT,
            };
            Ok(Arc::new(store::PostgresStore::open(&options, feed).await?))
        }
    }
}

/// Reflection over every service served, plus google.rpc's error details so
/// that tools like grpcurl can decode the `ErrorInfo` inside task errors.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(vow_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// The sockets `vowd` serves on, bound before serving so that port 0 works
/// and the caller knows the addresses.
pub struct Listeners {
    pub grpc: TcpListener,
    /// The Prometheus `/metrics` endpoint, if enabled.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses the configuration names.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let grpc = TcpListener::bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(address) => Some(TcpListener::bind(address).await?),
            None => None,
        };
        Ok(Self { grpc, metrics })
    }
}

/// Serves the task service until `shutdown` completes, then: health turns
/// NOT_SERVING for `--shutdown-delay` while serving goes on; then new tasks
/// are refused with UNAVAILABLE, Awaits, Watches and Polls end UNAVAILABLE
/// (callers resume at another replica), every connection gets GOAWAY and its
/// unary calls finish, running attempts get `--drain-timeout` to finish, and
/// the rest are handed back.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    storage: Storage,
    handlers: HandlerRegistry,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Loaded before anything serves: a bad file stops vowd at start.
    let tls = tls_configs(&config, listeners.metrics.is_some())?;
    let stop_tls_watchers = CancellationToken::new();
    let _stop_tls_watchers = stop_tls_watchers.clone().drop_guard();
    if let Some((grpc_tls, metrics_tls)) = &tls {
        grpc_tls.spawn_watcher(stop_tls_watchers.clone());
        if let Some(metrics_tls) = metrics_tls {
            metrics_tls.spawn_watcher(stop_tls_watchers.clone());
        }
    }
    let stop_metrics = CancellationToken::new();
    if config.metrics_without_namespace {
        telemetry::metrics::record::without_namespace_label();
    }
    if let Some(listener) = listeners.metrics {
        telemetry::metrics_handle();
        let stop = stop_metrics.clone().cancelled_owned();
        let served = match &tls {
            Some((_, Some(metrics_tls))) => {
                let incoming = TcpIncoming::from(listener);
                let listener = tls::TlsIncoming::new(
                    incoming,
                    metrics_tls.clone(),
                    config.tls_handshake_timeout,
                );
                tokio::spawn(telemetry::serve_metrics(listener, stop))
            }
            _ => tokio::spawn(telemetry::serve_metrics(listener, stop)),
        };
        tokio::spawn(async move {
            if let Ok(Err(error)) = served.await {
                tracing::error!(%error, "the metrics endpoint failed");
            }
        });
    }
    let listener = listeners.grpc;
    let access = match &config.auth_file {
        Some(path) => {
            let control = auth::AccessControl::load(path, storage.hub.clone())
                .map_err(|error| anyhow::anyhow!("--auth-file: {error}"))?;
            tokio::spawn(control.clone().watch(stop_metrics.clone()));
            Some(control)
        }
        None => None,
    };
    let mut engine_config = config.engine_config();
    engine_config.kinds = config.kinds().map_err(anyhow::Error::msg)?;
    let engine = Engine::start(engine_config, storage.store, storage.hub, handlers)?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TaskServiceServer<TaskServiceImpl>>()
        .await;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let max_message = config.max_request_bytes();
    let task_service = TaskServiceServer::new(TaskServiceImpl::new(engine.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(2 * max_message);
    let worker_service = WorkerServiceServer::new(WorkerServiceImpl::new(engine.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(2 * max_message);

    let stop_serving = CancellationToken::new();
    let router = connection_limits(tonic::transport::Server::builder(), &config)
        .layer(grpc::RpcSpanLayer)
        .layer(auth::AccessLayer::new(access))
        .layer(grpc::RequestSizeLayer {
            limit_bytes: max_message,
        })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(task_service)
        .add_service(worker_service);
    // Small request/response frames must not wait for Nagle's algorithm.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(nonzero(config.tcp_keepalive));
    let stopped = stop_serving.clone().cancelled_owned();
    let mut server = match tls {
        Some((grpc_tls, _)) => {
            let incoming = tls::TlsIncoming::new(incoming, grpc_tls, config.tls_handshake_timeout);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped)),
    };

    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            engine.shutdown(Duration::ZERO).await;
            return Ok(result??);
        }
    }

    health_reporter
        .set_not_serving::<TaskServiceServer<TaskServiceImpl>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    if !config.shutdown_delay.is_zero() {
        tracing::info!(shutdown_delay = ?config.shutdown_delay, "shutting down: NOT_SERVING, still serving until load balancers notice");
        tokio::time::sleep(config.shutdown_delay).await;
    }
    tracing::info!(drain_timeout = ?config.drain_timeout, "draining: GOAWAY on every connection, then no new tasks, and waits end UNAVAILABLE");
    // GOAWAY first, and calls still go on for a moment: a proxy's streams
    // sent before it read the GOAWAY (until HTTP/2's second GOAWAY names the
    // last stream, one ping later) are served, not refused. Then the waits
    // end, so the graceful close has only short unary calls (and Runs,
    // bound to their attempts) left to finish.
    stop_serving.cancel();
    tokio::time::sleep(GOAWAY_GRACE).await;
    engine.begin_drain();
    engine.shutdown(config.drain_timeout).await;
    match tokio::time::timeout(CONNECTION_GRACE, &mut server).await {
        Ok(result) => result??,
        Err(_) => {
            tracing::info!("closing connections that outlived the grace period");
            server.abort();
        }
    }
    stop_metrics.cancel();
    tracing::info!("stopped");
    Ok(())
}

/// The reloading TLS configurations of the gRPC listener and (when there is
/// one) of the metrics endpoint, their files watched until vowd stops.
type TlsConfigs = (
    Arc<tls::ReloadingServerConfig>,
    Option<Arc<tls::ReloadingServerConfig>>,
);

fn tls_configs(config: &Config, metrics: bool) -> anyhow::Result<Option<TlsConfigs>> {
    let Some(files) = config.tls_files() else {
        return Ok(None);
    };
    let grpc = tls::ReloadingServerConfig::load(files.clone(), tls::ALPN_GRPC)?;
    let metrics = match metrics {
        true => Some(tls::ReloadingServerConfig::load(files, tls::ALPN_METRICS)?),
        false => None,
    };
    Ok(Some((grpc, metrics)))
}

/// HTTP/2 limits of every connection, against broken and hostile clients.
fn connection_limits(
    server: tonic::transport::Server,
    config: &Config,
) -> tonic::transport::Server {
    let server = server
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .http2_max_header_list_size(config.http2_max_header_list_size)
        .http2_keepalive_interval(nonzero(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
        .http2_max_pending_accept_reset_streams(Some(
            config.http2_max_pending_accept_reset_streams as usize,
        ))
        // Left unset, tonic turns hyper's default limit (1024) off.
        .http2_max_local_error_reset_streams(Some(
            config.http2_max_local_error_reset_streams as usize,
        ));
    match config.max_connection_age {
        Some(age) => server
            .max_connection_age(age)
            .max_connection_age_grace(config.max_connection_age_grace),
        None => server,
    }
}

/// `None` for a zero duration: the flags' way to say "off".
fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}
