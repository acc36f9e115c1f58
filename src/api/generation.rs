//! One request lifecycle for every protocol: start a checked generation, follow its events,
//! record it sealed, and embed. The OpenAI and Ollama route files only translate wire shapes
//! around what this module does.
//!
//! A generation's record is a [`NewRecord`] from the moment its prompt is accepted: the answer
//! text accumulates in it, and it is stored exactly once — completed, failed, or aborted when
//! the client goes away first. An answer is released only once its record is durable: a failed
//! write is reported to the caller, never dropped silently.

use super::error::ApiError;
use super::{AppState, Caller};
use crate::engine::{
    ChatMessage, EngineError, Event, EventStream, FinishReason, GenerateRequest, Prompt,
    SampledLogprob,
};
use crate::storage::{NewRecord, RequestStatus};
use axum::response::Response;
use inhouse_formats::request::{ResponseFormat, Tool, ToolChoice};
use inhouse_formats::tools::{Delta, OutputParser, ParserConfig};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// Counts a generation request's answer status in the metrics (OpenAI and Ollama routes alike).
pub(crate) async fn counted(
    s: &AppState,
    model: &str,
    answer: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let result = answer.await;
    if let Some(m) = s.engine.metrics() {
        let status = match &result {
            Ok(r) => r.status(),
            Err(e) => e.status,
        };
        m.request(model, status.as_u16());
    }
    result
}

/// The record of a request, built before it runs: metadata in clear, the prompt to be sealed.
/// Tool definitions, tool calls and results, and a response schema are the caller's data: they
/// are sealed with the prompt, and the clear metadata says only how many there were.
fn new_record(caller: &Caller, req: &GenerateRequest) -> NewRecord {
    let messages = match &req.prompt {
        Prompt::Chat(messages) => Value::Array(messages.iter().map(message_json).collect()),
        Prompt::Text(t) => Value::String(t.clone()),
    };
    let schema = match &req.format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(json!({"type": "json_object"})),
        ResponseFormat::JsonSchema { name, schema } => {
            Some(json!({"type": "json_schema", "name": name, "schema": schema}))
        }
    };
    let prompt = match (&req.tools, &schema) {
        (None, None) => messages,
        _ => json!({
            "messages": messages,
            "tools": req.tools.as_ref().map(|t| t.tools.iter().map(|t| json!({
                "name": t.name, "description": t.description, "parameters": t.parameters,
            })).collect::<Vec<_>>()),
            "tool_choice": req.tools.as_ref().map(|t| format!("{:?}", t.choice)),
            "response_format": schema,
        }),
    };
    let sp = &req.sampling;
    let params = json!({"temperature": sp.temperature, "top_p": sp.top_p, "top_k": sp.top_k,
        "min_p": sp.min_p, "presence_penalty": sp.presence_penalty,
        "frequency_penalty": sp.frequency_penalty, "seed": sp.seed,
        // Stop strings are the caller's words: only their number is kept in the clear.
        "max_tokens": req.max_tokens, "stop_strings": req.stop.len(),
        "n": req.n, "logprobs": req.logprobs.map(|l| l.top),
        "logit_bias_entries": req.logit_bias.len(),
        "tools": req.tools.as_ref().map_or(0, |t| t.tools.len()),
        "schema": !matches!(req.format, ResponseFormat::Text)});
    pending_record(caller, &req.model, params, prompt)
}

/// A history message as the record keeps it.
pub(crate) fn message_json(m: &ChatMessage) -> Value {
    let mut v = json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments}))
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    v
}

/// A message as [`message_json`] wrote it; `None` for anything else.
pub(crate) fn message_from_json(v: &Value) -> Option<ChatMessage> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let mut tool_calls = Vec::new();
    if let Some(calls) = v.get("tool_calls") {
        for c in calls.as_array()? {
            tool_calls.push(inhouse_formats::request::ToolCall {
                id: c.get("id")?.as_str()?.to_string(),
                name: c.get("name")?.as_str()?.to_string(),
                arguments: c.get("arguments")?.clone(),
            });
        }
    }
    Some(ChatMessage {
        role: text("role")?,
        content: text("content")?,
        tool_calls,
        tool_call_id: text("tool_call_id"),
        name: text("name"),
    })
}

/// How a Responses API request is recorded: its own sealed prompt shape, extra clear metadata,
/// the link that makes it a stored response (when `store`), and the output items its answer is
/// sealed as.
pub(crate) struct ResponseRecord {
    /// The sealed prompt.
    pub prompt: Value,
    /// Merged into the clear parameters.
    pub params: Value,
    /// The stored response's id, when kept.
    pub link: Option<crate::storage::ResponseLink>,
    /// Built from the first choice's pieces; sealed as the response.
    pub items: super::responses::Items,
}

fn pending_record(caller: &Caller, model: &str, params: Value, prompt: Value) -> NewRecord {
    NewRecord {
        uid: caller.uid,
        model: model.to_string(),
        params_json: params.to_string(),
        created_at: crate::storage::now_unix(),
        finished_at: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        status: RequestStatus::Error,
        prompt_text: prompt.to_string(),
        response_text: String::new(),
    }
}

/// Stores a request's record and its audit event (one transaction); returns the record id.
async fn store(s: &AppState, mut rec: NewRecord, status: RequestStatus) -> Result<i64, ApiError> {
    rec.status = status;
    rec.finished_at = Some(crate::storage::now_unix());
    let uid = rec.uid;
    s.store.record_request_audited(rec).await.map_err(|e| {
        tracing::error!(error = %e, kind = e.kind(), uid, "request record not stored");
        ApiError::from(e)
    })
}

/// Stores a completed Responses request's record with its public id and audit event.
async fn store_response(
    s: &AppState,
    mut rec: NewRecord,
    link: crate::storage::ResponseLink,
) -> Result<i64, ApiError> {
    rec.status = RequestStatus::Completed;
    rec.finished_at = Some(crate::storage::now_unix());
    let uid = rec.uid;
    s.store.record_response(rec, link).await.map_err(|e| {
        tracing::error!(error = %e, kind = e.kind(), uid, "response record not stored");
        ApiError::from(e)
    })
}

/// A generation whose prompt the engine accepted, with its record pending.
pub(crate) struct Generation {
    events: EventStream,
    recorder: Recorder,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Each choice's parser and what it produced so far.
    choices: Vec<ChoiceState>,
    /// Steps decided but not yet returned.
    queued: VecDeque<Step>,
    /// Tokens generated, all choices together.
    completion_tokens: u32,
    /// The caller's concurrency held by choices beyond the first, until the answer ends.
    _choices_held: Vec<super::limits::Counted>,
    /// A Responses request's output items (first choice), sealed as its response.
    items: Option<super::responses::Items>,
    /// Why the first choice ended.
    first_reason: Option<FinishReason>,
}

/// One choice while it runs.
struct ChoiceState {
    parser: OutputParser,
    /// The text as the model wrote it (markers and all), for the record.
    raw: String,
    /// Tool calls started.
    calls: usize,
    done: bool,
}

/// What a generation says next, in the terms every protocol answers with.
pub(crate) enum Step {
    /// More of one choice's answer: content, reasoning and tool-call pieces (parsed from the
    /// model's text with its template's formats), and the log-probabilities of its tokens.
    Delta {
        /// Which choice.
        choice: u32,
        /// What it adds (never empty, unless `logprobs` is not).
        deltas: Vec<Delta>,
        /// Log-probabilities of the tokens behind it, when asked for.
        logprobs: Vec<SampledLogprob>,
    },
    /// One choice ended (`tool_calls` when its answer holds calls).
    ChoiceEnd {
        /// Which choice.
        choice: u32,
        /// Why.
        reason: FinishReason,
    },
    /// Every choice ended and the record is stored.
    Finished {
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// Tokens generated, all choices together.
        completion_tokens: u32,
        /// The stored record.
        record_id: i64,
        /// How long storing the record took.
        store_micros: u128,
    },
    /// The generation failed, or its record could not be stored: the request did not complete.
    Failed(ApiError),
}

/// A tool call in an answer, its arguments as JSON text.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallOut {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One choice of a non-streamed answer.
#[derive(Debug, Default)]
pub(crate) struct ChoiceOut {
    pub content: String,
    pub reasoning: String,
    pub calls: Vec<CallOut>,
    pub logprobs: Vec<SampledLogprob>,
    pub reason: Option<FinishReason>,
}

impl ChoiceOut {
    /// Folds one step's pieces into the answer.
    pub(crate) fn add(&mut self, deltas: Vec<Delta>, logprobs: Vec<SampledLogprob>) {
        for d in deltas {
            match d {
                Delta::Content(t) => self.content.push_str(&t),
                Delta::Reasoning(t) => self.reasoning.push_str(&t),
                Delta::CallStart { index, id, name } => {
                    if self.calls.len() <= index {
                        self.calls.resize_with(index + 1, CallOut::default);
                    }
                    self.calls[index].id = id;
                    self.calls[index].name = name;
                }
                Delta::CallArguments { index, fragment } => {
                    if let Some(c) = self.calls.get_mut(index) {
                        c.arguments.push_str(&fragment);
                    }
                }
            }
        }
        self.logprobs.extend(logprobs);
    }
}

/// A non-streamed generation's result, after its record is durable.
pub(crate) struct Collected {
    pub choices: Vec<ChoiceOut>,
    /// A Responses request's output items.
    pub items: Option<super::responses::Items>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub record_id: i64,
    pub store_micros: u128,
}

/// A short random hex string, for tool-call ids.
fn random_hex() -> String {
    let mut b = [0u8; 6];
    // A failed read leaves zeros: ids are still unique within an answer by their index.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Queues a checked request and waits until the engine accepts its prompt, so that prompt
/// errors get a proper status code even when the answer is streamed.
pub(crate) async fn start(
    s: &AppState,
    caller: Caller,
    request: GenerateRequest,
) -> Result<Generation, ApiError> {
    start_with(s, caller, request, None).await
}

/// [`start`] for a Responses API request, recorded as `how` says.
pub(crate) async fn start_response(
    s: &AppState,
    caller: Caller,
    request: GenerateRequest,
    how: ResponseRecord,
) -> Result<Generation, ApiError> {
    start_with(s, caller, request, Some(how)).await
}

async fn start_with(
    s: &AppState,
    caller: Caller,
    mut request: GenerateRequest,
    how: Option<ResponseRecord>,
) -> Result<Generation, ApiError> {
    let alias = resolve_alias(s, &mut request.model);
    tracing::info!(uid = caller.uid, model = %request.model, alias = ?alias, "generation request");
    let mut record = new_record(&caller, &request);
    note_alias(&mut record, alias);
    let (link, items) = match how {
        None => (None, None),
        Some(how) => {
            record.prompt_text = how.prompt.to_string();
            if let (Ok(mut params), Value::Object(extra)) = (
                serde_json::from_str::<Value>(&record.params_json),
                how.params,
            ) {
                if let Some(p) = params.as_object_mut() {
                    p.extend(extra);
                }
                record.params_json = params.to_string();
            }
            (how.link, Some(how.items))
        }
    };
    let n = request.n.max(1);
    // Every choice beyond the first counts against the caller's concurrency, like a request.
    let choices_held = s.uid_limits.choices(caller.uid, n)?;
    let shown: Vec<Tool> = request
        .tools
        .as_ref()
        .filter(|t| t.choice != ToolChoice::None)
        .map(|t| t.tools.clone())
        .unwrap_or_default();
    let mut events = s.engine.generate(request).await?;
    let (prompt_tokens, output) = match events.recv().await {
        Some(Event::Started {
            prompt_tokens,
            output,
        }) => (prompt_tokens, output),
        Some(Event::Failed(e)) => {
            // The caller gets the failure; a store error here is logged (and counted by the
            // store) rather than replacing it.
            let _ = store(s, record, RequestStatus::Error).await;
            return Err(e.into());
        }
        _ => return Err(EngineError::ShuttingDown.into()),
    };
    record.prompt_tokens = prompt_tokens;
    let base = random_hex();
    let choices = (0..n)
        .map(|i| ChoiceState {
            parser: OutputParser::new(ParserConfig {
                format: output.tool_format,
                recognise_bare: !shown.is_empty(),
                tools: shown.clone(),
                id_prefix: format!("call_{base}{i}_"),
                reasoning: output.reasoning.clone(),
                starts_in_reasoning: output.starts_in_reasoning,
            }),
            raw: String::new(),
            calls: 0,
            done: false,
        })
        .collect();
    Ok(Generation {
        events,
        recorder: Recorder {
            state: s.clone(),
            record: Some(record),
            link,
        },
        items,
        first_reason: None,
        prompt_tokens,
        choices,
        queued: VecDeque::new(),
        completion_tokens: 0,
        _choices_held: choices_held,
    })
}

impl Generation {
    /// The next step; `None` when the engine dropped the request without ending it (shutdown).
    /// After `Finished` or `Failed` the request is recorded and nothing more follows.
    pub(crate) async fn next(&mut self) -> Option<Step> {
        loop {
            if let Some(step) = self.queued.pop_front() {
                return Some(step);
            }
            match self.events.recv().await? {
                Event::Started { .. } => continue,
                Event::Text {
                    choice,
                    text,
                    logprobs,
                } => {
                    let Some(c) = self.choices.get_mut(choice as usize) else {
                        continue;
                    };
                    c.raw.push_str(&text);
                    if choice == 0 {
                        // An answer cut short (the client left) is recorded as far as it got.
                        self.recorder.push(&text);
                    }
                    let deltas = c.parser.feed(&text);
                    c.calls += count_calls(&deltas);
                    if let (0, Some(items)) = (choice, &mut self.items) {
                        for d in &deltas {
                            items.feed(d);
                        }
                    }
                    if deltas.is_empty() && logprobs.is_empty() {
                        continue;
                    }
                    return Some(Step::Delta {
                        choice,
                        deltas,
                        logprobs,
                    });
                }
                Event::Finished {
                    choice,
                    reason,
                    completion_tokens,
                    prompt_tokens,
                } => {
                    // An upstream model tells its prompt's size only at the end.
                    if prompt_tokens > self.prompt_tokens {
                        self.prompt_tokens = prompt_tokens;
                        self.recorder.set_prompt_tokens(prompt_tokens);
                    }
                    let Some(c) = self.choices.get_mut(choice as usize) else {
                        continue;
                    };
                    let deltas = c.parser.finish();
                    c.calls += count_calls(&deltas);
                    c.done = true;
                    if let (0, Some(items)) = (choice, &mut self.items) {
                        for d in &deltas {
                            items.feed(d);
                        }
                    }
                    self.completion_tokens += completion_tokens;
                    if !deltas.is_empty() {
                        self.queued.push_back(Step::Delta {
                            choice,
                            deltas,
                            logprobs: vec![],
                        });
                    }
                    let reason = if c.calls > 0 && reason == FinishReason::Stop {
                        FinishReason::ToolCalls
                    } else {
                        reason
                    };
                    if choice == 0 {
                        self.first_reason = Some(reason);
                    }
                    self.queued.push_back(Step::ChoiceEnd { choice, reason });
                    if self.choices.iter().all(|c| c.done) {
                        let step = self.finish().await;
                        self.queued.push_back(step);
                    }
                }
                Event::Failed(e) => {
                    let _ = self.recorder.finish(RequestStatus::Error, 0).await;
                    return Some(Step::Failed(e.into()));
                }
            }
        }
    }

    /// Stores the record of a generation whose choices all ended.
    async fn finish(&mut self) -> Step {
        let calls: usize = self.choices.iter().map(|c| c.calls).sum();
        let response = match (&self.items, self.choices.as_slice()) {
            (Some(items), _) => items.record(self.first_reason),
            (None, [one]) => one.raw.clone(),
            (None, many) => {
                Value::from(many.iter().map(|c| c.raw.clone()).collect::<Vec<_>>()).to_string()
            }
        };
        self.recorder.set_response(response, calls);
        let stored = std::time::Instant::now();
        match self
            .recorder
            .finish(RequestStatus::Completed, self.completion_tokens)
            .await
        {
            Ok(record_id) => Step::Finished {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.completion_tokens,
                record_id,
                store_micros: stored.elapsed().as_micros(),
            },
            Err(e) => Step::Failed(e),
        }
    }

    /// Runs to the end and stores the record.
    pub(crate) async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut choices: Vec<ChoiceOut> = (0..self.choices.len())
            .map(|_| ChoiceOut::default())
            .collect();
        loop {
            match self.next().await {
                Some(Step::Delta {
                    choice,
                    deltas,
                    logprobs,
                }) => {
                    if let Some(c) = choices.get_mut(choice as usize) {
                        c.add(deltas, logprobs);
                    }
                }
                Some(Step::ChoiceEnd { choice, reason }) => {
                    if let Some(c) = choices.get_mut(choice as usize) {
                        c.reason = Some(reason);
                    }
                }
                Some(Step::Finished {
                    prompt_tokens,
                    completion_tokens,
                    record_id,
                    store_micros,
                }) => {
                    return Ok(Collected {
                        items: self.items.take(),
                        choices,
                        prompt_tokens,
                        completion_tokens,
                        record_id,
                        store_micros,
                    })
                }
                Some(Step::Failed(e)) => return Err(e),
                None => return Err(EngineError::ShuttingDown.into()),
            }
        }
    }
}

fn count_calls(deltas: &[Delta]) -> usize {
    deltas
        .iter()
        .filter(|d| matches!(d, Delta::CallStart { .. }))
        .count()
}

/// Records a request once: completed or failed when it ends, aborted when the client goes away
/// first (the response body, and this with it, is dropped).
struct Recorder {
    state: AppState,
    record: Option<NewRecord>,
    /// Makes a completed record a stored response.
    link: Option<crate::storage::ResponseLink>,
}

impl Recorder {
    fn push(&mut self, text: &str) {
        if let Some(r) = &mut self.record {
            r.response_text.push_str(text);
        }
    }

    fn set_prompt_tokens(&mut self, n: u32) {
        if let Some(r) = &mut self.record {
            r.prompt_tokens = n;
        }
    }

    /// The answer (sealed) and, in the clear metadata, how many tool calls it made.
    fn set_response(&mut self, text: String, tool_calls: usize) {
        if let Some(r) = &mut self.record {
            r.response_text = text;
            if let Ok(mut params) = serde_json::from_str::<Value>(&r.params_json) {
                params["tool_calls"] = json!(tool_calls);
                r.params_json = params.to_string();
            }
        }
    }

    async fn finish(
        &mut self,
        status: RequestStatus,
        completion_tokens: u32,
    ) -> Result<i64, ApiError> {
        let mut r = self
            .record
            .take()
            .ok_or_else(|| ApiError::internal("a request was recorded twice"))?;
        r.completion_tokens = completion_tokens;
        match self.link.take() {
            Some(link) if status == RequestStatus::Completed => {
                store_response(&self.state, r, link).await
            }
            _ => store(&self.state, r, status).await,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            let state = self.state.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store(&state, r, RequestStatus::Aborted).await;
                });
            }
        }
    }
}

/// Resolves an alias in `model` to its target, in place, once per request (see
/// [`super::aliases::resolve`]); returns the alias asked for, if it was one. The answer still
/// names what the client asked for (as OpenAI does); the record and its `request` audit event
/// name the model that ran, with the alias in the record's parameters.
fn resolve_alias(s: &AppState, model: &mut String) -> Option<String> {
    let target = super::aliases::resolve(s, model)?;
    Some(std::mem::replace(model, target))
}

/// Adds `"alias": ALIAS` to a record's clear parameters.
fn note_alias(record: &mut NewRecord, alias: Option<String>) {
    let Some(alias) = alias else { return };
    if let Ok(Value::Object(mut params)) = serde_json::from_str::<Value>(&record.params_json) {
        params.insert("alias".into(), Value::String(alias));
        record.params_json = Value::Object(params).to_string();
    }
}

/// Embeds `inputs` and records the request (inputs sealed as its prompt).
pub(crate) async fn embed(
    s: &AppState,
    caller: Caller,
    model: &str,
    inputs: Vec<String>,
) -> Result<(crate::engine::Embeddings, i64), ApiError> {
    let mut model = model.to_string();
    let alias = resolve_alias(s, &mut model);
    tracing::info!(uid = caller.uid, model = %model, alias = ?alias, inputs = inputs.len(), "embeddings request");
    let mut record = pending_record(
        &caller,
        &model,
        json!({"endpoint": "embeddings", "inputs": inputs.len()}),
        json!(inputs),
    );
    note_alias(&mut record, alias);
    let out = match s.engine.embed(model, inputs).await {
        Ok(out) => out,
        Err(e) => {
            let _ = store(s, record, RequestStatus::Error).await;
            return Err(e.into());
        }
    };
    record.prompt_tokens = out.prompt_tokens;
    let record_id = store(s, record, RequestStatus::Completed).await?;
    Ok((out, record_id))
}
