//! `shoal data`: corpus preparation, tokenizer training and tokenization.
//!
//! - `shoal data prepare --domain NAME=PATH[,PATH|GLOB...] ... --out DIR` normalizes,
//!   filters and deduplicates (exactly, then MinHash LSH across all domains) and prints a
//!   table per domain, the wall time and the throughput.
//! - `shoal data tokenizer train --corpus DIR [--domain NAME ...] --vocab-size N --out PATH`
//!   trains a byte-level BPE on a prepared corpus (or `--input FILE ...`).
//! - `shoal data tokenize --corpus DIR --tokenizer tokenizer.json|bytes --out OUTDIR` writes
//!   each domain's train and validation shards and `manifest.json`, and prints a table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use shoal_data::prepare::{
    DedupConfig, DomainInput, FilterConfig, NormalizeConfig, PrepareConfig, expand_input, prepare,
};
use shoal_data::{
    BpeConfig, PreparedCorpus, TokenizeConfig, Tokenizer, tokenize_corpus, train_bpe,
};

/// `shoal data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Normalize, filter and deduplicate a corpus (exact and MinHash LSH, global across
    /// domains) into DIR: DOMAIN.jsonl, dropped.jsonl, problems.jsonl, report.json.
    Prepare(PrepareArgs),
    /// Tokenizers: `shoal data tokenizer train`.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Tokenize a prepared corpus into OUTDIR: DOMAIN.train.tok and DOMAIN.val.tok per
    /// domain (split per document), the tokenizer, and manifest.json.
    Tokenize(TokenizeArgs),
}

/// `shoal data tokenizer` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE (GPT-2 style, `<|endoftext|>` special) and save tokenizer.json.
    Train(TrainTokenizerArgs),
}

/// Flags of `shoal data tokenizer train`.
#[derive(Args, Debug)]
pub struct TrainTokenizerArgs {
    /// A prepared corpus (the output directory of `shoal data prepare`).
    #[arg(long, value_name = "DIR", required_unless_present = "input")]
    pub corpus: Option<PathBuf>,
    /// Train on this domain of the corpus only; repeat for more (default: all).
    #[arg(long = "domain", value_name = "NAME", requires = "corpus")]
    pub domains: Vec<String>,
    /// Train on these files instead of a corpus (.jsonl with a `text` field, .txt, either
    /// gzip-compressed as .gz); repeat for more.
    #[arg(long, value_name = "FILE", conflicts_with = "corpus")]
    pub input: Vec<PathBuf>,
    /// Vocabulary size, the 256 bytes and `<|endoftext|>` included (at least 257).
    #[arg(long)]
    pub vocab_size: usize,
    /// Never merge a pair seen fewer times than this.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Where to write tokenizer.json (a file, or a directory to write it in).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// Flags of `shoal data tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// A prepared corpus (the output directory of `shoal data prepare`).
    #[arg(long, value_name = "DIR")]
    pub corpus: PathBuf,
    /// Tokenize this domain only; repeat for more (default: all, in the corpus's order).
    #[arg(long = "domain", value_name = "NAME")]
    pub domains: Vec<String>,
    /// A Hugging Face tokenizer.json, or `bytes` for the byte-level tokenizer.
    #[arg(long, value_name = "FILE|bytes")]
    pub tokenizer: String,
    /// Output directory (created if missing; existing shards are replaced).
    #[arg(long, value_name = "OUTDIR")]
    pub out: PathBuf,
    /// Expected share of each domain's documents held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Seed of the per-document validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Flags of `shoal data prepare`.
#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// A domain and its inputs: NAME=PATH[,PATH|GLOB...] (.jsonl with a `text` field, .txt,
    /// either gzip-compressed as .gz). Repeat for more domains; order matters: the first
    /// copy of a duplicate (domains, files, lines in order) is the one kept.
    #[arg(long = "domain", value_name = "NAME=PATHS", required = true)]
    pub domains: Vec<String>,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Drop documents shorter than this many characters (after normalization).
    #[arg(long, default_value_t = 20)]
    pub min_chars: usize,
    /// Drop documents whose share of non-text characters (not letters, digits or
    /// whitespace) is above this.
    #[arg(long, default_value_t = 0.5)]
    pub max_non_text: f64,
    /// Skip Unicode NFKC normalization.
    #[arg(long)]
    pub no_nfkc: bool,
    /// Keep whitespace as it is (no folding of spaces, line ends and empty lines).
    #[arg(long)]
    pub keep_whitespace: bool,
    /// Shingle size: words for space-delimited text, characters for CJK text.
    #[arg(long, default_value_t = 5)]
    pub ngram: usize,
    /// Share of CJK characters above which a document is shingled by characters.
    #[arg(long, default_value_t = 0.3)]
    pub cjk_share: f64,
    /// MinHash permutations.
    #[arg(long, default_value_t = 128)]
    pub permutations: usize,
    /// LSH bands (rows = permutations / bands). Default: the most rows per band that
    /// still make a pair at the threshold a candidate with probability 0.9 (16 at 0.8).
    #[arg(long)]
    pub bands: Option<usize>,
    /// Estimated Jaccard similarity at or above which documents are near duplicates.
    #[arg(long, default_value_t = 0.8)]
    pub threshold: f64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Stop at the first bad input line or file instead of counting it.
    #[arg(long)]
    pub strict: bool,
}

/// Parses `NAME=PATH[,PATH|GLOB...]` and expands its globs.
fn parse_domain(spec: &str) -> Result<DomainInput> {
    let Some((name, paths)) = spec.split_once('=') else {
        bail!("--domain {spec:?}: expected NAME=PATH[,PATH|GLOB...]");
    };
    let mut files = Vec::new();
    for pattern in paths.split(',').filter(|p| !p.is_empty()) {
        files.extend(expand_input(name, pattern)?);
    }
    if files.is_empty() {
        bail!("--domain {spec:?}: no input paths");
    }
    Ok(DomainInput {
        name: name.to_string(),
        files,
    })
}

/// Runs a `shoal data` subcommand.
pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Prepare(args) => run_prepare(args),
        DataCommand::Tokenizer(TokenizerCommand::Train(args)) => run_train_tokenizer(args),
        DataCommand::Tokenize(args) => run_tokenize(args),
    }
}

fn run_train_tokenizer(a: TrainTokenizerArgs) -> Result<()> {
    let files = match &a.corpus {
        Some(dir) => PreparedCorpus::open(dir, &a.domains)?.files(),
        None => a.input.clone(),
    };
    let config = BpeConfig {
        vocab_size: a.vocab_size,
        min_frequency: a.min_frequency,
    };
    let report = train_bpe(&files, &config, &a.out)
        .with_context(|| format!("training a tokenizer into {}", a.out.display()))?;
    println!(
        "trained a byte-level BPE of {} tokens on {} documents ({:.1} MB) from {} file(s) in {:.2} s",
        report.vocab_size,
        report.documents,
        report.bytes as f64 / 1e6,
        files.len(),
        report.seconds
    );
    if report.vocab_size < a.vocab_size {
        println!(
            "(stopped below {}: no pair is seen {} times or more any more)",
            a.vocab_size, a.min_frequency
        );
    }
    println!("tokenizer in {}", report.path.display());
    Ok(())
}

fn run_tokenize(a: TokenizeArgs) -> Result<()> {
    let corpus = PreparedCorpus::open(&a.corpus, &a.domains)?;
    let tokenizer = if a.tokenizer == "bytes" {
        Tokenizer::bytes()
    } else {
        Tokenizer::from_file(Path::new(&a.tokenizer))?
    };
    let config = TokenizeConfig {
        val_fraction: a.val_fraction,
        seed: a.seed,
    };
    let report = tokenize_corpus(&corpus, &tokenizer, &a.out, &config)
        .with_context(|| format!("tokenizing into {}", a.out.display()))?;
    print!("{}", report.table());
    let m = &report.manifest;
    let per_domain: Vec<String> = m
        .domains()
        .iter()
        .zip(&report.domain_seconds)
        .map(|(d, s)| format!("{} {s:.2} s", d.name))
        .collect();
    let bytes: u64 = m.domains().iter().map(|d| d.bytes).sum();
    println!(
        "tokenizer {} (vocabulary {}), validation fraction {}, seed {}",
        a.tokenizer,
        m.vocab_size(),
        m.val_fraction(),
        m.seed()
    );
    println!(
        "{:.2} s ({}): {:.1} MB/s of text",
        report.seconds,
        per_domain.join(", "),
        bytes as f64 / 1e6 / report.seconds.max(1e-9)
    );
    println!("manifest in {}", m.path().display());
    Ok(())
}

fn run_prepare(a: PrepareArgs) -> Result<()> {
    let domains = a
        .domains
        .iter()
        .map(|s| parse_domain(s))
        .collect::<Result<Vec<_>>>()?;
    let config = PrepareConfig {
        domains,
        out_dir: a.out.clone(),
        normalize: NormalizeConfig {
            nfkc: !a.no_nfkc,
            whitespace: !a.keep_whitespace,
        },
        filter: FilterConfig {
            min_chars: a.min_chars,
            max_non_text: a.max_non_text,
        },
        dedup: DedupConfig {
            ngram: a.ngram,
            cjk_share: a.cjk_share,
            permutations: a.permutations,
            bands: a.bands,
            threshold: a.threshold,
        },
        threads: a.threads,
        strict: a.strict,
    };
    let report = prepare(&config).with_context(|| format!("preparing into {}", a.out.display()))?;
    print!("{}", report.table());
    for file in report.files.iter().filter(|f| f.problem_count() > 0) {
        let kinds: Vec<String> = file
            .problems
            .iter()
            .map(|(kind, n)| format!("{n} {}", kind.name()))
            .collect();
        let lines: Vec<String> = file.problem_lines.iter().map(u64::to_string).collect();
        println!(
            "problems in {}: {} (lines {}{})",
            file.path.display(),
            kinds.join(", "),
            lines.join(", "),
            if file.problem_count() > lines.len() as u64 {
                ", ..."
            } else {
                ""
            }
        );
    }
    let s = &report.settings;
    let t = &report.timings;
    println!(
        "minhash: {}-grams, {} permutations, {} bands x {} rows, threshold {}; {} candidate pairs compared, {} similar",
        s.ngram,
        s.permutations,
        s.lsh.bands,
        s.lsh.rows,
        s.threshold,
        report.compared_pairs,
        report.similar_pairs
    );
    println!(
        "{:.2} s on {} threads (read+sign {:.2} s, cluster {:.2} s, write {:.2} s): {:.1} MB/s of input text",
        t.total_s,
        s.threads,
        t.read_and_sign_s,
        t.cluster_s,
        t.write_s,
        report.input_mb_per_s()
    );
    println!("outputs in {}", a.out.display());
    Ok(())
}
