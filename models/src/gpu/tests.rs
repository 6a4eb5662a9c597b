//! The GPU model against the CPU model on the tiny preset (skipped with a
//! message on machines without a GPU).

use shoal_kernels::cuda::{Comparison, Gpu};

use super::GpuGpt;
use crate::{Activations, Gpt, GptConfig};

#[test]
fn one_step_matches_the_cpu_model() {
    let gpu = match Gpu::new(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("skipping: no CUDA driver or device ({e})");
            return;
        }
    };
    let config = GptConfig::preset("tiny").unwrap();
    let (b, t) = (2, 40);
    let gpt = Gpt::new(config.clone()).unwrap();
    let params = gpt.init_params(3);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 91 % 256) as u32).collect();
    let mut acts = Activations::new(&config, b, t).unwrap();
    let loss = gpt
        .forward(&params, &mut acts, &tokens, Some(&targets))
        .unwrap()
        .unwrap();
    let mut grads = vec![0f32; params.len()];
    gpt.backward(&params, &mut acts, &mut grads, 0.5).unwrap();

    let mut model = GpuGpt::new(&gpu, config, &params, b, t).unwrap();
    let gpu_loss = model.forward(&gpu, &tokens, &targets).unwrap();
    model.zero_grads(&gpu).unwrap();
    model.backward(&gpu, 0.5).unwrap();
    assert!(
        (gpu_loss - loss).abs() <= 1e-4 * loss.abs(),
        "{gpu_loss} vs {loss}"
    );
    let cmp = Comparison::new(&model.grads(&gpu).unwrap(), &grads);
    assert!(cmp.relative() <= 1e-4, "gradients: {cmp:?}");
}
