//! Tests of the training configuration: parsing, defaults, validation.

use super::*;

fn parse(text: &str) -> Result<TrainConfig> {
    TrainConfig::from_toml_str(text, Path::new("test.toml"))
}

#[test]
fn defaults_are_valid_and_roundtrip_through_toml() {
    let c = TrainConfig::default();
    let model = c.validate().unwrap();
    assert_eq!(model, GptConfig::preset("tiny").unwrap());
    let back = parse(&c.to_toml_string()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn parses_partial_files_and_overrides() {
    let c = parse(
        r#"
        lr = 1e-3
        min_lr = 1e-4
        [model]
        preset = "tiny"
        n_layer = 2
        [data]
        source = "files"
        tokenizer = "tok.json"
        [data.domains]
        drama = ["a.jsonl", "b.txt"]
        "#,
    )
    .unwrap();
    assert_eq!(c.lr, 1e-3);
    assert_eq!(c.batch_size, TrainConfig::default().batch_size);
    assert_eq!(c.validate().unwrap().n_layer, 2);
    match &c.data {
        DataSpec::Files {
            domains,
            tokenizer,
            val_fraction,
        } => {
            assert_eq!(domains["drama"].len(), 2);
            assert_eq!(tokenizer.as_deref(), Some(Path::new("tok.json")));
            assert_eq!(*val_fraction, 0.1);
        }
        other => panic!("expected files, got {other:?}"),
    }
    let b = parse("[data]\nsource = \"builtin\"\ntokens_per_domain = 5000\n").unwrap();
    assert!(matches!(
        b.data,
        DataSpec::Builtin {
            tokens_per_domain: 5000,
            seed: 0,
            ..
        }
    ));
}

#[test]
fn rejects_unknown_fields_with_the_file_name() {
    let e = parse("learning_rate = 0.1\n").unwrap_err().to_string();
    assert!(
        e.contains("test.toml") && e.contains("learning_rate"),
        "{e}"
    );
    let e = parse("[model]\npreset = \"tiny\"\nwidth = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("width"), "{e}");
    let e = parse("[data]\nsource = \"builtin\"\nfoo = 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("foo"), "{e}");
    let e = parse("batch_size = \"eight\"\n").unwrap_err().to_string();
    assert!(e.contains("batch_size"), "{e}");
}

#[test]
fn gpu_matmul_is_validated() {
    for ok in ["fp32", "tf32", "bf16"] {
        let c = parse(&format!("gpu_matmul = \"{ok}\"\n")).unwrap();
        c.validate().unwrap();
    }
    let e = parse("gpu_matmul = \"fp16\"\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("gpu_matmul"), "{e}");
    let c = parse("gpu_precision = \"bf16\"\n").unwrap();
    assert_eq!(c.gpu_precision().unwrap(), shoal_models::Precision::Bf16);
    assert_eq!(parse(&c.to_toml_string()).unwrap(), c);
    let c = parse("device = \"cuda\"\nranks = 2\ngpu_collectives = \"ipc\"\n").unwrap();
    assert_eq!(
        c.gpu_collectives().unwrap(),
        Some(shoal_collectives::DeviceBackend::Ipc)
    );
    let e = parse("gpu_collectives = \"nccl\"\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("needs a `cuda` device"), "{e}");
    let e = parse("gpu_collectives = \"mpi\"\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("host, nccl or ipc"), "{e}");
    let e = parse("gpu_precision = \"fp8\"\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("gpu_precision"), "{e}");
}

#[test]
fn device_parses_and_is_validated() {
    assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
    assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
    assert_eq!(Device::parse("cuda:3").unwrap(), Device::Cuda(3));
    for bad in [
        "gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:1:2", " cpu", "",
    ] {
        let e = Device::parse(bad).unwrap_err().to_string();
        assert!(e.contains("`device`") && e.contains("cuda:N"), "{bad}: {e}");
    }
    assert_eq!(TrainConfig::default().device().unwrap(), Device::Cpu);
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");

    let c = parse("device = \"cuda:1\"\n").unwrap();
    assert_eq!(c.device().unwrap(), Device::Cuda(1));
    assert_eq!(parse(&c.to_toml_string()).unwrap(), c);
    // Configs written before `device` existed still load, on the CPU.
    assert_eq!(parse("lr = 1e-3\n").unwrap().device, "cpu");

    let e = parse("device = \"tpu\"\n").unwrap().validate().unwrap_err();
    assert!(e.to_string().contains("tpu"), "{e}");
    let mut multi = parse("device = \"cuda\"\n").unwrap();
    for (ranks, zero) in [(2, 1), (3, 3), (1, 0)] {
        (multi.ranks, multi.zero) = (ranks, zero);
        let checked = multi.validate();
        if cfg!(feature = "cuda") {
            checked.unwrap();
        } else {
            let e = checked.unwrap_err().to_string();
            assert!(
                e.contains("built without CUDA") && e.contains("--features cuda"),
                "{e}"
            );
        }
    }
}

#[test]
fn recompute_and_activation_budget_parse() {
    let c = parse("recompute = \"selective\"\nactivation_budget = \"2GiB\"\n").unwrap();
    c.validate().unwrap();
    let s = crate::recompute::RecomputeSettings::from_config(&c).unwrap();
    assert_eq!(s.budget, Some(2 << 30));
    assert_eq!(parse(&c.to_toml_string()).unwrap(), c);
    let d = TrainConfig::default();
    assert_eq!((d.recompute.as_str(), d.activation_budget), ("auto", None));
    let e = parse("recompute = \"most\"\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("recompute"), "{e}");
    let e = parse("activation_budget = \"2 parsecs\"\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("activation_budget"), "{e}");
}

#[test]
fn missing_file_is_named() {
    let e = TrainConfig::from_toml_file(Path::new("/nonexistent/x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.toml"), "{e}");
}

#[test]
fn validation_names_the_problem() {
    let check = |edit: &dyn Fn(&mut TrainConfig), needle: &str| {
        let mut c = TrainConfig::default();
        edit(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "expected `{needle}` in `{e}`");
    };
    check(&|c| c.model.n_head = Some(3), "divisible by n_head");
    check(&|c| c.model.preset = "huge".into(), "unknown model preset");
    check(&|c| c.seq_len = 4096, "n_positions");
    check(&|c| c.batch_size = 0, "batch_size");
    check(&|c| c.grad_accum = 0, "grad_accum");
    check(&|c| c.lr = 0.0, "lr");
    check(&|c| c.lr = f32::NAN, "lr");
    check(&|c| c.min_lr = 1.0, "min_lr");
    check(&|c| c.beta2 = 1.0, "beta2");
    check(&|c| c.eps = 0.0, "eps");
    check(&|c| c.grad_clip = -1.0, "grad_clip");
    check(&|c| c.max_steps = 0, "max_steps");
    check(&|c| c.keep_checkpoints = 0, "keep_checkpoints");
    check(
        &|c| {
            c.data = DataSpec::Files {
                domains: BTreeMap::new(),
                tokenizer: None,
                val_fraction: 0.1,
            }
        },
        "at least one domain",
    );
    check(
        &|c| {
            c.data = DataSpec::Builtin {
                seed: 0,
                tokens_per_domain: 100,
                val_fraction: 1.5,
            }
        },
        "val_fraction",
    );
}
