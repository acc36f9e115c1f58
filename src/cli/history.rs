//! `inhouse history …`: the caller's own stored requests.

use super::output::date;
use super::print_json;
use crate::client::Client;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(super) enum HistoryCmd {
    /// Lists your records, newest first.
    List {
        /// Records per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only records older than this id (the previous page's next_before).
        #[arg(long)]
        before: Option<i64>,
        /// Print the API's answer (the page) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows one record with its prompt and response.
    Show {
        /// Record id.
        id: i64,
    },
    /// Deletes one record.
    Rm {
        /// Record id.
        id: i64,
    },
}

pub(super) async fn run(client: &Client, cmd: HistoryCmd) -> Result<()> {
    match cmd {
        HistoryCmd::List {
            limit,
            before,
            json,
        } => {
            let page = client.history(limit, before).await?;
            if json {
                return print_json(&page);
            }
            for r in &page.data {
                println!(
                    "{}\t{}\t{}\t{}\t{}+{} tokens",
                    r.id,
                    date(r.created_at),
                    r.model,
                    r.status.as_str(),
                    r.prompt_tokens,
                    r.completion_tokens
                );
            }
            if let Some(next) = page.next_before {
                eprintln!("more: --before {next}");
            }
        }
        HistoryCmd::Show { id } => print_json(&client.history_record(id).await?)?,
        HistoryCmd::Rm { id } => print_json(&client.delete_history(id).await?)?,
    }
    Ok(())
}
