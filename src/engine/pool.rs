//! The models the daemon serves, and which of them are in memory.
//!
//! A model is *available* when the configuration names its file or the model store holds it
//! (and `base+adapter` for each stored LoRA adapter); it is *resident* when an engine
//! ([`LlamaEngine`], one OS thread per resident name) has it loaded. The pool:
//! - loads a model on its first request, while that request and later ones for the same model
//!   wait (one load at a time; requests for resident models are not held up);
//! - estimates the memory first ([`crate::models::estimate`]) and refuses a model that cannot fit
//!   the budget even alone, with the numbers in the message;
//! - makes room by unloading the least recently used idle model (never one with a request
//!   running; if every resident model is busy the load waits, then gives up with `model_busy`);
//! - unloads a model idle for longer than its keep-alive (configured models are kept until
//!   evicted for room);
//! - checks a stored model's file again before each load (digest, and signature when
//!   `require-signed-models` is on): the store's files are trusted only as far as they verify.
//!
//! A `base+adapter` name is its own resident engine: the base weights loaded once more with the
//! adapter applied to its context (llama.cpp applies adapters per context, and one context per
//! name keeps batching and cache reuse exactly as for any model). Removing the adapter unloads
//! that engine; the base keeps serving.

use super::llama::{EngineConfig, LlamaEngine, ModelSpec};
use super::{BoxFuture, Embeddings, Engine, EngineError, EventStream, GenerateRequest, ModelInfo};
use crate::metrics::Metrics;
use crate::models::estimate::{self, Estimate};
use crate::models::{split_adapter, Kind, Manifest, ModelStore};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How many layers to offload to a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    /// As many as the free device memory allows, with a safety margin; 0 without a GPU.
    Auto,
    /// This many (llama.cpp caps it at the model's layers + 1).
    Fixed(u32),
}

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Settings of every engine (threads, context, slots…); `gpu_layers` is set per model.
    pub engine: EngineConfig,
    /// GPU offload policy.
    pub gpu_layers: GpuLayers,
    /// Most memory the resident models may take together (estimated), bytes.
    pub budget: u64,
    /// How long a model loaded on demand stays after its last request; `None`: until evicted.
    pub keep_alive: Option<Duration>,
    /// How long a load waits for busy models to finish before giving up.
    pub busy_wait: Duration,
}

/// A model in memory, as `models ps` and `/api/ps` report it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LoadedModel {
    /// What the model is.
    #[serde(flatten)]
    pub info: ModelInfo,
    /// Where its layers live: `cpu`, `gpu` or `cpu+gpu`.
    pub placement: String,
    /// Estimated memory, bytes.
    pub memory: Estimate,
    /// Requests running now.
    pub active_requests: usize,
    /// Seconds since its last request ended (0 while busy).
    pub idle_secs: u64,
    /// Seconds until it unloads if unused; `None`: kept until evicted for room.
    pub expires_in_secs: Option<u64>,
    /// Draft tokens proposed by speculative decoding since the daemon started (0 without it).
    #[serde(default)]
    pub drafted_tokens: u64,
    /// Draft tokens the model accepted.
    #[serde(default)]
    pub accepted_tokens: u64,
}

/// What the pool knows of an available name before loading it.
#[derive(Debug, Clone)]
struct Entry {
    spec: ModelSpec,
    /// The store manifests to check before loading: the model's and the adapter's.
    manifests: Vec<Manifest>,
    info: ModelInfo,
    estimate: Estimate,
    /// Configured models stay until evicted; models loaded on demand get the keep-alive.
    configured: bool,
}

struct Resident {
    engine: LlamaEngine,
    info: ModelInfo,
    estimate: Estimate,
    active: AtomicUsize,
    last_used: Mutex<Instant>,
    /// `None`: stays until evicted for room.
    keep_alive: Mutex<Option<Duration>>,
}

impl Resident {
    fn keep_alive(&self) -> Option<Duration> {
        *self.keep_alive.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request's hold on a resident model: while it lives the model is not unloaded.
struct Use(Arc<Resident>);

impl Drop for Use {
    fn drop(&mut self) {
        *self.0.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// The serving engine of the daemon: every available model, loaded on demand within a budget.
pub struct ModelPool {
    me: Weak<ModelPool>,
    cfg: PoolConfig,
    configured: BTreeMap<String, PathBuf>,
    store: Option<Arc<ModelStore>>,
    metrics: Arc<Metrics>,
    resident: Mutex<BTreeMap<String, Arc<Resident>>>,
    load_lock: tokio::sync::Mutex<()>,
    /// Parsed GGUF headers by path, so that listing models does not re-read files.
    described: Mutex<HashMap<PathBuf, (std::time::SystemTime, ModelInfo, Estimate)>>,
    evictions: AtomicU64,
    /// Keep-alive set per model by requests (Ollama's `keep_alive`), over the configured one.
    keep_alive_set: Mutex<HashMap<String, Option<Duration>>>,
}

impl ModelPool {
    fn keep_alive_overrides(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Duration>>> {
        self.keep_alive_set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how long `name` stays in memory after its last request (`None`: until evicted),
    /// now if it is resident and for its next loads. Like Ollama's `keep_alive`: 0 unloads it
    /// as soon as it is idle.
    pub fn set_keep_alive(&self, name: &str, keep_alive: Option<Duration>) {
        self.keep_alive_overrides()
            .insert(name.to_string(), keep_alive);
        if let Some(r) = self.resident().get(name) {
            *r.keep_alive.lock().unwrap_or_else(|e| e.into_inner()) = keep_alive;
        }
    }

    /// A pool of the configured models and the store's; nothing is loaded yet.
    pub fn new(
        cfg: PoolConfig,
        configured: BTreeMap<String, PathBuf>,
        store: Option<Arc<ModelStore>>,
    ) -> Result<Arc<Self>, EngineError> {
        let cpu = super::cpu_backend().map_err(EngineError::Inference)?;
        let names: Vec<String> = configured.keys().cloned().collect();
        let metrics = Arc::new(Metrics::new(&names, &cpu.variant));
        Ok(Arc::new_cyclic(|me| ModelPool {
            me: me.clone(),
            cfg,
            configured,
            store,
            metrics,
            resident: Mutex::new(BTreeMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
            described: Mutex::new(HashMap::new()),
            evictions: AtomicU64::new(0),
            keep_alive_set: Mutex::new(HashMap::new()),
        }))
    }

    /// The model store, when the daemon has one.
    pub fn store(&self) -> Option<&Arc<ModelStore>> {
        self.store.as_ref()
    }

    /// Loads the configured models that fit the budget together, in name order; the rest load on
    /// demand. A configured model that cannot fit even alone is an error.
    pub async fn preload(&self) -> Result<(), EngineError> {
        for name in self.configured.keys() {
            let entry = self.resolve(name)?;
            self.check_fits(&entry)?;
            let used = self.used();
            if used + entry.estimate.total > self.cfg.budget {
                tracing::info!(model = %name, "not preloaded: the memory budget is taken; it loads on its first request");
                continue;
            }
            drop(self.ensure_loaded(name).await?);
        }
        Ok(())
    }

    fn resident(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Resident>>> {
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn used(&self) -> u64 {
        self.resident().values().map(|r| r.estimate.total).sum()
    }

    /// Whether `name` is a model this pool can serve (configured, stored, or `base+adapter`).
    pub fn serves(&self, name: &str) -> bool {
        self.resolve(name).is_ok()
    }

    /// Models unloaded to make room since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }

    /// The settings every engine of the pool runs with.
    pub fn engine_config(&self) -> &EngineConfig {
        &self.cfg.engine
    }

    /// The memory budget, bytes.
    pub fn budget(&self) -> u64 {
        self.cfg.budget
    }

    fn acquire(&self, name: &str) -> Option<Use> {
        let map = self.resident();
        let r = map.get(name)?;
        r.active.fetch_add(1, Relaxed);
        Some(Use(r.clone()))
    }

    /// Reads a file's header (cached by modification time) into what the pool reports.
    fn describe(&self, name: &str, path: &PathBuf) -> Result<(ModelInfo, Estimate), EngineError> {
        let load_err = |reason: String| EngineError::Load {
            name: name.to_string(),
            path: path.display().to_string(),
            reason,
        };
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| load_err(e.to_string()))?;
        if let Some((t, info, est)) = self
            .described
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            if *t == mtime {
                let mut info = info.clone();
                info.name = name.to_string();
                return Ok((info, *est));
            }
        }
        let f = inhouse_formats::gguf::open(path)
            .map_err(|e| load_err(format!("not a valid GGUF file: {e}")))?;
        let arch = f.architecture().unwrap_or("unknown").to_string();
        let n_ctx_train = f.context_length().unwrap_or(0) as u32;
        let e = &self.cfg.engine;
        let info = ModelInfo {
            name: name.to_string(),
            n_params: f.n_params(),
            size_bytes: f.file_size().saturating_sub(f.data_offset()),
            n_ctx_train,
            n_ctx: e.ctx_size.min(n_ctx_train.max(64)),
            n_embd: f.get_u64(&format!("{arch}.embedding_length")).unwrap_or(0) as u32,
            chat_template: f.chat_template().map(|_| "gguf".to_string()),
            gpu_layers: 0,
            n_layers: f.get_u64(&format!("{arch}.block_count")).unwrap_or(0) as u32,
            loaded_at: 0,
            architecture: arch,
        };
        // The cache's width; F16 wherever layers may go to a GPU (decided later, from this
        // estimate), so that it errs high.
        let gpu = cfg!(any(feature = "cuda", feature = "vulkan"))
            && !matches!(self.cfg.gpu_layers, GpuLayers::Fixed(0));
        let kv = super::llama::kv_bytes_per_32(e.deterministic_batching, gpu);
        let est = estimate::estimate(&f, e.ctx_size, e.slots, kv);
        self.described
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone(), (mtime, info.clone(), est));
        Ok((info, est))
    }

    /// What a requested name refers to, with the draft model it speculates with when
    /// `[speculative]` gives it one: the draft is loaded with it, on its engine thread, and its
    /// memory counts in the model's estimate.
    fn resolve(&self, name: &str) -> Result<Entry, EngineError> {
        let mut entry = self.resolve_one(name)?;
        let spec = self.cfg.engine.speculative.for_model(name);
        if spec.mode != super::speculative::Mode::Draft {
            return Ok(entry);
        }
        let Some(draft_name) = spec.draft else {
            return Ok(entry);
        };
        let draft = self
            .resolve_one(&draft_name)
            .map_err(|e| EngineError::Load {
                name: name.to_string(),
                path: entry.spec.path.display().to_string(),
                reason: format!("its draft model {draft_name:?} cannot be used: {e}"),
            })?;
        entry.estimate.weights += draft.estimate.weights;
        entry.estimate.kv_cache += draft.estimate.kv_cache;
        entry.estimate.compute = entry.estimate.compute.max(draft.estimate.compute);
        entry.estimate.total =
            entry.estimate.weights + entry.estimate.kv_cache + entry.estimate.compute;
        entry.manifests.extend(draft.manifests);
        entry.spec.draft = Some(super::llama::DraftSpec {
            name: draft_name,
            path: draft.spec.path,
        });
        Ok(entry)
    }

    /// What a requested name refers to: a configured model, a stored one, or `base+adapter`.
    fn resolve_one(&self, name: &str) -> Result<Entry, EngineError> {
        let unknown = || EngineError::UnknownModel(name.to_string());
        let (base, adapter) = split_adapter(name);
        let mut manifests = Vec::new();
        let (path, configured) = if let Some(p) = self.configured.get(base) {
            (p.clone(), adapter.is_none())
        } else {
            let store = self.store.as_ref().ok_or_else(unknown)?;
            let m = store.get(base).map_err(|_| unknown())?;
            if m.kind != Kind::Model {
                return Err(unknown());
            }
            let p = store.blob_path(&m.digest);
            manifests.push(m);
            (p, false)
        };
        let adapter_path = match adapter {
            None => None,
            Some(a) => {
                let store = self.store.as_ref().ok_or_else(unknown)?;
                let m = store.get(a).map_err(|_| unknown())?;
                if m.kind != Kind::Adapter || m.base.as_deref() != Some(base) {
                    return Err(unknown());
                }
                let p = store.blob_path(&m.digest);
                manifests.push(m);
                Some(p)
            }
        };
        let (info, mut est) = self.describe(name, &path)?;
        if let Some(a) = &adapter_path {
            let size = std::fs::metadata(a).map(|m| m.len()).unwrap_or(0);
            est.weights += size;
            est.total += size;
        }
        Ok(Entry {
            spec: ModelSpec {
                name: name.to_string(),
                path,
                adapter: adapter_path,
                draft: None,
            },
            manifests,
            info,
            estimate: est,
            configured,
        })
    }

    fn check_fits(&self, entry: &Entry) -> Result<(), EngineError> {
        let est = entry.estimate;
        if est.total > self.cfg.budget {
            return Err(EngineError::DoesNotFit {
                model: entry.spec.name.clone(),
                need: estimate::mib(est.total),
                detail: format!(
                    "weights {} + KV cache {} for {} slots of {} tokens + compute {}",
                    estimate::mib(est.weights),
                    estimate::mib(est.kv_cache),
                    self.cfg.engine.slots,
                    entry.info.n_ctx,
                    estimate::mib(est.compute)
                ),
                budget: estimate::mib(self.cfg.budget),
            });
        }
        Ok(())
    }

    /// Returns a hold on `name`, loading it first if needed (making room, checking the file).
    async fn ensure_loaded(&self, name: &str) -> Result<Use, EngineError> {
        if let Some(u) = self.acquire(name) {
            return Ok(u);
        }
        let _loading = self.load_lock.lock().await;
        if let Some(u) = self.acquire(name) {
            return Ok(u);
        }
        let entry = self.resolve(name)?;
        self.check_fits(&entry)?;
        self.make_room(name, entry.estimate.total).await?;
        // A load that fails because `models rm` took the files meanwhile is an unknown model.
        let gone = |e: EngineError| {
            if self.still_stored(&entry.manifests) {
                e
            } else {
                EngineError::UnknownModel(name.to_string())
            }
        };
        // Check the stored files again: a blob changed on disk since import is refused.
        if let Some(store) = self.store.clone() {
            let manifests = entry.manifests.clone();
            let model = name.to_string();
            tokio::task::spawn_blocking(move || {
                for m in &manifests {
                    store.verify_for_load(m).map_err(|e| EngineError::Refused {
                        model: model.clone(),
                        reason: e.to_string(),
                    })?;
                }
                Ok::<(), EngineError>(())
            })
            .await
            .map_err(|e| EngineError::Inference(format!("integrity check panicked: {e}")))?
            .map_err(gone)?;
        }
        let mut ecfg = self.cfg.engine.clone();
        ecfg.gpu_layers = gpu_layers_for(self.cfg.gpu_layers, &entry);
        let spec = entry.spec.clone();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let engine =
            tokio::task::spawn_blocking(move || LlamaEngine::start(vec![spec], ecfg, metrics))
                .await
                .map_err(|e| EngineError::Inference(format!("model load panicked: {e}")))?
                .map_err(gone)?;
        let mut info = engine
            .models()
            .first()
            .cloned()
            .unwrap_or_else(|| entry.info.clone());
        info.name = name.to_string();
        tracing::info!(
            model = %name,
            arch = %info.architecture,
            gpu_layers = info.gpu_layers,
            estimate_mib = entry.estimate.total >> 20,
            secs = started.elapsed().as_secs_f32(),
            "model loaded"
        );
        let resident = Arc::new(Resident {
            engine,
            info,
            estimate: entry.estimate,
            active: AtomicUsize::new(1),
            last_used: Mutex::new(Instant::now()),
            keep_alive: Mutex::new(self.keep_alive_overrides().get(name).copied().unwrap_or(
                if entry.configured {
                    None
                } else {
                    self.cfg.keep_alive
                },
            )),
        });
        // Registered only if the store still holds the same files: a `models rm` (or a
        // replacement) during the load has already run `forget`, which could not see this
        // engine yet. Checked under the map's lock, which `forget` also takes.
        let registered = {
            let mut map = self.resident();
            let still = self.still_stored(&entry.manifests);
            if still {
                map.insert(name.to_string(), resident.clone());
            }
            still
        };
        if !registered {
            unload(resident).await;
            return Err(EngineError::UnknownModel(name.to_string()));
        }
        Ok(Use(resident))
    }

    /// Whether every stored file a load used is still in the store under the same digest.
    fn still_stored(&self, manifests: &[Manifest]) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        manifests
            .iter()
            .all(|m| store.get(&m.name).is_ok_and(|now| now.digest == m.digest))
    }

    /// Unloads least recently used idle models until `need` more bytes fit the budget.
    async fn make_room(&self, for_model: &str, need: u64) -> Result<(), EngineError> {
        let deadline = Instant::now() + self.cfg.busy_wait;
        loop {
            let victim = {
                let mut map = self.resident();
                let used: u64 = map.values().map(|r| r.estimate.total).sum();
                if used + need <= self.cfg.budget {
                    return Ok(());
                }
                let lru = map
                    .iter()
                    .filter(|(_, r)| r.active.load(Relaxed) == 0)
                    .min_by_key(|(_, r)| *r.last_used.lock().unwrap_or_else(|e| e.into_inner()))
                    .map(|(n, _)| n.clone());
                lru.and_then(|n| map.remove(&n).map(|r| (n, r)))
            };
            match victim {
                Some((name, r)) => {
                    tracing::info!(model = %name, for_model = %for_model, "unloading the least recently used model to make room");
                    self.evictions.fetch_add(1, Relaxed);
                    unload(r).await;
                }
                None if Instant::now() >= deadline => {
                    return Err(EngineError::Busy(for_model.to_string()))
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Unloads `name` and every `name+adapter` / `base+name` engine, waiting for nothing: their
    /// running requests end with the stream. Used when the store removes a name.
    pub async fn forget(&self, name: &str) {
        let gone: Vec<Arc<Resident>> = {
            let mut map = self.resident();
            let names: Vec<String> = map
                .keys()
                .filter(|n| {
                    let (b, a) = split_adapter(n);
                    *n == name || b == name || a == Some(name)
                })
                .cloned()
                .collect();
            names.iter().filter_map(|n| map.remove(n)).collect()
        };
        for r in gone {
            unload(r).await;
        }
    }

    /// Unloads models idle past their keep-alive; run every second by [`Self::reaper`].
    pub async fn reap(&self) {
        let expired: Vec<(String, Arc<Resident>)> = {
            let mut map = self.resident();
            let names: Vec<String> = map
                .iter()
                .filter(|(_, r)| {
                    r.active.load(Relaxed) == 0
                        && r.keep_alive().is_some_and(|k| {
                            r.last_used
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .elapsed()
                                >= k
                        })
                })
                .map(|(n, _)| n.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| map.remove(&n).map(|r| (n, r)))
                .collect()
        };
        for (name, r) in expired {
            tracing::info!(model = %name, "keep-alive expired; unloading");
            unload(r).await;
        }
    }

    /// Runs [`Self::reap`] every second until the pool is dropped.
    pub fn reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match me.upgrade() {
                    Some(p) => p.reap().await,
                    None => return,
                }
            }
        })
    }

    /// Stops every engine (see [`LlamaEngine::shutdown`]); call before the process exits.
    pub fn shutdown(&self) {
        let all: Vec<Arc<Resident>> = std::mem::take(&mut *self.resident())
            .into_values()
            .collect();
        for r in all {
            r.engine.shutdown();
        }
    }

    /// The resident models.
    pub fn loaded_models(&self) -> Vec<LoadedModel> {
        self.resident()
            .values()
            .map(|r| {
                let active = r.active.load(Relaxed);
                let idle = if active > 0 {
                    0
                } else {
                    r.last_used
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .elapsed()
                        .as_secs()
                };
                LoadedModel {
                    placement: placement(&r.info),
                    memory: r.estimate,
                    active_requests: active,
                    idle_secs: idle,
                    expires_in_secs: r.keep_alive().map(|k| k.as_secs().saturating_sub(idle)),
                    drafted_tokens: self
                        .metrics
                        .model(&r.info.name)
                        .map_or(0, |m| m.drafted_tokens.load(Relaxed)),
                    accepted_tokens: self
                        .metrics
                        .model(&r.info.name)
                        .map_or(0, |m| m.accepted_tokens.load(Relaxed)),
                    info: r.info.clone(),
                }
            })
            .collect()
    }

    /// Every available name with its estimate, resident or not.
    pub fn available(&self) -> Vec<(ModelInfo, Estimate)> {
        let mut names: Vec<String> = self.configured.keys().cloned().collect();
        if let Some(store) = &self.store {
            let all = store.list();
            for m in &all {
                match (m.kind, &m.base) {
                    (Kind::Model, _) if !self.configured.contains_key(&m.name) => {
                        names.push(m.name.clone())
                    }
                    (Kind::Adapter, Some(base)) => names.push(format!("{base}+{}", m.name)),
                    _ => {}
                }
            }
        }
        let resident = self.resident().clone();
        names
            .into_iter()
            .filter_map(|n| match resident.get(&n) {
                Some(r) => Some((r.info.clone(), r.estimate)),
                None => self.resolve(&n).ok().map(|e| (e.info, e.estimate)),
            })
            .collect()
    }

    /// Loads `name` (or finds it resident) in a task of its own: a client that leaves mid-load
    /// must not drop the load lock while the load goes on without it, and the load completes to
    /// serve the next request.
    async fn load_detached(&self, name: &str) -> Result<Use, EngineError> {
        let pool = self.arc()?;
        let name = name.to_string();
        tokio::spawn(async move { pool.ensure_loaded(&name).await })
            .await
            .map_err(|e| EngineError::Inference(format!("model load failed: {e}")))?
    }

    fn arc(&self) -> Result<Arc<ModelPool>, EngineError> {
        self.me.upgrade().ok_or(EngineError::ShuttingDown)
    }
}

async fn unload(r: Arc<Resident>) {
    let _ = tokio::task::spawn_blocking(move || r.engine.shutdown()).await;
}

/// Where a loaded model's layers live: `cpu`, `gpu` (all of them) or `cpu+gpu`.
pub fn placement(info: &ModelInfo) -> String {
    match info.gpu_layers {
        0 => "cpu".into(),
        n if n >= info.n_layers => "gpu".into(),
        _ => "cpu+gpu".into(),
    }
}

/// The GPU devices llama.cpp sees: (description, free bytes).
pub fn gpu_devices() -> Vec<(String, u64)> {
    use llama_cpp_2::LlamaBackendDeviceType as T;
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, T::Gpu | T::IntegratedGpu | T::Accelerator))
        .filter(|d| {
            !d.backend.eq_ignore_ascii_case("cpu") && !d.backend.eq_ignore_ascii_case("blas")
        })
        .map(|d| {
            (
                format!("{} ({})", d.name, d.description),
                d.memory_free as u64,
            )
        })
        .collect()
}

/// Layers to offload: none without a GPU; with `auto`, as many as fit in 90% of the free memory
/// of the first GPU after its KV cache and compute scratch, leaving 512 MiB spare.
fn gpu_layers_for(policy: GpuLayers, entry: &Entry) -> u32 {
    let devices = gpu_devices();
    let Some((_, free)) = devices.first() else {
        return 0;
    };
    match policy {
        GpuLayers::Fixed(n) => n,
        GpuLayers::Auto => auto_layers(*free, &entry.estimate, entry.info.n_layers),
    }
}

/// `gpu-layers = "auto"`: the layers (out of `n_layers` + the output layer) whose weights fit in
/// 90% of `free` device bytes once the KV cache, the compute scratch and 512 MiB are set aside.
pub fn auto_layers(free: u64, est: &Estimate, n_layers: u32) -> u32 {
    let n_layers = u64::from(n_layers.max(1));
    let per_layer = (est.weights / (n_layers + 1)).max(1);
    let usable = (free / 10 * 9).saturating_sub(est.kv_cache + est.compute + (512 << 20));
    (usable / per_layer).min(n_layers + 1) as u32
}

impl Engine for ModelPool {
    fn models(&self) -> Vec<ModelInfo> {
        self.available().into_iter().map(|(i, _)| i).collect()
    }

    fn loaded(&self) -> Vec<LoadedModel> {
        self.loaded_models()
    }

    fn generate(&self, req: GenerateRequest) -> BoxFuture<'_, Result<EventStream, EngineError>> {
        Box::pin(async move {
            let hold = match self.acquire(&req.model) {
                Some(hold) => hold,
                None => {
                    // Not in memory: an unknown name fails now; a known one loads while the
                    // request waits, and a failed load is this request's event.
                    self.resolve(&req.model)?;
                    match self.load_detached(&req.model).await {
                        Ok(hold) => hold,
                        Err(e) => return Ok(EventStream::failed(e)),
                    }
                }
            };
            let n = req.n;
            let events = hold.0.engine.generate(req)?;
            Ok(EventStream::holding(events, hold).with_choices(n))
        })
    }

    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Embeddings, EngineError>> {
        Box::pin(async move {
            let hold = self.load_detached(&model).await?;
            hold.0.engine.embed(model, inputs).await
        })
    }

    fn pool(&self) -> Option<&ModelPool> {
        Some(self)
    }

    fn backend(&self) -> String {
        super::llama::backend_description()
    }

    fn cpu(&self) -> Option<super::CpuBackend> {
        super::cpu_backend().ok()
    }

    fn metrics(&self) -> Option<Arc<Metrics>> {
        Some(self.metrics.clone())
    }

    fn unload(&self, name: &str) -> BoxFuture<'_, ()> {
        let name = name.to_string();
        Box::pin(async move { self.forget(&name).await })
    }

    fn forget_owner(&self, uid: u32) {
        for (name, r) in self.resident().iter() {
            if let Err(e) = r.engine.forget_owner(uid) {
                tracing::error!(model = %name, uid, error = %e, "cannot drop an erased uid's cached tokens");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_layers_fit_the_free_memory() {
        let gib = 1u64 << 30;
        // 31 layers' worth of weights (30 blocks + output), 1 GiB each; 2 GiB of cache/scratch.
        let est = Estimate {
            weights: 31 * gib,
            kv_cache: gib,
            compute: gib,
            total: 33 * gib,
        };
        // Plenty of room: everything, capped at layers + 1.
        assert_eq!(auto_layers(140 * gib, &est, 30), 31);
        // 20 GiB free: 18 GiB usable, minus 2.5 GiB → 15 layers.
        assert_eq!(auto_layers(20 * gib, &est, 30), 15);
        // Less than the cache needs: nothing offloaded.
        assert_eq!(auto_layers(2 * gib, &est, 30), 0);
        assert_eq!(auto_layers(0, &est, 30), 0);
    }
}
