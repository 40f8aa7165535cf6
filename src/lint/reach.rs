//! Rules that ask "would this flow be allowed?", answered by
//! [`crate::eval`] so lint never disagrees with `explain` or `test`: pods
//! that cannot reach the DNS pods that really run, rules whose traffic the
//! other end denies, and policies nothing enforces.

use std::collections::{BTreeMap, BTreeSet};

use super::{count, some_names, Ctx, Rule, Severity};
use crate::eval::{evaluate, Endpoint, Flow, SideReason};
use crate::ir::PeerIr;
use crate::model::{Direction, Pod, PodId, PolicyId, PortRef, Protocol, NAMESPACE_NAME_LABEL};

pub static EGRESS_WITHOUT_DNS: Rule = Rule {
    id: "egress-without-dns",
    severity: Severity::Warning,
    pitfalls: &[7],
    summary: "egress-isolated pods that cannot reach any DNS pod of the dump on its real DNS port",
    help: "Under default-deny egress, pods need an explicit rule to reach DNS (k8s/website #54997). Judged with the engine against the DNS pods that run (CoreDNS/kube-dns, OpenShift dns-default) on the port they listen on: OpenShift's listens on 5353, and since policy applies after the Service's DNAT, a rule for 53 never matches there.",
};

pub static OTHER_SIDE_DENIES: Rule = Rule {
    id: "other-side-denies",
    severity: Severity::Warning,
    pitfalls: &[20],
    summary: "a peer whose flows this rule allows but the other end's policies deny, for every pod pair checked",
    help: "A flow needs both the source's egress and the destination's ingress to allow it (calico #2971). An egress rule towards pods whose ingress denies it (or an ingress rule from pods whose egress denies it) has no effect.",
};

pub static NO_ENFORCING_CNI: Rule = Rule {
    id: "no-enforcing-cni",
    severity: Severity::Warning,
    pitfalls: &[29],
    summary: "the dump runs a CNI that does not enforce NetworkPolicy (flannel) and no agent that does",
    help: "The API server accepts NetworkPolicies whether or not anything enforces them (camunda #6591, Kong gateway-operator #133). Flannel alone enforces none; run an enforcing agent (Canal, or netfence) alongside.",
};

pub(super) fn check(cx: &mut Ctx) {
    if !cx.has_pods || cx.cluster.policies.is_empty() {
        return;
    }
    if cx.on(&EGRESS_WITHOUT_DNS) {
        dns(cx);
    }
    if cx.on(&OTHER_SIDE_DENIES) {
        other_side(cx);
    }
    if cx.on(&NO_ENFORCING_CNI) {
        cni(cx);
    }
}

/// A DNS server pod and the UDP port it listens on (after any DNAT).
struct DnsServer {
    pod: PodId,
    port: u16,
}

fn dns_servers(cx: &Ctx) -> Vec<DnsServer> {
    let is_dns = |p: &Pod| {
        matches!(p.labels.get("k8s-app"), Some("kube-dns" | "coredns"))
            || p.labels.contains_key("dns.operator.openshift.io/daemonset-dns")
            || p.named_port("dns", Protocol::Udp).is_some()
    };
    let udp = |p: &Pod, n: u16| p.ports.iter().any(|c| c.protocol == Protocol::Udp && c.port == n);
    cx.cluster
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_policy_pod() && is_dns(p))
        .map(|(pod, p)| {
            let port = p.named_port("dns", Protocol::Udp).unwrap_or(if !udp(p, 53) && udp(p, 5353) { 5353 } else { 53 });
            DnsServer { pod, port }
        })
        .collect()
}

/// Why a pod cannot resolve names.
#[derive(Clone)]
enum NoDns {
    /// Its own egress lets it reach no DNS pod.
    Egress,
    /// Its egress allows a DNS pod, whose ingress denies it.
    Ingress { server: PodId, isolated_by: Vec<PolicyId> },
}

fn dns(cx: &mut Ctx) {
    let servers = dns_servers(cx);
    let egress_isolating = |p: PodId| -> Vec<PolicyId> {
        cx.ir.selecting[p].iter().copied().filter(|&q| cx.cluster.policies[q].types.egress).collect()
    };
    // Pods grouped by the policies isolating their egress: one finding per
    // group, at the policy selecting most of them.
    let mut groups: BTreeMap<Vec<PolicyId>, Vec<(PodId, NoDns)>> = BTreeMap::new();
    for (p, pod) in cx.cluster.pods.iter().enumerate() {
        if !pod.is_policy_pod() || servers.iter().any(|s| s.pod == p) {
            continue;
        }
        let isolating = egress_isolating(p);
        // A pod allowed no egress at all (deny-all, nothing else yet) has
        // no use for DNS: the pitfall is allowing some egress and not DNS.
        if isolating.iter().all(|&q| cx.cluster.policies[q].egress.is_empty()) {
            continue;
        }
        let verdict = if servers.is_empty() {
            // No DNS pod in the dump: the best we can say is whether some
            // rule allows 53/UDP at all.
            let any = isolating.iter().any(|&q| allows_udp_port(cx, q, 53));
            (!any).then_some(NoDns::Egress)
        } else {
            reach_dns(cx, p, &servers)
        };
        if let Some(why) = verdict {
            groups.entry(isolating).or_default().push((p, why));
        }
    }
    for (isolating, pods) in groups {
        let at = isolating
            .iter()
            .copied()
            .max_by_key(|&q| (pods.iter().filter(|(p, _)| cx.ir.policies[q].selected.binary_search(p).is_ok()).count(), std::cmp::Reverse(q)))
            .unwrap_or(isolating[0]);
        let pol = &cx.cluster.policies[at];
        let field = if pol.types_explicit { "spec.policyTypes" } else { "spec.egress" };
        let names = some_names(pods.iter().map(|(p, _)| cx.cluster.pods[*p].key()));
        let by = if isolating.len() > 1 {
            let others: Vec<String> = isolating.iter().filter(|&&q| q != at).map(|&q| cx.cluster.policies[q].key()).collect();
            format!(" (with {})", some_names(others))
        } else {
            String::new()
        };
        let Some(server) = servers.first() else {
            cx.policy(
                &EGRESS_WITHOUT_DNS,
                at,
                field.into(),
                format!("isolates egress{by} of {} ({names}) and no rule allows 53/UDP (no DNS pod in the dump to judge against): they cannot resolve names", count(pods.len(), "pod")),
                "allow egress to the cluster DNS on 53/UDP and 53/TCP".into(),
            );
            continue;
        };
        let s = &cx.cluster.pods[server.pod];
        let ingress_denied = pods.iter().find_map(|(_, why)| match why {
            NoDns::Ingress { server, isolated_by } => Some((*server, isolated_by.clone())),
            NoDns::Egress => None,
        });
        let servers_text = some_names(servers.iter().map(|d| format!("{} {}/UDP", cx.cluster.pods[d.pod].key(), d.port)));
        let (message, fix) = match ingress_denied {
            Some((srv, isolated_by)) => (
                format!(
                    "isolates egress{by} of {} ({names}); their egress allows DNS, but the ingress of {} (isolated by {}) denies it: they cannot resolve names",
                    count(pods.len(), "pod"),
                    cx.cluster.pods[srv].key(),
                    some_names(isolated_by.iter().map(|&q| cx.cluster.policies[q].key()))
                ),
                format!("allow ingress from these pods on {}/UDP and TCP in a policy selecting the DNS pods", server.port),
            ),
            None => {
                let rule_for_53 = server.port != 53 && isolating.iter().any(|&q| allows_udp_port(cx, q, 53));
                let hint = if rule_for_53 {
                    format!("; a rule allows 53/UDP, but the DNS pods listen on {}/UDP and policy applies after the Service's DNAT", server.port)
                } else {
                    String::new()
                };
                let label = ["k8s-app", "dns.operator.openshift.io/daemonset-dns"]
                    .iter()
                    .find_map(|k| s.labels.get(k).map(|v| format!("{k}: {v}")))
                    .unwrap_or_else(|| format!("<labels of {}>", s.key()));
                (
                    format!(
                        "isolates egress{by} of {} ({names}) that reach none of the DNS pods ({servers_text}){hint}: they cannot resolve names",
                        count(pods.len(), "pod")
                    ),
                    format!(
                        "allow egress to `{{namespaceSelector: {{matchLabels: {{{NAMESPACE_NAME_LABEL}: {}}}}}, podSelector: {{matchLabels: {{{label}}}}}}}` on {}/UDP and {}/TCP",
                        s.namespace, server.port, server.port
                    ),
                )
            }
        };
        cx.policy(&EGRESS_WITHOUT_DNS, at, field.into(), message, fix);
    }
}

/// `None` when `pod` can reach some DNS server (in some address family).
fn reach_dns(cx: &Ctx, pod: PodId, servers: &[DnsServer]) -> Option<NoDns> {
    let mut why = NoDns::Egress;
    for s in servers {
        let flow = Flow { src: Endpoint::Pod(pod), dst: Endpoint::Pod(s.pod), protocol: Protocol::Udp, port: s.port, family: None };
        let Ok(v) = evaluate(cx.cluster, cx.ir, &flow) else { continue };
        if v.families.iter().any(|f| f.allowed) {
            return None;
        }
        if let Some(f) = v.families.iter().find(|f| f.egress.allowed) {
            if let SideReason::Denied { isolated_by, .. } = &f.ingress.reason {
                why = NoDns::Ingress { server: s.pod, isolated_by: isolated_by.clone() };
            }
        }
    }
    Some(why)
}

/// Does some egress rule of policy `q` allow UDP port `n` to anywhere?
fn allows_udp_port(cx: &Ctx, q: PolicyId, n: u16) -> bool {
    cx.cluster.policies[q].egress.iter().any(|r| {
        r.ports.is_empty()
            || r.ports.iter().any(|p| {
                p.protocol == Protocol::Udp
                    && match &p.port {
                        None | Some(PortRef::Named(_)) => true,
                        Some(PortRef::Number(s)) => (*s..=p.end_port.unwrap_or(*s)).contains(&n),
                    }
            })
    })
}

/// Flows judged per peer before giving up without a finding: a peer is
/// reported only when every pair checked is denied by the other end, so an
/// inconclusive search says nothing.
const BUDGET: usize = 256;

fn other_side(cx: &mut Ctx) {
    for pid in 0..cx.cluster.policies.len() {
        for dir in Direction::BOTH {
            if !cx.cluster.policies[pid].isolates(dir) || cx.ir.policies[pid].selected.is_empty() {
                continue;
            }
            for ri in 0..cx.cluster.policies[pid].rules(dir).len() {
                let Some(peers) = &cx.ir.policies[pid].rules(dir)[ri].peers else { continue };
                for (pi, peer) in peers.iter().enumerate() {
                    let PeerIr::Pods(ids) = peer else { continue };
                    if let Some(denied) = peer_denied(cx, pid, dir, ri, ids) {
                        report_other_side(cx, pid, dir, ri, pi, denied);
                    }
                }
            }
        }
    }
}

struct Denied {
    example: (PodId, PodId, Protocol, u16),
    checked: usize,
    isolated_by: BTreeSet<PolicyId>,
}

/// Some, when every flow checked between the selected pods and the peer's
/// pods is denied by the other end.
fn peer_denied(cx: &Ctx, pid: usize, dir: Direction, ri: usize, ids: &[PodId]) -> Option<Denied> {
    let selected = &cx.ir.policies[pid].selected;
    let ports = &cx.cluster.policies[pid].rules(dir)[ri].ports;
    let (n, m) = (selected.len(), ids.len());
    let mut denied: Option<Denied> = None;
    let mut checked = 0;
    // Walk the pairs so that both ends vary from the first steps on: pair
    // k is (k mod n, (k mod n + k div n) mod m), a bijection.
    for k in 0..n.saturating_mul(m) {
        let (i, j) = (k % n, (k % n + k / n) % m);
        let (src, dst) = if dir == Direction::Egress { (selected[i], ids[j]) } else { (ids[j], selected[i]) };
        if src == dst {
            continue;
        }
        for (protocol, port) in candidate_ports(&cx.cluster.pods[dst], ports) {
            checked += 1;
            if checked > BUDGET {
                return None;
            }
            let flow = Flow { src: Endpoint::Pod(src), dst: Endpoint::Pod(dst), protocol, port, family: None };
            let Ok(v) = evaluate(cx.cluster, cx.ir, &flow) else { continue };
            let other = |f: &crate::eval::FamilyVerdict| if dir == Direction::Egress { f.ingress.clone() } else { f.egress.clone() };
            if v.families.iter().any(|f| other(f).allowed) {
                return None;
            }
            let d = denied.get_or_insert_with(|| Denied { example: (src, dst, protocol, port), checked: 0, isolated_by: BTreeSet::new() });
            d.checked += 1;
            for f in &v.families {
                if let SideReason::Denied { isolated_by, .. } = other(f).reason {
                    d.isolated_by.extend(isolated_by);
                }
            }
        }
    }
    denied
}

/// The (protocol, port)s a rule's ports mean for destination `dst`: numbers
/// as written, names resolved on `dst`, "every port" as the ports `dst`
/// declares (nothing to check when it declares none).
fn candidate_ports(dst: &Pod, ports: &[crate::model::PortSpec]) -> Vec<(Protocol, u16)> {
    if ports.is_empty() {
        return dst.ports.iter().take(3).map(|c| (c.protocol, c.port)).collect();
    }
    ports
        .iter()
        .filter_map(|p| match &p.port {
            Some(PortRef::Number(n)) => Some((p.protocol, *n)),
            Some(PortRef::Named(name)) => dst.named_port(name, p.protocol).map(|n| (p.protocol, n)),
            None => dst.ports.iter().find(|c| c.protocol == p.protocol).map(|c| (p.protocol, c.port)),
        })
        .collect()
}

fn report_other_side(cx: &mut Ctx, pid: usize, dir: Direction, ri: usize, pi: usize, d: Denied) {
    let (src, dst, proto, port) = d.example;
    let (src, dst) = (cx.cluster.pods[src].key(), cx.cluster.pods[dst].key());
    let (other_dir, other_pod, fix_dir) = match dir {
        Direction::Egress => ("ingress", &dst, "an ingress rule of a policy selecting"),
        Direction::Ingress => ("egress", &src, "an egress rule of a policy selecting"),
    };
    cx.policy(
        &OTHER_SIDE_DENIES,
        pid,
        format!("spec.{}[{ri}].{}[{pi}]", dir.field(), dir.peer_field()),
        format!(
            "this peer allows {src} -> {dst} {port}/{proto}, but the {other_dir} of {other_pod} (isolated by {}) denies it{}: the peer has no effect",
            some_names(d.isolated_by.iter().map(|&q| cx.cluster.policies[q].key())),
            if d.checked == 1 { String::new() } else { format!(", as it does all {} flows checked between these pods", d.checked) }
        ),
        format!("allow it in {fix_dir} {other_pod} too (a flow needs the source's egress and the destination's ingress), or remove the peer"),
    );
}

/// Labels of agents that enforce NetworkPolicy, and of flannel, which does not.
const ENFORCERS: &[(&str, &str)] = &[
    ("k8s-app", "calico-node"),
    ("k8s-app", "canal"),
    ("k8s-app", "cilium"),
    ("k8s-app", "kube-router"),
    ("k8s-app", "antrea"),
    ("app", "antrea"),
    ("component", "antrea-agent"),
    ("name", "weave-net"),
    ("app", "ovnkube-node"),
    ("app", "kube-network-policies"),
    ("app.kubernetes.io/name", "netfence-agent"),
];
const FLANNEL: &[(&str, &str)] = &[("app", "flannel"), ("k8s-app", "flannel")];

fn cni(cx: &mut Ctx) {
    let has = |set: &[(&str, &str)], p: &Pod| set.iter().any(|(k, v)| p.labels.get(k) == Some(*v));
    if cx.cluster.pods.iter().any(|p| has(ENFORCERS, p)) {
        return;
    }
    let Some(flannel) = cx.cluster.pods.iter().position(|p| has(FLANNEL, p)) else { return };
    let n = cx.cluster.policies.len();
    cx.pod(
        &NO_ENFORCING_CNI,
        flannel,
        format!(
            "the cluster runs flannel ({}) and no agent that enforces NetworkPolicy (Calico/Canal, Cilium, Antrea, kube-router, Weave, netfence): the API server accepts its {}, nothing enforces them",
            cx.cluster.pods[flannel].key(),
            if n == 1 { "1 NetworkPolicy".to_string() } else { format!("{n} NetworkPolicies") }
        ),
        "run an enforcing agent alongside flannel (Canal, or the netfence agent: deploy/)".into(),
    );
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, cluster, np, np_in, rules};

    const DNS: &str = "{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}], ports: [{port: 53, protocol: UDP}]}";

    #[test]
    fn dns_against_the_real_servers() {
        check("{podSelector: {}, policyTypes: [Egress]}", &[]);
        check("{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 8080}]}]}", &["egress-without-dns"]);
        check(&format!("{{podSelector: {{}}, policyTypes: [Egress], egress: [{DNS}]}}"), &[]);
        // Port 53 to a pod that is not a DNS server does not count.
        check("{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 53, protocol: UDP}]}]}", &["egress-without-dns"]);
        // The DNS pods' own ingress denies it.
        let deny_ks = np_in("kube-system", "deny", "{podSelector: {}}");
        let yaml = cluster(&format!("{deny_ks}{}", np(&format!("{{podSelector: {{}}, policyTypes: [Egress], egress: [{DNS}]}}"))));
        assert_eq!(rules(&yaml), ["egress-without-dns", "other-side-denies"]);
    }

    #[test]
    fn openshift_dns_listens_on_5353() {
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: openshift-dns}\n---\n";
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: dns-default-x, namespace: openshift-dns, labels: {dns.operator.openshift.io/daemonset-dns: default}}\nspec: {containers: [{name: dns, ports: [{name: dns, containerPort: 5353, protocol: UDP}, {name: dns-tcp, containerPort: 5353}]}]}\nstatus: {podIP: 10.0.3.3}\n---\n";
        let to = "{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: openshift-dns}}}";
        let p = |port: u16| np(&format!("{{podSelector: {{}}, policyTypes: [Egress], egress: [{{to: [{to}], ports: [{{port: {port}, protocol: UDP}}]}}]}}"));
        // Without CoreDNS in the dump: the OpenShift pod is the only server.
        let base = cluster("").replace("k8s-app: kube-dns", "app: other").replace("{name: dns, containerPort: 53, protocol: UDP}, ", "");
        let with = |policy: String| format!("{base}{ns}{pod}{policy}");
        let mut b = crate::model::load::ClusterBuilder::new().keep_sources();
        b.add_text("t.yaml", &with(p(53))).unwrap();
        let (c, _, s) = b.finish_with_sources();
        let f = crate::lint::lint(&c, &crate::ir::resolve(&c), &s, &Default::default());
        assert_eq!(f.iter().map(|f| f.rule).collect::<Vec<_>>(), ["egress-without-dns"]);
        assert!(f[0].message.contains("listen on 5353/UDP"), "{}", f[0].message);
        assert_eq!(rules(&with(p(5353))), Vec::<String>::new());
    }

    #[test]
    fn both_ends() {
        let db = np_in("x", "db", "{podSelector: {matchLabels: {app: b}}, ingress: [{from: [{podSelector: {matchLabels: {app: nobody}}}]}]}");
        let client = np("{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 8080}]}, {to: [{namespaceSelector: {}}], ports: [{port: 53, protocol: UDP}]}]}");
        let found = rules(&cluster(&format!("{db}{client}")));
        assert!(found.contains(&"other-side-denies".to_string()), "{found:?}");
        let ok = np_in("x", "db", "{podSelector: {matchLabels: {app: b}}, ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}");
        let found = rules(&cluster(&format!("{ok}{client}")));
        assert!(!found.contains(&"other-side-denies".to_string()), "{found:?}");
    }

    #[test]
    fn flannel_without_an_enforcer() {
        let flannel = "apiVersion: v1\nkind: Pod\nmetadata: {name: kube-flannel-ds-x, namespace: kube-flannel, labels: {app: flannel}}\nspec: {hostNetwork: true, containers: [{name: c}]}\nstatus: {podIP: 172.18.0.2}\n---\n";
        assert_eq!(rules(&cluster(&format!("{flannel}{}", np("{podSelector: {}}")))), ["no-enforcing-cni"]);
        assert_eq!(rules(&cluster(flannel)), Vec::<String>::new());
    }
}
