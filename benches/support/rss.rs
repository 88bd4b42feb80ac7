//! The resident memory of the bench process (shared by the benches that
//! measure memory: `#[path = "support/rss.rs"] mod rss;`).

/// Resident memory of this process, bytes.
pub fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}
