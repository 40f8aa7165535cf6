//! Incremental compilation: one node's program kept in step with the
//! cluster one object at a time, equal byte for byte to what
//! [`super::compile`] gives for the whole cluster.
//!
//! The full path resolves every selector of the cluster and compiles the
//! node's program from scratch: most of a second at 100k pods, for a change
//! that usually touches a few set elements. The program's layout is what
//! makes a cheaper path possible: rule chains read a policy alone (who a
//! selector means is a set's elements, never a rule), cluster-policy tier
//! chains read the cluster policies alone (subjects, peers and nodes are
//! sets too), group chains read a list of policy names, and pods and nodes
//! appear only as set and map elements. So [`Incremental`] keeps, beside
//! the program, what each part of it was made from and who uses it:
//!
//! - every object it was told about (namespaces, nodes, pods, policies,
//!   cluster policies);
//! - the live parts of the program, reference counted: group chains (used
//!   by local pods), rule chains (used by groups; built when they become
//!   live by [`super::compile::policy_chain`], the full path's own code),
//!   tier chains (built by [`super::compile::tier_chain`], likewise), sets
//!   (used by rule and tier chains; a named-port set is shared by both),
//!   the elements more than one pod or node gives (two pods can claim one
//!   address), and the local pods claiming each address (the last by
//!   namespace/name decides the dispatch, as in the full path);
//! - live selector sets (NetworkPolicy peers, cluster-policy subjects and
//!   `namespaces`/`pods` peers) indexed by the namespace they are confined
//!   to, or as reaching namespaces by selector (matched once per namespace
//!   and cached until a namespace or such a set changes), and live `nodes`
//!   peer sets.
//!
//! One change then costs (n: pods, p: policies of the cluster):
//! - a pod added, deleted or changed: a selector match per live set that
//!   reaches its namespace (cluster-policy subject and peer sets included)
//!   and per live named-port set, and, for a pod of this node, a
//!   podSelector match per policy of its namespace; set and map elements
//!   only. Independent of n and p; grows with the live sets reaching the
//!   pod's namespace, a few per cluster policy at most.
//! - a policy added, changed or deleted: its rule chains rebuilt, the group
//!   chains naming it rebuilt, and every local pod of its namespace matched
//!   against the namespace's policies; a set that becomes live is filled by
//!   a scan of the pods in its scope (what the transaction carries anyway).
//! - a namespace relabelled: each live set with a namespaceSelector is
//!   matched against it, and the pods of the namespace against those whose
//!   answer changed.
//! - a node added, changed or deleted: a selector match per live `nodes`
//!   peer set (elements only); this node's, its base chains rebuilt too.
//! - a cluster policy added, changed or deleted: the chain of each tier and
//!   direction it had or has rules in rebuilt from that tier's policies
//!   (rules grow with policies, never with pods); a set that becomes live
//!   is filled by a scan of the pods of the namespaces it reaches (or of
//!   the nodes); when an Admin chain appears or goes, that direction's
//!   base chains; when a Baseline chain does, the dispatch element of
//!   every local pod no NetworkPolicy isolates (O(local pods)).
//!
//! Each change is applied whole (state, program and a journal of what it
//! touched), so [`Incremental::commit`] gives exactly the transaction
//! [`super::diff`] gives between the two programs, computed from the
//! touched objects only (old and new as small programs: a set's elements
//! added and removed, not the set). Acquiring comes before releasing
//! (a changed policy's new sets before its old ones), so what stays in use
//! is never rebuilt.
//!
//! Exactness is the contract, and the full path is the reference: a
//! property test (tests at the bottom) replays random event sequences
//! both ways and compares the programs byte for byte and the transactions
//! after every step. The one thing this engine cannot reproduce is the
//! order-dependent naming of two set definitions whose 48-bit name hashes
//! collide: it detects that (and two policies or two groups sharing a
//! chain name) and says so ([`Incremental::commit`] gives `None`); the
//! caller then takes the full path.
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::compile::{
    self, add_chain, base_rules, group_name, group_rules, hairpin_set_name, map_name, named_port_element, named_port_member, node_elements, node_of, policy_chain,
    selected_member, tier_chain, tier_chain_name, Fill, Names, PolicyChain, SetRef, BASES, FAMILIES,
};
use super::counters::Origins;
use super::program::{Chain, Element, KeyType, Map, Program, Set, Verdict};
use super::Transaction;
use crate::ir::policy_selects;
use crate::ir::PeerKey;
use crate::model::cluster_policy::{ClusterKind, Tier};
use crate::model::{Cluster, ClusterPolicy, Direction, Family, Namespace, Node, Pod, Policy};
use crate::selector::Labels;

/// (namespace, name) of a pod or a policy.
type Ref = (String, String);

fn di(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Cluster policies by tier: Admin, Baseline.
const TIERS: [Tier; 2] = [Tier::Admin, Tier::Baseline];

fn ti(tier: Tier) -> usize {
    match tier {
        Tier::Admin => 0,
        Tier::Baseline => 1,
    }
}

/// A set filled from pods by a selector: its family, its selector, and
/// whether only this node's pods count.
fn selector_fill(fill: &Fill) -> Option<(Family, &PeerKey, bool)> {
    match fill {
        Fill::Pods { family, key, .. } => Some((*family, key, false)),
        Fill::Selected { family, key, local } => Some((*family, key, *local)),
        Fill::Nets(_) | Fill::NamedPort { .. } | Fill::Nodes { .. } => None,
    }
}

fn key_string(r: &Ref) -> String {
    format!("{}/{}", r.0, r.1)
}

/// One node's program, kept in step with the cluster change by change.
pub struct Incremental {
    node: String,
    namespaces: BTreeMap<String, Namespace>,
    /// Every node: this one's pod CIDRs fail closed, and cluster policies'
    /// `nodes` peers read them all.
    nodes: BTreeMap<String, Node>,
    /// Cluster-scoped policies by kind and name (the judging order is
    /// [`ClusterPolicy::order_key`], applied when a tier chain is built).
    cluster_policies: BTreeMap<(ClusterKind, String), ClusterPolicy>,
    /// The live tier chains, by tier and direction: the sets each holds
    /// one use of (`None`: no chain).
    tiers: [[Option<Vec<String>>; 2]; 2],
    /// Shared with whoever handed them in (the agent's index).
    pods: BTreeMap<String, BTreeMap<String, Arc<Pod>>>,
    policies: BTreeMap<String, BTreeMap<String, PolicyState>>,
    /// Policy pods of this node: their group chain per direction (`None`:
    /// not isolated).
    local: BTreeMap<Ref, [Option<String>; 2]>,
    /// The local pods claiming each address.
    owners: HashMap<IpAddr, BTreeSet<Ref>>,
    groups: HashMap<String, Group>,
    chains: HashMap<String, LiveChain>,
    sets: HashMap<String, LiveSet>,
    /// Live selector sets without a namespaceSelector, by their namespace.
    own_sets: HashMap<String, BTreeSet<String>>,
    /// Live selector sets with a namespaceSelector.
    ns_sets: BTreeSet<String>,
    /// Live named-port sets.
    np_sets: BTreeSet<String>,
    /// Live node-address sets (cluster policies' `nodes` peers).
    node_sets: BTreeSet<String>,
    /// Of `ns_sets`, those reaching each namespace (a cache).
    reach: HashMap<String, Vec<String>>,
    /// Shared with the dataplane's report of the sync (the conntrack cut
    /// reads it) and copied on write, which never happens in practice: the
    /// cut is done before the next change.
    program: Arc<Program>,
    origins: Origins,
    journal: Journal,
    /// A name collision the full path resolves by order (see the module
    /// doc): the program here is no longer exact.
    collided: bool,
}

struct PolicyState {
    /// Shared with whoever handed it in (the agent's index).
    policy: Arc<Policy>,
}

impl PolicyState {
    /// Rule chains are built when they become live, not here: a node's
    /// program holds a few hundred of the cluster's 10k policies.
    fn new(policy: Arc<Policy>) -> (PolicyState, bool) {
        (PolicyState { policy }, false)
    }
}

struct Group {
    dir: Direction,
    keys: Vec<Ref>,
    users: usize,
    /// The rule chains it jumps to (each holds one use of them).
    chains: Vec<String>,
}

struct LiveChain {
    policy: Ref,
    users: usize,
    sets: Vec<String>,
}

struct LiveSet {
    def: String,
    fill: Fill,
    users: usize,
    /// Elements given by more than one pod, with the number of pods
    /// beyond the first (the program's set says which are present).
    extra: HashMap<Element, u32>,
}

/// A part of the program that stays while anything uses it.
trait Used {
    fn users(&mut self) -> &mut usize;
}

impl Used for Group {
    fn users(&mut self) -> &mut usize {
        &mut self.users
    }
}

impl Used for LiveChain {
    fn users(&mut self) -> &mut usize {
        &mut self.users
    }
}

impl Used for LiveSet {
    fn users(&mut self) -> &mut usize {
        &mut self.users
    }
}

/// One use fewer of `name`: the part, taken out, when that was the last.
fn release<T: Used>(parts: &mut HashMap<String, T>, name: &str) -> Option<T> {
    let users = parts.get_mut(name)?.users();
    *users = users.saturating_sub(1);
    if *users > 0 {
        return None;
    }
    parts.remove(name)
}

/// What a batch of changes touched, as it was before the batch.
#[derive(Default)]
struct Journal {
    sets: HashMap<String, SetBefore>,
    /// Map elements: their value before the batch.
    maps: HashMap<String, HashMap<Element, Option<Verdict>>>,
    chains: HashMap<String, Option<Chain>>,
}

enum SetBefore {
    /// Did not exist.
    Absent,
    /// Existed, and still does: the elements added and removed since.
    Present { added: BTreeSet<Element>, removed: BTreeSet<Element> },
    /// Existed as this, then was deleted (and may exist again).
    Replaced(Set),
}

impl Journal {
    fn set_created(&mut self, name: &str) {
        self.sets.entry(name.to_string()).or_insert(SetBefore::Absent);
    }

    fn set_element(&mut self, name: &str, e: Element, add: bool) {
        let j = self.sets.entry(name.to_string()).or_insert_with(|| SetBefore::Present { added: BTreeSet::new(), removed: BTreeSet::new() });
        if let SetBefore::Present { added, removed } = j {
            let (this, other) = if add { (added, removed) } else { (removed, added) };
            if !other.remove(&e) {
                this.insert(e);
            }
        }
    }

    fn set_deleted(&mut self, mut set: Set) {
        let name = set.name.clone();
        let before = match self.sets.remove(&name) {
            None => SetBefore::Replaced(set),
            Some(SetBefore::Absent) => return,
            Some(SetBefore::Present { added, removed }) => {
                for e in &added {
                    set.elements.remove(e);
                }
                set.elements.extend(removed);
                SetBefore::Replaced(set)
            }
            Some(r @ SetBefore::Replaced(_)) => r,
        };
        self.sets.insert(name, before);
    }

    fn map_element(&mut self, map: &str, e: Element, old: Option<Verdict>) {
        self.maps.entry(map.to_string()).or_default().entry(e).or_insert(old);
    }

    fn chain(&mut self, program: &Program, name: &str) {
        if !self.chains.contains_key(name) {
            self.chains.insert(name.to_string(), program.chains.get(name).cloned());
        }
    }
}

/// The labels namespace `ns` is matched by: its own, or (for a namespace
/// only pods or policies name) the name label alone, as
/// [`Cluster::normalize`] gives it.
/// Sorted by namespace and name, without duplicates: what
/// [`Cluster::normalize`] makes, and [`Incremental::update_to`] walks.
fn is_normalized(c: &Cluster) -> bool {
    c.pods.windows(2).all(|w| (&w[0].namespace, &w[0].name) < (&w[1].namespace, &w[1].name))
        && c.policies.windows(2).all(|w| (&w[0].namespace, &w[0].name) < (&w[1].namespace, &w[1].name))
        && c.cluster_policies.windows(2).all(|w| (w[0].order_key(), w[0].kind) < (w[1].order_key(), w[1].kind))
}

/// What changed from `held` to `now`, both sorted by key without
/// duplicates: `Some` for an object added or changed, `None` for one gone.
fn changes<'a, T: PartialEq + Clone + 'a>(
    held: impl Iterator<Item = ((&'a str, &'a str), &'a T)>,
    now: impl Iterator<Item = ((&'a str, &'a str), &'a T)>,
) -> Vec<(Ref, Option<T>)> {
    let own = |(ns, n): (&str, &str)| (ns.to_string(), n.to_string());
    let (mut held, mut now) = (held.peekable(), now.peekable());
    let mut out = Vec::new();
    loop {
        let order = match (held.peek(), now.peek()) {
            (None, None) => break,
            (Some((h, _)), Some((n, _))) => h.cmp(n),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((k, _)) = held.next() {
                    out.push((own(k), None));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((k, v)) = now.next() {
                    out.push((own(k), Some(v.clone())));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((_, h)), Some((k, v))) = (held.next(), now.next()) {
                    if h != v {
                        out.push((own(k), Some(v.clone())));
                    }
                }
            }
        }
    }
    out
}

/// What turns `old` into `new`, by key: each entry changed or added (with
/// its new value) and each removed (`None`). Collected, so the caller may
/// then change the map `old` borrows from.
fn map_changes<V: PartialEq + Clone>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> Vec<(String, Option<V>)> {
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .chain(old.keys().filter(|k| !new.contains_key(*k)).map(|k| (k.clone(), None)))
        .collect()
}

fn labels_of(namespaces: &BTreeMap<String, Namespace>, ns: &str) -> Labels {
    match namespaces.get(ns) {
        Some(n) => n.labels.clone(),
        None => Namespace::new(ns, Labels::new()).labels,
    }
}

impl Incremental {
    /// The engine for `node`, holding `cluster` (normalized, as every
    /// `Cluster` the loader or the agent's index gives). Costs about what a
    /// full compile does.
    pub fn new(cluster: &Cluster, node: &str) -> Incremental {
        let mut e = Incremental {
            node: node.to_string(),
            namespaces: cluster.namespaces.clone(),
            nodes: cluster.nodes.clone(),
            cluster_policies: cluster.cluster_policies.iter().map(|p| ((p.kind, p.name.clone()), p.clone())).collect(),
            tiers: Default::default(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            local: BTreeMap::new(),
            owners: HashMap::new(),
            groups: HashMap::new(),
            chains: HashMap::new(),
            sets: HashMap::new(),
            own_sets: HashMap::new(),
            ns_sets: BTreeSet::new(),
            np_sets: BTreeSet::new(),
            node_sets: BTreeSet::new(),
            reach: HashMap::new(),
            program: Arc::new(Program::default()),
            origins: Origins::new(),
            journal: Journal::default(),
            collided: false,
        };
        for f in FAMILIES {
            Arc::make_mut(&mut e.program).add_set(Set::of(hairpin_set_name(f), KeyType::AddrPair(f), false, BTreeSet::new()));
        }
        for dir in Direction::BOTH {
            for f in FAMILIES {
                Arc::make_mut(&mut e.program).add_map(Map { name: map_name(dir, f), key: KeyType::Addr(f), elements: BTreeMap::new() });
            }
            let rules = base_rules(dir, e.nodes.get(node), None);
            for b in BASES.iter().filter(|b| b.dir == dir) {
                add_chain(Arc::make_mut(&mut e.program), &mut e.origins, b.name.to_string(), Some(compile::base_hook(b)), rules.clone());
            }
        }
        let (rules, base) = compile::antispoof();
        add_chain(Arc::make_mut(&mut e.program), &mut e.origins, compile::ANTISPOOF.to_string(), Some(base), rules);
        for p in &cluster.policies {
            let (state, collided) = PolicyState::new(p.clone());
            e.collided |= collided;
            e.policies.entry(p.namespace.clone()).or_default().insert(p.name.clone(), state);
        }
        // Every pod first, so that a set made live fills from all of them.
        for p in &cluster.pods {
            e.pods.entry(p.namespace.clone()).or_default().insert(p.name.clone(), p.clone());
        }
        // Tier chains before local pods: their dispatch reads the Baseline's.
        for tier in TIERS {
            for dir in Direction::BOTH {
                e.refresh_tier(tier, dir);
            }
        }
        let local: Vec<Ref> = cluster.pods.iter().filter(|p| e.is_local(p)).map(|p| (p.namespace.clone(), p.name.clone())).collect();
        for r in local {
            e.local_added(&r);
        }
        e.journal = Journal::default();
        e
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The program as of the last change (table `netfence`).
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The same program, shared rather than copied: hold it only until the
    /// next change (a change made while it is held copies the program).
    pub fn program_shared(&self) -> Arc<Program> {
        self.program.clone()
    }

    /// What each counted rule of [`Incremental::program`] measures.
    pub fn origins(&self) -> &Origins {
        &self.origins
    }

    /// Is [`Incremental::program`] what the full path gives? False only
    /// after a name collision (see the module doc).
    pub fn is_exact(&self) -> bool {
        !self.collided
    }

    fn is_local(&self, p: &Pod) -> bool {
        p.is_policy_pod() && node_of(p) == self.node
    }

    /// A pod was added or changed (`Some`), or deleted (`None`).
    pub fn set_pod(&mut self, namespace: &str, name: &str, pod: Option<Pod>) {
        self.set_pod_shared(namespace, name, pod.map(Arc::new))
    }

    /// [`Incremental::set_pod`] with a pod the engine shares rather than
    /// copies (the agent's index holds the same).
    pub fn set_pod_shared(&mut self, namespace: &str, name: &str, pod: Option<Arc<Pod>>) {
        let old = self.pods.get(namespace).and_then(|m| m.get(name));
        if old == pod.as_ref() {
            return;
        }
        let r: Ref = (namespace.to_string(), name.to_string());
        let old = match self.pods.get_mut(namespace) {
            Some(m) => {
                let old = m.remove(name);
                if m.is_empty() {
                    self.pods.remove(namespace);
                }
                old
            }
            None => None,
        };
        if let Some(o) = &old {
            self.pod_elements(o, false);
        }
        let was_local = old.as_ref().is_some_and(|o| self.is_local(o));
        let Some(new) = pod else {
            if was_local {
                self.local_removed(&r, old.map(|o| o.ips.clone()).unwrap_or_default());
            }
            return;
        };
        self.pod_elements(&new, true);
        let now_local = self.is_local(&new);
        let new_ips = new.ips.clone();
        self.pods.entry(r.0.clone()).or_default().insert(r.1.clone(), new);
        match (was_local, now_local) {
            (false, false) => {}
            (false, true) => self.local_added(&r),
            (true, false) => self.local_removed(&r, old.map(|o| o.ips.clone()).unwrap_or_default()),
            (true, true) => {
                let old_ips = old.map(|o| o.ips.clone()).unwrap_or_default();
                for ip in &old_ips {
                    self.disown(*ip, &r);
                }
                for ip in &new_ips {
                    self.owners.entry(*ip).or_default().insert(r.clone());
                }
                self.isolate(&r);
                let ips: BTreeSet<IpAddr> = old_ips.into_iter().chain(new_ips).collect();
                self.dispatch(&ips);
            }
        }
    }

    /// A namespace was added or changed (`Some`), or deleted (`None`).
    pub fn set_namespace(&mut self, name: &str, ns: Option<Namespace>) {
        let before = labels_of(&self.namespaces, name);
        match ns {
            Some(n) => {
                self.namespaces.insert(name.to_string(), n);
            }
            None => {
                self.namespaces.remove(name);
            }
        }
        let after = labels_of(&self.namespaces, name);
        if before == after {
            return;
        }
        self.reach.clear();
        let mut changes = Vec::new();
        for set in &self.ns_sets {
            let Some((family, key, local)) = self.sets.get(set).and_then(|s| selector_fill(&s.fill)) else { continue };
            let (was, is) = (key.reaches(name, Some(&before)), key.reaches(name, Some(&after)));
            if was == is {
                continue;
            }
            for pod in self.pods.get(name).into_iter().flat_map(|m| m.values()) {
                if selected_member(pod, local, &self.node) && key.selects_in_scope(pod) {
                    if let Some(ip) = pod.ip(family) {
                        changes.push((set.clone(), Element::Addr(ip), is));
                    }
                }
            }
        }
        for (set, e, add) in changes {
            self.count(&set, e, add);
        }
    }

    /// A node was added or changed (`Some`), or deleted (`None`). This
    /// node's pod CIDRs fail closed (its base chains); any node's addresses
    /// are elements of the live `nodes` peer sets its labels match.
    pub fn set_node(&mut self, name: &str, node: Option<Node>) {
        if self.nodes.get(name) == node.as_ref() {
            return;
        }
        let old = match node {
            Some(n) => self.nodes.insert(name.to_string(), n),
            None => self.nodes.remove(name),
        };
        let mut changes = Vec::new();
        for set in &self.node_sets {
            let Some(Fill::Nodes { family, selector }) = self.sets.get(set).map(|s| &s.fill) else { continue };
            changes.extend(old.iter().flat_map(|n| node_elements(n, *family, selector)).map(|e| (set.clone(), e, false)));
            changes.extend(self.nodes.get(name).into_iter().flat_map(|n| node_elements(n, *family, selector)).map(|e| (set.clone(), e, true)));
        }
        // Removals first: an address both nodes give stays.
        for (set, e, add) in changes {
            self.count(&set, e, add);
        }
        if name == self.node {
            for dir in Direction::BOTH {
                self.rebuild_bases(dir);
            }
        }
    }

    /// The base chains of `dir`, from this node and the Admin tier's chain.
    fn rebuild_bases(&mut self, dir: Direction) {
        let admin = self.tiers[ti(Tier::Admin)][di(dir)].is_some().then(|| tier_chain_name(Tier::Admin, dir));
        let rules = base_rules(dir, self.nodes.get(&self.node), admin.as_deref());
        for b in BASES.iter().filter(|b| b.dir == dir) {
            self.journal.chain(&self.program, b.name);
            add_chain(Arc::make_mut(&mut self.program), &mut self.origins, b.name.to_string(), Some(compile::base_hook(b)), rules.clone());
        }
    }

    /// A cluster-scoped policy (ClusterNetworkPolicy, ANP, BANP) was added
    /// or changed (`Some`), or deleted (`None`).
    pub fn set_cluster_policy(&mut self, kind: ClusterKind, name: &str, policy: Option<ClusterPolicy>) {
        let k = (kind, name.to_string());
        if self.cluster_policies.get(&k) == policy.as_ref() {
            return;
        }
        let new = policy.clone();
        let old = match policy {
            Some(p) => self.cluster_policies.insert(k, p),
            None => self.cluster_policies.remove(&k),
        };
        // Only the tier chains it had or has rules in are rebuilt.
        for tier in TIERS {
            for dir in Direction::BOTH {
                let touches = |p: &Option<ClusterPolicy>| p.as_ref().is_some_and(|p| p.tier == tier && !p.rules(dir).is_empty());
                if touches(&old) || touches(&new) {
                    self.refresh_tier(tier, dir);
                }
            }
        }
    }

    /// Rebuild the chain of `tier` in `dir` from the cluster policies (its
    /// new sets used before the old ones are let go), and what reads
    /// whether it exists: the base chains (Admin) or the dispatch of pods
    /// no NetworkPolicy isolates (Baseline).
    fn refresh_tier(&mut self, tier: Tier, dir: Direction) {
        let mut policies: Vec<&ClusterPolicy> = self.cluster_policies.values().collect();
        policies.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let mut names = Names::default();
        let chain = tier_chain(&mut names, tier, dir, policies);
        self.collided |= names.collided;
        let name = tier_chain_name(tier, dir);
        let existed = self.tiers[ti(tier)][di(dir)].is_some();
        let old = match chain {
            Some(c) => {
                for s in &c.sets {
                    self.set_use(s);
                }
                self.journal.chain(&self.program, &c.name);
                add_chain(Arc::make_mut(&mut self.program), &mut self.origins, c.name, None, c.rules);
                self.tiers[ti(tier)][di(dir)].replace(c.sets.into_iter().map(|s| s.name).collect())
            }
            None => {
                let old = self.tiers[ti(tier)][di(dir)].take();
                if old.is_some() {
                    self.remove_chain(&name);
                }
                old
            }
        };
        for s in old.into_iter().flatten() {
            self.set_unuse(&s);
        }
        if existed == self.tiers[ti(tier)][di(dir)].is_some() {
            return;
        }
        match tier {
            Tier::Admin => self.rebuild_bases(dir),
            Tier::Baseline => {
                let ips: BTreeSet<IpAddr> = self.owners.keys().copied().collect();
                self.dispatch(&ips);
            }
        }
    }

    /// A policy was added or changed (`Some`), or deleted (`None`).
    pub fn set_policy(&mut self, namespace: &str, name: &str, policy: Option<Policy>) {
        self.set_policy_shared(namespace, name, policy.map(Arc::new))
    }

    /// [`Incremental::set_policy`] with a policy the engine shares rather
    /// than copies.
    pub fn set_policy_shared(&mut self, namespace: &str, name: &str, policy: Option<Arc<Policy>>) {
        let old = self.policies.get(namespace).and_then(|m| m.get(name)).map(|s| &s.policy);
        if old == policy.as_ref() {
            return;
        }
        let r: Ref = (namespace.to_string(), name.to_string());
        match policy {
            Some(p) => {
                let (state, collided) = PolicyState::new(p);
                self.collided |= collided;
                self.policies.entry(r.0.clone()).or_default().insert(r.1.clone(), state);
            }
            None => {
                if let Some(m) = self.policies.get_mut(namespace) {
                    m.remove(name);
                    if m.is_empty() {
                        self.policies.remove(namespace);
                    }
                }
            }
        }
        // Its live rule chains take the new rules (new sets first), the
        // groups naming it the new jumps, then the local pods of its
        // namespace the new isolation.
        for dir in Direction::BOTH {
            self.refresh_chain(&r, dir);
        }
        let mut named: Vec<String> = self.groups.iter().filter(|(_, g)| g.keys.contains(&r)).map(|(n, _)| n.clone()).collect();
        named.sort();
        for g in named {
            self.regroup(&g);
        }
        let pods: Vec<Ref> = self.local.range((r.0.clone(), String::new())..).take_while(|(k, _)| k.0 == r.0).map(|(k, _)| k.clone()).collect();
        for p in pods {
            let ips: BTreeSet<IpAddr> = self.pod(&p).map(|p| p.ips.iter().copied().collect()).unwrap_or_default();
            self.isolate(&p);
            self.dispatch(&ips);
        }
    }

    /// Bring the engine to `cluster`, finding what changed by walking it
    /// beside what the engine holds (both sorted by namespace and name):
    /// O(objects) comparisons, most of them a pointer (labels and port
    /// lists are interned), then each change as above.
    pub fn update_to(&mut self, cluster: &Cluster) {
        if !is_normalized(cluster) {
            let mut c = cluster.clone();
            c.normalize();
            return self.update_to(&c);
        }
        for (n, v) in map_changes(&self.namespaces, &cluster.namespaces) {
            self.set_namespace(&n, v);
        }
        for (n, v) in map_changes(&self.nodes, &cluster.nodes) {
            self.set_node(&n, v);
        }
        // Cluster policies: few, compared whole.
        let now: BTreeMap<(ClusterKind, &str), &ClusterPolicy> = cluster.cluster_policies.iter().map(|p| ((p.kind, p.name.as_str()), p)).collect();
        let gone: Vec<(ClusterKind, String)> = self.cluster_policies.keys().filter(|(k, n)| !now.contains_key(&(*k, n.as_str()))).cloned().collect();
        for (k, n) in gone {
            self.set_cluster_policy(k, &n, None);
        }
        for ((k, n), p) in now {
            if self.cluster_policies.get(&(k, n.to_string())) != Some(p) {
                self.set_cluster_policy(k, n, Some(p.clone()));
            }
        }
        let held = self.policies.iter().flat_map(|(ns, m)| m.iter().map(move |(n, s)| ((ns.as_str(), n.as_str()), &s.policy)));
        let policies = changes(held, cluster.policies.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), p)));
        // Deletions first: what goes frees what comes (groups, addresses).
        let (gone, changed): (Vec<_>, Vec<_>) = policies.into_iter().partition(|(_, p)| p.is_none());
        for ((ns, n), p) in gone.into_iter().chain(changed) {
            self.set_policy_shared(&ns, &n, p);
        }
        let held = self.pods.iter().flat_map(|(ns, m)| m.iter().map(move |(n, p)| ((ns.as_str(), n.as_str()), p)));
        let pods = changes(held, cluster.pods.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), p)));
        let (gone, changed): (Vec<_>, Vec<_>) = pods.into_iter().partition(|(_, p)| p.is_none());
        for ((ns, n), p) in gone.into_iter().chain(changed) {
            self.set_pod_shared(&ns, &n, p);
        }
    }

    /// The transaction from the program as of the last commit (or
    /// creation) to the current one, in table `table`: what
    /// [`super::diff`] gives between the two, computed from what the
    /// changes touched. `None` when the program is not exact (see
    /// [`Incremental::is_exact`]): take the full path.
    pub fn commit(&mut self, table: &str) -> Option<Transaction> {
        let journal = std::mem::take(&mut self.journal);
        if self.collided {
            return None;
        }
        let (mut old, mut new) = (Program::new(table), Program::new(table));
        for (name, before) in journal.sets {
            let now = self.program.sets.get(&name);
            match (before, now) {
                (SetBefore::Absent, Some(s)) => new.add_set(s.clone()),
                (SetBefore::Absent, None) => {}
                (SetBefore::Present { added, removed }, Some(s)) => {
                    old.add_set(Set::of(name.clone(), s.key, s.interval, removed));
                    new.add_set(Set::of(name, s.key, s.interval, added));
                }
                // A deletion turns `Present` into `Replaced`.
                (SetBefore::Present { .. }, None) => {}
                (SetBefore::Replaced(o), Some(s)) => {
                    old.add_set(o);
                    new.add_set(s.clone());
                }
                (SetBefore::Replaced(o), None) => old.add_set(Set::of(o.name, o.key, o.interval, BTreeSet::new())),
            }
        }
        for m in self.program.maps.values() {
            let touched = journal.maps.get(&m.name);
            let keys = touched.into_iter().flat_map(|t| t.iter());
            let before = keys.clone().filter_map(|(k, v)| Some((*k, v.clone()?))).collect();
            let after = keys.filter_map(|(k, _)| Some((*k, m.elements.get(k)?.clone()))).collect();
            old.add_map(Map { name: m.name.clone(), key: m.key, elements: before });
            new.add_map(Map { name: m.name.clone(), key: m.key, elements: after });
        }
        for (name, before) in journal.chains {
            let now = self.program.chains.get(&name);
            if before.as_ref() == now {
                continue;
            }
            if let Some(c) = before {
                old.add_chain(c);
            }
            if let Some(c) = now {
                new.add_chain(c.clone());
            }
        }
        Some(super::diff(Some(&old), &new))
    }

    fn pod(&self, r: &Ref) -> Option<&Pod> {
        self.pods.get(&r.0)?.get(&r.1).map(|p| &**p)
    }

    /// Add (or take away) what policy pod `pod` gives the live sets.
    fn pod_elements(&mut self, pod: &Pod, add: bool) {
        if !pod.is_policy_pod() {
            return;
        }
        if !self.reach.contains_key(&pod.namespace) {
            let labels = labels_of(&self.namespaces, &pod.namespace);
            let reaching = self
                .ns_sets
                .iter()
                .filter(|s| self.sets.get(*s).and_then(|s| selector_fill(&s.fill)).is_some_and(|(_, key, _)| key.reaches(&pod.namespace, Some(&labels))))
                .cloned()
                .collect();
            self.reach.insert(pod.namespace.clone(), reaching);
        }
        let own = self.own_sets.get(&pod.namespace).into_iter().flatten();
        let reaching = self.reach.get(&pod.namespace).into_iter().flatten();
        let mut changes = Vec::new();
        for name in own.chain(reaching) {
            if let Some((family, key, local)) = self.sets.get(name).and_then(|s| selector_fill(&s.fill)) {
                if let Some(ip) = pod.ip(family).filter(|_| selected_member(pod, local, &self.node) && key.selects_in_scope(pod)) {
                    changes.push((name.clone(), Element::Addr(ip)));
                }
            }
        }
        for name in &self.np_sets {
            if let Some(Fill::NamedPort { family, proto, name: port, local }) = self.sets.get(name).map(|s| &s.fill) {
                if let Some(e) = named_port_element(pod, *family, *proto, port).filter(|_| named_port_member(pod, *local, &self.node)) {
                    changes.push((name.clone(), e));
                }
            }
        }
        for (name, e) in changes {
            self.count(&name, e, add);
        }
    }

    /// One pod more (or fewer) gives `e` to live set `name`.
    fn count(&mut self, name: &str, e: Element, add: bool) {
        let (Some(set), Some(s)) = (self.sets.get_mut(name), Arc::make_mut(&mut self.program).sets.get_mut(name)) else { return };
        let changed = if add {
            let new = s.elements.insert(e);
            if !new {
                *set.extra.entry(e).or_insert(0) += 1;
            }
            new
        } else {
            match set.extra.get_mut(&e) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        set.extra.remove(&e);
                    }
                    false
                }
                None => s.elements.remove(&e),
            }
        };
        if changed {
            self.journal.set_element(name, e, add);
        }
    }

    /// A local pod, already stored, takes its place in the dispatch.
    fn local_added(&mut self, r: &Ref) {
        let ips: BTreeSet<IpAddr> = self.pod(r).map(|p| p.ips.iter().copied().collect()).unwrap_or_default();
        self.local.insert(r.clone(), [None, None]);
        for ip in &ips {
            self.owners.entry(*ip).or_default().insert(r.clone());
        }
        self.isolate(r);
        self.dispatch(&ips);
    }

    fn local_removed(&mut self, r: &Ref, ips: Vec<IpAddr>) {
        let Some(groups) = self.local.remove(r) else { return };
        for ip in &ips {
            self.disown(*ip, r);
        }
        self.dispatch(&ips.into_iter().collect());
        for g in groups.into_iter().flatten() {
            self.group_unuse(&g);
        }
    }

    fn disown(&mut self, ip: IpAddr, r: &Ref) {
        if let Some(o) = self.owners.get_mut(&ip) {
            o.remove(r);
            if o.is_empty() {
                self.owners.remove(&ip);
            }
        }
    }

    /// Set the dispatch of `ips` in both directions from their owners, and
    /// their hairpin pairs (present while a local pod holds the address).
    fn dispatch(&mut self, ips: &BTreeSet<IpAddr>) {
        for ip in ips {
            let name = hairpin_set_name(Family::of(ip));
            let e = Element::AddrPair(*ip, *ip);
            let want = self.owners.contains_key(ip);
            let Some(s) = Arc::make_mut(&mut self.program).sets.get_mut(&name) else { continue };
            let changed = if want { s.elements.insert(e) } else { s.elements.remove(&e) };
            if changed {
                self.journal.set_element(&name, e, want);
            }
        }
        for dir in Direction::BOTH {
            for ip in ips {
                let owner = self.owners.get(ip).and_then(|o| o.iter().next_back());
                let verdict = owner.and_then(|o| self.local.get(o)).map(|g| match &g[di(dir)] {
                    // Not isolated: the Baseline tier decides, when it has
                    // a chain.
                    None if self.tiers[ti(Tier::Baseline)][di(dir)].is_some() => Verdict::Jump(tier_chain_name(Tier::Baseline, dir)),
                    None => Verdict::Accept,
                    Some(name) => Verdict::Jump(name.clone()),
                });
                let map = map_name(dir, Family::of(ip));
                let Some(m) = Arc::make_mut(&mut self.program).maps.get_mut(&map) else { continue };
                let e = Element::Addr(*ip);
                let old = m.elements.get(&e).cloned();
                if old == verdict {
                    continue;
                }
                match verdict {
                    Some(v) => m.elements.insert(e, v),
                    None => m.elements.remove(&e),
                };
                self.journal.map_element(&map, e, old);
            }
        }
    }

    /// Recompute local pod `r`'s groups from the policies of its namespace
    /// (the new one used before the old one is let go).
    fn isolate(&mut self, r: &Ref) {
        for dir in Direction::BOTH {
            let keys: Vec<Ref> = match (self.pod(r), self.policies.get(&r.0)) {
                (Some(pod), Some(m)) => m
                    .iter()
                    .filter(|(_, s)| s.policy.isolates(dir) && policy_selects(&s.policy, pod))
                    .map(|(n, _)| (r.0.clone(), n.clone()))
                    .collect(),
                _ => Vec::new(),
            };
            let old = self.local.get(r).and_then(|g| g[di(dir)].clone());
            let wanted = (!keys.is_empty()).then(|| group_name(dir, &keys.iter().map(key_string).collect::<Vec<_>>()));
            if wanted == old {
                continue;
            }
            let new = (!keys.is_empty()).then(|| self.group_use(dir, keys));
            if let Some(g) = self.local.get_mut(r) {
                g[di(dir)] = new;
            }
            if let Some(o) = old {
                self.group_unuse(&o);
            }
        }
    }

    fn group_use(&mut self, dir: Direction, keys: Vec<Ref>) -> String {
        let texts: Vec<String> = keys.iter().map(key_string).collect();
        let name = group_name(dir, &texts);
        if let Some(g) = self.groups.get_mut(&name) {
            self.collided |= g.keys != keys || g.dir != dir;
            g.users += 1;
            return name;
        }
        let chains: Vec<Option<String>> = keys.iter().map(|k| self.chain_use(k, dir)).collect();
        self.journal.chain(&self.program, &name);
        add_chain(Arc::make_mut(&mut self.program), &mut self.origins, name.clone(), None, group_rules(dir, &texts, chains.iter().cloned()));
        self.groups.insert(name.clone(), Group { dir, keys, users: 1, chains: chains.into_iter().flatten().collect() });
        name
    }

    fn group_unuse(&mut self, name: &str) {
        let Some(g) = release(&mut self.groups, name) else { return };
        self.remove_chain(name);
        for c in g.chains {
            self.chain_unuse(&c);
        }
    }

    /// Rebuild group chain `name`'s jumps (a policy it names changed).
    fn regroup(&mut self, name: &str) {
        let Some((dir, keys)) = self.groups.get(name).map(|g| (g.dir, g.keys.clone())) else { return };
        let chains: Vec<Option<String>> = keys.iter().map(|k| self.chain_use(k, dir)).collect();
        let texts: Vec<String> = keys.iter().map(key_string).collect();
        self.journal.chain(&self.program, name);
        add_chain(Arc::make_mut(&mut self.program), &mut self.origins, name.to_string(), None, group_rules(dir, &texts, chains.iter().cloned()));
        let old = match self.groups.get_mut(name) {
            Some(g) => std::mem::replace(&mut g.chains, chains.into_iter().flatten().collect()),
            None => Vec::new(),
        };
        for c in old {
            self.chain_unuse(&c);
        }
    }

    /// One use more of policy `r`'s rule chain in `dir`; `None` when it has
    /// none.
    fn chain_use(&mut self, r: &Ref, dir: Direction) -> Option<String> {
        let policy = &self.policies.get(&r.0)?.get(&r.1)?.policy;
        if policy.rules(dir).is_empty() {
            return None;
        }
        let name = compile::policy_chain_name(dir, policy);
        if let Some(live) = self.chains.get_mut(&name) {
            self.collided |= live.policy != *r;
            live.users += 1;
            return Some(name);
        }
        let chain = self.build_chain(r, dir)?;
        for s in &chain.sets {
            self.set_use(s);
        }
        self.journal.chain(&self.program, &chain.name);
        add_chain(Arc::make_mut(&mut self.program), &mut self.origins, chain.name.clone(), None, chain.rules);
        let sets = chain.sets.into_iter().map(|s| s.name).collect();
        self.chains.insert(chain.name.clone(), LiveChain { policy: r.clone(), users: 1, sets });
        Some(chain.name)
    }

    fn chain_unuse(&mut self, name: &str) {
        let Some(c) = release(&mut self.chains, name) else { return };
        self.remove_chain(name);
        for s in c.sets {
            self.set_unuse(&s);
        }
    }

    /// Policy `r` changed: its live rule chain in `dir` takes the new
    /// rules (a chain it no longer has goes with the groups' jumps).
    fn refresh_chain(&mut self, r: &Ref, dir: Direction) {
        let Some(policy) = self.policies.get(&r.0).and_then(|m| m.get(&r.1)).map(|s| &s.policy) else { return };
        if self.chains.get(&compile::policy_chain_name(dir, policy)).is_none_or(|c| c.policy != *r) {
            return;
        }
        let Some(new) = self.build_chain(r, dir) else { return };
        for s in &new.sets {
            self.set_use(s);
        }
        self.journal.chain(&self.program, &new.name);
        add_chain(Arc::make_mut(&mut self.program), &mut self.origins, new.name.clone(), None, new.rules);
        let names = new.sets.into_iter().map(|s| s.name).collect();
        let old = match self.chains.get_mut(&new.name) {
            Some(c) => std::mem::replace(&mut c.sets, names),
            None => Vec::new(),
        };
        for s in old {
            self.set_unuse(&s);
        }
    }

    /// Policy `r`'s rule chain in `dir`, built with compile.rs's code.
    fn build_chain(&mut self, r: &Ref, dir: Direction) -> Option<PolicyChain> {
        let policy = &self.policies.get(&r.0)?.get(&r.1)?.policy;
        let mut names = Names::default();
        let chain = policy_chain(&mut names, dir, policy);
        self.collided |= names.collided;
        chain
    }

    fn remove_chain(&mut self, name: &str) {
        self.journal.chain(&self.program, name);
        Arc::make_mut(&mut self.program).chains.remove(name);
        self.origins.remove(name);
    }

    fn set_use(&mut self, s: &SetRef) {
        if let Some(live) = self.sets.get_mut(&s.name) {
            self.collided |= live.def != s.def;
            live.users += 1;
            return;
        }
        let (elements, extra) = self.fill(&s.fill);
        self.journal.set_created(&s.name);
        Arc::make_mut(&mut self.program).add_set(Set::of(s.name.clone(), s.key, s.interval, elements));
        match &s.fill {
            Fill::Pods { key, .. } | Fill::Selected { key, .. } => match key.own_namespace() {
                Some(ns) => {
                    self.own_sets.entry(ns.to_string()).or_default().insert(s.name.clone());
                }
                None => {
                    self.ns_sets.insert(s.name.clone());
                    self.reach.clear();
                }
            },
            Fill::NamedPort { .. } => {
                self.np_sets.insert(s.name.clone());
            }
            Fill::Nodes { .. } => {
                self.node_sets.insert(s.name.clone());
            }
            Fill::Nets(_) => {}
        }
        self.sets.insert(s.name.clone(), LiveSet { def: s.def.clone(), fill: s.fill.clone(), users: 1, extra });
    }

    fn set_unuse(&mut self, name: &str) {
        let Some(s) = release(&mut self.sets, name) else { return };
        match &s.fill {
            Fill::Pods { key, .. } | Fill::Selected { key, .. } => match key.own_namespace() {
                Some(ns) => {
                    if let Some(m) = self.own_sets.get_mut(ns) {
                        m.remove(name);
                        if m.is_empty() {
                            self.own_sets.remove(ns);
                        }
                    }
                }
                None => {
                    self.ns_sets.remove(name);
                    self.reach.clear();
                }
            },
            Fill::NamedPort { .. } => {
                self.np_sets.remove(name);
            }
            Fill::Nodes { .. } => {
                self.node_sets.remove(name);
            }
            Fill::Nets(_) => {}
        }
        if let Some(set) = Arc::make_mut(&mut self.program).sets.remove(name) {
            self.journal.set_deleted(set);
        }
    }

    /// The elements of a set becoming live, from the pods in its scope.
    fn fill(&self, fill: &Fill) -> (BTreeSet<Element>, HashMap<Element, u32>) {
        let (mut elements, mut extra) = (BTreeSet::new(), HashMap::new());
        let mut put = |e: Element| {
            if !elements.insert(e) {
                *extra.entry(e).or_insert(0) += 1;
            }
        };
        match fill {
            Fill::Pods { .. } | Fill::Selected { .. } => {
                let Some((family, key, local)) = selector_fill(fill) else { return (elements, extra) };
                let scope: Vec<&String> = match key.own_namespace() {
                    Some(ns) => self.pods.get_key_value(ns).map(|(n, _)| n).into_iter().collect(),
                    None => self.pods.keys().filter(|ns| key.reaches(ns, Some(&labels_of(&self.namespaces, ns)))).collect(),
                };
                for ns in scope {
                    for pod in self.pods.get(ns).into_iter().flat_map(|m| m.values()) {
                        if let Some(ip) = pod.ip(family).filter(|_| selected_member(pod, local, &self.node) && key.selects_in_scope(pod)) {
                            put(Element::Addr(ip));
                        }
                    }
                }
            }
            Fill::Nodes { family, selector } => self.nodes.values().flat_map(|n| node_elements(n, *family, selector)).for_each(put),
            Fill::Nets(nets) => nets.iter().for_each(|e| put(*e)),
            Fill::NamedPort { family, proto, name, local } => {
                for pod in self.pods.values().flat_map(|m| m.values()).filter(|p| named_port_member(p, *local, &self.node)) {
                    if let Some(e) = named_port_element(pod, *family, *proto, name) {
                        put(e);
                    }
                }
            }
        }
        (elements, extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Endpoint, Flow};
    use crate::gen::Rng;
    use crate::model::cluster_policy::{Action as CnpAction, ClusterPeer, ClusterPort, ClusterRule, Subject};
    use crate::model::{container_ports, ContainerPort, Origin, Peer, PolicyTypes, PortRef, PortSpec, Protocol, Rule};
    use crate::nft::{compile_with_origins, interp, TABLE};
    use crate::selector::{Operator, Requirement, Selector};

    const NODE: &str = "n1";
    const NAMESPACES: [&str; 3] = ["a", "b", "c"];

    /// The objects as the API server has them (namespaces only when
    /// created: pods and policies may name one that is not).
    #[derive(Default)]
    struct World {
        namespaces: BTreeMap<String, Namespace>,
        nodes: BTreeMap<String, Node>,
        pods: BTreeMap<Ref, Pod>,
        policies: BTreeMap<Ref, Policy>,
        cluster_policies: BTreeMap<(ClusterKind, String), ClusterPolicy>,
    }

    enum Event {
        Namespace(String, Option<Namespace>),
        Node(String, Option<Node>),
        Pod(Ref, Option<Pod>),
        Policy(Ref, Option<Policy>),
        ClusterPolicy((ClusterKind, String), Option<ClusterPolicy>),
    }

    impl World {
        fn cluster(&self) -> Cluster {
            let mut c = Cluster {
                namespaces: self.namespaces.clone(),
                nodes: self.nodes.clone(),
                pods: self.pods.values().cloned().map(Arc::new).collect(),
                policies: self.policies.values().cloned().map(Arc::new).collect(),
                cluster_policies: self.cluster_policies.values().cloned().collect(),
                ..Cluster::default()
            };
            c.normalize();
            c
        }

        fn apply(&mut self, e: &Event) {
            fn put<K: Ord + Clone, V: Clone>(m: &mut BTreeMap<K, V>, k: &K, v: &Option<V>) {
                match v {
                    Some(v) => m.insert(k.clone(), v.clone()),
                    None => m.remove(k),
                };
            }
            match e {
                Event::Namespace(n, v) => put(&mut self.namespaces, n, v),
                Event::Node(n, v) => put(&mut self.nodes, n, v),
                Event::Pod(r, v) => put(&mut self.pods, r, v),
                Event::Policy(r, v) => put(&mut self.policies, r, v),
                Event::ClusterPolicy(k, v) => put(&mut self.cluster_policies, k, v),
            }
        }
    }

    fn send(e: &mut Incremental, ev: &Event) {
        match ev {
            Event::Namespace(n, v) => e.set_namespace(n, v.clone()),
            Event::Node(n, v) => e.set_node(n, v.clone()),
            Event::Pod((ns, n), v) => e.set_pod(ns, n, v.clone()),
            Event::Policy((ns, n), v) => e.set_policy(ns, n, v.clone()),
            Event::ClusterPolicy((k, n), v) => e.set_cluster_policy(*k, n, v.clone()),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn selector(rng: &mut Rng, key: &str, values: &[&str]) -> Selector {
        let req = |operator, vals: &[&str]| Requirement { key: key.to_string(), operator, values: vals.iter().map(|v| v.to_string()).collect() };
        let mut s = Selector::default();
        match rng.below(7) {
            0 => {}
            1 | 2 => {
                s.match_labels.insert(key.to_string(), rng.pick(values).to_string());
            }
            3 => s.match_expressions.push(req(Operator::In, &values[..2])),
            4 => s.match_expressions.push(req(Operator::NotIn, &values[..1])),
            5 => s.match_expressions = vec![req(Operator::Exists, &[]), req(Operator::NotIn, &values[1..2])],
            _ => s.match_expressions.push(req(Operator::DoesNotExist, &[])),
        }
        s
    }

    fn namespace(rng: &mut Rng, name: &str) -> Namespace {
        let mut l = Vec::new();
        if rng.percent(70) {
            l.push(("team", rng.pick(&["x", "y"])));
        }
        if rng.percent(50) {
            l.push(("env", rng.pick(&["prod", "dev"])));
        }
        Namespace::new(name, labels(&l))
    }

    fn node(rng: &mut Rng, name: &str) -> Node {
        let i = if name == NODE { 1 } else { 2 };
        let mut pod_cidrs = Vec::new();
        if rng.percent(80) {
            pod_cidrs.push(format!("10.{i}.0.0/24").parse().expect("a CIDR"));
        }
        if rng.percent(50) {
            pod_cidrs.push(format!("fd0{i}::/64").parse().expect("a CIDR"));
        }
        let mut internal_ips: Vec<IpAddr> = vec![format!("172.18.0.{i}").parse().expect("an address")];
        if rng.percent(50) {
            internal_ips.push(format!("fd18::{i}").parse().expect("an address"));
        }
        // Sometimes an address both nodes claim (a `nodes` set counts it once).
        let external_ips: Vec<IpAddr> = match rng.below(4) {
            0 => vec!["203.0.113.9".parse().expect("an address")],
            1 => vec![format!("203.0.113.{i}").parse().expect("an address")],
            _ => Vec::new(),
        };
        let mut l = Vec::new();
        if rng.percent(70) {
            l.push(("role", rng.pick(&["worker", "infra"])));
        }
        Node {
            name: name.to_string(),
            labels: labels(&l),
            addresses: internal_ips.iter().chain(&external_ips).copied().collect(),
            internal_ips,
            external_ips,
            pod_cidrs,
        }
    }

    fn pod(rng: &mut Rng, ns: &str, name: &str) -> Pod {
        let mut l = Vec::new();
        if rng.percent(85) {
            l.push(("app", rng.pick(&["web", "db", "api"])));
        }
        if rng.percent(50) {
            l.push(("tier", rng.pick(&["fe", "be"])));
        }
        let node = match rng.below(10) {
            0..=4 => Some(NODE.to_string()),
            5..=8 => Some("n2".to_string()),
            _ => None,
        };
        let i = if node.as_deref() == Some(NODE) { 1 } else { 2 };
        // Few addresses: two pods sometimes claim one.
        let mut ips: Vec<IpAddr> = Vec::new();
        if rng.percent(95) {
            ips.push(format!("10.{i}.0.{}", 1 + rng.below(12)).parse().expect("an address"));
            if rng.percent(40) {
                ips.push(format!("fd0{i}::{}", 1 + rng.below(12)).parse().expect("an address"));
            }
        }
        let all = [("http", Protocol::Tcp, 80), ("http", Protocol::Tcp, 8080), ("dns", Protocol::Udp, 53), ("metrics", Protocol::Tcp, 9090), ("http", Protocol::Udp, 81)];
        let ports = all
            .iter()
            .filter(|_| rng.percent(30))
            .map(|(n, protocol, port)| ContainerPort { name: Some(n.to_string()), port: *port, protocol: *protocol })
            .collect();
        Pod {
            namespace: ns.to_string(),
            name: name.to_string(),
            labels: labels(&l),
            node,
            host_network: rng.percent(8),
            ips,
            ports: container_ports(ports),
            phase: match rng.below(20) {
                0 | 1 => Some("Succeeded".to_string()),
                2 => Some("Running".to_string()),
                _ => None,
            },
        }
    }

    fn policy(rng: &mut Rng, ns: &str, name: &str) -> Policy {
        let rules = |rng: &mut Rng| -> Vec<Rule> {
            (0..rng.below(3))
                .map(|_| Rule {
                    peers: (0..rng.below(3))
                        .map(|_| match rng.below(6) {
                            0 => Peer::Pods { namespaces: None, pods: Some(selector(rng, "app", &["web", "db", "api"])) },
                            1 => Peer::Pods { namespaces: Some(selector(rng, "team", &["x", "y"])), pods: None },
                            2 => Peer::Pods {
                                namespaces: Some(selector(rng, "env", &["prod", "dev"])),
                                pods: Some(selector(rng, "tier", &["fe", "be"])),
                            },
                            3 => Peer::IpBlock {
                                cidr: "10.9.0.0/16".parse().expect("a CIDR"),
                                except: vec!["10.9.1.0/24".parse().expect("a CIDR"), "10.9.1.0/25".parse().expect("a CIDR")],
                            },
                            4 => Peer::IpBlock { cidr: "fd09::/32".parse().expect("a CIDR"), except: vec![] },
                            _ => Peer::Pods { namespaces: Some(Selector::default()), pods: Some(Selector::default()) },
                        })
                        .collect(),
                    ports: (0..rng.below(3))
                        .map(|_| match rng.below(5) {
                            0 => PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Number(80)), end_port: None },
                            1 => PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Number(8000)), end_port: Some(8080) },
                            2 => PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Named("http".into())), end_port: None },
                            3 => PortSpec { protocol: Protocol::Udp, port: Some(PortRef::Named(rng.pick(&["dns", "http"]).into())), end_port: None },
                            _ => PortSpec { protocol: Protocol::Sctp, port: None, end_port: None },
                        })
                        .collect(),
                })
                .collect()
        };
        let ingress = rules(rng);
        let egress = rules(rng);
        let types = match rng.below(3) {
            0 => PolicyTypes { ingress: true, egress: false },
            1 => PolicyTypes { ingress: false, egress: true },
            _ => PolicyTypes { ingress: true, egress: true },
        };
        Policy {
            namespace: ns.to_string(),
            name: name.to_string(),
            origin: Origin::default(),
            pod_selector: selector(rng, "app", &["web", "db", "api"]),
            ingress,
            egress,
            types,
            types_explicit: true,
        }
    }

    /// A cluster policy of `kind` (a CNP of either tier, an ANP, the BANP):
    /// every action, subject and peer kind, numeric, range and named ports.
    fn cluster_policy(rng: &mut Rng, kind: ClusterKind, name: &str) -> ClusterPolicy {
        let tier = match kind {
            ClusterKind::ClusterNetworkPolicy => rng.pick(&[Tier::Admin, Tier::Baseline]),
            ClusterKind::AdminNetworkPolicy => Tier::Admin,
            ClusterKind::BaselineAdminNetworkPolicy => Tier::Baseline,
        };
        let ns_selector = |rng: &mut Rng| match rng.below(3) {
            0 => selector(rng, "team", &["x", "y"]),
            1 => selector(rng, "env", &["prod", "dev"]),
            _ => Selector::default(),
        };
        let subject = match rng.below(2) {
            0 => Subject::Namespaces(ns_selector(rng)),
            _ => Subject::Pods { namespaces: ns_selector(rng), pods: selector(rng, "app", &["web", "db", "api"]) },
        };
        let rules = |rng: &mut Rng, egress: bool| -> Vec<ClusterRule> {
            (0..rng.below(3))
                .map(|_| {
                    let action = rng.pick(&[CnpAction::Accept, CnpAction::Deny, CnpAction::Pass]);
                    let peers = (0..1 + rng.below(2))
                        .map(|_| match rng.below(if egress { 8 } else { 3 }) {
                            0 => ClusterPeer::Namespaces(ns_selector(rng)),
                            1 | 2 => ClusterPeer::Pods { namespaces: ns_selector(rng), pods: selector(rng, "app", &["web", "db", "api"]) },
                            3 | 4 => ClusterPeer::Nodes(selector(rng, "role", &["worker", "infra"])),
                            5 => ClusterPeer::Networks(vec!["10.2.0.0/25".parse().expect("a CIDR"), "fd02::/120".parse().expect("a CIDR")]),
                            6 => ClusterPeer::Networks(vec![rng.pick(&["10.1.0.0/28", "172.18.0.0/24"]).parse().expect("a CIDR")]),
                            _ => ClusterPeer::DomainNames(vec!["example.com".to_string()]),
                        })
                        .collect();
                    let ports = (0..rng.below(3))
                        .map(|_| match rng.below(4) {
                            0 => ClusterPort::Range { protocol: Protocol::Tcp, start: 80, end: 80 },
                            1 => ClusterPort::Range { protocol: Protocol::Tcp, start: 8000, end: 8080 },
                            2 => ClusterPort::Range { protocol: Protocol::Udp, start: 53, end: 53 },
                            _ => ClusterPort::Named(rng.pick(&["http", "dns"]).to_string()),
                        })
                        .collect();
                    ClusterRule { name: None, action, peers, ports }
                })
                .collect()
        };
        let (ingress, egress) = (rules(rng, false), rules(rng, true));
        ClusterPolicy {
            kind,
            name: name.to_string(),
            origin: Origin::default(),
            tier,
            priority: if kind == ClusterKind::BaselineAdminNetworkPolicy { 0 } else { rng.below(3) as u32 },
            subject,
            ingress,
            egress,
        }
    }

    fn event(rng: &mut Rng, w: &World) -> Event {
        let ns = rng.pick(&NAMESPACES).to_string();
        let slot = |rng: &mut Rng, p: &str| format!("{p}{}", rng.below(6));
        match rng.below(100) {
            0..=7 => {
                let (kind, name) = match rng.below(6) {
                    0..=2 => (ClusterKind::ClusterNetworkPolicy, slot(rng, "c")),
                    3 | 4 => (ClusterKind::AdminNetworkPolicy, slot(rng, "a")),
                    _ => (ClusterKind::BaselineAdminNetworkPolicy, "default".to_string()),
                };
                let deleted = rng.percent(25);
                Event::ClusterPolicy((kind, name.clone()), (!deleted).then(|| cluster_policy(rng, kind, &name)))
            }
            8..=34 => {
                let name = slot(rng, "p");
                Event::Pod((ns.clone(), name.clone()), Some(pod(rng, &ns, &name)))
            }
            35..=49 => {
                // Relabel or move an existing pod (or a fresh one).
                let Some((r, p)) = w.pods.iter().nth(rng.below(w.pods.len().max(1))) else { return event(rng, w) };
                let mut p = p.clone();
                match rng.below(3) {
                    0 => p.labels = p.labels.with("app", rng.pick(&["web", "db", "api", "other"])),
                    1 => p.ips.reverse(),
                    _ => p.ips = pod(rng, &p.namespace, &p.name).ips,
                }
                Event::Pod(r.clone(), Some(p))
            }
            50..=61 => Event::Pod((ns, slot(rng, "p")), None),
            62..=69 => Event::Namespace(ns.clone(), Some(namespace(rng, &ns))),
            70..=72 => Event::Namespace(ns, None),
            73..=87 => {
                let name = slot(rng, "q");
                Event::Policy((ns.clone(), name.clone()), Some(policy(rng, &ns, &name)))
            }
            88..=94 => Event::Policy((ns, slot(rng, "q")), None),
            _ => {
                let n = rng.pick(&[NODE, "n2"]);
                Event::Node(n.to_string(), rng.percent(80).then(|| node(rng, n)))
            }
        }
    }

    /// Sample flows between the cluster's pods, and of each source to
    /// itself through a Service (hairpin): the verdicts both programs give
    /// through the node.
    fn verdicts(c: &Cluster, p: &Program, rng: &mut Rng) -> Vec<(Option<bool>, Option<bool>)> {
        let pods: Vec<usize> = (0..c.pods.len()).filter(|&i| c.pods[i].takes_part() && c.pods[i].node.is_some()).collect();
        if pods.is_empty() {
            return Vec::new();
        }
        (0..6)
            .map(|_| {
                let (src, dst) = (rng.pick(&pods), rng.pick(&pods));
                let flow = Flow { src: Endpoint::Pod(src), dst: Endpoint::Pod(dst), protocol: Protocol::Tcp, port: 80, family: None };
                let family = rng.pick(&[Family::IPv4, Family::IPv6]);
                let direct = interp::flow_verdict(c, &|n| (n == NODE).then_some(p), &flow, family).map(|t| t.allowed);
                let hairpin = Flow { dst: Endpoint::Pod(src), ..flow };
                (direct, interp::flow_verdict_via_service(c, &|n| (n == NODE).then_some(p), &hairpin, family).map(|t| t.allowed))
            })
            .collect()
    }

    /// Random changes (seeded: `NETFENCE_INCREMENTAL_SEEDS` runs more),
    /// applied one by one (engine `a`) and in batches found
    /// by comparing snapshots (engine `b`): after every step both programs
    /// are the full path's, byte for byte, with the same origins, and each
    /// commit is the full path's diff.
    fn check_seed(seed: u64, steps: usize) -> [usize; 8] {
        let mut seen = [0; 8];
        let mut rng = Rng::new(seed, 7);
        let mut w = World::default();
        let mut a = Incremental::new(&w.cluster(), NODE);
        let mut b = Incremental::new(&w.cluster(), NODE);
        let empty = a.program().clone();
        let (mut prev_a, mut prev_b) = (empty.clone(), empty);
        for step in 0..steps {
            let ev = event(&mut rng, &w);
            w.apply(&ev);
            send(&mut a, &ev);
            let c = w.cluster();
            let (full, origins) = compile_with_origins(&c, &crate::ir::resolve(&c), NODE);
            let at = format!("seed {seed} step {step}");
            assert_eq!(a.program().to_string(), full.to_string(), "{at}: one by one");
            assert_eq!(a.program(), &full, "{at}");
            assert_eq!(a.origins(), &origins, "{at}");
            assert_eq!(a.commit(TABLE), Some(crate::nft::diff(Some(&prev_a), &full)), "{at}: transaction");
            prev_a = full.clone();
            let filled = |prefix: &str| full.sets.values().any(|s| s.name.starts_with(prefix) && !s.elements.is_empty());
            let jumps = full.maps.values().flat_map(|m| m.elements.values()).any(|v| matches!(v, Verdict::Jump(_)));
            let baseline = full.maps.values().flat_map(|m| m.elements.values()).any(|v| matches!(v, Verdict::Jump(c) if c.starts_with("cnp_")));
            let admin = full.chains.contains_key("cnp_ing_admin") || full.chains.contains_key("cnp_egr_admin");
            let cluster_sets = filled("subj") && (filled("cpod") || filled("cnode"));
            let seen_now = [filled("pod"), filled("np"), jumps, w.pods.len() > 8, filled("hairpin"), admin, baseline, cluster_sets];
            for (i, yes) in seen_now.into_iter().enumerate() {
                seen[i] += usize::from(yes);
            }
            if rng.percent(40) {
                b.update_to(&c);
                assert_eq!(b.program().to_string(), full.to_string(), "{at}: batched");
                assert_eq!(b.commit(TABLE), Some(crate::nft::diff(Some(&prev_b), &full)), "{at}: batched transaction");
                prev_b = full.clone();
            }
            let mut r2 = rng.clone();
            assert_eq!(verdicts(&c, a.program(), &mut rng), verdicts(&c, &full, &mut r2), "{at}: verdicts");
            if step % 64 == 0 {
                assert_eq!(Incremental::new(&c, NODE).program(), &full, "{at}: built whole");
            }
        }
        assert!(a.is_exact() && b.is_exact());
        seen
    }

    #[test]
    fn random_changes_give_the_full_paths_program_and_transaction() {
        let seeds: u64 = std::env::var("NETFENCE_INCREMENTAL_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
        for seed in 1..=seeds {
            let seen = check_seed(seed, 400);
            // The sequences reach what matters: filled selector and
            // named-port sets, isolated local pods, a crowded cluster,
            // local pods' hairpin pairs (their addresses change too), an
            // Admin tier chain, pods dispatched to the Baseline tier, and
            // filled subject and cluster peer sets.
            assert!(seen.iter().all(|&n| n > 40), "seed {seed}: {seen:?}");
        }
    }

    #[test]
    fn changes_walk_two_sorted_lists() {
        let k = |s: &'static str| (s, "");
        let held = [(k("a"), &1), (k("b"), &2), (k("d"), &4)];
        let now = [(k("b"), &2), (k("c"), &3), (k("d"), &5)];
        let got = changes(held.into_iter(), now.into_iter());
        let own = |s: &str| (s.to_string(), String::new());
        assert_eq!(got, vec![(own("a"), None), (own("c"), Some(3)), (own("d"), Some(5))]);
    }

    /// Pod churn stays element operations, as in the full path.
    #[test]
    fn pod_churn_commits_element_operations_only() {
        // A web pod of this node, open to api pods of any namespace on
        // its named port.
        let text = [
            "{apiVersion: v1, kind: Node, metadata: {name: n1}, spec: {podCIDRs: [10.1.0.0/24]}}",
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: web, namespace: x}, spec: {podSelector: {matchLabels: {app: web}}, \
              ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]}}",
            "{apiVersion: v1, kind: Pod, metadata: {name: w, namespace: x, labels: {app: web}}, spec: {nodeName: n1}, status: {podIP: 10.1.0.1}}",
        ]
        .join("\n---\n");
        let c = crate::model::load::load_str("t.yaml", &text).expect("loads");
        let mut e = Incremental::new(&c, NODE);
        let mut p = Pod::clone(&c.pods[0]);
        for (i, (name, app, node)) in [("w2", "web", NODE), ("a1", "api", "n2"), ("a2", "api", NODE)].into_iter().enumerate() {
            p.name = name.to_string();
            p.labels = labels(&[("app", app)]);
            p.node = Some(node.to_string());
            p.ips = vec![format!("10.1.0.{}", i + 2).parse().expect("an address")];
            p.ports = container_ports(vec![ContainerPort { name: Some("http".into()), port: 8080, protocol: Protocol::Tcp }]);
            e.set_pod("x", name, Some(p.clone()));
            let tx = e.commit(TABLE).expect("exact");
            assert!(!tx.is_empty() && tx.only_elements(), "{name}: {tx}");
            e.set_pod("x", name, None);
            let tx = e.commit(TABLE).expect("exact");
            assert!(!tx.is_empty() && tx.only_elements(), "{name} deleted: {tx}");
        }
    }
}
