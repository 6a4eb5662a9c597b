//! The two passes of `prepare` (see the module doc of [`super`]).
//!
//! Pass 1 handles a batch of raw records in four steps: (a) in parallel, decode,
//! normalize, filter and hash each record; (b) in input order, count problems and
//! rejections and drop exact copies, giving each new text the next id; (c) in parallel,
//! sign and serialize the new texts; (d) in order, append their signatures and their
//! output lines. Signing after the exact step spares the copies that work.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_128;

use super::cluster::{LshParams, Signatures, cluster};
use super::error::PrepareError;
use super::minhash::{MinHasher, ShingleKind, ShingleScratch, mix64};
use super::normalize::{Rejection, TextStats, check_quality, normalize};
use super::output::{Dropped, Location, Output, candidates_path, write_kept};
use super::read::{FileReader, InputFile, Problem, RawItem, RawProblem, parse_record};
use super::report::{DomainReport, FileReport, PROBLEM_LINES_LISTED, PrepareReport, Settings};
use super::{DROPPED_FILE, PROBLEMS_FILE, PrepareConfig, Timings};

/// Records per batch (a batch also ends at [`BATCH_BYTES`]).
const BATCH_ITEMS: usize = 4096;
/// Bytes of raw records per batch.
const BATCH_BYTES: usize = 8 << 20;
/// Batches read ahead of the one being processed.
const READ_AHEAD: usize = 2;

/// One input file with its domain.
struct FileEntry {
    domain: usize,
    input: InputFile,
    /// The path as written in the outputs.
    shown: String,
}

/// Step (a)'s result for one raw record.
enum Normalized {
    Problem {
        file: u32,
        problem: RawProblem,
    },
    Rejected {
        file: u32,
        line: u64,
        bytes_in: u64,
        rejection: Rejection,
    },
    Text(Text),
}

/// A normalized document that passed the filters.
struct Text {
    file: u32,
    line: u64,
    bytes_in: u64,
    text: String,
    meta: Option<Value>,
    exact: u128,
    kind: ShingleKind,
}

/// The output record of a kept document.
#[derive(Serialize)]
struct OutRecord<'a> {
    text: &'a str,
    meta: Map<String, Value>,
}

/// A hasher for keys that are already hashes (the xxh3-128 of a text).
#[derive(Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = mix64(self.0 ^ u64::from_le_bytes(word));
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// Where each unique (exact-deduplicated) document came from, by id.
#[derive(Default)]
struct Catalog {
    file: Vec<u32>,
    line: Vec<u64>,
    bytes_in: Vec<u64>,
    bytes_out: Vec<u64>,
}

/// Pass 1's state.
struct Pass1<'a> {
    config: &'a PrepareConfig,
    files: &'a [FileEntry],
    hasher: MinHasher,
    exact: HashMap<u128, u32, BuildHasherDefault<PrehashedKey>>,
    signatures: Signatures,
    catalog: Catalog,
    domains: Vec<DomainReport>,
    file_reports: Vec<FileReport>,
    candidates: Vec<Output>,
    dropped: Output,
    problems: Output,
}

impl<'a> Pass1<'a> {
    fn location(&self, file: u32, line: u64) -> Location<'a> {
        let entry = &self.files[file as usize];
        Location {
            domain: &self.config.domains[entry.domain].name,
            file: &entry.shown,
            line,
        }
    }

    /// Step (a) for one record.
    fn normalize(&self, item: RawItem) -> Normalized {
        let (file, line, bytes) = match item {
            RawItem::Problem { file, problem } => return Normalized::Problem { file, problem },
            RawItem::Record { file, line, bytes } => (file, line, bytes),
        };
        let parsed = match parse_record(self.files[file as usize].input.format, bytes) {
            Ok(p) => p,
            Err((offset, mut problem)) => {
                problem.line = Some(line + offset);
                return Normalized::Problem { file, problem };
            }
        };
        let bytes_in = parsed.text.len() as u64;
        let text = normalize(&parsed.text, self.config.normalize);
        drop(parsed.text);
        let stats = TextStats::of(&text);
        if let Err(rejection) = check_quality(&stats, self.config.filter) {
            return Normalized::Rejected {
                file,
                line,
                bytes_in,
                rejection,
            };
        }
        let kind = ShingleKind::from_counts(stats.cjk, stats.visible, self.config.dedup.cjk_share);
        Normalized::Text(Text {
            file,
            line,
            bytes_in,
            exact: xxh3_128(text.as_bytes()),
            text,
            meta: parsed.meta,
            kind,
        })
    }

    /// Step (b) for one record: returns the text if it is new.
    fn count(&mut self, item: Normalized) -> Result<Option<Text>, PrepareError> {
        let file = match &item {
            Normalized::Problem { file, .. } | Normalized::Rejected { file, .. } => *file,
            Normalized::Text(t) => t.file,
        };
        let d = self.files[file as usize].domain;
        match item {
            Normalized::Problem { file, problem } => {
                let entry = &self.files[file as usize];
                let problem = Problem {
                    domain: self.config.domains[d].name.clone(),
                    file: entry.input.path.clone(),
                    line: problem.line,
                    kind: problem.kind,
                    message: problem.message,
                };
                if self.config.strict {
                    let problem = Box::new(problem);
                    return Err(PrepareError::Strict { problem });
                }
                self.domains[d].problems += 1;
                let report = &mut self.file_reports[file as usize];
                *report.problems.entry(problem.kind).or_default() += 1;
                if report.problem_lines.len() < PROBLEM_LINES_LISTED {
                    report.problem_lines.push(problem.line.unwrap_or(0));
                }
                self.problems.json(&problem)?;
                Ok(None)
            }
            Normalized::Rejected {
                file,
                line,
                bytes_in,
                rejection,
            } => {
                self.count_in(file, bytes_in);
                let mut record = Dropped::new(self.location(file, line), "too_short");
                match rejection {
                    Rejection::TooShort(chars) => {
                        self.domains[d].too_short.add(bytes_in);
                        record.chars = Some(chars);
                    }
                    Rejection::NonText(ratio) => {
                        self.domains[d].non_text.add(bytes_in);
                        record.reason = "non_text";
                        record.non_text_ratio = Some(ratio);
                    }
                }
                self.dropped.json(&record)?;
                Ok(None)
            }
            Normalized::Text(text) => {
                self.count_in(text.file, text.bytes_in);
                let next = u32::try_from(self.catalog.file.len())
                    .ok()
                    .filter(|&n| n < u32::MAX)
                    .ok_or(PrepareError::TooManyDocuments {
                        limit: u64::from(u32::MAX) - 1,
                    })?;
                let kept = *self.exact.entry(text.exact).or_insert(next);
                if kept != next {
                    self.domains[d].exact_dups.add(text.bytes_in);
                    let mut record = Dropped::new(self.location(text.file, text.line), "exact");
                    let k = kept as usize;
                    record.kept = Some(self.location(self.catalog.file[k], self.catalog.line[k]));
                    self.dropped.json(&record)?;
                    return Ok(None);
                }
                self.catalog.file.push(text.file);
                self.catalog.line.push(text.line);
                self.catalog.bytes_in.push(text.bytes_in);
                self.catalog.bytes_out.push(text.text.len() as u64);
                self.domains[d].char_shingled += u64::from(text.kind == ShingleKind::Chars);
                Ok(Some(text))
            }
        }
    }

    fn count_in(&mut self, file: u32, bytes_in: u64) {
        let d = &mut self.domains[self.files[file as usize].domain];
        d.docs_in += 1;
        d.bytes_in += bytes_in;
        let f = &mut self.file_reports[file as usize];
        f.docs += 1;
        f.bytes += bytes_in;
    }

    /// Step (c) for one new text: its signature (into `signature`) and output line.
    fn sign(&self, text: Text, scratch: &mut ShingleScratch, signature: &mut [u32]) -> String {
        let dedup = &self.config.dedup;
        self.hasher
            .sign_text(&text.text, text.kind, dedup.ngram, scratch, signature);
        let mut meta = match text.meta {
            Some(Value::Object(map)) => map,
            Some(other) => Map::from_iter([("original_meta".to_string(), other)]),
            None => Map::new(),
        };
        let entry = &self.files[text.file as usize];
        meta.insert("source_file".into(), entry.shown.clone().into());
        meta.insert("line".into(), text.line.into());
        // Serializing strings and maps of JSON values cannot fail.
        serde_json::to_string(&OutRecord {
            text: &text.text,
            meta,
        })
        .unwrap_or_default()
    }

    /// Steps (a) to (d) for one batch.
    fn process(&mut self, batch: Vec<RawItem>) -> Result<(), PrepareError> {
        let normalized: Vec<Normalized> = batch
            .into_par_iter()
            .map(|item| self.normalize(item))
            .collect();
        let mut new = Vec::new();
        for item in normalized {
            new.extend(self.count(item)?);
        }
        let p = self.config.dedup.permutations;
        // Taken out while the workers fill in the new signatures and read `self`.
        let mut all = std::mem::take(&mut self.signatures);
        let signatures = all.extend_zeroed(new.len());
        let this = &*self;
        let lines: Vec<(usize, String)> = new
            .into_par_iter()
            .zip(signatures.par_chunks_mut(p))
            .map_init(ShingleScratch::default, |scratch, (text, signature)| {
                let domain = this.files[text.file as usize].domain;
                (domain, this.sign(text, scratch, signature))
            })
            .collect();
        self.signatures = all;
        for (d, line) in lines {
            self.candidates[d].line(line.as_bytes())?;
        }
        Ok(())
    }
}

/// Reads all files in order and hands on batches of raw items; stops early when `sink`
/// says so (returns `false`).
fn read_batches(files: &[FileEntry], mut sink: impl FnMut(Vec<RawItem>) -> bool) {
    let mut batch = Vec::with_capacity(BATCH_ITEMS);
    let mut bytes = 0;
    for (index, entry) in files.iter().enumerate() {
        for item in FileReader::new(index as u32, entry.input.clone()) {
            bytes += item.len();
            batch.push(item);
            if batch.len() >= BATCH_ITEMS || bytes >= BATCH_BYTES {
                bytes = 0;
                if !sink(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH_ITEMS),
                )) {
                    return;
                }
            }
        }
    }
    if !batch.is_empty() {
        sink(batch);
    }
}

/// Both passes and the clustering, on `pool` (already installed); removes the
/// candidates files whatever happens.
pub(super) fn run(
    config: &PrepareConfig,
    lsh: LshParams,
    pool: &rayon::ThreadPool,
) -> Result<PrepareReport, PrepareError> {
    let files: Vec<FileEntry> = config
        .domains
        .iter()
        .enumerate()
        .flat_map(|(domain, d)| {
            d.files.iter().map(move |path| FileEntry {
                domain,
                input: InputFile::new(path.clone()),
                shown: path.display().to_string(),
            })
        })
        .collect();
    let result = run_passes(config, lsh, pool, &files);
    for d in &config.domains {
        let _ = std::fs::remove_file(candidates_path(&config.out_dir, &d.name));
    }
    result
}

fn run_passes(
    config: &PrepareConfig,
    lsh: LshParams,
    pool: &rayon::ThreadPool,
    files: &[FileEntry],
) -> Result<PrepareReport, PrepareError> {
    let out: &Path = &config.out_dir;
    let started = Instant::now();
    let mut pass = Pass1 {
        config,
        files,
        hasher: MinHasher::new(config.dedup.permutations),
        exact: HashMap::default(),
        signatures: Signatures::new(config.dedup.permutations),
        catalog: Catalog::default(),
        domains: config
            .domains
            .iter()
            .map(|d| DomainReport {
                domain: d.name.clone(),
                files: d.files.len(),
                ..DomainReport::default()
            })
            .collect(),
        file_reports: files
            .iter()
            .map(|f| FileReport {
                domain: config.domains[f.domain].name.clone(),
                path: f.input.path.clone(),
                docs: 0,
                bytes: 0,
                problems: Default::default(),
                problem_lines: Vec::new(),
            })
            .collect(),
        candidates: config
            .domains
            .iter()
            .map(|d| Output::create(candidates_path(out, &d.name)))
            .collect::<Result<_, _>>()?,
        dropped: Output::create(out.join(DROPPED_FILE))?,
        problems: Output::create(out.join(PROBLEMS_FILE))?,
    };
    if pool.current_num_threads() <= 1 {
        let mut result = Ok(());
        read_batches(files, |batch| {
            result = pass.process(batch);
            result.is_ok()
        });
        result?;
    } else {
        // A reader thread splits lines (and decompresses) while the pool works.
        std::thread::scope(|s| {
            let (tx, rx) = sync_channel(READ_AHEAD);
            let reader = s.spawn(move || read_batches(files, |batch| tx.send(batch).is_ok()));
            let result = rx.into_iter().try_for_each(|batch| pass.process(batch));
            reader.join().map_err(|_| PrepareError::Reader)?;
            result
        })?;
    }
    let Pass1 {
        signatures,
        catalog,
        mut domains,
        file_reports,
        candidates,
        mut dropped,
        problems,
        exact,
        ..
    } = pass;
    drop(exact);
    problems.finish()?;
    for c in candidates {
        c.finish()?;
    }
    let read_and_sign_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut clusters = cluster(&signatures, lsh, config.dedup.threshold);
    let cluster_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let location = |id: u32| {
        let entry = &files[catalog.file[id as usize] as usize];
        Location {
            domain: &config.domains[entry.domain].name,
            file: &entry.shown,
            line: catalog.line[id as usize],
        }
    };
    for (d, domain) in config.domains.iter().enumerate() {
        let ids = (0..catalog.file.len() as u32)
            .filter(|&id| files[catalog.file[id as usize] as usize].domain == d);
        write_kept(
            out,
            &domain.name,
            ids,
            &location,
            (&catalog.bytes_in, &catalog.bytes_out),
            &signatures,
            &mut clusters,
            &mut domains[d],
            &mut dropped,
        )?;
    }
    dropped.finish()?;
    let write_s = started.elapsed().as_secs_f64();

    Ok(PrepareReport {
        domains,
        files: file_reports,
        settings: Settings {
            normalize: config.normalize,
            filter: config.filter,
            ngram: config.dedup.ngram,
            cjk_share: config.dedup.cjk_share,
            permutations: config.dedup.permutations,
            lsh,
            threshold: config.dedup.threshold,
            threads: pool.current_num_threads(),
            strict: config.strict,
        },
        compared_pairs: clusters.compared_pairs,
        similar_pairs: clusters.similar_pairs,
        signature_bytes: signatures.bytes() as u64,
        timings: Timings {
            read_and_sign_s,
            cluster_s,
            write_s,
            total_s: 0.0,
        },
    })
}
