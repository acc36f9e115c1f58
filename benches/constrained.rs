//! Constrained-decoding benchmark: tokens/s of answers under a JSON schema against the same
//! daemon's unconstrained answers to the same prompt, one stream and eight clients, alternating so
//! that a change of load hits both; and llguidance's grammar compilation time for a typical and a
//! large schema, against the model's own vocabulary, as the engine compiles them.
//!
//! `cargo bench --bench constrained` (release profile). Environment:
//! - `INHOUSE_BENCH_MODEL`: GGUF path (default: the Qwen2.5-Coder-0.5B test model),
//! - `INHOUSE_BENCH_THREADS` (default 2), `INHOUSE_BENCH_REPEAT` (default 3; medians printed).
//!
//! Prints markdown tables with medians and ratios; nothing is asserted (the machines are shared;
//! the figures go into docs/BENCHMARKS.md with the load seen).

#[path = "common/models.rs"]
mod models;

use hyper::Method;
use inhouse::client::{Client, SseParser};
use inhouse::engine::constraint::{Grammars, Spec};
use inhouse::engine::OutputInfo;
use inhouse_formats::request::{GenerateRequest, Prompt, ResponseFormat, Sampling};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MAX_TOKENS: u32 = 96;

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("INHOUSE_BENCH_MODEL") {
        return PathBuf::from(p);
    }
    let p = models::models_dir().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models",
        p.display()
    );
    p
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    client: Client,
}

impl Daemon {
    fn start(model: &Path, threads: usize) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("inhouse.sock");
        let key = dir.path().join("master.key");
        inhouse::crypto::generate_key_file(&key).expect("key file");
        let config = dir.path().join("inhouse.toml");
        std::fs::write(
            &config,
            "slots = 8\n[limits]\nper-uid-concurrency = 64\nper-uid-per-minute = 100000\n",
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
            .arg(format!("m={}", model.display()))
            .args(["--threads", &threads.to_string(), "--ctx-size", "1024"])
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

/// A schema whose answers run past `MAX_TOKENS` (so both sides generate the same count): a
/// long list of records.
fn long_schema() -> Value {
    json!({"type": "object", "properties": {"employees": {"type": "array", "minItems": 40,
        "items": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 18, "maximum": 70},
            "team": {"enum": ["platform", "data", "security", "support"]}},
            "required": ["name", "age", "team"], "additionalProperties": false}}},
        "required": ["employees"], "additionalProperties": false})
}

fn body(i: usize, constrained: bool) -> Value {
    let mut b = json!({"model": "m", "max_tokens": MAX_TOKENS, "temperature": 0.7, "seed": i,
        "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content":
            format!("List forty employees of company number {i} as JSON: name, age and team.")}]});
    if constrained {
        b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "staff", "schema": long_schema()}});
    }
    b
}

/// One streamed answer: generated tokens and the seconds from its first to its last chunk.
struct Timed {
    tokens: u64,
    first: Instant,
    last: Instant,
}

async fn timed(client: &Client, body: Value) -> Timed {
    let mut resp = client
        .send(
            Method::POST,
            "/v1/chat/completions",
            Some(body.to_string().into()),
        )
        .await
        .expect("request");
    assert_eq!(resp.status, 200);
    let mut parser = SseParser::default();
    let (mut first, mut last, mut tokens) = (None, Instant::now(), 0);
    while let Some(chunk) = resp.next_chunk().await {
        for e in parser.push(&chunk.expect("chunk")) {
            if e == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&e).expect("json");
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                tokens = u["completion_tokens"].as_u64().unwrap_or(0);
            }
            if v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
            }
        }
    }
    Timed {
        tokens,
        first: first.expect("a streamed answer"),
        last,
    }
}

/// Generated tokens/s of `clients` concurrent streams: one stream's own decode rate (first
/// token excluded) or, for several, all tokens after the first chunks over the round's window.
fn rate(
    rt: &tokio::runtime::Runtime,
    d: &Daemon,
    clients: usize,
    constrained: bool,
    seed: usize,
) -> f64 {
    let streams: Vec<Timed> = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let c = d.client.clone();
                tokio::spawn(async move { timed(&c, body(seed * 16 + i, constrained)).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let start = streams.iter().map(|t| t.first).min().unwrap();
    let end = streams.iter().map(|t| t.last).max().unwrap();
    let tokens: u64 = streams.iter().map(|t| t.tokens.saturating_sub(1)).sum();
    tokens as f64 / end.duration_since(start).as_secs_f64()
}

/// A large schema: 60 properties, nested objects, enums of 280 values, patterns and bounds.
fn large_schema() -> Value {
    let mut props = serde_json::Map::new();
    for i in 0..60 {
        let p = match i % 4 {
            0 => json!({"enum": (0..280).map(|k| format!("code-{i}-{k}")).collect::<Vec<_>>()}),
            1 => json!({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4,8}$"}),
            2 => json!({"type": "object", "properties": {
                "x": {"type": "number", "minimum": -90, "maximum": 90},
                "y": {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
                "z": {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}]}},
                "required": ["x", "y"], "additionalProperties": false}),
            _ => json!({"type": "integer", "minimum": 0, "maximum": 100000}),
        };
        props.insert(format!("field_{i}"), p);
    }
    json!({"type": "object", "properties": props, "additionalProperties": false,
           "required": (0..60).step_by(2).map(|i| format!("field_{i}")).collect::<Vec<_>>()})
}

fn typical_schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age"], "additionalProperties": false})
}

/// Compilation of `schema` (a fresh one each time: a distinct title defeats the cache) and the
/// cached path, in milliseconds, medians over `repeat`.
fn compile_ms(grammars: &mut Grammars, schema: &Value, repeat: usize) -> (f64, f64) {
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for r in 0..repeat {
        let mut s = schema.clone();
        s["title"] = json!(format!("run {r} {}", std::process::id()));
        let mut req = GenerateRequest::new(
            0,
            "m",
            Prompt::Text("x".into()),
            Sampling {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                min_p: 0.0,
                presence_penalty: 0.0,
                frequency_penalty: 0.0,
                seed: 0,
            },
            8,
        );
        req.format = ResponseFormat::JsonSchema {
            name: "s".into(),
            schema: s,
        };
        let spec = Spec::of(&req, &OutputInfo::default())
            .expect("spec")
            .expect("a constraint");
        let t = Instant::now();
        grammars.start(&spec).expect("compiles");
        cold.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        grammars.start(&spec).expect("cached");
        warm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(cold), median(warm))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let model = model_path();
    let threads = env_num("INHOUSE_BENCH_THREADS", 2);
    let repeat = env_num("INHOUSE_BENCH_REPEAT", 3).max(1);
    println!(
        "model {} | threads {threads} | repeat {repeat}",
        model.display()
    );
    println!("load average at start: {}", load_average());

    // Grammar compilation, in this process, with the engine's compiler on the model's vocabulary.
    {
        let backend = LlamaBackend::init().expect("backend");
        let params = LlamaModelParams::default().with_vocab_only(true);
        let m = LlamaModel::load_from_file(&backend, &model, &params).expect("model");
        let t = Instant::now();
        let mut grammars = Grammars::new(&m).expect("grammar compiler");
        let setup = t.elapsed().as_secs_f64() * 1e3;
        let (typ, typ_cached) = compile_ms(&mut grammars, &typical_schema(), repeat.max(5));
        let (large, large_cached) = compile_ms(&mut grammars, &large_schema(), repeat.max(5));
        println!();
        println!("| grammar compilation (llguidance, model vocabulary) | ms |");
        println!("| --- | ---: |");
        println!("| compiler set-up per model (once, at load) | {setup:.1} |");
        println!(
            "| typical schema ({} bytes): compile / cached | {typ:.2} / {typ_cached:.3} |",
            typical_schema().to_string().len()
        );
        println!(
            "| large schema ({} bytes, 60 properties, 15 enums of 280): compile / cached | {large:.2} / {large_cached:.3} |",
            large_schema().to_string().len()
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let d = Daemon::start(&model, threads);
    // Warm up both paths (the schema's grammar is then cached, as for a client that repeats it).
    rate(&rt, &d, 1, false, 999);
    rate(&rt, &d, 1, true, 999);
    println!();
    println!("| generated tokens/s, {MAX_TOKENS} tokens per answer | unconstrained | JSON schema | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    for clients in [1usize, 8] {
        let (mut free, mut schema) = (Vec::new(), Vec::new());
        for r in 0..repeat {
            free.push(rate(&rt, &d, clients, false, r));
            schema.push(rate(&rt, &d, clients, true, r));
        }
        let (f, s) = (median(free), median(schema));
        println!(
            "| {clients} client{} | {f:.1} | {s:.1} | {:.3} |",
            if clients == 1 { "" } else { "s" },
            s / f
        );
    }
    println!();
    println!("load average at end: {}", load_average());
}
