//! Tests of the checkpoint format: roundtrip, retention, and every kind of damage.

use super::*;

fn small_model() -> GptConfig {
    GptConfig {
        vocab_size: 16,
        n_positions: 8,
        n_layer: 1,
        n_head: 2,
        n_embd: 8,
        layer_norm_eps: 1e-5,
    }
}

fn sample(step: u64) -> Checkpoint {
    let model = small_model();
    let n = ParamLayout::new(&model).len();
    let mut c = Checkpoint::from_weights(
        model,
        (0..n).map(|i| (i as f32 * 0.37).sin()).collect(),
        "bytes".into(),
    );
    c.adam_m = (0..n).map(|i| i as f32 * 1e-3).collect();
    c.adam_v = (0..n).map(|i| i as f32 * 1e-6).collect();
    c.meta.step = step;
    c.meta.tokens_seen = step * 100;
    c.meta.train = Some(TrainConfig::default());
    c
}

fn saved() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    sample(7).save(&dir).unwrap();
    (tmp, dir)
}

#[test]
fn roundtrip_is_exact() {
    let (_tmp, dir) = saved();
    let back = Checkpoint::load(&dir).unwrap();
    let orig = sample(7);
    assert_eq!(back.params, orig.params);
    assert_eq!(back.adam_m, orig.adam_m);
    assert_eq!(back.adam_v, orig.adam_v);
    assert_eq!(back.meta.step, 7);
    assert_eq!(back.meta.train, orig.meta.train);
    assert_eq!(back.meta.checksums.len(), 3);
    assert_eq!(back.meta.num_params, orig.params.len());
    assert!(back.tokenizer_json.is_none());
    // Saving over an existing checkpoint replaces it.
    let mut newer = sample(7);
    newer.params[0] = 42.0;
    newer.save(&dir).unwrap();
    assert_eq!(Checkpoint::load(&dir).unwrap().params[0], 42.0);
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary directories left: {leftovers:?}"
    );
}

#[test]
fn store_keeps_the_newest_and_points_latest_at_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(tmp.path(), 2);
    assert!(store.latest().unwrap().is_none());
    for step in 1..=5 {
        store.save(&sample(step * 10)).unwrap();
    }
    let steps: Vec<u64> = store.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![40, 50]);
    let latest = store.latest().unwrap().unwrap();
    assert!(latest.ends_with("step-000050"));
    // A run directory, its checkpoints/ directory and the checkpoint itself all resolve.
    assert_eq!(resolve_checkpoint_dir(tmp.path()).unwrap(), latest);
    assert_eq!(resolve_checkpoint_dir(store.root()).unwrap(), latest);
    assert_eq!(resolve_checkpoint_dir(&latest).unwrap(), latest);
    assert_eq!(
        resolve_checkpoint_dir(&store.root().join(LATEST_FILE)).unwrap(),
        latest
    );
    assert_eq!(Checkpoint::load(&latest).unwrap().meta.step, 50);
}

fn load_err(dir: &Path) -> (TrainError, String) {
    let e = Checkpoint::load(dir).unwrap_err();
    let s = e.to_string();
    (e, s)
}

#[test]
fn missing_directory_and_files_are_named() {
    let (_tmp, dir) = saved();
    let (e, s) = load_err(&dir.join("nope"));
    assert!(matches!(e, TrainError::CheckpointMissing { .. }), "{s}");
    assert!(s.contains("nope"), "{s}");
    let e = resolve_checkpoint_dir(&dir.join("nope")).unwrap_err();
    assert!(e.to_string().contains("nope"));

    std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
    let (e, s) = load_err(&dir);
    assert!(matches!(e, TrainError::CheckpointMissing { .. }), "{s}");
    assert!(s.contains(STATE_FILE), "{s}");

    std::fs::remove_file(dir.join(META_FILE)).unwrap();
    let (_, s) = load_err(&dir);
    assert!(s.contains(META_FILE), "{s}");
}

#[test]
fn truncated_state_is_corrupt() {
    let (_tmp, dir) = saved();
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 5, 100, 4, 0] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let (e, s) = load_err(&dir);
        assert!(
            matches!(e, TrainError::CheckpointCorrupt { .. }),
            "{keep}: {s}"
        );
        assert!(s.contains(STATE_FILE) && s.contains("truncated"), "{s}");
    }
}

#[test]
fn flipped_byte_fails_the_checksum() {
    let (_tmp, dir) = saved();
    let path = dir.join(STATE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let (e, s) = load_err(&dir);
    assert!(matches!(e, TrainError::ChecksumMismatch { .. }), "{s}");
    assert!(s.contains(STATE_FILE) && s.contains("crc32"), "{s}");
}

#[test]
fn meta_damage_is_detected() {
    let (_tmp, dir) = saved();
    let meta_path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&meta_path).unwrap();

    // The recorded model no longer matches the tensor sizes.
    let mut meta: CheckpointMeta = serde_json::from_str(&text).unwrap();
    meta.model.n_layer = 2;
    std::fs::write(&meta_path, serde_json::to_string(&meta).unwrap()).unwrap();
    let (e, s) = load_err(&dir);
    assert!(matches!(e, TrainError::LayoutMismatch { .. }), "{s}");

    // A newer format.
    let mut meta: CheckpointMeta = serde_json::from_str(&text).unwrap();
    meta.format_version = 99;
    std::fs::write(&meta_path, serde_json::to_string(&meta).unwrap()).unwrap();
    let (_, s) = load_err(&dir);
    assert!(s.contains("format version 99"), "{s}");

    // Not JSON at all.
    std::fs::write(&meta_path, &text[..text.len() / 2]).unwrap();
    let (e, s) = load_err(&dir);
    assert!(matches!(e, TrainError::CheckpointCorrupt { .. }), "{s}");
    assert!(s.contains(META_FILE), "{s}");
}

#[test]
fn wrong_sized_state_is_refused_at_save() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = sample(1);
    c.adam_v.pop();
    let e = c.save(&tmp.path().join("ck")).unwrap_err();
    assert!(matches!(e, TrainError::LayoutMismatch { .. }), "{e}");
    assert!(!tmp.path().join("ck").exists());
}

/// Writes `ckpt` as the shards of `world` ranks, each owning one piece of every
/// bucket of `buckets` (as a ZeRO rank does), and commits it in `store`.
fn save_sharded(store: &CheckpointStore, ckpt: &Checkpoint, world: usize) -> PathBuf {
    let n = ckpt.params.len();
    let buckets = [0..n / 3, n / 3..n / 2, n / 2..n];
    let staging = store.staging_dir(ckpt.meta.step);
    for rank in 0..world {
        let pieces: Vec<std::ops::Range<usize>> = buckets
            .iter()
            .map(|b| {
                let p = shoal_collectives::shard_range(b.len(), world, rank);
                b.start + p.start..b.start + p.end
            })
            .collect();
        let take =
            |x: &[f32]| -> Vec<f32> { pieces.iter().flat_map(|p| x[p.clone()].to_vec()).collect() };
        let (p, m, v) = (take(&ckpt.params), take(&ckpt.adam_m), take(&ckpt.adam_v));
        sharded::write_shard(&staging, rank, world, &pieces, &p, &m, &v).unwrap();
    }
    store.commit_sharded(ckpt, world).unwrap()
}

#[test]
fn sharded_checkpoints_reassemble_the_whole_state() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(tmp.path(), 5);
    for world in [1, 2, 3] {
        let ckpt = sample(world as u64);
        let dir = save_sharded(&store, &ckpt, world);
        let back = Checkpoint::load(&dir).unwrap();
        assert_eq!(back.meta.shards.len(), world);
        assert_eq!(
            (back.params, back.adam_m, back.adam_v),
            (ckpt.params, ckpt.adam_m, ckpt.adam_v)
        );
        assert!(!store.staging_dir(world as u64).exists(), "staging renamed");
    }
    assert_eq!(
        store.latest().unwrap(),
        Some(store.root().join("step-000003"))
    );
}

#[test]
fn damaged_shards_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(tmp.path(), 5);
    let dir = save_sharded(&store, &sample(4), 2);
    let tensors = dir.join("shard-0001-of-0002.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&tensors, &bytes).unwrap();
    let (e, msg) = load_err(&dir);
    assert!(matches!(e, TrainError::ChecksumMismatch { .. }), "{msg}");
    std::fs::remove_file(&tensors).unwrap();
    let (e, msg) = load_err(&dir);
    assert!(matches!(e, TrainError::CheckpointMissing { .. }), "{msg}");
    // A record whose range overlaps another rank's (same length, shifted by one).
    let dir = save_sharded(&store, &sample(5), 2);
    let record = dir.join("shard-0001-of-0002.json");
    let text = std::fs::read_to_string(&record).unwrap();
    let mut r: sharded::ShardRecord = serde_json::from_str(&text).unwrap();
    r.ranges[0] = (r.ranges[0].0 - 1, r.ranges[0].1 - 1);
    std::fs::write(&record, serde_json::to_string(&r).unwrap()).unwrap();
    let (e, msg) = load_err(&dir);
    assert!(matches!(e, TrainError::CheckpointCorrupt { .. }), "{msg}");
}

#[test]
fn a_damaged_latest_falls_back_to_the_one_before() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(tmp.path(), 5);
    store.save(&sample(2)).unwrap();
    let newest = save_sharded(&store, &sample(4), 2);
    std::fs::remove_file(newest.join("shard-0000-of-0002.safetensors")).unwrap();
    let (dir, ckpt) = load_checkpoint(tmp.path()).unwrap();
    assert_eq!((dir, ckpt.meta.step), (store.root().join("step-000002"), 2));
    // Named directly, the damaged checkpoint is refused.
    assert!(load_checkpoint(&newest).is_err());
}
