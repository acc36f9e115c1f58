//! Tool calling, structured output, logprobs, `n` and the model's own chat template, end to end:
//! the real daemon and llama.cpp on Qwen2.5-Coder-0.5B-Instruct (a model that knows tools), the
//! official `openai` and `ollama` Python packages, crafted GGUF files with hostile templates, and
//! llama.cpp's own built-in ChatML renderer as a second opinion on the Jinja renderer.

mod common;

use common::*;
use inhouse_formats::request::ChatMessage;
use inhouse_formats::template::{ChatTemplate, RenderInput, TemplateLimits};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Eight slots: the 30-answer check asks for `n = 6` at once, the batch check for eight streams.
const CONFIG: &str = "slots = 8\n[limits]\nper-uid-concurrency = 16\n";

/// The daemon still answers `/health`.
fn alive(d: &Daemon) {
    let out = cli(d, &["health"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qwen_daemon() -> Daemon {
    Daemon::with_config(&[("qwen", &qwen())], CONFIG)
}

#[test]
fn the_official_openai_sdk_calls_tools_parses_schemas_and_gets_logprobs_and_n() {
    let d = qwen_daemon();
    run_python_client(
        "openai_tools.py",
        &d.socket,
        "qwen",
        "openai tools: all checks ok",
    );
    alive(&d);
}

#[test]
fn the_official_ollama_package_calls_tools_and_follows_a_format_schema() {
    let d = qwen_daemon();
    run_python_client(
        "ollama_tools.py",
        &d.socket,
        "qwen",
        "ollama tools: all checks ok",
    );
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object",
            "properties": {"city": {"type": "string"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}})
}

fn person_schema() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 30},
                       "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": false}}})
}

/// What an answer says, without what differs by design between runs (ids, timestamps).
fn said(v: &Value) -> Value {
    let m = &v["choices"][0]["message"];
    let calls: Vec<Value> = m["tool_calls"]
        .as_array()
        .map(|c| c.iter().map(|c| c["function"].clone()).collect())
        .unwrap_or_default();
    json!({"content": m["content"], "calls": calls,
           "finish": v["choices"][0]["finish_reason"]})
}

fn with(mut base: Value, add: Value) -> Value {
    for (k, v) in add.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn greedy() -> Value {
    json!({"temperature": 0, "max_tokens": 40})
}

fn seeded(seed: u64) -> Value {
    json!({"temperature": 0.9, "seed": seed, "max_tokens": 40})
}

/// Sends each body alone, then all at once, asserts each answer is the same both ways, and
/// returns the answers.
fn same_alone_and_batched(d: &Daemon, bodies: &[Value]) -> Vec<Value> {
    rt().block_on(async {
        let c = d.client();
        let mut alone = Vec::new();
        for b in bodies {
            let (st, v) = post(&c, "/v1/chat/completions", &b.to_string()).await;
            assert_eq!(st, 200, "{v}");
            alone.push(said(&v));
        }
        let texts: Vec<String> = bodies.iter().map(Value::to_string).collect();
        let together = futures_util::future::join_all(
            texts.iter().map(|t| post(&c, "/v1/chat/completions", t)),
        )
        .await;
        for (i, ((st, v), a)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(*st, 200, "{v}");
            assert_eq!(&said(v), a, "request {i} differs when batched");
        }
        alone
    })
}

fn assert_person(answer: &Value) {
    let person: Value = serde_json::from_str(answer["content"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"));
    assert!(
        person["name"].is_string() && person["age"].is_u64(),
        "{person}"
    );
}

/// The earlier guarantee, on the model it was established with (SmolLM2): greedy and seeded
/// answers are the same alone and in a batch of eight, now with four schema-constrained
/// requests (greedy and seeded, `json_schema` and `json_object`) among them.
#[test]
fn constrained_requests_mixed_into_a_batch_keep_every_answer_deterministic() {
    let d = Daemon::with_config(&[("smol", &smollm2())], CONFIG);
    let ask = |prompt: &str, extra: Value| chat_body("smol", prompt, extra);
    let json_object = json!({"response_format": {"type": "json_object"}});
    let bodies = vec![
        ask("Name three colours.", greedy()),
        ask("Write a haiku about rain.", seeded(11)),
        ask(
            "Invent a person.",
            with(greedy(), json!({"response_format": person_schema()})),
        ),
        ask(
            "Invent a person.",
            with(seeded(12), json!({"response_format": person_schema()})),
        ),
        ask(
            "Describe a cat as JSON.",
            with(greedy(), json_object.clone()),
        ),
        ask("Describe a dog as JSON.", with(seeded(13), json_object)),
        ask("Why is the sky blue?", seeded(14)),
        ask("What is 12 times 12?", greedy()),
    ];
    let answers = same_alone_and_batched(&d, &bodies);
    assert_person(&answers[2]);
    assert_person(&answers[3]);
    for a in &answers[4..6] {
        if a["finish"] == "stop" {
            let v: Value = serde_json::from_str(a["content"].as_str().unwrap()).unwrap();
            assert!(v.is_object(), "{a}");
        }
    }
}

/// Tool and schema requests batched with plain ones on Qwen: every constrained answer is still
/// valid inside the batch. (Equality with the answers alone is not asserted on this model:
/// Qwen2.5's Q4_K_M answers differ between alone and batched even with no constraint at all, in
/// greedy and seeded plain requests: llama.cpp's CPU kernels for its quantization round
/// differently by batch size. The guarantee stands on SmolLM2, above; see docs/BENCHMARKS.md.)
#[test]
fn tool_requests_mixed_into_a_batch_on_qwen_stay_valid() {
    let d = qwen_daemon();
    let ask = |prompt: &str, extra: Value| chat_body("qwen", prompt, extra);
    let bodies = [
        ask("Name three colours.", greedy()),
        ask(
            "Invent a person.",
            with(greedy(), json!({"response_format": person_schema()})),
        ),
        ask(
            "What is the weather in Oslo?",
            with(
                greedy(),
                json!({"tools": [weather_tool()], "tool_choice": "required"}),
            ),
        ),
        ask(
            "What is the weather in Rome?",
            with(greedy(), json!({"tools": [weather_tool()]})),
        ),
        ask("What is 12 times 12?", greedy()),
        ask("Write a haiku about rain.", greedy()),
    ];
    let answers: Vec<Value> = rt().block_on(async {
        let c = d.client();
        let texts: Vec<String> = bodies.iter().map(Value::to_string).collect();
        let together = futures_util::future::join_all(
            texts.iter().map(|t| post(&c, "/v1/chat/completions", t)),
        )
        .await;
        together
            .into_iter()
            .map(|(st, v)| {
                assert_eq!(st, 200, "{v}");
                said(&v)
            })
            .collect()
    });
    assert_person(&answers[1]);
    let call = &answers[2]["calls"][0];
    assert_eq!(call["name"], "get_weather", "{}", answers[2]);
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    assert!(
        matches!(args["unit"].as_str(), Some("celsius" | "fahrenheit")),
        "{args}"
    );
    assert_eq!(answers[2]["finish"], "tool_calls");
}

/// A schema feature or size the grammar engine cannot take is a 400 naming the problem, and the
/// daemon keeps serving; a pattern that makes backtracking engines explode compiles and is
/// obeyed (llguidance's regexes are derivative-based, not backtracking).
#[test]
fn hostile_schemas_on_the_real_engine_get_stable_codes() {
    let d = qwen_daemon();
    rt().block_on(async {
        let c = d.client();
        let schema_request = |schema: Value, max_tokens: u32| {
            chat_body(
                "qwen",
                "Answer in JSON.",
                json!({"temperature": 0, "max_tokens": max_tokens,
                       "response_format": {"type": "json_schema",
                           "json_schema": {"name": "s", "schema": schema}}}),
            )
        };
        // Catastrophic backtracking for a backtracking regex engine: (a+)+b against "aaaa…",
        // and a counted repetition over a huge range: both compile (derivatives, not
        // backtracking or expansion) and are obeyed.
        let patterns = [
            ("^(a+)+b$", "ab"),
            ("^(a|b|c|d){1,100000}(e|f){1,100000}$", "abcdef"),
        ];
        for (pattern, alphabet) in patterns {
            let evil = json!({"type": "object", "properties": {
                "code": {"type": "string", "pattern": pattern}}, "required": ["code"],
                "additionalProperties": false});
            let (st, v) = post(
                &c,
                "/v1/chat/completions",
                &schema_request(evil, 40).to_string(),
            )
            .await;
            assert_eq!(st, 200, "{pattern}: {v}");
            let content = answer(&v);
            assert!(content.starts_with("{\"code\": \""), "{pattern}: {content}");
            let code = content["{\"code\": \"".len()..].trim_end_matches("\"}");
            assert!(
                code.chars().all(|c| alphabet.contains(c)),
                "{pattern}: {content}"
            );
            if v["choices"][0]["finish_reason"] == "stop" {
                let got: Value = serde_json::from_str(&content).unwrap();
                let re_ok = match pattern {
                    "^(a+)+b$" => code.ends_with('b') && code.len() >= 2,
                    _ => code.ends_with(['e', 'f']),
                };
                assert!(re_ok, "{pattern}: {got}");
            }
        }
        // Over max-schema-bytes: refused before any compilation.
        let huge_enum: Vec<String> = (0..20_000).map(|i| format!("value-{i}")).collect();
        let (st, v) = post(
            &c,
            "/v1/chat/completions",
            &schema_request(json!({"enum": huge_enum}), 8).to_string(),
        )
        .await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
        // What the grammar engine cannot enforce: a 400 naming it, never an unconstrained answer.
        let refused = [
            (
                "an unknown string format",
                json!({"type": "string", "format": "x-unheard-of"}),
            ),
            (
                "a back-reference",
                json!({"type": "string", "pattern": "^(a)\\1$"}),
            ),
            (
                "a look-behind",
                json!({"type": "string", "pattern": "(?<=a)b"}),
            ),
            (
                "a remote $ref",
                json!({"$ref": "https://example.com/schema.json"}),
            ),
        ];
        for (what, schema) in refused {
            let body = schema_request(schema, 8).to_string();
            let (st, v) = post(&c, "/v1/chat/completions", &body).await;
            assert_eq!(st, 400, "{what}: {v}");
            assert_eq!(v["error"]["code"], "unsupported_schema", "{what}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{v}"
            );
            let body = chat_body("qwen", "Hi", json!({"temperature": 0, "max_tokens": 4}));
            let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(st, 200, "after {what}: {v}");
        }
    });
}

/// SmolLM2 with its chat template replaced (same length, so the file stays valid) by `template`.
fn smollm2_with_template(dir: &Path, name: &str, template: &str) -> PathBuf {
    let mut bytes = std::fs::read(smollm2()).unwrap();
    let key = b"tokenizer.chat_template";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("SmolLM2 has a chat template");
    let ty = at + key.len();
    assert_eq!(u32::from_le_bytes(bytes[ty..ty + 4].try_into().unwrap()), 8); // a string
    let len = u64::from_le_bytes(bytes[ty + 4..ty + 12].try_into().unwrap()) as usize;
    let start = ty + 12;
    // Padded with a Jinja comment to the original length.
    let mut text = template.to_string();
    assert!(
        text.len() + 4 <= len,
        "template too long: {} > {len}",
        text.len()
    );
    text.push_str("{#");
    text.push_str(&" ".repeat(len - text.len() - 2));
    text.push_str("#}");
    assert_eq!(text.len(), len);
    bytes[start..start + len].copy_from_slice(text.as_bytes());
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// 10^15 iterations (minijinja refuses a single range over 100,000 elements, so they nest).
const LOOPS_FOREVER: &str = "{% for i in range(100000) %}{% for j in range(100000) %}\
     {% for k in range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
/// 10 GB of output.
const RENDERS_GIGABYTES: &str = "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}";
const RAISES: &str = "{{ raise_exception('Only user and assistant roles are supported!') }}";

#[test]
fn hostile_templates_are_refused_at_import_and_answer_a_clear_error_when_served() {
    let files = tempfile::tempdir().unwrap();
    let cases = [
        ("loop", LOOPS_FOREVER, "template_fuel_exhausted"),
        ("flood", RENDERS_GIGABYTES, "template_output_too_large"),
        ("raise", RAISES, "template_exception"),
        ("syntax", "{% for %}", "template_syntax"),
    ];
    let paths: Vec<PathBuf> = cases
        .iter()
        .map(|(name, t, _)| smollm2_with_template(files.path(), name, t))
        .collect();

    // Import: refused with the template's code, nothing stored, the daemon unharmed.
    let d = Daemon::start(&[], &[]);
    for ((name, _, code), path) in cases.iter().zip(&paths) {
        let started = std::time::Instant::now();
        let err = failed(&cli(
            &d,
            &["models", "import", path.to_str().unwrap(), "--name", name],
        ));
        assert!(err.contains(code), "{name}: {err}");
        // Bounded by fuel, not by a timeout: far below a minute even on a loaded machine.
        assert!(
            started.elapsed().as_secs() < 60,
            "{name} took {:?}",
            started.elapsed()
        );
    }
    let listed = ok(&cli(&d, &["models", "list"]));
    for (name, _, _) in &cases {
        assert!(!listed.contains(name), "{name} was stored: {listed}");
    }
    alive(&d);
    drop(d);

    // Configured directly (no import check): the model loads, each chat is a 4xx naming the
    // template's fault, and the daemon keeps serving the healthy model beside it.
    let mut models: Vec<(&str, &Path)> = cases
        .iter()
        .zip(&paths)
        .filter(|((name, _, _), _)| *name != "syntax")
        .map(|((name, _, _), p)| (*name, p.as_path()))
        .collect();
    let smol = smollm2();
    models.push(("smol", &smol));
    let d = Daemon::start(&models, &[]);
    rt().block_on(async {
        let c = d.client();
        for (name, _, code) in cases.iter().filter(|c| c.0 != "syntax") {
            let body = chat_body(name, "Hi", json!({"max_tokens": 4}));
            let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(st, 400, "{name}: {v}");
            assert_eq!(v["error"]["code"], *code, "{name}: {v}");
            let body = chat_body("smol", "Hi", json!({"max_tokens": 4, "temperature": 0}));
            let (st, v) = post(&c, "/v1/chat/completions", &body.to_string()).await;
            assert_eq!(st, 200, "after {name}: {v}");
        }
        // A raw completion does not use the template: it still works on such a model.
        let body = json!({"model": "loop", "prompt": "Once upon a time", "max_tokens": 4});
        let (st, v) = post(&c, "/v1/completions", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
    });
    alive(&d);
}

/// Golden cross-check: where llama.cpp's built-in ChatML renders the same conversation (an
/// explicit system turn, no tools), the GGUF's Jinja template rendered here gives the very same
/// bytes, for SmolLM2 and for Qwen2.5.
#[test]
fn jinja_rendering_equals_llama_cpps_built_in_chatml_where_both_apply() {
    use llama_cpp_2::llama_backend::LlamaBackend;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};

    let backend = LlamaBackend::init().unwrap();
    let conversation = [
        ("system", "You answer in one short sentence."),
        ("user", "What is the capital of Norway?"),
        ("assistant", "Oslo is the capital of Norway."),
        ("user", "And its population?"),
    ];
    for file in [smollm2(), qwen()] {
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(&backend, &file, &params).unwrap();
        let source = model.chat_template(None).unwrap().to_string().unwrap();
        let vocab = model.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let jinja = ChatTemplate::new(
            &source,
            &piece(vocab.bos()),
            &piece(vocab.eos()),
            TemplateLimits::default(),
        )
        .unwrap();
        let messages: Vec<ChatMessage> = conversation
            .iter()
            .map(|(r, c)| ChatMessage::text(*r, *c))
            .collect();
        let ours = jinja
            .render(&RenderInput {
                messages: &messages,
                tools: &[],
                add_generation_prompt: true,
                enable_thinking: None,
            })
            .unwrap();
        let theirs = model
            .apply_chat_template(
                &LlamaChatTemplate::new("chatml").unwrap(),
                &conversation
                    .iter()
                    .map(|(r, c)| LlamaChatMessage::new(r.to_string(), c.to_string()).unwrap())
                    .collect::<Vec<_>>(),
                true,
            )
            .unwrap();
        assert_eq!(ours, theirs, "{}", file.display());
        assert!(ours.starts_with("<|im_start|>system\nYou answer"), "{ours}");
    }
}

/// A test-only template that opens a thinking block in the generation prompt unless
/// `enable_thinking` is false, and drops earlier turns' thinking (as Qwen3's and DeepSeek-R1's
/// templates do; the closing tag in the source is how the daemon finds the tags).
const THINKS: &str = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' \
     + m.content.split('</think>')[-1] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}\
     {% if enable_thinking is not defined or enable_thinking %}{{ '<think>\\n' }}{% endif %}\
     {% endif %}";

#[test]
fn a_template_that_opens_a_thinking_block_splits_reasoning_from_content() {
    let files = tempfile::tempdir().unwrap();
    let path = smollm2_with_template(files.path(), "thinker", THINKS);
    let d = Daemon::start(&[("thinker", &path)], &[]);
    let ask = |extra: Value| {
        chat_body(
            "thinker",
            "Why is the sky blue?",
            with(json!({"temperature": 0, "max_tokens": 24}), extra),
        )
    };
    rt().block_on(async {
        let c = d.client();
        let (st, v) = post(&c, "/v1/chat/completions", &ask(json!({})).to_string()).await;
        assert_eq!(st, 200, "{v}");
        let m = &v["choices"][0]["message"];
        let reasoning = m["reasoning_content"]
            .as_str()
            .unwrap_or_else(|| panic!("no reasoning_content: {v}"))
            .to_string();
        assert!(!reasoning.trim().is_empty(), "{v}");
        assert!(!reasoning.contains("think>"), "{v}");
        let content = m["content"].as_str().unwrap_or("").to_string();
        assert!(!content.contains(reasoning.trim()), "{v}");

        // Streamed: the same split, in delta.reasoning_content and delta.content.
        let sse = collect_sse(
            &c,
            "/v1/chat/completions",
            &with(ask(json!({})), json!({"stream": true})),
        )
        .await;
        assert_eq!(sse.status, 200);
        let (mut r, mut t) = (String::new(), String::new());
        for (e, _) in sse.events.iter().filter(|(e, _)| e != "[DONE]") {
            let e: Value = serde_json::from_str(e).unwrap();
            let delta = &e["choices"][0]["delta"];
            r.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
            t.push_str(delta["content"].as_str().unwrap_or(""));
        }
        assert_eq!(
            (r.as_str(), t.as_str()),
            (reasoning.as_str(), content.as_str())
        );

        // Switched off through reasoning_effort: no block, the answer is all content.
        let (st, v) = post(
            &c,
            "/v1/chat/completions",
            &ask(json!({"reasoning_effort": "none"})).to_string(),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let m = &v["choices"][0]["message"];
        assert!(m.get("reasoning_content").is_none_or(Value::is_null), "{v}");
        assert!(!answer(&v).trim().is_empty(), "{v}");

        // Ollama: `think` switches it, the block comes back as `thinking`.
        for think in [true, false] {
            let body = json!({"model": "thinker", "stream": false, "think": think,
                "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                "options": {"temperature": 0, "num_predict": 24}});
            let v = c
                .json(hyper::Method::POST, "/api/chat", Some(&body))
                .await
                .unwrap();
            let thinking = v["message"]["thinking"].as_str().unwrap_or("");
            if think {
                assert_eq!(thinking, reasoning, "{v}");
            } else {
                assert!(thinking.is_empty(), "{v}");
                assert!(!v["message"]["content"].as_str().unwrap().is_empty(), "{v}");
            }
        }
    });
}

/// The Responses API on the real engine, for the issue-15 checks that need a model: the
/// official SDK (plain, streamed, three turns, a tool round trip, a JSON schema), then, on the
/// responses it stored, another uid's 404s, a canary's absence from the state directory, and
/// erasure taking the ids and the sealed bytes away.
#[test]
fn the_official_openai_sdk_keeps_continues_and_erases_stored_responses() {
    let d = Daemon::with_config(
        &[("qwen", &qwen())],
        "slots = 4\n[roles]\nuser-uids = [65534]\n[limits]\nper-uid-concurrency = 16\n",
    );
    let out = run_python_client(
        "openai_responses.py",
        &d.socket,
        "qwen",
        "openai responses: all checks ok",
    );
    let ids: Vec<String> = out
        .lines()
        .find_map(|l| l.strip_prefix("ids: "))
        .expect("the script prints the ids")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(ids.len() >= 6, "{out}");

    // A canary in a stored conversation, continued once.
    let canary = "CANARY-9b2e41d7-responses";
    let c = d.client();
    let (first, last) = rt().block_on(async {
        let body = json!({"model": "qwen", "temperature": 0, "max_output_tokens": 8,
            "input": format!("The access code is {canary}. Reply only with OK.")});
        let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        let first = v["id"].as_str().unwrap().to_string();
        let body = json!({"model": "qwen", "temperature": 0, "max_output_tokens": 8,
            "previous_response_id": first, "input": "Thanks."});
        let (st, v) = post(&c, "/v1/responses", &body.to_string()).await;
        assert_eq!(st, 200, "{v}");
        (first, v["id"].as_str().unwrap().to_string())
    });
    let state = || -> Vec<u8> {
        files_under(&d.dir)
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect()
    };
    let all = state();
    assert!(
        !bytes_contain(&all, canary.as_bytes()),
        "the canary is readable in the state directory"
    );
    assert!(
        bytes_contain(&all, b"qwen"),
        "the control: clear metadata is found"
    );

    // Another uid: each id is the same 404 as an unknown one, for reading, listing, deleting
    // and continuing.
    let unknown = "resp_0123456789abcdef0123456789abcdef";
    let strip = |(st, body): (u16, String)| -> (u16, Value) {
        let mut v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["error"]["message"] = Value::Null;
        (st, v)
    };
    let expected = strip(request_as_other_user(
        &d,
        "GET",
        &format!("/v1/responses/{unknown}"),
        None,
    ));
    assert_eq!(expected.0, 404, "{expected:?}");
    assert_eq!(expected.1["error"]["code"], "response_not_found");
    for id in ids.iter().chain([&first, &last]) {
        for (method, path) in [
            ("GET", format!("/v1/responses/{id}")),
            ("GET", format!("/v1/responses/{id}/input_items")),
            ("DELETE", format!("/v1/responses/{id}")),
        ] {
            assert_eq!(
                strip(request_as_other_user(&d, method, &path, None)),
                expected,
                "{method} {path}"
            );
        }
        let body = json!({"model": "qwen", "input": "x", "previous_response_id": id});
        let (st, e) = request_as_other_user(&d, "POST", "/v1/responses", Some(&body.to_string()));
        assert_eq!(st, 404, "{e}");
        assert!(e.contains("response_not_found"), "{e}");
    }

    // Erasure of the owner (the test's uid): the ids are gone, and so are their sealed bytes.
    let owner = own_uid();
    let sealed: Vec<Vec<u8>> = {
        let db = rusqlite::Connection::open(d.dir.join("inhouse.db")).unwrap();
        let mut stmt = db
            .prepare(
                "SELECT q.prompt_ct, q.response_ct FROM responses r
                 JOIN requests q ON q.id = r.request_id",
            )
            .unwrap();
        stmt.query_map([], |r| Ok([r.get::<_, Vec<u8>>(0)?, r.get(1)?]))
            .unwrap()
            .flat_map(|r| r.unwrap())
            .collect()
    };
    assert!(sealed.len() >= 2 * (ids.len() + 2), "{}", sealed.len());
    let all = state();
    assert!(
        sealed.iter().all(|ct| bytes_contain(&all, ct)),
        "the control"
    );
    let out = cli(&d, &["admin", "erase", "--uid", &owner.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt().block_on(async {
        for id in ids.iter().chain([&first, &last]) {
            let (st, _) = c
                .raw(hyper::Method::GET, &format!("/v1/responses/{id}"), None)
                .await
                .unwrap();
            assert_eq!(st.as_u16(), 404, "{id} after erasure");
        }
    });
    let all = state();
    for ct in &sealed {
        assert!(
            !bytes_contain(&all, ct),
            "sealed bytes remain after erasure"
        );
    }
    alive(&d);
}

/// The uid this test runs as (the daemon sees it through the socket's peer credentials).
fn own_uid() -> u32 {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
