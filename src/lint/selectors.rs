//! Selectors judged against the pods and namespaces of the dump: matching
//! nothing (and why: a typo'd key, the wrong namespace, host-network pods),
//! matching more than meant (`namespaceSelector: {}`, OR-ed peers, `NotIn`
//! on unlabelled objects) or matching only until the next rollout.
//!
//! For each selector at most one "matches nothing" finding is made, the most
//! specific: an unknown label key, then a pod selector meant for another
//! namespace, then host-network pods, then plain "selects nothing".

use std::collections::{BTreeSet, HashSet};

use super::{count, some_names, Ctx, Rule, Severity};
use crate::ir::PeerIr;
use crate::model::{Direction, Peer, PodId, NAMESPACE_NAME_LABEL};
use crate::selector::{Operator, Selector};

pub static SELECTS_NO_POD: Rule = Rule {
    id: "selects-no-pod",
    severity: Severity::Warning,
    pitfalls: &[16],
    summary: "spec.podSelector selects no pod of the policy's namespace",
    help: "A policy whose podSelector matches nothing is silently inert (a typo in a label, or the policy applied to the wrong namespace). Check the labels against the pods of the namespace, or metadata.namespace.",
};

pub static PEER_SELECTS_NO_POD: Rule = Rule {
    id: "peer-selects-no-pod",
    severity: Warning,
    pitfalls: &[16],
    summary: "a from/to peer selects no pod (its namespaceSelector matches no namespace, or its podSelector no pod there)",
    help: "A peer that matches nothing admits nothing, silently: the traffic it was written for stays denied. Fix the selector's labels against the dump's namespaces and pods.",
};

pub static POD_SELECTOR_IN_OTHER_NAMESPACE: Rule = Rule {
    id: "pod-selector-in-other-namespace",
    severity: Warning,
    pitfalls: &[2],
    summary: "a podSelector-only peer matches no pod of the policy's namespace but matches pods elsewhere",
    help: "A peer with only a podSelector means pods of the policy's own namespace: `from: [{podSelector: {app: prometheus}}]` never admits Prometheus in `monitoring`. Add a namespaceSelector to the same peer.",
};

pub static UNKNOWN_LABEL_KEY: Rule = Rule {
    id: "unknown-label-key",
    severity: Warning,
    pitfalls: &[15, 16],
    summary: "a selector requires a label key that no pod (or namespace) of the dump carries",
    help: "`namespaceSelector: {matchLabels: {name: x}}` relies on a label that rarely exists; the API server sets `kubernetes.io/metadata.name` on every namespace. A required key found on no object means the selector matches nothing.",
};

pub static SPLIT_NAMESPACE_POD_PEER: Rule = Rule {
    id: "split-namespace-pod-peer",
    severity: Warning,
    pitfalls: &[1],
    summary: "a namespaceSelector peer and a podSelector peer in one rule look like one AND-ed peer split in two",
    help: "`- {namespaceSelector: A, podSelector: B}` is pods B in namespaces A; written as two `-` items it is every pod of A OR pods B of the policy's namespace (k8s #50451). Fires when pods B exist in namespaces A, so the split admits more than the AND would.",
};

pub static NAMESPACE_SELECTOR_MATCHES_ALL: Rule = Rule {
    id: "namespace-selector-matches-all",
    severity: Info,
    pitfalls: &[3],
    summary: "`namespaceSelector: {}` admits pods of every namespace",
    help: "An empty namespaceSelector is every namespace of the cluster; leaving it out means the policy's own namespace. Listed so that a peer reaching across the cluster is a decision, not an accident.",
};

pub static EPHEMERAL_LABEL: Rule = Rule {
    id: "ephemeral-label",
    severity: Warning,
    pitfalls: &[17],
    summary: "a selector uses a label that controllers change on every rollout (pod-template-hash, controller-revision-hash, ...)",
    help: "pod-template-hash and controller-revision-hash name one ReplicaSet or revision; after the next rollout the new pods carry another value and the selector matches none of them. Select on the workload's own labels.",
};

pub static NOT_IN_MATCHES_MISSING_KEY: Rule = Rule {
    id: "not-in-matches-missing-key",
    severity: Info,
    pitfalls: &[30],
    summary: "a NotIn expression also matches pods (or namespaces) that lack the key",
    help: "`env notin (prod)` matches every object without an env label too, as Kubernetes defines NotIn. Add `{key: env, operator: Exists}` if only labelled objects are meant.",
};

pub static HOST_NETWORK_POD_SELECTED: Rule = Rule {
    id: "host-network-pod-selected",
    severity: Warning,
    pitfalls: &[14],
    summary: "a selector matches only host-network pods, which NetworkPolicy neither isolates nor matches as peers",
    help: "Host-network pods share their node's network namespace: no policy isolates them, and their traffic carries the node's address, which no pod selector matches (calico #4493, k8s #90590). Use an ipBlock with the node addresses as a peer; protect the node itself with a host firewall.",
};

use Severity::{Info, Warning};

/// Labels that name one rollout of a workload, not the workload.
const EPHEMERAL_KEYS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
];

/// What a selector is matched against.
#[derive(Clone, Copy)]
enum Target<'p> {
    /// Pods of the namespace named, or of every namespace `Matching` selects.
    Pods(Scope<'p>),
    Namespaces,
}

#[derive(Clone, Copy)]
enum Scope<'p> {
    Own(&'p str),
    Matching(&'p Selector),
}

struct Known<'a> {
    pod_keys: HashSet<&'a str>,
    ns_keys: HashSet<&'a str>,
}

pub(super) fn check(cx: &mut Ctx) {
    let known = Known {
        pod_keys: cx.cluster.pods.iter().flat_map(|p| p.labels.keys()).collect(),
        ns_keys: cx.cluster.namespaces.values().flat_map(|n| n.labels.keys()).collect(),
    };
    for pid in 0..cx.cluster.policies.len() {
        policy_selector(cx, &known, pid);
        for dir in Direction::BOTH {
            for ri in 0..cx.cluster.policies[pid].rules(dir).len() {
                let npeers = cx.cluster.policies[pid].rules(dir)[ri].peers.len();
                for pi in 0..npeers {
                    peer(cx, &known, pid, dir, ri, pi);
                }
                split_peers(cx, pid, dir, ri);
            }
        }
    }
}

fn policy_selector(cx: &mut Ctx, known: &Known, pid: usize) {
    let pol = &cx.cluster.policies[pid];
    let sel = &pol.pod_selector;
    let path = "spec.podSelector";
    let target = Target::Pods(Scope::Own(&pol.namespace));
    ephemeral(cx, pid, sel, path);
    not_in(cx, pid, sel, path, target);
    if unknown_keys(cx, known, pid, sel, path, target) || !cx.has_pods || !cx.ir.policies[pid].selected.is_empty() {
        return;
    }
    let host = host_network_matches(cx, target, sel);
    if !host.is_empty() {
        let names = some_names(host.iter().map(|&p| cx.cluster.pods[p].key()));
        cx.policy(
            &HOST_NETWORK_POD_SELECTED,
            pid,
            path.into(),
            format!("podSelector {sel} matches only host-network pods ({names}): no NetworkPolicy isolates them, they share their node's network namespace"),
            "host-network pods cannot be isolated by a NetworkPolicy: protect their node with a host firewall, or delete this policy".into(),
        );
        return;
    }
    // Nothing matches in the policy's own namespace: whatever matches is elsewhere.
    let elsewhere = cx.policy_pods_matching(sel);
    let (message, fix) = if elsewhere.pods.is_empty() {
        let near = nearby_values(cx, cx.policy_pods_in(&pol.namespace).collect(), sel);
        (
            format!("podSelector {sel} selects no pod in namespace {}{near}: the policy has no effect", pol.namespace),
            "match the labels of the pods this policy is meant for, or delete it".to_string(),
        )
    } else {
        let namespaces = &elsewhere.by_ns;
        (
            format!(
                "podSelector {sel} selects no pod in namespace {}, but {} in {} ({}): a policy only applies in its own namespace",
                pol.namespace,
                count(elsewhere.pods.len(), "pod"),
                count(namespaces.len(), "other namespace"),
                some_names(namespaces.keys().map(|s| s.to_string()))
            ),
            match namespaces.keys().next() {
                Some(only) if namespaces.len() == 1 => format!("set metadata.namespace to {only}, or fix the labels"),
                _ => "create the policy in each namespace meant (metadata.namespace), or fix the labels".to_string(),
            },
        )
    };
    cx.policy(&SELECTS_NO_POD, pid, path.into(), message, fix);
}

fn peer(cx: &mut Ctx, known: &Known, pid: usize, dir: Direction, ri: usize, pi: usize) {
    let pol = &cx.cluster.policies[pid];
    let Peer::Pods { namespaces, pods } = &pol.rules(dir)[ri].peers[pi] else { return };
    let field = format!("spec.{}[{ri}].{}[{pi}]", dir.field(), dir.peer_field());
    let scope = match namespaces {
        None => Scope::Own(&pol.namespace),
        Some(s) => Scope::Matching(s),
    };
    let mut explained = false;
    if let Some(ns) = namespaces {
        let path = format!("{field}.namespaceSelector");
        not_in(cx, pid, ns, &path, Target::Namespaces);
        explained |= unknown_keys(cx, known, pid, ns, &path, Target::Namespaces);
    }
    if let Some(sel) = pods {
        let path = format!("{field}.podSelector");
        ephemeral(cx, pid, sel, &path);
        not_in(cx, pid, sel, &path, Target::Pods(scope));
        explained |= unknown_keys(cx, known, pid, sel, &path, Target::Pods(scope));
    }
    let Some(PeerIr::Pods(ids)) = cx.ir.policies[pid].rules(dir)[ri].peers.as_ref().and_then(|p| p.get(pi)) else { return };
    if !ids.is_empty() {
        if namespaces.as_ref().is_some_and(Selector::is_empty) {
            let outside: Vec<PodId> = ids.iter().copied().filter(|&p| cx.cluster.pods[p].namespace != pol.namespace).collect();
            let nss: BTreeSet<&str> = outside.iter().map(|&p| cx.cluster.pods[p].namespace.as_str()).collect();
            if !outside.is_empty() {
                let what = pods.as_ref().map_or("every pod".to_string(), |s| format!("pods {s}"));
                cx.policy(
                    &NAMESPACE_SELECTOR_MATCHES_ALL,
                    pid,
                    format!("{field}.namespaceSelector"),
                    format!(
                        "namespaceSelector {{}} matches every namespace: this peer admits {what} in {} besides {} ({})",
                        count(nss.len(), "namespace"),
                        pol.namespace,
                        some_names(outside.iter().map(|&p| cx.cluster.pods[p].key()))
                    ),
                    format!("if only namespace {} is meant, remove namespaceSelector; to name namespaces, match their labels (kubernetes.io/metadata.name)", pol.namespace),
                );
            }
        }
        return;
    }
    if explained || !cx.has_pods {
        return;
    }
    let all = Selector::default();
    let sel = pods.as_ref().unwrap_or(&all);
    if namespaces.is_none() {
        // The peer selects nothing in its own namespace: whatever matches is elsewhere.
        let elsewhere = cx.policy_pods_matching(sel);
        if !elsewhere.pods.is_empty() {
            let nss = &elsewhere.by_ns;
            let fix = match nss.keys().next() {
                Some(only) if nss.len() == 1 => format!(
                    "add `namespaceSelector: {{matchLabels: {{{NAMESPACE_NAME_LABEL}: {only}}}}}` to this same peer (same `-` item)"
                ),
                _ => "add a namespaceSelector matching the namespaces meant to this same peer (same `-` item)".to_string(),
            };
            cx.policy(
                &POD_SELECTOR_IN_OTHER_NAMESPACE,
                pid,
                format!("{field}.podSelector"),
                format!(
                    "podSelector {sel} matches no pod in namespace {} but {} in {} ({}): a podSelector alone only selects the policy's own namespace",
                    pol.namespace,
                    count(elsewhere.pods.len(), "pod"),
                    count(nss.len(), "other namespace"),
                    some_names(nss.keys().map(|s| s.to_string()))
                ),
                fix,
            );
            return;
        }
    }
    let host = host_network_matches(cx, Target::Pods(scope), sel);
    if !host.is_empty() {
        let nodes: BTreeSet<String> = host
            .iter()
            .filter_map(|&p| cx.cluster.pods[p].node.as_ref())
            .filter_map(|n| cx.cluster.nodes.get(n))
            .flat_map(|n| n.internal_ips.iter().map(|ip| ip.to_string()))
            .collect();
        let fix = if nodes.is_empty() {
            "replace this peer with an ipBlock of the nodes' addresses".to_string()
        } else {
            format!("replace this peer with ipBlocks of the nodes' addresses ({})", some_names(nodes.into_iter().map(|ip| format!("{ip}/32"))))
        };
        cx.policy(
            &HOST_NETWORK_POD_SELECTED,
            pid,
            field,
            format!(
                "this peer matches only host-network pods ({}): their traffic carries their node's address, which no pod selector matches",
                some_names(host.iter().map(|&p| cx.cluster.pods[p].key()))
            ),
            fix,
        );
        return;
    }
    let Some(ns_sel) = namespaces else {
        let near = nearby_values(cx, cx.policy_pods_in(&pol.namespace).collect(), sel);
        cx.policy(
            &PEER_SELECTS_NO_POD,
            pid,
            format!("{field}.podSelector"),
            format!("podSelector {sel} matches no pod in namespace {} or any other{near}: this peer admits nothing", pol.namespace),
            "match the labels of the pods meant, or remove the peer".into(),
        );
        return;
    };
    if !cx.has_namespaces {
        return;
    }
    let matched = cx.namespaces_matching(ns_sel);
    if matched.is_empty() {
        cx.policy(
            &PEER_SELECTS_NO_POD,
            pid,
            format!("{field}.namespaceSelector"),
            format!("namespaceSelector {ns_sel} matches none of the {} namespaces: this peer admits nothing", cx.cluster.namespaces.len()),
            format!("match the namespaces' labels (every namespace has {NAMESPACE_NAME_LABEL}: <name>)"),
        );
    } else {
        let candidates: Vec<PodId> = matched.iter().flat_map(|ns| cx.policy_pods_in(ns).collect::<Vec<_>>()).collect();
        let near = nearby_values(cx, candidates, sel);
        cx.policy(
            &PEER_SELECTS_NO_POD,
            pid,
            format!("{field}.podSelector"),
            format!("podSelector {sel} matches no pod in the {} namespaceSelector {ns_sel} matches ({}){near}: this peer admits nothing", count(matched.len(), "namespace"), some_names(matched.iter().map(|s| s.to_string()))),
            "match the labels of the pods meant, or remove the peer".into(),
        );
    }
}

/// Two peers of one rule that read like one AND-ed peer split in two.
fn split_peers(cx: &mut Ctx, pid: usize, dir: Direction, ri: usize) {
    let pol = &cx.cluster.policies[pid];
    let rule = &pol.rules(dir)[ri];
    let Some(peers_ir) = cx.ir.policies[pid].rules(dir)[ri].peers.as_ref() else { return };
    for (ai, a) in rule.peers.iter().enumerate() {
        let (Peer::Pods { namespaces: Some(ns_sel), pods: None }, Some(PeerIr::Pods(a_ids))) = (a, peers_ir.get(ai)) else { continue };
        for (bi, b) in rule.peers.iter().enumerate() {
            let Peer::Pods { namespaces: None, pods: Some(pod_sel) } = b else { continue };
            let and: Vec<PodId> = a_ids.iter().copied().filter(|&p| pod_sel.matches(&cx.cluster.pods[p].labels)).collect();
            if and.is_empty() || and.len() == a_ids.len() {
                continue;
            }
            let f = |i: usize| format!("spec.{}[{ri}].{}[{i}]", dir.field(), dir.peer_field());
            cx.policy(
                &SPLIT_NAMESPACE_POD_PEER,
                pid,
                f(bi),
                format!(
                    "peers {ai} (namespaceSelector {ns_sel}) and {bi} (podSelector {pod_sel}) are OR-ed: peer {ai} admits all {} of those namespaces, not only the {} with {pod_sel} ({}); peer {bi} means namespace {} only",
                    count(a_ids.len(), "pod"),
                    and.len(),
                    some_names(and.iter().map(|&p| cx.cluster.pods[p].key())),
                    pol.namespace
                ),
                format!("if pods {pod_sel} in namespaces {ns_sel} are meant, make it one peer: drop the `-` before this podSelector so both selectors are in one item"),
            );
        }
    }
}

fn ephemeral(cx: &mut Ctx, pid: usize, sel: &Selector, path: &str) {
    for (key, field) in requirement_keys(sel, path) {
        if !EPHEMERAL_KEYS.contains(&key) {
            continue;
        }
        cx.policy(
            &EPHEMERAL_LABEL,
            pid,
            field,
            format!("selector {sel} uses {key}, which controllers set per rollout: after the next rollout it matches none of the new pods"),
            "select on the workload's own labels (app, app.kubernetes.io/name) instead".into(),
        );
    }
}

/// Every key a selector mentions, with the field path where it is written.
fn requirement_keys<'s>(sel: &'s Selector, path: &str) -> Vec<(&'s str, String)> {
    let mut out: Vec<(&str, String)> = sel.match_labels.keys().map(|k| (k.as_str(), format!("{path}.matchLabels.{k}"))).collect();
    for (i, r) in sel.match_expressions.iter().enumerate() {
        out.push((r.key.as_str(), format!("{path}.matchExpressions[{i}].key")));
    }
    out
}

/// Requirements that need their key present (matchLabels, In, Exists) but
/// whose key no object of the target kind carries. Returns whether any
/// finding was made, so "matches nothing" is not said twice.
fn unknown_keys(cx: &mut Ctx, known: &Known, pid: usize, sel: &Selector, path: &str, target: Target) -> bool {
    let (keys, kind, given) = match target {
        Target::Pods(_) => (&known.pod_keys, "pod", cx.has_pods),
        Target::Namespaces => (&known.ns_keys, "namespace", cx.has_namespaces),
    };
    if !given {
        return false;
    }
    let mut required: Vec<(&str, Vec<&str>, String)> =
        sel.match_labels.iter().map(|(k, v)| (k.as_str(), vec![v.as_str()], format!("{path}.matchLabels.{k}"))).collect();
    for (i, r) in sel.match_expressions.iter().enumerate() {
        if matches!(r.operator, Operator::In | Operator::Exists) {
            required.push((r.key.as_str(), r.values.iter().map(String::as_str).collect(), format!("{path}.matchExpressions[{i}].key")));
        }
    }
    let mut any = false;
    for (key, values, field) in required {
        if keys.contains(key) {
            continue;
        }
        any = true;
        let fix = suggest(cx, target, key, &values);
        cx.policy(
            &UNKNOWN_LABEL_KEY,
            pid,
            field,
            format!("no {kind} of the dump has a label {key:?}, so selector {sel} matches nothing"),
            fix,
        );
    }
    any
}

/// A likely intended label for `key` in {values}: the namespace name label
/// when a value names a namespace, else a key that carries that value.
fn suggest(cx: &Ctx, target: Target, key: &str, values: &[&str]) -> String {
    if let Target::Namespaces = target {
        if let Some(v) = values.iter().find(|v| cx.cluster.namespaces.contains_key(**v)) {
            return format!("use `{NAMESPACE_NAME_LABEL}: {v}` (the API server sets it on every namespace)");
        }
    }
    let labels: Box<dyn Iterator<Item = &crate::selector::Labels>> = match target {
        Target::Pods(_) => Box::new(cx.cluster.pods.iter().map(|p| &p.labels)),
        Target::Namespaces => Box::new(cx.cluster.namespaces.values().map(|n| &n.labels)),
    };
    let mut alternatives = BTreeSet::new();
    for l in labels {
        for (k, v) in l {
            if values.contains(&v) && k != key {
                alternatives.insert(format!("{k}: {v}"));
            }
        }
    }
    match alternatives.into_iter().next() {
        Some(alt) => format!("did you mean `{alt}`? (objects of the dump carry it)"),
        None => format!("label the objects meant with {key:?}, or select on a label they carry"),
    }
}

/// NotIn requirements that match objects without the key.
fn not_in(cx: &mut Ctx, pid: usize, sel: &Selector, path: &str, target: Target) {
    for (i, r) in sel.match_expressions.iter().enumerate() {
        if r.operator != Operator::NotIn {
            continue;
        }
        let (kind, lacking): (&str, Vec<String>) = match target {
            Target::Pods(scope) => {
                if !cx.has_pods {
                    continue;
                }
                let pods = scope_policy_pods(cx, scope);
                ("pod", pods.into_iter().map(|p| &cx.cluster.pods[p]).filter(|p| !p.labels.contains_key(&r.key) && sel.matches(&p.labels)).map(|p| p.key()).collect())
            }
            Target::Namespaces => {
                if !cx.has_namespaces {
                    continue;
                }
                (
                    "namespace",
                    cx.cluster.namespaces.values().filter(|n| !n.labels.contains_key(&r.key) && sel.matches(&n.labels)).map(|n| n.name.clone()).collect(),
                )
            }
        };
        if lacking.is_empty() {
            continue;
        }
        let values = r.values.iter().cloned().collect::<Vec<_>>().join(",");
        cx.policy(
            &NOT_IN_MATCHES_MISSING_KEY,
            pid,
            format!("{path}.matchExpressions[{i}]"),
            format!("`{} notin ({values})` also matches {} without a {:?} label ({})", r.key, count(lacking.len(), kind), r.key, some_names(lacking.iter().cloned())),
            format!("if only {kind}s labelled {:?} are meant, add `{{key: {}, operator: Exists}}`", r.key, r.key),
        );
    }
}

/// Policy pods a pod selector in `scope` is matched against.
fn scope_policy_pods(cx: &Ctx, scope: Scope) -> Vec<PodId> {
    match scope {
        Scope::Own(ns) => cx.policy_pods_in(ns).collect(),
        Scope::Matching(ns_sel) => cx.namespaces_matching(ns_sel).iter().flat_map(|ns| cx.policy_pods_in(ns).collect::<Vec<_>>()).collect(),
    }
}

/// Host-network pods (taking part) in scope that `sel` matches.
fn host_network_matches(cx: &Ctx, target: Target, sel: &Selector) -> Vec<PodId> {
    let Target::Pods(scope) = target else { return Vec::new() };
    cx.host_pods
        .iter()
        .copied()
        .filter(|&p| {
            let pod = &cx.cluster.pods[p];
            let in_scope = match scope {
                Scope::Own(ns) => pod.namespace == ns,
                Scope::Matching(s) => cx.cluster.namespace_labels(&pod.namespace).is_some_and(|l| s.matches(l)),
            };
            in_scope && sel.matches(&pod.labels)
        })
        .collect()
}

/// ` (pods there carry app=cart, app=db)`: the values the candidates have
/// for the selector's matchLabels keys, so a typo shows.
fn nearby_values(cx: &Ctx, candidates: Vec<PodId>, sel: &Selector) -> String {
    let mut seen = BTreeSet::new();
    for (k, _) in &sel.match_labels {
        for &p in &candidates {
            if let Some(v) = cx.cluster.pods[p].labels.get(k) {
                seen.insert(format!("{k}={v}"));
            }
        }
    }
    if seen.is_empty() {
        String::new()
    } else {
        format!(" (pods there carry {})", some_names(seen))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, cluster, findings, np, np_in, rules};

    #[test]
    fn policy_selector() {
        check("{podSelector: {matchLabels: {app: nope}}}", &["selects-no-pod"]);
        check("{podSelector: {matchLabels: {app: web}}}", &["selects-no-pod"]);
        check("{podSelector: {matchLabels: {tier: web}}}", &["unknown-label-key"]);
        check("{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}", &[]);
        check("{podSelector: {matchLabels: {app: a, pod-template-hash: 5f7d}}}", &["ephemeral-label", "unknown-label-key"]);
    }

    #[test]
    fn peers() {
        check("{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]}", &["pod-selector-in-other-namespace"]);
        check("{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: nope}}}]}]}", &["peer-selects-no-pod"]);
        check("{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: z}}}]}]}", &["peer-selects-no-pod"]);
        check("{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {name: y}}}]}]}", &["unknown-label-key"]);
        check("{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}}]}]}", &[]);
        check(
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]}]}",
            &["namespace-selector-matches-all"],
        );
        check(
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}}, {podSelector: {matchLabels: {app: a}}}]}]}",
            &["split-namespace-pod-peer"],
        );
        check(
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: a}}}]}]}",
            &[],
        );
        check("{podSelector: {}, ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [b]}]}}]}]}", &[]);
        check(
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [x]}]}}]}]}",
            &["not-in-matches-missing-key"],
        );
    }

    #[test]
    fn suggestions_use_the_dump() {
        let y = cluster(&np("{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {name: y}}}]}]}"));
        let mut b = crate::model::load::ClusterBuilder::new().keep_sources();
        b.add_text("t.yaml", &y).unwrap();
        let (c, _, s) = b.finish_with_sources();
        let f = crate::lint::lint(&c, &crate::ir::resolve(&c), &s, &Default::default());
        assert_eq!(f.len(), 1);
        assert!(f[0].fix.contains("kubernetes.io/metadata.name: y"), "{}", f[0].fix);
        assert!(f[0].field.ends_with("namespaceSelector.matchLabels.name"), "{}", f[0].field);
    }

    #[test]
    fn host_network_pods() {
        let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: proxy, namespace: kube-system, labels: {k8s-app: kube-proxy}}\nspec: {hostNetwork: true, nodeName: n1, containers: [{name: c}]}\nstatus: {podIP: 172.18.0.2}\n---\n";
        let yaml = cluster(&format!("{host}{}", np_in("kube-system", "p", "{podSelector: {matchLabels: {k8s-app: kube-proxy}}}")));
        assert_eq!(rules(&yaml), ["host-network-pod-selected"]);
        let peer = np("{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-proxy}}}]}]}");
        let found = findings(&cluster(&format!("{host}{peer}")));
        assert_eq!(found.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), ["host-network-pod-selected"]);
    }

    #[test]
    fn without_pods_or_namespaces_nothing_is_judged_empty() {
        let only_policy = np("{podSelector: {matchLabels: {app: nope}}, ingress: [{from: [{namespaceSelector: {matchLabels: {name: z}}}]}]}");
        assert_eq!(rules(&only_policy), Vec::<String>::new());
    }
}
