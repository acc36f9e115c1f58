//! Stored Responses API responses: a public id (`resp_…`) per request record, per owner. The
//! sealed conversation is the record itself, so history, `history rm`, retention and erasure
//! govern it; the `responses` row follows its record through `ON DELETE CASCADE`.

use rusqlite::{params, Connection, OptionalExtension};

use super::{audit, audit_kinds, write_tx, NewRecord, Store, StoreError};
use crate::crypto::AuditKey;

/// What makes a request record a stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseLink {
    /// The public id.
    pub id: String,
    /// The stored response it continues (the owner's, checked by the caller).
    pub previous_id: Option<String>,
    /// How many input items the request gave (for the audit event).
    pub input_items: usize,
}

/// A stored response as its owner finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The request record holding the sealed conversation.
    pub request_id: i64,
    /// The response this one continued, if any.
    pub previous_id: Option<String>,
    /// When its record was created (Unix seconds).
    pub created_at: i64,
}

/// Inserts the `responses` row of record `request_id` and its audit event, inside the record's
/// transaction.
pub(super) fn link_in(
    conn: &Connection,
    key: &AuditKey,
    rec: &NewRecord,
    request_id: i64,
    link: &ResponseLink,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO responses (id, uid, request_id, previous_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            link.id,
            rec.uid,
            request_id,
            link.previous_id,
            rec.created_at
        ],
    )?;
    let mut detail = serde_json::json!({"id": link.id, "record": request_id,
        "input_items": link.input_items});
    let kind = match &link.previous_id {
        Some(p) => {
            detail["previous_id"] = serde_json::json!(p);
            audit_kinds::RESPONSE_CONTINUE
        }
        None => audit_kinds::RESPONSE_CREATE,
    };
    audit::append_in(conn, key, kind, Some(rec.uid), &detail.to_string())?;
    Ok(())
}

impl Store {
    /// Gives `uid`'s existing request record `request_id` the public id `id`, continuing
    /// `previous_id` (no audit event: [`Store::record_response`] is what the API uses).
    /// [`StoreError::NotFound`] when the record is not `uid`'s (or does not exist).
    pub fn link_response(
        &mut self,
        uid: u32,
        id: &str,
        request_id: i64,
        previous_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "INSERT INTO responses (id, uid, request_id, previous_id, created_at)
             SELECT ?1, uid, id, ?2, created_at FROM requests WHERE id = ?3 AND uid = ?4",
            params![id, previous_id, request_id, uid],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound { id: request_id });
        }
        Ok(())
    }

    /// `uid`'s response `id`; `None` alike for an unknown id, another uid's and an erased one.
    pub fn find_response(&self, uid: u32, id: &str) -> Result<Option<StoredResponse>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT r.request_id, r.previous_id, r.created_at FROM responses r
                 JOIN requests q ON q.id = r.request_id AND q.uid = r.uid
                 WHERE r.id = ?1 AND r.uid = ?2",
                params![id, uid],
                |r| {
                    Ok(StoredResponse {
                        request_id: r.get(0)?,
                        previous_id: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Deletes `uid`'s response `id` with its sealed record and logs `response.delete`, in one
    /// transaction; `false` when there is none. The WAL is then truncated, as by `history rm`.
    pub fn delete_response(&mut self, uid: u32, id: &str) -> Result<bool, StoreError> {
        let Some(found) = self.find_response(uid, id)? else {
            return Ok(false);
        };
        let key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "DELETE FROM requests WHERE id = ?1 AND uid = ?2",
            params![found.request_id, uid],
        )?;
        let detail = serde_json::json!({"id": id, "record": found.request_id});
        audit::append_in(
            &tx,
            &key,
            audit_kinds::RESPONSE_DELETE,
            Some(uid),
            &detail.to_string(),
        )?;
        tx.commit()?;
        let _ = self.checkpoint_truncate();
        Ok(true)
    }
}
