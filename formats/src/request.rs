//! Checked requests: what validation produces and the engine runs. Every value here already
//! passed [`crate::validate`]: sampling values are finite and in range, token limits hold,
//! texts hold no NUL.

/// One chat message, already reduced to plain text.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Messages rendered through the model's own chat template by llama.cpp.
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
}
