//! Trainer tests: exact resume, learning on the synthetic corpus, the run loop's files.

use super::*;
use crate::checkpoint::CheckpointStore;
use crate::metrics::{MetricsRecord, read_metrics};

/// A small, fast configuration of the tiny model on the built-in corpus.
pub(crate) fn small_config(out_dir: &Path) -> TrainConfig {
    TrainConfig {
        data: DataSpec::Builtin {
            seed: 3,
            tokens_per_domain: 40_000,
            val_fraction: 0.1,
        },
        batch_size: 4,
        seq_len: 32,
        grad_accum: 2,
        max_steps: 6,
        lr: 2e-3,
        min_lr: 2e-4,
        warmup_steps: 2,
        eval_every: 0,
        checkpoint_every: 0,
        keep_checkpoints: 2,
        out_dir: out_dir.to_path_buf(),
        threads: 2,
        ..TrainConfig::default()
    }
}

fn bits(losses: &[f32]) -> Vec<u32> {
    losses.iter().map(|l| l.to_bits()).collect()
}

#[test]
fn resumed_run_repeats_the_uninterrupted_one_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let config = small_config(tmp.path());

    let mut straight = Trainer::new(config.clone()).unwrap();
    let full: Vec<f32> = (0..6).map(|_| straight.step().unwrap().loss).collect();

    let mut first = Trainer::new(config.clone()).unwrap();
    let mut halves: Vec<f32> = (0..3).map(|_| first.step().unwrap().loss).collect();
    let dir = first.save_checkpoint().unwrap();
    drop(first);
    let mut second = Trainer::resume(tmp.path()).unwrap();
    assert_eq!(second.resumed_from(), Some(dir.as_path()));
    assert_eq!(second.step_count(), 3);
    assert_eq!(second.tokens_seen(), 3 * config.tokens_per_step());
    halves.extend((0..3).map(|_| second.step().unwrap().loss));

    assert_eq!(bits(&full), bits(&halves), "{full:?} vs {halves:?}");
    let (a, b) = (&straight.state().params, &second.state().params);
    assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(full[5] < full[0], "loss did not fall: {full:?}");
}

/// Unigram entropy (nats/token) of a domain's training tokens: the loss of a model that
/// ignores context, which any working trainer beats quickly.
fn unigram_entropy(tokens: &[u32]) -> f64 {
    let mut counts = vec![0usize; 256];
    for &t in tokens {
        counts[t as usize] += 1;
    }
    let n = tokens.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// Trains the tiny model for 250 steps of 8×64 tokens (~35 s on two cores) and checks
/// that it learned: a broken gradient, optimizer or data pipeline fails these bounds.
#[test]
fn tiny_model_learns_the_synthetic_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        data: DataSpec::Builtin {
            seed: 0,
            tokens_per_domain: 100_000,
            val_fraction: 0.1,
        },
        batch_size: 8,
        seq_len: 64,
        max_steps: 250,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 20,
        eval_batches: 4,
        out_dir: tmp.path().to_path_buf(),
        threads: 2,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config).unwrap();
    let start = Instant::now();
    let before = trainer.evaluate().unwrap();
    let mut losses = Vec::new();
    for _ in 0..250 {
        losses.push(trainer.step().unwrap().loss);
    }
    let after = trainer.evaluate().unwrap();
    println!("250 steps in {:.1} s", start.elapsed().as_secs_f64());

    let (mut gap_before, mut gap_after) = (0.0, 0.0);
    for ((d, b), a) in trainer
        .mixture()
        .domains
        .iter()
        .zip(&before.domains)
        .zip(&after.domains)
    {
        let unigram = unigram_entropy(&d.train.to_vec());
        let floor = a.floor.expect("synthetic domains know their floor");
        println!(
            "{:<12} before {:.3} after {:.3} unigram {:.3} floor {floor:.3}",
            d.name, b.loss, a.loss, unigram
        );
        // Untrained: about ln(256) = 5.55 everywhere.
        assert!(
            (b.loss - 5.55).abs() < 0.3,
            "{}: initial loss {}",
            d.name,
            b.loss
        );
        // Every domain at least reaches what token frequencies alone give.
        assert!(
            f64::from(a.loss) < unigram + 0.1,
            "{}: {} vs unigram {unigram}",
            d.name,
            a.loss
        );
        gap_before += f64::from(b.loss) - floor;
        gap_after += f64::from(a.loss) - floor;
        if d.name == "grammar" {
            // The grammar needs context: the model must beat the unigram baseline clearly.
            assert!(
                f64::from(a.loss) < unigram - 0.5,
                "grammar: {} vs {unigram}",
                a.loss
            );
        }
    }
    // Most of the distance to the floors is covered (about 75% in practice).
    assert!(
        gap_after < 0.4 * gap_before,
        "gap {gap_before:.2} -> {gap_after:.2}"
    );
    let head: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let tail: f32 = losses[240..].iter().sum::<f32>() / 10.0;
    assert!(tail < head - 2.0, "train loss {head} -> {tail}");
}

#[test]
fn run_writes_metrics_and_checkpoints_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        max_steps: 4,
        eval_every: 2,
        eval_batches: 1,
        checkpoint_every: 1,
        keep_checkpoints: 2,
        ..small_config(tmp.path())
    };
    struct Count(usize, usize, usize);
    impl TrainObserver for Count {
        fn on_step(&mut self, _: &StepStats) {
            self.0 += 1;
        }
        fn on_eval(&mut self, _: &EvalStats) {
            self.1 += 1;
        }
        fn on_checkpoint(&mut self, _: u64, _: &Path) {
            self.2 += 1;
        }
    }
    let mut seen = Count(0, 0, 0);
    let summary = Trainer::new(config.clone())
        .unwrap()
        .run(&mut seen)
        .unwrap();
    assert_eq!((seen.0, seen.1, seen.2), (4, 3, 4));
    assert_eq!(summary.step, 4);
    let store = CheckpointStore::new(tmp.path(), 2);
    let steps: Vec<u64> = store.list().unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![3, 4]);
    assert_eq!(summary.checkpoint, store.latest().unwrap());
    let evals = read_metrics(&summary.metrics)
        .unwrap()
        .iter()
        .filter(|r| matches!(r, MetricsRecord::Eval { .. }))
        .count();
    assert_eq!(evals, 3);

    // A fresh run must not mix its checkpoints with these.
    let e = Trainer::new(config.clone())
        .unwrap()
        .run(&mut NoopObserver)
        .unwrap_err();
    assert!(matches!(e, TrainError::CheckpointsExist { .. }), "{e}");

    // Resuming from step 3 with a longer run rewrites the metrics after step 3.
    let longer = TrainConfig {
        max_steps: 6,
        ..config
    };
    let dir = store.root().join("step-000003");
    let summary = Trainer::resume_with(&dir, longer)
        .unwrap()
        .run(&mut NoopObserver)
        .unwrap();
    assert_eq!(summary.step, 6);
    let steps: Vec<u64> = read_metrics(&summary.metrics)
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            MetricsRecord::Step(s) => Some(s.step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn data_that_does_not_fit_the_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = small_config(tmp.path());
    config.model.vocab_size = Some(100);
    let e = Trainer::new(config).err().unwrap().to_string();
    assert!(e.contains("vocab_size") && e.contains("256"), "{e}");

    let mut config = small_config(tmp.path());
    config.data = DataSpec::Builtin {
        seed: 0,
        tokens_per_domain: 200,
        val_fraction: 0.1,
    };
    let e = Trainer::new(config).err().unwrap().to_string();
    assert!(
        e.contains("validation split") && e.contains("seq_len"),
        "{e}"
    );

    let mut config = small_config(tmp.path());
    config.init = Some(tmp.path().join("nothing-here"));
    let e = Trainer::new(config).err().unwrap().to_string();
    assert!(e.contains("nothing-here"), "{e}");
}

#[test]
fn generation_stays_within_the_trained_context() {
    let model = Gpt::new(GptConfig {
        vocab_size: 256,
        n_positions: 32,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        layer_norm_eps: 1e-5,
    })
    .unwrap();
    let params = model.init_params(1);
    let opts = SampleOptions {
        max_new_tokens: 40,
        temperature: 1.0,
        top_k: None,
        seed: 5,
        context: Some(8),
    };
    let prompt = [1u32, 2, 3];
    let a = model.generate(&params, &prompt, &opts).unwrap();
    assert_eq!(a.len(), 40);
    assert_eq!(a, model.generate(&params, &prompt, &opts).unwrap());
    // The window matters: the whole position table gives another continuation, and a
    // context beyond the table is the table.
    let full = SampleOptions {
        context: None,
        ..opts.clone()
    };
    let beyond = SampleOptions {
        context: Some(1000),
        ..opts.clone()
    };
    let full = model.generate(&params, &prompt, &full).unwrap();
    assert_ne!(a, full);
    assert_eq!(full, model.generate(&params, &prompt, &beyond).unwrap());
    assert!(
        model
            .generate(
                &params,
                &prompt,
                &SampleOptions {
                    context: Some(0),
                    ..opts
                }
            )
            .is_err()
    );
}
