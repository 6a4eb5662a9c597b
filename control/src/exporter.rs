//! The process-wide Prometheus recorder behind `GET /metrics`, the names of the
//! metrics in it, and the gauges the control plane sets from each snapshot.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::ControlError;
use crate::status::{ClusterStatus, Member};

/// Names of the metrics a shoal cluster exports.
///
/// The gauges marked "control plane" are set from the [`ClusterStatus`] on
/// every scrape; the rest are recorded by the coordinator with the `metrics`
/// macros (`counter!`, `gauge!`, `histogram!`).
pub mod names {
    /// Gauge (control plane): the current membership generation.
    pub const GENERATION: &str = "shoal_generation";
    /// Gauge (control plane): ranks in the current generation.
    pub const WORLD_SIZE: &str = "shoal_world_size";
    /// Gauge (control plane): the last committed step.
    pub const COMMITTED_STEP: &str = "shoal_committed_step";
    /// Gauge (control plane): the loss of the last committed step, once known.
    pub const LOSS: &str = "shoal_loss";
    /// Gauge (control plane): training throughput, once measured.
    pub const TOKENS_PER_SECOND: &str = "shoal_tokens_per_second";
    /// Gauge (control plane), label `state`: members in each state.
    pub const MEMBERS: &str = "shoal_members";
    /// Histogram (coordinator): wall time of one committed step, in seconds.
    pub const STEP_SECONDS: &str = "shoal_step_seconds";
    /// Counter (coordinator): bytes sent over the collective transports.
    pub const BYTES_SENT_TOTAL: &str = "shoal_bytes_sent_total";
    /// Histogram (coordinator): wall time of one collective operation, in seconds.
    pub const COLLECTIVE_SECONDS: &str = "shoal_collective_seconds";
    /// Counter (coordinator): joins, drains and losses of members.
    pub const MEMBERSHIP_CHANGES_TOTAL: &str = "shoal_membership_changes_total";
    /// Counter (coordinator): recoveries from a failure (a new generation formed after a loss).
    pub const RECOVERIES_TOTAL: &str = "shoal_recoveries_total";
    /// Counter (coordinator): committed training steps.
    pub const STEPS_COMMITTED_TOTAL: &str = "shoal_steps_committed_total";
    /// Histogram (coordinator): the slowest rank's step, mirroring included.
    pub const RANK_STEP_SECONDS: &str = "shoal_rank_step_seconds";
    /// Histogram (coordinator): the slowest rank's mirroring of its piece.
    pub const MIRROR_SECONDS: &str = "shoal_mirror_seconds";
}

/// How often the recorder's histograms are drained into their summaries.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALL: Mutex<()> = Mutex::new(());

/// The installed Prometheus recorder (process-wide, installed once; later calls
/// return the same handle).
///
/// The first call installs it as the global `metrics` recorder, describes the
/// metrics in [`names`], and starts a background thread that runs the
/// recorder's upkeep every few seconds. It fails if another recorder was
/// installed in this process first; a later call tries again.
pub fn prometheus() -> Result<PrometheusHandle, ControlError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let _guard = INSTALL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| ControlError::Recorder(e.to_string()))?;
    describe();
    let upkeep = handle.clone();
    // If the thread cannot be spawned, scrapes still drain the histograms.
    let spawned = std::thread::Builder::new()
        .name("shoal-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no metrics upkeep thread: {e}");
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Gives every shoal metric its help text and unit (the `# HELP` lines).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(names::GENERATION, "Current membership generation");
    describe_gauge!(names::WORLD_SIZE, "Ranks in the current generation");
    describe_gauge!(names::COMMITTED_STEP, "Last committed training step");
    describe_gauge!(names::LOSS, "Loss of the last committed step");
    describe_gauge!(
        names::TOKENS_PER_SECOND,
        "Training throughput in tokens per second"
    );
    describe_gauge!(names::MEMBERS, "Cluster members in each state");
    describe_histogram!(
        names::STEP_SECONDS,
        Unit::Seconds,
        "Wall time of one committed step"
    );
    describe_counter!(
        names::BYTES_SENT_TOTAL,
        Unit::Bytes,
        "Bytes sent over the collective transports"
    );
    describe_histogram!(
        names::COLLECTIVE_SECONDS,
        Unit::Seconds,
        "Communication of one rank's step not hidden behind compute"
    );
    describe_histogram!(
        names::RANK_STEP_SECONDS,
        Unit::Seconds,
        "The slowest rank's step, mirroring included"
    );
    describe_histogram!(
        names::MIRROR_SECONDS,
        Unit::Seconds,
        "The slowest rank's mirroring of its piece on its ring neighbour"
    );
    describe_counter!(
        names::MEMBERSHIP_CHANGES_TOTAL,
        "Generations formed (joins, drains and losses of cluster members)"
    );
    describe_counter!(
        names::RECOVERIES_TOTAL,
        "Generations formed after a member failure"
    );
    describe_counter!(names::STEPS_COMMITTED_TOTAL, "Committed training steps");
}

/// Sets the control plane's gauges from `status` in the global recorder.
pub(crate) fn record_snapshot(status: &ClusterStatus) {
    metrics::gauge!(names::GENERATION).set(status.generation as f64);
    metrics::gauge!(names::WORLD_SIZE).set(f64::from(status.world));
    metrics::gauge!(names::COMMITTED_STEP).set(status.step as f64);
    if let Some(loss) = status.loss {
        metrics::gauge!(names::LOSS).set(f64::from(loss));
    }
    if let Some(tokens_per_s) = status.tokens_per_s {
        metrics::gauge!(names::TOKENS_PER_SECOND).set(tokens_per_s);
    }
    for state in Member::STATES {
        let count = status.members.iter().filter(|m| m.state == state).count();
        metrics::gauge!(names::MEMBERS, "state" => state).set(count as f64);
    }
}
