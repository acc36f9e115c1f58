//! How much memory a model will take once loaded, from its GGUF metadata alone, so that a model
//! that cannot fit is refused before llama.cpp allocates anything.
//!
//! The estimate is deliberately simple and errs high:
//! - weights: the tensor data in the file (mapped or copied, it ends up resident);
//! - KV cache: `layers × cells × kv_heads × (key + value width) × bytes per element` (Q8_0, 34
//!   bytes per 32, when batching is deterministic on the CPU; else F16, 2 bytes), where
//!   cells = slots × the per-slot context (padded to 256 as llama.cpp does). Sliding-window
//!   layers (Gemma 3) keep fewer cells than this; the estimate ignores that and stays high;
//! - compute: llama.cpp's scratch, as far as it is touched: logits for up to `slots + 64` rows
//!   (`vocab × 4` bytes each), activations for one 512-token batch (`embd × 512 × 4` bytes × 8),
//!   plus a fixed 32 MiB for the runtime. Calibrated against the resident memory of the daemon
//!   (SmolLM2 Q4_1, 2 slots of 512: estimate 171 MiB, whole process 147 MiB; Gemma 3 270M:
//!   estimate 382 MiB, measured about 360 MiB).

use inhouse_formats::gguf::GgufFile;
use serde::Serialize;

/// Tokens per batch the engine reserves compute for (its `n_batch`).
const BATCH: u64 = 512;
/// Fixed overhead per loaded model: the runtime, threads' buffers, the tokenizer.
const FIXED: u64 = 32 << 20;

/// A memory estimate, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Estimate {
    /// Tensor data.
    pub weights: u64,
    /// KV cache for every slot.
    pub kv_cache: u64,
    /// Compute scratch and fixed overhead.
    pub compute: u64,
    /// Sum of the above.
    pub total: u64,
}

fn arch_u64(f: &GgufFile, key: &str) -> Option<u64> {
    let arch = f.architecture()?;
    let full = format!("{arch}.{key}");
    f.get_u64(&full).or_else(|| {
        // Some models give per-layer arrays (e.g. head counts); take the largest.
        let arr = f.get(&full)?.as_array()?;
        (0..arr.len())
            .filter_map(|i| arr.get(i).and_then(|v| v.as_u64()))
            .max()
    })
}

/// Estimates the memory of `f` served with `slots` sequences of `ctx_size` tokens each.
/// `kv_bytes_per_32`: bytes of 32 cache elements (see `engine::llama::kv_bytes_per_32`).
pub fn estimate(f: &GgufFile, ctx_size: u32, slots: u32, kv_bytes_per_32: u64) -> Estimate {
    let weights = f.file_size().saturating_sub(f.data_offset());
    let n_layer = arch_u64(f, "block_count").unwrap_or(0);
    let n_embd = arch_u64(f, "embedding_length").unwrap_or(0);
    let n_head = arch_u64(f, "attention.head_count").unwrap_or(1).max(1);
    let n_head_kv = arch_u64(f, "attention.head_count_kv").unwrap_or(n_head);
    let key = arch_u64(f, "attention.key_length").unwrap_or(n_embd / n_head);
    let value = arch_u64(f, "attention.value_length").unwrap_or(key);
    let per_slot = u64::from(ctx_size).min(f.context_length().unwrap_or(u64::MAX).max(64));
    let cells = (per_slot * u64::from(slots.max(1))).div_ceil(256) * 256;
    let kv_cache = (n_layer * cells * n_head_kv * (key + value) * kv_bytes_per_32).div_ceil(32);
    let n_vocab = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| a.len() as u64)
        .unwrap_or(0);
    let compute = n_vocab * 4 * (u64::from(slots) + 64) + n_embd * BATCH * 4 * 8 + FIXED;
    Estimate {
        weights,
        kv_cache,
        compute,
        total: weights + kv_cache + compute,
    }
}

/// Formats a byte count for messages: `123.4 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}
