//! Sign recovery: which side of each recovered hyperplane is the neuron's active side.
//!
//! A neuron's row is only known up to a non-zero scalar; the positive scale is a true symmetry but the
//! sign is not. Methods, chosen per layer:
//! - [`last_layer`]: for the last hidden layer, a least-squares fit of the outputs on
//!   `[ReLU(ẑ), ẑ, 1]` — a neuron with the wrong sign needs a non-zero coefficient on `ẑ`.
//! - [`soe`]: for contractive layers (width ≤ rank of the control space), directional derivatives
//!   that move one neuron's pre-activation at a time: a non-zero response proves that neuron active,
//!   so its sign is the sign of `ẑ` there. Exact, no votes on noise.
//! - [`wiggle`]: the neuron wiggle for expansive layers, a vote with a confidence per neuron.
//! - [`brute`]: a cross-check of the above for layers of width ≤ 16 (on by default): every sign pattern
//!   is scored against measured gradients; a decisive disagreement corrects the signs, an indecisive
//!   one flags the neurons.
//!
//! Every neuron gets a confidence; low confidence is reported, never silently trusted.

pub mod brute;
pub mod last_layer;
mod local;
pub mod soe;
pub mod wiggle;

use serde::Serialize;

/// Outcome of a sign method for one layer.
#[derive(Debug, Clone, Serialize)]
pub struct SignOutcome {
    /// Method used.
    pub method: &'static str,
    /// +1 keeps the recovered row, −1 flips it.
    pub signs: Vec<f64>,
    /// Confidence per neuron in [0, 1].
    pub confidence: Vec<f64>,
    /// Queries spent.
    pub queries: u64,
}

impl SignOutcome {
    /// Neurons whose confidence is below `min`.
    pub fn low_confidence(&self, min: f64) -> Vec<usize> {
        (0..self.signs.len())
            .filter(|&k| self.confidence[k] < min)
            .collect()
    }
}
