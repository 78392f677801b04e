//! The server processes as /proc shows them: a pid's descendants, their
//! resident memory and their CPU time.

use std::collections::{HashMap, HashSet};
use std::fs;

/// The given pids and all their descendants that exist now.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(ppid) = stat_field(pid, 1).and_then(|s| s.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let (mut out, mut seen) = (Vec::new(), HashSet::new());
    let mut stack: Vec<u32> = roots.iter().copied().filter(|p| fs::metadata(format!("/proc/{p}")).is_ok()).collect();
    while let Some(p) = stack.pop() {
        if seen.insert(p) {
            out.push(p);
            stack.extend(children.get(&p).into_iter().flatten());
        }
    }
    out
}

/// Field `n` (0 = state) of /proc/pid/stat after the command name.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].split_whitespace().nth(n).map(str::to_owned)
}

/// Sum of VmRSS in KiB.
pub fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Sum of user+system CPU seconds.
pub fn cpu_secs(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .map(|&p| {
            let f = |n| stat_field(p, n).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            f(11) + f(12)
        })
        .sum();
    ticks as f64 / tck
}
