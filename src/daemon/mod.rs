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
use crate::engine::llama::EngineConfig;
use crate::engine::pool::{GpuLayers, ModelPool, PoolConfig};
use crate::engine::EngineError;
use crate::models::ModelStore;
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

/// Lets the process use as many file descriptors as its hard limit allows, so that the
/// connection cap, not `EMFILE`, is what bounds connections.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            tracing::warn!(soft, hard, "cannot raise the open-file limit");
        }
    }
}

/// Checks the socket's parent directory: it must be a real directory (not a symlink), owned by
/// root or by us, and not writable by others unless sticky (like `/tmp`), so that no other
/// user can swap the socket for one of their own.
fn check_socket_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| format!("directory {}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "directory {} is a symlink; refusing it",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "directory {} is owned by uid {}, not by root or by this daemon (uid {me})",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "directory {} is writable by group or others (mode {:o}) without the sticky bit",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Binds the API socket at `path`. The parent directory is checked first; an existing path is
/// removed only when it is a socket that nobody answers on (a stale one); a symlink or anything
/// else there is an error, never deleted. The socket gets mode 0660 and, when configured, the
/// group whose members may connect.
pub fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    let err = |reason: String| DaemonError::Socket {
        path: path.display().to_string(),
        reason,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    check_socket_dir(parent).map_err(err)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(err(
                "the path is a symlink; refusing to follow or replace it".into(),
            ))
        }
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
    let gid = match group {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            _ => return Err(err(format!("socket-group {name:?} does not exist"))),
        },
    };
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    // Owner and group may connect; the group is how clients are admitted.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| err(format!("cannot set mode 0660: {e}")))?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| err(format!("cannot give the socket to its group: {e}")))?;
    }
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
        gpu_layers: 0,
        queue_size: config.queue_size,
        slots: config.slots,
        cache_reuse_across_users: config.cache_reuse_across_users,
        prefill_chunk: config.prefill_chunk,
        deterministic_batching: config.deterministic_batching,
    };
    let model_store = {
        let (dir, signed, keys) = (
            config.state_dir.clone(),
            config.require_signed_models,
            config.trusted_keys_dir.clone(),
        );
        let max = config.max_model_bytes.resolve(|| 256 << 30);
        tokio::task::spawn_blocking(move || ModelStore::open(&dir, signed, &keys, max))
            .await
            .map_err(|e| EngineError::Inference(format!("model store: {e}")))?
            .map_err(|e| crate::config::ConfigError::Invalid(e.to_string()))?
    };
    let pool_cfg = PoolConfig {
        engine: engine_cfg,
        gpu_layers: match config.gpu_layers {
            crate::config::GpuLayersSetting::Auto => GpuLayers::Auto,
            crate::config::GpuLayersSetting::Count(n) => GpuLayers::Fixed(n),
        },
        budget: config
            .memory_budget
            .resolve(crate::config::default_memory_budget),
        keep_alive: Some(std::time::Duration::from_secs(config.keep_alive_secs)),
        busy_wait: std::time::Duration::from_secs(120),
    };
    tracing::info!(
        budget_mib = pool_cfg.budget >> 20,
        stored = model_store.list().len(),
        "model pool"
    );
    let model_store = Arc::new(model_store);
    let pool = ModelPool::new(pool_cfg, config.models.clone(), Some(model_store.clone()))?;
    // Toolchain jobs: a job left unfinished by the previous run is resumed or failed here, so
    // none stays `running` without a process.
    let jobs = crate::jobs::JobRunner::new(
        store.clone(),
        Some(model_store),
        config.models.clone(),
        &config.state_dir,
        config.jobs.clone(),
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let sweeper = jobs.spawn_sweeper();
    match jobs.recover().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "jobs resumed or queued again"),
        Err(e) => tracing::error!(error = %e, "cannot recover unfinished jobs"),
    }
    systemd::notify_status(&format!("loading {} model(s)", config.models.len()));
    pool.preload().await?;
    let reaper = pool.reaper();
    let state = AppState::new(&config, pool.clone(), store.clone(), Some(jobs.clone()));
    let n_models = crate::engine::Engine::models(pool.as_ref()).len();
    // The activated socket belongs to systemd (inhoused.socket): it outlives this process and is
    // never removed here. A socket we bound ourselves is removed on the way out.
    let (listener, bound) = match activation.listener {
        Some(l) => {
            l.set_nonblocking(true)?;
            // systemd passes the socket without close-on-exec: job processes must not inherit
            // the daemon's listener.
            nix::fcntl::fcntl(
                &l,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(std::io::Error::from)?;
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf));
            let path = path.unwrap_or_default().display().to_string();
            tracing::info!(socket = %path, "listening on the socket systemd passed");
            (UnixListener::from_std(l)?, None)
        }
        None => {
            let l = bind_socket(&config.socket, config.socket_group.as_deref())?;
            tracing::info!(socket = %config.socket.display(), "listening");
            (l, Some(config.socket.clone()))
        }
    };
    systemd::notify_ready(&format!("serving {n_models} model(s)"));
    let shutdown = async {
        shutdown_signal().await;
        systemd::notify_stopping();
    };
    let server_limits = crate::api::server::ServerLimits::from_config(&config.limits);
    raise_fd_limit();
    api::serve(listener, state, server_limits, shutdown).await?;
    if let Some(path) = bound {
        let _ = std::fs::remove_file(path);
    }
    if let Some(r) = retention {
        r.abort();
    }
    // Job processes are stopped, their jobs left for the next start to resume or fail.
    sweeper.abort();
    jobs.shutdown().await;
    // Stop the engine threads before the process exits (see LlamaEngine::shutdown).
    reaper.abort();
    let stopping = pool.clone();
    let _ = tokio::task::spawn_blocking(move || stopping.shutdown()).await;
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
