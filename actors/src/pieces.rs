//! A rank's piece of the training state, as it is mirrored and moved between
//! generations of an elastic run.
//!
//! Rank `r` of `W` exports the same ranges at every ZeRO stage: its
//! [`shard_range`] of every gradient bucket ([`export_ranges`]), with the
//! parameters and both AdamW moments over them. The buckets depend only on the
//! model and the stage, so anyone who knows an old generation's world size can put
//! any old rank's piece back at its place in the full layout ([`place`]), which is
//! how a new generation of any size rebuilds the state.

use std::ops::Range;

use shoal_collectives::shard_range;

use crate::error::{Result, TrainError};

/// The ranges of the layout rank `rank` of `world` exports: its `shard_range` of
/// every bucket.
pub fn export_ranges(buckets: &[Range<usize>], world: usize, rank: usize) -> Vec<Range<usize>> {
    buckets
        .iter()
        .map(|b| {
            let p = shard_range(b.len(), world, rank);
            b.start + p.start..b.start + p.end
        })
        .collect()
}

/// One rank's export: its ranges and the state over them, one range after the
/// other.
#[derive(Clone, Debug, PartialEq)]
pub struct Export {
    /// The ranges of the layout.
    pub ranges: Vec<Range<usize>>,
    /// Parameters.
    pub params: Vec<f32>,
    /// AdamW first moments.
    pub adam_m: Vec<f32>,
    /// AdamW second moments.
    pub adam_v: Vec<f32>,
}

impl Export {
    /// Parameters, then first moments, then second moments, in one buffer.
    pub fn flatten(self) -> Vec<f32> {
        let mut out = self.params;
        out.extend_from_slice(&self.adam_m);
        out.extend_from_slice(&self.adam_v);
        out
    }
}

/// What a mirroring step leaves on a rank: its own flattened export and the one of
/// the previous rank of the ring (empty on a ring of one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mirror {
    /// This rank's flattened [`Export`].
    pub own: Vec<f32>,
    /// The previous rank's.
    pub left: Vec<f32>,
}

/// The full-layout training state.
#[derive(Clone, Debug, PartialEq)]
pub struct FullState {
    /// Parameters.
    pub params: Vec<f32>,
    /// AdamW first moments.
    pub adam_m: Vec<f32>,
    /// AdamW second moments.
    pub adam_v: Vec<f32>,
}

impl FullState {
    /// Zeros for a layout of `len` elements.
    pub fn zeros(len: usize) -> Self {
        Self {
            params: vec![0.0; len],
            adam_m: vec![0.0; len],
            adam_v: vec![0.0; len],
        }
    }

    /// The three buffers one after the other (what a ring reduces in one op).
    pub fn into_flat(self) -> Vec<f32> {
        let mut out = self.params;
        out.extend_from_slice(&self.adam_m);
        out.extend_from_slice(&self.adam_v);
        out
    }

    /// The inverse of [`FullState::into_flat`].
    pub fn from_flat(mut flat: Vec<f32>) -> Result<Self> {
        if !flat.len().is_multiple_of(3) {
            return Err(TrainError::InvalidConfig {
                field: "state",
                reason: format!("{} elements are not three buffers", flat.len()),
            });
        }
        let n = flat.len() / 3;
        let adam_v = flat.split_off(2 * n);
        let adam_m = flat.split_off(n);
        Ok(Self {
            params: flat,
            adam_m,
            adam_v,
        })
    }

    /// Writes rank `rank` of `world`'s flattened export `flat` at its places.
    pub fn place(
        &mut self,
        buckets: &[Range<usize>],
        world: usize,
        rank: usize,
        flat: &[f32],
    ) -> Result<()> {
        let ranges = export_ranges(buckets, world, rank);
        let n: usize = ranges.iter().map(Range::len).sum();
        let len = self.params.len();
        if flat.len() != 3 * n || ranges.iter().any(|r| r.end > len) {
            return Err(TrainError::InvalidConfig {
                field: "state",
                reason: format!(
                    "rank {rank} of {world}'s piece holds {} elements, its ranges {}",
                    flat.len(),
                    3 * n
                ),
            });
        }
        let mut at = 0;
        for r in ranges {
            let k = r.len();
            self.params[r.clone()].copy_from_slice(&flat[at..at + k]);
            self.adam_m[r.clone()].copy_from_slice(&flat[n + at..n + at + k]);
            self.adam_v[r].copy_from_slice(&flat[2 * n + at..2 * n + at + k]);
            at += k;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every world size's pieces cover the layout exactly once, and placing every
    /// rank's export rebuilds the state.
    #[test]
    fn pieces_of_any_world_rebuild_the_state() {
        let buckets = vec![30..47, 0..30, 47..50];
        let len = 50;
        let state = FullState {
            params: (0..len).map(|i| i as f32).collect(),
            adam_m: (0..len).map(|i| -(i as f32)).collect(),
            adam_v: (0..len).map(|i| 0.5 * i as f32).collect(),
        };
        for world in 1..=7 {
            let mut seen = vec![0; len];
            let mut rebuilt = FullState::zeros(len);
            for rank in 0..world {
                let ranges = export_ranges(&buckets, world, rank);
                let mut e = Export {
                    ranges: ranges.clone(),
                    params: Vec::new(),
                    adam_m: Vec::new(),
                    adam_v: Vec::new(),
                };
                for r in &ranges {
                    seen[r.clone()].iter_mut().for_each(|s| *s += 1);
                    e.params.extend_from_slice(&state.params[r.clone()]);
                    e.adam_m.extend_from_slice(&state.adam_m[r.clone()]);
                    e.adam_v.extend_from_slice(&state.adam_v[r.clone()]);
                }
                rebuilt.place(&buckets, world, rank, &e.flatten()).unwrap();
            }
            assert!(seen.iter().all(|&s| s == 1), "world {world}: {seen:?}");
            assert_eq!(rebuilt, state);
            let flat = rebuilt.clone().into_flat();
            assert_eq!(FullState::from_flat(flat).unwrap(), state);
        }
        let mut s = FullState::zeros(len);
        assert!(s.place(&buckets, 2, 0, &[1.0; 5]).is_err());
    }
}
