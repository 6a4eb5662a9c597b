//! Deterministic random streams keyed by (seed, index), identical on every platform.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finalizer: a bijective mix of 64 bits (used to derive independent seeds).
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seed derived from `seed` and a label, so different uses of one seed do not correlate.
pub(crate) fn derive_seed(seed: u64, label: u64) -> u64 {
    splitmix64(seed ^ splitmix64(label))
}

/// FNV-1a hash of a name: stable across platforms and Rust versions (unlike `DefaultHasher`).
pub(crate) fn hash_name(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The random stream for sample `index` under `seed`: ChaCha8 keyed by the seed, on stream `index`.
pub(crate) fn sample_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_pure_functions_of_seed_and_index() {
        let a: u64 = sample_rng(7, 3).random();
        let b: u64 = sample_rng(7, 3).random();
        let c: u64 = sample_rng(7, 4).random();
        let d: u64 = sample_rng(8, 3).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn hashes_are_stable() {
        // Fixed values: a change here would silently change every synthetic corpus.
        assert_eq!(hash_name(""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(hash_name("a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_ne!(derive_seed(1, 2), derive_seed(2, 1));
    }
}
