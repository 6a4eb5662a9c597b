//! Committing a step: every rank's report in, the step's lines written, the
//! commit sent, and the run finished or re-formed at the boundary.

use std::time::{Duration, Instant};

use serde::Serialize;
use shoal_collectives::membership::{StepReport, ToNode};

use super::{CoordinatorState, plan};
use crate::metrics::StepStats;

/// A line of `commits.jsonl`.
#[derive(Serialize)]
struct CommitLine<'a> {
    step: u64,
    generation: u64,
    world: usize,
    samples: &'a [u64],
    /// The slowest rank's step, mirroring included.
    rank_seconds: f64,
    /// The slowest rank's mirroring.
    mirror_seconds: f64,
}

impl CoordinatorState {
    /// Takes `name`'s report of the step in flight; commits it once every rank's
    /// is in.
    pub(super) fn done(&mut self, name: &str, report: StepReport) {
        let committed = self.committed;
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let Some(rank) = r.ranks.iter().position(|n| n == name) else {
            return;
        };
        if report.generation != r.generation || report.step != committed + 1 {
            return;
        }
        r.reports[rank] = Some(report);
        if r.reports.iter().any(Option::is_none) {
            return;
        }
        let reports: Vec<StepReport> = r.reports.iter_mut().filter_map(Option::take).collect();
        let wall = r.since.elapsed().as_secs_f64();
        r.since = Instant::now();
        let (generation, world) = (r.generation, r.ranks.len());
        let ranks = r.ranks.clone();
        let step = committed + 1;
        self.committed = step;
        let mirrored = reports.iter().all(|r| r.mirrored);
        if mirrored {
            self.mirrored = step;
            self.pieces = Some(
                ranks
                    .iter()
                    .map(|n| (n.clone(), self.nodes.get(n).map_or(0, |k| k.conn)))
                    .collect(),
            );
        }
        let first = &reports[0];
        let stats = StepStats {
            step,
            loss: first.loss,
            lr: first.lr,
            grad_norm: first.grad_norm,
            tokens: self.tokens_per_step,
            seconds: wall,
        };
        let mut samples: Vec<u64> = reports.iter().flat_map(|r| r.samples.clone()).collect();
        samples.sort_unstable();
        self.log_commit(&stats, generation, world, &samples, &reports);
        let done = step >= self.max_steps;
        // Membership changes wait for a step whose pieces were mirrored.
        let reconfigure =
            !done && mirrored && (!self.joining.is_empty() || !self.draining.is_empty());
        let leaving = plan::can_leave(&ranks, &self.draining);
        let reconfigure = reconfigure && (!self.joining.is_empty() || !leaving.is_empty());
        for n in &ranks {
            self.send(n, ToNode::Commit { step, reconfigure });
        }
        if done {
            self.finish();
        } else if reconfigure {
            self.form();
        } else {
            self.publish();
        }
    }

    fn log_commit(
        &mut self,
        stats: &StepStats,
        generation: u64,
        world: usize,
        samples: &[u64],
        reports: &[StepReport],
    ) {
        if let Err(e) = self.metrics.log_step(stats) {
            tracing::warn!(error = %e, "cannot write metrics");
        }
        let slowest = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
        let mirror = reports.iter().map(|r| r.mirror_seconds).fold(0.0, f64::max);
        let line = CommitLine {
            step: stats.step,
            generation,
            world,
            samples,
            rank_seconds: slowest,
            mirror_seconds: mirror,
        };
        if let Err(e) = self.commits.write_line(&line) {
            tracing::warn!(error = %e, "cannot write commits.jsonl");
        }
        metrics::histogram!("shoal_step_seconds").record(stats.seconds);
        metrics::histogram!("shoal_rank_step_seconds").record(slowest);
        metrics::histogram!("shoal_mirror_seconds").record(mirror);
        for r in reports {
            metrics::histogram!("shoal_collective_seconds").record(r.comm_seconds);
            metrics::counter!("shoal_bytes_sent_total").increment(r.bytes_sent);
        }
        metrics::counter!("shoal_steps_committed_total").increment(1);
        metrics::gauge!("shoal_loss").set(f64::from(stats.loss));
        metrics::gauge!("shoal_tokens_per_second").set(stats.tokens_per_s());
        metrics::gauge!("shoal_committed_step").set(stats.step as f64);
        self.recorder.step(stats);
        tracing::info!(
            step = stats.step,
            loss = stats.loss,
            world,
            generation,
            "committed"
        );
    }

    /// The last step is committed: every node stops once rank 0 wrote the final
    /// checkpoint.
    fn finish(&mut self) {
        self.finished = true;
        let everyone: Vec<String> = self.nodes.keys().cloned().collect();
        for n in &everyone {
            self.send(n, ToNode::Stop);
        }
        self.recorder
            .event(self.committed, "finished", "the run is over".into());
        // Wait for rank 0's final checkpoint (or the nodes to leave), at most a while.
        self.stop_by = Some(Instant::now() + Duration::from_secs(600));
        self.publish();
    }
}
