//! ipBlocks judged against the pods' and nodes' addresses in the dump:
//! where CNIs disagree (pod and node addresses inside an ipBlock), a
//! single-family "anywhere" on dual-stack pods, and excepts that leave
//! nothing.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{count, some_names, Ctx, Rule, Severity};
use crate::model::{Direction, Family, Peer, PodId};

pub static IP_BLOCK_COVERS_PODS: Rule = Rule {
    id: "ip-block-covers-pods",
    severity: Severity::Warning,
    pitfalls: &[10],
    summary: "an ipBlock (narrower than /0) that contains pod addresses",
    help: "Whether an ipBlock matches pod traffic is implementation-defined: Calico (and netfence) match pod IPs, Cilium does not (calico #6634, cilium #9209). Pod IPs also change on restart. Select pods with selectors; except the pod CIDRs if outside addresses are meant.",
};

pub static IP_BLOCK_COVERS_NODES: Rule = Rule {
    id: "ip-block-covers-nodes",
    severity: Severity::Info,
    pitfalls: &[10, 14],
    summary: "an ipBlock (narrower than /0, wider than one address) that contains node addresses",
    help: "Node addresses are host or remote-node entities for Cilium, not ipBlock addresses (#35212, #12277); Calico and netfence match them. Traffic from a pod's own node is always allowed anyway. Right for API-server egress (node IP:6443); check the CNI otherwise.",
};

pub static IP_BLOCK_ANY_INCLUDES_CLUSTER: Rule = Rule {
    id: "ip-block-any-includes-cluster",
    severity: Severity::Info,
    pitfalls: &[10],
    summary: "`0.0.0.0/0` or `::/0` without an except for the cluster's pod (and node) addresses",
    help: "Meant as 'the internet', an all-addresses ipBlock also allows in-cluster traffic on Calico and netfence, but not on Cilium (calico #6634, cilium #19601). Except the pod CIDRs to mean outside-only on every CNI.",
};

pub static IP_BLOCK_SINGLE_FAMILY: Rule = Rule {
    id: "ip-block-single-family",
    severity: Severity::Warning,
    pitfalls: &[11],
    summary: "a rule allows all of one address family (`0.0.0.0/0`) but not the other, for dual-stack pods",
    help: "On dual-stack pods an IPv4-only 'anywhere' ipBlock leaves IPv6 traffic denied (cilium #22610 is the opposite bug). Add the other family's block.",
};

pub static EXCEPT_COVERS_CIDR: Rule = Rule {
    id: "except-covers-cidr",
    severity: Severity::Error,
    pitfalls: &[31],
    summary: "an ipBlock whose excepts together cover its whole cidr: it matches nothing",
    help: "The API server only checks each except against the cidr; several excepts can still add up to the whole block, so the peer matches no address at all.",
};

pub(super) fn check(cx: &mut Ctx) {
    let node_ips: Vec<(IpAddr, &str)> =
        cx.cluster.nodes.values().flat_map(|n| n.internal_ips.iter().map(move |ip| (*ip, n.name.as_str()))).collect();
    let pod_cidrs: Vec<IpNet> = cx.cluster.nodes.values().flat_map(|n| n.pod_cidrs.iter().copied()).collect();
    for pid in 0..cx.cluster.policies.len() {
        for dir in Direction::BOTH {
            if !cx.cluster.policies[pid].isolates(dir) {
                continue;
            }
            for ri in 0..cx.cluster.policies[pid].rules(dir).len() {
                single_family(cx, pid, dir, ri);
                for pi in 0..cx.cluster.policies[pid].rules(dir)[ri].peers.len() {
                    let Peer::IpBlock { cidr, except } = &cx.cluster.policies[pid].rules(dir)[ri].peers[pi] else { continue };
                    let (cidr, except) = (*cidr, except.clone());
                    let field = format!("spec.{}[{ri}].{}[{pi}].ipBlock", dir.field(), dir.peer_field());
                    block(cx, pid, &field, cidr, &except, &node_ips, &pod_cidrs);
                }
            }
        }
    }
}

fn block(cx: &mut Ctx, pid: usize, field: &str, cidr: IpNet, except: &[IpNet], node_ips: &[(IpAddr, &str)], pod_cidrs: &[IpNet]) {
    let matches = |ip: &IpAddr| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip));
    if !except.is_empty() && IpNet::aggregate(&except.to_vec()) == [cidr] {
        cx.policy(
            &EXCEPT_COVERS_CIDR,
            pid,
            format!("{field}.except"),
            format!("the excepts of ipBlock {cidr} ({}) cover all of it: this peer matches no address", some_names(except.iter().map(ToString::to_string))),
            "remove the except that should not be there, or the whole peer".into(),
        );
        return;
    }
    let pods: Vec<(PodId, IpAddr)> = cx
        .cluster
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_policy_pod())
        .flat_map(|(i, p)| p.ips.iter().filter(|ip| matches(ip)).map(move |ip| (i, *ip)))
        .collect();
    let nodes: Vec<(IpAddr, &str)> = node_ips.iter().copied().filter(|(ip, _)| matches(ip)).collect();
    let overlapping: Vec<IpNet> = pod_cidrs
        .iter()
        .copied()
        .filter(|c| Family::of_net(c) == Family::of_net(&cidr) && (cidr.contains(c) || c.contains(&cidr)) && !except.iter().any(|e| e.contains(c)))
        .collect();
    let pod_names = || some_names(pods.iter().map(|(p, ip)| format!("{} {ip}", cx.cluster.pods[*p].key())));
    let except_hint = if overlapping.is_empty() {
        String::new()
    } else {
        format!("; the pod CIDRs it overlaps: {}", some_names(overlapping.iter().map(ToString::to_string)))
    };
    if cidr.prefix_len() == 0 {
        if pods.is_empty() && nodes.is_empty() {
            return;
        }
        let mut what = Vec::new();
        if !pods.is_empty() {
            what.push(count(pods.len(), "pod address"));
        }
        if !nodes.is_empty() {
            what.push(count(nodes.len(), "node address"));
        }
        cx.policy(
            &IP_BLOCK_ANY_INCLUDES_CLUSTER,
            pid,
            format!("{field}.cidr"),
            format!(
                "ipBlock {cidr} also contains the cluster's {}: in-cluster traffic matches it on Calico and netfence, not on Cilium",
                what.join(" and ")
            ),
            if overlapping.is_empty() {
                "if only outside addresses are meant, except the pod and node addresses".to_string()
            } else {
                format!("if only outside addresses are meant, add except: [{}]", overlapping.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            },
        );
        return;
    }
    if !pods.is_empty() {
        cx.policy(
            &IP_BLOCK_COVERS_PODS,
            pid,
            format!("{field}.cidr"),
            format!(
                "ipBlock {cidr} contains {} ({}): CNIs disagree on whether ipBlocks match pods (Calico and netfence do, Cilium does not), and pod IPs change on restart",
                count(pods.len(), "pod address"),
                pod_names()
            ),
            format!("select those pods with podSelector/namespaceSelector instead{except_hint}"),
        );
    }
    // A host route to a node's address names that node on purpose.
    let names_a_node = cidr.prefix_len() == cidr.max_prefix_len() && !nodes.is_empty();
    if !nodes.is_empty() && !names_a_node {
        cx.policy(
            &IP_BLOCK_COVERS_NODES,
            pid,
            format!("{field}.cidr"),
            format!(
                "ipBlock {cidr} contains {} ({}): Cilium treats node addresses as host/remote-node, not ipBlock addresses; Calico and netfence match them",
                count(nodes.len(), "node address"),
                some_names(nodes.iter().map(|(ip, n)| format!("{n} {ip}")))
            ),
            "if the nodes are meant (API server on node:6443), keep it and check your CNI; otherwise except the node addresses".into(),
        );
    }
}

/// A rule allowing all of one family but not the other, for dual-stack pods.
fn single_family(cx: &mut Ctx, pid: usize, dir: Direction, ri: usize) {
    let rule = &cx.cluster.policies[pid].rules(dir)[ri];
    let any = |f: Family| {
        rule.peers.iter().position(|p| matches!(p, Peer::IpBlock { cidr, .. } if cidr.prefix_len() == 0 && Family::of_net(cidr) == f))
    };
    let (pi, missing) = match (any(Family::IPv4), any(Family::IPv6)) {
        (Some(pi), None) => (pi, Family::IPv6),
        (None, Some(pi)) => (pi, Family::IPv4),
        _ => return,
    };
    let dual: Vec<PodId> =
        cx.ir.policies[pid].selected.iter().copied().filter(|&p| cx.cluster.pods[p].ip(missing).is_some()).collect();
    if dual.is_empty() {
        return;
    }
    let Peer::IpBlock { cidr, .. } = &rule.peers[pi] else { return };
    let other = if missing == Family::IPv6 { "::/0" } else { "0.0.0.0/0" };
    cx.policy(
        &IP_BLOCK_SINGLE_FAMILY,
        pid,
        format!("spec.{}[{ri}].{}[{pi}].ipBlock.cidr", dir.field(), dir.peer_field()),
        format!(
            "ipBlock {cidr} allows {} only, but {} an {missing} address too ({}): their {missing} {} traffic stays denied",
            Family::of_net(cidr),
            if dual.len() == 1 { "1 selected pod has".to_string() } else { format!("{} selected pods have", dual.len()) },
            some_names(dual.iter().map(|&p| cx.cluster.pods[p].key())),
            dir.field()
        ),
        format!("add a peer `ipBlock: {{cidr: {other}}}` (with the same excepts in {missing})"),
    );
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, cluster, np, rules};

    #[test]
    fn blocks() {
        let from = |block: &str| format!("{{podSelector: {{}}, ingress: [{{from: [{{ipBlock: {block}}}]}}]}}");
        check(&from("{cidr: 192.0.2.0/24}"), &[]);
        check(&from("{cidr: 10.0.0.0/24}"), &["ip-block-covers-pods"]);
        check(&from("{cidr: 10.0.0.0/24, except: [10.0.0.0/28]}"), &[]);
        check(&from("{cidr: 172.18.0.0/16}"), &["ip-block-covers-nodes"]);
        check(&from("{cidr: 172.18.0.2/32}"), &[]);
        check(&from("{cidr: 0.0.0.0/0}"), &["ip-block-any-includes-cluster"]);
        check(&from("{cidr: 0.0.0.0/0, except: [10.0.0.0/16, 172.18.0.0/16]}"), &[]);
        check(&from("{cidr: 192.0.2.0/24, except: [192.0.2.0/25, 192.0.2.128/25]}"), &["except-covers-cidr"]);
    }

    #[test]
    fn dual_stack() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x, labels: {app: d}}\nstatus: {podIPs: [{ip: 10.0.0.7}, {ip: 'fd00::7'}]}\n---\n";
        let p = |blocks: &str| np(&format!("{{podSelector: {{matchLabels: {{app: d}}}}, ingress: [{{from: [{blocks}]}}]}}"));
        let v4 = "{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/16, 172.18.0.0/16]}}";
        assert_eq!(rules(&cluster(&format!("{pod}{}", p(v4)))), ["ip-block-single-family"]);
        let both = format!("{v4}, {{ipBlock: {{cidr: '::/0', except: ['fd00::/64']}}}}");
        assert_eq!(rules(&cluster(&format!("{pod}{}", p(&both)))), Vec::<String>::new());
    }
}
