//! Shared helpers for the integration tests: the API served in-process over a scripted engine
//! ([`TestServer`]), the real `inhoused` binary as a child process on a socket in a temporary
//! directory ([`Daemon`]), the real test models, and a client.
#![allow(dead_code)]

use hyper::Method;
use inhouse::api::AppState;
use inhouse::client::Client;
use inhouse::config::Config;
use inhouse::engine::fake::FakeEngine;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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

/// Qwen2.5-Coder 0.5B Instruct, Q4_K_M (qwen2 architecture, the Qwen2.5 Jinja template with
/// tools): the tool-calling test model.
#[allow(dead_code)]
pub fn qwen() -> PathBuf {
    model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// Gemma 3 270M, Q4_K_M (gemma3 architecture, no template in the GGUF).
pub fn gemma() -> PathBuf {
    model("gemma-3-270m-q4_k_m.gguf")
}

/// The API served in-process (mini-redis' `start_server()`): the real router, roles, limits and
/// Unix socket, over a real encrypted store in a temporary directory and a scripted
/// [`FakeEngine`] instead of llama.cpp. For every test whose subject is not generation itself
/// or the daemon process; it starts in milliseconds.
pub struct TestServer {
    /// The socket the API listens on.
    pub socket: PathBuf,
    /// The state directory (the database file).
    pub dir: PathBuf,
    /// The scripted engine: set its script, read what it was asked.
    pub engine: Arc<FakeEngine>,
    /// The store the API writes to.
    pub store: inhouse::storage::StoreHandle,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _tmp: tempfile::TempDir,
}

impl TestServer {
    /// Serves a fake model `smol` with the default configuration.
    pub fn start() -> TestServer {
        TestServer::with_config("")
    }

    /// Serves a fake model `smol` with `toml` as the configuration file's text.
    pub fn with_config(toml: &str) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut config = Config::from_toml(toml).expect("test config");
        config.state_dir = dir.clone();
        config.socket = dir.join("inhouse.sock");
        config.check().expect("test config checks");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let engine = FakeEngine::new(&["smol"]);
        let (store, listener) = runtime.block_on(async {
            let key = inhouse::crypto::MasterKey::generate().expect("master key");
            let store = inhouse::storage::StoreHandle::open(dir.join("inhouse.db"), key)
                .await
                .expect("open the store");
            let listener = tokio::net::UnixListener::bind(&config.socket).expect("bind");
            (store, listener)
        });
        let state = AppState::new(&config, engine.clone(), store.clone(), None);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = inhouse::api::server::ServerLimits::from_config(&config.limits);
        runtime.spawn(inhouse::api::serve(listener, state, limits, async {
            let _ = stopped.await;
        }));
        TestServer {
            socket: config.socket.clone(),
            dir,
            engine,
            store,
            runtime: Some(runtime),
            stop: Some(stop),
            _tmp: tmp,
        }
    }

    /// A client for this server's socket.
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Lets every local uid reach the socket (see [`Daemon::open_to_all`]).
    pub fn open_to_all(&self) {
        open_to_all(&self.dir, &self.socket);
    }

    /// Whether the server still answers `/health`.
    pub fn serving(&self) -> bool {
        rt().block_on(async { self.client().raw(Method::GET, "/health", None).await })
            .is_ok_and(|(status, _)| status.as_u16() == 200)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn open_to_all(dir: &Path, socket: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
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
        Daemon::with_config(&[("smol", &smollm2())], toml)
    }

    /// Starts a daemon serving `models` with `toml` as its config file, in a temporary state
    /// directory with a fresh key.
    pub fn with_config(models: &[(&str, &Path)], toml: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("inhouse.toml");
        std::fs::write(&cfg, toml).expect("config file");
        let cfg = cfg.to_str().expect("UTF-8 path").to_string();
        let key = dir.path().join("master.key");
        inhouse::crypto::generate_key_file(&key).expect("key file");
        let mut d = Daemon::start_in(dir.path(), &key, models, &["--config", &cfg]);
        d._tmp = Some(dir);
        d
    }

    /// Lets every local uid reach the socket, so that the daemon's own checks (roles, limits),
    /// not the file mode, decide (tests run clients as other uids with setpriv).
    pub fn open_to_all(&self) {
        open_to_all(&self.dir, &self.socket);
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

/// A streamed answer as it arrived: status, content type, and every `data:` payload with the
/// moment it was read.
pub struct Sse {
    pub status: u16,
    pub content_type: String,
    pub events: Vec<(String, Instant)>,
}

/// POSTs `body` and reads its server-sent events to the end.
pub async fn collect_sse(client: &Client, path: &str, body: &Value) -> Sse {
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
        let parsed = parser.push(&chunk.expect("chunk"));
        let at = Instant::now();
        events.extend(parsed.into_iter().map(|e| (e, at)));
    }
    Sse {
        status: resp.status.as_u16(),
        content_type: resp.content_type.clone(),
        events,
    }
}

/// Streams a request (the body says `"stream": true`); returns the status, the content type and
/// every `data:` payload.
pub async fn post_stream(client: &Client, path: &str, body: &Value) -> (u16, String, Vec<String>) {
    let sse = collect_sse(client, path, body).await;
    let events = sse.events.into_iter().map(|(e, _)| e).collect();
    (sse.status, sse.content_type, events)
}

/// A chat request body for `model`: one user turn, plus the fields of `extra`.
pub fn chat_body(model: &str, prompt: &str, extra: Value) -> Value {
    chat_turns(model, &[("user", prompt)], extra)
}

/// A chat request body for `model` with these `(role, content)` turns, plus the fields of
/// `extra`.
pub fn chat_turns(model: &str, turns: &[(&str, &str)], extra: Value) -> Value {
    let messages: Vec<Value> = turns
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    let mut body = serde_json::json!({"model": model, "messages": messages});
    for (k, v) in extra.as_object().expect("extra fields are an object") {
        body[k] = v.clone();
    }
    body
}

/// `GET /metrics` as text.
pub async fn metrics_text(client: &Client) -> String {
    let (status, body) = client
        .raw(Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec()).expect("utf-8")
}

/// `GET /metrics` once `model` shows no busy slot: the engine thread refreshes its gauges after
/// the step that ended an answer, a moment after the client has read it. Fails after 5 s.
pub async fn metrics_when_idle(client: &Client, model: &str) -> String {
    let t = std::time::Instant::now();
    loop {
        let text = metrics_text(client).await;
        if sample(&text, &format!("inhouse_busy_slots{{model=\"{model}\"}}")) == 0.0 {
            return text;
        }
        assert!(
            t.elapsed().as_secs() < 5,
            "{model}: a slot still busy after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A parsed exposition: series (name with labels, as written) → value, and metric → type.
pub struct Exposition {
    pub samples: std::collections::BTreeMap<String, f64>,
    pub types: std::collections::BTreeMap<String, String>,
}

/// Parses the Prometheus text format strictly enough to catch malformed output: every line is a
/// `# HELP`, a `# TYPE` or `name{label="value",…} number`, and every sample's metric has a type.
pub fn parse_metrics(text: &str) -> Exposition {
    let mut samples = std::collections::BTreeMap::new();
    let mut types = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name {name:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').expect("label pair");
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(v.starts_with('"') && v.ends_with('"') && v.len() >= 2);
                }
            }
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(base), "{name} has no TYPE line");
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    Exposition { samples, types }
}

impl Exposition {
    /// The value of `series`, written as the line writes it (`name{label="value"}`).
    pub fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series}"))
    }
}

/// The value of one sample of Prometheus text (checked by [`parse_metrics`]), `series` written
/// as the line writes it (e.g. `inhouse_busy_slots{model="smol"}`).
pub fn sample(metrics: &str, series: &str) -> f64 {
    parse_metrics(metrics).get(series)
}

/// Polls `done` every 50 ms until it holds; fails saying `what` after `secs` seconds.
pub fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what} (after {secs} s)");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    request_as_uid(65534, &d.dir, &d.socket, method, path, body)
}

/// [`request_as_other_user`] as `uid` (its gid the same number), to the server whose state
/// directory is `dir` and socket `socket`.
#[allow(dead_code)]
pub fn request_as_uid(
    uid: u32,
    dir: &Path,
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    use std::os::unix::process::CommandExt;
    open_to_all(dir, socket);
    const CLIENT: &str = r#"
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
try:
    c = Unix("inhouse", timeout=120)
    body = sys.argv[4].encode() if len(sys.argv) > 4 else None
    try:
        c.request(sys.argv[2], sys.argv[3], body=body,
                  headers={"Content-Type": "application/json"} if body else {})
    except (BrokenPipeError, ConnectionResetError):
        # A caller refused by its credentials is answered as soon as it connects, and the
        # connection closed, possibly before the request was written: the answer is still in
        # the socket.
        data = b""
        while chunk := c.sock.recv(65536):
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        print(int(head.split(b" ")[1]))
        sys.stdout.write(rest.decode(errors="replace"))
        sys.exit(0)
    r = c.getresponse()
    print(r.status)
    sys.stdout.write(r.read().decode(errors="replace"))
except Exception as e:
    print(0)
    sys.stdout.write(str(e))
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", CLIENT]).arg(socket).args([method, path]);
    if let Some(b) = body {
        cmd.arg(b);
    }
    let out = cmd
        .current_dir("/")
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run python3 as another uid");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, rest) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (status.trim().parse().unwrap_or(0), rest.to_string())
}

pub fn run_python_client(script: &str, socket: &Path, model: &str, expect: &str) -> String {
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
    stdout.into_owned()
}

/// Every regular file under `dir` (sockets and the like left out), for searches of the whole
/// state directory.
#[allow(dead_code)]
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// Whether `needle` (non-empty) occurs in `hay`.
#[allow(dead_code)]
pub fn bytes_contain(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
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

/// Runs the `inhouse` client against `socket` on a pseudo-terminal (util-linux `script`), as a
/// person at a terminal would; returns what the terminal showed (stdout and stderr together).
/// The run must succeed.
pub fn inhouse_on_terminal(socket: &Path, args: &[&str]) -> String {
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let mut line = quote(env!("CARGO_BIN_EXE_inhouse"));
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env("INHOUSE_SOCKET", socket)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script is installed (util-linux)");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "inhouse on a terminal failed: {screen}"
    );
    screen
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

/// The toolchain the daemon runs for jobs (`inhouse-quantize`, next to `inhoused`); a missing one
/// fails the test with what to do.
#[allow(dead_code)]
pub fn toolchain() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_inhoused"))
        .parent()
        .expect("bin dir")
        .join("inhouse-quantize");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build --release -p inhouse-quantize)",
        p.display()
    );
    p
}

/// all-MiniLM-L6-v2 (from scripts/fetch-models) converted to GGUF by `inhouse-quantize
/// import-hf` into `dir/minilm.gguf`: the embedding model of the knowledge tests.
#[allow(dead_code)]
pub fn minilm_gguf(dir: &Path) -> PathBuf {
    let checkpoint = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        checkpoint.join("model.safetensors").is_file(),
        "the checkpoint {} is missing: run scripts/fetch-models",
        checkpoint.display()
    );
    let out = dir.join("minilm.gguf");
    let run = Command::new(toolchain())
        .arg("import-hf")
        .arg(&checkpoint)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run inhouse-quantize");
    assert!(
        run.status.success(),
        "import-hf failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}
