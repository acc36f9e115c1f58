//! `GET /metrics` on the real daemon: it parses as Prometheus text and its counters match the
//! requests made.

mod common;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

#[test]
fn metrics_parse_and_count_the_requests_made() {
    let d = Daemon::start(&[("smol", &smollm2())], &["--slots", "2"]);
    rt().block_on(async {
        let c = d.client();
        let (status, ctype_body) = c.raw(Method::GET, "/metrics", None).await.unwrap();
        assert_eq!(status, 200);
        let empty = parse_metrics(std::str::from_utf8(&ctype_body).unwrap());
        assert_eq!(
            empty.get("inhouse_generated_tokens_total{model=\"smol\"}"),
            0.0
        );

        let mut prompt = 0;
        let mut completion = 0;
        let mut add_usage = |v: &Value| {
            prompt += v["usage"]["prompt_tokens"].as_u64().unwrap();
            completion += v["usage"]["completion_tokens"].as_u64().unwrap();
        };
        for (i, q) in ["Name a fruit.", "Name a river."].iter().enumerate() {
            let body = json!({"model": "smol", "messages": [{"role": "user", "content": q}],
                              "temperature": 0, "max_tokens": 8 + i});
            let (status, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(status, 200, "{v}");
            add_usage(&v);
        }
        let body = json!({"model": "smol", "prompt": "Once upon a time", "temperature": 0,
                          "max_tokens": 6, "stream": true,
                          "stream_options": {"include_usage": true}});
        let (status, _, events) = post_stream(&c, "/v1/completions", &body).await;
        assert_eq!(status, 200);
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        add_usage(&usage);
        // A prompt longer than the context: refused with 400 before it reaches a slot.
        let huge = "word ".repeat(3000);
        let (status, v) = post(
            &c,
            "/v1/completions",
            &json!({"model": "smol", "prompt": huge, "max_tokens": 4}).to_string(),
        )
        .await;
        assert_eq!(status, 400, "{v}");
        // An unknown model is not a series of its own.
        let (status, _) = post(
            &c,
            "/v1/completions",
            &json!({"model": "nope", "prompt": "x"}).to_string(),
        )
        .await;
        assert_eq!(status, 404);

        let text = metrics_when_idle(&c, "smol").await;
        let m = parse_metrics(&text);
        assert!(!text.contains("nope"));
        assert_eq!(
            m.get("inhouse_requests_total{model=\"smol\",status=\"200\"}"),
            3.0
        );
        assert_eq!(
            m.get("inhouse_requests_total{model=\"smol\",status=\"400\"}"),
            1.0
        );
        assert_eq!(
            m.get("inhouse_prompt_tokens_total{model=\"smol\"}"),
            prompt as f64
        );
        assert_eq!(
            m.get("inhouse_generated_tokens_total{model=\"smol\"}"),
            completion as f64
        );
        // One first token per answer; the rest are inter-token gaps.
        let ttft = "inhouse_time_to_first_token_seconds";
        assert_eq!(m.types[ttft], "histogram");
        assert_eq!(m.get(&format!("{ttft}_count{{model=\"smol\"}}")), 3.0);
        assert_eq!(
            m.get(&format!("{ttft}_bucket{{model=\"smol\",le=\"+Inf\"}}")),
            3.0
        );
        assert_eq!(
            m.get("inhouse_inter_token_seconds_count{model=\"smol\"}"),
            (completion - 3) as f64
        );
        assert_eq!(m.get("inhouse_queue_depth{model=\"smol\"}"), 0.0);
        assert_eq!(m.get("inhouse_busy_slots{model=\"smol\"}"), 0.0);
        assert_eq!(m.get("inhouse_slots{model=\"smol\"}"), 2.0);
        let used = m.get("inhouse_kv_cache_used_tokens{model=\"smol\"}");
        assert!(used > 0.0 && used <= m.get("inhouse_kv_cache_capacity_tokens{model=\"smol\"}"));
        // Buckets are cumulative.
        let buckets: Vec<f64> = m
            .samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ttft}_bucket")))
            .map(|(_, v)| *v)
            .collect();
        assert!(buckets.iter().all(|b| *b <= 3.0));
    });
}

#[test]
fn health_and_version_report_the_cpu_variant() {
    let d = Daemon::smol();
    let health =
        rt().block_on(async { d.client().json(Method::GET, "/health", None).await.unwrap() });
    let variant = health["cpu"]["variant"]
        .as_str()
        .expect("cpu variant")
        .to_string();
    assert!(!variant.is_empty());
    assert_eq!(health["batching"], "deterministic");
    assert!(health["backend"].as_str().unwrap().contains(&variant));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("ggml CPU variant: {variant}")),
        "{text}"
    );
}
