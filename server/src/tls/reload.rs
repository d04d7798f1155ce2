//! A rustls server configuration that follows its files: cert-manager and
//! friends rotate certificates by rewriting the files or by swapping a
//! symlink of their directory, so the files are read again every
//! [`RELOAD_INTERVAL`] and compared byte for byte with the last ones read.
//! A change that makes a valid configuration replaces the current one for
//! new connections; an invalid one (a half-written rotation, a key that does
//! not match) keeps the previous configuration, says why in the log, and is
//! tried again at the next change.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use super::{TlsError, TlsFiles, files::FileContents};
use crate::telemetry::metrics::record;

/// How often the files are read for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The current configuration of one listener, and the files it comes from.
pub struct ReloadingServerConfig {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
}

impl ReloadingServerConfig {
    /// Loads the files now: a missing or invalid file is an error naming its flag.
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let contents = files.read()?;
        let config = files.build(&contents, alpn)?;
        let alpn = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let reloading = Arc::new(Self {
            files,
            alpn,
            current: ArcSwap::from_pointee(config),
        });
        Ok(reloading)
    }

    /// The configuration a connection accepted now gets.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Follows the files until `stop` fires (in a task of its own).
    pub fn spawn_watcher(self: &Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut last_read = this.read().await.ok();
            let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match this.read().await {
                    Ok(contents) if last_read.as_ref() == Some(&contents) => {}
                    Ok(contents) => {
                        this.apply(&contents);
                        last_read = Some(contents);
                    }
                    // Mid-rotation a file may be missing for a moment: the
                    // current configuration stays, and the next read decides.
                    Err(error) => {
                        if last_read.take().is_some() {
                            record::tls_reload(false);
                            tracing::warn!(error = %error, "cannot read the TLS files; keeping the current certificate");
                        }
                    }
                }
            }
        });
    }

    async fn read(&self) -> Result<FileContents, TlsError> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || files.read())
            .await
            .unwrap_or_else(|join_error| Err(TlsError::Unusable(join_error.to_string())))
    }

    fn apply(&self, contents: &FileContents) {
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        match self.files.build(contents, &alpn) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                record::tls_reload(true);
                tracing::info!(
                    tls.cert = %self.files.certificate.display(),
                    "reloaded the TLS files: new connections get the new certificate"
                );
            }
            Err(error) => {
                record::tls_reload(false);
                tracing::warn!(error = %error, "the changed TLS files are invalid; keeping the current certificate");
            }
        }
    }
}
