//! What each attention setting costs and what it buys (issue 21, point 5): raw llama.cpp in this
//! process, one model, four context settings, in one run:
//! - `plain attn` : flash attention off, F16 K/V, one KV stream per sequence (the daemon's
//!   deterministic setting before issue 21);
//! - `flash f16`  : flash attention on, F16 K/V, one KV stream per sequence;
//! - `flash f16/f32`: flash attention on, K F16 and V F32, one KV stream per sequence (the
//!   daemon's deterministic setting since issue 21: ggml's CPU flash attention then takes its
//!   one-row kernel for every batch shape, see `serving_params`);
//! - `llama defaults`: llama.cpp's own (flash attention auto, F16 K/V, one unified KV cache),
//!   what llama-server runs.
//!
//! For each it prints the prompt speed of one cold 1,130-token prompt (prefilled in batches of
//! 512, as the daemon does alone), the generation speed after it, and whether the numbers are
//! batch-invariant: the largest difference of any logit between (a) six tokens decoded one at a
//! time and (b) the same six decoded in one batch (what verifying a speculative draft does), and
//! between a prompt prefilled in one batch and in chunks of 64 (what continuous batching does
//! while others generate). 0 means bit-identical.
//!
//! `cargo bench --bench prompt_settings`. Environment: `INHOUSE_BENCH_MODEL` (default SmolLM2),
//! `INHOUSE_BENCH_THREADS` (2), `INHOUSE_BENCH_REPEAT` (5, medians printed).

#[path = "common/models.rs"]
mod models;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

const CTX: u32 = 2048;
const SLOTS: u32 = 4;
const N_BATCH: usize = inhouse::engine::llama::N_BATCH as usize;
const PROMPT_TOKENS: usize = 1130;
const GEN: usize = 64;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("INHOUSE_BENCH_MODEL") {
        return PathBuf::from(p);
    }
    models::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A retrieval-sized prompt: the benchmark's own written documents, repeated as needed.
fn prompt_text() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/synth-docs");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("benches/synth-docs")
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut text = String::new();
    for n in names.iter().cycle().take(names.len() * 4) {
        text.push_str(&std::fs::read_to_string(n).unwrap());
        text.push('\n');
    }
    text
}

#[derive(Clone, Copy)]
struct Setting {
    name: &'static str,
    flash: bool,
    k: KvCacheType,
    v: KvCacheType,
    unified: bool,
}

const SETTINGS: [Setting; 5] = [
    Setting {
        name: "plain attn",
        flash: false,
        k: KvCacheType::F16,
        v: KvCacheType::F16,
        unified: false,
    },
    Setting {
        name: "flash f16",
        flash: true,
        k: KvCacheType::F16,
        v: KvCacheType::F16,
        unified: false,
    },
    Setting {
        name: "flash f16/q8_0",
        flash: true,
        k: KvCacheType::F16,
        v: KvCacheType::Q8_0,
        unified: false,
    },
    Setting {
        name: "flash q8_0/q8_0",
        flash: true,
        k: KvCacheType::Q8_0,
        v: KvCacheType::Q8_0,
        unified: false,
    },
    Setting {
        name: "llama defaults",
        flash: true,
        k: KvCacheType::F16,
        v: KvCacheType::F16,
        unified: true,
    },
];

struct Raw {
    backend: LlamaBackend,
    model: LlamaModel,
    threads: i32,
}

impl Raw {
    fn params(&self, s: Setting) -> LlamaContextParams {
        let flash = if s.flash {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
        } else {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
        };
        LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(CTX * SLOTS))
            .with_n_batch(N_BATCH as u32)
            .with_n_ubatch(N_BATCH as u32)
            .with_n_seq_max(SLOTS)
            .with_kv_unified(s.unified)
            .with_flash_attention_policy(flash)
            .with_type_k(s.k)
            .with_type_v(s.v)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
    }

    fn ctx(&self, s: Setting) -> LlamaContext<'_> {
        self.model
            .new_context(&self.backend, self.params(s))
            .expect("context")
    }
}

/// Prefills `tokens` into sequence 0 in batches of `chunk`; the logits of the last token.
fn prefill(ctx: &mut LlamaContext<'_>, tokens: &[LlamaToken], chunk: usize) -> Vec<f32> {
    let mut batch = LlamaBatch::new(N_BATCH, 1);
    for (c, part) in tokens.chunks(chunk).enumerate() {
        batch.clear();
        for (j, t) in part.iter().enumerate() {
            let pos = c * chunk + j;
            batch
                .add(*t, pos as i32, &[0], pos + 1 == tokens.len())
                .unwrap();
        }
        ctx.decode(&mut batch).unwrap();
    }
    ctx.get_logits_ith(batch.n_tokens() - 1).to_vec()
}

fn argmax(l: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (i, v) in l.iter().enumerate() {
        if *v > l[best] {
            best = i;
        }
    }
    LlamaToken(best as i32)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

struct Figures {
    prompt: f64,
    generation: f64,
}

fn speed(raw: &Raw, s: Setting, prompt: &[LlamaToken]) -> Figures {
    let mut ctx = raw.ctx(s);
    let t = Instant::now();
    let mut logits = prefill(&mut ctx, prompt, N_BATCH);
    let prompt_rate = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let mut batch = LlamaBatch::new(1, 1);
    let t = Instant::now();
    for i in 0..GEN {
        batch.clear();
        batch
            .add(argmax(&logits), (prompt.len() + i) as i32, &[0], true)
            .unwrap();
        ctx.decode(&mut batch).unwrap();
        logits = ctx.get_logits_ith(0).to_vec();
    }
    Figures {
        prompt: prompt_rate,
        generation: GEN as f64 / t.elapsed().as_secs_f64(),
    }
}

/// (one at a time vs one batch of six, one prefill vs chunks of 64): the largest logit
/// differences.
fn invariance(raw: &Raw, s: Setting, prompt: &[LlamaToken]) -> (f32, f32) {
    // (a) six tokens one at a time, greedily.
    let mut ctx = raw.ctx(s);
    let mut logits = prefill(&mut ctx, prompt, N_BATCH);
    let mut toks = Vec::new();
    let mut one_by_one = Vec::new();
    let mut batch = LlamaBatch::new(N_BATCH, 1);
    for i in 0..6 {
        let t = argmax(&logits);
        toks.push(t);
        batch.clear();
        batch.add(t, (prompt.len() + i) as i32, &[0], true).unwrap();
        ctx.decode(&mut batch).unwrap();
        logits = ctx.get_logits_ith(0).to_vec();
        one_by_one.push(logits.clone());
    }
    drop(ctx);
    // (b) the same six in one decode.
    let mut ctx = raw.ctx(s);
    let first = prefill(&mut ctx, prompt, N_BATCH);
    batch.clear();
    for (i, t) in toks.iter().enumerate() {
        batch
            .add(*t, (prompt.len() + i) as i32, &[0], true)
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let verify = (0..6)
        .map(|i| max_diff(&one_by_one[i], ctx.get_logits_ith(i as i32)))
        .fold(0.0, f32::max);
    drop(ctx);
    // (c) the prompt in chunks of 64.
    let mut ctx = raw.ctx(s);
    let chunked = prefill(&mut ctx, prompt, 64);
    (verify, max_diff(&first, &chunked))
}

/// What verifying a draft costs: the time of one decode of `k` tokens of one sequence after a
/// 600-token prompt, relative to a decode of one token (medians of `repeat`).
fn verify_costs(raw: &Raw, s: Setting, prompt: &[LlamaToken], repeat: usize) -> Vec<(usize, f64)> {
    let mut ctx = raw.ctx(s);
    let base = &prompt[..600];
    prefill(&mut ctx, base, N_BATCH);
    let mut batch = LlamaBatch::new(N_BATCH, 1);
    let mut time = |k: usize| {
        let mut v = Vec::new();
        for _ in 0..repeat {
            batch.clear();
            for (j, t) in prompt[600..600 + k].iter().enumerate() {
                batch.add(*t, (600 + j) as i32, &[0], true).unwrap();
            }
            let t = Instant::now();
            ctx.decode(&mut batch).unwrap();
            v.push(t.elapsed().as_secs_f64());
            ctx.clear_kv_cache_seq(Some(0), Some(600), None).unwrap();
        }
        median(v)
    };
    let one = time(1);
    [2, 3, 5, 9, 17, 33, 65]
        .iter()
        .map(|&k| (k, time(k) / one))
        .collect()
}

/// The cost of a decode of `n` tokens of one sequence in one-token decodes, from the measured
/// points (linear between them and past the last).
fn cost_of(costs: &[(usize, f64)], n: usize) -> f64 {
    let mut pts = vec![(1usize, 1.0f64)];
    pts.extend_from_slice(costs);
    let w = pts
        .windows(2)
        .find(|w| n <= w[1].0)
        .unwrap_or(&pts[pts.len() - 2..]);
    let ((a, fa), (b, fb)) = (w[0], w[1]);
    fa + (fb - fa) * (n as f64 - a as f64) / (b as f64 - a as f64)
}

/// How much prompt lookup can gain on this machine, from the measured verification costs: the
/// benchmark's workloads (benches/speculative-workloads.json, what `scripts/bench-speculative`
/// sends) answered greedily (160 tokens), then replayed against three drafters, each step
/// costing `cost_of(k + 1)` for a draft of k: the shipped policy (`speculative::lookup` and
/// `Lookup`, default settings), an oracle that drafts exactly the tokens that will be accepted
/// from the same lookup and only when that pays (the ceiling of drafting from the prompt and
/// the text so far), and the shipped policy on a repeated request (the previous answer as
/// `earlier`). Speed-ups against decoding one token a step.
fn lookup_ceiling(raw: &Raw, s: Setting, costs: &[(usize, f64)]) {
    use inhouse::engine::speculative::{self as spec, Lookup};
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/speculative-workloads.json");
    let workloads: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("workloads")).expect("json");
    let tmpl = raw.model.chat_template(None).expect("chat template");
    let c = spec::SpeculativeConfig::default();
    let replay =
        |prompt: &[LlamaToken], out: &[LlamaToken], earlier: &[LlamaToken], oracle: bool| {
            let mut lookup = Lookup::new(c.draft_max as usize);
            let mut history = prompt.to_vec();
            history.push(out[0]);
            let (mut p, mut cost, mut drafted, mut accepted) = (1, 0.0, 0, 0);
            while p < out.len() {
                let room = (c.draft_max as usize).min(out.len() - p - 1);
                if !oracle {
                    lookup.observe(&history);
                }
                let f = spec::lookup(
                    earlier,
                    &history,
                    c.ngram_min as usize,
                    c.ngram_max as usize,
                    room,
                );
                let agree =
                    |d: &[LlamaToken]| d.iter().zip(&out[p..]).take_while(|(a, b)| a == b).count();
                let k = if f.draft.is_empty() {
                    0
                } else if oracle {
                    let a = agree(&f.draft);
                    if a > 0 && (a + 1) as f64 / cost_of(costs, a + 1) > 1.0 {
                        a
                    } else {
                        0
                    }
                } else {
                    lookup.allowance(&f, history.len(), 1, c.verify_cost)
                };
                let a = agree(&f.draft[..k]);
                if !oracle {
                    lookup.record(k, a);
                }
                cost += cost_of(costs, k + 1);
                drafted += k;
                accepted += a;
                let n = (a + 1).min(out.len() - p);
                history.extend_from_slice(&out[p..p + n]);
                p += n;
            }
            let speedup = (out.len() - 1) as f64 / cost;
            let acc = if drafted > 0 {
                accepted as f64 / drafted as f64
            } else {
                0.0
            };
            format!("{speedup:.2}× ({acc:.2})")
        };
    println!(
        "\nprompt lookup on this machine, replayed with the costs above (speed-up against no \
         drafting; acceptance):"
    );
    println!("| workload | answer tokens | shipped policy | oracle (ceiling) | shipped, repeated request |");
    println!("|---|---:|---:|---:|---:|");
    for (name, text) in workloads.iter().filter(|(k, _)| !k.starts_with('_')) {
        let msg = llama_cpp_2::model::LlamaChatMessage::new(
            "user".into(),
            text.as_str().expect("a prompt").into(),
        )
        .expect("message");
        let chat = raw
            .model
            .apply_chat_template(&tmpl, &[msg], true)
            .expect("template");
        let prompt = raw.model.vocab().tokenize(chat.as_bytes(), false, true);
        // Greedy answer, one token at a time (the text a plain request gives).
        let mut ctx = raw.ctx(s);
        let mut logits = prefill(&mut ctx, &prompt, N_BATCH);
        let mut out = Vec::new();
        let mut batch = LlamaBatch::new(1, 1);
        for i in 0..160 {
            let t = argmax(&logits);
            out.push(t);
            if raw.model.vocab().is_eog(t) {
                break;
            }
            batch.clear();
            batch.add(t, (prompt.len() + i) as i32, &[0], true).unwrap();
            ctx.decode(&mut batch).unwrap();
            logits = ctx.get_logits_ith(0).to_vec();
        }
        let mut earlier = prompt[prompt.len() - 2..].to_vec();
        earlier.extend_from_slice(&out);
        println!(
            "| {name} | {} | {} | {} | {} |",
            out.len(),
            replay(&prompt, &out, &[], false),
            replay(&prompt, &out, &[], true),
            replay(&prompt, &out, &earlier, false)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let threads = env_num("INHOUSE_BENCH_THREADS", 2);
    let repeat = env_num("INHOUSE_BENCH_REPEAT", 5);
    inhouse::engine::cpu_backend().expect("ggml CPU backend");
    let mut backend = LlamaBackend::init().expect("llama backend");
    if std::env::var_os("INHOUSE_BENCH_LOGS").is_none() {
        backend.void_logs();
    }
    let path = model_path();
    let model = LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let raw = Raw {
        backend,
        model,
        threads: threads as i32,
    };
    let mut prompt = raw
        .model
        .vocab()
        .tokenize(prompt_text().as_bytes(), true, true);
    assert!(prompt.len() >= PROMPT_TOKENS, "prompt too short");
    prompt.truncate(PROMPT_TOKENS);
    println!(
        "model {}, {threads} threads, {PROMPT_TOKENS}-token prompt, medians of {repeat}",
        path.file_name().unwrap().to_string_lossy()
    );
    if std::env::var_os("INHOUSE_BENCH_DIAG").is_some() {
        let mut first = Vec::new();
        for s in SETTINGS {
            let mut ctx = raw.ctx(s);
            let l = prefill(&mut ctx, &prompt, N_BATCH);
            let l64 = {
                let mut c2 = raw.ctx(s);
                prefill(&mut c2, &prompt[..600], N_BATCH)
            };
            eprintln!(
                "{}: logits[0..3] {:?} (600 tokens: {:?})",
                s.name,
                &l[..3],
                &l64[..3]
            );
            first.push(l);
        }
        eprintln!("f16 vs f16/q8_0: {:e}", max_diff(&first[1], &first[2]));
    }
    let costs = verify_costs(&raw, SETTINGS[3], &prompt, repeat.max(5) * 2);
    println!(
        "decode of k tokens of one sequence / decode of one ({}): {}",
        SETTINGS[3].name,
        costs
            .iter()
            .map(|(k, r)| format!(
                "k={k} {r:.2} ({:.2} a token more)",
                (r - 1.0) / (*k as f64 - 1.0)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    lookup_ceiling(&raw, SETTINGS[3], &costs);
    if std::env::var_os("INHOUSE_BENCH_COSTS_ONLY").is_some() {
        return;
    }
    // Interleaved rounds, so that load changes hit every setting alike.
    let mut runs: Vec<Vec<Figures>> = SETTINGS.iter().map(|_| Vec::new()).collect();
    for _ in 0..repeat {
        for (i, s) in SETTINGS.iter().enumerate() {
            runs[i].push(speed(&raw, *s, &prompt));
        }
    }
    let medians: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| {
            (
                median(r.iter().map(|f| f.prompt).collect()),
                median(r.iter().map(|f| f.generation).collect()),
            )
        })
        .collect();
    let reference = medians[SETTINGS.len() - 1];
    println!(
        "| setting | prompt tok/s | vs llama defaults | generation tok/s | vs llama defaults | \
         max Δlogit, 6 at once vs one by one | max Δlogit, chunks of 64 vs 512 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, s) in SETTINGS.iter().enumerate() {
        let (verify, chunks) = invariance(&raw, *s, &prompt);
        println!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.2} | {:e} | {:e} |",
            s.name,
            medians[i].0,
            medians[i].0 / reference.0,
            medians[i].1,
            medians[i].1 / reference.1,
            verify,
            chunks
        );
    }
}
