//! Where the kernel judges what: one node's compiled program applied in a
//! node namespace wired to pod namespaces by veth pairs, and UDP datagrams
//! sent between them. Each probe between a pod and a node is also a flow of
//! the model: the hooks it crosses on the node (counted by a witness table)
//! must be the ones [`interp::hops`] lists, and the interpreter's verdict the
//! kernel's. Needs root, ip and nft; skipped with a notice otherwise.
//!
//! The node routes to its pods through veths (like a routed CNI) and holds
//! a gateway address inside its pod CIDR, 10.244.1.1, as a bridge CNI's
//! bridge does: the node's packets to its pods (kubelet probes) leave from
//! it. Service addresses are local to the node, the way IPVS holds
//! ClusterIPs on kube-ipvs0, and DNATed in prerouting, the way kube-proxy's
//! iptables and nftables modes rewrite them.
//!
//! ```text
//!  pod-a ns: eth0 10.244.1.11 (x/a), 10.244.1.13 (x/c)
//!  pod-b ns: eth0 10.244.1.12 (x/b), 10.244.1.99 (no pod: not programmed)
//!  node  ns: va, vb (to the pods), up0 172.18.0.2 (InternalIP),
//!            lo 10.244.1.1 (gateway), 10.96.0.10-12 (Services)
//!  (and the same in IPv6 on node-1: fd00:10:244:1::11, ::12, ::13, ::99,
//!   gateway fd00:10:244:1::1)
//!  remote ns: eth0 172.18.0.3 (node-2), lo 10.244.2.11 (x/r, a pod of node-2)
//! ```
//!
//! What this cannot show: IPVS itself, which rewrites a ClusterIP only at
//! input (priority 99) and re-sends the packet through output and
//! postrouting. Configuring it needs ipvsadm (or its generic netlink
//! protocol), which this machine does not have. The DNAT cases below show
//! the property that matters for it: egress is judged on the address the
//! packet is finally delivered to, at postrouting (routed on) or at input
//! priority 110 (delivered to the node), both after IPVS's hooks.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::Netns;
use netfence::apply::{Kernel, NftKernel};
use netfence::eval::{Endpoint, EndpointError, Flow};
use netfence::model::{Cluster, Family, Protocol};
use netfence::nft::{interp, Hook};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: "fd00:18::2"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDRs: [10.244.2.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}]}
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
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.13, podIPs: [{ip: 10.244.1.13}, {ip: "fd00:10:244:1::13"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: r, namespace: x, labels: {pod: r}}
spec: {nodeName: node-2}
status: {podIP: 10.244.2.11}
---
# x/a may send to x/b on 80, to the node on 8080, and to the Service
# range on 80 (which, judged after DNAT, opens nothing by itself).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{protocol: UDP, port: 80}]
    - to: [{ipBlock: {cidr: 172.18.0.2/32}}]
      ports: [{protocol: UDP, port: 8080}]
    - to: [{ipBlock: {cidr: 10.96.0.0/12}}]
      ports: [{protocol: UDP, port: 80}]
---
# x/b admits x/a only (and, as every pod, its own node).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
"#;

/// Service addresses and their backends, DNATed in prerouting.
const SERVICES: &str = "
table ip kube {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.10 udp dport 80 dnat to 10.244.1.12
        ip daddr 10.96.0.11 udp dport 8080 dnat to 172.18.0.2
        ip daddr 10.96.0.12 udp dport 80 dnat to 10.244.2.11
    }
}
";

/// Run `ip -n NS ARGS`; panic with its error when it fails.
fn ip(ns: &Netns, args: &str) {
    let out = Command::new("ip").args(["-n", &ns.name]).args(args.split_whitespace()).output().expect("run ip");
    assert!(out.status.success(), "ip -n {} {args}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
}

fn sysctl(ns: &Netns, setting: &str) {
    let out = Command::new("ip").args(["netns", "exec", &ns.name, "sysctl", "-qw", setting]).output().expect("run sysctl");
    assert!(out.status.success(), "sysctl {setting}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The namespaces of the picture above, wired; removed on drop.
struct Lab {
    node: Netns,
    pod_a: Netns,
    pod_b: Netns,
    remote: Netns,
}

impl Lab {
    fn new(test: &str) -> Option<Lab> {
        let lab = Lab { node: Netns::new(test)?, pod_a: Netns::new(test)?, pod_b: Netns::new(test)?, remote: Netns::new(test)? };
        let (node, a, b, r) = (&lab.node, &lab.pod_a, &lab.pod_b, &lab.remote);
        for ns in [node, a, b, r] {
            ip(ns, "link set lo up");
            // No duplicate address detection: addresses usable at once.
            sysctl(ns, "net.ipv6.conf.all.accept_dad=0");
            sysctl(ns, "net.ipv6.conf.default.accept_dad=0");
        }
        sysctl(node, "net.ipv4.ip_forward=1");
        sysctl(node, "net.ipv6.conf.all.forwarding=1");
        // On lo: this kernel has no dummy interfaces; any local address
        // is as local as another.
        for addr in ["10.244.1.1/32", "10.96.0.10/32", "10.96.0.11/32", "10.96.0.12/32", "fd00:10:244:1::1/128"] {
            ip(node, &format!("addr add {addr} dev lo"));
        }
        let pods = [(a, "va", ["10.244.1.11", "10.244.1.13", "fd00:10:244:1::11", "fd00:10:244:1::13"]), (b, "vb", ["10.244.1.12", "10.244.1.99", "fd00:10:244:1::12", "fd00:10:244:1::99"])];
        for (pod, dev, addrs) in pods {
            ip(node, &format!("link add {dev} type veth peer name eth0 netns {}", pod.name));
            // IPv6 neighbours answer only for their interface's addresses:
            // the pods' IPv6 gateway is a link-local of the veth.
            ip(node, &format!("addr add fe80::1/64 dev {dev}"));
            ip(node, &format!("link set {dev} up"));
            ip(pod, "link set eth0 up");
            for addr in addrs {
                let (len, gw) = if addr.contains(':') { (128, "fd00:10:244:1::1") } else { (32, "10.244.1.1") };
                ip(pod, &format!("addr add {addr}/{len} dev eth0"));
                ip(node, &format!("route add {addr}/{len} dev {dev} src {gw}"));
            }
            ip(pod, "route add 10.244.1.1/32 dev eth0");
            ip(pod, "route add default via 10.244.1.1 dev eth0");
            ip(pod, "-6 route add default via fe80::1 dev eth0");
        }
        ip(node, &format!("link add up0 type veth peer name eth0 netns {}", r.name));
        ip(node, "addr add 172.18.0.2/24 dev up0");
        ip(node, "link set up0 up");
        ip(node, "route add 10.244.2.0/24 via 172.18.0.3");
        ip(r, "addr add 172.18.0.3/24 dev eth0");
        ip(r, "addr add 10.244.2.11/32 dev lo");
        ip(r, "link set eth0 up");
        ip(r, "route add 10.244.1.0/24 via 172.18.0.2");
        let (ok, out) = node.nft(&["-f", "-"], SERVICES);
        assert!(ok, "{out}");
        Some(lab)
    }

    fn ns(&self, name: &str) -> &Netns {
        match name {
            "node" => &self.node,
            "pod-a" => &self.pod_a,
            "pod-b" => &self.pod_b,
            "remote" => &self.remote,
            _ => panic!("no namespace {name}"),
        }
    }
}

/// Run `f` on a thread of its own inside namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid namespace fd; setns changes this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// One datagram: sent from `from` to `to`, expected (or not) at `at`, the
/// address it is delivered to after any DNAT.
struct Probe {
    src: &'static str,
    from: &'static str,
    to: &'static str,
    dst: &'static str,
    at: &'static str,
    delivered: bool,
    why: &'static str,
}

/// Whether the datagram, sent from source port `sport`, arrives; waits
/// `wait` for it.
fn deliver(lab: &Lab, p: &Probe, sport: u16, wait: Duration) -> bool {
    let token = format!("{} -> {}", p.from, p.to);
    let at: SocketAddr = p.at.parse().expect("probe address");
    let (ready, is_ready) = mpsc::channel();
    let want = token.clone();
    let listener = in_netns(lab.ns(p.dst), move || {
        let s = UdpSocket::bind(at).unwrap_or_else(|e| panic!("bind {at}: {e}"));
        s.set_read_timeout(Some(wait)).expect("timeout");
        ready.send(()).expect("ready");
        let mut buf = [0u8; 128];
        while let Ok(n) = s.recv(&mut buf) {
            if buf[..n] == *want.as_bytes() {
                return true;
            }
        }
        false
    });
    is_ready.recv().expect("listener ready");
    let (from, to): (IpAddr, SocketAddr) = (p.from.parse().expect("from"), p.to.parse().expect("to"));
    in_netns(lab.ns(p.src), move || {
        let s = UdpSocket::bind((from, sport)).unwrap_or_else(|e| panic!("bind {from}: {e}"));
        // A drop on the node's own output path is EPERM here: not delivered.
        let _ = s.send_to(token.as_bytes(), to);
    })
    .join()
    .expect("sender");
    listener.join().expect("listener")
}

const PROBES: &[Probe] = &[
    // Egress, judged on the real destination.
    Probe { src: "pod-a", from: "10.244.1.11", to: "10.244.1.12:80", dst: "pod-b", at: "10.244.1.12:80", delivered: true, why: "a -> b allowed both ways" },
    Probe { src: "pod-a", from: "10.244.1.11", to: "10.244.1.12:81", dst: "pod-b", at: "10.244.1.12:81", delivered: false, why: "a's egress at postrouting: port 81 not allowed" },
    Probe { src: "pod-a", from: "10.244.1.11", to: "10.96.0.10:80", dst: "pod-b", at: "10.244.1.12:80", delivered: true, why: "Service DNATed to b: egress judged on b" },
    Probe { src: "pod-a", from: "10.244.1.11", to: "10.96.0.12:80", dst: "remote", at: "10.244.2.11:80", delivered: false, why: "Service address allowed, its backend r is not" },
    Probe { src: "pod-a", from: "10.244.1.11", to: "10.96.0.11:8080", dst: "node", at: "172.18.0.2:8080", delivered: true, why: "Service DNATed to the node: egress_local judges the node's address" },
    Probe { src: "pod-a", from: "10.244.1.11", to: "172.18.0.2:8080", dst: "node", at: "172.18.0.2:8080", delivered: true, why: "a -> node on 8080 allowed (input)" },
    Probe { src: "pod-a", from: "10.244.1.11", to: "172.18.0.2:9090", dst: "node", at: "172.18.0.2:9090", delivered: false, why: "a's egress at input: port 9090 not allowed" },
    Probe { src: "pod-a", from: "10.244.1.11", to: "10.244.2.11:80", dst: "remote", at: "10.244.2.11:80", delivered: false, why: "a's egress to a remote pod, at postrouting" },
    Probe { src: "pod-a", from: "10.244.1.11", to: "172.18.0.3:8080", dst: "remote", at: "172.18.0.3:8080", delivered: false, why: "a's egress to another node, at postrouting" },
    // The node's own traffic is not policed.
    Probe { src: "node", from: "172.18.0.2", to: "172.18.0.2:9090", dst: "node", at: "172.18.0.2:9090", delivered: true, why: "the node to itself, through loopback" },
    Probe { src: "node", from: "172.18.0.2", to: "10.244.2.11:80", dst: "remote", at: "10.244.2.11:80", delivered: true, why: "the node to a remote pod" },
    // Ingress: the node's own addresses pass, no pod's does.
    Probe { src: "node", from: "10.244.1.1", to: "10.244.1.12:80", dst: "pod-b", at: "10.244.1.12:80", delivered: true, why: "probe from the gateway address in the pod CIDR: fib saddr type local" },
    Probe { src: "node", from: "172.18.0.2", to: "10.244.1.12:80", dst: "pod-b", at: "10.244.1.12:80", delivered: true, why: "from the InternalIP: fib saddr type local" },
    Probe { src: "pod-a", from: "10.244.1.13", to: "10.244.1.12:80", dst: "pod-b", at: "10.244.1.12:80", delivered: false, why: "c -> b on the same node is no node traffic" },
    Probe { src: "remote", from: "10.244.2.11", to: "10.244.1.12:80", dst: "pod-b", at: "10.244.1.12:80", delivered: false, why: "a remote pod is no node traffic" },
    Probe { src: "remote", from: "172.18.0.3", to: "10.244.1.12:80", dst: "pod-b", at: "10.244.1.12:80", delivered: false, why: "another node's address is not this node's" },
    // Fail closed on an address in the pod CIDR that no programmed pod holds.
    Probe { src: "pod-b", from: "10.244.1.99", to: "10.244.1.13:80", dst: "pod-a", at: "10.244.1.13:80", delivered: false, why: "egress fails closed at postrouting" },
    Probe { src: "pod-b", from: "10.244.1.99", to: "172.18.0.2:8080", dst: "node", at: "172.18.0.2:8080", delivered: false, why: "egress_local fails closed at input" },
    Probe { src: "remote", from: "10.244.2.11", to: "10.244.1.99:80", dst: "pod-b", at: "10.244.1.99:80", delivered: false, why: "ingress fails closed" },
    Probe { src: "pod-b", from: "10.244.1.12", to: "10.244.1.13:80", dst: "pod-a", at: "10.244.1.13:80", delivered: true, why: "c is not isolated, b's egress neither" },
    // The same in IPv6, where fib is another kernel module (nft_fib_ipv6).
    Probe { src: "pod-a", from: "fd00:10:244:1::11", to: "[fd00:10:244:1::12]:80", dst: "pod-b", at: "[fd00:10:244:1::12]:80", delivered: true, why: "a -> b allowed both ways" },
    Probe { src: "pod-a", from: "fd00:10:244:1::11", to: "[fd00:10:244:1::12]:81", dst: "pod-b", at: "[fd00:10:244:1::12]:81", delivered: false, why: "a's egress: port 81 not allowed" },
    Probe { src: "node", from: "fd00:10:244:1::1", to: "[fd00:10:244:1::12]:80", dst: "pod-b", at: "[fd00:10:244:1::12]:80", delivered: true, why: "from the gateway address in the pod CIDR: fib saddr type local" },
    Probe { src: "pod-a", from: "fd00:10:244:1::13", to: "[fd00:10:244:1::12]:80", dst: "pod-b", at: "[fd00:10:244:1::12]:80", delivered: false, why: "c -> b on the same node is no node traffic" },
    Probe { src: "pod-b", from: "fd00:10:244:1::99", to: "[fd00:10:244:1::13]:80", dst: "pod-a", at: "[fd00:10:244:1::13]:80", delivered: false, why: "egress fails closed at postrouting" },
];

/// A table counting, on every hook, the packets from source port `sport`,
/// before anything else runs (priority -300): which hooks a packet crosses.
fn witness(sport: u16) -> String {
    let chains: String = Hook::ALL
        .iter()
        .map(|h| format!("chain {0} {{ type filter hook {0} priority -300; policy accept; udp sport {sport} counter; }}\n", h.name()))
        .collect();
    format!("table inet witness {{}}\ndelete table inet witness\ntable inet witness {{\n{chains}}}\n")
}

/// The hooks whose witness chain counted a packet, in the order they ran
/// (a packet crosses each hook once on one node).
fn witnessed(node: &Netns) -> Vec<Hook> {
    let (ok, out) = node.nft(&["-j", "list", "table", "inet", "witness"], "");
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j");
    let counted = |h: &Hook| {
        v["nftables"].as_array().expect("listing").iter().any(|o| {
            let r = &o["rule"];
            r["chain"] == h.name() && r["expr"].as_array().is_some_and(|e| e.iter().any(|x| x["counter"]["packets"].as_u64() > Some(0)))
        })
    };
    // Hook::ALL is the order of a forwarded packet; a packet the node sends
    // to itself crosses output and postrouting before prerouting and input.
    let mut hooks: Vec<Hook> = Hook::ALL.into_iter().filter(counted).collect();
    if hooks.contains(&Hook::Output) {
        hooks.sort_by_key(|h| [Hook::Output, Hook::Postrouting, Hook::Prerouting, Hook::Forward, Hook::Input].iter().position(|x| x == h));
    }
    hooks
}

/// The model's endpoint for an address of the lab: a pod, a node, or none
/// (the gateway address, a Service, an address no pod holds).
fn endpoint(c: &Cluster, addr: IpAddr) -> Option<Endpoint> {
    match Endpoint::parse(c, &addr.to_string()) {
        Ok(e @ (Endpoint::Node(_) | Endpoint::NodeAddr(..))) => Some(e),
        Err(EndpointError::IpOfPod(_, key)) => Endpoint::parse(c, &key).ok(),
        _ => None,
    }
}

/// The probe as a flow of the model, when both ends are pods or nodes and
/// nothing rewrites the destination (the model has no Services).
fn flow(c: &Cluster, p: &Probe) -> Option<Flow> {
    let (to, at): (SocketAddr, SocketAddr) = (p.to.parse().ok()?, p.at.parse().ok()?);
    (to == at).then_some(())?;
    let flow = Flow { src: endpoint(c, p.from.parse().ok()?)?, dst: endpoint(c, to.ip())?, protocol: Protocol::Udp, port: to.port(), family: None };
    Some(flow)
}

/// The kernel lab against the model: node-1's program drops exactly what
/// the probes expect; every packet crosses node-1's hooks exactly as
/// [`interp::hops`] says; and the interpreter, given node-1's program (the
/// lab enforces nothing elsewhere), reaches the kernel's verdict.
#[test]
fn each_direction_is_judged_where_the_kernel_decides() {
    let Some(lab) = Lab::new("each_direction_is_judged_where_the_kernel_decides") else { return };
    let c = common::load_with(&[], CLUSTER);
    let mut modelled = 0;
    // Without netfence every probe arrives (what the program drops below,
    // it drops), and crosses the hooks the model says.
    for (i, p) in PROBES.iter().enumerate() {
        let sport = 40000 + i as u16;
        let (ok, out) = lab.node.nft(&["-f", "-"], &witness(sport));
        assert!(ok, "{out}");
        assert!(deliver(&lab, p, sport, Duration::from_secs(2)), "without netfence, {} -> {} does not arrive: the lab is broken", p.from, p.to);
        if let Some(f) = flow(&c, p) {
            let want: Vec<Hook> = interp::hops(&c, &f.src, &f.dst).into_iter().filter(|h| h.node == "node-1").map(|h| h.hook).collect();
            assert_eq!(witnessed(&lab.node), want, "{} -> {}: the hooks crossed on node-1", p.from, p.to);
            modelled += 1;
        }
    }
    assert!(modelled >= 12, "only {modelled} probes are flows of the model");

    let program = netfence::nft::compile(&c, &netfence::ir::resolve(&c), "node-1");
    let mut k = NftKernel::in_netns(&lab.node.name);
    k.apply(&netfence::nft::diff(None, &program)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(k.read_table(&program.table).unwrap().as_ref(), Some(&program), "read back");
    let mut wrong = Vec::new();
    for (i, p) in PROBES.iter().enumerate() {
        let wait = Duration::from_millis(if p.delivered { 2000 } else { 300 });
        let delivered = deliver(&lab, p, 41000 + i as u16, wait);
        if delivered != p.delivered {
            wrong.push(format!("{} -> {} (at {}): expected {}, {}", p.from, p.to, p.at, if p.delivered { "delivered" } else { "dropped" }, p.why));
        }
        if let Some(f) = flow(&c, p) {
            let family = Family::of(&p.from.parse().expect("from"));
            let t = interp::flow_verdict(&c, &|n| (n == "node-1").then_some(&program), &f, family).expect("both ends have the family");
            if t.allowed != delivered {
                wrong.push(format!("{} -> {}: the interpreter says {}, the kernel {}: {t:#?}", p.from, p.to, t.allowed, delivered));
            }
        }
    }
    assert!(wrong.is_empty(), "{}\n{program}", wrong.join("\n"));
}
