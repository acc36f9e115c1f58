//! `POST /v1/responses` (OpenAI's Responses API): the body as clients send it, checked into the
//! same [`ValidGenerate`] a chat completion gives, plus what the Responses API adds (`store`,
//! `previous_response_id`, `metadata`, `instructions` kept apart from the input).
//!
//! The input items are translated into chat messages and every shared check (sampling, tools,
//! schemas, limits) is the chat validator's, so the two endpoints cannot drift apart:
//! - a string `input` is one user message; `instructions` a system message in front;
//! - `{"type":"message","role","content"}` items (the `type` may be left out) with a string
//!   content or `input_text` / `output_text` parts;
//! - consecutive `function_call` items (`call_id`, `name`, `arguments`) are one assistant turn's
//!   tool calls, a `function_call_output` (`call_id`, `output`) is a `tool` message;
//! - `reasoning` items are dropped (templates re-render earlier turns without their thinking).
//!
//! Tools are Responses-shaped (`{"type":"function","name",…}`, flat), `tool_choice` names a tool
//! as `{"type":"function","name":…}`, and the output format is `text.format`. The one built-in
//! tool offered is `file_search` (retrieval from the caller's vector stores, run by the server
//! before generating unless `tool_choice` is `none`; `{"type":"file_search"}` and `required`
//! are met by it); `include` may ask for `file_search_call.results`. Fields that would
//! change the answer and are not supported — the other built-in tools (`web_search`, …),
//! `background: true`, non-text input parts — are a 400 that names them. Error parameters are
//! the Responses API's names (`input`, `text`, `max_output_tokens`), never the chat ones.

use super::{check_model_name, no_nul, shown, validate_chat, ChatWire, Limits, ValidGenerate};
use super::{ValidationError, MAX_METADATA_ENTRIES};
use crate::request::{ChatMessage, FileSearch};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The longest `previous_response_id` accepted (ids are generated here and much shorter).
pub const MAX_RESPONSE_ID_BYTES: usize = 128;

/// `POST /v1/responses` body.
#[derive(Debug, Deserialize)]
pub struct ResponsesWire {
    /// Model name.
    pub model: String,
    /// A string (one user message) or a list of input items.
    pub input: Value,
    /// A system message placed before the input (not carried over to a continuation).
    #[serde(default)]
    pub instructions: Option<String>,
    /// Function tools (flat Responses shape).
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type":"function","name":…}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Whether one answer may hold several calls (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", …}}`.
    #[serde(default)]
    pub text: Option<Value>,
    /// `{"effort": …}`: the template's thinking switch, as chat's `reasoning_effort`.
    #[serde(default)]
    pub reasoning: Option<Value>,
    /// 0..=2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// At least 1.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Any integer (an inhouse extension, as in chat).
    #[serde(default)]
    pub seed: Option<i64>,
    /// Keep the response for `previous_response_id` and `GET` (default true, as OpenAI).
    #[serde(default)]
    pub store: Option<bool>,
    /// Typed server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// The stored response this one continues.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Up to 16 string pairs kept with the response (keys ≤ 64 bytes, values ≤ 512).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Runs the response in the background: not supported (refused when true).
    #[serde(default)]
    pub background: Option<bool>,
    /// Extra output to include: `file_search_call.results` is honoured; OpenAI's other values
    /// are accepted and have nothing to add here.
    #[serde(default)]
    pub include: Option<Value>,
}

/// A checked Responses request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidResponses {
    /// What the engine runs: `instructions`, then the input, as a chat. A continuation puts the
    /// stored conversation between the two (see [`ValidResponses::input`]).
    pub generate: ValidGenerate,
    /// `instructions`, when given.
    pub instructions: Option<String>,
    /// The input items as chat messages, without the instructions.
    pub input: Vec<ChatMessage>,
    /// Keep the response.
    pub store: bool,
    /// The response this one continues.
    pub previous_response_id: Option<String>,
    /// The metadata pairs, in the client's order.
    pub metadata: Vec<(String, String)>,
    /// The `file_search` tool, when offered.
    pub file_search: Option<FileSearch>,
    /// Whether the search runs: the tool is offered and `tool_choice` is not `none`.
    pub search: bool,
    /// `include` asks for `file_search_call.results`.
    pub include_search_results: bool,
}

/// Tool kinds the Responses API defines that run on OpenAI's side and are not offered here
/// (`file_search` is: see [`validate_file_search`](super::validate_file_search)).
const BUILT_IN_TOOLS: &[&str] = &[
    "web_search",
    "web_search_preview",
    "computer_use_preview",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
];

fn bad(param: &'static str, message: impl Into<String>) -> ValidationError {
    ValidationError::param(param, message)
}

fn kind(v: &Value) -> &'static str {
    super::tools::kind_of(v)
}

/// Validates a Responses request.
pub fn validate_responses(
    w: ResponsesWire,
    owner_uid: u32,
    limits: &Limits,
) -> Result<ValidResponses, ValidationError> {
    check_model_name(&w.model)?;
    if w.background == Some(true) {
        return Err(bad(
            "background",
            "background responses are not supported; leave background unset or false",
        ));
    }
    let previous_response_id = match w.previous_response_id {
        None => None,
        Some(id) if id.is_empty() || id.len() > MAX_RESPONSE_ID_BYTES => {
            return Err(bad(
                "previous_response_id",
                format!("previous_response_id must be 1 to {MAX_RESPONSE_ID_BYTES} bytes"),
            ))
        }
        Some(id) => {
            no_nul("previous_response_id", &id)?;
            Some(id)
        }
    };
    let metadata = metadata(w.metadata)?;
    if let Some(i) = &w.instructions {
        no_nul("instructions", i)?;
    }
    let input_messages = input_items(&w.input, limits)?;
    let mut messages: Vec<Value> = Vec::with_capacity(input_messages.len() + 1);
    if let Some(i) = &w.instructions {
        messages.push(json!({"role": "system", "content": i}));
    }
    messages.extend(input_messages);

    let include_search_results = include(w.include)?;
    let (functions, file_search) = match w.tools {
        None => (None, None),
        Some(tools) => {
            let (f, s) = chat_tools(tools)?;
            (Some(f), s)
        }
    };
    let (search, tool_choice) = search_choice(
        file_search.is_some(),
        functions.as_ref().is_some_and(|f| !f.is_empty()),
        w.tool_choice,
    )?;

    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(w.model));
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = functions {
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice {
        chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    if let Some(p) = w.parallel_tool_calls {
        chat.insert("parallel_tool_calls".into(), Value::Bool(p));
    }
    if let Some(format) = text_format(w.text)? {
        chat.insert("response_format".into(), format);
    }
    if let Some(effort) = reasoning_effort(w.reasoning)? {
        chat.insert("reasoning_effort".into(), Value::String(effort));
    }
    let numbers = [
        ("temperature", w.temperature.map(Value::from)),
        ("top_p", w.top_p.map(Value::from)),
        (
            "max_completion_tokens",
            w.max_output_tokens.map(Value::from),
        ),
        ("seed", w.seed.map(Value::from)),
    ];
    for (k, v) in numbers {
        if let Some(v) = v {
            chat.insert(k.into(), v);
        }
    }
    if let Some(s) = w.stream {
        chat.insert("stream".into(), Value::Bool(s));
    }
    let wire: ChatWire = serde_json::from_value(Value::Object(chat))
        .map_err(|e| ValidationError::InvalidType(format!("invalid request: {e}")))?;
    let generate = validate_chat(wire, owner_uid, limits).map_err(renamed)?;
    let offset = usize::from(w.instructions.is_some());
    let input = match &generate.request.prompt {
        crate::request::Prompt::Chat(m) => m[offset..].to_vec(),
        crate::request::Prompt::Text(_) => unreachable!("validate_chat gives a chat prompt"),
    };
    Ok(ValidResponses {
        generate,
        instructions: w.instructions,
        input,
        store: w.store.unwrap_or(true),
        previous_response_id,
        metadata,
        file_search,
        search,
        include_search_results,
    })
}

/// OpenAI's `include` values; only `file_search_call.results` adds anything here.
const INCLUDE_VALUES: &[&str] = &[
    "file_search_call.results",
    "message.output_text.logprobs",
    "reasoning.encrypted_content",
    "web_search_call.action.sources",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "message.input_image.image_url",
];

/// Whether `include` asks for the search results.
fn include(v: Option<Value>) -> Result<bool, ValidationError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(bad(
                "include",
                format!("include must be a list of strings, not {}", kind(&other)),
            ))
        }
    };
    let mut results = false;
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if INCLUDE_VALUES.contains(&s) => results |= s == "file_search_call.results",
            Some(s) => {
                return Err(bad(
                    "include",
                    format!(
                        "include[{i}] {} is not one of OpenAI's include values",
                        shown(s)
                    ),
                ))
            }
            None => {
                return Err(bad(
                    "include",
                    format!("include[{i}] must be a string, not {}", kind(item)),
                ))
            }
        }
    }
    Ok(results)
}

/// Whether the search runs, and the `tool_choice` left for the function tools. `none` skips
/// the search; `{"type":"file_search"}` asks for it (and needs the tool); `required` with no
/// function tool is met by the search.
fn search_choice(
    offered: bool,
    functions: bool,
    choice: Option<Value>,
) -> Result<(bool, Option<Value>), ValidationError> {
    let is_file_search = |c: &Value| c.get("type").and_then(Value::as_str) == Some("file_search");
    match choice {
        Some(c) if is_file_search(&c) => {
            if !offered {
                return Err(bad(
                    "tool_choice",
                    "tool_choice {\"type\": \"file_search\"} needs a file_search tool in tools",
                ));
            }
            Ok((true, None))
        }
        Some(Value::String(s)) if s == "none" => Ok((false, Some(Value::String(s)))),
        Some(Value::String(s)) if s == "required" && offered && !functions => Ok((true, None)),
        other => Ok((offered, other)),
    }
}

/// A chat validator's error under the Responses API's field names.
fn renamed(e: ValidationError) -> ValidationError {
    let rename = |param: &'static str| match param {
        "messages" => "input",
        "response_format" => "text",
        "max_completion_tokens" | "max_tokens" => "max_output_tokens",
        "reasoning_effort" => "reasoning",
        other => other,
    };
    let fix = |m: String| {
        m.replace("max_completion_tokens", "max_output_tokens")
            .replace("response_format", "text.format")
            .replace("messages", "input")
    };
    match e {
        ValidationError::Param { param, message } => ValidationError::Param {
            param: rename(param),
            message: fix(message),
        },
        ValidationError::Limit { param, message } => ValidationError::Limit {
            param: rename(param),
            message: fix(message),
        },
        other => other,
    }
}

fn metadata(m: Option<Map<String, Value>>) -> Result<Vec<(String, String)>, ValidationError> {
    let Some(m) = m else { return Ok(Vec::new()) };
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(ValidationError::limit(
            "metadata",
            format!(
                "metadata holds {} pairs; at most {MAX_METADATA_ENTRIES}",
                m.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in m {
        let Value::String(v) = v else {
            return Err(bad(
                "metadata",
                format!(
                    "metadata.{}: values must be strings, not {}",
                    shown(&k),
                    kind(&v)
                ),
            ));
        };
        if k.is_empty() || k.len() > 64 || v.len() > 512 {
            return Err(bad(
                "metadata",
                format!(
                    "metadata.{}: keys must be 1 to 64 bytes, values at most 512",
                    shown(&k)
                ),
            ));
        }
        no_nul("metadata", &k)?;
        no_nul("metadata", &v)?;
        out.push((k, v));
    }
    Ok(out)
}

/// The input as chat message bodies (the chat validator checks them further).
fn input_items(input: &Value, limits: &Limits) -> Result<Vec<Value>, ValidationError> {
    let items = match input {
        Value::String(s) => return Ok(vec![json!({"role": "user", "content": s})]),
        Value::Array(items) if items.is_empty() => {
            return Err(bad("input", "input must not be empty"))
        }
        Value::Array(items) => items,
        other => {
            return Err(bad(
                "input",
                format!(
                    "input must be a string or a list of items, not {}",
                    kind(other)
                ),
            ))
        }
    };
    if items.len() > limits.max_messages {
        return Err(bad(
            "input",
            format!("at most {} input items are accepted", limits.max_messages),
        ));
    }
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            return Err(bad(
                "input",
                format!("input[{i}] must be an object, not {}", kind(item)),
            ));
        };
        let field = |name: &str| -> Result<&str, ValidationError> {
            match o.get(name) {
                Some(Value::String(s)) => Ok(s),
                Some(other) => Err(bad(
                    "input",
                    format!("input[{i}].{name} must be a string, not {}", kind(other)),
                )),
                None => Err(bad("input", format!("input[{i}].{name} is missing"))),
            }
        };
        let item_type = match o.get("type") {
            None => "message",
            Some(Value::String(t)) => t.as_str(),
            Some(other) => {
                return Err(bad(
                    "input",
                    format!("input[{i}].type must be a string, not {}", kind(other)),
                ))
            }
        };
        match item_type {
            "message" => {
                let role = field("role")?;
                let content = match o.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts_text(i, parts)?,
                    Some(other) => {
                        return Err(bad(
                            "input",
                            format!(
                                "input[{i}].content must be a string or a list of parts, not {}",
                                kind(other)
                            ),
                        ))
                    }
                    None => return Err(bad("input", format!("input[{i}].content is missing"))),
                };
                if !matches!(role, "user" | "system" | "developer" | "assistant") {
                    return Err(bad(
                        "input",
                        format!(
                            "input[{i}].role {} is not supported (user, system, developer, assistant)",
                            shown(role)
                        ),
                    ));
                }
                out.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let call = json!({"id": field("call_id")?, "type": "function",
                    "function": {"name": field("name")?, "arguments": field("arguments")?}});
                // Consecutive calls are one assistant turn, as the model wrote them.
                let joins = out.last().is_some_and(|m| {
                    m["role"] == "assistant" && m["content"].is_null() && m["tool_calls"].is_array()
                });
                if joins {
                    let last = out.last_mut().expect("checked above");
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    }
                } else {
                    out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                }
            }
            "function_call_output" => {
                let output = match o.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    // Some clients send the result as JSON rather than a string of it.
                    Some(v @ (Value::Object(_) | Value::Array(_))) => v.to_string(),
                    Some(other) => {
                        return Err(bad(
                            "input",
                            format!("input[{i}].output must be a string, not {}", kind(other)),
                        ))
                    }
                    None => return Err(bad("input", format!("input[{i}].output is missing"))),
                };
                out.push(json!({"role": "tool", "tool_call_id": field("call_id")?,
                                "content": output}));
            }
            "reasoning" => {}
            other => {
                return Err(bad(
                    "input",
                    format!(
                        "input[{i}].type {} is not supported (message, function_call, \
                         function_call_output, reasoning)",
                        shown(other)
                    ),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(bad("input", "input holds no message"));
    }
    Ok(out)
}

/// The text of a message's parts: `input_text` and `output_text` (and chat's `text`).
fn parts_text(i: usize, parts: &[Value]) -> Result<String, ValidationError> {
    let mut out = String::new();
    for (j, p) in parts.iter().enumerate() {
        match (p.get("type").and_then(Value::as_str), p.get("text")) {
            (Some("input_text" | "output_text" | "text"), Some(Value::String(t))) => {
                out.push_str(t)
            }
            (Some(t @ ("input_text" | "output_text" | "text")), _) => {
                return Err(bad(
                    "input",
                    format!("input[{i}].content[{j}]: a {t} part needs a string text"),
                ))
            }
            (Some(t), _) => {
                return Err(bad(
                    "input",
                    format!(
                        "input[{i}].content[{j}]: parts of type {} are not supported (input_text, output_text)",
                        shown(t)
                    ),
                ))
            }
            (None, _) => {
                return Err(bad(
                    "input",
                    format!("input[{i}].content[{j}].type is missing"),
                ))
            }
        }
    }
    Ok(out)
}

/// Responses tools (flat) as chat tools (`{"type":"function","function":{…}}`), and the
/// `file_search` tool (at most one) apart.
fn chat_tools(tools: Vec<Value>) -> Result<(Vec<Value>, Option<FileSearch>), ValidationError> {
    let mut search = None;
    let mut functions = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        if t.get("type").and_then(Value::as_str) == Some("file_search") {
            if search.is_some() {
                return Err(bad(
                    "tools",
                    format!("tools[{i}]: at most one file_search tool (it may name several vector stores)"),
                ));
            }
            search = Some(super::validate_file_search(
                "tools",
                &format!("tools[{i}]"),
                &t,
            )?);
            continue;
        }
        functions.push(chat_tool(i, t)?);
    }
    Ok((functions, search))
}

/// One Responses function tool as a chat tool.
fn chat_tool(i: usize, t: Value) -> Result<Value, ValidationError> {
    let Value::Object(mut o) = t else {
        return Err(bad("tools", format!("tools[{i}] must be an object")));
    };
    match o.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(k) if BUILT_IN_TOOLS.contains(&k) => {
            return Err(bad(
                "tools",
                format!(
                    "tools[{i}]: the built-in tool {k:?} is not available here (nothing \
                     leaves this server); offer function tools or file_search"
                ),
            ))
        }
        Some(k) => {
            return Err(bad(
                "tools",
                format!(
                    "tools[{i}].type {} is not supported (function, file_search)",
                    shown(k)
                ),
            ))
        }
        None => return Err(bad("tools", format!("tools[{i}].type is missing"))),
    }
    o.remove("type");
    Ok(json!({"type": "function", "function": Value::Object(o)}))
}

/// Responses' `tool_choice` as chat's.
fn chat_tool_choice(choice: Value) -> Result<Value, ValidationError> {
    match &choice {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name") {
                Some(name @ Value::String(_)) => {
                    Ok(json!({"type": "function", "function": {"name": name}}))
                }
                _ => Err(bad(
                    "tool_choice",
                    "tool_choice {\"type\": \"function\"} needs the tool's name",
                )),
            }
        }
        Value::Object(o) => Err(bad(
            "tool_choice",
            format!(
                "tool_choice of type {} is not supported (auto, none, required, or a function)",
                o.get("type").map(|t| t.to_string()).unwrap_or_default()
            ),
        )),
        _ => Ok(choice),
    }
}

/// `text.format` as chat's `response_format`.
fn text_format(text: Option<Value>) -> Result<Option<Value>, ValidationError> {
    let o = match text {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(bad(
                "text",
                format!("text must be an object, not {}", kind(&other)),
            ))
        }
    };
    let format = match o.get("format") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(f)) => f,
        Some(other) => {
            return Err(bad(
                "text",
                format!("text.format must be an object, not {}", kind(other)),
            ))
        }
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            // Responses puts name, schema and strict beside the type; chat nests them.
            let mut inner = format.clone();
            inner.remove("type");
            Ok(Some(
                json!({"type": "json_schema", "json_schema": Value::Object(inner)}),
            ))
        }
        _ => Ok(Some(Value::Object(format.clone()))),
    }
}

/// `reasoning.effort` as chat's `reasoning_effort`.
fn reasoning_effort(r: Option<Value>) -> Result<Option<String>, ValidationError> {
    match r {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => match o.get("effort") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(e)) => Ok(Some(e.clone())),
            Some(other) => Err(bad(
                "reasoning",
                format!("reasoning.effort must be a string, not {}", kind(other)),
            )),
        },
        Some(other) => Err(bad(
            "reasoning",
            format!("reasoning must be an object, not {}", kind(&other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{ResponseFormat, ToolChoice};

    fn limits() -> Limits {
        Limits {
            default_max_tokens: 64,
            max_tokens_cap: 2048,
            max_json_depth: 32,
            max_messages: 16,
            max_tools: Limits::DEFAULT_MAX_TOOLS,
            max_schema_bytes: Limits::DEFAULT_MAX_SCHEMA_BYTES,
            max_n: Limits::DEFAULT_MAX_N,
            max_top_logprobs: Limits::DEFAULT_MAX_TOP_LOGPROBS,
        }
    }

    fn check(body: Value) -> Result<ValidResponses, ValidationError> {
        let w: ResponsesWire = serde_json::from_value(body)
            .map_err(|e| ValidationError::InvalidType(e.to_string()))?;
        validate_responses(w, 1000, &limits())
    }

    fn messages(v: &ValidResponses) -> &[ChatMessage] {
        match &v.generate.request.prompt {
            crate::request::Prompt::Chat(m) => m,
            _ => panic!("a chat prompt"),
        }
    }

    #[test]
    fn a_string_input_with_instructions_is_a_system_and_a_user_message() {
        let v = check(
            json!({"model": "qwen", "input": "Hi", "instructions": "Be brief.",
                             "max_output_tokens": 20, "temperature": 0}),
        )
        .unwrap();
        let m = messages(&v);
        assert_eq!(
            m.iter()
                .map(|m| (m.role.as_str(), m.content.as_str()))
                .collect::<Vec<_>>(),
            [("system", "Be brief."), ("user", "Hi")]
        );
        assert_eq!(v.input, m[1..]);
        assert_eq!(v.generate.request.max_tokens, 20);
        assert!(v.store, "store defaults to true");
        assert!(!v.generate.stream);
    }

    #[test]
    fn items_become_messages_calls_and_tool_results() {
        let v = check(json!({"model": "qwen", "store": false, "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                         {"type": "input_text", "text": "Paris and Lyon?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_a", "name": "get_weather",
             "arguments": "{\"city\": \"Paris\"}"},
            {"type": "function_call", "call_id": "call_b", "name": "get_weather",
             "arguments": "{\"city\": \"Lyon\"}"},
            {"type": "function_call_output", "call_id": "call_a", "output": "18 C"},
            {"type": "function_call_output", "call_id": "call_b", "output": {"temp": 21}},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Paris 18, Lyon 21."}]}],
            "tools": [{"type": "function", "name": "get_weather",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "function", "name": "get_weather"}}))
        .unwrap();
        assert!(!v.store);
        let m = messages(&v);
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[0].content, "Weather in Paris and Lyon?");
        assert_eq!(m[1].role, "assistant");
        assert_eq!(
            m[1].tool_calls
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            ["call_a", "call_b"]
        );
        assert_eq!(m[1].tool_calls[1].arguments, json!({"city": "Lyon"}));
        assert_eq!(
            (m[2].role.as_str(), m[2].tool_call_id.as_deref()),
            ("tool", Some("call_a"))
        );
        assert_eq!(m[3].content, "{\"temp\":21}");
        assert_eq!(m[4].content, "Paris 18, Lyon 21.");
        let tools = v.generate.request.tools.as_ref().unwrap();
        assert_eq!(tools.tools[0].name, "get_weather");
        assert_eq!(tools.choice, ToolChoice::Named("get_weather".into()));
    }

    #[test]
    fn text_format_json_schema_and_metadata() {
        let v = check(json!({"model": "qwen", "input": "A person",
            "text": {"format": {"type": "json_schema", "name": "person", "strict": true,
                                "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}},
            "metadata": {"team": "data", "ticket": "42"},
            "previous_response_id": "resp_abc", "stream": true}))
        .unwrap();
        assert!(matches!(
            &v.generate.request.format,
            ResponseFormat::JsonSchema { name, .. } if name == "person"
        ));
        assert_eq!(
            v.metadata,
            [
                ("team".to_string(), "data".to_string()),
                ("ticket".into(), "42".into())
            ]
        );
        assert_eq!(v.previous_response_id.as_deref(), Some("resp_abc"));
        assert!(v.generate.stream);
        let v = check(
            json!({"model": "qwen", "input": "x", "text": {"format": {"type": "json_object"}}}),
        )
        .unwrap();
        assert_eq!(v.generate.request.format, ResponseFormat::JsonObject);
    }

    #[test]
    fn file_search_is_taken_apart_from_the_function_tools() {
        let fs = json!({"type": "file_search", "vector_store_ids": ["vs_1"], "max_num_results": 3});
        let fun = json!({"type": "function", "name": "f", "parameters": {"type": "object"}});
        let v = check(json!({"model": "qwen", "input": "Q", "tools": [fs, fun],
            "include": ["file_search_call.results"]}))
        .unwrap();
        let f = v.file_search.as_ref().unwrap();
        assert_eq!(
            (f.vector_store_ids.as_slice(), f.max_num_results),
            (&["vs_1".to_string()][..], 3)
        );
        assert!(v.search && v.include_search_results);
        let tools = v.generate.request.tools.as_ref().unwrap();
        assert_eq!(tools.tools.len(), 1);
        assert_eq!(tools.choice, ToolChoice::Auto);
        // Alone, with `required` or `{"type":"file_search"}`: the search meets the choice.
        for choice in [
            json!("required"),
            json!({"type": "file_search"}),
            json!("auto"),
        ] {
            let v = check(json!({"model": "qwen", "input": "Q", "tools": [fs],
                "tool_choice": choice}))
            .unwrap();
            assert!(v.search, "{choice}");
            assert_eq!(v.generate.request.tools, None);
            assert!(!v.include_search_results);
        }
        // `none`: offered, not run.
        let v = check(json!({"model": "qwen", "input": "Q", "tools": [fs], "tool_choice": "none"}))
            .unwrap();
        assert!(v.file_search.is_some() && !v.search);
        // Without the tool nothing is searched.
        let v = check(json!({"model": "qwen", "input": "Q"})).unwrap();
        assert!(v.file_search.is_none() && !v.search);
    }

    #[test]
    fn file_search_refusals() {
        let fs = json!({"type": "file_search", "vector_store_ids": ["vs_1"]});
        let cases = [
            (
                json!({"model": "qwen", "input": "x", "tools": [fs, fs]}),
                "tools",
            ),
            (
                json!({"model": "qwen", "input": "x",
                       "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"], "max_num_results": 51}]}),
                "tools",
            ),
            (
                json!({"model": "qwen", "input": "x", "tools": [{"type": "file_search"}]}),
                "tools",
            ),
            (
                json!({"model": "qwen", "input": "x", "tool_choice": {"type": "file_search"}}),
                "tool_choice",
            ),
            (
                json!({"model": "qwen", "input": "x", "include": ["everything"]}),
                "include",
            ),
            (
                json!({"model": "qwen", "input": "x", "include": "file_search_call.results"}),
                "include",
            ),
        ];
        for (body, param) in cases {
            let e = check(body.clone()).unwrap_err();
            assert_eq!(e.param_name(), Some(param), "{body}: {e}");
        }
    }

    #[test]
    fn refusals_name_the_responses_field() {
        let cases = [
            (
                json!({"model": "qwen", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools",
            ),
            (
                json!({"model": "qwen", "input": "x", "background": true}),
                "background",
            ),
            (json!({"model": "qwen", "input": []}), "input"),
            (json!({"model": "qwen", "input": 7}), "input"),
            (
                json!({"model": "qwen", "input": [{"role": "user",
                "content": [{"type": "input_image", "image_url": "x"}]}]}),
                "input",
            ),
            (
                json!({"model": "qwen", "input": [{"type": "function_call", "call_id": "c",
                "name": "f", "arguments": "{bad"}]}),
                "input",
            ),
            (
                json!({"model": "qwen", "input": [{"role": "tool", "content": "x"}]}),
                "input",
            ),
            (
                json!({"model": "qwen", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "qwen", "input": "x", "temperature": 3}),
                "temperature",
            ),
            (
                json!({"model": "qwen", "input": "x", "text": {"format": {"type": "yaml"}}}),
                "text",
            ),
            (
                json!({"model": "qwen", "input": "x", "metadata": {"k": 1}}),
                "metadata",
            ),
            (
                json!({"model": "qwen", "input": "x", "previous_response_id": ""}),
                "previous_response_id",
            ),
            (
                json!({"model": "qwen", "input": "x", "reasoning": {"effort": "max"}}),
                "reasoning",
            ),
            (
                json!({"model": "qwen", "input": "x", "tool_choice": {"type": "function"}}),
                "tool_choice",
            ),
            (json!({"model": "../x", "input": "x"}), "model"),
        ];
        for (body, param) in cases {
            let e = check(body.clone()).unwrap_err();
            assert_eq!(e.param_name(), Some(param), "{body}: {e}");
            assert!(!e.to_string().contains("messages"), "{body}: {e}");
            assert!(
                !e.to_string().contains("max_completion_tokens"),
                "{body}: {e}"
            );
        }
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        let e = check(json!({"model": "qwen", "input": "x", "metadata": many})).unwrap_err();
        assert_eq!(e.code(), "limit_exceeded");
    }
}
