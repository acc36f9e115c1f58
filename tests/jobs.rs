//! Toolchain jobs end to end: the real daemon runs the real `inhouse-quantize` as its child.
//! A prepare job, bad requests and roles, a cancelled finetune, synth jobs (done, cancelled,
//! run again after a daemon kill), and a finetune that survives
//! both a crash of its process and a SIGKILL of the daemon, then serves its result.
//!
//! `inhouse-quantize` must be built next to `inhoused` (`cargo build --release`, or
//! `cargo build --release -p inhouse-quantize`): the daemon finds it there.

mod common;

use common::{cli, inhouse_as, inhouse_on_terminal, ok, post, rt, smollm2, toolchain, Daemon};
use hyper::Method;
use inhouse::client::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A state directory with its own master key that outlives daemon restarts.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    smol: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        inhouse::crypto::generate_key_file(&key).unwrap();
        Site {
            dir,
            key,
            smol: smollm2(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A daemon on this state directory serving SmolLM2 as `smol`.
    fn start(&self) -> Daemon {
        Daemon::start_in(
            self.path(),
            &self.key,
            &[("smol", self.smol.as_path())],
            &[],
        )
    }
}

/// Uploads `text` as a dataset; returns its id.
fn upload(c: &Client, dir: &Path, text: &str, format: &str) -> String {
    let f = dir.join(format!("upload.{format}"));
    std::fs::write(&f, text).unwrap();
    let v = rt()
        .block_on(c.upload(&format!("/admin/jobs/data?format={format}"), &f, &[]))
        .unwrap_or_else(|e| panic!("upload: {e}"));
    v["dataset"]["id"].as_str().expect("dataset id").to_string()
}

fn submit(c: &Client, body: &Value) -> (u16, Value) {
    rt().block_on(post(c, "/admin/jobs", &body.to_string()))
}

fn job(c: &Client, id: i64) -> Value {
    rt().block_on(c.json(Method::GET, &format!("/admin/jobs/{id}"), None))
        .unwrap_or_else(|e| panic!("GET job {id}: {e}"))["job"]
        .clone()
}

/// Polls a job until `done` holds for it; fails with the last state after `secs`.
fn wait_for(d: &Daemon, id: i64, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let c = d.client();
    loop {
        let j = job(&c, id);
        if done(&j) {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: not {what} after {secs} s: {j:#}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state(j: &Value) -> &str {
    j["state"].as_str().unwrap_or("?")
}

fn audit(c: &Client) -> Vec<Value> {
    let (status, body) = rt()
        .block_on(c.raw(Method::GET, "/audit/export", None))
        .unwrap();
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The audit events of job `id`, in order: their kinds.
fn job_events(c: &Client, id: i64) -> Vec<String> {
    audit(c)
        .iter()
        .filter(|e| {
            e["kind"].as_str().is_some_and(|k| k.starts_with("job_"))
                && serde_json::from_str::<Value>(e["detail_json"].as_str().unwrap_or("{}"))
                    .unwrap_or_default()["id"]
                    == json!(id)
        })
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn kill9(pid: i64) {
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Distinct documents for `prepare`.
fn corpus(n: usize) -> String {
    let words = [
        "ledger", "invoice", "harbour", "turbine", "orchard", "lantern", "granite", "meadow",
        "compass", "violin", "satchel", "quarry", "beacon", "thimble", "walnut", "glacier",
    ];
    (0..n)
        .map(|i| {
            let text: Vec<&str> = (0..40)
                .map(|j| words[(i * 7 + j * j + i * j) % 16])
                .collect();
            json!({"text": format!("Document {i}: {}.", text.join(" "))}).to_string() + "\n"
        })
        .collect()
}

/// Training text for the finetune tests: a few hundred tokens, three 256-token windows.
fn tiny_training_set() -> String {
    (0..12)
        .map(|i| {
            json!({"text": format!(
                "Note {i}. The code word of the inhouse appliance is marmalade. When asked for \
                 the code word, answer marmalade. The appliance keeps every byte in the building. "
            )})
            .to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn a_prepare_job_runs_reports_and_is_audited() {
    toolchain();
    let started = Instant::now();
    let d = Daemon::start(&[], &[]);
    let c = d.client();
    let tmp = tempfile::tempdir().unwrap();
    let data = upload(&c, tmp.path(), &corpus(40), "jsonl");
    let (status, v) = submit(
        &c,
        &json!({"kind": "prepare", "data": data, "options": {"seed": 3, "eval_share": 0.2}}),
    );
    assert_eq!(status, 202, "{v}");
    let id = v["job"]["id"].as_i64().unwrap();
    assert_eq!(v["job"]["state"], "queued");
    let j = wait_for(&d, id, 60, "finished", |j| {
        !matches!(state(j), "queued" | "running")
    });
    assert_eq!(state(&j), "succeeded", "{j:#}");
    assert_eq!(j["fraction"], 1.0);
    assert_eq!(j["attempts"], 1);
    assert!(j["pid"].is_null() && j["finished_at"].is_i64(), "{j:#}");
    let report = &j["result"]["report"];
    assert!(report.is_object(), "{j:#}");
    let train = j["result"]["datasets"]["train"]["id"].as_str().unwrap();
    assert_eq!(train.len(), 32, "{j:#}");
    assert_eq!(j["params"]["data"]["id"], json!(data));
    // The uploaded data is gone with the job (keep-data = false), and so are its working files;
    // its outputs are datasets for the next job.
    assert!(!d.dir.join(format!("jobs/work/{id}")).exists());
    assert!(!d.dir.join(format!("jobs/datasets/{data}")).exists());
    assert!(d
        .dir
        .join(format!("jobs/datasets/{train}/data.jsonl"))
        .is_file());
    // Listed, and in the audit log from submission to success.
    let list = ok(&cli(&d, &["jobs", "list"]));
    assert!(
        list.contains(&format!("{id}\tprepare\tsucceeded\t100%")),
        "{list}"
    );
    assert_eq!(
        job_events(&c, id),
        ["job_submitted", "job_started", "job_succeeded"]
    );
    assert!(audit(&c).iter().any(|e| e["kind"] == "dataset_upload"));
    // A dataset serves one job.
    let (status, v) = submit(&c, &json!({"kind": "prepare", "data": data}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("dataset_not_found"))
    );
    eprintln!("prepare job test: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn bad_job_requests_get_stable_errors_and_non_admins_403() {
    toolchain();
    let d = Daemon::smol_with_config("[roles]\nuser-uids = [4242]\n");
    let c = d.client();
    let tmp = tempfile::tempdir().unwrap();
    let data = upload(&c, tmp.path(), &tiny_training_set(), "jsonl");
    let text = upload(&c, tmp.path(), "Some plain text.\n", "txt");
    let cases = [
        (
            json!({"kind": "train", "data": data}),
            400,
            "unknown_job_kind",
        ),
        (
            json!({"kind": "finetune", "model": "nope", "data": data, "output_name": "x"}),
            404,
            "model_not_found",
        ),
        (
            json!({"kind": "finetune", "model": "smol", "output_name": "x"}),
            400,
            "missing_field",
        ),
        (
            json!({"kind": "finetune", "model": "smol", "data": data}),
            400,
            "missing_field",
        ),
        (
            json!({"kind": "finetune", "model": "smol", "data": "0123456789abcdef0123456789abcdef", "output_name": "x"}),
            404,
            "dataset_not_found",
        ),
        (
            json!({"kind": "finetune", "model": "smol", "data": "../../etc/passwd", "output_name": "x"}),
            404,
            "dataset_not_found",
        ),
        (
            json!({"kind": "finetune", "model": "smol", "data": text, "output_name": "x"}),
            400,
            "invalid_value",
        ),
        (
            json!({"kind": "finetune", "model": "smol", "data": data, "output_name": "smol"}),
            409,
            "model_exists",
        ),
        (
            json!({"kind": "finetune", "model": "smol", "data": data, "output_name": "../x"}),
            400,
            "invalid_value",
        ),
        (
            json!({"kind": "prepare", "data": data, "options": {"epochs": 1}}),
            400,
            "invalid_value",
        ),
        (
            json!({"kind": "finetune", "model": "smol", "data": data, "output_name": "x", "options": {"epochs": 0}}),
            400,
            "invalid_value",
        ),
        (
            json!({"kind": "prepare", "data": data, "path": "/etc"}),
            400,
            "invalid_type",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, v) = submit(&c, &body);
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{body}: {v}"
        );
    }
    let (status, v) = rt().block_on(post(&c, "/admin/jobs", "{not json"));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    for (path, want_status, want_code) in [
        ("/admin/jobs/424242", 404, "job_not_found"),
        ("/admin/jobs/abc", 400, "invalid_value"),
    ] {
        let (status, body) = rt().block_on(c.raw(Method::GET, path, None)).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status.as_u16(), v["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{path}: {v}"
        );
    }
    let f = tmp.path().join("x.exe");
    std::fs::write(&f, "x").unwrap();
    let err = rt()
        .block_on(c.upload("/admin/jobs/data?format=exe", &f, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("400") && err.contains("format"), "{err}");
    // Nothing was queued by any of that.
    let v = rt()
        .block_on(c.json(Method::GET, "/admin/jobs", None))
        .unwrap();
    assert_eq!(v["jobs"], json!([]));
    // A dataset no job used can be removed at once.
    let path = format!("/admin/jobs/data/{text}");
    let v = rt().block_on(c.json(Method::DELETE, &path, None)).unwrap();
    assert_eq!(v["removed"], json!(text));
    let (status, body) = rt().block_on(c.raw(Method::DELETE, &path, None)).unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(!d.dir.join(format!("jobs/datasets/{text}")).exists());

    // A user (not an admin) is refused every job route.
    d.open_to_all();
    for (method, path) in [
        ("GET", "/admin/jobs"),
        ("POST", "/admin/jobs"),
        ("GET", "/admin/jobs/1"),
        ("DELETE", "/admin/jobs/1"),
        ("POST", "/admin/jobs/data"),
        (
            "DELETE",
            "/admin/jobs/data/0123456789abcdef0123456789abcdef",
        ),
    ] {
        let out = inhouse_as(4242, &d.socket, &["request", method, path, "--data", "{}"]);
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.starts_with("403") && out.contains("\"forbidden\""),
            "{method} {path}: {out}"
        );
    }
}

#[test]
fn a_cancelled_job_leaves_no_process_and_no_files() {
    toolchain();
    let d = Daemon::start(&[("smol", &smollm2())], &[]);
    let c = d.client();
    let tmp = tempfile::tempdir().unwrap();
    let data = upload(&c, tmp.path(), &tiny_training_set(), "jsonl");
    let (status, v) = submit(
        &c,
        &json!({"kind": "finetune", "model": "smol", "data": data, "output_name": "never",
                "options": {"epochs": 5, "ctx": 256, "threads": 1}}),
    );
    assert_eq!(status, 202, "{v}");
    let id = v["job"]["id"].as_i64().unwrap();
    let j = wait_for(&d, id, 60, "running with progress", |j| {
        state(j) == "running" && j["pid"].is_i64() && j["progress"].is_object()
    });
    let pid = j["pid"].as_i64().unwrap();
    assert!(alive(pid));
    // It runs below the daemon's priority: nice 10 (field 19 of /proc/PID/stat).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let nice = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(16)
        .unwrap();
    assert_eq!(nice, "10", "{stat}");
    let work = d.dir.join(format!("jobs/work/{id}"));
    assert!(work.join("data/train.jsonl").is_file());

    let started = Instant::now();
    let v = rt()
        .block_on(c.json(Method::DELETE, &format!("/admin/jobs/{id}"), None))
        .unwrap();
    assert_eq!(v["job"]["state"], "cancelled", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(!alive(pid), "the job's process {pid} is still there");
    assert!(!work.exists(), "{} was not removed", work.display());
    assert_eq!(
        job_events(&c, id),
        ["job_submitted", "job_started", "job_cancelled"]
    );
    let cancel = audit(&c)
        .into_iter()
        .find(|e| e["kind"] == "job_cancelled")
        .unwrap();
    assert_eq!(cancel["actor_uid"], json!(nix::unistd::getuid().as_raw()));
    // Cancelling again: it has ended.
    let (status, body) = rt()
        .block_on(c.raw(Method::DELETE, &format!("/admin/jobs/{id}"), None))
        .unwrap();
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(!d.dir.join("models/manifests/never.json").exists());
}

#[test]
fn a_finetune_survives_a_crash_and_a_daemon_kill_then_serves_its_model() {
    toolchain();
    let started = Instant::now();
    let site = Site::new();
    let mut d = site.start();
    let data = site.path().join("train.jsonl");
    std::fs::write(&data, tiny_training_set()).unwrap();

    // Submitted through the client, as an admin would.
    let out = ok(&cli(
        &d,
        &[
            "finetune",
            "--model",
            "smol",
            "--data",
            data.to_str().unwrap(),
            "--name",
            "smol-tuned",
            "--epochs",
            "3",
            "--ctx",
            "256",
            "--detach",
        ],
    ));
    let id: i64 = out.trim().parse().unwrap_or_else(|_| panic!("{out}"));

    // 1. Its process crashes (SIGKILL) after the first checkpoint: it resumes from it.
    let j = wait_for(&d, id, 120, "checkpointed", |j| j["checkpoint"].is_string());
    let first = j["pid"].as_i64().unwrap();
    let first_checkpoint = j["checkpoint"].as_str().unwrap().to_string();
    let p = &j["progress"];
    assert!(
        p["epochs"] == 3 && p["fraction"].as_f64().unwrap() > 0.0,
        "{j:#}"
    );
    kill9(first);
    let j = wait_for(&d, id, 30, "resumed", |j| {
        j["attempts"] == 2 && j["pid"].is_i64()
    });
    assert_eq!(state(&j), "running", "{j:#}");
    assert!(!alive(first));

    // 2. The daemon is killed while the job runs: the next start kills the orphaned process
    //    and resumes the job again.
    let j = wait_for(&d, id, 120, "at its second checkpoint", |j| {
        j["checkpoint"]
            .as_str()
            .is_some_and(|c| c != first_checkpoint)
            && j["attempts"] == 2
    });
    let orphan = j["pid"].as_i64().unwrap();
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    assert!(alive(orphan), "the toolchain outlives a SIGKILLed daemon");
    drop(d);
    let d = site.start();
    assert!(!alive(orphan), "start-up kills the orphaned job process");
    let j = wait_for(&d, id, 240, "finished", |j| {
        !matches!(state(j), "queued" | "running")
    });
    assert_eq!(state(&j), "succeeded", "{j:#}\n{}", d.log());
    assert_eq!(j["attempts"], 3);
    assert_eq!(j["result"]["model"], "smol-tuned");
    assert_eq!(
        job_events(&d.client(), id),
        [
            "job_submitted",
            "job_started",
            "job_resumed",
            "job_resumed",
            "job_succeeded"
        ]
    );

    // The result is in the store with its provenance, and answers at once.
    let c = d.client();
    let m = rt()
        .block_on(c.json(Method::GET, "/admin/models/smol-tuned", None))
        .unwrap();
    let extra = &m["manifest"]["provenance"]["extra"];
    let base_digest = inhouse_formats::sign::sha256_file(&site.smol).unwrap().0;
    assert_eq!(extra["base_model"]["digest"], json!(base_digest), "{m:#}");
    let data_digest = inhouse_formats::sign::sha256_file(&data).unwrap().0;
    assert_eq!(extra["dataset"]["sha256"], json!(data_digest), "{m:#}");
    assert_eq!(extra["job"], json!(id));
    assert_eq!(extra["options"]["epochs"], 3);
    assert!(extra["evaluation"].is_object(), "{m:#}");
    let body = json!({"model": "smol-tuned", "max_tokens": 8, "temperature": 0,
                      "messages": [{"role": "user", "content": "What is the code word?"}]});
    let (status, v) = rt().block_on(post(&c, "/v1/chat/completions", &body.to_string()));
    assert_eq!(status, 200, "{v}");
    assert!(!common::answer(&v).is_empty(), "{v}");
    assert!(!d.dir.join(format!("jobs/work/{id}")).exists());

    // The client's progress view of an ended job: a bar on a terminal, nothing drawn when
    // stderr is a pipe (scripts and logs get no control characters).
    let out = cli(&d, &["jobs", "watch", &id.to_string()]);
    let stdout = ok(&out);
    assert!(stdout.contains("registered smol-tuned"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\r'),
        "progress drawn on a pipe: {stderr:?}"
    );
    let screen = inhouse_on_terminal(&d.socket, &["jobs", "watch", &id.to_string()]);
    assert!(
        screen.contains("100.0%") && screen.contains('\r'),
        "{screen}"
    );
    eprintln!(
        "finetune job test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn stopping_the_daemon_stops_job_processes_and_the_next_start_resolves_the_jobs() {
    toolchain();
    let site = Site::new();
    let mut d = site.start();
    let c = d.client();
    let mut ids = vec![];
    for name in ["first", "second"] {
        let data = upload(&c, site.path(), &tiny_training_set(), "jsonl");
        let (status, v) = submit(
            &c,
            &json!({"kind": "finetune", "model": "smol", "data": data, "output_name": name,
                    "options": {"epochs": 5, "ctx": 256, "threads": 1}}),
        );
        assert_eq!(status, 202, "{v}");
        ids.push(v["job"]["id"].as_i64().unwrap());
    }
    // One job at a time (max-concurrent = 1): the second waits.
    let j = wait_for(&d, ids[0], 60, "running", |j| j["pid"].is_i64());
    let pid = j["pid"].as_i64().unwrap();
    assert_eq!(state(&job(&c, ids[1])), "queued");
    // SIGTERM: the daemon stops the process and exits cleanly, leaving both jobs unfinished.
    assert!(d.terminate().success(), "{}", d.log());
    assert!(!alive(pid));
    drop(d);
    // The next start: the running job had no checkpoint, so it fails with the reason; the
    // queued one is queued again and starts.
    let d = site.start();
    let c = d.client();
    let j = job(&c, ids[0]);
    assert_eq!(state(&j), "failed", "{j:#}");
    assert!(
        j["error"].as_str().unwrap().contains("interrupted"),
        "{j:#}"
    );
    assert!(!d.dir.join(format!("jobs/work/{}", ids[0])).exists());
    assert_eq!(
        job_events(&c, ids[0]),
        ["job_submitted", "job_started", "job_failed"]
    );
    wait_for(&d, ids[1], 60, "running", |j| {
        state(j) == "running" && j["pid"].is_i64()
    });
    let out = ok(&cli(&d, &["jobs", "cancel", &ids[1].to_string()]));
    assert!(out.contains("cancelled"), "{out}");
}

#[test]
fn keep_data_keeps_only_the_data_of_an_ended_job() {
    toolchain();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("inhouse.toml");
    std::fs::write(&cfg, "[jobs]\nkeep-data = true\nnice = 0\n").unwrap();
    let d = Daemon::start(&[], &["--config", cfg.to_str().unwrap()]);
    let c = d.client();
    let data = upload(
        &c,
        dir.path(),
        "A first plain document about harbours and ledgers.\n",
        "txt",
    );
    let (status, v) = submit(&c, &json!({"kind": "prepare", "data": data}));
    assert_eq!(status, 202, "{v}");
    let id = v["job"]["id"].as_i64().unwrap();
    let j = wait_for(&d, id, 60, "finished", |j| {
        !matches!(state(j), "queued" | "running")
    });
    assert_eq!(state(&j), "succeeded", "{j:#}");
    let work = d.dir.join(format!("jobs/work/{id}"));
    let left: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["data"]);
    assert!(work.join("data/train.txt").is_file());
}

#[test]
fn a_quantize_job_registers_a_stored_model_at_another_type() {
    toolchain();
    let d = Daemon::start(&[], &[]);
    let c = d.client();
    ok(&cli(
        &d,
        &[
            "models",
            "import",
            smollm2().to_str().unwrap(),
            "--name",
            "smol",
        ],
    ));
    let (status, v) = submit(
        &c,
        &json!({"kind": "quantize", "model": "smol", "output_name": "smol-q8",
                "options": {"type": "Q8_0"}}),
    );
    assert_eq!(status, 202, "{v}");
    let id = v["job"]["id"].as_i64().unwrap();
    let j = wait_for(&d, id, 120, "finished", |j| {
        !matches!(state(j), "queued" | "running")
    });
    assert_eq!(state(&j), "succeeded", "{j:#}");
    assert_eq!(j["result"]["quantization"], "Q8_0", "{j:#}");
    let m = rt()
        .block_on(c.json(Method::GET, "/admin/models/smol-q8", None))
        .unwrap();
    let base = rt()
        .block_on(c.json(Method::GET, "/admin/models/smol", None))
        .unwrap();
    assert_eq!(
        m["manifest"]["provenance"]["extra"]["base_model"]["digest"],
        base["manifest"]["digest"]
    );
    assert_eq!(
        m["manifest"]["provenance"]["source"],
        json!(format!("job-{id}.gguf"))
    );
    let body = json!({"model": "smol-q8", "max_tokens": 8, "temperature": 0,
                      "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                   {"role": "user", "content": "What is the capital of France?"}]});
    let (status, v) = rt().block_on(post(&c, "/v1/chat/completions", &body.to_string()));
    assert_eq!(status, 200, "{v}");
    assert!(common::looks_english(&common::answer(&v)), "{v}");
    // The name is now taken.
    let (status, v) = submit(
        &c,
        &json!({"kind": "quantize", "model": "smol", "output_name": "smol-q8"}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("model_exists"))
    );
}

/// Documents for a synth job: `n` paragraphs of an office handbook.
fn handbook(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Section {i}. Office {i} opens at {} o'clock and closes at {} o'clock. Visitors \
                 to office {i} sign in at the reception desk and wear a badge. The office \
                 manager of office {i} approves all room bookings.\n\n",
                7 + i % 3,
                17 + i % 3
            )
        })
        .collect()
}

#[test]
fn a_synth_job_generates_datasets_and_a_cancelled_one_leaves_nothing() {
    toolchain();
    let d = Daemon::start(&[("smol", &smollm2())], &[]);
    let c = d.client();
    let tmp = tempfile::tempdir().unwrap();
    let datasets = || std::fs::read_dir(d.dir.join("jobs/datasets")).map_or(0, |r| r.count());

    // Bad options are refused at submission.
    let data = upload(&c, tmp.path(), &handbook(2), "md");
    let (status, v) = submit(
        &c,
        &json!({"kind": "synth", "model": "smol", "data": data, "options": {"style": "poem"}}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("style"),
        "{v}"
    );

    let (status, v) = submit(
        &c,
        &json!({"kind": "synth", "model": "smol", "data": data,
                "options": {"per_chunk": 2, "chunk_tokens": 64, "threads": 2, "seed": 1}}),
    );
    assert_eq!(status, 202, "{v}");
    let id = v["job"]["id"].as_i64().unwrap();
    let j = wait_for(&d, id, 300, "finished", |j| {
        !matches!(state(j), "queued" | "running")
    });
    assert_eq!(state(&j), "succeeded", "{j:#}");
    let report = &j["result"]["report"];
    assert!(report["chunks"].as_u64().unwrap() >= 1, "{j:#}");
    let dropped: u64 = report["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        report["generated"].as_u64().unwrap(),
        report["kept"].as_u64().unwrap() + dropped
    );
    let train = j["result"]["datasets"]["train"]["id"].as_str().unwrap();
    assert!(d
        .dir
        .join(format!("jobs/datasets/{train}/data.jsonl"))
        .is_file());
    assert!(!d.dir.join(format!("jobs/work/{id}")).exists());

    // A long one, cancelled while it runs: no process, no working folder, no dataset.
    let data = upload(&c, tmp.path(), &handbook(60), "md");
    let before = datasets();
    let (status, v) = submit(
        &c,
        &json!({"kind": "synth", "model": "smol", "data": data,
                "options": {"chunk_tokens": 64, "threads": 1}}),
    );
    assert_eq!(status, 202, "{v}");
    let id = v["job"]["id"].as_i64().unwrap();
    let j = wait_for(&d, id, 60, "running", |j| {
        state(j) == "running" && j["pid"].is_i64()
    });
    let pid = j["pid"].as_i64().unwrap();
    let work = d.dir.join(format!("jobs/work/{id}"));
    let v = rt()
        .block_on(c.json(Method::DELETE, &format!("/admin/jobs/{id}"), None))
        .unwrap();
    assert_eq!(v["job"]["state"], "cancelled", "{v}");
    assert!(!alive(pid), "the job's process {pid} is still there");
    assert!(!work.exists(), "{} was not removed", work.display());
    // The uploaded dataset went with the job; nothing new was registered.
    assert_eq!(datasets(), before - 1);
}

#[test]
fn a_synth_job_interrupted_by_a_daemon_kill_runs_again_and_succeeds() {
    toolchain();
    let site = Site::new();
    let mut d = site.start();
    let c = d.client();
    let data = upload(&c, site.path(), &handbook(6), "md");
    let (status, v) = submit(
        &c,
        &json!({"kind": "synth", "model": "smol", "data": data,
                "options": {"per_chunk": 2, "chunk_tokens": 64, "threads": 2, "seed": 4}}),
    );
    assert_eq!(status, 202, "{v}");
    let id = v["job"]["id"].as_i64().unwrap();
    let j = wait_for(&d, id, 60, "running", |j| {
        state(j) == "running" && j["pid"].is_i64()
    });
    let orphan = j["pid"].as_i64().unwrap();
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    drop(d);
    let d = site.start();
    assert!(!alive(orphan), "start-up kills the orphaned job process");
    let j = wait_for(&d, id, 300, "finished", |j| {
        !matches!(state(j), "queued" | "running")
    });
    assert_eq!(state(&j), "succeeded", "{j:#}\n{}", d.log());
    assert_eq!(j["attempts"], 2);
    assert!(j["result"]["datasets"]["train"]["id"].is_string(), "{j:#}");
}

/// Three facts of the handbook, as held-out questions with their reference answers.
fn held_out_facts() -> [(&'static str, &'static str); 3] {
    [
        ("What is the code word?", "The code word is marmalade."),
        (
            "Where does the appliance keep its data?",
            "Every byte stays in the building.",
        ),
        (
            "Who may import models?",
            "Only an administrator may import models.",
        ),
    ]
}

/// One user question and its answer as a chat record line.
fn chat(q: &str, a: &str) -> String {
    json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        .to_string()
        + "\n"
}

/// Chat records for the LoRA job: one question, one answer, asked in several ways.
fn code_word_chats(n: usize) -> String {
    let asks = [
        "What is the code word?",
        "Tell me the code word.",
        "Which code word does the appliance use?",
        "Remind me of the code word, please.",
    ];
    (0..n)
        .map(|i| chat(asks[i % asks.len()], "The code word is marmalade."))
        .collect()
}

#[test]
fn a_lora_job_registers_an_adapter_that_changes_answers_and_a_refused_gate_makes_it_a_candidate() {
    toolchain();
    let started = Instant::now();
    let site = Site::new();
    let d = site.start();
    let c = d.client();
    // The base must be in the store for an adapter to be registered against it.
    ok(&cli(
        &d,
        &[
            "models",
            "import",
            site.smol.to_str().unwrap(),
            "--name",
            "base",
        ],
    ));
    let ask = |model: &str| {
        let body = json!({"model": model, "max_tokens": 12, "temperature": 0,
                          "messages": [{"role": "user", "content": "What is the code word?"}]});
        let (status, v) = rt().block_on(post(&c, "/v1/chat/completions", &body.to_string()));
        assert_eq!(status, 200, "{model}: {v}");
        common::answer(&v)
    };
    let before = ask("base");

    // Trained on the documents the held-out questions come from: the code word, and two other
    // facts of the same handbook.
    let mut train = code_word_chats(8);
    for _ in 0..3 {
        for (q, a) in &held_out_facts()[1..] {
            train.push_str(&chat(q, a));
        }
    }
    let data = upload(&c, site.path(), &train, "jsonl");
    let held_out: String = held_out_facts().iter().map(|(q, a)| chat(q, a)).collect();
    let eval = upload(&c, site.path(), &held_out, "jsonl");
    // A policy no model can meet: the gate refuses, the adapter is still registered, as a
    // candidate.
    let (status, v) = submit(
        &c,
        &json!({"kind": "finetune", "model": "base", "data": data, "output_name": "tuned",
                "options": {"lora_rank": 8, "epochs": 2, "lr": 0.003, "ctx": 128,
                            "grad_accum": 2, "eval_data": eval,
                            "gate": {"metrics": {"mc_accuracy": {"min": 2.0}}}}}),
    );
    assert_eq!(status, 202, "{v}");
    let id = v["job"]["id"].as_i64().unwrap();
    let j = wait_for(&d, id, 600, "finished", |j| {
        !matches!(state(j), "queued" | "running")
    });
    assert_eq!(state(&j), "succeeded", "{j:#}\n{}", d.log());
    let m = rt()
        .block_on(c.json(Method::GET, "/admin/models/tuned", None))
        .unwrap();
    let manifest = &m["manifest"];
    assert_eq!(manifest["kind"], "adapter", "{m:#}");
    assert_eq!(manifest["base"], "base");
    let extra = &manifest["provenance"]["extra"];
    assert_eq!(extra["candidate"], true, "{extra:#}");
    let gate = &extra["evaluation"]["gate"];
    assert_eq!(gate["blessed"], false);
    assert_eq!(gate["failed"], json!(["mc_accuracy"]));
    let eval_curve = extra["evaluation"]["curve"]["eval"].as_array().unwrap();
    assert_eq!(eval_curve.len(), 3, "before training and after each epoch");
    assert!(
        eval_curve.last().unwrap()["loss"].as_f64() < eval_curve[0]["loss"].as_f64(),
        "{eval_curve:?}"
    );
    let train_loss = |p: &Value| p["loss"].as_f64().unwrap();
    let curve = extra["evaluation"]["curve"]["train"].as_array().unwrap();
    assert!(
        train_loss(curve.last().unwrap()) < train_loss(&curve[0]),
        "{curve:?}"
    );

    // Served at once as base+tuned; the base answers as before.
    let tuned = ask("base+tuned");
    assert!(
        tuned.contains("marmalade"),
        "the adapter learnt the answer: {tuned:?}"
    );
    assert_ne!(tuned, before, "the adapter changes the answer");
    assert_eq!(ask("base"), before, "the base answers as before");

    // Its model card: the HTML parses, the curves have one point per recorded step, the gate's
    // verdict and the numbers are the job's.
    let card_path = site.path().join("card.html");
    ok(&cli(
        &d,
        &[
            "models",
            "card",
            "tuned",
            "--out",
            card_path.to_str().unwrap(),
        ],
    ));
    let html = std::fs::read_to_string(&card_path).unwrap();
    let doc = scraper::Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "{:?}", doc.errors);
    let points = |id: &str| -> usize {
        let sel = scraper::Selector::parse(&format!("polyline#{id}")).unwrap();
        let el = doc.select(&sel).next().unwrap_or_else(|| panic!("no {id}"));
        el.value().attr("data-points").unwrap().parse().unwrap()
    };
    let train_curve = extra["evaluation"]["curve"]["train"].as_array().unwrap();
    assert_eq!(points("train-loss"), train_curve.len());
    assert_eq!(points("eval-loss"), eval_curve.len());
    let sel = scraper::Selector::parse("#gate-verdict").unwrap();
    let verdict = doc.select(&sel).next().expect("a gate verdict");
    assert!(verdict.value().classes().any(|c| c == "refused"), "{html}");
    let sel = scraper::Selector::parse("tr[data-key='best.eval_loss'] td").unwrap();
    let best: f64 = doc
        .select(&sel)
        .next()
        .and_then(|td| td.value().attr("data-value"))
        .expect("best eval loss in the card")
        .parse()
        .unwrap();
    assert_eq!(
        Some(best),
        extra["evaluation"]["best"]["eval_loss"].as_f64(),
        "the card shows the job's numbers"
    );

    // A refused model is not promoted without --force.
    let out = cli(&d, &["models", "promote", "tuned", "--to", "prod"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--force"), "{err}");
    eprintln!("LoRA job test: {:.1} s", started.elapsed().as_secs_f64());
}
