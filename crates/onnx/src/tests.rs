use super::*;
use netxray_relu::{Arch, InitRecipe};

fn net(arch: &str, seed: u64) -> Network {
    Network::random(&arch.parse::<Arch>().unwrap(), InitRecipe::Balanced, seed)
}

fn inputs(n: usize, d: usize) -> Mat<f64> {
    Mat::from_fn(n, d, |i, j| ((i * 7 + j * 3) % 11) as f64 / 5.5 - 1.0)
}

fn decode(bytes: &[u8]) -> pb::ModelProto {
    pb::ModelProto::decode(bytes).unwrap()
}

#[test]
fn export_then_load_gives_the_f32_weights_and_the_same_outputs() {
    let n = net("6-5-4-3", 1);
    let m = OnnxMlp::from_bytes(&to_onnx_bytes(&n), "mem").unwrap();
    assert_eq!(m.network().arch().to_string(), "6-5-4-3");
    for (a, b) in m.network().layers().iter().zip(n.layers()) {
        for r in 0..a.fan_out() {
            assert_eq!(a.bias[r], f64::from(b.bias[r] as f32));
            for c in 0..a.fan_in() {
                assert_eq!(a.weight[(r, c)], f64::from(b.weight[(r, c)] as f32));
            }
        }
    }
    let x = inputs(37, 6);
    let got = m.forward(x.as_ref()).unwrap();
    let want = n.forward(x.as_ref()).unwrap();
    for i in 0..37 {
        for j in 0..3 {
            let (g, w) = (got[(i, j)], want[(i, j)]);
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
            // The runtime answers in f32.
            assert_eq!(g, f64::from(g as f32));
        }
    }
}

#[test]
fn matmul_add_graphs_and_fixed_batch_sizes_are_read() {
    let n = net("4-3-2", 2);
    let mut proto = decode(&to_onnx_bytes(&n));
    let g = proto.graph.as_mut().unwrap();
    // Layer 0 as MatMul(x, Wᵀ) + Add(b, ·): weights stored [in, out].
    let l0 = &n.layers()[0];
    g.initializer[0] = f32_tensor(
        "layers.0.weight",
        &[4, 3],
        (0..4).flat_map(|i| (0..3).map(move |o| l0.weight[(o, i)])),
    );
    g.node[0] = pb::NodeProto {
        name: "mm".into(),
        op_type: "MatMul".into(),
        input: vec!["input".into(), "layers.0.weight".into()],
        output: vec!["mm0".into()],
        ..Default::default()
    };
    g.node.insert(
        1,
        pb::NodeProto {
            name: "add".into(),
            op_type: "Add".into(),
            input: vec!["layers.0.bias".into(), "mm0".into()],
            output: vec!["gemm0".into()],
            ..Default::default()
        },
    );
    // A fixed batch of 1, as many exporters write.
    if let Some(pb::type_proto::Value::TensorType(t)) =
        g.input[0].r#type.as_mut().unwrap().value.as_mut()
    {
        t.shape.as_mut().unwrap().dim[0].value =
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(1));
    }
    let m = OnnxMlp::from_bytes(&proto.encode_to_vec(), "mem").unwrap();
    assert_eq!(m.fixed_batch, Some(1));
    let x = inputs(5, 4);
    let got = m.forward(x.as_ref()).unwrap();
    let want = n.forward(x.as_ref()).unwrap();
    for i in 0..5 {
        for j in 0..2 {
            assert!((got[(i, j)] - want[(i, j)]).abs() <= 1e-5 * (1.0 + want[(i, j)].abs()));
        }
    }
}

#[test]
fn other_operators_are_refused_with_the_node_named() {
    let mut proto = decode(&to_onnx_bytes(&net("4-3-2", 3)));
    proto.graph.as_mut().unwrap().node[1].op_type = "Sigmoid".into();
    let e = OnnxMlp::from_bytes(&proto.encode_to_vec(), "m.onnx").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OnnxError::Unsupported { .. }), "{msg}");
    assert!(msg.contains("Sigmoid") && msg.contains("relu0"), "{msg}");
}

#[test]
fn a_relu_after_the_last_layer_is_refused() {
    let mut proto = decode(&to_onnx_bytes(&net("4-3-2", 3)));
    let g = proto.graph.as_mut().unwrap();
    g.node.push(pb::NodeProto {
        name: "final_relu".into(),
        op_type: "Relu".into(),
        input: vec!["output".into()],
        output: vec!["y".into()],
        ..Default::default()
    });
    let e = OnnxMlp::from_bytes(&proto.encode_to_vec(), "m.onnx").unwrap_err();
    assert!(e.to_string().contains("affine layer"), "{e}");
}

#[test]
fn weights_fed_as_inputs_are_refused() {
    let mut proto = decode(&to_onnx_bytes(&net("4-3-2", 3)));
    let g = proto.graph.as_mut().unwrap();
    g.initializer.remove(0);
    let e = OnnxMlp::from_bytes(&proto.encode_to_vec(), "m.onnx").unwrap_err();
    assert!(e.to_string().contains("not a constant initializer"), "{e}");
}

#[test]
fn garbage_and_truncated_files_are_clear_errors() {
    let e = OnnxMlp::from_bytes(b"definitely not protobuf \xff\xff\xff", "junk.onnx").unwrap_err();
    assert!(matches!(e, OnnxError::Decode { .. }), "{e}");
    let bytes = to_onnx_bytes(&net("4-3-2", 3));
    let e = OnnxMlp::from_bytes(&bytes[..bytes.len() / 2], "cut.onnx").unwrap_err();
    assert!(
        matches!(e, OnnxError::Decode { .. } | OnnxError::Unsupported { .. }),
        "{e}"
    );
    let e = OnnxMlp::load(Path::new("/nonexistent/m.onnx")).unwrap_err();
    assert!(matches!(e, OnnxError::Io { .. }), "{e}");
}

#[test]
fn bad_batches_are_refused() {
    let m = OnnxMlp::from_bytes(&to_onnx_bytes(&net("4-3-2", 4)), "mem").unwrap();
    assert!(matches!(
        m.forward(inputs(2, 5).as_ref()),
        Err(OnnxError::BadInput(_))
    ));
    let mut x = inputs(2, 4);
    x[(1, 2)] = f64::NAN;
    assert!(matches!(m.forward(x.as_ref()), Err(OnnxError::BadInput(_))));
    assert_eq!(m.forward(inputs(0, 4).as_ref()).unwrap().nrows(), 0);
}

#[test]
fn save_writes_a_loadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let n = net("3-4-1", 5);
    save_onnx(&p, &n).unwrap();
    assert!(is_onnx_path(&p));
    let m = OnnxMlp::load(&p).unwrap();
    assert_eq!(m.network().arch().to_string(), "3-4-1");
}
