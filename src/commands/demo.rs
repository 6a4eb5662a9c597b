//! `shoal demo`: train the tiny model on the built-in corpus for a minute or two on two
//! cores, as two data-parallel ranks (actors of this process) under ZeRO stage 2, show
//! the loss falling toward each domain's floor, then sample from the model.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use shoal_actors::{DataSpec, ModelSpec, TrainConfig, Trainer};
use shoal_models::SampleOptions;

use crate::commands::train::{remove_previous_run, train_with_progress};
use crate::progress::format_final;

/// Flags of `shoal demo` (none are needed).
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output directory (replaced on every demo run).
    #[arg(long, default_value = "runs/demo")]
    pub out_dir: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = DEMO_STEPS)]
    pub steps: u64,
    /// Compute threads (0: all cores), shared by the ranks.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Data-parallel ranks (threads of this process; 1 trains without ranks).
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// ZeRO stage of the ranks (0-3).
    #[arg(long, default_value_t = 2)]
    pub zero: u8,
}

/// Steps of the demo: about 1.5 minutes on two Zen 4 cores.
const DEMO_STEPS: u64 = 500;

/// The demo's configuration.
pub fn demo_config(a: &DemoArgs) -> TrainConfig {
    TrainConfig {
        model: ModelSpec::default(),
        data: DataSpec::Builtin {
            seed: 0,
            tokens_per_domain: 250_000,
            val_fraction: 0.1,
        },
        // Every domain needs at most 42 tokens of context; 64 keeps attention cheap.
        batch_size: 32,
        seq_len: 64,
        grad_accum: 1,
        max_steps: a.steps,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: (a.steps / 12).max(1),
        eval_every: (a.steps / 10).max(1),
        eval_batches: 2,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        out_dir: a.out_dir.clone(),
        threads: a.threads,
        ranks: a.ranks,
        zero: a.zero,
        ..TrainConfig::default()
    }
}

/// `shoal demo`.
pub fn run(a: DemoArgs) -> Result<()> {
    let config = demo_config(&a);
    remove_previous_run(&config.out_dir)?;
    let mut trainer = Trainer::new(config)?;
    let c = trainer.config();
    println!(
        "shoal demo: a {}-parameter GPT ({} layers, {} heads, width {}) learns the built-in \
         corpus ({}) for {} steps of {} tokens on {} threads, {} rank(s) under ZeRO stage {}",
        trainer.model().num_params(),
        trainer.model().config.n_layer,
        trainer.model().config.n_head,
        trainer.model().config.n_embd,
        trainer
            .mixture()
            .domains
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        c.max_steps,
        c.tokens_per_step(),
        c.resolved_threads(),
        c.ranks,
        c.zero,
    );
    println!("validation loss in nats/token; floor = the best any model can do on that domain");
    let (summary, plot) = train_with_progress(&mut trainer)?;
    if let Some(s) = &summary.last_step {
        println!(
            "done: {} steps in {:.0} s, final train loss {:.3}",
            s.step, summary.seconds, s.loss
        );
    }
    if let Some(e) = &summary.last_eval {
        println!("{}", format_final(e));
    }

    let prompt = demo_prompt(&trainer)?;
    let opts = SampleOptions {
        max_new_tokens: 160,
        temperature: 0.7,
        top_k: Some(20),
        seed: 0,
        context: None,
    };
    let text = trainer.sample(&prompt, &opts)?;
    println!(
        "\nprompt (a sentence from the validation split):\n{}",
        prompt.trim_end()
    );
    println!("the model's continuation:\n{}\n", text.trim_end());
    if let Some(dir) = &summary.checkpoint {
        println!("checkpoint: {}", dir.display());
    }
    println!("metrics:    {}", summary.metrics.display());
    println!("plot:       {}", plot.display());
    if let Some(dir) = &summary.checkpoint {
        println!(
            "try:        cargo run --release -- generate --checkpoint {} --prompt \"...\"",
            dir.display()
        );
    }
    Ok(())
}

/// A whole sentence from the first domain's validation split (the grammar), as a prompt.
fn demo_prompt(trainer: &Trainer) -> Result<String> {
    let t = 512;
    let (mut x, mut y) = (vec![0u32; t], vec![0u32; t]);
    trainer.mixture().domains[0]
        .val
        .window(0, t, &mut x, &mut y)?;
    let text = trainer.tokenizer().decode(&x)?;
    // Skip the partial line the window starts in; keep the next full line.
    let line = text
        .split_once('\n')
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map(|(line, _)| format!("{line}\n"));
    Ok(line.unwrap_or_else(|| text.chars().take(32).collect()))
}
