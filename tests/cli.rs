//! The `shoal` binary end to end: short training runs, resume, export/import, and bad
//! input, which must give a clear error naming the file and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{
    SMALL, assert_close, assert_fails, assert_losses_match, assert_ok, losses, shoal, stderr,
    stdout, train,
};
use shoal::actors::{Checkpoint, MemoryReport, MetricsRecord, STATE_FILE, ZeroStage, read_metrics};

/// Trains 3 steps into `dir/run` and returns the checkpoint directory.
fn trained(dir: &Path) -> PathBuf {
    assert_ok(&train(dir, &["--out-dir", "run", "--max-steps", "3"]));
    dir.join("run/checkpoints/step-000003")
}

fn metric_steps(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"loss\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn train_then_resume_latest() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    assert!(ckpt.join(STATE_FILE).is_file());
    for f in ["metrics.jsonl", "loss.svg", "config.toml"] {
        assert!(tmp.path().join("run").join(f).is_file(), "{f} missing");
    }
    // A fresh run into the same directory refuses to mix checkpoints.
    let o = train(tmp.path(), &["--out-dir", "run", "--max-steps", "3"]);
    assert_fails(&o, &["already holds checkpoints"]);

    let o = train(
        tmp.path(),
        &["--out-dir", "run", "--max-steps", "5", "--resume", "latest"],
    );
    assert_ok(&o);
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    assert!(stdout(&o).contains("step-000005"), "{}", stdout(&o));
    let steps = metric_steps(&tmp.path().join("run/metrics.jsonl"));
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    let latest = Checkpoint::load(&tmp.path().join("run/checkpoints/step-000005")).unwrap();
    assert_eq!(latest.meta.step, 5);

    // And the model samples.
    let o = shoal(
        &[
            "generate",
            "--checkpoint",
            "run",
            "--prompt",
            "3+4=",
            "--max-new-tokens",
            "8",
        ],
        tmp.path(),
    );
    assert_ok(&o);
    assert!(stdout(&o).starts_with("3+4="), "{}", stdout(&o));
}

#[test]
fn export_import_roundtrip_preserves_params() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let hf = tmp.path().join("hf");
    assert_ok(&shoal(
        &[
            "export",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--hf",
            hf.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    assert!(hf.join("config.json").is_file() && hf.join("model.safetensors").is_file());
    let back = tmp.path().join("imported");
    assert_ok(&shoal(
        &[
            "import",
            "--hf",
            hf.to_str().unwrap(),
            "--out",
            back.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    let a = Checkpoint::load(&ckpt).unwrap();
    let b = Checkpoint::load(&back).unwrap();
    assert_eq!(a.meta.model, b.meta.model);
    assert_eq!(b.meta.step, 0);
    assert!(b.adam_m.iter().all(|&m| m == 0.0));
    let same = a
        .params
        .iter()
        .zip(&b.params)
        .all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same && a.params.len() == b.params.len());

    // Training can start from the HF directory and from the imported checkpoint.
    for init in [&hf, &back] {
        let o = train(
            tmp.path(),
            &[
                "--init",
                init.to_str().unwrap(),
                "--max-steps",
                "1",
                "--out-dir",
                "from-init",
                "--overwrite",
            ],
        );
        assert_ok(&o);
    }
}

#[test]
fn missing_checkpoint_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let o = shoal(
        &["generate", "--checkpoint", "no-such-ckpt", "--prompt", "x"],
        tmp.path(),
    );
    assert_fails(&o, &["no-such-ckpt"]);
    let o = train(tmp.path(), &["--resume", "latest", "--out-dir", "nowhere"]);
    assert_fails(&o, &["nowhere"]);
    let o = shoal(
        &["export", "--checkpoint", "no-such-ckpt", "--hf", "out"],
        tmp.path(),
    );
    assert_fails(&o, &["no-such-ckpt"]);
}

#[test]
fn truncated_checkpoint_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let state = ckpt.join(STATE_FILE);
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let o = shoal(
        &["generate", "--checkpoint", "run", "--prompt", "x"],
        tmp.path(),
    );
    assert_fails(&o, &[STATE_FILE, "truncated"]);
    let o = train(tmp.path(), &["--resume", "latest", "--out-dir", "run"]);
    assert_fails(&o, &[STATE_FILE]);
}

#[test]
fn bad_config_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let heads = tmp.path().join("heads.toml");
    std::fs::write(&heads, "[model]\npreset = \"tiny\"\nn_head = 3\n").unwrap();
    let o = shoal(&["train", "--config", "heads.toml"], tmp.path());
    assert_fails(&o, &["heads.toml", "divisible by n_head"]);

    let syntax = tmp.path().join("syntax.toml");
    std::fs::write(&syntax, "lr = \n").unwrap();
    let o = shoal(&["train", "--config", "syntax.toml"], tmp.path());
    assert_fails(&o, &["syntax.toml"]);

    let unknown = tmp.path().join("unknown.toml");
    std::fs::write(&unknown, "learning_rate = 0.1\n").unwrap();
    let o = shoal(&["train", "--config", "unknown.toml"], tmp.path());
    assert_fails(&o, &["unknown.toml", "learning_rate"]);

    let o = shoal(&["train", "--config", "absent.toml"], tmp.path());
    assert_fails(&o, &["absent.toml"]);
}

#[test]
fn bad_data_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |data: &str| {
        shoal(
            &[
                "train",
                "--data",
                data,
                "--max-steps",
                "1",
                "--seq-len",
                "8",
            ],
            tmp.path(),
        )
    };
    assert_fails(&run("prose=missing.txt"), &["missing.txt"]);

    std::fs::write(
        tmp.path().join("bad.jsonl"),
        "{\"text\": \"fine\"}\n{\"text\": oops}\n",
    )
    .unwrap();
    assert_fails(&run("web=bad.jsonl"), &["bad.jsonl", "line 2"]);

    // A token shard whose ids do not fit the byte vocabulary.
    let tokens: Vec<u32> = (0..2000).map(|i| i % 1000).collect();
    shoal::data::write_shard(&tmp.path().join("wide.tok"), &tokens, 1000).unwrap();
    assert_fails(&run("code=wide.tok"), &["wide.tok", "vocabulary"]);

    // A model vocabulary smaller than the data's.
    let o = train(tmp.path(), &["--vocab-size", "100", "--max-steps", "1"]);
    assert_fails(&o, &["vocab_size", "256"]);
}

#[test]
fn readme_config_example_is_valid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
    let len = readme[start..].find("```").unwrap();
    let config =
        shoal::actors::TrainConfig::from_toml_str(&readme[start..start + len], Path::new("README"))
            .unwrap();
    config.validate().unwrap();
}

#[test]
fn cluster_ca_and_node_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let ca_arg = ca.to_str().unwrap();
    assert_ok(&shoal(
        &["cluster", "init", ca_arg, "--name", "lab"],
        tmp.path(),
    ));
    // A CA is never replaced by accident.
    assert_fails(
        &shoal(&["cluster", "init", ca_arg], tmp.path()),
        &["ca.key"],
    );
    assert_ok(&shoal(
        &["cluster", "issue", ca_arg, "--node", "host-a"],
        tmp.path(),
    ));
    assert!(ca.join("host-a.crt").is_file() && ca.join("host-a.key").is_file());
    // Bad names, a missing CA and a corrupt key are named, never a panic.
    assert_fails(
        &shoal(&["cluster", "issue", ca_arg, "--node", "../x"], tmp.path()),
        &["../x"],
    );
    let missing = tmp.path().join("nope");
    assert_fails(
        &shoal(
            &["cluster", "issue", missing.to_str().unwrap(), "--node", "a"],
            tmp.path(),
        ),
        &["nope"],
    );
    std::fs::write(ca.join("ca.key"), "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    assert_fails(
        &shoal(&["cluster", "issue", ca_arg, "--node", "b"], tmp.path()),
        &["ca.key"],
    );
}

/// Data-parallel ranks under ZeRO 1, 2 and 3, as threads and as processes over QUIC,
/// follow the single-rank run step for step, and their checkpoints resume at another
/// world size.
#[test]
fn zero_ranks_match_one_rank_and_resume_at_another_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_ok(&train(
        dir,
        &[
            "--out-dir",
            "one",
            "--max-steps",
            "6",
            "--checkpoint-every",
            "3",
        ],
    ));
    let two = [
        "--out-dir",
        "dp",
        "--max-steps",
        "3",
        "--ranks",
        "2",
        "--zero",
        "1",
    ];
    assert_ok(&train(dir, &two));
    // Resumed with three ranks (one of them with no rows of the batch of 2) at stage 2.
    let three = [
        "--out-dir",
        "dp",
        "--max-steps",
        "6",
        "--resume",
        "latest",
        "--ranks",
        "3",
        "--zero",
        "2",
    ];
    assert_ok(&train(dir, &three));
    let (a, b) = (
        losses(&dir.join("one/metrics.jsonl")),
        losses(&dir.join("dp/metrics.jsonl")),
    );
    assert_eq!(a.len(), 6);
    assert_losses_match(&a, &b, "ranks against one rank");
    let (p, q) = (
        Checkpoint::load(&dir.join("one/checkpoints/step-000006")).unwrap(),
        Checkpoint::load(&dir.join("dp/checkpoints/step-000006")).unwrap(),
    );
    for (x, y) in [
        (&p.params, &q.params),
        (&p.adam_m, &q.adam_m),
        (&p.adam_v, &q.adam_v),
    ] {
        assert_close(x, y, "resumed at another world size");
    }
    // Stage 3 (parameters gathered part by part) on three ranks, one without rows.
    let z3 = [
        "--out-dir",
        "z3",
        "--max-steps",
        "6",
        "--ranks",
        "3",
        "--zero",
        "3",
    ];
    assert_ok(&train(dir, &z3));
    let c = losses(&dir.join("z3/metrics.jsonl"));
    assert_losses_match(&a, &c, "stage 3");
    // Its metrics hold each rank's bytes: ZeRO-3's 16Ψ/W, to a few elements per part.
    let memory = read_metrics(&dir.join("z3/metrics.jsonl"))
        .unwrap()
        .into_iter()
        .find_map(|r| match r {
            MetricsRecord::Memory { ranks, .. } => Some(ranks),
            _ => None,
        })
        .expect("a memory record");
    assert_eq!(memory.len(), 3);
    let psi = p.params.len();
    let formula = MemoryReport::per_rank(ZeroStage::ParametersSharded, psi, 3);
    for m in &memory {
        let state = m.params + m.grads + m.optimizer;
        assert!(
            state.abs_diff(formula.total()) <= 64,
            "{m:?} vs {formula:?}"
        );
        assert!(m.buffers > 0, "{m:?}");
    }
    // Its checkpoint is sharded (each rank wrote its pieces) and reassembles whole.
    let z = Checkpoint::load(&dir.join("z3/checkpoints/step-000006")).unwrap();
    assert_eq!(z.meta.shards.len(), 3);
    for (x, y) in [
        (&p.params, &z.params),
        (&p.adam_m, &z.adam_m),
        (&p.adam_v, &z.adam_v),
    ] {
        assert_close(x, y, "stage 3");
    }
}

/// A rank process killed with SIGKILL mid-run: rank 0 stops with a clear error within
/// QUIC's idle timeout instead of waiting out the collective's deadline.
#[cfg(target_os = "linux")]
#[test]
fn killed_rank_process_fails_the_run_promptly() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["train"];
    args.extend_from_slice(SMALL);
    let run = [
        "--out-dir",
        "run",
        "--max-steps",
        "1000000",
        "--checkpoint-every",
        "0",
    ];
    args.extend_from_slice(&run);
    args.extend_from_slice(&["--procs", "2"]);
    let mut leader = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(&args)
        .current_dir(tmp.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = tmp.path().join("run/metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Rank 1 is the process whose command line names this run's cluster directory.
    let needle = tmp.path().to_string_lossy().into_owned();
    let child: i32 = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("--proc-rank") && cmd.contains(&needle)
        })
        .expect("rank 1's process");
    // SAFETY: sending a signal to a process this test started (through the leader).
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = leader.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "rank 0 hangs on a dead rank"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(leader.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("rank 1 was lost"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
