//! ZeRO data parallelism over the ring collectives: one rank's share of a training
//! step, for stages 0 to 3 (Rajbhandari et al. 2020).
//!
//! Every rank computes on its rows of every micro-batch (`shard_range(B, W, rank)` of
//! the B rows, so any batch works on any world size); the global batch, the data
//! order (global sample index `step·B·A + micro·B + row`) and the loss are those of
//! the single-rank trainer.
//!
//! Gradients are reduced in buckets: contiguous ranges of the flat buffer cut at the
//! model's parts (embeddings, blocks, final layer norm; [`buckets`]). Each bucket's
//! reduction starts as soon as backward has finished it, while backward goes on with
//! the layers below. Each bucket is split over the ranks with `shard_range`; a rank's
//! *pieces* (one per bucket) are what it owns at stages ≥ 1.
//! - stage 0 (DDP): buckets all-reduced on the last micro-batch; every rank updates
//!   everything;
//! - stage 1: the same reduction; AdamW moments only for the rank's pieces; each rank
//!   updates its pieces, then every bucket's parameters are all-gathered;
//! - stage 2: buckets reduce-scattered on every micro-batch, so a rank holds only its
//!   pieces' gradients (plus the buckets in flight);
//! - stage 3: parameters sharded too: each part is all-gathered just before forward
//!   or backward uses it and freed after, the next part's gather started early; each
//!   bucket is one part. No parameter all-gather after the step.
//!
//! Clipping uses the global gradient norm (one scalar all-reduce, which also carries
//! the loss). At stages 2 and 3 a rank with no rows of the batch (`B < W`) runs the
//! model on a placeholder row weighted zero, which keeps its gathers and reductions
//! in step with the others'.

use std::ops::Range;

use shoal_collectives::shard_range;
use shoal_kernels::DecaySpan;
use shoal_models::Gpt;

use crate::error::{Result, TrainError};

/// How much of the training state each rank keeps whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ZeroStage {
    /// Everything replicated; gradients all-reduced (DDP).
    Replicated,
    /// Optimizer moments sharded.
    OptimizerSharded,
    /// Optimizer moments and the reduced gradients sharded.
    GradientsSharded,
    /// Parameters, gradients and optimizer moments sharded.
    ParametersSharded,
}

impl ZeroStage {
    /// The stage with ZeRO's number.
    pub fn from_number(stage: u8) -> Result<Self> {
        match stage {
            0 => Ok(Self::Replicated),
            1 => Ok(Self::OptimizerSharded),
            2 => Ok(Self::GradientsSharded),
            3 => Ok(Self::ParametersSharded),
            other => Err(TrainError::InvalidConfig {
                field: "zero",
                reason: format!("{other} is not a ZeRO stage (0, 1, 2 or 3)"),
            }),
        }
    }

    /// Whether each rank keeps only its pieces of the gradients.
    pub fn shards_gradients(self) -> bool {
        self >= Self::GradientsSharded
    }

    /// Whether each rank keeps only its pieces of the parameters.
    pub fn shards_parameters(self) -> bool {
        self == Self::ParametersSharded
    }
}

/// Gradient buckets of `model`: its parts in backward order (last layer first)
/// merged into runs of at least `bucket_elems` elements (the last bucket may be
/// shorter). `bucket_elems` ≤ 1 gives one bucket per part, which stage 3 needs.
pub fn buckets(model: &Gpt, bucket_elems: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut open: Option<Range<usize>> = None;
    for r in model.layout.backward_ranges() {
        let merged = match open.take() {
            // Backward goes from the end of the buffer to its start.
            Some(o) => r.start..o.end,
            None => r,
        };
        if merged.len() >= bucket_elems {
            out.push(merged);
        } else {
            open = Some(merged);
        }
    }
    out.extend(open);
    out
}

/// Bytes one rank holds for each part of the training state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Parameters (kept between steps).
    pub params: usize,
    /// Gradients (kept between steps).
    pub grads: usize,
    /// AdamW moments.
    pub optimizer: usize,
    /// Communication buffers: the most held at once during the last step (gradient
    /// buckets staged or in flight, gathered parameter parts).
    pub buffers: usize,
}

/// What one rank owns of the optimizer under a ZeRO stage: the gradient buckets, its
/// piece of each, and the AdamW moments of those pieces; at stage ≥ 2 the pieces'
/// gradients and at stage 3 their parameters. What the rank holds whole is
/// [`crate::shard::Shared`] with its compute.
#[derive(Clone, Debug, PartialEq)]
pub struct ZeroShard {
    /// The stage.
    pub stage: ZeroStage,
    /// Gradient buckets, in the order they are reduced.
    pub buckets: Vec<Range<usize>>,
    /// The ranges this rank updates: one piece of every bucket (the whole bucket at
    /// stage 0).
    pub pieces: Vec<Range<usize>>,
    /// AdamW first moments of the pieces, one after the other.
    pub adam_m: Vec<f32>,
    /// AdamW second moments of the pieces.
    pub adam_v: Vec<f32>,
    /// Gradients of the pieces (stages 2 and 3), one after the other.
    pub grads: Vec<f32>,
    /// Parameters of the pieces (stage 3), one after the other.
    pub params: Vec<f32>,
    /// Elements of communication buffers held at once during the last step.
    pub peak_buffer_elems: usize,
}

impl ZeroShard {
    /// Zero moments (and gradients, and parameters) for rank `rank` of `world`.
    pub fn new(stage: ZeroStage, buckets: Vec<Range<usize>>, rank: usize, world: usize) -> Self {
        let pieces: Vec<Range<usize>> = buckets
            .iter()
            .map(|b| match stage {
                ZeroStage::Replicated => b.clone(),
                _ => {
                    let p = shard_range(b.len(), world, rank);
                    b.start + p.start..b.start + p.end
                }
            })
            .collect();
        let owned: usize = pieces.iter().map(Range::len).sum();
        let only = |yes: bool| vec![0.0; if yes { owned } else { 0 }];
        Self {
            stage,
            buckets,
            pieces,
            adam_m: vec![0.0; owned],
            adam_v: vec![0.0; owned],
            grads: only(stage.shards_gradients()),
            params: only(stage.shards_parameters()),
            peak_buffer_elems: 0,
        }
    }

    /// Copies this rank's pieces of the full-layout buffers `full` into the
    /// concatenated buffers `own`.
    fn take_pieces(&self, own: &mut [&mut Vec<f32>], full: &[&[f32]]) {
        let mut at = 0;
        for piece in &self.pieces {
            for (o, f) in own.iter_mut().zip(full) {
                o[at..at + piece.len()].copy_from_slice(&f[piece.clone()]);
            }
            at += piece.len();
        }
    }

    /// Takes this rank's pieces of full-layout moments (from a checkpoint written at
    /// any world size).
    pub fn load_moments(&mut self, full_m: &[f32], full_v: &[f32]) {
        let (mut m, mut v) = (
            std::mem::take(&mut self.adam_m),
            std::mem::take(&mut self.adam_v),
        );
        self.take_pieces(&mut [&mut m, &mut v], &[full_m, full_v]);
        (self.adam_m, self.adam_v) = (m, v);
    }

    /// At stage 3, takes this rank's pieces of the full-layout parameters.
    pub fn load_params(&mut self, full: &[f32]) {
        if self.stage.shards_parameters() {
            let mut p = std::mem::take(&mut self.params);
            self.take_pieces(&mut [&mut p], &[full]);
            self.params = p;
        }
    }

    /// A full-layout buffer of `len` elements holding the concatenated pieces `own`
    /// at their places, zeros elsewhere.
    pub fn spread(&self, own: &[f32], len: usize) -> Vec<f32> {
        let mut full = vec![0.0f32; len];
        for (piece, at) in self.pieces.iter().zip(offsets(&self.pieces)) {
            full[piece.clone()].copy_from_slice(&own[at..at + piece.len()]);
        }
        full
    }

    /// A buffer the size of bucket `index` holding this rank's piece of the stage-3
    /// parameters at its place (`offsets` from [`offsets`]), zeros elsewhere.
    pub(crate) fn piece_buffer(&self, index: usize, offsets: &[usize]) -> Vec<f32> {
        let (bucket, piece) = (&self.buckets[index], &self.pieces[index]);
        let mut buf = vec![0.0f32; bucket.len()];
        let at = piece.start - bucket.start;
        let own = &self.params[offsets[index]..offsets[index] + piece.len()];
        buf[at..at + piece.len()].copy_from_slice(own);
        buf
    }

    /// Bytes held in the shard: the moments, and the pieces' gradients and parameters
    /// where the stage shards them, and the communication buffers of the last step.
    pub fn memory(&self) -> MemoryReport {
        let f = std::mem::size_of::<f32>();
        MemoryReport {
            params: self.params.len() * f,
            grads: self.grads.len() * f,
            optimizer: (self.adam_m.len() + self.adam_v.len()) * f,
            buffers: self.peak_buffer_elems * f,
        }
    }
}

/// The pieces' offsets in a shard's concatenated buffers.
pub(crate) fn offsets(pieces: &[Range<usize>]) -> Vec<usize> {
    pieces
        .iter()
        .scan(0, |at, p| {
            let start = *at;
            *at += p.len();
            Some(start)
        })
        .collect()
}

impl MemoryReport {
    /// ZeRO's accounting for one rank of `world` with `psi` fp32 parameters at
    /// `stage` (up to the one-element differences between ranks' pieces): 16Ψ at
    /// stage 0, 8Ψ + 8Ψ/W at 1, 4Ψ + 12Ψ/W at 2, 16Ψ/W at 3; no buffers.
    pub fn per_rank(stage: ZeroStage, psi: usize, world: usize) -> Self {
        let f = std::mem::size_of::<f32>();
        let share = psi.div_ceil(world.max(1));
        let whole_or_share = |sharded: bool| if sharded { share } else { psi };
        Self {
            params: whole_or_share(stage.shards_parameters()) * f,
            grads: whole_or_share(stage.shards_gradients()) * f,
            optimizer: 2 * whole_or_share(stage != ZeroStage::Replicated) * f,
            buffers: 0,
        }
    }

    /// Total bytes of the state, buffers included.
    pub fn total(&self) -> usize {
        self.params + self.grads + self.optimizer + self.buffers
    }
}

/// What one rank's step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ZeroOutcome {
    /// Mean training loss of the global batch.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Time spent waiting for collectives during forward and backward and for the
    /// gradient reductions after them: the communication not hidden behind compute.
    pub exposed_comm_seconds: f64,
    /// Seconds from the end of the reductions to the end of the step: norm,
    /// clipping, AdamW and the parameter all-gather.
    pub optimizer_seconds: f64,
    /// Global indices of the samples this rank consumed, in order.
    pub samples: Vec<u64>,
}

/// The decay spans of `spans` that fall in `range`, relative to its start.
pub fn spans_within(spans: &[DecaySpan], range: &Range<usize>) -> Vec<DecaySpan> {
    spans
        .iter()
        .filter_map(|s| {
            let (start, end) = (s.start.max(range.start), s.end.min(range.end));
            (start < end).then(|| DecaySpan {
                start: start - range.start,
                end: end - range.start,
                decay: s.decay,
            })
        })
        .collect()
}
