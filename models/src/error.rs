//! Errors of the models crate.

use std::path::PathBuf;

/// Everything that can go wrong when building, running, importing or exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is invalid (for example `n_embd % n_head != 0`).
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// An unknown preset name was asked for.
    #[error("unknown model preset `{name}` (known: {known})")]
    UnknownPreset {
        /// The name that was asked for.
        name: String,
        /// The presets that exist.
        known: String,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {token} at position {index} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange {
        /// Position of the token in the flattened [B, T] input.
        index: usize,
        /// The offending token id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// An input or buffer does not have the length the shapes require.
    #[error("shape mismatch for {what}: expected {expected} elements, got {got}")]
    Shape {
        /// Which buffer.
        what: &'static str,
        /// Elements the shapes require.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// The sequence is longer than the model's position table.
    #[error("sequence length {t} exceeds the model's n_positions {n_positions}")]
    SequenceTooLong {
        /// Requested sequence length.
        t: usize,
        /// The model's maximum.
        n_positions: usize,
    },
    /// A parameter source or gradient sink failed (for example a collective of a
    /// ZeRO stage-3 rank).
    #[error("parameter source or gradient sink failed: {0}")]
    Parts(Box<dyn std::error::Error + Send + Sync>),
    /// `backward` was called without a forward pass with targets before it.
    #[error("backward needs a forward pass with targets first")]
    NoForward,
    /// Sampling options are invalid.
    #[error("invalid sampling options: {0}")]
    InvalidSampling(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A checkpoint file is malformed (truncated, wrong dtype, missing tensor, ...).
    #[error("{path}: {reason}")]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}
