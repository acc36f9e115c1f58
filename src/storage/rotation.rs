//! Online master-key rotation.
//!
//! 1. **Begin** (one transaction): store a key-check record for the new key and a
//!    `key_rotation` row holding the new master key wrapped under the old KEK and the old one
//!    wrapped under the new KEK, and append a `key_rotation_started` audit event. From here on
//!    either key opens the store (it unwraps the other from that row), and new data keys are
//!    wrapped under the new key.
//! 2. **Batches** (one transaction each): unwrap up to N data keys still under the old key and
//!    rewrap them under the new one. Progress is persistent by construction, since each row's
//!    `key_id` says which key wraps it; a crash loses at most the batch in flight, and resuming
//!    simply continues with the rows still naming the old key. Requests are served between
//!    batches ([`super::StoreHandle::rotate_key`] queues each batch as its own job).
//! 3. **Finish** (one transaction, when no data key uses the old key): append `key_rotated`
//!    (the last row MACed with the old audit key), archive the old audit key wrapped under the
//!    new KEK in `key_history` (and rewrap older archived audit keys too), delete the old
//!    key-check record and the `key_rotation` row, and make the new key active. Then the WAL is
//!    truncated so the cross-wrapped keys leave no trace (`secure_delete` zeroes them in the
//!    main file). From then on only the new key opens the store; the old one gets a
//!    [`StoreError::WrongKey`] saying it was retired and by which key.
//!
//! The audit chain is not re-MACed: rows keep the MAC of the key that was active when they
//! were written (their `key_id` column says which), and the chain runs on unbroken across the
//! switch (the first row under the new key has the `key_rotated` row's MAC as `prev_mac`).
//! Verification unwraps the archived audit keys with the current KEK.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::keys::{insert_key_check, key_id_col, meta_set};
use super::{audit, now_unix, write_tx, Store, StoreError};
use crate::crypto::{KeyId, MasterKey};

/// Data keys rewrapped per transaction by [`Store::resume_rotation`].
pub const ROTATION_BATCH: usize = 256;

/// Where a rotation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RotationStatus {
    /// The key being retired.
    pub old_key_id: KeyId,
    /// The key being rotated to.
    pub new_key_id: KeyId,
    /// Data keys rewrapped so far (over all runs, crashes included).
    pub rewrapped: u64,
    /// Data keys still wrapped under the old key.
    pub remaining: u64,
    /// True once the rotation is complete and the new key is the only one.
    pub finished: bool,
}

/// The persisted `key_rotation` row.
pub(super) struct RotationRow {
    pub(super) old: KeyId,
    pub(super) new: KeyId,
    pub(super) new_master_by_old: Vec<u8>,
    pub(super) old_master_by_new: Vec<u8>,
    pub(super) rewrapped: u64,
}

pub(super) fn load_row(conn: &Connection) -> Result<Option<RotationRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT old_key_id, new_key_id, new_master_by_old, old_master_by_new, rewrapped
             FROM key_rotation WHERE id = 1",
            [],
            |r| {
                Ok(RotationRow {
                    old: key_id_col(r, 0)?,
                    new: key_id_col(r, 1)?,
                    new_master_by_old: r.get(2)?,
                    old_master_by_new: r.get(3)?,
                    rewrapped: r.get::<_, i64>(4)? as u64,
                })
            },
        )
        .optional()?)
}

fn count_wrapped_by(conn: &Connection, key: KeyId) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM users_keys WHERE key_id = ?1",
        [key.to_hex()],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

impl Store {
    /// Rotates to `new_master` completely: [`Store::begin_rotation`], then every batch. If it
    /// fails part-way, the store (and a reopened one, with either key) knows the rotation is in
    /// progress; call [`Store::resume_rotation`] (or this again with the same key) to finish.
    pub fn rotate_key(&mut self, new_master: MasterKey) -> Result<RotationStatus, StoreError> {
        self.begin_rotation(new_master)?;
        self.resume_rotation()
    }

    /// Starts a rotation to `new_master` (see the module docs), or, if a rotation to that same
    /// key is already in progress, just reports it. Refuses the active key, a retired key, and
    /// a different key while another rotation is unfinished.
    pub fn begin_rotation(&mut self, new_master: MasterKey) -> Result<RotationStatus, StoreError> {
        if let Some(incoming) = &self.keys.incoming {
            if incoming.id() == new_master.id() {
                return self.current_rotation();
            }
            return Err(StoreError::Rotation(format!(
                "a rotation from {} to {} is in progress; resume it before starting another",
                self.keys.active.id(),
                incoming.id()
            )));
        }
        let old_id = self.keys.active.id();
        if new_master.id() == old_id {
            return Err(StoreError::Rotation(format!(
                "key {old_id} is already the active key; generate a new key to rotate to"
            )));
        }
        let tx = write_tx(&mut self.conn)?;
        let retired: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM key_history WHERE key_id = ?1)",
            [new_master.id().to_hex()],
            |r| r.get(0),
        )?;
        if retired {
            return Err(StoreError::Rotation(format!(
                "key {} was retired by an earlier rotation and cannot become active again",
                new_master.id()
            )));
        }
        let old = &self.keys.active;
        insert_key_check(&tx, &new_master)?;
        tx.execute(
            "INSERT INTO key_rotation
                 (id, old_key_id, new_key_id, started_at, new_master_by_old, old_master_by_new)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![
                old_id.to_hex(),
                new_master.id().to_hex(),
                now_unix(),
                old.kek().wrap_master(&new_master)?,
                new_master.kek().wrap_master(old)?,
            ],
        )?;
        let detail = serde_json::json!({ "old_key_id": old_id, "new_key_id": new_master.id() });
        audit::append_in(
            &tx,
            &old.audit_key(),
            audit::kinds::KEY_ROTATION_STARTED,
            None,
            &detail.to_string(),
        )?;
        tx.commit()?;
        crate::fault::point("rotate.after_begin");
        self.keys.incoming = Some(new_master);
        self.current_rotation()
    }

    /// Rewraps at most `batch_size` data keys in one transaction; finishes the rotation when
    /// none remain. Errors if no rotation is in progress.
    pub fn rotation_step(&mut self, batch_size: usize) -> Result<RotationStatus, StoreError> {
        let Some(new) = &self.keys.incoming else {
            return Err(StoreError::Rotation(
                "no key rotation is in progress".into(),
            ));
        };
        #[cfg(test)]
        if let Some(left) = self.fail_rotation_after.as_mut() {
            if *left == 0 {
                return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some("injected failure (test)".into()),
                )));
            }
            *left -= 1;
        }
        let (old_kek, new_kek) = (self.keys.active.kek(), new.kek());
        let tx = write_tx(&mut self.conn)?;
        let batch: Vec<(u32, Vec<u8>)> = {
            let mut stmt = tx.prepare(
                "SELECT uid, wrapped_dek FROM users_keys WHERE key_id = ?1 ORDER BY uid LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![old_kek.id().to_hex(), batch_size.max(1) as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            rows.collect::<Result<_, _>>()?
        };
        for (uid, wrapped) in &batch {
            let dek = old_kek
                .unwrap_dek(*uid, wrapped)
                .map_err(|_| StoreError::DataKeyIntegrity { uid: *uid })?;
            tx.execute(
                "UPDATE users_keys SET key_id = ?1, wrapped_dek = ?2 WHERE uid = ?3",
                params![new_kek.id().to_hex(), new_kek.wrap_dek(*uid, &dek)?, uid],
            )?;
        }
        tx.execute(
            "UPDATE key_rotation SET rewrapped = rewrapped + ?1 WHERE id = 1",
            [batch.len() as i64],
        )?;
        crate::fault::point("rotate.before_batch_commit");
        tx.commit()?;
        crate::fault::point("rotate.after_batch");
        if count_wrapped_by(&self.conn, old_kek.id())? == 0 {
            return self.finish_rotation();
        }
        self.current_rotation()
    }

    /// Runs batches of [`ROTATION_BATCH`] until the rotation in progress is finished.
    pub fn resume_rotation(&mut self) -> Result<RotationStatus, StoreError> {
        loop {
            let status = self.rotation_step(ROTATION_BATCH)?;
            if status.finished {
                return Ok(status);
            }
        }
    }

    /// The rotation in progress, if any (the daemon checks this at start-up and resumes it).
    pub fn rotation_status(&self) -> Result<Option<RotationStatus>, StoreError> {
        if self.keys.incoming.is_none() {
            return Ok(None);
        }
        self.current_rotation().map(Some)
    }

    fn current_rotation(&self) -> Result<RotationStatus, StoreError> {
        let row = load_row(&self.conn)?
            .ok_or_else(|| StoreError::Rotation("the rotation record is missing".into()))?;
        Ok(RotationStatus {
            old_key_id: row.old,
            new_key_id: row.new,
            rewrapped: row.rewrapped,
            remaining: count_wrapped_by(&self.conn, row.old)?,
            finished: false,
        })
    }

    fn finish_rotation(&mut self) -> Result<RotationStatus, StoreError> {
        let Some(new) = &self.keys.incoming else {
            return Err(StoreError::Rotation(
                "no key rotation is in progress".into(),
            ));
        };
        let old = &self.keys.active;
        let (old_id, new_id) = (old.id(), new.id());
        let new_kek = new.kek();
        let tx = write_tx(&mut self.conn)?;
        let row = load_row(&tx)?
            .ok_or_else(|| StoreError::Rotation("the rotation record is missing".into()))?;
        let detail = serde_json::json!({
            "old_key_id": old_id,
            "new_key_id": new_id,
            "rewrapped": row.rewrapped,
        });
        let last_seq = audit::append_in(
            &tx,
            &old.audit_key(),
            audit::kinds::KEY_ROTATED,
            None,
            &detail.to_string(),
        )?;
        // Archived audit keys of earlier rotations are wrapped under the KEK of the key being
        // retired now; move them under the new KEK so the current key alone verifies the chain.
        let archived: Vec<(KeyId, Vec<u8>, KeyId)> = {
            let mut stmt =
                tx.prepare("SELECT key_id, audit_key_wrapped, wrapped_by FROM key_history")?;
            let rows = stmt.query_map([], |r| {
                Ok((key_id_col(r, 0)?, r.get(1)?, key_id_col(r, 2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (key_id, wrapped, wrapped_by) in archived {
            let audit_key = self
                .keys
                .kek_for(wrapped_by)
                .and_then(|kek| kek.unwrap_audit_key(key_id, &wrapped).ok())
                .ok_or_else(|| {
                    StoreError::Rotation(format!(
                        "the archived audit key of retired key {key_id} does not unwrap \
                         (key_history was modified)"
                    ))
                })?;
            tx.execute(
                "UPDATE key_history SET audit_key_wrapped = ?1, wrapped_by = ?2 WHERE key_id = ?3",
                params![
                    new_kek.wrap_audit_key(&audit_key)?,
                    new_id.to_hex(),
                    key_id.to_hex()
                ],
            )?;
        }
        tx.execute(
            "INSERT INTO key_history
                 (key_id, retired_at, successor_key_id, audit_key_wrapped, wrapped_by, last_audit_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                old_id.to_hex(),
                now_unix(),
                new_id.to_hex(),
                new_kek.wrap_audit_key(&old.audit_key())?,
                new_id.to_hex(),
                last_seq
            ],
        )?;
        tx.execute("DELETE FROM key_check WHERE key_id = ?1", [old_id.to_hex()])?;
        tx.execute("DELETE FROM key_rotation WHERE id = 1", [])?;
        meta_set(&tx, "active_key_id", &new_id.to_hex())?;
        tx.commit()?;

        // The old master key is dropped (zeroized) here.
        self.keys.active = self.keys.incoming.take().expect("checked above");
        // The rotation is committed; a checkpoint that fails now (or is blocked by a reader)
        // only leaves the cross-wrapped keys in the WAL until the next one, which runs at the
        // latest when the store is next opened. Not a reason to report the rotation as failed.
        match self.checkpoint_truncate() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "WAL not truncated after the key rotation (a reader blocked the checkpoint); \
                 the next checkpoint will"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "WAL not truncated after the key rotation; the next checkpoint will"
            ),
        }
        Ok(RotationStatus {
            old_key_id: old_id,
            new_key_id: new_id,
            rewrapped: row.rewrapped,
            remaining: 0,
            finished: true,
        })
    }
}
