//! The model store and pool end to end: imports through the `inhouse` client, digests and
//! names, the signature policy, loading within a memory budget, LoRA adapters, and the official
//! `ollama` Python package. Real daemon, real models, real files.

mod common;

use common::{
    answer, chat_turns, cli, failed, gemma, inhouse_at, looks_english, ok, post, rt, smollm2,
    Daemon,
};
use hyper::Method;
use inhouse::client::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn get(c: &Client, p: &str) -> Value {
    rt().block_on(c.json(Method::GET, p, None))
        .unwrap_or_else(|e| panic!("GET {p}: {e}"))
}

/// Every file under the store's directories.
fn store_files(d: &Daemon) -> Vec<String> {
    let mut out = vec![];
    for sub in ["blobs", "manifests", "tmp"] {
        for e in std::fs::read_dir(d.dir.join("models").join(sub)).expect("store dir") {
            out.push(format!(
                "{sub}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

/// A greedy chat with a system turn: without one SmolLM2's own template adds its default, after
/// which the 135M model answers "What is the capital of France?" in French.
fn chat(c: &Client, model: &str, prompt: &str) -> (u16, Value) {
    let body = chat_turns(
        model,
        &[("system", "You are a helpful assistant."), ("user", prompt)],
        json!({"temperature": 0, "max_tokens": 24}),
    );
    rt().block_on(post(c, "/v1/chat/completions", &body.to_string()))
}

fn complete(c: &Client, model: &str, prompt: &str) -> (u16, Value) {
    let body = json!({"model": model, "temperature": 0, "max_tokens": 12, "prompt": prompt});
    rt().block_on(post(c, "/v1/completions", &body.to_string()))
}

/// A daemon with nothing configured: every model comes from its store.
fn empty_daemon(extra: &[&str]) -> Daemon {
    Daemon::start(&[], extra)
}

#[test]
fn import_show_and_serve_through_the_client_and_refuse_bad_names_and_corrupt_copies() {
    let d = empty_daemon(&[]);
    let out = ok(&cli(
        &d,
        &["models", "import", path(&smollm2()), "--name", "smollm2"],
    ));
    assert!(out.contains("imported smollm2"), "{out}");
    let out = ok(&cli(
        &d,
        &["models", "import", path(&gemma()), "--name", "gemma3:270m"],
    ));
    assert!(
        out.contains("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
        "{out}"
    );

    let show = ok(&cli(&d, &["models", "show", "smollm2"]));
    for want in [
        "architecture:    llama",
        "quantization:    Q4_1",
        "chat template:   yes",
        "context length:  8192",
        "b179c952",
    ] {
        assert!(show.contains(want), "{want:?} not in\n{show}");
    }
    let show = ok(&cli(&d, &["models", "show", "gemma3:270m"]));
    for want in [
        "architecture:    gemma3",
        "quantization:    Q4_K_M",
        "chat template:   no",
        "from gemma-3-270m-q4_k_m.gguf",
    ] {
        assert!(show.contains(want), "{want:?} not in\n{show}");
    }
    let c = d.client();
    // Embeddings load a stored model on demand too.
    let (status, v) = rt().block_on(post(
        &c,
        "/v1/embeddings",
        &json!({"model": "smollm2", "input": "hello"}).to_string(),
    ));
    assert_eq!(status, 200, "{v}");
    assert!(
        v["data"][0]["embedding"]
            .as_array()
            .is_some_and(|e| e.len() > 100),
        "{v}"
    );
    let (status, v) = chat(&c, "smollm2", "What is the capital of France?");
    assert_eq!(status, 200, "{v}");
    assert!(looks_english(&answer(&v)), "{v}");
    let (status, v) = complete(&c, "gemma3:270m", "The capital of France is");
    assert_eq!(status, 200, "{v}");

    // A corrupted copy: one byte changed in the middle, announced with the real digest.
    let before = store_files(&d);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("smol-corrupt.gguf");
    let mut bytes = std::fs::read(smollm2()).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&bad, &bytes).unwrap();
    let real = inhouse_formats::sign::sha256_file(&smollm2()).unwrap().0;
    let err = failed(&cli(
        &d,
        &[
            "models",
            "import",
            path(&bad),
            "--name",
            "corrupt",
            "--sha256",
            &real,
        ],
    ));
    assert!(err.contains("digest mismatch"), "{err}");
    // The same check through a PATH.sha256 file next to the model.
    std::fs::write(
        dir.path().join("smol-corrupt.gguf.sha256"),
        format!("{real}  smol.gguf\n"),
    )
    .unwrap();
    let err = failed(&cli(
        &d,
        &["models", "import", path(&bad), "--name", "corrupt"],
    ));
    assert!(err.contains("digest mismatch"), "{err}");
    // A truncated file is not a GGUF model.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..1 << 20]).unwrap();
    let err = failed(&cli(&d, &["models", "import", path(&cut), "--name", "cut"]));
    assert!(err.contains("not a valid GGUF file"), "{err}");
    assert_eq!(store_files(&d), before, "a refused import left a trace");

    // Names: refused by the client before anything is sent, and by the daemon.
    let long = "a".repeat(65);
    for name in [
        "../x",
        "/etc/passwd",
        "a/b",
        "",
        long.as_str(),
        "UPPER",
        ".x",
    ] {
        let err = failed(&cli(
            &d,
            &["models", "import", path(&smollm2()), "--name", name],
        ));
        assert!(err.contains("invalid model name"), "{name:?}: {err}");
    }
    for encoded in ["..%2Fx", "%2Fetc%2Fpasswd", "a%2Fb", &long, "..", "a%00b"] {
        let (status, body) = rt()
            .block_on(c.raw(
                Method::POST,
                &format!("/admin/models/{encoded}"),
                Some("GGUF".into()),
            ))
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{encoded}: {body}");
        assert!(body.contains("invalid_model_name"), "{encoded}: {body}");
    }
    // A taken name is refused; rm frees it (and the blob when nothing else uses it).
    let err = failed(&cli(
        &d,
        &["models", "import", path(&smollm2()), "--name", "smollm2"],
    ));
    assert!(err.contains("already exists"), "{err}");
    ok(&cli(&d, &["models", "rm", "gemma3:270m"]));
    assert!(
        !store_files(&d).iter().any(|f| f.contains("a5fd3b62")),
        "{:?}",
        store_files(&d)
    );
    let (status, _) = complete(&c, "gemma3:270m", "x");
    assert_eq!(status, 404);
    // The audit log saw the imports, the refusals and the removal.
    let (status, audit) = rt()
        .block_on(c.raw(Method::GET, "/audit/export", None))
        .unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&audit);
    for kind in ["model_import_ok", "model_import_refused", "model_remove"] {
        assert!(text.contains(kind), "{kind} not in the audit log");
    }
}

/// Makes a publisher key pair with the client (offline: no daemon); returns (secret, public).
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let no_daemon = Path::new("/nonexistent/inhouse.sock");
    ok(&inhouse_at(
        no_daemon,
        &[
            "models",
            "keygen",
            "--dir",
            path(dir),
            "--name",
            name,
            "--comment",
            "test publisher",
        ],
    ));
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

#[test]
fn signature_policy_accepts_signed_refuses_unsigned_untrusted_and_tampered() {
    let keys = tempfile::tempdir().unwrap();
    let trusted_dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (good_key, good_pub) = keygen(keys.path(), "publisher");
    let (evil_key, _) = keygen(keys.path(), "stranger");
    std::fs::copy(&good_pub, trusted_dir.path().join("publisher.pub")).unwrap();

    let cfg = files.path().join("inhouse.toml");
    std::fs::write(
        &cfg,
        format!(
            "require-signed-models = true\ntrusted-keys-dir = {:?}\n",
            path(trusted_dir.path())
        ),
    )
    .unwrap();
    let d = empty_daemon(&["--config", path(&cfg)]);

    // Signed by the trusted key (PATH.sig found next to the file): accepted.
    let model = files.path().join("smol.gguf");
    std::fs::copy(smollm2(), &model).unwrap();
    let out = ok(&cli(
        &d,
        &[
            "models",
            "sign",
            path(&model),
            "--key",
            path(&good_key),
            "--name",
            "smol",
        ],
    ));
    assert!(out.contains("smol.gguf.sig"), "{out}");
    let out = ok(&cli(
        &d,
        &["models", "import", path(&model), "--name", "signed"],
    ));
    assert!(out.contains("signed by key"), "{out}");
    let show = ok(&cli(&d, &["models", "show", "signed"]));
    assert!(!show.contains("signed by:       -"), "{show}");

    // Unsigned: refused.
    let unsigned = files.path().join("unsigned.gguf");
    std::fs::copy(smollm2(), &unsigned).unwrap();
    let err = failed(&cli(
        &d,
        &["models", "import", path(&unsigned), "--name", "unsigned"],
    ));
    assert!(
        err.contains("unsigned") && err.contains("require-signed-models"),
        "{err}"
    );

    // Signed by a key the server does not trust: refused.
    let stranger_sig = files.path().join("stranger.sig");
    ok(&cli(
        &d,
        &[
            "models",
            "sign",
            path(&unsigned),
            "--key",
            path(&evil_key),
            "--out",
            path(&stranger_sig),
        ],
    ));
    let err = failed(&cli(
        &d,
        &[
            "models",
            "import",
            path(&unsigned),
            "--name",
            "untrusted",
            "--signature",
            path(&stranger_sig),
        ],
    ));
    assert!(err.contains("signature check failed"), "{err}");

    // A trusted signature of another file: refused.
    let gemma_copy = files.path().join("g.gguf");
    std::fs::copy(gemma(), &gemma_copy).unwrap();
    let err = failed(&cli(
        &d,
        &[
            "models",
            "import",
            path(&gemma_copy),
            "--name",
            "swapped",
            "--signature",
            path(&files.path().join("smol.gguf.sig")),
        ],
    ));
    assert!(err.contains("signature check failed"), "{err}");
    let names: Vec<String> = get(&d.client(), "/admin/models")["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["signed"]);

    // Tampered after import: the blob changes on disk; the load refuses it, the daemon stays up.
    let digest = inhouse_formats::sign::sha256_file(&model).unwrap().0;
    let blob = d.dir.join("models/blobs").join(format!("sha256-{digest}"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let c = d.client();
    let (status, v) = chat(&c, "signed", "Hello");
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "model_refused", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("integrity"),
        "{v}"
    );
    assert_eq!(get(&c, "/health")["status"], "ok");
}

#[test]
fn two_models_alternate_under_a_budget_for_one_and_a_model_too_large_is_refused() {
    // Import both and read their estimates, then restart the daemon with a budget that holds
    // the larger one but not both.
    let mut d = empty_daemon(&[]);
    ok(&cli(
        &d,
        &["models", "import", path(&smollm2()), "--name", "smol"],
    ));
    ok(&cli(
        &d,
        &["models", "import", path(&gemma()), "--name", "gemma"],
    ));
    let list = get(&d.client(), "/admin/models");
    let est = |name: &str| {
        list["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["estimate"]["total"].as_u64())
            .unwrap_or_else(|| panic!("no estimate for {name}: {list}"))
    };
    let (small, large) = (est("smol"), est("gemma"));
    assert!(small < large, "{small} {large}");
    let budget = (large + small / 2).to_string();
    let (dir, key) = (d.dir.clone(), d.dir.join("master.key"));
    d.terminate();

    let d2 = Daemon::start_in(&dir, &key, &[], &["--memory-budget", &budget]);
    let c = d2.client();
    let loaded = || -> Vec<String> {
        get(&c, "/admin/ps")["loaded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(loaded().is_empty(), "nothing loads before a request");
    let mut smol_answer = None;
    for round in 0..2 {
        let (status, v) = chat(&c, "smol", "What is the capital of France?");
        assert_eq!(status, 200, "{v}");
        let text = answer(&v);
        assert!(looks_english(&text), "{text}");
        // Reloading gives the same answer.
        assert_eq!(
            smol_answer.get_or_insert(text.clone()),
            &text,
            "round {round}"
        );
        assert_eq!(loaded(), ["smol"], "round {round}");
        let (status, v) = complete(&c, "gemma", "The capital of France is");
        assert_eq!(status, 200, "{v}");
        assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty(), "{v}");
        assert_eq!(loaded(), ["gemma"], "round {round}");
    }
    let ps = ok(&cli(&d2, &["models", "ps"]));
    assert!(ps.contains("gemma\tcpu\t0/18"), "{ps}");
    assert!(get(&c, "/admin/ps")["evictions"].as_u64().unwrap() >= 3);
    drop(d2);

    // A budget below the smaller model: a clear refusal, and the daemon keeps serving.
    let d3 = Daemon::start_in(
        &dir,
        &key,
        &[],
        &["--memory-budget", &(small / 2).to_string()],
    );
    let c = d3.client();
    let (status, v) = chat(&c, "smol", "Hello");
    assert_eq!(status, 507, "{v}");
    assert_eq!(v["error"]["code"], "model_too_large", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("memory budget") && msg.contains("MiB"),
        "{msg}"
    );
    assert_eq!(get(&c, "/health")["status"], "ok");
}

/// Writes a random LoRA adapter for SmolLM2's attention into `dir`.
fn make_adapter(dir: &Path, name: &str, seed: u64) -> PathBuf {
    use inhouse_formats::gguf_write::{random_lora_for, write_lora_adapter};
    let base = inhouse_formats::gguf::open(smollm2()).unwrap();
    let pairs = random_lora_for(&base, &["attn_q.weight", "attn_v.weight"], 8, 0.3, seed);
    assert!(pairs.len() >= 60, "{} pairs", pairs.len());
    let out = dir.join(format!("{name}.gguf"));
    write_lora_adapter(&out, "llama", 8.0, &pairs).unwrap();
    out
}

#[test]
fn a_lora_adapter_changes_the_answer_and_can_be_swapped_and_removed_without_restart() {
    let d = empty_daemon(&[]);
    let tmp = tempfile::tempdir().unwrap();
    ok(&cli(
        &d,
        &["models", "import", path(&smollm2()), "--name", "smol"],
    ));
    let c = d.client();
    let prompt = "Write one sentence about the sea.";
    let (status, v) = chat(&c, "smol", prompt);
    assert_eq!(status, 200, "{v}");
    let plain = answer(&v);

    // An adapter file is refused as a model, and a model as an adapter.
    let one = make_adapter(tmp.path(), "one", 1);
    let err = failed(&cli(
        &d,
        &["models", "import", path(&one), "--name", "tune"],
    ));
    assert!(err.contains("--adapter-for"), "{err}");
    let err = failed(&cli(
        &d,
        &[
            "models",
            "import",
            path(&smollm2()),
            "--name",
            "tune",
            "--adapter-for",
            "smol",
        ],
    ));
    assert!(err.contains("not a LoRA adapter"), "{err}");

    ok(&cli(
        &d,
        &[
            "models",
            "import",
            path(&one),
            "--name",
            "tune",
            "--adapter-for",
            "smol",
        ],
    ));
    let listed: Vec<Value> = get(&c, "/v1/models")["data"].as_array().unwrap().clone();
    assert!(listed.iter().any(|m| m["id"] == "smol+tune"), "{listed:?}");
    let (status, v) = chat(&c, "smol+tune", prompt);
    assert_eq!(status, 200, "{v}");
    let tuned = answer(&v);
    assert_ne!(tuned, plain, "the adapter changed nothing");
    // The base is unaffected, and the adapter's answer is stable.
    assert_eq!(answer(&chat(&c, "smol", prompt).1), plain);
    assert_eq!(answer(&chat(&c, "smol+tune", prompt).1), tuned);

    // Swap: remove the adapter (its engine unloads), import another under the same name.
    ok(&cli(&d, &["models", "rm", "tune"]));
    let (status, v) = chat(&c, "smol+tune", prompt);
    assert_eq!(status, 404, "{v}");
    let two = make_adapter(tmp.path(), "two", 2);
    ok(&cli(
        &d,
        &[
            "models",
            "import",
            path(&two),
            "--name",
            "tune",
            "--adapter-for",
            "smol",
        ],
    ));
    let (status, v) = chat(&c, "smol+tune", prompt);
    assert_eq!(status, 200, "{v}");
    let swapped = answer(&v);
    assert_ne!(swapped, tuned, "the new adapter was not used");
    assert_eq!(answer(&chat(&c, "smol", prompt).1), plain);
    ok(&cli(&d, &["models", "rm", "tune"]));
    assert_eq!(answer(&chat(&c, "smol", prompt).1), plain);
}

#[test]
fn the_official_ollama_python_client_lists_and_chats() {
    let d = Daemon::smol();
    common::run_python_client(
        "ollama_client.py",
        &d.socket,
        "smol",
        "ollama client: list, plain and streaming chat ok",
    );
}

/// Starts an import by hand and sends only the first 8 MiB of SmolLM2; returns the connection
/// once the daemon has begun writing the upload.
fn start_partial_import(d: &Daemon, name: &str) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let file = std::fs::read(smollm2()).unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write!(
        s,
        "POST /admin/models/{name} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        file.len()
    )
    .unwrap();
    s.write_all(&file[..8 << 20]).unwrap();
    let tmp = d.dir.join("models/tmp");
    for _ in 0..100 {
        if std::fs::read_dir(&tmp).unwrap().count() > 0 {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the upload never reached {}", tmp.display());
}

#[test]
fn an_interrupted_import_leaves_nothing_behind() {
    let mut d = empty_daemon(&[]);
    let before = store_files(&d);
    assert!(before.is_empty(), "{before:?}");
    // The client goes away mid-upload: the daemon removes the partial file.
    let conn = start_partial_import(&d, "partial");
    drop(conn);
    let mut left = store_files(&d);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = store_files(&d);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    // The daemon dies mid-upload: the next start removes the partial file.
    let _conn = start_partial_import(&d, "partial");
    let (dir, key) = (d.dir.clone(), d.dir.join("master.key"));
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    assert!(
        !store_files(&d).is_empty(),
        "the partial upload should be on disk now"
    );
    let d2 = Daemon::start_in(&dir, &key, &[], &[]);
    assert!(store_files(&d2).is_empty(), "{:?}", store_files(&d2));
    let err = failed(&cli(&d2, &["models", "show", "partial"]));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn ollama_keep_alive_sets_how_long_a_model_stays_loaded() {
    let d = empty_daemon(&[]);
    ok(&cli(
        &d,
        &["models", "import", path(&smollm2()), "--name", "smol"],
    ));
    let c = d.client();
    let ask = |keep: Value| {
        let body = json!({"model": "smol", "stream": false, "keep_alive": keep,
                          "messages": [{"role": "user", "content": "Hi"}],
                          "options": {"temperature": 0, "num_predict": 4}});
        rt().block_on(post(&c, "/api/chat", &body.to_string()))
    };
    let (status, v) = ask(json!("1h"));
    assert_eq!(status, 200, "{v}");
    let ps = get(&c, "/api/ps");
    assert_eq!(ps["models"][0]["name"], "smol", "{ps}");
    let loaded = get(&c, "/admin/ps");
    let expires = loaded["loaded"][0]["expires_in_secs"].as_u64().unwrap();
    assert!((3500..=3600).contains(&expires), "{loaded}");
    let (status, v) = ask(json!("soon"));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "keep_alive", "{v}");
    // 0: unloaded as soon as it is idle (the reaper looks every second).
    let (status, v) = ask(json!(0));
    assert_eq!(status, 200, "{v}");
    let mut models = get(&c, "/api/ps")["models"].as_array().unwrap().len();
    for _ in 0..50 {
        if models == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        models = get(&c, "/api/ps")["models"].as_array().unwrap().len();
    }
    assert_eq!(models, 0, "still loaded");
    // The next request loads it again.
    let (status, v) = ask(json!(-1));
    assert_eq!(status, 200, "{v}");
    assert!(get(&c, "/admin/ps")["loaded"][0]["expires_in_secs"].is_null());
}

#[test]
fn removing_a_model_while_it_loads_leaves_nothing_resident() {
    // Gemma's first request re-hashes and loads ~240 MiB (about a second here); `models rm`
    // arrives during that. Whatever the request gets, the removed model must not stay loaded.
    let d = empty_daemon(&[]);
    ok(&cli(
        &d,
        &["models", "import", path(&gemma()), "--name", "doomed"],
    ));
    let socket = d.socket.clone();
    let request = std::thread::spawn(move || {
        complete(&Client::new(&socket), "doomed", "The capital of France is")
    });
    std::thread::sleep(std::time::Duration::from_millis(150));
    ok(&cli(&d, &["models", "rm", "doomed"]));
    let (status, body) = request.join().unwrap();
    assert!([200, 404].contains(&status), "status {status}: {body}");
    let ps = get(&d.client(), "/admin/ps");
    assert!(!ps.to_string().contains("doomed"), "still loaded: {ps}");
    let (status, _) = complete(&d.client(), "doomed", "Hello");
    assert_eq!(status, 404);
}

#[test]
fn two_imports_of_one_name_at_once_store_one_and_refuse_the_other() {
    let d = empty_daemon(&[]);
    let socket = d.socket.clone();
    let imports: Vec<_> = [smollm2(), gemma()]
        .into_iter()
        .map(|file| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                inhouse_at(
                    &socket,
                    &["models", "import", path(&file), "--name", "twin"],
                )
            })
        })
        .collect();
    let outs: Vec<_> = imports.into_iter().map(|t| t.join().unwrap()).collect();
    let stored = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(stored, 1, "{outs:?}");
    let refused = outs.iter().find(|o| !o.status.success()).unwrap();
    assert!(failed(refused).contains("exists"), "{}", failed(refused));
    // One manifest, and exactly the blob it names: nothing orphaned.
    let files = store_files(&d);
    let blobs: Vec<_> = files.iter().filter(|f| f.starts_with("blobs/")).collect();
    assert_eq!(blobs.len(), 1, "{files:?}");
    let show = ok(&cli(&d, &["models", "show", "twin"]));
    assert!(
        show.contains(&blobs[0]["blobs/sha256-".len()..][..12]),
        "{show}\n{files:?}"
    );
}
