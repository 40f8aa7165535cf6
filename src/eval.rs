//! The reference verdict: does the cluster's policy allow a flow?
//!
//! This is the single implementation of Kubernetes NetworkPolicy semantics
//! that `netfence test` and `netfence explain` share, so a test verdict and
//! its explanation can never disagree. It returns a trace, not a boolean:
//! which policies isolate each side, which rule/peer/port allowed it, or for
//! each rule of the isolating policies why it did not match.
//!
//! Invariant: pure; no I/O. The nftables interpreter is checked against it.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::ir::{Resolution, RuleRef};
use crate::model::cluster_policy::{self, Action, ClusterPeer, Tier};
use crate::model::{Cluster, Direction, Family, Peer, PodId, PolicyId, PortRef, PortSpec, Protocol};

/// One end of a flow, as the test format and explain name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Endpoint {
    /// A pod that takes part (host-network pods included: they are their
    /// node's address, see [`Cluster`] semantics).
    Pod(PodId),
    /// A node's own address (its InternalIP in each family).
    Node(String),
    /// A node at one of its addresses (InternalIP or ExternalIP), written
    /// as that IP literal: only in that address's family.
    NodeAddr(String, IpAddr),
    /// An address outside the cluster's pods and nodes.
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("no pod {0:?} in the cluster")]
    NoSuchPod(String),
    #[error("pod {0:?} takes no part in policy ({1}): name a running pod with an IP")]
    PodTakesNoPart(String, &'static str),
    #[error("no node {0:?} in the cluster")]
    NoSuchNode(String),
    #[error("node {0:?} has no InternalIP")]
    NodeWithoutIp(String),
    #[error("{0} is the address of pod {1}: name the pod instead")]
    IpOfPod(IpAddr, String),
    #[error("{0} is the ClusterIP of Service {1}, which kube-proxy translates before policy sees it: write svc/{1}")]
    IpOfService(IpAddr, String),
    #[error("{0:?} is not an endpoint (expected ns/pod, node/NAME or an IP address)")]
    Syntax(String),
    #[error("{endpoint} has no {family} address")]
    MissingFamily { endpoint: String, family: Family },
    #[error("{0} and {1} share no address family")]
    NoCommonFamily(String, String),
}

impl Endpoint {
    /// Parse `ns/pod`, `node/NAME` or an IP literal against `cluster`.
    pub fn parse(cluster: &Cluster, s: &str) -> Result<Endpoint, EndpointError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            if let Some(node) = cluster.node_by_ip(ip) {
                return Ok(Endpoint::NodeAddr(node.name.clone(), ip));
            }
            if let Some(pod) = cluster.pod_by_ip(ip) {
                return Err(EndpointError::IpOfPod(ip, cluster.pods[pod].key()));
            }
            if let Some(svc) = cluster.services.iter().find(|s| s.cluster_ips.contains(&ip)) {
                return Err(EndpointError::IpOfService(ip, svc.key()));
            }
            return Ok(Endpoint::Ip(ip));
        }
        if let Some(name) = s.strip_prefix("node/") {
            let node = cluster.nodes.get(name).ok_or_else(|| EndpointError::NoSuchNode(name.to_string()))?;
            if node.internal_ips.is_empty() {
                return Err(EndpointError::NodeWithoutIp(name.to_string()));
            }
            return Ok(Endpoint::Node(name.to_string()));
        }
        let Some((ns, name)) = s.split_once('/') else { return Err(EndpointError::Syntax(s.to_string())) };
        if ns.is_empty() || name.is_empty() || name.contains('/') {
            return Err(EndpointError::Syntax(s.to_string()));
        }
        let id = cluster.pod(ns, name).ok_or_else(|| EndpointError::NoSuchPod(s.to_string()))?;
        let pod = &cluster.pods[id];
        if pod.ips.is_empty() {
            return Err(EndpointError::PodTakesNoPart(s.to_string(), "it has no IP"));
        }
        if !pod.takes_part() {
            return Err(EndpointError::PodTakesNoPart(s.to_string(), "it has finished"));
        }
        Ok(Endpoint::Pod(id))
    }

    pub fn display(&self, cluster: &Cluster) -> String {
        match self {
            Endpoint::Pod(id) => cluster.pods[*id].key(),
            Endpoint::Node(n) => format!("node/{n}"),
            // As before for the InternalIP of the family; else the literal.
            Endpoint::NodeAddr(n, ip) if cluster.nodes.get(n).and_then(|n| n.ip(Family::of(ip))) == Some(*ip) => format!("node/{n}"),
            Endpoint::NodeAddr(_, ip) | Endpoint::Ip(ip) => ip.to_string(),
        }
    }

    /// The endpoint's address in `family`.
    pub fn ip(&self, cluster: &Cluster, family: Family) -> Option<IpAddr> {
        match self {
            Endpoint::Pod(id) => cluster.pods[*id].ip(family),
            Endpoint::Node(n) => cluster.nodes.get(n).and_then(|n| n.ip(family)),
            Endpoint::NodeAddr(_, ip) | Endpoint::Ip(ip) => (Family::of(ip) == family).then_some(*ip),
        }
    }

    /// The pod policies apply to, if this endpoint is one.
    fn policy_pod(&self, cluster: &Cluster) -> Option<PodId> {
        match self {
            Endpoint::Pod(id) if cluster.pods[*id].is_policy_pod() => Some(*id),
            _ => None,
        }
    }
}

/// A flow to judge: protocol and destination port of its first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub protocol: Protocol,
    pub port: u16,
    /// Restrict to one family; `None`: every family both endpoints have.
    pub family: Option<Family>,
}

impl Flow {
    /// The families this flow is judged in; an error if the endpoints share
    /// none or lack the requested one.
    pub fn families(&self, cluster: &Cluster) -> Result<Vec<Family>, EndpointError> {
        let has = |e: &Endpoint, f| e.ip(cluster, f).is_some();
        if let Some(f) = self.family {
            for e in [&self.src, &self.dst] {
                if !has(e, f) {
                    return Err(EndpointError::MissingFamily { endpoint: e.display(cluster), family: f });
                }
            }
            return Ok(vec![f]);
        }
        let fams: Vec<Family> =
            [Family::IPv4, Family::IPv6].into_iter().filter(|&f| has(&self.src, f) && has(&self.dst, f)).collect();
        if fams.is_empty() {
            return Err(EndpointError::NoCommonFamily(self.src.display(cluster), self.dst.display(cluster)));
        }
        Ok(fams)
    }
}

/// The verdict of a flow in every family it is judged in.
#[derive(Debug, Clone, Serialize)]
pub struct FlowVerdict {
    pub allowed: bool,
    pub families: Vec<FamilyVerdict>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FamilyVerdict {
    pub family: Family,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub allowed: bool,
    /// Set when the flow never meets policy (a pod talking to itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<&'static str>,
    pub egress: Side,
    pub ingress: Side,
}

/// The verdict of one side: egress of the source or ingress of the destination.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub allowed: bool,
    #[serde(flatten)]
    pub reason: SideReason,
    /// The cluster-policy tiers walked for this side, in order (Admin, then
    /// Baseline when reached); empty when no cluster policy exists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierStep>,
}

impl Side {
    fn new(allowed: bool, reason: SideReason) -> Side {
        Side { allowed, reason, tiers: Vec::new() }
    }
}

/// One cluster-policy tier's walk for one side.
#[derive(Debug, Clone, Serialize)]
pub struct TierStep {
    pub tier: Tier,
    /// The first rule (by policy order, then rule order) whose peer and
    /// protocol match; `None`: no rule of a policy whose subject is the
    /// pod matched, and the next tier decides.
    pub matched: Option<ClusterMatch>,
    /// Rules before the match (or all, without one) of policies whose
    /// subject is the pod, that did not match: nearest first.
    pub misses: Vec<ClusterMiss>,
}

/// Which rule of which cluster policy (index in `Cluster::cluster_policies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClusterRuleRef {
    pub policy: usize,
    pub direction: Direction,
    pub rule: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterMatch {
    pub rule: ClusterRuleRef,
    pub action: Action,
    pub peer: usize,
    /// `None`: the rule has no protocols (every protocol and port).
    pub port: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterMiss {
    pub rule: ClusterRuleRef,
    pub peer_matches: bool,
    pub port_matches: bool,
    pub why: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SideReason {
    /// Policies only apply to pods with their own network namespace.
    NotAPod { what: &'static str },
    /// A pod talking to itself never leaves it.
    SamePod,
    /// No policy selecting the pod lists this direction in its policyTypes.
    NotIsolated,
    /// The node's own address reaching one of its pods (kubelet probes).
    NodeLocal { node: String },
    /// Isolated, and at least one rule matched.
    Allowed { isolated_by: Vec<PolicyId>, matches: Vec<RuleMatch> },
    /// Isolated, and no rule matched.
    Denied { isolated_by: Vec<PolicyId>, misses: Vec<RuleMiss> },
    /// A cluster policy rule decided (Accept or Deny) in its tier; the
    /// match is the last of `Side::tiers`.
    ClusterRule { tier: Tier, policy: usize, rule: usize, action: Action },
    /// A pod reaching itself through a Service (hairpin): the packet leaves
    /// the pod and comes back, yet "a pod cannot block access to itself",
    /// so the NetworkPolicies isolating it allow it (the kernel's
    /// `saddr . daddr @hairpin` accept at the top of each group chain).
    Hairpin { isolated_by: Vec<PolicyId> },
    /// Through a Service with no backend for this client: kube-proxy
    /// rejects or drops the connection; nothing reaches a pod.
    NoBackend { why: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleMatch {
    pub rule: RuleRef,
    /// `None`: the rule has no peers (matches every peer).
    pub peer: Option<usize>,
    /// `None`: the rule has no ports (matches every port).
    pub port: Option<usize>,
}

/// Why one rule of an isolating policy did not match.
#[derive(Debug, Clone, Serialize)]
pub struct RuleMiss {
    pub rule: RuleRef,
    pub peer_matches: bool,
    pub port_matches: bool,
    /// One line per peer or port that failed, in human words.
    pub why: Vec<String>,
}

impl RuleMiss {
    /// How close the rule came: explanations list the nearest misses first.
    pub fn closeness(&self) -> u8 {
        self.peer_matches as u8 + self.port_matches as u8
    }
}

/// Judge `flow` (in every family it has) against the resolved policies:
/// the whole cluster's [`crate::ir::Ir`], or [`crate::ir::Local`], which
/// resolves only what this flow's endpoints touch (the same verdict and
/// trace either way).
pub fn evaluate<R: Resolution + ?Sized>(cluster: &Cluster, ir: &R, flow: &Flow) -> Result<FlowVerdict, EndpointError> {
    let families = flow
        .families(cluster)?
        .into_iter()
        .map(|f| evaluate_family(cluster, ir, flow, f))
        .collect::<Vec<_>>();
    Ok(FlowVerdict { allowed: families.iter().all(|f| f.allowed), families })
}

fn evaluate_family<R: Resolution + ?Sized>(cluster: &Cluster, ir: &R, flow: &Flow, family: Family) -> FamilyVerdict {
    // `families()` checked that both endpoints have an address in `family`.
    let src_ip = flow.src.ip(cluster, family).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let dst_ip = flow.dst.ip(cluster, family).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let same = |reason| Side::new(true, reason);
    if flow.src == flow.dst && flow.src.policy_pod(cluster).is_some() {
        return FamilyVerdict {
            family,
            src_ip,
            dst_ip,
            allowed: true,
            shortcut: Some("a pod's traffic to its own address never leaves the pod"),
            egress: same(SideReason::SamePod),
            ingress: same(SideReason::SamePod),
        };
    }
    let ctx = Ctx { cluster, ir, flow, src_ip, dst_ip, hairpin: false };
    let egress = ctx.side(Direction::Egress);
    let ingress = ctx.side(Direction::Ingress);
    FamilyVerdict {
        family,
        src_ip,
        dst_ip,
        allowed: egress.allowed && ingress.allowed,
        shortcut: None,
        egress,
        ingress,
    }
}

/// Judge a flow whose two sides see different packets: a connection
/// through a Service, where kube-proxy rewrites the destination (and maybe
/// the source) between the client's egress and the backend's ingress.
/// `egress` is the client to what its egress sees (the backend after a
/// DNAT on the client's node, else the entry node at the nodePort);
/// `ingress` what the backend's ingress sees as source (the client, or the
/// entry node's address after a masquerade) to the backend. A side whose
/// view is a pod to itself is a hairpin: no shortcut (the packet does leave
/// the pod), cluster-policy tiers judge as usual, and isolating
/// NetworkPolicies allow it ([`SideReason::Hairpin`]).
/// Both flows must have an address in `family` (the caller expanded them).
pub fn evaluate_sides<R: Resolution + ?Sized>(cluster: &Cluster, ir: &R, egress: &Flow, ingress: &Flow, family: Family) -> FamilyVerdict {
    let zero = IpAddr::from([0, 0, 0, 0]);
    let ip = |e: &Endpoint| e.ip(cluster, family).unwrap_or(zero);
    let ctx = |flow| Ctx { cluster, ir, flow, src_ip: ip(&flow.src), dst_ip: ip(&flow.dst), hairpin: flow.src == flow.dst };
    let e = ctx(egress).side(Direction::Egress);
    let i = ctx(ingress).side(Direction::Ingress);
    FamilyVerdict {
        family,
        src_ip: ip(&egress.src),
        dst_ip: ip(&ingress.dst),
        allowed: e.allowed && i.allowed,
        shortcut: None,
        egress: e,
        ingress: i,
    }
}

/// A connection through a Service that has no backend for it: the
/// client's egress is judged on what it sends (`egress`: to the ClusterIP
/// or the entry node), and nothing is delivered, `why` saying so.
pub fn evaluate_no_backend<R: Resolution + ?Sized>(cluster: &Cluster, ir: &R, egress: &Flow, family: Family, why: &str) -> FamilyVerdict {
    let zero = IpAddr::from([0, 0, 0, 0]);
    let (src_ip, dst_ip) = (egress.src.ip(cluster, family).unwrap_or(zero), egress.dst.ip(cluster, family).unwrap_or(zero));
    let e = Ctx { cluster, ir, flow: egress, src_ip, dst_ip, hairpin: false }.side(Direction::Egress);
    FamilyVerdict {
        family,
        src_ip,
        dst_ip,
        allowed: false,
        shortcut: None,
        egress: e,
        ingress: Side::new(false, SideReason::NoBackend { why: why.to_string() }),
    }
}

struct Ctx<'a, R: ?Sized> {
    cluster: &'a Cluster,
    ir: &'a R,
    flow: &'a Flow,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    /// The flow is a pod to itself through a Service (see [`evaluate_sides`]).
    hairpin: bool,
}

impl<R: Resolution + ?Sized> Ctx<'_, R> {
    fn side(&self, dir: Direction) -> Side {
        let (me, peer, peer_ip) = match dir {
            Direction::Egress => (&self.flow.src, &self.flow.dst, self.dst_ip),
            Direction::Ingress => (&self.flow.dst, &self.flow.src, self.src_ip),
        };
        let Some(pod) = me.policy_pod(self.cluster) else {
            let what = match me {
                Endpoint::Pod(_) => "a host-network pod",
                Endpoint::Node(_) | Endpoint::NodeAddr(..) => "a node",
                Endpoint::Ip(_) => "an address outside the cluster",
            };
            return Side::new(true, SideReason::NotAPod { what });
        };
        if dir == Direction::Ingress {
            if let Some(node) = &self.cluster.pods[pod].node {
                // Any of the node's addresses: InternalIP or ExternalIP.
                if self.cluster.nodes.get(node).is_some_and(|n| n.has_address(peer_ip)) {
                    return Side::new(true, SideReason::NodeLocal { node: node.clone() });
                }
            }
        }
        // Without a cluster policy whose subject is this pod in this
        // direction, only NetworkPolicies can decide (and the trace says
        // nothing of tiers).
        let c = self.cluster;
        if !c.cluster_policies.iter().any(|p| !p.rules(dir).is_empty() && p.subject.selects(c, pod)) {
            return self.network_policies(dir, pod, peer, peer_ip);
        }
        // Admin tier, then NetworkPolicies, then Baseline, then allowed.
        let mut tiers = Vec::new();
        let admin = self.tier(Tier::Admin, dir, pod, peer, peer_ip);
        let decided = |t: &TierStep| t.matched.as_ref().filter(|m| m.action != Action::Pass).map(|m| (m.rule, m.action));
        let by_rule = |tier, (r, action): (ClusterRuleRef, Action), tiers| Side {
            allowed: action == Action::Accept,
            reason: SideReason::ClusterRule { tier, policy: r.policy, rule: r.rule, action },
            tiers,
        };
        let d = decided(&admin);
        tiers.push(admin);
        if let Some(d) = d {
            return by_rule(Tier::Admin, d, tiers);
        }
        let mut np = self.network_policies(dir, pod, peer, peer_ip);
        if !matches!(np.reason, SideReason::NotIsolated) {
            np.tiers = tiers;
            return np;
        }
        let baseline = self.tier(Tier::Baseline, dir, pod, peer, peer_ip);
        let d = decided(&baseline);
        tiers.push(baseline);
        if let Some(d) = d {
            return by_rule(Tier::Baseline, d, tiers);
        }
        Side { allowed: true, reason: SideReason::NotIsolated, tiers }
    }

    /// Why cluster peer `p` does (`Ok`) or does not (`Err`) match `who` at `ip`.
    fn cluster_peer(&self, p: &ClusterPeer, who: &Endpoint, ip: IpAddr) -> Result<(), String> {
        let c = self.cluster;
        let name = who.display(c);
        let pod = who.policy_pod(c).map(|id| &c.pods[id]);
        match p {
            ClusterPeer::Namespaces(sel) | ClusterPeer::Pods { namespaces: sel, .. } => {
                let Some(pod) = pod else {
                    return Err(format!("selects pods, but {name} is not a pod with its own address (only nodes and networks peers match it)"));
                };
                if !c.namespace_labels(&pod.namespace).is_some_and(|l| sel.matches(l)) {
                    return Err(format!("namespaces {sel} does not match namespace {} of {name}", pod.namespace));
                }
                if let ClusterPeer::Pods { pods, .. } = p {
                    if !pods.matches(&pod.labels) {
                        return Err(format!("podSelector {pods} does not match the labels of {name}"));
                    }
                }
                Ok(())
            }
            ClusterPeer::Nodes(sel) => {
                let node = c.nodes.values().find(|n| n.has_address(ip));
                match node {
                    Some(n) if sel.matches(&n.labels) => Ok(()),
                    Some(n) => Err(format!("nodes {sel} does not match the labels of node {}", n.name)),
                    None => Err(format!("nodes {sel}: {ip} is no node's address")),
                }
            }
            ClusterPeer::Networks(nets) => {
                if nets.iter().any(|n| n.contains(&ip)) {
                    Ok(())
                } else {
                    let list = nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                    Err(format!("networks [{list}] do not contain {ip}"))
                }
            }
            ClusterPeer::DomainNames(_) => Err("domainNames cannot be judged offline: matches nothing".into()),
        }
    }

    /// Walk one tier's policies selecting `pod` for `dir`: the first
    /// matching rule, and the misses before it.
    fn tier(&self, tier: Tier, dir: Direction, pod: PodId, peer: &Endpoint, peer_ip: IpAddr) -> TierStep {
        let c = self.cluster;
        let dst = self.flow.dst.policy_pod(c).map(|id| &*c.pods[id]);
        let mut misses = Vec::new();
        let mut matched = None;
        'policies: for (pi, policy) in c.cluster_policies.iter().enumerate() {
            if policy.tier != tier || policy.rules(dir).is_empty() || !policy.subject.selects(c, pod) {
                continue;
            }
            for (ri, rule) in policy.rules(dir).iter().enumerate() {
                let r = ClusterRuleRef { policy: pi, direction: dir, rule: ri };
                let peers: Vec<Result<(), String>> = rule.peers.iter().map(|p| self.cluster_peer(p, peer, peer_ip)).collect();
                let peer_m = peers.iter().position(Result::is_ok);
                let port_m = cluster_policy::ports_match(&rule.ports, dst, self.flow.protocol, self.flow.port);
                match (peer_m, port_m) {
                    (Some(peer), Some(port)) => {
                        matched = Some(ClusterMatch { rule: r, action: rule.action, peer, port });
                        break 'policies;
                    }
                    _ => {
                        let mut why: Vec<String> = Vec::new();
                        if peer_m.is_none() {
                            why.extend(peers.into_iter().enumerate().filter_map(|(i, p)| p.err().map(|e| format!("peer {i}: {e}"))));
                        }
                        if port_m.is_none() {
                            let list = rule.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                            why.push(format!("port {}/{} not in [{list}]", self.flow.port, self.flow.protocol));
                        }
                        misses.push(ClusterMiss { rule: r, peer_matches: peer_m.is_some(), port_matches: port_m.is_some(), why });
                    }
                }
            }
        }
        misses.sort_by_key(|m| std::cmp::Reverse(m.peer_matches as u8 + m.port_matches as u8));
        TierStep { tier, matched, misses }
    }

    /// The NetworkPolicy verdict of policy pod `pod` in `dir`.
    fn network_policies(&self, dir: Direction, pod: PodId, peer: &Endpoint, peer_ip: IpAddr) -> Side {
        let isolated_by: Vec<PolicyId> =
            self.ir.selecting(pod).iter().copied().filter(|&p| self.cluster.policies[p].isolates(dir)).collect();
        if isolated_by.is_empty() {
            return Side::new(true, SideReason::NotIsolated);
        }
        if self.hairpin {
            return Side::new(true, SideReason::Hairpin { isolated_by });
        }
        let mut matches = Vec::new();
        let mut misses = Vec::new();
        for &policy in &isolated_by {
            for (rule, r) in self.cluster.policies[policy].rules(dir).iter().enumerate() {
                let rule = RuleRef { policy, direction: dir, rule };
                // No peers: every peer.
                let peer_m = if r.peers.is_empty() {
                    Ok(None)
                } else {
                    r.peers
                        .iter()
                        .enumerate()
                        .position(|(i, p)| self.peer_matches(rule, i, p, peer, peer_ip))
                        .map(Some)
                        .ok_or(())
                };
                let port_m = if r.ports.is_empty() {
                    Ok(None)
                } else {
                    r.ports.iter().position(|p| self.port_matches(p)).map(Some).ok_or(())
                };
                match (peer_m, port_m) {
                    (Ok(peer), Ok(port)) => matches.push(RuleMatch { rule, peer, port }),
                    (peer_m, port_m) => {
                        let mut why = Vec::new();
                        if peer_m.is_err() {
                            why.extend((0..r.peers.len()).map(|i| self.peer_miss(rule, i, peer, peer_ip)));
                        }
                        if port_m.is_err() {
                            why.push(self.port_miss(rule));
                        }
                        misses.push(RuleMiss { rule, peer_matches: peer_m.is_ok(), port_matches: port_m.is_ok(), why });
                    }
                }
            }
        }
        if matches.is_empty() {
            misses.sort_by_key(|m| std::cmp::Reverse(m.closeness()));
            Side::new(false, SideReason::Denied { isolated_by, misses })
        } else {
            Side::new(true, SideReason::Allowed { isolated_by, matches })
        }
    }

    fn peer_matches(&self, rule: RuleRef, i: usize, peer: &Peer, who: &Endpoint, ip: IpAddr) -> bool {
        match peer {
            Peer::Pods { .. } => who.policy_pod(self.cluster).is_some_and(|id| self.ir.peer_has(rule, i, id)),
            Peer::IpBlock { cidr, except } => cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip)),
        }
    }

    fn port_matches(&self, spec: &PortSpec) -> bool {
        let dst = self.flow.dst.policy_pod(self.cluster).map(|id| &*self.cluster.pods[id]);
        port_matches(spec, dst, self.flow.protocol, self.flow.port)
    }

    fn peer_miss(&self, rule: RuleRef, i: usize, who: &Endpoint, ip: IpAddr) -> String {
        let c = self.cluster;
        let policy = &c.policies[rule.policy];
        let spec = &policy.rules(rule.direction)[rule.rule].peers[i];
        let name = who.display(c);
        let text = match spec {
            crate::model::Peer::IpBlock { cidr, except } => {
                if !cidr.contains(&ip) {
                    format!("ipBlock {cidr} does not contain {ip}")
                } else {
                    let e = except.iter().find(|e| e.contains(&ip)).map(ToString::to_string).unwrap_or_default();
                    format!("ipBlock {cidr} contains {ip}, but its except {e} removes it")
                }
            }
            crate::model::Peer::Pods { namespaces, pods } => {
                let pod = match who.policy_pod(c) {
                    Some(id) => &c.pods[id],
                    None => {
                        let what = match who {
                            Endpoint::Pod(_) => "a host-network pod (its address is its node's; only an ipBlock can match it)",
                            Endpoint::Node(_) | Endpoint::NodeAddr(..) => "a node (only an ipBlock can match it)",
                            Endpoint::Ip(_) => "not a pod (only an ipBlock can match it)",
                        };
                        return format!("peer {i}: selects pods, but {name} is {what}");
                    }
                };
                let ns_ok = match namespaces {
                    None => pod.namespace == policy.namespace,
                    Some(sel) => c.namespace_labels(&pod.namespace).is_some_and(|l| sel.matches(l)),
                };
                let pod_ok = pods.as_ref().is_none_or(|s| s.matches(&pod.labels));
                match (namespaces, ns_ok, pod_ok) {
                    (None, false, true) => format!(
                        "podSelector {} selects pods in namespace {} only (the policy's namespace), and {name} is in namespace {}: did you mean to add a namespaceSelector?",
                        pods.as_ref().map(ToString::to_string).unwrap_or_default(),
                        policy.namespace,
                        pod.namespace
                    ),
                    (Some(sel), false, _) => {
                        format!("namespaceSelector {sel} does not match namespace {} of {name}", pod.namespace)
                    }
                    (_, _, false) => {
                        let sel = pods.as_ref().map(ToString::to_string).unwrap_or_default();
                        let scope = namespaces.as_ref().map_or(policy.namespace.clone(), |s| format!("namespaces {s}"));
                        if self.ir.peer_is_empty(rule, i) {
                            let hint = if namespaces.is_none() {
                                ": did you mean a namespaceSelector?"
                            } else {
                                ""
                            };
                            format!("podSelector {sel} matches no pod in {scope}{hint}")
                        } else {
                            format!("podSelector {sel} does not match the labels of {name}")
                        }
                    }
                    _ => format!("peer matches {name}"),
                }
            }
        };
        format!("peer {i}: {text}")
    }

    fn port_miss(&self, rule: RuleRef) -> String {
        let c = self.cluster;
        let ports = &c.policies[rule.policy].rules(rule.direction)[rule.rule].ports;
        let list = ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let mut text = format!("port {}/{} not in [{list}]", self.flow.port, self.flow.protocol);
        let dst = self.flow.dst.policy_pod(c).map(|id| &*c.pods[id]);
        for p in ports {
            if let Some(PortRef::Named(n)) = &p.port {
                match dst.and_then(|d| d.named_port(n, p.protocol).map(|port| (d, port))) {
                    Some((d, port)) => text.push_str(&format!("; {n}/{} is {port} on {}", p.protocol, d.key())),
                    None => text.push_str(&format!(
                        "; named port {n}/{} is not declared on {}",
                        p.protocol,
                        self.flow.dst.display(c)
                    )),
                }
            }
        }
        text
    }
}

/// Does a port spec match `protocol`/`port` on destination `dst`? Named
/// ports resolve on the destination pod (name and protocol must both match),
/// so they never match a destination that is not a policy pod.
pub fn port_matches(spec: &PortSpec, dst: Option<&crate::model::Pod>, protocol: Protocol, port: u16) -> bool {
    if spec.protocol != protocol {
        return false;
    }
    match &spec.port {
        None => true,
        Some(PortRef::Number(p)) => (*p..=spec.end_port.unwrap_or(*p)).contains(&port),
        Some(PortRef::Named(n)) => dst.and_then(|d| d.named_port(n, protocol)) == Some(port),
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}", self.direction, self.rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::ClusterBuilder;

    const CLUSTER: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n2}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {pod: a}}
status: {podIP: 10.0.0.3}
";

    /// Judge `from -> to` on TCP `port` with `policies` (YAML documents) in force.
    fn check(policies: &str, from: &str, to: &str, port: u16, want: bool) {
        let mut b = ClusterBuilder::new();
        b.add_text("t.yaml", &format!("{CLUSTER}---\n{policies}")).unwrap();
        let c = b.finish().0;
        let ir = crate::ir::resolve(&c);
        let flow = Flow {
            src: Endpoint::parse(&c, from).unwrap(),
            dst: Endpoint::parse(&c, to).unwrap(),
            protocol: Protocol::Tcp,
            port,
            family: None,
        };
        let v = evaluate(&c, &ir, &flow).unwrap();
        assert_eq!(v.allowed, want, "{from} -> {to}:{port} with\n{policies}\n{v:#?}");
    }

    fn np(ns: &str, spec: &str) -> String {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p-{}, namespace: {ns}}}\nspec: {spec}\n", spec.len())
    }

    #[test]
    fn verdicts() {
        let deny_x = np("x", "{podSelector: {}}");
        check("", "x/b", "x/a", 80, true);
        check(&deny_x, "x/b", "x/a", 80, false);
        check(&deny_x, "x/a", "x/a", 80, true); // self
        check(&deny_x, "node/n1", "x/a", 80, true); // node-local
        check(&deny_x, "x/a", "y/a", 80, true); // egress not isolated
        let allow_b = np("x", "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}");
        check(&allow_b, "x/b", "x/a", 80, true);
        check(&allow_b, "y/a", "x/a", 80, false);
        let named = np("x", "{podSelector: {}, ingress: [{ports: [{port: http}]}]}");
        check(&named, "x/b", "x/a", 8080, true);
        check(&named, "x/b", "x/a", 80, false);
        check(&named, "x/a", "x/b", 8080, false); // x/b has no port named http
        let egress = np("x", "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]}], policyTypes: [Egress]}");
        check(&egress, "x/a", "192.0.2.1", 80, true);
        check(&egress, "x/a", "192.0.2.200", 80, false);
        check(&egress, "x/a", "y/a", 80, false);
    }

    #[test]
    fn endpoint_errors() {
        let mut b = ClusterBuilder::new();
        b.add_text("t.yaml", CLUSTER).unwrap();
        let c = b.finish().0;
        assert_eq!(Endpoint::parse(&c, "x/zz"), Err(EndpointError::NoSuchPod("x/zz".into())));
        assert!(matches!(Endpoint::parse(&c, "10.0.0.1"), Err(EndpointError::IpOfPod(..))));
        assert_eq!(Endpoint::parse(&c, "172.18.0.2"), Ok(Endpoint::NodeAddr("n1".into(), "172.18.0.2".parse().unwrap())));
        assert!(matches!(Endpoint::parse(&c, "nonsense"), Err(EndpointError::Syntax(_))));
    }
}
