//! The packet-rate harness's picture: one panel per workload, a horizontal bar per
//! contender (the median), a whisker from the fastest to the slowest run.

use std::path::Path;

use plotters::prelude::*;

/// One bar: a contender's median and the range of its runs.
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Drawn in the project's colour rather than the kernel's or OVS's grey.
    pub ours: bool,
}

pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// Draws `panels` stacked into a PNG at `path`.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<(), Box<dyn std::error::Error>> {
    let row_px = 34u32;
    let heights: Vec<u32> = panels.iter().map(|p| 70 + row_px * p.bars.len() as u32).collect();
    let root = BitMapBackend::new(path, (1100, heights.iter().sum())).into_drawing_area();
    root.fill(&WHITE)?;
    let mut rest = root;
    for (panel, h) in panels.iter().zip(&heights) {
        let (area, below) = rest.split_vertically(*h);
        rest = below;
        let n = panel.bars.len() as u32;
        let x_max = panel.bars.iter().map(|b| b.max.max(b.median)).fold(0.0, f64::max) * 1.15 + 1e-9;
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(430)
            .build_cartesian_2d(0.0..x_max, (0..n).into_segmented())?;
        let labels: Vec<String> = panel.bars.iter().map(|b| b.label.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n as usize)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 14))
            .draw()?;
        let ours = RGBColor(31, 119, 180);
        let theirs = RGBColor(150, 150, 150);
        chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
            let i = i as u32;
            let colour = if b.ours { ours } else { theirs };
            let mut bar = Rectangle::new(
                [(0.0, SegmentValue::Exact(i)), (b.median, SegmentValue::Exact(i + 1))],
                colour.filled(),
            );
            bar.set_margin(5, 5, 0, 0);
            bar
        }))?;
        chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
            PathElement::new(
                vec![(b.min, SegmentValue::CenterOf(i as u32)), (b.max, SegmentValue::CenterOf(i as u32))],
                BLACK.stroke_width(2),
            )
        }))?;
        chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                format!("{:.2}", b.median),
                (b.max.max(b.median) + x_max * 0.01, SegmentValue::CenterOf(i as u32)),
                ("sans-serif", 13),
            )
        }))?;
    }
    rest.present()?;
    Ok(())
}
