//! `finetune`: LoRA adapters or full fine-tuning of a GGUF model on JSONL data (text or chat).
//!
//! The training engine is candle ([`crate::train`]): llama.cpp b11434's optimizer can train
//! neither adapter tensors (it marks only the model's own F32 tensors as parameters) nor a
//! masked loss (`llama_opt_epoch` labels every position with the next token), so it could not do
//! LoRA or assistant-only loss. candle reads the GGUF, dequantizes the frozen base to F32 and
//! trains `Var`s over it with reverse-mode autograd; tokenization stays llama.cpp's, and a test
//! (`quantize/tests/train_parity.rs`) checks that the trainer's forward pass gives llama.cpp's
//! logits on the same tokens for every supported architecture. This module keeps the record
//! reader the data encoder and the evaluation share; the loop is [`crate::train::run`].

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::llama::{self, Model, CTX_ALIGN};
use inhouse_formats::progress::ToolError;

pub use crate::train::run::{read_state, run, Options, MAX_CTX, STATE_FILE};

fn bad(msg: impl Into<String>) -> ToolError {
    ToolError::BadInput(msg.into())
}

fn failed(msg: impl Into<String>) -> ToolError {
    ToolError::Failed(msg.into())
}

/// Checks a perplexity window size (eval, gate): llama.cpp pads contexts to 256 tokens, so
/// windows that fill the context exactly are multiples of it.
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
