//! inhouse-formats: what the daemon (`inhoused`), the client (`inhouse`) and the toolchain
//! (`inhouse-quantize`) share, in one small crate with no llama.cpp and no `unsafe`.
//!
//! Each format has one implementation, here, so that both ends of it agree by construction; and
//! because nothing here links llama.cpp, the daemon does not compile the toolchain and the fuzz
//! targets build in minutes.
//!
//! Module map:
//! - [`request`]: checked requests, what validation produces and the engine runs.
//! - [`template`]: chat templates (the GGUF's Jinja) rendered as transformers renders them, in a
//!   sandbox bounded in steps, output size and recursion.
//! - [`tools`]: tool calls and reasoning in a model's output: the call format a chat template
//!   teaches, the streaming parser into content, reasoning and calls, and the llguidance
//!   grammars that constrain calls while they are sampled.
//! - [`validate`]: untrusted request bodies (wire types) checked into [`request`] types, with a
//!   typed error; no llama.cpp here, so its fuzz target builds fast.
//! - [`gguf`]: the one GGUF reader and validator (header, metadata, tensor infos; never the
//!   data), used by the model store, the pre-load check and the toolchain's `inspect`.
//! - [`gguf_write`]: the GGUF v3 writer (toolchain checkpoints with restored metadata, LoRA
//!   adapters), which re-reads what it wrote with [`gguf`].
//! - [`inspect`]: the `inspect` report (text and JSON) of a validated GGUF file.
//! - [`sign`]: SHA-256 file digests, Ed25519 model signatures, key files and the trusted keys.
//! - [`progress`]: the job progress protocol, one typed [`progress::Event`] per stdout line
//!   (written by the toolchain, read by the daemon's job runner), and the exit statuses.
//! - [`backends`]: where ggml's CPU variant libraries are looked for (the path search only).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backends;
pub mod gguf;
pub mod gguf_write;
pub mod inspect;
pub mod progress;
pub mod request;
pub mod sign;
pub mod template;
pub mod tools;
pub mod validate;
