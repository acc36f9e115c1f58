//! Validation: from untrusted JSON to checked requests.
//!
//! Every generation and embeddings body is parsed into the [`wire`] types and then checked into a
//! [`ValidGenerate`] or [`ValidEmbed`], whose sampling values are finite and in range and whose
//! token limits hold. Nothing reaches the engine before that. Failures are a typed
//! [`ValidationError`]; the API maps it to HTTP in one place (`api/error.rs`). This module lives
//! in `inhouse-formats`, without llama.cpp, so that its fuzz target builds in seconds.
//!
//! Beyond sampling, a chat request may offer tools (`tools`, `tool_choice`,
//! `parallel_tool_calls`; checked in `tools.rs`, with the `tool_calls` and `tool` messages of
//! its history), and both endpoints may ask for a `response_format`, `logprobs`, `n` choices and
//! a `logit_bias`; chat also for the template's thinking switch (`reasoning_effort`,
//! `enable_thinking`). Bounds the server configures ([`Limits`]: tools per request, schema size,
//! `n`, `top_logprobs`) and the fixed `logit_bias` bound answer [`ValidationError::Limit`]
//! (code `limit_exceeded`) when exceeded; every other bad value is a
//! [`ValidationError::Param`] (code `invalid_value`).

mod file_search;
mod responses;
mod tools;
pub mod wire;

pub use file_search::{
    validate_file_search, DEFAULT_NUM_RESULTS, MAX_NUM_RESULTS, MAX_VECTOR_STORE_IDS,
};
pub use responses::{validate_responses, ResponsesWire, ValidResponses, MAX_RESPONSE_ID_BYTES};
pub use tools::{valid_schema_name, valid_tool_name};
pub use wire::*;

use crate::request::{ChatMessage, GenerateRequest, LogprobsRequest, Prompt, Sampling};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Most `metadata` pairs on one response (OpenAI's limit).
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Most inputs in one embeddings request.
pub const MAX_EMBED_INPUTS: usize = 256;
/// Most entries in one `logit_bias`.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// The largest `top_logprobs` there is (OpenAI's bound; [`LogprobsRequest::top`] holds at most
/// this, whatever [`Limits::max_top_logprobs`] says).
pub const TOP_LOGPROBS_CEILING: u8 = 20;
/// The largest bias `logit_bias` may give a token, either way (OpenAI's range).
pub const MAX_LOGIT_BIAS_VALUE: f64 = 100.0;

/// Why a request body was refused. Each variant has one stable code (see [`ValidationError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The body nests deeper than the server accepts (checked before parsing).
    #[error("the body nests {depth} levels deep; at most {max} are accepted")]
    TooDeep {
        /// How deep the body nests.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not JSON, or not a JSON object.
    #[error("{0}")]
    InvalidJson(String),
    /// A required field is absent (serde's message names it).
    #[error("invalid request: {0}")]
    MissingField(String),
    /// A field has the wrong JSON type (serde's message names it).
    #[error("invalid request: {0}")]
    InvalidType(String),
    /// One field has a value that is not accepted.
    #[error("{message}")]
    Param {
        /// The field, as the client named it (`temperature`, `messages`, …).
        param: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// One field asks for more than a bound allows: more tools than `max_tools`, a schema
    /// longer than `max_schema_bytes`, `n` over `max_n`, `top_logprobs` over
    /// `max_top_logprobs`, more than [`MAX_LOGIT_BIAS`] biases. Code `limit_exceeded`.
    #[error("{message}")]
    Limit {
        /// The field, as the client named it (`tools`, `response_format`, `n`, …).
        param: &'static str,
        /// What is over which bound.
        message: String,
    },
}

impl ValidationError {
    /// A bad value in the field `param`.
    pub fn param(param: &'static str, message: impl Into<String>) -> Self {
        ValidationError::Param {
            param,
            message: message.into(),
        }
    }

    /// A value in the field `param` over a bound.
    pub fn limit(param: &'static str, message: impl Into<String>) -> Self {
        ValidationError::Limit {
            param,
            message: message.into(),
        }
    }

    /// The stable machine-readable code clients may match on: `json_too_deep`,
    /// `invalid_json`, `missing_field`, `invalid_type`, `invalid_value` or `limit_exceeded`.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::TooDeep { .. } => "json_too_deep",
            ValidationError::InvalidJson(_) => "invalid_json",
            ValidationError::MissingField(_) => "missing_field",
            ValidationError::InvalidType(_) => "invalid_type",
            ValidationError::Param { .. } => "invalid_value",
            ValidationError::Limit { .. } => "limit_exceeded",
        }
    }

    /// The field at fault, when one is.
    pub fn param_name(&self) -> Option<&'static str> {
        match self {
            ValidationError::Param { param, .. } | ValidationError::Limit { param, .. } => {
                Some(param)
            }
            _ => None,
        }
    }
}

/// Whether `name` is a model name: `^[a-z0-9][a-z0-9._:-]{0,63}$`. Names are looked up, never
/// used as paths, so a name that passes cannot reach outside the store.
pub fn valid_model_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':' | b'-')
        })
}

/// The deepest nesting of arrays and objects in a JSON text, counted without parsing it (so a
/// hostile, deeply nested body is refused before serde recurses into it). Brackets inside
/// strings do not count.
pub fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses a JSON body into `T`, turning each failure into an error that names the problem.
/// Bodies nested deeper than `max_depth` are refused before serde looks at them.
pub fn parse_body<T: DeserializeOwned>(
    body: &[u8],
    max_depth: usize,
) -> Result<T, ValidationError> {
    let depth = json_depth(body);
    if depth > max_depth {
        return Err(ValidationError::TooDeep {
            depth,
            max: max_depth,
        });
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ValidationError::InvalidJson(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ValidationError::InvalidJson(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("missing field") {
            ValidationError::MissingField(msg)
        } else {
            ValidationError::InvalidType(msg)
        }
    })
}

/// A generation request that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidGenerate {
    /// What the engine runs.
    pub request: GenerateRequest,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Add a usage chunk at the end of a stream.
    pub include_usage: bool,
}

/// A checked embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEmbed {
    /// Model name.
    pub model: String,
    /// Texts.
    pub inputs: Vec<String>,
    /// Answer vectors as base64 of little-endian f32.
    pub base64: bool,
}

/// Server-side limits applied while validating.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: u32,
    /// The largest `max_tokens` accepted.
    pub max_tokens_cap: u32,
    /// Deepest JSON nesting accepted.
    pub max_json_depth: usize,
    /// Most messages in one chat request.
    pub max_messages: usize,
    /// Most tools one request may offer.
    pub max_tools: usize,
    /// Longest JSON schema (a tool's parameters, a `json_schema` response format), in bytes of
    /// its compact serialization.
    pub max_schema_bytes: usize,
    /// Most choices (`n`) in one request; 1 is always accepted.
    pub max_n: u32,
    /// Largest `top_logprobs` (and completions' `logprobs`); capped at
    /// [`TOP_LOGPROBS_CEILING`].
    pub max_top_logprobs: u8,
}

impl Limits {
    /// The default of [`Limits::max_tools`].
    pub const DEFAULT_MAX_TOOLS: usize = 128;
    /// The default of [`Limits::max_schema_bytes`].
    pub const DEFAULT_MAX_SCHEMA_BYTES: usize = 64 * 1024;
    /// The default of [`Limits::max_n`].
    pub const DEFAULT_MAX_N: u32 = 8;
    /// The default of [`Limits::max_top_logprobs`].
    pub const DEFAULT_MAX_TOP_LOGPROBS: u8 = TOP_LOGPROBS_CEILING;
}

fn ranged(
    name: &'static str,
    v: Option<f64>,
    lo: f64,
    hi: f64,
    default: f32,
) -> Result<f32, ValidationError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x as f32),
        Some(x) => Err(ValidationError::param(
            name,
            format!("{name} = {x} is out of range ({lo}..={hi})"),
        )),
    }
}

/// `s` quoted for an error message, cut after 40 characters: a client's junk is not echoed at
/// length.
fn shown(s: &str) -> String {
    match s.char_indices().nth(40) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
    }
}

fn no_nul(name: &'static str, s: &str) -> Result<(), ValidationError> {
    if s.contains('\0') {
        return Err(ValidationError::param(
            name,
            format!("{name} contains a NUL character"),
        ));
    }
    Ok(())
}

/// A seed for requests that give none: different on every call.
fn fresh_seed() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let x = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    (x ^ (x >> 32)) as u32
}

/// What [`SamplingWire`] holds, checked (logprobs excepted: chat and completions spell them
/// differently).
struct Common {
    sampling: Sampling,
    max_tokens: u32,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    n: u32,
    logit_bias: Vec<(i32, f32)>,
}

/// `n`: 1 when absent, else 1 ..= `limits.max_n`.
fn validate_n(n: Option<u64>, limits: &Limits) -> Result<u32, ValidationError> {
    let max = limits.max_n.max(1);
    match n {
        None => Ok(1),
        Some(0) => Err(ValidationError::param("n", "n must be at least 1")),
        Some(n) if n <= u64::from(max) => Ok(n as u32),
        Some(n) => Err(ValidationError::limit(
            "n",
            format!("n = {n} choices asked; at most {max} are accepted"),
        )),
    }
}

/// A number of alternatives per position, in the field `param`: 0 ..= `limits.max_top_logprobs`
/// (itself at most [`TOP_LOGPROBS_CEILING`]).
fn top_count(param: &'static str, top: i64, limits: &Limits) -> Result<u8, ValidationError> {
    let max = limits.max_top_logprobs.min(TOP_LOGPROBS_CEILING);
    if top < 0 {
        return Err(ValidationError::param(
            param,
            format!("{param} = {top} must be 0 or more"),
        ));
    }
    if top > i64::from(max) {
        return Err(ValidationError::limit(
            param,
            format!("{param} = {top} alternatives asked; at most {max} are accepted"),
        ));
    }
    Ok(top as u8)
}

/// Chat's `logprobs` (a bool) and `top_logprobs` (which needs `logprobs: true`).
fn chat_logprobs(
    w: &SamplingWire,
    limits: &Limits,
) -> Result<Option<LogprobsRequest>, ValidationError> {
    let asked = match &w.logprobs {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ValidationError::param(
                "logprobs",
                format!(
                    "logprobs must be true or false in chat completions, not {} (top_logprobs gives the number of alternatives)",
                    tools::kind_of(other)
                ),
            ))
        }
    };
    match (asked, w.top_logprobs) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ValidationError::param(
            "top_logprobs",
            "top_logprobs requires logprobs: true",
        )),
        (true, top) => Ok(Some(LogprobsRequest {
            top: top_count("top_logprobs", top.unwrap_or(0), limits)?,
        })),
    }
}

/// Completions' `logprobs`: the number of alternatives per position (OpenAI's legacy API);
/// `false` or null asks for none.
fn completion_logprobs(
    w: &SamplingWire,
    limits: &Limits,
) -> Result<Option<LogprobsRequest>, ValidationError> {
    if w.top_logprobs.is_some() {
        return Err(ValidationError::param(
            "top_logprobs",
            "completions take the number of alternatives as logprobs (an integer), not top_logprobs",
        ));
    }
    let max = limits.max_top_logprobs.min(TOP_LOGPROBS_CEILING);
    match &w.logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(Some(LogprobsRequest {
            top: top_count("logprobs", n.as_i64().unwrap_or(0), limits)?,
        })),
        Some(other) => Err(ValidationError::param(
            "logprobs",
            format!(
                "logprobs must be an integer 0..={max} in completions (the number of alternatives), not {}",
                match other {
                    Value::Number(_) => "a fraction or a number that large",
                    v => tools::kind_of(v),
                }
            ),
        )),
    }
}

/// A `logit_bias` key: a token id, decimal digits only (the engine checks it against the
/// vocabulary).
fn token_id(key: &str) -> Option<i32> {
    if key.is_empty() || key.len() > 10 || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<i32>().ok()
}

/// `logit_bias`: token-id strings mapped to finite numbers in -100..=100, at most
/// [`MAX_LOGIT_BIAS`] of them, each token once; sorted by token id.
fn validate_logit_bias(v: Option<&Value>) -> Result<Vec<(i32, f32)>, ValidationError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ValidationError::param(
                "logit_bias",
                format!(
                    "logit_bias must be an object mapping token ids to biases, not {}",
                    tools::kind_of(other)
                ),
            ))
        }
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(ValidationError::limit(
            "logit_bias",
            format!(
                "logit_bias has {} entries; at most {MAX_LOGIT_BIAS} are accepted",
                map.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let Some(id) = token_id(key) else {
            return Err(ValidationError::param(
                "logit_bias",
                format!(
                    "logit_bias[{}]: the key must be a token id (a non-negative integer)",
                    shown(key)
                ),
            ));
        };
        let bias = match value.as_f64() {
            Some(b) if b.is_finite() && b.abs() <= MAX_LOGIT_BIAS_VALUE => b as f32,
            Some(b) => {
                return Err(ValidationError::param(
                    "logit_bias",
                    format!(
                        "logit_bias[{}]: the bias {b} is out of range (-100..=100)",
                        shown(key)
                    ),
                ))
            }
            None => {
                return Err(ValidationError::param(
                    "logit_bias",
                    format!(
                        "logit_bias[{}]: the bias must be a number in -100..=100, not {}",
                        shown(key),
                        tools::kind_of(value)
                    ),
                ))
            }
        };
        out.push((id, bias));
    }
    out.sort_by_key(|&(id, _)| id);
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ValidationError::param(
            "logit_bias",
            format!(
                "logit_bias: token {} is given twice (keys differing only in leading zeros)",
                w[0].0
            ),
        ));
    }
    Ok(out)
}

/// The template's thinking switch from `reasoning_effort`, `enable_thinking` and
/// `chat_template_kwargs.enable_thinking`; those given must agree.
fn validate_thinking(w: &ChatWire) -> Result<Option<bool>, ValidationError> {
    let effort = match w.reasoning_effort.as_deref() {
        None => None,
        Some("none" | "minimal") => Some(false),
        Some("low" | "medium" | "high") => Some(true),
        Some(other) => {
            return Err(ValidationError::param(
                "reasoning_effort",
                format!(
                    "reasoning_effort {} is not supported (none, minimal, low, medium, high)",
                    shown(other)
                ),
            ))
        }
    };
    let kwargs = match &w.chat_template_kwargs {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            if let Some(k) = m.keys().find(|k| k.as_str() != "enable_thinking") {
                return Err(ValidationError::param(
                    "chat_template_kwargs",
                    format!(
                        "chat_template_kwargs: {} is not supported (only enable_thinking)",
                        shown(k)
                    ),
                ));
            }
            match m.get("enable_thinking") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(ValidationError::param(
                        "chat_template_kwargs",
                        "chat_template_kwargs.enable_thinking must be true or false",
                    ))
                }
            }
        }
        Some(_) => {
            return Err(ValidationError::param(
                "chat_template_kwargs",
                "chat_template_kwargs must be an object",
            ))
        }
    };
    let mut thinking: Option<(&'static str, bool)> = None;
    for (field, value) in [
        ("reasoning_effort", effort),
        ("enable_thinking", w.enable_thinking),
        ("chat_template_kwargs", kwargs),
    ] {
        let Some(value) = value else { continue };
        match thinking {
            Some((first, earlier)) if earlier != value => {
                return Err(ValidationError::param(
                    field,
                    format!(
                        "{field} turns thinking {}, which {first} turns {}",
                        on_off(value),
                        on_off(earlier)
                    ),
                ))
            }
            Some(_) => {}
            None => thinking = Some((field, value)),
        }
    }
    Ok(thinking.map(|(_, v)| v))
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn validate_sampling(w: &SamplingWire, limits: &Limits) -> Result<Common, ValidationError> {
    let n = validate_n(w.n, limits)?;
    let logit_bias = validate_logit_bias(w.logit_bias.as_ref())?;
    // Defaults: OpenAI's for the fields it defines; llama.cpp's usual top_k 40 and min_p 0.05,
    // which keep small models from wandering at temperature 1.
    let temperature = ranged("temperature", w.temperature, 0.0, 2.0, 1.0)?;
    let top_p = ranged("top_p", w.top_p, 0.0, 1.0, 1.0)?;
    if top_p <= 0.0 {
        return Err(ValidationError::param(
            "top_p",
            "top_p must be greater than 0",
        ));
    }
    let min_p = ranged("min_p", w.min_p, 0.0, 1.0, 0.05)?;
    let presence_penalty = ranged("presence_penalty", w.presence_penalty, -2.0, 2.0, 0.0)?;
    let frequency_penalty = ranged("frequency_penalty", w.frequency_penalty, -2.0, 2.0, 0.0)?;
    let top_k = match w.top_k {
        None => 40,
        Some(k) if (0..=i64::from(i32::MAX)).contains(&k) => k as i32,
        Some(k) => {
            return Err(ValidationError::param(
                "top_k",
                format!("top_k = {k} must be 0 (off) or a positive integer"),
            ))
        }
    };
    let seed = match w.seed {
        // Fold the 64-bit seed into llama.cpp's 32 bits; equal seeds give equal samplers.
        Some(s) => ((s as u64) ^ ((s as u64) >> 32)) as u32,
        None => fresh_seed(),
    };
    let (field, asked) = match (w.max_completion_tokens, w.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match asked {
        None => limits.default_max_tokens.min(limits.max_tokens_cap),
        Some(m) if m >= 1 && m <= u64::from(limits.max_tokens_cap) => m as u32,
        Some(m) => {
            return Err(ValidationError::param(
                field,
                format!(
                    "{field} = {m} must be between 1 and {}",
                    limits.max_tokens_cap
                ),
            ))
        }
    };
    let stop = match &w.stop {
        None => vec![],
        Some(StopWire::One(s)) => vec![s.clone()],
        Some(StopWire::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ValidationError::param(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings are allowed"),
        ));
    }
    if stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ValidationError::param(
            "stop",
            "stop strings must be 1 to 256 bytes long",
        ));
    }
    let stream = w.stream.unwrap_or(false);
    let include_usage = w
        .stream_options
        .as_ref()
        .map(|o| o.include_usage)
        .unwrap_or(false);
    Ok(Common {
        sampling: Sampling {
            temperature,
            top_p,
            top_k,
            min_p,
            presence_penalty,
            frequency_penalty,
            seed,
        },
        max_tokens,
        stop,
        stream,
        include_usage,
        n,
        logit_bias,
    })
}

fn check_model_name(model: &str) -> Result<(), ValidationError> {
    // Names are looked up, never used as paths; a malformed one cannot name a model.
    // (`base+adapter` names each part.)
    if !model.split('+').all(valid_model_name) {
        return Err(ValidationError::param(
            "model",
            "model must be a model name (^[a-z0-9][a-z0-9._:-]{0,63}$)",
        ));
    }
    Ok(())
}

fn message_text(i: usize, m: &MessageWire) -> Result<String, ValidationError> {
    let text = match &m.content {
        None => String::new(),
        Some(ContentWire::Text(t)) => t.clone(),
        Some(ContentWire::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(ValidationError::param(
                            "messages",
                            format!("messages[{i}]: content part of type {kind:?} is not supported (only text)"),
                        ))
                    }
                }
            }
            out
        }
    };
    no_nul("messages", &text)?;
    Ok(text)
}

/// Validates a chat completion request.
pub fn validate_chat(
    w: ChatWire,
    owner_uid: u32,
    limits: &Limits,
) -> Result<ValidGenerate, ValidationError> {
    check_model_name(&w.model)?;
    if w.messages.is_empty() {
        return Err(ValidationError::param(
            "messages",
            "messages must not be empty",
        ));
    }
    if w.messages.len() > limits.max_messages {
        return Err(ValidationError::param(
            "messages",
            format!("at most {} messages are accepted", limits.max_messages),
        ));
    }
    let thinking = validate_thinking(&w)?;
    let tools = tools::validate_tools(
        w.tools,
        w.tool_choice.as_ref(),
        w.parallel_tool_calls,
        limits,
    )?;
    let format = tools::validate_response_format(w.response_format.as_ref(), limits)?;
    let mut messages = Vec::with_capacity(w.messages.len());
    for (i, m) in w.messages.iter().enumerate() {
        messages.push(chat_message(i, m, limits)?);
    }
    let logprobs = chat_logprobs(&w.sampling, limits)?;
    let c = validate_sampling(&w.sampling, limits)?;
    Ok(ValidGenerate {
        request: GenerateRequest {
            stop: c.stop,
            tools,
            format,
            logprobs,
            n: c.n,
            logit_bias: c.logit_bias,
            thinking,
            speculative: w.sampling.speculative.unwrap_or(true),
            ..GenerateRequest::new(
                owner_uid,
                w.model,
                Prompt::Chat(messages),
                c.sampling,
                c.max_tokens,
            )
        },
        stream: c.stream,
        include_usage: c.include_usage,
    })
}

/// Message `i` of a chat: its role, its text, and for an assistant turn its tool calls, for a
/// `tool` message the id of the call it answers.
fn chat_message(
    i: usize,
    m: &MessageWire,
    limits: &Limits,
) -> Result<ChatMessage, ValidationError> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ValidationError::param(
                "messages",
                format!(
                "messages[{i}].role {} is not supported (system, developer, user, assistant, tool)",
                shown(other)
            ),
            ))
        }
    };
    if m.content.is_none() && role != "assistant" {
        return Err(ValidationError::param(
            "messages",
            format!("messages[{i}].content is missing"),
        ));
    }
    let tool_calls = match &m.tool_calls {
        None => vec![],
        Some(calls) if calls.is_empty() => vec![],
        Some(calls) if role == "assistant" => tools::validate_tool_calls(i, calls, limits)?,
        Some(_) => {
            return Err(ValidationError::param(
                "messages",
                format!("messages[{i}].tool_calls: only assistant messages carry tool calls"),
            ))
        }
    };
    let (tool_call_id, name) = if role == "tool" {
        let id = match &m.tool_call_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                return Err(ValidationError::param(
                    "messages",
                    format!("messages[{i}].tool_call_id is missing (a tool message answers a call by its id)"),
                ))
            }
        };
        no_nul("messages", &id)?;
        if let Some(n) = &m.name {
            no_nul("messages", n)?;
        }
        (Some(id), m.name.clone())
    } else {
        (None, None)
    };
    Ok(ChatMessage {
        role: role.into(),
        content: message_text(i, m)?,
        tool_calls,
        tool_call_id,
        name,
    })
}

/// Validates a plain completion request.
pub fn validate_completion(
    w: CompletionWire,
    owner_uid: u32,
    limits: &Limits,
) -> Result<ValidGenerate, ValidationError> {
    check_model_name(&w.model)?;
    if w.echo == Some(true) {
        return Err(ValidationError::param("echo", "echo is not supported"));
    }
    let prompt = match w.prompt {
        PromptWire::One(p) => p,
        PromptWire::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptWire::Many(_) => {
            return Err(ValidationError::param(
                "prompt",
                "exactly one prompt per request is supported",
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ValidationError::param("prompt", "prompt must not be empty"));
    }
    no_nul("prompt", &prompt)?;
    let format = tools::validate_response_format(w.response_format.as_ref(), limits)?;
    let logprobs = completion_logprobs(&w.sampling, limits)?;
    let c = validate_sampling(&w.sampling, limits)?;
    Ok(ValidGenerate {
        request: GenerateRequest {
            stop: c.stop,
            format,
            logprobs,
            n: c.n,
            logit_bias: c.logit_bias,
            speculative: w.sampling.speculative.unwrap_or(true),
            ..GenerateRequest::new(
                owner_uid,
                w.model,
                Prompt::Text(prompt),
                c.sampling,
                c.max_tokens,
            )
        },
        stream: c.stream,
        include_usage: c.include_usage,
    })
}

/// Validates an embeddings request.
pub fn validate_embeddings(w: EmbeddingsWire) -> Result<ValidEmbed, ValidationError> {
    check_model_name(&w.model)?;
    let inputs = match w.input {
        EmbedInputWire::One(s) => vec![s],
        EmbedInputWire::Many(v) => v,
    };
    if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
        return Err(ValidationError::param(
            "input",
            format!("input must hold 1 to {MAX_EMBED_INPUTS} strings"),
        ));
    }
    for s in &inputs {
        if s.is_empty() {
            return Err(ValidationError::param(
                "input",
                "input strings must not be empty",
            ));
        }
        no_nul("input", s)?;
    }
    let base64 = match w.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ValidationError::param(
                "encoding_format",
                format!("encoding_format {other:?} is not supported (float, base64)"),
            ))
        }
    };
    Ok(ValidEmbed {
        model: w.model,
        inputs,
        base64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ResponseFormat;

    const LIMITS: Limits = Limits {
        default_max_tokens: 100,
        max_tokens_cap: 4096,
        max_json_depth: 8,
        max_messages: 3,
        max_tools: 4,
        max_schema_bytes: 256,
        max_n: 8,
        max_top_logprobs: 20,
    };

    pub(super) fn chat(body: &str) -> Result<ValidGenerate, ValidationError> {
        chat_with(body, &LIMITS)
    }

    pub(super) fn chat_with(body: &str, limits: &Limits) -> Result<ValidGenerate, ValidationError> {
        validate_chat(
            parse_body(body.as_bytes(), limits.max_json_depth)?,
            1000,
            limits,
        )
    }

    pub(super) fn completion(body: &str) -> Result<ValidGenerate, ValidationError> {
        validate_completion(
            parse_body(body.as_bytes(), LIMITS.max_json_depth)?,
            1000,
            &LIMITS,
        )
    }

    /// A chat body with one user message and `extra` fields (`"a":1,"b":2`).
    pub(super) fn with(extra: &str) -> String {
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],{extra}}}"#)
    }

    /// The field a refused request names as a bad value; panics when it was accepted or refused
    /// otherwise.
    pub(super) fn refused_param(body: &str) -> &'static str {
        bad_value(chat(body), body)
    }

    /// The field of a [`ValidationError::Param`] refusal.
    pub(super) fn bad_value(r: Result<ValidGenerate, ValidationError>, body: &str) -> &'static str {
        match r {
            Err(ValidationError::Param { param, .. }) => param,
            other => panic!("{body}: expected a bad field, got {other:?}"),
        }
    }

    /// The field of a [`ValidationError::Limit`] refusal.
    pub(super) fn over_limit(
        r: Result<ValidGenerate, ValidationError>,
        body: &str,
    ) -> &'static str {
        match r {
            Err(e @ ValidationError::Limit { .. }) => {
                assert_eq!(e.code(), "limit_exceeded");
                e.param_name().unwrap()
            }
            other => panic!("{body}: expected a limit refusal, got {other:?}"),
        }
    }

    /// The message of a refusal.
    pub(super) fn message(r: Result<ValidGenerate, ValidationError>) -> String {
        r.expect_err("expected a refusal").to_string()
    }

    #[test]
    fn a_plain_chat_request_validates_with_defaults() {
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(v.request.max_tokens, 100);
        assert_eq!(v.request.sampling.temperature, 1.0);
        assert!(!v.stream);
    }

    #[test]
    fn errors_have_stable_codes() {
        assert!(matches!(chat("{"), Err(ValidationError::InvalidJson(_))));
        assert_eq!(chat("{").unwrap_err().code(), "invalid_json");
        assert!(matches!(chat("[]"), Err(ValidationError::InvalidJson(_))));
        assert_eq!(chat("[]").unwrap_err().code(), "invalid_json");
        let missing = chat(r#"{"model":"m"}"#).unwrap_err();
        assert!(
            matches!(&missing, ValidationError::MissingField(m) if m.contains("messages")),
            "{missing:?}"
        );
        assert_eq!(missing.code(), "missing_field");
        let wrong = chat(r#"{"model":"m","messages":"x"}"#).unwrap_err();
        assert!(
            matches!(wrong, ValidationError::InvalidType(_)),
            "{wrong:?}"
        );
        assert_eq!(wrong.code(), "invalid_type");
        let empty = chat(r#"{"model":"m","messages":[]}"#).unwrap_err();
        assert_eq!(empty.code(), "invalid_value");
        assert_eq!(empty.param_name(), Some("messages"));
    }

    #[test]
    fn numbers_are_range_checked() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"#;
        for (bad, param) in [
            (r#""temperature":-1}"#, "temperature"),
            (r#""temperature":3}"#, "temperature"),
            (r#""top_p":0}"#, "top_p"),
            (r#""min_p":1.5}"#, "min_p"),
            (r#""top_k":-1}"#, "top_k"),
            (r#""max_tokens":0}"#, "max_tokens"),
            (r#""max_tokens":9223372036854775808}"#, "max_tokens"),
            (r#""max_completion_tokens":5000}"#, "max_completion_tokens"),
            (r#""presence_penalty":2.5}"#, "presence_penalty"),
            (r#""frequency_penalty":-3}"#, "frequency_penalty"),
            (r#""n":0}"#, "n"),
            (r#""logprobs":3}"#, "logprobs"),
        ] {
            assert_eq!(refused_param(&format!("{base}{bad}")), param, "{bad}");
        }
        // Beyond u64: serde refuses the type before any range check.
        let huge = chat(&format!("{base}\"max_tokens\":9223372036854775808000}}")).unwrap_err();
        assert!(matches!(huge, ValidationError::InvalidType(_)), "{huge:?}");
        let ok = chat(&format!(
            "{base}\"max_completion_tokens\":5,\"max_tokens\":9}}"
        ))
        .unwrap();
        assert_eq!(ok.request.max_tokens, 5);
    }

    #[test]
    fn depth_messages_and_model_names_are_bounded() {
        let deep = format!(
            "{{\"model\":\"m\",\"x\":{}1{}}}",
            "[".repeat(20),
            "]".repeat(20)
        );
        assert_eq!(
            chat(&deep).unwrap_err(),
            ValidationError::TooDeep { depth: 21, max: 8 }
        );
        assert_eq!(chat(&deep).unwrap_err().code(), "json_too_deep");
        let four = r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"a"},{"role":"user","content":"a"},{"role":"user","content":"a"}]}"#;
        assert_eq!(refused_param(four), "messages");
        for bad in ["../../etc/passwd", "/abs", "Upper", ""] {
            let body =
                format!(r#"{{"model":"{bad}","messages":[{{"role":"user","content":"a"}}]}}"#);
            assert_eq!(refused_param(&body), "model", "{bad}");
        }
        assert_eq!(
            refused_param(
                r#"{"model":"m","messages":[{"role":"user","content":"a"}],"tools":[{}]}"#
            ),
            "tools"
        );
        assert_eq!(
            refused_param(
                r#"{"model":"m","messages":[{"role":"user","content":"a"}],"response_format":{"type":"xml"}}"#
            ),
            "response_format"
        );
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[["}]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        assert_eq!(json_depth(b"[[[[[]]]]]"), 5);
        assert_eq!(json_depth(b""), 0);
    }

    #[test]
    fn equal_seeds_give_equal_samplers() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":-7}"#;
        assert_eq!(
            chat(body).unwrap().request.sampling.seed,
            chat(body).unwrap().request.sampling.seed
        );
    }

    #[test]
    fn roles_and_content_parts() {
        let v = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"user","content":"q"}]}"#,
        )
        .unwrap();
        let Prompt::Chat(m) = v.request.prompt else {
            panic!()
        };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[0].content, "ab");
        assert_eq!(
            refused_param(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#),
            "messages"
        );
        assert_eq!(
            refused_param(r#"{"model":"m","messages":[{"role":"user","content":"a\u0000"}]}"#),
            "messages"
        );
        assert_eq!(
            refused_param(
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#
            ),
            "messages"
        );
        assert_eq!(
            refused_param(r#"{"model":"m","messages":[{"role":"user"}]}"#),
            "messages"
        );
    }

    #[test]
    fn stop_strings() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"#;
        assert_eq!(
            chat(&format!("{base}\"x\"}}")).unwrap().request.stop,
            vec!["x"]
        );
        assert_eq!(
            refused_param(&format!("{base}[\"a\",\"b\",\"c\",\"d\",\"e\"]}}")),
            "stop"
        );
        assert_eq!(refused_param(&format!("{base}[\"\"]}}")), "stop");
    }

    #[test]
    fn completions_and_embeddings_name_their_fields() {
        let completion = |body: &str| {
            validate_completion(parse_body(body.as_bytes(), 8).unwrap(), 1, &LIMITS)
                .unwrap_err()
                .param_name()
        };
        assert_eq!(completion(r#"{"model":"m","prompt":""}"#), Some("prompt"));
        assert_eq!(
            completion(r#"{"model":"m","prompt":["a","b"]}"#),
            Some("prompt")
        );
        assert_eq!(
            completion(r#"{"model":"m","prompt":"a","echo":true}"#),
            Some("echo")
        );
        assert_eq!(completion(r#"{"model":"M","prompt":"a"}"#), Some("model"));
        let embed = |body: &str| {
            validate_embeddings(parse_body(body.as_bytes(), 8).unwrap())
                .unwrap_err()
                .param_name()
        };
        assert_eq!(embed(r#"{"model":"m","input":[]}"#), Some("input"));
        assert_eq!(embed(r#"{"model":"m","input":[""]}"#), Some("input"));
        assert_eq!(
            embed(r#"{"model":"m","input":"a","encoding_format":"hex"}"#),
            Some("encoding_format")
        );
        let ok = validate_embeddings(
            parse_body(
                br#"{"model":"m","input":["a","b"],"encoding_format":"base64"}"#,
                8,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(ok.inputs.len(), 2);
        assert!(ok.base64);
    }

    #[test]
    fn a_plain_request_keeps_the_new_fields_at_their_defaults() {
        let r = chat(&with(r#""temperature":0"#)).unwrap().request;
        assert_eq!(
            (
                &r.tools,
                &r.format,
                r.logprobs,
                r.n,
                &r.logit_bias,
                r.thinking
            ),
            (&None, &ResponseFormat::Text, None, 1, &vec![], None)
        );
        let r = completion(r#"{"model":"m","prompt":"a"}"#).unwrap().request;
        assert_eq!(
            (
                &r.tools,
                &r.format,
                r.logprobs,
                r.n,
                &r.logit_bias,
                r.thinking
            ),
            (&None, &ResponseFormat::Text, None, 1, &vec![], None)
        );
    }

    #[test]
    fn limit_refusals_have_their_own_code() {
        let e = ValidationError::limit("n", "too many");
        assert_eq!(e.code(), "limit_exceeded");
        assert_eq!(e.param_name(), Some("n"));
        assert_eq!(e.to_string(), "too many");
        assert_eq!(ValidationError::param("n", "x").code(), "invalid_value");
    }

    #[test]
    fn n_is_bounded_by_the_limit() {
        assert_eq!(chat(&with(r#""n":3"#)).unwrap().request.n, 3);
        assert_eq!(chat(&with(r#""n":8"#)).unwrap().request.n, 8);
        assert_eq!(chat(&with(r#""n":null"#)).unwrap().request.n, 1);
        let body = with(r#""n":9"#);
        assert_eq!(over_limit(chat(&body), &body), "n");
        let body = with(r#""n":18446744073709551615"#);
        assert_eq!(over_limit(chat(&body), &body), "n");
        assert_eq!(refused_param(&with(r#""n":0"#)), "n");
        // A bound configured below 1 still accepts the default.
        let none = Limits { max_n: 0, ..LIMITS };
        assert_eq!(chat_with(&with(r#""n":1"#), &none).unwrap().request.n, 1);
        assert_eq!(
            completion(r#"{"model":"m","prompt":"a","n":2}"#)
                .unwrap()
                .request
                .n,
            2
        );
        let body = r#"{"model":"m","prompt":"a","n":9}"#;
        assert_eq!(over_limit(completion(body), body), "n");
        let body = r#"{"model":"m","prompt":"a","n":0}"#;
        assert_eq!(bad_value(completion(body), body), "n");
    }

    #[test]
    fn chat_logprobs_are_a_bool_with_top_logprobs() {
        let lp = |extra: &str| chat(&with(extra)).unwrap().request.logprobs;
        assert_eq!(lp(r#""logprobs":true"#), Some(LogprobsRequest { top: 0 }));
        assert_eq!(
            lp(r#""logprobs":true,"top_logprobs":5"#),
            Some(LogprobsRequest { top: 5 })
        );
        assert_eq!(
            lp(r#""logprobs":true,"top_logprobs":20"#),
            Some(LogprobsRequest { top: 20 })
        );
        assert_eq!(lp(r#""logprobs":false"#), None);
        assert_eq!(lp(r#""logprobs":null"#), None);
        let body = with(r#""logprobs":true,"top_logprobs":21"#);
        assert_eq!(over_limit(chat(&body), &body), "top_logprobs");
        assert_eq!(
            refused_param(&with(r#""logprobs":true,"top_logprobs":-1"#)),
            "top_logprobs"
        );
        assert_eq!(refused_param(&with(r#""top_logprobs":2"#)), "top_logprobs");
        assert_eq!(
            refused_param(&with(r#""logprobs":false,"top_logprobs":0"#)),
            "top_logprobs"
        );
        assert_eq!(refused_param(&with(r#""logprobs":2"#)), "logprobs");
        assert_eq!(refused_param(&with(r#""logprobs":"yes""#)), "logprobs");
        // The configured bound, and the ceiling of 20 whatever is configured.
        let five = Limits {
            max_top_logprobs: 5,
            ..LIMITS
        };
        let body = with(r#""logprobs":true,"top_logprobs":6"#);
        assert_eq!(over_limit(chat_with(&body, &five), &body), "top_logprobs");
        let wide = Limits {
            max_top_logprobs: 200,
            ..LIMITS
        };
        let body = with(r#""logprobs":true,"top_logprobs":21"#);
        assert_eq!(over_limit(chat_with(&body, &wide), &body), "top_logprobs");
    }

    #[test]
    fn completion_logprobs_are_a_count() {
        let lp = |extra: &str| {
            completion(&format!(r#"{{"model":"m","prompt":"a",{extra}}}"#))
                .unwrap()
                .request
                .logprobs
        };
        assert_eq!(lp(r#""logprobs":3"#), Some(LogprobsRequest { top: 3 }));
        assert_eq!(lp(r#""logprobs":0"#), Some(LogprobsRequest { top: 0 }));
        assert_eq!(lp(r#""logprobs":20"#), Some(LogprobsRequest { top: 20 }));
        assert_eq!(lp(r#""logprobs":false"#), None);
        assert_eq!(lp(r#""logprobs":null"#), None);
        for (extra, param) in [
            (r#""logprobs":true"#, "logprobs"),
            (r#""logprobs":-1"#, "logprobs"),
            (r#""logprobs":1.5"#, "logprobs"),
            (r#""logprobs":"3""#, "logprobs"),
            (r#""logprobs":3,"top_logprobs":3"#, "top_logprobs"),
        ] {
            let body = format!(r#"{{"model":"m","prompt":"a",{extra}}}"#);
            assert_eq!(bad_value(completion(&body), &body), param, "{extra}");
        }
        for extra in [r#""logprobs":21"#, r#""logprobs":99999999999"#] {
            let body = format!(r#"{{"model":"m","prompt":"a",{extra}}}"#);
            assert_eq!(over_limit(completion(&body), &body), "logprobs");
        }
    }

    #[test]
    fn logit_bias_is_checked_entry_by_entry() {
        let bias = |extra: &str| chat(&with(extra)).unwrap().request.logit_bias;
        assert_eq!(
            bias(r#""logit_bias":{"15":-100,"7":2.5,"0":100}"#),
            vec![(0, 100.0), (7, 2.5), (15, -100.0)]
        );
        assert_eq!(bias(r#""logit_bias":{}"#), vec![]);
        assert_eq!(bias(r#""logit_bias":null"#), vec![]);
        assert_eq!(
            bias(r#""logit_bias":{"2147483647":1}"#),
            vec![(i32::MAX, 1.0)]
        );
        for (entry, named) in [
            (r#"{"abc":1}"#, r#"logit_bias["abc"]"#),
            (r#"{"-1":1}"#, r#"logit_bias["-1"]"#),
            (r#"{"+1":1}"#, r#"logit_bias["+1"]"#),
            (r#"{" 1":1}"#, r#"logit_bias[" 1"]"#),
            (r#"{"":1}"#, r#"logit_bias[""]"#),
            (r#"{"1.0":1}"#, r#"logit_bias["1.0"]"#),
            (r#"{"2147483648":1}"#, r#"logit_bias["2147483648"]"#),
            (r#"{"5":100.5}"#, r#"logit_bias["5"]"#),
            (r#"{"5":-101}"#, r#"logit_bias["5"]"#),
            (r#"{"5":"1"}"#, r#"logit_bias["5"]"#),
            (r#"{"5":null}"#, r#"logit_bias["5"]"#),
            (r#"{"5":[1]}"#, r#"logit_bias["5"]"#),
            (r#"{"01":1,"1":2}"#, "token 1 is given twice"),
        ] {
            let body = with(&format!(r#""logit_bias":{entry}"#));
            assert_eq!(refused_param(&body), "logit_bias", "{entry}");
            let m = message(chat(&body));
            assert!(m.contains(named), "{entry}: {m}");
        }
        assert_eq!(refused_param(&with(r#""logit_bias":[1]"#)), "logit_bias");
        assert_eq!(refused_param(&with(r#""logit_bias":"x""#)), "logit_bias");
        // A long junk key is not echoed at length.
        let long = "x".repeat(5000);
        let m = message(chat(&with(&format!(r#""logit_bias":{{"{long}":1}}"#))));
        assert!(m.len() < 200, "{m}");
        let many: Vec<String> = (0..=MAX_LOGIT_BIAS).map(|i| format!("\"{i}\":1")).collect();
        let body = with(&format!(r#""logit_bias":{{{}}}"#, many.join(",")));
        assert_eq!(over_limit(chat(&body), &body), "logit_bias");
        let enough = &many[..MAX_LOGIT_BIAS];
        let body = with(&format!(r#""logit_bias":{{{}}}"#, enough.join(",")));
        assert_eq!(
            chat(&body).unwrap().request.logit_bias.len(),
            MAX_LOGIT_BIAS
        );
        // Completions too.
        let body = r#"{"model":"m","prompt":"a","logit_bias":{"3":-5}}"#;
        assert_eq!(
            completion(body).unwrap().request.logit_bias,
            vec![(3, -5.0)]
        );
        let body = r#"{"model":"m","prompt":"a","logit_bias":{"x":-5}}"#;
        assert_eq!(bad_value(completion(body), body), "logit_bias");
    }

    #[test]
    fn thinking_follows_reasoning_effort_and_enable_thinking() {
        let thinking = |extra: &str| chat(&with(extra)).unwrap().request.thinking;
        for (effort, on) in [
            ("none", false),
            ("minimal", false),
            ("low", true),
            ("medium", true),
            ("high", true),
        ] {
            assert_eq!(
                thinking(&format!(r#""reasoning_effort":"{effort}""#)),
                Some(on),
                "{effort}"
            );
        }
        assert_eq!(thinking(r#""reasoning_effort":null"#), None);
        assert_eq!(thinking(r#""enable_thinking":true"#), Some(true));
        assert_eq!(thinking(r#""enable_thinking":false"#), Some(false));
        assert_eq!(
            thinking(r#""chat_template_kwargs":{"enable_thinking":false}"#),
            Some(false)
        );
        assert_eq!(thinking(r#""chat_template_kwargs":{}"#), None);
        assert_eq!(
            thinking(r#""reasoning_effort":"high","enable_thinking":true"#),
            Some(true)
        );
        for (extra, param) in [
            (r#""reasoning_effort":"max""#, "reasoning_effort"),
            (
                r#""reasoning_effort":"high","enable_thinking":false"#,
                "enable_thinking",
            ),
            (
                r#""enable_thinking":true,"chat_template_kwargs":{"enable_thinking":false}"#,
                "chat_template_kwargs",
            ),
            (
                r#""chat_template_kwargs":{"enable_thinking":"yes"}"#,
                "chat_template_kwargs",
            ),
            (
                r#""chat_template_kwargs":{"tools_in_user_message":true}"#,
                "chat_template_kwargs",
            ),
            (r#""chat_template_kwargs":[]"#, "chat_template_kwargs"),
        ] {
            assert_eq!(refused_param(&with(extra)), param, "{extra}");
        }
    }

    #[test]
    fn shown_cuts_long_values() {
        assert_eq!(shown("abc"), "\"abc\"");
        assert_eq!(shown(&"é".repeat(41)), format!("{:?}…", "é".repeat(40)));
        assert_eq!(shown("a\u{1}"), "\"a\\u{1}\"");
    }
}
