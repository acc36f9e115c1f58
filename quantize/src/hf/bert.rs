//! BERT encoders (`model_type: "bert"`, e.g. all-MiniLM-L6-v2) as llama.cpp's `bert`
//! architecture.
//!
//! What llama.cpp b11434 reads (`src/models/bert.cpp`, `llama-model.cpp`, `llama-vocab.cpp`):
//! the hyper-parameters under `bert.*` (context and embedding length, feed-forward length, block
//! and head counts, the layer-norm epsilon, `attention.causal = false`, `pooling_type`), the
//! WordPiece vocabulary under `tokenizer.ggml.*` with `model = "bert"` and the count of token
//! types (required), and these tensors, named as Hugging Face's `BertModel` names them here:
//!
//! | GGUF | Hugging Face |
//! | --- | --- |
//! | `token_embd` | `embeddings.word_embeddings` |
//! | `position_embd` | `embeddings.position_embeddings` |
//! | `token_types` | `embeddings.token_type_embeddings` |
//! | `token_embd_norm` | `embeddings.LayerNorm` |
//! | `blk.N.attn_q` / `attn_k` / `attn_v` | `encoder.layer.N.attention.self.query` / `key` / `value` |
//! | `blk.N.attn_output` | `encoder.layer.N.attention.output.dense` |
//! | `blk.N.attn_output_norm` | `encoder.layer.N.attention.output.LayerNorm` |
//! | `blk.N.ffn_up` | `encoder.layer.N.intermediate.dense` |
//! | `blk.N.ffn_down` | `encoder.layer.N.output.dense` |
//! | `blk.N.layer_output_norm` | `encoder.layer.N.output.LayerNorm` |
//!
//! A `bert.` prefix (checkpoints saved from `BertFor…` heads) is dropped. Not converted, on
//! purpose: `embeddings.position_ids` (a buffer, not a weight), the pooler (`pooler.dense`:
//! llama.cpp's mean and CLS pooling do not apply it, and sentence-transformers models do not use
//! it) and pre-training heads (`cls.*`). Any other tensor is an error, so that a variant with
//! weights this mapping does not know is refused instead of converted without them.
//!
//! Pooling comes from the sentence-transformers `1_Pooling/config.json` when present (mean,
//! CLS); a checkpoint without one is written with mean pooling, what sentence embeddings from a
//! plain BERT usually use.

use std::path::Path;

use inhouse_formats::gguf::{Array, Value};

use super::checkpoint::{read_json, Checkpoint};
use super::wordpiece::WordPiece;
use super::{ImportError, Plan, PlannedTensor};

/// `LLAMA_POOLING_TYPE_MEAN`.
pub const POOLING_MEAN: u32 = 1;
/// `LLAMA_POOLING_TYPE_CLS`.
pub const POOLING_CLS: u32 = 2;

/// The pooling of a sentence-transformers checkpoint (`1_Pooling/config.json`), mean without.
fn pooling(dir: &Path) -> Result<(u32, &'static str), ImportError> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.is_file() {
        return Ok((POOLING_MEAN, "mean"));
    }
    let v = read_json(&path)?;
    let on = |k: &str| v.get(k).and_then(serde_json::Value::as_bool) == Some(true);
    let chosen: Vec<&str> = [
        "pooling_mode_cls_token",
        "pooling_mode_mean_tokens",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ]
    .into_iter()
    .filter(|k| on(k))
    .collect();
    match chosen.as_slice() {
        ["pooling_mode_mean_tokens"] => Ok((POOLING_MEAN, "mean")),
        ["pooling_mode_cls_token"] => Ok((POOLING_CLS, "cls")),
        other => Err(ImportError::Unsupported(format!(
            "{}: pooling {other:?}; llama.cpp pools by mean or by the CLS token",
            path.display()
        ))),
    }
}

/// The GGUF name of a Hugging Face BERT tensor; `None` for one that is skipped on purpose.
fn gguf_name(hf: &str) -> Result<Option<String>, ImportError> {
    let name = hf.strip_prefix("bert.").unwrap_or(hf);
    if name == "embeddings.position_ids" || name.starts_with("pooler.") || name.starts_with("cls.")
    {
        return Ok(None);
    }
    let unknown = || ImportError::Tensor {
        name: hf.into(),
        reason: "not a tensor of a BERT encoder this converter knows".into(),
    };
    let (stem, suffix) = name.rsplit_once('.').ok_or_else(unknown)?;
    if suffix != "weight" && suffix != "bias" {
        return Err(unknown());
    }
    let base = match stem {
        "embeddings.word_embeddings" => "token_embd".to_string(),
        "embeddings.position_embeddings" => "position_embd".to_string(),
        "embeddings.token_type_embeddings" => "token_types".to_string(),
        "embeddings.LayerNorm" => "token_embd_norm".to_string(),
        _ => {
            let rest = stem.strip_prefix("encoder.layer.").ok_or_else(unknown)?;
            let (n, part) = rest.split_once('.').ok_or_else(unknown)?;
            let n: u32 = n.parse().map_err(|_| unknown())?;
            let gguf = match part {
                "attention.self.query" => "attn_q",
                "attention.self.key" => "attn_k",
                "attention.self.value" => "attn_v",
                "attention.output.dense" => "attn_output",
                "attention.output.LayerNorm" => "attn_output_norm",
                "intermediate.dense" => "ffn_up",
                "output.dense" => "ffn_down",
                "output.LayerNorm" => "layer_output_norm",
                _ => return Err(unknown()),
            };
            format!("blk.{n}.{gguf}")
        }
    };
    Ok(Some(format!("{base}.{suffix}")))
}

/// Plans the conversion of a BERT checkpoint: metadata and the tensors to write.
pub fn plan(ck: &Checkpoint, name: &str) -> Result<Plan, ImportError> {
    let config = ck.dir.join("config.json");
    let invalid = |reason: String| ImportError::Invalid {
        path: config.clone(),
        reason,
    };
    let n_embd = ck.need_config_u32("hidden_size")?;
    let n_layer = ck.need_config_u32("num_hidden_layers")?;
    let n_head = ck.need_config_u32("num_attention_heads")?;
    let n_ff = ck.need_config_u32("intermediate_size")?;
    let n_ctx = ck.need_config_u32("max_position_embeddings")?;
    let n_vocab = ck.need_config_u32("vocab_size")?;
    let n_types = ck.need_config_u32("type_vocab_size")?;
    if n_embd % n_head != 0 {
        return Err(invalid(format!(
            "hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}"
        )));
    }
    let eps = ck
        .config
        .get("layer_norm_eps")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(1e-12) as f32;
    // llama.cpp's BERT graph: GELU feed-forward, absolute learned positions.
    let act = ck
        .config
        .get("hidden_act")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("gelu");
    if !matches!(act, "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
        return Err(ImportError::Unsupported(format!(
            "hidden_act {act:?}; llama.cpp's BERT uses GELU"
        )));
    }
    let pos = ck
        .config
        .get("position_embedding_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("absolute");
    if pos != "absolute" {
        return Err(ImportError::Unsupported(format!(
            "position_embedding_type {pos:?}; llama.cpp's BERT has absolute positions"
        )));
    }
    let (pooling_type, pooling_name) = pooling(&ck.dir)?;

    let wp = WordPiece::load(&ck.dir.join("tokenizer.json"))?;
    let mut tokens = wp.gguf_tokens()?;
    let mut types = wp.token_types();
    // The embedding matrix may have more rows than the tokenizer has tokens (padded to a
    // multiple for speed): llama.cpp needs one token per row, so name the extra rows.
    match tokens.len().cmp(&(n_vocab as usize)) {
        std::cmp::Ordering::Greater => {
            return Err(invalid(format!(
                "vocab_size {n_vocab} is smaller than the tokenizer's {} tokens",
                tokens.len()
            )))
        }
        std::cmp::Ordering::Less => {
            for i in tokens.len()..n_vocab as usize {
                tokens.push(format!("[PAD{i}]"));
                types.push(super::wordpiece::TOKEN_TYPE_CONTROL);
            }
        }
        std::cmp::Ordering::Equal => {}
    }

    let arch = "bert";
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
            format!("{arch}.attention.layer_norm_epsilon"),
            Value::F32(eps),
        ),
        (format!("{arch}.attention.causal"), Value::Bool(false)),
        (format!("{arch}.pooling_type"), Value::U32(pooling_type)),
        ("tokenizer.ggml.model".into(), Value::String("bert".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.token_type_count".into(),
            Value::U32(n_types),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(wp.cls)),
        ("tokenizer.ggml.cls_token_id".into(), Value::U32(wp.cls)),
        (
            "tokenizer.ggml.seperator_token_id".into(),
            Value::U32(wp.sep),
        ),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(wp.unk)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_sep_token".into(), Value::Bool(true)),
        (
            "tokenizer.ggml.normalizer.lowercase".into(),
            Value::Bool(wp.lowercase),
        ),
        (
            "tokenizer.ggml.normalizer.strip_accents".into(),
            Value::Bool(wp.strip_accents),
        ),
    ];
    if let Some(pad) = wp.pad {
        kvs.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(pad)));
    }
    if let Some(mask) = wp.mask {
        kvs.push(("tokenizer.ggml.mask_token_id".into(), Value::U32(mask)));
    }

    // The tensors, in the checkpoint's (sorted) order, checked against the shapes llama.cpp
    // will ask for.
    let (e, f, c, v, t) = (
        n_embd as usize,
        n_ff as usize,
        n_ctx as usize,
        n_vocab as usize,
        n_types as usize,
    );
    let mut tensors = Vec::new();
    for (hf, info) in ck.tensors() {
        let Some(gguf) = gguf_name(hf)? else {
            continue;
        };
        let expected: Vec<usize> = match gguf.as_str() {
            "token_embd.weight" => vec![v, e],
            "position_embd.weight" => vec![c, e],
            "token_types.weight" => vec![t, e],
            n if n.ends_with(".bias") && n.contains("ffn_up") => vec![f],
            n if n.contains("ffn_up") => vec![f, e],
            n if n.ends_with(".weight") && n.contains("ffn_down") => vec![e, f],
            n if n.ends_with(".weight") && !n.contains("norm") => vec![e, e],
            _ => vec![e],
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
        let layer_ok = gguf
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_none_or(|n| n < n_layer);
        if !layer_ok {
            return Err(ImportError::Tensor {
                name: hf.clone(),
                reason: format!("a layer beyond num_hidden_layers {n_layer}"),
            });
        }
        // Only matrices multiplied in the graph (and the embedding tables read by row) may be
        // 16-bit; norms, biases and the token-type table, added as F32 views, stay F32.
        let matrix = info.shape.len() == 2 && gguf != "token_types.weight";
        tensors.push(PlannedTensor {
            hf_name: hf.clone(),
            gguf_name: gguf,
            shape: info.shape.clone(),
            matrix,
            permute_heads: None,
        });
    }
    // Every tensor llama.cpp requires must be there (it would refuse the file otherwise, later
    // and less clearly).
    let mut required: Vec<String> = [
        "token_embd.weight",
        "position_embd.weight",
        "token_embd_norm.weight",
        "token_embd_norm.bias",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..n_layer {
        for part in [
            "attn_q.weight",
            "attn_k.weight",
            "attn_v.weight",
            "attn_output.weight",
            "attn_output_norm.weight",
            "attn_output_norm.bias",
            "ffn_up.weight",
            "ffn_down.weight",
            "layer_output_norm.weight",
            "layer_output_norm.bias",
        ] {
            required.push(format!("blk.{i}.{part}"));
        }
    }
    if let Some(missing) = required
        .iter()
        .find(|r| !tensors.iter().any(|t| &t.gguf_name == *r))
    {
        return Err(ImportError::Tensor {
            name: missing.clone(),
            reason: "required by llama.cpp's BERT but not in the checkpoint".into(),
        });
    }
    Ok(Plan {
        architecture: arch,
        kvs,
        tensors,
        pooling: pooling_name,
        vocab_size: n_vocab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp_names() {
        let cases = [
            ("embeddings.word_embeddings.weight", "token_embd.weight"),
            ("bert.embeddings.LayerNorm.bias", "token_embd_norm.bias"),
            (
                "encoder.layer.5.attention.self.value.bias",
                "blk.5.attn_v.bias",
            ),
            (
                "encoder.layer.0.attention.output.LayerNorm.weight",
                "blk.0.attn_output_norm.weight",
            ),
            (
                "encoder.layer.3.output.dense.weight",
                "blk.3.ffn_down.weight",
            ),
            (
                "encoder.layer.3.output.LayerNorm.weight",
                "blk.3.layer_output_norm.weight",
            ),
        ];
        for (hf, gguf) in cases {
            assert_eq!(gguf_name(hf).unwrap().as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(gguf_name("embeddings.position_ids").unwrap(), None);
        assert_eq!(gguf_name("pooler.dense.weight").unwrap(), None);
        assert!(gguf_name("encoder.layer.0.attention.self.rotary.weight").is_err());
        assert!(gguf_name("decoder.weight").is_err());
    }
}
