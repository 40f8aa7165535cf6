//! Policies judged against the Services of the dump: kube-proxy rewrites a
//! Service's address and port to a backend's (DNAT) before any policy sees
//! the packet, and masquerades NodePort clients (docs/policy-test-format-services.md).
//! Each rule speaks only when the input has Services.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{some_names, Ctx, Rule, Severity};
use crate::graph::ports::PortSet;
use crate::ir::PeerIr;
use crate::model::service::{Service, ServicePort};
use crate::model::{Direction, Family, Peer, PodId};

pub static SERVICE_PORT_NOT_TARGET_PORT: Rule = Rule {
    id: "service-port-not-target-port",
    severity: Severity::Warning,
    pitfalls: &[8],
    summary: "a rule allows a Service's port but not the targetPort its backends receive after DNAT",
    help: "Policies judge connections after kube-proxy's DNAT: a connection to a Service on port 80 reaches the backend on its targetPort (e.g. 8080), so a rule allowing 80 (and not 8080) allows nothing through the Service (calico #8049, website #8295). Allow the targetPort (or its name).",
};

pub static IP_BLOCK_ON_CLUSTER_IP: Rule = Rule {
    id: "ipblock-on-cluster-ip",
    severity: Severity::Warning,
    pitfalls: &[9],
    summary: "an egress ipBlock aimed at Service ClusterIPs (no wider than a Service CIDR can be, holding ClusterIPs and no pod or node address)",
    help: "kube-proxy rewrites a ClusterIP to a backend's address before policy judges the packet, so an ipBlock over ClusterIPs never matches. Select the backends (pod and namespace selectors); for the API server, its endpoints' addresses (usually node IPs) at 6443, not the ClusterIP at 443.",
};

pub static CLIENT_IP_BLOCK_BEHIND_SNAT: Rule = Rule {
    id: "client-ipblock-behind-snat",
    severity: Severity::Warning,
    pitfalls: &[28],
    summary: "an ingress ipBlock for outside clients of a NodePort/LoadBalancer Service with externalTrafficPolicy: Cluster",
    help: "With externalTrafficPolicy: Cluster, kube-proxy masquerades NodePort and load-balancer clients to the entry node's address; a backend on another node sees that address, never the client, so an ipBlock on client addresses admits them only when they happen to enter on the backend's node. Set externalTrafficPolicy: Local (the client address is kept), or admit the nodes' addresses (which admits every client).",
};

pub(super) fn check(cx: &mut Ctx) {
    if cx.cluster.services.is_empty() {
        return;
    }
    let backends = Backends::of(cx);
    for pid in 0..cx.cluster.policies.len() {
        for dir in Direction::BOTH {
            if !cx.cluster.policies[pid].isolates(dir) {
                continue;
            }
            for ri in 0..cx.cluster.policies[pid].rules(dir).len() {
                target_ports(cx, &backends, pid, dir, ri);
                if dir == Direction::Egress {
                    cluster_ip_blocks(cx, pid, ri);
                } else {
                    snat_client_blocks(cx, &backends, pid, ri);
                }
            }
        }
    }
}

/// Per backend pod, the Service ports that reach it and at which port.
struct Backends<'a> {
    by_pod: BTreeMap<PodId, Vec<(&'a Service, &'a ServicePort, u16)>>,
}

impl<'a> Backends<'a> {
    fn of(cx: &Ctx<'a>) -> Backends<'a> {
        let mut by_pod: BTreeMap<PodId, Vec<(&'a Service, &'a ServicePort, u16)>> = BTreeMap::new();
        for svc in &cx.cluster.services {
            for sp in &svc.ports {
                for family in [Family::IPv4, Family::IPv6] {
                    for b in svc.backends(cx.cluster, sp, family) {
                        let Some(pod) = b.pod else { continue };
                        let list = by_pod.entry(pod).or_default();
                        if !list.iter().any(|(s, p, _)| std::ptr::eq(*s, &**svc) && std::ptr::eq(*p, sp)) {
                            list.push((svc, sp, b.port));
                        }
                    }
                }
            }
        }
        Backends { by_pod }
    }

    fn of_pod(&self, pod: PodId) -> &[(&'a Service, &'a ServicePort, u16)] {
        self.by_pod.get(&pod).map(Vec::as_slice).unwrap_or_default()
    }
}

/// The policy pods a rule's traffic goes to (ingress: the selected pods;
/// egress: the pods its selector peers match).
fn destinations(cx: &Ctx, pid: usize, dir: Direction, ri: usize) -> Vec<PodId> {
    let pol = &cx.ir.policies[pid];
    if dir == Direction::Ingress {
        return pol.selected.clone();
    }
    let mut out: Vec<PodId> = match &pol.egress[ri].peers {
        None => return Vec::new(), // every destination: no Service in particular
        Some(peers) => peers.iter().filter_map(|p| if let PeerIr::Pods(ids) = p { Some(ids.iter().copied()) } else { None }).flatten().collect(),
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Pitfall 8: the rule admits the Service port and not the port its
/// backends receive, where the backend does not listen on the Service port
/// itself (then direct traffic to the pod may be what is meant).
fn target_ports(cx: &mut Ctx, backends: &Backends, pid: usize, dir: Direction, ri: usize) {
    let rule = &cx.cluster.policies[pid].rules(dir)[ri];
    if rule.ports.is_empty() {
        return;
    }
    // (service key, service port, target) -> backends it misses.
    let mut missed: BTreeMap<(String, u16, u16, crate::model::Protocol), Vec<PodId>> = BTreeMap::new();
    for pod in destinations(cx, pid, dir, ri) {
        let p = &cx.cluster.pods[pod];
        let allowed = PortSet::of_rule(&rule.ports, Some(p));
        for &(svc, sp, target) in backends.of_pod(pod) {
            let (port, proto) = (sp.port, sp.protocol);
            if port == target || !allowed.contains(proto, port) || allowed.contains(proto, target) {
                continue;
            }
            if p.ports.iter().any(|c| c.port == port && c.protocol == proto) {
                continue;
            }
            missed.entry((svc.key(), port, target, proto)).or_default().push(pod);
        }
    }
    for ((svc, port, target, proto), pods) in missed {
        let field = match rule.ports.iter().position(|q| PortSet::of_rule(std::slice::from_ref(q), None).contains(proto, port)) {
            Some(qi) => format!("spec.{}[{ri}].ports[{qi}]", dir.field()),
            None => format!("spec.{}[{ri}].ports", dir.field()),
        };
        let names = some_names(pods.iter().map(|&p| cx.cluster.pods[p].key()).collect::<Vec<_>>().into_iter());
        cx.policy(
            &SERVICE_PORT_NOT_TARGET_PORT,
            pid,
            field,
            format!(
                "{port}/{proto} is Service {svc}'s port; after kube-proxy's DNAT its backends ({names}) receive {target}/{proto}, which this rule does not allow: connections through the Service are denied"
            ),
            format!("allow port {target} (the Service's targetPort) instead of, or besides, {port}"),
        );
    }
}

/// Pitfall 9: an egress ipBlock holding ClusterIPs and nothing the packet
/// could carry after DNAT (no pod or node address).
fn cluster_ip_blocks(cx: &mut Ctx, pid: usize, ri: usize) {
    let rule = &cx.cluster.policies[pid].egress[ri];
    for (pi, peer) in rule.peers.iter().enumerate() {
        let Peer::IpBlock { cidr, except } = peer else { continue };
        // No Service CIDR is wider than 2^20 addresses (the API server's
        // limit): a wider block ("the internet", "the corporate network")
        // is aimed at more than Services.
        let widest = if cidr.addr().is_ipv4() { 12 } else { 108 };
        if cidr.prefix_len() < widest {
            continue;
        }
        let inside = |ip: &std::net::IpAddr| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip));
        let services: Vec<String> = cx
            .cluster
            .services
            .iter()
            .filter(|s| s.cluster_ips.iter().any(inside))
            .map(|s| s.key())
            .collect();
        if services.is_empty() || !cx.pod_ips_in(cidr, except).is_empty() {
            continue;
        }
        if cx.cluster.nodes.values().any(|n| n.addresses.iter().any(inside)) {
            continue;
        }
        let api = services.iter().any(|s| s == "default/kubernetes");
        cx.policy(
            &IP_BLOCK_ON_CLUSTER_IP,
            pid,
            format!("spec.egress[{ri}].to[{pi}].ipBlock.cidr"),
            format!(
                "ipBlock {cidr} holds the ClusterIPs of {} and no pod or node address: kube-proxy rewrites a ClusterIP to a backend before policy judges the packet, so this peer never matches traffic to those Services",
                some_names(services.clone().into_iter())
            ),
            if api {
                "for the API server, allow its endpoints' addresses (the control-plane nodes' IPs) on port 6443; for other Services, select their backend pods".to_string()
            } else {
                "select the Services' backend pods (podSelector/namespaceSelector) on their targetPorts".to_string()
            },
        );
    }
}

/// Pitfall 28: a rule of a backend's ingress admits outside clients by
/// ipBlock (holding no node address) on a port a NodePort/LoadBalancer
/// Service with `externalTrafficPolicy: Cluster` sends it, in a cluster of
/// several nodes.
fn snat_client_blocks(cx: &mut Ctx, backends: &Backends, pid: usize, ri: usize) {
    if cx.cluster.nodes.len() < 2 {
        return;
    }
    let rule = &cx.cluster.policies[pid].ingress[ri];
    let node_ips: Vec<std::net::IpAddr> = cx.cluster.nodes.values().flat_map(|n| n.internal_ips.iter().copied()).collect();
    let selected = cx.ir.policies[pid].selected.clone();
    for (pi, peer) in rule.peers.iter().enumerate() {
        let Peer::IpBlock { cidr, except } = peer else { continue };
        if cidr.prefix_len() == 0 || !cx.pod_ips_in(cidr, except).is_empty() {
            continue; // "anywhere", or a block aimed at pods: other rules speak
        }
        if node_ips.iter().any(|ip| cidr.contains(ip) && !except.iter().any(|e: &IpNet| e.contains(ip))) {
            continue; // the entry nodes' addresses are admitted too
        }
        let mut hit: BTreeMap<String, Vec<PodId>> = BTreeMap::new();
        for &pod in &selected {
            let allowed = PortSet::of_rule(&rule.ports, Some(&cx.cluster.pods[pod]));
            for &(svc, sp, target) in backends.of_pod(pod) {
                if svc.type_.has_node_ports() && !svc.external_local && sp.node_port.is_some() && allowed.contains(sp.protocol, target) {
                    hit.entry(svc.key()).or_default().push(pod);
                }
            }
        }
        for (svc, pods) in hit {
            cx.policy(
                &CLIENT_IP_BLOCK_BEHIND_SNAT,
                pid,
                format!("spec.ingress[{ri}].from[{pi}].ipBlock.cidr"),
                format!(
                    "Service {svc} (externalTrafficPolicy: Cluster) reaches {} through node ports: kube-proxy masquerades its clients to the entry node's address, so from any node but the backend's own this ipBlock {cidr} never sees the client",
                    some_names(pods.iter().map(|&p| cx.cluster.pods[p].key()).collect::<Vec<_>>().into_iter())
                ),
                format!("set `externalTrafficPolicy: Local` on Service {svc} (the client address is kept), or admit the nodes' addresses"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cluster, np, rules};

    const SVC: &str = "apiVersion: v1
kind: Service
metadata: {name: b, namespace: x}
spec: {clusterIP: 10.96.0.20, selector: {app: b}, ports: [{port: 80, targetPort: http}]}
---
";

    /// The findings of this family only (others may fire on the same input).
    fn ours(yaml: &str) -> Vec<String> {
        rules(yaml).into_iter().filter(|r| super::super::RULES.iter().any(|x| x.id == r && x.pitfalls.iter().any(|p| [8, 9, 28].contains(p)))).collect()
    }

    fn check(spec: &str, expected: &[&str]) {
        let got = ours(&cluster(&format!("{SVC}{}", np(spec))));
        assert_eq!(got, expected, "spec: {spec}");
    }

    #[test]
    fn service_port_instead_of_target_port() {
        let to_b = |ports: &str| format!("{{podSelector: {{matchLabels: {{app: a}}}}, policyTypes: [Egress], egress: [{{to: [{{podSelector: {{matchLabels: {{app: b}}}}}}], ports: [{ports}]}}, {{ports: [{{port: 53, protocol: UDP}}]}}]}}");
        check(&to_b("{port: 80}"), &["service-port-not-target-port"]);
        check(&to_b("{port: 8080}"), &[]);
        check(&to_b("{port: http}"), &[]);
        check(&to_b("{port: 80}, {port: 8080}"), &[]);
        // Ingress of the backend.
        check("{podSelector: {matchLabels: {app: b}}, ingress: [{ports: [{port: 80}]}]}", &["service-port-not-target-port"]);
        check("{podSelector: {matchLabels: {app: b}}, ingress: [{ports: [{port: 8080}]}]}", &[]);
    }

    #[test]
    fn ip_blocks_on_cluster_ips() {
        let to = |cidr: &str| format!("{{podSelector: {{}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {cidr}}}}}]}}, {{ports: [{{port: 53, protocol: UDP}}]}}]}}");
        check(&to("10.96.0.0/12"), &["ipblock-on-cluster-ip"]);
        check(&to("10.96.0.20/32"), &["ipblock-on-cluster-ip"]);
        check(&to("10.97.0.0/16"), &[]);
        // Wider than any Service CIDR can be: aimed at more than Services.
        check(&to("10.0.0.0/8"), &[]);
        check(&to("0.0.0.0/0"), &[]);
    }

    #[test]
    fn client_ip_blocks_behind_masquerade() {
        let two_nodes = "apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {type: NodePort, clusterIP: 10.96.0.30, selector: {app: b}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
---
";
        let ingress = |block: &str| np(&format!("{{podSelector: {{matchLabels: {{app: b}}}}, ingress: [{{from: [{{ipBlock: {{cidr: {block}}}}}], ports: [{{port: 8080}}]}}]}}"));
        let run = |extra: &str, block: &str| ours(&cluster(&format!("{two_nodes}{extra}{}", ingress(block))));
        assert_eq!(run("", "203.0.113.0/24"), ["client-ipblock-behind-snat"]);
        // The nodes' addresses admitted too, or every address: nothing to say.
        assert_eq!(run("", "172.16.0.0/12"), Vec::<String>::new());
        let local = two_nodes.replace("nodePort: 30080}]}", "nodePort: 30080}], externalTrafficPolicy: Local}");
        assert_eq!(ours(&cluster(&format!("{local}{}", ingress("203.0.113.0/24")))), Vec::<String>::new());
    }
}
