//! `GET /admin/models/{name}/card?format=html|md`: a stored model's card, rendered by the daemon
//! from its manifest ([`crate::models::card::render`]) and answered as the page itself
//! (`text/html` or `text/markdown`), with its SHA-256 in the [`CARD_SHA256_HEADER`] header.
//! Each card generated is audited as `model_card_generated` (detail: `name`, `digest` of the
//! model, `format`, `sha256` and `bytes` of the card), so a card handed around can be matched to
//! the log. Admin only, like the rest of `/admin/models`.

use super::error::ApiError;
use super::{AppState, Caller};
use crate::models::card::{self, CardFormat};
use crate::models::{self, ModelStoreError};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Header carrying the card's SHA-256 (lowercase hex), as recorded in the audit log.
pub const CARD_SHA256_HEADER: &str = "x-inhouse-card-sha256";

/// Query of a card request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardQuery {
    /// `html` (default) or `md`.
    format: Option<String>,
}

/// The SHA-256 (hex) of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = inhouse_formats::sign::Sha256Writer::new();
    h.update(bytes);
    h.finish().0
}

/// `GET /admin/models/{name}/card`.
pub async fn card(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(name): Path<String>,
    query: Result<Query<CardQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let (format, label, content_type) = match q.format.as_deref().unwrap_or("html") {
        "html" => (CardFormat::Html, "html", "text/html; charset=utf-8"),
        "md" | "markdown" => (CardFormat::Markdown, "md", "text/markdown; charset=utf-8"),
        other => {
            return Err(ApiError::bad_param(
                "format",
                format!("unknown card format {other:?}: use html or md"),
            ))
        }
    };
    models::check_name(&name)?;
    let store = s
        .engine
        .pool()
        .and_then(|p| p.store().cloned())
        .ok_or_else(|| {
            ApiError::from(ModelStoreError::Io("this daemon has no model store".into()))
        })?;
    let manifest = store.get(&name)?;
    let page = tokio::task::spawn_blocking(move || {
        let page = card::render(&manifest, format);
        (manifest, page)
    })
    .await
    .map_err(|e| ApiError::internal(&format!("the card renderer failed: {e}")))?;
    let (manifest, page) = page;
    let sha256 = sha256_hex(page.as_bytes());
    // The card goes out only once its digest is in the log.
    s.store
        .audit_append(
            "model_card_generated",
            Some(caller.uid),
            json!({"name": name, "digest": manifest.digest, "format": label,
                   "sha256": sha256, "bytes": page.len()})
            .to_string(),
        )
        .await
        .map_err(ApiError::from)?;
    tracing::info!(model = %name, format = label, %sha256, "model card generated");
    let mut resp = page.into_response();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&sha256) {
        headers.insert(CARD_SHA256_HEADER, v);
    }
    Ok(resp)
}
