//! Tokenizers: the built-in byte-level one and any Hugging Face `tokenizer.json`.

use std::path::{Path, PathBuf};

use crate::error::DataError;

/// The token that separates documents when a Hugging Face vocabulary has it.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// What the byte-level tokenizer puts between documents.
const BYTES_SEPARATOR: &str = "\n\n";

/// Turns text into token ids and back.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// Byte-level: vocabulary of 256, the token is the byte value.
    Bytes,
    /// A Hugging Face tokenizer and the file it was loaded from (kept for [`Tokenizer::describe`]).
    Hf(Box<tokenizers::Tokenizer>, PathBuf),
}

impl Tokenizer {
    /// The byte-level tokenizer (vocabulary 256, token = byte value).
    pub fn bytes() -> Self {
        Tokenizer::Bytes
    }

    /// Loads any Hugging Face `tokenizer.json`; the error names the file.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::TokenizerLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tokenizer =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| DataError::TokenizerLoad {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Tokenizer::Hf(Box::new(tokenizer), path.to_path_buf()))
    }

    /// Rebuilds a tokenizer from what [`Tokenizer::describe`] returned.
    pub fn from_description(description: &str) -> Result<Self, DataError> {
        if description == "bytes" {
            Ok(Tokenizer::Bytes)
        } else if let Some(path) = description.strip_prefix("hf:") {
            Tokenizer::from_file(Path::new(path))
        } else {
            Err(DataError::TokenizerDescription {
                description: description.to_string(),
            })
        }
    }

    /// Number of token ids, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Hf(t, _) => t.get_vocab_size(true),
        }
    }

    /// Encodes text without adding special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf(t, _) => t
                .encode(text, false)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|e| DataError::Tokenizer {
                    reason: e.to_string(),
                }),
        }
    }

    /// Decodes token ids; for bytes, invalid UTF-8 is replaced (lossy).
    pub fn decode(&self, tokens: &[u32]) -> Result<String, DataError> {
        match self {
            Tokenizer::Bytes => {
                let mut bytes = Vec::with_capacity(tokens.len());
                for (index, &token) in tokens.iter().enumerate() {
                    let byte = u8::try_from(token).map_err(|_| DataError::TokenOutOfVocab {
                        index,
                        token,
                        vocab_size: 256,
                    })?;
                    bytes.push(byte);
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Hf(t, _) => t.decode(tokens, false).map_err(|e| DataError::Tokenizer {
                reason: e.to_string(),
            }),
        }
    }

    /// `"bytes"` or `"hf:<path>"`: stored in checkpoints, read back by [`Tokenizer::from_description`].
    pub fn describe(&self) -> String {
        match self {
            Tokenizer::Bytes => "bytes".to_string(),
            Tokenizer::Hf(_, path) => format!("hf:{}", path.display()),
        }
    }

    /// The tokens put between documents: `<|endoftext|>` when a Hugging Face vocabulary has it,
    /// otherwise the encoding of a blank line (`"\n\n"`).
    pub fn document_separator(&self) -> Result<Vec<u32>, DataError> {
        if let Tokenizer::Hf(t, _) = self
            && let Some(id) = t.token_to_id(END_OF_TEXT)
        {
            return Ok(vec![id]);
        }
        self.encode(BYTES_SEPARATOR)
    }
}

/// Helpers other modules' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::{AddedToken, DecoderWrapper};

    /// Builds a tiny word-level tokenizer with the `tokenizers` API and saves it as `tokenizer.json`.
    pub(crate) fn save_word_level(dir: &Path, with_eot: bool) -> PathBuf {
        let vocab_path = dir.join("vocab.json");
        let vocab = serde_json::json!({"[UNK]": 0, "hello": 1, "world": 2, "shoal": 3, "!": 4});
        std::fs::write(&vocab_path, vocab.to_string()).expect("write vocab");
        let model = WordLevel::from_file(&vocab_path.to_string_lossy(), "[UNK]".to_string())
            .expect("word-level model");
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));
        tokenizer.with_decoder(None::<DecoderWrapper>);
        if with_eot {
            tokenizer.add_special_tokens(&[AddedToken::from(END_OF_TEXT, true)]);
        }
        let path = dir.join("tokenizer.json");
        tokenizer.save(&path, false).expect("save tokenizer");
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_support::save_word_level;

    #[test]
    fn bytes_roundtrip_and_vocab() {
        let t = Tokenizer::bytes();
        assert_eq!(t.vocab_size(), 256);
        let ids = t.encode("héllo").expect("encode");
        assert_eq!(ids, vec![104, 195, 169, 108, 108, 111]);
        assert_eq!(t.decode(&ids).expect("decode"), "héllo");
        assert_eq!(t.describe(), "bytes");
        assert_eq!(t.document_separator().expect("sep"), vec![10, 10]);
    }

    #[test]
    fn bytes_decode_is_lossy_and_rejects_large_ids() {
        let t = Tokenizer::bytes();
        assert_eq!(t.decode(&[104, 0xff, 105]).expect("decode"), "h\u{fffd}i");
        let err = t.decode(&[1, 256]).expect_err("out of vocab");
        assert!(matches!(
            err,
            DataError::TokenOutOfVocab {
                index: 1,
                token: 256,
                ..
            }
        ));
    }

    #[test]
    fn hf_tokenizer_saved_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = save_word_level(dir.path(), true);
        let t = Tokenizer::from_file(&path).expect("load");
        assert_eq!(t.vocab_size(), 6);
        assert_eq!(
            t.encode("hello shoal world !").expect("encode"),
            vec![1, 3, 2, 4]
        );
        assert_eq!(t.encode("hello fish").expect("encode"), vec![1, 0]);
        assert_eq!(t.decode(&[1, 2]).expect("decode"), "hello world");
        assert_eq!(t.describe(), format!("hf:{}", path.display()));
        assert_eq!(t.document_separator().expect("sep"), vec![5]);
        let again = Tokenizer::from_description(&t.describe()).expect("from description");
        assert_eq!(again.vocab_size(), 6);
    }

    #[test]
    fn hf_without_end_of_text_separates_with_blank_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = save_word_level(dir.path(), false);
        let t = Tokenizer::from_file(&path).expect("load");
        assert_eq!(t.vocab_size(), 5);
        // Whitespace pre-tokenization drops the blank line entirely.
        assert_eq!(t.document_separator().expect("sep"), Vec::<u32>::new());
    }

    #[test]
    fn missing_and_bad_files_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.json");
        let err = Tokenizer::from_file(&missing).expect_err("missing");
        assert!(matches!(&err, DataError::TokenizerLoad { path, .. } if path == &missing));
        assert!(err.to_string().contains("nope.json"));

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"model\": 42}").expect("write");
        let err = Tokenizer::from_file(&bad).expect_err("bad");
        assert!(matches!(&err, DataError::TokenizerLoad { path, .. } if path == &bad));
        assert!(err.to_string().contains("bad.json"));

        let err = Tokenizer::from_description("sentencepiece:x").expect_err("unknown");
        assert!(matches!(err, DataError::TokenizerDescription { .. }));
    }
}
