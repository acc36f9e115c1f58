//! `GET /metrics`: the engine's serving metrics in the Prometheus text format.
//!
//! Like `/health` it is open to anyone who can reach the socket: it holds counts and timings per
//! model, never prompt or answer text, and never who asked.

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn metrics(State(s): State<AppState>) -> Response {
    match s.engine.metrics() {
        Some(m) => {
            let mut text = m.render();
            text.push_str(&crate::upstream::render_metrics(&s.engine.upstreams()));
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
        }
        None => (StatusCode::NOT_FOUND, "this engine keeps no metrics\n").into_response(),
    }
}
