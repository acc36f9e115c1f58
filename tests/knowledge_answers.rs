//! Answers with sources (issue 20, point 5).
//!
//! End to end: the real `inhoused` serving Qwen2.5-Coder-0.5B (which answers) and
//! all-MiniLM-L6-v2 converted by `inhouse-quantize import-hf` (the `[knowledge]` embedding
//! model); the official `openai` package uploads a small handbook, makes a vector store of it and
//! asks with the Responses API's `file_search` tool and with chat completions' `file_search`
//! extension (`tests/openai_file_search.py`): the answer's annotations point at the file that
//! holds the answer. `inhouse ask` then answers by id and by name and names that file among its
//! sources; a name two stores share is refused with both ids.
//!
//! In-process (the scripted engine): what is refused before anything is searched or generated,
//! and an unknown vector store's 404.

mod common;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

/// The value of the `key: value` line of a driver's output.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{out}"))
        .trim()
}

const QUESTION: &str = "How many days of paid annual leave does every employee get per year?";

#[test]
fn answers_cite_the_file_that_holds_the_answer_through_the_sdk_and_inhouse_ask() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = minilm_gguf(tmp.path());
    let d = Daemon::with_config(
        &[("minilm", &gguf), ("qwen", &qwen())],
        "[knowledge]\nembedding-model = \"minilm\"\n",
    );
    let out = run_python_client(
        "openai_file_search.py",
        &d.socket,
        "qwen",
        "file search: all checks ok",
    );
    eprintln!("{out}");
    let store = line(&out, "store");
    let name = line(&out, "store_name");
    let leave = line(&out, "leave_file");

    // By id, with the model named.
    let text = ok(&cli(
        &d,
        &[
            "ask",
            store,
            QUESTION,
            "--model",
            "qwen",
            "--max-results",
            "3",
        ],
    ));
    eprintln!("inhouse ask by id:\n{text}");
    let (answer, sources) = text
        .split_once("\nSources:\n")
        .unwrap_or_else(|| panic!("no Sources: block in:\n{text}"));
    assert!(!answer.trim().is_empty(), "{text}");
    assert!(
        sources.contains("leave-policy.md") && sources.contains(leave),
        "the sources do not name leave-policy.md ({leave}):\n{text}"
    );
    assert!(
        sources.contains("chunk ") && sources.contains("bytes "),
        "{text}"
    );
    assert!(sources.lines().any(|l| l.starts_with('[')), "{text}");

    // By name, the model chosen by the client: the first chat model served (minilm is not one).
    let text = ok(&cli(&d, &["ask", name, QUESTION]));
    assert!(
        text.contains("\nSources:\n") && text.contains("leave-policy.md"),
        "{text}"
    );

    // --json prints the response object itself.
    let v: Value = serde_json::from_str(&ok(&cli(&d, &["ask", store, QUESTION, "--json"])))
        .expect("--json prints JSON");
    assert_eq!(v["output"][0]["type"], "file_search_call", "{v}");
    assert_eq!(v["model"], "qwen", "{v}");

    // A name two stores share is refused, naming both.
    let twin = rt().block_on(async {
        let (st, v) = post(
            &d.client(),
            "/v1/vector_stores",
            &json!({"name": name}).to_string(),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    });
    let why = failed(&cli(&d, &["ask", name, QUESTION]));
    assert!(why.contains(store) && why.contains(&twin), "{why}");
    // An unknown id is the daemon's 404.
    let why = failed(&cli(&d, &["ask", "vs_0000000000000000", QUESTION]));
    assert!(why.contains("vector_store_not_found"), "{why}");
}

fn get_requests(d: &TestServer) -> usize {
    d.engine.requests().len()
}

#[test]
fn bad_file_search_requests_are_refused_before_anything_is_searched_or_generated() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let fs = |extra: Value| {
            let mut t = json!({"type": "file_search", "vector_store_ids": ["vs_1"]});
            for (k, v) in extra.as_object().unwrap() {
                t[k] = v.clone();
            }
            t
        };
        let responses = [
            (json!({"tools": [fs(json!({"max_num_results": 0}))]}), "tools"),
            (json!({"tools": [fs(json!({"max_num_results": 51}))]}), "tools"),
            (json!({"tools": [fs(json!({"vector_store_ids": []}))]}), "tools"),
            (
                json!({"tools": [fs(json!({"vector_store_ids": (0..9).map(|i| format!("vs_{i}")).collect::<Vec<_>>()}))]}),
                "tools",
            ),
            (json!({"tools": [fs(json!({"filters": "team"}))]}), "tools"),
            (
                json!({"tools": [fs(json!({"ranking_options": {"ranker": "best"}}))]}),
                "tools",
            ),
            (json!({"tools": [fs(json!({})), fs(json!({}))]}), "tools"),
            (
                json!({"tool_choice": {"type": "file_search"}}),
                "tool_choice",
            ),
            (
                json!({"tools": [fs(json!({}))], "include": ["nothing.real"]}),
                "include",
            ),
        ];
        for (extra, param) in responses {
            let mut body = json!({"model": "smol", "input": "Q"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let (st, e) = post(&c, "/v1/responses", &body.to_string()).await;
            assert_eq!(st, 400, "{body}: {e}");
            assert_eq!(e["error"]["param"], param, "{body}: {e}");
        }
        for bad in [
            json!({"vector_store_ids": ["vs_1"], "max_num_results": 0}),
            json!({"vector_store_ids": "vs_1"}),
            json!(["vs_1"]),
            json!({"vector_store_ids": ["vs_1"], "type": "web_search"}),
        ] {
            let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Q"}],
                "file_search": bad});
            let (st, e) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(st, 400, "{body}: {e}");
            assert_eq!(e["error"]["param"], "file_search", "{body}: {e}");
        }
    });
    assert_eq!(get_requests(&d), 0, "nothing refused reached the engine");
}

#[test]
fn an_unknown_vector_store_is_a_404_for_responses_and_chat_and_nothing_is_generated() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let tool = json!({"type": "file_search", "vector_store_ids": ["vs_0000000000000000"]});
        for stream in [false, true] {
            let body = json!({"model": "smol", "input": "Q", "tools": [tool], "stream": stream});
            let (st, e) = post(&c, "/v1/responses", &body.to_string()).await;
            assert_eq!(st, 404, "{body}: {e}");
            assert_eq!(e["error"]["code"], "vector_store_not_found", "{e}");
            let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Q"}],
                "file_search": {"vector_store_ids": ["vs_0000000000000000"]}, "stream": stream});
            let (st, e) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(st, 404, "{body}: {e}");
            assert_eq!(e["error"]["code"], "vector_store_not_found", "{e}");
        }
        // `tool_choice: none` offers the tool without searching: nothing to find, an answer.
        let body = json!({"model": "smol", "input": "Q", "tools": [tool], "tool_choice": "none"});
        let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        assert_ne!(v["output"][0]["type"], "file_search_call", "{v}");
        assert_eq!(v["tools"][0]["type"], "file_search", "{v}");
        assert_eq!(v["tool_choice"], "none", "{v}");
        let (st, _) = c.raw(Method::GET, "/health", None).await.unwrap();
        assert_eq!(st.as_u16(), 200);
    });
    assert_eq!(get_requests(&d), 1, "only the tool_choice none request ran");
}

/// The system message the engine was last asked to answer with.
fn last_system(d: &TestServer) -> String {
    match &d.engine.requests().last().expect("a request").prompt {
        inhouse::engine::Prompt::Chat(m) => m
            .iter()
            .find(|m| m.role == "system")
            .map(|m| m.content.clone())
            .unwrap_or_default(),
        inhouse::engine::Prompt::Text(_) => panic!("a chat prompt"),
    }
}

#[test]
fn a_search_that_finds_nothing_says_so_to_the_model_and_answers_in_openai_shape() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let (st, vs) = post(
            &c,
            "/v1/vector_stores",
            &json!({"name": "empty"}).to_string(),
        )
        .await;
        assert_eq!(st, 200, "{vs}");
        let id = vs["id"].as_str().unwrap();
        let tool = json!({"type": "file_search", "vector_store_ids": [id]});
        let body = json!({"model": "smol", "input": "Where is the canteen?", "tools": [tool],
            "instructions": "Be brief.", "include": ["file_search_call.results"]});
        let (st, r) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{r}");
        let fs = &r["output"][0];
        assert_eq!(fs["type"], "file_search_call", "{r}");
        assert!(fs["id"].as_str().unwrap().starts_with("fs_"), "{fs}");
        assert_eq!(fs["status"], "completed");
        assert_eq!(fs["queries"], json!(["Where is the canteen?"]));
        assert_eq!(fs["results"], json!([]));
        let msg = &r["output"][1];
        assert_eq!(msg["type"], "message", "{r}");
        assert_eq!(
            msg["content"][0]["annotations"],
            json!([]),
            "nothing to cite"
        );
        assert_eq!(r["tools"][0]["type"], "file_search");
        assert_eq!(r["tools"][0]["vector_store_ids"], json!([id]));
        assert_eq!(r["tools"][0]["max_num_results"], 5);
        let system = last_system(&d);
        assert!(system.starts_with("Be brief.\n\n"), "{system}");
        assert!(system.contains("found nothing"), "{system}");
        // The stored response reads back the same.
        let rid = r["id"].as_str().unwrap();
        let (st, again) = c
            .raw(Method::GET, &format!("/v1/responses/{rid}"), None)
            .await
            .unwrap();
        assert_eq!(st.as_u16(), 200);
        let again: Value = serde_json::from_slice(&again).unwrap();
        assert_eq!(again["output"], r["output"]);

        // Streamed: the search's events come first, each numbered.
        let mut body = body.clone();
        body["stream"] = json!(true);
        let (st, _, events) = post_stream(&c, "/v1/responses", &body).await;
        assert_eq!(st, 200);
        let kinds: Vec<String> = events
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds[..7],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.file_search_call.in_progress",
                "response.file_search_call.searching",
                "response.file_search_call.completed",
                "response.output_item.done",
            ],
            "{kinds:?}"
        );
        assert_eq!(kinds.last().unwrap(), "response.completed");

        // Chat completions with the extension: the message carries (empty) annotations.
        let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Canteen?"}],
            "file_search": {"vector_store_ids": [id]}});
        let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["annotations"], json!([]), "{v}");
        assert!(last_system(&d).contains("found nothing"));
        let mut body = body.clone();
        body["stream"] = json!(true);
        let (st, _, events) = post_stream(&c, "/v1/chat/completions", &body).await;
        assert_eq!(st, 200);
        let last = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .rfind(|v| !v["choices"][0]["finish_reason"].is_null())
            .expect("a closing chunk");
        assert_eq!(
            last["choices"][0]["delta"]["annotations"],
            json!([]),
            "{last}"
        );
    });
}
