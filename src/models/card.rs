//! The model card: a self-contained HTML page (or Markdown) describing a stored model from its
//! manifest and provenance (issue 17, point 7).

use super::Manifest;

/// The card's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardFormat {
    /// One self-contained HTML page.
    Html,
    /// GitHub-flavoured Markdown.
    Markdown,
}

impl std::str::FromStr for CardFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "html" => Ok(CardFormat::Html),
            "md" | "markdown" => Ok(CardFormat::Markdown),
            other => Err(format!("unknown card format {other:?}: use html or md")),
        }
    }
}

/// Renders the card for `manifest`.
pub fn render(manifest: &Manifest, format: CardFormat) -> String {
    let _ = (manifest, format);
    String::new()
}
