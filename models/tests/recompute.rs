//! Activation recomputation: every per-layer plan gives the losses and gradients of
//! keeping everything, and holds the bytes its accounting predicts.

use shoal_models::{
    ActivationBytes, Activations, Gpt, GptConfig, Recompute, RecomputePlan, Whole, WholeGrads,
};

use Recompute::{Full, None as Keep, Selective};

/// Loss, per-position losses and gradients of one forward and backward under `plan`.
fn run(
    gpt: &Gpt,
    params: &[f32],
    plan: RecomputePlan,
    b: usize,
    t: usize,
    weights: Option<&[f32]>,
) -> (f32, Vec<f32>, Vec<f32>) {
    let v = gpt.config.vocab_size as u32;
    let tokens: Vec<u32> = (0..b * t).map(|i| (i as u32 * 7919 + 3) % v).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i as u32 * 104_729 + 1) % v).collect();
    let mut acts = Activations::with_plan(&gpt.config, b, t, plan).unwrap();
    acts.set_sequence_weights(weights).unwrap();
    let mut grads = vec![0.0f32; gpt.num_params()];
    // Two micro-batches: the second forward overwrites the shared recompute buffers.
    let mut loss = 0.0;
    for _ in 0..2 {
        loss = gpt
            .forward(params, &mut acts, &tokens, Some(&targets))
            .unwrap()
            .unwrap();
        gpt.backward(params, &mut acts, &mut grads, 0.5).unwrap();
    }
    (loss, acts.losses().to_vec(), grads)
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().map(|x| x.abs()).fold(0.0f32, f32::max).max(1.0);
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    assert!(
        err <= 1e-5 * scale,
        "{what}: element {i} differs by {err:e} (scale {scale})"
    );
}

fn plans(n_layer: usize) -> Vec<RecomputePlan> {
    let pattern = [Full, Selective, Keep, Full, Keep, Selective];
    let mixed = (0..n_layer).map(|l| pattern[l % pattern.len()]).collect();
    let reversed = (0..n_layer)
        .map(|l| pattern[(n_layer - 1 - l) % pattern.len()])
        .collect();
    vec![
        RecomputePlan::uniform(n_layer, Selective),
        RecomputePlan::uniform(n_layer, Full),
        RecomputePlan::from_layers(mixed),
        RecomputePlan::from_layers(reversed),
    ]
}

fn check_model(config: GptConfig, b: usize, t: usize, weights: Option<&[f32]>) {
    let gpt = Gpt::new(config).unwrap();
    let params = gpt.init_params(11);
    let n_layer = gpt.config.n_layer;
    let (loss0, losses0, grads0) = run(
        &gpt,
        &params,
        RecomputePlan::uniform(n_layer, Keep),
        b,
        t,
        weights,
    );
    assert!(grads0.iter().any(|&g| g != 0.0));
    for plan in plans(n_layer) {
        let name = plan.to_string();
        let (loss, losses, grads) = run(&gpt, &params, plan, b, t, weights);
        assert!((loss - loss0).abs() <= 1e-5 * loss0.abs(), "{name}: loss");
        assert_close(&format!("{name}: losses"), &losses, &losses0);
        assert_close(&format!("{name}: gradients"), &grads, &grads0);
    }
}

#[test]
fn every_plan_matches_keeping_everything() {
    // Two layers, one attention tile.
    check_model(
        GptConfig {
            vocab_size: 37,
            n_positions: 16,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            layer_norm_eps: 1e-5,
        },
        3,
        13,
        None,
    );
    // Four layers and T over two attention tiles (64 rows each), with loss weights.
    check_model(
        GptConfig::preset("tiny").unwrap(),
        2,
        100,
        Some(&[0.25, 1.5]),
    );
    // Six layers, every mix of the pattern.
    check_model(
        GptConfig {
            vocab_size: 64,
            n_positions: 80,
            n_layer: 6,
            n_head: 4,
            n_embd: 32,
            layer_norm_eps: 1e-5,
        },
        2,
        70,
        None,
    );
}

/// The parts path (what ZeRO stages 2 and 3 run) recomputes the same way.
#[test]
fn parts_path_recomputes_too() {
    let gpt = Gpt::new(GptConfig::preset("tiny").unwrap()).unwrap();
    let params = gpt.init_params(5);
    let (b, t) = (2, 24);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 13 % 256) as u32).collect();
    let grads_with = |plan: RecomputePlan| {
        let mut acts = Activations::with_plan(&gpt.config, b, t, plan).unwrap();
        let mut src = Whole::new(&gpt, &params).unwrap();
        gpt.forward_parts(&mut src, &mut acts, &tokens, Some(&tokens))
            .unwrap();
        let mut grads = vec![0.0f32; gpt.num_params()];
        let mut done = |_: std::ops::Range<usize>, _: &[f32]| {};
        let mut sink = WholeGrads::new(&gpt, &mut grads, &mut done).unwrap();
        gpt.backward_parts(&mut src, &mut acts, &mut sink, 1.0)
            .unwrap();
        grads
    };
    let keep = grads_with(RecomputePlan::uniform(4, Keep));
    let mixed = grads_with(RecomputePlan::from_layers(vec![
        Full, Selective, Full, Keep,
    ]));
    assert_close("parts", &mixed, &keep);
}

#[test]
fn buffers_hold_what_the_accounting_predicts() {
    let config = GptConfig::preset("small").unwrap();
    let (b, t) = (2, 48);
    let (n, c) = (b * t, config.n_embd);
    let mut totals = Vec::new();
    let mut all = vec![RecomputePlan::uniform(config.n_layer, Keep)];
    all.extend(plans(config.n_layer));
    for plan in all {
        let acts = Activations::with_plan(&config, b, t, plan.clone()).unwrap();
        let predicted = Activations::predict_bytes(&config, b, t, &plan);
        assert_eq!(acts.bytes(), predicted.total(), "{plan}");
        assert_eq!(acts.recompute_scratch_bytes(), predicted.recompute_scratch);
        for (l, &policy) in plan.layers().iter().enumerate() {
            assert_eq!(acts.layer_bytes(l), predicted.layers[l]);
            assert_eq!(
                acts.layer_bytes(l),
                ActivationBytes::layer(&config, b, t, policy)
            );
        }
        totals.push((plan, acts.bytes(), predicted.recompute_scratch));
    }
    let (none, selective, full) = (&totals[0], &totals[1], &totals[2]);
    assert_eq!(none.2, 0, "keeping everything shares nothing");
    // Selective frees each layer's attention output and log-sum-exp, less one shared copy.
    let per_layer_sel = 4 * (n * c + config.n_head * n);
    assert_eq!(
        none.1 - selective.1,
        (config.n_layer - 1) * per_layer_sel,
        "selective"
    );
    // Full keeps one [N, C] output per layer plus one shared layer's worth.
    let saved = ActivationBytes::layer(&config, b, t, Keep) - 4 * n * c;
    assert_eq!(none.1 - full.1, (config.n_layer - 1) * saved, "full");
}

#[test]
fn plans_can_change_and_must_fit_the_model() {
    let gpt = Gpt::new(GptConfig::preset("tiny").unwrap()).unwrap();
    let params = gpt.init_params(2);
    let (b, t) = (1, 16);
    let tokens: Vec<u32> = (0..t as u32).collect();
    assert!(Activations::with_plan(&gpt.config, b, t, RecomputePlan::uniform(3, Full)).is_err());
    let mut acts = Activations::new(&gpt.config, b, t).unwrap();
    let before = acts.bytes();
    gpt.forward(&params, &mut acts, &tokens, Some(&tokens))
        .unwrap();
    let mut keep = vec![0.0f32; gpt.num_params()];
    gpt.backward(&params, &mut acts, &mut keep, 1.0).unwrap();
    acts.set_plan(RecomputePlan::uniform(4, Full)).unwrap();
    assert!(acts.bytes() < before);
    assert_eq!(acts.plan(), &RecomputePlan::uniform(4, Full));
    assert!(acts.set_plan(RecomputePlan::uniform(5, Full)).is_err());
    gpt.forward(&params, &mut acts, &tokens, Some(&tokens))
        .unwrap();
    // A new layout invalidates a forward pass that has not been differentiated yet.
    acts.set_plan(RecomputePlan::uniform(4, Selective)).unwrap();
    let mut full = vec![0.0f32; gpt.num_params()];
    assert!(gpt.backward(&params, &mut acts, &mut full, 1.0).is_err());
    gpt.forward(&params, &mut acts, &tokens, Some(&tokens))
        .unwrap();
    gpt.backward(&params, &mut acts, &mut full, 1.0).unwrap();
    assert_close("after set_plan", &full, &keep);
}
