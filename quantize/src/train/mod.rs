//! The training engine of `finetune` (candle, CPU, F32 over a dequantized base):
//! - [`model`]: the llama, qwen2 and gemma3 forward passes, LoRA, and the GGUF writers;
//! - [`data`]: records → token sequences with the assistant-only loss mask;
//! - [`optim`]: AdamW with saveable state, the learning-rate schedule, the data order;
//! - [`run`]: the loop, evaluation, checkpoints and `--resume`.
pub mod data;
pub mod model;
pub mod optim;
pub mod run;

use inhouse_formats::progress::ToolError;

/// Bad input: the command's exit status 2.
pub(crate) fn bad(msg: impl Into<String>) -> ToolError {
    ToolError::BadInput(msg.into())
}

/// A failure while running.
pub(crate) fn failed(msg: impl Into<String>) -> ToolError {
    ToolError::Failed(msg.into())
}

/// A candle error, as a failure of the training engine.
pub(crate) fn cf(e: candle_core::Error) -> ToolError {
    failed(format!("training engine: {e}"))
}
