//! What the knowledge index costs at start-up: the sealed rows of N chunks (text and a 384-wide
//! vector each, as all-MiniLM-L6-v2 makes) opened with their owners' data keys and loaded into
//! the in-memory index, at 10k and 100k chunks: seconds, the index's own estimate of its heap,
//! and the process's resident memory before and after.
//!
//! Run: `cargo bench --bench knowledge_start` (no model needed). Prints figures; asserts
//! nothing about speed.

use std::time::Instant;

use inhouse::knowledge::{Index, NewChunk};
use inhouse::storage::knowledge::NewChunk as StoredChunk;
use inhouse::storage::Store;
use serde_json::Map;

const DIM: usize = 384;
const CHUNKS_PER_FILE: usize = 100;

/// A deterministic xorshift, so every run stores the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// About 150 words of made-up vocabulary (~900 bytes), as a 200-token chunk of prose holds.
fn text(rng: &mut Rng) -> String {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ren", "sa", "tor", "vel", "un", "dra", "pe", "is", "qua", "nor", "fi",
    ];
    let mut s = String::new();
    for w in 0..150 {
        if w > 0 {
            s.push(' ');
        }
        for _ in 0..(1 + rng.next() % 3) {
            s.push_str(SYLLABLES[(rng.next() % SYLLABLES.len() as u64) as usize]);
        }
    }
    s
}

fn vector(rng: &mut Rng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    inhouse::crypto::generate_key_file(&key_file).unwrap();
    let key = || inhouse::crypto::MasterKey::load(&key_file).unwrap();
    let db = dir.path().join("bench.db");
    let mut store = Store::open(&db, key()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t = Instant::now();
    let vs = store
        .vs_create(1000, "bench", &Map::new(), false, (200, 50), &[], 0)
        .unwrap();
    for f in 0..n / CHUNKS_PER_FILE {
        let file = store
            .file_create(1000, "assistants", &format!("doc-{f}.txt"), b"x", 0)
            .unwrap();
        let (att, _) = store
            .vs_attach(1000, &vs.id, &file.id, &Map::new(), (200, 50), 0)
            .unwrap();
        let chunks: Vec<StoredChunk> = (0..CHUNKS_PER_FILE)
            .map(|i| StoredChunk {
                ordinal: i as u32,
                start: i * 900,
                end: i * 900 + 900,
                text: text(&mut rng),
                vector: Some(vector(&mut rng)),
            })
            .collect();
        assert!(store.ingest_complete(att.seq, &chunks).unwrap());
    }
    let write_secs = t.elapsed().as_secs_f64();
    drop(store);
    let db_mib = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64;

    // What the daemon does at start: open the store, then each file's sealed chunks in turn,
    // into the index.
    let rss0 = rss_mib();
    let t = Instant::now();
    let store = Store::open(&db, key()).unwrap();
    let mut index = Index::default();
    let mut open_secs = 0.0;
    for seq in store.searchable_seqs().unwrap() {
        let opened = Instant::now();
        let files = store.searchable_files(Some(seq)).unwrap();
        open_secs += opened.elapsed().as_secs_f64();
        for f in files {
            let chunks = f
                .chunks
                .into_iter()
                .map(|(seq, c)| NewChunk {
                    id: seq as u64,
                    range: c.start..c.end,
                    text: c.text,
                    vector: c.vector,
                })
                .collect();
            index
                .insert_chunks(&f.store_id, &f.file_id, Default::default(), chunks)
                .expect("the stored chunks index");
        }
    }
    index.shrink_to_fit();
    let total_secs = t.elapsed().as_secs_f64();
    let rss1 = rss_mib();
    println!(
        "knowledge start-up, {n} chunks ({DIM}-wide vectors, ~900-byte texts; sealed database \
         {db_mib:.0} MiB, written in {write_secs:.1} s): rows read and opened {open_secs:.2} s, \
         index built {:.2} s, total {total_secs:.2} s = {:.0} chunks/s; index heap {:.0} MiB \
         (estimate), process RSS {rss0:.0} -> {rss1:.0} MiB (+{:.0})",
        total_secs - open_secs,
        n as f64 / total_secs,
        index.memory_bytes() as f64 / (1 << 20) as f64,
        rss1 - rss0
    );
}

fn main() {
    let sizes: Vec<usize> = match std::env::var("KNOWLEDGE_BENCH_CHUNKS") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![10_000, 100_000],
    };
    for n in sizes {
        run(n);
    }
}
