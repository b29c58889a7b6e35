//! Charts as SVG files: the demo's speed-up against workers, and one chart per bench
//! workload.
//!
//! `plotters` with its SVG backend only: no bitmap backend, no font loading. Text goes
//! into the SVG as `<text>` elements that whatever shows the file draws in its own
//! sans-serif; plotters lays it out with its built-in size estimate, so the label areas
//! below are sized with room to spare.

use std::error::Error;
use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::bench::{Kind, WorkloadReport};

/// One line of the speed-up chart: (workers, speed-up) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(u32, f64)>,
}

/// Series colours, in order (colour-blind safe: blue, orange, green, purple).
const COLOURS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];
const GREY: RGBColor = RGBColor(110, 110, 110);

const X_LABEL_WORKERS: &str = "workers";
const Y_LABEL_SPEEDUP: &str = "speed-up over sequential";

fn err(e: impl std::fmt::Display) -> Box<dyn Error> {
    e.to_string().into()
}

/// A linear f64 axis whose ticks are exactly the given values (plotters' own
/// `with_key_points` loses the label formatting the mesh needs).
struct Keyed {
    linear: RangedCoordf64,
    keys: Vec<f64>,
}

impl Keyed {
    fn new(range: Range<f64>, keys: Vec<f64>) -> Keyed {
        Keyed {
            linear: range.into(),
            keys,
        }
    }
}

impl Ranged for Keyed {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.keys.clone()
    }

    fn range(&self) -> Range<f64> {
        self.linear.range()
    }
}

/// Draws speed-up against workers, 1..=`max_workers`, with the ideal line: linear up
/// to `cpus`, flat after (more workers than CPUs cannot go faster).
pub fn speedup(
    path: &Path,
    title: &str,
    subtitle: &str,
    series: &[Series],
    max_workers: u32,
    cpus: u32,
) -> Result<(), Box<dyn Error>> {
    let ideal: Vec<(u32, f64)> = (1..=max_workers)
        .map(|w| (w, f64::from(w.min(cpus))))
        .collect();
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(ideal.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let y_max = (top * 1.15).max(1.2);

    let root = SVGBackend::new(path, (820, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(title, ("sans-serif", 24).into_font().color(&BLACK))
        .map_err(err)?;
    let (sub, plot_area) = root.split_vertically(24);
    sub.draw(&Text::new(
        subtitle.to_string(),
        (70, 4),
        ("sans-serif", 15).into_font().color(&GREY),
    ))
    .map_err(err)?;

    let x_keys: Vec<f64> = worker_ticks(max_workers);
    let x_range = Keyed::new(0.6..f64::from(max_workers) + 0.4, x_keys);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(16)
        .margin_right(28)
        .x_label_area_size(56)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(X_LABEL_WORKERS)
        .y_desc(Y_LABEL_SPEEDUP)
        .axis_desc_style(("sans-serif", 19))
        .label_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_label_formatter(&|y| format!("{y:.1}x"))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(err)?;

    let as_f64 = |pts: &[(u32, f64)]| -> Vec<(f64, f64)> {
        pts.iter().map(|&(w, s)| (f64::from(w), s)).collect()
    };
    for (s, colour) in series.iter().zip(COLOURS.iter().cycle()) {
        let colour = *colour;
        let pts = as_f64(&s.points);
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(3)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(PointSeries::of_element(
                pts,
                5,
                colour.filled(),
                &|c, size, style| EmptyElement::at(c) + Circle::new((0, 0), size, style),
            ))
            .map_err(err)?;
    }

    // Last, so that a series on the ideal line does not hide it.
    let ideal_style = GREY.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(as_f64(&ideal), 8, 6, ideal_style))
        .map_err(err)?
        .label(if max_workers > cpus {
            format!("ideal (linear up to {cpus} CPUs)")
        } else {
            "ideal (linear)".to_string()
        })
        .legend(move |(x, y)| {
            DashedPathElement::new(vec![(x, y), (x + 24, y)], 5, 3, GREY.stroke_width(2))
        });

    chart
        .configure_series_labels()
        // Speed-ups stay above ~1x, so the bottom right is where no line goes.
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 17))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .margin(12)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// At most ~12 integer ticks on the workers axis, always including 1 and the last.
fn worker_ticks(max_workers: u32) -> Vec<f64> {
    let step = max_workers.div_ceil(12).max(1);
    let mut ticks: Vec<u32> = (1..=max_workers).step_by(step as usize).collect();
    if ticks.last() != Some(&max_workers) {
        if step > 1 && max_workers - ticks.last().copied().unwrap_or(0) < step / 2 + 1 {
            ticks.pop();
        }
        ticks.push(max_workers);
    }
    ticks.into_iter().map(f64::from).collect()
}

/// The file name of a workload's chart: "start+join" is `start-join.svg`.
pub fn file_name(workload: &str) -> String {
    let mut name = String::new();
    for c in workload.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') && !name.is_empty() {
            name.push('-');
        }
    }
    let name = name.trim_end_matches('-');
    format!("{name}.svg")
}

/// One chart of a bench workload: a row per case (names down the left, so long names
/// stay readable), a dot at the median time and a whisker from p10 to p90, on a log
/// time axis (cases of one workload often differ by orders of magnitude).
pub fn workload(path: &Path, w: &WorkloadReport, iters: u64) -> Result<(), Box<dyn Error>> {
    let rows = &w.rows;
    if rows.is_empty() {
        return Err(format!("workload {}: no rows to draw", w.name).into());
    }
    let k = rows.len();
    let lo = rows
        .iter()
        .map(|r| r.p10_us.min(r.median_us))
        .fold(f64::INFINITY, f64::min)
        .max(1e-3);
    let hi = rows
        .iter()
        .map(|r| r.p90_us.max(r.median_us))
        .fold(0.0f64, f64::max)
        .max(lo * 1.5);
    // Log10 of microseconds, padded a little on both sides.
    let (l0, l1) = (lo.log10(), hi.log10());
    let pad = ((l1 - l0) * 0.08).max(0.05);
    let (x0, x1) = (l0 - pad, l1 + pad);

    let name_width = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(8);
    let label_area = (name_width as u32 * 9 + 24).clamp(120, 460);
    let height = 190 + 46 * k as u32;
    let width = label_area + 720;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(w.name, ("sans-serif", 24).into_font().color(&BLACK))
        .map_err(err)?;
    let colour_of = |kind: Kind| match kind {
        Kind::Floor => GREY,
        Kind::Multiproc => COLOURS[0],
        Kind::Python => COLOURS[1],
    };
    // Under the title: what a repetition does, then the legend (a key per kind of row
    // present), outside the plot so that it hides no row.
    let (head, root) = root.split_vertically(52);
    let centred = Pos::new(HPos::Center, VPos::Top);
    head.draw(&Text::new(
        w.description.to_string(),
        (width as i32 / 2, 2),
        ("sans-serif", 15).into_font().color(&GREY).pos(centred),
    ))
    .map_err(err)?;
    let kinds: Vec<(Kind, &str)> = [
        (Kind::Floor, "floor (least machinery)"),
        (Kind::Multiproc, "multiproc"),
        (Kind::Python, "CPython multiprocessing"),
    ]
    .into_iter()
    .filter(|(kind, _)| rows.iter().any(|r| r.kind == *kind))
    .collect();
    let key_width = |name: &str| 30 + 8 * name.len() as i32;
    let total: i32 = kinds.iter().map(|(_, n)| key_width(n)).sum();
    let mut x = (width as i32 - total) / 2;
    for (kind, name) in kinds {
        head.draw(&Circle::new((x + 6, 34), 6, colour_of(kind).filled()))
            .map_err(err)?;
        head.draw(&Text::new(
            name,
            (x + 18, 34),
            ("sans-serif", 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
        x += key_width(name);
    }

    let y_keys: Vec<f64> = (0..k).map(|i| i as f64).collect();
    let y_range = Keyed::new(-0.6..k as f64 - 0.4, y_keys);
    let x_range = Keyed::new(x0..x1, log_ticks(x0, x1));
    let mut chart = ChartBuilder::on(&root)
        .margin(14)
        .margin_right(30)
        .x_label_area_size(56)
        .y_label_area_size(label_area)
        .build_cartesian_2d(x_range, y_range)
        .map_err(err)?;
    // Row 0 at the top: the table's order.
    let name_of = |y: &f64| -> String {
        let i = y.round() as i64;
        if i < 0 || i as usize >= k {
            return String::new();
        }
        rows[k - 1 - i as usize].name.clone()
    };
    chart
        .configure_mesh()
        .x_desc(format!(
            "time per repetition, log scale (dot: median; whisker: p10 to p90 of {iters})"
        ))
        .axis_desc_style(("sans-serif", 17))
        .label_style(("sans-serif", 16))
        .x_label_formatter(&|x| human_time(10f64.powf(*x)))
        .y_label_formatter(&name_of)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(err)?;

    for (i, r) in rows.iter().enumerate() {
        let y = (k - 1 - i) as f64;
        let c = colour_of(r.kind);
        let (a, b) = (r.p10_us.max(lo).log10(), r.p90_us.max(lo).log10());
        let cap = 0.16;
        chart
            .draw_series([
                PathElement::new(vec![(a, y), (b, y)], c.stroke_width(2)),
                PathElement::new(vec![(a, y - cap), (a, y + cap)], c.stroke_width(2)),
                PathElement::new(vec![(b, y - cap), (b, y + cap)], c.stroke_width(2)),
            ])
            .map_err(err)?;
        chart
            .draw_series([Circle::new((r.median_us.log10(), y), 6, c.filled())])
            .map_err(err)?;
        chart
            .draw_series([Text::new(
                human_time(r.median_us),
                (r.median_us.log10(), y + 0.2),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )])
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Tick positions (log10 µs) between `x0` and `x1`: powers of ten, then 2 and 5 times
/// them, then every multiple, until there are at least three.
fn log_ticks(x0: f64, x1: f64) -> Vec<f64> {
    let (e0, e1) = (x0.floor() as i32, x1.ceil() as i32);
    for mantissas in [
        &[1.0][..],
        &[1.0, 2.0, 5.0],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ] {
        let ticks: Vec<f64> = (e0..=e1)
            .flat_map(|e| mantissas.iter().map(move |m| (m * 10f64.powi(e)).log10()))
            .filter(|t| (x0..=x1).contains(t))
            .collect();
        if ticks.len() >= 3 {
            return ticks;
        }
    }
    // A very narrow range: evenly spaced.
    (0..=4)
        .map(|i| x0 + (x1 - x0) * f64::from(i) / 4.0)
        .collect()
}

/// "850 ns", "12.5 µs", "3 ms", "1.2 s" for a time in microseconds.
pub fn human_time(us: f64) -> String {
    let (v, unit) = if us < 1.0 {
        (us * 1e3, "ns")
    } else if us < 1e3 {
        (us, "µs")
    } else if us < 1e6 {
        (us / 1e3, "ms")
    } else {
        (us / 1e6, "s")
    };
    let digits = if v >= 100.0 || (v - v.round()).abs() < 1e-6 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_plain() {
        assert_eq!(file_name("start+join"), "start-join.svg");
        assert_eq!(file_name("tiny tasks"), "tiny-tasks.svg");
        assert_eq!(file_name("256 MiB hand-off"), "256-mib-hand-off.svg");
    }

    #[test]
    fn times_read_as_people_write_them() {
        assert_eq!(human_time(0.85), "850 ns");
        assert_eq!(human_time(12.5), "12.5 µs");
        assert_eq!(human_time(3000.0), "3 ms");
        assert_eq!(human_time(1_234_000.0), "1.23 s");
        assert_eq!(human_time(200.0), "200 µs");
    }

    #[test]
    fn ticks() {
        assert_eq!(worker_ticks(1), [1.0]);
        assert_eq!(worker_ticks(2), [1.0, 2.0]);
        let many = worker_ticks(64);
        assert!(many.len() <= 13 && many[0] == 1.0 && *many.last().unwrap() == 64.0);
        // 1 µs .. 10 ms: the powers of ten.
        assert_eq!(log_ticks(-0.1, 4.1).len(), 5);
        // A narrow range still gets at least three ticks.
        assert!(log_ticks(3.0, 3.2).len() >= 3);
    }
}
