//! The network type and its batched forward pass.

use crate::{Arch, ReluError};
use faer::{Accum, Mat, MatRef, Par};

/// One affine layer `y = W x + b`, with `W` stored `[out, in]` (PyTorch layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Weight matrix, `out × in`.
    pub weight: Mat<f64>,
    /// Bias, length `out`.
    pub bias: Vec<f64>,
}

impl Layer {
    /// Input width.
    pub fn fan_in(&self) -> usize {
        self.weight.ncols()
    }
    /// Output width.
    pub fn fan_out(&self) -> usize {
        self.weight.nrows()
    }
}

/// A fully connected network: every layer but the last is followed by ReLU; the last is linear.
///
/// Invariants (checked by [`Network::new`]): at least one layer, widths chain, every parameter is finite.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    layers: Vec<Layer>,
}

/// Parallelism used for the per-layer GEMM: large batches use rayon, small ones stay sequential because
/// thread hand-off costs more than the product.
fn par_for(rows: usize, cols: usize, inner: usize) -> Par {
    if rows * cols * inner >= 1 << 22 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

impl Network {
    /// Validates and wraps layers. Names tensors `layers.{i}.weight|bias` in errors.
    pub fn new(layers: Vec<Layer>) -> Result<Self, ReluError> {
        if layers.is_empty() {
            return Err(ReluError::InvalidParam(
                "a network needs at least one layer".into(),
            ));
        }
        for (i, l) in layers.iter().enumerate() {
            if l.bias.len() != l.fan_out() {
                return Err(ReluError::tensor(
                    format!("layers.{i}.bias"),
                    format!(
                        "has {} entries but layers.{i}.weight has {} rows",
                        l.bias.len(),
                        l.fan_out()
                    ),
                ));
            }
            if l.fan_in() == 0 || l.fan_out() == 0 {
                return Err(ReluError::tensor(
                    format!("layers.{i}.weight"),
                    "has a zero dimension",
                ));
            }
            if i > 0 && layers[i - 1].fan_out() != l.fan_in() {
                return Err(ReluError::tensor(
                    format!("layers.{i}.weight"),
                    format!(
                        "takes {} inputs but layers.{}.weight gives {} outputs (dims do not chain)",
                        l.fan_in(),
                        i - 1,
                        layers[i - 1].fan_out()
                    ),
                ));
            }
            for r in 0..l.fan_out() {
                for c in 0..l.fan_in() {
                    if !l.weight[(r, c)].is_finite() {
                        return Err(ReluError::tensor(
                            format!("layers.{i}.weight"),
                            format!(
                                "entry [{r}, {c}] is {} (NaN/inf not allowed)",
                                l.weight[(r, c)]
                            ),
                        ));
                    }
                }
            }
            if let Some(j) = l.bias.iter().position(|b| !b.is_finite()) {
                return Err(ReluError::tensor(
                    format!("layers.{i}.bias"),
                    format!("entry [{j}] is {} (NaN/inf not allowed)", l.bias[j]),
                ));
            }
        }
        Ok(Self { layers })
    }

    /// The layers, input side first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Mutable access for trainers; callers keep the invariants (shapes unchanged, finite values).
    pub fn layers_mut(&mut self) -> &mut [Layer] {
        &mut self.layers
    }

    /// Consumes the network and returns its layers.
    pub fn into_layers(self) -> Vec<Layer> {
        self.layers
    }

    /// The architecture (widths).
    pub fn arch(&self) -> Arch {
        let mut dims = vec![self.layers[0].fan_in()];
        dims.extend(self.layers.iter().map(|l| l.fan_out()));
        Arch::new(dims).expect("validated network has a valid arch")
    }

    /// Input dimension.
    pub fn input_dim(&self) -> usize {
        self.layers[0].fan_in()
    }

    /// Output dimension.
    pub fn output_dim(&self) -> usize {
        self.layers.last().expect("non-empty").fan_out()
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.arch().num_params()
    }

    /// Batched forward pass. `x` holds one input per row (`batch × d0`); returns `batch × d_out`.
    pub fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>, ReluError> {
        check_input_width(x.ncols(), self.input_dim())?;
        let last = self.layers.len() - 1;
        let mut h: Option<Mat<f64>> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let input = match &h {
                Some(m) => m.as_ref(),
                None => x,
            };
            let out = affine(layer, input, i < last);
            h = Some(out);
        }
        Ok(h.expect("at least one layer"))
    }

    /// Forward pass of one input.
    pub fn forward_one(&self, x: &[f64]) -> Result<Vec<f64>, ReluError> {
        let m = MatRef::from_row_major_slice(x, 1, x.len());
        let y = self.forward(m)?;
        Ok((0..y.ncols()).map(|j| y[(0, j)]).collect())
    }

    /// Pre-activations of every layer (hidden ones before ReLU, then the output), for a batch.
    pub fn preactivations(&self, x: MatRef<'_, f64>) -> Result<Vec<Mat<f64>>, ReluError> {
        check_input_width(x.ncols(), self.input_dim())?;
        let mut out: Vec<Mat<f64>> = Vec::with_capacity(self.layers.len());
        let mut act: Option<Mat<f64>> = None;
        for layer in &self.layers {
            let input = match &act {
                Some(m) => m.as_ref(),
                None => x,
            };
            let z = affine(layer, input, false);
            let mut a = z.clone();
            relu_in_place(&mut a);
            out.push(z);
            act = Some(a);
        }
        Ok(out)
    }
}

/// The one input-shape check of every forward pass.
fn check_input_width(got: usize, expected: usize) -> Result<(), ReluError> {
    if got == expected {
        Ok(())
    } else {
        Err(ReluError::Dimension(format!(
            "input has {got} columns, the network takes {expected}"
        )))
    }
}

/// `x Wᵀ + 1 bᵀ`, optionally followed by ReLU; one GEMM.
pub fn affine(layer: &Layer, x: MatRef<'_, f64>, relu: bool) -> Mat<f64> {
    let n = x.nrows();
    let mut out = Mat::<f64>::from_fn(n, layer.fan_out(), |_, j| layer.bias[j]);
    faer::linalg::matmul::matmul(
        out.as_mut(),
        Accum::Add,
        x,
        layer.weight.transpose(),
        1.0,
        par_for(n, layer.fan_out(), layer.fan_in()),
    );
    if relu {
        relu_in_place(&mut out);
    }
    out
}

/// Element-wise ReLU.
pub fn relu_in_place(m: &mut Mat<f64>) {
    for j in 0..m.ncols() {
        for v in m.col_mut(j).iter_mut() {
            if *v < 0.0 {
                *v = 0.0;
            }
        }
    }
}

/// The same network evaluated in f32 arithmetic, as a PyTorch/ONNX float32 deployment computes it:
/// weights, inputs and every intermediate are rounded to f32 (outputs are returned widened to f64).
/// Used to simulate float32 targets, whose answers carry ~2^-24 relative rounding noise.
#[derive(Debug, Clone)]
pub struct NetworkF32 {
    layers: Vec<(Mat<f32>, Vec<f32>)>,
}

impl NetworkF32 {
    /// Rounds every parameter of `net` to f32.
    pub fn new(net: &Network) -> Self {
        Self {
            layers: net
                .layers()
                .iter()
                .map(|l| {
                    (
                        Mat::from_fn(l.fan_out(), l.fan_in(), |i, j| l.weight[(i, j)] as f32),
                        l.bias.iter().map(|&b| b as f32).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Input width.
    pub fn input_dim(&self) -> usize {
        self.layers[0].0.ncols()
    }

    /// Output width.
    pub fn output_dim(&self) -> usize {
        self.layers[self.layers.len() - 1].0.nrows()
    }

    /// Batched forward pass in f32 (`batch × d0` → `batch × d_out`).
    pub fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>, ReluError> {
        check_input_width(x.ncols(), self.input_dim())?;
        let n = x.nrows();
        let mut h = Mat::<f32>::from_fn(n, x.ncols(), |i, j| x[(i, j)] as f32);
        let last = self.layers.len() - 1;
        for (k, (w, b)) in self.layers.iter().enumerate() {
            let mut out = Mat::<f32>::from_fn(n, w.nrows(), |_, j| b[j]);
            faer::linalg::matmul::matmul(
                out.as_mut(),
                Accum::Add,
                h.as_ref(),
                w.transpose(),
                1.0f32,
                par_for(n, w.nrows(), w.ncols()),
            );
            if k < last {
                for j in 0..out.ncols() {
                    for v in out.col_mut(j).iter_mut() {
                        if *v < 0.0 {
                            *v = 0.0;
                        }
                    }
                }
            }
            h = out;
        }
        Ok(Mat::from_fn(n, h.ncols(), |i, j| h[(i, j)] as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_evaluation_rounds_like_f32_and_checks_shapes() {
        let net = Network::random(&"30-20-20-3".parse().unwrap(), crate::InitRecipe::He, 4);
        let n32 = NetworkF32::new(&net);
        assert_eq!((n32.input_dim(), n32.output_dim()), (30, 3));
        let x = Mat::<f64>::from_fn(50, 30, |i, j| ((i * 31 + j * 7) % 13) as f64 / 6.0 - 1.0);
        let a = net.forward(x.as_ref()).unwrap();
        let b = n32.forward(x.as_ref()).unwrap();
        let scale = (0..50)
            .flat_map(|i| (0..3).map(move |j| (i, j)))
            .map(|(i, j)| a[(i, j)].abs())
            .fold(0.0, f64::max);
        let mut err: f64 = 0.0;
        for i in 0..50 {
            for j in 0..3 {
                err = err.max((a[(i, j)] - b[(i, j)]).abs());
                // Every answer is an f32 value.
                assert_eq!(b[(i, j)], b[(i, j)] as f32 as f64);
            }
        }
        assert!(
            err > 0.0 && err < 1e-5 * scale,
            "f32 error {err} at scale {scale}"
        );
        assert!(n32.forward(Mat::<f64>::zeros(1, 29).as_ref()).is_err());
    }

    fn tiny() -> Network {
        // 2-2-1: h = relu([x0 - x1, x0 + x1 - 1]); y = 2 h0 - h1 + 0.5
        Network::new(vec![
            Layer {
                weight: Mat::from_fn(2, 2, |i, j| [[1.0, -1.0], [1.0, 1.0]][i][j]),
                bias: vec![0.0, -1.0],
            },
            Layer {
                weight: Mat::from_fn(1, 2, |_, j| [2.0, -1.0][j]),
                bias: vec![0.5],
            },
        ])
        .unwrap()
    }

    #[test]
    fn forward_matches_hand_computation() {
        let n = tiny();
        assert_eq!(
            n.forward_one(&[2.0, 1.0]).unwrap(),
            vec![2.0 * 1.0 - 2.0 + 0.5]
        );
        assert_eq!(n.forward_one(&[0.0, 1.0]).unwrap(), vec![0.5]);
        assert_eq!(n.num_params(), 9);
    }

    #[test]
    fn rejects_nan_and_bad_chain() {
        let mut l = tiny().into_layers();
        l[1].bias[0] = f64::NAN;
        let e = Network::new(l).unwrap_err().to_string();
        assert!(e.contains("layers.1.bias"), "{e}");
        let mut l = tiny().into_layers();
        l[1].weight = Mat::zeros(1, 3);
        let e = Network::new(l).unwrap_err().to_string();
        assert!(e.contains("do not chain"), "{e}");
    }

    #[test]
    fn forward_rejects_wrong_width() {
        assert!(tiny().forward_one(&[1.0, 2.0, 3.0]).is_err());
    }
}
