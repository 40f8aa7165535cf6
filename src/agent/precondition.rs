//! What the node must provide for its rules to see pod traffic, checked
//! over and over.
//!
//! netfence judges in the inet hooks (prerouting, input, postrouting). On a
//! CNI that puts a node's pods on one Linux bridge (the `bridge` plugin,
//! Flannel, kubenet, ...), traffic between two pods of the node is bridged,
//! not routed: it meets those hooks only through br_netfilter, with
//! `net.bridge.bridge-nf-call-iptables` (IPv4) and `-ip6tables` (IPv6) on,
//! both per network namespace. Without them same-node pod-to-pod traffic
//! bypasses every rule, silently. So: a bridge holding an address that
//! overlaps the node's pod CIDRs or one of its pods' addresses means bridged
//! pod traffic, and then the module and the sysctl of each family the
//! bridge carries must be on.
//!
//! A failure makes the agent unready (`/readyz` says why), sets
//! `netfence_precondition_failed{reason}` to 1 and is logged; it clears as
//! soon as a later check passes. The agent keeps applying its rules
//! meanwhile: they still judge routed traffic (other nodes, the outside,
//! the node itself), and never let through more than without them.
//!
//! [`judge`] is pure; [`read_facts`] reads the namespace the calling thread
//! is in (interfaces through `getifaddrs`, bridges by their ethtool driver
//! name, sysctls under /proc/sys/net/bridge), never sysfs, which shows the
//! namespace it was mounted in.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::metrics::Metrics;
use super::Store;
use crate::model::Family;

/// The reasons, as the metric's `reason` label.
pub const BR_NETFILTER_MISSING: &str = "br_netfilter_missing";
pub const CALL_IPTABLES_OFF: &str = "bridge_nf_call_iptables_off";
pub const CALL_IP6TABLES_OFF: &str = "bridge_nf_call_ip6tables_off";
pub const CHECK_FAILED: &str = "check_failed";
pub const REASONS: [&str; 4] = [BR_NETFILTER_MISSING, CALL_IPTABLES_OFF, CALL_IP6TABLES_OFF, CHECK_FAILED];

/// What the node's network namespace says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Linux bridges and their addresses (with prefix length).
    pub bridges: Vec<Bridge>,
    /// None: the br_netfilter module is not loaded (no /proc/sys/net/bridge).
    pub br_netfilter: Option<BrNetfilter>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub addrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrNetfilter {
    pub call_iptables: bool,
    pub call_ip6tables: bool,
}

/// One failed precondition: the metric label and what to tell people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

/// The preconditions that fail, given the namespace's `facts` and the
/// node's pod networks (its pod CIDRs, and its pods' addresses).
pub fn judge(facts: &Facts, pod_nets: &[IpNet]) -> Vec<Failure> {
    let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
    let carried = |family: Family| -> Vec<String> {
        facts
            .bridges
            .iter()
            .flat_map(|b| b.addrs.iter().map(move |a| (b, a)))
            .filter(|(_, a)| Family::of_net(a) == family && pod_nets.iter().any(|p| overlaps(a, p)))
            .map(|(b, a)| format!("{} ({a})", b.name))
            .collect()
    };
    let bypass = "bridged pod traffic (between pods of this node) bypasses every netfilter hook and so every policy";
    let mut failures = Vec::new();
    for (family, sysctl, reason) in [
        (Family::IPv4, "net.bridge.bridge-nf-call-iptables", CALL_IPTABLES_OFF),
        (Family::IPv6, "net.bridge.bridge-nf-call-ip6tables", CALL_IP6TABLES_OFF),
    ] {
        let bridges = carried(family);
        if bridges.is_empty() {
            continue;
        }
        let bridges = bridges.join(", ");
        match facts.br_netfilter {
            None => {
                if !failures.iter().any(|f: &Failure| f.reason == BR_NETFILTER_MISSING) {
                    failures.push(Failure {
                        reason: BR_NETFILTER_MISSING,
                        message: format!("bridge {bridges} carries pod addresses but the br_netfilter module is not loaded: {bypass} (modprobe br_netfilter, then {sysctl}=1)"),
                    });
                }
            }
            Some(b) => {
                let on = if family == Family::IPv4 { b.call_iptables } else { b.call_ip6tables };
                if !on {
                    failures.push(Failure {
                        reason,
                        message: format!("bridge {bridges} carries {family} pod addresses but {sysctl} is 0: {bypass} (sysctl -w {sysctl}=1)"),
                    });
                }
            }
        }
    }
    failures
}

/// The node's pod networks as the index knows them: its pod CIDRs and the
/// addresses of its pods (some IPAMs hand out addresses outside podCIDRs).
pub fn pod_nets(store: &Store, node: &str) -> Vec<IpNet> {
    store.with_index(|index| {
        let cluster_node = index.node(node).map(|n| n.pod_cidrs.clone()).unwrap_or_default();
        let pods = index.pods_on(node).filter(|p| !p.host_network).flat_map(|p| p.ips.iter().copied().map(IpNet::from));
        cluster_node.into_iter().chain(pods).collect()
    })
}

/// Read [`Facts`] in the calling thread's network namespace.
pub fn read_facts() -> io::Result<Facts> {
    let mut bridges: Vec<Bridge> = Vec::new();
    // A socket in this namespace, for the ethtool ioctl.
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    for (name, addr) in interface_addrs()? {
        if !is_bridge(&sock, &name) {
            continue;
        }
        match bridges.iter_mut().find(|b| b.name == name) {
            Some(b) => b.addrs.extend(addr),
            None => bridges.push(Bridge { name, addrs: addr.into_iter().collect() }),
        }
    }
    let read = |key: &str| std::fs::read_to_string(format!("/proc/sys/net/bridge/{key}"));
    let br_netfilter = match (read("bridge-nf-call-iptables"), read("bridge-nf-call-ip6tables")) {
        (Ok(v4), Ok(v6)) => Some(BrNetfilter { call_iptables: v4.trim() != "0", call_ip6tables: v6.trim() != "0" }),
        (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => None,
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    Ok(Facts { bridges, br_netfilter })
}

/// Every interface with each of its addresses (None for one without).
fn interface_addrs() -> io::Result<Vec<(String, Option<IpNet>)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        // SAFETY: the address and netmask, when present, are sockaddrs of
        // the family they say.
        let net = unsafe { sockaddr_ip(ifa.ifa_addr) }
            .zip(unsafe { sockaddr_ip(ifa.ifa_netmask) })
            .and_then(|(ip, mask)| IpNet::with_netmask(ip, mask).ok());
        out.push((name, net));
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// # Safety
/// `sa` is null or points to a sockaddr valid for its family's size.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match i32::from((*sa).sa_family) {
        libc::AF_INET => {
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
        }
        libc::AF_INET6 => {
            let sin6 = &*(sa as *const libc::sockaddr_in6);
            Some(IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

/// Is `name` a Linux bridge? Its ethtool driver is "bridge".
fn is_bridge(sock: &std::os::fd::OwnedFd, name: &str) -> bool {
    use std::os::fd::AsRawFd;
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 32 * 4 + 12 + 4 * 5] };
    // SAFETY: an all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return false;
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: SIOCETHTOOL reads ifr and writes at most sizeof(DrvInfo) into info.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    rc == 0 && info.driver.split(|b| *b == 0).next() == Some(b"bridge".as_slice())
}

/// Check every `interval` until the task is aborted: read the facts (on a
/// blocking thread), judge them against what the index says about `node`,
/// publish to `metrics` and log each change.
pub fn spawn(node: String, store: Store, metrics: Arc<Metrics>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Vec<Failure> = Vec::new();
        loop {
            let facts = tokio::task::spawn_blocking(read_facts).await;
            let failures = match facts {
                Ok(Ok(facts)) => judge(&facts, &pod_nets(&store, &node)),
                Ok(Err(e)) => vec![Failure { reason: CHECK_FAILED, message: format!("cannot read the node's bridges and br_netfilter sysctls: {e}") }],
                Err(e) => vec![Failure { reason: CHECK_FAILED, message: format!("the precondition check panicked: {e}") }],
            };
            if failures != last {
                for f in failures.iter().filter(|f| !last.contains(f)) {
                    tracing::error!(reason = f.reason, "precondition failed, unready: {}", f.message);
                }
                if failures.is_empty() {
                    tracing::info!("preconditions hold again");
                }
            }
            metrics.set_precondition_failures(&failures);
            last = failures;
            tokio::time::sleep(interval).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn facts(bridges: &[(&str, &[&str])], br: Option<(bool, bool)>) -> Facts {
        Facts {
            bridges: bridges.iter().map(|(n, a)| Bridge { name: n.to_string(), addrs: a.iter().map(|s| net(s)).collect() }).collect(),
            br_netfilter: br.map(|(v4, v6)| BrNetfilter { call_iptables: v4, call_ip6tables: v6 }),
        }
    }

    /// (bridges, br_netfilter, pod nets) -> reasons
    fn check(bridges: &[(&str, &[&str])], br: Option<(bool, bool)>, pods: &[&str], expected: &[&str]) {
        let pods: Vec<IpNet> = pods.iter().map(|s| net(s)).collect();
        let got: Vec<&str> = judge(&facts(bridges, br), &pods).iter().map(|f| f.reason).collect();
        assert_eq!(got, expected, "{bridges:?} {br:?} {pods:?}");
    }

    #[test]
    fn bridged_pods_need_br_netfilter_for_each_family_they_use() {
        let cidr = ["10.244.1.0/24", "fd00:10:244:1::/64"];
        let cni0: &[(&str, &[&str])] = &[("cni0", &["10.244.1.1/24", "fd00:10:244:1::1/64"])];
        check(cni0, Some((true, true)), &cidr, &[]);
        check(cni0, Some((false, true)), &cidr, &[CALL_IPTABLES_OFF]);
        check(cni0, Some((true, false)), &cidr, &[CALL_IP6TABLES_OFF]);
        check(cni0, Some((false, false)), &cidr, &[CALL_IPTABLES_OFF, CALL_IP6TABLES_OFF]);
        check(cni0, None, &cidr, &[BR_NETFILTER_MISSING]);
        // Only the families the bridge carries.
        check(&[("cni0", &["10.244.1.1/24"])], Some((true, false)), &cidr, &[]);
        // A pod address is enough when the node has no podCIDRs.
        check(&[("br-pods", &["192.168.7.1/24"])], Some((false, true)), &["192.168.7.9/32"], &[CALL_IPTABLES_OFF]);
        // A bridge wider than the pod CIDR carries it too.
        check(&[("br0", &["10.244.0.1/16"])], Some((false, true)), &cidr, &[CALL_IPTABLES_OFF]);
    }

    #[test]
    fn other_bridges_and_routed_cnis_need_nothing() {
        let cidr = ["10.244.1.0/24"];
        // docker0 beside a routed CNI; no bridge at all; a bridge without addresses.
        check(&[("docker0", &["172.17.0.1/16"])], Some((false, false)), &cidr, &[]);
        check(&[], None, &cidr, &[]);
        check(&[("br-empty", &[])], None, &cidr, &[]);
        // Nothing known about the node's pods yet: nothing to say.
        check(&[("cni0", &["10.244.1.1/24"])], None, &[], &[]);
    }

    #[test]
    fn messages_say_what_bypasses_and_how_to_fix_it() {
        let f = judge(&facts(&[("cni0", &["10.244.1.1/24"])], Some((false, true))), &[net("10.244.1.0/24")]);
        assert_eq!(
            f[0].message,
            "bridge cni0 (10.244.1.1/24) carries IPv4 pod addresses but net.bridge.bridge-nf-call-iptables is 0: bridged pod traffic (between pods of this node) bypasses every netfilter hook and so every policy (sysctl -w net.bridge.bridge-nf-call-iptables=1)"
        );
    }

    /// In a namespace of its own: a bridge with a pod CIDR's gateway and a
    /// port is found, and the sysctls are read from this namespace.
    #[test]
    fn facts_are_read_from_the_namespace() {
        if let Err(why) = crate::netns::check_privileges() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let ns = crate::netns::Netns::create("nfpre").unwrap();
        ns.ip_batch(
            "link add cni0 type bridge\nlink set cni0 up\naddr add 10.244.1.1/24 dev cni0\naddr add fd00:10:244:1::1/64 dev cni0 nodad\n\
             link add veth0 type veth peer name veth1\nlink set veth0 master cni0\naddr add 192.0.2.1/24 dev veth1\n",
        )
        .unwrap();
        let pods = [net("10.244.1.0/24"), net("fd00:10:244:1::/64")];
        let judged = |v4: &str, v6: &str| {
            ns.sysctl(&[("net/bridge/bridge-nf-call-iptables", v4), ("net/bridge/bridge-nf-call-ip6tables", v6)]).unwrap();
            let facts = ns.run(read_facts).unwrap().unwrap();
            let names: Vec<&str> = facts.bridges.iter().map(|b| b.name.as_str()).collect();
            assert_eq!(names, ["cni0"]);
            for addr in ["10.244.1.1/24", "fd00:10:244:1::1/64"] {
                assert!(facts.bridges[0].addrs.contains(&net(addr)), "{facts:?}");
            }
            judge(&facts, &pods).into_iter().map(|f| f.reason).collect::<Vec<_>>()
        };
        assert_eq!(judged("0", "1"), [CALL_IPTABLES_OFF]);
        assert_eq!(judged("1", "0"), [CALL_IP6TABLES_OFF]);
        assert!(judged("1", "1").is_empty());
    }
}
