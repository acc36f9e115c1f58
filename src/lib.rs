//! inhouse: build, own and serve in-house LLMs, on a Unix socket, with nothing leaving the host.
//!
//! Module map, in the order a request travels:
//! - [`config`]: defaults → `/etc/inhouse/inhouse.toml` → flags, checked once at start-up.
//! - [`daemon`]: start-up and shutdown order, the socket, signals.
//! - [`api`]: the Unix-socket HTTP API, caller identity from peer credentials, the error table.
//! - [`scheduler`]: untrusted JSON validated into checked requests.
//! - [`engine`]: the only code that touches llama.cpp, on its own OS thread; continuous batching;
//!   the pool of resident models (load on demand, memory budget, eviction, keep-alive).
//! - [`models`]: the content-addressed model store: import, verify, sign-check, manifests.
//! - [`jobs`]: toolchain jobs (prepare, finetune, quantize, eval) as niced child processes:
//!   datasets, progress, cancel, recovery at start-up, outputs registered in the model store.
//! - [`metrics`]: serving metrics for `GET /metrics` (Prometheus text).
//! - [`storage`]: the encrypted SQLite store on its own thread: records, history, erasure,
//!   rotation, the audit chain.
//! - [`crypto`]: master key, sub-keys, per-user data keys, sealing fields (AES-256-GCM via ring).
//! - [`wire`]: the admin, models, ps, jobs, history and error bodies, typed once for both ends.
//! - [`client`]: the socket client used by the `inhouse` CLI and the tests, typed over [`wire`].
//! - [`cli`]: the `inhouse` command line, one file per command family.
// `deny`, not `forbid`: the one exception is `engine::ffi` (ggml's CPU-variant registry), which
// allows it for itself with a SAFETY comment on each block.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod engine;
pub mod incoming;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod scheduler;
pub mod storage;
pub mod wire;
