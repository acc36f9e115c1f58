//! Files and vector stores end to end: the real `inhoused` with all-MiniLM-L6-v2 converted by
//! `inhouse-quantize import-hf` as its embedding model, the official `openai` SDK
//! (tests/openai_knowledge.py) uploading, attaching and searching the documents of
//! tests/knowledge_docs/ (written for this test), then the permission rule (a uid without
//! access, a uid in the group the collection is shared with), the canary (not readable anywhere
//! in the state directory), and erasure (files, chunks and vectors gone).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// The group the handbook is shared with; the test's reader runs as this uid and gid.
const READER: u32 = 4242;
/// A uid with the user role and no share.
const STRANGER: u32 = 65534;
const CANARY: &str = "QUOKKA-CANARY-5f1e9b7a";

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/knowledge_docs")
}

fn python() -> String {
    std::env::var("INHOUSE_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/inhouse/venv/bin/python",
            std::env::var("HOME").unwrap()
        )
    })
}

fn as_uid(d: &Daemon, uid: u32, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (st, text) = request_as_uid(uid, &d.dir, &d.socket, method, path, body.as_deref());
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
    (st, v)
}

fn search(d: &Daemon, uid: u32, store: &str, query: &str) -> (u16, Value) {
    as_uid(
        d,
        uid,
        "POST",
        &format!("/v1/vector_stores/{store}/search"),
        Some(&json!({"query": query, "max_num_results": 10})),
    )
}

fn result_files(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .map(|r| r["file_id"].as_str().unwrap().to_string())
        .collect()
}

fn count(db: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the database read-only");
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn the_openai_sdk_builds_and_searches_sealed_collections_that_only_their_readers_see() {
    let tmp = tempfile::tempdir().unwrap();
    let model = minilm_gguf(tmp.path());
    let d = Daemon::with_config(
        &[("minilm", &model)],
        &format!(
            "[roles]\nuser-uids = [{READER}, {STRANGER}]\n\n[knowledge]\nembedding-model = \"minilm\"\n"
        ),
    );

    // The SDK: upload, create, attach and poll, search a dozen questions, filters, rankers.
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_knowledge.py"))
        .arg(&d.socket)
        .arg(docs())
        .arg(READER.to_string())
        .output()
        .expect("run the openai client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "openai_knowledge.py failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let ids: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let handbook = ids["handbook"].as_str().unwrap();
    let board = ids["board"].as_str().unwrap();
    let nightjar = ids["files"]["project-nightjar.md"].as_str().unwrap();
    let handbook_files: Vec<&str> = ids["files"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "project-nightjar.md")
        .map(|(_, v)| v.as_str().unwrap())
        .collect();

    // The board's document is the best match for this question (battery, bicycle-sized hull),
    // as its owner sees.
    let q = "How long does the battery of the bicycle-sized survey drone last?";
    let (st, v) = as_uid(
        &d,
        0,
        "POST",
        &format!("/v1/vector_stores/{board}/search"),
        Some(&json!({"query": q})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(result_files(&v)[0], nightjar, "{v}");

    // The reader (in the share's group) sees the handbook, and only the handbook's chunks,
    // even for the question the board's chunk answers best.
    let (st, v) = search(&d, READER, handbook, q);
    assert_eq!(st, 200, "{v}");
    let files = result_files(&v);
    assert!(!files.is_empty());
    assert!(
        files.iter().all(|f| handbook_files.contains(&f.as_str())),
        "{v}"
    );
    assert!(!v.to_string().contains("Nightjar") && !v.to_string().contains(CANARY));
    let (st, v) = as_uid(&d, READER, "GET", "/v1/vector_stores", None);
    assert_eq!(st, 200, "{v}");
    let listed: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![handbook], "{v}");
    // Not the board, not the owner's files; reading is not changing.
    let (st, v) = search(&d, READER, board, q);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("vector_store_not_found")),
        "{v}"
    );
    let (st, _) = as_uid(&d, READER, "GET", &format!("/v1/files/{nightjar}"), None);
    assert_eq!(st, 404);
    let (st, v) = as_uid(
        &d,
        READER,
        "POST",
        &format!("/v1/vector_stores/{handbook}"),
        Some(&json!({"groups": []})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("not_owner")),
        "{v}"
    );
    // Searching two collections, one of them not readable, is refused whole.
    let (st, _) = as_uid(
        &d,
        READER,
        "POST",
        &format!("/v1/vector_stores/{board}/files"),
        Some(&json!({"file_id": nightjar})),
    );
    assert_eq!(st, 404);

    // A uid without a share sees nothing at all.
    for store in [handbook, board] {
        let (st, v) = search(&d, STRANGER, store, q);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (404, Some("vector_store_not_found")),
            "{v}"
        );
        let (st, _) = as_uid(
            &d,
            STRANGER,
            "GET",
            &format!("/v1/vector_stores/{store}"),
            None,
        );
        assert_eq!(st, 404);
    }
    let (st, v) = as_uid(&d, STRANGER, "GET", "/v1/vector_stores", None);
    assert_eq!(st, 200);
    assert_eq!(v["data"], json!([]), "{v}");

    // The canary is nowhere in the state directory (database, WAL, log), nor the board's
    // words: file names, text, chunks and vectors are sealed.
    let canary_gone = |when: &str| {
        for f in files_under(&d.dir) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            for needle in [CANARY, "Project Nightjar", "project-nightjar.md"] {
                assert!(
                    !bytes_contain(&bytes, needle.as_bytes()),
                    "{when}: {needle:?} is readable in {}",
                    f.display()
                );
            }
        }
    };
    canary_gone("after ingest");
    let db = d.dir.join("inhouse.db");
    assert!(count(&db, "chunks") >= 12, "chunks were stored");

    // The audit log has the uploads, shares and searches, and no query text.
    let audit = ok(&cli(&d, &["admin", "audit", "export"]));
    for kind in [
        "file.upload",
        "vector_store.create",
        "vector_store.file_attach",
        "vector_store.file_ingested",
        "vector_store.search",
    ] {
        assert!(audit.contains(kind), "no {kind} in the audit log");
    }
    assert!(
        !audit.contains("bicycle-sized"),
        "a query reached the audit log"
    );

    // Erasure: the owner's files, collections, chunks and vectors are gone, with the key.
    let erased = ok(&cli(&d, &["admin", "erase", "--uid", "0"]));
    eprintln!("{erased}");
    for table in ["files", "vector_stores", "vector_store_files", "chunks"] {
        assert_eq!(count(&db, table), 0, "{table} after erasure");
    }
    let (st, v) = search(&d, READER, handbook, q);
    assert_eq!(st, 404, "{v}");
    let (st, v) = as_uid(&d, 0, "GET", "/v1/files", None);
    assert_eq!((st, v["data"].clone()), (200, json!([])), "{v}");
    canary_gone("after erasure");
    ok(&cli(&d, &["admin", "audit", "verify"]));
}

#[test]
fn bad_uploads_and_bodies_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = minilm_gguf(tmp.path());
    let d = Daemon::with_config(
        &[("minilm", &model)],
        "[knowledge]\nembedding-model = \"minilm\"\nmax-file-bytes = 4096\n",
    );
    let script = r#"
import sys, httpx, openai
http = httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[1]), timeout=120)
c = openai.OpenAI(base_url="http://inhouse/v1", api_key="x", http_client=http, max_retries=0)
def code(f):
    try:
        f()
    except openai.APIStatusError as e:
        return e.status_code, e.body.get("code") if isinstance(e.body, dict) else None
    return 200, None
print(code(lambda: c.files.create(file=("big.txt", b"x" * 5000), purpose="assistants")))
print(code(lambda: c.files.create(file=("a.txt", b"hello"), purpose="fine-tune")))
pdf = c.files.create(file=("scan.pdf", b"%PDF-1.4 not really"), purpose="assistants")
bad = c.files.create(file=("notes.txt", b"ok\n\xff\xfe"), purpose="assistants")
vs = c.vector_stores.create(name="x")
for f in (pdf, bad):
    vf = c.vector_stores.files.create_and_poll(vector_store_id=vs.id, file_id=f.id)
    print(vf.status, vf.last_error.code, vf.last_error.message)
print(code(lambda: c.vector_stores.create(name="y", chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0}})))
print(code(lambda: c.vector_stores.search(vector_store_id=vs.id, query="x", filters={"type": "like", "key": "a", "value": 1})))
print(code(lambda: c.vector_stores.files.create(vector_store_id=vs.id, file_id="file-nope")))
anon = c.vector_stores.create(name="anon", extra_body={"anonymize": True})
f = c.files.create(file=("contact.txt", b"Refunds: write to jane.doe@example.com or call +47 912 34 567."), purpose="assistants")
print(c.vector_stores.files.create_and_poll(vector_store_id=anon.id, file_id=f.id).status)
print(list(c.vector_stores.search(vector_store_id=anon.id, query="refunds"))[0].content[0].text)
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "(413, 'file_too_large')", "{text}");
    assert_eq!(lines[1], "(400, 'invalid_value')", "{text}");
    assert!(
        lines[2].starts_with("failed unsupported_file scan.pdf: unsupported file type"),
        "{text}"
    );
    assert_eq!(
        lines[3], "failed invalid_file notes.txt: not valid UTF-8 (line 2)",
        "{text}"
    );
    assert_eq!(lines[4], "(400, 'invalid_value')", "{text}");
    assert_eq!(lines[5], "(400, 'invalid_value')", "{text}");
    assert_eq!(lines[6], "(404, 'file_not_found')", "{text}");
    // A collection that asks for it is anonymised at ingest, with prepare's patterns.
    assert_eq!(lines[7], "completed", "{text}");
    assert!(
        lines[8].contains("[EMAIL]") && !lines[8].contains("jane.doe"),
        "{text}"
    );
    for f in files_under(&d.dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!bytes_contain(&bytes, b"jane.doe"), "{}", f.display());
    }
}

/// Uploads `names` from tests/knowledge_docs, creates a collection and attaches them; with
/// `wait`, polls until each is completed. Prints the collection id and then each file's status.
fn build_collection(socket: &Path, names: &[&str], wait: bool) -> (u16, String) {
    let script = r#"
import json, sys, time, httpx, openai
http = httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[1]), timeout=120)
c = openai.OpenAI(base_url="http://inhouse/v1", api_key="x", http_client=http, max_retries=0)
docs, wait, names = sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
vs = c.vector_stores.create(name="restart")
print(vs.id, flush=True)
for n in names:
    f = c.files.create(file=(n, open(f"{docs}/{n}", "rb").read()), purpose="assistants")
    if wait:
        print(c.vector_stores.files.create_and_poll(vector_store_id=vs.id, file_id=f.id).status)
    else:
        print(c.vector_stores.files.create(vector_store_id=vs.id, file_id=f.id).status, flush=True)
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(socket)
        .arg(docs())
        .arg(if wait { "1" } else { "0" })
        .args(names)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1) as u16,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn top_hit(d: &Daemon, store: &str, q: &str) -> (String, u64, String) {
    let (st, v) = search(d, 0, store, q);
    assert_eq!(st, 200, "{v}\n{}", d.log());
    let r = &v["data"][0];
    (
        r["file_id"].as_str().unwrap().to_string(),
        r["chunk_index"].as_u64().unwrap(),
        r["content"][0]["text"].as_str().unwrap().to_string(),
    )
}

#[test]
fn the_index_is_rebuilt_from_the_sealed_rows_and_a_killed_ingest_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let model = minilm_gguf(tmp.path());
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let key = tmp.path().join("master.key");
    inhouse::crypto::generate_key_file(&key).unwrap();
    let cfg = tmp.path().join("inhouse.toml");
    std::fs::write(&cfg, "[knowledge]\nembedding-model = \"minilm\"\n").unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let models = [("minilm", model.as_path())];
    let q = "What is the maximum range of the Tidewatch S4?";

    let mut d = Daemon::start_in(&state, &key, &models, &["--config", &cfg]);
    let (rc, out) = build_collection(&d.socket, &["tidewatch-s4.md", "facilities.md"], true);
    assert_eq!(rc, 0, "{out}");
    let store = out.lines().next().unwrap().to_string();
    assert_eq!(
        out.lines().skip(1).collect::<Vec<_>>(),
        ["completed", "completed"]
    );
    let before = top_hit(&d, &store, q);
    assert!(before.2.contains("320 metres"), "{before:?}");
    assert!(d.terminate().success());

    // A new process finds the same chunk: the index came back from the sealed rows.
    let mut d = Daemon::start_in(&state, &key, &models, &["--config", &cfg]);
    assert!(
        d.log()
            .contains("knowledge index built from the sealed rows"),
        "{}",
        d.log()
    );
    assert_eq!(top_hit(&d, &store, q), before);
    assert!(d.terminate().success());

    // Killed just before an ingest commits: at the next start the file is ingested again.
    let socket = state.join("inhouse.sock");
    let mut armed = Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .arg("--key-file")
        .arg(&key)
        .args(["--threads", "2", "--config", &cfg])
        .arg("--model")
        .arg(format!("minilm={}", model.display()))
        .env("INHOUSE_FAULT", "ingest.before_commit")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(120, "the armed daemon listens", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let (_, out) = build_collection(&socket, &["leave-policy.md"], false);
    let killed = armed.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9),
        "{out}"
    );
    let store2 = out.lines().next().unwrap().to_string();
    let d = Daemon::start_in(&state, &key, &models, &["--config", &cfg]);
    wait_until(120, "the interrupted ingest completes", || {
        let (_, v) = as_uid(&d, 0, "GET", &format!("/v1/vector_stores/{store2}"), None);
        v["file_counts"]["completed"] == 1
    });
    let hit = top_hit(
        &d,
        &store2,
        "How many days of paid annual leave do employees get?",
    );
    assert!(hit.2.contains("27 days"), "{hit:?}");
    assert_eq!(top_hit(&d, &store, q), before);
}
