//! Parameters of the LTH / u-Ticket loop: a builder with documented defaults, validated into
//! [`LthParams`].

use crate::balance::Balancer;
use crate::errors::UticketError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Which pruning loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Iterative magnitude pruning with late rewinding (Kim et al., ECCV 2022).
    Lth,
    /// LTH plus workload balancing after every pruning step (Yin et al., TETCI 2024).
    Uticket,
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lth" => Ok(Method::Lth),
            "uticket" | "u-ticket" => Ok(Method::Uticket),
            o => Err(format!("unknown method '{o}' (expected lth or uticket)")),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Lth => "lth",
            Method::Uticket => "uticket",
        })
    }
}

/// Which mask the next pruning step starts from (u-Ticket only; research note §1.5 / (c)2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskCarry {
    /// The reference code: the pre-balance mask carries, so regrown connections are dropped at
    /// the next prune and removals accumulate.
    PreBalance,
    /// The cleaner reading of Algorithm 1: the balanced mask carries.
    Balanced,
}

impl FromStr for MaskCarry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pre-balance" | "code" => Ok(MaskCarry::PreBalance),
            "balanced" | "paper" => Ok(MaskCarry::Balanced),
            o => Err(format!(
                "unknown mask carry '{o}' (expected pre-balance or balanced)"
            )),
        }
    }
}

/// Checked loop parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LthParams {
    /// LTH or u-Ticket.
    pub method: Method,
    /// Balancer (u-Ticket only).
    pub balancer: Balancer,
    /// Mask carried into the next prune (u-Ticket only).
    pub carry: MaskCarry,
    /// Rounds including the dense round 0 (paper: 15 → 14 prunes → 98.2 % sparsity).
    pub rounds: usize,
    /// Fraction of the remaining weights pruned per round (paper: 0.25).
    pub prune_rate: f64,
    /// Epochs of the dense round 0.
    pub round0_epochs: usize,
    /// Late-rewinding point: weights after this many epochs of round 0 (0 = the initial weights;
    /// paper: 20 of 200-300).
    pub rewind_epoch: usize,
    /// Epochs of every later round (paper: total − rewind epoch).
    pub epochs_per_round: usize,
    /// PEs per group of the hardware model and the balancer (paper: 16).
    pub pes: usize,
    /// Seed of the balancer.
    pub seed: u64,
}

/// Builder for [`LthParams`].
#[derive(Debug, Clone)]
pub struct LthParamsBuilder {
    p: LthParams,
}

impl LthParams {
    /// Defaults are the paper's recipe: u-Ticket with the random balancer and the reference
    /// code's pre-balance mask carry, 15 rounds of 25 %, round 0 of 200 epochs rewound to
    /// epoch 20, 180 epochs per later round, 16 PEs, seed 0. CPU recipes shrink the epochs.
    pub fn builder() -> LthParamsBuilder {
        LthParamsBuilder {
            p: LthParams {
                method: Method::Uticket,
                balancer: Balancer::Random,
                carry: MaskCarry::PreBalance,
                rounds: 15,
                prune_rate: 0.25,
                round0_epochs: 200,
                rewind_epoch: 20,
                epochs_per_round: 180,
                pes: 16,
                seed: 0,
            },
        }
    }
}

macro_rules! setter {
    ($name:ident, $t:ty, $doc:literal) => {
        #[doc = $doc]
        pub fn $name(mut self, v: $t) -> Self {
            self.p.$name = v;
            self
        }
    };
}

impl LthParamsBuilder {
    setter!(method, Method, "Method.");
    setter!(balancer, Balancer, "Balancer.");
    setter!(carry, MaskCarry, "Mask carry.");
    setter!(rounds, usize, "Rounds including round 0 (≥ 1).");
    setter!(prune_rate, f64, "Prune rate per round, in (0, 1).");
    setter!(round0_epochs, usize, "Epochs of round 0 (≥ 1).");
    setter!(rewind_epoch, usize, "Rewind epoch (≤ round-0 epochs).");
    setter!(epochs_per_round, usize, "Epochs per later round (≥ 1).");
    setter!(pes, usize, "PEs per group (≥ 2).");
    setter!(seed, u64, "Balancer seed.");

    /// Validates every value.
    pub fn build(self) -> Result<LthParams, UticketError> {
        let p = self.p;
        if p.rounds == 0 {
            return Err(UticketError::param("rounds", "must be at least 1"));
        }
        if !(p.prune_rate > 0.0 && p.prune_rate < 1.0) {
            return Err(UticketError::param(
                "prune_rate",
                format!("must be in (0, 1), got {}", p.prune_rate),
            ));
        }
        if p.round0_epochs == 0 {
            return Err(UticketError::param("round0_epochs", "must be at least 1"));
        }
        if p.rewind_epoch > p.round0_epochs {
            return Err(UticketError::param(
                "rewind_epoch",
                format!(
                    "{} is after the end of round 0 ({} epochs)",
                    p.rewind_epoch, p.round0_epochs
                ),
            ));
        }
        if p.epochs_per_round == 0 {
            return Err(UticketError::param(
                "epochs_per_round",
                "must be at least 1",
            ));
        }
        if p.pes < 2 {
            return Err(UticketError::param("pes", "must be at least 2"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(r: Result<LthParams, UticketError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        let p = LthParams::builder().build().unwrap();
        assert_eq!(p.rounds, 15);
        assert!((1.0 - 0.75f64.powi(14) - 0.9822).abs() < 1e-3);
    }
    #[test]
    fn zero_rounds() {
        assert!(name(LthParams::builder().rounds(0).build()).contains("rounds"));
    }
    #[test]
    fn bad_prune_rate() {
        assert!(name(LthParams::builder().prune_rate(1.0).build()).contains("prune_rate"));
        assert!(name(LthParams::builder().prune_rate(0.0).build()).contains("prune_rate"));
        assert!(name(LthParams::builder().prune_rate(f64::NAN).build()).contains("prune_rate"));
    }
    #[test]
    fn zero_round0_epochs() {
        assert!(
            name(
                LthParams::builder()
                    .round0_epochs(0)
                    .rewind_epoch(0)
                    .build()
            )
            .contains("round0_epochs")
        );
    }
    #[test]
    fn rewind_after_round0() {
        assert!(
            name(
                LthParams::builder()
                    .round0_epochs(2)
                    .rewind_epoch(3)
                    .build()
            )
            .contains("rewind_epoch")
        );
    }
    #[test]
    fn zero_epochs_per_round() {
        assert!(
            name(LthParams::builder().epochs_per_round(0).build()).contains("epochs_per_round")
        );
    }
    #[test]
    fn one_pe() {
        assert!(name(LthParams::builder().pes(1).build()).contains("pes"));
    }
}
