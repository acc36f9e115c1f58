//! BM25 (k1 = 1.2, b = 0.75) over the chunks of one collection: an inverted index with removal.
//!
//! Terms come from [`tokenize`]: lowercased, split on every character that is not alphanumeric
//! (Unicode's notion, so `Größe`, `東京` and `2024` are terms), numbers kept. The one stemming
//! step is cheap and English: Harman's "S" stemmer folds plurals (`policies` → `policy`,
//! `invoices` → `invoice`, `days` → `day`), on ASCII words of four letters or more; anything else
//! is left as written. Terms longer than [`MAX_TERM_CHARS`] (hashes, base64) are not indexed.
//!
//! Statistics (the number of chunks, their mean length, each term's document frequency) are the
//! collection's own, never pooled with another collection's: a collection the caller may not read
//! must not change the caller's scores. Within a collection every chunk counts, including those
//! an attribute filter excludes from a search (filters select, they do not protect).
//!
//! Searching takes a candidate predicate that is applied before a chunk is scored: a chunk it
//! refuses is never scored and never takes a place in the top k.
//!
//! Removal marks the chunk's slot dead and takes its terms off the statistics at once (exact
//! scores right after a removal); the posting lists are compacted when a quarter of the slots
//! are dead, so removal is amortised O(terms of the chunk).

use std::collections::HashMap;

/// BM25's term-frequency saturation.
pub const K1: f32 = 1.2;
/// BM25's length normalisation.
pub const B: f32 = 0.75;
/// Longer terms are not indexed (nor searched).
pub const MAX_TERM_CHARS: usize = 64;

/// The terms of `text`, in order (see the module's rules).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut term = String::new();
    let mut chars = 0usize;
    let mut flush = |term: &mut String, chars: &mut usize| {
        if !term.is_empty() && *chars <= MAX_TERM_CHARS {
            out.push(stem(std::mem::take(term)));
        }
        term.clear();
        *chars = 0;
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            for l in c.to_lowercase() {
                term.push(l);
            }
            chars += 1;
        } else {
            flush(&mut term, &mut chars);
        }
    }
    flush(&mut term, &mut chars);
    out
}

/// Harman's "S" stemmer (1991), on ASCII-letter words of four letters or more, each rule's
/// exceptions leaving the word as it is: `-ies` → `-y` (but `-aies`, `-eies` stay), `-es` →
/// `-e` (but `-aes`, `-ees`, `-oes` stay), `-s` → `` (but `-us`, `-ss` stay).
fn stem(mut w: String) -> String {
    if w.len() < 4
        || !w.bytes().all(|b| b.is_ascii_lowercase())
        || !w.ends_with('s')
        || w.ends_with("us")
        || w.ends_with("ss")
    {
        return w;
    }
    if w.ends_with("ies") {
        if !w.ends_with("aies") && !w.ends_with("eies") {
            w.truncate(w.len() - 3);
            w.push('y');
        }
        return w;
    }
    if !w.ends_with("aes") && !w.ends_with("ees") && !w.ends_with("oes") {
        // `-es` → `-e` and `-s` → `` both drop the final s.
        w.pop();
    }
    w
}

/// A posting: a slot (24 bits) and the term's frequency in it (8 bits, saturated at 255: BM25's
/// tf term is within 0.5 % of its limit by then).
#[derive(Debug, Clone, Copy)]
struct Posting(u32);

const SLOT_BITS: u32 = 24;
const MAX_SLOTS: usize = 1 << SLOT_BITS;

impl Posting {
    fn new(slot: u32, tf: u32) -> Self {
        Posting(slot | (tf.min(255) << SLOT_BITS))
    }
    fn slot(self) -> u32 {
        self.0 & ((1 << SLOT_BITS) - 1)
    }
    fn tf(self) -> u32 {
        self.0 >> SLOT_BITS
    }
}

/// One chunk's place.
#[derive(Debug, Clone)]
struct Slot {
    id: u64,
    /// The caller's group (the chunk's file), which the candidate predicate sees.
    group: u32,
    /// Terms in the chunk (its length for BM25); [`DEAD`] once removed.
    len: u32,
}

/// The `len` of a removed chunk's slot.
const DEAD: u32 = u32::MAX;

/// A term: its postings (dead slots included until compaction) and its live document
/// frequency.
#[derive(Debug, Clone, Default)]
struct Term {
    postings: Vec<Posting>,
    df: u32,
}

/// The BM25 index of one collection.
#[derive(Debug, Clone, Default)]
pub struct Bm25Index {
    terms: HashMap<String, Term>,
    slots: Vec<Slot>,
    slot_of: IdMap<u32>,
    live: usize,
    dead: usize,
    total_len: u64,
}

/// Why a chunk was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Bm25Error {
    /// The id is already indexed.
    #[error("chunk {0} is already indexed")]
    Duplicate(u64),
    /// The index holds 2^24 slots (about 16.7 million chunks).
    #[error("the collection's text index is full ({MAX_SLOTS} chunks)")]
    Full,
}

impl Bm25Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chunks indexed.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no chunk is indexed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether `id` is indexed.
    pub fn contains(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

    /// Indexes chunk `id` of `group` (the caller's grouping, e.g. its file; the candidate
    /// predicate of [`Bm25Index::search`] sees it) with `text`.
    pub fn add(&mut self, id: u64, group: u32, text: &str) -> Result<(), Bm25Error> {
        if self.slot_of.contains_key(&id) {
            return Err(Bm25Error::Duplicate(id));
        }
        if self.slots.len() >= MAX_SLOTS {
            self.compact();
            if self.slots.len() >= MAX_SLOTS {
                return Err(Bm25Error::Full);
            }
        }
        let slot = self.slots.len() as u32;
        let mut terms = tokenize(text);
        let len = terms.len().min(DEAD as usize - 1) as u32;
        // Sorted, equal terms are runs: their lengths are the frequencies, and the index's map
        // is asked once per distinct term.
        terms.sort_unstable();
        let mut rest = &mut terms[..];
        while let Some(first) = rest.first() {
            let tf = rest.iter().take_while(|t| *t == first).count();
            let (run, tail) = rest.split_at_mut(tf);
            let posting = Posting::new(slot, tf as u32);
            match self.terms.get_mut(run[0].as_str()) {
                Some(term) => {
                    term.postings.push(posting);
                    term.df += 1;
                }
                None => {
                    self.terms.insert(
                        std::mem::take(&mut run[0]),
                        Term {
                            postings: vec![posting],
                            df: 1,
                        },
                    );
                }
            }
            rest = tail;
        }
        self.slots.push(Slot { id, group, len });
        self.slot_of.insert(id, slot);
        self.live += 1;
        self.total_len += len as u64;
        Ok(())
    }

    /// Removes chunk `id`, which was added with `text` (the same text: its terms are taken off
    /// the statistics). Returns whether it was indexed.
    pub fn remove(&mut self, id: u64, text: &str) -> bool {
        let Some(slot) = self.slot_of.remove(&id) else {
            return false;
        };
        let mut terms = tokenize(text);
        terms.sort_unstable();
        terms.dedup();
        for t in terms {
            if let Some(term) = self.terms.get_mut(&t) {
                term.df = term.df.saturating_sub(1);
                if term.df == 0 {
                    // Every posting left is a dead slot's.
                    self.terms.remove(&t);
                }
            }
        }
        let s = &mut self.slots[slot as usize];
        self.total_len -= s.len as u64;
        s.len = DEAD;
        self.live -= 1;
        self.dead += 1;
        if self.live == 0 {
            *self = Bm25Index::default();
        } else if self.dead * 4 > self.slots.len() {
            self.compact();
        }
        true
    }

    /// Drops dead slots and their postings, renumbering the live ones.
    fn compact(&mut self) {
        let mut renumber = vec![u32::MAX; self.slots.len()];
        let mut slots = Vec::with_capacity(self.live);
        for (i, s) in self.slots.iter().enumerate() {
            if s.len != DEAD {
                renumber[i] = slots.len() as u32;
                slots.push(s.clone());
            }
        }
        for term in self.terms.values_mut() {
            term.postings
                .retain(|p| renumber[p.slot() as usize] != u32::MAX);
            for p in &mut term.postings {
                *p = Posting::new(renumber[p.slot() as usize], p.tf());
            }
            term.postings.shrink_to_fit();
        }
        for slot in self.slot_of.values_mut() {
            *slot = renumber[*slot as usize];
        }
        self.slots = slots;
        self.dead = 0;
    }

    /// The `k` best chunks for `query` among those `candidate` accepts (all when `None`; it is
    /// given a chunk's id and group), best first, ties by id; with their BM25 scores normalised
    /// by [`Bm25Index::ceiling`], so in 0..1. A chunk that shares no term with the query is not
    /// a hit.
    pub fn search(
        &self,
        query: &str,
        k: usize,
        candidate: Option<&dyn Fn(u64, u32) -> bool>,
    ) -> Vec<(u64, f32)> {
        if k == 0 || self.live == 0 {
            return Vec::new();
        }
        let terms = query_terms(query);
        let ceiling = self.ceiling_of(&terms);
        let n = self.live as f32;
        let avg = self.total_len as f32 / n;
        let mut scores = vec![0f32; self.slots.len()];
        let mut touched: Vec<u32> = Vec::new();
        // 0 not asked yet, 1 a candidate, 2 not one: the predicate is asked once per slot.
        let mut verdict = vec![
            0u8;
            if candidate.is_some() {
                self.slots.len()
            } else {
                0
            }
        ];
        for t in &terms {
            let Some(term) = self.terms.get(t) else {
                continue;
            };
            let idf = idf(n, term.df as f32);
            for p in &term.postings {
                let slot = p.slot() as usize;
                let s = &self.slots[slot];
                if s.len == DEAD {
                    continue;
                }
                if let Some(accept) = candidate {
                    if verdict[slot] == 0 {
                        verdict[slot] = if accept(s.id, s.group) { 1 } else { 2 };
                    }
                    if verdict[slot] == 2 {
                        continue;
                    }
                }
                let tf = p.tf() as f32;
                let norm = K1 * (1.0 - B + B * s.len as f32 / avg);
                if scores[slot] == 0.0 {
                    touched.push(slot as u32);
                }
                scores[slot] += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        let mut hits: Vec<(u64, f32)> = touched
            .into_iter()
            .map(|slot| {
                (
                    self.slots[slot as usize].id,
                    scores[slot as usize] / ceiling,
                )
            })
            .collect();
        top_k(&mut hits, k);
        hits
    }

    /// The most a chunk could score for `query`: the sum over its distinct terms of
    /// `idf × (k1 + 1)` (every term with an unbounded frequency), a term the collection lacks
    /// weighing as one in no chunk. Scores divided by it lie in 0..1 and read as "the share of
    /// the query's attainable weight this chunk has", comparable across collections.
    pub fn ceiling(&self, query: &str) -> f32 {
        self.ceiling_of(&query_terms(query))
    }

    fn ceiling_of(&self, terms: &[String]) -> f32 {
        let n = self.live as f32;
        let sum: f32 = terms
            .iter()
            .map(|t| idf(n, self.terms.get(t).map_or(0.0, |t| t.df as f32)) * (K1 + 1.0))
            .sum();
        sum.max(f32::MIN_POSITIVE)
    }

    /// Gives back spare capacity (after a bulk build: vectors grow by doubling).
    pub fn shrink_to_fit(&mut self) {
        for term in self.terms.values_mut() {
            term.postings.shrink_to_fit();
        }
        self.terms.shrink_to_fit();
        self.slots.shrink_to_fit();
        self.slot_of.shrink_to_fit();
    }

    /// Approximate heap bytes: postings, terms, slots and the id map.
    pub fn memory_bytes(&self) -> usize {
        let term_bytes: usize = self
            .terms
            .iter()
            .map(|(t, v)| t.capacity() + v.postings.capacity() * std::mem::size_of::<Posting>())
            .sum();
        term_bytes
            + hash_map_bytes::<String, Term>(self.terms.capacity())
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + hash_map_bytes::<u64, u32>(self.slot_of.capacity())
    }
}

/// The distinct terms of a query, in order.
fn query_terms(query: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    tokenize(query)
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

/// BM25's idf, Lucene's variant (never negative): ln(1 + (N − df + ½) / (df + ½)).
fn idf(n: f32, df: f32) -> f32 {
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// Keeps the `k` best of `hits` (score descending, then id ascending), sorted.
pub(crate) fn top_k(hits: &mut Vec<(u64, f32)>, k: usize) {
    let order = |a: &(u64, f32), b: &(u64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if hits.len() > k {
        hits.select_nth_unstable_by(k - 1, order);
        hits.truncate(k);
    }
    hits.sort_unstable_by(order);
}

/// A hasher for chunk ids, which are ours (storage row ids), not an attacker's: a multiply and
/// a shift instead of SipHash, which dominated the candidate checks of a filtered search.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b) ^ self.0.rotate_left(8));
        }
    }
    fn write_u64(&mut self, x: u64) {
        // Fibonacci hashing, the high half folded into the low bits hashbrown uses too.
        let h = (x ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

/// A map keyed by chunk id.
pub(crate) type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Approximate heap bytes of a `HashMap<K, V>` with this capacity (hashbrown: one control byte
/// per bucket, buckets a power of two above capacity × 8/7).
pub(crate) fn hash_map_bytes<K, V>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (std::mem::size_of::<(K, V)>() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokenizer_lowercases_splits_keeps_numbers_and_folds_plurals() {
        assert_eq!(
            tokenize("The VPN-Policy (v2.1) covers 30 days; policies & invoices!"),
            ["the", "vpn", "policy", "v2", "1", "cover", "30", "day", "policy", "invoice"]
        );
        assert_eq!(
            tokenize("Größe STRASSE 東京 Ærø"),
            ["größe", "strasse", "東京", "ærø"]
        );
        assert_eq!(
            tokenize("bus glass status gas"),
            ["bus", "glass", "status", "gas"]
        );
        assert_eq!(
            tokenize("shoes goes toes fees"),
            ["shoes", "goes", "toes", "fees"]
        );
        assert_eq!(tokenize(&"x".repeat(65)), Vec::<String>::new());
        assert_eq!(tokenize(&"x".repeat(64)).len(), 1);
        assert!(tokenize("  ,;  ").is_empty());
    }

    /// BM25 by the book, for one document of `doc` terms in a collection.
    fn by_hand(tf: f32, len: f32, avg: f32, n: f32, df: f32) -> f32 {
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg))
    }

    #[test]
    fn scores_are_bm25_normalised_by_the_ceiling() {
        let mut ix = Bm25Index::new();
        ix.add(1, 0, "apple banana apple").unwrap();
        ix.add(2, 0, "banana cherry").unwrap();
        ix.add(3, 0, "cherry date elderberry fig").unwrap();
        let hits = ix.search("apple", 10, None);
        assert_eq!(hits.len(), 1);
        let (n, avg) = (3.0, 9.0 / 3.0);
        let raw = by_hand(2.0, 3.0, avg, n, 1.0);
        let ceiling = (1.0f32 + (n - 1.0 + 0.5) / 1.5).ln() * (K1 + 1.0);
        assert!((hits[0].1 - raw / ceiling).abs() < 1e-6, "{hits:?}");
        assert!((ix.ceiling("apple") - ceiling).abs() < 1e-6);
        // Two terms: sums; rarer terms weigh more.
        let hits = ix.search("banana cherry", 10, None);
        assert_eq!(hits[0].0, 2, "both terms");
        let raw2 = by_hand(1.0, 2.0, avg, n, 2.0) * 2.0;
        assert!((hits[0].1 * ix.ceiling("banana cherry") - raw2).abs() < 1e-5);
        assert!(hits.iter().all(|h| h.1 > 0.0 && h.1 < 1.0));
        // A repeated query term counts once; unknown terms count in the ceiling only.
        assert_eq!(ix.search("banana banana cherry", 10, None), hits);
        assert!(ix.search("apple zebra", 1, None)[0].1 < ix.search("apple", 1, None)[0].1);
        assert!(ix.search("zebra", 10, None).is_empty());
        assert!(ix.search("", 10, None).is_empty());
        assert!(ix.search("apple", 0, None).is_empty());
    }

    #[test]
    fn ties_break_by_id_and_k_cuts() {
        let mut ix = Bm25Index::new();
        for id in [5, 3, 9, 1] {
            ix.add(id, 0, "same words here").unwrap();
        }
        let ids: Vec<u64> = ix.search("words", 10, None).iter().map(|h| h.0).collect();
        assert_eq!(ids, [1, 3, 5, 9]);
        let ids: Vec<u64> = ix.search("words", 2, None).iter().map(|h| h.0).collect();
        assert_eq!(ids, [1, 3]);
    }

    #[test]
    fn the_predicate_runs_before_ranking() {
        let mut ix = Bm25Index::new();
        // The best match for "secret" is chunk 1, which the caller may not see.
        ix.add(1, 7, "secret secret secret plan").unwrap();
        ix.add(2, 8, "the secret of a good plan is a plan").unwrap();
        ix.add(3, 8, "nothing to see").unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let only_2_3 = |id: u64, group: u32| {
            asked.borrow_mut().push(id);
            assert_eq!(group, if id == 1 { 7 } else { 8 });
            id != 1
        };
        let hits = ix.search("secret plan", 1, Some(&only_2_3));
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0, 2, "the best readable chunk takes the one place");
        let mut asked = asked.into_inner();
        asked.sort();
        assert_eq!(asked, [1, 2], "asked once per matching chunk");
        assert!(ix.search("secret", 5, Some(&|id, _| id == 3)).is_empty());
    }

    #[test]
    fn removal_is_exact_and_compaction_keeps_results() {
        // An index with chunks added and removed scores as one built from the survivors.
        let text = |i: u64| {
            format!(
                "term{} common words {} shared",
                i % 7,
                "filler ".repeat((i % 5) as usize)
            )
        };
        let mut ix = Bm25Index::new();
        for i in 0..200 {
            ix.add(i, 0, &text(i)).unwrap();
        }
        assert_eq!(ix.add(3, 0, "again"), Err(Bm25Error::Duplicate(3)));
        for i in (0..200).filter(|i| i % 3 != 0) {
            assert!(ix.remove(i, &text(i)));
        }
        assert!(!ix.remove(1, &text(1)));
        let mut fresh = Bm25Index::new();
        for i in (0..200).filter(|i| i % 3 == 0) {
            fresh.add(i, 0, &text(i)).unwrap();
        }
        assert_eq!(ix.len(), fresh.len());
        for q in [
            "term3 shared",
            "common filler",
            "term0",
            "words term6 filler",
        ] {
            let a = ix.search(q, 20, None);
            let b = fresh.search(q, 20, None);
            assert_eq!(a.len(), b.len(), "{q}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.0, y.0, "{q}");
                assert!((x.1 - y.1).abs() < 1e-5, "{q}: {x:?} {y:?}");
            }
        }
        // Removed ids can come back.
        ix.add(1, 0, "term1 again").unwrap();
        assert_eq!(ix.search("again", 5, None)[0].0, 1);
        // Emptied, the index is as new.
        for i in (0..200).filter(|i| i % 3 == 0) {
            ix.remove(i, &text(i));
        }
        ix.remove(1, "term1 again");
        assert!(ix.is_empty());
        assert_eq!(ix.memory_bytes(), 0);
    }

    #[test]
    fn postings_saturate_term_frequency() {
        let mut ix = Bm25Index::new();
        ix.add(1, 0, &"word ".repeat(1000)).unwrap();
        ix.add(2, 0, "word other").unwrap();
        let hits = ix.search("word", 2, None);
        assert_eq!(hits.len(), 2);
        assert!(hits
            .iter()
            .all(|h| h.1.is_finite() && h.1 > 0.0 && h.1 < 1.0));
    }
}
