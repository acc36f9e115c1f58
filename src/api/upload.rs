//! Streaming a request body into a file on a blocking thread: model imports and dataset
//! uploads. The body is never held in memory whole: chunks cross a bounded channel to a
//! blocking task that writes (and hashes) them. A client that stalls for longer than `idle`
//! between chunks, or disconnects, aborts the upload, and what was written is removed.

use crate::incoming::{IncomingError, IncomingFile};
use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

enum Piece {
    Data(Bytes),
    Abort(String),
    /// The whole body arrived. Only this finishes the upload: a channel that closes without
    /// it (the request's task dropped, e.g. at shutdown) aborts, never saves a truncated file.
    End,
}

/// Streams `body` into the file `open` makes, then hands it to `finish` (both on a blocking
/// thread). `interrupted` turns "the upload stopped" (stall, disconnect, task failure) into the
/// caller's error type.
pub async fn stream_into<R, E>(
    body: Body,
    idle: Duration,
    open: impl FnOnce() -> Result<IncomingFile, E> + Send + 'static,
    finish: impl FnOnce(IncomingFile) -> Result<R, E> + Send + 'static,
    interrupted: fn(String) -> E,
) -> Result<R, E>
where
    R: Send + 'static,
    E: From<IncomingError> + Send + 'static,
{
    // A bounded channel keeps a fast client from queueing the whole file in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(16);
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = open()?;
        loop {
            match rx.blocking_recv() {
                Some(Piece::Data(chunk)) => {
                    if let Err(e) = file.write(&chunk) {
                        file.abort();
                        return Err(e.into());
                    }
                }
                Some(Piece::Abort(why)) => {
                    file.abort();
                    return Err(interrupted(format!("upload interrupted: {why}")));
                }
                Some(Piece::End) => return finish(file),
                None => {
                    file.abort();
                    return Err(interrupted(
                        "upload interrupted: the request went away".into(),
                    ));
                }
            }
        }
    });
    let mut stream = body.into_data_stream();
    loop {
        let piece = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => Piece::Abort("no data within the body timeout".into()),
            Ok(None) => {
                let _ = tx.send(Piece::End).await;
                break;
            }
            Ok(Some(Err(e))) => Piece::Abort(e.to_string()),
            Ok(Some(Ok(chunk))) => Piece::Data(chunk),
        };
        let abort = matches!(piece, Piece::Abort(_));
        if abort {
            break;
        }
        if tx.send(piece).await.is_err() {
            // The writer stopped with an error (a full disk, the size limit) that it reports
            // below. The rest of the body is read and dropped first (the socket is local: the
            // cost is a copy), so that the client, still writing, gets the error rather than a
            // broken pipe; for at most DRAIN_FOR, then the connection closes.
            let drain = async {
                while let Ok(Some(Ok(_))) = tokio::time::timeout(idle, stream.next()).await {}
            };
            let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
            break;
        }
    }
    drop(tx);
    writer
        .await
        .unwrap_or_else(|e| Err(interrupted(format!("upload task: {e}"))))
}

/// How long the rest of an upload whose writing failed is read before the error is answered.
const DRAIN_FOR: Duration = Duration::from_secs(30);

/// Most of a refused upload read (and dropped) before the error is sent: enough for small files
/// and the start of large ones. A client still sending after that sees the connection close.
const DISCARD_LIMIT: usize = 8 << 20;

/// Reads and drops a request body that will be refused, up to [`DISCARD_LIMIT`] bytes and
/// `idle` between chunks. Answering before the body is read makes the server close the
/// connection under a client that is still writing, which then reports a broken pipe instead of
/// the error.
pub async fn discard(body: Body, idle: Duration) {
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    while read < DISCARD_LIMIT {
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len(),
            _ => break,
        }
    }
}
