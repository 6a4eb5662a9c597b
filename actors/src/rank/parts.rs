//! The rank's parameter source and gradient sink for the sharded stages, as clients
//! of its actors: at stage 3 each part's parameters are all-gathered (the
//! [`ParameterShard`](crate::shard::ParameterShard) serves the rank's piece, the
//! [`GradientReducer`](crate::reducer::GradientReducer) runs the gather) just before
//! the model uses them, the next part's gather started early, and freed after; at
//! stages 2 and 3 each gradient bucket is handed to the reducer the moment backward
//! finishes it.
//!
//! These run on the rank's compute thread (never on an async task), so they may wait
//! for replies with `blocking_recv`.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor::concurrency::{OneshotReceiver, oneshot};
use shoal_models::{Gpt, GradSink, ModelError, ParamSource, Part};

use crate::error::TrainError;
use crate::reducer::{Op, ReducerMsg, Reply};
use crate::shard::ShardMsg;

/// A failure as the model sees it; [`lift`] turns it back.
fn lower(e: TrainError) -> ModelError {
    ModelError::Parts(Box::new(e))
}

/// A model error, with a failure of the rank's actors inside it brought back to the
/// surface (so a lost peer stays a `TrainError::Collective`).
pub(crate) fn lift(e: TrainError) -> TrainError {
    match e {
        TrainError::Model(ModelError::Parts(inner)) => match inner.downcast::<TrainError>() {
            Ok(t) => *t,
            Err(other) => TrainError::Model(ModelError::Parts(other)),
        },
        other => other,
    }
}

fn gone(actor: &'static str) -> TrainError {
    TrainError::Actor {
        actor,
        reason: "stopped before answering".into(),
    }
}

/// Sends `msg` to `to`, mapping a stopped actor to an error.
fn send<M: ractor::Message>(
    to: &ActorRef<M>,
    msg: M,
    name: &'static str,
) -> Result<(), TrainError> {
    to.cast(msg).map_err(|_| gone(name))
}

/// Bucket index of every part; with `exact`, each bucket must be exactly one part.
pub(crate) fn part_index(
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

/// Stage 3's parameter source (see the module documentation).
pub(crate) struct Gathered<'a> {
    model: &'a Gpt,
    shard: &'a ActorRef<ShardMsg>,
    reducer: &'a ActorRef<ReducerMsg>,
    index: &'a HashMap<Part, usize>,
    ready: HashMap<Part, Vec<f32>>,
    inflight: HashMap<Part, OneshotReceiver<Reply>>,
    /// Time spent waiting for gathers.
    pub waited: Duration,
    /// Most elements held in gathered and in-flight parts at once.
    pub peak_elems: usize,
}

impl<'a> Gathered<'a> {
    pub(crate) fn new(
        model: &'a Gpt,
        shard: &'a ActorRef<ShardMsg>,
        reducer: &'a ActorRef<ReducerMsg>,
        index: &'a HashMap<Part, usize>,
    ) -> Self {
        Self {
            model,
            shard,
            reducer,
            index,
            ready: HashMap::new(),
            inflight: HashMap::new(),
            waited: Duration::ZERO,
            peak_elems: 0,
        }
    }

    fn start(&mut self, part: Part) -> Result<(), TrainError> {
        if self.ready.contains_key(&part) || self.inflight.contains_key(&part) {
            return Ok(());
        }
        let (tx, rx) = oneshot();
        let index = self.index[&part];
        send(
            self.shard,
            ShardMsg::Piece {
                index,
                reply: tx.into(),
            },
            "ParameterShard",
        )?;
        let buf = rx.blocking_recv().map_err(|_| gone("ParameterShard"))?;
        let (tx, rx) = oneshot();
        let msg = ReducerMsg::Run {
            op: Op::AllGather,
            buf,
            reply: tx.into(),
        };
        send(self.reducer, msg, "GradientReducer")?;
        self.inflight.insert(part, rx);
        let held = self.ready.values().map(Vec::len).sum::<usize>()
            + self
                .inflight
                .keys()
                .map(|p| self.model.part_range(*p).len())
                .sum::<usize>();
        self.peak_elems = self.peak_elems.max(held);
        Ok(())
    }

    fn wait(&mut self, rx: OneshotReceiver<Reply>) -> Result<Vec<f32>, TrainError> {
        let waiting = Instant::now();
        let reply = rx.blocking_recv().map_err(|_| gone("GradientReducer"))?;
        self.waited += waiting.elapsed();
        Ok(reply?)
    }

    /// Waits for gathers still in flight (a prefetch the model did not use).
    pub(crate) fn finish(mut self) -> Result<(), TrainError> {
        let left: Vec<_> = self.inflight.drain().map(|(_, rx)| rx).collect();
        for rx in left {
            self.wait(rx)?;
        }
        Ok(())
    }
}

impl ParamSource for Gathered<'_> {
    fn fetch(&mut self, part: Part, next: Option<Part>) -> Result<(), ModelError> {
        if !self.ready.contains_key(&part) {
            self.start(part).map_err(lower)?;
            let rx = self.inflight.remove(&part).expect("started above");
            let buf = self.wait(rx).map_err(lower)?;
            self.ready.insert(part, buf);
        }
        if let Some(next) = next {
            self.start(next).map_err(lower)?;
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

/// The gradient sink of stages 2 and 3: backward accumulates each bucket into a
/// staging buffer; once its last part is done the bucket goes to the reducer to be
/// reduce-scattered while backward goes on.
pub(crate) struct Scattered<'a> {
    model: &'a Gpt,
    reducer: &'a ActorRef<ReducerMsg>,
    buckets: &'a [Range<usize>],
    index: &'a HashMap<Part, usize>,
    staging: Vec<Option<Vec<f32>>>,
    /// Buckets handed to the reducer.
    pub sent: usize,
    /// Most elements staged at once.
    pub peak_elems: usize,
}

impl<'a> Scattered<'a> {
    pub(crate) fn new(
        model: &'a Gpt,
        reducer: &'a ActorRef<ReducerMsg>,
        buckets: &'a [Range<usize>],
        index: &'a HashMap<Part, usize>,
    ) -> Self {
        Self {
            model,
            reducer,
            buckets,
            index,
            staging: vec![None; buckets.len()],
            sent: 0,
            peak_elems: 0,
        }
    }
}

impl GradSink for Scattered<'_> {
    fn grads(&mut self, part: Part) -> Result<&mut [f32], ModelError> {
        let i = self.index[&part];
        let bucket = self.buckets[i].clone();
        if self.staging[i].is_none() {
            self.staging[i] = Some(vec![0.0; bucket.len()]);
            let held: usize = self.staging.iter().flatten().map(Vec::len).sum();
            self.peak_elems = self.peak_elems.max(held);
        }
        let r = self.model.part_range(part);
        let buf = self.staging[i].as_mut().expect("staged above");
        Ok(&mut buf[r.start - bucket.start..r.end - bucket.start])
    }

    fn done(&mut self, part: Part) -> Result<(), ModelError> {
        let index = self.index[&part];
        // Backward runs from the end of the layout to its start: a bucket is complete
        // when its first part is.
        if self.model.part_range(part).start == self.buckets[index].start {
            let buf = self.staging[index].take().ok_or(ModelError::NoForward)?;
            let msg = ReducerMsg::Bucket {
                index,
                buf,
                scatter: true,
            };
            send(self.reducer, msg, "GradientReducer").map_err(lower)?;
            self.sent += 1;
        }
        Ok(())
    }
}
