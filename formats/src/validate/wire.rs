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
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The content; `null` is allowed for an assistant turn.
    #[serde(default)]
    pub content: Option<ContentWire>,
    /// The calls an assistant turn made.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallWire>>,
    /// For a `tool` message (required there): the id of the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// For a `tool` message: the function's name (optional).
    #[serde(default)]
    pub name: Option<String>,
}

/// One call in an assistant message's `tool_calls`.
#[derive(Debug, Deserialize)]
pub struct ToolCallWire {
    /// The call's id; when absent (Ollama's shape) one is made up from the call's position.
    #[serde(default)]
    pub id: Option<String>,
    /// `function` (the only kind), when given.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The function called.
    #[serde(default)]
    pub function: Option<FunctionCallWire>,
}

/// The function of a [`ToolCallWire`].
#[derive(Debug, Deserialize)]
pub struct FunctionCallWire {
    /// The function's name.
    #[serde(default)]
    pub name: Option<String>,
    /// A string holding a JSON object (OpenAI's shape), or the object itself (Ollama's and some
    /// clients').
    #[serde(default)]
    pub arguments: Option<Value>,
}

/// One entry of `tools`.
#[derive(Debug, Deserialize)]
pub struct ToolWire {
    /// `function` (the only kind).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The function offered.
    #[serde(default)]
    pub function: Option<FunctionWire>,
}

/// The function of a [`ToolWire`].
#[derive(Debug, Deserialize)]
pub struct FunctionWire {
    /// `^[A-Za-z0-9_.-]{1,64}$`, unique among the request's tools.
    #[serde(default)]
    pub name: Option<String>,
    /// What it does, for the model.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON schema of the arguments, an object schema; absent means no arguments.
    #[serde(default)]
    pub parameters: Option<Value>,
    /// OpenAI's strict mode; accepted, and moot: arguments are always constrained by the schema.
    #[serde(default)]
    pub strict: Option<bool>,
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
    /// Number of choices: 1 ..= the configured bound.
    pub n: Option<u64>,
    /// Chat: `true`/`false`; completions: the number of alternatives per position (0..=5 in
    /// OpenAI's legacy API, here up to the configured bound). Read per endpoint.
    pub logprobs: Option<Value>,
    /// Chat: alternatives per position, with `logprobs: true`.
    pub top_logprobs: Option<i64>,
    /// Token-id strings mapped to biases in -100..=100.
    pub logit_bias: Option<Value>,
    /// `false` turns speculative decoding off for this request (inhouse's extension).
    pub speculative: Option<bool>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatWire {
    /// Model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<MessageWire>,
    /// Function tools offered to the model; an empty list offers none.
    #[serde(default)]
    pub tools: Option<Vec<ToolWire>>,
    /// `"auto"`, `"none"`, `"required"` or `{"type":"function","function":{"name":…}}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Whether one answer may hold several calls (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"type":"text"}`, `{"type":"json_object"}` or
    /// `{"type":"json_schema","json_schema":{"name","schema","strict"?,"description"?}}`.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// `none`/`minimal` turn the template's thinking off, `low`/`medium`/`high` on.
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// The template's thinking switch, set directly (llama-server's and vLLM's extension).
    #[serde(default)]
    pub enable_thinking: Option<bool>,
    /// vLLM's template arguments; only `enable_thinking` (a bool) is accepted.
    #[serde(default)]
    pub chat_template_kwargs: Option<Value>,
    /// Retrieval before generating (an inhouse extension): `{"vector_store_ids": […],
    /// "max_num_results"?, "filters"?, "ranking_options"?}`, checked by
    /// [`super::validate_file_search`]; the chat validator itself leaves it alone.
    #[serde(default)]
    pub file_search: Option<Value>,
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
    /// The answer's shape, as in chat (not in OpenAI's legacy API; vLLM accepts it too).
    #[serde(default)]
    pub response_format: Option<Value>,
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
