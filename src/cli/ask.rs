//! `inhouse ask COLLECTION "question"`: an answer from a collection's documents, with its
//! sources. A thin layer over `POST /v1/responses` with the `file_search` tool (the search runs
//! on the daemon, as the caller's uid, so only chunks the caller may read are ever used).
//!
//! COLLECTION is a vector store id (`vs_…`) or a name, looked up among the stores the caller may
//! read (`GET /v1/vector_stores`); a name two of them share is refused with their ids. The
//! answer streams to stdout, then `Sources:` lists each source the answer cites, numbered as
//! the model saw it (the `[n]` in the answer): its file, the chunk's place in the file's
//! cleaned text and the cited sentence.

use crate::client::{error_message, Client, ClientError, SseParser};
use anyhow::{bail, Context, Result};
use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;

/// `inhouse ask` arguments.
#[derive(clap::Args, Debug)]
pub(super) struct AskArgs {
    /// A vector store id (`vs_…`) or the name of a collection you may read.
    collection: String,
    /// The question.
    question: String,
    /// The model that answers (default: the first chat model the daemon serves).
    #[arg(long)]
    model: Option<String>,
    /// Most chunks retrieved (1 to 50; the daemon's default is 5).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    max_results: Option<u32>,
    /// Print the response object (JSON) instead of the answer and its sources.
    #[arg(long)]
    json: bool,
}

/// One entry of `GET /v1/vector_stores` (only what `ask` reads).
#[derive(Debug, Deserialize)]
struct StoreEntry {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

/// A page of `GET /v1/vector_stores`.
#[derive(Debug, Deserialize)]
struct StorePage {
    data: Vec<StoreEntry>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

/// One `file_citation` annotation (only what `ask` prints).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct Cited {
    file_id: String,
    filename: String,
    #[serde(default)]
    quote: String,
    #[serde(default)]
    chunk_index: Option<u32>,
    #[serde(default)]
    start: Option<usize>,
    #[serde(default)]
    end: Option<usize>,
}

/// One search result of the `file_search_call` item.
#[derive(Debug, Deserialize)]
struct Found {
    file_id: String,
    #[serde(default)]
    chunk_index: Option<u32>,
}

/// Runs `inhouse ask`.
pub(super) async fn run(client: &Client, a: AskArgs) -> Result<()> {
    let store = resolve_collection(client, &a.collection).await?;
    let model = match a.model {
        Some(m) => m,
        None => default_model(client).await?,
    };
    let mut tool = json!({"type": "file_search", "vector_store_ids": [store]});
    if let Some(n) = a.max_results {
        tool["max_num_results"] = json!(n);
    }
    // Greedy: an answer from the documents is the same each time the question is asked.
    let body = json!({"model": model, "input": a.question, "tools": [tool], "temperature": 0,
        "include": ["file_search_call.results"], "stream": !a.json});
    if a.json {
        let v = client
            .json(Method::POST, "/v1/responses", Some(&body))
            .await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut out = std::io::stdout();
    let response = stream(client, &body, |t| {
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
    })
    .await?;
    println!();
    print!("{}", sources_text(&response)?);
    Ok(())
}

/// The id of the collection `name_or_id` names: an id as it is, a name looked up among the
/// stores the caller may read.
async fn resolve_collection(client: &Client, name_or_id: &str) -> Result<String> {
    if name_or_id.starts_with("vs_") {
        return Ok(name_or_id.to_string());
    }
    let mut stores = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => "/v1/vector_stores?limit=100".to_string(),
            Some(a) => format!("/v1/vector_stores?limit=100&after={a}"),
        };
        let v = client.json(Method::GET, &path, None).await?;
        let page: StorePage = super::typed("the vector store list", &v)?;
        let more = page.has_more && page.last_id.is_some() && !page.data.is_empty();
        after = page.last_id;
        stores.extend(page.data);
        if !more {
            break;
        }
    }
    pick_collection(name_or_id, &stores)
}

/// The one store named `name`, or why there is none.
fn pick_collection(name: &str, stores: &[StoreEntry]) -> Result<String> {
    let ids: Vec<&str> = stores
        .iter()
        .filter(|s| s.name.as_deref() == Some(name))
        .map(|s| s.id.as_str())
        .collect();
    match ids.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("no vector store you may read is named {name:?} (give its vs_… id, or see GET /v1/vector_stores)"),
        many => bail!(
            "{} vector stores you may read are named {name:?}: {}; give one's id",
            many.len(),
            many.join(", ")
        ),
    }
}

/// The first chat model served (in `/v1/models` order): the daemon has no default model, and an
/// embedding model cannot answer.
async fn default_model(client: &Client) -> Result<String> {
    let served = client.served_models().await?;
    served
        .data
        .iter()
        .find(|m| m.meta.chat_template.is_some())
        .map(|m| m.id.clone())
        .context("the daemon serves no chat model; name one with --model")
}

/// Streams a response, calling `on_text` with each piece of its text; returns the final
/// response object.
async fn stream(client: &Client, body: &Value, mut on_text: impl FnMut(&str)) -> Result<Value> {
    let mut resp = client
        .send(
            Method::POST,
            "/v1/responses",
            Some(hyper::body::Bytes::from(body.to_string())),
        )
        .await?;
    if !resp.status.is_success() {
        let status = resp.status;
        let raw = resp.collect().await?;
        return Err(ClientError::Api {
            status,
            message: error_message(&raw),
        }
        .into());
    }
    let mut parser = SseParser::default();
    while let Some(chunk) = resp.next_chunk().await {
        for data in parser.push(&chunk?) {
            let v: Value = serde_json::from_str(&data).context("a response event is not JSON")?;
            match v["type"].as_str().unwrap_or("") {
                "response.output_text.delta" => on_text(v["delta"].as_str().unwrap_or("")),
                "response.completed" | "response.incomplete" => return Ok(v["response"].clone()),
                "response.failed" => bail!(
                    "the answer failed: {}",
                    v.pointer("/response/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                ),
                _ => {}
            }
        }
    }
    bail!("the answer's stream ended before response.completed")
}

/// The `Sources:` block of a response: each cited source once, numbered by its place among the
/// search's results (the number the model saw), with its file, place and quote.
pub(super) fn sources_text(response: &Value) -> Result<String> {
    let output = response["output"].as_array().cloned().unwrap_or_default();
    let found: Vec<Found> = output
        .iter()
        .find(|i| i["type"] == "file_search_call")
        .and_then(|i| i.get("results"))
        .filter(|r| r.is_array())
        .map(|r| super::typed("the search results", r))
        .transpose()?
        .unwrap_or_default();
    let mut cited: Vec<Cited> = Vec::new();
    for item in output.iter().filter(|i| i["type"] == "message") {
        for part in item["content"].as_array().into_iter().flatten() {
            for a in part["annotations"].as_array().into_iter().flatten() {
                if a["type"] != "file_citation" {
                    continue;
                }
                let c: Cited = super::typed("an annotation", a)?;
                let seen = cited
                    .iter()
                    .any(|o| o.file_id == c.file_id && o.chunk_index == c.chunk_index);
                if !seen {
                    cited.push(c);
                }
            }
        }
    }
    if cited.is_empty() {
        return Ok("Sources: none (the search found nothing this answer could cite)\n".into());
    }
    let mut out = String::from("\nSources:\n");
    for (k, c) in cited.iter().enumerate() {
        let n = found
            .iter()
            .position(|f| f.file_id == c.file_id && f.chunk_index == c.chunk_index)
            .map_or(k + 1, |p| p + 1);
        let place = match (c.chunk_index, c.start, c.end) {
            (Some(i), Some(s), Some(e)) => format!(", chunk {i} (bytes {s}..{e})"),
            (Some(i), _, _) => format!(", chunk {i}"),
            _ => String::new(),
        };
        out.push_str(&format!("[{n}] {}{place} ({})\n", c.filename, c.file_id));
        let q = short(&c.quote, 160);
        if !q.is_empty() {
            out.push_str(&format!("    \"{q}\"\n"));
        }
    }
    Ok(out)
}

/// `s` on one line, at most `max` characters.
fn short(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(max) {
        None => one,
        Some((cut, _)) => format!("{}…", &one[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(id: &str, name: Option<&str>) -> StoreEntry {
        StoreEntry {
            id: id.into(),
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn a_name_picks_the_one_store_so_named_and_an_ambiguous_one_is_refused() {
        let stores = [
            store("vs_a", Some("handbook")),
            store("vs_b", Some("policies")),
            store("vs_c", Some("policies")),
            store("vs_d", None),
        ];
        assert_eq!(pick_collection("handbook", &stores).unwrap(), "vs_a");
        let e = pick_collection("policies", &stores)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vs_b, vs_c"), "{e}");
        let e = pick_collection("other", &stores).unwrap_err().to_string();
        assert!(e.contains("no vector store"), "{e}");
    }

    #[test]
    fn sources_are_listed_once_numbered_as_the_model_saw_them() {
        let cite = |file: &str, chunk: u32| {
            json!({"type": "file_citation", "index": 3, "file_id": file,
                   "filename": format!("{file}.md"), "quote": "A  quoted\nsentence.",
                   "chunk_index": chunk, "start": 10, "end": 90, "vector_store_id": "vs_a"})
        };
        let r = json!({"output": [
            {"type": "file_search_call", "results": [
                {"file_id": "file-x", "chunk_index": 0}, {"file_id": "file-y", "chunk_index": 4}]},
            {"type": "message", "content": [{"type": "output_text", "text": "…",
                "annotations": [cite("file-y", 4), cite("file-x", 0), cite("file-y", 4)]}]}]});
        let text = sources_text(&r).unwrap();
        assert_eq!(
            text,
            "\nSources:\n[2] file-y.md, chunk 4 (bytes 10..90) (file-y)\n    \"A quoted sentence.\"\n\
             [1] file-x.md, chunk 0 (bytes 10..90) (file-x)\n    \"A quoted sentence.\"\n"
        );
        let none = json!({"output": [{"type": "message", "content": [{"type": "output_text",
            "text": "x", "annotations": []}]}]});
        assert!(sources_text(&none).unwrap().contains("none"));
    }
}
