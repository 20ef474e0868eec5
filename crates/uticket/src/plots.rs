//! SVG plots of LTH / u-Ticket runs (plotters' SVG backend: no font or image libraries needed).

use crate::hw::HwReport;
use crate::lth::RoundRecord;
use plotters::prelude::*;
use std::path::Path;

/// A plotting failure (file system or drawing).
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {reason}")]
pub struct PlotError {
    /// Output file.
    pub path: String,
    /// What failed.
    pub reason: String,
}

fn perr(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Utilization (parameter-weighted) per round, one line per run (`(label, records)`).
pub fn utilization_per_round(
    path: &Path,
    runs: &[(String, Vec<RoundRecord>)],
) -> Result<(), PlotError> {
    let rounds = runs.iter().map(|(_, r)| r.len()).max().unwrap_or(1).max(2);
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "PE utilization per pruning round (16 PEs, weighted)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..(rounds - 1) as f64, 0f64..1.05f64)
        .map_err(|e| perr(path, e))?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("utilization")
        .draw()
        .map_err(|e| perr(path, e))?;
    for (i, (label, recs)) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = recs
            .iter()
            .map(|r| (r.round as f64, r.hw.utilization_weighted))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| perr(path, e))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| perr(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| perr(path, e))?;
    root.present().map_err(|e| perr(path, e))
}

/// Test accuracy against global sparsity, one line per run.
pub fn accuracy_vs_sparsity(
    path: &Path,
    runs: &[(String, Vec<RoundRecord>)],
) -> Result<(), PlotError> {
    let all: Vec<&RoundRecord> = runs.iter().flat_map(|(_, r)| r.iter()).collect();
    let lo = all.iter().map(|r| r.test_accuracy).fold(1.0, f64::min);
    let hi = all.iter().map(|r| r.test_accuracy).fold(0.0, f64::max);
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Test accuracy vs weight sparsity", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..100f64, (lo * 100.0 - 1.0)..(hi * 100.0 + 1.0))
        .map_err(|e| perr(path, e))?;
    chart
        .configure_mesh()
        .x_desc("sparsity (%)")
        .y_desc("test accuracy (%)")
        .draw()
        .map_err(|e| perr(path, e))?;
    for (i, (label, recs)) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = recs
            .iter()
            .map(|r| (r.sparsity * 100.0, r.test_accuracy * 100.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| perr(path, e))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| perr(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| perr(path, e))?;
    root.present().map_err(|e| perr(path, e))
}

/// Per-PE workloads (non-zero weights per filter) of the worst group of the worst layer of
/// `before`, next to the same group in `after` (e.g. the last round before and after balancing).
pub fn worst_layer_workloads(
    path: &Path,
    before: &HwReport,
    after: &HwReport,
) -> Result<(), PlotError> {
    let Some((li, layer)) = before
        .layers
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.utilization.total_cmp(&b.1.utilization))
    else {
        return Err(perr(path, "no counted layer"));
    };
    let Some(group) = layer
        .groups
        .iter()
        .min_by(|a, b| a.utilization.total_cmp(&b.utilization))
    else {
        return Err(perr(path, "layer without groups"));
    };
    let after_group = after
        .layers
        .get(li)
        .and_then(|l| l.groups.get(group.index))
        .ok_or_else(|| perr(path, "the two reports do not have the same layers"))?;
    let ymax = group
        .workloads
        .iter()
        .chain(&after_group.workloads)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(path, e))?;
    let panels = root.split_evenly((1, 2));
    for (panel, (title, g)) in panels.iter().zip([
        (
            format!(
                "before: {} group {} (μ = {:.2})",
                layer.name, group.index, group.utilization
            ),
            group,
        ),
        (
            format!("after balancing (μ = {:.2})", after_group.utilization),
            after_group,
        ),
    ]) {
        let n = g.workloads.len();
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
            .map_err(|e| perr(path, e))?;
        chart
            .configure_mesh()
            .x_desc("PE")
            .y_desc("non-zero weights")
            .draw()
            .map_err(|e| perr(path, e))?;
        chart
            .draw_series(g.workloads.iter().enumerate().map(|(i, &w)| {
                Rectangle::new(
                    [(i as f64 + 0.1, 0.0), (i as f64 + 0.9, w as f64)],
                    COLORS[0].filled(),
                )
            }))
            .map_err(|e| perr(path, e))?;
    }
    root.present().map_err(|e| perr(path, e))
}
