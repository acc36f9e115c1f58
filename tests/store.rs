//! The encrypted store, end to end: real SQLite files on disk, real keys; history, erasure and
//! tampering through the API in-process (over a scripted engine), and the daemon process itself
//! where keys, restarts, crashes, a full disk, retention and its log are what is tested.

mod common;

use common::*;
use hyper::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DB: &str = "inhouse.db";

async fn chat(c: &inhouse::client::Client, prompt: &str, max_tokens: u32) -> (u16, Value) {
    let body = chat_body(
        "smol",
        prompt,
        json!({"max_tokens": max_tokens, "temperature": 0}),
    );
    post(c, "/v1/chat/completions", &body.to_string()).await
}

async fn get(c: &inhouse::client::Client, path: &str) -> (u16, Value) {
    let (st, body) = c.raw(Method::GET, path, None).await.expect("request");
    (
        st.as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn record_id(v: &Value) -> i64 {
    v["inhouse_record_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no record id in {v}"))
}

fn db_files(dir: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| dir.join(format!("{DB}{s}")))
        .filter(|p| p.exists())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn sql(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join(DB)).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn new_key(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    inhouse::crypto::generate_key_file(&p).unwrap();
    p
}

fn cli(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inhouse"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_canary_in_prompts_never_reaches_the_disk_or_the_log() {
    let canary = "CANARY-7f3a9c1e-prompt-text";
    let mut d = Daemon::smol();
    rt().block_on(async {
        let c = d.client();
        let (st, v) = chat(&c, &format!("Repeat after me: {canary}"), 24).await;
        assert_eq!(st, 200, "{v}");
        let body = json!({"model": "smol", "prompt": canary, "max_tokens": 8, "stream": true});
        let (st, _, events) = post_stream(&c, "/v1/completions", &body).await;
        assert_eq!(st, 200);
        let last_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert!(last_chunk["inhouse_record_id"].as_i64().is_some());
        let body = json!({"model": "smol", "input": canary});
        assert_eq!(post(&c, "/v1/embeddings", &body.to_string()).await.0, 200);
        // The owner reads it back: it was stored, just not in the clear.
        let id = record_id(&v);
        let (st, rec) = get(&c, &format!("/v1/history/{id}")).await;
        assert_eq!(st, 200);
        assert!(rec["prompt"].to_string().contains(canary));
    });
    let dir = d.dir.clone();
    let check = |when: &str| {
        let files = db_files(&dir);
        assert!(files.iter().any(|f| f.ends_with(DB)));
        for f in files.iter().chain(std::iter::once(&dir.join("daemon.log"))) {
            let bytes = std::fs::read(f).unwrap();
            for enc in [canary.as_bytes().to_vec(), utf16le(canary)] {
                assert!(
                    !contains(&bytes, &enc),
                    "{when}: canary found in {}",
                    f.display()
                );
            }
        }
    };
    check("while running (WAL)");
    assert!(d.terminate().success());
    check("after shutdown");
    // The control: the same search finds clear metadata, so it can fail.
    let all: Vec<u8> = db_files(&d.dir)
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(contains(&all, b"smol"), "model names are stored in clear");
}

#[test]
fn history_lists_reads_and_deletes_only_the_callers_records() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let mut ids = vec![];
        for p in ["one", "two", "three"] {
            let (st, v) = chat(&c, p, 2).await;
            assert_eq!(st, 200, "{v}");
            ids.push(record_id(&v));
        }
        let (st, page) = get(&c, "/v1/history?limit=2").await;
        assert_eq!(st, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["id"], ids[2], "newest first");
        assert_eq!(data[0]["status"], "completed");
        assert!(data[0].get("prompt").is_none(), "lists carry metadata only");
        assert_eq!(page["has_more"], true);
        let next = page["next_before"].as_i64().unwrap();
        let (_, page2) = get(&c, &format!("/v1/history?limit=2&before={next}")).await;
        assert_eq!(page2["data"][0]["id"], ids[0]);
        assert_eq!(page2["has_more"], false);

        let (st, rec) = get(&c, &format!("/v1/history/{}", ids[1])).await;
        assert_eq!(st, 200);
        assert_eq!(rec["prompt"][0]["content"], "two");
        assert_eq!(rec["model"], "smol");
        assert!(rec["response"].is_string());

        let (st, _) = c
            .raw(Method::DELETE, &format!("/v1/history/{}", ids[1]), None)
            .await
            .unwrap();
        assert_eq!(st.as_u16(), 200);
        let (st, v) = get(&c, &format!("/v1/history/{}", ids[1])).await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
        let (st, _) = get(&c, "/v1/history?limit=0").await;
        assert_eq!(st, 400);
    });
    // The CLI lists the two records left.
    let out = cli(&d.socket, &["history", "list"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

#[test]
fn history_list_prints_dates_and_its_json_is_the_api_page() {
    let d = TestServer::start();
    let id = rt().block_on(async { record_id(&chat(&d.client(), "hello", 2).await.1) });
    let (_, api) = rt().block_on(get(&d.client(), "/v1/history?limit=50"));
    let out = cli(&d.socket, &["history", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page, api, "--json prints the API's answer");
    assert_eq!(page["data"][0]["id"], id);
    assert!(page["data"][0]["created_at"].is_i64(), "{page}");
    // Without --json, the time is a date, not Unix seconds.
    let out = cli(&d.socket, &["history", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let when = text.split('\t').nth(1).unwrap_or_default();
    assert!(when.len() == 23 && when.ends_with(" UTC"), "{text}");
}

#[test]
fn another_users_records_are_invisible() {
    let d = TestServer::with_config("[roles]\nuser-uids = [4242]\n");
    d.open_to_all();
    let id = rt().block_on(async { record_id(&chat(&d.client(), "root's secret", 2).await.1) });
    let as_4242 = |args: &[&str]| inhouse_as(4242, &d.socket, args);
    let out = as_4242(&["history", "show", &id.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = as_4242(&["history", "rm", &id.to_string()]);
    assert!(!out.status.success());
    let out = as_4242(&["history", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    // Admin routes are refused to a plain user.
    let out = as_4242(&["admin", "erase", "--uid", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    // Root's record is intact.
    let (st, _) = rt().block_on(get(&d.client(), &format!("/v1/history/{id}")));
    assert_eq!(st, 200);
    // The refusal is in the audit log, with the uid and the path.
    let out = cli(&d.socket, &["admin", "audit", "export"]);
    let denied: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["actor_uid"], 4242);
    assert!(
        denied[0]["detail_json"]
            .as_str()
            .unwrap()
            .contains("/admin/erase"),
        "{denied:?}"
    );
}

#[test]
fn a_damaged_ciphertext_fails_alone_and_a_moved_one_fails_too() {
    let d = TestServer::start();
    rt().block_on(async {
        let c = d.client();
        let mut ids = vec![];
        for p in ["alpha", "beta", "gamma"] {
            ids.push(record_id(&chat(&c, p, 2).await.1));
        }
        {
            let db = sql(&d.dir);
            // Flip one byte in the middle of alpha's sealed response.
            let mut ct: Vec<u8> = db
                .query_row("SELECT response_ct FROM requests WHERE id = ?1", [ids[0]], |r| r.get(0))
                .unwrap();
            let mid = ct.len() / 2;
            ct[mid] ^= 0x01;
            db.execute("UPDATE requests SET response_ct = ?1 WHERE id = ?2", rusqlite::params![ct, ids[0]])
                .unwrap();
            // Move beta's sealed prompt onto gamma's row.
            db.execute(
                "UPDATE requests SET prompt_ct = (SELECT prompt_ct FROM requests WHERE id = ?1) WHERE id = ?2",
                [ids[1], ids[2]],
            )
            .unwrap();
        }
        let (st, v) = get(&c, &format!("/v1/history/{}", ids[0])).await;
        assert_eq!(st, 500, "{v}");
        assert_eq!(v["error"]["type"], "integrity_error", "{v}");
        assert_eq!(v["error"]["code"], "integrity_error");
        let (st, v) = get(&c, &format!("/v1/history/{}", ids[2])).await;
        assert_eq!((st, v["error"]["type"].as_str()), (500, Some("integrity_error")), "{v}");
        let (st, v) = get(&c, &format!("/v1/history/{}", ids[1])).await;
        assert_eq!(st, 200, "the untouched record still reads: {v}");
        assert_eq!(v["prompt"][0]["content"], "beta");
        let (st, _) = chat(&c, "still serving?", 2).await;
        assert_eq!(st, 200);
    });
}

#[test]
fn a_wrong_or_exposed_key_stops_the_daemon_with_status_78() {
    let dir = tempfile::tempdir().unwrap();
    let good = new_key(dir.path(), "good.key");
    let mut d = Daemon::start_in(dir.path(), &good, &[("smol", &smollm2())], &[]);
    assert!(d.terminate().success());
    let run = |key: &Path| run_inhoused(dir.path(), key, &format!("smol={}", smollm2().display()));
    let wrong = new_key(dir.path(), "wrong.key");
    let out = run(&wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("key"), "{err}");
    assert!(
        !dir.path().join("s.sock").exists(),
        "no socket before the key is accepted"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&good);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("chmod 600") || err.contains("0600") || err.contains("permission"),
        "{err}"
    );
    // No key at all.
    let out = Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--model")
        .arg(format!("smol={}", smollm2().display()))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gen-key"));
}

/// A downgrade: a database a later release migrated is refused with status 78, before any
/// socket, by a message naming the release it needs; the file is left as it was.
#[test]
fn a_database_from_a_newer_release_stops_the_daemon_with_78_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "k.key");
    let mut d = Daemon::start_in(dir.path(), &key, &[("smol", &smollm2())], &[]);
    assert!(d.terminate().success());
    let next = inhouse::storage::SCHEMA_VERSION + 1;
    {
        // What a later release leaves behind: one more schema step, in the history.
        let conn = sql(dir.path());
        conn.execute("INSERT INTO schema_history VALUES (?1, 0, '9.4.1')", [next])
            .unwrap();
        conn.pragma_update(None, "user_version", next).unwrap();
    }
    let out = run_inhoused(dir.path(), &key, &format!("smol={}", smollm2().display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("install inhouse 9.4.1 or newer"), "{err}");
    assert!(err.contains(&format!("schema version {next}")), "{err}");
    assert!(
        !dir.path().join("s.sock").exists(),
        "no socket for a refused store"
    );
    let version: u32 = sql(dir.path())
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, next, "the newer database is left untouched");
}

#[test]
fn rotation_then_restart_with_only_the_new_key_reads_everything() {
    let dir = tempfile::tempdir().unwrap();
    let old = new_key(dir.path(), "old.key");
    let mut d = Daemon::start_in(dir.path(), &old, &[("smol", &smollm2())], &[]);
    let ids: Vec<i64> = rt().block_on(async {
        let mut ids = vec![];
        for p in ["first", "second", "third"] {
            ids.push(record_id(&chat(&d.client(), p, 2).await.1));
        }
        ids
    });
    let new = dir.path().join("new.key");
    let out = cli(&d.socket, &["admin", "gen-key", new.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        &d.socket,
        &[
            "admin",
            "rotate-key",
            "--new-key-file",
            new.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"]["finished"], true, "{status}");
    assert!(d.terminate().success());

    let d = Daemon::start_in(dir.path(), &new, &[("smol", &smollm2())], &[]);
    rt().block_on(async {
        for (id, p) in ids.iter().zip(["first", "second", "third"]) {
            let (st, v) = get(&d.client(), &format!("/v1/history/{id}")).await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["prompt"][0]["content"], p);
        }
    });
    drop(d);
    let out = Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--key-file")
        .arg(&old)
        .arg("--model")
        .arg(format!("smol={}", smollm2().display()))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "the retired key no longer opens the store"
    );
}

#[test]
fn erasing_a_uid_shreds_its_key_and_rows() {
    let d = TestServer::with_config("[roles]\nuser-uids = [4242]\n");
    d.open_to_all();
    for p in ["Say one", "Say two"] {
        let out = inhouse_as(4242, &d.socket, &["run", "smol", p, "--max-tokens", "2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Let the stream's record land.
    std::thread::sleep(Duration::from_millis(300));
    let (wrapped, n): (Vec<u8>, i64) = {
        let db = sql(&d.dir);
        let w = db
            .query_row(
                "SELECT wrapped_dek FROM users_keys WHERE uid = 4242",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let n = db
            .query_row("SELECT COUNT(*) FROM requests WHERE uid = 4242", [], |r| {
                r.get(0)
            })
            .unwrap();
        (w, n)
    };
    assert_eq!(n, 2);
    let all = || -> Vec<u8> {
        db_files(&d.dir)
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect()
    };
    assert!(
        contains(&all(), &wrapped),
        "the wrapped key is in the files before erasure"
    );
    let out = cli(&d.socket, &["admin", "erase", "--uid", "4242"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["requests_deleted"], 2, "{report}");
    assert!(
        !contains(&all(), &wrapped),
        "wrapped key bytes remain in the database or WAL"
    );
    let db = sql(&d.dir);
    let left: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM users_keys WHERE uid = 4242",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    let rows: i64 = db
        .query_row("SELECT COUNT(*) FROM requests WHERE uid = 4242", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, 0);
}

#[test]
fn audit_verify_passes_then_names_a_tampered_row() {
    let d = Daemon::smol();
    rt().block_on(async {
        for p in ["a", "b", "c"] {
            assert_eq!(chat(&d.client(), p, 2).await.0, 200);
        }
    });
    let out = cli(&d.socket, &["admin", "audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let export = dir_file(&d.dir, "audit.jsonl");
    let out = cli(
        &d.socket,
        &[
            "admin",
            "audit",
            "export",
            "--out",
            export.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let lines: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["kind"].as_str()).collect();
    assert!(kinds.contains(&"daemon_start"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "request").count(),
        3,
        "{kinds:?}"
    );
    assert!(
        !std::fs::read_to_string(&export).unwrap().contains("\"a\""),
        "no prompt text in the audit log"
    );
    // Tamper with the detail of the second request event.
    let seq: i64 = sql(&d.dir)
        .query_row(
            "SELECT seq FROM audit WHERE kind = 'request' ORDER BY seq LIMIT 1 OFFSET 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    sql(&d.dir)
        .execute(
            "UPDATE audit SET detail_json = '{\"id\":999}' WHERE seq = ?1",
            [seq],
        )
        .unwrap();
    let out = cli(&d.socket, &["admin", "audit", "verify"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["report"]["first_fault"]["seq"], seq, "{v}");
}

fn dir_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn sigkill_under_write_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "k");
    let mut acknowledged: Vec<i64> = vec![];
    let rounds = 5;
    for round in 0..rounds {
        let d = Daemon::start_in(dir.path(), &key, &[("smol", &smollm2())], &[]);
        let socket = d.socket.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Four writers, each sending tiny requests until the daemon dies.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let socket = socket.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut ids = vec![];
                    let c = inhouse::client::Client::new(&socket);
                    let rt = rt();
                    for i in 0.. {
                        let body = json!({"model": "smol", "max_tokens": 1,
                            "messages": [{"role": "user", "content": format!("writer {w} request {i}")}]});
                        let r = rt.block_on(c.raw(
                            Method::POST,
                            "/v1/chat/completions",
                            Some(body.to_string().into()),
                        ));
                        // Acknowledged = a complete 200 answer carrying the record id. A
                        // connection cut by the kill ends this writer.
                        match r {
                            Ok((st, bytes)) if st.as_u16() == 200 => {
                                let v: Value = serde_json::from_slice(&bytes).expect("a complete answer");
                                ids.push(record_id(&v));
                                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            _ => break,
                        }
                    }
                    ids
                })
            })
            .collect();
        // Kill at a pseudo-random moment once writes are flowing: after 1..=4 acknowledged
        // records of this round, plus 0..250 ms (so some requests are mid-write).
        let wait_for = 1 + round % 4;
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.load(std::sync::atomic::Ordering::SeqCst) < wait_for {
            assert!(Instant::now() < deadline, "no writes acknowledged in 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(((round * 7919 + 1237) % 250) as u64));
        let mut d = d;
        d.child.kill().unwrap(); // SIGKILL
        d.child.wait().unwrap();
        for w in writers {
            acknowledged.extend(w.join().expect("writer"));
        }
    }
    eprintln!(
        "{} acknowledged records over {rounds} kills",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= rounds,
        "load too light: {} records",
        acknowledged.len()
    );
    let ok: String = sql(dir.path())
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let d = Daemon::start_in(dir.path(), &key, &[("smol", &smollm2())], &[]);
    rt().block_on(async {
        for id in &acknowledged {
            let (st, v) = get(&d.client(), &format!("/v1/history/{id}")).await;
            assert_eq!(st, 200, "acknowledged record {id} is missing: {v}");
        }
    });
}

#[test]
fn disk_full_is_reported_and_writes_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let key = new_key(dir.path(), "k");
    let socket = dir.path().join("s.sock");
    // The state directory is a 3 MiB tmpfs in a private mount namespace.
    let script = format!(
        "mount -t tmpfs -o size=3m tmpfs {} && exec {} --socket {} --state-dir {} --key-file {} --model smol={} --threads 2 --ctx-size 1024",
        state.display(),
        env!("CARGO_BIN_EXE_inhoused"),
        socket.display(),
        state.display(),
        key.display(),
        smollm2().display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .expect("unshare (util-linux) runs as root");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(dir.path().join("log")).unwrap()
        );
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The daemon's view of its state directory, through its own mount namespace.
    let inside = PathBuf::from(format!("/proc/{}/root{}", child.id(), state.display()));
    let c = inhouse::client::Client::new(&socket);
    rt().block_on(async {
        assert_eq!(chat(&c, "before", 1).await.0, 200);
        // Fill the tmpfs.
        let filler = inside.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        use std::io::Write;
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        drop(f);
        let long = "x ".repeat(400);
        let mut saw_full = false;
        for _ in 0..20 {
            let (st, v) = chat(&c, &long, 1).await;
            if st == 507 {
                assert_eq!(v["error"]["code"], "storage_full", "{v}");
                saw_full = true;
                break;
            }
        }
        assert!(saw_full, "the store never reported a full disk");
        let (st, _) = get(&c, "/health").await;
        assert_eq!(st, 200, "the daemon keeps serving");
        std::fs::remove_file(&filler).unwrap();
        let (st, v) = chat(&c, "after", 1).await;
        assert_eq!(st, 200, "writes resume: {v}");
        let (st, _) = get(&c, &format!("/v1/history/{}", record_id(&v))).await;
        assert_eq!(st, 200);
    });
    let ok: String = rusqlite::Connection::open(inside.join(DB))
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn retention_purges_old_records_on_schedule() {
    let d = Daemon::smol_with_config("retention-days = 7\nretention-check-secs = 1\n");
    rt().block_on(async {
        let old = record_id(&chat(&d.client(), "old", 1).await.1);
        let fresh = record_id(&chat(&d.client(), "fresh", 1).await.1);
        sql(&d.dir)
            .execute(
                "UPDATE requests SET created_at = created_at - 8 * 86400 WHERE id = ?1",
                [old],
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (st, _) = get(&d.client(), &format!("/v1/history/{old}")).await;
            if st == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "the old record was not purged");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            get(&d.client(), &format!("/v1/history/{fresh}")).await.0,
            200
        );
    });
}
