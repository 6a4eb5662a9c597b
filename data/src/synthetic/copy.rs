//! `copy`: lines `s|s\n` where `s` is a random string over the 4 letters `WXYZ` with a length
//! uniform in 4..=20, written twice around a `|`.
//!
//! Entropy: only the first copy carries information. Before writing character `j` of `s`
//! (0-based) the reader knows `j` and that the length is at least `j`; the string ends here with
//! probability q_j = P(L = j | L ≥ j) = 1/(20 − j + 1) for j ≥ 4 (0 before), so the next
//! character is `|` with probability q_j and each letter with (1 − q_j)/4. Its entropy
//! h(q_j) + (1 − q_j)·ln 4 is computed per character ([`ChoiceSet`] of single bytes). The second
//! copy and the newline are determined. Long-run rate: (ln 17 + E[L]·ln 4) / (2·E[L] + 2) with
//! E[L] = 12: (2.8332 + 16.6355) / 26 ≈ 0.7488 nats per character. Context needed: the current
//! line, at most 42 characters.

use rand_chacha::ChaCha8Rng;

use super::stream::{ChoiceSet, Stream};

/// Letters the strings are made of.
pub(crate) const ALPHABET: &[u8] = b"WXYZ";
/// Shortest string.
pub(crate) const MIN_LEN: usize = 4;
/// Longest string.
pub(crate) const MAX_LEN: usize = 20;
/// Written between the two copies.
const SEPARATOR: u8 = b'|';

/// Writes lines `s|s\n` into the stream until it is full.
pub(crate) fn generate(rng: &mut ChaCha8Rng, stream: &mut Stream) {
    // Position j's choice: the letters (unless j is the longest length), then the separator
    // (unless j is below the shortest length).
    let positions: Vec<(ChoiceSet, Vec<u8>)> = (0..=MAX_LEN)
        .map(|j| {
            let end = if j < MIN_LEN {
                0.0
            } else {
                1.0 / (MAX_LEN - j + 1) as f64
            };
            let mut options: Vec<(u8, f64)> = Vec::new();
            if end < 1.0 {
                let each = (1.0 - end) / ALPHABET.len() as f64;
                options.extend(ALPHABET.iter().map(|&b| (b, each)));
            }
            if end > 0.0 {
                options.push((SEPARATOR, end));
            }
            let bytes = options.iter().map(|&(b, _)| b).collect();
            (ChoiceSet::of_bytes(&options), bytes)
        })
        .collect();
    let mut s = Vec::with_capacity(MAX_LEN + 2);
    while !stream.is_full() {
        s.clear();
        loop {
            let (choices, bytes) = &positions[s.len()];
            let byte = bytes[choices.draw_and_emit(rng, stream)];
            if byte == SEPARATOR {
                break;
            }
            s.push(byte);
        }
        s.push(b'\n');
        stream.push_determined(&s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The entropy rate from the generation parameters: (H(L) + E[L]·ln 4) / E[line length].
    fn analytic_rate() -> f64 {
        let lengths = (MAX_LEN - MIN_LEN + 1) as f64;
        let mean_len = (MIN_LEN + MAX_LEN) as f64 / 2.0;
        (lengths.ln() + mean_len * (ALPHABET.len() as f64).ln()) / (2.0 * mean_len + 2.0)
    }

    #[test]
    fn lines_are_copies_with_uniform_lengths_and_floor_matches() {
        assert!((analytic_rate() - 19.468_745_68 / 26.0).abs() < 1e-9);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut stream = Stream::new(300_000);
        generate(&mut rng, &mut stream);
        let (tokens, floor, oracle) = stream.finish();
        let text: String = tokens.iter().map(|&t| t as u8 as char).collect();
        let mut by_len = [0usize; MAX_LEN + 1];
        let lines: Vec<&str> = text.split('\n').collect();
        // The last line may be cut off by the stream's length.
        for line in &lines[..lines.len() - 1] {
            let (a, b) = line.split_once('|').expect("separator");
            assert_eq!(a, b);
            assert!(a.bytes().all(|c| ALPHABET.contains(&c)));
            by_len[a.len()] += 1;
        }
        let n = (lines.len() - 1) as f64;
        for (len, &count) in by_len.iter().enumerate() {
            if len < MIN_LEN {
                assert_eq!(count, 0);
            } else {
                let expected = n / (MAX_LEN - MIN_LEN + 1) as f64;
                assert!(
                    (count as f64 - expected).abs() < 5.0 * expected.sqrt(),
                    "{by_len:?}"
                );
            }
        }
        let rate = analytic_rate();
        assert!((floor - rate).abs() < 0.01, "floor {floor} rate {rate}");
        assert!((oracle - rate).abs() < 0.02, "oracle {oracle} rate {rate}");
    }
}
