//! What one side of a flow allows, as exact port sets.
//!
//! A flow from `a` to `b` is allowed when `a`'s egress allows it toward `b`
//! and `b`'s ingress allows it from `a` ([`crate::eval`]'s rule). For one
//! pair of policy pods in one family this module computes the set of every
//! (protocol, port) each side allows, rule by rule, and their intersection:
//! `eval` lifted from one port to all of them. Peers can also be an address
//! that is no pod, or the graph's ipBlock and "outside" nodes (the rules
//! naming that exact ipBlock, or naming no peer at all).
//!
//! `without` leaves one policy out, which is how redundancy ("would removing
//! it change any verdict?") is judged without rebuilding anything.
//!
//! Cluster-scoped policies: [`Sides::side_ports`] (and so
//! [`Sides::pair_ports`]) walks the tiers as `eval` does, over port sets:
//! the Admin tier's first matching rule per port (Accept adds it whatever
//! NetworkPolicies say, Deny removes it, Pass hands it on), then the
//! NetworkPolicies for the ports left (when they isolate the pod), else
//! the Baseline tier (Deny removes, Accept and Pass leave allowed), else
//! allowed. [`Sides::side`] and the halves stay the NetworkPolicy rules:
//! the graph's edges and address nodes name those, and its commands
//! refuse cluster policies.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::ports::PortSet;
use crate::ir::{Ir, PeerIr, RuleRef};
use crate::model::cluster_policy::{Action, ClusterPeer, ClusterPolicy, Tier};
use crate::model::{Cluster, Direction, Family, PodId, PolicyId};

/// An ipBlock peer, as the graph's node for "these addresses".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
    pub fn family(&self) -> Family {
        Family::of_net(&self.cidr)
    }
    fn is(&self, peer: &PeerIr) -> bool {
        matches!(peer, PeerIr::IpBlock { cidr, except } if *cidr == self.cidr && *except == self.except)
    }
}

impl std::fmt::Display for IpBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let ex: Vec<String> = self.except.iter().map(ToString::to_string).collect();
            write!(f, " except {}", ex.join(","))?;
        }
        Ok(())
    }
}

/// The other end of a side.
#[derive(Debug, Clone, Copy)]
pub enum Peer<'p> {
    /// A policy pod.
    Pod(PodId),
    /// An address that is no policy pod (outside, a node, a host-network pod).
    Addr(IpAddr),
    /// The graph's ipBlock node: what rules naming exactly this ipBlock allow.
    Block(&'p IpBlock),
    /// The graph's "outside" node: what rules naming no peer allow toward
    /// addresses that are no pod.
    Outside,
}

/// One side of an edge: open (no policy isolates it), or the rules that
/// allow some of the edge's ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Half {
    pub open: bool,
    pub rules: Vec<RuleRef>,
}

impl Half {
    pub fn merge(&mut self, other: &Half) {
        self.open |= other.open;
        self.rules.extend(other.rules.iter().copied());
        self.rules.sort_unstable();
        self.rules.dedup();
    }
}

/// The verdict of one side toward one peer: `None` when not isolated
/// (everything allowed), else every matching rule with the ports it allows.
pub type SideRules = Option<Vec<(RuleRef, PortSet)>>;

#[derive(Clone, Copy)]
pub struct Sides<'a> {
    pub cluster: &'a Cluster,
    pub ir: &'a Ir,
    /// A policy to judge as if it were absent.
    pub without: Option<PolicyId>,
}

impl<'a> Sides<'a> {
    pub fn new(cluster: &'a Cluster, ir: &'a Ir) -> Sides<'a> {
        Sides { cluster, ir, without: None }
    }

    /// The policies that isolate `pod` in `dir`.
    pub fn isolating(&self, pod: PodId, dir: Direction) -> impl Iterator<Item = PolicyId> + '_ {
        self.ir.selecting[pod]
            .iter()
            .copied()
            .filter(move |&p| Some(p) != self.without && self.cluster.policies[p].isolates(dir))
    }

    pub fn isolated(&self, pod: PodId, dir: Direction) -> bool {
        self.isolating(pod, dir).next().is_some()
    }

    /// What `me`'s side in `dir` allows toward `peer` in `family`.
    pub fn side(&self, me: PodId, dir: Direction, peer: Peer<'_>, family: Family) -> SideRules {
        if !self.isolated(me, dir) {
            return None;
        }
        // Named ports resolve on the destination: the peer for egress, me for ingress.
        let dst = match (dir, peer) {
            (Direction::Ingress, _) => Some(&*self.cluster.pods[me]),
            (Direction::Egress, Peer::Pod(q)) => Some(&*self.cluster.pods[q]),
            (Direction::Egress, _) => None,
        };
        let mut out = Vec::new();
        for policy in self.isolating(me, dir) {
            for (rule, r) in self.ir.policies[policy].rules(dir).iter().enumerate() {
                let matches = match &r.peers {
                    // A peerless rule is the "outside" node's, not every ipBlock's.
                    None => !matches!(peer, Peer::Block(_)),
                    Some(peers) => peers.iter().any(|p| self.peer_matches(p, peer, family)),
                };
                if matches {
                    let ports = PortSet::of_rule(&r.ports, dst);
                    if !ports.is_empty() {
                        out.push((RuleRef { policy, direction: dir, rule }, ports));
                    }
                }
            }
        }
        Some(out)
    }

    fn peer_matches(&self, rule_peer: &PeerIr, peer: Peer<'_>, family: Family) -> bool {
        match (rule_peer, peer) {
            (PeerIr::Pods(ids), Peer::Pod(q)) => ids.binary_search(&q).is_ok(),
            (PeerIr::IpBlock { cidr, except }, Peer::Pod(q)) => self.cluster.pods[q]
                .ip(family)
                .is_some_and(|ip| cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))),
            (PeerIr::IpBlock { cidr, except }, Peer::Addr(ip)) => {
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            }
            (p @ PeerIr::IpBlock { .. }, Peer::Block(b)) => b.is(p),
            (PeerIr::Pods(_), _) | (PeerIr::IpBlock { .. }, Peer::Outside) => false,
        }
    }

    /// The cluster policies whose subject is `pod` and that have rules in
    /// `dir`, in judging order (Admin tier first).
    pub fn cluster_subject(&self, pod: PodId, dir: Direction) -> impl Iterator<Item = &'a ClusterPolicy> + '_ {
        let c = self.cluster;
        c.cluster_policies.iter().filter(move |p| !p.rules(dir).is_empty() && p.subject.selects(c, pod))
    }

    /// Every port a side allows, every tier considered (see the module doc).
    pub fn side_ports(&self, me: PodId, dir: Direction, peer: Peer<'_>, family: Family) -> PortSet {
        let subject: Vec<&ClusterPolicy> = self.cluster_subject(me, dir).collect();
        if subject.is_empty() {
            return ports_of(&self.side(me, dir, peer, family));
        }
        let dst = match (dir, peer) {
            (Direction::Ingress, _) => Some(&self.cluster.pods[me]),
            (Direction::Egress, Peer::Pod(q)) => Some(&self.cluster.pods[q]),
            (Direction::Egress, _) => None,
        };
        // One tier: per port, the first matching rule's action. Returns
        // (accepted, denied, passed); ports no rule matched are in none.
        let walk = |tier: Tier| {
            let mut undecided = PortSet::all();
            let mut by: [PortSet; 3] = Default::default();
            for policy in subject.iter().filter(|p| p.tier == tier) {
                for rule in policy.rules(dir) {
                    if undecided.is_empty() {
                        return by;
                    }
                    if !rule.peers.iter().any(|q| self.cluster_peer_matches(q, peer, family)) {
                        continue;
                    }
                    let here = undecided.intersect(&PortSet::of_cluster_rule(&rule.ports, dst.map(|p| &**p)));
                    undecided = undecided.minus(&here);
                    let i = match rule.action {
                        Action::Accept => 0,
                        Action::Deny => 1,
                        Action::Pass => 2,
                    };
                    by[i].union_with(&here);
                }
            }
            by
        };
        let [accepted, denied, _passed] = walk(Tier::Admin);
        // What the Admin tier did not decide (Pass included) goes on.
        let rest = PortSet::all().minus(&accepted).minus(&denied);
        let below = if self.isolated(me, dir) {
            rest.intersect(&ports_of(&self.side(me, dir, peer, family)))
        } else {
            // Baseline: only Deny removes; Accept, Pass and no match allow.
            let [_, denied, _] = walk(Tier::Baseline);
            rest.minus(&denied)
        };
        accepted.union(&below)
    }

    /// Does cluster peer `rule_peer` match `peer` (at its address in
    /// `family`)? As [`crate::eval`] judges it: pod selectors match policy
    /// pods, networks any address, nodes their nodes' addresses, domain
    /// names nothing. The graph's ipBlock and outside nodes are no
    /// address: cluster peers never match them.
    pub fn cluster_peer_matches(&self, rule_peer: &ClusterPeer, peer: Peer<'_>, family: Family) -> bool {
        let c = self.cluster;
        let ip = match peer {
            Peer::Pod(q) => {
                if rule_peer.has_pod(c, q) {
                    return true;
                }
                c.pods[q].ip(family)
            }
            Peer::Addr(ip) => Some(ip),
            Peer::Block(_) | Peer::Outside => None,
        };
        let Some(ip) = ip else { return false };
        match rule_peer {
            ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(&ip)),
            ClusterPeer::Nodes(sel) => c.nodes.values().find(|n| n.has_address(ip)).is_some_and(|n| sel.matches(&n.labels)),
            ClusterPeer::Namespaces(_) | ClusterPeer::Pods { .. } | ClusterPeer::DomainNames(_) => false,
        }
    }

    /// What NetworkPolicies allow from policy pod `src` to policy pod `dst` in
    /// `family`, both sides considered, with the rules that allow some of
    /// it (cluster policies not considered: see [`Sides::pair_ports`]). A pod reaching itself is always allowed; this does not know it
    /// (groups ask about "another pod like this one").
    pub fn pair(&self, src: PodId, dst: PodId, family: Family) -> (PortSet, Half, Half) {
        let e = self.side(src, Direction::Egress, Peer::Pod(dst), family);
        let i = self.side(dst, Direction::Ingress, Peer::Pod(src), family);
        let ports = ports_of(&e).intersect(&ports_of(&i));
        (ports.clone(), half(&e, &ports), half(&i, &ports))
    }

    /// What policy allows from policy pod `src` to policy pod `dst` in
    /// `family`, both sides and every tier considered.
    pub fn pair_ports(&self, src: PodId, dst: PodId, family: Family) -> PortSet {
        let e = self.side_ports(src, Direction::Egress, Peer::Pod(dst), family);
        if e.is_empty() {
            return e;
        }
        e.intersect(&self.side_ports(dst, Direction::Ingress, Peer::Pod(src), family))
    }
}

pub fn ports_of(side: &SideRules) -> PortSet {
    match side {
        None => PortSet::all(),
        Some(rules) => {
            let mut s = PortSet::empty();
            for (_, p) in rules {
                s.union_with(p);
            }
            s
        }
    }
}

/// The side as an edge shows it: the rules that allow some of `ports`.
pub fn half(side: &SideRules, ports: &PortSet) -> Half {
    match side {
        None => Half { open: true, rules: vec![] },
        Some(rules) => Half {
            open: false,
            rules: rules.iter().filter(|(_, p)| !p.intersect(ports).is_empty()).map(|(r, _)| *r).collect(),
        },
    }
}

/// Every distinct ipBlock of the rules of isolating directions, sorted.
pub fn ip_blocks(cluster: &Cluster, ir: &Ir) -> Vec<IpBlock> {
    let mut out: Vec<IpBlock> = Vec::new();
    for (pid, pol) in ir.policies.iter().enumerate() {
        for dir in Direction::BOTH.into_iter().filter(|&d| cluster.policies[pid].isolates(d)) {
            for rule in pol.rules(dir) {
                for peer in rule.peers.iter().flatten() {
                    if let PeerIr::IpBlock { cidr, except } = peer {
                        out.push(IpBlock { cidr: *cidr, except: except.clone() });
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A partition of (some) policy pods into groups whose members are
/// interchangeable for policy, each judged by its first pod.
pub struct Groups<'g> {
    /// The representative pod of each group.
    pub reps: &'g [PodId],
    /// The group of each pod of the cluster, if it is in one.
    pub of_pod: &'g [Option<usize>],
}

/// The groups each rule peer names, cached per resolved pod list (shared
/// between identical selectors) and per ipBlock (groups whose
/// representative's address, in the block's family, it holds).
pub struct PeerIndex<'g> {
    groups: &'g Groups<'g>,
    by_list: HashMap<*const Vec<PodId>, Vec<usize>>,
    by_block: HashMap<IpBlock, Vec<usize>>,
    by_cluster_peer: HashMap<*const ClusterPeer, Vec<usize>>,
}

impl<'g> PeerIndex<'g> {
    pub fn new(groups: &'g Groups<'g>) -> PeerIndex<'g> {
        PeerIndex { groups, by_list: HashMap::new(), by_block: HashMap::new(), by_cluster_peer: HashMap::new() }
    }

    /// The groups a cluster policy peer matches (by its representative, in
    /// any family), cached per peer of the cluster.
    pub fn groups_of_cluster_peer(&mut self, sides: &Sides<'_>, peer: &ClusterPeer) -> &[usize] {
        let groups = self.groups;
        self.by_cluster_peer.entry(peer as *const ClusterPeer).or_insert_with(|| {
            (0..groups.reps.len())
                .filter(|&h| [Family::IPv4, Family::IPv6].into_iter().any(|f| sides.cluster_peer_matches(peer, Peer::Pod(groups.reps[h]), f)))
                .collect()
        })
    }

    pub fn groups_of(&mut self, cluster: &Cluster, peer: &PeerIr) -> &[usize] {
        let groups = self.groups;
        match peer {
            PeerIr::Pods(ids) => self.by_list.entry(std::sync::Arc::as_ptr(ids)).or_insert_with(|| {
                let mut gs: Vec<usize> = ids.iter().filter_map(|&p| groups.of_pod[p]).collect();
                gs.sort_unstable();
                gs.dedup();
                gs
            }),
            PeerIr::IpBlock { cidr, except } => {
                let b = IpBlock { cidr: *cidr, except: except.clone() };
                self.by_block.entry(b).or_insert_with_key(|b| {
                    (0..groups.reps.len())
                        .filter(|&h| cluster.pods[groups.reps[h]].ip(b.family()).is_some_and(|ip| b.contains(ip)))
                        .collect()
                })
            }
        }
    }

    /// The groups some rule of `rules` names; `None` when a rule has no
    /// peers (it names every group).
    pub fn named_by<'r>(&mut self, cluster: &Cluster, rules: impl Iterator<Item = &'r crate::ir::RuleIr>) -> Option<Vec<usize>> {
        let mut out: Vec<usize> = Vec::new();
        for rule in rules {
            let peers = rule.peers.as_ref()?;
            for peer in peers {
                out.extend_from_slice(self.groups_of(cluster, peer));
            }
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }
}

/// The pairs of groups whose flows some isolating rule decides: every pair
/// (a, b) for which a's egress is isolated and one of its rules names b, or
/// b's ingress is isolated and one of its rules names a, or a cluster
/// policy whose subject is a (b) has an egress (ingress) rule naming b (a).
/// A pair outside this list allows nothing (a side is isolated with no
/// rule for the other) or everything (neither side is isolated): tiers
/// only decide for the peers their rules name. Sorted, no duplicates.
pub fn candidates(sides: &Sides<'_>, groups: &Groups<'_>) -> Vec<(usize, usize)> {
    let mut index = PeerIndex::new(groups);
    let n = groups.reps.len();
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (g, &rep) in groups.reps.iter().enumerate() {
        for dir in Direction::BOTH {
            for policy in sides.cluster_subject(rep, dir) {
                for rule in policy.rules(dir) {
                    for peer in &rule.peers {
                        for &h in index.groups_of_cluster_peer(sides, peer) {
                            out.push(if dir == Direction::Egress { (g, h) } else { (h, g) });
                        }
                    }
                }
            }
            if !sides.isolated(rep, dir) {
                continue;
            }
            let policies: Vec<PolicyId> = sides.isolating(rep, dir).collect();
            let rules = policies.iter().flat_map(|&p| sides.ir.policies[p].rules(dir));
            let named = index.named_by(sides.cluster, rules).unwrap_or_else(|| (0..n).collect());
            for h in named {
                out.push(if dir == Direction::Egress { (g, h) } else { (h, g) });
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}
