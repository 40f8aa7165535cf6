//! The allow graph: which workloads, namespaces and addresses may open
//! connections to which, on which ports, and which policies allow it.
//!
//! Nodes are workloads ([`workload`]: pods grouped by owner and policy
//! signature, so every pod of one is interchangeable for policy),
//! namespaces (every workload of one namespace, where all of them share an
//! edge), ipBlocks and "outside" (addresses that are no pod: what rules
//! naming that ipBlock, or naming no peer, allow), and two hubs for the
//! default: `*/open-egress` (every workload no policy isolates for egress)
//! and `*/open-ingress` (every workload no policy isolates for ingress).
//!
//! An edge `a -> b` says: every pod of `a` may open connections to every
//! other pod of `b` on exactly the edge's ports, in the edge's families,
//! both sides considered (egress of `a`, ingress of `b`), and names the
//! rules of each side that allow some of them. Between two workloads the
//! graph holds an edge only when at least one side is isolated; when
//! neither is, the hubs say it (`a -> */open-ingress` and
//! `*/open-egress -> b`, all ports). That keeps the graph linear in
//! workloads plus rules × peers, where the full relation is quadratic.
//! Two rules no edge shows: a pod may always reach itself, and a node's
//! own address may always reach the pods on that node ([`AllowGraph::allows`]
//! applies both).
//!
//! Exactness: port sets are computed per pair of representatives from the
//! IR ([`sides`]), the way [`crate::eval`] judges one port; namespace
//! aggregation only merges edges that are identical for every workload of
//! the namespace. `tests/graph_vs_eval.rs` checks [`AllowGraph::allows`]
//! against `eval::evaluate` on random flows in every fixture cluster.
//!
//! Invariant: pure and deterministic (nodes and edges in sorted order); no I/O.

pub mod ports;
pub mod query;
pub mod redundant;
pub mod render;
pub mod sides;
pub mod workload;

use std::collections::HashMap;
use std::net::IpAddr;

use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};
use serde::Serialize;

use crate::ir::Ir;
use crate::model::{Cluster, Direction, Family, PodId, Protocol};
pub use ports::PortSet;
use sides::{candidates, ip_blocks, ports_of, Groups, Half, IpBlock, Peer, Sides};
use workload::{WorkloadId, Workloads};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKey {
    Workload(WorkloadId),
    /// Every workload of the namespace.
    Namespace(String),
    /// Index into [`AllowGraph::blocks`].
    Block(usize),
    Outside,
    OpenEgress,
    OpenIngress,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub key: NodeKey,
    /// What output prints: `ns/workload`, `ns/*`, a CIDR (`... except ...`),
    /// `outside`, `*/open-egress`, `*/open-ingress`.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub families: Vec<Family>,
    pub ports: PortSet,
    /// `None` when the source is no pod (nothing polices its egress).
    pub egress: Option<Half>,
    /// `None` when the destination is no pod.
    pub ingress: Option<Half>,
}

/// One end of a flow, as [`AllowGraph::allows`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// A policy pod.
    Pod(PodId),
    /// An address that is no policy pod.
    Addr(IpAddr),
}

#[derive(Debug)]
pub struct AllowGraph {
    pub graph: DiGraph<Node, Edge>,
    pub workloads: Workloads,
    pub blocks: Vec<IpBlock>,
    /// Per workload: is its egress isolated, is its ingress isolated.
    pub isolated: Vec<[bool; 2]>,
    nodes: HashMap<NodeKey, NodeIndex>,
    edges: HashMap<(NodeIndex, NodeIndex), Vec<EdgeIndex>>,
}

const EGRESS: usize = 0;
const INGRESS: usize = 1;

struct Raw {
    from: NodeKey,
    to: NodeKey,
    edge: Edge,
}

/// Per-family verdicts of one node pair as edges: empty ones dropped,
/// families with equal ports merged into one edge.
fn edges_of(per_family: Vec<(Family, PortSet, Option<Half>, Option<Half>)>) -> Vec<Edge> {
    let mut out: Vec<Edge> = Vec::new();
    for (family, ports, egress, ingress) in per_family {
        if ports.is_empty() {
            continue;
        }
        match out.iter_mut().find(|e| e.ports == ports) {
            Some(e) => {
                e.families.push(family);
                merge_half(&mut e.egress, &egress);
                merge_half(&mut e.ingress, &ingress);
            }
            None => out.push(Edge { families: vec![family], ports, egress, ingress }),
        }
    }
    out
}

fn merge_half(into: &mut Option<Half>, from: &Option<Half>) {
    if let (Some(a), Some(b)) = (into.as_mut(), from) {
        a.merge(b);
    }
}

fn open() -> Option<Half> {
    Some(Half { open: true, rules: vec![] })
}

impl AllowGraph {
    pub fn build(cluster: &Cluster, ir: &Ir) -> AllowGraph {
        let sides = Sides::new(cluster, ir);
        let workloads = workload::group(cluster, ir);
        let blocks = ip_blocks(cluster, ir);
        let reps: Vec<PodId> = workloads.list.iter().map(|w| w.rep()).collect();
        let isolated: Vec<[bool; 2]> = reps
            .iter()
            .map(|&r| [sides.isolated(r, Direction::Egress), sides.isolated(r, Direction::Ingress)])
            .collect();
        let fams = |w: WorkloadId| &workloads.list[w].families;
        let mut raw: Vec<Raw> = Vec::new();

        let groups = Groups { reps: &reps, of_pod: &workloads.of_pod };
        for (a, b) in candidates(&sides, &groups) {
            let per: Vec<_> = fams(a)
                .iter()
                .filter(|f| fams(b).contains(f))
                .map(|&f| {
                    let (ports, e, i) = sides.pair(reps[a], reps[b], f);
                    (f, ports, Some(e), Some(i))
                })
                .collect();
            for edge in edges_of(per) {
                raw.push(Raw { from: NodeKey::Workload(a), to: NodeKey::Workload(b), edge });
            }
        }

        for (w, &rep) in reps.iter().enumerate() {
            let me = NodeKey::Workload(w);
            let all = |egress, ingress| Edge { families: fams(w).clone(), ports: PortSet::all(), egress, ingress };
            for (dir, side) in [(Direction::Egress, EGRESS), (Direction::Ingress, INGRESS)] {
                let (to_hub, from_outside) = if dir == Direction::Egress {
                    ((me.clone(), NodeKey::OpenIngress), (me.clone(), NodeKey::Outside))
                } else {
                    ((NodeKey::OpenEgress, me.clone()), (NodeKey::Outside, me.clone()))
                };
                let shape = |h: Option<Half>| if dir == Direction::Egress { (h, None) } else { (None, h) };
                if !isolated[w][side] {
                    raw.push(Raw { from: to_hub.0, to: to_hub.1, edge: all(open(), open()) });
                    let (e, i) = shape(open());
                    raw.push(Raw { from: from_outside.0, to: from_outside.1, edge: all(e, i) });
                    continue;
                }
                let mut peers: Vec<(NodeKey, Peer<'_>, Vec<Family>)> = vec![(NodeKey::Outside, Peer::Outside, fams(w).clone())];
                for (bi, b) in blocks.iter().enumerate() {
                    if fams(w).contains(&b.family()) {
                        peers.push((NodeKey::Block(bi), Peer::Block(b), vec![b.family()]));
                    }
                }
                for (key, peer, families) in peers {
                    let per: Vec<_> = families
                        .into_iter()
                        .map(|f| {
                            let s = sides.side(rep, dir, peer, f);
                            let ports = ports_of(&s);
                            let (e, i) = shape(Some(sides::half(&s, &ports)));
                            (f, ports, e, i)
                        })
                        .collect();
                    for edge in edges_of(per) {
                        let (from, to) = if dir == Direction::Egress { (me.clone(), key.clone()) } else { (key.clone(), me.clone()) };
                        raw.push(Raw { from, to, edge });
                    }
                }
            }
        }

        let raw = aggregate(aggregate(raw, &workloads, true), &workloads, false);
        let mut g = AllowGraph {
            graph: DiGraph::new(),
            workloads,
            blocks,
            isolated,
            nodes: HashMap::new(),
            edges: HashMap::new(),
        };
        g.insert(raw);
        g
    }

    fn node_id(&self, key: &NodeKey) -> String {
        match key {
            NodeKey::Workload(w) => self.workloads.list[*w].id.clone(),
            NodeKey::Namespace(ns) => format!("{ns}/*"),
            NodeKey::Block(b) => self.blocks[*b].to_string(),
            NodeKey::Outside => "outside".into(),
            NodeKey::OpenEgress => "*/open-egress".into(),
            NodeKey::OpenIngress => "*/open-ingress".into(),
        }
    }

    /// Nodes in key order, then edges in (from id, to id) order: the same
    /// input always gives the same graph, indices included.
    fn insert(&mut self, mut raw: Vec<Raw>) {
        let mut keys: Vec<NodeKey> = (0..self.workloads.list.len()).map(NodeKey::Workload).collect();
        keys.extend(raw.iter().flat_map(|r| [r.from.clone(), r.to.clone()]));
        keys.sort();
        keys.dedup();
        for key in keys {
            let id = self.node_id(&key);
            let i = self.graph.add_node(Node { key: key.clone(), id });
            self.nodes.insert(key, i);
        }
        raw.sort_by(|a, b| {
            (&self.graph[self.nodes[&a.from]].id, &self.graph[self.nodes[&a.to]].id, &a.edge.families)
                .cmp(&(&self.graph[self.nodes[&b.from]].id, &self.graph[self.nodes[&b.to]].id, &b.edge.families))
        });
        for r in raw {
            let (a, b) = (self.nodes[&r.from], self.nodes[&r.to]);
            let e = self.graph.add_edge(a, b, r.edge);
            self.edges.entry((a, b)).or_default().push(e);
        }
    }

    pub fn node(&self, key: &NodeKey) -> Option<NodeIndex> {
        self.nodes.get(key).copied()
    }

    /// Union of the ports of every edge from one of `srcs` to one of `dsts`
    /// that carries `family`.
    pub fn ports_between(&self, srcs: &[NodeKey], dsts: &[NodeKey], family: Family) -> PortSet {
        let mut out = PortSet::empty();
        for s in srcs.iter().filter_map(|k| self.node(k)) {
            for d in dsts.iter().filter_map(|k| self.node(k)) {
                for &e in self.edges.get(&(s, d)).map(Vec::as_slice).unwrap_or_default() {
                    let w = &self.graph[e];
                    if w.families.contains(&family) {
                        out.union_with(&w.ports);
                    }
                }
            }
        }
        out
    }

    /// The nodes that stand for workload `w` as a source (`side` EGRESS)
    /// or destination: itself, its namespace, and the hub if that side is open.
    fn covering(&self, w: WorkloadId, side: usize) -> Vec<NodeKey> {
        let mut keys = vec![NodeKey::Workload(w), NodeKey::Namespace(self.workloads.list[w].namespace.clone())];
        if !self.isolated[w][side] {
            keys.push(if side == EGRESS { NodeKey::OpenEgress } else { NodeKey::OpenIngress });
        }
        keys
    }

    /// What the graph allows from any pod of `a` to any other pod of `b` in `family`.
    pub fn workload_ports(&self, a: WorkloadId, b: WorkloadId, family: Family) -> PortSet {
        self.ports_between(&self.covering(a, EGRESS), &self.covering(b, INGRESS), family)
    }

    /// The nodes that stand for address `ip`: outside, and every ipBlock holding it.
    fn address_keys(&self, ip: IpAddr) -> Vec<NodeKey> {
        let mut keys = vec![NodeKey::Outside];
        keys.extend(self.blocks.iter().enumerate().filter(|(_, b)| b.contains(ip)).map(|(i, _)| NodeKey::Block(i)));
        keys
    }

    /// What the graph allows from address `ip` (no pod) to any pod of `b`
    /// (the node-local rule aside).
    pub fn from_address_ports(&self, ip: IpAddr, b: WorkloadId, family: Family) -> PortSet {
        self.ports_between(&self.address_keys(ip), &self.covering(b, INGRESS)[..2], family)
    }

    /// What the graph allows from any pod of `a` to address `ip` (no pod).
    pub fn to_address_ports(&self, a: WorkloadId, ip: IpAddr, family: Family) -> PortSet {
        self.ports_between(&self.covering(a, EGRESS)[..2], &self.address_keys(ip), family)
    }

    /// Is a flow allowed, by the graph? `family` must be one both ends have.
    pub fn allows(&self, cluster: &Cluster, src: At, dst: At, protocol: Protocol, port: u16, family: Family) -> bool {
        let w = |p: PodId| self.workloads.of_pod[p];
        let ports = match (src, dst) {
            (At::Pod(a), At::Pod(b)) if a == b => return true,
            (At::Addr(_), At::Addr(_)) => return true,
            (At::Addr(s), At::Pod(b)) => {
                if node_local(cluster, s, b) {
                    return true;
                }
                w(b).map(|b| self.from_address_ports(s, b, family))
            }
            (At::Pod(a), At::Addr(d)) => w(a).map(|a| self.to_address_ports(a, d, family)),
            (At::Pod(a), At::Pod(b)) => w(a).zip(w(b)).map(|(a, b)| self.workload_ports(a, b, family)),
        };
        ports.is_some_and(|p| p.contains(protocol, port))
    }
}

/// One of a node's own addresses (InternalIP or ExternalIP) reaching a pod
/// on that node: always allowed.
pub fn node_local(cluster: &Cluster, ip: IpAddr, pod: PodId) -> bool {
    cluster.pods[pod].node.as_ref().and_then(|n| cluster.nodes.get(n)).is_some_and(|n| n.has_address(ip))
}

/// Replace the edges from (`by_src`) or to every workload of a namespace
/// (at least two of them) that are identical but for that end by one edge
/// from or to the namespace. Identical: same other end, families, ports,
/// and openness of each side; the rules are merged.
fn aggregate(raw: Vec<Raw>, workloads: &Workloads, by_src: bool) -> Vec<Raw> {
    type Key<'r> = (&'r str, &'r NodeKey, &'r [Family], &'r PortSet, Option<bool>, Option<bool>);
    let mut groups: HashMap<Key<'_>, Vec<usize>> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let (end, other) = if by_src { (&r.from, &r.to) } else { (&r.to, &r.from) };
        if let NodeKey::Workload(w) = end {
            let ns = workloads.list[*w].namespace.as_str();
            let e = &r.edge;
            let key = (ns, other, e.families.as_slice(), &e.ports, e.egress.as_ref().map(|h| h.open), e.ingress.as_ref().map(|h| h.open));
            groups.entry(key).or_default().push(i);
        }
    }
    let mut merged: Vec<Raw> = Vec::new();
    let mut gone = vec![false; raw.len()];
    for ((ns, other, ..), members) in &groups {
        let n = workloads.by_namespace.get(*ns).map_or(0, Vec::len);
        if n < 2 || members.len() != n {
            continue;
        }
        let mut edge = raw[members[0]].edge.clone();
        for &m in &members[1..] {
            merge_half(&mut edge.egress, &raw[m].edge.egress);
            merge_half(&mut edge.ingress, &raw[m].edge.ingress);
        }
        for &m in members {
            gone[m] = true;
        }
        let ns = NodeKey::Namespace(ns.to_string());
        let (from, to) = if by_src { (ns, (*other).clone()) } else { ((*other).clone(), ns) };
        merged.push(Raw { from, to, edge });
    }
    raw.into_iter().zip(gone).filter(|(_, g)| !g).map(|(r, _)| r).chain(merged).collect()
}

#[cfg(test)]
mod tests;
