//! Request bodies: one extractor reads, bounds and parses a JSON body for every handler that
//! takes one, so no handler repeats the read-then-parse prologue.

use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

/// A JSON object body parsed into `T` after the depth check ([`inhouse_formats::validate::parse_body`]);
/// a body that is too large, too slow, too deep or malformed is refused with its own error code.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = body_bytes(Bytes::from_request(req, state).await)?;
        let value = inhouse_formats::validate::parse_body(&body, state.limits.max_json_depth)?;
        Ok(JsonBody(value))
    }
}

/// Turns a body-reading failure (too large, too slow, broken transfer) into an API error.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let text = rejection.body_text();
        if text.contains("timed out") || text.contains("timeout") {
            ApiError::body_timeout()
        } else if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large()
        } else {
            ApiError::invalid_body(&rejection)
        }
    })
}
