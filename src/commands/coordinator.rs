//! `shoal coordinator` (an elastic run's coordinator, standalone) and `shoal scale`
//! (drain a node through the control plane), with what `shoal node --listen` shares
//! to embed a coordinator: the cluster token and the control plane's view of the
//! coordinator.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_actors::TrainConfig;
use shoal_actors::coordinator::{Coordinator, CoordinatorSpec, DrainRefused, Drainer, Status};
use shoal_collectives::tls::NodeIdentity;
use shoal_control::{Cluster, ClusterStatus, ControlPlane, DrainError};

/// The file of the cluster token in a cluster directory.
pub const TOKEN_FILE: &str = "token";

/// Flags of `shoal coordinator`.
#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// Where nodes dial (QUIC).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// The run's training config; every node receives it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: PathBuf,
    /// Directory with the cluster's ca.crt, the coordinator's certificate and the
    /// cluster token (`shoal cluster init` / `issue`).
    #[arg(long, value_name = "DIR")]
    pub cluster: PathBuf,
    /// The coordinator's certificate name.
    #[arg(long, value_name = "NAME", default_value = "coordinator")]
    pub name: String,
    #[command(flatten)]
    pub elastic: ElasticArgs,
}

/// The coordinator's settings, shared with `shoal node --listen`.
#[derive(Args, Debug, Clone)]
pub struct ElasticArgs {
    /// Nodes needed to start (a running cluster goes on with any survivor).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_nodes: usize,
    /// Most nodes at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_nodes: usize,
    /// Milliseconds of silence after which a node is lost.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub heartbeat_timeout_ms: u64,
    /// Serve the control plane (status, metrics, scale, dashboard) at this address.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
    /// Continue the run from the newest checkpoint in the config's out_dir.
    #[arg(long)]
    pub resume: bool,
    /// Mirror every node's piece of the state on its ring neighbour after every
    /// this many steps; a lost node costs the steps since the last mirror.
    #[arg(long, value_name = "STEPS", default_value_t = 1)]
    pub mirror_every: u32,
}

/// Flags of `shoal scale`.
#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The node to drain: it hands its state over and leaves at a step boundary.
    #[arg(long, value_name = "NODE")]
    pub drain: String,
    /// The coordinator's control plane.
    #[arg(long, value_name = "HOST:PORT")]
    pub control: String,
    /// The cluster directory holding the token.
    #[arg(long, value_name = "DIR")]
    pub cluster: PathBuf,
}

/// Reads the cluster token of `cluster`.
pub fn read_token(cluster: &Path) -> Result<String> {
    let path = cluster.join(TOKEN_FILE);
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the cluster token {} (written by `shoal cluster init`)",
            path.display()
        )
    })?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the cluster token {} is empty", path.display());
    }
    Ok(token)
}

/// The control plane's view of a coordinator.
struct View {
    status: Arc<Mutex<Status>>,
    drainer: Drainer,
}

impl Cluster for View {
    fn status(&self) -> ClusterStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn drain(&self, node: &str) -> std::result::Result<String, DrainError> {
        // The server calls from its own async runtime: wait on a plain thread.
        let drainer = self.drainer.clone();
        let node = node.to_string();
        let answer = std::thread::spawn(move || drainer.drain(&node))
            .join()
            .unwrap_or_else(|_| Err(DrainRefused::Refused("the drain request failed".into())));
        answer.map_err(|e| match e {
            DrainRefused::Unknown(n) => DrainError::Unknown(n),
            DrainRefused::Refused(why) => DrainError::Refused(why),
        })
    }
}

/// A coordinator with its control plane.
pub struct Running {
    /// The coordinator.
    pub coordinator: Coordinator,
    /// Its control plane.
    pub control: ControlPlane,
}

/// Starts a coordinator for `config` and its control plane.
pub fn start(
    config: TrainConfig,
    listen: SocketAddr,
    identity: NodeIdentity,
    token: String,
    first: Option<String>,
    a: &ElasticArgs,
) -> Result<Running> {
    let coordinator = Coordinator::start(CoordinatorSpec {
        config,
        min_nodes: a.min_nodes,
        max_nodes: a.max_nodes,
        token: token.clone(),
        heartbeat_timeout: Duration::from_millis(a.heartbeat_timeout_ms),
        listen,
        identity,
        resume: a.resume,
        first,
        mirror_every: a.mirror_every,
    })?;
    let view = View {
        status: coordinator.status_handle(),
        drainer: coordinator.drainer(),
    };
    let control = ControlPlane::start(a.http, token, Arc::new(view))
        .with_context(|| format!("serving the control plane at {}", a.http))?;
    eprintln!(
        "coordinator listening at {}; control plane at http://{}/",
        coordinator.addr(),
        control.local_addr()
    );
    Ok(Running {
        coordinator,
        control,
    })
}

/// `shoal coordinator`.
pub fn run(args: CoordinatorArgs) -> Result<()> {
    let config = TrainConfig::from_toml_file(&args.config)?;
    config
        .validate()
        .with_context(|| format!("invalid training config {}", args.config.display()))?;
    let identity = NodeIdentity::load(&args.cluster, &args.name).with_context(|| {
        format!(
            "loading the coordinator's certificate `{}` from {}",
            args.name,
            args.cluster.display()
        )
    })?;
    let token = read_token(&args.cluster)?;
    let out_dir = config.out_dir.clone();
    let running = start(config, args.listen, identity, token, None, &args.elastic)?;
    let step = running.coordinator.wait()?;
    running.control.stop();
    println!(
        "run finished at step {step}; metrics, samples and events in {}",
        out_dir.display()
    );
    Ok(())
}

/// `shoal scale`: a drain request to the control plane.
pub fn scale(args: ScaleArgs) -> Result<()> {
    let token = read_token(&args.cluster)?;
    let addr = args
        .control
        .to_socket_addrs()
        .with_context(|| format!("--control {}: expected HOST:PORT", args.control))?
        .next()
        .with_context(|| format!("--control {}: the name has no address", args.control))?;
    let body = serde_json::json!({ "drain": args.drain }).to_string();
    let request = format!(
        "POST /scale HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to the control plane at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request.as_bytes())?;
    let mut reply = String::new();
    stream
        .take(1 << 20)
        .read_to_string(&mut reply)
        .context("reading the control plane's answer")?;
    let status_line = reply.lines().next().unwrap_or_default().to_string();
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    if !status_line.contains(" 200 ") {
        bail!("the control plane refused: {status_line}: {body}");
    }
    println!("{body}");
    Ok(())
}
