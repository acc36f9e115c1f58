//! Serving benchmark: the real `inhoused` over its socket, side by side with raw llama.cpp
//! through `llama-cpp-2` in this process, on the same model, threads and settings, in one run.
//!
//! `cargo bench --bench serving` (release profile). Environment:
//! - `INHOUSE_BENCH_MODEL`: GGUF path (default: SmolLM2 from the test model cache),
//! - `INHOUSE_BENCH_THREADS` (default 2), `INHOUSE_BENCH_REPEAT` (default 3; medians are printed),
//! - `INHOUSE_BENCH_GPU_LAYERS` (default 0): layers offloaded on both sides (see scripts/bench-gpu),
//! - `INHOUSE_BENCH_DAEMON_CONFIG`: extra config lines for the daemon, to compare settings,
//! - `INHOUSE_BENCH_THROUGHPUT=1`: the daemon with `deterministic-batching = false` and raw
//!   llama.cpp with the same settings (its defaults: unified KV cache, flash attention).
//!
//! Prints every figure and its ratio to raw llama.cpp. No figure is asserted: the machines are
//! shared, so the numbers are recorded in docs/BENCHMARKS.md with the load seen.

#[path = "common/models.rs"]
mod models;

// The same measurement the native reference binary makes.
#[path = "native-reference/src/llama_bench.rs"]
mod llama_bench;

use hyper::Method;
use inhouse::client::{Client, SseParser};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CTX: u32 = 2048;
const N_BATCH: u32 = inhouse::engine::llama::N_BATCH;

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("INHOUSE_BENCH_MODEL") {
        return PathBuf::from(p);
    }
    models::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Layers both sides offload to a GPU (`INHOUSE_BENCH_GPU_LAYERS`, default 0; a `cuda` build
/// is needed for anything else to matter; scripts/bench-gpu sets 999 = every layer).
fn gpu_layers() -> u32 {
    env_num("INHOUSE_BENCH_GPU_LAYERS", 0) as u32
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A prompt of about `n` tokens that differs from every other by its first words.
fn long_prompt(tag: usize, words: usize) -> String {
    let mut s = format!("Document {tag}. ");
    let text = "The committee reviewed the quarterly figures and agreed on next steps for the \
                regional offices, including training, hiring and a new budget. ";
    while s.split_whitespace().count() < words {
        s.push_str(text);
    }
    s
}

// ----- raw llama.cpp, in process -----

/// What one raw generation run measured.
struct Gen {
    /// All generated tokens over the whole run (prompts included), per second.
    aggregate: f64,
    /// Tokens after each sequence's first, per second of generation alone.
    generation: f64,
    /// Each sequence's time to its first token, seconds.
    ttft: Vec<f64>,
}

struct Raw {
    backend: LlamaBackend,
    model: LlamaModel,
    threads: i32,
    /// Use llama.cpp's default batching settings instead of the daemon's.
    llama_defaults: bool,
}

impl Raw {
    fn new(path: &Path, threads: usize) -> Raw {
        inhouse::engine::cpu_backend().expect("ggml CPU backend");
        let mut backend = LlamaBackend::init().expect("llama backend");
        backend.void_logs();
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers());
        let model = LlamaModel::load_from_file(&backend, path, &params).expect("model");
        Raw {
            backend,
            model,
            threads: threads as i32,
            llama_defaults: throughput_mode(),
        }
    }

    /// A context with exactly the daemon's settings (see `serving_params`), or with
    /// llama.cpp's defaults for batching (one unified KV cache, flash attention automatic),
    /// which are faster but let batching change the output.
    fn ctx(&self, seqs: u32) -> llama_cpp_2::context::LlamaContext<'_> {
        let p = inhouse::engine::llama::serving_params(
            CTX,
            seqs,
            self.threads as u32,
            !self.llama_defaults,
            gpu_layers() > 0,
        );
        self.model.new_context(&self.backend, p).expect("context")
    }

    fn tokens(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }

    /// Prompt tokens/s: one prompt prefilled in batches of N_BATCH.
    fn prompt_rate(&self, tokens: &[LlamaToken]) -> f64 {
        let mut ctx = self.ctx(1);
        let mut batch = LlamaBatch::new(N_BATCH as usize, 1);
        let t = Instant::now();
        for (c, chunk) in tokens.chunks(N_BATCH as usize).enumerate() {
            batch.clear();
            for (j, tok) in chunk.iter().enumerate() {
                let pos = c * N_BATCH as usize + j;
                batch
                    .add(*tok, pos as i32, &[0], pos + 1 == tokens.len())
                    .unwrap();
            }
            ctx.decode(&mut batch).unwrap();
        }
        tokens.len() as f64 / t.elapsed().as_secs_f64()
    }

    /// `n` sequences decoded together, `gen` tokens each (all prompts prefilled first, packed
    /// into full batches).
    fn generate(&self, prompts: &[Vec<LlamaToken>], gen: usize) -> Gen {
        let n = prompts.len();
        let mut ctx = self.ctx(n as u32);
        let mut batch = LlamaBatch::new(N_BATCH as usize, 1);
        let mut samplers: Vec<LlamaSampler> = (0..n).map(|_| LlamaSampler::greedy()).collect();
        let t0 = Instant::now();
        let mut pos = vec![0usize; n];
        // Prefill, packing prompts into batches.
        let mut pending: Vec<(usize, usize)> = Vec::new();
        for (s, p) in prompts.iter().enumerate() {
            for i in 0..p.len() {
                pending.push((s, i));
            }
        }
        // The first token of each sequence is sampled right after the batch holding its last
        // prompt token (the next decode replaces the logits).
        let mut next = vec![LlamaToken(0); n];
        let mut ttft = vec![0.0; n];
        let mut produced = 0usize;
        for chunk in pending.chunks(N_BATCH as usize) {
            batch.clear();
            let mut done = Vec::new();
            for (k, &(s, i)) in chunk.iter().enumerate() {
                let last = i + 1 == prompts[s].len();
                batch
                    .add(prompts[s][i], i as i32, &[s as i32], last)
                    .unwrap();
                if last {
                    done.push((s, k as i32));
                }
            }
            ctx.decode(&mut batch).unwrap();
            for (s, k) in done {
                next[s] = samplers[s].sample(&ctx, k);
                ttft[s] = t0.elapsed().as_secs_f64();
                produced += 1;
            }
        }
        for (s, p) in prompts.iter().enumerate() {
            pos[s] = p.len();
        }
        let t_first = Instant::now();
        for _ in 1..gen {
            batch.clear();
            for s in 0..n {
                batch
                    .add(next[s], pos[s] as i32, &[s as i32], true)
                    .unwrap();
                pos[s] += 1;
            }
            ctx.decode(&mut batch).unwrap();
            for (s, tok) in next.iter_mut().enumerate() {
                *tok = samplers[s].sample(&ctx, s as i32);
                produced += 1;
            }
        }
        let gen_rate = (produced - n) as f64 / t_first.elapsed().as_secs_f64();
        Gen {
            aggregate: produced as f64 / t0.elapsed().as_secs_f64(),
            generation: gen_rate,
            ttft,
        }
    }
}

// ----- the daemon, over its socket -----

struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    client: Client,
}

impl Daemon {
    fn start(model: &Path, threads: usize, slots: usize) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("inhouse.sock");
        // The encrypted store is on, as in production: every answer is recorded.
        let key = dir.path().join("master.key");
        inhouse::crypto::generate_key_file(&key).expect("key file");
        // One benchmark process plays up to 16 clients: lift the per-uid limits above that.
        let config = dir.path().join("inhouse.toml");
        // INHOUSE_BENCH_DAEMON_CONFIG: extra top-level keys to try (e.g. "prefill-chunk = 256").
        let mut extra = std::env::var("INHOUSE_BENCH_DAEMON_CONFIG").unwrap_or_default();
        if throughput_mode() {
            extra.push_str("\ndeterministic-batching = false\n");
        }
        std::fs::write(
            &config,
            format!("{extra}\n[limits]\nper-uid-concurrency = 64\nper-uid-per-minute = 100000\n"),
        )
        .expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_inhoused"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path())
            .arg("--key-file")
            .arg(&key)
            .arg("--config")
            .arg(&config)
            .arg("--model")
            .arg(format!("smol={}", model.display()))
            .args([
                "--threads",
                &threads.to_string(),
                "--ctx-size",
                &CTX.to_string(),
            ])
            .args(["--slots", &slots.to_string()])
            .args(["--gpu-layers", &gpu_layers().to_string()])
            .env("INHOUSE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn inhoused");
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "inhoused did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon {
            child,
            _dir: dir,
            client: Client::new(&socket),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A streamed request: time to the first content chunk, arrival of the last, tokens.
struct Timed {
    text: String,
    ttft: f64,
    total: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// When each content chunk arrived (one token each for these prompts).
    chunks: Vec<Instant>,
}

/// Aggregate rate while every stream of a round is generating: content chunks that arrived
/// between the latest first chunk and the earliest last chunk, over that window. Prompts and
/// the ramp up and down are left out, as in raw llama.cpp's decode-only figure.
fn steady_rate(streams: &[Timed]) -> f64 {
    let (Some(start), Some(end)) = (
        streams.iter().filter_map(|t| t.chunks.first()).max(),
        streams.iter().filter_map(|t| t.chunks.last()).min(),
    ) else {
        return f64::NAN;
    };
    let window = end.saturating_duration_since(*start).as_secs_f64();
    // Chunks strictly after the window opens: the one that opens it was produced before.
    let n = streams
        .iter()
        .flat_map(|t| &t.chunks)
        .filter(|c| **c > *start && **c <= *end)
        .count();
    n as f64 / window
}

async fn timed(client: &Client, path: &str, mut body: Value) -> Timed {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let t0 = Instant::now();
    let mut resp = client
        .send(Method::POST, path, Some(body.to_string().into()))
        .await
        .expect("request");
    assert_eq!(resp.status, 200);
    let mut parser = SseParser::default();
    let mut first = None;
    let mut last = 0.0;
    let mut text = String::new();
    let mut chunks = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    while let Some(chunk) = resp.next_chunk().await {
        for e in parser.push(&chunk.expect("chunk")) {
            if e == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&e).expect("json");
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
            }
            let piece = v
                .pointer("/choices/0/delta/content")
                .or_else(|| v.pointer("/choices/0/text"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !piece.is_empty() {
                text.push_str(piece);
                chunks.push(Instant::now());
                let now = t0.elapsed().as_secs_f64();
                first.get_or_insert(now);
                last = now;
            }
        }
    }
    Timed {
        text,
        ttft: first.unwrap_or(f64::NAN),
        total: last,
        prompt_tokens,
        completion_tokens,
        chunks,
    }
}

/// One round of concurrent clients: each prompt sent at once as a streamed greedy completion
/// of `max_tokens`; returns each stream and the round's wall time in seconds.
fn round(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    max_tokens: u32,
    prompts: impl Iterator<Item = String>,
) -> (Vec<Timed>, f64) {
    rt.block_on(async {
        let t0 = Instant::now();
        let tasks: Vec<_> = prompts
            .map(|prompt| {
                let c = client.clone();
                tokio::spawn(async move {
                    timed(
                        &c,
                        "/v1/completions",
                        json!({"model": "smol", "temperature": 0, "max_tokens": max_tokens,
                               "prompt": prompt}),
                    )
                    .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        (out, t0.elapsed().as_secs_f64())
    })
}

/// A prompt the model continues for as long as asked (no early end-of-text), different per `n`.
fn counting(n: usize) -> String {
    (n * 10 + 1..n * 10 + 9).map(|k| format!("{k}, ")).collect()
}

/// llama-bench's pp512/tg128 on llama.cpp built natively for this CPU (scripts/native-reference;
/// `INHOUSE_NATIVE_REFERENCE` names the binary) and on this process's dispatching build,
/// alternating, with their ratio: what runtime CPU dispatch costs against a native build.
fn native_reference(raw: &Raw, model: &Path, threads: usize, repeat: usize) {
    let bin = std::env::var_os("INHOUSE_NATIVE_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/inhouse/native-target/release/inhouse-native-reference")
        });
    println!("\n## llama-bench figures: native build against the shipped build (CPU dispatch)");
    if !bin.is_file() {
        println!(
            "{} not built: run scripts/native-reference for this comparison",
            bin.display()
        );
        return;
    }
    let (mut n_pp, mut n_tg, mut d_pp, mut d_tg) = (vec![], vec![], vec![], vec![]);
    for _ in 0..repeat {
        let out = Command::new(&bin)
            .arg(model)
            .arg(threads.to_string())
            .arg("1")
            .output()
            .expect("run the native reference");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("native reference JSON");
        n_pp.push(v["pp512"].as_f64().expect("pp512"));
        n_tg.push(v["tg128"].as_f64().expect("tg128"));
        let (pp, tg) = llama_bench::pp512_tg128(&raw.backend, &raw.model, raw.threads, 1);
        d_pp.push(pp);
        d_tg.push(tg);
    }
    let (n_pp, n_tg, d_pp, d_tg) = (median(n_pp), median(n_tg), median(d_pp), median(d_tg));
    let variant = inhouse::engine::cpu_backend()
        .map(|c| c.variant)
        .unwrap_or_default();
    println!(
        "| | native (GGML_NATIVE) | shipped (dispatch: {variant}) | ratio |\n|---|---|---|---|"
    );
    println!(
        "| pp512 tok/s | {n_pp:.1} | {d_pp:.1} | {} |",
        ratio(d_pp, n_pp)
    );
    println!(
        "| tg128 tok/s | {n_tg:.1} | {d_tg:.1} | {} |",
        ratio(d_tg, n_tg)
    );
}

/// `INHOUSE_BENCH_THROUGHPUT`: both sides in the daemon's throughput mode.
fn throughput_mode() -> bool {
    std::env::var_os("INHOUSE_BENCH_THROUGHPUT").is_some()
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}x", a / b)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: only run
    // when benchmarking, so the test suite stays fast.
    if !std::env::args().any(|a| a == "--bench") {
        println!("serving benchmark: run with `cargo bench --bench serving`");
        return;
    }
    let path = model_path();
    assert!(
        path.is_file(),
        "model {} missing: run scripts/fetch-models",
        path.display()
    );
    let threads = env_num("INHOUSE_BENCH_THREADS", 2);
    let repeat = env_num("INHOUSE_BENCH_REPEAT", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("# inhouse serving benchmark");
    println!(
        "model {} | threads {threads} | repeat {repeat} (medians) | load before: {}",
        path.display(),
        load_average()
    );
    println!("backend: {}", inhouse::engine::llama::backend_description());
    println!(
        "batching: {}",
        if throughput_mode() {
            "throughput mode on both sides (unified KV cache, flash attention)"
        } else {
            "deterministic (the daemon's default) on both sides"
        }
    );

    let mut raw = Raw::new(&path, threads);
    let prompt_512 = raw.tokens(&long_prompt(0, 400));
    let gen_n = 128;

    // 0. llama-bench's figures: a natively built llama.cpp against the shipped build.
    native_reference(&raw, &path, threads, repeat);

    // 1. Single stream: prompt and generation rates.
    let d = Daemon::start(&path, threads, 16);
    let (mut raw_pp, mut raw_tg, mut d_pp, mut d_tg) = (vec![], vec![], vec![], vec![]);
    // Raw and daemon alternate, so that a change in the machine's load hits both alike.
    for r in 0..repeat {
        raw_pp.push(raw.prompt_rate(&raw.tokens(&long_prompt(1000 + r, 400))));
        let t = rt.block_on(timed(
            &d.client,
            "/v1/completions",
            json!({"model": "smol", "prompt": long_prompt(2000 + r, 400), "max_tokens": 1,
                   "temperature": 0}),
        ));
        d_pp.push(t.prompt_tokens as f64 / t.ttft);
        raw_tg.push(raw.generate(&[raw.tokens(&counting(r))], gen_n).generation);
        let t = rt.block_on(timed(
            &d.client,
            "/v1/completions",
            json!({"model": "smol", "prompt": counting(100 + r), "max_tokens": gen_n,
                   "temperature": 0}),
        ));
        d_tg.push((t.completion_tokens.saturating_sub(1)) as f64 / (t.total - t.ttft));
    }
    let (raw_pp, raw_tg, d_pp, d_tg) = (median(raw_pp), median(raw_tg), median(d_pp), median(d_tg));
    println!(
        "\n## single stream ({} prompt tokens; {gen_n} generated)",
        prompt_512.len()
    );
    println!("| | raw llama.cpp | inhoused | ratio |\n|---|---|---|---|");
    println!(
        "| prompt tok/s | {raw_pp:.1} | {d_pp:.1} | {} |",
        ratio(d_pp, raw_pp)
    );
    println!(
        "| generation tok/s | {raw_tg:.1} | {d_tg:.1} | {} |",
        ratio(d_tg, raw_tg)
    );

    // 2. Concurrent clients: aggregate generated tokens/s, p50/p95 time to first token.
    println!("\n## concurrent clients (short counting prompts, 64 tokens each, greedy)");
    println!(
        "| clients | raw agg tok/s | inhoused agg tok/s | ratio | vs 1 client | raw, llama.cpp defaults | raw TTFT p95 s | TTFT p50 s | TTFT p95 s | p95 vs 1 client |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut one_client = (f64::NAN, f64::NAN);
    // Decode-only rates per row: raw, raw with llama.cpp's defaults, daemon.
    let mut decode_rows: Vec<(usize, f64, f64, f64)> = Vec::new();
    for &n in &[1usize, 4, 8, 16] {
        let (mut raw_dec, mut raw_default_dec, mut d_dec) = (vec![], vec![], vec![]);
        let mut raw_rates = Vec::new();
        let mut raw_ttfts = Vec::new();
        let mut raw_default_rates = Vec::new();
        let mut d_rates = Vec::new();
        let mut ttfts = Vec::new();
        for r in 0..repeat {
            let prompts: Vec<Vec<LlamaToken>> = (0..n)
                .map(|i| raw.tokens(&counting(1000 * r + 50 * i + n)))
                .collect();
            let g = raw.generate(&prompts, 64);
            raw_rates.push(g.aggregate);
            raw_dec.push(g.generation);
            raw_ttfts.extend(g.ttft);
            raw.llama_defaults = true;
            let g = raw.generate(&prompts, 64);
            raw_default_rates.push(g.aggregate);
            raw_default_dec.push(g.generation);
            raw.llama_defaults = throughput_mode();
            let (out, wall) = round(
                &rt,
                &d.client,
                64,
                (0..n).map(|i| counting(1000 * r + 50 * i + n + 500)),
            );
            let tokens: u64 = out.iter().map(|t| t.completion_tokens).sum();
            d_rates.push(tokens as f64 / wall);
            d_dec.push(steady_rate(&out));
            ttfts.extend(out.iter().map(|t| t.ttft));
        }
        let (raw_rate, d_rate) = (median(raw_rates), median(d_rates));
        let raw_p95 = percentile(raw_ttfts, 0.95);
        let (p50, p95) = (percentile(ttfts.clone(), 0.5), percentile(ttfts, 0.95));
        if n == 1 {
            one_client = (d_rate, p95);
        }
        println!(
            "| {n} | {raw_rate:.1} | {d_rate:.1} | {} | {} | {:.1} | {raw_p95:.3} | {p50:.3} | {p95:.3} | {} |",
            ratio(d_rate, raw_rate),
            ratio(d_rate, one_client.0),
            median(raw_default_rates),
            ratio(p95, one_client.1)
        );
        decode_rows.push((n, median(raw_dec), median(raw_default_dec), median(d_dec)));
    }

    // The same rounds, generation only: what batching itself gains once every stream is
    // generating (the ceiling for "n clients against one", prompts aside).
    println!("\n## the same rounds, decode only (every stream generating; prompts excluded)");
    println!(
        "| clients | raw decode tok/s | raw vs 1 | raw, llama.cpp defaults | defaults vs 1 | inhoused decode tok/s | inhoused vs 1 | ratio to raw |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (_, raw1, def1, d1) = decode_rows[0];
    for &(n, r, def, d) in &decode_rows {
        println!(
            "| {n} | {r:.1} | {} | {def:.1} | {} | {d:.1} | {} | {} |",
            ratio(r, raw1),
            ratio(def, def1),
            ratio(d, d1),
            ratio(d, r)
        );
    }

    // 2b. Time to first token with very short prompts (a few tokens each, 8 generated): how far
    // batching can bring "8 at once" towards "1 alone" when there is almost nothing to read.
    println!("\n## very short prompts (a few tokens), 8 generated: time to first token");
    println!("| clients | prompt tokens | raw TTFT p95 s | raw p95 vs 1 | inhoused TTFT p50 s | TTFT p95 s | p95 vs 1 client |");
    println!("|---|---|---|---|---|---|---|");
    let short = |k: usize| format!("{k}, {},", k + 1);
    let mut one = (f64::NAN, f64::NAN);
    for &n in &[1usize, 8] {
        let (mut raw_ttfts, mut ttfts) = (Vec::new(), Vec::new());
        let mut prompt_tokens = 0;
        for r in 0..repeat.max(3) {
            let prompts: Vec<Vec<LlamaToken>> = (0..n)
                .map(|i| raw.tokens(&short(100 * r + 10 * i + n)))
                .collect();
            prompt_tokens = prompts[0].len();
            raw_ttfts.extend(raw.generate(&prompts, 8).ttft);
            let (out, _) = round(
                &rt,
                &d.client,
                8,
                (0..n).map(|i| short(100 * r + 10 * i + n + 5000)),
            );
            ttfts.extend(out.iter().map(|t| t.ttft));
        }
        let raw_p95 = percentile(raw_ttfts, 0.95);
        let (p50, p95) = (percentile(ttfts.clone(), 0.5), percentile(ttfts, 0.95));
        if n == 1 {
            one = (raw_p95, p95);
        }
        println!(
            "| {n} | {prompt_tokens} | {raw_p95:.3} | {} | {p50:.3} | {p95:.3} | {} |",
            ratio(raw_p95, one.0),
            ratio(p95, one.1)
        );
    }

    // 3. A five-turn conversation: time to first token of turn five, warm against cold.
    println!("\n## five-turn conversation: time to first token of the fifth turn");
    let questions = [
        "Let's plan a small vegetable garden.",
        "Which vegetables grow fastest?",
        "How often should I water them?",
        "What about pests?",
        "Summarise the plan in three points.",
    ];
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    let mut fifth_prompt = 0;
    for r in 0..repeat {
        let dw = Daemon::start(&path, threads, 4);
        let mut messages = vec![
            json!({"role": "system", "content": format!("You are a gardening assistant (session {r}). Answer briefly and concretely, in plain English.")}),
        ];
        let mut last = None;
        for q in &questions {
            messages.push(json!({"role": "user", "content": q}));
            let body = json!({"model": "smol", "messages": messages, "temperature": 0,
                              "max_tokens": 48});
            let t = rt.block_on(timed(&dw.client, "/v1/chat/completions", body.clone()));
            let text = t.text.clone();
            messages.push(json!({"role": "assistant", "content": text}));
            last = Some((t, body));
        }
        let (t_warm, body) = last.expect("five turns");
        drop(dw);
        fifth_prompt = t_warm.prompt_tokens;
        warm.push(t_warm.ttft);
        let dc = Daemon::start(&path, threads, 4);
        cold.push(
            rt.block_on(timed(&dc.client, "/v1/chat/completions", body))
                .ttft,
        );
    }
    let (warm, cold) = (median(warm), median(cold));
    println!("fifth turn prompt: {fifth_prompt} tokens");
    println!("| | TTFT s |\n|---|---|");
    println!("| cold (no reuse) | {cold:.3} |");
    println!("| warm (cache reuse) | {warm:.3} |");
    println!("| warm / cold | {} |", ratio(warm, cold));
    println!("\nload after: {}", load_average());
}
