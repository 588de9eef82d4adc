//! Figures, targets, and the table and JSON they are printed as.

use std::fmt::Write as _;

use super::common::{Connection, cmd};

#[derive(Clone, Copy)]
pub enum Target {
    /// dlock / baseline must be at least this.
    RatioAtLeast(f64),
    /// dlock / baseline must be at most this.
    RatioAtMost(f64),
    /// dlock's figure must be at most this.
    AtMost(f64),
    /// dlock's figure must be at least this.
    AtLeast(f64),
}

pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub dlock: f64,
    pub baseline: Option<f64>,
    pub target: Option<Target>,
    /// Further baselines measured the same way, by name.
    pub others: Vec<(String, f64)>,
}

impl Figure {
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b != 0.0).map(|b| self.dlock / b)
    }

    pub fn met(&self) -> Option<bool> {
        match self.target? {
            Target::RatioAtLeast(t) => self.ratio().map(|r| r >= t),
            Target::RatioAtMost(t) => self.ratio().map(|r| r <= t),
            Target::AtMost(t) => Some(self.dlock <= t),
            Target::AtLeast(t) => Some(self.dlock >= t),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Some(Target::RatioAtLeast(t)) => format!(">= {t}x"),
            Some(Target::RatioAtMost(t)) => format!("<= {t}x"),
            Some(Target::AtMost(t)) => format!("<= {t}"),
            Some(Target::AtLeast(t)) => format!(">= {t}"),
            None => String::new(),
        }
    }
}

/// The middle value, or the mean of the two middle ones (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let half = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[half],
        _ => (values[half - 1] + values[half]) / 2.0,
    }
}

pub fn print_table(figures: &[Figure]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| figure | dlock | baseline | ratio | other baselines | target | met |\n|---|---:|---:|---:|---|---|---|"
    );
    for f in figures {
        let num = |v: f64| {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.name,
            num(f.dlock),
            f.baseline.map(num).unwrap_or_default(),
            f.ratio().map(|r| format!("{r:.2}x")).unwrap_or_default(),
            f.others
                .iter()
                .map(|(name, v)| format!("{name}: {}", num(*v)))
                .collect::<Vec<_>>()
                .join("; "),
            f.target_text(),
            match f.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
    out
}

pub fn to_json(figures: &[Figure], machine: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let num = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    };
    let rows: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "    {{\"figure\": \"{}\", \"unit\": \"{}\", \"dlock\": {}, \"baseline\": {}, \"ratio\": {}, \"target\": \"{}\", \"met\": {}, \"others\": {{{}}}}}",
                esc(&f.name),
                f.unit,
                num(Some(f.dlock)),
                num(f.baseline),
                num(f.ratio()),
                esc(&f.target_text()),
                f.met().map_or("null".into(), |m| m.to_string()),
                f.others
                    .iter()
                    .map(|(name, v)| format!("\"{}\": {}", esc(name), num(Some(*v))))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    format!(
        "{{\n  \"machine\": \"{}\",\n  \"figures\": [\n{}\n  ]\n}}\n",
        esc(machine),
        rows.join(",\n")
    )
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

pub fn redis_version(c: &mut Connection) -> String {
    let info: String = cmd("INFO").arg("server").query(c).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}
