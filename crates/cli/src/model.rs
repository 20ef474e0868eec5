//! `netxray model new | inspect | compare` (being written).
use clap::Args;

/// Arguments of `model new`.
#[derive(Debug, Args)]
pub struct NewArgs {}
/// Arguments of `model inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {}
/// Arguments of `model compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {}

pub fn new(_a: NewArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
pub fn inspect(_a: InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
pub fn compare(_a: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
