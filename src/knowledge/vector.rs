//! Exact vector search over the chunks of one collection: unit vectors stored flat in one
//! contiguous `Vec<f32>` (row `i` is `data[i * dim..(i + 1) * dim]`), searched by dot product,
//! which for unit vectors is the cosine similarity.
//!
//! Flat and exact on purpose: 100 000 chunks of all-MiniLM-L6-v2 (384 wide) are 154 MB and one
//! pass over them is a few milliseconds (see docs/BENCHMARKS.md, "Retrieval"), with no recall lost
//! to an approximate structure and nothing to rebuild. Removal swaps the last row into the hole.
//!
//! As in BM25, the candidate predicate runs before a row is scored: a chunk it refuses is never
//! compared with the query and never takes a place in the top k.

use super::bm25::IdMap;

/// A vector that cannot be indexed or searched with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VectorError {
    /// Its width is not the collection's.
    #[error("a vector of {got} dimensions in a collection of {want}")]
    Dimension {
        /// The collection's width.
        want: usize,
        /// The vector's.
        got: usize,
    },
    /// It holds a NaN or an infinity, or is all zeros (it has no direction).
    #[error("a vector must be finite and not zero")]
    Degenerate,
    /// The id is already indexed.
    #[error("chunk {0} already has a vector")]
    Duplicate(u64),
}

/// The vectors of one collection, all `dim` wide.
#[derive(Debug, Clone)]
pub struct VectorIndex {
    dim: usize,
    data: Vec<f32>,
    ids: Vec<u64>,
    /// Each row's group (the caller's: the chunk's file), which the candidate predicate sees.
    groups: Vec<u32>,
    row_of: IdMap<usize>,
}

impl VectorIndex {
    /// An empty index of `dim`-wide vectors (`dim` ≥ 1).
    pub fn new(dim: usize) -> Self {
        VectorIndex {
            dim: dim.max(1),
            data: Vec::new(),
            ids: Vec::new(),
            groups: Vec::new(),
            row_of: IdMap::default(),
        }
    }

    /// The width of every vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Vectors indexed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` has a vector.
    pub fn contains(&self, id: u64) -> bool {
        self.row_of.contains_key(&id)
    }

    /// Checks that `v` could be added (width, finite, not zero).
    pub fn check(&self, v: &[f32]) -> Result<(), VectorError> {
        if v.len() != self.dim {
            return Err(VectorError::Dimension {
                want: self.dim,
                got: v.len(),
            });
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>();
        if !norm.is_finite() || norm == 0.0 {
            return Err(VectorError::Degenerate);
        }
        Ok(())
    }

    /// Adds chunk `id`'s vector, in `group` (the caller's grouping, which the candidate
    /// predicate sees), normalised to unit length (the embedding engine's already are; this
    /// keeps dot product = cosine whatever the source).
    pub fn add(&mut self, id: u64, group: u32, v: &[f32]) -> Result<(), VectorError> {
        self.check(v)?;
        if self.row_of.contains_key(&id) {
            return Err(VectorError::Duplicate(id));
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        self.data.extend(v.iter().map(|x| x / norm));
        self.row_of.insert(id, self.ids.len());
        self.ids.push(id);
        self.groups.push(group);
        Ok(())
    }

    /// Removes chunk `id`'s vector; returns whether it had one.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(row) = self.row_of.remove(&id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if row != last {
            let (head, tail) = self.data.split_at_mut(last * self.dim);
            head[row * self.dim..(row + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
            let moved = self.ids[last];
            self.ids[row] = moved;
            self.groups[row] = self.groups[last];
            self.row_of.insert(moved, row);
        }
        self.ids.pop();
        self.groups.pop();
        self.data.truncate(last * self.dim);
        if self.ids.is_empty() {
            *self = VectorIndex::new(self.dim);
        } else if self.data.capacity() > 2 * self.data.len() + 4096 {
            self.data.shrink_to_fit();
        }
        true
    }

    /// The `k` chunks most similar to `query` among those `candidate` accepts (all when
    /// `None`; it is given a chunk's id and group), best first, ties by id, with their cosine
    /// similarity (−1..1). `query` is normalised first; a query of the wrong width, or
    /// degenerate, finds nothing.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        candidate: Option<&dyn Fn(u64, u32) -> bool>,
    ) -> Vec<(u64, f32)> {
        if k == 0 || self.ids.is_empty() || self.check(query).is_err() {
            return Vec::new();
        }
        let norm = query.iter().map(|x| x * x).sum::<f32>().sqrt();
        let q: Vec<f32> = query.iter().map(|x| x / norm).collect();
        let mut hits: Vec<(u64, f32)> = Vec::with_capacity(self.ids.len().min(k * 64));
        // The k-th best so far: rows below it are not kept (the list stays short).
        let mut floor = f32::NEG_INFINITY;
        let rows = self.ids.iter().zip(&self.groups);
        for ((&id, &group), v) in rows.zip(self.data.chunks_exact(self.dim)) {
            if let Some(accept) = candidate {
                if !accept(id, group) {
                    continue;
                }
            }
            let s = dot(&q, v);
            if s < floor {
                continue;
            }
            hits.push((id, s));
            if hits.len() >= k * 64 {
                super::bm25::top_k(&mut hits, k);
                floor = hits.last().map_or(f32::NEG_INFINITY, |h| h.1);
            }
        }
        super::bm25::top_k(&mut hits, k);
        hits
    }

    /// Gives back spare capacity (after a bulk build).
    pub fn shrink_to_fit(&mut self) {
        self.data.shrink_to_fit();
        self.ids.shrink_to_fit();
        self.groups.shrink_to_fit();
        self.row_of.shrink_to_fit();
    }

    /// Approximate heap bytes: the vectors, the ids and the id map.
    pub fn memory_bytes(&self) -> usize {
        self.data.capacity() * 4
            + self.ids.capacity() * 8
            + self.groups.capacity() * 4
            + super::bm25::hash_map_bytes::<u64, usize>(self.row_of.capacity())
    }
}

/// The dot product, in eight independent sums so that the compiler vectorises it (a single
/// running sum is a dependency chain it must keep in order).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.into_iter().map(|a| a / n).collect()
    }

    /// Top k by sorting every score: the reference for `search`.
    fn brute(ix: &[(u64, Vec<f32>)], q: &[f32], k: usize) -> Vec<(u64, f32)> {
        let mut all: Vec<(u64, f32)> = ix.iter().map(|(id, v)| (*id, dot(q, v))).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    /// The same ranking, up to rounding: equal scores rank by rank, ids where scores differ.
    fn same_ranking(got: &[(u64, f32)], want: &[(u64, f32)], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g.1 - w.1).abs() < 1e-5, "{what}: rank {i}: {g:?} {w:?}");
            let close = |j: usize| (want[j].1 - w.1).abs() < 1e-5;
            let near = (i > 0 && close(i - 1)) || (i + 1 < want.len() && close(i + 1));
            assert!(g.0 == w.0 || near, "{what}: rank {i}: {g:?} {w:?}");
        }
    }

    #[test]
    fn dot_is_the_dot_product_at_every_width() {
        for dim in [1, 7, 8, 9, 384, 385] {
            let (a, b) = (unit(1, dim), unit(2, dim));
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-5, "{dim}");
        }
    }

    #[test]
    fn search_is_exact_top_k_and_removal_swaps_rows() {
        let dim = 24;
        let mut ix = VectorIndex::new(dim);
        let mut kept: Vec<(u64, Vec<f32>)> = Vec::new();
        for id in 0..3000u64 {
            let v = unit(id + 10, dim);
            ix.add(id, 0, &v).unwrap();
            kept.push((id, v));
        }
        for id in (0..3000u64).filter(|i| i % 4 == 1) {
            assert!(ix.remove(id));
        }
        assert!(!ix.remove(1));
        kept.retain(|(id, _)| id % 4 != 1);
        assert_eq!(ix.len(), kept.len());
        for qs in 0..20 {
            let q = unit(100_000 + qs, dim);
            for k in [1, 5, 50, 5000] {
                let got = ix.search(&q, k, None);
                same_ranking(&got, &brute(&kept, &q, k), &format!("query {qs}, k {k}"));
            }
        }
        // Scores are cosines.
        let q = kept[10].1.clone();
        let hits = ix.search(&q, 1, None);
        assert_eq!(hits[0].0, kept[10].0);
        assert!((hits[0].1 - 1.0).abs() < 1e-5);
    }

    #[test]
    fn the_predicate_runs_before_ranking() {
        let mut ix = VectorIndex::new(3);
        ix.add(1, 0, &[1.0, 0.0, 0.0]).unwrap();
        ix.add(2, 0, &[0.9, 0.1, 0.0]).unwrap();
        ix.add(3, 1, &[0.0, 1.0, 0.0]).unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let not_1 = |id: u64, group: u32| {
            asked.borrow_mut().push(id);
            assert_eq!(group, u32::from(id == 3));
            id != 1
        };
        let hits = ix.search(&[1.0, 0.0, 0.0], 1, Some(&not_1));
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [2]);
        assert_eq!(asked.into_inner(), [1, 2, 3]);
    }

    #[test]
    fn bad_vectors_are_refused_and_inputs_normalised() {
        let mut ix = VectorIndex::new(3);
        assert_eq!(
            ix.add(1, 0, &[1.0, 0.0]),
            Err(VectorError::Dimension { want: 3, got: 2 })
        );
        assert_eq!(ix.add(1, 0, &[0.0, 0.0, 0.0]), Err(VectorError::Degenerate));
        assert_eq!(
            ix.add(1, 0, &[f32::NAN, 0.0, 1.0]),
            Err(VectorError::Degenerate)
        );
        ix.add(1, 0, &[3.0, 4.0, 0.0]).unwrap();
        assert_eq!(
            ix.add(1, 0, &[3.0, 4.0, 0.0]),
            Err(VectorError::Duplicate(1))
        );
        let hits = ix.search(&[6.0, 8.0, 0.0], 3, None);
        assert!((hits[0].1 - 1.0).abs() < 1e-6);
        assert!(ix.search(&[1.0, 0.0], 3, None).is_empty());
        assert!(ix.search(&[0.0, 0.0, 0.0], 3, None).is_empty());
        assert!(ix.remove(1));
        assert!(ix.is_empty());
        assert_eq!(ix.memory_bytes(), 0);
    }
}
