//! History (a caller's own records), administration of stored data (erasure, key rotation) and
//! the audit log.
//!
//! A user sees only records whose owner uid is their own peer uid: another uid's record answers
//! 404, exactly like one that does not exist. Auditors see the audit log (metadata only), never
//! prompt or response text.

use super::body::JsonBody;
use super::error::ApiError;
use super::{AppState, Caller};
use crate::crypto::MasterKey;
use crate::wire;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

/// Default and largest page of history.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;

/// `GET /v1/history` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Records per page (1..=1000, default 50).
    pub limit: Option<u32>,
    /// Only records with an id below this (the previous page's `next_before`).
    pub before: Option<i64>,
}

/// `GET /v1/history`: the caller's records, newest first, metadata only.
pub async fn list(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<wire::HistoryPage>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_param(
            "limit",
            format!("limit must be 1..={MAX_PAGE}"),
        ));
    }
    // One more than asked tells whether another page follows.
    let mut rows = s
        .store
        .list_history(caller.uid, limit + 1, page.before)
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_before = if has_more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(wire::HistoryPage {
        object: "list".into(),
        data: rows,
        has_more,
        next_before,
    }))
}

/// A record id from the path; anything but an integer is a 400 with a JSON body.
fn record_id(id: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|_| ApiError::bad_param("id", "a record id is an integer"))
}

/// `GET /v1/history/{id}`: one of the caller's records, decrypted.
pub async fn get(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<wire::HistoryRecord>, ApiError> {
    let id = record_id(id)?;
    let r = s.store.get_history(caller.uid, id).await?;
    let prompt: Value =
        serde_json::from_str(&r.prompt_text).unwrap_or(Value::String(r.prompt_text));
    Ok(Json(wire::HistoryRecord {
        meta: r.meta,
        prompt,
        response: r.response_text,
    }))
}

/// `DELETE /v1/history/{id}`.
pub async fn delete(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<wire::HistoryDeleted>, ApiError> {
    let id = record_id(id)?;
    s.store.delete_history(caller.uid, id).await?;
    Ok(Json(wire::HistoryDeleted {
        id,
        object: "history.record".into(),
        deleted: true,
    }))
}

/// Appends an audit event for an admin action; the action already happened, so a failure to
/// log it is reported in the response rather than undoing it.
async fn audit_admin(s: &AppState, caller: &Caller, kind: &str, detail: Value) -> Option<String> {
    s.store
        .audit_append(kind, Some(caller.uid), detail.to_string())
        .await
        .err()
        .map(|e| e.to_string())
}

/// `POST /admin/erase`: crypto-shreds a uid (destroys its data key, then purges its rows).
pub async fn erase(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(req): JsonBody<wire::EraseRequest>,
) -> Result<Json<wire::Erased>, ApiError> {
    let report = s.store.erase_uid(req.uid).await?;
    // Its prompts and answers kept in memory (cached prefixes, prompt-lookup sources) go too.
    s.engine.forget_owner(req.uid);
    // The uid's collections left the store with its key; they leave the index now.
    if let Err(e) = s.collections.resync().await {
        tracing::error!(error = %e.message, "index resync after erasure failed");
    }
    tracing::info!(admin = caller.uid, uid = req.uid, "uid erased");
    let audit_error = audit_admin(&s, &caller, "admin_erase", json!({"uid": req.uid})).await;
    Ok(Json(wire::Erased {
        uid: req.uid,
        report,
        audit_error,
    }))
}

/// `POST /admin/rotate-key`: rewraps every data key under a new master key, in batches, while
/// serving. Afterwards only the new key opens the store.
pub async fn rotate_key(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(req): JsonBody<wire::RotateKeyRequest>,
) -> Result<Json<wire::KeyRotated>, ApiError> {
    let bytes = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(req.key.trim())
            .map_err(|_| ApiError::bad_param("key", "key must be base64"))?,
    );
    let key = MasterKey::from_material(&bytes).ok_or_else(|| {
        ApiError::bad_param(
            "key",
            "key must be 32 bytes (or 64 hex digits), base64-encoded",
        )
    })?;
    let status = s.store.rotate_key(key).await?;
    tracing::info!(admin = caller.uid, new_key = %status.new_key_id, "master key rotated");
    let audit_error = audit_admin(
        &s,
        &caller,
        "admin_rotate_key",
        json!({"old_key_id": status.old_key_id, "new_key_id": status.new_key_id}),
    )
    .await;
    Ok(Json(wire::KeyRotated {
        status,
        audit_error,
    }))
}

/// `GET /admin/rotate-key`: the state of an unfinished rotation, if any.
pub async fn rotation_status(
    State(s): State<AppState>,
) -> Result<Json<wire::RotationState>, ApiError> {
    Ok(Json(wire::RotationState {
        rotation: s.store.rotation_status().await?,
    }))
}

/// `GET /audit/verify`: checks the whole chain and names the first bad row.
pub async fn audit_verify(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> Result<Json<wire::AuditVerified>, ApiError> {
    let report = s.store.audit_verify().await?;
    tracing::info!(uid = caller.uid, ok = report.is_ok(), "audit verified");
    Ok(Json(wire::AuditVerified {
        ok: report.is_ok(),
        report,
    }))
}

/// `GET /audit/export`: the audit log as JSON lines.
pub async fn audit_export(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> Result<Response, ApiError> {
    let (buf, rows) = s.store.audit_export(Vec::new()).await?;
    tracing::info!(uid = caller.uid, rows, "audit exported");
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], buf).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_body_debug_redacts_the_key() {
        let body: wire::RotateKeyRequest =
            serde_json::from_str(r#"{"key":"c2VjcmV0LWtleQ=="}"#).unwrap();
        assert_eq!(body.key.as_str(), "c2VjcmV0LWtleQ==");
        let shown = format!("{body:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
