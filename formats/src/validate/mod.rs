//! Validation: from untrusted JSON to checked requests.
//!
//! Every generation and embeddings body is parsed into the [`wire`] types and then checked into a
//! [`ValidGenerate`] or [`ValidEmbed`], whose sampling values are finite and in range and whose
//! token limits hold. Nothing reaches the engine before that. Failures are a typed
//! [`ValidationError`]; the API maps it to HTTP in one place (`api/error.rs`). This module lives
//! in `inhouse-formats`, without llama.cpp, so that its fuzz target builds in seconds.

pub mod wire;

pub use wire::*;

use crate::request::{ChatMessage, GenerateRequest, Prompt, Sampling};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Most inputs in one embeddings request.
pub const MAX_EMBED_INPUTS: usize = 256;

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
}

impl ValidationError {
    /// A bad value in the field `param`.
    pub fn param(param: &'static str, message: impl Into<String>) -> Self {
        ValidationError::Param {
            param,
            message: message.into(),
        }
    }

    /// The stable machine-readable code clients may match on.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::TooDeep { .. } => "json_too_deep",
            ValidationError::InvalidJson(_) => "invalid_json",
            ValidationError::MissingField(_) => "missing_field",
            ValidationError::InvalidType(_) => "invalid_type",
            ValidationError::Param { .. } => "invalid_value",
        }
    }

    /// The field at fault, when one is.
    pub fn param_name(&self) -> Option<&'static str> {
        match self {
            ValidationError::Param { param, .. } => Some(param),
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

fn validate_sampling(
    w: &SamplingWire,
    limits: &Limits,
) -> Result<(Sampling, u32, Vec<String>, bool, bool), ValidationError> {
    if let Some(n) = w.n {
        if n != 1 {
            return Err(ValidationError::param("n", "only n = 1 is supported"));
        }
    }
    if matches!(w.logprobs, Some(Value::Bool(true)) | Some(Value::Number(_))) {
        return Err(ValidationError::param(
            "logprobs",
            "logprobs are not supported",
        ));
    }
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
    Ok((
        Sampling {
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
    ))
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
    if w.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ValidationError::param("tools", "tools are not supported"));
    }
    if let Some(rf) = &w.response_format {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ValidationError::param(
                "response_format",
                "only response_format {\"type\":\"text\"} is supported",
            ));
        }
    }
    let mut messages = Vec::with_capacity(w.messages.len());
    for (i, m) in w.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ValidationError::param(
                    "messages",
                    format!("messages[{i}].role {other:?} is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        if m.content.is_none() && role != "assistant" {
            return Err(ValidationError::param(
                "messages",
                format!("messages[{i}].content is missing"),
            ));
        }
        messages.push(ChatMessage::text(role, message_text(i, m)?));
    }
    let (sampling, max_tokens, stop, stream, include_usage) =
        validate_sampling(&w.sampling, limits)?;
    Ok(ValidGenerate {
        request: GenerateRequest {
            stop,
            ..GenerateRequest::new(owner_uid, w.model, Prompt::Chat(messages), sampling, max_tokens)
        },
        stream,
        include_usage,
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
    let (sampling, max_tokens, stop, stream, include_usage) =
        validate_sampling(&w.sampling, limits)?;
    Ok(ValidGenerate {
        request: GenerateRequest {
            stop,
            ..GenerateRequest::new(owner_uid, w.model, Prompt::Text(prompt), sampling, max_tokens)
        },
        stream,
        include_usage,
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

    const LIMITS: Limits = Limits {
        default_max_tokens: 100,
        max_tokens_cap: 4096,
        max_json_depth: 8,
        max_messages: 3,
    };

    fn chat(body: &str) -> Result<ValidGenerate, ValidationError> {
        validate_chat(
            parse_body(body.as_bytes(), LIMITS.max_json_depth)?,
            1000,
            &LIMITS,
        )
    }

    /// The field a refused request names; panics when it was accepted or names none.
    fn refused_param(body: &str) -> &'static str {
        match chat(body) {
            Err(ValidationError::Param { param, .. }) => param,
            other => panic!("{body}: expected a bad field, got {other:?}"),
        }
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
            (r#""n":2}"#, "n"),
            (r#""logprobs":true}"#, "logprobs"),
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
                r#"{"model":"m","messages":[{"role":"user","content":"a"}],"response_format":{"type":"json_object"}}"#
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
}
