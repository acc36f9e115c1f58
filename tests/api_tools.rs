//! Tools, reasoning, log-probabilities, `n` and the request bounds of issue 14 through the API
//! in-process, over a scripted engine that answers as a model with a Hermes (Qwen) tool format
//! would: the OpenAI and Ollama answer shapes, streaming deltas, what the record keeps sealed and
//! what stays in the clear, and hostile requests. The real router, store and socket; no model
//! (the real model's answers are tested in tests/tools.rs).

mod common;

use common::*;
use hyper::Method;
use inhouse::engine::fake::Script;
use inhouse::engine::{OutputInfo, ReasoningTags, ToolFormat};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}})
}

fn hermes(pieces: &[&str]) -> Script {
    Script {
        pieces: pieces.iter().map(|p| p.to_string()).collect(),
        output: OutputInfo {
            tool_format: Some(ToolFormat::Hermes),
            reasoning: Some(ReasoningTags {
                open: "<think>".into(),
                close: "</think>".into(),
            }),
            starts_in_reasoning: false,
        },
        ..Script::default()
    }
}

/// A call of get_weather, split across pieces the way tokens split it.
const CALL: &[&str] = &[
    "<tool_call>",
    "\n{\"name\": \"get_",
    "weather\", \"arguments\": {\"city\": ",
    "\"Paris\"}}\n",
    "</tool_call>",
];

async fn record(c: &inhouse::client::Client, id: i64) -> Value {
    c.json(Method::GET, &format!("/v1/history/{id}"), None)
        .await
        .unwrap()
}

#[test]
fn a_tool_call_answers_in_openai_shape_plain_and_streamed_and_is_sealed() {
    let d = TestServer::start();
    d.engine.set_script(hermes(CALL));
    let body = chat_body(
        "smol",
        "Weather in Paris?",
        json!({"tools": [weather_tool()], "tool_choice": "auto"}),
    );
    rt().block_on(async {
        let c = d.client();
        let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        assert_eq!(choice["message"]["content"], Value::Null, "{v}");
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));

        // Streamed: the id and name first, then argument fragments that concatenate to the same.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (_, _, events) = post_stream(&c, "/v1/chat/completions", &streamed).await;
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let deltas: Vec<&Value> = chunks
            .iter()
            .flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .collect();
        assert!(!deltas.is_empty(), "{chunks:?}");
        assert_eq!(deltas[0]["index"], 0);
        assert!(deltas[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(deltas[0]["function"]["name"], "get_weather");
        let joined: String = deltas
            .iter()
            .filter_map(|d| d["function"]["arguments"].as_str())
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&joined).unwrap(), args);
        let finish = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("tool_calls"));
        assert!(
            chunks.iter().all(|c| c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .is_empty()),
            "no markup leaks into content: {chunks:?}"
        );

        // The record: tools and the call sealed with the prompt and answer; counts in the clear.
        let rec = record(&c, v["inhouse_record_id"].as_i64().unwrap()).await;
        assert_eq!(rec["prompt"]["tools"][0]["name"], "get_weather", "{rec}");
        assert!(rec["response"].as_str().unwrap().contains("<tool_call>"));
        let params: Value = serde_json::from_str(rec["params_json"].as_str().unwrap()).unwrap();
        assert_eq!(params["tools"], 1, "{params}");
        assert_eq!(params["tool_calls"], 1, "{params}");
        assert_eq!(params["schema"], false, "{params}");
    });
    // Nothing of the tool traffic is in the database file in the clear.
    let bytes: Vec<u8> = ["inhouse.db", "inhouse.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(d.dir.join(f)).ok())
        .flatten()
        .collect();
    for needle in ["get_weather", "Paris", "The weather in a city"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle:?} is in the database in the clear"
        );
    }
}

#[test]
fn ollama_gets_whole_tool_calls_and_thinking() {
    let d = TestServer::start();
    let mut pieces = vec!["<think>", "The user wants", " weather.", "</think>", "\n\n"];
    pieces.extend_from_slice(CALL);
    d.engine.set_script(hermes(&pieces));
    let body = json!({"model": "smol", "stream": false, "think": true,
        "messages": [{"role": "user", "content": "Weather?"}], "tools": [weather_tool()]});
    rt().block_on(async {
        let c = d.client();
        let (st, v) = post(&c, "/api/chat", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["message"]["thinking"], "The user wants weather.", "{v}");
        assert_eq!(v["message"]["content"], "", "{v}");
        assert_eq!(
            v["message"]["tool_calls"],
            json!([{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])
        );
        assert_eq!(v["done_reason"], "stop");
        // `think` reached the template's switch.
        assert_eq!(d.engine.requests()[0].thinking, Some(true));

        // Streamed: one piece carries the whole call.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (st, lines) = post_ndjson(&c, "/api/chat", &streamed).await;
        assert_eq!(st, 200);
        let with_calls: Vec<&Value> = lines
            .iter()
            .filter(|l| l["message"]["tool_calls"].is_array())
            .collect();
        assert_eq!(with_calls.len(), 1, "{lines:?}");
        assert_eq!(
            with_calls[0]["message"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert_eq!(lines.last().unwrap()["done"], true);

        // OpenAI's shape for the same answer: reasoning_content apart from the call.
        let body = chat_body("smol", "Weather?", json!({"tools": [weather_tool()]}));
        let (_, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        let m = &v["choices"][0]["message"];
        assert_eq!(m["reasoning_content"], "The user wants weather.", "{v}");
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");

        // Ollama's history: tool_calls without ids, a tool message answering by name.
        let history = json!({"model": "smol", "stream": false, "tools": [weather_tool()],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_name": "get_weather", "content": "21 C"}]});
        let (st, v) = post(&c, "/api/chat", &history.to_string()).await;
        assert_eq!(st, 200, "{v}");
        let req = d.engine.requests().pop().unwrap();
        let inhouse::engine::Prompt::Chat(msgs) = req.prompt else {
            panic!("a chat")
        };
        assert_eq!(msgs[1].tool_calls[0].name, "get_weather");
        assert_eq!(msgs[1].tool_calls[0].arguments, json!({"city": "Paris"}));
        assert_eq!(
            msgs[2].tool_call_id.as_deref(),
            Some(msgs[1].tool_calls[0].id.as_str())
        );
    });
}

/// POSTs and reads an NDJSON answer to the end.
async fn post_ndjson(c: &inhouse::client::Client, path: &str, body: &Value) -> (u16, Vec<Value>) {
    let (st, bytes) = c
        .raw(
            Method::POST,
            path,
            Some(bytes::Bytes::from(body.to_string())),
        )
        .await
        .unwrap();
    let lines = String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (st.as_u16(), lines)
}

#[test]
fn logprobs_and_n_have_openai_and_ollama_shapes() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let body = chat_body(
            "smol",
            "Hi",
            json!({"logprobs": true, "top_logprobs": 3, "n": 2}),
        );
        let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 2);
        for (i, ch) in choices.iter().enumerate() {
            assert_eq!(ch["index"], i);
            assert_eq!(ch["message"]["content"], "Hello, world.");
            let content = ch["logprobs"]["content"].as_array().unwrap();
            assert_eq!(content.len(), 4, "{ch}");
            assert_eq!(content[0]["token"], "Hello");
            assert_eq!(content[0]["bytes"], json!(b"Hello".to_vec()));
            assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
        }
        // n choices count their tokens together.
        assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
        let req = d.engine.requests().pop().unwrap();
        assert_eq!((req.n, req.logprobs.map(|l| l.top)), (2, Some(3)));

        // Without logprobs the field is null.
        let (_, v) = post(
            &c,
            "/v1/chat/completions",
            &chat_body("smol", "Hi", json!({})).to_string(),
        )
        .await;
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);

        // Streamed with n = 2: both indices, each ending once.
        let body = chat_body(
            "smol",
            "Hi",
            json!({"n": 2, "stream": true, "logprobs": true}),
        );
        let (_, _, events) = post_stream(&c, "/v1/chat/completions", &body).await;
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        for i in 0..2 {
            let text: String = chunks
                .iter()
                .flat_map(|c| c["choices"].as_array().unwrap().clone())
                .filter(|ch| ch["index"] == i)
                .filter_map(|ch| ch["delta"]["content"].as_str().map(String::from))
                .collect();
            assert_eq!(text, "Hello, world.", "choice {i}");
            let ends = chunks
                .iter()
                .flat_map(|c| c["choices"].as_array().unwrap().clone())
                .filter(|ch| ch["index"] == i && ch["finish_reason"] == "stop")
                .count();
            assert_eq!(ends, 1, "choice {i}");
        }

        // Legacy completions: parallel lists.
        let body = json!({"model": "smol", "prompt": "Hi", "logprobs": 2});
        let (_, v) = post(&c, "/v1/completions", &body.to_string()).await;
        let lp = &v["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"], json!(["Hello", ",", " world", "."]), "{v}");
        assert_eq!(lp["text_offset"], json!([0, 5, 6, 12]));
        assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);

        // Ollama.
        let body = json!({"model": "smol", "stream": false, "logprobs": true, "top_logprobs": 2,
                          "messages": [{"role": "user", "content": "Hi"}]});
        let (_, v) = post(&c, "/api/chat", &body.to_string()).await;
        let lps = v["logprobs"].as_array().unwrap();
        assert_eq!(lps.len(), 4, "{v}");
        assert!(lps.iter().all(|l| l["logprob"].as_f64().unwrap() <= 0.0));
        assert_eq!(lps[0]["top_logprobs"].as_array().unwrap().len(), 2);
    });
}

#[test]
fn structured_output_requests_reach_the_engine_and_are_recorded_as_schema_use() {
    let d = TestServer::start();
    d.engine.set_script(Script {
        pieces: vec!["{\"a\": 1}".into()],
        ..Script::default()
    });
    rt().block_on(async {
        let c = d.client();
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let body = chat_body(
            "smol",
            "Hi",
            json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "thing", "schema": schema, "strict": true}}}),
        );
        let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        let req = d.engine.requests().pop().unwrap();
        assert_eq!(
            req.format,
            inhouse_formats::request::ResponseFormat::JsonSchema {
                name: "thing".into(),
                schema: schema.clone()
            }
        );
        let rec = record(&c, v["inhouse_record_id"].as_i64().unwrap()).await;
        assert_eq!(rec["prompt"]["response_format"]["schema"], schema, "{rec}");
        let params: Value = serde_json::from_str(rec["params_json"].as_str().unwrap()).unwrap();
        assert_eq!(params["schema"], true);

        // Ollama's format: "json" and a schema.
        for (format, want) in [
            (
                json!("json"),
                inhouse_formats::request::ResponseFormat::JsonObject,
            ),
            (
                schema.clone(),
                inhouse_formats::request::ResponseFormat::JsonSchema {
                    name: "format".into(),
                    schema: schema.clone(),
                },
            ),
        ] {
            let body = json!({"model": "smol", "stream": false, "format": format,
                              "messages": [{"role": "user", "content": "Hi"}]});
            let (st, v) = post(&c, "/api/chat", &body.to_string()).await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(d.engine.requests().pop().unwrap().format, want);
        }
    });
}

#[test]
fn hostile_tool_requests_are_refused_with_stable_codes_and_the_server_keeps_serving() {
    let d = TestServer::start();
    let many_tools: Vec<Value> = (0..10_000)
        .map(|i| json!({"type": "function", "function": {"name": format!("t{i}")}}))
        .collect();
    let cases: Vec<(&str, Value, u16, &str, Option<&str>)> = vec![
        (
            "10,000 tools",
            json!({"tools": many_tools}),
            400,
            "limit_exceeded",
            Some("tools"),
        ),
        (
            "a tool name with control characters",
            json!({"tools": [{"type": "function", "function": {"name": "get\u{1b}[31m"}}]}),
            400,
            "invalid_value",
            Some("tools"),
        ),
        (
            "tool_choice naming a tool not offered",
            json!({"tools": [weather_tool()],
                   "tool_choice": {"type": "function", "function": {"name": "rm_rf"}}}),
            400,
            "invalid_value",
            Some("tool_choice"),
        ),
        (
            "logit_bias with junk",
            json!({"logit_bias": {"abc": 5}}),
            400,
            "invalid_value",
            Some("logit_bias"),
        ),
        (
            "logit_bias out of range",
            json!({"logit_bias": {"42": 1000}}),
            400,
            "invalid_value",
            Some("logit_bias"),
        ),
        (
            "top_logprobs above 20",
            json!({"logprobs": true, "top_logprobs": 21}),
            400,
            "limit_exceeded",
            Some("top_logprobs"),
        ),
        (
            "n above the bound",
            json!({"n": 9}),
            400,
            "limit_exceeded",
            Some("n"),
        ),
    ];
    rt().block_on(async {
        let c = d.client();
        for (what, extra, status, code, param) in cases {
            let body = chat_body("smol", "Hi", extra);
            let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(st, status, "{what}: {v}");
            assert_eq!(v["error"]["code"], code, "{what}: {v}");
            if let Some(p) = param {
                assert_eq!(v["error"]["param"], p, "{what}: {v}");
            }
        }
        // A schema nested 10,000 deep, as text (a value that deep would overflow serde's stack
        // here, which is what the server's depth check spares it).
        let deep = format!(
            r#"{{"model":"smol","messages":[{{"role":"user","content":"Hi"}}],"response_format":{{"type":"json_schema","json_schema":{{"name":"deep","schema":{}{{"type":"string"}}{}}}}}}}"#,
            r#"{"type":"array","items":"#.repeat(10_000),
            "}".repeat(10_000)
        );
        let (st, v) = post(&c, "/v1/chat/completions", &deep).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "json_too_deep", "{v}");
        // Malformed arguments in the history.
        let body = json!({"model": "smol", "tools": [weather_tool()], "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
             "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]});
        let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_value");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("messages[1].tool_calls[0].function.arguments"),
            "{v}"
        );
    });
    assert!(d.serving());
    assert!(
        d.engine.requests().is_empty(),
        "nothing hostile reached the engine"
    );
}

#[test]
fn a_body_over_the_limit_gets_the_413_even_when_the_client_sends_it_all_first() {
    let d = TestServer::start();
    let body = format!(
        r#"{{"model":"smol","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(10 << 20)
    );
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: inhouse\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let started = Instant::now();
    // The whole body first, as a naive client does; a server that answered and closed early
    // would make this write fail with a broken pipe.
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes())
        .expect("the whole body is read");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("body_too_large") {
        let n = s.read(&mut buf).expect("read the answer");
        assert!(
            n > 0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(d.serving());
}

#[test]
fn every_choice_counts_against_the_callers_concurrency() {
    let d = TestServer::with_config("[limits]\nper-uid-concurrency = 4\n");
    rt().block_on(async {
        let c = d.client();
        let body = chat_body("smol", "Hi", json!({"n": 5}));
        let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(st, 429, "{v}");
        assert_eq!(v["error"]["code"], "rate_limited", "{v}");
        // Nothing was kept: four choices (the call's own unit and three more) fit, twice.
        for _ in 0..2 {
            let body = chat_body("smol", "Hi", json!({"n": 4}));
            let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["choices"].as_array().unwrap().len(), 4, "{v}");
        }
    });
    assert_eq!(
        d.engine.requests().len(),
        2,
        "the refused request reached the engine"
    );
}
