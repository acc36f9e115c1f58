//! Retrieval benchmark (issue 20): the in-memory index of `inhouse::knowledge`.
//!
//! Two parts, both in this process:
//! - **synthetic**: 10 000 and 100 000 chunks of Zipf-distributed words (150 each) with random
//!   384-wide unit vectors, 100 chunks a file: the index's build time and `memory_bytes` (and the
//!   process's resident memory growth), then search latency p50/p95 over 200 queries, k = 10, for
//!   BM25, vector and hybrid, unfiltered and with an attribute filter that keeps an eighth of the
//!   files; and the time to remove a file.
//! - **quality**: the documents and labelled questions of `benches/retrieval-data/` (a fictitious
//!   company's policies and products, written for this benchmark), chunked with our default
//!   strategy counted by the embedding model's own tokenizer, embedded by the real engine
//!   (all-MiniLM-L6-v2 converted by `inhouse-quantize import-hf`, mean pooling, normalised):
//!   the ingest rate (chunks embedded per second), then recall@1/@3/@5 and MRR@5 for BM25 alone,
//!   vectors alone and hybrid. A question counts as answered at rank r when the chunk at r is
//!   from its labelled document and contains its evidence phrase ("chunk" recall); "document"
//!   recall asks only for the right document.
//!
//! `cargo bench --bench retrieval` (release profile). Environment:
//! - `INHOUSE_BENCH_PARTS`: `synthetic`, `quality` or both (default `synthetic,quality`),
//! - `INHOUSE_BENCH_SIZES`: synthetic sizes (default `10000,100000`),
//! - `INHOUSE_BENCH_THREADS`: engine threads for embedding (default 2),
//! - `INHOUSE_BENCH_EMBED_MODEL`: an embedding GGUF to use instead of converting the checkpoint
//!   in the model cache (`all-MiniLM-L6-v2/`, fetched by scripts/fetch-models).
//!
//! Prints every figure; asserts nothing about speed (the machines are shared, so figures are
//! recorded in docs/BENCHMARKS.md with the load seen).

use inhouse::engine::llama::{LlamaEngine, ModelSpec};
use inhouse::knowledge::chunk::{self, ChunkingStrategy};
use inhouse::knowledge::filter::{AttrValue, Attributes, Filter};
use inhouse::knowledge::{Index, Mode, NewChunk};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const DIM: usize = 384;
const WORDS_PER_CHUNK: usize = 150;
const CHUNKS_PER_FILE: usize = 100;
const QUERIES: usize = 200;
const K: usize = 10;

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The process's resident memory, bytes.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// SplitMix64: a small, fixed pseudo-random generator, so every run indexes the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A vocabulary of made-up words and a Zipf (s = 1.07) sampler over it, like word frequencies in
/// real text.
struct Words {
    words: Vec<String>,
    cdf: Vec<f64>,
}

impl Words {
    fn new(n: usize, rng: &mut Rng) -> Words {
        let letters = b"abcdefghijklmnopqrstuvwxyz";
        let words = (0..n)
            .map(|i| {
                let len = 3 + rng.below(8);
                let mut w: String = (0..len).map(|_| letters[rng.below(26)] as char).collect();
                // Unique and never stemmed into another word.
                w.push_str(&format!("{i}"));
                w
            })
            .collect();
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for r in 1..=n {
            sum += 1.0 / (r as f64).powf(1.07);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Words { words, cdf }
    }

    fn sample(&self, rng: &mut Rng) -> &str {
        let u = rng.unit();
        let i = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.words.len() - 1);
        &self.words[i]
    }
}

fn random_unit(rng: &mut Rng) -> Vec<f32> {
    // The sum of four uniforms is near enough to normal for directions.
    let v: Vec<f32> = (0..DIM)
        .map(|_| (rng.unit() + rng.unit() + rng.unit() + rng.unit() - 2.0) as f32)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

const DEPTS: [&str; 8] = [
    "hr",
    "legal",
    "finance",
    "it",
    "sales",
    "support",
    "lab",
    "production",
];

fn synthetic(n: usize) {
    println!("\n## synthetic: {n} chunks of {WORDS_PER_CHUNK} words, {DIM}-dim vectors, {CHUNKS_PER_FILE} chunks a file");
    let mut rng = Rng(0x5eed + n as u64);
    let words = Words::new(30_000, &mut rng);
    // Each file's chunks are made just before they are inserted, and only the inserts are
    // timed: start-up opens the sealed rows a file at a time in the same way.
    let rss_before = rss();
    let mut build = 0.0;
    let mut text_bytes = 0;
    let mut index = Index::new();
    let mut id = 0u64;
    for f in 0..n.div_ceil(CHUNKS_PER_FILE) {
        let mut attrs = Attributes::new();
        attrs.insert("dept".into(), AttrValue::String(DEPTS[f % 8].into()));
        attrs.insert("year".into(), AttrValue::Number((2018 + f % 9) as f64));
        let mut chunks = Vec::new();
        for _ in 0..CHUNKS_PER_FILE.min(n - f * CHUNKS_PER_FILE) {
            let text: Vec<&str> = (0..WORDS_PER_CHUNK)
                .map(|_| words.sample(&mut rng))
                .collect();
            let text = text.join(" ");
            text_bytes += text.len();
            chunks.push(NewChunk {
                id,
                range: 0..text.len(),
                text,
                vector: Some(random_unit(&mut rng)),
            });
            id += 1;
        }
        let t = Instant::now();
        index
            .insert_chunks("vs_bench", &format!("file-{f}"), attrs, chunks)
            .unwrap();
        build += t.elapsed().as_secs_f64();
    }
    let grown = index.memory_bytes();
    let t = Instant::now();
    index.shrink_to_fit();
    let shrink = t.elapsed().as_secs_f64();
    let rss_after = rss();
    println!(
        "build: {build:.2} s ({:.0} chunks/s) + shrink_to_fit {:.2} s; memory_bytes {:.1} MiB \
         ({:.1} MiB before shrinking; of it chunk text {:.1} MiB, vectors {:.1} MiB); process \
         RSS grew {:.1} MiB",
        n as f64 / build,
        shrink,
        mib(index.memory_bytes()),
        mib(grown),
        mib(text_bytes),
        mib(n * DIM * 4),
        mib(rss_after.saturating_sub(rss_before)),
    );
    // Queries: one of the 20 commonest words (a stop word, in every other chunk) and 2 to 4
    // of the next 5000 ranks, and a vector.
    let queries: Vec<(String, Vec<f32>)> = (0..QUERIES)
        .map(|_| {
            let len = 2 + rng.below(3);
            let mut q: Vec<&str> = vec![words.words[rng.below(20)].as_str()];
            q.extend((0..len).map(|_| words.words[20 + rng.below(5000)].as_str()));
            (q.join(" "), random_unit(&mut rng))
        })
        .collect();
    let legal =
        Filter::parse(&serde_json::json!({"type": "eq", "key": "dept", "value": "legal"})).unwrap();
    for (label, filter) in [
        ("no filter", None),
        ("filter dept = legal (1/8 of files)", Some(&legal)),
    ] {
        for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
            let mut ms = Vec::with_capacity(QUERIES);
            let mut found = 0;
            for (text, vec) in &queries {
                let t = Instant::now();
                let hits = index.search(&["vs_bench"], text, Some(vec), K, filter, mode);
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
                found += hits.len();
                if let Some(f) = filter {
                    assert!(
                        hits.iter().all(|h| h
                            .file_id
                            .trim_start_matches("file-")
                            .parse::<usize>()
                            .unwrap()
                            % 8
                            == 1),
                        "{f:?}"
                    );
                }
            }
            println!(
                "search {mode:?}, {label}: p50 {:.2} ms, p95 {:.2} ms ({:.1} hits a query)",
                percentile(&mut ms, 0.5),
                percentile(&mut ms, 0.95),
                found as f64 / QUERIES as f64
            );
        }
    }
    let t = Instant::now();
    let removed = 10;
    for f in 0..removed {
        assert!(index.remove_file("vs_bench", &format!("file-{}", f * 3)));
    }
    println!(
        "remove_file ({CHUNKS_PER_FILE} chunks): {:.2} ms each",
        t.elapsed().as_secs_f64() * 1000.0 / removed as f64
    );
}

// ----- quality -----

struct Question {
    q: String,
    doc: String,
    evidence: String,
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/retrieval-data")
}

fn questions() -> Vec<Question> {
    let text = std::fs::read_to_string(data_dir().join("questions.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Question {
                q: v["q"].as_str().unwrap().into(),
                doc: v["doc"].as_str().unwrap().into(),
                evidence: v["evidence"].as_str().unwrap().into(),
            }
        })
        .collect()
}

/// The embedding GGUF: `INHOUSE_BENCH_EMBED_MODEL`, or the cached checkpoint converted now.
fn embedding_model(tmp: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("INHOUSE_BENCH_EMBED_MODEL") {
        return PathBuf::from(p);
    }
    let models = match std::env::var_os("INHOUSE_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/inhouse/models")
        }
    };
    let checkpoint = models.join("all-MiniLM-L6-v2");
    assert!(
        checkpoint.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-models",
        checkpoint.display()
    );
    let tool = Path::new(env!("CARGO_BIN_EXE_inhoused"))
        .parent()
        .unwrap()
        .join("inhouse-quantize");
    assert!(
        tool.is_file(),
        "{} is missing: cargo build --release -p inhouse-quantize",
        tool.display()
    );
    let out = tmp.join("minilm.gguf");
    let t = Instant::now();
    let run = std::process::Command::new(&tool)
        .arg("import-hf")
        .arg(&checkpoint)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "import-hf: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!(
        "converted all-MiniLM-L6-v2 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    out
}

/// Where the answer first appears in `hits` (1-based), by chunk and by document.
fn rank_of(hits: &[inhouse::knowledge::Hit], q: &Question) -> (Option<usize>, Option<usize>) {
    let chunk = hits
        .iter()
        .position(|h| h.file_id == q.doc && h.text.contains(&q.evidence))
        .map(|i| i + 1);
    let doc = hits.iter().position(|h| h.file_id == q.doc).map(|i| i + 1);
    (chunk, doc)
}

#[derive(Default)]
struct Score {
    at1: usize,
    at3: usize,
    at5: usize,
    rr: f64,
    doc_at5: usize,
}

impl Score {
    fn add(&mut self, (chunk, doc): (Option<usize>, Option<usize>)) {
        if let Some(r) = chunk {
            self.at1 += usize::from(r <= 1);
            self.at3 += usize::from(r <= 3);
            self.at5 += usize::from(r <= 5);
            self.rr += 1.0 / r as f64;
        }
        if doc.is_some() {
            self.doc_at5 += 1;
        }
    }
}

fn quality(threads: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let path = embedding_model(tmp.path());
    // The tokenizer that counts chunk tokens: the same GGUF's vocabulary, as the daemon's ingest
    // would count them.
    let backend = inhouse::engine::llama::backend().expect("llama.cpp backend");
    let vocab_model = llama_cpp_2::model::LlamaModel::load_from_file(
        backend,
        &path,
        &llama_cpp_2::model::params::LlamaModelParams::default().with_vocab_only(true),
    )
    .expect("the embedding model's vocabulary");
    let count = |s: &str| {
        vocab_model
            .vocab()
            .tokenize(s.as_bytes(), true, false)
            .len()
    };

    let name = "minilm".to_string();
    // The daemon's defaults (so new settings need no edit here), one slot, our threads.
    let mut cfg = inhouse::config::Config::default().engine_config();
    cfg.threads = threads;
    cfg.ctx_size = 512;
    cfg.slots = 1;
    let metrics = Arc::new(inhouse::metrics::Metrics::new(
        std::slice::from_ref(&name),
        "",
    ));
    let engine = LlamaEngine::start(
        vec![ModelSpec {
            name: name.clone(),
            path: path.clone(),
            adapter: None,
            draft: None,
        }],
        cfg,
        metrics,
    )
    .expect("engine");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let embed = |texts: Vec<String>| -> Vec<Vec<f32>> {
        rt.block_on(engine.embed(name.clone(), texts))
            .expect("embed")
            .vectors
    };

    // Documents → chunks (default strategy, model tokens).
    let strategy = ChunkingStrategy::default();
    let mut docs: Vec<(String, Vec<chunk::Chunk>)> = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(data_dir().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let t = Instant::now();
    for p in &names {
        let text = std::fs::read_to_string(p).unwrap();
        let chunks = chunk::chunk(&text, &strategy, &count);
        docs.push((
            p.file_name().unwrap().to_string_lossy().into_owned(),
            chunks,
        ));
    }
    let chunk_ms = t.elapsed().as_secs_f64() * 1000.0;
    let n_chunks: usize = docs.iter().map(|d| d.1.len()).sum();
    let n_tokens: usize = docs.iter().flat_map(|d| &d.1).map(|c| c.tokens).sum();
    println!(
        "\n## quality: {} documents → {n_chunks} chunks ({n_tokens} tokens; strategy {}/{}), chunked in {chunk_ms:.1} ms",
        docs.len(),
        strategy.max_chunk_size_tokens(),
        strategy.chunk_overlap_tokens()
    );
    let qs = questions();
    for q in &qs {
        let (_, chunks) = docs
            .iter()
            .find(|d| d.0 == q.doc)
            .unwrap_or_else(|| panic!("{}: no such document", q.doc));
        assert!(
            chunks.iter().any(|c| c.text.contains(&q.evidence)),
            "{:?}: the evidence {:?} is cut between chunks",
            q.q,
            q.evidence
        );
    }

    // Ingest: embed every chunk, 32 a call (what the engine decodes together).
    let all: Vec<String> = docs
        .iter()
        .flat_map(|d| &d.1)
        .map(|c| c.text.clone())
        .collect();
    let _warm = embed(vec!["warm up".into()]);
    let t = Instant::now();
    let mut vectors = Vec::with_capacity(all.len());
    for batch in all.chunks(32) {
        vectors.extend(embed(batch.to_vec()));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "ingest: {n_chunks} chunks embedded in {secs:.2} s: {:.1} chunks/s, {:.0} tokens/s ({threads} threads)",
        n_chunks as f64 / secs,
        n_tokens as f64 / secs
    );
    let mut index = Index::new();
    let mut vi = vectors.into_iter();
    let mut id = 0;
    for (doc, chunks) in &docs {
        let batch = chunks
            .iter()
            .map(|c| {
                id += 1;
                NewChunk {
                    id,
                    range: c.range.clone(),
                    text: c.text.clone(),
                    vector: vi.next(),
                }
            })
            .collect();
        index
            .insert_chunks("vs_quality", doc, Attributes::new(), batch)
            .unwrap();
    }

    // Questions: each embedded alone, as a search would.
    let mut embed_ms = Vec::new();
    let mut scores = [Score::default(), Score::default(), Score::default()];
    let mut misses: Vec<String> = Vec::new();
    for q in &qs {
        let t = Instant::now();
        let qv = embed(vec![q.q.clone()]).remove(0);
        embed_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        for (i, mode) in [Mode::Bm25, Mode::Vector, Mode::Hybrid]
            .into_iter()
            .enumerate()
        {
            let hits = index.search(&["vs_quality"], &q.q, Some(&qv), 5, None, mode);
            let r = rank_of(&hits, q);
            if r.0.is_none() {
                misses.push(format!("{mode:?}: {:?} ({})", q.q, q.doc));
            }
            scores[i].add(r);
        }
    }
    println!(
        "query embedding: p50 {:.1} ms, p95 {:.1} ms",
        percentile(&mut embed_ms.clone(), 0.5),
        percentile(&mut embed_ms, 0.95)
    );
    let n = qs.len() as f64;
    println!(
        "{} questions; chunk recall@1 / @3 / @5, MRR@5, document recall@5:",
        qs.len()
    );
    for (mode, s) in ["BM25", "vector", "hybrid"].iter().zip(&scores) {
        println!(
            "  {mode:>6}: {:.3} / {:.3} / {:.3}, MRR {:.3}, doc@5 {:.3}",
            s.at1 as f64 / n,
            s.at3 as f64 / n,
            s.at5 as f64 / n,
            s.rr / n,
            s.doc_at5 as f64 / n
        );
    }
    for m in &misses {
        println!("  not in the top 5: {m}");
    }
    engine.shutdown();
}

fn main() {
    println!("retrieval benchmark; load average {}", load_average());
    let parts = env_list("INHOUSE_BENCH_PARTS", "synthetic,quality");
    if parts.iter().any(|p| p == "synthetic") {
        for n in env_list("INHOUSE_BENCH_SIZES", "10000,100000") {
            synthetic(n.parse().expect("INHOUSE_BENCH_SIZES: numbers"));
        }
    }
    if parts.iter().any(|p| p == "quality") {
        let threads = std::env::var("INHOUSE_BENCH_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        quality(threads);
    }
    println!("\nload average at the end {}", load_average());
}
