//! Continual pretraining end to end: a run from exported-and-reimported Hugging Face
//! weights starts from exactly those weights; replay draws the requested share of the
//! samples on every ZeRO stage, with the same learning rate at the same token count
//! whatever the world size; a continual run resumed mid-warm-up repeats the
//! uninterrupted one and records its lineage; and an elastic continual run that loses
//! a node keeps its schedule and data (losses, rates and samples of the static run).

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::procs::{Proc, cluster, status};
use common::{assert_ok, losses, shoal, train};
use shoal::actors::{
    Checkpoint, DataSpec, Decay, MetricsRecord, NoopObserver, ReplaySpec, Schedule, StepStats,
    TrainConfig, TrainObserver, Trainer, read_metrics,
};
use shoal::data::MixtureWeights;

/// A one-layer model on 2×32-token batches of the built-in corpus ([`common::SMALL`]),
/// trained for `steps` into `dir/name`; returns its checkpoint.
fn pretrained(dir: &Path, name: &str, steps: u64) -> PathBuf {
    assert_ok(&train(
        dir,
        &["--out-dir", name, "--max-steps", &steps.to_string()],
    ));
    dir.join(name).join(format!("checkpoints/step-{steps:06}"))
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The evaluation lines of a metrics file: (step, domain → loss).
fn evals(path: &Path) -> Vec<(u64, std::collections::BTreeMap<String, f64>)> {
    read_metrics(path)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            MetricsRecord::Eval { step, eval, .. } => Some((step, eval)),
            _ => None,
        })
        .collect()
}

/// The learning rates of a metrics file's steps.
fn rates(path: &Path) -> Vec<f32> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"loss\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"]
                .as_f64()
                .unwrap() as f32
        })
        .collect()
}

#[test]
fn a_continual_run_from_reimported_hf_weights_starts_from_exactly_those_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = pretrained(dir, "pre", 4);
    assert_ok(&shoal(
        &["export", "--checkpoint", "pre", "--hf", "hf"],
        dir,
    ));
    assert_ok(&shoal(&["import", "--hf", "hf", "--out", "imported"], dir));
    let original = Checkpoint::load(&ckpt).unwrap();
    let imported = Checkpoint::load(&dir.join("imported")).unwrap();
    assert_eq!(bits(&original.params), bits(&imported.params));

    // The pretraining run evaluates the checkpoint it resumes from.
    let mut before = Trainer::resume(&ckpt).unwrap();
    let reference = before.evaluate().unwrap();

    // Continue from the Hugging Face directory and from the imported checkpoint, with
    // a re-warmed schedule and the built-in corpus as old data (names clash: old/...).
    for (init, out) in [("hf", "from-hf"), ("imported", "from-imported")] {
        let o = train(
            dir,
            &[
                "--init",
                init,
                "--out-dir",
                out,
                "--max-steps",
                "2",
                "--rewarm-lr",
                "1e-3",
                "--warmup-tokens",
                "128",
                "--replay-builtin",
                "7",
            ],
        );
        assert_ok(&o);
        let stderr = common::stderr(&o);
        assert!(stderr.contains("continues run 1: "), "{stderr}");
        assert!(stderr.contains("AdamW moments: zero"), "{stderr}");
        let metrics = dir.join(out).join("metrics.jsonl");
        let (step, first) = evals(&metrics).remove(0);
        assert_eq!(step, 0);
        // The step-0 evaluation is that of the pretrained checkpoint, bit for bit (as
        // f32), domain by domain; the old data is evaluated too.
        for d in &reference.domains {
            assert_eq!(
                first[&d.name] as f32, d.loss,
                "{init}: domain {} at step 0",
                d.name
            );
            assert!(first.contains_key(&format!("old/{}", d.name)), "{first:?}");
        }
        // Warm-up over the run's two steps: the first at half the maximum.
        assert_eq!(rates(&metrics), vec![5e-4f32, 1e-3]);
        let meta = Checkpoint::load_meta(&dir.join(out).join("checkpoints/step-000002")).unwrap();
        assert_eq!(meta.lineage.len(), 1);
        assert_eq!(meta.lineage[0].checkpoint, Path::new(init));
        let position = meta.schedule_position.unwrap();
        assert_eq!((position.phase, position.tokens_into_phase), (0, 128));
    }

    // And the first training step of the continual run is the one a run from the
    // original checkpoint takes (same weights, same data order from step 0).
    let config = |init: &str| TrainConfig {
        init: Some(dir.join(init)),
        out_dir: dir.join(format!("lib-{init}")),
        ..Checkpoint::load_meta(&ckpt).unwrap().train.unwrap()
    };
    let mut from_original = Trainer::new(config("pre")).unwrap();
    let mut from_hf = Trainer::new(config("hf")).unwrap();
    assert_eq!(
        bits(&from_original.state().params),
        bits(&from_hf.state().params)
    );
    let (a, b) = (from_original.step().unwrap(), from_hf.step().unwrap());
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
}

/// Records the steps' statistics.
#[derive(Default)]
struct Steps(Vec<StepStats>);

impl TrainObserver for Steps {
    fn on_step(&mut self, s: &StepStats) {
        self.0.push(s.clone());
    }
}

fn builtin(seed: u64) -> DataSpec {
    DataSpec::Builtin {
        seed,
        tokens_per_domain: 6000,
        val_fraction: 0.1,
    }
}

/// A continual config: 8×32-token steps of a tiny model on built-in corpus 3, a
/// quarter of the samples replayed from built-in corpus 7, re-warmed over 3 steps.
fn replay_config(out: &Path) -> TrainConfig {
    let steps = 12;
    let mut c = TrainConfig {
        data: builtin(3),
        batch_size: 8,
        seq_len: 32,
        max_steps: steps,
        eval_every: 0,
        checkpoint_every: 0,
        threads: 2,
        out_dir: out.to_path_buf(),
        replay: Some(ReplaySpec {
            fraction: 0.25,
            mixture: MixtureWeights::Uniform,
            data: builtin(7),
        }),
        ..TrainConfig::default()
    };
    c.model.n_layer = Some(1);
    c.model.n_embd = Some(32);
    c.model.n_head = Some(2);
    let tokens = steps * c.tokens_per_step();
    c.schedule = Some(Schedule::single(
        tokens,
        3 * c.tokens_per_step(),
        2e-3,
        2e-4,
        Decay::Cosine,
    ));
    c
}

#[test]
fn replay_draws_its_share_on_every_zero_stage_at_the_same_rates() {
    let tmp = tempfile::tempdir().unwrap();
    // Per domain consumed samples, learning-rate bits and losses of the first config.
    type Run = (Vec<(String, u64)>, Vec<u32>, Vec<f32>);
    let mut reference: Option<Run> = None;
    // (ranks, ZeRO stage, accumulation): the same 8-sequence global batch each time.
    for (ranks, zero, accum) in [
        (1, 0, 1),
        (1, 0, 2),
        (2, 0, 1),
        (2, 1, 1),
        (2, 2, 2),
        (2, 3, 1),
    ] {
        let mut c = replay_config(&tmp.path().join(format!("r{ranks}z{zero}a{accum}")));
        c.ranks = ranks;
        c.zero = zero;
        (c.batch_size, c.grad_accum) = (8 / accum, accum);
        let mut trainer = Trainer::new(c.clone()).unwrap();
        let mut steps = Steps::default();
        trainer.run(&mut steps).unwrap();
        let consumed = trainer.consumed_samples();
        let lrs: Vec<u32> = steps.0.iter().map(|s| s.lr.to_bits()).collect();
        let losses: Vec<f32> = steps.0.iter().map(|s| s.loss).collect();
        // The old domains are told apart from the new ones of the same names.
        let names: Vec<&str> = consumed.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"grammar") && names.contains(&"old/grammar"),
            "{names:?}"
        );
        let total: u64 = consumed.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 12 * 8);
        // Exactly what the pure sampling function says for samples 0..96, and so the
        // same on every stage and world size.
        let replay = trainer.replay().unwrap();
        let mut want = vec![0u64; consumed.len()];
        for i in 0..total {
            want[replay.domain_of(trainer.mixture(), c.seed, i).unwrap()] += 1;
        }
        assert_eq!(consumed.iter().map(|(_, n)| *n).collect::<Vec<_>>(), want);
        match &reference {
            None => reference = Some((consumed, lrs, losses)),
            Some((consumed0, lrs0, losses0)) => {
                assert_eq!(
                    &consumed, consumed0,
                    "ranks {ranks} zero {zero} accum {accum}"
                );
                assert_eq!(&lrs, lrs0, "ranks {ranks} zero {zero} accum {accum}: rates");
                for (a, b) in losses.iter().zip(losses0) {
                    assert!((a - b).abs() <= 1e-4 * b.abs(), "zero {zero}: {a} vs {b}");
                }
            }
        }
    }
    // The share of replayed samples is the fraction within sampling error, on the
    // run's samples and on many more.
    let (consumed, _, _) = reference.unwrap();
    let old: u64 = consumed
        .iter()
        .filter(|(n, _)| n.starts_with("old/"))
        .map(|(_, n)| n)
        .sum();
    let share = old as f64 / 96.0;
    let sd = (0.25f64 * 0.75 / 96.0).sqrt();
    assert!((share - 0.25).abs() <= 4.0 * sd, "{share}");
    let c = replay_config(&tmp.path().join("many"));
    let trainer = Trainer::new(c.clone()).unwrap();
    let replay = trainer.replay().unwrap();
    let new = trainer.mixture().domains.len();
    let n = 40_000u64;
    let replayed = (0..n)
        .filter(|&i| replay.domain_of(trainer.mixture(), c.seed, i).unwrap() >= new)
        .count() as f64;
    let sd = (0.25f64 * 0.75 / n as f64).sqrt();
    assert!((replayed / n as f64 - 0.25).abs() <= 4.0 * sd, "{replayed}");
}

#[test]
fn a_continual_run_resumed_mid_warmup_repeats_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Pretrain the replay config's model without replay, then continue it.
    let mut pre = replay_config(&dir.join("pre"));
    pre.replay = None;
    pre.schedule = None;
    (pre.max_steps, pre.lr, pre.min_lr, pre.warmup_steps) = (5, 2e-3, 2e-4, 1);
    let pre_ckpt = {
        let mut t = Trainer::new(pre.clone()).unwrap();
        t.run(&mut NoopObserver).unwrap().checkpoint.unwrap()
    };
    let pre_meta = Checkpoint::load_meta(&pre_ckpt).unwrap();
    let continual = |out: &str, keep: bool| TrainConfig {
        init: Some(pre_ckpt.clone()),
        reset_moments: !keep,
        data: builtin(11),
        ..replay_config(&dir.join(out))
    };

    // Kept moments are the checkpoint's, and AdamW's bias correction goes on from its
    // steps; reset ones are zero.
    let pre_state = Checkpoint::load(&pre_ckpt).unwrap();
    let kept = Trainer::new(continual("kept", true)).unwrap();
    assert_eq!(bits(&kept.state().adam_v), bits(&pre_state.adam_v));
    assert_eq!(kept.moment_steps(), 5);
    let reset = Trainer::new(continual("reset", false)).unwrap();
    assert!(reset.state().adam_m.iter().all(|&m| m == 0.0));
    assert_eq!(reset.moment_steps(), 0);

    let mut straight = Trainer::new(continual("straight", true)).unwrap();
    let full: Vec<StepStats> = (0..6).map(|_| straight.step().unwrap()).collect();
    // Mid warm-up (3 steps of warm-up): stop after 2, resume, go on.
    let mut first = Trainer::new(continual("split", true)).unwrap();
    let mut halves: Vec<StepStats> = (0..2).map(|_| first.step().unwrap()).collect();
    let saved = first.save_checkpoint().unwrap();
    drop(first);
    let mut second = Trainer::resume(&saved).unwrap();
    assert_eq!(second.moment_steps(), 5);
    halves.extend((0..4).map(|_| second.step().unwrap()));
    let key = |s: &[StepStats]| -> Vec<(u32, u32)> {
        s.iter()
            .map(|s| (s.loss.to_bits(), s.lr.to_bits()))
            .collect()
    };
    assert_eq!(key(&full), key(&halves));
    assert!(full[0].lr < full[2].lr && full[2].lr == 2e-3);

    // The checkpoint records the position and the lineage: which phase of which run.
    let meta = Checkpoint::load_meta(&saved).unwrap();
    let p = meta.schedule_position.unwrap();
    assert_eq!((p.phase, p.phases), (0, 1));
    assert_eq!(p.tokens_into_phase, 2 * 256);
    assert_eq!(p.lr, full[2].lr);
    assert_eq!(meta.moment_steps, 5);
    assert_eq!(meta.lineage.len(), 1);
    let run = &meta.lineage[0];
    assert_eq!((run.step, run.tokens_seen), (5, pre_meta.tokens_seen));
    assert_eq!(run.run, dir.join("pre").display().to_string());
    assert_eq!(run.position.as_ref().unwrap().phase, 0);
    assert_eq!(run.position.as_ref().unwrap().lr, 2e-4);

    // A continual run of the continual run carries the whole lineage.
    let mut next = continual("next", false);
    next.init = Some(saved.clone());
    let t = Trainer::new(next).unwrap();
    assert_eq!(t.lineage().len(), 2);
    assert_eq!(t.lineage()[1].checkpoint, saved);
}

/// An elastic continual run: from a pretrained checkpoint with its moments, a
/// re-warmed schedule and a quarter replayed, on two nodes of which one is killed
/// mid-run (during the warm-up's aftermath); the survivor resumes at the committed
/// step's tokens, so the per-step losses and learning rates are the static run's.
#[test]
fn an_elastic_continual_run_that_loses_a_node_keeps_its_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_ok(&shoal(
        &[
            "train",
            "--data-builtin",
            "--tokens-per-domain",
            "6000",
            "--n-layer",
            "2",
            "--n-embd",
            "128",
            "--n-head",
            "4",
            "--batch-size",
            "12",
            "--seq-len",
            "128",
            "--max-steps",
            "2",
            "--eval-every",
            "0",
            "--threads",
            "1",
            "--out-dir",
            "pre",
        ],
        dir,
    ));
    let tokens = 20 * 12 * 128;
    let config = format!(
        r#"
max_steps = 20
batch_size = 12
seq_len = 128
eval_every = 0
checkpoint_every = 10
threads = 1
out_dir = "run"
zero = 3
init = "pre"
reset_moments = false

[data]
source = "builtin"
seed = 5
tokens_per_domain = 6000

[[schedule.phases]]
tokens = {tokens}
warmup_tokens = {warmup}
max_lr = 3e-3
min_lr = 3e-4
decay = "wsd:0.5"

[replay]
fraction = 0.25
[replay.data]
source = "builtin"
tokens_per_domain = 6000
"#,
        warmup = 4 * 12 * 128
    );
    std::fs::write(dir.join("config.toml"), &config).unwrap();
    assert_ok(&shoal(
        &["train", "--config", "config.toml", "--out-dir", "ref"],
        dir,
    ));
    let want = losses(&dir.join("ref/metrics.jsonl"));
    let want_lr = rates(&dir.join("ref/metrics.jsonl"));
    assert_eq!(want.len(), 20);

    cluster(dir, "ca", &["coordinator", "a", "b"]);
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
            "2",
            "--heartbeat-timeout-ms",
            "1500",
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
    let node = |name: &str| {
        let cluster = dir.join(name);
        Proc::spawn(
            &[
                "node",
                "--join",
                &at,
                "--cluster",
                cluster.to_str().unwrap(),
                "--node",
                name,
            ],
            dir,
        )
    };
    let (a, mut b) = (node("a"), node("b"));
    let deadline = std::time::Instant::now() + common::procs::PATIENCE;
    let mut killed = false;
    loop {
        assert!(std::time::Instant::now() < deadline, "the run hangs");
        if let Some(s) = status(&control) {
            let step = s["step"].as_u64().unwrap();
            if step >= 7 && !killed {
                b.kill();
                killed = true;
            }
            if s["finished"].as_bool().unwrap() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, err) = coordinator.finish();
    assert!(ok, "{err}");
    let (ok, err) = a.finish();
    assert!(ok, "{err}");
    let events = std::fs::read_to_string(dir.join("run/elastic.jsonl")).unwrap();
    assert!(events.contains("node `b` lost"), "{events}");
    let got = losses(&dir.join("run/metrics.jsonl"));
    let got_lr = rates(&dir.join("run/metrics.jsonl"));
    assert_eq!(got_lr, want_lr);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert!(
            (w - g).abs() <= 1e-4 * w.abs(),
            "step {}: {w} vs {g}",
            i + 1
        );
    }
    // The warm-up, the stable part and the decay all happened.
    assert!(want_lr[0] < want_lr[3] && want_lr[3] == want_lr[9] && want_lr[19] < want_lr[9]);
}

#[test]
fn the_readme_continual_example_is_valid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme.find("## Continual pretraining").unwrap()..];
    let start = section.find("```toml\n").unwrap() + 8;
    let len = section[start..].find("```").unwrap();
    let c = TrainConfig::from_toml_str(&section[start..start + len], Path::new("README")).unwrap();
    c.validate().unwrap();
    let phase = &c.schedule.as_ref().unwrap().phases[0];
    // The schedule spans the run, its warm-up 1% of it, as the comments say.
    assert_eq!(phase.tokens, c.max_steps * c.tokens_per_step());
    assert_eq!(phase.warmup_tokens * 100, phase.tokens);
    assert_eq!(c.replay.as_ref().unwrap().fraction, 0.05);
}
