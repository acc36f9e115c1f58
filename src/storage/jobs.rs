//! The `jobs` table (migration 3): the state of toolchain jobs, so that a job survives a
//! daemon restart. Every change of state is written in the same transaction as its audit event,
//! so neither exists without the other. The rows hold no user text (see
//! `migrations/0003_jobs.sql`); the runner that drives them is [`crate::jobs`].

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use serde_json::{json, Value};

use super::{audit, now_unix, write_tx, Store, StoreError};
use crate::crypto::AuditKey;

/// Where a job is in its life. Stored as text, checked by the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a free runner slot (`[jobs] max-concurrent`).
    Queued,
    /// Its toolchain process runs (or ran when the daemon stopped; start-up resolves that).
    Running,
    /// Finished with exit status 0; its output is registered.
    Succeeded,
    /// Failed; `error` says why.
    Failed,
    /// Cancelled by an admin.
    Cancelled,
}

impl JobState {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether the job has ended (no process, nothing more will happen to it).
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct JobRow {
    /// Job id (never reused).
    pub id: i64,
    /// `prepare`, `finetune`, `quantize` or `eval`.
    pub kind: String,
    /// Where it is.
    pub state: JobState,
    /// The admin who submitted it.
    pub uid: u32,
    /// What it does: models, datasets, options, output name (see [`crate::jobs::JobSpec`]).
    pub params: Value,
    /// Submitted at.
    pub created_at: i64,
    /// Its process last started at.
    pub started_at: Option<i64>,
    /// Ended at.
    pub finished_at: Option<i64>,
    /// Process id of its toolchain process while running.
    pub pid: Option<i64>,
    /// How many times a process was started for it (a resume is another attempt).
    pub attempts: u32,
    /// The last progress line the toolchain reported.
    pub progress: Option<Value>,
    /// The last checkpoint written (a path inside the state directory).
    pub checkpoint: Option<String>,
    /// What it produced (a summary; for finetune and quantize the registered model).
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
}

const COLUMNS: &str = "id, kind, state, uid, params_json, created_at, started_at, finished_at, \
                       pid, attempts, progress_json, checkpoint, result_json, error";

fn json_col(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    let state: String = r.get(2)?;
    Ok(JobRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        state: JobState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                "unknown job state".into(),
            )
        })?,
        uid: r.get(3)?,
        params: json_col(r.get(4)?).unwrap_or(Value::Null),
        created_at: r.get(5)?,
        started_at: r.get(6)?,
        finished_at: r.get(7)?,
        pid: r.get(8)?,
        attempts: r.get(9)?,
        progress: json_col(r.get(10)?),
        checkpoint: r.get(11)?,
        result: json_col(r.get(12)?),
        error: r.get(13)?,
    })
}

fn check_json(text: &str, what: &str) -> Result<(), StoreError> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|_| StoreError::InvalidInput(format!("{what} is not valid JSON")))
}

/// Appends a job's audit event inside the caller's transaction.
fn audit_job(
    tx: &rusqlite::Transaction<'_>,
    key: &AuditKey,
    kind: &str,
    actor: Option<u32>,
    detail: &Value,
) -> Result<(), StoreError> {
    audit::append_in(tx, key, kind, actor, &detail.to_string())?;
    Ok(())
}

impl Store {
    fn job_in(conn: &rusqlite::Connection, id: i64) -> Result<JobRow, StoreError> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?
        .ok_or(StoreError::NotFound { id })
    }

    /// Records a new job (`queued`) and its `job_submitted` audit event; returns it.
    pub fn job_create(
        &mut self,
        kind: &str,
        uid: u32,
        params_json: &str,
    ) -> Result<JobRow, StoreError> {
        check_json(params_json, "job parameters")?;
        let key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "INSERT INTO jobs (kind, state, uid, params_json, created_at)
             VALUES (?1, 'queued', ?2, ?3, ?4)",
            params![kind, uid, params_json, now_unix()],
        )?;
        let id = tx.last_insert_rowid();
        let params: Value = serde_json::from_str(params_json).unwrap_or(Value::Null);
        let detail = json!({"id": id, "kind": kind, "params": params});
        audit_job(&tx, &key, "job_submitted", Some(uid), &detail)?;
        let row = Store::job_in(&tx, id)?;
        crate::fault::point("job_submit.before_commit");
        tx.commit()?;
        crate::fault::point("job_submit.after_commit");
        Ok(row)
    }

    /// Marks a job `running` with its new process (one more attempt) and audits `job_started`
    /// (or `job_resumed`).
    pub fn job_started(&mut self, id: i64, pid: u32, resumed: bool) -> Result<(), StoreError> {
        let key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let n = tx.execute(
            "UPDATE jobs SET state = 'running', started_at = ?2, pid = ?3,
                 attempts = attempts + 1, error = NULL
             WHERE id = ?1 AND state IN ('queued', 'running')",
            params![id, now_unix(), pid],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound { id });
        }
        let row = Store::job_in(&tx, id)?;
        let kind = if resumed {
            "job_resumed"
        } else {
            "job_started"
        };
        let detail = json!({"id": id, "kind": row.kind, "pid": pid, "attempt": row.attempts});
        audit_job(&tx, &key, kind, None, &detail)?;
        tx.commit()?;
        Ok(())
    }

    /// Saves the last progress line and, when one was written, the last checkpoint. Not audited
    /// (progress is frequent and says nothing about who did what).
    pub fn job_progress(
        &mut self,
        id: i64,
        progress_json: Option<&str>,
        checkpoint: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(p) = progress_json {
            check_json(p, "job progress")?;
        }
        self.conn.execute(
            "UPDATE jobs SET progress_json = coalesce(?2, progress_json),
                 checkpoint = coalesce(?3, checkpoint)
             WHERE id = ?1",
            params![id, progress_json, checkpoint],
        )?;
        Ok(())
    }

    /// Ends a job that has not ended yet: `state` must be final. Sets the result or the error,
    /// clears the pid, and audits `job_succeeded`, `job_failed` or `job_cancelled` (with
    /// `actor`: the admin who cancelled). Returns the row, or `None` when the job had already
    /// ended (nothing is changed then).
    pub fn job_finish(
        &mut self,
        id: i64,
        state: JobState,
        result_json: Option<&str>,
        error: Option<&str>,
        actor: Option<u32>,
    ) -> Result<Option<JobRow>, StoreError> {
        if !state.is_final() {
            return Err(StoreError::InvalidInput(format!(
                "{} is not a final job state",
                state.as_str()
            )));
        }
        if let Some(r) = result_json {
            check_json(r, "job result")?;
        }
        let key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let n = tx.execute(
            "UPDATE jobs SET state = ?2, finished_at = ?3, pid = NULL,
                 result_json = coalesce(?4, result_json), error = ?5
             WHERE id = ?1 AND state IN ('queued', 'running')",
            params![id, state.as_str(), now_unix(), result_json, error],
        )?;
        if n == 0 {
            // Already ended, or no such job.
            Store::job_in(&tx, id)?;
            return Ok(None);
        }
        let row = Store::job_in(&tx, id)?;
        let mut detail = json!({"id": id, "kind": row.kind, "attempts": row.attempts});
        if let Some(e) = error {
            detail["error"] = json!(e);
        }
        if let Some(out) = row.result.as_ref().and_then(|r| r.get("model")) {
            detail["model"] = out.clone();
        }
        audit_job(
            &tx,
            &key,
            &format!("job_{}", state.as_str()),
            actor,
            &detail,
        )?;
        crate::fault::point("job_complete.before_commit");
        tx.commit()?;
        crate::fault::point("job_complete.after_commit");
        Ok(Some(row))
    }

    /// One job.
    pub fn job_get(&self, id: i64) -> Result<JobRow, StoreError> {
        Store::job_in(&self.conn, id)
    }

    /// Jobs, newest first, at most `limit`.
    pub fn job_list(&self, limit: u32) -> Result<Vec<JobRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt
            .query_map([limit], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Jobs that have not ended (`queued` or `running`), oldest first: what start-up resolves.
    pub fn jobs_unfinished(&self) -> Result<Vec<JobRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn a_job_row_goes_from_queued_to_one_final_state_with_its_audit_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path().join("t.db"), MasterKey::from_bytes(&[3; 32])).unwrap();
        let row = s
            .job_create("prepare", 1000, r#"{"kind":"prepare"}"#)
            .unwrap();
        assert_eq!((row.state, row.attempts), (JobState::Queued, 0));
        assert!(s.job_create("prepare", 1000, "not json").is_err());
        s.job_started(row.id, 4242, false).unwrap();
        s.job_progress(row.id, Some(r#"{"fraction":0.5}"#), Some("/w/1/ck"))
            .unwrap();
        s.job_progress(row.id, None, None).unwrap();
        let r = s.job_get(row.id).unwrap();
        assert_eq!(
            (r.state, r.pid, r.attempts),
            (JobState::Running, Some(4242), 1)
        );
        assert_eq!(r.progress.unwrap()["fraction"], 0.5);
        assert_eq!(r.checkpoint.as_deref(), Some("/w/1/ck"));
        assert_eq!(s.jobs_unfinished().unwrap().len(), 1);
        assert!(s
            .job_finish(row.id, JobState::Running, None, None, None)
            .is_err());
        let done = s
            .job_finish(row.id, JobState::Failed, None, Some("boom"), None)
            .unwrap()
            .unwrap();
        assert_eq!((done.state, done.pid), (JobState::Failed, None));
        // Ended once: a later cancel changes nothing.
        assert!(s
            .job_finish(row.id, JobState::Cancelled, None, None, Some(0))
            .unwrap()
            .is_none());
        assert!(matches!(
            s.job_finish(99, JobState::Failed, None, None, None),
            Err(StoreError::NotFound { id: 99 })
        ));
        assert!(s.jobs_unfinished().unwrap().is_empty());
        assert_eq!(s.job_list(10).unwrap(), vec![s.job_get(row.id).unwrap()]);
        let report = s.audit_verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
        let mut out = vec![];
        s.audit_export(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for kind in ["job_submitted", "job_started", "job_failed"] {
            assert!(text.contains(kind), "{kind} missing: {text}");
        }
        assert!(!text.contains("job_cancelled"));
    }
}
