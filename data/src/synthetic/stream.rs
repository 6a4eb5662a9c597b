//! The bookkeeping every synthetic domain shares: a token stream that records, for each
//! token, the true conditional entropy of that token given everything before it, and the
//! surprisal the true model assigns to it; and weighted choices between strings that emit
//! their characters with those two numbers computed exactly.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What the true model knows about one emitted character (nats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Step {
    /// Entropy of the character's distribution given the full past.
    pub entropy: f64,
    /// −ln of the probability the true distribution gives the character that was emitted.
    pub surprisal: f64,
}

impl Step {
    /// A character fully determined by the past.
    pub const DETERMINED: Step = Step {
        entropy: 0.0,
        surprisal: 0.0,
    };
}

/// A byte-level token stream of a fixed length, with entropy and surprisal totals.
#[derive(Debug)]
pub(crate) struct Stream {
    /// The tokens so far (byte values).
    tokens: Vec<u32>,
    /// How many tokens the stream holds when full.
    capacity: usize,
    /// Sum of the per-token conditional entropies.
    entropy: f64,
    /// Sum of the per-token surprisals.
    surprisal: f64,
}

impl Stream {
    /// An empty stream that fills up at `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Stream {
            tokens: Vec::with_capacity(capacity),
            capacity,
            entropy: 0.0,
            surprisal: 0.0,
        }
    }

    /// Whether the stream holds `capacity` tokens; later pushes are dropped.
    pub fn is_full(&self) -> bool {
        self.tokens.len() >= self.capacity
    }

    /// Appends one byte with what the true model knows about it (dropped when full).
    pub fn push(&mut self, byte: u8, step: Step) {
        if !self.is_full() {
            self.tokens.push(u32::from(byte));
            self.entropy += step.entropy;
            self.surprisal += step.surprisal;
        }
    }

    /// Appends bytes that are fully determined by the past.
    pub fn push_determined(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b, Step::DETERMINED);
        }
    }

    /// The tokens, the mean conditional entropy and the mean surprisal (0 for an empty stream).
    pub fn finish(self) -> (Vec<u32>, f64, f64) {
        let n = self.tokens.len().max(1) as f64;
        (self.tokens, self.entropy / n, self.surprisal / n)
    }
}

/// One option of a [`ChoiceSet`]: its bytes and, per byte, what the true model knows.
#[derive(Debug, Clone)]
struct Choice {
    /// The string emitted when this option is drawn.
    bytes: Vec<u8>,
    /// Probability of the option.
    probability: f64,
    /// Entropy and surprisal of each byte given the bytes of the option before it.
    steps: Vec<Step>,
}

/// A weighted choice between non-empty, prefix-free strings (no option is a prefix of
/// another), so that a reader of the stream knows where the chosen string ends.
///
/// When the option is emitted character by character, the true distribution of the next
/// character given the characters so far is the total probability of the options that start
/// with those characters, grouped by their next character. Its entropy is exact; summed over
/// the characters of an option it averages (over draws) to the entropy of the choice.
#[derive(Debug, Clone)]
pub(crate) struct ChoiceSet {
    /// The options, in the order given.
    choices: Vec<Choice>,
}

impl ChoiceSet {
    /// Builds the set from (string, weight) pairs; weights need not sum to one.
    /// The caller guarantees the strings are non-empty and prefix-free and the weights positive.
    pub fn new(options: &[(Vec<u8>, f64)]) -> Self {
        debug_assert!(options.iter().all(|(b, w)| !b.is_empty() && *w > 0.0));
        debug_assert!(is_prefix_free(options.iter().map(|(b, _)| b.as_slice())));
        let total: f64 = options.iter().map(|(_, w)| w).sum();
        let probabilities: Vec<f64> = options.iter().map(|(_, w)| w / total).collect();
        let choices = options
            .iter()
            .zip(&probabilities)
            .map(|((bytes, _), &probability)| Choice {
                steps: (0..bytes.len())
                    .map(|j| step_at(options, &probabilities, bytes, j))
                    .collect(),
                bytes: bytes.clone(),
                probability,
            })
            .collect();
        ChoiceSet { choices }
    }

    /// A set of single bytes (each must be distinct), with weights.
    pub fn of_bytes(options: &[(u8, f64)]) -> Self {
        let options: Vec<(Vec<u8>, f64)> = options.iter().map(|&(b, w)| (vec![b], w)).collect();
        ChoiceSet::new(&options)
    }

    /// Draws an option index by probability.
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> usize {
        let u: f64 = rng.random();
        let mut cumulative = 0.0;
        for (i, c) in self.choices.iter().enumerate() {
            cumulative += c.probability;
            if u < cumulative {
                return i;
            }
        }
        self.choices.len() - 1
    }

    /// Emits option `index` into the stream with its exact per-character entropies.
    pub fn emit(&self, index: usize, stream: &mut Stream) {
        let choice = &self.choices[index];
        for (&b, &step) in choice.bytes.iter().zip(&choice.steps) {
            stream.push(b, step);
        }
    }

    /// Draws an option, emits it and returns its index.
    pub fn draw_and_emit(&self, rng: &mut ChaCha8Rng, stream: &mut Stream) -> usize {
        let index = self.draw(rng);
        self.emit(index, stream);
        index
    }

    /// (probability, length in bytes) of each option: what analytic entropy rates need.
    #[cfg(test)]
    pub fn options(&self) -> Vec<(f64, usize)> {
        self.choices
            .iter()
            .map(|c| (c.probability, c.bytes.len()))
            .collect()
    }
}

/// Entropy and surprisal of byte `j` of `bytes` given bytes `..j`, under the options.
fn step_at(options: &[(Vec<u8>, f64)], probabilities: &[f64], bytes: &[u8], j: usize) -> Step {
    let prefix = &bytes[..j];
    let mut by_next = [0.0f64; 256];
    let mut mass = 0.0;
    for ((other, _), &p) in options.iter().zip(probabilities) {
        if other.len() > j && other.starts_with(prefix) {
            by_next[usize::from(other[j])] += p;
            mass += p;
        }
    }
    let entropy = by_next
        .iter()
        .filter(|&&m| m > 0.0)
        .map(|&m| -(m / mass) * (m / mass).ln())
        .sum::<f64>()
        .max(0.0);
    let surprisal = -(by_next[usize::from(bytes[j])] / mass).ln();
    Step {
        entropy,
        surprisal: surprisal.max(0.0),
    }
}

/// Whether no string is a prefix of another (or equal to it).
pub(crate) fn is_prefix_free<'a>(strings: impl Iterator<Item = &'a [u8]> + Clone) -> bool {
    strings.clone().enumerate().all(|(i, a)| {
        strings
            .clone()
            .enumerate()
            .all(|(j, b)| i == j || !b.starts_with(a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn steps_split_the_choice_entropy_over_characters() {
        // "ab", "ac", "d" equally likely: first char {a: 2/3, d: 1/3}, then {b, c} after 'a'.
        let set = ChoiceSet::new(&[
            (b"ab".to_vec(), 1.0),
            (b"ac".to_vec(), 1.0),
            (b"d".to_vec(), 1.0),
        ]);
        let h1 = -(2.0f64 / 3.0) * (2.0f64 / 3.0).ln() - (1.0f64 / 3.0) * (1.0f64 / 3.0).ln();
        let ab = &set.choices[0].steps;
        assert!((ab[0].entropy - h1).abs() < 1e-12);
        assert!((ab[1].entropy - 2f64.ln()).abs() < 1e-12);
        assert!((ab[0].surprisal + ab[1].surprisal - 3f64.ln()).abs() < 1e-12);
        let d = &set.choices[2].steps;
        assert!((d[0].surprisal - 3f64.ln()).abs() < 1e-12);
        // Expected sum of per-character entropies equals the entropy of the choice.
        let expected: f64 = set
            .choices
            .iter()
            .map(|c| c.probability * c.steps.iter().map(|s| s.entropy).sum::<f64>())
            .sum();
        assert!((expected - 3f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn draws_follow_weights() {
        let set = ChoiceSet::of_bytes(&[(b'x', 1.0), (b'y', 3.0)]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let ys = (0..10_000).filter(|_| set.draw(&mut rng) == 1).count();
        assert!((ys as f64 / 10_000.0 - 0.75).abs() < 0.02);
    }

    #[test]
    fn stream_stops_at_capacity() {
        let mut s = Stream::new(3);
        s.push_determined(b"abcd");
        assert!(s.is_full());
        let (tokens, h, _) = s.finish();
        assert_eq!(tokens, vec![97, 98, 99]);
        assert_eq!(h, 0.0);
    }

    #[test]
    fn prefix_free_check() {
        let ok: [&[u8]; 3] = [b"ab", b"ac", b"b"];
        let bad: [&[u8]; 2] = [b"ab", b"abc"];
        let dup: [&[u8]; 2] = [b"ab", b"ab"];
        assert!(is_prefix_free(ok.iter().copied()));
        assert!(!is_prefix_free(bad.iter().copied()));
        assert!(!is_prefix_free(dup.iter().copied()));
    }
}
