//! Token manifests: the `manifest.json` that `shoal data tokenize` writes beside its shards,
//! and the mixture it describes.
//!
//! ```json
//! {"format": "shoal-tokens-1", "tokenizer": "tokenizer.json", "vocab_size": 4096,
//!  "val_fraction": 0.05, "seed": 0,
//!  "domains": [{"name": "en_drama", "train": "en_drama.train.tok", "val": "en_drama.val.tok",
//!               "documents": 498, "val_documents": 21, "train_tokens": 301234,
//!               "val_tokens": 14012, "bytes": 1150000}]}
//! ```
//!
//! Paths are relative to the manifest's directory; `tokenizer` is `"bytes"` or the file name
//! of a Hugging Face `tokenizer.json` there. Loading checks every shard against the
//! manifest (vocabulary size, token counts) and keeps it memory-mapped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::TokenDataset;
use crate::error::DataError;
use crate::mixture::{Domain, Mixture};
use crate::shard::TokenShard;
use crate::tokenizer::Tokenizer;

/// The manifest's file name in its directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The `format` this code writes and reads.
pub const MANIFEST_FORMAT: &str = "shoal-tokens-1";
/// The `tokenizer` of shards made with the byte-level tokenizer.
pub const BYTES_TOKENIZER: &str = "bytes";

/// One domain of a manifest: its shards and what they hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDomain {
    /// The domain's name (unique, not empty).
    pub name: String,
    /// The training shard, relative to the manifest's directory.
    pub train: String,
    /// The validation shard, relative to the manifest's directory.
    pub val: String,
    /// Documents in the domain, both splits.
    pub documents: u64,
    /// Documents in the validation split.
    pub val_documents: u64,
    /// Tokens in the training shard (document separators included).
    pub train_tokens: u64,
    /// Tokens in the validation shard (document separators included).
    pub val_tokens: u64,
    /// Bytes of UTF-8 text in the domain, both splits.
    pub bytes: u64,
}

/// The fields of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ManifestFile {
    format: String,
    tokenizer: String,
    vocab_size: u32,
    val_fraction: f64,
    seed: u64,
    domains: Vec<ManifestDomain>,
}

/// A loaded, checked token manifest with its shards open (memory-mapped).
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The manifest file.
    path: PathBuf,
    /// What it says.
    file: ManifestFile,
    /// Each domain's (train, val) shards, in the order of `file.domains`.
    datasets: Vec<(TokenDataset, TokenDataset)>,
}

impl Manifest {
    /// Loads `manifest.json` (given itself or its directory) and checks it: the format, that
    /// names are unique and not empty, and that every shard exists, is valid, and has the
    /// manifest's vocabulary size and token count. The shards stay open, memory-mapped.
    pub fn load(path: &Path) -> Result<Manifest, DataError> {
        let path = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let bad = |reason: String| DataError::Manifest {
            path: path.clone(),
            reason,
        };
        let file: ManifestFile =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not valid: {e}")))?;
        if file.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format {:?} is not {MANIFEST_FORMAT:?}",
                file.format
            )));
        }
        if !(0.0..1.0).contains(&file.val_fraction) {
            return Err(bad(format!(
                "val_fraction {} is not in [0, 1)",
                file.val_fraction
            )));
        }
        if file.tokenizer.is_empty() {
            return Err(bad("the tokenizer is not named".to_string()));
        }
        if file.tokenizer == BYTES_TOKENIZER && file.vocab_size != 256 {
            return Err(bad(format!(
                "the byte-level tokenizer has 256 tokens, not vocab_size {}",
                file.vocab_size
            )));
        }
        if file.domains.is_empty() {
            return Err(bad("no domains".to_string()));
        }
        let mut names = HashSet::new();
        for d in &file.domains {
            if d.name.is_empty() {
                return Err(bad("a domain has an empty name".to_string()));
            }
            if !names.insert(d.name.as_str()) {
                return Err(bad(format!("domain {:?} is listed twice", d.name)));
            }
            if d.val_documents > d.documents {
                return Err(bad(format!(
                    "domain {:?} has {} validation documents of {}",
                    d.name, d.val_documents, d.documents
                )));
            }
        }
        let mut manifest = Manifest {
            path,
            file,
            datasets: Vec::new(),
        };
        if manifest.file.tokenizer != BYTES_TOKENIZER {
            manifest.existing(&manifest.file.tokenizer)?;
        }
        let mut datasets = Vec::with_capacity(manifest.file.domains.len());
        for d in &manifest.file.domains {
            let train = manifest.open_shard(&d.train, d.train_tokens)?;
            let val = manifest.open_shard(&d.val, d.val_tokens)?;
            datasets.push((train, val));
        }
        manifest.datasets = datasets;
        Ok(manifest)
    }

    /// A manifest to be saved by `shoal data tokenize` (no shard is opened).
    pub(crate) fn new(
        dir: &Path,
        tokenizer: String,
        vocab_size: u32,
        val_fraction: f64,
        seed: u64,
        domains: Vec<ManifestDomain>,
    ) -> Manifest {
        Manifest {
            path: dir.join(MANIFEST_FILE),
            file: ManifestFile {
                format: MANIFEST_FORMAT.to_string(),
                tokenizer,
                vocab_size,
                val_fraction,
                seed,
                domains,
            },
            datasets: Vec::new(),
        }
    }

    /// Writes the manifest to its path, atomically.
    pub(crate) fn save(&self) -> Result<(), DataError> {
        let mut json =
            serde_json::to_string_pretty(&self.file).map_err(|e| DataError::Manifest {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        json.push('\n');
        crate::tokenize::write_atomically(&self.path, json.as_bytes())
    }

    /// The manifest file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the manifest's paths are relative to.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// `"bytes"` or the tokenizer's file name (relative to [`Manifest::dir`]).
    pub fn tokenizer_name(&self) -> &str {
        &self.file.tokenizer
    }

    /// Vocabulary size of the tokenizer and of every shard.
    pub fn vocab_size(&self) -> u32 {
        self.file.vocab_size
    }

    /// The share of each domain's documents held out for validation.
    pub fn val_fraction(&self) -> f64 {
        self.file.val_fraction
    }

    /// The seed of the validation split.
    pub fn seed(&self) -> u64 {
        self.file.seed
    }

    /// The domains, in order.
    pub fn domains(&self) -> &[ManifestDomain] {
        &self.file.domains
    }

    /// Loads the tokenizer the shards were made with and checks its vocabulary size.
    pub fn tokenizer(&self) -> Result<Tokenizer, DataError> {
        if self.file.tokenizer == BYTES_TOKENIZER {
            return Ok(Tokenizer::bytes());
        }
        let path = self.existing(&self.file.tokenizer)?;
        let tokenizer = Tokenizer::from_file(&path)?;
        if tokenizer.vocab_size() != self.file.vocab_size as usize {
            return Err(self.mismatch(
                path,
                format!(
                    "vocabulary size {}, the manifest says {}",
                    tokenizer.vocab_size(),
                    self.file.vocab_size
                ),
            ));
        }
        Ok(tokenizer)
    }

    /// The domains as a mixture over the memory-mapped shards, every weight 1 and no entropy
    /// floor (weights are set by whoever samples it). Nothing is copied.
    pub fn mixture(&self) -> Result<Mixture, DataError> {
        if self.datasets.len() != self.file.domains.len() {
            return Err(DataError::Manifest {
                path: self.path.clone(),
                reason: "the shards were not opened (not a loaded manifest)".to_string(),
            });
        }
        let domains = self
            .file
            .domains
            .iter()
            .zip(&self.datasets)
            .map(|(d, (train, val))| Domain {
                name: d.name.clone(),
                train: train.clone(),
                val: val.clone(),
                weight: 1.0,
                entropy_floor: None,
            })
            .collect();
        Ok(Mixture { domains })
    }

    /// Each domain's share of all training tokens (the natural proportions), in order. When
    /// there is no training token at all, every domain has the same share.
    pub fn natural_weights(&self) -> Vec<(String, f64)> {
        let total: u64 = self.file.domains.iter().map(|d| d.train_tokens).sum();
        let n = self.file.domains.len() as f64;
        self.file
            .domains
            .iter()
            .map(|d| {
                let share = if total > 0 {
                    d.train_tokens as f64 / total as f64
                } else {
                    1.0 / n
                };
                (d.name.clone(), share)
            })
            .collect()
    }

    /// `dir/name`, or an error naming it when it does not exist.
    fn existing(&self, name: &str) -> Result<PathBuf, DataError> {
        let path = self.dir().join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(self.mismatch(path, "does not exist".to_string()))
        }
    }

    /// Opens a shard and checks its vocabulary size and token count against the manifest.
    fn open_shard(&self, name: &str, tokens: u64) -> Result<TokenDataset, DataError> {
        let path = self.existing(name)?;
        let shard = TokenShard::open(&path)?;
        if shard.vocab_size() != self.file.vocab_size {
            return Err(self.mismatch(
                path,
                format!(
                    "vocabulary size {}, the manifest says {}",
                    shard.vocab_size(),
                    self.file.vocab_size
                ),
            ));
        }
        if shard.len() as u64 != tokens {
            return Err(self.mismatch(
                path,
                format!("holds {} tokens, the manifest says {tokens}", shard.len()),
            ));
        }
        Ok(TokenDataset::from_shard(shard))
    }

    /// A file that does not match the manifest.
    fn mismatch(&self, path: PathBuf, reason: String) -> DataError {
        DataError::ManifestFile {
            manifest: self.path.clone(),
            path,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::write_shard;

    /// Writes a valid byte-level manifest with domains `a` and `b` into `dir`.
    fn write_valid(dir: &Path) -> serde_json::Value {
        write_shard(&dir.join("a.train.tok"), &[1, 2, 3, 10, 10], 256).expect("shard");
        write_shard(&dir.join("a.val.tok"), &[4, 10, 10], 256).expect("shard");
        write_shard(&dir.join("b.train.tok"), &[5, 6, 7, 8, 9, 10, 10], 256).expect("shard");
        write_shard(&dir.join("b.val.tok"), &[], 256).expect("shard");
        let json = serde_json::json!({
            "format": "shoal-tokens-1", "tokenizer": "bytes", "vocab_size": 256,
            "val_fraction": 0.05, "seed": 7,
            "domains": [
                {"name": "a", "train": "a.train.tok", "val": "a.val.tok", "documents": 2,
                 "val_documents": 1, "train_tokens": 5, "val_tokens": 3, "bytes": 4},
                {"name": "b", "train": "b.train.tok", "val": "b.val.tok", "documents": 1,
                 "val_documents": 0, "train_tokens": 7, "val_tokens": 0, "bytes": 5}
            ]
        });
        std::fs::write(dir.join(MANIFEST_FILE), json.to_string()).expect("write");
        json
    }

    /// A change made to a valid manifest.
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

    /// Rewrites the manifest with `edit` applied and loads it.
    fn load_edited(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> DataError {
        let mut json = write_valid(dir);
        edit(&mut json);
        std::fs::write(dir.join(MANIFEST_FILE), json.to_string()).expect("write");
        Manifest::load(dir).expect_err("invalid manifest")
    }

    #[test]
    fn loads_and_builds_a_mixture() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_valid(dir.path());
        let m = Manifest::load(dir.path()).expect("load");
        let again = Manifest::load(&dir.path().join(MANIFEST_FILE)).expect("load file");
        assert_eq!(m.domains(), again.domains());
        assert_eq!(m.dir(), dir.path());
        assert_eq!((m.vocab_size(), m.seed(), m.val_fraction()), (256, 7, 0.05));
        assert_eq!(m.tokenizer_name(), "bytes");
        assert!(matches!(m.tokenizer(), Ok(Tokenizer::Bytes)));
        let mixture = m.mixture().expect("mixture");
        assert_eq!(mixture.domains.len(), 2);
        assert_eq!(mixture.domains[0].name, "a");
        assert_eq!(mixture.domains[0].train.to_vec(), vec![1, 2, 3, 10, 10]);
        assert_eq!(mixture.domains[0].val.to_vec(), vec![4, 10, 10]);
        assert!(mixture.domains[1].val.is_empty());
        assert!(
            mixture
                .domains
                .iter()
                .all(|d| d.weight == 1.0 && d.entropy_floor.is_none())
        );
        let weights = m.natural_weights();
        assert_eq!(weights[0], ("a".to_string(), 5.0 / 12.0));
        assert_eq!(weights[1], ("b".to_string(), 7.0 / 12.0));
    }

    #[test]
    fn missing_shard_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_valid(dir.path());
        std::fs::remove_file(dir.path().join("b.val.tok")).expect("remove");
        let err = Manifest::load(dir.path()).expect_err("missing");
        assert!(
            matches!(&err, DataError::ManifestFile { path, reason, .. }
                if path.ends_with("b.val.tok") && reason == "does not exist"),
            "{err}"
        );
        assert!(
            err.to_string().contains("b.val.tok: does not exist"),
            "{err}"
        );
        let err = Manifest::load(&dir.path().join("nope")).expect_err("no manifest");
        assert!(matches!(err, DataError::Io { .. }), "{err}");
    }

    #[test]
    fn wrong_counts_and_vocab_name_the_shard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load_edited(dir.path(), |j| j["domains"][1]["train_tokens"] = 8.into());
        assert!(
            matches!(&err, DataError::ManifestFile { path, .. } if path.ends_with("b.train.tok")),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("b.train.tok: holds 7 tokens, the manifest says 8"),
            "{err}"
        );
        let err = load_edited(dir.path(), |j| j["domains"][0]["val_tokens"] = 0.into());
        assert!(
            err.to_string().contains("a.val.tok: holds 3 tokens"),
            "{err}"
        );

        // A shard of another vocabulary.
        write_valid(dir.path());
        write_shard(&dir.path().join("a.train.tok"), &[1, 2, 3, 10, 10], 300).expect("shard");
        let err = Manifest::load(dir.path()).expect_err("vocab");
        assert!(
            err.to_string()
                .contains("a.train.tok: vocabulary size 300, the manifest says 256"),
            "{err}"
        );

        // A tokenizer file named by the manifest must exist.
        let err = load_edited(dir.path(), |j| j["tokenizer"] = "tokenizer.json".into());
        assert!(
            err.to_string().contains("tokenizer.json: does not exist"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_or_empty_names_and_bad_format_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|j| j["domains"][1]["name"] = "a".into()),
                "domain \"a\" is listed twice",
            ),
            (
                Box::new(|j| j["domains"][0]["name"] = "".into()),
                "empty name",
            ),
            (
                Box::new(|j| j["format"] = "shoal-tokens-2".into()),
                "format \"shoal-tokens-2\" is not \"shoal-tokens-1\"",
            ),
            (
                Box::new(|j| j["domains"] = serde_json::json!([])),
                "no domains",
            ),
            (
                Box::new(|j| j["val_fraction"] = 1.0.into()),
                "val_fraction 1",
            ),
            (
                Box::new(|j| j["vocab_size"] = 300.into()),
                "the byte-level tokenizer has 256 tokens",
            ),
            (
                Box::new(|j| j["domains"][0]["val_documents"] = 3.into()),
                "3 validation documents of 2",
            ),
            (
                Box::new(|j| {
                    j.as_object_mut().expect("object").remove("seed");
                }),
                "missing field `seed`",
            ),
        ];
        for (edit, needle) in cases {
            let err = load_edited(dir.path(), edit);
            assert!(matches!(err, DataError::Manifest { .. }), "{err}");
            assert!(
                err.to_string().contains(needle),
                "expected {needle:?} in {err}"
            );
            assert!(err.to_string().contains(MANIFEST_FILE), "{err}");
        }
        std::fs::write(dir.path().join(MANIFEST_FILE), "not json").expect("write");
        let err = Manifest::load(dir.path()).expect_err("not json");
        assert!(matches!(err, DataError::Manifest { .. }), "{err}");
    }

    #[test]
    fn tokenizer_vocab_must_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut json = write_valid(dir.path());
        let path = crate::tokenizer::test_support::save_word_level(dir.path(), true);
        assert_eq!(path, dir.path().join("tokenizer.json"));
        json["tokenizer"] = "tokenizer.json".into();
        std::fs::write(dir.path().join(MANIFEST_FILE), json.to_string()).expect("write");
        // The shards say 256, the word-level tokenizer has 6 tokens.
        let m = Manifest::load(dir.path()).expect("load");
        let err = m.tokenizer().expect_err("vocab");
        assert!(
            err.to_string()
                .contains("tokenizer.json: vocabulary size 6, the manifest says 256"),
            "{err}"
        );
    }
}
