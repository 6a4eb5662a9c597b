//! Elastic runs end to end on 127.0.0.1: a standalone `shoal coordinator`, node
//! processes that are killed (SIGKILL), added and drained mid-run, and the proof
//! that nothing changed: per-step losses equal to a static one-rank run of the
//! same global batch, and every committed step's global sample indices exactly
//! those of a static run, each consumed once.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::procs::{PATIENCE, Proc, cluster, http, status};
use common::{assert_ok, losses, shoal};
use shoal::actors::recompute::{PlanInputs, RecomputeSettings, plan_recompute};
use shoal::actors::{TrainConfig, ZeroStage};
use shoal::models::{ActivationBytes, Recompute, RecomputePlan};

/// Thirty steps of a model big enough that a step takes a noticeable time, with
/// a checkpoint every ten steps.
const CONFIG: &str = r#"
max_steps = 30
batch_size = 12
seq_len = 128
eval_every = 0
checkpoint_every = 10
threads = 1
out_dir = "run"
zero = 2

[model]
n_layer = 2
n_embd = 128
n_head = 4

[data]
source = "builtin"
tokens_per_domain = 6000
"#;

/// [`CONFIG`] with an activation budget per rank between what 3 ranks (4 rows
/// each) and 2 ranks (6 rows) keep with nothing recomputed: the coordinator and
/// the nodes re-plan recomputation at every change of world size (the losses do
/// not change: recomputed activations are the kept ones).
fn elastic_config() -> String {
    let config = TrainConfig::from_toml_str(CONFIG, Path::new("CONFIG")).unwrap();
    let model = config.validate().unwrap();
    let keep = |rows| {
        let plan = RecomputePlan::uniform(model.n_layer, Recompute::None);
        ActivationBytes::new(&model, rows, config.seq_len, &plan).total()
    };
    let (three, two) = (keep(4), keep(6));
    assert!(three < two);
    format!("activation_budget = \"{}\"{CONFIG}", (three + two) / 2)
}

/// The recompute plans the coordinator announced, in order.
fn recompute_events(dir: &Path) -> Vec<String> {
    events(dir)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "recompute")
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect()
}

/// A coordinator (`cluster/coordinator`) and the nodes of one test.
struct Run {
    dir: std::path::PathBuf,
    coordinator: Proc,
    at: String,
    control: String,
    nodes: Vec<(String, Proc)>,
}

impl Run {
    /// A cluster with certificates for `names`, a coordinator waiting for
    /// `min_nodes`, and the static reference run of the config.
    fn start(dir: &Path, names: &[&str], min_nodes: &str, mirror_every: &str) -> Self {
        Self::start_with(CONFIG, dir, names, min_nodes, mirror_every)
    }

    /// [`Run::start`] with the run's config `config`.
    fn start_with(
        config: &str,
        dir: &Path,
        names: &[&str],
        min_nodes: &str,
        mirror_every: &str,
    ) -> Self {
        let mut all = vec!["coordinator"];
        all.extend_from_slice(names);
        cluster(dir, "ca", &all);
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut coordinator = Proc::spawn(
            &[
                "coordinator",
                "--listen",
                "127.0.0.1:0",
                "--config",
                "config.toml",
                "--cluster",
                "coordinator",
                "--min-nodes",
                min_nodes,
                "--heartbeat-timeout-ms",
                "1500",
                "--mirror-every",
                mirror_every,
            ],
            dir,
        );
        let line = coordinator.wait_for("coordinator listening at ");
        let after = |marker: &str| {
            let word = line.split(marker).nth(1).unwrap().split_whitespace().next();
            let word = word.unwrap().trim_end_matches([';', '/']);
            word.trim_start_matches("http://").to_string()
        };
        let (at, control) = (after("listening at "), after("control plane at "));
        Self {
            dir: dir.to_path_buf(),
            coordinator,
            at,
            control,
            nodes: Vec::new(),
        }
    }

    /// Starts node `name` (its certificates in `dir/name`, working directory `dir`,
    /// so every node sees the same run directory).
    fn node(&mut self, name: &str) {
        let cluster = self.dir.join(name);
        let p = Proc::spawn(
            &[
                "node",
                "--join",
                &self.at,
                "--cluster",
                cluster.to_str().unwrap(),
                "--node",
                name,
            ],
            &self.dir,
        );
        self.nodes.push((name.to_string(), p));
    }

    fn kill(&mut self, name: &str) {
        let (_, p) = self.nodes.iter_mut().find(|(n, _)| n == name).unwrap();
        p.kill();
    }

    /// Polls the control plane until `until` says stop, calling `each` with every
    /// status; panics after `PATIENCE`.
    fn watch(&mut self, mut each: impl FnMut(&mut Self, &serde_json::Value) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(
                Instant::now() < deadline,
                "the run hangs; coordinator stderr:\n{}",
                self.coordinator.stderr
            );
            if let Some(s) = status(&self.control)
                && each(self, &s)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the coordinator and the nodes still running to finish.
    fn finish(self) -> String {
        let (ok, err) = self.coordinator.finish();
        assert!(ok, "{err}");
        for (name, node) in self.nodes {
            let (ok, nerr) = node.finish();
            // Killed nodes fail; the others finish cleanly.
            if ok {
                assert!(!nerr.contains("error:"), "{name}: {nerr}");
            }
        }
        err
    }
}

/// The static reference: the same config on one rank.
fn reference(dir: &Path) -> Vec<f64> {
    std::fs::write(dir.join("config.toml"), CONFIG).unwrap();
    assert_ok(&shoal(
        &["train", "--config", "config.toml", "--out-dir", "ref"],
        dir,
    ));
    losses(&dir.join("ref/metrics.jsonl"))
}

/// Losses within 1e-4 relative of the reference, and the samples of every
/// committed step exactly the reference's (`step·B .. (step+1)·B`), once each.
fn assert_like_reference(dir: &Path, reference: &[f64]) -> Vec<(u64, u64)> {
    let got = losses(&dir.join("run/metrics.jsonl"));
    assert_eq!(got.len(), reference.len(), "steps");
    for (i, (want, got)) in reference.iter().zip(&got).enumerate() {
        assert!(
            (want - got).abs() <= 1e-4 * want.abs(),
            "step {}: {want} vs {got}",
            i + 1
        );
    }
    let text = std::fs::read_to_string(dir.join("run/commits.jsonl")).unwrap();
    let commits: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(commits.len(), reference.len(), "{text}");
    let batch = 12u64;
    let mut worlds = Vec::new();
    for (i, c) in commits.iter().enumerate() {
        let step = i as u64 + 1;
        assert_eq!(c["step"], step);
        let samples: Vec<u64> = c["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let want: Vec<u64> = ((step - 1) * batch..step * batch).collect();
        assert_eq!(samples, want, "step {step}");
        worlds.push((step, c["world"].as_u64().unwrap()));
    }
    worlds
}

fn events(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("run/elastic.jsonl")).unwrap()
}

/// Three nodes; one is SIGKILLed at step 10 (mid-step), a fourth joins at step
/// 20, one is drained at step 25. The run goes on at each change and its losses
/// and samples are the static run's.
#[test]
fn a_kill_a_join_and_a_drain_leave_the_run_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let want = reference(dir);
    let config = elastic_config();
    let mut run = Run::start_with(&config, dir, &["a", "b", "c", "d"], "3", "1");
    for n in ["a", "b", "c"] {
        run.node(n);
    }
    let (mut killed, mut joined, mut drained) = (false, false, false);
    run.watch(|run, s| {
        let step = s["step"].as_u64().unwrap();
        if step >= 10 && !killed {
            run.kill("c");
            killed = true;
        }
        if step >= 20 && !joined {
            run.node("d");
            joined = true;
        }
        if step >= 25 && !drained {
            let drain = shoal(
                &[
                    "scale",
                    "--drain",
                    "a",
                    "--control",
                    &run.control,
                    "--cluster",
                    "a",
                ],
                dir,
            );
            assert_ok(&drain);
            drained = true;
        }
        s["finished"].as_bool().unwrap()
    });
    let err = run.finish();
    let worlds = assert_like_reference(dir, &want);
    let ev = events(dir);
    assert!(ev.contains("node `c` lost"), "{ev}\n{err}");
    assert!(ev.contains("node `d` joined"), "{ev}");
    assert!(ev.contains("node `a` left"), "{ev}");
    assert!(!ev.contains("state lost"), "{ev}");
    // The world went 3 → 2 → 3 → 2.
    let mut sizes: Vec<u64> = worlds.iter().map(|&(_, w)| w).collect();
    sizes.dedup();
    assert_eq!(sizes, vec![3, 2, 3, 2], "{worlds:?}");
    // And the recompute plan with it: nothing recomputed on 3 ranks, some layers
    // on 2 (their activations would not fit the budget).
    let plans = recompute_events(dir);
    assert!(plans.len() >= 4, "{plans:?}\n{ev}");
    let (on_three, on_two) = (&plans[0], &plans[1]);
    assert_ne!(on_three, on_two, "{plans:?}");
    assert!(on_three.contains("(0 full, 0 selective"), "{plans:?}");
    assert!(on_three.contains("each of 3 rank(s)"), "{plans:?}");
    assert!(!on_two.contains("(0 full, 0 selective"), "{plans:?}");
    assert!(on_two.contains("each of 2 rank(s)"), "{plans:?}");
    assert_eq!((&plans[2], &plans[3]), (on_three, on_two), "{plans:?}");
    assert!(dir.join("run/checkpoints/step-000030").is_dir());
}

/// Mirroring every fourth step: a node killed between mirrors costs the steps
/// since the last one, which the survivors do again; a join waits for a mirrored
/// step. Losses and samples are still the static run's.
#[test]
fn mirroring_every_fourth_step_redoes_the_steps_since() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let want = reference(dir);
    let mut run = Run::start(dir, &["a", "b", "c"], "2", "4");
    for n in ["a", "b"] {
        run.node(n);
    }
    let (mut killed, mut joined) = (false, false);
    run.watch(|run, s| {
        let step = s["step"].as_u64().unwrap();
        if step >= 6 && !joined {
            run.node("c");
            joined = true;
        }
        if step >= 18 && !killed && s["world"] == 3 {
            run.kill("b");
            killed = true;
        }
        s["finished"].as_bool().unwrap()
    });
    run.finish();
    let worlds = assert_like_reference(dir, &want);
    let ev = events(dir);
    assert!(ev.contains("node `b` lost"), "{ev}");
    // Lost between mirrors: the steps since the last mirror were done again.
    let lost_at = ev
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["kind"] == "failure")
        .unwrap()["step"]
        .as_u64()
        .unwrap();
    if lost_at % 4 != 0 {
        assert!(ev.contains("\"rewind\""), "{ev}");
    }
    // The join took effect after a mirrored step (a multiple of 4).
    let grown = worlds.iter().find(|&&(_, w)| w == 3).unwrap().0;
    assert_eq!((grown - 1) % 4, 0, "{worlds:?}");
}

/// Two of three nodes die at once: a piece of the state and its mirror are both
/// gone, so the survivor goes back to the newest checkpoint that loads (the
/// newest is corrupted first, so that is the one before) and redoes the steps.
#[test]
fn losing_a_piece_and_its_mirror_falls_back_to_the_previous_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let want = reference(dir);
    let mut run = Run::start(dir, &["a", "b", "c"], "3", "1");
    for n in ["a", "b", "c"] {
        run.node(n);
    }
    let mut killed = false;
    run.watch(|run, s| {
        let step = s["step"].as_u64().unwrap();
        if step >= 22 && !killed {
            let ckpt = run.dir.join("run/checkpoints/step-000020");
            let shard = std::fs::read_dir(&ckpt)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .expect("a safetensors file in the checkpoint");
            let bytes = std::fs::read(&shard).unwrap();
            std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
            run.kill("b");
            run.kill("c");
            killed = true;
        }
        s["finished"].as_bool().unwrap()
    });
    run.finish();
    let worlds = assert_like_reference(dir, &want);
    let ev = events(dir);
    assert!(ev.contains("back to the checkpoint of step 10"), "{ev}");
    assert_eq!(worlds.last(), Some(&(30, 1)));
}

/// A node without the cluster token, a node of another cluster, and a drain
/// request without the token are all refused; nothing starts.
#[test]
fn wrong_tokens_and_certificates_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut run = Run::start(dir, &["a"], "2", "1");
    cluster(dir, "other-ca", &["intruder"]);
    std::fs::write(dir.join("a/token"), "not-the-token").unwrap();
    run.node("a");
    run.node("intruder");
    for (name, node) in std::mem::take(&mut run.nodes) {
        let (ok, err) = node.finish();
        assert!(!ok, "{name}: {err}");
        match name.as_str() {
            "a" => assert!(err.contains("wrong cluster token"), "{err}"),
            _ => assert!(err.contains("TLS handshake"), "{err}"),
        }
    }
    let drain = r#"{"drain":"a"}"#;
    let (code, _) = http(&run.control, "POST", "/scale", &[], drain);
    assert_eq!(code, 401);
    let wrong = "Authorization: Bearer not-the-token";
    let (code, _) = http(&run.control, "POST", "/scale", &[wrong], drain);
    assert_eq!(code, 401);
    let token = std::fs::read_to_string(dir.join("ca/token")).unwrap();
    let right = format!("Authorization: Bearer {token}");
    let (code, body) = http(&run.control, "POST", "/scale", &[&right], drain);
    assert_eq!(code, 404, "{body}");
    let s = status(&run.control).unwrap();
    assert_eq!(s["members"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["step"], 0);
    let (code, metrics) = http(&run.control, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
    assert!(metrics.contains("shoal_committed_step"), "{metrics}");
}

/// With the activation budget of [`elastic_config`], which one rank (all 12 rows)
/// cannot meet: losing two of three nodes makes the coordinator wait, saying why,
/// instead of forming a generation that cannot train; the node that joins makes
/// two, and the run ends like the static one.
#[test]
fn a_world_too_small_for_the_activation_budget_waits_for_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let want = reference(dir);
    let config = elastic_config();
    let parsed = TrainConfig::from_toml_str(&config, Path::new("config")).unwrap();
    let inputs = |world| PlanInputs {
        model: parsed.validate().unwrap(),
        stage: ZeroStage::from_number(parsed.zero).unwrap(),
        world,
        batch: parsed.batch_size,
        seq_len: parsed.seq_len,
        settings: RecomputeSettings::from_config(&parsed).unwrap(),
    };
    assert!(plan_recompute(&inputs(1)).is_err(), "one rank must not fit");
    assert!(plan_recompute(&inputs(2)).is_ok(), "two ranks must fit");
    let mut run = Run::start_with(&config, dir, &["a", "b", "c", "d"], "3", "1");
    for n in ["a", "b", "c"] {
        run.node(n);
    }
    let (mut killed, mut joined) = (false, false);
    run.watch(|run, s| {
        let step = s["step"].as_u64().unwrap();
        if step >= 12 && !killed {
            run.kill("b");
            run.kill("c");
            killed = true;
        }
        let waiting = events(&run.dir).contains("too few");
        if killed && waiting && !joined {
            run.node("d");
            joined = true;
        }
        s["finished"].as_bool().unwrap()
    });
    run.finish();
    let worlds = assert_like_reference(dir, &want);
    let ev = events(dir);
    assert!(ev.contains("1 node(s), too few"), "{ev}");
    assert!(ev.contains("activation"), "{ev}");
    assert_eq!(worlds.last(), Some(&(30, 2)), "{worlds:?}");
    // No generation of one rank was formed.
    assert!(worlds.iter().all(|&(_, w)| w >= 2), "{worlds:?}");
}
