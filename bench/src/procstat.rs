//! CPU time and resident memory of a process, read from /proc (Linux).

use std::time::Duration;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// Reads `pid`'s counters; `None` when the process or /proc is not there.
pub fn sample(pid: u32) -> Option<Sample> {
    read(&format!("/proc/{pid}"))
}

/// This process's counters.
pub fn own() -> Option<Sample> {
    read("/proc/self")
}

fn read(dir: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name may contain spaces; fields are counted after its ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Sample {
        cpu: Duration::from_secs_f64(ticks as f64 / ticks_per_second()),
        rss_bytes: rss_kb * 1024,
    })
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU used between two samples, as a share of one core over `wall`.
pub fn cpu_share(before: Option<Sample>, after: Option<Sample>, wall: Duration) -> Option<f64> {
    let (b, a) = (before?, after?);
    Some(a.cpu.saturating_sub(b.cpu).as_secs_f64() / wall.as_secs_f64().max(1e-9))
}

/// CPU used between two samples.
pub fn cpu_between(before: Option<Sample>, after: Option<Sample>) -> Option<Duration> {
    Some(after?.cpu.saturating_sub(before?.cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_counters_are_read() {
        let s = own().expect("/proc/self");
        assert!(s.rss_bytes > 0);
    }
}
