//! A check from outside: a character n-gram model trained on the start of a long stream cannot
//! beat the floor on the rest of it (no predictor can, in expectation), and for the domains it
//! can model (grammar, noise) the best of its orders gets close to the floor, so the floor is
//! not too low either.

use std::collections::HashMap;

use super::SyntheticCorpus;

/// Longest context the model uses, in characters.
const ORDER: usize = 7;
/// Interpolated (Witten–Bell) n-gram counts of orders 0..=ORDER.
struct NGram {
    /// (order, packed context, next byte) → count.
    joint: HashMap<(usize, u64, u8), u32>,
    /// (order, packed context) → (count, number of distinct next bytes).
    context: HashMap<(usize, u64), (u32, u32)>,
}

/// The last `order` bytes before position `i`, packed into a u64.
fn pack(tokens: &[u32], i: usize, order: usize) -> u64 {
    tokens[i - order..i]
        .iter()
        .fold(0u64, |acc, &t| (acc << 8) | u64::from(t))
}

impl NGram {
    fn train(tokens: &[u32]) -> Self {
        let mut joint = HashMap::new();
        let mut context = HashMap::new();
        for i in ORDER..tokens.len() {
            for order in 0..=ORDER {
                let ctx = pack(tokens, i, order);
                let seen = joint.entry((order, ctx, tokens[i] as u8)).or_insert(0);
                *seen += 1;
                let new_type = u32::from(*seen == 1);
                let (count, types) = context.entry((order, ctx)).or_insert((0, 0));
                *count += 1;
                *types += new_type;
            }
        }
        NGram { joint, context }
    }

    /// p(tokens[i] | the k bytes before it) for every k in 0..=ORDER, interpolating from order
    /// 0 up: each order mixes its counts with the lower order's estimate, weighted by the number
    /// of distinct continuations it has seen (Witten–Bell), so sparse contexts lean on shorter ones.
    fn probabilities(&self, tokens: &[u32], i: usize) -> [f64; ORDER + 1] {
        let mut out = [0.0; ORDER + 1];
        let mut p = 1.0 / 256.0;
        for (order, slot) in out.iter_mut().enumerate() {
            let ctx = pack(tokens, i, order);
            if let Some(&(c, types)) = self.context.get(&(order, ctx)) {
                let cx = self
                    .joint
                    .get(&(order, ctx, tokens[i] as u8))
                    .copied()
                    .unwrap_or(0);
                p = (f64::from(cx) + f64::from(types) * p) / f64::from(c + types);
            }
            *slot = p;
        }
        out
    }

    /// Mean −ln p over the tokens from ORDER on, for each context length 0..=ORDER.
    fn cross_entropies(&self, tokens: &[u32]) -> [f64; ORDER + 1] {
        let mut sums = [0.0; ORDER + 1];
        for i in ORDER..tokens.len() {
            for (sum, p) in sums.iter_mut().zip(self.probabilities(tokens, i)) {
                *sum -= p.ln();
            }
        }
        sums.map(|s| s / (tokens.len() - ORDER) as f64)
    }
}

#[test]
fn ngram_cross_entropy_respects_the_floors() {
    let corpus = SyntheticCorpus::new(123);
    for &name in SyntheticCorpus::domain_names() {
        let (tokens, floor) = corpus.generate(name, 240_000).expect("generate");
        let (train, test) = tokens.split_at(200_000);
        let model = NGram::train(train);
        let mut best = f64::INFINITY;
        for (max_order, ce) in model.cross_entropies(test).into_iter().enumerate() {
            println!("{name}: floor {floor:.4}, order {max_order} cross-entropy {ce:.4}");
            assert!(
                ce >= floor - 0.02,
                "{name}: order {max_order}: {ce} beats floor {floor}"
            );
            best = best.min(ce);
        }
        if name == "grammar" || name == "noise" {
            assert!(
                best <= floor + 0.15,
                "{name}: best n-gram {best} far above floor {floor}"
            );
        }
    }
}
