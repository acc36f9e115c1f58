//! OpenAI-compatible routes: `/health`, `/v1/models`, `/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`.

use super::error::ApiError;
use super::{AppState, Caller};
use crate::engine::{Event, FinishReason};
use crate::scheduler::{self, ValidGenerate};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A response id: a prefix, the time and a per-process counter; unique within this daemon.
fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:06x}", now())
}

/// Turns a body-reading failure (too large, broken transfer) into an API error.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status,
                kind: "invalid_request_error",
                code: "body_too_large",
                message: "the request body is too large".into(),
                param: None,
            }
        } else {
            ApiError::invalid("invalid_body", format!("cannot read the body: {rejection}"))
        }
    })
}

/// `GET /health`: liveness, version, backend and models.
pub async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": s.engine.backend(),
        "cpu": s.engine.cpu().map(|c| json!({"variant": c.variant, "features": c.features})),
        "models": s.engine.models().iter().map(|m| &m.name).collect::<Vec<_>>(),
    }))
}

fn model_object(m: &crate::engine::ModelInfo) -> Value {
    json!({
        "id": m.name,
        "object": "model",
        "created": m.loaded_at,
        "owned_by": "inhouse",
        "meta": m,
    })
}

/// `GET /v1/models`.
pub async fn list_models(State(s): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = s.engine.models().iter().map(model_object).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`.
pub async fn get_model(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.engine
        .models()
        .iter()
        .find(|m| m.name == id)
        .map(|m| Json(model_object(m)))
        .ok_or_else(|| crate::engine::EngineError::UnknownModel(id).into())
}

/// The two OpenAI generation endpoints differ only in their object names and chunk shapes.
#[derive(Clone, Copy)]
enum Flavor {
    Chat,
    Text,
}

impl Flavor {
    fn id_prefix(self) -> &'static str {
        match self {
            Flavor::Chat => "chatcmpl",
            Flavor::Text => "cmpl",
        }
    }
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
            (Flavor::Text, _) => "text_completion",
        }
    }
    fn choice(self, text: Option<&str>, finish: Option<FinishReason>, chunk: bool) -> Value {
        match (self, chunk) {
            (Flavor::Chat, false) => json!({"index": 0,
                "message": {"role": "assistant", "content": text.unwrap_or("")},
                "logprobs": null, "finish_reason": finish}),
            (Flavor::Chat, true) => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            (Flavor::Text, _) => json!({"index": 0, "text": text.unwrap_or(""),
                "logprobs": null, "finish_reason": finish}),
        }
    }
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let valid = scheduler::validate_chat(scheduler::parse_body(&body)?, caller.uid, &s.limits)?;
    generate(s, caller, valid, Flavor::Chat).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let valid =
        scheduler::validate_completion(scheduler::parse_body(&body)?, caller.uid, &s.limits)?;
    generate(s, caller, valid, Flavor::Text).await
}

/// Runs a checked generation request and counts its answer's status in the metrics.
async fn generate(
    s: AppState,
    caller: Caller,
    valid: ValidGenerate,
    flavor: Flavor,
) -> Result<Response, ApiError> {
    let metrics = s.engine.metrics();
    let model = valid.request.model.clone();
    let result = run_generate(s, caller, valid, flavor).await;
    if let Some(m) = metrics {
        let status = match &result {
            Ok(r) => r.status(),
            Err(e) => e.status,
        };
        m.request(&model, status.as_u16());
    }
    result
}

async fn run_generate(
    s: AppState,
    caller: Caller,
    valid: ValidGenerate,
    flavor: Flavor,
) -> Result<Response, ApiError> {
    let model = valid.request.model.clone();
    tracing::info!(uid = caller.uid, model = %model, stream = valid.stream, "generation request");
    let mut events = s.engine.generate(valid.request)?;
    // Wait for the prompt to be accepted, so that prompt errors get a proper status code even
    // when streaming.
    let prompt_tokens = match events.recv().await {
        Some(Event::Started { prompt_tokens }) => prompt_tokens,
        Some(Event::Failed(e)) => return Err(e.into()),
        _ => return Err(crate::engine::EngineError::ShuttingDown.into()),
    };
    let id = new_id(flavor.id_prefix());
    let created = now();
    if valid.stream {
        Ok(stream_response(
            events,
            StreamMeta {
                id,
                created,
                model,
                flavor,
                include_usage: valid.include_usage,
                prompt_tokens,
            },
        ))
    } else {
        let mut text = String::new();
        let (reason, prompt_tokens, completion_tokens) = loop {
            match events.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                }) => break (reason, prompt_tokens, completion_tokens),
                Some(Event::Failed(e)) => return Err(e.into()),
                Some(Event::Started { .. }) => {}
                None => return Err(crate::engine::EngineError::ShuttingDown.into()),
            }
        };
        Ok(Json(json!({
            "id": id,
            "object": flavor.object(false),
            "created": created,
            "model": model,
            "choices": [flavor.choice(Some(&text), Some(reason), false)],
            "usage": usage(prompt_tokens, completion_tokens),
        }))
        .into_response())
    }
}

struct StreamMeta {
    id: String,
    created: u64,
    model: String,
    flavor: Flavor,
    include_usage: bool,
    prompt_tokens: u32,
}

impl StreamMeta {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut v = json!({
            "id": self.id,
            "object": self.flavor.object(true),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Bytes::from(format!("data: {v}\n\n"))
    }
}

enum StreamState {
    Opening,
    Running,
    Done,
}

/// Server-sent events: a role chunk (chat), content chunks, a finish chunk, optionally a usage
/// chunk, then `data: [DONE]`. Dropping the body (client gone) drops `events`, which cancels the
/// generation in the engine.
fn stream_response(events: UnboundedReceiver<Event>, meta: StreamMeta) -> Response {
    let body = stream::unfold(
        (events, meta, StreamState::Opening),
        |(mut events, meta, state)| async move {
            match state {
                StreamState::Done => None,
                StreamState::Opening => {
                    let first = match meta.flavor {
                        Flavor::Chat => meta.chunk(
                            json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": null, "finish_reason": null}]),
                            None,
                        ),
                        Flavor::Text => Bytes::new(),
                    };
                    Some((vec![first], (events, meta, StreamState::Running)))
                }
                StreamState::Running => loop {
                    match events.recv().await {
                        Some(Event::Text(t)) if t.is_empty() => continue,
                        Some(Event::Text(t)) => {
                            let c =
                                meta.chunk(json!([meta.flavor.choice(Some(&t), None, true)]), None);
                            break Some((vec![c], (events, meta, StreamState::Running)));
                        }
                        Some(Event::Started { .. }) => continue,
                        Some(Event::Finished {
                            reason,
                            completion_tokens,
                            ..
                        }) => {
                            let mut out = vec![meta.chunk(
                                json!([meta.flavor.choice(None, Some(reason), true)]),
                                None,
                            )];
                            if meta.include_usage {
                                out.push(meta.chunk(
                                    json!([]),
                                    Some(usage(meta.prompt_tokens, completion_tokens)),
                                ));
                            }
                            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                            break Some((out, (events, meta, StreamState::Done)));
                        }
                        Some(Event::Failed(e)) => {
                            let err = ApiError::from(e).body();
                            let out = vec![Bytes::from(format!("data: {err}\n\n"))];
                            break Some((out, (events, meta, StreamState::Done)));
                        }
                        None => break None,
                    }
                },
            }
        },
    )
    .flat_map(|chunks| stream::iter(chunks.into_iter().filter(|c| !c.is_empty())))
    .map(Ok::<_, Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let valid = scheduler::validate_embeddings(scheduler::parse_body(&body)?)?;
    tracing::info!(uid = caller.uid, model = %valid.model, inputs = valid.inputs.len(), "embeddings request");
    let out = s.engine.embed(valid.model.clone(), valid.inputs).await?;
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if valid.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": valid.model,
        "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens},
    }))
    .into_response())
}
