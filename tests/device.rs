//! `shoal train --device`: asking for a GPU where there is none (or in a build without
//! the `cuda` feature) is a clear error naming CUDA and a non-zero exit, never a panic;
//! so are a device that is not one, and GPU-only settings on the CPU.

use std::path::Path;
use std::process::Output;

mod common;

use common::{assert_fails, stderr};

/// A two-step run of a very small model on the built-in corpus into `run`, then
/// `extra`.
fn train(cwd: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--max-steps", "2", "--out-dir", "run"];
    args.extend_from_slice(extra);
    common::train(cwd, &args)
}

#[test]
fn cuda_without_a_gpu_or_cuda_build_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let o = train(tmp.path(), &["--device", "cuda"]);
    if cfg!(feature = "cuda") && o.status.success() {
        // A CUDA build on a machine with a GPU: the run trained there.
        assert!(tmp.path().join("run/checkpoints").is_dir());
        return;
    }
    if cfg!(feature = "cuda") {
        // No driver or no device: the typed error of the GPU code, under the device name.
        assert_fails(&o, &["CUDA device cuda:0"]);
    } else {
        assert_fails(
            &o,
            &[
                "`device`",
                "built without CUDA",
                "cargo build --release --features cuda",
            ],
        );
    }
    assert!(
        !tmp.path().join("run/checkpoints").exists(),
        "a failed start leaves no checkpoints"
    );
}

#[test]
fn cpu_device_trains_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let o = train(tmp.path(), &["--device", "cpu"]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let config = std::fs::read_to_string(tmp.path().join("run/config.toml")).unwrap();
    assert!(config.contains("device = \"cpu\""), "{config}");
}

#[test]
fn unknown_devices_and_gpu_only_settings_on_the_cpu_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = train(tmp.path(), &["--device", "gpu0"]);
    assert_fails(&o, &["`device`", "gpu0", "cuda:N"]);
    let o = train(tmp.path(), &["--gpu-collectives", "nccl", "--ranks", "2"]);
    assert_fails(&o, &["`gpu_collectives`", "needs a `cuda` device"]);
    let o = train(tmp.path(), &["--gpu-precision", "fp16"]);
    assert_fails(&o, &["`gpu_precision`", "fp32 or bf16"]);
}

#[test]
fn several_gpu_ranks_fail_clearly_without_a_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--device", "cuda:1", "--ranks", "2", "--zero", "3"];
    let o = train(tmp.path(), &args);
    if cfg!(feature = "cuda") && o.status.success() {
        // A CUDA build on a machine with GPUs: the ranks trained there.
        assert!(tmp.path().join("run/checkpoints").is_dir());
        return;
    }
    if cfg!(feature = "cuda") {
        assert_fails(&o, &["CUDA device"]);
    } else {
        assert_fails(&o, &["`device`", "built without CUDA"]);
    }
    // Recomputation on a GPU: none or full only, without a budget.
    let o = train(
        tmp.path(),
        &["--device", "cuda", "--recompute", "selective"],
    );
    let want = if cfg!(feature = "cuda") {
        "runs on the CPU only"
    } else {
        "built without CUDA"
    };
    assert_fails(&o, &[want]);
}
