//! Real packets through real nftables in network namespaces. These tests
//! need root (CI has it); without it each prints why it skipped.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use netfence::dataplane::{Dataplane, Endpoint, ProbeSpec};
use netfence::model::{load_paths, Cluster, Family, Protocol};
use netfence::netns::{self, Netns};

/// One dataplane at a time: the machine has two cores, and probe timeouts
/// should measure the network, not the scheduler.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn privileged() -> bool {
    match netns::check_privileges() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

/// A fixture cluster, and the lock that keeps the test's dataplanes the
/// only ones; `None` (with a notice) without root.
fn setup(name: &str) -> Option<(MutexGuard<'static, ()>, Cluster)> {
    if !privileged() {
        return None;
    }
    Some((serial(), fixture(name)))
}

fn fixture(name: &str) -> Cluster {
    let path = format!("{}/fixtures/clusters/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    load_paths(&[path]).unwrap().0
}

/// An endpoint as the test format writes it.
fn endpoint(cluster: &Cluster, s: &str) -> Endpoint {
    Endpoint::parse(cluster, s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn no_ruleset(_: &str, _: &Netns) -> anyhow::Result<()> {
    Ok(())
}

/// Every endpoint of the cluster with its families: pods that take part,
/// nodes, and `externals`.
fn endpoints(c: &Cluster, externals: &[IpAddr]) -> Vec<(Endpoint, Vec<Family>)> {
    let families = |ips: &[IpAddr]| ips.iter().map(Family::of).collect::<Vec<_>>();
    let pods = c.pods.iter().enumerate().filter(|(_, p)| p.takes_part()).map(|(id, p)| (Endpoint::Pod(id), families(&p.ips)));
    let nodes = c.nodes.values().map(|n| (Endpoint::Node(n.name.clone()), families(&n.internal_ips)));
    let outside = externals.iter().map(|ip| (Endpoint::Ip(*ip), vec![Family::of(ip)]));
    pods.chain(nodes).chain(outside).collect()
}

/// Every flow from every endpoint to every endpoint, in each family both
/// have, for each protocol and port.
fn all_flows(endpoints: &[(Endpoint, Vec<Family>)], protocols: &[Protocol], ports: &[u16]) -> Vec<ProbeSpec> {
    let mut specs = Vec::new();
    for (from, from_families) in endpoints {
        for (to, to_families) in endpoints {
            for family in from_families.iter().filter(|f| to_families.contains(f)) {
                for &protocol in protocols {
                    for &port in ports {
                        specs.push(ProbeSpec { from: from.clone(), to: to.clone(), family: *family, protocol, port, via: None });
                    }
                }
            }
        }
    }
    specs
}

/// An install step that loads a hand-written ruleset with `nft -f` into
/// the namespace of each node named in `rulesets`.
fn nft_rulesets<'a>(rulesets: &'a [(&'a str, &'a str)]) -> impl FnMut(&str, &Netns) -> anyhow::Result<()> + 'a {
    move |node, ns| {
        let Some((_, ruleset)) = rulesets.iter().find(|(n, _)| *n == node) else { return Ok(()) };
        let mut child = ns.command("nft")?.args(["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().unwrap().write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "nft -f: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}

/// Probe `specs` and compare with `denied`; every miss is listed.
fn check(dp: &Dataplane, specs: &[ProbeSpec], denied: impl Fn(&ProbeSpec) -> bool) {
    let results = dp.probe_all(specs).unwrap();
    let misses: Vec<String> = specs
        .iter()
        .zip(&results)
        .filter(|(s, r)| r.allowed == denied(s))
        .map(|(s, r)| format!("{}: expected {}, {}", dp.describe(s), if denied(s) { "deny" } else { "allow" }, r.detail))
        .collect();
    assert!(misses.is_empty(), "{} of {} probes wrong:\n{}", misses.len(), specs.len(), misses.join("\n"));
    let denials = results.iter().filter(|r| !r.allowed).count();
    eprintln!("{} probes as expected ({denials} denied)", specs.len());
}

fn assert_removed(names: &[String]) {
    assert!(!names.is_empty());
    let listed = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    let left: Vec<&String> = names.iter().filter(|n| netns::exists(n) || listed.split_whitespace().any(|w| w == *n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// The host's own ruleset never sees the test's tables.
fn assert_host_ruleset_untouched() {
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("probe_test"));
}

/// On node-2 (x/b 10.244.2.11, y/b .21, z/b .31): node-2's pods may only
/// answer, never start a flow through the node, and three pods each lose
/// one port of one protocol. Replies must be seen as `established`, so an
/// SCTP INIT ACK that conntrack did not match to its INIT would be dropped.
const NODE2_RULESET: &str = "
table inet probe_test {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ct state established,related accept
        ct state invalid drop
        ip saddr 10.244.2.0/24 drop
        jump to_pods
    }
    chain output {
        type filter hook output priority 0; policy accept;
        ct state established,related accept
        jump to_pods
    }
    chain to_pods {
        ip daddr 10.244.2.11 tcp dport 81 drop
        ip daddr 10.244.2.21 udp dport 80 reject
        ip daddr 10.244.2.31 sctp dport 81 drop
    }
}
";

#[test]
fn standard_cluster_probes_see_exactly_the_drops() {
    let Some((_serial, cluster)) = setup("standard") else { return };
    let externals = [ip("192.0.2.10")];
    let specs = all_flows(
        &endpoints(&cluster, &externals),
        &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
        &[80, 81],
    );
    assert_eq!(specs.len(), 12 * 12 * 3 * 2);
    let open = Dataplane::build(&cluster, &externals, no_ruleset).unwrap();
    eprintln!("built {} namespaces: {:?}", open.netns_names().len(), open.timings);
    check(&open, &specs, |_| false);
    let mut names = open.netns_names();
    drop(open);

    // A fresh dataplane: conntrack would remember the open one's flows.
    let dp = Dataplane::build(&cluster, &externals, nft_rulesets(&[("node-2", NODE2_RULESET)])).unwrap();
    names.extend(dp.netns_names());
    let node2_pods = ["x/b", "y/b", "z/b"].map(|p| endpoint(&cluster, p));
    check(&dp, &specs, |s| {
        if s.from == s.to {
            return false; // never leaves the pod (or node)
        }
        let starts_on_node2 = node2_pods.contains(&s.from) && s.to != Endpoint::Node("node-2".into());
        let to_port = |pod: &Endpoint, protocol, port| s.to == *pod && s.protocol == protocol && s.port == port;
        starts_on_node2
            || to_port(&node2_pods[0], Protocol::Tcp, 81)
            || to_port(&node2_pods[1], Protocol::Udp, 80)
            || to_port(&node2_pods[2], Protocol::Sctp, 81)
    });
    assert_host_ruleset_untouched();
    drop(dp);
    assert_removed(&names);
}

#[test]
fn dual_stack_probes_each_family() {
    let Some((_serial, cluster)) = setup("dualstack") else { return };
    let externals = [ip("192.0.2.10"), ip("2001:db8::7")];
    let specs = all_flows(&endpoints(&cluster, &externals), &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp], &[80]);
    let pod = |s| endpoint(&cluster, s);
    assert!(specs.iter().any(|s| s.family == Family::IPv6 && s.to == pod("y/a")));
    let open = Dataplane::build(&cluster, &externals, no_ruleset).unwrap();
    check(&open, &specs, |_| false);
    let mut names = open.netns_names();
    drop(open);

    // IPv6 only: TCP to x/b (node-2), SCTP to x/a (node-1).
    let drop_v6 = |daddr: &str, proto: &str| {
        format!(
            "table inet probe_test {{
                chain forward {{ type filter hook forward priority 0; ip6 daddr {daddr} {proto} dport 80 drop; }}
                chain output {{ type filter hook output priority 0; ip6 daddr {daddr} {proto} dport 80 drop; }}
            }}"
        )
    };
    let (node1, node2) = (drop_v6("fd00:10:244:1::11", "sctp"), drop_v6("fd00:10:244:2::11", "tcp"));
    let dp = Dataplane::build(&cluster, &externals, nft_rulesets(&[("node-1", &node1), ("node-2", &node2)])).unwrap();
    names.extend(dp.netns_names());
    check(&dp, &specs, |s| {
        let to = |pod: Endpoint, protocol| s.to == pod && s.protocol == protocol;
        s.from != s.to
            && s.family == Family::IPv6
            && (to(pod("x/b"), Protocol::Tcp) || to(pod("x/a"), Protocol::Sctp))
    });
    drop(dp);
    assert_removed(&names);
}

#[test]
fn specs_naming_what_the_dataplane_lacks_are_errors() {
    let Some((_serial, cluster)) = setup("dualstack") else { return };
    let dp = Dataplane::build(&cluster, &[], no_ruleset).unwrap();
    let probe = |from: Endpoint, to: Endpoint, family| {
        let spec = ProbeSpec { from, to, family, protocol: Protocol::Tcp, port: 80, via: None };
        dp.probe_all(&[spec]).map(|_| ()).map_err(|e| e.to_string())
    };
    let y_b = || endpoint(&cluster, "y/b");
    assert_eq!(
        probe(endpoint(&cluster, "y/a"), y_b(), Family::IPv6),
        Err("cannot probe y/a -> y/b 80/TCP IPv6: pod y/b has no IPv6 address".into())
    );
    assert_eq!(
        probe(Endpoint::Ip(ip("192.0.2.10")), y_b(), Family::IPv4),
        Err("cannot probe 192.0.2.10 -> y/b 80/TCP IPv4: 192.0.2.10 is not among the external addresses the dataplane was built with".into())
    );
    assert_eq!(
        probe(Endpoint::Pod(99), y_b(), Family::IPv4),
        Err("cannot probe pod #99 -> y/b 80/TCP IPv4: no pod #99 in the cluster".into())
    );
    // A node's address is that node.
    assert_eq!(probe(Endpoint::Ip(ip("172.18.0.3")), y_b(), Family::IPv4), Ok(()));
}

#[test]
fn namespaces_are_removed_when_a_test_panics_midway() {
    let Some((_serial, cluster)) = setup("standard") else { return };
    let names = Mutex::new(Vec::new());
    eprintln!("a panic message follows: it is the point of this test");
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let dp = Dataplane::build(&cluster, &[], no_ruleset).unwrap();
        *names.lock().unwrap() = dp.netns_names();
        assert!(dp.netns_names().iter().all(|n| netns::exists(n)));
        panic!("midway");
    }));
    assert!(outcome.is_err());
    assert_removed(&names.into_inner().unwrap());
}

const SIGINT_CHILD: &str = "NETFENCE_TEST_SIGINT_CHILD";

#[test]
fn ctrl_c_removes_the_namespaces_and_exits_130() {
    if std::env::var_os(SIGINT_CHILD).is_some() {
        // The child: build, say which namespaces, wait to be interrupted.
        let dp = Dataplane::build(&fixture("standard"), &[], no_ruleset).unwrap();
        println!("NAMES {}", dp.netns_names().join(" "));
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        panic!("was not interrupted");
    }
    if !privileged() {
        return;
    }
    let _serial = serial();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "ctrl_c_removes_the_namespaces_and_exits_130", "--nocapture", "--test-threads=1"])
        .env(SIGINT_CHILD, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let names: Vec<String> = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.split_once("NAMES ").map(|(_, n)| n.split(' ').map(str::to_string).collect()))
        .expect("the child printed its namespaces");
    assert!(names.iter().all(|n| netns::exists(n)), "{names:?}");
    // SAFETY: signalling our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_removed(&names);
}
