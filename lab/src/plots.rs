//! SVG figures: the grown architecture with per-channel scores (paper,
//! Figure 2), accuracy against parameter count, estimated against true loss
//! change (paper, Figure 3) and grouped bars (paper, Figure 4).
//!
//! Every function writes one SVG file and never panics on odd input: NaN and
//! infinite values are skipped, and empty input gives a valid figure with a
//! "no data" note. Text is emitted as SVG `<text>` elements, so no system
//! fonts are needed to write the files.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const FONT: &str = "sans-serif";
const TITLE_SIZE: u32 = 26;
const DESC_SIZE: u32 = 19;
const LABEL_SIZE: u32 = 16;

/// Cell colour of a channel whose score is missing or near zero.
const NEUTRAL: RGBColor = RGBColor(225, 225, 225);
/// Light and dark ends of the split (positive score) ramp.
const RED_LO: (u8, u8, u8) = (252, 187, 161);
const RED_HI: (u8, u8, u8) = (153, 0, 13);
/// Light and dark ends of the prune (negative score) ramp.
const BLUE_LO: (u8, u8, u8) = (198, 219, 239);
const BLUE_HI: (u8, u8, u8) = (8, 48, 107);
/// Scores below this fraction of the largest |score| are drawn neutral.
const NEAR_ZERO: f32 = 0.01;

/// Series colours: distinct, readable on white.
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn series_color(i: usize) -> RGBColor {
    SERIES_COLORS[i % SERIES_COLORS.len()]
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

fn lerp(lo: (u8, u8, u8), hi: (u8, u8, u8), t: f32) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * t).round() as u8;
    RGBColor(mix(lo.0, hi.0), mix(lo.1, hi.1), mix(lo.2, hi.2))
}

/// Colour of a channel cell: red for positive scores (worth splitting), blue
/// for negative ones (worth pruning), darker the larger |score| is relative
/// to `max_abs`; grey for missing, non-finite or near-zero scores.
fn score_color(score: Option<f32>, max_abs: f32) -> RGBColor {
    let Some(s) = score.filter(|s| s.is_finite()) else {
        return NEUTRAL;
    };
    if !(max_abs.is_finite() && max_abs > 0.0) {
        return NEUTRAL;
    }
    let t = (s.abs() / max_abs).min(1.0);
    if t < NEAR_ZERO {
        NEUTRAL
    } else if s > 0.0 {
        lerp(RED_LO, RED_HI, t)
    } else {
        lerp(BLUE_LO, BLUE_HI, t)
    }
}

/// Tick label for a value on an axis spanning `span`: as many decimals as the
/// tick spacing needs, scientific notation for very small or large spans.
fn fmt_num(v: f64, span: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    let step = if span.is_finite() && span > 0.0 {
        span / 20.0
    } else {
        v.abs().max(1.0)
    };
    if v.abs() < step * 1e-6 {
        return "0".to_string();
    }
    if step < 1e-4 || v.abs() >= 1e7 {
        return format!("{v:.1e}").replace(".0e", "e");
    }
    let decimals = (-step.log10()).ceil().clamp(0.0, 6.0) as usize;
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        "0".to_string()
    } else {
        s
    }
}

/// Counts written short: 950, 35k, 37.5k, 1.2M, 3G.
fn fmt_count(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let mut s = format!("{scaled:.2}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if s == "-0" {
        s = "0".to_string();
    }
    format!("{s}{suffix}")
}

/// The range covering `values` with `pad` of its span added on both sides;
/// a unit-ish range around the value when all are equal, `fallback` when
/// there are none.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64, fallback: Range<f64>) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return fallback;
    }
    let span = hi - lo;
    let p = if span > 0.0 {
        span * pad
    } else if lo != 0.0 {
        lo.abs() * 0.1
    } else {
        1.0
    };
    (lo - p)..(hi + p)
}

/// A centred note in the plotting area.
fn note<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        text.to_string(),
        (w as i32 / 2, h as i32 / 2),
        font(DESC_SIZE)
            .color(&RGBColor(110, 110, 110))
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn with_path<T>(path: &Path, what: &str, r: Result<T>) -> Result<T> {
    r.with_context(|| format!("writing {what} figure {}", path.display()))
}

fn drawing(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The grown architecture as in the paper's Figure 2: one column per
/// growable layer (x = layer 1..L), one stacked cell per channel so the
/// column's height is the layer's width, each cell coloured by the channel's
/// score. Positive scores (estimated gain of splitting the channel) are red,
/// negative ones (gain of pruning it) blue, darker the larger |score|
/// relative to the largest in the figure; missing, non-finite and near-zero
/// scores are light grey. `channel_scores[l]` should have `widths[l]`
/// entries; missing entries are drawn as `None`.
pub fn architecture_figure(
    path: &Path,
    title: &str,
    widths: &[usize],
    channel_scores: &[Vec<Option<f32>>],
) -> Result<()> {
    let r = draw_architecture(path, title, widths, channel_scores);
    with_path(path, "architecture", r)
}

fn draw_architecture(
    path: &Path,
    title: &str,
    widths: &[usize],
    channel_scores: &[Vec<Option<f32>>],
) -> Result<()> {
    let layers = widths.len();
    let max_width = widths.iter().copied().max().unwrap_or(0);
    let max_abs = channel_scores
        .iter()
        .flatten()
        .flatten()
        .filter(|s| s.is_finite())
        .fold(0.0f32, |m, s| m.max(s.abs()));

    // Roughly a pixel per channel for wide layers, within sane bounds.
    let plot_h = (max_width.min(1100) as u32).max(420);
    let img_w = (140 + 46 * layers.min(40) as u32).clamp(720, 1600);
    let img_h = plot_h + 180;
    let root = SVGBackend::new(path, (img_w, img_h)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let body = root
        .titled(title, font(TITLE_SIZE))
        .map_err(drawing)?
        .margin(0, 10, 10, 20);
    let (_, body_h) = body.dim_in_pixel();
    let (chart_area, legend_area) = body.split_vertically(body_h.saturating_sub(56));

    let x_range = 0.5..(layers.max(1) as f64 + 0.5);
    let y_top = (max_width.max(1) as f64) * 1.06;
    let mut chart = ChartBuilder::on(&chart_area)
        .margin_top(8)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, 0.0..y_top)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(238, 238, 238))
        .x_labels(layers.clamp(1, 40))
        .x_label_formatter(&|x: &f64| {
            let r = x.round();
            if (x - r).abs() < 1e-6 && r >= 1.0 {
                format!("{r:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y: &f64| {
            let r = y.round();
            if (y - r).abs() < 1e-6 {
                format!("{r:.0}")
            } else {
                String::new()
            }
        })
        .x_desc("layer")
        .y_desc("channels")
        .axis_desc_style(font(DESC_SIZE))
        .label_style(font(LABEL_SIZE))
        .draw()
        .map_err(drawing)?;

    if layers == 0 || max_width == 0 {
        note(&chart.plotting_area().strip_coord_spec(), "no data")?;
    } else {
        // Small gaps between cells where there is room for them.
        let px_per_channel = f64::from(plot_h) / y_top;
        let gap = if px_per_channel >= 6.0 { 0.08 } else { 0.0 };
        let half = 0.36;
        let empty: Vec<Option<f32>> = Vec::new();
        let mut cells = Vec::new();
        for (l, &w) in widths.iter().enumerate() {
            let scores = channel_scores.get(l).unwrap_or(&empty);
            let x = l as f64 + 1.0;
            for c in 0..w {
                let color = score_color(scores.get(c).copied().flatten(), max_abs);
                cells.push(Rectangle::new(
                    [(x - half, c as f64 + gap), (x + half, c as f64 + 1.0 - gap)],
                    color.filled(),
                ));
            }
        }
        chart.draw_series(cells).map_err(drawing)?;
        let outline = RGBColor(90, 90, 90);
        chart
            .draw_series(
                widths
                    .iter()
                    .enumerate()
                    .filter(|(_, &w)| w > 0)
                    .map(|(l, &w)| {
                        let x = l as f64 + 1.0;
                        Rectangle::new([(x - half, 0.0), (x + half, w as f64)], outline)
                    }),
            )
            .map_err(drawing)?;
        if layers <= 40 {
            chart
                .draw_series(widths.iter().enumerate().map(|(l, &w)| {
                    Text::new(
                        w.to_string(),
                        (l as f64 + 1.0, w as f64 + y_top * 0.005),
                        font(LABEL_SIZE - 2).pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                }))
                .map_err(drawing)?;
        }
    }
    draw_score_legend(&legend_area, max_abs)?;
    root.present().map_err(drawing)?;
    Ok(())
}

/// The colour key under the architecture figure: a blue-grey-red ramp from
/// -max to +max |score| and what the colours mean.
fn draw_score_legend(area: &Area<'_>, max_abs: f32) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let (bar_w, bar_h) = (240, 14);
    let (x0, y0) = (w as i32 / 2 - bar_w / 2, 12);
    let steps = 48;
    for i in 0..steps {
        let s = -1.0 + 2.0 * (i as f32 + 0.5) / steps as f32;
        let xa = x0 + bar_w * i / steps;
        let xb = x0 + bar_w * (i + 1) / steps;
        area.draw(&Rectangle::new(
            [(xa, y0), (xb, y0 + bar_h)],
            score_color(Some(s), 1.0).filled(),
        ))
        .map_err(drawing)?;
    }
    area.draw(&Rectangle::new(
        [(x0, y0), (x0 + bar_w, y0 + bar_h)],
        RGBColor(90, 90, 90),
    ))
    .map_err(drawing)?;
    let small = font(LABEL_SIZE);
    let mid = y0 + bar_h / 2;
    let has_scores = max_abs.is_finite() && max_abs > 0.0;
    if has_scores {
        let m = f64::from(max_abs);
        let label = fmt_num(m, m);
        area.draw(&Text::new(
            format!("-{label}"),
            (x0 - 6, mid),
            small.clone().pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(drawing)?;
        area.draw(&Text::new(
            format!("+{label}"),
            (x0 + bar_w + 6, mid),
            small.clone().pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(drawing)?;
    }
    let key = if has_scores {
        "red: split gain, blue: prune gain (darker = larger, grey = near zero)"
    } else {
        "no channel scores (red: split gain, blue: prune gain)"
    };
    area.draw(&Text::new(
        key,
        (w as i32 / 2, y0 + bar_h + 8),
        small.pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(drawing)?;
    Ok(())
}

/// Test accuracy (percent, y) against parameter count (x), one line with
/// markers per named series, points joined in the order given (a growth run's
/// phases in time order; a network can shrink when prunes win). The x axis is
/// linear with tick labels like 35k and 1.2M.
/// Points `(params, accuracy, err)` with error bars of half-height `err`.
pub type Bars = Vec<(f64, f64, f64)>;

/// One named curve with error bars.
pub type BarSeries = (String, Bars);

pub fn accuracy_vs_params(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let with_bars: Vec<BarSeries> = series
        .iter()
        .map(|(n, p)| (n.clone(), p.iter().map(|&(x, y)| (x, y, 0.0)).collect()))
        .collect();
    accuracy_vs_params_with_errors(path, title, &with_bars)
}

/// Accuracy against parameters with a vertical error bar of half-height
/// `err` on every `(params, accuracy, err)` point (0: no bar).
pub fn accuracy_vs_params_with_errors(
    path: &Path,
    title: &str,
    series: &[BarSeries],
) -> Result<()> {
    let r = draw_accuracy(path, title, series);
    with_path(path, "accuracy", r)
}

fn finite_points(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

fn finite_bars(points: &[(f64, f64, f64)]) -> Vec<(f64, f64, f64)> {
    points
        .iter()
        .copied()
        .filter(|(x, y, e)| x.is_finite() && y.is_finite() && e.is_finite())
        .collect()
}

fn draw_accuracy(path: &Path, title: &str, series: &[BarSeries]) -> Result<()> {
    let clean: Vec<(&str, Bars)> = series
        .iter()
        .map(|(name, pts)| (name.as_str(), finite_bars(pts)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let all = || clean.iter().flat_map(|(_, p)| p.iter());
    let mut x_range = padded_range(all().map(|p| p.0), 0.05, 0.0..1.0);
    // Parameter counts are never negative: no ticks below zero.
    if all().all(|p| p.0 >= 0.0) && x_range.start < 0.0 {
        x_range.start = 0.0;
    }
    let y_range = padded_range(all().flat_map(|p| [p.1 - p.2, p.1 + p.2]), 0.08, 0.0..100.0);
    let y_span = y_range.end - y_range.start;

    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, font(TITLE_SIZE))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(225, 225, 225))
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|x: &f64| fmt_count(*x))
        .y_label_formatter(&|y: &f64| fmt_num(*y, y_span))
        .x_desc("parameters")
        .y_desc("test accuracy (%)")
        .axis_desc_style(font(DESC_SIZE))
        .label_style(font(LABEL_SIZE))
        .draw()
        .map_err(drawing)?;

    if clean.is_empty() {
        note(&chart.plotting_area().strip_coord_spec(), "no data")?;
        root.present().map_err(drawing)?;
        return Ok(());
    }
    for (i, (name, pts)) in clean.iter().enumerate() {
        let color = series_color(i);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y, _)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(drawing)?;
        chart
            .draw_series(pts.iter().filter(|p| p.2 > 0.0).map(|&(x, y, e)| {
                PathElement::new(vec![(x, y - e), (x, y + e)], color.stroke_width(1))
            }))
            .map_err(drawing)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(150, 150, 150))
        .label_font(font(LABEL_SIZE))
        .draw()
        .map_err(drawing)?;
    root.present().map_err(drawing)?;
    Ok(())
}

/// Estimated against true change in loss as in the paper's Figure 3: one
/// hollow circle per `(true, estimated)` point and the grey dashed diagonal
/// y = x. Both axes share one range, padded equally on all sides, so points
/// on the diagonal are exact estimates.
pub fn scatter_estimated_vs_true(path: &Path, title: &str, points: &[(f64, f64)]) -> Result<()> {
    let r = draw_scatter(path, title, points);
    with_path(path, "scatter", r)
}

fn draw_scatter(path: &Path, title: &str, points: &[(f64, f64)]) -> Result<()> {
    let pts = finite_points(points);
    let range = padded_range(pts.iter().flat_map(|&(x, y)| [x, y]), 0.06, -1.0..1.0);
    let span = range.end - range.start;

    let root = SVGBackend::new(path, (680, 680)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, font(TITLE_SIZE))
        .margin(16)
        .margin_right(28)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(range.clone(), range.clone())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(225, 225, 225))
        .x_labels(7)
        .y_labels(7)
        .x_label_formatter(&|x: &f64| fmt_num(*x, span))
        .y_label_formatter(&|y: &f64| fmt_num(*y, span))
        .x_desc("true ΔL")
        .y_desc("estimated ΔL")
        .axis_desc_style(font(DESC_SIZE))
        .label_style(font(LABEL_SIZE))
        .draw()
        .map_err(drawing)?;

    chart
        .draw_series(DashedLineSeries::new(
            [(range.start, range.start), (range.end, range.end)],
            6,
            4,
            RGBColor(150, 150, 150).stroke_width(1),
        ))
        .map_err(drawing)?;
    if pts.is_empty() {
        note(&chart.plotting_area().strip_coord_spec(), "no data")?;
    } else {
        let color = series_color(0);
        chart
            .draw_series(
                pts.iter()
                    .map(|&p| Circle::new(p, 4, color.stroke_width(1))),
            )
            .map_err(drawing)?;
    }
    root.present().map_err(drawing)?;
    Ok(())
}

/// Grouped bar chart: one cluster per group (x), one bar per series inside
/// each cluster in the series' colour, with a legend of series names. Bars
/// start at zero, so negative values point down. Values beyond the group
/// count are ignored; NaN and infinite values leave a gap.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    let r = draw_bars(path, title, groups, series);
    with_path(path, "bar", r)
}

fn draw_bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    let n_groups = groups.len();
    let n_series = series.len();
    let values = || {
        series
            .iter()
            .flat_map(|(_, v)| v.iter().take(n_groups).copied())
            .filter(|v| v.is_finite())
    };
    let has_data = values().next().is_some();
    let range = padded_range(values().chain([0.0]), 0.06, 0.0..1.0);
    // Bars start at zero: no padding below zero for all-positive data.
    let (lo, hi) = (
        values().fold(0.0f64, f64::min),
        values().fold(0.0f64, f64::max),
    );
    let y_range = (if lo >= 0.0 { 0.0 } else { range.start })..(if hi <= 0.0 && lo < 0.0 {
        0.0
    } else {
        range.end
    });
    let y_span = y_range.end - y_range.start;

    let bars = n_groups.saturating_mul(n_series.max(1));
    let img_w = (200 + 14 * bars.min(100)).clamp(800, 1400) as u32;
    let root = SVGBackend::new(path, (img_w, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let x_range = -0.5..(n_groups.max(1) as f64 - 0.5);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, font(TITLE_SIZE))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range, y_range.clone())
        .map_err(drawing)?;

    // As many group labels as fit side by side without overlapping.
    let plot_w = chart.plotting_area().dim_in_pixel().0 as usize;
    let longest = groups.iter().map(|g| g.chars().count()).max().unwrap_or(1);
    let label_px = longest * LABEL_SIZE as usize * 7 / 10 + 14;
    let n_labels = (plot_w / label_px.max(1)).clamp(1, n_groups.max(1));
    let group_label = |x: &f64| {
        let r = x.round();
        if (x - r).abs() > 1e-6 || r < 0.0 {
            return String::new();
        }
        groups.get(r as usize).cloned().unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(230, 230, 230))
        .x_labels(n_labels)
        .y_labels(8)
        .x_label_formatter(&group_label)
        .y_label_formatter(&|y: &f64| fmt_num(*y, y_span))
        .axis_desc_style(font(DESC_SIZE))
        .label_style(font(LABEL_SIZE))
        .draw()
        .map_err(drawing)?;

    if !has_data || n_series == 0 {
        note(&chart.plotting_area().strip_coord_spec(), "no data")?;
        root.present().map_err(drawing)?;
        return Ok(());
    }
    let cluster = 0.8;
    let bar_w = cluster / n_series as f64;
    let inset = if bar_w * plot_w as f64 / n_groups as f64 > 6.0 {
        bar_w * 0.08
    } else {
        0.0
    };
    for (s, (name, vals)) in series.iter().enumerate() {
        let color = series_color(s);
        let bars = vals
            .iter()
            .take(n_groups)
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(g, &v)| {
                let x0 = g as f64 - cluster / 2.0 + s as f64 * bar_w;
                Rectangle::new(
                    [(x0 + inset, v.max(0.0)), (x0 + bar_w - inset, v.min(0.0))],
                    color.filled(),
                )
            });
        chart
            .draw_series(bars)
            .map_err(drawing)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    if y_range.start < 0.0 && y_range.end > 0.0 {
        let x_end = n_groups as f64 - 0.5;
        chart
            .draw_series(LineSeries::new([(-0.5, 0.0), (x_end, 0.0)], BLACK))
            .map_err(drawing)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(150, 150, 150))
        .label_font(font(LABEL_SIZE))
        .draw()
        .map_err(drawing)?;
    root.present().map_err(drawing)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn temp_svg(name: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sprout-plots-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{name}.svg"))
    }

    fn read(path: &Path) -> String {
        let s = std::fs::read_to_string(path).unwrap();
        if let Some(dir) = path.parent() {
            std::fs::remove_dir_all(dir).unwrap();
        }
        assert!(
            s.starts_with("<svg"),
            "not an SVG: {}",
            &s[..s.len().min(80)]
        );
        assert!(s.trim_end().ends_with("</svg>"));
        s
    }

    /// How SVG text content appears in the file: on a line of its own.
    fn text(t: &str) -> String {
        format!("\n{t}\n")
    }

    fn count(s: &str, pat: &str) -> usize {
        s.matches(pat).count()
    }

    #[test]
    fn architecture_has_a_cell_per_channel() {
        let widths = [16usize, 40, 7, 64];
        let scores: Vec<Vec<Option<f32>>> = widths
            .iter()
            .enumerate()
            .map(|(l, &w)| {
                (0..w)
                    .map(|c| match (l + c) % 5 {
                        0 => None,
                        1 => Some(f32::NAN),
                        _ => Some((c as f32 - w as f32 / 2.0) * 0.01),
                    })
                    .collect()
            })
            .collect();
        let p = temp_svg("arch");
        architecture_figure(&p, "grown VGG-19", &widths, &scores).unwrap();
        let s = read(&p);
        let total: usize = widths.iter().sum();
        assert!(count(&s, "<rect") >= total, "{} rects", count(&s, "<rect"));
        assert!(s.contains("grown VGG-19"));
        assert!(s.contains(&text("layer")) && s.contains(&text("channels")));
        assert!(s.contains("split gain") && s.contains("prune gain"));
        // Both ramps are used.
        let finite = || {
            scores
                .iter()
                .flatten()
                .flatten()
                .copied()
                .filter(|s| s.is_finite())
        };
        let max_abs = finite().fold(0.0f32, |m, s| m.max(s.abs()));
        let red = score_color(finite().reduce(f32::max), max_abs);
        let blue = score_color(finite().reduce(f32::min), max_abs);
        let hex = |c: RGBColor| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        assert!(s.contains(&hex(red)), "no darkest red");
        assert!(s.contains(&hex(blue)), "no darkest blue");
    }

    #[test]
    fn architecture_of_a_grown_vgg() {
        // Bottleneck-shaped widths as in the paper's Figure 2.
        let widths = [
            48usize, 96, 160, 224, 288, 320, 352, 384, 352, 288, 224, 160, 128, 96, 80, 64,
        ];
        let scores: Vec<Vec<Option<f32>>> = widths
            .iter()
            .enumerate()
            .map(|(l, &w)| {
                (0..w)
                    .map(|c| {
                        let v = ((c * 7 + l * 13) % 41) as f32 / 40.0 - 0.45;
                        Some(v * 2e-3 * (1.0 + l as f32 / 8.0))
                    })
                    .collect()
            })
            .collect();
        let p = temp_svg("arch-vgg");
        architecture_figure(&p, "VGG-19 grown on CIFAR-100, phase 15", &widths, &scores).unwrap();
        let s = read(&p);
        assert!(count(&s, "<rect") >= widths.iter().sum::<usize>());
        for l in 1..=widths.len() {
            assert!(s.contains(&text(&l.to_string())), "layer {l} tick");
        }
    }

    #[test]
    fn architecture_odd_inputs_do_not_panic() {
        let p = temp_svg("arch-empty");
        architecture_figure(&p, "empty", &[], &[]).unwrap();
        assert!(read(&p).contains("no data"));

        let p = temp_svg("arch-zero");
        architecture_figure(&p, "zero width", &[0, 0], &[vec![], vec![]]).unwrap();
        assert!(read(&p).contains("no data"));

        // Scores shorter than widths, all non-finite, one layer missing.
        let p = temp_svg("arch-nan");
        let scores = vec![vec![Some(f32::NAN), Some(f32::INFINITY)], vec![None]];
        architecture_figure(&p, "nan", &[3, 2, 5], &scores).unwrap();
        let s = read(&p);
        assert!(count(&s, "<rect") >= 10);

        let p = temp_svg("arch-wide");
        let w = 2048;
        let scores = vec![(0..w).map(|c| Some(c as f32 - 1000.0)).collect()];
        architecture_figure(&p, "wide", &[w], &scores).unwrap();
        assert!(count(&read(&p), "<rect") >= w);
    }

    #[test]
    fn score_colors() {
        assert_eq!(score_color(None, 1.0), NEUTRAL);
        assert_eq!(score_color(Some(f32::NAN), 1.0), NEUTRAL);
        assert_eq!(score_color(Some(0.001), 1.0), NEUTRAL);
        assert_eq!(score_color(Some(0.5), 0.0), NEUTRAL);
        let weak = score_color(Some(0.1), 1.0);
        let strong = score_color(Some(1.0), 1.0);
        assert!(weak.0 > weak.2 && strong.0 > strong.2, "reds");
        assert!(strong.0 < weak.0 && strong.1 < weak.1, "larger is darker");
        let b = score_color(Some(-0.7), 1.0);
        assert!(b.2 > b.0, "blue");
        // Beyond the maximum it saturates.
        assert_eq!(score_color(Some(5.0), 1.0), strong);
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_count(35_000.0), "35k");
        assert_eq!(fmt_count(37_500.0), "37.5k");
        assert_eq!(fmt_count(1_200_000.0), "1.2M");
        assert_eq!(fmt_count(1_000_000.0), "1M");
        assert_eq!(fmt_count(950.0), "950");
        assert_eq!(fmt_count(0.0), "0");
        assert_eq!(fmt_count(f64::NAN), "");
        assert_eq!(fmt_num(0.25, 1.0), "0.25");
        assert_eq!(fmt_num(0.2, 1.0), "0.2");
        assert_eq!(fmt_num(-0.5, 2.0), "-0.5");
        assert_eq!(fmt_num(2.0, 100.0), "2");
        assert_eq!(fmt_num(1e-17, 1.0), "0");
        assert_eq!(fmt_num(3e-6, 1e-5), "3e-6");
        assert_eq!(fmt_num(2.5e-6, 1e-5), "2.5e-6");
    }

    #[test]
    fn accuracy_plot_has_series_and_legend() {
        let series = vec![
            (
                "ours (VGG-19)".to_string(),
                vec![(1.2e6, 94.4), (35e3, 80.0), (4e5, 91.0), (f64::NAN, 50.0)],
            ),
            (
                "uniform".to_string(),
                vec![(2e5, 85.0), (8e5, 90.5), (3.2e6, 93.0)],
            ),
            ("empty".to_string(), vec![]),
        ];
        let p = temp_svg("acc");
        accuracy_vs_params(&p, "CIFAR-10", &series).unwrap();
        let s = read(&p);
        assert!(s.contains("CIFAR-10"));
        assert!(s.contains("ours (VGG-19)") && s.contains(&text("uniform")));
        assert!(s.contains(&text("parameters")));
        assert!(count(&s, "<circle") >= 6);
        assert!(count(&s, "<polyline") >= 2);
        assert!(s.contains("M\n") || s.contains("k\n"), "short tick labels");
        assert!(!s.contains("NaN"));
    }

    #[test]
    fn accuracy_plot_odd_inputs() {
        let p = temp_svg("acc-empty");
        accuracy_vs_params(&p, "none", &[]).unwrap();
        assert!(read(&p).contains("no data"));
        let p = temp_svg("acc-nan");
        let s = vec![("a".to_string(), vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)])];
        accuracy_vs_params(&p, "nan", &s).unwrap();
        assert!(read(&p).contains("no data"));
        let p = temp_svg("acc-one");
        let s = vec![("a".to_string(), vec![(5e4, 90.0)])];
        accuracy_vs_params(&p, "one", &s).unwrap();
        assert_eq!(count(&read(&p), "<circle"), 1);
    }

    #[test]
    fn scatter_has_points_and_diagonal() {
        let pts: Vec<(f64, f64)> = (0..50)
            .map(|i| {
                let t = -0.02 * i as f64;
                (t, t * 1.1 + 0.001 * (i % 3) as f64)
            })
            .chain([(f64::NAN, 0.0), (0.0, f64::NEG_INFINITY)])
            .collect();
        let p = temp_svg("scatter");
        scatter_estimated_vs_true(&p, "layer 1", &pts).unwrap();
        let s = read(&p);
        assert_eq!(count(&s, "<circle"), 50);
        assert!(s.contains("true ΔL") && s.contains("estimated ΔL"));
        assert!(s.contains("layer 1"));
        assert!(count(&s, "<polyline") >= 1, "diagonal");
    }

    #[test]
    fn scatter_odd_inputs() {
        for (name, pts) in [
            ("sc-empty", vec![]),
            ("sc-nan", vec![(f64::NAN, f64::NAN)]),
            ("sc-equal", vec![(0.5, 0.5); 4]),
            ("sc-zero", vec![(0.0, 0.0)]),
            ("sc-tiny", vec![(1e-9, 2e-9), (3e-9, 1e-9)]),
        ] {
            let p = temp_svg(name);
            scatter_estimated_vs_true(&p, name, &pts).unwrap();
            let s = read(&p);
            assert!(s.contains("true ΔL"));
            if pts.iter().all(|(x, y)| !(x.is_finite() && y.is_finite())) {
                assert!(s.contains("no data"));
            }
        }
    }

    #[test]
    fn grouped_bars_draw_every_bar() {
        let groups: Vec<String> = (0..64).map(|c| format!("{c}")).collect();
        let series: Vec<(String, Vec<f64>)> = ["ours", "steepest descent", "expansion"]
            .iter()
            .enumerate()
            .map(|(s, n)| {
                let v = (0..64)
                    .map(|c| (64 - c) as f64 * 0.001 * (s + 1) as f64 - 0.005)
                    .collect();
                (n.to_string(), v)
            })
            .collect();
        let p = temp_svg("bars");
        grouped_bars(&p, "true loss decrease", &groups, &series).unwrap();
        let s = read(&p);
        assert!(count(&s, "<rect") >= 3 * 64);
        assert!(s.contains("steepest descent") && s.contains(&text("expansion")));
        assert!(s.contains("true loss decrease"));
    }

    #[test]
    fn grouped_bars_odd_inputs() {
        let p = temp_svg("bars-empty");
        grouped_bars(&p, "none", &[], &[]).unwrap();
        assert!(read(&p).contains("no data"));
        let groups = vec!["a".to_string(), "b".to_string()];
        let p = temp_svg("bars-nan");
        let s = vec![("x".to_string(), vec![f64::NAN, f64::INFINITY])];
        grouped_bars(&p, "nan", &groups, &s).unwrap();
        assert!(read(&p).contains("no data"));
        // Ragged series: short, long, negative only.
        let p = temp_svg("bars-ragged");
        let s = vec![
            ("short".to_string(), vec![1.0]),
            ("long".to_string(), vec![2.0, 3.0, 4.0, 5.0]),
            ("neg".to_string(), vec![-1.0, -2.0]),
        ];
        grouped_bars(&p, "ragged", &groups, &s).unwrap();
        read(&p);
        let p = temp_svg("bars-noseries");
        grouped_bars(&p, "no series", &groups, &[]).unwrap();
        assert!(read(&p).contains("no data"));
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let dir = temp_svg("x").parent().unwrap().to_path_buf();
        let p = dir.join("missing-dir").join("f.svg");
        let e = scatter_estimated_vs_true(&p, "t", &[(1.0, 1.0)]).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(format!("{e:#}").contains("missing-dir"), "{e:#}");
    }
}
