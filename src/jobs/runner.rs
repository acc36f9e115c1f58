//! The job runner: checks and stores submissions, runs each job's `inhouse-quantize` process,
//! follows its progress, finishes, cancels and recovers jobs (see the [module map](super)).
//!
//! Each job has one tokio task ([`JobRunner::drive`]) that waits for a slot, spawns the process
//! and polls it. The process is a `std::process::Child` behind a mutex that only the task reaps
//! (`try_wait`), so a signal is never sent to a pid that was already reaped and reused. Two
//! plain threads read its stdout (progress JSON lines, passed to the task through a channel) and
//! its stderr (the last lines, kept as the reason of a failure).
//!
//! Priority: the process runs through `nice -n N` (`[jobs] nice`); `nice` execs the toolchain,
//! so the pid is the toolchain's. No `unsafe` (`pre_exec`, `setpriority`) is needed.

use super::data::{private_dir, DatasetMeta, Datasets};
use super::{check_options, summarize, DataRef, JobError, JobKind, JobRequest, JobSpec, ModelRef};
use crate::config::JobsConfig;
use crate::models::{ImportRequest, Kind, ModelStore, ModelStoreError};
use crate::storage::{JobRow, JobState, StoreHandle};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, Semaphore};

/// Time a process gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);
/// Stderr lines kept as the reason of a failure.
const STDERR_LINES: usize = 20;
/// A finetune is resumed from its checkpoint at most this many times in all.
const MAX_ATTEMPTS: u32 = 3;
/// Progress is written to the database at most this often (and once more at the end).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the task checks whether the process has exited.
const POLL: Duration = Duration::from_millis(100);
/// Environment variables of the daemon the toolchain must not inherit: systemd's notification
/// socket, socket activation and credentials are the daemon's alone.
const PRIVATE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CREDENTIALS_DIRECTORY",
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job this daemon is driving (queued or running).
struct Live {
    /// Woken by a cancel (and by shutdown).
    wake: Notify,
    /// The uid that asked to cancel, `u32::MAX` while none did.
    cancelled_by: AtomicU32,
    /// The process while it runs; only the job's task reaps it.
    child: Mutex<Option<Child>>,
    /// The last progress line, fresher than the row.
    progress: Mutex<Option<Value>>,
}

impl Live {
    fn cancel_requested(&self) -> Option<u32> {
        match self.cancelled_by.load(Ordering::SeqCst) {
            u32::MAX => None,
            uid => Some(uid),
        }
    }
}

/// What a process run came to.
enum Ended {
    /// It exited by itself (or by a signal we did not send).
    Exited {
        status: ExitStatus,
        result: Option<Value>,
        stderr: String,
    },
    /// An admin cancelled it.
    Cancelled(u32),
    /// The daemon is stopping; the row stays as it is for the next start.
    Stopping,
}

/// Runs and tracks the daemon's jobs. One per daemon, shared by the API handlers.
pub struct JobRunner {
    me: Weak<JobRunner>,
    store: StoreHandle,
    models: Option<Arc<ModelStore>>,
    configured: BTreeMap<String, PathBuf>,
    cfg: JobsConfig,
    /// `state-dir/jobs`, absolute.
    root: PathBuf,
    datasets: Datasets,
    toolchain: PathBuf,
    nice: Option<PathBuf>,
    slots: Arc<Semaphore>,
    live: Mutex<HashMap<i64, Arc<Live>>>,
    stopping: AtomicBool,
}

/// Finds `name` in `$PATH` (or the usual bin directories).
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The toolchain: `[jobs] toolchain-binary`, else `inhouse-quantize` next to this executable
/// (a build tree, `/usr/lib/...`), else on `$PATH` (the .deb puts the daemon in /usr/sbin and
/// the toolchain in /usr/bin).
pub fn toolchain_path(cfg: &JobsConfig) -> PathBuf {
    if let Some(p) = &cfg.toolchain_binary {
        return p.clone();
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("inhouse-quantize")));
    match beside {
        Some(p) if p.is_file() => p,
        other => on_path("inhouse-quantize")
            .or(other)
            .unwrap_or_else(|| PathBuf::from("inhouse-quantize")),
    }
}

/// Is a process with this pid one of our job's processes? Its command line must name the job's
/// working folder (so a pid reused by an unrelated process is never killed).
fn is_job_process(pid: i64, work: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // Component-wise, so that job 1's folder does not match job 12's paths.
    cmdline
        .split(|&b| b == 0)
        .any(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)).starts_with(work))
}

/// Whether a pid is gone (or a zombie nobody reaped yet).
fn pid_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

impl JobRunner {
    /// A runner for the daemon: jobs under `state_dir/jobs`, models from `models` (the store)
    /// and `configured` (the config's name → path).
    pub fn new(
        store: StoreHandle,
        models: Option<Arc<ModelStore>>,
        configured: BTreeMap<String, PathBuf>,
        state_dir: &Path,
        cfg: JobsConfig,
    ) -> Result<Arc<JobRunner>, JobError> {
        let root = state_dir.join("jobs");
        private_dir(&root.join("work"))?;
        let root = root
            .canonicalize()
            .map_err(|e| JobError::Io(format!("{}: {e}", root.display())))?;
        let max = cfg.max_data_bytes.resolve(|| 4 << 30);
        let datasets = Datasets::open(&root, max)?;
        let toolchain = toolchain_path(&cfg);
        let nice = if cfg.nice == 0 {
            None
        } else {
            let n = on_path("nice");
            if n.is_none() {
                tracing::warn!("nice(1) not found: jobs run at the daemon's priority");
            }
            n
        };
        tracing::info!(toolchain = %toolchain.display(), "jobs");
        let slots = Arc::new(Semaphore::new(cfg.max_concurrent.max(1) as usize));
        Ok(Arc::new_cyclic(|me| JobRunner {
            me: me.clone(),
            store,
            models,
            configured,
            cfg,
            root,
            datasets,
            toolchain,
            nice,
            slots,
            live: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        }))
    }

    /// The datasets folder (uploads go through it).
    pub fn datasets(&self) -> &Datasets {
        &self.datasets
    }

    /// Removes stale unclaimed datasets every hour (see [`Datasets::sweep`]).
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            every.tick().await;
            loop {
                every.tick().await;
                let Some(r) = me.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || r.datasets.sweep()).await;
            }
        })
    }

    fn work_dir(&self, id: i64) -> PathBuf {
        self.root.join("work").join(id.to_string())
    }

    // ----- submission -----

    fn resolve_model(&self, name: &str) -> Result<ModelRef, JobError> {
        if let Some(path) = self.configured.get(name) {
            let (digest, _) = inhouse_formats::sign::sha256_file(path)
                .map_err(|e| JobError::Io(format!("model {name:?}: {e}")))?;
            return Ok(ModelRef {
                name: name.to_string(),
                digest,
                path: path.clone(),
            });
        }
        let store = self
            .models
            .as_ref()
            .ok_or_else(|| JobError::UnknownModel(name.to_string()))?;
        match store.get(name) {
            Ok(m) if m.kind == Kind::Model => Ok(ModelRef {
                name: name.to_string(),
                path: store.blob_path(&m.digest),
                digest: m.digest,
            }),
            Ok(_) => Err(JobError::Invalid {
                field: "model".into(),
                message: format!("{name:?} is a LoRA adapter, not a model"),
            }),
            Err(_) => Err(JobError::UnknownModel(name.to_string())),
        }
    }

    fn resolve_data(&self, id: &str, kind: JobKind) -> Result<DatasetMeta, JobError> {
        let meta = self.datasets.get(id)?;
        if kind != JobKind::Prepare && meta.format != "jsonl" {
            return Err(JobError::Invalid {
                field: "data".into(),
                message: format!(
                    "a {} job reads JSONL; dataset {id} is {} (run a prepare job on it first)",
                    kind.as_str(),
                    meta.format
                ),
            });
        }
        Ok(meta)
    }

    /// Checks a request into a spec and the datasets it claims (blocking: it may hash a
    /// configured model).
    fn check(&self, req: &JobRequest) -> Result<(JobSpec, Vec<DatasetMeta>), JobError> {
        let kind = JobKind::parse(&req.kind)?;
        let k = kind.as_str();
        let options = check_options(kind, req.options.as_ref())?;
        let needs_model = kind != JobKind::Prepare;
        let needs_data = kind != JobKind::Quantize;
        let needs_output = matches!(kind, JobKind::Finetune | JobKind::Quantize);
        let refuse = |field: &str, present: bool| -> Result<(), JobError> {
            if present {
                Err(JobError::Invalid {
                    field: field.into(),
                    message: format!("a {k} job does not take {field}"),
                })
            } else {
                Ok(())
            }
        };
        if !needs_model {
            refuse("model", req.model.is_some())?;
        }
        if !needs_data {
            refuse("data", req.data.is_some())?;
        }
        if !needs_output {
            refuse("output_name", req.output_name.is_some())?;
        }
        let model = match (&req.model, needs_model) {
            (Some(m), true) => Some(self.resolve_model(m)?),
            (None, true) => {
                return Err(JobError::Missing {
                    kind: k,
                    field: "model",
                })
            }
            _ => None,
        };
        let compare = options
            .compare
            .as_deref()
            .map(|m| self.resolve_model(m))
            .transpose()?;
        let mut claimed = vec![];
        let data = match (&req.data, needs_data) {
            (Some(id), true) => {
                let meta = self.resolve_data(id, kind)?;
                claimed.push(meta.clone());
                Some(meta)
            }
            (None, true) => {
                return Err(JobError::Missing {
                    kind: k,
                    field: "data",
                })
            }
            _ => None,
        };
        let eval_data = match options.eval_data.as_deref() {
            Some(id) if Some(id) == req.data.as_deref() => {
                return Err(JobError::Invalid {
                    field: "options.eval_data".into(),
                    message: "must be another dataset than data".into(),
                })
            }
            Some(id) => {
                let meta = self.resolve_data(id, kind)?;
                claimed.push(meta.clone());
                Some(meta)
            }
            None => None,
        };
        let output_name = match (&req.output_name, needs_output) {
            (Some(n), true) => {
                crate::models::check_name(n).map_err(|e| JobError::Invalid {
                    field: "output_name".into(),
                    message: e.to_string(),
                })?;
                let taken = self.configured.contains_key(n)
                    || self.models.as_ref().is_some_and(|s| s.get(n).is_ok());
                if taken {
                    return Err(JobError::OutputExists(n.clone()));
                }
                Some(n.clone())
            }
            (None, true) => {
                return Err(JobError::Missing {
                    kind: k,
                    field: "output_name",
                })
            }
            _ => None,
        };
        let to_ref = |m: &DatasetMeta| DataRef {
            id: m.id.clone(),
            sha256: m.sha256.clone(),
            size: m.size,
            format: m.format.clone(),
        };
        let spec = JobSpec {
            kind,
            model,
            compare,
            data: data.as_ref().map(to_ref),
            eval_data: eval_data.as_ref().map(to_ref),
            options,
            output_name,
        };
        Ok((spec, claimed))
    }

    /// Checks and records a job, moves its datasets into its working folder and starts driving
    /// it. Returns its row (`queued`).
    pub async fn submit(&self, req: JobRequest, uid: u32) -> Result<JobRow, JobError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(JobError::ShuttingDown);
        }
        let me = self.arc();
        let (spec, claimed) = tokio::task::spawn_blocking(move || me.check(&req))
            .await
            .map_err(|e| JobError::Io(format!("checking the job: {e}")))??;
        if !self.toolchain.is_file() {
            return Err(JobError::Toolchain(self.toolchain.display().to_string()));
        }
        let params = serde_json::to_string(&spec).map_err(|e| JobError::Io(e.to_string()))?;
        let kind = spec.kind.as_str();
        let row = self
            .store
            .call(move |s| s.job_create(kind, uid, &params))
            .await?;
        let id = row.id;
        // The job owns its data from now on: a failure here ends it at once.
        let work = self.work_dir(id);
        let moved = (|| {
            private_dir(&work.join("data"))?;
            for (meta, role) in claimed.iter().zip(["train", "eval"]) {
                let dest = work.join("data").join(format!("{role}.{}", meta.format));
                self.datasets.claim(meta, &dest)?;
            }
            Ok::<(), JobError>(())
        })();
        if let Err(e) = moved {
            let reason = e.to_string();
            let _ = self
                .store
                .call(move |s| s.job_finish(id, JobState::Failed, None, Some(&reason), None))
                .await;
            self.clean(id, true);
            return Err(e);
        }
        tracing::info!(job = id, kind, uid, "job submitted");
        self.start_task(id, uid, spec, false);
        Ok(row)
    }

    fn arc(&self) -> Arc<JobRunner> {
        self.me.upgrade().expect("the runner is alive while used")
    }

    fn start_task(&self, id: i64, uid: u32, spec: JobSpec, resume: bool) {
        let live = Arc::new(Live {
            wake: Notify::new(),
            cancelled_by: AtomicU32::new(u32::MAX),
            child: Mutex::new(None),
            progress: Mutex::new(None),
        });
        lock(&self.live).insert(id, live.clone());
        let me = self.arc();
        tokio::spawn(async move {
            me.drive(id, uid, spec, resume, &live).await;
            lock(&me.live).remove(&id);
        });
    }

    // ----- reading -----

    /// A row as the API shows it: the live progress (fresher than the row) over the stored one.
    pub fn view(&self, mut row: JobRow) -> Value {
        if let Some(live) = lock(&self.live).get(&row.id) {
            if let Some(p) = lock(&live.progress).clone() {
                row.progress = Some(p);
            }
        }
        let fraction = match row.state {
            JobState::Succeeded => 1.0,
            _ => row
                .progress
                .as_ref()
                .and_then(|p| p["fraction"].as_f64())
                .unwrap_or(0.0),
        };
        let mut v = serde_json::to_value(&row).unwrap_or(Value::Null);
        v["fraction"] = json!(fraction);
        v
    }

    /// A job's row; `NotFound` for an unknown id.
    async fn row(&self, id: i64) -> Result<JobRow, JobError> {
        self.store
            .call(move |s| s.job_get(id))
            .await
            .map_err(|e| match e {
                crate::storage::StoreError::NotFound { .. } => JobError::NotFound(id),
                e => e.into(),
            })
    }

    /// One job.
    pub async fn get(&self, id: i64) -> Result<Value, JobError> {
        let row = self.row(id).await?;
        Ok(self.view(row))
    }

    /// The newest jobs.
    pub async fn list(&self, limit: u32) -> Result<Vec<Value>, JobError> {
        let rows = self.store.call(move |s| s.job_list(limit)).await?;
        Ok(rows.into_iter().map(|r| self.view(r)).collect())
    }

    // ----- cancel -----

    /// Cancels a queued or running job for admin `uid` and waits until it has ended (its
    /// process gone, its files removed).
    pub async fn cancel(&self, id: i64, uid: u32) -> Result<Value, JobError> {
        let row = self.row(id).await?;
        if row.state.is_final() {
            return Err(JobError::Ended {
                id,
                state: row.state.as_str(),
            });
        }
        let live = lock(&self.live).get(&id).cloned();
        match live {
            Some(live) => {
                let _ = live.cancelled_by.compare_exchange(
                    u32::MAX,
                    uid,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                live.wake.notify_one();
                let deadline = Instant::now() + TERM_GRACE + Duration::from_secs(10);
                while lock(&self.live).contains_key(&id) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            None => {
                // Not driven by this daemon (cannot happen after start-up recovery, but a row
                // must never stay unfinished): end it here.
                self.finish(id, JobState::Cancelled, None, None, Some(uid))
                    .await;
                self.clean(id, false);
            }
        }
        self.get(id).await
    }

    // ----- running -----

    async fn finish(
        &self,
        id: i64,
        state: JobState,
        result: Option<Value>,
        error: Option<String>,
        actor: Option<u32>,
    ) {
        let result = result.map(|r| r.to_string());
        let r = self
            .store
            .call(move |s| s.job_finish(id, state, result.as_deref(), error.as_deref(), actor))
            .await;
        match r {
            Ok(_) => tracing::info!(job = id, state = state.as_str(), "job ended"),
            Err(e) => tracing::error!(job = id, error = %e, "cannot record the end of a job"),
        }
    }

    /// Removes a job's working files; its `data/` stays when `keep-data` is on (and
    /// `force` is false).
    fn clean(&self, id: i64, force: bool) {
        let work = self.work_dir(id);
        if self.cfg.keep_data && !force {
            if let Ok(entries) = std::fs::read_dir(&work) {
                for e in entries.flatten().filter(|e| e.file_name() != "data") {
                    let p = e.path();
                    let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&work);
        }
    }

    /// The toolchain's arguments for a job.
    fn args(&self, id: i64, spec: &JobSpec, resume: bool) -> Vec<OsString> {
        let work = self.work_dir(id);
        let data = |role: &str, d: &DataRef| work.join("data").join(format!("{role}.{}", d.format));
        let mut a: Vec<OsString> = vec![];
        let o = &spec.options;
        match spec.kind {
            JobKind::Prepare => {
                a.push("prepare".into());
                if let Some(d) = &spec.data {
                    a.push(data("train", d).into());
                }
                a.push("--out".into());
                a.push(work.join("out").into());
                if let Some(s) = o.seed {
                    a.extend(["--seed".into(), s.to_string().into()]);
                }
                if let Some(s) = o.eval_share {
                    a.extend(["--eval-share".into(), s.to_string().into()]);
                }
                if let Some(s) = o.near_dup_threshold {
                    a.extend(["--near-dup-threshold".into(), s.to_string().into()]);
                }
            }
            JobKind::Finetune => {
                a.push("finetune".into());
                if let Some(m) = &spec.model {
                    a.extend(["--model".into(), m.path.clone().into()]);
                }
                if let Some(d) = &spec.data {
                    a.extend(["--data".into(), data("train", d).into()]);
                }
                if let Some(d) = &spec.eval_data {
                    a.extend(["--eval".into(), data("eval", d).into()]);
                }
                a.extend(["--out".into(), work.join("out.gguf").into()]);
                a.extend(["--checkpoint-dir".into(), work.join("checkpoints").into()]);
                if let Some(e) = o.epochs {
                    a.extend(["--epochs".into(), e.to_string().into()]);
                }
                if let Some(lr) = o.lr {
                    a.extend(["--lr".into(), lr.to_string().into()]);
                }
                if let Some(opt) = &o.optimizer {
                    a.extend(["--optimizer".into(), opt.into()]);
                }
                if let Some(c) = o.ctx {
                    a.extend(["--ctx".into(), c.to_string().into()]);
                }
                if let Some(w) = o.max_windows {
                    a.extend(["--max-windows".into(), w.to_string().into()]);
                }
                if resume {
                    a.push("--resume".into());
                }
            }
            JobKind::Quantize => {
                a.push("quantize".into());
                if let Some(m) = &spec.model {
                    a.push(m.path.clone().into());
                }
                a.push(work.join("out.gguf").into());
                a.extend([
                    "--type".into(),
                    o.quant_type.as_deref().unwrap_or("Q8_0").into(),
                ]);
            }
            JobKind::Eval => {
                a.push("eval".into());
                for m in [&spec.model, &spec.compare].into_iter().flatten() {
                    a.extend(["--model".into(), m.path.clone().into()]);
                }
                if let Some(d) = &spec.data {
                    a.extend(["--data".into(), data("train", d).into()]);
                }
                a.extend(["--out".into(), work.join("report.json").into()]);
                if let Some(c) = o.ctx {
                    a.extend(["--ctx".into(), c.to_string().into()]);
                }
            }
        }
        if spec.kind != JobKind::Prepare {
            if let Some(t) = o.threads {
                a.extend(["--threads".into(), t.to_string().into()]);
            }
            // `prepare` has no progress protocol (yet): it shows fraction 0 until it ends.
            a.extend(["--progress".into(), "json".into()]);
        }
        a
    }

    /// Drives one job from queued to its end.
    async fn drive(&self, id: i64, uid: u32, spec: JobSpec, resume: bool, live: &Live) {
        // Wait for a slot, or a cancel.
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            _ = live.wake.notified() => None,
        };
        if self.stopping.load(Ordering::SeqCst) {
            return; // stays queued (or running) for the next start
        }
        let Some(_permit) = permit else {
            let by = live.cancel_requested();
            self.finish(id, JobState::Cancelled, None, None, by).await;
            self.clean(id, false);
            return;
        };
        if let Some(by) = live.cancel_requested() {
            self.finish(id, JobState::Cancelled, None, None, Some(by))
                .await;
            self.clean(id, false);
            return;
        }
        let mut resume = resume;
        let ended = loop {
            match self.run_process(id, &spec, resume, live).await {
                Ok(Ended::Exited { status, .. })
                    if self.crashed_resumable(id, &spec, status).await =>
                {
                    tracing::warn!(job = id, %status, "job process crashed; resuming from its checkpoint");
                    resume = true;
                }
                Ok(e) => break e,
                Err(reason) => {
                    self.finish(id, JobState::Failed, None, Some(reason), None)
                        .await;
                    self.clean(id, false);
                    return;
                }
            }
        };
        match ended {
            Ended::Stopping => {}
            Ended::Cancelled(by) => {
                self.finish(id, JobState::Cancelled, None, None, Some(by))
                    .await;
                self.clean(id, false);
            }
            Ended::Exited {
                status,
                result,
                stderr,
            } => {
                if status.success() {
                    let me = self.arc();
                    let spec2 = spec.clone();
                    let done =
                        tokio::task::spawn_blocking(move || me.collect(id, uid, &spec2, result))
                            .await
                            .unwrap_or_else(|e| Err(format!("collecting the output: {e}")));
                    match done {
                        Ok(result) => {
                            let p = json!({"fraction": 1.0}).to_string();
                            let _ = self
                                .store
                                .call(move |s| s.job_progress(id, Some(&p), None))
                                .await;
                            self.finish(id, JobState::Succeeded, Some(result), None, None)
                                .await
                        }
                        Err(reason) => {
                            self.finish(id, JobState::Failed, None, Some(reason), None)
                                .await
                        }
                    }
                } else {
                    let how = match status.code() {
                        Some(2) => "refused its input (exit status 2)".to_string(),
                        Some(c) => format!("failed (exit status {c})"),
                        None => {
                            use std::os::unix::process::ExitStatusExt;
                            format!("was killed by signal {}", status.signal().unwrap_or(0))
                        }
                    };
                    let reason = if stderr.is_empty() {
                        format!("inhouse-quantize {how}")
                    } else {
                        format!("inhouse-quantize {how}: {stderr}")
                    };
                    self.finish(id, JobState::Failed, None, Some(reason), None)
                        .await;
                }
                self.clean(id, false);
            }
        }
    }

    /// Whether a process that died by a signal (a crash, the OOM killer) may be rerun with
    /// `--resume`: a finetune with a checkpoint in its folder, under [`MAX_ATTEMPTS`]. An exit
    /// status (1 failure, 2 bad input) is the toolchain's verdict and is not retried.
    async fn crashed_resumable(&self, id: i64, spec: &JobSpec, status: ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        if spec.kind != JobKind::Finetune || status.signal().is_none() {
            return false;
        }
        match self.store.call(move |s| s.job_get(id)).await {
            Ok(row) => row.attempts < MAX_ATTEMPTS && self.checkpoint_of(&row).is_some(),
            Err(_) => false,
        }
    }

    /// The job's checkpoint folder, when the toolchain reported a checkpoint (only paths inside
    /// the job's folder are recorded) and the folder is still there. Which checkpoint to resume
    /// from is the toolchain's business (`--resume`): it replaces older ones as it goes.
    fn checkpoint_of(&self, row: &JobRow) -> Option<PathBuf> {
        let dir = self.work_dir(row.id).join("checkpoints");
        (row.checkpoint.is_some() && dir.is_dir()).then_some(dir)
    }

    /// Spawns the job's process and follows it until it ends. `Err` is a reason the process
    /// could not be started or recorded.
    async fn run_process(
        &self,
        id: i64,
        spec: &JobSpec,
        resume: bool,
        live: &Live,
    ) -> Result<Ended, String> {
        let work = self.work_dir(id);
        let mut cmd = match &self.nice {
            Some(nice) => {
                let mut c = Command::new(nice);
                c.arg("-n")
                    .arg(self.cfg.nice.to_string())
                    .arg(&self.toolchain);
                c
            }
            None => Command::new(&self.toolchain),
        };
        cmd.args(self.args(id, spec, resume))
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for v in PRIVATE_ENV {
            cmd.env_remove(v);
        }
        // The job's OpenMP threads sleep rather than spin while they wait for each other: a
        // spinning low-priority process still takes cores from serving, and two spinning
        // llama.cpp processes on few cores slow each other down by orders of magnitude.
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.toolchain.display()))?;
        let pid = child.id();
        let (tx, mut events) = mpsc::channel::<Value>(256);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        *lock(&live.child) = Some(child);
        if let Err(e) = self
            .store
            .call(move |s| s.job_started(id, pid, resume))
            .await
        {
            // Could not record it: do not leave a process nobody knows about.
            if let Some(mut c) = lock(&live.child).take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(format!("cannot record the job's start: {e}"));
        }
        tracing::info!(
            job = id,
            pid,
            resume,
            kind = spec.kind.as_str(),
            "job started"
        );
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v.is_object() && tx.blocking_send(v).is_err() {
                            break;
                        }
                    }
                }
            });
        }
        let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
        let stderr_thread = stderr.map(|err| {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut t = lock(&tail);
                    if t.len() == STDERR_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.chars().take(300).collect());
                }
            })
        });

        let mut result = None;
        let mut saved_at = Instant::now();
        let mut dirty = false;
        let mut term_sent: Option<Instant> = None;
        let mut killed = false;
        let mut events_open = true;
        let status = loop {
            tokio::select! {
                ev = events.recv(), if events_open => match ev {
                    Some(v) => {
                        dirty |= self.on_event(id, v, live, &mut result).await;
                    }
                    None => events_open = false,
                },
                _ = live.wake.notified(), if term_sent.is_none() => {
                    if let Some(c) = lock(&live.child).as_mut() {
                        if let Ok(None) = c.try_wait() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(c.id() as i32),
                                nix::sys::signal::Signal::SIGTERM,
                            );
                        }
                    }
                    term_sent = Some(Instant::now());
                }
                _ = tokio::time::sleep(POLL) => {
                    let status = lock(&live.child).as_mut().and_then(|c| c.try_wait().ok().flatten());
                    if let Some(s) = status {
                        break s;
                    }
                    if term_sent.is_some_and(|t| t.elapsed() > TERM_GRACE) && !killed {
                        if let Some(c) = lock(&live.child).as_mut() {
                            let _ = c.kill();
                        }
                        killed = true;
                    }
                    if dirty && saved_at.elapsed() >= PROGRESS_EVERY {
                        self.save_progress(id, live).await;
                        saved_at = Instant::now();
                        dirty = false;
                    }
                }
            }
        };
        lock(&live.child).take();
        // The pipes close with the process: read what is left.
        while events_open {
            match tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
                Ok(Some(v)) => {
                    dirty |= self.on_event(id, v, live, &mut result).await;
                }
                _ => events_open = false,
            }
        }
        if dirty {
            self.save_progress(id, live).await;
        }
        if let Some(t) = stderr_thread {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::task::spawn_blocking(move || t.join()),
            )
            .await;
        }
        tracing::info!(job = id, pid, %status, "job process ended");
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(Ended::Stopping);
        }
        if let Some(by) = live.cancel_requested() {
            return Ok(Ended::Cancelled(by));
        }
        let stderr = lock(&tail).iter().cloned().collect::<Vec<_>>().join("\n");
        Ok(Ended::Exited {
            status,
            result,
            stderr,
        })
    }

    /// Handles one protocol line; returns whether the progress changed. A line that is not an
    /// [`Event`](inhouse_formats::progress::Event) of the protocol is ignored.
    async fn on_event(&self, id: i64, v: Value, live: &Live, result: &mut Option<Value>) -> bool {
        use inhouse_formats::progress::Event;
        let Ok(event) = serde_json::from_value::<Event>(v) else {
            return false;
        };
        match event {
            Event::Progress(p) => match serde_json::to_value(&p) {
                Ok(p) => {
                    *lock(&live.progress) = Some(p);
                    true
                }
                Err(_) => false,
            },
            Event::Checkpoint { path, .. } => {
                // Only a path inside this job's folder is believed.
                if Path::new(&path).starts_with(self.work_dir(id)) {
                    let _ = self
                        .store
                        .call(move |s| s.job_progress(id, None, Some(&path)))
                        .await;
                }
                false
            }
            Event::Result(r) => {
                *result = Some(summarize(&Value::Object(r)));
                false
            }
            // `log` lines may quote data: they are not stored.
            Event::Log { .. } => false,
        }
    }

    async fn save_progress(&self, id: i64, live: &Live) {
        let p = lock(&live.progress).as_ref().map(Value::to_string);
        if let Some(p) = p {
            let _ = self
                .store
                .call(move |s| s.job_progress(id, Some(&p), None))
                .await;
        }
    }

    /// After a successful process: registers what it produced; returns the job's result.
    fn collect(
        &self,
        id: i64,
        uid: u32,
        spec: &JobSpec,
        tool_result: Option<Value>,
    ) -> Result<Value, String> {
        let work = self.work_dir(id);
        match spec.kind {
            JobKind::Prepare => {
                let report = read_json(&work.join("out").join("report.json"))?;
                let mut datasets = serde_json::Map::new();
                for role in ["train", "eval"] {
                    let f = work.join("out").join(format!("{role}.jsonl"));
                    if f.is_file() {
                        let m = self
                            .datasets
                            .add_file(&f, "jsonl", uid, format!("job {id} ({role})"))
                            .map_err(|e| e.to_string())?;
                        datasets.insert(
                            role.into(),
                            json!({"id": m.id, "sha256": m.sha256, "size": m.size}),
                        );
                    }
                }
                Ok(json!({"datasets": datasets, "report": summarize(&report)}))
            }
            JobKind::Eval => {
                let report = read_json(&work.join("report.json"))?;
                Ok(json!({"report": summarize(&report), "toolchain": tool_result}))
            }
            JobKind::Finetune | JobKind::Quantize => {
                let out = work.join("out.gguf");
                let name = spec.output_name.clone().unwrap_or_default();
                let store = self
                    .models
                    .as_ref()
                    .ok_or("this daemon has no model store to register the output in")?;
                let dataset = |d: &DataRef| json!({"id": d.id, "sha256": d.sha256, "size": d.size});
                let extra = json!({
                    "job": id,
                    "kind": spec.kind.as_str(),
                    "base_model": spec
                        .model
                        .as_ref()
                        .map(|m| json!({"name": m.name, "digest": m.digest})),
                    "dataset": spec.data.as_ref().map(dataset),
                    "eval_dataset": spec.eval_data.as_ref().map(dataset),
                    "options": spec.options,
                    "evaluation": tool_result,
                });
                let req = ImportRequest {
                    name: name.clone(),
                    adapter_for: None,
                    expected_sha256: None,
                    signature: None,
                    source: Some(format!("job-{id}.gguf")),
                    uid,
                    extra,
                };
                let m = store.import_file(&out, &req).map_err(|e| match e {
                    ModelStoreError::Signature(_) => format!(
                        "the output could not be registered as {name:?}: {e} (sign it offline and import it by hand)"
                    ),
                    e => format!("the output could not be registered as {name:?}: {e}"),
                })?;
                tracing::info!(job = id, model = %m.name, digest = %m.digest, "job output registered");
                Ok(json!({
                    "model": m.name,
                    "digest": m.digest,
                    "size": m.size,
                    "quantization": m.quantization,
                    "toolchain": tool_result,
                }))
            }
        }
    }

    // ----- start-up and shutdown -----

    /// Resolves the jobs an earlier run left unfinished: a leftover process is killed; a
    /// `running` finetune with a checkpoint is resumed (`--resume`, up to three attempts in
    /// all); any other `running` job is marked `failed` with the reason; `queued` jobs are
    /// queued again. Returns how many jobs were resumed or requeued.
    pub async fn recover(&self) -> Result<usize, JobError> {
        let rows = self.store.call(|s| s.jobs_unfinished()).await?;
        // Working folders of jobs that ended (a crash between the end and the clean-up).
        if let Ok(entries) = std::fs::read_dir(self.root.join("work")) {
            for e in entries.flatten() {
                let id = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok());
                match id {
                    Some(id) if rows.iter().any(|r| r.id == id) => {}
                    Some(id) => self.clean(id, false),
                    None => {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let mut driven = 0;
        for row in rows {
            let id = row.id;
            let spec: JobSpec = match serde_json::from_value(row.params.clone()) {
                Ok(s) => s,
                Err(e) => {
                    let why = format!("interrupted, and its parameters cannot be read: {e}");
                    self.finish(id, JobState::Failed, None, Some(why), None)
                        .await;
                    self.clean(id, false);
                    continue;
                }
            };
            if row.state == JobState::Queued {
                tracing::info!(job = id, "job queued again");
                self.start_task(id, row.uid, spec, false);
                driven += 1;
                continue;
            }
            let work = self.work_dir(id);
            if let Some(pid) = row.pid {
                if is_job_process(pid, &work) {
                    tracing::warn!(
                        job = id,
                        pid,
                        "killing a job process left by the previous run"
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while !pid_gone(pid) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            let resumable = spec.kind == JobKind::Finetune && self.checkpoint_of(&row).is_some();
            if resumable && row.attempts < MAX_ATTEMPTS {
                tracing::info!(job = id, "resuming a job from its checkpoint");
                self.start_task(id, row.uid, spec, true);
                driven += 1;
            } else {
                let why = if resumable {
                    format!("interrupted {} times; not resumed again", row.attempts)
                } else {
                    format!(
                        "interrupted: the daemon stopped while the job ran, and a {} job{} cannot resume; submit it again",
                        spec.kind.as_str(),
                        if spec.kind == JobKind::Finetune { " without a checkpoint" } else { "" }
                    )
                };
                self.finish(id, JobState::Failed, None, Some(why), None)
                    .await;
                self.clean(id, false);
            }
        }
        Ok(driven)
    }

    /// Stops every job process (SIGTERM, SIGKILL after the grace period) without ending the
    /// jobs: the next start resumes or fails them (see [`JobRunner::recover`]).
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let all: Vec<Arc<Live>> = lock(&self.live).values().cloned().collect();
        for l in &all {
            l.wake.notify_one();
        }
        let deadline = Instant::now() + TERM_GRACE + Duration::from_secs(5);
        while !lock(&self.live).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("the toolchain wrote no {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_processes_are_recognised_by_their_folder_only() {
        let mut child = Command::new("sh")
            .args([
                "-c",
                "sleep 30; true",
                "/state/jobs/work/12/data/train.jsonl",
            ])
            .spawn()
            .unwrap();
        let pid = i64::from(child.id());
        // Until the exec, the command line is the test's own.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_job_process(pid, Path::new("/state/jobs/work/12")) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_job_process(pid, Path::new("/state/jobs/work/12")));
        assert!(!is_job_process(pid, Path::new("/state/jobs/work/1")));
        assert!(!pid_gone(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(pid_gone(pid));
        assert!(!is_job_process(pid, Path::new("/state/jobs/work/12")));
    }

    #[test]
    fn the_toolchain_is_found_beside_the_daemon_or_configured() {
        let cfg = JobsConfig {
            toolchain_binary: Some("/opt/x/inhouse-quantize".into()),
            ..JobsConfig::default()
        };
        assert_eq!(
            toolchain_path(&cfg),
            PathBuf::from("/opt/x/inhouse-quantize")
        );
        let found = toolchain_path(&JobsConfig::default());
        assert!(found.ends_with("inhouse-quantize"), "{}", found.display());
    }
}
