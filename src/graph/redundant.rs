//! Redundant policies: policies whose removal would change no verdict.
//!
//! Definition. A policy P of a snapshot is *redundant* when, for every
//! flow (every source and destination among policy pods and addresses that
//! are no pod, i.e. outside addresses, nodes and host-network pods; every
//! protocol, port and address family) the verdict with P equals the verdict
//! without it. Each policy is judged alone: of two identical policies each
//! is redundant (either may go, not both). A policy that selects no pod is
//! redundant; so is an allow rule the other side of every flow refuses
//! anyway, an isolation another policy already imposes with a subset of its
//! allowances, or an ipBlock naming only the node the selected pods run on
//! (a node's own address may always reach its pods).
//!
//! Judging it. Only flows that leave or enter a pod P selects, in a
//! direction P isolates, can change. For each such workload X (its pods are
//! interchangeable) the pair sets with and without P are compared against
//! every workload P's rules name (every workload, if X would lose its
//! isolation without P), and the side toward addresses is compared on one
//! representative of every address range the ipBlocks of X's rules cut the
//! address space into (skipping pod addresses, and node addresses local to
//! every pod of X). The first difference ends the search, so the usual
//! answer (not redundant) is cheap.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::sides::{Groups, IpBlock, Peer, PeerIndex, Sides};
use super::workload::{self, Workloads};
use crate::ir::{Ir, PeerIr};
use crate::model::cluster_policy::ClusterPeer;
use crate::model::{Cluster, Direction, Family, PodId, PolicyId};

/// Reusable state for judging many policies of one snapshot.
pub struct Redundancy<'a> {
    cluster: &'a Cluster,
    ir: &'a Ir,
    workloads: Workloads,
    reps: Vec<PodId>,
}

impl<'a> Redundancy<'a> {
    pub fn new(cluster: &'a Cluster, ir: &'a Ir) -> Redundancy<'a> {
        let workloads = workload::group(cluster, ir);
        let reps = workloads.list.iter().map(|w| w.rep()).collect();
        Redundancy { cluster, ir, workloads, reps }
    }

    /// Every redundant policy, in policy order.
    pub fn all(&self) -> Vec<PolicyId> {
        (0..self.cluster.policies.len()).filter(|&p| self.is_redundant(p)).collect()
    }

    pub fn is_redundant(&self, policy: PolicyId) -> bool {
        let c = self.cluster;
        let with = Sides::new(c, self.ir);
        let without = Sides { without: Some(policy), ..with };
        let groups = Groups { reps: &self.reps, of_pod: &self.workloads.of_pod };
        let mut index = PeerIndex::new(&groups);
        let mut selected: Vec<usize> = self.ir.policies[policy].selected.iter().filter_map(|&p| self.workloads.of_pod[p]).collect();
        selected.dedup();
        let all: Vec<usize> = (0..self.reps.len()).collect();
        for dir in Direction::BOTH.into_iter().filter(|&d| c.policies[policy].isolates(d)) {
            for &x in &selected {
                let rep = self.reps[x];
                let named = if without.isolated(rep, dir) {
                    index.named_by(c, self.ir.policies[policy].rules(dir).iter())
                } else {
                    None
                };
                let wx = &self.workloads.list[x];
                for &y in named.as_deref().unwrap_or(&all) {
                    if x == y && wx.pods.len() == 1 {
                        continue; // a pod reaching itself is always allowed
                    }
                    let wy = &self.workloads.list[y];
                    for &f in wx.families.iter().filter(|f| wy.families.contains(f)) {
                        let (s, d) = if dir == Direction::Egress { (rep, self.reps[y]) } else { (self.reps[y], rep) };
                        if with.pair_ports(s, d, f) != without.pair_ports(s, d, f) {
                            return false;
                        }
                    }
                }
                for &f in &wx.families {
                    for ip in self.address_representatives(&with, x, dir, f) {
                        if with.side_ports(rep, dir, Peer::Addr(ip), f) != without.side_ports(rep, dir, Peer::Addr(ip), f) {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// One address that is no pod from every range of `family` in which
    /// the ipBlocks of workload `x`'s rules in `dir` hold constant (ranges
    /// holding no such address are left out). For ingress, a node's address
    /// is left out when every pod of `x` runs on that node: it may always
    /// reach them, whatever the policies say.
    fn address_representatives(&self, sides: &Sides<'_>, x: usize, dir: Direction, family: Family) -> Vec<IpAddr> {
        let c = self.cluster;
        let rep = self.reps[x];
        let bits = if family == Family::IPv4 { 32 } else { 128 };
        let max: u128 = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
        let num = |ip: IpAddr| match ip {
            IpAddr::V4(v) => u32::from(v) as u128,
            IpAddr::V6(v) => u128::from(v),
        };
        let mut cuts: BTreeSet<u128> = [0].into();
        for policy in sides.isolating(rep, dir) {
            for rule in self.ir.policies[policy].rules(dir) {
                for peer in rule.peers.iter().flatten() {
                    if let PeerIr::IpBlock { cidr, except } = peer {
                        let b = IpBlock { cidr: *cidr, except: except.clone() };
                        if b.family() != family {
                            continue;
                        }
                        for net in std::iter::once(cidr).chain(except) {
                            cuts.insert(num(net.network()));
                            let end = num(net.broadcast());
                            if end < max {
                                cuts.insert(end + 1);
                            }
                        }
                    }
                }
            }
        }
        // Cluster policies' networks and nodes cut the address space too:
        // their tiers decide before (Admin) or instead of (Baseline) the
        // NetworkPolicies, so a range must hold one verdict of theirs.
        for policy in sides.cluster_subject(rep, dir) {
            for rule in policy.rules(dir) {
                for peer in &rule.peers {
                    let nets: Vec<ipnet::IpNet> = match peer {
                        ClusterPeer::Networks(nets) => nets.clone(),
                        ClusterPeer::Nodes(_) => c.nodes.values().flat_map(|n| n.addresses.iter().copied()).map(ipnet::IpNet::from).collect(),
                        _ => Vec::new(),
                    };
                    for net in nets.iter().filter(|n| Family::of_net(n) == family) {
                        cuts.insert(num(net.network()));
                        let end = num(net.broadcast());
                        if end < max {
                            cuts.insert(end + 1);
                        }
                    }
                }
            }
        }
        let mut forbidden: Vec<u128> = c.pods.iter().filter(|p| p.is_policy_pod()).filter_map(|p| p.ip(family)).map(num).collect();
        if dir == Direction::Ingress {
            let members = &self.workloads.list[x].pods;
            for node in c.nodes.values() {
                if members.iter().all(|&p| c.pods[p].node.as_deref() == Some(node.name.as_str())) {
                    forbidden.extend(node.ip(family).map(num));
                }
            }
        }
        forbidden.sort_unstable();
        let cuts: Vec<u128> = cuts.into_iter().collect();
        let mut out = Vec::new();
        for (i, &lo) in cuts.iter().enumerate() {
            let hi = cuts.get(i + 1).map_or(max, |n| n - 1);
            let mut d = lo;
            while forbidden.binary_search(&d).is_ok() && d < hi {
                d += 1;
            }
            if forbidden.binary_search(&d).is_err() {
                out.push(if bits == 32 { IpAddr::V4(Ipv4Addr::from(d as u32)) } else { IpAddr::V6(Ipv6Addr::from(d)) });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.3}]}\n---\n";

    fn pod(name: &str, app: &str, node: &str, ip: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {ip}}}\n---\n")
    }

    fn policy(name: &str, spec: &str) -> String {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n---\n")
    }

    /// `check(policies, redundant)`: over two pods (cart on n1, db on n2).
    fn check(policies: &[(&str, &str)], want: &[&str]) {
        let mut text = format!("{NODES}{}{}", pod("cart", "cart", "n1", "10.0.0.1"), pod("db", "db", "n2", "10.0.0.2"));
        for (name, spec) in policies {
            text.push_str(&policy(name, spec));
        }
        let c = crate::model::load::load_str("t.yaml", &text).unwrap();
        let ir = crate::ir::resolve(&c);
        let got: Vec<String> = Redundancy::new(&c, &ir).all().into_iter().map(|p| c.policies[p].name.clone()).collect();
        assert_eq!(got, want, "{policies:?}");
    }

    const DENY: &str = "{podSelector: {}, policyTypes: [Ingress, Egress]}";
    const DENY_DB_IN: &str = "{podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}";
    const CART_TO_DB: &str = "{podSelector: {matchLabels: {app: cart}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432}]}]}";

    #[test]
    fn redundant_means_no_verdict_changes_without_it() {
        // A default deny is never redundant; an allow-all rule that alone isolates is.
        check(&[("deny", DENY)], &[]);
        check(&[("all", "{podSelector: {}, ingress: [{}]}")], &["all"]);
        // Selecting nothing.
        check(&[("none", "{podSelector: {matchLabels: {app: nope}}}")], &["none"]);
        // Two identical policies: each alone may go.
        check(&[("a", DENY), ("b", DENY)], &["a", "b"]);
        // An egress allowance the destination's ingress refuses anyway...
        check(&[("cart-to-db", CART_TO_DB), ("deny", DENY), ("deny-db-in", DENY_DB_IN)], &["cart-to-db", "deny-db-in"]);
        // ...but not when cart-to-db is also what isolates cart's egress.
        check(&[("cart-to-db", CART_TO_DB), ("deny-db-in", DENY_DB_IN)], &[]);
        // A narrower allowance inside a broader one.
        let broad = "{podSelector: {matchLabels: {app: db}}, ingress: [{ports: [{port: 5000, endPort: 6000}]}]}";
        let narrow = "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {}}], ports: [{port: 5432}]}]}";
        check(&[("broad", broad), ("narrow", narrow)], &["narrow"]);
        // The same, but a named port that resolves to 8080 on db: outside the broad range.
        let named = "{podSelector: {matchLabels: {app: db}}, ingress: [{ports: [{port: http}]}]}";
        check(&[("broad", broad), ("named", named)], &[]);
        // An ipBlock for the node every selected pod runs on: that node may always reach them.
        let node1 = "{podSelector: {matchLabels: {app: cart}}, ingress: [{from: [{ipBlock: {cidr: 172.18.0.2/32}}]}]}";
        check(&[("deny", DENY), ("node1", node1)], &["node1"]);
        // For db (on n2) n1 is an ordinary address.
        let node1_db = "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{ipBlock: {cidr: 172.18.0.2/32}}]}]}";
        check(&[("deny", DENY), ("node1-db", node1_db)], &[]);
        // An ipBlock holding only pod addresses admits nothing the pod rules do not.
        let pods_block = "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/32}}]}]}";
        let from_cart = "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: cart}}}]}]}";
        check(&[("deny", DENY), ("from-cart", from_cart), ("pods-block", pods_block)], &["from-cart", "pods-block"]);
        // An ipBlock whose except leaves an outside address (10.0.0.0) in is not
        // redundant; it admits cart by address, which makes from-cart redundant.
        let wide = "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/30, except: [10.0.0.2/31]}}]}]}";
        check(&[("deny", DENY), ("from-cart", from_cart), ("wide", wide)], &["from-cart"]);
    }
}
