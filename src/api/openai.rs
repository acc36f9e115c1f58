//! OpenAI-compatible routes: `/health`, `/v1/models`, `/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`.

use super::error::ApiError;
use super::history;
use super::{AppState, Caller};
use crate::engine::{Event, FinishReason, Prompt};
use crate::scheduler::{self, ValidGenerate};
use crate::storage::RequestStatus;
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
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let text = rejection.body_text();
        if text.contains("timed out") || text.contains("timeout") {
            ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                kind: "invalid_request_error",
                code: "body_timeout",
                message: "the request body did not arrive in time".into(),
                param: None,
            }
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
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
        "batching": s.pool.as_ref().map(|p| if p.engine_config().deterministic_batching {
            "deterministic"
        } else {
            "throughput"
        }),
        "models": s.engine.models().iter().map(|m| &m.name).collect::<Vec<_>>(),
        "loaded": s.engine.loaded().iter().map(|l| json!({
            "name": l.info.name,
            "placement": l.placement,
            "gpu_layers": l.info.gpu_layers,
            "n_layers": l.info.n_layers,
        })).collect::<Vec<_>>(),
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
    let valid = scheduler::validate_chat(
        scheduler::parse_body(&body, s.limits.max_json_depth)?,
        caller.uid,
        &s.limits,
    )?;
    generate(s, caller, valid, Flavor::Chat).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let valid = scheduler::validate_completion(
        scheduler::parse_body(&body, s.limits.max_json_depth)?,
        caller.uid,
        &s.limits,
    )?;
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
    count_status(metrics.as_deref(), &model, &result);
    result
}

/// Counts a generation request's answer status in the metrics (OpenAI and Ollama routes alike).
pub(crate) fn count_status(
    metrics: Option<&crate::metrics::Metrics>,
    model: &str,
    result: &Result<Response, ApiError>,
) {
    if let Some(m) = metrics {
        let status = match result {
            Ok(r) => r.status(),
            Err(e) => e.status,
        };
        m.request(model, status.as_u16());
    }
}

/// What is recorded about a request, gathered before it runs.
pub(crate) fn outcome_for(
    caller: &Caller,
    req: &crate::engine::GenerateRequest,
) -> history::Outcome {
    let prompt = match &req.prompt {
        Prompt::Chat(messages) => Value::Array(
            messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect(),
        ),
        Prompt::Text(t) => Value::String(t.clone()),
    };
    let sp = &req.sampling;
    history::Outcome {
        uid: caller.uid,
        model: req.model.clone(),
        params: json!({"temperature": sp.temperature, "top_p": sp.top_p, "top_k": sp.top_k,
            "min_p": sp.min_p, "presence_penalty": sp.presence_penalty,
            "frequency_penalty": sp.frequency_penalty, "seed": sp.seed,
            // Stop strings are the caller's words: only their number is kept in the clear.
            "max_tokens": req.max_tokens, "stop_strings": req.stop.len()}),
        prompt,
        created_at: crate::storage::now_unix(),
        prompt_tokens: 0,
        completion_tokens: 0,
        status: RequestStatus::Error,
        response: String::new(),
    }
}

/// Records a request that failed; the caller already gets the failure, so a store error here
/// is logged (and counted by the store) rather than replacing it.
pub(crate) async fn record_failure(s: &AppState, mut o: history::Outcome, status: RequestStatus) {
    o.status = status;
    let _ = history::record(s, o).await;
}

/// A generation whose prompt the engine accepted, with its record pending.
pub(crate) struct Generation {
    /// Events from the engine.
    pub events: UnboundedReceiver<Event>,
    /// Records the request when it ends (aborted if dropped first).
    pub recorder: Recorder,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
}

/// A non-streamed generation's result, after its record is durable.
pub(crate) struct Collected {
    pub text: String,
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub record_id: i64,
    pub store_micros: u128,
}

/// Queues a checked request and waits until the engine accepts its prompt, so that prompt
/// errors get a proper status code even when the answer is streamed. Shared by the OpenAI and
/// Ollama routes.
pub(crate) async fn start(
    s: &AppState,
    caller: Caller,
    request: crate::engine::GenerateRequest,
) -> Result<Generation, ApiError> {
    let mut outcome = outcome_for(&caller, &request);
    let mut events = s.engine.generate(request)?;
    let prompt_tokens = match events.recv().await {
        Some(Event::Started { prompt_tokens }) => prompt_tokens,
        Some(Event::Failed(e)) => {
            record_failure(s, outcome, RequestStatus::Error).await;
            return Err(e.into());
        }
        _ => return Err(crate::engine::EngineError::ShuttingDown.into()),
    };
    outcome.prompt_tokens = prompt_tokens;
    Ok(Generation {
        events,
        recorder: Recorder {
            state: s.clone(),
            outcome: Some(outcome),
        },
        prompt_tokens,
    })
}

impl Generation {
    /// Runs to the end and stores the record. The answer is released only once its record is
    /// durable: a failed write is reported to the caller, never dropped silently.
    pub(crate) async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut text = String::new();
        let (reason, prompt_tokens, completion_tokens) = loop {
            match self.events.recv().await {
                Some(Event::Text(t)) => {
                    self.recorder.push(&t);
                    text.push_str(&t);
                }
                Some(Event::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                }) => break (reason, prompt_tokens, completion_tokens),
                Some(Event::Failed(e)) => {
                    let _ = self.recorder.finish(RequestStatus::Error, 0).await;
                    return Err(e.into());
                }
                Some(Event::Started { .. }) => {}
                None => return Err(crate::engine::EngineError::ShuttingDown.into()),
            }
        };
        let stored = std::time::Instant::now();
        let record_id = self
            .recorder
            .finish(RequestStatus::Completed, completion_tokens)
            .await?;
        Ok(Collected {
            text,
            reason,
            prompt_tokens,
            completion_tokens,
            record_id,
            store_micros: stored.elapsed().as_micros(),
        })
    }
}

async fn run_generate(
    s: AppState,
    caller: Caller,
    valid: ValidGenerate,
    flavor: Flavor,
) -> Result<Response, ApiError> {
    let model = valid.request.model.clone();
    tracing::info!(uid = caller.uid, model = %model, stream = valid.stream, "generation request");
    let generation = start(&s, caller, valid.request).await?;
    let id = new_id(flavor.id_prefix());
    let created = now();
    if valid.stream {
        let prompt_tokens = generation.prompt_tokens;
        Ok(stream_response(
            generation.events,
            StreamMeta {
                id,
                created,
                model,
                flavor,
                include_usage: valid.include_usage,
                prompt_tokens,
            },
            generation.recorder,
        ))
    } else {
        let c = generation.collect().await?;
        let mut resp = Json(json!({
            "id": id,
            "object": flavor.object(false),
            "created": created,
            "model": model,
            "choices": [flavor.choice(Some(&c.text), Some(c.reason), false)],
            "usage": usage(c.prompt_tokens, c.completion_tokens),
            "inhouse_record_id": c.record_id,
        }))
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&c.record_id.to_string()) {
            resp.headers_mut().insert(RECORD_ID_HEADER, v);
        }
        if let Ok(v) = header::HeaderValue::from_str(&c.store_micros.to_string()) {
            resp.headers_mut().insert(STORE_TIME_HEADER, v);
        }
        Ok(resp)
    }
}

/// The response header that carries the id of the request's stored record.
pub const RECORD_ID_HEADER: &str = "x-inhouse-record-id";
/// The response header that says how long storing the record took, in microseconds (what the
/// encrypted store adds to the request; measured by the store benchmark).
pub const STORE_TIME_HEADER: &str = "x-inhouse-store-micros";

/// Records a streamed request: completed when the stream finishes, aborted when the client goes
/// away first (the body, and this with it, is dropped).
pub(crate) struct Recorder {
    state: AppState,
    outcome: Option<history::Outcome>,
}

impl Recorder {
    pub(crate) fn push(&mut self, text: &str) {
        if let Some(o) = &mut self.outcome {
            o.response.push_str(text);
        }
    }

    pub(crate) async fn finish(
        &mut self,
        status: RequestStatus,
        completion_tokens: u32,
    ) -> Result<i64, ApiError> {
        let mut o = self
            .outcome
            .take()
            .ok_or_else(|| ApiError::invalid("internal", "recorded twice"))?;
        o.status = status;
        o.completion_tokens = completion_tokens;
        history::record(&self.state, o).await
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut o) = self.outcome.take() {
            o.status = RequestStatus::Aborted;
            let state = self.state.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = history::record(&state, o).await;
                });
            }
        }
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
        sse(self.chunk_value(choices, usage))
    }

    fn chunk_value(&self, choices: Value, usage: Option<Value>) -> Value {
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
        v
    }
}

/// One server-sent event.
fn sse(v: Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

enum StreamState {
    Opening,
    Running,
    Done,
}

/// Server-sent events: a role chunk (chat), content chunks, a finish chunk, optionally a usage
/// chunk, then `data: [DONE]`. Dropping the body (client gone) drops `events`, which cancels the
/// generation in the engine.
fn stream_response(
    events: UnboundedReceiver<Event>,
    meta: StreamMeta,
    recorder: Recorder,
) -> Response {
    let body = stream::unfold(
        (events, meta, StreamState::Opening, recorder),
        |(mut events, meta, state, mut rec)| async move {
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
                    Some((vec![first], (events, meta, StreamState::Running, rec)))
                }
                StreamState::Running => loop {
                    match events.recv().await {
                        Some(Event::Text(t)) if t.is_empty() => continue,
                        Some(Event::Text(t)) => {
                            rec.push(&t);
                            let c =
                                meta.chunk(json!([meta.flavor.choice(Some(&t), None, true)]), None);
                            break Some((vec![c], (events, meta, StreamState::Running, rec)));
                        }
                        Some(Event::Started { .. }) => continue,
                        Some(Event::Finished {
                            reason,
                            completion_tokens,
                            ..
                        }) => {
                            let record_id = match rec
                                .finish(RequestStatus::Completed, completion_tokens)
                                .await
                            {
                                Ok(id) => id,
                                Err(e) => {
                                    // Reported in the stream, which then ends without
                                    // [DONE]: the client sees the request did not complete.
                                    let out = vec![sse(e.body())];
                                    break Some((out, (events, meta, StreamState::Done, rec)));
                                }
                            };
                            let mut last = meta.chunk_value(
                                json!([meta.flavor.choice(None, Some(reason), true)]),
                                None,
                            );
                            last["inhouse_record_id"] = json!(record_id);
                            let mut out = vec![sse(last)];
                            if meta.include_usage {
                                out.push(meta.chunk(
                                    json!([]),
                                    Some(usage(meta.prompt_tokens, completion_tokens)),
                                ));
                            }
                            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                            break Some((out, (events, meta, StreamState::Done, rec)));
                        }
                        Some(Event::Failed(e)) => {
                            let _ = rec.finish(RequestStatus::Error, 0).await;
                            let err = ApiError::from(e).body();
                            let out = vec![sse(err)];
                            break Some((out, (events, meta, StreamState::Done, rec)));
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

/// Embeds `inputs` and records the request (inputs sealed as its prompt); shared by the OpenAI
/// and Ollama routes.
pub(crate) async fn embed(
    s: &AppState,
    caller: Caller,
    model: &str,
    inputs: Vec<String>,
) -> Result<(crate::engine::Embeddings, i64), ApiError> {
    tracing::info!(uid = caller.uid, model = %model, inputs = inputs.len(), "embeddings request");
    let mut outcome = history::Outcome {
        uid: caller.uid,
        model: model.to_string(),
        params: json!({"endpoint": "embeddings", "inputs": inputs.len()}),
        prompt: json!(inputs),
        created_at: crate::storage::now_unix(),
        prompt_tokens: 0,
        completion_tokens: 0,
        status: RequestStatus::Error,
        response: String::new(),
    };
    let out = match s.engine.embed(model.to_string(), inputs).await {
        Ok(out) => out,
        Err(e) => {
            record_failure(s, outcome, RequestStatus::Error).await;
            return Err(e.into());
        }
    };
    outcome.status = RequestStatus::Completed;
    outcome.prompt_tokens = out.prompt_tokens;
    let record_id = history::record(s, outcome).await?;
    Ok((out, record_id))
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let valid =
        scheduler::validate_embeddings(scheduler::parse_body(&body, s.limits.max_json_depth)?)?;
    let (out, record_id) = embed(&s, caller, &valid.model, valid.inputs).await?;
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
        "inhouse_record_id": record_id,
    }))
    .into_response())
}
