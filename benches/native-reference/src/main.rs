//! `inhouse-native-reference MODEL THREADS REPEAT`: llama-bench's pp512 and tg128 on a llama.cpp
//! built natively for this CPU. Prints one JSON line. `benches/serving.rs` runs the same
//! measurement (`llama_bench.rs`) in-process on the shipped, dispatching build and prints both.

mod llama_bench;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

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
    let (pp, tg) = llama_bench::pp512_tg128(&backend, &model, threads, repeat);
    println!("{{\"pp512\": {pp:.2}, \"tg128\": {tg:.2}}}");
}
