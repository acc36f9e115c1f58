//! The key check at open, and per-user data keys.
//!
//! The key check: `key_check` holds, per master key that may open the database, a known
//! constant sealed under that key's key-check sub-key. `meta.active_key_id` names the active
//! key. Opening with a key that is neither the active one nor (during a rotation) the incoming
//! one, or whose check record does not open, is [`StoreError::WrongKey`]; the message names the
//! expected key id and the given one, never key bytes.
//!
//! Data keys: one random 32-byte key per uid, created on the uid's first record, wrapped by the
//! KEK of the newest master key (the incoming one during a rotation, so it never needs
//! rewrapping) and stored with that key's id.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{audit, now_unix, rotation, write_tx, StoreError};
use crate::crypto::{DataKey, Kek, KeyId, MasterKey};

/// The master keys a store holds.
pub(super) struct KeyRing {
    /// Wraps new data keys outside a rotation and MACs new audit rows. During a rotation this is
    /// still the *old* key; it is replaced when the last batch is rewrapped.
    pub(super) active: MasterKey,
    /// The key being rotated to, while a rotation is in progress.
    pub(super) incoming: Option<MasterKey>,
}

impl KeyRing {
    /// The KEK of the master key with id `id`, if this ring holds it.
    pub(super) fn kek_for(&self, id: KeyId) -> Option<Kek> {
        [Some(&self.active), self.incoming.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id() == id)
            .map(MasterKey::kek)
    }

    /// The key new data keys are wrapped under.
    pub(super) fn newest(&self) -> &MasterKey {
        self.incoming.as_ref().unwrap_or(&self.active)
    }
}

/// Reads a key id column (stored as 16 hex characters).
pub(super) fn key_id_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<KeyId> {
    let s: String = row.get(idx)?;
    KeyId::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            "malformed key id".into(),
        )
    })
}

pub(super) fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

pub(super) fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Stores a fresh key-check record for `key`.
pub(super) fn insert_key_check(conn: &Connection, key: &MasterKey) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO key_check (key_id, check_ct, created_at) VALUES (?1, ?2, ?3)",
        params![
            key.id().to_hex(),
            key.key_check_key().seal_check()?,
            now_unix()
        ],
    )?;
    Ok(())
}

/// Decides whether `given` opens this database, and with which keys. See [`super::Store::open`].
pub(super) fn unlock(conn: &mut Connection, given: MasterKey) -> Result<KeyRing, StoreError> {
    if meta_get(conn, "active_key_id")?.is_none() {
        let tx = write_tx(conn)?;
        // Checked again under the write lock, in case another process initialized it meanwhile.
        if meta_get(&tx, "active_key_id")?.is_none() {
            insert_key_check(&tx, &given)?;
            meta_set(&tx, "active_key_id", &given.id().to_hex())?;
            meta_set(&tx, "created_at", &now_unix().to_string())?;
            let detail = serde_json::json!({ "key_id": given.id() }).to_string();
            audit::append_in(
                &tx,
                &given.audit_key(),
                audit::kinds::STORE_CREATED,
                None,
                &detail,
            )?;
            tx.commit()?;
            return Ok(KeyRing {
                active: given,
                incoming: None,
            });
        }
    }
    let active_hex = meta_get(conn, "active_key_id")?.unwrap_or_default();
    let active_id = KeyId::parse(&active_hex)
        .ok_or_else(|| StoreError::Io(std::io::Error::other("meta.active_key_id is malformed")))?;

    if let Some(rot) = rotation::load_row(conn)? {
        // Mid-rotation: either key opens, and recovers the other from the rotation row.
        let expected = format!("{} or {}", rot.old, rot.new);
        let wrong = || StoreError::WrongKey {
            expected: expected.clone(),
            given: given.id(),
            note: "; a key rotation is in progress and either of those two keys opens the database"
                .into(),
        };
        let damaged = |_| StoreError::WrongKey {
            expected: expected.clone(),
            given: given.id(),
            note: "; the key is accepted but the rotation record does not open with it (it was \
                   modified); try the other key"
                .into(),
        };
        return if given.id() == rot.old {
            verify_check(conn, &given)?;
            let incoming = given
                .kek()
                .unwrap_master(rot.new, &rot.new_master_by_old)
                .map_err(damaged)?;
            Ok(KeyRing {
                active: given,
                incoming: Some(incoming),
            })
        } else if given.id() == rot.new {
            verify_check(conn, &given)?;
            let old = given
                .kek()
                .unwrap_master(rot.old, &rot.old_master_by_new)
                .map_err(damaged)?;
            Ok(KeyRing {
                active: old,
                incoming: Some(given),
            })
        } else {
            Err(wrong())
        };
    }

    if given.id() != active_id {
        let retired: Option<(i64, String)> = conn
            .query_row(
                "SELECT retired_at, successor_key_id FROM key_history WHERE key_id = ?1",
                [given.id().to_hex()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let note = match retired {
            Some((at, successor)) => format!(
                "; key {} was retired by a key rotation at {} (Unix time) and replaced by {}",
                given.id(),
                at,
                successor
            ),
            None => String::new(),
        };
        return Err(StoreError::WrongKey {
            expected: active_id.to_hex(),
            given: given.id(),
            note,
        });
    }
    verify_check(conn, &given)?;
    Ok(KeyRing {
        active: given,
        incoming: None,
    })
}

/// The key id matches; now prove the key itself opens its key-check record.
fn verify_check(conn: &Connection, key: &MasterKey) -> Result<(), StoreError> {
    let record: Option<Vec<u8>> = conn
        .query_row(
            "SELECT check_ct FROM key_check WHERE key_id = ?1",
            [key.id().to_hex()],
            |r| r.get(0),
        )
        .optional()?;
    let note = match record {
        Some(ct) if key.key_check_key().verify(&ct) => return Ok(()),
        Some(_) => {
            "; the key id matches but the key-check record does not open with this key \
                    (the record was modified, or two keys share an id)"
        }
        None => "; the database has no key-check record for this key (it was removed)",
    };
    Err(StoreError::WrongKey {
        expected: key.id().to_hex(),
        given: key.id(),
        note: note.to_string(),
    })
}

/// The unwrapped data key of `uid`, or `None` if the uid has none (never wrote, or erased).
pub(super) fn load_dek(
    conn: &Connection,
    keys: &KeyRing,
    uid: u32,
) -> Result<Option<DataKey>, StoreError> {
    let row = conn
        .query_row(
            "SELECT key_id, wrapped_dek FROM users_keys WHERE uid = ?1",
            [uid],
            |r| Ok((key_id_col(r, 0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?;
    let Some((key_id, wrapped)) = row else {
        return Ok(None);
    };
    // A key id this store does not hold means the row was tampered with (or refers to a retired
    // key, which the rotation would never leave behind): an integrity failure either way.
    let kek = keys
        .kek_for(key_id)
        .ok_or(StoreError::DataKeyIntegrity { uid })?;
    kek.unwrap_dek(uid, &wrapped)
        .map(Some)
        .map_err(|_| StoreError::DataKeyIntegrity { uid })
}

/// The data key of `uid`, creating and storing it on the uid's first use. Call inside the
/// write transaction that uses it, so a new key and its first record commit together.
pub(super) fn load_or_create_dek(
    conn: &Connection,
    keys: &KeyRing,
    uid: u32,
) -> Result<DataKey, StoreError> {
    if let Some(dek) = load_dek(conn, keys, uid)? {
        return Ok(dek);
    }
    let dek = DataKey::generate()?;
    let kek = keys.newest().kek();
    conn.execute(
        "INSERT INTO users_keys (uid, key_id, wrapped_dek, created) VALUES (?1, ?2, ?3, ?4)",
        params![uid, kek.id().to_hex(), kek.wrap_dek(uid, &dek)?, now_unix()],
    )?;
    Ok(dek)
}
