//! The whole model's backward against central finite differences of its forward, on a model
//! small enough that every parameter can be perturbed.

use shoal_models::{Activations, Gpt, GptConfig};

#[test]
fn backward_matches_finite_differences() {
    let config = GptConfig {
        vocab_size: 11,
        n_positions: 8,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        layer_norm_eps: 1e-5,
    };
    let gpt = Gpt::new(config).unwrap();
    // Larger-than-default init so every path carries signal.
    let mut params: Vec<f32> = gpt.init_params(5).iter().map(|x| x * 3.0).collect();
    for (i, p) in params.iter_mut().enumerate() {
        *p += 0.01 * ((i * 7919 % 13) as f32 - 6.0);
    }
    let (b, t) = (2, 5);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 11) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 3 % 11) as u32).collect();
    let mut acts = Activations::new(&gpt.config, b, t).unwrap();
    let loss_at = |p: &[f32], acts: &mut Activations| -> f64 {
        gpt.forward(p, acts, &tokens, Some(&targets))
            .unwrap()
            .unwrap() as f64
    };
    loss_at(&params, &mut acts);
    let mut grads = vec![0.0f32; gpt.num_params()];
    gpt.backward(&params, &mut acts, &mut grads, 1.0).unwrap();

    let h = 2e-3f32;
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for i in (0..params.len()).step_by(3) {
        let orig = params[i];
        params[i] = orig + h;
        let up = loss_at(&params, &mut acts);
        params[i] = orig - h;
        let down = loss_at(&params, &mut acts);
        params[i] = orig;
        let fd = (up - down) / (2.0 * h as f64);
        let g = grads[i] as f64;
        assert!(
            (fd - g).abs() <= 1e-3 + 0.02 * g.abs(),
            "param {i}: backward {g:e}, finite difference {fd:e}"
        );
        diff += (fd - g).powi(2);
        norm += g * g;
    }
    let rel = (diff / norm).sqrt();
    assert!(rel < 1e-2, "relative error of sampled gradient {rel:e}");
}

#[test]
fn gradient_accumulation_scales() {
    let gpt = Gpt::new(GptConfig::preset("tiny").unwrap()).unwrap();
    let params = gpt.init_params(1);
    let (b, t) = (1, 16);
    let tokens: Vec<u32> = (0..t as u32).map(|i| i * 17 % 256).collect();
    let targets: Vec<u32> = (0..t as u32).map(|i| i * 31 % 256).collect();
    let mut acts = Activations::new(&gpt.config, b, t).unwrap();
    let mut once = vec![0.0f32; gpt.num_params()];
    gpt.forward(&params, &mut acts, &tokens, Some(&targets))
        .unwrap();
    gpt.backward(&params, &mut acts, &mut once, 1.0).unwrap();
    let mut twice = vec![0.0f32; gpt.num_params()];
    for _ in 0..2 {
        gpt.forward(&params, &mut acts, &tokens, Some(&targets))
            .unwrap();
        gpt.backward(&params, &mut acts, &mut twice, 0.5).unwrap();
    }
    for (a, b) in once.iter().zip(&twice) {
        assert!((a - b).abs() <= 1e-6 + 1e-5 * a.abs());
    }
    // A second backward without a new forward is an error, not garbage.
    assert!(gpt.backward(&params, &mut acts, &mut twice, 1.0).is_err());
}

#[test]
fn bad_tokens_are_errors() {
    let gpt = Gpt::new(GptConfig::preset("tiny").unwrap()).unwrap();
    let params = gpt.init_params(1);
    let mut acts = Activations::new(&gpt.config, 1, 4).unwrap();
    let e = gpt
        .forward(&params, &mut acts, &[1, 2, 300, 4], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("300") && e.contains("vocabulary"), "{e}");
    assert!(gpt.forward(&params, &mut acts, &[1, 2], None).is_err());
    assert!(Activations::new(&gpt.config, 1, 10_000).is_err());
}

/// The hook reports each range once, in reverse layout order, with its final gradient.
#[test]
fn backward_hook_reports_final_ranges_in_reverse_order() {
    let config = GptConfig {
        vocab_size: 11,
        n_positions: 8,
        n_layer: 3,
        n_head: 2,
        n_embd: 8,
        layer_norm_eps: 1e-5,
    };
    let gpt = Gpt::new(config).unwrap();
    let params = gpt.init_params(3);
    let (b, t) = (2, 6);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 11) as u32).collect();
    let mut acts = Activations::new(&gpt.config, b, t).unwrap();
    gpt.forward(&params, &mut acts, &tokens, Some(&tokens))
        .unwrap();
    let mut grads = vec![0.0f32; gpt.num_params()];
    let mut reported = Vec::new();
    gpt.backward_hooked(&params, &mut acts, &mut grads, 1.0, &mut |range, g| {
        reported.push((range, g.to_vec()));
    })
    .unwrap();
    assert_eq!(reported.len(), 3 + 2, "ln_f, three blocks, the embeddings");
    let ranges: Vec<_> = reported.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(ranges, gpt.layout.backward_ranges());
    let mut end = gpt.num_params();
    for (range, g) in &reported {
        assert_eq!(range.end, end, "contiguous, last to first");
        assert_eq!(g, &grads[range.clone()], "final when reported");
        end = range.start;
    }
    assert_eq!(end, 0);
}

#[test]
fn sequence_weights_weigh_each_sequence_of_the_loss() {
    let gpt = Gpt::new(GptConfig::preset("tiny").unwrap()).unwrap();
    let params = gpt.init_params(3);
    let t = 16;
    let tokens: Vec<u32> = (0..2 * t).map(|i| (i * 7 % 50) as u32).collect();
    let targets: Vec<u32> = (0..2 * t).map(|i| (i * 11 % 50) as u32).collect();
    let grad = |b: usize, weights: Option<&[f32]>| {
        let mut acts = Activations::new(&gpt.config, b, t).unwrap();
        acts.set_sequence_weights(weights).unwrap();
        gpt.forward(
            &params,
            &mut acts,
            &tokens[..b * t],
            Some(&targets[..b * t]),
        )
        .unwrap();
        let mut g = vec![0.0f32; gpt.num_params()];
        gpt.backward(&params, &mut acts, &mut g, 1.0).unwrap();
        g
    };
    let close = |a: &[f32], b: &[f32]| {
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let scale = b.iter().map(|x| x.abs()).fold(0.0, f32::max);
        assert!(err <= 1e-5 * scale.max(1.0), "max difference {err:e}");
    };
    // Weight 2 on the first of two sequences and 0 on the second is the first alone.
    close(&grad(2, Some(&[2.0, 0.0])), &grad(1, None));
    // All ones is no weighting; weights act linearly.
    close(&grad(2, Some(&[1.0, 1.0])), &grad(2, None));
    let (a, b) = (grad(2, Some(&[1.0, 0.0])), grad(2, Some(&[0.0, 1.0])));
    let mix: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.3 * x + 1.7 * y).collect();
    close(&grad(2, Some(&[0.3, 1.7])), &mix);
    let mut acts = Activations::new(&gpt.config, 2, t).unwrap();
    assert!(acts.set_sequence_weights(Some(&[1.0])).is_err());
    assert!(acts.set_sequence_weights(Some(&[1.0, f32::NAN])).is_err());
}
