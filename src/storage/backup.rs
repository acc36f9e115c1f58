//! Backup and restore of a state directory.
//!
//! **The archive** is a plain (ustar/GNU) tar, streamed by `GET /admin/backup` and written by
//! the client to `FILE` (through `FILE.partial` and a rename). Its entries, in order:
//!
//! | entry | what |
//! | --- | --- |
//! | `state/inhouse.db` | the database, a snapshot taken with SQLite's online backup API (records stay sealed as they are) |
//! | `state/models/aliases.json` | the alias table, when there is one |
//! | `state/models/manifests/NAME.json` | every model manifest |
//! | `state/models/blobs/sha256-HEX` | the model files, only with `with_models` |
//! | `etc/inhouse.toml` | the daemon's configuration file, when it was started with one |
//! | `etc/trusted-keys/FILE` | the publisher keys trusted for signed models |
//! | `MANIFEST.json` | last: see [`Manifest`] |
//!
//! The manifest names every other entry with its size and SHA-256, the audit chain's head (seq
//! and MAC) in the snapshot, the master key's id (never the key), and the models (name, digest,
//! whether the blob is included). It carries a MAC by the master key's audit key over its own
//! text, so that with the key (`backup verify --key-file`, and every restore) nothing in the
//! archive can be changed unnoticed; without the key, the SHA-256s still catch damage.
//!
//! The job runner's working files and uploaded datasets (`state/jobs/`) are not archived:
//! jobs themselves are rows of the database and come back with it.
//!
//! **Restore** ([`restore`]) reads the archive once, extracting into a fresh temporary
//! directory next to the target (`.NAME.restore-PID`), checks every SHA-256, the key against
//! the manifest's key id and MAC, the database's integrity, its audit head against the
//! manifest and the whole audit chain, writes the marker [`MARKER_FILE`], and only then renames
//! the temporary directory onto the (absent or empty) target. A refusal, an error or a kill
//! before the rename leaves the target as it was (a killed restore leaves its temporary
//! directory, which the next restore into the same target removes). The archived
//! configuration and trusted keys are placed under `DIR/restored-etc/` for the admin to review
//! and copy to `/etc/inhouse`: a restore never writes outside the state directory.
//!
//! **The first start after a restore** ([`finish_restore`]) appends one `restored` audit event
//! with the archive's SHA-256 and removes the marker. The event is only appended if the chain
//! has none for that archive yet, in the same transaction as the check, so a crash between the
//! append and the marker's removal does not append it twice.
//!
//! Crash points ([`POINTS`]) and what a SIGKILL there leaves:
//! - `backup.after_snapshot`: a snapshot file in `state/.backup-tmp/`, removed at the next
//!   start; the client got no archive (an error, no `FILE`).
//! - `backup.mid_stream`: the database entry streamed, the rest not; the client reports a
//!   truncated download and keeps no `FILE`.
//! - `backup.before_audit`: the whole tar streamed but its end not signalled, no `backup` audit
//!   event; the client keeps no `FILE`.
//! - `restore.half_extracted`: the database (the first entry) extracted into the temporary
//!   directory, the rest not; the target is unchanged.
//! - `restore.before_rename`: everything verified, the target unchanged.
//! - `restore.after_rename`: the state is in place with its marker; the next start appends
//!   `restored`.
//! - `restore.after_append` (at the first start): the `restored` event is committed, the marker
//!   still there; the next start does not append it again and removes the marker.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{audit, now_unix, write_tx, Store, StoreError};
use crate::crypto::{to_hex, AuditMacInput, KeyId, MasterKey, AUDIT_GENESIS_MAC};

/// The archive format's name, in [`Manifest::format`].
pub const FORMAT: &str = "inhouse-backup";
/// The archive format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest entry, always the last one.
pub const MANIFEST_ENTRY: &str = "MANIFEST.json";
/// The database entry.
pub const DB_ENTRY: &str = "state/inhouse.db";
/// The marker a restore leaves in the state directory for the first start.
pub const MARKER_FILE: &str = "restore-pending.json";
/// Where a restore puts the archived configuration and trusted keys, inside the state directory.
pub const RESTORED_ETC: &str = "restored-etc";
/// Snapshots being streamed, inside the state directory; emptied at start.
pub const TMP_DIR: &str = ".backup-tmp";
/// The audit event of a backup (detail: `archive_sha256`, `bytes`, `with_models`,
/// `audit_head_seq`, `files`).
pub const BACKUP_EVENT: &str = "backup";
/// The audit event of the first start after a restore (detail: `archive_sha256`,
/// `backup_created_at`, `backup_head_seq`, `restored_at`).
pub const RESTORED_EVENT: &str = "restored";
/// The crash points of backup and restore (see the module docs for what each leaves).
pub const POINTS: &[&str] = &[
    "backup.after_snapshot",
    "backup.mid_stream",
    "backup.before_audit",
    "restore.half_extracted",
    "restore.before_rename",
    "restore.after_rename",
    "restore.after_append",
];
/// The MAC input's kind for the manifest (it is not an audit row; the domain keeps it apart).
const MANIFEST_MAC_KIND: &str = "backup_manifest";
/// The largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Pages copied per step of the online backup.
const PAGES_PER_STEP: std::os::raw::c_int = 256;

/// The audit chain's head: its last row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Seq of the last row.
    pub seq: i64,
    /// Its MAC, hex.
    pub mac: String,
}

/// One archived file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Entry path in the tar.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// One model of the store at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// Its name.
    pub name: String,
    /// `model` or `adapter`.
    pub kind: String,
    /// SHA-256 of its file, hex.
    pub digest: String,
    /// Its file's size.
    pub size: u64,
    /// Whether the file is in the archive (`with_models`).
    pub included: bool,
}

/// `MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The daemon's version.
    pub inhouse_version: String,
    /// The database's schema version (`user_version`).
    pub schema_version: u32,
    /// Unix time of the snapshot.
    pub created_at: i64,
    /// The id of the master key that opens the database (and MACs this manifest).
    pub key_id: String,
    /// The audit chain's head in the snapshot.
    pub audit_head: Option<AuditHead>,
    /// Whether model files are included.
    pub with_models: bool,
    /// Every entry but this one, in archive order.
    pub files: Vec<FileEntry>,
    /// The models.
    pub models: Vec<ModelEntry>,
    /// The configuration file's path on the machine backed up, if any.
    pub config_file: Option<String>,
    /// The trusted-keys directory on that machine.
    pub trusted_keys_dir: Option<String>,
    /// HMAC-SHA-256 (the master key's audit key) over this manifest's compact JSON without
    /// this field, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Manifest {
    /// The text the MAC covers.
    fn mac_text(&self) -> String {
        let mut body = self.clone();
        body.mac = None;
        serde_json::to_string(&body).unwrap_or_default()
    }

    fn mac_input<'a>(&self, text: &'a str, key_id: KeyId) -> AuditMacInput<'a> {
        AuditMacInput {
            prev_mac: &AUDIT_GENESIS_MAC,
            seq: 0,
            ts: self.created_at,
            kind: MANIFEST_MAC_KIND,
            actor_uid: None,
            detail_json: text,
            key_id,
        }
    }

    /// Whether the MAC verifies with `key`.
    pub fn mac_ok(&self, key: &MasterKey) -> bool {
        let Some(mac) = self.mac.as_deref().and_then(from_hex) else {
            return false;
        };
        let text = self.mac_text();
        key.audit_key()
            .verify(&self.mac_input(&text, key.id()), &mac)
    }
}

/// What a backup reads besides the database: set by the daemon at start.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The trusted-keys directory.
    pub trusted_keys_dir: Option<PathBuf>,
    /// The configuration file the daemon was started with.
    pub config_file: Option<PathBuf>,
}

static CONFIG_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Notes the configuration file this process was started with (`inhoused` calls it once), for
/// [`Sources::config_file`].
pub fn note_config_file(path: &Path) {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let _ = CONFIG_FILE.set(abs);
}

/// The file [`note_config_file`] noted.
pub fn noted_config_file() -> Option<PathBuf> {
    CONFIG_FILE.get().cloned()
}

/// Why a backup, a verification or a restore failed. The message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The archive is damaged, truncated, altered or not a backup.
    #[error("{0}")]
    Archive(String),
    /// The key does not open this archive.
    #[error("{0}")]
    WrongKey(String),
    /// The target is not empty, or similar.
    #[error("{0}")]
    Refused(String),
    /// The store refused something.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File system trouble.
    #[error("{0}")]
    Io(String),
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BackupError {
    move |e| BackupError::Io(format!("{what}: {e}"))
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 over what passes through.
struct Sha(ring::digest::Context, u64);

impl Sha {
    fn new() -> Sha {
        Sha(ring::digest::Context::new(&ring::digest::SHA256), 0)
    }
    fn update(&mut self, b: &[u8]) {
        self.0.update(b);
        self.1 += b.len() as u64;
    }
    fn hex(self) -> (String, u64) {
        (to_hex(self.0.finish().as_ref()), self.1)
    }
}

/// A reader that hashes what it reads.
struct HashingReader<R> {
    inner: R,
    sha: Sha,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes what it writes (the whole archive, for its SHA-256).
pub struct HashingWriter<W> {
    inner: W,
    sha: Sha,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            sha: Sha::new(),
        }
    }
    /// The inner writer, the SHA-256 (hex) and the byte count of everything written.
    pub fn finish(self) -> (W, String, u64) {
        let (hex, n) = self.sha.hex();
        (self.inner, hex, n)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// The snapshot

/// What the snapshot says about itself.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The snapshot file (under the state directory's [`TMP_DIR`]); the caller removes it.
    pub path: PathBuf,
    /// `user_version`.
    pub schema_version: u32,
    /// `meta.active_key_id`.
    pub key_id: String,
    /// The audit head in the snapshot.
    pub audit_head: Option<AuditHead>,
    /// When it was taken.
    pub created_at: i64,
}

/// Reads the audit head of a database.
fn read_head(conn: &Connection) -> Result<Option<AuditHead>, StoreError> {
    let head: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(head.map(|(seq, mac)| AuditHead {
        seq,
        mac: to_hex(&mac),
    }))
}

/// Takes a consistent snapshot of the database `db` into a new file in `tmp_dir`, with SQLite's
/// online backup API over a second, read-only connection holding one read transaction: the
/// daemon's own connection keeps serving (WAL readers do not block the writer) and the copy is
/// the database as of one commit. The snapshot is switched to rollback-journal mode so that it
/// is one self-contained file. Refuses while a key rotation runs.
pub fn snapshot(db: &Path, tmp_dir: &Path) -> Result<Snapshot, BackupError> {
    std::fs::create_dir_all(tmp_dir).map_err(io_err(tmp_dir.display()))?;
    let _ = std::fs::set_permissions(tmp_dir, std::fs::Permissions::from_mode(0o700));
    let path = tmp_dir.join(format!("snapshot-{}-{}.db", std::process::id(), unique()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(path.display()))?;
    let result = (|| {
        let src = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        src.busy_timeout(std::time::Duration::from_secs(5))?;
        src.execute_batch("BEGIN DEFERRED")?;
        // The first read starts the read transaction: everything below sees this commit.
        let rotating: i64 = src.query_row("SELECT count(*) FROM key_rotation", [], |r| r.get(0))?;
        if rotating > 0 {
            return Err(BackupError::Refused(
                "a key rotation is in progress; back up after it finishes \
                 (inhouse admin rotate-key shows its state)"
                    .into(),
            ));
        }
        let mut dst = Connection::open(&path)?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            loop {
                match backup.step(PAGES_PER_STEP)? {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => {}
                    rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    _ => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
        src.execute_batch("COMMIT")?;
        drop(src);
        let _: String = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        let schema_version: u32 = dst.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let key_id: String = dst
            .query_row(
                "SELECT value FROM meta WHERE key = 'active_key_id'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default();
        let audit_head = read_head(&dst)?;
        dst.close().map_err(|(_, e)| StoreError::from(e))?;
        Ok(Snapshot {
            path: path.clone(),
            schema_version,
            key_id,
            audit_head,
            created_at: now_unix(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    result
}

impl From<rusqlite::Error> for BackupError {
    fn from(e: rusqlite::Error) -> Self {
        BackupError::Store(StoreError::from(e))
    }
}

/// Removes snapshots a killed backup left (at start, before serving).
pub fn clean_tmp(state_dir: &Path) {
    let _ = std::fs::remove_dir_all(state_dir.join(TMP_DIR));
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:x}{:x}", N.fetch_add(1, Ordering::Relaxed))
}

impl Store {
    /// MACs `manifest` with the active key's audit key (sets [`Manifest::mac`]); fails if the
    /// manifest names another key (the key changed since the snapshot).
    pub fn seal_backup_manifest(&self, manifest: &mut Manifest) -> Result<(), StoreError> {
        let key = &self.keys.active;
        if manifest.key_id != key.id().to_hex() || self.keys.incoming.is_some() {
            return Err(StoreError::InvalidInput(
                "the master key changed during the backup; take it again".into(),
            ));
        }
        manifest.mac = None;
        let text = manifest.mac_text();
        let mac = key.audit_key().mac(&manifest.mac_input(&text, key.id()));
        manifest.mac = Some(to_hex(&mac));
        Ok(())
    }

    /// Appends the `restored` event for the archive `archive_sha256` unless the chain already
    /// has one for it; check and append in one transaction. Returns whether it appended.
    pub fn append_restored_once(
        &mut self,
        archive_sha256: &str,
        detail_json: &str,
    ) -> Result<bool, StoreError> {
        let key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let found = {
            let mut stmt = tx.prepare("SELECT detail_json FROM audit WHERE kind = ?1")?;
            let rows = stmt.query_map([RESTORED_EVENT], |r| r.get::<_, String>(0))?;
            let mut found = false;
            for d in rows {
                let d = serde_json::from_str::<serde_json::Value>(&d?).unwrap_or_default();
                if d.get("archive_sha256").and_then(|v| v.as_str()) == Some(archive_sha256) {
                    found = true;
                }
            }
            found
        };
        if !found {
            audit::append_in(&tx, &key, RESTORED_EVENT, None, detail_json)?;
        }
        tx.commit()?;
        Ok(!found)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing the archive

/// The model manifests in `state_dir/models/manifests`, by name.
fn stored_models(state_dir: &Path) -> Vec<(PathBuf, crate::models::Manifest)> {
    let dir = state_dir.join("models").join("manifests");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Ok(m) = std::fs::read(&p).map_err(|_| ()).and_then(|b| {
                    serde_json::from_slice::<crate::models::Manifest>(&b).map_err(|_| ())
                }) {
                    out.push((p, m));
                }
            }
        }
    }
    out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    out
}

/// Appends one file as `name`, hashing it; the size is taken from the open file and exactly
/// that many bytes are written.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    path: &Path,
    mtime: i64,
    files: &mut Vec<FileEntry>,
) -> Result<(), BackupError> {
    let f = std::fs::File::open(path).map_err(io_err(path.display()))?;
    let meta = f.metadata().map_err(io_err(path.display()))?;
    let size = meta.len();
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(meta.mode() & 0o777);
    header.set_mtime(u64::try_from(mtime).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    let mut reader = HashingReader {
        inner: f.take(size),
        sha: Sha::new(),
    };
    tar.append_data(&mut header, name, &mut reader)
        .map_err(io_err(format!("archiving {name}")))?;
    let (sha256, n) = reader.sha.hex();
    if n != size {
        return Err(BackupError::Io(format!(
            "{} shrank while it was archived",
            path.display()
        )));
    }
    files.push(FileEntry {
        path: name.to_string(),
        size,
        sha256,
    });
    Ok(())
}

/// Writes the archive of `snapshot` and the state directory's files to `w`; returns the
/// manifest (unsealed: `seal` MACs it before it is written).
pub fn write_archive<W: Write>(
    w: W,
    state_dir: &Path,
    sources: &Sources,
    snap: &Snapshot,
    with_models: bool,
    seal: impl FnOnce(&mut Manifest) -> Result<(), BackupError>,
) -> Result<(W, Manifest), BackupError> {
    let mut tar = tar::Builder::new(w);
    tar.mode(tar::HeaderMode::Deterministic);
    let t = snap.created_at;
    let mut files = Vec::new();
    append_file(&mut tar, DB_ENTRY, &snap.path, t, &mut files)?;
    crate::fault::point("backup.mid_stream");
    let models_dir = state_dir.join("models");
    let aliases = models_dir.join(crate::models::alias::FILE);
    if aliases.is_file() {
        append_file(
            &mut tar,
            "state/models/aliases.json",
            &aliases,
            t,
            &mut files,
        )?;
    }
    let models = stored_models(state_dir);
    for (path, m) in &models {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        append_file(
            &mut tar,
            &format!("state/models/manifests/{file}"),
            path,
            t,
            &mut files,
        )?;
        let _ = m;
    }
    let mut model_entries = Vec::new();
    let mut done_blobs = std::collections::HashSet::new();
    for (_, m) in &models {
        let blob = models_dir
            .join("blobs")
            .join(format!("sha256-{}", m.digest));
        let included = with_models && blob.is_file();
        if included && done_blobs.insert(m.digest.clone()) {
            append_file(
                &mut tar,
                &format!("state/models/blobs/sha256-{}", m.digest),
                &blob,
                t,
                &mut files,
            )?;
        }
        model_entries.push(ModelEntry {
            name: m.name.clone(),
            kind: match m.kind {
                crate::models::Kind::Model => "model".into(),
                crate::models::Kind::Adapter => "adapter".into(),
            },
            digest: m.digest.clone(),
            size: m.size,
            included,
        });
    }
    if let Some(cfg) = sources.config_file.as_deref().filter(|p| p.is_file()) {
        append_file(&mut tar, "etc/inhouse.toml", cfg, t, &mut files)?;
    }
    if let Some(dir) = sources.trusted_keys_dir.as_deref() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut names: Vec<_> = entries
                .flatten()
                .filter(|e| e.path().is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| safe_name(n))
                .collect();
            names.sort();
            for n in names {
                append_file(
                    &mut tar,
                    &format!("etc/trusted-keys/{n}"),
                    &dir.join(&n),
                    t,
                    &mut files,
                )?;
            }
        }
    }
    let mut manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        inhouse_version: env!("CARGO_PKG_VERSION").into(),
        schema_version: snap.schema_version,
        created_at: snap.created_at,
        key_id: snap.key_id.clone(),
        audit_head: snap.audit_head.clone(),
        with_models,
        files,
        models: model_entries,
        config_file: sources
            .config_file
            .as_deref()
            .filter(|p| p.is_file())
            .map(|p| p.display().to_string()),
        trusted_keys_dir: sources
            .trusted_keys_dir
            .as_deref()
            .map(|p| p.display().to_string()),
        mac: None,
    };
    seal(&mut manifest)?;
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Io(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(u64::try_from(t).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, MANIFEST_ENTRY, text.as_slice())
        .map_err(io_err("archiving the manifest"))?;
    let w = tar.into_inner().map_err(io_err("finishing the archive"))?;
    Ok((w, manifest))
}

/// A file name that is one plain component.
fn safe_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.starts_with('.')
}

// ---------------------------------------------------------------------------------------------
// Reading the archive

/// What reading an archive found.
#[derive(Debug)]
struct ReadArchive {
    manifest: Manifest,
    /// Each entry but the manifest: (size, sha256, mode).
    entries: BTreeMap<String, (u64, String, u32)>,
    order: Vec<String>,
    sha256: String,
    bytes: u64,
}

/// Checks an entry path: relative, plain components, under `state/` or `etc/`.
fn check_entry_path(p: &str) -> bool {
    let path = Path::new(p);
    (p.starts_with("state/") || p.starts_with("etc/"))
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Reads the archive at `file` once: hashes it whole, hashes each entry, and writes the entries
/// `place` gives a destination to there. Checks the structure and every SHA-256 against the
/// manifest. `half` is called once, when half the manifest's entries are read.
fn read_archive(
    file: &Path,
    mut place: impl FnMut(&str) -> Option<PathBuf>,
    mut half: impl FnMut(),
) -> Result<ReadArchive, BackupError> {
    let damaged = |e: std::io::Error| {
        BackupError::Archive(format!(
            "the archive is truncated or damaged ({e}); it cannot be used"
        ))
    };
    let f = std::fs::File::open(file).map_err(io_err(file.display()))?;
    let mut hr = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, f),
        sha: Sha::new(),
    };
    let mut entries = BTreeMap::new();
    let mut order = Vec::new();
    let mut manifest: Option<Manifest> = None;
    {
        let mut archive = tar::Archive::new(&mut hr);
        for entry in archive.entries().map_err(damaged)? {
            let mut entry = entry.map_err(damaged)?;
            let name = entry
                .path()
                .map_err(damaged)?
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| BackupError::Archive("an entry name is not UTF-8".into()))?;
            if manifest.is_some() {
                return Err(BackupError::Archive(format!(
                    "entry {name} follows {MANIFEST_ENTRY}, which must be the last: not an \
                     inhouse backup, or altered"
                )));
            }
            if entry.header().entry_type() != tar::EntryType::Regular {
                return Err(BackupError::Archive(format!(
                    "entry {name} is not a regular file: not an inhouse backup, or altered"
                )));
            }
            if name == MANIFEST_ENTRY {
                if entry.size() > MAX_MANIFEST_BYTES {
                    return Err(BackupError::Archive("the manifest is too large".into()));
                }
                let mut text = Vec::new();
                entry.read_to_end(&mut text).map_err(damaged)?;
                let m: Manifest = serde_json::from_slice(&text).map_err(|e| {
                    BackupError::Archive(format!("{MANIFEST_ENTRY} does not parse ({e}): altered"))
                })?;
                if m.format != FORMAT || m.format_version > FORMAT_VERSION {
                    return Err(BackupError::Archive(format!(
                        "the archive is {} version {}; this inhouse reads {FORMAT} up to version \
                         {FORMAT_VERSION}",
                        m.format, m.format_version
                    )));
                }
                manifest = Some(m);
                continue;
            }
            if !check_entry_path(&name) || entries.contains_key(&name) {
                return Err(BackupError::Archive(format!(
                    "unexpected entry {name:?}: not an inhouse backup, or altered"
                )));
            }
            let mode = entry.header().mode().unwrap_or(0o600) & 0o777;
            let mut sha = Sha::new();
            let mut out = match place(&name) {
                Some(dest) => {
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).map_err(io_err(parent.display()))?;
                    }
                    Some(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&dest)
                            .map_err(io_err(dest.display()))?,
                    )
                }
                None => None,
            };
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = entry.read(&mut buf).map_err(damaged)?;
                if n == 0 {
                    break;
                }
                sha.update(&buf[..n]);
                if let Some(o) = out.as_mut() {
                    o.write_all(&buf[..n]).map_err(io_err(&name))?;
                }
            }
            if let Some(o) = out {
                o.sync_all().map_err(io_err(&name))?;
            }
            let (hex, n) = sha.hex();
            if n != entry.size() {
                return Err(damaged(std::io::ErrorKind::UnexpectedEof.into()));
            }
            entries.insert(name.clone(), (n, hex, mode));
            order.push(name);
            if order.len() == 1 {
                half();
            }
        }
        // The rest (the end-of-archive blocks) belongs to the file's hash too.
        std::io::copy(archive.into_inner(), &mut std::io::sink()).map_err(damaged)?;
    }
    let Some(manifest) = manifest else {
        return Err(BackupError::Archive(format!(
            "the archive has no {MANIFEST_ENTRY} at its end: it is truncated or not an inhouse \
             backup"
        )));
    };
    for f in &manifest.files {
        match entries.get(&f.path) {
            None => {
                return Err(BackupError::Archive(format!(
                    "{} is listed in the manifest but missing from the archive (truncated or \
                     altered)",
                    f.path
                )))
            }
            Some((size, sha, _)) if *size != f.size || *sha != f.sha256 => {
                return Err(BackupError::Archive(format!(
                    "{} has sha256 {sha} ({size} bytes) but the manifest says {} ({} bytes): the \
                     archive was altered or damaged",
                    f.path, f.sha256, f.size
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = entries
        .keys()
        .find(|k| !manifest.files.iter().any(|f| &f.path == *k))
    {
        return Err(BackupError::Archive(format!(
            "{extra} is in the archive but not in its manifest: altered"
        )));
    }
    if !entries.contains_key(DB_ENTRY) {
        return Err(BackupError::Archive(format!(
            "the archive has no {DB_ENTRY}"
        )));
    }
    let (sha256, bytes) = hr.sha.hex();
    Ok(ReadArchive {
        manifest,
        entries,
        order,
        sha256,
        bytes,
    })
}

/// The result of [`verify_archive`] (printed by `inhouse admin backup verify`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verified {
    /// Always true when returned: every check passed.
    pub ok: bool,
    /// SHA-256 of the whole archive file, hex (the `restored` event carries it).
    pub archive_sha256: String,
    /// Its size.
    pub bytes: u64,
    /// When the snapshot was taken.
    pub created_at: i64,
    /// The version that wrote it.
    pub inhouse_version: String,
    /// The database's schema version.
    pub schema_version: u32,
    /// The id of the key that opens it.
    pub key_id: String,
    /// The audit head.
    pub audit_head: Option<AuditHead>,
    /// Files checked.
    pub files: usize,
    /// Models, and how many of their files are included.
    pub models: usize,
    /// Model files included.
    pub models_included: usize,
    /// Whether the manifest's MAC and the audit chain's MACs were checked (with a key).
    pub macs_checked: bool,
    /// Audit rows verified (with a key).
    pub audit_rows_checked: Option<u64>,
}

/// A private temporary directory (mode 0700) next to `near`.
fn temp_dir_in(parent: &Path, prefix: &str) -> Result<PathBuf, BackupError> {
    let dir = parent.join(format!("{prefix}{}-{}", std::process::id(), unique()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io_err(dir.display()))?;
    Ok(dir)
}

/// Checks an extracted database: integrity, the head against the manifest, and with `key` the
/// key, the manifest's MAC and the whole chain. Returns the audit rows checked.
fn check_db(
    db: &Path,
    manifest: &Manifest,
    key: Option<MasterKey>,
) -> Result<Option<u64>, BackupError> {
    if let Some(k) = &key {
        if k.id().to_hex() != manifest.key_id {
            return Err(BackupError::WrongKey(format!(
                "wrong key: the archive's database opens with key id {}, the key given has id {}",
                manifest.key_id,
                k.id()
            )));
        }
        if !manifest.mac_ok(k) {
            return Err(BackupError::Archive(format!(
                "{MANIFEST_ENTRY} does not verify with key {}: the manifest was altered",
                k.id()
            )));
        }
    }
    {
        let conn = Connection::open(db)?;
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(BackupError::Archive(format!(
                "the database fails PRAGMA integrity_check ({ok})"
            )));
        }
        let head = read_head(&conn)?;
        if head != manifest.audit_head {
            return Err(BackupError::Archive(format!(
                "the database's audit head {head:?} is not the manifest's {:?}: altered",
                manifest.audit_head
            )));
        }
    }
    let Some(key) = key else { return Ok(None) };
    let store = Store::open(db, key).map_err(|e| match e {
        StoreError::WrongKey { .. } => BackupError::WrongKey(format!("wrong key: {e}")),
        e => BackupError::Store(e),
    })?;
    let report = store.audit_verify()?;
    if let Some(fault) = report.first_fault {
        return Err(BackupError::Archive(format!(
            "the archive's audit chain does not verify: {fault}"
        )));
    }
    Ok(Some(report.rows_checked))
}

/// Checks an archive offline: its structure, every SHA-256, the database's integrity, and its
/// audit head against the manifest; with `key` also the key, the manifest's MAC and every MAC
/// of the audit chain. The database is extracted into a private temporary directory under
/// `tmp`, removed afterwards.
pub fn verify_archive(
    file: &Path,
    key: Option<MasterKey>,
    tmp: &Path,
) -> Result<Verified, BackupError> {
    let dir = temp_dir_in(tmp, ".inhouse-verify-")?;
    let result = (|| {
        let db = dir.join("inhouse.db");
        let read = read_archive(file, |name| (name == DB_ENTRY).then(|| db.clone()), || {})?;
        let macs_checked = key.is_some();
        let rows = check_db(&db, &read.manifest, key)?;
        let m = &read.manifest;
        Ok(Verified {
            ok: true,
            archive_sha256: read.sha256,
            bytes: read.bytes,
            created_at: m.created_at,
            inhouse_version: m.inhouse_version.clone(),
            schema_version: m.schema_version,
            key_id: m.key_id.clone(),
            audit_head: m.audit_head.clone(),
            files: m.files.len(),
            models: m.models.len(),
            models_included: m.models.iter().filter(|x| x.included).count(),
            macs_checked,
            audit_rows_checked: rows,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

// ---------------------------------------------------------------------------------------------
// Restore

/// What [`restore`] did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    /// The state directory written.
    pub state_dir: String,
    /// The archive's SHA-256.
    pub archive_sha256: String,
    /// When the backup was taken.
    pub backup_created_at: i64,
    /// The audit head restored.
    pub audit_head: Option<AuditHead>,
    /// Files written.
    pub files: usize,
    /// Models whose files were not in the archive: copy each GGUF to
    /// `DIR/models/blobs/sha256-DIGEST` (mode 0440) before serving it.
    pub models_missing_files: Vec<ModelEntry>,
    /// Where the archived configuration and trusted keys were put, if any.
    pub restored_etc: Option<String>,
}

/// The marker's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    archive_sha256: String,
    backup_created_at: i64,
    backup_head_seq: Option<i64>,
    restored_at: i64,
}

/// Whether `dir` is absent or an empty directory.
fn absent_or_empty(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(BackupError::Io(format!("{}: {e}", dir.display()))),
        Ok(m) if !m.is_dir() => Ok(false),
        Ok(_) => Ok(std::fs::read_dir(dir)
            .map_err(io_err(dir.display()))?
            .next()
            .is_none()),
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), BackupError> {
    let own =
        |p: &Path| std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io_err(p.display()));
    own(dir)?;
    for e in std::fs::read_dir(dir).map_err(io_err(dir.display()))? {
        let p = e.map_err(io_err(dir.display()))?.path();
        if p.is_dir() {
            chown_tree(&p, uid, gid)?;
        } else {
            own(&p)?;
        }
    }
    Ok(())
}

/// Gives every directory below `dir` mode 0750, as the model store makes its own.
fn dir_modes(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750));
                dir_modes(&p);
            }
        }
    }
}

fn sync_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                sync_tree(&p);
            }
        }
    }
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Restores `archive` into `state_dir` (absent or an empty directory) with `key`. See the
/// module docs: nothing changes unless every check passes, and the last step is one rename.
pub fn restore(archive: &Path, state_dir: &Path, key: MasterKey) -> Result<Restored, BackupError> {
    if !absent_or_empty(state_dir)? {
        return Err(BackupError::Refused(format!(
            "{} is not empty: restore only into an empty or absent state directory (stop the \
             daemon and move the old one aside first)",
            state_dir.display()
        )));
    }
    let name = state_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BackupError::Refused("the state directory needs a name".into()))?
        .to_string();
    let parent = match state_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(BackupError::Refused(format!(
            "{} does not exist: create the parent of the state directory first",
            parent.display()
        )));
    }
    // What a killed restore into this target left.
    let prefix = format!(".{name}.restore-");
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = temp_dir_in(&parent, &prefix)?;
    let result = (|| {
        let read = read_archive(
            archive,
            |entry| {
                if let Some(rest) = entry.strip_prefix("state/") {
                    Some(tmp.join(rest))
                } else {
                    entry
                        .strip_prefix("etc/")
                        .map(|rest| tmp.join(RESTORED_ETC).join(rest))
                }
            },
            || crate::fault::point("restore.half_extracted"),
        )?;
        let m = &read.manifest;
        let db = tmp.join("inhouse.db");
        check_db(&db, m, Some(key))?;
        // Modes as archived (files only; directories are 0750 like the store makes them).
        for (path, (_, _, mode)) in &read.entries {
            let dest = match path.strip_prefix("state/") {
                Some(rest) => tmp.join(rest),
                None => tmp.join(RESTORED_ETC).join(path.trim_start_matches("etc/")),
            };
            let _ = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode));
        }
        let marker = Marker {
            archive_sha256: read.sha256.clone(),
            backup_created_at: m.created_at,
            backup_head_seq: m.audit_head.as_ref().map(|h| h.seq),
            restored_at: now_unix(),
        };
        let marker_path = tmp.join(MARKER_FILE);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&marker_path)
            .map_err(io_err(marker_path.display()))?;
        f.write_all(&serde_json::to_vec(&marker).unwrap_or_default())
            .and_then(|()| f.sync_all())
            .map_err(io_err(marker_path.display()))?;
        // The target's owner and mode, when it exists (e.g. /var/lib/inhouse made by the
        // package for the inhouse user); else the parent's owner and mode 0750.
        let (uid, gid, mode) = match std::fs::metadata(state_dir) {
            Ok(md) => (md.uid(), md.gid(), md.mode() & 0o7777),
            Err(_) => {
                let md = std::fs::metadata(&parent).map_err(io_err(parent.display()))?;
                (md.uid(), md.gid(), 0o750)
            }
        };
        dir_modes(&tmp);
        if nix::unistd::geteuid().is_root() {
            chown_tree(&tmp, uid, gid)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(tmp.display()))?;
        sync_tree(&tmp);
        crate::fault::point("restore.before_rename");
        if !absent_or_empty(state_dir)? {
            return Err(BackupError::Refused(format!(
                "{} is no longer empty; nothing was restored",
                state_dir.display()
            )));
        }
        // rename(2) replaces an empty directory atomically.
        std::fs::rename(&tmp, state_dir).map_err(io_err(format!(
            "renaming {} to {}",
            tmp.display(),
            state_dir.display()
        )))?;
        crate::fault::point("restore.after_rename");
        if let Ok(f) = std::fs::File::open(&parent) {
            let _ = f.sync_all();
        }
        let etc = read.entries.keys().any(|p| p.starts_with("etc/"));
        Ok(Restored {
            state_dir: state_dir.display().to_string(),
            archive_sha256: read.sha256.clone(),
            backup_created_at: m.created_at,
            audit_head: m.audit_head.clone(),
            files: read.order.len(),
            models_missing_files: m.models.iter().filter(|x| !x.included).cloned().collect(),
            restored_etc: etc.then(|| state_dir.join(RESTORED_ETC).display().to_string()),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The first start after a restore: appends the `restored` event once and removes the marker.
/// Returns the archive's SHA-256 when there was a marker.
pub async fn finish_restore(
    store: &super::StoreHandle,
    state_dir: &Path,
) -> Result<Option<String>, StoreError> {
    let path = state_dir.join(MARKER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io(e)),
    };
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::Io(std::io::Error::other(format!(
            "{} does not parse ({e}); remove it if the restore's audit event is not wanted",
            path.display()
        )))
    })?;
    let detail = serde_json::json!({
        "archive_sha256": marker.archive_sha256,
        "backup_created_at": marker.backup_created_at,
        "backup_head_seq": marker.backup_head_seq,
        "restored_at": marker.restored_at,
    })
    .to_string();
    let sha = marker.archive_sha256.clone();
    let appended = store
        .call(move |s| s.append_restored_once(&sha, &detail))
        .await?;
    crate::fault::point("restore.after_append");
    std::fs::remove_file(&path)?;
    if let Ok(f) = std::fs::File::open(state_dir) {
        let _ = f.sync_all();
    }
    if appended {
        tracing::info!(archive_sha256 = %marker.archive_sha256, "first start after a restore");
    }
    Ok(Some(marker.archive_sha256))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_names_are_checked() {
        assert_eq!(from_hex("00ffa1"), Some(vec![0, 255, 161]));
        assert_eq!(from_hex("0"), None);
        assert!(check_entry_path("state/models/manifests/a.json"));
        assert!(!check_entry_path("state/../x"));
        assert!(!check_entry_path("/etc/passwd"));
        assert!(!check_entry_path("other/x"));
        assert!(safe_name("k.pub") && !safe_name("..") && !safe_name(".hidden"));
    }
}
