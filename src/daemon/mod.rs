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
use crate::engine::pool::ModelPool;
use crate::engine::EngineError;
use crate::jobs::{JobError, JobRunner};
use crate::models::{ModelStore, ModelStoreError};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

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
    /// The model store could not be opened (its folders, or the trusted keys): a problem the
    /// admin must fix, like the configuration.
    #[error("cannot open the model store: {0}")]
    ModelStore(#[from] ModelStoreError),
    /// Opening the model store did not finish (the task running it panicked).
    #[error("opening the model store did not finish: {0}")]
    ModelStoreTask(String),
    /// The job runner could not set up `state-dir/jobs`.
    #[error(transparent)]
    Jobs(#[from] JobError),
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
            DaemonError::Config(_) | DaemonError::Store(_) | DaemonError::ModelStore(_) => {
                EXIT_CONFIG
            }
            DaemonError::ModelStoreTask(_)
            | DaemonError::Jobs(_)
            | DaemonError::Engine(_)
            | DaemonError::Socket { .. }
            | DaemonError::Io(_) => 1,
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

/// Opens the model store in the state directory (off the runtime: it lists and cleans folders
/// and reads the trusted keys).
async fn open_model_store(config: &Config) -> Result<Arc<ModelStore>, DaemonError> {
    let (dir, signed, keys) = (
        config.state_dir.clone(),
        config.require_signed_models,
        config.trusted_keys_dir.clone(),
    );
    let max = config.model_size_limit();
    let store = tokio::task::spawn_blocking(move || ModelStore::open(&dir, signed, &keys, max))
        .await
        .map_err(|e| DaemonError::ModelStoreTask(e.to_string()))??;
    Ok(Arc::new(store))
}

/// Starts the job runner and its dataset sweeper, then resumes or fails the jobs the previous
/// run left unfinished, so that none stays `running` without a process.
async fn start_jobs(
    config: &Config,
    store: &crate::storage::StoreHandle,
    models: Arc<ModelStore>,
) -> Result<(Arc<JobRunner>, JoinHandle<()>), DaemonError> {
    let jobs = JobRunner::new(
        store.clone(),
        Some(models),
        config.models.clone(),
        &config.state_dir,
        config.jobs.clone(),
    )?;
    let sweeper = jobs.spawn_sweeper();
    match jobs.recover().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "jobs resumed or queued again"),
        Err(e) => tracing::error!(error = %e, "cannot recover unfinished jobs"),
    }
    Ok((jobs, sweeper))
}

/// The API socket: the one systemd passed, else `config.socket` bound here. The second value is
/// the path to remove on the way out: the activated socket belongs to systemd
/// (inhoused.socket), outlives this process and is never removed here.
fn listen(
    activated: Option<std::os::unix::net::UnixListener>,
    config: &Config,
) -> Result<(UnixListener, Option<PathBuf>), DaemonError> {
    match activated {
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
            Ok((UnixListener::from_std(l)?, None))
        }
        None => {
            let l = bind_socket(&config.socket, config.socket_group.as_deref())?;
            tracing::info!(socket = %config.socket.display(), "listening");
            Ok((l, Some(config.socket.clone())))
        }
    }
}

/// Runs the daemon with a checked configuration until a shutdown signal. `activation` is what
/// systemd passed (see [`systemd::Activation::from_env`]); [`systemd::Activation::none`] binds
/// `config.socket` instead.
pub async fn run(config: Config, activation: systemd::Activation) -> Result<(), DaemonError> {
    let _watchdog = systemd::spawn_watchdog(activation.watchdog);
    config.check()?;
    if let Some(point) = crate::fault::armed_name() {
        tracing::warn!(
            point,
            "INHOUSE_FAULT is set: this process kills itself at that point"
        );
    }
    // The key and the database come first: a wrong key must stop the daemon (status 78)
    // before any model is loaded or the socket opened.
    let store = store::open(&config).await?;
    store::audit_pid(&store, "daemon_start").await;
    let retention = config.retention_days.map(|days| {
        tokio::spawn(store::retention_loop(
            store.clone(),
            days,
            config.retention_interval(),
        ))
    });
    let model_store = open_model_store(&config).await?;
    let pool_cfg = config.pool_config();
    tracing::info!(
        budget_mib = pool_cfg.budget >> 20,
        stored = model_store.list().len(),
        "model pool"
    );
    // An upstream shadows nothing: a stored model under an upstream's name is a conflict the
    // admin must resolve (rename one of them), like a name used twice in the file.
    if let Some(m) = model_store
        .list()
        .into_iter()
        .find(|m| config.upstreams.iter().any(|u| u.name == m.name))
    {
        return Err(crate::config::ConfigError::Invalid(format!(
            "upstreams.{0}: the name {0:?} is also a model in the store; an upstream needs a \
             name of its own (rename it, or remove the stored model)",
            m.name
        ))
        .into());
    }
    let pool = ModelPool::new(pool_cfg, config.models.clone(), Some(model_store.clone()))?;
    let (jobs, sweeper) = start_jobs(&config, &store, model_store).await?;
    systemd::notify_status(&format!("loading {} model(s)", config.models.len()));
    pool.preload().await?;
    let reaper = pool.reaper();
    let engine: Arc<dyn crate::engine::Engine> = if config.upstreams.is_empty() {
        pool.clone() as Arc<dyn crate::engine::Engine>
    } else {
        for u in &config.upstreams {
            tracing::info!(upstream = %u.name, socket = %u.socket, model = %u.model, "upstream model");
        }
        Arc::new(crate::upstream::UpstreamEngine::new(
            pool.clone(),
            &config.upstreams,
            config.queue_size,
        ))
    };
    let state = AppState::new(&config, engine, store.clone(), Some(jobs.clone()));
    let started = std::time::Instant::now();
    let chunks = state
        .collections
        .start()
        .await
        .map_err(|e| DaemonError::Store(store::StoreStartError::Store(e)))?;
    tracing::info!(
        chunks,
        secs = started.elapsed().as_secs_f64(),
        index_bytes = state.collections.index_bytes(),
        "knowledge index built from the sealed rows"
    );
    let file_retention = config.retention_days.map(|days| {
        tokio::spawn(crate::collections::retention_loop(
            state.collections.clone(),
            days,
            config.retention_interval(),
        ))
    });
    let n_models = crate::engine::Engine::models(pool.as_ref()).len() + config.upstreams.len();
    let (listener, bound) = listen(activation.listener, &config)?;
    systemd::notify_ready(&format!("serving {n_models} model(s)"));
    let shutdown = async {
        shutdown_signal().await;
        systemd::notify_stopping();
    };
    raise_fd_limit();
    let server_limits = crate::api::server::ServerLimits::from_config(&config.limits);
    api::serve(listener, state, server_limits, shutdown).await?;
    if let Some(path) = bound {
        let _ = std::fs::remove_file(path);
    }
    for r in [retention, file_retention].into_iter().flatten() {
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
    store::audit_pid(&store, "daemon_stop").await;
    store.close().await;
    tracing::info!("store closed");
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_errors_keep_their_exit_codes() {
        let config = DaemonError::Config(crate::config::ConfigError::Invalid("x".into()));
        assert_eq!(config.exit_code(), EXIT_CONFIG);
        // A store the admin must repair (folders, trusted keys) is a configuration problem.
        let models = DaemonError::from(ModelStoreError::Signature("bad key".into()));
        assert_eq!(models.exit_code(), EXIT_CONFIG);
        assert!(models.to_string().contains("model store"), "{models}");
        let jobs = DaemonError::from(JobError::Io("state-dir/jobs: denied".into()));
        assert_eq!(jobs.exit_code(), 1);
        assert_eq!(DaemonError::ModelStoreTask("panic".into()).exit_code(), 1);
        let engine = DaemonError::from(EngineError::UnknownModel("m".into()));
        assert_eq!(engine.exit_code(), 1);
    }
}
