//! `/v1/files`: OpenAI's Files API, for the documents of knowledge collections.
//!
//! A file belongs to the uid that uploaded it; its name and bytes are sealed under that uid's
//! data key. Another uid's file answers 404 exactly like a missing one.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{ConnectInfo, Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{AppState, Caller};
use crate::storage::knowledge::FileMeta;

/// The purposes accepted (what a file is for). `assistants` is what the SDK's vector-store
/// helpers send; `user_data` is OpenAI's general one.
const PURPOSES: &[&str] = &["assistants", "user_data"];

/// Longest file name accepted.
const MAX_FILENAME: usize = 255;

/// A file object in OpenAI's shape.
pub fn file_json(f: &FileMeta) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "expires_at": null,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
    })
}

/// A page of a list in OpenAI's cursor shape (`limit` 1..=100, default 20; `after`, `order`).
pub fn page(mut items: Vec<(String, Value)>, q: &ListQuery) -> Result<Value, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_param("limit", "limit must be 1..=100"));
    }
    match q.order.as_deref() {
        None | Some("desc") => {}
        Some("asc") => items.reverse(),
        Some(_) => return Err(ApiError::bad_param("order", "order must be asc or desc")),
    }
    if let Some(after) = &q.after {
        match items.iter().position(|(id, _)| id == after) {
            Some(i) => {
                items.drain(..=i);
            }
            None => items.clear(),
        }
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok(json!({
        "object": "list",
        "first_id": items.first().map(|(id, _)| id.clone()),
        "last_id": items.last().map(|(id, _)| id.clone()),
        "has_more": has_more,
        "data": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
}

/// `?limit=&after=&order=` of the list endpoints (plus `purpose` for files, `filter` for a
/// collection's files).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size.
    pub limit: Option<usize>,
    /// The last id of the previous page.
    pub after: Option<String>,
    /// Accepted and ignored (pages run forward only).
    pub before: Option<String>,
    /// `asc` or `desc` by creation time.
    pub order: Option<String>,
    /// Files only: their purpose.
    pub purpose: Option<String>,
    /// A collection's files only: their status.
    pub filter: Option<String>,
}

fn multipart_error(e: impl std::fmt::Display, status: StatusCode) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::body_too_large();
    }
    ApiError::invalid(
        "invalid_multipart",
        format!("the multipart body is invalid: {e}"),
    )
}

/// `POST /v1/files`: a multipart form with `file` and `purpose`.
pub async fn upload(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut form = form.map_err(|e| {
        ApiError::invalid(
            "invalid_multipart",
            format!("POST /v1/files takes a multipart/form-data body with file and purpose: {e}"),
        )
    })?;
    let mut purpose = None;
    let mut file: Option<(String, Vec<u8>)> = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, e.status()))?
    {
        match field.name() {
            Some("purpose") => {
                purpose = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| multipart_error(&e, e.status()))?,
                )
            }
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.txt").to_string();
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| multipart_error(&e, e.status()))?;
                file = Some((name, bytes.to_vec()));
            }
            // Other fields (`expires_after[...]`) are accepted and ignored.
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::bad_param("purpose", "purpose is required"))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::bad_param(
            "purpose",
            format!("purpose must be one of {PURPOSES:?}, not {purpose:?}"),
        ));
    }
    let (filename, bytes) = file.ok_or_else(|| ApiError::bad_param("file", "file is required"))?;
    let filename = filename.rsplit('/').next().unwrap_or_default().to_string();
    if filename.is_empty()
        || filename.len() > MAX_FILENAME
        || filename.chars().any(char::is_control)
    {
        return Err(ApiError::bad_param(
            "file",
            format!("the file name must be 1..={MAX_FILENAME} bytes without control characters"),
        ));
    }
    if bytes.len() as u64 > s.collections.config().file_limit() {
        return Err(ApiError {
            code: "file_too_large",
            message: format!(
                "the file has {} bytes, over [knowledge] max-file-bytes = {}",
                bytes.len(),
                s.collections.config().file_limit()
            ),
            ..ApiError::body_too_large()
        });
    }
    let who = s.access(&caller);
    let meta = s.collections.upload(&who, purpose, filename, bytes).await?;
    tracing::info!(uid = caller.uid, file = %meta.id, bytes = meta.bytes, "file uploaded");
    Ok(Json(file_json(&meta)))
}

/// `GET /v1/files`.
pub async fn list(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let files = s.collections.files(&s.access(&caller)).await?;
    let items = files
        .iter()
        .filter(|f| q.purpose.as_deref().is_none_or(|p| p == f.purpose))
        .map(|f| (f.id.clone(), file_json(f)))
        .collect();
    Ok(Json(page(items, &q)?))
}

/// `GET /v1/files/{id}`.
pub async fn get(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let f = s.collections.file(&s.access(&caller), &id).await?;
    Ok(Json(file_json(&f)))
}

/// `GET /v1/files/{id}/content`: the bytes as uploaded.
pub async fn content(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, bytes) = s.collections.file_content(&s.access(&caller), &id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `DELETE /v1/files/{id}`: the file, and its chunks in every collection.
pub async fn delete(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.collections.delete_file(&s.access(&caller), &id).await?;
    tracing::info!(uid = caller.uid, file = %id, "file deleted");
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}
