//! `vowd`: parse configuration, set up logging, bind, serve until SIGTERM or
//! SIGINT, exit non-zero on a startup error.

use std::process::ExitCode;

use clap::Parser;

// Every RPC allocates (frames, headers, task records); glibc's allocator is
// the largest single cost under load, mimalloc a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use vow_server::{Config, Listeners, handlers::builtin_registry};

/// Registers SIGTERM and SIGINT handlers now (so a signal that arrives before
/// serving starts is not fatal) and resolves when either arrives.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
        }
    })
}

fn main() -> ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // Tokio runs a task woken by the running one next, in its LIFO slot. Here
    // that is a connection's task, woken by each finished response: it then
    // wrote each response with a syscall of its own. Queued behind the other
    // ready tasks instead, it writes many at once: under load half the
    // `writev` calls and about a fifth less CPU per task (BENCHMARKS.md).
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    match runtime.build() {
        Ok(runtime) => runtime.block_on(serve()),
        Err(error) => {
            eprintln!("vowd: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> ExitCode {
    let config = Config::parse();
    if let Some(command) = &config.command {
        return run_command(command);
    }
    let telemetry =
        match vow_server::telemetry::init(config.log_format == vow_server::config::LogFormat::Json)
        {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("vowd: cannot set up telemetry: {error:#}");
                return ExitCode::FAILURE;
            }
        };
    let kinds = config.validate().and_then(|()| {
        let kinds = config.kinds()?;
        vow_server::engine::Kinds::new(&builtin_registry(), &kinds)
            .map_err(|error| error.to_string())
    });
    if let Err(problem) = kinds {
        eprintln!("vowd: invalid configuration: {problem}");
        return ExitCode::from(2);
    }
    // A bad certificate or key stops vowd here, naming its flag, before the
    // store is opened; serving loads (and then follows) the files again.
    if let Some(files) = config.tls_files()
        && let Err(error) = files.server_config(vow_server::tls::ALPN_GRPC)
    {
        eprintln!("vowd: invalid TLS configuration: {error}");
        return ExitCode::from(2);
    }
    let listeners = match Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!(
                "vowd: cannot listen on {} (or the metrics address): {error}",
                config.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("vowd: cannot listen for signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let storage = match vow_server::Storage::open(&config).await {
        Ok(storage) => storage,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cannot open the store");
            eprintln!("vowd: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    // Tests and scripts read the bound addresses (port 0 picks one) from
    // stdout; the listening line comes last and means "ready".
    if let Some(metrics) = listeners
        .metrics
        .as_ref()
        .and_then(|listener| listener.local_addr().ok())
    {
        println!("vowd metrics on {metrics}");
    }
    let address = listeners
        .grpc
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |address| address.to_string());
    println!("vowd listening on {address}");
    tracing::info!(listen = %address, store = ?config.store, tls = config.tls_cert.is_some(), traces.exported = telemetry.exporting(), "vowd started");
    let exit =
        match vow_server::serve(config, listeners, storage, builtin_registry(), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "vowd failed");
                eprintln!("vowd: {error:#}");
                ExitCode::FAILURE
            }
        };
    telemetry.shutdown();
    exit
}

/// `vowd keys new`: prints the key once, then the entry that grants it.
fn run_command(command: &vow_server::config::Command) -> ExitCode {
    use vow_server::config::{Command, KeysCommand};
    let Command::Keys(KeysCommand::New {
        namespace,
        permissions,
        name,
    }) = command;
    match vow_server::auth::keys::new_key(name, namespace, permissions) {
        Ok((key, entry)) => {
            println!("{key}");
            eprintln!("# Add to the auth file (the key above is shown only now):");
            println!();
            print!("{entry}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("vowd: {error}");
            ExitCode::from(2)
        }
    }
}
