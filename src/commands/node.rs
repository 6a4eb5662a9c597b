//! `shoal node`: one process per host, a fixed-size rendezvous, then data-parallel
//! training over QUIC exactly as the ranks of `shoal train --procs` train.
//!
//! The first node `--listen`s: it builds its trainer from `--config` (resuming from
//! the newest checkpoint under the config's out_dir with `--resume`), binds its
//! collective endpoint on the listen address's IP and waits for `--nodes` N - 1
//! others ([`shoal_collectives::rendezvous`]). Every other node `--join`s with only
//! its certificates: it binds its collective endpoint, sends its name and address,
//! and receives its rank, the members and the run's config, so every node trains the
//! same config. The first node is rank 0 and writes metrics and checkpoints in its
//! out_dir. One rank per node process for now.
//!
//! Paths in the config (data files, tokenizer, `init`) and the checkpoint of a
//! resumed run are opened by every node, relative to its working directory: use a
//! shared filesystem or copies at the same paths.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use shoal_actors::{NoopObserver, TrainConfig, Trainer};
use shoal_collectives::rendezvous::{self, FIRST_GENERATION, Join, Listener, Resume, RunSpec};
use shoal_collectives::tls::NodeIdentity;
use shoal_collectives::{QuicNode, QuicOptions};

use super::procs::comm_config;
use super::train::{TrainArgs, build_trainer, train_with_progress};

/// Flags of `shoal node`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("role").required(true).args(["listen", "join"])))]
pub struct NodeArgs {
    /// Start the run and wait for the other nodes at this address (this node is rank 0).
    #[arg(long, value_name = "IP:PORT", requires_all = ["nodes", "config"])]
    pub listen: Option<SocketAddr>,
    /// Join the run whose first node listens at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// Nodes in the run, this one included (with --listen).
    #[arg(long, requires = "listen")]
    pub nodes: Option<usize>,
    /// Directory with the cluster's ca.crt and this node's NAME.crt and NAME.key
    /// (`shoal cluster issue`).
    #[arg(long, value_name = "DIR")]
    pub cluster: PathBuf,
    /// This node's name (its certificate's file name), unique in the run.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// The run's training config (with --listen); the other nodes receive it.
    #[arg(long, value_name = "FILE.toml", requires = "listen")]
    pub config: Option<PathBuf>,
    /// Resume from the newest checkpoint under the config's out_dir (with --listen);
    /// every node needs that checkpoint at the same path.
    #[arg(long, requires = "listen")]
    pub resume: bool,
    /// Address of this node's collective endpoint (with --join; default: all
    /// interfaces, a free port).
    #[arg(long, value_name = "IP:PORT", requires = "join")]
    pub bind: Option<SocketAddr>,
    /// Seconds to wait for the other nodes to join (--listen) or for the run to start
    /// (--join).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub join_timeout: u64,
}

/// `shoal node`.
pub fn run(args: NodeArgs) -> Result<()> {
    let identity = NodeIdentity::load(&args.cluster, &args.node).with_context(|| {
        format!(
            "loading node `{}`'s certificates from {}",
            args.node,
            args.cluster.display()
        )
    })?;
    let timeout = Duration::from_secs(args.join_timeout);
    match (args.listen, &args.join) {
        (Some(listen), _) => lead(&args, listen, &identity, timeout),
        (None, Some(host)) => follow(&args, host, &identity, timeout),
        (None, None) => bail!("give --listen or --join"),
    }
}

/// `ranks` of a node's config: one rank per node process.
fn check_one_rank(config: &TrainConfig) -> Result<()> {
    if config.ranks > 1 {
        bail!(
            "the config asks for ranks = {}: `shoal node` runs one rank per node process \
             (set ranks = 1 and start more nodes)",
            config.ranks
        );
    }
    Ok(())
}

/// The first node: rank 0, waits for the others, then trains and writes the run.
fn lead(
    args: &NodeArgs,
    listen: SocketAddr,
    identity: &NodeIdentity,
    timeout: Duration,
) -> Result<()> {
    let nodes = args.nodes.context("--listen needs --nodes")?;
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let train = TrainArgs {
        config: args.config.clone(),
        resume: args.resume.then(|| "latest".to_string()),
        ..TrainArgs::default()
    };
    let mut trainer = build_trainer(&train)?;
    check_one_rank(trainer.config())?;
    let run = RunSpec {
        config: trainer.config().to_toml_string(),
        resume: trainer.resumed_from().map(|dir| Resume {
            checkpoint: dir.display().to_string(),
            step: trainer.step_count(),
        }),
    };
    let options = QuicOptions::default();
    let node = QuicNode::bind(SocketAddr::new(listen.ip(), 0), identity, options.clone())?;
    let mut listener = Listener::bind(listen, identity, &options)
        .with_context(|| format!("cannot listen at {listen}"))?;
    let own = Join {
        node: args.node.clone(),
        addr: node.local_addr()?,
    };
    eprintln!(
        "node `{}` (rank 0) waiting at {} for {} more node(s)",
        own.node,
        listener.local_addr()?,
        nodes - 1
    );
    let members = listener.gather(&own, nodes, &run, timeout, |rank, m| {
        eprintln!("node `{}` joined as rank {rank} ({})", m.node, m.addr)
    })?;
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    let comm = node
        .communicator(FIRST_GENERATION, &addrs, 0, comm_config())
        .context("forming the ring of nodes")?;
    trainer.attach(comm);
    let (summary, _plot) = train_with_progress(&mut trainer)?;
    if let Some(s) = &summary.last_step {
        println!("final step {}: train loss {:.4}", s.step, s.loss);
    }
    println!(
        "metrics, checkpoints and plot in {}",
        trainer.config().out_dir.display()
    );
    Ok(())
}

/// Another node: joins, builds its trainer from the run's config, trains its rank.
fn follow(args: &NodeArgs, host: &str, identity: &NodeIdentity, timeout: Duration) -> Result<()> {
    let listener = host
        .to_socket_addrs()
        .with_context(|| format!("--join {host}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--join {host}: the name has no address"))?;
    let bind = args.bind.unwrap_or(rendezvous::any_port_like(listener));
    let options = QuicOptions::default();
    let node = QuicNode::bind(bind, identity, options.clone())?;
    let request = Join {
        node: args.node.clone(),
        addr: node.local_addr()?,
    };
    eprintln!("node `{}` joining the run at {listener}", request.node);
    let start = rendezvous::join(listener, identity, &request, &options, timeout)?;
    let rank = start.rank as usize;
    eprintln!("node `{}` is rank {rank} of {}", request.node, start.world);
    let origin = PathBuf::from(format!("<the config of the run at {listener}>"));
    let config = TrainConfig::from_toml_str(&start.run.config, &origin)?;
    let mut trainer = match &start.run.resume {
        None => Trainer::new(config)?,
        Some(resume) => {
            let trainer = Trainer::resume_with(Path::new(&resume.checkpoint), config)
                .with_context(|| {
                    format!(
                        "rank 0 resumes from {}: this node needs that checkpoint at the same path",
                        resume.checkpoint
                    )
                })?;
            if trainer.step_count() != resume.step {
                bail!(
                    "checkpoint {} is at step {} here but at step {} on rank 0",
                    resume.checkpoint,
                    trainer.step_count(),
                    resume.step
                );
            }
            trainer
        }
    };
    let comm = node
        .communicator(start.generation, &start.members, rank, comm_config())
        .context("forming the ring of nodes")?;
    trainer.attach(comm);
    trainer.run(&mut NoopObserver)?;
    eprintln!("node `{}` (rank {rank}) finished", request.node);
    Ok(())
}
