//! Where a round's CPU goes, by thread: each thread's time on a core and
//! its time runnable but waiting for one, from `/proc/self/task/*/schedstat`
//! (nanoseconds), and how much of its time was spent in the kernel, from
//! `/proc/self/task/*/stat` (clock ticks, so only for long rounds); Linux
//! only, empty elsewhere; summed by thread name.

use std::collections::BTreeMap;

/// Time on a core, the part of it in the kernel, and time waiting for a
/// core, in nanoseconds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Use {
    pub on_cpu_ns: u64,
    pub kernel_ns: u64,
    pub waiting_ns: u64,
}

impl Use {
    /// Field by field: `self - before` (never negative) or `self + other`.
    fn combine(self, other: Use, op: fn(u64, u64) -> u64) -> Use {
        Use {
            on_cpu_ns: op(self.on_cpu_ns, other.on_cpu_ns),
            kernel_ns: op(self.kernel_ns, other.kernel_ns),
            waiting_ns: op(self.waiting_ns, other.waiting_ns),
        }
    }
}

/// The clock tick of `/proc/*/stat` times (USER_HZ, 100 on most Linux).
fn ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// A thread's time in the kernel from its `stat` line: `stime`, the 15th
/// field, counted after the name (which may hold spaces) closes with `)`.
fn kernel_ns(stat: &str, ticks_per_s: u64) -> u64 {
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let stime_ticks = after_name
        .split_whitespace()
        .nth(12)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    stime_ticks.saturating_mul(1_000_000_000 / ticks_per_s)
}

/// Every thread of this process at one moment, by name (threads of the
/// same name, like tokio's workers, summed).
#[derive(Debug, Default)]
pub(crate) struct Threads(BTreeMap<String, Use>);

impl Threads {
    pub(crate) fn sample() -> Threads {
        let mut by_name: BTreeMap<String, Use> = BTreeMap::new();
        let ticks = ticks_per_s();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Threads(by_name);
        };
        for task in tasks.flatten() {
            let path = task.path();
            let (Ok(name), Ok(stat)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("schedstat")),
            ) else {
                continue; // the thread ended meanwhile
            };
            let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
            let kernel = std::fs::read_to_string(path.join("stat")).map_or(0, |s| kernel_ns(&s, ticks));
            let entry = by_name.entry(name.trim().to_owned()).or_default();
            entry.on_cpu_ns += fields.next().unwrap_or(0);
            entry.waiting_ns += fields.next().unwrap_or(0);
            entry.kernel_ns += kernel;
        }
        Threads(by_name)
    }

    /// What each name used since `before` (threads that ended meanwhile
    /// are missing from both or only from this one: never negative).
    pub(crate) fn since(&self, before: &Threads) -> Threads {
        let used = self.0.iter().map(|(name, now)| {
            let then = before.0.get(name).copied().unwrap_or_default();
            (name.clone(), now.combine(then, u64::saturating_sub))
        });
        Threads(used.collect())
    }

    /// Adds what `other` used, name by name.
    pub(crate) fn add(&mut self, other: &Threads) {
        for (name, used) in &other.0 {
            let entry = self.0.entry(name.clone()).or_default();
            *entry = entry.combine(*used, u64::saturating_add);
        }
    }

    pub(crate) fn get(&self, name: &str) -> Use {
        self.0.get(name).copied().unwrap_or_default()
    }

    /// Every thread's time on a core, in nanoseconds.
    pub(crate) fn on_cpu_ns(&self) -> u64 {
        self.0.values().map(|u| u.on_cpu_ns).sum()
    }
}

/// One line: per request, the writer's and the desk's time on a core (and
/// runnable, waiting for one), and every other thread's (HTTP on both sides).
pub(crate) fn breakdown(used: &Threads, requests: usize) -> String {
    if used.0.is_empty() {
        return "not measured here (needs Linux's /proc/self/task/*/schedstat)".into();
    }
    let per = |ns: u64| ns as f64 / 1000.0 / requests.max(1) as f64;
    let (writer, desk) = (used.get("payment-writer"), used.get("payment-desk"));
    let rest = used
        .on_cpu_ns()
        .saturating_sub(writer.on_cpu_ns)
        .saturating_sub(desk.on_cpu_ns);
    format!(
        "writer {:.1} ({:.1} of it in the kernel; +{:.1} waiting for a core), desk {:.1} (+{:.1}), the rest {:.1}",
        per(writer.on_cpu_ns),
        per(writer.kernel_ns),
        per(writer.waiting_ns),
        per(desk.on_cpu_ns),
        per(desk.waiting_ns),
        per(rest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_time_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 2 3 0 -1 4194368 10 0 0 0 37 12 0 0 20 0 1 0 99 0 0";
        assert_eq!(kernel_ns(stat, 100), 120_000_000, "12 ticks of 10 ms");
        assert_eq!(kernel_ns("garbage", 100), 0);
    }
}
