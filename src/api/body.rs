//! Request bodies: one extractor reads, bounds and parses a JSON body for every handler that
//! takes one, so no handler repeats the read-then-parse prologue.
//!
//! A body over `max-body-bytes` is answered 413 only after the client has finished sending it
//! (read and discarded, up to [`DRAIN_BYTES`] more): a client that writes its whole body before
//! reading, as most HTTP clients do, then reads the 413 instead of a broken pipe.

use super::error::ApiError;
use super::AppState;
use axum::extract::{FromRequest, Request};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

/// How much of an over-large body is read and thrown away before answering 413: past this, the
/// connection is closed instead (the body timeout bounds the time either way).
pub const DRAIN_BYTES: usize = 64 << 20;

/// A JSON object body parsed into `T` after the depth check ([`inhouse_formats::validate::parse_body`]);
/// a body that is too large, too slow, too deep or malformed is refused with its own error code.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = read_bounded(req, state.max_body_bytes).await?;
        let value = inhouse_formats::validate::parse_body(&body, state.limits.max_json_depth)?;
        Ok(JsonBody(value))
    }
}

/// Reads a body of at most `max` bytes; a larger one is drained (see the module's doc) and
/// refused.
async fn read_bounded(req: Request, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = req.into_body().into_data_stream();
    let mut body = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| read_error(&e))?;
        total = total.saturating_add(chunk.len());
        if total > max {
            if total > max.saturating_add(DRAIN_BYTES) {
                break;
            }
            body = Vec::new();
            continue;
        }
        body.extend_from_slice(&chunk);
    }
    if total > max {
        return Err(ApiError::body_too_large());
    }
    Ok(body)
}

/// Turns a body-reading failure (too slow, broken transfer) into an API error.
fn read_error(e: &axum::Error) -> ApiError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    if text.contains("timed out") || text.contains("timeout") {
        ApiError::body_timeout()
    } else {
        ApiError::invalid_body(&text)
    }
}
