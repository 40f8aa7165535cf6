//! What a policy change opens or closes, for people and for reviews.
//!
//! Compares two snapshots (before and after a change) pod pair by pod
//! pair, exactly over all ports, protocols and families, without visiting
//! 10k² pairs one by one. Pods present in both snapshots are grouped by
//! (workload after, policy signature before) ([`crate::graph::workload`]),
//! so each group's pods are interchangeable in both snapshots; only pairs
//! of groups that some isolating or cluster-policy rule decides (in either
//! snapshot), or one of whose sides changes isolation, are compared, since
//! every other pair allows everything or nothing in both. A pair's allowed
//! ports come from [`crate::graph::sides`] as exact port sets, every
//! cluster-policy tier included (so a ClusterNetworkPolicy, ANP or BANP
//! change shows as the flows it opens and closes); [`impact_by_eval`], the
//! original definition (one representative per port interval, judged by
//! `eval`), is kept as the oracle the tests compare against.
//!
//! The review report adds pods whose isolation changes and policies the
//! change makes redundant ([`crate::graph::redundant`]), and groups flows
//! by workload pairs (then namespace pairs) with counts, so a change that
//! touches 10k pods stays one screen.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use crate::eval::{evaluate, Endpoint, Flow};
use crate::graph::redundant::Redundancy;
use crate::graph::sides::{candidates, Groups, Sides};
use crate::graph::workload::{self, Signature};
use crate::graph::PortSet;
use crate::ir::Ir;
use crate::model::cluster_policy::ClusterPort;
use crate::model::{Cluster, Direction, Family, PodId, PortRef, Protocol};

/// One changed flow between two pods: the text output's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub from: String,
    pub to: String,
    pub protocol: Protocol,
    /// Inclusive port range.
    pub ports: (u16, u16),
    pub family: Family,
    /// The verdict after the change: true means the change opens the flow.
    pub opens: bool,
}

/// Pods that are alike in both snapshots.
#[derive(Debug, Clone)]
pub struct Group {
    /// The workload (of the after snapshot) the pods belong to.
    pub workload: String,
    pub namespace: String,
    /// The same pods, by index in each snapshot.
    pub before: Vec<PodId>,
    pub after: Vec<PodId>,
}

/// What changes from any pod of one group to any other pod of another, in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    pub from: usize,
    pub to: usize,
    pub family: Family,
    pub opened: PortSet,
    pub closed: PortSet,
}

/// Pods of one workload whose isolation in one direction changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IsolationChange {
    pub workload: String,
    pub direction: Direction,
    pub pods: usize,
    /// Isolated after the change (true: newly isolated; false: no longer).
    pub isolated: bool,
}

/// A policy the change makes redundant (see [`crate::graph::redundant`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedundantPolicy {
    pub policy: String,
    pub source: String,
    /// The policy is new in this change (redundant on arrival).
    pub new: bool,
}

#[derive(Debug, Clone)]
pub struct Impact {
    pub groups: Vec<Group>,
    pub changes: Vec<GroupChange>,
    pub isolation: Vec<IsolationChange>,
    pub redundant: Vec<RedundantPolicy>,
}

impl Impact {
    /// Ordered pairs of distinct pods from group `a` to group `b`.
    pub fn pod_pairs(&self, a: usize, b: usize) -> usize {
        let (na, nb) = (self.groups[a].after.len(), self.groups[b].after.len());
        if a == b {
            na * (na - 1)
        } else {
            na * nb
        }
    }
}

const E: usize = 0;
const I: usize = 1;

/// Compare `before` and `after`. Pods are matched by namespace/name; a pod
/// in only one snapshot is left out (its flows are new or gone, not changed).
pub fn impact(before: (&Cluster, &Ir), after: (&Cluster, &Ir)) -> Impact {
    let (cb, ib) = before;
    let (ca, ia) = after;
    let sig_b = workload::signatures(cb, ib);
    let wl_a = workload::group(ca, ia);
    let mut keyed: HashMap<(usize, &Signature), usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut of_b = vec![None; cb.pods.len()];
    let mut of_a = vec![None; ca.pods.len()];
    for (pa, pod) in ca.pods.iter().enumerate() {
        let Some(w) = wl_a.of_pod[pa] else { continue };
        let Some(pb) = cb.pod(&pod.namespace, &pod.name) else { continue };
        let Some(sb) = &sig_b[pb] else { continue };
        let g = *keyed.entry((w, sb)).or_insert_with(|| {
            let wl = &wl_a.list[w];
            groups.push(Group { workload: wl.id.clone(), namespace: wl.namespace.clone(), before: vec![], after: vec![] });
            groups.len() - 1
        });
        groups[g].before.push(pb);
        groups[g].after.push(pa);
        of_b[pb] = Some(g);
        of_a[pa] = Some(g);
    }
    let reps_b: Vec<PodId> = groups.iter().map(|g| g.before[0]).collect();
    let reps_a: Vec<PodId> = groups.iter().map(|g| g.after[0]).collect();
    let (sb, sa) = (Sides::new(cb, ib), Sides::new(ca, ia));
    let iso = |s: &Sides<'_>, rep: PodId| [s.isolated(rep, Direction::Egress), s.isolated(rep, Direction::Ingress)];
    let iso_b: Vec<[bool; 2]> = reps_b.iter().map(|&r| iso(&sb, r)).collect();
    let iso_a: Vec<[bool; 2]> = reps_a.iter().map(|&r| iso(&sa, r)).collect();

    let mut pairs = candidates(&sb, &Groups { reps: &reps_b, of_pod: &of_b });
    pairs.extend(candidates(&sa, &Groups { reps: &reps_a, of_pod: &of_a }));
    let n = groups.len();
    for g in 0..n {
        if iso_b[g][E] != iso_a[g][E] {
            pairs.extend((0..n).map(|h| (g, h)));
        }
        if iso_b[g][I] != iso_a[g][I] {
            pairs.extend((0..n).map(|h| (h, g)));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();

    let families = |c: &Cluster, p: PodId| [Family::IPv4, Family::IPv6].map(|f| c.pods[p].ip(f).is_some());
    let mut changes = Vec::new();
    for (a, b) in pairs {
        if a == b && groups[a].after.len() == 1 {
            continue;
        }
        for (i, family) in [Family::IPv4, Family::IPv6].into_iter().enumerate() {
            let present = [families(cb, reps_b[a]), families(cb, reps_b[b]), families(ca, reps_a[a]), families(ca, reps_a[b])];
            if !present.iter().all(|f| f[i]) {
                continue;
            }
            let was = sb.pair_ports(reps_b[a], reps_b[b], family);
            let now = sa.pair_ports(reps_a[a], reps_a[b], family);
            if was != now {
                changes.push(GroupChange { from: a, to: b, family, opened: now.minus(&was), closed: was.minus(&now) });
            }
        }
    }

    let mut isolation: BTreeMap<(String, Direction, bool), usize> = BTreeMap::new();
    for g in 0..n {
        for (side, dir) in [(E, Direction::Egress), (I, Direction::Ingress)] {
            if iso_b[g][side] != iso_a[g][side] {
                *isolation.entry((groups[g].workload.clone(), dir, iso_a[g][side])).or_default() += groups[g].after.len();
            }
        }
    }
    let isolation = isolation
        .into_iter()
        .map(|((workload, direction, isolated), pods)| IsolationChange { workload, direction, pods, isolated })
        .collect();

    let (red_b, red_a) = (Redundancy::new(cb, ib), Redundancy::new(ca, ia));
    let mut redundant = Vec::new();
    for (p, pol) in ca.policies.iter().enumerate() {
        if !red_a.is_redundant(p) {
            continue;
        }
        let earlier = cb.policies.binary_search_by(|q| (q.namespace.as_str(), q.name.as_str()).cmp(&(&pol.namespace, &pol.name))).ok();
        match earlier {
            Some(q) if red_b.is_redundant(q) => {}
            _ => redundant.push(RedundantPolicy { policy: pol.key(), source: pol.origin.to_string(), new: earlier.is_none() }),
        }
    }
    Impact { groups, changes, isolation, redundant }
}

/// Every changed flow between two pods, port ranges merged, in the order
/// the text output prints: openings first, then by pods, protocol, ports, family.
pub fn pod_changes(impact: &Impact, after: &Cluster) -> Vec<Change> {
    let mut out = Vec::new();
    for ch in &impact.changes {
        let (ga, gb) = (&impact.groups[ch.from], &impact.groups[ch.to]);
        for &s in &ga.after {
            for &d in gb.after.iter().filter(|&&d| d != s) {
                for (set, opens) in [(&ch.opened, true), (&ch.closed, false)] {
                    for (protocol, first, last) in set.iter() {
                        out.push(Change {
                            from: after.pods[s].key(),
                            to: after.pods[d].key(),
                            protocol,
                            ports: (first, last),
                            family: ch.family,
                            opens,
                        });
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| (!a.opens, &a.from, &a.to, a.protocol, a.ports, a.family).cmp(&(!b.opens, &b.from, &b.to, b.protocol, b.ports, b.family)));
    out
}

/// Port intervals with a constant verdict in both snapshots, per protocol
/// (cut at every port number and range of NetworkPolicies and cluster
/// policies, and at every container port, which named ports resolve to).
fn intervals(snaps: &[&Cluster], protocol: Protocol) -> Vec<(u16, u16)> {
    let mut cuts: BTreeSet<u32> = [1, 65536].into();
    for c in snaps {
        for pod in &c.pods {
            for p in pod.ports.iter().filter(|p| p.protocol == protocol) {
                cuts.insert(p.port as u32);
                cuts.insert(p.port as u32 + 1);
            }
        }
        for pol in &c.policies {
            for rule in pol.ingress.iter().chain(&pol.egress) {
                for p in rule.ports.iter().filter(|p| p.protocol == protocol) {
                    if let Some(PortRef::Number(n)) = p.port {
                        cuts.insert(n as u32);
                        cuts.insert(p.end_port.unwrap_or(n) as u32 + 1);
                    }
                }
            }
        }
        for pol in &c.cluster_policies {
            for rule in pol.ingress.iter().chain(&pol.egress) {
                for p in &rule.ports {
                    if let ClusterPort::Range { protocol: pr, start, end } = *p {
                        if pr == protocol {
                            cuts.insert(start as u32);
                            cuts.insert(end as u32 + 1);
                        }
                    }
                }
            }
        }
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    cuts.windows(2).map(|w| (w[0] as u16, (w[1] - 1) as u16)).collect()
}

/// [`pod_changes`] by definition: every pair of pods, every port interval
/// with a constant verdict (between the boundaries of every port range,
/// port number and named port of either snapshot), judged by `eval`. Slow
/// (minutes at 1k pods); the oracle for tests.
pub fn impact_by_eval(before: (&Cluster, &Ir), after: (&Cluster, &Ir)) -> Vec<Change> {
    let (cb, ib) = before;
    let (ca, ia) = after;
    let mut out = Vec::new();
    let pods: Vec<(usize, usize)> = ca
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_policy_pod())
        .filter_map(|(ai, p)| cb.pod(&p.namespace, &p.name).filter(|&bi| cb.pods[bi].is_policy_pod()).map(|bi| (bi, ai)))
        .collect();
    for protocol in Protocol::ALL {
        let ivs = intervals(&[cb, ca], protocol);
        for &(sb, sa) in &pods {
            for &(db, da) in &pods {
                if sa == da {
                    continue;
                }
                for family in [Family::IPv4, Family::IPv6] {
                    let judge = |c: &Cluster, ir: &Ir, s, d, port| {
                        let flow = Flow { src: Endpoint::Pod(s), dst: Endpoint::Pod(d), protocol, port, family: Some(family) };
                        evaluate(c, ir, &flow).ok().map(|v| v.allowed)
                    };
                    let mut run: Option<Change> = None;
                    for &(lo, hi) in &ivs {
                        let (Some(b), Some(a)) = (judge(cb, ib, sb, db, lo), judge(ca, ia, sa, da, lo)) else { break };
                        match (&mut run, a != b) {
                            (Some(r), true) if r.opens == a && r.ports.1 + 1 == lo => r.ports.1 = hi,
                            (_, true) => {
                                out.extend(run.take());
                                run = Some(Change {
                                    from: ca.pods[sa].key(),
                                    to: ca.pods[da].key(),
                                    protocol,
                                    ports: (lo, hi),
                                    family,
                                    opens: a,
                                });
                            }
                            (_, false) => out.extend(run.take()),
                        }
                    }
                    out.extend(run);
                }
            }
        }
    }
    out.sort_by(|a, b| (!a.opens, &a.from, &a.to, a.protocol, a.ports, a.family).cmp(&(!b.opens, &b.from, &b.to, b.protocol, b.ports, b.family)));
    out
}

/// The text output: one line per pod pair, protocol and port range.
pub fn render_text(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no flow between pods changes verdict\n".into();
    }
    let mut out = String::new();
    for c in changes {
        let ports = if c.ports.0 == c.ports.1 { c.ports.0.to_string() } else { format!("{}-{}", c.ports.0, c.ports.1) };
        let what = if c.opens { "opens " } else { "closes" };
        out.push_str(&format!("{what} {} -> {} {ports}/{} {}\n", c.from, c.to, c.protocol, c.family));
    }
    let opened = changes.iter().filter(|c| c.opens).count();
    out.push_str(&format!("{opened} opened, {} closed\n", changes.len() - opened));
    out
}

/// Flows between two workloads that open (or close) on the same ports.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub from: String,
    pub to: String,
    pub families: Vec<Family>,
    pub ports: PortSet,
    /// Ordered pairs of distinct pods concerned.
    pub pod_pairs: usize,
    #[serde(skip)]
    from_namespace: String,
    #[serde(skip)]
    to_namespace: String,
    /// The group pairs behind the row, with their pod pairs.
    #[serde(skip)]
    groups: BTreeMap<(usize, usize), usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Pairs of pods with some flow opened (closed).
    pub opened_pod_pairs: usize,
    pub closed_pod_pairs: usize,
    /// Rows of `opened` (`closed`): workload pairs and port sets.
    pub opened_rows: usize,
    pub closed_rows: usize,
    pub newly_isolated_pods: usize,
    pub no_longer_isolated_pods: usize,
    pub redundant_policies: usize,
}

/// The review report: `diff --format json` (README documents it) and the
/// source of `--format markdown`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub opened: Vec<FlowRow>,
    pub closed: Vec<FlowRow>,
    pub isolation: Vec<IsolationChange>,
    pub redundant: Vec<RedundantPolicy>,
}

pub fn report(impact: &Impact) -> Report {
    let rows = |opens: bool| -> Vec<FlowRow> {
        let mut by: BTreeMap<(&str, &str, &PortSet), FlowRow> = BTreeMap::new();
        for ch in &impact.changes {
            let ports = if opens { &ch.opened } else { &ch.closed };
            if ports.is_empty() {
                continue;
            }
            let (ga, gb) = (&impact.groups[ch.from], &impact.groups[ch.to]);
            let row = by.entry((&ga.workload, &gb.workload, ports)).or_insert_with(|| FlowRow {
                from: ga.workload.clone(),
                to: gb.workload.clone(),
                families: vec![],
                ports: ports.clone(),
                pod_pairs: 0,
                from_namespace: ga.namespace.clone(),
                to_namespace: gb.namespace.clone(),
                groups: BTreeMap::new(),
            });
            if !row.families.contains(&ch.family) {
                row.families.push(ch.family);
                row.families.sort();
            }
            row.groups.insert((ch.from, ch.to), impact.pod_pairs(ch.from, ch.to));
        }
        let mut rows: Vec<FlowRow> = by.into_values().collect();
        for r in &mut rows {
            r.pod_pairs = r.groups.values().sum();
        }
        rows.sort_by(|a, b| (std::cmp::Reverse(a.pod_pairs), &a.from, &a.to).cmp(&(std::cmp::Reverse(b.pod_pairs), &b.from, &b.to)));
        rows
    };
    let (opened, closed) = (rows(true), rows(false));
    let pod_pairs = |rows: &[FlowRow]| {
        let all: BTreeMap<(usize, usize), usize> = rows.iter().flat_map(|r| r.groups.iter().map(|(&g, &n)| (g, n))).collect();
        all.values().sum()
    };
    let iso = |now: bool| impact.isolation.iter().filter(|c| c.isolated == now).map(|c| c.pods).sum();
    let summary = Summary {
        opened_pod_pairs: pod_pairs(&opened),
        closed_pod_pairs: pod_pairs(&closed),
        opened_rows: opened.len(),
        closed_rows: closed.len(),
        newly_isolated_pods: iso(true),
        no_longer_isolated_pods: iso(false),
        redundant_policies: impact.redundant.len(),
    };
    Report { summary, opened, closed, isolation: impact.isolation.clone(), redundant: impact.redundant.clone() }
}

/// Rows shown before "and N more".
const ROWS: usize = 10;
/// Rows inside a collapsed details block.
const DETAIL_ROWS: usize = 50;

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn families_text(f: &[Family]) -> String {
    f.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// Markdown for a pull-request comment: a summary line, then one short
/// section per kind of change; long lists are grouped by namespace pair
/// and capped with "and N more" (the workload rows in a collapsed block).
pub fn render_markdown(r: &Report) -> String {
    let s = &r.summary;
    let mut out = String::from("**netfence diff**: ");
    if s.opened_pod_pairs + s.closed_pod_pairs == 0 {
        out.push_str("no flow between pods changes verdict");
    } else {
        let _ = write!(
            out,
            "opens flows for {} and closes flows for {}",
            plural(s.opened_pod_pairs, "pod pair", "pod pairs"),
            plural(s.closed_pod_pairs, "pod pair", "pod pairs")
        );
    }
    let _ = writeln!(
        out,
        "; {} newly isolated, {} no longer isolated; {} made redundant.",
        plural(s.newly_isolated_pods, "pod", "pods"),
        thousands(s.no_longer_isolated_pods),
        plural(s.redundant_policies, "policy", "policies")
    );
    for (title, rows, pairs) in [("Flows closed", &r.closed, s.closed_pod_pairs), ("Flows opened", &r.opened, s.opened_pod_pairs)] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n#### {title}: {} in {}\n", plural(pairs, "pod pair", "pod pairs"), plural(rows.len(), "workload pair", "workload pairs"));
        if rows.len() <= ROWS {
            out.push_str(&workload_table(rows, ROWS));
        } else {
            out.push_str(&namespace_table(rows));
            let _ = writeln!(out, "\n<details><summary>Workload pairs</summary>\n");
            out.push_str(&workload_table(rows, DETAIL_ROWS));
            out.push_str("\n</details>\n");
        }
    }
    if !r.isolation.is_empty() {
        let pods: usize = r.isolation.iter().map(|c| c.pods).sum();
        let _ = writeln!(out, "\n#### Isolation changes: {}\n", plural(pods, "pod", "pods"));
        out.push_str("| workload | direction | pods | after the change |\n|---|---|---|---|\n");
        for c in r.isolation.iter().take(ROWS) {
            let now = if c.isolated { "newly isolated" } else { "no longer isolated" };
            let _ = writeln!(out, "| `{}` | {} | {} | {now} |", c.workload, c.direction, thousands(c.pods));
        }
        more(&mut out, r.isolation.len(), ROWS, 4);
    }
    if !r.redundant.is_empty() {
        out.push_str("\n#### Policies made redundant\n\nRemoving any one of these alone would change no verdict after this change.\n\n");
        for p in r.redundant.iter().take(ROWS) {
            let new = if p.new { ", added by this change" } else { "" };
            let _ = writeln!(out, "- `{}` ({}{new})", p.policy, p.source);
        }
        if r.redundant.len() > ROWS {
            let _ = writeln!(out, "- and {} more", thousands(r.redundant.len() - ROWS));
        }
    }
    out
}

fn more(out: &mut String, total: usize, shown: usize, columns: usize) {
    if total > shown {
        let _ = writeln!(out, "| and {} more |{}", thousands(total - shown), " |".repeat(columns - 1));
    }
}

fn workload_table(rows: &[FlowRow], cap: usize) -> String {
    let mut out = String::from("| from | to | ports | families | pod pairs |\n|---|---|---|---|---|\n");
    for r in rows.iter().take(cap) {
        let _ = writeln!(out, "| `{}` | `{}` | {} | {} | {} |", r.from, r.to, r.ports, families_text(&r.families), thousands(r.pod_pairs));
    }
    more(&mut out, rows.len(), cap, 5);
    out
}

fn namespace_table(rows: &[FlowRow]) -> String {
    #[derive(Default)]
    struct Ns {
        workload_pairs: usize,
        groups: BTreeMap<(usize, usize), usize>,
        ports: PortSet,
        families: BTreeSet<Family>,
    }
    let mut by: BTreeMap<(&str, &str), Ns> = BTreeMap::new();
    for r in rows {
        let e = by.entry((&r.from_namespace, &r.to_namespace)).or_default();
        e.workload_pairs += 1;
        e.groups.extend(r.groups.iter().map(|(&g, &n)| (g, n)));
        e.ports.union_with(&r.ports);
        e.families.extend(r.families.iter().copied());
    }
    let mut list: Vec<((&str, &str), Ns, usize)> = by
        .into_iter()
        .map(|(k, ns)| {
            let pairs = ns.groups.values().sum();
            (k, ns, pairs)
        })
        .collect();
    list.sort_by(|a, b| (std::cmp::Reverse(a.2), a.0).cmp(&(std::cmp::Reverse(b.2), b.0)));
    let mut out = String::from("| from namespace | to namespace | workload pairs | pod pairs | ports | families |\n|---|---|---|---|---|---|\n");
    for ((from, to), ns, pairs) in list.iter().take(ROWS) {
        let fams: Vec<Family> = ns.families.iter().copied().collect();
        let _ = writeln!(
            out,
            "| `{from}` | `{to}` | {} | {} | {} | {} |",
            thousands(ns.workload_pairs),
            thousands(*pairs),
            ns.ports,
            families_text(&fams)
        );
    }
    more(&mut out, list.len(), ROWS, 6);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nstatus: {podIP: 10.0.0.2}\n";

    fn snap(pods: &str, policies: &str) -> Cluster {
        crate::model::load::load_str("t.yaml", &format!("{pods}---\n{policies}")).unwrap()
    }

    fn run(before: &Cluster, after: &Cluster) -> (Impact, Vec<Change>) {
        let (ib, ia) = (crate::ir::resolve(before), crate::ir::resolve(after));
        let i = impact((before, &ib), (after, &ia));
        let changes = pod_changes(&i, after);
        assert_eq!(changes, impact_by_eval((before, &ib), (after, &ia)), "against the definition");
        (i, changes)
    }

    const RANGE: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 90}]}]\n";

    #[test]
    fn reports_ranges_that_close() {
        let (_, changes) = run(&snap(PODS, ""), &snap(PODS, RANGE));
        let text = render_text(&changes);
        // TCP outside 80-90 closes; UDP and SCTP close entirely; both directions.
        assert!(text.contains("closes x/a -> x/b 1-79/TCP IPv4"), "{text}");
        assert!(text.contains("closes x/a -> x/b 91-65535/TCP IPv4"), "{text}");
        assert!(text.contains("closes x/b -> x/a 1-65535/UDP IPv4"), "{text}");
        assert!(!text.contains("80-90/TCP"), "{text}");
        assert!(text.ends_with("0 opened, 8 closed\n"), "{text}");
    }

    fn deployment(n: usize, ns: &str, app: &str, net: u8) -> String {
        (0..n)
            .map(|i| {
                format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-h-{i:05}, namespace: {ns}, labels: {{app: {app}, pod-template-hash: h}}}}\nstatus: {{podIP: 10.0.{net}.{}}}\n---\n", i + 1)
            })
            .collect()
    }

    #[test]
    fn the_review_groups_by_workload_and_namespace() {
        let pods = deployment(30, "shop", "web", 0) + &deployment(20, "shop", "db", 1) + &deployment(3, "ops", "backup", 2);
        let deny_db = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]\n";
        let (i, _) = run(&snap(&pods, ""), &snap(&pods, deny_db));
        let r = report(&i);
        let md = render_markdown(&r);
        let want = "\
**netfence diff**: opens flows for 0 pod pairs and closes flows for 1,040 pod pairs; 20 pods newly isolated, 0 no longer isolated; 0 policies made redundant.

#### Flows closed: 1,040 pod pairs in 3 workload pairs

| from | to | ports | families | pod pairs |
|---|---|---|---|---|
| `shop/web` | `shop/db` | 1-5431/TCP, 5433-65535/TCP, any/UDP, any/SCTP | IPv4 | 600 |
| `shop/db` | `shop/db` | any | IPv4 | 380 |
| `ops/backup` | `shop/db` | any | IPv4 | 60 |

#### Isolation changes: 20 pods

| workload | direction | pods | after the change |
|---|---|---|---|
| `shop/db` | ingress | 20 | newly isolated |
";
        assert_eq!(md, want);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["summary"]["closed_pod_pairs"], 1040);
        assert_eq!(json["closed"][2], serde_json::json!({"from": "ops/backup", "to": "shop/db", "families": ["IPv4"], "ports": [
            {"protocol": "TCP", "first": 1, "last": 65535}, {"protocol": "UDP", "first": 1, "last": 65535}, {"protocol": "SCTP", "first": 1, "last": 65535}], "pod_pairs": 60}));
    }

    #[test]
    fn many_workload_pairs_fold_into_namespace_pairs() {
        let mut pods = String::new();
        for n in 0..12 {
            pods += &deployment(2, &format!("team-{n:02}"), "api", n as u8);
        }
        let deny_all = (0..12)
            .map(|n| format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: team-{n:02}}}\nspec: {{podSelector: {{}}, policyTypes: [Egress]}}\n---\n"))
            .collect::<String>();
        let (b, a) = (snap(&pods, ""), snap(&pods, &deny_all));
        let (ib, ia) = (crate::ir::resolve(&b), crate::ir::resolve(&a));
        let r = report(&impact((&b, &ib), (&a, &ia)));
        let md = render_markdown(&r);
        assert!(md.starts_with("**netfence diff**: opens flows for 0 pod pairs and closes flows for 552 pod pairs; 24 pods newly isolated, 0 no longer isolated"), "{md}");
        assert!(md.contains("#### Flows closed: 552 pod pairs in 144 workload pairs\n\n| from namespace | to namespace |"), "{md}");
        assert!(md.contains("| and 134 more | | | | | |\n"), "{md}");
        assert!(md.contains("<details><summary>Workload pairs</summary>"), "{md}");
        assert!(md.contains("| and 94 more | | | | |\n"), "{md}");
        assert!(md.contains("| `team-00/api` | egress | 2 | newly isolated |"), "{md}");
        assert!(md.contains("| and 2 more | | | |\n"), "{md}");
        assert!(md.lines().count() < 110, "{md}");
    }

    const TENANTS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {ns: y}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {pod: a}}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {pod: b}}\nstatus: {podIP: 10.0.0.2}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: y, labels: {pod: c}}\nstatus: {podIP: 10.0.0.3}\n";

    fn cnp(name: &str, tier: &str, ingress: &str) -> String {
        format!("---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: 10\n  subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\n  ingress: {ingress}\n")
    }

    const FROM_Y_80: &str = "from: [{namespaces: {matchLabels: {ns: y}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]";

    /// A cluster policy added, changed or removed: its opened and closed
    /// flows, checked against eval by `run`.
    #[test]
    fn cluster_policy_changes_open_and_close_flows() {
        let deny = cnp("guard", "Admin", &format!("[{{action: Deny, {FROM_Y_80}}}]"));
        let (_, changes) = run(&snap(TENANTS, ""), &snap(TENANTS, &deny));
        assert_eq!(render_text(&changes), "closes y/c -> x/a 80/TCP IPv4\ncloses y/c -> x/b 80/TCP IPv4\n0 opened, 2 closed\n");
        // Removed: the same flows open again.
        let (_, changes) = run(&snap(TENANTS, &deny), &snap(TENANTS, ""));
        assert_eq!(render_text(&changes), "opens  y/c -> x/a 80/TCP IPv4\nopens  y/c -> x/b 80/TCP IPv4\n2 opened, 0 closed\n");
        // Changed from Deny to Accept under a NetworkPolicy default deny:
        // Accept admits what the NetworkPolicies deny, for y only.
        let np_deny = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
        let accept = cnp("guard", "Admin", &format!("[{{action: Accept, {FROM_Y_80}}}]"));
        let (i, changes) = run(&snap(TENANTS, &format!("{np_deny}{deny}")), &snap(TENANTS, &format!("{np_deny}{accept}")));
        assert_eq!(render_text(&changes), "opens  y/c -> x/a 80/TCP IPv4\nopens  y/c -> x/b 80/TCP IPv4\n2 opened, 0 closed\n");
        assert!(i.isolation.is_empty(), "cluster policies never isolate");
        // Baseline Deny of everything from y: decides only where no
        // NetworkPolicy isolates (x/a's does, admitting y on 443).
        let np_a = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 443}]}]}\n";
        let baseline = cnp("tenants", "Baseline", "[{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]");
        let (_, changes) = run(&snap(TENANTS, np_a), &snap(TENANTS, &format!("{np_a}{baseline}")));
        assert_eq!(
            render_text(&changes),
            "closes y/c -> x/b 1-65535/TCP IPv4\ncloses y/c -> x/b 1-65535/UDP IPv4\ncloses y/c -> x/b 1-65535/SCTP IPv4\n0 opened, 3 closed\n"
        );
        // Admin Pass hands the port on: to the Baseline Deny, here.
        let pass = cnp("guard", "Admin", &format!("[{{action: Pass, {FROM_Y_80}}}, {{action: Accept, from: [{{namespaces: {{}}}}]}}]"));
        let (_, changes) = run(&snap(TENANTS, &baseline), &snap(TENANTS, &format!("{baseline}{pass}")));
        // Accept opens every port from y but 80/TCP (passed on, still denied) to x/a and x/b.
        let text = render_text(&changes);
        assert!(text.contains("opens  y/c -> x/a 1-79/TCP IPv4\nopens  y/c -> x/a 81-65535/TCP IPv4\n"), "{text}");
        assert!(text.ends_with("8 opened, 0 closed\n"), "{text}");
    }

    #[test]
    fn policies_made_redundant_are_named() {
        let allow_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}\n---\n";
        let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n---\n";
        let same_again = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-too, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}\n---\n";
        // Adding an identical allow makes the old one redundant (and the new one is redundant on arrival).
        let (i, _) = run(&snap(PODS, &format!("{deny}{allow_all}")), &snap(PODS, &format!("{deny}{allow_all}{same_again}")));
        let names: Vec<(&str, bool)> = i.redundant.iter().map(|p| (p.policy.as_str(), p.new)).collect();
        assert_eq!(names, [("x/allow", false), ("x/allow-too", true)]);
        assert!(i.changes.is_empty());
        // Already redundant before: not "made" redundant.
        let (i, _) = run(&snap(PODS, &format!("{deny}{allow_all}{same_again}")), &snap(PODS, &format!("{deny}{allow_all}{same_again}")));
        assert!(i.redundant.is_empty());
    }
}
