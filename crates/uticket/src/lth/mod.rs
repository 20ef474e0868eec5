//! The pruning loop: iterative global magnitude pruning with late rewinding (LTH) and its
//! u-Ticket variant, which balances every 16-filter PE group after each prune.
//!
//! Round 0 trains the dense network and keeps the weights after `rewind_epoch` epochs (late
//! rewinding). Every later round: prune `prune_rate` of the remaining weights by global
//! magnitude over all conv and linear weights (not BN, not biases), then (u-Ticket) balance,
//! then rewind the surviving weights to the rewind point, retrain with a fresh optimizer and
//! schedule, evaluate, and measure the deployed masks on the hardware model with the measured
//! input spike sparsity. Every round ends with an atomic state file, so a killed run resumes at
//! the next round with the same result.

mod hyperparams;
mod state;

pub use hyperparams::{LthParams, LthParamsBuilder, MaskCarry, Method};

use crate::balance::{BalanceParams, BalanceSummary, LayerWeights, balance};
use crate::errors::UticketError;
use crate::hw::{HwParams, HwReport, analyze};
use crate::layer::{LayerShape, MaskedLayer};
use netxray_snn::Device;
use netxray_snn::session::Data;
use netxray_snn::{HostTensor, Snn, TrainEvent, TrainParams, Trainer, WeightKind, WeightLayer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum LthError {
    /// Training failed.
    #[error(transparent)]
    Snn(#[from] netxray_snn::SnnError),
    /// Hardware model or balancer failed.
    #[error(transparent)]
    Uticket(#[from] UticketError),
    /// The run directory holds a state that does not belong to this run.
    #[error("{path}: {reason}")]
    State {
        /// State file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Schema version of [`RoundRecord`].
pub const RECORD_SCHEMA: u32 = 1;

/// One layer's sparsity in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    /// Layer name.
    pub name: String,
    /// Fraction of pruned weights.
    pub sparsity: f64,
}

/// Everything measured in one round (the per-round JSON record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Schema version.
    pub schema: u32,
    /// Round (0 = dense).
    pub round: usize,
    /// Method.
    pub method: Method,
    /// Balancer (u-Ticket) or `None`.
    pub balancer: Option<String>,
    /// Mask carry (u-Ticket) or `None`.
    pub carry: Option<MaskCarry>,
    /// Test accuracy after the round's training.
    pub test_accuracy: f64,
    /// Global sparsity of the prunable weights (deployed masks).
    pub sparsity: f64,
    /// Per-layer sparsity (deployed masks).
    pub layer_sparsity: Vec<LayerSparsity>,
    /// Mean input spike sparsity over the spiking layers.
    pub spike_sparsity: f64,
    /// Hardware report of the deployed masks (after balancing for u-Ticket).
    pub hw: crate::hw::NetworkTotals,
    /// Hardware report of the pruned masks before balancing (u-Ticket only).
    pub hw_before_balance: Option<crate::hw::NetworkTotals>,
    /// What balancing did (u-Ticket only).
    pub balance: Option<BalanceSummaryShort>,
    /// Wall time of the round, seconds.
    pub wall_seconds: f64,
}

/// Totals of a balancing pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceSummaryShort {
    /// Positions regrown.
    pub regrown: u64,
    /// Positions removed.
    pub removed: u64,
    /// Kept weights before.
    pub nnz_before: u64,
    /// Kept weights after.
    pub nnz_after: u64,
}

impl From<&BalanceSummary> for BalanceSummaryShort {
    fn from(s: &BalanceSummary) -> Self {
        Self {
            regrown: s.regrown,
            removed: s.removed,
            nnz_before: s.nnz_before,
            nnz_after: s.nnz_after,
        }
    }
}

/// Progress of the loop.
#[derive(Debug, Clone)]
pub enum LthEvent {
    /// A round starts.
    RoundStart {
        /// Round index.
        round: usize,
        /// Rounds in total.
        rounds: usize,
    },
    /// Training progress inside the round.
    Train(TrainEvent),
    /// A round finished.
    RoundEnd(Box<RoundRecord>),
}

/// Mask file layout helpers and the per-round state live in [`state`].
pub use state::{STATE_FILE, load_state};

/// Global magnitude pruning: among the positions kept by `carry` whose weight is non-zero, the
/// `rate` quantile of |w| is the threshold; a position survives if it is kept by `carry` and its
/// |w| is at least the threshold (the reference code's `where(|w| < q, 0, mask)`).
pub fn prune_global(
    weights: &BTreeMap<String, HostTensor>,
    carry: &BTreeMap<String, Vec<bool>>,
    rate: f64,
) -> BTreeMap<String, Vec<bool>> {
    let mut alive: Vec<f32> = Vec::new();
    for (name, m) in carry {
        let w = &weights[name].data;
        alive.extend(
            w.iter()
                .zip(m)
                .filter(|(x, k)| **k && **x != 0.0)
                .map(|(x, _)| x.abs()),
        );
    }
    if alive.is_empty() {
        return carry.clone();
    }
    alive.sort_by(f32::total_cmp);
    // numpy's default (linear) percentile.
    let pos = rate * (alive.len() - 1) as f64;
    let lo = alive[pos.floor() as usize] as f64;
    let hi = alive[pos.ceil() as usize] as f64;
    let q = (lo + (hi - lo) * (pos - pos.floor())) as f32;
    carry
        .iter()
        .map(|(name, m)| {
            let w = &weights[name].data;
            let kept = w.iter().zip(m).map(|(x, k)| *k && x.abs() >= q).collect();
            (name.clone(), kept)
        })
        .collect()
}

/// Builds the hardware model's layers from masks and the network's geometry.
pub fn masked_layers(
    geometry: &[WeightLayer],
    shapes: &BTreeMap<String, Vec<usize>>,
    masks: &BTreeMap<String, Vec<bool>>,
    spike_sparsity: &BTreeMap<String, f64>,
) -> Result<Vec<MaskedLayer>, UticketError> {
    geometry
        .iter()
        .map(|g| {
            let wname = format!("{}.weight", g.name);
            let dims = &shapes[&wname];
            let shape = match g.kind {
                WeightKind::Conv => LayerShape::conv(dims[0], dims[1], dims[2], dims[3])?,
                WeightKind::Linear => LayerShape::linear(dims[0], dims[1])?,
            };
            let mut l = MaskedLayer::new(&g.name, shape, masks[&wname].clone(), g.out_h, g.out_w)?;
            if let Some(&s) = spike_sparsity.get(&g.name) {
                l = l.with_spike_sparsity(s.clamp(0.0, 1.0))?;
            }
            Ok(l)
        })
        .collect()
}

fn sparsity(masks: &BTreeMap<String, Vec<bool>>) -> (f64, Vec<LayerSparsity>) {
    let (mut kept, mut total) = (0usize, 0usize);
    let mut per = Vec::new();
    for (name, m) in masks {
        let k = m.iter().filter(|&&b| b).count();
        kept += k;
        total += m.len();
        per.push(LayerSparsity {
            name: name.trim_end_matches(".weight").to_string(),
            sparsity: 1.0 - k as f64 / m.len().max(1) as f64,
        });
    }
    (1.0 - kept as f64 / total.max(1) as f64, per)
}

fn to_host_masks(
    masks: &BTreeMap<String, Vec<bool>>,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> BTreeMap<String, HostTensor> {
    masks
        .iter()
        .map(|(n, m)| {
            (
                n.clone(),
                HostTensor {
                    shape: shapes[n].clone(),
                    data: m.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
                },
            )
        })
        .collect()
}

/// Inputs of [`run`].
pub struct LthRun<'a> {
    /// Loop parameters.
    pub params: LthParams,
    /// Training parameters of every round (epochs are set per round from `params`).
    pub train: TrainParams,
    /// Architecture.
    pub arch: netxray_snn::ArchSpec,
    /// Prepared data.
    pub data: &'a Data,
    /// Training device.
    pub device: Device,
    /// Run directory (state, records, plots).
    pub out_dir: &'a Path,
}

/// Runs (or resumes) the loop; returns the records of every round.
pub fn run(
    cfg: &LthRun<'_>,
    on_event: &mut dyn FnMut(LthEvent),
) -> Result<Vec<RoundRecord>, LthError> {
    let p = &cfg.params;
    std::fs::create_dir_all(cfg.out_dir).map_err(|e| LthError::State {
        path: cfg.out_dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let state_path = cfg.out_dir.join(STATE_FILE);
    let input = cfg.data.train.shape;
    let mut snn = Snn::new(
        &cfg.arch,
        input,
        cfg.data.classes,
        &cfg.device,
        cfg.train.seed,
    )?;
    let geometry = snn.weight_layers();
    let prunable = snn.prunable();
    let shapes: BTreeMap<String, Vec<usize>> = netxray_snn::state::shapes(&snn.net);
    let hw_params = HwParams::builder()
        .pes(p.pes)
        .timesteps(cfg.train.timesteps)
        .build()?;
    let balance_params = BalanceParams::builder()
        .pes(p.pes)
        .balancer(p.balancer)
        .seed(p.seed)
        .build()?;

    // Resume or start.
    let mut st = match load_state(&state_path)? {
        Some(s) => {
            if s.params != *p || s.train != cfg.train || s.arch != cfg.arch {
                return Err(LthError::State {
                    path: state_path,
                    reason: "belongs to a run with other parameters (use a new --out-dir)".into(),
                });
            }
            s
        }
        None => state::LthState {
            params: p.clone(),
            train: cfg.train.clone(),
            arch: cfg.arch.clone(),
            rounds_done: 0,
            records: Vec::new(),
            weights: BTreeMap::new(),
            rewind: BTreeMap::new(),
            deployed: prunable
                .iter()
                .map(|n| (n.clone(), vec![true; shapes[n].iter().product()]))
                .collect(),
            carry: prunable
                .iter()
                .map(|n| (n.clone(), vec![true; shapes[n].iter().product()]))
                .collect(),
        },
    };

    while st.rounds_done < p.rounds {
        let round = st.rounds_done;
        on_event(LthEvent::RoundStart {
            round,
            rounds: p.rounds,
        });
        let t0 = Instant::now();
        let mut hw_before = None;
        let mut balance_short = None;
        let trained: Trainer;
        if round == 0 {
            let mut tp = cfg.train.clone();
            tp.epochs = p.round0_epochs;
            let mut trainer = Trainer::new(snn, tp, cfg.data.mean.clone(), cfg.data.std.clone());
            if p.rewind_epoch == 0 {
                st.rewind = trainer.snn.tensors();
            }
            for e in 0..p.round0_epochs {
                trainer.train_epoch(&cfg.data.train, &cfg.data.test, &mut |ev| {
                    on_event(LthEvent::Train(ev))
                })?;
                if e + 1 == p.rewind_epoch {
                    st.rewind = trainer.snn.tensors();
                }
            }
            trained = trainer;
        } else {
            // 1) prune from the carried mask, on the trained weights of the previous round.
            let pruned = prune_global(&st.weights, &st.carry, p.prune_rate);
            // 2) balance (u-Ticket).
            let deployed = match p.method {
                Method::Lth => pruned.clone(),
                Method::Uticket => {
                    let layers = masked_layers(&geometry, &shapes, &pruned, &BTreeMap::new())?;
                    hw_before = Some(analyze(&layers, &hw_params)?);
                    let names: Vec<String> = geometry
                        .iter()
                        .map(|g| format!("{}.weight", g.name))
                        .collect();
                    let lw: Vec<LayerWeights<'_>> = names
                        .iter()
                        .map(|n| LayerWeights {
                            current: &st.weights[n].data,
                            reference: &st.rewind[n].data,
                        })
                        .collect();
                    let outcome = balance(&layers, Some(&lw), &balance_params)?;
                    balance_short = Some(BalanceSummaryShort::from(&outcome.summary));
                    names.into_iter().zip(outcome.masks).collect()
                }
            };
            st.carry = match (p.method, p.carry) {
                (Method::Uticket, MaskCarry::PreBalance) => pruned,
                _ => deployed.clone(),
            };
            st.deployed = deployed;
            // 3) rewind and retrain.
            snn.set_tensors(&st.rewind)?;
            let mut tp = cfg.train.clone();
            tp.epochs = p.epochs_per_round;
            let mut trainer = Trainer::new(snn, tp, cfg.data.mean.clone(), cfg.data.std.clone());
            trainer.set_masks(to_host_masks(&st.deployed, &shapes))?;
            for _ in 0..p.epochs_per_round {
                trainer.train_epoch(&cfg.data.train, &cfg.data.test, &mut |ev| {
                    on_event(LthEvent::Train(ev))
                })?;
            }
            trained = trainer;
        }
        let eval = trained.evaluate(&cfg.data.test, true)?;
        st.weights = trained.snn.tensors();
        snn = trained.snn;
        let layers = masked_layers(&geometry, &shapes, &st.deployed, &eval.spike_sparsity)?;
        let hw: HwReport = analyze(&layers, &hw_params)?;
        // Pre-balance report with the same measured spike sparsity, so energies compare.
        let hw_before_totals = match hw_before {
            Some(_) => {
                let pruned_masks = match p.carry {
                    MaskCarry::PreBalance => &st.carry,
                    MaskCarry::Balanced => &st.deployed,
                };
                let pre = prune_layers_for_report(
                    &geometry,
                    &shapes,
                    pruned_masks,
                    &eval.spike_sparsity,
                    &hw_params,
                    hw_before.as_ref(),
                )?;
                Some(pre)
            }
            None => None,
        };
        let (global, per_layer) = sparsity(&st.deployed);
        let spike_mean = if eval.spike_sparsity.is_empty() {
            0.0
        } else {
            eval.spike_sparsity.values().sum::<f64>() / eval.spike_sparsity.len() as f64
        };
        let record = RoundRecord {
            schema: RECORD_SCHEMA,
            round,
            method: p.method,
            balancer: (p.method == Method::Uticket).then(|| p.balancer.to_string()),
            carry: (p.method == Method::Uticket).then_some(p.carry),
            test_accuracy: eval.accuracy,
            sparsity: global,
            layer_sparsity: per_layer,
            spike_sparsity: spike_mean,
            hw: hw.totals.clone(),
            hw_before_balance: hw_before_totals,
            balance: balance_short,
            wall_seconds: t0.elapsed().as_secs_f64(),
        };
        st.records.push(record.clone());
        st.rounds_done += 1;
        state::save_state(&state_path, &st)?;
        state::write_json(&cfg.out_dir.join(format!("round-{round:02}.json")), &record)?;
        state::write_json(&cfg.out_dir.join(format!("round-{round:02}-hw.json")), &hw)?;
        on_event(LthEvent::RoundEnd(Box::new(record)));
    }
    state::write_json(&cfg.out_dir.join("rounds.json"), &st.records)?;
    // Workloads of the final masks before and after balancing: for u-Ticket the last prune's
    // masks against the deployed ones; for LTH the deployed masks against a one-shot balance of
    // them (what u-Ticket would have deployed).
    let spikes = st
        .records
        .last()
        .map(|_| BTreeMap::new())
        .unwrap_or_default();
    let deployed = masked_layers(&geometry, &shapes, &st.deployed, &spikes)?;
    let (before, after) = match p.method {
        Method::Uticket => {
            let pre = masked_layers(&geometry, &shapes, &st.carry, &spikes)?;
            (analyze(&pre, &hw_params)?, analyze(&deployed, &hw_params)?)
        }
        Method::Lth => {
            let outcome = balance(
                &deployed,
                None,
                &BalanceParams::builder().pes(p.pes).seed(p.seed).build()?,
            )?;
            let balanced = outcome.apply(&deployed)?;
            (
                analyze(&deployed, &hw_params)?,
                analyze(&balanced, &hw_params)?,
            )
        }
    };
    state::write_json(&cfg.out_dir.join("final-hw-before-balance.json"), &before)?;
    state::write_json(&cfg.out_dir.join("final-hw-after-balance.json"), &after)?;
    if p.rounds > 1 {
        crate::plots::worst_layer_workloads(
            &cfg.out_dir.join("worst-layer-workloads.svg"),
            &before,
            &after,
        )
        .map_err(|e| LthError::State {
            path: cfg.out_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(st.records)
}

/// The hardware totals of the pre-balance masks, with the round's measured spike sparsity.
fn prune_layers_for_report(
    geometry: &[WeightLayer],
    shapes: &BTreeMap<String, Vec<usize>>,
    masks: &BTreeMap<String, Vec<bool>>,
    spikes: &BTreeMap<String, f64>,
    hw_params: &HwParams,
    _unbalanced: Option<&HwReport>,
) -> Result<crate::hw::NetworkTotals, UticketError> {
    let layers = masked_layers(geometry, shapes, masks, spikes)?;
    Ok(analyze(&layers, hw_params)?.totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_pruning_drops_the_smallest_quarter_across_layers() {
        let mut w = BTreeMap::new();
        w.insert(
            "a.weight".to_string(),
            HostTensor {
                shape: vec![2, 2],
                data: vec![0.1, -0.5, 0.9, 0.0],
            },
        );
        w.insert(
            "b.weight".to_string(),
            HostTensor {
                shape: vec![4],
                data: vec![-0.2, 0.3, 0.7, 0.4],
            },
        );
        let carry: BTreeMap<String, Vec<bool>> = [
            ("a.weight".to_string(), vec![true, true, true, false]),
            ("b.weight".to_string(), vec![true; 4]),
        ]
        .into();
        // Alive |w|: 0.1 0.2 0.3 0.4 0.5 0.7 0.9 → 25 % quantile (linear) = 0.25.
        let m = prune_global(&w, &carry, 0.25);
        assert_eq!(m["a.weight"], vec![false, true, true, false]);
        assert_eq!(m["b.weight"], vec![false, true, true, true]);
    }

    #[test]
    fn a_position_outside_the_carried_mask_never_returns() {
        let w: BTreeMap<String, HostTensor> = [(
            "a.weight".to_string(),
            HostTensor {
                shape: vec![4],
                data: vec![5.0, 1.0, 2.0, 3.0],
            },
        )]
        .into();
        let carry: BTreeMap<String, Vec<bool>> =
            [("a.weight".to_string(), vec![false, true, true, true])].into();
        let m = prune_global(&w, &carry, 0.25);
        assert!(!m["a.weight"][0], "large but not carried: stays pruned");
    }
}
