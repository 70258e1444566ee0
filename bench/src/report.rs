//! The human table and the latency summary every mode reports.

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn from_micros(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2} / {:.2} / {:.2} / {:.2}",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

/// Two columns: what, and how much.
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn new(title: String) -> Table {
        Table {
            title,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, name: &str, value: impl ToString) {
        self.rows.push((name.to_string(), value.to_string()));
    }

    pub fn opt_row(&mut self, name: &str, value: Option<String>) {
        self.row(name, value.unwrap_or_else(|| "-".into()));
    }

    /// A number with `decimals` places, or `-` when it was not measured.
    pub fn opt_num(&mut self, name: &str, value: Option<f64>, decimals: usize) {
        self.opt_row(name, value.map(|v| format!("{v:.decimals$}")));
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        writeln!(f, "{}", self.title)?;
        for (name, value) in &self.rows {
            writeln!(f, "  {name:<width$}  {value}")?;
        }
        Ok(())
    }
}
