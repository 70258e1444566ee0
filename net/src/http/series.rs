//! The admin page's live chart: the server's last minutes, one sample a
//! second (taken by `http::admin::sample`).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Seconds of history the live chart keeps (one sample a second).
const SERIES_SECONDS: usize = 600;

/// One second of the server, for the live chart.
#[derive(Clone, Copy, serde::Serialize)]
pub(crate) struct Sample {
    /// Unix milliseconds.
    pub(crate) t: u64,
    /// Frames received from clients in that second.
    pub(crate) received: u64,
    /// Frames written to clients (deliveries) in that second.
    pub(crate) delivered: u64,
    /// Connections at the end of it (this node's plus the others').
    pub(crate) connections: usize,
}

/// The last [`SERIES_SECONDS`] of samples.
#[derive(Default)]
pub(crate) struct Series {
    samples: Mutex<VecDeque<Sample>>,
}

impl Series {
    pub(crate) fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SERIES_SECONDS {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub(crate) fn list(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }
}
