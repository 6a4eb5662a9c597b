//! `grammar`: sentences of a fixed random language. A first-order Markov chain over words:
//! each sentence starts from a fixed distribution over a few first words, and each word is
//! followed by one of 2–4 successor words or by the end of the sentence. Words are 2–5
//! lowercase letters and prefix-free (no word is a prefix of another), separated by a space;
//! a sentence ends with ".\n".
//!
//! Entropy: the text determines the word sequence, so given the full past the reader knows the
//! current state (the previous word, or "sentence start") and how much of the next transition's
//! string has been written. The transition strings of a state (" word" per successor, ".\n"
//! for the end, "word" from the start) are prefix-free, so the true distribution of the next
//! character is the total probability of the successors consistent with what was written,
//! grouped by next character ([`ChoiceSet`]). Each character's entropy is computed that way; once
//! a word is identified its remaining letters cost nothing. Context needed: the previous word
//! and the current one, at most 12 characters.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::stream::{ChoiceSet, Stream, is_prefix_free};

/// Words in the vocabulary.
const WORDS: usize = 32;
/// Shortest word, in letters.
const MIN_WORD_LEN: usize = 2;
/// Longest word, in letters.
const MAX_WORD_LEN: usize = 5;
/// How many different words can start a sentence.
const FIRST_WORDS: usize = 6;
/// Fewest successors of a word (besides the end of the sentence).
const MIN_SUCCESSORS: usize = 2;
/// Most successors of a word (besides the end of the sentence).
const MAX_SUCCESSORS: usize = 4;
/// Range of the probability that a sentence ends after a word.
const END_PROBABILITY: std::ops::Range<f64> = 0.1..0.3;
/// Range of the unnormalized weight of each successor.
const SUCCESSOR_WEIGHT: std::ops::Range<f64> = 0.5..2.0;
/// The state at the start of a sentence; word `w` is state `1 + w`.
const SENTENCE_START: usize = 0;

/// One state of the chain: what can be written next and where each option leads.
struct State {
    /// The transition strings with their probabilities.
    choices: ChoiceSet,
    /// The state each option of `choices` leads to.
    next: Vec<usize>,
}

/// A random language: its states, [`SENTENCE_START`] first.
pub(crate) struct Grammar {
    /// Every state of the chain.
    states: Vec<State>,
}

impl Grammar {
    /// Draws a language from the random stream.
    pub fn random(rng: &mut ChaCha8Rng) -> Self {
        let words = vocabulary(rng);
        let mut states = Vec::with_capacity(WORDS + 1);

        let first = distinct(rng, WORDS, FIRST_WORDS);
        let options: Vec<(Vec<u8>, f64)> = first
            .iter()
            .map(|&w| (words[w].clone(), rng.random_range(SUCCESSOR_WEIGHT)))
            .collect();
        states.push(State {
            choices: ChoiceSet::new(&options),
            next: first.iter().map(|&w| 1 + w).collect(),
        });

        for _ in 0..WORDS {
            let count = rng.random_range(MIN_SUCCESSORS..=MAX_SUCCESSORS);
            let successors = distinct(rng, WORDS, count);
            let weights: Vec<f64> = successors
                .iter()
                .map(|_| rng.random_range(SUCCESSOR_WEIGHT))
                .collect();
            let end = rng.random_range(END_PROBABILITY);
            let total: f64 = weights.iter().sum();
            let mut options: Vec<(Vec<u8>, f64)> = successors
                .iter()
                .zip(&weights)
                .map(|(&w, &weight)| {
                    let mut bytes = vec![b' '];
                    bytes.extend_from_slice(&words[w]);
                    (bytes, (1.0 - end) * weight / total)
                })
                .collect();
            options.push((b".\n".to_vec(), end));
            let mut next: Vec<usize> = successors.iter().map(|&w| 1 + w).collect();
            next.push(SENTENCE_START);
            states.push(State {
                choices: ChoiceSet::new(&options),
                next,
            });
        }
        Grammar { states }
    }

    /// Writes sentences into the stream until it is full, starting at a sentence start.
    pub fn generate(&self, rng: &mut ChaCha8Rng, stream: &mut Stream) {
        let mut state = SENTENCE_START;
        while !stream.is_full() {
            let s = &self.states[state];
            let option = s.choices.draw_and_emit(rng, stream);
            state = s.next[option];
        }
    }

    /// The entropy rate in nats per character of an infinite stream: the stationary average of
    /// each state's choice entropy over the stationary average of the characters it writes.
    #[cfg(test)]
    pub fn entropy_rate(&self) -> f64 {
        let n = self.states.len();
        // Power iteration on the lazy chain (same stationary law, always aperiodic).
        let mut pi = vec![1.0 / n as f64; n];
        for _ in 0..20_000 {
            let mut next = vec![0.0; n];
            for (s, state) in self.states.iter().enumerate() {
                next[s] += 0.5 * pi[s];
                for (&(p, _), &t) in state.choices.options().iter().zip(&state.next) {
                    next[t] += 0.5 * pi[s] * p;
                }
            }
            pi = next;
        }
        let (mut nats, mut chars) = (0.0, 0.0);
        for (s, state) in self.states.iter().enumerate() {
            for (p, len) in state.choices.options() {
                nats -= pi[s] * p * p.ln();
                chars += pi[s] * p * len as f64;
            }
        }
        nats / chars
    }
}

/// `WORDS` distinct, prefix-free words of random lowercase letters.
fn vocabulary(rng: &mut ChaCha8Rng) -> Vec<Vec<u8>> {
    let mut words: Vec<Vec<u8>> = Vec::with_capacity(WORDS);
    while words.len() < WORDS {
        let len = rng.random_range(MIN_WORD_LEN..=MAX_WORD_LEN);
        let word: Vec<u8> = (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect();
        if words
            .iter()
            .all(|w| !w.starts_with(&word) && !word.starts_with(w))
        {
            words.push(word);
        }
    }
    debug_assert!(is_prefix_free(words.iter().map(Vec::as_slice)));
    words
}

/// `k` distinct indices below `n`, in random order (a partial Fisher–Yates shuffle).
fn distinct(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = rng.random_range(i..n);
        all.swap(i, j);
    }
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sentences_look_right() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let grammar = Grammar::random(&mut rng);
        let mut stream = Stream::new(5000);
        grammar.generate(&mut rng, &mut stream);
        let (tokens, _, _) = stream.finish();
        let text: String = tokens.iter().map(|&t| t as u8 as char).collect();
        assert!(
            text.chars()
                .all(|c| c.is_ascii_lowercase() || " .\n".contains(c))
        );
        for sentence in text.split(".\n").take(50) {
            assert!(!sentence.is_empty());
            for word in sentence.split(' ') {
                assert!(
                    (MIN_WORD_LEN..=MAX_WORD_LEN).contains(&word.len()),
                    "{word:?}"
                );
            }
        }
    }

    #[test]
    fn stream_floor_matches_the_stationary_entropy_rate() {
        for seed in [1, 2] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let grammar = Grammar::random(&mut rng);
            let rate = grammar.entropy_rate();
            let mut stream = Stream::new(400_000);
            grammar.generate(&mut rng, &mut stream);
            let (_, floor, oracle) = stream.finish();
            assert!((floor - rate).abs() < 0.01, "floor {floor} rate {rate}");
            assert!((oracle - rate).abs() < 0.02, "oracle {oracle} rate {rate}");
        }
    }
}
