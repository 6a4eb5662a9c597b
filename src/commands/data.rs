//! `shoal data`: corpus preparation.
//!
//! `shoal data prepare --domain NAME=PATH[,PATH|GLOB...] ... --out DIR` normalizes, filters
//! and deduplicates (exactly, then MinHash LSH across all domains) and prints a table per
//! domain, the wall time and the throughput.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use shoal_data::prepare::{
    DedupConfig, DomainInput, FilterConfig, NormalizeConfig, PrepareConfig, expand_input, prepare,
};

/// `shoal data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Normalize, filter and deduplicate a corpus (exact and MinHash LSH, global across
    /// domains) into DIR: DOMAIN.jsonl, dropped.jsonl, problems.jsonl, report.json.
    Prepare(PrepareArgs),
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
    }
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
