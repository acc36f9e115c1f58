//! Llama and Qwen2 decoders (`model_type: "llama"` / `"qwen2"`) as llama.cpp's `llama` and
//! `qwen2` architectures, with their byte-level BPE tokenizer ([`super::bpe`]) and chat
//! template.
//!
//! | GGUF | Hugging Face |
//! | --- | --- |
//! | `token_embd` | `model.embed_tokens` |
//! | `output_norm` | `model.norm` |
//! | `output` | `lm_head` (absent when tied to the embeddings) |
//! | `blk.N.attn_norm` / `ffn_norm` | `model.layers.N.input_layernorm` / `post_attention_layernorm` |
//! | `blk.N.attn_q` / `attn_k` / `attn_v` / `attn_output` | `….self_attn.q_proj` / `k_proj` / `v_proj` / `o_proj` |
//! | `blk.N.ffn_gate` / `ffn_up` / `ffn_down` | `….mlp.gate_proj` / `up_proj` / `down_proj` |
//!
//! Rotary embeddings: Hugging Face's Llama rotates the two halves of each head (`rotate_half`),
//! llama.cpp's `llama` architecture rotates adjacent pairs, so the rows of Q and K are reordered
//! within each head: row `h·d + 2i + s` of the GGUF tensor is row `h·d + s·d/2 + i` of the
//! checkpoint's (`d` the head size, `s` 0 or 1). llama.cpp's `qwen2` rotates halves, as
//! Hugging Face does, so Qwen2 weights are copied as they are.
//!
//! Refused: RoPE scaling (`rope_scaling` set), an activation other than SiLU, sliding-window
//! attention turned on, and any tensor this table does not name.

use inhouse_formats::gguf::{Array, Value};

use super::bpe::Bpe;
use super::checkpoint::{read_json, Checkpoint};
use super::{ImportError, Plan, PlannedTensor};

/// Which of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `llama` (Llama 2/3, SmolLM, TinyLlama …).
    Llama,
    /// `qwen2` (Qwen2, Qwen2.5).
    Qwen2,
}

impl Kind {
    fn arch(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

/// A special token's text in `tokenizer_config.json` (a string or `{"content": …}`).
fn special_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The GGUF name of a checkpoint tensor; `None` for one skipped on purpose.
fn gguf_name(hf: &str) -> Result<Option<String>, ImportError> {
    let unknown = || ImportError::Tensor {
        name: hf.into(),
        reason: "not a tensor of a Llama/Qwen2 decoder this converter knows".into(),
    };
    if hf.ends_with(".rotary_emb.inv_freq") {
        return Ok(None); // a buffer some old checkpoints saved, recomputed by every runtime
    }
    Ok(Some(match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.").ok_or_else(unknown)?;
            let (n, part) = rest.split_once('.').ok_or_else(unknown)?;
            let n: u32 = n.parse().map_err(|_| unknown())?;
            let (stem, suffix) = part.rsplit_once('.').ok_or_else(unknown)?;
            let gguf = match stem {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return Err(unknown()),
            };
            if suffix != "weight" && suffix != "bias" {
                return Err(unknown());
            }
            format!("blk.{n}.{gguf}.{suffix}")
        }
    }))
}

/// Plans the conversion of a Llama or Qwen2 checkpoint.
pub fn plan(ck: &Checkpoint, name: &str, kind: Kind) -> Result<Plan, ImportError> {
    let config = ck.dir.join("config.json");
    let invalid = |reason: String| ImportError::Invalid {
        path: config.clone(),
        reason,
    };
    let n_embd = ck.need_config_u32("hidden_size")?;
    let n_layer = ck.need_config_u32("num_hidden_layers")?;
    let n_head = ck.need_config_u32("num_attention_heads")?;
    let n_head_kv = ck.config_u32("num_key_value_heads")?.unwrap_or(n_head);
    let n_ff = ck.need_config_u32("intermediate_size")?;
    let n_ctx = ck.need_config_u32("max_position_embeddings")?;
    let n_vocab = ck.need_config_u32("vocab_size")?;
    let head_dim = ck.config_u32("head_dim")?.unwrap_or(n_embd / n_head.max(1));
    if n_head % n_head_kv != 0 || head_dim % 2 != 0 {
        return Err(invalid(format!(
            "{n_head} heads, {n_head_kv} key-value heads and a head size of {head_dim} do not \
             fit together"
        )));
    }
    let f64_of = |k: &str, default: f64| {
        ck.config
            .get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(default)
    };
    let eps = f64_of("rms_norm_eps", 1e-6) as f32;
    let theta = f64_of("rope_theta", 10000.0) as f32;
    let act = ck
        .config
        .get("hidden_act")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("silu");
    if act != "silu" {
        return Err(ImportError::Unsupported(format!(
            "hidden_act {act:?}; llama.cpp's {} uses SiLU",
            kind.arch()
        )));
    }
    if !ck
        .config
        .get("rope_scaling")
        .is_none_or(serde_json::Value::is_null)
    {
        return Err(ImportError::Unsupported(
            "rope_scaling is set; scaled RoPE (YaRN, Llama 3.1 …) is not converted yet".into(),
        ));
    }
    if ck
        .config
        .get("use_sliding_window")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        return Err(ImportError::Unsupported(
            "use_sliding_window is on; llama.cpp's qwen2 has no sliding window".into(),
        ));
    }
    let tied = ck
        .config
        .get("tie_word_embeddings")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);

    let bpe = Bpe::load(&ck.dir.join("tokenizer.json"), n_vocab as usize)?;
    let tok_config = ck.dir.join("tokenizer_config.json");
    let tok_config = if tok_config.is_file() {
        read_json(&tok_config)?
    } else {
        serde_json::Value::Null
    };
    let special_id = |key: &str| -> Result<Option<u32>, ImportError> {
        match special_text(tok_config.get(key)) {
            None => Ok(None),
            Some(text) => bpe.id(&text).map(Some).ok_or_else(|| ImportError::Invalid {
                path: ck.dir.join("tokenizer_config.json"),
                reason: format!("{key} {text:?} is not in the vocabulary"),
            }),
        }
    };
    let (bos, eos, pad, unk) = (
        special_id("bos_token")?,
        special_id("eos_token")?,
        special_id("pad_token")?,
        special_id("unk_token")?,
    );
    let add_bos = tok_config
        .get("add_bos_token")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let template = tok_config
        .get("chat_template")
        .and_then(serde_json::Value::as_str);

    let arch = kind.arch();
    let mut kvs: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        (format!("{arch}.context_length"), Value::U32(n_ctx)),
        (format!("{arch}.embedding_length"), Value::U32(n_embd)),
        (format!("{arch}.feed_forward_length"), Value::U32(n_ff)),
        (format!("{arch}.block_count"), Value::U32(n_layer)),
        (format!("{arch}.attention.head_count"), Value::U32(n_head)),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(n_head_kv),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(eps),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(theta)),
        (format!("{arch}.rope.dimension_count"), Value::U32(head_dim)),
        (format!("{arch}.vocab_size"), Value::U32(n_vocab)),
    ];
    if head_dim * n_head != n_embd {
        kvs.push((format!("{arch}.attention.key_length"), Value::U32(head_dim)));
        kvs.push((
            format!("{arch}.attention.value_length"),
            Value::U32(head_dim),
        ));
    }
    kvs.extend([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(bpe.pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(bpe.tokens.clone())),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(bpe.types.clone())),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(bpe.merges.clone())),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)),
    ]);
    for (key, id) in [
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("padding_token_id", pad),
        ("unknown_token_id", unk),
    ] {
        if let Some(id) = id {
            kvs.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    if let Some(t) = template {
        kvs.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }

    let (e, f, v, hd) = (
        n_embd as usize,
        n_ff as usize,
        n_vocab as usize,
        head_dim as usize,
    );
    let (q, kv) = (n_head as usize * hd, n_head_kv as usize * hd);
    let mut tensors = Vec::new();
    for (hf, info) in ck.tensors() {
        let Some(gguf) = gguf_name(hf)? else {
            continue;
        };
        if gguf == "output.weight" && tied {
            continue; // llama.cpp reuses token_embd
        }
        let part = gguf.split('.').nth(2).unwrap_or(gguf.as_str());
        let is_bias = gguf.ends_with(".bias");
        let expected: Vec<usize> = match (gguf.as_str(), part, is_bias) {
            ("token_embd.weight" | "output.weight", _, _) => vec![v, e],
            ("output_norm.weight", _, _) => vec![e],
            (_, "attn_norm" | "ffn_norm", false) => vec![e],
            (_, "attn_q", false) => vec![q, e],
            (_, "attn_q", true) => vec![q],
            (_, "attn_k" | "attn_v", false) => vec![kv, e],
            (_, "attn_k" | "attn_v", true) => vec![kv],
            (_, "attn_output", false) => vec![e, q],
            (_, "attn_output", true) => vec![e],
            (_, "ffn_gate" | "ffn_up", false) => vec![f, e],
            (_, "ffn_down", false) => vec![e, f],
            _ => {
                return Err(ImportError::Tensor {
                    name: hf.clone(),
                    reason: format!("{gguf} is not a tensor llama.cpp's {arch} reads"),
                })
            }
        };
        if info.shape != expected {
            return Err(ImportError::Tensor {
                name: hf.clone(),
                reason: format!(
                    "shape {:?}, expected {expected:?} from config.json",
                    info.shape
                ),
            });
        }
        let layer = gguf
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<u32>().ok());
        if layer.is_some_and(|n| n >= n_layer) {
            return Err(ImportError::Tensor {
                name: hf.clone(),
                reason: format!("a layer beyond num_hidden_layers {n_layer}"),
            });
        }
        let permute_heads = match (kind, part) {
            (Kind::Llama, "attn_q") => Some(n_head),
            (Kind::Llama, "attn_k") => Some(n_head_kv),
            _ => None,
        };
        tensors.push(PlannedTensor {
            hf_name: hf.clone(),
            gguf_name: gguf.clone(),
            shape: info.shape.clone(),
            matrix: info.shape.len() == 2,
            permute_heads,
        });
    }
    let mut required = vec!["token_embd.weight".to_string(), "output_norm.weight".into()];
    if !tied {
        required.push("output.weight".into());
    }
    for i in 0..n_layer {
        for p in [
            "attn_norm",
            "ffn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            required.push(format!("blk.{i}.{p}.weight"));
        }
        if kind == Kind::Qwen2 {
            for p in ["attn_q", "attn_k", "attn_v"] {
                required.push(format!("blk.{i}.{p}.bias"));
            }
        }
    }
    if let Some(missing) = required
        .iter()
        .find(|r| !tensors.iter().any(|t| &t.gguf_name == *r))
    {
        return Err(ImportError::Tensor {
            name: missing.clone(),
            reason: format!("required by llama.cpp's {arch} but not in the checkpoint"),
        });
    }
    Ok(Plan {
        architecture: arch,
        kvs,
        tensors,
        pooling: "none",
        vocab_size: n_vocab,
    })
}

/// Reorders the rows of a Q or K projection (`[n_heads·d, cols]`, row-major, or a bias with
/// `cols` 1) from Hugging Face's half-split rotary layout to llama.cpp's interleaved one.
pub fn permute_rows(data: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let rows = data.len() / cols;
    let d = rows / n_heads;
    let half = d / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for s in 0..2 {
                let to = h * d + 2 * i + s;
                let from = h * d + s * half + i;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_interleave_the_two_halves_of_each_head() {
        // 2 heads of size 4, one column: rows [a0 a1 b0 b1 | c0 c1 d0 d1].
        let data = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0];
        assert_eq!(
            permute_rows(&data, 2, 1),
            [0.0, 10.0, 1.0, 11.0, 20.0, 30.0, 21.0, 31.0]
        );
    }

    #[test]
    fn names_map_to_llama_cpp_names() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_proj.bias")
                .unwrap()
                .as_deref(),
            Some("blk.3.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.gate_proj.weight")
                .unwrap()
                .as_deref(),
            Some("blk.0.ffn_gate.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq").unwrap(),
            None
        );
        assert!(gguf_name("model.layers.0.block_sparse_moe.gate.weight").is_err());
    }
}
