//! The real dataplane: compile the node's program, diff it against what was
//! last committed, apply the difference as one transaction.
//!
//! The committed program is kept in memory and never read back on the sync
//! path (`../shared/nft-facts.md`: listing a large table takes seconds). A
//! full sync replaces our table and removes the other of our two table names
//! in the same transaction, so whatever an earlier run left (either name, any
//! contents) is adopted with no moment without rules. Connection state lives
//! in the kernel's conntrack table, not in ours, so replacing the table (or
//! swapping in a staged one) keeps every established connection. Only a cold start too
//! large for one transaction is built in bounded steps under the other name
//! ([`crate::apply::apply_staged`]); until its last step it is not hooked,
//! so traffic never sees it half-built.

use super::dataplane::{Dataplane, SyncError, SyncReport};
use crate::apply::{apply_staged, Kernel};
use crate::model::Cluster;
use crate::nft::{self, Op, Program, Transaction, ALT_TABLE, TABLE};

/// Above this many elements a full sync is built in bounded transactions.
pub const STAGED_ABOVE: usize = 200_000;
/// Elements per transaction of a staged build.
pub const STAGE_BATCH: usize = 50_000;

pub struct NftDataplane {
    node: String,
    kernel: Box<dyn Kernel + Send>,
    committed: Option<Program>,
}

impl NftDataplane {
    pub fn new(node: &str, kernel: Box<dyn Kernel + Send>) -> NftDataplane {
        NftDataplane { node: node.to_string(), kernel, committed: None }
    }

    /// What was last committed (for tests and verification).
    pub fn committed(&self) -> Option<&Program> {
        self.committed.as_ref()
    }

    fn full(&mut self, mut program: Program) -> Result<(Program, usize), SyncError> {
        let apply_err = |e: crate::apply::ApplyError| SyncError::Apply(anyhow::Error::new(e));
        if element_count(&program) > STAGED_ABOVE {
            let names = self.kernel.table_names().map_err(apply_err)?;
            let live = [TABLE, ALT_TABLE].into_iter().find(|t| names.iter().any(|n| n == t));
            program.table = nft::other_table(live.unwrap_or(ALT_TABLE)).to_string();
            apply_staged(self.kernel.as_mut(), &program, live, STAGE_BATCH).map_err(apply_err)?;
            let ops = Transaction::create(&program).len();
            return Ok((program, ops));
        }
        program.table = TABLE.to_string();
        let mut tx = nft::diff::replace(&program);
        tx.push(Op::AddTable { table: ALT_TABLE.to_string() });
        tx.push(Op::DeleteTable { table: ALT_TABLE.to_string() });
        self.kernel.apply(&tx).map_err(apply_err)?;
        Ok((program, tx.len()))
    }
}

impl Dataplane for NftDataplane {
    fn sync(&mut self, cluster: &Cluster, full: bool) -> Result<SyncReport, SyncError> {
        let ir = crate::ir::resolve(cluster);
        let mut program = nft::compile(cluster, &ir, &self.node);
        program.validate().map_err(|e| SyncError::Compile(anyhow::Error::new(e)))?;
        let (program, ops, element_ops) = match (&self.committed, full) {
            (Some(old), false) => {
                program.table = old.table.clone();
                let tx = nft::diff(Some(old), &program);
                self.kernel.apply(&tx).map_err(|e| SyncError::Apply(anyhow::Error::new(e)))?;
                let element_ops = tx.ops.iter().filter(|o| o.is_element_op()).count();
                (program, tx.len(), element_ops)
            }
            _ => {
                let (p, ops) = self.full(program)?;
                (p, ops, 0)
            }
        };
        let report = SyncReport {
            ops,
            element_ops,
            rules: program.rule_count(),
            sets: program.sets.len() + program.maps.len(),
            elements: element_count(&program),
        };
        self.committed = Some(program);
        Ok(report)
    }
}

pub fn element_count(p: &Program) -> usize {
    p.sets.values().map(|s| s.elements.len()).sum::<usize>() + p.maps.values().map(|m| m.elements.len()).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{FakeKernel, Reason};

    const BASE: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.0.1.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n1}
status: {podIP: 10.0.1.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]
";

    fn cluster(extra: &str) -> Cluster {
        crate::model::load::load_str("t.yaml", &format!("{BASE}{extra}")).unwrap()
    }

    /// A kernel shared with the test, so it can look inside after syncs.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<FakeKernel>>);
    impl Kernel for Shared {
        fn apply(&mut self, tx: &Transaction) -> Result<(), crate::apply::ApplyError> {
            self.0.lock().unwrap().apply(tx)
        }
        fn table_names(&mut self) -> Result<Vec<String>, crate::apply::ApplyError> {
            self.0.lock().unwrap().table_names()
        }
    }

    #[test]
    fn full_then_deltas_of_elements_only_for_pod_churn() {
        let k = Shared::default();
        let mut dp = NftDataplane::new("n1", Box::new(k.clone()));
        let r = dp.sync(&cluster(""), true).unwrap();
        assert!(r.ops > 0);
        let c2 = cluster("---\napiVersion: v1\nkind: Pod\nmetadata: {name: b2, namespace: x, labels: {app: b}}\nspec: {nodeName: n2}\nstatus: {podIP: 10.0.2.9}\n");
        let r = dp.sync(&c2, false).unwrap();
        assert_eq!(r.ops, r.element_ops, "a remote pod add is element operations only");
        assert!(r.ops > 0);
        let kernel = k.0.lock().unwrap();
        assert_eq!(kernel.table(TABLE), dp.committed());
    }

    #[test]
    fn full_sync_adopts_whatever_was_left() {
        let k = Shared::default();
        // An earlier run left a staged table under the other name.
        let mut stale = Program::new(ALT_TABLE);
        stale.add_chain(nft::Chain { name: "junk".into(), base: None, rules: vec![] });
        k.0.lock().unwrap().apply(&Transaction::create(&stale)).unwrap();
        let mut dp = NftDataplane::new("n1", Box::new(k.clone()));
        dp.sync(&cluster(""), true).unwrap();
        let names = k.0.lock().unwrap().table_names().unwrap();
        assert_eq!(names, vec![TABLE.to_string()]);
    }

    #[test]
    fn a_refused_delta_keeps_the_committed_state() {
        let k = Shared::default();
        let mut dp = NftDataplane::new("n1", Box::new(k.clone()));
        dp.sync(&cluster(""), true).unwrap();
        let before = dp.committed().cloned();
        k.0.lock().unwrap().fail_next(Reason::Busy);
        let c2 = cluster("---\napiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x, labels: {app: b}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.1.3}\n");
        assert!(matches!(dp.sync(&c2, false), Err(SyncError::Apply(_))));
        assert_eq!(dp.committed().cloned(), before);
        assert_eq!(k.0.lock().unwrap().table(TABLE).cloned(), before);
        // The next attempt succeeds from the same committed state.
        dp.sync(&c2, false).unwrap();
        assert_eq!(k.0.lock().unwrap().table(TABLE), dp.committed());
    }
}
