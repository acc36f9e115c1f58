//! Shared helpers for the integration tests: the real `inhoused` binary as a child process on a
//! socket in a temporary directory, the real test models, and a client.
#![allow(dead_code)]

use hyper::Method;
use inhouse::client::Client;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The model cache: `$INHOUSE_MODELS_DIR` or `~/.cache/inhouse/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("INHOUSE_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/inhouse/models"),
    }
}

/// A test model's path; a missing model fails the test (it never skips).
pub fn model(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.is_file(),
        "test model {} is missing: run scripts/fetch-models",
        p.display()
    );
    p
}

/// SmolLM2 135M Instruct, Q4_1 (llama architecture, ChatML template in the GGUF).
pub fn smollm2() -> PathBuf {
    model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma 3 270M, Q4_K_M (gemma3 architecture, no template in the GGUF).
pub fn gemma() -> PathBuf {
    model("gemma-3-270m-q4_k_m.gguf")
}

/// A running daemon; stopped (SIGKILL) when dropped unless [`Daemon::terminate`] was called.
pub struct Daemon {
    pub child: Child,
    /// The state directory (database, socket, log).
    pub dir: PathBuf,
    /// Owns the temporary directory when the daemon made it.
    _tmp: Option<tempfile::TempDir>,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `inhoused` with the given `NAME=PATH` models and extra flags, and waits until its
    /// socket accepts connections.
    pub fn start(models: &[(&str, &Path)], extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("master.key");
        inhouse::crypto::generate_key_file(&key).expect("key file");
        let mut d = Daemon::start_in(dir.path(), &key, models, extra);
        d._tmp = Some(dir);
        d
    }

    /// Starts `inhoused` with its state in `dir` and the master key `key`.
    pub fn start_in(dir: &Path, key: &Path, models: &[(&str, &Path)], extra: &[&str]) -> Daemon {
        let socket = dir.join("inhouse.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_inhoused"));
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir)
            .arg("--key-file")
            .arg(key)
            .args(["--threads", "2", "--ctx-size", "2048"]);
        for (name, path) in models {
            cmd.arg("--model").arg(format!("{name}={}", path.display()));
        }
        cmd.args(extra)
            .env("INHOUSE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("spawn inhoused");
        let mut d = Daemon {
            child,
            dir: dir.to_path_buf(),
            _tmp: None,
            socket,
        };
        d.wait_ready();
        d
    }

    /// Starts a daemon serving SmolLM2 as `smol`.
    pub fn smol() -> Daemon {
        Daemon::start(&[("smol", &smollm2())], &[])
    }

    /// Starts a daemon serving SmolLM2 as `smol` with `toml` as its config file, in a temporary
    /// state directory with a fresh key.
    pub fn smol_with_config(toml: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("inhouse.toml");
        std::fs::write(&cfg, toml).expect("config file");
        let cfg = cfg.to_str().expect("UTF-8 path").to_string();
        let key = dir.path().join("master.key");
        inhouse::crypto::generate_key_file(&key).expect("key file");
        let mut d = Daemon::start_in(
            dir.path(),
            &key,
            &[("smol", &smollm2())],
            &["--config", &cfg],
        );
        d._tmp = Some(dir);
        d
    }

    /// Lets every local uid reach the socket, so that the daemon's own checks (roles, limits),
    /// not the file mode, decide (tests run clients as other uids with setpriv).
    pub fn open_to_all(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "inhoused exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "inhoused not ready after 120 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// A client for this daemon's socket.
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "inhoused did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `inhoused` to completion (for start-up failures): state in `dir`, socket `dir/s.sock`,
/// master key `key`, one `--model NAME=PATH`; returns its exit status and output.
pub fn run_inhoused(dir: &Path, key: &Path, model: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--state-dir")
        .arg(dir)
        .arg("--key-file")
        .arg(key)
        .arg("--model")
        .arg(model)
        .output()
        .expect("run inhoused")
}

/// A current-thread runtime for a test body.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// POSTs JSON; returns status and parsed body.
pub async fn post(client: &Client, path: &str, body: &str) -> (u16, Value) {
    let (status, bytes) = client
        .raw(
            Method::POST,
            path,
            Some(bytes::Bytes::from(body.to_string())),
        )
        .await
        .expect("request");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status.as_u16(), v)
}

/// Streams a request with `"stream": true`; returns every `data:` payload and the content type.
pub async fn post_stream(client: &Client, path: &str, body: &Value) -> (u16, String, Vec<String>) {
    let mut resp = client
        .send(
            Method::POST,
            path,
            Some(bytes::Bytes::from(body.to_string())),
        )
        .await
        .expect("request");
    let mut parser = inhouse::client::SseParser::default();
    let mut events = Vec::new();
    while let Some(chunk) = resp.next_chunk().await {
        events.extend(parser.push(&chunk.expect("chunk")));
    }
    (resp.status.as_u16(), resp.content_type.clone(), events)
}

/// The assistant's text of a non-streamed chat completion.
pub fn answer(v: &Value) -> String {
    v.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no answer in {v}"))
        .to_string()
}

/// Does `text` read as English? Non-empty, mostly ASCII letters, and at least one very common
/// English word.
pub fn looks_english(text: &str) -> bool {
    let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() < 3 {
        return false;
    }
    let ascii = letters.iter().filter(|c| c.is_ascii()).count();
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .map(|w| w.to_lowercase())
        .collect();
    const COMMON: &[&str] = &[
        "the", "a", "an", "is", "are", "of", "and", "to", "in", "it", "i", "you", "that", "for",
        "on", "with", "be", "this", "as", "was", "cat", "cats", "can", "hello", "paris",
    ];
    ascii * 10 >= letters.len() * 8 && words.iter().any(|w| COMMON.contains(&w.as_str()))
}

/// Runs `tests/<script>` (an official client package's check) with the test venv's Python
/// against `socket` and `model`, and asserts it succeeded and printed `expect`.
#[allow(dead_code)]
/// Sends one request to `d` as another local user (uid/gid 65534), with the system Python (the
/// test's own binaries may live where that user cannot enter); opens the socket to all uids
/// first. Returns the HTTP status (0 when the connection gave no answer) and the body.
pub fn request_as_other_user(
    d: &Daemon,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    use std::os::unix::process::CommandExt;
    d.open_to_all();
    const CLIENT: &str = r#"
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
try:
    c = Unix("inhouse", timeout=120)
    body = sys.argv[4].encode() if len(sys.argv) > 4 else None
    c.request(sys.argv[2], sys.argv[3], body=body,
              headers={"Content-Type": "application/json"} if body else {})
    r = c.getresponse()
    print(r.status)
    sys.stdout.write(r.read().decode(errors="replace"))
except Exception as e:
    print(0)
    sys.stdout.write(str(e))
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", CLIENT]).arg(&d.socket).args([method, path]);
    if let Some(b) = body {
        cmd.arg(b);
    }
    let out = cmd
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run python3 as uid 65534");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, rest) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (status.trim().parse().unwrap_or(0), rest.to_string())
}

pub fn run_python_client(script: &str, socket: &Path, model: &str, expect: &str) {
    let python = std::env::var("INHOUSE_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap();
        format!("{home}/.cache/inhouse/venv/bin/python")
    });
    assert!(
        Path::new(&python).exists(),
        "{python} is missing: run scripts/setup (it makes the venv with tests/requirements.txt)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = Command::new(&python)
        .arg(&script)
        .arg(socket)
        .arg(model)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(expect), "{stdout}");
}

/// Runs the `inhouse` client against a daemon.
#[allow(dead_code)]
pub fn cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    inhouse_at(&d.socket, args)
}

/// Runs the `inhouse` client with this socket path (offline commands never connect).
#[allow(dead_code)]
pub fn inhouse_at(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inhouse"))
        .env("INHOUSE_SOCKET", socket)
        .args(args)
        .output()
        .expect("run inhouse")
}

/// Runs the `inhouse` client against `socket` as `uid` (gid the same, no supplementary groups)
/// through setpriv, as another local user would.
pub fn inhouse_as(uid: u32, socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_inhouse"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("setpriv is installed (util-linux)")
}

/// The stdout of a client run that must have succeeded.
#[allow(dead_code)]
pub fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "inhouse failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The stderr of a client run that must have failed.
#[allow(dead_code)]
pub fn failed(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "inhouse should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
