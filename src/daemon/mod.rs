//! Start-up and shutdown of `inhoused`: configuration, engine, socket, serve, signals.
//!
//! Order matters: models are loaded before the socket is bound, so "the socket accepts" means
//! "ready to answer"; on SIGTERM or SIGINT the listener closes first and open requests finish.

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
            DaemonError::Config(_) => EXIT_CONFIG,
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

/// Runs the daemon with a checked configuration until a shutdown signal.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    config.check()?;
    if config.models.is_empty() {
        return Err(crate::config::ConfigError::Invalid(
            "no models configured: pass --model NAME=PATH or add a [models] table".into(),
        )
        .into());
    }
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
    };
    let listener = bind_socket(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), "listening");
    api::serve(listener, state, shutdown_signal()).await?;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("stopped");
    Ok(())
}
