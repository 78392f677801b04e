//! Keeps the benchmark working: its smoke mode against the debug binaries.

use std::path::Path;
use std::process::Command;

#[test]
fn benchmark_smoke_run_delivers_everything() {
    let _slot = crate::support::slot(); // bench.sh starts servers of its own
    let bins = Path::new(env!("CARGO_BIN_EXE_fanout-bench")).parent().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(["--smoke", "--no-install", "--bin-dir"])
        .arg(bins)
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench.sh --smoke failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
