//! systemd integration: socket activation, readiness and stopping notifications, the watchdog,
//! and logging to the journal with structured fields.
//!
//! Everything here is a no-op when systemd did not start the daemon (no `LISTEN_FDS`, no
//! `NOTIFY_SOCKET`, no `JOURNAL_STREAM`), so `inhoused` run by hand or by the tests needs nothing.
//!
//! Crates, and why not the `systemd` crate (bindings to C libsystemd, LGPL): its
//! `daemon::listen_fds` hands back raw fds, and turning one into a listener needs `unsafe` in this
//! crate, which forbids it; it would also add libsystemd-dev to the build and a C library to
//! audit, for what is a few lines of protocol. Instead, all three pure Rust:
//! - `listenfd` (sd_listen_fds(3)): checks `LISTEN_PID`, checks that the fd is a Unix stream
//!   socket, marks it close-on-exec (child processes such as the quantizer never inherit the API
//!   socket) and returns a std `UnixListener`; its `unsafe` stays inside it.
//! - `sd-notify` (sd_notify(3)): `READY=1`, `STOPPING=1`, `STATUS=`, `WATCHDOG=1` as datagrams
//!   on `$NOTIFY_SOCKET`.
//! - `tracing-journald`: every `tracing` event becomes one journal entry, its fields journal
//!   fields (`INHOUSE_MODEL=…`), its level the priority.
//!
//! What may be logged: model names, sizes, counts, timings, uids and error kinds. Never prompt or
//! answer text, and never key material: no `tracing` call in this crate takes either, and the
//! packaging tests check the daemon's log for a prompt they sent.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::time::Duration;

/// What systemd handed the daemon at start-up. Take it with [`Activation::from_env`] before any
/// thread is started.
#[derive(Debug, Default)]
pub struct Activation {
    /// The listening API socket, when started through `inhoused.socket`.
    pub listener: Option<UnixListener>,
    /// The watchdog interval (`WatchdogSec=`), when the watchdog is on for this process.
    pub watchdog: Option<Duration>,
}

impl Activation {
    /// Nothing from systemd: the daemon binds its own socket and runs no watchdog (tests, and
    /// `inhoused` started by hand).
    pub fn none() -> Activation {
        Activation::default()
    }

    /// Reads and unsets `LISTEN_FDS`/`LISTEN_PID` and `WATCHDOG_USEC`/`WATCHDOG_PID`, so that
    /// child processes inherit neither. Must run while the process has one thread (before the
    /// tokio runtime starts): changing the environment races with other threads reading it.
    ///
    /// Exactly one activated socket is expected (`inhoused.socket` has one `ListenStream=`);
    /// anything else is an error rather than a socket silently ignored.
    pub fn from_env() -> io::Result<Activation> {
        let mut fds = listenfd::ListenFd::from_env();
        let listener = match fds.len() {
            0 => None,
            1 => fds.take_unix_listener(0)?,
            n => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("systemd passed {n} sockets; inhoused.socket should pass exactly one"),
                ))
            }
        };
        let watchdog = sd_notify::watchdog_enabled();
        // Edition 2021: safe to call; sound here because no other thread exists yet (see above).
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        Ok(Activation { listener, watchdog })
    }
}

/// Tells systemd the daemon is ready: models are loaded and the socket accepts.
pub fn notify_ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells systemd a graceful shutdown has begun (open requests are finishing).
pub fn notify_stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: finishing open requests"),
    ]);
}

/// Updates the one-line status `systemctl status inhoused` shows.
pub fn notify_status(status: &str) {
    send(&[sd_notify::NotifyState::Status(status)]);
}

fn send(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Pings the systemd watchdog at half its interval from the async runtime, for as long as the
/// returned task lives. A ping proves that the runtime that accepts connections is not wedged;
/// a long generation does not block it (llama.cpp runs on its own thread), so no busy period
/// can be mistaken for a hang. Returns `None` when the watchdog is off.
pub fn spawn_watchdog(interval: Option<Duration>) -> Option<tokio::task::JoinHandle<()>> {
    let period = interval?.checked_div(2)?.max(Duration::from_millis(100));
    tracing::debug!(period_ms = period.as_millis() as u64, "watchdog on");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

/// Is stderr connected to the journal? systemd sets `JOURNAL_STREAM=DEV:INODE` for a service
/// whose stderr goes to journald; a match with stderr's own device and inode means it still does
/// (an inherited variable with stderr redirected elsewhere does not match).
pub fn stderr_is_journal() -> bool {
    journal_stream_matches(std::env::var_os("JOURNAL_STREAM").as_deref())
}

fn journal_stream_matches(var: Option<&std::ffi::OsStr>) -> bool {
    let Some((dev, ino)) = var.and_then(|v| v.to_str()).and_then(|s| s.split_once(':')) else {
        return false;
    };
    let meta = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match meta {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// Sets up logging for `inhoused`: straight to journald (structured fields, priorities, the
/// identifier `inhoused`) when stderr is the journal, otherwise plain lines on stderr.
/// `INHOUSE_LOG` sets the filter (`debug`, `info,inhouse=trace`, …), else `default_filter`.
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;

    let filter =
        EnvFilter::try_from_env("INHOUSE_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let journald = if stderr_is_journal() {
        tracing_journald::layer().ok().map(|l| {
            l.with_syslog_identifier("inhoused".into())
                .with_field_prefix(Some("INHOUSE".into()))
        })
    } else {
        None
    };
    if let Some(journald) = journald {
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_watchdog_without_interval() {
        assert!(spawn_watchdog(None).is_none());
    }

    #[test]
    fn journal_stream_must_match_stderr() {
        use std::ffi::OsStr;
        // The test's stderr is a pipe or a terminal, never this made-up device and inode.
        assert!(!journal_stream_matches(Some(OsStr::new("1:1"))));
        assert!(!journal_stream_matches(Some(OsStr::new("garbage"))));
        assert!(!journal_stream_matches(None));
        // Its real device and inode do match.
        let m = std::fs::File::from(io::stderr().as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap();
        let real = format!("{}:{}", m.dev(), m.ino());
        assert!(journal_stream_matches(Some(OsStr::new(&real))));
    }
}
