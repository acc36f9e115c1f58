//! Turning token pieces into streamed text: whole UTF-8 characters only, and never a byte of a
//! stop string.
//!
//! A token's piece can end in the middle of a multi-byte character, and a stop string can span
//! several tokens, so text is held back until it can no longer turn out to be either.

/// What feeding a piece produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Text that is safe to send now (may be empty).
    Emit(String),
    /// A stop string was completed: send this last text, then finish with `stop`.
    Stopped(String),
}

/// Assembles streamed text and watches for stop strings.
#[derive(Debug, Default)]
pub struct StopStream {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character at the end of the last piece.
    partial: Vec<u8>,
    /// Decoded text not yet emitted because it may be the start of a stop string.
    held: String,
}

impl StopStream {
    /// A stream that ends before any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopStream {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// Adds the bytes of one token's piece.
    pub fn feed(&mut self, piece: &[u8]) -> Fed {
        self.partial.extend_from_slice(piece);
        let decoded = decode_complete(&mut self.partial);
        self.held.push_str(&decoded);

        // The earliest stop string wins.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            self.partial.clear();
            return Fed::Stopped(out);
        }
        // Keep back the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        Fed::Emit(out)
    }

    /// At the end of generation: whatever was held back, with a broken final character replaced.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        out
    }
}

/// Decodes the complete characters at the front of `buf`, leaving an incomplete trailing
/// character in it. Invalid bytes become U+FFFD.
fn decode_complete(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = buf;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &bad[n..];
                    }
                    None => {
                        rest = bad;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *buf = keep;
    out
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopStream::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match s.feed(p) {
                Fed::Emit(t) => out.push_str(&t),
                Fed::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn passes_text_through_without_stops() {
        assert_eq!(
            run(&[], &[b"Hello", b" world"]),
            ("Hello world".into(), false)
        );
    }

    #[test]
    fn stop_string_across_pieces_is_cut() {
        assert_eq!(
            run(&["END"], &[b"abc E", b"N", b"D more"]),
            ("abc ".into(), true)
        );
    }

    #[test]
    fn near_miss_is_released() {
        assert_eq!(run(&["END"], &[b"EN", b"x"]), ("ENx".into(), false));
        assert_eq!(run(&["END"], &[b"a", b"EN"]), ("aEN".into(), false));
    }

    #[test]
    fn multibyte_characters_split_across_pieces() {
        let e = "é".as_bytes();
        assert_eq!(run(&[], &[&e[..1], &e[1..]]), ("é".into(), false));
        let mut s = StopStream::new(&[]);
        assert_eq!(s.feed(&e[..1]), Fed::Emit(String::new()));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(run(&[], &[b"a\xffb"]), ("a\u{FFFD}b".into(), false));
        assert_eq!(run(&[], &[b"a\xc3"]), ("a\u{FFFD}".into(), false));
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["c", "ab"], &[b"xabc"]), ("x".into(), true));
    }
}
