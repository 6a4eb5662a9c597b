//! Token datasets: a contiguous range of tokens (in memory or memory-mapped) and the windows
//! training and evaluation read from it.

use std::sync::Arc;

use rand::Rng;

use crate::error::DataError;
use crate::rng::sample_rng;
use crate::shard::TokenShard;

pub use crate::mixture::{Domain, Mixture};

/// Where the tokens of a dataset live.
#[derive(Debug)]
enum Source {
    /// Tokens held in memory.
    Owned(Vec<u32>),
    /// Tokens read through a memory-mapped shard.
    Shard(TokenShard),
}

impl Source {
    /// Copies tokens `start .. start + out.len()` into `out`.
    fn copy_to(&self, start: usize, out: &mut [u32]) {
        match self {
            Source::Owned(v) => out.copy_from_slice(&v[start..start + out.len()]),
            Source::Shard(s) => s.copy_to(start, out),
        }
    }
}

/// A contiguous range of tokens; cloning shares the tokens.
#[derive(Debug, Clone)]
pub struct TokenDataset {
    /// The tokens, shared between the halves of a split.
    source: Arc<Source>,
    /// First token of this dataset in `source`.
    start: usize,
    /// Number of tokens in this dataset.
    len: usize,
}

impl TokenDataset {
    /// A dataset over tokens held in memory.
    pub fn from_tokens(tokens: Vec<u32>) -> Self {
        let len = tokens.len();
        TokenDataset {
            source: Arc::new(Source::Owned(tokens)),
            start: 0,
            len,
        }
    }

    /// A dataset over a memory-mapped shard (nothing is copied).
    pub fn from_shard(shard: TokenShard) -> Self {
        let len = shard.len();
        TokenDataset {
            source: Arc::new(Source::Shard(shard)),
            start: 0,
            len,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the dataset holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies tokens `start .. start + out.len()` of this dataset into `out`.
    /// Panics if the range is not inside the dataset (an index bug in the caller).
    pub fn copy_to(&self, start: usize, out: &mut [u32]) {
        assert!(
            start
                .checked_add(out.len())
                .is_some_and(|end| end <= self.len),
            "token range {start}+{} out of range {}",
            out.len(),
            self.len
        );
        self.source.copy_to(self.start + start, out);
    }

    /// All tokens, copied into a vector.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = vec![0; self.len];
        self.copy_to(0, &mut out);
        out
    }

    /// Splits into (train, validation): the last `val_fraction` of the tokens (rounded) is
    /// validation, the rest train, so no window of one overlaps the other. The fraction is
    /// clamped to [0, 1]; NaN counts as 0.
    pub fn split(self, val_fraction: f64) -> (TokenDataset, TokenDataset) {
        let fraction = if val_fraction.is_nan() {
            0.0
        } else {
            val_fraction.clamp(0.0, 1.0)
        };
        let n_val = ((self.len as f64) * fraction).round() as usize;
        let n_val = n_val.min(self.len);
        let n_train = self.len - n_val;
        let val = TokenDataset {
            source: Arc::clone(&self.source),
            start: self.start + n_train,
            len: n_val,
        };
        let train = TokenDataset {
            source: self.source,
            start: self.start,
            len: n_train,
        };
        (train, val)
    }

    /// Fails on the first token not below `vocab_size`, naming its index and value.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<(), DataError> {
        const CHUNK: usize = 1 << 16;
        let mut buf = vec![0u32; CHUNK.min(self.len)];
        let mut start = 0;
        while start < self.len {
            let n = CHUNK.min(self.len - start);
            let chunk = &mut buf[..n];
            self.copy_to(start, chunk);
            if let Some((i, &token)) = chunk
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= vocab_size)
            {
                return Err(DataError::TokenOutOfVocab {
                    index: start + i,
                    token,
                    vocab_size,
                });
            }
            start += n;
        }
        Ok(())
    }

    /// Writes window `global_index` (T+1 tokens starting at a position that is a pure function
    /// of (seed, global_index)) as tokens/targets (targets shifted by one). Errors if the
    /// dataset has fewer than T+1 tokens.
    pub fn sample(
        &self,
        seed: u64,
        global_index: u64,
        t: usize,
        tokens: &mut [u32],
        targets: &mut [u32],
    ) -> Result<(), DataError> {
        check_buffers(t, tokens, targets)?;
        let needed = t + 1;
        if self.len < needed {
            return Err(DataError::DatasetTooShort {
                len: self.len,
                needed,
            });
        }
        let starts = (self.len - needed) as u64 + 1;
        let start = sample_rng(seed, global_index).random_range(0..starts) as usize;
        self.write_window(start, tokens, targets);
        Ok(())
    }

    /// Deterministic sequential windows for evaluation: window i = tokens[i·T .. i·T+T+1],
    /// with i taken modulo [`TokenDataset::num_windows`] so every window is full.
    /// Errors if there is no full window.
    pub fn window(
        &self,
        i: usize,
        t: usize,
        tokens: &mut [u32],
        targets: &mut [u32],
    ) -> Result<(), DataError> {
        check_buffers(t, tokens, targets)?;
        let n = self.num_windows(t);
        if n == 0 {
            return Err(DataError::DatasetTooShort {
                len: self.len,
                needed: t + 1,
            });
        }
        self.write_window((i % n) * t, tokens, targets);
        Ok(())
    }

    /// Number of full windows of T (+1 target) tokens: (len − 1) / T, or 0 if T is 0 or
    /// the dataset is shorter than T + 1.
    pub fn num_windows(&self, t: usize) -> usize {
        if t == 0 || self.len < t + 1 {
            0
        } else {
            (self.len - 1) / t
        }
    }

    /// Copies tokens `start .. start+T+1` into tokens (first T) and targets (last T).
    fn write_window(&self, start: usize, tokens: &mut [u32], targets: &mut [u32]) {
        let t = tokens.len();
        self.copy_to(start, tokens);
        targets[..t - 1].copy_from_slice(&tokens[1..]);
        self.copy_to(start + t, &mut targets[t - 1..]);
    }
}

/// Checks that both buffers hold T tokens and that T is positive.
fn check_buffers(t: usize, tokens: &[u32], targets: &[u32]) -> Result<(), DataError> {
    if t == 0 {
        return Err(DataError::EmptyWindow);
    }
    for (what, buf) in [("tokens", tokens), ("targets", targets)] {
        if buf.len() != t {
            return Err(DataError::BufferLength {
                what,
                expected: t,
                actual: buf.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::write_shard;

    fn counting(n: u32) -> TokenDataset {
        TokenDataset::from_tokens((0..n).collect())
    }

    #[test]
    fn sample_is_deterministic_and_shifted() {
        let ds = counting(1000);
        let t = 16;
        let (mut a, mut at) = (vec![0; t], vec![0; t]);
        let (mut b, mut bt) = (vec![0; t], vec![0; t]);
        ds.sample(42, 7, t, &mut a, &mut at).expect("sample");
        ds.sample(42, 7, t, &mut b, &mut bt).expect("sample");
        assert_eq!(a, b);
        assert_eq!(at, bt);
        for i in 0..t {
            assert_eq!(at[i], a[i] + 1);
            if i > 0 {
                assert_eq!(a[i], a[i - 1] + 1);
            }
        }
    }

    #[test]
    fn different_indices_and_seeds_give_different_windows() {
        let ds = counting(100_000);
        let t = 8;
        let start = |seed, index| {
            let (mut x, mut y) = (vec![0; t], vec![0; t]);
            ds.sample(seed, index, t, &mut x, &mut y).expect("sample");
            x[0]
        };
        let starts: std::collections::HashSet<u32> = (0..100).map(|i| start(1, i)).collect();
        assert!(starts.len() > 95, "only {} distinct starts", starts.len());
        assert_ne!(
            (0..10).map(|i| start(1, i)).collect::<Vec<_>>(),
            (0..10).map(|i| start(2, i)).collect::<Vec<_>>()
        );
        // The same (seed, index) gives the same window whatever was sampled before.
        assert_eq!(start(1, 50), start(1, 50));
    }

    #[test]
    fn sample_positions_are_pinned() {
        // Fixed values: a change means a different rand/rand_chacha stream, which would
        // silently change the data order of resumed runs.
        let ds = counting(1_000_000);
        let starts: Vec<u32> = (0..4)
            .map(|i| {
                let (mut x, mut y) = (vec![0; 4], vec![0; 4]);
                ds.sample(1, i, 4, &mut x, &mut y).expect("sample");
                x[0]
            })
            .collect();
        assert_eq!(starts, vec![402_484, 851_908, 876_390, 568_221]);
    }

    #[test]
    fn sample_covers_both_ends() {
        let ds = counting(10);
        let t = 8;
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let (mut x, mut y) = (vec![0; t], vec![0; t]);
            ds.sample(3, i, t, &mut x, &mut y).expect("sample");
            seen.insert(x[0]);
            assert!(y[t - 1] <= 9);
        }
        assert_eq!(seen, [0, 1].into_iter().collect());
    }

    #[test]
    fn too_short_and_bad_buffers_are_errors() {
        let ds = counting(8);
        let (mut x, mut y) = (vec![0; 8], vec![0; 8]);
        assert!(matches!(
            ds.sample(0, 0, 8, &mut x, &mut y),
            Err(DataError::DatasetTooShort { len: 8, needed: 9 })
        ));
        assert!(matches!(
            ds.window(0, 8, &mut x, &mut y),
            Err(DataError::DatasetTooShort { .. })
        ));
        let mut short = vec![0; 3];
        assert!(matches!(
            ds.sample(0, 0, 4, &mut x, &mut short),
            Err(DataError::BufferLength { what: "tokens", .. })
        ));
        assert!(matches!(
            ds.sample(0, 0, 0, &mut [], &mut []),
            Err(DataError::EmptyWindow)
        ));
    }

    #[test]
    fn windows_are_sequential_and_wrap() {
        let ds = counting(10);
        let t = 3;
        assert_eq!(ds.num_windows(t), 3);
        assert_eq!(ds.num_windows(9), 1);
        assert_eq!(ds.num_windows(10), 0);
        assert_eq!(ds.num_windows(0), 0);
        let (mut x, mut y) = (vec![0; t], vec![0; t]);
        ds.window(2, t, &mut x, &mut y).expect("window");
        assert_eq!((x.clone(), y.clone()), (vec![6, 7, 8], vec![7, 8, 9]));
        ds.window(4, t, &mut x, &mut y).expect("window");
        assert_eq!((x, y), (vec![3, 4, 5], vec![4, 5, 6]));
    }

    #[test]
    fn split_is_contiguous_with_validation_last() {
        let (train, val) = counting(100).split(0.1);
        assert_eq!((train.len(), val.len()), (90, 10));
        assert_eq!(train.to_vec(), (0..90).collect::<Vec<_>>());
        assert_eq!(val.to_vec(), (90..100).collect::<Vec<_>>());
        let (train2, val2) = val.split(0.5);
        assert_eq!(train2.to_vec(), vec![90, 91, 92, 93, 94]);
        assert_eq!(val2.to_vec(), vec![95, 96, 97, 98, 99]);
        assert_eq!(counting(10).split(f64::NAN).1.len(), 0);
        assert_eq!(counting(10).split(7.0).0.len(), 0);
        // Training windows never read validation tokens.
        let t = 4;
        for i in 0..500 {
            let (mut x, mut y) = (vec![0; t], vec![0; t]);
            train.sample(9, i, t, &mut x, &mut y).expect("sample");
            assert!(y[t - 1] < 90);
        }
    }

    #[test]
    fn check_vocab_names_first_bad_token() {
        let ds = TokenDataset::from_tokens(vec![1, 2, 300, 400]);
        assert!(ds.check_vocab(401).is_ok());
        assert!(matches!(
            ds.check_vocab(256),
            Err(DataError::TokenOutOfVocab {
                index: 2,
                token: 300,
                vocab_size: 256
            })
        ));
        let (_, val) = ds.split(0.5);
        assert!(matches!(
            val.check_vocab(256),
            Err(DataError::TokenOutOfVocab { index: 0, .. })
        ));
    }

    #[test]
    fn shard_backed_dataset_matches_owned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.tok");
        let tokens: Vec<u32> = (0..500).map(|i| (i * 7) % 256).collect();
        write_shard(&path, &tokens, 256).expect("write");
        let mapped = TokenDataset::from_shard(TokenShard::open(&path).expect("open"));
        let owned = TokenDataset::from_tokens(tokens);
        let (mt, mv) = mapped.split(0.2);
        let (ot, ov) = owned.split(0.2);
        assert_eq!(mv.to_vec(), ov.to_vec());
        let t = 32;
        for i in 0..20 {
            let (mut a, mut at) = (vec![0; t], vec![0; t]);
            let (mut b, mut bt) = (vec![0; t], vec![0; t]);
            mt.sample(5, i, t, &mut a, &mut at).expect("sample");
            ot.sample(5, i, t, &mut b, &mut bt).expect("sample");
            assert_eq!((a, at), (b, bt));
        }
    }
}
