//! Aliases, promotion and model cards end to end: the real daemon over its socket, SmolLM2
//! stored under two names, the `inhouse` client. An alias resolves at request time (a move is
//! followed by the next request), `/v1/models` and `/api/tags` list it, promotion refuses a model
//! its gate did not bless unless forced, every change is in the audit log with its old and new
//! targets, rollback is `alias set`, and a card's SHA-256 is the one the log recorded.

mod common;

use common::{answer, chat_turns, cli, failed, ok, post, request_as_uid, rt, smollm2, Daemon};
use hyper::Method;
use inhouse::client::Client;
use serde_json::{json, Value};
use std::path::Path;

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn get(c: &Client, p: &str) -> Value {
    rt().block_on(c.json(Method::GET, p, None))
        .unwrap_or_else(|e| panic!("GET {p}: {e}"))
}

fn chat(c: &Client, model: &str) -> (u16, Value) {
    let body = chat_turns(
        model,
        &[
            ("system", "You are a helpful assistant."),
            ("user", "Name a colour."),
        ],
        json!({"temperature": 0, "max_tokens": 8}),
    );
    rt().block_on(post(c, "/v1/chat/completions", &body.to_string()))
}

/// The audit log, one JSON object per event, with `detail` parsed.
fn audit(c: &Client) -> Vec<Value> {
    let (status, body) = rt()
        .block_on(c.raw(Method::GET, "/audit/export", None))
        .unwrap();
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .map(|l| {
            let mut e: Value = serde_json::from_str(l).unwrap();
            for key in ["detail", "detail_json"] {
                if let Some(Value::String(s)) = e.get(key) {
                    e["detail"] = serde_json::from_str(s).unwrap_or(Value::Null);
                }
            }
            e
        })
        .collect()
}

/// The detail of the newest audit event of `kind`.
fn last_event(c: &Client, kind: &str) -> Value {
    audit(c)
        .into_iter()
        .rev()
        .find(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in the audit log"))["detail"]
        .clone()
}

/// The `alias_for` of `id` in `/v1/models`, `None` when it is not listed.
fn listed_alias(c: &Client, id: &str) -> Option<Value> {
    get(c, "/v1/models")["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .map(|m| m["alias_for"].clone())
}

/// Rewrites a stored manifest's `provenance.extra`, as a finetune job registers its result.
fn set_extra(d: &Daemon, name: &str, extra: Value) {
    let file = d.dir.join("models/manifests").join(format!("{name}.json"));
    let mut m: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    m["provenance"]["extra"] = extra;
    std::fs::write(&file, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn sha256(p: &Path) -> String {
    inhouse_formats::sign::sha256_file(p).unwrap().0
}

#[test]
fn aliases_follow_set_at_once_promotion_needs_a_blessing_or_force_and_every_change_is_audited() {
    let d = Daemon::with_config(&[], "[roles]\nuser-groups = []\nuser-uids = [4242]\n");
    let c = d.client();
    for name in ["a", "b"] {
        ok(&cli(
            &d,
            &["models", "import", path(&smollm2()), "--name", name],
        ));
    }

    // prod → a: a request for prod is answered under the name asked; the record is a's.
    let out = ok(&cli(&d, &["models", "alias", "set", "prod", "a"]));
    assert!(out.contains("prod -> a (new)"), "{out}");
    assert_eq!(
        last_event(&c, "model_alias_set"),
        json!({"alias": "prod", "old": null, "new": "a"})
    );
    let (status, v) = chat(&c, "prod");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "prod", "{v}");
    let plain = answer(&v);
    assert_eq!(answer(&chat(&c, "a").1), plain, "the alias serves a itself");
    let req = audit(&c)
        .into_iter()
        .filter(|e| e["kind"] == "request")
        .nth_back(1)
        .unwrap();
    assert_eq!(req["detail"]["model"], "a", "{req}");
    // The record names the model that ran, with the alias asked in its parameters.
    let history = get(&c, "/v1/history?limit=2");
    let alias_asked = |r: &Value| -> Value {
        serde_json::from_str::<Value>(r["params_json"].as_str().unwrap_or("null")).unwrap()["alias"]
            .clone()
    };
    let records = history["data"].as_array().unwrap();
    assert_eq!(records[1]["model"], "a", "{history}");
    assert_eq!(alias_asked(&records[1]), "prod", "{history}");
    assert_eq!(records[0]["model"], "a", "{history}");
    assert_eq!(
        alias_asked(&records[0]),
        Value::Null,
        "asked for a itself: {history}"
    );
    assert_eq!(listed_alias(&c, "prod"), Some(json!("a")));
    assert_eq!(
        listed_alias(&c, "a"),
        Some(Value::Null),
        "models stay listed"
    );
    let tags = get(&c, "/api/tags");
    assert!(
        tags["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "prod" && m["alias_for"] == "a"),
        "{tags}"
    );
    // Ollama's routes resolve it too, and answer under the name asked.
    let (status, v) = rt().block_on(post(
        &c,
        "/api/chat",
        &json!({"model": "prod", "stream": false, "options": {"temperature": 0, "num_predict": 4},
                "messages": [{"role": "user", "content": "Hi"}]})
        .to_string(),
    ));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "prod", "{v}");
    assert_eq!(last_event(&c, "request")["model"], "a");

    // prod → b: the next request follows, without a restart.
    let out = ok(&cli(&d, &["models", "alias", "set", "prod", "b"]));
    assert!(out.contains("prod -> b (was a)"), "{out}");
    assert_eq!(
        last_event(&c, "model_alias_set"),
        json!({"alias": "prod", "old": "a", "new": "b"})
    );
    assert_eq!(listed_alias(&c, "prod"), Some(json!("b")));
    let (status, v) = chat(&c, "prod");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "prod");
    assert_eq!(last_event(&c, "request")["model"], "b");
    let ps = get(&c, "/admin/ps");
    assert!(
        ps["loaded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "b"),
        "b was loaded for prod: {ps}"
    );
    let list = ok(&cli(&d, &["models", "alias", "list"]));
    assert!(list.contains("prod\tb\tyes"), "{list}");
    let served = ok(&cli(&d, &["models"]));
    assert!(served.contains("alias for b"), "{served}");

    // Promotion: no gate result, a refused gate, a candidate: 409 model_not_blessed.
    for (extra, why) in [
        (Value::Null, "no evaluation gate result"),
        (
            json!({"evaluation": {"gate": {"blessed": false}}}),
            "gate refused it",
        ),
        (
            json!({"candidate": true, "evaluation": {"gate": {"blessed": false}}}),
            "candidate",
        ),
    ] {
        set_extra(&d, "a", extra);
        let err = failed(&cli(&d, &["models", "promote", "a", "--to", "prod"]));
        assert!(
            err.contains("[model_not_blessed]") && err.contains("--force") && err.contains(why),
            "{err}"
        );
        assert!(err.contains("409"), "{err}");
    }
    let (status, body) = rt()
        .block_on(c.raw(
            Method::POST,
            "/admin/models/a/promote",
            Some(json!({"to": "prod"}).to_string().into()),
        ))
        .unwrap();
    assert_eq!(status, 409);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "model_not_blessed", "{body}");
    assert_eq!(last_event(&c, "model_promote_refused")["gate"], "candidate");
    assert_eq!(
        listed_alias(&c, "prod"),
        Some(json!("b")),
        "refusals change nothing"
    );
    // --force promotes it, and the log says so with the gate's status.
    let out = ok(&cli(
        &d,
        &["models", "promote", "a", "--to", "prod", "--force"],
    ));
    assert!(out.contains("forced") && out.contains("(was b)"), "{out}");
    assert!(out.contains("inhouse models alias set prod b"), "{out}");
    assert_eq!(
        last_event(&c, "model_promote"),
        json!({"alias": "prod", "old": "b", "new": "a", "model": "a", "gate": "candidate",
               "forced": true})
    );
    assert_eq!(listed_alias(&c, "prod"), Some(json!("a")));
    // A blessed model needs no --force.
    set_extra(
        &d,
        "b",
        json!({"evaluation": {"gate": {"blessed": true, "failed": []}}}),
    );
    let out = ok(&cli(&d, &["models", "promote", "b", "--to", "prod"]));
    assert!(
        out.contains("gate: blessed") && !out.contains("forced"),
        "{out}"
    );
    assert_eq!(
        last_event(&c, "model_promote"),
        json!({"alias": "prod", "old": "a", "new": "b", "model": "b", "gate": "blessed",
               "forced": false})
    );
    // Rollback: set the alias back.
    ok(&cli(&d, &["models", "alias", "set", "prod", "a"]));
    assert_eq!(
        last_event(&c, "model_alias_set"),
        json!({"alias": "prod", "old": "b", "new": "a"})
    );
    assert_eq!(answer(&chat(&c, "prod").1), plain);
    assert_eq!(last_event(&c, "request")["model"], "a");

    // Aliases and model names do not clash; targets must be served and not aliases.
    let err = failed(&cli(&d, &["models", "alias", "set", "a", "b"]));
    assert!(err.contains("[alias_clash]"), "{err}");
    let err = failed(&cli(
        &d,
        &["models", "import", path(&smollm2()), "--name", "prod"],
    ));
    assert!(
        err.contains("[alias_clash]") && err.contains("alias rm prod"),
        "{err}"
    );
    let err = failed(&cli(&d, &["models", "alias", "set", "canary", "prod"]));
    assert!(err.contains("[invalid_alias_target]"), "{err}");
    let err = failed(&cli(&d, &["models", "alias", "set", "canary", "nope"]));
    assert!(err.contains("[model_not_found]"), "{err}");

    // Aliases are admin business: a user may ask for one, not move it.
    let (status, _) = request_as_uid(
        4242,
        &d.dir,
        &d.socket,
        "PUT",
        "/admin/aliases/prod",
        Some(r#"{"target":"b"}"#),
    );
    assert_eq!(status, 403);
    let (status, _) = request_as_uid(
        4242,
        &d.dir,
        &d.socket,
        "POST",
        "/admin/models/b/promote",
        Some(r#"{"to":"prod","force":true}"#),
    );
    assert_eq!(status, 403);
    let (status, body) = request_as_uid(4242, &d.dir, &d.socket, "GET", "/v1/models", None);
    assert_eq!(status, 200);
    assert!(body.contains(r#""alias_for":"a""#), "{body}");
    assert_eq!(listed_alias(&c, "prod"), Some(json!("a")));

    // Removal: the alias is gone from listings and requests for it are unknown.
    let out = ok(&cli(&d, &["models", "alias", "rm", "prod"]));
    assert!(out.contains("removed alias prod (was a)"), "{out}");
    assert_eq!(
        last_event(&c, "model_alias_remove"),
        json!({"alias": "prod", "old": "a", "new": null})
    );
    assert_eq!(listed_alias(&c, "prod"), None);
    assert_eq!(chat(&c, "prod").0, 404);
    let err = failed(&cli(&d, &["models", "alias", "rm", "prod"]));
    assert!(err.contains("[alias_not_found]"), "{err}");
}

#[test]
fn promoting_an_adapter_points_the_alias_at_base_plus_adapter_and_a_removed_target_is_not_served() {
    use inhouse_formats::gguf_write::{random_lora_for, write_lora_adapter};
    let d = Daemon::start(&[], &[]);
    let c = d.client();
    let tmp = tempfile::tempdir().unwrap();
    ok(&cli(
        &d,
        &["models", "import", path(&smollm2()), "--name", "smol"],
    ));
    let base = inhouse_formats::gguf::open(smollm2()).unwrap();
    let pairs = random_lora_for(&base, &["attn_q.weight", "attn_v.weight"], 8, 0.3, 1);
    let file = tmp.path().join("tune.gguf");
    write_lora_adapter(&file, "llama", 8.0, &pairs).unwrap();
    ok(&cli(
        &d,
        &[
            "models",
            "import",
            path(&file),
            "--name",
            "tune",
            "--adapter-for",
            "smol",
        ],
    ));
    set_extra(
        &d,
        "tune",
        json!({"evaluation": {"gate": {"blessed": true}}}),
    );
    let out = ok(&cli(&d, &["models", "promote", "tune", "--to", "prod"]));
    assert!(out.contains("prod -> smol+tune"), "{out}");
    assert_eq!(listed_alias(&c, "prod"), Some(json!("smol+tune")));
    let (status, v) = chat(&c, "prod");
    assert_eq!(status, 200, "{v}");
    let tuned = answer(&v);
    assert_eq!(answer(&chat(&c, "smol+tune").1), tuned);
    assert_eq!(last_event(&c, "request")["model"], "smol+tune");

    // The adapter removed: the alias stays (listed as not served), requests for it fail.
    ok(&cli(&d, &["models", "rm", "tune"]));
    let list = ok(&cli(&d, &["models", "alias", "list"]));
    assert!(list.contains("prod\tsmol+tune\tno"), "{list}");
    assert_eq!(listed_alias(&c, "prod"), None);
    assert_eq!(chat(&c, "prod").0, 404);
    // Setting it again serves again.
    ok(&cli(&d, &["models", "alias", "set", "prod", "smol"]));
    assert_eq!(chat(&c, "prod").0, 200);
}

#[test]
fn a_model_card_is_written_and_its_sha256_is_in_the_audit_log() {
    let d = Daemon::start(&[], &[]);
    let c = d.client();
    ok(&cli(
        &d,
        &["models", "import", path(&smollm2()), "--name", "smol"],
    ));
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("card.html");
    let out = ok(&cli(
        &d,
        &["models", "card", "smol", "--out", path(&out_file)],
    ));
    let digest = sha256(&out_file);
    assert!(out.contains(&format!("sha256 {digest}")), "{out}");
    let ev = last_event(&c, "model_card_generated");
    assert_eq!(ev["sha256"], digest.as_str(), "{ev}");
    assert_eq!(ev["name"], "smol");
    assert_eq!(ev["format"], "html");
    assert_eq!(ev["digest"], sha256(&smollm2()).as_str());
    assert_eq!(
        ev["bytes"],
        std::fs::metadata(&out_file).unwrap().len(),
        "{ev}"
    );

    // Markdown to standard output; the digest goes to standard error.
    let run = cli(&d, &["models", "card", "smol", "--format", "md"]);
    let page = ok(&run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let md_file = tmp.path().join("card.md");
    std::fs::write(&md_file, &page).unwrap();
    let md_digest = sha256(&md_file);
    assert!(stderr.contains(&format!("sha256 {md_digest}")), "{stderr}");
    let ev = last_event(&c, "model_card_generated");
    assert_eq!(ev["sha256"], md_digest.as_str(), "{ev}");
    assert_eq!(ev["format"], "md");

    let err = failed(&cli(&d, &["models", "card", "nope"]));
    assert!(err.contains("[model_not_found]"), "{err}");
    let (status, _) = rt()
        .block_on(c.raw(Method::GET, "/admin/models/smol/card?format=pdf", None))
        .unwrap();
    assert_eq!(status, 400);
}
