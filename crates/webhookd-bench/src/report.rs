//! Figures: percentiles, rounding, and the human-readable tables.

use serde_json::{json, Value};

/// Rounds to `digits` decimals (for the JSON lines).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Latency percentiles in milliseconds (nearest rank over every sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub samples: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// From samples in microseconds; `None` without samples.
    pub fn of_micros(us: Vec<u64>) -> Option<Self> {
        Self::of_millis(us.into_iter().map(|v| v as f64 / 1000.0).collect())
    }

    /// From samples in milliseconds, which may be negative (a retry made before it was due); `None`
    /// without samples.
    pub fn of_millis(mut ms: Vec<f64>) -> Option<Self> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_unstable_by(f64::total_cmp);
        let n = ms.len();
        let rank = |p: f64| {
            let i = ((p / 100.0) * n as f64).ceil() as usize;
            ms[i.clamp(1, n) - 1]
        };
        Some(Self {
            samples: n,
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: ms[n - 1],
            mean: ms.iter().sum::<f64>() / n as f64,
        })
    }

    /// As JSON (milliseconds).
    pub fn to_json(self) -> Value {
        json!({
            "samples": self.samples,
            "p50": round(self.p50, 2),
            "p90": round(self.p90, 2),
            "p99": round(self.p99, 2),
            "max": round(self.max, 2),
            "mean": round(self.mean, 2),
        })
    }
}

/// A table: one column per run, one row per figure.
pub struct Table {
    title: String,
    columns: Vec<String>,
    rows: Vec<(String, Vec<String>)>,
}

impl Table {
    /// An empty table with these run columns.
    pub fn new(title: impl Into<String>, columns: Vec<String>) -> Self {
        Self {
            title: title.into(),
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, name: &str, cells: Vec<String>) {
        self.rows.push((name.to_owned(), cells));
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let name_width = self
            .rows
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.rows
                    .iter()
                    .filter_map(|(_, cells)| cells.get(i))
                    .map(|s| s.chars().count())
                    .chain([c.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("== {} ==\n", self.title);
        let rule: String = std::iter::repeat_n(
            '-',
            name_width + widths.iter().map(|w| w + 3).sum::<usize>(),
        )
        .collect();
        out.push_str(&format!("{:<name_width$}", ""));
        for (c, w) in self.columns.iter().zip(&widths) {
            out.push_str(&format!(" | {c:>w$}"));
        }
        out.push('\n');
        out.push_str(&rule);
        out.push('\n');
        for (name, cells) in &self.rows {
            out.push_str(&format!("{name:<name_width$}"));
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                out.push_str(&format!(" | {cell:>w$}"));
            }
            out.push('\n');
        }
        out
    }
}

/// A figure with `digits` decimals, or `-`.
pub fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".to_owned(),
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let p = Percentiles::of_micros((1..=100).map(|ms| ms * 1000).collect()).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(p.mean, 50.5);
        let one = Percentiles::of_micros(vec![1500]).unwrap();
        assert_eq!((one.p50, one.p99), (1.5, 1.5));
        assert!(Percentiles::of_micros(Vec::new()).is_none());
    }

    #[test]
    fn percentiles_of_signed_milliseconds_keep_their_sign() {
        let p = Percentiles::of_millis(vec![3.0, -20.0, 1.0, -5.0]).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (-5.0, 3.0, 3.0));
        assert_eq!(p.mean, -5.25);
    }

    #[test]
    fn tables_align_their_columns() {
        let mut t = Table::new("x", vec!["a".into(), "long column".into()]);
        t.row("deliveries", vec!["1".into(), "22".into()]);
        let text = t.render();
        assert!(text.contains("deliveries | 1 |          22"), "{text}");
    }
}
