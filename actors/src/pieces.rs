//! A rank's piece of the training state, as it is mirrored and moved between
//! generations of an elastic run.
//!
//! Rank `r` of `W` exports the same ranges at every ZeRO stage: its
//! [`shard_range`] of every gradient bucket ([`export_ranges`]), with the
//! parameters and both AdamW moments over them. The buckets depend only on the
//! model and the stage, so anyone who knows an old generation's world size can put
//! any old rank's piece back at its place in the full layout ([`FullState::place`]), which is
//! how a new generation of any size rebuilds the state.
//!
//! A piece travels and is held *flattened*: first moments, second moments, then
//! parameters, one range after the other in each. At stages 1 and 2 the moments
//! are all that travel (every rank holds the whole parameters), and they come
//! first.

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
#[derive(Clone, Debug, Default, PartialEq)]
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
    /// The flattened piece (first moments, second moments, parameters), with room
    /// for `extra` more elements.
    pub fn flatten_with_room(self, extra: usize) -> Vec<f32> {
        let mut out = self.adam_m;
        out.reserve(self.adam_v.len() + self.params.len() + extra);
        out.extend_from_slice(&self.adam_v);
        out.extend_from_slice(&self.params);
        out
    }

    /// The flattened piece.
    pub fn flatten(self) -> Vec<f32> {
        self.flatten_with_room(0)
    }
}

/// What a mirroring step leaves on a rank: its own flattened piece and the one of
/// the previous rank of the ring (empty on a ring of one), in one buffer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mirror {
    /// This rank's piece, then the previous rank's.
    pub buf: Vec<f32>,
    /// Where the previous rank's piece starts.
    pub split: usize,
}

impl Mirror {
    /// This rank's flattened piece.
    pub fn own(&self) -> &[f32] {
        &self.buf[..self.split]
    }

    /// The previous rank's flattened piece.
    pub fn left(&self) -> &[f32] {
        &self.buf[self.split..]
    }
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

    /// The three buffers one after the other (what a ring reduces in one op), in
    /// the order of a flattened piece.
    pub fn into_flat(self) -> Vec<f32> {
        let mut out = self.adam_m;
        out.extend_from_slice(&self.adam_v);
        out.extend_from_slice(&self.params);
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
        let params = flat.split_off(2 * n);
        let adam_v = flat.split_off(n);
        Ok(Self {
            params,
            adam_m: flat,
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
            self.adam_m[r.clone()].copy_from_slice(&flat[at..at + k]);
            self.adam_v[r.clone()].copy_from_slice(&flat[n + at..n + at + k]);
            self.params[r].copy_from_slice(&flat[2 * n + at..2 * n + at + k]);
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
