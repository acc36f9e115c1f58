//! `import-hf`: a Hugging Face checkpoint directory (`config.json`, safetensors weights,
//! `tokenizer.json`) converted to a GGUF file that llama.cpp loads, in Rust, without Python or
//! PyTorch.
//!
//! The conversion is planned first ([`Plan`]: metadata, tensor names and shapes, all checked
//! against `config.json` and against what llama.cpp's loader will ask for) and only then are the
//! weights decoded and written, through [`inhouse_formats::gguf_write::GgufWriter`] (temporary
//! file, re-read by the one GGUF reader, renamed into place). So a checkpoint this does not
//! understand is refused with the tensor or key at fault before anything is written.
//!
//! Architectures: BERT encoders ([`bert`]), with their WordPiece tokenizer ([`wordpiece`]);
//! Llama and Qwen2 decoders ([`decoder`]), with their byte-level BPE tokenizer ([`bpe`]) and
//! chat template.
//!
//! Only safetensors are read: PyTorch's `.bin` checkpoints are pickles, and unpickling runs
//! code.

pub mod bert;
pub mod bpe;
pub mod checkpoint;
pub mod decoder;
pub mod wordpiece;

use std::path::PathBuf;
use std::time::Instant;

use inhouse_formats::gguf::{GgmlType, Value};
use inhouse_formats::gguf_write::{GgufWriteError, GgufWriter};
use inhouse_formats::progress::{Phase, Progress, Reporter, ToolError};

use checkpoint::Checkpoint;

/// Why a checkpoint could not be converted. Each names the file, key or tensor at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A file is malformed (bad JSON, a bad safetensors header, a missing key).
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed checkpoint of a kind this converter does not handle.
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    /// A tensor that is missing, unknown, misshapen or not a float.
    #[error("tensor {name}: {reason}")]
    Tensor {
        /// The tensor (Hugging Face's name, or llama.cpp's for a missing one).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing the GGUF file failed.
    #[error(transparent)]
    Write(#[from] GgufWriteError),
}

impl From<ImportError> for ToolError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Write(_) => ToolError::Failed(e.to_string()),
            _ => ToolError::BadInput(e.to_string()),
        }
    }
}

/// The tensor type of the converted weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// Everything F32: the checkpoint's values exactly (when it is F32).
    F32,
    /// Weight matrices and embedding tables F16, norms and biases F32: half the size, as
    /// llama.cpp's own converter writes by default.
    F16,
}

impl OutType {
    /// `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `LLAMA_FTYPE_MOSTLY_F16`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
        }
    }

    /// The name printed in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
        }
    }
}

/// One tensor to write.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Its name in the checkpoint.
    pub hf_name: String,
    /// Its name in the GGUF file.
    pub gguf_name: String,
    /// Its shape, outermost first (the GGUF dimensions are this reversed).
    pub shape: Vec<usize>,
    /// Whether it is a matrix that may be stored in 16 bits.
    pub matrix: bool,
    /// For a Llama Q or K projection: its head count, to reorder its rows for llama.cpp's
    /// rotary layout ([`decoder::permute_rows`]).
    pub permute_heads: Option<u32>,
}

/// What a conversion will write, decided before any weight is decoded.
#[derive(Debug, Clone)]
pub struct Plan {
    /// llama.cpp's architecture name.
    pub architecture: &'static str,
    /// The metadata, in the order written (`general.file_type` is added by [`import`]).
    pub kvs: Vec<(String, Value)>,
    /// The tensors, in the order written.
    pub tensors: Vec<PlannedTensor>,
    /// The pooling written (`mean`, `cls`), for an embedding model.
    pub pooling: &'static str,
    /// Tokens in the vocabulary.
    pub vocab_size: u32,
}

/// What `import-hf` does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The GGUF file to write.
    pub out: PathBuf,
    /// The type of the weight matrices.
    pub out_type: OutType,
    /// `general.name`; the directory's name when `None`.
    pub name: Option<String>,
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    /// llama.cpp's architecture name.
    pub architecture: &'static str,
    /// `general.name`.
    pub name: String,
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: u64,
    /// Tokens in the vocabulary.
    pub vocab_size: u32,
    /// The pooling written.
    pub pooling: &'static str,
    /// Size of the checkpoint's weight files, bytes.
    pub input_bytes: u64,
    /// Size of the GGUF file, bytes.
    pub output_bytes: u64,
}

/// The conversion plan for a checkpoint, by its `model_type`.
pub fn plan(ck: &Checkpoint, name: &str) -> Result<Plan, ImportError> {
    let model_type = ck
        .config
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    match model_type {
        "bert" => bert::plan(ck, name),
        "llama" => decoder::plan(ck, name, decoder::Kind::Llama),
        "qwen2" => decoder::plan(ck, name, decoder::Kind::Qwen2),
        other => Err(ImportError::Unsupported(format!(
            "{}: model_type {other:?}; supported: bert, llama, qwen2",
            ck.dir.join("config.json").display()
        ))),
    }
}

/// Converts the checkpoint in `opts.dir` to `opts.out`.
pub fn import(opts: &Options) -> Result<Summary, ImportError> {
    let ck = Checkpoint::open(&opts.dir)?;
    if let Ok(out) = opts.out.canonicalize() {
        if ck
            .file_paths()
            .any(|p| p.canonicalize().is_ok_and(|p| p == out))
        {
            return Err(ImportError::Invalid {
                path: opts.out.clone(),
                reason: "the output would overwrite a weight file of the checkpoint".into(),
            });
        }
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => opts
            .dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into()),
    };
    let plan = plan(&ck, &name)?;
    let mut w = GgufWriter::new();
    for (k, v) in &plan.kvs {
        w.set(k, v.clone())?;
    }
    w.set("general.file_type", Value::U32(opts.out_type.file_type()))?;
    let mut parameters = 0u64;
    for t in &plan.tensors {
        let mut data = ck.tensor_f32(&t.hf_name)?;
        if let Some(heads) = t.permute_heads {
            let cols = if t.shape.len() == 2 { t.shape[1] } else { 1 };
            data = decoder::permute_rows(&data, heads as usize, cols);
        }
        parameters += data.len() as u64;
        // ggml lists dimensions innermost first: PyTorch's [rows, cols] is ggml's [cols, rows],
        // with the same bytes.
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        if t.matrix && opts.out_type == OutType::F16 {
            let bytes = data
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect();
            w.add_tensor_raw(&t.gguf_name, &dims, GgmlType::F16, bytes)?;
        } else {
            w.add_tensor_f32(&t.gguf_name, &dims, data)?;
        }
    }
    w.write_to(&opts.out)?;
    let output_bytes = std::fs::metadata(&opts.out).map_or(0, |m| m.len());
    Ok(Summary {
        architecture: plan.architecture,
        name,
        tensors: plan.tensors.len(),
        parameters,
        vocab_size: plan.vocab_size,
        pooling: plan.pooling,
        input_bytes: ck.weight_bytes(),
        output_bytes,
    })
}

/// Runs `import-hf`; returns the result summary.
pub fn run(opts: &Options, reporter: Reporter) -> Result<serde_json::Value, ToolError> {
    let start = Instant::now();
    reporter.progress(&Progress::new(Phase::Convert, 0.0));
    let s = import(opts)?;
    let mut done = Progress::new(Phase::Convert, 1.0);
    done.eta_s = Some(0.0);
    reporter.progress(&done);
    Ok(serde_json::json!({
        "command": "import-hf",
        "input": std::path::absolute(&opts.dir).unwrap_or_else(|_| opts.dir.clone()),
        "output": std::path::absolute(&opts.out).unwrap_or_else(|_| opts.out.clone()),
        "architecture": s.architecture,
        "name": s.name,
        "weight_type": opts.out_type.name(),
        "tensors": s.tensors,
        "parameters": s.parameters,
        "vocab_size": s.vocab_size,
        "pooling": s.pooling,
        "input_bytes": s.input_bytes,
        "output_bytes": s.output_bytes,
        "seconds": start.elapsed().as_secs_f64(),
    }))
}
