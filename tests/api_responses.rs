//! The Responses API of issue 15 in-process, over a scripted engine: the answer's shape, the
//! typed events, stored responses (continued, read, listed, deleted), what another uid sees,
//! erasure, the audit log, and refused fields. The real router, store, socket and files; no
//! model (the official SDK on a real model is tests/tools.rs).

mod common;

use common::*;
use hyper::Method;
use inhouse::engine::fake::Script;
use inhouse::engine::{OutputInfo, Prompt, ToolFormat};
use serde_json::{json, Value};

fn script(pieces: &[&str]) -> Script {
    Script {
        pieces: pieces.iter().map(|p| p.to_string()).collect(),
        output: OutputInfo {
            tool_format: Some(ToolFormat::Hermes),
            ..OutputInfo::default()
        },
        ..Script::default()
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}})
}

async fn get(c: &inhouse::client::Client, path: &str) -> (u16, Value) {
    let (st, body) = c.raw(Method::GET, path, None).await.expect("request");
    (
        st.as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

async fn delete(c: &inhouse::client::Client, path: &str) -> (u16, Value) {
    let (st, body) = c.raw(Method::DELETE, path, None).await.expect("request");
    (
        st.as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// The text of a response's message items.
fn output_text(v: &Value) -> String {
    v["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .filter_map(|p| p["text"].as_str())
        .collect()
}

/// The chat messages the engine was last asked to answer, as (role, content).
fn last_prompt(d: &TestServer) -> Vec<(String, String)> {
    let reqs = d.engine.requests();
    match &reqs.last().expect("a request").prompt {
        Prompt::Chat(m) => m
            .iter()
            .map(|m| (m.role.clone(), m.content.clone()))
            .collect(),
        Prompt::Text(_) => panic!("a chat prompt"),
    }
}

#[test]
fn a_response_answers_in_openai_shape_and_is_stored_sealed_as_its_owners_record() {
    let d = TestServer::start();
    d.engine.set_script(script(&["Hello", " there"]));
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "input": "Say hello", "instructions": "Be brief.",
            "metadata": {"ticket": "T-1"}, "temperature": 0, "max_output_tokens": 16});
        let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("resp_") && id.len() == 37, "{id}");
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["instructions"], "Be brief.");
        assert_eq!(v["metadata"], json!({"ticket": "T-1"}));
        assert_eq!(v["max_output_tokens"], 16);
        let item = &v["output"][0];
        assert_eq!(item["type"], "message");
        assert_eq!(item["role"], "assistant");
        assert_eq!(item["content"][0]["type"], "output_text");
        assert_eq!(output_text(&v), "Hello there");
        let u = &v["usage"];
        assert_eq!(
            u["total_tokens"].as_u64().unwrap(),
            u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap()
        );
        assert!(u["output_tokens"].as_u64().unwrap() > 0, "{u}");
        // The instructions were a system message in front of the input.
        assert_eq!(
            last_prompt(&d),
            [
                ("system".into(), "Be brief.".into()),
                ("user".into(), "Say hello".into())
            ]
        );

        // GET returns the same response; input_items the input, newest first by default.
        let (st, got) = get(&c, &format!("/v1/responses/{id}")).await;
        assert_eq!(st, 200, "{got}");
        assert_eq!(got["output"], v["output"]);
        assert_eq!(got["usage"], v["usage"]);
        assert_eq!(got["metadata"], v["metadata"]);
        let (st, items) = get(&c, &format!("/v1/responses/{id}/input_items")).await;
        assert_eq!(st, 200, "{items}");
        assert_eq!(items["object"], "list");
        assert_eq!(items["data"].as_array().unwrap().len(), 1, "{items}");
        assert_eq!(items["data"][0]["content"][0]["type"], "input_text");
        assert_eq!(items["data"][0]["content"][0]["text"], "Say hello");
        assert_eq!(items["has_more"], false);
        let (st, e) = get(&c, &format!("/v1/responses/{id}/input_items?order=up")).await;
        assert_eq!(
            (st, e["error"]["param"].as_str()),
            (400, Some("order")),
            "{e}"
        );

        // It is a record of the history: sealed there, the id in its clear metadata.
        let record = v["inhouse_record_id"].as_i64().unwrap();
        let (st, rec) = get(&c, &format!("/v1/history/{record}")).await;
        assert_eq!(st, 200, "{rec}");
        assert!(rec.to_string().contains("Say hello"), "{rec}");
        let (_, list) = get(&c, "/v1/history").await;
        let listed = &list["data"][0];
        assert_eq!(listed["id"], record);
        let params: Value = serde_json::from_str(listed["params_json"].as_str().unwrap()).unwrap();
        assert_eq!(params["response_id"], id.as_str(), "{listed}");
        assert_eq!(params["endpoint"], "responses", "{listed}");
        assert!(
            !listed.to_string().contains("T-1"),
            "metadata values are sealed"
        );

        // `history rm` of the record removes the response.
        assert_eq!(delete(&c, &format!("/v1/history/{record}")).await.0, 200);
        let (st, e) = get(&c, &format!("/v1/responses/{id}")).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (404, Some("response_not_found"))
        );
    });
}

#[test]
fn streamed_events_are_typed_numbered_in_order_and_match_the_stored_response() {
    let d = TestServer::start();
    d.engine.set_script(script(&["One", ", two", ", three."]));
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "input": "Count", "stream": true});
        let (st, ct, events) = post_stream(&c, "/v1/responses", &body).await;
        assert_eq!(st, 200);
        assert_eq!(ct, "text/event-stream");
        let events: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i, "{e}");
        }
        let joined: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(joined, "One, two, three.");
        assert_eq!(events[7]["text"], joined.as_str());
        let done = &events[10]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(output_text(done), joined);
        let id = done["id"].as_str().unwrap();
        assert_eq!(events[0]["response"]["id"], id);
        assert_eq!(events[0]["response"]["status"], "in_progress");
        let (st, got) = get(&c, &format!("/v1/responses/{id}")).await;
        assert_eq!(st, 200);
        assert_eq!(
            got["output"], done["output"],
            "GET returns what was streamed"
        );
        assert_eq!(events[2]["item"]["id"], got["output"][0]["id"]);
    });
}

#[test]
fn a_function_call_round_trip_continues_the_stored_conversation() {
    let d = TestServer::start();
    d.engine.set_script(script(&[
        "<tool_call>\n{\"name\": \"get_weather\", ",
        "\"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
    ]));
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "input": "Weather in Oslo?",
            "instructions": "Use tools.", "tools": [weather_tool()], "tool_choice": "required"});
        let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        let call = &v["output"][0];
        assert_eq!(call["type"], "function_call", "{v}");
        assert_eq!(call["name"], "get_weather");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Oslo"}));
        let call_id = call["call_id"].as_str().unwrap();
        assert_eq!(v["tools"][0]["name"], "get_weather");
        let first = v["id"].as_str().unwrap();

        // Streamed, the arguments arrive as deltas on a function_call item.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (_, _, events) = post_stream(&c, "/v1/responses", &streamed).await;
        let events: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let args: String = events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "Oslo"})
        );
        assert!(events
            .iter()
            .any(|e| e["type"] == "response.function_call_arguments.done"));

        // The tool's output continues the first response.
        d.engine.set_script(script(&["It is 21 degrees in Oslo."]));
        let body = json!({"model": "smol", "previous_response_id": first,
            "tools": [weather_tool()],
            "input": [{"type": "function_call_output", "call_id": call_id,
                       "output": "{\"temperature\": 21}"}]});
        let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(output_text(&v), "It is 21 degrees in Oslo.");
        assert_eq!(v["previous_response_id"], first);
        // The earlier turns were rendered again: the user's question, the assistant's call and
        // the tool's answer; the first request's instructions were not carried over.
        let reqs = d.engine.requests();
        let Prompt::Chat(m) = &reqs.last().unwrap().prompt else {
            panic!("chat")
        };
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool"], "{m:?}");
        assert_eq!(m[1].tool_calls[0].id, call_id);
        assert_eq!(m[1].tool_calls[0].arguments, json!({"city": "Oslo"}));
        assert_eq!(m[2].tool_call_id.as_deref(), Some(call_id));
        let second = v["id"].as_str().unwrap();
        let (_, items) = get(&c, &format!("/v1/responses/{second}/input_items?order=asc")).await;
        assert_eq!(items["data"][0]["type"], "function_call_output", "{items}");
        assert_eq!(items["data"][0]["call_id"], call_id);
    });
}

#[test]
fn a_three_turn_conversation_carries_every_earlier_turn() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let mut previous: Option<String> = None;
        for (turn, (ask, answer)) in [
            ("My number is 42.", "Noted."),
            ("And my colour is teal.", "Noted too."),
            ("What was my number?", "42"),
        ]
        .iter()
        .enumerate()
        {
            d.engine.set_script(script(&[answer]));
            let mut body = json!({"model": "smol", "input": ask});
            if let Some(p) = &previous {
                body["previous_response_id"] = json!(p);
            }
            let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
            assert_eq!(st, 200, "{v}");
            let prompt = last_prompt(&d);
            assert_eq!(prompt.len(), 2 * turn + 1, "{prompt:?}");
            assert_eq!(prompt[0], ("user".into(), "My number is 42.".into()));
            previous = Some(v["id"].as_str().unwrap().to_string());
        }
        let prompt = last_prompt(&d);
        assert_eq!(prompt[1], ("assistant".into(), "Noted.".into()));
        assert_eq!(prompt[3], ("assistant".into(), "Noted too.".into()));
        // Deleting a response leaves the later ones whole: each holds its conversation.
        assert_eq!(
            delete(&c, &format!("/v1/responses/{}", previous.as_ref().unwrap())).await,
            (
                200,
                json!({"id": previous.as_ref().unwrap(), "object": "response", "deleted": true})
            )
        );
        let body = json!({"model": "smol", "input": "again", "previous_response_id": previous});
        let (st, e) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 404, "{e}");
        assert_eq!(e["error"]["code"], "response_not_found");
        assert_eq!(e["error"]["param"], "previous_response_id");
    });
}

#[test]
fn store_false_keeps_only_the_request_record() {
    let d = TestServer::start();
    d.engine.set_script(script(&["ok"]));
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "input": "hi", "store": false});
        let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["store"], false);
        let id = v["id"].as_str().unwrap();
        assert_eq!(get(&c, &format!("/v1/responses/{id}")).await.0, 404);
        let body = json!({"model": "smol", "input": "more", "previous_response_id": id});
        assert_eq!(post(&c, "/v1/responses", &body.to_string()).await.0, 404);
        let record = v["inhouse_record_id"].as_i64().unwrap();
        assert_eq!(get(&c, &format!("/v1/history/{record}")).await.0, 200);
    });
}

#[test]
fn another_uid_gets_the_same_404_as_for_an_unknown_id_and_erasure_removes_the_ids() {
    let d = TestServer::with_config("[roles]\nuser-uids = [4243]\n");
    d.engine.set_script(script(&["secret answer"]));
    let canary = "CANARY-resp-5d1e0b7a";
    let (id, ciphertext) = rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "input": format!("Remember {canary}")});
        let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let record = v["inhouse_record_id"].as_i64().unwrap();
        let db = rusqlite::Connection::open(d.dir.join("inhouse.db")).unwrap();
        let ct: Vec<u8> = db
            .query_row(
                "SELECT prompt_ct FROM requests WHERE id = ?1",
                [record],
                |r| r.get(0),
            )
            .unwrap();
        (id, ct)
    });
    let unknown = "resp_0123456789abcdef0123456789abcdef";
    let as_other = |method: &str, path: String, body: Option<String>| {
        request_as_uid(4243, &d.dir, &d.socket, method, &path, body.as_deref())
    };
    let shape = |(st, body): (u16, String)| -> (u16, Value) {
        let mut v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        // The message names the id asked for; everything else must be identical.
        v["error"]["message"] = Value::Null;
        (st, v)
    };
    for target in [id.as_str(), unknown] {
        let theirs = shape(as_other("GET", format!("/v1/responses/{target}"), None));
        assert_eq!(theirs.0, 404, "{theirs:?}");
        assert_eq!(theirs.1["error"]["code"], "response_not_found");
        let listed = shape(as_other(
            "GET",
            format!("/v1/responses/{target}/input_items"),
            None,
        ));
        assert_eq!(listed, theirs);
        let deleted = shape(as_other("DELETE", format!("/v1/responses/{target}"), None));
        assert_eq!(deleted, theirs);
        let body = json!({"model": "smol", "input": "x", "previous_response_id": target});
        let continued = as_other("POST", "/v1/responses".into(), Some(body.to_string()));
        assert_eq!(continued.0, 404, "{continued:?}");
        assert!(continued.1.contains("response_not_found"), "{continued:?}");
    }
    // The first user's response survived the other uid's delete.
    let c = d.client();
    assert_eq!(
        rt().block_on(get(&c, &format!("/v1/responses/{id}"))).0,
        200
    );

    // Erasure: the ids are gone and the sealed bytes leave the database file and its WAL.
    let out = inhouse_at(&d.socket, &["admin", "erase", "--uid", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt().block_on(async {
        assert_eq!(get(&c, &format!("/v1/responses/{id}")).await.0, 404);
        assert_eq!(
            get(&c, &format!("/v1/responses/{id}/input_items")).await.0,
            404
        );
    });
    let mut all = Vec::new();
    for f in files_under(&d.dir) {
        all.extend(std::fs::read(f).unwrap());
    }
    let contains = |needle: &[u8]| bytes_contain(&all, needle);
    assert!(!contains(&ciphertext), "sealed bytes remain after erasure");
    assert!(
        !contains(canary.as_bytes()),
        "the canary is readable in the state directory"
    );
    assert!(contains(b"smol"), "the control: clear metadata is found");
}

#[test]
fn the_audit_log_holds_create_continue_and_delete_as_metadata_only() {
    let d = TestServer::start();
    d.engine.set_script(script(&["fine"]));
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": "smol", "input": "CANARY-audit-one"});
        let (_, v) = post(&c, "/v1/responses", &body.to_string()).await;
        let first = v["id"].as_str().unwrap().to_string();
        let body = json!({"model": "smol", "input": "CANARY-audit-two",
            "previous_response_id": first});
        let (_, v) = post(&c, "/v1/responses", &body.to_string()).await;
        let second = v["id"].as_str().unwrap().to_string();
        assert_eq!(delete(&c, &format!("/v1/responses/{second}")).await.0, 200);
        let db = rusqlite::Connection::open(d.dir.join("inhouse.db")).unwrap();
        let mut stmt = db
            .prepare(
                "SELECT kind, detail_json FROM audit WHERE kind LIKE 'response.%' ORDER BY seq",
            )
            .unwrap();
        let rows: Vec<(String, Value)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(|r| {
                let (k, d) = r.unwrap();
                (k, serde_json::from_str(&d).unwrap())
            })
            .collect();
        let kinds: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            ["response.create", "response.continue", "response.delete"]
        );
        assert_eq!(rows[0].1["id"], first.as_str());
        assert_eq!(rows[0].1["input_items"], 1);
        assert_eq!(rows[1].1["previous_id"], first.as_str());
        assert_eq!(rows[2].1["id"], second.as_str());
        assert!(rows.iter().all(|(_, d)| !d.to_string().contains("CANARY")));
        let verify = inhouse_at(&d.socket, &["admin", "audit", "verify"]);
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
    });
}

#[test]
fn fields_that_would_change_the_answer_and_are_not_supported_are_400s_naming_them() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        for (body, param) in [
            (
                json!({"model": "smol", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools",
            ),
            (
                // file_search is offered (tests/knowledge_answers.rs); a bad one is refused.
                json!({"model": "smol", "input": "x", "tools": [{"type": "file_search",
                    "vector_store_ids": ["vs_1"], "max_num_results": 0}]}),
                "tools",
            ),
            (
                json!({"model": "smol", "input": "x", "background": true}),
                "background",
            ),
            (
                json!({"model": "smol", "input": [{"role": "user", "content": [
                    {"type": "input_image", "image_url": "data:"}]}]}),
                "input",
            ),
            (
                json!({"model": "smol", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "smol", "input": "x", "previous_response_id": "r".repeat(200)}),
                "previous_response_id",
            ),
        ] {
            let (st, e) = post(&c, "/v1/responses", &body.to_string()).await;
            assert_eq!(st, 400, "{body}: {e}");
            assert_eq!(e["error"]["param"], param, "{body}: {e}");
        }
        assert!(
            d.engine.requests().is_empty(),
            "nothing refused reached the engine"
        );
    });
}
