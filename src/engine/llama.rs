//! The real engine: llama.cpp through the safe `llama-cpp-2` API, on one OS thread, with
//! continuous batching.
//!
//! `LlamaContext<'a>` borrows its model, so the models and their contexts live on the stack of
//! [`run`], on the engine thread; the backend, which may be initialised once per process, is a
//! static shared by every engine thread ([`backend`]). The daemon runs one engine per resident
//! model (see [`super::pool`]), so loading or unloading one never stops another.
//!
//! Each model has one context with `slots` sequences, each with its own KV stream of
//! `ctx-size` tokens (see [`serving_params`] for why not one unified cache). The thread loops:
//! take new jobs, admit waiting requests into free slots (round-robin across callers, reusing a
//! slot's cached prompt prefix for the same caller, see [`super::scheduler`]), then run one step:
//! a decode with one token for every generating sequence, then a bounded amount of prompt in
//! chunks, sampling each sequence with its own sampler. Requests join and leave between steps; a
//! client that goes away frees its slot at the next step.

use super::constraint::{Constraint, Grammars, Spec};
use super::scheduler::{choose_slot, plan_prefill, FairQueue, Prefilling, SlotView};
use super::speculative::{self, Adaptive, Lookup, Mode, Speculation, SpeculativeConfig};
use super::speculative_draft::{check_same_vocabulary, DraftRunner};
use super::text::{Fed, StopStream};
use super::{
    ChatMessage, Embeddings, EngineError, Event, FinishReason, GenerateRequest, ModelInfo,
    OutputInfo, Prompt, ReasoningTags, SampledLogprob, Sampling, TokenLogprob, ToolFormat,
};
use crate::metrics::{Metrics, ModelMetrics};
use inhouse_formats::request::ToolChoice;
use inhouse_formats::template::{ChatTemplate, RenderInput, TemplateLimits};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use std::cell::RefCell;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// How the engine runs llama.cpp.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Threads for generation and prompt processing.
    pub threads: u32,
    /// Context size of each request (each slot), in tokens.
    pub ctx_size: u32,
    /// Layers offloaded to the GPU.
    pub gpu_layers: u32,
    /// Requests waiting before new ones are refused.
    pub queue_size: usize,
    /// Requests decoded together per model (sequences in its context).
    pub slots: u32,
    /// Let a caller's request reuse another caller's cached prompt prefix.
    pub cache_reuse_across_users: bool,
    /// Most prompt tokens prefilled in one decode step while other requests are generating, so
    /// that their streams keep flowing; a prompt prefills in full batches when nothing else runs.
    pub prefill_chunk: u32,
    /// Keep every request's output independent of what else runs (see [`serving_params`]).
    /// `false` trades that for llama.cpp's faster defaults: one unified KV cache and flash
    /// attention where the backend has it.
    pub deterministic_batching: bool,
    /// Bounds on rendering a model's chat template (it comes inside the GGUF: untrusted).
    pub template_limits: TemplateLimits,
    /// Speculative decoding (`[speculative]`), resolved per model when its runner starts.
    pub speculative: SpeculativeConfig,
}

/// Tokens per decode call (`n_batch` = `n_ubatch`).
pub const N_BATCH: u32 = 512;

/// The context settings for serving `slots` sequences of `ctx_size` tokens each; public so that
/// the benchmark runs raw llama.cpp with exactly these. `gpu`: layers are offloaded.
///
/// Chosen so that batching changes no output (the text of a request at temperature 0 or a fixed
/// seed is the same alone, next to seven others, and with its own speculative drafts verified
/// in the same decode):
/// - one KV stream per sequence (`kv_unified = false`): a sequence's cells sit at the same
///   indices whoever else runs, so attention sums in the same order. In a unified cache the
///   cells of concurrent sequences interleave and SIMD reductions over them round differently.
/// - on the CPU, flash attention with K and V in Q8_0. ggml's CPU flash attention has three
///   kernels: split-KV (one query row of one stream against 512 cells or more), tiled (64 query
///   rows or more) and one-row (the rest); the first two only for an F16 or F32 cache. With a
///   Q8_0 cache every row of every batch takes the one-row kernel: a token's attention is
///   computed the same way whether it is decoded alone, in a prompt chunk of any size, or as
///   one of a draft's tokens verified together. The plain path (flash attention off) is not:
///   its products go through llamafile's tinyBLAS from two query rows of a sequence up and
///   through ggml's dot products for one, which round differently, enough to move greedy
///   choices of a speculative run. (An F32 V cache does not help: llama.cpp casts it to F16
///   for flash attention, every step.) The price is prompt speed: the one-row kernel is slower
///   than the tiled one on long prompts; the gain, half the KV memory and generation at
///   llama.cpp's own speed. `benches/prompt_settings.rs` measures each setting (docs/
///   BENCHMARKS.md, "Attention settings").
/// - with a GPU, flash attention off and F16 (its kernels take other paths by batch size in any
///   case).
///
/// The cost of separate streams: llama.cpp splits a batch over several streams into runs of
/// consecutive sequence ids with equal token counts (one graph each), so a step with gaps in
/// the busy slots or with a prompt chunk takes two or three graph evaluations instead of one.
/// With `deterministic = false` (config `deterministic-batching = false`) the context uses
/// llama.cpp's own defaults instead (one unified cache of `ctx_size × slots` cells, flash
/// attention where the backend has it, F16): a request's text at temperature 0 may then change
/// in the last bits with its neighbours.
pub fn serving_params(
    ctx_size: u32,
    slots: u32,
    threads: u32,
    deterministic: bool,
    gpu: bool,
) -> LlamaContextParams {
    let (unified, flash) = match (deterministic, gpu) {
        (true, false) => (false, llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED),
        (true, true) => (false, llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED),
        (false, _) => (true, llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO),
    };
    let kv_type = serving_kv_type(deterministic, gpu);
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(ctx_size * slots))
        .with_n_batch(N_BATCH)
        .with_n_ubatch(N_BATCH)
        .with_n_seq_max(slots)
        .with_kv_unified(unified)
        .with_flash_attention_policy(flash)
        .with_type_k(kv_type)
        .with_type_v(kv_type)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32)
}

/// The K and V cache type of the serving context (see [`serving_params`]): Q8_0 when batching
/// is deterministic on the CPU, else F16.
pub fn serving_kv_type(deterministic: bool, gpu: bool) -> KvCacheType {
    if deterministic && !gpu {
        KvCacheType::Q8_0
    } else {
        KvCacheType::F16
    }
}

/// Bytes of 32 cache elements of [`serving_kv_type`]: the memory estimate counts the cache at
/// this width.
pub fn kv_bytes_per_32(deterministic: bool, gpu: bool) -> u64 {
    match serving_kv_type(deterministic, gpu) {
        KvCacheType::Q8_0 => 34,
        _ => 64,
    }
}

enum Job {
    Generate(Box<GenerateRequest>, mpsc::UnboundedSender<Event>, Instant),
    /// Several generations queued in one step (see [`LlamaEngine::generate_all`]).
    GenerateAll(
        Vec<(Box<GenerateRequest>, mpsc::UnboundedSender<Event>)>,
        Instant,
    ),
    Embed(
        String,
        Vec<String>,
        oneshot::Sender<Result<Embeddings, EngineError>>,
    ),
    /// Empties every idle slot that holds this uid's tokens (its data was erased).
    ForgetOwner(u32),
}

/// A model to load: its name, its GGUF file and, for a `base+adapter` name, the LoRA adapter
/// applied to every request of that name.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The name clients use.
    pub name: String,
    /// The model's GGUF file.
    pub path: PathBuf,
    /// A LoRA adapter (GGUF) applied at scale 1 to this name's context.
    pub adapter: Option<PathBuf>,
    /// The draft model loaded with it for draft-model speculation (`[speculative.drafts]`).
    pub draft: Option<DraftSpec>,
}

/// A draft model: its name (for messages) and its GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftSpec {
    /// The draft model's name.
    pub name: String,
    /// Its GGUF file.
    pub path: PathBuf,
}

/// The process's llama.cpp backend. `LlamaBackend::init` succeeds once per process, and several
/// engine threads (one per resident model) share it, so it lives in a static for the life of the
/// process (freeing it at exit would gain nothing: `llama_backend_free` only releases ggml's
/// quantization tables).
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: std::sync::OnceLock<Result<LlamaBackend, String>> = std::sync::OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's own log lines go to tracing at debug level; they never include
            // prompt text.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            // The CPU variant for this processor must be loaded before llama.cpp can load a
            // model.
            let cpu = super::cpu_backend()?;
            tracing::info!(variant = %cpu.variant, dir = %cpu.dir.display(), "ggml CPU backend");
            LlamaBackend::init().map_err(|e| format!("llama.cpp init: {e}"))
        })
        .as_ref()
        .map_err(|e| EngineError::Inference(e.clone()))
}

/// Handle to the engine thread. Dropping every handle stops the thread once running requests end.
pub struct LlamaEngine {
    jobs: std_mpsc::SyncSender<Job>,
    models: Vec<ModelInfo>,
    queue_size: usize,
    /// Generation requests sent to the engine and not yet in a slot.
    waiting: Arc<AtomicUsize>,
    /// Tells the engine thread to stop after its current step.
    stop: Arc<AtomicBool>,
    /// The engine thread, joined by [`LlamaEngine::shutdown`].
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LlamaEngine {
    /// Stops the engine thread and waits for it: requests still running are dropped (their
    /// callers see the stream end), then contexts, models and the backend are freed on that
    /// thread. Call before the process exits: exiting while the thread is inside llama.cpp would
    /// run ggml's static destructors (which unload the CPU-variant library) under its feet.
    pub fn shutdown(&self) {
        self.stop.store(true, Relaxed);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Starts the engine thread and loads every model; returns once all are loaded, or with the
    /// first model that failed. Each model's series in `metrics` is registered if missing.
    pub fn start(
        models: Vec<ModelSpec>,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, EngineError> {
        for m in &models {
            metrics.ensure(&m.name);
        }
        let (jobs, rx) = std_mpsc::sync_channel(cfg.queue_size);
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let queue_size = cfg.queue_size;
        let waiting = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            waiting: waiting.clone(),
            metrics,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run(models, cfg, rx, ready_tx, shared, thread_stop))
            .map_err(|e| EngineError::Inference(format!("cannot start the engine thread: {e}")))?;
        let models = ready_rx.recv().map_err(|_| EngineError::ShuttingDown)??;
        Ok(LlamaEngine {
            jobs,
            models,
            queue_size,
            waiting,
            stop,
            thread: std::sync::Mutex::new(Some(thread)),
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

impl LlamaEngine {
    /// The models this engine serves.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    /// Queues a generation; its events arrive on the returned channel.
    pub fn generate(
        &self,
        req: GenerateRequest,
    ) -> Result<mpsc::UnboundedReceiver<Event>, EngineError> {
        self.check_model(&req.model)?;
        // Reserve a place in the queue first, so that concurrent callers cannot overshoot it.
        if self.waiting.fetch_add(1, Relaxed) >= self.queue_size {
            self.waiting.fetch_sub(1, Relaxed);
            return Err(EngineError::QueueFull(self.queue_size));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if let Err(e) = self.submit(Job::Generate(Box::new(req), tx, Instant::now())) {
            self.waiting.fetch_sub(1, Relaxed);
            return Err(e);
        }
        Ok(rx)
    }

    /// Queues several generations at once: the engine takes them all in the same step, so
    /// which requests decode together, and in what order slots free and refill, depends only on
    /// the requests and never on when they arrived. With deterministic batching a batch job
    /// (`inhouse-quantize synth`) therefore gives the same output on every run.
    pub fn generate_all(
        &self,
        reqs: Vec<GenerateRequest>,
    ) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, EngineError> {
        for r in &reqs {
            self.check_model(&r.model)?;
        }
        let n = reqs.len();
        if self.waiting.fetch_add(n, Relaxed) + n > self.queue_size {
            self.waiting.fetch_sub(n, Relaxed);
            return Err(EngineError::QueueFull(self.queue_size));
        }
        let mut jobs = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for r in reqs {
            let (tx, rx) = mpsc::unbounded_channel();
            jobs.push((Box::new(r), tx));
            receivers.push(rx);
        }
        if let Err(e) = self.submit(Job::GenerateAll(jobs, Instant::now())) {
            self.waiting.fetch_sub(n, Relaxed);
            return Err(e);
        }
        Ok(receivers)
    }

    /// Embeds each input.
    pub async fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> Result<Embeddings, EngineError> {
        self.check_model(&model)?;
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Embed(model, inputs, tx))?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Drops `uid`'s cached tokens (prompts and answers kept for prefix reuse and prompt
    /// lookup) from every idle slot, after the jobs already queued; a slot still generating
    /// for it keeps its tokens until it is reused or evicted.
    pub fn forget_owner(&self, uid: u32) -> Result<(), EngineError> {
        self.submit(Job::ForgetOwner(uid))
    }
}

/// The compute backend in use, e.g. `CPU haswell (AVX2 FMA F16C …)` or `CUDA0 (…), CPU …`.
pub fn backend_description() -> String {
    let cpu = match super::cpu_backend() {
        Ok(c) => format!("CPU {} ({})", c.variant, c.features.join(" ")),
        Err(e) => format!("CPU unavailable: {e}"),
    };
    let others: Vec<String> = llama_cpp_2::list_llama_ggml_backend_devices()
        .iter()
        .filter(|d| !d.backend.eq_ignore_ascii_case("cpu"))
        .map(|d| format!("{} ({})", d.backend, d.description))
        .collect();
    if others.is_empty() {
        cpu
    } else {
        format!("{}, {cpu}", others.join(", "))
    }
}

/// State the engine thread shares with its handles.
struct Shared {
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// A request waiting for a slot.
struct Pending {
    req: GenerateRequest,
    events: mpsc::UnboundedSender<Event>,
    arrived: Instant,
}

/// A request running in a slot.
struct Active {
    events: mpsc::UnboundedSender<Event>,
    /// Which choice of its request this is (0 ..< n).
    choice: u32,
    /// For choices after the first: the slot of choice 0, whose computed prompt this one copies
    /// instead of computing it again.
    follows: Option<usize>,
    /// The grammar the answer must follow, when one applies.
    constraint: Option<Constraint>,
    /// Alternatives to report per token, when log-probabilities were asked for.
    logprobs: Option<u8>,
    /// Log-probabilities of tokens whose text is not sent yet.
    pending: Vec<SampledLogprob>,
    /// The whole prompt; `slot.tokens` holds how much of it is decoded.
    prompt: Vec<LlamaToken>,
    max_tokens: u32,
    sampler: LlamaSampler,
    stream: StopStream,
    completion_tokens: u32,
    /// The sampled token to feed in the next step.
    next: Option<LlamaToken>,
    /// Index in the last batch whose logits this request samples from.
    logits_at: Option<i32>,
    arrived: Instant,
    last_token_at: Option<Instant>,
    /// Drafting state, when this request speculates.
    spec: Option<SeqSpec>,
}

/// A speculating request's drafting state.
struct SeqSpec {
    /// Drafting state with a draft model.
    adaptive: Adaptive,
    /// Drafting state with prompt lookup.
    lookup: Lookup<LlamaToken>,
    /// The draft decoded after the sampled token in this step (empty: none).
    draft: Vec<LlamaToken>,
    /// What the reused slot held after the prefix this request shares with it (the same
    /// caller's previous prompt tail and answer, at most [`EARLIER_MAX`] tokens): prompt
    /// lookup searches it too.
    earlier: Vec<LlamaToken>,
}

/// Most tokens of a reused slot's previous continuation kept for prompt lookup.
const EARLIER_MAX: usize = 4096;

impl Active {
    fn prompt_tokens(&self) -> u32 {
        self.prompt.len() as u32
    }
}

/// One sequence of a model's context.
struct Slot {
    seq: i32,
    /// Whose tokens the sequence holds.
    owner: Option<u32>,
    /// The tokens the sequence holds in the KV cache, in position order.
    tokens: Vec<LlamaToken>,
    /// How many of `tokens`, from the start, were computed as prompt (the rest were generated
    /// one at a time). Only these are reused: a generated token's cache entry was computed by
    /// the one-token kernels and would differ slightly from the same token read as a prompt.
    prefilled: usize,
    last_used: u64,
    active: Option<Active>,
}

impl Slot {
    fn prefilling(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.follows.is_none() && self.tokens.len() < a.prompt.len())
    }
}

/// One model's context, slots and queue.
struct Runner<'m> {
    l: &'m Loaded,
    ctx: LlamaContext<'m>,
    slots: Vec<Slot>,
    queue: FairQueue<Pending>,
    batch: LlamaBatch<'static>,
    /// Tokens per request.
    ctx_size: u32,
    prefill_chunk: usize,
    share_cache: bool,
    clock: u64,
    metrics: Arc<ModelMetrics>,
    /// This model's speculation settings.
    spec: Speculation,
    /// The draft model's context, in draft mode.
    draft: Option<DraftRunner<'m>>,
    /// What a drafted token costs in draft-model decodes, relative to a one-token decode of
    /// this model (`draft-cost`, or the ratio of the weights' sizes: on a CPU a decode's time
    /// follows the bytes of weights it reads and multiplies).
    draft_cost: f32,
}

fn run(
    specs: Vec<ModelSpec>,
    cfg: EngineConfig,
    jobs: std_mpsc::Receiver<Job>,
    ready: std_mpsc::Sender<Result<Vec<ModelInfo>, EngineError>>,
    shared: Shared,
    stop: Arc<AtomicBool>,
) {
    let backend = match backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut loaded = Vec::with_capacity(specs.len());
    for spec in &specs {
        match load(backend, spec, &cfg) {
            Ok(l) => loaded.push(l),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let mut runners = Vec::with_capacity(loaded.len());
    for l in &loaded {
        match Runner::new(backend, l, &cfg, &shared.metrics) {
            Ok(r) => runners.push(r),
            Err(e) => {
                let _ = ready.send(Err(e));
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

    let mut open = true;
    while !stop.load(Relaxed) {
        let busy = runners.iter().any(Runner::has_work);
        if !busy {
            if !open {
                break;
            }
            // Idle: sleep until a job arrives, looking at the stop flag now and then.
            match jobs.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(job) => take(job, &mut runners, backend, &cfg, &shared),
                Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => take(job, &mut runners, backend, &cfg, &shared),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        for r in &mut runners {
            let left = r.drop_cancelled_waiting();
            shared.waiting.fetch_sub(left, Relaxed);
            let admitted = r.admit();
            shared.waiting.fetch_sub(admitted, Relaxed);
            r.step();
            r.update_gauges();
        }
    }
}

/// Handles a job from the queue: generation requests wait for a slot, embeddings run now.
fn take(
    job: Job,
    runners: &mut [Runner<'_>],
    backend: &LlamaBackend,
    cfg: &EngineConfig,
    shared: &Shared,
) {
    match job {
        Job::GenerateAll(jobs, arrived) => {
            for (req, events) in jobs {
                take(
                    Job::Generate(req, events, arrived),
                    runners,
                    backend,
                    cfg,
                    shared,
                );
            }
        }
        Job::Generate(req, events, arrived) => {
            match runners.iter_mut().find(|r| r.l.info.name == req.model) {
                Some(r) if req.n as usize > r.slots.len() => {
                    shared.waiting.fetch_sub(1, Relaxed);
                    let _ = events.send(Event::Failed(EngineError::TooManyChoices {
                        model: req.model,
                        n: req.n,
                        slots: r.slots.len() as u32,
                    }));
                }
                Some(r) => {
                    let uid = req.owner_uid;
                    r.queue.push(
                        uid,
                        Pending {
                            req: *req,
                            events,
                            arrived,
                        },
                    );
                    r.update_gauges();
                }
                None => {
                    shared.waiting.fetch_sub(1, Relaxed);
                    let _ = events.send(Event::Failed(EngineError::UnknownModel(req.model)));
                }
            }
        }
        Job::Embed(model, inputs, reply) => {
            let result = match runners.iter().find(|r| r.l.info.name == model) {
                Some(r) => embed(backend, r.l, cfg, &inputs),
                None => Err(EngineError::UnknownModel(model)),
            };
            let _ = reply.send(result);
        }
        Job::ForgetOwner(uid) => {
            for r in runners.iter_mut() {
                r.forget_owner(uid);
            }
        }
    }
}

fn inference(e: impl std::fmt::Display) -> EngineError {
    EngineError::Inference(e.to_string())
}

impl<'m> Runner<'m> {
    fn new(
        backend: &LlamaBackend,
        l: &'m Loaded,
        cfg: &EngineConfig,
        metrics: &Metrics,
    ) -> Result<Self, EngineError> {
        let slots = cfg.slots.max(1);
        // The target's context and a draft model's have the same settings.
        let params = || {
            serving_params(
                l.info.n_ctx,
                slots,
                cfg.threads,
                cfg.deterministic_batching,
                cfg.gpu_layers > 0,
            )
        };
        let mut ctx = l
            .model
            .new_context(backend, params())
            .map_err(|e| EngineError::Load {
                name: l.info.name.clone(),
                path: String::new(),
                reason: format!("cannot create a context: {e}"),
            })?;
        l.apply_adapter(&mut ctx)?;
        if !cfg.deterministic_batching {
            tracing::info!(
                model = %l.info.name,
                cells = ctx.n_ctx(),
                slots,
                per_request = l.info.n_ctx,
                "throughput mode: one KV cache shared by all slots, each request still limited \
                 to its context size (llama.cpp's warning n_ctx_seq > n_ctx_train is expected)"
            );
        }
        let spec = cfg.speculative.for_model(&l.info.name);
        let draft = match (&l.draft, spec.mode) {
            (Some((draft_name, model)), Mode::Draft) => {
                let ctx = model
                    .new_context(backend, params())
                    .map_err(|e| EngineError::Load {
                        name: l.info.name.clone(),
                        path: String::new(),
                        reason: format!(
                            "cannot create a context for the draft model {draft_name:?}: {e}"
                        ),
                    })?;
                Some(DraftRunner::new(
                    model,
                    ctx,
                    slots as usize,
                    N_BATCH as usize,
                ))
            }
            _ => None,
        };
        if spec.mode == Mode::Draft && draft.is_none() {
            return Err(EngineError::Load {
                name: l.info.name.clone(),
                path: String::new(),
                reason: "speculative mode \"draft\" needs a draft model: name one in \
                         [speculative.drafts]"
                    .into(),
            });
        }
        let draft_cost = match (&l.draft, spec.mode) {
            (Some((_, model)), Mode::Draft) => spec.draft_cost.unwrap_or_else(|| {
                (model.size() as f64 / l.model.size().max(1) as f64).min(2.0) as f32
            }),
            _ => 0.0,
        };
        if spec.mode != Mode::Off {
            tracing::info!(
                model = %l.info.name,
                mode = spec.mode.as_str(),
                draft_max = spec.draft_max,
                max_batch = spec.max_batch,
                verify_cost = spec.verify_cost,
                draft_cost,
                "speculative decoding"
            );
        }
        let metrics = metrics.ensure(&l.info.name);
        metrics.slots.store(u64::from(slots), Relaxed);
        metrics
            .kv_capacity_tokens
            .store(u64::from(ctx.n_ctx()), Relaxed);
        Ok(Runner {
            l,
            ctx,
            slots: (0..slots as i32)
                .map(|seq| Slot {
                    seq,
                    owner: None,
                    tokens: Vec::new(),
                    prefilled: 0,
                    last_used: 0,
                    active: None,
                })
                .collect(),
            queue: FairQueue::default(),
            batch: LlamaBatch::new(N_BATCH as usize, 1),
            ctx_size: l.info.n_ctx,
            // At least 3: a step's budget must allow a chunk of two tokens after leaving none
            // alone for later (see `step`), or a prompt could wait forever behind generation.
            prefill_chunk: cfg.prefill_chunk.clamp(3, N_BATCH) as usize,
            share_cache: cfg.cache_reuse_across_users,
            clock: 0,
            metrics,
            spec,
            draft,
            draft_cost,
        })
    }

    /// Empties the idle slots holding `uid`'s tokens (see [`LlamaEngine::forget_owner`]).
    fn forget_owner(&mut self, uid: u32) {
        let mut dropped = 0;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.active.is_none() && s.owner == Some(uid) {
                self.empty_slot(i);
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(model = %self.l.info.name, uid, slots = dropped, "erased uid's cached tokens dropped");
        }
    }

    /// Empties slot `i`: its KV cells (and the draft model's), its tokens, its owner.
    fn empty_slot(&mut self, i: usize) {
        if let Some(d) = self.draft.as_mut() {
            d.forget_after(i, 0);
        }
        let s = &mut self.slots[i];
        let _ = self.ctx.clear_kv_cache_seq(Some(s.seq as u32), None, None);
        s.tokens.clear();
        s.prefilled = 0;
        s.owner = None;
    }

    fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.slots.iter().any(|s| s.active.is_some())
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.queue_depth.store(self.queue.len() as u64, Relaxed);
        let busy = self.slots.iter().filter(|s| s.active.is_some()).count();
        m.busy_slots.store(busy as u64, Relaxed);
        let used: usize = self.slots.iter().map(|s| s.tokens.len()).sum();
        m.kv_used_tokens.store(used as u64, Relaxed);
    }

    /// Forgets queued requests whose client left; returns how many.
    fn drop_cancelled_waiting(&mut self) -> usize {
        let n = self.queue.retain(|p| !p.events.is_closed());
        self.metrics.cancelled.fetch_add(n as u64, Relaxed);
        n
    }

    /// Moves waiting requests into free slots; returns how many left the queue.
    fn admit(&mut self) -> usize {
        let mut taken = 0;
        loop {
            // A request of n choices waits until n slots are free (`take` refused any that asks
            // for more slots than the model has); the callers behind it wait their turn.
            let free = self.slots.iter().filter(|s| s.active.is_none()).count();
            let Some(need) = self.queue.peek().map(|p| p.req.n.max(1) as usize) else {
                break;
            };
            if free == 0 || need > free {
                break;
            }
            let Some((_, p)) = self.queue.pop() else {
                break;
            };
            taken += 1;
            if let Err(e) = self.start(p.req, &p.events, p.arrived) {
                let _ = p.events.send(Event::Failed(e));
            }
        }
        taken
    }

    /// Tokenizes a request and places it in a slot, reusing what the slot has cached.
    fn start(
        &mut self,
        req: GenerateRequest,
        events: &mpsc::UnboundedSender<Event>,
        arrived: Instant,
    ) -> Result<(), EngineError> {
        if events.is_closed() {
            self.metrics.cancelled.fetch_add(1, Relaxed);
            return Ok(());
        }
        let (text, output) = render(self.l, &req)?;
        let prompt = tokenize(self.l, &text);
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let prompt_tokens = prompt.len() as u32;
        if prompt_tokens >= self.ctx_size {
            return Err(EngineError::ContextLengthExceeded {
                prompt_tokens,
                n_ctx: self.ctx_size,
            });
        }
        let views: Vec<SlotView<'_, LlamaToken>> = self
            .slots
            .iter()
            .map(|s| SlotView {
                busy: s.active.is_some(),
                owner: s.owner,
                tokens: &s.tokens[..s.prefilled],
                last_used: s.last_used,
            })
            .collect();
        let place = choose_slot(&views, &prompt, req.owner_uid, self.share_cache)
            .ok_or_else(|| inference("no free slot"))?;
        let n_vocab = self.l.model.n_vocab();
        if let Some(&(token, _)) = req.logit_bias.iter().find(|(t, _)| *t < 0 || *t >= n_vocab) {
            return Err(EngineError::LogitBias { token, n_vocab });
        }
        let n = req.n.max(1);
        let mut constraints = Vec::with_capacity(n as usize);
        if let Some(spec) = Spec::of(&req, &output)? {
            let mut grammars = self.l.grammars.borrow_mut();
            if grammars.is_none() {
                *grammars = Some(Grammars::new(&self.l.model)?);
            }
            let g = grammars.as_mut().expect("set above");
            for _ in 0..n {
                constraints.push(Some(g.start(&spec)?));
            }
        } else {
            constraints.resize_with(n as usize, || None);
        }
        // The other choices take the free slots used longest ago; they copy this one's prompt
        // once it is computed.
        let mut others: Vec<usize> = (0..self.slots.len())
            .filter(|&i| i != place.slot && self.slots[i].active.is_none())
            .collect();
        others.sort_by_key(|&i| self.slots[i].last_used);
        others.truncate(n as usize - 1);
        if others.len() + 1 < n as usize {
            return Err(inference("not enough free slots for every choice"));
        }
        let prompt_copy = if n > 1 { prompt.clone() } else { Vec::new() };
        let mut prompt_kept = prompt;
        let slot = &mut self.slots[place.slot];
        // Remove everything after the reused prefix (all of it when nothing is reused).
        let mut keep = place.keep;
        let trimmed = self
            .ctx
            .clear_kv_cache_seq(Some(slot.seq as u32), Some(keep as u32), None)
            .map_err(inference)?;
        if !trimmed {
            // Recurrent and hybrid models (Mamba, RWKV, Jamba…) keep one state per sequence and
            // cannot drop its tail: start the sequence afresh instead of reusing a prefix.
            let cleared = self
                .ctx
                .clear_kv_cache_seq(Some(slot.seq as u32), None, None)
                .map_err(inference)?;
            if !cleared {
                return Err(inference("cannot clear a sequence of the KV cache"));
            }
            keep = 0;
        }
        // What the slot held after the shared prefix: the same caller's previous answer (a
        // slot is reused only for its owner, unless the config shares caches).
        let mut earlier = Vec::new();
        if keep > 0 && self.spec.mode == Mode::Ngram && req.speculative {
            let end = slot.tokens.len().min(keep + EARLIER_MAX);
            earlier.extend_from_slice(&slot.tokens[keep.min(end)..end]);
        }
        slot.tokens.truncate(keep);
        slot.prefilled = slot.prefilled.min(keep);
        if let Some(d) = self.draft.as_mut() {
            d.forget_after(place.slot, keep);
        }
        slot.owner = Some(req.owner_uid);
        self.clock += 1;
        slot.last_used = self.clock;
        let m = &self.metrics;
        m.prompt_tokens.fetch_add(u64::from(prompt_tokens), Relaxed);
        if keep > 0 {
            m.cache_hits.fetch_add(1, Relaxed);
            m.cached_prompt_tokens.fetch_add(keep as u64, Relaxed);
        }
        tracing::debug!(
            model = %self.l.info.name,
            seq = slot.seq,
            prompt_tokens,
            reused = keep,
            "request admitted"
        );
        if events
            .send(Event::Started {
                prompt_tokens,
                output,
            })
            .is_err()
        {
            return Ok(());
        }
        let primary = place.slot;
        let clock = self.clock;
        for (choice, constraint) in constraints.into_iter().enumerate() {
            let at = if choice == 0 {
                primary
            } else {
                others[choice - 1]
            };
            if choice > 0 {
                self.empty_slot(at);
                let s = &mut self.slots[at];
                s.owner = Some(req.owner_uid);
                s.last_used = clock;
            }
            let s = &mut self.slots[at];
            let mut sampling = req.sampling;
            sampling.seed = sampling.seed.wrapping_add(choice as u32);
            s.active = Some(Active {
                events: events.clone(),
                choice: choice as u32,
                follows: (choice > 0).then_some(primary),
                constraint,
                logprobs: req.logprobs.map(|l| l.top),
                pending: Vec::new(),
                prompt: if choice == 0 {
                    std::mem::take(&mut prompt_kept)
                } else {
                    prompt_copy.clone()
                },
                max_tokens: req.max_tokens,
                sampler: sampler(&sampling, n_vocab, &req.logit_bias),
                stream: StopStream::new(&req.stop),
                completion_tokens: 0,
                next: None,
                logits_at: None,
                arrived,
                last_token_at: None,
                spec: (self.spec.mode != Mode::Off && req.speculative).then(|| SeqSpec {
                    adaptive: Adaptive::new(self.spec.draft_max),
                    lookup: Lookup::new(self.spec.draft_max),
                    draft: Vec::new(),
                    earlier: if choice == 0 {
                        std::mem::take(&mut earlier)
                    } else {
                        Vec::new()
                    },
                }),
            });
        }
        Ok(())
    }

    /// One step for every running request of this model: a decode of one token per generating
    /// sequence, then prompt chunks within the step's budget, each its own decode. Sampling
    /// follows each decode (the next decode overwrites the logits).
    ///
    /// Generation and prompt tokens never share a decode, and no prompt chunk is a single token:
    /// llama.cpp's CPU matrix kernels differ for one token and for several (llamafile's sgemm
    /// starts at two), so keeping every token on the same kernel it would get alone keeps the
    /// output of a request independent of what else runs (see [`serving_params`]).
    fn step(&mut self) {
        // A client that went away frees its slot now; the tokens already decoded stay cached.
        for s in &mut self.slots {
            if s.active.as_ref().is_some_and(|a| a.events.is_closed()) {
                s.active = None;
                self.metrics.cancelled.fetch_add(1, Relaxed);
            }
        }
        self.batch.clear();
        let mut generating = 0usize;
        // Batch positions used so far (generating tokens and drafts).
        let mut used = 0usize;
        let to_generate = self
            .slots
            .iter()
            .filter(|s| s.active.as_ref().is_some_and(|a| a.next.is_some()))
            .count();
        let drafts_allowed = self.spec.mode != Mode::Off
            && speculative::step_allows_drafts(to_generate, self.spec.max_batch);
        let mut drafts = if drafts_allowed {
            self.propose(to_generate)
        } else {
            Vec::new()
        };
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(a) = s.active.as_mut() else { continue };
            if let Some(t) = a.next.take() {
                if let Err(e) = self.batch.add(t, s.tokens.len() as i32, &[s.seq], true) {
                    // Cannot happen while slots ≤ N_BATCH (the config allows 64): should it,
                    // this request fails instead of waiting forever for a token it lost.
                    tracing::error!(
                        model = %self.l.info.name,
                        seq = s.seq,
                        error = %e,
                        "a generating sequence does not fit the step's batch"
                    );
                    let _ = a.events.send(Event::Failed(inference(e)));
                    s.active = None;
                    break;
                }
                a.logits_at = Some(used as i32);
                s.tokens.push(t);
                generating += 1;
                used += 1;
                if let Some(sp) = a.spec.as_mut() {
                    sp.draft = drafts.get_mut(i).map(std::mem::take).unwrap_or_default();
                    for (k, &d) in sp.draft.iter().enumerate() {
                        let pos = (s.tokens.len() + k) as i32;
                        // Cannot fail: `propose` kept the drafts within the batch.
                        let _ = self.batch.add(d, pos, &[s.seq], true);
                    }
                    used += sp.draft.len();
                }
            }
        }
        if generating > 0 {
            if let Err(e) = self.ctx.decode(&mut self.batch) {
                self.fail_all(&e);
                return;
            }
            for i in 0..self.slots.len() {
                let drafted = self.slots[i]
                    .active
                    .as_ref()
                    .and_then(|a| a.spec.as_ref())
                    .is_some_and(|sp| !sp.draft.is_empty());
                if drafted {
                    self.verify(i);
                } else {
                    self.sample(i);
                }
            }
        }
        // Prompt chunks, as the scheduler plans them (oldest admission first; while others
        // generate, at most `prefill_chunk` prompt tokens per step keep their streams flowing).
        let waiting: Vec<Prefilling> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.prefilling())
            .filter_map(|(i, s)| {
                Some(Prefilling {
                    slot: i,
                    admitted: s.last_used,
                    done: s.tokens.len(),
                    prompt: s.active.as_ref()?.prompt.len(),
                })
            })
            .collect();
        let plan = plan_prefill(
            &waiting,
            generating > 0,
            N_BATCH as usize,
            self.prefill_chunk,
        );
        for c in plan {
            let (i, from, n) = (c.slot, c.from, c.len);
            let s = &mut self.slots[i];
            let Some(a) = s.active.as_mut() else { continue };
            self.batch.clear();
            for pos in from..from + n {
                let last = pos + 1 == a.prompt.len();
                let _ = self.batch.add(a.prompt[pos], pos as i32, &[s.seq], last);
            }
            a.logits_at = (from + n == a.prompt.len()).then_some(n as i32 - 1);
            s.tokens.extend_from_slice(&a.prompt[from..from + n]);
            s.prefilled = s.tokens.len();
            if let Err(e) = self.ctx.decode(&mut self.batch) {
                self.fail_all(&e);
                return;
            }
            let followers = self.fan_out(i);
            self.sample(i);
            for j in followers {
                self.sample(j);
            }
        }
    }

    /// This step's drafts, per slot (empty where a sequence does not speculate, pauses, or has
    /// no room): each speculating sequence may propose what its [`Adaptive`] state allows
    /// (with prompt lookup, its [`Lookup`] state for the length of the suffix that matched),
    /// within its context, its `max_tokens`, and the step's batch.
    fn propose(&mut self, to_generate: usize) -> Vec<Vec<LlamaToken>> {
        let with_model = self.draft.is_some() && self.spec.mode == Mode::Draft;
        let mut wants = vec![0usize; self.slots.len()];
        let mut found = vec![Vec::new(); self.slots.len()];
        let mut batch_left = (N_BATCH as usize).saturating_sub(to_generate);
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(a) = s.active.as_mut() else { continue };
            let Some(next) = a.next else { continue };
            let Some(sp) = a.spec.as_mut() else { continue };
            // Positions after the sampled token must stay inside the context; a draft of k
            // yields up to k + 1 tokens, no more than the request may still generate.
            let room = (self.ctx_size as usize)
                .saturating_sub(s.tokens.len() + 2)
                .min((a.max_tokens.saturating_sub(a.completion_tokens) as usize).saturating_sub(1))
                .min(batch_left);
            let want = if with_model {
                sp.adaptive
                    .allowance(to_generate, self.spec.verify_cost, self.draft_cost)
            } else {
                // Prompt lookup is cheap: look first, then verify as much of what was found as
                // pays for an agreement of that length. The history is the sequence's tokens
                // with its sampled one, pushed for the lookup only.
                s.tokens.push(next);
                sp.lookup.observe(&s.tokens);
                let at = s.tokens.len();
                let mut f = speculative::lookup(
                    &sp.earlier,
                    &s.tokens,
                    self.spec.ngram_min,
                    self.spec.ngram_max,
                    room.min(self.spec.draft_max),
                );
                s.tokens.pop();
                if f.draft.is_empty() {
                    continue;
                }
                let k = sp
                    .lookup
                    .allowance(&f, at, to_generate, self.spec.verify_cost);
                f.draft.truncate(k);
                found[i] = f.draft;
                found[i].len()
            }
            .min(room);
            batch_left -= want;
            wants[i] = want;
        }
        if !with_model {
            return found;
        }
        // Each sequence's text so far, with its sampled token.
        let history = |s: &Slot| {
            let mut h = s.tokens.clone();
            h.extend(s.active.as_ref().and_then(|a| a.next));
            h
        };
        let Some(d) = &mut self.draft else {
            return found;
        };
        let histories: Vec<(usize, Vec<LlamaToken>)> = (0..self.slots.len())
            .filter(|&i| wants[i] > 0)
            .map(|i| (i, history(&self.slots[i])))
            .collect();
        let asks: Vec<(usize, &[LlamaToken], usize)> = histories
            .iter()
            .map(|(i, h)| (*i, h.as_slice(), wants[*i]))
            .collect();
        let mut out = vec![Vec::new(); self.slots.len()];
        match d.propose(&asks) {
            Ok(drafts) => {
                for ((i, _), draft) in histories.iter().zip(drafts) {
                    out[*i] = draft;
                }
            }
            Err(e) => {
                tracing::warn!(model = %self.l.info.name, error = %e, "drafting failed");
                d.clear();
            }
        }
        out
    }

    /// Verifies slot `i`'s draft against the logits of the step's decode: draws the model's own
    /// token at each drafted position in turn while it agrees with the draft (see
    /// [`speculative::verify`]), streams every token drawn, and removes the rejected drafts
    /// from the KV cache.
    fn verify(&mut self, i: usize) {
        let Some((draft, base)) = self.slots[i].active.as_mut().and_then(|a| {
            let sp = a.spec.as_mut()?;
            Some((std::mem::take(&mut sp.draft), a.logits_at?))
        }) else {
            return;
        };
        let (_, accepted) = speculative::verify(&draft, |j| {
            let s = &mut self.slots[i];
            let a = s.active.as_mut()?;
            if j > 0 {
                // Draft token j - 1 was accepted: it is in the KV cache already.
                s.tokens.push(draft[j - 1]);
            }
            a.logits_at = Some(base + j as i32);
            self.sample(i);
            self.slots[i].active.as_mut()?.next
        });
        let m = &self.metrics;
        m.drafted_tokens.fetch_add(draft.len() as u64, Relaxed);
        m.accepted_tokens.fetch_add(accepted as u64, Relaxed);
        let s = &mut self.slots[i];
        if accepted < draft.len() {
            // The rejected drafts' cells; the token that replaced the first one is decoded in
            // the next step like any sampled token.
            let _ =
                self.ctx
                    .clear_kv_cache_seq(Some(s.seq as u32), Some(s.tokens.len() as u32), None);
        }
        if let Some(sp) = s.active.as_mut().and_then(|a| a.spec.as_mut()) {
            sp.adaptive.record(draft.len(), accepted);
            sp.lookup.record(draft.len(), accepted);
        }
    }

    /// Once the prompt of a request's first choice is computed (its logits are ready), the
    /// other choices copy its KV cache instead of computing the prompt again, and sample from
    /// the same logits; returns their slots.
    fn fan_out(&mut self, primary: usize) -> Vec<usize> {
        let Some(at) = self.slots[primary]
            .active
            .as_ref()
            .and_then(|a| a.logits_at)
        else {
            return Vec::new();
        };
        let followers: Vec<usize> = (0..self.slots.len())
            .filter(|&j| {
                self.slots[j].tokens.is_empty()
                    && self.slots[j]
                        .active
                        .as_ref()
                        .is_some_and(|a| a.follows == Some(primary))
            })
            .collect();
        let src = self.slots[primary].seq;
        let tokens = self.slots[primary].tokens.clone();
        for &j in &followers {
            // The whole sequence (p0 = p1 = none): with one KV stream per slot llama.cpp copies
            // whole streams only.
            if let Err(e) = self
                .ctx
                .copy_kv_cache_seq(src, self.slots[j].seq, None, None)
            {
                if let Some(a) = self.slots[j].active.take() {
                    let _ = a.events.send(Event::Failed(inference(e)));
                }
                continue;
            }
            let s = &mut self.slots[j];
            s.tokens.clone_from(&tokens);
            s.prefilled = tokens.len();
            if let Some(a) = s.active.as_mut() {
                a.logits_at = Some(at);
            }
        }
        followers
    }

    /// After a failed decode nothing in the cache can be trusted: fail every running request
    /// and empty every sequence.
    fn fail_all(&mut self, e: &llama_cpp_2::DecodeError) {
        tracing::error!(model = %self.l.info.name, error = %e, "decode failed");
        for i in 0..self.slots.len() {
            if let Some(a) = self.slots[i].active.take() {
                let _ = a.events.send(Event::Failed(inference(e)));
            }
            self.empty_slot(i);
        }
    }

    /// Samples the next token of slot `i` if its logits are ready, and streams it.
    fn sample(&mut self, i: usize) {
        let vocab = self.l.model.vocab();
        let s = &mut self.slots[i];
        let Some(a) = s.active.as_mut() else { return };
        let Some(at) = a.logits_at.take() else { return };
        let finish = |a: &mut Active, reason| {
            let _ = a.events.send(Event::Text {
                choice: a.choice,
                text: a.stream.finish(),
                logprobs: std::mem::take(&mut a.pending),
            });
            let _ = a.events.send(Event::Finished {
                choice: a.choice,
                reason,
                prompt_tokens: a.prompt_tokens(),
                completion_tokens: a.completion_tokens,
            });
        };
        if a.completion_tokens >= a.max_tokens || s.tokens.len() as u32 >= self.ctx_size {
            finish(a, FinishReason::Length);
            s.active = None;
            return;
        }
        let token = match pick(&self.ctx, at, a, &vocab) {
            Ok(t) => t,
            Err(e) => {
                let _ = a.events.send(Event::Failed(e));
                s.active = None;
                return;
            }
        };
        if vocab.is_eog(token) {
            finish(a, FinishReason::Stop);
            s.active = None;
            return;
        }
        a.completion_tokens += 1;
        let now = Instant::now();
        let m = &self.metrics;
        m.generated_tokens.fetch_add(1, Relaxed);
        match a.last_token_at {
            None => m.ttft.observe(now - a.arrived),
            Some(t) => m.itl.observe(now - t),
        }
        a.last_token_at = Some(now);
        let piece = vocab.token_to_piece(token, false, None);
        if let Some(c) = a.constraint.as_mut() {
            if let Err(e) = c.accept(token.0 as u32, &piece) {
                let _ = a.events.send(Event::Failed(e));
                s.active = None;
                return;
            }
        }
        match a.stream.feed(&piece) {
            Fed::Emit(t) => {
                if !t.is_empty() {
                    let event = Event::Text {
                        choice: a.choice,
                        text: t,
                        logprobs: std::mem::take(&mut a.pending),
                    };
                    if a.events.send(event).is_err() {
                        s.active = None;
                        m.cancelled.fetch_add(1, Relaxed);
                        return;
                    }
                }
                if a.completion_tokens >= a.max_tokens {
                    // Nothing more may be generated: end now instead of decoding the token.
                    finish(a, FinishReason::Length);
                    s.active = None;
                    return;
                }
                a.next = Some(token);
            }
            Fed::Stopped(t) => {
                let _ = a.events.send(Event::Text {
                    choice: a.choice,
                    text: t,
                    logprobs: std::mem::take(&mut a.pending),
                });
                let _ = a.events.send(Event::Finished {
                    choice: a.choice,
                    reason: FinishReason::Stop,
                    prompt_tokens: a.prompt_tokens(),
                    completion_tokens: a.completion_tokens,
                });
                s.active = None;
            }
        }
    }
}

/// Samples one token from the logits at batch index `at`: through the grammar's mask when a
/// constraint is active, with the log-probabilities recorded when asked.
fn pick(
    ctx: &LlamaContext<'_>,
    at: i32,
    a: &mut Active,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
) -> Result<LlamaToken, EngineError> {
    let mask = match a.constraint.as_mut() {
        Some(c) => c.mask()?,
        None => None,
    };
    let token = match mask {
        // `sample` also accepts the token into the sampler chain (penalties see it once).
        None => a.sampler.sample(ctx, at),
        Some(mask) => {
            let mut candidates = LlamaTokenDataArray::from_iter(ctx.candidates_ith(at), false);
            for d in &mut candidates.data {
                if !mask.is_allowed(d.id().0 as u32) {
                    d.set_logit(f32::NEG_INFINITY);
                }
            }
            candidates.apply_sampler(&mut a.sampler);
            let token = candidates
                .selected_token()
                .ok_or_else(|| inference("the sampler selected no token"))?;
            a.sampler.accept(token);
            token
        }
    };
    if let Some(top) = a.logprobs {
        a.pending
            .push(logprobs_of(ctx.get_logits_ith(at), token, top, vocab));
    }
    Ok(token)
}

/// The model's own log-probabilities at one position — from the raw logits, before logit_bias,
/// penalties, temperature, the top-k/top-p/min-p filters and any grammar — of the sampled token
/// and of the `top` most likely ones.
fn logprobs_of(
    logits: &[f32],
    token: LlamaToken,
    top: u8,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
) -> SampledLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    let entry = |id: usize| {
        let bytes = vocab.token_to_piece(LlamaToken(id as i32), true, None);
        TokenLogprob {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            logprob: (logits[id] - lse).min(0.0),
        }
    };
    // The `top` largest logits, kept sorted in a small vector (top ≤ 20).
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(usize::from(top) + 1);
    if top > 0 {
        for (id, &l) in logits.iter().enumerate() {
            if best.len() < usize::from(top) || l > best[best.len() - 1].0 {
                let at = best.partition_point(|&(b, _)| b >= l);
                best.insert(at, (l, id));
                best.truncate(usize::from(top));
            }
        }
    }
    SampledLogprob {
        sampled: entry(token.0.max(0) as usize),
        top: best.into_iter().map(|(_, id)| entry(id)).collect(),
    }
}

/// A loaded model and what the engine needs to know about it.
struct Loaded {
    info: ModelInfo,
    model: LlamaModel,
    /// The GGUF's own chat template (Jinja, rendered by minijinja), or why it cannot be used.
    jinja: Option<Result<ChatTemplate, (&'static str, String)>>,
    /// llama.cpp's built-in template, for a GGUF without one whose architecture fixes the
    /// format.
    builtin: Option<LlamaChatTemplate>,
    /// The format the template asks tool calls in.
    tool_format: Option<ToolFormat>,
    /// The template's thinking tags.
    reasoning: Option<ReasoningTags>,
    /// The BOS token's text: a template that writes it must not get a second one from the
    /// tokenizer.
    bos_text: String,
    /// The grammar compiler, built at the first constrained request.
    grammars: RefCell<Option<Grammars>>,
    /// The LoRA adapter of a `base+adapter` name (llama.cpp frees it with the model). In a
    /// `RefCell` because setting it on a context takes `&mut`, while contexts borrow `Loaded`.
    adapter: Option<std::cell::RefCell<llama_cpp_2::model::LlamaLoraAdapter>>,
    /// The draft model (its name and weights), checked to share this model's vocabulary.
    draft: Option<(String, LlamaModel)>,
}

impl Loaded {
    /// Applies this name's adapter, if it has one, to a context of its model.
    fn apply_adapter(&self, ctx: &mut LlamaContext<'_>) -> Result<(), EngineError> {
        let Some(adapter) = &self.adapter else {
            return Ok(());
        };
        ctx.lora_adapter_set(&mut adapter.borrow_mut(), 1.0)
            .map_err(|e| EngineError::Load {
                name: self.info.name.clone(),
                path: String::new(),
                reason: format!("cannot apply the LoRA adapter: {e}"),
            })
    }
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
    spec: &ModelSpec,
    cfg: &EngineConfig,
) -> Result<Loaded, EngineError> {
    let (name, path) = (&spec.name, &spec.path);
    let err = |reason: String| EngineError::Load {
        name: name.to_string(),
        path: path.display().to_string(),
        reason,
    };
    // llama.cpp asserts (aborting the process) on some malformed files, so every file is
    // validated in Rust first: magic, version, counts, lengths, types, offsets, alignment.
    inhouse_formats::gguf::open(path).map_err(|e| err(format!("not a valid GGUF file: {e}")))?;
    let params = LlamaModelParams::default().with_n_gpu_layers(cfg.gpu_layers);
    let mut model = LlamaModel::load_from_file(backend, path, &params)
        .map_err(|e| err(format!("llama.cpp could not load it ({e})")))?;
    let architecture = model
        .meta_val_str("general.architecture")
        .unwrap_or_else(|_| "unknown".into());
    let vocab = model.vocab();
    // A model may have no BOS or EOS (a BERT encoder has no EOS): llama.cpp answers -1 then, and
    // asking for the text of -1 throws a C++ exception, which aborts the process. No token, no
    // text.
    let n_vocab = model.n_vocab();
    let token_text = |t: LlamaToken| {
        if (0..n_vocab).contains(&t.0) {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        } else {
            String::new()
        }
    };
    let (bos_text, eos_text) = (token_text(vocab.bos()), token_text(vocab.eos()));
    let source = model
        .chat_template(None)
        .ok()
        .and_then(|t| t.to_string().ok());
    let (jinja, builtin, template_source) = match &source {
        Some(src) => {
            let compiled = ChatTemplate::new(src, &bos_text, &eos_text, cfg.template_limits)
                .map_err(|e| {
                    tracing::warn!(model = %name, code = e.code(), "the chat template is unusable");
                    (e.code(), e.to_string())
                });
            (Some(compiled), None, Some("gguf".to_string()))
        }
        None => match builtin_template(&architecture).map(|n| (LlamaChatTemplate::new(n), n)) {
            Some((Ok(t), n)) => (None, Some(t), Some(format!("llama.cpp built-in {n:?}"))),
            _ => (None, None, None),
        },
    };
    let tool_format = source.as_deref().and_then(inhouse_formats::tools::detect);
    let reasoning = source
        .as_deref()
        .and_then(inhouse_formats::tools::detect_reasoning);
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
        n_layers: model.n_layer(),
        loaded_at: now_unix(),
    };
    let adapter = match &spec.adapter {
        None => None,
        Some(a) => {
            inhouse_formats::gguf::open(a)
                .map_err(|e| err(format!("the adapter is not a valid GGUF file: {e}")))?;
            let lora = model
                .lora_adapter_init(a)
                .map_err(|e| err(format!("llama.cpp could not load the adapter ({e})")))?;
            Some(std::cell::RefCell::new(lora))
        }
    };
    let draft = match &spec.draft {
        None => None,
        Some(d) => {
            let derr = |reason: String| {
                err(format!(
                    "draft model {:?} ({}): {reason}",
                    d.name,
                    d.path.display()
                ))
            };
            inhouse_formats::gguf::open(&d.path)
                .map_err(|e| derr(format!("not a valid GGUF file: {e}")))?;
            let draft = LlamaModel::load_from_file(backend, &d.path, &params)
                .map_err(|e| derr(format!("llama.cpp could not load it ({e})")))?;
            check_same_vocabulary(name, &model, &d.name, &draft).map_err(err)?;
            Some((d.name.clone(), draft))
        }
    };
    Ok(Loaded {
        info,
        model,
        jinja,
        builtin,
        tool_format,
        reasoning,
        bos_text,
        grammars: RefCell::new(None),
        adapter,
        draft,
    })
}

/// Renders the prompt text, and says how the answer is to be read: chat messages through the
/// GGUF's own Jinja template (with the tools, where the request shows them), or llama.cpp's
/// built-in template for a model without one.
fn render(l: &Loaded, req: &GenerateRequest) -> Result<(String, OutputInfo), EngineError> {
    let messages = match &req.prompt {
        Prompt::Text(t) => return Ok((t.clone(), OutputInfo::default())),
        Prompt::Chat(messages) => messages,
    };
    let shown = req.tools.as_ref().filter(|t| t.choice != ToolChoice::None);
    let uses_tools = messages
        .iter()
        .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
    let template_error = |code: &'static str, message: String| EngineError::Template {
        model: l.info.name.clone(),
        code,
        message,
    };
    match (&l.jinja, &l.builtin) {
        (Some(Err((code, message))), _) => Err(template_error(code, message.clone())),
        (Some(Ok(t)), _) => {
            let tools = shown.map(|t| t.tools.as_slice()).unwrap_or_default();
            if (!tools.is_empty() || uses_tools) && !t.reads("tools") && !t.reads("tool_calls") {
                return Err(EngineError::ToolsUnsupported(l.info.name.clone()));
            }
            let text = t
                .render(&RenderInput {
                    messages,
                    tools,
                    add_generation_prompt: true,
                    enable_thinking: req.thinking,
                })
                .map_err(|e| template_error(e.code(), e.to_string()))?;
            let starts_in_reasoning = l
                .reasoning
                .as_ref()
                .is_some_and(|r| inhouse_formats::tools::starts_in_reasoning(&text, r));
            let output = OutputInfo {
                tool_format: shown.and(l.tool_format),
                reasoning: l.reasoning.clone(),
                starts_in_reasoning,
            };
            Ok((text, output))
        }
        (None, Some(tmpl)) => {
            if shown.is_some() || uses_tools {
                return Err(EngineError::ToolsUnsupported(l.info.name.clone()));
            }
            let msgs = messages
                .iter()
                .map(|ChatMessage { role, content, .. }| {
                    LlamaChatMessage::new(role.clone(), content.clone())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| EngineError::Inference(format!("message: {e}")))?;
            let text = l
                .model
                .apply_chat_template(tmpl, &msgs, true)
                .map_err(|e| {
                    let code = match e {
                        llama_cpp_2::ApplyChatTemplateError::FfiError(c) => c,
                        _ => -1,
                    };
                    template_error(
                        "template_error",
                        format!("llama.cpp's built-in template failed (code {code})"),
                    )
                })?;
            Ok((text, OutputInfo::default()))
        }
        (None, None) => Err(EngineError::NoChatTemplate(l.info.name.clone())),
    }
}

fn sampler(s: &Sampling, n_vocab: i32, logit_bias: &[(i32, f32)]) -> LlamaSampler {
    let mut chain = Vec::new();
    if !logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = logit_bias
            .iter()
            .map(|&(t, b)| LlamaLogitBias::new(LlamaToken(t), b))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
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
    // add_special: BOS where the model wants one, unless the template wrote it already (Gemma's
    // does); parse_special: the template's control tokens.
    let written = !l.bos_text.is_empty() && text.starts_with(&l.bos_text);
    l.model.vocab().tokenize(text.as_bytes(), !written, true)
}

fn embed(
    backend: &LlamaBackend,
    l: &Loaded,
    cfg: &EngineConfig,
    inputs: &[String],
) -> Result<Embeddings, EngineError> {
    let n_ctx = l.info.n_ctx;
    // An embedding model names its pooling (`{arch}.pooling_type`: mean, CLS, …, as
    // `inhouse-quantize import-hf` writes it), which llama.cpp applies when the context asks for
    // none in particular; a generative model names none and is pooled by mean.
    let own_pooling = l
        .model
        .meta_val_str(&format!("{}.pooling_type", l.info.architecture))
        .is_ok();
    let pooling = if own_pooling {
        LlamaPoolingType::Unspecified
    } else {
        LlamaPoolingType::Mean
    };
    // A separate embedding context; created per request because embedding calls are rare next
    // to chat, and it keeps the chat context's settings simple. Inputs are decoded together, as
    // many sequences at once as fit (`pack_embedding_batches`); one KV cache shared by the
    // sequences of a batch, so a long input can use all of it.
    let mut tokenized = Vec::with_capacity(inputs.len());
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
        tokenized.push(tokens);
    }
    let lens: Vec<usize> = tokenized.iter().map(Vec::len).collect();
    let batches = pack_embedding_batches(&lens, n_ctx as usize, EMBED_MAX_SEQS);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        // Always the same, a power of two: llama.cpp b11434 trips a ggml assertion
        // (`ggml_can_mul_mat`) decoding 3 sequences into a BERT context made for exactly 3,
        // while 2, 4 and 3-of-32 work (measured).
        .with_n_seq_max(EMBED_MAX_SEQS as u32)
        .with_kv_unified(true)
        .with_n_threads(cfg.threads as i32)
        .with_n_threads_batch(cfg.threads as i32)
        .with_embeddings(true)
        .with_pooling_type(pooling);
    let mut ctx = l
        .model
        .new_context(backend, params)
        .map_err(|e| EngineError::CannotEmbed(format!("{}: {e}", l.info.name)))?;
    l.apply_adapter(&mut ctx)?;
    let mut vectors = Vec::with_capacity(inputs.len());
    let total = lens.iter().sum::<usize>() as u32;
    for range in batches {
        ctx.clear_kv_cache();
        let n_tokens = lens[range.clone()].iter().sum::<usize>();
        let mut batch = LlamaBatch::new(n_tokens, range.len() as i32);
        // Every token is an output: pooling reads them all (llama.cpp would otherwise override
        // the flags itself, and with several sequences trips an assertion on the way).
        for (seq, tokens) in tokenized[range.clone()].iter().enumerate() {
            batch
                .add_sequence(tokens, seq as i32, true)
                .map_err(|e| EngineError::Inference(e.to_string()))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        for seq in 0..range.len() {
            let v = ctx
                .embeddings_seq_ith(seq as i32)
                .map_err(|_| EngineError::CannotEmbed(l.info.name.clone()))?;
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            vectors.push(if norm > 0.0 {
                v.iter().map(|x| x / norm).collect()
            } else {
                v.to_vec()
            });
        }
    }
    Ok(Embeddings {
        vectors,
        prompt_tokens: total,
    })
}

/// Most inputs of one embedding request decoded in one batch.
const EMBED_MAX_SEQS: usize = 32;

/// Consecutive groups of inputs (by token count) to decode together: each group holds at most
/// `max_tokens` tokens (the context, which one batch fills) and `max_seqs` inputs; an input is
/// never split (each is at most `max_tokens`, checked before).
fn pack_embedding_batches(
    lens: &[usize],
    max_tokens: usize,
    max_seqs: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &n) in lens.iter().enumerate() {
        if i > start && (tokens + n > max_tokens || i - start == max_seqs) {
            out.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += n;
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::pack_embedding_batches;

    #[test]
    fn embedding_inputs_pack_into_batches_by_tokens_and_count() {
        assert!(pack_embedding_batches(&[], 512, 32).is_empty());
        assert_eq!(pack_embedding_batches(&[10, 20, 30], 512, 32), vec![0..3]);
        // The context fills up: a new batch starts before the input that would overflow it.
        assert_eq!(
            pack_embedding_batches(&[300, 200, 100, 512, 1], 512, 32),
            vec![0..2, 2..3, 3..4, 4..5]
        );
        // At most max_seqs inputs a batch.
        assert_eq!(
            pack_embedding_batches(&[1; 5], 512, 2),
            vec![0..2, 2..4, 4..5]
        );
    }
}
