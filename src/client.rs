//! A small HTTP/1.1 client for the daemon's Unix socket, used by the `inhouse` CLI ([`crate::cli`])
//! and the tests, plus a parser for the server-sent events that streaming answers use.
//!
//! Two levels: [`Client::send`], [`Client::raw`], [`Client::json`] and [`Client::upload`] speak
//! plain HTTP and JSON (the tests use them to send anything, malformed included); the typed
//! methods ([`Client::models`], [`Client::jobs`], [`Client::history`], …) send and read the
//! bodies of [`crate::wire`], so that an answer without a field the client needs is a
//! [`ClientError::Decode`] naming that field, never a silent default.

use crate::wire;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixStream;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error(
        "cannot connect to {path}: {source} (is inhoused running, and may you use its socket?)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A local file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The daemon answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error message from the body.
        message: String,
    },
    /// A successful answer is not the shape the client expects (a daemon of another version):
    /// the message names the request and the field, e.g. `models[0].info: missing field
    /// `architecture``.
    #[error("unexpected answer to {request}: {source}")]
    Decode {
        /// Method and path, e.g. `GET /admin/models`.
        request: String,
        /// Where in the body, and what is wrong there.
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    /// A request body could not be serialized.
    #[error("encoding the request: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Reads a JSON answer as `T`; an error names the field at fault (with its path) and `request`.
pub fn decode<T: DeserializeOwned>(request: &str, bytes: &[u8]) -> Result<T, ClientError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|source| ClientError::Decode {
        request: request.to_string(),
        source,
    })
}

/// Called with the bytes sent so far while a file uploads (for a progress bar).
pub type OnSent = Arc<dyn Fn(u64) + Send + Sync>;

/// What a model import sends besides the file.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Store the file as a LoRA adapter of this stored model.
    pub adapter_for: Option<String>,
    /// The SHA-256 the file must have (hex).
    pub sha256: Option<String>,
    /// The file's own name, recorded as its provenance.
    pub source: Option<String>,
    /// A signature file's contents.
    pub signature: Option<Vec<u8>>,
}

/// A connection factory for one socket; each request uses a fresh connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A response with its body still streaming.
pub struct Streaming {
    /// HTTP status.
    pub status: StatusCode,
    /// The `Content-Type` header.
    pub content_type: String,
    /// All response headers.
    pub headers: hyper::HeaderMap,
    body: Incoming,
}

impl Streaming {
    /// The next piece of the body, or `None` at its end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some(Ok(data)),
                    Err(_) => continue, // trailers
                },
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Reads the rest of the body.
    pub async fn collect(self) -> Result<Bytes, ClientError> {
        Ok(self.body.collect().await?.to_bytes())
    }
}

impl Client {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Client {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    /// Opens a fresh HTTP/1.1 connection to the socket (its driver runs on a spawned task).
    async fn connect<B>(&self) -> Result<hyper::client::conn::http1::SendRequest<B>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends a request and returns as soon as the headers arrive.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Streaming, ClientError> {
        let mut sender = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "inhouse");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let headers = resp.headers().clone();
        Ok(Streaming {
            status,
            content_type,
            headers,
            body: resp.into_body(),
        })
    }

    /// Sends a request and reads the whole answer: status and body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status;
        Ok((status, resp.collect().await?))
    }

    /// Sends JSON (or nothing) and parses a JSON answer; an error status becomes
    /// [`ClientError::Api`] with the daemon's message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, bytes) = self.raw(method, path, body).await?;
        json_answer(status, &bytes)
    }

    /// Uploads a file as the body of a `POST` (streamed from disk in 1 MiB pieces, never held in
    /// memory whole), with extra headers; parses the JSON answer like [`Client::json`].
    pub async fn upload(
        &self,
        path: &str,
        file: &Path,
        headers: &[(&str, String)],
    ) -> Result<Value, ClientError> {
        let (status, bytes) = self.upload_with(path, file, headers, None).await?;
        json_answer(status, &bytes)
    }

    /// [`Client::upload`] reporting its progress to `on_sent`, answering status and body.
    async fn upload_with(
        &self,
        path: &str,
        file: &Path,
        headers: &[(&str, String)],
        on_sent: Option<OnSent>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        use tokio::io::AsyncReadExt;
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|source| ClientError::File {
                path: file.to_path_buf(),
                source,
            })?;
        let len = f
            .metadata()
            .await
            .map_err(|source| ClientError::File {
                path: file.to_path_buf(),
                source,
            })?
            .len();
        let chunks = futures_util::stream::unfold(Some((f, 0u64)), move |state| {
            let on_sent = on_sent.clone();
            async move {
                let (mut f, sent) = state?;
                let mut buf = vec![0u8; 1 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        let sent = sent + n as u64;
                        if let Some(report) = &on_sent {
                            report(sent);
                        }
                        let frame = hyper::body::Frame::data(Bytes::from(buf));
                        Some((Ok(frame), Some((f, sent))))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        let mut sender = self.connect().await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(hyper::header::HOST, "inhouse")
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .header(hyper::header::CONTENT_LENGTH, len);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(http_body_util::StreamBody::new(chunks))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Sends `body` (or nothing) as JSON and reads the answer as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let request = format!("{method} {path}");
        let body = body.map(serde_json::to_vec).transpose()?.map(Bytes::from);
        let (status, bytes) = self.raw(method, path, body).await?;
        check_status(status, &bytes)?;
        decode(&request, &bytes)
    }

    /// `GET` `path`, read as `T`.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// Uploads `file` to `path`, read as `T`.
    async fn upload_as<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &Path,
        headers: &[(&str, String)],
        on_sent: Option<OnSent>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.upload_with(path, file, headers, on_sent).await?;
        check_status(status, &bytes)?;
        decode(&format!("POST {path}"), &bytes)
    }

    /// `GET /health`: the daemon's health report (free-form: it grows with the daemon).
    pub async fn health(&self) -> Result<Value, ClientError> {
        self.json(Method::GET, "/health", None).await
    }

    /// `GET /v1/models`: the models served.
    pub async fn served_models(&self) -> Result<wire::ServedModels, ClientError> {
        self.get("/v1/models").await
    }

    /// `GET /admin/models`: every name, stored or configured.
    pub async fn models(&self) -> Result<wire::ModelList, ClientError> {
        self.get("/admin/models").await
    }

    /// `GET /admin/models/{name}`: one name in detail.
    pub async fn show_model(&self, name: &str) -> Result<wire::ModelEntry, ClientError> {
        self.get(&format!("/admin/models/{name}")).await
    }

    /// `POST /admin/models/{name}`: imports `file` (streamed) under `name`.
    pub async fn import_model(
        &self,
        name: &str,
        file: &Path,
        opts: &ImportOptions,
        on_sent: Option<OnSent>,
    ) -> Result<wire::Imported, ClientError> {
        use base64::Engine as _;
        let mut query = vec![];
        if let Some(b) = &opts.adapter_for {
            query.push(format!("adapter_for={b}"));
        }
        if let Some(h) = &opts.sha256 {
            query.push(format!("sha256={h}"));
        }
        if let Some(f) = &opts.source {
            query.push(format!("source={f}"));
        }
        let mut uri = format!("/admin/models/{name}");
        if !query.is_empty() {
            uri = format!("{uri}?{}", query.join("&"));
        }
        let mut headers = vec![];
        if let Some(sig) = &opts.signature {
            headers.push((
                crate::api::models::SIGNATURE_HEADER,
                base64::engine::general_purpose::STANDARD.encode(sig),
            ));
        }
        self.upload_as(&uri, file, &headers, on_sent).await
    }

    /// `DELETE /admin/models/{name}`: removes a stored name (and a model's adapters).
    pub async fn remove_model(&self, name: &str) -> Result<wire::ModelsRemoved, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/admin/models/{name}"),
            None::<&()>,
        )
        .await
    }

    /// `GET /admin/aliases`: every alias and its target.
    pub async fn aliases(&self) -> Result<wire::AliasList, ClientError> {
        self.get("/admin/aliases").await
    }

    /// `PUT /admin/aliases/{alias}`: creates or moves an alias.
    pub async fn set_alias(
        &self,
        alias: &str,
        target: &str,
    ) -> Result<wire::AliasChanged, ClientError> {
        let body = wire::AliasSet {
            target: target.to_string(),
        };
        self.call(Method::PUT, &format!("/admin/aliases/{alias}"), Some(&body))
            .await
    }

    /// `DELETE /admin/aliases/{alias}`.
    pub async fn remove_alias(&self, alias: &str) -> Result<wire::AliasChanged, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/admin/aliases/{alias}"),
            None::<&()>,
        )
        .await
    }

    /// `POST /admin/models/{name}/promote`: points alias `to` at a blessed model (any, with
    /// `force`).
    pub async fn promote(
        &self,
        name: &str,
        to: &str,
        force: bool,
    ) -> Result<wire::Promoted, ClientError> {
        let body = wire::PromoteRequest {
            to: to.to_string(),
            force,
        };
        self.call(
            Method::POST,
            &format!("/admin/models/{name}/promote"),
            Some(&body),
        )
        .await
    }

    /// `GET /admin/models/{name}/card?format=…` (`html` or `md`): the card and its SHA-256 as
    /// the daemon recorded it in the audit log, checked against the bytes received.
    pub async fn model_card(
        &self,
        name: &str,
        format: &str,
    ) -> Result<(Bytes, String), ClientError> {
        let path = format!("/admin/models/{name}/card?format={format}");
        let resp = self.send(Method::GET, &path, None).await?;
        let (status, recorded) = (
            resp.status,
            resp.headers
                .get(crate::api::card::CARD_SHA256_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
        let bytes = resp.collect().await?;
        check_status(status, &bytes)?;
        let actual = crate::api::card::sha256_hex(&bytes);
        match recorded {
            Some(r) if r == actual => Ok((bytes, actual)),
            other => Err(ClientError::Api {
                status,
                message: format!(
                    "the card's SHA-256 is {actual}, but the daemon recorded {}: the answer was damaged in transit",
                    other.as_deref().unwrap_or("none")
                ),
            }),
        }
    }

    /// `GET /admin/ps`: the models in memory.
    pub async fn ps(&self) -> Result<wire::Ps, ClientError> {
        self.get("/admin/ps").await
    }

    /// `GET /admin/jobs`: the newest jobs.
    pub async fn jobs(&self) -> Result<wire::JobList, ClientError> {
        self.get("/admin/jobs").await
    }

    /// `GET /admin/jobs/{id}`: one job with its progress.
    pub async fn job(&self, id: i64) -> Result<wire::JobAnswer, ClientError> {
        self.get(&format!("/admin/jobs/{id}")).await
    }

    /// `POST /admin/jobs`: submits a job (answered `queued`).
    pub async fn submit_job(&self, req: &wire::JobRequest) -> Result<wire::JobAnswer, ClientError> {
        self.call(Method::POST, "/admin/jobs", Some(req)).await
    }

    /// `DELETE /admin/jobs/{id}`: cancels a job; answers it once it has ended.
    pub async fn cancel_job(&self, id: i64) -> Result<wire::JobAnswer, ClientError> {
        self.call(Method::DELETE, &format!("/admin/jobs/{id}"), None::<&()>)
            .await
    }

    /// `POST /admin/jobs/data?format=…`: uploads `file` (streamed) as a dataset.
    pub async fn upload_dataset(
        &self,
        file: &Path,
        format: &str,
        on_sent: Option<OnSent>,
    ) -> Result<wire::DatasetUploaded, ClientError> {
        let path = format!("/admin/jobs/data?format={format}");
        self.upload_as(&path, file, &[], on_sent).await
    }

    /// `GET /v1/history`: a page of the caller's records, newest first.
    pub async fn history(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<wire::HistoryPage, ClientError> {
        let mut path = format!("/v1/history?limit={limit}");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        self.get(&path).await
    }

    /// `GET /v1/history/{id}`: one of the caller's records.
    pub async fn history_record(&self, id: i64) -> Result<wire::HistoryRecord, ClientError> {
        self.get(&format!("/v1/history/{id}")).await
    }

    /// `DELETE /v1/history/{id}`.
    pub async fn delete_history(&self, id: i64) -> Result<wire::HistoryDeleted, ClientError> {
        self.call(Method::DELETE, &format!("/v1/history/{id}"), None::<&()>)
            .await
    }

    /// `POST /admin/erase`: destroys every record of `uid`.
    pub async fn erase(&self, uid: u32) -> Result<wire::Erased, ClientError> {
        let body = wire::EraseRequest { uid };
        self.call(Method::POST, "/admin/erase", Some(&body)).await
    }

    /// `POST /admin/rotate-key`: rewraps every data key under a new master key.
    pub async fn rotate_key(
        &self,
        req: &wire::RotateKeyRequest,
    ) -> Result<wire::KeyRotated, ClientError> {
        self.call(Method::POST, "/admin/rotate-key", Some(req))
            .await
    }

    /// `GET /audit/verify`: checks the audit chain.
    pub async fn audit_verify(&self) -> Result<wire::AuditVerified, ClientError> {
        self.get("/audit/verify").await
    }

    /// `GET /audit/export`: the audit log as JSON lines.
    pub async fn audit_export(&self) -> Result<Bytes, ClientError> {
        let (status, bytes) = self.raw(Method::GET, "/audit/export", None).await?;
        check_status(status, &bytes)?;
        Ok(bytes)
    }

    /// `GET /admin/backup`: streams the archive into `out` (an open file the caller made) and
    /// returns its size. A body that ends early (the daemon failed or died mid-stream) is an
    /// error: the archive is then incomplete and must not be kept.
    pub async fn backup_to(
        &self,
        with_models: bool,
        out: &mut (impl std::io::Write + ?Sized),
        mut on_bytes: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        let path = format!("/admin/backup?with_models={with_models}");
        let mut resp = self.send(Method::GET, &path, None).await?;
        if !resp.status.is_success() {
            let status = resp.status;
            let bytes = resp.collect().await?;
            return check_status(status, &bytes).map(|()| 0);
        }
        let mut n = 0u64;
        while let Some(chunk) = resp.next_chunk().await {
            let chunk = chunk?;
            out.write_all(&chunk).map_err(|source| ClientError::File {
                path: PathBuf::from("the backup file"),
                source,
            })?;
            n += chunk.len() as u64;
            on_bytes(n);
        }
        Ok(n)
    }

    /// Streams a chat completion, calling `on_text` with each piece of the answer; returns the
    /// whole answer and the finish reason.
    pub async fn chat_stream(
        &self,
        request: &Value,
        mut on_text: impl FnMut(&str),
    ) -> Result<(String, String), ClientError> {
        let mut body = request.clone();
        body["stream"] = Value::Bool(true);
        let mut resp = self
            .send(
                Method::POST,
                "/v1/chat/completions",
                Some(Bytes::from(body.to_string())),
            )
            .await?;
        if !resp.status.is_success() {
            let status = resp.status;
            let raw = resp.collect().await?;
            return Err(ClientError::Api {
                status,
                message: error_message(&raw),
            });
        }
        let mut parser = SseParser::default();
        let mut answer = String::new();
        let mut finish = String::new();
        while let Some(chunk) = resp.next_chunk().await {
            for data in parser.push(&chunk?) {
                if data == "[DONE]" {
                    return Ok((answer, finish));
                }
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if v.get("error").is_some() {
                    return Err(ClientError::Api {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        message: error_message(data.as_bytes()),
                    });
                }
                if let Some(t) = v
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                {
                    answer.push_str(t);
                    on_text(t);
                }
                if let Some(f) = v
                    .pointer("/choices/0/finish_reason")
                    .and_then(Value::as_str)
                {
                    finish = f.to_string();
                }
            }
        }
        Err(ClientError::Api {
            status: StatusCode::BAD_GATEWAY,
            message: "the stream ended before [DONE]".into(),
        })
    }
}

/// A JSON answer, or [`ClientError::Api`] with the daemon's message for an error status.
fn json_answer(status: StatusCode, bytes: &[u8]) -> Result<Value, ClientError> {
    check_status(status, bytes)?;
    Ok(serde_json::from_slice(bytes).unwrap_or(Value::Null))
}

/// [`ClientError::Api`] with the daemon's message for an error status.
fn check_status(status: StatusCode, bytes: &[u8]) -> Result<(), ClientError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(ClientError::Api {
            status,
            message: error_message(bytes),
        })
    }
}

/// The `error.message` of an error body ([`wire::ErrorBody`]) followed by its stable code in
/// brackets (what a script or a support request can match on), or the raw text when the body is
/// not one (a proxy's page, a truncated answer).
pub fn error_message(raw: &[u8]) -> String {
    match serde_json::from_slice::<wire::ErrorBody>(raw) {
        Ok(body) if body.error.code.is_empty() => body.error.message,
        Ok(body) => format!("{} [{}]", body.error.message, body.error.code),
        Err(_) => String::from_utf8_lossy(raw).into_owned(),
    }
}

/// Splits a server-sent-event stream into the `data:` payloads of its events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Adds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find(&self.buf, b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_reads() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            p.push(b":1}\n\ndata: [DONE]\n\n"),
            vec!["{\"a\":1}", "[DONE]"]
        );
    }
}
