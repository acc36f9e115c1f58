//! Start-up of the encrypted store: find the master key, open (or create) the database, finish
//! an interrupted key rotation, and run the retention purge on a schedule.
//!
//! Every failure here is a configuration problem the admin must fix (missing or wrong key, loose
//! key file, database newer than the binary), so it ends the daemon with status 78 before the
//! socket is opened.

use crate::config::Config;
use crate::crypto::MasterKey;
use crate::storage::{StoreError, StoreHandle};
use std::time::Duration;

/// The database file inside the state directory.
pub const DB_FILE: &str = "inhouse.db";

/// Why the store could not be opened; always exit status 78.
#[derive(Debug, thiserror::Error)]
pub enum StoreStartError {
    /// No key configured or found.
    #[error(
        "no master key: pass --key-file PATH (or key-file in the config), or provide the systemd \
         credential inhouse-master-key; create a key with `inhouse admin gen-key PATH`"
    )]
    NoKey,
    /// The key file was refused.
    #[error("master key: {0}")]
    Key(String),
    /// The store refused the key or the database.
    #[error("{0}")]
    Store(StoreError),
    /// The database could not be opened and the state directory's file system is full.
    #[error(
        "the file system of the state directory {dir} is full ({error}): free space there, then \
         start inhoused again"
    )]
    Full {
        /// The state directory.
        dir: String,
        /// What SQLite said.
        error: StoreError,
    },
}

/// A store error at start; [`StoreStartError::Full`] when the state directory's file system
/// has less than 1 MiB left (SQLite then reports only "disk I/O error").
fn start_error(error: StoreError, dir: &std::path::Path) -> StoreStartError {
    // The casts matter where `fsblkcnt_t` or `c_ulong` is 32 bits wide.
    #[allow(clippy::unnecessary_cast)]
    let full = nix::sys::statvfs::statvfs(dir).is_ok_and(|s| {
        (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64) < 1 << 20
    });
    if full {
        StoreStartError::Full {
            dir: dir.display().to_string(),
            error,
        }
    } else {
        StoreStartError::Store(error)
    }
}

/// Finds the master key: `key-file` when configured, else the systemd credential.
pub fn load_master_key(config: &Config) -> Result<MasterKey, StoreStartError> {
    if let Some(path) = &config.key_file {
        return MasterKey::load(path).map_err(|e| StoreStartError::Key(e.to_string()));
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(_) => {
            MasterKey::from_systemd_credential().map_err(|e| StoreStartError::Key(e.to_string()))
        }
        None => Err(StoreStartError::NoKey),
    }
}

/// Opens the store in the state directory and finishes a rotation a crash interrupted.
pub async fn open(config: &Config) -> Result<StoreHandle, StoreStartError> {
    let key = load_master_key(config)?;
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        StoreStartError::Store(StoreError::Io(std::io::Error::new(
            e.kind(),
            format!("state directory {}: {e}", config.state_dir.display()),
        )))
    })?;
    // Snapshots a killed backup left behind.
    crate::storage::backup::clean_tmp(&config.state_dir);
    let store = StoreHandle::open(config.state_dir.join(DB_FILE), key)
        .await
        .map_err(|e| start_error(e, &config.state_dir))?;
    store.set_backup_sources(crate::storage::backup::Sources {
        trusted_keys_dir: Some(config.trusted_keys_dir.clone()),
        config_file: crate::storage::backup::noted_config_file(),
    });
    // The first start after `inhoused --restore`: the chain records the restore, once.
    crate::storage::backup::finish_restore(&store, &config.state_dir)
        .await
        .map_err(StoreStartError::Store)?;
    if let Some(status) = store
        .resume_rotation()
        .await
        .map_err(StoreStartError::Store)?
    {
        tracing::info!(?status, "finished an interrupted key rotation");
    }
    Ok(store)
}

/// Appends a daemon event (`daemon_start`, `daemon_stop`) with this process's pid to the audit
/// log. A failure here must not stop start-up or shutdown; the daemon's own log has both.
pub async fn audit_pid(store: &StoreHandle, event: &'static str) {
    let _ = store
        .audit_append(
            event,
            None,
            serde_json::json!({"pid": std::process::id()}).to_string(),
        )
        .await;
}

/// Purges records older than `retention-days`, now and then every `retention-check-secs`.
pub async fn retention_loop(store: StoreHandle, days: u32, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let cutoff = crate::storage::now_unix() - i64::from(days) * 86_400;
        match store.purge_older_than(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, days, "retention purge"),
            Err(StoreError::Closed) => return,
            Err(e) => tracing::error!(error = %e, kind = e.kind(), "retention purge failed"),
        }
    }
}
