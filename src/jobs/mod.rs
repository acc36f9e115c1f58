//! Toolchain jobs: data preparation, fine-tuning, quantizing and evaluation, run by the daemon
//! as child processes of `inhouse-quantize` at a lower priority, so that a crash or an abort in
//! ggml during training never takes serving down.
//!
//! The life of a job:
//! - **Data** arrives first (`POST /admin/jobs/data`): the client streams a file, the daemon
//!   stores it under `state-dir/jobs/datasets/ID/` (mode 0600, SHA-256 recorded) and answers an
//!   id ([`data`]). The daemon never opens a path a user names.
//! - **Submit** (`POST /admin/jobs`, [`submit`]): the request is checked into a [`JobSpec`] (kind, models
//!   resolved to files in the store or the config, datasets by id, typed options, output name),
//!   stored as a `queued` row ([`crate::storage::JobRow`]) with its audit event, and the dataset
//!   is moved into the job's own folder `state-dir/jobs/work/ID/data/`: a dataset serves one job.
//! - **Run** ([`runner`]): when a slot is free (`[jobs] max-concurrent`), `inhouse-quantize` runs
//!   under `nice` with the command line of its kind ([`args`]); its `--progress json` lines
//!   update the row (throttled), its last stderr lines are the reason of a failure
//!   ([`process`]).
//! - **Finish**: a finetune or quantize output is imported into the model store with its
//!   provenance (base model and dataset digests, options, evaluation), so it can be served at
//!   once; a prepare's train/eval sets become new datasets; an eval's report is the result.
//! - **Cancel** (`DELETE /admin/jobs/ID`, [`process`]): SIGTERM, SIGKILL after a grace period,
//!   `cancelled`.
//! - **Restart**: jobs found `running` at start-up (the daemon crashed or stopped) are resumed
//!   when they can be (a finetune with a checkpoint reruns with `--resume`) or marked `failed`
//!   with the reason; `queued` ones are queued again. A leftover process of the old daemon is
//!   killed first.
//!
//! Training data at rest: it is stored in clear, readable only by the daemon's user, because
//! the toolchain reads it as a plain file; instead of encrypting it, the daemon deletes a job's
//! data (and every working file) when the job ends, unless `[jobs] keep-data = true`. Job rows
//! and the audit log hold ids, digests, names, options and numbers, never the data's text.

mod args;
pub mod data;
mod process;
pub mod runner;
mod submit;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

pub use process::toolchain_path;
pub use runner::JobRunner;

/// Why a job request was refused or a job could not be handled; mapped to HTTP in
/// [`crate::api::error`].
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Not one of the four kinds.
    #[error("unknown job kind {0:?}: use prepare, finetune, quantize, eval or synth")]
    UnknownKind(String),
    /// A field the kind needs is missing.
    #[error("a {kind} job needs \"{field}\"")]
    Missing {
        /// The job kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field or option has a bad value, or does not apply to the kind.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (`options.epochs`, …).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No model by that name in the store or the config.
    #[error("model {0:?} does not exist (neither in the store nor in the configuration)")]
    UnknownModel(String),
    /// No dataset by that id.
    #[error("dataset {0:?} does not exist: upload it first (POST /admin/jobs/data); each dataset serves one job")]
    UnknownDataset(String),
    /// No job by that id.
    #[error("job {0} does not exist")]
    NotFound(i64),
    /// The job has already ended.
    #[error("job {id} has already ended ({state})")]
    Ended {
        /// Job id.
        id: i64,
        /// Its final state.
        state: &'static str,
    },
    /// The output name is taken.
    #[error("model {0:?} already exists; choose another output_name or remove it first")]
    OutputExists(String),
    /// A dataset upload over `[jobs] max-data-bytes`.
    #[error("the dataset exceeds the {0}-byte limit ([jobs] max-data-bytes)")]
    DataTooLarge(u64),
    /// The toolchain binary is missing.
    #[error("the toolchain binary {0} is missing or not executable; install inhouse-quantize next to inhoused or set [jobs] toolchain-binary")]
    Toolchain(String),
    /// The daemon is stopping.
    #[error("the daemon is shutting down; submit the job again after it restarts")]
    ShuttingDown,
    /// Disk trouble under `state-dir/jobs`.
    #[error("jobs: {0}")]
    Io(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
}

impl JobError {
    fn invalid(field: &str, message: impl Into<String>) -> JobError {
        JobError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// What the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// `inhouse-quantize prepare`: documents → cleaned train/eval JSONL.
    Prepare,
    /// `inhouse-quantize finetune`: a model + train JSONL → a new model.
    Finetune,
    /// `inhouse-quantize quantize`: a model → the same model at another quantization.
    Quantize,
    /// `inhouse-quantize eval`: one or two models on eval JSONL → a report.
    Eval,
    /// `inhouse-quantize synth`: a teacher model + documents → grounded Q&A train/eval JSONL.
    Synth,
}

impl JobKind {
    /// The name used in the API, the table and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Prepare => "prepare",
            JobKind::Finetune => "finetune",
            JobKind::Quantize => "quantize",
            JobKind::Eval => "eval",
            JobKind::Synth => "synth",
        }
    }

    fn parse(s: &str) -> Result<JobKind, JobError> {
        [
            JobKind::Prepare,
            JobKind::Finetune,
            JobKind::Quantize,
            JobKind::Eval,
            JobKind::Synth,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| JobError::UnknownKind(s.to_string()))
    }
}

/// The body of `POST /admin/jobs`, as sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// `prepare`, `finetune`, `quantize` or `eval`.
    pub kind: String,
    /// The model to start from (finetune, quantize, eval): a stored or configured name.
    #[serde(default)]
    pub model: Option<String>,
    /// The dataset id (prepare, finetune, eval).
    #[serde(default)]
    pub data: Option<String>,
    /// Kind-specific options (see [`JobOptions`]).
    #[serde(default)]
    pub options: Option<Value>,
    /// The name the result is registered under (finetune, quantize).
    #[serde(default)]
    pub output_name: Option<String>,
}

/// Options, each for some kinds only; one given to a kind it does not apply to is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOptions {
    /// prepare: seed of the train/eval split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// prepare: share of documents in the eval set (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_share: Option<f64>,
    /// prepare: near-duplicate Jaccard threshold (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near_dup_threshold: Option<f64>,
    /// finetune: epochs (1..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// finetune: learning rate (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// finetune: `adamw` or `sgd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<String>,
    /// finetune: at most this many training windows per epoch (1..=1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_windows: Option<u32>,
    /// finetune, eval: context (window) in tokens (16..=131072; the toolchain may require a
    /// multiple of 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<u32>,
    /// finetune, quantize, eval: CPU threads (1..=256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// finetune: a second dataset id for evaluation during training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<String>,
    /// quantize: the target type, e.g. `Q8_0`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub quant_type: Option<String>,
    /// eval: a second model to compare with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<String>,
    /// synth: most question/answer pairs asked per chunk (1..=20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_chunk: Option<u32>,
    /// synth: most samples kept (1..=1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples: Option<u32>,
    /// synth: tokens per chunk (16..=4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_tokens: Option<u32>,
    /// prepare: `counterfactual` adds gender-swapped copies (see the bias report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
    /// synth: `qa`, `explain`, `summary` or `mix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// finetune: train a LoRA adapter of this rank (1..=1024) instead of every weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_rank: Option<u32>,
    /// finetune: LoRA alpha (> 0; default the rank × 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    /// finetune: the layers LoRA adapts (`attn_q`, `attn_k`, `attn_v`, `attn_output`,
    /// `ffn_gate`, `ffn_up`, `ffn_down`; default all seven).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_targets: Option<Vec<String>>,
    /// finetune: count the loss on the user and system turns too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_on_inputs: Option<bool>,
    /// finetune: share of the steps spent warming the learning rate up (0..=0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    /// finetune: `cosine`, `linear` or `constant` decay after warmup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// finetune: samples per optimizer step (1..=4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_accum: Option<u32>,
    /// finetune: also evaluate and checkpoint every N steps (1..=1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u32>,
    /// finetune: AdamW weight decay (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// finetune: an evaluation gate policy (the JSON of `inhouse-quantize eval --gate`), run on
    /// the job's `eval_data` questions against the base model; a refused model is registered
    /// only as a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Value>,
}

/// A model a job reads: its name, digest and file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    /// The name it was asked by.
    pub name: String,
    /// SHA-256 of the file (computed at submission for configured models).
    pub digest: String,
    /// The file (a blob inside the state directory, or a configured path).
    pub path: PathBuf,
}

/// A dataset a job reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRef {
    /// The dataset id it was uploaded as.
    pub id: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// `jsonl`, `txt` or `md`.
    pub format: String,
}

/// A checked job: what is stored as the row's parameters and what the runner executes. Holds
/// names, digests, ids, options and paths inside the state directory, never data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// What it runs.
    pub kind: JobKind,
    /// The model it starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// eval: the model compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<ModelRef>,
    /// The training (prepare: input; eval: evaluation) dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataRef>,
    /// finetune: the evaluation dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<DataRef>,
    /// Options.
    pub options: JobOptions,
    /// The name the output model is registered under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_name: Option<String>,
    /// finetune: the reports (counts only) of the prepare or synth jobs that made its datasets,
    /// so the model's provenance and card show what the data went through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_reports: Vec<Value>,
}

/// Which options apply to which kind.
fn allowed_options(kind: JobKind) -> &'static [&'static str] {
    match kind {
        JobKind::Prepare => &["seed", "eval_share", "near_dup_threshold", "augment"],
        JobKind::Finetune => &[
            "epochs",
            "lr",
            "optimizer",
            "ctx",
            "threads",
            "eval_data",
            "max_windows",
            "seed",
            "lora_rank",
            "lora_alpha",
            "lora_targets",
            "train_on_inputs",
            "warmup_ratio",
            "schedule",
            "grad_accum",
            "eval_every",
            "weight_decay",
            "gate",
        ],
        JobKind::Quantize => &["type", "threads"],
        JobKind::Eval => &["compare", "ctx", "threads"],
        JobKind::Synth => &[
            "seed",
            "eval_share",
            "per_chunk",
            "max_samples",
            "chunk_tokens",
            "style",
            "threads",
        ],
    }
}

/// Parses and range-checks the options of `kind` (models and datasets are resolved by the
/// runner).
fn check_options(kind: JobKind, raw: Option<&Value>) -> Result<JobOptions, JobError> {
    let raw = match raw {
        None | Some(Value::Null) => return Ok(JobOptions::default()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(JobError::invalid("options", "must be a JSON object")),
    };
    for key in raw.keys() {
        if !allowed_options(kind).contains(&key.as_str()) {
            return Err(JobError::invalid(
                &format!("options.{key}"),
                format!(
                    "not an option of a {} job (its options: {})",
                    kind.as_str(),
                    allowed_options(kind).join(", ")
                ),
            ));
        }
    }
    let o: JobOptions = serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|e| JobError::invalid("options", e.to_string()))?;
    let unit = |name: &str, v: Option<f64>, lo_open: bool| match v {
        Some(x) if !(x.is_finite() && (if lo_open { x > 0.0 } else { x >= 0.0 }) && x < 1.0) => {
            Err(JobError::invalid(
                &format!("options.{name}"),
                format!("{x} is out of range (0 to 1)"),
            ))
        }
        _ => Ok(()),
    };
    unit("eval_share", o.eval_share, false)?;
    unit("near_dup_threshold", o.near_dup_threshold, true)?;
    unit("lr", o.lr, true)?;
    unit("weight_decay", o.weight_decay, false)?;
    if let Some(w) = o.warmup_ratio {
        if !(w.is_finite() && (0.0..=0.5).contains(&w)) {
            return Err(JobError::invalid(
                "options.warmup_ratio",
                format!("{w} is out of range (0 to 0.5)"),
            ));
        }
    }
    if let Some(a) = o.lora_alpha {
        if !(a.is_finite() && a > 0.0 && a <= 65_536.0) {
            return Err(JobError::invalid(
                "options.lora_alpha",
                format!("{a} is out of range (> 0, at most 65536)"),
            ));
        }
    }
    if let Some(t) = &o.lora_targets {
        const TARGETS: [&str; 7] = [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ];
        if t.is_empty() || t.iter().any(|x| !TARGETS.contains(&x.as_str())) {
            return Err(JobError::invalid(
                "options.lora_targets",
                format!("must name some of {}", TARGETS.join(", ")),
            ));
        }
    }
    if (o.lora_alpha.is_some() || o.lora_targets.is_some()) && o.lora_rank.is_none() {
        return Err(JobError::invalid(
            "options.lora_rank",
            "lora_alpha and lora_targets need lora_rank",
        ));
    }
    if let Some(sc) = &o.schedule {
        if !["cosine", "linear", "constant"].contains(&sc.as_str()) {
            return Err(JobError::invalid(
                "options.schedule",
                "must be \"cosine\", \"linear\" or \"constant\"",
            ));
        }
    }
    if let Some(g) = &o.gate {
        let size = g.to_string().len();
        if !g.is_object() || size > 64 * 1024 {
            return Err(JobError::invalid(
                "options.gate",
                "must be a gate policy: a JSON object (at most 64 KiB)",
            ));
        }
    }
    let range = |name: &str, v: Option<u32>, lo: u32, hi: u32| match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(JobError::invalid(
            &format!("options.{name}"),
            format!("{x} is out of range ({lo} to {hi})"),
        )),
        _ => Ok(()),
    };
    range("epochs", o.epochs, 1, 100)?;
    range("ctx", o.ctx, 16, 131_072)?;
    range("threads", o.threads, 1, 256)?;
    range("max_windows", o.max_windows, 1, 1_000_000)?;
    range("per_chunk", o.per_chunk, 1, 20)?;
    range("max_samples", o.max_samples, 1, 1_000_000)?;
    range("chunk_tokens", o.chunk_tokens, 16, 4096)?;
    range("lora_rank", o.lora_rank, 1, 1024)?;
    range("grad_accum", o.grad_accum, 1, 4096)?;
    range("eval_every", o.eval_every, 1, 1_000_000)?;
    if let Some(a) = &o.augment {
        if a != "counterfactual" && a != "none" {
            return Err(JobError::invalid(
                "options.augment",
                "must be \"counterfactual\" or \"none\"",
            ));
        }
    }
    if let Some(st) = &o.style {
        if !["qa", "explain", "summary", "mix"].contains(&st.as_str()) {
            return Err(JobError::invalid(
                "options.style",
                "must be \"qa\", \"explain\", \"summary\" or \"mix\"",
            ));
        }
    }
    if let Some(opt) = &o.optimizer {
        if opt != "adamw" && opt != "sgd" {
            return Err(JobError::invalid(
                "options.optimizer",
                "must be \"adamw\" or \"sgd\"",
            ));
        }
    }
    if let Some(t) = &o.quant_type {
        let ok = !t.is_empty()
            && t.len() <= 16
            && t.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(JobError::invalid(
                "options.type",
                "must be a quantization type such as Q8_0 or Q4_K_M",
            ));
        }
    }
    Ok(o)
}

/// A result or report from the toolchain, made safe to store in clear: strings longer than 256
/// bytes (which could be quoted data or generated text) are replaced by their length.
pub fn summarize(v: &Value) -> Value {
    match v {
        Value::String(s) if s.len() > 256 => Value::String(format!("<{} bytes omitted>", s.len())),
        Value::Array(a) => Value::Array(a.iter().map(summarize).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), summarize(v))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_are_checked_per_kind() {
        let ok = check_options(
            JobKind::Finetune,
            Some(&json!({"epochs": 2, "lr": 0.0001, "ctx": 256, "optimizer": "adamw"})),
        )
        .unwrap();
        assert_eq!(ok.epochs, Some(2));
        let e = check_options(JobKind::Prepare, Some(&json!({"epochs": 2}))).unwrap_err();
        assert!(e.to_string().contains("options.epochs"), "{e}");
        let e = check_options(JobKind::Finetune, Some(&json!({"epochs": 0}))).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = check_options(JobKind::Finetune, Some(&json!({"lr": "x"}))).unwrap_err();
        assert!(matches!(e, JobError::Invalid { .. }), "{e}");
        let e = check_options(JobKind::Quantize, Some(&json!({"type": "../x"}))).unwrap_err();
        assert!(e.to_string().contains("options.type"), "{e}");
        assert!(JobKind::parse("train").is_err());
        let e = check_options(JobKind::Synth, Some(&json!({"style": "poem"}))).unwrap_err();
        assert!(e.to_string().contains("options.style"), "{e}");
        let e = check_options(JobKind::Synth, Some(&json!({"per_chunk": 0}))).unwrap_err();
        assert!(e.to_string().contains("options.per_chunk"), "{e}");
        let e = check_options(JobKind::Prepare, Some(&json!({"augment": "x"}))).unwrap_err();
        assert!(e.to_string().contains("options.augment"), "{e}");
        let e = check_options(JobKind::Prepare, Some(&json!({"style": "qa"}))).unwrap_err();
        assert!(e.to_string().contains("options.style"), "{e}");
    }

    #[test]
    fn summaries_drop_long_text() {
        let long = "x".repeat(300);
        let s = summarize(&json!({"a": [long], "n": 3, "short": "ok"}));
        assert_eq!(
            s,
            json!({"a": ["<300 bytes omitted>"], "n": 3, "short": "ok"})
        );
    }

    #[test]
    fn specs_round_trip() {
        let spec = JobSpec {
            kind: JobKind::Quantize,
            model: Some(ModelRef {
                name: "smol".into(),
                digest: "ab".into(),
                path: "/x".into(),
            }),
            compare: None,
            data: None,
            eval_data: None,
            options: JobOptions {
                quant_type: Some("Q8_0".into()),
                ..JobOptions::default()
            },
            output_name: Some("smol-q8".into()),
            data_reports: Vec::new(),
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains("\"type\":\"Q8_0\""), "{text}");
        assert_eq!(serde_json::from_str::<JobSpec>(&text).unwrap(), spec);
    }
}
