//! The training loop of `finetune`: LoRA adapters or full fine-tuning on the candle engine
//! ([`super::model`]), a masked loss ([`super::data`]), AdamW with a warmup + decay schedule,
//! gradient accumulation, evaluation during training with the best checkpoint kept, and
//! checkpoints that hold the optimizer state and the position in the data, so that `--resume`
//! continues the interrupted run exactly.
//!
//! - **Steps.** An optimizer step takes `grad_accum` samples (one sequence each, no padding);
//!   the step's loss is the mean negative log-likelihood over every counted (masked-in) token of
//!   those samples, so a long answer weighs by its tokens, as in TRL and axolotl.
//! - **Order.** Each epoch visits the training samples in [`epoch_order`]`(n, seed, epoch)`: the
//!   order of any epoch follows from the seed alone, so a resumed run skips the samples the
//!   interrupted one had consumed and sees the rest in the same order.
//! - **Evaluation.** Before training (step 0), every `eval_every` steps if asked, and after each
//!   epoch, the mean masked loss over the validation samples; the parameters at the lowest
//!   validation loss are the ones written out (without validation data: the last).
//! - **Checkpoints.** At each evaluation and each epoch's end, `ckpt-<step>/` gets the trained
//!   parameters, AdamW's moments and the best parameters (safetensors), then `state.json` is
//!   replaced (write + rename) to point at it, and the older checkpoint is removed: a kill at any
//!   moment leaves a complete checkpoint that `state.json` names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::data::{self, Sample};
use super::model::{masked_nll_sum, LoraConfig, Trainable, Transformer};
use super::optim::{epoch_order, Decay, Hyper, Method, Optimizer, Schedule};
use super::{bad, cf, failed};
use crate::finetune::read_records;
use crate::llama::{self, LoadMode, Model};
use inhouse_formats::progress::{eta, Phase, Progress, Reporter, ToolError};
use inhouse_formats::sign::sha256_file;

/// The largest context accepted (memory for training grows fast with it).
pub const MAX_CTX: u32 = 16_384;
/// The checkpoint directory's state file.
pub const STATE_FILE: &str = "state.json";
/// The version of `state.json` this code writes and reads.
const STATE_VERSION: u32 = 2;

/// Options of `finetune`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The base model.
    pub model: PathBuf,
    /// Training data (JSONL).
    pub data: PathBuf,
    /// Validation data (JSONL); without it, `val_share` of the training samples.
    pub eval: Option<PathBuf>,
    /// What to write: a LoRA adapter GGUF, or the fine-tuned model.
    pub out: PathBuf,
    /// Epochs in all (a resumed run counts the ones already done).
    pub epochs: u32,
    /// Peak learning rate.
    pub lr: f64,
    /// Optimizer.
    pub optimizer: Method,
    /// Longest sample in tokens (longer ones are cut into several).
    pub ctx: u32,
    /// Share of samples kept for validation when there is no `eval` file.
    pub val_share: f64,
    /// Where checkpoints go; default `OUT.checkpoints/`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in the checkpoint directory.
    pub resume: bool,
    /// CPU threads.
    pub threads: u32,
    /// At most this many training samples.
    pub max_windows: Option<usize>,
    /// LoRA (rank, alpha, targets); `None` trains every block weight (full fine-tuning).
    pub lora: Option<LoraConfig>,
    /// Count the loss on every token of chat records, not only the assistant's.
    pub train_on_inputs: bool,
    /// Seed of the data order and of the adapter's initialization.
    pub seed: u64,
    /// Share of the optimizer steps spent warming the learning rate up.
    pub warmup_ratio: f64,
    /// The decay after warmup.
    pub schedule: Decay,
    /// Samples per optimizer step.
    pub grad_accum: u32,
    /// Also evaluate (and checkpoint) every N optimizer steps.
    pub eval_every: Option<u64>,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Run the evaluation gate with this policy after training (base = baseline).
    pub gate: Option<PathBuf>,
    /// The gate's held-out questions (default: `eval`).
    pub gate_questions: Option<PathBuf>,
    /// The gate's bias pairs (default: the built-in file).
    pub gate_bias_pairs: Option<PathBuf>,
    /// The gate's stereotype pairs (default: the built-in file).
    pub gate_stereotype_pairs: Option<PathBuf>,
}

impl Options {
    /// Checks every option before anything is loaded.
    pub fn check(&self) -> Result<(), ToolError> {
        if !(16..=MAX_CTX).contains(&self.ctx) {
            return Err(bad(format!(
                "--ctx {} is out of range 16..={MAX_CTX}",
                self.ctx
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return Err(bad(format!(
                "--lr {} is out of range: it must be > 0 and < 1 (2e-4 is usual for LoRA, \
                 1e-5 to 1e-4 for full fine-tuning)",
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
        if !(0.0..=0.5).contains(&self.warmup_ratio) {
            return Err(bad(format!(
                "--warmup-ratio {} is out of range 0..=0.5",
                self.warmup_ratio
            )));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return Err(bad(format!(
                "--weight-decay {} is out of range 0..1",
                self.weight_decay
            )));
        }
        if self.grad_accum == 0 || self.grad_accum > 4096 {
            return Err(bad(format!(
                "--grad-accum {} is out of range 1..=4096",
                self.grad_accum
            )));
        }
        if self.eval_every == Some(0) {
            return Err(bad("--eval-every must be at least 1"));
        }
        if self.threads == 0 {
            return Err(bad("--threads must be at least 1"));
        }
        if self.max_windows == Some(0) {
            return Err(bad("--max-windows must be at least 1"));
        }
        if let Some(l) = &self.lora {
            l.check()?;
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
        if self.gate.is_some() {
            if self.gate_questions.is_none() && self.eval.is_none() {
                return Err(bad(
                    "--gate needs held-out questions: --gate-questions or --eval (e.g. synth's \
                     eval.jsonl)",
                ));
            }
            for p in self.gate.iter().chain(self.gate_questions.as_ref()) {
                if !p.is_file() {
                    return Err(bad(format!("{}: no such file", p.display())));
                }
            }
        }
        Ok(())
    }

    /// The checkpoint directory.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint_dir.clone().unwrap_or_else(|| {
            let mut d = self.out.as_os_str().to_owned();
            d.push(".checkpoints");
            PathBuf::from(d)
        })
    }

    /// What a run is: the options that must not change across `--resume` (the rest, such as
    /// the epochs in all or the threads, may).
    fn identity(&self, base_sha: &str, data_sha: &str, eval_sha: Option<&str>) -> Value {
        json!({
            "base_sha256": base_sha,
            "data_sha256": data_sha,
            "eval_sha256": eval_sha,
            "lora": self.lora.as_ref().map(lora_json),
            "train_on_inputs": self.train_on_inputs,
            "seed": self.seed,
            "ctx": self.ctx,
            "grad_accum": self.grad_accum,
            "optimizer": self.optimizer.name(),
            "lr": self.lr,
            "schedule": self.schedule.name(),
            "warmup_ratio": self.warmup_ratio,
            "weight_decay": self.weight_decay,
            "val_share": self.val_share,
            "max_windows": self.max_windows,
            "eval_every": self.eval_every,
        })
    }
}

fn lora_json(l: &LoraConfig) -> Value {
    json!({
        "rank": l.rank,
        "alpha": l.alpha,
        "targets": l.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
    })
}

/// One point of the training curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainPoint {
    /// Optimizer step (1-based).
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// The step's loss (nats per counted token).
    pub loss: f64,
    /// The learning rate of the step.
    pub lr: f64,
}

/// One point of the validation curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalPoint {
    /// Optimizer steps done when it was measured (0: before training).
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Mean validation loss (nats per counted token).
    pub loss: f64,
}

/// `state.json`: where the run stands, and which checkpoint holds its tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// What the run is (see [`Options::identity`]); `--resume` refuses another.
    pub identity: Value,
    /// The folder (inside the checkpoint directory) with `params`, `optim` and `best`.
    pub checkpoint: String,
    /// Optimizer steps done.
    pub step: u64,
    /// The epoch in progress (0-based) and the samples of it already consumed.
    pub epoch: u32,
    /// Samples of `epoch` consumed.
    pub consumed: usize,
    /// Counted tokens trained on so far.
    pub tokens_trained: u64,
    /// Training curve so far.
    pub train: Vec<TrainPoint>,
    /// Validation curve so far.
    pub eval: Vec<EvalPoint>,
    /// The best validation point so far.
    pub best: Option<EvalPoint>,
}

/// Reads `state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<State, ToolError> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| {
        bad(format!(
            "--resume: {}: {e} (no checkpoint to resume from)",
            p.display()
        ))
    })?;
    let s: State = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "--resume: {}: {e} (a checkpoint of an older inhouse-quantize cannot be resumed: \
             start afresh)",
            p.display()
        ))
    })?;
    if s.version != STATE_VERSION {
        return Err(bad(format!(
            "--resume: {} has version {}, this tool reads {STATE_VERSION}",
            p.display(),
            s.version
        )));
    }
    Ok(s)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ToolError> {
    let tmp = path.with_extension("tmp");
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    r.map_err(|e| failed(format!("{}: {e}", path.display())))
}

fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<(), ToolError> {
    candle_core::safetensors::save(map, path).map_err(cf)
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>, ToolError> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| bad(format!("--resume: {}: {e}", path.display())))
}

fn snapshot(params: &[(String, Var)]) -> Result<HashMap<String, Tensor>, ToolError> {
    params
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy().map_err(cf)?)))
        .collect()
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn counted(s: &Sample) -> usize {
    s.mask.iter().skip(1).filter(|&&m| m).count()
}

/// The summed loss of one sample as a scalar tensor in the graph.
fn sample_nll(logits: &Tensor, s: &Sample) -> candle_core::Result<Tensor> {
    masked_nll_sum(logits, &s.tokens, &s.mask).map(|(t, _)| t)
}

/// Mean loss per counted token over `samples`, without a graph.
fn evaluate(model: &Transformer, samples: &[Sample]) -> Result<f64, ToolError> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for s in samples {
        let logits = model.forward(&s.tokens).map_err(cf)?.detach();
        let nll = sample_nll(&logits, s)
            .and_then(|t| t.to_dtype(DType::F64)?.to_scalar::<f64>())
            .map_err(cf)?;
        sum += nll;
        n += counted(s);
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// Runs `finetune`; returns the result summary (see the module documentation).
pub fn run(opts: &Options, reporter: Reporter) -> Result<Value, ToolError> {
    let run_start = Instant::now();
    opts.check()?;
    // A file that is not a valid GGUF model is bad input (exit 2), found before llama.cpp or
    // candle reads it.
    crate::quantize::open_model(&opts.model)?;
    if opts.threads > 0 {
        // The matrix kernels run on rayon's global pool; a second call (a test running two
        // trainings in one process) keeps the first pool, which is harmless.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads as usize)
            .build_global();
    }
    let sha = |p: &Path| {
        sha256_file(p)
            .map(|(hex, _)| hex)
            .map_err(|e| bad(format!("{}: {e}", p.display())))
    };
    let base_sha = sha(&opts.model)?;
    let data_sha = sha(&opts.data)?;
    let eval_sha = opts.eval.as_deref().map(sha).transpose()?;
    let identity = opts.identity(&base_sha, &data_sha, eval_sha.as_deref());
    let dir = opts.checkpoint_dir();
    let state = if opts.resume {
        let s = read_state(&dir)?;
        if s.identity != identity {
            let differs: Vec<String> = identity
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| s.identity.get(k.as_str()) != Some(v))
                .map(|(k, _)| k.clone())
                .collect();
            return Err(bad(format!(
                "--resume: the checkpoint in {} is of another run (it differs in: {}); resume \
                 with the same model, data and options, or start afresh without --resume",
                dir.display(),
                differs.join(", ")
            )));
        }
        Some(s)
    } else {
        None
    };
    std::fs::create_dir_all(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| failed(format!("{}: {e}", dir.display())))?;

    // 1. Data, tokenized with llama.cpp (the serving tokenizer) and masked.
    llama::init().map_err(|e| failed(e.to_string()))?;
    let tok_model =
        Model::load(&opts.model, LoadMode::Mapped).map_err(|e| failed(e.to_string()))?;
    let template = data::chat_format_of(&opts.model)?;
    let ctx = opts.ctx as usize;
    let records = read_records(&opts.data)?;
    if records.is_empty() {
        return Err(bad(format!("{}: no records", opts.data.display())));
    }
    let enc = data::encode(
        &tok_model,
        template.as_ref(),
        &records,
        opts.train_on_inputs,
        ctx,
    )?;
    let mut train = enc.samples;
    let mut val = match &opts.eval {
        Some(p) => {
            let r = read_records(p)?;
            data::encode(&tok_model, template.as_ref(), &r, opts.train_on_inputs, ctx)?.samples
        }
        None => {
            let mut n_val = (train.len() as f64 * opts.val_share).round() as usize;
            if opts.val_share > 0.0 && n_val == 0 && train.len() >= 2 {
                n_val = 1;
            }
            n_val = n_val.min(train.len().saturating_sub(1));
            train.split_off(train.len() - n_val)
        }
    };
    drop(tok_model);
    if let Some(m) = opts.max_windows {
        train.truncate(m);
    }
    val.retain(|s| counted(s) > 0);
    if train.is_empty() {
        return Err(bad(format!(
            "{}: no training sample has a token to learn (chat records need an assistant \
             answer; or pass --train-on-inputs)",
            opts.data.display()
        )));
    }
    if val.is_empty() {
        reporter.log("no validation samples: the last parameters are written, not the best");
    }
    let counted_per_epoch: u64 = train.iter().map(|s| counted(s) as u64).sum();
    let accum = opts.grad_accum as usize;
    let steps_per_epoch = train.len().div_ceil(accum) as u64;
    let total_steps = steps_per_epoch * u64::from(opts.epochs);
    let schedule = Schedule {
        peak: opts.lr,
        warmup: (total_steps as f64 * opts.warmup_ratio).round() as u64,
        total: total_steps,
        decay: opts.schedule,
        min_ratio: 0.0,
    };

    // 2. The model and its trainable parameters.
    let load_start = Instant::now();
    let trainable = match &opts.lora {
        Some(l) => Trainable::Lora(l.clone()),
        None => Trainable::Full,
    };
    let model = Transformer::load(&opts.model, &trainable, opts.seed)?;
    let params = model.params();
    let n_trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    reporter.log(&format!(
        "{} fine-tuning: {} trainable parameters, {} training samples ({} counted tokens per \
         epoch), {} validation samples, {} steps of {} samples, loaded in {:.1} s",
        if opts.lora.is_some() { "LoRA" } else { "full" },
        n_trainable,
        train.len(),
        counted_per_epoch,
        val.len(),
        total_steps,
        accum,
        load_start.elapsed().as_secs_f64()
    ));
    let hyper = Hyper {
        weight_decay: opts.weight_decay,
        ..Hyper::default()
    };
    let mut opt = Optimizer::new(opts.optimizer, hyper, params.clone());

    // 3. Where the run starts.
    let mut st = match state {
        Some(s) => {
            let ck = dir.join(&s.checkpoint);
            let saved = load_tensors(&ck.join("params.safetensors"))?;
            model
                .set_params(&saved)
                .map_err(|e| bad(format!("--resume: {e}")))?;
            let moments = if ck.join("optim.safetensors").is_file() {
                load_tensors(&ck.join("optim.safetensors"))?
            } else {
                HashMap::new()
            };
            opt.restore(moments, s.step)
                .map_err(|e| bad(format!("--resume: {e}")))?;
            reporter.log(&format!(
                "resuming at step {} (epoch {}, {} samples into it) with the optimizer state of \
                 the interrupted run",
                s.step,
                s.epoch + 1,
                s.consumed
            ));
            s
        }
        None => State {
            version: STATE_VERSION,
            identity: identity.clone(),
            checkpoint: String::new(),
            step: 0,
            epoch: 0,
            consumed: 0,
            tokens_trained: 0,
            train: Vec::new(),
            eval: Vec::new(),
            best: None,
        },
    };
    let mut best_params: Option<HashMap<String, Tensor>> = match &st.best {
        Some(_) if !st.checkpoint.is_empty() => {
            let p = dir.join(&st.checkpoint).join("best.safetensors");
            p.is_file().then(|| load_tensors(&p)).transpose()?
        }
        _ => None,
    };

    let epoch_of = |step: u64| step as f64 / steps_per_epoch as f64;
    let eval_and_checkpoint = |st: &mut State,
                               opt: &Optimizer,
                               best_params: &mut Option<HashMap<String, Tensor>>,
                               epoch: u32,
                               consumed: usize|
     -> Result<(), ToolError> {
        if !val.is_empty() {
            let loss = evaluate(&model, &val)?;
            let point = EvalPoint {
                step: st.step,
                epoch: epoch_of(st.step),
                loss,
            };
            let mut p = Progress::new(Phase::Eval, st.step as f64 / total_steps.max(1) as f64);
            p.step = Some(st.step);
            p.steps = Some(total_steps);
            p.epoch = Some(epoch + 1);
            p.epochs = Some(opts.epochs);
            p.eval_loss = Some(loss);
            reporter.progress(&p);
            if st.best.as_ref().is_none_or(|b| loss < b.loss) && st.step > 0 {
                st.best = Some(point.clone());
                *best_params = Some(snapshot(opt.params())?);
            }
            st.eval.push(point);
        }
        if st.step == 0 {
            return Ok(());
        }
        st.epoch = epoch;
        st.consumed = consumed;
        let name = format!("ckpt-{}", st.step);
        let ck = dir.join(&name);
        let _ = std::fs::remove_dir_all(&ck);
        std::fs::create_dir_all(&ck).map_err(|e| failed(format!("{}: {e}", ck.display())))?;
        save_tensors(&snapshot(opt.params())?, &ck.join("params.safetensors"))?;
        save_tensors(&opt.state(), &ck.join("optim.safetensors"))?;
        if let Some(b) = best_params.as_ref() {
            save_tensors(b, &ck.join("best.safetensors"))?;
        }
        let old = std::mem::replace(&mut st.checkpoint, name);
        let bytes = serde_json::to_vec_pretty(&*st).map_err(|e| failed(e.to_string()))?;
        write_atomic(&dir.join(STATE_FILE), &bytes)?;
        if !old.is_empty() && old != st.checkpoint {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
        // The epoch (1-based) the checkpoint ends or is inside of.
        let in_epoch = if consumed == 0 { epoch } else { epoch + 1 };
        reporter.checkpoint(in_epoch, &ck);
        Ok(())
    };

    // 4. Train.
    let resumed = st.step > 0;
    if !resumed {
        eval_and_checkpoint(&mut st, &opt, &mut best_params, 0, 0)?;
    }
    let eval_before = st.eval.first().map(|p| p.loss);
    let train_start = Instant::now();
    let mut tokens_seen_run = 0u64;
    let start_epoch = st.epoch;
    let first_step = st.step;
    let mut consumed = st.consumed;
    for epoch in start_epoch..opts.epochs {
        let order = epoch_order(train.len(), opts.seed, epoch);
        if epoch != start_epoch {
            consumed = 0;
        }
        while consumed < train.len() {
            let group: Vec<&Sample> = order[consumed..(consumed + accum).min(train.len())]
                .iter()
                .map(|&i| &train[i])
                .collect();
            let n_counted: usize = group.iter().map(|s| counted(s)).sum();
            let mut grads: HashMap<String, Tensor> = HashMap::new();
            let mut loss_sum = 0.0f64;
            for s in &group {
                if counted(s) == 0 {
                    continue;
                }
                let logits = model.forward(&s.tokens).map_err(cf)?;
                let nll = sample_nll(&logits, s).map_err(cf)?;
                loss_sum += nll
                    .to_dtype(DType::F64)
                    .and_then(|t| t.to_scalar::<f64>())
                    .map_err(cf)?;
                let scaled = (nll / n_counted.max(1) as f64).map_err(cf)?;
                let g = scaled.backward().map_err(cf)?;
                for (name, var) in opt.params() {
                    if let Some(gt) = g.get(var.as_tensor()) {
                        let acc = match grads.remove(name) {
                            Some(a) => (a + gt).map_err(cf)?,
                            None => gt.clone(),
                        };
                        grads.insert(name.clone(), acc);
                    }
                }
                tokens_seen_run += s.tokens.len() as u64;
            }
            let loss = loss_sum / n_counted.max(1) as f64;
            if !loss.is_finite() {
                return Err(failed(format!(
                    "the training loss diverged at step {} (try a smaller --lr)",
                    st.step + 1
                )));
            }
            let lr = schedule.lr(st.step + 1);
            opt.step(&grads, lr).map_err(cf)?;
            st.step += 1;
            consumed += group.len();
            st.tokens_trained += n_counted as u64;
            st.train.push(TrainPoint {
                step: st.step,
                epoch: epoch_of(st.step),
                loss,
                lr,
            });
            let elapsed = train_start.elapsed().as_secs_f64();
            let tps = tokens_seen_run as f64 / elapsed.max(1e-9);
            let mut p = Progress::new(Phase::Train, st.step as f64 / total_steps as f64);
            p.epoch = Some(epoch + 1);
            p.epochs = Some(opts.epochs);
            p.step = Some(st.step);
            p.steps = Some(total_steps);
            p.loss = Some(loss);
            p.eval_loss = st.eval.last().map(|e| e.loss);
            p.tokens_per_s = Some(tps);
            p.eta_s = eta(
                elapsed,
                (st.step - first_step) as f64,
                (total_steps - first_step) as f64,
            );
            reporter.progress(&p);
            let end_of_epoch = consumed >= train.len();
            let periodic = opts.eval_every.is_some_and(|n| st.step % n == 0);
            if end_of_epoch {
                eval_and_checkpoint(&mut st, &opt, &mut best_params, epoch + 1, 0)?;
            } else if periodic {
                eval_and_checkpoint(&mut st, &opt, &mut best_params, epoch, consumed)?;
            }
        }
    }
    let train_seconds = train_start.elapsed().as_secs_f64();

    // 5. Output: the best parameters (or the last ones without validation data).
    if let Some(b) = &best_params {
        model.set_params(b)?;
    }
    match &opts.lora {
        Some(_) => model.write_adapter(&opts.model, &opts.out)?,
        None => model.write_full(&opts.model, &opts.out)?,
    }
    let out_abs = opts.out.canonicalize().unwrap_or_else(|_| opts.out.clone());
    let arch = model.arch_name();
    drop(model);

    // 6. The gate: the base model against the output, on held-out questions.
    let gate = match &opts.gate {
        Some(policy) => {
            let lora = opts.lora.is_some();
            let g = crate::gate::Options {
                policy: policy.clone(),
                baseline: crate::gate::Subject {
                    model: opts.model.clone(),
                    adapter: None,
                },
                candidate: crate::gate::Subject {
                    model: if lora {
                        opts.model.clone()
                    } else {
                        out_abs.clone()
                    },
                    adapter: lora.then(|| out_abs.clone()),
                },
                questions: opts
                    .gate_questions
                    .clone()
                    .or_else(|| opts.eval.clone())
                    .unwrap_or_default(),
                general: None,
                ctx: 256,
                seed: opts.seed,
                bias_pairs: opts.gate_bias_pairs.clone(),
                stereotype_pairs: opts.gate_stereotype_pairs.clone(),
                out: Some(dir.join("gate.json")),
                threads: opts.threads,
            };
            let r = crate::gate::run(&g, reporter)?;
            reporter.log(&format!(
                "gate: {}",
                if r["blessed"] == Value::Bool(true) {
                    "blessed"
                } else {
                    "refused"
                }
            ));
            Some(r)
        }
        None => None,
    };
    Ok(json!({
        "command": "finetune",
        "method": if opts.lora.is_some() { "lora" } else { "full" },
        "output": out_abs,
        "out": out_abs,
        "base": opts.model.canonicalize().unwrap_or_else(|_| opts.model.clone()),
        "base_model": opts.model.canonicalize().unwrap_or_else(|_| opts.model.clone()),
        "architecture": arch,
        "gate": gate,
        "checkpoint_dir": dir,
        "lora": opts.lora.as_ref().map(lora_json),
        "masked": !opts.train_on_inputs,
        "loss_positions": if opts.train_on_inputs { "all" } else { "assistant" },
        "trainable_parameters": n_trainable,
        "optimizer": opts.optimizer.name(),
        "lr": opts.lr,
        "schedule": opts.schedule.name(),
        "warmup_steps": schedule.warmup,
        "grad_accum": opts.grad_accum,
        "seed": opts.seed,
        "ctx": opts.ctx,
        "epochs": opts.epochs,
        "steps": st.step,
        "resumed": resumed,
        "train_samples": train.len(),
        "val_samples": val.len(),
        "tokens_trained": st.tokens_trained,
        "eval_loss_before": eval_before,
        "eval_loss_after": st.eval.last().map(|p| p.loss),
        "curve": {"train": st.train, "eval": st.eval},
        "best": st.best.as_ref().map(|b| json!({"step": b.step, "eval_loss": b.loss})),
        "tokens_per_second": if train_seconds > 0.0 { Some(tokens_seen_run as f64 / train_seconds) } else { None },
        "tokens_per_s": if train_seconds > 0.0 { Some(tokens_seen_run as f64 / train_seconds) } else { None },
        "peak_rss_bytes": peak_rss_bytes(),
        "seconds": run_start.elapsed().as_secs_f64(),
    }))
}
