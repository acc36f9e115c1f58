//! Daemon configuration: built-in defaults, then `/etc/inhouse/inhouse.toml` (or `--config`),
//! then command-line flags. Each default is written once, in [`Config::default`] (or in a
//! `DEFAULT_*` constant where `"auto"` falls back to it too).
//!
//! The config is also where each component's settings are derived from it
//! ([`Config::engine_config`], [`Config::pool_config`], [`Config::limits`],
//! [`Config::server_limits`]…), so that start-up ([`crate::daemon::run`]) only wires components
//! together in order.
//!
//! Keys are kebab-case and unknown keys are refused, so a misspelt key in an admin's file is an
//! error at start-up rather than a setting silently ignored.

use crate::engine::llama::EngineConfig;
use crate::engine::pool::{GpuLayers, PoolConfig};
use inhouse_formats::validate::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the daemon looks for its configuration file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/inhouse/inhouse.toml";
/// The socket path used when neither the file nor a flag names one.
pub const DEFAULT_SOCKET: &str = "/run/inhouse/inhouse.sock";
/// The state directory used when neither the file nor a flag names one.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/inhouse";

/// Where trusted publisher keys are looked for when the config names no directory.
pub const DEFAULT_TRUSTED_KEYS_DIR: &str = "/etc/inhouse/trusted-keys";

/// Largest model file an import accepts: the default of `max-model-bytes`, and what `"auto"`
/// means there.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 256 << 30;
/// Largest dataset upload: the default of `[jobs] max-data-bytes` (which refuses `"auto"`).
pub const DEFAULT_MAX_DATA_BYTES: u64 = 4 << 30;
/// How long loading a model waits for busy models to finish before giving up. Not a key: a
/// request that waited longer than this would have timed out at its client anyway.
pub const MODEL_BUSY_WAIT: Duration = Duration::from_secs(120);

/// `gpu-layers`: a count or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSetting")]
pub enum GpuLayersSetting {
    /// As many as fit.
    Auto,
    /// This many.
    Count(u32),
}

/// A size in bytes: a number, a string with a unit, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSetting")]
pub enum ByteSize {
    /// Chosen from the machine.
    Auto,
    /// Exactly this many bytes.
    Bytes(u64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSetting {
    Number(u64),
    Text(String),
}

impl TryFrom<RawSetting> for GpuLayersSetting {
    type Error = String;
    fn try_from(r: RawSetting) -> Result<Self, String> {
        match r {
            RawSetting::Number(n) => u32::try_from(n)
                .map(GpuLayersSetting::Count)
                .map_err(|_| format!("gpu-layers {n} is too large")),
            RawSetting::Text(t) => t.parse(),
        }
    }
}

impl std::str::FromStr for GpuLayersSetting {
    type Err = String;
    fn from_str(t: &str) -> Result<Self, String> {
        if t.eq_ignore_ascii_case("auto") {
            return Ok(GpuLayersSetting::Auto);
        }
        t.trim()
            .parse()
            .map(GpuLayersSetting::Count)
            .map_err(|_| format!("gpu-layers must be a number or \"auto\", not {t:?}"))
    }
}

impl TryFrom<RawSetting> for ByteSize {
    type Error = String;
    fn try_from(r: RawSetting) -> Result<Self, String> {
        match r {
            RawSetting::Number(n) => Ok(ByteSize::Bytes(n)),
            RawSetting::Text(t) => t.parse(),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    /// `auto`, `1234`, `512MiB`, `8GiB`, `1.5GB` (decimal units are powers of 1000).
    fn from_str(t: &str) -> Result<Self, String> {
        let t = t.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(ByteSize::Auto);
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(format!(
                    "unknown unit in size {t:?} (use B, KiB, MiB, GiB, TiB)"
                ))
            }
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("size {t:?} must be a number with an optional unit, like 8GiB"))?;
        if !n.is_finite() || n < 0.0 || n * mult as f64 > u64::MAX as f64 {
            return Err(format!("size {t:?} is out of range"));
        }
        Ok(ByteSize::Bytes((n * mult as f64) as u64))
    }
}

impl ByteSize {
    /// Bytes, with `auto` resolved to `auto_bytes`.
    pub fn resolve(self, auto_bytes: impl FnOnce() -> u64) -> u64 {
        match self {
            ByteSize::Auto => auto_bytes(),
            ByteSize::Bytes(n) => n,
        }
    }
}

/// 80% of the machine's memory (`MemTotal`), or 8 GiB when it cannot be read.
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024 / 10 * 8)
        .unwrap_or(8 << 30)
}

/// The complete, checked daemon configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Path of the Unix socket the API listens on.
    pub socket: PathBuf,
    /// Directory for the database and the model store.
    pub state_dir: PathBuf,
    /// Models to serve: name → GGUF path.
    pub models: BTreeMap<String, PathBuf>,
    /// CPU threads llama.cpp uses for generation and prompt processing.
    pub threads: u32,
    /// Context size (tokens) of each model's context.
    pub ctx_size: u32,
    /// Layers offloaded to the GPU: a number, or `"auto"` for as many as the free device memory
    /// allows (0 on a CPU build or without a GPU).
    pub gpu_layers: GpuLayersSetting,
    /// Most memory the resident models may use together (estimated: weights, KV cache, compute),
    /// as bytes or with a unit (`"12GiB"`, `"800MiB"`); `"auto"`: 80% of the machine's memory.
    pub memory_budget: ByteSize,
    /// Seconds a model loaded on demand stays in memory after its last request.
    pub keep_alive_secs: u64,
    /// Refuse models without a valid signature by a trusted key, at import and at load.
    pub require_signed_models: bool,
    /// Directory of trusted publisher keys (`*.pub`, from `inhouse models sign keygen`).
    pub trusted_keys_dir: PathBuf,
    /// Largest model file accepted by an import, bytes or with a unit.
    pub max_model_bytes: ByteSize,
    /// `max_tokens` used when a request gives none.
    pub default_max_tokens: u32,
    /// Requests waiting for the engine before new ones are refused with 503.
    pub queue_size: usize,
    /// Requests per model decoded together (continuous batching); the KV cache holds
    /// `slots × ctx-size` tokens.
    pub slots: u32,
    /// Let one caller's request reuse another caller's cached prompt prefix. Off by default: a
    /// reused prefix answers faster, which tells the second caller what the first one asked.
    pub cache_reuse_across_users: bool,
    /// Most prompt tokens prefilled per decode step while other requests generate (bounds their
    /// inter-token gaps while a long prompt is read).
    pub prefill_chunk: u32,
    /// Keep a request's output at temperature 0 or a fixed seed independent of the requests
    /// batched with it (the default). `false` uses llama.cpp's faster defaults (one unified KV
    /// cache, flash attention): 10–25% more tokens/s measured on CPU, outputs may then differ in
    /// rare near-ties between a request run alone and next to others.
    pub deterministic_batching: bool,
    /// Who may do what, by peer uid and group.
    pub roles: RolesConfig,
    /// The master key file (32 raw bytes or 64 hex digits, mode 0600). When absent the systemd
    /// credential `$CREDENTIALS_DIRECTORY/inhouse-master-key` is used.
    pub key_file: Option<PathBuf>,
    /// Records older than this many days are purged; absent means kept until erased.
    pub retention_days: Option<u32>,
    /// How often the retention purge runs, in seconds.
    pub retention_check_secs: u64,
    /// Group that owns the socket (mode 0660): its members can connect. Absent: the daemon's
    /// own group.
    pub socket_group: Option<String>,
    /// Limits against hostile or runaway clients.
    pub limits: LimitsConfig,
    /// Toolchain jobs (`/admin/jobs`): fine-tuning, quantizing, evaluating, data preparation.
    pub jobs: JobsConfig,
    /// Models served by another OpenAI-compatible server on a Unix socket (vLLM, llama-server,
    /// another inhoused), behind this daemon's roles, limits, records and audit log.
    pub upstreams: Vec<UpstreamConfig>,
    /// Speculative decoding (`[speculative]`): prompt lookup or a draft model, per model.
    pub speculative: crate::engine::speculative::SpeculativeConfig,
    /// Files and vector stores (`[knowledge]`): the embedding model, size limits.
    pub knowledge: crate::collections::KnowledgeConfig,
}

/// Default of `max-answer-bytes`, and what `"auto"` means there: the most bytes one upstream
/// answer may send before it is cut off.
pub const DEFAULT_UPSTREAM_MAX_ANSWER_BYTES: u64 = 16 << 20;

/// One `[[upstreams]]` entry: a model that another server runs, reached over its Unix socket
/// only (see [`crate::upstream`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpstreamConfig {
    /// The model name callers use (the same rule as local model names).
    pub name: String,
    /// The upstream's Unix socket: an absolute path. A TCP address is refused.
    pub socket: String,
    /// The upstream's own model id, sent to it in place of `name`.
    pub model: String,
    /// Requests in flight to the upstream at once; more wait in line (at most `queue-size`).
    #[serde(default = "UpstreamConfig::default_max_concurrency")]
    pub max_concurrency: u32,
    /// Seconds to connect to the socket.
    #[serde(default = "UpstreamConfig::default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds from sending the request to the answer's first event (a long prompt on a busy
    /// engine takes a while to read).
    #[serde(default = "UpstreamConfig::default_first_byte_timeout")]
    pub first_byte_timeout_secs: u64,
    /// Seconds of silence allowed between two pieces of an answer.
    #[serde(default = "UpstreamConfig::default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Seconds one answer may take in all.
    #[serde(default = "UpstreamConfig::default_total_timeout")]
    pub total_timeout_secs: u64,
    /// Most bytes one answer may send, bytes or with a unit.
    #[serde(default = "UpstreamConfig::default_max_answer_bytes")]
    pub max_answer_bytes: ByteSize,
    /// Consecutive failures that open the circuit breaker (requests then fail at once).
    #[serde(default = "UpstreamConfig::default_failure_threshold")]
    pub failure_threshold: u32,
    /// Seconds the breaker stays open before one request probes the upstream again.
    #[serde(default = "UpstreamConfig::default_cool_down")]
    pub cool_down_secs: u64,
}

impl UpstreamConfig {
    fn default_max_concurrency() -> u32 {
        16
    }
    fn default_connect_timeout() -> u64 {
        5
    }
    fn default_first_byte_timeout() -> u64 {
        300
    }
    fn default_idle_timeout() -> u64 {
        60
    }
    fn default_total_timeout() -> u64 {
        1800
    }
    fn default_max_answer_bytes() -> ByteSize {
        ByteSize::Bytes(DEFAULT_UPSTREAM_MAX_ANSWER_BYTES)
    }
    fn default_failure_threshold() -> u32 {
        5
    }
    fn default_cool_down() -> u64 {
        30
    }

    /// An upstream with every optional key at its default.
    pub fn new(name: &str, socket: &str, model: &str) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            socket: socket.into(),
            model: model.into(),
            max_concurrency: Self::default_max_concurrency(),
            connect_timeout_secs: Self::default_connect_timeout(),
            first_byte_timeout_secs: Self::default_first_byte_timeout(),
            idle_timeout_secs: Self::default_idle_timeout(),
            total_timeout_secs: Self::default_total_timeout(),
            max_answer_bytes: Self::default_max_answer_bytes(),
            failure_threshold: Self::default_failure_threshold(),
            cool_down_secs: Self::default_cool_down(),
        }
    }

    /// Most bytes one answer may send.
    pub fn answer_limit(&self) -> u64 {
        self.max_answer_bytes
            .resolve(|| DEFAULT_UPSTREAM_MAX_ANSWER_BYTES)
    }

    /// Checks one entry; the message names it and the key to fix.
    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        if !valid_model_name(name) {
            return Err(format!(
                "upstreams: name {name:?} must match ^[a-z0-9][a-z0-9._:-]{{0,63}}$"
            ));
        }
        if let Some(why) = not_a_unix_socket_path(&self.socket) {
            return Err(format!(
                "upstreams.{name}: socket = {:?} {why}; inhouse never opens a network \
                 connection: give the absolute path of the upstream's Unix socket (e.g. \
                 /run/vllm/vllm.sock), and bring a remote one in with an SSH or stunnel \
                 forwarded socket (see docs/ADMIN.md, \"Upstreams\")",
                self.socket
            ));
        }
        if self.model.is_empty()
            || self.model.len() > 256
            || self.model.chars().any(|c| c.is_control())
        {
            return Err(format!(
                "upstreams.{name}: model must be the upstream's model id (1 to 256 printable \
                 characters)"
            ));
        }
        if !(1..=4096).contains(&self.max_concurrency) {
            return Err(format!(
                "upstreams.{name}: max-concurrency = {} (must be 1..=4096)",
                self.max_concurrency
            ));
        }
        for (key, v) in [
            ("connect-timeout-secs", self.connect_timeout_secs),
            ("first-byte-timeout-secs", self.first_byte_timeout_secs),
            ("idle-timeout-secs", self.idle_timeout_secs),
            ("total-timeout-secs", self.total_timeout_secs),
            ("failure-threshold", u64::from(self.failure_threshold)),
            ("cool-down-secs", self.cool_down_secs),
        ] {
            if v == 0 || v > 86_400 {
                return Err(format!("upstreams.{name}: {key} = {v} (must be 1..=86400)"));
            }
        }
        if self.answer_limit() < 4096 {
            return Err(format!(
                "upstreams.{name}: max-answer-bytes must be at least 4KiB"
            ));
        }
        Ok(())
    }
}

/// Why `socket` is not the absolute path of a Unix socket, when it is not: a URL, a
/// `host:port`, or a relative path.
pub fn not_a_unix_socket_path(socket: &str) -> Option<&'static str> {
    let looks_like_host_port = socket.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    });
    if socket.contains("://") {
        Some("is a URL, not a Unix socket path")
    } else if !socket.starts_with('/') && looks_like_host_port {
        Some("looks like a TCP address (host:port)")
    } else if !socket.starts_with('/') {
        Some("is not an absolute path")
    } else if socket.contains('\0') || socket.len() > 107 {
        Some("is not a usable socket path (NUL, or longer than 107 bytes)")
    } else {
        None
    }
}

/// How the daemon runs toolchain jobs (see [`crate::jobs`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct JobsConfig {
    /// The `inhouse-quantize` binary. Absent: the one next to the daemon's own executable.
    pub toolchain_binary: Option<PathBuf>,
    /// Keep a job's training data (its `data/` folder under `state-dir/jobs/work/ID/`) after the
    /// job ends. Off by default: the data a client uploaded is deleted when its job ends, so it
    /// is on disk (mode 0600, in clear, because the toolchain reads it) only while it is needed.
    pub keep_data: bool,
    /// Jobs whose processes run at once; later ones wait, queued.
    pub max_concurrent: u32,
    /// Niceness of job processes (0 to 19; 0 runs them at the daemon's priority), so that
    /// training never slows serving down much.
    pub nice: u32,
    /// Largest dataset upload (`POST /admin/jobs/data`), bytes or with a unit.
    pub max_data_bytes: ByteSize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            toolchain_binary: None,
            keep_data: false,
            max_concurrent: 1,
            nice: 10,
            max_data_bytes: ByteSize::Bytes(DEFAULT_MAX_DATA_BYTES),
        }
    }
}

impl JobsConfig {
    /// Largest dataset upload, bytes.
    pub fn data_size_limit(&self) -> u64 {
        self.max_data_bytes.resolve(|| DEFAULT_MAX_DATA_BYTES)
    }
}

/// Limits on what one request, one caller and all connections together may use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LimitsConfig {
    /// Largest request body, bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in a body (deeper: 400).
    pub max_json_depth: usize,
    /// Most messages in one chat request.
    pub max_messages: usize,
    /// Most tools offered in one request.
    pub max_tools: usize,
    /// Largest JSON schema (a tool's parameters, a response format), serialized bytes.
    pub max_schema_bytes: usize,
    /// Most choices (`n`) in one request; a model also refuses more than its `slots` (the
    /// choices decode together, one slot each).
    pub max_choices: u32,
    /// Most alternatives per token (`top_logprobs`), at most 20.
    pub max_top_logprobs: u32,
    /// Open connections at most; further ones are closed at once.
    pub max_connections: usize,
    /// Open connections one uid may hold (further ones from it are closed at once).
    pub max_connections_per_uid: usize,
    /// A request's headers must arrive within this many seconds; also the idle keep-alive limit.
    pub header_timeout_secs: u64,
    /// A request's body must arrive within this many seconds (slower: 408).
    pub body_timeout_secs: u64,
    /// Requests one uid may have running at once (more: 429).
    pub per_uid_concurrency: u32,
    /// Requests one uid may start per minute (more: 429 with Retry-After).
    pub per_uid_per_minute: u32,
    /// On SIGTERM, seconds open requests get to finish before they are cancelled.
    pub shutdown_deadline_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 2 << 20,
            max_json_depth: 32,
            max_messages: 256,
            max_tools: 128,
            max_schema_bytes: 64 << 10,
            max_choices: 8,
            max_top_logprobs: 20,
            max_connections: 1024,
            max_connections_per_uid: 256,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            per_uid_concurrency: 8,
            per_uid_per_minute: 600,
            shutdown_deadline_secs: 30,
        }
    }
}

impl LimitsConfig {
    /// Time allowed to receive a request body.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
}

/// Which local users and groups hold which role. A caller's groups are its peer gid plus the
/// supplementary groups the group database gives its uid.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RolesConfig {
    /// Groups whose members may run inference and read their own history.
    pub user_groups: Vec<String>,
    /// Groups whose members administer the daemon (models, keys, erasure, audit).
    pub admin_groups: Vec<String>,
    /// Groups whose members may read, verify and export the audit log (never prompt text).
    pub auditor_groups: Vec<String>,
    /// Uids with the user role.
    pub user_uids: Vec<u32>,
    /// Uids with the admin role.
    pub admin_uids: Vec<u32>,
    /// Uids with the auditor role.
    pub auditor_uids: Vec<u32>,
}

impl Default for RolesConfig {
    fn default() -> Self {
        RolesConfig {
            user_groups: vec!["inhouse".into()],
            admin_groups: vec!["inhouse-admin".into()],
            auditor_groups: vec!["inhouse-auditor".into()],
            user_uids: vec![],
            admin_uids: vec![0],
            auditor_uids: vec![],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            models: BTreeMap::new(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2)
                .min(16),
            ctx_size: 4096,
            gpu_layers: GpuLayersSetting::Count(0),
            memory_budget: ByteSize::Auto,
            keep_alive_secs: 300,
            require_signed_models: false,
            trusted_keys_dir: PathBuf::from(DEFAULT_TRUSTED_KEYS_DIR),
            max_model_bytes: ByteSize::Bytes(DEFAULT_MAX_MODEL_BYTES),
            default_max_tokens: 512,
            queue_size: 64,
            slots: 4,
            cache_reuse_across_users: false,
            prefill_chunk: 128,
            deterministic_batching: true,
            roles: RolesConfig::default(),
            key_file: None,
            retention_days: None,
            retention_check_secs: 3600,
            socket_group: None,
            limits: LimitsConfig::default(),
            jobs: JobsConfig::default(),
            upstreams: Vec::new(),
            speculative: Default::default(),
            knowledge: Default::default(),
        }
    }
}

/// A configuration problem, explained so that an admin knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with the line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Model names are checked by one rule, shared with request validation.
pub use inhouse_formats::validate::valid_model_name;

/// Parses a `--model` argument: `NAME=PATH`, or `PATH` whose name is the file stem, lower-cased.
pub fn parse_model_arg(arg: &str) -> Result<(String, PathBuf), ConfigError> {
    let (name, path) = match arg.split_once('=') {
        Some((name, path)) => (name.to_string(), PathBuf::from(path)),
        None => {
            let path = PathBuf::from(arg);
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| {
                    ConfigError::Invalid(format!("--model {arg}: cannot take a name from the path"))
                })?
                .to_lowercase();
            (stem, path)
        }
    };
    if !valid_model_name(&name) {
        return Err(ConfigError::Invalid(format!(
            "--model {arg}: model name {name:?} must match ^[a-z0-9][a-z0-9._:-]{{0,63}}$ \
             (give one explicitly as NAME=PATH)"
        )));
    }
    Ok((name, path))
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text over the defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// How each model's engine runs llama.cpp. `gpu_layers` is 0 here: the pool sets it per
    /// model from [`Config::pool_config`]'s policy.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            threads: self.threads,
            ctx_size: self.ctx_size,
            gpu_layers: 0,
            queue_size: self.queue_size,
            slots: self.slots,
            cache_reuse_across_users: self.cache_reuse_across_users,
            prefill_chunk: self.prefill_chunk,
            deterministic_batching: self.deterministic_batching,
            template_limits: inhouse_formats::template::TemplateLimits::default(),
            speculative: self.speculative.clone(),
        }
    }

    /// How the model pool loads, places and evicts models.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            engine: self.engine_config(),
            gpu_layers: match self.gpu_layers {
                GpuLayersSetting::Auto => GpuLayers::Auto,
                GpuLayersSetting::Count(n) => GpuLayers::Fixed(n),
            },
            budget: self.memory_budget.resolve(default_memory_budget),
            keep_alive: Some(Duration::from_secs(self.keep_alive_secs)),
            busy_wait: MODEL_BUSY_WAIT,
        }
    }

    /// Largest model file an import accepts, bytes.
    pub fn model_size_limit(&self) -> u64 {
        self.max_model_bytes.resolve(|| DEFAULT_MAX_MODEL_BYTES)
    }

    /// What a request is validated against. No request may ask for more tokens than a
    /// context holds.
    pub fn limits(&self) -> Limits {
        Limits {
            default_max_tokens: self.default_max_tokens,
            max_tokens_cap: self.ctx_size,
            max_json_depth: self.limits.max_json_depth,
            max_messages: self.limits.max_messages,
            max_tools: self.limits.max_tools,
            max_schema_bytes: self.limits.max_schema_bytes,
            max_n: self.limits.max_choices,
            max_top_logprobs: self.limits.max_top_logprobs.min(20) as u8,
        }
    }

    /// How often the retention purge runs.
    pub fn retention_interval(&self) -> Duration {
        Duration::from_secs(self.retention_check_secs)
    }

    /// Checks ranges and consistency; the message says which key to fix.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.threads == 0 || self.threads > 256 {
            return bad(format!("threads = {} (must be 1..=256)", self.threads));
        }
        if !(64..=1 << 20).contains(&self.ctx_size) {
            return bad(format!(
                "ctx-size = {} (must be 64..=1048576)",
                self.ctx_size
            ));
        }
        if self.default_max_tokens == 0 {
            return bad("default-max-tokens must be at least 1".into());
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.max-body-bytes", l.max_body_bytes as u64),
            ("limits.max-json-depth", l.max_json_depth as u64),
            ("limits.max-messages", l.max_messages as u64),
            ("limits.max-tools", l.max_tools as u64),
            ("limits.max-schema-bytes", l.max_schema_bytes as u64),
            ("limits.max-choices", u64::from(l.max_choices)),
            ("limits.max-connections", l.max_connections as u64),
            (
                "limits.max-connections-per-uid",
                l.max_connections_per_uid as u64,
            ),
            ("limits.header-timeout-secs", l.header_timeout_secs),
            ("limits.body-timeout-secs", l.body_timeout_secs),
            (
                "limits.per-uid-concurrency",
                u64::from(l.per_uid_concurrency),
            ),
            ("limits.per-uid-per-minute", u64::from(l.per_uid_per_minute)),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if l.max_top_logprobs > 20 {
            return bad(format!(
                "limits.max-top-logprobs = {} (must be 0..=20)",
                l.max_top_logprobs
            ));
        }
        if self.retention_days == Some(0) {
            return bad("retention-days must be at least 1 (leave it out to keep records)".into());
        }
        if self.retention_check_secs == 0 {
            return bad("retention-check-secs must be at least 1".into());
        }
        if self.queue_size == 0 {
            return bad("queue-size must be at least 1".into());
        }
        if !(1..=64).contains(&self.slots) {
            return bad(format!("slots = {} (must be 1..=64)", self.slots));
        }
        if !(3..=512).contains(&self.prefill_chunk) {
            return bad(format!(
                "prefill-chunk = {} (must be 3..=512)",
                self.prefill_chunk
            ));
        }
        if !(1..=16).contains(&self.jobs.max_concurrent) {
            return bad(format!(
                "jobs.max-concurrent = {} (must be 1..=16)",
                self.jobs.max_concurrent
            ));
        }
        if self.jobs.nice > 19 {
            return bad(format!("jobs.nice = {} (must be 0..=19)", self.jobs.nice));
        }
        if self.jobs.max_data_bytes == ByteSize::Auto {
            return bad("jobs.max-data-bytes must be a size, not \"auto\"".into());
        }
        for name in self.models.keys() {
            if !valid_model_name(name) {
                return bad(format!(
                    "model name {name:?} must match ^[a-z0-9][a-z0-9._:-]{{0,63}}$"
                ));
            }
        }
        self.speculative.check().map_err(ConfigError::Invalid)?;
        self.knowledge.check().map_err(ConfigError::Invalid)?;
        let mut upstream_names = std::collections::BTreeSet::new();
        for u in &self.upstreams {
            u.check().map_err(ConfigError::Invalid)?;
            if self.models.contains_key(&u.name) {
                return bad(format!(
                    "upstreams.{0}: the name {0:?} is also a local model in [models]; an \
                     upstream needs a name of its own",
                    u.name
                ));
            }
            if !upstream_names.insert(u.name.as_str()) {
                return bad(format!("upstreams: the name {:?} is used twice", u.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().check().unwrap();
    }

    #[test]
    fn the_shipped_config_parses_and_documents_only_real_keys() {
        let shipped = include_str!("../packaging/inhouse.toml");
        Config::from_toml(shipped).unwrap();
        // Uncomment every documented `key = value` and `[table]` line: all must be known keys.
        let uncommented: String = shipped
            .lines()
            .map(|l| {
                let Some(rest) = l.strip_prefix("# ") else {
                    return l.to_string();
                };
                let is_key = rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
                let is_table = rest.starts_with('[') && rest.ends_with(']');
                if is_key || is_table {
                    rest.split(" #").next().unwrap_or(rest).to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        c.check().unwrap();
        assert_eq!(c.limits.max_connections, 1024);
        assert_eq!(c.roles.admin_uids, vec![0]);
        assert_eq!(c.jobs.max_concurrent, JobsConfig::default().max_concurrent);
        assert!(!c.jobs.keep_data);
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(
            c.upstreams[0],
            UpstreamConfig::new(
                "big",
                "/run/vllm/vllm.sock",
                "meta-llama/Llama-3.1-70B-Instruct"
            )
        );
    }

    #[test]
    fn upstreams_parse_with_defaults_and_are_checked() {
        let c = Config::from_toml(
            "[[upstreams]]\nname = \"big\"\nsocket = \"/run/v/v.sock\"\nmodel = \"org/M\"\n\
             max-concurrency = 64\nidle-timeout-secs = 5\nmax-answer-bytes = \"1MiB\"\n",
        )
        .unwrap();
        c.check().unwrap();
        let u = &c.upstreams[0];
        assert_eq!((u.max_concurrency, u.idle_timeout_secs), (64, 5));
        assert_eq!(u.answer_limit(), 1 << 20);
        assert_eq!(u.connect_timeout_secs, 5);
        assert_eq!(u.failure_threshold, 5);

        let with = |u: UpstreamConfig| Config {
            upstreams: vec![u],
            ..Config::default()
        };
        for socket in [
            "10.0.0.1:8000",
            "gpu-1:8000",
            "http://x/v1",
            "tcp://x:1",
            "rel.sock",
        ] {
            let err = with(UpstreamConfig::new("big", socket, "m"))
                .check()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("upstreams.big") && err.contains("Unix socket"),
                "{err}"
            );
        }
        let mut u = UpstreamConfig::new("big", "/run/a:b.sock", "m");
        with(u.clone()).check().unwrap();
        u.max_concurrency = 0;
        assert!(with(u)
            .check()
            .unwrap_err()
            .to_string()
            .contains("max-concurrency"));
        let mut clash = with(UpstreamConfig::new("smol", "/run/a.sock", "m"));
        clash.models.insert("smol".into(), PathBuf::from("/m.gguf"));
        assert!(clash
            .check()
            .unwrap_err()
            .to_string()
            .contains("also a local model"));
        let twice = Config {
            upstreams: vec![
                UpstreamConfig::new("big", "/run/a.sock", "m"),
                UpstreamConfig::new("big", "/run/b.sock", "m"),
            ],
            ..Config::default()
        };
        assert!(twice.check().unwrap_err().to_string().contains("twice"));
        let err = Config::from_toml(
            "[[upstreams]]\nname = \"big\"\nsocket = \"/a.sock\"\nmodel = \"m\"\nport = 1\n",
        )
        .unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("thread = 4").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn file_values_override_defaults() {
        let c = Config::from_toml(
            "socket = \"/tmp/x.sock\"\nctx-size = 2048\n[models]\nsmol = \"/m/s.gguf\"\n",
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.ctx_size, 2048);
        assert_eq!(c.models["smol"], PathBuf::from("/m/s.gguf"));
        assert_eq!(c.default_max_tokens, Config::default().default_max_tokens);
    }

    #[test]
    fn model_args() {
        let (n, p) = parse_model_arg("/x/SmolLM2-135M.Q4_1.gguf").unwrap();
        assert_eq!(n, "smollm2-135m.q4_1");
        assert_eq!(p, PathBuf::from("/x/SmolLM2-135M.Q4_1.gguf"));
        let (n, _) = parse_model_arg("smol=/x/a.gguf").unwrap();
        assert_eq!(n, "smol");
        assert!(parse_model_arg("../etc=/x").is_err());
        assert!(parse_model_arg("Big=/x").is_err());
    }

    #[test]
    fn out_of_range_values_are_explained() {
        let c = Config {
            threads: 0,
            ..Config::default()
        };
        assert!(c.check().unwrap_err().to_string().contains("threads"));
        // Below three, a prompt could wait forever behind generating requests.
        let c = Config {
            prefill_chunk: 2,
            ..Config::default()
        };
        assert!(c.check().unwrap_err().to_string().contains("3..=512"));
    }

    #[test]
    fn components_take_their_settings_from_the_config() {
        let c = Config::from_toml(
            "ctx-size = 2048\nslots = 8\ngpu-layers = \"auto\"\nmemory-budget = \"1GiB\"\n\
             keep-alive-secs = 7\nmax-model-bytes = \"auto\"\n\
             [limits]\nheader-timeout-secs = 3\nmax-messages = 9\n",
        )
        .unwrap();
        let e = c.engine_config();
        assert_eq!((e.ctx_size, e.slots, e.gpu_layers), (2048, 8, 0));
        let p = c.pool_config();
        assert!(matches!(p.gpu_layers, GpuLayers::Auto));
        assert_eq!(p.budget, 1 << 30);
        assert_eq!(p.keep_alive, Some(Duration::from_secs(7)));
        assert_eq!(p.engine.prefill_chunk, Config::default().prefill_chunk);
        assert_eq!(c.model_size_limit(), DEFAULT_MAX_MODEL_BYTES);
        let l = c.limits();
        assert_eq!((l.max_tokens_cap, l.max_messages), (2048, 9));
        assert_eq!(
            Config::default().jobs.data_size_limit(),
            DEFAULT_MAX_DATA_BYTES
        );
    }
}
