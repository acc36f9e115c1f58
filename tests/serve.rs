//! End-to-end tests of the foundation: the real daemon binary, real llama.cpp, real models, a
//! real Unix socket.

mod common;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

/// Concatenated content of a chat stream, the number of content chunks, the finish reason.
fn stream_text(events: &[String]) -> (String, usize, String) {
    let mut text = String::new();
    let mut chunks = 0;
    let mut finish = String::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap_or_else(|_| panic!("bad event {e}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        if let Some(t) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            if !t.is_empty() {
                chunks += 1;
                text.push_str(t);
            }
        }
        if let Some(f) = v
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            finish = f.to_string();
        }
    }
    (text, chunks, finish)
}

#[test]
fn health_and_model_list() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let h = c.json(Method::GET, "/health", None).await.unwrap();
        assert_eq!(h["status"], "ok");
        assert_eq!(h["models"], json!(["smol"]));
        let m = c.json(Method::GET, "/v1/models", None).await.unwrap();
        assert_eq!(m["object"], "list");
        assert_eq!(m["data"][0]["id"], "smol");
        assert_eq!(m["data"][0]["object"], "model");
        assert_eq!(m["data"][0]["meta"]["architecture"], "llama");
        let one = c.json(Method::GET, "/v1/models/smol", None).await.unwrap();
        assert_eq!(one["id"], "smol");
    });
}

#[test]
fn chat_on_smollm2_gives_english() {
    let d = Daemon::smol();
    rt().block_on(async {
        // With a system turn: without one, SmolLM2's own template adds its default system
        // prompt, after which the 135M model answers this question in French.
        let body = chat_turns(
            "smol",
            &[
                ("system", "You are a helpful assistant."),
                ("user", "What is the capital of France?"),
            ],
            json!({"temperature": 0, "max_tokens": 48}),
        );
        let (status, v) = post(&d.client(), "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(status, 200, "{v}");
        let text = answer(&v);
        assert!(looks_english(&text), "not English: {text:?}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "smol");
        let u = &v["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
        assert!(u["completion_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            u["total_tokens"].as_u64().unwrap(),
            u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
        );
        assert!(matches!(
            v["choices"][0]["finish_reason"].as_str(),
            Some("stop" | "length")
        ));
    });
}

#[test]
fn chat_on_gemma3_gives_english() {
    let d = Daemon::start(&[("gemma", &gemma())], &[]);
    rt().block_on(async {
        let c = d.client();
        let m = c.json(Method::GET, "/v1/models/gemma", None).await.unwrap();
        assert_eq!(m["meta"]["architecture"], "gemma3");
        assert!(m["meta"]["chat_template"]
            .as_str()
            .unwrap()
            .contains("gemma"));
        let body = chat_body(
            "gemma",
            "Write one sentence about cats.",
            json!({"temperature": 0, "max_tokens": 32}),
        );
        let (status, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(status, 200, "{v}");
        let text = answer(&v);
        assert!(looks_english(&text), "not English: {text:?}");
    });
}

#[test]
fn stream_equals_non_stream_and_ends_with_done() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let body = chat_body(
            "smol",
            "Tell me about the sea.",
            json!({"temperature": 0.7, "seed": 7, "max_tokens": 24}),
        );
        let (_, plain) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        sbody["stream_options"] = json!({"include_usage": true});
        let (status, ctype, events) = post_stream(&c, "/v1/chat/completions", &sbody).await;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let (text, chunks, finish) = stream_text(&events);
        assert!(chunks >= 2, "only {chunks} content chunks");
        assert_eq!(text, answer(&plain));
        assert_eq!(
            finish,
            plain["choices"][0]["finish_reason"].as_str().unwrap()
        );
        // The usage chunk (asked for) matches the non-streamed usage.
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"], plain["usage"]);
    });
}

#[test]
fn same_seed_same_text() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let body = chat_body(
            "smol",
            "Invent a name for a cat.",
            json!({"temperature": 1.0, "seed": 1234, "max_tokens": 24, "top_k": 0, "min_p": 0}),
        )
        .to_string();
        let (_, a) = post(&c, "/v1/chat/completions", &body).await;
        let (_, b) = post(&c, "/v1/chat/completions", &body).await;
        assert!(!answer(&a).is_empty());
        assert_eq!(answer(&a), answer(&b));
    });
}

#[test]
fn max_tokens_five_gives_five_tokens_and_length() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        for field in ["max_tokens", "max_completion_tokens"] {
            let body = chat_body(
                "smol",
                "Write a long story about a dragon.",
                json!({"temperature": 0, field: 5}),
            );
            let (status, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["usage"]["completion_tokens"], 5, "{field}: {v}");
            assert_eq!(v["choices"][0]["finish_reason"], "length", "{field}");
        }
    });
}

#[test]
fn stop_string_ends_the_answer_before_it() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let base = chat_body(
            "smol",
            "Describe a sunny day at the beach.",
            json!({"temperature": 0, "max_tokens": 40}),
        );
        let (_, v) = post(&c, "/v1/chat/completions", &base.to_string()).await;
        let full = answer(&v);
        // Stop at the fourth word of the unconstrained answer.
        let word = full
            .split_whitespace()
            .nth(3)
            .unwrap_or_else(|| panic!("answer too short: {full:?}"))
            .to_string();
        let expected = &full[..full.find(&word).unwrap()];
        let mut body = base.clone();
        body["stop"] = json!([word]);
        let (_, s) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(answer(&s), expected);
        assert_eq!(s["choices"][0]["finish_reason"], "stop");
        assert!(!answer(&s).contains(&word));
        // The same through a stream.
        body["stream"] = json!(true);
        let (_, _, events) = post_stream(&c, "/v1/chat/completions", &body).await;
        let (text, _, finish) = stream_text(&events);
        assert_eq!(text, expected);
        assert_eq!(finish, "stop");
    });
}

#[test]
fn bad_requests_get_json_errors_and_the_daemon_keeps_answering() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let cases: &[(&str, &str, u16, &str)] = &[
            (
                "unknown model",
                r#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#,
                404,
                "model_not_found",
            ),
            ("malformed JSON", r#"{"model":"smol","messages":["#, 400, "invalid_json"),
            ("not an object", r#"[1,2]"#, 400, "invalid_json"),
            ("wrong type", r#"{"model":"smol","messages":"hi"}"#, 400, "invalid_type"),
            (
                "wrong number type",
                r#"{"model":"smol","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
                400,
                "invalid_type",
            ),
            ("missing messages", r#"{"model":"smol"}"#, 400, "missing_field"),
            ("empty messages", r#"{"model":"smol","messages":[]}"#, 400, "invalid_value"),
            (
                "negative max_tokens",
                r#"{"model":"smol","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#,
                400,
                "invalid_type",
            ),
            (
                "temperature out of range",
                r#"{"model":"smol","messages":[{"role":"user","content":"hi"}],"temperature":9}"#,
                400,
                "invalid_value",
            ),
        ];
        for (name, body, status, code) in cases {
            let (got, v) = post(&c, "/v1/chat/completions", body).await;
            assert_eq!(got, *status, "{name}: {v}");
            assert_eq!(v["error"]["code"], *code, "{name}: {v}");
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}");
            assert!(v["error"]["type"].is_string(), "{name}");
        }
        let (st, v) = post(&c, "/v1/nothing", "{}").await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("unknown_url")));
        let (st, _) = c.raw(Method::GET, "/v1/chat/completions", None).await.unwrap();
        assert_eq!(st.as_u16(), 405);
        // A prompt longer than the context.
        let long = "word ".repeat(3000);
        let body = chat_body("smol", &long, json!({}));
        let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{v}");
        // Still serving.
        let ok = chat_body("smol", "Say hello.", json!({"max_tokens": 4}));
        let (st, v) = post(&c, "/v1/chat/completions", &ok.to_string()).await;
        assert_eq!(st, 200, "{v}");
    });
}

#[test]
fn plain_completions_stream_and_not() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0});
        let (st, v) = post(&c, "/v1/completions", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["object"], "text_completion");
        let text = v["choices"][0]["text"].as_str().unwrap().to_string();
        assert!(!text.is_empty());
        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        let (_, _, events) = post_stream(&c, "/v1/completions", &sbody).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let streamed: String = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(streamed, text);
    });
}

#[test]
fn embeddings_are_normalized_vectors() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "input": ["hello world", "goodbye"]});
        let (st, v) = post(&c, "/v1/embeddings", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        let e: Vec<f64> = data[0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(e.len(), 576, "SmolLM2-135M has 576-wide embeddings");
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
        assert_ne!(data[0]["embedding"], data[1]["embedding"]);
        // base64 encoding carries the same numbers.
        let body = json!({"model": "smol", "input": "hello world", "encoding_format": "base64"});
        let (st, v) = post(&c, "/v1/embeddings", &body.to_string()).await;
        assert_eq!(st, 200);
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let f: Vec<f32> = raw
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(f.len(), 576);
        assert!((f64::from(f[0]) - e[0]).abs() < 1e-6);
    });
}

/// Inodes of the sockets a process holds open.
fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().to_string();
            s.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect()
}

/// The inode column of a `/proc/net/*` table.
fn table_inodes(table: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let col = header
        .split_whitespace()
        .position(|h| h.eq_ignore_ascii_case("inode"));
    lines
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // /proc/net/tcp's header has fewer words than its rows (tx_queue rx_queue is one).
            match col {
                Some(_) if table.starts_with("unix") => fields.get(6).map(|s| s.to_string()),
                Some(_) => fields.get(9).map(|s| s.to_string()),
                None => None,
            }
        })
        .collect()
}

#[test]
fn daemon_has_no_tcp_or_udp_socket() {
    let d = Daemon::smol();
    // Let it serve one request first, so any lazily opened socket would exist.
    rt().block_on(async {
        let body = chat_body("smol", "Hi", json!({"max_tokens": 2}));
        let (st, _) = post(&d.client(), "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(st, 200);
    });
    let mine = socket_inodes(d.child.id());
    let unix = table_inodes("unix");
    assert!(
        mine.iter().any(|i| unix.contains(i)),
        "the daemon should hold its Unix listening socket"
    );
    for table in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
        let inet = table_inodes(table);
        for i in &mine {
            assert!(
                !inet.contains(i),
                "the daemon holds a {table} socket (inode {i})"
            );
        }
    }
    // And ss agrees, where it is installed.
    if let Ok(out) = std::process::Command::new("ss").args(["-ltnup"]).output() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("inhoused"), "ss shows a listener: {text}");
    }
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut d = Daemon::smol();
    let status = d.terminate();
    assert!(status.success(), "exit status {status}\n{}", d.log());
    assert!(!d.socket.exists());
}

#[test]
fn bad_model_file_and_bad_config_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.gguf");
    std::fs::write(&bogus, b"this is not a gguf file").unwrap();
    let key = dir.path().join("k");
    inhouse::crypto::generate_key_file(&key).unwrap();
    let out = run_inhoused(dir.path(), &key, &format!("bogus={}", bogus.display()));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load model \"bogus\""), "{err}");
    assert!(!dir.path().join("s.sock").exists());

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "threadz = 2\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("threadz"));
}

#[test]
fn config_file_sets_socket_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let cfg = dir.path().join("inhouse.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = {:?}\nstate-dir = {:?}\nthreads = 2\nctx-size = 1024\n[models]\ntiny = {:?}\n",
            sock,
            dir.path(),
            smollm2()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--config")
        .arg(&cfg)
        .arg("--validate-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ctx_size: 1024") && text.contains("\"tiny\""),
        "{text}"
    );
}

#[test]
fn cli_health_models_and_run() {
    let d = Daemon::smol();
    let cli = env!("CARGO_BIN_EXE_inhouse");
    let run = |args: &[&str]| {
        std::process::Command::new(cli)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap()
    };
    let h = run(&["health"]);
    assert!(h.status.success());
    assert!(String::from_utf8_lossy(&h.stdout).contains("\"ok\""));
    let m = run(&["models"]);
    assert!(String::from_utf8_lossy(&m.stdout).starts_with("smol\tllama"));
    let r = run(&[
        "run",
        "smol",
        "Where is Paris?",
        "--temperature",
        "0",
        "--max-tokens",
        "16",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(looks_english(&text), "{text:?}");
    let e = run(&["run", "nope", "hi"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("does not exist"));
    // chat: two turns from stdin, then end of input.
    let mut child = std::process::Command::new(cli)
        .arg("--socket")
        .arg(&d.socket)
        .args(["chat", "smol", "--temperature", "0", "--max-tokens", "8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello!\nWhat did I just say?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        2
    );
    // No daemon at that path: a clear message.
    let out = std::process::Command::new(cli)
        .args(["--socket", "/nonexistent/inhouse.sock", "health"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is inhoused running"));
}

#[test]
fn the_official_openai_python_client_works() {
    let d = Daemon::smol();
    common::run_python_client(
        "openai_client.py",
        &d.socket,
        "smol",
        "openai client: plain and streaming chat ok",
    );
}
