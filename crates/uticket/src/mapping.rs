//! How a layer's weights are distributed over the n PEs of the array: which weights each PE holds in
//! each group of work that the PEs run in parallel. The hardware model and the balancers share this,
//! so a balanced group is balanced exactly in the sense the hardware model measures.

use crate::layer::LayerShape;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Weight-to-PE mapping of a weight-stationary array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// The paper's mapping (reference code `arch_style='sata'`): output channels are taken n at a time
    /// (`n·g … n·g+n−1`) and PE j of group g holds the whole filter `n·g + j`. When the number of
    /// filters is not a multiple of n, the last group's missing PEs are idle (zero workload).
    #[default]
    FilterPerPe,
    /// Reference code `arch_style='systolic'`: every output channel is one group; its input channels
    /// are cut into n contiguous slices of `ceil(C/n)` channels (the last ones may be shorter or
    /// empty) and PE j holds slice j of the filter.
    InputChannelSplit,
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mapping::FilterPerPe => "filter-per-pe",
            Mapping::InputChannelSplit => "input-channel-split",
        })
    }
}

impl FromStr for Mapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "filter-per-pe" | "filter" | "sata" => Ok(Mapping::FilterPerPe),
            "input-channel-split" | "input-channel" | "systolic" => Ok(Mapping::InputChannelSplit),
            other => Err(format!(
                "unknown mapping '{other}' (expected filter-per-pe or input-channel-split)"
            )),
        }
    }
}

/// One group of work the n PEs run in parallel: the flat weight ranges held by the PEs that have
/// something to hold (PE j holds `units[j]`). PEs `units.len()..n` hold nothing in this group and
/// stay idle (padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeGroup {
    /// Row-major flat weight ranges, one per PE that holds weights; never empty ranges.
    pub units: Vec<Range<usize>>,
}

/// The groups of a layer under `mapping` with `pes` PEs, in execution order. `pes` must be ≥ 1.
pub fn pe_groups(shape: &LayerShape, mapping: Mapping, pes: usize) -> Vec<PeGroup> {
    assert!(pes >= 1, "pe_groups needs at least one PE");
    let filters = shape.out_channels();
    let flen = shape.filter_len();
    match mapping {
        Mapping::FilterPerPe => (0..filters.div_ceil(pes))
            .map(|g| PeGroup {
                units: (g * pes..((g + 1) * pes).min(filters))
                    .map(|k| k * flen..(k + 1) * flen)
                    .collect(),
            })
            .collect(),
        Mapping::InputChannelSplit => {
            let channels = shape.in_channels();
            let klen = shape.kernel_len();
            // ceil(C/n) channels per PE as in the reference code; trailing PEs may get nothing.
            let per_pe = channels.div_ceil(pes);
            (0..filters)
                .map(|k| PeGroup {
                    units: (0..pes)
                        .map(|j| (j * per_pe).min(channels)..((j + 1) * per_pe).min(channels))
                        .filter(|r| !r.is_empty())
                        .map(|r| k * flen + r.start * klen..k * flen + r.end * klen)
                        .collect(),
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_per_pe_pads_the_last_group() {
        let s = LayerShape::conv(5, 1, 1, 2).unwrap();
        let g = pe_groups(&s, Mapping::FilterPerPe, 2);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].units, vec![0..2, 2..4]);
        assert_eq!(g[2].units, vec![8..10]);
    }

    #[test]
    fn input_channel_split_uses_ceil_slices() {
        // C = 5, n = 4: ceil(5/4) = 2 channels per PE → slices {0,1}, {2,3}, {4}, {} (idle).
        let s = LayerShape::conv(2, 5, 1, 1).unwrap();
        let g = pe_groups(&s, Mapping::InputChannelSplit, 4);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].units, vec![0..2, 2..4, 4..5]);
        assert_eq!(g[1].units, vec![5..7, 7..9, 9..10]);
        let s = LayerShape::conv(1, 4, 3, 3).unwrap();
        let g = pe_groups(&s, Mapping::InputChannelSplit, 2);
        assert_eq!(g[0].units, vec![0..18, 18..36]);
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            "filter-per-pe".parse::<Mapping>().unwrap(),
            Mapping::FilterPerPe
        );
        assert_eq!(
            "input-channel-split".parse::<Mapping>().unwrap(),
            Mapping::InputChannelSplit
        );
        assert!("x".parse::<Mapping>().is_err());
    }
}
