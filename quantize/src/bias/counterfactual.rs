//! Counterfactual data augmentation: a copy of a record with each word of a pair replaced by its
//! counterpart ("He thanked his wife" → "She thanked her husband").
//!
//! The pairs come from quantize/data/counterfactual_pairs.txt (its header documents the format).
//! Two things need more than a lookup:
//!
//! - **Case** is carried from each occurrence to its replacement: all capitals (two letters or
//!   more) → all capitals, a capital first letter → a capital first letter, otherwise the
//!   list's lowercase. "HE" → "SHE", "He" → "She", "he" → "she".
//! - **Grammar**: "her" is a possessive before a noun ("her report" → "his report") and an
//!   object elsewhere ("thanked her." → "thanked him."); "his" is a possessive before a noun
//!   ("his report" → "her report") and stands alone elsewhere ("the book is his." → "the book
//!   is hers."). A list line marked `+` applies before a noun or adjective; the decision is made
//!   by [`before_noun`] from the next word: it must follow after whitespace only and not be one
//!   of [`FUNCTION_WORDS`]. This is a heuristic and says so: in "gave her flowers" the next word
//!   is a noun, so the copy reads "gave his flowers".
//!
//! Round trips: swapping twice gives the original text back for every pair written `a | b`
//! without `+`, and for "her"/"his"/"him"/"hers" whenever the word after them decides the same
//! way in both directions ("her report", "thanked him.", "is his."); it does not for one-way
//! pairs (`mrs -> mr` comes back as "ms") or for an object before a noun-like word ("gave him
//! flowers" → "gave her flowers" → "gave his flowers").

use std::collections::HashMap;
use std::path::Path;

use super::{read_list, words, ListError, Word, BUILTIN};

/// The built-in pairs (quantize/data/counterfactual_pairs.txt).
const BUILTIN_PAIRS: &str = include_str!("../../data/counterfactual_pairs.txt");

/// Words that, following "her" or "his", show it is not a possessive before a noun: articles and
/// other determiners, prepositions and particles, conjunctions, pronouns, auxiliaries, and a few
/// verbs and adverbs that follow an object ("let her go", "told her again"). Words that are
/// often nouns after a possessive ("work", "home", "help", "start") are left out on purpose.
/// Sorted, for a binary search (a test checks it).
#[rustfmt::skip]
pub const FUNCTION_WORDS: &[&str] = &[
    "a", "about", "across", "after", "again", "against", "all", "alone", "along", "also",
    "although", "am", "an", "and", "any", "anybody", "anyone", "anything", "anyway", "are",
    "around", "as", "at", "away", "back", "be", "because", "been", "before", "behind", "being",
    "between", "both", "but", "by", "can", "come", "could", "cry", "decide", "did", "directly",
    "do", "does", "down", "during", "each", "eat", "enough", "every", "everybody", "everyone",
    "everything", "feel", "for", "from", "get", "give", "go", "had", "has", "have", "he", "her",
    "here", "herself", "him", "himself", "his", "how", "i", "if", "immediately", "in", "instead",
    "into", "is", "it", "its", "itself", "know", "later", "laugh", "leave", "like", "make", "may",
    "me", "might", "much", "must", "my", "myself", "no", "nor", "not", "nothing", "now", "of",
    "off", "on", "once", "onto", "or", "our", "ourselves", "out", "over", "personally", "see",
    "shall", "she", "should", "since", "so", "some", "somebody", "someone", "something", "soon",
    "speak", "stay", "take", "tell", "than", "that", "the", "their", "them", "themselves", "then",
    "there", "these", "they", "think", "this", "those", "though", "through", "to", "today",
    "tomorrow", "tonight", "too", "toward", "towards", "twice", "under", "understand", "unless",
    "until", "up", "us", "wait", "was", "we", "were", "what", "when", "where", "whereas",
    "whether", "which", "while", "who", "whom", "whose", "why", "will", "with", "within",
    "without", "would", "yesterday", "yet", "you", "your", "yourself",
];

/// The counterfactual word pairs: word → its counterpart(s).
#[derive(Debug, Clone)]
pub struct Pairs {
    /// Where the pairs come from: a path, or [`BUILTIN`].
    source: String,
    /// Pair lines read.
    lines: usize,
    map: HashMap<String, Swap>,
}

/// The counterparts of one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Swap {
    /// Elsewhere (a line side without `+`).
    plain: Option<String>,
    /// Before a noun or an adjective (a line side with `+`).
    before_noun: Option<String>,
}

impl Swap {
    fn pick(&self, before_noun: bool) -> &str {
        let (first, second) = if before_noun {
            (&self.before_noun, &self.plain)
        } else {
            (&self.plain, &self.before_noun)
        };
        first
            .as_deref()
            .or(second.as_deref())
            .expect("a swap has at least one counterpart")
    }
}

impl Pairs {
    /// The built-in pairs (quantize/data/counterfactual_pairs.txt, compiled in).
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_PAIRS, BUILTIN).expect("the built-in pairs parse (unit-tested)")
    }

    /// Reads a pair file in the format of quantize/data/counterfactual_pairs.txt.
    pub fn load(path: &Path) -> Result<Self, ListError> {
        Self::parse(&read_list(path)?, &path.display().to_string())
    }

    /// Parses pairs: `a | b` (both ways) and `a -> b` (one way) lines, a side ending in `+`
    /// applying before a noun; `#` starts a comment, `[section]` lines are ignored. `source`
    /// names the pairs in errors and reports.
    pub fn parse(text: &str, source: &str) -> Result<Self, ListError> {
        let invalid = |line: usize, message: String| ListError::Invalid {
            list: source.to_string(),
            line,
            message,
        };
        let mut map: HashMap<String, Swap> = HashMap::new();
        let mut lines = 0;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() || (line.starts_with('[') && line.ends_with(']')) {
                continue;
            }
            let (left, right, both) = if let Some((l, r)) = line.split_once("->") {
                (l, r, false)
            } else if let Some((l, r)) = line.split_once('|') {
                (l, r, true)
            } else {
                return Err(invalid(
                    n,
                    format!("expected `a | b` or `a -> b`, got {line:?}"),
                ));
            };
            let left = side(left).map_err(|m| invalid(n, m))?;
            let right = side(right).map_err(|m| invalid(n, m))?;
            if left.0 == right.0 {
                return Err(invalid(n, format!("{:?} is paired with itself", left.0)));
            }
            let mut add = |(from, noun): &(String, bool), to: &str| -> Result<(), ListError> {
                let swap = map.entry(from.clone()).or_default();
                let slot = if *noun {
                    &mut swap.before_noun
                } else {
                    &mut swap.plain
                };
                match slot {
                    Some(old) if old != to => Err(invalid(
                        n,
                        format!(
                            "{from:?}{} already goes to {old:?}; a word has one counterpart per \
                             context (mark one side with + for before a noun)",
                            if *noun { "+" } else { "" }
                        ),
                    )),
                    _ => {
                        *slot = Some(to.to_string());
                        Ok(())
                    }
                }
            };
            add(&left, &right.0)?;
            if both {
                add(&right, &left.0)?;
            }
            lines += 1;
        }
        if lines == 0 {
            return Err(invalid(0, "no pairs in the list".into()));
        }
        Ok(Self {
            source: source.to_string(),
            lines,
            map,
        })
    }

    /// Where the pairs come from: the file's path, or [`BUILTIN`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The number of pair lines.
    pub fn len(&self) -> usize {
        self.lines
    }

    /// Whether there are no pairs (never true for a parsed list).
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The counterparts of a lowercase word: elsewhere and before a noun (the same word when
    /// the context does not matter); `None` when it is in no pair.
    pub fn counterparts(&self, word: &str) -> Option<(&str, &str)> {
        self.map.get(word).map(|s| (s.pick(false), s.pick(true)))
    }
}

/// One side of a pair line: a lowercase word of letters, optionally followed by `+`.
fn side(s: &str) -> Result<(String, bool), String> {
    let s = s.trim();
    let (word, noun) = match s.strip_suffix('+') {
        Some(w) => (w.trim_end(), true),
        None => (s, false),
    };
    if word.is_empty() || !word.chars().all(char::is_alphabetic) {
        return Err(format!("{s:?}: a pair side is one word of letters"));
    }
    if word.to_lowercase() != word {
        return Err(format!(
            "{word:?}: write words in lowercase (the case of the text is kept)"
        ));
    }
    Ok((word.to_string(), noun))
}

/// The text with every word of a pair replaced by its counterpart, or `None` when no word of
/// `text` is in a pair. Everything between the words (spacing, punctuation, apostrophes, line
/// breaks) is kept byte for byte.
pub fn counterfactual(text: &str, pairs: &Pairs) -> Option<String> {
    let ws = words(text);
    let mut out = String::with_capacity(text.len() + 16);
    let mut last = 0;
    let mut changed = false;
    for (k, w) in ws.iter().enumerate() {
        let Some(swap) = pairs.map.get(&w.lower) else {
            continue;
        };
        let target = swap.pick(before_noun(text, &ws, k));
        out.push_str(&text[last..w.start]);
        out.push_str(&with_case_of(&text[w.start..w.end], target));
        last = w.end;
        changed = true;
    }
    if !changed {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// [`counterfactual`] applied to each text of one record (a chat record's messages), or `None`
/// when none of them changes; texts without a pair word are copied as they are.
pub fn counterfactual_texts<'t>(
    texts: impl IntoIterator<Item = &'t str>,
    pairs: &Pairs,
) -> Option<Vec<String>> {
    let mut changed = false;
    let out = texts
        .into_iter()
        .map(|t| match counterfactual(t, pairs) {
            Some(s) => {
                changed = true;
                s
            }
            None => t.to_string(),
        })
        .collect();
    changed.then_some(out)
}

/// Whether word `k` stands before a noun or an adjective: the next word follows after whitespace
/// only (no punctuation, not the end) and is not a [`FUNCTION_WORDS`] entry.
pub(crate) fn before_noun(text: &str, ws: &[Word], k: usize) -> bool {
    let Some(next) = ws.get(k + 1) else {
        return false;
    };
    text[ws[k].end..next.start].chars().all(char::is_whitespace)
        && FUNCTION_WORDS.binary_search(&next.lower.as_str()).is_err()
}

/// `target` (lowercase) in the case of `source`: all capitals when `source` has two letters or
/// more and no lowercase one, a capital first letter when `source` starts with one.
fn with_case_of(source: &str, target: &str) -> String {
    let letters = source.chars().filter(|c| c.is_alphabetic()).count();
    if letters >= 2 && !source.chars().any(char::is_lowercase) {
        return target.to_uppercase();
    }
    if source.chars().next().is_some_and(char::is_uppercase) {
        let mut chars = target.chars();
        return match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => String::new(),
        };
    }
    target.to_string()
}

#[cfg(test)]
mod tests {
    use super::super::terms::Lexicon;
    use super::*;

    fn cf(text: &str) -> String {
        counterfactual(text, &Pairs::builtin()).unwrap_or_else(|| panic!("no swap in {text:?}"))
    }

    #[test]
    fn function_words_are_sorted_and_unique() {
        assert!(FUNCTION_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_builtin_pairs_parse() {
        let pairs = Pairs::builtin();
        assert_eq!(pairs.source(), BUILTIN);
        assert!(pairs.len() > 80, "{}", pairs.len());
        assert_eq!(pairs.counterparts("her"), Some(("him", "his")));
        assert_eq!(pairs.counterparts("his"), Some(("hers", "her")));
        assert_eq!(pairs.counterparts("him"), Some(("her", "her")));
        assert_eq!(pairs.counterparts("hers"), Some(("his", "his")));
        assert_eq!(pairs.counterparts("mrs"), Some(("mr", "mr")));
        assert_eq!(pairs.counterparts("mr"), Some(("ms", "ms")));
        assert_eq!(pairs.counterparts("the"), None);
    }

    /// Every gender term of the built-in lexicon has a counterpart in the other group, so
    /// augmentation balances the gender axis exactly.
    #[test]
    fn every_gender_term_swaps_to_the_other_group() {
        let lexicon = Lexicon::builtin();
        let pairs = Pairs::builtin();
        let female = lexicon.terms("gender", "female");
        let male = lexicon.terms("gender", "male");
        for (terms, other) in [(&female, &male), (&male, &female)] {
            for term in terms.iter() {
                let (plain, noun) = pairs
                    .counterparts(term)
                    .unwrap_or_else(|| panic!("gender term {term:?} has no pair"));
                for t in [plain, noun] {
                    assert!(
                        other.contains(&t),
                        "{term:?} -> {t:?}, not in the other group"
                    );
                }
            }
        }
    }

    #[test]
    fn each_shipped_word_pair_swaps_both_ways() {
        let text = include_str!("../../data/counterfactual_pairs.txt");
        let mut checked = 0;
        for line in text.lines() {
            let line = line.split('#').next().unwrap().trim();
            let Some((a, b)) = line.split_once('|') else {
                continue;
            };
            if line.contains('+') || ["his", "him", "her", "hers"].contains(&a.trim()) {
                continue; // context-dependent: tested below
            }
            let (a, b) = (a.trim(), b.trim());
            // In a sentence, lowercase and capitalised.
            assert_eq!(
                cf(&format!("we met the {a} today")),
                format!("we met the {b} today")
            );
            assert_eq!(
                cf(&format!("we met the {b} today")),
                format!("we met the {a} today")
            );
            let cap = |w: &str| w[..1].to_uppercase() + &w[1..];
            assert_eq!(cf(&cap(a)), cap(b));
            checked += 1;
        }
        assert!(checked > 80, "{checked}");
    }

    #[test]
    fn one_way_pairs() {
        assert_eq!(
            cf("Mrs Smith and Ms Jones met Mr Brown."),
            "Mr Smith and Mr Jones met Ms Brown."
        );
        assert_eq!(cf("My mom called."), "My dad called.");
        assert_eq!(cf("My dad called."), "My mum called.");
    }

    #[test]
    fn case_is_carried_over() {
        assert_eq!(cf("He left."), "She left.");
        assert_eq!(cf("HE LEFT."), "SHE LEFT.");
        assert_eq!(cf("he left."), "she left.");
        assert_eq!(cf("She left."), "He left.");
        assert_eq!(cf("SHE left"), "HE left");
        assert_eq!(cf("The WOMAN and the Men"), "The MAN and the Women");
        // A mixed-case word keeps a capital first letter only.
        assert_eq!(cf("hE sHe"), "she he");
        assert_eq!(cf("HeR"), "Him");
    }

    #[test]
    fn her_becomes_his_before_a_noun_and_him_elsewhere() {
        assert_eq!(cf("I read her report."), "I read his report.");
        assert_eq!(cf("Her own team agreed."), "His own team agreed.");
        assert_eq!(cf("I thanked her."), "I thanked him.");
        assert_eq!(cf("I thanked her"), "I thanked him");
        assert_eq!(cf("I thanked her, then left."), "I thanked him, then left.");
        assert_eq!(cf("I gave her the file."), "I gave him the file.");
        assert_eq!(cf("I spoke to her about it."), "I spoke to him about it.");
        assert_eq!(
            cf("I told her and her manager."),
            "I told him and his manager."
        );
        assert_eq!(cf("Let her go."), "Let him go.");
        assert_eq!(cf("Ask HER NAME"), "Ask HIS NAME");
        // Across a line break the next word still decides.
        assert_eq!(cf("about her\nreport"), "about his\nreport");
        // Punctuation between the words: an object.
        assert_eq!(cf("for her: report"), "for him: report");
    }

    #[test]
    fn his_becomes_her_before_a_noun_and_hers_standing_alone() {
        assert_eq!(cf("His report is late."), "Her report is late.");
        assert_eq!(cf("The book is his."), "The book is hers.");
        assert_eq!(cf("The book is his"), "The book is hers");
        assert_eq!(cf("His is the blue one."), "Hers is the blue one.");
        assert_eq!(cf("The idea was hers."), "The idea was his.");
        assert_eq!(cf("I called him yesterday."), "I called her yesterday.");
        assert_eq!(cf("He hurt himself."), "She hurt herself.");
    }

    #[test]
    fn names_swap_with_their_case() {
        assert_eq!(cf("John met Mary."), "Patricia met James.");
        assert_eq!(cf("JOHN"), "PATRICIA");
        assert_eq!(cf("Ask Fatima or Mohammed."), "Ask Mohammed or Fatima.");
    }

    #[test]
    fn only_whole_words_and_contractions_keep_their_ending() {
        let pairs = Pairs::builtin();
        for text in [
            "The therapist and the theme.",
            "Shepherds, heroes, mankind, hermits, history.",
            "Manage the heap; sheer numbers.",
            "[NAME] wrote to [EMAIL].",
            "",
        ] {
            assert_eq!(counterfactual(text, &pairs), None, "{text:?}");
        }
        assert_eq!(cf("She'll call, he's late."), "He'll call, she's late.");
        assert_eq!(cf("The woman’s desk"), "The man’s desk");
        assert_eq!(cf("A step-mother"), "A step-father");
        assert_eq!(cf("he2 he"), "he2 she");
    }

    #[test]
    fn everything_but_the_words_is_kept() {
        let text = "  He\t(said)  \"SHE\"…\r\nhim!  ";
        assert_eq!(cf(text), "  She\t(said)  \"HE\"…\r\nher!  ");
    }

    #[test]
    fn swapping_twice_gives_the_text_back_for_two_way_pairs() {
        let pairs = Pairs::builtin();
        for text in [
            "He told his wife that the report was his.",
            "She gave her report to him and thanked her manager.",
            "The men and women of the board, ladies and gentlemen.",
            "John's father met Mary's mother and her sister.",
            "HE SAID SHE SAID.",
            "My grandmother, my uncle and the king.",
        ] {
            let once = counterfactual(text, &pairs).unwrap();
            assert_ne!(once, text);
            assert_eq!(
                counterfactual(&once, &pairs).as_deref(),
                Some(text),
                "{once:?}"
            );
        }
        // The documented exceptions.
        let twice = |t: &str| counterfactual(&counterfactual(t, &pairs).unwrap(), &pairs).unwrap();
        assert_eq!(twice("Mrs Smith"), "Ms Smith");
        assert_eq!(twice("I gave him flowers"), "I gave his flowers");
    }

    #[test]
    fn texts_of_a_record() {
        let pairs = Pairs::builtin();
        let out = counterfactual_texts(
            ["Who is he?", "Nothing here.", "He is her manager."],
            &pairs,
        );
        assert_eq!(
            out.unwrap(),
            ["Who is she?", "Nothing here.", "She is his manager."]
        );
        assert_eq!(counterfactual_texts(["a b", "c d"], &pairs), None);
        assert_eq!(counterfactual_texts([], &pairs), None);
    }

    #[test]
    fn malformed_pairs_are_refused_with_the_line() {
        let err = |text: &str| Pairs::parse(text, "p").unwrap_err().to_string();
        assert!(err("he she\n").starts_with("p:1: expected"));
        assert!(err("he | he\n").contains("paired with itself"));
        assert!(err("\nhe | she\nhe | her\n").starts_with("p:3: \"he\" already goes to \"she\""));
        assert!(err("He | she\n").contains("lowercase"));
        assert!(err("young man | young woman\n").contains("one word of letters"));
        assert!(err("he | \n").contains("one word of letters"));
        assert!(err("# only comments\n[section]\n").contains("no pairs"));
        // Two contexts for one word are fine; the same pair twice too.
        let p = Pairs::parse("a+ | b+\na | c\na | c\n", "p").unwrap();
        assert_eq!(p.counterparts("a"), Some(("c", "b")));
        assert_eq!(p.counterparts("b"), Some(("a", "a")));
        assert_eq!(p.len(), 3);
    }
}
