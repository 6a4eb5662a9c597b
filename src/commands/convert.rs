//! `shoal export` and `shoal import`: shoal checkpoints <-> Hugging Face GPT-2 directories.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shoal_actors::{Checkpoint, resolve_checkpoint_dir};
use shoal_data::Tokenizer;

/// Flags of `shoal export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The shoal checkpoint (or a run's out_dir: its latest checkpoint).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Directory to write config.json + model.safetensors into.
    #[arg(long, value_name = "OUTDIR")]
    pub hf: PathBuf,
}

/// Flags of `shoal import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A Hugging Face GPT-2 directory (config.json + model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub hf: PathBuf,
    /// Checkpoint directory to write.
    #[arg(long, value_name = "CKPTDIR")]
    pub out: PathBuf,
}

/// `shoal export`.
pub fn export(a: ExportArgs) -> Result<()> {
    let dir = resolve_checkpoint_dir(&a.checkpoint)?;
    let ckpt = Checkpoint::load(&dir)?;
    shoal_models::hf::save(&a.hf, &ckpt.meta.model, &ckpt.params)?;
    if let Some(tok) = &ckpt.tokenizer_json {
        let dst = a.hf.join("tokenizer.json");
        std::fs::copy(tok, &dst)
            .with_context(|| format!("cannot copy {} to {}", tok.display(), dst.display()))?;
    }
    println!(
        "exported {} (step {}, {} params) to {}",
        dir.display(),
        ckpt.meta.step,
        ckpt.params.len(),
        a.hf.display()
    );
    Ok(())
}

/// `shoal import`.
pub fn import(a: ImportArgs) -> Result<()> {
    let (config, params) = shoal_models::hf::load(&a.hf)?;
    let tok_path = a.hf.join("tokenizer.json");
    let (description, tokenizer_json) = if tok_path.is_file() {
        (Tokenizer::from_file(&tok_path)?.describe(), Some(tok_path))
    } else if config.vocab_size == Tokenizer::bytes().vocab_size() {
        (Tokenizer::bytes().describe(), None)
    } else {
        (format!("unknown (imported from {})", a.hf.display()), None)
    };
    let n = params.len();
    let mut ckpt = Checkpoint::from_weights(config, params, description);
    ckpt.tokenizer_json = tokenizer_json;
    ckpt.save(&a.out)?;
    println!(
        "imported {} ({n} params) into {}",
        a.hf.display(),
        a.out.display()
    );
    Ok(())
}
