use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::tls::ClusterCa;

const WAIT: Duration = Duration::from_secs(20);

fn hello(node: &str) -> Hello {
    Hello {
        node: node.into(),
        addr: "127.0.0.1:7000".parse().unwrap(),
        token: "secret".into(),
    }
}

fn body(frame: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    &frame[4..]
}

#[test]
fn messages_round_trip_and_bad_bytes_are_refused() {
    let msgs = vec![
        ToNode::Welcome {
            config: "max_steps = 3".into(),
        },
        ToNode::Generation(Plan {
            generation: 4,
            rank: 1,
            names: vec!["a".into(), "b".into()],
            members: vec!["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()],
            step: 17,
            restore: Restore::Pieces {
                world: 3,
                contribute: vec![1, 2],
            },
            mirror_every: 1,
        }),
        ToNode::Commit {
            step: 3,
            reconfigure: true,
        },
        ToNode::Abort { generation: 2 },
        ToNode::Leave,
        ToNode::Stop,
        ToNode::Refused("no".into()),
    ];
    for m in &msgs {
        let frame = encode(m).unwrap();
        assert_eq!(&decode::<ToNode>(body(&frame)).unwrap(), m);
    }
    let report = ToCoordinator::Done(StepReport {
        generation: 1,
        step: 2,
        loss: 3.5,
        grad_norm: 0.5,
        lr: 1e-3,
        seconds: 0.1,
        mirror_seconds: 0.01,
        comm_seconds: 0.02,
        samples: vec![1, 2, 3],
        bytes_sent: 10,
        mirrored: true,
    });
    let frame = encode(&report).unwrap();
    assert_eq!(decode::<ToCoordinator>(body(&frame)).unwrap(), report);
    // Trailing bytes, a wrong magic, truncation, garbage.
    let mut long = body(&frame).to_vec();
    long.push(0);
    assert!(decode::<ToCoordinator>(&long).is_err());
    let wrong = bincode::encode_to_vec((0xDEADu32, &report), wire_config()).unwrap();
    assert!(decode::<ToCoordinator>(&wrong).is_err());
    let b = body(&frame);
    assert!(decode::<ToCoordinator>(&b[..b.len() / 2]).is_err());
    assert!(decode::<ToNode>(&[0xff; 64]).is_err());
    // A claimed length far beyond the limit is refused by the limit, not allocated.
    let huge =
        bincode::encode_to_vec((MAGIC, 1u32, u64::MAX), bincode::config::standard()).unwrap();
    assert!(decode::<ToNode>(&huge).is_err());
}

/// A node connects, says hello, gets a welcome, reports; an abort reaches its
/// hook and its inbox; the coordinator sees the node go when it drops the link.
#[test]
fn a_node_and_the_coordinator_talk() {
    let ca = ClusterCa::generate("membership-test").unwrap();
    let (coord, node) = (ca.issue("coordinator").unwrap(), ca.issue("n1").unwrap());
    let (events_tx, events) = unbounded();
    let server = MembershipServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &coord,
        &QuicOptions::default(),
        move |e| {
            let _ = events_tx.send(e);
        },
    )
    .unwrap();
    let at = server.local_addr().unwrap();
    let link = CoordinatorLink::connect(
        at,
        &node,
        hello("n1"),
        &QuicOptions::default(),
        WAIT,
        Duration::from_millis(50),
    )
    .unwrap();
    let aborted = Arc::new(AtomicU64::new(0));
    let seen = aborted.clone();
    link.set_abort_hook(Some(Box::new(move |g| seen.store(g, Ordering::SeqCst))));
    let ServerEvent::Hello {
        hello: h,
        link: to_node,
        conn,
    } = events.recv_timeout(WAIT).unwrap()
    else {
        panic!("expected a hello first");
    };
    assert_eq!(h, hello("n1"));
    assert!(to_node.send(ToNode::Welcome { config: "x".into() }));
    assert_eq!(
        link.recv(WAIT).unwrap(),
        ToNode::Welcome { config: "x".into() }
    );
    link.send(ToCoordinator::Ready { generation: 0 }).unwrap();
    let mut beats = 0;
    loop {
        match events.recv_timeout(WAIT).unwrap() {
            ServerEvent::Message {
                msg: ToCoordinator::Heartbeat,
                ..
            } => beats += 1,
            ServerEvent::Message { msg, conn: c } => {
                assert_eq!(c, conn);
                assert_eq!(msg, ToCoordinator::Ready { generation: 0 });
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Heartbeats keep coming.
    while beats < 2 {
        if let ServerEvent::Message {
            msg: ToCoordinator::Heartbeat,
            ..
        } = events.recv_timeout(WAIT).unwrap()
        {
            beats += 1;
        }
    }
    to_node.send(ToNode::Abort { generation: 7 });
    assert_eq!(link.recv(WAIT).unwrap(), ToNode::Abort { generation: 7 });
    assert_eq!(aborted.load(Ordering::SeqCst), 7);
    drop(link);
    loop {
        if let ServerEvent::Closed { conn: c, .. } = events.recv_timeout(WAIT).unwrap() {
            assert_eq!(c, conn);
            break;
        }
    }
}

/// A node of another cluster fails the handshake.
#[test]
fn a_node_of_another_cluster_is_refused() {
    let ours = ClusterCa::generate("ours").unwrap();
    let theirs = ClusterCa::generate("theirs").unwrap();
    let server = MembershipServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &ours.issue("coordinator").unwrap(),
        &QuicOptions::default(),
        |_| {},
    )
    .unwrap();
    let err = CoordinatorLink::connect(
        server.local_addr().unwrap(),
        &theirs.issue("intruder").unwrap(),
        hello("intruder"),
        &QuicOptions::default(),
        WAIT,
        Duration::from_millis(50),
    )
    .err()
    .expect("refused");
    assert!(
        matches!(err, MembershipError::Connect(DialError::Handshake { .. })),
        "{err}"
    );
}
