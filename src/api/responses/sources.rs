//! Answers with sources: retrieval before generating, for the Responses API's `file_search`
//! tool and chat completions' `file_search` extension.
//!
//! Our small local models cannot be trusted to decide to call a search tool, so when a request
//! offers the search it always runs, before the model sees anything:
//! 1. The query is the latest user message's text ([`query_of`]).
//! 2. The collections service ranks the chunks the caller may read ([`retrieve_into`]); those
//!    scoring under `score_threshold` are dropped, and the rest are kept, best first, while
//!    they fit the model's context beside the conversation and the answer ([`fit`]).
//! 3. The kept chunks go into the prompt as numbered sources, with the instruction to answer
//!    from them and cite them as `[1]`, `[2]` ([`instruction`]), at the end of the leading
//!    system message (a new one when there is none: every template accepts a system message
//!    first, not all accept one later).
//! 4. After the answer, [`cite`] turns its markers into citations: one per marker naming a
//!    source shown (`[2]`, `[1, 3]`, `[Source 2]`, not `a[2]`); when the answer cites none, the
//!    source sharing most words with it (ties: the better ranked), placed at the answer's end,
//!    so an answer built from sources always names at least one. Each citation's `index` counts
//!    characters (Unicode scalar values, as Python's `str` does) from the start of the answer
//!    to the marker's `[`; its `quote` is the sentence of the chunk that shares most words with
//!    the sentence the marker closes (else with the whole answer; else the chunk's first
//!    sentence; a Markdown heading only when the chunk is nothing else), at most
//!    [`QUOTE_CHARS`] characters. The markers stay in the text: it was streamed before the
//!    citations were known.

use super::super::error::ApiError;
use super::super::{AppState, Caller};
use crate::collections::{Ranker, Retrieved};
use inhouse_formats::request::{ChatMessage, FileSearch, GenerateRequest, Prompt, SearchRanker};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The longest quote a citation carries, in characters.
pub(crate) const QUOTE_CHARS: usize = 280;

/// Characters per token assumed when fitting sources into the context (English text runs at
/// about four; three leaves room for code, numbers and other languages).
const CHARS_PER_TOKEN: usize = 3;

/// Tokens set aside for the template's markup and the instruction around the sources.
const TEMPLATE_TOKENS: u32 = 256;

/// One retrieved chunk shown to the model, as the sealed record keeps it: the service's own
/// [`Retrieved`].
pub(crate) type Source = Retrieved;

impl Source {
    /// The search result in OpenAI's shape (`file_id`, `filename`, `score`, `attributes`,
    /// `text`) with the chunk's place (`vector_store_id`, `chunk_index`, `start`, `end`).
    pub(crate) fn result_json(&self) -> Value {
        json!({"file_id": self.file_id, "filename": self.filename, "score": self.score,
            "attributes": self.attributes, "text": self.text,
            "vector_store_id": self.vector_store_id, "chunk_index": self.chunk_index,
            "start": self.start, "end": self.end})
    }
}

/// A file citation in an answer: OpenAI's `file_citation` annotation (`index`, `file_id`,
/// `filename`) with the cited chunk's place and a quote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Citation {
    /// Characters from the answer's start to the citation.
    pub index: usize,
    /// The cited file.
    pub file_id: String,
    /// Its name.
    pub filename: String,
    /// The cited part of the chunk.
    pub quote: String,
    /// The chunk's ordinal in the file.
    pub chunk_index: u32,
    /// Byte range of the chunk in the file's cleaned text.
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
    /// The collection the chunk came from.
    pub vector_store_id: String,
}

impl Citation {
    /// The annotation object.
    pub(crate) fn json(&self) -> Value {
        let mut v = json!(self);
        v["type"] = json!("file_citation");
        v
    }
}

/// What a search gave one request: the query and the sources shown to the model.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Grounding {
    /// The query searched for; `None` when the request held no user text to search with.
    pub query: Option<String>,
    /// The chunks shown to the model, numbered from 1 in this order.
    pub sources: Vec<Source>,
}

impl Grounding {
    /// The citations of `answer`.
    pub(crate) fn cite(&self, answer: &str) -> Vec<Citation> {
        cite(answer, &self.sources)
    }

    /// The citations of `answer` as annotation objects.
    pub(crate) fn annotations(&self, answer: &str) -> Value {
        Value::Array(self.cite(answer).iter().map(Citation::json).collect())
    }
}

fn ranker(r: SearchRanker) -> Ranker {
    match r {
        SearchRanker::Hybrid => Ranker::Hybrid,
        SearchRanker::Bm25 => Ranker::Bm25,
        SearchRanker::Vector => Ranker::Vector,
    }
}

/// Searches for `request`'s latest user text in the collections `fs` names, as `caller`, and
/// puts what fits into the request's prompt as numbered sources. A collection the caller may not
/// read is the collections' error (404 `vector_store_not_found`).
pub(crate) async fn retrieve_into(
    s: &AppState,
    caller: &Caller,
    fs: &FileSearch,
    request: &mut GenerateRequest,
) -> Result<Grounding, ApiError> {
    let Prompt::Chat(messages) = &mut request.prompt else {
        return Ok(Grounding::default());
    };
    let Some(query) = query_of(messages) else {
        return Ok(Grounding::default());
    };
    let hits = s
        .collections
        .retrieve(
            &s.access(caller),
            &fs.vector_store_ids,
            &query,
            fs.max_num_results,
            fs.filters.as_ref(),
            ranker(fs.ranker),
        )
        .await?;
    let hits: Vec<Source> = hits
        .into_iter()
        .filter(|h| h.score >= fs.score_threshold)
        .take(fs.max_num_results)
        .collect();
    let budget = budget_chars(s, &request.model, request.max_tokens, messages);
    let sources = fit(hits, budget);
    tracing::info!(
        uid = caller.uid,
        stores = fs.vector_store_ids.len(),
        sources = sources.len(),
        "file search"
    );
    ground(messages, instruction(&sources));
    Ok(Grounding {
        query: Some(query),
        sources,
    })
}

/// The characters of source text that fit beside `messages` and the answer in `model`'s context.
fn budget_chars(s: &AppState, model: &str, max_tokens: u32, messages: &[ChatMessage]) -> usize {
    let target = super::super::aliases::resolve(s, model).unwrap_or_else(|| model.to_string());
    let n_ctx = s
        .engine
        .models()
        .iter()
        .find(|m| m.name == target)
        .map(|m| m.n_ctx)
        .filter(|&n| n > 0)
        .unwrap_or(s.limits.max_tokens_cap);
    let tokens = n_ctx
        .saturating_sub(max_tokens)
        .saturating_sub(TEMPLATE_TOKENS) as usize;
    let used: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    (tokens * CHARS_PER_TOKEN).saturating_sub(used)
}

/// The text of the latest user message that has any; `None` when none has.
pub(crate) fn query_of(messages: &[ChatMessage]) -> Option<String> {
    messages
        .iter()
        .rev()
        .filter(|m| m.role == "user")
        .map(|m| m.content.trim())
        .find(|t| !t.is_empty())
        .map(str::to_string)
}

/// The best-ranked sources whose texts fit in `budget` characters together; the best one is
/// always kept (a prompt it overflows is the engine's context error, which says so).
pub(crate) fn fit(sources: Vec<Source>, budget: usize) -> Vec<Source> {
    let mut used = 0;
    let mut out = Vec::with_capacity(sources.len());
    for s in sources {
        let len = s.text.chars().count() + s.filename.chars().count() + 8;
        if !out.is_empty() && used + len > budget {
            break;
        }
        used += len;
        out.push(s);
    }
    out
}

/// The instruction and the numbered sources, for the system message.
pub(crate) fn instruction(sources: &[Source]) -> String {
    if sources.is_empty() {
        return "A search of the user's documents found nothing that matches the question. \
                If the answer depends on those documents, say that they do not cover it."
            .to_string();
    }
    let mut out = String::from(
        "Answer the user's question from the numbered sources below, taken from the user's \
         documents. After each statement, cite the sources it comes from by their numbers in \
         square brackets, like [1] or [2]. If the sources do not hold the answer, say so.\n\n\
         Sources:",
    );
    for (i, s) in sources.iter().enumerate() {
        out.push_str(&format!(
            "\n\n[{}] {}\n{}",
            i + 1,
            s.filename,
            s.text.trim()
        ));
    }
    out
}

/// Adds `instruction` to the end of the leading system message, or puts it first as one.
pub(crate) fn ground(messages: &mut Vec<ChatMessage>, instruction: String) {
    match messages.first_mut() {
        Some(m) if m.role == "system" => {
            if !m.content.is_empty() {
                m.content.push_str("\n\n");
            }
            m.content.push_str(&instruction);
        }
        _ => messages.insert(0, ChatMessage::text("system", instruction)),
    }
}

/// The citation markers in `text`: (character index of the `[`, source number) for each number
/// of `[n]`, `[n, m]`, `[n; m]`, `[n and m]`, `[n-m]` (at most 20 numbers), optionally written
/// `[Source n]`, and the full-width `【n】`. A bracket right after a letter, digit or `_`
/// (`a[1]`) is an index, not a marker.
pub(crate) fn markers(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let close = match chars[i] {
            '[' => ']',
            '【' => '】',
            _ => {
                i += 1;
                continue;
            }
        };
        let after_word = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let end = chars[i + 1..]
            .iter()
            .take(48)
            .position(|&c| c == close)
            .map(|p| i + 1 + p);
        match (after_word, end) {
            (false, Some(end)) => {
                let inner: String = chars[i + 1..end].iter().collect();
                if let Some(numbers) = marker_numbers(&inner) {
                    out.extend(numbers.into_iter().map(|n| (i, n)));
                    i = end + 1;
                    continue;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// The numbers a marker's inside names; `None` when it is not a marker.
fn marker_numbers(inner: &str) -> Option<Vec<usize>> {
    let lower = inner.trim().to_lowercase();
    let rest = ["sources", "source", "src", "doc"]
        .iter()
        .find_map(|w| lower.strip_prefix(w))
        .unwrap_or(&lower);
    let rest = rest.replace(" and ", ",").replace(['&', ';'], ",");
    let mut out = Vec::new();
    for part in rest.split([',', ' ']).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once(['-', '–']) {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let n = part.parse::<usize>().ok()?;
                (n, n)
            }
        };
        if a == 0 || b < a || b - a > 20 {
            return None;
        }
        out.extend(a..=b);
        if out.len() > 20 {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Words that say nothing about which source an answer used.
const STOP_WORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "are",
    "was",
    "were",
    "with",
    "that",
    "this",
    "from",
    "have",
    "has",
    "had",
    "not",
    "but",
    "you",
    "your",
    "our",
    "its",
    "can",
    "will",
    "which",
    "what",
    "when",
    "who",
    "how",
    "all",
    "any",
    "there",
    "their",
    "they",
    "them",
    "into",
    "than",
    "then",
    "also",
    "been",
    "such",
    "only",
    "per",
    "may",
    "must",
    "should",
    "would",
    "could",
    "these",
    "those",
    "source",
    "sources",
    "answer",
    "question",
    "according",
];

/// The words of `s` that can tell sources apart: lower-cased runs of letters and digits, of
/// three letters or more, or holding a digit, and not a [`STOP_WORDS`] word.
fn words(s: &str) -> std::collections::BTreeSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3 || w.chars().any(|c| c.is_ascii_digit()))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect()
}

fn shared(a: &std::collections::BTreeSet<String>, b: &str) -> usize {
    words(b).intersection(a).count()
}

/// The sentences of `text`, trimmed: ended by `.`, `!` or `?` before white space, or a line
/// break.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let next_is_space = it.peek().is_none_or(|(_, n)| n.is_whitespace());
        if c == '\n' || (matches!(c, '.' | '!' | '?') && next_is_space) {
            let end = i + c.len_utf8();
            out.push(text[start..end].trim());
            start = end;
        }
    }
    out.push(text[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// The sentence of `answer` that a marker at character `at` closes: the text before it, back
/// to the sentence end before that (a marker after the full stop, `… at 9. [1]`, closes the
/// sentence before the stop).
fn sentence_before(answer: &str, at: usize) -> &str {
    let byte = answer
        .char_indices()
        .nth(at)
        .map_or(answer.len(), |(b, _)| b);
    let before = answer[..byte].trim_end();
    // Earlier markers of the same sentence (`… [1][2]`) and its own full stop belong to it.
    let mut body = before;
    loop {
        let t = body.trim_end();
        let t = t.trim_end_matches(['.', '!', '?', ',', ';', ':']);
        let t = match t.strip_suffix(']') {
            Some(u) => match u.rfind('[') {
                Some(open) => &u[..open],
                None => t,
            },
            None => t,
        };
        if t.len() == body.len() {
            break;
        }
        body = t;
    }
    let cut = body
        .char_indices()
        .rev()
        .find(|&(i, c)| {
            c == '\n'
                || (matches!(c, '.' | '!' | '?')
                    && body[i + c.len_utf8()..].starts_with(char::is_whitespace))
        })
        .map_or(0, |(i, c)| i + c.len_utf8());
    body[cut..].trim()
}

/// The sentence of `chunk` sharing most words with the first of `contexts` that shares any
/// (the first such sentence on a tie; the chunk's first sentence when no context shares a
/// word), cut to [`QUOTE_CHARS`]. Markdown headings are quoted only when the chunk is nothing
/// else.
pub(crate) fn quote(chunk: &str, contexts: &[&str]) -> String {
    let all = sentences(chunk);
    let prose: Vec<&str> = all
        .iter()
        .copied()
        .filter(|s| !s.starts_with('#'))
        .collect();
    let candidates = if prose.is_empty() { all } else { prose };
    let mut q = candidates.first().copied().unwrap_or("");
    for context in contexts {
        let want = words(context);
        let mut best = (q, 0);
        for s in &candidates {
            let n = shared(&want, s);
            if n > best.1 {
                best = (s, n);
            }
        }
        if best.1 > 0 {
            q = best.0;
            break;
        }
    }
    match q.char_indices().nth(QUOTE_CHARS) {
        None => q.to_string(),
        Some((cut, _)) => format!("{}…", &q[..cut]),
    }
}

/// A citation of `source` at `index`; its quote matches `context` (the cited sentence), else
/// the whole `answer`.
fn citation(source: &Source, index: usize, context: &str, answer: &str) -> Citation {
    Citation {
        index,
        file_id: source.file_id.clone(),
        filename: source.filename.clone(),
        quote: quote(&source.text, &[context, answer]),
        chunk_index: source.chunk_index,
        start: source.start,
        end: source.end,
        vector_store_id: source.vector_store_id.clone(),
    }
}

/// The citations of `answer`, whose model was shown `sources` numbered from 1 (see the module's
/// doc): one per marker naming a source shown, in the answer's order; when there is none, the
/// source sharing most words with the answer, at its end. None for an empty answer or when no
/// source was shown.
pub(crate) fn cite(answer: &str, sources: &[Source]) -> Vec<Citation> {
    if sources.is_empty() || answer.trim().is_empty() {
        return Vec::new();
    }
    let mut out: Vec<Citation> = Vec::new();
    for (at, n) in markers(answer) {
        let Some(source) = sources.get(n - 1) else {
            continue;
        };
        let c = citation(source, at, sentence_before(answer, at), answer);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        let want = words(answer);
        let mut best = (0, 0);
        for (i, s) in sources.iter().enumerate() {
            let n = shared(&want, &s.text);
            if n > best.1 {
                best = (i, n);
            }
        }
        out.push(citation(
            &sources[best.0],
            answer.chars().count(),
            answer,
            answer,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn source(file: &str, text: &str) -> Source {
        Source {
            vector_store_id: "vs_1".into(),
            file_id: format!("file-{file}"),
            filename: format!("{file}.md"),
            chunk_index: 2,
            start: 100,
            end: 100 + text.len(),
            text: text.into(),
            score: 0.5,
            attributes: Map::new(),
        }
    }

    fn handbook() -> Vec<Source> {
        vec![
            source(
                "travel",
                "Travel must be booked through the portal. Trains are preferred under 600 km.",
            ),
            source(
                "leave",
                "Staff get 27 days of annual leave. Unused days expire in March.",
            ),
        ]
    }

    #[test]
    fn the_query_is_the_latest_user_text() {
        let m = vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", "first"),
            ChatMessage::text("assistant", "ok"),
            ChatMessage::text("user", "  How many days of leave?  "),
            ChatMessage::text("tool", "result"),
        ];
        assert_eq!(query_of(&m).as_deref(), Some("How many days of leave?"));
        assert_eq!(query_of(&m[..1]), None);
        assert_eq!(query_of(&[ChatMessage::text("user", " ")]), None);
    }

    #[test]
    fn sources_are_numbered_into_the_leading_system_message() {
        let s = handbook();
        let text = instruction(&s);
        assert!(
            text.contains("[1] travel.md\nTravel must be booked"),
            "{text}"
        );
        assert!(
            text.contains("\n\n[2] leave.md\nStaff get 27 days"),
            "{text}"
        );
        assert!(text.contains("like [1] or [2]"));
        let mut m = vec![ChatMessage::text("user", "Q")];
        ground(&mut m, text.clone());
        assert_eq!((m.len(), m[0].role.as_str()), (2, "system"));
        assert_eq!(m[0].content, text);
        let mut m = vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", "Q"),
        ];
        ground(&mut m, text.clone());
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].content, format!("Be brief.\n\n{text}"));
        assert!(instruction(&[]).contains("found nothing"));
    }

    #[test]
    fn sources_fit_the_budget_best_first_and_the_best_always() {
        let s = handbook();
        let one = s[0].text.chars().count() + s[0].filename.len() + 8;
        assert_eq!(fit(s.clone(), 10_000).len(), 2);
        assert_eq!(fit(s.clone(), one).len(), 1);
        assert_eq!(fit(s.clone(), 0).len(), 1, "the best is kept");
        assert!(fit(vec![], 100).is_empty());
    }

    #[test]
    fn markers_in_their_written_forms_and_not_indexes() {
        let t =
            "Leave is 27 days [2]. Book trains [1, 2][Source 1] and 【2】; see [1-3] [1 and 2].";
        let got: Vec<usize> = markers(t).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, [2, 1, 2, 1, 2, 1, 2, 3, 1, 2]);
        // The index counts characters, not bytes.
        let t = "Über café [1]";
        assert_eq!(markers(t), [(10, 1)]);
        assert_eq!(t.chars().nth(10), Some('['));
        for not in [
            "a[1]", "x_[2]", "[0]", "[note]", "[1.5]", "[]", "[1-40]", "[3", "v2[1]",
        ] {
            assert!(markers(not).is_empty(), "{not}");
        }
    }

    #[test]
    fn an_answer_cites_what_its_markers_name_with_the_cited_sentence_quoted() {
        let s = handbook();
        let answer = "You get 27 days of leave [2]. Book travel through the portal. [1][9]";
        let c = cite(answer, &s);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].file_id, "file-leave");
        assert_eq!(c[0].index, answer.find("[2]").unwrap());
        assert_eq!(c[0].quote, "Staff get 27 days of annual leave.");
        assert_eq!(c[1].file_id, "file-travel");
        assert_eq!(c[1].quote, "Travel must be booked through the portal.");
        assert_eq!((c[1].chunk_index, c[1].start), (2, 100));
        assert_eq!(c[1].json()["type"], "file_citation");
        assert_eq!(c[1].json()["vector_store_id"], "vs_1");
    }

    #[test]
    fn an_answer_without_markers_cites_the_source_sharing_most_words() {
        let s = handbook();
        let answer = "Unused leave days expire in March.";
        let c = cite(answer, &s);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].file_id, "file-leave");
        assert_eq!(c[0].index, answer.chars().count());
        assert_eq!(c[0].quote, "Unused days expire in March.");
        // Nothing shared: the best-ranked source, its first sentence.
        let c = cite("Hello.", &s);
        assert_eq!(
            (c[0].file_id.as_str(), c[0].quote.as_str()),
            ("file-travel", "Travel must be booked through the portal.")
        );
        // Markers naming no source shown count as none.
        let c = cite("Trains under 600 km [7].", &s);
        assert_eq!(c[0].file_id, "file-travel");
        assert!(cite("", &s).is_empty());
        assert!(cite("Anything [1]", &[]).is_empty());
    }

    #[test]
    fn a_marker_after_words_the_chunk_lacks_quotes_what_the_answer_shares_not_a_heading() {
        let s = vec![source(
            "leave",
            "# Annual leave\n\nEvery employee gets 31 days of paid leave. Requests go to HR.",
        )];
        let answer = "The sources [1] say: every employee gets 31 days.";
        let c = cite(answer, &s);
        assert_eq!(c[0].quote, "Every employee gets 31 days of paid leave.");
        assert_eq!(
            quote("# Only a heading", &["nothing shared"]),
            "# Only a heading"
        );
        assert_eq!(
            quote("# Title\nFirst line. Second line.", &["zzz"]),
            "First line."
        );
    }

    #[test]
    fn quotes_are_cut_at_a_character_boundary() {
        let long = "é".repeat(QUOTE_CHARS + 10);
        let q = quote(&long, &["x"]);
        assert_eq!(q.chars().count(), QUOTE_CHARS + 1);
        assert!(q.ends_with('…'));
        assert_eq!(sentence_before("One. Two three [1].", 15), "Two three");
        assert_eq!(sentence_before("One. Two three. [1]", 16), "Two three");
        assert_eq!(sentence_before("[1] at the start", 0), "");
    }
}
