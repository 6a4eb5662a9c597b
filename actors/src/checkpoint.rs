//! Checkpoints: one directory per step holding the flat training state and its metadata.
//!
//! ```text
//! out_dir/checkpoints/
//!   latest                  "step-000100": the newest complete checkpoint
//!   step-000100/
//!     state.safetensors     flat f32 tensors `params`, `adam_m`, `adam_v` (the layout's order)
//!     meta.json             format version, GptConfig, TrainConfig, step, tokens seen,
//!                           tokenizer, crc32 of each tensor's bytes, schedule position,
//!                           lineage (the earlier runs of a continual run)
//!     tokenizer.json        only when the run used a Hugging Face tokenizer
//! ```
//!
//! A checkpoint is written into a temporary directory, every file is fsynced, and the
//! directory is renamed into place, so a crash never leaves a half-written `step-*`.
//! Because the state is the flat layout, it does not depend on how many ranks wrote it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use shoal_models::{GptConfig, ParamLayout};

use crate::config::TrainConfig;
use crate::continual::RunRecord;
use crate::error::{Result, TrainError};
use crate::schedule::SchedulePosition;

/// The checkpoint format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the tensor file inside a checkpoint directory.
pub const STATE_FILE: &str = "state.safetensors";
/// Name of the metadata file inside a checkpoint directory.
pub const META_FILE: &str = "meta.json";
/// Name of the copied tokenizer inside a checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Name of the file naming the newest checkpoint.
pub const LATEST_FILE: &str = "latest";
/// The tensors of `state.safetensors`, in this order.
pub const TENSORS: [&str; 3] = ["params", "adam_m", "adam_v"];

/// What `meta.json` records about a checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckpointMeta {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Training tokens consumed so far.
    pub tokens_seen: u64,
    /// The model architecture (defines the layout and so the tensor sizes).
    pub model: GptConfig,
    /// The run's configuration; absent for imported weights.
    pub train: Option<TrainConfig>,
    /// Human-readable description of the tokenizer the model was trained with.
    pub tokenizer: String,
    /// Number of parameters (the length of every tensor).
    pub num_params: usize,
    /// crc32 of each tensor's little-endian bytes (whole checkpoints).
    pub checksums: BTreeMap<String, u32>,
    /// A sharded checkpoint's shards (the ranks' descriptor files, see
    /// [`sharded`]); empty for a whole checkpoint in `state.safetensors`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<String>,
    /// Where the run stands in its learning-rate schedule (absent for imported
    /// weights and checkpoints older than schedules in tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_position: Option<SchedulePosition>,
    /// The earlier runs this one continues (`init`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<RunRecord>,
    /// AdamW steps folded into the moments before this run started (moments kept
    /// from its `init`); AdamW's bias correction counts them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moment_steps: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The full training state of one process at a step boundary.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Metadata; `checksums` and `num_params` are filled in when saving.
    pub meta: CheckpointMeta,
    /// Flat parameters.
    pub params: Vec<f32>,
    /// AdamW first moments (same layout).
    pub adam_m: Vec<f32>,
    /// AdamW second moments (same layout).
    pub adam_v: Vec<f32>,
    /// A `tokenizer.json` to copy into (when saving) or found in (when loading) the directory.
    pub tokenizer_json: Option<PathBuf>,
}

/// A flat f32 tensor as a safetensors view.
struct FlatView<'a> {
    data: &'a [f32],
    shape: [usize; 1],
}

impl View for FlatView<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(f32_bytes(self.data))
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn crc_of(x: &[f32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for chunk in x.chunks(1 << 16) {
        h.update(&f32_bytes(chunk));
    }
    h.finalize()
}

fn fsync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

/// Renames the finished temporary directory `tmp` to `dir` (replacing an existing
/// `dir`), fsyncing `tmp` and the parent around the rename.
fn commit_dir(tmp: &Path, dir: &Path) -> Result<()> {
    fsync(tmp)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dir
        .file_name()
        .map_or_else(|| "checkpoint".into(), |n| n.to_string_lossy());
    let old = parent.join(format!(".old-{name}-{}", std::process::id()));
    let replaced = dir.exists();
    if replaced {
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    fsync(parent)?;
    if replaced {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(())
}

/// Writes flat f32 tensors to a safetensors file at `path`, fsynced; returns the
/// crc32 of each tensor's bytes.
fn write_flat(path: &Path, tensors: [(&'static str, &[f32]); 3]) -> Result<BTreeMap<String, u32>> {
    let views = tensors.map(|(name, t)| {
        (
            name,
            FlatView {
                data: t,
                shape: [t.len()],
            },
        )
    });
    let info = BTreeMap::from([("format".to_string(), "shoal".to_string())]);
    safetensors::serialize_to_file(views, Some(info.into_iter().collect()), path).map_err(|e| {
        TrainError::CheckpointCorrupt {
            path: path.to_path_buf(),
            reason: format!("cannot write: {e}"),
        }
    })?;
    fsync(path)?;
    Ok(tensors
        .iter()
        .map(|(name, t)| (name.to_string(), crc_of(t)))
        .collect())
}

/// Reads the [`TENSORS`] of the safetensors file at `path`, each of `expected`
/// elements, checking each against its crc32 in `checksums`.
fn read_flat(
    path: &Path,
    expected: usize,
    checksums: &BTreeMap<String, u32>,
) -> Result<[Vec<f32>; 3]> {
    if !path.is_file() {
        return Err(TrainError::CheckpointMissing {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| TrainError::CheckpointCorrupt {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file (truncated?): {e}"),
    })?;
    let read = |name: &str| -> Result<Vec<f32>> {
        let view = st.tensor(name).map_err(|e| TrainError::CheckpointCorrupt {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}`: {e}"),
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(TrainError::CheckpointCorrupt {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            });
        }
        let n: usize = view.shape().iter().product();
        if view.shape().len() != 1 || n != expected {
            return Err(TrainError::LayoutMismatch {
                path: path.to_path_buf(),
                tensor: name.into(),
                expected,
                actual: n,
            });
        }
        let data = view.data();
        let actual = crc32fast::hash(data);
        let recorded = checksums.get(name).copied();
        if recorded != Some(actual) {
            return Err(TrainError::ChecksumMismatch {
                path: path.to_path_buf(),
                tensor: name.into(),
                expected: recorded.unwrap_or(0),
                actual,
            });
        }
        Ok(data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    Ok([read(TENSORS[0])?, read(TENSORS[1])?, read(TENSORS[2])?])
}

impl Checkpoint {
    /// A checkpoint of fresh weights: zero moments, step 0 (what `shoal import` writes).
    pub fn from_weights(model: GptConfig, params: Vec<f32>, tokenizer: String) -> Self {
        let n = params.len();
        Self {
            meta: CheckpointMeta {
                format_version: FORMAT_VERSION,
                step: 0,
                tokens_seen: 0,
                model,
                train: None,
                tokenizer,
                num_params: n,
                checksums: BTreeMap::new(),
                shards: Vec::new(),
                schedule_position: None,
                lineage: Vec::new(),
                moment_steps: 0,
            },
            params,
            adam_m: vec![0.0; n],
            adam_v: vec![0.0; n],
            tokenizer_json: None,
        }
    }

    fn tensors(&self) -> [(&'static str, &[f32]); 3] {
        [
            (TENSORS[0], &self.params),
            (TENSORS[1], &self.adam_m),
            (TENSORS[2], &self.adam_v),
        ]
    }

    /// Writes the checkpoint's files into the existing directory `dir`, fsynced.
    fn write_files(&self, dir: &Path) -> Result<()> {
        let expected = ParamLayout::new(&self.meta.model).len();
        for (name, t) in self.tensors() {
            if t.len() != expected {
                return Err(TrainError::LayoutMismatch {
                    path: dir.join(STATE_FILE),
                    tensor: name.into(),
                    expected,
                    actual: t.len(),
                });
            }
        }
        let mut meta = self.meta.clone();
        meta.format_version = FORMAT_VERSION;
        meta.num_params = expected;
        meta.checksums = write_flat(&dir.join(STATE_FILE), self.tensors())?;
        meta.shards = Vec::new();
        self.write_meta(dir, &meta)
    }

    /// Writes `meta.json` (and copies the tokenizer) into `dir`, fsynced.
    fn write_meta(&self, dir: &Path, meta: &CheckpointMeta) -> Result<()> {
        if let Some(src) = &self.tokenizer_json {
            let dst = dir.join(TOKENIZER_FILE);
            std::fs::copy(src, &dst).map_err(|e| TrainError::io(src, e))?;
            fsync(&dst)?;
        }
        let json =
            serde_json::to_string_pretty(meta).map_err(|e| TrainError::CheckpointCorrupt {
                path: dir.join(META_FILE),
                reason: e.to_string(),
            })?;
        write_synced(&dir.join(META_FILE), json.as_bytes())
    }

    /// Writes the checkpoint to `dir` atomically: into a sibling temporary directory that
    /// is renamed to `dir` once every file is on disk. An existing `dir` is replaced.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| TrainError::io(&parent, e))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".into());
        let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        if let Err(e) = self.write_files(&tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        commit_dir(&tmp, dir)
    }

    /// Reads only `meta.json` of a checkpoint directory.
    pub fn load_meta(dir: &Path) -> Result<CheckpointMeta> {
        if !dir.is_dir() {
            return Err(TrainError::CheckpointMissing {
                path: dir.to_path_buf(),
            });
        }
        let path = dir.join(META_FILE);
        if !path.is_file() {
            return Err(TrainError::CheckpointMissing { path });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let meta: CheckpointMeta =
            serde_json::from_str(&text).map_err(|e| TrainError::CheckpointCorrupt {
                path: path.clone(),
                reason: format!("invalid meta.json: {e}"),
            })?;
        if meta.format_version != FORMAT_VERSION {
            return Err(TrainError::CheckpointCorrupt {
                path,
                reason: format!(
                    "format version {} but this build reads version {FORMAT_VERSION}",
                    meta.format_version
                ),
            });
        }
        meta.model.validate()?;
        Ok(meta)
    }

    /// Reads and verifies a checkpoint directory: presence of every file, safetensors
    /// structure, dtypes, sizes against the model's layout, and checksums.
    pub fn load(dir: &Path) -> Result<Self> {
        let meta = Self::load_meta(dir)?;
        let n = ParamLayout::new(&meta.model).len();
        let [params, adam_m, adam_v] = if meta.shards.is_empty() {
            read_flat(&dir.join(STATE_FILE), n, &meta.checksums)?
        } else {
            sharded::assemble(dir, &meta.shards, n)?
        };
        let tok = dir.join(TOKENIZER_FILE);
        Ok(Self {
            meta,
            params,
            adam_m,
            adam_v,
            tokenizer_json: tok.is_file().then_some(tok),
        })
    }
}

/// Finds the checkpoint directory a user meant: a checkpoint itself, a `checkpoints/`
/// directory (its `latest`), or a run's `out_dir` (its `checkpoints/latest`).
pub fn resolve_checkpoint_dir(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(TrainError::CheckpointMissing {
            path: path.to_path_buf(),
        });
    }
    if path.join(META_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    // The `latest` pointer file itself names a checkpoint beside it.
    let beside = match path.parent() {
        Some(parent) if path.is_file() && path.file_name() == Some(LATEST_FILE.as_ref()) => {
            parent.to_path_buf()
        }
        _ => path.to_path_buf(),
    };
    for root in [beside.clone(), beside.join("checkpoints")] {
        let latest = root.join(LATEST_FILE);
        if latest.is_file() {
            let name = std::fs::read_to_string(&latest).map_err(|e| TrainError::io(&latest, e))?;
            let dir = root.join(name.trim());
            if name.trim().is_empty() || !dir.is_dir() {
                return Err(TrainError::CheckpointCorrupt {
                    path: latest,
                    reason: format!("names `{}`, which does not exist", name.trim()),
                });
            }
            return Ok(dir);
        }
    }
    Err(TrainError::CheckpointMissing {
        path: path.join(META_FILE),
    })
}

/// Loads the checkpoint a user meant (see [`resolve_checkpoint_dir`]). When `path`
/// leaves the choice to `latest` (a run's directory, its `checkpoints/`, or `latest`
/// itself) and that checkpoint is damaged (a file missing, truncated or failing its
/// checksum), the newest older checkpoint that loads is used instead, with a warning;
/// a checkpoint named directly is loaded or refused as it is.
pub fn load_checkpoint(path: &Path) -> Result<(PathBuf, Checkpoint)> {
    let dir = resolve_checkpoint_dir(path)?;
    let error = match Checkpoint::load(&dir) {
        Ok(ckpt) => return Ok((dir, ckpt)),
        Err(e) => e,
    };
    let damaged = matches!(
        error,
        TrainError::CheckpointCorrupt { .. }
            | TrainError::ChecksumMismatch { .. }
            | TrainError::LayoutMismatch { .. }
            | TrainError::CheckpointMissing { .. }
    );
    if !damaged || path.join(META_FILE).exists() {
        return Err(error);
    }
    let root = dir.parent().unwrap_or(Path::new("."));
    let store = CheckpointStore {
        root: root.to_path_buf(),
        keep: usize::MAX,
    };
    let newest = store.list()?.into_iter().rev().filter(|(_, d)| *d != dir);
    for (_, older) in newest {
        if let Ok(ckpt) = Checkpoint::load(&older) {
            tracing::warn!(
                damaged = %dir.display(),
                using = %older.display(),
                "the latest checkpoint is damaged ({error}); resuming from the one before"
            );
            return Ok((older, ckpt));
        }
    }
    Err(error)
}

/// The `checkpoints/` directory of a run: numbered checkpoints, `latest`, retention.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    root: PathBuf,
    keep: usize,
}

impl CheckpointStore {
    /// The store under `out_dir/checkpoints`, keeping the newest `keep` checkpoints.
    pub fn new(out_dir: &Path, keep: usize) -> Self {
        Self {
            root: out_dir.join("checkpoints"),
            keep: keep.max(1),
        }
    }

    /// The `checkpoints/` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory name of the checkpoint after `step` steps.
    pub fn dir_name(step: u64) -> String {
        format!("step-{step:06}")
    }

    /// Existing checkpoints as (step, directory), oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        if !self.root.is_dir() {
            return Ok(Vec::new());
        }
        let entries = std::fs::read_dir(&self.root).map_err(|e| TrainError::io(&self.root, e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok())
                && entry.path().is_dir()
            {
                found.push((step, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// The checkpoint `latest` names, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        if self.root.join(LATEST_FILE).is_file() {
            resolve_checkpoint_dir(&self.root).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Saves `ckpt` as `step-NNNNNN`, points `latest` at it and deletes the oldest
    /// checkpoints beyond the retention count. Returns the new directory.
    pub fn save(&self, ckpt: &Checkpoint) -> Result<PathBuf> {
        let dir = self.root.join(Self::dir_name(ckpt.meta.step));
        ckpt.save(&dir)?;
        self.publish(&dir)?;
        Ok(dir)
    }

    /// Where the ranks of a data-parallel run write their shards of the checkpoint
    /// after `step` ([`sharded::write_shard`]) before [`CheckpointStore::commit_sharded`].
    pub fn staging_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!(".tmp-{}", Self::dir_name(step)))
    }

    /// Commits the sharded checkpoint the `world` ranks wrote into
    /// [`CheckpointStore::staging_dir`]: writes `meta.json` (listing the shards) and
    /// the tokenizer from `ckpt` (whose tensors are not used), renames the directory
    /// into place, points `latest` at it and applies the retention. Returns the new
    /// directory.
    pub fn commit_sharded(&self, ckpt: &Checkpoint, world: usize) -> Result<PathBuf> {
        let step = ckpt.meta.step;
        let (tmp, dir) = (self.staging_dir(step), self.root.join(Self::dir_name(step)));
        let shards = sharded::record_names(world);
        for name in &shards {
            let path = tmp.join(name);
            if !path.is_file() {
                return Err(TrainError::CheckpointMissing { path });
            }
        }
        let meta = CheckpointMeta {
            format_version: FORMAT_VERSION,
            num_params: ParamLayout::new(&ckpt.meta.model).len(),
            checksums: BTreeMap::new(),
            shards,
            ..ckpt.meta.clone()
        };
        ckpt.write_meta(&tmp, &meta)?;
        commit_dir(&tmp, &dir)?;
        self.publish(&dir)?;
        Ok(dir)
    }

    /// Points `latest` at `dir` and deletes the oldest checkpoints beyond the
    /// retention count.
    fn publish(&self, dir: &Path) -> Result<()> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = self.root.join(format!("{LATEST_FILE}.tmp"));
        write_synced(&tmp, format!("{}\n", name.unwrap_or_default()).as_bytes())?;
        let latest = self.root.join(LATEST_FILE);
        std::fs::rename(&tmp, &latest).map_err(|e| TrainError::io(&latest, e))?;
        fsync(&self.root)?;
        let all = self.list()?;
        let excess = all.len().saturating_sub(self.keep);
        for (_, old) in all.into_iter().take(excess).filter(|(_, d)| d != dir) {
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        Ok(())
    }
}

pub mod sharded;

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
