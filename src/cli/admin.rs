//! `inhouse admin …`: master keys, erasure, key rotation and the audit log.

use super::print_json;
use crate::client::Client;
use crate::wire::RotateKeyRequest;
use anyhow::{Context, Result};
use base64::Engine as _;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;

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
