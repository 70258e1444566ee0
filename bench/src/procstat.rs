//! CPU time and resident memory of a process, read from /proc (Linux).

use std::time::Duration;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// The counters of several processes (a cluster's nodes) added up; `None`
/// when there are none or one cannot be read.
pub fn sample_all(pids: &[u32]) -> Option<Sample> {
    let mut total = Sample {
        cpu: Duration::ZERO,
        rss_bytes: 0,
    };
    for pid in pids {
        let one = sample(*pid)?;
        total.cpu += one.cpu;
        total.rss_bytes += one.rss_bytes;
    }
    (!pids.is_empty()).then_some(total)
}

/// Reads `pid`'s counters; `None` when the process or /proc is not there.
pub fn sample(pid: u32) -> Option<Sample> {
    read(&format!("/proc/{pid}"))
}

/// This process's counters.
pub fn own() -> Option<Sample> {
    read("/proc/self")
}

/// CPU time so far of `pid`'s threads named `name` (the kernel's `comm`,
/// which roomhub sets: `roomhub-hub`, `roomhub-io-0`, ...).
pub fn thread_cpu(pid: u32, name: &str) -> Option<Duration> {
    let mut ticks = 0;
    let mut found = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        if let Some(t) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| cpu_ticks(&stat))
        {
            ticks += t;
            found = true;
        }
    }
    found.then(|| Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

/// utime + stime from a `stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces; fields are counted after its ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn read(dir: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let ticks = cpu_ticks(&stat)?;
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

    #[test]
    fn a_named_thread_is_found_and_an_unknown_name_is_not() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("procstat-probe".into())
            .spawn(move || {
                // Busy for a moment, so it has CPU time to report.
                let start = std::time::Instant::now();
                while start.elapsed() < Duration::from_millis(30) {
                    std::hint::black_box(0u64);
                }
                let _ = rx.recv();
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        let pid = std::process::id();
        assert!(thread_cpu(pid, "procstat-probe").is_some());
        assert!(thread_cpu(pid, "no-such-thread").is_none());
        tx.send(()).unwrap();
        t.join().unwrap();
    }
}
