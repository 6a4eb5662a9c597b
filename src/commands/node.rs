//! `shoal node`: one process per host of an elastic run.
//!
//! `--join HOST:PORT` dials the run's coordinator with this node's certificate and
//! the cluster token, receives the run's config, and trains in every generation
//! the coordinator forms until the run ends or the node is drained
//! ([`shoal_actors::Trainer::run_elastic`]). `--listen IP:PORT` does the same with
//! a coordinator embedded in this process (and its control plane), for the
//! run's `--config`; a run of a fixed size is one with `--min-nodes` =
//! `--max-nodes`. The coordinator writes metrics, samples and events in the
//! config's out_dir; the generation's rank 0 writes the checkpoints there.
//!
//! Paths in the config (data files, tokenizer, `init`, out_dir) are opened by
//! every node relative to its working directory: use a shared filesystem, or
//! copies at the same paths (then checkpoints are whole files written by rank 0,
//! and a node restoring from a checkpoint needs a copy of it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use shoal_actors::{ElasticEnd, TrainConfig, TrainError, Trainer};
use shoal_collectives::dial::any_port_like;
use shoal_collectives::membership::{CoordinatorLink, Hello, MembershipError, ToNode};
use shoal_collectives::tls::NodeIdentity;
use shoal_collectives::{QuicNode, QuicOptions};

use super::coordinator::{ElasticArgs, read_token, start};

/// How often a node tells the coordinator it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

/// Flags of `shoal node`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("role").required(true).args(["listen", "join"])))]
pub struct NodeArgs {
    /// Run the coordinator in this node and wait for the others at this address.
    #[arg(long, value_name = "IP:PORT", requires = "config")]
    pub listen: Option<SocketAddr>,
    /// Join the run whose coordinator listens at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// Directory with the cluster's ca.crt, this node's NAME.crt and NAME.key
    /// (`shoal cluster issue`) and the cluster token.
    #[arg(long, value_name = "DIR")]
    pub cluster: PathBuf,
    /// This node's name (its certificate's file name), unique in the run.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// The run's training config (with --listen); the other nodes receive it.
    #[arg(long, value_name = "FILE.toml", requires = "listen")]
    pub config: Option<PathBuf>,
    /// Address of this node's collective endpoint (default: the listen address's IP
    /// with --listen, all interfaces with --join; a free port).
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
    /// Seconds to wait for the coordinator to answer and for the first generation
    /// to start.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub join_timeout: u64,
    /// The embedded coordinator's settings (with --listen).
    #[command(flatten)]
    pub elastic: ElasticArgs,
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
    let token = read_token(&args.cluster)?;
    let Some(listen) = args.listen else {
        let host = args.join.as_deref().context("give --listen or --join")?;
        let at = host
            .to_socket_addrs()
            .with_context(|| format!("--join {host}: expected HOST:PORT"))?
            .next()
            .with_context(|| format!("--join {host}: the name has no address"))?;
        let bind = args.bind.unwrap_or(any_port_like(at));
        let end = join(&args, at, bind, &identity, token)?;
        eprintln!("node `{}`: {}", args.node, describe(end));
        return Ok(());
    };
    let path = args.config.as_ref().context("--listen needs --config")?;
    let config = TrainConfig::from_toml_file(path)?;
    config
        .validate()
        .with_context(|| format!("invalid training config {}", path.display()))?;
    let out_dir = config.out_dir.clone();
    let running = start(
        config,
        listen,
        identity.clone(),
        token.clone(),
        Some(args.node.clone()),
        &args.elastic,
    )?;
    let mut at = running.coordinator.addr();
    if at.ip().is_unspecified() {
        at.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    eprintln!(
        "node `{}` waiting at {at} for {} node(s) in all",
        args.node, args.elastic.min_nodes
    );
    let bind = args.bind.unwrap_or(SocketAddr::new(listen.ip(), 0));
    let joined = join(&args, at, bind, &identity, token);
    let step = match &joined {
        Ok(_) => running.coordinator.wait(),
        Err(_) => Ok(0),
    };
    let status = running.control.local_addr();
    running.control.stop();
    let end = joined.with_context(|| format!("the run at {status} failed"))?;
    let step = step?;
    let metrics = out_dir.join("metrics.jsonl");
    if metrics.exists() {
        crate::plot::plot_metrics(&metrics, &out_dir.join("loss.svg"))?;
    }
    println!(
        "run finished at step {step} (this node: {}); metrics, samples, events and plot in {}",
        describe(end),
        out_dir.display()
    );
    Ok(())
}

fn describe(end: ElasticEnd) -> &'static str {
    match end {
        ElasticEnd::Finished => "the run finished",
        ElasticEnd::Drained => "drained, left the run",
    }
}

/// Dials the coordinator at `at`, builds the trainer from its config and trains.
fn join(
    args: &NodeArgs,
    at: SocketAddr,
    bind: SocketAddr,
    identity: &NodeIdentity,
    token: String,
) -> Result<ElasticEnd> {
    let timeout = Duration::from_secs(args.join_timeout);
    let options = QuicOptions::default();
    let quic = QuicNode::bind(bind, identity, options.clone())?;
    let hello = Hello {
        node: args.node.clone(),
        addr: quic.local_addr()?,
        token,
    };
    let started = Instant::now();
    let link = CoordinatorLink::connect(at, identity, hello, &options, timeout, HEARTBEAT_EVERY)
        .with_context(|| format!("joining the run at {at}"))?;
    let config = match link.recv(timeout)? {
        ToNode::Welcome { config } => config,
        ToNode::Refused(why) => bail!(
            "the coordinator at {at} refused node `{}`: {why}",
            args.node
        ),
        other => bail!("the coordinator at {at} answered {other:?} instead of a welcome"),
    };
    let origin = PathBuf::from(format!("<the config of the run at {at}>"));
    let config = TrainConfig::from_toml_str(&config, &origin)?;
    let mut trainer = Trainer::new(config)?;
    eprintln!("node `{}` joined the run at {at}", args.node);
    let left = timeout.saturating_sub(started.elapsed());
    trainer
        .run_elastic(&link, &quic, left)
        .map_err(|e| match e {
            TrainError::Membership(MembershipError::Timeout(_)) => anyhow::anyhow!(
                "no generation started within {}s (is the run waiting for more nodes?)",
                args.join_timeout
            ),
            e => e.into(),
        })
}
