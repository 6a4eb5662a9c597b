//! The output files of `prepare`: buffered JSONL writers, the records of `dropped.jsonl`,
//! and pass 2, which turns each domain's candidates file into `DOMAIN.jsonl`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cluster::{Clusters, Signatures};
use super::error::PrepareError;
use super::minhash::estimate_jaccard;
use super::report::DomainReport;

/// Buffer of each output file.
const WRITE_BUFFER: usize = 1 << 20;

/// An output file being written.
pub(super) struct Output {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl Output {
    /// Creates (or truncates) `path`.
    pub fn create(path: PathBuf) -> Result<Self, PrepareError> {
        let file = File::create(&path).map_err(|e| PrepareError::io(&path, e))?;
        Ok(Output {
            writer: BufWriter::with_capacity(WRITE_BUFFER, file),
            path,
        })
    }

    /// Writes `line` and a newline.
    pub fn line(&mut self, line: &[u8]) -> Result<(), PrepareError> {
        self.writer
            .write_all(line)
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|e| PrepareError::io(&self.path, e))
    }

    /// Writes `value` as one JSON line.
    pub fn json(&mut self, value: &impl Serialize) -> Result<(), PrepareError> {
        serde_json::to_writer(&mut self.writer, value)
            .map_err(std::io::Error::from)
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|e| PrepareError::io(&self.path, e))
    }

    /// Flushes the buffer.
    pub fn finish(mut self) -> Result<(), PrepareError> {
        self.writer
            .flush()
            .map_err(|e| PrepareError::io(&self.path, e))
    }
}

/// Where a document is: `{"domain", "file", "line"}`.
#[derive(Clone, Copy, Debug, Serialize)]
pub(super) struct Location<'a> {
    pub domain: &'a str,
    pub file: &'a str,
    pub line: u64,
}

/// One line of `dropped.jsonl`.
#[derive(Debug, Serialize)]
pub(super) struct Dropped<'a> {
    #[serde(flatten)]
    pub at: Location<'a>,
    /// `too_short`, `non_text`, `exact` or `near`.
    pub reason: &'static str,
    /// Characters of a too-short document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chars: Option<usize>,
    /// Non-text share of a `non_text` document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_text_ratio: Option<f64>,
    /// The kept document a duplicate was removed for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<Location<'a>>,
    /// Estimated Jaccard similarity with the kept document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jaccard: Option<f64>,
    /// For a near duplicate joined to its cluster through another member: that member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<Location<'a>>,
    /// Estimated Jaccard similarity with `matched`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_jaccard: Option<f64>,
}

impl<'a> Dropped<'a> {
    /// A record with only the location and the reason.
    pub fn new(at: Location<'a>, reason: &'static str) -> Self {
        Dropped {
            at,
            reason,
            chars: None,
            non_text_ratio: None,
            kept: None,
            jaccard: None,
            matched: None,
            matched_jaccard: None,
        }
    }
}

/// Path of domain `name`'s candidates file (pass 1's output for it).
pub(super) fn candidates_path(out: &Path, name: &str) -> PathBuf {
    out.join(format!(".{name}.candidates.tmp"))
}

/// Pass 2 for domain `d`: copies its candidates file to `DOMAIN.jsonl`, but for the near
/// duplicates, which go to `dropped.jsonl`. `ids` are the domain's unique documents in
/// order (line k of the candidates file is `ids[k]`); `location` names any document.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_kept<'a>(
    out: &Path,
    name: &str,
    ids: impl Iterator<Item = u32>,
    location: &dyn Fn(u32) -> Location<'a>,
    bytes: (&[u64], &[u64]),
    signatures: &Signatures,
    clusters: &mut Clusters,
    report: &mut DomainReport,
    dropped: &mut Output,
) -> Result<(), PrepareError> {
    let (bytes_in, bytes_out) = bytes;
    let tmp = candidates_path(out, name);
    let file = File::open(&tmp).map_err(|e| PrepareError::io(&tmp, e))?;
    let mut reader = BufReader::with_capacity(WRITE_BUFFER, file);
    let mut kept = Output::create(out.join(format!("{name}.jsonl")))?;
    let mut line = Vec::new();
    for id in ids {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| PrepareError::io(&tmp, e))?;
        if n == 0 {
            let e = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "candidates file ended early",
            );
            return Err(PrepareError::io(&tmp, e));
        }
        let root = clusters.kept(id);
        if root == id {
            report.kept_docs += 1;
            report.kept_bytes += bytes_out[id as usize];
            kept.line(line.strip_suffix(b"\n").unwrap_or(&line))?;
            continue;
        }
        report.near_dups.add(bytes_in[id as usize]);
        let mut record = Dropped::new(location(id), "near");
        record.kept = Some(location(root));
        record.jaccard = Some(estimate_jaccard(signatures.get(id), signatures.get(root)));
        if let Some(m) = clusters.first_match(id).filter(|m| m.other != root) {
            record.matched = Some(location(m.other));
            record.matched_jaccard = Some(m.jaccard);
        }
        dropped.json(&record)?;
    }
    kept.finish()
}
