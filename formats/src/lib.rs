//! inhouse-formats: what the daemon (`inhoused`), the client (`inhouse`) and the toolchain
//! (`inhouse-quantize`) share, in one small crate with no llama.cpp and no `unsafe`.
//!
//! Module map:
#![forbid(unsafe_code)]
#![warn(missing_docs)]
