//! Stored Responses API responses: a public id (`resp_…`) per request record, per owner. The
//! sealed conversation is the record itself, so history, `history rm`, retention and erasure
//! govern it; the `responses` row follows its record through `ON DELETE CASCADE`.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

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

impl Store {
    /// Gives `uid`'s request record `request_id` the public id `id`, continuing `previous_id`.
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
                "SELECT request_id, previous_id, created_at FROM responses
                 WHERE id = ?1 AND uid = ?2",
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

    /// Deletes `uid`'s response `id` with its sealed record; `false` when there is none.
    pub fn delete_response(&mut self, uid: u32, id: &str) -> Result<bool, StoreError> {
        match self.find_response(uid, id)? {
            None => Ok(false),
            Some(r) => {
                self.delete_history(uid, r.request_id)?;
                Ok(true)
            }
        }
    }
}
