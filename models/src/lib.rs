//! GPT models over flat parameter buffers: configuration, layout, forward and backward,
//! sampling, and Hugging Face GPT-2 import/export.
//!
//! The model never owns its parameters: a [`Gpt`] describes the architecture and the
//! [`ParamLayout`] of one flat f32 buffer, and `forward`/`backward` take that buffer (and a
//! gradient buffer of the same layout) as slices. ZeRO shards, gradient buckets and
//! checkpoints are then ranges of those buffers.

mod config;
mod error;
mod gpt;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod hf;
mod init;
mod layout;
mod parts;
mod precision;
mod sample;

pub use config::{GptConfig, PRESETS};
pub use error::ModelError;
pub use gpt::{ActivationBytes, Activations, Gpt, Recompute, RecomputePlan, recompute};
pub use layout::{ParamLayout, ParamTensor};
pub use parts::{GradSink, ParamSource, Part, Whole, WholeGrads};
pub use precision::{Precision, StateBytes, model_state_bytes};
pub use sample::SampleOptions;
