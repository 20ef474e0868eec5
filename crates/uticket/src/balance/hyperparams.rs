//! Parameters of the u-Ticket balancers, with their defaults and the reason for each.
//!
//! Build with [`BalanceParams::builder`]; [`BalanceParamsBuilder::build`] validates every value.

use crate::errors::UticketError;
use crate::layer::LayerSelection;
use crate::mapping::Mapping;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How positions are chosen when a PE's workload is raised to or lowered to the group target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balancer {
    /// The paper and reference code (`mode='strong'`): regrow uniformly random pruned positions of a
    /// light PE, remove uniformly random kept positions of a heavy one.
    #[default]
    Random,
    /// Beyond the paper: regrow the pruned positions with the largest |w| of a reference tensor (e.g.
    /// the rewind-point weights the regrown connections restart from) and remove the kept positions
    /// with the smallest |w| of the current (trained) weights. Ties are broken by a seeded shuffle.
    Magnitude,
}

impl fmt::Display for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balancer::Random => "random",
            Balancer::Magnitude => "magnitude",
        })
    }
}

impl FromStr for Balancer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Balancer::Random),
            "magnitude" => Ok(Balancer::Magnitude),
            other => Err(format!(
                "unknown balancer '{other}' (expected random or magnitude)"
            )),
        }
    }
}

/// Checked parameters of a balancing pass. Construct through [`BalanceParamsBuilder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceParams {
    /// PEs per group n. Default 16 (the paper's array). Must be ≥ 2 (with one PE there is nothing to
    /// balance).
    pub pes: usize,
    /// Position selection. Default [`Balancer::Random`] (the paper).
    pub balancer: Balancer,
    /// Seed of every random choice. Layer i draws from ChaCha8 stream i of this seed, so a layer's
    /// result does not depend on the other layers. Default 0.
    pub seed: u64,
    /// Weight-to-PE mapping whose groups are balanced; must match the hardware model's. Default
    /// [`Mapping::FilterPerPe`] (the paper).
    pub mapping: Mapping,
    /// Which layers are balanced. Default: every conv except the first; no linear layer (reference
    /// code).
    pub selection: LayerSelection,
}

impl BalanceParams {
    /// A builder with the documented defaults.
    pub fn builder() -> BalanceParamsBuilder {
        BalanceParamsBuilder::default()
    }

    /// A builder starting from these (valid) values.
    pub fn to_builder(&self) -> BalanceParamsBuilder {
        BalanceParamsBuilder { p: self.clone() }
    }
}

impl Default for BalanceParams {
    fn default() -> Self {
        BalanceParamsBuilder::default()
            .build()
            .expect("defaults are valid")
    }
}

/// Builder for [`BalanceParams`]; `build` validates.
#[derive(Debug, Clone)]
pub struct BalanceParamsBuilder {
    p: BalanceParams,
}

impl Default for BalanceParamsBuilder {
    fn default() -> Self {
        Self {
            p: BalanceParams {
                pes: 16,
                balancer: Balancer::Random,
                seed: 0,
                mapping: Mapping::FilterPerPe,
                selection: LayerSelection::default(),
            },
        }
    }
}

macro_rules! setter {
    ($name:ident, $t:ty) => {
        #[doc = concat!("Sets `", stringify!($name), "` (see [`BalanceParams`]).")]
        pub fn $name(mut self, v: $t) -> Self {
            self.p.$name = v;
            self
        }
    };
}

impl BalanceParamsBuilder {
    setter!(pes, usize);
    setter!(balancer, Balancer);
    setter!(seed, u64);
    setter!(mapping, Mapping);
    setter!(selection, LayerSelection);

    /// Sets whether the first conv layer is balanced (see [`LayerSelection`]).
    pub fn include_first_conv(mut self, v: bool) -> Self {
        self.p.selection.include_first_conv = v;
        self
    }

    /// Sets whether linear layers are balanced (see [`LayerSelection`]).
    pub fn include_linear(mut self, v: bool) -> Self {
        self.p.selection.include_linear = v;
        self
    }

    /// Validates every value and returns the checked parameters.
    pub fn build(self) -> Result<BalanceParams, UticketError> {
        if self.p.pes < 2 {
            return Err(UticketError::param(
                "pes",
                format!("must be at least 2, got {}", self.p.pes),
            ));
        }
        Ok(self.p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented() {
        let p = BalanceParams::default();
        assert_eq!(p.pes, 16);
        assert_eq!(p.balancer, Balancer::Random);
        assert_eq!(p.seed, 0);
        assert_eq!(p.mapping, Mapping::FilterPerPe);
        assert_eq!(p.selection, LayerSelection::default());
    }

    #[test]
    fn pes_below_two_is_rejected() {
        for pes in [0, 1] {
            match BalanceParams::builder().pes(pes).build() {
                Err(UticketError::InvalidParam { name, .. }) => assert_eq!(name, "pes"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn balancer_names_parse() {
        assert_eq!("random".parse::<Balancer>().unwrap(), Balancer::Random);
        assert_eq!(
            "magnitude".parse::<Balancer>().unwrap(),
            Balancer::Magnitude
        );
        assert!("grad".parse::<Balancer>().is_err());
    }
}
