//! The one error type of the storage layer, with a stable machine-readable kind per variant.

use crate::crypto::{CryptoError, KeyId};

/// Everything that can go wrong in the store. Messages never contain key material or record
/// contents; they may contain ids, uids, key ids, paths and SQLite's own messages.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record's ciphertext does not open: it was modified, truncated, or copied from another
    /// row, or its owner's wrapped data key was damaged. Other records are unaffected.
    #[error(
        "record {id} failed its integrity check: its encrypted content was modified or moved; \
         other records are unaffected"
    )]
    Integrity {
        /// The record id.
        id: i64,
    },
    /// A wrapped data key does not unwrap (met while rotating keys). The uid's records cannot
    /// be read either; erasing the uid is the way out.
    #[error("the wrapped data key of uid {uid} failed its integrity check")]
    DataKeyIntegrity {
        /// The uid whose key is damaged.
        uid: u32,
    },
    /// No such record for this caller (a record of another uid is reported the same way).
    #[error("record {id} not found")]
    NotFound {
        /// The record id asked for.
        id: i64,
    },
    /// SQLite reported SQLITE_FULL: the disk (or a configured size limit) is full. The
    /// transaction was rolled back; the database is intact and writes work again once there is
    /// space.
    #[error(
        "storage full: the database could not grow (no space left on its file system); \
         the write was rolled back, free some space and retry"
    )]
    StorageFull,
    /// The master key given is not one this database opens with.
    #[error(
        "wrong master key: this database opens with master key id {expected}, but the key \
         given has id {given}{note}; point --key-file or the `inhouse-master-key` systemd \
         credential at the key with id {expected}"
    )]
    WrongKey {
        /// The key id (or, during a rotation, "X or Y") the database expects.
        expected: String,
        /// The id of the key that was given.
        given: KeyId,
        /// Extra detail, empty or starting with "; ".
        note: String,
    },
    /// The database schema is newer than this binary knows.
    #[error(
        "the database has schema version {found}, newer than this build of inhouse ({}) \
         supports (up to {supported}); {}, or restore a backup made by this version",
        env!("CARGO_PKG_VERSION"),
        needs_hint(.needs)
    )]
    TooNew {
        /// `PRAGMA user_version` of the file.
        found: u32,
        /// The newest schema version this binary has migrations for.
        supported: u32,
        /// The release that last migrated the file, from its `schema_history` (schema 6+).
        needs: Option<String>,
    },
    /// A key rotation request that conflicts with the rotation state.
    #[error("key rotation: {0}")]
    Rotation(String),
    /// The caller passed something the store does not accept (e.g. detail that is not JSON).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A crypto failure other than an integrity failure of a record (e.g. the RNG failed).
    #[error(transparent)]
    Crypto(CryptoError),
    /// Any other SQLite error.
    #[error("database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// A file-system error outside SQLite (creating the database file, writing an export).
    #[error("i/o error: {0}")]
    Io(#[source] std::io::Error),
    /// The storage thread has stopped (the handle was closed, or the thread panicked).
    #[error("the storage thread is not running")]
    Closed,
}

impl StoreError {
    /// A stable machine-readable name, for the JSON `type` of API errors and for metrics.
    /// The API layer maps these to HTTP statuses in one place.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Integrity { .. } | StoreError::DataKeyIntegrity { .. } => "integrity_error",
            StoreError::NotFound { .. } => "not_found",
            StoreError::StorageFull => "storage_full",
            StoreError::WrongKey { .. } => "wrong_key",
            StoreError::TooNew { .. } => "too_new",
            StoreError::Rotation(_) => "rotation_conflict",
            StoreError::InvalidInput(_) => "invalid_input",
            StoreError::Crypto(e) => e.kind(),
            StoreError::Sqlite(_) | StoreError::Io(_) => "storage_error",
            StoreError::Closed => "unavailable",
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::StorageFull,
            _ => StoreError::Sqlite(e),
        }
    }
}

impl From<CryptoError> for StoreError {
    fn from(e: CryptoError) -> StoreError {
        StoreError::Crypto(e)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        // ENOSPC outside SQLite (e.g. creating the database file) is the same condition.
        if e.kind() == std::io::ErrorKind::StorageFull {
            StoreError::StorageFull
        } else {
            StoreError::Io(e)
        }
    }
}

/// What [`StoreError::TooNew`] tells the admin to install.
fn needs_hint(needs: &Option<String>) -> String {
    match needs {
        Some(v) => format!("it was written by inhouse {v}: install inhouse {v} or newer"),
        None => "run the newer inhouse that wrote it".to_string(),
    }
}
