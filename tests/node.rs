//! `shoal node` end to end: node processes on 127.0.0.1, each with its own
//! certificate of one cluster CA and its own working directory, meet at the
//! coordinator one of them embeds and train exactly like `--ranks`; a node of
//! another cluster is refused.

use std::path::Path;

mod common;

use common::procs::{Proc, cluster};
use common::{assert_close, assert_losses_match, assert_ok, losses, shoal};
use shoal::actors::Checkpoint;

/// A tiny run: three steps, one row of the batch per rank of three.
const CONFIG: &str = r#"
max_steps = 3
batch_size = 3
seq_len = 32
eval_every = 2
eval_batches = 1
threads = 2
out_dir = "run"

[model]
n_layer = 1
n_embd = 32
n_head = 2

[data]
source = "builtin"
tokens_per_domain = 6000
"#;

/// A node with the coordinator embedded (`--listen`), waiting for `nodes` nodes.
fn listen(dir: &Path, nodes: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["node", "--listen", "127.0.0.1:0", "--min-nodes", nodes];
    args.extend_from_slice(&[
        "--cluster",
        ".",
        "--node",
        "lead",
        "--config",
        "config.toml",
    ]);
    args.extend_from_slice(extra);
    Proc::spawn(&args, &dir.join("lead"))
}

/// A node joining the coordinator at `at`.
fn join(dir: &Path, at: &str, name: &str) -> Proc {
    Proc::spawn(
        &["node", "--join", at, "--cluster", ".", "--node", name],
        &dir.join(name),
    )
}

/// One listener and two joiners (which have nothing but their certificates) train
/// the listener's config; rank 0's losses and final weights are the `--ranks 3`
/// run's.
#[test]
fn three_nodes_train_like_three_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cluster(dir, "ca", &["lead", "a", "b"]);
    std::fs::write(dir.join("lead/config.toml"), CONFIG).unwrap();
    let mut lead = listen(dir, "3", &[]);
    let at = lead.word_after(" waiting at ");
    let joiners: Vec<Proc> = ["a", "b"].iter().map(|name| join(dir, &at, name)).collect();
    for node in joiners {
        let (ok, err) = node.finish();
        assert!(ok, "{err}");
    }
    let (ok, err) = lead.finish();
    assert!(ok, "{err}");

    assert_ok(&shoal(
        &[
            "train",
            "--config",
            "config.toml",
            "--ranks",
            "3",
            "--out-dir",
            "ref",
        ],
        &dir.join("lead"),
    ));
    let (a, b) = (
        losses(&dir.join("lead/ref/metrics.jsonl")),
        losses(&dir.join("lead/run/metrics.jsonl")),
    );
    assert_eq!(a.len(), 3);
    assert_losses_match(&a, &b, "three nodes");
    let (p, q) = (
        Checkpoint::load(&dir.join("lead/ref/checkpoints/step-000003")).unwrap(),
        Checkpoint::load(&dir.join("lead/run/checkpoints/step-000003")).unwrap(),
    );
    assert_close(&p.params, &q.params, "three nodes");
}

/// A node whose certificate comes from another cluster CA fails the TLS handshake
/// with a clear error, and the listener never starts training with it.
#[test]
fn a_node_of_another_cluster_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cluster(dir, "ca", &["lead"]);
    cluster(dir, "other-ca", &["intruder"]);
    std::fs::write(dir.join("lead/config.toml"), CONFIG).unwrap();
    let mut lead = listen(dir, "2", &["--join-timeout", "5"]);
    let at = lead.word_after(" waiting at ");
    let intruder = join(dir, &at, "intruder");
    let (ok, err) = intruder.finish();
    assert!(!ok);
    assert!(err.contains("error: "), "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
    assert!(err.contains("cluster CA"), "{err}");

    let (ok, err) = lead.finish();
    assert!(!ok);
    assert!(
        err.contains("refused a connection to the coordinator"),
        "{err}"
    );
    assert!(err.contains("no generation started within 5s"), "{err}");
    // Nothing was trained.
    let metrics = std::fs::read_to_string(dir.join("lead/run/metrics.jsonl")).unwrap_or_default();
    assert!(metrics.is_empty(), "{metrics}");
}
