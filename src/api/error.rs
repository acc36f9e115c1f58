//! The one place where errors become HTTP responses.
//!
//! Every error body has OpenAI's shape, `{"error":{"message","type","code"}}`; `type` and `code`
//! are stable strings that clients may match on.

use crate::engine::EngineError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use inhouse_formats::validate::ValidationError;

/// An API error: status, stable type and code, and a message saying what to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI error type, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// Stable machine-readable code, e.g. `model_not_found`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Which request field was wrong, when one was.
    pub param: Option<String>,
    /// Seconds for a `Retry-After` header, when a retry later may succeed.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 `invalid_request_error` with the given code.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// A 400 for one field that has a bad value.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::invalid("invalid_value", message)
        }
    }

    /// 403 for a caller without the role a route needs.
    pub fn forbidden(role: crate::api::auth::Role) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            kind: "permission_error",
            code: "forbidden",
            message: format!(
                "this endpoint needs the {} role, which your uid and groups do not grant",
                role.name()
            ),
            param: None,
            retry_after: None,
        }
    }

    /// 404 for a route that does not exist.
    pub fn no_route() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "unknown_url",
            message: "no such endpoint".into(),
            param: None,
            retry_after: None,
        }
    }

    /// 405 for a known route called with the wrong method.
    pub fn wrong_method() -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "invalid_request_error",
            code: "method_not_allowed",
            message: "this endpoint does not accept that method".into(),
            param: None,
            retry_after: None,
        }
    }

    /// 408: the request body did not arrive within the body timeout.
    pub fn body_timeout() -> Self {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "body_timeout",
            ..ApiError::invalid("", "the request body did not arrive in time")
        }
    }

    /// 413: the request body is over the configured limit.
    pub fn body_too_large() -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            ..ApiError::invalid("", "the request body is too large")
        }
    }

    /// 400: the body could not be read (a broken transfer).
    pub fn invalid_body(why: &dyn std::fmt::Display) -> Self {
        ApiError::invalid("invalid_body", format!("cannot read the body: {why}"))
    }

    /// 400: a query string that does not parse.
    pub fn invalid_query(why: impl Into<String>) -> Self {
        ApiError::invalid("invalid_query", why)
    }

    /// 429: the caller's uid is over its rate or concurrency limit.
    pub fn rate_limited(message: String) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: "rate_limited",
            message,
            param: None,
            retry_after: None,
        }
    }

    /// 415: a body that is not JSON where JSON is expected.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            ..ApiError::invalid(
                "",
                format!("Content-Type {content_type:?} is not accepted: send application/json"),
            )
        }
    }

    /// 400: a model import's signature header does not decode.
    pub fn invalid_signature_header(header: &str) -> Self {
        ApiError::invalid(
            "invalid_signature_header",
            format!("{header} must be the base64 of the signature file"),
        )
    }

    /// 404 for a stored response the caller cannot have: unknown, another uid's, deleted or
    /// erased all answer exactly this, so that an id reveals nothing about anyone else.
    pub fn response_not_found(param: &str, id: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "response_not_found",
            param: Some(param.to_string()),
            ..ApiError::invalid(
                "",
                format!("no stored response with id {id:?} (ids are only visible to their owner)"),
            )
        }
    }

    /// 500: an invariant of the server itself broke; the caller did nothing wrong.
    pub fn internal(what: &str) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: "internal_error",
            message: format!("internal error: {what}"),
            param: None,
            retry_after: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> crate::wire::ErrorBody {
        crate::wire::ErrorBody {
            error: crate::wire::ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let message = e.to_string();
        match e.param_name() {
            Some(param) => ApiError {
                param: Some(param.into()),
                ..ApiError::invalid(e.code(), message)
            },
            None => ApiError::invalid(e.code(), message),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = match &e {
            // The reason names the file and llama.cpp's words: for the log, not for callers,
            // who may be any user of the socket.
            EngineError::Load { name, .. } => {
                tracing::error!(error = %e, "model load failed");
                format!("cannot load model {name:?}; the reason is in the daemon's log")
            }
            _ => e.to_string(),
        };
        let (status, kind, code) = match &e {
            EngineError::UnknownModel(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            ),
            EngineError::NoChatTemplate(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "no_chat_template",
            ),
            EngineError::Template { code, .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", *code)
            }
            EngineError::ToolsUnsupported(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "tools_unsupported",
            ),
            EngineError::Constraint(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_schema",
            ),
            EngineError::LogitBias { .. } | EngineError::TooManyChoices { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
            ),
            EngineError::ContextLengthExceeded { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
            ),
            EngineError::EmptyPrompt => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "empty_prompt",
            ),
            EngineError::CannotEmbed(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "model_cannot_embed",
            ),
            EngineError::QueueFull(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "queue_full",
            ),
            EngineError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "shutting_down",
            ),
            EngineError::DoesNotFit { .. } => (
                StatusCode::INSUFFICIENT_STORAGE,
                "server_error",
                "model_too_large",
            ),
            EngineError::Busy(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "model_busy",
            ),
            EngineError::Refused { .. } => {
                (StatusCode::FORBIDDEN, "permission_error", "model_refused")
            }
            EngineError::Inference(_) | EngineError::Load { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "inference_failed",
            ),
            EngineError::Upstream { failure, .. } => {
                use crate::engine::UpstreamFailure as F;
                let status = match failure {
                    F::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    F::Timeout => StatusCode::GATEWAY_TIMEOUT,
                    F::BadResponse | F::TooLarge => StatusCode::BAD_GATEWAY,
                    F::Rejected | F::Unsupported => StatusCode::BAD_REQUEST,
                };
                let kind = match failure {
                    F::Rejected | F::Unsupported => "invalid_request_error",
                    _ => "server_error",
                };
                (status, kind, failure.code())
            }
        };
        let retry_after = match &e {
            EngineError::Upstream {
                failure: crate::engine::UpstreamFailure::Unavailable { retry_after_secs },
                ..
            } => Some((*retry_after_secs).max(1)),
            // A moment later the queue has room again.
            EngineError::QueueFull(_) => Some(1),
            _ => None,
        };
        let param = match &e {
            EngineError::LogitBias { .. } => Some("logit_bias".to_string()),
            EngineError::TooManyChoices { .. } => Some("n".to_string()),
            EngineError::ToolsUnsupported(_) => Some("tools".to_string()),
            _ => None,
        };
        ApiError {
            status,
            kind,
            code,
            message,
            param,
            retry_after,
        }
    }
}

impl From<crate::models::ModelStoreError> for ApiError {
    fn from(e: crate::models::ModelStoreError) -> Self {
        use crate::models::ModelStoreError as E;
        let (status, kind, code) = match &e {
            E::InvalidName(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_model_name",
            ),
            E::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            ),
            E::Exists(_) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "model_exists",
            ),
            E::DigestMismatch { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "digest_mismatch",
            ),
            E::InvalidGguf(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "invalid_gguf",
            ),
            E::Template { code, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                *code,
            ),
            E::Adapter(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "invalid_adapter",
            ),
            E::Signature(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "signature_refused",
            ),
            E::Tampered { .. } => (StatusCode::FORBIDDEN, "permission_error", "model_refused"),
            E::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "model_file_too_large",
            ),
            E::AliasNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "alias_not_found",
            ),
            E::AliasClash(_) => (StatusCode::CONFLICT, "invalid_request_error", "alias_clash"),
            E::AliasTarget(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_alias_target",
            ),
            E::NotBlessed { .. } => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "model_not_blessed",
            ),
            E::Io(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "model_store_error",
            ),
        };
        ApiError {
            status,
            kind,
            code,
            message: e.to_string(),
            param: None,
            retry_after: None,
        }
    }
}

impl From<crate::storage::StoreError> for ApiError {
    fn from(e: crate::storage::StoreError) -> Self {
        use crate::storage::StoreError as E;
        let status = match &e {
            E::NotFound { .. } => StatusCode::NOT_FOUND,
            E::InvalidInput(_) => StatusCode::BAD_REQUEST,
            E::Rotation(_) => StatusCode::CONFLICT,
            E::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            E::Closed => StatusCode::SERVICE_UNAVAILABLE,
            E::Integrity { .. }
            | E::DataKeyIntegrity { .. }
            | E::WrongKey { .. }
            | E::TooNew { .. }
            | E::Crypto(_)
            | E::Sqlite(_)
            | E::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // The code is the store's own stable kind. Store messages name ids and key ids, never
        // key bytes or record text. Server-side store failures carry that kind as their type
        // too (`integrity_error`, `storage_full`, …) so that clients can tell them apart.
        let kind = e.kind();
        ApiError {
            status,
            kind: if status.is_server_error() {
                kind
            } else {
                "invalid_request_error"
            },
            code: kind,
            message: e.to_string(),
            param: None,
            retry_after: None,
        }
    }
}

impl From<crate::jobs::JobError> for ApiError {
    fn from(e: crate::jobs::JobError) -> Self {
        use crate::jobs::JobError as E;
        let param = match &e {
            E::Missing { field, .. } => Some(field.to_string()),
            E::Invalid { field, .. } => Some(field.clone()),
            E::UnknownModel(_) => Some("model".to_string()),
            E::UnknownDataset(_) => Some("data".to_string()),
            E::OutputExists(_) => Some("output_name".to_string()),
            E::UnknownKind(_) => Some("kind".to_string()),
            _ => None,
        };
        let (status, kind, code) = match &e {
            E::Store(_) => {
                let E::Store(s) = e else { unreachable!() };
                return s.into();
            }
            E::UnknownKind(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unknown_job_kind",
            ),
            E::Missing { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "missing_field",
            ),
            E::Invalid { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
            ),
            E::UnknownModel(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            ),
            E::UnknownDataset(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "dataset_not_found",
            ),
            E::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "job_not_found",
            ),
            E::Ended { .. } => (StatusCode::CONFLICT, "invalid_request_error", "job_ended"),
            E::OutputExists(_) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "model_exists",
            ),
            E::DataTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "dataset_too_large",
            ),
            E::Toolchain(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "toolchain_unavailable",
            ),
            E::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "shutting_down",
            ),
            E::Io(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "job_error",
            ),
        };
        ApiError {
            status,
            kind,
            code,
            message: e.to_string(),
            param,
            retry_after: None,
        }
    }
}
