//! `shoal cluster`: the cluster's own certificate authority and node certificates.
//!
//! Every node presents a certificate signed by the cluster CA and refuses peers without
//! one. `init` creates the CA once; `issue` signs a certificate for a node. Copy the
//! CA's `ca.crt` and the node's `NAME.crt`/`NAME.key` to the host that runs it; keep
//! `ca.key` with the operator.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use shoal_collectives::tls::ClusterCa;

use super::coordinator::TOKEN_FILE;

/// Cluster certificate commands.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create the cluster's certificate authority in DIR (ca.crt, ca.key, ca.name) and
    /// the cluster token (token), which `issue` copies next to each node's files.
    Init(InitArgs),
    /// Sign a certificate for a node with the CA in DIR (writes NAME.crt and NAME.key).
    Issue(IssueArgs),
}

/// Flags of `shoal cluster init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory for the CA's files (created if missing; an existing CA is never replaced).
    pub dir: PathBuf,
    /// Name of the cluster, recorded in the CA certificate.
    #[arg(long, default_value = "shoal")]
    pub name: String,
}

/// Flags of `shoal cluster issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Directory holding the CA (from `shoal cluster init`).
    pub dir: PathBuf,
    /// Node name; the files are NAME.crt and NAME.key.
    #[arg(long)]
    pub node: String,
    /// Where to write the node's files (default: DIR).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Writes a fresh random cluster token (32 bytes, hex) into `dir`, readable by its
/// owner only; an existing token is kept.
fn write_token(dir: &Path) -> Result<()> {
    let path = dir.join(TOKEN_FILE);
    if path.exists() {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading random bytes for the cluster token")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .with_context(|| format!("writing the cluster token {}", path.display()))
}

/// Runs a cluster command.
pub fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init(a) => {
            let ca = ClusterCa::generate(&a.name)?;
            ca.save(&a.dir)
                .with_context(|| format!("creating the cluster CA in {}", a.dir.display()))?;
            write_token(&a.dir)?;
            println!("cluster CA `{}` created in {}", a.name, a.dir.display());
        }
        ClusterCommand::Issue(a) => {
            let ca = ClusterCa::load(&a.dir)?;
            let out = a.out.unwrap_or_else(|| a.dir.clone());
            ca.issue(&a.node)?.save(&out, &a.node)?;
            let token = a.dir.join(TOKEN_FILE);
            if token.exists() && out != a.dir {
                std::fs::copy(&token, out.join(TOKEN_FILE))
                    .with_context(|| format!("copying the cluster token to {}", out.display()))?;
            }
            println!(
                "certificate for node `{}` written to {}",
                a.node,
                out.display()
            );
        }
    }
    Ok(())
}
