//! A TCP proxy that injects network faults between a `vowd` and its
//! database: it resets connections (all, or those whose opening bytes carry
//! a marker such as the listener's `application_name`), refuses new ones,
//! stalls the flow without a reset (a dropped NAT mapping, a frozen
//! sidecar), and swallows replies (a write that committed but whose answer
//! never came back).
//!
//! Faults are switched from the test while traffic flows; every switch
//! applies to the bytes forwarded after it.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// Opening bytes inspected for markers; a PostgreSQL startup message fits.
const SNIFFED_BYTES: usize = 1024;

/// Which connections a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    All,
    /// Those whose opening bytes contained the proxy's marker.
    Marked,
    /// Those whose opening bytes did not.
    Unmarked,
}

struct Connection {
    marked: AtomicBool,
    /// The client sent the reply trigger: the server's bytes are dropped.
    replies_dropped: AtomicBool,
    /// Forwarding pauses while true.
    stalled: watch::Sender<bool>,
    /// Resets both sides.
    reset: CancellationToken,
}

impl Connection {
    fn selected_by(&self, which: Connections) -> bool {
        match which {
            Connections::All => true,
            Connections::Marked => self.marked.load(Ordering::Relaxed),
            Connections::Unmarked => !self.marked.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    target: SocketAddr,
    marker: Vec<u8>,
    connections: Mutex<Vec<Arc<Connection>>>,
    refuse: Mutex<Option<Connections>>,
    drop_replies: AtomicBool,
    /// New connections start stalled.
    stall_new: AtomicBool,
    /// Client bytes after which a connection's replies are dropped.
    reply_trigger: Mutex<Option<Vec<u8>>>,
    /// Client bytes at which a connection freezes, before they are sent on.
    stall_trigger: Mutex<Option<Vec<u8>>>,
    triggered: AtomicU64,
    accepted: AtomicU64,
}

/// A running proxy; it stops (resetting every connection) when dropped.
pub struct FaultProxy {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Starts a proxy to `target` on an ephemeral port. Connections whose
    /// first bytes contain `marker` count as marked.
    pub async fn start(target: SocketAddr, marker: &[u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            target,
            marker: marker.to_vec(),
            connections: Mutex::default(),
            refuse: Mutex::default(),
            drop_replies: AtomicBool::new(false),
            stall_new: AtomicBool::new(false),
            reply_trigger: Mutex::default(),
            stall_trigger: Mutex::default(),
            triggered: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Self {
            address,
            shared,
            stop,
        }
    }

    /// Resets the open connections that `which` selects.
    pub fn reset(&self, which: Connections) {
        let mut connections = self.connections();
        connections.retain(|connection| {
            let hit = connection.selected_by(which);
            if hit {
                connection.reset.cancel();
            }
            !hit
        });
    }

    /// Resets new connections that `which` selects at once (`None`: let
    /// every connection through again). A refused connection is selected by
    /// its opening bytes, so a marked one reads as marked.
    pub fn refuse(&self, which: Option<Connections>) {
        *self.shared.refuse.lock().expect("not poisoned") = which;
    }

    /// Stops (or resumes) forwarding on the open connections that `which`
    /// selects, in both directions, without closing them.
    pub fn stall(&self, which: Connections, stalled: bool) {
        for connection in self.connections().iter() {
            if connection.selected_by(which) {
                connection.stalled.send_replace(stalled);
            }
        }
    }

    /// While true, connections opened from now on start stalled (and stay
    /// so until `stall(.., false)`).
    pub fn stall_new(&self, stalled: bool) {
        self.shared.stall_new.store(stalled, Ordering::SeqCst);
    }

    /// While true, bytes from the server are read and thrown away: requests
    /// arrive and run, their answers never come back.
    pub fn drop_replies(&self, dropped: bool) {
        self.shared.drop_replies.store(dropped, Ordering::SeqCst);
    }

    /// From now on, a connection whose client sends `trigger` gets no more
    /// replies (until it is reset): the request that carried it runs, and
    /// its answer is lost. `None` stops triggering.
    pub fn drop_replies_after(&self, trigger: Option<&[u8]>) {
        *self.shared.reply_trigger.lock().expect("not poisoned") = trigger.map(<[u8]>::to_vec);
    }

    /// From now on, a connection whose client sends `trigger` freezes (in
    /// both directions, without a reset) before those bytes reach the
    /// server. `None` stops triggering.
    pub fn stall_at(&self, trigger: Option<&[u8]>) {
        *self.shared.stall_trigger.lock().expect("not poisoned") = trigger.map(<[u8]>::to_vec);
    }

    /// Connections whose replies the trigger cut off, or that it froze, so far.
    pub fn triggered(&self) -> u64 {
        self.shared.triggered.load(Ordering::SeqCst)
    }

    /// Open connections that `which` selects.
    pub fn open(&self, which: Connections) -> usize {
        self.connections()
            .iter()
            .filter(|connection| !connection.reset.is_cancelled() && connection.selected_by(which))
            .count()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Connection>>> {
        self.shared.connections.lock().expect("not poisoned")
    }

    /// A PostgreSQL URL that reaches `database` through this proxy, in
    /// plaintext, so the proxy can read the startup message's markers.
    pub fn postgres_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@{}/{database}?sslmode=disable",
            self.address
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.reset(Connections::All);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(client, shared.clone(), stop.clone()));
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>, stop: CancellationToken) {
    // Zero linger: every close is a reset, which is what a peer sees of a
    // cut connection (an orderly close would send the protocol's goodbye).
    let _ = client.set_nodelay(true);
    let _ = client.set_zero_linger();
    let Ok(server) = TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = server.set_zero_linger();
    let connection = Arc::new(Connection {
        marked: AtomicBool::new(false),
        replies_dropped: AtomicBool::new(false),
        stalled: watch::channel(shared.stall_new.load(Ordering::SeqCst)).0,
        reset: stop.child_token(),
    });
    shared
        .connections
        .lock()
        .expect("not poisoned")
        .push(connection.clone());
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();

    let upstream = {
        let connection = connection.clone();
        let shared = shared.clone();
        async move {
            let mut sniffed = Vec::new();
            // The end of the last read, so that a trigger split over two
            // reads is still seen.
            let mut tail: Vec<u8> = Vec::new();
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let read = client_read.read(&mut buffer).await?;
                if read == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                let reply_trigger = shared.reply_trigger.lock().expect("not poisoned").clone();
                let stall_trigger = shared.stall_trigger.lock().expect("not poisoned").clone();
                if reply_trigger.is_some() || stall_trigger.is_some() {
                    tail.extend_from_slice(&buffer[..read]);
                    let seen = |trigger: &Option<Vec<u8>>| {
                        trigger.as_ref().is_some_and(|trigger| {
                            tail.windows(trigger.len())
                                .any(|window| window == trigger.as_slice())
                        })
                    };
                    if seen(&reply_trigger)
                        && !connection.replies_dropped.swap(true, Ordering::SeqCst)
                    {
                        shared.triggered.fetch_add(1, Ordering::SeqCst);
                    }
                    if seen(&stall_trigger) && !connection.stalled.send_replace(true) {
                        shared.triggered.fetch_add(1, Ordering::SeqCst);
                    }
                    let longest = [&reply_trigger, &stall_trigger]
                        .iter()
                        .filter_map(|trigger| trigger.as_ref().map(Vec::len))
                        .max()
                        .unwrap_or(1);
                    let keep = tail.len().min(longest.saturating_sub(1));
                    tail.drain(..tail.len() - keep);
                }
                if sniffed.len() < SNIFFED_BYTES {
                    sniffed.extend_from_slice(&buffer[..read]);
                    if !shared.marker.is_empty()
                        && sniffed
                            .windows(shared.marker.len())
                            .any(|window| window == shared.marker)
                    {
                        connection.marked.store(true, Ordering::Relaxed);
                    }
                    let refused = *shared.refuse.lock().expect("not poisoned");
                    if refused.is_some_and(|which| connection.selected_by(which)) {
                        connection.reset.cancel();
                        return Ok(());
                    }
                }
                wait_while_stalled(&connection).await;
                server_write.write_all(&buffer[..read]).await?;
            }
        }
    };
    let downstream = {
        let connection = connection.clone();
        let shared = shared.clone();
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let read = server_read.read(&mut buffer).await?;
                if read == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                wait_while_stalled(&connection).await;
                if shared.drop_replies.load(Ordering::SeqCst)
                    || connection.replies_dropped.load(Ordering::SeqCst)
                {
                    continue;
                }
                client_write.write_all(&buffer[..read]).await?;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        () = connection.reset.cancelled() => {}
    }
    connection.reset.cancel();
    shared
        .connections
        .lock()
        .expect("not poisoned")
        .retain(|open| !Arc::ptr_eq(open, &connection));
}

async fn wait_while_stalled(connection: &Connection) {
    let mut stalled = connection.stalled.subscribe();
    let _ = stalled.wait_for(|stalled| !stalled).await;
}
