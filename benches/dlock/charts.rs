//! Charts of what the sections measured, as small SVG files next to the JSON
//! (`target/bench/NAME.svg`; the smoke run writes `smoke-NAME.svg`). The SVG is written by
//! hand: lines, rectangles and text in the generic `sans-serif` family, so it needs neither a
//! plotting library nor font files, and each file stays a few KB.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::common::Connection;
use super::report;

const WIDTH: f64 = 760.0;
/// One colour per series, in the order the sections list them: dlock first, then baselines.
const COLORS: [&str; 4] = ["#1c64d9", "#e8590c", "#8e44ad", "#868e96"];
/// Points drawn per CDF line: a smooth curve, yet a small file.
const CDF_POINTS: usize = 150;
/// Where the panels start, below the title, the caption and the legend.
const PANELS_TOP: f64 = 96.0;

/// Where a section's charts go and the line under each title: the machine, the Redis version,
/// the load average when they were drawn and the command that made them.
pub struct Charts {
    caption: String,
    prefix: &'static str,
}

/// One panel of bars: a bar per series in each group, with a dot per run behind a bar.
pub struct BarPanel {
    pub title: String,
    pub y_label: String,
    /// A label per group; `\n` breaks it into lines.
    pub groups: Vec<String>,
    /// `values[series][group]`.
    pub values: Vec<Vec<f64>>,
    /// `runs[series][group]`: every run's value behind the bar; empty to draw none.
    pub runs: Vec<Vec<Vec<f64>>>,
    /// A dashed line across the panel, and what it is (said in the panel's title).
    pub reference: Option<(f64, String)>,
}

impl Charts {
    pub fn new(c: &mut Connection) -> Charts {
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        let command = match args.is_empty() {
            true => "cargo bench --bench dlock".to_string(),
            false => format!("cargo bench --bench dlock -- {}", args.join(" ")),
        };
        // The load says how far a shared machine's figures can be trusted.
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load.split_whitespace().next().unwrap_or("?");
        Charts {
            caption: format!(
                "{}, Redis {}, load average {load} · {command}",
                report::machine(),
                report::redis_version(c)
            ),
            prefix: if args.iter().any(|a| a == "--smoke") {
                "smoke-"
            } else {
                ""
            },
        }
    }

    /// Cumulative distributions on a log-scale x axis, a panel per `(title, samples per
    /// series)`.
    pub fn cdf(
        &self,
        name: &str,
        title: &str,
        x_label: &str,
        labels: &[String],
        panels: &[(String, Vec<Vec<f64>>)],
    ) {
        let height = 420.0;
        let mut svg = Svg::new(height, title, &self.caption);
        svg.legend(labels);
        let positive = || {
            panels
                .iter()
                .flat_map(|(_, series)| series.iter().flatten())
                .copied()
                .filter(|v| *v > 0.0)
        };
        let lo = decade_below(positive().fold(f64::INFINITY, f64::min).max(0.01));
        let hi = decade_above(positive().fold(lo * 10.0, f64::max));
        for (i, (panel_title, series)) in panels.iter().enumerate() {
            let (left, right) = panel_span(i, panels.len());
            let x = Scale::new(lo, hi, true, left, right);
            let y = Scale::new(0.0, 1.0, false, height - 50.0, PANELS_TOP);
            svg.panel(
                &x,
                &y,
                panel_title,
                x_label,
                "share of hand-overs at or below",
                true,
            );
            for quantile in [0.5, 0.99] {
                svg.line(
                    (left, y.at(quantile)),
                    (right, y.at(quantile)),
                    "stroke=\"#999\" stroke-dasharray=\"3 3\"",
                );
                svg.text(
                    right - 2.0,
                    y.at(quantile) - 3.0,
                    "end",
                    "font-size=\"10\" fill=\"#666\"",
                    &format!("p{}", (quantile * 100.0) as u32),
                );
            }
            for (k, samples) in series.iter().enumerate() {
                let mut sorted = samples.clone();
                sorted.sort_by(f64::total_cmp);
                let points: Vec<(f64, f64)> = downsample(&sorted)
                    .into_iter()
                    .map(|(v, q)| (x.at(v), y.at(q)))
                    .collect();
                svg.polyline(&points, COLORS[k % COLORS.len()]);
            }
        }
        self.write(name, svg.finish());
    }

    /// Bars side by side, a series per label, in one or more panels.
    pub fn bars(&self, name: &str, title: &str, labels: &[String], panels: &[BarPanel]) {
        let (left, right) = panel_span(0, panels.len());
        // About 6.5 px per character at 11 px.
        let group_labels: Vec<Vec<Vec<String>>> = panels
            .iter()
            .map(|p| {
                let chars = (right - left) / p.groups.len().max(1) as f64 / 6.5;
                p.groups.iter().map(|g| wrap(g, chars as usize)).collect()
            })
            .collect();
        let lines = group_labels
            .iter()
            .flatten()
            .map(Vec::len)
            .max()
            .unwrap_or(1) as f64;
        let bottom_margin = 24.0 + 14.0 * lines;
        let height = 380.0 + bottom_margin;
        let mut svg = Svg::new(height, title, &self.caption);
        svg.legend(labels);
        for (i, (panel, group_labels)) in panels.iter().zip(group_labels).enumerate() {
            let (left, right) = panel_span(i, panels.len());
            let all = || {
                panel
                    .values
                    .iter()
                    .flatten()
                    .chain(panel.runs.iter().flatten().flatten())
                    .chain(panel.reference.iter().map(|(v, _)| v))
                    .copied()
                    .filter(|v| v.is_finite())
            };
            let lo = all().fold(0.0, f64::min);
            let hi = nice_above(all().fold(0.0, f64::max) * 1.1);
            let x = Scale::new(0.0, panel.groups.len() as f64, false, left, right);
            let y = Scale::new(lo, hi, false, height - bottom_margin, PANELS_TOP);
            let panel_title = match &panel.reference {
                Some((_, label)) => format!("{} (dashed: {label})", panel.title),
                None => panel.title.clone(),
            };
            svg.panel(&x, &y, &panel_title, "", &panel.y_label, false);
            let series = panel.values.len() as f64;
            let slot = (x.at(1.0) - x.at(0.0)) * 0.8 / series;
            for (g, group) in group_labels.iter().enumerate() {
                let start = x.at(g as f64) + (x.at(1.0) - x.at(0.0)) * 0.1;
                for (k, values) in panel.values.iter().enumerate() {
                    let color = COLORS[k % COLORS.len()];
                    let value = values[g];
                    let bar_x = start + slot * k as f64;
                    let (top, base) = (y.at(value.max(lo)), y.at(0.0));
                    svg.rect(
                        bar_x + 2.0,
                        top.min(base),
                        slot - 4.0,
                        (base - top).abs(),
                        color,
                    );
                    let runs = panel.runs.get(k).and_then(|r| r.get(g));
                    for run in runs.into_iter().flatten() {
                        svg.circle(bar_x + slot / 2.0, y.at(*run));
                    }
                    let label_at = runs.into_iter().flatten().fold(value, |a, b| a.max(*b));
                    svg.text(
                        bar_x + slot / 2.0,
                        y.at(label_at) - 5.0,
                        "middle",
                        "font-size=\"10\"",
                        &short(value),
                    );
                }
                for (l, line) in group.iter().enumerate() {
                    svg.text(
                        x.at(g as f64 + 0.5),
                        y.at(lo) + 16.0 + 14.0 * l as f64,
                        "middle",
                        "font-size=\"11\"",
                        line,
                    );
                }
            }
            if let Some((value, _)) = &panel.reference {
                svg.line(
                    (left, y.at(*value)),
                    (right, y.at(*value)),
                    "stroke=\"#333\" stroke-dasharray=\"5 3\"",
                );
            }
        }
        self.write(name, svg.finish());
    }

    fn write(&self, name: &str, svg: String) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{}{name}.svg", self.prefix));
        std::fs::write(&file, svg).expect("write a chart");
        eprintln!("   chart: {}", file.display());
    }
}

/// The left and right edge of panel `i` of `count`, side by side.
fn panel_span(i: usize, count: usize) -> (f64, f64) {
    let (margin, gap) = (64.0, 72.0);
    let width = (WIDTH - margin - 24.0 - gap * (count as f64 - 1.0)) / count as f64;
    let left = margin + (width + gap) * i as f64;
    (left, left + width)
}

/// `text` broken at `\n` and at spaces into lines of at most `width` characters where it can.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![];
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

/// `(value, share at or below)` pairs of a sorted sample, at most `CDF_POINTS` + 1.
fn downsample(sorted: &[f64]) -> Vec<(f64, f64)> {
    if sorted.is_empty() {
        return vec![];
    }
    let last = sorted.len() - 1;
    (0..=CDF_POINTS)
        .map(|i| {
            let index = (last * i).div_ceil(CDF_POINTS);
            (sorted[index], (index + 1) as f64 / sorted.len() as f64)
        })
        .collect()
}

fn decade_below(v: f64) -> f64 {
    10f64.powf(v.log10().floor())
}

fn decade_above(v: f64) -> f64 {
    10f64.powf(v.log10().ceil())
}

/// A tick step of 1, 2, 2.5 or 5 times a power of ten, giving about five ticks up to `v`.
fn step_for(v: f64) -> f64 {
    let raw = v / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The next tick at or above `v` (1 when `v` is not positive).
fn nice_above(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let step = step_for(v);
    (v / step).ceil() * step
}

/// A tick label: as few digits as the value needs, thousands as k and millions as M.
fn tick(v: f64) -> String {
    let trim = |v: f64| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    match v.abs() {
        a if a >= 1e6 => format!("{}M", trim(v / 1e6)),
        a if a >= 1e3 => format!("{}k", trim(v / 1e3)),
        _ => trim(v),
    }
}

/// A value printed over its bar, in three significant digits or so.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 1e4 => format!("{:.0}k", v / 1e3),
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// Data values mapped onto pixels, linearly or by their logarithm.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    from: f64,
    to: f64,
}

impl Scale {
    fn new(lo: f64, hi: f64, log: bool, from: f64, to: f64) -> Scale {
        Scale {
            lo,
            hi,
            log,
            from,
            to,
        }
    }

    /// Values outside the range are drawn at its edge.
    fn at(&self, v: f64) -> f64 {
        let f = |v: f64| if self.log { v.log10() } else { v };
        let v = v.clamp(self.lo, self.hi);
        let t = (f(v) - f(self.lo)) / (f(self.hi) - f(self.lo));
        self.from + t * (self.to - self.from)
    }

    /// Labelled ticks, and (on a log scale) the unlabelled 2s and 5s between them.
    fn ticks(&self) -> (Vec<f64>, Vec<f64>) {
        if self.log {
            let decades: Vec<f64> = (self.lo.log10().round() as i32
                ..=self.hi.log10().round() as i32)
                .map(|k| 10f64.powi(k))
                .collect();
            let minor = decades
                .iter()
                .flat_map(|d| [2.0 * d, 5.0 * d])
                .filter(|v| *v < self.hi)
                .collect();
            (decades, minor)
        } else {
            let step = step_for(self.hi - self.lo);
            let first = (self.lo / step).ceil() as i64;
            let last = (self.hi / step + 1e-9).floor() as i64;
            ((first..=last).map(|i| i as f64 * step).collect(), vec![])
        }
    }
}

/// An SVG document being written.
struct Svg(String);

impl Svg {
    fn new(height: f64, title: &str, caption: &str) -> Svg {
        let mut svg = Svg(format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
             viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <style>.run {{ fill: #222; stroke: white }}</style>\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        ));
        svg.text(
            WIDTH / 2.0,
            24.0,
            "middle",
            "font-size=\"15\" font-weight=\"bold\"",
            title,
        );
        svg.text(
            WIDTH / 2.0,
            42.0,
            "middle",
            "font-size=\"11\" fill=\"#555\"",
            caption,
        );
        svg
    }

    fn finish(mut self) -> String {
        self.0.push_str("</svg>\n");
        self.0
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, attributes: &str, text: &str) {
        let text = text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let _ = writeln!(
            self.0,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" {attributes}>{text}</text>"
        );
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), attributes: &str) {
        let _ = writeln!(
            self.0,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" {attributes}/>"
        );
    }

    fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, fill: &str) {
        let _ = writeln!(
            self.0,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" fill=\"{fill}\"/>"
        );
    }

    fn circle(&mut self, x: f64, y: f64) {
        let _ = writeln!(
            self.0,
            "<circle class=\"run\" cx=\"{x:.0}\" cy=\"{y:.0}\" r=\"2.5\"/>"
        );
    }

    /// Points to the whole pixel, each once: a line of hundreds of points stays small.
    fn polyline(&mut self, points: &[(f64, f64)], color: &str) {
        let mut path = String::new();
        let mut last = None;
        for (x, y) in points {
            let point = format!("{x:.0},{y:.0}");
            if last.as_ref() != Some(&point) {
                path.push_str(&point);
                path.push(' ');
                last = Some(point);
            }
        }
        let _ = writeln!(
            self.0,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            path.trim_end()
        );
    }

    /// A centred row of colour swatches with their labels, under the caption.
    fn legend(&mut self, labels: &[String]) {
        // About 6.5 px per character at 12 px in a sans-serif font.
        let widths: Vec<f64> = labels
            .iter()
            .map(|l| 16.0 + 6.5 * l.chars().count() as f64)
            .collect();
        let gap = 20.0;
        let total = widths.iter().sum::<f64>() + gap * (labels.len() as f64 - 1.0);
        let mut x = (WIDTH - total) / 2.0;
        for (k, (label, width)) in labels.iter().zip(widths).enumerate() {
            self.rect(x, 58.0, 12.0, 12.0, COLORS[k % COLORS.len()]);
            self.text(x + 16.0, 68.5, "start", "", label);
            x += width + gap;
        }
    }

    /// A panel's title, grid, tick labels and axis labels; x ticks only when `x_ticks`.
    fn panel(
        &mut self,
        x: &Scale,
        y: &Scale,
        title: &str,
        x_label: &str,
        y_label: &str,
        x_ticks: bool,
    ) {
        let (left, right, bottom, top) = (x.from, x.to, y.from, y.to);
        self.text(
            (left + right) / 2.0,
            top - 8.0,
            "middle",
            "font-weight=\"bold\"",
            title,
        );
        let (labelled, _) = y.ticks();
        for v in labelled {
            self.line((left, y.at(v)), (right, y.at(v)), "stroke=\"#e6e6e6\"");
            self.text(
                left - 6.0,
                y.at(v) + 4.0,
                "end",
                "font-size=\"11\"",
                &tick(v),
            );
        }
        if x_ticks {
            let (labelled, minor) = x.ticks();
            for v in minor {
                self.line((x.at(v), top), (x.at(v), bottom), "stroke=\"#f2f2f2\"");
            }
            for v in labelled {
                self.line((x.at(v), top), (x.at(v), bottom), "stroke=\"#e0e0e0\"");
                self.text(
                    x.at(v),
                    bottom + 16.0,
                    "middle",
                    "font-size=\"11\"",
                    &tick(v),
                );
            }
        }
        self.line((left, top), (left, bottom), "stroke=\"#333\"");
        self.line((left, y.at(0.0)), (right, y.at(0.0)), "stroke=\"#333\"");
        if !x_label.is_empty() {
            self.text((left + right) / 2.0, bottom + 34.0, "middle", "", x_label);
        }
        let (label_x, middle) = (left - 44.0, (top + bottom) / 2.0);
        self.text(
            label_x,
            middle,
            "middle",
            &format!("font-size=\"11\" transform=\"rotate(-90 {label_x:.1} {middle:.1})\""),
            y_label,
        );
    }
}
