//! CIFAR-10 binary batches: records of 3073 bytes, a label byte (0–9) then 3072 pixel bytes in CHW order
//! (1024 red, 1024 green, 1024 blue; each 32×32 row-major).

use crate::DataError;
use std::path::Path;

/// Bytes per CIFAR-10 record (label + 3 × 32 × 32).
pub const RECORD_BYTES: usize = 3073;
/// Pixel bytes per CIFAR-10 image.
pub const IMAGE_BYTES: usize = 3072;

/// Reads one CIFAR-10 binary batch file; returns `(pixels CHW image after image, labels)`.
pub fn read_batch(path: &Path) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.is_empty() {
        return Err(DataError::format(path, "empty CIFAR-10 batch file"));
    }
    if bytes.len() % RECORD_BYTES != 0 {
        return Err(DataError::format(
            path,
            format!(
                "size {} is not a multiple of the {RECORD_BYTES}-byte CIFAR-10 record (truncated or not a binary batch; {} bytes left over)",
                bytes.len(),
                bytes.len() % RECORD_BYTES
            ),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if rec[0] > 9 {
            return Err(DataError::format(
                path,
                format!(
                    "record {i} has label {} (CIFAR-10 labels are 0–9); not a CIFAR-10 binary batch?",
                    rec[0]
                ),
            ));
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((pixels, labels))
}
