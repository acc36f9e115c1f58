//! A strict reader of an upstream's server-sent events: bytes in, `data` payloads out.
//!
//! Strict where a browser's parser is lenient: a line that is not empty, a comment, or one of
//! the fields `data`, `event`, `id`, `retry` means the answer is not an event stream, and is an
//! error rather than something skipped. A line must be UTF-8 and at most `max_line` bytes (the
//! whole answer is bounded by the caller, so the buffer is too).

/// Why the bytes are not server-sent events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line that no event stream has.
    NotSse(String),
    /// A line longer than allowed.
    LineTooLong(usize),
}

/// The parser's state between chunks.
#[derive(Debug)]
pub struct SseReader {
    /// The current, unfinished line.
    line: Vec<u8>,
    /// The data lines of the event being read.
    data: Option<String>,
    max_line: usize,
    /// The previous chunk ended in `\r` (a `\n` right after it is the same line end).
    after_cr: bool,
}

impl SseReader {
    /// A reader whose lines are at most `max_line` bytes.
    pub fn new(max_line: usize) -> SseReader {
        SseReader {
            line: Vec::new(),
            data: None,
            max_line,
            after_cr: false,
        }
    }

    /// Reads `bytes`; returns the `data` of every event they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, SseError> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(data) = self.line_end(&line)? {
                        out.push(data);
                    }
                }
                _ => {
                    if self.line.len() >= self.max_line {
                        return Err(SseError::LineTooLong(self.max_line));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    /// True when no partial line or event is pending (the stream may end here).
    pub fn is_clean(&self) -> bool {
        self.line.is_empty() && self.data.is_none()
    }

    fn line_end(&mut self, line: &[u8]) -> Result<Option<String>, SseError> {
        if line.is_empty() {
            return Ok(self.data.take());
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| SseError::NotSse("a line is not UTF-8".into()))?;
        if text.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text, ""),
        };
        match field {
            "data" => {
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
                Ok(None)
            }
            "event" | "id" | "retry" => Ok(None),
            _ => {
                let shown: String = text.chars().take(40).collect();
                Err(SseError::NotSse(format!(
                    "a line is not a server-sent event field: {shown:?}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_ends() {
        let mut r = SseReader::new(1024);
        assert_eq!(r.push(b"data: {\"a\"").unwrap(), Vec::<String>::new());
        assert_eq!(r.push(b":1}\r").unwrap(), Vec::<String>::new());
        assert_eq!(r.push(b"\n\r\n").unwrap(), vec!["{\"a\":1}".to_string()]);
        assert!(r.is_clean());
        let got = r
            .push(b": keep-alive\nevent: x\ndata:one\ndata: two\n\ndata: [DONE]\n\n")
            .unwrap();
        assert_eq!(got, vec!["one\ntwo".to_string(), "[DONE]".to_string()]);
    }

    #[test]
    fn garbage_is_an_error_not_skipped() {
        let mut r = SseReader::new(1024);
        assert!(matches!(
            r.push(b"HTTP/1.1 200 OK\n"),
            Err(SseError::NotSse(_))
        ));
        let mut r = SseReader::new(1024);
        assert!(matches!(
            r.push(b"data: \xff\xfe\n"),
            Err(SseError::NotSse(_))
        ));
    }

    #[test]
    fn a_line_over_the_bound_is_cut() {
        let mut r = SseReader::new(8);
        assert_eq!(r.push(b"data: 123"), Err(SseError::LineTooLong(8)));
    }

    #[test]
    fn an_unfinished_event_is_not_clean() {
        let mut r = SseReader::new(64);
        r.push(b"data: x\n").unwrap();
        assert!(!r.is_clean());
    }
}
