//! Datasets: files uploaded for jobs (or produced by a `prepare` job), each under
//! `state-dir/jobs/datasets/ID/` as `data.FORMAT` plus `meta.json` (id, format, size, SHA-256,
//! who, when, from where). Ids are 32 random hex digits, so a dataset is never named by a path.
//!
//! An upload streams into `state-dir/jobs/tmp/` while it is hashed and is renamed into place
//! only once complete, so an interrupted upload leaves nothing usable (start-up empties `tmp/`).
//! A job *claims* its dataset: the file moves into the job's working folder and the dataset id
//! is gone. Datasets nobody claimed within a day are removed (at start-up, then hourly), and
//! an admin may remove one at once (`DELETE /admin/jobs/data/ID`).

use super::JobError;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Unclaimed datasets older than this are removed at start-up.
const UNCLAIMED_TTL_SECS: u64 = 24 * 3600;

/// What is known about a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// The id jobs name it by.
    pub id: String,
    /// `jsonl`, `txt` or `md`.
    pub format: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Who uploaded it (or submitted the job that produced it).
    pub uid: u32,
    /// Unix time.
    pub created_at: u64,
    /// `upload`, or `job N (train)` / `job N (eval)` for a prepare job's output.
    pub source: String,
}

/// Is `id` a dataset id (32 lowercase hex digits)?
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks an upload's declared format.
pub fn check_format(format: &str) -> Result<&'static str, JobError> {
    ["jsonl", "txt", "md"]
        .into_iter()
        .find(|f| *f == format)
        .ok_or_else(|| JobError::Invalid {
            field: "format".into(),
            message: format!("{format:?}: use jsonl, txt or md"),
        })
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |e| JobError::Io(format!("{context}: {e}"))
}

fn new_id() -> Result<String, JobError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| JobError::Io("the system RNG failed".into()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creates a private directory (0700) and its parents.
pub(crate) fn private_dir(p: &Path) -> Result<(), JobError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(io("creating a jobs directory"))
}

/// The datasets folder.
#[derive(Debug)]
pub struct Datasets {
    root: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
}

/// A dataset upload in progress (see [`crate::incoming`]).
pub type DataUpload = crate::incoming::IncomingFile;

impl From<crate::incoming::IncomingError> for JobError {
    fn from(e: crate::incoming::IncomingError) -> Self {
        match e {
            crate::incoming::IncomingError::TooLarge(max) => JobError::DataTooLarge(max),
            crate::incoming::IncomingError::Io(what) => JobError::Io(what),
        }
    }
}

impl Datasets {
    /// Opens `jobs_root/datasets` (creating it), empties `jobs_root/tmp` and removes datasets
    /// left unclaimed for more than a day.
    pub fn open(jobs_root: &Path, max_bytes: u64) -> Result<Datasets, JobError> {
        let d = Datasets {
            root: jobs_root.join("datasets"),
            tmp: jobs_root.join("tmp"),
            max_bytes,
        };
        private_dir(&d.root)?;
        private_dir(&d.tmp)?;
        if let Ok(entries) = std::fs::read_dir(&d.tmp) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
            }
        }
        d.sweep();
        Ok(d)
    }

    /// Removes the datasets no job claimed within a day of their upload (at start-up and then
    /// hourly, see [`super::JobRunner::spawn_sweeper`]).
    pub fn sweep(&self) {
        for meta in self.list() {
            if now().saturating_sub(meta.created_at) > UNCLAIMED_TTL_SECS {
                tracing::info!(dataset = %meta.id, "removing a dataset no job claimed");
                let _ = std::fs::remove_dir_all(self.root.join(&meta.id));
            }
        }
    }

    /// Removes a dataset no job has claimed.
    pub fn remove(&self, id: &str) -> Result<DatasetMeta, JobError> {
        let meta = self.get(id)?;
        std::fs::remove_dir_all(self.root.join(&meta.id)).map_err(io("removing the dataset"))?;
        Ok(meta)
    }

    fn list(&self) -> Vec<DatasetMeta> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| valid_id(id))
            .filter_map(|id| self.get(&id).ok())
            .collect()
    }

    /// Starts an upload.
    pub fn begin(&self) -> Result<DataUpload, JobError> {
        let path = self.tmp.join(format!("upload-{}", new_id()?));
        Ok(DataUpload::create(path, self.max_bytes)?)
    }

    /// Completes an upload as a new dataset.
    pub fn finish(
        &self,
        mut up: DataUpload,
        format: &str,
        uid: u32,
    ) -> Result<DatasetMeta, JobError> {
        let result = (|| {
            let (sha256, size) = up.close()?;
            self.store(up.path(), format, sha256, size, uid, "upload".into())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(up.path());
        }
        result
    }

    /// Moves a file the daemon produced (a prepare job's output) in as a new dataset.
    pub fn add_file(
        &self,
        path: &Path,
        format: &str,
        uid: u32,
        source: String,
    ) -> Result<DatasetMeta, JobError> {
        let (sha256, size) =
            inhouse_formats::sign::sha256_file(path).map_err(|e| JobError::Io(e.to_string()))?;
        self.store(path, format, sha256, size, uid, source)
    }

    fn store(
        &self,
        file: &Path,
        format: &str,
        sha256: String,
        size: u64,
        uid: u32,
        source: String,
    ) -> Result<DatasetMeta, JobError> {
        let format = check_format(format)?;
        let id = new_id()?;
        let meta = DatasetMeta {
            id: id.clone(),
            format: format.to_string(),
            size,
            sha256,
            uid,
            created_at: now(),
            source,
        };
        // Built in tmp/ and renamed into place, so a dataset directory is always complete.
        let building = self.tmp.join(format!("dataset-{id}"));
        private_dir(&building)?;
        let done = (|| {
            std::fs::rename(file, building.join(format!("data.{format}")))
                .map_err(io("storing the dataset"))?;
            let text = serde_json::to_vec_pretty(&meta).map_err(|e| JobError::Io(e.to_string()))?;
            std::fs::write(building.join("meta.json"), text).map_err(io("writing meta.json"))?;
            std::fs::rename(&building, self.root.join(&id)).map_err(io("storing the dataset"))
        })();
        if done.is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
        done.map(|()| meta)
    }

    /// One dataset.
    pub fn get(&self, id: &str) -> Result<DatasetMeta, JobError> {
        if !valid_id(id) {
            return Err(JobError::UnknownDataset(id.to_string()));
        }
        let bytes = std::fs::read(self.root.join(id).join("meta.json"))
            .map_err(|_| JobError::UnknownDataset(id.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|_| JobError::UnknownDataset(id.to_string()))
    }

    /// Moves a dataset's file to `dest` (inside a job's working folder); the id is gone.
    pub fn claim(&self, meta: &DatasetMeta, dest: &Path) -> Result<(), JobError> {
        let dir = self.root.join(&meta.id);
        std::fs::rename(dir.join(format!("data.{}", meta.format)), dest)
            .map_err(|_| JobError::UnknownDataset(meta.id.clone()))?;
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_claim_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datasets::open(dir.path(), 1 << 20).unwrap();
        let mut up = ds.begin().unwrap();
        up.write(b"{\"text\":\"hello\"}\n").unwrap();
        let meta = ds.finish(up, "jsonl", 7).unwrap();
        assert!(valid_id(&meta.id));
        assert_eq!(meta.size, 17);
        assert_eq!(ds.get(&meta.id).unwrap(), meta);
        let dest = dir.path().join("train.jsonl");
        ds.claim(&meta, &dest).unwrap();
        assert!(dest.is_file());
        assert!(matches!(ds.get(&meta.id), Err(JobError::UnknownDataset(_))));
        let mut up = ds.begin().unwrap();
        up.write(b"x\n").unwrap();
        let other = ds.finish(up, "txt", 7).unwrap();
        ds.remove(&other.id).unwrap();
        assert!(matches!(
            ds.remove(&other.id),
            Err(JobError::UnknownDataset(_))
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("datasets"))
                .unwrap()
                .count(),
            0
        );
        for bad in ["../x", "", "ABCDEF0123456789abcdef0123456789"] {
            assert!(!valid_id(bad));
        }
        let mut up = ds.begin().unwrap();
        assert!(matches!(
            up.write(&vec![0u8; 2 << 20]).map_err(JobError::from),
            Err(JobError::DataTooLarge(_))
        ));
        up.abort();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
