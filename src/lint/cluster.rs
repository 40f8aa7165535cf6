//! Rules over cluster policies (ClusterNetworkPolicy, ANP, BANP): equal
//! priorities that overlap, `Pass` where it can only allow, and `Deny`
//! rules that an earlier rule of the same policy always wins over.
//!
//! "Would these match the same pod" is asked of the model's own matching
//! ([`Subject::selects`], [`ClusterPeer::has_pod`]) over the pods of the
//! input; "does this rule cover that one" is judged only where it is exact
//! (equal or wider selectors, contained CIDRs and port ranges), so the
//! shadowing rule never fires on a guess.

use super::{Ctx, Rule, Severity};
use crate::model::cluster_policy::{Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Tier};
use crate::model::{Direction, PodId};
use crate::selector::Selector;

pub static EQUAL_PRIORITY_OVERLAP: Rule = Rule {
    id: "equal-priority-overlap",
    severity: Severity::Warning,
    pitfalls: &[25],
    summary: "two cluster policies of one tier and priority whose rules with different actions match the same traffic",
    help: "Kubernetes leaves the order of equal-priority policies undefined (any may win); netfence judges them by name. \
           Give one of them a distinct priority.",
};

pub static BASELINE_PASS: Rule = Rule {
    id: "baseline-pass",
    severity: Severity::Warning,
    pitfalls: &[26],
    summary: "a Pass rule in the Baseline tier, where passing only reaches the default allow",
    help: "After the Baseline tier comes the default (allow), so Pass there allows the traffic (and skips the later \
           Baseline policies). Write Accept if allowing was meant, or remove the rule.",
};

pub static SHADOWED_DENY: Rule = Rule {
    id: "shadowed-deny",
    severity: Severity::Error,
    pitfalls: &[24],
    summary: "a Deny rule that an earlier Accept or Pass rule of the same policy and direction entirely covers",
    help: "Rules of a cluster policy are judged in order and the first match decides, so the Deny never matches. \
           Move it before the wider rule, or remove it.",
};

pub(crate) fn check(cx: &mut Ctx) {
    if cx.on(&BASELINE_PASS) || cx.on(&SHADOWED_DENY) {
        for (pi, p) in cx.cluster.cluster_policies.iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                rules_of(cx, pi, p, dir);
            }
        }
    }
    if cx.on(&EQUAL_PRIORITY_OVERLAP) && cx.has_pods {
        equal_priorities(cx);
    }
}

fn rules_of(cx: &mut Ctx, pi: usize, p: &ClusterPolicy, dir: Direction) {
    let rules = p.rules(dir);
    for (k, r) in rules.iter().enumerate() {
        let at = format!("spec.{}[{k}]", dir.field());
        if r.action == Action::Pass && p.tier == Tier::Baseline {
            cx.cluster_policy(
                &BASELINE_PASS,
                pi,
                format!("{at}.action"),
                format!("{} rule {k} passes in the Baseline tier: nothing follows but the default allow, so it allows", dir.field()),
                "write `action: Accept` if allowing was meant, or remove the rule".into(),
            );
        }
        if r.action != Action::Deny {
            continue;
        }
        if let Some(e) = rules[..k].iter().position(|e| e.action != Action::Deny && covers(e, r)) {
            cx.cluster_policy(
                &SHADOWED_DENY,
                pi,
                at,
                format!(
                    "{} rule {k} (Deny) never matches: rule {e} ({}) comes first and covers all its peers and ports",
                    dir.field(),
                    rules[e].action
                ),
                format!("move this rule before rule {e}, or remove it"),
            );
        }
    }
}

/// Does `big` match every peer and port `small` does? Exact cases only.
fn covers(big: &ClusterRule, small: &ClusterRule) -> bool {
    small.peers.iter().all(|s| big.peers.iter().any(|b| peer_covers(b, s))) && ports_cover(&big.ports, &small.ports)
}

/// A `namespaces` peer is the `pods` peer with an empty pod selector.
fn pod_peer(p: &ClusterPeer) -> Option<(&Selector, Option<&Selector>)> {
    match p {
        ClusterPeer::Namespaces(n) => Some((n, None)),
        ClusterPeer::Pods { namespaces, pods } => Some((namespaces, Some(pods).filter(|s| !s.is_empty()))),
        _ => None,
    }
}

fn peer_covers(big: &ClusterPeer, small: &ClusterPeer) -> bool {
    if big == small {
        return true;
    }
    match (big, small) {
        (ClusterPeer::Networks(b), ClusterPeer::Networks(s)) => s.iter().all(|s| b.iter().any(|b| b.contains(s))),
        _ => match (pod_peer(big), pod_peer(small)) {
            (Some((bn, bp)), Some((sn, sp))) => (bn.is_empty() || bn == sn) && (bp.is_none() || bp == sp),
            _ => false,
        },
    }
}

fn ports_cover(big: &[ClusterPort], small: &[ClusterPort]) -> bool {
    if big.is_empty() {
        return true;
    }
    !small.is_empty()
        && small.iter().all(|s| {
            big.iter().any(|b| match (b, s) {
                (
                    ClusterPort::Range { protocol: bp, start: bs, end: be },
                    ClusterPort::Range { protocol: sp, start: ss, end: se },
                ) => bp == sp && bs <= ss && se <= be,
                (ClusterPort::Named(b), ClusterPort::Named(s)) => b == s,
                _ => false,
            })
        })
}

/// Pairs of policies judged only by name (same tier, kind group and
/// priority) that select a common pod and hold rules of different actions
/// matching common traffic. Equal actions give the same verdict whichever
/// goes first, so they are left alone.
fn equal_priorities(cx: &mut Ctx) {
    let c = cx.cluster;
    let pods: Vec<PodId> = (0..c.pods.len()).filter(|&p| c.pods[p].is_policy_pod()).collect();
    let ps = &c.cluster_policies;
    for j in 0..ps.len() {
        for i in 0..j {
            let (a, b) = (&ps[i], &ps[j]);
            let (ka, kb) = (a.order_key(), b.order_key());
            if (ka.0, ka.1, ka.2) != (kb.0, kb.1, kb.2) {
                continue;
            }
            let Some(subject) = pods.iter().copied().find(|&p| a.subject.selects(c, p) && b.subject.selects(c, p)) else {
                continue;
            };
            let Some((dir, ra, rb)) = overlapping_rules(cx, &pods, a, b) else { continue };
            let pod = c.pods[subject].key();
            cx.cluster_policy(
                &EQUAL_PRIORITY_OVERLAP,
                j,
                "spec.priority".into(),
                format!(
                    "{} and {} both have priority {} in the {} tier and both select {pod}; their {} rules {rb} ({}) and {ra} ({}) match common traffic, \
                     and Kubernetes leaves their order undefined (netfence judges {} first, by name)",
                    b.key(),
                    a.key(),
                    b.priority,
                    b.tier,
                    dir.field(),
                    b.rules(dir)[rb].action,
                    a.rules(dir)[ra].action,
                    a.key()
                ),
                format!("give {} or {} a distinct priority", b.key(), a.key()),
            );
        }
    }
}

/// The first (direction, rule of `a`, rule of `b`) with different actions
/// whose peers share a pod or a network and whose ports share a port.
fn overlapping_rules(cx: &Ctx, pods: &[PodId], a: &ClusterPolicy, b: &ClusterPolicy) -> Option<(Direction, usize, usize)> {
    for dir in [Direction::Ingress, Direction::Egress] {
        for (ia, ra) in a.rules(dir).iter().enumerate() {
            for (ib, rb) in b.rules(dir).iter().enumerate() {
                if ra.action != rb.action && ports_overlap(&ra.ports, &rb.ports) && peers_overlap(cx, pods, &ra.peers, &rb.peers) {
                    return Some((dir, ia, ib));
                }
            }
        }
    }
    None
}

fn peers_overlap(cx: &Ctx, pods: &[PodId], a: &[ClusterPeer], b: &[ClusterPeer]) -> bool {
    let c = cx.cluster;
    a.iter().any(|pa| {
        b.iter().any(|pb| match (pa, pb) {
            (ClusterPeer::Networks(x), ClusterPeer::Networks(y)) => {
                x.iter().any(|x| y.iter().any(|y| x.contains(&y.network()) || y.contains(&x.network())))
            }
            _ if pa == pb && !matches!(pa, ClusterPeer::DomainNames(_)) => true,
            _ => pods.iter().any(|&p| pa.has_pod(c, p) && pb.has_pod(c, p)),
        })
    })
}

fn ports_overlap(a: &[ClusterPort], b: &[ClusterPort]) -> bool {
    if a.is_empty() || b.is_empty() {
        return true;
    }
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (ClusterPort::Range { protocol: p, start: s, end: e }, ClusterPort::Range { protocol: q, start: t, end: f }) => {
                p == q && s <= f && t <= e
            }
            (ClusterPort::Named(x), ClusterPort::Named(y)) => x == y,
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cluster, rules};

    /// A ClusterNetworkPolicy `name` of `tier`/`priority` on namespace x with `ingress` (flow YAML).
    fn cnp(name: &str, tier: &str, priority: u32, ingress: &str) -> String {
        format!("apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec: {{tier: {tier}, priority: {priority}, subject: {{namespaces: {{matchLabels: {{team: x}}}}}}, ingress: {ingress}}}\n---\n")
    }

    #[track_caller]
    fn check(docs: &[String], expected: &[&str]) {
        assert_eq!(rules(&cluster(&docs.concat())), expected, "{docs:?}");
    }

    const ALL_Y: &str = "{namespaces: {matchLabels: {team: y}}}";
    const WEB_IN_Y: &str = "{pods: {namespaceSelector: {matchLabels: {team: y}}, podSelector: {matchLabels: {app: web}}}}";

    #[test]
    fn shadowed_deny_only_where_coverage_is_exact() {
        let two = |first: &str, deny: &str| cnp("p", "Admin", 1, &format!("[{first}, {deny}]"));
        let rule = |action: &str, peer: &str, ports: &str| format!("{{action: {action}, from: [{peer}]{ports}}}");
        let p80 = ", protocols: [{tcp: {destinationPort: {number: 80}}}]";
        let p70_90 = ", protocols: [{tcp: {destinationPort: {range: {start: 70, end: 90}}}}]";
        // Wider peer, no ports (all): covered; Pass covers too.
        check(&[two(&rule("Accept", ALL_Y, ""), &rule("Deny", WEB_IN_Y, p80))], &["shadowed-deny"]);
        check(&[two(&rule("Pass", "{namespaces: {}}", p70_90), &rule("Deny", WEB_IN_Y, p80))], &["shadowed-deny"]);
        // Narrower peer, or ports not covered, or an earlier Deny: silent.
        check(&[two(&rule("Accept", WEB_IN_Y, ""), &rule("Deny", ALL_Y, ""))], &[]);
        check(&[two(&rule("Accept", ALL_Y, p80), &rule("Deny", WEB_IN_Y, ""))], &[]);
        check(&[two(&rule("Accept", ALL_Y, p80), &rule("Deny", WEB_IN_Y, p70_90))], &[]);
        check(&[two(&rule("Deny", ALL_Y, ""), &rule("Deny", WEB_IN_Y, ""))], &[]);
        // Different label selectors are not judged (no guessing at coverage).
        check(&[two(&rule("Accept", "{namespaces: {matchLabels: {team: x}}}", ""), &rule("Deny", ALL_Y, ""))], &[]);
    }

    #[test]
    fn baseline_pass() {
        let pass = format!("[{{action: Pass, from: [{ALL_Y}]}}]");
        check(&[cnp("p", "Baseline", 1, &pass)], &["baseline-pass"]);
        check(&[cnp("p", "Admin", 1, &pass)], &[]);
    }

    #[test]
    fn equal_priorities_overlapping_with_different_actions() {
        let deny_y = format!("[{{action: Deny, from: [{ALL_Y}]}}]");
        let accept_web = format!("[{{action: Accept, from: [{WEB_IN_Y}]}}]");
        let accept_x = "[{action: Accept, from: [{namespaces: {matchLabels: {team: x}}}]}]";
        check(&[cnp("a", "Admin", 5, &deny_y), cnp("b", "Admin", 5, &accept_web)], &["equal-priority-overlap"]);
        // Distinct priorities, tiers, equal actions, or peers with no pod in common: silent.
        check(&[cnp("a", "Admin", 5, &deny_y), cnp("b", "Admin", 6, &accept_web)], &[]);
        check(&[cnp("a", "Admin", 5, &deny_y), cnp("b", "Baseline", 5, &accept_web)], &[]);
        check(&[cnp("a", "Admin", 5, &deny_y), cnp("b", "Admin", 5, &deny_y)], &[]);
        check(&[cnp("a", "Admin", 5, &deny_y), cnp("b", "Admin", 5, accept_x)], &[]);
    }
}
