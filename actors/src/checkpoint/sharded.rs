//! Sharded checkpoints: in a data-parallel run every rank writes its own pieces of
//! the flat state, so no rank ever gathers the whole optimizer state.
//!
//! ```text
//! step-000100/
//!   meta.json                         as for a whole checkpoint, plus "shards": [...]
//!   shard-0000-of-0002.json           rank 0's ranges of the layout and crc32s
//!   shard-0000-of-0002.safetensors    `params`, `adam_m`, `adam_v` of those ranges, concatenated
//!   shard-0001-of-0002.json  ...
//! ```
//!
//! The ranks write into a staging directory; once every rank has written (a barrier
//! on the ring) rank 0 writes `meta.json` and renames the directory into place
//! ([`super::CheckpointStore::commit_sharded`]). Loading reassembles the whole layout
//! from the shards, checking every checksum and that the shards' ranges cover the
//! layout exactly once, so a checkpoint written by W ranks resumes on any number.
//! Ranks of several processes need the run's `out_dir` at the same path on a shared
//! file system.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{TENSORS, read_flat, write_flat, write_synced};
use crate::error::{Result, TrainError};

/// What one rank's shard holds: its ranges of the layout, in the order their
/// elements follow each other in the shard's tensors, and their checksums.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShardRecord {
    /// `[start, end)` ranges of the layout.
    pub ranges: Vec<(usize, usize)>,
    /// crc32 of each tensor's bytes in the shard's safetensors file.
    pub checksums: BTreeMap<String, u32>,
}

/// The descriptor file names of the shards of `world` ranks.
pub fn record_names(world: usize) -> Vec<String> {
    (0..world).map(|r| record_name(r, world)).collect()
}

fn record_name(rank: usize, world: usize) -> String {
    format!("shard-{rank:04}-of-{world:04}.json")
}

fn tensor_file(record: &str) -> String {
    format!("{}.safetensors", record.trim_end_matches(".json"))
}

/// Writes rank `rank`'s shard into `dir` (created if needed): `params`, `adam_m` and
/// `adam_v` hold the rank's `pieces` of each, concatenated in order.
pub fn write_shard(
    dir: &Path,
    rank: usize,
    world: usize,
    pieces: &[Range<usize>],
    params: &[f32],
    adam_m: &[f32],
    adam_v: &[f32],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let record = record_name(rank, world);
    let tensors = dir.join(tensor_file(&record));
    let checksums = write_flat(
        &tensors,
        [
            (TENSORS[0], params),
            (TENSORS[1], adam_m),
            (TENSORS[2], adam_v),
        ],
    )?;
    let record_path = dir.join(&record);
    let json = serde_json::to_string_pretty(&ShardRecord {
        ranges: pieces.iter().map(|p| (p.start, p.end)).collect(),
        checksums,
    })
    .map_err(|e| TrainError::CheckpointCorrupt {
        path: record_path.clone(),
        reason: e.to_string(),
    })?;
    write_synced(&record_path, json.as_bytes())
}

/// The whole-layout `params`, `adam_m` and `adam_v` of `n` elements from the shards
/// of `dir` named by `records`.
pub(super) fn assemble(dir: &Path, records: &[String], n: usize) -> Result<[Vec<f32>; 3]> {
    let mut full = [vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]];
    let mut covered: Vec<(usize, usize)> = Vec::new();
    for name in records {
        let path = dir.join(name);
        let corrupt = |reason: String| TrainError::CheckpointCorrupt {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TrainError::CheckpointMissing { path: path.clone() },
            _ => TrainError::io(&path, e),
        })?;
        let record: ShardRecord = serde_json::from_str(&text)
            .map_err(|e| corrupt(format!("invalid shard record: {e}")))?;
        if let Some(&(s, e)) = record.ranges.iter().find(|&&(s, e)| s > e || e > n) {
            return Err(corrupt(format!(
                "range {s}..{e} is outside the layout of {n}"
            )));
        }
        let len = record.ranges.iter().map(|(s, e)| e - s).sum();
        let tensors = read_flat(&dir.join(tensor_file(name)), len, &record.checksums)?;
        for (whole, own) in full.iter_mut().zip(&tensors) {
            let mut at = 0;
            for &(s, e) in &record.ranges {
                whole[s..e].copy_from_slice(&own[at..at + e - s]);
                at += e - s;
            }
        }
        covered.extend(record.ranges.iter().filter(|(s, e)| s < e));
    }
    covered.sort_unstable();
    let mut end = 0;
    for &(s, e) in &covered {
        if s != end {
            return Err(TrainError::CheckpointCorrupt {
                path: dir.to_path_buf(),
                reason: format!("the shards do not cover the layout exactly once (at {end})"),
            });
        }
        end = e;
    }
    if end != n {
        return Err(TrainError::CheckpointCorrupt {
            path: dir.to_path_buf(),
            reason: format!("the shards cover {end} of the layout's {n} elements"),
        });
    }
    Ok(full)
}
