//! [`StoreHandle`]: the store on its own OS thread, driven from async code.
//!
//! SQLite calls block (disk I/O, fsync with `synchronous=FULL`, the busy timeout), so they must
//! not run on tokio's worker threads. The handle owns one dedicated thread that owns the
//! [`Store`]; each call sends a boxed closure through a bounded queue and awaits the reply on a
//! oneshot channel. A full queue makes callers wait (`send().await`), which is the back-pressure
//! we want; nothing is dropped. A single thread also serializes all writes, which is what SQLite
//! wants anyway.
//!
//! Once a call is queued it runs even if the caller's future is dropped, so a request that was
//! cancelled after it was handed over is still recorded (or its failure still counted).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use super::{
    EraseReport, NewRecord, Record, RecordMeta, RotationStatus, Store, StoreError, VerifyReport,
    ROTATION_BATCH,
};
use crate::crypto::MasterKey;

/// Queue depth [`StoreHandle::open`] uses.
pub const DEFAULT_QUEUE_DEPTH: usize = 256;

type Job = Box<dyn FnOnce(&mut Store) + Send + 'static>;

enum Msg {
    Run(Job),
    Close(oneshot::Sender<()>),
}

/// A cloneable, `Send + Sync` async handle to a [`Store`] running on its own thread.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Msg>,
    failed_writes: Arc<AtomicU64>,
    /// The database file, for the online backup's second connection.
    db_path: Arc<PathBuf>,
    /// What a backup archives besides the state directory (set once by the daemon).
    backup_sources: Arc<OnceLock<super::backup::Sources>>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("failed_writes", &self.failed_writes())
            .finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Opens the store on a new thread named `inhouse-store` (see [`Store::open`]) and waits
    /// until it is open: an error (wrong key, schema too new, ...) comes back here and the
    /// thread is gone.
    pub async fn open(
        db_path: impl Into<PathBuf>,
        master_key: MasterKey,
    ) -> Result<StoreHandle, StoreError> {
        let path = db_path.into();
        let abs = db_path_abs(&path);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(DEFAULT_QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("inhouse-store".into())
            .spawn(move || match Store::open(&path, master_key) {
                Ok(store) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(store, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })?;
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok(StoreHandle::with_sender(tx, abs))
    }

    /// Moves an already opened store onto a new thread. For callers that open the store before
    /// the async runtime runs (the daemon checks the key before anything else) or in tests.
    pub fn spawn(store: Store, queue_depth: usize) -> Result<StoreHandle, StoreError> {
        let (tx, rx) = mpsc::channel(queue_depth.max(1));
        let path = db_path_abs(store.path());
        std::thread::Builder::new()
            .name("inhouse-store".into())
            .spawn(move || serve(store, rx))?;
        Ok(StoreHandle::with_sender(tx, path))
    }

    fn with_sender(tx: mpsc::Sender<Msg>, db_path: PathBuf) -> StoreHandle {
        StoreHandle {
            tx,
            failed_writes: Arc::new(AtomicU64::new(0)),
            db_path: Arc::new(db_path),
            backup_sources: Arc::new(OnceLock::new()),
        }
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Sets what backups archive besides the state directory (the configuration file, the
    /// trusted keys); the first call wins.
    pub fn set_backup_sources(&self, sources: super::backup::Sources) {
        let _ = self.backup_sources.set(sources);
    }

    /// What backups archive besides the state directory.
    pub fn backup_sources(&self) -> super::backup::Sources {
        self.backup_sources.get().cloned().unwrap_or_default()
    }

    /// Takes the online snapshot of a backup (see [`super::backup::snapshot`]) on a blocking
    /// thread, over its own read-only connection: the storage thread keeps serving meanwhile.
    pub async fn backup_snapshot(
        &self,
    ) -> Result<super::backup::Snapshot, super::backup::BackupError> {
        let db = self.db_path.as_ref().clone();
        let tmp = db
            .parent()
            .unwrap_or(Path::new("."))
            .join(super::backup::TMP_DIR);
        tokio::task::spawn_blocking(move || super::backup::snapshot(&db, &tmp))
            .await
            .map_err(|e| super::backup::BackupError::Io(format!("the snapshot task failed: {e}")))?
    }

    /// MACs a backup's manifest with the active key (see [`Store::seal_backup_manifest`]).
    pub async fn seal_backup_manifest(
        &self,
        mut manifest: super::backup::Manifest,
    ) -> Result<super::backup::Manifest, StoreError> {
        self.call(move |s| {
            s.seal_backup_manifest(&mut manifest)?;
            Ok(manifest)
        })
        .await
    }

    /// Runs `f` on the storage thread and returns its result. The building block of every
    /// method below, public so callers can batch several operations into one round trip.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = reply_tx.send(f(store));
        });
        self.tx
            .send(Msg::Run(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply sender means the job panicked (the thread survives, see `serve`).
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`StoreHandle::call`], counting a failure in [`StoreHandle::failed_writes`].
    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let result = self.call(f).await;
        if result.is_err() {
            self.failed_writes.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Writes that failed since this handle was opened (records and audit events), for
    /// metrics: a failed write is reported to its caller and counted here, never dropped.
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }

    /// See [`Store::record_request`].
    pub async fn record_request(&self, rec: NewRecord) -> Result<i64, StoreError> {
        self.write(move |s| s.record_request(&rec)).await
    }

    /// See [`Store::record_request_audited`].
    pub async fn record_request_audited(&self, rec: NewRecord) -> Result<i64, StoreError> {
        self.write(move |s| s.record_request_audited(&rec)).await
    }

    /// See [`Store::list_history`].
    pub async fn list_history(
        &self,
        uid: u32,
        limit: u32,
        before_id: Option<i64>,
    ) -> Result<Vec<RecordMeta>, StoreError> {
        self.call(move |s| s.list_history(uid, limit, before_id))
            .await
    }

    /// See [`Store::record_response`].
    pub async fn record_response(
        &self,
        rec: NewRecord,
        link: super::ResponseLink,
    ) -> Result<i64, StoreError> {
        self.write(move |s| s.record_response(&rec, &link)).await
    }

    /// `uid`'s stored response `id` with its decrypted record, in one round trip; `None` alike
    /// for an unknown id, another uid's and an erased one.
    pub async fn get_response(
        &self,
        uid: u32,
        id: String,
    ) -> Result<Option<(super::StoredResponse, Record)>, StoreError> {
        self.call(move |s| {
            let Some(found) = s.find_response(uid, &id)? else {
                return Ok(None);
            };
            match s.get_history(uid, found.request_id) {
                Ok(rec) => Ok(Some((found, rec))),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// See [`Store::delete_response`].
    pub async fn delete_response(&self, uid: u32, id: String) -> Result<bool, StoreError> {
        self.write(move |s| s.delete_response(uid, &id)).await
    }

    /// See [`Store::get_history`].
    pub async fn get_history(&self, uid: u32, id: i64) -> Result<Record, StoreError> {
        self.call(move |s| s.get_history(uid, id)).await
    }

    /// See [`Store::delete_history`].
    pub async fn delete_history(&self, uid: u32, id: i64) -> Result<(), StoreError> {
        self.call(move |s| s.delete_history(uid, id)).await
    }

    /// See [`Store::erase_uid`].
    pub async fn erase_uid(&self, uid: u32) -> Result<EraseReport, StoreError> {
        self.call(move |s| s.erase_uid(uid)).await
    }

    /// See [`Store::purge_older_than`].
    pub async fn purge_older_than(&self, cutoff_unix: i64) -> Result<u64, StoreError> {
        self.call(move |s| s.purge_older_than(cutoff_unix)).await
    }

    /// Rotates to `new_master` online: begins the rotation, then queues each batch of
    /// [`ROTATION_BATCH`] data keys as its own job, so requests queued meanwhile are served
    /// between batches. Also resumes a rotation to the same key left unfinished.
    pub async fn rotate_key(&self, new_master: MasterKey) -> Result<RotationStatus, StoreError> {
        let mut status = self.call(move |s| s.begin_rotation(new_master)).await?;
        while !status.finished {
            status = self.call(|s| s.rotation_step(ROTATION_BATCH)).await?;
        }
        Ok(status)
    }

    /// Finishes a rotation left unfinished (found at start-up), batch by batch like
    /// [`StoreHandle::rotate_key`]. Returns `None` if there was none.
    pub async fn resume_rotation(&self) -> Result<Option<RotationStatus>, StoreError> {
        let Some(mut status) = self.call(|s| s.rotation_status()).await? else {
            return Ok(None);
        };
        while !status.finished {
            status = self.call(|s| s.rotation_step(ROTATION_BATCH)).await?;
        }
        Ok(Some(status))
    }

    /// See [`Store::rotation_status`].
    pub async fn rotation_status(&self) -> Result<Option<RotationStatus>, StoreError> {
        self.call(|s| s.rotation_status()).await
    }

    /// See [`Store::audit_append`].
    pub async fn audit_append(
        &self,
        kind: impl Into<String>,
        actor_uid: Option<u32>,
        detail_json: impl Into<String>,
    ) -> Result<i64, StoreError> {
        let (kind, detail) = (kind.into(), detail_json.into());
        self.write(move |s| s.audit_append(&kind, actor_uid, &detail))
            .await
    }

    /// See [`Store::audit_verify`].
    pub async fn audit_verify(&self) -> Result<VerifyReport, StoreError> {
        self.call(|s| s.audit_verify()).await
    }

    /// See [`Store::audit_export`]. The writer moves to the storage thread and is handed back
    /// with the row count (write to a file or a buffer, not to an async stream).
    pub async fn audit_export<W: Write + Send + 'static>(
        &self,
        mut w: W,
    ) -> Result<(W, u64), StoreError> {
        self.call(move |s| {
            let n = s.audit_export(&mut w)?;
            Ok((w, n))
        })
        .await
    }

    /// Stops the storage thread after the jobs already queued, and closes the database. Later
    /// calls on any clone get [`StoreError::Closed`]. Dropping every clone does the same
    /// without waiting.
    pub async fn close(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Msg::Close(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}

/// `path` made absolute (the store may have been opened with a relative one).
fn db_path_abs(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The storage thread's loop.
fn serve(mut store: Store, mut rx: mpsc::Receiver<Msg>) {
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Run(job) => {
                // A panicking job must not take the store down for everyone. Its transaction,
                // if any, was rolled back when it unwound; its caller sees `Closed`.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut store)));
            }
            Msg::Close(done) => {
                rx.close();
                drop(store);
                let _ = done.send(());
                return;
            }
        }
    }
}
