//! Continuous batching, prompt-cache reuse and cancellation, end to end: the real daemon, real
//! llama.cpp, SmolLM2. No timing thresholds in absolute terms: the machines are shared, so
//! latency checks compare against what the same run measured.

mod common;

use common::*;
use hyper::Method;
use inhouse::client::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn chat(prompt: &str, extra: Value) -> Value {
    chat_body("smol", prompt, extra)
}

/// One streamed answer: its text and when each content chunk arrived.
struct Streamed {
    text: String,
    arrivals: Vec<Instant>,
}

/// Streams a chat or completion request and records when each content chunk arrives.
async fn stream(client: &Client, path: &str, mut body: Value) -> Streamed {
    body["stream"] = json!(true);
    let sse = collect_sse(client, path, &body).await;
    assert_eq!(sse.status, 200);
    let mut out = Streamed {
        text: String::new(),
        arrivals: Vec::new(),
    };
    for (e, at) in sse.events.iter().filter(|(e, _)| e != "[DONE]") {
        let v: Value = serde_json::from_str(e).expect("event JSON");
        let piece = v
            .pointer("/choices/0/delta/content")
            .or_else(|| v.pointer("/choices/0/text"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !piece.is_empty() {
            out.text.push_str(piece);
            out.arrivals.push(*at);
        }
    }
    out
}

/// The streams really ran together: the first tokens of all arrived before any stream ended.
fn assert_ran_together(streams: &[Streamed]) {
    let first_end = streams
        .iter()
        .map(|s| *s.arrivals.last().expect("a streamed answer"))
        .min()
        .expect("streams");
    let last_start = streams
        .iter()
        .map(|s| s.arrivals[0])
        .max()
        .expect("streams");
    assert!(last_start <= first_end, "the streams ran one after another");
}

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Name three colours.",
    "Why is the sky blue?",
    "Tell me a fun fact about cats.",
    "What is 12 times 12?",
    "Give me a tip for learning to cook.",
    "Describe a forest in one sentence.",
];

fn body_for(i: usize) -> Value {
    // Half greedy, half sampled with their own seeds: both must be unaffected by batching.
    let sampling = if i & 1 == 0 {
        json!({"temperature": 0, "max_tokens": 40})
    } else {
        json!({"temperature": 0.8, "seed": 100 + i, "max_tokens": 40})
    };
    chat(PROMPTS[i], sampling)
}

#[test]
fn eight_concurrent_streams_give_the_text_each_gives_alone() {
    // All eight come from this test's uid: make sure the per-uid limit is not what is tested.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inhouse.toml");
    std::fs::write(&config, "[limits]\nper-uid-concurrency = 16\n").unwrap();
    let d = Daemon::start(
        &[("smol", &smollm2())],
        &["--slots", "8", "--config", config.to_str().unwrap()],
    );
    rt().block_on(async {
        let c = d.client();
        let mut alone = Vec::new();
        for i in 0..PROMPTS.len() {
            alone.push(stream(&c, "/v1/chat/completions", body_for(i)).await.text);
        }
        let together = futures_util::future::join_all(
            (0..PROMPTS.len()).map(|i| stream(&c, "/v1/chat/completions", body_for(i))),
        )
        .await;
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert!(!a.is_empty(), "empty answer to {:?}", PROMPTS[i]);
            assert_eq!(a, &t.text, "prompt {i} differs when batched");
        }
        assert_ran_together(&together);
    });
}

#[test]
fn a_long_prompt_does_not_stop_running_streams() {
    long_prompt_keeps_streams_flowing("");
}

#[test]
fn a_long_prompt_does_not_stop_running_streams_in_throughput_mode() {
    // The same scheduling over one unified KV cache with flash attention.
    long_prompt_keeps_streams_flowing("deterministic-batching = false\n");
}

fn long_prompt_keeps_streams_flowing(config_text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inhouse.toml");
    std::fs::write(&config, config_text).unwrap();
    let d = Daemon::start(
        &[("smol", &smollm2())],
        &["--slots", "4", "--config", config.to_str().unwrap()],
    );
    rt().block_on(async {
        let c = d.client();
        // Streams that go on for a while: counting never reaches an end-of-text token early.
        let counting = |start: u32| {
            let prompt: String = (start..start + 8).map(|n| format!("{n}, ")).collect();
            json!({"model": "smol", "prompt": prompt, "temperature": 0, "max_tokens": 300})
        };
        let s1 = tokio::spawn({
            let c = c.clone();
            let body = counting(1);
            async move { stream(&c, "/v1/completions", body).await }
        });
        let s2 = tokio::spawn({
            let c = c.clone();
            let body = counting(50);
            async move { stream(&c, "/v1/completions", body).await }
        });
        // Let both streams get going.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let long: String =
            "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(110);
        let t0 = Instant::now();
        let (status, v) = post(
            &c,
            "/v1/completions",
            &json!({"model": "smol", "prompt": long, "temperature": 0, "max_tokens": 1})
                .to_string(),
        )
        .await;
        let t1 = Instant::now();
        assert_eq!(status, 200, "{v}");
        let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(prompt_tokens > 1000, "prompt only {prompt_tokens} tokens");
        let prefill = t1 - t0;
        for s in [s1, s2] {
            let s = s.await.unwrap();
            let during: Vec<Instant> = s
                .arrivals
                .iter()
                .copied()
                .filter(|t| *t >= t0 && *t <= t1)
                .collect();
            // The prompt is read in chunks of at most 128 tokens per step, so a stream gets a
            // token every step: many while the long prompt is read, never a gap as long as the
            // whole prefill.
            assert!(
                during.len() >= 4,
                "only {} tokens in {prefill:?} of prefill",
                during.len()
            );
            let mut edges = vec![t0];
            edges.extend(&during);
            edges.push(t1);
            let max_gap = edges.windows(2).map(|w| w[1] - w[0]).max().unwrap();
            assert!(
                max_gap * 3 < prefill,
                "a gap of {max_gap:?} during a prefill of {prefill:?}"
            );
        }
    });
}

#[test]
fn cache_reuse_gives_the_cold_text_and_counts_hits() {
    let first = [
        (
            "system",
            "You are a museum guide. Answer in plain English, briefly, and name your sources.",
        ),
        ("user", "Name a famous painter."),
    ];
    let warm_daemon = Daemon::start(&[("smol", &smollm2())], &["--slots", "2"]);
    let cold_daemon = Daemon::start(&[("smol", &smollm2())], &["--slots", "2"]);
    rt().block_on(async {
        let greedy = json!({"temperature": 0, "max_tokens": 30});
        let c = warm_daemon.client();
        let (_, v1) = post(
            &c,
            "/v1/chat/completions",
            &chat_turns("smol", &first, greedy.clone()).to_string(),
        )
        .await;
        let reply = answer(&v1);
        let second = [
            first[0],
            first[1],
            ("assistant", reply.as_str()),
            ("user", "Tell me more about their work."),
        ];
        let body = chat_turns("smol", &second, greedy.clone()).to_string();
        let before = metrics_text(&c).await;
        let (_, warm) = post(&c, "/v1/chat/completions", &body).await;
        let after = metrics_text(&c).await;
        let hits = "inhouse_cache_reuse_hits_total{model=\"smol\"}";
        let reused = "inhouse_cache_reused_tokens_total{model=\"smol\"}";
        assert_eq!(sample(&after, hits), sample(&before, hits) + 1.0);
        assert!(sample(&after, reused) - sample(&before, reused) >= 20.0);

        let (_, cold) = post(&cold_daemon.client(), "/v1/chat/completions", &body).await;
        let cold_metrics = metrics_text(&cold_daemon.client()).await;
        assert_eq!(sample(&cold_metrics, hits), 0.0);
        assert_eq!(answer(&warm), answer(&cold));
        assert_eq!(warm["usage"], cold["usage"]);
    });
}

#[test]
fn erasing_a_uid_drops_its_cached_prompts() {
    assert_eq!(
        effective_uid(),
        0,
        "this test must run as root (it connects as uid 65534)"
    );
    // A caller's cached prompt (and answer) stays in a slot for reuse; once an admin erases the
    // caller, the same request finds nothing cached.
    let d = Daemon::with_config(&[("smol", &smollm2())], "[roles]\nuser-uids = [65534]\n");
    let body = chat_body(
        "smol",
        "Name the three primary colours of light.",
        json!({"temperature": 0, "max_tokens": 8}),
    )
    .to_string();
    let ask = || {
        let (status, text) = request_as_uid(
            65534,
            &d.dir,
            &d.socket,
            "POST",
            "/v1/chat/completions",
            Some(&body),
        );
        assert_eq!(status, 200, "{text}");
    };
    let hits = "inhouse_cache_reuse_hits_total{model=\"smol\"}";
    rt().block_on(async {
        let c = d.client();
        ask();
        let before = sample(&metrics_when_idle(&c, "smol").await, hits);
        ask();
        let cached = sample(&metrics_when_idle(&c, "smol").await, hits);
        assert_eq!(cached, before + 1.0, "the repeated request reused no cache");
        let (status, v) = post(&c, "/admin/erase", &json!({"uid": 65534}).to_string()).await;
        assert_eq!(status, 200, "{v}");
        ask();
        let after = sample(&metrics_when_idle(&c, "smol").await, hits);
        assert_eq!(after, cached, "an erased caller's cached prompt was reused");
    });
}

#[test]
fn cancelling_a_stream_frees_its_slot_at_once() {
    let d = Daemon::start(&[("smol", &smollm2())], &["--slots", "1"]);
    rt().block_on(async {
        let c = d.client();
        let long = json!({"model": "smol", "prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0,
                          "max_tokens": 1000, "stream": true});
        let mut resp = c
            .send(
                Method::POST,
                "/v1/completions",
                Some(long.to_string().into()),
            )
            .await
            .unwrap();
        let mut got = 0;
        while got < 3 {
            resp.next_chunk().await.unwrap().unwrap();
            got += 1;
        }
        // The client goes away mid-answer.
        drop(resp);
        // The only slot is free again: a new request is answered without waiting for the 1000
        // tokens the cancelled one asked for (checked below by the tokens generated in all).
        let (status, v) = post(
            &c,
            "/v1/chat/completions",
            &chat("Say hi.", json!({"temperature": 0, "max_tokens": 5})).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let m = metrics_when_idle(&c, "smol").await;
        assert_eq!(
            sample(&m, "inhouse_cancelled_requests_total{model=\"smol\"}"),
            1.0
        );
        assert_eq!(sample(&m, "inhouse_busy_slots{model=\"smol\"}"), 0.0);
        // Fewer tokens were generated than the cancelled request asked for.
        assert!(sample(&m, "inhouse_generated_tokens_total{model=\"smol\"}") < 500.0);
    });
}

/// Sends `body` to `/v1/chat/completions` as another local user (uid/gid 65534), the way a
/// second person on the server would ask; returns the answer.
fn chat_as_other_user(d: &Daemon, body: &str) -> String {
    let (status, answer) = request_as_other_user(d, "POST", "/v1/chat/completions", Some(body));
    assert_eq!(status, 200, "request as uid 65534 failed: {answer}");
    let v: Value = serde_json::from_str(&answer).expect("JSON answer");
    v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

#[test]
fn another_caller_never_reuses_a_callers_cache() {
    // Needs root to act as a second local user; the peer uid comes from the kernel.
    assert_eq!(
        effective_uid(),
        0,
        "this test must run as root (it connects as uid 65534)"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inhouse.toml");
    // uid 65534 is given the user role, the only thing it needs.
    std::fs::write(&config, "[roles]\nuser-uids = [65534]\n").unwrap();
    let d = Daemon::start(
        &[("smol", &smollm2())],
        &["--slots", "2", "--config", config.to_str().unwrap()],
    );
    let prompt = "You are a careful assistant for a hospital ward. Never guess. \
                  In one sentence: what should a nurse check before giving a medicine?";
    let body = chat(prompt, json!({"temperature": 0, "max_tokens": 24})).to_string();
    let hits = "inhouse_cache_reuse_hits_total{model=\"smol\"}";
    let (mine, m1) = rt().block_on(async {
        let c = d.client();
        let (_, v) = post(&c, "/v1/chat/completions", &body).await;
        (answer(&v), metrics_text(&c).await)
    });
    assert_eq!(sample(&m1, hits), 0.0);
    // The same prompt from someone else: computed from scratch, same text.
    let theirs = chat_as_other_user(&d, &body);
    let m2 = rt().block_on(metrics_text(&d.client()));
    assert_eq!(sample(&m2, hits), 0.0, "another caller reused the cache");
    assert_eq!(theirs, mine);
    // The owner asking again does reuse its own prefix.
    rt().block_on(async {
        let c = d.client();
        let (_, v) = post(&c, "/v1/chat/completions", &body).await;
        assert_eq!(answer(&v), mine);
        assert_eq!(sample(&metrics_text(&c).await, hits), 1.0);
    });
}

/// The effective uid, read from `/proc` (no `unsafe` libc call needed).
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap()
}

#[test]
fn throughput_mode_batches_reuses_the_cache_and_says_so() {
    // `deterministic-batching = false`: one unified KV cache and flash attention. Outputs may
    // then differ in near-ties between alone and batched, so this checks what still holds: all
    // eight streams run together and finish, a request alone is reproducible, the cache is
    // reused, and /health tells the admin which mode runs.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inhouse.toml");
    std::fs::write(
        &config,
        "deterministic-batching = false\n[limits]\nper-uid-concurrency = 16\n",
    )
    .unwrap();
    let d = Daemon::start(
        &[("smol", &smollm2())],
        &["--slots", "8", "--config", config.to_str().unwrap()],
    );
    rt().block_on(async {
        let c = d.client();
        let health = c.json(Method::GET, "/health", None).await.expect("health");
        assert_eq!(health["batching"], "throughput");
        assert!(d.log().contains("throughput mode"), "{}", d.log());

        let together = futures_util::future::join_all(
            (0..PROMPTS.len()).map(|i| stream(&c, "/v1/chat/completions", body_for(i))),
        )
        .await;
        for (i, t) in together.iter().enumerate() {
            assert!(
                !t.text.trim().is_empty(),
                "empty answer to {:?}",
                PROMPTS[i]
            );
        }
        assert_ran_together(&together);

        let body = chat(
            "List the planets of the solar system.",
            json!({"temperature": 0, "max_tokens": 24}),
        )
        .to_string();
        let (_, first) = post(&c, "/v1/chat/completions", &body).await;
        let before = metrics_text(&c).await;
        let (_, again) = post(&c, "/v1/chat/completions", &body).await;
        let after = metrics_text(&c).await;
        assert_eq!(
            answer(&first),
            answer(&again),
            "a request alone is reproducible"
        );
        let hits = "inhouse_cache_reuse_hits_total{model=\"smol\"}";
        assert_eq!(sample(&after, hits), sample(&before, hits) + 1.0);
    });
}

#[test]
fn a_caller_with_many_queued_requests_does_not_starve_another() {
    assert_eq!(
        effective_uid(),
        0,
        "this test must run as root (it connects as uid 65534)"
    );
    // One slot, so that admission order is all there is: six requests from this uid are
    // queued before one from uid 65534 arrives; round-robin across callers admits the other
    // caller's request as soon as the running one ends, not after the five still waiting.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inhouse.toml");
    std::fs::write(
        &config,
        "[roles]\nuser-uids = [65534]\n[limits]\nper-uid-concurrency = 16\n",
    )
    .unwrap();
    let d = std::sync::Arc::new(Daemon::start(
        &[("smol", &smollm2())],
        &["--slots", "1", "--config", config.to_str().unwrap()],
    ));
    let other = chat(
        "Name three colours.",
        json!({"temperature": 0, "max_tokens": 8}),
    )
    .to_string();
    let (mine, theirs_end) = rt().block_on(async {
        let c = d.client();
        let mine: Vec<_> = (0..6u32)
            .map(|i| {
                let c = c.clone();
                let prompt: String = (i * 100..i * 100 + 8).map(|n| format!("{n}, ")).collect();
                let body = json!({"model": "smol", "prompt": prompt, "temperature": 0,
                                  "max_tokens": 40});
                tokio::spawn(async move { stream(&c, "/v1/completions", body).await })
            })
            .collect();
        // All six are admitted or queued before the other caller asks.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = metrics_text(&c).await;
            let queued = sample(&m, "inhouse_queue_depth{model=\"smol\"}");
            if queued >= 5.0 {
                break;
            }
            assert!(Instant::now() < deadline, "the requests never queued:\n{m}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let d2 = d.clone();
        let theirs = tokio::task::spawn_blocking(move || {
            let text = chat_as_other_user(&d2, &other);
            (text, Instant::now())
        });
        let mut ends = Vec::new();
        for t in mine {
            ends.push(*t.await.unwrap().arrivals.last().expect("tokens"));
        }
        let (text, end) = theirs.await.unwrap();
        assert!(!text.is_empty());
        (ends, end)
    });
    let after_theirs = mine.iter().filter(|e| **e > theirs_end).count();
    assert!(
        after_theirs >= 4,
        "the other caller waited behind {} of this caller's 6 requests",
        6 - after_theirs
    );
}
