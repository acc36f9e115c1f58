//! Personal data → typed placeholders (`[EMAIL]`, `[PHONE]`, …), so that the fine-tuned model
//! cannot repeat an address, a card number or a name it saw in training.
//!
//! # Order
//! Detectors run one after the other, each only on the text the earlier ones left (a placeholder
//! is never looked into again, so a name list containing "email" cannot hit `[EMAIL]`):
//!
//! 1. `EMAIL` first: its local part may hold digits, names or a number that looks like a card
//!    or a phone; replacing those first would leave the rest of the address behind.
//! 2. `IBAN` before `CARD`: the digit groups of an IBAN's BBAN can pass the Luhn check by chance
//!    and would be labelled as a card, leaving the country code behind.
//! 3. `CARD` before `SSN`, `IP` and `PHONE`: a spaced or dashed card number looks like a phone.
//! 4. `SSN` before `PHONE`: `ddd-dd-dddd` has the nine digits of a phone number.
//! 5. `IP` (IPv6, then IPv4) before `PHONE`: dotted octets would otherwise read as a phone, and
//!    an IPv6 address may embed an IPv4 one.
//! 6. `PHONE`: the loosest built-in format, so it goes last among them.
//! 7. Custom patterns from the config, in config order: after the built-ins, so that a broad
//!    pattern cannot cut an e-mail address or a card number in two and leave half of it.
//! 8. `NAME` last: names are often part of e-mail addresses (`jane.doe@…`), which step 1 has
//!    already replaced whole.
//!
//! Every detector checks that a match stands alone: a letter, digit or `_` right before or after
//! it (or a `.`/`-` that continues a number) means it is part of something else, such as an
//! order number, and it is left alone. Card numbers, IBANs, SSNs and IPs are also checked for
//! validity (Luhn, mod-97, the SSA's never-issued ranges, octets ≤ 255), so look-alikes that fail
//! the check are kept: a wrong number teaches the model nothing personal, and keeping it keeps
//! the text intact. A look-alike in the exact format of its type (a grouped card number, an
//! IBAN, `ddd-dd-dddd`) is also hidden from the detectors after it, so a mistyped IBAN is not
//! half-replaced as a card or a phone number.

use std::collections::BTreeMap;
use std::ops::Range;

use regex::Regex;

use super::config::{AnonymizeConfig, ConfigError};

/// Replacements made, by placeholder label (`"EMAIL"` → 3). Sorted for a stable report.
pub type PiiCounts = BTreeMap<String, usize>;

/// The compiled detectors. Building one compiles the regexes once; reuse it for every document.
#[derive(Debug)]
pub struct Anonymizer {
    email: Regex,
    iban_run: Regex,
    card_run: Regex,
    ssn: Regex,
    ipv6_run: Regex,
    ipv4: Regex,
    phone: Regex,
    custom: Vec<(String, Regex)>,
    names: Option<Regex>,
}

/// A piece of the text being anonymized: untouched text (a byte range of the input), a
/// placeholder, or text a detector claimed and kept as it is. Later detectors only look at
/// `Text`.
enum Piece<'a> {
    Text(Range<usize>),
    Placeholder(&'a str),
    Kept(Range<usize>),
}

/// What a detector found in a piece of text (byte ranges relative to the piece).
enum Hit {
    /// Personal data: replaced by the placeholder.
    Replace(Range<usize>),
    /// A look-alike in this detector's exact format that fails its check (an IBAN with a wrong
    /// checksum, an SSN in a never-issued range). It is kept as written and hidden from the
    /// looser detectors that follow, which would otherwise take its digits for a card or a
    /// phone number.
    Keep(Range<usize>),
}

/// Every range as personal data.
fn replace_all(ranges: impl IntoIterator<Item = Range<usize>>) -> Vec<Hit> {
    ranges.into_iter().map(Hit::Replace).collect()
}

impl Anonymizer {
    /// Compiles the built-in detectors and the config's patterns and names.
    pub fn new(config: &AnonymizeConfig) -> Result<Self, ConfigError> {
        // The built-in regexes are constants; a failure here is a bug, caught by every test.
        let re = |s: &str| Regex::new(s).expect("built-in PII regex");
        let mut custom = Vec::with_capacity(config.patterns.len());
        for (i, p) in config.patterns.iter().enumerate() {
            let regex = Regex::new(&p.regex)
                .map_err(|e| ConfigError::Invalid(format!("anonymize.patterns[{i}].regex: {e}")))?;
            custom.push((p.label.clone(), regex));
        }
        let names = if config.names.is_empty() {
            None
        } else {
            // Longest first: the regex takes the first alternative that matches, and
            // "Anna Maria" must win over "Anna".
            let mut names: Vec<&str> = config.names.iter().map(|n| n.trim()).collect();
            names.sort_by(|a, b| b.chars().count().cmp(&a.chars().count()).then(a.cmp(b)));
            names.dedup();
            let alternatives: Vec<String> = names
                .iter()
                .map(|n| {
                    n.split_whitespace()
                        .map(regex::escape)
                        .collect::<Vec<_>>()
                        .join("[ \\t]+")
                })
                .collect();
            let pattern = format!("(?i)(?:{})", alternatives.join("|"));
            Some(
                Regex::new(&pattern)
                    .map_err(|e| ConfigError::Invalid(format!("anonymize.names: {e}")))?,
            )
        };
        Ok(Self {
            // Letters and digits of any script in the local part and domain: German and French
            // companies do have `müller@…` addresses. The top-level domain is letters only, so a
            // sentence's final dot is not taken.
            email: re(
                r"[\p{L}\p{N}._%+\-]+@[\p{L}\p{N}](?:[\p{L}\p{N}\-]*[\p{L}\p{N}])?(?:\.[\p{L}\p{N}](?:[\p{L}\p{N}\-]*[\p{L}\p{N}])?)*\.\p{L}{2,}",
            ),
            // A run that starts like an IBAN: the exact extent is decided by `find_ibans`.
            // Upper or lower case, not mixed: prose words are mixed case, account numbers not.
            iban_run: re(
                r"[A-Z]{2}[0-9]{2}[A-Z0-9]*(?: [A-Z0-9]+)*|[a-z]{2}[0-9]{2}[a-z0-9]*(?: [a-z0-9]+)*",
            ),
            // Digits with single spaces or dashes between groups; `find_cards` picks the card.
            card_run: re(r"[0-9]+(?:[ \-][0-9]+)*"),
            ssn: re(r"[0-9]{3}-[0-9]{2}-[0-9]{4}"),
            ipv6_run: re(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"),
            ipv4: re(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"),
            phone: re(PHONE_PATTERN),
            custom,
            names,
        })
    }

    /// Replaces the personal data in `text` and adds what it replaced to `counts`.
    pub fn anonymize(&self, text: &str, counts: &mut PiiCounts) -> String {
        let mut pieces = vec![Piece::Text(0..text.len())];
        self.pass(text, &mut pieces, "EMAIL", counts, |s| {
            replace_all(self.email.find_iter(s).map(|m| m.range()))
        });
        self.pass(text, &mut pieces, "IBAN", counts, |s| self.find_ibans(s));
        self.pass(text, &mut pieces, "CARD", counts, |s| self.find_cards(s));
        self.pass(text, &mut pieces, "SSN", counts, |s| {
            find_accepted(&self.ssn, s, |r| standalone(s, r, NUMBER_JOINERS))
                .into_iter()
                .map(|r| {
                    if ssn_valid(&s[r.clone()]) {
                        Hit::Replace(r)
                    } else {
                        Hit::Keep(r)
                    }
                })
                .collect()
        });
        self.pass(text, &mut pieces, "IP", counts, |s| {
            let mut found = self.find_ipv6(s);
            found.extend(find_accepted(&self.ipv4, s, |r| {
                // Only a `.` continues a dotted quad; a port (`:8080`) or a prefix (`/24`) may
                // follow it.
                standalone(s, r.clone(), &['.']) && ipv4_valid(&s[r])
            }));
            replace_all(remove_overlaps(found))
        });
        self.pass(text, &mut pieces, "PHONE", counts, |s| {
            replace_all(self.find_phones(s))
        });
        for (label, regex) in &self.custom {
            self.pass(text, &mut pieces, label, counts, |s| {
                replace_all(
                    regex
                        .find_iter(s)
                        .filter(|m| !m.is_empty())
                        .map(|m| m.range()),
                )
            });
        }
        if let Some(names) = &self.names {
            self.pass(text, &mut pieces, "NAME", counts, |s| {
                replace_all(find_accepted(names, s, |r| standalone(s, r, &[])))
            });
        }

        let mut out = String::with_capacity(text.len());
        for piece in &pieces {
            match piece {
                Piece::Text(r) | Piece::Kept(r) => out.push_str(&text[r.clone()]),
                Piece::Placeholder(label) => {
                    out.push('[');
                    out.push_str(label);
                    out.push(']');
                }
            }
        }
        out
    }

    /// Runs one detector over every untouched piece and splits the pieces at its matches.
    fn pass<'a>(
        &self,
        text: &str,
        pieces: &mut Vec<Piece<'a>>,
        label: &'a str,
        counts: &mut PiiCounts,
        find: impl Fn(&str) -> Vec<Hit>,
    ) {
        let mut out = Vec::with_capacity(pieces.len());
        let mut replaced = 0;
        for piece in pieces.drain(..) {
            let Piece::Text(range) = piece else {
                out.push(piece);
                continue;
            };
            let base = range.start;
            let mut at = base;
            for hit in find(&text[range.clone()]) {
                let found = match &hit {
                    Hit::Replace(r) | Hit::Keep(r) => base + r.start..base + r.end,
                };
                if found.start > at {
                    out.push(Piece::Text(at..found.start));
                }
                at = found.end;
                if let Hit::Replace(_) = hit {
                    out.push(Piece::Placeholder(label));
                    replaced += 1;
                } else {
                    out.push(Piece::Kept(found));
                }
            }
            if at < range.end {
                out.push(Piece::Text(at..range.end));
            }
        }
        *pieces = out;
        if replaced > 0 {
            *counts.entry(label.to_string()).or_default() += replaced;
        }
    }

    /// IBANs: a run of upper-case letters and digits starting with a country code and check
    /// digits, compact or in groups of four separated by single spaces. The longest prefix of
    /// the run (ending at a group boundary) that is a valid IBAN wins, so an upper-case word
    /// after the number ("… 0130 00 EUR") does not hide it. Failing that, the longest prefix
    /// in IBAN format is kept as a look-alike.
    fn find_ibans(&self, s: &str) -> Vec<Hit> {
        let mut out = Vec::new();
        for run in self.iban_run.find_iter(s) {
            let groups = groups_of(s, run.range(), |c| c.is_ascii_alphanumeric());
            let mut i = 0;
            while i < groups.len() {
                let start = groups[i].start;
                let starts_like_iban = s.as_bytes()[start..].get(..4).is_some_and(|b| {
                    b[..2].iter().all(u8::is_ascii_alphabetic)
                        && b[2..].iter().all(u8::is_ascii_digit)
                });
                if !starts_like_iban {
                    i += 1;
                    continue;
                }
                let longest = |ok: fn(&str) -> bool| {
                    (i..groups.len()).rev().find(|&j| {
                        let r = start..groups[j].end;
                        standalone(s, r.clone(), &[]) && ok(&s[r])
                    })
                };
                if let Some(j) = longest(iban_valid) {
                    out.push(Hit::Replace(start..groups[j].end));
                    i = j + 1;
                } else if let Some(j) = longest(iban_look_alike) {
                    out.push(Hit::Keep(start..groups[j].end));
                    i = j + 1;
                } else {
                    i += 1;
                }
            }
        }
        out
    }

    /// Card numbers: 13–19 digits, optionally grouped by single spaces or by single dashes (one
    /// kind per number), starting with an issuer digit 2–6, Luhn-valid. Within a run of digit
    /// groups the leftmost, then longest, valid span wins, so a card followed by a year or
    /// preceded by a date is still found. A span grouped like a card (4-4-4-4, 4-6-5) that
    /// fails Luhn is kept as a look-alike.
    fn find_cards(&self, s: &str) -> Vec<Hit> {
        let mut out = Vec::new();
        for run in self.card_run.find_iter(s) {
            // After a `+` it is an international phone number, whatever its checksum.
            if !standalone(s, run.range(), NUMBER_JOINERS) || s[..run.start()].ends_with('+') {
                continue;
            }
            let groups = groups_of(s, run.range(), |c| c.is_ascii_digit());
            let mut i = 0;
            while i < groups.len() {
                let mut digits = 0;
                let mut last = i;
                while last < groups.len() && digits + groups[last].len() <= 19 {
                    digits += groups[last].len();
                    last += 1;
                }
                let span = |j: usize| groups[i].start..groups[j].end;
                if let Some(j) = (i..last).rev().find(|&j| card_valid(&s[span(j)])) {
                    out.push(Hit::Replace(span(j)));
                    i = j + 1;
                } else if let Some(j) = (i..last).rev().find(|&j| card_shaped(&s[span(j)])) {
                    out.push(Hit::Keep(span(j)));
                    i = j + 1;
                } else {
                    i += 1;
                }
            }
        }
        out
    }

    /// IPv6 addresses, validated by the standard library's parser (which knows `::`
    /// compression and embedded IPv4). A trailing `.` or `:` is tried without, for an address
    /// at the end of a sentence or before a colon.
    fn find_ipv6(&self, s: &str) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        for run in self.ipv6_run.find_iter(s) {
            let r = run.range();
            // A letter right before or after (`std::vector`) means this is not an address.
            if !standalone(s, r.clone(), &[]) {
                continue;
            }
            let text = run.as_str();
            let trimmed = text.trim_end_matches(['.', ':']);
            for candidate in [text, trimmed] {
                if candidate.matches(':').count() >= 2
                    && candidate.parse::<std::net::Ipv6Addr>().is_ok()
                {
                    out.push(r.start..r.start + candidate.len());
                    break;
                }
            }
        }
        out
    }

    /// Phone numbers: see [`PHONE_PATTERN`] for the formats. A match is shortened group by
    /// group from the end until it passes [`phone_valid`], so a number followed by another
    /// figure ("+44 20 7946 0958 2024") is still found.
    fn find_phones(&self, s: &str) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(m) = self.phone.find_at(s, at) {
            let start = m.start();
            // Right after another group of digits ("3704 0044 0532 …"), a candidate is the tail
            // of a longer figure; right after a word and a dash or slash ("EMP-0806011",
            // "ref/0171234567"), the end of an identifier. Neither is a phone number.
            let mut before = s[..start].chars().rev();
            let tail_of_figure = matches!(before.clone().next(), Some(' ' | '.' | '-' | '/'))
                && before.nth(1).is_some_and(|c| c.is_ascii_digit());
            let mut before = s[..start].chars().rev();
            let tail_of_word = matches!(before.next(), Some('.' | '-' | '/' | '_'))
                && before.next().is_some_and(char::is_alphanumeric);
            if tail_of_figure || tail_of_word {
                at = next_char_boundary(s, start);
                continue;
            }
            let ends: Vec<usize> = groups_of(s, m.range(), |c| c.is_ascii_digit())
                .iter()
                .map(|g| g.end)
                .collect();
            let found = ends.iter().rev().find(|&&end| {
                let r = start..end;
                standalone(s, r.clone(), NUMBER_JOINERS) && phone_valid(&s[r])
            });
            match found {
                Some(&end) => {
                    out.push(start..end);
                    at = end;
                }
                None => at = next_char_boundary(s, start),
            }
        }
        out
    }
}

/// Characters that join two numbers into one (`12.345`, `2024-01`, `1/2`, `1,5`): a number
/// candidate next to one of these, with a digit on the other side, is part of a longer number.
const NUMBER_JOINERS: &[char] = &['.', '-', '/', ',', ':'];

/// Phone number candidates; [`phone_valid`] decides. Separators are a single space, dot or dash.
/// Plain digit runs without `+`, a leading `0` or a parenthesised area code are not taken
/// (`5551234567` could as well be an order number), which misses some unformatted numbers.
pub const PHONE_PATTERN: &str = r"(?x)
    # International: +CC or 00CC, an optional (0) trunk mark, then groups, e.g.
    # +1 (555) 123-4567, +44 20 7946 0958, +49 (0)30 1234567, 0049 30 1234567.
    (?: \+ | 00 ) [1-9][0-9]{0,2}
    (?: [\ .\-]? \(0\) )?
    (?: [\ .\-]? (?: \([0-9]{1,5}\) | [0-9]{1,5} ) ){1,6}
  |
    # Area code in parentheses: (555) 123-4567, (030) 1234567.
    \( [0-9]{2,5} \) [\ .\-]? [0-9]{2,8} (?: [\ .\-] [0-9]{2,8} ){0,3}
  |
    # National with trunk prefix 0: 030 1234567, 0171-1234567, 030/1234567, 020 7946 0958,
    # 01 23 45 67 89, 01711234567.
    0[1-9][0-9]{0,4} [\ /.\-]? [0-9]{2,8} (?: [\ .\-] [0-9]{2,8} ){0,4}
  |
    # North American without parentheses: 555-123-4567, 555.123.4567, 555 123 4567.
    [2-9][0-9]{2} [\ .\-] [0-9]{3} [\ .\-] [0-9]{4}
  |
    # Local seven digits: 555-1234.
    [2-9][0-9]{2} - [0-9]{4}
";

/// Whether a phone candidate is one: 7 to 15 digits (E.164 allows at most 15; at least 10 after
/// a `00` international prefix), not a date
/// (`2024-01-15`, `15.01.2024`), not years (`1999-2024`), and, for a number without `+` or
/// parentheses, one kind of separator throughout (`555.123-4567` is not a phone number).
pub fn phone_valid(candidate: &str) -> bool {
    let groups: Vec<&str> = candidate
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    let digits: usize = groups.iter().map(|g| g.len()).sum();
    if !(7..=15).contains(&digits) {
        return false;
    }
    // "00" + country code + a national number of at least seven digits.
    if candidate.starts_with("00") && digits < 10 {
        return false;
    }
    let international = candidate.starts_with('+') || candidate.contains('(');
    if !international {
        let mut seps = candidate.chars().filter(|c| !c.is_ascii_digit());
        if let Some(first) = seps.next() {
            if seps.any(|c| c != first) {
                return false;
            }
        }
    }
    let num = |g: &str| g.parse::<u32>().unwrap_or(u32::MAX);
    let is_year = |g: &str| g.len() == 4 && (1900..=2099).contains(&num(g));
    if groups.iter().all(|g| is_year(g)) {
        return false;
    }
    if groups.len() == 3 {
        let (a, b, c) = (groups[0], groups[1], groups[2]);
        let day_month = |d: &str, m: &str| {
            d.len() <= 2 && m.len() <= 2 && (1..=31).contains(&num(d)) && (1..=12).contains(&num(m))
        };
        let year_first = is_year(a) && (day_month(c, b) || day_month(b, c));
        let year_last = (c.len() == 2 || is_year(c)) && (day_month(a, b) || day_month(b, a));
        if !international && (year_first || year_last) {
            return false;
        }
    }
    true
}

/// Luhn checksum over the digits of `number` (other characters are skipped); false when there
/// are no digits.
pub fn luhn_valid(number: &str) -> bool {
    let digits: Vec<u32> = number.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `candidate` is a card number: 13–19 digits, grouped by spaces or by dashes (not a
/// mix), first digit 2–6 (the issuer ranges of Mastercard, Amex/JCB/Diners, Visa, Mastercard,
/// Discover/UnionPay/Maestro; this keeps ISBN-13s, which start with 978/979, out), Luhn-valid.
pub fn card_valid(candidate: &str) -> bool {
    let digits = candidate.chars().filter(char::is_ascii_digit).count();
    let mut seps = candidate.chars().filter(|c| !c.is_ascii_digit());
    let consistent = match seps.next() {
        None => true,
        Some(first) => (first == ' ' || first == '-') && seps.all(|c| c == first),
    };
    (13..=19).contains(&digits)
        && consistent
        && candidate.starts_with(['2', '3', '4', '5', '6'])
        && luhn_valid(candidate)
}

/// Whether `candidate` is grouped like a card number: 13–19 digits starting with 2–6, in groups
/// of four separated by one kind of separator (the last group may be shorter), or the 4-6-5 /
/// 4-6-4 grouping of Amex and Diners. The checksum is not looked at.
pub fn card_shaped(candidate: &str) -> bool {
    let mut seps = candidate.chars().filter(|c| !c.is_ascii_digit());
    let Some(sep) = seps.next() else {
        return false;
    };
    if !(sep == ' ' || sep == '-') || seps.any(|c| c != sep) {
        return false;
    }
    let sizes: Vec<usize> = candidate.split(sep).map(str::len).collect();
    let digits: usize = sizes.iter().sum();
    let (last, full) = sizes.split_last().expect("split yields one item");
    let fours = full.iter().all(|&n| n == 4) && (1..=4).contains(last);
    (13..=19).contains(&digits)
        && candidate.starts_with(['2', '3', '4', '5', '6'])
        && (fours || sizes == [4, 6, 5] || sizes == [4, 6, 4])
}

/// IBAN lengths by country, from the SWIFT IBAN registry (ISO 13616). A country not listed
/// gets the general 15–34 range; a listed one must match exactly, which stops a prefix of a
/// mistyped IBAN from passing mod-97 by chance (one in 97) as a shorter "IBAN".
#[rustfmt::skip]
pub const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16),
    ("BG", 22), ("BH", 22), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22), ("CY", 28),
    ("CZ", 24), ("DE", 22), ("DK", 18), ("DO", 28), ("EE", 20), ("EG", 29), ("ES", 24),
    ("FI", 18), ("FO", 18), ("FR", 27), ("GB", 22), ("GE", 22), ("GI", 23), ("GL", 18),
    ("GR", 27), ("GT", 28), ("HR", 21), ("HU", 28), ("IE", 22), ("IL", 23), ("IQ", 23),
    ("IS", 26), ("IT", 27), ("JO", 30), ("KW", 30), ("KZ", 20), ("LB", 28), ("LC", 32),
    ("LI", 21), ("LT", 20), ("LU", 20), ("LV", 21), ("MC", 27), ("MD", 24), ("ME", 22),
    ("MK", 19), ("MR", 27), ("MT", 31), ("MU", 30), ("NL", 18), ("NO", 15), ("PK", 24),
    ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22), ("SA", 24),
    ("SC", 31), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27), ("ST", 25), ("SV", 28),
    ("TL", 23), ("TN", 24), ("TR", 26), ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20),
];

/// Whether `candidate` is written like an IBAN (country code, two digits, letters and digits,
/// 15–34 characters, compact or in groups of four; letters all upper or all lower case),
/// whatever its checksum.
pub fn iban_shaped(candidate: &str) -> bool {
    let lower = candidate.bytes().any(|b| b.is_ascii_lowercase());
    let upper = candidate.bytes().any(|b| b.is_ascii_uppercase());
    if lower && upper {
        return false;
    }
    let candidate = candidate.to_ascii_uppercase();
    if candidate.contains(' ') {
        let groups: Vec<&str> = candidate.split(' ').collect();
        let (last, full) = groups.split_last().expect("split yields one item");
        if full.iter().any(|g| g.len() != 4) || last.is_empty() || last.len() > 4 {
            return false;
        }
    }
    let compact: Vec<u8> = candidate.bytes().filter(|&b| b != b' ').collect();
    (15..=34).contains(&compact.len())
        && compact[..2].iter().all(u8::is_ascii_uppercase)
        && compact[2..4].iter().all(u8::is_ascii_digit)
        && compact[4..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Whether `candidate` is a mistyped IBAN worth keeping away from the later detectors: in IBAN
/// format, upper case (as IBANs are printed), and with at least as many digits as letters
/// after the check digits. Lower-case prose of four-letter words ("ab12 this that with from")
/// is in IBAN format too, and must stay visible to the other detectors.
fn iban_look_alike(candidate: &str) -> bool {
    let bban = candidate.get(4..).unwrap_or("");
    let digits = bban.bytes().filter(u8::is_ascii_digit).count();
    let letters = bban.bytes().filter(u8::is_ascii_alphabetic).count();
    iban_shaped(candidate)
        && !candidate.bytes().any(|b| b.is_ascii_lowercase())
        && digits >= letters
}

/// Whether `candidate` is an IBAN: two letters, two check digits (02–98), then letters and
/// digits, 15 to 34 characters in all, letters all upper or all lower case; compact, or in
/// groups of four
/// separated by single spaces (the last group may be shorter); the length registered for the
/// country when it is in [`IBAN_LENGTHS`]; and the ISO 13616 mod-97 check gives 1.
pub fn iban_valid(candidate: &str) -> bool {
    if !iban_shaped(candidate) {
        return false;
    }
    let candidate = candidate.to_ascii_uppercase();
    let compact: Vec<u8> = candidate.bytes().filter(|&b| b != b' ').collect();
    let country = &candidate[..2];
    if let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| *c == country) {
        if compact.len() != len {
            return false;
        }
    }
    let check = u32::from(compact[2] - b'0') * 10 + u32::from(compact[3] - b'0');
    if !(2..=98).contains(&check) {
        return false;
    }
    // Move the first four characters to the end, read letters as 10..35, and reduce mod 97 as
    // we go so the number never overflows.
    let mut rem: u32 = 0;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let value = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        rem = if value >= 10 {
            (rem * 100 + value) % 97
        } else {
            (rem * 10 + value) % 97
        };
    }
    rem == 1
}

/// Whether `candidate` (`ddd-dd-dddd`) is a US Social Security number that can have been
/// issued: the area is not 000, 666 or 900–999, the group is not 00 and the serial not 0000.
pub fn ssn_valid(candidate: &str) -> bool {
    let parts: Vec<&str> = candidate.split('-').collect();
    let [area, group, serial] = parts.as_slice() else {
        return false;
    };
    let shape = area.len() == 3 && group.len() == 2 && serial.len() == 4;
    let all_digits = parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if !shape || !all_digits {
        return false;
    }
    let area: u32 = area.parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && *group != "00" && *serial != "0000"
}

/// Whether a dotted quad has every octet ≤ 255.
pub fn ipv4_valid(candidate: &str) -> bool {
    let octets: Vec<&str> = candidate.split('.').collect();
    octets.len() == 4
        && octets
            .iter()
            .all(|o| !o.is_empty() && o.len() <= 3 && o.parse::<u16>().is_ok_and(|v| v <= 255))
}

/// Whether `s[range]` stands alone: no letter, digit or `_` right before or after it, and no
/// joiner (for numbers: `.`, `-`, …) that continues it into another number.
fn standalone(s: &str, range: Range<usize>, joiners: &[char]) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut before = s[..range.start].chars().rev();
    let ok_before = match before.next() {
        None => true,
        Some(c) if word(c) => false,
        Some(c) if joiners.contains(&c) => !before.next().is_some_and(|d| d.is_ascii_digit()),
        Some(_) => true,
    };
    let mut after = s[range.end..].chars();
    let ok_after = match after.next() {
        None => true,
        Some(c) if word(c) => false,
        Some(c) if joiners.contains(&c) => !after.next().is_some_and(|d| d.is_ascii_digit()),
        Some(_) => true,
    };
    ok_before && ok_after
}

/// All non-overlapping matches of `re` that `accept` takes. A rejected match is retried one
/// character later, so a rejected long candidate does not hide a valid one inside it.
fn find_accepted(re: &Regex, s: &str, accept: impl Fn(Range<usize>) -> bool) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(m) = re.find_at(s, at) {
        if !m.is_empty() && accept(m.range()) {
            out.push(m.range());
            at = m.end();
        } else {
            at = next_char_boundary(s, m.start());
        }
        if at >= s.len() {
            break;
        }
    }
    out
}

fn next_char_boundary(s: &str, i: usize) -> usize {
    i + s[i..].chars().next().map_or(1, char::len_utf8)
}

/// The byte ranges of the maximal runs of `member` characters within `range`.
fn groups_of(s: &str, range: Range<usize>, member: impl Fn(char) -> bool) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = None;
    for (i, c) in s[range.clone()].char_indices() {
        let i = range.start + i;
        match (member(c), start) {
            (true, None) => start = Some(i),
            (false, Some(st)) => {
                groups.push(st..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(st) = start {
        groups.push(st..range.end);
    }
    groups
}

/// Sorts ranges and drops any that overlaps an earlier one.
fn remove_overlaps(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if out.last().is_none_or(|l| r.start >= l.end) {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(text: &str) -> String {
        let a = Anonymizer::new(&AnonymizeConfig::default()).unwrap();
        a.anonymize(text, &mut PiiCounts::new())
    }

    #[test]
    fn phones_and_their_look_alikes() {
        for phone in [
            "+1 (555) 123-4567",
            "+44 20 7946 0958",
            "+49 (0)30 1234567",
            "+4915112345678",
            "0049 30 1234567",
            "(555) 123-4567",
            "030 1234567",
            "0171/1234567",
            "01 23 45 67 89",
            "555-123-4567",
            "555.123.4567",
            "555-1234",
        ] {
            assert_eq!(
                anon(&format!("call {phone} now")),
                "call [PHONE] now",
                "{phone}"
            );
        }
        for keep in [
            "on 2024-01-15 we",
            "on 15.01.2024 we",
            "from 1999-2024 we",
            "in 2024 we",
            "costs 1.234.567 EUR",
            "version 1.2.3 is",
            "order 5551234567 is",
            "at 10:30 we",
        ] {
            assert_eq!(anon(keep), keep);
        }
        assert_eq!(anon("+44 20 7946 0958 2024"), "[PHONE] 2024");
    }

    #[test]
    fn ips() {
        assert_eq!(anon("host 192.168.1.10."), "host [IP].");
        assert_eq!(
            anon("net 10.0.0.0/8 and 10.1.2.3:8080"),
            "net [IP]/8 and [IP]:8080"
        );
        assert_eq!(
            anon("bad 256.1.1.1 and 1.2.3.4.5"),
            "bad 256.1.1.1 and 1.2.3.4.5"
        );
        assert_eq!(anon("v6 fe80::1ff:fe23:4567:890a, ok"), "v6 [IP], ok");
        assert_eq!(anon("map ::ffff:192.0.2.1 end"), "map [IP] end");
        assert_eq!(anon("std::vector at 10:30:45"), "std::vector at 10:30:45");
        // The address ends in "ff99", and "ff99 send send from review" is in IBAN format.
        assert_eq!(
            anon("office beed:131:ce83:3b9d:d029:feff:8fb8:ff99 send send from review"),
            "office [IP] send send from review"
        );
    }

    #[test]
    fn ibans_with_trailing_words() {
        assert_eq!(
            anon("pay DE89 3704 0044 0532 0130 00 EUR now"),
            "pay [IBAN] EUR now"
        );
        assert_eq!(anon("GB82WEST12345698765432."), "[IBAN].");
        assert_eq!(anon("GB82WEST12345698765433"), "GB82WEST12345698765433");
        // A wrong check digit: neither an IBAN nor, in pieces, a card or a phone number.
        let typo = "pay DE88 3704 0044 0532 0130 00 now";
        assert_eq!(anon(typo), typo);
    }

    #[test]
    fn cards_next_to_other_numbers() {
        assert_eq!(
            anon("2024-01-15 4111 1111 1111 1111 2025"),
            "2024-01-15 [CARD] 2025"
        );
        assert_eq!(anon("isbn 978-3-16-148410-0"), "isbn 978-3-16-148410-0");
    }

    #[test]
    fn random_text_never_panics_or_crosses_lines() {
        // Digits, separators and multi-byte characters in random order: every detector slices
        // by byte offsets, so this checks that they only ever cut at character boundaries.
        let alphabet: Vec<char> = "0123456789 -./:@+()_,\nABCDEFabcdefxyzé€ü"
            .chars()
            .collect();
        let a = Anonymizer::new(&AnonymizeConfig {
            names: vec!["élise".into(), "b c".into()],
            ..Default::default()
        })
        .unwrap();
        let mut state = 1u64;
        for _ in 0..3000 {
            let text: String = (0..64)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    alphabet[(state >> 33) as usize % alphabet.len()]
                })
                .collect();
            let out = a.anonymize(&text, &mut PiiCounts::new());
            assert_eq!(
                out.matches('\n').count(),
                text.matches('\n').count(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn placeholders_are_not_looked_into() {
        let a = Anonymizer::new(&AnonymizeConfig {
            names: vec!["email".into(), "Anna Maria".into(), "Anna".into()],
            ..Default::default()
        })
        .unwrap();
        let mut counts = PiiCounts::new();
        let out = a.anonymize(
            "anna.maria@firma.de, ANNA  MARIA and Anna; Annabelle",
            &mut counts,
        );
        assert_eq!(out, "[EMAIL], [NAME] and [NAME]; Annabelle");
        assert_eq!(counts["EMAIL"], 1);
        assert_eq!(counts["NAME"], 2);
    }
}
