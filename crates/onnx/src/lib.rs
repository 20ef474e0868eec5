//! # netxray-onnx
//!
//! ONNX files of fully connected ReLU networks (MLPs), the format most float32 deployments export.
//! This crate owns three things:
//! - **Validation** ([`read_mlp`]): the graph must be a chain `Gemm | MatMul[+Add]`, `Relu`, …, ending
//!   in an affine node; any other operator, a branch, or a missing weight is rejected with a message
//!   that names the node. The weights are read out as a [`netxray_relu::Network`] (f32 values widened
//!   to f64) so that `model compare` and `model inspect` can use an ONNX file as ground truth.
//! - **Evaluation** ([`OnnxMlp::forward`]): by the tract ONNX runtime, in its own float32 arithmetic —
//!   an extraction target answers exactly as the deployed file would, not as our re-implementation.
//! - **Export** ([`to_onnx_bytes`], [`save_onnx`]): a network as an opset-13 `Gemm`/`Relu` graph with
//!   a symbolic batch dimension, so fixtures and demos need no Python.

use faer::{Mat, MatRef};
use netxray_relu::{Layer, Network};
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model (protobuf decoding failed).
    #[error("{origin}: not an ONNX model ({reason})")]
    Decode {
        /// Where the bytes came from.
        origin: String,
        /// The decoder's message.
        reason: String,
    },
    /// The graph is not a plain MLP this tool can attack.
    #[error("{origin}: {reason}")]
    Unsupported {
        /// Where the bytes came from.
        origin: String,
        /// What was found.
        reason: String,
    },
    /// The ONNX runtime refused the model or failed while running it.
    #[error("{origin}: ONNX runtime: {reason}")]
    Runtime {
        /// Where the model came from.
        origin: String,
        /// tract's message.
        reason: String,
    },
    /// A batch had the wrong width or a non-finite value.
    #[error("bad input: {0}")]
    BadInput(String),
}

/// ONNX `TensorProto.DataType` codes used here.
const DT_FLOAT: i32 = 1;
const DT_DOUBLE: i32 = 11;

/// Operators a supported graph may contain.
const ALLOWED_OPS: [&str; 4] = ["Gemm", "MatMul", "Add", "Relu"];

/// Rows per run when the file fixes no batch size and declares no shape we can use.
const DEFAULT_CHUNK: usize = 1024;

type Plan = Arc<TypedRunnableModel>;

/// An ONNX MLP, validated and ready to evaluate with tract.
pub struct OnnxMlp {
    plan: Plan,
    network: Network,
    /// Rows per run when the file fixes the batch dimension (tract then accepts no other size).
    fixed_batch: Option<usize>,
    origin: String,
}

impl std::fmt::Debug for OnnxMlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxMlp")
            .field("origin", &self.origin)
            .field("arch", &self.network.arch().to_string())
            .field("fixed_batch", &self.fixed_batch)
            .finish()
    }
}

fn unsupported(origin: &str, reason: impl Into<String>) -> OnnxError {
    OnnxError::Unsupported {
        origin: origin.to_string(),
        reason: reason.into(),
    }
}

/// The values of an initializer as f64, with its dims.
fn tensor_values(t: &pb::TensorProto, origin: &str) -> Result<(Vec<usize>, Vec<f64>), OnnxError> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let n: usize = dims.iter().product();
    if !t.external_data.is_empty() {
        return Err(unsupported(
            origin,
            format!(
                "initializer '{}' is stored in an external file; save the model with its weights inside",
                t.name
            ),
        ));
    }
    let vals: Vec<f64> = match t.data_type {
        DT_FLOAT if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DT_FLOAT => t.float_data.iter().map(|&v| f64::from(v)).collect(),
        DT_DOUBLE if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        DT_DOUBLE => t.double_data.clone(),
        other => {
            return Err(unsupported(
                origin,
                format!(
                    "initializer '{}' has data type {other}; only float (1) and double (11) weights are supported",
                    t.name
                ),
            ));
        }
    };
    if vals.len() != n {
        return Err(unsupported(
            origin,
            format!(
                "initializer '{}' declares {n} values ({dims:?}) but holds {}",
                t.name,
                vals.len()
            ),
        ));
    }
    if let Some(v) = vals.iter().find(|v| !v.is_finite()) {
        return Err(unsupported(
            origin,
            format!("initializer '{}' contains {v}", t.name),
        ));
    }
    Ok((dims, vals))
}

fn attr_i(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.i)
}

fn attr_f(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.f)
}

/// Validates the graph of `model` as an MLP and reads its weights.
///
/// Accepted: one graph input (`[batch, d]` or `[d]`), then per layer either `Gemm(x, W, b)`
/// (`transA = 0`, any `transB`, `alpha`, `beta`) or `MatMul(x, W)` optionally followed by
/// `Add(·, b)` (either operand order), with `Relu` between consecutive layers and none after the last;
/// the graph output is the last node's output. Everything else is refused with the node's name.
pub fn read_mlp(model: &pb::ModelProto, origin: &str) -> Result<Network, OnnxError> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| unsupported(origin, "the model has no graph"))?;
    let mut inits: HashMap<&str, &pb::TensorProto> = HashMap::new();
    for t in &g.initializer {
        inits.insert(t.name.as_str(), t);
    }
    let inputs: Vec<&pb::ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| !inits.contains_key(i.name.as_str()))
        .collect();
    if inputs.len() != 1 {
        return Err(unsupported(
            origin,
            format!(
                "an MLP has one input; this graph has {} ({})",
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if g.output.len() != 1 {
        return Err(unsupported(
            origin,
            format!("an MLP has one output; this graph has {}", g.output.len()),
        ));
    }
    let init = |name: &str, node: &pb::NodeProto| -> Result<(Vec<usize>, Vec<f64>), OnnxError> {
        let t = inits.get(name).ok_or_else(|| {
            unsupported(
                origin,
                format!(
                    "node '{}' ({}): operand '{name}' is not a constant initializer (weights must be stored in the file)",
                    node.name, node.op_type
                ),
            )
        })?;
        tensor_values(t, origin)
    };
    let mut current = inputs[0].name.clone();
    let mut layers: Vec<Layer> = Vec::new();
    // The affine layer being built: (weight [out, in], bias, has a Relu after it).
    let mut pending: Option<(Mat<f64>, Vec<f64>)> = None;
    let mut after_matmul = false;
    for node in &g.node {
        let label = format!("node '{}' ({})", node.name, node.op_type);
        if !ALLOWED_OPS.contains(&node.op_type.as_str()) {
            return Err(unsupported(
                origin,
                format!(
                    "{label}: operator {} is not supported; an MLP target may contain only {}",
                    node.op_type,
                    ALLOWED_OPS.join(", ")
                ),
            ));
        }
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(unsupported(
                origin,
                format!("{label}: custom operator domain '{}'", node.domain),
            ));
        }
        let foreign: Vec<&str> = node
            .input
            .iter()
            .filter(|i| **i != current && !inits.contains_key(i.as_str()))
            .map(String::as_str)
            .collect();
        if !foreign.is_empty() {
            return Err(unsupported(
                origin,
                format!(
                    "{label}: operand(s) {} not a constant initializer (weights must be stored in the file) nor the previous node's output '{current}'; only plain MLPs are supported",
                    foreign.join(", ")
                ),
            ));
        }
        if !node.input.contains(&current) || node.output.len() != 1 {
            return Err(unsupported(
                origin,
                format!(
                    "{label}: not a chain (it does not read the previous node's output '{current}'); only plain MLPs are supported"
                ),
            ));
        }
        match node.op_type.as_str() {
            "Gemm" | "MatMul" => {
                if pending.is_some() {
                    return Err(unsupported(
                        origin,
                        format!("{label}: two affine layers without a Relu between them"),
                    ));
                }
                if node.input.first() != Some(&current) {
                    return Err(unsupported(
                        origin,
                        format!("{label}: the data must be the first operand"),
                    ));
                }
                let wname = node
                    .input
                    .get(1)
                    .ok_or_else(|| unsupported(origin, format!("{label}: no weight operand")))?;
                let (wd, wv) = init(wname, node)?;
                if wd.len() != 2 {
                    return Err(unsupported(
                        origin,
                        format!("{label}: weight '{wname}' has shape {wd:?}, expected a matrix"),
                    ));
                }
                let (trans_b, alpha, beta) = if node.op_type == "Gemm" {
                    if attr_i(node, "transA", 0) != 0 {
                        return Err(unsupported(
                            origin,
                            format!("{label}: transA = 1 is not supported"),
                        ));
                    }
                    (
                        attr_i(node, "transB", 0) != 0,
                        f64::from(attr_f(node, "alpha", 1.0)),
                        f64::from(attr_f(node, "beta", 1.0)),
                    )
                } else {
                    (false, 1.0, 1.0)
                };
                // Our layout is [out, in]: Gemm's B is [in, out] unless transB.
                let (fan_out, fan_in) = if trans_b {
                    (wd[0], wd[1])
                } else {
                    (wd[1], wd[0])
                };
                let w = Mat::from_fn(fan_out, fan_in, |o, i| {
                    alpha
                        * if trans_b {
                            wv[o * fan_in + i]
                        } else {
                            wv[i * fan_out + o]
                        }
                });
                let mut bias = vec![0.0; fan_out];
                if node.op_type == "Gemm"
                    && let Some(cname) = node.input.get(2).filter(|c| !c.is_empty())
                {
                    let (cd, cv) = init(cname, node)?;
                    let n: usize = cd.iter().product();
                    if n == fan_out {
                        bias = cv.iter().map(|v| beta * v).collect();
                    } else if n == 1 {
                        bias = vec![beta * cv[0]; fan_out];
                    } else {
                        return Err(unsupported(
                            origin,
                            format!(
                                "{label}: bias '{cname}' has shape {cd:?}, expected [{fan_out}]"
                            ),
                        ));
                    }
                }
                after_matmul = node.op_type == "MatMul";
                pending = Some((w, bias));
            }
            "Add" => {
                let Some((_, bias)) = pending.as_mut().filter(|_| after_matmul) else {
                    return Err(unsupported(
                        origin,
                        format!("{label}: an Add must directly follow a MatMul"),
                    ));
                };
                let bname = node
                    .input
                    .iter()
                    .find(|i| **i != current)
                    .ok_or_else(|| unsupported(origin, format!("{label}: no bias operand")))?;
                let (bd, bv) = init(bname, node)?;
                if bv.len() != bias.len() {
                    return Err(unsupported(
                        origin,
                        format!(
                            "{label}: bias '{bname}' has shape {bd:?}, expected [{}]",
                            bias.len()
                        ),
                    ));
                }
                *bias = bv;
                after_matmul = false;
            }
            "Relu" => {
                let Some((w, b)) = pending.take() else {
                    return Err(unsupported(
                        origin,
                        format!("{label}: a Relu must follow an affine layer"),
                    ));
                };
                layers.push(Layer { weight: w, bias: b });
                after_matmul = false;
            }
            _ => unreachable!("filtered by ALLOWED_OPS"),
        }
        current = node.output[0].clone();
    }
    let Some((w, b)) = pending else {
        return Err(unsupported(
            origin,
            "the graph must end in an affine layer (raw outputs); it ends in a Relu or is empty",
        ));
    };
    layers.push(Layer { weight: w, bias: b });
    if g.output[0].name != current {
        return Err(unsupported(
            origin,
            format!(
                "the graph output '{}' is not the last node's output '{current}'",
                g.output[0].name
            ),
        ));
    }
    Network::new(layers).map_err(|e| unsupported(origin, format!("the layers do not chain: {e}")))
}

/// Whether the input declares a 2-d shape, and its batch dimension: `Some(k)` for a fixed size,
/// `None` when symbolic.
fn declared_batch(model: &pb::ModelProto) -> (bool, Option<usize>) {
    use pb::tensor_shape_proto::dimension::Value;
    let shape = (|| {
        let g = model.graph.as_ref()?;
        let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let input = g.input.iter().find(|i| !inits.contains(&i.name.as_str()))?;
        let pb::type_proto::Value::TensorType(t) = input.r#type.as_ref()?.value.as_ref()?;
        t.shape.clone()
    })();
    match shape {
        Some(s) if s.dim.len() == 2 => match s.dim[0].value.as_ref() {
            Some(Value::DimValue(k)) if *k > 0 => (true, Some(*k as usize)),
            _ => (true, None),
        },
        _ => (false, None),
    }
}

impl OnnxMlp {
    /// Reads, validates and prepares an ONNX file.
    pub fn load(path: &Path) -> Result<Self, OnnxError> {
        let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Validates and prepares an ONNX model held in memory; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, OnnxError> {
        let proto = pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        let network = read_mlp(&proto, origin)?;
        let runtime = |e: TractError| OnnxError::Runtime {
            origin: origin.to_string(),
            reason: format!("{e:#}"),
        };
        let d = network.input_dim();
        let (shaped, fixed_batch) = declared_batch(&proto);
        let mut model = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .map_err(runtime)?;
        // A file that declares no usable input shape gets one with a fixed batch: tract must know it.
        let fixed_batch = if shaped {
            fixed_batch
        } else {
            model = model
                .with_input_fact(
                    0,
                    InferenceFact::dt_shape(f32::datum_type(), tvec![DEFAULT_CHUNK, d]),
                )
                .map_err(runtime)?;
            Some(DEFAULT_CHUNK)
        };
        let plan = model
            .into_optimized()
            .map_err(runtime)?
            .into_runnable()
            .map_err(runtime)?;
        Ok(Self {
            plan,
            network,
            fixed_batch,
            origin: origin.to_string(),
        })
    }

    /// Input width.
    pub fn input_dim(&self) -> usize {
        self.network.input_dim()
    }

    /// Output width.
    pub fn output_dim(&self) -> usize {
        self.network.output_dim()
    }

    /// The weights read from the graph (f32 values widened to f64): the ground truth for
    /// `model compare`, never used to answer queries.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Evaluates one input per row with the ONNX runtime (float32 arithmetic, as deployed).
    pub fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>, OnnxError> {
        let (n, d) = (x.nrows(), self.input_dim());
        if x.ncols() != d {
            return Err(OnnxError::BadInput(format!(
                "{} columns, the model takes {d}",
                x.ncols()
            )));
        }
        let mut out = Mat::<f64>::zeros(n, self.output_dim());
        if n == 0 {
            return Ok(out);
        }
        let chunk = self.fixed_batch.unwrap_or(n.max(1));
        let mut start = 0;
        while start < n {
            let rows = chunk.min(n - start);
            // A fixed batch size is padded with zero rows.
            let mut data = vec![0f32; chunk * d];
            for i in 0..rows {
                for j in 0..d {
                    let v = x[(start + i, j)];
                    if !v.is_finite() {
                        return Err(OnnxError::BadInput("a non-finite value".into()));
                    }
                    data[i * d + j] = v as f32;
                }
            }
            let input = Tensor::from_shape(&[chunk, d], &data).map_err(|e| self.runtime(e))?;
            let result = self
                .plan
                .run(tvec!(input.into()))
                .map_err(|e| self.runtime(e))?;
            let view = result[0]
                .to_plain_array_view::<f32>()
                .map_err(|e| self.runtime(e))?;
            let m = self.output_dim();
            if view.len() != chunk * m {
                return Err(OnnxError::Runtime {
                    origin: self.origin.clone(),
                    reason: format!(
                        "output has {} values for {chunk} rows of width {m}",
                        view.len()
                    ),
                });
            }
            for (k, v) in view.iter().enumerate().take(rows * m) {
                out[(start + k / m, k % m)] = f64::from(*v);
            }
            start += rows;
        }
        Ok(out)
    }

    fn runtime(&self, e: TractError) -> OnnxError {
        OnnxError::Runtime {
            origin: self.origin.clone(),
            reason: format!("{e:#}"),
        }
    }
}

fn f32_tensor(name: &str, dims: &[usize], values: impl Iterator<Item = f64>) -> pb::TensorProto {
    let raw: Vec<u8> = values.flat_map(|v| (v as f32).to_le_bytes()).collect();
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DT_FLOAT,
        raw_data: raw,
        ..Default::default()
    }
}

fn value_info(name: &str, batch: &str, width: usize) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DT_FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(Value::DimParam(batch.to_string())),
                            ..Default::default()
                        },
                        Dimension {
                            value: Some(Value::DimValue(width as i64)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The network as an ONNX model (opset 13): `Gemm(transB = 1)` per layer with `Relu` between, f32
/// weights (rounded from f64), input `input` and output `output` of shape `[N, width]`.
pub fn to_onnx_bytes(net: &Network) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut current = "input".to_string();
    let last = net.layers().len() - 1;
    for (k, l) in net.layers().iter().enumerate() {
        let (wn, bn) = (format!("layers.{k}.weight"), format!("layers.{k}.bias"));
        let (o, i) = (l.fan_out(), l.fan_in());
        inits.push(f32_tensor(
            &wn,
            &[o, i],
            (0..o).flat_map(|r| (0..i).map(move |c| l.weight[(r, c)])),
        ));
        inits.push(f32_tensor(&bn, &[o], l.bias.iter().copied()));
        let gemm_out = if k == last {
            "output".to_string()
        } else {
            format!("gemm{k}")
        };
        nodes.push(pb::NodeProto {
            name: format!("gemm{k}"),
            op_type: "Gemm".into(),
            input: vec![current.clone(), wn, bn],
            output: vec![gemm_out.clone()],
            attribute: vec![pb::AttributeProto {
                name: "transB".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            }],
            ..Default::default()
        });
        current = gemm_out;
        if k != last {
            let relu_out = format!("relu{k}");
            nodes.push(pb::NodeProto {
                name: relu_out.clone(),
                op_type: "Relu".into(),
                input: vec![current.clone()],
                output: vec![relu_out.clone()],
                ..Default::default()
            });
            current = relu_out;
        }
    }
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "netxray".into(),
        graph: Some(pb::GraphProto {
            name: "mlp".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input", "N", net.input_dim())],
            output: vec![value_info("output", "N", net.output_dim())],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// Writes [`to_onnx_bytes`] atomically (temporary file, then rename).
pub fn save_onnx(path: &Path, net: &Network) -> Result<(), OnnxError> {
    netxray_relu::format::write_atomic(path, &to_onnx_bytes(net)).map_err(|e| OnnxError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Is `path` an ONNX file (by its extension)?
pub fn is_onnx_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

#[cfg(test)]
mod tests;
