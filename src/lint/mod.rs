//! Warnings about the classic NetworkPolicy mistakes.
//!
//! None of these are errors (the API server accepts them all), but each is a
//! policy that very likely does not do what its author meant. Lints read the
//! model and the IR only; they never change a verdict.

use std::fmt;

use serde::Serialize;

use crate::ir::{Ir, PeerIr};
use crate::model::{Cluster, Direction, Peer, PortRef, Protocol};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Stable identifier, e.g. `pod-selector-in-other-namespace`.
    pub code: &'static str,
    pub policy: String,
    /// `file:line` of the policy.
    pub source: String,
    /// Field path inside the policy, when the warning is about one field.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning[{}]: {}", self.source, self.code, self.policy)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

pub fn lint(cluster: &Cluster, ir: &Ir) -> Vec<Warning> {
    let mut out = Vec::new();
    for (pid, pol) in cluster.policies.iter().enumerate() {
        let mut warn = |code, field: String, message: String| {
            out.push(Warning { code, policy: pol.key(), source: pol.origin.to_string(), field, message })
        };
        let pir = &ir.policies[pid];
        if pir.selected.is_empty() && !cluster.pods.is_empty() {
            warn(
                "selects-no-pod",
                "spec.podSelector".into(),
                format!("podSelector {} selects no pod in namespace {}", pol.pod_selector, pol.namespace),
            );
        }
        for dir in Direction::BOTH {
            if !pol.isolates(dir) && !pol.rules(dir).is_empty() {
                warn(
                    "rules-ignored",
                    format!("spec.{}", dir.field()),
                    format!(
                        "has {} rules, but policyTypes does not list {}: they are ignored",
                        dir.field(),
                        if dir == Direction::Ingress { "Ingress" } else { "Egress" }
                    ),
                );
            }
            for (ri, rule) in pol.rules(dir).iter().enumerate() {
                let peers_ir = pir.rules(dir)[ri].peers.as_deref().unwrap_or_default();
                for (pi, (peer, pir_peer)) in rule.peers.iter().zip(peers_ir).enumerate() {
                    let field = format!("spec.{}[{ri}].{}[{pi}]", dir.field(), dir.peer_field());
                    if let (Peer::Pods { namespaces: None, pods: Some(sel) }, PeerIr::Pods(ids)) = (peer, pir_peer) {
                        let elsewhere = cluster
                            .pods
                            .iter()
                            .filter(|p| p.is_policy_pod() && p.namespace != pol.namespace && sel.matches(&p.labels))
                            .count();
                        if ids.is_empty() && elsewhere > 0 {
                            warn(
                                "pod-selector-in-other-namespace",
                                format!("{field}.podSelector"),
                                format!(
                                    "podSelector {sel} matches no pod in namespace {} but {elsewhere} pod(s) in other namespaces: a podSelector alone only selects the policy's own namespace; add a namespaceSelector (in the same peer) to reach them",
                                    pol.namespace
                                ),
                            );
                        }
                    }
                    if let Peer::IpBlock { cidr, .. } = peer {
                        let pods_inside = cluster.pods.iter().filter(|p| p.is_policy_pod() && p.ips.iter().any(|ip| cidr.contains(ip))).count();
                        if pods_inside > 0 && cidr.prefix_len() > 0 {
                            warn(
                                "ip-block-covers-pods",
                                format!("{field}.ipBlock.cidr"),
                                format!("ipBlock {cidr} contains {pods_inside} pod address(es); pod IPs change when pods restart, select pods with podSelector/namespaceSelector instead"),
                            );
                        }
                    }
                }
                for (qi, port) in rule.ports.iter().enumerate() {
                    let Some(PortRef::Named(name)) = &port.port else { continue };
                    let declared = match dir {
                        Direction::Ingress => pir.selected.iter().any(|&p| cluster.pods[p].named_port(name, port.protocol).is_some()),
                        Direction::Egress => cluster.pods.iter().any(|p| p.is_policy_pod() && p.named_port(name, port.protocol).is_some()),
                    };
                    if !declared {
                        warn(
                            "named-port-not-declared",
                            format!("spec.{}[{ri}].ports[{qi}].port", dir.field()),
                            format!(
                                "no {} declares a container port named {name:?} with protocol {}: this port matches nothing",
                                if dir == Direction::Ingress { "selected pod" } else { "pod" },
                                port.protocol
                            ),
                        );
                    }
                }
            }
        }
        // DNS may come from another policy selecting the same pods: only warn
        // about pods that no egress-isolating policy lets resolve names.
        let no_dns = pir
            .selected
            .iter()
            .filter(|&&pod| {
                !ir.selecting[pod].iter().any(|&q| cluster.policies[q].types.egress && allows_dns(&cluster.policies[q]))
            })
            .count();
        if pol.types.egress && no_dns > 0 {
            warn(
                "egress-without-dns",
                "spec.egress".into(),
                format!("isolates egress of {no_dns} pod(s) that no policy allows to reach port 53/UDP: they cannot resolve names"),
            );
        }
    }
    out
}

/// Does some egress rule allow DNS (port 53 on UDP) at all?
fn allows_dns(pol: &crate::model::Policy) -> bool {
    pol.egress.iter().any(|r| {
        r.ports.is_empty()
            || r.ports.iter().any(|p| {
                p.protocol == Protocol::Udp
                    && match &p.port {
                        None => true,
                        Some(PortRef::Number(n)) => (*n..=p.end_port.unwrap_or(*n)).contains(&53),
                        Some(PortRef::Named(_)) => true,
                    }
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::ClusterBuilder;

    fn codes(policy_spec: &str) -> Vec<&'static str> {
        let mut b = ClusterBuilder::new();
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{app: a}}}}\nstatus: {{podIP: 10.0.0.1}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: w, namespace: y, labels: {{app: web}}}}\nstatus: {{podIP: 10.0.0.2}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {policy_spec}\n"
        );
        b.add_text("t.yaml", &text).unwrap();
        let c = b.finish().0;
        let ir = crate::ir::resolve(&c);
        lint(&c, &ir).into_iter().map(|w| w.code).collect()
    }

    #[test]
    fn classic_mistakes() {
        assert_eq!(codes("{podSelector: {}}"), Vec::<&str>::new());
        assert_eq!(codes("{podSelector: {matchLabels: {app: nope}}}"), ["selects-no-pod"]);
        assert_eq!(
            codes("{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]}"),
            ["pod-selector-in-other-namespace"]
        );
        assert_eq!(codes("{podSelector: {}, ingress: [{}], policyTypes: [Egress]}"), ["rules-ignored", "egress-without-dns"]);
        assert_eq!(codes("{podSelector: {}, egress: [{ports: [{port: 443}]}]}"), ["egress-without-dns"]);
        assert_eq!(codes("{podSelector: {}, egress: [{ports: [{port: 443}, {port: 53, protocol: UDP}]}]}"), Vec::<&str>::new());
        assert_eq!(codes("{podSelector: {}, ingress: [{ports: [{port: http}]}]}"), ["named-port-not-declared"]);
        assert_eq!(codes("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24}}]}]}"), ["ip-block-covers-pods"]);
    }
}
