//! Serves the control plane for a made-up cluster whose training advances on
//! its own, to look at the dashboard and the endpoints without a coordinator.
//!
//! ```sh
//! cargo run -p shoal-control --example fake_cluster -- 127.0.0.1:8080
//! # then open http://127.0.0.1:8080/, or:
//! curl -s localhost:8080/status; curl -s localhost:8080/metrics
//! curl -s -H 'Authorization: Bearer demo-token' -d '{"drain": "node-2"}' localhost:8080/scale
//! ```
//!
//! Drained nodes turn `draining`, then leave at the next "step"; the run stops
//! at 2,000 steps.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_control::{Cluster, ClusterStatus, ControlPlane, DrainError, Event, Member, names};

/// The token `POST /scale` must carry.
const TOKEN: &str = "demo-token";

/// A cluster that commits a step every 100 ms.
struct FakeCluster {
    /// When the fake coordinator started.
    started: Instant,
    /// The snapshot, advanced by `tick`.
    status: Mutex<ClusterStatus>,
}

impl FakeCluster {
    fn new() -> Self {
        let members = (0..4)
            .map(|i| Member {
                name: format!("node-{i}"),
                rank: Some(i),
                addr: format!("10.0.0.{}:7070", 10 + i),
                state: "active".into(),
                since_heartbeat_ms: 0,
            })
            .collect();
        Self {
            started: Instant::now(),
            status: Mutex::new(ClusterStatus {
                run: "gpt2-small-demo".into(),
                generation: 1,
                world: 4,
                max_steps: 2000,
                members,
                ..ClusterStatus::default()
            }),
        }
    }

    /// Commits one step: the loss falls, heartbeats age, draining nodes leave.
    fn tick(&self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let mut s = self.status.lock().unwrap();
        if s.finished {
            return;
        }
        s.step += 1;
        let step = s.step;
        // What the real coordinator records as it commits a step.
        metrics::counter!(names::STEPS_COMMITTED_TOTAL).increment(1);
        metrics::histogram!(names::STEP_SECONDS).record(0.1);
        let noise = ((step as f32) * 12.9898).sin() * 0.05;
        let loss = 3.1 + 7.8 * (-(step as f32) / 250.0).exp() + noise;
        s.loss = Some(loss);
        s.losses.push((step, loss));
        s.tokens_per_s = Some(f64::from(s.world) * 14_800.0 + f64::from(noise) * 20_000.0);
        for (i, m) in s.members.iter_mut().enumerate() {
            m.since_heartbeat_ms = 50 + (step * 37 + i as u64 * 101) % 400;
        }
        let leaving: Vec<String> = s
            .members
            .iter()
            .filter(|m| m.state == "draining")
            .map(|m| m.name.clone())
            .collect();
        if !leaving.is_empty() {
            s.members.retain(|m| m.state != "draining");
            for (rank, m) in s.members.iter_mut().enumerate() {
                m.rank = Some(rank as u32);
            }
            s.world = s.members.len() as u32;
            s.generation += 1;
            let detail = format!("generation {}: {} ranks", s.generation, s.world);
            s.events.push(Event {
                seconds,
                step,
                kind: "drain".into(),
                detail: format!("{} left", leaving.join(", ")),
            });
            s.events.push(Event {
                seconds,
                step,
                kind: "generation".into(),
                detail,
            });
        }
        if step.is_multiple_of(250) {
            s.events.push(Event {
                seconds,
                step,
                kind: "checkpoint".into(),
                detail: format!("checkpoint at step {step}"),
            });
        }
        s.finished = step >= s.max_steps;
    }
}

impl Cluster for FakeCluster {
    fn status(&self) -> ClusterStatus {
        self.status.lock().unwrap().clone()
    }

    fn drain(&self, node: &str) -> Result<String, DrainError> {
        let mut s = self.status.lock().unwrap();
        let active = s.members.iter().filter(|m| m.state == "active").count();
        let member = s
            .members
            .iter_mut()
            .find(|m| m.name == node)
            .ok_or_else(|| DrainError::Unknown(node.to_owned()))?;
        if member.state != "active" {
            return Err(DrainError::Refused(format!("{node} is {}", member.state)));
        }
        if active == 1 {
            return Err(DrainError::Refused(format!(
                "{node} is the last active node"
            )));
        }
        member.state = "draining".into();
        Ok(format!("{node} leaves at the next step boundary"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let cluster = Arc::new(FakeCluster::new());
    cluster.status.lock().unwrap().events.push(Event {
        seconds: 0.0,
        step: 0,
        kind: "join".into(),
        detail: "node-0, node-1, node-2, node-3 joined".into(),
    });
    let plane = ControlPlane::start(addr, TOKEN.into(), Arc::clone(&cluster) as Arc<dyn Cluster>)?;
    println!(
        "dashboard at http://{}/ (token {TOKEN}); Ctrl-C to stop",
        plane.local_addr()
    );
    loop {
        std::thread::sleep(Duration::from_millis(100));
        cluster.tick();
    }
}
