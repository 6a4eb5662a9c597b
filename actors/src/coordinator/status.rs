//! What the coordinator shows: a [`Status`] snapshot for the control plane, and
//! the membership events, also appended to the run's `elastic.jsonl`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::metrics::StepStats;

/// Events kept in the snapshot (the file keeps all).
const RECENT_EVENTS: usize = 200;

/// One node as the coordinator sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MemberStatus {
    /// Its name.
    pub name: String,
    /// Its rank in the running generation, if it is in it.
    pub rank: Option<u32>,
    /// Its collective address.
    pub addr: String,
    /// `active`, `joining` (waiting for the next generation) or `draining`.
    pub state: String,
    /// Milliseconds since it was last heard from.
    pub since_heartbeat_ms: u64,
}

impl MemberStatus {
    /// Every value of [`MemberStatus::state`].
    pub const STATES: [&'static str; 3] = ["active", "joining", "draining"];
}

/// Something that happened to the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the coordinator started.
    pub seconds: f64,
    /// Committed steps when it happened.
    pub step: u64,
    /// `join`, `drain`, `failure`, `generation`, `ready`, `checkpoint`, `retry`,
    /// `waiting`, `state lost`, `rewind`, `left`, `finished`, `recompute`.
    pub kind: String,
    /// What happened, for a person.
    pub detail: String,
}

/// A snapshot of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// The run (its directory).
    pub run: String,
    /// The running generation.
    pub generation: u64,
    /// Its world size (0 while none runs).
    pub world: u32,
    /// Committed steps.
    pub step: u64,
    /// Steps of the run.
    pub max_steps: u64,
    /// Loss of the last committed step.
    pub loss: Option<f32>,
    /// Throughput of the last committed step, coordination included.
    pub tokens_per_s: Option<f64>,
    /// The nodes, by rank, then the ones waiting.
    pub members: Vec<MemberStatus>,
    /// (step, loss) of every committed step.
    pub losses: Vec<(u64, f32)>,
    /// Recent events, oldest first.
    pub events: Vec<Event>,
    /// Whether the run is over.
    pub finished: bool,
    /// The activation recomputation the ranks of the running generation use (none
    /// when the coordinator cannot tell: the model comes from `init` weights).
    #[serde(default)]
    pub recompute: Option<RecomputeStatus>,
}

/// The recompute plan of a generation, as its world size makes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RecomputeStatus {
    /// The world size it was chosen for.
    pub world: u32,
    /// Layers as runs of one policy, e.g. `0-1 full, 2-5 none`; empty when no plan
    /// fits (see `error`).
    pub plan: String,
    /// Layers recomputed fully, selectively, not at all.
    pub full: u32,
    /// See `full`.
    pub selective: u32,
    /// See `full`.
    pub none: u32,
    /// Bytes of activations per rank under the plan.
    pub activation_bytes: u64,
    /// The activation budget per rank, if any.
    pub budget_bytes: Option<u64>,
    /// The recomputation as a fraction of a forward pass.
    pub extra_forward: f64,
    /// Why no plan fits, if none does.
    pub error: Option<String>,
}

impl RecomputeStatus {
    /// The status of planning for `world` ranks.
    pub(crate) fn of(world: usize, planned: &Result<crate::recompute::RecomputeChoice>) -> Self {
        match planned {
            Ok(c) => {
                let [none, selective, full] = c.plan.counts();
                Self {
                    world: world as u32,
                    plan: c.plan.to_string(),
                    full: full as u32,
                    selective: selective as u32,
                    none: none as u32,
                    activation_bytes: c.activation_bytes,
                    budget_bytes: c.budget,
                    extra_forward: c.extra_forward(),
                    error: None,
                }
            }
            Err(e) => Self {
                world: world as u32,
                error: Some(e.to_string()),
                ..Self::default()
            },
        }
    }
}

/// Keeps the shared [`Status`] and the events file up to date.
pub(crate) struct Recorder {
    status: Arc<Mutex<Status>>,
    started: Instant,
    file: File,
}

impl Recorder {
    /// Records into `status` and appends events to `path` (truncated for a run
    /// from step 0).
    pub(crate) fn new(status: Arc<Mutex<Status>>, path: &Path, committed: u64) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(committed > 0)
            .truncate(committed == 0)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            status,
            started: Instant::now(),
            file,
        })
    }

    fn with(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Records an event.
    pub(crate) fn event(&mut self, step: u64, kind: &str, detail: String) {
        tracing::info!(step, kind, "{detail}");
        let e = Event {
            seconds: self.started.elapsed().as_secs_f64(),
            step,
            kind: kind.into(),
            detail,
        };
        if let Ok(line) = serde_json::to_string(&e) {
            let _ = writeln!(self.file, "{line}").and_then(|()| self.file.flush());
        }
        self.with(|s| {
            s.events.push(e);
            let extra = s.events.len().saturating_sub(RECENT_EVENTS);
            s.events.drain(..extra);
        });
    }

    /// Records a committed step.
    pub(crate) fn step(&mut self, stats: &StepStats) {
        self.with(|s| {
            s.losses.retain(|&(step, _)| step < stats.step);
            s.losses.push((stats.step, stats.loss));
            s.loss = Some(stats.loss);
            s.tokens_per_s = Some(stats.tokens_per_s());
        });
    }

    /// Records the recompute plan of the running generation; returns the one before.
    pub(crate) fn recompute(&mut self, status: Option<RecomputeStatus>) -> Option<RecomputeStatus> {
        let mut before = None;
        self.with(|s| before = std::mem::replace(&mut s.recompute, status));
        before
    }

    /// Forgets the losses of steps after `step` (they are done again).
    pub(crate) fn truncate(&mut self, step: u64) {
        self.with(|s| s.losses.retain(|&(k, _)| k <= step));
    }

    /// Updates the membership part of the snapshot.
    pub(crate) fn publish(
        &mut self,
        generation: u64,
        world: usize,
        step: u64,
        finished: bool,
        members: Vec<MemberStatus>,
    ) {
        self.with(|s| {
            s.generation = generation;
            s.world = world as u32;
            s.step = step;
            s.finished = finished;
            s.members = members;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recompute::{PlanInputs, RecomputeMode, RecomputeSettings, plan_recompute};
    use crate::zero::ZeroStage;

    #[test]
    fn the_recompute_plan_shows_in_the_status() {
        let mut inputs = PlanInputs {
            model: shoal_models::GptConfig::preset("small").unwrap(),
            stage: ZeroStage::Replicated,
            world: 2,
            batch: 8,
            seq_len: 256,
            settings: RecomputeSettings {
                mode: RecomputeMode::Fixed(shoal_models::Recompute::Full),
                budget: Some(1 << 30),
            },
        };
        let s = RecomputeStatus::of(2, &plan_recompute(&inputs));
        assert_eq!((s.world, s.full, s.selective, s.none), (2, 6, 0, 0));
        assert_eq!(s.plan, "0-5 full");
        assert!(s.error.is_none() && s.activation_bytes <= 1 << 30);
        inputs.settings.budget = Some(1000);
        let s = RecomputeStatus::of(2, &plan_recompute(&inputs));
        assert!(s.plan.is_empty() && s.error.unwrap().contains("activation_budget"));
        // A snapshot from before the field existed still reads.
        let old = serde_json::to_value(Status::default()).unwrap();
        let mut old = old.as_object().unwrap().clone();
        old.remove("recompute");
        let back: Status = serde_json::from_value(old.into()).unwrap();
        assert_eq!(back.recompute, None);
    }
}
