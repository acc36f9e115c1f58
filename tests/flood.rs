//! Slow and numerous clients: 500 connections trickling bytes and 2,000 connections at once.
//! A normal client is still served, the daemon's memory and file descriptors stay bounded, and
//! nothing crashes.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_and_numerous_clients_do_not_starve_a_normal_one() {
    let max_connections = 512;
    let d = Daemon::smol_with_config(&format!(
        "[limits]\nmax-connections = {max_connections}\nmax-connections-per-uid = {max_connections}\nheader-timeout-secs = 3\nbody-timeout-secs = 3\n"
    ));
    let pid = d.child.id();
    let socket = d.socket.clone();
    let (fds_before, rss_before) = (fd_count(pid), rss_kib(pid));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The whole round is bounded: a connection that hangs fails the test instead of CI.
    let round = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(180), async move {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        // 500 slow clients: a request header one byte every 100 ms, for up to 20 s.
        for _ in 0..500 {
            let (socket, stop) = (socket.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut s) = tokio::net::UnixStream::connect(&socket).await else { return };
                let req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
                for b in req.iter().cycle().take(200) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        // 2,000 more connections opened at once and held (most beyond the cap: closed at once).
        let mut held = Vec::new();
        for _ in 0..2000 {
            if let Ok(s) = tokio::net::UnixStream::connect(&socket).await {
                held.push(s);
            }
        }
        // The daemon's descriptors stay bounded by the cap while all this is open.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fds_during = fd_count(pid);
        assert!(
            fds_during <= fds_before + max_connections + 16,
            "{fds_during} descriptors open (before: {fds_before}, cap {max_connections})"
        );
        // A normal client is served: retried while slots are full, within the header timeout
        // that evicts the slow ones.
        let c = inhouse::client::Client::new(&socket);
        let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
        let t = Instant::now();
        // Each attempt is bounded too: one that gets no answer (seen once in CI, not reproduced
        // since; see the closing note of issue 13) counts as refused and is retried, so the test
        // fails with a message instead of hanging.
        let served = loop {
            let attempt = c.json(hyper::Method::POST, "/v1/chat/completions", Some(&body));
            let outcome = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("no answer within 10 s".to_string()),
            };
            match outcome {
                Ok(v) => break v,
                Err(e) if t.elapsed() < Duration::from_secs(30) => {
                    if e.starts_with("no answer") {
                        eprintln!("an attempt got {e}; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("a normal client was not served in 30 s: {e}"),
            }
        };
        assert!(served["choices"][0]["message"]["content"].is_string());
        eprintln!(
            "normal client served after {:?}; daemon fds {fds_before} -> {fds_during}",
            t.elapsed()
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(held);
        // The slow clients stop at the flag or after 20 s; a hung one fails the test.
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
        assert!(ended.is_ok(), "slow clients still running 60 s after the stop");
    })
        .await
    });
    assert!(round.is_ok(), "the flood round did not finish in 180 s");
    // Afterwards: nothing crashed, descriptors return, memory bounded.
    let mut d = d;
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon died:\n{}",
        d.log()
    );
    wait_until(
        10,
        &format!("descriptors not released (before {fds_before})"),
        || fd_count(pid) <= fds_before + 4,
    );
    let rss_after = rss_kib(pid);
    eprintln!("daemon RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    rt_ok(&d);
}

fn rt_ok(d: &Daemon) {
    let v = rt()
        .block_on(d.client().json(hyper::Method::GET, "/health", None))
        .unwrap();
    assert_eq!(v["status"], "ok");
}

#[test]
fn one_uid_cannot_take_every_connection() {
    let d = Daemon::smol_with_config(
        "[limits]\nmax-connections = 64\nmax-connections-per-uid = 4\nheader-timeout-secs = 60\n",
    );
    d.open_to_all();
    // The start-up probe's connections end first (each counts until the daemon sees it closed).
    std::thread::sleep(Duration::from_millis(300));
    // This uid holds its four connections without sending anything.
    let held: Vec<_> = (0..4)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Its fifth is closed at once, without an answer.
    let fifth = rt().block_on(d.client().json(hyper::Method::GET, "/health", None));
    assert!(
        fifth.is_err(),
        "a fifth connection was served: {fifth:?}\n{}",
        d.log()
    );
    assert!(
        d.log().contains("per-uid connection cap reached"),
        "{}",
        d.log()
    );
    // Another uid is served meanwhile.
    assert_eq!(request_as_other_user(&d, "GET", "/health", None).0, 200);
    // Closing one of the four gives the slot back.
    drop(held);
    wait_until(10, "the uid's slots never came back", || {
        rt().block_on(d.client().json(hyper::Method::GET, "/health", None))
            .is_ok()
    });
}
