//! A QUIC ring of several ranks in one process, over loopback: each rank gets its
//! own endpoint and a certificate of a throwaway cluster CA, exactly as separate
//! hosts would. For tests, benchmarks, and programs that want the network path
//! without several processes.

use std::net::SocketAddr;

use crate::comm::Communicator;
use crate::engine::CommConfig;
use crate::error::CollectiveError;
use crate::quic::{QuicNode, QuicOptions};
use crate::tls::ClusterCa;

/// `world` ranks of one ring of generation `generation` over QUIC on 127.0.0.1:
/// their endpoints (which must live as long as the communicators) and their
/// communicators, in rank order.
pub fn loopback_ring(
    world: usize,
    generation: u64,
    config: &CommConfig,
) -> Result<(Vec<QuicNode>, Vec<Communicator>), CollectiveError> {
    let ca = ClusterCa::generate("loopback")?;
    let nodes = (0..world)
        .map(|i| {
            let id = ca.issue(&format!("node-{i}"))?;
            let any: SocketAddr = ([127, 0, 0, 1], 0).into();
            QuicNode::bind(any, &id, QuicOptions::default())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let comms = form_ring(&nodes, generation, config)?;
    Ok((nodes, comms))
}

/// The communicators of one ring of generation `generation` over `nodes` (rank `r`
/// is `nodes[r]`), formed from threads of this process.
pub fn form_ring(
    nodes: &[QuicNode],
    generation: u64,
    config: &CommConfig,
) -> Result<Vec<Communicator>, CollectiveError> {
    let addrs = nodes
        .iter()
        .map(QuicNode::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::scope(|s| {
        let forming: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(rank, node)| {
                let addrs = &addrs;
                s.spawn(move || node.communicator(generation, addrs, rank, config.clone()))
            })
            .collect();
        forming
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(CollectiveError::WorkerGone)))
            .collect()
    })
}
