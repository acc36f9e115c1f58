//! The ingest queue: one attached file at a time, extract → clean (→ anonymise) → chunk →
//! embed → seal → index.
//!
//! Extraction and cleaning run in the toolchain (`inhouse-quantize extract-text`), a child
//! process with the file's bytes on a pipe and its text on another: the same cleaning (and
//! anonymiser) as training data, and a document parser that crashes or runs away costs that
//! process, never the daemon. Nothing is written to disk in clear: the chunks and vectors go
//! straight into the sealed rows.
//!
//! An attachment stays `in_progress` in the store until its chunks are committed (one
//! transaction with the `completed` status), so a daemon killed mid-ingest finds it still in
//! progress at start and ingests it again from the beginning.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Collections, Progress};
use crate::knowledge::chunk::{self, ChunkingStrategy};
use crate::storage::knowledge::NewChunk;

/// Inputs per embedding call (the engine batches up to this many sequences per decode).
const EMBED_BATCH: usize = 32;

/// Largest answer read from `extract-text` (its text is never larger than a few times the file).
const MAX_EXTRACT_OUTPUT: u64 = 256 << 20;

/// Attachments waiting for the worker. Pushes before the worker starts are kept and handed to
/// it when it does.
#[derive(Default)]
pub(super) struct Queue {
    inner: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    tx: Option<mpsc::UnboundedSender<i64>>,
    early: Vec<i64>,
}

impl Queue {
    pub(super) fn push(&self, seq: i64) {
        if let Ok(mut q) = self.inner.lock() {
            match &q.tx {
                Some(tx) => {
                    let _ = tx.send(seq);
                }
                None => q.early.push(seq),
            }
        }
    }
}

/// A conservative estimate of the WordPiece/BPE tokens of `text` (no tokenizer at hand here):
/// each punctuation character counts one, each run of letters or digits one per 4 characters
/// (rounded up). Real WordPiece counts of English prose come out at 0.6–0.9 of this, so a chunk
/// of 200 estimated tokens fits an encoder's 256- or 512-token window.
pub fn approx_tokens(text: &str) -> usize {
    let mut n = 0;
    let mut run = 0usize;
    for c in text.chars() {
        if c.is_alphanumeric() {
            run += 1;
            continue;
        }
        n += run.div_ceil(4);
        run = 0;
        if !c.is_whitespace() {
            n += 1;
        }
    }
    n + run.div_ceil(4)
}

pub(super) fn spawn_worker(c: Arc<Collections>, pending: Vec<i64>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Ok(mut q) = c.queue.inner.lock() {
        for seq in pending.into_iter().chain(q.early.drain(..)) {
            let _ = tx.send(seq);
        }
        q.tx = Some(tx);
    }
    tokio::spawn(async move {
        while let Some(seq) = rx.recv().await {
            if let Err(why) = ingest_one(&c, seq).await {
                tracing::warn!(attachment = seq, "ingest failed: {why}");
                let msg = why.clone();
                let _ = c.store.call(move |s| s.ingest_failed(seq, &msg)).await;
            }
            if let Ok(mut p) = c.progress.lock() {
                p.remove(&seq);
            }
        }
    });
}

fn set_progress(c: &Collections, seq: i64, p: Progress) {
    if let Ok(mut m) = c.progress.lock() {
        m.insert(seq, p);
    }
}

/// Ingests attachment `seq`; `Err` is the message its owner sees as `last_error`.
async fn ingest_one(c: &Arc<Collections>, seq: i64) -> Result<(), String> {
    let Some(src) = c
        .store
        .call(move |s| s.ingest_source(seq))
        .await
        .map_err(|e| format!("storage: {e}"))?
    else {
        return Ok(()); // deleted meanwhile, or already done
    };
    set_progress(c, seq, Progress::default());
    let text = extract(c, &src.filename, &src.content, src.anonymize).await?;
    let strategy =
        ChunkingStrategy::new(src.file.chunk_max as usize, src.file.chunk_overlap as usize)
            .map_err(|e| e.to_string())?;
    let pieces = chunk::chunk(&text, &strategy, &approx_tokens);
    if pieces.len() > c.cfg.max_chunks_per_file {
        return Err(format!(
            "the file has {} chunks, over [knowledge] max-chunks-per-file = {}",
            pieces.len(),
            c.cfg.max_chunks_per_file
        ));
    }
    let total = pieces.len() as u64;
    set_progress(
        c,
        seq,
        Progress {
            chunks_embedded: 0,
            chunks_total: total,
        },
    );
    let mut vectors: Vec<Option<Vec<f32>>> = Vec::with_capacity(pieces.len());
    if let Some(model) = &c.cfg.embedding_model {
        for batch in pieces.chunks(EMBED_BATCH) {
            let inputs: Vec<String> = batch.iter().map(|p| p.text.clone()).collect();
            let e = c
                .engine
                .embed(model.clone(), inputs)
                .await
                .map_err(|e| format!("embedding with {model:?}: {e}"))?;
            if e.vectors.len() != batch.len() {
                return Err(format!("embedding with {model:?}: wrong number of vectors"));
            }
            vectors.extend(e.vectors.into_iter().map(Some));
            set_progress(
                c,
                seq,
                Progress {
                    chunks_embedded: vectors.len() as u64,
                    chunks_total: total,
                },
            );
        }
    } else {
        vectors.resize(pieces.len(), None);
    }
    let chunks: Vec<NewChunk> = pieces
        .into_iter()
        .zip(vectors)
        .enumerate()
        .map(|(i, (p, vector))| NewChunk {
            ordinal: i as u32,
            start: p.range.start,
            end: p.range.end,
            text: p.text,
            vector,
        })
        .collect();
    let stored = c
        .store
        .call(move |s| {
            if !s.ingest_complete(seq, &chunks)? {
                return Ok(None);
            }
            Ok(Some(s.searchable_files(Some(seq))?))
        })
        .await
        .map_err(|e| format!("storage: {e}"))?;
    // Read back what was committed (with the chunk seqs the index keys on).
    for f in stored.unwrap_or_default() {
        c.add_to_index(f);
    }
    Ok(())
}

/// Runs `extract-text` on one file: its text, cleaned (and anonymised when asked).
async fn extract(
    c: &Collections,
    filename: &str,
    content: &[u8],
    anonymize: bool,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(&c.toolchain);
    cmd.arg("extract-text").arg("--name").arg(filename);
    if anonymize {
        cmd.arg("--anonymize");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_clear();
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start the toolchain {} for extract-text: {e}",
            c.toolchain.display()
        )
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let input = content.to_vec();
    let run = async move {
        let write = async move {
            let r = stdin.write_all(&input).await;
            drop(stdin);
            r
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut limited_out = (&mut stdout).take(MAX_EXTRACT_OUTPUT);
        let mut limited_err = (&mut stderr).take(64 << 10);
        let read_out = limited_out.read_to_end(&mut out);
        let read_err = limited_err.read_to_end(&mut err);
        let (w, o, e) = tokio::join!(write, read_out, read_err);
        let status = child.wait().await;
        (w, o, e, status, out, err)
    };
    let timeout = Duration::from_secs(c.cfg.extract_timeout_secs);
    let (_w, o, _e, status, out, err) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("extract-text took longer than {}s", timeout.as_secs()))?;
    o.map_err(|e| format!("extract-text: {e}"))?;
    let status = status.map_err(|e| format!("extract-text: {e}"))?;
    if !status.success() {
        let msg = String::from_utf8_lossy(&err).trim().to_string();
        return Err(if msg.is_empty() {
            format!("extract-text failed ({status})")
        } else {
            msg
        });
    }
    #[derive(serde::Deserialize)]
    struct Out {
        text: String,
    }
    let parsed: Out =
        serde_json::from_slice(&out).map_err(|e| format!("extract-text answered badly: {e}"))?;
    Ok(parsed.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimate_counts_word_pieces_and_punctuation() {
        assert_eq!(approx_tokens(""), 0);
        assert_eq!(approx_tokens("a cat"), 2);
        assert_eq!(approx_tokens("reimbursement"), 4);
        assert_eq!(approx_tokens("Hello, world!"), 6);
        assert_eq!(approx_tokens("2026-12-04"), 5);
    }
}
