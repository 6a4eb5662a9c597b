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
    /// `waiting`, `state lost`, `rewind`, `left`, `finished`.
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
