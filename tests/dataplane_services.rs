//! Services with real packets: kube-proxy's nftables table
//! (`dataplane::kube_proxy`) installed beside netfence's compiled programs
//! in every node namespace, on each pod wiring, and checks through a
//! Service (`Check::via`) probed from the client to the ClusterIP or a
//! node's address at a nodePort, each Service port pinned to the check's
//! backend. What they prove (docs/policy-test-format-services.md):
//! - policy judges after DNAT: a ClusterIP connection the backend's policy
//!   denies fails, one it allows succeeds;
//! - NodePort with `externalTrafficPolicy: Cluster`: a backend on another
//!   node sees the entry node's address (admitted only by an ipBlock), one
//!   on the entry node the client; with `Local`: the client's address kept;
//! - a Service without endpoints refuses;
//! - hairpin (a pod through its own Service) is allowed although policies
//!   isolate the pod (the program's `hairpin4` set);
//! - control: with no netfence table every check with a backend connects,
//!   so kube-proxy's translation itself works on every wiring.
//!
//! Needs root; without it each test says it skipped. Namespaces are the
//! dataplane's (`nf<pid>-<n>`), removed on drop, also on failure.

use std::time::{Duration, Instant};

use netfence::apply::{Kernel, NftKernel};
use netfence::dataplane::{backend, Cni, Dataplane, ProbeOptions};
use netfence::eval::{Endpoint, Flow};
use netfence::ir;
use netfence::model::{Cluster, Family, Protocol};
use netfence::netns;
use netfence::policytest::format::At;
use netfence::policytest::service::{Entry, Via};
use netfence::policytest::Check;
use netfence::yaml::Pos;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.0.1.0/24, 'fd00:1::/64']}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: 'fd00:18::2'}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: [10.0.2.0/24, 'fd00:2::/64']}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}, {type: InternalIP, address: 'fd00:18::3'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {nodeName: n1}
status: {phase: Running, podIPs: [{ip: 10.0.1.10}, {ip: 'fd00:1::10'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: x, labels: {app: other}}
spec: {nodeName: n2}
status: {phase: Running, podIPs: [{ip: 10.0.2.10}, {ip: 'fd00:2::10'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: x, labels: {app: web}}
spec: {nodeName: n1}
status: {phase: Running, podIPs: [{ip: 10.0.1.20}, {ip: 'fd00:1::20'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: x, labels: {app: web}}
spec: {nodeName: n2}
status: {phase: Running, podIPs: [{ip: 10.0.2.20}, {ip: 'fd00:2::20'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: np-client, namespace: x, labels: {app: np-client}}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.0.1.30}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {type: NodePort, clusterIPs: [10.96.0.10, 'fd00:96::10'], ipFamilies: [IPv4, IPv6], selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: x}
spec: {type: NodePort, clusterIPs: [10.96.0.11, 'fd00:96::11'], ipFamilies: [IPv4, IPv6], externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30081}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec: {clusterIP: 10.96.0.12, selector: {app: nothing}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: x}
spec: {clusterIP: 10.96.0.13, selector: {app: web}, ports: [{name: dns, port: 53, targetPort: 5353, protocol: UDP}, {name: assoc, port: 9000, targetPort: 9001, protocol: SCTP}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    - podSelector: {matchLabels: {app: np-client}}
    - ipBlock: {cidr: 172.18.0.2/32}
    - ipBlock: {cidr: 203.0.113.7/32}
    - ipBlock: {cidr: 'fd00:18::2/128'}
    - ipBlock: {cidr: '2001:db8::7/128'}
    ports: [{port: 8080}, {port: 5353, protocol: UDP}, {port: 9001, protocol: SCTP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np-client-egress, namespace: x}
spec:
  podSelector: {matchLabels: {app: np-client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 172.18.0.0/24}}]
    ports: [{port: 30080}]
"#;

/// How the client reaches the Service.
#[derive(Clone, Copy)]
enum Via_ {
    ClusterIp,
    NodePort(&'static str),
    /// Not through a Service: the pod's own address.
    Direct,
}

struct Case {
    from: &'static str,
    service: &'static str,
    via: Via_,
    backend: Option<&'static str>,
    /// With netfence's programs.
    enforced: bool,
    /// Without them.
    control: bool,
    protocol: Protocol,
    family: Family,
}

const fn case(from: &'static str, service: &'static str, via: Via_, backend: Option<&'static str>, enforced: bool, control: bool) -> Case {
    Case { from, service, via, backend, enforced, control, protocol: Protocol::Tcp, family: Family::IPv4 }
}

/// A UDP or SCTP case, to `x/multi`'s port of that protocol.
const fn multi(from: &'static str, protocol: Protocol, backend: &'static str, enforced: bool) -> Case {
    Case { from, service: "x/multi", via: Via_::ClusterIp, backend: Some(backend), enforced, control: true, protocol, family: Family::IPv4 }
}

/// The same in IPv6.
const fn v6(c: Case) -> Case {
    Case { family: Family::IPv6, ..c }
}

const CASES: [Case; 28] = [
    // ClusterIP: the backend's policy judges the client.
    case("x/client", "x/web", Via_::ClusterIp, Some("x/web-1"), true, true),
    case("x/client", "x/web", Via_::ClusterIp, Some("x/web-2"), true, true),
    case("x/other", "x/web", Via_::ClusterIp, Some("x/web-1"), false, true),
    case("x/other", "x/web", Via_::ClusterIp, Some("x/web-2"), false, true),
    // A node's own connection to a ClusterIP (output hook): its address.
    case("node/n1", "x/web", Via_::ClusterIp, Some("x/web-2"), true, true),
    case("node/n2", "x/web", Via_::ClusterIp, Some("x/web-1"), false, true),
    // NodePort, Cluster: a backend on the entry node sees the client...
    case("203.0.113.7", "x/web", Via_::NodePort("n1"), Some("x/web-1"), true, true),
    case("203.0.113.8", "x/web", Via_::NodePort("n1"), Some("x/web-1"), false, true),
    // ...one on another node the entry node's address.
    case("203.0.113.8", "x/web", Via_::NodePort("n1"), Some("x/web-2"), true, true),
    case("203.0.113.7", "x/web", Via_::NodePort("n2"), Some("x/web-1"), false, true),
    // NodePort, Local: the client's address is kept (n2's is not admitted).
    case("203.0.113.7", "x/web-local", Via_::NodePort("n1"), Some("x/web-1"), true, true),
    case("203.0.113.7", "x/web-local", Via_::NodePort("n2"), Some("x/web-2"), true, true),
    case("203.0.113.8", "x/web-local", Via_::NodePort("n2"), Some("x/web-2"), false, true),
    // No endpoints: refused, policy or not.
    case("x/client", "x/empty", Via_::ClusterIp, None, false, false),
    // A plain check in the same run.
    case("x/client", "", Via_::Direct, Some("x/web-2"), true, true),
    // Hairpin: allowed although x/web-1 is isolated and admits only x/client.
    case("x/web-1", "x/web", Via_::ClusterIp, Some("x/web-1"), true, true),
    // UDP (echo) and SCTP (raw INIT / INIT ACK) through a ClusterIP.
    multi("x/client", Protocol::Udp, "x/web-2", true),
    multi("x/other", Protocol::Udp, "x/web-2", false),
    multi("x/client", Protocol::Sctp, "x/web-1", true),
    multi("x/other", Protocol::Sctp, "x/web-1", false),
    // A pod's egress to a NodePort of another node is judged on the node
    // address and nodePort (allowed here)...
    case("x/np-client", "x/web", Via_::NodePort("n2"), Some("x/web-2"), true, true),
    // ...but on its own node kube-proxy translates at prerouting, before
    // the egress hook: egress sees the backend, which it does not allow.
    case("x/np-client", "x/web", Via_::NodePort("n1"), Some("x/web-2"), false, true),
    // Local, from a pod of another node: kube-proxy short-circuits it to
    // any backend, unmasqueraded; one on the client's own node answers the
    // pod directly, not through the entry node, and the connection fails
    // with or without policy.
    case("x/client", "x/web-local", Via_::NodePort("n2"), Some("x/web-1"), false, false),
    // IPv6: kube-proxy's ip6 table.
    v6(case("x/client", "x/web", Via_::ClusterIp, Some("x/web-2"), true, true)),
    v6(case("x/other", "x/web", Via_::ClusterIp, Some("x/web-1"), false, true)),
    v6(case("2001:db8::8", "x/web", Via_::NodePort("n1"), Some("x/web-2"), true, true)),
    v6(case("2001:db8::7", "x/web", Via_::NodePort("n2"), Some("x/web-1"), false, true)),
    v6(case("2001:db8::8", "x/web-local", Via_::NodePort("n1"), Some("x/web-1"), false, true)),
];

/// Checks on vxlan that the wiring cannot carry, and why.
fn vxlan_unjudged(i: usize) -> Option<&'static str> {
    match i {
        // A node's own address to another node's pod.
        4 | 5 => Some("through the VXLAN device"),
        // Masqueraded from the VTEP address.
        8 | 9 | 21 | 25 | 26 => Some("VTEP address"),
        // Masqueraded by Flannel on the pod's node.
        20 | 22 => Some("Flannel masquerades pod"),
        _ => None,
    }
}

fn checks(cluster: &Cluster) -> Vec<Check> {
    CASES
        .iter()
        .map(|c| {
            let family = c.family;
            let src = Endpoint::parse(cluster, c.from).unwrap();
            let at = At { pos: Pos { line: 1, col: 1 }, path: format!("{} -> {}", c.from, c.service) };
            let pod = |key: &str| Endpoint::parse(cluster, key).unwrap();
            if let Via_::Direct = c.via {
                let flow = Flow { src, dst: pod(c.backend.unwrap()), protocol: Protocol::Tcp, port: 8080, family: Some(family) };
                return Check { flow, family, line: 1, at, expected: None, via: None };
            }
            let (ns, name) = c.service.split_once('/').unwrap();
            let svc = cluster.service(ns, name).unwrap();
            let port = svc.ports.iter().find(|p| p.protocol == c.protocol).unwrap();
            let backend = c.backend.map(|key| {
                let id = cluster.pod("x", key.trim_start_matches("x/")).unwrap();
                svc.backends(cluster, port, family).into_iter().find(|b| b.pod == Some(id)).unwrap()
            });
            let (entry, via_port, source_nat) = match c.via {
                Via_::NodePort(node) => {
                    let ip = cluster.nodes[node].ip(family).unwrap();
                    let remote = backend.as_ref().is_some_and(|b| b.node.as_deref() != Some(node));
                    let masquerade = (!svc.external_local && remote).then_some(ip);
                    (Entry::NodePort { node: node.into(), ip }, port.node_port.unwrap(), masquerade)
                }
                _ => (Entry::ClusterIp { ip: svc.cluster_ip(family).unwrap() }, port.port, None),
            };
            // Without a backend the flow's destination is the Service
            // address: it must never become an outside host.
            let (dst, dst_port) = match &backend {
                Some(b) => (Endpoint::Pod(b.pod.unwrap()), b.port),
                None => (Endpoint::Ip(entry.ip()), via_port),
            };
            let why = backend.is_none().then(|| "the Service has no endpoints".to_string());
            let via = Via { service: svc.key(), entry, port: via_port, protocol: c.protocol, backend, why, source_nat };
            let flow = Flow { src, dst, protocol: c.protocol, port: dst_port, family: Some(family) };
            Check { flow, family, line: 1, at, expected: None, via: Some(via) }
        })
        .collect()
}

fn run(cni: Cni) {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let start = Instant::now();
    let cluster = netfence::model::load::load_str("services.yaml", CLUSTER).unwrap();
    let ir = ir::resolve(&cluster);
    let checks = checks(&cluster);
    let externals = backend::externals(&cluster, &checks);
    assert!(externals.iter().all(|ip| !ip.to_string().starts_with("10.96.") && !ip.to_string().starts_with("fd00:96:")), "a ClusterIP became an outside host: {externals:?}");
    let options = ProbeOptions { timeout: Duration::from_millis(300), attempts: 2, parallel: 64 };

    for enforced in [false, true] {
        let mut dp = Dataplane::build_with(&cluster, &externals, cni, |node, ns| {
            if enforced {
                let program = netfence::nft::compile(&cluster, &ir, node);
                ns.run(|| NftKernel::new().apply(&netfence::nft::diff(None, &program)))??;
            }
            Ok(())
        })
        .unwrap();
        dp.options = options.clone();
        let t = Instant::now();
        let verdicts = backend::verdicts(&dp, &cluster, &checks).unwrap();
        let probed = t.elapsed();
        let mut wrong = Vec::new();
        for (i, (c, v)) in CASES.iter().zip(&verdicts).enumerate() {
            let what = format!("{} -> {} via {} backend {:?}", c.from, c.service, checks[i].via.as_ref().map_or("pod".to_string(), |v| std::net::SocketAddr::new(v.entry.ip(), v.port).to_string()), c.backend);
            let unjudged = if cni == Cni::Vxlan { vxlan_unjudged(i) } else { None };
            match (v, unjudged) {
                (Err(why), Some(reason)) if why.contains(reason) => continue,
                (Err(why), _) => {
                    wrong.push(format!("{what}: unjudged: {why}"));
                    continue;
                }
                (Ok(_), Some(reason)) => {
                    wrong.push(format!("{what}: probed, expected unjudged ({reason})"));
                    continue;
                }
                (Ok(_), None) => {}
            }
            let Ok(allowed) = *v else { continue };
            let expected = if enforced { c.enforced } else { c.control };
            if allowed != expected {
                wrong.push(format!("{what}: {} but expected {}", verdict(allowed), verdict(expected)));
            }
        }
        eprintln!(
            "--cni {} {}: {} checks probed in {probed:.1?} (build {:.1?})",
            cni.name(),
            if enforced { "with netfence" } else { "control" },
            checks.len(),
            dp.timings.topology + dp.timings.self_check + dp.timings.install
        );
        assert!(wrong.is_empty(), "--cni {} {}:\n  {}", cni.name(), if enforced { "with netfence" } else { "control" }, wrong.join("\n  "));
    }
    eprintln!("--cni {}: {:.1?}", cni.name(), start.elapsed());
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

#[test]
fn services_through_kube_proxy_routed() {
    run(Cni::Routed);
}

#[test]
fn services_through_kube_proxy_bridge() {
    run(Cni::Bridge);
}

#[test]
fn services_through_kube_proxy_vxlan() {
    run(Cni::Vxlan);
}
