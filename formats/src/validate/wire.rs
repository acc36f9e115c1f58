//! The request bodies of the generation and embeddings endpoints as clients send them: parsed
//! by serde, then checked by [`super`] into [`crate::request`] types. Nothing here is trusted.

use serde::Deserialize;
use serde_json::Value;

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
