//! The request lifecycle through the API in-process, over a scripted engine: SSE and NDJSON
//! framing, failures in the middle of a stream, clients that leave, the engine error table, and
//! what validation hands the engine. The real router, roles, store and socket; no model.

mod common;

use common::*;
use hyper::Method;
use inhouse::engine::fake::{End, Script};
use inhouse::engine::{EngineError, FinishReason, Prompt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn chat(extra: Value) -> Value {
    chat_body("smol", "Hi", extra)
}

/// The newest record of the caller, once it exists.
async fn last_record(c: &inhouse::client::Client) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = c
            .json(Method::GET, "/v1/history?limit=1", None)
            .await
            .unwrap();
        if v["data"][0].is_object() {
            return v["data"][0].clone();
        }
        assert!(Instant::now() < deadline, "no record: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn sse_chunks_are_role_content_finish_usage_then_done() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
        let (st, ctype, events) = post_stream(&c, "/v1/chat/completions", &body).await;
        assert_eq!(st, 200);
        assert_eq!(ctype, "text/event-stream");
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        // Role chunk, four content chunks, the finish chunk, the usage chunk.
        assert_eq!(chunks.len(), 7, "{chunks:?}");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks[1..5]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello, world.");
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        let id = &chunks[0]["id"];
        assert!(chunks.iter().all(|c| &c["id"] == id), "one id per stream");
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
        let record_id = chunks[5]["inhouse_record_id"].as_i64().unwrap();
        assert_eq!(chunks[6]["choices"], json!([]));
        assert_eq!(
            chunks[6]["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})
        );
        // The record holds the whole answer, sealed, and is the one the stream named.
        let rec = c
            .json(Method::GET, &format!("/v1/history/{record_id}"), None)
            .await
            .unwrap();
        assert_eq!(rec["response"], "Hello, world.");
        assert_eq!(rec["status"], "completed");
        assert_eq!(rec["completion_tokens"], 4);
        // A plain completion streams text chunks without a role chunk.
        let (_, _, events) = post_stream(
            &c,
            "/v1/completions",
            &json!({"model": "smol", "prompt": "Hi", "stream": true}),
        )
        .await;
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["object"], "text_completion");
        assert_eq!(first["choices"][0]["text"], "Hello");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    });
}

#[test]
fn a_failure_mid_stream_is_an_error_event_without_done_and_recorded_as_error() {
    let d = TestServer::start();
    d.engine.set_script(Script {
        end: End::Fail(EngineError::Inference("decode failed".into())),
        ..Script::default()
    });
    rt().block_on(async {
        let c = d.client();
        let (st, _, events) =
            post_stream(&c, "/v1/chat/completions", &chat(json!({"stream": true}))).await;
        assert_eq!(st, 200, "the failure came after the prompt was accepted");
        assert_ne!(events.last().map(String::as_str), Some("[DONE]"));
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "inference_failed", "{last}");
        let rec = last_record(&c).await;
        assert_eq!(rec["status"], "error");
        // Not streamed: a 500 with the same code.
        let (st, v) = post(&c, "/v1/chat/completions", &chat(json!({})).to_string()).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (500, Some("inference_failed"))
        );
    });
}

#[test]
fn ndjson_pieces_end_with_a_done_piece_and_a_failure_with_an_error_line() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let mut resp = c
            .send(
                Method::POST,
                "/api/chat",
                Some(
                    json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}]})
                        .to_string()
                        .into(),
                ),
            )
            .await
            .unwrap();
        assert_eq!(resp.content_type, "application/x-ndjson");
        let mut text = String::new();
        while let Some(chunk) = resp.next_chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5, "four pieces and the done piece: {text}");
        assert!(lines[..4].iter().all(|l| l["done"] == false));
        let said: String = lines[..4]
            .iter()
            .map(|l| l["message"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(said, "Hello, world.");
        let done = &lines[4];
        assert_eq!(done["done"], true);
        assert_eq!(done["done_reason"], "stop");
        assert_eq!(
            (
                done["prompt_eval_count"].as_u64(),
                done["eval_count"].as_u64()
            ),
            (Some(5), Some(4))
        );
        assert!(done["inhouse_record_id"].as_i64().is_some());

        d.engine.set_script(Script {
            end: End::Fail(EngineError::Inference("decode failed".into())),
            ..Script::default()
        });
        let (st, bytes) = c
            .raw(
                Method::POST,
                "/api/generate",
                Some(json!({"model": "smol", "prompt": "Hi"}).to_string().into()),
            )
            .await
            .unwrap();
        assert_eq!(st.as_u16(), 200);
        let text = String::from_utf8_lossy(&bytes);
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert!(
            last["error"]
                .as_str()
                .is_some_and(|m| m.contains("decode failed")),
            "{text}"
        );
        assert_eq!(last_record(&c).await["status"], "error");
    });
}

#[test]
fn a_client_that_leaves_mid_stream_cancels_the_generation_and_is_recorded_as_aborted() {
    let d = TestServer::start();
    d.engine.set_script(Script {
        end: End::Hang,
        ..Script::default()
    });
    rt().block_on(async {
        let c = d.client();
        let mut resp = c
            .send(
                Method::POST,
                "/v1/chat/completions",
                Some(chat(json!({"stream": true})).to_string().into()),
            )
            .await
            .unwrap();
        // The role chunk and the first content chunk, then the client goes away.
        resp.next_chunk().await.unwrap().unwrap();
        drop(resp);
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.engine.cancelled() == 0 {
            assert!(
                Instant::now() < deadline,
                "the generation was not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rec = last_record(&c).await;
        assert_eq!(rec["status"], "aborted", "{rec}");
    });
}

#[test]
fn every_engine_error_has_its_status_and_code() {
    let d = TestServer::start();
    let cases: Vec<(EngineError, u16, &str, &str)> = vec![
        (
            EngineError::UnknownModel("x".into()),
            404,
            "invalid_request_error",
            "model_not_found",
        ),
        (
            EngineError::NoChatTemplate("smol".into()),
            400,
            "invalid_request_error",
            "no_chat_template",
        ),
        (
            EngineError::Template {
                model: "smol".into(),
                code: "template_exception",
                message: "the template raised: no tools here".into(),
            },
            400,
            "invalid_request_error",
            "template_exception",
        ),
        (
            EngineError::ContextLengthExceeded {
                prompt_tokens: 9,
                n_ctx: 8,
            },
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (
            EngineError::EmptyPrompt,
            400,
            "invalid_request_error",
            "empty_prompt",
        ),
        (
            EngineError::CannotEmbed("smol".into()),
            400,
            "invalid_request_error",
            "model_cannot_embed",
        ),
        (EngineError::QueueFull(4), 503, "server_error", "queue_full"),
        (
            EngineError::ShuttingDown,
            503,
            "server_error",
            "shutting_down",
        ),
        (
            EngineError::Inference("boom".into()),
            500,
            "server_error",
            "inference_failed",
        ),
        (
            EngineError::DoesNotFit {
                model: "smol".into(),
                need: "9 GiB".into(),
                detail: "weights".into(),
                budget: "1 GiB".into(),
            },
            507,
            "server_error",
            "model_too_large",
        ),
        (
            EngineError::Busy("smol".into()),
            503,
            "server_error",
            "model_busy",
        ),
        (
            EngineError::Refused {
                model: "smol".into(),
                reason: "unsigned".into(),
            },
            403,
            "permission_error",
            "model_refused",
        ),
        (
            EngineError::Load {
                name: "smol".into(),
                path: "/secret/path.gguf".into(),
                reason: "bad".into(),
            },
            500,
            "server_error",
            "inference_failed",
        ),
    ];
    rt().block_on(async {
        let c = d.client();
        for (error, status, kind, code) in cases {
            d.engine.set_script(Script {
                refuse: Some(error.clone()),
                ..Script::default()
            });
            for stream in [false, true] {
                let body = chat(json!({"stream": stream})).to_string();
                let (st, v) = post(&c, "/v1/chat/completions", &body).await;
                assert_eq!(st, status, "{error:?} (stream {stream}): {v}");
                assert_eq!(v["error"]["type"], kind, "{error:?}: {v}");
                assert_eq!(v["error"]["code"], code, "{error:?}: {v}");
                let message = v["error"]["message"].as_str().unwrap();
                assert!(!message.is_empty());
                assert!(
                    !message.contains("/secret"),
                    "no file path reaches a caller: {message}"
                );
            }
        }
    });
}

#[test]
fn validation_hands_the_engine_checked_values() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                {"role": "user", "content": "Hi"}],
            "temperature": 0, "max_completion_tokens": 7, "stop": "x", "seed": 3});
        let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(answer(&v), "Hello, world.");
        let (st, _) = post(
            &c,
            "/api/generate",
            &json!({"model": "smol", "prompt": "Hi", "raw": true, "stream": false,
                    "options": {"num_predict": 3, "temperature": 0.5}})
            .to_string(),
        )
        .await;
        assert_eq!(st, 200);
    });
    let asked = d.engine.requests();
    assert_eq!(asked.len(), 2);
    let Prompt::Chat(messages) = &asked[0].prompt else {
        panic!("{asked:?}")
    };
    assert_eq!(
        (messages[0].role.as_str(), messages[0].content.as_str()),
        ("system", "Be brief.")
    );
    assert_eq!(asked[0].max_tokens, 7);
    assert_eq!(asked[0].stop, vec!["x"]);
    assert_eq!(asked[0].sampling.temperature, 0.0);
    assert_eq!(asked[0].owner_uid, nix::unistd::geteuid().as_raw());
    assert_eq!(asked[1].prompt, Prompt::Text("Hi".into()));
    assert_eq!(asked[1].max_tokens, 3);
    assert_eq!(asked[1].sampling.temperature, 0.5);
}

#[test]
fn length_and_embeddings_through_the_fake() {
    let d = TestServer::start();
    d.engine.set_script(Script {
        end: End::Finish(FinishReason::Length),
        ..Script::default()
    });
    rt().block_on(async {
        let c = d.client();
        let (_, v) = post(&c, "/v1/chat/completions", &chat(json!({})).to_string()).await;
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
        let (st, v) = post(
            &c,
            "/v1/embeddings",
            &json!({"model": "smol", "input": ["a b", "c"]}).to_string(),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        let norm: f64 = v["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        let rec = last_record(&c).await;
        assert_eq!(rec["status"], "completed");
        assert_eq!(rec["prompt_tokens"], 3);
    });
}
