//! The job runner: one per daemon, shared by the API handlers. It owns the live jobs, drives
//! each from queued to its end (a slot, the process, the collection of its output, the final
//! row), shows them with their live progress, and at start-up resolves what an earlier run left
//! unfinished (see the [module map](super)).
//!
//! Each job has one tokio task ([`JobRunner::drive`]) that waits for a slot, then runs the
//! process ([`super::process`]) and, when it succeeds, registers what it produced. Submission
//! checks live in [`super::submit`], the toolchain's command lines in [`super::args`].

use super::data::{private_dir, Datasets};
use super::process::{find_nice, kill_leftover, lock, Ended, Live};
use super::{summarize, DataRef, JobError, JobKind, JobSpec};
use crate::config::JobsConfig;
use crate::models::{ImportRequest, ModelStore, ModelStoreError};
use crate::storage::{JobRow, JobState, StoreHandle};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

pub use super::process::{toolchain_path, TERM_GRACE};

/// A finetune is resumed from its checkpoint at most this many times in all.
const MAX_ATTEMPTS: u32 = 3;

/// Runs and tracks the daemon's jobs. One per daemon, shared by the API handlers.
pub struct JobRunner {
    pub(super) me: Weak<JobRunner>,
    pub(super) store: StoreHandle,
    pub(super) models: Option<Arc<ModelStore>>,
    pub(super) configured: BTreeMap<String, PathBuf>,
    pub(super) cfg: JobsConfig,
    /// `state-dir/jobs`, absolute.
    pub(super) root: PathBuf,
    pub(super) datasets: Datasets,
    pub(super) toolchain: PathBuf,
    pub(super) nice: Option<PathBuf>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) live: Mutex<HashMap<i64, Arc<Live>>>,
    pub(super) stopping: AtomicBool,
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
        let datasets = Datasets::open(&root, cfg.data_size_limit())?;
        let toolchain = toolchain_path(&cfg);
        let nice = find_nice(cfg.nice);
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

    /// The working folder of job `id`: its data, outputs and checkpoints.
    pub(super) fn work_dir(&self, id: i64) -> PathBuf {
        self.root.join("work").join(id.to_string())
    }

    /// The runner itself, for a task or a blocking closure that outlives the borrow.
    pub(super) fn arc(&self) -> Arc<JobRunner> {
        self.me.upgrade().expect("the runner is alive while used")
    }

    pub(super) fn start_task(&self, id: i64, uid: u32, spec: JobSpec, resume: bool) {
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
    pub(super) async fn row(&self, id: i64) -> Result<JobRow, JobError> {
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

    /// Records the end of job `id` (its state, result or reason, and the admin who cancelled
    /// it); a failure to record is logged, the job being over either way.
    pub(super) async fn finish(
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
    pub(super) fn clean(&self, id: i64, force: bool) {
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
                    // The working files go before the end is recorded: a job that failed for
                    // want of space gives it back first, so that its end can be written.
                    self.clean(id, false);
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
                    self.clean(id, false);
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
            JobKind::Prepare | JobKind::Synth => {
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
                    "data_reports": spec.data_reports,
                });
                // A LoRA finetune writes an adapter of its base; a refused gate registers the
                // output as a candidate only (`promote` then needs --force).
                let lora = spec.kind == JobKind::Finetune && spec.options.lora_rank.is_some();
                let adapter_for = match (lora, &spec.model) {
                    (true, Some(m)) => Some(m.name.clone()),
                    _ => None,
                };
                let mut extra = extra;
                let gate = tool_result
                    .as_ref()
                    .and_then(|r| r.get("gate"))
                    .filter(|g| g.is_object());
                if let Some(g) = gate {
                    extra["blessed"] = g.get("blessed").cloned().unwrap_or(Value::Bool(false));
                    extra["candidate"] = json!(g.get("blessed") != Some(&Value::Bool(true)));
                }
                let req = ImportRequest {
                    name: name.clone(),
                    adapter_for,
                    expected_sha256: None,
                    signature: None,
                    source: Some(format!("job-{id}.gguf")),
                    uid,
                    extra,
                };
                crate::fault::point("job_complete.before_register");
                let m = store.import_file(&out, &req).map_err(|e| match e {
                    ModelStoreError::Signature(_) => format!(
                        "the output could not be registered as {name:?}: {e} (sign it offline and import it by hand)"
                    ),
                    e => format!("the output could not be registered as {name:?}: {e}"),
                })?;
                tracing::info!(job = id, model = %m.name, digest = %m.digest, "job output registered");
                Ok(registered(&m, tool_result))
            }
        }
    }

    /// The result of a registering job (finetune, quantize) whose model is in the store although
    /// the job is not recorded as ended: the daemon died between registering the output and
    /// recording the end. The manifest named `output_name` must say it came from this job.
    fn registered_output(&self, id: i64, spec: &JobSpec) -> Option<Value> {
        if !matches!(spec.kind, JobKind::Finetune | JobKind::Quantize) {
            return None;
        }
        let m = self
            .models
            .as_ref()?
            .get(spec.output_name.as_deref()?)
            .ok()?;
        let from_this_job = m.provenance.extra.get("job").and_then(Value::as_i64) == Some(id);
        from_this_job.then(|| {
            let evaluation = m.provenance.extra.get("evaluation").cloned();
            registered(&m, evaluation.filter(|v| !v.is_null()))
        })
    }

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
            if row.state == JobState::Queued && !self.work_dir(id).is_dir() {
                // Interrupted between its row's commit and the hand-over of its data (the
                // submitter got no answer). Without data it can simply run; with data it fails,
                // the datasets staying in the store for a new submission.
                let ready = if spec.data.is_some() || spec.eval_data.is_some() {
                    Err("interrupted while it was submitted, before its data was handed over: submit it again (the datasets are still stored)".to_string())
                } else {
                    private_dir(&self.work_dir(id).join("data")).map_err(|e| e.to_string())
                };
                if let Err(why) = ready {
                    self.finish(id, JobState::Failed, None, Some(why), None)
                        .await;
                    self.clean(id, true);
                    continue;
                }
            }
            if row.state == JobState::Queued {
                tracing::info!(job = id, "job queued again");
                self.start_task(id, row.uid, spec, false);
                driven += 1;
                continue;
            }
            let work = self.work_dir(id);
            if let Some(pid) = row.pid {
                kill_leftover(id, pid, &work).await;
            }
            if let Some(result) = self.registered_output(id, &spec) {
                tracing::info!(
                    job = id,
                    "the job's output was registered before the interruption; the job succeeded"
                );
                self.finish(id, JobState::Succeeded, Some(result), None, None)
                    .await;
                self.clean(id, false);
                continue;
            }
            let resumable = spec.kind == JobKind::Finetune && self.checkpoint_of(&row).is_some();
            // A synth job is deterministic (same inputs and seed, same output) and writes its
            // outputs only at its end: it simply runs again from the start.
            if spec.kind == JobKind::Synth && row.attempts < MAX_ATTEMPTS {
                tracing::info!(job = id, "running an interrupted synth job again");
                self.start_task(id, row.uid, spec, false);
                driven += 1;
            } else if resumable && row.attempts < MAX_ATTEMPTS {
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

/// A registering job's result: the model it stored.
fn registered(m: &crate::models::Manifest, toolchain: Option<Value>) -> Value {
    json!({
        "model": m.name,
        "digest": m.digest,
        "size": m.size,
        "quantization": m.quantization,
        "toolchain": toolchain,
    })
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("the toolchain wrote no {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}
