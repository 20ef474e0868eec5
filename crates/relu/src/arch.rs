//! Architecture strings: `d0-d1-…-dk`, input width first, output width last.

use crate::ReluError;
use std::fmt;
use std::str::FromStr;

/// The widths of a fully connected network, input first. At least one layer (two widths), all non-zero.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Arch {
    dims: Vec<usize>,
}

impl Arch {
    /// Builds an architecture from widths; fails on fewer than two widths or a zero width.
    pub fn new(dims: Vec<usize>) -> Result<Self, ReluError> {
        let s = dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("-");
        if dims.len() < 2 {
            return Err(ReluError::BadArch {
                arch: s,
                reason: "need at least an input and an output width".into(),
            });
        }
        if let Some(pos) = dims.iter().position(|&d| d == 0) {
            return Err(ReluError::BadArch {
                arch: s,
                reason: format!("width {pos} is zero"),
            });
        }
        Ok(Self { dims })
    }
    /// All widths, input first.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }
    /// Input dimension.
    pub fn input_dim(&self) -> usize {
        self.dims[0]
    }
    /// Output dimension.
    pub fn output_dim(&self) -> usize {
        *self.dims.last().expect("Arch has >= 2 dims")
    }
    /// Number of affine layers (hidden layers + the output layer).
    pub fn num_layers(&self) -> usize {
        self.dims.len() - 1
    }
    /// Widths of the hidden layers.
    pub fn hidden(&self) -> &[usize] {
        &self.dims[1..self.dims.len() - 1]
    }
    /// Number of parameters (weights and biases).
    pub fn num_params(&self) -> usize {
        self.dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }
}

impl FromStr for Arch {
    type Err = ReluError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let dims = s
            .trim()
            .split(['-', 'x', ','])
            .map(|p| {
                p.trim().parse::<usize>().map_err(|_| ReluError::BadArch {
                    arch: s.to_string(),
                    reason: format!("'{p}' is not a positive integer (expected e.g. 784-128-10)"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Arch::new(dims).map_err(|e| match e {
            ReluError::BadArch { reason, .. } => ReluError::BadArch {
                arch: s.to_string(),
                reason,
            },
            other => other,
        })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        f.write_str(&parts.join("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_counts() {
        let a: Arch = "784-128-128-10".parse().unwrap();
        assert_eq!(a.num_params(), 118_282);
        assert_eq!(a.to_string(), "784-128-128-10");
        assert_eq!(a.hidden(), &[128, 128]);
    }

    #[test]
    fn rejects_bad_strings() {
        assert!("784".parse::<Arch>().is_err());
        assert!("784-0-10".parse::<Arch>().is_err());
        assert!("784-a-10".parse::<Arch>().is_err());
        assert!("".parse::<Arch>().is_err());
    }
}
