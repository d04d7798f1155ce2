//! `vow`: the command-line client of the Vow task service. Parses the command
//! line, runs one command and turns its outcome into the documented exit code.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

// `vow bench` is a load generator on the machine it measures: under glibc's
// allocator its HTTP/2 clients spent a sixth of their CPU in malloc and free,
// CPU the server then lacked.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let arguments = cli::Cli::parse();
    // The bench drives load from every core; one-shot commands need only one
    // thread, which also keeps their start-up cheap.
    let runtime = if arguments.needs_all_cores() {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime.enable_all();
        // As in vowd (server/src/main.rs): a connection's task writes what
        // several callers queued, not one request per syscall. The ceiling
        // server runs here too, so both servers of a bench run alike.
        #[cfg(tokio_unstable)]
        runtime.disable_lifo_slot();
        runtime.build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("vow: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let status = runtime.block_on(cli::run(arguments));
    ExitCode::from(status as u8)
}
