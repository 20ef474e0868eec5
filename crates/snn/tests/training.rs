//! Training-level tests: masks hold exactly, the paper architectures run a step, checkpoints
//! resume to the same weights, and a small network learns.

use burn::tensor::Device;
use netxray_data::Dataset;
use netxray_snn::{
    ArchSpec, HostTensor, InputShape, OptimizerKind, Prepared, Snn, TrainParams, Trainer,
    checkpoint,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

fn device() -> Device {
    Device::flex().autodiff()
}

/// A learnable synthetic 1×8×8 dataset: the class is which quadrant is bright.
fn quadrants(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.random_range(0..4u8);
        for y in 0..8 {
            for x in 0..8 {
                let q = (y / 4) * 2 + x / 4;
                let base = if q == class as usize { 0.8 } else { 0.1 };
                images.push(base + rng.random::<f32>() * 0.2);
            }
        }
        labels.push(class);
    }
    Dataset {
        images,
        labels,
        channels: 1,
        height: 8,
        width: 8,
        num_classes: 4,
    }
}

fn small_conv() -> ArchSpec {
    ArchSpec {
        name: "test-conv".into(),
        layers: vec![
            netxray_snn::LayerSpec::Conv {
                out: 16,
                kernel: 3,
                stride: 1,
                bias: true,
            },
            netxray_snn::LayerSpec::MaxPool,
            netxray_snn::LayerSpec::Conv {
                out: 16,
                kernel: 3,
                stride: 1,
                bias: true,
            },
            netxray_snn::LayerSpec::MaxPool,
            netxray_snn::LayerSpec::Flatten,
            netxray_snn::LayerSpec::Classifier,
        ],
    }
}

fn input8() -> InputShape {
    InputShape {
        channels: 1,
        height: 8,
        width: 8,
    }
}

fn prepared(n: usize, seed: u64) -> Prepared {
    Prepared::new(&quadrants(n, seed), &[0.3], &[0.3], input8()).unwrap()
}

fn params(epochs: usize) -> TrainParams {
    TrainParams::builder()
        .epochs(epochs)
        .batch_size(32)
        .lr(0.05)
        .seed(3)
        .build()
        .unwrap()
}

#[test]
fn masked_weights_stay_exactly_zero_for_100_steps() {
    let dev = device();
    let snn = Snn::new(&small_conv(), input8(), 4, &dev, 1).unwrap();
    let mut t = Trainer::new(snn, params(1), vec![0.3], vec![0.3]);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let tensors = t.snn.tensors();
    let masks: BTreeMap<String, HostTensor> = t
        .snn
        .prunable()
        .into_iter()
        .map(|n| {
            let shape = tensors[&n].shape.clone();
            let data = (0..tensors[&n].len())
                .map(|_| if rng.random_bool(0.3) { 1.0 } else { 0.0 })
                .collect();
            (n, HostTensor { shape, data })
        })
        .collect();
    t.set_masks(masks.clone()).unwrap();
    let data = prepared(64, 1);
    let x: Vec<f32> = data.images[..32 * 64].to_vec();
    let y: Vec<u8> = data.labels[..32].to_vec();
    for _ in 0..100 {
        t.step(&x, &y, input8(), 0.05).unwrap();
    }
    let after = t.snn.tensors();
    let mut kept_changed = 0;
    for (name, m) in &masks {
        for (i, (&w, &k)) in after[name].data.iter().zip(&m.data).enumerate() {
            if k == 0.0 {
                assert_eq!(w, 0.0, "{name}[{i}] leaked to {w}");
            } else if w != tensors[name].data[i] {
                kept_changed += 1;
            }
        }
    }
    assert!(kept_changed > 0, "unmasked weights must still train");
}

#[test]
fn a_small_network_learns_and_resumes_to_the_same_weights() {
    let dev = device();
    let train = prepared(256, 1);
    let test = prepared(128, 2);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("c.safetensors");

    // Uninterrupted: 3 epochs.
    let snn = Snn::new(&small_conv(), input8(), 4, &dev, 5).unwrap();
    let mut straight = Trainer::new(snn, params(3), vec![0.3], vec![0.3]);
    let mut records = Vec::new();
    for _ in 0..3 {
        records.push(straight.train_epoch(&train, &test, &mut |_| {}).unwrap());
    }
    assert!(
        records[2].test_accuracy > 0.9,
        "the quadrant task must be learnt: {records:?}"
    );

    // Interrupted after epoch 1, restored from the checkpoint, continued.
    let snn = Snn::new(&small_conv(), input8(), 4, &dev, 5).unwrap();
    let mut first = Trainer::new(snn, params(3), vec![0.3], vec![0.3]);
    first.train_epoch(&train, &test, &mut |_| {}).unwrap();
    checkpoint::save(&ckpt, &first, "synthetic", None).unwrap();
    drop(first);
    let (mut resumed, _) = checkpoint::restore(&ckpt, &dev).unwrap();
    assert_eq!(resumed.epochs_done, 1);
    while resumed.epochs_done < 3 {
        resumed.train_epoch(&train, &test, &mut |_| {}).unwrap();
    }
    let a = straight.snn.tensors();
    let b = resumed.snn.tensors();
    let mut max_diff = 0.0f32;
    for (name, t) in &a {
        for (x, y) in t.data.iter().zip(&b[name].data) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    // Bit-exact: training is a pure function of (seed, epoch, step) and the checkpoint holds
    // the optimizer buffers.
    assert_eq!(max_diff, 0.0, "resumed weights differ by up to {max_diff}");
    assert_eq!(
        straight.history.last().unwrap().test_accuracy,
        resumed.history.last().unwrap().test_accuracy
    );
}

#[test]
fn same_seed_same_initial_weights() {
    let dev = device();
    let a = Snn::new(&small_conv(), input8(), 4, &dev, 11)
        .unwrap()
        .tensors();
    let b = Snn::new(&small_conv(), input8(), 4, &dev, 11)
        .unwrap()
        .tensors();
    let c = Snn::new(&small_conv(), input8(), 4, &dev, 12)
        .unwrap()
        .tensors();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn paper_architectures_run_one_training_step_on_cifar_shaped_input() {
    let dev = device();
    let input = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (spec, expected) in [
        (ArchSpec::vgg16(), 14_728_266usize),
        (ArchSpec::resnet19(), 12_630_858),
    ] {
        let snn = Snn::new(&spec, input, 10, &dev, 1).unwrap();
        assert_eq!(snn.num_params(), expected, "{spec}");
        let p = TrainParams::builder()
            .batch_size(2)
            .timesteps(2)
            .optimizer(OptimizerKind::Sgd {
                momentum: 0.9,
                weight_decay: 5e-4,
            })
            .build()
            .unwrap();
        let mut t = Trainer::new(snn, p, vec![0.0; 3], vec![1.0; 3]);
        let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|_| rng.random::<f32>()).collect();
        let before = t.snn.tensors();
        let (loss, _) = t.step(&x, &[3, 7], input, 0.01).unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{spec}: loss {loss}");
        assert_ne!(
            before,
            t.snn.tensors(),
            "{spec}: the step must change weights"
        );
    }
}

#[test]
fn checkpoint_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.safetensors");
    std::fs::write(&p, b"not a checkpoint").unwrap();
    let e = checkpoint::load(&p).unwrap_err().to_string();
    assert!(e.contains("not safetensors"), "{e}");
    let e = checkpoint::load(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
}
