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

use crate::eval::{ClusterRuleRef, Flow, FlowVerdict, RuleMatch, RuleMiss, Side, SideReason, TierStep};
use crate::ir::RuleRef;
use crate::model::cluster_policy::{Action, ClusterPeer, Tier};
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
    /// Set when the flow goes through a Service: kube-proxy's translation
    /// (absent for every other flow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<ViaReport>,
}

/// How a connection through a Service reaches its backend, as `explain`
/// shows it (built by `policytest::service`, which knows Services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViaReport {
    /// `ns/name` of the Service.
    pub service: String,
    /// `cluster_ip` or `node_port`.
    pub entry: &'static str,
    /// The entry node of NodePort traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_node: Option<String>,
    /// What the client sends to: the ClusterIP or the entry node's address,
    pub entry_ip: IpAddr,
    /// at this port (the Service port, or the nodePort).
    pub port: u16,
    pub protocol: Protocol,
    /// The backend kube-proxy chose (`ns/pod`, `node/NAME` or an address);
    /// `null` when there is none (`why` says why).
    pub backend: Option<String>,
    pub backend_ip: Option<IpAddr>,
    pub backend_port: Option<u16>,
    /// The source the backend's ingress sees after kube-proxy's
    /// masquerade (the entry node's address), or `null`.
    pub source_nat: Option<IpAddr>,
    /// Where the client's egress is judged against the entry node at the
    /// nodePort (translated only on arrival there), that address; `null`
    /// when egress sees the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_sees: Option<IpAddr>,
    /// The client is its own backend.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hairpin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// The endpoint whose side this is (the source for egress).
    pub endpoint: String,
    pub allowed: bool,
    /// `not_a_pod`, `same_pod`, `not_isolated`, `node_local`, `allowed`,
    /// `denied`, `cluster_rule` (a cluster policy's Accept or Deny decided),
    /// `hairpin` (a pod to itself through a Service), `no_backend`.
    pub reason: &'static str,
    /// One sentence saying why.
    pub summary: String,
    /// Policies that isolate the endpoint in this direction, `ns/name`.
    pub isolated_by: Vec<PolicyRef>,
    /// The rules that allowed the flow (empty unless `reason` is `allowed`).
    pub allowed_by: Vec<RuleReport>,
    /// Rules of the isolating policies that did not match, nearest first.
    pub misses: Vec<RuleReport>,
    /// The cluster-policy tiers walked, in order (absent without cluster
    /// policies).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierReport>,
}

/// One cluster-policy tier of a side's walk.
#[derive(Debug, Clone, Serialize)]
pub struct TierReport {
    pub tier: Tier,
    /// `accept`, `deny`, `pass` (a rule matched) or `no_match`.
    pub outcome: &'static str,
    /// The matching rule, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<ClusterRuleReport>,
    /// Rules of policies whose subject is the endpoint that did not match
    /// (before the match), nearest first.
    pub misses: Vec<ClusterRuleReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterRuleReport {
    /// The policy's name (`anp:NAME`, `banp:default` for the older kinds).
    pub policy: String,
    pub kind: &'static str,
    pub priority: u32,
    pub source: String,
    pub direction: Direction,
    pub rule: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: Action,
    /// What matched, or each reason it did not.
    pub details: Vec<String>,
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
                via: None,
            })
            .collect(),
    }
}

/// The report of one check through a Service: one family, one backend.
/// `from`/`to` are as the user wrote them (`svc/NS/NAME`, `node/NAME`),
/// `port` the port the client sends to; `ingress_of` names the backend.
pub fn report_via(cluster: &Cluster, from: String, to: String, port: u16, ingress_of: &str, f: &crate::eval::FamilyVerdict, via: ViaReport) -> Report {
    Report {
        to,
        protocol: via.protocol,
        port,
        allowed: f.allowed,
        families: vec![FamilyReport {
            family: f.family,
            src_ip: f.src_ip,
            dst_ip: f.dst_ip,
            allowed: f.allowed,
            egress: side(cluster, Direction::Egress, &from, &f.egress),
            ingress: side(cluster, Direction::Ingress, ingress_of, &f.ingress),
            via: Some(via),
        }],
        from,
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
        tiers: s.tiers.iter().map(|t| tier_report(c, t)).collect(),
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
        SideReason::Hairpin { isolated_by } => {
            r.reason = "hairpin";
            r.isolated_by = isolated(isolated_by);
            r.summary = format!("hairpin: {endpoint} reaches itself through a Service, which its NetworkPolicies cannot block");
        }
        SideReason::NoBackend { why } => {
            r.reason = "no_backend";
            r.summary = format!("denied: {why}");
        }
        SideReason::ClusterRule { action, .. } => {
            r.reason = "cluster_rule";
            r.summary = format!("{} by a cluster policy", if *action == Action::Accept { "accepted" } else { "denied" });
        }
    }
    if !r.tiers.is_empty() {
        r.summary = walk_summary(&r, s);
    }
    r
}

/// `Admin: no match → NetworkPolicy: not isolated → Baseline: p rule 0 Accept`.
fn walk_summary(r: &SideReport, s: &Side) -> String {
    let mut parts = Vec::new();
    for t in &r.tiers {
        parts.push(match &t.rule {
            None => format!("{}: no match", t.tier),
            Some(m) => format!("{}: {}", t.tier, describe_cluster_rule(m)),
        });
        if t.tier == Tier::Admin && t.outcome != "accept" && t.outcome != "deny" {
            parts.push(match &s.reason {
                // The Baseline tier is reached only for a pod no NetworkPolicy isolates.
                SideReason::NotIsolated | SideReason::ClusterRule { tier: Tier::Baseline, .. } => "NetworkPolicy: not isolated".to_string(),
                _ => format!("NetworkPolicy: {}", r.summary),
            });
        }
    }
    if matches!(s.reason, SideReason::NotIsolated) {
        parts.push("allowed (default)".into());
    }
    parts.join(" → ")
}

/// `guardrails (priority 10) ingress rule 2 `deny-tenants` Deny — peer 0 namespaces tenant=*`.
pub fn describe_cluster_rule(m: &ClusterRuleReport) -> String {
    let name = m.name.as_ref().map(|n| format!(" `{n}`")).unwrap_or_default();
    format!("{} (priority {}) {} rule {}{name} {} — {}", m.policy, m.priority, m.direction, m.rule, m.action, m.details.join(", "))
}

fn tier_report(c: &Cluster, t: &TierStep) -> TierReport {
    let rule = t.matched.as_ref().map(|m| {
        let cp = &c.cluster_policies[m.rule.policy];
        let rule = &cp.rules(m.rule.direction)[m.rule.rule];
        let peer = format!("peer {} {}", m.peer, describe_cluster_peer(&rule.peers[m.peer]));
        let port = match m.port {
            None => "any protocol".to_string(),
            Some(i) => format!("protocol {i} {}", rule.ports[i]),
        };
        cluster_rule_report(c, m.rule, vec![peer, port])
    });
    let outcome = match t.matched.as_ref().map(|m| m.action) {
        None => "no_match",
        Some(Action::Accept) => "accept",
        Some(Action::Deny) => "deny",
        Some(Action::Pass) => "pass",
    };
    let misses = t.misses.iter().map(|m| cluster_rule_report(c, m.rule, m.why.clone())).collect();
    TierReport { tier: t.tier, outcome, rule, misses }
}

fn cluster_rule_report(c: &Cluster, r: ClusterRuleRef, details: Vec<String>) -> ClusterRuleReport {
    let cp = &c.cluster_policies[r.policy];
    let rule = &cp.rules(r.direction)[r.rule];
    ClusterRuleReport {
        policy: cp.key(),
        kind: cp.kind.name(),
        priority: cp.priority,
        source: cp.origin.to_string(),
        direction: r.direction,
        rule: r.rule,
        name: rule.name.clone(),
        action: rule.action,
        details,
    }
}

/// A cluster policy peer in words: `namespaces tenant=*`, `nodes role=infra`.
pub fn describe_cluster_peer(p: &ClusterPeer) -> String {
    match p {
        ClusterPeer::Namespaces(s) => format!("namespaces {s}"),
        ClusterPeer::Pods { namespaces, pods } => format!("pods namespaceSelector {namespaces} AND podSelector {pods}"),
        ClusterPeer::Nodes(s) => format!("nodes {s}"),
        ClusterPeer::Networks(n) => format!("networks {}", n.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        ClusterPeer::DomainNames(d) => format!("domainNames {}", d.join(", ")),
    }
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

/// kube-proxy's steps, one line each: the DNAT (or why there is no
/// backend), what egress sees when it is not the backend, the masquerade.
pub fn render_via(v: &ViaReport, client: IpAddr) -> String {
    let mut out = String::new();
    let entry = match &v.entry_node {
        Some(node) => format!("nodePort {node} {}:{}/{} (svc {})", v.entry_ip, v.port, v.protocol, v.service),
        None => format!("svc {}:{}/{} {}", v.service, v.port, v.protocol, v.entry_ip),
    };
    match (&v.backend, v.backend_ip, v.backend_port) {
        (Some(b), Some(ip), Some(port)) => {
            let hairpin = if v.hairpin { ", hairpin: the client is the backend" } else { "" };
            let _ = writeln!(out, "  {entry} -> {b} {}:{port} (DNAT{hairpin})", fmt_ip(ip));
        }
        _ => {
            let _ = writeln!(out, "  {entry} -> no backend: {}", v.why.as_deref().unwrap_or("none"));
        }
    }
    if let (Some(ip), Some(node)) = (v.egress_sees, &v.entry_node) {
        let _ = writeln!(out, "  egress sees {}:{} (translated only on arrival at {node})", fmt_ip(ip), v.port);
    }
    if let Some(nat) = v.source_nat {
        let node = v.entry_node.as_deref().unwrap_or("?");
        let _ = writeln!(out, "  source {client} -> {nat} (masquerade, entry node {node})");
    }
    out
}

/// `[2001:db8::1]` for IPv6 before a port, as addresses with ports are written.
fn fmt_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Compact human rendering.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let verdict = if r.allowed { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(out, "{} -> {} {}/{}: {verdict}", r.from, r.to, r.port, r.protocol);
    for f in &r.families {
        if let Some(v) = &f.via {
            out.push_str(&render_via(v, f.src_ip));
        }
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
            for t in &s.tiers {
                for (i, m) in t.misses.iter().enumerate().take(3) {
                    let nearest = if i == 0 { " (nearest miss)" } else { "" };
                    let name = m.name.as_ref().map(|n| format!(" `{n}`")).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "      {}: {} (priority {}) {} rule {}{name} {}{nearest}: {}",
                        t.tier,
                        m.policy,
                        m.priority,
                        m.direction,
                        m.rule,
                        m.action,
                        m.details.join("; ")
                    );
                }
            }
            for m in s.allowed_by.iter().skip(1) {
                let _ = writeln!(out, "      also allowed by {} {} rule {}: {}", m.policy, m.direction, m.rule, m.details.join(", "));
            }
        }
    }
    out
}
