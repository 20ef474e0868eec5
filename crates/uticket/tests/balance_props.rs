//! Property tests of the u-Ticket balancers against the hardware model: after balancing, every
//! balanced group has utilization 1 and its total kept-weight count changed by less than n.

use netxray_uticket::hw::{TAvgMode, group_utilization, group_workloads};
use netxray_uticket::{
    BalanceParams, Balancer, LayerShape, LayerWeights, Mapping, MaskedLayer, balance,
};
use proptest::prelude::*;

/// A network of a first conv (skipped) and one conv layer `[k, c, kh, kw]` with a random mask.
fn network() -> impl Strategy<Value = (usize, Vec<MaskedLayer>, Vec<f32>, Vec<f32>, u64, bool)> {
    (
        2usize..=8,
        1usize..=20,
        1usize..=4,
        1usize..=3,
        0.0f64..=1.0,
    )
        .prop_flat_map(|(pes, k, c, kk, density)| {
            let numel = k * c * kk * kk;
            (
                Just(pes),
                Just((k, c, kk)),
                proptest::collection::vec(proptest::bool::weighted(density), numel),
                proptest::collection::vec(-1.0f32..1.0, numel),
                proptest::collection::vec(-1.0f32..1.0, numel),
                any::<u64>(),
                any::<bool>(),
            )
                .prop_map(|(pes, (k, c, kk), mask, cur, refw, seed, magnitude)| {
                    let first = MaskedLayer::new(
                        "first",
                        LayerShape::conv(1, 1, 1, 1).unwrap(),
                        vec![true],
                        1,
                        1,
                    )
                    .unwrap();
                    let layer =
                        MaskedLayer::new("c", LayerShape::conv(k, c, kk, kk).unwrap(), mask, 2, 2)
                            .unwrap();
                    (pes, vec![first, layer], cur, refw, seed, magnitude)
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn balanced_groups_have_unit_utilization_and_nearly_unchanged_totals(
        (pes, layers, current, reference, seed, magnitude) in network()
    ) {
        let balancer = if magnitude { Balancer::Magnitude } else { Balancer::Random };
        let params = BalanceParams::builder()
            .pes(pes)
            .seed(seed)
            .balancer(balancer)
            .build()
            .unwrap();
        let dummy = [0.0f32];
        let weights = [
            LayerWeights { current: &dummy, reference: &dummy },
            LayerWeights { current: &current, reference: &reference },
        ];
        let out = balance(&layers, Some(&weights), &params).unwrap();
        let balanced = out.apply(&layers).unwrap();
        prop_assert_eq!(balanced[0].mask(), layers[0].mask(), "the first conv is skipped");

        let before = group_workloads(&layers[1], Mapping::FilterPerPe, pes);
        let after = group_workloads(&balanced[1], Mapping::FilterPerPe, pes);
        prop_assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            let (sb, sa) = (b.iter().sum::<u64>(), a.iter().sum::<u64>());
            if sb == 0 {
                prop_assert_eq!(sa, 0, "empty groups stay empty");
                continue;
            }
            // Every real PE holds the same count: ceil of the group mean.
            let target = sb.div_ceil(b.len() as u64);
            prop_assert!(a.iter().all(|&w| w == target), "{:?} -> {:?}", b, a);
            prop_assert!(sa >= sb && sa - sb < a.len() as u64);
            prop_assert!(sa - sb < pes as u64);
            if a.len() == pes {
                // A full group is perfectly balanced in the hardware model, whichever T_avg rounding.
                prop_assert_eq!(group_utilization(a, pes, TAvgMode::Ceil).2, 1.0);
                prop_assert_eq!(group_utilization(a, pes, TAvgMode::Exact).2, 1.0);
            }
        }
        // Light filters only gain positions, heavy filters only lose them.
        let flen = layers[1].shape().filter_len();
        let (old, new) = (layers[1].mask(), balanced[1].mask());
        let old_nnz = layers[1].filter_nnz();
        let new_nnz = balanced[1].filter_nnz();
        for f in 0..old_nnz.len() {
            let r = f * flen..(f + 1) * flen;
            if new_nnz[f] >= old_nnz[f] {
                prop_assert!(r.clone().all(|p| !old[p] || new[p]));
            } else {
                prop_assert!(r.clone().all(|p| !new[p] || old[p]));
            }
        }
        let s = &out.summary;
        prop_assert_eq!(s.nnz_after + s.removed, s.nnz_before + s.regrown);
        prop_assert_eq!(s.nnz_after as usize, balanced.iter().map(|l| l.nnz()).sum::<usize>());
    }

    #[test]
    fn input_channel_split_balances_every_filter_slice(
        (pes, layers, _c, _r, seed, _m) in network()
    ) {
        let params = BalanceParams::builder()
            .pes(pes)
            .seed(seed)
            .mapping(Mapping::InputChannelSplit)
            .build()
            .unwrap();
        let out = balance(&layers, None, &params).unwrap();
        let balanced = out.apply(&layers).unwrap();
        let before = group_workloads(&layers[1], Mapping::InputChannelSplit, pes);
        let after = group_workloads(&balanced[1], Mapping::InputChannelSplit, pes);
        for (b, a) in before.iter().zip(&after) {
            let sb: u64 = b.iter().sum();
            let sa: u64 = a.iter().sum();
            prop_assert!(sa.abs_diff(sb) < pes as u64);
            if sb > 0 && out.summary.layers[1].unbalanceable_groups == 0 {
                prop_assert!(a.iter().all(|&w| w == a[0]), "{:?} -> {:?}", b, a);
            }
        }
    }
}
