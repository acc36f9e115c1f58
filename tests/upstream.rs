//! Upstream models, end to end: a front `inhoused` whose `[[upstreams]]` forward over Unix
//! sockets to a second, real `inhoused` (it speaks the same API), and to a fake upstream in
//! this process that misbehaves on purpose (garbage, an endless stream, a 100 MB answer,
//! silence, a stall, a 500).

mod common;

use common::*;
use hyper::Method;
use inhouse::client::Client;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A chat body at temperature 0 for `model`.
fn chat(model: &str, prompt: &str, max_tokens: u32, extra: Value) -> Value {
    let mut body = chat_body(
        model,
        prompt,
        json!({"temperature": 0, "max_tokens": max_tokens}),
    );
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn get_json(c: &Client, path: &str) -> Value {
    let (status, body) = rt().block_on(c.raw(Method::GET, path, None)).unwrap();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn post_json(c: &Client, path: &str, body: &Value) -> (u16, Value) {
    rt().block_on(post(c, path, &body.to_string()))
}

/// The streamed text of a chat answer's events (up to `[DONE]`).
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// Every `inhouse_requests_total` sample of `model`, summed: what a daemon has answered.
fn requests_answered(c: &Client, model: &str) -> f64 {
    let text = rt().block_on(metrics_text(c));
    text.lines()
        .filter(|l| {
            l.starts_with("inhouse_requests_total{") && l.contains(&format!("model=\"{model}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The state `/health` gives an upstream.
fn upstream_state(c: &Client, name: &str) -> String {
    let h = get_json(c, "/health");
    h["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in /health: {h}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The caller's newest history record.
fn newest_record(c: &Client) -> inhouse::wire::HistoryRecord {
    let page = rt().block_on(c.history(1, None)).unwrap();
    let id = page.data.first().expect("a record").id;
    rt().block_on(c.history_record(id)).unwrap()
}

/// A second inhoused, serving SmolLM2 as `smollm2`, in a directory it can be restarted in.
struct Upstream {
    dir: tempfile::TempDir,
    key: PathBuf,
    daemon: Option<Daemon>,
}

impl Upstream {
    fn start() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        inhouse::crypto::generate_key_file(&key).unwrap();
        let mut u = Upstream {
            dir,
            key,
            daemon: None,
        };
        u.restart();
        u
    }

    fn restart(&mut self) {
        self.daemon = Some(Daemon::start_in(
            self.dir.path(),
            &self.key,
            &[("smollm2", &smollm2())],
            &[],
        ));
    }

    fn kill(&mut self) {
        let mut d = self.daemon.take().expect("running");
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("inhouse.sock")
    }

    fn client(&self) -> Client {
        Client::new(self.socket())
    }
}

/// The `[[upstreams]]` entry `big` → `socket`, model `smollm2`, plus `extra` keys.
fn upstream_toml(name: &str, socket: &Path, model: &str, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\nsocket = \"{}\"\nmodel = \"{model}\"\n{extra}\n",
        socket.display()
    )
}

#[test]
fn the_front_answers_as_the_upstream_does_and_records_it() {
    let up = Upstream::start();
    let front = Daemon::with_config(&[], &upstream_toml("big", &up.socket(), "smollm2", ""));
    let (f, u) = (front.client(), up.client());
    let prompt = "What is the capital of France? Answer in one sentence.";

    // Plain: the same text as asked directly, at temperature 0.
    let (status, direct) = post_json(
        &u,
        "/v1/chat/completions",
        &chat("smollm2", prompt, 24, json!({})),
    );
    assert_eq!(status, 200, "{direct}");
    let (status, via) = post_json(
        &f,
        "/v1/chat/completions",
        &chat("big", prompt, 24, json!({})),
    );
    assert_eq!(status, 200, "{via}");
    let text = answer(&direct);
    assert!(!text.is_empty());
    assert_eq!(answer(&via), text);
    assert_eq!(via["model"], "big");
    assert_eq!(via["usage"], direct["usage"], "the upstream's token counts");

    // Streamed: the same text again, the usage from the upstream, then [DONE].
    let body = chat(
        "big",
        prompt,
        24,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (status, ctype, events) = rt().block_on(post_stream(&f, "/v1/chat/completions", &body));
    assert_eq!((status, ctype.as_str()), (200, "text/event-stream"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(streamed_text(&events), text);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"], direct["usage"], "{events:?}");

    // The front's history holds the sealed record, under the caller's uid, with the answer
    // and the upstream's token counts; its audit log has the request event.
    let id = via["inhouse_record_id"].as_i64().expect("record id");
    let rec = rt().block_on(f.history_record(id)).unwrap();
    assert_eq!(rec.meta.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(rec.meta.model, "big");
    assert_eq!(rec.meta.status.as_str(), "completed");
    assert_eq!(rec.response, text);
    assert_eq!(
        u64::from(rec.meta.prompt_tokens),
        direct["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert!(rec.prompt.to_string().contains("capital of France"));
    let (status, audit) = rt()
        .block_on(f.raw(Method::GET, "/audit/export", None))
        .unwrap();
    assert_eq!(status, 200);
    let audit = String::from_utf8_lossy(&audit);
    let event = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| {
            e["kind"] == "request"
                && e["detail_json"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("\"id\":{id},")))
        })
        .unwrap_or_else(|| panic!("no request event for record {id}:\n{audit}"));
    assert!(event["detail_json"]
        .as_str()
        .unwrap()
        .contains("\"model\":\"big\""));
    assert_eq!(event["actor_uid"], rec.meta.uid);

    // Several choices with a seed, and log-probabilities, are forwarded as asked.
    let extra =
        json!({"n": 2, "temperature": 0.8, "seed": 42, "logprobs": true, "top_logprobs": 2});
    let (status, direct) = post_json(
        &u,
        "/v1/chat/completions",
        &chat("smollm2", prompt, 12, extra.clone()),
    );
    assert_eq!(status, 200, "{direct}");
    let (status, via) = post_json(&f, "/v1/chat/completions", &chat("big", prompt, 12, extra));
    assert_eq!(status, 200, "{via}");
    assert_eq!(via["choices"].as_array().unwrap().len(), 2, "{via}");
    for i in 0..2 {
        assert_eq!(
            via["choices"][i]["message"]["content"],
            direct["choices"][i]["message"]["content"]
        );
        let tokens = |v: &Value| -> Vec<Value> {
            v["choices"][i]["logprobs"]["content"]
                .as_array()
                .unwrap_or_else(|| panic!("no logprobs in {v}"))
                .iter()
                .map(|t| json!([t["token"], t["top_logprobs"].as_array().unwrap().len()]))
                .collect()
        };
        assert_eq!(tokens(&via), tokens(&direct));
        assert!(!tokens(&via).is_empty());
    }
    let one = get_json(&f, "/v1/models/big");
    assert_eq!(one["upstream"]["model"], "smollm2", "{one}");

    // A request the upstream itself refuses (a prompt over its context) is the caller's 400.
    let long = "the cat sat on the mat. ".repeat(800);
    let (status, err) = post_json(
        &f,
        "/v1/chat/completions",
        &chat("big", &long, 8, json!({})),
    );
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("upstream_rejected")),
        "{err}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context"),
        "{err}"
    );
    assert_eq!(newest_record(&f).meta.status.as_str(), "error");

    // Plain completions and embeddings go through too, and so does Ollama's chat.
    let body =
        json!({"model": "smollm2", "prompt": "The sky is", "max_tokens": 8, "temperature": 0});
    let (status, direct) = post_json(&u, "/v1/completions", &body);
    assert_eq!(status, 200, "{direct}");
    let mut via_body = body.clone();
    via_body["model"] = json!("big");
    let (status, via) = post_json(&f, "/v1/completions", &via_body);
    assert_eq!(status, 200, "{via}");
    assert_eq!(via["choices"][0]["text"], direct["choices"][0]["text"]);

    let body = json!({"model": "smollm2", "input": ["hello world", "good night"]});
    let (status, direct) = post_json(&u, "/v1/embeddings", &body);
    assert_eq!(status, 200, "{direct}");
    let (status, via) = post_json(
        &f,
        "/v1/embeddings",
        &json!({"model": "big", "input": ["hello world", "good night"]}),
    );
    assert_eq!(status, 200, "{via}");
    assert_eq!(via["data"].as_array().unwrap().len(), 2);
    assert_eq!(via["data"][1]["embedding"], direct["data"][1]["embedding"]);

    let mut ollama = json!({"model": "smollm2", "stream": false,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"temperature": 0, "num_predict": 24}});
    let (status, direct) = post_json(&u, "/api/chat", &ollama);
    assert_eq!(status, 200, "{direct}");
    ollama["model"] = json!("big");
    let (status, o) = post_json(&f, "/api/chat", &ollama);
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["message"]["content"], direct["message"]["content"]);
    let direct_ollama_text = direct["message"]["content"].as_str().unwrap().to_string();
    assert!(!o["message"]["content"].as_str().unwrap().is_empty());

    // The Responses API, and Ollama's chat streamed (NDJSON), go through too.
    let responses = |model: &str| json!({"model": model, "input": prompt, "temperature": 0, "max_output_tokens": 24});
    let (status, direct) = post_json(&u, "/v1/responses", &responses("smollm2"));
    assert_eq!(status, 200, "{direct}");
    let (status, via) = post_json(&f, "/v1/responses", &responses("big"));
    assert_eq!(status, 200, "{via}");
    let output_text = |v: &Value| -> String {
        v["output"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["type"] == "message")
            .flat_map(|i| i["content"].as_array().unwrap().iter())
            .filter_map(|p| p["text"].as_str())
            .collect()
    };
    assert_eq!(output_text(&via), output_text(&direct));
    assert!(!output_text(&via).is_empty());
    ollama["stream"] = json!(true);
    let (status, lines) = rt().block_on(async {
        let resp = f
            .send(
                Method::POST,
                "/api/chat",
                Some(bytes::Bytes::from(ollama.to_string())),
            )
            .await
            .unwrap();
        let status = resp.status.as_u16();
        (
            status,
            String::from_utf8(resp.collect().await.unwrap().to_vec()).unwrap(),
        )
    });
    assert_eq!(status, 200, "{lines}");
    let pieces: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pieces.last().unwrap()["done"], true, "{lines}");
    let streamed: String = pieces
        .iter()
        .filter_map(|p| p["message"]["content"].as_str())
        .collect();
    assert_eq!(streamed, direct_ollama_text);

    // Listed with its state everywhere a model is.
    let models = get_json(&f, "/v1/models");
    let entry = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "big")
        .unwrap_or_else(|| panic!("big not listed: {models}"))
        .clone();
    assert_eq!(
        entry["upstream"],
        json!({"model": "smollm2", "state": "up"})
    );
    let tags = get_json(&f, "/api/tags");
    assert!(tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "big"));
    assert_eq!(upstream_state(&f, "big"), "up");
    let h = get_json(&f, "/health");
    assert!(h["models"].as_array().unwrap().contains(&json!("big")));
    let metrics = rt().block_on(metrics_text(&f));
    assert!(
        metrics.contains("inhouse_upstream_up{upstream=\"big\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("inhouse_upstream_requests_total{upstream=\"big\",outcome=\"ok\"} 8"),
        "{metrics}"
    );
}

#[test]
fn a_caller_without_the_role_is_refused_before_the_upstream_sees_anything() {
    let up = Upstream::start();
    let toml = format!(
        "[roles]\nuser-uids = [4242]\nuser-groups = []\n\n{}",
        upstream_toml("big", &up.socket(), "smollm2", "")
    );
    let front = Daemon::with_config(&[], &toml);
    front.open_to_all();
    let u = up.client();
    let body = chat("big", "Say hi", 4, json!({})).to_string();

    let before = requests_answered(&u, "smollm2");
    let (status, err) = request_as_other_user(&front, "POST", "/v1/chat/completions", Some(&body));
    assert_eq!(status, 403, "{err}");
    assert!(err.contains("\"forbidden\""), "{err}");
    assert_eq!(
        requests_answered(&u, "smollm2"),
        before,
        "the upstream saw a refused request"
    );

    // A user with the role is served, and the record is theirs.
    let (status, ok) = request_as_uid(
        4242,
        &front.dir,
        &front.socket,
        "POST",
        "/v1/chat/completions",
        Some(&body),
    );
    assert_eq!(status, 200, "{ok}");
    assert_eq!(requests_answered(&u, "smollm2"), before + 1.0);
    let (status, page) =
        request_as_uid(4242, &front.dir, &front.socket, "GET", "/v1/history", None);
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["data"][0]["uid"], 4242);
    assert_eq!(page["data"][0]["model"], "big");
    assert_eq!(page["data"][0]["status"], "completed");
}

#[test]
fn upstream_killed_down_and_back_while_local_models_serve() {
    let mut up = Upstream::start();
    let toml = upstream_toml(
        "big",
        &up.socket(),
        "smollm2",
        "failure-threshold = 2\ncool-down-secs = 10\n",
    );
    let front = Daemon::with_config(&[("local", &smollm2())], &toml);
    let f = front.client();

    // Killed mid-stream: the client gets an error event (no [DONE]), the record is not
    // completed.
    let body = chat(
        "big",
        "Write a very long story about a dragon who learns to cook.",
        400,
        json!({"stream": true}),
    );
    let events = rt().block_on(async {
        let mut resp = f
            .send(
                Method::POST,
                "/v1/chat/completions",
                Some(bytes::Bytes::from(body.to_string())),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        let mut parser = inhouse::client::SseParser::default();
        let mut events = Vec::new();
        let mut killed = false;
        while let Some(chunk) = resp.next_chunk().await {
            events.extend(parser.push(&chunk.unwrap()));
            if !killed && streamed_text(&events).len() > 10 {
                up.kill();
                killed = true;
            }
        }
        assert!(
            killed,
            "the answer ended before the upstream was killed: {events:?}"
        );
        events
    });
    assert_ne!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_unavailable", "{last}");
    let rec = newest_record(&f);
    assert_eq!(rec.meta.model, "big");
    assert!(
        ["error", "aborted"].contains(&rec.meta.status.as_str()),
        "{:?}",
        rec.meta.status
    );
    assert!(!rec.response.is_empty(), "the partial answer is kept");

    // Down: 503 upstream_unavailable with Retry-After; the local model answers meanwhile.
    let (status, headers, err) = chat_answer(&f, &chat("big", "hi", 4, json!({})));
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "upstream_unavailable");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    assert_eq!(newest_record(&f).meta.status.as_str(), "error");
    // Two failures in a row opened the breaker: fail fast, shown in /health and /metrics.
    assert_eq!(upstream_state(&f, "big"), "circuit_open");
    let t = Instant::now();
    let (status, err) = post_json(&f, "/v1/chat/completions", &chat("big", "hi", 4, json!({})));
    assert_eq!(status, 503, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    let metrics = rt().block_on(metrics_text(&f));
    assert!(
        metrics.contains("inhouse_upstream_circuit_open{upstream=\"big\"} 1"),
        "{metrics}"
    );

    // The local model answers meanwhile.
    let (status, local) = post_json(
        &f,
        "/v1/chat/completions",
        &chat("local", "Say hi", 4, json!({})),
    );
    assert_eq!(status, 200, "{local}");

    // Restarted: the background check finds it back (no caller's request is the probe), and
    // it is served again.
    up.restart();
    wait_until(60, "the background check found the upstream back", || {
        upstream_state(&f, "big") == "up"
    });
    let mut answered = None;
    wait_until(30, "the upstream served again", || {
        let (status, v) = post_json(
            &f,
            "/v1/chat/completions",
            &chat("big", "Say hi", 4, json!({})),
        );
        if status == 200 {
            answered = Some(v);
        } else {
            // Within the per-uid rate limit.
            std::thread::sleep(Duration::from_millis(300));
        }
        status == 200
    });
    assert!(!answer(&answered.unwrap()).is_empty());
    assert_eq!(upstream_state(&f, "big"), "up");
}

/// What the fake upstream saw and did.
#[derive(Default)]
struct FakeLog {
    requests: AtomicU64,
    /// The body of the last request for the model `tools`.
    tools_request: std::sync::Mutex<Option<Value>>,
    /// Bytes of the 100 MB answer written before the front stopped reading.
    huge_written: AtomicU64,
    /// The endless stream's connection was closed by the front.
    endless_closed: AtomicBool,
    /// The slow stream's connection was closed by the front (its client left).
    drip_closed: AtomicBool,
}

/// A misbehaving OpenAI server on a Unix socket: what it does depends on the model asked for.
fn fake_upstream(socket: &Path) -> Arc<FakeLog> {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let log = Arc::new(FakeLog::default());
    let shared = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let log = shared.clone();
            std::thread::spawn(move || fake_answer(conn, &log));
        }
    });
    log
}

fn fake_answer(mut conn: std::os::unix::net::UnixStream, log: &FakeLog) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if head.starts_with("GET ") {
        // The front's background check (GET /v1/models): not a request to count.
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    log.requests.fetch_add(1, Ordering::SeqCst);
    let req: Value = serde_json::from_slice(&body).unwrap();
    let embeddings = head.starts_with("POST /v1/embeddings");
    let ok = |ctype: &str| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n")
    };
    let sse = ok("text/event-stream");
    let piece = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n";
    match req["model"].as_str().unwrap() {
        "garbage" => {
            let _ = conn.write_all(format!("{sse}this is not an event stream\r\n\r\n").as_bytes());
        }
        "not-json" => {
            let _ = conn.write_all(format!("{sse}data: {{\"choices\": [oops\n\n").as_bytes());
        }
        "endless" => {
            let _ = conn.write_all(sse.as_bytes());
            loop {
                if conn.write_all(piece.as_bytes()).is_err() {
                    log.endless_closed.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        "huge" => {
            let (head, open) = if embeddings {
                (
                    ok("application/json"),
                    "{\"data\":[{\"index\":0,\"embedding\":[",
                )
            } else {
                (
                    sse,
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
                )
            };
            let _ = conn.write_all(format!("{head}{open}").as_bytes());
            let block = if embeddings {
                "0.5,".repeat(16 << 10)
            } else {
                "x".repeat(64 << 10)
            };
            let mut written = 0u64;
            while written < 100 << 20 {
                if conn.write_all(block.as_bytes()).is_err() {
                    break;
                }
                written += block.len() as u64;
                log.huge_written.store(written, Ordering::SeqCst);
            }
        }
        "drip" => {
            let _ = conn.write_all(sse.as_bytes());
            loop {
                if conn.write_all(piece.as_bytes()).is_err() {
                    log.drip_closed.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        "tools" => {
            *log.tools_request.lock().unwrap() = Some(req.clone());
            let call = |delta: Value| {
                format!(
                    "data: {}\n\n",
                    json!({"choices": [{"index": 0, "delta": {"tool_calls": [delta]}}]})
                )
            };
            let events = [
                call(json!({"index": 0, "id": "call_up_1", "type": "function",
                    "function": {"name": "weather", "arguments": ""}})),
                call(json!({"index": 0, "function": {"arguments": "{\"city\": "}})),
                call(json!({"index": 0, "function": {"arguments": "\"Paris\"}"}})),
                "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"
                    .to_string(),
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":11}}\n\n"
                    .to_string(),
                "data: [DONE]\n\n".to_string(),
            ];
            let _ = conn.write_all(format!("{sse}{}", events.concat()).as_bytes());
        }
        "busy" => {
            let _ = conn.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\
                  Content-Type: application/json\r\nConnection: close\r\n\r\n\
                  {\"error\":{\"message\":\"the server is busy\",\"code\":\"queue_full\"}}",
            );
        }
        "silent" => std::thread::sleep(Duration::from_secs(30)),
        "stall" => {
            let _ = conn.write_all(format!("{sse}{piece}").as_bytes());
            std::thread::sleep(Duration::from_secs(30));
        }
        "fail" => {
            let _ = conn.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
                  Connection: close\r\n\r\n{\"error\":{\"message\":\"the engine crashed\"}}",
            );
        }
        other => panic!("the fake upstream has no model {other}"),
    }
}

/// Peak resident memory of a process, bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_misbehaving_upstream_is_cut_off_with_a_stable_code() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.sock");
    let log = fake_upstream(&socket);
    let mut toml = String::new();
    for model in [
        "garbage", "not-json", "endless", "huge", "silent", "stall", "fail", "drip",
    ] {
        toml.push_str(&upstream_toml(
            &format!("f-{model}"),
            &socket,
            model,
            "first-byte-timeout-secs = 2\nidle-timeout-secs = 2\nfailure-threshold = 100\n",
        ));
    }
    toml.push_str(&upstream_toml(
        "f-busy",
        &socket,
        "busy",
        "failure-threshold = 1\n",
    ));
    let front = Daemon::with_config(&[("local", &smollm2())], &toml);
    let f = front.client();
    let pid = front.child.id();
    let plain =
        |name: &str| post_json(&f, "/v1/chat/completions", &chat(name, "hi", 64, json!({})));

    for (name, status, code) in [
        ("f-garbage", 502, "upstream_bad_response"),
        ("f-not-json", 502, "upstream_bad_response"),
        ("f-endless", 502, "upstream_too_large"),
        ("f-silent", 504, "upstream_timeout"),
        ("f-stall", 504, "upstream_timeout"),
        ("f-fail", 503, "upstream_unavailable"),
    ] {
        let t = Instant::now();
        let (got, err) = plain(name);
        assert_eq!(
            (got, err["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            t.elapsed()
        );
        let rec = newest_record(&f);
        assert_eq!(
            (rec.meta.model.as_str(), rec.meta.status.as_str()),
            (name, "error")
        );
    }
    assert!(
        plain("f-fail").1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the engine crashed"),
        "the upstream's own message is passed on"
    );
    // Busy (a 503 with Retry-After) is passed on, and never opens the breaker.
    for _ in 0..3 {
        let (status, headers, err) = chat_answer(&f, &chat("f-busy", "hi", 4, json!({})));
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (503, Some("upstream_unavailable")),
            "{err}"
        );
        assert_eq!(headers["retry-after"], "7");
    }
    assert_ne!(upstream_state(&f, "f-busy"), "circuit_open");
    wait_until(15, "the endless stream's connection closed", || {
        log.endless_closed.load(Ordering::SeqCst)
    });

    // Streamed: an answer that started is cut with an error event, not [DONE].
    let body = chat("f-endless", "hi", 64, json!({"stream": true}));
    let (status, _, events) = rt().block_on(post_stream(&f, "/v1/chat/completions", &body));
    assert_eq!(status, 200);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_too_large", "{last}");
    let body = chat("f-stall", "hi", 64, json!({"stream": true}));
    let (_, _, events) = rt().block_on(post_stream(&f, "/v1/chat/completions", &body));
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{last}");

    // 100 MB, as one event and as an embeddings body: cut at max-answer-bytes (16 MiB), the
    // rest never read, and the daemon's memory does not grow by the answer's size.
    let peak = peak_rss(pid);
    let (status, err) = plain("f-huge");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (502, Some("upstream_too_large")),
        "{err}"
    );
    let (status, err) = post_json(
        &f,
        "/v1/embeddings",
        &json!({"model": "f-huge", "input": ["x"]}),
    );
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (502, Some("upstream_too_large")),
        "{err}"
    );
    let grown = peak_rss(pid).saturating_sub(peak);
    assert!(grown < 64 << 20, "peak RSS grew by {grown} bytes");
    assert!(
        log.huge_written.load(Ordering::SeqCst) < 90 << 20,
        "the front kept reading"
    );

    // A client that leaves cancels the upstream request: the connection to it is closed, and
    // the record is stored as aborted with what had arrived.
    assert!(!log.drip_closed.load(Ordering::SeqCst));
    rt().block_on(async {
        let body = chat("f-drip", "hi", 2000, json!({"stream": true}));
        let mut resp = f
            .send(
                Method::POST,
                "/v1/chat/completions",
                Some(bytes::Bytes::from(body.to_string())),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        let mut parser = inhouse::client::SseParser::default();
        let mut events = Vec::new();
        while streamed_text(&events).len() < 3 {
            events.extend(parser.push(&resp.next_chunk().await.unwrap().unwrap()));
        }
        // Dropping the response closes the client's connection.
    });
    wait_until(
        15,
        "the upstream connection closed after the client left",
        || log.drip_closed.load(Ordering::SeqCst),
    );
    wait_until(15, "the aborted record", || {
        newest_record(&f).meta.model == "f-drip"
    });
    let rec = newest_record(&f);
    assert_eq!(rec.meta.status.as_str(), "aborted");
    assert!(rec.response.starts_with("xxx"), "{:?}", rec.response);
    let metrics = rt().block_on(metrics_text(&f));
    assert!(
        metrics.contains(
            "inhouse_upstream_requests_total{upstream=\"f-drip\",outcome=\"cancelled\"} 1"
        ),
        "{metrics}"
    );

    // Healthy: /health answers, the local model serves.
    assert_eq!(get_json(&f, "/health")["status"], "ok");
    let (status, local) = post_json(
        &f,
        "/v1/chat/completions",
        &chat("local", "Say hi", 4, json!({})),
    );
    assert_eq!(status, 200, "{local}");
    let metrics = rt().block_on(metrics_text(&f));
    assert!(
        metrics.contains(
            "inhouse_upstream_requests_total{upstream=\"f-garbage\",outcome=\"upstream_bad_response\"} 1"
        ),
        "{metrics}"
    );
    assert!(log.requests.load(Ordering::SeqCst) >= 10);
}

#[test]
fn tools_are_forwarded_and_the_calls_checked_like_a_local_models() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.sock");
    let log = fake_upstream(&socket);
    let front = Daemon::with_config(&[], &upstream_toml("big", &socket, "tools", ""));
    let f = front.client();
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let body = chat("big", "Weather in Paris?", 32, json!({"tools": tools}));
    let (status, v) = post_json(&f, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    // The upstream was offered the tools as the caller gave them, under its own model id.
    let sent = log
        .tools_request
        .lock()
        .unwrap()
        .clone()
        .expect("a request");
    assert_eq!(sent["model"], "tools");
    assert_eq!(sent["tools"], tools);
    assert_eq!(sent["tool_choice"], "auto");
    // Its structured call came back through the API's own parser: checked, with our id.
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "weather", "{v}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 11);
    // The record holds the call, like a local model's.
    let rec = newest_record(&f);
    assert_eq!(rec.meta.status.as_str(), "completed");
    assert!(rec.response.contains("\"weather\""), "{}", rec.response);
    // Streamed, the call arrives as tool_calls deltas.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, _, events) = rt().block_on(post_stream(&f, "/v1/chat/completions", &streamed));
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events
            .iter()
            .any(|e| e.contains("\"tool_calls\"") && e.contains("\"weather\"")),
        "{events:?}"
    );
}

/// Runs inhoused with `toml` as its config (and `extra` flags) until it exits.
fn run_with_config(toml: &str, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("inhouse.toml");
    std::fs::write(&cfg, toml).unwrap();
    let key = dir.path().join("master.key");
    inhouse::crypto::generate_key_file(&key).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--key-file")
        .arg(&key)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_tcp_upstream_is_refused_at_config_check() {
    for (socket, says) in [
        ("127.0.0.1:8000", "looks like a TCP address"),
        ("vllm-node-1:8000", "looks like a TCP address"),
        ("http://localhost:8000/v1", "is a URL"),
        ("unix:///run/vllm/vllm.sock", "is a URL"),
        ("run/vllm.sock", "is not an absolute path"),
    ] {
        let out = run_with_config(
            &format!("[[upstreams]]\nname = \"big\"\nsocket = \"{socket}\"\nmodel = \"m\"\n"),
            &[],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{socket}: {err}");
        assert!(
            err.contains("upstreams.big") && err.contains(says),
            "{socket}: {err}"
        );
        assert!(err.contains("Unix socket"), "{err}");
    }
    // A name that is also a local model, and an unknown key, are refused too.
    let out = run_with_config(
        "[[upstreams]]\nname = \"big\"\nsocket = \"/run/x.sock\"\nmodel = \"m\"\n",
        &["--model", "big=/nonexistent.gguf"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("also a local model"), "{err}");
    let out = run_with_config(
        "[[upstreams]]\nname = \"big\"\nsocket = \"/run/x.sock\"\nmodel = \"m\"\nhost = \"x\"\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

/// `systemd-analyze security --offline=true`'s overall exposure of `unit` (with its `.d/`).
fn exposure(unit: &Path) -> f64 {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .current_dir(unit.parent().unwrap())
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"))
}

#[test]
fn the_upstreams_drop_in_keeps_the_sandbox_at_half_and_opens_no_network() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("inhoused.service");
    std::fs::copy(repo.join("systemd/inhoused.service"), &unit).unwrap();
    let bare = exposure(&unit);
    let dropins = dir.path().join("inhoused.service.d");
    std::fs::create_dir(&dropins).unwrap();
    // As an admin would use it: the group, and the optional bind uncommented.
    let text = std::fs::read_to_string(repo.join("packaging/dropins/upstreams.conf")).unwrap();
    let text = text.replace("#BindReadOnlyPaths=", "BindReadOnlyPaths=");
    assert!(text.contains("\nBindReadOnlyPaths=") && text.contains("\nSupplementaryGroups="));
    for key in [
        "PrivateNetwork",
        "IPAddress",
        "RestrictAddressFamilies",
        "ReadWritePaths",
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with(key)),
            "the drop-in changes {key}"
        );
    }
    std::fs::write(dropins.join("upstreams.conf"), text).unwrap();
    let with = exposure(&unit);
    assert!(
        with <= 0.5,
        "exposure with the upstreams drop-in: {with} (bare {bare})"
    );
}

/// POSTs a chat body; returns the status, the headers and the JSON body.
fn chat_answer(c: &Client, body: &Value) -> (u16, hyper::HeaderMap, Value) {
    rt().block_on(async {
        let resp = c
            .send(
                Method::POST,
                "/v1/chat/completions",
                Some(bytes::Bytes::from(body.to_string())),
            )
            .await
            .unwrap();
        let (status, headers) = (resp.status.as_u16(), resp.headers.clone());
        let body: Value = serde_json::from_slice(&resp.collect().await.unwrap()).unwrap();
        (status, headers, body)
    })
}
