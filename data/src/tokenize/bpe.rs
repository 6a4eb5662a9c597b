//! Training a byte-level BPE tokenizer (GPT-2 style) with the `tokenizers` crate.
//!
//! The pre-tokenizer is GPT-2's: ByteLevel with its regex and no prefix space, so every
//! byte of the text maps to one of 256 characters and nothing is ever unknown (the 256 form
//! the initial alphabet whether the corpus has them or not). The decoder and the
//! post-processor are ByteLevel too, and `<|endoftext|>` is the one special token (id 0).
//! The result is an ordinary `tokenizer.json` that Hugging Face `tokenizers` and
//! `transformers` load as they are.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use super::corpus::for_each_document;
use super::write_atomically;
use crate::error::DataError;
use crate::tokenizer::{END_OF_TEXT, Tokenizer};

/// The special tokens of a trained tokenizer, first in its vocabulary.
pub const SPECIAL_TOKENS: &[&str] = &[END_OF_TEXT];

/// Documents in flight between the reading thread and the trainer.
const CHANNEL_DOCUMENTS: usize = 1024;

/// What to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpeConfig {
    /// Vocabulary size, special tokens included; at least [`BpeConfig::min_vocab_size`].
    /// Training stops below it when no pair is frequent enough any more.
    pub vocab_size: usize,
    /// A pair seen fewer times than this in the corpus is never merged.
    pub min_frequency: u64,
}

impl BpeConfig {
    /// The smallest vocabulary: the 256 bytes and the special tokens.
    pub fn min_vocab_size() -> usize {
        256 + SPECIAL_TOKENS.len()
    }
}

/// What a training run read and made.
#[derive(Clone, Debug, PartialEq)]
pub struct BpeReport {
    /// Documents trained on.
    pub documents: u64,
    /// Their bytes of text.
    pub bytes: u64,
    /// The trained vocabulary size, special tokens included.
    pub vocab_size: usize,
    /// Where the tokenizer was written.
    pub path: PathBuf,
    /// Wall time of the whole run, in seconds.
    pub seconds: f64,
}

/// Trains a byte-level BPE on the documents of `files` (read with [`for_each_document`], in
/// order, on a thread of its own while the trainer counts words in parallel) and writes it as
/// `tokenizer.json` at `out`, or inside `out` when that is a directory. The file is written
/// atomically and loaded back before this returns.
pub fn train_bpe(
    files: &[PathBuf],
    config: &BpeConfig,
    out: &Path,
) -> Result<BpeReport, DataError> {
    let start = Instant::now();
    let minimum = BpeConfig::min_vocab_size();
    if config.vocab_size < minimum {
        return Err(DataError::VocabTooSmall {
            vocab_size: config.vocab_size,
            minimum,
        });
    }
    if files.is_empty() {
        return Err(DataError::NoDocuments {
            what: "the tokenizer's input (no file given)".to_string(),
        });
    }
    let byte_level = ByteLevel::new(false, true, true);
    let mut trainer = BpeTrainer::builder()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .show_progress(false)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(Some(byte_level))
            .with_decoder(Some(byte_level))
            .build()
            .map_err(train_error)?;

    let (sender, receiver) = sync_channel::<String>(CHANNEL_DOCUMENTS);
    let (trained, read) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let (mut documents, mut bytes) = (0u64, 0u64);
            for path in files {
                let sent = for_each_document(path, |doc| {
                    documents += 1;
                    bytes += doc.len() as u64;
                    // The trainer hung up: it failed, and says why itself.
                    sender.send(doc).map_err(|_| DataError::TokenizerTrain {
                        reason: "the trainer stopped reading".to_string(),
                    })
                });
                sent?;
            }
            Ok::<_, DataError>((documents, bytes))
        });
        let trained = tokenizer
            .train(&mut trainer, receiver.into_iter())
            .map(|_| ())
            .map_err(train_error);
        let read = reader.join().unwrap_or_else(|_| {
            Err(DataError::TokenizerTrain {
                reason: "the document reader panicked".to_string(),
            })
        });
        (trained, read)
    });
    // A reading error explains a training failure, not the other way round.
    let (documents, bytes) = read?;
    trained?;
    if documents == 0 {
        return Err(DataError::NoDocuments {
            what: format!("the tokenizer's input ({} file(s))", files.len()),
        });
    }

    let path = if out.is_dir() {
        out.join("tokenizer.json")
    } else {
        out.to_path_buf()
    };
    let json = tokenizer.to_string(true).map_err(train_error)?;
    write_atomically(&path, json.as_bytes())?;
    let vocab_size = Tokenizer::from_file(&path)?.vocab_size();
    Ok(BpeReport {
        documents,
        bytes,
        vocab_size,
        path,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A `tokenizers` error as a training error.
fn train_error(e: tokenizers::Error) -> DataError {
    DataError::TokenizerTrain {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small bilingual corpus file with enough repetition to merge.
    fn corpus(dir: &Path) -> PathBuf {
        let path = dir.join("c.jsonl");
        let mut lines = String::new();
        for i in 0..40 {
            let doc = format!(
                "To be, or not to be, that is the question {i}. 床前明月光，疑是地上霜。举头望明月，低头思故乡。"
            );
            lines.push_str(&serde_json::json!({ "text": doc }).to_string());
            lines.push('\n');
        }
        std::fs::write(&path, lines).expect("write");
        path
    }

    #[test]
    fn trains_a_byte_level_bpe_that_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = corpus(dir.path());
        let out = dir.path().join("tok");
        std::fs::create_dir(&out).expect("mkdir");
        let config = BpeConfig {
            vocab_size: 400,
            min_frequency: 2,
        };
        let report = train_bpe(std::slice::from_ref(&input), &config, &out).expect("train");
        assert_eq!(report.path, out.join("tokenizer.json"));
        assert_eq!(report.documents, 40);
        // Training ran out of pairs seen twice before reaching 400.
        assert!(
            (300..400).contains(&report.vocab_size),
            "{}",
            report.vocab_size
        );
        let t = Tokenizer::from_file(&report.path).expect("load");
        assert_eq!(t.document_separator().expect("separator"), vec![0]);
        // Bytes never seen in training still encode (no unknown token) and round-trip.
        for text in ["to be or not", "床前明月光", "Ωmega ☃ \u{1F600}\t\n", ""] {
            let ids = t.encode(text).expect("encode");
            assert!(
                ids.iter()
                    .all(|&id| id > 0 && (id as usize) < report.vocab_size),
                "{ids:?}"
            );
            assert_eq!(t.decode(&ids).expect("decode"), text);
        }
        // Merges were learned: each word of a frequent phrase is one token.
        let phrase = " that is the question";
        assert_eq!(t.encode(phrase).expect("encode").len(), 4);

        // The same input gives the same file.
        let again = dir.path().join("again.json");
        train_bpe(&[input], &config, &again).expect("train again");
        assert_eq!(
            std::fs::read(&again).expect("read"),
            std::fs::read(&report.path).expect("read")
        );
    }

    #[test]
    fn bad_settings_and_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = corpus(dir.path());
        let out = dir.path().join("t.json");
        let small = BpeConfig {
            vocab_size: 256,
            min_frequency: 0,
        };
        let err = train_bpe(std::slice::from_ref(&input), &small, &out).expect_err("small");
        assert!(matches!(
            err,
            DataError::VocabTooSmall {
                vocab_size: 256,
                minimum: 257
            }
        ));
        let config = BpeConfig {
            vocab_size: 257,
            min_frequency: 0,
        };
        assert!(matches!(
            train_bpe(&[], &config, &out),
            Err(DataError::NoDocuments { .. })
        ));
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "\n").expect("write");
        assert!(matches!(
            train_bpe(&[empty], &config, &out),
            Err(DataError::NoDocuments { .. })
        ));
        let missing = dir.path().join("missing.jsonl");
        let err = train_bpe(&[input, missing], &config, &out).expect_err("missing");
        assert!(err.to_string().contains("missing.jsonl"), "{err}");
        assert!(!out.exists());

        // The smallest vocabulary is the bytes and the separator: no merge.
        let input = corpus(dir.path());
        let report = train_bpe(&[input], &config, &out).expect("train 257");
        assert_eq!(report.vocab_size, 257);
    }
}
