//! shoal's compute kernels: the forward and backward passes of a GPT-2 style
//! transformer, plus the optimizer and gradient-norm helpers, as free functions
//! on flat `f32` slices (llm.c style).
//!
//! Conventions shared by every kernel:
//! - arguments come in the order outputs, inputs, dimensions;
//! - forward kernels overwrite their outputs; every backward kernel
//!   **accumulates** (`+=`) into all of its gradient outputs, so residual
//!   branches and gradient accumulation need no extra buffers;
//! - kernels run on rayon's *current* pool (choose the thread count with
//!   `ThreadPool::install`) and are bitwise deterministic for the same inputs
//!   and thread count; all but the `gemm`-backed matmuls are deterministic
//!   across thread counts too;
//! - slice lengths are checked with `assert!`: callers validate user input,
//!   these are internal APIs;
//! - each module has a slow, obvious f64 `reference` submodule that the unit
//!   tests hold the fast kernels to.
//!
//! Dimension letters: B batch, T time, C channels, OC output channels,
//! NH heads, hs head size, V vocabulary, N = B*T rows.

#![warn(missing_docs)]
// Kernels take outputs, inputs and dimensions explicitly, as llm.c does.
#![allow(clippy::too_many_arguments)]

pub mod adamw;
pub mod attention;
pub mod crossentropy;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod norm;
pub mod residual;
mod simd;
#[cfg(test)]
mod testutil;

pub use adamw::{AdamW, DecaySpan, adamw_update};
pub use attention::{attention_backward, attention_forward};
pub use crossentropy::{crossentropy_backward_inplace, crossentropy_forward};
pub use embedding::{embedding_backward, embedding_forward};
pub use gelu::{gelu_backward, gelu_forward};
pub use layernorm::{layernorm_backward, layernorm_forward};
pub use matmul::{WeightLayout, matmul_backward, matmul_forward, measure_gemm_gflops};
pub use norm::{clip_coefficient, scale_inplace, sum_of_squares};
pub use residual::{add_inplace, residual_forward};
