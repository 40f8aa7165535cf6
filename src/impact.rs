//! What a policy change opens or closes.
//!
//! Compares two snapshots (before and after a change) flow by flow between
//! every pair of policy pods. Ports are not enumerated one by one: a verdict
//! can only change where some port range, port number or named port of
//! either snapshot starts or ends, so one representative per elementary
//! interval between those boundaries covers all 65535 ports exactly.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::eval::{evaluate, Endpoint, Flow};
use crate::ir::Ir;
use crate::model::{Cluster, Family, PortRef, Protocol};

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

/// Port intervals with a constant verdict in both snapshots, per protocol.
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
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    cuts.windows(2).map(|w| (w[0] as u16, (w[1] - 1) as u16)).collect()
}

/// Every flow between policy pods whose verdict differs between `before`
/// and `after`. Pods are matched by namespace/name; a pod present in only
/// one snapshot is skipped (its flows are new or gone, not changed).
pub fn impact(before: (&Cluster, &Ir), after: (&Cluster, &Ir)) -> Vec<Change> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nstatus: {podIP: 10.0.0.2}\n";

    fn snap(policies: &str) -> Cluster {
        crate::model::load::load_str("t.yaml", &format!("{PODS}---\n{policies}")).unwrap()
    }

    #[test]
    fn reports_ranges_that_close() {
        let before = snap("");
        let after = snap("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 90}]}]\n");
        let (ib, ia) = (crate::ir::resolve(&before), crate::ir::resolve(&after));
        let changes = impact((&before, &ib), (&after, &ia));
        let text = render_text(&changes);
        // TCP outside 80-90 closes; UDP and SCTP close entirely; both directions.
        assert!(text.contains("closes x/a -> x/b 1-79/TCP IPv4"), "{text}");
        assert!(text.contains("closes x/a -> x/b 91-65535/TCP IPv4"), "{text}");
        assert!(text.contains("closes x/b -> x/a 1-65535/UDP IPv4"), "{text}");
        assert!(!text.contains("80-90/TCP"), "{text}");
        assert!(text.ends_with("0 opened, 8 closed\n"), "{text}");
    }
}
