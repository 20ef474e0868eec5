//! u-Ticket workload balancing (Yin et al., Algorithm 1, as the reference code runs it): in every
//! counted layer and every group of PEs (see [`crate::mapping`]), each PE's kept-weight count d is set
//! to the group target `ceil(Σ d / m)` (m = PEs holding weights in the group) by regrowing pruned
//! positions in light PEs and removing kept positions in heavy ones. Afterwards every PE of the group
//! has the same workload, so the group's utilization is 1, and the group's total changes by less
//! than m ≤ n. Groups without any kept weight are left alone.
//!
//! The balancers only edit masks; what a regrown weight's value becomes (the rewind-point value in
//! the LTH loop) is the caller's business.

mod hyperparams;

pub use hyperparams::{BalanceParams, BalanceParamsBuilder, Balancer};

use crate::errors::UticketError;
use crate::layer::{LayerShape, MaskedLayer, SkipReason};
use crate::mapping::pe_groups;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Version of the [`BalanceSummary`] JSON layout.
pub const BALANCE_SUMMARY_SCHEMA: u32 = 1;

/// Weights the magnitude balancer ranks positions by, for one layer (row-major, same length as the
/// mask).
#[derive(Debug, Clone, Copy)]
pub struct LayerWeights<'a> {
    /// Current (trained) weights: heavy PEs drop their kept positions with the smallest |w|.
    pub current: &'a [f32],
    /// Reference weights, e.g. the rewind point: light PEs regrow the pruned positions with the
    /// largest |w|.
    pub reference: &'a [f32],
}

/// What balancing did to one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerBalance {
    /// Layer name.
    pub name: String,
    /// Why the layer was not balanced (`None`: it was).
    pub skipped: Option<SkipReason>,
    /// Groups of the layer (0 when skipped).
    pub groups: usize,
    /// Groups left alone because no PE held a kept weight.
    pub empty_groups: usize,
    /// Groups where some PE cannot hold the common level (a short input-channel slice); those PEs are
    /// filled completely, the others share the rest, and the group stays slightly unbalanced. Always 0
    /// under the filter mapping.
    pub unbalanceable_groups: usize,
    /// Positions switched from pruned to kept.
    pub regrown: u64,
    /// Positions switched from kept to pruned.
    pub removed: u64,
    /// Kept weights before.
    pub nnz_before: u64,
    /// Kept weights after.
    pub nnz_after: u64,
}

/// What a balancing pass did, per layer and in total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceSummary {
    /// Layout version ([`BALANCE_SUMMARY_SCHEMA`]).
    pub schema: u32,
    /// Parameters used.
    pub params: BalanceParams,
    /// One entry per input layer, in order.
    pub layers: Vec<LayerBalance>,
    /// Σ regrown.
    pub regrown: u64,
    /// Σ removed.
    pub removed: u64,
    /// Σ kept weights before (all layers).
    pub nnz_before: u64,
    /// Σ kept weights after (all layers).
    pub nnz_after: u64,
}

/// Result of [`balance`]: the new masks (one per input layer, unchanged for skipped layers) and the
/// summary.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceOutcome {
    /// New masks, row-major, in the order of the input layers.
    pub masks: Vec<Vec<bool>>,
    /// What changed.
    pub summary: BalanceSummary,
}

impl BalanceOutcome {
    /// Copies of `layers` (the layers that were balanced) carrying the new masks.
    pub fn apply(&self, layers: &[MaskedLayer]) -> Result<Vec<MaskedLayer>, UticketError> {
        if layers.len() != self.masks.len() {
            return Err(UticketError::param(
                "layers",
                format!(
                    "{} layers given for {} balanced masks",
                    layers.len(),
                    self.masks.len()
                ),
            ));
        }
        layers
            .iter()
            .zip(&self.masks)
            .map(|(l, m)| l.clone().with_mask(m.clone()))
            .collect()
    }
}

/// Counts of one balanced layer mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaskBalance {
    /// Groups of the layer.
    pub groups: usize,
    /// Groups without any kept weight (untouched).
    pub empty_groups: usize,
    /// Groups where a PE could not reach the target.
    pub unbalanceable_groups: usize,
    /// Positions regrown.
    pub regrown: u64,
    /// Positions removed.
    pub removed: u64,
}

/// Balances every layer the selection counts. `layers` must be in network order (the first conv is
/// found by position). `weights` (one entry per layer, in the same order) is required by
/// [`Balancer::Magnitude`] and ignored by [`Balancer::Random`].
pub fn balance(
    layers: &[MaskedLayer],
    weights: Option<&[LayerWeights<'_>]>,
    params: &BalanceParams,
) -> Result<BalanceOutcome, UticketError> {
    if let Some(w) = weights
        && w.len() != layers.len()
    {
        return Err(UticketError::param(
            "weights",
            format!("{} weight entries for {} layers", w.len(), layers.len()),
        ));
    }
    let mut masks = Vec::with_capacity(layers.len());
    let mut summaries = Vec::with_capacity(layers.len());
    for (i, (layer, skip)) in layers
        .iter()
        .zip(params.selection.classify_layers(layers))
        .enumerate()
    {
        let mut mask = layer.mask().to_vec();
        let nnz_before = layer.nnz() as u64;
        let counts = if skip.is_none() {
            let w = match params.balancer {
                Balancer::Random => None,
                Balancer::Magnitude => Some(weights.map(|w| w[i]).ok_or_else(|| {
                    UticketError::layer(
                        layer.name(),
                        "the magnitude balancer needs current and reference weights",
                    )
                })?),
            };
            balance_layer_mask(layer.name(), layer.shape(), &mut mask, w, params, i as u64)?
        } else {
            MaskBalance::default()
        };
        summaries.push(LayerBalance {
            name: layer.name().to_string(),
            skipped: skip,
            groups: counts.groups,
            empty_groups: counts.empty_groups,
            unbalanceable_groups: counts.unbalanceable_groups,
            regrown: counts.regrown,
            removed: counts.removed,
            nnz_before,
            nnz_after: nnz_before + counts.regrown - counts.removed,
        });
        masks.push(mask);
    }
    let total = |f: fn(&LayerBalance) -> u64| summaries.iter().map(f).sum::<u64>();
    let summary = BalanceSummary {
        schema: BALANCE_SUMMARY_SCHEMA,
        params: params.clone(),
        regrown: total(|l| l.regrown),
        removed: total(|l| l.removed),
        nnz_before: total(|l| l.nnz_before),
        nnz_after: total(|l| l.nnz_after),
        layers: summaries,
    };
    Ok(BalanceOutcome { masks, summary })
}

/// Balances one layer's mask in place (every group, regardless of the layer selection). `stream`
/// selects the ChaCha8 stream of `params.seed` this layer draws from ([`balance`] uses the layer
/// index). `weights` must be given for [`Balancer::Magnitude`]; `name` only appears in errors.
pub fn balance_layer_mask(
    name: &str,
    shape: &LayerShape,
    mask: &mut [bool],
    weights: Option<LayerWeights<'_>>,
    params: &BalanceParams,
    stream: u64,
) -> Result<MaskBalance, UticketError> {
    let n = shape.numel();
    if mask.len() != n {
        return Err(UticketError::layer(
            name,
            format!("mask has {} entries, the weight has {n}", mask.len()),
        ));
    }
    let ranking = match (params.balancer, weights) {
        (Balancer::Random, _) => None,
        (Balancer::Magnitude, None) => {
            return Err(UticketError::layer(
                name,
                "the magnitude balancer needs current and reference weights",
            ));
        }
        (Balancer::Magnitude, Some(w)) => {
            for (what, v) in [("current", w.current), ("reference", w.reference)] {
                if v.len() != n {
                    return Err(UticketError::layer(
                        name,
                        format!("{what} weights have {} entries, the mask has {n}", v.len()),
                    ));
                }
            }
            Some(w)
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    rng.set_stream(stream);
    let mut out = MaskBalance::default();
    for group in pe_groups(shape, params.mapping, params.pes) {
        out.groups += 1;
        let loads: Vec<usize> = group
            .units
            .iter()
            .map(|r| mask[r.clone()].iter().filter(|&&m| m).count())
            .collect();
        let total: usize = loads.iter().sum();
        if total == 0 {
            out.empty_groups += 1;
            continue;
        }
        let caps: Vec<usize> = group.units.iter().map(|r| r.len()).collect();
        let (targets, unbalanceable) = unit_targets(total, &caps);
        for ((unit, &load), &target) in group.units.iter().zip(&loads).zip(&targets) {
            // Light PE: pick among pruned positions; heavy PE: among kept ones.
            let (want_kept, count) = if load < target {
                (false, target - load)
            } else if load > target {
                (true, load - target)
            } else {
                continue;
            };
            let mut candidates: Vec<usize> =
                unit.clone().filter(|&p| mask[p] == want_kept).collect();
            let chosen: Vec<usize> = match ranking {
                None => sample(&mut rng, candidates.len(), count)
                    .into_iter()
                    .map(|k| candidates[k])
                    .collect(),
                Some(w) => {
                    // A seeded shuffle first, so that the stable sort breaks ties (e.g. pruned weights
                    // stored as exact zeros) randomly rather than by position.
                    candidates.shuffle(&mut rng);
                    if want_kept {
                        candidates
                            .sort_by(|&a, &b| w.current[a].abs().total_cmp(&w.current[b].abs()));
                    } else {
                        candidates.sort_by(|&a, &b| {
                            w.reference[b].abs().total_cmp(&w.reference[a].abs())
                        });
                    }
                    candidates.truncate(count);
                    candidates
                }
            };
            for p in chosen {
                mask[p] = !want_kept;
            }
            if want_kept {
                out.removed += count as u64;
            } else {
                out.regrown += count as u64;
            }
        }
        out.unbalanceable_groups += usize::from(unbalanceable);
    }
    Ok(out)
}

/// Target workload of each PE of a group holding `total` kept weights, where PE j can hold at most
/// `caps[j]` (≥ 1) weights: `ceil(total / m)` for every PE when all can hold it (always the case under
/// the filter mapping). Otherwise PEs too small for the level are filled completely and the rest share
/// what is left (water filling), which keeps the slowest PE as fast as possible and the group total
/// within m − 1 of `total`. The flag says whether some PE had to be filled below the level.
fn unit_targets(total: usize, caps: &[usize]) -> (Vec<usize>, bool) {
    let mut order: Vec<usize> = (0..caps.len()).collect();
    order.sort_by_key(|&j| caps[j]);
    let mut targets = vec![0; caps.len()];
    let (mut remaining, mut open) = (total, caps.len());
    let mut clamped = false;
    for (i, &j) in order.iter().enumerate() {
        let level = remaining.div_ceil(open);
        if caps[j] < level {
            targets[j] = caps[j];
            remaining -= caps[j];
            open -= 1;
            clamped = true;
        } else {
            for &rest in &order[i..] {
                targets[rest] = level;
            }
            break;
        }
    }
    (targets, clamped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::{HwParams, TAvgMode, analyze};
    use crate::mapping::Mapping;

    /// conv [K, 1, 1, len] whose filter k keeps positions `< nnz[k]`.
    fn conv(name: &str, nnz: &[usize], len: usize) -> MaskedLayer {
        let mask = nnz
            .iter()
            .flat_map(|&k| (0..len).map(move |i| i < k))
            .collect();
        MaskedLayer::new(
            name,
            LayerShape::conv(nnz.len(), 1, 1, len).unwrap(),
            mask,
            1,
            1,
        )
        .unwrap()
    }

    fn params(pes: usize, balancer: Balancer) -> BalanceParams {
        BalanceParams::builder()
            .pes(pes)
            .balancer(balancer)
            .seed(7)
            .build()
            .unwrap()
    }

    #[test]
    fn random_balancing_equalises_each_group_to_ceil_mean() {
        let layers = vec![conv("first", &[1, 0], 3), conv("c", &[5, 1, 2, 0, 3, 3], 6)];
        let out = balance(&layers, None, &params(2, Balancer::Random)).unwrap();
        // First conv untouched.
        assert_eq!(out.masks[0], layers[0].mask());
        assert_eq!(out.summary.layers[0].skipped, Some(SkipReason::FirstConv));
        let balanced = out.apply(&layers).unwrap();
        // Groups (5,1) → 3,3; (2,0) → 1,1; (3,3) untouched.
        assert_eq!(balanced[1].filter_nnz(), vec![3, 3, 1, 1, 3, 3]);
        let s = &out.summary.layers[1];
        assert_eq!((s.regrown, s.removed), (3, 3));
        assert_eq!((s.nnz_before, s.nnz_after), (14, 14));
        assert_eq!(s.groups, 3);
        // Heavy filters only lose, light filters only gain.
        let (old, new) = (layers[1].mask(), balanced[1].mask());
        for p in 0..6 {
            assert!(!new[p] || old[p], "filter 0 must only lose weights");
        }
        for p in 6..12 {
            assert!(!old[p] || new[p], "filter 1 must only gain weights");
        }
        let hw = HwParams::builder()
            .pes(2)
            .t_avg(TAvgMode::Exact)
            .build()
            .unwrap();
        let r = analyze(&balanced, &hw).unwrap();
        assert_eq!(r.totals.utilization_weighted, 1.0);
        assert_eq!(r.totals.idle_cycles, 0);
    }

    #[test]
    fn same_seed_same_masks_other_seed_other_masks() {
        let layers = vec![conv("first", &[1], 3), conv("c", &[20, 2, 9, 1], 32)];
        let a = balance(&layers, None, &params(4, Balancer::Random)).unwrap();
        let b = balance(&layers, None, &params(4, Balancer::Random)).unwrap();
        assert_eq!(a, b);
        let other = params(4, Balancer::Random)
            .to_builder()
            .seed(8)
            .build()
            .unwrap();
        let c = balance(&layers, None, &other).unwrap();
        assert_ne!(a.masks[1], c.masks[1]);
    }

    #[test]
    fn empty_groups_are_left_alone() {
        let layers = vec![conv("first", &[1], 1), conv("c", &[0, 0, 2, 0], 4)];
        let out = balance(&layers, None, &params(2, Balancer::Random)).unwrap();
        let s = &out.summary.layers[1];
        assert_eq!(s.empty_groups, 1);
        assert_eq!(
            out.apply(&layers).unwrap()[1].filter_nnz(),
            vec![0, 0, 1, 1]
        );
    }

    #[test]
    fn magnitude_balancer_picks_by_weight_size() {
        // Group of 2 filters of 4: filter 0 keeps all 4, filter 1 keeps position 4 only → target 3.
        let mut mask = vec![true; 4];
        mask.extend([true, false, false, false]);
        let shape = LayerShape::conv(2, 1, 1, 4).unwrap();
        let current = [0.5, -0.1, 0.9, 0.3, 1.0, 0.0, 0.0, 0.0];
        let reference = [0.0, 0.0, 0.0, 0.0, 0.0, -0.7, 0.2, 0.4];
        let w = LayerWeights {
            current: &current,
            reference: &reference,
        };
        let p = params(2, Balancer::Magnitude);
        let counts = balance_layer_mask("c", &shape, &mut mask, Some(w), &p, 0).unwrap();
        assert_eq!((counts.regrown, counts.removed), (2, 1));
        // Filter 0 drops |−0.1|; filter 1 regrows |−0.7| and |0.4|.
        assert_eq!(mask, vec![true, false, true, true, true, true, false, true]);
        // Without weights the magnitude balancer refuses.
        let layers = vec![conv("first", &[1], 1), conv("c", &[2, 0], 2)];
        assert!(balance(&layers, None, &p).is_err());
        let short = LayerWeights {
            current: &current[..3],
            reference: &reference,
        };
        let mut m = vec![true; 8];
        assert!(balance_layer_mask("c", &shape, &mut m, Some(short), &p, 0).is_err());
    }

    #[test]
    fn magnitude_ties_are_broken_by_the_seed_not_by_position() {
        // Regrowing 1 of 31 zero-valued positions: over seeds, not always the first one.
        let shape = LayerShape::conv(2, 1, 1, 32).unwrap();
        let zeros = vec![0.0f32; 64];
        let w = LayerWeights {
            current: &zeros,
            reference: &zeros,
        };
        let mut picks = std::collections::BTreeSet::new();
        for seed in 0..8 {
            let mut mask = vec![false; 64];
            mask[..3].fill(true);
            mask[32] = true;
            let p = params(2, Balancer::Magnitude)
                .to_builder()
                .seed(seed)
                .build()
                .unwrap();
            balance_layer_mask("c", &shape, &mut mask, Some(w), &p, 0).unwrap();
            picks.insert(mask[33..].iter().position(|&m| m).unwrap());
        }
        assert!(picks.len() > 1, "{picks:?}");
    }

    #[test]
    fn water_filling_targets() {
        assert_eq!(unit_targets(5, &[4, 4]), (vec![3, 3], false));
        assert_eq!(unit_targets(10, &[10, 1]), (vec![9, 1], true));
        assert_eq!(unit_targets(7, &[1, 6, 6]), (vec![1, 3, 3], true));
        assert_eq!(unit_targets(3, &[4, 1, 4]), (vec![1, 1, 1], false));
    }

    #[test]
    fn input_channel_split_balances_slices_and_reports_short_slices() {
        // One filter, C = 3 channels of 2 weights, n = 2 → slices of ceil(3/2) = 2 channels: [0,4) and
        // [4,6). Kept: 4 in slice 0, 0 in slice 1 → target 2; both reach it.
        let shape = LayerShape::conv(1, 3, 1, 2).unwrap();
        let p = BalanceParams::builder()
            .pes(2)
            .mapping(Mapping::InputChannelSplit)
            .build()
            .unwrap();
        let mut mask = vec![true, true, true, true, false, false];
        let c = balance_layer_mask("c", &shape, &mut mask, None, &p, 0).unwrap();
        assert_eq!(c.unbalanceable_groups, 0);
        assert_eq!(mask[..4].iter().filter(|&&m| m).count(), 2);
        assert_eq!(mask[4..], [true, true]);
        // Kept 4 + 1 → level 3, but slice 1 holds only 2 positions: it is filled, slice 0 keeps 3.
        let mut mask = vec![true, true, true, true, true, false];
        let c = balance_layer_mask("c", &shape, &mut mask, None, &p, 0).unwrap();
        assert_eq!(c.unbalanceable_groups, 1);
        assert_eq!((c.regrown, c.removed), (1, 1));
        assert_eq!(mask[..4].iter().filter(|&&m| m).count(), 3);
        assert_eq!(mask[4..], [true, true]);
    }
}
