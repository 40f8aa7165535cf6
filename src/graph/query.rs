//! Queries on the allow graph: who can reach a pod, and what a pod can
//! reach, exact over ports and address families.
//!
//! Answers come from the graph's edges ([`AllowGraph::workload_ports`] and
//! friends, the same lookups [`AllowGraph::allows`] is tested with); the
//! rules named per entry are those of the representative pair (the same
//! for every pod of the entry). Entries from every workload of a namespace
//! that are identical collapse into one `ns/*` entry.

use std::collections::BTreeMap;

use serde::Serialize;

use super::render::{half_out, HalfOut};
use super::sides::{half, Half, Peer, Sides};
use super::{AllowGraph, NodeKey, PortSet};
use crate::model::{Cluster, Direction, Family, PodId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Workload,
    Namespace,
    Ipblock,
    Outside,
    Node,
}

/// One source (who-can-reach) or destination (reach-from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// `ns/workload`, `ns/*`, a CIDR (`... except ...`), `outside`, `node/NAME`.
    pub id: String,
    /// Pods it stands for (workloads and namespaces; the queried pod not counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<usize>,
    pub families: Vec<Family>,
    pub ports: PortSet,
    /// The source's egress (`null` when the source is no pod).
    pub egress: Option<HalfOut>,
    /// The destination's ingress (`null` when the destination is no pod).
    pub ingress: Option<HalfOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// The answer to `who-can-reach` or `reach-from`.
#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    /// `who-can-reach` or `reach-from`.
    pub query: &'static str,
    pub pod: String,
    pub workload: String,
    /// Only these ports were asked about (absent: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only: Option<PortSet>,
    pub entries: Vec<Entry>,
}

/// Every source that may open a connection to policy pod `pod` on the
/// ports of `only` (all when `None`).
pub fn who_can_reach(g: &AllowGraph, cluster: &Cluster, sides: &Sides<'_>, pod: PodId, only: Option<&PortSet>) -> Option<Reach> {
    reach(g, cluster, sides, pod, only, Direction::Ingress)
}

/// Every destination policy pod `pod` may open a connection to on the
/// ports of `only` (all when `None`).
pub fn reach_from(g: &AllowGraph, cluster: &Cluster, sides: &Sides<'_>, pod: PodId, only: Option<&PortSet>) -> Option<Reach> {
    reach(g, cluster, sides, pod, only, Direction::Egress)
}

/// `dir` is the side of `pod` that is asked about: Ingress for who-can-reach.
fn reach(g: &AllowGraph, cluster: &Cluster, sides: &Sides<'_>, pod: PodId, only: Option<&PortSet>, dir: Direction) -> Option<Reach> {
    let me = g.workloads.of_pod[pod]?;
    let wl = &g.workloads.list[me];
    let mine = &wl.families;
    let clip = |p: PortSet| match only {
        Some(o) => p.intersect(o),
        None => p,
    };
    let rep = wl.rep();
    let mut entries: Vec<Entry> = Vec::new();

    for (other, w) in g.workloads.list.iter().enumerate() {
        let pods = w.pods.len() - usize::from(other == me);
        if pods == 0 {
            continue;
        }
        let (src, dst) = if dir == Direction::Ingress { (other, me) } else { (me, other) };
        let (rs, rd) = (g.workloads.list[src].rep(), g.workloads.list[dst].rep());
        let per: Vec<_> = mine
            .iter()
            .filter(|f| w.families.contains(f))
            .map(|&f| {
                let ports = clip(g.workload_ports(src, dst, f));
                let e = sides.side(rs, Direction::Egress, Peer::Pod(rd), f);
                let i = sides.side(rd, Direction::Ingress, Peer::Pod(rs), f);
                (f, ports.clone(), Some(half(&e, &ports)), Some(half(&i, &ports)))
            })
            .collect();
        for (families, ports, egress, ingress) in merge_families(per) {
            entries.push(Entry {
                kind: EntryKind::Workload,
                id: w.id.clone(),
                pods: Some(pods),
                families,
                ports,
                egress: egress.map(|h| half_out(cluster, &h)),
                ingress: ingress.map(|h| half_out(cluster, &h)),
                note: None,
            });
        }
    }
    let mut entries = collapse_namespaces(g, entries, me);

    // Addresses that are no pod: outside, and each ipBlock.
    let mut peers: Vec<(EntryKind, String, NodeKey, Vec<Family>)> =
        vec![(EntryKind::Outside, "outside".into(), NodeKey::Outside, mine.clone())];
    for (bi, b) in g.blocks.iter().enumerate() {
        if mine.contains(&b.family()) {
            peers.push((EntryKind::Ipblock, b.to_string(), NodeKey::Block(bi), vec![b.family()]));
        }
    }
    let own = [NodeKey::Workload(me), NodeKey::Namespace(wl.namespace.clone())];
    for (kind, id, key, families) in peers {
        let per: Vec<_> = families
            .into_iter()
            .map(|f| {
                let ports = if dir == Direction::Ingress {
                    g.ports_between(std::slice::from_ref(&key), &own, f)
                } else {
                    g.ports_between(&own, std::slice::from_ref(&key), f)
                };
                let ports = clip(ports);
                let peer = match key {
                    NodeKey::Block(bi) => Peer::Block(&g.blocks[bi]),
                    _ => Peer::Outside,
                };
                let side = sides.side(rep, dir, peer, f);
                let h = half(&side, &ports);
                let (e, i) = if dir == Direction::Ingress { (None, Some(h)) } else { (Some(h), None) };
                (f, ports, e, i)
            })
            .collect();
        for (families, ports, egress, ingress) in merge_families(per) {
            entries.push(Entry {
                kind,
                id: id.clone(),
                pods: None,
                families,
                ports,
                egress: egress.map(|h| half_out(cluster, &h)),
                ingress: ingress.map(|h| half_out(cluster, &h)),
                note: None,
            });
        }
    }

    // The pod's own node may always reach it.
    if dir == Direction::Ingress {
        if let Some(node) = cluster.pods[pod].node.as_ref().and_then(|n| cluster.nodes.get(n)) {
            let families: Vec<Family> = mine.iter().copied().filter(|&f| node.ip(f).is_some()).collect();
            let ports = clip(PortSet::all());
            if !families.is_empty() && !ports.is_empty() {
                entries.push(Entry {
                    kind: EntryKind::Node,
                    id: format!("node/{}", node.name),
                    pods: None,
                    families,
                    ports,
                    egress: None,
                    ingress: None,
                    note: Some("a node's own address may always reach the pods on that node"),
                });
            }
        }
    }
    entries.sort_by(|a, b| (a.kind, &a.id, &a.families).cmp(&(b.kind, &b.id, &b.families)));
    Some(Reach {
        query: if dir == Direction::Ingress { "who-can-reach" } else { "reach-from" },
        pod: cluster.pods[pod].key(),
        workload: wl.id.clone(),
        only: only.cloned(),
        entries,
    })
}

type PerFamily = Vec<(Family, PortSet, Option<Half>, Option<Half>)>;

/// Drop empty families; merge families with equal ports.
fn merge_families(per: PerFamily) -> Vec<(Vec<Family>, PortSet, Option<Half>, Option<Half>)> {
    let mut out: Vec<(Vec<Family>, PortSet, Option<Half>, Option<Half>)> = Vec::new();
    for (f, ports, e, i) in per {
        if ports.is_empty() {
            continue;
        }
        match out.iter_mut().find(|x| x.1 == ports) {
            Some(x) => {
                x.0.push(f);
                if let (Some(a), Some(b)) = (x.2.as_mut(), &e) {
                    a.merge(b);
                }
                if let (Some(a), Some(b)) = (x.3.as_mut(), &i) {
                    a.merge(b);
                }
            }
            None => out.push((vec![f], ports, e, i)),
        }
    }
    out
}

/// Replace the entries of every workload of a namespace (at least two,
/// the queried pod's workload not counted when the pod is its only one)
/// that have equal families, ports and openness by one `ns/*` entry.
fn collapse_namespaces(g: &AllowGraph, entries: Vec<Entry>, me: usize) -> Vec<Entry> {
    type Key = (String, Vec<Family>, PortSet, Option<bool>, Option<bool>);
    let mut groups: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
    let ns_of: BTreeMap<&str, &str> = g.workloads.list.iter().map(|w| (w.id.as_str(), w.namespace.as_str())).collect();
    for (i, e) in entries.iter().enumerate() {
        let ns = ns_of.get(e.id.as_str()).copied().unwrap_or_default().to_string();
        let key = (ns, e.families.clone(), e.ports.clone(), e.egress.as_ref().map(|h| h.open), e.ingress.as_ref().map(|h| h.open));
        groups.entry(key).or_default().push(i);
    }
    let mut gone = vec![false; entries.len()];
    let mut merged = Vec::new();
    for ((ns, families, ports, ..), members) in groups {
        let all = g.workloads.by_namespace.get(&ns).map(Vec::as_slice).unwrap_or_default();
        let alone = usize::from(all.contains(&me) && g.workloads.list[me].pods.len() == 1);
        let need = all.len() - alone;
        if need < 2 || members.len() != need {
            continue;
        }
        let mut e = entries[members[0]].clone();
        for &m in &members[1..] {
            let o = &entries[m];
            e.pods = Some(e.pods.unwrap_or(0) + o.pods.unwrap_or(0));
            for (a, b) in [(&mut e.egress, &o.egress), (&mut e.ingress, &o.ingress)] {
                if let (Some(a), Some(b)) = (a.as_mut(), b) {
                    a.merge(b);
                }
            }
        }
        for &m in &members {
            gone[m] = true;
        }
        e.kind = EntryKind::Namespace;
        e.id = format!("{ns}/*");
        e.families = families;
        e.ports = ports;
        merged.push(e);
    }
    entries.into_iter().zip(gone).filter(|(_, g)| !g).map(|(e, _)| e).chain(merged).collect()
}
