//! Fields of `/proc/<pid>/status` that gpuslice reads: the `NSpid:` line, the PID of a
//! process in each PID namespace from the one of the `/proc` mount down to its own.
//!
//! Pure text parsing, so that the agent (which maps PIDs between namespaces) and the
//! fake NVML (which models the driver's PID behaviour) share one parser, and tests feed
//! it text directly.

/// The PIDs of the `NSpid:` line of a `status` file's text, outermost namespace first;
/// `None` when the line is missing, empty or not all numbers.
pub fn parse_ns_pids(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let pids: Option<Vec<u32>> = line["NSpid:".len()..]
        .split_whitespace()
        .map(|p| p.parse().ok())
        .collect();
    pids.filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_pids() {
        let status = "Name:\tpython\nPid:\t4242\nNSpid:\t4242\t17\t2\nPPid:\t1\n";
        assert_eq!(parse_ns_pids(status), Some(vec![4242, 17, 2]));
        assert_eq!(parse_ns_pids("NSpid:\t9\n"), Some(vec![9]));
        assert_eq!(parse_ns_pids("Name:\tx\n"), None);
        assert_eq!(parse_ns_pids("NSpid:\t\n"), None);
        assert_eq!(parse_ns_pids("NSpid:\t12\tx\n"), None);
    }
}
