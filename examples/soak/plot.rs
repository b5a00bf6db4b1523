//! The plot of live streams over time (SVG).

use std::path::Path;

use super::{report::Summary, Kind, Opts};

pub(super) fn plot(path: &Path, opts: &Opts, summary: &Summary) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let samples = &summary.samples;
    let root = SVGBackend::new(path, (1000, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let x_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_top = samples
        .iter()
        .map(|s| s.sum.max(s.handles))
        .max()
        .unwrap_or(0)
        .max(u64::from(opts.stream_limit));
    let y_max = y_top + y_top / 10 + 1;
    let live = match opts.transport {
        Kind::Ours => "tracked by the ledger",
        Kind::Libp2pQuic => "application-level handles",
    };
    let caption = format!(
        "{}: live streams ({live}), rate {}/s, loss {}, stream limit {}",
        opts.transport.name(),
        opts.rate,
        opts.loss,
        opts.stream_limit
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0u64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("live streams")
        .draw()
        .map_err(|e| err(&e))?;
    type Series = (String, RGBColor, Vec<(f64, u64)>);
    let mut series: Vec<Series> = vec![
        (
            "sum over connection ends".into(),
            BLUE,
            samples.iter().map(|s| (s.t, s.sum)).collect(),
        ),
        (
            "max on one connection end".into(),
            RED,
            samples.iter().map(|s| (s.t, s.max)).collect(),
        ),
        (
            format!("stream limit ({})", opts.stream_limit),
            RGBColor(120, 120, 120),
            vec![
                (0.0, opts.stream_limit.into()),
                (x_max, opts.stream_limit.into()),
            ],
        ),
    ];
    if opts.transport == Kind::Ours {
        series.push((
            "application-level handles (sum)".into(),
            GREEN,
            samples.iter().map(|s| (s.t, s.handles)).collect(),
        ));
    }
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
