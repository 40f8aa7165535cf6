//! The real dataplane: compile the node's program, diff it against what was
//! last committed, apply the difference as one transaction.
//!
//! A full sync compiles through the full path (resolve, compile) and then
//! builds the incremental engine ([`crate::nft::incremental`]) from the same
//! cluster, kept only if its program is the full path's, and from then on
//! holds the program in force (one copy, lent to the conntrack cut). A delta
//! sync hands the engine the objects changed since the last sync, each
//! through its own method ([`Dataplane::sync_changes`]): no snapshot, no walk
//! of the cluster, no copy of the program; it compiles only what they touch,
//! into the transaction the full path's diff would give, and the cut's scope
//! is read from that transaction ([`affected_by`]).
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::conntrack::Scope;
use super::dataplane::{Changes, Dataplane, SyncError, SyncReport};
use super::index::{Change, Entry, Kind};
use super::drop_log::DropLogger;
use super::rule_counters::RuleCounters;
use crate::apply::{apply_staged, Kernel};
use crate::model::Cluster;
use crate::nft::incremental::Incremental;
use crate::nft::program::{Action, AddrMatch, Element, Match, Verdict};
use crate::nft::{self, Op, Program, Transaction, ALT_TABLE, TABLE};

/// Above this many elements a full sync is built in bounded transactions.
pub const STAGED_ABOVE: usize = 200_000;
/// Elements per transaction of a staged build.
pub const STAGE_BATCH: usize = 50_000;

pub struct NftDataplane {
    node: String,
    kernel: Box<dyn Kernel + Send>,
    /// The program in force when the engine does not hold it (no engine,
    /// or log rules its program lacks); shared with the last report's
    /// [`Changes`], never copied. Neither: not known (the next sync
    /// replaces the table).
    committed: Option<Arc<Program>>,
    /// Our live table's name ([`TABLE`], or [`ALT_TABLE`] after a staged build).
    table: String,
    /// Told around every apply what the kernel holds (per-rule metrics).
    counters: Option<Arc<RuleCounters>>,
    /// The committed program kept in step change by change: what a delta
    /// sync compiles with. `None` until a full sync builds it, and after a
    /// delta the kernel refused (the engine is then ahead of the kernel).
    engine: Option<Incremental>,
    /// Adds the log rules to every program, and is told what they mean.
    drop_log: Option<Arc<DropLogger>>,
    /// Full syncs of programs with more elements are staged.
    staged_above: usize,
}

impl NftDataplane {
    pub fn new(node: &str, kernel: Box<dyn Kernel + Send>) -> NftDataplane {
        NftDataplane {
            node: node.to_string(),
            kernel,
            committed: None,
            table: TABLE.to_string(),
            counters: None,
            engine: None,
            drop_log: None,
            staged_above: STAGED_ABOVE,
        }
    }

    /// Stage full syncs of programs over `elements` (tests stage small ones).
    pub fn with_staged_above(mut self, elements: usize) -> NftDataplane {
        self.staged_above = elements;
        self
    }

    /// Log drops as `drop_log` says ([`crate::nft::drop_log`]).
    pub fn with_drop_log(mut self, drop_log: Arc<DropLogger>) -> NftDataplane {
        self.drop_log = Some(drop_log);
        self
    }

    /// Publish what each committed rule counts to `counters`
    /// ([`super::rule_counters`]).
    pub fn with_rule_counters(mut self, counters: Arc<RuleCounters>) -> NftDataplane {
        self.counters = Some(counters);
        self
    }

    /// What was last committed (for tests and verification; the engine's
    /// program is named [`TABLE`] whatever the live table's name).
    pub fn committed(&self) -> Option<&Program> {
        self.committed.as_deref().or_else(|| self.engine.as_ref().map(Incremental::program))
    }

    fn full(&mut self, mut program: Program) -> Result<(Program, usize), SyncError> {
        let apply_err = |e: crate::apply::ApplyError| SyncError::Apply(anyhow::Error::new(e));
        if element_count(&program) > self.staged_above {
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

impl NftDataplane {
    /// Apply `program` as a delta or whole: (the program as committed,
    /// operations, element operations, whether the table was replaced).
    fn apply(&mut self, mut program: Program, full: bool) -> Result<(Program, usize, usize, bool), SyncError> {
        match (&self.committed, full) {
            (Some(old), false) => {
                program.table = self.table.clone();
                let tx = nft::diff(Some(old), &program);
                self.kernel.apply(&tx).map_err(|e| SyncError::Apply(anyhow::Error::new(e)))?;
                let element_ops = tx.ops.iter().filter(|o| o.is_element_op()).count();
                Ok((program, tx.len(), element_ops, false))
            }
            _ => {
                let (p, ops) = self.full(program)?;
                Ok((p, ops, 0, true))
            }
        }
    }

    /// The program in force, shared: ours, or the engine's.
    fn in_force(&self) -> Option<Arc<Program>> {
        self.committed.clone().or_else(|| self.engine.as_ref().map(Incremental::program_shared))
    }

    /// Let the engine go but keep the program in force it holds (before it
    /// took any change): the next delta is diffed against it.
    fn drop_engine(&mut self) {
        if let Some(e) = self.engine.take() {
            if self.committed.is_none() {
                let mut p = Program::clone(e.program());
                p.table = self.table.clone();
                self.committed = Some(Arc::new(p));
            }
        }
    }
}

impl NftDataplane {
    /// A delta through the incremental engine from a whole cluster: the
    /// engine finds what changed by walking it ([`Incremental::update_to`]).
    /// `None` when the engine cannot say (not built yet, or a name
    /// collision only the full path resolves).
    fn sync_incremental(&mut self, cluster: &Cluster) -> Option<Result<SyncReport, SyncError>> {
        self.engine.as_mut()?.update_to(cluster);
        self.commit_engine()
    }

    /// Commit what the engine took since the last sync into the kernel.
    fn commit_engine(&mut self) -> Option<Result<SyncReport, SyncError>> {
        let engine = self.engine.as_mut()?;
        let Some(tx) = engine.commit(&self.table) else {
            tracing::warn!("two names' hashes collide: this delta and the next are compiled in full");
            // The engine took the changes: the program in force is lost,
            // and the full path replaces the table.
            self.engine = None;
            self.committed = None;
            return None;
        };
        // What the transaction touched, not a comparison of two programs.
        let scope = affected_by(&tx, engine.program());
        let wants_origins = self.counters.is_some() || self.drop_log.is_some();
        let mut origins = if wants_origins { engine.origins().clone() } else { Default::default() };
        // The engine compiles without log rules: they are added to a copy
        // of its program and to the chains its transaction rebuilds.
        let (program, tx) = match &self.drop_log {
            Some(d) => {
                let mut program = Program::clone(engine.program());
                program.table = self.table.clone();
                nft::drop_log::instrument(&mut program, &mut origins, d.config());
                let tx = nft::drop_log::instrument_transaction(tx, &program);
                (Arc::new(program), tx)
            }
            None => (engine.program_shared(), tx),
        };
        let counters = self.counters.clone();
        if let Some(c) = &counters {
            c.syncing();
        }
        if let Err(e) = self.kernel.apply(&tx) {
            // The engine is ahead of the kernel now, and what the kernel
            // holds is no longer known: the next sync replaces the table.
            self.engine = None;
            self.committed = None;
            if let Some(c) = &counters {
                c.synced(None);
            }
            return Some(Err(SyncError::Apply(anyhow::Error::new(e))));
        }
        if let Some(d) = &self.drop_log {
            d.committed_program(&origins);
        }
        if let Some(c) = &counters {
            c.synced(Some((self.table.as_str(), origins, false)));
        }
        let report = SyncReport {
            ops: tx.len(),
            element_ops: tx.ops.iter().filter(|o| o.is_element_op()).count(),
            rules: program.rule_count(),
            sets: program.sets.len() + program.maps.len(),
            elements: element_count(&program),
            changes: Some(Changes { node: self.node.clone(), scope, new: program.clone() }),
        };
        // Without log rules the engine's program is the one in force.
        self.committed = self.drop_log.is_some().then_some(program);
        Some(Ok(report))
    }

    /// Build the engine from `cluster` after a sync through the full path
    /// committed `program`; kept only if it agrees with the full path.
    fn rebuild_engine(&mut self, cluster: &Cluster, program: &Program) {
        let engine = Incremental::new(cluster, &self.node);
        let same = match &self.drop_log {
            Some(d) => {
                let mut mine = engine.program().clone();
                nft::drop_log::instrument(&mut mine, &mut engine.origins().clone(), d.config());
                mine.sets == program.sets && mine.maps == program.maps && mine.chains == program.chains
            }
            None => {
                let mine = engine.program();
                mine.sets == program.sets && mine.maps == program.maps && mine.chains == program.chains
            }
        };
        let same = engine.is_exact() && same;
        if !same {
            tracing::error!("the incremental engine disagrees with the full compile (a netfence bug): deltas are compiled in full");
        }
        self.engine = same.then_some(engine);
    }
}

impl Dataplane for NftDataplane {
    fn sync(&mut self, cluster: &Cluster, full: bool) -> Result<SyncReport, SyncError> {
        if !full {
            if let Some(result) = self.sync_incremental(cluster) {
                return result;
            }
        }
        // What the kernel holds now, for what the cut must judge.
        let before = self.in_force();
        // Whatever happens below, the engine no longer matches what the
        // kernel will hold.
        self.drop_engine();
        let ir = crate::ir::resolve(cluster);
        let (mut program, mut origins) = nft::compile_with_origins(cluster, &ir, &self.node);
        if let Some(d) = &self.drop_log {
            nft::drop_log::instrument(&mut program, &mut origins, d.config());
        }
        program.validate().map_err(|e| SyncError::Compile(anyhow::Error::new(e)))?;
        let drop_origins = self.drop_log.as_ref().map(|_| origins.clone());
        let counters = self.counters.clone();
        if let Some(c) = &counters {
            c.syncing();
        }
        let applied = self.apply(program, full);
        if let Some(c) = &counters {
            c.synced(applied.as_ref().ok().map(|(p, _, _, replaced)| (p.table.as_str(), origins, *replaced)));
        }
        let (program, ops, element_ops, _) = applied?;
        self.table = program.table.clone();
        if let (Some(d), Some(o)) = (&self.drop_log, &drop_origins) {
            d.committed_program(o);
        }
        drop(ir);
        self.rebuild_engine(cluster, &program);
        let program = match (&self.engine, &self.drop_log) {
            // One copy of the program, not two: the engine's is the same.
            (Some(e), None) => {
                drop(program);
                self.committed = None;
                e.program_shared()
            }
            _ => {
                let p = Arc::new(program);
                self.committed = Some(p.clone());
                p
            }
        };
        let scope = match &before {
            Some(old) => affected(old, &program),
            None => Scope::All,
        };
        drop(before);
        let report = SyncReport {
            ops,
            element_ops,
            rules: program.rule_count(),
            sets: program.sets.len() + program.maps.len(),
            elements: element_count(&program),
            changes: Some(Changes { node: self.node.clone(), scope, new: program }),
        };
        Ok(report)
    }

    fn takes_changes(&self) -> bool {
        self.engine.is_some()
    }

    /// A delta from the objects changed, each through the engine's own
    /// method: no snapshot, no walk of the cluster. `None` (nothing
    /// applied) without an engine.
    fn sync_changes(&mut self, changes: &[Change]) -> Option<Result<SyncReport, SyncError>> {
        let engine = self.engine.as_mut()?;
        // As `update_to` does: namespaces, nodes, cluster policies,
        // policies, pods; of each kind of policy and of pods, deletions
        // first (what goes frees what comes).
        let rank = |c: &Change| {
            let gone = c.after.is_none();
            match c.kind {
                Kind::Namespace => 0,
                Kind::Node => 1,
                Kind::ClusterNetworkPolicy | Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy if gone => 2,
                Kind::ClusterNetworkPolicy | Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => 3,
                Kind::NetworkPolicy if gone => 4,
                Kind::NetworkPolicy => 5,
                Kind::Pod if gone => 6,
                Kind::Pod => 7,
            }
        };
        let mut order: Vec<&Change> = changes.iter().collect();
        order.sort_by_key(|c| rank(c));
        for c in order {
            match (c.before.as_ref().or(c.after.as_ref()), &c.after) {
                (Some(Entry::Namespace(_)), after) => {
                    let ns = match after {
                        Some(Entry::Namespace(n)) => Some(n.clone()),
                        _ => None,
                    };
                    engine.set_namespace(&c.key.name, ns);
                }
                (Some(Entry::Node(_)), after) => {
                    let node = match after {
                        Some(Entry::Node(n)) => Some(crate::model::Node::clone(n)),
                        _ => None,
                    };
                    engine.set_node(&c.key.name, node);
                }
                (Some(Entry::Policy(p)), after) => {
                    let policy = match after {
                        Some(Entry::Policy(p)) => Some(p.clone()),
                        _ => None,
                    };
                    engine.set_policy_shared(&p.namespace.clone(), &p.name.clone(), policy);
                }
                (Some(Entry::Pod(p)), after) => {
                    let pod = match after {
                        Some(Entry::Pod(p)) => Some(p.clone()),
                        _ => None,
                    };
                    engine.set_pod_shared(&p.namespace.clone(), &p.name.clone(), pod);
                }
                (Some(Entry::ClusterPolicy(p)), after) => {
                    let policy = match after {
                        Some(Entry::ClusterPolicy(p)) => Some(crate::model::ClusterPolicy::clone(p)),
                        _ => None,
                    };
                    engine.set_cluster_policy(p.kind, &p.name.clone(), policy);
                }
                (None, _) => {}
            }
        }
        self.commit_engine()
    }
}

/// The local addresses whose verdicts a delta's transaction may change,
/// read from the transaction and the program it leads to (what the cut
/// must judge; [`affected`] says the same comparing two whole programs).
/// Elements added or removed in a set, and chains rebuilt, affect the
/// addresses dispatched to a chain that reads or reaches them; dispatch
/// elements added, changed or removed, their own address; anything that
/// every packet crosses, or a change not about addresses, everything.
/// A hairpin pair (an address with itself) matches only a packet from that
/// address to itself, wherever it is read: its change affects that address
/// alone, not every pod dispatched to a chain that reads the set.
pub fn affected_by(tx: &Transaction, new: &Program) -> Scope {
    let mut sets: HashMap<&str, Option<BTreeSet<IpAddr>>> = HashMap::new();
    let mut chains: HashSet<&str> = HashSet::new();
    let mut maps: HashSet<&str> = HashSet::new();
    let mut out = BTreeSet::new();
    for op in &tx.ops {
        match op {
            Op::AddSet { name, .. } | Op::DeleteSet { name } => {
                sets.insert(name, None);
            }
            Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                if let Some(ips) = self_pairs(elements) {
                    out.extend(ips);
                    continue;
                }
                let entry = sets.entry(set).or_insert_with(|| Some(BTreeSet::new()));
                if let Some(addrs) = entry {
                    match elements.iter().map(address).collect::<Option<Vec<IpAddr>>>() {
                        Some(a) => addrs.extend(a),
                        None => *entry = None,
                    }
                }
            }
            Op::AddMapElements { map, elements } => {
                maps.insert(map);
                for (k, _) in elements {
                    match address(k) {
                        Some(ip) => out.insert(ip),
                        None => return Scope::All,
                    };
                }
            }
            Op::DeleteMapElements { map, keys } => {
                maps.insert(map);
                for k in keys {
                    match address(k) {
                        Some(ip) => out.insert(ip),
                        None => return Scope::All,
                    };
                }
            }
            Op::AddChain { name, .. } | Op::FlushChain { name } | Op::DeleteChain { name } => {
                chains.insert(name);
            }
            Op::AddRule { chain, .. } => {
                chains.insert(chain);
            }
            Op::AddTable { .. } | Op::DeleteTable { .. } | Op::AddMap { .. } | Op::DeleteMap { .. } | Op::AddLimit { .. } | Op::DeleteLimit { .. } => {
                return Scope::All
            }
        }
    }
    // Every packet's part: base chains and what they jump to directly.
    let mut stack: Vec<&str> = new.chains.values().filter(|c| c.base.is_some()).map(|c| c.name.as_str()).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    while let Some(name) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        if chains.contains(name) {
            return Scope::All;
        }
        for rule in new.chains.get(name).iter().flat_map(|c| &c.rules) {
            for set in reads(&rule.matches) {
                match sets.get(set) {
                    Some(Some(addrs)) => out.extend(addrs),
                    Some(None) => return Scope::All,
                    None => {}
                }
            }
            if let Action::Verdict(Verdict::Jump(t)) = &rule.action {
                stack.push(t);
            }
        }
    }
    // The keyed part: dispatch elements whose chain changed or reads a
    // changed set, directly or through what it jumps to.
    let mut dirty: HashMap<&str, bool> = HashMap::new();
    for m in new.maps.values() {
        for (key, verdict) in &m.elements {
            if let Verdict::Jump(c) = verdict {
                if reaches_change(new, c, &chains, &sets, &maps, &mut dirty) {
                    match address(key) {
                        Some(ip) => out.insert(ip),
                        None => return Scope::All,
                    };
                }
            }
        }
    }
    Scope::Addrs(out)
}

/// Does chain `name`, or anything it reads or jumps to, carry a change?
fn reaches_change<'p>(
    p: &'p Program,
    name: &'p str,
    chains: &HashSet<&str>,
    sets: &HashMap<&str, Option<BTreeSet<IpAddr>>>,
    maps: &HashSet<&str>,
    dirty: &mut HashMap<&'p str, bool>,
) -> bool {
    if let Some(&d) = dirty.get(name) {
        return d;
    }
    dirty.insert(name, false); // no loops: validate() refuses them
    let d = chains.contains(name)
        || p.chains.get(name).is_some_and(|c| {
            c.rules.iter().any(|r| {
                reads(&r.matches).any(|s| sets.contains_key(s))
                    || match &r.action {
                        Action::Verdict(Verdict::Jump(t)) => reaches_change(p, t, chains, sets, maps, dirty),
                        Action::Vmap { map, .. } => {
                            maps.contains(map.as_str())
                                || p.maps.get(map).into_iter().flat_map(|m| m.elements.values()).any(|v| matches!(v, Verdict::Jump(t) if reaches_change(p, t, chains, sets, maps, dirty)))
                        }
                        _ => false,
                    }
            })
        });
    dirty.insert(name, d);
    d
}

pub fn element_count(p: &Program) -> usize {
    p.sets.values().map(|s| s.elements.len()).sum::<usize>() + p.maps.values().map(|m| m.elements.len()).sum::<usize>()
}

/// The addresses whose verdicts may differ between two programs: what a
/// cut must judge ([`super::conntrack`]).
///
/// A packet's verdict depends on the rules it crosses and the elements
/// they read. Base chains, and the chains they jump to directly, are
/// crossed by every packet: a rule changed there may change any verdict
/// (`All`), an element changed in a set they read changes the verdicts of
/// that element's address. Past a verdict-map lookup by address (the
/// dispatch of local pods to their group chains) everything is the key's:
/// a key is affected when its verdict changed, or the chain it jumps to,
/// or anything that chain reads or jumps to. An over-approximation on
/// purpose: judging a connection that stays allowed costs a lookup, missing
/// one that is now denied would leave it open.
pub fn affected(old: &Program, new: &Program) -> Scope {
    let mut out = BTreeSet::new();
    let mut sets = changed_sets(old, new);
    // Hairpin pairs: their own address only (see [`affected_by`]).
    sets.retain(|name, _| match (old.sets.get(*name), new.sets.get(*name)) {
        (Some(o), Some(n)) if o.same_declaration(n) => match self_pairs(o.elements.symmetric_difference(&n.elements)) {
            Some(ips) => {
                out.extend(ips);
                false
            }
            None => true,
        },
        _ => true,
    });
    let mut a = Affected { old, new, sets, dirty: HashMap::new() };
    // Every packet's part: base chains and what they jump to directly.
    let mut stack: Vec<&str> =
        old.chains.values().chain(new.chains.values()).filter(|c| c.base.is_some()).map(|c| c.name.as_str()).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    while let Some(name) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        let (o, n) = (old.chains.get(name), new.chains.get(name));
        if o.map(|c| (&c.base, &c.rules)) != n.map(|c| (&c.base, &c.rules)) {
            return Scope::All;
        }
        for rule in n.iter().flat_map(|c| &c.rules) {
            for set in reads(&rule.matches) {
                match a.sets.get(set) {
                    Some(Some(addrs)) => out.extend(addrs),
                    Some(None) => return Scope::All,
                    None => {}
                }
            }
            if let Action::Verdict(Verdict::Jump(t)) = &rule.action {
                stack.push(t);
            }
        }
    }
    // The keyed part: every verdict map element.
    let names: BTreeSet<&String> = old.maps.keys().chain(new.maps.keys()).collect();
    for name in names {
        let (o, n) = (old.maps.get(name), new.maps.get(name));
        if o.map(|m| m.key) != n.map(|m| m.key) && o.is_some() && n.is_some() {
            return Scope::All;
        }
        let empty = BTreeMap::new();
        let (o, n) = (o.map_or(&empty, |m| &m.elements), n.map_or(&empty, |m| &m.elements));
        for key in o.keys().chain(n.keys().filter(|k| !o.contains_key(*k))) {
            let differs = match (o.get(key), n.get(key)) {
                (Some(x), Some(y)) if x == y => matches!(y, Verdict::Jump(c) if a.dirty(c)),
                _ => true,
            };
            if differs {
                match address(key) {
                    Some(ip) => {
                        out.insert(ip);
                    }
                    None => return Scope::All,
                }
            }
        }
    }
    Scope::Addrs(out)
}

/// The addresses of `elements` when every one is an address paired with
/// itself (a hairpin pair, which matches only a packet from that address to
/// itself).
fn self_pairs<'e>(elements: impl IntoIterator<Item = &'e Element>) -> Option<BTreeSet<IpAddr>> {
    elements
        .into_iter()
        .map(|e| match e {
            Element::AddrPair(a, b) if a == b => Some(*a),
            _ => None,
        })
        .collect()
}

/// The address an element is about, if it is about one.
fn address(e: &Element) -> Option<IpAddr> {
    match e {
        Element::Addr(ip) | Element::AddrProtoPort(ip, _, _) => Some(*ip),
        Element::AddrPair(a, b) if a == b => Some(*a),
        _ => None,
    }
}

/// The sets a rule's matches read.
fn reads(matches: &[Match]) -> impl Iterator<Item = &str> {
    matches.iter().filter_map(|m| match m {
        Match::Addr { rhs: AddrMatch::Set(s), .. } | Match::NamedPort { set: s, .. } | Match::AddrPair { set: s, .. } => Some(s.as_str()),
        _ => None,
    })
}

/// Sets that differ: each with the addresses of the elements that differ,
/// or `None` when the difference is not a matter of addresses (a
/// declaration, a prefix).
fn changed_sets<'p>(old: &'p Program, new: &'p Program) -> HashMap<&'p str, Option<BTreeSet<IpAddr>>> {
    let mut out = HashMap::new();
    let names: BTreeSet<&String> = old.sets.keys().chain(new.sets.keys()).collect();
    for name in names {
        let (o, n) = (old.sets.get(name), new.sets.get(name));
        if o == n {
            continue;
        }
        let addrs = match (o, n) {
            (Some(o), Some(n)) if o.same_declaration(n) => {
                o.elements.symmetric_difference(&n.elements).map(address).collect::<Option<BTreeSet<IpAddr>>>()
            }
            _ => None,
        };
        out.insert(name.as_str(), addrs);
    }
    out
}

struct Affected<'p> {
    old: &'p Program,
    new: &'p Program,
    sets: HashMap<&'p str, Option<BTreeSet<IpAddr>>>,
    dirty: HashMap<String, bool>,
}

impl Affected<'_> {
    /// Did chain `name`, or anything it reads or jumps to, change?
    fn dirty(&mut self, name: &str) -> bool {
        if let Some(&d) = self.dirty.get(name) {
            return d;
        }
        self.dirty.insert(name.to_string(), false); // no loops: validate() refuses them
        let (old, new) = (self.old, self.new);
        let d = match (old.chains.get(name), new.chains.get(name)) {
            (Some(a), Some(b)) if a.rules == b.rules => b.rules.iter().any(|r| {
                reads(&r.matches).any(|s| self.sets.contains_key(s))
                    || match &r.action {
                        Action::Verdict(Verdict::Jump(t)) => self.dirty(t),
                        Action::Vmap { map, .. } => {
                            old.maps.get(map) != new.maps.get(map)
                                || new.maps.get(map).into_iter().flat_map(|m| m.elements.values()).any(|v| matches!(v, Verdict::Jump(t) if self.dirty(t)))
                        }
                        _ => false,
                    }
            }),
            _ => true,
        };
        self.dirty.insert(name.to_string(), d);
        d
    }
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

    /// Deltas go through the incremental engine and commit what the full
    /// path compiles, the kernel included; a refused one is recovered.
    #[test]
    fn deltas_through_the_engine_commit_the_full_compile() {
        let k = Shared::default();
        let mut dp = NftDataplane::new("n1", Box::new(k.clone()));
        dp.sync(&cluster(""), true).unwrap();
        assert!(dp.engine.is_some(), "a full sync builds the engine");
        let deny_b = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}}\n";
        let steps = [
            pod("c", "n1", "10.0.1.3", "b"),
            format!("{}{}", pod("c", "n1", "10.0.1.3", "b"), pod("d", "n2", "10.0.2.4", "b")),
            format!("{}{deny_b}", pod("d", "n2", "10.0.2.4", "a")),
            String::new(),
        ];
        for (i, extra) in steps.iter().enumerate() {
            if i == 2 {
                k.0.lock().unwrap().fail_next(Reason::Busy);
                assert!(dp.sync(&cluster(extra), false).is_err());
                assert!(dp.engine.is_none(), "a refused delta drops the engine");
            }
            let r = dp.sync(&cluster(extra), false).unwrap();
            assert!(dp.engine.is_some(), "step {i}");
            assert_eq!(dp.committed(), Some(&program(extra)), "step {i}");
            assert_eq!(k.0.lock().unwrap().table(TABLE), dp.committed(), "step {i}");
            if i < 2 {
                assert_eq!(r.ops, r.element_ops, "step {i}: pod churn is element operations");
            }
        }
    }

    /// Deltas from the index's changed objects alone (no snapshot) commit
    /// what the full path compiles, and the cut's scope read from the
    /// transaction covers what comparing the two programs finds.
    #[test]
    fn deltas_from_changed_objects_commit_the_full_compile() {
        let k = Shared::default();
        let mut dp = NftDataplane::new("n1", Box::new(k.clone()));
        let mut ix = crate::agent::Index::default();
        ix.replace(cluster(""));
        ix.take_changes();
        dp.sync(&cluster(""), true).unwrap();
        let deny_b = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}}\n";
        // Cluster policies of both tiers, with a pod added and one changed
        // while they are in force.
        let cnp = |app: &str| {
            format!(
                "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: guard}}\nspec: {{tier: Admin, priority: 10, \
                 subject: {{namespaces: {{}}}}, ingress: [{{action: Deny, from: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: {app}}}}}}}}}]}}], \
                 egress: [{{action: Pass, to: [{{nodes: {{}}}}]}}]}}\n"
            )
        };
        let banp = "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}\n";
        let steps = [
            pod("c", "n1", "10.0.1.3", "b"),
            format!("{}{}", pod("c", "n1", "10.0.1.3", "b"), pod("d", "n2", "10.0.2.4", "b")),
            format!("{}{deny_b}", pod("d", "n2", "10.0.2.4", "a")),
            deny_b.to_string(),
            String::new(),
            format!("{}{banp}", cnp("d")),
            format!("{}{banp}{}", cnp("d"), pod("d", "n2", "10.0.2.4", "d")),
            format!("{}{banp}{}", cnp("d"), pod("d", "n2", "10.0.2.4", "e")),
            format!("{}{}", cnp("e"), pod("d", "n2", "10.0.2.4", "e")),
            String::new(),
        ];
        let mut before = program("");
        for (i, extra) in steps.iter().enumerate() {
            ix.replace(cluster(extra));
            assert!(dp.takes_changes(), "step {i}");
            let r = dp.sync_changes(&ix.take_changes()).expect("the engine takes it").unwrap();
            if i == 6 || i == 7 {
                assert_eq!(r.ops, r.element_ops, "step {i}: pod churn under cluster policies is element operations");
            }
            let want = program(extra);
            if i == 5 {
                assert!(["cnp_ing_admin", "cnp_egr_admin", "cnp_ing_baseline"].iter().all(|c| want.chains.contains_key(*c)), "{want}");
            }
            assert_eq!(dp.committed(), Some(&want), "step {i}");
            assert_eq!(k.0.lock().unwrap().table(TABLE), Some(&want), "step {i}");
            let scope = r.changes.unwrap().scope;
            match (affected(&before, &want), &scope) {
                (_, Scope::All) => {}
                (Scope::Addrs(need), Scope::Addrs(got)) => assert!(need.is_subset(got), "step {i}: {need:?} within {got:?}"),
                (Scope::All, got) => panic!("step {i}: everything is affected, the delta says {got:?}"),
            }
            before = want;
        }
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
        // The engine took the change: what the kernel holds is no longer
        // known here, and the next sync replaces the table.
        assert_eq!(dp.committed(), None);
        assert_eq!(k.0.lock().unwrap().table(TABLE).cloned(), before);
        dp.sync(&c2, false).unwrap();
        assert_eq!(k.0.lock().unwrap().table(TABLE), dp.committed());
    }

    fn program(extra: &str) -> Program {
        let c = cluster(extra);
        nft::compile(&c, &crate::ir::resolve(&c), "n1")
    }

    fn pod(name: &str, node: &str, ip: &str, app: &str) -> String {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}}}\nstatus: {{podIP: {ip}}}\n")
    }

    #[test]
    fn affected_addresses_of_a_change() {
        let check = |from: &str, to: &str, expected: &[&str]| {
            let got = affected(&program(from), &program(to));
            let want = Scope::Addrs(expected.iter().map(|s| s.parse().unwrap()).collect());
            assert_eq!(got, want, "{from:?} -> {to:?}");
        };
        check("", "", &[]);
        // A remote pod joins x/a's allowed peers: a's verdicts read that set.
        check("", &pod("b2", "n2", "10.0.2.9", "b"), &["10.0.1.1"]);
        // A remote pod no local verdict reads: nothing.
        check("", &pod("z", "n2", "10.0.2.10", "z"), &[]);
        // A local pod appears: its own dispatch changed.
        check("", &pod("c", "n1", "10.0.1.3", "z"), &["10.0.1.3"]);
        check(&pod("c", "n1", "10.0.1.3", "z"), "", &["10.0.1.3"]);
        // x/b isolated too: its dispatch verdict changed.
        let deny_b = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}}\n";
        check("", deny_b, &["10.0.1.2"]);
    }

    #[test]
    fn a_change_every_packet_crosses_affects_everything() {
        let old = program("");
        let mut new = old.clone();
        let base = new.chains.values_mut().find(|c| c.base.is_some()).unwrap();
        base.rules.insert(0, nft::Rule::verdict(vec![], nft::Verdict::Drop));
        assert_eq!(affected(&old, &new), Scope::All);
    }

    #[test]
    fn sets_read_by_every_packet_affect_their_elements() {
        use crate::model::Family;
        use crate::nft::program::{AddrField, BaseHook, ChainPolicy, Hook, KeyType, Rule, Set};
        // `ip saddr @blocked drop` on a base chain: an element's change is its address's.
        let with = |elements: &[&str], interval: bool| {
            let mut p = Program::new(TABLE);
            let elements = elements
                .iter()
                .map(|e| if interval { Element::Net(e.parse().unwrap()) } else { Element::Addr(e.parse().unwrap()) })
                .collect();
            p.add_set(Set::of("blocked".to_string(), KeyType::Addr(Family::IPv4), interval, elements));
            let m = Match::Addr { family: Family::IPv4, field: AddrField::Saddr, negate: false, rhs: AddrMatch::Set("blocked".into()) };
            p.add_chain(nft::Chain {
                name: "c".into(),
                base: Some(BaseHook { hook: Hook::Postrouting, priority: 0, policy: ChainPolicy::Accept }),
                rules: vec![Rule::verdict(vec![m], Verdict::Drop)],
            });
            p
        };
        let addrs = |v: &[&str]| Scope::Addrs(v.iter().map(|s| s.parse().unwrap()).collect());
        assert_eq!(affected(&with(&["10.0.0.1", "10.0.0.2"], false), &with(&["10.0.0.2", "10.0.0.3"], false)), addrs(&["10.0.0.1", "10.0.0.3"]));
        assert_eq!(affected(&with(&["10.0.0.0/24"], true), &with(&["10.0.1.0/24"], true)), Scope::All);
    }

    /// A local pod's hairpin pair is read by every group chain; its change
    /// is still that pod's alone, not every isolated pod's.
    #[test]
    fn a_hairpin_pair_affects_its_own_pod_only() {
        let one = |s: &str| Scope::Addrs([s.parse().unwrap()].into());
        // x/c is isolated by the same policy as x/a: the same group chain.
        let c = pod("c", "n1", "10.0.1.3", "a");
        assert_eq!(affected(&program(""), &program(&c)), one("10.0.1.3"));
        assert_eq!(affected(&program(&c), &program("")), one("10.0.1.3"));
        let mut dp = NftDataplane::new("n1", Box::new(FakeKernel::default()));
        dp.sync(&cluster(""), true).unwrap();
        for (extra, ip) in [(c.clone(), "10.0.1.3"), (pod("c", "n1", "10.0.1.4", "a"), "10.0.1.4"), (String::new(), "10.0.1.4")] {
            let r = dp.sync(&cluster(&extra), false).unwrap();
            let tx_pairs = r.changes.as_ref().unwrap().new.sets["hairpin4"].elements.len();
            assert_eq!(tx_pairs, if extra.is_empty() { 2 } else { 3 });
            let scope = r.changes.unwrap().scope;
            let Scope::Addrs(got) = &scope else { panic!("{scope:?}") };
            assert!(got.contains(&ip.parse().unwrap()) && !got.contains(&"10.0.1.1".parse().unwrap()), "{extra}: {scope:?}");
        }
    }

    #[test]
    fn a_sync_reports_the_programs_before_and_after() {
        let mut dp = NftDataplane::new("n1", Box::new(FakeKernel::default()));
        let first = dp.sync(&cluster(""), true).unwrap().changes.unwrap();
        assert_eq!((first.node.as_str(), &first.scope), ("n1", &Scope::All));
        drop(first);
        let second = dp.sync(&cluster(&pod("c", "n1", "10.0.1.3", "z")), false).unwrap().changes.unwrap();
        assert_eq!(second.scope, Scope::Addrs(["10.0.1.3".parse().unwrap()].into()));
        assert_eq!(dp.committed(), Some(&*second.new));
    }
}
