//! Roles from peer credentials, against the real daemon: clients run as other uids with setpriv.

mod common;

use common::*;

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
        let health = inhouse_as(uid, &d.socket, &["health"]);
        assert!(health.status.success(), "{who}: health is open to all");
        let out = inhouse_as(uid, &d.socket, &["models"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), models_ok, "{who}: {err}");
        if !models_ok {
            assert!(
                err.contains("403") && err.contains("user role"),
                "{who}: {err}"
            );
        }
    }
    let out = inhouse_as(
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
