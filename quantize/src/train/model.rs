//! The trainer's transformer: a GGUF model dequantized to F32 on candle, with LoRA adapters or
//! every block weight trainable, and export to the files llama.cpp serves.
//!
//! The forward pass follows llama.cpp's own graphs (`src/models/{llama,qwen2,gemma3}.cpp` of the
//! bundled llama-cpp-sys-2 0.1.161), so that an adapter trained here means the same thing when
//! llama.cpp applies it; `tests/train_parity.rs` compares the logits of both on the same tokens.
//! What each architecture adds:
//! - **llama** (SmolLM2): RMSNorm → attention (GQA) → residual → RMSNorm → SwiGLU → residual.
//!   RoPE is llama.cpp's `NORM` type (adjacent pairs), because the GGUF converter permuted the
//!   rows of `attn_q`/`attn_k` for it. The output matrix is `token_embd` when `output.weight` is
//!   absent. Optional `rope_freqs.weight` (llama 3) divides the rotation frequencies.
//! - **qwen2**: as llama, with q/k/v biases and `NEOX` RoPE (pairs `i`, `i + d/2`).
//! - **gemma3**: embeddings scaled by `sqrt(n_embd)`; per-head RMSNorm of q and k before RoPE;
//!   RMSNorm after attention and after the FFN (before each residual add); a GELU (tanh)
//!   gated FFN; queries scaled by `1/sqrt(key_length)`; five sliding-window layers (window
//!   `gemma3.attention.sliding_window`, RoPE base `rope.freq_base_swa`, default 10000) per global
//!   layer (RoPE base `rope.freq_base`); optional final logit soft-capping. The GGUF norm
//!   weights already include Gemma's `+1`.
//!
//! Frozen weights are plain tensors multiplied through [`ops::FrozenLinear`], which returns no
//! gradient for the weight (candle's `matmul` would compute one and keep it); trainable ones
//! are [`Var`]s. LoRA: `y = W·x + (alpha/rank)·B·(A·x)` with `A` `[rank, n_in]` uniform in
//! `±1/sqrt(n_in)` from a seeded SplitMix64 and `B` `[n_out, rank]` zero, so a fresh adapter
//! leaves the model unchanged. The adapter file stores `A` as `lora_a` (ggml `ne = [n_in, rank]`)
//! and `B` as `lora_b` (`ne = [rank, n_out]`), exactly the row-major data, which is the layout
//! llama.cpp's `llama_adapter_lora_init` multiplies.

mod ops;

use inhouse_formats::gguf_write::SplitMix64;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use super::{bad, cf, failed};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor, Var, D};
use inhouse_formats::gguf::{self, GgufFile, Value};
use inhouse_formats::gguf_write::{check_lora_against, write_lora_adapter, GgufWriter, LoraPair};
use inhouse_formats::progress::ToolError;

use ops::{CausalSoftmax, FrozenLinear, RmsNorm, Rope, TokenNll};

/// Keeps candle's element-wise operations on the calling thread (`CANDLE_NUM_THREADS=1`, unless
/// the environment already sets it); matrix products still use every core (`gemm` follows
/// `RAYON_NUM_THREADS`, default all CPUs).
///
/// candle 0.11 runs element-wise operations on a pool of pinned threads that spin-wait at a
/// barrier. On a 2-core machine that also serves (or builds) that spinning costs more than it
/// gains: forward + backward of SmolLM2 over 256 tokens took 12–13 s with the pool and 3.9 s
/// without it, measured under load. Call it at process start, before other threads run and
/// before any tensor operation (the pool's size is read once).
pub fn init_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// The architectures the trainer implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama` (SmolLM2, Llama 2/3, …).
    Llama,
    /// `qwen2` (Qwen2, Qwen2.5).
    Qwen2,
    /// `gemma3` (Gemma 3 text models).
    Gemma3,
}

/// What `general.architecture` values are supported, for error messages.
pub const SUPPORTED_ARCHS: &str = "llama, qwen2, gemma3";

impl Arch {
    /// The `general.architecture` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3",
        }
    }

    /// From a `general.architecture` value.
    pub fn from_name(name: &str) -> Result<Self, ToolError> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "gemma3" => Ok(Self::Gemma3),
            other => Err(bad(format!(
                "architecture '{other}' cannot be fine-tuned: the training engine supports \
                 {SUPPORTED_ARCHS}"
            ))),
        }
    }
}

/// A linear layer LoRA can adapt, named as in GGUF tensor names (`blk.N.<name>.weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `attn_q`
    AttnQ,
    /// `attn_k`
    AttnK,
    /// `attn_v`
    AttnV,
    /// `attn_output`
    AttnOutput,
    /// `ffn_gate`
    FfnGate,
    /// `ffn_up`
    FfnUp,
    /// `ffn_down`
    FfnDown,
}

impl Target {
    /// Every target, in block order (the default: all linear layers).
    pub const ALL: [Target; 7] = [
        Self::AttnQ,
        Self::AttnK,
        Self::AttnV,
        Self::AttnOutput,
        Self::FfnGate,
        Self::FfnUp,
        Self::FfnDown,
    ];

    /// The GGUF name (`attn_q`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::AttnQ => "attn_q",
            Self::AttnK => "attn_k",
            Self::AttnV => "attn_v",
            Self::AttnOutput => "attn_output",
            Self::FfnGate => "ffn_gate",
            Self::FfnUp => "ffn_up",
            Self::FfnDown => "ffn_down",
        }
    }

    /// A comma-separated list (`attn_q,attn_v`, or `all`), without duplicates, in block order.
    pub fn parse_list(s: &str) -> Result<Vec<Target>, ToolError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend(Self::ALL);
            } else {
                out.push(part.parse()?);
            }
        }
        if out.is_empty() {
            return Err(bad(format!("no LoRA target given: {}", targets_help())));
        }
        out.sort_by_key(|t| Self::ALL.iter().position(|a| a == t));
        out.dedup();
        Ok(out)
    }
}

fn targets_help() -> String {
    let names: Vec<_> = Target::ALL.iter().map(|t| t.name()).collect();
    format!("the LoRA targets are {} (or all)", names.join(", "))
}

impl FromStr for Target {
    type Err = ToolError;

    fn from_str(s: &str) -> Result<Self, ToolError> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| bad(format!("unknown LoRA target '{s}': {}", targets_help())))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A LoRA adapter's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// The rank `r` of `B·A`.
    pub rank: usize,
    /// `alpha`: the update is scaled by `alpha / rank`.
    pub alpha: f32,
    /// The adapted layers, in every block.
    pub targets: Vec<Target>,
}

impl LoraConfig {
    /// Checks the rank, alpha and targets.
    pub fn check(&self) -> Result<(), ToolError> {
        if self.rank == 0 || self.rank > 4096 {
            return Err(bad(format!(
                "the LoRA rank must be 1 to 4096, got {}",
                self.rank
            )));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(bad(format!(
                "the LoRA alpha must be a positive number, got {}",
                self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(bad(format!("no LoRA target given: {}", targets_help())));
        }
        Ok(())
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        f64::from(self.alpha) / self.rank as f64
    }
}

/// What trains.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// A LoRA adapter over the frozen base.
    Lora(LoraConfig),
    /// Every weight of the blocks (2-D matrices, norms and biases), the output norm and an
    /// untied output matrix; `token_embd` stays frozen (and so does the output when tied to it).
    Full,
}

/// A base tensor: frozen, or a trainable variable.
#[derive(Debug, Clone)]
enum Param {
    Frozen(Tensor),
    Train(Var),
}

impl Param {
    fn tensor(&self) -> &Tensor {
        match self {
            Self::Frozen(t) => t,
            Self::Train(v) => v.as_tensor(),
        }
    }
}

/// A LoRA pair: `a` `[rank, n_in]`, `b` `[n_out, rank]`.
#[derive(Debug, Clone)]
struct Lora {
    a: Var,
    b: Var,
    scale: f64,
}

/// A linear layer `y = W·x (+ bias) (+ LoRA)`, `W` `[n_out, n_in]`.
#[derive(Debug, Clone)]
struct Linear {
    /// The weight's GGUF name (`blk.0.attn_q.weight`).
    name: String,
    w: Param,
    bias: Option<(String, Param)>,
    lora: Option<Lora>,
}

impl Linear {
    /// `x`: `[T, n_in]` → `[T, n_out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let mut y = match &self.w {
            Param::Frozen(w) => x.apply_op1(FrozenLinear { w: w.clone() })?,
            Param::Train(w) => x.matmul(&w.as_tensor().t()?)?,
        };
        if let Some((_, b)) = &self.bias {
            y = y.broadcast_add(b.tensor())?;
        }
        if let Some(l) = &self.lora {
            let ax = x.matmul(&l.a.as_tensor().t()?)?;
            let bax = ax.matmul(&l.b.as_tensor().t()?)?;
            y = (y + (bax * l.scale)?)?;
        }
        Ok(y)
    }

    fn n_in(&self) -> usize {
        self.w.tensor().dims()[1]
    }

    fn n_out(&self) -> usize {
        self.w.tensor().dims()[0]
    }
}

/// A norm weight with its GGUF name.
#[derive(Debug, Clone)]
struct Norm {
    name: String,
    w: Param,
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// gemma3: per-head RMSNorm of q and k.
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    /// gemma3: RMSNorm of the attention output before the residual add.
    post_attn_norm: Option<Norm>,
    ffn_norm: Norm,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// gemma3: RMSNorm of the FFN output before the residual add.
    post_ffn_norm: Option<Norm>,
    /// Sliding-window attention (gemma3's local layers).
    window: Option<usize>,
    rope_base: f32,
    rope_scale: f32,
}

/// Hyperparameters read from the GGUF keys.
#[derive(Debug, Clone)]
struct HParams {
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    head_dim_v: usize,
    n_rot: usize,
    eps: f32,
    attn_scale: f32,
    embd_scale: Option<f32>,
    softcap: Option<f32>,
    neox: bool,
    /// `rope_freqs.weight` (llama 3): the frequency of pair `i` is divided by `freq_factors[i]`.
    freq_factors: Option<Vec<f32>>,
}

/// The trainer's model.
#[derive(Debug)]
pub struct Transformer {
    arch: Arch,
    hp: HParams,
    trainable: Trainable,
    /// `[n_vocab, n_embd]`, frozen.
    tok_embd: Tensor,
    output_norm: Norm,
    /// `None`: tied to `tok_embd`.
    output: Option<Linear>,
    layers: Vec<Layer>,
}

/// A value of `key` as `f32` (floats or integers).
fn get_f32(g: &GgufFile, key: &str) -> Option<f32> {
    match g.get(key)? {
        Value::F32(v) => Some(*v),
        Value::F64(v) => Some(*v as f32),
        v => v.as_u64().map(|v| v as f32),
    }
}

/// Reads tensors of a GGUF file dequantized to F32 (candle's shape: ggml `ne` reversed).
struct Loader {
    content: gguf_file::Content,
    reader: BufReader<File>,
}

impl Loader {
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn get(&mut self, name: &str) -> Result<Tensor, ToolError> {
        let q = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        q.dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| bad(format!("tensor '{name}' cannot be dequantized: {e}")))
    }

    fn opt(&mut self, name: &str) -> Result<Option<Tensor>, ToolError> {
        if self.has(name) {
            self.get(name).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Transformer {
    /// Loads `path` (a GGUF model of a supported architecture), dequantizing every tensor to
    /// F32, and makes the parameters `trainable` says trainable. `seed` seeds the LoRA `A`
    /// initialization. Unsupported architectures, models and targets are [`ToolError::BadInput`].
    pub fn load(path: &Path, trainable: &Trainable, seed: u64) -> Result<Self, ToolError> {
        let meta = gguf::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let arch_name = meta
            .architecture()
            .ok_or_else(|| bad(format!("{}: no general.architecture", path.display())))?;
        let arch = Arch::from_name(arch_name)?;
        if let Trainable::Lora(l) = trainable {
            l.check()?;
        }
        let key = |k: &str| format!("{arch_name}.{k}");
        let need = |k: &str| -> Result<usize, ToolError> {
            meta.get_u64(&key(k)).map(|v| v as usize).ok_or_else(|| {
                bad(format!(
                    "{}: missing or non-integer {}",
                    path.display(),
                    key(k)
                ))
            })
        };
        let n_embd = need("embedding_length")?;
        let n_layer = need("block_count")?;
        let n_head = need("attention.head_count")?;
        let n_head_kv = meta
            .get_u64(&key("attention.head_count_kv"))
            .map_or(n_head, |v| v as usize);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad(format!(
                "{}: {n_head} attention heads and {n_head_kv} KV heads are not supported (per-layer \
                 head counts neither)",
                path.display()
            )));
        }
        let head_dim = meta
            .get_u64(&key("attention.key_length"))
            .map_or(n_embd / n_head, |v| v as usize);
        let head_dim_v = meta
            .get_u64(&key("attention.value_length"))
            .map_or(head_dim, |v| v as usize);
        let n_rot = meta
            .get_u64(&key("rope.dimension_count"))
            .map_or(head_dim, |v| v as usize);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(bad(format!(
                "{}: rope.dimension_count {n_rot} does not fit the head size {head_dim}",
                path.display()
            )));
        }
        let eps = get_f32(&meta, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5);
        let rope_base = get_f32(&meta, &key("rope.freq_base")).unwrap_or(10_000.0);
        let rope_scale = match meta.get_str(&key("rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => {
                1.0 / get_f32(&meta, &key("rope.scaling.factor"))
                    .filter(|f| *f > 0.0)
                    .unwrap_or(1.0)
            }
            Some(other) => {
                return Err(bad(format!(
                    "{}: RoPE scaling '{other}' is not supported by the training engine (none and \
                     linear are)",
                    path.display()
                )))
            }
        };
        let softcap = get_f32(&meta, &key("final_logit_softcapping")).filter(|c| *c > 0.0);
        let (attn_scale, embd_scale, neox) = match arch {
            Arch::Llama => (
                get_f32(&meta, &key("attention.scale"))
                    .filter(|s| *s != 0.0)
                    .unwrap_or(1.0 / (head_dim as f32).sqrt()),
                None,
                false,
            ),
            Arch::Qwen2 => (1.0 / (head_dim as f32).sqrt(), None, true),
            // llama.cpp: 27B (62 layers) scales by n_embd / n_head, the others by key_length.
            Arch::Gemma3 => (
                if n_layer == 62 {
                    1.0 / ((n_embd / n_head) as f32).sqrt()
                } else {
                    1.0 / (head_dim as f32).sqrt()
                },
                Some((n_embd as f32).sqrt()),
                true,
            ),
        };
        // gemma3's sliding-window layers: `il % 6 < 5` unless the file gives the pattern.
        let swa: Vec<Option<usize>> = match arch {
            Arch::Gemma3 => {
                let window = meta.get_u64(&key("attention.sliding_window")).unwrap_or(0) as usize;
                let pattern: Vec<bool> = match meta.get(&key("attention.sliding_window_pattern")) {
                    Some(Value::Array(a)) => (0..n_layer)
                        .map(|i| matches!(a.get(i), Some(Value::Bool(true))))
                        .collect(),
                    other => {
                        let n = other.and_then(Value::as_u64).unwrap_or(6) as usize;
                        (0..n_layer).map(|i| n == 0 || i % n < n - 1).collect()
                    }
                };
                pattern
                    .into_iter()
                    .map(|s| (s && window > 0).then_some(window))
                    .collect()
            }
            _ => vec![None; n_layer],
        };
        let rope_base_swa = get_f32(&meta, &key("rope.freq_base_swa")).unwrap_or(10_000.0);

        let file = File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let mut ld = Loader { content, reader };
        for name in ld.content.tensor_infos.keys() {
            if name.contains("_exps") || name.contains("_shexp") {
                return Err(bad(format!(
                    "{}: mixture-of-experts models cannot be fine-tuned (tensor '{name}')",
                    path.display()
                )));
            }
        }
        let full = matches!(trainable, Trainable::Full);
        let param = |t: Tensor| -> Result<Param, ToolError> {
            Ok(if full {
                Param::Train(Var::from_tensor(&t).map_err(cf)?)
            } else {
                Param::Frozen(t)
            })
        };
        let lora_cfg = match trainable {
            Trainable::Lora(l) => Some(l.clone()),
            Trainable::Full => None,
        };
        let mut rng = SplitMix64(seed);

        let tok_embd = ld.get("token_embd.weight")?;
        let n_vocab = tok_embd.dims()[0];
        let output_norm = Norm {
            name: "output_norm.weight".into(),
            w: param(ld.get("output_norm.weight")?)?,
        };
        let output = match ld.opt("output.weight")? {
            Some(w) => Some(Linear {
                name: "output.weight".into(),
                w: param(w)?,
                bias: match ld.opt("output.bias")? {
                    Some(b) => Some(("output.bias".to_string(), param(b)?)),
                    None => None,
                },
                lora: None,
            }),
            None => None,
        };
        let freq_factors = match ld.opt("rope_freqs.weight")? {
            Some(t) => Some(
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(cf)?,
            ),
            None => None,
        };

        let mut layers = Vec::with_capacity(n_layer);
        for (il, &window) in swa.iter().enumerate() {
            let p = |n: &str| format!("blk.{il}.{n}");
            let norm = |ld: &mut Loader, n: &str| -> Result<Norm, ToolError> {
                let name = p(n);
                Ok(Norm {
                    w: param(ld.get(&name)?)?,
                    name,
                })
            };
            let attn_norm = norm(&mut ld, "attn_norm.weight")?;
            let ffn_norm = norm(&mut ld, "ffn_norm.weight")?;
            let (q_norm, k_norm, post_attn_norm, post_ffn_norm) = if arch == Arch::Gemma3 {
                (
                    Some(norm(&mut ld, "attn_q_norm.weight")?),
                    Some(norm(&mut ld, "attn_k_norm.weight")?),
                    Some(norm(&mut ld, "post_attention_norm.weight")?),
                    Some(norm(&mut ld, "post_ffw_norm.weight")?),
                )
            } else {
                (None, None, None, None)
            };
            let mut linear = |ld: &mut Loader, target: Target| -> Result<Linear, ToolError> {
                let name = p(&format!("{}.weight", target.name()));
                if !ld.has(&name) {
                    return Err(bad(format!(
                        "{}: tensor '{name}' is missing (fused QKV or other layouts are not \
                         supported by the training engine)",
                        path.display()
                    )));
                }
                let w = ld.get(&name)?;
                let (n_out, n_in) = w.dims2().map_err(cf)?;
                let bias_name = p(&format!("{}.bias", target.name()));
                let bias = match ld.opt(&bias_name)? {
                    Some(b) => Some((bias_name, param(b)?)),
                    None => None,
                };
                let lora = match &lora_cfg {
                    Some(l) if l.targets.contains(&target) => {
                        let bound = 1.0 / (n_in as f32).sqrt();
                        let a: Vec<f32> = (0..l.rank * n_in).map(|_| rng.uniform(bound)).collect();
                        let a = Var::from_vec(a, (l.rank, n_in), &Device::Cpu).map_err(cf)?;
                        let b =
                            Var::zeros((n_out, l.rank), DType::F32, &Device::Cpu).map_err(cf)?;
                        Some(Lora {
                            a,
                            b,
                            scale: l.scale(),
                        })
                    }
                    _ => None,
                };
                Ok(Linear {
                    name,
                    w: param(w)?,
                    bias,
                    lora,
                })
            };
            let q = linear(&mut ld, Target::AttnQ)?;
            let k = linear(&mut ld, Target::AttnK)?;
            let v = linear(&mut ld, Target::AttnV)?;
            let o = linear(&mut ld, Target::AttnOutput)?;
            let gate = linear(&mut ld, Target::FfnGate)?;
            let up = linear(&mut ld, Target::FfnUp)?;
            let down = linear(&mut ld, Target::FfnDown)?;
            if q.n_out() != n_head * head_dim
                || k.n_out() != n_head_kv * head_dim
                || v.n_out() != n_head_kv * head_dim_v
                || o.n_in() != n_head * head_dim_v
            {
                return Err(bad(format!(
                    "{}: block {il}'s attention shapes do not match the head counts in the metadata",
                    path.display()
                )));
            }
            layers.push(Layer {
                attn_norm,
                q,
                k,
                v,
                o,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm,
                gate,
                up,
                down,
                post_ffn_norm,
                window,
                rope_base: if window.is_some() {
                    rope_base_swa
                } else {
                    rope_base
                },
                rope_scale: if window.is_some() { 1.0 } else { rope_scale },
            });
        }
        if tok_embd.dims()[1] != n_embd || n_vocab == 0 {
            return Err(bad(format!(
                "{}: token_embd.weight does not match embedding_length {n_embd}",
                path.display()
            )));
        }
        Ok(Self {
            arch,
            hp: HParams {
                n_embd,
                n_head,
                n_head_kv,
                head_dim,
                head_dim_v,
                n_rot,
                eps,
                attn_scale,
                embd_scale,
                softcap,
                neox,
                freq_factors,
            },
            trainable: trainable.clone(),
            tok_embd,
            output_norm,
            output,
            layers,
        })
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The architecture's GGUF name (`llama`, `qwen2`, `gemma3`).
    pub fn arch_name(&self) -> &'static str {
        self.arch.name()
    }

    /// What trains.
    pub fn trainable(&self) -> &Trainable {
        &self.trainable
    }

    /// The vocabulary size (the logits' width).
    pub fn n_vocab(&self) -> usize {
        self.tok_embd.dims()[0]
    }

    /// The number of blocks.
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// The hidden size.
    pub fn n_embd(&self) -> usize {
        self.hp.n_embd
    }

    fn rms(&self, x: &Tensor, w: &Norm) -> candle_core::Result<Tensor> {
        x.contiguous()?
            .apply_op1(RmsNorm { eps: self.hp.eps })?
            .broadcast_mul(w.w.tensor())
    }

    /// RoPE tables `[T, n_rot/2]` for one base and scale, as ggml computes the angles
    /// (`pos · scale · base^(−2i/n_rot) / factor_i`).
    fn rope(&self, t: usize, base: f32, scale: f32) -> Rope {
        let half = self.hp.n_rot / 2;
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for i in 0..half {
                let mut theta = p as f64
                    * f64::from(scale)
                    * f64::from(base).powf(-2.0 * i as f64 / self.hp.n_rot as f64);
                if let Some(f) = &self.hp.freq_factors {
                    theta /= f64::from(f.get(i).copied().unwrap_or(1.0));
                }
                cos.push(theta.cos() as f32);
                sin.push(theta.sin() as f32);
            }
        }
        Rope {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            n_rot: self.hp.n_rot,
            neox: self.hp.neox,
            inverse: false,
        }
    }

    /// The logits `[T, n_vocab]` (F32) of one sequence at positions `0..T`, causal.
    pub fn forward(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let t = tokens.len();
        if t == 0 {
            candle_core::bail!("forward: no tokens");
        }
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= self.n_vocab()) {
            candle_core::bail!(
                "forward: token {bad} is outside the vocabulary of {}",
                self.n_vocab()
            );
        }
        let hp = &self.hp;
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.tok_embd.index_select(&ids, 0)?;
        if let Some(s) = hp.embd_scale {
            x = (x * f64::from(s))?;
        }
        let mut ropes: Vec<((u32, u32), Rope)> = Vec::new();
        let (h, hkv, d, dv) = (hp.n_head, hp.n_head_kv, hp.head_dim, hp.head_dim_v);
        let g = h / hkv;
        for layer in &self.layers {
            let rkey = (layer.rope_base.to_bits(), layer.rope_scale.to_bits());
            let rope = match ropes.iter().find(|(k, _)| *k == rkey) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = self.rope(t, layer.rope_base, layer.rope_scale);
                    ropes.push((rkey, r.clone()));
                    r
                }
            };
            // Attention.
            let hn = self.rms(&x, &layer.attn_norm)?;
            let mut q = layer.q.forward(&hn)?.reshape((t, h, d))?;
            let mut k = layer.k.forward(&hn)?.reshape((t, hkv, d))?;
            let v = layer.v.forward(&hn)?.reshape((t, hkv, dv))?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = self.rms(&q, qn)?;
                k = self.rms(&k, kn)?;
            }
            let q = q.transpose(0, 1)?.contiguous()?.apply_op1(rope.clone())?;
            let k = k.transpose(0, 1)?.contiguous()?.apply_op1(rope)?;
            let v = v.transpose(0, 1)?.contiguous()?;
            // GQA: query head `i` uses KV head `i / g`, so the `g` query heads of a KV head
            // are contiguous and batch against it without repeating K and V.
            let scores = q
                .reshape((hkv, g * t, d))?
                .matmul(&k.t()?)?
                .reshape((h, t, t))?;
            let att = scores.apply_op1(CausalSoftmax {
                scale: hp.attn_scale,
                window: layer.window,
            })?;
            let out = att
                .reshape((hkv, g * t, t))?
                .matmul(&v)?
                .reshape((h, t, dv))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((t, h * dv))?;
            let mut out = layer.o.forward(&out)?;
            if let Some(n) = &layer.post_attn_norm {
                out = self.rms(&out, n)?;
            }
            x = (x + out)?;
            // Feed-forward.
            let hn = self.rms(&x, &layer.ffn_norm)?;
            let gate = layer.gate.forward(&hn)?;
            let gate = match self.arch {
                Arch::Gemma3 => gate.gelu()?,
                Arch::Llama | Arch::Qwen2 => gate.silu()?,
            };
            let mut out = layer.down.forward(&(gate * layer.up.forward(&hn)?)?)?;
            if let Some(n) = &layer.post_ffn_norm {
                out = self.rms(&out, n)?;
            }
            x = (x + out)?;
        }
        let x = self.rms(&x, &self.output_norm)?;
        let mut logits = match &self.output {
            Some(o) => o.forward(&x)?,
            None => x.apply_op1(FrozenLinear {
                w: self.tok_embd.clone(),
            })?,
        };
        if let Some(c) = hp.softcap {
            logits = ((logits / f64::from(c))?.tanh()? * f64::from(c))?;
        }
        Ok(logits)
    }

    /// Every trainable parameter with its GGUF name, in file order: for LoRA
    /// `blk.N.<target>.weight.lora_a` / `.lora_b`, for full training the tensor's own name.
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        let norm = |out: &mut Vec<(String, Var)>, n: &Norm| {
            if let Param::Train(v) = &n.w {
                out.push((n.name.clone(), v.clone()));
            }
        };
        let linear = |out: &mut Vec<(String, Var)>, l: &Linear| {
            if let Param::Train(v) = &l.w {
                out.push((l.name.clone(), v.clone()));
            }
            if let Some((name, Param::Train(v))) = &l.bias {
                out.push((name.clone(), v.clone()));
            }
            if let Some(lora) = &l.lora {
                out.push((format!("{}.lora_a", l.name), lora.a.clone()));
                out.push((format!("{}.lora_b", l.name), lora.b.clone()));
            }
        };
        for layer in &self.layers {
            norm(&mut out, &layer.attn_norm);
            for n in [&layer.q_norm, &layer.k_norm].into_iter().flatten() {
                norm(&mut out, n);
            }
            for l in [&layer.q, &layer.k, &layer.v, &layer.o] {
                linear(&mut out, l);
            }
            if let Some(n) = &layer.post_attn_norm {
                norm(&mut out, n);
            }
            norm(&mut out, &layer.ffn_norm);
            for l in [&layer.gate, &layer.up, &layer.down] {
                linear(&mut out, l);
            }
            if let Some(n) = &layer.post_ffn_norm {
                norm(&mut out, n);
            }
        }
        norm(&mut out, &self.output_norm);
        if let Some(o) = &self.output {
            linear(&mut out, o);
        }
        out
    }

    /// The number of trainable values.
    pub fn n_trainable(&self) -> usize {
        self.params().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Overwrites every trainable parameter with the tensor of its name in `values` (a
    /// checkpoint). Every parameter must be present with its shape, and no other name may be.
    pub fn set_params(&self, values: &HashMap<String, Tensor>) -> Result<(), ToolError> {
        let params = self.params();
        for (name, var) in &params {
            let t = values.get(name).ok_or_else(|| {
                bad(format!(
                    "the checkpoint has no tensor '{name}' (a different model or LoRA shape?)"
                ))
            })?;
            if t.dims() != var.dims() {
                return Err(bad(format!(
                    "the checkpoint's '{name}' has shape {:?}, the model's {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32).map_err(cf)?).map_err(cf)?;
        }
        if values.len() != params.len() {
            let extra = values
                .keys()
                .find(|k| !params.iter().any(|(n, _)| n == *k))
                .cloned()
                .unwrap_or_default();
            return Err(bad(format!(
                "the checkpoint has a tensor '{extra}' the model does not train"
            )));
        }
        Ok(())
    }

    /// Writes the LoRA adapter as a llama.cpp adapter GGUF at `out` (atomically), for the base
    /// model `base` (the file this model was loaded from): `general.type = adapter`,
    /// `general.architecture` of the base, `adapter.type = lora`, `adapter.lora.alpha`, and per
    /// target F32 `lora_a` (`ne = [n_in, rank]`) and `lora_b` (`ne = [rank, n_out]`).
    pub fn write_adapter(&self, base: &Path, out: &Path) -> Result<(), ToolError> {
        let Trainable::Lora(cfg) = &self.trainable else {
            return Err(bad(
                "this model trains all weights: there is no adapter to write",
            ));
        };
        let meta = gguf::open(base).map_err(|e| bad(format!("{}: {e}", base.display())))?;
        let arch = meta.architecture().unwrap_or_default().to_string();
        if arch != self.arch.name() {
            return Err(bad(format!(
                "{} is a '{arch}' model, not the '{}' model that was trained",
                base.display(),
                self.arch.name()
            )));
        }
        let mut pairs = Vec::new();
        for layer in &self.layers {
            for l in [
                &layer.q,
                &layer.k,
                &layer.v,
                &layer.o,
                &layer.gate,
                &layer.up,
                &layer.down,
            ] {
                let Some(lora) = &l.lora else { continue };
                let data = |v: &Var| v.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>());
                let (n_in, n_out, r) = (l.n_in() as u64, l.n_out() as u64, cfg.rank as u64);
                pairs.push(LoraPair {
                    target: l.name.clone(),
                    a: (vec![n_in, r], data(&lora.a).map_err(cf)?),
                    b: (vec![r, n_out], data(&lora.b).map_err(cf)?),
                });
            }
        }
        check_lora_against(&meta, &pairs).map_err(|e| bad(format!("{}: {e}", base.display())))?;
        write_lora_adapter(out, &arch, cfg.alpha, &pairs)
            .map_err(|e| failed(format!("{}: {e}", out.display())))
    }

    /// Writes the fully fine-tuned model at `out` (atomically): every key-value of `base`, the
    /// trained tensors as F32 and every other tensor copied byte for byte.
    pub fn write_full(&self, base: &Path, out: &Path) -> Result<(), ToolError> {
        if !matches!(self.trainable, Trainable::Full) {
            return Err(bad(
                "this model trains a LoRA adapter: write it with write_adapter",
            ));
        }
        let meta = gguf::open(base).map_err(|e| bad(format!("{}: {e}", base.display())))?;
        let trained: HashMap<String, Var> = self.params().into_iter().collect();
        let mut w = GgufWriter::new();
        w.copy_kvs_from(&meta).map_err(|e| failed(e.to_string()))?;
        let mut file = File::open(base).map_err(|e| bad(format!("{}: {e}", base.display())))?;
        for t in meta.tensors() {
            match trained.get(&t.name) {
                Some(v) => {
                    let data = v
                        .as_tensor()
                        .flatten_all()
                        .and_then(|x| x.to_vec1::<f32>())
                        .map_err(cf)?;
                    w.add_tensor_f32(&t.name, &t.dims, data)
                        .map_err(|e| failed(e.to_string()))?;
                }
                None => {
                    let (start, end) = meta.tensor_data_range(t);
                    let mut bytes = vec![0u8; (end - start) as usize];
                    file.seek(SeekFrom::Start(start))
                        .and_then(|_| file.read_exact(&mut bytes))
                        .map_err(|e| failed(format!("{}: {e}", base.display())))?;
                    w.add_tensor_raw(&t.name, &t.dims, t.ggml_type, bytes)
                        .map_err(|e| failed(e.to_string()))?;
                }
            }
        }
        w.write_to(out)
            .map_err(|e| failed(format!("{}: {e}", out.display())))
    }
}

/// The summed negative log-likelihood (nats) of `tokens[i]` for every `i` with `mask[i]` (the
/// logits of row `i − 1` predict token `i`; `mask[0]` is ignored), as a scalar in the graph, and
/// how many positions were counted. One fused pass over the logits (no log-softmax tensor).
pub fn masked_nll_sum(
    logits: &Tensor,
    tokens: &[u32],
    mask: &[bool],
) -> candle_core::Result<(Tensor, usize)> {
    let t = tokens.len();
    if mask.len() != t || logits.dim(0)? != t {
        candle_core::bail!(
            "masked_nll_sum: {} logit rows, {t} tokens, {} mask entries",
            logits.dim(0)?,
            mask.len()
        );
    }
    let targets: Vec<Option<u32>> = (0..t)
        .map(|i| (i + 1 < t && mask[i + 1]).then(|| tokens[i + 1]))
        .collect();
    let n = targets.iter().filter(|x| x.is_some()).count();
    let per_row = logits.contiguous()?.apply_op1(TokenNll {
        targets: Arc::new(targets),
    })?;
    Ok((per_row.sum_all()?, n))
}

/// Log-softmax of `[T, V]` logits along the vocabulary (for comparisons; not in the graph).
pub fn log_softmax_rows(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse_list("ffn_down, attn_q,attn_q").unwrap(),
            vec![Target::AttnQ, Target::FfnDown]
        );
        assert_eq!(Target::parse_list("all").unwrap(), Target::ALL.to_vec());
        let e = Target::parse_list("attn_qkv").unwrap_err().to_string();
        assert!(e.contains("attn_output") && e.contains("attn_qkv"), "{e}");
        assert!(Arch::from_name("mamba")
            .unwrap_err()
            .to_string()
            .contains("llama, qwen2, gemma3"));
    }

    /// Each fused op's backward pass against finite differences of its forward pass.
    #[test]
    fn fused_ops_have_correct_gradients() {
        let dev = Device::Cpu;
        let mut rng = SplitMix64(7);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(1.0)).collect() };
        let (h, t, d) = (2usize, 5usize, 6usize);
        let w = Tensor::from_vec(rand(t * h * d), (t, h * d), &dev).unwrap();
        let x0 = rand(h * t * d);
        let rope = {
            let half: i32 = 2; // n_rot = 4 < d: two dimensions pass through
            let mut cos = Vec::new();
            let mut sin = Vec::new();
            for p in 0..t {
                for i in 0..half {
                    let th = p as f64 * 0.3f64.powi(i + 1);
                    cos.push(th.cos() as f32);
                    sin.push(th.sin() as f32);
                }
            }
            (Arc::new(cos), Arc::new(sin))
        };
        type F = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;
        let wf = w.clone();
        let (c1, s1) = rope.clone();
        let cases: Vec<(&str, F)> = vec![
            (
                "rms",
                Box::new(move |x: &Tensor| x.apply_op1(RmsNorm { eps: 1e-5 })),
            ),
            (
                "softmax",
                Box::new(move |x: &Tensor| {
                    x.reshape((h, t, t)).and_then(|x| {
                        x.apply_op1(CausalSoftmax {
                            scale: 0.7,
                            window: Some(3),
                        })
                    })
                }),
            ),
            (
                "rope",
                Box::new(move |x: &Tensor| {
                    x.apply_op1(Rope {
                        cos: c1.clone(),
                        sin: s1.clone(),
                        n_rot: 4,
                        neox: false,
                        inverse: false,
                    })
                }),
            ),
            (
                "linear",
                Box::new(move |x: &Tensor| {
                    x.reshape((h * t, d)).and_then(|x| {
                        x.apply_op1(FrozenLinear {
                            w: wf.narrow(1, 0, d)?,
                        })
                    })
                }),
            ),
            (
                "nll",
                Box::new(move |x: &Tensor| {
                    x.reshape((h * t, d)).and_then(|x| {
                        x.apply_op1(TokenNll {
                            targets: Arc::new(
                                (0..h * t)
                                    .map(|i| (i % 3 != 0).then_some(i as u32 % 6))
                                    .collect(),
                            ),
                        })
                    })
                }),
            ),
        ];
        for (name, f) in cases {
            let shape: (usize, usize, usize) = if name == "softmax" {
                (h, t, t)
            } else {
                (h, t, d)
            };
            let n = shape.0 * shape.1 * shape.2;
            let xv = Var::from_vec(x0[..n].to_vec(), shape, &dev).unwrap();
            // A fixed random projection of the output makes a scalar loss.
            let y = f(xv.as_tensor()).unwrap();
            let proj = Tensor::from_vec(rand(y.elem_count()), y.shape(), &dev).unwrap();
            let loss = |y: &Tensor| (y * &proj).unwrap().sum_all().unwrap();
            let grad = loss(&y).backward().unwrap();
            let g = grad
                .get(xv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for i in (0..n).step_by(7) {
                let eps = 1e-2f32;
                let mut plus = x0[..n].to_vec();
                plus[i] += eps;
                let mut minus = x0[..n].to_vec();
                minus[i] -= eps;
                let at = |v: Vec<f32>| {
                    let x = Tensor::from_vec(v, shape, &dev).unwrap();
                    loss(&f(&x).unwrap()).to_scalar::<f32>().unwrap()
                };
                let num = (at(plus) - at(minus)) / (2.0 * eps);
                assert!(
                    (num - g[i]).abs() < 2e-2 * (1.0 + num.abs()),
                    "{name}[{i}]: numeric {num}, analytic {}",
                    g[i]
                );
            }
        }
    }
}
