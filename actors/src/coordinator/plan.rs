//! Planning a generation: who is in the new ring, and where each piece of the
//! committed state comes from. Pure functions, so every rule is unit-tested.
//!
//! The committed state is always held in the layout of the generation that is
//! running: rank `i` of `W` holds its own piece and a mirror of piece `i − 1`
//! (mod W), both as of the last committed step (`crate::pieces`). So piece `i`
//! survives if node `i` or node `i + 1` does.

use std::collections::HashSet;

use shoal_collectives::membership::Restore;

/// Who forms the next generation and how each member restores its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextGeneration {
    /// Member names by new rank.
    pub ranks: Vec<String>,
    /// Each member's restore, by new rank.
    pub restores: Vec<Restore>,
    /// The drained nodes that leave now.
    pub leaving: Vec<String>,
    /// Whether some piece of the committed state was lost with its mirror.
    pub lost_state: bool,
}

/// Drained nodes that can leave at this boundary: a node may leave only while the
/// node after it stays (it holds the leaver's mirror), and at least one node stays.
pub fn can_leave(current: &[String], draining: &HashSet<String>) -> HashSet<String> {
    let w = current.len();
    let mut leaving: HashSet<String> = HashSet::new();
    for (i, name) in current.iter().enumerate() {
        if !draining.contains(name) || leaving.len() + 1 >= w {
            continue;
        }
        let next = &current[(i + 1) % w];
        let prev = &current[(i + w - 1) % w];
        // The next node holds this one's mirror, and this one holds the previous
        // one's: neither may leave with it.
        if next != name && !leaving.contains(next) && !leaving.contains(prev) {
            leaving.insert(name.clone());
        }
    }
    leaving
}

/// Plans the generation after the running one, whose members by rank are
/// `members` (empty before the first): members that are `alive` and not `leaving`
/// keep their order, then the `joining` nodes. `pieces`: the members by rank of
/// the generation whose layout holds the committed state (the last one that
/// committed a step since the state was last rebuilt from scratch or a
/// checkpoint), and of those only the ones in `alive` still hold their pieces.
pub fn next_generation(
    members: &[String],
    pieces: Option<&[String]>,
    alive: &HashSet<String>,
    leaving: &HashSet<String>,
    joining: &[String],
) -> NextGeneration {
    let stays = |n: &String| alive.contains(n) && !leaving.contains(n);
    let ranks: Vec<String> = members
        .iter()
        .filter(|n| stays(n))
        .chain(joining.iter().filter(|n| !members.contains(n)))
        .cloned()
        .collect();
    // Piece i of the layout comes from its owner or from the owner's next
    // neighbour, whichever stays.
    let mut contribute: Vec<Vec<u32>> = vec![Vec::new(); ranks.len()];
    let mut lost_state = pieces.is_none();
    let layout = pieces.unwrap_or_default();
    let w = layout.len();
    for i in 0..w {
        let holder = [i, (i + 1) % w]
            .into_iter()
            .filter(|&h| stays(&layout[h]))
            .find_map(|h| ranks.iter().position(|n| *n == layout[h]));
        match holder {
            Some(r) => contribute[r].push(i as u32),
            None => lost_state = true,
        }
    }
    let restores = if lost_state {
        vec![Restore::Checkpoint; ranks.len()]
    } else {
        contribute
            .into_iter()
            .map(|contribute| Restore::Pieces {
                world: w as u32,
                contribute,
            })
            .collect()
    };
    let mut leaving: Vec<String> = members
        .iter()
        .filter(|n| leaving.contains(*n) && alive.contains(*n))
        .cloned()
        .collect();
    leaving.sort();
    NextGeneration {
        ranks,
        restores,
        leaving,
        lost_state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn pieces(world: u32, c: &[u32]) -> Restore {
        Restore::Pieces {
            world,
            contribute: c.to_vec(),
        }
    }

    #[test]
    fn a_lost_node_is_restored_from_its_mirror() {
        let cur = names(&["a", "b", "c"]);
        let next = next_generation(&cur, Some(&cur), &set(&["a", "c"]), &set(&[]), &[]);
        assert_eq!(next.ranks, names(&["a", "c"]));
        // b's piece (1) is mirrored on c.
        assert_eq!(next.restores, vec![pieces(3, &[0]), pieces(3, &[1, 2])]);
        assert!(!next.lost_state);
        // The last rank's mirror is on rank 0.
        let next = next_generation(&cur, Some(&cur), &set(&["a", "b"]), &set(&[]), &[]);
        assert_eq!(next.restores, vec![pieces(3, &[0, 2]), pieces(3, &[1])]);
    }

    #[test]
    fn joiners_come_last_and_contribute_nothing() {
        let cur = names(&["a", "b"]);
        let next = next_generation(
            &cur,
            Some(&cur),
            &set(&["a", "b", "d"]),
            &set(&[]),
            &names(&["d"]),
        );
        assert_eq!(next.ranks, names(&["a", "b", "d"]));
        assert_eq!(
            next.restores,
            vec![pieces(2, &[0]), pieces(2, &[1]), pieces(2, &[])]
        );
    }

    #[test]
    fn losing_a_node_and_its_mirror_falls_back_to_the_checkpoint() {
        let cur = names(&["a", "b", "c", "d"]);
        let next = next_generation(&cur, Some(&cur), &set(&["a", "d"]), &set(&[]), &[]);
        assert!(next.lost_state);
        assert_eq!(next.restores, vec![Restore::Checkpoint; 2]);
        // Non-adjacent losses are fine.
        let next = next_generation(&cur, Some(&cur), &set(&["a", "c"]), &set(&[]), &[]);
        assert!(!next.lost_state);
        // A generation that never held a state restores from the checkpoint.
        let next = next_generation(&cur, None, &set(&["a", "b", "c", "d"]), &set(&[]), &[]);
        assert!(next.lost_state);
        // The pieces may be in an older layout than the running members'.
        let old = names(&["a", "b", "e"]);
        let next = next_generation(
            &cur,
            Some(&old),
            &set(&["a", "b", "c", "d"]),
            &set(&[]),
            &[],
        );
        assert_eq!(
            next.restores,
            vec![
                pieces(3, &[0, 2]),
                pieces(3, &[1]),
                pieces(3, &[]),
                pieces(3, &[])
            ]
        );
    }

    #[test]
    fn drains_never_take_a_piece_and_its_mirror_and_leave_someone() {
        let cur = names(&["a", "b", "c", "d"]);
        assert_eq!(can_leave(&cur, &set(&["b"])), set(&["b"]));
        let two = can_leave(&cur, &set(&["b", "c"]));
        assert_eq!(two.len(), 1, "{two:?}");
        assert_eq!(can_leave(&cur, &set(&["a", "c"])), set(&["a", "c"]));
        assert_eq!(can_leave(&names(&["a"]), &set(&["a"])), set(&[]));
        assert_eq!(can_leave(&names(&["a", "b"]), &set(&["a", "b"])).len(), 1);
        let leaving = set(&["b"]);
        let next = next_generation(&cur, Some(&cur), &set(&["a", "b", "c", "d"]), &leaving, &[]);
        assert_eq!(next.ranks, names(&["a", "c", "d"]));
        assert_eq!(next.leaving, names(&["b"]));
        assert_eq!(
            next.restores,
            vec![pieces(4, &[0]), pieces(4, &[1, 2]), pieces(4, &[3])]
        );
    }
}
