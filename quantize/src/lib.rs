//! inhouse-quantize: the model toolchain of inhouse.
//!
//! The daemon runs this crate's binary as a child process for heavy model work, so that a ggml
//! abort there never takes serving down; the daemon itself links the library for the GGUF checks.
//!
//! Module map:
//! - [`gguf`]: the one GGUF reader and validator (header, metadata, tensor infos; never the data),
//!   used by the model store, the pre-load check and `inspect`.
//! - [`inspect`]: the `inspect` report (text and JSON) built from a validated file.
#![forbid(unsafe_code)]

pub mod gguf;
pub mod gguf_write;
pub mod inspect;
pub mod prepare;
pub mod sign;
