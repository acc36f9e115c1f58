//! The socket itself: what may stand at its path, its directory, its mode; and slow bodies.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn start_at(dir: &Path, socket: &Path) -> std::process::Output {
    let key = dir.join("k");
    if !key.exists() {
        inhouse::crypto::generate_key_file(&key).unwrap();
    }
    // A daemon that cannot bind exits at once; one that can is stopped by the timeout.
    Command::new("timeout")
        .args(["-s", "TERM", "20"])
        .arg(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(dir)
        .arg("--key-file")
        .arg(&key)
        .arg("--model")
        .arg(format!("smol={}", smollm2().display()))
        .output()
        .unwrap()
}

#[test]
fn only_a_stale_socket_is_ever_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // A symlink at the socket path: refused, and its target untouched.
    let target = dir.path().join("precious");
    std::fs::write(&target, b"keep me").unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = start_at(dir.path(), &link);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symlink"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    // A regular file: refused, kept.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"data").unwrap();
    let out = start_at(dir.path(), &file);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    // A world-writable directory without the sticky bit: refused.
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = start_at(dir.path(), &open_dir.join("s.sock"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by group or others"));
    // A symlinked directory: refused.
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let linked_dir = dir.path().join("linked");
    std::os::unix::fs::symlink(&real, &linked_dir).unwrap();
    let out = start_at(dir.path(), &linked_dir.join("s.sock"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    inhouse::crypto::generate_key_file(&key).unwrap();
    // A stale socket: bound, then its listener gone.
    let sock = dir.path().join("inhouse.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
    let d = Daemon::start_in(dir.path(), &key, &[("smol", &smollm2())], &[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A second daemon on the same, live, socket: refused; the first keeps serving.
    let out = start_at(dir.path(), &d.socket);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    let v = rt()
        .block_on(d.client().json(hyper::Method::GET, "/health", None))
        .unwrap();
    assert_eq!(v["status"], "ok");
}

#[test]
fn a_body_that_never_finishes_gets_408_and_idle_connections_are_closed() {
    let d = TestServer::with_config("[limits]\nbody-timeout-secs = 2\nheader-timeout-secs = 2\n");
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"").unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // A connection that sends nothing is closed after the header timeout.
    let mut idle = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t = Instant::now();
    let n = idle.read(&mut buf).unwrap_or(0);
    let waited = t.elapsed();
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
        "unexpected data"
    );
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
}
