//! The access configuration in force, and the watch that reloads it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::AccessConfig;
use crate::engine::EventHub;

/// How often the files are looked at: a rotated key is honoured this soon.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The auth file in force, swapped whole when the file changes.
pub struct AccessControl {
    path: PathBuf,
    current: ArcSwap<AccessConfig>,
    hub: Arc<EventHub>,
}

impl AccessControl {
    /// Loads the file; a file that does not load stops vowd at start.
    pub fn load(path: &Path, hub: Arc<EventHub>) -> Result<Arc<Self>, String> {
        let config = AccessConfig::load(path)?;
        hub.set_quotas(config.quotas.clone());
        Ok(Arc::new(Self {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(config),
            hub,
        }))
    }

    /// The configuration in force now.
    pub fn current(&self) -> arc_swap::Guard<Arc<AccessConfig>> {
        self.current.load()
    }

    /// Reloads the file (and the JWKS it names) whenever their contents
    /// change, until `stop`. Invalid contents keep the previous config and
    /// are logged with the reason.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut seen = self.fingerprint();
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
            let now = self.fingerprint();
            if now == seen {
                continue;
            }
            seen = now;
            match AccessConfig::load(&self.path) {
                Ok(config) => {
                    self.hub.set_quotas(config.quotas.clone());
                    self.current.store(Arc::new(config));
                    tracing::info!(path = %self.path.display(), "auth file reloaded");
                }
                Err(error) => tracing::error!(
                    %error,
                    "the changed auth file is not valid; the previous one stays in force"
                ),
            }
        }
    }

    /// A digest of the auth file and of every file next to it that it may
    /// name (the JWKS), so that a rotation of either is seen.
    fn fingerprint(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        if let Ok(text) = std::fs::read(&self.path) {
            digest.update(&text);
            if let Ok(value) = toml::from_slice::<toml::Value>(&text)
                && let Some(jwks) = value
                    .get("jwt")
                    .and_then(|jwt| jwt.get("jwks_file"))
                    .and_then(toml::Value::as_str)
            {
                let base = self.path.parent().unwrap_or_else(|| Path::new("."));
                if let Ok(keys) = std::fs::read(base.join(jwks)) {
                    digest.update(&keys);
                }
            }
        }
        digest.finalize().into()
    }
}
