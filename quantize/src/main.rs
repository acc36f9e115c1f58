//! `inhouse-quantize`: command line of the model toolchain.
//!
//! Thin on purpose: it parses arguments, calls the library and maps errors to exit codes.
//! Exit codes: 0 success, 2 the file is not a valid GGUF model (or cannot be opened; clap also
//! uses 2 for usage errors, `prepare` for an invalid config, and `quantize`, `finetune` and
//! `eval` for bad input or parameters), 1 anything else (such as failing to write the report,
//! `prepare --on-error fail` meeting a bad input line, or llama.cpp failing). `eval --gate`
//! exits 0 whether the candidate is blessed or refused (the result says which), 2 for a bad
//! policy. The long commands
//! speak the progress protocol of `inhouse_formats::progress` on stdout.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use inhouse_formats::gguf::{self, GgufError};
use inhouse_formats::inspect;
use inhouse_formats::progress::{Format, Reporter, ToolError};
use inhouse_quantize::prepare::{self, Augment, Config, OnError, PrepareError};
use inhouse_quantize::{eval, finetune, gate, hf, quantize, synth, train};

/// Exit status for a file that is missing, unreadable or not a valid GGUF model.
const EXIT_BAD_FILE: u8 = 2;
/// Exit status for an invalid `prepare` config or option, like clap's usage errors.
const EXIT_USAGE: u8 = 2;

/// inhouse's model toolchain.
#[derive(Parser)]
#[command(name = "inhouse-quantize", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a GGUF model file and print its metadata (the tensor data is not read).
    Inspect {
        /// The GGUF file.
        path: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Turn documents (.txt, .md, .jsonl; folders recursively) into a cleaned, de-duplicated,
    /// anonymized train/eval set: DIR/train.jsonl, DIR/eval.jsonl and DIR/report.json.
    Prepare(PrepareArgs),
    /// Quantize (or convert) a GGUF model to another tensor type with llama.cpp.
    Quantize(QuantizeArgs),
    /// Fine-tune a GGUF model on JSONL data (text or chat): a LoRA adapter (--lora-rank) or
    /// every weight, loss on the assistant's answers, warmup + decay, evaluation with the best
    /// checkpoint kept, --resume with the optimizer state, and an optional evaluation gate.
    Finetune(FinetuneArgs),
    /// Perplexity on JSONL data, a counterfactual bias probe and a stereotype score
    /// (CrowS-Pairs style), for models side by side; with --gate, the evaluation gate: a
    /// candidate judged against a baseline under a policy, blessed or refused.
    Eval(EvalArgs),
    /// Convert a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)
    /// to a GGUF model llama.cpp loads: BERT encoders (sentence embeddings), Llama and Qwen2
    /// decoders.
    ImportHf(ImportHfArgs),
    /// Generate grounded question/answer conversations from documents with a teacher model:
    /// DIR/train.jsonl, DIR/eval.jsonl, DIR/chunks.jsonl and DIR/report.json.
    Synth(SynthArgs),
    /// Read one document on stdin (its type from --name's extension: .txt, .md, .csv, .log,
    /// .jsonl, .html), clean it as `prepare` does (and anonymise with --anonymize), and print
    /// {"format", "text", "pii"} as JSON on stdout. The daemon's knowledge collections run this.
    ExtractText {
        /// The document's file name (only its extension is used).
        #[arg(long)]
        name: String,
        /// Replace personal data (the built-in types of `prepare`).
        #[arg(long)]
        anonymize: bool,
    },
}

/// `import-hf --type` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OutTypeArg {
    F32,
    F16,
}

#[derive(clap::Args)]
struct ImportHfArgs {
    /// The checkpoint directory.
    dir: PathBuf,
    /// The GGUF file to write.
    #[arg(long, value_name = "FILE.gguf")]
    out: PathBuf,
    /// Type of the weight matrices (norms and biases stay F32).
    #[arg(long = "type", value_enum, default_value = "f16")]
    out_type: OutTypeArg,
    /// The model's name in the file [default: the directory's name].
    #[arg(long)]
    name: Option<String>,
    /// Progress output: text (stderr) or json (one object per line on stdout).
    #[arg(long, value_enum, default_value = "text")]
    progress: ProgressArg,
}

/// `--style` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StyleArg {
    Qa,
    Explain,
    Summary,
    Mix,
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Input files and folders (.txt, .md, .jsonl), read as `prepare` reads them.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// The teacher model.
    #[arg(long, value_name = "MODEL.gguf")]
    teacher: PathBuf,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Prompt overrides: a JSON object with any of the keys of the shipped
    /// quantize/data/synth_prompts.json (system, styles.qa|explain|summary, judge).
    #[arg(long, value_name = "FILE.json")]
    prompts: Option<PathBuf>,
    /// Seed examples (JSONL chat records): generated questions too close to theirs are dropped.
    #[arg(long, value_name = "FILE.jsonl")]
    seed_examples: Option<PathBuf>,
    /// Task style; `mix` takes qa, explain and summary in turn, chunk by chunk.
    #[arg(long, value_enum, default_value = "qa")]
    style: StyleArg,
    /// Tokens per chunk (the teacher's tokenizer).
    #[arg(long, default_value_t = 256)]
    chunk_tokens: usize,
    /// Tokens shared by consecutive chunks.
    #[arg(long, default_value_t = 32)]
    overlap: usize,
    /// Most question/answer pairs asked per chunk.
    #[arg(long, default_value_t = 3)]
    per_chunk: usize,
    /// Most samples kept in all.
    #[arg(long, value_name = "N")]
    max_samples: Option<usize>,
    /// Seed of the teacher's sampling and of the train/eval split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of samples in eval.jsonl.
    #[arg(long, default_value_t = 0.1)]
    eval_share: f64,
    /// The teacher's sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Most tokens generated per chunk.
    #[arg(long, default_value_t = 512)]
    max_tokens: u32,
    /// Chunks decoded together.
    #[arg(long, default_value_t = 4)]
    batch: u32,
    /// Put the chunk into each record as a system turn.
    #[arg(long)]
    with_context: bool,
    /// Least share of an answer's content words found in its chunk.
    #[arg(long, default_value_t = 0.5)]
    lexical_threshold: f64,
    /// Least P(yes) of the teacher asked whether the passage supports the answer.
    #[arg(long, default_value_t = 0.5)]
    judge_threshold: f64,
    /// Estimated Jaccard (word bigrams) from which a question is a near-duplicate.
    #[arg(long, default_value_t = 0.8)]
    near_dup_threshold: f64,
    /// ROUGE-L F1 from which a question is too close to a kept one.
    #[arg(long, default_value_t = 0.7)]
    rouge_threshold: f64,
    /// `prepare`'s JSON config for the documents (filters, PII patterns, names).
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    /// Print the chunk count, the expected samples and an estimated time from a short measured
    /// run; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    common: Common,
}

/// `--progress` values: human lines on stderr, or JSON lines on stdout.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ProgressArg {
    Text,
    Json,
}

/// Options every long command takes.
#[derive(clap::Args)]
struct Common {
    /// Progress output: text (stderr) or json (one object per line on stdout).
    #[arg(long, value_enum, default_value = "text")]
    progress: ProgressArg,
    /// Threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<u32>,
}

impl Common {
    fn reporter(&self) -> Reporter {
        Reporter::new(match self.progress {
            ProgressArg::Text => Format::Text,
            ProgressArg::Json => Format::Json,
        })
    }

    fn threads(&self) -> u32 {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
    }
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// The input model.
    input: PathBuf,
    /// The output model.
    output: PathBuf,
    /// Output type: Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16, BF16, F32, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
    /// Q3_K_S/M/L, Q4_K_S, Q5_K_S.
    #[arg(long = "type", value_name = "TYPE")]
    qtype: String,
    #[command(flatten)]
    common: Common,
}

/// `--optimizer` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OptimizerArg {
    Adamw,
    Sgd,
}

#[derive(clap::Args)]
struct FinetuneArgs {
    /// The base model (any GGUF of a llama, qwen2 or gemma3 architecture; quantized weights are
    /// dequantized to F32 for training).
    #[arg(long, value_name = "BASE.gguf")]
    model: PathBuf,
    /// Training data: JSONL of {"text"} or {"messages"} records.
    #[arg(long, value_name = "TRAIN.jsonl")]
    data: PathBuf,
    /// Validation data; without it, --val-share of the training samples.
    #[arg(long, value_name = "EVAL.jsonl")]
    eval: Option<PathBuf>,
    /// What to write: the LoRA adapter (with --lora-rank) or the fine-tuned model.
    #[arg(long, value_name = "OUT.gguf")]
    out: PathBuf,
    /// Train a LoRA adapter of this rank over the frozen base (16 to 32 is usual); without it,
    /// full fine-tuning of every block weight (small models only).
    #[arg(long, value_name = "R")]
    lora_rank: Option<usize>,
    /// LoRA alpha: the update is scaled by alpha / rank [default: 2 × rank].
    #[arg(long, value_name = "A", requires = "lora_rank")]
    lora_alpha: Option<f32>,
    /// The layers LoRA adapts, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        requires = "lora_rank",
        default_value = "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down"
    )]
    lora_targets: String,
    /// Count the loss on every token of chat records (system and user turns, template markup),
    /// not only on the assistant's answers.
    #[arg(long)]
    train_on_inputs: bool,
    /// Epochs in all (a resumed run counts those already done).
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Peak learning rate [default: 2e-4 with LoRA, 2e-5 full].
    #[arg(long)]
    lr: Option<f64>,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: OptimizerArg,
    /// Learning-rate decay after the warmup.
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: ScheduleArg,
    /// Share of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    /// Samples per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: u32,
    /// Also evaluate (and checkpoint) every N optimizer steps [default: after each epoch only].
    #[arg(long, value_name = "N")]
    eval_every: Option<u64>,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Seed of the data order and of the adapter's initialization.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Longest sample in tokens (longer records are cut into several).
    #[arg(long, default_value_t = 512)]
    ctx: u32,
    /// Share of the samples kept for validation when there is no --eval.
    #[arg(long, default_value_t = 0.1)]
    val_share: f64,
    /// Checkpoint directory [default: OUT.checkpoints]: state.json and the latest checkpoint
    /// (parameters, AdamW moments, the best parameters).
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint: same parameters, optimizer state, step and data order.
    #[arg(long)]
    resume: bool,
    /// Train on at most N samples.
    #[arg(long, value_name = "N")]
    max_windows: Option<usize>,
    /// After training, run the evaluation gate with this policy (see `eval --gate`): the base
    /// model is the baseline, the questions are --gate-questions (default --eval).
    #[arg(long, value_name = "POLICY.json")]
    gate: Option<PathBuf>,
    /// Held-out questions for the gate [default: --eval].
    #[arg(long, value_name = "EVAL.jsonl", requires = "gate")]
    gate_questions: Option<PathBuf>,
    /// The gate's bias pairs [default: the built-in quantize/data/bias_pairs.txt].
    #[arg(long, value_name = "FILE", requires = "gate")]
    gate_bias_pairs: Option<PathBuf>,
    /// The gate's stereotype pairs [default: the built-in quantize/data/stereotype_pairs.txt].
    #[arg(long, value_name = "FILE", requires = "gate")]
    gate_stereotype_pairs: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

/// `--schedule` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ScheduleArg {
    Cosine,
    Linear,
    Constant,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// A model to evaluate (repeat to compare several).
    #[arg(
        long = "model",
        value_name = "MODEL.gguf",
        required_unless_present = "gate",
        conflicts_with = "gate"
    )]
    models: Vec<PathBuf>,
    /// Evaluation data: JSONL of {"text"} or {"messages"} records.
    #[arg(
        long,
        value_name = "EVAL.jsonl",
        required_unless_present = "gate",
        conflicts_with = "gate"
    )]
    data: Option<PathBuf>,
    /// The evaluation gate: judge --candidate against --baseline under this policy (JSON:
    /// {"metrics": {"mc_accuracy": {"min": 0.5, "min_change": 0.0}, ...}}; see
    /// quantize/data/gate_policy.example.json). The result says blessed or refused; both exit 0.
    #[arg(
        long,
        value_name = "POLICY.json",
        requires_all = ["baseline", "candidate", "questions"]
    )]
    gate: Option<PathBuf>,
    /// The gate's baseline model (the current one).
    #[arg(long, value_name = "A.gguf", requires = "gate")]
    baseline: Option<PathBuf>,
    /// A LoRA adapter applied to the baseline.
    #[arg(long, value_name = "LORA.gguf", requires = "baseline")]
    baseline_adapter: Option<PathBuf>,
    /// The gate's candidate model (for a LoRA fine-tune: its base, with --candidate-adapter).
    #[arg(long, value_name = "B.gguf", requires = "gate")]
    candidate: Option<PathBuf>,
    /// A LoRA adapter applied to the candidate.
    #[arg(long, value_name = "LORA.gguf", requires = "candidate")]
    candidate_adapter: Option<PathBuf>,
    /// The gate's held-out questions: chat JSONL records ending with the reference answer
    /// (synth's eval.jsonl).
    #[arg(long, value_name = "EVAL.jsonl", requires = "gate")]
    questions: Option<PathBuf>,
    /// The gate's general-text regression set [default: the built-in
    /// quantize/data/general_text.txt].
    #[arg(long, value_name = "TEXT", requires = "gate")]
    general: Option<PathBuf>,
    /// Seed of the gate's draw of multiple-choice distractors.
    #[arg(long, default_value_t = 0, requires = "gate")]
    seed: u64,
    /// Window size for perplexity (the gate's general text too): a multiple of 256.
    #[arg(long, default_value_t = 256)]
    ctx: u32,
    /// Word list for the bias probe [default: the built-in quantize/data/bias_pairs.txt].
    #[arg(long, value_name = "FILE")]
    bias_pairs: Option<PathBuf>,
    /// Minimal pairs for the stereotype score, `[axis]` headers and `stereotypical |
    /// anti-stereotypical` lines [default: the built-in quantize/data/stereotype_pairs.txt].
    #[arg(long, value_name = "FILE")]
    stereotype_pairs: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long, value_name = "report.json")]
    out: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

/// Arguments of `prepare`. Flags override the config file, which overrides the defaults.
#[derive(clap::Args)]
struct PrepareArgs {
    /// Input files and folders.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// JSON config file: split, filters, custom PII patterns, names (see `prepare::config`).
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    /// Seed of the train/eval split [default: 0].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Expected share of documents in eval.jsonl [default: 0.1].
    #[arg(long, value_name = "F")]
    eval_share: Option<f64>,
    /// Estimated Jaccard similarity from which a document is a near-duplicate [default: 0.8].
    #[arg(long, value_name = "J")]
    near_dup_threshold: Option<f64>,
    /// Bad input: skip and count it, or stop with exit code 1 [default: skip].
    #[arg(long, value_enum)]
    on_error: Option<OnErrorArg>,
    /// Word lists of the bias report in report.json [default: the built-in
    /// quantize/data/bias_terms.txt].
    #[arg(long, value_name = "FILE")]
    bias_terms: Option<PathBuf>,
    /// Add records: `counterfactual` writes, after each kept record that names one side of a
    /// word pair (he/she, his/her, man/woman, names …), a copy with the words swapped, in the
    /// same split [default: none].
    #[arg(long, value_enum)]
    augment: Option<AugmentArg>,
    /// Word pairs for --augment counterfactual [default: the built-in
    /// quantize/data/counterfactual_pairs.txt].
    #[arg(long, value_name = "FILE")]
    counterfactual_pairs: Option<PathBuf>,
}

/// `--augment` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AugmentArg {
    None,
    Counterfactual,
}

/// `--on-error` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OnErrorArg {
    Skip,
    Fail,
}

fn main() -> ExitCode {
    // Before any thread or tensor operation: candle's element-wise pool spin-waits, which on a
    // two-core machine costs more than it gains (see the function's documentation).
    train::model::init_cpu_threads();
    let cli = Cli::parse();
    match cli.command {
        Command::Synth(a) => synth_cmd(a),
        Command::Inspect { path, json } => inspect_cmd(&path, json),
        Command::Prepare(args) => prepare_cmd(args),
        Command::ExtractText { name, anonymize } => extract_cmd(&name, anonymize),
        Command::Quantize(a) => {
            let reporter = a.common.reporter();
            let opts = quantize::Options {
                input: a.input,
                output: a.output,
                qtype: a.qtype,
                threads: a.common.threads(),
            };
            finish("quantize", reporter, quantize::run(&opts, reporter))
        }
        Command::ImportHf(a) => {
            let reporter = Reporter::new(match a.progress {
                ProgressArg::Text => Format::Text,
                ProgressArg::Json => Format::Json,
            });
            let opts = hf::Options {
                dir: a.dir,
                out: a.out,
                out_type: match a.out_type {
                    OutTypeArg::F32 => hf::OutType::F32,
                    OutTypeArg::F16 => hf::OutType::F16,
                },
                name: a.name,
            };
            finish("import-hf", reporter, hf::run(&opts, reporter))
        }
        Command::Finetune(a) => {
            let reporter = a.common.reporter();
            let lora = match a.lora_rank {
                Some(rank) => match train::model::Target::parse_list(&a.lora_targets) {
                    Ok(targets) => Some(train::model::LoraConfig {
                        rank,
                        alpha: a.lora_alpha.unwrap_or(2.0 * rank as f32),
                        targets,
                    }),
                    Err(e) => return finish("finetune", reporter, Err(e)),
                },
                None => None,
            };
            let opts = finetune::Options {
                model: a.model,
                data: a.data,
                eval: a.eval,
                out: a.out,
                epochs: a.epochs,
                lr: a.lr.unwrap_or(if lora.is_some() { 2e-4 } else { 2e-5 }),
                optimizer: match a.optimizer {
                    OptimizerArg::Adamw => train::optim::Method::AdamW,
                    OptimizerArg::Sgd => train::optim::Method::Sgd,
                },
                ctx: a.ctx,
                val_share: a.val_share,
                checkpoint_dir: a.checkpoint_dir,
                resume: a.resume,
                threads: a.common.threads(),
                max_windows: a.max_windows,
                lora,
                train_on_inputs: a.train_on_inputs,
                seed: a.seed,
                warmup_ratio: a.warmup_ratio,
                schedule: match a.schedule {
                    ScheduleArg::Cosine => train::optim::Decay::Cosine,
                    ScheduleArg::Linear => train::optim::Decay::Linear,
                    ScheduleArg::Constant => train::optim::Decay::Constant,
                },
                grad_accum: a.grad_accum,
                eval_every: a.eval_every,
                weight_decay: a.weight_decay,
                gate: a.gate,
                gate_questions: a.gate_questions,
                gate_bias_pairs: a.gate_bias_pairs,
                gate_stereotype_pairs: a.gate_stereotype_pairs,
            };
            finish("finetune", reporter, finetune::run(&opts, reporter))
        }
        Command::Eval(a) if a.gate.is_some() => gate_cmd(a),
        Command::Eval(a) => {
            let reporter = a.common.reporter();
            let opts = eval::Options {
                models: a.models,
                data: a.data.unwrap_or_default(),
                ctx: a.ctx,
                bias_pairs: a.bias_pairs,
                stereotype_pairs: a.stereotype_pairs,
                out: a.out,
                threads: a.common.threads(),
            };
            finish("eval", reporter, eval::run(&opts, reporter))
        }
    }
}

fn gate_cmd(a: EvalArgs) -> ExitCode {
    let reporter = a.common.reporter();
    let threads = a.common.threads();
    // clap's `requires` sees to these; an empty path fails as a missing file.
    let opts = gate::Options {
        policy: a.gate.unwrap_or_default(),
        baseline: gate::Subject {
            model: a.baseline.unwrap_or_default(),
            adapter: a.baseline_adapter,
        },
        candidate: gate::Subject {
            model: a.candidate.unwrap_or_default(),
            adapter: a.candidate_adapter,
        },
        questions: a.questions.unwrap_or_default(),
        general: a.general,
        ctx: a.ctx,
        seed: a.seed,
        bias_pairs: a.bias_pairs,
        stereotype_pairs: a.stereotype_pairs,
        out: a.out,
        threads,
    };
    finish("eval --gate", reporter, gate::run(&opts, reporter))
}

fn synth_cmd(a: SynthArgs) -> ExitCode {
    let reporter = a.common.reporter();
    let prepare = match a.config.as_deref().map(Config::load).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("inhouse-quantize: synth: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let opts = synth::Options {
        inputs: a.inputs,
        teacher: a.teacher,
        out: a.out,
        prompts: a.prompts,
        seed_examples: a.seed_examples,
        style: match a.style {
            StyleArg::Qa => synth::Style::Qa,
            StyleArg::Explain => synth::Style::Explain,
            StyleArg::Summary => synth::Style::Summary,
            StyleArg::Mix => synth::Style::Mix,
        },
        chunk_tokens: a.chunk_tokens,
        overlap: a.overlap,
        per_chunk: a.per_chunk,
        max_samples: a.max_samples,
        seed: a.seed,
        eval_share: a.eval_share,
        temperature: a.temperature,
        max_tokens: a.max_tokens,
        batch: a.batch,
        with_context: a.with_context,
        dry_run: a.dry_run,
        thresholds: synth::Thresholds {
            lexical_grounding: a.lexical_threshold,
            model_grounding: a.judge_threshold,
            near_duplicate: a.near_dup_threshold,
            rouge_l: a.rouge_threshold,
            ..Default::default()
        },
        threads: a.common.threads(),
        prepare,
    };
    finish("synth", reporter, synth::run(&opts, reporter))
}

/// Reports a long command's result, or its error on stderr with the matching exit status.
fn finish(
    command: &str,
    reporter: Reporter,
    result: Result<serde_json::Value, ToolError>,
) -> ExitCode {
    match result {
        Ok(summary) => {
            reporter.result(summary);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inhouse-quantize: {command}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn extract_cmd(name: &str, anonymize: bool) -> ExitCode {
    use std::io::{Read, Write};
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("extract-text: cannot read stdin: {e}");
        return ExitCode::from(EXIT_BAD_FILE);
    }
    match inhouse_quantize::extract::extract(name, &bytes, anonymize) {
        Ok(out) => {
            let json = serde_json::to_string(&out).expect("strings and counts serialize");
            let mut stdout = std::io::stdout().lock();
            if writeln!(stdout, "{json}")
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_BAD_FILE)
        }
    }
}

fn prepare_cmd(args: PrepareArgs) -> ExitCode {
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(config) => config.unwrap_or_default(),
        Err(e) => {
            eprintln!("inhouse-quantize: prepare: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = Config {
        seed: args.seed.unwrap_or(config.seed),
        eval_share: args.eval_share.unwrap_or(config.eval_share),
        near_dup_threshold: args.near_dup_threshold.unwrap_or(config.near_dup_threshold),
        on_error: args.on_error.map_or(config.on_error, |o| match o {
            OnErrorArg::Skip => OnError::Skip,
            OnErrorArg::Fail => OnError::Fail,
        }),
        bias_terms: args.bias_terms.or(config.bias_terms),
        augment: args.augment.map_or(config.augment, |a| match a {
            AugmentArg::None => Augment::None,
            AugmentArg::Counterfactual => Augment::Counterfactual,
        }),
        counterfactual_pairs: args.counterfactual_pairs.or(config.counterfactual_pairs),
        ..config
    };
    let options = prepare::Options {
        inputs: args.inputs,
        out: args.out,
        config,
    };
    match prepare::run(&options) {
        Ok(report) => {
            eprint!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inhouse-quantize: prepare: {e}");
            match e {
                PrepareError::Config(_) => ExitCode::from(EXIT_USAGE),
                PrepareError::Input(_) | PrepareError::Output { .. } => ExitCode::FAILURE,
            }
        }
    }
}

fn inspect_cmd(path: &Path, json: bool) -> ExitCode {
    let file = match gguf::open(path) {
        Ok(file) => file,
        Err(e) => {
            match e {
                // These already name the path.
                GgufError::Open { .. } | GgufError::NotAFile { .. } => {
                    eprintln!("inhouse-quantize: {e}");
                }
                _ => eprintln!("inhouse-quantize: {}: {e}", path.display()),
            }
            return ExitCode::from(EXIT_BAD_FILE);
        }
    };
    let report = if json {
        serde_json::to_string_pretty(&inspect::json_report(path, &file))
            .map(|mut s| {
                s.push('\n');
                s
            })
            .context("encoding the JSON report")
    } else {
        Ok(inspect::text_report(path, &file))
    };
    match report.and_then(|r| print(&r)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inhouse-quantize: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`inspect … | head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the report to stdout")
        }
        _ => Ok(()),
    }
}
