//! `GET /admin/backup[?with_models=true]` (admin): streams a backup archive (see
//! [`crate::storage::backup`] for its layout). The daemon never writes to the caller's paths:
//! the client writes the file.
//!
//! The snapshot is taken first (an error then is an ordinary JSON error answer); then the tar
//! is produced on a blocking thread into a bounded channel, so a slow client slows the backup,
//! not the daemon. When the last byte is produced the `backup` audit event is appended (with
//! the archive's SHA-256), and only then does the body end: a client that got a complete body
//! knows the backup was audited. Any failure after the headers aborts the body, which the
//! client reports as a failed download.

use super::error::ApiError;
use super::{AppState, Caller};
use crate::storage::backup::{self, BackupError, HashingWriter};
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::io::Write;
use tokio::sync::mpsc;

/// The query string.
#[derive(Debug, serde::Deserialize)]
pub struct BackupQuery {
    /// Include the model files (else they are listed by digest).
    #[serde(default)]
    pub with_models: bool,
}

type Chunk = Result<Bytes, std::io::Error>;

/// Buffers the tar and hands it to the response body in 256 KiB pieces.
struct ChanWriter {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

const PIECE: usize = 256 << 10;

impl ChanWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx.blocking_send(Ok(piece)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Store(e) => e.into(),
            BackupError::Refused(m) => ApiError {
                status: StatusCode::CONFLICT,
                kind: "invalid_request_error",
                code: "backup_refused",
                message: m,
                param: None,
                retry_after: None,
            },
            e => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                code: "backup_failed",
                message: format!("backup failed: {e}"),
                param: None,
                retry_after: None,
            },
        }
    }
}

/// `GET /admin/backup`.
pub async fn backup(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Query(q): Query<BackupQuery>,
) -> Result<Response, ApiError> {
    let snap = s.store.backup_snapshot().await?;
    crate::fault::point("backup.after_snapshot");
    let store = s.store.clone();
    let sources = store.backup_sources();
    let state_dir = store
        .db_path()
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let with_models = q.with_models;
    let (tx, rx) = mpsc::channel::<Chunk>(8);
    let rt = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        let writer_tx = tx.clone();
        let sealer = store.clone();
        let snap_path = snap.path.clone();
        let head_seq = snap.audit_head.as_ref().map(|h| h.seq);
        let made = tokio::task::spawn_blocking(move || {
            let w = HashingWriter::new(ChanWriter {
                tx: writer_tx,
                buf: Vec::with_capacity(PIECE),
            });
            let result = backup::write_archive(w, &state_dir, &sources, &snap, with_models, |m| {
                *m = rt.block_on(sealer.seal_backup_manifest(m.clone()))?;
                Ok(())
            });
            let _ = std::fs::remove_file(&snap.path);
            let (w, manifest) = result?;
            let (mut chan, sha, bytes) = w.finish();
            chan.flush()
                .map_err(|e| BackupError::Io(format!("streaming: {e}")))?;
            Ok::<_, BackupError>((sha, bytes, manifest.files.len()))
        })
        .await;
        let _ = std::fs::remove_file(&snap_path);
        let failure = match made {
            Ok(Ok((sha, bytes, files))) => {
                crate::fault::point("backup.before_audit");
                let detail = serde_json::json!({
                    "archive_sha256": sha,
                    "bytes": bytes,
                    "with_models": with_models,
                    "audit_head_seq": head_seq,
                    "files": files,
                })
                .to_string();
                match store
                    .audit_append(backup::BACKUP_EVENT, Some(caller.uid), detail)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(uid = caller.uid, bytes, with_models, "backup streamed");
                        None
                    }
                    Err(e) => Some(format!("the backup's audit event failed: {e}")),
                }
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("the backup task failed: {e}")),
        };
        if let Some(why) = failure {
            tracing::error!(uid = caller.uid, error = %why, "backup failed");
            let _ = tx.send(Err(std::io::Error::other(why))).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}
