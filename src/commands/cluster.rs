//! `shoal cluster`: the cluster's own certificate authority and node certificates.
//!
//! Every node presents a certificate signed by the cluster CA and refuses peers without
//! one. `init` creates the CA once; `issue` signs a certificate for a node. Copy the
//! CA's `ca.crt` and the node's `NAME.crt`/`NAME.key` to the host that runs it; keep
//! `ca.key` with the operator.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use shoal_collectives::tls::ClusterCa;

/// Cluster certificate commands.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create the cluster's certificate authority in DIR (ca.crt, ca.key, ca.name).
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

/// Runs a cluster command.
pub fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init(a) => {
            let ca = ClusterCa::generate(&a.name)?;
            ca.save(&a.dir)
                .with_context(|| format!("creating the cluster CA in {}", a.dir.display()))?;
            println!("cluster CA `{}` created in {}", a.name, a.dir.display());
        }
        ClusterCommand::Issue(a) => {
            let ca = ClusterCa::load(&a.dir)?;
            let out = a.out.unwrap_or_else(|| a.dir.clone());
            ca.issue(&a.node)?.save(&out, &a.node)?;
            println!(
                "certificate for node `{}` written to {}",
                a.node,
                out.display()
            );
        }
    }
    Ok(())
}
