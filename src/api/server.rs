//! The accept loop: connection cap, slow-client timeouts, peer credentials per connection, and
//! graceful shutdown with a deadline.
//!
//! Written on hyper directly rather than `axum::serve` because that offers neither a header
//! timeout nor a connection cap, and both are what keeps a few thousand idle or trickling
//! local clients from exhausting the daemon.

use super::limits::UidCounter;
use super::Caller;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Open connections at most; further ones are closed at once.
    pub max_connections: usize,
    /// Open connections one uid may hold; its further ones are closed at once, so that one
    /// local process cannot take every connection slot (e.g. by pipelining requests and never
    /// reading the answers, which holds a slot for as long as it likes).
    pub max_connections_per_uid: usize,
    /// A request's headers must arrive within this; it also closes idle keep-alive connections.
    pub header_timeout: Duration,
    /// After the shutdown signal, open requests get this long to finish before they are
    /// cancelled.
    pub shutdown_deadline: Duration,
}

impl ServerLimits {
    /// The connection limits `limits` configures.
    pub fn from_config(limits: &crate::config::LimitsConfig) -> Self {
        ServerLimits {
            max_connections: limits.max_connections,
            max_connections_per_uid: limits.max_connections_per_uid,
            header_timeout: Duration::from_secs(limits.header_timeout_secs),
            shutdown_deadline: Duration::from_secs(limits.shutdown_deadline_secs),
        }
    }
}

impl Caller {
    /// The peer of an accepted connection, as the kernel reports it.
    pub fn of(stream: &UnixStream) -> Caller {
        match stream.peer_cred() {
            Ok(c) => Caller {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(_) => Caller::UNKNOWN,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets open
/// requests finish for up to `limits.shutdown_deadline`, and returns (dropping, and so
/// cancelling, whatever is still running).
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_uid = UidCounter::new(limits.max_connections_per_uid);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let caller = Caller::of(&stream);
        let Some(uid_connection) = per_uid.acquire(caller.uid) else {
            tracing::warn!(
                uid = caller.uid,
                max = limits.max_connections_per_uid,
                "per-uid connection cap reached; closing a new connection"
            );
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                max = limits.max_connections,
                "connection cap reached; closing a new connection"
            );
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(caller));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
            drop(uid_connection);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(limits.shutdown_deadline) => {
            tracing::warn!(deadline = ?limits.shutdown_deadline, "shutdown deadline passed; cancelling open requests");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_limits_take_their_settings_from_the_config() {
        let c = crate::config::Config::from_toml("[limits]\nheader-timeout-secs = 3\n").unwrap();
        let l = ServerLimits::from_config(&c.limits);
        assert_eq!(l.header_timeout, Duration::from_secs(3));
        let defaults = crate::config::LimitsConfig::default();
        assert_eq!(l.max_connections, defaults.max_connections);
        assert_eq!(l.max_connections_per_uid, defaults.max_connections_per_uid);
        assert_eq!(
            l.shutdown_deadline,
            Duration::from_secs(defaults.shutdown_deadline_secs)
        );
    }
}
