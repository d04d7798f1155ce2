//! `vow ceiling-server`: the library's ceiling service (`vow_client::ceiling`)
//! as a process of its own, so it runs apart from the load generator exactly
//! as vowd does.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::AsyncReadExt;

/// The line the ceiling server prints on stdout once it accepts connections.
pub const LISTENING_PREFIX: &str = "vow ceiling-server listening on ";

/// Serves the ceiling server on `listen` until the process is stopped or,
/// with `exit_on_stdin_close`, until its parent closes our stdin (so a bench
/// killed hard leaves no server behind).
pub async fn serve_forever(listen: SocketAddr, exit_on_stdin_close: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    println!("{LISTENING_PREFIX}{address}");
    let server = vow_client::ceiling::serve(listener, None, std::future::pending());
    if !exit_on_stdin_close {
        return Ok(server.await?);
    }
    // At once, not gracefully: the connections' owner is gone.
    tokio::select! {
        result = server => Ok(result?),
        () = stdin_closed() => Ok(()),
    }
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0_u8; 64];
    while let Ok(read) = stdin.read(&mut buffer).await {
        if read == 0 {
            return;
        }
    }
}
