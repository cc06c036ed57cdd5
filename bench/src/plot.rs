//! The two PNG plots: throughput against worker count, and latency distributions.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::Results;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

/// Pipeline throughput by worker count, with the Go reference and raw/2 as lines.
pub fn throughput(path: &Path, r: &Results) -> anyhow::Result<()> {
    if r.pipeline.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_w = r.pipeline.iter().map(|p| p.workers).max().unwrap_or(1) as f64;
    let half_raw = r.raw.as_ref().map(|x| x.reader_msgs_per_sec / 2.0);
    let top = r
        .pipeline
        .iter()
        .map(|p| p.msgs_per_sec)
        .chain(r.reference_msgs_per_sec)
        .chain(half_raw)
        .fold(1.0f64, f64::max)
        * 1.15
        / 1000.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("End-to-end throughput, {} cores", r.cores),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..max_w + 0.5, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("workers")
        .y_desc("k msg/s")
        .x_labels(max_w as usize + 1)
        .draw()
        .map_err(err)?;
    let points: Vec<(f64, f64)> = r
        .pipeline
        .iter()
        .map(|p| (p.workers as f64, p.msgs_per_sec / 1000.0))
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(3)))
        .map_err(err)?
        .label("nsq-suite pipeline")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(3)));
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 5, BLUE.filled())))
        .map_err(err)?;
    let hline = |y: f64| vec![(0.5, y / 1000.0), (max_w + 0.5, y / 1000.0)];
    if let Some(x) = r.reference_msgs_per_sec {
        chart
            .draw_series(LineSeries::new(hline(x), RED.stroke_width(2)))
            .map_err(err)?
            .label("reference: Go tools, 2 hops")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    if let Some(x) = half_raw {
        chart
            .draw_series(LineSeries::new(hline(x), GREEN.stroke_width(2)))
            .map_err(err)?
            .label("ceiling: raw 1-hop / 2")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Latency at each quantile, one line per rate (log scale).
pub fn latency(path: &Path, r: &Results) -> anyhow::Result<()> {
    if r.latency.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = r
        .latency
        .iter()
        .flat_map(|l| l.distribution.iter().map(|(_, ms)| *ms))
        .fold(0.01f64, f64::max)
        * 2.0;
    let min = r
        .latency
        .iter()
        .flat_map(|l| l.distribution.iter().map(|(_, ms)| *ms))
        .fold(f64::MAX, f64::min)
        .max(0.01)
        / 2.0;
    // x: "nines" scale, -log10(1 - q), capped for q = 1.
    let nines = |q: f64| -(1.0 - q).max(1e-4).log10();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "End-to-end latency (taken_at → written), 2 workers",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..4.0, (min..max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_label_formatter(&|x| match x.round() as i32 {
            0 => "0".into(),
            1 => "90".into(),
            2 => "99".into(),
            3 => "99.9".into(),
            _ => "max".into(),
        })
        .x_labels(5)
        .draw()
        .map_err(err)?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let mut rates: Vec<u64> = r.latency.iter().map(|l| l.rate).collect();
    rates.dedup();
    for (i, l) in r.latency.iter().enumerate() {
        // One colour per rate; nsqd's default buffering drawn thin, the low-latency setting thick.
        let rate_index = rates.iter().position(|r| *r == l.rate).unwrap_or(i);
        let color = colors[rate_index % colors.len()];
        let width = if l.output_buffer_size == 0 { 1 } else { 3 };
        let pts: Vec<(f64, f64)> = l
            .distribution
            .iter()
            .map(|(q, ms)| (nines(*q), ms.max(min)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
            .map_err(err)?
            .label(if l.output_buffer_size == 0 {
                format!("{} readings/s, defaults", l.rate)
            } else {
                format!(
                    "{} readings/s, --output-buffer-size {}",
                    l.rate, l.output_buffer_size
                )
            })
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))
}
