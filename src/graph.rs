//! The allow graph: who may open connections to whom, and why.
//!
//! Nodes are endpoints (policy pods), ipBlocks, and `Anywhere` (a rule with
//! no peers); an edge `a -> b` says a rule lets `a` open connections to `b`
//! on the edge's ports, and names that rule. Ingress rules give edges into
//! the pods a policy selects, egress rules edges out of them. A flow needs
//! both sides, so [`AllowGraph::allows`] combines them the same way
//! [`crate::eval`] does; the graph is the whole-cluster view (for DOT
//! output, audits and "what does this change open") while `eval` answers one
//! flow with a trace.
//!
//! The graph is built from the IR and is O(selected pods × peers) in size;
//! it is an analysis tool, not on the agent's path.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ipnet::IpNet;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::ir::{Ir, PeerIr, RuleRef};
use crate::model::{Cluster, Direction, PodId, PortSpec};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GraphNode {
    Pod(PodId),
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
    /// Any peer at all: a rule without `from`/`to`.
    Anywhere,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEdge {
    pub rule: RuleRef,
    /// Empty: every port.
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Default)]
pub struct AllowGraph {
    pub graph: DiGraph<GraphNode, AllowEdge>,
    index: BTreeMap<GraphNode, NodeIndex>,
    /// Pods isolated for ingress / egress.
    isolated: BTreeMap<(PodId, Direction), bool>,
}

impl AllowGraph {
    pub fn build(cluster: &Cluster, ir: &Ir) -> AllowGraph {
        let mut g = AllowGraph::default();
        for (pod, pols) in ir.selecting.iter().enumerate() {
            for dir in Direction::BOTH {
                let iso = pols.iter().any(|&p| cluster.policies[p].isolates(dir));
                g.isolated.insert((pod, dir), iso);
            }
        }
        for (pid, pol) in ir.policies.iter().enumerate() {
            for dir in Direction::BOTH {
                if !cluster.policies[pid].isolates(dir) {
                    continue;
                }
                for (ri, rule) in pol.rules(dir).iter().enumerate() {
                    let edge = AllowEdge { rule: RuleRef { policy: pid, direction: dir, rule: ri }, ports: rule.ports.clone() };
                    let peers: Vec<GraphNode> = match &rule.peers {
                        None => vec![GraphNode::Anywhere],
                        Some(peers) => peers
                            .iter()
                            .flat_map(|p| match p {
                                PeerIr::Pods(ids) => ids.iter().map(|&i| GraphNode::Pod(i)).collect::<Vec<_>>(),
                                PeerIr::IpBlock { cidr, except } => {
                                    vec![GraphNode::IpBlock { cidr: *cidr, except: except.clone() }]
                                }
                            })
                            .collect(),
                    };
                    for &sel in &pol.selected {
                        let me = g.node(GraphNode::Pod(sel));
                        for peer in &peers {
                            let other = g.node(peer.clone());
                            let (a, b) = if dir == Direction::Ingress { (other, me) } else { (me, other) };
                            g.graph.add_edge(a, b, edge.clone());
                        }
                    }
                }
            }
        }
        g
    }

    fn node(&mut self, n: GraphNode) -> NodeIndex {
        if let Some(&i) = self.index.get(&n) {
            return i;
        }
        let i = self.graph.add_node(n.clone());
        self.index.insert(n, i);
        i
    }

    pub fn is_isolated(&self, pod: PodId, dir: Direction) -> bool {
        self.isolated.get(&(pod, dir)).copied().unwrap_or(false)
    }

    /// The rules that let `src` reach `dst` in direction `dir` (edges leaving
    /// `src` for egress, entering `dst` for ingress), whatever the port.
    pub fn rules_between(&self, src: PodId, dst: PodId, dir: Direction) -> Vec<&AllowEdge> {
        let (me, other) = if dir == Direction::Egress { (src, dst) } else { (dst, src) };
        let Some(&me_i) = self.index.get(&GraphNode::Pod(me)) else { return vec![] };
        let edges: Vec<_> = match dir {
            Direction::Egress => self.graph.edges_directed(me_i, petgraph::Direction::Outgoing).collect(),
            Direction::Ingress => self.graph.edges_directed(me_i, petgraph::Direction::Incoming).collect(),
        };
        edges
            .into_iter()
            .filter(|e| e.weight().rule.direction == dir)
            .filter(|e| {
                let peer = if dir == Direction::Egress { e.target() } else { e.source() };
                match &self.graph[peer] {
                    GraphNode::Pod(p) => *p == other,
                    GraphNode::Anywhere => true,
                    GraphNode::IpBlock { .. } => false,
                }
            })
            .map(|e| e.weight())
            .collect()
    }

    /// Graphviz DOT of the pod-to-pod and ipBlock edges, for audits.
    pub fn to_dot(&self, cluster: &Cluster) -> String {
        let label = |n: &GraphNode| match n {
            GraphNode::Pod(p) => cluster.pods[*p].key(),
            GraphNode::IpBlock { cidr, except } if except.is_empty() => cidr.to_string(),
            GraphNode::IpBlock { cidr, except } => {
                format!("{cidr} except {}", except.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
            }
            GraphNode::Anywhere => "anywhere".to_string(),
        };
        let mut out = String::from("digraph allow {\n  rankdir=LR;\n");
        for i in self.graph.node_indices() {
            let _ = writeln!(out, "  n{} [label={:?}];", i.index(), label(&self.graph[i]));
        }
        for e in self.graph.edge_references() {
            let w = e.weight();
            let ports = if w.ports.is_empty() {
                "any".to_string()
            } else {
                w.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
            };
            let pol = cluster.policies[w.rule.policy].key();
            let _ = writeln!(
                out,
                "  n{} -> n{} [label={:?}];",
                e.source().index(),
                e.target().index(),
                format!("{pol} {} {ports}", w.rule)
            );
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::ClusterBuilder;

    #[test]
    fn edges_follow_rules_and_directions() {
        let mut b = ClusterBuilder::new();
        b.add_text(
            "t.yaml",
            "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
  egress: [{}]
",
        )
        .unwrap();
        let c = b.finish().0;
        let ir = crate::ir::resolve(&c);
        let g = AllowGraph::build(&c, &ir);
        let (a, b) = (c.pod("x", "a").unwrap(), c.pod("x", "b").unwrap());
        assert!(g.is_isolated(a, Direction::Ingress) && g.is_isolated(a, Direction::Egress));
        assert!(!g.is_isolated(b, Direction::Ingress));
        assert_eq!(g.rules_between(b, a, Direction::Ingress).len(), 1);
        assert_eq!(g.rules_between(a, b, Direction::Ingress).len(), 0);
        assert_eq!(g.rules_between(a, b, Direction::Egress).len(), 1); // egress: [{}] reaches anywhere
        let dot = g.to_dot(&c);
        assert!(dot.contains("x/p ingress rule 0 80/TCP"), "{dot}");
    }
}
