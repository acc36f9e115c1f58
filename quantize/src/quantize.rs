//! `quantize`: a GGUF model to another tensor type with `llama_model_quantize`.
//!
//! The input is validated with [`inhouse_formats::gguf::open`] first, so a malformed file never reaches
//! llama.cpp (exit status 2). The output is written to `OUT.partial`, checked with the same
//! reader and renamed to `OUT`, so a failed or killed run never leaves a truncated model under
//! the final name.
//!
//! Progress: `llama_model_quantize` in this llama.cpp (b11434) has no progress callback (its
//! params hold none; it only logs per tensor), so a run reports fraction 0 at the start and 1 at
//! the end.
//!
//! An already-quantized input (every tensor not F32/F16/BF16 counts) is accepted and requantized
//! (`allow_requantize`), with a warning: each quantization loses information, so quantizing from
//! the F32/F16 original is better. Only types that need no importance matrix are offered.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::llama;
use inhouse_formats::gguf::{self, GgmlType};
use inhouse_formats::progress::{Phase, Progress, Reporter, ToolError};

/// The output types offered: llama.cpp's name and `LLAMA_FTYPE_*` id.
pub const TYPES: &[(&str, u32)] = &[
    ("F32", 0),
    ("F16", 1),
    ("BF16", 32),
    ("Q8_0", 7),
    ("Q6_K", 18),
    ("Q5_K_M", 17),
    ("Q5_K_S", 16),
    ("Q5_1", 9),
    ("Q5_0", 8),
    ("Q4_K_M", 15),
    ("Q4_K_S", 14),
    ("Q4_1", 3),
    ("Q4_0", 2),
    ("Q3_K_L", 13),
    ("Q3_K_M", 12),
    ("Q3_K_S", 11),
    ("Q2_K", 10),
];

/// `LLAMA_FTYPE_ALL_F32`: what `finetune` converts a quantized base to.
pub const FTYPE_ALL_F32: u32 = 0;

/// The `LLAMA_FTYPE_*` id of a type name (case-insensitive), with the canonical name.
pub fn parse_type(name: &str) -> Result<(&'static str, u32), ToolError> {
    TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| {
            ToolError::BadInput(format!(
                "unknown type {name:?}; one of: {}",
                TYPES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))
        })
}

/// What `quantize` does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The input model.
    pub input: PathBuf,
    /// The output model.
    pub output: PathBuf,
    /// The output type name (see [`TYPES`]).
    pub qtype: String,
    /// Threads.
    pub threads: u32,
}

/// Whether a validated file holds tensors that are already quantized (not F32/F16/BF16).
pub fn is_quantized(file: &gguf::GgufFile) -> bool {
    file.tensors()
        .iter()
        .any(|t| !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
}

/// Opens and validates a model given on the command line; a bad file is bad input.
pub fn open_model(path: &Path) -> Result<gguf::GgufFile, ToolError> {
    gguf::open(path).map_err(|e| match e {
        gguf::GgufError::Open { .. } | gguf::GgufError::NotAFile { .. } => {
            ToolError::BadInput(e.to_string())
        }
        _ => ToolError::BadInput(format!("{}: {e}", path.display())),
    })
}

/// Quantizes `input` (already validated) to `output` through `OUT.partial`, and validates the
/// result with the GGUF reader before renaming it into place.
pub fn quantize_to(input: &Path, output: &Path, ftype: u32, threads: u32) -> Result<(), ToolError> {
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let res = llama::quantize_file(input, &partial, ftype, threads)
        .map_err(|e| ToolError::Failed(e.to_string()))
        .and_then(|()| {
            gguf::open(&partial)
                .map_err(|e| ToolError::Failed(format!("llama.cpp wrote an invalid file: {e}")))
        })
        .and_then(|_| {
            std::fs::rename(&partial, output)
                .map_err(|e| ToolError::Failed(format!("{}: {e}", output.display())))
        });
    if res.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    res
}

/// Runs `quantize`; returns the result summary.
pub fn run(opts: &Options, reporter: Reporter) -> Result<serde_json::Value, ToolError> {
    let (type_name, ftype) = parse_type(&opts.qtype)?;
    if opts.threads == 0 {
        return Err(ToolError::BadInput("--threads must be at least 1".into()));
    }
    let file = open_model(&opts.input)?;
    if let (Ok(a), Ok(b)) = (opts.input.canonicalize(), opts.output.canonicalize()) {
        if a == b {
            return Err(ToolError::BadInput(
                "the output would overwrite the input".into(),
            ));
        }
    }
    if is_quantized(&file) {
        let msg = format!(
            "warning: {} is already quantized ({}); requantizing it to {type_name} loses more \
             quality than quantizing the F32/F16 original would",
            opts.input.display(),
            file.file_type_name().unwrap_or("mixed types"),
        );
        eprintln!("inhouse-quantize: {msg}");
        if reporter.format() == inhouse_formats::progress::Format::Json {
            reporter.log(&msg);
        }
    }
    let start = Instant::now();
    reporter.progress(&Progress::new(Phase::Quantize, 0.0));
    quantize_to(&opts.input, &opts.output, ftype, opts.threads)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut done = Progress::new(Phase::Quantize, 1.0);
    done.eta_s = Some(0.0);
    reporter.progress(&done);
    let out_bytes = std::fs::metadata(&opts.output)
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(serde_json::json!({
        "command": "quantize",
        "input": opts.input,
        "output": std::path::absolute(&opts.output).unwrap_or_else(|_| opts.output.clone()),
        "quant_type": type_name,
        "input_bytes": file.file_size(),
        "output_bytes": out_bytes,
        "requantized": is_quantized(&file),
        "seconds": seconds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_case_insensitively() {
        assert_eq!(parse_type("q4_k_m").unwrap(), ("Q4_K_M", 15));
        assert!(parse_type("IQ2_XXS").is_err());
    }
}
