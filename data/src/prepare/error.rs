//! The error type of corpus preparation.

use std::path::PathBuf;

use super::read::Problem;

/// What stops `prepare` (bad input lines do not: they are counted and reported, unless
/// `strict` is set).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// An output file could not be created, written or renamed, or an input directory
    /// listed.
    #[error("{path}: {source}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The configuration is not usable (no domains, a bad domain name, a threshold
    /// outside (0, 1], more bands than permutations, ...).
    #[error("invalid prepare configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// An input path does not exist, or a glob matched no file.
    #[error("domain {domain:?}: {pattern:?} {reason}")]
    Input {
        /// The domain the input was given for.
        domain: String,
        /// The path or glob as given.
        pattern: String,
        /// What is wrong (`matched no file`, `does not exist`, ...).
        reason: String,
    },

    /// `strict` is set and the input has a problem (the first one, in input order).
    #[error("strict mode: {problem}")]
    Strict {
        /// The first problem met.
        problem: Box<Problem>,
    },

    /// More unique documents than ids (2^32 - 1).
    #[error("more than {limit} unique documents: split the corpus")]
    TooManyDocuments {
        /// The most unique documents one run can hold.
        limit: u64,
    },

    /// The worker thread pool could not be built.
    #[error("cannot start {threads} worker threads: {reason}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// What rayon said.
        reason: String,
    },

    /// The reader thread stopped unexpectedly.
    #[error("the input reader thread panicked")]
    Reader,
}

impl PrepareError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        PrepareError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A configuration error.
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        PrepareError::Config {
            reason: reason.into(),
        }
    }
}
