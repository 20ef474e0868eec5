//! The PE-array hardware model of u-Ticket (Yin et al., TETCI 2024, §III-B and Eq. 2–3, as
//! implemented by the reference code): a weight-stationary array of n PEs runs each layer group by
//! group; a group ends when its slowest PE ends, so unequal workloads leave PEs idle.
//!
//! For a counted layer l with output map H×W, T timesteps and groups g (see [`crate::mapping`]):
//!
//! - workload of a PE = kept weights it holds; `T_max,g` = the largest, `T_avg,g` = the mean over the
//!   n PEs (idle padding PEs count as 0), rounded up by default ([`TAvgMode`]);
//! - `μ_g = 1 − (T_max,g − T_avg,g)/T_max,g · n/(n−1)`; a group without any kept weight has no PE to
//!   wait for and gets `μ_g = 1`, but (as in the reference code) it is left out of the layer mean;
//! - `μ_l` = mean of `μ_g` over the non-empty groups (1 when every group is empty);
//! - `Work_l = T·H·W·Σ nnz`, `Latency_l = T·H·W·Σ_g T_max,g`, `Idle_l = n·Latency_l − Work_l`;
//! - `E_l = Work_l·(E_d·(1 − S_in) + E_leak) + Idle_l·E_leak` (paper Eq. 3);
//! - network: `μ` weighted by the layers' parameter counts (the paper) and unweighted (the code's
//!   log line); cycles and energy are sums; wall time = Σ Latency_l / clock.

mod hyperparams;
pub mod sweep;

pub use hyperparams::{HwParams, HwParamsBuilder, TAvgMode};
pub use sweep::{SWEEP_REPORT_SCHEMA, SweepBalance, SweepReport, SweepRow, sweep};

use crate::errors::UticketError;
use crate::layer::{LayerKind, MaskedLayer, SkipReason};
use crate::mapping::{Mapping, pe_groups};
use serde::{Deserialize, Serialize};

/// Version of the [`HwReport`] JSON layout.
pub const HW_REPORT_SCHEMA: u32 = 1;

/// Workloads and utilization of one group of PEs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    /// Group index in execution order. Under [`Mapping::FilterPerPe`] group g holds filters
    /// `n·g …`; under [`Mapping::InputChannelSplit`] group g is output channel g.
    pub index: usize,
    /// Kept weights per PE (n entries; idle padding PEs are 0), per weight application — multiply by
    /// T·H·W for cycles.
    pub workloads: Vec<u64>,
    /// PEs that hold weights in this group (n, except in a padded last group or a short slice split).
    pub real_pes: usize,
    /// Largest workload.
    pub t_max: u64,
    /// Mean workload as used in the formula (rounded up under [`TAvgMode::Ceil`]).
    pub t_avg: f64,
    /// μ_g (1 for an empty group).
    pub utilization: f64,
}

/// The hardware model's view of one counted layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// Conv or linear.
    pub kind: LayerKind,
    /// Weight shape (PyTorch layout).
    pub shape: Vec<usize>,
    /// Parameter count (all weights, kept or not): the layer's weight in the network mean.
    pub params: u64,
    /// Kept weights.
    pub nnz: u64,
    /// nnz / params.
    pub density: f64,
    /// Output map height.
    pub out_h: usize,
    /// Output map width.
    pub out_w: usize,
    /// Input spike sparsity used for the energy (the layer's measured value, else the global one).
    pub spike_sparsity: f64,
    /// μ_l: mean of μ_g over the non-empty groups.
    pub utilization: f64,
    /// Smallest μ_g over the non-empty groups (1 when all are empty): the worst group.
    pub utilization_min: f64,
    /// Groups without any kept weight (left out of μ_l).
    pub empty_groups: usize,
    /// Useful PE cycles `T·H·W·Σ nnz`.
    pub work_cycles: u64,
    /// Waiting PE cycles `n·latency − work`.
    pub idle_cycles: u64,
    /// Layer latency in cycles `T·H·W·Σ_g T_max,g`.
    pub latency_cycles: u64,
    /// Dynamic energy `work·E_d·(1 − S_in)`.
    pub energy_dynamic: f64,
    /// Leakage energy `(work + idle)·E_leak`.
    pub energy_leakage: f64,
    /// Total energy (Eq. 3), in the units of `E_d`.
    pub energy: f64,
    /// Latency at the configured clock, seconds.
    pub wall_time_s: f64,
    /// Every group, in execution order (for workload plots).
    pub groups: Vec<GroupReport>,
}

/// A layer the selection leaves out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedLayer {
    /// Layer name.
    pub name: String,
    /// Why it is not counted.
    pub reason: SkipReason,
}

/// Network totals over the counted layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkTotals {
    /// Counted layers.
    pub counted_layers: usize,
    /// Parameters of the counted layers.
    pub params: u64,
    /// Kept weights of the counted layers.
    pub nnz: u64,
    /// Σ P_l μ_l / Σ P_l (the paper's network utilization).
    pub utilization_weighted: f64,
    /// Plain mean of μ_l (the reference code's log line).
    pub utilization_unweighted: f64,
    /// Σ work cycles.
    pub work_cycles: u64,
    /// Σ idle cycles.
    pub idle_cycles: u64,
    /// Σ latency cycles (layers run one after another).
    pub latency_cycles: u64,
    /// Σ dynamic energy.
    pub energy_dynamic: f64,
    /// Σ leakage energy.
    pub energy_leakage: f64,
    /// Σ energy (Eq. 3).
    pub energy: f64,
    /// Latency at the configured clock, seconds.
    pub wall_time_s: f64,
}

/// Result of [`analyze`]: per layer, per group, and network totals, with the parameters used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HwReport {
    /// Layout version ([`HW_REPORT_SCHEMA`]).
    pub schema: u32,
    /// The parameters the numbers were computed with.
    pub params: HwParams,
    /// Counted layers in network order.
    pub layers: Vec<LayerReport>,
    /// Layers left out by the selection.
    pub skipped: Vec<SkippedLayer>,
    /// Network totals.
    pub totals: NetworkTotals,
}

/// `T_max`, `T_avg` and μ of one group whose real PEs have `workloads` (at most `pes` entries; the
/// remaining PEs are idle padding with workload 0). `pes` must be ≥ 2.
pub fn group_utilization(workloads: &[u64], pes: usize, t_avg: TAvgMode) -> (u64, f64, f64) {
    debug_assert!(pes >= 2 && workloads.len() <= pes);
    let t_max = workloads.iter().copied().max().unwrap_or(0);
    if t_max == 0 {
        return (0, 0.0, 1.0);
    }
    let sum: u64 = workloads.iter().sum();
    let avg = match t_avg {
        TAvgMode::Ceil => sum.div_ceil(pes as u64) as f64,
        TAvgMode::Exact => sum as f64 / pes as f64,
    };
    let n = pes as f64;
    let tm = t_max as f64;
    (t_max, avg, 1.0 - (tm - avg) / tm * n / (n - 1.0))
}

/// Per-group workloads of `layer` under `mapping` with `pes` PEs: one vector per group holding the
/// real PEs' kept-weight counts (padding PEs omitted).
pub fn group_workloads(layer: &MaskedLayer, mapping: Mapping, pes: usize) -> Vec<Vec<u64>> {
    let mask = layer.mask();
    pe_groups(layer.shape(), mapping, pes)
        .into_iter()
        .map(|g| {
            g.units
                .into_iter()
                .map(|r| mask[r].iter().filter(|&&m| m).count() as u64)
                .collect()
        })
        .collect()
}

/// Measures one layer (whether or not the selection would count it).
pub fn analyze_layer(layer: &MaskedLayer, params: &HwParams) -> Result<LayerReport, UticketError> {
    let n = params.pes;
    let mut groups = Vec::new();
    let (mut sum_t_max, mut nnz) = (0u64, 0u64);
    let (mut mu_sum, mut mu_min, mut non_empty) = (0.0, 1.0f64, 0usize);
    for (index, real) in group_workloads(layer, params.mapping, n)
        .into_iter()
        .enumerate()
    {
        let (t_max, t_avg, mu) = group_utilization(&real, n, params.t_avg);
        sum_t_max += t_max;
        nnz += real.iter().sum::<u64>();
        if t_max > 0 {
            mu_sum += mu;
            mu_min = mu_min.min(mu);
            non_empty += 1;
        }
        let real_pes = real.len();
        let mut workloads = real;
        workloads.resize(n, 0);
        groups.push(GroupReport {
            index,
            workloads,
            real_pes,
            t_max,
            t_avg,
            utilization: mu,
        });
    }
    let overflow = || UticketError::Overflow(layer.name().to_string());
    let (h, w) = layer.out_hw();
    let scale = (params.timesteps as u64)
        .checked_mul(h as u64)
        .and_then(|v| v.checked_mul(w as u64))
        .ok_or_else(overflow)?;
    let work = scale.checked_mul(nnz).ok_or_else(overflow)?;
    let latency = scale.checked_mul(sum_t_max).ok_or_else(overflow)?;
    let slots = latency.checked_mul(n as u64).ok_or_else(overflow)?;
    let idle = slots - work; // every group's T_max·n ≥ its Σ workloads, so this cannot underflow
    let s_in = layer.spike_sparsity().unwrap_or(params.spike_sparsity);
    let energy_dynamic = work as f64 * params.e_dynamic * (1.0 - s_in);
    let energy_leakage = slots as f64 * params.e_leak;
    let shape = layer.shape();
    let params_count = shape.numel() as u64;
    Ok(LayerReport {
        name: layer.name().to_string(),
        kind: shape.kind(),
        shape: shape.dims(),
        params: params_count,
        nnz,
        density: nnz as f64 / params_count as f64,
        out_h: h,
        out_w: w,
        spike_sparsity: s_in,
        utilization: if non_empty == 0 {
            1.0
        } else {
            mu_sum / non_empty as f64
        },
        utilization_min: mu_min,
        empty_groups: groups.len() - non_empty,
        work_cycles: work,
        idle_cycles: idle,
        latency_cycles: latency,
        energy_dynamic,
        energy_leakage,
        energy: energy_dynamic + energy_leakage,
        wall_time_s: latency as f64 / params.clock_hz,
        groups,
    })
}

/// Measures every layer the selection counts and sums the network. `layers` must be in network order
/// (the first conv is identified by position). Fails when no layer is counted.
pub fn analyze(layers: &[MaskedLayer], params: &HwParams) -> Result<HwReport, UticketError> {
    let mut reports = Vec::new();
    let mut skipped = Vec::new();
    for (layer, skip) in layers.iter().zip(params.selection.classify_layers(layers)) {
        match skip {
            Some(reason) => skipped.push(SkippedLayer {
                name: layer.name().to_string(),
                reason,
            }),
            None => reports.push(analyze_layer(layer, params)?),
        }
    }
    if reports.is_empty() {
        return Err(UticketError::NoCountedLayers);
    }
    let totals = totals(&reports, params)?;
    Ok(HwReport {
        schema: HW_REPORT_SCHEMA,
        params: params.clone(),
        layers: reports,
        skipped,
        totals,
    })
}

fn totals(layers: &[LayerReport], params: &HwParams) -> Result<NetworkTotals, UticketError> {
    let overflow = || UticketError::Overflow("network total".to_string());
    let sum = |f: fn(&LayerReport) -> u64| {
        layers
            .iter()
            .try_fold(0u64, |acc, l| acc.checked_add(f(l)))
            .ok_or_else(overflow)
    };
    let p: u64 = sum(|l| l.params)?;
    let weighted = layers
        .iter()
        .map(|l| l.params as f64 * l.utilization)
        .sum::<f64>()
        / p as f64;
    let unweighted = layers.iter().map(|l| l.utilization).sum::<f64>() / layers.len() as f64;
    let latency = sum(|l| l.latency_cycles)?;
    let energy_dynamic: f64 = layers.iter().map(|l| l.energy_dynamic).sum();
    let energy_leakage: f64 = layers.iter().map(|l| l.energy_leakage).sum();
    Ok(NetworkTotals {
        counted_layers: layers.len(),
        params: p,
        nnz: sum(|l| l.nnz)?,
        utilization_weighted: weighted,
        utilization_unweighted: unweighted,
        work_cycles: sum(|l| l.work_cycles)?,
        idle_cycles: sum(|l| l.idle_cycles)?,
        latency_cycles: latency,
        energy_dynamic,
        energy_leakage,
        energy: energy_dynamic + energy_leakage,
        wall_time_s: latency as f64 / params.clock_hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerSelection, LayerShape};

    const EPS: f64 = 1e-12;

    /// A conv layer [K, C=1, 1, L] whose filter k keeps its first `nnz[k]` weights.
    fn conv(name: &str, nnz: &[usize], len: usize, h: usize, w: usize) -> MaskedLayer {
        let shape = LayerShape::conv(nnz.len(), 1, 1, len).unwrap();
        let mask = nnz
            .iter()
            .flat_map(|&k| (0..len).map(move |i| i < k))
            .collect();
        MaskedLayer::new(name, shape, mask, h, w).unwrap()
    }

    fn params(pes: usize) -> HwParams {
        HwParams::builder()
            .pes(pes)
            .include_first_conv(true)
            .build()
            .unwrap()
    }

    #[test]
    fn utilization_of_hand_computed_groups() {
        // n = 4, workloads 4,2,2,0: mean 2, μ = 1 − (4−2)/4 · 4/3 = 1/3.
        let (t_max, t_avg, mu) = group_utilization(&[4, 2, 2, 0], 4, TAvgMode::Exact);
        assert_eq!((t_max, t_avg), (4, 2.0));
        assert!((mu - 1.0 / 3.0).abs() < EPS);
        // n = 4, workloads 3,1,1,0: exact mean 1.25 → μ = 1 − 1.75/3 · 4/3 = 2/9;
        // ceil mean 2 → μ = 1 − 1/3 · 4/3 = 5/9.
        let (_, _, exact) = group_utilization(&[3, 1, 1, 0], 4, TAvgMode::Exact);
        let (_, avg, ceil) = group_utilization(&[3, 1, 1, 0], 4, TAvgMode::Ceil);
        assert!((exact - 2.0 / 9.0).abs() < EPS);
        assert_eq!(avg, 2.0);
        assert!((ceil - 5.0 / 9.0).abs() < EPS);
        // Balanced → 1; one PE does all the work → 0 (exact mean).
        assert_eq!(group_utilization(&[5, 5, 5], 3, TAvgMode::Exact).2, 1.0);
        assert!(group_utilization(&[6, 0, 0], 3, TAvgMode::Exact).2.abs() < EPS);
        // Empty group → 1 by definition; padding counts as idle PEs.
        assert_eq!(group_utilization(&[0, 0], 2, TAvgMode::Ceil), (0, 0.0, 1.0));
        let (_, _, padded) = group_utilization(&[2, 2], 4, TAvgMode::Exact);
        assert!((padded - (1.0 - 0.5 * 4.0 / 3.0)).abs() < EPS);
    }

    #[test]
    fn cycles_and_energy_of_a_hand_computed_layer() {
        // n = 2, filters nnz 3,1 | 2,2 on a 2×3 map, T = 4 → scale 24.
        let l = conv("c", &[3, 1, 2, 2], 4, 2, 3);
        let p = HwParams::builder()
            .pes(2)
            .include_first_conv(true)
            .t_avg(TAvgMode::Exact)
            .e_dynamic(1.0)
            .e_leak(0.5)
            .spike_sparsity(0.25)
            .clock_hz(1e3)
            .build()
            .unwrap();
        let r = analyze_layer(&l, &p).unwrap();
        assert_eq!(r.nnz, 8);
        assert_eq!(r.work_cycles, 24 * 8);
        assert_eq!(r.latency_cycles, 24 * (3 + 2));
        assert_eq!(r.idle_cycles, 24 * (2 * 5 - 8));
        assert_eq!(r.work_cycles + r.idle_cycles, 2 * r.latency_cycles);
        // μ_g: group 0 = 1 − (3−2)/3·2 = 1/3, group 1 = 1 → layer 2/3.
        assert!((r.groups[0].utilization - 1.0 / 3.0).abs() < EPS);
        assert_eq!(r.groups[1].utilization, 1.0);
        assert!((r.utilization - 2.0 / 3.0).abs() < EPS);
        assert!((r.utilization_min - 1.0 / 3.0).abs() < EPS);
        // E = work·(E_d·0.75 + 0.5) + idle·0.5 = 192·1.25 + 48·0.5 = 264.
        assert!((r.energy - 264.0).abs() < EPS);
        assert!((r.energy_dynamic - 144.0).abs() < EPS);
        assert!((r.energy_leakage - 120.0).abs() < EPS);
        assert!((r.wall_time_s - 0.12).abs() < EPS);
        assert_eq!(r.groups[0].workloads, vec![3, 1]);
    }

    #[test]
    fn per_layer_spike_sparsity_overrides_the_global_value() {
        let l = conv("c", &[2, 2], 2, 1, 1)
            .with_spike_sparsity(1.0)
            .unwrap();
        let r = analyze_layer(&l, &params(2)).unwrap();
        assert_eq!(r.spike_sparsity, 1.0);
        assert_eq!(r.energy_dynamic, 0.0);
        assert!((r.energy - 4.0 * 4.0 * 0.21).abs() < EPS);
    }

    #[test]
    fn partial_last_group_is_padded_with_idle_pes() {
        // K = 3 with n = 2: group 1 holds one filter and one idle PE.
        let l = conv("c", &[2, 2, 2], 2, 1, 1);
        let p = HwParams::builder()
            .pes(2)
            .timesteps(1)
            .include_first_conv(true)
            .build()
            .unwrap();
        let r = analyze_layer(&l, &p).unwrap();
        assert_eq!(r.groups.len(), 2);
        assert_eq!(r.groups[1].real_pes, 1);
        assert_eq!(r.groups[1].workloads, vec![2, 0]);
        assert_eq!(r.latency_cycles, 4);
        assert_eq!(r.idle_cycles, 2);
        // ceil mean 1, μ = 1 − (2−1)/2·2 = 0.
        assert_eq!(r.groups[1].utilization, 0.0);
    }

    #[test]
    fn empty_groups_are_left_out_of_the_layer_mean() {
        let l = conv("c", &[0, 0, 4, 0], 4, 1, 1);
        let p = params(2)
            .to_builder()
            .t_avg(TAvgMode::Exact)
            .build()
            .unwrap();
        let r = analyze_layer(&l, &p).unwrap();
        assert_eq!(r.empty_groups, 1);
        assert_eq!(r.groups[0].utilization, 1.0);
        assert!(r.utilization.abs() < EPS, "{}", r.utilization);
        let all_empty = conv("e", &[0, 0], 4, 1, 1);
        let r = analyze_layer(&all_empty, &p).unwrap();
        assert_eq!(
            (r.utilization, r.work_cycles, r.latency_cycles),
            (1.0, 0, 0)
        );
    }

    #[test]
    fn input_channel_split_groups_by_output_channel() {
        // One filter, C = 4 channels of 1 weight each, n = 2 → slices {0,1} and {2,3}.
        let shape = LayerShape::conv(1, 4, 1, 1).unwrap();
        let l = MaskedLayer::new("c", shape, vec![true, true, true, false], 1, 1).unwrap();
        let p = params(2)
            .to_builder()
            .mapping(Mapping::InputChannelSplit)
            .timesteps(1)
            .t_avg(TAvgMode::Exact)
            .build()
            .unwrap();
        let r = analyze_layer(&l, &p).unwrap();
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.groups[0].workloads, vec![2, 1]);
        assert_eq!((r.work_cycles, r.latency_cycles, r.idle_cycles), (3, 2, 1));
        assert!((r.utilization - 0.5).abs() < EPS);
    }

    #[test]
    fn network_means_and_selection() {
        let first = conv("first", &[1, 0], 1, 8, 8);
        let a = conv("a", &[2, 2], 2, 1, 1); // μ 1, 4 params
        let b = conv("b", &[4, 0, 0, 0], 4, 1, 1); // 16 params
        let fc =
            MaskedLayer::new("fc", LayerShape::linear(2, 2).unwrap(), vec![true; 4], 1, 1).unwrap();
        let layers = vec![first, a, b, fc];
        let p = HwParams::builder()
            .pes(2)
            .t_avg(TAvgMode::Exact)
            .build()
            .unwrap();
        let r = analyze(&layers, &p).unwrap();
        assert_eq!(r.schema, HW_REPORT_SCHEMA);
        let names: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(r.skipped[0].reason, SkipReason::FirstConv);
        assert_eq!(r.skipped[1].reason, SkipReason::Linear);
        // b: group 0 = (4,0) → μ 0; group 1 empty → left out. Layer μ 0.
        assert!(r.layers[1].utilization.abs() < EPS);
        assert!((r.totals.utilization_unweighted - 0.5).abs() < EPS);
        assert!((r.totals.utilization_weighted - 4.0 / 20.0).abs() < EPS);
        let t = &r.totals;
        assert_eq!(t.work_cycles + t.idle_cycles, 2 * t.latency_cycles);
        assert_eq!(t.params, 20);
        assert_eq!(t.nnz, 8);
        let only_first = analyze(&layers[..1], &p);
        assert!(matches!(only_first, Err(UticketError::NoCountedLayers)));
        let p_all = p
            .to_builder()
            .selection(LayerSelection {
                include_first_conv: true,
                include_linear: true,
            })
            .build()
            .unwrap();
        assert_eq!(analyze(&layers, &p_all).unwrap().layers.len(), 4);
    }

    #[test]
    fn report_serializes_with_schema() {
        let r = analyze(&[conv("a", &[1, 1], 1, 1, 1)], &params(2)).unwrap();
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["params"]["mapping"], "filter-per-pe");
        assert_eq!(v["params"]["t_avg"], "ceil");
        assert_eq!(v["layers"][0]["kind"], "conv");
        let back: HwReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
