//! The IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed (detected by the gzip magic bytes).
//!
//! Layout: a big-endian magic `0x0000_08ndim` (`08` = unsigned bytes), `ndim` big-endian `u32` sizes, then the
//! data. Images use magic 2051 (`N × rows × cols`), labels magic 2049 (`N`).

use crate::DataError;
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// Magic number of an IDX image file (u8, 3 dimensions).
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX label file (u8, 1 dimension).
pub const LABELS_MAGIC: u32 = 2049;

/// Images read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count × rows × cols` pixel bytes, image after image, row-major.
    pub pixels: Vec<u8>,
}

/// Reads a whole file, decompressing it when it starts with the gzip magic `1f 8b`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                DataError::format(path, format!("corrupt or truncated gzip stream ({e})"))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses the IDX header, checks the magic and the total size; returns the sizes and the data offset.
fn parse_header(path: &Path, bytes: &[u8], magic: u32) -> Result<(Vec<usize>, usize), DataError> {
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!("file is {} bytes, too short for an IDX header", bytes.len()),
        ));
    }
    let got = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if got != magic {
        let what = if magic == IMAGES_MAGIC {
            "images"
        } else {
            "labels"
        };
        return Err(DataError::format(
            path,
            format!(
                "bad IDX magic {got} (expected {magic} for u8 {what}); is this the right file?"
            ),
        ));
    }
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!("truncated IDX header ({} of {header} bytes)", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("IDX sizes {dims:?} overflow")))?;
    let have = bytes.len() - header;
    if have < expected {
        return Err(DataError::format(
            path,
            format!("truncated: sizes {dims:?} need {expected} data bytes, file has {have}"),
        ));
    }
    if have > expected {
        return Err(DataError::format(
            path,
            format!(
                "{} unexpected trailing bytes after {expected} data bytes (sizes {dims:?})",
                have - expected
            ),
        ));
    }
    Ok((dims, header))
}

/// Reads an IDX image file (magic 2051, u8, `N × rows × cols`), plain or gzip.
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    let bytes = read_maybe_gz(path)?;
    let (dims, off) = parse_header(path, &bytes, IMAGES_MAGIC)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::format(
            path,
            format!("images of size {}×{}", dims[1], dims[2]),
        ));
    }
    let mut pixels = bytes;
    pixels.drain(..off);
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels,
    })
}

/// Reads an IDX label file (magic 2049, u8, `N`), plain or gzip.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    let (_, off) = parse_header(path, &bytes, LABELS_MAGIC)?;
    let mut labels = bytes;
    labels.drain(..off);
    Ok(labels)
}

/// Writes an uncompressed IDX image file; used by tests and tools that make small datasets.
/// `pixels.len()` must be a multiple of `rows × cols` (non-zero).
pub fn write_images(path: &Path, rows: usize, cols: usize, pixels: &[u8]) -> Result<(), DataError> {
    let count = match pixels.len().checked_div(rows * cols) {
        Some(c) if c * rows * cols == pixels.len() => c,
        _ => {
            return Err(DataError::Invalid(format!(
                "{} pixel bytes do not make whole {rows}×{cols} images",
                pixels.len()
            )));
        }
    };
    let mut out = Vec::with_capacity(16 + pixels.len());
    for v in [IMAGES_MAGIC, count as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    std::fs::write(path, out).map_err(|e| DataError::io(path, e))
}

/// Writes an uncompressed IDX label file.
pub fn write_labels(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    std::fs::write(path, out).map_err(|e| DataError::io(path, e))
}
