//! A scripted engine for the API's tests: no model and no llama.cpp. Every generation plays the
//! same [`Script`] — started, N text pieces, then finished or failed — and the engine keeps what
//! it was asked, so that a test can check what validation handed it, while the API, the store,
//! the roles and the socket around it are the real ones.

use super::{
    BoxFuture, Embeddings, Engine, EngineError, Event, EventStream, FinishReason, GenerateRequest,
    ModelInfo, OutputInfo, Prompt, SampledLogprob, TokenLogprob,
};
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The context of every fake model, in words (a word stands for a token).
pub const N_CTX: u32 = 2048;

/// How a scripted generation ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Finished normally, for this reason.
    Finish(FinishReason),
    /// Failed after its pieces (a failure in the middle of a stream).
    Fail(EngineError),
    /// Never ends by itself (for cancellation tests: only a client that leaves ends it).
    Hang,
}

/// What every generation answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Refuse the prompt before starting (e.g. `ContextLengthExceeded`), as the engine does
    /// for a prompt it cannot run.
    pub refuse: Option<EngineError>,
    /// Tokens the prompt is said to have.
    pub prompt_tokens: u32,
    /// The answer's pieces, one token each.
    pub pieces: Vec<String>,
    /// Pause before each piece.
    pub delay: Duration,
    /// How it ends.
    pub end: End,
    /// How the answer is to be read (tool-call format, reasoning tags), as a model's template
    /// would say.
    pub output: OutputInfo,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            refuse: None,
            prompt_tokens: 5,
            pieces: ["Hello", ",", " world", "."].map(String::from).to_vec(),
            delay: Duration::ZERO,
            end: End::Finish(FinishReason::Stop),
            output: OutputInfo::default(),
        }
    }
}

/// The fake engine: serves the models it was given, answers with its script.
pub struct FakeEngine {
    models: Vec<ModelInfo>,
    script: Mutex<Script>,
    requests: Mutex<Vec<GenerateRequest>>,
    cancelled: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl FakeEngine {
    /// A fake serving a model for each name, answering with the default script.
    pub fn new(names: &[&str]) -> Arc<Self> {
        let models = names
            .iter()
            .map(|name| ModelInfo {
                name: name.to_string(),
                architecture: "fake".into(),
                n_params: 1_000_000,
                size_bytes: 1 << 20,
                n_ctx_train: N_CTX,
                n_ctx: N_CTX,
                n_embd: 8,
                chat_template: Some("gguf".into()),
                gpu_layers: 0,
                n_layers: 1,
                loaded_at: 1_700_000_000,
            })
            .collect();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        Arc::new(FakeEngine {
            models,
            script: Mutex::new(Script::default()),
            requests: Mutex::new(Vec::new()),
            cancelled: Arc::new(AtomicUsize::new(0)),
            metrics: Arc::new(Metrics::new(&names, "fake")),
        })
    }

    /// Replaces the script for the generations that follow.
    pub fn set_script(&self, script: Script) {
        *self.script.lock().unwrap_or_else(|e| e.into_inner()) = script;
    }

    /// Every generation request received so far, in order.
    pub fn requests(&self) -> Vec<GenerateRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Generations whose client went away before the end.
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn check(&self, model: &str) -> Result<(), EngineError> {
        if self.models.iter().any(|m| m.name == model) {
            Ok(())
        } else {
            Err(EngineError::UnknownModel(model.to_string()))
        }
    }
}

/// The fake log-probability of a piece: −0.25, with `top` alternatives below it, the piece first.
fn fake_logprob(piece: &str, top: u8) -> SampledLogprob {
    let entry = |token: String, logprob: f32| TokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob,
    };
    SampledLogprob {
        sampled: entry(piece.to_string(), -0.25),
        top: (0..top)
            .map(|i| match i {
                0 => entry(piece.to_string(), -0.25),
                i => entry(format!("alt{i}"), -0.25 - f32::from(i)),
            })
            .collect(),
    }
}

impl Engine for FakeEngine {
    fn models(&self) -> Vec<ModelInfo> {
        self.models.clone()
    }

    fn generate(&self, req: GenerateRequest) -> BoxFuture<'_, Result<EventStream, EngineError>> {
        Box::pin(async move {
            self.check(&req.model)?;
            let script = self
                .script
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let req_prompt = req.prompt.clone();
            let (n, logprobs) = (req.n.max(1), req.logprobs);
            self.requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(req);
            if let Some(e) = script.refuse {
                return Ok(EventStream::failed(e));
            }
            // A word stands for a token: a prompt of more words than the context is refused
            // like the real engine refuses one of more tokens.
            let words = match &req_prompt {
                Prompt::Chat(messages) => messages
                    .iter()
                    .map(|m| m.content.split_whitespace().count())
                    .sum(),
                Prompt::Text(t) => t.split_whitespace().count(),
            } as u32;
            if words >= N_CTX {
                return Ok(EventStream::failed(EngineError::ContextLengthExceeded {
                    prompt_tokens: words,
                    n_ctx: N_CTX,
                }));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let cancelled = self.cancelled.clone();
            tokio::spawn(async move {
                let _ = tx.send(Event::Started {
                    prompt_tokens: script.prompt_tokens,
                    output: script.output.clone(),
                });
                let mut sent = 0u32;
                for piece in script.pieces {
                    if !script.delay.is_zero() {
                        tokio::time::sleep(script.delay).await;
                    }
                    // Every choice gets the same pieces; a piece's log-probability is fixed.
                    for choice in 0..n {
                        let logprobs = match logprobs {
                            None => vec![],
                            Some(l) => vec![fake_logprob(&piece, l.top)],
                        };
                        let event = Event::Text {
                            choice,
                            text: piece.clone(),
                            logprobs,
                        };
                        if tx.send(event).is_err() {
                            cancelled.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    sent += 1;
                }
                match script.end {
                    End::Finish(reason) => {
                        for choice in 0..n {
                            let _ = tx.send(Event::Finished {
                                choice,
                                reason,
                                prompt_tokens: script.prompt_tokens,
                                completion_tokens: sent,
                            });
                        }
                    }
                    End::Fail(e) => {
                        let _ = tx.send(Event::Failed(e));
                    }
                    End::Hang => {
                        tx.closed().await;
                        cancelled.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            Ok(EventStream::new(rx).with_choices(n))
        })
    }

    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Embeddings, EngineError>> {
        Box::pin(async move {
            self.check(&model)?;
            // A deterministic unit vector per input, from its bytes.
            let vectors = inputs
                .iter()
                .map(|text| {
                    let mut v = [0f32; 8];
                    for (i, b) in text.bytes().enumerate() {
                        v[i % 8] += f32::from(b);
                    }
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                    v.iter().map(|x| x / norm).collect()
                })
                .collect();
            let prompt_tokens = inputs
                .iter()
                .map(|t| t.split_whitespace().count() as u32)
                .sum();
            Ok(Embeddings {
                vectors,
                prompt_tokens,
            })
        })
    }

    fn backend(&self) -> String {
        "fake (scripted, no model)".into()
    }

    fn metrics(&self) -> Option<Arc<Metrics>> {
        Some(self.metrics.clone())
    }
}
