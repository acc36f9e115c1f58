//! Text cleanup, applied to every document and every chat message before anything else looks
//! at it, so that de-duplication, filters and anonymization all see one canonical form.

use unicode_normalization::UnicodeNormalization;

/// Cleans one text:
///
/// 1. line endings become `\n` (`\r\n`, a lone `\r`, and the Unicode line/paragraph separators
///    U+2028/U+2029 and NEL U+0085, which would otherwise be removed as control characters or
///    survive as invisible line breaks);
/// 2. control characters other than `\n` and `\t` are removed, and so is U+FEFF (a byte-order
///    mark, or a zero-width no-break space nobody means to train on);
/// 3. Unicode NFC normalization. NFC, not NFKC: NFC only merges canonically equivalent
///    sequences (`e` + combining acute → `é`), which never changes what a text says, while NFKC
///    also folds compatibility characters and changes meaning: `²` becomes `2` (so `m²` reads
///    `m2`), `½` becomes `1⁄2`, `ﬁ` ligatures and full-width forms are rewritten, `™` becomes
///    `TM`. The model should learn the documents as written;
/// 4. trailing whitespace is trimmed from each line;
/// 5. runs of three or more blank lines become two;
/// 6. the whole text is trimmed.
pub fn clean(text: &str) -> String {
    let mut unified = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                unified.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{85}' => unified.push('\n'),
            '\n' | '\t' => unified.push(c),
            '\u{feff}' => {}
            c if c.is_control() => {}
            c => unified.push(c),
        }
    }
    // NFC after removing controls: a control character between a base letter and a combining
    // mark would otherwise keep them from composing.
    let normalized: String = unified.nfc().collect();

    let mut out = String::with_capacity(normalized.len());
    let mut blank_run = 0usize;
    for line in normalized.split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 2 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn line_endings_controls_and_blank_lines() {
        let raw =
            "\u{feff}  Title \r\n\r\nbody\u{0}\u{7} text\t \rnext\u{2028}line\n\n\n\n\nend  \n\n";
        assert_eq!(clean(raw), "Title\n\nbody text\nnext\nline\n\n\nend");
    }

    #[test]
    fn nfc_composes_but_keeps_compatibility_characters() {
        // e + combining acute composes; the superscript two and the ligature stay as written.
        assert_eq!(clean("Cafe\u{301} m² ﬁle"), "Café m² ﬁle");
    }

    #[test]
    fn tabs_inside_lines_survive() {
        assert_eq!(clean("a\tb\t\n"), "a\tb");
    }
}
