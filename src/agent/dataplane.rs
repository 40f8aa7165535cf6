//! What the agent drives: the node's packet filter behind one call.
//!
//! [`Dataplane`] hides compile, diff and apply, so the agent is complete and
//! tested without nftables. Two implementations live here — [`DryRun`]
//! (logs, touches nothing) and [`FakeDataplane`] (in memory, for tests) —
//! and the nftables one lives with `nft`/`apply` and is plugged in by the CLI.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::conntrack::Scope;
use super::index::Change;
use crate::model::Cluster;
use crate::nft::Program;

/// What one successful sync did and what the ruleset now holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Operations in the transaction (a full apply counts everything it loads).
    pub ops: usize,
    /// Of those, set element additions and deletions.
    pub element_ops: usize,
    /// Size of the ruleset now applied.
    pub rules: usize,
    pub sets: usize,
    pub elements: usize,
    /// The program now in force and the one it replaced, for cutting the
    /// connections it denies ([`super::conntrack`]); `None` from a
    /// dataplane that enforces nothing.
    pub changes: Option<Changes>,
}

/// What an applied sync changed on the node: the program now in force
/// (shared, not copied: the dataplane keeps it as its committed state)
/// and the local addresses whose verdicts may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub node: String,
    /// `All` when this process does not know what the kernel held before
    /// (its first sync adopts whatever an earlier run left).
    pub scope: Scope,
    pub new: Arc<Program>,
}

/// Why a sync did not happen. Either way nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot compile the ruleset: {0:#}")]
    Compile(anyhow::Error),
    #[error("the kernel rejected the transaction: {0:#}")]
    Apply(anyhow::Error),
}

/// The node's packet filter as the agent sees it: compile, diff and apply
/// behind one call, so the agent is complete and tested without nftables.
///
/// Contract (what the reconcile loop relies on):
/// - atomic: on `Err` the kernel still holds exactly the last good ruleset;
/// - `full`: replace our table as a whole in one transaction, never deleting
///   first (first sync, drift repair, recovery); otherwise apply the
///   difference from what this dataplane last committed, which it keeps in
///   memory rather than reading the table back;
/// - deterministic: the same cluster gives the same ruleset.
///
/// `sync` is blocking; the loop runs it on tokio's blocking pool.
pub trait Dataplane: Send + 'static {
    fn sync(&mut self, cluster: &Cluster, full: bool) -> Result<SyncReport, SyncError>;

    /// Would [`Dataplane::sync_changes`] take the next delta? When not, the
    /// loop snapshots the cluster for [`Dataplane::sync`].
    fn takes_changes(&self) -> bool {
        false
    }

    /// A delta from the objects changed since the last sync (the index's
    /// [`Change`]s), without the whole cluster. `None`: this dataplane
    /// cannot (nothing was applied); the loop then syncs a snapshot.
    fn sync_changes(&mut self, _changes: &[Change]) -> Option<Result<SyncReport, SyncError>> {
        None
    }
}

impl<D: Dataplane + ?Sized> Dataplane for Box<D> {
    fn sync(&mut self, cluster: &Cluster, full: bool) -> Result<SyncReport, SyncError> {
        (**self).sync(cluster, full)
    }
    fn takes_changes(&self) -> bool {
        (**self).takes_changes()
    }
    fn sync_changes(&mut self, changes: &[Change]) -> Option<Result<SyncReport, SyncError>> {
        (**self).sync_changes(changes)
    }
}

/// A dataplane that touches nothing: logs what would be enforced. For
/// trying the agent on a cluster without changing any node.
#[derive(Debug, Default)]
pub struct DryRun;

impl Dataplane for DryRun {
    fn sync(&mut self, cluster: &Cluster, full: bool) -> Result<SyncReport, SyncError> {
        let pods = cluster.pods.iter().filter(|p| p.is_policy_pod()).count();
        tracing::info!(full, pods, policies = cluster.policies.len(), namespaces = cluster.namespaces.len(), "dry run: would sync");
        Ok(SyncReport::default())
    }
}

/// One call the fake dataplane saw.
#[derive(Debug, Clone)]
pub struct SyncRecord {
    pub full: bool,
    pub ok: bool,
    pub at: Instant,
    pub cluster: Arc<Cluster>,
}

/// An in-memory dataplane for tests: records every sync, can be told to
/// fail, and is atomic like the real one (a failed sync commits nothing).
/// Clones share state, so a test keeps one to inspect the agent's.
#[derive(Debug, Clone, Default)]
pub struct FakeDataplane(Arc<Mutex<FakeState>>);

#[derive(Debug, Default)]
struct FakeState {
    records: Vec<SyncRecord>,
    committed: Option<Arc<Cluster>>,
    fail_any: usize,
    fail_delta: usize,
    synced: Arc<Notify>,
    hold: Option<Arc<Gate>>,
}

/// Holds one sync of the fake in flight until opened: what a test needs
/// to make changes "while a sync runs".
#[derive(Debug, Default)]
pub struct Gate {
    /// (a sync is waiting here, opened)
    state: Mutex<(bool, bool)>,
    changed: std::sync::Condvar,
}

impl Gate {
    /// Wait to be opened; a test that never opens it (it failed) lets the
    /// sync go after a minute rather than hanging the runtime's shutdown.
    fn pass(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = true;
        self.changed.notify_all();
        while !s.1 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            s = self.changed.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Is a sync waiting at the gate?
    pub fn entered(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    pub fn open(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
    }
}

impl FakeDataplane {
    /// The next sync waits, in flight, until the returned gate is opened.
    pub fn hold_next(&self) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.state().hold = Some(gate.clone());
        gate
    }

    /// Fail the next `n` syncs, whatever their mode.
    pub fn fail_next(&self, n: usize) {
        self.state().fail_any = n;
    }

    /// Fail the next `n` delta syncs (full ones succeed).
    pub fn fail_next_deltas(&self, n: usize) {
        self.state().fail_delta = n;
    }

    pub fn records(&self) -> Vec<SyncRecord> {
        self.state().records.clone()
    }

    /// The modes of every call so far: `"full"`, `"delta"`, `"full!"` for a
    /// failed full, `"delta!"` for a failed delta.
    pub fn history(&self) -> Vec<&'static str> {
        self.state()
            .records
            .iter()
            .map(|r| match (r.full, r.ok) {
                (true, true) => "full",
                (false, true) => "delta",
                (true, false) => "full!",
                (false, false) => "delta!",
            })
            .collect()
    }

    /// What the "kernel" holds: the last cluster successfully synced.
    pub fn committed(&self) -> Option<Arc<Cluster>> {
        self.state().committed.clone()
    }

    /// Wait (in real time, up to `timeout`) until `ok(committed)` holds.
    pub async fn wait_committed(&self, timeout: Duration, ok: impl Fn(&Cluster) -> bool) -> Result<Arc<Cluster>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let notify = self.state().synced.clone();
            let notified = notify.notified();
            if let Some(c) = self.committed().filter(|c| ok(c)) {
                return Ok(c);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let summary = self.committed().map(|c| (c.namespaces.len(), c.nodes.len(), c.pods.len(), c.policies.len()));
                return Err(format!(
                    "not committed within {timeout:?}; history {:?}, committed (namespaces, nodes, pods, policies) {summary:?}",
                    self.history()
                ));
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Dataplane for FakeDataplane {
    fn sync(&mut self, cluster: &Cluster, full: bool) -> Result<SyncReport, SyncError> {
        let hold = self.state().hold.take();
        if let Some(gate) = hold {
            gate.pass();
        }
        let mut s = self.state();
        let fail = if s.fail_any > 0 {
            s.fail_any -= 1;
            true
        } else if !full && s.fail_delta > 0 {
            s.fail_delta -= 1;
            true
        } else {
            false
        };
        let cluster = Arc::new(cluster.clone());
        s.records.push(SyncRecord { full, ok: !fail, at: Instant::now(), cluster: cluster.clone() });
        if fail {
            s.synced.notify_waiters();
            return Err(SyncError::Apply(anyhow::anyhow!("injected failure")));
        }
        let report = fake_report(s.committed.as_deref(), &cluster, full);
        s.committed = Some(cluster);
        s.synced.notify_waiters();
        Ok(report)
    }
}

/// Plausible counts for the fake: one set per namespace, one rule per
/// policy, one element per pod address.
fn fake_report(old: Option<&Cluster>, new: &Cluster, full: bool) -> SyncReport {
    let empty = Cluster::default();
    let old = old.unwrap_or(&empty);
    let changed_pods: Vec<_> = new.pods.iter().filter(|p| !old.pods.contains(p)).chain(old.pods.iter().filter(|p| !new.pods.contains(p))).collect();
    let changed_ns: BTreeSet<&str> = new
        .policies
        .iter()
        .filter(|p| !old.policies.contains(p))
        .chain(old.policies.iter().filter(|p| !new.policies.contains(p)))
        .map(|p| p.namespace.as_str())
        .collect();
    let elements: usize = new.pods.iter().map(|p| p.ips.len()).sum();
    let element_ops = if full { elements } else { changed_pods.iter().map(|p| p.ips.len()).sum() };
    SyncReport {
        ops: if full { elements + new.policies.len() + new.namespaces.len() } else { element_ops + changed_ns.len() },
        element_ops,
        rules: new.policies.len(),
        sets: new.namespaces.len(),
        elements,
        changes: None,
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Cluster {
        crate::model::load::load_str("c.yaml", yaml).unwrap()
    }

    const A: &str = "kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}\n---\n";
    const B: &str = "kind: Pod\napiVersion: v1\nmetadata: {name: b, namespace: y}\nstatus: {podIP: 10.0.0.2}\n---\n";
    const P: &str = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n---\n";

    #[test]
    fn fake_is_atomic_and_counts_changes() {
        let mut dp = FakeDataplane::default();
        // (element ops, ops) of a delta: one per pod address added or
        // removed, plus one per namespace whose policies changed.
        let check = |dp: &mut FakeDataplane, yaml: String, expected: (usize, usize)| {
            let r = dp.sync(&cluster(&yaml), false).unwrap();
            assert_eq!((r.element_ops, r.ops), expected, "{yaml}");
        };
        check(&mut dp, format!("{A}{B}"), (2, 2));
        // (The policy stays first: its origin line is part of its identity.)
        check(&mut dp, format!("{P}{A}{B}"), (0, 1));
        check(&mut dp, format!("{P}{A}"), (1, 1));
        dp.fail_next(1);
        assert!(dp.sync(&cluster(A), true).is_err());
        assert_eq!(dp.committed().unwrap().policies.len(), 1, "a failed sync commits nothing");
        assert_eq!(dp.history(), ["delta", "delta", "delta", "full!"]);
    }
}
