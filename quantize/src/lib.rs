//! inhouse-quantize: the model toolchain of inhouse.
//!
//! The daemon runs this crate's binary as a child process for heavy model work, so that a ggml
//! abort there never takes serving down; the daemon itself links the library for the GGUF checks.
//!
//! Module map:
//! - [`gguf`]: the one GGUF reader and validator (header, metadata, tensor infos; never the data),
//!   used by the model store, the pre-load check and `inspect`.
//! - [`inspect`]: the `inspect` report (text and JSON) built from a validated file.
//! - [`gguf_write`]: the GGUF v3 writer (checkpoints with restored metadata, LoRA adapters).
//! - [`sign`]: Ed25519 model signatures and SHA-256 digests.
//! - [`prepare`]: documents → a cleaned, de-duplicated, anonymized train/eval JSONL set.
//! - [`progress`]: the progress protocol on stdout and the exit statuses of the long commands.
//! - [`llama`]: the crate's only `unsafe`: llama.cpp calls (backends, models, contexts,
//!   training, quantizing) behind small owning types.
//! - [`quantize`]: `quantize`, a model to another tensor type (`llama_model_quantize`).
//! - [`finetune`]: `finetune`, full fine-tuning with `llama_opt_*`, checkpoints and resume.
//! - [`eval`]: `eval`, perplexity and a counterfactual bias probe for models side by side.
//!
//! `unsafe` is denied everywhere except in [`llama`], which allows it with a `SAFETY` comment on
//! every block.
#![deny(unsafe_code)]

#[cfg(feature = "llama")]
pub mod eval;
#[cfg(feature = "llama")]
pub mod finetune;
pub mod gguf;
pub mod gguf_write;
pub mod inspect;
#[cfg(feature = "llama")]
pub mod llama;
pub mod prepare;
pub mod progress;
#[cfg(feature = "llama")]
pub mod quantize;
pub mod sign;
