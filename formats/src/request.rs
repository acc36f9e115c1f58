//! Checked requests: what validation produces and the engine runs. Every value here already
//! passed [`crate::validate`]: sampling values are finite and in range, token limits hold,
//! texts hold no NUL.

use serde_json::Value;

/// One chat message, its content already reduced to plain text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (empty for an assistant turn that only calls tools).
    pub content: String,
    /// The tool calls of an assistant turn, their arguments parsed (templates encode them).
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// For a `tool` message: the function's name, when the client gave it.
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with only a role and text.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }
}

/// A call of a function tool, in a history message or in an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The call's id (`call_…`), which the `tool` message answering it repeats.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object.
    pub arguments: Value,
}

/// A function tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name: `^[A-Za-z0-9_.-]{1,64}$`.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// JSON schema of its arguments (an object schema).
    pub parameters: Value,
}

/// Which tool calls the model may or must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (the default when tools are offered).
    Auto,
    /// No call: the tools are not shown to the model.
    None,
    /// At least one call, of any offered tool.
    Required,
    /// Exactly this tool.
    Named(String),
}

/// The tools of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// The tools offered (never empty).
    pub tools: Vec<Tool>,
    /// Whether and which calls are made.
    pub choice: ToolChoice,
    /// Whether one answer may hold several calls.
    pub parallel: bool,
}

/// The shape the answer must have.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that validates against a schema.
    JsonSchema {
        /// The schema's name, as the client gave it.
        name: String,
        /// The schema.
        schema: Value,
    },
}

/// What the engine reports per token when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogprobsRequest {
    /// Alternatives per position, 0..=20.
    pub top: u8,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Messages rendered through the model's own chat template.
    Chat(Vec<ChatMessage>),
    /// Plain text, tokenized as it is.
    Text(String),
}

/// Sampling settings: every value is finite and in range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling; 1 disables it.
    pub top_p: f32,
    /// 0 disables it.
    pub top_k: i32,
    /// 0 disables it.
    pub min_p: f32,
    /// OpenAI's presence penalty, -2..=2.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty, -2..=2.
    pub frequency_penalty: f32,
    /// Seed of the random sampler.
    pub seed: u32,
}

/// A checked generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The calling uid: whose data the prompt is (cached prompt state is never shared across
    /// owners unless configured).
    pub owner_uid: u32,
    /// A model name the engine serves.
    pub model: String,
    /// The input.
    pub prompt: Prompt,
    /// Sampling settings.
    pub sampling: Sampling,
    /// At most this many generated tokens.
    pub max_tokens: u32,
    /// The answer ends before the first of these strings.
    pub stop: Vec<String>,
    /// Tools offered (chat only); `None` when none are.
    pub tools: Option<Tools>,
    /// The answer's required shape.
    pub format: ResponseFormat,
    /// Log-probabilities of the sampled tokens (and `top` alternatives), when asked.
    pub logprobs: Option<LogprobsRequest>,
    /// Choices to generate from the one prompt (1 ..= the configured bound); choice `i` samples
    /// with `seed + i`.
    pub n: u32,
    /// Added to the logits of these token ids before sampling: ids checked against the
    /// vocabulary by the engine, values in -100..=100.
    pub logit_bias: Vec<(i32, f32)>,
    /// The template's thinking switch (`enable_thinking`), where it has one: `None` leaves the
    /// template's default.
    pub thinking: Option<bool>,
    /// Speculative decoding may be used for this request when the model has it configured
    /// (`"speculative": false` turns it off for one request).
    pub speculative: bool,
}

impl GenerateRequest {
    /// A plain request: no tools, free text, no logprobs, one choice.
    pub fn new(
        owner_uid: u32,
        model: impl Into<String>,
        prompt: Prompt,
        sampling: Sampling,
        max_tokens: u32,
    ) -> Self {
        GenerateRequest {
            owner_uid,
            model: model.into(),
            prompt,
            sampling,
            max_tokens,
            stop: vec![],
            tools: None,
            format: ResponseFormat::Text,
            logprobs: None,
            n: 1,
            logit_bias: vec![],
            thinking: None,
            speculative: true,
        }
    }
}

/// How retrieved chunks are ranked (`ranking_options.ranker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchRanker {
    /// BM25 and vector similarity fused (`auto`, `default-2024-11-15`, `hybrid`).
    #[default]
    Hybrid,
    /// BM25 alone (`bm25`, an inhouse extension).
    Bm25,
    /// Vector similarity alone (`vector`, an inhouse extension).
    Vector,
}

/// Retrieval before generating: the Responses API's `file_search` tool, or chat completions'
/// `file_search` extension.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSearch {
    /// The collections searched (`vs_…`), 1 to [`crate::validate::MAX_VECTOR_STORE_IDS`].
    pub vector_store_ids: Vec<String>,
    /// At most this many chunks, 1..=50.
    pub max_num_results: usize,
    /// OpenAI's attribute filter (a comparison or compound object), checked by the collections.
    pub filters: Option<Value>,
    /// How the chunks are ranked.
    pub ranker: SearchRanker,
    /// Chunks scoring below this (0..=1) are left out.
    pub score_threshold: f32,
}
