//! shoal-data: reading corpora, tokenizing, storing tokens in shards, and sampling training
//! windows from weighted mixtures of domains, plus a built-in synthetic corpus with known
//! entropy floors.
//!
//! Every sample is a pure function of (seed, global sample index), so any rank can compute
//! any sample without asking anyone.

pub mod dataset;
pub mod error;
pub mod files;
pub mod manifest;
pub mod mixture;
pub mod prepare;
pub mod replay;
mod rng;
pub mod shard;
pub mod synthetic;
pub mod text;
pub mod tokenize;
pub mod tokenizer;
pub mod weights;

pub use dataset::TokenDataset;
pub use error::DataError;
pub use files::mixture_from_files;
pub use manifest::{Manifest, ManifestDomain};
pub use mixture::{Domain, Mixture};
pub use prepare::{DomainInput, PrepareConfig, PrepareError, PrepareReport, prepare};
pub use replay::{Replay, sample_with_replay};
pub use shard::{TokenShard, write_shard};
pub use synthetic::{SYNTHETIC_VOCAB_SIZE, SyntheticCorpus, SyntheticStream};
pub use text::{read_documents, read_documents_streaming};
pub use tokenize::{
    BpeConfig, PreparedCorpus, TokenizeConfig, TokenizeReport, tokenize_corpus, train_bpe,
};
pub use tokenizer::Tokenizer;
pub use weights::{MixtureWeights, WeightsFile};
