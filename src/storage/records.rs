//! Request history: writing sealed records, listing, reading and deleting one's own, erasing a
//! uid, and retention.

use rusqlite::{params, OptionalExtension, Row};

use super::keys::{load_dek, load_or_create_dek, meta_set};
use super::{audit, write_tx, EraseReport, NewRecord, Record, RecordMeta, RequestStatus};
use super::{Store, StoreError, MAX_HISTORY_PAGE};
use crate::crypto::{self, DataKey, FieldContext};

// AAD labels of the two sealed columns. They are part of the on-disk format (see
// crypto::field): keep them even if the SQL columns are ever renamed.
const TABLE: &str = "requests";
const PROMPT: &str = "prompt";
const RESPONSE: &str = "response";

/// Rows deleted per transaction by retention, so a large purge never holds the write lock for
/// long (requests keep being recorded between batches).
const PURGE_BATCH: i64 = 1000;

/// Prefix of the `meta` key that marks an erase whose rows are not purged yet.
const ERASE_MARKER: &str = "erase_pending:";

/// Prefix of an erase marker's value: the largest request id of the uid when its key was
/// destroyed (`max_id:<id>`, 0 if it had none). Only rows up to that id are purged, so records
/// the uid writes under a new data key after an interrupted erase survive its completion.
/// Markers of older versions hold a timestamp instead; they purge every row of the uid.
const ERASE_MAX_ID: &str = "max_id:";

fn erase_marker(uid: u32) -> String {
    format!("{ERASE_MARKER}{uid}")
}

/// The largest request id an erase marker value covers; `None` for a marker of the older
/// format (a timestamp), which covers every row of the uid.
fn erase_marker_max_id(value: &str) -> Option<i64> {
    value.strip_prefix(ERASE_MAX_ID)?.parse().ok()
}

const META_COLUMNS: &str = "id, uid, model, params_json, created_at, finished_at, \
                            prompt_tokens, completion_tokens, status";

fn ctx(column: &'static str, id: i64, uid: u32) -> FieldContext<'static> {
    FieldContext {
        table: TABLE,
        column,
        row_id: id,
        owner_uid: uid,
    }
}

fn meta_from_row(r: &Row<'_>) -> rusqlite::Result<RecordMeta> {
    let status: String = r.get(8)?;
    Ok(RecordMeta {
        id: r.get(0)?,
        uid: r.get(1)?,
        model: r.get(2)?,
        params_json: r.get(3)?,
        created_at: r.get(4)?,
        finished_at: r.get(5)?,
        prompt_tokens: r.get(6)?,
        completion_tokens: r.get(7)?,
        status: RequestStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                8,
                rusqlite::types::Type::Text,
                "unknown request status".into(),
            )
        })?,
    })
}

fn open_text(dek: &DataKey, field: &FieldContext<'_>, sealed: &[u8]) -> Result<String, StoreError> {
    let integrity = || StoreError::Integrity { id: field.row_id };
    let plain = crypto::open(dek, field, sealed).map_err(|_| integrity())?;
    String::from_utf8(plain).map_err(|_| integrity())
}

impl Store {
    /// Stores one finished request and returns its id.
    ///
    /// One transaction: create the uid's data key if this is its first record, insert the
    /// metadata with empty placeholder ciphertexts to obtain the row id (`AUTOINCREMENT`, so an
    /// id is never reused), seal prompt and response with that id in their AAD, and update the
    /// row. A reader never sees the placeholders (they are not committed), and a failure rolls
    /// back everything. With `synchronous=FULL`, once this returns `Ok` the record survives a
    /// crash or power loss.
    pub fn record_request(&mut self, rec: &NewRecord) -> Result<i64, StoreError> {
        self.insert_record(rec, false, None)
    }

    /// [`Store::record_request`] plus the request's `request` audit event (metadata only: id,
    /// model, status, token counts) in the same transaction, so that both land with one fsync
    /// and neither exists without the other.
    pub fn record_request_audited(&mut self, rec: &NewRecord) -> Result<i64, StoreError> {
        self.insert_record(rec, true, None)
    }

    /// [`Store::record_request_audited`] for a stored Responses API response: the record, its
    /// public id in `responses` and the `response.create` (or `response.continue`) audit event
    /// land in one transaction, so an id never exists without its sealed record.
    pub fn record_response(
        &mut self,
        rec: &NewRecord,
        link: &super::ResponseLink,
    ) -> Result<i64, StoreError> {
        self.insert_record(rec, true, Some(link))
    }

    pub(super) fn insert_record(
        &mut self,
        rec: &NewRecord,
        audited: bool,
        link: Option<&super::ResponseLink>,
    ) -> Result<i64, StoreError> {
        if serde_json::from_str::<serde::de::IgnoredAny>(&rec.params_json).is_err() {
            return Err(StoreError::InvalidInput(
                "params_json is not valid JSON".into(),
            ));
        }
        let tx = write_tx(&mut self.conn)?;
        let dek = load_or_create_dek(&tx, &self.keys, rec.uid)?;
        tx.execute(
            "INSERT INTO requests (uid, model, params_json, created_at, finished_at,
                 prompt_tokens, completion_tokens, status, prompt_ct, response_ct)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, x'', x'')",
            params![
                rec.uid,
                rec.model,
                rec.params_json,
                rec.created_at,
                rec.finished_at,
                rec.prompt_tokens,
                rec.completion_tokens,
                rec.status.as_str()
            ],
        )?;
        let id = tx.last_insert_rowid();
        let prompt_ct = crypto::seal(&dek, &ctx(PROMPT, id, rec.uid), rec.prompt_text.as_bytes())?;
        let response_ct = crypto::seal(
            &dek,
            &ctx(RESPONSE, id, rec.uid),
            rec.response_text.as_bytes(),
        )?;
        tx.execute(
            "UPDATE requests SET prompt_ct = ?1, response_ct = ?2 WHERE id = ?3",
            params![prompt_ct, response_ct, id],
        )?;
        if audited {
            let detail = serde_json::json!({"id": id, "model": rec.model,
                "status": rec.status.as_str(), "prompt_tokens": rec.prompt_tokens,
                "completion_tokens": rec.completion_tokens});
            let key = self.keys.active.audit_key();
            super::audit::append_in(
                &tx,
                &key,
                super::audit_kinds::REQUEST,
                Some(rec.uid),
                &detail.to_string(),
            )?;
        }
        if let Some(link) = link {
            super::responses::link_in(&tx, &self.keys.active.audit_key(), rec, id, link)?;
        }
        crate::fault::point("record.before_commit");
        tx.commit()?;
        crate::fault::point("record.after_commit");
        Ok(id)
    }

    /// One page of `uid`'s history, newest first: records with `id < before_id` (all, when
    /// `None`), at most `limit` of them (capped at [`MAX_HISTORY_PAGE`]). Only metadata: no
    /// decryption, so a damaged record still lists. Pass the last id of a page as `before_id`
    /// to get the next one.
    pub fn list_history(
        &self,
        uid: u32,
        limit: u32,
        before_id: Option<i64>,
    ) -> Result<Vec<RecordMeta>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {META_COLUMNS} FROM requests WHERE uid = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![
                uid,
                before_id.unwrap_or(i64::MAX),
                limit.min(MAX_HISTORY_PAGE)
            ],
            meta_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One record of `uid`, decrypted. A record of another uid is [`StoreError::NotFound`], as
    /// is one whose uid was erased; one whose ciphertext (or whose owner's wrapped data key)
    /// does not open is [`StoreError::Integrity`] for that id only.
    pub fn get_history(&self, uid: u32, id: i64) -> Result<Record, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!(
                    "SELECT {META_COLUMNS}, prompt_ct, response_ct FROM requests
                     WHERE id = ?1 AND uid = ?2"
                ),
                params![id, uid],
                |r| {
                    Ok((
                        meta_from_row(r)?,
                        r.get::<_, Vec<u8>>(9)?,
                        r.get::<_, Vec<u8>>(10)?,
                    ))
                },
            )
            .optional()?;
        let Some((meta, prompt_ct, response_ct)) = row else {
            return Err(StoreError::NotFound { id });
        };
        let dek = match load_dek(&self.conn, &self.keys, uid) {
            Ok(Some(dek)) => dek,
            // Rows left over from an interrupted erase: the key is gone, so is the record.
            Ok(None) => return Err(StoreError::NotFound { id }),
            Err(StoreError::DataKeyIntegrity { .. }) => return Err(StoreError::Integrity { id }),
            Err(e) => return Err(e),
        };
        Ok(Record {
            prompt_text: open_text(&dek, &ctx(PROMPT, id, uid), &prompt_ct)?,
            response_text: open_text(&dek, &ctx(RESPONSE, id, uid), &response_ct)?,
            meta,
        })
    }

    /// Deletes one record of `uid` ([`StoreError::NotFound`] if it has no such record). With
    /// `secure_delete` the row's bytes are zeroed in the database file, and the WAL is then
    /// truncated so its old frames do not keep them either.
    pub fn delete_history(&mut self, uid: u32, id: i64) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "DELETE FROM requests WHERE id = ?1 AND uid = ?2",
            params![id, uid],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound { id });
        }
        // Best effort: the delete is committed either way; a checkpoint that could not run now
        // runs with a later one.
        let _ = self.checkpoint_truncate();
        Ok(())
    }

    /// Erases everything of `uid` by crypto-shredding.
    ///
    /// 1. Destroys the uid's wrapped data key and leaves an `erase_pending:<uid>` marker in
    ///    `meta` holding the uid's largest request id, in one transaction with an audit event:
    ///    from then on the uid's ciphertexts cannot be decrypted by anyone, master key or not,
    ///    even if purging the rows fails.
    /// 2. Purges its request rows up to that id and the marker (another transaction, another
    ///    audit event). If this step fails or the process dies before it, [`Store::open`] finds
    ///    the marker and finishes; records the uid wrote meanwhile (under a new data key) have
    ///    larger ids and are kept.
    /// 3. Checkpoints and truncates the WAL. With `secure_delete=ON` the deleted cells are
    ///    zeroed in the database file, so no wrapped key bytes remain in the file or the WAL.
    ///
    /// Idempotent. Audit rows naming the uid are kept (the chain cannot lose rows; they hold
    /// metadata only).
    pub fn erase_uid(&mut self, uid: u32) -> Result<EraseReport, StoreError> {
        let tx = write_tx(&mut self.conn)?;
        let keys_destroyed = tx.execute("DELETE FROM users_keys WHERE uid = ?1", [uid])? as u64;
        let max_id: i64 = tx.query_row(
            "SELECT coalesce(max(id), 0) FROM requests WHERE uid = ?1",
            [uid],
            |r| r.get(0),
        )?;
        meta_set(&tx, &erase_marker(uid), &format!("{ERASE_MAX_ID}{max_id}"))?;
        // Files and collections go with the key, in this transaction: they are few rows
        // (chunks follow by cascade), and none of them may outlive the key even briefly.
        let knowledge_deleted = super::knowledge::erase_in(&tx, uid)?;
        let detail = serde_json::json!({ "uid": uid, "keys_destroyed": keys_destroyed,
            "knowledge_deleted": knowledge_deleted });
        audit::append_in(
            &tx,
            &self.keys.active.audit_key(),
            audit::kinds::DATA_KEY_DESTROYED,
            None,
            &detail.to_string(),
        )?;
        crate::fault::point("erase.before_commit");
        tx.commit()?;
        crate::fault::point("erase.after_key_destroyed");

        let requests_deleted = self.purge_uid_rows(uid)?;
        crate::fault::point("erase.after_rows_purged");
        // The erase itself is committed; a failed checkpoint only means the WAL is truncated
        // later, which the report says.
        let wal_truncated = self.checkpoint_truncate().unwrap_or(false);
        Ok(EraseReport {
            keys_destroyed,
            requests_deleted,
            knowledge_deleted,
            wal_truncated,
        })
    }

    /// Second step of an erase: the rows of a uid whose key is already destroyed, up to the
    /// largest id its `erase_pending` marker names (every row of the uid for a marker of the
    /// older format, or none at all).
    fn purge_uid_rows(&mut self, uid: u32) -> Result<u64, StoreError> {
        let tx = write_tx(&mut self.conn)?;
        let marker: Option<String> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [erase_marker(uid)],
                |r| r.get(0),
            )
            .optional()?;
        let max_id = marker
            .as_deref()
            .and_then(erase_marker_max_id)
            .unwrap_or(i64::MAX);
        let requests_deleted = tx.execute(
            "DELETE FROM requests WHERE uid = ?1 AND id <= ?2",
            params![uid, max_id],
        )? as u64;
        tx.execute("DELETE FROM meta WHERE key = ?1", [erase_marker(uid)])?;
        let detail = serde_json::json!({ "uid": uid, "requests_deleted": requests_deleted });
        audit::append_in(
            &tx,
            &self.keys.active.audit_key(),
            audit::kinds::UID_ERASED,
            None,
            &detail.to_string(),
        )?;
        tx.commit()?;
        Ok(requests_deleted)
    }

    /// Finishes erasures interrupted after their first step (called by [`Store::open`]).
    pub(super) fn finish_interrupted_erasures(&mut self) -> Result<(), StoreError> {
        let uids: Vec<u32> = {
            let mut stmt = self
                .conn
                .prepare("SELECT key FROM meta WHERE key LIKE 'erase_pending:%'")?;
            let keys = stmt.query_map([], |r| r.get::<_, String>(0))?;
            keys.collect::<Result<Vec<_>, _>>()?
                .iter()
                .filter_map(|k| k.strip_prefix(ERASE_MARKER)?.parse().ok())
                .collect()
        };
        for uid in uids {
            self.purge_uid_rows(uid)?;
        }
        Ok(())
    }

    /// Deletes every record created before `cutoff_unix` (the `retention-days` job), in
    /// batches of 1000 rows per transaction, each with its own `retention_purge` audit event
    /// (detail: the cutoff and the rows deleted by that batch) in the same transaction, so no
    /// row is ever deleted without an event saying so, whatever fails or stops in between. An
    /// empty batch writes nothing. Then truncates the WAL (when anything was deleted). Returns
    /// how many records went.
    pub fn purge_older_than(&mut self, cutoff_unix: i64) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let tx = write_tx(&mut self.conn)?;
            let n = tx.execute(
                "DELETE FROM requests WHERE id IN
                     (SELECT id FROM requests WHERE created_at < ?1 LIMIT ?2)",
                params![cutoff_unix, PURGE_BATCH],
            )?;
            if n == 0 {
                // Nothing to delete, nothing to log: the empty transaction just rolls back.
                break;
            }
            let detail = serde_json::json!({ "cutoff": cutoff_unix, "deleted": n });
            audit::append_in(
                &tx,
                &self.keys.active.audit_key(),
                audit::kinds::RETENTION_PURGE,
                None,
                &detail.to_string(),
            )?;
            crate::fault::point("purge.before_commit");
            tx.commit()?;
            crate::fault::point("purge.after_batch");
            total += n as u64;
            if (n as i64) < PURGE_BATCH {
                break;
            }
        }
        if total > 0 {
            // Best effort: the purge is committed either way; a checkpoint that could not run
            // now runs with a later one.
            let _ = self.checkpoint_truncate();
        }
        Ok(total)
    }

    /// When the oldest record was created (for the retention job's scheduling), if any.
    pub fn oldest_record_time(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT min(created_at) FROM requests", [], |r| r.get(0))?)
    }
}
