//! inhouse: build, own and serve in-house LLMs, on a Unix socket, with nothing leaving the host.
//!
//! Module map, in the order a request travels:
//! - [`config`]: defaults → `/etc/inhouse/inhouse.toml` → flags, checked once at start-up.
//! - [`daemon`]: start-up and shutdown order, the socket, signals, systemd.
//! - [`api`]: the Unix-socket HTTP API: caller identity from peer credentials and roles
//!   (`auth`), limits, one body extractor (`body`), the route files that translate wire shapes
//!   (`openai`, `ollama`, `models`, `jobs`, `history`), the one request lifecycle they share
//!   (`generation`: start, stream, collect, record, embed) and the one error table (`error`).
//! - validation: request bodies are checked by `inhouse_formats::validate` (in `formats/`, no
//!   llama.cpp, so its fuzz target builds alone) into the checked requests the engine runs.
//! - [`engine`]: the [`engine::Engine`] seam; the only code that touches llama.cpp, one OS
//!   thread per model; continuous batching; the pool of resident models (load on demand, memory
//!   budget, eviction, keep-alive); a scripted fake for the API's tests.
//! - [`upstream`]: models another server runs (vLLM, llama-server, another inhoused), forwarded
//!   over its Unix socket behind the same roles, limits, records and audit: an [`engine::Engine`]
//!   in front of the local one, with timeouts, an answer cap and a circuit breaker.
//! - [`models`]: the content-addressed model store: import, verify, sign-check, manifests.
//! - [`incoming`]: received files (model imports, dataset uploads) written hashed and
//!   size-limited.
//! - [`jobs`]: toolchain jobs (prepare, finetune, quantize, eval) as niced child processes:
//!   datasets, progress, cancel, recovery at start-up, outputs registered in the model store.
//! - [`knowledge`]: the in-memory retrieval core of vector stores: chunking, attribute filters,
//!   BM25, exact vector search, rank fusion (pure; storage and routes live elsewhere).
//! - [`metrics`]: serving metrics for `GET /metrics` (Prometheus text).
//! - [`storage`]: the encrypted SQLite store on its own thread: records, history, erasure,
//!   rotation, the audit chain.
//! - [`crypto`]: master key, sub-keys, per-user data keys, sealing fields (AES-256-GCM via ring).
//! - [`wire`]: the admin, models, ps, jobs, history and error bodies, typed once for both ends.
//! - [`client`]: the socket client used by the `inhouse` CLI and the tests, typed over [`wire`].
//! - [`cli`]: the `inhouse` command line, one file per command family.
//! - [`fault`]: named crash points for the fault-matrix tests (inert unless `INHOUSE_FAULT`).
// `deny`, not `forbid`: the one exception is `engine::ffi` (ggml's CPU-variant registry), which
// allows it for itself with a SAFETY comment on each block.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod client;
pub mod collections;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod engine;
pub mod fault;
pub mod incoming;
pub mod jobs;
pub mod knowledge;
pub mod metrics;
pub mod models;
pub mod storage;
pub mod upstream;
pub mod wire;
