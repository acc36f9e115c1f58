//! Start-up and shutdown of `inhoused`: configuration, engine, socket, serve, signals.
//!
//! Order matters: models are loaded before the socket is bound, so "the socket accepts" means
//! "ready to answer"; on SIGTERM or SIGINT the listener closes first and open requests finish.
//! Under systemd ([`systemd`]) the socket is passed in already listening, READY=1 is sent once
//! the models are loaded, and STOPPING=1 as soon as the shutdown signal arrives.

pub mod store;
pub mod systemd;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::engine::llama::{EngineConfig, LlamaEngine};
use crate::engine::EngineError;
use crate::scheduler::Limits;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;

/// Exit status for a configuration problem the admin must fix (sysexits' `EX_CONFIG`); systemd
/// is told not to restart on it.
pub const EXIT_CONFIG: i32 = 78;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The master key or the database was refused.
    #[error(transparent)]
    Store(#[from] store::StoreStartError),
    /// A model failed to load.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The socket could not be set up.
    #[error("socket {path}: {reason}")]
    Socket {
        /// Socket path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

impl DaemonError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) | DaemonError::Store(_) => EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Binds the API socket at `path`. An existing path is removed only when it is a socket that
/// nobody answers on (a stale one); anything else there is an error, never deleted.
pub fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |reason: String| DaemonError::Socket {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err("another daemon is already listening there".into()));
            }
            std::fs::remove_file(path)
                .map_err(|e| err(format!("cannot remove stale socket: {e}")))?;
        }
        Ok(_) => {
            return Err(err(
                "the path exists and is not a socket; refusing to replace it".into(),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    // Owner and group may connect; the group is how clients are admitted (see the socket unit).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| err(format!("cannot set mode 0660: {e}")))?;
    Ok(listener)
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
}

/// Runs the daemon with a checked configuration until a shutdown signal. `activation` is what
/// systemd passed (see [`systemd::Activation::from_env`]); [`systemd::Activation::none`] binds
/// `config.socket` instead.
pub async fn run(config: Config, activation: systemd::Activation) -> Result<(), DaemonError> {
    let _watchdog = systemd::spawn_watchdog(activation.watchdog);
    config.check()?;
    if config.models.is_empty() {
        return Err(crate::config::ConfigError::Invalid(
            "no models configured: pass --model NAME=PATH or add a [models] table".into(),
        )
        .into());
    }
    // The key and the database come first: a wrong key must stop the daemon (status 78)
    // before any model is loaded or the socket opened.
    let store = store::open(&config).await?;
    let _ = store
        .audit_append(
            "daemon_start",
            None,
            serde_json::json!({"pid": std::process::id()}).to_string(),
        )
        .await;
    let retention = config.retention_days.map(|days| {
        tokio::spawn(store::retention_loop(
            store.clone(),
            days,
            std::time::Duration::from_secs(config.retention_check_secs),
        ))
    });
    let engine_cfg = EngineConfig {
        threads: config.threads,
        ctx_size: config.ctx_size,
        gpu_layers: config.gpu_layers,
        queue_size: config.queue_size,
        slots: config.slots,
        cache_reuse_across_users: config.cache_reuse_across_users,
        prefill_chunk: config.prefill_chunk,
    };
    let models: Vec<_> = config
        .models
        .iter()
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    systemd::notify_status(&format!("loading {} model(s)", models.len()));
    let engine = tokio::task::spawn_blocking(move || LlamaEngine::start(models, engine_cfg))
        .await
        .map_err(|e| EngineError::Inference(format!("engine start panicked: {e}")))??;
    for m in crate::engine::Engine::models(&engine) {
        tracing::info!(model = %m.name, arch = %m.architecture, n_ctx = m.n_ctx, "model loaded");
    }
    let max_ctx = config.ctx_size;
    let state = AppState {
        engine: Arc::new(engine),
        limits: Limits {
            default_max_tokens: config.default_max_tokens,
            max_tokens_cap: max_ctx,
        },
        roles: crate::api::auth::Roles::new(&config.roles),
        store: store.clone(),
    };
    let n_models = config.models.len();
    // The activated socket belongs to systemd (inhoused.socket): it outlives this process and is
    // never removed here. A socket we bound ourselves is removed on the way out.
    let (listener, bound) = match activation.listener {
        Some(l) => {
            l.set_nonblocking(true)?;
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf));
            let path = path.unwrap_or_default().display().to_string();
            tracing::info!(socket = %path, "listening on the socket systemd passed");
            (UnixListener::from_std(l)?, None)
        }
        None => {
            let l = bind_socket(&config.socket)?;
            tracing::info!(socket = %config.socket.display(), "listening");
            (l, Some(config.socket.clone()))
        }
    };
    systemd::notify_ready(&format!("serving {n_models} model(s)"));
    let shutdown = async {
        shutdown_signal().await;
        systemd::notify_stopping();
    };
    api::serve(listener, state, shutdown).await?;
    if let Some(path) = bound {
        let _ = std::fs::remove_file(path);
    }
    if let Some(r) = retention {
        r.abort();
    }
    // Every request has finished: flush the store's queue, log the stop, close the database.
    let _ = store
        .audit_append(
            "daemon_stop",
            None,
            serde_json::json!({"pid": std::process::id()}).to_string(),
        )
        .await;
    store.close().await;
    tracing::info!("store closed");
    tracing::info!("stopped");
    Ok(())
}
