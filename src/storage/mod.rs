//! The encrypted store: SQLite (bundled, through rusqlite) holding request history, per-user
//! data keys, key-rotation state and the audit chain.
//!
//! What is where:
//! - [`Store`] (this file): opening (file mode, PRAGMAs, migrations, key check) and the types
//!   the API layer sees. It is a plain blocking object owning one `rusqlite::Connection`.
//! - [`StoreHandle`] (`handle.rs`): the async face. It owns a dedicated OS thread that owns the
//!   `Store`; async callers send it boxed closures through a bounded queue and await a oneshot
//!   reply, so the tokio executor never blocks on SQLite or on bulk crypto.
//! - `migrate.rs`: embedded, append-only migrations; `keys.rs`: the key check and per-user data
//!   keys; `records.rs`: history, erasure, retention; `rotation.rs`: online master-key rotation;
//!   `audit.rs`: the MAC-chained audit log; `jobs.rs`: the state of toolchain jobs.
//!
//! What is encrypted: the prompt and the response of each request, under the owner's data key,
//! with the table, column, row id, uid and format version in the AAD. What is not: uid, model,
//! parameters, timestamps, token counts and status (needed for listing, retention and quotas
//! without keys). The database file is created with mode 0600 all the same.
//!
//! Times are Unix seconds (UTC) throughout.

mod audit;
pub mod backup;
mod error;
mod handle;
mod jobs;
mod keys;
pub mod knowledge;
mod migrate;
mod records;
mod responses;
mod rotation;
#[cfg(test)]
mod tests;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::Serialize;

use crate::crypto::{KeyId, MasterKey};
use keys::KeyRing;

pub use audit::{kinds as audit_kinds, AuditFault, AuditProblem, VerifyReport};
pub use error::StoreError;
pub use handle::{StoreHandle, DEFAULT_QUEUE_DEPTH};
pub use jobs::{JobRow, JobState};
pub use migrate::{schema_history, Migration, MIGRATIONS, SCHEMA_VERSION};
pub use responses::{ResponseLink, StoredResponse};
pub use rotation::{RotationStatus, ROTATION_BATCH};

/// How long a statement waits for a lock held by another connection (e.g. an admin tool)
/// before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest page [`Store::list_history`] returns, whatever the caller asks for.
pub const MAX_HISTORY_PAGE: u32 = 1000;

/// How a request ended. Stored as text, checked by the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// The model finished the answer.
    Completed,
    /// The client went away or cancelled.
    Aborted,
    /// The request failed.
    Error,
}

impl RequestStatus {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Completed => "completed",
            RequestStatus::Aborted => "aborted",
            RequestStatus::Error => "error",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<RequestStatus> {
        match s {
            "completed" => Some(RequestStatus::Completed),
            "aborted" => Some(RequestStatus::Aborted),
            "error" => Some(RequestStatus::Error),
            _ => None,
        }
    }
}

/// A finished request to store. `prompt_text` and `response_text` are sealed; the rest is
/// stored in clear. `Debug` does not print the texts.
#[derive(Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// The caller's uid (from `SO_PEERCRED`).
    pub uid: u32,
    /// Model name.
    pub model: String,
    /// Sampling parameters as JSON text (must parse as JSON).
    pub params_json: String,
    /// When the request arrived.
    pub created_at: i64,
    /// When it finished, if it did.
    pub finished_at: Option<i64>,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// How it ended.
    pub status: RequestStatus,
    /// The prompt (the API layer decides the encoding, e.g. the messages as JSON). Sealed.
    pub prompt_text: String,
    /// The response text. Sealed.
    pub response_text: String,
}

impl std::fmt::Debug for NewRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRecord")
            .field("uid", &self.uid)
            .field("model", &self.model)
            .field("created_at", &self.created_at)
            .field("status", &self.status)
            .field("prompt_text", &Redacted(self.prompt_text.len()))
            .field("response_text", &Redacted(self.response_text.len()))
            .finish_non_exhaustive()
    }
}

/// The clear metadata of a stored request, as listed in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RecordMeta {
    /// Record id (stable, never reused).
    pub id: i64,
    /// Owner uid.
    pub uid: u32,
    /// Model name.
    pub model: String,
    /// Sampling parameters as JSON text.
    pub params_json: String,
    /// When the request arrived.
    pub created_at: i64,
    /// When it finished, if it did.
    pub finished_at: Option<i64>,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// How it ended.
    pub status: RequestStatus,
}

/// A stored request with its decrypted prompt and response. `Debug` does not print the texts.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The clear metadata.
    #[serde(flatten)]
    pub meta: RecordMeta,
    /// The decrypted prompt.
    pub prompt_text: String,
    /// The decrypted response.
    pub response_text: String,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("meta", &self.meta)
            .field("prompt_text", &Redacted(self.prompt_text.len()))
            .field("response_text", &Redacted(self.response_text.len()))
            .finish()
    }
}

/// Prints `<redacted, N bytes>` in place of user text.
struct Redacted(usize);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

/// What [`Store::erase_uid`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EraseReport {
    /// Wrapped data keys destroyed (0 or 1).
    pub keys_destroyed: u64,
    /// Request rows purged.
    pub requests_deleted: u64,
    /// Files and collections deleted (their attachments, chunks and vectors with them).
    #[serde(default)]
    pub knowledge_deleted: u64,
    /// Whether the WAL was checkpointed and truncated to zero bytes afterwards. False only if
    /// another connection held a read snapshot; the wrapped key then leaves the WAL at the
    /// next checkpoint.
    pub wal_truncated: bool,
}

/// The encrypted store over one SQLite connection. Blocking; use [`StoreHandle`] from async code.
///
/// Holds the master key (and, during a rotation, the incoming key) for its whole life; both are
/// zeroized when the store is dropped.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The master key(s). A separate field from `conn` so that a method can hold a transaction
    /// (a mutable borrow of `conn`) and use the keys at the same time.
    keys: KeyRing,
    /// Test hook: how many more rotation batches may run before one fails, simulating a crash.
    #[cfg(test)]
    fail_rotation_after: Option<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("active_key_id", &self.keys.active.id())
            .field(
                "incoming_key_id",
                &self.keys.incoming.as_ref().map(MasterKey::id),
            )
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `db_path` with `master_key`.
    ///
    /// In order: creates the file with mode 0600 if it does not exist; sets the connection
    /// PRAGMAs (WAL, `synchronous=FULL`, `foreign_keys=ON`, `secure_delete=ON`, a busy timeout);
    /// applies pending migrations in one transaction ([`StoreError::TooNew`] for a newer
    /// schema); then checks the key: a new database records a key-check record for this key,
    /// an existing one must open with it ([`StoreError::WrongKey`] otherwise, which the daemon
    /// turns into exit status 78 before it opens its socket).
    ///
    /// It also finishes an erase interrupted by a crash (see [`Store::erase_uid`]) and truncates
    /// the WAL left by a crash.
    ///
    /// While a key rotation is in progress, **either** the old or the new key opens the store:
    /// each is stored wrapped under the other's KEK until the rotation finishes, so the store
    /// recovers the other one and can read every data key and resume the rotation
    /// ([`Store::resume_rotation`]). After it finishes, only the new key opens it.
    pub fn open(db_path: impl AsRef<Path>, master_key: MasterKey) -> Result<Store, StoreError> {
        Store::open_with_migrations(db_path.as_ref(), master_key, MIGRATIONS)
    }

    /// [`Store::open`] with an explicit migration list (the upgrade test opens with only the
    /// first, frozen, migration).
    pub(crate) fn open_with_migrations(
        path: &Path,
        master_key: MasterKey,
        migrations: &[Migration],
    ) -> Result<Store, StoreError> {
        create_private_file(path)?;
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        migrate::migrate(&mut conn, migrations)?;
        let keys = keys::unlock(&mut conn, master_key)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            keys,
            #[cfg(test)]
            fail_rotation_after: None,
        };
        store.finish_interrupted_erasures()?;
        // After a crash the WAL may still hold frames with data deleted before it (an erased
        // key, a finished rotation's cross-wrapped keys); fold it in and truncate it now. A
        // busy or failed checkpoint is not fatal: the next one does the same.
        let _ = store.checkpoint_truncate();
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of the key that seals new data now (the old key while a rotation runs).
    pub fn active_key_id(&self) -> KeyId {
        self.keys.active.id()
    }

    /// Copies every committed page back into the database file and truncates the WAL to zero
    /// bytes, so deleted data (with `secure_delete` it is zeroed in the main file) does not
    /// linger in old WAL frames. Returns false if a reader blocked it.
    pub fn checkpoint_truncate(&mut self) -> Result<bool, StoreError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }

    /// Runs `PRAGMA integrity_check` (slow on big databases: for admin tools and tests).
    pub fn integrity_check(&self) -> Result<bool, StoreError> {
        let result: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(result == "ok")
    }
}

/// A write transaction that takes the database lock at its start (`BEGIN IMMEDIATE`), so it
/// cannot fail half-way with SQLITE_BUSY when another connection also writes.
fn write_tx(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

/// Creates the database file with mode 0600 if it does not exist yet. SQLite would create it
/// with 0644 (less the umask), and its -wal and -shm files copy the main file's mode; the clear
/// metadata (who asked which model when) is nobody else's business either.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Per-connection settings. They are not part of migrations: most PRAGMAs are not stored in
/// the file (or, like `journal_mode`, cannot change inside a transaction).
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Io(std::io::Error::other(format!(
            "SQLite refused WAL mode (journal_mode is {mode})"
        ))));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;
         PRAGMA trusted_schema = OFF;",
    )?;
    Ok(())
}

/// Now, in Unix seconds.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
