//! inhouse-quantize: the model toolchain of inhouse.
//!
//! It prepares training data, quantizes, fine-tunes and evaluates models, and inspects GGUF
//! files: the heavy model work, done in a process of its own. The daemon runs this crate's binary
//! as a child (one job, one process, at a lower priority), so that a ggml abort or a crash there
//! never takes serving down; the daemon does not link this library.
//!
//! The name is the product's: `inhouse-quantize` is the command the `.deb`, the man pages and the
//! docs have always shipped, and `[jobs] toolchain-binary` points at it, so the crate and its
//! binary keep it although quantizing is now one command of several.
//!
//! Module map:
//! - [`prepare`]: documents → a cleaned, de-duplicated, anonymized train/eval JSONL set.
//! - [`bias`]: demographic term counts per axis (the bias report) and counterfactual copies.
//! - [`llama`]: the crate's only `unsafe`: llama.cpp calls (backends, models, contexts,
//!   training, quantizing) behind small owning types.
//! - [`quantize`]: `quantize`, a model to another tensor type (`llama_model_quantize`).
//! - [`finetune`]: `finetune`, full fine-tuning with `llama_opt_*`, checkpoints and resume.
//! - [`eval`]: `eval`, perplexity and a counterfactual bias probe for models side by side.
//!
//! What the daemon and the client share with the toolchain moved to `inhouse-formats`
//! (`formats/`), so that the daemon no longer compiles the toolchain: the GGUF reader
//! (`inhouse_formats::gguf`), the GGUF writer (`inhouse_formats::gguf_write`), the `inspect`
//! report (`inhouse_formats::inspect`), SHA-256 digests and Ed25519 signatures
//! (`inhouse_formats::sign`), the progress protocol and exit statuses
//! (`inhouse_formats::progress`), and the ggml backend-directory search
//! (`inhouse_formats::backends`).
//!
//! `unsafe` is denied everywhere except in [`llama`], which allows it with a `SAFETY` comment on
//! every block.
#![deny(unsafe_code)]

pub mod bias;
pub mod eval;
pub mod finetune;
pub mod llama;
pub mod prepare;
pub mod quantize;
