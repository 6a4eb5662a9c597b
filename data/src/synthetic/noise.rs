//! `noise`: lines of 32 symbols drawn independently and uniformly from the 16 letters `A`–`P`,
//! each line ended by a newline.
//!
//! Entropy: each letter has ln 16 nats, the newline (always the 33rd character) none; the
//! rate is 32/33 · ln 16 ≈ 2.6885 nats per character. Context needed: back to the last
//! newline, at most 33 characters.

use rand_chacha::ChaCha8Rng;

use super::stream::{ChoiceSet, Stream};

/// The symbols.
pub(crate) const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOP";
/// Symbols per line.
pub(crate) const LINE_LEN: usize = 32;

/// Writes lines of random symbols into the stream until it is full.
pub(crate) fn generate(rng: &mut ChaCha8Rng, stream: &mut Stream) {
    let options: Vec<(u8, f64)> = ALPHABET.iter().map(|&b| (b, 1.0)).collect();
    let symbols = ChoiceSet::of_bytes(&options);
    while !stream.is_full() {
        for _ in 0..LINE_LEN {
            symbols.draw_and_emit(rng, stream);
        }
        stream.push_determined(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn symbol_frequencies_give_the_floor() {
        let n = 33 * 10_000;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut stream = Stream::new(n);
        generate(&mut rng, &mut stream);
        let (tokens, floor, oracle) = stream.finish();
        let mut counts = [0usize; 256];
        for &t in &tokens {
            counts[t as usize] += 1;
        }
        assert_eq!(counts[usize::from(b'\n')], n / 33);
        let symbols = (n - n / 33) as f64;
        let empirical: f64 = ALPHABET
            .iter()
            .map(|&b| counts[usize::from(b)] as f64 / symbols)
            .map(|p| -p * p.ln())
            .sum();
        let rate = 32.0 / 33.0 * 16f64.ln();
        assert!((floor - rate).abs() < 1e-9, "floor {floor} rate {rate}");
        assert!((oracle - rate).abs() < 1e-9);
        assert!((empirical * 32.0 / 33.0 - rate).abs() < 0.001);
    }
}
