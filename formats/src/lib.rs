//! inhouse-formats: what the daemon (`inhoused`), the client (`inhouse`) and the toolchain
//! (`inhouse-quantize`) share, in one small crate with no llama.cpp and no `unsafe`.
//!
//! Module map:
//! - [`request`]: checked requests, what validation produces and the engine runs.
//! - [`validate`]: untrusted request bodies (wire types) checked into [`request`] types, with a
//!   typed error; no llama.cpp here, so its fuzz target builds fast.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod request;
pub mod validate;
