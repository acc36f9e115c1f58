//! `inhouse-native-reference MODEL THREADS REPEAT`: llama-bench's two standard figures, pp512
//! (one 512-token batch) and tg128 (128 one-token decodes, no sampling), on a llama.cpp built
//! natively for this CPU. Prints one JSON line. `benches/serving.rs` runs the same measurement
//! in-process on the shipped, dispatching build (`Raw::llama_bench`) and prints both.

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, threads, repeat] = args.as_slice() else {
        eprintln!("usage: inhouse-native-reference MODEL THREADS REPEAT");
        std::process::exit(2);
    };
    let threads: i32 = threads.parse().expect("THREADS: a number");
    let repeat: usize = repeat.parse().expect("REPEAT: a number");
    let mut backend = LlamaBackend::init().expect("llama backend");
    backend.void_logs();
    let model =
        LlamaModel::load_from_file(&backend, model, &LlamaModelParams::default()).expect("model");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let n_vocab = model.n_vocab();
    let token = |i: usize| LlamaToken(((i * 7919 + 13) % n_vocab as usize) as i32);
    let mut batch = LlamaBatch::new(512, 1);
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    // One warm-up round, as llama-bench does, then `repeat` measured rounds.
    for round in 0..=repeat {
        let mut ctx = model
            .new_context(&backend, params.clone())
            .expect("context");
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
        let tg_rate = 128.0 / t.elapsed().as_secs_f64();
        if round > 0 {
            pp.push(pp_rate);
            tg.push(tg_rate);
        }
    }
    println!(
        "{{\"pp512\": {:.2}, \"tg128\": {:.2}}}",
        median(pp),
        median(tg)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
