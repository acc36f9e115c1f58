//! llama-bench's two standard figures, measured one way for both builds: compiled into
//! `inhouse-native-reference` (llama.cpp built natively) and, through `#[path]`, into
//! `benches/serving.rs` (the shipped build with runtime CPU dispatch).

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::time::Instant;

/// pp512 (one 512-token batch) and tg128 (128 one-token decodes, no sampling) in tokens/s:
/// medians of `repeat` rounds after one warm-up round, each round in a fresh context.
pub fn pp512_tg128(
    backend: &LlamaBackend,
    model: &LlamaModel,
    threads: i32,
    repeat: usize,
) -> (f64, f64) {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let n_vocab = model.n_vocab() as usize;
    let token = |i: usize| LlamaToken(((i * 7919 + 13) % n_vocab) as i32);
    let mut batch = LlamaBatch::new(512, 1);
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for round in 0..=repeat {
        let mut ctx = model.new_context(backend, params.clone()).expect("context");
        batch.clear();
        for i in 0..512 {
            batch.add(token(i), i as i32, &[0], i == 511).unwrap();
        }
        let t = Instant::now();
        ctx.decode(&mut batch).unwrap();
        let pp_rate = 512.0 / t.elapsed().as_secs_f64();
        ctx.clear_kv_cache();
        let t = Instant::now();
        for i in 0..128 {
            batch.clear();
            batch.add(token(1000 + i), i as i32, &[0], true).unwrap();
            ctx.decode(&mut batch).unwrap();
        }
        if round > 0 {
            pp.push(pp_rate);
            tg.push(128.0 / t.elapsed().as_secs_f64());
        }
    }
    (median(pp), median(tg))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
