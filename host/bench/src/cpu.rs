//! CPU time of processes: user plus system, every thread, from
//! `/proc/<pid>/stat`. What the servers spend per operation does not move
//! with the disk or with the client's share of the cores the way ops/s do.
//!
//! Owns reading and parsing those files. Must never fail a run for a
//! process it cannot read: the caller reports the figure as missing.

/// CPU time of process `pid` so far, in microseconds.
pub fn process_cpu_us(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let ticks = stat_cpu_ticks(&stat).ok_or_else(|| format!("{path}: no utime and stime in {stat:?}"))?;
    Ok(ticks_to_us(ticks))
}

/// CPU time of this process so far, in microseconds.
pub fn own_cpu_us() -> Result<u64, String> {
    process_cpu_us(std::process::id())
}

/// utime + stime, in clock ticks, from the text of a `/proc/<pid>/stat`.
/// The command name (field 2) is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state (3), ppid (4), ..., utime (14), stime (15).
    let utime: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_us(ticks: u64) -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_sec = u64::try_from(per_sec).ok().filter(|&t| t > 0).unwrap_or(100);
    ticks.saturating_mul(1_000_000) / per_sec
}

/// Several processes' CPU time at one moment (see [`process_cpu_us`]).
#[derive(Clone, Debug)]
pub struct Sample {
    pub per_pid: Vec<(u32, Result<u64, String>)>,
    pub own: Result<u64, String>,
}

impl Sample {
    pub fn take(pids: &[u32]) -> Sample {
        Sample { per_pid: pids.iter().map(|&p| (p, process_cpu_us(p))).collect(), own: own_cpu_us() }
    }

    /// CPU microseconds spent by the processes together since `before`,
    /// and by this process; `None` where one could not be read.
    pub fn since(&self, before: &Sample) -> (Option<u64>, Option<u64>) {
        let mut total = Some(0u64);
        for ((_, now), (_, then)) in self.per_pid.iter().zip(&before.per_pid) {
            total = match (total, now, then) {
                (Some(t), Ok(now), Ok(then)) => Some(t + now.saturating_sub(*then)),
                _ => None,
            };
        }
        if self.per_pid.is_empty() {
            total = None;
        }
        let own = match (&self.own, &before.own) {
            (Ok(now), Ok(then)) => Some(now.saturating_sub(*then)),
            _ => None,
        };
        (total, own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_count_after_the_last_parenthesis_of_the_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 269 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(731 + 269));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1"), None, "too few fields");
        assert_eq!(stat_cpu_ticks("no name here"), None);
    }

    #[test]
    fn this_process_spends_cpu_and_a_missing_one_is_an_error() {
        let before = own_cpu_us().unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Busy until the clock counts it (a tick is 10 ms), however loaded
        // the machine.
        while own_cpu_us().unwrap() == before {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "no CPU time counted in 30 s");
        }
        std::hint::black_box(x);
        assert!(own_cpu_us().unwrap() > before);
        assert!(process_cpu_us(u32::MAX).is_err());
        let a = Sample::take(&[std::process::id(), u32::MAX]);
        assert_eq!(a.since(&a).0, None, "one unreadable process: no total");
        let b = Sample::take(&[std::process::id()]);
        assert_eq!(b.since(&b).0, Some(0));
    }
}
