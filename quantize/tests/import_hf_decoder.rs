//! `import-hf` on decoders (llama, qwen2).
//!
//! No Llama or Qwen2 checkpoint in safetensors is on PyPI (NOTES.md), so this test makes one
//! from a GGUF test model, the way Hugging Face would hold it: every tensor dequantized (with
//! candle, an implementation independent of llama.cpp's loader) and written as F16 safetensors
//! under Hugging Face's names, a Llama's Q and K rows put back in Hugging Face's half-split
//! rotary order, `config.json` from the GGUF's hyper-parameters, `tokenizer.json` (byte-level
//! BPE: the GGUF's tokens and merges, with the pre-tokenizer Hugging Face uses for that model)
//! and `tokenizer_config.json` (specials, chat template). `import-hf` converts it back, and
//! llama.cpp must find the two files the same model: the same token ids on texts with digits,
//! code, accents and chat markup; next-token distributions within a small KL of the original
//! (which is quantized, so not bit-equal); the same vocabulary, merges and template.
//!
//! This checks the weight mapping, the rotary reordering, the metadata and the vocabulary
//! transfer; it cannot check the pre-tokenizer recognition against a tokenizer.json written by
//! Hugging Face itself, since the fixture writes that part from the same table.

mod common;

use std::fs::File;
use std::io::BufReader;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use inhouse_formats::gguf::{self, Array, Value};
use inhouse_quantize::hf::{self, bpe, OutType};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use safetensors::tensor::TensorView;
use serde_json::json;

const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published 4 papers; 3.14159 is π.",
    "fn main() {\n    println!(\"héllo, wörld\");\n}\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
];

fn backend() -> &'static LlamaBackend {
    static B: OnceLock<LlamaBackend> = OnceLock::new();
    B.get_or_init(|| {
        let dir = inhouse_formats::backends::find_backend_dir(llama_cpp_sys_2::BACKENDS_DIR)
            .expect("ggml backend directory");
        llama_cpp_2::llama_backend::load_backends_from_path(&dir);
        let mut b = LlamaBackend::init().expect("llama.cpp init");
        b.void_logs();
        b
    })
}

fn load(path: &Path) -> LlamaModel {
    let params = LlamaModelParams::default().with_n_gpu_layers(0);
    LlamaModel::load_from_file(backend(), path, &params).expect("llama.cpp loads the GGUF")
}

/// The Hugging Face name of a GGUF tensor.
fn hf_name(gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.").expect("a layer tensor");
    let (n, part) = rest.split_once('.').unwrap();
    let (stem, suffix) = part.rsplit_once('.').unwrap();
    let hf = match stem {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        other => panic!("unexpected tensor {other}"),
    };
    format!("model.layers.{n}.{hf}.{suffix}")
}

/// llama.cpp's interleaved rotary rows back to Hugging Face's half-split order (the inverse
/// of the converter's reordering, written independently here).
fn unpermute(data: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let d = data.len() / cols / n_heads;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_heads {
        for r in 0..d {
            // GGUF row h·d + r holds pair r/2, half r%2.
            let hf = h * d + (r % 2) * (d / 2) + r / 2;
            let g = h * d + r;
            out[hf * cols..(hf + 1) * cols].copy_from_slice(&data[g * cols..(g + 1) * cols]);
        }
    }
    out
}

/// Writes a Hugging Face checkpoint of the GGUF model `src` into `dir`.
/// `shards` above 1 splits the weights into that many files named by
/// `model.safetensors.index.json`, as large checkpoints are.
fn make_checkpoint(src: &Path, dir: &Path, shards: usize) {
    let meta = gguf::open(src).unwrap();
    let arch = meta.architecture().unwrap().to_string();
    let u = |k: &str| meta.get_u64(&format!("{arch}.{k}")).unwrap();
    let f = |k: &str| match meta.get(&format!("{arch}.{k}")) {
        Some(Value::F32(x)) => *x as f64,
        other => panic!("{k}: {other:?}"),
    };
    let (n_embd, n_head, n_head_kv) = (
        u("embedding_length"),
        u("attention.head_count"),
        u("attention.head_count_kv"),
    );
    let Some(Value::Array(Array::String(tokens))) = meta.get("tokenizer.ggml.tokens") else {
        panic!("tokens")
    };
    let Some(Value::Array(Array::I32(types))) = meta.get("tokenizer.ggml.token_type") else {
        panic!("token types")
    };
    let Some(Value::Array(Array::String(merges))) = meta.get("tokenizer.ggml.merges") else {
        panic!("merges")
    };
    let tied = !meta.tensors().iter().any(|t| t.name == "output.weight");

    // Weights, dequantized by candle, as F16.
    let mut reader = BufReader::new(File::open(src).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in content.tensor_infos.keys() {
        let t = content
            .tensor(&mut reader, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let shape = t.dims().to_vec();
        let mut data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if arch == "llama" {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            if name.contains(".attn_q.") {
                data = unpermute(&data, n_head as usize, cols);
            } else if name.contains(".attn_k.") {
                data = unpermute(&data, n_head_kv as usize, cols);
            }
        }
        let bytes = data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        tensors.push((hf_name(name), shape, bytes));
    }
    let per_shard = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(per_shard).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let views: Vec<(String, TensorView)> = chunk
            .iter()
            .map(|(n, s, b)| {
                weight_map.insert(n.clone(), file.clone().into());
                (
                    n.clone(),
                    TensorView::new(safetensors::Dtype::F16, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
    }
    if shards > 1 {
        let index = json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }

    let config = json!({
        "architectures": [if arch == "llama" { "LlamaForCausalLM" } else { "Qwen2ForCausalLM" }],
        "model_type": arch,
        "hidden_size": n_embd,
        "intermediate_size": u("feed_forward_length"),
        "num_hidden_layers": u("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "max_position_embeddings": u("context_length"),
        "vocab_size": tokens.len(),
        "rms_norm_eps": f("attention.layer_norm_rms_epsilon"),
        "rope_theta": f("rope.freq_base"),
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "rope_scaling": null,
        "torch_dtype": "float16",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    // The tokenizer as Hugging Face writes it for this model's pre-tokenizer.
    let pre = match meta.get_str("tokenizer.ggml.pre").unwrap() {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": true}]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": bpe::QWEN2_REGEX}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
             "use_regex": false}]}),
        other => panic!("no fixture for pre-tokenizer {other}"),
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        match ty {
            5 => {} // padding rows: the converter names them again
            3 | 4 => added.push(json!({"id": id, "content": t, "special": ty == 3,
                                       "single_word": false, "lstrip": false, "rstrip": false,
                                       "normalized": false})),
            _ => {}
        }
        if ty != 5 {
            vocab.insert(t.clone(), id.into());
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let text_of = |key: &str| {
        meta.get_u64(&format!("tokenizer.ggml.{key}"))
            .map(|id| tokens[id as usize].clone())
    };
    let tok_config = json!({
        "bos_token": text_of("bos_token_id"),
        "eos_token": text_of("eos_token_id"),
        "pad_token": text_of("padding_token_id"),
        "unk_token": text_of("unknown_token_id"),
        "add_bos_token": matches!(meta.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true))),
        "chat_template": meta.get_str("tokenizer.chat_template"),
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_config.to_string()).unwrap();
}

fn ids(model: &LlamaModel, text: &str) -> Vec<i32> {
    model
        .vocab()
        .tokenize(text.as_bytes(), true, true)
        .into_iter()
        .map(|t| t.0)
        .collect()
}

fn logits(model: &LlamaModel, tokens: &[i32]) -> Vec<Vec<f32>> {
    let n = tokens.len() as u32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n.max(64)))
        .with_n_batch(n.max(64))
        .with_n_ubatch(n.max(64))
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend(), params).expect("context");
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch
            .add(llama_cpp_2::token::LlamaToken(t), i as i32, &[0], true)
            .unwrap();
    }
    ctx.decode(&mut batch).expect("decode");
    (0..tokens.len())
        .map(|i| ctx.get_logits_ith(i as i32).to_vec())
        .collect()
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap()
}

fn round_trip(model_file: &str, expect_arch: &str, shards: usize) {
    let src = common::model(model_file);
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("checkpoint");
    std::fs::create_dir_all(&ckpt).unwrap();
    let start = Instant::now();
    make_checkpoint(&src, &ckpt, shards);
    eprintln!(
        "{model_file}: checkpoint written in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let out = tmp.path().join("converted.gguf");
    let start = Instant::now();
    let summary = hf::import(&hf::Options {
        dir: ckpt.clone(),
        out: out.clone(),
        out_type: OutType::F16,
        name: Some("round-trip".into()),
    })
    .expect("the checkpoint converts");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{model_file}: import-hf in {secs:.1} s ({} tensors, {} parameters)",
        summary.tensors, summary.parameters
    );
    assert_eq!(summary.architecture, expect_arch);

    let (a, b) = (gguf::open(&src).unwrap(), gguf::open(&out).unwrap());
    for key in [
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ] {
        assert_eq!(a.get(key), b.get(key), "{key}");
    }

    let (orig, conv) = (load(&src), load(&out));
    for text in TEXTS {
        assert_eq!(ids(&orig, text), ids(&conv, text), "token ids of {text:?}");
    }
    let tokens = ids(&orig, &TEXTS[..3].concat());
    let (lo, lc) = (logits(&orig, &tokens), logits(&conv, &tokens));
    let mut kl_sum = 0.0;
    let mut kl_max: f64 = 0.0;
    let mut same_top1 = 0;
    for (ro, rc) in lo.iter().zip(&lc) {
        let (po, pc) = (log_softmax(ro), log_softmax(rc));
        let kl: f64 = po.iter().zip(&pc).map(|(&o, &c)| o.exp() * (o - c)).sum();
        kl_sum += kl;
        kl_max = kl_max.max(kl);
        same_top1 += usize::from(argmax(ro) == argmax(rc));
    }
    let n = tokens.len();
    let (mean_kl, top1) = (kl_sum / n as f64, same_top1 as f64 / n as f64);
    eprintln!(
        "{model_file}: {n} positions, KL(original || converted) mean {mean_kl:.4} max \
         {kl_max:.4} nats, same top-1 {:.0} %",
        top1 * 100.0
    );
    assert!(mean_kl < 0.05, "mean KL {mean_kl}");
    assert!(top1 >= 0.85, "top-1 agreement {top1}");
}

#[test]
fn a_llama_checkpoint_converts_to_the_same_model() {
    round_trip(common::SMOLLM2, "llama", 1);
}

#[test]
fn llama_rotary_rows_round_trip() {
    // The fixture's inverse and the converter's reordering undo each other.
    let data: Vec<f32> = (0..48).map(|x| x as f32).collect();
    let back = hf::decoder::permute_rows(&unpermute(&data, 3, 2), 3, 2);
    assert_eq!(back, data);
}

#[test]
fn a_qwen2_checkpoint_converts_to_the_same_model() {
    // In three shards and an index, as large checkpoints come.
    round_trip("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2", 3);
}
