//! Ports judged against what the destination pods of the dump declare:
//! named ports nobody defines, a protocol left to default to TCP where the
//! destination only listens on UDP, and ranges opened "for replies".

use super::{count, some_names, Ctx, Rule, Severity};
use crate::ir::PeerIr;
use crate::model::{Direction, PodId, PortRef, Protocol};

pub static NAMED_PORT_NOT_DECLARED: Rule = Rule {
    id: "named-port-not-declared",
    severity: Severity::Warning,
    pitfalls: &[12],
    summary: "a named port that no destination pod of the rule declares (with that protocol)",
    help: "A named port resolves on each destination pod (name and protocol). With a name no destination declares, or an ipBlock peer (addresses outside the cluster have no named ports), it matches nothing (aws-npa #149, aci #1707, ovn-k #2117).",
};

pub static PORT_PROTOCOL_DEFAULTS_TO_TCP: Rule = Rule {
    id: "port-protocol-defaults-to-tcp",
    severity: Severity::Warning,
    pitfalls: &[6],
    summary: "a port without protocol (so TCP) where the destination pods declare that port only for UDP or SCTP",
    help: "`ports: [{port: 514}]` means 514/TCP; a syslog or DNS server listening on UDP stays unreachable (Cyclonus PortMissingProtocol). Write the protocol.",
};

pub static EPHEMERAL_PORT_RANGE: Rule = Rule {
    id: "ephemeral-port-range",
    severity: Severity::Warning,
    pitfalls: &[22],
    summary: "a port range over the ephemeral ports (49152-60999 or wider), typically opened for replies",
    help: "NetworkPolicy is connection-oriented: replies to an allowed connection are always allowed. A rule for 1024-65535 'for replies' is redundant and opens every high port to new connections (k8s #120525).",
};

/// Linux's default ephemeral range is 32768-60999, IANA's 49152-65535: a
/// range over both overlaps is a range over client ports.
const EPHEMERAL: (u16, u16) = (49152, 60999);

pub(super) fn check(cx: &mut Ctx) {
    for pid in 0..cx.cluster.policies.len() {
        for dir in Direction::BOTH {
            if !cx.cluster.policies[pid].isolates(dir) {
                continue;
            }
            for ri in 0..cx.cluster.policies[pid].rules(dir).len() {
                rule_ports(cx, pid, dir, ri);
            }
        }
    }
}

/// The policy pods a rule's traffic goes to (ingress: the selected pods;
/// egress: what its peers match, pods inside ipBlocks included), and
/// whether some peer selects pods.
fn destinations(cx: &Ctx, pid: usize, dir: Direction, ri: usize) -> (Vec<PodId>, bool) {
    if dir == Direction::Ingress {
        return (cx.ir.policies[pid].selected.clone(), true);
    }
    let Some(peers) = &cx.ir.policies[pid].egress[ri].peers else {
        return ((0..cx.cluster.pods.len()).filter(|&p| cx.cluster.pods[p].is_policy_pod()).collect(), true);
    };
    let mut out = Vec::new();
    let mut selects_pods = false;
    for peer in peers {
        match peer {
            PeerIr::Pods(ids) => {
                selects_pods = true;
                out.extend(ids.iter().copied());
            }
            PeerIr::IpBlock { cidr, except } => out.extend(cx.cluster.pods.iter().enumerate().filter_map(|(i, p)| {
                let inside = p.is_policy_pod() && p.ips.iter().any(|ip| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip)));
                inside.then_some(i)
            })),
        }
    }
    out.sort_unstable();
    out.dedup();
    (out, selects_pods)
}

fn rule_ports(cx: &mut Ctx, pid: usize, dir: Direction, ri: usize) {
    let pol = &cx.cluster.policies[pid];
    let rule = &pol.rules(dir)[ri];
    if rule.ports.is_empty() {
        return;
    }
    let src = cx.sources.policy(&pol.namespace, &pol.name);
    let (dests, selects_pods) = if cx.has_pods { destinations(cx, pid, dir, ri) } else { (Vec::new(), true) };
    let who = if dir == Direction::Ingress { "selected pod" } else { "destination pod" };
    for (qi, port) in rule.ports.iter().enumerate() {
        let field = format!("spec.{}[{ri}].ports[{qi}]", dir.field());
        match &port.port {
            Some(PortRef::Named(name)) if cx.has_pods => {
                if dests.is_empty() && selects_pods {
                    continue; // the peer or the podSelector selecting nothing is the finding
                }
                if dests.iter().any(|&p| cx.cluster.pods[p].named_port(name, port.protocol).is_some()) {
                    continue;
                }
                let other_proto: Vec<(PodId, Protocol)> = dests
                    .iter()
                    .filter_map(|&p| Protocol::ALL.into_iter().find(|&q| cx.cluster.pods[p].named_port(name, q).is_some()).map(|q| (p, q)))
                    .collect();
                let (message, fix) = if let Some(&(p, q)) = other_proto.first() {
                    (
                        format!("named port {name:?} is {q} on {} (and {} other pod(s)), not {}: this port matches nothing", cx.cluster.pods[p].key(), other_proto.len() - 1, port.protocol),
                        format!("set `protocol: {q}` on this port"),
                    )
                } else if dests.is_empty() {
                    (
                        format!("named port {name:?} with only ipBlock peers: a named port resolves on the destination pod, so no address outside the cluster ever matches it"),
                        "use the port number".to_string(),
                    )
                } else {
                    (
                        format!(
                            "no {} declares a container port named {name:?} with protocol {} ({}): this port matches nothing",
                            who,
                            port.protocol,
                            count(dests.len(), who)
                        ),
                        "use a port name the pods declare (spec.containers[].ports[].name), or the number".to_string(),
                    )
                };
                cx.policy(&NAMED_PORT_NOT_DECLARED, pid, format!("{field}.port"), message, fix);
            }
            Some(PortRef::Number(start)) => {
                let end = port.end_port.unwrap_or(*start);
                if *start <= EPHEMERAL.0 && end >= EPHEMERAL.1 {
                    cx.policy(
                        &EPHEMERAL_PORT_RANGE,
                        pid,
                        field.clone(),
                        format!("ports {start}-{end}/{} include the ephemeral (client) ports: replies never need a rule, and this opens every one of them to new connections", port.protocol),
                        "delete this range if it is there for replies; list the ports servers listen on".into(),
                    );
                }
                let omitted = src.is_some_and(|s| s.value(&format!("{field}.protocol")).is_none());
                if !omitted || !cx.has_pods {
                    continue;
                }
                let declared = |proto: Protocol| -> Vec<PodId> {
                    dests.iter().copied().filter(|&p| cx.cluster.pods[p].ports.iter().any(|c| c.protocol == proto && (*start..=end).contains(&c.port))).collect()
                };
                if !declared(Protocol::Tcp).is_empty() {
                    continue;
                }
                let Some((proto, pods)) = [Protocol::Udp, Protocol::Sctp].into_iter().map(|q| (q, declared(q))).find(|(_, p)| !p.is_empty()) else { continue };
                let range = if end == *start { start.to_string() } else { format!("{start}-{end}") };
                cx.policy(
                    &PORT_PROTOCOL_DEFAULTS_TO_TCP,
                    pid,
                    field.clone(),
                    format!(
                        "port {range} has no protocol, so it means {range}/TCP, but the {}s declare it only as {proto} ({})",
                        who,
                        some_names(pods.iter().map(|&p| cx.cluster.pods[p].key()))
                    ),
                    format!("add `protocol: {proto}` (and a second entry with TCP if TCP is meant too)"),
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, cluster, np, rules};

    #[test]
    fn named_ports() {
        check("{podSelector: {matchLabels: {app: b}}, ingress: [{ports: [{port: http}]}]}", &[]);
        check("{podSelector: {matchLabels: {app: a}}, ingress: [{ports: [{port: http}]}]}", &["named-port-not-declared"]);
        check("{podSelector: {matchLabels: {app: b}}, ingress: [{ports: [{port: http, protocol: UDP}]}]}", &["named-port-not-declared"]);
        let dns = "{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}], ports: [{port: 53, protocol: UDP}]}";
        let with_port = |to: &str| format!("{{podSelector: {{matchLabels: {{app: a}}}}, policyTypes: [Egress], egress: [{{to: [{to}], ports: [{{port: http}}]}}, {dns}]}}");
        check(&with_port("{podSelector: {matchLabels: {app: b}}}"), &[]);
        check(&with_port("{podSelector: {}}"), &[]);
        check(&with_port("{ipBlock: {cidr: 192.0.2.0/24}}"), &["named-port-not-declared"]);
        check(&with_port("{ipBlock: {cidr: 10.0.0.2/32}}"), &["ip-block-covers-pods"]);
    }

    #[test]
    fn protocols_and_ranges() {
        let to_dns = |ports: &str| {
            np(&format!("{{podSelector: {{}}, ingress: [{{}}], egress: [{{to: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: kube-system}}}}, podSelector: {{matchLabels: {{k8s-app: kube-dns}}}}}}], ports: {ports}}}]}}"))
        };
        // CoreDNS declares 53 for UDP and TCP: a TCP-only rule is not this rule's business.
        assert_eq!(rules(&cluster(&to_dns("[{port: 53}]"))), ["allow-all-rule", "egress-without-dns"]);
        let syslog = "apiVersion: v1\nkind: Pod\nmetadata: {name: syslog, namespace: x, labels: {app: syslog}}\nspec: {containers: [{name: c, ports: [{containerPort: 514, protocol: UDP}]}]}\nstatus: {podIP: 10.0.0.9}\n---\n";
        let p = |port: &str| np(&format!("{{podSelector: {{matchLabels: {{app: syslog}}}}, ingress: [{{ports: [{port}]}}]}}"));
        assert_eq!(rules(&cluster(&format!("{syslog}{}", p("{port: 514}")))), ["port-protocol-defaults-to-tcp"]);
        assert_eq!(rules(&cluster(&format!("{syslog}{}", p("{port: 514, protocol: TCP}")))), Vec::<String>::new());
        assert_eq!(rules(&cluster(&format!("{syslog}{}", p("{port: 514, protocol: UDP}")))), Vec::<String>::new());
        check("{podSelector: {}, ingress: [{ports: [{port: 1024, endPort: 65535}]}]}", &["ephemeral-port-range"]);
        check("{podSelector: {}, ingress: [{ports: [{port: 30000, endPort: 32767}]}]}", &[]);
    }
}
