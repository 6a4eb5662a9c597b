//! Building a mixture from files on disk: text (`.txt`, `.jsonl`) tokenized on the fly, or
//! token shards (`.tok`) read through a memory map.

use std::path::{Path, PathBuf};

use crate::dataset::TokenDataset;
use crate::error::DataError;
use crate::mixture::{Domain, Mixture};
use crate::shard::TokenShard;
use crate::text::read_documents_streaming;
use crate::tokenizer::Tokenizer;

/// Whether a path names a token shard (extension `tok`).
fn is_shard(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "tok")
}

/// Builds a mixture with one domain per (name, files) entry, equal weights, each domain split
/// into train/val by `val_fraction` (validation last). Text files are read with
/// [`read_documents_streaming`] and tokenized, each document followed by
/// [`Tokenizer::document_separator`]; `.tok` shards are taken as they are (a domain made of a
/// single shard stays memory-mapped) after checking their vocabulary fits the tokenizer's.
/// The files of a domain are concatenated in the order given.
pub fn mixture_from_files(
    domains: &[(String, Vec<PathBuf>)],
    tokenizer: &Tokenizer,
    val_fraction: f64,
) -> Result<Mixture, DataError> {
    if domains.is_empty() {
        return Err(DataError::InvalidMixture {
            reason: "no domains given".to_string(),
        });
    }
    let separator = tokenizer.document_separator()?;
    let domains = domains
        .iter()
        .map(|(name, files)| {
            let dataset = domain_dataset(name, files, tokenizer, &separator)?;
            let (train, val) = dataset.split(val_fraction);
            Ok(Domain {
                name: name.clone(),
                train,
                val,
                weight: 1.0,
                entropy_floor: None,
            })
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    Ok(Mixture { domains })
}

/// All tokens of one domain's files.
fn domain_dataset(
    name: &str,
    files: &[PathBuf],
    tokenizer: &Tokenizer,
    separator: &[u32],
) -> Result<TokenDataset, DataError> {
    let dataset = match files {
        [] => {
            return Err(DataError::InvalidMixture {
                reason: format!("domain {name:?} has no files"),
            });
        }
        [path] if is_shard(path) => TokenDataset::from_shard(open_shard(path, tokenizer)?),
        _ => {
            let mut tokens = Vec::new();
            for path in files {
                if is_shard(path) {
                    tokens.extend(open_shard(path, tokenizer)?.to_vec());
                } else {
                    read_documents_streaming(path, |doc| {
                        tokens.extend(tokenizer.encode(&doc)?);
                        tokens.extend_from_slice(separator);
                        Ok(())
                    })?;
                }
            }
            TokenDataset::from_tokens(tokens)
        }
    };
    if dataset.is_empty() {
        return Err(DataError::InvalidMixture {
            reason: format!("domain {name:?} has no tokens"),
        });
    }
    Ok(dataset)
}

/// Opens a shard and checks that its vocabulary fits the tokenizer's (so every token does).
fn open_shard(path: &Path, tokenizer: &Tokenizer) -> Result<TokenShard, DataError> {
    let shard = TokenShard::open(path)?;
    if shard.vocab_size() as usize > tokenizer.vocab_size() {
        return Err(DataError::Shard {
            path: path.to_path_buf(),
            reason: format!(
                "vocabulary size {} exceeds the tokenizer's {}",
                shard.vocab_size(),
                tokenizer.vocab_size()
            ),
        });
    }
    Ok(shard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::write_shard;
    use crate::text::read_documents;
    use crate::tokenizer::test_support::save_word_level;

    /// The shared corpus, if this checkout has it next to the project.
    fn corpus_dir() -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus");
        if dir.is_dir() {
            Some(dir)
        } else {
            println!("skipping: {} not found", dir.display());
            None
        }
    }

    #[test]
    fn shared_corpus_with_bytes() {
        let Some(dir) = corpus_dir() else { return };
        let drama = dir.join("en_drama.jsonl");
        let classics = dir.join("zh_classics.jsonl");
        let domains = vec![
            ("drama".to_string(), vec![drama.clone()]),
            ("classics".to_string(), vec![classics.clone()]),
        ];
        let m = mixture_from_files(&domains, &Tokenizer::bytes(), 0.05).expect("mixture");
        assert_eq!(m.domains.len(), 2);
        for (domain, path) in m.domains.iter().zip([&drama, &classics]) {
            let docs = read_documents(path).expect("read");
            let expected: usize = docs.iter().map(|d| d.len() + 2).sum();
            let total = domain.train.len() + domain.val.len();
            assert_eq!(total, expected, "{}", domain.name);
            assert!(domain.val.len() * 20 >= total - 1 && domain.val.len() * 20 <= total + 20);
            domain.train.check_vocab(256).expect("bytes");
        }
        assert_eq!(read_documents(&drama).expect("read").len(), 498);
        let t = 128;
        let (mut x, mut y) = (vec![0; t], vec![0; t]);
        for i in 0..10 {
            let d = m.sample(0, i, t, &mut x, &mut y).expect("sample");
            assert!(d < 2);
        }
    }

    #[test]
    fn shard_files_match_text_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("a.txt");
        std::fs::write(&text, "hello shoal").expect("write");
        let bytes = Tokenizer::bytes();
        let from_text = mixture_from_files(&[("a".into(), vec![text.clone()])], &bytes, 0.0)
            .expect("text mixture");
        let tokens = from_text.domains[0].train.to_vec();
        assert_eq!(tokens, bytes.encode("hello shoal\n\n").expect("encode"));

        let shard = dir.path().join("a.tok");
        write_shard(&shard, &tokens, 256).expect("write shard");
        let from_shard = mixture_from_files(&[("a".into(), vec![shard.clone()])], &bytes, 0.0)
            .expect("shard mixture");
        assert_eq!(from_shard.domains[0].train.to_vec(), tokens);

        // Several files concatenate in order; shards add no separator.
        let mixed = mixture_from_files(&[("a".into(), vec![shard, text])], &bytes, 0.0)
            .expect("mixed mixture");
        assert_eq!(
            mixed.domains[0].train.to_vec(),
            [&tokens[..], &tokens[..]].concat()
        );
    }

    #[test]
    fn hf_tokenizer_separates_documents_with_end_of_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokenizer = Tokenizer::from_file(&save_word_level(dir.path(), true)).expect("load");
        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"hello world\"}\n{\"text\": \"shoal !\"}\n",
        )
        .expect("write");
        let m = mixture_from_files(&[("d".into(), vec![jsonl])], &tokenizer, 0.0).expect("mix");
        assert_eq!(m.domains[0].train.to_vec(), vec![1, 2, 5, 3, 4, 5]);

        // A byte-level shard does not fit this 6-token vocabulary.
        let shard = dir.path().join("big.tok");
        write_shard(&shard, &[1, 2, 3], 256).expect("write shard");
        let err = mixture_from_files(&[("s".into(), vec![shard.clone()])], &tokenizer, 0.0)
            .expect_err("vocab too large");
        assert!(matches!(&err, DataError::Shard { path, .. } if path == &shard));
    }

    #[test]
    fn bad_jsonl_line_names_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.txt");
        std::fs::write(&good, "fine").expect("write");
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\nnot json at all\n",
        )
        .expect("write");
        let domains = vec![("x".to_string(), vec![good, bad.clone()])];
        let err = mixture_from_files(&domains, &Tokenizer::bytes(), 0.1).expect_err("bad line");
        assert!(matches!(&err, DataError::Record { path, line: 3, .. } if path == &bad));
        let message = err.to_string();
        assert!(
            message.contains("bad.jsonl") && message.contains("line 3"),
            "{message}"
        );
    }

    #[test]
    fn empty_inputs_are_errors() {
        let bytes = Tokenizer::bytes();
        assert!(matches!(
            mixture_from_files(&[], &bytes, 0.1),
            Err(DataError::InvalidMixture { .. })
        ));
        assert!(matches!(
            mixture_from_files(&[("none".into(), vec![])], &bytes, 0.1),
            Err(DataError::InvalidMixture { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "\n\n").expect("write");
        let err =
            mixture_from_files(&[("e".into(), vec![empty])], &bytes, 0.1).expect_err("no tokens");
        assert!(err.to_string().contains("\"e\" has no tokens"));
        let missing = dir.path().join("missing.txt");
        let err =
            mixture_from_files(&[("m".into(), vec![missing])], &bytes, 0.1).expect_err("missing");
        assert!(err.to_string().contains("missing.txt"));
    }
}
