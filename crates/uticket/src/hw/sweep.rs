//! The PE-count sweep of the paper's Table III: the same network measured with several array sizes,
//! energy and latency normalised to the first size. Optionally each size first balances the masks for
//! its own group width (Table III reports u-Ticket networks, balanced for the array they run on).

use super::{HwParams, analyze};
use crate::balance::{BalanceParams, Balancer, LayerWeights, balance};
use crate::errors::UticketError;
use crate::layer::MaskedLayer;
use serde::{Deserialize, Serialize};

/// Version of the [`SweepReport`] JSON layout.
pub const SWEEP_REPORT_SCHEMA: u32 = 1;

/// Balance the masks for each PE count before measuring it.
#[derive(Debug, Clone)]
pub struct SweepBalance<'a> {
    /// Balancer settings; `pes`, `mapping` and the layer selection are replaced by the sweep's values
    /// so that the balanced groups are the measured ones.
    pub params: BalanceParams,
    /// Weights for the magnitude balancer (one entry per layer), `None` for the random balancer.
    pub weights: Option<&'a [LayerWeights<'a>]>,
}

/// One PE count of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// PE count n.
    pub pes: usize,
    /// Parameter-weighted network utilization.
    pub utilization_weighted: f64,
    /// Unweighted network utilization.
    pub utilization_unweighted: f64,
    /// Kept weights of the counted layers (changes only when balancing).
    pub nnz: u64,
    /// Work cycles.
    pub work_cycles: u64,
    /// Idle cycles.
    pub idle_cycles: u64,
    /// Latency cycles.
    pub latency_cycles: u64,
    /// Energy (Eq. 3).
    pub energy: f64,
    /// Latency at the configured clock, seconds.
    pub wall_time_s: f64,
    /// Energy divided by the first row's (`None` when that is 0).
    pub energy_normalized: Option<f64>,
    /// Latency divided by the first row's (`None` when that is 0).
    pub latency_normalized: Option<f64>,
}

/// Result of [`sweep`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Layout version ([`SWEEP_REPORT_SCHEMA`]).
    pub schema: u32,
    /// Parameters of the first row (the others differ only in `pes`).
    pub params: HwParams,
    /// Balancer applied before each measurement, if any.
    pub balanced_with: Option<Balancer>,
    /// One row per PE count, in the order given.
    pub rows: Vec<SweepRow>,
}

/// Measures `layers` with each PE count of `pes_list` (every other parameter from `base`), optionally
/// balancing for each count first. Fails on an empty list or a PE count below 2.
pub fn sweep(
    layers: &[MaskedLayer],
    base: &HwParams,
    pes_list: &[usize],
    balance_with: Option<&SweepBalance<'_>>,
) -> Result<SweepReport, UticketError> {
    if pes_list.is_empty() {
        return Err(UticketError::param(
            "pes",
            "the sweep needs at least one PE count",
        ));
    }
    let mut rows: Vec<SweepRow> = Vec::with_capacity(pes_list.len());
    let mut first_params = None;
    for &pes in pes_list {
        let params = base.to_builder().pes(pes).build()?;
        let report = match balance_with {
            None => analyze(layers, &params)?,
            Some(b) => {
                let bp = b
                    .params
                    .to_builder()
                    .pes(pes)
                    .mapping(params.mapping)
                    .selection(params.selection)
                    .build()?;
                let outcome = balance(layers, b.weights, &bp)?;
                let balanced = outcome.apply(layers)?;
                analyze(&balanced, &params)?
            }
        };
        let t = report.totals;
        let norm = |v: f64, first: Option<f64>| match first {
            Some(f) if f > 0.0 => Some(v / f),
            Some(_) => None,
            None => (v > 0.0).then_some(1.0),
        };
        let first = rows.first();
        rows.push(SweepRow {
            pes,
            utilization_weighted: t.utilization_weighted,
            utilization_unweighted: t.utilization_unweighted,
            nnz: t.nnz,
            work_cycles: t.work_cycles,
            idle_cycles: t.idle_cycles,
            latency_cycles: t.latency_cycles,
            energy: t.energy,
            wall_time_s: t.wall_time_s,
            energy_normalized: norm(t.energy, first.map(|r| r.energy)),
            latency_normalized: norm(
                t.latency_cycles as f64,
                first.map(|r| r.latency_cycles as f64),
            ),
        });
        first_params.get_or_insert(params);
    }
    Ok(SweepReport {
        schema: SWEEP_REPORT_SCHEMA,
        params: first_params.expect("at least one row"),
        balanced_with: balance_with.map(|b| b.params.balancer),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LayerShape;

    /// One conv [4, 1, 1, 4] (filters keep 4, 2, 2, 0 weights) after a skipped first conv.
    fn layers() -> Vec<MaskedLayer> {
        let first = MaskedLayer::new(
            "first",
            LayerShape::conv(1, 1, 1, 1).unwrap(),
            vec![true],
            1,
            1,
        )
        .unwrap();
        let nnz = [4usize, 2, 2, 0];
        let mask = nnz
            .iter()
            .flat_map(|&k| (0..4).map(move |i| i < k))
            .collect();
        let l = MaskedLayer::new("c", LayerShape::conv(4, 1, 1, 4).unwrap(), mask, 1, 1).unwrap();
        vec![first, l]
    }

    #[test]
    fn sweep_normalises_to_the_first_pe_count() {
        let base = HwParams::builder().timesteps(1).build().unwrap();
        let r = sweep(&layers(), &base, &[2, 4], None).unwrap();
        assert_eq!(r.schema, SWEEP_REPORT_SCHEMA);
        assert_eq!(r.params.pes, 2);
        // n = 2: groups (4,2) and (2,0) → latency 4 + 2 = 6; n = 4: one group → latency 4.
        assert_eq!(r.rows[0].latency_cycles, 6);
        assert_eq!(r.rows[1].latency_cycles, 4);
        assert_eq!(r.rows[0].latency_normalized, Some(1.0));
        assert!((r.rows[1].latency_normalized.unwrap() - 4.0 / 6.0).abs() < 1e-12);
        // Energy: work 8 each; slots 12 vs 16 → leakage grows with n.
        let e = |slots: f64| 8.0 + slots * 0.21;
        assert!((r.rows[0].energy - e(12.0)).abs() < 1e-12);
        assert!((r.rows[1].energy_normalized.unwrap() - e(16.0) / e(12.0)).abs() < 1e-12);
        assert!(sweep(&layers(), &base, &[], None).is_err());
        assert!(sweep(&layers(), &base, &[2, 1], None).is_err());
    }

    #[test]
    fn balanced_sweep_reaches_full_utilization() {
        let base = HwParams::builder().build().unwrap();
        let b = SweepBalance {
            params: BalanceParams::builder().seed(3).build().unwrap(),
            weights: None,
        };
        let r = sweep(&layers(), &base, &[2, 4], Some(&b)).unwrap();
        assert_eq!(r.balanced_with, Some(Balancer::Random));
        for row in &r.rows {
            assert_eq!(row.utilization_weighted, 1.0, "{row:?}");
            assert_eq!(row.idle_cycles, 0);
        }
    }
}
