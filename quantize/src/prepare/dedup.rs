//! Exact and near-duplicate detection.
//!
//! Exact: the 128-bit xxh3 digest of a document's cleaned, anonymized content (roles included
//! for chats). xxh3 is not cryptographic: someone able to craft a collision could make one
//! document disappear as a "duplicate" of another, which is harmless for training data (the
//! inputs are the enterprise's own), while a 2^-128 accidental collision is not a concern.
//!
//! Near: MinHash over word shingles with locality-sensitive hashing (LSH) to find candidate pairs
//! without comparing every pair, then each candidate is confirmed by the Jaccard similarity
//! estimated from the full signatures. Documents are seen in input order and compared only with
//! the documents kept so far, so the first of a group of near-duplicates is the one kept, and
//! the result depends only on the input order.

use std::collections::{HashMap, HashSet};

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of MinHash permutations: 128 gives a Jaccard estimate with a standard error of
/// √(J(1−J)/128) ≈ 0.035 at J = 0.8, for 1 KiB of signature per kept document.
pub const PERMUTATIONS: usize = 128;

/// Words per shingle. Five words make shingles specific enough that two unrelated documents
/// rarely share many, while one changed word only touches five of them.
pub const SHINGLE_WORDS: usize = 5;

/// A MinHash signature: for each permutation, the smallest hash of any shingle.
pub type Signature = [u64; PERMUTATIONS];

/// The seed of permutation `i`: fixed, so signatures do not depend on `--seed` and the same
/// documents are always duplicates of each other. (The constant is the 64-bit golden ratio,
/// which spreads consecutive indices over the seed space.)
fn permutation_seed(i: usize) -> u64 {
    (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The shingle hashes of a text: lower-cased words (split on whitespace), taken
/// [`SHINGLE_WORDS`] at a time; a document with fewer words makes one shingle of all of them.
/// Empty for a text without words.
pub fn shingles(text: &str) -> HashSet<u64> {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    let k = SHINGLE_WORDS.min(words.len());
    let mut out = HashSet::new();
    if k == 0 {
        return out;
    }
    let mut buf = String::new();
    for window in words.windows(k) {
        buf.clear();
        for w in window {
            buf.push_str(w);
            // A separator no word contains, so ("ab", "c") and ("a", "bc") differ.
            buf.push('\u{0}');
        }
        out.insert(xxh3_64(buf.as_bytes()));
    }
    out
}

/// The MinHash signature of a set of shingle hashes; `None` for an empty set. Each permutation
/// is xxh3 of the shingle hash under its own seed.
pub fn signature(shingles: &HashSet<u64>) -> Option<Signature> {
    if shingles.is_empty() {
        return None;
    }
    let mut sig = [u64::MAX; PERMUTATIONS];
    for &s in shingles {
        let bytes = s.to_le_bytes();
        for (i, slot) in sig.iter_mut().enumerate() {
            let h = xxh3_64_with_seed(&bytes, permutation_seed(i));
            if h < *slot {
                *slot = h;
            }
        }
    }
    Some(sig)
}

/// Estimated Jaccard similarity of the sets behind two signatures: the share of permutations
/// whose minimum agrees.
pub fn estimate_jaccard(a: &Signature, b: &Signature) -> f64 {
    let same = a.iter().zip(b.iter()).filter(|(x, y)| x == y).count();
    same as f64 / PERMUTATIONS as f64
}

/// LSH banding: `bands` bands of `rows` signature rows each. Two documents become candidates
/// when all rows of at least one band agree, which for similarity `s` happens with probability
/// `1 − (1 − s^rows)^bands`: an S-curve whose steep part is near `(1/bands)^(1/rows)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Banding {
    /// Number of bands.
    pub bands: usize,
    /// Signature rows per band.
    pub rows: usize,
}

impl Banding {
    /// The banding for a threshold: among `rows` = 1‥128 with `bands` = ⌊128 / rows⌋, the one
    /// whose steep point `(1/bands)^(1/rows)` is closest to the threshold from below. Just
    /// below rather than on it: at the steep point itself only about 60% of the pairs become
    /// candidates, while a little lower pairs at the threshold are found most of the time, and
    /// the extra candidates below it are thrown out by the signature comparison. For the
    /// default 0.8 this is 12 bands × 10 rows (steep point 0.78; a pair at J = 0.8 becomes a
    /// candidate with probability 0.74, at 0.9 with 0.99, at 0.6 with 0.07).
    pub fn for_threshold(threshold: f64) -> Self {
        let mut best = Self {
            bands: PERMUTATIONS,
            rows: 1,
        };
        let mut best_point = f64::MIN;
        for rows in 1..=PERMUTATIONS {
            let bands = PERMUTATIONS / rows;
            let point = (1.0 / bands as f64).powf(1.0 / rows as f64);
            if point <= threshold && point > best_point {
                best = Self { bands, rows };
                best_point = point;
            }
        }
        best
    }

    /// Probability that two documents with Jaccard similarity `s` become candidates.
    pub fn candidate_probability(&self, s: f64) -> f64 {
        1.0 - (1.0 - s.powi(self.rows as i32)).powi(self.bands as i32)
    }
}

/// The verdict on one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: keep it.
    Keep,
    /// Same digest as a kept document.
    ExactDuplicate,
    /// Estimated Jaccard at or above the threshold with a kept document.
    NearDuplicate,
}

/// Streaming de-duplicator: feed documents in input order, keep those it says to keep.
#[derive(Debug)]
pub struct Deduplicator {
    threshold: f64,
    banding: Banding,
    digests: HashSet<u128>,
    signatures: Vec<Signature>,
    /// One bucket map per band: band hash → indices into `signatures`.
    buckets: Vec<HashMap<u64, Vec<u32>>>,
}

impl Deduplicator {
    /// A de-duplicator for a near-duplicate threshold in `(0, 1]`.
    pub fn new(threshold: f64) -> Self {
        let banding = Banding::for_threshold(threshold);
        Self {
            threshold,
            banding,
            digests: HashSet::new(),
            signatures: Vec::new(),
            buckets: vec![HashMap::new(); banding.bands],
        }
    }

    /// The banding in use.
    pub fn banding(&self) -> Banding {
        self.banding
    }

    /// Judges a document by its content digest and its text for shingling, and remembers it when
    /// it is kept. A text without words is only checked for exact duplicates.
    pub fn check(&mut self, digest: u128, text: &str) -> Verdict {
        if self.digests.contains(&digest) {
            return Verdict::ExactDuplicate;
        }
        let Some(sig) = signature(&shingles(text)) else {
            self.digests.insert(digest);
            return Verdict::Keep;
        };
        let keys: Vec<u64> = (0..self.banding.bands)
            .map(|b| {
                let rows = &sig[b * self.banding.rows..(b + 1) * self.banding.rows];
                let bytes: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
                xxh3_64(&bytes)
            })
            .collect();
        let mut candidates: Vec<u32> = keys
            .iter()
            .zip(&self.buckets)
            .filter_map(|(k, bucket)| bucket.get(k))
            .flatten()
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let near = candidates
            .iter()
            .any(|&c| estimate_jaccard(&self.signatures[c as usize], &sig) >= self.threshold);
        // The digest is remembered either way, so a later exact copy of a dropped
        // near-duplicate counts as an exact duplicate.
        self.digests.insert(digest);
        if near {
            return Verdict::NearDuplicate;
        }
        let index = u32::try_from(self.signatures.len()).expect("fewer than 2^32 documents");
        for (k, bucket) in keys.into_iter().zip(&mut self.buckets) {
            bucket.entry(k).or_default().push(index);
        }
        self.signatures.push(sig);
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banding_for_default_threshold() {
        let b = Banding::for_threshold(0.8);
        assert_eq!((b.bands, b.rows), (12, 10));
        assert!(b.candidate_probability(0.9) > 0.99);
        assert!(b.candidate_probability(0.5) < 0.02);
    }

    #[test]
    fn short_texts_use_shorter_shingles() {
        assert_eq!(shingles("one two").len(), 1);
        assert_eq!(shingles("a b c d e f").len(), 2);
        assert!(shingles("   ").is_empty());
    }
}
