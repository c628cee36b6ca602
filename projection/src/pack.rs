//! Packing planned units into transactions that stay within a target's limits.

use crate::plan::Unit;

/// Units packed into transactions.
#[derive(Debug)]
pub struct Packed<M, D, O> {
    /// Each inner list commits as one transaction.
    pub txns: Vec<Vec<Unit<M, D, O>>>,
    /// Units too large for one transaction on their own.
    pub oversized: Vec<Unit<M, D, O>>,
}

/// Packs units into transactions whose summed cost stays within `max` on both measures
/// (`cost` returns (writes, compares)).
pub fn pack<M, D, O>(
    units: Vec<Unit<M, D, O>>,
    max: usize,
    cost: impl Fn(&Unit<M, D, O>) -> (usize, usize),
) -> Packed<M, D, O> {
    let mut packed = Packed {
        txns: Vec::new(),
        oversized: Vec::new(),
    };
    let (mut writes, mut cmps) = (0, 0);
    for unit in units {
        let (w, c) = cost(&unit);
        if w > max || c > max {
            packed.oversized.push(unit);
            continue;
        }
        match packed.txns.last_mut() {
            Some(txn) if writes + w <= max && cmps + c <= max => {
                writes += w;
                cmps += c;
                txn.push(unit);
            }
            _ => {
                writes = w;
                cmps = c;
                packed.txns.push(vec![unit]);
            }
        }
    }
    packed
}
