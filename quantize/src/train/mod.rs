//! The training engine of `finetune` (candle, CPU, F32 over a dequantized base):
//! - [`model`]: the llama, qwen2 and gemma3 forward passes, LoRA, and the GGUF writers;
//! - [`data`]: records → token sequences with the assistant-only loss mask;
//! - [`optim`]: AdamW with saveable state, the learning-rate schedule, the data order;
//! - [`run`]: the loop, evaluation, checkpoints and `--resume`.
pub mod data;
pub mod model;
pub mod optim;
pub mod run;
