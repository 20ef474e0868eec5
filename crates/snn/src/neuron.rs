//! The leaky integrate-and-fire neuron of the LTH-for-SNN / u-Ticket reference code, and its
//! surrogate gradients.
//!
//! Charge: `V[t] = λ·V[t−1] + (1−λ)·X[t]` with `λ = 1 − 1/τ` (SpikingJelly's `LIFNode` with
//! `decay_input=True`: `V += (X − V)/τ`). Fire: `S[t] = H(V[t] − V_th)`. Hard reset to 0 with the
//! reset path detached (`detach_reset=True`). The Heaviside step has no useful derivative, so the
//! backward pass uses a smooth surrogate through the straight-through trick
//! `s = sg(u) + (H(u) − sg(u)).detach()`: the value is exactly `H(u)`, the gradient is `sg'(u)`.
//! (A hand-written backward would need burn's backend-extension machinery for every backend;
//! the straight-through form is backend-portable, which keeps `cuda`/`wgpu` a feature flip.)

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// The smooth function whose derivative replaces the Heaviside step's in the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Surrogate {
    /// SpikingJelly's `ATan`: `sg(u) = atan(π/2·α·u)/π + 1/2`,
    /// `sg'(u) = (α/2) / (1 + (π/2·α·u)²)`. The reference code's choice (α = 2).
    Atan {
        /// Sharpness α; larger is closer to the step.
        alpha: f64,
    },
    /// Fast sigmoid (snnTorch / SuperSpike): `sg(u) = u/(1 + k|u|)`, `sg'(u) = 1/(1 + k|u|)²`.
    FastSigmoid {
        /// Slope k.
        slope: f64,
    },
}

impl Default for Surrogate {
    fn default() -> Self {
        Surrogate::Atan { alpha: 2.0 }
    }
}

impl Surrogate {
    /// The surrogate derivative `sg'(u)` as a plain number (used by tests and docs).
    pub fn derivative(&self, u: f64) -> f64 {
        match *self {
            Surrogate::Atan { alpha } => {
                let z = PI / 2.0 * alpha * u;
                (alpha / 2.0) / (1.0 + z * z)
            }
            Surrogate::FastSigmoid { slope } => {
                let d = 1.0 + slope * u.abs();
                1.0 / (d * d)
            }
        }
    }

    /// `sg(u)` on a tensor (its autodiff derivative is [`Surrogate::derivative`]).
    fn smooth<const D: usize>(&self, u: Tensor<D>) -> Tensor<D> {
        match *self {
            Surrogate::Atan { alpha } => u
                .mul_scalar(PI / 2.0 * alpha)
                .atan()
                .div_scalar(PI)
                .add_scalar(0.5),
            Surrogate::FastSigmoid { slope } => {
                let denom = u.clone().abs().mul_scalar(slope).add_scalar(1.0);
                u.div(denom)
            }
        }
    }

    /// Heaviside step `H(u) = [u ≥ 0]` forward, surrogate derivative backward.
    pub fn spike<const D: usize>(&self, u: Tensor<D>) -> Tensor<D> {
        let step = u.clone().greater_equal_elem(0.0).float();
        let smooth = self.smooth(u);
        smooth.clone() + (step - smooth).detach()
    }
}

/// Parameters of the LIF neuron (shared by every spiking layer of a network).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LifParams {
    /// Membrane time constant τ (> 1). Default 4/3, so λ = 0.25 and the input gain is 0.75, as in
    /// the reference code (`LIFNode(tau=4/3)`).
    pub tau: f64,
    /// Firing threshold V_th. Default 1.0.
    pub threshold: f64,
    /// Surrogate gradient. Default ATan with α = 2 (SpikingJelly's default).
    pub surrogate: Surrogate,
}

impl Default for LifParams {
    fn default() -> Self {
        Self {
            tau: 4.0 / 3.0,
            threshold: 1.0,
            surrogate: Surrogate::default(),
        }
    }
}

impl LifParams {
    /// Leak λ = 1 − 1/τ.
    pub fn leak(&self) -> f64 {
        1.0 - 1.0 / self.tau
    }

    /// One time step: returns `(V_after_reset, S)` from the previous membrane potential and the
    /// input current. `v_prev = None` means a fresh neuron (V = 0), which saves a multiply at t = 0.
    pub fn step<const D: usize>(
        &self,
        v_prev: Option<Tensor<D>>,
        input: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        let charged_input = input.mul_scalar(1.0 - self.leak());
        let v = match v_prev {
            Some(v) => v.mul_scalar(self.leak()) + charged_input,
            None => charged_input,
        };
        let s = self.surrogate.spike(v.clone().sub_scalar(self.threshold));
        // Hard reset to 0 with the reset path detached: V ← V·(1 − S).
        let keep = s.clone().detach().neg().add_scalar(1.0);
        (v * keep, s)
    }

    /// Multi-step execution over a merged time-major batch: `input` is `[T·B, ...]` (time
    /// major: rows `t·B .. (t+1)·B` are time step t), the output spikes have the same shape.
    /// The stateless layers around it run once on the whole `[T·B, ...]` batch; only this scan is
    /// sequential in time.
    pub fn scan<const D: usize>(&self, input: Tensor<D>, timesteps: usize) -> Tensor<D> {
        let rows = input.dims()[0];
        debug_assert_eq!(rows % timesteps, 0, "batch is not a multiple of T");
        let batch = rows / timesteps;
        if timesteps == 1 {
            return self.step(None, input).1;
        }
        let mut v = None;
        let mut spikes = Vec::with_capacity(timesteps);
        for t in 0..timesteps {
            let x_t = input.clone().narrow(0, t * batch, batch);
            let (v_next, s) = self.step(v, x_t);
            v = Some(v_next);
            spikes.push(s);
        }
        Tensor::cat(spikes, 0)
    }

    /// Multi-step execution with the same input at every step (direct encoding of the first
    /// layer: its current is computed once, not T times). `input` is `[B, ...]`, the output
    /// `[T·B, ...]`.
    pub fn scan_constant<const D: usize>(&self, input: Tensor<D>, timesteps: usize) -> Tensor<D> {
        let charged = input.mul_scalar(1.0 - self.leak());
        let mut v: Option<Tensor<D>> = None;
        let mut spikes = Vec::with_capacity(timesteps);
        for _ in 0..timesteps {
            let v_now = match v {
                Some(v) => v.mul_scalar(self.leak()) + charged.clone(),
                None => charged.clone(),
            };
            let s = self
                .surrogate
                .spike(v_now.clone().sub_scalar(self.threshold));
            let keep = s.clone().detach().neg().add_scalar(1.0);
            v = Some(v_now * keep);
            spikes.push(s);
        }
        Tensor::cat(spikes, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn lif_matches_a_hand_computed_sequence() {
        // τ = 4/3: V[t] = 0.25·V[t−1] + 0.75·X[t], fire at V ≥ 1, hard reset to 0.
        // X = 1.0, 1.0, 0.2, 2.0:
        //   t0: V = 0.75            → no spike, V = 0.75
        //   t1: V = 0.1875 + 0.75 = 0.9375 → no spike
        //   t2: V = 0.234375 + 0.15 = 0.384375 → no spike
        //   t3: V = 0.09609375 + 1.5 = 1.59609375 → spike, V = 0
        let dev = Device::flex();
        let lif = LifParams::default();
        let xs = [1.0f32, 1.0, 0.2, 2.0];
        let expected_v = [0.75f32, 0.9375, 0.384375, 0.0];
        let expected_s = [0.0f32, 0.0, 0.0, 1.0];
        let mut v = None;
        for t in 0..4 {
            let x = Tensor::<1>::from_data(TensorData::new(vec![xs[t]], [1]), &dev);
            let (v_next, s) = lif.step(v, x);
            assert!(
                (values(v_next.clone())[0] - expected_v[t]).abs() < 1e-6,
                "V at t={t}"
            );
            assert_eq!(values(s)[0], expected_s[t], "S at t={t}");
            v = Some(v_next);
        }
    }

    #[test]
    fn scan_equals_stepwise_and_constant_scan() {
        let dev = Device::flex();
        let lif = LifParams::default();
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, 1.5, 2.5, -1.0], [2, 2]), &dev);
        let merged = Tensor::cat(vec![x.clone(); 3], 0);
        let a = lif
            .scan(merged, 3)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let b = lif
            .scan_constant(x, 3)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(a, b);
        // 1.5 → V = 1.125 spikes at t0; 0.5 → 0.375, 0.46875, 0.4921875 never spikes.
        assert_eq!(&a[0..2], &[0.0, 1.0]);
    }

    #[test]
    fn surrogate_gradients_match_their_formulas() {
        let dev = Device::flex().autodiff();
        for sg in [
            Surrogate::Atan { alpha: 2.0 },
            Surrogate::Atan { alpha: 4.0 },
            Surrogate::FastSigmoid { slope: 5.0 },
        ] {
            let us = [-1.3f32, -0.2, 0.0, 0.05, 0.7, 2.0];
            let u = Tensor::<1>::from_data(TensorData::new(us.to_vec(), [us.len()]), &dev)
                .require_grad();
            let s = sg.spike(u.clone());
            let forward = s.clone().inner().into_data().try_into_vec::<f32>().unwrap();
            let grads = s.sum().backward();
            let g = u
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            for (i, &x) in us.iter().enumerate() {
                assert_eq!(forward[i], if x >= 0.0 { 1.0 } else { 0.0 });
                let want = sg.derivative(x as f64);
                assert!(
                    (g[i] as f64 - want).abs() < 1e-5 * want.max(1.0),
                    "{sg:?} at {x}: {} vs {want}",
                    g[i]
                );
            }
        }
    }
}
