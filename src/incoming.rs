//! A file being received: the one writer behind model imports (`models::ModelStore`) and
//! dataset uploads (`jobs::data::Datasets`). Bytes go to a new private file and through
//! SHA-256 as they arrive, up to a size limit; the owner then keeps the file (after `close`) or
//! drops it (`abort`).

use inhouse_formats::sign::Sha256Writer;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why receiving failed; each owner turns it into its own error type.
#[derive(Debug)]
pub enum IncomingError {
    /// More than the limit arrived (the limit, bytes).
    TooLarge(u64),
    /// Disk or file system trouble, with what was being done.
    Io(String),
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> IncomingError + '_ {
    move |e| IncomingError::Io(format!("{context}: {e}"))
}

/// A file being received.
pub struct IncomingFile {
    path: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    hash: Sha256Writer,
    max_bytes: u64,
    /// A crash point (`crate::fault`) reached once more than 1 MiB has arrived.
    crash_point: Option<&'static str>,
}

impl IncomingFile {
    /// Creates `path` (mode 0600; it must not exist) to receive at most `max_bytes`.
    pub fn create(path: PathBuf, max_bytes: u64) -> Result<IncomingFile, IncomingError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("creating the upload file"))?;
        Ok(IncomingFile {
            path,
            out: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            hash: Sha256Writer::new(),
            max_bytes,
            crash_point: None,
        })
    }

    /// Names the crash point reached in the middle of this upload (after its first MiB).
    pub fn with_crash_point(mut self, name: &'static str) -> IncomingFile {
        self.crash_point = Some(name);
        self
    }

    /// Where the bytes are written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), IncomingError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| IncomingError::Io("upload already closed".into()))?;
        self.hash.update(chunk);
        if self.hash.len() > self.max_bytes {
            return Err(IncomingError::TooLarge(self.max_bytes));
        }
        out.write_all(chunk).map_err(io("writing the upload"))?;
        if let Some(p) = self.crash_point.filter(|_| self.hash.len() > 1 << 20) {
            crate::fault::point(p);
        }
        Ok(())
    }

    /// Flushes and syncs the file; returns its SHA-256 (hex) and size. The file stays.
    pub fn close(&mut self) -> Result<(String, u64), IncomingError> {
        let out = self
            .out
            .take()
            .ok_or_else(|| IncomingError::Io("upload already closed".into()))?;
        let file = out
            .into_inner()
            .map_err(|e| IncomingError::Io(format!("writing the upload: {}", e.error())))?;
        file.sync_all().map_err(io("syncing the upload"))?;
        Ok(std::mem::take(&mut self.hash).finish())
    }

    /// Abandons the upload and removes its file.
    pub fn abort(mut self) {
        self.out = None;
        let _ = std::fs::remove_file(&self.path);
    }
}
