//! `netxray extract` (being written).
use clap::Args;

/// Arguments of `extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {}

pub fn run(_a: ExtractArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
