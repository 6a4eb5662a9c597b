//! `arithmetic`: lines `a+b=c\n` with `a` and `b` independent and uniform in 0..=99 and
//! `c = a + b` in decimal.
//!
//! Entropy: each line carries 2·ln 100 nats, all in the operands; `=`-terminated `b` and the
//! answer and newline are determined by the past. The operand strings ("a+" for every `a`)
//! are prefix-free, so each character's entropy is computed exactly by [`ChoiceSet`] (the first
//! digit of `a` has entropy over {0: 1%, 1–9: 11% each}, the second over "digit or '+'", ...).
//! Averaged over a long stream this is 2·ln 100 / E[line length] = 9.2103 / 9.2895 ≈ 0.9915
//! nats per character. Context needed: the current line, at most 10 characters.

use rand_chacha::ChaCha8Rng;

use super::stream::{ChoiceSet, Stream};

/// Largest operand.
pub(crate) const MAX_OPERAND: u32 = 99;

/// Writes lines `a+b=c\n` into the stream until it is full.
pub(crate) fn generate(rng: &mut ChaCha8Rng, stream: &mut Stream) {
    let operand = |terminator: char| {
        let options: Vec<(Vec<u8>, f64)> = (0..=MAX_OPERAND)
            .map(|v| (format!("{v}{terminator}").into_bytes(), 1.0))
            .collect();
        ChoiceSet::new(&options)
    };
    let first = operand('+');
    let second = operand('=');
    while !stream.is_full() {
        // Option i is the operand i.
        let a = first.draw_and_emit(rng, stream);
        let b = second.draw_and_emit(rng, stream);
        stream.push_determined(format!("{}\n", a + b).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The entropy rate recomputed from the generation parameters by enumerating every line.
    fn analytic_rate() -> f64 {
        let n = f64::from(MAX_OPERAND + 1);
        let mut chars = 0.0;
        for a in 0..=MAX_OPERAND {
            for b in 0..=MAX_OPERAND {
                chars += format!("{a}+{b}={}\n", a + b).len() as f64;
            }
        }
        2.0 * n.ln() / (chars / (n * n))
    }

    #[test]
    fn analytic_rate_is_as_documented() {
        assert!((analytic_rate() - 9.210_340_371_976_184 / 9.2895).abs() < 1e-9);
    }

    #[test]
    fn lines_are_correct_sums_and_floor_matches() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut stream = Stream::new(300_000);
        generate(&mut rng, &mut stream);
        let (tokens, floor, oracle) = stream.finish();
        let text: String = tokens.iter().map(|&t| t as u8 as char).collect();
        let mut lines = 0;
        let mut first_digit_zero = 0;
        // The last line may be cut off by the stream's length.
        for line in text.split('\n').filter(|l| l.contains('=')).take(20_000) {
            let (lhs, c) = line.split_once('=').expect("=");
            let (a, b) = lhs.split_once('+').expect("+");
            let (a, b, c): (u32, u32, u32) = (
                a.parse().expect("a"),
                b.parse().expect("b"),
                c.parse().expect("c"),
            );
            assert!(a <= MAX_OPERAND && b <= MAX_OPERAND);
            assert_eq!(a + b, c);
            lines += 1;
            first_digit_zero += usize::from(a == 0);
        }
        assert_eq!(lines, 20_000);
        assert!(first_digit_zero > 120 && first_digit_zero < 290);
        let rate = analytic_rate();
        assert!((floor - rate).abs() < 0.01, "floor {floor} rate {rate}");
        assert!((oracle - rate).abs() < 0.02, "oracle {oracle} rate {rate}");
    }
}
