//! OpenAI's Responses API: `POST /v1/responses` (plain and typed server-sent events),
//! `GET`/`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`.
//!
//! A response runs through the same lifecycle as a chat completion ([`generation`]); what this
//! module adds is the Responses shapes and the state:
//! - A stored response (`store`, default true) is a request record of its owner whose sealed
//!   prompt is [`StoredPrompt`] (the conversation before this turn, this turn's input and the
//!   request's settings) and whose sealed response is [`StoredOutput`] (the output items). The
//!   `responses` table only gives that record its public id, so `history rm`, retention and
//!   erasure remove a response like any other record.
//! - `previous_response_id` loads the owner's earlier record and renders its whole
//!   conversation again in front of the new input; the scheduler's per-owner prefix reuse keeps
//!   the earlier turns' KV cache. Lookups are by (id, uid): another uid's id, a deleted, an
//!   erased and an unknown id are all the same 404 `response_not_found`.
//! - Output items are built from the parsed answer in the order their first piece arrived; the
//!   streamed events and the stored items come from the same [`Items`], so `GET` returns what
//!   the stream announced, ids included.
//! - A `file_search` tool searches the caller's vector stores before generating and puts what
//!   it found into the prompt as numbered sources ([`sources`]); the output opens with a
//!   `file_search_call` item, and the message's `output_text` carries `file_citation`
//!   annotations for the sources the answer cites. The sources' text is sealed with the
//!   response's record, as its user data.

pub(crate) mod sources;

use super::body::JsonBody;
use super::error::ApiError;
use super::generation::{self, message_from_json, message_json, ResponseRecord, Step};
use super::{AppState, Caller};
use crate::engine::{FinishReason, Prompt};
use crate::storage::{Record, RequestStatus, ResponseLink};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use inhouse_formats::request::{
    ChatMessage, FileSearch, ResponseFormat, SearchRanker, ToolChoice, Tools,
};
use inhouse_formats::tools::Delta;
use inhouse_formats::validate::{validate_responses, ResponsesWire};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sources::{Citation, Grounding, Source};
use std::convert::Infallible;

/// One output item while it is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Item {
    /// The model's thinking.
    Reasoning { id: String, text: String },
    /// The search run before generating: its query (none when the input held no user text)
    /// and the sources shown to the model; `include` says whether the answer shows them.
    FileSearch {
        id: String,
        queries: Vec<String>,
        results: Vec<Source>,
        include: bool,
    },
    /// The answer text, and the sources it cites (filled when the answer is complete).
    Message {
        id: String,
        text: String,
        #[serde(default)]
        citations: Vec<Citation>,
    },
    /// A function call.
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Item {
    fn id(&self) -> &str {
        match self {
            Item::Reasoning { id, .. }
            | Item::Message { id, .. }
            | Item::Call { id, .. }
            | Item::FileSearch { id, .. } => id,
        }
    }

    /// The item in OpenAI's shape; `done` false gives the empty item that opens it.
    fn json(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        let text_of = |t: &str| if done { t.to_string() } else { String::new() };
        match self {
            Item::Reasoning { id, text } => json!({"type": "reasoning", "id": id,
                "summary": [], "status": status,
                "content": if done { json!([reasoning_part(text)]) } else { json!([]) }}),
            Item::Message {
                id,
                text,
                citations,
            } => json!({"type": "message", "id": id,
                "role": "assistant", "status": status,
                "content": if done { json!([cited_text_part(text, citations)]) } else { json!([]) }}),
            Item::FileSearch {
                id,
                queries,
                results,
                include,
            } => json!({"type": "file_search_call", "id": id, "status": status,
                "queries": queries,
                "results": (done && *include)
                    .then(|| results.iter().map(Source::result_json).collect::<Vec<_>>())}),
            Item::Call {
                id,
                call_id,
                name,
                arguments,
            } => json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
                "arguments": text_of(arguments), "status": status}),
        }
    }
}

fn text_part(text: &str) -> Value {
    cited_text_part(text, &[])
}

fn cited_text_part(text: &str, citations: &[Citation]) -> Value {
    json!({"type": "output_text", "text": text,
        "annotations": citations.iter().map(Citation::json).collect::<Vec<_>>(), "logprobs": []})
}

fn reasoning_part(text: &str) -> Value {
    json!({"type": "reasoning_text", "text": text})
}

/// What a piece of the answer did to the output items.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ItemEvent {
    /// Item `n` was opened.
    Added(usize),
    /// Text for message item `n`.
    Text(usize, String),
    /// Thinking for reasoning item `n`.
    Reasoning(usize, String),
    /// Arguments for call item `n`.
    Arguments(usize, String),
}

/// The output items of one answer, built from its parsed pieces.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Items {
    base: String,
    items: Vec<Item>,
    message: Option<usize>,
    reasoning: Option<usize>,
    /// Item index of each call, by the call's index in the answer.
    calls: Vec<usize>,
    /// Whitespace the answer opened with, held back until text follows (a call alone is not
    /// a message).
    held: String,
    /// The sources shown to the model, when a search ran: the answer's citations name them.
    sources: Option<Vec<Source>>,
}

impl Items {
    /// Items whose ids are derived from `base` (the response id's random part).
    pub(crate) fn new(base: &str) -> Items {
        Items {
            base: base.to_string(),
            ..Items::default()
        }
    }

    /// Opens with the `file_search_call` item of the search that ran before generating.
    pub(crate) fn searched(mut self, g: &Grounding, include: bool) -> Items {
        let item = Item::FileSearch {
            id: format!("fs_{}", self.base),
            queries: g.query.iter().cloned().collect(),
            results: g.sources.clone(),
            include,
        };
        self.open(item);
        self.sources = Some(g.sources.clone());
        self
    }

    /// Folds one piece in; returns what it did.
    pub(crate) fn feed(&mut self, d: &Delta) -> Vec<ItemEvent> {
        let mut out = Vec::new();
        match d {
            Delta::Content(t) => {
                let i = match self.message {
                    Some(i) => i,
                    None => {
                        if t.trim().is_empty() {
                            self.held.push_str(t);
                            return out;
                        }
                        let i = self.open(Item::Message {
                            id: format!("msg_{}", self.base),
                            text: String::new(),
                            citations: Vec::new(),
                        });
                        self.message = Some(i);
                        out.push(ItemEvent::Added(i));
                        i
                    }
                };
                let text = std::mem::take(&mut self.held) + t;
                if let Item::Message { text: all, .. } = &mut self.items[i] {
                    all.push_str(&text);
                }
                out.push(ItemEvent::Text(i, text));
            }
            Delta::Reasoning(t) => {
                let i = match self.reasoning {
                    Some(i) => i,
                    None => {
                        let i = self.open(Item::Reasoning {
                            id: format!("rs_{}", self.base),
                            text: String::new(),
                        });
                        self.reasoning = Some(i);
                        out.push(ItemEvent::Added(i));
                        i
                    }
                };
                if let Item::Reasoning { text, .. } = &mut self.items[i] {
                    text.push_str(t);
                }
                out.push(ItemEvent::Reasoning(i, t.clone()));
            }
            Delta::CallStart { index, id, name } => {
                let i = self.open(Item::Call {
                    id: format!("fc_{}_{index}", self.base),
                    call_id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                });
                if self.calls.len() <= *index {
                    self.calls.resize(*index + 1, i);
                }
                self.calls[*index] = i;
                out.push(ItemEvent::Added(i));
            }
            Delta::CallArguments { index, fragment } => {
                if let Some(&i) = self.calls.get(*index) {
                    if let Item::Call { arguments, .. } = &mut self.items[i] {
                        arguments.push_str(fragment);
                    }
                    out.push(ItemEvent::Arguments(i, fragment.clone()));
                }
            }
        }
        out
    }

    fn open(&mut self, item: Item) -> usize {
        self.items.push(item);
        self.items.len() - 1
    }

    /// The items of the complete answer: the message with its citations when a search ran.
    fn finished(&self) -> Vec<Item> {
        let mut items = self.items.clone();
        if let Some(sources) = &self.sources {
            for item in &mut items {
                if let Item::Message {
                    text, citations, ..
                } = item
                {
                    *citations = sources::cite(text, sources);
                }
            }
        }
        items
    }

    /// The finished items in OpenAI's shape.
    pub(crate) fn output(&self) -> Vec<Value> {
        self.finished().iter().map(|i| i.json(true)).collect()
    }

    /// The items as the record keeps them (sealed).
    pub(crate) fn record(&self, reason: Option<FinishReason>) -> String {
        json!(StoredOutput {
            items: self.finished(),
            incomplete: reason == Some(FinishReason::Length),
        })
        .to_string()
    }
}

/// A stored response's sealed answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredOutput {
    items: Vec<Item>,
    /// Cut short by `max_output_tokens` (or the context's end).
    incomplete: bool,
}

/// The request settings a response echoes back (`GET` shows them as `create` did).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Settings {
    model: String,
    instructions: Option<String>,
    tools: Vec<Value>,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    temperature: f32,
    top_p: f32,
    max_output_tokens: Option<u32>,
    previous_response_id: Option<String>,
    metadata: serde_json::Map<String, Value>,
    store: bool,
}

/// A stored response's sealed prompt: the turns before it, its own input, its settings.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredPrompt {
    /// Always `"responses"`, so history shows what kind of record this is.
    endpoint: String,
    settings: Settings,
    /// The earlier turns (instructions excluded), as chat messages.
    conversation: Vec<Value>,
    /// This turn's input, as chat messages.
    input: Vec<Value>,
}

impl StoredPrompt {
    /// The conversation a continuation starts from: the earlier turns, this input, and this
    /// answer as an assistant turn (thinking left out, as templates re-render earlier turns).
    fn continued(&self, out: &StoredOutput) -> Result<Vec<ChatMessage>, ApiError> {
        let mut messages = Vec::with_capacity(self.conversation.len() + self.input.len() + 1);
        for v in self.conversation.iter().chain(&self.input) {
            messages.push(message_from_json(v).ok_or_else(damaged)?);
        }
        let mut answer = ChatMessage::text("assistant", "");
        for item in &out.items {
            match item {
                Item::Reasoning { .. } | Item::FileSearch { .. } => {}
                Item::Message { text, .. } => answer.content.push_str(text),
                Item::Call {
                    call_id,
                    name,
                    arguments,
                    ..
                } => answer.tool_calls.push(inhouse_formats::request::ToolCall {
                    id: call_id.clone(),
                    name: name.clone(),
                    arguments: serde_json::from_str(arguments)
                        .unwrap_or_else(|_| Value::String(arguments.clone())),
                }),
            }
        }
        messages.push(answer);
        Ok(messages)
    }
}

fn damaged() -> ApiError {
    ApiError::internal("a stored response's record does not have the expected shape")
}

/// The response id's random part: 16 bytes, hex.
fn random_base() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| ApiError::internal("the system random generator failed"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The `file_search` tool as the response echoes it.
fn file_search_json(f: &FileSearch) -> Value {
    let ranker = match f.ranker {
        SearchRanker::Hybrid => "auto",
        SearchRanker::Bm25 => "bm25",
        SearchRanker::Vector => "vector",
    };
    json!({"type": "file_search", "vector_store_ids": f.vector_store_ids,
        "max_num_results": f.max_num_results, "filters": f.filters,
        "ranking_options": {"ranker": ranker, "score_threshold": f.score_threshold}})
}

/// The tools, `tool_choice` and `parallel_tool_calls` the response echoes.
fn tools_json(
    tools: &Option<Tools>,
    file_search: Option<&FileSearch>,
    search: bool,
) -> (Vec<Value>, Value, bool) {
    let searched: Vec<Value> = file_search.map(file_search_json).into_iter().collect();
    let Some(t) = tools else {
        let choice = if file_search.is_some() && !search {
            "none"
        } else {
            "auto"
        };
        return (searched, json!(choice), true);
    };
    let list = searched
        .into_iter()
        .chain(t.tools.iter().map(|t| {
            json!({"type": "function", "name": t.name, "description": t.description,
                   "parameters": t.parameters, "strict": true})
        }))
        .collect();
    let choice = match &t.choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Named(n) => json!({"type": "function", "name": n}),
    };
    (list, choice, t.parallel)
}

fn text_json(f: &ResponseFormat) -> Value {
    match f {
        ResponseFormat::Text => json!({"format": {"type": "text"}}),
        ResponseFormat::JsonObject => json!({"format": {"type": "json_object"}}),
        ResponseFormat::JsonSchema { name, schema } => json!({"format": {
            "type": "json_schema", "name": name, "schema": schema, "strict": true}}),
    }
}

/// The response object. `output` and `usage` as far as known; `status` one of OpenAI's.
fn response_object(
    id: &str,
    created_at: i64,
    st: &Settings,
    status: &str,
    output: Vec<Value>,
    usage: Option<(u32, u32)>,
    error: Option<Value>,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": (status == "incomplete").then(|| json!({"reason": "max_output_tokens"})),
        "instructions": st.instructions,
        "max_output_tokens": st.max_output_tokens,
        "model": st.model,
        "output": output,
        "parallel_tool_calls": st.parallel_tool_calls,
        "previous_response_id": st.previous_response_id,
        "reasoning": {"effort": null, "summary": null},
        "store": st.store,
        "temperature": st.temperature,
        "text": st.text,
        "tool_choice": st.tool_choice,
        "tools": st.tools,
        "top_p": st.top_p,
        "truncation": "disabled",
        "usage": usage.map(|(input, output)| json!({
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output,
        })),
        "metadata": st.metadata,
    })
}

/// `POST /v1/responses`.
pub async fn create(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(wire): JsonBody<ResponsesWire>,
) -> Result<Response, ApiError> {
    let valid = validate_responses(wire, caller.uid, &s.limits)?;
    let mut request = valid.generate.request;
    let stream = valid.generate.stream;
    let model = request.model.clone();
    // The earlier turns, when this continues a stored response of the caller's.
    let conversation = match &valid.previous_response_id {
        None => vec![],
        Some(prev) => {
            let (_, rec) = s
                .store
                .get_response(caller.uid, prev.clone())
                .await?
                .ok_or_else(|| ApiError::response_not_found("previous_response_id", prev))?;
            let (prompt, output) = stored(&rec)?;
            prompt.continued(&output)?
        }
    };
    let total = conversation.len() + valid.input.len() + usize::from(valid.instructions.is_some());
    if total > s.limits.max_messages {
        return Err(ApiError {
            param: Some("previous_response_id".into()),
            ..ApiError::invalid(
                "limit_exceeded",
                format!(
                    "the conversation would hold {total} messages, over the limit of {}; start a new one",
                    s.limits.max_messages
                ),
            )
        });
    }
    let mut messages = Vec::with_capacity(total);
    if let Some(i) = &valid.instructions {
        messages.push(ChatMessage::text("system", i.clone()));
    }
    messages.extend(conversation.iter().cloned());
    messages.extend(valid.input.iter().cloned());
    request.prompt = Prompt::Chat(messages);
    // Retrieval runs before anything is generated, so an unknown collection is a plain 404.
    let grounding = match (&valid.file_search, valid.search) {
        (Some(fs), true) => Some(sources::retrieve_into(&s, &caller, fs, &mut request).await?),
        _ => None,
    };

    let base = random_base()?;
    let id = format!("resp_{base}");
    let (tools, tool_choice, parallel) =
        tools_json(&request.tools, valid.file_search.as_ref(), valid.search);
    let settings = Settings {
        model: model.clone(),
        instructions: valid.instructions.clone(),
        tools,
        tool_choice,
        parallel_tool_calls: parallel,
        text: text_json(&request.format),
        temperature: request.sampling.temperature,
        top_p: request.sampling.top_p,
        max_output_tokens: Some(request.max_tokens),
        previous_response_id: valid.previous_response_id.clone(),
        metadata: valid
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
        store: valid.store,
    };
    let prompt = StoredPrompt {
        endpoint: "responses".into(),
        settings: settings.clone(),
        conversation: conversation.iter().map(message_json).collect(),
        input: valid.input.iter().map(message_json).collect(),
    };
    let mut items = Items::new(&base);
    if let Some(g) = &grounding {
        items = items.searched(g, valid.include_search_results);
    }
    let record = ResponseRecord {
        prompt: json!(prompt),
        params: json!({"endpoint": "responses",
            "response_id": valid.store.then_some(&id),
            "previous_response_id": valid.previous_response_id,
            "input_items": valid.input.len(),
            "metadata_entries": valid.metadata.len(),
            // How many, never which: the collections and chunks are the caller's data.
            "file_search": grounding.as_ref().map(|g| json!({
                "vector_stores": valid.file_search.as_ref().map_or(0, |f| f.vector_store_ids.len()),
                "sources": g.sources.len()}))}),
        link: valid.store.then(|| ResponseLink {
            id: id.clone(),
            previous_id: valid.previous_response_id.clone(),
            input_items: valid.input.len(),
        }),
        items: items.clone(),
    };
    let created_at = crate::storage::now_unix();
    generation::counted(&s, &model, async {
        let g = generation::start_response(&s, caller, request, record).await?;
        let meta = Meta {
            id,
            created_at,
            settings,
            items,
        };
        if stream {
            return Ok(stream_response(g, meta));
        }
        let c = g.collect().await?;
        let items = c.items.unwrap_or(meta.items);
        let reason = c.choices.first().and_then(|c| c.reason);
        let status = status_of(
            RequestStatus::Completed,
            reason == Some(FinishReason::Length),
        );
        let mut body = response_object(
            &meta.id,
            meta.created_at,
            &meta.settings,
            status,
            items.output(),
            Some((c.prompt_tokens, c.completion_tokens)),
            None,
        );
        body["inhouse_record_id"] = json!(c.record_id);
        let mut resp = Json(body).into_response();
        if let Ok(v) = header::HeaderValue::from_str(&c.record_id.to_string()) {
            resp.headers_mut()
                .insert(super::openai::RECORD_ID_HEADER, v);
        }
        Ok(resp)
    })
    .await
}

fn status_of(status: RequestStatus, incomplete: bool) -> &'static str {
    match status {
        RequestStatus::Completed if incomplete => "incomplete",
        RequestStatus::Completed => "completed",
        RequestStatus::Aborted => "cancelled",
        _ => "failed",
    }
}

/// A stored response's record, read back.
fn stored(rec: &Record) -> Result<(StoredPrompt, StoredOutput), ApiError> {
    let prompt: StoredPrompt = serde_json::from_str(&rec.prompt_text).map_err(|_| damaged())?;
    let output: StoredOutput = serde_json::from_str(&rec.response_text).map_err(|_| damaged())?;
    Ok((prompt, output))
}

async fn find(s: &AppState, caller: &Caller, id: &str) -> Result<Record, ApiError> {
    s.store
        .get_response(caller.uid, id.to_string())
        .await?
        .map(|(_, rec)| rec)
        .ok_or_else(|| ApiError::response_not_found("response_id", id))
}

/// `GET /v1/responses/{id}`.
pub async fn get(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = find(&s, &caller, &id).await?;
    let (prompt, output) = stored(&rec)?;
    let items: Vec<Value> = output.items.iter().map(|i| i.json(true)).collect();
    let mut body = response_object(
        &id,
        rec.meta.created_at,
        &prompt.settings,
        status_of(rec.meta.status, output.incomplete),
        items,
        Some((rec.meta.prompt_tokens, rec.meta.completion_tokens)),
        None,
    );
    body["inhouse_record_id"] = json!(rec.meta.id);
    Ok(Json(body))
}

/// `DELETE /v1/responses/{id}`: the response and its record (as `history rm`).
pub async fn delete(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !s.store.delete_response(caller.uid, id.clone()).await? {
        return Err(ApiError::response_not_found("response_id", &id));
    }
    Ok(Json(
        json!({"id": id, "object": "response", "deleted": true}),
    ))
}

/// `GET /v1/responses/{id}/input_items` query.
#[derive(Debug, Deserialize)]
pub struct InputItemsQuery {
    /// 1..=100, default 20.
    limit: Option<u32>,
    /// `asc` or `desc` (default, as OpenAI).
    order: Option<String>,
    /// An item id: the page starts after it.
    after: Option<String>,
}

/// A chat message as Responses input items (a message, or an assistant turn's calls, or a
/// call's output); `n` numbers the items of one response.
fn input_item_json(base: &str, m: &ChatMessage, n: &mut usize, out: &mut Vec<Value>) {
    let mut id = |prefix: &str| {
        *n += 1;
        format!("{prefix}_{base}_in{}", *n - 1)
    };
    match m.role.as_str() {
        "tool" => out.push(json!({"type": "function_call_output", "id": id("fco"),
            "call_id": m.tool_call_id, "output": m.content, "status": "completed"})),
        "assistant" => {
            if !m.content.is_empty() || m.tool_calls.is_empty() {
                out.push(
                    json!({"type": "message", "id": id("msg"), "role": "assistant",
                    "status": "completed", "content": [text_part(&m.content)]}),
                );
            }
            for c in &m.tool_calls {
                out.push(
                    json!({"type": "function_call", "id": id("fc"), "call_id": c.id,
                    "name": c.name, "arguments": c.arguments.to_string(), "status": "completed"}),
                );
            }
        }
        role => out.push(json!({"type": "message", "id": id("msg"), "role": role,
            "status": "completed",
            "content": [{"type": "input_text", "text": m.content}]})),
    }
}

/// `GET /v1/responses/{id}/input_items`: the items this response was given (its own input;
/// earlier turns are their own responses' input items), newest first unless `order=asc`.
pub async fn input_items(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
    query: Result<Query<InputItemsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_param("limit", "limit must be 1 to 100"));
    }
    let descending = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(ApiError::bad_param("order", "order must be asc or desc")),
    };
    let rec = find(&s, &caller, &id).await?;
    let (prompt, _) = stored(&rec)?;
    let base = id.strip_prefix("resp_").unwrap_or(&id);
    let mut items = Vec::new();
    let mut n = 0;
    for v in &prompt.input {
        input_item_json(
            base,
            &message_from_json(v).ok_or_else(damaged)?,
            &mut n,
            &mut items,
        );
    }
    if descending {
        items.reverse();
    }
    if let Some(after) = &q.after {
        let at = items
            .iter()
            .position(|i| i["id"] == after.as_str())
            .ok_or_else(|| {
                ApiError::bad_param("after", "after must be an item id of this response")
            })?;
        items.drain(..=at);
    }
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Json(json!({
        "object": "list",
        "data": items,
        "first_id": items.first().map(|i| i["id"].clone()),
        "last_id": items.last().map(|i| i["id"].clone()),
        "has_more": has_more,
    })))
}

/// What the stream's events repeat.
struct Meta {
    id: String,
    created_at: i64,
    settings: Settings,
    /// The items before the answer (the `file_search_call`, when a search ran).
    items: Items,
}

/// Numbers the events of one stream.
struct Events {
    meta: Meta,
    seq: u64,
    items: Items,
}

impl Events {
    fn event(&mut self, kind: &str, mut v: Value) -> Bytes {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        Bytes::from(format!("event: {kind}\ndata: {v}\n\n"))
    }

    fn response(&self, status: &str, output: Vec<Value>, usage: Option<(u32, u32)>) -> Value {
        let m = &self.meta;
        response_object(
            &m.id,
            m.created_at,
            &m.settings,
            status,
            output,
            usage,
            None,
        )
    }

    fn opening(&mut self) -> Vec<Bytes> {
        let r = self.response("in_progress", vec![], None);
        let mut out = vec![
            self.event("response.created", json!({"response": r})),
            self.event("response.in_progress", json!({"response": r})),
        ];
        // The search ran before the stream opened: its item is told whole, in OpenAI's order.
        for (i, item) in self.items.items.clone().iter().enumerate() {
            if let Item::FileSearch { id, .. } = item {
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": i, "item": item.json(false)}),
                ));
                for step in ["in_progress", "searching", "completed"] {
                    out.push(self.event(
                        &format!("response.file_search_call.{step}"),
                        json!({"output_index": i, "item_id": id}),
                    ));
                }
                out.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": i, "item": item.json(true)}),
                ));
            }
        }
        out
    }

    fn deltas(&mut self, deltas: &[Delta]) -> Vec<Bytes> {
        let mut out = Vec::new();
        for d in deltas {
            for e in self.items.feed(d) {
                out.extend(self.item_event(e));
            }
        }
        out
    }

    fn item_event(&mut self, e: ItemEvent) -> Vec<Bytes> {
        let id_of = |items: &Items, i: usize| items.items[i].id().to_string();
        match e {
            ItemEvent::Added(i) => {
                let item = self.items.items[i].clone();
                let mut out = vec![self.event(
                    "response.output_item.added",
                    json!({"output_index": i, "item": item.json(false)}),
                )];
                let part = match &item {
                    Item::Message { .. } => Some(text_part("")),
                    Item::Reasoning { .. } => Some(reasoning_part("")),
                    Item::Call { .. } | Item::FileSearch { .. } => None,
                };
                if let Some(part) = part {
                    out.push(self.event(
                        "response.content_part.added",
                        json!({"item_id": item.id(), "output_index": i, "content_index": 0,
                               "part": part}),
                    ));
                }
                out
            }
            ItemEvent::Text(i, delta) => {
                let item_id = id_of(&self.items, i);
                vec![self.event(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": i, "content_index": 0,
                           "delta": delta, "logprobs": []}),
                )]
            }
            ItemEvent::Reasoning(i, delta) => {
                let item_id = id_of(&self.items, i);
                vec![self.event(
                    "response.reasoning_text.delta",
                    json!({"item_id": item_id, "output_index": i, "content_index": 0,
                           "delta": delta}),
                )]
            }
            ItemEvent::Arguments(i, delta) => {
                let item_id = id_of(&self.items, i);
                vec![self.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": i, "delta": delta}),
                )]
            }
        }
    }

    /// Every item's closing events, then `response.completed` (or `response.incomplete`).
    fn closing(&mut self, usage: (u32, u32), incomplete: bool, record_id: i64) -> Vec<Bytes> {
        let mut out = Vec::new();
        for (i, item) in self.items.finished().iter().enumerate() {
            let item_id = item.id().to_string();
            match item {
                // Told whole when the stream opened.
                Item::FileSearch { .. } => continue,
                Item::Message {
                    text, citations, ..
                } => {
                    for (k, c) in citations.iter().enumerate() {
                        out.push(self.event(
                            "response.output_text.annotation.added",
                            json!({"item_id": item_id, "output_index": i, "content_index": 0,
                                   "annotation_index": k, "annotation": c.json()}),
                        ));
                    }
                    out.push(self.event(
                        "response.output_text.done",
                        json!({"item_id": item_id, "output_index": i, "content_index": 0,
                               "text": text, "logprobs": []}),
                    ));
                    out.push(self.event(
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": i, "content_index": 0,
                               "part": cited_text_part(text, citations)}),
                    ));
                }
                Item::Reasoning { text, .. } => {
                    out.push(self.event(
                        "response.reasoning_text.done",
                        json!({"item_id": item_id, "output_index": i, "content_index": 0,
                               "text": text}),
                    ));
                    out.push(self.event(
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": i, "content_index": 0,
                               "part": reasoning_part(text)}),
                    ));
                }
                Item::Call {
                    name, arguments, ..
                } => out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": i, "name": name,
                           "arguments": arguments}),
                )),
            }
            out.push(self.event(
                "response.output_item.done",
                json!({"output_index": i, "item": item.json(true)}),
            ));
        }
        let status = status_of(RequestStatus::Completed, incomplete);
        let mut r = self.response(status, self.items.output(), Some(usage));
        r["inhouse_record_id"] = json!(record_id);
        let kind = if incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(kind, json!({"response": r})));
        out
    }

    fn failed(&mut self, e: &ApiError) -> Vec<Bytes> {
        let m = &self.meta;
        let error = json!({"code": e.code, "message": e.message});
        let r = response_object(
            &m.id,
            m.created_at,
            &m.settings,
            "failed",
            self.items.output(),
            None,
            Some(error),
        );
        vec![self.event("response.failed", json!({"response": r}))]
    }
}

enum Phase {
    Opening,
    Running { incomplete: bool },
    Done,
}

/// Typed server-sent events (`event: <type>` and `data: <json>` with `sequence_number`):
/// `response.created`, `response.in_progress`, per item `response.output_item.added` (and
/// `response.content_part.added`), its deltas, then, once the record is stored, each item's
/// `…done` events and `response.completed` / `response.incomplete`. A failure is
/// `response.failed` with the error. Dropping the body cancels the generation (recorded as
/// aborted, and not linked as a stored response).
fn stream_response(generation: generation::Generation, meta: Meta) -> Response {
    let events = Events {
        items: meta.items.clone(),
        meta,
        seq: 0,
    };
    let body = stream::unfold(
        (generation, events, Phase::Opening),
        |(mut g, mut ev, state)| async move {
            match state {
                Phase::Done => None,
                Phase::Opening => {
                    let out = ev.opening();
                    Some((out, (g, ev, Phase::Running { incomplete: false })))
                }
                Phase::Running { incomplete } => match g.next().await? {
                    Step::Delta { choice, deltas, .. } => {
                        let out = if choice == 0 {
                            ev.deltas(&deltas)
                        } else {
                            vec![]
                        };
                        Some((out, (g, ev, Phase::Running { incomplete })))
                    }
                    Step::ChoiceEnd { reason, .. } => {
                        let incomplete = incomplete || reason == FinishReason::Length;
                        Some((vec![], (g, ev, Phase::Running { incomplete })))
                    }
                    Step::Finished {
                        prompt_tokens,
                        completion_tokens,
                        record_id,
                        ..
                    } => {
                        let out =
                            ev.closing((prompt_tokens, completion_tokens), incomplete, record_id);
                        Some((out, (g, ev, Phase::Done)))
                    }
                    Step::Failed(e) => {
                        let out = ev.failed(&e);
                        Some((out, (g, ev, Phase::Done)))
                    }
                },
            }
        },
    )
    .flat_map(stream::iter)
    .map(Ok::<_, Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_open_in_arrival_order_and_leading_whitespace_is_not_a_message() {
        let mut items = Items::new("ab");
        let mut events = Vec::new();
        for d in [
            Delta::Reasoning("think".into()),
            Delta::Content("\n".into()),
            Delta::CallStart {
                index: 0,
                id: "call_x0".into(),
                name: "f".into(),
            },
            Delta::CallArguments {
                index: 0,
                fragment: "{\"a\":1}".into(),
            },
        ] {
            events.extend(items.feed(&d));
        }
        assert_eq!(
            events,
            [
                ItemEvent::Added(0),
                ItemEvent::Reasoning(0, "think".into()),
                ItemEvent::Added(1),
                ItemEvent::Arguments(1, "{\"a\":1}".into()),
            ]
        );
        let out = items.output();
        assert_eq!(out[0]["type"], "reasoning");
        assert_eq!(out[1]["type"], "function_call");
        assert_eq!(out[1]["call_id"], "call_x0");
        assert_eq!(out[1]["id"], "fc_ab_0");
        // Text after the held whitespace opens the message with it.
        let e = items.feed(&Delta::Content("Hi".into()));
        assert_eq!(e, [ItemEvent::Added(2), ItemEvent::Text(2, "\nHi".into())]);
        assert_eq!(items.output()[2]["content"][0]["text"], "\nHi");
    }

    fn settings() -> Settings {
        Settings {
            model: "m".into(),
            instructions: None,
            tools: vec![],
            tool_choice: json!("auto"),
            parallel_tool_calls: true,
            text: json!({}),
            temperature: 1.0,
            top_p: 1.0,
            max_output_tokens: None,
            previous_response_id: None,
            metadata: Default::default(),
            store: true,
        }
    }

    fn grounding() -> Grounding {
        let source = |file: &str, text: &str| Source {
            vector_store_id: "vs_1".into(),
            file_id: format!("file-{file}"),
            filename: format!("{file}.md"),
            chunk_index: 0,
            start: 0,
            end: text.len(),
            text: text.into(),
            score: 0.9,
            attributes: Default::default(),
        };
        Grounding {
            query: Some("How long is leave?".into()),
            sources: vec![
                source("travel", "Trains under 600 km."),
                source("leave", "Leave is 31 days."),
            ],
        }
    }

    #[test]
    fn a_search_opens_the_output_and_the_message_cites_its_sources() {
        let mut items = Items::new("ab").searched(&grounding(), true);
        for t in ["Über", " 31 days [2]."] {
            items.feed(&Delta::Content(t.into()));
        }
        let out = items.output();
        assert_eq!(out[0]["type"], "file_search_call");
        assert_eq!(out[0]["id"], "fs_ab");
        assert_eq!(out[0]["status"], "completed");
        assert_eq!(out[0]["queries"], json!(["How long is leave?"]));
        assert_eq!(out[0]["results"][1]["file_id"], "file-leave");
        assert_eq!(out[0]["results"][1]["text"], "Leave is 31 days.");
        let part = &out[1]["content"][0];
        assert_eq!(part["text"], "Über 31 days [2].");
        let a = &part["annotations"];
        assert_eq!(a.as_array().unwrap().len(), 1, "{a}");
        assert_eq!(a[0]["type"], "file_citation");
        assert_eq!(a[0]["file_id"], "file-leave");
        assert_eq!(a[0]["filename"], "leave.md");
        assert_eq!(a[0]["index"], 13, "characters, not bytes");
        assert_eq!(a[0]["quote"], "Leave is 31 days.");
        // The sealed record keeps the sources' text and the citations; GET shows the same.
        let stored: StoredOutput = serde_json::from_str(&items.record(None)).unwrap();
        let again: Vec<Value> = stored.items.iter().map(|i| i.json(true)).collect();
        assert_eq!(again, out);
        // Without `include`, the results are not shown (and still kept).
        let items = Items::new("cd").searched(&grounding(), false);
        assert_eq!(items.output()[0]["results"], Value::Null);
        assert!(items.record(None).contains("Leave is 31 days."));
    }

    #[test]
    fn the_stream_tells_the_search_first_and_the_citations_before_the_text_is_done() {
        let items = Items::new("ab").searched(&grounding(), false);
        let mut ev = Events {
            meta: Meta {
                id: "resp_ab".into(),
                created_at: 0,
                settings: settings(),
                items: items.clone(),
            },
            seq: 0,
            items,
        };
        let mut events = ev.opening();
        events.extend(ev.deltas(&[Delta::Content("Leave is 31 days.".into())]));
        events.extend(ev.closing((10, 5), false, 7));
        let kinds: Vec<String> = events
            .iter()
            .map(|b| {
                let t = std::str::from_utf8(b).unwrap();
                t.lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.file_search_call.in_progress",
                "response.file_search_call.searching",
                "response.file_search_call.completed",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.annotation.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let data = |i: usize| -> Value {
            let t = std::str::from_utf8(&events[i]).unwrap();
            serde_json::from_str(t.lines().nth(1).unwrap().trim_start_matches("data: ")).unwrap()
        };
        assert_eq!(data(2)["item"]["status"], "in_progress");
        assert_eq!(data(6)["item"]["status"], "completed");
        assert_eq!(data(7)["output_index"], 1);
        // No marker: the source sharing most words, at the end of the text.
        let a = data(10);
        assert_eq!(a["annotation_index"], 0);
        assert_eq!(a["annotation"]["file_id"], "file-leave");
        assert_eq!(a["annotation"]["index"], 17);
        assert_eq!(
            data(14)["response"]["output"][1]["content"][0]["annotations"][0],
            a["annotation"]
        );
    }

    #[test]
    fn a_stored_turn_continues_as_an_assistant_message_with_its_calls() {
        let mut items = Items::new("cd");
        items.feed(&Delta::Reasoning("hidden".into()));
        items.feed(&Delta::Content("Checking.".into()));
        items.feed(&Delta::CallStart {
            index: 0,
            id: "call_1".into(),
            name: "weather".into(),
        });
        items.feed(&Delta::CallArguments {
            index: 0,
            fragment: "{\"city\":\"Oslo\"}".into(),
        });
        let out: StoredOutput = serde_json::from_str(&items.record(None)).unwrap();
        let prompt = StoredPrompt {
            endpoint: "responses".into(),
            settings: Settings {
                model: "m".into(),
                instructions: Some("not carried".into()),
                tools: vec![],
                tool_choice: json!("auto"),
                parallel_tool_calls: true,
                text: json!({}),
                temperature: 1.0,
                top_p: 1.0,
                max_output_tokens: None,
                previous_response_id: None,
                metadata: Default::default(),
                store: true,
            },
            conversation: vec![json!({"role": "user", "content": "first"})],
            input: vec![json!({"role": "user", "content": "second"})],
        };
        let m = prompt.continued(&out).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].content, "first");
        assert_eq!(m[1].content, "second");
        assert_eq!(m[2].role, "assistant");
        assert_eq!(m[2].content, "Checking.");
        assert_eq!(m[2].tool_calls[0].arguments, json!({"city": "Oslo"}));
        assert!(!out.incomplete);
    }
}
