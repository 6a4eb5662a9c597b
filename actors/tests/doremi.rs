//! DoReMi end to end on the built-in synthetic domains, whose difficulties differ by design:
//! the reference and the Group DRO proxy train, the averaged weights are written as a file
//! the trainer reads, and the domain that is pure noise (nothing to learn beyond its unigram
//! distribution, so the proxy soon has no excess loss on it) loses weight.

use std::path::Path;

use shoal_actors::{
    DataSpec, DoremiSpec, ModelSpec, NoopObserver, TrainConfig, Trainer, run_doremi,
};
use shoal_data::{MixtureWeights, WeightsFile};

fn config(out: &Path) -> TrainConfig {
    TrainConfig {
        model: ModelSpec {
            preset: "tiny".into(),
            n_layer: Some(2),
            n_embd: Some(64),
            ..ModelSpec::default()
        },
        data: DataSpec::Builtin {
            seed: 1,
            tokens_per_domain: 40_000,
            val_fraction: 0.1,
        },
        batch_size: 8,
        seq_len: 64,
        grad_accum: 1,
        max_steps: 60,
        eval_every: 0,
        checkpoint_every: 0,
        out_dir: out.to_path_buf(),
        threads: 2,
        ..TrainConfig::default()
    }
}

#[test]
fn doremi_weights_favour_learnable_domains_and_feed_the_trainer() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = DoremiSpec {
        config: config(tmp.path()),
        reference: None,
        step_size: 1.0,
        smoothing: 1e-3,
    };
    let r = run_doremi(&spec, &mut NoopObserver).unwrap();
    assert_eq!(r.domains, vec!["grammar", "arithmetic", "copy", "noise"]);
    assert_eq!(r.baseline, vec![0.25; 4]);
    for w in [&r.average, &r.last] {
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{w:?}");
        assert!(w.iter().all(|&x| x >= 1e-3 / 4.0 - 1e-12), "{w:?}");
    }
    let noise = r.average[3];
    assert!(
        r.average[..3].iter().all(|&w| w > noise) && noise < 0.25,
        "noise should weigh least: {:?}",
        r.average
    );

    // Every step is logged; the file records how the weights were found.
    let log = std::fs::read_to_string(tmp.path().join("proxy/doremi.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 60);
    let file = WeightsFile::load(&r.weights_file).unwrap();
    assert_eq!(file.about["method"], "doremi");
    assert_eq!(file.about["proxy_steps"], 60);

    // The trainer samples with exactly these weights.
    let mut main = config(&tmp.path().join("main"));
    main.mixture = MixtureWeights::File(r.weights_file.clone());
    let trainer = Trainer::new(main).unwrap();
    let got = trainer.mixture().normalized_weights();
    for (g, w) in got.iter().zip(&r.average) {
        assert!((g - w).abs() < 1e-12, "{got:?} vs {:?}", r.average);
    }

    // A given reference is used as it is: the same reference gives the same weights.
    let again = tmp.path().join("again");
    let spec = DoremiSpec {
        config: config(&again),
        reference: Some(r.reference.clone()),
        ..spec
    };
    let r2 = run_doremi(&spec, &mut NoopObserver).unwrap();
    assert!(!again.join("reference").exists());
    assert_eq!(r2.average, r.average);
}

#[test]
fn a_proxy_that_cannot_move_keeps_the_weights_uniform() {
    // With a learning rate too small to change any f32 parameter the proxy stays at its
    // initialisation; the reference is that same initialisation, so every excess loss is
    // exactly zero and the weights never move.
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.max_steps = 4;
    c.lr = 1e-30;
    c.min_lr = 1e-30;
    let dir = tmp.path().join("init");
    Trainer::new(c.clone())
        .unwrap()
        .checkpoint()
        .save(&dir)
        .unwrap();
    let spec = DoremiSpec {
        config: c,
        reference: Some(dir),
        step_size: 1.0,
        smoothing: 1e-3,
    };
    let r = run_doremi(&spec, &mut NoopObserver).unwrap();
    assert_eq!(r.average, vec![0.25; 4]);
    assert_eq!(r.last, vec![0.25; 4]);
}
