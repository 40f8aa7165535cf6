//! Explanations: a verdict trace turned into a report people (and JSON
//! consumers) can read.
//!
//! [`crate::eval`] produces traces with indices; this module resolves them
//! to names (policies, rules, peers, ports, files) once, into a [`Report`]
//! whose JSON form is a public interface (documented in README.md), and
//! renders the same report as compact text. Printers never re-evaluate.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::eval::{Flow, FlowVerdict, RuleMatch, RuleMiss, Side, SideReason};
use crate::ir::RuleRef;
use crate::model::{Cluster, Direction, Family, Peer, PolicyId, Protocol};

/// A flow's explanation (the JSON of `netfence explain -o json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub protocol: Protocol,
    pub port: u16,
    pub allowed: bool,
    pub families: Vec<FamilyReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FamilyReport {
    pub family: Family,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub allowed: bool,
    pub egress: SideReport,
    pub ingress: SideReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// The endpoint whose side this is (the source for egress).
    pub endpoint: String,
    pub allowed: bool,
    /// `not_a_pod`, `same_pod`, `not_isolated`, `node_local`, `allowed`, `denied`.
    pub reason: &'static str,
    /// One sentence saying why.
    pub summary: String,
    /// Policies that isolate the endpoint in this direction, `ns/name`.
    pub isolated_by: Vec<PolicyRef>,
    /// The rules that allowed the flow (empty unless `reason` is `allowed`).
    pub allowed_by: Vec<RuleReport>,
    /// Rules of the isolating policies that did not match, nearest first.
    pub misses: Vec<RuleReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyRef {
    pub policy: String,
    pub source: String,
    /// True when the policy has no rules for this direction: it only denies.
    pub no_rules: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub policy: String,
    pub direction: Direction,
    pub rule: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<usize>,
    /// What matched, or each reason it did not.
    pub details: Vec<String>,
}

/// Resolve a verdict into a report.
pub fn report(cluster: &Cluster, flow: &Flow, verdict: &FlowVerdict) -> Report {
    Report {
        from: flow.src.display(cluster),
        to: flow.dst.display(cluster),
        protocol: flow.protocol,
        port: flow.port,
        allowed: verdict.allowed,
        families: verdict
            .families
            .iter()
            .map(|f| FamilyReport {
                family: f.family,
                src_ip: f.src_ip,
                dst_ip: f.dst_ip,
                allowed: f.allowed,
                egress: side(cluster, Direction::Egress, &flow.src.display(cluster), &f.egress),
                ingress: side(cluster, Direction::Ingress, &flow.dst.display(cluster), &f.ingress),
            })
            .collect(),
    }
}

fn policy_name(c: &Cluster, id: PolicyId) -> String {
    c.policies[id].key()
}

fn side(c: &Cluster, dir: Direction, endpoint: &str, s: &Side) -> SideReport {
    let mut r = SideReport {
        endpoint: endpoint.to_string(),
        allowed: s.allowed,
        reason: "",
        summary: String::new(),
        isolated_by: Vec::new(),
        allowed_by: Vec::new(),
        misses: Vec::new(),
    };
    let isolated = |ids: &[PolicyId]| -> Vec<PolicyRef> {
        ids.iter()
            .map(|&id| PolicyRef {
                policy: policy_name(c, id),
                source: c.policies[id].origin.to_string(),
                no_rules: c.policies[id].rules(dir).is_empty(),
            })
            .collect()
    };
    match &s.reason {
        SideReason::NotAPod { what } => {
            r.reason = "not_a_pod";
            r.summary = format!("not policed: {endpoint} is {what}, and policies only apply to pods");
        }
        SideReason::SamePod => {
            r.reason = "same_pod";
            r.summary = "a pod's traffic to its own address never leaves the pod".into();
        }
        SideReason::NotIsolated => {
            r.reason = "not_isolated";
            r.summary = format!(
                "not isolated: no policy selecting {endpoint} has {} in its policyTypes",
                if dir == Direction::Ingress { "Ingress" } else { "Egress" }
            );
        }
        SideReason::NodeLocal { node } => {
            r.reason = "node_local";
            r.summary = format!("traffic from node {node}'s own address to its local pods is always allowed");
        }
        SideReason::Allowed { isolated_by, matches } => {
            r.reason = "allowed";
            r.isolated_by = isolated(isolated_by);
            r.allowed_by = matches.iter().map(|m| matched(c, m)).collect();
            let first = &r.allowed_by[0];
            r.summary = format!("allowed by {} {} rule {}: {}", first.policy, dir, first.rule, first.details.join(", "));
        }
        SideReason::Denied { isolated_by, misses } => {
            r.reason = "denied";
            r.isolated_by = isolated(isolated_by);
            r.misses = misses.iter().map(|m| missed(c, m)).collect();
            let names = r.isolated_by.iter().map(|p| p.policy.as_str()).collect::<Vec<_>>().join(", ");
            r.summary = if r.misses.is_empty() {
                let have = if r.isolated_by.len() == 1 { "has" } else { "have" };
                format!("denied: isolated by {names}, which {have} no {dir} rules (default deny)")
            } else {
                format!("denied: isolated by {names}, and no {dir} rule matches")
            };
        }
    }
    r
}

fn matched(c: &Cluster, m: &RuleMatch) -> RuleReport {
    let rule = &c.policies[m.rule.policy].rules(m.rule.direction)[m.rule.rule];
    let peer = match m.peer {
        None => format!("any {}", if m.rule.direction == Direction::Ingress { "source" } else { "destination" }),
        Some(i) => format!("peer {i} ({})", describe_peer(&rule.peers[i])),
    };
    let port = match m.port {
        None => "any port".to_string(),
        Some(i) => format!("port {i} ({})", rule.ports[i]),
    };
    RuleReport {
        policy: policy_name(c, m.rule.policy),
        direction: m.rule.direction,
        rule: m.rule.rule,
        peer: m.peer,
        port: m.port,
        details: vec![peer, port],
    }
}

fn missed(c: &Cluster, m: &RuleMiss) -> RuleReport {
    let mut details = m.why.clone();
    if m.peer_matches {
        details.insert(0, "peer matches".into());
    }
    if m.port_matches && !m.peer_matches {
        details.push("port matches".into());
    }
    let RuleRef { policy, direction, rule } = m.rule;
    RuleReport { policy: policy_name(c, policy), direction, rule, peer: None, port: None, details }
}

/// A peer in kubectl-like words: `namespaceSelector ns=x, podSelector app=web`.
pub fn describe_peer(p: &Peer) -> String {
    match p {
        Peer::Pods { namespaces, pods } => {
            let mut parts = Vec::new();
            if let Some(n) = namespaces {
                parts.push(format!("namespaceSelector {n}"));
            }
            if let Some(s) = pods {
                parts.push(format!("podSelector {s}"));
            }
            parts.join(" AND ")
        }
        Peer::IpBlock { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
        Peer::IpBlock { cidr, except } => {
            let e = except.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            format!("ipBlock {cidr} except {e}")
        }
    }
}

/// Compact human rendering.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let verdict = if r.allowed { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(out, "{} -> {} {}/{}: {verdict}", r.from, r.to, r.port, r.protocol);
    for f in &r.families {
        let v = if f.allowed { "allowed" } else { "denied" };
        let _ = writeln!(out, "  {} {} -> {}: {v}", f.family, f.src_ip, f.dst_ip);
        for (dir, s) in [("egress", &f.egress), ("ingress", &f.ingress)] {
            let _ = writeln!(out, "    {dir} of {}: {}", s.endpoint, s.summary);
            if !s.isolated_by.is_empty() && s.reason == "denied" {
                for p in &s.isolated_by {
                    let note = if p.no_rules { format!(" (no {dir} rules)") } else { String::new() };
                    let _ = writeln!(out, "      isolated by {} at {}{note}", p.policy, p.source);
                }
            }
            for (i, m) in s.misses.iter().enumerate() {
                let nearest = if i == 0 { " (nearest miss)" } else { "" };
                let _ = writeln!(out, "      {} {} rule {}{nearest}: {}", m.policy, m.direction, m.rule, m.details.join("; "));
            }
            for m in s.allowed_by.iter().skip(1) {
                let _ = writeln!(out, "      also allowed by {} {} rule {}: {}", m.policy, m.direction, m.rule, m.details.join(", "));
            }
        }
    }
    out
}
