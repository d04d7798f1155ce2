//! Accepting TLS connections: TCP is accepted in one loop, each handshake
//! runs in a task of its own under a timeout, and the finished streams come
//! out of a [`TlsIncoming`]: a `Stream` for tonic's
//! `serve_with_incoming_shutdown`, and an axum `Listener` for the metrics
//! endpoint. A client that connects and says nothing costs one task until
//! its timeout, never a stalled accept loop; at most
//! [`MAX_CONCURRENT_HANDSHAKES`] handshakes run at once.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    net::TcpStream,
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::StreamExt as _;
use tonic::transport::server::TcpIncoming;

use super::ReloadingServerConfig;

/// Handshakes in progress at once; further connections wait in the
/// kernel's backlog until one ends.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 1024;
/// Pause after a failed accept (out of file descriptors, say), so that the
/// loop does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Finished handshakes waiting for the server to take them.
const READY_CONNECTIONS: usize = 64;

/// The TLS connections of one listener, handshaken with the configuration
/// current when each was accepted. Dropping it stops accepting (and closes
/// the listening socket).
pub struct TlsIncoming {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: std::io::Result<SocketAddr>,
}

/// The same thing, by the name axum gives what `axum::serve` takes.
pub type TlsListener = TlsIncoming;

impl TlsIncoming {
    /// Accepts from `tcp` (which sets TCP_NODELAY and keepalives) and
    /// handshakes with `config`, each handshake bounded by `handshake_timeout`.
    pub fn new(
        tcp: TcpIncoming,
        config: Arc<ReloadingServerConfig>,
        handshake_timeout: Duration,
    ) -> Self {
        let local_addr = tcp.local_addr();
        let (sender, connections) = mpsc::channel(READY_CONNECTIONS);
        tokio::spawn(accept_loop(tcp, config, handshake_timeout, sender));
        Self {
            connections,
            local_addr,
        }
    }
}

async fn accept_loop(
    mut tcp: TcpIncoming,
    config: Arc<ReloadingServerConfig>,
    handshake_timeout: Duration,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            () = ready.closed() => return,
            permit = handshakes.clone().acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
        };
        let stream = tokio::select! {
            () = ready.closed() => return,
            next = tcp.next() => match next {
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
                None => return,
            },
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let acceptor = TlsAcceptor::from(config.current());
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    // Fails only when the server stopped taking connections.
                    let _ = ready.send((stream, peer)).await;
                }
                // Scanners and misconfigured clients are common: not a warning.
                Ok(Err(error)) => {
                    tracing::debug!(peer = %peer, error = %error, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, timeout = ?handshake_timeout, "TLS handshake timed out");
                }
            }
        });
    }
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections
            .poll_recv(context)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ends only once this is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local_addr {
            Ok(address) => Ok(*address),
            Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
        }
    }
}
