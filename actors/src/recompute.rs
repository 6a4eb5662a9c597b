//! The `RecomputeScheduler`: chooses each layer's activation recomputation
//! ([`Recompute`]: none, selective or full) so that one rank's activations fit a
//! memory budget while recomputing the least, and chooses again when the world size,
//! the micro-batch or the budget changes.
//!
//! The budget is per rank and counts activations only: what the rank's compute
//! allocates for forward and backward ([`ActivationBytes`], exact to the byte). It is
//! what is left *after* the training state, which the ZeRO stage decides and
//! [`MemoryReport::per_rank`] accounts; that state is reported next to the plan
//! ([`RecomputeChoice::state_bytes`]) but is not part of the budget. A rank's compute
//! threads split its rows over model replicas, each with activations for its slice:
//! every term of [`ActivationBytes`] is proportional to the rows, so the split does
//! not change the total and the plan depends on neither the thread count nor the
//! machine, only on the shapes. (Replicas beyond the first also hold a private
//! gradient buffer each, at ZeRO stages 0 and 1: gradients, outside the budget.)
//!
//! Not counted: the kernels' transient scratch inside a pass, chiefly the attention
//! backward's per-thread buffers, 7·T·hs floats per compute thread (hs rounded up to
//! 16), which at batch 1 and T = 24,780 on 2 threads is 87 MiB, 2% of a 4 GiB budget
//! (`shoal bench recompute --sections longest` measures it).
//!
//! Every rank of a ring runs the same plan, chosen for the busiest rank (⌈B/W⌉ rows
//! of the global micro-batch B): the slowest rank sets the pace of a synchronous
//! step, so a lighter plan on a rank with fewer rows would not make the step faster.
//!
//! Cost model, in FLOPs per token and layer (C channels, T tokens): a layer's
//! forward is 24·C² of matmuls plus the causal attention core, 2·(T + 1)·C.
//! [`Recompute::Selective`] re-runs the core; [`Recompute::Full`] re-runs the layer
//! up to its GELU, all of it but the last matmul: 16·C² + 2·(T + 1)·C. The layers
//! are alike, so a plan is how many layers run each policy: [`plan_recompute`]
//! tries every split (O(L²)) and keeps the cheapest that fits, the smaller one on a
//! tie. Full layers come first, then selective, then none (where they are does not
//! change the bytes or the work).
//!
//! [`plan_recompute`] is the pure function; [`RecomputeScheduler`] holds its inputs
//! and the current choice, re-plans on [`RecomputeChange`]s and logs each new plan.
//! A [`crate::Node`] starts one for its ranks and passes a changed plan on to them.

use std::fmt;
use std::str::FromStr;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use shoal_models::{ActivationBytes, GptConfig, Recompute, RecomputePlan};

use crate::error::{Result, TrainError};
use crate::zero::{MemoryReport, ZeroStage};

/// What a run asks for: one policy on every layer, or the plan that fits the
/// budget and recomputes least.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecomputeMode {
    /// This policy on every layer (checked against the budget, if there is one).
    Fixed(Recompute),
    /// The cheapest plan within the budget; keep everything when there is none.
    #[default]
    Auto,
}

impl FromStr for RecomputeMode {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        s.parse()
            .map(Self::Fixed)
            .map_err(|_| TrainError::InvalidConfig {
                field: "recompute",
                reason: format!("must be none, selective, full or auto, not `{s}`"),
            })
    }
}

impl fmt::Display for RecomputeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(p) => write!(f, "{p}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

/// What a run configures: the mode and the activation budget per rank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecomputeSettings {
    /// The mode.
    pub mode: RecomputeMode,
    /// Bytes of activations per rank, if bounded.
    pub budget: Option<u64>,
}

impl RecomputeSettings {
    /// The settings of `config` (`recompute` and `activation_budget` parsed).
    pub fn from_config(config: &crate::TrainConfig) -> Result<Self> {
        let budget = config
            .activation_budget
            .as_deref()
            .map(|text| {
                parse_bytes(text).map_err(|reason| TrainError::InvalidConfig {
                    field: "activation_budget",
                    reason,
                })
            })
            .transpose()?;
        Ok(Self {
            mode: config.recompute.parse()?,
            budget,
        })
    }
}

impl RecomputeSettings {
    /// The policy on every layer of a GPU model: `none` or `full` (also `auto`
    /// without a budget, which keeps everything). A budget and `selective` are
    /// CPU-only: the budget is planned with the CPU model's byte counts, and the GPU
    /// attention keeps no scores either way.
    pub fn on_gpu(&self) -> Result<Recompute> {
        let refuse = |field: &'static str, reason: &str| TrainError::InvalidConfig {
            field,
            reason: reason.into(),
        };
        if self.budget.is_some() {
            return Err(refuse(
                "activation_budget",
                "is planned for the CPU path only; with a `cuda` device leave it unset and \
                 choose recompute = \"none\" or \"full\"",
            ));
        }
        match self.mode {
            RecomputeMode::Auto | RecomputeMode::Fixed(Recompute::None) => Ok(Recompute::None),
            RecomputeMode::Fixed(Recompute::Full) => Ok(Recompute::Full),
            RecomputeMode::Fixed(Recompute::Selective) => Err(refuse(
                "recompute",
                "`selective` runs on the CPU only; with a `cuda` device use none or full",
            )),
        }
    }
}

/// What a plan is chosen for: one rank of a data-parallel ring.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanInputs {
    /// The model's shapes.
    pub model: GptConfig,
    /// The ZeRO stage (for the state beside the budget, and the placeholder row of
    /// stages 2 and 3).
    pub stage: ZeroStage,
    /// Ranks in the ring.
    pub world: usize,
    /// Sequences per micro-batch over all ranks (B).
    pub batch: usize,
    /// Tokens per sequence (T).
    pub seq_len: usize,
    /// The mode and budget.
    pub settings: RecomputeSettings,
}

impl PlanInputs {
    /// Sequences the busiest rank computes on per micro-batch: ⌈B / W⌉, and at least
    /// one at stages 2 and 3, where a rank without rows runs a placeholder row.
    pub fn rows(&self) -> usize {
        let rows = self.batch.div_ceil(self.world.max(1));
        rows.max(usize::from(self.stage.shards_gradients()))
    }
}

/// A chosen plan and what it costs one rank.
#[derive(Clone, Debug, PartialEq)]
pub struct RecomputeChoice {
    /// One policy per layer.
    pub plan: RecomputePlan,
    /// Ranks it was chosen for.
    pub world: usize,
    /// Sequences per micro-batch on the busiest rank.
    pub rows: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Bytes of activations on that rank under the plan.
    pub activation_bytes: u64,
    /// Bytes of activations with nothing recomputed.
    pub keep_all_bytes: u64,
    /// The budget, if any.
    pub budget: Option<u64>,
    /// Parameters, gradients and AdamW moments per rank at the stage (ZeRO's
    /// accounting; outside the budget).
    pub state_bytes: u64,
    /// FLOPs the recomputation adds to one micro-batch on that rank.
    pub recompute_flops: f64,
    /// FLOPs of one micro-batch's forward on that rank.
    pub forward_flops: f64,
}

impl RecomputeChoice {
    /// The recomputation as a fraction of a forward pass (a forward is about a third
    /// of a step, so full recomputation of every layer adds up to ~⅓ to the step).
    pub fn extra_forward(&self) -> f64 {
        if self.forward_flops > 0.0 {
            self.recompute_flops / self.forward_flops
        } else {
            0.0
        }
    }
}

/// `plan` per rank: the plan, its bytes against the budget and its cost.
impl fmt::Display for RecomputeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [none, selective, full] = self.plan.counts();
        write!(
            f,
            "recompute {} ({full} full, {selective} selective, {none} none): activations {} \
             per rank (keeping all: {}",
            self.plan,
            format_bytes(self.activation_bytes),
            format_bytes(self.keep_all_bytes),
        )?;
        if let Some(b) = self.budget {
            write!(f, "; budget {}", format_bytes(b))?;
        }
        write!(
            f,
            ") for {} × {} tokens on each of {} rank(s), +{:.1}% of a forward; training state {} \
             per rank",
            self.rows,
            self.seq_len,
            self.world,
            100.0 * self.extra_forward(),
            format_bytes(self.state_bytes),
        )
    }
}

/// FLOPs per token of one layer's forward: (matmuls, the causal attention core).
fn layer_flops(config: &GptConfig, t: usize) -> (f64, f64) {
    let c = config.n_embd as f64;
    (24.0 * c * c, 2.0 * (t as f64 + 1.0) * c)
}

/// FLOPs per token that recomputing one layer under `policy` costs.
fn recompute_flops(config: &GptConfig, t: usize, policy: Recompute) -> f64 {
    let c = config.n_embd as f64;
    let (_, core) = layer_flops(config, t);
    match policy {
        Recompute::None => 0.0,
        Recompute::Selective => core,
        // qkv (3C²), attproj (C²) and fc (4C²), not fcproj: 2 FLOPs per multiply-add.
        Recompute::Full => 16.0 * c * c + core,
    }
}

/// `full` layers of full, then `selective` of selective, then none, over `n_layer`.
fn ordered_plan(n_layer: usize, full: usize, selective: usize) -> RecomputePlan {
    let layer = |l: usize| match l {
        l if l < full => Recompute::Full,
        l if l < full + selective => Recompute::Selective,
        _ => Recompute::None,
    };
    RecomputePlan::from_layers((0..n_layer).map(layer).collect())
}

/// The plan for `inputs` (see the module documentation), or an error when even
/// full recomputation of every layer does not fit the budget, or a fixed policy
/// does not.
pub fn plan_recompute(inputs: &PlanInputs) -> Result<RecomputeChoice> {
    let m = &inputs.model;
    let (rows, t, n_layer) = (inputs.rows(), inputs.seq_len, m.n_layer);
    if inputs.world == 0 || rows == 0 || t == 0 {
        return Err(TrainError::InvalidConfig {
            field: "batch_size",
            reason: format!(
                "a recompute plan needs rows and tokens (world {}, batch {}, seq_len {t})",
                inputs.world, inputs.batch
            ),
        });
    }
    let bytes = |plan: &RecomputePlan| ActivationBytes::new(m, rows, t, plan).total() as u64;
    let tokens = (rows * t) as f64;
    let cost = |plan: &RecomputePlan| -> f64 {
        let per_token: f64 = plan
            .layers()
            .iter()
            .map(|&p| recompute_flops(m, t, p))
            .sum();
        per_token * tokens
    };
    let budget = inputs.settings.budget;
    let plan = match (inputs.settings.mode, budget) {
        (RecomputeMode::Auto, None) => RecomputePlan::uniform(n_layer, Recompute::None),
        (RecomputeMode::Fixed(p), None) => RecomputePlan::uniform(n_layer, p),
        (RecomputeMode::Fixed(p), Some(budget)) => {
            let plan = RecomputePlan::uniform(n_layer, p);
            let needed = bytes(&plan);
            if needed > budget {
                return Err(over_budget(inputs, &plan, needed, budget));
            }
            plan
        }
        (RecomputeMode::Auto, Some(budget)) => {
            let mut best: Option<(f64, u64, RecomputePlan)> = None;
            for full in 0..=n_layer {
                for selective in 0..=n_layer - full {
                    let plan = ordered_plan(n_layer, full, selective);
                    let b = bytes(&plan);
                    if b > budget {
                        continue;
                    }
                    let c = cost(&plan);
                    if best.as_ref().is_none_or(|(bc, bb, _)| (c, b) < (*bc, *bb)) {
                        best = Some((c, b, plan));
                    }
                }
            }
            match best {
                Some((_, _, plan)) => plan,
                None => {
                    let plan = RecomputePlan::uniform(n_layer, Recompute::Full);
                    let needed = bytes(&plan);
                    return Err(over_budget(inputs, &plan, needed, budget));
                }
            }
        }
    };
    let (matmuls, core) = layer_flops(m, t);
    let head = 2.0 * (m.n_embd * m.vocab_size) as f64;
    let psi = m.num_params();
    Ok(RecomputeChoice {
        activation_bytes: bytes(&plan),
        keep_all_bytes: bytes(&RecomputePlan::uniform(n_layer, Recompute::None)),
        recompute_flops: cost(&plan),
        forward_flops: tokens * (n_layer as f64 * (matmuls + core) + head),
        state_bytes: MemoryReport::per_rank(inputs.stage, psi, inputs.world).total() as u64,
        plan,
        world: inputs.world,
        rows,
        seq_len: t,
        budget,
    })
}

/// The single-process trainer's compute: activations for the whole micro-batch
/// laid out by the plan for one rank. When nothing fits, full recomputation (the
/// least memory; evaluation, which never runs backward, pays nothing for it) and the
/// inputs, so that a single-process training step reports the error: a data-parallel
/// run plans for its ranks' rows in their nodes instead, and uses this compute only
/// to evaluate.
pub(crate) fn trainer_compute(
    config: &crate::TrainConfig,
    model: &GptConfig,
) -> Result<(crate::Replicas, Option<PlanInputs>)> {
    let inputs = PlanInputs {
        model: model.clone(),
        stage: ZeroStage::Replicated,
        world: 1,
        batch: config.batch_size,
        seq_len: config.seq_len,
        settings: RecomputeSettings::from_config(config)?,
    };
    let (plan, unplanned) = match plan_recompute(&inputs) {
        Ok(choice) => {
            if config.ranks == 1 && (choice.plan.recomputes() || choice.budget.is_some()) {
                tracing::info!("{choice}");
            }
            (choice.plan, None)
        }
        Err(e) => {
            tracing::debug!("no plan for one rank of the whole micro-batch: {e}");
            let full = RecomputePlan::uniform(model.n_layer, Recompute::Full);
            (full, Some(inputs))
        }
    };
    let threads = config.resolved_threads();
    let (b, t) = (config.batch_size, config.seq_len);
    let compute = crate::Replicas::with_plan(model, b, t, threads, threads, &plan)?;
    Ok((compute, unplanned))
}

fn over_budget(inputs: &PlanInputs, plan: &RecomputePlan, needed: u64, budget: u64) -> TrainError {
    TrainError::ActivationBudget {
        plan: plan.to_string(),
        needed,
        budget,
        rows: inputs.rows(),
        seq_len: inputs.seq_len,
        world: inputs.world,
    }
}

/// Parses a byte count: a number with an optional unit, `B`, binary `KiB`, `MiB`,
/// `GiB`, `TiB` or decimal `KB`, `MB`, `GB`, `TB` (case-insensitive), e.g. `2GiB`,
/// `1.5 GiB`, `512MiB`, `1000000`.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 2GiB, 512MiB or 1000000"))?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    let bytes = value * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{text}` is not a positive size"));
    }
    Ok(bytes as u64)
}

/// `bytes` for a person: `1.50 GiB`, `512.0 MiB`, `900 B`.
pub fn format_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        b_ if b_ >= 1 << 30 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        b_ if b_ >= 1 << 20 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b_ if b_ >= 1 << 10 => format!("{:.1} KiB", b / 1024.0),
        _ => format!("{bytes} B"),
    }
}

/// Something that changes what the plan must fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecomputeChange {
    /// The ring has this many ranks now (an elastic event).
    World(usize),
    /// The global micro-batch is this many sequences now.
    MicroBatch(usize),
    /// The activation budget per rank is this now (`None`: unbounded).
    Budget(Option<u64>),
}

/// What the scheduler answers a change with.
#[derive(Clone, Debug, PartialEq)]
pub struct Replanned {
    /// The choice in force now.
    pub choice: RecomputeChoice,
    /// Whether its plan differs from the one before.
    pub changed: bool,
}

/// Messages of the [`RecomputeScheduler`].
pub enum RecomputeMsg {
    /// Apply a change and re-plan; an error (nothing fits) leaves the inputs and the
    /// plan as they were.
    Change(RecomputeChange, RpcReplyPort<Result<Replanned>>),
    /// The choice in force.
    Current(RpcReplyPort<RecomputeChoice>),
}

/// Holds a run's plan inputs and its current choice (see the module documentation).
pub struct RecomputeScheduler;

/// The scheduler's state.
pub struct RecomputeState {
    inputs: PlanInputs,
    choice: RecomputeChoice,
}

impl Actor for RecomputeScheduler {
    type Msg = RecomputeMsg;
    type State = RecomputeState;
    type Arguments = PlanInputs;

    async fn pre_start(
        &self,
        _: ActorRef<RecomputeMsg>,
        inputs: PlanInputs,
    ) -> std::result::Result<RecomputeState, ActorProcessingErr> {
        let choice = plan_recompute(&inputs)?;
        tracing::info!("{choice}");
        Ok(RecomputeState { inputs, choice })
    }

    async fn handle(
        &self,
        _: ActorRef<RecomputeMsg>,
        msg: RecomputeMsg,
        state: &mut RecomputeState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            RecomputeMsg::Change(change, reply) => {
                let _ = reply.send(state.apply(change));
            }
            RecomputeMsg::Current(reply) => {
                let _ = reply.send(state.choice.clone());
            }
        }
        Ok(())
    }
}

impl RecomputeState {
    fn apply(&mut self, change: RecomputeChange) -> Result<Replanned> {
        let mut inputs = self.inputs.clone();
        match change {
            RecomputeChange::World(w) => inputs.world = w,
            RecomputeChange::MicroBatch(b) => inputs.batch = b,
            RecomputeChange::Budget(b) => inputs.settings.budget = b,
        }
        let choice = plan_recompute(&inputs)?;
        let changed = choice.plan != self.choice.plan;
        if changed {
            tracing::info!("re-planned after {change:?}: {choice}");
        }
        self.inputs = inputs;
        self.choice = choice.clone();
        Ok(Replanned { choice, changed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Recompute::{Full, None as Keep, Selective};

    fn inputs(preset: &str, batch: usize, t: usize, budget: Option<u64>) -> PlanInputs {
        PlanInputs {
            model: GptConfig::preset(preset).unwrap(),
            stage: ZeroStage::Replicated,
            world: 1,
            batch,
            seq_len: t,
            settings: RecomputeSettings {
                mode: RecomputeMode::Auto,
                budget,
            },
        }
    }

    fn bytes_of(i: &PlanInputs, plan: &[Recompute]) -> u64 {
        let plan = RecomputePlan::from_layers(plan.to_vec());
        ActivationBytes::new(&i.model, i.rows(), i.seq_len, &plan).total() as u64
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5 gib").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes(" 8 KiB ").unwrap(), 8192);
        for bad in ["", "GiB", "2 parsecs", "-1GiB", "0", "1e400"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
        assert_eq!(format_bytes(512 << 20), "512.0 MiB");
        assert_eq!(format_bytes(900), "900 B");
        assert_eq!(
            "auto".parse::<RecomputeMode>().unwrap(),
            RecomputeMode::Auto
        );
        assert_eq!(
            "selective".parse::<RecomputeMode>().unwrap(),
            RecomputeMode::Fixed(Selective)
        );
        assert!("most".parse::<RecomputeMode>().is_err());
    }

    #[test]
    fn a_roomy_budget_recomputes_nothing() {
        let i = inputs("small", 4, 256, Some(1 << 40));
        let c = plan_recompute(&i).unwrap();
        assert_eq!(c.plan, RecomputePlan::uniform(6, Keep));
        assert_eq!(c.recompute_flops, 0.0);
        assert_eq!(c.activation_bytes, c.keep_all_bytes);
        // No budget: auto keeps everything, a fixed policy is taken as it is.
        let mut i = inputs("small", 4, 256, None);
        assert_eq!(
            plan_recompute(&i).unwrap().plan,
            RecomputePlan::uniform(6, Keep)
        );
        i.settings.mode = RecomputeMode::Fixed(Full);
        assert_eq!(
            plan_recompute(&i).unwrap().plan,
            RecomputePlan::uniform(6, Full)
        );
    }

    #[test]
    fn the_plan_fits_and_recomputes_least() {
        let base = inputs("small", 2, 512, None);
        let none = bytes_of(&base, &[Keep; 6]);
        let full = bytes_of(&base, &[Full; 6]);
        let mut last_cost = -1.0;
        // Budgets from everything down to just full recomputation: the plan always
        // fits, no cheaper plan fits, and the cost only grows as the budget shrinks.
        for k in 0..=24u64 {
            let budget = none - (none - full) * k / 24;
            let i = inputs("small", 2, 512, Some(budget));
            let c = plan_recompute(&i).unwrap();
            assert!(c.activation_bytes <= budget, "{c}");
            assert!(c.recompute_flops >= last_cost, "{c}");
            last_cost = c.recompute_flops;
            for f in 0..=6 {
                for s in 0..=6 - f {
                    let other = ordered_plan(6, f, s);
                    let b = ActivationBytes::new(&i.model, 2, 512, &other).total() as u64;
                    let cost: f64 = other
                        .layers()
                        .iter()
                        .map(|&p| recompute_flops(&i.model, 512, p) * 1024.0)
                        .sum();
                    assert!(b > budget || cost >= c.recompute_flops, "{other} beats {c}");
                }
            }
        }
        // Just under keeping everything: the cheapest saving. One selective layer
        // saves nothing (its attention output moves to the shared buffer), two save
        // one layer's attention output and log-sum-exp.
        let i = inputs("small", 2, 512, Some(none - 1));
        let c = plan_recompute(&i).unwrap();
        assert_eq!(c.plan.counts(), [4, 2, 0], "{c}");
    }

    #[test]
    fn too_small_a_budget_is_an_error_naming_the_need() {
        let base = inputs("small", 2, 256, None);
        let full = bytes_of(&base, &[Full; 6]);
        let i = inputs("small", 2, 256, Some(full - 1));
        let e = plan_recompute(&i).unwrap_err();
        assert!(
            matches!(e, TrainError::ActivationBudget { needed, .. } if needed == full),
            "{e}"
        );
        assert!(e.to_string().contains("full"), "{e}");
        assert!(plan_recompute(&inputs("small", 2, 256, Some(full))).is_ok());
        // A fixed policy must fit as it is.
        let mut i = inputs("small", 2, 256, Some(full));
        i.settings.mode = RecomputeMode::Fixed(Selective);
        assert!(plan_recompute(&i).is_err());
    }

    #[test]
    fn the_busiest_rank_decides_and_state_is_reported() {
        let mut i = inputs("small", 5, 128, None);
        i.world = 2;
        assert_eq!(i.rows(), 3);
        i.world = 8;
        assert_eq!(i.rows(), 1);
        i.batch = 2;
        assert_eq!(i.rows(), 1);
        i.stage = ZeroStage::GradientsSharded;
        i.batch = 1;
        assert_eq!(i.rows(), 1, "placeholder row");
        i.stage = ZeroStage::ParametersSharded;
        let c = plan_recompute(&i).unwrap();
        let psi = i.model.num_params();
        assert_eq!(c.state_bytes, 16 * psi.div_ceil(8) as u64);
    }

    #[tokio::test]
    async fn the_scheduler_replans_on_changes() {
        let base = inputs("small", 8, 256, None);
        let none_at_4 = bytes_of(
            &PlanInputs {
                batch: 4,
                ..base.clone()
            },
            &[Keep; 6],
        );
        let mut i = base;
        i.world = 2;
        i.settings.budget = Some(none_at_4);
        let (actor, handle) = Actor::spawn(None, RecomputeScheduler, i).await.unwrap();
        let ask = |change| {
            let actor = actor.clone();
            async move { ractor::call!(actor, RecomputeMsg::Change, change).unwrap() }
        };
        let current = ractor::call!(actor, RecomputeMsg::Current).unwrap();
        assert_eq!(current.rows, 4);
        assert!(!current.plan.recomputes(), "{current}");
        // A node leaves: 8 rows per rank no longer fit without recomputation.
        let r = ask(RecomputeChange::World(1)).await.unwrap();
        assert!(r.changed && r.choice.plan.recomputes(), "{}", r.choice);
        assert_eq!(r.choice.rows, 8);
        // A smaller micro-batch fits again.
        let r = ask(RecomputeChange::MicroBatch(4)).await.unwrap();
        assert!(r.changed && !r.choice.plan.recomputes(), "{}", r.choice);
        // Same plan again: not a change.
        let r = ask(RecomputeChange::Budget(Some(none_at_4 + 1)))
            .await
            .unwrap();
        assert!(!r.changed);
        // Nothing fits: an error, and the plan in force stays.
        let e = ask(RecomputeChange::Budget(Some(1000))).await.unwrap_err();
        assert!(matches!(e, TrainError::ActivationBudget { .. }), "{e}");
        let current = ractor::call!(actor, RecomputeMsg::Current).unwrap();
        assert_eq!(current.budget, Some(none_at_4 + 1));
        actor.stop(None);
        handle.await.unwrap();
    }
}
