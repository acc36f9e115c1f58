//! Backup and restore, end to end with the real binaries: `inhouse admin backup` while the
//! daemon serves requests, `backup verify`, `inhoused --restore` onto a fresh state directory and
//! a daemon started there (every record, model and audit event back, `audit verify` ok, one
//! `restored` event); the refusals of restore (wrong key, truncated, altered, non-empty target:
//! each a clear message, the target unchanged); a non-admin refused; kills at the restore's
//! crash points (`inhouse::storage::backup::POINTS`).

mod common;

use common::*;
use hyper::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

async fn chat(c: &inhouse::client::Client, prompt: &str) -> (u16, Value) {
    let body = chat_body("smol", prompt, json!({"max_tokens": 8, "temperature": 0}));
    post(c, "/v1/chat/completions", &body.to_string()).await
}

async fn get_json(c: &inhouse::client::Client, path: &str) -> Value {
    let (status, body) = c.raw(Method::GET, path, None).await.unwrap();
    assert_eq!(
        status.as_u16(),
        200,
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

/// The audit log as parsed JSON lines.
fn audit_rows(c: &inhouse::client::Client) -> Vec<Value> {
    let body = rt().block_on(c.audit_export()).unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn restore(archive: &Path, dir: &Path, key: &Path) -> std::process::Output {
    restore_env(archive, dir, key, None)
}

fn restore_env(
    archive: &Path,
    dir: &Path,
    key: &Path,
    fault: Option<&str>,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inhoused"));
    cmd.arg("--restore")
        .arg(archive)
        .arg("--state-dir")
        .arg(dir)
        .arg("--key-file")
        .arg(key);
    if let Some(f) = fault {
        cmd.env("INHOUSE_FAULT", f);
    }
    cmd.output().expect("run inhoused --restore")
}

/// Every name in `dir`'s parent that a restore into `dir` may have left.
fn leftovers(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_str().unwrap();
    std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(&format!(".{name}.restore-")))
        .collect()
}

fn restored_events(rows: &[Value]) -> Vec<&Value> {
    rows.iter().filter(|r| r["kind"] == "restored").collect()
}

fn new_key(path: &Path) {
    inhouse::crypto::generate_key_file(path).unwrap();
}

#[test]
fn a_backup_taken_while_serving_restores_every_record_model_and_audit_event() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("master.key");
    new_key(&key);
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut d = Daemon::start_in(&state, &key, &[("smol", &smollm2())], &[]);
    let c = d.client();
    ok(&cli(
        &d,
        &[
            "models",
            "import",
            smollm2().to_str().unwrap(),
            "--name",
            "stored",
        ],
    ));
    rt().block_on(async {
        for p in ["Name a colour.", "Say hello.", "Count to three."] {
            let (status, v) = chat(&c, p).await;
            assert_eq!(status, 200, "{v}");
        }
    });

    // A finished job (its row, state and result are in the database).
    let job_id = {
        let f = tmp.path().join("docs.jsonl");
        let text: String = (0..30)
            .map(|i| {
                json!({"text": format!("Document {i}: the ledger of harbour {i}.")}).to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(&f, text).unwrap();
        let v = rt()
            .block_on(c.upload("/admin/jobs/data?format=jsonl", &f, &[]))
            .unwrap();
        let data = v["dataset"]["id"].as_str().unwrap().to_string();
        let (status, v) = rt().block_on(post(
            &c,
            "/admin/jobs",
            &json!({"kind": "prepare", "data": data}).to_string(),
        ));
        assert_eq!(status, 202, "{v}");
        let id = v["job"]["id"].as_i64().unwrap();
        wait_until(60, "the prepare job to finish", || {
            let j = rt().block_on(get_json(&c, &format!("/admin/jobs/{id}")));
            !matches!(j["job"]["state"].as_str(), Some("queued" | "running"))
        });
        id
    };
    let job_before = rt().block_on(get_json(&c, &format!("/admin/jobs/{job_id}")));
    assert_eq!(job_before["job"]["state"], "succeeded", "{job_before}");

    // Requests in flight during the whole backup.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, done, failed, c) = (stop.clone(), done.clone(), failed.clone(), d.client());
        std::thread::spawn(move || {
            rt().block_on(async {
                while !stop.load(Ordering::SeqCst) {
                    let (status, _) = chat(&c, "Say one word.").await;
                    let n = if status == 200 { &done } else { &failed };
                    n.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
    };
    while done.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let archive = tmp.path().join("backup.tar");
    let out = ok(&cli(
        &d,
        &[
            "admin",
            "backup",
            "--out",
            archive.to_str().unwrap(),
            "--with-models",
        ],
    ));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the backup"
    );
    let made: Value = serde_json::from_str(&out).unwrap();
    // The model file is inside.
    assert!(
        std::fs::metadata(&archive).unwrap().len() > std::fs::metadata(smollm2()).unwrap().len()
    );
    assert!(!Path::new(&format!("{}.partial", archive.display())).exists());

    let verified = ok(&inhouse_at(
        &d.socket,
        &[
            "admin",
            "backup",
            "verify",
            archive.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ],
    ));
    let verified: Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(verified["macs_checked"], true, "{verified}");
    assert_eq!(verified["models_included"], 1, "{verified}");
    let sha = verified["archive_sha256"].as_str().unwrap().to_string();
    assert_eq!(made["archive_sha256"], sha.as_str());
    let head_seq = verified["audit_head"]["seq"].as_i64().unwrap();

    // What the original holds, as of the snapshot (the load went on after it).
    let rows_before = audit_rows(&c);
    let backup_event = rows_before
        .iter()
        .find(|r| r["kind"] == "backup")
        .expect("the backup is audited");
    let detail: Value =
        serde_json::from_str(backup_event["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(detail["archive_sha256"], sha.as_str(), "{detail}");
    let history_before = rt().block_on(get_json(&c, "/v1/history?limit=1000"));
    let records_before: std::collections::BTreeMap<i64, Value> = ids(&history_before)
        .into_iter()
        .map(|id| {
            (
                id,
                rt().block_on(get_json(&c, &format!("/v1/history/{id}"))),
            )
        })
        .collect();
    d.terminate();

    let target = tmp.path().join("restored");
    let out = restore(&archive, &target, &key);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(leftovers(&target).is_empty());
    assert!(target.join("restore-pending.json").is_file());

    let mut r = Daemon::start_in(&target, &key, &[("smol", &smollm2())], &[]);
    let rc = r.client();
    let rows = audit_rows(&rc);
    // The chain up to the snapshot's head is the original's, row for row.
    let upto: Vec<&Value> = rows_before
        .iter()
        .filter(|x| x["seq"].as_i64().unwrap() <= head_seq)
        .collect();
    assert_eq!(
        rows.iter().take(upto.len()).collect::<Vec<_>>(),
        upto,
        "the restored chain differs"
    );
    let restored = restored_events(&rows);
    assert_eq!(restored.len(), 1, "{rows:#?}");
    let detail: Value = serde_json::from_str(restored[0]["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(detail["archive_sha256"], sha.as_str());
    assert!(!target.join("restore-pending.json").exists());
    assert!(rt().block_on(rc.audit_verify()).unwrap().ok);

    // Every record of the snapshot reads back, texts included, as it was.
    let history = rt().block_on(get_json(&rc, "/v1/history?limit=1000"));
    let restored_ids = ids(&history);
    assert!(restored_ids.len() >= 3, "{history}");
    for id in &restored_ids {
        let b = rt().block_on(get_json(&rc, &format!("/v1/history/{id}")));
        assert_eq!(records_before.get(id), Some(&b), "record {id}");
    }
    // The three made before the backup are all there.
    let first: Vec<i64> = records_before.keys().take(3).copied().collect();
    assert!(
        first.iter().all(|id| restored_ids.contains(id)),
        "{first:?} {restored_ids:?}"
    );
    // The job is back as it was.
    let job_after = rt().block_on(get_json(&rc, &format!("/admin/jobs/{job_id}")));
    assert_eq!(job_after["job"]["state"], job_before["job"]["state"]);
    assert_eq!(job_after["job"]["result"], job_before["job"]["result"]);
    assert_eq!(job_after["job"]["params"], job_before["job"]["params"]);
    // The stored model is back, file included, and serves.
    let models = ok(&cli(&r, &["models", "list", "--json"]));
    assert!(models.contains("stored"), "{models}");
    rt().block_on(async {
        let body = chat_body("stored", "Say hi.", json!({"max_tokens": 4}));
        let (status, v) = post(&rc, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(status, 200, "{v}");
    });

    // A second start does not append the event again.
    r.terminate();
    let r = Daemon::start_in(&target, &key, &[("smol", &smollm2())], &[]);
    assert_eq!(restored_events(&audit_rows(&r.client())).len(), 1);
}

/// The record ids of a history page.
fn ids(h: &Value) -> Vec<i64> {
    h["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_i64().unwrap())
        .collect()
}

/// A small daemon (no model) with a few audit rows, and its archive.
fn small_backup(tmp: &Path) -> (PathBuf, PathBuf, Daemon) {
    let key = tmp.join("master.key");
    new_key(&key);
    let state = tmp.join("state");
    std::fs::create_dir(&state).unwrap();
    let d = Daemon::start_in(&state, &key, &[], &[]);
    let archive = tmp.join("small.tar");
    ok(&cli(
        &d,
        &["admin", "backup", "--out", archive.to_str().unwrap()],
    ));
    (archive, key, d)
}

#[test]
fn restore_refuses_a_wrong_key_a_damaged_archive_and_a_non_empty_directory_changing_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (archive, key, d) = small_backup(tmp.path());
    // Not an admin: refused.
    let (status, body) = request_as_other_user(&d, "GET", "/admin/backup", None);
    assert_eq!(status, 403, "{body}");
    drop(d);

    let refused = |archive: &Path, target: &Path, key: &Path, want: &str| {
        let out = restore(archive, target, key);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains(want), "{want:?} not in {err}");
        assert!(err.contains("nothing was changed"), "{err}");
        assert!(leftovers(target).is_empty(), "{:?}", leftovers(target));
        err
    };

    // Wrong key: absent target stays absent.
    let target = tmp.path().join("target");
    let other = tmp.path().join("other.key");
    new_key(&other);
    refused(&archive, &target, &other, "wrong key");
    assert!(!target.exists());

    // Truncated.
    let bytes = std::fs::read(&archive).unwrap();
    let cut = tmp.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    refused(&cut, &target, &key, "truncated");
    assert!(!target.exists());

    // One byte altered inside the database entry (after its 512-byte header).
    let mut altered = bytes.clone();
    altered[512 + 20_000] ^= 0x55;
    let alt = tmp.path().join("altered.tar");
    std::fs::write(&alt, &altered).unwrap();
    refused(&alt, &target, &key, "altered");
    assert!(!target.exists());
    let err = failed(&inhouse_at(
        &tmp.path().join("none.sock"),
        &["admin", "backup", "verify", alt.to_str().unwrap()],
    ));
    assert!(err.contains("does not verify"), "{err}");
    // One byte of the manifest altered: only the key's MAC can tell.
    let mut altered = bytes.clone();
    let at = bytes
        .windows(13)
        .rposition(|w| w == b"\"created_at\":")
        .expect("manifest in the archive")
        + 15;
    altered[at] = if altered[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&alt, &altered).unwrap();
    refused(&alt, &target, &key, "altered");

    // A non-empty target: its file stays as it was.
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "mine").unwrap();
    refused(&archive, &target, &key, "not empty");
    assert_eq!(
        std::fs::read_to_string(target.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1);

    // An empty existing directory is fine.
    std::fs::remove_file(target.join("keep.txt")).unwrap();
    let out = restore(&archive, &target, &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_restore_killed_before_its_rename_changes_nothing_and_the_restored_event_survives_a_kill() {
    for p in [
        "restore.half_extracted",
        "restore.before_rename",
        "restore.after_append",
    ] {
        assert!(inhouse::storage::backup::POINTS.contains(&p));
    }
    let tmp = tempfile::tempdir().unwrap();
    let (archive, key, mut d) = small_backup(tmp.path());
    d.terminate();
    let target = tmp.path().join("target");
    for point in ["restore.half_extracted", "restore.before_rename"] {
        let out = restore_env(&archive, &target, &key, Some(point));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!target.exists(), "{point}");
    }
    // The next restore clears what the killed one left and succeeds.
    let out = restore(&archive, &target, &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(leftovers(&target).is_empty());

    // Killed right after the `restored` event commits, before the marker goes.
    let out = Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--socket")
        .arg(target.join("s.sock"))
        .arg("--state-dir")
        .arg(&target)
        .arg("--key-file")
        .arg(&key)
        .env("INHOUSE_FAULT", "restore.after_append")
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(target.join("restore-pending.json").is_file());
    let r = Daemon::start_in(&target, &key, &[], &[]);
    let rows = audit_rows(&r.client());
    assert_eq!(restored_events(&rows).len(), 1, "{rows:#?}");
    assert!(!target.join("restore-pending.json").exists());
    assert!(rt().block_on(r.client().audit_verify()).unwrap().ok);
}

/// Starts `inhoused` in `dir` armed with `fault`; returns once its socket accepts.
fn start_armed(dir: &Path, key: &Path, fault: &str) -> std::process::Child {
    let socket = dir.join("inhouse.sock");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir)
        .arg("--key-file")
        .arg(key)
        .env("INHOUSE_FAULT", fault)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "inhoused exited early");
        assert!(std::time::Instant::now() < deadline, "inhoused not ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

#[test]
fn a_backup_killed_at_any_of_its_points_leaves_no_file_and_the_daemon_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("master.key");
    new_key(&key);
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    drop(Daemon::start_in(&state, &key, &[], &[]));
    for point in [
        "backup.after_snapshot",
        "backup.mid_stream",
        "backup.before_audit",
    ] {
        assert!(inhouse::storage::backup::POINTS.contains(&point));
        let mut child = start_armed(&state, &key, point);
        let archive = tmp.path().join(format!("{point}.tar"));
        let err = failed(&inhouse_at(
            &state.join("inhouse.sock"),
            &["admin", "backup", "--out", archive.to_str().unwrap()],
        ));
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{point}: {err}"
        );
        assert!(!archive.exists(), "{point}");
        assert!(
            !Path::new(&format!("{}.partial", archive.display())).exists(),
            "{point}"
        );
        // The next start clears the snapshot left behind, the chain verifies, no `backup`
        // event was appended, and a backup works.
        let d = Daemon::start_in(&state, &key, &[], &[]);
        assert!(!state.join(".backup-tmp").exists(), "{point}");
        let c = d.client();
        assert!(rt().block_on(c.audit_verify()).unwrap().ok, "{point}");
        let backups = audit_rows(&c)
            .iter()
            .filter(|r| r["kind"] == "backup")
            .count();
        assert_eq!(backups, 0, "{point}");
        drop(d);
    }
    let d = Daemon::start_in(&state, &key, &[], &[]);
    let archive = tmp.path().join("ok.tar");
    ok(&cli(
        &d,
        &["admin", "backup", "--out", archive.to_str().unwrap()],
    ));
    assert!(archive.is_file());
}

#[test]
fn without_models_the_files_are_listed_by_digest_and_the_config_and_trusted_keys_come_back_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("master.key");
    new_key(&key);
    let trusted = tmp.path().join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    ok(&inhouse_at(
        Path::new("/nonexistent/inhouse.sock"),
        &[
            "models",
            "keygen",
            "--dir",
            trusted.to_str().unwrap(),
            "--name",
            "publisher",
        ],
    ));
    std::fs::remove_file(trusted.join("publisher.key")).unwrap();
    let cfg = tmp.path().join("inhouse.toml");
    let cfg_text = format!("trusted-keys-dir = {:?}\n", trusted.to_str().unwrap());
    std::fs::write(&cfg, &cfg_text).unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut d = Daemon::start_in(&state, &key, &[], &["--config", cfg.to_str().unwrap()]);
    ok(&cli(
        &d,
        &[
            "models",
            "import",
            smollm2().to_str().unwrap(),
            "--name",
            "stored",
        ],
    ));
    let archive = tmp.path().join("lean.tar");
    ok(&cli(
        &d,
        &["admin", "backup", "--out", archive.to_str().unwrap()],
    ));
    d.terminate();
    assert!(
        std::fs::metadata(&archive).unwrap().len() < std::fs::metadata(smollm2()).unwrap().len()
    );
    let listing = Command::new("tar")
        .arg("tf")
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert_eq!(listing.lines().last(), Some("MANIFEST.json"), "{listing}");
    for want in [
        "state/inhouse.db",
        "state/models/manifests/stored.json",
        "etc/inhouse.toml",
        "etc/trusted-keys/publisher.pub",
    ] {
        assert!(
            listing.lines().any(|l| l == want),
            "{want} not in {listing}"
        );
    }
    assert!(!listing.contains("blobs/"), "{listing}");

    let target = tmp.path().join("restored");
    let out = restore(&archive, &target, &key);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let missing = &report["models_missing_files"][0];
    assert_eq!(missing["name"], "stored", "{report}");
    assert!(err.contains(missing["digest"].as_str().unwrap()), "{err}");
    assert_eq!(
        std::fs::read_to_string(target.join("restored-etc/inhouse.toml")).unwrap(),
        cfg_text
    );
    assert_eq!(
        std::fs::read(target.join("restored-etc/trusted-keys/publisher.pub")).unwrap(),
        std::fs::read(trusted.join("publisher.pub")).unwrap()
    );
    // With the file copied where the manifest says, the model serves again.
    let digest = missing["digest"].as_str().unwrap();
    let blob = target.join(format!("models/blobs/sha256-{digest}"));
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::copy(smollm2(), &blob).unwrap();
    let r = Daemon::start_in(&target, &key, &[], &["--config", cfg.to_str().unwrap()]);
    rt().block_on(async {
        let body = chat_body("stored", "Say hi.", json!({"max_tokens": 4}));
        let (status, v) = post(&r.client(), "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(status, 200, "{v}");
    });
}
