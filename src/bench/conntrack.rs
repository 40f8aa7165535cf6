//! The cost of cutting connections after a policy change (`--established
//! cut`): dump, judge and delete on a conntrack table of thousands to
//! hundreds of thousands of entries, in a scratch network namespace whose
//! table is filled over netlink.
//!
//! The node: 100 local pods in 10 groups, each group admitting 200 client
//! pods of another node on TCP 80 and 8080; every entry is a client's
//! connection to a local pod, one in four through a Service address
//! (DNATed to port 8080). The change: one group's policy stops admitting
//! anyone, so a tenth of the entries are denied. Measured: the dump alone;
//! the cut after the change (the program diff, the dump, judging the
//! affected pods' entries, deleting the denied); the cut of a first sync,
//! which judges every entry; and judging alone, per entry.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anyhow::Context;

use super::{fmt_duration, time, Timing};
use crate::agent::conntrack::{cut, Enforced, Entry, NetlinkTable, Review, Scope, Table, Tuple, IPPROTO_TCP};
use crate::agent::nftables::affected;
use crate::model::Cluster;
use crate::netns::Netns;
use crate::nft::{self, Program};

const LOCAL_PODS: usize = 100;
const GROUPS: usize = 10;
const CLIENTS: usize = 200;
/// Long enough that nothing expires while measured.
const ENTRY_TIMEOUT_S: u32 = 3600;

/// What one table size measured.
#[derive(Debug, Clone)]
pub struct CutMeasure {
    pub entries: usize,
    /// Entries created per second over netlink (the fill, not the cut).
    pub insert_rate: f64,
    pub dump: Timing,
    /// The program diff that picks the pods to review.
    pub affected: Timing,
    /// Entries the change's cut judged, and denied (= deleted).
    pub examined: u64,
    pub denied: u64,
    /// Dump, judge and delete after the change.
    pub change: Timing,
    /// The same on a first sync: every entry judged.
    pub first_sync: Timing,
    /// Judging every entry, without the table.
    pub judge_all: Timing,
}

/// The node's cluster: `deny_group0` is the change.
fn cluster(deny_group0: bool) -> anyhow::Result<Cluster> {
    let mut y = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.1.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-2}\nspec: {podCIDRs: [10.244.2.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.3}]}\n",
    );
    for i in 0..LOCAL_PODS {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, namespace: shop, labels: {{group: g{}}}}}\nspec: {{nodeName: node-1}}\nstatus: {{podIP: {}}}\n",
            i % GROUPS,
            local_pod(i)
        ));
    }
    for i in 0..CLIENTS {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client-{i}, namespace: shop, labels: {{role: client}}}}\nspec: {{nodeName: node-2}}\nstatus: {{podIP: {}}}\n",
            client(i)
        ));
    }
    for g in 0..GROUPS {
        let ingress = if deny_group0 && g == 0 {
            "[]".to_string()
        } else {
            "[{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 80}, {port: 8080}]}]".to_string()
        };
        y.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: g{g}, namespace: shop}}\nspec: {{podSelector: {{matchLabels: {{group: g{g}}}}}, ingress: {ingress}}}\n"
        ));
    }
    crate::model::load::load_str("bench-conntrack.yaml", &y).map_err(|e| anyhow::anyhow!("{e}"))
}

fn local_pod(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 1, 10 + i as u8))
}

fn client(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 2, 1 + i as u8))
}

/// `n` connections, spread over clients, local pods and source ports.
fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|k| {
            let (c, p) = (client(k % CLIENTS), k % LOCAL_PODS);
            let sport = 1024 + (k / CLIENTS) as u16;
            if k % 4 == 3 {
                let svc = IpAddr::V4(Ipv4Addr::new(10, 96, 0, p as u8));
                Entry::new(Tuple::ports(IPPROTO_TCP, c, sport, svc, 80)).dnat(local_pod(p), 8080)
            } else {
                Entry::new(Tuple::ports(IPPROTO_TCP, c, sport, local_pod(p), 80))
            }
        })
        .collect()
}

fn program(c: &Cluster) -> Program {
    nft::compile(c, &crate::ir::resolve(c), "node-1")
}

/// Measure one table size in a scratch network namespace.
pub fn measure(n: usize, runs: usize) -> anyhow::Result<CutMeasure> {
    if n > 120 * CLIENTS * 256 {
        anyhow::bail!("{n} entries do not fit the benchmark's port space");
    }
    let (before, after) = (cluster(false)?, cluster(true)?);
    let (old, new) = (program(&before), program(&after));
    let now = Enforced { cluster: &after, node: "node-1", program: &new };
    let ns = Netns::create("nfb")?;
    let mut table: NetlinkTable = ns.run(NetlinkTable::open)?.context("open the scratch namespace's conntrack table")?;
    let all = entries(n);
    let started = Instant::now();
    let made = table.insert(&all, ENTRY_TIMEOUT_S)?;
    let insert_rate = n as f64 / started.elapsed().as_secs_f64();
    if made.deleted != n as u64 {
        anyhow::bail!("inserted {} of {n} entries ({:?})", made.deleted, made.first_error);
    }
    let (dump, _) = time(runs, || table.dump(&mut |_| {}));
    let (affected_t, scope) = time(runs, || affected(&old, &new));
    let change_review = Review { judge: scope, gone: Default::default() };
    let denied_set: Vec<Entry> = all.iter().copied().filter(|e| (0..LOCAL_PODS).step_by(GROUPS).any(|p| e.backend() == local_pod(p))).collect();
    // Each run cuts the tenth; put it back between runs (not timed).
    let mut timed_cut = |review: &Review| -> anyhow::Result<(Timing, u64, u64)> {
        let mut stats = (0, 0);
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let r = cut(&mut table, now, review)?;
            samples.push(t.elapsed());
            stats = (r.examined, r.denied);
            if r.deleted().deleted != denied_set.len() as u64 {
                anyhow::bail!("cut {} entries, expected {}", r.deleted().deleted, denied_set.len());
            }
            table.insert(&denied_set, ENTRY_TIMEOUT_S)?;
        }
        Ok((Timing::of(samples), stats.0, stats.1))
    };
    let (change, examined, denied) = timed_cut(&change_review)?;
    let (first_sync, _, _) = timed_cut(&Review { judge: Scope::All, gone: Default::default() })?;
    let mut dumped = Vec::with_capacity(n);
    table.dump(&mut |e| dumped.push(e))?;
    let judge = crate::agent::conntrack::Judge::new(now, &[]);
    let (judge_all, _) = time(runs, || dumped.iter().filter(|e| !judge.allows(e)).count());
    drop(table);
    drop(ns);
    Ok(CutMeasure { entries: n, insert_rate, dump, affected: affected_t, examined, denied, change, first_sync, judge_all })
}

/// A Markdown table, one row per size.
pub fn render(ms: &[CutMeasure]) -> String {
    let mut out = String::from(
        "| entries | dump | diff (pods to review) | cut after the change: judged / cut, time | first sync: judge all, time | judging alone, per entry | fill rate |\n|---|---|---|---|---|---|---|\n",
    );
    for m in ms {
        let per_entry = m.judge_all.median.as_secs_f64() / m.entries.max(1) as f64;
        out.push_str(&format!(
            "| {} | {} | {} | {} / {}, {} | {} | {:.2} µs | {:.0}/s |\n",
            m.entries,
            show(m.dump),
            show(m.affected),
            m.examined,
            m.denied,
            show(m.change),
            show(m.first_sync),
            per_entry * 1e6,
            m.insert_rate
        ));
    }
    out.push_str("\n(min / median of the runs.)\n");
    out
}

fn show(t: Timing) -> String {
    format!("{} / {}", fmt_duration(t.min), fmt_duration(t.median))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_denies_one_group_in_ten() {
        let (before, after) = (cluster(false).unwrap(), cluster(true).unwrap());
        let (old, new) = (program(&before), program(&after));
        let Scope::Addrs(pods) = affected(&old, &new) else { panic!("the change affects everything") };
        let group0: std::collections::BTreeSet<IpAddr> = (0..LOCAL_PODS).step_by(GROUPS).map(local_pod).collect();
        assert_eq!(pods, group0);
        let now = Enforced { cluster: &after, node: "node-1", program: &new };
        let j = crate::agent::conntrack::Judge::new(now, &[]);
        let all = entries(1000);
        let denied = all.iter().filter(|e| !j.allows(e)).count();
        assert_eq!(denied, 100);
        let before_now = Enforced { cluster: &before, node: "node-1", program: &old };
        let j = crate::agent::conntrack::Judge::new(before_now, &[]);
        assert!(all.iter().all(|e| j.allows(e)), "everything is allowed before the change");
    }
}
