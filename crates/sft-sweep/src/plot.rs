//! The paper's figures from a sweep's results, as PNG and SVG.
//!
//! * `<sweep>-curves`: a panel per metric; x is the proportion a grid varies (categorical,
//!   equally spaced, so 1/256 … 1 is a log2 axis), a line per grid × strategy × model with 95%
//!   error bars. RQ1's scaling curves, RQ2's mixed-vs-individual overlay (the individual and
//!   mixed grids share the panels) and RQ3's three set-ups all come out as this figure.
//! * `<sweep>-k-scan`: the same for grids that scan DMT's k.
//! * `<sweep>-heldout-by-strategy`: per-source held-out loss per strategy (bars), the cells
//!   trained on full data.
//! * `<sweep>-separation-by-strategy`: the representation analysis' scores of each strategy's
//!   final model (silhouette, 10-NN purity, probe accuracy of the sources; `[run.eval.hidden]`),
//!   each panel titled with the base model's value, which every strategy shares.
//!
//! Text is drawn with `ab_glyph` from a TrueType file found at run time ([`sft_plot::register_font`]), so
//! plotting needs neither fontconfig nor freetype.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{io, Error, Result};
use crate::results::{metric_info, ResultsTable};
use crate::spec::SweepSpec;

/// The files [`plot_all`] wrote.
#[derive(Debug, Clone, Default)]
pub struct PlotFiles {
    /// PNG files.
    pub png: Vec<PathBuf>,
    /// SVG files.
    pub svg: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
struct Series {
    label: String,
    /// (x index, value, ci low, ci high), already scaled for display.
    points: Vec<(f64, f64, f64, f64)>,
}

/// x index → (value, ci low, ci high) of every seed.
type ByX = BTreeMap<usize, Vec<(f64, f64, f64)>>;

#[derive(Debug, Clone)]
struct Panel {
    title: String,
    y_desc: String,
    series: Vec<Series>,
}

#[derive(Debug, Clone)]
struct Figure {
    name: String,
    title: String,
    x_desc: String,
    x_labels: Vec<String>,
    legend: Vec<String>,
    /// A row of panels (one per metric) per model.
    rows: Vec<Vec<Panel>>,
    /// Bars at categorical x positions (strategies) instead of lines over an ordered axis.
    bars: bool,
}

/// Draws every figure the results support into `dir`; a figure without data is skipped.
pub fn plot_all(spec: &SweepSpec, table: &ResultsTable, dir: &Path) -> Result<PlotFiles> {
    sft_plot::register_font()?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut files = PlotFiles::default();
    let figures = [
        figure(spec, table, false),
        figure(spec, table, true),
        heldout_bars(spec, table),
        separation_bars(spec, table),
    ];
    for fig in figures.into_iter().flatten() {
        let png = dir.join(format!("{}.png", fig.name));
        let svg = dir.join(format!("{}.svg", fig.name));
        let cols = fig.rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
        // Bars need room for every strategy's label under its bar.
        let panel_w = if fig.bars {
            (fig.x_labels.len() as u32 * 110).max(430)
        } else {
            430
        };
        let size = (
            (cols * panel_w).max(860),
            70 + fig.rows.len() as u32 * 400 + legend_height(&fig, cols * panel_w),
        );
        {
            let root = BitMapBackend::new(&png, size).into_drawing_area();
            draw(&root, &fig).map_err(|message| Error::Plot {
                path: png.clone(),
                message,
            })?;
            root.present().map_err(|e| Error::Plot {
                path: png.clone(),
                message: e.to_string(),
            })?;
        }
        {
            let root = SVGBackend::new(&svg, size).into_drawing_area();
            draw(&root, &fig).map_err(|message| Error::Plot {
                path: svg.clone(),
                message,
            })?;
            root.present().map_err(|e| Error::Plot {
                path: svg.clone(),
                message: e.to_string(),
            })?;
        }
        tracing::info!(png = %png.display(), "plot");
        files.png.push(png);
        files.svg.push(svg);
    }
    Ok(files)
}

fn figure(spec: &SweepSpec, table: &ResultsTable, k_scan: bool) -> Option<Figure> {
    let label_of = |grid: &str| {
        spec.grid
            .iter()
            .find(|g| g.name == grid)
            .and_then(|g| g.label.clone())
            .unwrap_or_else(|| grid.to_string())
    };
    // (grid, cell id) pairs on this figure with their x value.
    let mut points: Vec<(String, &crate::spec::Cell, sft_schedule::Ratio)> = Vec::new();
    for cell in table.cells.iter().map(|s| &s.cell) {
        for (grid, (axis, x)) in &cell.x {
            if (axis == "k") == k_scan {
                points.push((grid.clone(), cell, *x));
            }
        }
    }
    let mut xs: Vec<sft_schedule::Ratio> = points.iter().map(|p| p.2).collect();
    xs.sort_by(|a, b| a.as_f64().total_cmp(&b.as_f64()));
    xs.dedup();
    if xs.is_empty() {
        return None;
    }
    let grids: Vec<String> = {
        let mut g: Vec<String> = Vec::new();
        for p in &points {
            if !g.contains(&p.0) {
                g.push(p.0.clone());
            }
        }
        g
    };
    let models: Vec<&str> = {
        let mut m: Vec<&str> = Vec::new();
        for p in &points {
            if !m.contains(&p.1.model.as_str()) {
                m.push(&p.1.model);
            }
        }
        m
    };
    let one_strategy_per_grid = grids.iter().all(|g| {
        let mut s: Vec<&str> = points
            .iter()
            .filter(|p| &p.0 == g)
            .map(|p| p.1.strategy_label.as_str())
            .collect();
        s.sort();
        s.dedup();
        s.len() <= 1
    });
    let series_label = |grid: &str, cell: &crate::spec::Cell| {
        let mut parts = Vec::new();
        if grids.len() > 1 {
            parts.push(label_of(grid));
        }
        let strategy = if k_scan && cell.strategy.starts_with("dmt") {
            "DMT".to_string()
        } else {
            cell.strategy_label.clone()
        };
        if parts.is_empty() || !one_strategy_per_grid {
            parts.push(strategy);
        }
        parts.join(": ")
    };
    let metric_keys = crate::results::shown_metrics(table.rows.iter().map(|r| r.metric.as_str()));
    let mut legend: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for model in &models {
        let mut panels = Vec::new();
        for metric in &metric_keys {
            let (name, pct, higher) = metric_info(metric);
            let scale = if pct { 100.0 } else { 1.0 };
            // label -> x index -> rows (seeds)
            let mut acc: BTreeMap<String, ByX> = BTreeMap::new();
            let mut order: Vec<String> = Vec::new();
            for (grid, cell, x) in points.iter().filter(|p| p.1.model == *model) {
                let xi = xs.iter().position(|v| v == x).unwrap_or(0);
                for r in table
                    .rows
                    .iter()
                    .filter(|r| r.cell == cell.id && &r.metric == metric)
                {
                    let label = series_label(grid, cell);
                    if !order.contains(&label) {
                        order.push(label.clone());
                    }
                    acc.entry(label)
                        .or_default()
                        .entry(xi)
                        .or_default()
                        .push((r.value, r.ci_low, r.ci_high));
                }
            }
            if acc.is_empty() {
                continue;
            }
            let mut series = Vec::new();
            for label in order {
                if !legend.contains(&label) {
                    legend.push(label.clone());
                }
                let pts = acc[&label]
                    .iter()
                    .map(|(xi, v)| {
                        // One seed: its per-item interval; several: a t interval across seeds.
                        let (m, lo, hi) = crate::results::across_seeds(v);
                        (*xi as f64, m * scale, lo * scale, hi * scale)
                    })
                    .collect();
                series.push(Series { label, points: pts });
            }
            let title = if models.len() > 1 {
                format!("{name} · {model}")
            } else {
                name.clone()
            };
            panels.push(Panel {
                title,
                y_desc: format!(
                    "{name}{}{}",
                    if pct { " (%)" } else { "" },
                    if higher { "" } else { ", lower is better" }
                ),
                series,
            });
        }
        if !panels.is_empty() {
            rows.push(panels);
        }
    }
    if rows.is_empty() {
        return None;
    }
    let (suffix, what, x_desc) = if k_scan {
        (
            "k-scan",
            "DMT k scan",
            "k (code and math added to stage 2)".to_string(),
        )
    } else {
        (
            "curves",
            "scaling with data amount",
            "proportion of the varied data".to_string(),
        )
    };
    Some(Figure {
        name: format!("{}-{suffix}", spec.name),
        title: format!("{}: {what}", spec.name),
        x_desc,
        x_labels: xs.iter().map(|r| r.to_string()).collect(),
        legend,
        rows,
        bars: false,
    })
}

/// Per-source held-out loss per strategy, as bars with their 95% intervals (across seeds when
/// a strategy has several): the cells trained on full data (every proportion 1), a row of panels
/// (one per source) per model. `None` without held-out losses.
fn heldout_bars(spec: &SweepSpec, table: &ResultsTable) -> Option<Figure> {
    let metrics: Vec<String> = crate::results::shown_metrics(
        table
            .rows
            .iter()
            .map(|r| r.metric.as_str())
            .filter(|m| m.starts_with("heldout_loss.")),
    );
    bars_by_strategy(
        table,
        &metrics,
        |_, _| None,
        format!("{}-heldout-by-strategy", spec.name),
        format!(
            "{}: held-out loss per source and strategy (95% intervals; across seeds when several)",
            spec.name
        ),
    )
}

/// The representation analysis per strategy: the final model's overall silhouette, 10-NN purity
/// and probe accuracy of the sources, as bars like [`heldout_bars`], each panel titled with the
/// base model's value (the same queries and model for every strategy). `None` without
/// `hidden.*` metrics.
fn separation_bars(spec: &SweepSpec, table: &ResultsTable) -> Option<Figure> {
    let scores = ["silhouette", "knn_purity", "probe_accuracy"];
    let metrics: Vec<String> = scores
        .iter()
        .map(|s| format!("hidden.final.all.{s}"))
        .filter(|m| table.rows.iter().any(|r| &r.metric == m))
        .collect();
    let base = |model: &str, metric: &str| -> Option<String> {
        let key = metric.replacen("hidden.final.", "hidden.base.", 1);
        let v: Vec<f64> = table
            .rows
            .iter()
            .filter(|r| r.model == model && r.metric == key)
            .map(|r| r.value)
            .collect();
        if v.is_empty() {
            return None;
        }
        let (_, pct, _) = metric_info(metric);
        let mean = v.iter().sum::<f64>() / v.len() as f64 * if pct { 100.0 } else { 1.0 };
        Some(format!("base {mean:.2}"))
    };
    bars_by_strategy(
        table,
        &metrics,
        base,
        format!("{}-separation-by-strategy", spec.name),
        format!(
            "{}: how the sources separate in the final model's hidden states, per strategy (95% intervals)",
            spec.name
        ),
    )
}

/// Bars per strategy for `metrics` of the cells trained on full data (every proportion 1), with
/// 95% intervals (across seeds when a strategy has several), a row of panels (one per metric) per
/// model; `note(model, metric)` is added to a panel's title. `None` when no cell has them.
fn bars_by_strategy(
    table: &ResultsTable,
    metrics: &[String],
    note: impl Fn(&str, &str) -> Option<String>,
    name: String,
    title: String,
) -> Option<Figure> {
    let full: Vec<&crate::spec::Cell> = table
        .cells
        .iter()
        .map(|s| &s.cell)
        .filter(|c| c.proportions.values().all(|r| r.numer() == r.denom()))
        .collect();
    let mut labels: Vec<String> = Vec::new();
    let mut models: Vec<String> = Vec::new();
    for c in &full {
        if !labels.contains(&c.strategy_label) {
            labels.push(c.strategy_label.clone());
        }
        if !models.contains(&c.model) {
            models.push(c.model.clone());
        }
    }
    let mut rows = Vec::new();
    for model in &models {
        let mut panels = Vec::new();
        for metric in metrics {
            let (metric_name, pct, higher) = metric_info(metric);
            let scale = if pct { 100.0 } else { 1.0 };
            let mut points = Vec::new();
            for (xi, label) in labels.iter().enumerate() {
                let v: Vec<(f64, f64, f64)> = full
                    .iter()
                    .filter(|c| &c.model == model && &c.strategy_label == label)
                    .flat_map(|c| {
                        table
                            .rows
                            .iter()
                            .filter(|r| r.cell == c.id && &r.metric == metric)
                            .map(|r| (r.value, r.ci_low, r.ci_high))
                    })
                    .collect();
                if !v.is_empty() {
                    let (m, lo, hi) = crate::results::across_seeds(&v);
                    points.push((xi as f64, m * scale, lo * scale, hi * scale));
                }
            }
            if points.is_empty() {
                continue;
            }
            let mut panel_title = if models.len() > 1 {
                format!("{metric_name} · {model}")
            } else {
                metric_name.clone()
            };
            if let Some(n) = note(model, metric) {
                panel_title.push_str(&format!(" ({n})"));
            }
            panels.push(Panel {
                title: panel_title,
                y_desc: format!(
                    "{metric_name}{}{}",
                    if pct { " (%)" } else { "" },
                    if higher { "" } else { ", lower is better" }
                ),
                series: vec![Series {
                    label: "final model".into(),
                    points,
                }],
            });
        }
        if !panels.is_empty() {
            rows.push(panels);
        }
    }
    if rows.is_empty() {
        return None;
    }
    Some(Figure {
        name,
        title,
        x_desc: "strategy".to_string(),
        x_labels: labels,
        legend: Vec::new(),
        rows,
        bars: true,
    })
}

fn color(i: usize) -> RGBColor {
    sft_plot::colour(i)
}

const LEGEND_FONT: u32 = 16;

fn legend_columns(fig: &Figure, width: u32) -> (usize, u32) {
    let longest = fig
        .legend
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(1) as u32;
    // DejaVu Sans averages about 0.55 em per character.
    let col_w = 48 + longest * LEGEND_FONT * 56 / 100;
    (((width.saturating_sub(40)) / col_w).max(1) as usize, col_w)
}

fn legend_height(fig: &Figure, width: u32) -> u32 {
    let (cols, _) = legend_columns(fig, width);
    26 * fig.legend.len().div_ceil(cols) as u32 + 20
}

fn y_format(lo: f64, hi: f64) -> impl Fn(&f64) -> String {
    let digits = match hi - lo {
        r if r >= 8.0 => 0,
        r if r >= 0.8 => 1,
        _ => 2,
    };
    move |y: &f64| format!("{y:.digits$}")
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &Figure,
) -> std::result::Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (w, h) = root.dim_in_pixel();
    let legend_h = legend_height(fig, w);
    let (top, rest) = root.split_vertically(50);
    let (body, legend_area) = rest.split_vertically(h - 50 - legend_h);
    top.draw_text(
        &fig.title,
        &("sans-serif", 26).into_font().color(&BLACK),
        (16, 12),
    )
    .map_err(|x| e(&x))?;
    let n = fig.x_labels.len();
    let cols = fig.rows.iter().map(Vec::len).max().unwrap_or(1);
    let areas = body.split_evenly((fig.rows.len(), cols));
    for (r, row) in fig.rows.iter().enumerate() {
        for (c, panel) in row.iter().enumerate() {
            let area = &areas[r * cols + c];
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for s in &panel.series {
                for p in &s.points {
                    lo = lo.min(p.2).min(p.1);
                    hi = hi.max(p.3).max(p.1);
                }
            }
            if !lo.is_finite() || !hi.is_finite() {
                continue;
            }
            let pad = ((hi - lo) * 0.08).max(1e-3);
            let (y0, y1) = (lo - pad, hi + pad);
            let x_labels = fig.x_labels.clone();
            let y_fmt = y_format(y0, y1);
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 20))
                .margin(14)
                .x_label_area_size(50)
                .y_label_area_size(66)
                .build_cartesian_2d(-0.4f64..(n as f64 - 0.6), y0..y1)
                .map_err(|x| e(&x))?;
            chart
                .configure_mesh()
                .x_labels(n.max(2) * 2 + 1)
                .x_label_formatter(&move |x: &f64| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < x_labels.len() {
                        x_labels[i as usize].clone()
                    } else {
                        String::new()
                    }
                })
                .y_labels(6)
                .y_label_formatter(&y_fmt)
                .x_desc(fig.x_desc.as_str())
                .y_desc(panel.y_desc.as_str())
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 15))
                .light_line_style(WHITE.mix(0.0))
                .bold_line_style(BLACK.mix(0.12))
                .draw()
                .map_err(|x| e(&x))?;
            if fig.bars {
                for s in &panel.series {
                    chart
                        .draw_series(s.points.iter().map(|p| {
                            let i = p.0 as usize;
                            Rectangle::new(
                                [(p.0 - 0.3, y0), (p.0 + 0.3, p.1)],
                                color(i).mix(0.75).filled(),
                            )
                        }))
                        .map_err(|x| e(&x))?;
                    chart
                        .draw_series(s.points.iter().map(|p| {
                            ErrorBar::new_vertical(p.0, p.2, p.1, p.3, BLACK.stroke_width(2), 12)
                        }))
                        .map_err(|x| e(&x))?;
                }
                continue;
            }
            for s in &panel.series {
                let ci = fig.legend.iter().position(|l| *l == s.label).unwrap_or(0);
                let c = color(ci);
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().map(|p| (p.0, p.1)),
                        c.stroke_width(2),
                    ))
                    .map_err(|x| e(&x))?;
                chart
                    .draw_series(s.points.iter().map(|p| {
                        ErrorBar::new_vertical(p.0, p.2, p.1, p.3, c.mix(0.6).stroke_width(1), 8)
                    }))
                    .map_err(|x| e(&x))?;
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|p| Circle::new((p.0, p.1), 4, c.filled())),
                    )
                    .map_err(|x| e(&x))?;
            }
        }
    }
    // The shared legend, below the panels.
    let (cols, col_w) = legend_columns(fig, w);
    for (i, label) in fig.legend.iter().enumerate() {
        let (row, col) = (i / cols, i % cols);
        let x = 20 + (col as u32 * col_w) as i32;
        let y = 8 + row as i32 * 26;
        let c = color(i);
        legend_area
            .draw(&PathElement::new(
                vec![(x, y + 10), (x + 30, y + 10)],
                c.stroke_width(3),
            ))
            .map_err(|x| e(&x))?;
        legend_area
            .draw(&Circle::new((x + 15, y + 10), 4, c.filled()))
            .map_err(|x| e(&x))?;
        legend_area
            .draw_text(
                label,
                &("sans-serif", LEGEND_FONT).into_font().color(&BLACK),
                (x + 38, y + 1),
            )
            .map_err(|x| e(&x))?;
    }
    Ok(())
}
