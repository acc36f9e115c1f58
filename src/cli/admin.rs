//! `inhouse admin …`: master keys, erasure, key rotation and the audit log.

use super::print_json;
use crate::client::Client;
use crate::wire::RotateKeyRequest;
use anyhow::{Context, Result};
use base64::Engine as _;
use clap::Subcommand;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub(super) enum AdminCmd {
    /// Writes a new random 32-byte master key to PATH (mode 0600; never overwrites).
    GenKey {
        /// Where to write the key.
        path: PathBuf,
    },
    /// Destroys every stored record of a uid (crypto-shredding its data key first).
    Erase {
        /// The uid to erase.
        #[arg(long)]
        uid: u32,
    },
    /// Rewraps every data key under a new master key, online. Afterwards install the new key
    /// (credential or key file) in place of the old one: only it opens the store.
    RotateKey {
        /// The new key file (mode 0600), e.g. made with `inhouse admin gen-key`.
        #[arg(long, value_name = "PATH")]
        new_key_file: PathBuf,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Backs the daemon up while it serves: `backup --out FILE [--with-models]` writes a tar
    /// (database snapshot, model manifests, trusted keys, configuration, MANIFEST.json);
    /// `backup verify FILE [--key-file KEY]` checks one offline. Restore with
    /// `inhoused --restore FILE --state-dir DIR --key-file KEY`.
    Backup(BackupArgs),
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct BackupArgs {
    #[command(subcommand)]
    verify: Option<BackupCmd>,
    /// Where to write the archive (must not exist; written as FILE.partial, then renamed).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Include the model files (else the manifest lists them by digest).
    #[arg(long)]
    with_models: bool,
}

#[derive(Subcommand, Debug)]
pub(super) enum BackupCmd {
    /// Checks an archive offline: structure, every SHA-256, the database's integrity and audit
    /// head; with --key-file also the key, the manifest's MAC and the audit chain. Exit 1 if
    /// anything is wrong.
    Verify {
        /// The archive.
        file: PathBuf,
        /// The master key (mode 0600) to check the MACs with.
        #[arg(long, value_name = "KEY")]
        key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum AuditCmd {
    /// Checks the chain; names the first modified, deleted or reordered row. Exit 1 if broken.
    Verify,
    /// Writes the log as JSON lines to stdout or a file.
    Export {
        /// Output file (default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(super) async fn run(client: &Client, cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::GenKey { path } => {
            let id = crate::crypto::generate_key_file(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote a new master key to {} (key id {id})", path.display());
            eprintln!("keep a copy offline: without it the stored data cannot be read");
        }
        AdminCmd::Erase { uid } => print_json(&client.erase(uid).await?)?,
        AdminCmd::RotateKey { new_key_file } => {
            // Read and check the file here (mode 0600, format), then send the key over the
            // socket, which only the daemon's admins can use.
            let key = zeroize::Zeroizing::new(
                std::fs::read(&new_key_file)
                    .with_context(|| format!("reading {}", new_key_file.display()))?,
            );
            crate::crypto::MasterKey::load(&new_key_file)
                .with_context(|| format!("checking {}", new_key_file.display()))?;
            let req = RotateKeyRequest {
                key: zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(key.as_slice()),
                ),
            };
            print_json(&client.rotate_key(&req).await?)?
        }
        AdminCmd::Audit(AuditCmd::Verify) => {
            let v = client.audit_verify().await?;
            print_json(&v)?;
            if !v.ok {
                anyhow::bail!("the audit log does not verify (see first_fault above)");
            }
        }
        AdminCmd::Backup(BackupArgs {
            verify: Some(BackupCmd::Verify { file, key_file }),
            ..
        }) => verify_backup(&file, key_file.as_deref())?,
        AdminCmd::Backup(BackupArgs {
            verify: None,
            out,
            with_models,
        }) => {
            let Some(out) = out else {
                anyhow::bail!("say where to write the archive: inhouse admin backup --out FILE");
            };
            backup(client, &out, with_models).await?
        }
        AdminCmd::Audit(AuditCmd::Export { out }) => {
            let body = client.audit_export().await?;
            match out {
                Some(path) => std::fs::write(&path, &body)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(&body)?,
            }
        }
    }
    Ok(())
}

/// A directory for verification's temporary copy of the database: next to `file`, where there
/// is room for the archive already.
fn scratch_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `inhouse admin backup verify FILE [--key-file KEY]`.
fn verify_backup(file: &Path, key_file: Option<&Path>) -> Result<()> {
    let key = key_file
        .map(|k| {
            crate::crypto::MasterKey::load(k).with_context(|| format!("master key {}", k.display()))
        })
        .transpose()?;
    let checked_macs = key.is_some();
    match crate::storage::backup::verify_archive(file, key, &scratch_dir(file)) {
        Ok(v) => {
            print_json(&v)?;
            eprintln!(
                "{}: ok ({} files{})",
                file.display(),
                v.files,
                if checked_macs {
                    ", manifest MAC and audit chain verified with the key"
                } else {
                    "; pass --key-file KEY to check the MACs too"
                }
            );
            Ok(())
        }
        Err(e) => anyhow::bail!("{}: does not verify: {e}", file.display()),
    }
}

/// `inhouse admin backup --out FILE [--with-models]`: streams into FILE.partial, checks the
/// archive offline, then renames it to FILE. Nothing is left under FILE on a failure.
async fn backup(client: &Client, out: &Path, with_models: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if out.exists() {
        anyhow::bail!(
            "{} exists: choose another name or remove it first",
            out.display()
        );
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let result = async {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
        // On stderr, drawn only on a terminal (indicatif hides it otherwise).
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("backup {binary_bytes} {binary_bytes_per_sec}")
        {
            bar.set_style(style);
        }
        let n = client
            .backup_to(with_models, &mut w, |n| bar.set_position(n))
            .await
            .context("the backup did not complete (no archive was kept)")?;
        bar.finish_and_clear();
        w.flush()?;
        drop(w);
        f.sync_all()?;
        let v = crate::storage::backup::verify_archive(&partial, None, &scratch_dir(out))
            .map_err(|e| anyhow::anyhow!("the archive received does not verify: {e}"))?;
        Ok::<_, anyhow::Error>((n, v))
    }
    .await;
    match result {
        Ok((n, v)) => {
            std::fs::rename(&partial, out)
                .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
            if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            print_json(&v)?;
            eprintln!(
                "wrote {} ({n} bytes, {} files, {} of {} model files included); the master key \
                 is not in it: keep the key as well",
                out.display(),
                v.files,
                v.models_included,
                v.models
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}
