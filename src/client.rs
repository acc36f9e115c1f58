//! A small HTTP/1.1 client for the daemon's Unix socket, used by the `inhouse` CLI and the
//! tests, plus a parser for the server-sent events that streaming answers use.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::{Path, PathBuf};
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
        let chunks = futures_util::stream::unfold(Some(f), |f| async move {
            let mut f = f?;
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), Some(f)))
                }
                Err(e) => Some((Err(e), None)),
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
        json_answer(status, &bytes)
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
            let value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status,
                message: error_message(&value, &raw),
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
                        message: error_message(&v, data.as_bytes()),
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
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(ClientError::Api {
            status,
            message: error_message(&value, bytes),
        });
    }
    Ok(value)
}

/// The `error.message` of an OpenAI-shaped error body, or the raw text.
pub fn error_message(value: &Value, raw: &[u8]) -> String {
    value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned())
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
