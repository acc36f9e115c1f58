//! Crash points for the fault-matrix tests (`tests/faults.rs`).
//!
//! Every operation that writes calls [`point`] between its steps ("after the blob is written,
//! before the manifest", "after the transaction commits, before the answer"). Normally that is
//! one relaxed atomic load and nothing happens. When the daemon is started with
//! `INHOUSE_FAULT=NAME` (or `NAME@N`, the N-th time that point is reached, default 1), reaching
//! the named point kills the process with SIGKILL, exactly as a power cut or the OOM killer would
//! at that instant: no destructor, no flush, no unwinding.
//!
//! The hook can only end the process that opted into it, so it is compiled into release builds:
//! the tests exercise the binary that ships. The systemd unit never sets the variable, and the
//! daemon logs a warning at start when it is set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The armed point: its name and the hit that kills.
struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("INHOUSE_FAULT").ok()?;
            let (name, at) = match spec.split_once('@') {
                Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1).max(1)),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                at,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// The armed point's name, when `INHOUSE_FAULT` is set (for the start-up warning).
pub fn armed_name() -> Option<&'static str> {
    armed().map(|a| a.name.as_str())
}

/// A named crash point: SIGKILLs this process when `INHOUSE_FAULT` names it (see the module
/// documentation); otherwise does nothing.
pub fn point(name: &str) {
    let Some(a) = armed() else { return };
    if a.name != name {
        return;
    }
    if a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.at {
        // SIGKILL cannot be caught: the process ends here, mid-operation.
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        // Not reached; kill(2) of oneself with SIGKILL does not return.
        std::process::abort();
    }
}
