//! Host-side copies of a network's tensors by parameter path, in PyTorch layout.
//!
//! Pruning, balancing and checkpoints work on these maps. burn stores a `Linear` weight as
//! `[in, out]`; every map here uses PyTorch's `[out, in]` (the only 2-D float parameters in a
//! [`crate::SpikingNet`] are linear weights), so masks and checkpoints read the same way as a
//! PyTorch state dict and the hardware model sees filters as rows.

use crate::paths::PathTracker;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::BTreeMap;

/// A tensor copied to the host: shape and row-major `f32` values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape (PyTorch layout).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Converts a burn-layout tensor (copied out of the module) to PyTorch layout.
fn to_host<const D: usize>(t: Tensor<D>) -> HostTensor {
    let dims = t.dims();
    let data = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data");
    if D == 2 {
        // burn [in, out] → PyTorch [out, in].
        HostTensor {
            shape: vec![dims[1], dims[0]],
            data: transpose(&data, dims[0], dims[1]),
        }
    } else {
        HostTensor {
            shape: dims.to_vec(),
            data,
        }
    }
}

/// Converts a PyTorch-layout host tensor to burn layout on `device` (shape checked by caller).
pub(crate) fn from_host<const D: usize>(h: &HostTensor, device: &Device) -> Tensor<D> {
    if D == 2 {
        let (out, inp) = (h.shape[0], h.shape[1]);
        let data = transpose(&h.data, out, inp);
        Tensor::from_data(TensorData::new(data, [inp, out]), device)
    } else {
        Tensor::from_data(TensorData::new(h.data.clone(), h.shape.clone()), device)
    }
}

/// The burn-layout shape of a PyTorch-layout shape.
pub(crate) fn burn_shape(shape: &[usize]) -> Vec<usize> {
    if shape.len() == 2 {
        vec![shape[1], shape[0]]
    } else {
        shape.to_vec()
    }
}

/// Copies every float tensor of `module` (parameters and BN running statistics) to the host.
pub fn collect<M: Module>(module: &M) -> BTreeMap<String, HostTensor> {
    struct V {
        path: PathTracker,
        out: BTreeMap<String, HostTensor>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.insert(self.path.path(), to_host(param.val()));
        }
    }
    let mut v = V {
        path: PathTracker::default(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Names and PyTorch-layout shapes of every float tensor of `module`.
pub fn shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    struct V {
        path: PathTracker,
        out: BTreeMap<String, Vec<usize>>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let dims = param.val().dims();
            let shape = if D == 2 {
                vec![dims[1], dims[0]]
            } else {
                dims.to_vec()
            };
            self.out.insert(self.path.path(), shape);
        }
    }
    let mut v = V {
        path: PathTracker::default(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Replaces the tensors of `module` named in `values` (PyTorch layout). Tensors not named keep
/// their value; shapes must match (checked, names of mismatches returned as an error string).
pub fn assign<M: Module>(
    module: M,
    values: &BTreeMap<String, HostTensor>,
    device: &Device,
) -> Result<M, String> {
    struct A<'a> {
        path: PathTracker,
        values: &'a BTreeMap<String, HostTensor>,
        device: &'a Device,
        errors: Vec<String>,
    }
    impl ModuleMapper for A<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.path.path();
            let Some(h) = self.values.get(&path) else {
                return param;
            };
            let (id, tensor, mapper) = param.consume();
            let dims = tensor.dims();
            if burn_shape(&h.shape) != dims.to_vec()
                || h.data.len() != dims.iter().product::<usize>()
            {
                self.errors.push(format!(
                    "{path}: shape {:?} does not match the model's {:?}",
                    h.shape,
                    burn_shape(&dims)
                ));
                return Param::from_mapped_value(id, tensor, mapper);
            }
            let require_grad = tensor.is_require_grad();
            let mut t: Tensor<D> = from_host(h, self.device);
            if require_grad {
                t = t.require_grad();
            }
            Param::from_mapped_value(id, t, mapper)
        }
    }
    let mut a = A {
        path: PathTracker::default(),
        values,
        device,
        errors: Vec::new(),
    };
    let out = module.map(&mut a);
    if a.errors.is_empty() {
        Ok(out)
    } else {
        Err(a.errors.join("; "))
    }
}
