//! What `prepare` did: per-domain counts of each step, per-file problem counts, the
//! settings and the timings; written as `report.json` and printed as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::cluster::LshParams;
use super::normalize::{FilterConfig, NormalizeConfig};
use super::read::ProblemKind;

/// Problem lines listed per file in the report (all of them are in `problems.jsonl`).
pub const PROBLEM_LINES_LISTED: usize = 20;

/// Documents and input bytes removed by one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Documents removed.
    pub docs: u64,
    /// Their bytes of input text (UTF-8, before normalization).
    pub bytes: u64,
}

impl Removed {
    /// Counts one more document of `bytes` input bytes.
    pub fn add(&mut self, bytes: u64) {
        self.docs += 1;
        self.bytes += bytes;
    }
}

/// One domain's row of the table.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DomainReport {
    /// The domain's name.
    pub domain: String,
    /// Input files.
    pub files: usize,
    /// Documents read (problems excluded).
    pub docs_in: u64,
    /// Their bytes of text (UTF-8, before normalization).
    pub bytes_in: u64,
    /// Bad input lines and files (see `problems.jsonl`).
    pub problems: u64,
    /// Removed for being shorter than `min_chars` after normalization.
    pub too_short: Removed,
    /// Removed for too high a share of non-text characters.
    pub non_text: Removed,
    /// Removed as exact copies (same normalized text) of an earlier document.
    pub exact_dups: Removed,
    /// Removed as near duplicates (MinHash LSH) of an earlier document.
    pub near_dups: Removed,
    /// Documents written.
    pub kept_docs: u64,
    /// Their bytes of normalized text.
    pub kept_bytes: u64,
    /// Documents shingled by characters (CJK) rather than words, among those hashed.
    pub char_shingled: u64,
}

impl DomainReport {
    /// Adds another row's counts to this one (for the total).
    fn add(&mut self, o: &DomainReport) {
        self.files += o.files;
        self.docs_in += o.docs_in;
        self.bytes_in += o.bytes_in;
        self.problems += o.problems;
        for (a, b) in [
            (&mut self.too_short, o.too_short),
            (&mut self.non_text, o.non_text),
            (&mut self.exact_dups, o.exact_dups),
            (&mut self.near_dups, o.near_dups),
        ] {
            a.docs += b.docs;
            a.bytes += b.bytes;
        }
        self.kept_docs += o.kept_docs;
        self.kept_bytes += o.kept_bytes;
        self.char_shingled += o.char_shingled;
    }
}

/// One input file: what it gave and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileReport {
    /// Its domain.
    pub domain: String,
    /// The file.
    pub path: PathBuf,
    /// Documents read from it.
    pub docs: u64,
    /// Their bytes of text.
    pub bytes: u64,
    /// Problems by kind.
    pub problems: BTreeMap<ProblemKind, u64>,
    /// The lines of the first [`PROBLEM_LINES_LISTED`] problems (0 for the whole file).
    pub problem_lines: Vec<u64>,
}

impl FileReport {
    /// Problems of every kind.
    pub fn problem_count(&self) -> u64 {
        self.problems.values().sum()
    }
}

/// The settings a run used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Normalization.
    pub normalize: NormalizeConfig,
    /// Quality filters.
    pub filter: FilterConfig,
    /// Shingle size (words or characters).
    pub ngram: usize,
    /// CJK share above which a document is shingled by characters.
    pub cjk_share: f64,
    /// MinHash permutations.
    pub permutations: usize,
    /// LSH banding.
    pub lsh: LshParams,
    /// Estimated Jaccard similarity at or above which documents are near duplicates.
    pub threshold: f64,
    /// Worker threads.
    pub threads: usize,
    /// Whether the first problem stopped the run.
    pub strict: bool,
}

/// Wall time of each phase, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Reading, normalizing, filtering, exact dedup and signatures (pass 1).
    pub read_and_sign_s: f64,
    /// LSH banding, verification and clustering.
    pub cluster_s: f64,
    /// Writing the kept documents (pass 2).
    pub write_s: f64,
    /// The whole run.
    pub total_s: f64,
}

/// Everything a run reports (`report.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PrepareReport {
    /// One row per domain, in the order given.
    pub domains: Vec<DomainReport>,
    /// One entry per input file, in reading order.
    pub files: Vec<FileReport>,
    /// The settings used.
    pub settings: Settings,
    /// Candidate pairs from LSH whose signatures were compared.
    pub compared_pairs: u64,
    /// Compared pairs at or above the threshold.
    pub similar_pairs: u64,
    /// Bytes of the signatures held in memory (unique documents × permutations × 4).
    pub signature_bytes: u64,
    /// Timings.
    pub timings: Timings,
}

impl PrepareReport {
    /// The sum of all domains' rows (named `total`).
    pub fn total(&self) -> DomainReport {
        let mut total = DomainReport {
            domain: "total".to_string(),
            ..DomainReport::default()
        };
        for d in &self.domains {
            total.add(d);
        }
        total
    }

    /// Input text processed per second of the whole run, in MB/s (10^6 bytes).
    pub fn input_mb_per_s(&self) -> f64 {
        self.total().bytes_in as f64 / 1e6 / self.timings.total_s.max(1e-9)
    }

    /// The per-domain table, markdown style, with a total row.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| domain | docs in | bytes in | problems | too short | non-text | exact dups | near dups | kept docs | kept bytes |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for d in self.domains.iter().chain(std::iter::once(&self.total())) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                d.domain,
                d.docs_in,
                d.bytes_in,
                d.problems,
                d.too_short.docs,
                d.non_text.docs,
                d.exact_dups.docs,
                d.near_dups.docs,
                d.kept_docs,
                d.kept_bytes
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_domain_and_a_total() {
        let row = |name: &str, docs: u64| DomainReport {
            domain: name.to_string(),
            docs_in: docs,
            bytes_in: docs * 10,
            near_dups: Removed { docs: 1, bytes: 10 },
            kept_docs: docs - 1,
            kept_bytes: (docs - 1) * 10,
            ..DomainReport::default()
        };
        let report = PrepareReport {
            domains: vec![row("a", 5), row("b", 7)],
            files: Vec::new(),
            settings: Settings {
                normalize: NormalizeConfig::default(),
                filter: FilterConfig::default(),
                ngram: 5,
                cjk_share: 0.3,
                permutations: 128,
                lsh: LshParams { bands: 16, rows: 8 },
                threshold: 0.8,
                threads: 1,
                strict: false,
            },
            compared_pairs: 0,
            similar_pairs: 0,
            signature_bytes: 0,
            timings: Timings {
                total_s: 2.0,
                ..Timings::default()
            },
        };
        let table = report.table();
        assert!(
            table.contains("| a | 5 | 50 | 0 | 0 | 0 | 0 | 1 | 4 | 40 |"),
            "{table}"
        );
        assert!(
            table.contains("| total | 12 | 120 | 0 | 0 | 0 | 0 | 2 | 10 | 100 |"),
            "{table}"
        );
        assert!((report.input_mb_per_s() - 60e-6).abs() < 1e-12);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["domains"][1]["near_dups"]["docs"], 1);
        assert_eq!(json["settings"]["lsh"]["bands"], 16);
    }
}
