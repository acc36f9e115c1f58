//! Serving metrics, rendered for `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! Hand-written rather than built on the `prometheus-client` crate: the set is small and fixed
//! (counters, gauges and two histograms per model), every label value is a model name (which
//! config restricts to `[a-z0-9._:-]`, so no escaping can go wrong) or an HTTP status, and the
//! engine thread updates plain atomics without locks or a registry. That keeps the format
//! exactly the classic text one that every scraper reads, and adds no dependency.
//!
//! The engine owns one [`ModelMetrics`] per model and updates it; the API counts finished
//! requests by status. Nothing here ever holds prompt or answer text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token histogram.
pub const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds (seconds) of the inter-token latency histogram.
pub const ITL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
];

/// A cumulative histogram of durations with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; summed when rendered); the last is `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of all observations, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, model: &str) {
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{le}\"}} {cum}");
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {cum}");
    }
}

/// Everything measured about one model. Counters only grow; gauges are set by the engine.
#[derive(Debug)]
pub struct ModelMetrics {
    /// The model's name (the `model` label).
    pub name: String,
    /// Generation requests answered, by HTTP status.
    requests: Mutex<BTreeMap<u16, u64>>,
    /// Prompt tokens of admitted requests (reused ones included).
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Requests that reused part of a slot's cached prompt.
    pub cache_hits: AtomicU64,
    /// Prompt tokens taken from the cache instead of being computed.
    pub cached_prompt_tokens: AtomicU64,
    /// Requests whose client went away before the end.
    pub cancelled: AtomicU64,
    /// Draft tokens proposed for verification (speculative decoding).
    pub drafted_tokens: AtomicU64,
    /// Draft tokens the model accepted.
    pub accepted_tokens: AtomicU64,
    /// Requests waiting for a slot (gauge).
    pub queue_depth: AtomicU64,
    /// Slots generating or prefilling (gauge).
    pub busy_slots: AtomicU64,
    /// Slots configured (gauge).
    pub slots: AtomicU64,
    /// Tokens held in the KV cache, cached idle slots included (gauge).
    pub kv_used_tokens: AtomicU64,
    /// KV cache size in tokens (gauge).
    pub kv_capacity_tokens: AtomicU64,
    /// Time from the request reaching the engine to its first generated token.
    pub ttft: Histogram,
    /// Time between consecutive generated tokens of one request.
    pub itl: Histogram,
}

impl ModelMetrics {
    /// Zeroed metrics for `name`.
    pub fn new(name: &str) -> Self {
        ModelMetrics {
            name: name.to_string(),
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cached_prompt_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            drafted_tokens: AtomicU64::new(0),
            accepted_tokens: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            busy_slots: AtomicU64::new(0),
            slots: AtomicU64::new(0),
            kv_used_tokens: AtomicU64::new(0),
            kv_capacity_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
        }
    }

    /// Counts one answered request.
    pub fn request(&self, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry(status).or_default() += 1;
    }
}

/// A per-model series: name, help text, and where its value lives.
type Series = (&'static str, &'static str, fn(&ModelMetrics) -> &AtomicU64);

/// All models' metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// One entry per model the daemon knows (configured or in the store), added as models
    /// are registered and kept when they unload, so counters never go backwards.
    models: std::sync::RwLock<Vec<Arc<ModelMetrics>>>,
    /// The CPU variant label of `inhouse_build_info`.
    cpu_variant: String,
}

impl Metrics {
    /// Metrics for these models.
    pub fn new(models: &[String], cpu_variant: &str) -> Self {
        Metrics {
            models: std::sync::RwLock::new(
                models
                    .iter()
                    .map(|m| Arc::new(ModelMetrics::new(m)))
                    .collect(),
            ),
            cpu_variant: cpu_variant.to_string(),
        }
    }

    fn list(&self) -> Vec<Arc<ModelMetrics>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One model's metrics, when it is served.
    pub fn model(&self, name: &str) -> Option<Arc<ModelMetrics>> {
        self.list().into_iter().find(|m| m.name == name)
    }

    /// One model's metrics, registered now if it has none yet. Only names of models the daemon
    /// serves (checked names from the config or the store) may be registered.
    pub fn ensure(&self, name: &str) -> Arc<ModelMetrics> {
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = models.iter().find(|m| m.name == name) {
            return m.clone();
        }
        let m = Arc::new(ModelMetrics::new(name));
        models.push(m.clone());
        m
    }

    /// Counts an answered generation request; requests for models not served are not counted
    /// (their names come from clients and would make the label set unbounded).
    pub fn request(&self, model: &str, status: u16) {
        if let Some(m) = self.model(model) {
            m.request(status);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let models = self.list();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP inhouse_build_info Version and ggml CPU variant of this daemon.\n\
             # TYPE inhouse_build_info gauge\n\
             inhouse_build_info{{version=\"{}\",cpu_variant=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.cpu_variant
        );
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        header(
            &mut out,
            "inhouse_requests_total",
            "counter",
            "Generation requests answered, by model and HTTP status.",
        );
        for m in &models {
            let r = m.requests.lock().unwrap_or_else(|e| e.into_inner());
            for (status, n) in r.iter() {
                let _ = writeln!(
                    out,
                    "inhouse_requests_total{{model=\"{}\",status=\"{status}\"}} {n}",
                    m.name
                );
            }
        }
        let counters: [Series; 7] = [
            (
                "inhouse_prompt_tokens_total",
                "Prompt tokens of admitted requests, cached ones included.",
                |m| &m.prompt_tokens,
            ),
            ("inhouse_generated_tokens_total", "Tokens generated.", |m| {
                &m.generated_tokens
            }),
            (
                "inhouse_cache_reuse_hits_total",
                "Requests that reused a cached prompt prefix.",
                |m| &m.cache_hits,
            ),
            (
                "inhouse_cache_reused_tokens_total",
                "Prompt tokens taken from the cache instead of computed.",
                |m| &m.cached_prompt_tokens,
            ),
            (
                "inhouse_cancelled_requests_total",
                "Generations stopped because the client went away.",
                |m| &m.cancelled,
            ),
            (
                "inhouse_speculative_drafted_tokens_total",
                "Draft tokens proposed for verification (speculative decoding).",
                |m| &m.drafted_tokens,
            ),
            (
                "inhouse_speculative_accepted_tokens_total",
                "Draft tokens the model accepted.",
                |m| &m.accepted_tokens,
            ),
        ];
        for (name, help, get) in counters {
            header(&mut out, name, "counter", help);
            for m in &models {
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{}\"}} {}",
                    m.name,
                    get(m).load(Relaxed)
                );
            }
        }
        let gauges: [Series; 5] = [
            ("inhouse_queue_depth", "Requests waiting for a slot.", |m| {
                &m.queue_depth
            }),
            (
                "inhouse_busy_slots",
                "Slots prefilling or generating.",
                |m| &m.busy_slots,
            ),
            ("inhouse_slots", "Slots configured.", |m| &m.slots),
            (
                "inhouse_kv_cache_used_tokens",
                "Tokens held in the KV cache (idle slots' cached prompts included).",
                |m| &m.kv_used_tokens,
            ),
            (
                "inhouse_kv_cache_capacity_tokens",
                "KV cache size in tokens.",
                |m| &m.kv_capacity_tokens,
            ),
        ];
        for (name, help, get) in gauges {
            header(&mut out, name, "gauge", help);
            for m in &models {
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{}\"}} {}",
                    m.name,
                    get(m).load(Relaxed)
                );
            }
        }
        header(
            &mut out,
            "inhouse_time_to_first_token_seconds",
            "histogram",
            "Time from a request reaching the engine to its first generated token.",
        );
        for m in &models {
            m.ttft
                .render(&mut out, "inhouse_time_to_first_token_seconds", &m.name);
        }
        header(
            &mut out,
            "inhouse_inter_token_seconds",
            "histogram",
            "Time between consecutive generated tokens of one request.",
        );
        for m in &models {
            m.itl
                .render(&mut out, "inhouse_inter_token_seconds", &m.name);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new(&["smol".into()], "haswell");
        m.request("smol", 200);
        m.request("smol", 200);
        m.request("smol", 400);
        m.request("other", 200);
        let s = m.model("smol").unwrap();
        s.generated_tokens.fetch_add(7, Relaxed);
        s.ttft.observe(Duration::from_millis(30));
        s.ttft.observe(Duration::from_secs(100));
        let text = m.render();
        assert!(text.contains("inhouse_requests_total{model=\"smol\",status=\"200\"} 2\n"));
        assert!(text.contains("inhouse_requests_total{model=\"smol\",status=\"400\"} 1\n"));
        assert!(!text.contains("other"));
        assert!(text.contains("inhouse_generated_tokens_total{model=\"smol\"} 7\n"));
        assert!(text.contains(
            "inhouse_time_to_first_token_seconds_bucket{model=\"smol\",le=\"0.025\"} 0\n"
        ));
        assert!(text.contains(
            "inhouse_time_to_first_token_seconds_bucket{model=\"smol\",le=\"0.05\"} 1\n"
        ));
        assert!(text.contains(
            "inhouse_time_to_first_token_seconds_bucket{model=\"smol\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("inhouse_time_to_first_token_seconds_count{model=\"smol\"} 2\n"));
    }
}
