//! Where a round's CPU goes, by thread: each thread's time on a core and
//! its time runnable but waiting for one, from `/proc/self/task/*/schedstat`
//! (nanoseconds; Linux only, empty elsewhere), summed by thread name.

use std::collections::BTreeMap;

/// Time on a core and time waiting for one, in nanoseconds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Use {
    pub on_cpu_ns: u64,
    pub waiting_ns: u64,
}

/// Every thread of this process at one moment, by name (threads of the
/// same name, like tokio's workers, summed).
#[derive(Debug, Default)]
pub(crate) struct Threads(BTreeMap<String, Use>);

impl Threads {
    pub(crate) fn sample() -> Threads {
        let mut by_name: BTreeMap<String, Use> = BTreeMap::new();
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
            let entry = by_name.entry(name.trim().to_owned()).or_default();
            entry.on_cpu_ns += fields.next().unwrap_or(0);
            entry.waiting_ns += fields.next().unwrap_or(0);
        }
        Threads(by_name)
    }

    /// What each name used since `before` (threads that ended meanwhile
    /// are missing from both or only from this one: never negative).
    pub(crate) fn since(&self, before: &Threads) -> Threads {
        let used = self.0.iter().map(|(name, now)| {
            let then = before.0.get(name).copied().unwrap_or_default();
            let used = Use {
                on_cpu_ns: now.on_cpu_ns.saturating_sub(then.on_cpu_ns),
                waiting_ns: now.waiting_ns.saturating_sub(then.waiting_ns),
            };
            (name.clone(), used)
        });
        Threads(used.collect())
    }

    /// Adds what `other` used, name by name.
    pub(crate) fn add(&mut self, other: &Threads) {
        for (name, used) in &other.0 {
            let entry = self.0.entry(name.clone()).or_default();
            entry.on_cpu_ns += used.on_cpu_ns;
            entry.waiting_ns += used.waiting_ns;
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
        "writer {:.1} (+{:.1} waiting for a core), desk {:.1} (+{:.1}), the rest {:.1}",
        per(writer.on_cpu_ns),
        per(writer.waiting_ns),
        per(desk.on_cpu_ns),
        per(desk.waiting_ns),
        per(rest)
    )
}
