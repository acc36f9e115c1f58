//! The real engine: llama.cpp through the safe `llama-cpp-2` API, on one OS thread.
//!
//! `LlamaBackend::init` may run once per process and `LlamaContext<'a>` borrows its model, so the
//! backend, the models and their contexts all live on the stack of [`run`], on the engine thread.
//! Requests are served one at a time here (batching is the scheduler's later job); the KV cache
//! is cleared between requests so nothing of one caller's prompt is seen by the next.

use super::text::{Fed, StopStream};
use super::{
    BoxFuture, ChatMessage, Embeddings, Engine, EngineError, Event, FinishReason, GenerateRequest,
    ModelInfo, Prompt, Sampling,
};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// How the engine runs llama.cpp.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Threads for generation and prompt processing.
    pub threads: u32,
    /// Context size per model.
    pub ctx_size: u32,
    /// Layers offloaded to the GPU.
    pub gpu_layers: u32,
    /// Requests waiting before new ones are refused.
    pub queue_size: usize,
}

enum Job {
    Generate(GenerateRequest, mpsc::UnboundedSender<Event>),
    Embed(
        String,
        Vec<String>,
        oneshot::Sender<Result<Embeddings, EngineError>>,
    ),
}

/// Handle to the engine thread. Dropping every handle stops the thread after its current job.
pub struct LlamaEngine {
    jobs: std_mpsc::SyncSender<Job>,
    models: Vec<ModelInfo>,
    queue_size: usize,
}

impl LlamaEngine {
    /// Starts the engine thread and loads every model; returns once all are loaded, or with the
    /// first model that failed.
    pub fn start(models: Vec<(String, PathBuf)>, cfg: EngineConfig) -> Result<Self, EngineError> {
        let (jobs, rx) = std_mpsc::sync_channel(cfg.queue_size);
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let queue_size = cfg.queue_size;
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run(models, cfg, rx, ready_tx))
            .map_err(|e| EngineError::Inference(format!("cannot start the engine thread: {e}")))?;
        let models = ready_rx.recv().map_err(|_| EngineError::ShuttingDown)??;
        Ok(LlamaEngine {
            jobs,
            models,
            queue_size,
        })
    }

    fn submit(&self, job: Job) -> Result<(), EngineError> {
        self.jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => EngineError::QueueFull(self.queue_size),
            std_mpsc::TrySendError::Disconnected(_) => EngineError::ShuttingDown,
        })
    }

    fn check_model(&self, name: &str) -> Result<(), EngineError> {
        if self.models.iter().any(|m| m.name == name) {
            Ok(())
        } else {
            Err(EngineError::UnknownModel(name.to_string()))
        }
    }
}

impl Engine for LlamaEngine {
    fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    fn generate(
        &self,
        req: GenerateRequest,
    ) -> Result<mpsc::UnboundedReceiver<Event>, EngineError> {
        self.check_model(&req.model)?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.submit(Job::Generate(req, tx))?;
        Ok(rx)
    }

    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Embeddings, EngineError>> {
        Box::pin(async move {
            self.check_model(&model)?;
            let (tx, rx) = oneshot::channel();
            self.submit(Job::Embed(model, inputs, tx))?;
            rx.await.map_err(|_| EngineError::ShuttingDown)?
        })
    }

    fn backend(&self) -> String {
        backend_description()
    }
}

/// The compute backend llama.cpp was built with, e.g. `cpu (AVX2 FMA F16C)` or `cuda`.
pub fn backend_description() -> String {
    let devices = llama_cpp_2::list_llama_ggml_backend_devices();
    if devices.is_empty() {
        return "cpu".into();
    }
    devices
        .iter()
        .map(|d| format!("{} ({})", d.backend, d.description))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A loaded model and what the engine needs to know about it.
struct Loaded {
    info: ModelInfo,
    model: LlamaModel,
    /// The chat template: the GGUF's own, or llama.cpp's built-in one for the architecture.
    template: Option<LlamaChatTemplate>,
}

/// llama.cpp's built-in template for GGUFs that carry none, by architecture. Only families whose
/// chat format is fixed by the architecture are listed: for anything else a missing template is
/// an error, not a guess.
fn builtin_template(architecture: &str) -> Option<&'static str> {
    match architecture {
        "gemma" | "gemma2" | "gemma3" | "gemma3n" => Some("gemma"),
        "qwen2" | "qwen3" => Some("chatml"),
        _ => None,
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn load(
    backend: &LlamaBackend,
    name: &str,
    path: &PathBuf,
    cfg: &EngineConfig,
) -> Result<Loaded, EngineError> {
    let err = |reason: String| EngineError::Load {
        name: name.to_string(),
        path: path.display().to_string(),
        reason,
    };
    // llama.cpp asserts on some malformed files; refuse what is plainly not a file first.
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let params = LlamaModelParams::default().with_n_gpu_layers(cfg.gpu_layers);
    let model = LlamaModel::load_from_file(backend, path, &params)
        .map_err(|e| err(format!("llama.cpp could not load it ({e})")))?;
    let architecture = model
        .meta_val_str("general.architecture")
        .unwrap_or_else(|_| "unknown".into());
    let (template, template_source) = match model.chat_template(None) {
        Ok(t) => (Some(t), Some("gguf".to_string())),
        Err(_) => match builtin_template(&architecture).map(|n| (LlamaChatTemplate::new(n), n)) {
            Some((Ok(t), n)) => (Some(t), Some(format!("llama.cpp built-in {n:?}"))),
            _ => (None, None),
        },
    };
    let info = ModelInfo {
        name: name.to_string(),
        architecture,
        n_params: model.n_params(),
        size_bytes: model.size(),
        n_ctx_train: model.n_ctx_train(),
        n_ctx: cfg.ctx_size.min(model.n_ctx_train().max(64)),
        n_embd: u32::try_from(model.n_embd()).unwrap_or(0),
        chat_template: template_source,
        gpu_layers: cfg.gpu_layers.min(model.n_layer()),
        loaded_at: now_unix(),
    };
    Ok(Loaded {
        info,
        model,
        template,
    })
}

fn run(
    specs: Vec<(String, PathBuf)>,
    cfg: EngineConfig,
    jobs: std_mpsc::Receiver<Job>,
    ready: std_mpsc::Sender<Result<Vec<ModelInfo>, EngineError>>,
) {
    // llama.cpp's own log lines go to tracing at debug level; they never include prompt text.
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let backend = match LlamaBackend::init() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Inference(format!("llama.cpp init: {e}"))));
            return;
        }
    };
    let mut loaded = Vec::with_capacity(specs.len());
    for (name, path) in &specs {
        match load(&backend, name, path, &cfg) {
            Ok(l) => loaded.push(l),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    // One generation context per model, created once; cleared between requests.
    let mut contexts = Vec::with_capacity(loaded.len());
    for l in &loaded {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(l.info.n_ctx))
            .with_n_batch(l.info.n_ctx.min(2048))
            .with_n_threads(cfg.threads as i32)
            .with_n_threads_batch(cfg.threads as i32);
        match l.model.new_context(&backend, params) {
            Ok(ctx) => contexts.push(ctx),
            Err(e) => {
                let _ = ready.send(Err(EngineError::Load {
                    name: l.info.name.clone(),
                    path: String::new(),
                    reason: format!("cannot create a context: {e}"),
                }));
                return;
            }
        }
    }
    if ready
        .send(Ok(loaded.iter().map(|l| l.info.clone()).collect()))
        .is_err()
    {
        return;
    }

    while let Ok(job) = jobs.recv() {
        match job {
            Job::Generate(req, events) => {
                let Some(i) = loaded.iter().position(|l| l.info.name == req.model) else {
                    let _ = events.send(Event::Failed(EngineError::UnknownModel(req.model)));
                    continue;
                };
                if events.is_closed() {
                    continue; // the client left while queued
                }
                if let Err(e) = generate(&loaded[i], &mut contexts[i], &req, &events) {
                    let _ = events.send(Event::Failed(e));
                }
            }
            Job::Embed(model, inputs, reply) => {
                let result = match loaded.iter().find(|l| l.info.name == model) {
                    Some(l) => embed(&backend, l, &cfg, &inputs),
                    None => Err(EngineError::UnknownModel(model)),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// Renders the prompt text: chat messages through the model's own template (by llama.cpp).
fn render(l: &Loaded, prompt: &Prompt) -> Result<String, EngineError> {
    match prompt {
        Prompt::Text(t) => Ok(t.clone()),
        Prompt::Chat(messages) => {
            let tmpl = l
                .template
                .as_ref()
                .ok_or_else(|| EngineError::NoChatTemplate(l.info.name.clone()))?;
            let msgs = messages
                .iter()
                .map(|ChatMessage { role, content }| {
                    LlamaChatMessage::new(role.clone(), content.clone())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| EngineError::Inference(format!("message: {e}")))?;
            l.model
                .apply_chat_template(tmpl, &msgs, true)
                .map_err(|e| EngineError::Template {
                    model: l.info.name.clone(),
                    code: match e {
                        llama_cpp_2::ApplyChatTemplateError::FfiError(c) => c,
                        _ => -1,
                    },
                })
        }
    }
}

fn sampler(s: &Sampling, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::new();
    if s.presence_penalty != 0.0 || s.frequency_penalty != 0.0 {
        // Penalise tokens seen in the last 64 of the answer, like OpenAI's definition.
        chain.push(LlamaSampler::penalties(
            n_vocab,
            64,
            1.0,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed));
    }
    LlamaSampler::chain_simple(chain)
}

fn tokenize(l: &Loaded, text: &str) -> Vec<LlamaToken> {
    // add_special: BOS where the model wants one; parse_special: the template's control tokens.
    l.model.vocab().tokenize(text.as_bytes(), true, true)
}

fn decode_prompt(
    ctx: &mut LlamaContext<'_>,
    tokens: &[LlamaToken],
    seq: i32,
) -> Result<(), EngineError> {
    let n_batch = ctx.n_batch() as usize;
    let mut batch = LlamaBatch::new(n_batch, 1);
    let last = tokens.len() - 1;
    for (chunk_no, chunk) in tokens.chunks(n_batch).enumerate() {
        batch.clear();
        for (j, t) in chunk.iter().enumerate() {
            let pos = chunk_no * n_batch + j;
            batch
                .add(*t, pos as i32, &[seq], pos == last)
                .map_err(|e| EngineError::Inference(e.to_string()))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
    }
    Ok(())
}

fn generate(
    l: &Loaded,
    ctx: &mut LlamaContext<'_>,
    req: &GenerateRequest,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), EngineError> {
    let text = render(l, &req.prompt)?;
    let tokens = tokenize(l, &text);
    if tokens.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let n_ctx = ctx.n_ctx();
    let prompt_tokens = tokens.len() as u32;
    if prompt_tokens >= n_ctx {
        return Err(EngineError::ContextLengthExceeded {
            prompt_tokens,
            n_ctx,
        });
    }
    ctx.clear_kv_cache();
    decode_prompt(ctx, &tokens, 0)?;
    if events.send(Event::Started { prompt_tokens }).is_err() {
        return Ok(());
    }

    let vocab = l.model.vocab();
    let mut sampler = sampler(&req.sampling, l.model.n_vocab());
    let mut stream = StopStream::new(&req.stop);
    let mut batch = LlamaBatch::new(1, 1);
    let mut pos = prompt_tokens;
    let mut logits_at = (tokens.len() - 1) as i32;
    let mut completion_tokens = 0u32;
    let finish = |reason, completion_tokens| Event::Finished {
        reason,
        prompt_tokens,
        completion_tokens,
    };
    loop {
        if events.is_closed() {
            return Ok(()); // cancelled: the client went away
        }
        if completion_tokens >= req.max_tokens || pos >= n_ctx {
            let _ = events.send(Event::Text(stream.finish()));
            let _ = events.send(finish(FinishReason::Length, completion_tokens));
            return Ok(());
        }
        let token = sampler.sample(ctx, logits_at);
        sampler.accept(token);
        if vocab.is_eog(token) {
            let _ = events.send(Event::Text(stream.finish()));
            let _ = events.send(finish(FinishReason::Stop, completion_tokens));
            return Ok(());
        }
        completion_tokens += 1;
        let piece = vocab.token_to_piece(token, false, None);
        match stream.feed(&piece) {
            Fed::Emit(t) => {
                if !t.is_empty() && events.send(Event::Text(t)).is_err() {
                    return Ok(());
                }
            }
            Fed::Stopped(t) => {
                let _ = events.send(Event::Text(t));
                let _ = events.send(finish(FinishReason::Stop, completion_tokens));
                return Ok(());
            }
        }
        batch.clear();
        batch
            .add(token, pos as i32, &[0], true)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        pos += 1;
        logits_at = 0;
    }
}

fn embed(
    backend: &LlamaBackend,
    l: &Loaded,
    cfg: &EngineConfig,
    inputs: &[String],
) -> Result<Embeddings, EngineError> {
    let n_ctx = l.info.n_ctx;
    // A separate embedding context (mean pooling over the sequence); created per request because
    // embedding calls are rare next to chat, and it keeps the chat context's settings simple.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_threads(cfg.threads as i32)
        .with_n_threads_batch(cfg.threads as i32)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::Mean);
    let mut ctx = l
        .model
        .new_context(backend, params)
        .map_err(|e| EngineError::CannotEmbed(format!("{}: {e}", l.info.name)))?;
    let mut vectors = Vec::with_capacity(inputs.len());
    let mut total = 0u32;
    for input in inputs {
        let tokens = tokenize(l, input);
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if tokens.len() as u32 > n_ctx {
            return Err(EngineError::ContextLengthExceeded {
                prompt_tokens: tokens.len() as u32,
                n_ctx,
            });
        }
        total += tokens.len() as u32;
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        batch
            .add_sequence(&tokens, 0, false)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let v = ctx
            .embeddings_seq_ith(0)
            .map_err(|_| EngineError::CannotEmbed(l.info.name.clone()))?;
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        vectors.push(if norm > 0.0 {
            v.iter().map(|x| x / norm).collect()
        } else {
            v.to_vec()
        });
    }
    Ok(Embeddings {
        vectors,
        prompt_tokens: total,
    })
}
