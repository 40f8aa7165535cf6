//! Hairpin with real packets: a pod reaching itself through its own
//! Service gets through netfence's program even though NetworkPolicies
//! isolate it both ways and no rule admits it, while another pod reaching
//! it through the same Service is still judged (and denied); with the
//! hairpin rules taken out of the program the same connection fails, so the
//! rules are what allow it. Needs root, ip and nft; skipped with a notice
//! otherwise. Everything happens in private network namespaces.
//!
//! ```text
//!  pod-a ns: eth0 10.244.1.11, fd00:10:244:1::11 (x/a, listening on 8080)
//!  pod-b ns: eth0 10.244.1.12, fd00:10:244:1::12 (x/b)
//!  node  ns: va, vb (routes to the pods), lo 10.244.1.1, fd00:10:244:1::1
//!            a kube-proxy-like table: ClusterIPs 10.96.0.10 and fd00:96::10
//!            port 80 DNATed to x/a:8080 at dstnat, and the hairpin
//!            masquerade (source and destination x/a) at srcnat 100
//! ```

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::Netns;
use netfence::apply::{Kernel, NftKernel};
use netfence::eval::{Endpoint, Flow};
use netfence::model::{Family, Protocol};
use netfence::nft::{interp, Match, Program};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.11, podIPs: [{ip: 10.244.1.11}, {ip: "fd00:10:244:1::11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.12, podIPs: [{ip: 10.244.1.12}, {ip: "fd00:10:244:1::12"}]}
---
# x/a isolated both ways; its rules admit neither itself nor x/b on 8080.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 9999}]}]
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 9999}]}]
"#;

/// What kube-proxy does for a Service of x/a: DNAT at prerouting, and the
/// hairpin masquerade (kube-proxy marks a backend's own connections) at
/// srcnat 100, after netfence's judging chains (90, 95).
const KUBE_PROXY: &str = "
table inet kube {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.10 tcp dport 80 dnat ip to 10.244.1.11:8080
        ip6 daddr fd00:96::10 tcp dport 80 dnat ip6 to [fd00:10:244:1::11]:8080
    }
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.244.1.11 ip daddr 10.244.1.11 masquerade
        ip6 saddr fd00:10:244:1::11 ip6 daddr fd00:10:244:1::11 masquerade
    }
}
";

fn ip(ns: &Netns, args: &str) {
    let out = Command::new("ip").args(["-n", &ns.name]).args(args.split_whitespace()).output().expect("run ip");
    assert!(out.status.success(), "ip -n {} {args}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
}

fn sysctl(ns: &Netns, setting: &str) {
    let out = Command::new("ip").args(["netns", "exec", &ns.name, "sysctl", "-qw", setting]).output().expect("run sysctl");
    assert!(out.status.success(), "sysctl {setting}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Run `f` on a thread of its own inside namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid namespace fd; setns changes this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in namespace")
}

struct Lab {
    node: Netns,
    pod_a: Netns,
    pod_b: Netns,
    /// x/a's listeners (created in its namespace; kept open).
    _listeners: Vec<TcpListener>,
}

impl Lab {
    fn new(test: &str) -> Option<Lab> {
        let (node, pod_a, pod_b) = (Netns::new(test)?, Netns::new(test)?, Netns::new(test)?);
        for ns in [&node, &pod_a, &pod_b] {
            ip(ns, "link set lo up");
            sysctl(ns, "net.ipv6.conf.all.accept_dad=0");
            sysctl(ns, "net.ipv6.conf.default.accept_dad=0");
        }
        sysctl(&node, "net.ipv4.ip_forward=1");
        sysctl(&node, "net.ipv6.conf.all.forwarding=1");
        for addr in ["10.244.1.1/32", "fd00:10:244:1::1/128"] {
            ip(&node, &format!("addr add {addr} dev lo"));
        }
        for (pod, dev, addrs) in [(&pod_a, "va", ["10.244.1.11", "fd00:10:244:1::11"]), (&pod_b, "vb", ["10.244.1.12", "fd00:10:244:1::12"])] {
            ip(&node, &format!("link add {dev} type veth peer name eth0 netns {}", pod.name));
            ip(&node, &format!("addr add fe80::1/64 dev {dev}"));
            ip(&node, &format!("link set {dev} up"));
            ip(pod, "link set eth0 up");
            for addr in addrs {
                let (len, gw) = if addr.contains(':') { (128, "fd00:10:244:1::1") } else { (32, "10.244.1.1") };
                ip(pod, &format!("addr add {addr}/{len} dev eth0"));
                ip(&node, &format!("route add {addr}/{len} dev {dev} src {gw}"));
            }
            ip(pod, "route add 10.244.1.1/32 dev eth0");
            ip(pod, "route add default via 10.244.1.1 dev eth0");
            ip(pod, "-6 route add default via fe80::1 dev eth0");
        }
        let (ok, out) = node.nft(&["-f", "-"], KUBE_PROXY);
        assert!(ok, "{out}");
        let listeners = in_netns(&pod_a, || {
            ["10.244.1.11:8080", "[fd00:10:244:1::11]:8080"].map(|a| TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"))).into()
        });
        Some(Lab { node, pod_a, pod_b, _listeners: listeners })
    }

    /// Does a TCP connection from `from` (a pod's namespace) to `to` open?
    /// The listener's backlog completes the handshake; nothing accepts.
    fn connects(&self, from: &Netns, to: &str) -> bool {
        let to: SocketAddr = to.parse().expect("address");
        in_netns(from, move || TcpStream::connect_timeout(&to, Duration::from_millis(1500)).is_ok())
    }
}

/// The program without its hairpin rules: what proves they are what
/// allows the connection.
fn without_hairpin(p: &Program) -> Program {
    let mut q = p.clone();
    for c in q.chains.values_mut() {
        c.rules.retain(|r| !r.matches.iter().any(|m| matches!(m, Match::AddrPair { .. })));
    }
    q
}

#[test]
fn a_pod_reaches_itself_through_its_service_and_no_one_else_does() {
    let Some(lab) = Lab::new("a_pod_reaches_itself_through_its_service_and_no_one_else_does") else { return };
    let c = common::load_with(&[], CLUSTER);
    let probes = [
        (&lab.pod_a, "10.96.0.10:80", "x/a", "x/a"),
        (&lab.pod_a, "[fd00:96::10]:80", "x/a", "x/a"),
        (&lab.pod_b, "10.96.0.10:80", "x/b", "x/a"),
        (&lab.pod_b, "[fd00:96::10]:80", "x/b", "x/a"),
    ];
    // Without netfence the lab works: every connection opens.
    for (from, to, who, _) in probes {
        assert!(lab.connects(from, to), "without netfence, {who} -> {to} does not open: the lab is broken");
    }
    let program = netfence::nft::compile(&c, &netfence::ir::resolve(&c), "node-1");
    assert_eq!(program.sets["hairpin4"].elements.len(), 2, "{program}");
    let mut k = NftKernel::in_netns(&lab.node.name);
    k.apply(&netfence::nft::diff(None, &program)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(k.read_table(&program.table).unwrap().as_ref(), Some(&program), "read back");
    let mut wrong = Vec::new();
    for (from, to, who, dst) in probes {
        let hairpin = who == dst;
        let opened = lab.connects(from, to);
        if opened != hairpin {
            wrong.push(format!("{who} -> {to} (x/a:8080): {}", if opened { "opened" } else { "did not open" }));
        }
        // The model agrees: the flow after DNAT, through the Service.
        let flow = Flow {
            src: Endpoint::parse(&c, who).expect("pod"),
            dst: Endpoint::parse(&c, dst).expect("pod"),
            protocol: Protocol::Tcp,
            port: 8080,
            family: None,
        };
        let family = if to.starts_with('[') { Family::IPv6 } else { Family::IPv4 };
        let t = interp::flow_verdict_via_service(&c, &|n| (n == "node-1").then_some(&program), &flow, family).expect("both have the family");
        if t.allowed != opened {
            wrong.push(format!("{who} -> {to}: the interpreter says {}, the kernel {opened}", t.allowed));
        }
    }
    assert!(wrong.is_empty(), "{}\n{program}", wrong.join("\n"));

    // The hairpin rules out: the pod's own connection is denied too.
    let stripped = without_hairpin(&program);
    assert!(stripped.rule_count() < program.rule_count());
    k.apply(&netfence::nft::diff(Some(&program), &stripped)).unwrap_or_else(|e| panic!("{e}"));
    for to in ["10.96.0.10:80", "[fd00:96::10]:80"] {
        assert!(!lab.connects(&lab.pod_a, to), "x/a -> {to} opens without the hairpin rules: something else allows it\n{stripped}");
    }
    // And back in: allowed again.
    k.apply(&netfence::nft::diff(Some(&stripped), &program)).unwrap_or_else(|e| panic!("{e}"));
    assert!(lab.connects(&lab.pod_a, "10.96.0.10:80"));
}
