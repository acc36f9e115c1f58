//! Reciprocal rank fusion (Cormack, Clarke and Büttcher, 2009) of ranked lists, and the search
//! modes that use it.
//!
//! A key ranked `r` (from 1) in a list earns `1 / (k + r)` from it, with `k` = [`RRF_K`] = 60,
//! the paper's constant; its fused score is the sum over the lists. Only ranks count, so BM25
//! scores and cosines need no common scale. The sum is divided by its greatest possible value,
//! `lists / (k + 1)`: a fused score of 1 means "first in every list", ½ with two lists "first in
//! one, absent from the other".

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::Hash;

/// RRF's rank constant.
pub const RRF_K: f32 = 60.0;

/// How a search ranks chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// BM25 over the chunks' text alone.
    Bm25,
    /// Similarity of the chunks' vectors to the query's alone.
    Vector,
    /// Both lists fused by reciprocal rank fusion.
    #[default]
    Hybrid,
}

/// Fuses ranked lists (each best first, each key at most once per list) into one, best first,
/// ties by key; scores normalised to 0..1 as the module says. A key in no list is absent.
pub fn rrf<K: Copy + Eq + Hash + Ord>(lists: &[&[K]], k: f32) -> Vec<(K, f32)> {
    let mut sums: HashMap<K, f32> = HashMap::new();
    for list in lists {
        for (i, key) in list.iter().enumerate() {
            *sums.entry(*key).or_default() += 1.0 / (k + i as f32 + 1.0);
        }
    }
    let best = lists.len().max(1) as f32 / (k + 1.0);
    let mut out: Vec<(K, f32)> = sums.into_iter().map(|(key, s)| (key, s / best)).collect();
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_sums_reciprocal_ranks_and_normalises() {
        let a = [1u64, 2, 3];
        let b = [3u64, 1, 4];
        let fused = rrf(&[&a, &b], RRF_K);
        let score = |key: u64| fused.iter().find(|f| f.0 == key).unwrap().1;
        let norm = 2.0 / 61.0;
        assert!((score(1) - (1.0 / 61.0 + 1.0 / 62.0) / norm).abs() < 1e-6);
        assert!((score(3) - (1.0 / 63.0 + 1.0 / 61.0) / norm).abs() < 1e-6);
        assert!((score(2) - (1.0 / 62.0) / norm).abs() < 1e-6);
        assert!((score(4) - (1.0 / 63.0) / norm).abs() < 1e-6);
        assert_eq!(fused.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 3, 2, 4]);
        // First in both: exactly 1.
        let fused = rrf(&[&[7u64, 8][..], &[7u64][..]], RRF_K);
        assert_eq!(fused[0], (7, 1.0));
        // First in one of two, absent from the other: one half.
        let fused = rrf(&[&[7u64][..], &[][..]], RRF_K);
        assert_eq!(fused, [(7, 0.5)]);
        assert!(rrf::<u64>(&[], RRF_K).is_empty());
    }

    #[test]
    fn equal_scores_order_by_key() {
        let fused = rrf(&[&[5u64, 9][..], &[9u64, 5][..]], RRF_K);
        assert_eq!(fused.iter().map(|f| f.0).collect::<Vec<_>>(), [5, 9]);
        assert_eq!(fused[0].1, fused[1].1);
    }

    #[test]
    fn modes_read_lowercase() {
        assert_eq!(
            serde_json::from_str::<Mode>("\"bm25\"").unwrap(),
            Mode::Bm25
        );
        assert_eq!(
            serde_json::from_str::<Mode>("\"hybrid\"").unwrap(),
            Mode::Hybrid
        );
        assert_eq!(Mode::default(), Mode::Hybrid);
    }
}
