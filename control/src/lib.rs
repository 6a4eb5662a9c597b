//! The control plane a shoal cluster coordinator serves over HTTP.
//!
//! The coordinator implements [`Cluster`] (a [`ClusterStatus`] snapshot, and
//! draining a node) and calls [`ControlPlane::start`]; the control plane runs
//! an actix-web server on its own thread with these endpoints:
//!
//! | Endpoint | What it does |
//! |---|---|
//! | `GET /` | The dashboard: one self-contained page that polls `/status` every second and shows the run, the members, the loss curve and recent events. |
//! | `GET /status` | The [`ClusterStatus`] as JSON. |
//! | `GET /metrics` | The Prometheus text format (`text/plain; version=0.0.4`). |
//! | `POST /scale` | `{"drain": "NODE"}`: drains a node at the next step boundary. Needs `Authorization: Bearer <cluster token>`. Answers 200 `{"ok": message}`, or `{"error": message}` with 400 (malformed body), 401 (token missing or wrong), 404 (no such node), 409 (the coordinator refused) or 413 (body over [`MAX_BODY_BYTES`]). |
//!
//! Only `POST /scale` changes anything, so only it needs the token; the reads
//! are open to whoever can reach the address, which is why the coordinator
//! binds to 127.0.0.1 unless told otherwise.
//!
//! # Metrics
//!
//! `/metrics` renders the process-wide recorder returned by [`prometheus`],
//! which [`ControlPlane::start`] installs as the global `metrics` recorder.
//! On every scrape the control plane sets these gauges from the snapshot
//! (so they exist before the coordinator records anything):
//!
//! - `shoal_generation`, `shoal_world_size`, `shoal_committed_step`;
//! - `shoal_loss` and `shoal_tokens_per_second`, once known;
//! - `shoal_members{state="active"|"joining"|"draining"}`.
//!
//! The coordinator records, with the `metrics` macros:
//!
//! - histogram `shoal_step_seconds`: wall time of one committed step, as the
//!   coordinator sees it (coordination included);
//! - histogram `shoal_rank_step_seconds`: the slowest rank's step, mirroring
//!   included;
//! - histogram `shoal_mirror_seconds`: the slowest rank's mirroring of its piece;
//! - histogram `shoal_collective_seconds`: per rank and step, the communication
//!   not hidden behind compute;
//! - counter `shoal_bytes_sent_total`: bytes sent by the ranks' collectives;
//! - counter `shoal_membership_changes_total`: generations formed (joins,
//!   drains, losses);
//! - counter `shoal_recoveries_total`: generations formed after a failure;
//! - counter `shoal_steps_committed_total`: committed steps.
//!
//! Histograms are exported as summaries (quantiles 0, 0.5, 0.9, 0.95, 0.99,
//! 0.999, 1, plus `_sum` and `_count`). The names are constants in [`names`].
//!
//! # The dashboard in a terminal
//!
//! ```sh
//! chromium --headless --no-sandbox --screenshot=dashboard.png --window-size=1280,900 \
//!     --virtual-time-budget=3000 http://127.0.0.1:PORT/
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod exporter;
pub mod server;
pub mod status;

pub use error::{ControlError, DrainError};
pub use exporter::{names, prometheus};
pub use server::{ControlPlane, MAX_BODY_BYTES, PROMETHEUS_CONTENT_TYPE};
pub use status::{Cluster, ClusterStatus, Event, Member};
