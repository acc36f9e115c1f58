//! The systemd side of `inhoused`, without systemd as PID 1: the unit files' sandbox score and
//! syntax, the sysusers.d and tmpfiles.d files, and the daemon under socket activation with the
//! notify protocol and the watchdog (driven by `systemd-socket-activate` and a notify socket that
//! the test owns). The installed package is tested in `tests/packaging.rs`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command and returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup)"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `systemd-analyze security --offline=true`'s overall exposure for the unit file at `path`
/// (drop-ins in `path.d/` beside it count).
fn exposure(path: &Path) -> f64 {
    let (_, text) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(path)
        .current_dir(path.parent().unwrap()));
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    let value = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    println!("{}: exposure {value}", path.display());
    value
}

#[test]
fn service_sandbox_scores_at_most_half_and_gpu_drop_in_at_most_0_8() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("inhoused.service");
    std::fs::copy(repo().join("systemd/inhoused.service"), &unit).unwrap();
    let cpu = exposure(&unit);
    assert!(cpu <= 0.5, "CPU unit exposure {cpu} > 0.5");

    let dropins = dir.path().join("inhoused.service.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::copy(
        repo().join("packaging/dropins/gpu.conf"),
        dropins.join("gpu.conf"),
    )
    .unwrap();
    let gpu = exposure(&unit);
    assert!(gpu <= 0.8, "GPU drop-in exposure {gpu} > 0.8");
    assert!(gpu > cpu, "the GPU drop-in should open something up");
}

#[test]
fn units_verify_without_a_single_message() {
    // `systemd-analyze verify` exits 0 even for a misspelt key, so its output must be empty.
    // ExecStart= must name an existing binary: point it at the one cargo built (the installed
    // paths are verified as installed in tests/packaging.rs).
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(repo().join("systemd/inhoused.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/sbin/inhoused "));
    let service = service.replace(
        "ExecStart=/usr/sbin/inhoused ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_inhoused")),
    );
    std::fs::write(dir.path().join("inhoused.service"), service).unwrap();
    std::fs::copy(
        repo().join("systemd/inhoused.socket"),
        dir.path().join("inhoused.socket"),
    )
    .unwrap();
    let (_, text_paths) = run(Command::new("systemd-analyze")
        .args([
            "verify",
            "--man=no",
            "./inhoused.service",
            "./inhoused.socket",
        ])
        .current_dir(dir.path()));
    assert!(
        text_paths.trim().is_empty(),
        "systemd-analyze verify printed:\n{text_paths}"
    );

    // The check catches what it is meant to: a misspelt key.
    let bad = std::fs::read_to_string(dir.path().join("inhoused.service"))
        .unwrap()
        .replace("NoNewPrivileges=", "NoNewPrivilege=");
    std::fs::write(dir.path().join("inhoused.service"), bad).unwrap();
    let (_, text) = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no", "./inhoused.service"])
        .current_dir(dir.path()));
    assert!(
        text.contains("NoNewPrivilege"),
        "a misspelt key went unnoticed:\n{text}"
    );
}

#[test]
fn unit_keeps_private_users_off_and_says_why() {
    let service = std::fs::read_to_string(repo().join("systemd/inhoused.service")).unwrap();
    let settings: Vec<&str> = service
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !settings.iter().any(|l| l.starts_with("PrivateUsers=")),
        "PrivateUsers= must stay off: every peer uid would read as 65534"
    );
    assert!(service.contains("PrivateUsers= stays off") && service.contains("65534"));
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "RestartPreventExitStatus=78",
        "PrivateNetwork=yes",
        "IPAddressDeny=any",
        "RestrictAddressFamilies=AF_UNIX",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
        "UMask=0077",
        "LimitCORE=0",
        "LoadCredentialEncrypted=inhouse-master-key:",
    ] {
        assert!(
            service.contains(needed),
            "inhoused.service lacks {needed:?}"
        );
    }
}

#[test]
fn sysusers_and_tmpfiles_apply_to_an_empty_root() {
    // Applied to a scratch root (never the host): the accounts and directories come out as the
    // socket's permissions expect.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let (ok, text) = run(Command::new("systemd-sysusers")
        .arg("--root")
        .arg(root.path())
        .arg(repo().join("systemd/sysusers.d/inhouse.conf")));
    assert!(ok, "systemd-sysusers failed:\n{text}");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("inhouse:"))
        .unwrap_or_else(|| panic!("no user inhouse in\n{passwd}"));
    assert!(
        user.ends_with(":/var/lib/inhouse:/usr/sbin/nologin"),
        "{user}"
    );
    for g in ["inhouse", "inhouse-admin", "inhouse-auditor"] {
        assert!(
            group.lines().any(|l| l.starts_with(&format!("{g}:"))),
            "no group {g} in\n{group}"
        );
    }
    let (ok, text) = run(Command::new("systemd-tmpfiles")
        .arg("--root")
        .arg(root.path())
        .arg("--create")
        .arg(repo().join("systemd/tmpfiles.d/inhouse.conf")));
    assert!(ok, "systemd-tmpfiles failed:\n{text}");
    use std::os::unix::fs::PermissionsExt;
    for (dir, mode) in [
        ("run/inhouse", 0o750),
        ("var/lib/inhouse", 0o700),
        ("var/lib/inhouse/models", 0o700),
    ] {
        let meta = std::fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{dir}");
    }
}

/// Collects the notify messages sent to a datagram socket the test owns.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    /// Reads whatever arrives during `period`.
    fn collect_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.extend(msg.lines().map(str::to_string));
            }
        }
    }

    /// Waits until a message containing `line` arrives; returns every line seen so far.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> &[String] {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while !self.seen.iter().any(|l| l == line) {
            assert!(
                Instant::now() < deadline,
                "no {line:?} from the daemon; got {:?}",
                self.seen
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.extend(msg.lines().map(str::to_string));
            }
        }
        &self.seen
    }
}

#[test]
fn socket_activation_notify_watchdog_and_stopping() {
    let model = common::smollm2();
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let mut notify = NotifySocket::bind(dir.path());
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    // The master key where systemd's LoadCredentialEncrypted= puts it: a 0400 file in a private
    // credentials directory.
    let creds = dir.path().join("credentials");
    write_key(&creds.join("inhouse-master-key"));
    // systemd-socket-activate binds the socket, waits for the first connection, then execs the
    // daemon with LISTEN_FDS=1 and LISTEN_PID set, as systemd does for inhoused.socket.
    let mut child = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&api)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.path.display()))
        .args(["-E", "WATCHDOG_USEC=400000", "-E", "INHOUSE_LOG=info"])
        .arg("-E")
        .arg(format!("CREDENTIALS_DIRECTORY={}", creds.display()))
        // systemd-socket-activate passes only the variables it is given.
        .args(["-E", "LD_LIBRARY_PATH"])
        .arg(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--model")
        .arg(format!("smol={}", model.display()))
        .args(["--threads", "2", "--ctx-size", "2048"])
        .arg("--state-dir")
        .arg(dir.path())
        // A path the daemon must not bind: the activated socket wins.
        .arg("--socket")
        .arg(dir.path().join("not-this.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate (package systemd) is needed");
    let mut guard = KillOnDrop(Some(child.id()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate made no socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The first connection starts the daemon; it is answered once the model is loaded.
    let client = inhouse::client::Client::new(&api);
    let health = common::rt()
        .block_on(client.json(hyper::Method::GET, "/health", None))
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
            panic!("health on the activated socket: {e}\n{log}")
        });
    assert_eq!(health["status"], "ok", "{health}");
    notify.wait_for("READY=1", Duration::from_secs(60));
    assert!(notify.seen.iter().any(|l| l.starts_with("STATUS=loading")));
    assert!(notify
        .seen
        .iter()
        .any(|l| l.starts_with("STATUS=serving 1 model")));
    // Pings at half the 400 ms interval.
    let pings_before = notify.seen.iter().filter(|l| *l == "WATCHDOG=1").count();
    notify.collect_for(Duration::from_millis(900));
    let pings = notify.seen.iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!(
        pings >= pings_before + 2,
        "watchdog pings: {:?}",
        notify.seen
    );

    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    notify.wait_for("STOPPING=1", Duration::from_secs(10));
    let status = wait_exit(&mut child, Duration::from_secs(30));
    guard.disarm();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("listening on the socket systemd passed"),
        "{log}"
    );
    // The activated socket belongs to systemd: the daemon leaves it; it bound nothing itself.
    assert!(api.exists(), "the daemon removed the activated socket");
    assert!(!dir.path().join("not-this.sock").exists());
}

#[test]
fn two_activated_sockets_are_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    let mut child = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&a)
        .arg("--listen")
        .arg(&b)
        .arg(env!("CARGO_BIN_EXE_inhoused"))
        .args(["--model", "x=/nonexistent.gguf"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::os::unix::net::UnixStream::connect(&a);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(78), "{status}");
}

/// 32 random bytes, mode 0400, in a 0700 directory: the layout systemd gives a credential.
fn write_key(path: &Path) {
    use std::io::{Read, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path.parent().unwrap())
        .unwrap();
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut key)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .unwrap()
        .write_all(&key)
        .unwrap();
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the process (SIGKILL) if the test fails before it was waited for; disarmed once it
/// has been (its pid could be reused after that).
struct KillOnDrop(Option<u32>);

impl KillOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}
