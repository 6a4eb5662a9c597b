//! Near-duplicate clusters from MinHash signatures: LSH banding, verification of the
//! candidates by their estimated Jaccard similarity, and union-find.
//!
//! Band `k` of a signature is rows `k·r .. (k+1)·r`. For each band in turn, every document's
//! band is hashed to 64 bits, the (hash, id) pairs are sorted (in parallel), and each run of
//! equal hashes is a bucket of candidates. In a bucket (ids ascending), a document is
//! compared with one representative of each cluster met earlier in that bucket (at most
//! [`MAX_REPRESENTATIVES`]), skipping those it is already joined to; a pair whose
//! estimated Jaccard is at or above the threshold is joined. Comparing with one member
//! per cluster (instead of all members) keeps a bucket of k near-copies at O(k) work, and
//! the cap keeps a bucket of unrelated documents that happen to share a band at O(k)
//! too. Memory: the signatures plus 16 bytes per document for the band being sorted and 12
//! for the union-find and the matches.
//!
//! Union-find keeps the smallest id as the root of every cluster; ids are given in input
//! order, so the kept document of a cluster is its first in input order.

use rayon::prelude::*;

use super::minhash::{estimate_jaccard, mix64};

/// Cluster representatives compared per document in one bucket.
pub const MAX_REPRESENTATIVES: usize = 64;

/// The recall asked of the default banding at the threshold: the probability that a pair
/// whose Jaccard similarity equals the threshold shares at least one band.
pub const TARGET_RECALL: f64 = 0.9;

/// How a signature is cut into bands for locality-sensitive hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LshParams {
    /// Number of bands `b`.
    pub bands: usize,
    /// Signature rows per band `r` (`b·r` is at most the number of permutations).
    pub rows: usize,
}

impl LshParams {
    /// The banding with the most rows per band (the fewest false candidates to verify)
    /// for which a pair at `threshold` is a candidate with probability at least
    /// [`TARGET_RECALL`], using `b = P / r` bands. For P = 128 at 0.8: 16 bands of 8 rows.
    /// (datasketch's weighted-error optimum, 9 × 13, finds only 40% of the pairs at 0.8:
    /// it does not verify candidates, so it must avoid false ones; we verify, so we can
    /// favour recall.)
    pub fn for_threshold(threshold: f64, permutations: usize) -> Self {
        let permutations = permutations.max(1);
        let mut best = LshParams {
            bands: permutations,
            rows: 1,
        };
        for rows in 1..=permutations {
            let candidate = LshParams {
                bands: permutations / rows,
                rows,
            };
            if candidate.candidate_probability(threshold) >= TARGET_RECALL {
                best = candidate;
            }
        }
        best
    }

    /// `bands` bands of `P / bands` rows; `None` unless `1 <= bands <= P`.
    pub fn with_bands(bands: usize, permutations: usize) -> Option<Self> {
        (bands >= 1 && bands <= permutations).then(|| LshParams {
            bands,
            rows: permutations / bands,
        })
    }

    /// Probability that two documents of Jaccard similarity `jaccard` agree on all rows of
    /// at least one band: `1 - (1 - j^r)^b`.
    pub fn candidate_probability(&self, jaccard: f64) -> f64 {
        1.0 - (1.0 - jaccard.powi(self.rows as i32)).powi(self.bands as i32)
    }
}

/// The signatures of all documents in one flat buffer: document `i` is
/// `data[i·P .. (i+1)·P]`.
#[derive(Clone, Debug, Default)]
pub struct Signatures {
    permutations: usize,
    data: Vec<u32>,
}

impl Signatures {
    /// An empty set of signatures of `permutations` values each.
    pub fn new(permutations: usize) -> Self {
        Signatures {
            permutations,
            data: Vec::new(),
        }
    }

    /// Appends one signature (its length must be `P`).
    pub fn push(&mut self, signature: &[u32]) {
        debug_assert_eq!(signature.len(), self.permutations);
        self.data.extend_from_slice(signature);
    }

    /// Appends `n` signatures of zeros and returns them, to be filled in.
    pub fn extend_zeroed(&mut self, n: usize) -> &mut [u32] {
        let start = self.data.len();
        self.data.resize(start + n * self.permutations, 0);
        &mut self.data[start..]
    }

    /// Number of signatures.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.permutations).unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Signature `i`.
    pub fn get(&self, i: u32) -> &[u32] {
        let start = i as usize * self.permutations;
        &self.data[start..start + self.permutations]
    }

    /// Bytes of the signatures (`len · P · 4`).
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// Disjoint sets over `0..n` whose root is always the smallest member.
#[derive(Clone, Debug)]
pub struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    /// `n` singletons.
    pub fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
        }
    }

    /// The root (smallest member) of `x`'s set, halving the path on the way.
    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    /// Joins the sets of `x` and `y`; returns whether they were apart.
    pub fn union(&mut self, x: u32, y: u32) -> bool {
        let (rx, ry) = (self.find(x), self.find(y));
        if rx == ry {
            return false;
        }
        let (lo, hi) = if rx < ry { (rx, ry) } else { (ry, rx) };
        self.parent[hi as usize] = lo;
        true
    }
}

/// The verified pair through which a document first joined a cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    /// The other document of the pair.
    pub other: u32,
    /// Their estimated Jaccard similarity.
    pub jaccard: f64,
}

/// Near-duplicate clusters of a set of signatures.
#[derive(Debug)]
pub struct Clusters {
    sets: UnionFind,
    matches: Vec<(u32, f32)>,
    /// Candidate pairs whose signatures were compared.
    pub compared_pairs: u64,
    /// Compared pairs at or above the threshold.
    pub similar_pairs: u64,
}

impl Clusters {
    /// The kept document of `i`'s cluster (its first in input order; `i` itself when `i`
    /// is kept).
    pub fn kept(&mut self, i: u32) -> u32 {
        self.sets.find(i)
    }

    /// The first verified pair `i` was part of, if any.
    pub fn first_match(&self, i: u32) -> Option<Match> {
        let (other, jaccard) = self.matches[i as usize];
        (other != u32::MAX).then_some(Match {
            other,
            jaccard: f64::from(jaccard),
        })
    }
}

/// Hash of band `band` of a signature.
fn band_hash(rows: &[u32], band: usize) -> u64 {
    rows.iter().fold(mix64(band as u64 + 1), |h, &v| {
        mix64(h.rotate_left(23) ^ u64::from(v))
    })
}

/// Clusters the documents whose estimated Jaccard similarity is at or above `threshold`
/// (see the module doc), hashing and sorting the bands on the current rayon pool.
pub fn cluster(signatures: &Signatures, lsh: LshParams, threshold: f64) -> Clusters {
    let n = signatures.len();
    let p = signatures.permutations;
    let mut clusters = Clusters {
        sets: UnionFind::new(n),
        matches: vec![(u32::MAX, 0.0); n],
        compared_pairs: 0,
        similar_pairs: 0,
    };
    // At or above the threshold, in whole agreeing positions (no rounding surprises).
    let needed = (threshold * p as f64 - 1e-9).ceil().max(0.0) as usize;
    let mut keys: Vec<(u64, u32)> = Vec::new();
    let mut representatives: Vec<u32> = Vec::new();
    for band in 0..lsh.bands {
        let rows = band * lsh.rows..(band + 1) * lsh.rows;
        keys.clear();
        keys.par_extend(
            (0..n as u32)
                .into_par_iter()
                .map(|i| (band_hash(&signatures.get(i)[rows.clone()], band), i)),
        );
        keys.par_sort_unstable();
        for bucket in keys.chunk_by(|x, y| x.0 == y.0).filter(|b| b.len() > 1) {
            representatives.clear();
            representatives.push(bucket[0].1);
            for &(_, j) in &bucket[1..] {
                let mut joined = false;
                for &rep in &representatives {
                    if clusters.sets.find(rep) == clusters.sets.find(j) {
                        joined = true;
                        continue;
                    }
                    clusters.compared_pairs += 1;
                    let (x, y) = (signatures.get(rep), signatures.get(j));
                    let equal = x.iter().zip(y).filter(|(a, b)| a == b).count();
                    if equal >= needed {
                        clusters.similar_pairs += 1;
                        clusters.sets.union(rep, j);
                        let jaccard = estimate_jaccard(x, y) as f32;
                        for (a, b) in [(j, rep), (rep, j)] {
                            if clusters.matches[a as usize].0 == u32::MAX {
                                clusters.matches[a as usize] = (b, jaccard);
                            }
                        }
                        joined = true;
                    }
                }
                if !joined && representatives.len() < MAX_REPRESENTATIVES {
                    representatives.push(j);
                }
            }
        }
    }
    clusters
}

#[cfg(test)]
mod tests {
    use super::super::minhash::{MinHasher, splitmix64};
    use super::*;

    #[test]
    fn default_banding_for_0_8_is_16_by_8() {
        assert_eq!(
            LshParams::for_threshold(0.8, 128),
            LshParams { bands: 16, rows: 8 }
        );
        for t in [0.5, 0.7, 0.8, 0.9] {
            let lsh = LshParams::for_threshold(t, 128);
            assert!(lsh.bands * lsh.rows <= 128);
            assert!(lsh.candidate_probability(t) >= TARGET_RECALL);
            // One more row per band would miss the target.
            let fewer = LshParams {
                bands: 128 / (lsh.rows + 1),
                rows: lsh.rows + 1,
            };
            assert!(fewer.candidate_probability(t) < TARGET_RECALL, "{t}");
        }
        assert_eq!(
            LshParams::with_bands(9, 128),
            Some(LshParams { bands: 9, rows: 14 })
        );
        assert_eq!(LshParams::with_bands(0, 128), None);
        assert_eq!(LshParams::with_bands(129, 128), None);
    }

    #[test]
    fn union_find_keeps_the_smallest_as_root() {
        let mut uf = UnionFind::new(6);
        assert!(uf.union(4, 5));
        assert!(uf.union(5, 2));
        assert!(!uf.union(4, 2));
        assert!(uf.union(3, 1));
        assert_eq!([uf.find(5), uf.find(4), uf.find(2)], [2, 2, 2]);
        assert_eq!(uf.find(3), 1);
        assert!(uf.union(3, 4));
        assert!((1..6).all(|i| uf.find(i) == 1));
        assert_eq!(uf.find(0), 0);
    }

    /// Documents as shingle sets: `groups` originals of 200 shingles, each followed by
    /// copies that replace `changed` of the shingles (Jaccard (200-c)/(200+c)).
    fn planted(groups: usize, copies: usize, changed: usize) -> (Signatures, Vec<usize>) {
        let hasher = MinHasher::new(128);
        let mut state = 5;
        let mut sigs = Signatures::new(128);
        let mut group_of = Vec::new();
        let mut sig = vec![0; 128];
        for g in 0..groups {
            let original: Vec<u32> = (0..200).map(|_| splitmix64(&mut state) as u32).collect();
            hasher.sign(&original, &mut sig);
            sigs.push(&sig);
            group_of.push(g);
            for _ in 0..copies {
                let mut copy = original.clone();
                for k in 0..changed {
                    let at = (splitmix64(&mut state) % 200) as usize;
                    copy[at] = splitmix64(&mut state) as u32 ^ k as u32;
                }
                hasher.sign(&copy, &mut sig);
                sigs.push(&sig);
                group_of.push(g);
            }
        }
        (sigs, group_of)
    }

    #[test]
    fn lsh_finds_planted_near_duplicates_and_keeps_the_first() {
        // At most 8 of 200 shingles changed: Jaccard >= 192/208 = 0.92.
        let (sigs, group_of) = planted(300, 2, 8);
        let lsh = LshParams::for_threshold(0.8, 128);
        let mut clusters = cluster(&sigs, lsh, 0.8);
        let mut found = 0;
        for i in 0..sigs.len() as u32 {
            let kept = clusters.kept(i);
            assert_eq!(
                group_of[kept as usize], group_of[i as usize],
                "no false merge"
            );
            if kept != i {
                found += 1;
                assert_eq!(kept as usize % 3, 0, "the original (first) is kept");
                let m = clusters
                    .first_match(i)
                    .expect("a dropped document has a match");
                assert!(m.jaccard >= 0.8);
            }
        }
        // 600 planted copies; a copy is missed only if no band agrees (< 1e-6 here).
        assert!(found >= 597, "found {found} of 600");
        assert!(clusters.similar_pairs >= found as u64);
    }

    #[test]
    fn dissimilar_documents_stay_apart() {
        // 120 of 200 shingles changed: Jaccard <= 80/320 = 0.25.
        let (sigs, _) = planted(100, 1, 120);
        let mut clusters = cluster(&sigs, LshParams::for_threshold(0.8, 128), 0.8);
        assert!((0..sigs.len() as u32).all(|i| clusters.kept(i) == i));
        assert_eq!(clusters.similar_pairs, 0);
    }

    #[test]
    fn chains_join_into_one_cluster_rooted_at_the_first() {
        // 0 ~ 1 and 1 ~ 2 are similar, 0 and 2 less so; all end in 0's cluster.
        let hasher = MinHasher::new(128);
        let window = |from: u64| {
            (from..from + 300)
                .map(|x| mix64(x) as u32)
                .collect::<Vec<_>>()
        };
        let docs = [window(0), window(20), window(40)];
        let mut sigs = Signatures::new(128);
        let mut sig = vec![0; 128];
        for d in &docs {
            hasher.sign(d, &mut sig);
            sigs.push(&sig);
        }
        // Exact Jaccard: neighbours 280/320 = 0.875, ends 260/340 = 0.76.
        let mut clusters = cluster(&sigs, LshParams { bands: 32, rows: 4 }, 0.8);
        assert_eq!([clusters.kept(1), clusters.kept(2)], [0, 0]);
    }
}
