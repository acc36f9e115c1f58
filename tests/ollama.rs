//! Ollama's API on the same socket, against the real daemon and model.

mod common;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

async fn ndjson(
    c: &inhouse::client::Client,
    path: &str,
    body: &Value,
) -> (u16, String, Vec<Value>) {
    let resp = c
        .send(Method::POST, path, Some(body.to_string().into()))
        .await
        .unwrap();
    let (status, ctype) = (resp.status.as_u16(), resp.content_type.clone());
    let bytes = resp.collect().await.unwrap();
    let lines = String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    (status, ctype, lines)
}

#[test]
fn ollama_routes_answer_like_ollama() {
    let d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let v = c.json(Method::GET, "/api/version", None).await.unwrap();
        assert!(v["version"].is_string());
        let tags = c.json(Method::GET, "/api/tags", None).await.unwrap();
        assert_eq!(tags["models"][0]["name"], "smol");
        assert_eq!(tags["models"][0]["details"]["family"], "llama");
        assert!(tags["models"][0]["modified_at"].as_str().unwrap().ends_with('Z'));
        let ps = c.json(Method::GET, "/api/ps", None).await.unwrap();
        assert_eq!(ps["models"][0]["name"], "smol");
        let show = c.json(Method::POST, "/api/show", Some(&json!({"model": "smol"}))).await.unwrap();
        assert_eq!(show["model_info"]["general.architecture"], "llama");

        // Chat, streamed (Ollama's default) and not: the same text at temperature 0.
        let body = json!({"model": "smol", "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                                         {"role": "user", "content": "What is the capital of France?"}],
                          "options": {"temperature": 0, "num_predict": 16}});
        let (st, ctype, lines) = ndjson(&c, "/api/chat", &body).await;
        assert_eq!(st, 200);
        assert_eq!(ctype, "application/x-ndjson");
        assert!(lines.len() >= 3, "{lines:?}");
        let last = lines.last().unwrap();
        assert_eq!(last["done"], true);
        assert!(last["eval_count"].as_u64().unwrap() > 0);
        let streamed: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
        let mut plain_body = body.clone();
        plain_body["stream"] = json!(false);
        let plain = c.json(Method::POST, "/api/chat", Some(&plain_body)).await.unwrap();
        assert_eq!(plain["done"], true);
        assert_eq!(plain["message"]["content"].as_str().unwrap(), streamed);
        assert!(looks_english(&streamed), "{streamed:?}");

        // Generate through the template, and raw.
        let g = c
            .json(Method::POST, "/api/generate", Some(&json!({"model": "smol", "prompt": "Say hi.",
                "stream": false, "options": {"temperature": 0, "num_predict": 8}})))
            .await
            .unwrap();
        assert!(g["response"].is_string());
        assert_eq!(g["done"], true);
        let (st, _, lines) = ndjson(&c, "/api/generate", &json!({"model": "smol", "prompt": "Once upon a time",
            "raw": true, "options": {"temperature": 0, "num_predict": 8}})).await;
        assert_eq!(st, 200);
        assert_eq!(lines.last().unwrap()["done_reason"], "length");

        let e = c
            .json(Method::POST, "/api/embed", Some(&json!({"model": "smol", "input": ["a", "b"]})))
            .await
            .unwrap();
        assert_eq!(e["embeddings"].as_array().unwrap().len(), 2);

        // Errors keep the same JSON shape and statuses as /v1.
        let (st, v) = post(&c, "/api/chat", r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#).await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("model_not_found")));
        let (st, v) = post(&c, "/api/chat", r#"{"model":"smol","messages":[{"role":"user","content":"x"}],"options":{"temperature":-1}}"#).await;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_value")));
        // The four answered generations are counted in the metrics like /v1 ones.
        let (st, m) = c.raw(Method::GET, "/metrics", None).await.unwrap();
        assert_eq!(st, 200);
        let m = String::from_utf8_lossy(&m);
        assert!(m.contains(r#"inhouse_requests_total{model="smol",status="200"} 4"#), "{m}");
        // Every Ollama request is recorded like the others.
        let h = c.json(Method::GET, "/v1/history?limit=10", None).await.unwrap();
        assert!(h["data"].as_array().unwrap().len() >= 5, "{h}");
    });
}
