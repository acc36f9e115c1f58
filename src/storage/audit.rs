//! The audit log: append-only rows chained by a keyed hash.
//!
//! Each row's `mac` covers its own fields and the previous row's `mac` (see
//! [`crate::crypto::audit_mac`]), keyed with the audit sub-key of the master key named in its
//! `key_id`. [`Store::audit_verify`] walks the chain in `seq` order and names the first row that
//! breaks it:
//! - a **modified** row fails its MAC ([`AuditProblem::BadMac`]);
//! - a **deleted** row leaves a gap in `seq`, reported at the row after the gap
//!   ([`AuditProblem::Missing`]);
//! - **reordered or swapped** rows no longer link: a row's `prev_mac` is not the MAC of the row
//!   before it ([`AuditProblem::BrokenLink`]), and `seq` is inside the MAC so rows cannot be
//!   renumbered either.
//!
//! Keys are checked against the chain's own history: a `key_rotated` row retires its
//! `old_key_id`, and a later row MACed with a retired key means someone holding a leaked old key
//! rewrote the log after the rotation ([`AuditProblem::RetiredKey`]). Every key archived in
//! `key_history` must have been retired that way in the chain, or the rotation's row (and what
//! followed it) was cut and the rest re-MACed with the old key
//! ([`AuditProblem::RotationEventMissing`]).
//!
//! What a chain inside the database cannot show by itself is a cut at the *end* (the newest rows
//! deleted). [`VerifyReport`] therefore gives the head (last seq and MAC): log it, or have an
//! auditor record it, and compare later.
//!
//! Across a key rotation rows are not re-MACed: see `rotation.rs`.
//!
//! Which events the store appends itself: its creation, key rotations, data-key destruction,
//! erasures and retention purges, each in the same transaction as the change it describes.
//! Requests, admin actions, denied requests and start/stop are appended by the layers that see
//! them, through [`Store::audit_append`].

use std::collections::{HashMap, HashSet};
use std::io::Write;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{now_unix, write_tx, Store, StoreError};
use crate::crypto::{to_hex, AuditKey, AuditMacInput, KeyId, AUDIT_GENESIS_MAC};

/// Event kinds the store itself appends.
pub mod kinds {
    /// The database was created (detail: `key_id`).
    pub const STORE_CREATED: &str = "store_created";
    /// A key rotation started (detail: `old_key_id`, `new_key_id`).
    pub const KEY_ROTATION_STARTED: &str = "key_rotation_started";
    /// A key rotation finished; the last row MACed with the old key (detail: `old_key_id`,
    /// `new_key_id`, `rewrapped`).
    pub const KEY_ROTATED: &str = "key_rotated";
    /// A uid's data key was destroyed, first step of an erasure (detail: `uid`,
    /// `keys_destroyed`).
    pub const DATA_KEY_DESTROYED: &str = "data_key_destroyed";
    /// A uid's rows were purged (detail: `uid`, `requests_deleted`).
    pub const UID_ERASED: &str = "uid_erased";
    /// The retention job deleted old records, one event per batch (detail: `cutoff`, `deleted`
    /// in that batch).
    pub const RETENTION_PURGE: &str = "retention_purge";
    /// A request was served and recorded (detail: `id`, `model`, `status`, token counts).
    pub const REQUEST: &str = "request";
    /// A Responses API response was stored (detail: `id`, `record`, `input_items`), in the
    /// transaction of its record.
    pub const RESPONSE_CREATE: &str = "response.create";
    /// A stored response continued an earlier one (detail: `id`, `record`, `input_items`,
    /// `previous_id`), in the transaction of its record.
    pub const RESPONSE_CONTINUE: &str = "response.continue";
    /// Its owner deleted a stored response with its record (detail: `id`, `record`).
    pub const RESPONSE_DELETE: &str = "response.delete";
}

/// The longest event kind accepted.
const MAX_KIND_LEN: usize = 64;

/// What is wrong with the first bad audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum AuditProblem {
    /// The row's MAC does not match its content: the row was modified.
    BadMac,
    /// The row's `prev_mac` is not the previous row's MAC: rows were reordered, swapped or
    /// replaced.
    BrokenLink,
    /// Rows are missing before this one: `expected_seq` (and maybe more) was deleted.
    Missing {
        /// The first seq that is missing.
        expected_seq: i64,
    },
    /// The row names a key id whose audit key the store does not have.
    UnknownKey {
        /// The key id as stored.
        key_id: String,
    },
    /// The row is MACed with a key that an earlier `key_rotated` row of the chain retired:
    /// rows after the rotation were rewritten by someone holding the old key.
    RetiredKey {
        /// The retired key id, as stored.
        key_id: String,
    },
    /// `key_history` lists a retired key but no verified `key_rotated` row retires it: the
    /// rotation's row (and maybe rows after it) were removed. Reported at the chain head.
    RotationEventMissing {
        /// The retired key id, as stored in `key_history`.
        key_id: String,
    },
}

impl std::fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditProblem::BadMac => f.write_str("its MAC does not match its content (modified)"),
            AuditProblem::BrokenLink => f.write_str(
                "it does not follow the previous row (rows reordered, swapped or replaced)",
            ),
            AuditProblem::Missing { expected_seq } => {
                write!(f, "row {expected_seq} before it is missing (deleted)")
            }
            AuditProblem::UnknownKey { key_id } => {
                write!(f, "it names key id {key_id}, whose audit key is unknown")
            }
            AuditProblem::RetiredKey { key_id } => write!(
                f,
                "it is MACed with key id {key_id}, which an earlier key_rotated row retired \
                 (rewritten with an old key)"
            ),
            AuditProblem::RotationEventMissing { key_id } => write!(
                f,
                "key id {key_id} was retired (key_history) but no key_rotated row in the chain \
                 says so (rows removed)"
            ),
        }
    }
}

/// The first row where verification failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditFault {
    /// The seq of the first bad row.
    pub seq: i64,
    /// What is wrong with it.
    #[serde(flatten)]
    pub problem: AuditProblem,
}

impl std::fmt::Display for AuditFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit row {}: {}", self.seq, self.problem)
    }
}

/// The result of [`Store::audit_verify`]. A broken chain is a finding, not an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct VerifyReport {
    /// Rows checked, up to and including the first bad one.
    pub rows_checked: u64,
    /// The seq of the last row (the chain head), if any.
    pub head_seq: Option<i64>,
    /// The hex MAC of the last row: record it outside the database to detect later truncation.
    pub head_mac: Option<String>,
    /// The first bad row; `None` when the whole chain verifies.
    pub first_fault: Option<AuditFault>,
}

impl VerifyReport {
    /// True when every row verified.
    pub fn is_ok(&self) -> bool {
        self.first_fault.is_none()
    }
}

/// One exported row (a JSONL line). `detail_json` is the exact MACed text, so anyone holding the
/// audit key can re-verify an export.
#[derive(Serialize)]
struct ExportRow {
    seq: i64,
    ts: i64,
    kind: String,
    actor_uid: Option<u32>,
    detail_json: String,
    key_id: String,
    prev_mac: String,
    mac: String,
}

/// Appends one row inside the caller's transaction and returns its seq.
pub(super) fn append_in(
    conn: &Connection,
    key: &AuditKey,
    kind: &str,
    actor_uid: Option<u32>,
    detail_json: &str,
) -> Result<i64, StoreError> {
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev_mac) = match last {
        Some((seq, mac)) => (seq + 1, mac),
        None => (1, AUDIT_GENESIS_MAC.to_vec()),
    };
    let ts = now_unix();
    let input = AuditMacInput {
        prev_mac: &prev_mac,
        seq,
        ts,
        kind,
        actor_uid,
        detail_json,
        key_id: key.key_id(),
    };
    let mac = key.mac(&input);
    conn.execute(
        "INSERT INTO audit (seq, ts, kind, actor_uid, detail_json, key_id, prev_mac, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            seq,
            ts,
            kind,
            actor_uid,
            detail_json,
            key.key_id().to_hex(),
            prev_mac,
            &mac[..]
        ],
    )?;
    Ok(seq)
}

impl Store {
    /// Appends an audit event and returns its seq. `kind` is 1 to 64 characters of `a-z`,
    /// `0-9`, `_`, `.`, `-`; `detail_json` must be valid JSON and should hold metadata only
    /// (never prompt or response text: the audit log is not encrypted, only authenticated).
    pub fn audit_append(
        &mut self,
        kind: &str,
        actor_uid: Option<u32>,
        detail_json: &str,
    ) -> Result<i64, StoreError> {
        let kind_ok = !kind.is_empty()
            && kind.len() <= MAX_KIND_LEN
            && kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !kind_ok {
            return Err(StoreError::InvalidInput(format!(
                "audit kind must be 1 to {MAX_KIND_LEN} characters of a-z, 0-9, '_', '.', '-'"
            )));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(detail_json).is_err() {
            return Err(StoreError::InvalidInput(
                "audit detail is not valid JSON".into(),
            ));
        }
        let key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let seq = append_in(&tx, &key, kind, actor_uid, detail_json)?;
        tx.commit()?;
        Ok(seq)
    }

    /// The audit keys this store can verify with: the active key's, the incoming key's during a
    /// rotation, and those of retired keys (archived in `key_history`, wrapped under the
    /// current KEK). An archived key that does not unwrap is left out; rows MACed with it then
    /// report [`AuditProblem::UnknownKey`].
    fn audit_keys(&self) -> Result<HashMap<KeyId, AuditKey>, StoreError> {
        let mut keys = HashMap::new();
        for master in [Some(&self.keys.active), self.keys.incoming.as_ref()]
            .into_iter()
            .flatten()
        {
            keys.insert(master.id(), master.audit_key());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT key_id, audit_key_wrapped, wrapped_by FROM key_history")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (key_id, wrapped, wrapped_by) = row?;
            let (Some(key_id), Some(wrapped_by)) =
                (KeyId::parse(&key_id), KeyId::parse(&wrapped_by))
            else {
                continue;
            };
            if let Some(key) = self
                .keys
                .kek_for(wrapped_by)
                .and_then(|kek| kek.unwrap_audit_key(key_id, &wrapped).ok())
            {
                keys.insert(key_id, key);
            }
        }
        Ok(keys)
    }

    /// The key ids archived in `key_history` (retired by a finished rotation), as stored.
    fn retired_key_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key_id FROM key_history ORDER BY retired_at, key_id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Verifies the whole audit chain and names the first bad row, if any. Reads every row: on
    /// a large log this takes a while, during which the storage thread serves nothing else.
    ///
    /// Besides each row's MAC, link and seq, it checks keys against the chain's own rotation
    /// events (see the module docs): no row after a `key_rotated` row may use the key it
    /// retired, and every key in `key_history` must be retired by such a row.
    pub fn audit_verify(&self) -> Result<VerifyReport, StoreError> {
        let keys = self.audit_keys()?;
        // Keys retired by a verified `key_rotated` row seen so far in the walk.
        let mut retired_in_chain: HashSet<KeyId> = HashSet::new();
        let mut stmt = self.conn.prepare(
            "SELECT seq, ts, kind, actor_uid, detail_json, key_id, prev_mac, mac
             FROM audit ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut report = VerifyReport {
            rows_checked: 0,
            head_seq: None,
            head_mac: None,
            first_fault: None,
        };
        let mut expected_seq = 1i64;
        let mut prev_mac = AUDIT_GENESIS_MAC.to_vec();
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let ts: i64 = r.get(1)?;
            let kind: String = r.get(2)?;
            let actor_uid: Option<u32> = r.get(3)?;
            let detail_json: String = r.get(4)?;
            let key_id_text: String = r.get(5)?;
            let row_prev: Vec<u8> = r.get(6)?;
            let mac: Vec<u8> = r.get(7)?;
            report.rows_checked += 1;
            report.head_seq = Some(seq);
            report.head_mac = Some(to_hex(&mac));

            let problem = if seq != expected_seq {
                Some(AuditProblem::Missing { expected_seq })
            } else if row_prev != prev_mac {
                Some(AuditProblem::BrokenLink)
            } else {
                match KeyId::parse(&key_id_text).and_then(|id| keys.get(&id).map(|k| (id, k))) {
                    None => Some(AuditProblem::UnknownKey {
                        key_id: key_id_text.clone(),
                    }),
                    Some((key_id, _)) if retired_in_chain.contains(&key_id) => {
                        Some(AuditProblem::RetiredKey {
                            key_id: key_id_text.clone(),
                        })
                    }
                    Some((key_id, key)) => {
                        let input = AuditMacInput {
                            prev_mac: &row_prev,
                            seq,
                            ts,
                            kind: &kind,
                            actor_uid,
                            detail_json: &detail_json,
                            key_id,
                        };
                        (!key.verify(&input, &mac)).then_some(AuditProblem::BadMac)
                    }
                }
            };
            if let Some(problem) = problem {
                report.first_fault = Some(AuditFault { seq, problem });
                break;
            }
            if kind == kinds::KEY_ROTATED {
                // The row verified, so its detail is authentic.
                let old_key_id = serde_json::from_str::<serde_json::Value>(&detail_json)
                    .ok()
                    .and_then(|d| d.get("old_key_id")?.as_str().and_then(KeyId::parse));
                if let Some(old_key_id) = old_key_id {
                    retired_in_chain.insert(old_key_id);
                }
            }
            prev_mac = mac;
            expected_seq = seq + 1;
        }
        if report.first_fault.is_none() {
            let missing = self
                .retired_key_ids()?
                .into_iter()
                .find(|id| !KeyId::parse(id).is_some_and(|id| retired_in_chain.contains(&id)));
            if let Some(key_id) = missing {
                report.first_fault = Some(AuditFault {
                    seq: report.head_seq.unwrap_or(1),
                    problem: AuditProblem::RotationEventMissing { key_id },
                });
            }
        }
        if report.first_fault.is_some() {
            // Report the real head even though the walk stopped early.
            let head: Option<(i64, Vec<u8>)> = self
                .conn
                .query_row(
                    "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            report.head_seq = head.as_ref().map(|h| h.0);
            report.head_mac = head.map(|h| to_hex(&h.1));
        }
        Ok(report)
    }

    /// Writes the audit log as JSON lines, oldest first, and returns how many rows it wrote.
    /// Each line: `seq`, `ts`, `kind`, `actor_uid`, `detail_json` (the exact MACed text),
    /// `key_id`, `prev_mac` and `mac` (hex).
    pub fn audit_export(&self, mut w: impl Write) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, ts, kind, actor_uid, detail_json, key_id, prev_mac, mac
             FROM audit ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            let row = ExportRow {
                seq: r.get(0)?,
                ts: r.get(1)?,
                kind: r.get(2)?,
                actor_uid: r.get(3)?,
                detail_json: r.get(4)?,
                key_id: r.get(5)?,
                prev_mac: to_hex(&r.get::<_, Vec<u8>>(6)?),
                mac: to_hex(&r.get::<_, Vec<u8>>(7)?),
            };
            serde_json::to_writer(&mut w, &row).map_err(|e| StoreError::Io(e.into()))?;
            w.write_all(b"\n")?;
            n += 1;
        }
        w.flush()?;
        Ok(n)
    }
}
