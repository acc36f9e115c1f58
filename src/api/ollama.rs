//! Ollama-compatible routes on the same socket, for local tools that speak Ollama's API:
//! `/api/version`, `/api/tags`, `/api/show`, `/api/ps`, `/api/chat`, `/api/generate`,
//! `/api/embed`. Streaming is newline-delimited JSON, Ollama's default (`"stream": false` for
//! one object).
//!
//! Requests are translated into the OpenAI wire types and pass the same validation, limits,
//! engine and encrypted records as `/v1`.

use super::body::JsonBody;
use super::error::ApiError;
use super::generation::{self, ChoiceOut, Step};
use super::{AppState, Caller};
use crate::engine::{FinishReason, ModelInfo};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use inhouse_formats::tools::Delta;
use inhouse_formats::validate::{self, ChatWire, CompletionWire, ValidGenerate, ValidationError};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::time::{Instant, SystemTime};

/// RFC 3339 time, as Ollama writes it.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn details(m: &ModelInfo) -> Value {
    json!({
        "format": "gguf",
        "family": m.architecture,
        "families": [m.architecture],
        "parameter_size": format!("{:.0}M", m.n_params as f64 / 1e6),
        "quantization_level": "",
    })
}

fn model_entry(m: &ModelInfo) -> Value {
    let loaded = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(m.loaded_at);
    json!({
        "name": m.name,
        "model": m.name,
        "modified_at": rfc3339(loaded),
        "size": m.size_bytes,
        "digest": "",
        "details": details(m),
    })
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /api/tags`: the models served.
pub async fn tags(State(s): State<AppState>) -> Json<Value> {
    let served = s.engine.models();
    let upstreams = s.engine.upstreams();
    let mut models: Vec<Value> = served
        .iter()
        .map(|m| {
            let mut e = model_entry(m);
            super::openai::note_upstream(&mut e, &m.name, &upstreams);
            e
        })
        .collect();
    for (alias, target) in super::aliases::served(&s) {
        if let Some(m) = served.iter().find(|m| m.name == target) {
            let mut e = model_entry(m);
            e["name"] = json!(alias);
            e["model"] = json!(alias);
            e["alias_for"] = json!(target);
            models.push(e);
        }
    }
    Json(json!({"models": models}))
}

/// `GET /api/ps`: the models in memory, with their size and when they unload.
pub async fn ps(State(s): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = s
        .engine
        .loaded()
        .iter()
        .map(|m| {
            let mut e = model_entry(&m.info);
            e["size"] = json!(m.memory.total);
            let on_gpu = u64::from(m.info.gpu_layers.min(m.info.n_layers));
            e["size_vram"] = json!(m.memory.weights * on_gpu / u64::from(m.info.n_layers.max(1)));
            e["expires_at"] = json!(match m.expires_in_secs {
                Some(secs) => rfc3339(SystemTime::now() + std::time::Duration::from_secs(secs)),
                None => "9999-12-31T23:59:59Z".to_string(),
            });
            e
        })
        .collect();
    Json(json!({"models": models}))
}

/// `POST /api/show` body: Ollama accepts the model under either name.
#[derive(Debug, Deserialize)]
pub struct ShowBody {
    model: Option<String>,
    name: Option<String>,
}

/// `POST /api/show`: one model's details.
pub async fn show(
    State(s): State<AppState>,
    JsonBody(b): JsonBody<ShowBody>,
) -> Result<Json<Value>, ApiError> {
    let name = b
        .model
        .or(b.name)
        .ok_or_else(|| ValidationError::MissingField("model is required".into()))?;
    let wanted = super::aliases::resolve(&s, &name).unwrap_or_else(|| name.clone());
    let m = s
        .engine
        .models()
        .into_iter()
        .find(|m| m.name == wanted)
        .ok_or_else(|| ApiError::from(crate::engine::EngineError::UnknownModel(name.clone())))?;
    let m = &m;
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": m.chat_template.clone().unwrap_or_default(),
        "details": details(m),
        "model_info": {
            "general.architecture": m.architecture,
            "general.parameter_count": m.n_params,
            format!("{}.context_length", m.architecture): m.n_ctx_train,
            format!("{}.embedding_length", m.architecture): m.n_embd,
        },
    })))
}

/// Ollama's `options` mapped onto OpenAI's sampling fields; unknown options are ignored, as
/// Ollama does.
fn sampling_from(body: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    if let Some(Value::Object(opts)) = body.get("options") {
        for (from, to) in [
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("min_p", "min_p"),
            ("seed", "seed"),
            ("num_predict", "max_tokens"),
            ("stop", "stop"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"),
        ] {
            if let Some(v) = opts.get(from) {
                out.insert(to.into(), v.clone());
            }
        }
    }
    // Ollama streams unless told otherwise.
    out.insert(
        "stream".into(),
        body.get("stream").cloned().unwrap_or(Value::Bool(true)),
    );
    // `format`: "json", or a JSON schema.
    match body.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(Value::String(f)) if f.is_empty() => {}
        Some(schema @ Value::Object(_)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema",
                       "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        // Anything else reaches validation as an invalid response_format, which names it.
        Some(other) => {
            out.insert("response_format".into(), json!({"type": other}));
        }
    }
    // `think`: true/false, or Ollama's effort levels.
    match body.get("think") {
        Some(Value::Bool(b)) => {
            out.insert("enable_thinking".into(), json!(b));
        }
        Some(Value::String(level)) => {
            out.insert("reasoning_effort".into(), json!(level));
        }
        _ => {}
    }
    for field in ["logprobs", "top_logprobs"] {
        if let Some(v) = body.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// Ollama's chat messages in OpenAI's shape: an assistant's `tool_calls` get ids (Ollama has
/// none) and a `tool` message answers the oldest call not answered yet (or names its
/// `tool_name`).
fn messages_from(messages: Option<&Value>) -> Value {
    let Some(Value::Array(list)) = messages else {
        return messages.cloned().unwrap_or(Value::Null);
    };
    let mut unanswered: std::collections::VecDeque<(String, String)> = Default::default();
    let mut n = 0usize;
    let out = list
        .iter()
        .map(|m| {
            let mut m = m.clone();
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            if role == "assistant" {
                if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                    for c in calls.iter_mut() {
                        let id = format!("call_{n}");
                        n += 1;
                        let name = c
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        if c.get("id").is_none() {
                            c["id"] = json!(id);
                        }
                        if c.get("type").is_none() {
                            c["type"] = json!("function");
                        }
                        let id = c["id"].as_str().unwrap_or_default().to_string();
                        unanswered.push_back((id, name));
                    }
                }
            } else if role == "tool" && m.get("tool_call_id").is_none() {
                let wanted = m
                    .get("tool_name")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let at = match &wanted {
                    Some(name) => unanswered.iter().position(|(_, n)| n == name),
                    None => (!unanswered.is_empty()).then_some(0),
                };
                let (id, name) = at
                    .and_then(|i| unanswered.remove(i))
                    .unwrap_or_else(|| ("call_unknown".into(), wanted.unwrap_or_default()));
                m["tool_call_id"] = json!(id);
                if !name.is_empty() {
                    m["name"] = json!(name);
                }
                if let Some(o) = m.as_object_mut() {
                    o.remove("tool_name");
                }
            }
            m
        })
        .collect();
    Value::Array(out)
}

/// The OpenAI wire type an Ollama body was translated into.
fn into_wire<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ValidationError> {
    serde_json::from_value(v).map_err(|e| ValidationError::InvalidType(e.to_string()))
}

/// `POST /api/chat`.
pub async fn chat(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let mut wire = sampling_from(&body);
    wire["model"] = body.get("model").cloned().unwrap_or(Value::Null);
    wire["messages"] = messages_from(body.get("messages"));
    if let Some(tools) = body.get("tools") {
        wire["tools"] = tools.clone();
    }
    let wire: ChatWire = into_wire(wire)?;
    let valid = validate::validate_chat(wire, caller.uid, &s.limits)?;
    apply_keep_alive(&s, &caller, &body, &valid.request.model)?;
    respond(s, caller, valid, Kind::Chat).await
}

/// `POST /api/generate`: the prompt goes through the model's chat template (with `system`,
/// if given) unless `raw` is true, as in Ollama.
pub async fn generate(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let mut wire = sampling_from(&body);
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    let prompt = body.get("prompt").cloned().unwrap_or(Value::Null);
    wire["model"] = model;
    let valid = if body.get("raw") == Some(&Value::Bool(true)) {
        wire["prompt"] = prompt;
        let w: CompletionWire = into_wire(wire)?;
        validate::validate_completion(w, caller.uid, &s.limits)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = body.get("system") {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        wire["messages"] = Value::Array(messages);
        let w: ChatWire = into_wire(wire)?;
        validate::validate_chat(w, caller.uid, &s.limits)?
    };
    apply_keep_alive(&s, &caller, &body, &valid.request.model)?;
    respond(s, caller, valid, Kind::Generate).await
}

/// Ollama's `keep_alive`: how long the model stays loaded after this request. A number of
/// seconds or a duration string (`"90s"`, `"5m"`, `"1h"`); 0 unloads it once idle, a negative
/// value keeps it until evicted for room.
fn parse_keep_alive(v: &Value) -> Result<Option<std::time::Duration>, ValidationError> {
    let bad = || {
        ValidationError::param(
            "keep_alive",
            "keep_alive must be seconds or a duration like \"5m\"",
        )
    };
    let secs: f64 = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        Value::String(t) => {
            let t = t.trim();
            let (num, mult) = match t.char_indices().last() {
                Some((i, 's')) => (&t[..i], 1.0),
                Some((i, 'm')) => (&t[..i], 60.0),
                Some((i, 'h')) => (&t[..i], 3600.0),
                _ => (t, 1.0),
            };
            num.parse::<f64>().map_err(|_| bad())? * mult
        }
        _ => return Err(bad()),
    };
    if !secs.is_finite() {
        return Err(bad());
    }
    Ok((secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs.min(1e9))))
}

/// Ollama's `keep_alive`: how long the model stays loaded after this request. A model is
/// shared by every caller, so only an admin's request changes it; anyone else's value is
/// checked (a malformed one is a 400, as in Ollama) and otherwise ignored, so that one user
/// cannot pin a model in memory for everyone or have it unloaded under others.
fn apply_keep_alive(
    s: &AppState,
    caller: &Caller,
    body: &Map<String, Value>,
    model: &str,
) -> Result<(), ApiError> {
    if let (Some(v), Some(pool)) = (body.get("keep_alive"), s.engine.pool()) {
        let keep = parse_keep_alive(v)?;
        if !s.roles.of(caller).allows(super::auth::Role::Admin) {
            tracing::debug!(uid = caller.uid, "keep_alive from a non-admin ignored");
        } else {
            // An alias's keep-alive is its target's: that is what stays loaded.
            let model = super::aliases::resolve(s, model).unwrap_or_else(|| model.to_string());
            if pool.serves(&model) {
                pool.set_keep_alive(&model, keep);
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

impl Kind {
    fn piece(self, model: &str, c: &ChoiceOut, done: bool) -> Value {
        let mut v = json!({"model": model, "created_at": rfc3339(SystemTime::now()), "done": done});
        match self {
            Kind::Chat => {
                let mut m = json!({"role": "assistant", "content": c.content});
                if !c.reasoning.is_empty() {
                    m["thinking"] = json!(c.reasoning);
                }
                if !c.calls.is_empty() {
                    m["tool_calls"] = c
                        .calls
                        .iter()
                        .map(|call| {
                            let args: Value =
                                serde_json::from_str(&call.arguments).unwrap_or(json!({}));
                            json!({"function": {"name": call.name, "arguments": args}})
                        })
                        .collect();
                }
                v["message"] = m;
            }
            Kind::Generate => {
                v["response"] = json!(c.content);
                if !c.reasoning.is_empty() {
                    v["thinking"] = json!(c.reasoning);
                }
            }
        }
        if !c.logprobs.is_empty() {
            v["logprobs"] = super::openai::logprob_content(&c.logprobs).into();
        }
        v
    }
}

fn finish_fields(
    v: &mut Value,
    reason: Option<crate::engine::FinishReason>,
    prompt: u32,
    eval: u32,
    started: Instant,
) {
    // Ollama says `stop` for an answer of tool calls too.
    let reason = match reason {
        Some(FinishReason::Length) => "length",
        _ => "stop",
    };
    v["done_reason"] = json!(reason);
    v["total_duration"] = json!(started.elapsed().as_nanos() as u64);
    v["prompt_eval_count"] = json!(prompt);
    v["eval_count"] = json!(eval);
}

/// Runs a checked generation and answers in Ollama's shape: one object, or NDJSON pieces
/// ending with a `done` piece (a failure ends the stream with an `{"error": …}` line). Tool
/// calls are sent whole, in one piece when the answer ends, as Ollama does.
async fn respond(
    s: AppState,
    caller: Caller,
    valid: ValidGenerate,
    kind: Kind,
) -> Result<Response, ApiError> {
    let model = valid.request.model.clone();
    generation::counted(&s, &model, async {
        let started = Instant::now();
        let generation = generation::start(&s, caller, valid.request).await?;
        if !valid.stream {
            let mut c = generation.collect().await?;
            let choice = c.choices.swap_remove(0);
            let mut v = kind.piece(&model, &choice, true);
            finish_fields(
                &mut v,
                choice.reason,
                c.prompt_tokens,
                c.completion_tokens,
                started,
            );
            v["inhouse_record_id"] = json!(c.record_id);
            return Ok(Json(v).into_response());
        }
        let streamed_model = model.clone();
        // The calls of the answer so far (sent whole at its end) and why it ended.
        let state = (ChoiceOut::default(), None);
        let body = stream::unfold(Some((generation, state)), move |state| {
            let model = streamed_model.clone();
            async move {
                let (mut g, (mut calls, mut reason)) = state?;
                loop {
                    let line = match g.next().await? {
                        Step::Delta {
                            deltas, logprobs, ..
                        } => {
                            let mut piece = ChoiceOut::default();
                            let (text, tool): (Vec<Delta>, Vec<Delta>) =
                                deltas.into_iter().partition(|d| {
                                    matches!(d, Delta::Content(_) | Delta::Reasoning(_))
                                });
                            calls.add(tool, vec![]);
                            if text.is_empty() && logprobs.is_empty() {
                                continue;
                            }
                            piece.add(text, logprobs);
                            ndjson(&kind.piece(&model, &piece, false))
                        }
                        Step::ChoiceEnd { reason: r, .. } => {
                            reason = Some(r);
                            if calls.calls.is_empty() {
                                continue;
                            }
                            let piece = std::mem::take(&mut calls);
                            ndjson(&kind.piece(&model, &piece, false))
                        }
                        Step::Finished {
                            prompt_tokens,
                            completion_tokens,
                            record_id,
                            ..
                        } => {
                            let mut v = kind.piece(&model, &ChoiceOut::default(), true);
                            finish_fields(
                                &mut v,
                                reason,
                                prompt_tokens,
                                completion_tokens,
                                started,
                            );
                            v["inhouse_record_id"] = json!(record_id);
                            return Some((ndjson(&v), None));
                        }
                        Step::Failed(e) => {
                            return Some((ndjson(&json!({"error": e.message})), None))
                        }
                    };
                    return Some((line, Some((g, (calls, reason)))));
                }
            }
        })
        .map(Ok::<_, Infallible>);
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
    })
    .await
}

fn ndjson(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

/// `POST /api/embed`.
pub async fn embed(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let wire = json!({"model": body.get("model"), "input": body.get("input")});
    let valid = validate::validate_embeddings(into_wire(wire)?)?;
    let (out, record_id) = generation::embed(&s, caller, &valid.model, valid.inputs).await?;
    Ok(Json(json!({
        "model": valid.model,
        "embeddings": out.vectors,
        "prompt_eval_count": out.prompt_tokens,
        "inhouse_record_id": record_id,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_862_615);
        assert_eq!(rfc3339(t), "2026-11-28T10:43:35Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn options_map_to_openai_fields() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"options":{"temperature":0,"num_predict":5,"seed":3,"mirostat":1},"stream":false}"#,
        )
        .unwrap();
        let w = sampling_from(&body);
        assert_eq!(w["max_tokens"], 5);
        assert_eq!(w["temperature"], 0);
        assert_eq!(w["stream"], false);
        assert!(w.get("mirostat").is_none());
    }
}
