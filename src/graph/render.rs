//! The allow graph and query answers as people and programs read them:
//! a table, Graphviz DOT, JSON (a public interface, documented in
//! README.md). Narrowing (`--namespace`, `--pod`, `--port`) happens here,
//! on the built graph; printers never re-evaluate.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use serde::Serialize;

use super::query::Reach;
use super::sides::Half;
use super::workload::Owner;
use super::{AllowGraph, Edge, NodeKey, PortSet, EGRESS, INGRESS};
use crate::ir::RuleRef;
use crate::model::{Cluster, Family, PodId};
use crate::selector::Labels;

/// A rule as output names it: `{"policy": "ns/name", "rule": 0}`, printed `ns/name[0]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RuleName {
    pub policy: String,
    pub rule: usize,
}

/// One side of an edge, with names: open (no policy isolates it), or the
/// rules that allow some of the edge's ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HalfOut {
    pub open: bool,
    pub rules: Vec<RuleName>,
}

pub fn rule_name(cluster: &Cluster, r: &RuleRef) -> RuleName {
    RuleName { policy: cluster.policies[r.policy].key(), rule: r.rule }
}

pub fn half_out(cluster: &Cluster, h: &Half) -> HalfOut {
    HalfOut { open: h.open, rules: h.rules.iter().map(|r| rule_name(cluster, r)).collect() }
}

impl HalfOut {
    pub fn merge(&mut self, other: &HalfOut) {
        self.open |= other.open;
        self.rules.extend(other.rules.iter().cloned());
        self.rules.sort();
        self.rules.dedup();
    }
}

/// `open`, or `ns/a[0] ns/b[1]`.
fn half_text(h: &Option<HalfOut>) -> String {
    match h {
        None => "-".into(),
        Some(h) if h.open => "open".into(),
        Some(h) => h.rules.iter().map(|r| format!("{}[{}]", r.policy, r.rule)).collect::<Vec<_>>().join(" "),
    }
}

fn families_text(f: &[Family]) -> String {
    f.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// What to keep of the graph. Empty filter: everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Keep edges with an end in one of these namespaces.
    pub namespaces: Vec<String>,
    /// Keep edges with an end standing for this pod (its workload or namespace).
    pub pod: Option<PodId>,
    /// Keep only these ports of each edge (edges left empty go).
    pub ports: Option<PortSet>,
}

/// The part of the graph a filter keeps, ready to print.
pub struct View<'g> {
    pub graph: &'g AllowGraph,
    pub nodes: Vec<NodeIndex>,
    pub edges: Vec<(NodeIndex, NodeIndex, Edge)>,
}

impl AllowGraph {
    pub fn view(&self, filter: &Filter) -> View<'_> {
        fn namespace_of<'k>(g: &'k AllowGraph, k: &'k NodeKey) -> Option<&'k str> {
            match k {
                NodeKey::Workload(w) => Some(g.workloads.list[*w].namespace.as_str()),
                NodeKey::Namespace(ns) => Some(ns.as_str()),
                _ => None,
            }
        }
        let pod_keys: Vec<NodeKey> = filter
            .pod
            .and_then(|p| self.workloads.of_pod[p])
            .map(|w| vec![NodeKey::Workload(w), NodeKey::Namespace(self.workloads.list[w].namespace.clone())])
            .unwrap_or_default();
        let in_scope = |k: &NodeKey| {
            (filter.namespaces.is_empty() || namespace_of(self, k).is_some_and(|ns| filter.namespaces.iter().any(|n| n == ns)))
                && (filter.pod.is_none() || pod_keys.contains(k))
        };
        let mut edges = Vec::new();
        for e in self.graph.edge_references() {
            let (a, b) = (e.source(), e.target());
            if !in_scope(&self.graph[a].key) && !in_scope(&self.graph[b].key) {
                continue;
            }
            let mut w = e.weight().clone();
            if let Some(only) = &filter.ports {
                w.ports = w.ports.intersect(only);
                if w.ports.is_empty() {
                    continue;
                }
            }
            edges.push((a, b, w));
        }
        // Workloads in scope show even without edges (a pod nothing may reach).
        let mut nodes: BTreeSet<NodeIndex> = edges.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
        for (w, _) in self.workloads.list.iter().enumerate() {
            let key = NodeKey::Workload(w);
            if in_scope(&key) {
                if let Some(i) = self.node(&key) {
                    nodes.insert(i);
                }
            }
        }
        View { graph: self, nodes: nodes.into_iter().collect(), edges }
    }
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum NodeJson<'a> {
    Workload {
        id: &'a str,
        namespace: &'a str,
        owner: &'a Owner,
        pods: Vec<String>,
        labels: &'a Labels,
        families: &'a [Family],
        egress_isolated: bool,
        ingress_isolated: bool,
    },
    Namespace { id: &'a str, namespace: &'a str, workloads: usize },
    Ipblock { id: &'a str, cidr: String, except: Vec<String> },
    Outside { id: &'a str },
    OpenEgress { id: &'a str },
    OpenIngress { id: &'a str },
}

#[derive(Serialize)]
struct EdgeJson<'a> {
    from: &'a str,
    to: &'a str,
    families: &'a [Family],
    ports: &'a PortSet,
    egress: Option<HalfOut>,
    ingress: Option<HalfOut>,
}

#[derive(Serialize)]
struct GraphJson<'a> {
    nodes: Vec<NodeJson<'a>>,
    edges: Vec<EdgeJson<'a>>,
}

impl View<'_> {
    fn id(&self, i: NodeIndex) -> &str {
        &self.graph.graph[i].id
    }

    fn halves(&self, cluster: &Cluster, e: &Edge) -> (Option<HalfOut>, Option<HalfOut>) {
        (e.egress.as_ref().map(|h| half_out(cluster, h)), e.ingress.as_ref().map(|h| half_out(cluster, h)))
    }

    /// The JSON document of `netfence graph -o json`.
    pub fn to_json(&self, cluster: &Cluster) -> serde_json::Value {
        let g = self.graph;
        let nodes = self
            .nodes
            .iter()
            .map(|&i| {
                let id = self.id(i);
                match &g.graph[i].key {
                    NodeKey::Workload(w) => {
                        let wl = &g.workloads.list[*w];
                        NodeJson::Workload {
                            id,
                            namespace: &wl.namespace,
                            owner: &wl.owner,
                            pods: wl.pods.iter().map(|&p| cluster.pods[p].key()).collect(),
                            labels: &wl.labels,
                            families: &wl.families,
                            egress_isolated: g.isolated[*w][EGRESS],
                            ingress_isolated: g.isolated[*w][INGRESS],
                        }
                    }
                    NodeKey::Namespace(ns) => NodeJson::Namespace {
                        id,
                        namespace: ns,
                        workloads: g.workloads.by_namespace.get(ns).map_or(0, Vec::len),
                    },
                    NodeKey::Block(b) => {
                        let b = &g.blocks[*b];
                        NodeJson::Ipblock { id, cidr: b.cidr.to_string(), except: b.except.iter().map(ToString::to_string).collect() }
                    }
                    NodeKey::Outside => NodeJson::Outside { id },
                    NodeKey::OpenEgress => NodeJson::OpenEgress { id },
                    NodeKey::OpenIngress => NodeJson::OpenIngress { id },
                }
            })
            .collect();
        let edges = self
            .edges
            .iter()
            .map(|(a, b, e)| {
                let (egress, ingress) = self.halves(cluster, e);
                EdgeJson { from: self.id(*a), to: self.id(*b), families: &e.families, ports: &e.ports, egress, ingress }
            })
            .collect();
        serde_json::to_value(GraphJson { nodes, edges }).unwrap_or_default()
    }

    /// One line per edge, aligned columns, after a one-line summary.
    pub fn render_table(&self, cluster: &Cluster) -> String {
        let g = self.graph;
        let workloads: Vec<usize> = self
            .nodes
            .iter()
            .filter_map(|&i| match g.graph[i].key {
                NodeKey::Workload(w) => Some(w),
                _ => None,
            })
            .collect();
        let pods: usize = workloads.iter().map(|&w| g.workloads.list[w].pods.len()).sum();
        let mut rows: Vec<[String; 6]> = vec![["FROM", "TO", "PORTS", "FAMILIES", "EGRESS", "INGRESS"].map(String::from)];
        for (a, b, e) in &self.edges {
            let (egress, ingress) = self.halves(cluster, e);
            rows.push([
                self.id(*a).to_string(),
                self.id(*b).to_string(),
                e.ports.to_string(),
                families_text(&e.families),
                half_text(&egress),
                half_text(&ingress),
            ]);
        }
        let mut out = format!("{} workloads ({pods} pods), {} edges\n", workloads.len(), self.edges.len());
        out.push_str(&table(&rows));
        out
    }

    /// Graphviz DOT: workloads as boxes (pod count, isolation), namespaces
    /// as folders, addresses as notes, hubs as octagons; edges labelled
    /// with their ports, the allowing rules as tooltips.
    pub fn render_dot(&self, cluster: &Cluster) -> String {
        let g = self.graph;
        let mut out = String::from("digraph allow {\n  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=9];\n");
        for (n, &i) in self.nodes.iter().enumerate() {
            let id = self.id(i);
            let (label, shape) = match &g.graph[i].key {
                NodeKey::Workload(w) => {
                    let wl = &g.workloads.list[*w];
                    let iso = match g.isolated[*w] {
                        [true, true] => "isolated both ways",
                        [true, false] => "egress isolated",
                        [false, true] => "ingress isolated",
                        [false, false] => "not isolated",
                    };
                    let pods = if wl.pods.len() == 1 { "1 pod".to_string() } else { format!("{} pods", wl.pods.len()) };
                    (format!("{id}\n{pods}, {iso}"), "box")
                }
                NodeKey::Namespace(_) => (format!("{id}\nevery workload"), "folder"),
                NodeKey::Block(_) => (id.to_string(), "note"),
                NodeKey::Outside => ("outside\nany address that is no pod".into(), "note"),
                NodeKey::OpenEgress => ("*/open-egress\nany workload whose egress is not isolated".into(), "octagon"),
                NodeKey::OpenIngress => ("*/open-ingress\nany workload whose ingress is not isolated".into(), "octagon"),
            };
            let _ = writeln!(out, "  n{n} [label=\"{}\", shape={shape}];", dot_escape(&label));
        }
        let pos = |i: NodeIndex| self.nodes.binary_search(&i).unwrap_or_default();
        for (a, b, e) in &self.edges {
            let (egress, ingress) = self.halves(cluster, e);
            let fam = if e.families.len() == 2 { String::new() } else { format!(" ({})", families_text(&e.families)) };
            let tip = format!("egress: {}; ingress: {}", half_text(&egress), half_text(&ingress));
            let _ = writeln!(
                out,
                "  n{} -> n{} [label=\"{}\", tooltip=\"{}\"];",
                pos(*a),
                pos(*b),
                dot_escape(&format!("{}{fam}", e.ports)),
                dot_escape(&tip)
            );
        }
        out.push_str("}\n");
        out
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = width[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `who-can-reach` / `reach-from` as text: a heading, then one row per entry.
pub fn render_reach(r: &Reach) -> String {
    let (verb, col) = if r.query == "who-can-reach" { ("who can reach", "FROM") } else { ("what can be reached from", "TO") };
    let only = r.only.as_ref().map(|o| format!(" on {o}")).unwrap_or_default();
    let mut out = format!("{verb} {} (workload {}){only}:\n", r.pod, r.workload);
    if r.entries.is_empty() {
        out.push_str("  nothing\n");
        return out;
    }
    let mut rows: Vec<[String; 6]> = vec![[col, "PODS", "PORTS", "FAMILIES", "EGRESS", "INGRESS"].map(String::from)];
    for e in &r.entries {
        rows.push([
            e.id.clone(),
            e.pods.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            e.ports.to_string(),
            families_text(&e.families),
            half_text(&e.egress),
            e.note.map(String::from).unwrap_or_else(|| half_text(&e.ingress)),
        ]);
    }
    for line in table(&rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    let pods: usize = r.entries.iter().filter_map(|e| e.pods).sum();
    let addresses = r.entries.iter().filter(|e| e.pods.is_none()).count();
    let _ = writeln!(out, "{} entries: {pods} pods, {addresses} address ranges or nodes", r.entries.len());
    out
}
