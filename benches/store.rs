//! The encrypted store's cost: sealed records written per second, and what storing adds to a
//! chat request through the real daemon, absolute and as a share of the request's latency.
//!
//! Run: `cargo bench --bench store` (models from scripts/fetch-models). Prints figures; asserts
//! nothing about speed.

#[path = "common/models.rs"]
mod models;

use hyper::Method;
use inhouse::client::Client;
use inhouse::storage::{NewRecord, RequestStatus, Store};
use std::time::{Duration, Instant};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn record(i: usize) -> NewRecord {
    NewRecord {
        uid: 1000 + (i % 8) as u32,
        model: "smol".into(),
        params_json: r#"{"temperature":0}"#.into(),
        created_at: 1_800_000_000,
        finished_at: Some(1_800_000_001),
        prompt_tokens: 40,
        completion_tokens: 60,
        status: RequestStatus::Completed,
        prompt_text: "p".repeat(1024),
        response_text: "r".repeat(1024),
    }
}

fn store_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let key = inhouse::crypto::MasterKey::generate().unwrap();
    let mut store = Store::open(dir.path().join("bench.db"), key).unwrap();
    let n = 500;
    let t = Instant::now();
    for i in 0..n {
        store.record_request_audited(&record(i)).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "store: {n} sealed records (1 KiB prompt + 1 KiB answer, its audit event in the same \
         transaction, synchronous=FULL) in {secs:.2} s = {:.0} records/s, {:.2} ms per record",
        n as f64 / secs,
        secs * 1000.0 / n as f64
    );
}

/// The same writes through the store's own thread (`StoreHandle`), as the daemon makes them.
fn handle_latency() {
    let dir = tempfile::tempdir().unwrap();
    let key = inhouse::crypto::MasterKey::generate().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = inhouse::storage::StoreHandle::open(dir.path().join("h.db"), key)
            .await
            .unwrap();
        let mut times = vec![];
        for i in 0..200 {
            let t = Instant::now();
            store.record_request_audited(record(i)).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        println!(
            "store thread: median {:.2} ms per sealed, audited record through StoreHandle",
            median(&mut times) / 1000.0
        );
    });
}

use models::models_dir;

fn request_share() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    inhouse::crypto::generate_key_file(&key).unwrap();
    let socket = dir.path().join("s.sock");
    let model = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "run scripts/fetch-models first");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--key-file")
        .arg(&key)
        .arg("--model")
        .arg(format!("smol={}", model.display()))
        .args(["--threads", "2"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = Client::new(&socket);
    let tokens: u32 = std::env::var("INHOUSE_BENCH_STORE_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let body = serde_json::json!({"model": "smol", "max_tokens": tokens, "temperature": 0,
        "messages": [{"role": "user", "content": "Count from one to one hundred."}]})
    .to_string();
    let (mut total, mut store) = (vec![], vec![]);
    for i in 0..25 {
        let t = Instant::now();
        let resp = rt
            .block_on(c.send(
                Method::POST,
                "/v1/chat/completions",
                Some(body.clone().into()),
            ))
            .unwrap();
        let micros: f64 = resp.headers["x-inhouse-store-micros"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        rt.block_on(resp.collect()).unwrap();
        if i >= 5 {
            total.push(t.elapsed().as_secs_f64() * 1e6);
            store.push(micros);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let (t, s) = (median(&mut total), median(&mut store));
    println!(
        "store in a request: median {:.2} ms of a {:.1} ms chat request ({tokens} tokens, SmolLM2, \
         2 threads) = {:.2}% of its latency",
        s / 1000.0,
        t / 1000.0,
        100.0 * s / t
    );
}

fn main() {
    store_throughput();
    handle_latency();
    request_share();
}
