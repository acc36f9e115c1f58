//! The in-memory retrieval core of the knowledge collections (issue 20): chunking, attribute
//! filters, BM25, exact vector search and their fusion. Pure: no I/O, no llama.cpp, no storage;
//! the collections' service builds an [`Index`] from the sealed rows at start-up and keeps it
//! in step with them.
//!
//! - [`chunk`]: a cleaned document → chunks with byte ranges (OpenAI's static strategy).
//! - [`filter`]: OpenAI's attribute filters, bounded, and the attributes they test.
//! - [`bm25`]: BM25 over one collection's chunk text.
//! - [`vector`]: exact cosine search over one collection's chunk vectors.
//! - [`fuse`]: reciprocal rank fusion and the search [`Mode`]s.
//!
//! Permission and filtering come before ranking. The caller passes only the collections the
//! asker may read; within them, a chunk of a file the attribute filter refuses is never scored,
//! so it can neither appear nor take a place in the top k. Each collection keeps its own BM25
//! statistics, so one collection's text never changes the scores of another's.
//!
//! The index is `Send + Sync` and has no interior mutability: the service wraps it in a
//! `RwLock` (searches share it, changes take it alone).

pub mod bm25;
pub mod chunk;
pub mod filter;
pub mod fuse;
pub mod vector;

pub use fuse::Mode;

use bm25::{hash_map_bytes, Bm25Error, Bm25Index, IdMap};
use filter::{Attributes, Filter};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use vector::{VectorError, VectorIndex};

/// Candidates each ranked list contributes to a hybrid search, at least (more when `k` is
/// larger): the fused order of the top `k` is decided among the best 50 of each list, as
/// Elasticsearch and others do by default (`rank_window_size`).
pub const RRF_CANDIDATES: usize = 50;

/// A chunk to index.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChunk {
    /// Its id, unique within the collection (the storage row's).
    pub id: u64,
    /// Its bytes in the file's cleaned text: its position for citations.
    pub range: Range<usize>,
    /// Its text.
    pub text: String,
    /// Its embedding; `None` when it has none (it is then found by BM25 only).
    pub vector: Option<Vec<f32>>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The collection (vector store id).
    pub store: String,
    /// The file.
    pub file_id: String,
    /// The chunk.
    pub chunk_id: u64,
    /// Its bytes in the file's cleaned text.
    pub range: Range<usize>,
    /// Its text.
    pub text: String,
    /// In 0..1, higher is better; its meaning depends on the mode:
    /// - [`Mode::Bm25`]: the BM25 score divided by the most the query could score in that
    ///   collection ([`bm25::Bm25Index::ceiling`]);
    /// - [`Mode::Vector`]: the cosine similarity, negative ones shown as 0;
    /// - [`Mode::Hybrid`]: the normalised reciprocal-rank-fusion score ([`fuse`]): 1 for first
    ///   in both lists, ½ for first in one and absent from the other.
    pub score: f32,
    /// Its normalised BM25 score, when BM25 found it.
    pub bm25: Option<f32>,
    /// Its cosine similarity to the query, when the vector search found it.
    pub similarity: Option<f32>,
}

/// Chunks that cannot be indexed; nothing of the batch was indexed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The chunk id is already in the collection, or twice in the batch.
    #[error("chunk {0} is already in the collection")]
    DuplicateChunk(u64),
    /// The chunk's vector is unusable (its width is not the collection's, or it is degenerate).
    #[error("chunk {chunk}: {error}")]
    Vector {
        /// The chunk.
        chunk: u64,
        /// What is wrong with its vector.
        error: VectorError,
    },
    /// The collection's text index is full.
    #[error(transparent)]
    Text(#[from] Bm25Error),
}

/// A file of a collection.
#[derive(Debug, Clone)]
struct FileEntry {
    id: String,
    attributes: Attributes,
    chunks: Vec<u64>,
}

/// A chunk of a collection.
#[derive(Debug, Clone)]
struct ChunkEntry {
    /// Its file's place in [`Collection::files`].
    file: u32,
    range: Range<usize>,
    text: String,
}

/// One collection (vector store): its files, chunks, text index and vectors.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    /// Files by place; `None` is a free place (see `free`).
    files: Vec<Option<FileEntry>>,
    file_of: HashMap<String, u32>,
    free: Vec<u32>,
    chunks: IdMap<ChunkEntry>,
    bm25: Bm25Index,
    /// Created with the first vector, whose width it keeps.
    vectors: Option<VectorIndex>,
}

/// What a collection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionStats {
    /// Files.
    pub files: usize,
    /// Chunks.
    pub chunks: usize,
    /// Chunks with a vector.
    pub vectors: usize,
    /// The vectors' width, once one is indexed.
    pub dim: Option<usize>,
}

impl Collection {
    /// What it holds.
    pub fn stats(&self) -> CollectionStats {
        CollectionStats {
            files: self.file_of.len(),
            chunks: self.chunks.len(),
            vectors: self.vectors.as_ref().map_or(0, VectorIndex::len),
            dim: self.vectors.as_ref().map(VectorIndex::dim),
        }
    }

    fn check(&self, chunks: &[NewChunk]) -> Result<(), IndexError> {
        let mut ids = HashSet::with_capacity(chunks.len());
        let mut dim = self.vectors.as_ref().map(VectorIndex::dim);
        for c in chunks {
            if self.chunks.contains_key(&c.id) || !ids.insert(c.id) {
                return Err(IndexError::DuplicateChunk(c.id));
            }
            if let Some(v) = &c.vector {
                let want = *dim.get_or_insert(v.len());
                VectorIndex::new(want)
                    .check(v)
                    .map_err(|error| IndexError::Vector { chunk: c.id, error })?;
            }
        }
        Ok(())
    }

    fn insert(
        &mut self,
        file_id: &str,
        attributes: Attributes,
        chunks: Vec<NewChunk>,
    ) -> Result<(), IndexError> {
        self.check(&chunks)?;
        let place = match self.file_of.get(file_id) {
            Some(&p) => p,
            None => {
                let entry = Some(FileEntry {
                    id: file_id.to_string(),
                    attributes: Attributes::new(),
                    chunks: Vec::new(),
                });
                let p = match self.free.pop() {
                    Some(p) => {
                        self.files[p as usize] = entry;
                        p
                    }
                    None => {
                        self.files.push(entry);
                        (self.files.len() - 1) as u32
                    }
                };
                self.file_of.insert(file_id.to_string(), p);
                p
            }
        };
        for (done, c) in chunks.iter().enumerate() {
            if let Err(e) = self.bm25.add(c.id, place, &c.text) {
                // Only a full text index gets here (ids were checked): undo this batch.
                for undo in &chunks[..done] {
                    self.bm25.remove(undo.id, &undo.text);
                }
                if self.files[place as usize]
                    .as_ref()
                    .is_some_and(|f| f.chunks.is_empty())
                {
                    self.drop_file_place(file_id, place);
                }
                return Err(e.into());
            }
        }
        let file = self.files[place as usize]
            .as_mut()
            .expect("a file's place is filled");
        file.attributes = attributes;
        for c in chunks {
            if let Some(v) = &c.vector {
                let dim = v.len();
                // Checked above: the width matches and the vector is usable.
                let _ = self
                    .vectors
                    .get_or_insert_with(|| VectorIndex::new(dim))
                    .add(c.id, place, v);
            }
            file.chunks.push(c.id);
            self.chunks.insert(
                c.id,
                ChunkEntry {
                    file: place,
                    range: c.range,
                    text: c.text,
                },
            );
        }
        Ok(())
    }

    fn drop_file_place(&mut self, file_id: &str, place: u32) {
        self.file_of.remove(file_id);
        self.files[place as usize] = None;
        self.free.push(place);
    }

    fn remove_file(&mut self, file_id: &str) -> bool {
        let Some(&place) = self.file_of.get(file_id) else {
            return false;
        };
        let file = self.files[place as usize]
            .take()
            .expect("a file's place is filled");
        for id in file.chunks {
            if let Some(c) = self.chunks.remove(&id) {
                self.bm25.remove(id, &c.text);
            }
            if let Some(v) = &mut self.vectors {
                v.remove(id);
            }
        }
        self.file_of.remove(file_id);
        self.free.push(place);
        if self.vectors.as_ref().is_some_and(VectorIndex::is_empty) {
            // A collection whose vectors are all gone may take another width (a new model).
            self.vectors = None;
        }
        if self.chunks.capacity() > 2 * self.chunks.len() + 1024 {
            self.chunks.shrink_to_fit();
        }
        true
    }

    /// Which file places a search may use: all when `filter` is `None`.
    fn allowed(&self, filter: Option<&Filter>) -> Option<Vec<bool>> {
        let filter = filter?;
        Some(
            self.files
                .iter()
                .map(|f| f.as_ref().is_some_and(|f| filter.matches(&f.attributes)))
                .collect(),
        )
    }

    fn shrink_to_fit(&mut self) {
        self.files.shrink_to_fit();
        self.file_of.shrink_to_fit();
        self.free.shrink_to_fit();
        self.chunks.shrink_to_fit();
        self.bm25.shrink_to_fit();
        if let Some(v) = &mut self.vectors {
            v.shrink_to_fit();
        }
    }

    fn memory_bytes(&self) -> usize {
        let files: usize = self
            .files
            .iter()
            .flatten()
            .map(|f| {
                f.id.capacity()
                    + f.chunks.capacity() * 8
                    + f.attributes
                        .iter()
                        .map(|(k, v)| {
                            k.capacity()
                                + 64
                                + match v {
                                    filter::AttrValue::String(s) => s.capacity(),
                                    _ => 0,
                                }
                        })
                        .sum::<usize>()
            })
            .sum();
        let texts: usize = self.chunks.values().map(|c| c.text.capacity()).sum();
        files
            + self.files.capacity() * std::mem::size_of::<Option<FileEntry>>()
            + hash_map_bytes::<String, u32>(self.file_of.capacity())
            + self.file_of.keys().map(String::capacity).sum::<usize>()
            + self.free.capacity() * 4
            + texts
            + hash_map_bytes::<u64, ChunkEntry>(self.chunks.capacity())
            + self.bm25.memory_bytes()
            + self.vectors.as_ref().map_or(0, VectorIndex::memory_bytes)
    }
}

/// Every collection's index, by vector store id.
#[derive(Debug, Clone, Default)]
pub struct Index {
    stores: HashMap<String, Collection>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Indexes `chunks` of file `file_id` in collection `store` (created on first use), and sets
    /// the file's attributes (replacing those it had: a file's chunks may come in several
    /// batches). Checked first, all or nothing: a chunk id already in the collection, or a
    /// vector whose width differs from the collection's (the first vector fixes it) or that is
    /// degenerate, refuses the whole batch.
    pub fn insert_chunks(
        &mut self,
        store: &str,
        file_id: &str,
        attributes: Attributes,
        chunks: Vec<NewChunk>,
    ) -> Result<(), IndexError> {
        let col = match self.stores.get_mut(store) {
            Some(c) => c,
            None => self.stores.entry(store.to_string()).or_default(),
        };
        let result = col.insert(file_id, attributes, chunks);
        if col.file_of.is_empty() {
            self.stores.remove(store);
        }
        result
    }

    /// Replaces the attributes of a file; returns whether the file is indexed.
    pub fn set_attributes(&mut self, store: &str, file_id: &str, attributes: Attributes) -> bool {
        let Some(col) = self.stores.get_mut(store) else {
            return false;
        };
        let Some(&place) = col.file_of.get(file_id) else {
            return false;
        };
        if let Some(f) = col.files[place as usize].as_mut() {
            f.attributes = attributes;
        }
        true
    }

    /// Removes a file and all its chunks from a collection (the collection goes with its last
    /// file); returns whether the file was indexed.
    pub fn remove_file(&mut self, store: &str, file_id: &str) -> bool {
        let Some(col) = self.stores.get_mut(store) else {
            return false;
        };
        let removed = col.remove_file(file_id);
        if col.file_of.is_empty() {
            self.stores.remove(store);
        }
        removed
    }

    /// Removes a collection; returns whether it was indexed.
    pub fn remove_store(&mut self, store: &str) -> bool {
        self.stores.remove(store).is_some()
    }

    /// A collection, when it holds a file.
    pub fn collection(&self, store: &str) -> Option<&Collection> {
        self.stores.get(store)
    }

    /// The collections indexed, in no particular order.
    pub fn stores(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }

    /// Chunks in every collection.
    pub fn chunk_count(&self) -> usize {
        self.stores.values().map(|c| c.chunks.len()).sum()
    }

    /// Gives back the spare capacity that growing left (vectors and lists grow by doubling):
    /// call it once the start-up build is done.
    pub fn shrink_to_fit(&mut self) {
        self.stores.shrink_to_fit();
        for c in self.stores.values_mut() {
            c.shrink_to_fit();
        }
    }

    /// Approximate heap bytes of everything held (chunk text, postings, vectors, maps); what the
    /// index costs in memory, for the start-up log and the benchmark.
    pub fn memory_bytes(&self) -> usize {
        hash_map_bytes::<String, Collection>(self.stores.capacity())
            + self
                .stores
                .iter()
                .map(|(k, c)| k.capacity() + c.memory_bytes())
                .sum::<usize>()
    }

    /// The `k` best chunks of the collections `stores` (the caller passes only those the asker
    /// may read; unknown ones hold nothing) for a query, among the files `filter` accepts
    /// (evaluated before ranking), best first. See [`Hit::score`] for the scores.
    ///
    /// - [`Mode::Bm25`] ranks by BM25 on `query_text`.
    /// - [`Mode::Vector`] ranks by cosine to `query_vec`; without one, or in a collection whose
    ///   vectors have another width, it finds nothing.
    /// - [`Mode::Hybrid`] fuses the best [`RRF_CANDIDATES`] (or `k`, if more) of each list by
    ///   reciprocal rank fusion; without `query_vec` it is [`Mode::Bm25`].
    ///
    /// Across collections, BM25 scores are compared normalised (each by its own collection's
    /// ceiling) and cosines as they are. Ties go to the collection named first, then the lower
    /// chunk id.
    pub fn search(
        &self,
        stores: &[&str],
        query_text: &str,
        query_vec: Option<&[f32]>,
        k: usize,
        filter: Option<&Filter>,
        mode: Mode,
    ) -> Vec<Hit> {
        let mode = match (mode, query_vec) {
            (Mode::Hybrid, None) => Mode::Bm25,
            (m, _) => m,
        };
        if k == 0 || (mode == Mode::Vector && query_vec.is_none()) {
            return Vec::new();
        }
        let depth = match mode {
            Mode::Hybrid => k.max(RRF_CANDIDATES),
            _ => k,
        };
        // Each collection once, in the order named.
        let mut seen = HashSet::new();
        let cols: Vec<(&str, &Collection)> = stores
            .iter()
            .filter(|s| seen.insert(**s))
            .filter_map(|s| self.stores.get(*s).map(|c| (*s, c)))
            .collect();
        // Lists keyed by (collection's place in `cols`, chunk id).
        let mut text: Vec<((usize, u64), f32)> = Vec::new();
        let mut vecs: Vec<((usize, u64), f32)> = Vec::new();
        for (ci, (_, col)) in cols.iter().enumerate() {
            let allowed = col.allowed(filter);
            // The indexes group chunks by their file's place, so the filter's verdict on a
            // chunk is one look-up in `allowed`.
            let accept = |_: u64, file: u32| allowed.as_ref().is_none_or(|a| a[file as usize]);
            let candidate: Option<&dyn Fn(u64, u32) -> bool> =
                allowed.as_ref().map(|_| &accept as _);
            if matches!(mode, Mode::Bm25 | Mode::Hybrid) {
                text.extend(
                    col.bm25
                        .search(query_text, depth, candidate)
                        .into_iter()
                        .map(|(id, s)| ((ci, id), s)),
                );
            }
            if let (Mode::Vector | Mode::Hybrid, Some(q), Some(v)) = (mode, query_vec, &col.vectors)
            {
                vecs.extend(
                    v.search(q, depth, candidate)
                        .into_iter()
                        .map(|(id, s)| ((ci, id), s)),
                );
            }
        }
        let best_first = |a: &((usize, u64), f32), b: &((usize, u64), f32)| {
            b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
        };
        for list in [&mut text, &mut vecs] {
            list.sort_unstable_by(best_first);
            list.truncate(depth);
        }
        let text_score: HashMap<(usize, u64), f32> = text.iter().copied().collect();
        let vec_score: HashMap<(usize, u64), f32> = vecs.iter().copied().collect();
        let ranked: Vec<((usize, u64), f32)> = match mode {
            Mode::Bm25 => text,
            Mode::Vector => vecs.into_iter().map(|(key, s)| (key, s.max(0.0))).collect(),
            Mode::Hybrid => {
                let a: Vec<(usize, u64)> = text.iter().map(|h| h.0).collect();
                let b: Vec<(usize, u64)> = vecs.iter().map(|h| h.0).collect();
                fuse::rrf(&[&a, &b], fuse::RRF_K)
            }
        };
        ranked
            .into_iter()
            .take(k)
            .filter_map(|((ci, id), score)| {
                let (store, col) = cols[ci];
                let c = col.chunks.get(&id)?;
                let file = col.files[c.file as usize].as_ref()?;
                Some(Hit {
                    store: store.to_string(),
                    file_id: file.id.clone(),
                    chunk_id: id,
                    range: c.range.clone(),
                    text: c.text.clone(),
                    score,
                    bm25: text_score.get(&(ci, id)).copied(),
                    similarity: vec_score.get(&(ci, id)).copied(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: serde_json::Value) -> Attributes {
        filter::parse_attributes(v.as_object().unwrap()).unwrap()
    }

    fn chunk(id: u64, text: &str, vector: Option<Vec<f32>>) -> NewChunk {
        NewChunk {
            id,
            range: (id as usize * 10)..(id as usize * 10 + text.len()),
            text: text.to_string(),
            vector,
        }
    }

    fn ids(hits: &[Hit]) -> Vec<(String, u64)> {
        hits.iter().map(|h| (h.store.clone(), h.chunk_id)).collect()
    }

    fn f(v: serde_json::Value) -> Filter {
        Filter::parse(&v).unwrap()
    }

    /// Two collections: "vs_a" (HR and legal files) and "vs_b" (another user's).
    fn sample() -> Index {
        let mut ix = Index::new();
        ix.insert_chunks(
            "vs_a",
            "file-hr",
            attrs(json!({"dept": "hr", "year": 2024})),
            vec![
                chunk(
                    1,
                    "Parental leave is sixteen weeks at full pay.",
                    Some(vec![1.0, 0.0, 0.0]),
                ),
                chunk(
                    2,
                    "Holiday requests go to your manager two weeks ahead.",
                    Some(vec![0.0, 1.0, 0.0]),
                ),
            ],
        )
        .unwrap();
        ix.insert_chunks(
            "vs_a",
            "file-legal",
            attrs(json!({"dept": "legal", "year": 2022})),
            vec![chunk(
                3,
                "Contracts over 50000 euros need two signatures.",
                Some(vec![0.0, 0.0, 1.0]),
            )],
        )
        .unwrap();
        ix.insert_chunks(
            "vs_b",
            "file-secret",
            attrs(json!({"dept": "hr"})),
            vec![chunk(
                1,
                "Secret: parental leave parental leave weeks pay.",
                Some(vec![1.0, 0.0, 0.0]),
            )],
        )
        .unwrap();
        ix
    }

    #[test]
    fn the_index_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Index>();
    }

    #[test]
    fn search_finds_chunks_with_their_place_and_text() {
        let ix = sample();
        let hits = ix.search(
            &["vs_a"],
            "how long is parental leave?",
            None,
            5,
            None,
            Mode::Bm25,
        );
        assert_eq!(ids(&hits), [("vs_a".into(), 1)]);
        let h = &hits[0];
        assert_eq!(h.file_id, "file-hr");
        assert_eq!(h.range, 10..10 + h.text.len());
        assert!(h.text.starts_with("Parental leave"));
        assert!(h.score > 0.0 && h.score < 1.0);
        assert_eq!(h.bm25, Some(h.score));
        assert_eq!(h.similarity, None);
        let stats = ix.collection("vs_a").unwrap().stats();
        assert_eq!(
            stats,
            CollectionStats {
                files: 2,
                chunks: 3,
                vectors: 3,
                dim: Some(3)
            }
        );
        assert_eq!(ix.chunk_count(), 4);
        let mut stores: Vec<&str> = ix.stores().collect();
        stores.sort();
        assert_eq!(stores, ["vs_a", "vs_b"]);
    }

    #[test]
    fn only_the_collections_passed_are_searched_and_their_scores_are_their_own() {
        let mut ix = sample();
        // vs_b's chunk is the better match for every mode; the caller may read vs_a only.
        for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
            let hits = ix.search(
                &["vs_a"],
                "parental leave",
                Some(&[1.0, 0.0, 0.0]),
                10,
                None,
                mode,
            );
            assert!(hits.iter().all(|h| h.store == "vs_a"), "{mode:?}: {hits:?}");
            assert_eq!(hits[0].chunk_id, 1, "{mode:?}");
        }
        let both = ix.search(
            &["vs_a", "vs_b"],
            "parental leave",
            None,
            10,
            None,
            Mode::Bm25,
        );
        assert_eq!(both.len(), 2);
        assert!(ix
            .search(&["vs_nobody"], "parental", None, 10, None, Mode::Bm25)
            .is_empty());
        assert!(ix
            .search(&[], "parental", None, 10, None, Mode::Bm25)
            .is_empty());
        // Another collection's text does not move vs_a's scores.
        let before = ix.search(
            &["vs_a"],
            "parental leave weeks",
            None,
            10,
            None,
            Mode::Bm25,
        );
        ix.insert_chunks(
            "vs_b",
            "file-more",
            Attributes::new(),
            (100..150)
                .map(|i| chunk(i, "parental leave weeks weeks", None))
                .collect(),
        )
        .unwrap();
        let after = ix.search(
            &["vs_a"],
            "parental leave weeks",
            None,
            10,
            None,
            Mode::Bm25,
        );
        assert_eq!(before, after);
        // Naming a collection twice searches it once.
        let twice = ix.search(
            &["vs_a", "vs_a"],
            "parental leave weeks",
            None,
            10,
            None,
            Mode::Bm25,
        );
        assert_eq!(twice, before);
    }

    #[test]
    fn attribute_filters_apply_before_ranking() {
        let mut ix = Index::new();
        // The best match for "invoice deadline" is in a draft; the caller asks for final files.
        ix.insert_chunks(
            "vs",
            "draft",
            attrs(json!({"status": "draft"})),
            vec![chunk(
                1,
                "invoice deadline invoice deadline invoice",
                Some(vec![1.0, 0.0]),
            )],
        )
        .unwrap();
        ix.insert_chunks(
            "vs",
            "final",
            attrs(json!({"status": "final"})),
            vec![
                chunk(2, "the invoice deadline is the 5th", Some(vec![0.8, 0.6])),
                chunk(3, "unrelated text about parking", Some(vec![0.6, 0.8])),
            ],
        )
        .unwrap();
        let only_final = f(json!({"type": "eq", "key": "status", "value": "final"}));
        for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
            let all = ix.search(
                &["vs"],
                "invoice deadline",
                Some(&[1.0, 0.0]),
                1,
                None,
                mode,
            );
            assert_eq!(all[0].chunk_id, 1, "{mode:?}: unfiltered, the draft wins");
            let hits = ix.search(
                &["vs"],
                "invoice deadline",
                Some(&[1.0, 0.0]),
                1,
                Some(&only_final),
                mode,
            );
            assert_eq!(
                hits.len(),
                1,
                "{mode:?}: the one place goes to a final chunk"
            );
            assert_eq!(hits[0].chunk_id, 2, "{mode:?}");
            assert_eq!(hits[0].file_id, "final");
        }
        let none = f(json!({"type": "eq", "key": "status", "value": "archived"}));
        assert!(ix
            .search(
                &["vs"],
                "invoice",
                Some(&[1.0, 0.0]),
                5,
                Some(&none),
                Mode::Hybrid
            )
            .is_empty());
        // Attributes can change; the filter follows them.
        assert!(ix.set_attributes("vs", "draft", attrs(json!({"status": "final"}))));
        assert!(!ix.set_attributes("vs", "nope", Attributes::new()));
        let hits = ix.search(
            &["vs"],
            "invoice deadline",
            None,
            1,
            Some(&only_final),
            Mode::Bm25,
        );
        assert_eq!(hits[0].chunk_id, 1);
    }

    #[test]
    fn modes_rank_and_score_as_documented() {
        let mut ix = Index::new();
        // Chunk 1 matches the words, chunk 2 the meaning, chunk 3 both.
        ix.insert_chunks(
            "vs",
            "f",
            Attributes::new(),
            vec![
                chunk(1, "reset password steps", Some(vec![0.0, 1.0])),
                chunk(2, "recovering access to your account", Some(vec![1.0, 0.0])),
                chunk(3, "password reset: recovering access", Some(vec![0.9, 0.1])),
                chunk(4, "canteen menu", Some(vec![-1.0, 0.0])),
            ],
        )
        .unwrap();
        let q = [0.9f32, 0.1];
        let bm25 = ix.search(&["vs"], "reset password", Some(&q), 10, None, Mode::Bm25);
        assert_eq!(bm25.iter().map(|h| h.chunk_id).collect::<Vec<_>>(), [1, 3]);
        let vector = ix.search(&["vs"], "reset password", Some(&q), 10, None, Mode::Vector);
        assert_eq!(
            vector.iter().map(|h| h.chunk_id).collect::<Vec<_>>(),
            [3, 2, 1, 4]
        );
        assert_eq!(vector[3].score, 0.0, "a negative cosine shows as 0");
        assert!(vector[3].similarity.unwrap() < 0.0);
        assert!((vector[0].score - vector[0].similarity.unwrap()).abs() < 1e-6);
        let hybrid = ix.search(&["vs"], "reset password", Some(&q), 10, None, Mode::Hybrid);
        assert_eq!(hybrid[0].chunk_id, 3, "good in both lists: first");
        assert!(hybrid.iter().all(|h| (0.0..=1.0).contains(&h.score)));
        let r = |rank: f32| 1.0 / (fuse::RRF_K + rank);
        let want = (r(2.0) + r(1.0)) / (2.0 / (fuse::RRF_K + 1.0));
        assert!((hybrid[0].score - want).abs() < 1e-6);
        assert!(hybrid[0].bm25.is_some() && hybrid[0].similarity.is_some());
        // Without a query vector, hybrid is BM25 and vector finds nothing.
        assert_eq!(
            ix.search(&["vs"], "reset password", None, 10, None, Mode::Hybrid),
            bm25
        );
        assert!(ix
            .search(&["vs"], "reset password", None, 10, None, Mode::Vector)
            .is_empty());
        // A query vector of another width finds nothing by vector.
        assert!(ix
            .search(&["vs"], "x", Some(&[1.0, 0.0, 0.0]), 10, None, Mode::Vector)
            .is_empty());
        // k cuts.
        assert_eq!(
            ix.search(&["vs"], "reset password", Some(&q), 1, None, Mode::Hybrid)
                .len(),
            1
        );
        assert!(ix
            .search(&["vs"], "reset password", Some(&q), 0, None, Mode::Hybrid)
            .is_empty());
    }

    #[test]
    fn chunks_without_vectors_are_found_by_text_only() {
        let mut ix = Index::new();
        ix.insert_chunks(
            "vs",
            "f",
            Attributes::new(),
            vec![chunk(1, "plain text only", None)],
        )
        .unwrap();
        assert_eq!(ix.collection("vs").unwrap().stats().dim, None);
        assert_eq!(
            ix.search(&["vs"], "plain", Some(&[1.0]), 5, None, Mode::Hybrid)
                .len(),
            1
        );
        assert!(ix
            .search(&["vs"], "plain", Some(&[1.0]), 5, None, Mode::Vector)
            .is_empty());
    }

    #[test]
    fn bad_batches_change_nothing() {
        let mut ix = sample();
        let before = ix.memory_bytes();
        let stats = ix.collection("vs_a").unwrap().stats();
        // A duplicate id (with the collection, then within the batch).
        assert_eq!(
            ix.insert_chunks(
                "vs_a",
                "new",
                Attributes::new(),
                vec![chunk(9, "x", None), chunk(3, "y", None)]
            ),
            Err(IndexError::DuplicateChunk(3))
        );
        assert_eq!(
            ix.insert_chunks(
                "vs_a",
                "new",
                Attributes::new(),
                vec![chunk(9, "x", None), chunk(9, "y", None)]
            ),
            Err(IndexError::DuplicateChunk(9))
        );
        // A vector of another width, or one without a direction.
        let e = ix
            .insert_chunks(
                "vs_a",
                "new",
                Attributes::new(),
                vec![chunk(9, "x", Some(vec![1.0, 0.0]))],
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "chunk 9: a vector of 2 dimensions in a collection of 3"
        );
        assert!(matches!(
            ix.insert_chunks(
                "vs_new",
                "f",
                Attributes::new(),
                vec![
                    chunk(1, "x", Some(vec![1.0, 0.0])),
                    chunk(2, "y", Some(vec![1.0]))
                ]
            ),
            Err(IndexError::Vector { chunk: 2, .. })
        ));
        assert!(matches!(
            ix.insert_chunks(
                "vs_new",
                "f",
                Attributes::new(),
                vec![chunk(1, "x", Some(vec![0.0, 0.0]))]
            ),
            Err(IndexError::Vector {
                error: VectorError::Degenerate,
                ..
            })
        ));
        assert!(
            ix.collection("vs_new").is_none(),
            "a failed first batch leaves no collection"
        );
        assert_eq!(ix.collection("vs_a").unwrap().stats(), stats);
        assert_eq!(ix.memory_bytes(), before);
        // The same chunk id in another collection is another chunk.
        ix.insert_chunks("vs_c", "f", Attributes::new(), vec![chunk(3, "x", None)])
            .unwrap();
    }

    #[test]
    fn files_and_collections_go_with_everything_they_hold() {
        let mut ix = sample();
        // More chunks for an indexed file come in a second batch, with new attributes.
        ix.insert_chunks(
            "vs_a",
            "file-hr",
            attrs(json!({"dept": "people"})),
            vec![chunk(
                4,
                "Sick leave needs a note after three days.",
                Some(vec![0.0, 1.0, 0.0]),
            )],
        )
        .unwrap();
        let people = f(json!({"type": "eq", "key": "dept", "value": "people"}));
        let hits = ix.search(&["vs_a"], "leave", None, 10, Some(&people), Mode::Bm25);
        assert_eq!(hits.iter().map(|h| h.chunk_id).collect::<Vec<_>>(), [1, 4]);
        assert!(ix.remove_file("vs_a", "file-hr"));
        assert!(!ix.remove_file("vs_a", "file-hr"));
        assert!(!ix.remove_file("vs_zzz", "file-hr"));
        for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
            let hits = ix.search(
                &["vs_a"],
                "leave weeks manager",
                Some(&[1.0, 0.0, 0.0]),
                10,
                None,
                mode,
            );
            assert!(
                hits.iter().all(|h| h.file_id == "file-legal"),
                "{mode:?}: {hits:?}"
            );
        }
        assert_eq!(ix.collection("vs_a").unwrap().stats().chunks, 1);
        // The last file takes its collection (and the vectors' width) with it.
        assert!(ix.remove_file("vs_a", "file-legal"));
        assert!(ix.collection("vs_a").is_none());
        ix.insert_chunks(
            "vs_a",
            "f",
            Attributes::new(),
            vec![chunk(1, "wider", Some(vec![1.0; 8]))],
        )
        .unwrap();
        assert_eq!(ix.collection("vs_a").unwrap().stats().dim, Some(8));
        assert!(ix.remove_store("vs_a"));
        assert!(!ix.remove_store("vs_a"));
        assert!(ix.remove_store("vs_b"));
        assert_eq!(ix.chunk_count(), 0);
        // A file place freed is reused, and its chunks' filter verdicts are the new file's.
        let mut ix = Index::new();
        ix.insert_chunks(
            "vs",
            "a",
            attrs(json!({"k": 1})),
            vec![chunk(1, "alpha", None)],
        )
        .unwrap();
        ix.insert_chunks(
            "vs",
            "b",
            attrs(json!({"k": 2})),
            vec![chunk(2, "alpha", None)],
        )
        .unwrap();
        ix.remove_file("vs", "a");
        ix.insert_chunks(
            "vs",
            "c",
            attrs(json!({"k": 3})),
            vec![chunk(3, "alpha", None)],
        )
        .unwrap();
        let k3 = f(json!({"type": "eq", "key": "k", "value": 3}));
        let hits = ix.search(&["vs"], "alpha", None, 10, Some(&k3), Mode::Bm25);
        assert_eq!(
            hits.iter()
                .map(|h| (h.chunk_id, h.file_id.as_str()))
                .collect::<Vec<_>>(),
            [(3, "c")]
        );
    }

    #[test]
    fn memory_is_counted_and_given_back() {
        let mut ix = Index::new();
        assert_eq!(ix.memory_bytes(), 0);
        let chunks: Vec<NewChunk> = (0..1000)
            .map(|i| {
                chunk(
                    i,
                    &format!("chunk number {i} with some words in it"),
                    Some(vec![1.0; 384]),
                )
            })
            .collect();
        ix.insert_chunks("vs", "f", Attributes::new(), chunks)
            .unwrap();
        let grown = ix.memory_bytes();
        ix.shrink_to_fit();
        let used = ix.memory_bytes();
        assert!(used <= grown);
        // At least the vectors (1000 × 384 × 4) and the text.
        assert!(used > 1000 * 384 * 4 + 1000 * 30, "{used}");
        assert!(used < 4 * 1000 * 384 * 4, "{used}");
        ix.remove_file("vs", "f");
        assert!(
            ix.memory_bytes() < 4096,
            "what is left is the map of collections' table"
        );
    }
}
