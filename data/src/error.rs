//! The one error type of `shoal-data`.

use std::path::PathBuf;

/// Everything that can go wrong while reading, tokenizing, storing or sampling data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened, read, written, synced or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// A file is not valid UTF-8.
    #[error("{path}: line {line} is not valid UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line holding the first invalid byte.
        line: usize,
    },

    /// A line of a JSONL file is not a JSON object with a string `text` field.
    #[error("{path}: line {line}: {reason}")]
    Record {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },

    /// A tokenizer file could not be loaded.
    #[error("cannot load tokenizer {path}: {reason}")]
    TokenizerLoad {
        /// The tokenizer file.
        path: PathBuf,
        /// What the `tokenizers` crate (or the file system) said.
        reason: String,
    },

    /// A tokenizer description (as stored in a checkpoint) is not understood.
    #[error("unknown tokenizer description {description:?} (expected \"bytes\" or \"hf:<path>\")")]
    TokenizerDescription {
        /// The description that was given.
        description: String,
    },

    /// Encoding or decoding with a loaded tokenizer failed.
    #[error("tokenizer failed: {reason}")]
    Tokenizer {
        /// What the `tokenizers` crate said.
        reason: String,
    },

    /// A token id is not below the vocabulary size.
    #[error("token {token} at index {index} is out of vocabulary (size {vocab_size})")]
    TokenOutOfVocab {
        /// Position of the token in its sequence.
        index: usize,
        /// The token id.
        token: u32,
        /// The vocabulary size it was checked against.
        vocab_size: usize,
    },

    /// A token shard file is malformed (magic, version, dtype, header fields).
    #[error("{path}: not a valid token shard: {reason}")]
    Shard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A token shard file is shorter or longer than its header says.
    #[error(
        "{path}: token shard is truncated or has trailing bytes: expected {expected} bytes, found {actual}"
    )]
    ShardLength {
        /// The shard file.
        path: PathBuf,
        /// The length implied by the header (header plus count times width).
        expected: u64,
        /// The length on disk.
        actual: u64,
    },

    /// The token bytes of a shard do not match the checksum in its header.
    #[error(
        "{path}: token shard checksum mismatch: header says {expected:#010x}, data gives {actual:#010x}"
    )]
    ShardChecksum {
        /// The shard file.
        path: PathBuf,
        /// The CRC-32 stored in the header.
        expected: u32,
        /// The CRC-32 of the token bytes on disk.
        actual: u32,
    },

    /// A dataset holds too few tokens for what was asked of it.
    #[error("dataset has {len} tokens, need at least {needed}")]
    DatasetTooShort {
        /// Tokens in the dataset.
        len: usize,
        /// Tokens needed (for a window of T: T + 1).
        needed: usize,
    },

    /// A window of zero tokens was asked for.
    #[error("window length T must be at least 1")]
    EmptyWindow,

    /// An output buffer has the wrong length.
    #[error("{what} buffer holds {actual} tokens, expected {expected}")]
    BufferLength {
        /// Which buffer (`tokens` or `targets`).
        what: &'static str,
        /// The length expected (the window length T).
        expected: usize,
        /// The length given.
        actual: usize,
    },

    /// A mixture cannot be sampled or built as asked.
    #[error("invalid mixture: {reason}")]
    InvalidMixture {
        /// What is wrong.
        reason: String,
    },

    /// A synthetic domain name is not one of [`crate::SyntheticCorpus::domain_names`].
    #[error("unknown synthetic domain {name:?} (known: {known})")]
    UnknownDomain {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },

    /// A token manifest (`manifest.json`) cannot be read or contradicts itself.
    #[error("{path}: invalid token manifest: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A file named by a token manifest is missing or does not match what the manifest says.
    #[error("{manifest}: {path}: {reason}")]
    ManifestFile {
        /// The manifest naming the file.
        manifest: PathBuf,
        /// The shard or tokenizer file.
        path: PathBuf,
        /// What differs (counts, vocabulary size) or that it does not exist.
        reason: String,
    },

    /// A directory is not the output of `shoal data prepare`.
    #[error("{dir}: not a prepared corpus: {reason}")]
    NotPreparedCorpus {
        /// The directory given.
        dir: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },

    /// A domain asked for is not in a prepared corpus.
    #[error("{dir}: no domain {name:?} in this prepared corpus (it has: {known})")]
    CorpusDomain {
        /// The prepared corpus.
        dir: PathBuf,
        /// The name asked for.
        name: String,
        /// The corpus's domains, comma separated.
        known: String,
    },

    /// There is nothing to train a tokenizer on, or a domain to tokenize has no document.
    #[error("{what} holds no document")]
    NoDocuments {
        /// The inputs or the domain.
        what: String,
    },

    /// A byte-level BPE cannot have this vocabulary size.
    #[error(
        "vocabulary size {vocab_size} is too small: a byte-level BPE needs at least {minimum} (256 bytes and the special tokens)"
    )]
    VocabTooSmall {
        /// The size asked for.
        vocab_size: usize,
        /// 256 plus the number of special tokens.
        minimum: usize,
    },

    /// Training a tokenizer failed.
    #[error("tokenizer training failed: {reason}")]
    TokenizerTrain {
        /// What the `tokenizers` crate said.
        reason: String,
    },

    /// A validation fraction outside [0, 1).
    #[error("validation fraction {value} is not in [0, 1)")]
    ValFraction {
        /// The fraction given.
        value: f64,
    },
}

impl DataError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
