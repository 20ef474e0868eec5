//! `netxray model train` (being written).
use clap::Args;

/// Arguments of `model train`.
#[derive(Debug, Args)]
pub struct TrainArgs {}

pub fn run(_a: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
