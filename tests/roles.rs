//! Roles from peer credentials, against the real daemon: clients run as other uids with setpriv.

mod common;

use common::*;
use std::process::Command;

/// Runs the `inhouse` CLI as `uid`:`gid` with no supplementary groups.
fn cli_as(uid: u32, gid: u32, socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            env!("CARGO_BIN_EXE_inhouse"),
            "--socket",
        ])
        .arg(socket)
        .args(args)
        .output()
        .expect("setpriv is installed (util-linux)")
}

#[test]
fn strangers_are_refused_and_configured_users_served() {
    let d = Daemon::smol_with_config(
        "[roles]\nuser-uids = [4242]\nauditor-uids = [4343]\nuser-groups = []\n",
    );
    // Let other uids reach the socket; the daemon, not the file mode, is under test here.
    d.open_to_all();

    for (who, uid, models_ok) in [
        ("stranger", 4141, false),
        ("user", 4242, true),
        ("auditor", 4343, false),
        ("root", 0, true),
    ] {
        let health = cli_as(uid, uid, &d.socket, &["health"]);
        assert!(health.status.success(), "{who}: health is open to all");
        let out = cli_as(uid, uid, &d.socket, &["models"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), models_ok, "{who}: {err}");
        if !models_ok {
            assert!(
                err.contains("403") && err.contains("user role"),
                "{who}: {err}"
            );
        }
    }
    let out = cli_as(
        4242,
        4242,
        &d.socket,
        &["run", "smol", "Say hi", "--max-tokens", "3"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.log().contains("request denied"), "denials are logged");
}
