//! The engine: the only code that touches llama.cpp.
//!
//! llama.cpp runs on one dedicated OS thread per resident model ([`llama::LlamaEngine`]): a
//! bounded queue in, and a channel of [`Event`]s per request out. Dropping that channel's
//! receiver (a client that went away) cancels the generation before its next token. The
//! [`pool::ModelPool`] loads, keeps and evicts those engines within the memory budget.
//!
//! [`Engine`] is the seam between the API and what runs the models. The pool is its one real
//! implementation; [`fake::FakeEngine`] scripts answers so that the API's tests run in-process
//! without a model. The real engine is always tested end to end on real models.

pub mod constraint;
pub mod fake;
mod ffi;
pub mod llama;
pub mod pool;
pub mod scheduler;
pub mod speculative;
mod speculative_draft;
pub mod text;

pub use ffi::{cpu_backend, CpuBackend, INSTALLED_BACKENDS_DIR};
/// The engine runs checked requests, defined beside their validation in `inhouse-formats`.
pub use inhouse_formats::request::{ChatMessage, GenerateRequest, Prompt, Sampling};
pub use inhouse_formats::tools::{ReasoningTags, ToolFormat};

use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a model is and what it can do, as reported by `/v1/models` and `/health`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ModelInfo {
    /// The name clients use.
    pub name: String,
    /// The GGUF `general.architecture`.
    pub architecture: String,
    /// Number of parameters.
    pub n_params: u64,
    /// Size of the weights in bytes.
    pub size_bytes: u64,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Context length of the serving context.
    pub n_ctx: u32,
    /// Embedding width.
    pub n_embd: u32,
    /// Where the chat template comes from (`gguf`, or llama.cpp's built-in one for the
    /// architecture); `None` when the model cannot chat.
    pub chat_template: Option<String>,
    /// Layers offloaded to a GPU.
    pub gpu_layers: u32,
    /// Layers in the model (placement: `gpu_layers` of `n_layers` on the GPU).
    pub n_layers: u32,
    /// Unix time the model was loaded.
    pub loaded_at: u64,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of generation token or a stop string.
    Stop,
    /// `max_tokens` or the context's end was reached.
    Length,
    /// The answer is tool calls (set by the API when it parsed calls out of a stopped answer).
    ToolCalls,
}

/// How the answer's text is to be read, as the model's template tells: the API parses tool calls
/// and reasoning out of the text with it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutputInfo {
    /// The format the template asks tool calls in, when tools were offered and shown.
    pub tool_format: Option<ToolFormat>,
    /// The thinking block's tags, when the template has them.
    pub reasoning: Option<ReasoningTags>,
    /// The rendered prompt ends inside an open thinking block.
    pub starts_in_reasoning: bool,
}

/// The log-probability of one token (natural log), with its text and bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text (its bytes decoded, invalid UTF-8 replaced).
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// log p(token), ≤ 0.
    pub logprob: f32,
}

/// A sampled token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledLogprob {
    /// The sampled token.
    pub sampled: TokenLogprob,
    /// The `top` most likely tokens, most likely first.
    pub top: Vec<TokenLogprob>,
}

/// What the engine sends back while it generates.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt was accepted; its size in tokens.
    Started {
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// How the answers are to be read.
        output: OutputInfo,
    },
    /// Text to append to a choice's answer (whole UTF-8 characters, never part of a stop
    /// string).
    Text {
        /// Which choice (0 ..< n).
        choice: u32,
        /// The text.
        text: String,
        /// The log-probabilities of the tokens sampled since this choice's last event, when
        /// they were asked for.
        logprobs: Vec<SampledLogprob>,
    },
    /// One choice ended normally (the stream ends after the last choice's).
    Finished {
        /// Which choice.
        choice: u32,
        /// Why.
        reason: FinishReason,
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// Tokens this choice generated.
        completion_tokens: u32,
    },
    /// The generation failed (every choice).
    Failed(EngineError),
}

impl Event {
    /// Text of choice 0 without log-probabilities.
    pub fn text(text: impl Into<String>) -> Self {
        Event::Text {
            choice: 0,
            text: text.into(),
            logprobs: vec![],
        }
    }
}

/// Embeddings of several inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One L2-normalized vector per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, all inputs together.
    pub prompt_tokens: u32,
}

/// Engine errors; the API maps each to an HTTP status in one place.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// No model by that name is served.
    #[error("model {0:?} does not exist")]
    UnknownModel(String),
    /// The model has no chat template in its GGUF metadata.
    #[error("model {0:?} has no chat template; use /v1/completions with a plain prompt")]
    NoChatTemplate(String),
    /// The model's chat template could not render the messages (it raised an error, ran out
    /// of fuel, or rendered too much).
    #[error("the chat template of model {model:?} cannot render these messages: {message}")]
    Template {
        /// Model name.
        model: String,
        /// A stable code (`template_exception`, `template_fuel_exhausted`, …).
        code: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Tools were offered to a model whose template cannot show them.
    #[error("model {0:?} has no chat template that renders tools; call it without tools")]
    ToolsUnsupported(String),
    /// The requested output shape cannot be enforced (an unsupported JSON-schema feature, a
    /// grammar over the limits).
    #[error("the response format cannot be enforced: {0}")]
    Constraint(String),
    /// A `logit_bias` token id is not in the model's vocabulary.
    #[error("logit_bias[\"{token}\"]: the model's vocabulary has tokens 0..{n_vocab}")]
    LogitBias {
        /// The token id.
        token: i32,
        /// The vocabulary size.
        n_vocab: i32,
    },
    /// More choices than the model has slots to decode them together.
    #[error("n = {n} exceeds the {slots} slots of model {model:?}; ask for at most {slots}")]
    TooManyChoices {
        /// Model name.
        model: String,
        /// Choices asked for.
        n: u32,
        /// Slots of the model.
        slots: u32,
    },
    /// The prompt does not fit in the context.
    #[error(
        "the prompt is {prompt_tokens} tokens, but the context holds {n_ctx} \
         (at least one token must remain for the answer)"
    )]
    ContextLengthExceeded {
        /// Prompt size.
        prompt_tokens: u32,
        /// Context size.
        n_ctx: u32,
    },
    /// The prompt tokenized to nothing.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The model cannot produce embeddings.
    #[error("model {0:?} cannot produce embeddings")]
    CannotEmbed(String),
    /// Too many requests are waiting.
    #[error("the server is busy: {0} requests are queued; retry later")]
    QueueFull(usize),
    /// The engine thread has stopped.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// llama.cpp failed while running.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The model cannot fit in the memory budget even with nothing else loaded.
    #[error(
        "model {model:?} needs about {need} ({detail}), but the memory budget is {budget}; \
         raise memory-budget, or lower ctx-size or slots"
    )]
    DoesNotFit {
        /// Model name.
        model: String,
        /// Estimated need, formatted.
        need: String,
        /// What the estimate is made of.
        detail: String,
        /// The budget, formatted.
        budget: String,
    },
    /// Memory is held by models that are answering requests; the load waited and gave up.
    #[error("model {0:?} cannot be loaded now: the memory budget is held by models serving requests; retry later")]
    Busy(String),
    /// The model store refused to load the file (integrity or signature policy).
    #[error("model {model:?} refused: {reason}")]
    Refused {
        /// Model name.
        model: String,
        /// Why.
        reason: String,
    },
    /// An upstream model's server (see [`crate::upstream`]) is unreachable, failed, or sent an
    /// answer that was cut off.
    #[error("upstream model {name:?}: {message}")]
    Upstream {
        /// The model name callers use.
        name: String,
        /// What went wrong, with its stable code.
        failure: UpstreamFailure,
        /// What happened, for the caller (never the upstream's raw answer).
        message: String,
    },
    /// A model could not be loaded at start-up.
    #[error("cannot load model {name:?} from {path}: {reason}")]
    Load {
        /// Model name.
        name: String,
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}

/// How an upstream request failed; each kind has one stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Down, refusing, failing (5xx), or its circuit breaker is open: retry after this many
    /// seconds. `upstream_unavailable`.
    Unavailable {
        /// Seconds until a retry may succeed (the breaker's remaining cool-down, or 1).
        retry_after_secs: u64,
    },
    /// It did not answer within the connect, first-byte, idle or total timeout.
    /// `upstream_timeout`.
    Timeout,
    /// Its answer is not the JSON or server-sent events asked for. `upstream_bad_response`.
    BadResponse,
    /// Its answer is over `max-answer-bytes`, or longer than `max_tokens` allows.
    /// `upstream_too_large`.
    TooLarge,
    /// It refused the request itself (a 4xx such as a prompt over its context).
    /// `upstream_rejected`.
    Rejected,
    /// The request asks for something the upstream's wire cannot carry (logprobs or tools on
    /// plain completions). `upstream_unsupported`.
    Unsupported,
}

impl UpstreamFailure {
    /// The stable error code.
    pub fn code(self) -> &'static str {
        match self {
            UpstreamFailure::Unavailable { .. } => "upstream_unavailable",
            UpstreamFailure::Timeout => "upstream_timeout",
            UpstreamFailure::BadResponse => "upstream_bad_response",
            UpstreamFailure::TooLarge => "upstream_too_large",
            UpstreamFailure::Rejected => "upstream_rejected",
            UpstreamFailure::Unsupported => "upstream_unsupported",
        }
    }
}

/// A boxed future, so that [`Engine`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One request's events, together with whatever keeps its model in memory: the hold travels
/// with the stream and is released with its last event (or when the stream is dropped, which
/// also cancels the generation).
pub struct EventStream {
    events: mpsc::UnboundedReceiver<Event>,
    hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Choices not finished yet: the hold goes with the last one's `Finished`.
    open: u32,
}

impl EventStream {
    /// A stream that holds nothing but its events.
    pub fn new(events: mpsc::UnboundedReceiver<Event>) -> Self {
        EventStream {
            events,
            hold: None,
            open: 1,
        }
    }

    /// A stream that keeps `hold` alive until its last event.
    pub fn holding(
        events: mpsc::UnboundedReceiver<Event>,
        hold: impl std::any::Any + Send + Sync,
    ) -> Self {
        EventStream {
            events,
            hold: Some(Box::new(hold)),
            open: 1,
        }
    }

    /// A stream whose only event is `error` (a request accepted, then failed before it started,
    /// e.g. while its model loaded).
    pub fn failed(error: EngineError) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Event::Failed(error));
        EventStream::new(rx)
    }

    /// A stream of `n` choices (its hold is kept until the last one finishes).
    pub fn with_choices(mut self, n: u32) -> Self {
        self.open = n.max(1);
        self
    }

    /// The next event; `None` once the engine has dropped the request.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.events.recv().await;
        match event {
            Some(Event::Finished { .. }) => {
                self.open = self.open.saturating_sub(1);
                if self.open == 0 {
                    self.hold = None;
                }
            }
            None | Some(Event::Failed(_)) => self.hold = None,
            _ => {}
        }
        event
    }
}

/// The seam between the API and whatever runs the models: the model pool in the daemon, a
/// scripted fake in the API's tests.
pub trait Engine: Send + Sync + 'static {
    /// The models served, in a stable order.
    fn models(&self) -> Vec<ModelInfo>;
    /// The models in memory now (by default: all of them, always resident).
    fn loaded(&self) -> Vec<pool::LoadedModel> {
        self.models()
            .into_iter()
            .map(|info| pool::LoadedModel {
                placement: pool::placement(&info),
                memory: crate::models::estimate::Estimate {
                    weights: info.size_bytes,
                    kv_cache: 0,
                    compute: 0,
                    total: info.size_bytes,
                },
                active_requests: 0,
                idle_secs: 0,
                expires_in_secs: None,
                drafted_tokens: 0,
                accepted_tokens: 0,
                info,
            })
            .collect()
    }
    /// Unloads a model and anything built on it (a removed store entry); by default nothing.
    fn unload(&self, _name: &str) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Drops whatever the engine keeps in memory of `uid`'s requests (cached prompt and answer
    /// tokens), after the uid's data was erased; by default there is nothing to drop.
    fn forget_owner(&self, _uid: u32) {}
    /// Queues a generation. An unknown model or a full queue fails here; a failure after the
    /// request was accepted (e.g. its model failed to load) arrives as the stream's event.
    fn generate(&self, req: GenerateRequest) -> BoxFuture<'_, Result<EventStream, EngineError>>;
    /// Embeds each input.
    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Embeddings, EngineError>>;
    /// A short description of the compute backend, for `/health` and `--version`.
    fn backend(&self) -> String;
    /// The ggml CPU variant in use, when the engine runs llama.cpp.
    fn cpu(&self) -> Option<CpuBackend> {
        None
    }
    /// Serving metrics, when the engine keeps them.
    fn metrics(&self) -> Option<Arc<crate::metrics::Metrics>> {
        None
    }
    /// The model pool and store behind the engine, for the model-management routes and
    /// Ollama's `keep_alive`; `None` for an engine without one (they then answer that this
    /// daemon has no model store).
    fn pool(&self) -> Option<&pool::ModelPool> {
        None
    }
    /// The upstream models (served by other servers over Unix sockets) and their state; none by
    /// default.
    fn upstreams(&self) -> Vec<crate::upstream::UpstreamStatus> {
        Vec::new()
    }
}
