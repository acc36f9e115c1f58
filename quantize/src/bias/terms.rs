//! The bias report: demographic terms counted per axis and group, per document and overall,
//! with each axis' imbalance ratio.
//!
//! The **imbalance ratio** of an axis is the count of its most named group divided by the count
//! of its least named group (1.0: balanced). When a group of the axis is never named the ratio is
//! infinite; JSON has no infinity, so it is written `null` and the groups with a zero count are
//! listed in `empty_groups`. `ratio_present` is the same ratio over the groups that are named at
//! least once (`null` when fewer than two are), for axes where one group is rarely named at all.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::{read_list, words, ListError, Named, Word, BUILTIN};

/// The built-in word lists (quantize/data/bias_terms.txt).
const BUILTIN_TERMS: &str = include_str!("../../data/bias_terms.txt");

/// At most this many documents are listed in a report's `per_document` (all are counted, and
/// `per_document_omitted` says how many with terms were left out): a million-document corpus
/// should not give a million-entry report. Only documents with at least one term are listed.
pub const MAX_LISTED_DOCUMENTS: usize = 1000;

/// The demographic word lists: axes, each with groups of terms.
#[derive(Debug, Clone)]
pub struct Lexicon {
    /// Where the lists come from: a path, or [`BUILTIN`].
    source: String,
    axes: Vec<Axis>,
    /// First word of a term → the terms that start with it, longest first within an axis.
    index: HashMap<String, Vec<TermRef>>,
}

#[derive(Debug, Clone)]
struct Axis {
    name: String,
    groups: Vec<String>,
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
struct Term {
    /// As written in the list (lowercase): the key in the report.
    text: String,
    group: usize,
    /// Its words, lowercase; more than one for a phrase.
    words: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct TermRef {
    axis: usize,
    term: usize,
    len: usize,
}

impl Lexicon {
    /// The built-in lists (quantize/data/bias_terms.txt, compiled in).
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_TERMS, BUILTIN).expect("the built-in bias terms parse (unit-tested)")
    }

    /// Reads a list file in the format of quantize/data/bias_terms.txt.
    pub fn load(path: &Path) -> Result<Self, ListError> {
        Self::parse(&read_list(path)?, &path.display().to_string())
    }

    /// Parses lists: `[axis]` headers and `group: term, term, …` lines; `#` starts a comment.
    /// `source` names the lists in errors and reports.
    pub fn parse(text: &str, source: &str) -> Result<Self, ListError> {
        let invalid = |line: usize, message: String| ListError::Invalid {
            list: source.to_string(),
            line,
            message,
        };
        let mut axes: Vec<Axis> = Vec::new();
        // (axis, term words) → line first seen, to refuse a term listed twice in an axis.
        let mut seen: HashMap<(usize, Vec<String>), usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name
                    .strip_suffix(']')
                    .ok_or_else(|| invalid(n, format!("unclosed axis header {line:?}")))?
                    .trim();
                if !is_name(name) {
                    return Err(invalid(
                        n,
                        format!("axis name {name:?}: use a-z, 0-9 and _"),
                    ));
                }
                if axes.iter().any(|a| a.name == name) {
                    return Err(invalid(n, format!("axis {name:?} appears twice")));
                }
                axes.push(Axis {
                    name: name.to_string(),
                    groups: Vec::new(),
                    terms: Vec::new(),
                });
                continue;
            }
            let axis_index = axes
                .len()
                .checked_sub(1)
                .ok_or_else(|| invalid(n, "a group line before the first [axis] header".into()))?;
            let axis = &mut axes[axis_index];
            let (group, list) = line.split_once(':').ok_or_else(|| {
                invalid(n, format!("expected `group: term, term, …`, got {line:?}"))
            })?;
            let group = group.trim();
            if !is_name(group) {
                return Err(invalid(
                    n,
                    format!("group name {group:?}: use a-z, 0-9 and _"),
                ));
            }
            let g = match axis.groups.iter().position(|x| x == group) {
                Some(g) => g,
                None => {
                    axis.groups.push(group.to_string());
                    axis.groups.len() - 1
                }
            };
            for term in list.split(',').map(str::trim) {
                if term.is_empty() {
                    return Err(invalid(n, "an empty term (two commas in a row?)".into()));
                }
                let text = term.to_lowercase();
                let term_words: Vec<String> = words(&text).into_iter().map(|w| w.lower).collect();
                if term_words.is_empty() {
                    return Err(invalid(n, format!("term {term:?} has no letters")));
                }
                if let Some(first) = seen.insert((axis_index, term_words.clone()), n) {
                    return Err(invalid(
                        n,
                        format!(
                            "term {term:?} is already in axis {:?} (line {first})",
                            axis.name
                        ),
                    ));
                }
                axis.terms.push(Term {
                    text,
                    group: g,
                    words: term_words,
                });
            }
        }
        if axes.is_empty() {
            return Err(invalid(0, "no [axis] in the list".into()));
        }
        if let Some(a) = axes.iter().find(|a| a.groups.len() < 2) {
            return Err(invalid(
                0,
                format!(
                    "axis {:?} has {} group(s); an imbalance needs at least two",
                    a.name,
                    a.groups.len()
                ),
            ));
        }
        let mut index: HashMap<String, Vec<TermRef>> = HashMap::new();
        for (a, axis) in axes.iter().enumerate() {
            for (t, term) in axis.terms.iter().enumerate() {
                index
                    .entry(term.words[0].clone())
                    .or_default()
                    .push(TermRef {
                        axis: a,
                        term: t,
                        len: term.words.len(),
                    });
            }
        }
        for refs in index.values_mut() {
            // Within an axis the longest term is tried first; the sort is stable, so equal
            // lengths keep list order (they cannot both match: the words would be equal).
            refs.sort_by_key(|r| (r.axis, std::cmp::Reverse(r.len)));
        }
        Ok(Self {
            source: source.to_string(),
            axes,
            index,
        })
    }

    /// Where the lists come from: the file's path, or [`BUILTIN`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The axes in list order, each with its groups in list order.
    pub fn axes(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.axes.iter().map(|a| {
            (
                a.name.as_str(),
                a.groups.iter().map(String::as_str).collect(),
            )
        })
    }

    /// The terms of one group of an axis, as written in the list.
    pub fn terms(&self, axis: &str, group: &str) -> Vec<&str> {
        let Some(a) = self.axes.iter().find(|a| a.name == axis) else {
            return Vec::new();
        };
        let Some(g) = a.groups.iter().position(|x| x == group) else {
            return Vec::new();
        };
        a.terms
            .iter()
            .filter(|t| t.group == g)
            .map(|t| t.text.as_str())
            .collect()
    }

    /// Adds the term occurrences of `text` to `counts` (`[axis][term]`).
    fn count_into(&self, text: &str, counts: &mut [Vec<usize>]) {
        let ws = words(text);
        // Per axis, the first word not yet taken by a match of that axis.
        let mut free = vec![0usize; self.axes.len()];
        for i in 0..ws.len() {
            let Some(refs) = self.index.get(&ws[i].lower) else {
                continue;
            };
            for r in refs {
                if free[r.axis] > i || i + r.len > ws.len() {
                    continue;
                }
                let term = &self.axes[r.axis].terms[r.term];
                if phrase_at(text, &ws, i, &term.words) {
                    counts[r.axis][r.term] += 1;
                    free[r.axis] = i + r.len;
                }
            }
        }
    }
}

/// Whether `phrase` (lowercase words) occurs at word `i`, its words separated only by
/// whitespace and hyphens.
fn phrase_at(text: &str, ws: &[Word], i: usize, phrase: &[String]) -> bool {
    phrase.iter().enumerate().all(|(k, p)| {
        let w = &ws[i + k];
        w.lower == *p
            && (k == 0
                || text[ws[i + k - 1].end..w.start]
                    .chars()
                    .all(|c| c.is_whitespace() || matches!(c, '-' | '\u{2010}' | '\u{2011}')))
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Counts terms over many documents; [`Counter::report`] gives the totals.
#[derive(Debug, Clone)]
pub struct Counter<'a> {
    lexicon: &'a Lexicon,
    /// `[axis][term]` over all documents.
    totals: Vec<Vec<usize>>,
    documents: usize,
    documents_with_terms: usize,
    listed: Vec<DocumentCounts>,
    limit: usize,
}

impl<'a> Counter<'a> {
    /// A counter that lists up to [`MAX_LISTED_DOCUMENTS`] documents.
    pub fn new(lexicon: &'a Lexicon) -> Self {
        Self::with_document_limit(lexicon, MAX_LISTED_DOCUMENTS)
    }

    /// A counter that lists up to `limit` documents with terms (0: none; all are still counted).
    pub fn with_document_limit(lexicon: &'a Lexicon, limit: usize) -> Self {
        Self {
            lexicon,
            totals: lexicon
                .axes
                .iter()
                .map(|a| vec![0; a.terms.len()])
                .collect(),
            documents: 0,
            documents_with_terms: 0,
            listed: Vec::new(),
            limit,
        }
    }

    /// Counts one document of one text. `doc_label` names it in `per_document` (a file and
    /// line, an id).
    pub fn add(&mut self, doc_label: &str, text: &str) {
        self.add_texts(doc_label, [text]);
    }

    /// Counts one document of several texts (a chat record's messages). Each text is matched on
    /// its own, so a phrase never spans two messages.
    pub fn add_texts<'t>(&mut self, doc_label: &str, texts: impl IntoIterator<Item = &'t str>) {
        let mut counts: Vec<Vec<usize>> = self
            .lexicon
            .axes
            .iter()
            .map(|a| vec![0; a.terms.len()])
            .collect();
        for text in texts {
            self.lexicon.count_into(text, &mut counts);
        }
        self.documents += 1;
        let mut total = 0;
        for (sum, doc) in self.totals.iter_mut().zip(&counts) {
            for (s, d) in sum.iter_mut().zip(doc) {
                *s += d;
                total += d;
            }
        }
        if total == 0 {
            return;
        }
        self.documents_with_terms += 1;
        if self.listed.len() >= self.limit {
            return;
        }
        let axes = self
            .lexicon
            .axes
            .iter()
            .zip(&counts)
            .filter_map(|(axis, terms)| {
                let groups = group_counts(axis, terms);
                let named: Vec<(String, usize)> = axis
                    .groups
                    .iter()
                    .zip(groups)
                    .filter(|(_, n)| *n > 0)
                    .map(|(g, n)| (g.clone(), n))
                    .collect();
                (!named.is_empty()).then(|| (axis.name.clone(), Named(named)))
            })
            .collect();
        self.listed.push(DocumentCounts {
            document: doc_label.to_string(),
            terms: total,
            axes: Named(axes),
        });
    }

    /// The report over the documents added so far.
    pub fn report(&self) -> BiasReport {
        let axes = self
            .lexicon
            .axes
            .iter()
            .zip(&self.totals)
            .map(|(axis, terms)| (axis.name.clone(), axis_report(axis, terms)))
            .collect();
        BiasReport {
            lexicon: self.lexicon.source.clone(),
            documents: self.documents,
            documents_with_terms: self.documents_with_terms,
            axes: Named(axes),
            per_document: self.listed.clone(),
            per_document_omitted: self.documents_with_terms - self.listed.len(),
        }
    }
}

/// Per group of `axis`, the sum of its terms' counts.
fn group_counts(axis: &Axis, terms: &[usize]) -> Vec<usize> {
    let mut groups = vec![0; axis.groups.len()];
    for (term, n) in axis.terms.iter().zip(terms) {
        groups[term.group] += n;
    }
    groups
}

fn axis_report(axis: &Axis, terms: &[usize]) -> AxisReport {
    let groups = group_counts(axis, terms);
    let ratio_of = |counts: &[usize]| -> Option<f64> {
        let max = *counts.iter().max()?;
        let min = *counts.iter().min()?;
        (min > 0).then(|| max as f64 / min as f64)
    };
    let present: Vec<usize> = groups.iter().copied().filter(|&n| n > 0).collect();
    AxisReport {
        total: groups.iter().sum(),
        ratio: ratio_of(&groups),
        ratio_present: if present.len() >= 2 {
            ratio_of(&present)
        } else {
            None
        },
        empty_groups: axis
            .groups
            .iter()
            .zip(&groups)
            .filter(|(_, &n)| n == 0)
            .map(|(g, _)| g.clone())
            .collect(),
        groups: Named(axis.groups.iter().cloned().zip(groups).collect()),
        terms: Named(
            axis.terms
                .iter()
                .zip(terms)
                .filter(|(_, &n)| n > 0)
                .map(|(t, &n)| (t.text.clone(), n))
                .collect(),
        ),
    }
}

/// The bias report of a set of documents (`report.json`'s `bias`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BiasReport {
    /// The word lists used: a path, or `built-in`.
    pub lexicon: String,
    /// Documents counted.
    pub documents: usize,
    /// Of those, documents with at least one term.
    pub documents_with_terms: usize,
    /// Per axis, in list order.
    pub axes: Named<AxisReport>,
    /// The first [`MAX_LISTED_DOCUMENTS`] documents with terms, in the order added.
    pub per_document: Vec<DocumentCounts>,
    /// Documents with terms not listed in `per_document` (beyond the limit).
    pub per_document_omitted: usize,
}

/// The counts of one axis over all documents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AxisReport {
    /// Term occurrences of the axis, all groups together.
    pub total: usize,
    /// Per group, in list order, zero included.
    pub groups: Named<usize>,
    /// Largest group count / smallest group count; `None` (`null`) when a group has 0.
    pub ratio: Option<f64>,
    /// The same over the groups with a count above 0; `None` when fewer than two have one.
    pub ratio_present: Option<f64>,
    /// The groups with a count of 0, in list order.
    pub empty_groups: Vec<String>,
    /// Per term found at least once, in list order: which words make up the counts.
    pub terms: Named<usize>,
}

/// The counts of one document, listed when it holds at least one term.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocumentCounts {
    /// The label it was added under.
    pub document: String,
    /// Term occurrences, all axes together.
    pub terms: usize,
    /// Per axis with a term, the groups with a count above 0.
    pub axes: Named<Named<usize>>,
}

impl BiasReport {
    /// One line per axis with terms, for a person (the command's stderr summary).
    pub fn summary_lines(&self) -> Vec<String> {
        self.axes
            .iter()
            .filter(|(_, a)| a.total > 0)
            .map(|(name, a)| {
                let groups: Vec<String> =
                    a.groups.iter().map(|(g, n)| format!("{g} {n}")).collect();
                format!(
                    "{name}: {} (ratio {})",
                    groups.join(", "),
                    ratio_text(a.ratio)
                )
            })
            .collect()
    }
}

/// A ratio for a person: two decimals, or `-` for an empty group.
pub fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "\
# a comment
[gender]
female: she, her, woman
male: he, him, his, man   # trailing comment
[age]
young: young people, youth
old: old people, elderly
[origin]
latin_american: latin american
north_american: american
";

    fn small() -> Lexicon {
        Lexicon::parse(SMALL, "small").unwrap()
    }

    fn count(lexicon: &Lexicon, text: &str) -> BiasReport {
        let mut c = Counter::new(lexicon);
        c.add("d", text);
        c.report()
    }

    fn groups(report: &BiasReport, axis: &str) -> Vec<(String, usize)> {
        report.axes.get(axis).unwrap().groups.0.clone()
    }

    fn pairs(list: &[(&str, usize)]) -> Vec<(String, usize)> {
        list.iter().map(|(g, n)| (g.to_string(), *n)).collect()
    }

    #[test]
    fn the_builtin_lists_parse() {
        let lexicon = Lexicon::builtin();
        let axes: Vec<&str> = lexicon.axes().map(|(a, _)| a).collect();
        assert_eq!(
            axes,
            [
                "gender",
                "age",
                "religion",
                "origin",
                "race_ethnicity",
                "disability",
                "sexual_orientation",
                "gender_identity",
                "socioeconomic"
            ]
        );
        assert_eq!(lexicon.axes().next().unwrap().1, ["female", "male"]);
        assert_eq!(lexicon.source(), BUILTIN);
    }

    #[test]
    fn whole_words_case_insensitive() {
        let r = count(
            &small(),
            "HE said She saw him; his Man. The therapist, theme, shear.",
        );
        assert_eq!(groups(&r, "gender"), pairs(&[("female", 1), ("male", 4)]));
        let g = r.axes.get("gender").unwrap();
        assert_eq!(
            g.terms.0,
            pairs(&[("she", 1), ("he", 1), ("him", 1), ("his", 1), ("man", 1)])
        );
        assert_eq!(g.total, 5);
        assert_eq!(g.ratio, Some(4.0));
    }

    #[test]
    fn contractions_and_possessives_count_the_word() {
        // "she'll" is "she" + "ll"; "woman's" is "woman" + "s"; "he2" is one word.
        let r = count(&small(), "She'll call; the woman’s desk; he2 is a code.");
        assert_eq!(groups(&r, "gender"), pairs(&[("female", 2), ("male", 0)]));
    }

    #[test]
    fn phrases_take_the_longest_match_per_axis() {
        let r = count(
            &small(),
            "Young people, young-people and young\npeople; Latin American and American staff; \
             young, people; old  people.",
        );
        assert_eq!(groups(&r, "age"), pairs(&[("young", 3), ("old", 1)]));
        assert_eq!(
            groups(&r, "origin"),
            pairs(&[("latin_american", 1), ("north_american", 1)])
        );
    }

    #[test]
    fn phrases_do_not_span_messages() {
        let lexicon = small();
        let mut c = Counter::new(&lexicon);
        c.add_texts("chat", ["We hired young", "people last year."]);
        let r = c.report();
        assert_eq!(r.axes.get("age").unwrap().total, 0);
        assert_eq!(r.documents, 1);
        assert_eq!(r.documents_with_terms, 0);
        assert!(r.per_document.is_empty());
    }

    #[test]
    fn ratio_is_null_with_an_empty_group() {
        let r = count(&small(), "He and his team met him.");
        let g = r.axes.get("gender").unwrap();
        assert_eq!(g.ratio, None);
        assert_eq!(g.ratio_present, None);
        assert_eq!(g.empty_groups, ["female"]);
        let age = r.axes.get("age").unwrap();
        assert_eq!((age.total, age.ratio), (0, None));
        assert_eq!(age.empty_groups, ["young", "old"]);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["axes"]["gender"]["ratio"].is_null());
    }

    #[test]
    fn ratio_present_ignores_empty_groups() {
        let lexicon = Lexicon::parse("[x]\na: a1\nb: b1\nc: c1\n", "t").unwrap();
        let r = count(&lexicon, "a1 a1 a1 b1 b1");
        let x = r.axes.get("x").unwrap();
        assert_eq!(x.ratio, None);
        assert_eq!(x.ratio_present, Some(1.5));
        assert_eq!(x.empty_groups, ["c"]);
    }

    #[test]
    fn per_document_lists_only_documents_with_terms_up_to_the_limit() {
        let lexicon = small();
        let mut c = Counter::with_document_limit(&lexicon, 2);
        c.add("a", "She met the elderly.");
        c.add("b", "Nothing to count here.");
        c.add("c", "He left.");
        c.add("d", "Him again.");
        let r = c.report();
        assert_eq!(r.documents, 4);
        assert_eq!(r.documents_with_terms, 3);
        assert_eq!(r.per_document_omitted, 1);
        let labels: Vec<&str> = r.per_document.iter().map(|d| d.document.as_str()).collect();
        assert_eq!(labels, ["a", "c"]);
        let a = &r.per_document[0];
        assert_eq!(a.terms, 2);
        assert_eq!(a.axes.get("gender").unwrap().0, pairs(&[("female", 1)]));
        assert_eq!(a.axes.get("age").unwrap().0, pairs(&[("old", 1)]));
        assert!(a.axes.get("origin").is_none());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["per_document"][0]["axes"]["gender"]["female"], 1);
        assert_eq!(json["axes"]["gender"]["groups"]["female"], 1);
        assert_eq!(json["axes"]["gender"]["groups"]["male"], 2);
        assert_eq!(json["axes"]["gender"]["ratio"], 2.0);
    }

    #[test]
    fn report_order_follows_the_list() {
        let r = count(&small(), "man woman");
        let json = serde_json::to_string(&r.axes.get("gender").unwrap().groups).unwrap();
        assert_eq!(json, r#"{"female":1,"male":1}"#);
    }

    #[test]
    fn malformed_lists_are_refused_with_the_line() {
        let err = |text: &str| Lexicon::parse(text, "l").unwrap_err().to_string();
        assert_eq!(
            err("female: she\n"),
            "l:1: a group line before the first [axis] header"
        );
        assert!(
            err("[g]\nfemale: she\nmale: he, she\n").starts_with("l:3: term \"she\" is already")
        );
        assert!(err("[g]\nfemale she\n").starts_with("l:2: expected"));
        assert!(err("[g]\nfemale: she,,her\nmale: he\n").starts_with("l:2: an empty term"));
        assert!(err("[g]\nfemale: she\n").contains("has 1 group(s)"));
        assert!(err("[G]\n").contains("axis name"));
        assert!(err("[g\n").contains("unclosed"));
        assert!(err("# nothing\n").contains("no [axis]"));
        assert!(err("[g]\na: x\nb: y\n[g]\n").contains("appears twice"));
        assert!(err("[g]\na: --\nb: y\n").contains("no letters"));
    }

    #[test]
    fn a_word_may_be_in_two_axes() {
        let lexicon = Lexicon::parse(
            "[g]\nf: women\nm: men\n[a]\ny: young women\no: elderly\n",
            "t",
        )
        .unwrap();
        let r = count(&lexicon, "Young women and men.");
        assert_eq!(groups(&r, "g"), pairs(&[("f", 1), ("m", 1)]));
        assert_eq!(groups(&r, "a"), pairs(&[("y", 1), ("o", 0)]));
    }
}
