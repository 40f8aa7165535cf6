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
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{fmt_duration, Timing};
use std::cell::RefCell;
use std::collections::HashSet;

use crate::agent::conntrack::{cut, Enforced, Entry, Judge, NetlinkTable, Review, Scope, Table, Tuple, IPPROTO_TCP};
use crate::agent::nftables::affected;
use crate::model::Cluster;
use crate::netns::Netns;
use crate::nft::{self, Program};

const LOCAL_PODS: usize = 100;
const GROUPS: usize = 10;
const CLIENTS: usize = 200;
/// Long enough that nothing expires while measured.
const ENTRY_TIMEOUT_S: u32 = 3600;

/// Wall time and the CPU time of the measuring thread (user and system:
/// the kernel's side of a netlink dump runs in the thread that reads it),
/// which a busy machine inflates far less than wall time.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub wall: Timing,
    pub cpu: Timing,
}

/// User plus system time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_THREAD has no preconditions.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Run `f` `runs` times (at least once), each after an untimed
/// `prepare`; its cost and last result.
fn cost<T>(runs: usize, mut prepare: impl FnMut() -> anyhow::Result<()>, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(Cost, T)> {
    let (mut wall, mut cpu, mut last) = (Vec::new(), Vec::new(), None);
    for _ in 0..runs.max(1) {
        prepare()?;
        let (t, c) = (Instant::now(), thread_cpu());
        let out = f()?;
        wall.push(t.elapsed());
        cpu.push(thread_cpu().saturating_sub(c));
        last = Some(out);
    }
    let last = last.context("ran at least once")?;
    Ok((Cost { wall: Timing::of(wall), cpu: Timing::of(cpu) }, last))
}

/// What one table size measured.
#[derive(Debug, Clone)]
pub struct CutMeasure {
    pub entries: usize,
    /// Entries created per second over netlink (the fill, not the cut).
    pub insert_rate: f64,
    pub dump: Cost,
    /// The same dump, its entries counted, not decoded: the kernel's part.
    pub count: Cost,
    /// The program diff that picks the pods to review.
    pub affected: Cost,
    /// Entries the change's cut judged, and denied (= deleted).
    pub examined: u64,
    pub denied: u64,
    /// Dump, judge and delete after the change.
    pub change: Cost,
    /// Deleting the denied alone.
    pub delete: Cost,
    /// Dump, judge and delete on a first sync: every entry judged.
    pub first_sync: Cost,
    /// Judging every entry, without the table.
    pub judge_all: Cost,
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
    let table: NetlinkTable = ns.run(NetlinkTable::open)?.context("open the scratch namespace's conntrack table")?;
    let table = RefCell::new(table);
    let all = entries(n);
    let started = Instant::now();
    let made = table.borrow_mut().insert(&all, ENTRY_TIMEOUT_S)?;
    let insert_rate = n as f64 / started.elapsed().as_secs_f64();
    if made.deleted != n as u64 {
        anyhow::bail!("inserted {} of {n} entries ({:?})", made.deleted, made.first_error);
    }
    // The tenth the change denies: x/web-0, web-10, ... are group 0.
    let doomed: HashSet<Tuple> = all.iter().filter(|e| (0..LOCAL_PODS).step_by(GROUPS).any(|p| e.backend() == local_pod(p))).map(|e| e.orig).collect();
    // The doomed entries as the table holds them now (ids and all).
    let doomed_now = || -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        table.borrow_mut().dump(&mut |e| {
            if doomed.contains(&e.orig) {
                out.push(e)
            }
        })?;
        Ok(out)
    };
    // Put back what a cut took, untimed.
    let refill = || -> anyhow::Result<()> {
        let present: HashSet<Tuple> = doomed_now()?.into_iter().map(|e| e.orig).collect();
        let missing: Vec<Entry> = all.iter().copied().filter(|e| doomed.contains(&e.orig) && !present.contains(&e.orig)).collect();
        if !missing.is_empty() {
            table.borrow_mut().insert(&missing, ENTRY_TIMEOUT_S)?;
        }
        Ok(())
    };
    let nothing = || Ok(());
    let (dump, _) = cost(runs, nothing, || Ok(table.borrow_mut().dump(&mut |_| {})?))?;
    let (count, counted) = cost(runs, nothing, || Ok(table.borrow_mut().count()?))?;
    if counted != n as u64 {
        anyhow::bail!("the table holds {counted} entries, expected {n}");
    }
    let (affected_t, scope) = cost(runs, nothing, || Ok(affected(&old, &new)))?;
    let (table_ref, doomed_ref) = (&table, &doomed);
    let cut_with = |review: Review| {
        move || -> anyhow::Result<crate::agent::conntrack::CutReport> {
            let (table, doomed) = (table_ref, doomed_ref);
            let r = cut(&mut *table.borrow_mut(), now, &review)?;
            if r.deleted().deleted != doomed.len() as u64 {
                anyhow::bail!("cut {} entries, expected {}", r.deleted().deleted, doomed.len());
            }
            Ok(r)
        }
    };
    let (change, r) = cost(runs, refill, cut_with(Review { judge: scope, gone: Default::default() }))?;
    let (first_sync, _) = cost(runs, refill, cut_with(Review { judge: Scope::All, gone: Default::default() }))?;
    let batch = RefCell::new(Vec::new());
    let (delete, _) = cost(
        runs,
        || {
            refill()?;
            *batch.borrow_mut() = doomed_now()?;
            Ok(())
        },
        || {
            let d = table.borrow_mut().delete(&batch.borrow())?;
            if d.deleted != doomed.len() as u64 {
                anyhow::bail!("deleted {} of {} ({:?})", d.deleted, doomed.len(), d.first_error);
            }
            Ok(())
        },
    )?;
    refill()?;
    let mut dumped = Vec::with_capacity(n);
    table.borrow_mut().dump(&mut |e| dumped.push(e))?;
    let judge = Judge::new(now, &[]);
    let (judge_all, _) = cost(runs, nothing, || Ok(dumped.iter().filter(|e| !judge.allows(e)).count()))?;
    drop(table);
    drop(ns);
    Ok(CutMeasure {
        entries: n,
        insert_rate,
        dump,
        count,
        affected: affected_t,
        examined: r.examined,
        denied: r.denied,
        change,
        delete,
        first_sync,
        judge_all,
    })
}

/// A Markdown table, one row per size: medians, wall time and (in
/// brackets) the thread's CPU time.
pub fn render(ms: &[CutMeasure]) -> String {
    let mut out = String::from(
        "| entries | dump (of which the kernel) | diff (pods to review) | cut after the change (judged / cut) | of which deleting | first sync (all judged) | judging, per entry | fill rate |\n|---|---|---|---|---|---|---|---|\n",
    );
    for m in ms {
        // Pure computation: its least disturbed run (CPU time is counted in ticks).
        let per_entry = m.judge_all.wall.min.as_secs_f64() / m.entries.max(1) as f64;
        out.push_str(&format!(
            "| {} | {} ({}) | {} | {} ({} / {}) | {} | {} | {:.2} µs | {:.0}/s |\n",
            m.entries,
            show(m.dump),
            show(m.count),
            show(m.affected),
            show(m.change),
            m.examined,
            m.denied,
            show(m.delete),
            show(m.first_sync),
            per_entry * 1e6,
            m.insert_rate
        ));
    }
    out.push_str("\n(median of the runs, wall time [thread CPU time].)\n");
    out
}

fn show(c: Cost) -> String {
    format!("{} [{}]", fmt_duration(c.wall.median), fmt_duration(c.cpu.median))
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
        let j = Judge::new(now, &[]);
        let all = entries(1000);
        let denied = all.iter().filter(|e| !j.allows(e)).count();
        assert_eq!(denied, 100);
        let before_now = Enforced { cluster: &before, node: "node-1", program: &old };
        let j = Judge::new(before_now, &[]);
        assert!(all.iter().all(|e| j.allows(e)), "everything is allowed before the change");
    }
}
