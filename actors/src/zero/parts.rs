//! The parameter source and gradient sink of the sharded stages: parameters
//! all-gathered part by part just before use (stage 3), gradients reduce-scattered
//! bucket by bucket as backward finishes them (stages 2 and 3).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_collectives::{CollectiveError, Communicator, Pending, ReduceOp, shard_range};
use shoal_models::{Gpt, GradSink, ModelError, ParamSource, Part};

use crate::error::TrainError;

/// A collective error as the model sees it; [`lift`] turns it back.
fn lower(e: CollectiveError) -> ModelError {
    ModelError::Parts(Box::new(e))
}

/// A model error, with a collective failure inside it brought back to the surface
/// (so a lost peer stays a `TrainError::Collective`).
pub(crate) fn lift(e: ModelError) -> TrainError {
    match e {
        ModelError::Parts(inner) => match inner.downcast::<CollectiveError>() {
            Ok(c) => TrainError::Collective(*c),
            Err(other) => TrainError::Model(ModelError::Parts(other)),
        },
        other => TrainError::Model(other),
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

/// Stage 3's parameter source: each part is all-gathered from the ranks' pieces when
/// the model fetches it (or earlier, when the model names it as the next part) and
/// freed when the model releases it.
pub(crate) struct Gathered<'a> {
    model: &'a Gpt,
    comm: &'a Mutex<&'a mut Communicator>,
    /// Bucket index of each part (at stage 3 every bucket is one part).
    index: HashMap<Part, usize>,
    pieces: &'a [Range<usize>],
    offsets: &'a [usize],
    /// This rank's pieces of the parameters, concatenated.
    own: &'a [f32],
    ready: HashMap<Part, Vec<f32>>,
    inflight: HashMap<Part, Pending<Vec<f32>>>,
    /// Time spent waiting for gathers.
    pub waited: Duration,
    /// Most elements held in gathered and in-flight parts at once.
    pub peak_elems: usize,
}

impl<'a> Gathered<'a> {
    pub(crate) fn new(
        model: &'a Gpt,
        comm: &'a Mutex<&'a mut Communicator>,
        buckets: &[Range<usize>],
        pieces: &'a [Range<usize>],
        offsets: &'a [usize],
        own: &'a [f32],
    ) -> Result<Self, TrainError> {
        Ok(Self {
            model,
            comm,
            index: part_index(model, buckets, true)?,
            pieces,
            offsets,
            own,
            ready: HashMap::new(),
            inflight: HashMap::new(),
            waited: Duration::ZERO,
            peak_elems: 0,
        })
    }

    fn start(&mut self, part: Part) {
        if self.ready.contains_key(&part) || self.inflight.contains_key(&part) {
            return;
        }
        let range = self.model.part_range(part);
        let i = self.index[&part];
        let piece = &self.pieces[i];
        let mut buf = vec![0.0f32; range.len()];
        let at = piece.start - range.start;
        let own = &self.own[self.offsets[i]..self.offsets[i] + piece.len()];
        buf[at..at + piece.len()].copy_from_slice(own);
        let pending = lock(self.comm).all_gather_async(buf);
        self.inflight.insert(part, pending);
        let held: usize = self.ready.values().map(Vec::len).sum::<usize>()
            + self
                .inflight
                .keys()
                .map(|p| self.model.part_range(*p).len())
                .sum::<usize>();
        self.peak_elems = self.peak_elems.max(held);
    }
}

impl ParamSource for Gathered<'_> {
    fn fetch(&mut self, part: Part, next: Option<Part>) -> Result<(), ModelError> {
        if !self.ready.contains_key(&part) {
            self.start(part);
            let pending = self.inflight.remove(&part).expect("started above");
            let waiting = Instant::now();
            let buf = pending.wait().map_err(lower)?;
            self.waited += waiting.elapsed();
            self.ready.insert(part, buf);
        }
        if let Some(next) = next {
            self.start(next);
        }
        Ok(())
    }

    fn get(&self, part: Part) -> &[f32] {
        &self.ready[&part]
    }

    fn release(&mut self, part: Part) {
        self.ready.remove(&part);
    }
}

impl Gathered<'_> {
    /// Waits for gathers still in flight (a prefetch the model did not use), so the
    /// next op on the ring starts from a clean state.
    pub(crate) fn finish(self) -> Result<(), TrainError> {
        for (_, pending) in self.inflight {
            pending.wait()?;
        }
        Ok(())
    }
}

/// Bucket index of every part; with `exact`, each bucket must be exactly one part.
fn part_index(
    model: &Gpt,
    buckets: &[Range<usize>],
    exact: bool,
) -> Result<HashMap<Part, usize>, TrainError> {
    model
        .parts_in_backward_order()
        .into_iter()
        .map(|part| {
            let r = model.part_range(part);
            buckets
                .iter()
                .position(|b| {
                    if exact {
                        *b == r
                    } else {
                        b.start <= r.start && r.end <= b.end
                    }
                })
                .map(|i| (part, i))
                .ok_or_else(|| TrainError::InvalidConfig {
                    field: "zero",
                    reason: format!(
                        "the gradient buckets do not {} the model's part {part:?}",
                        if exact { "match" } else { "contain" }
                    ),
                })
        })
        .collect()
}

/// The gradient sink of stages 2 and 3: backward accumulates each bucket into a
/// staging buffer; once its last part is done the bucket is reduce-scattered while
/// backward goes on, and [`Scattered::finish`] adds this rank's reduced piece of
/// every bucket into its gradient shard.
pub(crate) struct Scattered<'a> {
    model: &'a Gpt,
    comm: &'a Mutex<&'a mut Communicator>,
    buckets: &'a [Range<usize>],
    index: HashMap<Part, usize>,
    staging: Vec<Option<Vec<f32>>>,
    pending: Vec<(usize, Pending<Vec<f32>>)>,
    /// Most elements held in staging and in-flight buckets at once.
    pub peak_elems: usize,
}

impl<'a> Scattered<'a> {
    pub(crate) fn new(
        model: &'a Gpt,
        comm: &'a Mutex<&'a mut Communicator>,
        buckets: &'a [Range<usize>],
    ) -> Result<Self, TrainError> {
        Ok(Self {
            model,
            comm,
            buckets,
            index: part_index(model, buckets, false)?,
            staging: vec![None; buckets.len()],
            pending: Vec::new(),
            peak_elems: 0,
        })
    }

    fn held(&self) -> usize {
        let staged: usize = self.staging.iter().flatten().map(Vec::len).sum();
        let flying: usize = self
            .pending
            .iter()
            .map(|(i, _)| self.buckets[*i].len())
            .sum();
        staged + flying
    }

    /// Waits for every reduction and adds this rank's piece of each into `grads` (the
    /// pieces' gradients, concatenated at `offsets`).
    pub(crate) fn finish(
        self,
        pieces: &[Range<usize>],
        offsets: &[usize],
        grads: &mut [f32],
    ) -> Result<(), TrainError> {
        if self.staging.iter().any(Option::is_some) {
            return Err(TrainError::InvalidConfig {
                field: "zero",
                reason: "backward left a gradient bucket unfinished".into(),
            });
        }
        for (i, pending) in self.pending {
            let reduced = pending.wait()?;
            let (bucket, piece) = (&self.buckets[i], &pieces[i]);
            let from = &reduced[piece.start - bucket.start..piece.end - bucket.start];
            let to = &mut grads[offsets[i]..offsets[i] + piece.len()];
            to.iter_mut().zip(from).for_each(|(g, r)| *g += r);
        }
        Ok(())
    }
}

impl GradSink for Scattered<'_> {
    fn grads(&mut self, part: Part) -> Result<&mut [f32], ModelError> {
        let i = self.index[&part];
        let bucket = self.buckets[i].clone();
        if self.staging[i].is_none() {
            self.staging[i] = Some(vec![0.0; bucket.len()]);
            self.peak_elems = self.peak_elems.max(self.held());
        }
        let r = self.model.part_range(part);
        let buf = self.staging[i].as_mut().expect("staged above");
        Ok(&mut buf[r.start - bucket.start..r.end - bucket.start])
    }

    fn done(&mut self, part: Part) -> Result<(), ModelError> {
        let i = self.index[&part];
        // Backward runs from the end of the layout to its start: a bucket is complete
        // when its first part is.
        if self.model.part_range(part).start == self.buckets[i].start {
            let buf = self.staging[i].take().ok_or(ModelError::NoForward)?;
            let pending = lock(self.comm).reduce_scatter_async(buf, ReduceOp::Sum);
            self.pending.push((i, pending));
        }
        Ok(())
    }
}

/// The piece of a part (or bucket) `range` that rank `rank` of `world` owns.
pub(crate) fn piece_of(range: &Range<usize>, world: usize, rank: usize) -> Range<usize> {
    let p = shard_range(range.len(), world, rank);
    range.start + p.start..range.start + p.end
}

/// The communicator shared by a rank's parameter source and gradient sink (a poisoned
/// lock only means a panic elsewhere, after which the communicator is still usable).
fn lock<'g, 'c>(
    comm: &'g Mutex<&'c mut Communicator>,
) -> std::sync::MutexGuard<'g, &'c mut Communicator> {
    comm.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
