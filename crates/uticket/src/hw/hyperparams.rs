//! Parameters of the PE-array hardware model, with their defaults and the reason for each.
//!
//! Build with [`HwParams::builder`]; [`HwParamsBuilder::build`] validates every value, so an
//! [`HwParams`] is always usable.

use crate::errors::UticketError;
use crate::layer::LayerSelection;
use crate::mapping::Mapping;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How T_avg (the mean PE workload of a group) enters the utilization formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TAvgMode {
    /// `ceil(mean)`, as the reference code computes it (default, so numbers are comparable with the
    /// paper). It rounds utilization up slightly, most visibly at very high sparsity.
    #[default]
    Ceil,
    /// The exact mean (the paper's formula read literally).
    Exact,
}

impl fmt::Display for TAvgMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TAvgMode::Ceil => "ceil",
            TAvgMode::Exact => "exact",
        })
    }
}

impl FromStr for TAvgMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ceil" => Ok(TAvgMode::Ceil),
            "exact" => Ok(TAvgMode::Exact),
            other => Err(format!(
                "unknown T_avg mode '{other}' (expected ceil or exact)"
            )),
        }
    }
}

/// Checked parameters of the hardware model. Construct through [`HwParamsBuilder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HwParams {
    /// Number of PEs n. Default 16 (the paper's array; Table III sweeps 2–64). Must be ≥ 2, because
    /// utilization is normalised by n/(n−1).
    pub pes: usize,
    /// Timesteps T: every weight is applied once per timestep. Default 4 (the paper's T).
    pub timesteps: usize,
    /// How T_avg is computed. Default [`TAvgMode::Ceil`] (the reference code).
    pub t_avg: TAvgMode,
    /// Weight-to-PE mapping. Default [`Mapping::FilterPerPe`] (the paper's).
    pub mapping: Mapping,
    /// Which layers are measured. Default: skip the first conv and linear layers (reference code).
    pub selection: LayerSelection,
    /// Dynamic energy E_d of one PE processing one input spike. Default 1: energies are reported in
    /// units of E_d, as the paper normalises them (absolute values are not published).
    pub e_dynamic: f64,
    /// Leakage energy E_l of one PE for one cycle (charged on work and idle cycles). Default 0.21:
    /// an inferred calibration, not a published constant — with E_l/E_d = 0.21, Eq. 3 and the
    /// paper's Tables I/II reproduce all six reported PE-energy savings within ±0.4 pp.
    pub e_leak: f64,
    /// Input spike sparsity S_in ∈ [0, 1] used for layers without a measured value. Default 0: no
    /// credit for silent inputs unless measured, so the energy is an upper bound (the paper measures
    /// 0.80–0.86 for VGG-16 and 0.60–0.68 for ResNet-19).
    pub spike_sparsity: f64,
    /// Clock frequency in Hz for the wall-clock estimate. Default 400 MHz (the paper's synthesis).
    pub clock_hz: f64,
}

impl HwParams {
    /// A builder with the documented defaults.
    pub fn builder() -> HwParamsBuilder {
        HwParamsBuilder::default()
    }

    /// A builder starting from these (valid) values, e.g. to change only the PE count.
    pub fn to_builder(&self) -> HwParamsBuilder {
        HwParamsBuilder { p: self.clone() }
    }
}

impl Default for HwParams {
    fn default() -> Self {
        HwParamsBuilder::default()
            .build()
            .expect("defaults are valid")
    }
}

/// Builder for [`HwParams`]; every setter takes the raw value and `build` validates all of them.
#[derive(Debug, Clone)]
pub struct HwParamsBuilder {
    p: HwParams,
}

impl Default for HwParamsBuilder {
    fn default() -> Self {
        Self {
            p: HwParams {
                pes: 16,
                timesteps: 4,
                t_avg: TAvgMode::Ceil,
                mapping: Mapping::FilterPerPe,
                selection: LayerSelection::default(),
                e_dynamic: 1.0,
                e_leak: 0.21,
                spike_sparsity: 0.0,
                clock_hz: 400e6,
            },
        }
    }
}

macro_rules! setter {
    ($name:ident, $t:ty) => {
        #[doc = concat!("Sets `", stringify!($name), "` (see [`HwParams`]).")]
        pub fn $name(mut self, v: $t) -> Self {
            self.p.$name = v;
            self
        }
    };
}

impl HwParamsBuilder {
    setter!(pes, usize);
    setter!(timesteps, usize);
    setter!(t_avg, TAvgMode);
    setter!(mapping, Mapping);
    setter!(selection, LayerSelection);
    setter!(e_dynamic, f64);
    setter!(e_leak, f64);
    setter!(spike_sparsity, f64);
    setter!(clock_hz, f64);

    /// Sets whether the first conv layer is measured (see [`LayerSelection`]).
    pub fn include_first_conv(mut self, v: bool) -> Self {
        self.p.selection.include_first_conv = v;
        self
    }

    /// Sets whether linear layers are measured (see [`LayerSelection`]).
    pub fn include_linear(mut self, v: bool) -> Self {
        self.p.selection.include_linear = v;
        self
    }

    /// Validates every value and returns the checked parameters.
    pub fn build(self) -> Result<HwParams, UticketError> {
        let p = self.p;
        if p.pes < 2 {
            return Err(UticketError::param(
                "pes",
                format!(
                    "must be at least 2 (utilization divides by n−1), got {}",
                    p.pes
                ),
            ));
        }
        if p.timesteps == 0 {
            return Err(UticketError::param("timesteps", "must be at least 1"));
        }
        for (name, v) in [("e_dynamic", p.e_dynamic), ("e_leak", p.e_leak)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(UticketError::param(
                    name,
                    format!("must be a finite number ≥ 0, got {v}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&p.spike_sparsity) {
            return Err(UticketError::param(
                "spike_sparsity",
                format!("must be in [0, 1], got {}", p.spike_sparsity),
            ));
        }
        if !(p.clock_hz.is_finite() && p.clock_hz > 0.0) {
            return Err(UticketError::param(
                "clock_hz",
                format!("must be a finite number > 0, got {}", p.clock_hz),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(b: HwParamsBuilder) -> &'static str {
        match b.build() {
            Err(UticketError::InvalidParam { name, .. }) => name,
            other => panic!("expected InvalidParam, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let p = HwParams::default();
        assert_eq!(p.pes, 16);
        assert_eq!(p.timesteps, 4);
        assert_eq!(p.t_avg, TAvgMode::Ceil);
        assert_eq!(p.mapping, Mapping::FilterPerPe);
        assert_eq!(p.selection, LayerSelection::default());
        assert_eq!((p.e_dynamic, p.e_leak), (1.0, 0.21));
        assert_eq!(p.spike_sparsity, 0.0);
        assert_eq!(p.clock_hz, 400e6);
        assert_eq!(p.to_builder().pes(4).build().unwrap().pes, 4);
    }

    #[test]
    fn pes_below_two_is_rejected() {
        assert_eq!(rejected(HwParams::builder().pes(1)), "pes");
        assert_eq!(rejected(HwParams::builder().pes(0)), "pes");
    }

    #[test]
    fn zero_timesteps_is_rejected() {
        assert_eq!(rejected(HwParams::builder().timesteps(0)), "timesteps");
    }

    #[test]
    fn negative_or_non_finite_dynamic_energy_is_rejected() {
        assert_eq!(rejected(HwParams::builder().e_dynamic(-1.0)), "e_dynamic");
        assert_eq!(
            rejected(HwParams::builder().e_dynamic(f64::NAN)),
            "e_dynamic"
        );
    }

    #[test]
    fn negative_or_non_finite_leak_energy_is_rejected() {
        assert_eq!(rejected(HwParams::builder().e_leak(-0.1)), "e_leak");
        assert_eq!(
            rejected(HwParams::builder().e_leak(f64::INFINITY)),
            "e_leak"
        );
    }

    #[test]
    fn spike_sparsity_outside_unit_interval_is_rejected() {
        assert_eq!(
            rejected(HwParams::builder().spike_sparsity(1.01)),
            "spike_sparsity"
        );
        assert_eq!(
            rejected(HwParams::builder().spike_sparsity(-0.01)),
            "spike_sparsity"
        );
        assert_eq!(
            rejected(HwParams::builder().spike_sparsity(f64::NAN)),
            "spike_sparsity"
        );
    }

    #[test]
    fn non_positive_clock_is_rejected() {
        assert_eq!(rejected(HwParams::builder().clock_hz(0.0)), "clock_hz");
        assert_eq!(rejected(HwParams::builder().clock_hz(f64::NAN)), "clock_hz");
    }

    #[test]
    fn enum_names_parse() {
        assert_eq!("ceil".parse::<TAvgMode>().unwrap(), TAvgMode::Ceil);
        assert_eq!("exact".parse::<TAvgMode>().unwrap(), TAvgMode::Exact);
        assert!("mean".parse::<TAvgMode>().is_err());
    }
}
