//! From untrusted JSON to checked requests.
//!
//! Every request body is parsed into the wire types below and then validated into a
//! [`ValidGenerate`], whose sampling values are finite and in range and whose token limits hold.
//! Nothing reaches llama.cpp before that. (Batching and admission join here in a later issue.)

use crate::api::error::ApiError;
use crate::engine::{ChatMessage, GenerateRequest, Prompt, Sampling};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Most inputs in one embeddings request.
pub const MAX_EMBED_INPUTS: usize = 256;

/// Parses a JSON body into `T`, turning each failure into a 400 that names the problem. Bodies
/// nested deeper than `max_depth` are refused before serde looks at them.
pub fn parse_body<T: DeserializeOwned>(body: &[u8], max_depth: usize) -> Result<T, ApiError> {
    let depth = crate::api::limits::json_depth(body);
    if depth > max_depth {
        return Err(ApiError::invalid(
            "json_too_deep",
            format!("the body nests {depth} levels deep; at most {max_depth} are accepted"),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "invalid_json",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        let code = if msg.starts_with("missing field") {
            "missing_field"
        } else {
            "invalid_type"
        };
        ApiError::invalid(code, format!("invalid request: {msg}"))
    })
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopWire {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
}

/// A message's content: a string, or a list of typed parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentWire {
    /// Plain text.
    Text(String),
    /// Parts; only `{"type":"text","text":…}` is supported.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// The part's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A chat message as clients send it.
#[derive(Debug, Deserialize)]
pub struct MessageWire {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The content; `null` is allowed for an assistant turn.
    #[serde(default)]
    pub content: Option<ContentWire>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields shared by chat and plain completions.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingWire {
    /// 0..=2.
    pub temperature: Option<f64>,
    /// (0, 1].
    pub top_p: Option<f64>,
    /// 0 (off) or more.
    pub top_k: Option<i64>,
    /// 0..=1.
    pub min_p: Option<f64>,
    /// -2..=2.
    pub presence_penalty: Option<f64>,
    /// -2..=2.
    pub frequency_penalty: Option<f64>,
    /// Any integer.
    pub seed: Option<i64>,
    /// At least 1.
    pub max_tokens: Option<u64>,
    /// OpenAI's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// Stop strings.
    pub stop: Option<StopWire>,
    /// Server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Number of choices; only 1 is supported.
    pub n: Option<u64>,
    /// Log-probabilities are not supported.
    pub logprobs: Option<Value>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatWire {
    /// Model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<MessageWire>,
    /// Tools are not supported.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// Only `{"type":"text"}` is supported.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Sampling and limits.
    #[serde(flatten)]
    pub sampling: SamplingWire,
}

/// `prompt`: a string or a list holding exactly one string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptWire {
    /// One prompt.
    One(String),
    /// A list of prompts (exactly one supported).
    Many(Vec<String>),
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionWire {
    /// Model name.
    pub model: String,
    /// The prompt.
    pub prompt: PromptWire,
    /// Echo is not supported.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Sampling and limits.
    #[serde(flatten)]
    pub sampling: SamplingWire,
}

/// `input` of an embeddings request.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbedInputWire {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsWire {
    /// Model name.
    pub model: String,
    /// What to embed.
    pub input: EmbedInputWire,
    /// `float` (default) or `base64`.
    #[serde(default)]
    pub encoding_format: Option<String>,
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

fn ranged(name: &str, v: Option<f64>, lo: f64, hi: f64, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x as f32),
        Some(x) => Err(ApiError::bad_param(
            name,
            format!("{name} = {x} is out of range ({lo}..={hi})"),
        )),
    }
}

fn no_nul(name: &str, s: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(ApiError::bad_param(
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
) -> Result<(Sampling, u32, Vec<String>, bool, bool), ApiError> {
    if let Some(n) = w.n {
        if n != 1 {
            return Err(ApiError::bad_param("n", "only n = 1 is supported"));
        }
    }
    if matches!(w.logprobs, Some(Value::Bool(true)) | Some(Value::Number(_))) {
        return Err(ApiError::bad_param(
            "logprobs",
            "logprobs are not supported",
        ));
    }
    // Defaults: OpenAI's for the fields it defines; llama.cpp's usual top_k 40 and min_p 0.05,
    // which keep small models from wandering at temperature 1.
    let temperature = ranged("temperature", w.temperature, 0.0, 2.0, 1.0)?;
    let top_p = ranged("top_p", w.top_p, 0.0, 1.0, 1.0)?;
    if top_p <= 0.0 {
        return Err(ApiError::bad_param("top_p", "top_p must be greater than 0"));
    }
    let min_p = ranged("min_p", w.min_p, 0.0, 1.0, 0.05)?;
    let presence_penalty = ranged("presence_penalty", w.presence_penalty, -2.0, 2.0, 0.0)?;
    let frequency_penalty = ranged("frequency_penalty", w.frequency_penalty, -2.0, 2.0, 0.0)?;
    let top_k = match w.top_k {
        None => 40,
        Some(k) if (0..=i64::from(i32::MAX)).contains(&k) => k as i32,
        Some(k) => {
            return Err(ApiError::bad_param(
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
            return Err(ApiError::bad_param(
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
        return Err(ApiError::bad_param(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings are allowed"),
        ));
    }
    if stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::bad_param(
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

fn check_model_name(model: &str) -> Result<(), ApiError> {
    // Names are looked up, never used as paths; a malformed one cannot name a model.
    // (`base+adapter` names each part.)
    if !model.split('+').all(crate::config::valid_model_name) {
        return Err(ApiError::bad_param(
            "model",
            "model must be a model name (^[a-z0-9][a-z0-9._:-]{0,63}$)",
        ));
    }
    Ok(())
}

fn message_text(i: usize, m: &MessageWire) -> Result<String, ApiError> {
    let text = match &m.content {
        None => String::new(),
        Some(ContentWire::Text(t)) => t.clone(),
        Some(ContentWire::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad_param(
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
) -> Result<ValidGenerate, ApiError> {
    check_model_name(&w.model)?;
    if w.messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    if w.messages.len() > limits.max_messages {
        return Err(ApiError::bad_param(
            "messages",
            format!("at most {} messages are accepted", limits.max_messages),
        ));
    }
    if w.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_param("tools", "tools are not supported"));
    }
    if let Some(rf) = &w.response_format {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::bad_param(
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
                return Err(ApiError::bad_param(
                    "messages",
                    format!("messages[{i}].role {other:?} is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        if m.content.is_none() && role != "assistant" {
            return Err(ApiError::bad_param(
                "messages",
                format!("messages[{i}].content is missing"),
            ));
        }
        messages.push(ChatMessage {
            role: role.to_string(),
            content: message_text(i, m)?,
        });
    }
    let (sampling, max_tokens, stop, stream, include_usage) =
        validate_sampling(&w.sampling, limits)?;
    Ok(ValidGenerate {
        request: GenerateRequest {
            owner_uid,
            model: w.model,
            prompt: Prompt::Chat(messages),
            sampling,
            max_tokens,
            stop,
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
) -> Result<ValidGenerate, ApiError> {
    check_model_name(&w.model)?;
    if w.echo == Some(true) {
        return Err(ApiError::bad_param("echo", "echo is not supported"));
    }
    let prompt = match w.prompt {
        PromptWire::One(p) => p,
        PromptWire::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptWire::Many(_) => {
            return Err(ApiError::bad_param(
                "prompt",
                "exactly one prompt per request is supported",
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_param("prompt", "prompt must not be empty"));
    }
    no_nul("prompt", &prompt)?;
    let (sampling, max_tokens, stop, stream, include_usage) =
        validate_sampling(&w.sampling, limits)?;
    Ok(ValidGenerate {
        request: GenerateRequest {
            owner_uid,
            model: w.model,
            prompt: Prompt::Text(prompt),
            sampling,
            max_tokens,
            stop,
        },
        stream,
        include_usage,
    })
}

/// Validates an embeddings request.
pub fn validate_embeddings(w: EmbeddingsWire) -> Result<ValidEmbed, ApiError> {
    check_model_name(&w.model)?;
    let inputs = match w.input {
        EmbedInputWire::One(s) => vec![s],
        EmbedInputWire::Many(v) => v,
    };
    if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::bad_param(
            "input",
            format!("input must hold 1 to {MAX_EMBED_INPUTS} strings"),
        ));
    }
    for s in &inputs {
        if s.is_empty() {
            return Err(ApiError::bad_param(
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
            return Err(ApiError::bad_param(
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

    fn chat(body: &str) -> Result<ValidGenerate, ApiError> {
        validate_chat(
            parse_body(body.as_bytes(), LIMITS.max_json_depth)?,
            1000,
            &LIMITS,
        )
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
        assert_eq!(chat("{").unwrap_err().code, "invalid_json");
        assert_eq!(chat("[]").unwrap_err().code, "invalid_json");
        assert_eq!(chat(r#"{"model":"m"}"#).unwrap_err().code, "missing_field");
        assert_eq!(
            chat(r#"{"model":"m","messages":"x"}"#).unwrap_err().code,
            "invalid_type"
        );
        assert_eq!(
            chat(r#"{"model":"m","messages":[]}"#).unwrap_err().code,
            "invalid_value"
        );
    }

    #[test]
    fn numbers_are_range_checked() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"#;
        for bad in [
            r#""temperature":-1}"#,
            r#""temperature":3}"#,
            r#""top_p":0}"#,
            r#""min_p":1.5}"#,
            r#""top_k":-1}"#,
            r#""max_tokens":0}"#,
            r#""max_tokens":9223372036854775808}"#,
            r#""presence_penalty":2.5}"#,
            r#""n":2}"#,
        ] {
            let err = chat(&format!("{base}{bad}")).unwrap_err();
            assert_eq!(err.status, 400, "{bad}");
        }
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
        assert_eq!(chat(&deep).unwrap_err().code, "json_too_deep");
        let four = r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"a"},{"role":"user","content":"a"},{"role":"user","content":"a"}]}"#;
        assert_eq!(chat(four).unwrap_err().param.as_deref(), Some("messages"));
        for bad in ["../../etc/passwd", "/abs", "Upper", ""] {
            let body =
                format!(r#"{{"model":"{bad}","messages":[{{"role":"user","content":"a"}}]}}"#);
            assert_eq!(
                chat(&body).unwrap_err().param.as_deref(),
                Some("model"),
                "{bad}"
            );
        }
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
        assert!(chat(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#).is_err());
        assert!(chat(r#"{"model":"m","messages":[{"role":"user","content":"a\u0000"}]}"#).is_err());
    }

    #[test]
    fn stop_strings() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"#;
        assert_eq!(
            chat(&format!("{base}\"x\"}}")).unwrap().request.stop,
            vec!["x"]
        );
        assert!(chat(&format!("{base}[\"a\",\"b\",\"c\",\"d\",\"e\"]}}")).is_err());
        assert!(chat(&format!("{base}[\"\"]}}")).is_err());
    }
}
