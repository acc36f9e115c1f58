//! The fault matrix: every operation that writes, killed (SIGKILL, through the crash points of
//! `inhouse::fault`, armed with `INHOUSE_FAULT=NAME[@N]`) at each of its steps, and run out of
//! disk space (its state directory a small tmpfs). After each run
//! the daemon is started again without the fault and the test checks what an admin relies on:
//! `PRAGMA integrity_check` is ok, `audit verify` is ok, every write the daemon acknowledged is
//! there, the interrupted operation is either finished or rolled back as its documentation says,
//! and the daemon serves.
//!
//! Each (operation, fault) pair runs `INHOUSE_FAULT_ROUNDS` times (default 1: CI); the N-th
//! round of a request-record kill dies at the N-th request, so longer runs move the kill along.
//! Every pair prints one `fault-matrix |` line (run with `--nocapture` to see the table).
//! Backup and restore kills are in `tests/backup.rs`; their disk-full runs are here.

mod common;

use common::*;
use hyper::Method;
use inhouse::client::Client;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DB: &str = "inhouse.db";
/// A second local user whose records an erase removes.
const OTHER: u32 = 65534;
/// The configuration of the sites where `OTHER` chats.
const OTHER_MAY_CHAT: &str = "[roles]\nuser-uids = [65534]\n";

fn rounds() -> u64 {
    std::env::var("INHOUSE_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// One line of the table the closing note gives (a failure panics before it is printed).
fn row(op: &str, fault: &str, runs: u64) {
    println!("fault-matrix | {op:<16} | {fault:<36} | runs {runs:>3} | failures 0");
}

/// A small tmpfs mounted for one test and unmounted (lazily) when dropped. Not in a private
/// mount namespace: SQLite resolves `/proc/PID/root/...` to the caller's own view, so the test
/// could not open the database the daemon sees there.
struct Holder {
    mount: PathBuf,
}

impl Holder {
    fn new(mount: &Path, size_kb: u64) -> Holder {
        std::fs::create_dir_all(mount).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_kb}k,mode=0700"),
                "tmpfs",
            ])
            .arg(mount)
            .status()
            .expect("mount (util-linux) runs as root");
        assert!(ok.success(), "the tmpfs could not be mounted");
        Holder {
            mount: mount.to_path_buf(),
        }
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Fills the tmpfs, then gives `leave` bytes back.
    fn fill(&self, leave: u64) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(leave)).unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// A state directory that outlives the daemons started on it.
struct Site {
    /// The tmpfs, first so that it is unmounted before the directory goes.
    ns: Option<Holder>,
    tmp: tempfile::TempDir,
    state: PathBuf,
    /// The socket's directory (open to other uids; the state directory stays private).
    run: PathBuf,
    /// The master key the store is under now.
    key: PathBuf,
    models: Vec<(String, PathBuf)>,
    config: Option<PathBuf>,
}

/// A daemon started by [`Site::start`]; SIGKILLed when dropped.
struct Run {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Site {
    fn new(models: &[(&str, PathBuf)], config: &str) -> Site {
        Site::make(models, config, None)
    }

    /// A site whose state directory is a `size_mb` tmpfs.
    fn on_tmpfs(models: &[(&str, PathBuf)], config: &str, size_mb: u32) -> Site {
        Site::make(models, config, Some(size_mb))
    }

    fn make(models: &[(&str, PathBuf)], config: &str, tmpfs: Option<u32>) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = tmp.path().join("state");
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let key = tmp.path().join("master.key");
        inhouse::crypto::generate_key_file(&key).unwrap();
        let config = (!config.is_empty()).then(|| {
            let p = tmp.path().join("inhouse.toml");
            std::fs::write(&p, config).unwrap();
            p
        });
        let ns = tmpfs.map(|mb| Holder::new(&state, u64::from(mb) * 1024));
        if ns.is_none() {
            std::fs::create_dir(&state).unwrap();
        }
        Site {
            models: models
                .iter()
                .map(|(n, p)| (n.to_string(), p.clone()))
                .collect(),
            tmp,
            state,
            run,
            key,
            config,
            ns,
        }
    }

    fn holder(&self) -> &Holder {
        self.ns.as_ref().expect("a tmpfs site")
    }

    fn socket(&self) -> PathBuf {
        self.run.join("inhouse.sock")
    }

    fn inhoused(&self) -> Command {
        Command::new(env!("CARGO_BIN_EXE_inhoused"))
    }

    /// Starts the daemon (armed with `fault` if given, under `key` if given, else the site's);
    /// returns once its socket accepts, or once it died (an armed daemon may die while
    /// starting: a retention purge runs at once).
    fn start_with(&self, fault: Option<&str>, key: Option<&Path>) -> Run {
        let log = self.tmp.path().join("daemon.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = self.inhoused();
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--key-file")
            .arg(key.unwrap_or(&self.key))
            .args(["--threads", "2", "--ctx-size", "1024"]);
        for (name, path) in &self.models {
            cmd.arg("--model").arg(format!("{name}={}", path.display()));
        }
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(f) = fault {
            cmd.env("INHOUSE_FAULT", f);
        }
        let child = cmd
            .env("INHOUSE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn inhoused");
        let mut r = Run {
            child,
            socket: self.socket(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if std::os::unix::net::UnixStream::connect(&r.socket).is_ok() {
                return r;
            }
            if let Some(status) = r.child.try_wait().unwrap() {
                assert!(
                    fault.is_some(),
                    "inhoused exited with {status} at start:\n{}",
                    r.log()
                );
                return r;
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", r.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(&self, fault: Option<&str>) -> Run {
        self.start_with(fault, None)
    }

    /// Runs a daemon that must refuse to start (under `key`): its exit code and stderr. Fails
    /// if it is still running after 60 s.
    fn start_to_exit(&self, key: &Path) -> (Option<i32>, String) {
        let err = self.tmp.path().join("refused.log");
        let mut child = self
            .inhoused()
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--key-file")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "inhoused started although it should have refused:\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status.code(),
            std::fs::read_to_string(&err).unwrap_or_default(),
        )
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.state.join(DB),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// What every run ends with: the daemon `r` (started without a fault) serves, the database
    /// is intact, the audit chain verifies and every acknowledged record reads back.
    fn check(&self, r: &Run, acked: &[i64], what: &str) {
        let ok: String = self
            .db()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{what}: integrity_check");
        let c = r.client();
        rt().block_on(async {
            let v = c.audit_verify().await.unwrap();
            assert!(v.ok, "{what}: audit verify: {v:?}");
            let (st, _) = c.raw(Method::GET, "/health", None).await.unwrap();
            assert_eq!(st.as_u16(), 200, "{what}: health");
            for id in acked {
                let (st, body) = c
                    .raw(Method::GET, &format!("/v1/history/{id}"), None)
                    .await
                    .unwrap();
                assert_eq!(
                    st.as_u16(),
                    200,
                    "{what}: acknowledged record {id} is gone: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        });
    }

    /// A chat as `OTHER`; its record must be acknowledged.
    fn chat_as_other(&self, prompt: &str) {
        let body = chat_body("smol", prompt, json!({"max_tokens": 1, "temperature": 0}));
        let (st, text) = request_as_uid(
            OTHER,
            &self.run,
            &self.socket(),
            "POST",
            "/v1/chat/completions",
            Some(&body.to_string()),
        );
        assert_eq!(st, 200, "{text}");
    }

    /// Runs `inhouse` against this site's socket.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        inhouse_at(&self.socket(), args)
    }
}

impl Run {
    fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// The daemon's log without llama.cpp's loading chatter.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("llama"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the armed daemon to die at its crash point.
    fn killed(mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the crash point was never reached:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{what}: {status}\n{}",
            self.log()
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One chat; `Err` when the connection gave no answer (the daemon died).
fn chat(c: &Client, prompt: &str) -> Result<(u16, Value), String> {
    let body = chat_body("smol", prompt, json!({"max_tokens": 1, "temperature": 0}));
    rt().block_on(c.raw(
        Method::POST,
        "/v1/chat/completions",
        Some(bytes::Bytes::from(body.to_string())),
    ))
    .map(|(st, b)| {
        (
            st.as_u16(),
            serde_json::from_slice(&b).unwrap_or(Value::Null),
        )
    })
    .map_err(|e| e.to_string())
}

/// One chat that must succeed; returns its record id.
fn chat_ok(c: &Client, prompt: &str) -> i64 {
    let (st, v) = chat(c, prompt).unwrap();
    assert_eq!(st, 200, "{v}");
    v["inhouse_record_id"].as_i64().expect("record id")
}

/// Chats until the store reports the full disk (SQLite may absorb a write or two in pages it
/// already holds); the daemon keeps serving.
fn until_storage_full(c: &Client) {
    let long = "x ".repeat(400);
    for _ in 0..30 {
        let (st, v) = chat(c, &long).unwrap();
        if st == 507 {
            assert_eq!(v["error"]["code"], "storage_full", "{v}");
            let (st, _) = rt().block_on(c.raw(Method::GET, "/health", None)).unwrap();
            assert_eq!(st.as_u16(), 200);
            return;
        }
        assert_eq!(st, 200, "{v}");
    }
    panic!("the store never reported the full disk");
}

fn smol() -> Vec<(&'static str, PathBuf)> {
    vec![("smol", smollm2())]
}

fn is_space_error(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    // "No space left on device", 507 `storage_full`, SQLite's "database or disk is full", the
    // daemon's "… is full".
    t.contains("no space") || t.contains("full")
}

#[test]
fn request_records_killed_at_their_commit_are_whole_or_absent_and_a_full_disk_is_507() {
    let site = Site::new(&smol(), "");
    let mut acked = Vec::new();
    for point in ["record.before_commit", "record.after_commit"] {
        for run in 1..=rounds() {
            let before = site_count_requests(&site);
            let r = site.start(Some(&format!("{point}@{run}")));
            let c = r.client();
            for i in 1..run {
                acked.push(chat_ok(&c, &format!("acked {point} {run} {i}")));
            }
            assert!(chat(&c, "the one that dies").is_err(), "{point}");
            r.killed(point);
            let after = site_count_requests(&site);
            // Before the commit nothing of the request is stored; after it, the whole record
            // (and its audit event, in the same transaction) is, though its answer was lost.
            let lost = i64::from(point.ends_with("after_commit"));
            assert_eq!(after, before + run as i64 - 1 + lost, "{point}@{run}");
            let r = site.start(None);
            site.check(&r, &acked, point);
            acked.push(chat_ok(&r.client(), "after the restart"));
        }
        row("request record", &format!("kill at {point}"), rounds());
    }

    let site = Site::on_tmpfs(&smol(), "", 24);
    for _ in 0..rounds() {
        let r = site.start(None);
        let c = r.client();
        let mut acked = vec![chat_ok(&c, "before the disk fills")];
        site.holder().fill(0);
        until_storage_full(&c);
        // Stopped, its WAL checkpointed away, then a start on the full disk: it stops with
        // 78 and says why (with its WAL still there SQLite may open, and the daemon serves
        // reads).
        drop(r);
        site.holder().free();
        rusqlite::Connection::open(site.state.join(DB))
            .unwrap()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        site.holder().fill(0);
        let (code, err) = site.start_to_exit(&site.key);
        assert_eq!(code, Some(78), "{err}");
        assert!(err.contains("is full"), "{err}");
        site.holder().free();
        let r = site.start(None);
        acked.push(chat_ok(&r.client(), "space is back"));
        drop(r);
        let r = site.start(None);
        site.check(&r, &acked, "record, disk full");
    }
    row("request record", "disk full", rounds());
}

fn site_count_requests(site: &Site) -> i64 {
    if site.state.join(DB).exists() {
        site.count("SELECT count(*) FROM requests")
    } else {
        0
    }
}

#[test]
fn an_erase_killed_or_out_of_space_is_finished_at_the_next_start_or_rolled_back() {
    let other_rows = "SELECT count(*) FROM requests WHERE uid = 65534";
    let other_keys = "SELECT count(*) FROM users_keys WHERE uid = 65534";
    let site = Site::new(&smol(), OTHER_MAY_CHAT);
    let mut acked = Vec::new();
    for point in [
        "erase.before_commit",
        "erase.after_key_destroyed",
        "erase.after_rows_purged",
    ] {
        for _ in 0..rounds() {
            let r = site.start(Some(point));
            acked.push(chat_ok(&r.client(), "mine"));
            site.chat_as_other("theirs");
            site.chat_as_other("theirs again");
            failed(&site.cli(&["admin", "erase", "--uid", "65534"]));
            r.killed(point);
            let r = site.start(None);
            site.check(&r, &acked, point);
            if point == "erase.before_commit" {
                // Rolled back: the key and the rows are as they were; the erase is run again.
                assert!(site.count(other_rows) >= 2, "{point}");
                assert_eq!(site.count(other_keys), 1, "{point}");
                ok(&site.cli(&["admin", "erase", "--uid", "65534"]));
            }
            // Finished (at start, from the erase_pending marker, or just now).
            assert_eq!(site.count(other_rows), 0, "{point}");
            assert_eq!(site.count(other_keys), 0, "{point}");
            assert_eq!(
                site.count("SELECT count(*) FROM meta WHERE key LIKE 'erase_pending%'"),
                0,
                "{point}"
            );
        }
        row("per-user erasure", &format!("kill at {point}"), rounds());
    }

    let site = Site::on_tmpfs(&smol(), OTHER_MAY_CHAT, 24);
    for _ in 0..rounds() {
        let r = site.start(None);
        let acked = vec![chat_ok(&r.client(), "mine")];
        site.chat_as_other("theirs");
        site.holder().fill(0);
        let out = site.cli(&["admin", "erase", "--uid", "65534"]);
        let how = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() || is_space_error(&how),
            "an erase on a full disk fails with a clear message: {how}"
        );
        site.holder().free();
        drop(r);
        let r = site.start(None);
        site.check(&r, &acked, "erase, disk full");
        ok(&site.cli(&["admin", "erase", "--uid", "65534"]));
        assert_eq!(site.count(other_rows), 0);
        assert_eq!(site.count(other_keys), 0);
    }
    row("per-user erasure", "disk full", rounds());
}

/// The key id a key file holds, as the database writes it.
fn key_id(path: &Path) -> String {
    inhouse::crypto::MasterKey::load(path)
        .unwrap()
        .id()
        .to_hex()
}

#[test]
fn a_key_rotation_killed_or_out_of_space_resumes_at_the_next_start_and_retires_the_old_key() {
    let mut site = Site::new(&smol(), OTHER_MAY_CHAT);
    let mut acked = Vec::new();
    let mut n = 0;
    for point in [
        "rotate.after_begin",
        "rotate.before_batch_commit",
        "rotate.after_batch",
    ] {
        for _ in 0..rounds() {
            n += 1;
            let new = site.tmp.path().join(format!("key-{n}"));
            inhouse::crypto::generate_key_file(&new).unwrap();
            let r = site.start(Some(point));
            acked.push(chat_ok(&r.client(), "mine"));
            site.chat_as_other("theirs");
            failed(&site.cli(&[
                "admin",
                "rotate-key",
                "--new-key-file",
                new.to_str().unwrap(),
            ]));
            r.killed(point);
            // The old key still opens the store; the start finishes the rotation.
            let r = site.start(None);
            site.check(&r, &acked, point);
            assert_eq!(
                site.count("SELECT count(*) FROM key_rotation"),
                0,
                "{point}"
            );
            let under: Vec<String> = {
                let db = site.db();
                let mut s = db
                    .prepare("SELECT DISTINCT key_id FROM users_keys")
                    .unwrap();
                let ids = s
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                ids
            };
            assert_eq!(under, vec![key_id(&new)], "{point}");
            drop(r);
            // From now on only the new key opens it.
            let old = std::mem::replace(&mut site.key, new);
            let (code, err) = site.start_to_exit(&old);
            assert_eq!(code, Some(78), "{point}: the old key: {err}");
            let r = site.start(None);
            site.check(&r, &acked, point);
        }
        row("key rotation", &format!("kill at {point}"), rounds());
    }

    let mut site = Site::on_tmpfs(&smol(), OTHER_MAY_CHAT, 24);
    for n in 0..rounds() {
        let new = site.tmp.path().join(format!("full-key-{n}"));
        inhouse::crypto::generate_key_file(&new).unwrap();
        let r = site.start(None);
        let acked = vec![chat_ok(&r.client(), "mine")];
        site.chat_as_other("theirs");
        site.holder().fill(0);
        let out = site.cli(&[
            "admin",
            "rotate-key",
            "--new-key-file",
            new.to_str().unwrap(),
        ]);
        let how = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "a rotation on a full disk cannot finish"
        );
        assert!(is_space_error(&how), "{how}");
        site.holder().free();
        drop(r);
        // The old key opens it; whatever had begun is finished at start, or nothing began.
        let r = site.start(None);
        site.check(&r, &acked, "rotation, disk full");
        assert_eq!(site.count("SELECT count(*) FROM key_rotation"), 0);
        let rotated = site.count(&format!(
            "SELECT count(*) FROM users_keys WHERE key_id = '{}'",
            key_id(&new)
        )) > 0;
        drop(r);
        if rotated {
            site.key = new;
        } else {
            let r = site.start(None);
            ok(&site.cli(&[
                "admin",
                "rotate-key",
                "--new-key-file",
                new.to_str().unwrap(),
            ]));
            drop(r);
            site.key = new;
        }
        let r = site.start(None);
        site.check(&r, &acked, "rotation, disk full, then the new key");
    }
    row("key rotation", "disk full", rounds());
}

fn backdate(site: &Site, id: i64) {
    let db = rusqlite::Connection::open(site.state.join(DB)).unwrap();
    db.execute(
        "UPDATE requests SET created_at = created_at - 8 * 86400 WHERE id = ?1",
        [id],
    )
    .unwrap();
}

/// Waits until the retention purge removed `id`.
fn purged(r: &Run, id: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, _) = rt()
            .block_on(
                r.client()
                    .raw(Method::GET, &format!("/v1/history/{id}"), None),
            )
            .unwrap();
        if st.as_u16() == 404 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: record {id} not purged");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const RETENTION: &str = "retention-days = 7\nretention-check-secs = 1\n";

#[test]
fn a_retention_purge_killed_or_out_of_space_is_done_again_by_the_next_one() {
    let site = Site::new(&smol(), RETENTION);
    let mut acked = Vec::new();
    for point in ["purge.before_commit", "purge.after_batch"] {
        for _ in 0..rounds() {
            let r = site.start(None);
            let old = chat_ok(&r.client(), "old");
            acked.push(chat_ok(&r.client(), "fresh"));
            drop(r);
            backdate(&site, old);
            site.start(Some(point)).killed(point);
            let r = site.start(None);
            purged(&r, old, point);
            site.check(&r, &acked, point);
        }
        row("retention purge", &format!("kill at {point}"), rounds());
    }

    let site = Site::on_tmpfs(
        &smol(),
        "retention-days = 7\nretention-check-secs = 2\n",
        24,
    );
    for _ in 0..rounds() {
        let r = site.start(None);
        let old = chat_ok(&r.client(), "old");
        let acked = vec![chat_ok(&r.client(), "fresh")];
        // The disk fills while the daemon runs; the record turns old just before (a purge
        // every 2 s: it may win the race, which the assertion on the log below would show).
        site.holder().fill(256 << 10);
        backdate(&site, old);
        site.holder().free();
        site.holder().fill(0);
        // The purge cannot commit while the disk is full; the daemon serves reads meanwhile.
        std::thread::sleep(Duration::from_secs(5));
        assert!(r.log().contains("retention purge failed"), "{}", r.log());
        let (st, _) = rt()
            .block_on(r.client().raw(Method::GET, "/health", None))
            .unwrap();
        assert_eq!(st.as_u16(), 200);
        site.holder().free();
        purged(&r, old, "purge, disk full");
        drop(r);
        let r = site.start(None);
        site.check(&r, &acked, "purge, disk full");
    }
    row("retention purge", "disk full", rounds());
}

fn submit_quantize(c: &Client, out: &str) -> Result<(u16, Value), String> {
    let body = json!({"kind": "quantize", "model": "smol", "output_name": out,
                      "options": {"type": "Q8_0"}});
    rt().block_on(c.raw(
        Method::POST,
        "/admin/jobs",
        Some(bytes::Bytes::from(body.to_string())),
    ))
    .map(|(st, b)| {
        (
            st.as_u16(),
            serde_json::from_slice(&b).unwrap_or(Value::Null),
        )
    })
    .map_err(|e| e.to_string())
}

fn job(c: &Client, id: i64) -> Value {
    rt().block_on(c.json(Method::GET, &format!("/admin/jobs/{id}"), None))
        .unwrap()["job"]
        .clone()
}

fn job_ended(r: &Run, id: i64, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let j = job(&r.client(), id);
        if !matches!(j["state"].as_str(), Some("queued" | "running")) {
            return j;
        }
        assert!(Instant::now() < deadline, "{what}: job {id}: {j:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has_model(site: &Site, name: &str) -> bool {
    site.cli(&["models", "show", name]).status.success()
}

/// Whatever an import or a job leaves in the model store's `tmp/` (start-up clears it).
fn store_tmp(site: &Site) -> Vec<String> {
    std::fs::read_dir(site.state.join("models/tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Blobs no manifest names (start-up removes them).
fn orphan_blobs(site: &Site) -> Vec<String> {
    let root = site.state.join("models");
    let named: Vec<String> = std::fs::read_dir(root.join("manifests"))
        .unwrap()
        .flatten()
        .map(|e| {
            let m: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            format!("sha256-{}", m["digest"].as_str().unwrap())
        })
        .collect();
    std::fs::read_dir(root.join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|b| !named.contains(b))
        .collect()
}

fn import_smol(site: &Site, name: &str) -> std::process::Output {
    site.cli(&[
        "models",
        "import",
        smollm2().to_str().unwrap(),
        "--name",
        name,
    ])
}

#[test]
fn a_model_import_killed_or_out_of_space_leaves_the_model_whole_or_absent() {
    let site = Site::new(&[], "");
    let mut n = 0;
    for point in [
        "import.mid_upload",
        "import.after_blob",
        "import.after_manifest",
    ] {
        for _ in 0..rounds() {
            n += 1;
            let name = format!("m{n}");
            let r = site.start(Some(point));
            failed(&import_smol(&site, &name));
            r.killed(point);
            let r = site.start(None);
            site.check(&r, &[], point);
            assert_eq!(store_tmp(&site), Vec::<String>::new(), "{point}");
            assert_eq!(orphan_blobs(&site), Vec::<String>::new(), "{point}");
            // The manifest is the commit: written (through a rename) after the blob.
            let whole = point == "import.after_manifest";
            assert_eq!(has_model(&site, &name), whole, "{point}");
            if !whole {
                ok(&import_smol(&site, &name));
            }
            assert!(has_model(&site, &name));
        }
        row("model import", &format!("kill at {point}"), rounds());
    }

    let site = Site::on_tmpfs(&[], "", 160);
    for n in 0..rounds() {
        let name = format!("full{n}");
        let r = site.start(None);
        site.holder().fill(1 << 20);
        let err = failed(&import_smol(&site, &name));
        assert!(is_space_error(&err), "{err}");
        assert!(!has_model(&site, &name));
        assert_eq!(store_tmp(&site), Vec::<String>::new());
        site.holder().free();
        drop(r);
        let r = site.start(None);
        site.check(&r, &[], "import, disk full");
        ok(&import_smol(&site, &name));
        site.cli(&["models", "rm", &name]);
    }
    row("model import", "disk full", rounds());
}

#[test]
fn a_job_killed_at_submission_or_completion_is_queued_again_finished_or_failed_as_documented() {
    toolchain();
    let site = Site::new(&[], "");
    {
        let r = site.start(None);
        ok(&import_smol(&site, "smol"));
        drop(r);
    }
    let mut n = 0;
    for point in ["job_submit.before_commit", "job_submit.after_commit"] {
        for _ in 0..rounds() {
            n += 1;
            let out = format!("q{n}");
            let jobs = site.count("SELECT count(*) FROM jobs");
            let r = site.start(Some(point));
            assert!(submit_quantize(&r.client(), &out).is_err(), "{point}");
            r.killed(point);
            let r = site.start(None);
            site.check(&r, &[], point);
            if point == "job_submit.before_commit" {
                assert_eq!(site.count("SELECT count(*) FROM jobs"), jobs, "{point}");
                assert!(!has_model(&site, &out));
            } else {
                // Committed before the answer was lost: the next start queues it again and it
                // runs to its end.
                let id: i64 = site.count("SELECT max(id) FROM jobs");
                assert_eq!(id, jobs + 1);
                let j = job_ended(&r, id, point);
                assert_eq!(j["state"], "succeeded", "{point}: {j:#}");
                assert!(has_model(&site, &out), "{point}");
            }
        }
        row("job submission", &format!("kill at {point}"), rounds());
    }
    for point in [
        "job_complete.before_register",
        "job_complete.before_commit",
        "job_complete.after_commit",
    ] {
        for _ in 0..rounds() {
            n += 1;
            let out = format!("q{n}");
            let r = site.start(Some(point));
            let (st, v) = submit_quantize(&r.client(), &out).unwrap();
            assert_eq!(st, 202, "{v}");
            let id = v["job"]["id"].as_i64().unwrap();
            r.killed(point);
            let r = site.start(None);
            site.check(&r, &[], point);
            let j = job_ended(&r, id, point);
            assert_eq!(store_tmp(&site), Vec::<String>::new(), "{point}");
            assert_eq!(orphan_blobs(&site), Vec::<String>::new(), "{point}");
            if point == "job_complete.before_register" {
                // Killed before its output was registered: failed, with the reason; nothing
                // half-registered.
                assert_eq!(j["state"], "failed", "{point}: {j:#}");
                assert!(
                    j["error"].as_str().unwrap_or("").contains("interrupted"),
                    "{j:#}"
                );
                assert!(!has_model(&site, &out), "{point}");
            } else {
                // Registered: the next start finds the model the job registered and records
                // the job as succeeded.
                assert_eq!(j["state"], "succeeded", "{point}: {j:#}");
                assert_eq!(j["result"]["model"], json!(out), "{point}: {j:#}");
                assert!(has_model(&site, &out), "{point}");
            }
        }
        row("job completion", &format!("kill at {point}"), rounds());
    }

    // Disk full: the submission is refused with 507; a job whose output does not fit fails
    // with the reason and registers nothing.
    let site = Site::on_tmpfs(&[], "", 512);
    {
        let r = site.start(None);
        ok(&import_smol(&site, "smol"));
        drop(r);
    }
    for n in 0..rounds() {
        let r = site.start(None);
        site.holder().fill(0);
        let (st, v) = submit_quantize(&r.client(), &format!("full-submit{n}")).unwrap();
        assert_eq!(st, 507, "{v}");
        assert_eq!(v["error"]["code"], "storage_full", "{v}");
        site.holder().free();
        site.holder().fill(4 << 20);
        let out = format!("full{n}");
        let (st, v) = submit_quantize(&r.client(), &out).unwrap();
        assert_eq!(st, 202, "{v}");
        let id = v["job"]["id"].as_i64().unwrap();
        let j = job_ended(&r, id, "job, disk full");
        assert_eq!(j["state"], "failed", "{j:#}");
        assert!(!has_model(&site, &out));
        site.holder().free();
        drop(r);
        let r = site.start(None);
        site.check(&r, &[], "job, disk full");
        assert_eq!(store_tmp(&site), Vec::<String>::new());
        assert_eq!(orphan_blobs(&site), Vec::<String>::new());
        let (st, v) = submit_quantize(&r.client(), &out).unwrap();
        assert_eq!(st, 202, "{v}");
        let j = job_ended(&r, v["job"]["id"].as_i64().unwrap(), "job after space");
        assert_eq!(j["state"], "succeeded", "{j:#}");
        site.cli(&["models", "rm", &out]);
    }
    row("job submission", "disk full", rounds());
    row("job completion", "disk full", rounds());
}

#[test]
fn a_backup_or_a_restore_out_of_space_fails_clearly_and_leaves_nothing_behind() {
    let site = Site::on_tmpfs(&smol(), "", 24);
    let archive = site.tmp.path().join("backup.tar");
    for _ in 0..rounds() {
        let r = site.start(None);
        let acked = vec![chat_ok(&r.client(), "kept")];
        site.holder().fill(0);
        let err = failed(&site.cli(&["admin", "backup", "--out", archive.to_str().unwrap()]));
        assert!(is_space_error(&err), "{err}");
        assert!(!archive.exists());
        assert!(!Path::new(&format!("{}.partial", archive.display())).exists());
        let (st, _) = rt()
            .block_on(r.client().raw(Method::GET, "/health", None))
            .unwrap();
        assert_eq!(st.as_u16(), 200);
        site.holder().free();
        drop(r);
        let r = site.start(None);
        site.check(&r, &acked, "backup, disk full");
        assert!(!site.state.join(".backup-tmp").exists());
        ok(&site.cli(&["admin", "backup", "--out", archive.to_str().unwrap()]));
        std::fs::remove_file(&archive).unwrap();
    }
    row("backup", "disk full", rounds());

    // A restore onto a filesystem too small for it.
    let src = Site::new(&smol(), "");
    let archive = src.tmp.path().join("backup.tar");
    {
        let r = src.start(None);
        for i in 0..3 {
            chat_ok(&r.client(), &format!("record {i}"));
        }
        ok(&src.cli(&["admin", "backup", "--out", archive.to_str().unwrap()]));
    }
    let size = std::fs::metadata(&archive).unwrap().len();
    for _ in 0..rounds() {
        let small = tempfile::tempdir().unwrap();
        let mount = small.path().join("small");
        // Room for about half the archive.
        let _tmpfs = Holder::new(&mount, (size / 2048).max(8));
        assert!(size > 32 << 10, "the archive is {size} bytes");
        let target = mount.join("state");
        let out = Command::new(env!("CARGO_BIN_EXE_inhoused"))
            .arg("--restore")
            .arg(&archive)
            .arg("--state-dir")
            .arg(&target)
            .arg("--key-file")
            .arg(&src.key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "the restore cannot fit");
        assert!(is_space_error(&err), "{err}");
        let left: Vec<_> = std::fs::read_dir(&mount)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "the restore left {left:?}");
    }
    row("restore", "disk full", rounds());
}
