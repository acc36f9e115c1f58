//! `extract-text`: one uploaded document → its cleaned (and, when asked, anonymised) text, for
//! the daemon's knowledge collections.
//!
//! The daemon runs this in a child process, like every other toolchain step, with the
//! document's bytes on stdin and one JSON object on stdout: a parser that crashes or runs away
//! on a hostile file takes down this process, never serving. Nothing touches the disk.
//!
//! Formats, by the file name's extension: `.txt`, `.md`/`.markdown`, `.csv`, `.log` (UTF-8
//! text), `.jsonl` (each line as `prepare` reads it: `{"text"}`, chat `{"messages"}` or Alpaca;
//! lines joined by a blank line), `.html`/`.htm` (rendered to plain text). The text then goes
//! through `prepare`'s cleaning ([`crate::prepare::clean::clean`]) and, with `--anonymize`, its
//! anonymiser (the built-in personal-data types), so a collection sees exactly the canonical
//! form that training data does.

use serde::Serialize;

use crate::prepare::{self, AnonymizeConfig, Anonymizer, PiiCounts};

/// Width HTML is rendered at. Wide, so that paragraphs are not wrapped into short lines.
const HTML_WIDTH: usize = 10_000;

/// What `extract-text` prints.
#[derive(Debug, Serialize, PartialEq)]
pub struct Extracted {
    /// The format the name selected.
    pub format: &'static str,
    /// The cleaned (and maybe anonymised) text.
    pub text: String,
    /// Replacements per personal-data type (empty without `--anonymize`).
    pub pii: PiiCounts,
}

/// The formats `extract-text` reads, by extension (lowercase, without the dot).
pub fn format_of(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "txt" | "text" | "log" | "csv" => "text",
        "md" | "markdown" => "markdown",
        "jsonl" => "jsonl",
        "html" | "htm" => "html",
        _ => return None,
    })
}

/// The text of document `name` with content `bytes`, or a message saying what is wrong.
pub fn extract(name: &str, bytes: &[u8], anonymize: bool) -> Result<Extracted, String> {
    let format = format_of(name).ok_or_else(|| {
        format!(
            "{name}: unsupported file type; collections read .txt, .md, .csv, .log, .jsonl, \
             .html and .htm"
        )
    })?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let utf8 = || {
        std::str::from_utf8(bytes).map_err(|e| {
            let at = e.valid_up_to();
            let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
            format!("{name}: not valid UTF-8 (line {line})")
        })
    };
    let raw = match format {
        "jsonl" => {
            let mut docs = Vec::new();
            for (i, line) in utf8()?.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let content = prepare::ingest::parse_line(line)
                    .map_err(|e| format!("{name}: line {}: {e}", i + 1))?;
                docs.push(content.joined());
            }
            docs.join("\n\n")
        }
        "html" => html2text::from_read(bytes, HTML_WIDTH)
            .map_err(|e| format!("{name}: cannot read the HTML: {e}"))?,
        _ => utf8()?.to_string(),
    };
    let mut text = prepare::clean::clean(&raw);
    let mut pii = PiiCounts::new();
    if anonymize {
        let anonymizer =
            Anonymizer::new(&AnonymizeConfig::default()).map_err(|e| format!("anonymiser: {e}"))?;
        text = anonymizer.anonymize(&text, &mut pii);
    }
    Ok(Extracted { format, text, pii })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cleaned_like_training_data() {
        let e = extract(
            "a.TXT",
            b"\xef\xbb\xbfline one  \r\nline two\r\n\r\n\r\n\r\nend",
            false,
        )
        .unwrap();
        assert_eq!(e.format, "text");
        // Three blank lines become two, as prepare cleans.
        assert_eq!(e.text, "line one\nline two\n\n\nend");
    }

    #[test]
    fn jsonl_lines_become_paragraphs() {
        let e = extract(
            "d.jsonl",
            b"{\"text\": \"first\"}\n\n{\"instruction\": \"q\", \"output\": \"a\"}\n",
            false,
        )
        .unwrap();
        assert_eq!(e.text, "first\n\nq\na");
        let bad = extract("d.jsonl", b"{\"text\": 1}\nnot json\n", false).unwrap_err();
        assert!(bad.starts_with("d.jsonl: line 1"), "{bad}");
    }

    #[test]
    fn html_is_rendered_to_text_without_markup() {
        let e = extract(
            "p.html",
            b"<html><head><script>var x=1;</script></head><body><h1>Title</h1>\
              <p>Expenses are <b>refunded</b> monthly.</p></body></html>",
            false,
        )
        .unwrap();
        assert!(e.text.contains("Expenses are"), "{}", e.text);
        assert!(e.text.contains("refunded"), "{}", e.text);
        assert!(
            !e.text.contains("<p>") && !e.text.contains("var x"),
            "{}",
            e.text
        );
    }

    #[test]
    fn anonymisation_replaces_personal_data_and_counts_it() {
        let e = extract("m.md", b"Write to jane.doe@example.com today.", true).unwrap();
        assert!(!e.text.contains("jane.doe"), "{}", e.text);
        assert_eq!(e.pii.values().sum::<usize>(), 1);
    }

    #[test]
    fn unknown_types_and_bad_utf8_say_what_to_fix() {
        assert!(extract("x.pdf", b"%PDF", false)
            .unwrap_err()
            .contains("unsupported file type"));
        let e = extract("x.txt", b"ok\n\xff", false).unwrap_err();
        assert_eq!(e, "x.txt: not valid UTF-8 (line 2)");
    }
}
