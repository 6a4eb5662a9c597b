//! `shoal generate`: continue a prompt with a shoal checkpoint or a Hugging Face model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_actors::{Checkpoint, resolve_checkpoint_dir};
use shoal_data::Tokenizer;
use shoal_models::{Gpt, GptConfig, SampleOptions};

/// Flags of `shoal generate`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("weights").required(true).args(["checkpoint", "hf"]))]
pub struct GenerateArgs {
    /// A shoal checkpoint directory (or a run's out_dir: its latest checkpoint).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// A Hugging Face GPT-2 directory (config.json + model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub hf: Option<PathBuf>,
    /// Text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// Softmax temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// tokenizer.json to use instead of the one stored with the model.
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// Compute threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Picks the tokenizer of a model: the flag, a `tokenizer.json` beside the weights, or
/// bytes when the model was trained on bytes (or has exactly the byte vocabulary).
pub fn tokenizer_for(
    flag: Option<&Path>,
    dir: &Path,
    recorded: Option<&str>,
    config: &GptConfig,
) -> Result<Tokenizer> {
    if let Some(p) = flag {
        return Ok(Tokenizer::from_file(p)?);
    }
    let beside = dir.join("tokenizer.json");
    if beside.is_file() {
        return Ok(Tokenizer::from_file(&beside)?);
    }
    let bytes = Tokenizer::bytes();
    if recorded == Some(bytes.describe().as_str()) || config.vocab_size == bytes.vocab_size() {
        return Ok(bytes);
    }
    bail!(
        "{} has no tokenizer.json and the model (vocab {}) was not trained on bytes; pass --tokenizer",
        dir.display(),
        config.vocab_size
    )
}

/// `shoal generate`.
pub fn run(a: GenerateArgs) -> Result<()> {
    let (config, params, tokenizer, context) = if let Some(path) = &a.checkpoint {
        let dir = resolve_checkpoint_dir(path)?;
        let ckpt = Checkpoint::load(&dir)?;
        let tok = tokenizer_for(
            a.tokenizer.as_deref(),
            &dir,
            Some(&ckpt.meta.tokenizer),
            &ckpt.meta.model,
        )?;
        // Sample within the sequence length the model was trained on.
        let context = ckpt.meta.train.as_ref().map(|t| t.seq_len);
        (ckpt.meta.model, ckpt.params, tok, context)
    } else if let Some(dir) = &a.hf {
        let (config, params) = shoal_models::hf::load(dir)?;
        let tok = tokenizer_for(a.tokenizer.as_deref(), dir, None, &config)?;
        (config, params, tok, None)
    } else {
        bail!("pass --checkpoint DIR or --hf DIR");
    };
    let model = Gpt::new(config)?;
    let prompt = tokenizer.encode(&a.prompt)?;
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let opts = SampleOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: (a.top_k > 0).then_some(a.top_k),
        seed: a.seed,
        context,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()
        .context("cannot start the compute threads")?;
    let new = pool.install(|| model.generate(&params, &prompt, &opts))?;
    println!("{}{}", a.prompt, tokenizer.decode(&new)?);
    Ok(())
}
