//! The loss curve: training loss, per-domain validation loss and the domains' entropy
//! floors (dashed), drawn from `metrics.jsonl` into an SVG file. A continual run with
//! old (upstream) data draws the old domains thin and dashed, and the mean validation
//! loss of the new (downstream) and of the old domains as two thick curves.
//!
//! [`plot_panels`] draws several runs side by side (as `shoal experiment rewarm` does).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use shoal_actors::MetricsRecord;

/// Colours of the validation curves, one per domain (cycled).
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Points of one curve.
pub type Series = Vec<(f64, f64)>;

/// The mean validation curves of a run with old (upstream) data.
#[derive(Default)]
struct Means {
    downstream: Series,
    upstream: Series,
    /// The old data's domains.
    names: std::collections::BTreeSet<String>,
}

/// Colour of the new (downstream) data's mean curve.
pub const DOWNSTREAM: RGBColor = RGBColor(31, 119, 180);
/// Colour of the old (upstream) data's mean curve.
pub const UPSTREAM: RGBColor = RGBColor(214, 39, 40);

/// Reads `metrics` and writes the plot to `out`.
pub fn plot_metrics(metrics: &Path, out: &Path) -> Result<()> {
    let records = shoal_actors::read_metrics(metrics)?;
    let mut train: Series = Vec::new();
    let mut evals: BTreeMap<String, Series> = BTreeMap::new();
    let mut floors: BTreeMap<String, f64> = BTreeMap::new();
    let mut means = Means::default();
    for r in &records {
        match r {
            MetricsRecord::Step(s) => train.push((s.step as f64, f64::from(s.loss))),
            MetricsRecord::Eval {
                step,
                eval,
                floor,
                upstream,
            } => {
                for (name, loss) in eval {
                    evals
                        .entry(name.clone())
                        .or_default()
                        .push((*step as f64, *loss));
                }
                floors.extend(floor.iter().map(|(k, v)| (k.clone(), *v)));
                if !upstream.is_empty() {
                    let (down, up) = shoal_actors::split_means(eval, upstream);
                    let x = *step as f64;
                    means.downstream.extend(down.map(|y| (x, y)));
                    means.upstream.extend(up.map(|y| (x, y)));
                    means.names.extend(upstream.iter().cloned());
                }
            }
            MetricsRecord::Memory { .. } => {}
        }
    }
    draw(&train, &evals, &floors, &means, out)
        .with_context(|| format!("cannot draw the loss curve into {}", out.display()))
}

/// An exponential moving average, to show the trend of the noisy training loss.
fn smoothed(points: &Series, alpha: f64) -> Series {
    let mut avg = None;
    points
        .iter()
        .map(|&(x, y)| {
            let a = avg.map_or(y, |a: f64| a + alpha * (y - a));
            avg = Some(a);
            (x, a)
        })
        .collect()
}

fn draw(
    train: &Series,
    evals: &BTreeMap<String, Series>,
    floors: &BTreeMap<String, f64>,
    means: &Means,
    out: &Path,
) -> Result<()> {
    let all_y = train
        .iter()
        .chain(evals.values().flatten())
        .map(|p| p.1)
        .chain(floors.values().copied())
        .filter(|y| y.is_finite());
    let (lo, hi) = all_y.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let max_x = train
        .iter()
        .chain(evals.values().flatten())
        .map(|p| p.0)
        .fold(1.0, f64::max);

    let root = SVGBackend::new(out, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("shoal: loss (nats/token)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x, (lo - pad).max(0.0)..hi + pad)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .y_desc("cross-entropy")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    if !train.is_empty() {
        chart.draw_series(LineSeries::new(train.iter().copied(), BLACK.mix(0.2)))?;
        chart
            .draw_series(LineSeries::new(smoothed(train, 0.1), BLACK.stroke_width(2)))?
            .label("train (EMA)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    }
    for (i, (name, points)) in evals.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        if means.names.contains(name) {
            chart
                .draw_series(DashedLineSeries::new(
                    points.iter().copied(),
                    4,
                    3,
                    color.mix(0.7).stroke_width(1),
                ))?
                .label(format!("val {name} (old data)"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 6, y), (x + 12, y)], color.mix(0.7))
                });
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(format!("val {name}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if let Some(&floor) = floors.get(name) {
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, floor), (max_x, floor)],
                    8,
                    6,
                    color.mix(0.8).stroke_width(1),
                ))?
                .label(format!("floor {name} ({floor:.3})"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 6, y), (x + 12, y)], color.mix(0.8))
                });
        }
    }
    for (label, points, color) in [
        (
            "mean val, new data (downstream)",
            &means.downstream,
            DOWNSTREAM,
        ),
        ("mean val, old data (upstream)", &means.upstream, UPSTREAM),
    ] {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(4),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(4))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One panel of [`plot_panels`]: a title and its curves (label, points, colour).
pub struct Panel {
    /// Shown above the panel.
    pub title: String,
    /// The curves.
    pub curves: Vec<(String, Series, RGBColor)>,
    /// Whether the panel has a y axis of its own rather than the one all share.
    pub own_y: bool,
}

/// The y range of `panels`: from the lowest point to the highest after each curve's
/// first, padded.
fn y_range<'a>(panels: impl Iterator<Item = &'a Panel> + Clone) -> (f64, f64) {
    let curves = panels.flat_map(|p| &p.curves);
    let finite = |y: &f64| y.is_finite();
    let lo = curves
        .clone()
        .flat_map(|c| &c.1)
        .map(|p| p.1)
        .filter(finite)
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .flat_map(|c| c.1.iter().skip(usize::from(c.1.len() > 1)))
        .map(|p| p.1)
        .filter(finite)
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    ((lo - pad).max(0.0), hi + pad)
}

/// Draws `panels` in a grid of `columns`, on the same axes (x: `x_desc`, y: loss)
/// unless a panel has its own y axis, into the SVG file `out`.
///
/// A curve's first point does not stretch the y axis (a continual run starts far
/// above where it goes, on data its model has not seen): it is drawn clipped at the
/// top when it is above every later point.
pub fn plot_panels(
    panels: &[Panel],
    columns: usize,
    x_desc: &str,
    caption: &str,
    out: &Path,
) -> Result<()> {
    draw_panels(panels, columns.max(1), x_desc, caption, out)
        .with_context(|| format!("cannot draw the panels into {}", out.display()))
}

fn draw_panels(
    panels: &[Panel],
    columns: usize,
    x_desc: &str,
    caption: &str,
    out: &Path,
) -> Result<()> {
    let points = || panels.iter().flat_map(|p| &p.curves).flat_map(|c| &c.1);
    let shared = y_range(panels.iter().filter(|p| !p.own_y));
    let (min_x, max_x) = points()
        .map(|p| p.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    let (min_x, max_x) = if min_x < max_x {
        (min_x, max_x)
    } else {
        (0.0, 1.0)
    };
    let rows = panels.len().div_ceil(columns).max(1);
    let root =
        SVGBackend::new(out, (420 * columns as u32, 60 + 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, ("sans-serif", 22))?;
    let areas = root.split_evenly((rows, columns));
    for (panel, area) in panels.iter().zip(&areas) {
        let (lo, top) = if panel.own_y {
            y_range(std::iter::once(panel))
        } else {
            shared
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(min_x..max_x, lo..top)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (label, series, color) in &panel.curves {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    series.iter().map(|&(x, y)| (x, y.min(top))),
                    color.stroke_width(2),
                ))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 11))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_from_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for s in 1..=20 {
            text += &format!(
                "{{\"step\":{s},\"loss\":{},\"lr\":0.001,\"grad_norm\":1.0,\"tokens\":64,\"tokens_per_s\":100.0,\"seconds\":0.1}}\n",
                5.0 / s as f64
            );
        }
        text += "{\"step\":10,\"eval\":{\"copy\":1.2,\"noise\":5.5},\"floor\":{\"copy\":0.6,\"noise\":5.545}}\n";
        text += "{\"step\":20,\"eval\":{\"copy\":0.9,\"noise\":5.6},\"floor\":{\"copy\":0.6,\"noise\":5.545}}\n";
        std::fs::write(&metrics, text).unwrap();
        let out = dir.path().join("loss.svg");
        plot_metrics(&metrics, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("val copy") && svg.contains("floor noise"));
        assert!(!svg.contains("upstream"));
    }

    #[test]
    fn draws_upstream_and_downstream_means() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for s in [0, 10, 20] {
            text += &format!(
                "{{\"step\":{s},\"eval\":{{\"zh\":{},\"en\":{}}},\"upstream\":[\"en\"]}}\n",
                5.0 - 0.1 * s as f64,
                2.0 + 0.05 * s as f64
            );
        }
        std::fs::write(&metrics, text).unwrap();
        let out = dir.path().join("loss.svg");
        plot_metrics(&metrics, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(
            svg.contains("val en (old data)") && svg.contains("(upstream)"),
            "{svg}"
        );
        assert!(svg.contains("(downstream)"));

        let panels = [
            Panel {
                title: "a".into(),
                curves: vec![("down".into(), vec![(0.0, 3.0), (1.0, 2.0)], DOWNSTREAM)],
                own_y: false,
            },
            Panel {
                title: "b".into(),
                curves: vec![("up".into(), vec![(0.0, 1.0), (1.0, 1.5)], UPSTREAM)],
                own_y: true,
            },
        ];
        let grid = dir.path().join("grid.svg");
        plot_panels(&panels, 2, "step", "two panels", &grid).unwrap();
        let svg = std::fs::read_to_string(&grid).unwrap();
        assert!(svg.contains("two panels") && svg.contains("down") && svg.contains("up"));
    }
}
