//! The shape of a policy: policyTypes defaulting, empty versus missing
//! lists, rules that allow everything or nothing more than another rule,
//! and names defined twice. Most of these need to know what was *written*
//! (`egress: []` versus no `egress`), which only the sources keep.

use super::{count, Ctx, Rule, Severity};
use crate::ir::{PeerIr, RuleIr};
use crate::model::{Direction, PortRef, PortSpec};

pub static RULES_IGNORED: Rule = Rule {
    id: "rules-ignored",
    severity: Severity::Error,
    pitfalls: &[5],
    summary: "ingress or egress rules in a policy whose policyTypes does not list that direction",
    help: "With `policyTypes: [Egress]` the ingress rules are silently ignored (and vice versa): they have no effect at all. List both types, or delete the rules.",
};

pub static EMPTY_EGRESS_NOT_ISOLATED: Rule = Rule {
    id: "empty-egress-not-isolated",
    severity: Severity::Warning,
    pitfalls: &[5],
    summary: "`egress: []` without policyTypes, which leaves egress open",
    help: "Omitted policyTypes default to Ingress, plus Egress only when egress has rules: `{podSelector: {}, egress: []}` denies ingress and leaves egress open. Write `policyTypes: [Ingress, Egress]` to deny egress.",
};

pub static EMPTY_LIST_MEANS_ALL: Rule = Rule {
    id: "empty-list-means-all",
    severity: Severity::Warning,
    pitfalls: &[4],
    summary: "`from: []`, `to: []` or `ports: []` written in a rule, which means every peer or every port, not none",
    help: "An empty from/to/ports list is the same as leaving it out: the rule matches every peer (or port). To allow nothing, leave the direction without rules (`ingress: []` with the type listed).",
};

pub static ALLOW_ALL_RULE: Rule = Rule {
    id: "allow-all-rule",
    severity: Severity::Info,
    pitfalls: &[4],
    summary: "a rule with neither peers nor ports: it allows all traffic in its direction",
    help: "`ingress: [{}]` allows everything to the selected pods, making every other ingress rule selecting them moot (kubeaudit AllowAllIngressNetworkPolicyExists). Listed so that it is a decision.",
};

pub static REDUNDANT_RULE: Rule = Rule {
    id: "redundant-rule",
    severity: Severity::Info,
    pitfalls: &[24],
    summary: "a rule that allows nothing another rule of the same policy does not already allow (judged on the dump's pods)",
    help: "A rule whose peers and ports are contained in another rule's adds nothing; it is usually a leftover or a copy that drifted. Delete it or merge it.",
};

pub static DUPLICATE_NAME: Rule = Rule {
    id: "duplicate-name",
    severity: Severity::Error,
    pitfalls: &[23],
    summary: "two NetworkPolicies with the same namespace and name in the input",
    help: "The API server keeps one object per name: applying both, the later silently replaces the earlier. netfence analyses the first one read.",
};

pub(super) fn check(cx: &mut Ctx) {
    duplicates(cx);
    for pid in 0..cx.cluster.policies.len() {
        let pol = &cx.cluster.policies[pid];
        let src = cx.sources.policy(&pol.namespace, &pol.name);
        let selected = cx.ir.policies[pid].selected.len();
        if !pol.types_explicit && src.and_then(|s| s.value("spec.egress")).is_some_and(|v| v.as_array().is_some_and(Vec::is_empty)) {
            cx.policy(
                &EMPTY_EGRESS_NOT_ISOLATED,
                pid,
                "spec.egress".into(),
                format!(
                    "`egress: []` without policyTypes: they default to [Ingress] (Egress only when egress has rules), so egress of the {} stays open",
                    count(selected, "selected pod")
                ),
                "add `policyTypes: [Ingress, Egress]` to deny all egress".into(),
            );
        }
        for dir in Direction::BOTH {
            let pol = &cx.cluster.policies[pid];
            let rules = pol.rules(dir);
            if !pol.isolates(dir) {
                if !rules.is_empty() {
                    let ty = if dir == Direction::Ingress { "Ingress" } else { "Egress" };
                    cx.policy(
                        &RULES_IGNORED,
                        pid,
                        format!("spec.{}", dir.field()),
                        format!("{} {} rule(s), but policyTypes does not list {ty}: they are ignored", rules.len(), dir.field()),
                        format!("add {ty} to spec.policyTypes, or delete spec.{}", dir.field()),
                    );
                }
                continue;
            }
            for ri in 0..rules.len() {
                let rule = &cx.cluster.policies[pid].rules(dir)[ri];
                let base = format!("spec.{}[{ri}]", dir.field());
                let mut written_empty = false;
                for list in [dir.peer_field(), "ports"] {
                    let field = format!("{base}.{list}");
                    let empty = src.and_then(|s| s.value(&field)).is_some_and(|v| v.as_array().is_some_and(Vec::is_empty));
                    if !empty {
                        continue;
                    }
                    written_empty = true;
                    let (what, means) = if list == "ports" {
                        ("port", "every port")
                    } else if dir == Direction::Ingress {
                        ("source", "every source (pods, nodes, the internet)")
                    } else {
                        ("destination", "every destination (pods, nodes, the internet)")
                    };
                    cx.policy(
                        &EMPTY_LIST_MEANS_ALL,
                        pid,
                        field,
                        format!("`{list}: []` is the same as no {list}: this rule allows {means}, not no {what}"),
                        format!("list the {what}s meant; to allow none, delete the rule (an isolating policy without rules denies all)"),
                    );
                }
                if rule.peers.is_empty() && rule.ports.is_empty() && !written_empty {
                    cx.policy(
                        &ALLOW_ALL_RULE,
                        pid,
                        base.clone(),
                        format!(
                            "rule {ri} has no {} and no ports: it allows all {} of the {}, whatever the other rules say",
                            dir.peer_field(),
                            dir.field(),
                            count(selected, "selected pod")
                        ),
                        format!("if that is not meant, list the peers ({}) and ports to allow", dir.peer_field()),
                    );
                }
            }
            redundant(cx, pid, dir);
        }
    }
}

/// Rules of one policy and direction contained in another of them.
fn redundant(cx: &mut Ctx, pid: usize, dir: Direction) {
    let rules = cx.ir.policies[pid].rules(dir);
    for i in 0..rules.len() {
        let by = (0..rules.len()).find(|&j| j != i && covers(&rules[j], &rules[i]) && (j < i || !covers(&rules[i], &rules[j])));
        let Some(j) = by else { continue };
        cx.policy(
            &REDUNDANT_RULE,
            pid,
            format!("spec.{}[{i}]", dir.field()),
            format!("{} rule {i} allows nothing that rule {j} does not (same or wider peers and ports, on the pods of the dump)", dir.field()),
            format!("delete rule {i}, or merge what differs into rule {j}"),
        );
    }
}

/// Does rule `b` allow everything rule `a` allows?
fn covers(b: &RuleIr, a: &RuleIr) -> bool {
    let peers = match (&a.peers, &b.peers) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(pa), Some(pb)) => pa.iter().all(|x| pb.iter().any(|y| peer_covered(x, y))),
    };
    let ports = b.ports.is_empty() || (!a.ports.is_empty() && a.ports.iter().all(|x| b.ports.iter().any(|y| port_covered(x, y))));
    peers && ports
}

/// Is every address peer `a` matches matched by `b`? A peer that selects no
/// pod is never "covered": selecting nothing is another rule's finding.
fn peer_covered(a: &PeerIr, b: &PeerIr) -> bool {
    match (a, b) {
        (PeerIr::Pods(x), PeerIr::Pods(y)) => !x.is_empty() && x.iter().all(|p| y.binary_search(p).is_ok()),
        (PeerIr::IpBlock { cidr: ca, except: ea }, PeerIr::IpBlock { cidr: cb, except: eb }) => {
            cb.contains(ca)
                && eb.iter().all(|e| !(e.contains(ca) || ca.contains(e)) || ea.iter().any(|x| x.contains(e)))
        }
        _ => false,
    }
}

fn port_covered(a: &PortSpec, b: &PortSpec) -> bool {
    a.protocol == b.protocol
        && match (&a.port, &b.port) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(PortRef::Number(x)), Some(PortRef::Number(y))) => y <= x && a.end_port.unwrap_or(*x) <= b.end_port.unwrap_or(*y),
            (Some(PortRef::Named(x)), Some(PortRef::Named(y))) => x == y,
            _ => false,
        }
}

fn duplicates(cx: &mut Ctx) {
    let mut keys: Vec<&(String, String)> = cx.sources.policies.iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| k).collect();
    keys.sort();
    for key in keys {
        let all = &cx.sources.policies[key];
        let first = all[0].locate("metadata.name");
        for again in &all[1..] {
            cx.push(
                &DUPLICATE_NAME,
                "NetworkPolicy",
                format!("{}/{}", key.0, key.1),
                again.locate("metadata.name"),
                "metadata.name".into(),
                format!(
                    "NetworkPolicy {}/{} is defined again (first at {}:{}): the API server keeps one, the later apply replaces the earlier; this one is not analysed",
                    key.0, key.1, first.file, first.pos.line
                ),
                "rename one of them, or delete the copy".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, cluster, np, rules};

    #[test]
    fn types_and_empty_lists() {
        check("{podSelector: {}, ingress: [{}], policyTypes: [Egress]}", &["rules-ignored"]);
        check("{podSelector: {}, egress: []}", &["empty-egress-not-isolated"]);
        check("{podSelector: {}, egress: [], policyTypes: [Ingress, Egress]}", &[]);
        check("{podSelector: {}, ingress: [{from: [], ports: [{port: 80}]}]}", &["empty-list-means-all"]);
        check("{podSelector: {}, ingress: [{from: []}]}", &["empty-list-means-all"]);
        check("{podSelector: {}, ingress: [{}]}", &["allow-all-rule"]);
        check("{podSelector: {}, ingress: [{ports: [{port: 80}]}]}", &[]);
    }

    #[test]
    fn redundancy() {
        let peer = "from: [{podSelector: {matchLabels: {app: b}}}]";
        check(&format!("{{podSelector: {{}}, ingress: [{{{peer}, ports: [{{port: 80}}]}}, {{{peer}, ports: [{{port: 80}}]}}]}}"), &["redundant-rule"]);
        check(&format!("{{podSelector: {{}}, ingress: [{{{peer}, ports: [{{port: 80}}]}}, {{ports: [{{port: 70, endPort: 90}}]}}]}}"), &["redundant-rule"]);
        check(&format!("{{podSelector: {{}}, ingress: [{{{peer}, ports: [{{port: 80}}]}}, {{{peer}, ports: [{{port: 81}}]}}]}}"), &[]);
        check(
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/25}}]}, {from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.0/26]}}]}]}",
            &[],
        );
        check(
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/25, except: [192.0.2.0/26]}}]}, {from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.0/26]}}]}]}",
            &["redundant-rule"],
        );
    }

    #[test]
    fn duplicate_names() {
        let p = np("{podSelector: {}}");
        assert_eq!(rules(&cluster(&format!("{p}{p}"))), ["duplicate-name"]);
    }
}
