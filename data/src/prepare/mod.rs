//! Corpus preparation (`shoal data prepare`): normalize, filter, and deduplicate a corpus of
//! several domains, exactly and with MinHash LSH, globally across domains (SlimPajama's
//! finding: global deduplication beats per-domain).
//!
//! Steps, for each document in input order (domains in the order given, files in order,
//! lines in order):
//! 1. read: `.jsonl` lines (`text`, optional `meta`) or whole text files, gzip or not;
//!    bad lines and files are counted as problems with their line ([`read`]);
//! 2. normalize (NFKC, whitespace) and filter (minimum length, share of non-text
//!    characters) ([`normalize`]);
//! 3. exact dedup: the first document of each xxh3-128 hash of the normalized text is kept;
//! 4. near dedup: MinHash signatures of word or character n-gram shingles
//!    ([`minhash`]), LSH banding, candidates verified by estimated Jaccard, union-find
//!    clusters, the first document of each cluster kept ([`cluster`]).
//!
//! # Memory
//!
//! Two passes, and no text is held beyond the batches in flight:
//! - pass 1 streams the inputs in batches (a reader thread splits lines and decompresses
//!   while the rayon pool works on the previous batch; `pipeline.rs` has the steps):
//!   the pool decodes, normalizes, filters and hashes a batch in parallel; the batch is
//!   then counted in input order (problems, rejections, exact copies against a map of
//!   16-byte hashes); the new texts are signed and serialized in parallel, their output
//!   lines appended to a per-domain candidates file in the output directory, and only
//!   their signatures (P × 4 bytes) and locations (28 bytes) stay in memory;
//! - clustering works on the signatures alone (plus 16 bytes a document for the band
//!   being sorted and 12 for the union-find);
//! - pass 2 copies each domain's candidates file to `DOMAIN.jsonl`, line k of it being
//!   the domain's k-th unique document, leaving out the near duplicates: no text is
//!   parsed or normalized twice, and the inputs are not read again (so they may be pipes
//!   or change afterwards).
//!
//! So memory is about P·4 + 28 + ~40 (exact-hash map) bytes per unique document, 570
//! bytes at P = 128, plus a few batches of at most 8 MB of text, whatever the size of
//! the corpus's text (measured: 230 MB peak for 200 MB of text with 350,000 unique
//! documents). The price is disk: the candidates files hold the unique documents once
//! more until pass 2 has copied them.

//! # Outputs
//!
//! In the output directory: `DOMAIN.jsonl` per domain (`{"text": normalized text, "meta":
//! {original meta fields, "source_file", "line"}}`), `dropped.jsonl` (every removed
//! document: domain, file, line, reason `too_short` | `non_text` | `exact` | `near`, the
//! kept document for duplicates and the estimated Jaccard for near ones),
//! `problems.jsonl` (every bad input line or file) and `report.json`
//! ([`PrepareReport`]), written last.

pub mod cluster;
pub mod error;
pub mod minhash;
pub mod normalize;
mod output;
mod pipeline;
pub mod read;
pub mod report;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Instant;

pub use cluster::LshParams;
pub use error::PrepareError;
pub use normalize::{FilterConfig, NormalizeConfig};
pub use read::{Problem, ProblemKind, expand_input};
pub use report::{DomainReport, FileReport, PrepareReport, Removed, Settings, Timings};

/// Name of the file listing removed documents.
pub const DROPPED_FILE: &str = "dropped.jsonl";
/// Name of the file listing bad input.
pub const PROBLEMS_FILE: &str = "problems.jsonl";
/// Name of the report, written last.
pub const REPORT_FILE: &str = "report.json";

/// One domain: a name (also the output file's stem) and its input files in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInput {
    /// Name: letters, digits, `_`, `-`, `.`; not starting with `.`.
    pub name: String,
    /// Input files (`.jsonl`, `.txt`, either with `.gz`), read in this order.
    pub files: Vec<PathBuf>,
}

/// The deduplication settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DedupConfig {
    /// Shingle size in words (space-delimited text) or characters (CJK text).
    pub ngram: usize,
    /// CJK share of the non-whitespace characters above which a document is shingled
    /// by characters.
    pub cjk_share: f64,
    /// MinHash permutations (signature length).
    pub permutations: usize,
    /// LSH bands (rows = permutations / bands); `None`: [`LshParams::for_threshold`].
    pub bands: Option<usize>,
    /// Estimated Jaccard similarity at or above which two documents are near duplicates.
    pub threshold: f64,
}

impl Default for DedupConfig {
    /// SlimPajama's: 5-grams, 128 permutations, threshold 0.8.
    fn default() -> Self {
        DedupConfig {
            ngram: 5,
            cjk_share: 0.3,
            permutations: 128,
            bands: None,
            threshold: 0.8,
        }
    }
}

/// Everything `prepare` needs.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareConfig {
    /// The domains, in order (which is the order "first" refers to in dedup).
    pub domains: Vec<DomainInput>,
    /// The output directory (created if missing; existing outputs are replaced).
    pub out_dir: PathBuf,
    /// Normalization.
    pub normalize: NormalizeConfig,
    /// Quality filters.
    pub filter: FilterConfig,
    /// Deduplication.
    pub dedup: DedupConfig,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Stop at the first problem of the input instead of counting it.
    pub strict: bool,
}

impl PrepareConfig {
    /// Defaults for everything but the domains and the output directory.
    pub fn new(domains: Vec<DomainInput>, out_dir: PathBuf) -> Self {
        PrepareConfig {
            domains,
            out_dir,
            normalize: NormalizeConfig::default(),
            filter: FilterConfig::default(),
            dedup: DedupConfig::default(),
            threads: 0,
            strict: false,
        }
    }

    /// Checks the settings and works out the LSH banding.
    fn validate(&self) -> Result<LshParams, PrepareError> {
        if self.domains.is_empty() {
            return Err(PrepareError::config("no domains given"));
        }
        for (i, d) in self.domains.iter().enumerate() {
            let name = &d.name;
            let ok_chars = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if name.is_empty() || !ok_chars || name.starts_with('.') {
                return Err(PrepareError::config(format!(
                    "domain name {name:?}: use letters, digits, '_', '-', '.' (not first)"
                )));
            }
            if ["dropped", "problems", "report"].contains(&name.as_str()) {
                return Err(PrepareError::config(format!(
                    "domain name {name:?} is taken by an output file"
                )));
            }
            if self.domains[..i].iter().any(|o| &o.name == name) {
                return Err(PrepareError::config(format!("domain {name:?} given twice")));
            }
            if d.files.is_empty() {
                return Err(PrepareError::config(format!(
                    "domain {name:?} has no files"
                )));
            }
        }
        let dd = &self.dedup;
        if !(dd.threshold > 0.0 && dd.threshold <= 1.0) {
            return Err(PrepareError::config(format!(
                "threshold {} is not in (0, 1]",
                dd.threshold
            )));
        }
        if dd.ngram == 0 {
            return Err(PrepareError::config("ngram must be at least 1"));
        }
        if !(1..=4096).contains(&dd.permutations) {
            return Err(PrepareError::config(format!(
                "permutations {} is not in 1..=4096",
                dd.permutations
            )));
        }
        if !(0.0..=1.0).contains(&dd.cjk_share) || !(0.0..=1.0).contains(&self.filter.max_non_text)
        {
            return Err(PrepareError::config(
                "cjk_share and max_non_text are shares in [0, 1]",
            ));
        }
        match dd.bands {
            None => Ok(LshParams::for_threshold(dd.threshold, dd.permutations)),
            Some(b) => LshParams::with_bands(b, dd.permutations).ok_or_else(|| {
                PrepareError::config(format!(
                    "bands {b} is not in 1..={} (the permutations)",
                    dd.permutations
                ))
            }),
        }
    }
}

/// Runs the whole preparation (see the module doc) and returns its report, which is also
/// written to `out_dir/report.json`. Bad input is counted, not fatal, unless
/// `config.strict`; errors are about the configuration, the inputs' paths and the output
/// directory.
pub fn prepare(config: &PrepareConfig) -> Result<PrepareReport, PrepareError> {
    let start = Instant::now();
    let lsh = config.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()
        .map_err(|e| PrepareError::ThreadPool {
            threads: config.threads,
            reason: e.to_string(),
        })?;
    let out = &config.out_dir;
    std::fs::create_dir_all(out).map_err(|e| PrepareError::io(out, e))?;
    // A report left from an earlier run must not vouch for this one's outputs.
    let report_path = out.join(REPORT_FILE);
    match std::fs::remove_file(&report_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(PrepareError::io(&report_path, e));
        }
        _ => {}
    }
    let mut report = pool.install(|| pipeline::run(config, lsh, &pool))?;
    report.timings.total_s = start.elapsed().as_secs_f64();
    let json =
        serde_json::to_vec_pretty(&report).map_err(|e| PrepareError::io(&report_path, e.into()))?;
    std::fs::write(&report_path, json).map_err(|e| PrepareError::io(&report_path, e))?;
    Ok(report)
}
