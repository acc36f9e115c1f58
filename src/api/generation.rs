//! One request lifecycle for every protocol: start a checked generation, follow its events,
//! record it sealed, and embed. The OpenAI and Ollama route files only translate wire shapes
//! around what this module does.
//!
//! A generation's record is a [`NewRecord`] from the moment its prompt is accepted: the answer
//! text accumulates in it, and it is stored exactly once — completed, failed, or aborted when
//! the client goes away first. An answer is released only once its record is durable: a failed
//! write is reported to the caller, never dropped silently.

use super::error::ApiError;
use super::{AppState, Caller};
use crate::engine::{EngineError, Event, EventStream, FinishReason, GenerateRequest, Prompt};
use crate::storage::{NewRecord, RequestStatus};
use axum::response::Response;
use serde_json::{json, Value};

/// Counts a generation request's answer status in the metrics (OpenAI and Ollama routes alike).
pub(crate) async fn counted(
    s: &AppState,
    model: &str,
    answer: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let result = answer.await;
    if let Some(m) = s.engine.metrics() {
        let status = match &result {
            Ok(r) => r.status(),
            Err(e) => e.status,
        };
        m.request(model, status.as_u16());
    }
    result
}

/// The record of a request, built before it runs: metadata in clear, the prompt to be sealed.
fn new_record(caller: &Caller, req: &GenerateRequest) -> NewRecord {
    let prompt = match &req.prompt {
        Prompt::Chat(messages) => Value::Array(
            messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect(),
        ),
        Prompt::Text(t) => Value::String(t.clone()),
    };
    let sp = &req.sampling;
    let params = json!({"temperature": sp.temperature, "top_p": sp.top_p, "top_k": sp.top_k,
        "min_p": sp.min_p, "presence_penalty": sp.presence_penalty,
        "frequency_penalty": sp.frequency_penalty, "seed": sp.seed,
        // Stop strings are the caller's words: only their number is kept in the clear.
        "max_tokens": req.max_tokens, "stop_strings": req.stop.len()});
    pending_record(caller, &req.model, params, prompt)
}

fn pending_record(caller: &Caller, model: &str, params: Value, prompt: Value) -> NewRecord {
    NewRecord {
        uid: caller.uid,
        model: model.to_string(),
        params_json: params.to_string(),
        created_at: crate::storage::now_unix(),
        finished_at: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        status: RequestStatus::Error,
        prompt_text: prompt.to_string(),
        response_text: String::new(),
    }
}

/// Stores a request's record and its audit event (one transaction); returns the record id.
async fn store(s: &AppState, mut rec: NewRecord, status: RequestStatus) -> Result<i64, ApiError> {
    rec.status = status;
    rec.finished_at = Some(crate::storage::now_unix());
    let uid = rec.uid;
    s.store.record_request_audited(rec).await.map_err(|e| {
        tracing::error!(error = %e, kind = e.kind(), uid, "request record not stored");
        ApiError::from(e)
    })
}

/// A generation whose prompt the engine accepted, with its record pending.
pub(crate) struct Generation {
    events: EventStream,
    recorder: Recorder,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
}

/// What a generation says next, in the terms every protocol answers with.
pub(crate) enum Step {
    /// Text to append to the answer (never empty).
    Text(String),
    /// The generation ended and its record is stored.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// Tokens generated.
        completion_tokens: u32,
        /// The stored record.
        record_id: i64,
        /// How long storing the record took.
        store_micros: u128,
    },
    /// The generation failed, or its record could not be stored: the request did not complete.
    Failed(ApiError),
}

/// A non-streamed generation's result, after its record is durable.
pub(crate) struct Collected {
    pub text: String,
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub record_id: i64,
    pub store_micros: u128,
}

/// Queues a checked request and waits until the engine accepts its prompt, so that prompt
/// errors get a proper status code even when the answer is streamed.
pub(crate) async fn start(
    s: &AppState,
    caller: Caller,
    request: GenerateRequest,
) -> Result<Generation, ApiError> {
    tracing::info!(uid = caller.uid, model = %request.model, "generation request");
    let mut record = new_record(&caller, &request);
    let mut events = s.engine.generate(request).await?;
    let prompt_tokens = match events.recv().await {
        Some(Event::Started { prompt_tokens }) => prompt_tokens,
        Some(Event::Failed(e)) => {
            // The caller gets the failure; a store error here is logged (and counted by the
            // store) rather than replacing it.
            let _ = store(s, record, RequestStatus::Error).await;
            return Err(e.into());
        }
        _ => return Err(EngineError::ShuttingDown.into()),
    };
    record.prompt_tokens = prompt_tokens;
    Ok(Generation {
        events,
        recorder: Recorder {
            state: s.clone(),
            record: Some(record),
        },
        prompt_tokens,
    })
}

impl Generation {
    /// The next step; `None` when the engine dropped the request without ending it (shutdown).
    /// After `Finished` or `Failed` the request is recorded and nothing more follows.
    pub(crate) async fn next(&mut self) -> Option<Step> {
        loop {
            match self.events.recv().await? {
                Event::Text(t) if t.is_empty() => continue,
                Event::Text(t) => {
                    self.recorder.push(&t);
                    return Some(Step::Text(t));
                }
                Event::Started { .. } => continue,
                Event::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    let stored = std::time::Instant::now();
                    let step = match self
                        .recorder
                        .finish(RequestStatus::Completed, completion_tokens)
                        .await
                    {
                        Ok(record_id) => Step::Finished {
                            reason,
                            prompt_tokens,
                            completion_tokens,
                            record_id,
                            store_micros: stored.elapsed().as_micros(),
                        },
                        Err(e) => Step::Failed(e),
                    };
                    return Some(step);
                }
                Event::Failed(e) => {
                    let _ = self.recorder.finish(RequestStatus::Error, 0).await;
                    return Some(Step::Failed(e.into()));
                }
            }
        }
    }

    /// Runs to the end and stores the record.
    pub(crate) async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut text = String::new();
        loop {
            match self.next().await {
                Some(Step::Text(t)) => text.push_str(&t),
                Some(Step::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    record_id,
                    store_micros,
                }) => {
                    return Ok(Collected {
                        text,
                        reason,
                        prompt_tokens,
                        completion_tokens,
                        record_id,
                        store_micros,
                    })
                }
                Some(Step::Failed(e)) => return Err(e),
                None => return Err(EngineError::ShuttingDown.into()),
            }
        }
    }
}

/// Records a request once: completed or failed when it ends, aborted when the client goes away
/// first (the response body, and this with it, is dropped).
struct Recorder {
    state: AppState,
    record: Option<NewRecord>,
}

impl Recorder {
    fn push(&mut self, text: &str) {
        if let Some(r) = &mut self.record {
            r.response_text.push_str(text);
        }
    }

    async fn finish(
        &mut self,
        status: RequestStatus,
        completion_tokens: u32,
    ) -> Result<i64, ApiError> {
        let mut r = self
            .record
            .take()
            .ok_or_else(|| ApiError::internal("a request was recorded twice"))?;
        r.completion_tokens = completion_tokens;
        store(&self.state, r, status).await
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            let state = self.state.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store(&state, r, RequestStatus::Aborted).await;
                });
            }
        }
    }
}

/// Embeds `inputs` and records the request (inputs sealed as its prompt).
pub(crate) async fn embed(
    s: &AppState,
    caller: Caller,
    model: &str,
    inputs: Vec<String>,
) -> Result<(crate::engine::Embeddings, i64), ApiError> {
    tracing::info!(uid = caller.uid, model = %model, inputs = inputs.len(), "embeddings request");
    let mut record = pending_record(
        &caller,
        model,
        json!({"endpoint": "embeddings", "inputs": inputs.len()}),
        json!(inputs),
    );
    let out = match s.engine.embed(model.to_string(), inputs).await {
        Ok(out) => out,
        Err(e) => {
            let _ = store(s, record, RequestStatus::Error).await;
            return Err(e.into());
        }
    };
    record.prompt_tokens = out.prompt_tokens;
    let record_id = store(s, record, RequestStatus::Completed).await?;
    Ok((out, record_id))
}
