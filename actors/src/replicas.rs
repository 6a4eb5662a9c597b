//! How one process spreads a step over its compute threads.
//!
//! With P threads and a micro-batch of B sequences, B divisible by P, the micro-batch is cut
//! into P equal slices and each slice runs forward and backward on its own model replica
//! (its own activations and gradient buffer) on its own single-thread pool; the replicas'
//! gradients are then summed in a fixed order. This is data parallelism over threads: every
//! kernel runs single-threaded, where it is most efficient, and the threads never wait on
//! each other inside a layer. When B is not divisible by P, one replica runs the whole
//! micro-batch with every kernel multithreaded over the P-thread pool instead.
//!
//! Either way the samples of a step are the same; results are bitwise deterministic for a
//! given thread count (the summation order depends only on P).

use rayon::prelude::*;
use shoal_models::{Activations, Gpt, GptConfig, GradSink, ParamSource, Recompute, RecomputePlan};

use crate::error::{Result, TrainError};

/// Elements per task when summing replica gradients.
const REDUCE_CHUNK: usize = 1 << 16;

/// One model replica: a slice of the micro-batch, with its own buffers.
struct Replica {
    /// The single-thread pool this replica computes on (`None`: the shared pool).
    pool: Option<rayon::ThreadPool>,
    /// Activations for this replica's slice of the micro-batch.
    acts: Activations,
    /// Gradient buffer; empty for replica 0, which accumulates into the caller's buffer.
    grads: Vec<f32>,
}

/// The compute threads of one process and the model replicas that run on them.
pub struct Replicas {
    /// The pool of all threads: optimizer, reductions, and single-replica compute.
    pool: rayon::ThreadPool,
    replicas: Vec<Replica>,
    /// Sequences per micro-batch (B).
    batch: usize,
    /// Tokens per sequence (T).
    seq_len: usize,
}

fn build_pool(threads: usize, name: &'static str) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map_err(|source| TrainError::ThreadPool { threads, source })
}

impl Replicas {
    /// Compute for micro-batches of `batch` sequences of `seq_len` tokens on `threads` threads.
    pub fn new(config: &GptConfig, batch: usize, seq_len: usize, threads: usize) -> Result<Self> {
        Self::with_replicas(config, batch, seq_len, threads, threads)
    }

    /// [`Replicas::new`] with at most `most` replicas: `1` runs one replica with every
    /// kernel multithreaded (what sharded gradients need).
    pub fn with_replicas(
        config: &GptConfig,
        batch: usize,
        seq_len: usize,
        threads: usize,
        most: usize,
    ) -> Result<Self> {
        let keep = RecomputePlan::uniform(config.n_layer, Recompute::None);
        Self::with_plan(config, batch, seq_len, threads, most, &keep)
    }

    /// [`Replicas::with_replicas`] with every replica's activations laid out by the
    /// recompute `plan` (see [`crate::recompute`]).
    pub fn with_plan(
        config: &GptConfig,
        batch: usize,
        seq_len: usize,
        threads: usize,
        most: usize,
        plan: &RecomputePlan,
    ) -> Result<Self> {
        let threads = threads.max(1);
        let pool = build_pool(threads, "shoal-compute")?;
        let replicas = if threads > 1 && most >= threads && batch.is_multiple_of(threads) {
            let slice = batch / threads;
            let n = shoal_models::ParamLayout::new(config).len();
            (0..threads)
                .map(|r| {
                    Ok(Replica {
                        pool: Some(build_pool(1, "shoal-replica")?),
                        acts: Activations::with_plan(config, slice, seq_len, plan.clone())?,
                        grads: if r == 0 { Vec::new() } else { vec![0.0; n] },
                    })
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![Replica {
                pool: None,
                acts: Activations::with_plan(config, batch, seq_len, plan.clone())?,
                grads: Vec::new(),
            }]
        };
        Ok(Self {
            pool,
            replicas,
            batch,
            seq_len,
        })
    }

    /// Bytes of the replicas' activations and private gradient buffers.
    pub fn activation_bytes(&self) -> usize {
        self.replicas
            .iter()
            .map(|r| r.acts.bytes() + 4 * r.grads.len())
            .sum()
    }

    /// Lays every replica's activations out anew for the recompute `plan`.
    pub fn set_plan(&mut self, plan: &RecomputePlan) -> Result<()> {
        for r in &mut self.replicas {
            r.acts.set_plan(plan.clone())?;
        }
        Ok(())
    }

    /// The recompute plan the activations are laid out by.
    pub fn plan(&self) -> &RecomputePlan {
        self.replicas[0].acts.plan()
    }

    /// Number of compute threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Number of model replicas (P when the batch divides evenly over the threads, else 1).
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// Sequences per micro-batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Runs `f` on the pool of all compute threads.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Runs `f(replica index, replica, grads)` on every replica at once, each on its pool;
    /// replica 0 gets `grads0`, the others their own buffers. Returns the results in order.
    fn each<R: Send>(
        &mut self,
        grads0: Option<&mut [f32]>,
        f: impl Fn(usize, &mut Activations, Option<&mut [f32]>) -> R + Sync,
    ) -> Vec<R> {
        let pool = &self.pool;
        if self.replicas.len() == 1 {
            let r = &mut self.replicas[0];
            return vec![pool.install(|| f(0, &mut r.acts, grads0))];
        }
        let f = &f;
        std::thread::scope(|s| {
            let mut grads0 = grads0;
            let handles: Vec<_> = self
                .replicas
                .iter_mut()
                .enumerate()
                .map(|(i, r)| {
                    let grads = if i == 0 {
                        grads0.take()
                    } else {
                        Some(r.grads.as_mut_slice())
                    };
                    let (acts, pool) = (&mut r.acts, r.pool.as_ref().unwrap_or(pool));
                    s.spawn(move || pool.install(|| f(i, acts, grads)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(v) => v,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }

    /// Forward and backward of one micro-batch (`tokens`/`targets` are `[B, T]`): returns
    /// its mean loss and accumulates `d(loss_scale · mean loss)/d params` — into `grads`
    /// for replica 0 and into the replicas' own buffers otherwise; [`Replicas::reduce_into`]
    /// adds those into `grads` at the end of the step.
    pub fn forward_backward(
        &mut self,
        model: &Gpt,
        params: &[f32],
        grads: &mut [f32],
        tokens: &[u32],
        targets: &[u32],
        loss_scale: f32,
    ) -> Result<f32> {
        let slice = self.slice_len();
        let scale = loss_scale / self.replicas.len() as f32;
        let losses = self.each(Some(grads), |i, acts, grads| -> Result<f32> {
            let range = i * slice..(i + 1) * slice;
            let loss = model
                .forward(params, acts, &tokens[range.clone()], Some(&targets[range]))?
                .unwrap_or(f32::NAN);
            let grads = grads.expect("every replica has a gradient buffer");
            model.backward(params, acts, grads, scale)?;
            Ok(loss)
        });
        self.mean(losses)
    }

    /// [`Replicas::forward_backward`] with a single replica, calling `done(range, grads)`
    /// as each range of the layout gets its final gradient (see
    /// [`Gpt::backward_hooked`]), so reduction can start while backward runs.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_hooked(
        &mut self,
        model: &Gpt,
        params: &[f32],
        grads: &mut [f32],
        tokens: &[u32],
        targets: &[u32],
        loss_scale: f32,
        done: &mut (dyn FnMut(std::ops::Range<usize>, &[f32]) + Send),
    ) -> Result<f32> {
        if self.replicas.len() != 1 {
            return Err(TrainError::InvalidConfig {
                field: "threads",
                reason: "gradient hooks need one model replica per rank".into(),
            });
        }
        let r = &mut self.replicas[0];
        let acts = &mut r.acts;
        self.pool.install(|| -> Result<f32> {
            let loss = model
                .forward(params, acts, tokens, Some(targets))?
                .unwrap_or(f32::NAN);
            model.backward_hooked(params, acts, grads, loss_scale, done)?;
            Ok(loss)
        })
    }

    /// Forward and backward of one micro-batch on a single replica, with parameters
    /// from `src` and gradients into `sink` part by part (see
    /// [`shoal_models::ParamSource`]): how ZeRO stages 2 and 3 run the model.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_parts(
        &mut self,
        model: &Gpt,
        src: &mut (dyn ParamSource + Send),
        sink: &mut (dyn GradSink + Send),
        tokens: &[u32],
        targets: &[u32],
        loss_scale: f32,
    ) -> Result<f32> {
        if self.replicas.len() != 1 {
            return Err(TrainError::InvalidConfig {
                field: "threads",
                reason: "sharded gradients need one model replica per rank".into(),
            });
        }
        let acts = &mut self.replicas[0].acts;
        self.pool.install(|| -> Result<f32> {
            let loss = model
                .forward_parts(src, acts, tokens, Some(targets))?
                .unwrap_or(f32::NAN);
            model.backward_parts(src, acts, sink, loss_scale)?;
            Ok(loss)
        })
    }

    /// Mean loss of one micro-batch without gradients (evaluation).
    pub fn forward(
        &mut self,
        model: &Gpt,
        params: &[f32],
        tokens: &[u32],
        targets: &[u32],
    ) -> Result<f32> {
        let slice = self.slice_len();
        let losses = self.each(None, |i, acts, _| -> Result<f32> {
            let range = i * slice..(i + 1) * slice;
            Ok(model
                .forward(params, acts, &tokens[range.clone()], Some(&targets[range]))?
                .unwrap_or(f32::NAN))
        });
        self.mean(losses)
    }

    /// Adds every other replica's gradients into `grads` (in replica order, so the sums are
    /// deterministic) and zeroes them for the next step.
    pub fn reduce_into(&mut self, grads: &mut [f32]) {
        if self.replicas.len() < 2 {
            return;
        }
        let others: Vec<&[f32]> = self.replicas[1..]
            .iter()
            .map(|r| r.grads.as_slice())
            .collect();
        self.pool.install(|| {
            grads
                .par_chunks_mut(REDUCE_CHUNK)
                .enumerate()
                .for_each(|(c, acc)| {
                    let start = c * REDUCE_CHUNK;
                    let end = start + acc.len();
                    for g in &others {
                        for (a, &x) in acc.iter_mut().zip(&g[start..end]) {
                            *a += x;
                        }
                    }
                });
        });
        let (pool, replicas) = (&self.pool, &mut self.replicas);
        pool.install(|| {
            for r in &mut replicas[1..] {
                r.grads
                    .par_chunks_mut(REDUCE_CHUNK)
                    .for_each(|c| c.fill(0.0));
            }
        });
    }

    fn slice_len(&self) -> usize {
        self.batch / self.replicas.len() * self.seq_len
    }

    /// The mean of the replicas' losses (equal slices), or the first error.
    fn mean(&self, losses: Vec<Result<f32>>) -> Result<f32> {
        let n = losses.len() as f64;
        let mut sum = 0.0f64;
        for l in losses {
            sum += f64::from(l?);
        }
        Ok((sum / n) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gradients and loss of one micro-batch on `threads` threads.
    fn grads_on(threads: usize, batch: usize) -> (usize, f32, Vec<f32>) {
        let model = Gpt::new(GptConfig::preset("tiny").unwrap()).unwrap();
        let params = model.init_params(3);
        let t = 32;
        let tokens: Vec<u32> = (0..batch * t).map(|i| (i * 7919 % 256) as u32).collect();
        let targets: Vec<u32> = (0..batch * t).map(|i| (i * 104_729 % 256) as u32).collect();
        let mut compute = Replicas::new(&model.config, batch, t, threads).unwrap();
        let mut grads = vec![0.0f32; model.num_params()];
        let loss = compute
            .forward_backward(&model, &params, &mut grads, &tokens, &targets, 1.0)
            .unwrap();
        compute.reduce_into(&mut grads);
        let eval = compute.forward(&model, &params, &tokens, &targets).unwrap();
        assert_eq!(loss, eval);
        (compute.replicas(), loss, grads)
    }

    #[test]
    fn replicas_match_the_single_thread_step() {
        let (one, loss1, g1) = grads_on(1, 4);
        let (two, loss2, g2) = grads_on(2, 4);
        assert_eq!((one, two), (1, 2));
        assert!(
            (loss1 - loss2).abs() <= 1e-6 * loss1.abs(),
            "{loss1} vs {loss2}"
        );
        let diff: f64 = g1
            .iter()
            .zip(&g2)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let norm: f64 = g1.iter().map(|a| f64::from(*a).powi(2)).sum();
        assert!(
            (diff / norm).sqrt() < 1e-5,
            "relative difference {}",
            (diff / norm).sqrt()
        );
        // Repeating the same work gives the same bits.
        assert_eq!(grads_on(2, 4).2, g2);
    }

    /// Activations are proportional to the rows, so splitting a micro-batch over
    /// replicas leaves their bytes (what a recompute plan budgets) unchanged; each extra
    /// replica adds only its private gradient buffer.
    #[test]
    fn activation_bytes_do_not_depend_on_the_split() {
        use shoal_models::ActivationBytes;
        let config = GptConfig::preset("tiny").unwrap();
        let plan = RecomputePlan::from_layers(vec![
            Recompute::Full,
            Recompute::Selective,
            Recompute::None,
            Recompute::None,
        ]);
        let psi = shoal_models::ParamLayout::new(&config).len();
        let want = ActivationBytes::new(&config, 4, 32, &plan).total();
        for threads in [1, 2] {
            let mut r = Replicas::with_plan(&config, 4, 32, threads, threads, &plan).unwrap();
            assert_eq!(r.replicas(), threads);
            let private = 4 * psi * (threads - 1);
            assert_eq!(r.activation_bytes() - private, want);
            assert_eq!(r.plan(), &plan);
            let keep = RecomputePlan::uniform(4, Recompute::None);
            r.set_plan(&keep).unwrap();
            let all = ActivationBytes::new(&config, 4, 32, &keep).total();
            assert_eq!(r.activation_bytes() - private, all);
        }
    }

    #[test]
    fn odd_batches_fall_back_to_one_multithreaded_replica() {
        let (replicas, _, g3) = grads_on(2, 3);
        assert_eq!(replicas, 1);
        assert!(g3.iter().any(|&g| g != 0.0));
    }
}
