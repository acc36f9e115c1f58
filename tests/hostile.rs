//! Access control and hostile input: a role matrix over every route and named hostile requests
//! with their expected statuses against the API in-process (the real router, roles, limits,
//! socket and store over a scripted engine); crafted GGUF files, cancellation, a full queue and
//! shutdown mid-generation against the real daemon.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes raw bytes to the socket; returns the status code of the answer (0 when the daemon
/// closed the connection without one) and the body text.
fn raw_http(socket: &Path, bytes: &[u8], half_close: bool) -> (u16, String) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                // One response is enough: stop once its body is complete.
                if let Some(end) = text.find("\r\n\r\n") {
                    let head = &text[..end].to_ascii_lowercase();
                    if let Some(len) = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                    {
                        if out.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

/// Decodes a chunked body (sizes in hex, each chunk followed by CRLF, ending with size 0).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn post_raw(path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn chat_json(extra: &str) -> String {
    format!(
        r#"{{"model":"smol","messages":[{{"role":"user","content":"Hi"}}],"max_tokens":2{extra}}}"#
    )
}

fn assert_still_serving(socket: &Path, after: &str) {
    let (st, body) = raw_http(
        socket,
        &post_raw(
            "/v1/chat/completions",
            Some("application/json"),
            chat_json("").as_bytes(),
        ),
        false,
    );
    assert_eq!(st, 200, "after {after}: a normal request failed: {body}");
}

/// A hostile case: name, raw request bytes, half-close after sending, expected status, expected
/// error code.
type Case<'a> = (&'a str, Vec<u8>, bool, u16, Option<&'a str>);

#[test]
fn thirty_plus_hostile_inputs_each_get_their_status_and_the_daemon_keeps_serving() {
    let d = TestServer::start();
    let long_prompt = "word ".repeat(5000);
    let many_messages = format!(
        r#"{{"model":"smol","messages":[{}]}}"#,
        vec![r#"{"role":"user","content":"a"}"#; 300].join(",")
    );
    let deep = format!(
        r#"{{"model":"smol","x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let huge = format!(
        r#"{{"model":"smol","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(3 << 20)
    );
    let json = Some("application/json");
    let mut cases: Vec<Case> = vec![
        ("huge body", post_raw("/v1/chat/completions", json, huge.as_bytes()), false, 413, Some("body_too_large")),
        ("deep JSON", post_raw("/v1/chat/completions", json, deep.as_bytes()), false, 400, Some("json_too_deep")),
        ("invalid UTF-8", post_raw("/v1/chat/completions", json, b"{\"model\":\"smol\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"), false, 400, Some("invalid_json")),
        ("NaN literal", post_raw("/v1/chat/completions", json, chat_json(r#","temperature":NaN"#).as_bytes()), false, 400, Some("invalid_json")),
        ("infinite number", post_raw("/v1/chat/completions", json, chat_json(r#","temperature":1e999"#).as_bytes()), false, 400, Some("invalid_json")),
        ("negative temperature", post_raw("/v1/chat/completions", json, chat_json(r#","temperature":-0.5"#).as_bytes()), false, 400, Some("invalid_value")),
        ("max_tokens 2^63", post_raw("/v1/chat/completions", json, r#"{"model":"smol","messages":[{"role":"user","content":"Hi"}],"max_tokens":9223372036854775808}"#.as_bytes()), false, 400, Some("invalid_value")),
        ("negative max_tokens", post_raw("/v1/chat/completions", json, r#"{"model":"smol","messages":[{"role":"user","content":"Hi"}],"max_tokens":-5}"#.as_bytes()), false, 400, Some("invalid_type")),
        ("fractional max_tokens", post_raw("/v1/chat/completions", json, r#"{"model":"smol","messages":[{"role":"user","content":"Hi"}],"max_tokens":1.5}"#.as_bytes()), false, 400, Some("invalid_type")),
        ("zero top_p", post_raw("/v1/chat/completions", json, chat_json(r#","top_p":0"#).as_bytes()), false, 400, Some("invalid_value")),
        ("negative top_k", post_raw("/v1/chat/completions", json, chat_json(r#","top_k":-1"#).as_bytes()), false, 400, Some("invalid_value")),
        ("min_p above 1", post_raw("/v1/chat/completions", json, chat_json(r#","min_p":2"#).as_bytes()), false, 400, Some("invalid_value")),
        ("huge penalty", post_raw("/v1/chat/completions", json, chat_json(r#","presence_penalty":1e30"#).as_bytes()), false, 400, Some("invalid_value")),
        ("seed as a string", post_raw("/v1/chat/completions", json, chat_json(r#","seed":"abc""#).as_bytes()), false, 400, Some("invalid_type")),
        ("seed 2^64", post_raw("/v1/chat/completions", json, chat_json(r#","seed":18446744073709551616"#).as_bytes()), false, 400, None),
        ("prompt over the context", post_raw("/v1/chat/completions", json, format!(r#"{{"model":"smol","messages":[{{"role":"user","content":"{long_prompt}"}}]}}"#).as_bytes()), false, 400, Some("context_length_exceeded")),
        ("path-like model ../../etc/passwd", post_raw("/v1/chat/completions", json, br#"{"model":"../../etc/passwd","messages":[{"role":"user","content":"Hi"}]}"#), false, 400, Some("invalid_value")),
        ("absolute-path model", post_raw("/v1/chat/completions", json, br#"{"model":"/etc/shadow","messages":[{"role":"user","content":"Hi"}]}"#), false, 400, Some("invalid_value")),
        ("unknown model", post_raw("/v1/chat/completions", json, br#"{"model":"nope","messages":[{"role":"user","content":"Hi"}]}"#), false, 404, Some("model_not_found")),
        ("unknown fields are ignored", post_raw("/v1/chat/completions", json, chat_json(r#","user":"x","metadata":{"a":1},"frobnicate":true"#).as_bytes()), false, 200, None),
        ("wrong content type", post_raw("/v1/chat/completions", Some("text/plain"), chat_json("").as_bytes()), false, 415, Some("unsupported_media_type")),
        ("form content type", post_raw("/v1/chat/completions", Some("application/x-www-form-urlencoded"), chat_json("").as_bytes()), false, 415, Some("unsupported_media_type")),
        ("truncated chunked body", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n{\"model\":\"smol\",\"mess".to_vec(), true, 400, Some("invalid_body")),
        ("body shorter than Content-Length", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":".to_vec(), true, 400, Some("invalid_body")),
        ("empty body", post_raw("/v1/chat/completions", json, b""), false, 400, Some("invalid_json")),
        ("array body", post_raw("/v1/chat/completions", json, b"[1,2,3]"), false, 400, Some("invalid_json")),
        ("messages not an array", post_raw("/v1/chat/completions", json, br#"{"model":"smol","messages":{"role":"user"}}"#), false, 400, Some("invalid_type")),
        ("message without a role", post_raw("/v1/chat/completions", json, br#"{"model":"smol","messages":[{"content":"x"}]}"#), false, 400, Some("missing_field")),
        ("tool role", post_raw("/v1/chat/completions", json, br#"{"model":"smol","messages":[{"role":"tool","content":"x"}]}"#), false, 400, Some("invalid_value")),
        ("NUL in content", post_raw("/v1/chat/completions", json, br#"{"model":"smol","messages":[{"role":"user","content":"a\u0000b"}]}"#), false, 400, Some("invalid_value")),
        ("five stop strings", post_raw("/v1/chat/completions", json, chat_json(r#","stop":["a","b","c","d","e"]"#).as_bytes()), false, 400, Some("invalid_value")),
        ("empty stop string", post_raw("/v1/chat/completions", json, chat_json(r##","stop":"""##).as_bytes()), false, 400, Some("invalid_value")),
        ("n = 9, over max-choices", post_raw("/v1/chat/completions", json, chat_json(r#","n":9"#).as_bytes()), false, 400, Some("limit_exceeded")),
        ("tools", post_raw("/v1/chat/completions", json, chat_json(r#","tools":[{"type":"function"}]"#).as_bytes()), false, 400, Some("invalid_value")),
        ("stream as a string", post_raw("/v1/chat/completions", json, chat_json(r#","stream":"yes""#).as_bytes()), false, 400, Some("invalid_type")),
        ("300 messages", post_raw("/v1/chat/completions", json, many_messages.as_bytes()), false, 400, Some("invalid_value")),
        ("empty embeddings input", post_raw("/v1/embeddings", json, br#"{"model":"smol","input":[]}"#), false, 400, Some("invalid_value")),
        ("completion with an empty prompt", post_raw("/v1/completions", json, br#"{"model":"smol","prompt":""}"#), false, 400, Some("invalid_value")),
        ("record id not a number", b"GET /v1/history/abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), false, 400, Some("invalid_value")),
        ("bad history page size", b"GET /v1/history?limit=99999999999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), false, 400, None),
        ("wrong method", b"DELETE /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), false, 405, Some("method_not_allowed")),
        ("unknown path", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), false, 404, Some("unknown_url")),
        ("garbage request line", b"\x00\x01\x02 garbage\r\n\r\n".to_vec(), false, 400, None),
    ];
    // Headers over hyper's limit: refused by the HTTP layer (431), no handler runs.
    let mut big_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'a', 200_000));
    big_header.extend_from_slice(b"\r\n\r\n");
    cases.push(("oversized header", big_header, false, 431, None));
    assert!(cases.len() >= 30, "{} cases", cases.len());

    for (name, bytes, half_close, status, code) in &cases {
        let (got, body) = raw_http(&d.socket, bytes, *half_close);
        assert_eq!(got, *status, "{name}: {body}");
        if let Some(code) = code {
            let v: Value =
                serde_json::from_str(&body).unwrap_or_else(|_| panic!("{name}: not JSON: {body}"));
            assert_eq!(v["error"]["code"], *code, "{name}: {v}");
        }
        assert_still_serving(&d.socket, name);
    }
    assert!(d.serving(), "the server stopped answering");
    // Every request that reached the engine passed validation: none of the refused ones did.
    let asked = d.engine.requests();
    assert!(
        asked.iter().all(|r| r.model == "smol" && r.max_tokens >= 1),
        "{asked:?}"
    );
}

fn cli_as(uid: u32, socket: &Path, method: &str, path: &str, data: Option<&str>) -> u16 {
    let mut args = vec!["request", method, path];
    if let Some(d) = data {
        args.extend(["--data", d]);
    }
    let out = inhouse_as(uid, socket, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn role_matrix_over_every_route() {
    let d = TestServer::with_config(
        "[roles]\nuser-groups = []\nuser-uids = [4242]\nauditor-uids = [4343]\n",
    );
    d.open_to_all();
    let chat = chat_json("");
    let (admin, user, auditor, stranger) = (0, 4242, 4343, 4141);
    // (method, path, body, [admin, user, auditor, stranger])
    let routes: Vec<(&str, &str, Option<&str>, [u16; 4])> = vec![
        ("GET", "/health", None, [200, 200, 200, 200]),
        ("GET", "/metrics", None, [200, 403, 200, 403]),
        ("GET", "/v1/models", None, [200, 200, 403, 403]),
        ("GET", "/v1/models/smol", None, [200, 200, 403, 403]),
        (
            "POST",
            "/v1/chat/completions",
            Some(&chat),
            [200, 200, 403, 403],
        ),
        (
            "POST",
            "/v1/completions",
            Some(r#"{"model":"smol","prompt":"Hi","max_tokens":2}"#),
            [200, 200, 403, 403],
        ),
        (
            "POST",
            "/v1/embeddings",
            Some(r#"{"model":"smol","input":"Hi"}"#),
            [200, 200, 403, 403],
        ),
        ("GET", "/v1/history", None, [200, 200, 403, 403]),
        ("GET", "/v1/history/999999", None, [404, 404, 403, 403]),
        ("DELETE", "/v1/history/999999", None, [404, 404, 403, 403]),
        (
            "POST",
            "/admin/erase",
            Some(r#"{"uid":99999}"#),
            [200, 403, 403, 403],
        ),
        ("GET", "/admin/rotate-key", None, [200, 403, 403, 403]),
        ("GET", "/audit/verify", None, [200, 403, 200, 403]),
        ("GET", "/audit/export", None, [200, 403, 200, 403]),
    ];
    for (method, path, body, expected) in &routes {
        for (i, (who, uid)) in [
            ("admin", admin),
            ("user", user),
            ("auditor", auditor),
            ("stranger", stranger),
        ]
        .iter()
        .enumerate()
        {
            let got = cli_as(*uid, &d.socket, method, path, *body);
            assert_eq!(got, expected[i], "{method} {path} as {who} (uid {uid})");
        }
    }
}

#[test]
fn crafted_bad_gguf_files_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    inhouse::crypto::generate_key_file(&key).unwrap();
    let good = std::fs::read(smollm2()).unwrap();
    let mut huge_count = good.clone();
    huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    let mut huge_kv = good.clone();
    huge_kv[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes()); // key-value count
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGUX");
    let mut bad_version = good.clone();
    bad_version[4..8].copy_from_slice(&99u32.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated header", good[..100].to_vec(), ""),
        (
            "truncated data",
            good[..good.len() / 2].to_vec(),
            "past the end",
        ),
        ("huge tensor count", huge_count, ""),
        ("huge key-value count", huge_kv, ""),
        ("bad magic", bad_magic, "ggux"),
        ("bad version", bad_version, "version"),
        ("empty file", vec![], ""),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let out = run_inhoused(dir.path(), &key, &format!("bad={}", path.display()));
        let err = String::from_utf8_lossy(&out.stderr);
        // A clean refusal: exit status 1 with a message, never a signal (abort, segfault).
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: {:?}\n{err}",
            out.status
        );
        assert!(err.contains("not a valid GGUF file"), "{name}: {err}");
        assert!(err.to_lowercase().contains(needle), "{name}: {err}");
    }
}

#[test]
fn a_client_killed_mid_stream_frees_its_slot_and_is_recorded_as_aborted() {
    let d = Daemon::smol();
    let c = d.client();
    rt().block_on(async {
        let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Write a very long story."}],
                          "max_tokens": 400, "temperature": 0, "stream": true});
        let mut resp = c
            .send(hyper::Method::POST, "/v1/chat/completions", Some(body.to_string().into()))
            .await
            .unwrap();
        for _ in 0..3 {
            resp.next_chunk().await.unwrap().unwrap();
        }
        drop(resp); // the client goes away mid-stream
        let t = Instant::now();
        loop {
            let text = metrics_text(&c).await;
            if sample(&text, "inhouse_busy_slots{model=\"smol\"}") == 0.0 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(3), "slot still busy after 3 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("slot freed {:?} after the client left", t.elapsed());
        // The record says what happened.
        let t = Instant::now();
        loop {
            let v = c.json(hyper::Method::GET, "/v1/history?limit=1", None).await.unwrap();
            if v["data"][0]["status"] == "aborted" {
                assert!(v["data"][0]["completion_tokens"].as_u64().is_some());
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "no aborted record: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn sigterm_mid_generation_exits_zero_within_the_deadline_with_the_store_intact() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    inhouse::crypto::generate_key_file(&key).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nshutdown-deadline-secs = 2\n").unwrap();
    let mut d = Daemon::start_in(
        dir.path(),
        &key,
        &[("smol", &smollm2())],
        &["--config", cfg.to_str().unwrap()],
    );
    let socket = d.socket.clone();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let streamer = std::thread::spawn(move || {
        let c = inhouse::client::Client::new(&socket);
        rt().block_on(async {
            let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Count to one thousand."}],
                              "max_tokens": 1500, "temperature": 0, "stream": true});
            let mut resp = c
                .send(hyper::Method::POST, "/v1/chat/completions", Some(body.to_string().into()))
                .await
                .unwrap();
            let mut parser = inhouse::client::SseParser::default();
            let mut events = 0;
            while let Some(Ok(chunk)) = resp.next_chunk().await {
                events += parser.push(&chunk).len();
                if events >= 4 {
                    let _ = started_tx.send(());
                }
            }
            events
        })
    });
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the stream started");
    let t = Instant::now();
    let status = d.terminate();
    let took = t.elapsed();
    assert!(status.success(), "exit status {status}\n{}", d.log());
    assert!(took < Duration::from_secs(2 + 5), "exit took {took:?}");
    let events = streamer.join().unwrap();
    assert!(
        events >= 4,
        "the stream was running when SIGTERM came ({events} events)"
    );
    assert!(
        events < 1500,
        "the stream was cut short by the shutdown ({events} events)"
    );
    let db = rusqlite::Connection::open(dir.path().join("inhouse.db")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(db);
    let d = Daemon::start_in(dir.path(), &key, &[("smol", &smollm2())], &[]);
    let v = rt()
        .block_on(d.client().json(hyper::Method::GET, "/audit/verify", None))
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn a_full_queue_answers_503_and_a_busy_uid_answers_429() {
    let d = Daemon::smol_with_config("slots = 1\nqueue-size = 1\n[limits]\nper-uid-concurrency = 64\nper-uid-per-minute = 100000\n");
    let statuses: Vec<u16> = rt().block_on(async {
        let body =
            json!({"model": "smol", "messages": [{"role": "user", "content": "Write a story."}],
                          "max_tokens": 16, "temperature": 0})
            .to_string();
        let reqs = (0..8).map(|_| {
            let c = d.client();
            let body = body.clone();
            async move { post(&c, "/v1/chat/completions", &body).await }
        });
        let results = futures_util::future::join_all(reqs).await;
        results
            .into_iter()
            .map(|(st, v)| {
                if st == 503 {
                    assert_eq!(v["error"]["code"], "queue_full", "{v}");
                }
                st
            })
            .collect()
    });
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&503),
        "one slot and a queue of one cannot take 8 at once: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );

    // Per-uid concurrency: a second daemon allowing one running request per uid.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = dir2.path().join("c.toml");
    std::fs::write(
        &cfg2,
        "[limits]\nper-uid-concurrency = 1\nper-uid-per-minute = 3\n",
    )
    .unwrap();
    let key2 = dir2.path().join("k");
    inhouse::crypto::generate_key_file(&key2).unwrap();
    let d2 = Daemon::start_in(
        dir2.path(),
        &key2,
        &[("smol", &smollm2())],
        &["--config", cfg2.to_str().unwrap()],
    );
    rt().block_on(async {
        let c = d2.client();
        let long = json!({"model": "smol", "messages": [{"role": "user", "content": "Write a story."}],
                          "max_tokens": 200, "temperature": 0, "stream": true});
        let mut running = c
            .send(hyper::Method::POST, "/v1/chat/completions", Some(long.to_string().into()))
            .await
            .unwrap();
        running.next_chunk().await.unwrap().unwrap();
        let resp = c
            .send(hyper::Method::POST, "/v1/chat/completions", Some(chat_json("").into()))
            .await
            .unwrap();
        assert_eq!(resp.status.as_u16(), 429, "a second concurrent request from the same uid");
        assert!(resp.headers.contains_key("retry-after"));
        drop(running);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The rate limit: 3 per minute, two used; the third passes, the fourth is refused.
        let (st, _) = post(&c, "/v1/chat/completions", &chat_json("")).await;
        assert_eq!(st, 200);
        let resp = c
            .send(hyper::Method::POST, "/v1/chat/completions", Some(chat_json("").into()))
            .await
            .unwrap();
        assert_eq!(resp.status.as_u16(), 429);
        let retry: u64 = resp.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    });
}
