//! This process's own resources: its CPU time (getrusage) and its open-files
//! limit (raised for many sockets).

pub fn cpu_secs(who: nix::sys::resource::UsageWho) -> f64 {
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    nix::sys::resource::getrusage(who).map(|u| secs(u.user_time()) + secs(u.system_time())).unwrap_or(0.0)
}

/// Raises the soft open-files limit to the hard one (10 000 sockets need it).
pub fn raise_nofile(need: u64) -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    // Root may raise the hard limit too.
    let want = hard.max(need);
    if soft < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() && soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| format!("setrlimit: {e}"))?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft < need {
        return Err(format!("open files limit {soft} is below the {need} this run needs (raise it with ulimit -n, or use fewer connections)"));
    }
    Ok(())
}
