//! CPU time of a process tree, read from `/proc`, so benchmarks can print
//! CPU-seconds per GiB beside wall time (issue 11's measure). Linux only.

use std::collections::HashMap;

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, which the
/// kernel ABI fixes at 100 on every architecture Customs builds for.
const TICKS_PER_SEC: f64 = 100.0;

/// (ppid, utime + stime in ticks) of one process, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU seconds (user + system) used so far by `root` and every live
/// descendant, per process id. Processes that already exited are not
/// counted: sample before shutting a fleet down.
pub fn tree_cpu(root: u32) -> HashMap<u32, f64> {
    let mut all: Vec<(u32, u32, u64)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok())
                && let Some((ppid, t)) = stat(pid)
            {
                all.push((pid, ppid, t));
            }
        }
    }
    let mut inside = vec![root];
    let mut out = HashMap::new();
    while let Some(p) = inside.pop() {
        if let Some((_, _, t)) = all.iter().find(|(pid, ..)| *pid == p) {
            out.insert(p, *t as f64 / TICKS_PER_SEC);
        }
        inside.extend(
            all.iter()
                .filter(|(_, pp, _)| *pp == p)
                .map(|(pid, ..)| *pid),
        );
    }
    out
}

/// The CPU seconds `tree_cpu` counted between two samples: the root (by
/// itself) and the sum over everything else.
pub fn cpu_between(root: u32, before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> (f64, f64) {
    let used = |p: &u32| after[p] - before.get(p).copied().unwrap_or(0.0);
    let root_s = after.get(&root).map_or(0.0, |_| used(&root));
    let rest = after.keys().filter(|p| **p != root).map(used).sum::<f64>() + 0.0;
    (root_s, rest)
}
