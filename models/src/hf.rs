//! Import and export of Hugging Face GPT-2 checkpoints (`GPT2LMHeadModel`).
//!
//! A checkpoint is a directory with `config.json` and `model.safetensors`. Tensor names are
//! `transformer.<name>` for every entry of [`ParamLayout`]; linear weights are stored in
//! Conv1D layout `(in_features, out_features)`, which is shoal's layout too. The LM head is
//! tied to `transformer.wte.weight` and not stored.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Value, json};

use crate::{GptConfig, ModelError, ParamLayout};

const PREFIX: &str = "transformer.";

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a transformers `config.json` of a GPT-2 model into a [`GptConfig`].
pub fn parse_config(path: &Path, text: &str) -> Result<GptConfig, ModelError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| bad(path, format!("not valid JSON: {e}")))?;
    let int = |key: &str| -> Result<usize, ModelError> {
        v.get(key)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| bad(path, format!("missing or non-integer `{key}`")))
    };
    if let Some(mt) = v.get("model_type").and_then(Value::as_str)
        && mt != "gpt2"
    {
        return Err(bad(
            path,
            format!("model_type is `{mt}`, only `gpt2` is supported"),
        ));
    }
    let act = v
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("gelu_new");
    if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
        return Err(bad(
            path,
            format!("activation_function `{act}` is not supported (only the tanh GELU)"),
        ));
    }
    if v.get("tie_word_embeddings").and_then(Value::as_bool) == Some(false) {
        return Err(bad(path, "untied LM heads are not supported"));
    }
    let n_embd = int("n_embd")?;
    if let Some(inner) = v.get("n_inner").and_then(Value::as_u64)
        && inner as usize != 4 * n_embd
    {
        return Err(bad(
            path,
            format!("n_inner {inner} != 4 * n_embd is not supported"),
        ));
    }
    for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
        if v.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(bad(path, format!("`{flag}: true` is not supported")));
        }
    }
    let config = GptConfig {
        vocab_size: int("vocab_size")?,
        n_positions: int("n_positions").or_else(|_| int("n_ctx"))?,
        n_layer: int("n_layer")?,
        n_head: int("n_head")?,
        n_embd,
        layer_norm_eps: v
            .get("layer_norm_epsilon")
            .and_then(Value::as_f64)
            .unwrap_or(1e-5) as f32,
    };
    config.validate()?;
    Ok(config)
}

/// Reads the tensors of a safetensors file into the flat layout of `config`.
pub fn load_weights(path: &Path, config: &GptConfig) -> Result<Vec<f32>, ModelError> {
    let bytes = read(path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let layout = ParamLayout::new(config);
    let mut params = vec![0.0f32; layout.len()];
    for t in layout.tensors() {
        let view = st
            .tensor(&format!("{PREFIX}{}", t.name))
            .or_else(|_| st.tensor(&t.name))
            .map_err(|_| bad(path, format!("missing tensor `{PREFIX}{}`", t.name)))?;
        if view.dtype() != Dtype::F32 {
            return Err(bad(
                path,
                format!(
                    "tensor `{}` is {:?}; only F32 is supported",
                    t.name,
                    view.dtype()
                ),
            ));
        }
        if view.shape() != t.shape.as_slice() {
            return Err(bad(
                path,
                format!(
                    "tensor `{}` has shape {:?}, the config needs {:?}",
                    t.name,
                    view.shape(),
                    t.shape
                ),
            ));
        }
        let dst = &mut params[t.range()];
        for (d, chunk) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
    }
    Ok(params)
}

/// Loads a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`).
pub fn load(dir: &Path) -> Result<(GptConfig, Vec<f32>), ModelError> {
    let cfg_path = dir.join("config.json");
    let text = String::from_utf8(read(&cfg_path)?)
        .map_err(|_| bad(&cfg_path, "config.json is not UTF-8"))?;
    let config = parse_config(&cfg_path, &text)?;
    let weights = dir.join("model.safetensors");
    if !weights.exists() && dir.join("model.safetensors.index.json").exists() {
        return Err(bad(
            &weights,
            "sharded safetensors checkpoints are not supported yet",
        ));
    }
    let params = load_weights(&weights, &config)?;
    Ok((config, params))
}

/// The `config.json` transformers expects for this model.
pub fn config_json(config: &GptConfig) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": null,
        "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "use_cache": true,
        "torch_dtype": "float32",
        "bos_token_id": config.vocab_size.saturating_sub(1),
        "eos_token_id": config.vocab_size.saturating_sub(1),
    })
}

/// Writes `config.json` and `model.safetensors` into `dir` (created if needed) so that
/// `GPT2LMHeadModel.from_pretrained(dir)` loads the model.
pub fn save(dir: &Path, config: &GptConfig, params: &[f32]) -> Result<(), ModelError> {
    config.validate()?;
    let layout = ParamLayout::new(config);
    if params.len() != layout.len() {
        return Err(ModelError::Shape {
            what: "params",
            expected: layout.len(),
            got: params.len(),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = layout
        .tensors()
        .iter()
        .map(|t| {
            let b = params[t.range()]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            (format!("{PREFIX}{}", t.name), b, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, b, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(dir, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(metadata), &weights)
        .map_err(|e| bad(&weights, format!("writing failed: {e}")))?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config_json(config)).expect("JSON value serializes");
    std::fs::write(&cfg_path, text).map_err(io(&cfg_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gpt;

    #[test]
    fn save_then_load_roundtrips() {
        let cfg = GptConfig::preset("tiny").unwrap();
        let params = Gpt::new(cfg.clone()).unwrap().init_params(7);
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &cfg, &params).unwrap();
        let (cfg2, params2) = load(dir.path()).unwrap();
        assert_eq!(cfg, cfg2);
        assert_eq!(params, params2);
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        let cfg = GptConfig::preset("tiny").unwrap();
        let params = Gpt::new(cfg.clone()).unwrap().init_params(7);
        save(dir.path(), &cfg, &params).unwrap();
        // Truncate the weights.
        let w = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "{e}");
        // A config whose heads do not divide the width.
        let mut v = config_json(&cfg);
        v["n_head"] = json!(3);
        std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("divisible"), "{e}");
    }
}
