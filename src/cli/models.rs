//! `inhouse models …`: the models served, the model store (list, import, show, rm), aliases
//! and promotion (alias set/list/rm, promote), model cards (card), what is in memory (ps), and
//! publisher keys (keygen, sign; offline).

use super::output::{date_u, mib, upload_bar};
use super::{check_requested_name, print_json};
use crate::client::{Client, ImportOptions};
use crate::wire::{ModelEntry, ModelList, Ps};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::sync::Arc;
// The one line that names where signatures live (moving to the formats crate).
use inhouse_formats::sign;

#[derive(Subcommand, Debug)]
pub(super) enum ModelsCmd {
    /// Every model, stored or configured, with its store details.
    List {
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Imports a GGUF file into the store (streamed through the socket). Its digest is checked
    /// against --sha256 or a PATH.sha256 file when there is one, and its signature (--signature
    /// or PATH.sig) against the daemon's trusted keys.
    Import {
        /// The GGUF file.
        path: PathBuf,
        /// Name to store it under.
        #[arg(long)]
        name: String,
        /// Import a LoRA adapter for this stored model (used as BASE+NAME).
        #[arg(long, value_name = "BASE")]
        adapter_for: Option<String>,
        /// The SHA-256 the file must have.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Signature file from `inhouse models sign` [default: PATH.sig when it exists].
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// One model in detail: architecture, parameters, quantization, context, template, size,
    /// digest, provenance, memory estimate.
    Show {
        /// Model name (or BASE+ADAPTER).
        name: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Removes a stored model (and its adapters) and unloads it.
    Rm {
        /// Model name.
        name: String,
    },
    /// Aliases: names clients ask for (`prod`) that point at a model and are moved, never
    /// overwritten. Requests follow a change at once; roll back with `alias set ALIAS OLD`.
    Alias {
        #[command(subcommand)]
        cmd: AliasCmd,
    },
    /// Points ALIAS at a model its evaluation gate blessed (an adapter: BASE+NAME). A candidate,
    /// a refused model or one with no gate result needs --force, which the audit log records.
    Promote {
        /// The stored model (or adapter) to promote.
        name: String,
        /// The alias to point at it, e.g. prod.
        #[arg(long, value_name = "ALIAS")]
        to: String,
        /// Promote it although its gate did not bless it (admin only; audited as forced).
        #[arg(long)]
        force: bool,
    },
    /// A stored model's card: provenance, loss curves, the gate's table, bias results,
    /// quantization. Rendered by the daemon, which records its SHA-256 in the audit log.
    Card {
        /// The stored model (or adapter).
        name: String,
        /// Write the card to this file [default: standard output].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// html (one self-contained page) or md (Markdown).
        #[arg(long, default_value = "html", value_parser = ["html", "md"])]
        format: String,
    },
    /// The models in memory: where their layers live, memory used, when they unload.
    Ps {
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Creates a publisher key pair (offline): DIR/NAME.key (secret, 0600) and DIR/NAME.pub
    /// (copy it to /etc/inhouse/trusted-keys/ on the servers).
    Keygen {
        /// Directory for the two files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Key name (file names).
        #[arg(long)]
        name: String,
        /// Comment stored in the public key, e.g. the publisher's team.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Signs a model file with a publisher key (offline), writing PATH.sig.
    Sign {
        /// The GGUF file.
        path: PathBuf,
        /// The secret key file from `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Suggested name recorded in the signature.
        #[arg(long)]
        name: Option<String>,
        /// Where to write the signature [default: PATH.sig].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `inhouse models alias …`.
#[derive(Subcommand, Debug)]
pub(super) enum AliasCmd {
    /// Creates ALIAS or moves it to TARGET (a model name or BASE+ADAPTER); also the rollback of
    /// a promotion: set the alias to its old target.
    Set {
        /// The alias, e.g. prod.
        alias: String,
        /// The model it serves from now on.
        target: String,
    },
    /// Every alias, its target, and whether that target is served.
    List {
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Removes an alias (requests naming it then fail with model_not_found).
    Rm {
        /// The alias.
        alias: String,
    },
}

/// `inhouse models`: the models served (`/v1/models`), aliases last.
pub(super) async fn served(client: &Client) -> Result<()> {
    for m in client.served_models().await?.data {
        let alias = match &m.alias_for {
            Some(t) => format!("\talias for {t}"),
            None => String::new(),
        };
        println!(
            "{}\t{}\t{} params\tctx {}{alias}",
            m.id, m.meta.architecture, m.meta.n_params, m.meta.n_ctx
        );
    }
    Ok(())
}

async fn alias(client: &Client, cmd: AliasCmd) -> Result<()> {
    match cmd {
        AliasCmd::Set { alias, target } => {
            crate::models::check_name(&alias)?;
            check_requested_name(&target)?;
            let c = client.set_alias(&alias, &target).await?;
            println!(
                "{} -> {}{}",
                c.alias,
                c.target.as_deref().unwrap_or("-"),
                match &c.previous {
                    Some(p) => format!(" (was {p})"),
                    None => " (new)".into(),
                }
            );
        }
        AliasCmd::List { json } => {
            let list = client.aliases().await?;
            if json {
                return print_json(&list);
            }
            println!("ALIAS\tTARGET\tSERVED");
            for a in &list.aliases {
                println!(
                    "{}\t{}\t{}",
                    a.alias,
                    a.target,
                    if a.served { "yes" } else { "no" }
                );
            }
        }
        AliasCmd::Rm { alias } => {
            crate::models::check_name(&alias)?;
            let c = client.remove_alias(&alias).await?;
            println!(
                "removed alias {} (was {})",
                c.alias,
                c.previous.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

async fn card(client: &Client, name: &str, out: Option<&Path>, format: &str) -> Result<()> {
    crate::models::check_name(name)?;
    let (page, sha256) = client.model_card(name, format).await?;
    match out {
        Some(path) => {
            std::fs::write(path, &page).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {} ({} bytes, sha256 {sha256}, recorded in the audit log)",
                path.display(),
                page.len()
            );
        }
        None => {
            use std::io::Write as _;
            std::io::stdout().write_all(&page)?;
            eprintln!("sha256 {sha256} (recorded in the audit log)");
        }
    }
    Ok(())
}

pub(super) async fn run(client: &Client, cmd: ModelsCmd) -> Result<()> {
    match cmd {
        ModelsCmd::List { json } => {
            let list = client.models().await?;
            if json {
                return print_json(&list);
            }
            print_list(&list);
        }
        ModelsCmd::Import {
            path,
            name,
            adapter_for,
            sha256,
            signature,
        } => import(client, &path, &name, adapter_for, sha256, signature).await?,
        ModelsCmd::Show { name, json } => {
            check_requested_name(&name)?;
            let entry = client.show_model(&name).await?;
            if json {
                return print_json(&entry);
            }
            print!("{}", show(&entry)?);
        }
        ModelsCmd::Rm { name } => {
            crate::models::check_name(&name)?;
            let removed = client.remove_model(&name).await?;
            println!("removed {}", serde_json::to_string(&removed.removed)?);
        }
        ModelsCmd::Alias { cmd } => alias(client, cmd).await?,
        ModelsCmd::Promote { name, to, force } => {
            crate::models::check_name(&name)?;
            crate::models::check_name(&to)?;
            let p = client.promote(&name, &to, force).await?;
            println!(
                "promoted {} to {}: {} -> {} (was {}); gate: {}{}",
                p.name,
                p.alias,
                p.alias,
                p.target,
                p.previous.as_deref().unwrap_or("-"),
                p.gate,
                if p.forced { ", forced" } else { "" }
            );
            if let Some(old) = &p.previous {
                println!("roll back with: inhouse models alias set {} {old}", p.alias);
            }
        }
        ModelsCmd::Card { name, out, format } => {
            card(client, &name, out.as_deref(), &format).await?
        }
        ModelsCmd::Ps { json } => {
            let ps = client.ps().await?;
            if json {
                return print_json(&ps);
            }
            print_ps(&ps);
        }
        ModelsCmd::Keygen { dir, name, comment } => {
            let (secret, public, key) = sign::write_keypair(&dir, &name, &comment)?;
            println!("secret key: {} (keep it offline)", secret.display());
            println!(
                "public key: {} (key id {}): copy it to /etc/inhouse/trusted-keys/",
                public.display(),
                key.key_id()
            );
        }
        ModelsCmd::Sign {
            path,
            key,
            name,
            out,
        } => {
            let secret = sign::SecretKey::read(&key)?;
            let (digest, size) = sign::sha256_file(&path)?;
            let sig = sign::sign_model(&secret, &digest, size, name.as_deref(), None)?;
            let out = out.unwrap_or_else(|| sign::signature_path(&path));
            std::fs::write(&out, sig.to_json())
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "signed {} (sha256 {digest}) with key {}: {}",
                path.display(),
                secret.key_id(),
                out.display()
            );
        }
    }
    Ok(())
}

fn print_list(list: &ModelList) {
    println!("NAME\tSOURCE\tARCH\tQUANT\tSIZE\tLOADED");
    for m in &list.models {
        let (arch, size) = match (&m.info, &m.manifest) {
            (Some(i), _) => (i.architecture.as_str(), i.size_bytes),
            (None, Some(s)) => (s.architecture.as_str(), s.size),
            (None, None) => ("-", 0),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            m.name,
            m.source.as_str(),
            arch,
            m.manifest
                .as_ref()
                .and_then(|s| s.quantization.as_deref())
                .unwrap_or("-"),
            mib(size),
            if m.loaded.is_some() { "yes" } else { "no" },
        );
    }
}

fn print_ps(ps: &Ps) {
    println!("NAME\tPLACEMENT\tGPU LAYERS\tMEMORY\tACTIVE\tDRAFTS ACCEPTED\tUNLOADS IN");
    for l in &ps.loaded {
        // Speculative decoding's acceptance rate: accepted of drafted tokens.
        let accepted = match l.drafted_tokens {
            0 => "-".to_string(),
            d => format!("{:.0}% of {d}", 100.0 * l.accepted_tokens as f64 / d as f64),
        };
        println!(
            "{}\t{}\t{}/{}\t{}\t{}\t{}\t{}",
            l.info.name,
            l.placement,
            l.info.gpu_layers,
            l.info.n_layers,
            mib(l.memory.total),
            l.active_requests,
            accepted,
            match l.expires_in_secs {
                Some(s) => format!("{s} s"),
                None => "never (configured)".into(),
            }
        );
    }
    println!(
        "budget {} · used {} · evictions {}",
        mib(ps.budget_bytes),
        mib(ps.used_bytes),
        ps.evictions
    );
}

/// `models show` as text. A loaded or configured name has `info` (what llama.cpp reports), a
/// stored one a `manifest` (what the store read from the file); each line takes the one that
/// knows, as the daemon answers with either or both.
fn show(e: &ModelEntry) -> Result<String> {
    use std::fmt::Write as _;
    let (i, m) = (e.info.as_ref(), e.manifest.as_ref());
    let (architecture, n_params, context, size) = match (i, m) {
        (Some(i), m) => (
            i.architecture.clone(),
            i.n_params,
            Some(u64::from(i.n_ctx_train)),
            m.map_or(i.size_bytes, |m| m.size),
        ),
        (None, Some(m)) => (m.architecture.clone(), m.n_params, m.context_length, m.size),
        (None, None) => anyhow::bail!(
            "the daemon's answer for {} has neither `info` nor `manifest`",
            e.name
        ),
    };
    let template = match m {
        Some(m) => m.chat_template,
        None => i.is_some_and(|i| i.chat_template.is_some()),
    };
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = String::new();
    writeln!(out, "name:            {}", e.name)?;
    writeln!(out, "source:          {}", e.source.as_str())?;
    writeln!(out, "architecture:    {architecture}")?;
    writeln!(out, "parameters:      {n_params}")?;
    writeln!(
        out,
        "quantization:    {}",
        dash(m.and_then(|m| m.quantization.clone()))
    )?;
    writeln!(
        out,
        "context length:  {}",
        dash(context.map(|c| c.to_string()))
    )?;
    writeln!(
        out,
        "chat template:   {}",
        if template { "yes" } else { "no" }
    )?;
    writeln!(out, "size:            {}", mib(size))?;
    writeln!(
        out,
        "digest:          {}",
        dash(m.map(|m| m.digest.clone()))
    )?;
    if let Some(m) = m {
        let p = &m.provenance;
        writeln!(
            out,
            "imported:        at {} by uid {} from {}",
            date_u(p.imported_at),
            p.imported_by_uid,
            dash(p.source.clone())
        )?;
        writeln!(
            out,
            "signed by:       {}",
            match (&p.signed_by, p.signed_at) {
                (Some(k), Some(at)) => format!("{k} (signed {})", date_u(at)),
                (Some(k), None) => k.clone(),
                (None, _) => "-".into(),
            }
        )?;
    }
    if let Some(est) = &e.estimate {
        writeln!(
            out,
            "memory estimate: {} (weights {}, KV cache {}, compute {})",
            mib(est.total),
            mib(est.weights),
            mib(est.kv_cache),
            mib(est.compute)
        )?;
    }
    writeln!(
        out,
        "loaded:          {}",
        match &e.loaded {
            Some(l) => format!("yes, {} (since {})", l.placement, date_u(l.info.loaded_at)),
            None => "no".into(),
        }
    )?;
    Ok(out)
}

async fn import(
    client: &Client,
    path: &Path,
    name: &str,
    adapter_for: Option<String>,
    sha256: Option<String>,
    signature: Option<PathBuf>,
) -> Result<()> {
    crate::models::check_name(name)?;
    if let Some(b) = &adapter_for {
        crate::models::check_name(b)?;
    }
    let side = |ext: &str| {
        let mut p = path.to_path_buf().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let sha256 = match sha256 {
        Some(h) => Some(h),
        None => match std::fs::read_to_string(side(".sha256")) {
            Ok(text) => text.split_whitespace().next().map(str::to_string),
            Err(_) => None,
        },
    };
    let signature = match signature {
        Some(p) => Some(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?),
        None => std::fs::read(side(".sig")).ok(),
    };
    // The file's own name is recorded as its provenance when it needs no escaping in a query.
    let source = path
        .file_name()
        .and_then(|f| f.to_str())
        .filter(|f| {
            f.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        })
        .map(str::to_string);
    if sha256.is_none() {
        eprintln!("note: no --sha256 and no {} file: the digest is recorded but not checked against a published one", side(".sha256").display());
    }
    let opts = ImportOptions {
        adapter_for,
        sha256,
        source,
        signature,
    };
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let bar = upload_bar(&format!("importing {name}"), len);
    let on_sent = {
        let bar = bar.clone();
        Arc::new(move |sent: u64| bar.set_position(sent))
    };
    let answer = client.import_model(name, path, &opts, Some(on_sent)).await;
    bar.finish_and_clear();
    let m = answer?.imported;
    println!(
        "imported {} (sha256 {}, {}{})",
        m.name,
        m.digest,
        mib(m.size),
        match &m.provenance.signed_by {
            Some(k) => format!(", signed by key {k}"),
            None => ", unsigned".into(),
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{decode, ClientError};

    /// A `GET /admin/models/{name}` answer for a stored, unloaded model, as the daemon sends it.
    fn stored() -> serde_json::Value {
        serde_json::json!({
            "name": "smol", "source": "store", "info": null, "estimate": null, "loaded": null,
            "manifest": {
                "name": "smol", "kind": "model", "base": null, "digest": "ab12",
                "size": 2097152, "architecture": "llama", "n_params": 135,
                "quantization": "Q4_1", "context_length": 8192, "n_layers": 30,
                "chat_template": true,
                "provenance": {"imported_at": 1796182170, "imported_by_uid": 0,
                               "source": "smol.gguf", "signed_by": null, "signed_at": null,
                               "signature": null}
            }
        })
    }

    #[test]
    fn show_reads_one_typed_answer_and_prints_dates() {
        let entry: ModelEntry = decode("GET /admin/models/smol", stored().to_string().as_bytes())
            .expect("a valid answer");
        let text = show(&entry).unwrap();
        for want in [
            "architecture:    llama",
            "quantization:    Q4_1",
            "context length:  8192",
            "chat template:   yes",
            "size:            2.0 MiB",
            "imported:        at 2026-12-02 03:29:30 UTC by uid 0 from smol.gguf",
            "signed by:       -",
            "loaded:          no",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn a_missing_field_is_an_error_that_names_it() {
        let mut v = stored();
        v["manifest"]
            .as_object_mut()
            .unwrap()
            .remove("architecture");
        let err =
            decode::<ModelEntry>("GET /admin/models/smol", v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("GET /admin/models/smol")
                && msg.contains("manifest")
                && msg.contains("missing field `architecture`"),
            "{msg}"
        );
    }
}
