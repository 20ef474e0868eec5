//! Unit tests on synthetic files (and, when present, the shared Fashion-MNIST copy).

use crate::*;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes a small MNIST-shaped split: `n` images with pixel `(i + k) % 256`, labels `i % 10`.
fn write_mnist(dir: &Path, prefix: &str, n: usize, gzip: bool) {
    let pixels: Vec<u8> = (0..n * 784).map(|k| ((k / 784 + k) % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let img = dir.join(format!("{prefix}-images-idx3-ubyte"));
    let lab = dir.join(format!("{prefix}-labels-idx1-ubyte"));
    idx::write_images(&img, 28, 28, &pixels).unwrap();
    idx::write_labels(&lab, &labels).unwrap();
    if gzip {
        for p in [img, lab] {
            let raw = std::fs::read(&p).unwrap();
            let gz_path = format!("{}.gz", p.display());
            std::fs::write(&gz_path, gz(&raw)).unwrap();
            std::fs::remove_file(&p).unwrap();
        }
    }
}

#[test]
fn idx_plain_and_gzip_load_the_same() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_mnist(a.path(), "train", 7, false);
    write_mnist(b.path(), "train", 7, true);
    let da = load(DatasetKind::Mnist, a.path(), Split::Train).unwrap();
    let db = load(DatasetKind::Mnist, b.path(), Split::Train).unwrap();
    assert_eq!(da, db);
    assert_eq!(da.len(), 7);
    assert_eq!(da.feature_dim(), 784);
    assert_eq!(da.labels, vec![0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(da.sample(1)[0], ((784 + 1) % 256) as f32 / 255.0);
    assert!(da.images.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn idx_bad_magic_is_reported_with_path() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x");
    idx::write_labels(&p, &[1, 2, 3]).unwrap();
    let e = idx::read_images(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad IDX magic 2049") && e.contains("expected 2051"),
        "{e}"
    );
    assert!(e.contains(&p.display().to_string()), "{e}");
}

#[test]
fn idx_truncated_and_trailing_bytes_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("img");
    idx::write_images(&p, 2, 2, &[0; 12]).unwrap();
    let full = std::fs::read(&p).unwrap();
    // Truncated data.
    std::fs::write(&p, &full[..full.len() - 1]).unwrap();
    let e = idx::read_images(&p).unwrap_err().to_string();
    assert!(
        e.contains("truncated") && e.contains("need 12 data bytes, file has 11"),
        "{e}"
    );
    // Truncated header.
    std::fs::write(&p, &full[..9]).unwrap();
    assert!(
        idx::read_images(&p)
            .unwrap_err()
            .to_string()
            .contains("truncated IDX header")
    );
    std::fs::write(&p, &full[..2]).unwrap();
    assert!(
        idx::read_images(&p)
            .unwrap_err()
            .to_string()
            .contains("too short")
    );
    // Trailing bytes.
    let mut longer = full.clone();
    longer.push(7);
    std::fs::write(&p, &longer).unwrap();
    assert!(
        idx::read_images(&p)
            .unwrap_err()
            .to_string()
            .contains("trailing")
    );
    // Truncated gzip stream.
    let z = gz(&full);
    std::fs::write(&p, &z[..z.len() / 2]).unwrap();
    let e = idx::read_images(&p).unwrap_err().to_string();
    assert!(e.contains("gzip"), "{e}");
    // Good one still reads.
    std::fs::write(&p, &z).unwrap();
    let im = idx::read_images(&p).unwrap();
    assert_eq!((im.count, im.rows, im.cols), (3, 2, 2));
}

#[test]
fn image_label_count_mismatch() {
    let d = tempfile::tempdir().unwrap();
    write_mnist(d.path(), "t10k", 5, false);
    idx::write_labels(&d.path().join("t10k-labels-idx1-ubyte"), &[0, 1, 2]).unwrap();
    let e = load(DatasetKind::FashionMnist, d.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 images") && e.contains("3 labels"), "{e}");
}

#[test]
fn wrong_image_size_and_bad_label() {
    let d = tempfile::tempdir().unwrap();
    idx::write_images(&d.path().join("train-images-idx3-ubyte"), 2, 2, &[0; 8]).unwrap();
    idx::write_labels(&d.path().join("train-labels-idx1-ubyte"), &[0, 1]).unwrap();
    let e = load(DatasetKind::Mnist, d.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(e.contains("28×28"), "{e}");
    write_mnist(d.path(), "train", 2, false);
    idx::write_labels(&d.path().join("train-labels-idx1-ubyte"), &[0, 10]).unwrap();
    let e = load(DatasetKind::Mnist, d.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(e.contains("10 classes"), "{e}");
}

#[test]
fn missing_files_list_the_expected_names() {
    let d = tempfile::tempdir().unwrap();
    let e = load(DatasetKind::Mnist, d.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte[.gz]") && e.contains("train-labels-idx1-ubyte[.gz]"),
        "{e}"
    );
    let e = load(DatasetKind::Cifar10, &d.path().join("nope"), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("test_batch.bin"), "{e}");
    let e = load(DatasetKind::Cifar10, d.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data_batch_1.bin") && e.contains("data_batch_5.bin"),
        "{e}"
    );
}

fn cifar_batch(n: usize, first_label: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push((first_label as usize + i) as u8 % 10);
        out.extend((0..3072).map(|k| ((k / 1024) * 100 + i) as u8));
    }
    out
}

#[test]
fn cifar_in_dir_or_subdir() {
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&sub).unwrap();
    for i in 1..=5 {
        std::fs::write(
            sub.join(format!("data_batch_{i}.bin")),
            cifar_batch(2, i as u8),
        )
        .unwrap();
    }
    std::fs::write(sub.join("test_batch.bin"), cifar_batch(3, 0)).unwrap();
    let tr = load(DatasetKind::Cifar10, d.path(), Split::Train).unwrap();
    assert_eq!(
        (tr.len(), tr.channels, tr.height, tr.width, tr.feature_dim()),
        (10, 3, 32, 32, 3072)
    );
    assert_eq!(tr.labels[..4], [1, 2, 2, 3]);
    // CHW: channel c of sample 0 holds 100 c.
    assert_eq!(tr.sample(0)[0], 0.0);
    assert_eq!(tr.sample(0)[1024], 100.0 / 255.0);
    assert_eq!(tr.sample(1)[2048], 201.0 / 255.0);
    let te = load(DatasetKind::Cifar10, &sub, Split::Test).unwrap();
    assert_eq!(te.labels, vec![0, 1, 2]);
    let (m, s) = tr.channel_stats();
    assert_eq!(m.len(), 3);
    assert!(s.iter().all(|s| *s > 0.0));
}

#[test]
fn cifar_truncated_or_bad_label() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("test_batch.bin");
    let b = cifar_batch(2, 0);
    std::fs::write(&p, &b[..b.len() - 5]).unwrap();
    let e = load(DatasetKind::Cifar10, d.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a multiple of the 3073-byte") && e.contains("test_batch.bin"),
        "{e}"
    );
    std::fs::write(&p, []).unwrap();
    assert!(
        cifar::read_batch(&p)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    let mut b = cifar_batch(1, 0);
    b[0] = 11;
    std::fs::write(&p, &b).unwrap();
    assert!(
        cifar::read_batch(&p)
            .unwrap_err()
            .to_string()
            .contains("label 11")
    );
}

#[test]
fn standardise_and_normalise() {
    let d = tempfile::tempdir().unwrap();
    write_mnist(d.path(), "train", 20, false);
    write_mnist(d.path(), "t10k", 4, true);
    let mut tr = load(DatasetKind::Mnist, d.path(), Split::Train).unwrap();
    let mut te = load(DatasetKind::Mnist, d.path(), Split::Test).unwrap();
    let (mean, std) = tr.standardise();
    let (m2, s2) = tr.channel_stats();
    assert!(
        m2[0].abs() < 1e-4 && (s2[0] - 1.0).abs() < 1e-4,
        "{m2:?} {s2:?}"
    );
    let before = te.sample(0)[5];
    te.normalise(&mean, &std).unwrap();
    assert!((te.sample(0)[5] - (before - mean[0]) / std[0]).abs() < 1e-6);
    assert!(te.normalise(&[0.0, 0.0], &[1.0, 1.0]).is_err());
    assert!(te.normalise(&[0.0], &[0.0]).is_err());
    assert!(te.normalise(&[f32::NAN], &[1.0]).is_err());
}

#[test]
fn limit_and_gather() {
    let d = tempfile::tempdir().unwrap();
    write_mnist(d.path(), "train", 12, false);
    let tr = load(DatasetKind::Mnist, d.path(), Split::Train).unwrap();
    let l = tr.limit(5);
    assert_eq!(l.len(), 5);
    assert_eq!(l.images.len(), 5 * 784);
    assert_eq!(l.sample(4), tr.sample(4));
    assert_eq!(tr.limit(100).len(), 12);
    let (x, y) = tr.gather(&[3, 0]);
    assert_eq!(y, vec![3, 0]);
    assert_eq!(&x[..784], tr.sample(3));
}

#[test]
fn kind_and_split_names() {
    for (s, k) in [
        ("mnist", DatasetKind::Mnist),
        ("fashion-mnist", DatasetKind::FashionMnist),
        ("FMNIST", DatasetKind::FashionMnist),
        ("cifar10", DatasetKind::Cifar10),
        ("cifar-10", DatasetKind::Cifar10),
    ] {
        assert_eq!(s.parse::<DatasetKind>().unwrap(), k);
    }
    assert!(
        "imagenet"
            .parse::<DatasetKind>()
            .unwrap_err()
            .to_string()
            .contains("expected mnist")
    );
    assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
    assert!("dev".parse::<Split>().is_err());
}

#[test]
fn shared_fashion_mnist_if_present() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/datasets/fashion-mnist"
    ));
    if !dir.is_dir() {
        eprintln!(
            "note: {} absent, skipping the real-data test",
            dir.display()
        );
        return;
    }
    let te = load(DatasetKind::FashionMnist, dir, Split::Test).unwrap();
    assert_eq!(te.len(), 10_000);
    assert_eq!(te.feature_dim(), 784);
    let mut counts = [0usize; 10];
    for &l in &te.labels {
        counts[l as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c == 1000), "{counts:?}");
    let (m, s) = te.channel_stats();
    assert!(
        (0.2..0.4).contains(&m[0]) && (0.25..0.45).contains(&s[0]),
        "{m:?} {s:?}"
    );
}
