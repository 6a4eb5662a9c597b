//! Token shards: a flat file of token ids behind a 64-byte header, read through a memory map.
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `b"SHOALTOK"` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | dtype: 1 = u16, 2 = u32 |
//! | 16 | 8 | token count N |
//! | 24 | 4 | vocabulary size |
//! | 28 | 4 | CRC-32 of the token bytes |
//! | 32 | 32 | zero |
//! | 64 | N·width | tokens |

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::DataError;

/// First eight bytes of every shard.
const MAGIC: &[u8; 8] = b"SHOALTOK";
/// The format version this code writes and reads.
const VERSION: u32 = 1;
/// Bytes before the first token.
const HEADER_LEN: usize = 64;
/// Largest vocabulary stored as u16.
const MAX_U16_VOCAB: u32 = 1 << 16;

/// How each token is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    /// Two bytes a token (vocabularies of at most 65,536).
    U16,
    /// Four bytes a token.
    U32,
}

impl Dtype {
    /// The dtype a vocabulary of this size is written with.
    fn for_vocab(vocab_size: u32) -> Self {
        if vocab_size <= MAX_U16_VOCAB {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    /// The code stored in the header.
    fn code(self) -> u32 {
        match self {
            Dtype::U16 => 1,
            Dtype::U32 => 2,
        }
    }

    /// The dtype for a header code, if known.
    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Dtype::U16),
            2 => Some(Dtype::U32),
            _ => None,
        }
    }

    /// Bytes per token.
    fn width(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
}

/// Writes `tokens` as a shard at `path`, atomically: to `<path>.tmp`, fsync, rename.
/// Fails, writing nothing, if a token is not below `vocab_size`.
pub fn write_shard(path: &Path, tokens: &[u32], vocab_size: u32) -> Result<(), DataError> {
    if let Some((index, &token)) = tokens.iter().enumerate().find(|(_, t)| **t >= vocab_size) {
        return Err(DataError::TokenOutOfVocab {
            index,
            token,
            vocab_size: vocab_size as usize,
        });
    }
    let dtype = Dtype::for_vocab(vocab_size);
    let mut data = Vec::with_capacity(tokens.len() * dtype.width());
    for &token in tokens {
        match dtype {
            // Every token is below vocab_size <= 65,536, so it fits in 16 bits.
            Dtype::U16 => data.extend_from_slice(&(token as u16).to_le_bytes()),
            Dtype::U32 => data.extend_from_slice(&token.to_le_bytes()),
        }
    }
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&dtype.code().to_le_bytes());
    header[16..24].copy_from_slice(&(tokens.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&vocab_size.to_le_bytes());
    header[28..32].copy_from_slice(&crc32fast::hash(&data).to_le_bytes());

    let tmp = tmp_path(path);
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&header)?;
        file.write_all(&data)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        // Best effort: the temporary file is useless now; the error that matters is `e`.
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
    sync_parent(path);
    Ok(())
}

/// `<path>.tmp`, the name a shard is written under before it is renamed into place.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Makes the rename durable where the platform allows syncing a directory (best effort).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = File::open(parent)
    {
        // Not every platform or file system supports fsync on a directory; the data is
        // already synced, so a failure here only weakens durability of the name.
        let _ = dir.sync_all();
    }
}

/// A token shard opened read-only through a memory map, validated on open.
#[derive(Debug)]
pub struct TokenShard {
    /// The whole file, header included.
    map: Mmap,
    /// How tokens are stored.
    dtype: Dtype,
    /// Number of tokens.
    len: usize,
    /// Vocabulary size from the header.
    vocab_size: u32,
}

impl TokenShard {
    /// Opens and validates a shard: magic, version, dtype, exact file length, checksum, and
    /// that every token is below the vocabulary size in the header.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let actual = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if actual < HEADER_LEN as u64 {
            return Err(DataError::ShardLength {
                path: path.to_path_buf(),
                expected: HEADER_LEN as u64,
                actual,
            });
        }
        // SAFETY: the map is read-only and private to this process; shards are written once
        // (atomically, by rename) and never modified in place, which is the documented contract
        // for files handed to `TokenShard::open`.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        let bad = |reason: String| DataError::Shard {
            path: path.to_path_buf(),
            reason,
        };
        let header = &map[..HEADER_LEN];
        if &header[0..8] != MAGIC {
            return Err(bad(format!("bad magic {:?}", &header[0..8])));
        }
        let version = read_u32(header, 8);
        if version != VERSION {
            return Err(bad(format!("unsupported version {version}")));
        }
        let code = read_u32(header, 12);
        let dtype = Dtype::from_code(code).ok_or_else(|| bad(format!("unknown dtype {code}")))?;
        let count = read_u64(header, 16);
        let vocab_size = read_u32(header, 24);
        let expected_crc = read_u32(header, 28);
        if dtype == Dtype::U16 && vocab_size > MAX_U16_VOCAB {
            return Err(bad(format!("u16 tokens with vocabulary size {vocab_size}")));
        }
        let expected = count
            .checked_mul(dtype.width() as u64)
            .and_then(|n| n.checked_add(HEADER_LEN as u64))
            .ok_or_else(|| bad(format!("token count {count} overflows")))?;
        if expected != actual {
            return Err(DataError::ShardLength {
                path: path.to_path_buf(),
                expected,
                actual,
            });
        }
        // The file length equals header + count·width, so count fits in memory.
        let len = count as usize;
        let actual_crc = crc32fast::hash(&map[HEADER_LEN..]);
        if actual_crc != expected_crc {
            return Err(DataError::ShardChecksum {
                path: path.to_path_buf(),
                expected: expected_crc,
                actual: actual_crc,
            });
        }
        let shard = TokenShard {
            map,
            dtype,
            len,
            vocab_size,
        };
        if let Some(index) = (0..len).find(|&i| shard.get(i) >= vocab_size) {
            return Err(bad(format!(
                "token {} at index {index} is not below vocabulary size {vocab_size}",
                shard.get(index)
            )));
        }
        Ok(shard)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Vocabulary size from the header.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// Token `i`. Panics if `i >= len()` (an index bug in the caller, like slice indexing).
    pub fn get(&self, i: usize) -> u32 {
        assert!(i < self.len, "token index {i} out of range {}", self.len);
        let at = HEADER_LEN + i * self.dtype.width();
        match self.dtype {
            Dtype::U16 => u32::from(u16::from_le_bytes([self.map[at], self.map[at + 1]])),
            Dtype::U32 => read_u32(&self.map, at),
        }
    }

    /// Copies tokens `start .. start + out.len()` into `out`. Panics if that range is not
    /// inside the shard (an index bug in the caller, like slice indexing).
    pub fn copy_to(&self, start: usize, out: &mut [u32]) {
        let end = start
            .checked_add(out.len())
            .filter(|&end| end <= self.len)
            .unwrap_or_else(|| {
                panic!(
                    "token range {start}+{} out of range {}",
                    out.len(),
                    self.len
                )
            });
        let width = self.dtype.width();
        let bytes = &self.map[HEADER_LEN + start * width..HEADER_LEN + end * width];
        match self.dtype {
            Dtype::U16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u32::from(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            Dtype::U32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }

    /// All tokens, copied into a vector.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = vec![0; self.len];
        self.copy_to(0, &mut out);
        out
    }
}

/// Little-endian u32 at byte offset `at`.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Little-endian u64 at byte offset `at`.
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(vocab_size: u32, tokens: &[u32], width: usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.tok");
        write_shard(&path, tokens, vocab_size).expect("write");
        assert!(!tmp_path(&path).exists());
        let len = std::fs::metadata(&path).expect("meta").len();
        assert_eq!(len, (HEADER_LEN + tokens.len() * width) as u64);
        let shard = TokenShard::open(&path).expect("open");
        assert_eq!(shard.len(), tokens.len());
        assert_eq!(shard.vocab_size(), vocab_size);
        assert_eq!(shard.to_vec(), tokens);
        assert_eq!(shard.get(tokens.len() - 1), tokens[tokens.len() - 1]);
        let mut out = [0u32; 3];
        shard.copy_to(2, &mut out);
        assert_eq!(out, tokens[2..5]);
    }

    #[test]
    fn roundtrip_u16() {
        roundtrip(65_536, &[0, 1, 65_535, 300, 7, 9, 12], 2);
        roundtrip(256, &[0, 255, 10, 10, 65, 66], 2);
    }

    #[test]
    fn roundtrip_u32() {
        roundtrip(100_000, &[0, 99_999, 65_536, 3, 70_000, 1], 4);
    }

    #[test]
    fn empty_shard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.tok");
        write_shard(&path, &[], 256).expect("write");
        let shard = TokenShard::open(&path).expect("open");
        assert!(shard.is_empty());
        assert_eq!(shard.to_vec(), Vec::<u32>::new());
    }

    #[test]
    fn token_out_of_vocab_is_rejected_before_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.tok");
        let err = write_shard(&path, &[1, 2, 256, 3], 256).expect_err("out of vocab");
        assert!(matches!(
            err,
            DataError::TokenOutOfVocab {
                index: 2,
                token: 256,
                vocab_size: 256
            }
        ));
        assert!(!path.exists());
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.tok");
        write_shard(&path, &[1, 2, 3, 4], 256).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("truncate");
        let err = TokenShard::open(&path).expect_err("truncated");
        assert!(matches!(
            err,
            DataError::ShardLength {
                expected: 72,
                actual: 71,
                ..
            }
        ));
        std::fs::write(&path, &bytes[..10]).expect("truncate header");
        let err = TokenShard::open(&path).expect_err("truncated header");
        assert!(matches!(err, DataError::ShardLength { actual: 10, .. }));
        assert!(err.to_string().contains("c.tok"));
    }

    #[test]
    fn huge_count_in_header_is_rejected_without_allocating() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.tok");
        write_shard(&path, &[1, 2], 256).expect("write");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            TokenShard::open(&path),
            Err(DataError::Shard { .. })
        ));
        bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            TokenShard::open(&path),
            Err(DataError::ShardLength { .. })
        ));
    }

    #[test]
    fn bad_magic_version_and_dtype() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.tok");
        write_shard(&path, &[1, 2, 3], 256).expect("write");
        let good = std::fs::read(&path).expect("read");
        for (offset, value, what) in [(0, b'X', "magic"), (8, 2, "version"), (12, 7, "dtype")] {
            let mut bytes = good.clone();
            bytes[offset] = value;
            std::fs::write(&path, &bytes).expect("write");
            let err = TokenShard::open(&path).expect_err(what);
            assert!(
                matches!(&err, DataError::Shard { reason, .. } if reason.contains(what)),
                "{err}"
            );
        }
    }

    #[test]
    fn flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.tok");
        write_shard(&path, &[10, 20, 30, 40], 256).expect("write");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[HEADER_LEN + 3] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let err = TokenShard::open(&path).expect_err("checksum");
        assert!(matches!(err, DataError::ShardChecksum { .. }));
    }

    #[test]
    fn stored_token_above_header_vocab_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.tok");
        write_shard(&path, &[10, 20], 256).expect("write");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[24..28].copy_from_slice(&8u32.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        let err = TokenShard::open(&path).expect_err("vocab");
        assert!(
            matches!(&err, DataError::Shard { reason, .. } if reason.contains("index 0")),
            "{err}"
        );
    }
}
