//! From a prepared corpus to token shards: training a byte-level BPE tokenizer
//! (`shoal data tokenizer train`, [`bpe`]) and tokenizing each domain into a training and a
//! validation shard with a manifest (`shoal data tokenize`, [`tokenize_corpus`]).
//!
//! # The validation split
//!
//! Per document, and a pure function of (seed, text): a document is held out when the xxh3
//! hash of its text, seeded with `seed`, falls in the lowest `val_fraction` of the hash
//! range. So the split does not depend on the order of the documents, on the tokenizer, or
//! on the other documents, and no document is in both splits. A domain of two or more
//! documents always has at least one in each split (the lowest hash goes to validation,
//! the highest to training); a domain of one document has it in training.
//!
//! # Memory
//!
//! A domain is read twice: once to hash its documents (8 bytes a document stay in memory),
//! once to tokenize them in batches, in parallel, in order. Its tokens are held in memory
//! until its two shards are written (4 bytes a token), one domain at a time.

pub mod bpe;
pub mod corpus;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::DataError;
use crate::manifest::{BYTES_TOKENIZER, Manifest, ManifestDomain};
use crate::shard::write_shard;
use crate::text::read_documents_streaming;
use crate::tokenizer::Tokenizer;

pub use bpe::{BpeConfig, BpeReport, SPECIAL_TOKENS, train_bpe};
pub use corpus::{PreparedCorpus, for_each_document};

/// The tokenizer's file name in the output directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Text tokenized per parallel batch.
const BATCH_BYTES: usize = 4 << 20;

/// How to split and where to write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenizeConfig {
    /// The expected share of each domain's documents held out for validation, in [0, 1).
    pub val_fraction: f64,
    /// Seed of the validation split's hash.
    pub seed: u64,
}

impl Default for TokenizeConfig {
    /// 5 % validation, seed 0.
    fn default() -> Self {
        TokenizeConfig {
            val_fraction: 0.05,
            seed: 0,
        }
    }
}

/// What a tokenization run wrote.
#[derive(Clone, Debug)]
pub struct TokenizeReport {
    /// The manifest written, loaded back and checked.
    pub manifest: Manifest,
    /// Tokens of the document separator (excluded from bytes per token).
    pub separator_tokens: usize,
    /// Wall time per domain, in seconds, in the manifest's order.
    pub domain_seconds: Vec<f64>,
    /// Wall time of the whole run, in seconds.
    pub seconds: f64,
}

impl TokenizeReport {
    /// The per-domain table, markdown style, with a total row: documents (and how many held
    /// out), bytes, train and validation tokens, bytes per token (of text, separators not
    /// counted) and each domain's share of the training tokens (the natural proportions).
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| domain | docs | val docs | bytes | train tokens | val tokens | bytes/token | train share |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        let domains = self.manifest.domains();
        let mut total = ManifestDomain {
            name: "total".to_string(),
            train: String::new(),
            val: String::new(),
            documents: 0,
            val_documents: 0,
            train_tokens: 0,
            val_tokens: 0,
            bytes: 0,
        };
        for d in domains {
            total.documents += d.documents;
            total.val_documents += d.val_documents;
            total.train_tokens += d.train_tokens;
            total.val_tokens += d.val_tokens;
            total.bytes += d.bytes;
        }
        for d in domains.iter().chain(std::iter::once(&total)) {
            let text_tokens = (d.train_tokens + d.val_tokens)
                .saturating_sub(d.documents * self.separator_tokens as u64);
            let share = d.train_tokens as f64 / total.train_tokens.max(1) as f64;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.3} | {:.1}% |",
                d.name,
                d.documents,
                d.val_documents,
                d.bytes,
                d.train_tokens,
                d.val_tokens,
                d.bytes as f64 / text_tokens.max(1) as f64,
                100.0 * share
            );
        }
        out
    }
}

/// The hash that decides a document's split.
pub fn document_hash(seed: u64, text: &str) -> u64 {
    xxh3_64_with_seed(text.as_bytes(), seed)
}

/// Which documents (given by their [`document_hash`]es, in order) go to validation: those
/// whose hash falls in the lowest `val_fraction` of the range, then at least one in each
/// split when there are two documents or more and `val_fraction > 0` (see the module
/// documentation).
pub fn validation_split(hashes: &[u64], val_fraction: f64) -> Vec<bool> {
    // The top 53 bits as a uniform number in [0, 1).
    let unit = |h: u64| (h >> 11) as f64 / (1u64 << 53) as f64;
    let mut to_val: Vec<bool> = hashes.iter().map(|&h| unit(h) < val_fraction).collect();
    if hashes.len() < 2 || val_fraction <= 0.0 {
        to_val.fill(false);
        return to_val;
    }
    if !to_val.contains(&true)
        && let Some(lowest) = (0..hashes.len()).min_by_key(|&i| (hashes[i], i))
    {
        to_val[lowest] = true;
    }
    if !to_val.contains(&false)
        && let Some(highest) = (0..hashes.len()).max_by_key(|&i| (hashes[i], i))
    {
        to_val[highest] = false;
    }
    to_val
}

/// Tokenizes every domain of `corpus` into `out_dir/NAME.train.tok` and `NAME.val.tok`
/// (each document followed by the tokenizer's document separator, documents in corpus
/// order), copies the tokenizer file there as [`TOKENIZER_FILE`] (a Hugging Face one), and
/// writes `manifest.json` last, then loads it back to check it.
pub fn tokenize_corpus(
    corpus: &PreparedCorpus,
    tokenizer: &Tokenizer,
    out_dir: &Path,
    config: &TokenizeConfig,
) -> Result<TokenizeReport, DataError> {
    let start = Instant::now();
    if !(0.0..1.0).contains(&config.val_fraction) {
        return Err(DataError::ValFraction {
            value: config.val_fraction,
        });
    }
    let vocab_size = u32::try_from(tokenizer.vocab_size()).map_err(|_| DataError::Tokenizer {
        reason: format!(
            "vocabulary size {} does not fit in u32",
            tokenizer.vocab_size()
        ),
    })?;
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let tokenizer_name = match tokenizer {
        Tokenizer::Bytes => BYTES_TOKENIZER.to_string(),
        Tokenizer::Hf(_, source) => {
            copy_tokenizer(source, &out_dir.join(TOKENIZER_FILE))?;
            TOKENIZER_FILE.to_string()
        }
    };
    let separator = tokenizer.document_separator()?;
    let mut domains = Vec::with_capacity(corpus.domains.len());
    let mut domain_seconds = Vec::with_capacity(corpus.domains.len());
    for name in &corpus.domains {
        let domain_start = Instant::now();
        let builder = DomainShards::read(
            name,
            &corpus.domain_file(name),
            tokenizer,
            &separator,
            config,
        )?;
        domains.push(builder.write(name, out_dir, vocab_size)?);
        domain_seconds.push(domain_start.elapsed().as_secs_f64());
    }
    Manifest::new(
        out_dir,
        tokenizer_name,
        vocab_size,
        config.val_fraction,
        config.seed,
        domains,
    )
    .save()?;
    let manifest = Manifest::load(out_dir)?;
    Ok(TokenizeReport {
        manifest,
        separator_tokens: separator.len(),
        domain_seconds,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Copies the tokenizer file unless `to` already is that file (copying a file onto itself
/// would empty it).
fn copy_tokenizer(from: &Path, to: &Path) -> Result<(), DataError> {
    if let (Ok(a), Ok(b)) = (from.canonicalize(), to.canonicalize())
        && a == b
    {
        return Ok(());
    }
    let bytes = std::fs::read(from).map_err(|e| DataError::io(from, e))?;
    write_atomically(to, &bytes)
}

/// Writes `bytes` to `path` through `<path>.tmp` and a rename, creating missing parents.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// One domain's tokens, split, as they are built.
struct DomainShards {
    /// Each document's split (true: validation), in order.
    to_val: Vec<bool>,
    /// Each document's hash, to notice a file that changed between the two reads.
    hashes: Vec<u64>,
    /// Bytes of text.
    bytes: u64,
    /// Training tokens so far.
    train: Vec<u32>,
    /// Validation tokens so far.
    val: Vec<u32>,
}

impl DomainShards {
    /// Reads domain `name` from `path` twice: hashes to split, then tokens.
    fn read(
        name: &str,
        path: &Path,
        tokenizer: &Tokenizer,
        separator: &[u32],
        config: &TokenizeConfig,
    ) -> Result<Self, DataError> {
        let mut hashes = Vec::new();
        let mut bytes = 0u64;
        read_documents_streaming(path, |doc| {
            hashes.push(document_hash(config.seed, &doc));
            bytes += doc.len() as u64;
            Ok(())
        })?;
        if hashes.is_empty() {
            return Err(DataError::NoDocuments {
                what: format!("domain {name:?} ({})", path.display()),
            });
        }
        let mut shards = DomainShards {
            to_val: validation_split(&hashes, config.val_fraction),
            hashes,
            bytes,
            train: Vec::new(),
            val: Vec::new(),
        };
        let mut batch: Vec<String> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut next = 0usize;
        read_documents_streaming(path, |doc| {
            if shards.hashes.get(next + batch.len()) != Some(&document_hash(config.seed, &doc)) {
                return Err(changed(path));
            }
            batch_bytes += doc.len();
            batch.push(doc);
            if batch_bytes >= BATCH_BYTES {
                shards.add(next, &batch, tokenizer, separator)?;
                next += batch.len();
                batch.clear();
                batch_bytes = 0;
            }
            Ok(())
        })?;
        shards.add(next, &batch, tokenizer, separator)?;
        if next + batch.len() != shards.hashes.len() {
            return Err(changed(path));
        }
        Ok(shards)
    }

    /// Tokenizes documents `first ..` in parallel and appends them in order.
    fn add(
        &mut self,
        first: usize,
        batch: &[String],
        tokenizer: &Tokenizer,
        separator: &[u32],
    ) -> Result<(), DataError> {
        let encoded = batch
            .par_iter()
            .map(|doc| tokenizer.encode(doc))
            .collect::<Result<Vec<_>, DataError>>()?;
        for (i, tokens) in encoded.into_iter().enumerate() {
            let out = if self.to_val[first + i] {
                &mut self.val
            } else {
                &mut self.train
            };
            out.extend_from_slice(&tokens);
            out.extend_from_slice(separator);
        }
        Ok(())
    }

    /// Writes the two shards and returns the domain's manifest entry.
    fn write(
        self,
        name: &str,
        out_dir: &Path,
        vocab_size: u32,
    ) -> Result<ManifestDomain, DataError> {
        let domain = ManifestDomain {
            name: name.to_string(),
            train: format!("{name}.train.tok"),
            val: format!("{name}.val.tok"),
            documents: self.to_val.len() as u64,
            val_documents: self.to_val.iter().filter(|&&v| v).count() as u64,
            train_tokens: self.train.len() as u64,
            val_tokens: self.val.len() as u64,
            bytes: self.bytes,
        };
        write_shard(&out_dir.join(&domain.train), &self.train, vocab_size)?;
        write_shard(&out_dir.join(&domain.val), &self.val, vocab_size)?;
        Ok(domain)
    }
}

/// The error for a file that changed between the two reads.
fn changed(path: &Path) -> DataError {
    DataError::io(
        path,
        std::io::Error::other("the file changed while it was being tokenized"),
    )
}

#[cfg(test)]
mod tests {
    use super::corpus::tests::fake_corpus;
    use super::*;
    use crate::tokenizer::test_support::save_word_level;

    #[test]
    fn split_is_deterministic_and_follows_the_fraction() {
        let texts: Vec<String> = (0..20_000).map(|i| format!("document {i}")).collect();
        let hashes: Vec<u64> = texts.iter().map(|t| document_hash(3, t)).collect();
        let split = validation_split(&hashes, 0.05);
        assert_eq!(split, validation_split(&hashes, 0.05));
        let val = split.iter().filter(|&&v| v).count();
        // 1000 expected, standard deviation ~31.
        assert!((880..=1120).contains(&val), "{val}");
        // A document's split does not depend on the others or on their order.
        let reversed: Vec<u64> = hashes.iter().rev().copied().collect();
        let split_rev = validation_split(&reversed, 0.05);
        assert!(split.iter().rev().eq(split_rev.iter()));
        assert_eq!(validation_split(&hashes[..1000], 0.05), split[..1000]);
        // Another seed, another split.
        let other: Vec<u64> = texts.iter().map(|t| document_hash(4, t)).collect();
        assert_ne!(validation_split(&other, 0.05), split);
        // A larger fraction holds out a superset.
        let more = validation_split(&hashes, 0.2);
        assert!(split.iter().zip(&more).all(|(a, b)| !a || *b));
    }

    #[test]
    fn small_domains_get_one_document_in_each_split() {
        let hashes = [u64::MAX / 2, u64::MAX / 3, u64::MAX - 5];
        // No hash is below 5 % of the range: the lowest goes to validation.
        assert_eq!(validation_split(&hashes, 0.05), vec![false, true, false]);
        // Every hash is below 99.99 %... but for the highest, which stays in training.
        assert_eq!(validation_split(&[1, 2], 0.9999), vec![true, false]);
        assert_eq!(validation_split(&[5, 5], 0.01), vec![true, false]);
        assert_eq!(validation_split(&[0], 0.5), vec![false]);
        assert_eq!(validation_split(&[], 0.5), Vec::<bool>::new());
        assert_eq!(validation_split(&hashes, 0.0), vec![false; 3]);
    }

    #[test]
    fn tokenizes_a_prepared_corpus_with_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_corpus(dir.path());
        let corpus = PreparedCorpus::open(dir.path(), &[]).expect("open");
        let out = dir.path().join("shards");
        let config = TokenizeConfig {
            val_fraction: 0.05,
            seed: 1,
        };
        let report =
            tokenize_corpus(&corpus, &Tokenizer::bytes(), &out, &config).expect("tokenize");
        let m = &report.manifest;
        assert_eq!(m.tokenizer_name(), "bytes");
        assert!(!out.join(TOKENIZER_FILE).exists());
        let [a, b] = m.domains() else {
            panic!("two domains expected")
        };
        assert_eq!((a.documents, a.val_documents, a.bytes), (2, 1, 18));
        assert_eq!((b.documents, b.val_documents, b.val_tokens), (1, 0, 0));
        assert_eq!(a.train_tokens + a.val_tokens, 18 + 4);
        let mixture = m.mixture().expect("mixture");
        let held_out = String::from_utf8(
            mixture.domains[0]
                .val
                .to_vec()
                .iter()
                .map(|&t| t as u8)
                .collect(),
        )
        .expect("utf8");
        assert!(
            held_out == "alpha one\n\n" || held_out == "alpha two\n\n",
            "{held_out:?}"
        );
        assert_eq!(
            mixture.domains[1].train.to_vec(),
            b"beta\n\n".map(u32::from)
        );
        let table = report.table();
        assert!(
            table.contains("| b | 1 | 0 | 4 | 6 | 0 | 1.000 | "),
            "{table}"
        );
        assert!(table.contains("| total | 3 | 1 | 22 | "), "{table}");

        // The same run writes the same shards.
        let again = dir.path().join("again");
        tokenize_corpus(&corpus, &Tokenizer::bytes(), &again, &config).expect("again");
        for f in ["a.train.tok", "a.val.tok", "manifest.json"] {
            assert_eq!(
                std::fs::read(out.join(f)).ok(),
                std::fs::read(again.join(f)).ok()
            );
        }
    }

    #[test]
    fn copies_a_hugging_face_tokenizer_and_rejects_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_corpus(dir.path());
        let corpus = PreparedCorpus::open(dir.path(), &["b".to_string()]).expect("open");
        let out = dir.path().join("shards");
        std::fs::create_dir(&out).expect("mkdir");
        let path = save_word_level(&out, true);
        let tokenizer = Tokenizer::from_file(&path).expect("load");
        // The tokenizer already sits where it is copied to: it is left as it is.
        let report =
            tokenize_corpus(&corpus, &tokenizer, &out, &TokenizeConfig::default()).expect("run");
        assert_eq!(report.manifest.tokenizer_name(), TOKENIZER_FILE);
        assert_eq!(report.manifest.vocab_size(), 6);
        let loaded = report.manifest.tokenizer().expect("tokenizer");
        assert_eq!(loaded.vocab_size(), 6);
        // "beta" is unknown (0), then <|endoftext|> (5).
        let mixture = report.manifest.mixture().expect("mixture");
        assert_eq!(mixture.domains[0].train.to_vec(), vec![0, 5]);

        let bad = TokenizeConfig {
            val_fraction: 1.0,
            seed: 0,
        };
        assert!(matches!(
            tokenize_corpus(&corpus, &tokenizer, &out, &bad),
            Err(DataError::ValFraction { .. })
        ));
        std::fs::write(dir.path().join("b.jsonl"), "\n").expect("empty b");
        let err = tokenize_corpus(&corpus, &tokenizer, &out, &TokenizeConfig::default())
            .expect_err("no documents");
        assert!(err.to_string().contains("domain \"b\""), "{err}");
    }
}
