//! `finetune`: full fine-tuning of a GGUF model on a JSONL corpus with llama.cpp's training API
//! (`llama_opt_init` / `llama_opt_epoch`), with per-epoch checkpoints and resume.
//!
//! The steps, and why each is so:
//!
//! 1. **F32 base.** llama.cpp trains only F32 tensors and skips others silently, so a quantized
//!    (or F16) base is first converted with `llama_model_quantize` (ftype `ALL_F32`,
//!    `allow_requantize`) into the checkpoint directory as `base-f32.gguf`. Dequantizing does not
//!    restore what quantization lost: the fine-tuned model starts from the quantized weights.
//! 2. **Load for training**: without mmap (mapped weights are read-only), F32 K/V, flash
//!    attention off, `n_ctx = n_batch = n_ubatch = --ctx`. The context must be a multiple of 256
//!    (llama.cpp pads it) and is refused otherwise *before* llama.cpp is called: with
//!    `n_ubatch != n_ctx` the backward graph overflows and ggml aborts the process.
//! 3. **Data.** `{"text"}` records are tokenized as they are (BOS as the model asks, EOS after
//!    each record); `{"messages"}` records are rendered with the model's own chat template
//!    (`llama_chat_apply_template`) and tokenized with special tokens parsed. All records are
//!    concatenated and cut into windows of `ctx + 1` tokens with a stride of `ctx` (inputs are
//!    the first `ctx` tokens, labels the next token at each position), in file order. The
//!    validation windows are the `--eval` file's, or else the last `--val-share` of the windows.
//!    `--max-windows` caps the training windows (for quick runs).
//! 4. **Loss.** `llama_opt_epoch` fills the labels itself from the dataset (`labels_sparse`,
//!    one token id per position, every position one-hot) and computes the cross-entropy over
//!    *every* position of the window: there is no mask and no way to give a position zero
//!    weight through this API (an id outside the vocabulary trips a `GGML_ASSERT`). So for chat
//!    data the loss covers the system and user turns and the template's markup as well as the
//!    assistant's answers; assistant-only loss would need our own training loop over
//!    `ggml_opt_*` and llama.cpp's private graph, which b11434 does not expose.
//! 5. **Optimizer.** AdamW or SGD with a constant learning rate (ggml's default betas and
//!    epsilon, no weight decay), given through the `get_opt_pars` callback; one optimizer step
//!    per window. Token embeddings are never trained (an upstream FIXME), and with tied output
//!    weights neither is the output layer.
//! 6. **Checkpoints.** After each epoch the model is saved with `llama_model_save_to_file`,
//!    which drops most metadata (chat template, tokenizer details, the original context length:
//!    it even records the training context as the model's). The file is therefore rewritten with
//!    [`inhouse_formats::gguf_write`]: every key-value pair of the F32 base, in order, and each tensor's
//!    bytes from the saved file (from the base for any tensor the saver left out). `state.json`
//!    records the epochs done, the losses and the options; the previous checkpoint is then
//!    removed. `--resume` loads the last checkpoint and continues with the next epoch. The
//!    optimizer state (AdamW's moments and step count) lives in llama.cpp's private
//!    `ggml_opt_context`, which no public function reads or writes, so it cannot be saved: a
//!    resumed AdamW run starts its moments from zero.
//! 7. **Output.** The last checkpoint is copied to `OUT.partial` and renamed to `OUT`: an F32
//!    GGUF with the base's metadata, servable as it is or after `quantize`.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::llama::{self, Context, ContextOptions, Dataset, LoadMode, Model, Optimizer, CTX_ALIGN};
use crate::quantize;
use inhouse_formats::gguf::{self, GgmlType, GgufFile};
use inhouse_formats::gguf_write::GgufWriter;
use inhouse_formats::progress::{eta, Phase, Progress, Reporter, ToolError};

/// The largest context accepted (memory for training grows fast with it).
pub const MAX_CTX: u32 = 16_384;
/// The checkpoint directory's state file.
pub const STATE_FILE: &str = "state.json";
/// The F32 copy of a quantized base, in the checkpoint directory.
pub const BASE_F32_FILE: &str = "base-f32.gguf";

/// Options of `finetune`.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// The base model.
    pub model: PathBuf,
    /// Training data (JSONL).
    pub data: PathBuf,
    /// Validation data (JSONL); without it, `val_share` of the training windows.
    pub eval: Option<PathBuf>,
    /// The fine-tuned model to write.
    pub out: PathBuf,
    /// Epochs to train in all (a resumed run counts the ones already done).
    pub epochs: u32,
    /// Learning rate.
    pub lr: f64,
    /// Optimizer.
    #[serde(serialize_with = "ser_optimizer")]
    pub optimizer: Optimizer,
    /// Context size: tokens per window.
    pub ctx: u32,
    /// Share of windows kept for validation when there is no `eval` file.
    pub val_share: f64,
    /// Where checkpoints go; default `OUT.checkpoints/`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the last checkpoint in the checkpoint directory.
    pub resume: bool,
    /// Threads.
    pub threads: u32,
    /// At most this many training windows.
    pub max_windows: Option<usize>,
}

fn ser_optimizer<S: serde::Serializer>(o: &Optimizer, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(optimizer_name(*o))
}

/// The command-line name of an optimizer.
pub fn optimizer_name(o: Optimizer) -> &'static str {
    match o {
        Optimizer::AdamW => "adamw",
        Optimizer::Sgd => "sgd",
    }
}

fn bad(msg: impl Into<String>) -> ToolError {
    ToolError::BadInput(msg.into())
}

fn failed(msg: impl Into<String>) -> ToolError {
    ToolError::Failed(msg.into())
}

/// Checks a context size the way llama.cpp's training needs it.
pub fn check_ctx(ctx: u32) -> Result<(), ToolError> {
    if ctx < CTX_ALIGN {
        return Err(bad(format!(
            "--ctx {ctx} is too small: at least {CTX_ALIGN} tokens"
        )));
    }
    if !ctx.is_multiple_of(CTX_ALIGN) {
        return Err(bad(format!(
            "--ctx {ctx} is not a multiple of {CTX_ALIGN} (llama.cpp pads contexts to 256 \
             tokens, and training needs the window to fill the context exactly)"
        )));
    }
    if ctx > MAX_CTX {
        return Err(bad(format!("--ctx {ctx} is larger than {MAX_CTX}")));
    }
    Ok(())
}

impl Options {
    /// Checks every option before anything is loaded.
    pub fn check(&self) -> Result<(), ToolError> {
        check_ctx(self.ctx)?;
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return Err(bad(format!(
                "--lr {} is out of range: it must be > 0 and < 1 (1e-5 to 1e-4 is usual)",
                self.lr
            )));
        }
        if self.epochs == 0 || self.epochs > 1000 {
            return Err(bad(format!(
                "--epochs {} is out of range 1..=1000",
                self.epochs
            )));
        }
        if !(0.0..=0.5).contains(&self.val_share) {
            return Err(bad(format!(
                "--val-share {} is out of range 0..=0.5",
                self.val_share
            )));
        }
        if self.threads == 0 {
            return Err(bad("--threads must be at least 1"));
        }
        if self.max_windows == Some(0) {
            return Err(bad("--max-windows must be at least 1"));
        }
        for p in std::iter::once(&self.data).chain(self.eval.as_ref()) {
            if !p.is_file() {
                return Err(bad(format!("{}: no such file", p.display())));
            }
        }
        if self.out.file_name().is_none() || self.out.is_dir() {
            return Err(bad(format!(
                "--out {}: not a file name",
                self.out.display()
            )));
        }
        Ok(())
    }

    fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint_dir.clone().unwrap_or_else(|| {
            let mut d = self.out.as_os_str().to_owned();
            d.push(".checkpoints");
            PathBuf::from(d)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// One JSONL record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// `{"text": …}`.
    Text(String),
    /// `{"messages": [{"role", "content"}, …]}`, as (role, content).
    Messages(Vec<(String, String)>),
}

/// Reads `{"text"}` and `{"messages"}` records (what `prepare` writes); blank lines are skipped.
pub fn read_records(path: &Path) -> Result<Vec<Record>, ToolError> {
    let file = File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.map_err(|e| bad(format!("{}: {e}", at())))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("{}: {e}", at())))?;
        if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
            out.push(Record::Text(t.to_string()));
        } else if let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) {
            let mut conv = Vec::with_capacity(msgs.len());
            for m in msgs {
                let role = m.get("role").and_then(|r| r.as_str());
                let content = m.get("content").and_then(|c| c.as_str());
                match (role, content) {
                    (Some(r), Some(c)) => conv.push((r.to_string(), c.to_string())),
                    _ => {
                        return Err(bad(format!(
                            "{}: each message needs string \"role\" and \"content\"",
                            at()
                        )))
                    }
                }
            }
            if conv.is_empty() {
                return Err(bad(format!("{}: \"messages\" is empty", at())));
            }
            out.push(Record::Messages(conv));
        } else {
            return Err(bad(format!(
                "{}: expected a {{\"text\"}} or {{\"messages\"}} record",
                at()
            )));
        }
    }
    Ok(out)
}

/// Tokenizes records into one stream (see the module documentation, step 3).
pub fn tokenize_records(model: &Model, records: &[Record]) -> Result<Vec<i32>, ToolError> {
    let mut template = None;
    let mut tokens = Vec::new();
    for r in records {
        match r {
            Record::Text(t) => {
                tokens.extend(
                    model
                        .tokenize(t, true, false)
                        .map_err(|e| failed(e.to_string()))?,
                );
                tokens.extend(model.eos());
            }
            Record::Messages(m) => {
                if template.is_none() {
                    template = Some(model.chat_template().ok_or_else(|| {
                        bad("the data has chat records but the model has no chat template")
                    })?);
                }
                let tmpl = template.as_deref().unwrap_or_default();
                let text =
                    llama::apply_chat_template(tmpl, m, false).map_err(|e| bad(e.to_string()))?;
                tokens.extend(
                    model
                        .tokenize(&text, true, true)
                        .map_err(|e| failed(e.to_string()))?,
                );
            }
        }
    }
    Ok(tokens)
}

/// Windows of `n_ctx + 1` tokens with stride `n_ctx`: every token after the first is a label
/// exactly once. A tail shorter than a window is dropped.
pub fn windows(tokens: &[i32], n_ctx: usize) -> Vec<&[i32]> {
    if n_ctx == 0 || tokens.len() < n_ctx + 1 {
        return Vec::new();
    }
    (0..=(tokens.len() - n_ctx - 1) / n_ctx)
        .map(|i| &tokens[i * n_ctx..i * n_ctx + n_ctx + 1])
        .collect()
}

// ---------------------------------------------------------------------------------------------
// State and checkpoints

/// Losses and speed of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochStats {
    /// The epoch (1-based).
    pub epoch: u32,
    /// Mean training loss over the epoch (nats per token).
    pub train_loss: f64,
    /// Validation loss after the epoch, if there is a validation set.
    pub val_loss: Option<f64>,
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// Seconds for the epoch (training and validation).
    pub seconds: f64,
}

/// `state.json` in the checkpoint directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Epochs completed.
    pub epochs_completed: u32,
    /// The checkpoint written after the last completed epoch.
    pub checkpoint: PathBuf,
    /// The base model as given.
    pub base_model: PathBuf,
    /// The F32 file whose metadata checkpoints carry.
    pub base_f32: PathBuf,
    /// The context size (a resumed run must use the same).
    pub ctx: u32,
    /// Validation loss before any training.
    pub eval_loss_before: Option<f64>,
    /// Per-epoch statistics so far.
    pub epochs: Vec<EpochStats>,
    /// The options of the run that wrote this state.
    pub options: serde_json::Value,
}

fn read_state(dir: &Path) -> Result<State, ToolError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        bad(format!(
            "--resume: cannot read {}: {e} (no checkpoint to resume from)",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))
}

fn write_state(dir: &Path, state: &State) -> Result<(), ToolError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_string_pretty(state).map_err(|e| failed(e.to_string()))?;
    std::fs::write(&tmp, text)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| failed(format!("{}: {e}", path.display())))
}

fn read_range(file: &mut File, (start, end): (u64, u64)) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(end - start).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// Saves `model` as a checkpoint at `dest` carrying the metadata of `kv_source` (see the module
/// documentation, step 6).
pub fn write_checkpoint(model: &Model, kv_source: &Path, dest: &Path) -> Result<(), ToolError> {
    let mut raw = dest.as_os_str().to_owned();
    raw.push(".saved");
    let raw = PathBuf::from(raw);
    model.save(&raw).map_err(|e| failed(e.to_string()))?;
    let result = rewrite_with_metadata(&raw, kv_source, dest);
    let _ = std::fs::remove_file(&raw);
    result
}

fn rewrite_with_metadata(saved: &Path, kv_source: &Path, dest: &Path) -> Result<(), ToolError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| failed(format!("{p}: {e}"))
    };
    let saved_info = gguf::open(saved).map_err(|e| failed(format!("checkpoint: {e}")))?;
    let base_info = gguf::open(kv_source).map_err(|e| failed(format!("base: {e}")))?;
    let mut saved_file = File::open(saved).map_err(io(saved))?;
    let mut base_file = File::open(kv_source).map_err(io(kv_source))?;
    let mut w = GgufWriter::new();
    w.copy_kvs_from(&base_info)
        .map_err(|e| failed(e.to_string()))?;
    for t in base_info.tensors() {
        let trained = saved_info
            .tensors()
            .iter()
            .find(|s| s.name == t.name && s.dims == t.dims && s.ggml_type == t.ggml_type);
        let bytes =
            match trained {
                Some(s) => read_range(&mut saved_file, saved_info.tensor_data_range(s))
                    .map_err(io(saved))?,
                None => read_range(&mut base_file, base_info.tensor_data_range(t))
                    .map_err(io(kv_source))?,
            };
        w.add_tensor_raw(&t.name, &t.dims, t.ggml_type, bytes)
            .map_err(|e| failed(e.to_string()))?;
    }
    w.write_to(dest).map_err(|e| failed(e.to_string()))
}

fn is_all_f32(file: &GgufFile) -> bool {
    file.tensors().iter().all(|t| t.ggml_type == GgmlType::F32)
}

// ---------------------------------------------------------------------------------------------
// The run

/// Shared between the step callback and the run.
struct Tracker {
    reporter: Reporter,
    /// Work units (windows) per epoch: training plus validation.
    per_epoch: u64,
    /// All units of the run, from epoch 1.
    total: u64,
    /// Units done before this process started (resume) and before this phase.
    base_done: u64,
    /// Units done by this process, before this phase.
    run_done: u64,
    /// When this process started working.
    run_start: Instant,
    phase_start: Instant,
    n_ctx: u64,
    prev_mean: f64,
}

impl Tracker {
    fn step(&mut self, phase: Phase, epoch: Option<(u32, u32)>, ev: llama::StepEvent) {
        let s = ev.step as f64;
        let loss = if ev.step <= 1 {
            ev.mean_loss
        } else {
            s * ev.mean_loss - (s - 1.0) * self.prev_mean
        };
        self.prev_mean = ev.mean_loss;
        let done_run = self.run_done + ev.step;
        let done = self.base_done + ev.step;
        let mut p = Progress::new(phase, done as f64 / self.total.max(1) as f64);
        if let Some((e, n)) = epoch {
            p.epoch = Some(e);
            p.epochs = Some(n);
        }
        p.step = Some(ev.step);
        p.steps = Some(ev.steps);
        p.loss = Some(loss);
        let phase_s = self.phase_start.elapsed().as_secs_f64();
        p.tokens_per_s = Some(ev.step as f64 * self.n_ctx as f64 / phase_s.max(1e-9));
        p.eta_s = eta(
            self.run_start.elapsed().as_secs_f64(),
            done_run as f64,
            (done_run + self.total.saturating_sub(done)) as f64,
        );
        self.reporter.progress(&p);
    }
}

/// Runs one pass and reports each step.
fn pass(
    ctx: &mut Context<'_>,
    ds: &Dataset,
    train: bool,
    epoch: Option<(u32, u32)>,
    tracker: &Rc<RefCell<Tracker>>,
) -> Result<(f64, f64), ToolError> {
    {
        let mut t = tracker.borrow_mut();
        t.phase_start = Instant::now();
        t.prev_mean = 0.0;
    }
    let phase = if train { Phase::Train } else { Phase::Eval };
    let cb_tracker = Rc::clone(tracker);
    let loss = ctx
        .opt_epoch(ds, train, move |ev| {
            cb_tracker.borrow_mut().step(phase, epoch, ev)
        })
        .map_err(|e| failed(e.to_string()))?;
    let mut t = tracker.borrow_mut();
    let secs = t.phase_start.elapsed().as_secs_f64();
    t.run_done += ds.len() as u64;
    t.base_done += ds.len() as u64;
    Ok((loss, ds.len() as f64 * t.n_ctx as f64 / secs.max(1e-9)))
}

/// Runs `finetune`; returns the result summary.
pub fn run(opts: &Options, reporter: Reporter) -> Result<serde_json::Value, ToolError> {
    let run_start = Instant::now();
    opts.check()?;
    let base_info = quantize::open_model(&opts.model)?;
    let records = read_records(&opts.data)?;
    let eval_records = opts.eval.as_deref().map(read_records).transpose()?;
    if records.is_empty() {
        return Err(bad(format!("{}: no records", opts.data.display())));
    }
    let dir = opts.checkpoint_dir();
    let base_abs = opts
        .model
        .canonicalize()
        .unwrap_or_else(|_| opts.model.clone());
    let state = if opts.resume {
        let s = read_state(&dir)?;
        if s.ctx != opts.ctx {
            return Err(bad(format!(
                "--resume: the checkpoint was trained with --ctx {}, not {}",
                s.ctx, opts.ctx
            )));
        }
        if s.base_model != base_abs {
            return Err(bad(format!(
                "--resume: the checkpoint is of {}, not {}",
                s.base_model.display(),
                base_abs.display()
            )));
        }
        quantize::open_model(&s.checkpoint)?;
        Some(s)
    } else {
        None
    };
    std::fs::create_dir_all(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| failed(format!("{}: {e}", dir.display())))?;

    // 1. The F32 base (its metadata also goes into every checkpoint).
    let base_f32 = if is_all_f32(&base_info) {
        base_abs.clone()
    } else {
        let f32_path = dir.join(BASE_F32_FILE);
        let reuse = state.is_some() && gguf::open(&f32_path).is_ok_and(|f| is_all_f32(&f));
        if !reuse {
            reporter.log(&format!(
                "converting {} ({}) to F32 for training",
                opts.model.display(),
                base_info.file_type_name().unwrap_or("mixed types")
            ));
            reporter.progress(&Progress::new(Phase::Convert, 0.0));
            quantize::quantize_to(
                &opts.model,
                &f32_path,
                quantize::FTYPE_ALL_F32,
                opts.threads,
            )?;
        }
        f32_path
    };
    let start_path = state
        .as_ref()
        .map_or(base_f32.clone(), |s| s.checkpoint.clone());
    let done_epochs = state.as_ref().map_or(0, |s| s.epochs_completed);
    if let Some(s) = &state {
        reporter.log(&format!(
            "resuming after epoch {} from {} (optimizer state starts afresh: llama.cpp cannot \
             save it)",
            s.epochs_completed,
            s.checkpoint.display()
        ));
        let now = serde_json::to_value(opts).unwrap_or_default();
        for key in ["data", "eval", "max_windows", "val_share"] {
            if s.options.get(key) != now.get(key) {
                reporter.log(&format!(
                    "warning: --resume with a different {key} than the interrupted run \
                     ({} then, {} now): the epochs will not have seen the same windows",
                    s.options.get(key).unwrap_or(&serde_json::Value::Null),
                    now.get(key).unwrap_or(&serde_json::Value::Null),
                ));
            }
        }
    }

    // 2. Model, data, context.
    let model = Model::load(&start_path, LoadMode::Training).map_err(|e| failed(e.to_string()))?;
    if opts.ctx > model.n_ctx_train() && model.n_ctx_train() > 0 {
        reporter.log(&format!(
            "warning: --ctx {} is beyond the model's training context of {}",
            opts.ctx,
            model.n_ctx_train()
        ));
    }
    let n_ctx = opts.ctx as usize;
    let tokens = tokenize_records(&model, &records)?;
    let all = windows(&tokens, n_ctx);
    if all.is_empty() {
        return Err(bad(format!(
            "{} holds {} tokens; one window needs {} (make --ctx smaller or add data)",
            opts.data.display(),
            tokens.len(),
            n_ctx + 1
        )));
    }
    let eval_tokens = match &eval_records {
        Some(r) => tokenize_records(&model, r)?,
        None => Vec::new(),
    };
    let (mut train_w, val_w): (Vec<&[i32]>, Vec<&[i32]>) = if opts.eval.is_some() {
        let v = windows(&eval_tokens, n_ctx);
        if v.is_empty() {
            return Err(bad(format!(
                "--eval {} holds {} tokens; one window needs {}",
                opts.eval.as_deref().unwrap_or(Path::new("")).display(),
                eval_tokens.len(),
                n_ctx + 1
            )));
        }
        (all, v)
    } else {
        let mut n_val = (all.len() as f64 * opts.val_share).round() as usize;
        if opts.val_share > 0.0 && n_val == 0 && all.len() >= 2 {
            n_val = 1;
        }
        n_val = n_val.min(all.len() - 1);
        let (t, v) = all.split_at(all.len() - n_val);
        (t.to_vec(), v.to_vec())
    };
    if let Some(m) = opts.max_windows {
        train_w.truncate(m);
    }
    if val_w.is_empty() {
        reporter.log("no validation windows: validation loss is not reported");
    }
    let mut ctx = Context::new(
        &model,
        ContextOptions {
            n_ctx: opts.ctx,
            threads: opts.threads,
            training: true,
        },
    )
    .map_err(|e| failed(e.to_string()))?;
    ctx.opt_init(opts.optimizer, opts.lr as f32)
        .map_err(|e| failed(e.to_string()))?;
    let train_ds = Dataset::new(&train_w, opts.ctx).map_err(|e| failed(e.to_string()))?;
    let val_ds = if val_w.is_empty() {
        None
    } else {
        Some(Dataset::new(&val_w, opts.ctx).map_err(|e| failed(e.to_string()))?)
    };

    let (n_train, n_val) = (train_w.len() as u64, val_w.len() as u64);
    let per_epoch = n_train + n_val;
    let before_units = if state.is_none() { n_val } else { 0 };
    let tracker = Rc::new(RefCell::new(Tracker {
        reporter,
        per_epoch,
        total: per_epoch * u64::from(opts.epochs) + before_units,
        base_done: per_epoch * u64::from(done_epochs),
        run_done: 0,
        run_start: Instant::now(),
        phase_start: Instant::now(),
        n_ctx: n_ctx as u64,
        prev_mean: 0.0,
    }));

    // 3. Validation loss before training (a resumed run keeps the first run's).
    let eval_loss_before = match (&state, &val_ds) {
        (Some(s), _) => s.eval_loss_before,
        (None, Some(v)) => Some(pass(&mut ctx, v, false, None, &tracker)?.0),
        (None, None) => None,
    };
    if state.is_some() {
        // The before-training validation was done by the first run.
        let mut t = tracker.borrow_mut();
        t.total = t.per_epoch * u64::from(opts.epochs);
    }

    // 4. Epochs.
    let mut stats = state.as_ref().map_or_else(Vec::new, |s| s.epochs.clone());
    let mut checkpoint = state.as_ref().map(|s| s.checkpoint.clone());
    let mut train_tps = Vec::new();
    let options_json = serde_json::to_value(opts).unwrap_or_default();
    for epoch in done_epochs + 1..=opts.epochs {
        let t0 = Instant::now();
        let e = Some((epoch, opts.epochs));
        let (train_loss, tps) = pass(&mut ctx, &train_ds, true, e, &tracker)?;
        train_tps.push(tps);
        let val_loss = match &val_ds {
            Some(v) => Some(pass(&mut ctx, v, false, e, &tracker)?.0),
            None => None,
        };
        if !train_loss.is_finite() {
            return Err(failed(format!(
                "the training loss diverged in epoch {epoch} (try a smaller --lr)"
            )));
        }
        stats.push(EpochStats {
            epoch,
            train_loss,
            val_loss,
            tokens_per_s: tps,
            seconds: t0.elapsed().as_secs_f64(),
        });
        let path = dir.join(format!("epoch-{epoch}.gguf"));
        write_checkpoint(&model, &base_f32, &path)?;
        write_state(
            &dir,
            &State {
                version: 1,
                epochs_completed: epoch,
                checkpoint: path.clone(),
                base_model: base_abs.clone(),
                base_f32: base_f32.clone(),
                ctx: opts.ctx,
                eval_loss_before,
                epochs: stats.clone(),
                options: options_json.clone(),
            },
        )?;
        if let Some(old) = checkpoint.replace(path.clone()) {
            if old != path {
                let _ = std::fs::remove_file(old);
            }
        }
        tracker.borrow().reporter.checkpoint(epoch, &path);
    }
    drop(ctx);
    drop(model);

    // 5. Output.
    let last = checkpoint.ok_or_else(|| failed("no checkpoint was written"))?;
    let mut partial = opts.out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::copy(&last, &partial)
        .and_then(|_| File::open(&partial)?.sync_all())
        .and_then(|()| std::fs::rename(&partial, &opts.out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            failed(format!("{}: {e}", opts.out.display()))
        })?;
    let out_abs = opts.out.canonicalize().unwrap_or_else(|_| opts.out.clone());
    let eval_loss_after = stats.last().and_then(|s| s.val_loss);
    let mean_tps = if train_tps.is_empty() {
        None
    } else {
        Some(train_tps.iter().sum::<f64>() / train_tps.len() as f64)
    };
    Ok(serde_json::json!({
        "command": "finetune",
        "output": out_abs,
        "base_model": base_abs,
        "checkpoint_dir": dir,
        "resumed_after_epoch": state.as_ref().map(|s| s.epochs_completed),
        "ctx": opts.ctx,
        "optimizer": optimizer_name(opts.optimizer),
        "lr": opts.lr,
        "train_windows": n_train,
        "val_windows": n_val,
        "train_tokens_per_epoch": n_train * n_ctx as u64,
        "loss_positions": "all",
        "eval_loss_before": eval_loss_before,
        "eval_loss_after": eval_loss_after,
        "epochs": stats,
        "tokens_per_s": mean_tps,
        "seconds": run_start.elapsed().as_secs_f64(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_by_one_token() {
        let t: Vec<i32> = (0..10).collect();
        let w = windows(&t, 4);
        assert_eq!(w, vec![&t[0..5], &t[4..9]]);
        assert!(windows(&t[..4], 4).is_empty());
    }

    #[test]
    fn ctx_rules() {
        assert!(check_ctx(256).is_ok());
        assert!(check_ctx(512).is_ok());
        assert!(check_ctx(128).is_err());
        assert!(check_ctx(300).is_err());
    }
}
