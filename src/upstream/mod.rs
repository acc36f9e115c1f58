//! Upstream models: models that another OpenAI-compatible server runs (vLLM over several GPUs or
//! nodes, llama-server with RPC workers, another inhoused), reached over its Unix socket only,
//! and served here behind this daemon's validation, roles, limits, records and audit log.
//!
//! [`UpstreamEngine`] is an [`Engine`] in front of the local one: a request whose model is an
//! upstream's name is forwarded; everything else goes to the local engine. The API above it is
//! unchanged, so an upstream request takes exactly the route of a local one (validated into a
//! checked request, admitted per uid, recorded sealed with its audit event, streamed or
//! collected) and only the last step differs.
//!
//! Faults stay bounded: connect, first-byte, idle and total timeouts; an answer cap
//! (`max-answer-bytes`) and a piece count bounded by `max_tokens`; a strict reader of the event
//! stream and of each chunk ([`wire`], [`sse`]); a circuit breaker per upstream
//! ([`breaker`]); at most `max-concurrency` requests in flight and `queue-size` waiting. A
//! client that leaves drops the request's task, which drops the connection: the upstream sees
//! the socket close and stops generating.

pub mod breaker;
pub mod places;
pub mod sse;
pub mod wire;

use crate::config::UpstreamConfig;
use crate::engine::{
    BoxFuture, CpuBackend, Embeddings, Engine, EngineError, Event, EventStream, GenerateRequest,
    ModelInfo, UpstreamFailure,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Most bytes of an upstream's error body that are read (for its message).
const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// One upstream's state, for `/health`, `/v1/models` and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamStatus {
    /// The model name callers use.
    pub name: String,
    /// The upstream's own model id.
    pub model: String,
    /// `unknown`, `up`, `down`, `circuit_open` or `half_open`.
    pub state: &'static str,
    /// Consecutive failures now.
    pub failures: u32,
    /// Times the circuit breaker opened since start.
    pub circuit_opened: u64,
    /// Requests in flight to it now.
    pub in_flight: u32,
    /// Requests waiting for one of its `max-concurrency` places.
    pub waiting: u32,
    /// Its `max-concurrency`.
    pub max_concurrency: u32,
    /// Requests forwarded since start, by outcome (`ok`, a failure's code, `cancelled`).
    pub requests: BTreeMap<&'static str, u64>,
}

/// One upstream: its settings, breaker, concurrency and counts.
struct Upstream {
    cfg: UpstreamConfig,
    breaker: Mutex<breaker::Breaker>,
    places: Arc<places::Places>,
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    info: ModelInfo,
}

/// Why one forwarded request failed.
#[derive(Debug)]
struct Fail {
    failure: UpstreamFailure,
    message: String,
    /// Whether it counts against the upstream in the breaker (a refusal of the request itself
    /// does not).
    counts: bool,
}

impl Fail {
    fn unavailable(message: impl Into<String>) -> Fail {
        Fail {
            failure: UpstreamFailure::Unavailable {
                retry_after_secs: 1,
            },
            message: message.into(),
            counts: true,
        }
    }
    fn timeout(message: impl Into<String>) -> Fail {
        Fail {
            failure: UpstreamFailure::Timeout,
            message: message.into(),
            counts: true,
        }
    }
    fn bad(message: impl Into<String>) -> Fail {
        Fail {
            failure: UpstreamFailure::BadResponse,
            message: message.into(),
            counts: true,
        }
    }
    fn too_large(message: impl Into<String>) -> Fail {
        Fail {
            failure: UpstreamFailure::TooLarge,
            message: message.into(),
            counts: true,
        }
    }
}

/// A connection's driver task, stopped when the request is dropped (the socket closes with it).
struct Connection(tokio::task::AbortHandle);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An answer's body read under the timeouts and the size cap.
struct BodyReader {
    body: Incoming,
    read: u64,
    limit: u64,
    first: bool,
    first_byte: Duration,
    idle: Duration,
    deadline: Instant,
}

impl BodyReader {
    /// The next piece of the body; `None` at its end.
    async fn next(&mut self) -> Result<Option<Bytes>, Fail> {
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Err(Fail::timeout(
                    "the answer took longer than total-timeout-secs",
                ));
            }
            let (wait, what) = if self.first {
                (self.first_byte, "first-byte-timeout-secs")
            } else {
                (self.idle, "idle-timeout-secs")
            };
            let total = self.deadline - now;
            let (wait, what) = if total < wait {
                (total, "total-timeout-secs")
            } else {
                (wait, what)
            };
            let frame = match tokio::time::timeout(wait, self.body.frame()).await {
                Err(_) => {
                    return Err(Fail::timeout(format!(
                        "the upstream sent nothing within {what}"
                    )))
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(Fail::unavailable(format!(
                        "the connection to the upstream broke: {e}"
                    )))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            self.first = false;
            self.read += data.len() as u64;
            if self.read > self.limit {
                return Err(Fail::too_large(format!(
                    "the answer is over max-answer-bytes ({} bytes)",
                    self.limit
                )));
            }
            return Ok(Some(data));
        }
    }

    /// The whole body (bounded by the reader's limit).
    async fn all(&mut self) -> Result<Vec<u8>, Fail> {
        let mut out = Vec::new();
        while let Some(b) = self.next().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }
}

impl Upstream {
    fn new(cfg: UpstreamConfig, queue_size: usize) -> Upstream {
        let info = ModelInfo {
            name: cfg.name.clone(),
            architecture: "upstream".into(),
            n_params: 0,
            size_bytes: 0,
            n_ctx_train: 0,
            n_ctx: 0,
            n_embd: 0,
            chat_template: Some("upstream".into()),
            gpu_layers: 0,
            n_layers: 0,
            loaded_at: crate::storage::now_unix().max(0) as u64,
        };
        Upstream {
            breaker: Mutex::new(breaker::Breaker::new(
                cfg.failure_threshold,
                Duration::from_secs(cfg.cool_down_secs),
            )),
            places: places::Places::new(cfg.max_concurrency, queue_size),
            outcomes: Mutex::new(BTreeMap::new()),
            info,
            cfg,
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, breaker::Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, outcome: &'static str) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    fn error(&self, failure: UpstreamFailure, message: String) -> EngineError {
        EngineError::Upstream {
            name: self.cfg.name.clone(),
            failure,
            message,
        }
    }

    /// Asks the breaker; an open one fails the request at once.
    fn admit(self: &Arc<Self>) -> Result<Ticket, EngineError> {
        let admission = self.breaker().admit(Instant::now());
        match admission {
            breaker::Admission::Pass => Ok(Ticket {
                up: self.clone(),
                probe: false,
                settled: false,
            }),
            breaker::Admission::Probe => Ok(Ticket {
                up: self.clone(),
                probe: true,
                settled: false,
            }),
            breaker::Admission::Refuse(wait) => {
                self.count("circuit_open");
                let failures = self.breaker().failures();
                Err(self.error(
                    UpstreamFailure::Unavailable {
                        retry_after_secs: wait.as_secs_f64().ceil() as u64,
                    },
                    format!(
                        "the upstream failed {} times in a row; the circuit breaker sends it \
                         nothing for now",
                        failures
                    ),
                ))
            }
        }
    }

    /// Waits for one of the `max-concurrency` places, in turn with other uids (at most
    /// `queue-size` wait).
    async fn place(&self, uid: u32) -> Result<places::Place, EngineError> {
        self.places.acquire(uid).await.map_err(|places::Full(n)| {
            self.count("queue_full");
            EngineError::QueueFull(n)
        })
    }

    /// Connects and sends `body` to `path`; the answer's head, its body reader, and the
    /// connection.
    async fn send(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
        accept: &str,
        limit: u64,
    ) -> Result<(hyper::http::response::Parts, BodyReader, Connection), Fail> {
        let c = &self.cfg;
        let started = Instant::now();
        let connect = tokio::time::timeout(
            Duration::from_secs(c.connect_timeout_secs),
            UnixStream::connect(&c.socket),
        )
        .await;
        let stream = match connect {
            Err(_) => {
                return Err(Fail::timeout(
                    "connecting to the upstream's socket took longer than connect-timeout-secs",
                ))
            }
            // Down, not started, or not ours to use: callers see one answer for all.
            Ok(Err(e)) => {
                tracing::warn!(upstream = %c.name, socket = %c.socket, error = %e, "upstream connect failed");
                return Err(Fail::unavailable(
                    "the upstream's socket does not accept connections",
                ));
            }
            Ok(Ok(s)) => s,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Fail::unavailable(format!("HTTP handshake with the upstream: {e}")))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let connection = Connection(task.abort_handle());
        let builder = match body {
            Some(_) => {
                hyper::Request::post(path).header(hyper::header::CONTENT_TYPE, "application/json")
            }
            None => hyper::Request::get(path),
        };
        let request = builder
            .header(hyper::header::HOST, "upstream")
            .header(hyper::header::ACCEPT, accept)
            .body(Full::new(
                body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
            ))
            .map_err(|e| Fail::bad(format!("building the request: {e}")))?;
        let first_byte = Duration::from_secs(c.first_byte_timeout_secs);
        let response = match tokio::time::timeout(first_byte, sender.send_request(request)).await {
            Err(_) => {
                return Err(Fail::timeout(
                    "the upstream sent no answer within first-byte-timeout-secs",
                ))
            }
            Ok(Err(e)) => {
                return Err(Fail::unavailable(format!(
                    "the upstream closed the connection: {e}"
                )))
            }
            Ok(Ok(r)) => r,
        };
        let (head, body) = response.into_parts();
        let reader = BodyReader {
            body,
            read: 0,
            limit,
            first: true,
            first_byte,
            idle: Duration::from_secs(c.idle_timeout_secs),
            deadline: started + Duration::from_secs(c.total_timeout_secs),
        };
        Ok((head, reader, connection))
    }

    /// Turns a non-2xx answer into a failure, with the upstream's message when it has one.
    async fn refusal(&self, head: &hyper::http::response::Parts, mut reader: BodyReader) -> Fail {
        reader.limit = ERROR_BODY_LIMIT;
        let body = reader.all().await.unwrap_or_default();
        let said = wire::error_message(&body)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let status = head.status;
        match status.as_u16() {
            400 | 413 | 422 => Fail {
                failure: UpstreamFailure::Rejected,
                message: format!("the upstream refused the request ({status}){said}"),
                counts: false,
            },
            // Busy, not broken: 429, or a 503 that says when to retry (inhoused's
            // `queue_full`). Passed on, and not counted against the upstream in the breaker.
            429 | 503 if status == 429 || head.headers.contains_key(hyper::header::RETRY_AFTER) => {
                let retry_after_secs = head
                    .headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1)
                    .clamp(1, 3600);
                Fail {
                    failure: UpstreamFailure::Unavailable { retry_after_secs },
                    message: format!("the upstream is busy ({status}){said}"),
                    counts: false,
                }
            }
            _ if status.is_server_error() || status.is_client_error() => {
                Fail::unavailable(format!("the upstream answered {status}{said}"))
            }
            _ => Fail::bad(format!("the upstream answered {status}")),
        }
    }

    /// Forwards one generation, sending its events; returns when it ended.
    async fn forward(
        &self,
        flavor: wire::Flavor,
        body: &serde_json::Value,
        req: &GenerateRequest,
        tx: &mpsc::UnboundedSender<Event>,
    ) -> Result<(), Fail> {
        let limit = self.cfg.answer_limit();
        let (head, mut reader, _connection) = self
            .send(flavor.path(), Some(body), "text/event-stream", limit)
            .await?;
        if !head.status.is_success() {
            return Err(self.refusal(&head, reader).await);
        }
        let content_type = head
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err(Fail::bad(format!(
                "the upstream answered {content_type:?}, not an event stream"
            )));
        }
        let mut events = sse::SseReader::new(limit as usize);
        let offered = req
            .tools
            .as_ref()
            .is_some_and(|t| t.choice != inhouse_formats::request::ToolChoice::None);
        let mut stream = wire::StreamReader::new(flavor, req.n, req.max_tokens).with_tools(offered);
        let stream_error = |e: wire::StreamError| match e {
            wire::StreamError::Bad(m) => Fail::bad(m),
            wire::StreamError::TooLong(m) => Fail::too_large(m),
            wire::StreamError::Upstream(m) => {
                Fail::unavailable(format!("the upstream failed while answering: {m}"))
            }
        };
        while let Some(bytes) = reader.next().await? {
            let datas = events.push(&bytes).map_err(|e| match e {
                sse::SseError::NotSse(m) => Fail::bad(m),
                sse::SseError::LineTooLong(n) => {
                    Fail::too_large(format!("an event is over max-answer-bytes ({n} bytes)"))
                }
            })?;
            for data in datas {
                for event in stream.data(&data).map_err(stream_error)? {
                    if tx.send(event).is_err() {
                        // The client left; the caller's select ends the request.
                        return Ok(());
                    }
                }
                if stream.is_done() {
                    return Ok(());
                }
            }
        }
        if !stream.started() {
            return Err(Fail::unavailable(
                "the upstream closed the stream before answering",
            ));
        }
        if !events.is_clean() {
            return Err(Fail::unavailable(
                "the upstream closed the stream in the middle of an event",
            ));
        }
        // Closed without `[DONE]`: complete only when every choice had ended.
        match stream.finish() {
            Ok(end) => {
                for event in end {
                    let _ = tx.send(event);
                }
                Ok(())
            }
            Err(_) => Err(Fail::unavailable(
                "the upstream closed the stream before the answer ended",
            )),
        }
    }

    /// Runs one generation to its end, or until its client leaves.
    async fn run(
        self: Arc<Self>,
        ticket: Ticket,
        flavor: wire::Flavor,
        body: serde_json::Value,
        req: GenerateRequest,
        tx: mpsc::UnboundedSender<Event>,
    ) {
        let place = tokio::select! {
            p = self.place(req.owner_uid) => p,
            _ = tx.closed() => {
                self.count("cancelled");
                return;
            }
        };
        let _place = match place {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Event::Failed(e));
                return;
            }
        };
        let result = tokio::select! {
            r = self.forward(flavor, &body, &req, &tx) => r,
            // Dropping `forward` drops the connection: the upstream stops generating.
            _ = tx.closed() => {
                self.count("cancelled");
                tracing::info!(upstream = %self.cfg.name, "client left: upstream request cancelled");
                return;
            }
        };
        match result {
            Ok(()) if tx.is_closed() => self.count("cancelled"),
            Ok(()) => {
                ticket.success();
                self.count("ok");
            }
            Err(fail) => {
                let failure = ticket.failure(&fail);
                tracing::warn!(upstream = %self.cfg.name, code = failure.code(), error = %fail.message, "upstream request failed");
                let _ = tx.send(Event::Failed(self.error(failure, fail.message)));
            }
        }
    }

    /// Embeds `inputs` on the upstream.
    async fn embed(self: Arc<Self>, inputs: Vec<String>) -> Result<Embeddings, EngineError> {
        let ticket = self.admit()?;
        // Embeddings carry no owner down here: they take their turns together.
        let _place = self.place(u32::MAX).await?;
        let body = wire::embeddings_body(&inputs, &self.cfg.model);
        let limit = self.cfg.answer_limit();
        let result = async {
            let (head, mut reader, _connection) = self
                .send("/v1/embeddings", Some(&body), "application/json", limit)
                .await?;
            if !head.status.is_success() {
                return Err(self.refusal(&head, reader).await);
            }
            let bytes = reader.all().await?;
            wire::embeddings(&bytes, inputs.len()).map_err(Fail::bad)
        }
        .await;
        match result {
            Ok(e) => {
                ticket.success();
                self.count("ok");
                Ok(e)
            }
            Err(fail) => {
                let failure = ticket.failure(&fail);
                tracing::warn!(upstream = %self.cfg.name, code = failure.code(), error = %fail.message, "upstream embeddings failed");
                Err(self.error(failure, fail.message))
            }
        }
    }

    /// Whether the upstream answers `GET /v1/models` with a 2xx within its connect timeout (a
    /// check that costs it no inference).
    async fn check(&self) -> bool {
        let limit = Duration::from_secs(self.cfg.connect_timeout_secs);
        let asked = async {
            let (head, mut reader, _connection) = self
                .send("/v1/models", None, "application/json", ERROR_BODY_LIMIT)
                .await?;
            reader.all().await?;
            Ok::<_, Fail>(head.status.is_success())
        };
        matches!(tokio::time::timeout(limit, asked).await, Ok(Ok(true)))
    }

    /// Checks the upstream in the background while it is not known to be up: at start, and
    /// every cool-down while it is down or its breaker open, so that `/health` tells the truth
    /// without traffic and a recovered upstream is let back in without a caller's request
    /// being the probe. Ends when the engine is dropped.
    async fn watch(up: std::sync::Weak<Upstream>) {
        loop {
            let Some(u) = up.upgrade() else { return };
            let state = u.breaker().state(Instant::now());
            if state != breaker::State::Up {
                let ok = u.check().await;
                let mut b = u.breaker();
                if ok {
                    if state != breaker::State::Unknown {
                        tracing::info!(upstream = %u.cfg.name, "upstream answers again");
                    }
                    b.success();
                } else {
                    b.check_failed();
                }
            }
            let wait = Duration::from_secs(u.cfg.cool_down_secs);
            drop(u);
            tokio::time::sleep(wait).await;
        }
    }

    fn status(&self) -> UpstreamStatus {
        let b = self.breaker();
        let max = self.cfg.max_concurrency;
        UpstreamStatus {
            name: self.cfg.name.clone(),
            model: self.cfg.model.clone(),
            state: b.state(Instant::now()).name(),
            failures: b.failures(),
            circuit_opened: b.times_opened(),
            in_flight: self.places.in_flight(),
            waiting: self.places.waiting() as u32,
            max_concurrency: max,
            requests: self
                .outcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A request's standing with the breaker: settled as a success or a failure, or (dropped
/// unsettled: its client left) neither.
struct Ticket {
    up: Arc<Upstream>,
    probe: bool,
    settled: bool,
}

impl Ticket {
    fn success(mut self) {
        self.settled = true;
        self.up.breaker().success();
    }

    /// Records `fail`; returns the failure as the caller sees it (an open breaker's remaining
    /// cool-down as its `Retry-After`).
    fn failure(mut self, fail: &Fail) -> UpstreamFailure {
        self.settled = true;
        self.up.count(fail.failure.code());
        if !fail.counts {
            if self.probe {
                self.up.breaker().probe_abandoned();
            }
            return fail.failure;
        }
        let open_for = self.up.breaker().failure(Instant::now(), self.probe);
        match fail.failure {
            UpstreamFailure::Unavailable { retry_after_secs } => UpstreamFailure::Unavailable {
                retry_after_secs: retry_after_secs.max(open_for.as_secs_f64().ceil() as u64),
            },
            other => other,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.up.breaker().probe_abandoned();
        }
    }
}

/// The local engine with upstream models beside it.
pub struct UpstreamEngine {
    local: Arc<dyn Engine>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
}

impl UpstreamEngine {
    /// Serves `upstreams` (checked by [`crate::config::Config::check`]) in front of `local`;
    /// at most `queue_size` requests wait for each upstream's places.
    pub fn new(
        local: Arc<dyn Engine>,
        upstreams: &[UpstreamConfig],
        queue_size: usize,
    ) -> UpstreamEngine {
        let upstreams: BTreeMap<String, Arc<Upstream>> = upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    Arc::new(Upstream::new(u.clone(), queue_size)),
                )
            })
            .collect();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for u in upstreams.values() {
                rt.spawn(Upstream::watch(Arc::downgrade(u)));
            }
        }
        UpstreamEngine { local, upstreams }
    }
}

impl Engine for UpstreamEngine {
    fn models(&self) -> Vec<ModelInfo> {
        let mut models = self.local.models();
        models.extend(self.upstreams.values().map(|u| u.info.clone()));
        models
    }

    fn loaded(&self) -> Vec<crate::engine::pool::LoadedModel> {
        self.local.loaded()
    }

    fn unload(&self, name: &str) -> BoxFuture<'_, ()> {
        self.local.unload(name)
    }

    fn forget_owner(&self, uid: u32) {
        // Upstreams keep nothing of a caller's here; the local engine's caches may.
        self.local.forget_owner(uid);
    }

    fn generate(&self, req: GenerateRequest) -> BoxFuture<'_, Result<EventStream, EngineError>> {
        let Some(up) = self.upstreams.get(&req.model).cloned() else {
            return self.local.generate(req);
        };
        Box::pin(async move {
            let (flavor, body) =
                wire::generate_body(&req, &up.cfg.model).map_err(|wire::Unsupported(what)| {
                    up.error(
                        UpstreamFailure::Unsupported,
                        format!("{what} are not forwarded to upstream models; ask without them"),
                    )
                })?;
            let ticket = up.admit()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let n = req.n.max(1);
            tokio::spawn(up.run(ticket, flavor, body, req, tx));
            Ok(EventStream::new(rx).with_choices(n))
        })
    }

    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Embeddings, EngineError>> {
        match self.upstreams.get(&model).cloned() {
            Some(up) => Box::pin(up.embed(inputs)),
            None => self.local.embed(model, inputs),
        }
    }

    fn backend(&self) -> String {
        self.local.backend()
    }

    fn cpu(&self) -> Option<CpuBackend> {
        self.local.cpu()
    }

    fn metrics(&self) -> Option<Arc<crate::metrics::Metrics>> {
        self.local.metrics()
    }

    fn pool(&self) -> Option<&crate::engine::pool::ModelPool> {
        self.local.pool()
    }

    fn upstreams(&self) -> Vec<UpstreamStatus> {
        self.upstreams.values().map(|u| u.status()).collect()
    }
}

/// One gauge per upstream, with its help and type lines.
fn gauge(
    out: &mut String,
    upstreams: &[UpstreamStatus],
    name: &str,
    help: &str,
    value: fn(&UpstreamStatus) -> u64,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for u in upstreams {
        let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {}", u.name, value(u));
    }
}

/// The upstreams' series in the Prometheus text format, appended to `/metrics`.
pub fn render_metrics(upstreams: &[UpstreamStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if upstreams.is_empty() {
        return out;
    }
    gauge(
        &mut out,
        upstreams,
        "inhouse_upstream_up",
        "1 when the last request to the upstream succeeded.",
        |u| u64::from(u.state == "up"),
    );
    gauge(
        &mut out,
        upstreams,
        "inhouse_upstream_circuit_open",
        "1 while the upstream's circuit breaker is open (failing fast or probing).",
        |u| u64::from(u.state == "circuit_open" || u.state == "half_open"),
    );
    gauge(
        &mut out,
        upstreams,
        "inhouse_upstream_in_flight",
        "Requests in flight to the upstream.",
        |u| u64::from(u.in_flight),
    );
    gauge(
        &mut out,
        upstreams,
        "inhouse_upstream_waiting",
        "Requests waiting for one of the upstream's max-concurrency places.",
        |u| u64::from(u.waiting),
    );
    let name = "inhouse_upstream_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests forwarded to the upstream, by outcome.\n# TYPE {name} counter"
    );
    for u in upstreams {
        for (outcome, n) in &u.requests {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\",outcome=\"{outcome}\"}} {n}",
                u.name
            );
        }
    }
    out
}
