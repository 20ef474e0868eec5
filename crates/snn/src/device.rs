//! Device selection. The model code never names a backend: it receives a [`Device`], so adding
//! `cuda`/`wgpu` means enabling the burn feature and a match arm here.

use crate::error::SnnError;
use burn::tensor::Device;

/// Parses a `--device` value into a training (autodiff) device.
pub fn training_device(name: &str) -> Result<Device, SnnError> {
    match name {
        "cpu" | "flex" => Ok(Device::flex().autodiff()),
        other => Err(SnnError::Device(other.to_string())),
    }
}
