//! Cutting established connections (`--established cut`).
//!
//! nftables rules usually accept `ct state established,related` early, so a
//! flow admitted under an old policy outlives a change that would now drop
//! it. Deleting the flow's conntrack entry makes its next packet a new flow,
//! judged by the current rules. The agent does this only for the pods whose
//! effective policy changed, in both directions (`-s IP` and `-d IP`).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Deletes conntrack entries; a trait so tests need no conntrack table.
pub trait Flows: Send + 'static {
    /// Delete every entry whose source or destination is one of `ips`;
    /// returns how many were deleted.
    fn cut(&mut self, ips: &[IpAddr]) -> Result<u64, FlowsError>;
}

#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error("cannot run {bin}: {source}")]
    Spawn { bin: String, source: io::Error },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// The `conntrack` command from conntrack-tools.
#[derive(Debug, Clone)]
pub struct ConntrackCli {
    bin: PathBuf,
    /// Run inside this named network namespace (`ip netns exec`), for
    /// end-to-end tests; the agent itself runs in the host's.
    netns: Option<String>,
}

impl ConntrackCli {
    /// Check at start that the binary runs, so `--established cut` on a node
    /// without conntrack fails loudly instead of at the first change.
    pub fn new(bin: impl Into<PathBuf>) -> Result<ConntrackCli, FlowsError> {
        ConntrackCli { bin: bin.into(), netns: None }.checked()
    }

    /// The same, in a named network namespace.
    pub fn in_netns(bin: impl Into<PathBuf>, netns: &str) -> Result<ConntrackCli, FlowsError> {
        ConntrackCli { bin: bin.into(), netns: Some(netns.to_string()) }.checked()
    }

    fn checked(self) -> Result<ConntrackCli, FlowsError> {
        let cli = self;
        let out = cli.command(&["--version"])?;
        if !out.status.success() {
            return Err(cli.failed(&["--version"], &out));
        }
        Ok(cli)
    }

    fn command(&self, args: &[&str]) -> Result<std::process::Output, FlowsError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(args).output().map_err(|source| FlowsError::Spawn { bin: self.bin.display().to_string(), source })
    }

    fn failed(&self, args: &[&str], out: &std::process::Output) -> FlowsError {
        FlowsError::Failed {
            command: format!("{} {}", self.bin.display(), args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }
}

impl Flows for ConntrackCli {
    fn cut(&mut self, ips: &[IpAddr]) -> Result<u64, FlowsError> {
        let mut deleted = 0;
        for ip in ips {
            let ip = ip.to_string();
            for dir in ["-s", "-d"] {
                let args = ["-D", dir, ip.as_str()];
                let out = self.command(&args)?;
                // conntrack exits 1 when nothing matched; the summary line on
                // stderr tells that apart from a real failure.
                match deleted_count(&String::from_utf8_lossy(&out.stderr)) {
                    Some(n) => deleted += n,
                    None if out.status.success() => {}
                    None => return Err(self.failed(&args, &out)),
                }
            }
        }
        Ok(deleted)
    }
}

/// "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted."
fn deleted_count(stderr: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains("flow entries have been deleted"))?;
    let before = line.split(" flow entries").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// Records what would be cut; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct FakeFlows(Arc<Mutex<Vec<IpAddr>>>);

impl FakeFlows {
    pub fn cut_ips(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(ToString::to_string).collect()
    }
}

impl Flows for FakeFlows {
    fn cut(&mut self, ips: &[IpAddr]) -> Result<u64, FlowsError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(ips);
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let check = |stderr: &str, expected: Option<u64>| assert_eq!(deleted_count(stderr), expected, "{stderr}");
        check("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n", Some(0));
        check("conntrack v1.4.7 (conntrack-tools): 12 flow entries have been deleted.\n", Some(12));
        check("conntrack v1.4.7 (conntrack-tools): Operation not permitted\n", None);
        check("", None);
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let e = ConntrackCli::new("/nonexistent/conntrack").unwrap_err();
        assert!(e.to_string().starts_with("cannot run /nonexistent/conntrack:"), "{e}");
    }

    #[test]
    fn deletes_in_a_private_network_namespace() {
        // conntrack runs inside a namespace of its own: the machine's table is never touched.
        let ns = Netns::new();
        let mut cli = ConntrackCli::in_netns("conntrack", &ns.0).unwrap();
        assert_eq!(cli.cut(&["10.99.0.1".parse().unwrap(), "fd00::99".parse().unwrap()]).unwrap(), 0);
        let e = ConntrackCli::in_netns("conntrack", "nf-no-such-netns").unwrap_err();
        assert!(e.to_string().contains("nf-no-such-netns"), "{e}");
    }

    /// A scratch network namespace, deleted on drop (also when the test fails).
    struct Netns(String);

    impl Netns {
        fn new() -> Netns {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!("nfct{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
            let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success());
            assert!(matches!(ok, Ok(true)), "ip netns add {name}");
            Netns(name)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
}
