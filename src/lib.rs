//! shoal: actor-based, elastic training for transformer language models.
//!
//! This facade re-exports the member crates, so a program that embeds shoal depends on
//! one crate:
//! - [`kernels`]: compute on flat f32 slices (matmul, attention, layernorm, AdamW, ...);
//! - [`models`]: GPT layouts, forward/backward, sampling, Hugging Face import/export;
//! - [`data`]: tokenizers, corpus files, token shards, mixtures, the synthetic corpus;
//! - [`actors`]: the training step and loop, checkpoints, schedule and metrics;
//! - [`collectives`]: ring all-reduce, reduce-scatter, all-gather and broadcast over
//!   threads (in-process) or processes and hosts (QUIC with the cluster's TLS).

#![warn(missing_docs)]

pub use shoal_actors as actors;
pub use shoal_collectives as collectives;
pub use shoal_data as data;
pub use shoal_kernels as kernels;
pub use shoal_models as models;

pub mod launch;
