//! Process supervision: one job's `inhouse-quantize` process from spawn to exit. The process
//! runs under `nice`, without the daemon's private environment; its stdout is read for progress
//! lines, its stderr for the reason of a failure; a cancel (or shutdown) is SIGTERM, then SIGKILL
//! after [`TERM_GRACE`].
//!
//! The process is a `std::process::Child` behind a mutex that only the job's task reaps
//! (`try_wait`), so a signal is never sent to a pid that was already reaped and reused. Two
//! plain threads read its stdout (progress JSON lines, passed to the task through a channel) and
//! its stderr (the last lines, kept as the reason of a failure).
//!
//! Priority: the process runs through `nice -n N` (`[jobs] nice`); `nice` execs the toolchain,
//! so the pid is the toolchain's. No `unsafe` (`pre_exec`, `setpriority`) is needed.

use super::args::toolchain_args;
use super::runner::JobRunner;
use super::{summarize, JobError, JobSpec};
use crate::config::JobsConfig;
use crate::storage::JobState;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Time a process gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);
/// Stderr lines kept as the reason of a failure.
const STDERR_LINES: usize = 20;
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

/// Locks `m`, also after a panic elsewhere: the data it guards stays consistent (a child, a
/// progress line, the live jobs).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job this daemon is driving (queued or running).
pub(super) struct Live {
    /// Woken by a cancel (and by shutdown).
    pub(super) wake: Notify,
    /// The uid that asked to cancel, `u32::MAX` while none did.
    pub(super) cancelled_by: AtomicU32,
    /// The process while it runs; only the job's task reaps it.
    pub(super) child: Mutex<Option<Child>>,
    /// The last progress line, fresher than the row.
    pub(super) progress: Mutex<Option<Value>>,
}

impl Live {
    pub(super) fn cancel_requested(&self) -> Option<u32> {
        match self.cancelled_by.load(Ordering::SeqCst) {
            u32::MAX => None,
            uid => Some(uid),
        }
    }
}

/// What a process run came to.
pub(super) enum Ended {
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
pub(super) fn is_job_process(pid: i64, work: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // Component-wise, so that job 1's folder does not match job 12's paths.
    cmdline
        .split(|&b| b == 0)
        .any(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)).starts_with(work))
}

/// Whether a pid is gone (or a zombie nobody reaped yet).
pub(super) fn pid_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// `nice(1)` when job processes are to run at a lower priority (`[jobs] nice` above 0).
pub(super) fn find_nice(level: u32) -> Option<PathBuf> {
    if level == 0 {
        return None;
    }
    let n = on_path("nice");
    if n.is_none() {
        tracing::warn!("nice(1) not found: jobs run at the daemon's priority");
    }
    n
}

/// Kills a process an earlier run of the daemon left for job `id` (working in `work`), if the
/// pid is still one of that job's, and waits a little for it to go.
pub(super) async fn kill_leftover(id: i64, pid: i64, work: &Path) {
    if is_job_process(pid, work) {
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

impl JobRunner {
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

    /// Spawns the job's process and follows it until it ends. `Err` is a reason the process
    /// could not be started or recorded.
    pub(super) async fn run_process(
        &self,
        id: i64,
        spec: &JobSpec,
        resume: bool,
        live: &Live,
    ) -> Result<Ended, String> {
        let work = self.work_dir(id);
        if let Some(policy) = &spec.options.gate {
            // The policy travels as a file (`--gate`); it holds thresholds, never data.
            let bytes = serde_json::to_vec_pretty(policy).map_err(|e| e.to_string())?;
            std::fs::write(work.join("gate.json"), bytes)
                .map_err(|e| format!("cannot write the gate policy: {e}"))?;
        }
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
        cmd.args(toolchain_args(&work, spec, resume))
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
                    *lock(&live.progress) = Some(summarize(&p));
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
