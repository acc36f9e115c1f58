//! OpenAI-compatible routes: `/health`, `/v1/models`, `/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`.
//!
//! Chat completions take one extension, `file_search` (`{"vector_store_ids": […],
//! "max_num_results"?, "filters"?, "ranking_options"?}`): the search runs before generating, as
//! the Responses API's `file_search` tool does ([`super::responses::sources`]), and the answer's
//! message carries `annotations` (`file_citation`s; streamed, on each choice's closing chunk).

use super::body::JsonBody;
use super::error::ApiError;
use super::generation::{self, ChoiceOut, Generation, Step};
use super::responses::sources::Grounding;
use super::{AppState, Caller};
use crate::engine::{FinishReason, SampledLogprob, TokenLogprob};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures_util::stream::{self, StreamExt};
use inhouse_formats::tools::Delta;
use inhouse_formats::validate::{self, ChatWire, CompletionWire, EmbeddingsWire, ValidGenerate};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// `GET /health`: liveness, version, backend and models.
pub async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": s.engine.backend(),
        "cpu": s.engine.cpu().map(|c| json!({"variant": c.variant, "features": c.features})),
        "batching": s.engine.pool().map(|p| if p.engine_config().deterministic_batching {
            "deterministic"
        } else {
            "throughput"
        }),
        "models": s.engine.models().iter().map(|m| &m.name).collect::<Vec<_>>(),
        "upstreams": s.engine.upstreams().iter().map(|u| json!({
            "name": u.name,
            "model": u.model,
            "state": u.state,
            "in_flight": u.in_flight,
            "max_concurrency": u.max_concurrency,
        })).collect::<Vec<_>>(),
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

/// An alias's entry: its target's, under the alias's id, with `alias_for`.
fn alias_object(alias: &str, target: &crate::engine::ModelInfo) -> Value {
    let mut v = model_object(target);
    v["id"] = json!(alias);
    v["alias_for"] = json!(target.name);
    v
}

/// Adds `"upstream": {model, state}` to an upstream model's entry.
pub(crate) fn note_upstream(
    v: &mut Value,
    name: &str,
    upstreams: &[crate::upstream::UpstreamStatus],
) {
    if let Some(u) = upstreams.iter().find(|u| u.name == name) {
        v["upstream"] = json!({"model": u.model, "state": u.state});
    }
}

/// `GET /v1/models`: every model served, then every alias whose target is served.
pub async fn list_models(State(s): State<AppState>) -> Json<Value> {
    let models = s.engine.models();
    let upstreams = s.engine.upstreams();
    let mut data: Vec<Value> = models
        .iter()
        .map(|m| {
            let mut v = model_object(m);
            note_upstream(&mut v, &m.name, &upstreams);
            v
        })
        .collect();
    for (alias, target) in super::aliases::served(&s) {
        if let Some(m) = models.iter().find(|m| m.name == target) {
            data.push(alias_object(&alias, m));
        }
    }
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`.
pub async fn get_model(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let target = super::aliases::resolve(&s, &id);
    let name = target.as_deref().unwrap_or(&id);
    s.engine
        .models()
        .iter()
        .find(|m| m.name == name)
        .map(|m| match &target {
            Some(_) => Json(alias_object(&id, m)),
            None => {
                let mut v = model_object(m);
                note_upstream(&mut v, &m.name, &s.engine.upstreams());
                Json(v)
            }
        })
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

    /// A whole choice of a non-streamed answer.
    fn choice(self, index: usize, c: &ChoiceOut, asked_logprobs: bool) -> Value {
        let logprobs = match (asked_logprobs, self) {
            (false, _) => Value::Null,
            (true, Flavor::Chat) => chat_logprobs(&c.logprobs),
            (true, Flavor::Text) => text_logprobs(&c.logprobs, 0),
        };
        match self {
            Flavor::Chat => json!({"index": index, "message": message(c),
                "logprobs": logprobs, "finish_reason": c.reason}),
            Flavor::Text => json!({"index": index, "text": c.content,
                "logprobs": logprobs, "finish_reason": c.reason}),
        }
    }

    /// The streamed chunks' choices for one step of one choice: one per delta (logprobs go with
    /// the first), or one holding only logprobs.
    fn delta_choices(
        self,
        index: u32,
        deltas: &[Delta],
        logprobs: &[SampledLogprob],
        offset: &mut usize,
    ) -> Vec<Value> {
        let mut lp = if logprobs.is_empty() {
            Value::Null
        } else {
            match self {
                Flavor::Chat => chat_logprobs(logprobs),
                Flavor::Text => text_logprobs(logprobs, *offset),
            }
        };
        let mut out = Vec::new();
        let mut push = |delta_or_text: Value, lp: Value| {
            out.push(match self {
                Flavor::Chat => json!({"index": index, "delta": delta_or_text,
                    "logprobs": lp, "finish_reason": null}),
                Flavor::Text => json!({"index": index, "text": delta_or_text,
                    "logprobs": lp, "finish_reason": null}),
            });
        };
        if deltas.is_empty() {
            let empty = match self {
                Flavor::Chat => json!({}),
                Flavor::Text => json!(""),
            };
            push(empty, lp);
            return out;
        }
        for d in deltas {
            let v = match (self, d) {
                (Flavor::Text, Delta::Content(t)) => {
                    *offset += t.len();
                    json!(t)
                }
                // Plain completions have no tools or template: everything is text.
                (Flavor::Text, _) => continue,
                (Flavor::Chat, Delta::Content(t)) => json!({"content": t}),
                (Flavor::Chat, Delta::Reasoning(t)) => json!({"reasoning_content": t}),
                (Flavor::Chat, Delta::CallStart { index, id, name }) => json!({"tool_calls": [{
                    "index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                (Flavor::Chat, Delta::CallArguments { index, fragment }) => {
                    json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
                }
            };
            push(v, std::mem::take(&mut lp));
        }
        out
    }

    /// A choice's closing chunk.
    fn end_choice(self, index: u32, reason: FinishReason) -> Value {
        match self {
            Flavor::Chat => {
                json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason})
            }
            Flavor::Text => {
                json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason})
            }
        }
    }
}

/// The assistant message of a chat answer.
fn message(c: &ChoiceOut) -> Value {
    let mut m = json!({"role": "assistant", "content": c.content});
    if !c.calls.is_empty() {
        if c.content.trim().is_empty() {
            m["content"] = Value::Null;
        }
        m["tool_calls"] = c
            .calls
            .iter()
            .map(|call| {
                json!({"id": call.id, "type": "function",
                       "function": {"name": call.name, "arguments": call.arguments}})
            })
            .collect();
    }
    if !c.reasoning.is_empty() {
        m["reasoning_content"] = json!(c.reasoning);
    }
    m
}

fn logprob_entry(t: &TokenLogprob) -> Value {
    json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes})
}

/// One entry per sampled token: `{token, logprob, bytes, top_logprobs}` (OpenAI's chat
/// `logprobs.content`, and Ollama's `logprobs` as they are).
pub(crate) fn logprob_content(lps: &[SampledLogprob]) -> Vec<Value> {
    lps.iter()
        .map(|l| {
            let mut v = logprob_entry(&l.sampled);
            v["top_logprobs"] = l.top.iter().map(logprob_entry).collect();
            v
        })
        .collect()
}

/// Chat completions' `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(lps: &[SampledLogprob]) -> Value {
    json!({"content": logprob_content(lps), "refusal": null})
}

/// Legacy completions' `logprobs`: parallel lists, `text_offset` counted in bytes from
/// `offset`.
fn text_logprobs(lps: &[SampledLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    for l in lps {
        tokens.push(json!(l.sampled.token));
        token_logprobs.push(json!(l.sampled.logprob));
        let alternatives: serde_json::Map<String, Value> = l
            .top
            .iter()
            .map(|t| (t.token.clone(), json!(t.logprob)))
            .collect();
        top.push(Value::Object(alternatives));
        offsets.push(json!(offset));
        offset += l.sampled.bytes.len();
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
           "text_offset": offsets})
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(mut wire): JsonBody<ChatWire>,
) -> Result<Response, ApiError> {
    let search = wire
        .file_search
        .take()
        .map(|v| validate::validate_file_search("file_search", "file_search", &v))
        .transpose()?;
    let mut valid = validate::validate_chat(wire, caller.uid, &s.limits)?;
    let grounding = match &search {
        Some(fs) => Some(
            super::responses::sources::retrieve_into(&s, &caller, fs, &mut valid.request).await?,
        ),
        None => None,
    };
    generate(s, caller, valid, Flavor::Chat, grounding).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(wire): JsonBody<CompletionWire>,
) -> Result<Response, ApiError> {
    let valid = validate::validate_completion(wire, caller.uid, &s.limits)?;
    generate(s, caller, valid, Flavor::Text, None).await
}

/// Runs a checked generation request and answers it in OpenAI's shape; `grounding`, the
/// sources a search put into its prompt, gives each chat message its `annotations`.
async fn generate(
    s: AppState,
    caller: Caller,
    valid: ValidGenerate,
    flavor: Flavor,
    grounding: Option<Grounding>,
) -> Result<Response, ApiError> {
    let model = valid.request.model.clone();
    let asked_logprobs = valid.request.logprobs.is_some();
    let n = valid.request.n.max(1);
    generation::counted(&s, &model, async {
        let generation = generation::start(&s, caller, valid.request).await?;
        let id = new_id(flavor.id_prefix());
        let created = now();
        if valid.stream {
            let meta = StreamMeta {
                id,
                created,
                model: model.clone(),
                flavor,
                include_usage: valid.include_usage,
                n,
                grounding,
            };
            return Ok(stream_response(generation, meta));
        }
        let c = generation.collect().await?;
        let choices: Vec<Value> = c
            .choices
            .iter()
            .enumerate()
            .map(|(i, choice)| {
                let mut v = flavor.choice(i, choice, asked_logprobs);
                if let Some(g) = &grounding {
                    v["message"]["annotations"] = g.annotations(&choice.content);
                }
                v
            })
            .collect();
        let mut resp = Json(json!({
            "id": id,
            "object": flavor.object(false),
            "created": created,
            "model": model,
            "choices": choices,
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
    })
    .await
}

/// The response header that carries the id of the request's stored record.
pub const RECORD_ID_HEADER: &str = "x-inhouse-record-id";
/// The response header that says how long storing the record took, in microseconds (what the
/// encrypted store adds to the request; measured by the store benchmark).
pub const STORE_TIME_HEADER: &str = "x-inhouse-store-micros";

struct StreamMeta {
    id: String,
    created: u64,
    model: String,
    flavor: Flavor,
    include_usage: bool,
    n: u32,
    /// The sources of a chat with `file_search`: each choice's closing chunk cites them.
    grounding: Option<Grounding>,
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
    Running {
        /// Closing chunks of the choices that ended, sent with the record id once all have.
        ends: Vec<Value>,
        /// Bytes of text streamed so far per choice (legacy logprobs' `text_offset`).
        offsets: Vec<usize>,
        /// Each choice's content so far, kept when its citations are to be found.
        texts: Vec<String>,
    },
    Done,
}

/// Server-sent events: a role chunk (chat), content chunks, a finish chunk per choice,
/// optionally a usage chunk, then `data: [DONE]`. A failure (of the generation or of storing
/// its record) is sent as an error event and the stream ends without `[DONE]`, so the client
/// sees the request did not complete. Dropping the body (client gone) drops the generation,
/// which cancels it in the engine and records it as aborted.
fn stream_response(generation: Generation, meta: StreamMeta) -> Response {
    let body = stream::unfold(
        (generation, meta, StreamState::Opening),
        |(mut g, meta, state)| async move {
            match state {
                StreamState::Done => None,
                StreamState::Opening => {
                    let first = match meta.flavor {
                        Flavor::Chat => meta.chunk(
                            (0..meta.n)
                                .map(|i| {
                                    json!({"index": i,
                                        "delta": {"role": "assistant", "content": ""},
                                        "logprobs": null, "finish_reason": null})
                                })
                                .collect(),
                            None,
                        ),
                        Flavor::Text => Bytes::new(),
                    };
                    let running = StreamState::Running {
                        ends: Vec::new(),
                        offsets: vec![0; meta.n as usize],
                        texts: vec![String::new(); meta.n as usize],
                    };
                    Some((vec![first], (g, meta, running)))
                }
                StreamState::Running {
                    mut ends,
                    mut offsets,
                    mut texts,
                } => match g.next().await? {
                    Step::Delta {
                        choice,
                        deltas,
                        logprobs,
                    } => {
                        if let (Some(_), Some(t)) =
                            (&meta.grounding, texts.get_mut(choice as usize))
                        {
                            for d in &deltas {
                                if let Delta::Content(c) = d {
                                    t.push_str(c);
                                }
                            }
                        }
                        let mut offset = offsets.get(choice as usize).copied().unwrap_or(0);
                        let out = meta
                            .flavor
                            .delta_choices(choice, &deltas, &logprobs, &mut offset)
                            .into_iter()
                            .map(|c| meta.chunk(json!([c]), None))
                            .collect();
                        if let Some(o) = offsets.get_mut(choice as usize) {
                            *o = offset;
                        }
                        let running = StreamState::Running {
                            ends,
                            offsets,
                            texts,
                        };
                        Some((out, (g, meta, running)))
                    }
                    Step::ChoiceEnd { choice, reason } => {
                        let mut end = meta.flavor.end_choice(choice, reason);
                        if let (Some(gr), Some(t)) = (&meta.grounding, texts.get(choice as usize)) {
                            end["delta"]["annotations"] = gr.annotations(t);
                        }
                        ends.push(meta.chunk_value(json!([end]), None));
                        let running = StreamState::Running {
                            ends,
                            offsets,
                            texts,
                        };
                        Some((vec![], (g, meta, running)))
                    }
                    Step::Finished {
                        prompt_tokens,
                        completion_tokens,
                        record_id,
                        ..
                    } => {
                        if let Some(last) = ends.last_mut() {
                            last["inhouse_record_id"] = json!(record_id);
                        }
                        let mut out: Vec<Bytes> = ends.into_iter().map(sse).collect();
                        if meta.include_usage {
                            out.push(
                                meta.chunk(
                                    json!([]),
                                    Some(usage(prompt_tokens, completion_tokens)),
                                ),
                            );
                        }
                        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                        Some((out, (g, meta, StreamState::Done)))
                    }
                    Step::Failed(e) => {
                        Some((vec![sse(json!(e.body()))], (g, meta, StreamState::Done)))
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
    JsonBody(wire): JsonBody<EmbeddingsWire>,
) -> Result<Response, ApiError> {
    let valid = validate::validate_embeddings(wire)?;
    let (out, record_id) = generation::embed(&s, caller, &valid.model, valid.inputs).await?;
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
