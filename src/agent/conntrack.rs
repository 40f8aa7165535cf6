//! Connections a policy change denies are cut (`--established cut`, the
//! default; `keep` leaves every connection alone).
//!
//! The ruleset is stateful: each judging chain accepts `ct state
//! established,related` before any policy, so a connection admitted under
//! an old policy would outlive a change that denies it. A security team that
//! revokes access expects it to stop. So after every applied sync the agent
//! dumps the node's conntrack table, judges the entries whose verdict may
//! have changed as new connections against the program now in force
//! ([`Judge`]), and deletes, by tuple, those the program would drop. The next
//! packet of a cut connection is then new to conntrack (a mid-stream TCP
//! segment too: conntrack picks it up as a new connection) and is judged by
//! the policies, which drop it.
//!
//! Judged per entry, after NAT: the original tuple's source is the client
//! and the reply tuple's source and source port are the real backend,
//! whatever Service address the client dialled. So a connection still
//! allowed, and kube-proxy's NAT binding for it, is never touched; deleting
//! a denied entry drops that connection's own NAT binding only.
//!
//! Which entries ([`Review`]):
//! - those with a local pod address whose verdicts may have changed, on
//!   either end ([`super::nftables::affected`]: the programs before and
//!   after are compared; a pod is affected when its dispatch verdict, or a
//!   chain or set its verdicts read, changed). Pod churn elsewhere that
//!   changes no local pod's verdicts costs nothing: no dump at all;
//! - every entry on the first sync of the process: what an earlier run
//!   enforced is unknown, and an entry the program in force allows is left
//!   alone anyway;
//! - unjudged, every entry with, on any side, the address of a pod that no
//!   longer holds it (deleted, finished, or its address changed), on this
//!   node or another: a new pod that reuses the address inherits nothing.
//!
//! A failure to cut never fails the sync (the ruleset is applied): it is
//! counted and logged, and what it should have looked at is looked at again
//! with the next sync's cut.

pub mod netlink;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::eval::Endpoint;
use crate::model::{Cluster, Protocol};
use crate::nft::compile;
use crate::nft::interp::{self, eval_hook, Host, Packet};
use crate::nft::Program;

pub use netlink::NetlinkTable;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// What follows the addresses in a conntrack tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP, UDP, SCTP (and the other protocols with ports).
    Ports { sport: u16, dport: u16 },
    /// ICMP and ICMPv6: the echo identifier, type and code.
    Icmp { id: u16, ty: u8, code: u8 },
    /// Protocols conntrack keys by address only.
    None,
}

/// One direction of a connection as conntrack keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    pub l4: L4,
}

impl Tuple {
    pub fn ports(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Tuple {
        Tuple { src, dst, proto, l4: L4::Ports { sport, dport } }
    }

    /// The answer to this direction without NAT, as conntrack derives it
    /// (an echo request's reply tuple is an echo reply).
    pub fn reversed(&self) -> Tuple {
        let l4 = match self.l4 {
            L4::Ports { sport, dport } => L4::Ports { sport: dport, dport: sport },
            L4::Icmp { id, ty, code } => {
                let ty = match (self.proto, ty) {
                    (IPPROTO_ICMP, 8) => 0,
                    (IPPROTO_ICMPV6, 128) => 129,
                    (_, t) => t,
                };
                L4::Icmp { id, ty, code }
            }
            L4::None => L4::None,
        };
        Tuple { src: self.dst, dst: self.src, proto: self.proto, l4 }
    }
}

/// One conntrack entry: a connection and what NAT made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// As the client sent its first packet (before DNAT).
    pub orig: Tuple,
    /// As the answer comes back: its source is the real backend (after DNAT),
    /// its destination the client as seen after SNAT.
    pub reply: Tuple,
    /// The conntrack zone; 0 unless a rule set one.
    pub zone: u16,
    /// The kernel's id of the entry. A delete that names it removes this
    /// entry only, never a newer one that reuses the tuple.
    pub id: Option<u32>,
}

impl Entry {
    /// A connection through no NAT.
    pub fn new(orig: Tuple) -> Entry {
        Entry { orig, reply: orig.reversed(), zone: 0, id: None }
    }

    /// The same connection with its destination rewritten to
    /// `backend:port`, as a Service proxy's DNAT does.
    pub fn dnat(mut self, backend: IpAddr, port: u16) -> Entry {
        self.reply.src = backend;
        if let L4::Ports { dport, .. } = self.reply.l4 {
            self.reply.l4 = L4::Ports { sport: port, dport };
        }
        self
    }

    /// The same connection with its source rewritten to `to` (masquerade).
    pub fn snat(mut self, to: IpAddr) -> Entry {
        self.reply.dst = to;
        self
    }

    /// Who opened the connection.
    pub fn client(&self) -> IpAddr {
        self.orig.src
    }

    /// Who answers it, after any DNAT.
    pub fn backend(&self) -> IpAddr {
        self.reply.src
    }

    fn addrs(&self) -> [IpAddr; 4] {
        [self.orig.src, self.orig.dst, self.reply.src, self.reply.dst]
    }

    /// The connection's first packet as the policies judge it: client to
    /// backend, on the backend's port.
    fn first_packet(&self) -> Packet {
        let port = match self.reply.l4 {
            L4::Ports { sport, .. } => sport,
            _ => 0,
        };
        let base = |proto| Packet::new(self.client(), self.backend(), proto, port);
        let icmp_type = match self.orig.l4 {
            L4::Icmp { ty, .. } => ty,
            _ => 0,
        };
        match self.orig.proto {
            IPPROTO_TCP => base(Protocol::Tcp),
            IPPROTO_UDP => base(Protocol::Udp),
            IPPROTO_SCTP => base(Protocol::Sctp),
            IPPROTO_ICMP => Packet { l4: interp::L4::Icmp { ty: icmp_type }, ..base(Protocol::Tcp) },
            IPPROTO_ICMPV6 => Packet { l4: interp::L4::Icmpv6 { ty: icmp_type }, ..base(Protocol::Tcp) },
            other => Packet { l4: interp::L4::Other(other), ..base(Protocol::Tcp) },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: the kernel refused: {source}")]
    Refused {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: cannot decode the kernel's answer: {message}")]
    Decode { what: &'static str, message: String },
}

/// What a batch of deletions did, entry by entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    pub deleted: u64,
    /// Gone before we got to them (expired, closed, or cut by someone else).
    pub missing: u64,
    /// Refused for another reason; `first_error` says the first.
    pub failed: u64,
    pub first_error: Option<String>,
}

impl Deleted {
    pub fn add(&mut self, other: Deleted) {
        self.deleted += other.deleted;
        self.missing += other.missing;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The node's conntrack table. A trait so the cut is tested without one.
pub trait Table: Send + 'static {
    /// Call `visit` with every entry of both families; returns how many.
    fn dump(&mut self, visit: &mut dyn FnMut(Entry)) -> Result<u64, TableError>;
    /// Delete `entries` by original tuple, zone and id.
    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted, TableError>;
    /// The node's own addresses, as `fib saddr type local` knows them (its
    /// InternalIPs, and also a bridge's gateway, loopback, ...).
    fn local_addrs(&mut self) -> Result<Vec<IpAddr>, TableError>;
}

impl<T: Table + ?Sized> Table for Box<T> {
    fn dump(&mut self, visit: &mut dyn FnMut(Entry)) -> Result<u64, TableError> {
        (**self).dump(visit)
    }
    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted, TableError> {
        (**self).delete(entries)
    }
    fn local_addrs(&mut self) -> Result<Vec<IpAddr>, TableError> {
        (**self).local_addrs()
    }
}

/// Entries to judge: those with one of these addresses as client or
/// backend, or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Addrs(BTreeSet<IpAddr>),
}

impl Default for Scope {
    fn default() -> Self {
        Scope::Addrs(BTreeSet::new())
    }
}

impl Scope {
    pub fn is_empty(&self) -> bool {
        matches!(self, Scope::Addrs(a) if a.is_empty())
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match self {
            Scope::All => true,
            Scope::Addrs(a) => a.contains(ip),
        }
    }

    pub fn extend(&mut self, other: Scope) {
        match (&mut *self, other) {
            (Scope::All, _) => {}
            (_, Scope::All) => *self = Scope::All,
            (Scope::Addrs(a), Scope::Addrs(b)) => a.extend(b),
        }
    }
}

/// What one cut looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Review {
    /// Entries judged against the program in force.
    pub judge: Scope,
    /// Addresses no pod holds any more: every entry with one of them on any
    /// side is cut, unjudged.
    pub gone: BTreeSet<IpAddr>,
}

impl Review {
    pub fn is_empty(&self) -> bool {
        self.judge.is_empty() && self.gone.is_empty()
    }

    /// Add what an earlier cut could not finish. An address it found gone
    /// that a pod holds again is judged instead: cutting it unjudged would
    /// cut the new pod's own connections.
    fn absorb(&mut self, earlier: Review, world: &dyn World) {
        self.judge.extend(earlier.judge);
        let cluster = world.holding(&earlier.gone);
        let held: BTreeSet<IpAddr> = cluster.pods.iter().filter(|p| p.is_policy_pod()).flat_map(|p| p.ips.iter().copied()).collect();
        let (again, still_gone): (BTreeSet<IpAddr>, BTreeSet<IpAddr>) = earlier.gone.into_iter().partition(|ip| held.contains(ip));
        self.gone.extend(still_gone);
        self.judge.extend(Scope::Addrs(again));
    }
}

/// Addresses held by a pod in `old` and not by the same pod in `new`: the
/// pod was deleted, finished, or its address changed (or another pod took
/// the address within the same batch of changes).
pub fn gone(old: &Cluster, new: &Cluster) -> BTreeSet<IpAddr> {
    let mut held: HashMap<IpAddr, (&str, &str)> = HashMap::new();
    for p in new.pods.iter().filter(|p| p.is_policy_pod()) {
        for ip in &p.ips {
            held.insert(*ip, (p.namespace.as_str(), p.name.as_str()));
        }
    }
    let mut out = BTreeSet::new();
    for p in old.pods.iter().filter(|p| p.is_policy_pod()) {
        for ip in &p.ips {
            if held.get(ip) != Some(&(p.namespace.as_str(), p.name.as_str())) {
                out.insert(*ip);
            }
        }
    }
    out
}

/// Where a cut finds the pods and nodes behind the addresses it judges.
pub trait World {
    /// A cluster with every pod holding one of `addrs` and every node, as
    /// the program in force was compiled from: judging a connection needs
    /// only its endpoints, so the agent never copies the whole cluster for
    /// a cut (`agent::Index::synced_pods_holding`).
    fn holding(&self, addrs: &BTreeSet<IpAddr>) -> std::borrow::Cow<'_, Cluster>;
}

impl World for Cluster {
    fn holding(&self, _: &BTreeSet<IpAddr>) -> std::borrow::Cow<'_, Cluster> {
        std::borrow::Cow::Borrowed(self)
    }
}

/// [`gone`] from the objects a delta changed (each pod's value before and
/// after): its addresses that the same pod no longer holds.
pub fn gone_in(changes: &[super::index::Change]) -> BTreeSet<IpAddr> {
    use super::index::{Entry as Obj, Kind};
    let policy_ips = |e: &Option<Obj>| match e {
        Some(Obj::Pod(p)) if p.is_policy_pod() => p.ips.clone(),
        _ => Vec::new(),
    };
    let mut out = BTreeSet::new();
    for c in changes.iter().filter(|c| c.kind == Kind::Pod) {
        let after = policy_ips(&c.after);
        out.extend(policy_ips(&c.before).into_iter().filter(|ip| !after.contains(ip)));
    }
    out
}

/// The program in force on a node, and what it needs to judge a packet.
#[derive(Debug, Clone, Copy)]
pub struct Enforced<'a> {
    pub cluster: &'a Cluster,
    pub node: &'a str,
    pub program: &'a Program,
}

/// Judges a connection as new against the program in force, on the hooks
/// where this node judges it ([`interp::hops_via_service`], limited to the hooks of
/// [`compile::BASES`]): a local pod's egress at postrouting, or at input
/// when the backend is one of the node's own addresses; ingress to a local
/// pod at postrouting. Prerouting's anti-spoofing does not depend on
/// policies and already let the connection's packets in.
pub struct Judge<'a> {
    now: Enforced<'a>,
    /// The node's own addresses: its InternalIPs and the kernel's.
    addrs: Vec<IpAddr>,
    /// Pods and the node's addresses; anything else is outside.
    endpoints: HashMap<IpAddr, Endpoint>,
}

impl<'a> Judge<'a> {
    /// `local`: the addresses the kernel holds as the node's own, beyond
    /// its InternalIPs (a bridge CNI's gateway, from which kubelet probes
    /// pods, is one): the node's own traffic, which ingress lets through.
    pub fn new(now: Enforced<'a>, local: &[IpAddr]) -> Judge<'a> {
        let mut endpoints = HashMap::new();
        for (id, p) in now.cluster.pods.iter().enumerate().filter(|(_, p)| p.is_policy_pod()) {
            for ip in &p.ips {
                endpoints.insert(*ip, Endpoint::Pod(id));
            }
        }
        for n in now.cluster.nodes.values() {
            for ip in &n.addresses {
                endpoints.insert(*ip, Endpoint::NodeAddr(n.name.clone(), *ip));
            }
        }
        let mut addrs: Vec<IpAddr> = Host::of(now.cluster, now.node, now.program).addrs.to_vec();
        for ip in local {
            // The kernel's word wins: an address on this node is this node's.
            endpoints.insert(*ip, Endpoint::Node(now.node.to_string()));
            if !addrs.contains(ip) {
                addrs.push(*ip);
            }
        }
        Judge { now, addrs, endpoints }
    }

    fn endpoint(&self, ip: IpAddr) -> Endpoint {
        self.endpoints.get(&ip).cloned().unwrap_or(Endpoint::Ip(ip))
    }

    /// Would the program in force let this connection open now?
    pub fn allows(&self, e: &Entry) -> bool {
        let pkt = e.first_packet();
        let host = Host { addrs: &self.addrs, ..Host::of(self.now.cluster, self.now.node, self.now.program) };
        // Through a Service or not, the same hooks; and a pod's own entry
        // in the node's table can only be a hairpin (to its own address
        // directly, its packets never leave it).
        interp::hops_via_service(self.now.cluster, &self.endpoint(e.client()), &self.endpoint(e.backend()))
            .into_iter()
            .filter(|h| h.node == self.now.node && compile::BASES.iter().any(|b| b.hook == h.hook))
            .all(|h| eval_hook(host, h.hook, &pkt).accepted)
    }
}

/// What one cut did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Entries in the table.
    pub scanned: u64,
    /// Entries looked at: judged, or found with a gone address.
    pub examined: u64,
    /// Judged and denied by the program in force.
    pub denied: u64,
    /// With the address of a pod that went away.
    pub gone: u64,
    /// What deleting the denied did.
    pub cut_denied: Deleted,
    /// What deleting the gone did.
    pub cut_gone: Deleted,
}

impl CutReport {
    pub fn to_cut(&self) -> u64 {
        self.denied + self.gone
    }

    /// Both deletions together.
    pub fn deleted(&self) -> Deleted {
        let mut d = self.cut_denied.clone();
        d.add(self.cut_gone.clone());
        d
    }
}

/// Dump the table, pick the entries `review` names, delete the denied and
/// the gone. Touches nothing when `review` is empty.
pub fn cut(table: &mut dyn Table, now: Enforced<'_>, review: &Review) -> Result<CutReport, TableError> {
    cut_in(table, now.node, now.program, now.cluster, review)
}

/// [`cut`], finding the endpoints of the entries to judge in `world`
/// once the dump has said which they are.
pub fn cut_in(table: &mut dyn Table, node: &str, program: &Program, world: &dyn World, review: &Review) -> Result<CutReport, TableError> {
    let mut report = CutReport::default();
    if review.is_empty() {
        return Ok(report);
    }
    let (mut gone, mut judged) = (Vec::new(), Vec::new());
    report.scanned = table.dump(&mut |e: Entry| {
        if !review.gone.is_empty() && e.addrs().iter().any(|ip| review.gone.contains(ip)) {
            gone.push(e);
        } else if review.judge.contains(&e.client()) || review.judge.contains(&e.backend()) {
            judged.push(e);
        }
    })?;
    report.examined = judged.len() as u64;
    let mut denied = Vec::new();
    if !judged.is_empty() {
        let local = table.local_addrs()?;
        let addrs: BTreeSet<IpAddr> = judged.iter().flat_map(|e| e.addrs()).chain(local.iter().copied()).collect();
        let cluster = world.holding(&addrs);
        let judge = Judge::new(Enforced { cluster: &cluster, node, program }, &local);
        denied = judged.into_iter().filter(|e| !judge.allows(e)).collect();
    }
    report.examined += gone.len() as u64;
    (report.gone, report.denied) = (gone.len() as u64, denied.len() as u64);
    if !gone.is_empty() {
        report.cut_gone = table.delete(&gone)?;
    }
    if !denied.is_empty() {
        report.cut_denied = table.delete(&denied)?;
    }
    Ok(report)
}

/// The agent's side of cutting: owns the table, and carries what a failed
/// cut left undone into the next one.
pub struct Cutter {
    table: Box<dyn Table>,
    carry: Option<Review>,
}

impl Cutter {
    pub fn new(table: Box<dyn Table>) -> Cutter {
        Cutter { table, carry: None }
    }

    /// After a sync applied `changes` (the cluster going from `old`, `None`
    /// on the first sync, to `new`): cut what the new program denies, and
    /// everything of pods that went away. Blocking.
    /// `gone`: the addresses pods held before and no longer hold
    /// ([`gone`], or [`gone_in`] from the objects changed); `world` the
    /// cluster the program in force was compiled from.
    pub fn after_sync(&mut self, world: &dyn World, gone: BTreeSet<IpAddr>, changes: &super::dataplane::Changes) -> Result<CutReport, TableError> {
        let mut review = Review { judge: changes.scope.clone(), gone };
        if let Some(earlier) = self.carry.take() {
            review.absorb(earlier, world);
        }
        let result = cut_in(self.table.as_mut(), &changes.node, &changes.new, world, &review);
        if !matches!(&result, Ok(r) if r.deleted().failed == 0) {
            self.carry = Some(review);
        }
        result
    }
}

/// An in-memory table for tests: entries, the node's addresses, failures on
/// demand. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeTable(Arc<Mutex<FakeState>>);

#[derive(Debug, Default)]
struct FakeState {
    entries: Vec<Entry>,
    local: Vec<IpAddr>,
    fail_dumps: usize,
    dumps: usize,
}

impl FakeTable {
    pub fn with(entries: &[Entry]) -> FakeTable {
        let t = FakeTable::default();
        t.state().entries = entries.to_vec();
        t
    }

    pub fn insert(&self, e: Entry) {
        self.state().entries.push(e);
    }

    pub fn set_local(&self, addrs: &[IpAddr]) {
        self.state().local = addrs.to_vec();
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.state().entries.clone()
    }

    /// How many dumps were asked for.
    pub fn dumps(&self) -> usize {
        self.state().dumps
    }

    /// Fail the next `n` dumps.
    pub fn fail_next(&self, n: usize) {
        self.state().fail_dumps = n;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Table for FakeTable {
    fn dump(&mut self, visit: &mut dyn FnMut(Entry)) -> Result<u64, TableError> {
        let entries = {
            let mut s = self.state();
            s.dumps += 1;
            if s.fail_dumps > 0 {
                s.fail_dumps -= 1;
                return Err(TableError::Io { what: "dump", source: std::io::Error::other("injected failure") });
            }
            s.entries.clone()
        };
        entries.iter().for_each(|e| visit(*e));
        Ok(entries.len() as u64)
    }

    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted, TableError> {
        let mut s = self.state();
        let mut out = Deleted::default();
        for e in entries {
            let same = |x: &Entry| x.orig == e.orig && x.zone == e.zone && (e.id.is_none() || x.id == e.id);
            match s.entries.iter().position(same) {
                Some(i) => {
                    s.entries.remove(i);
                    out.deleted += 1;
                }
                None => out.missing += 1,
            }
        }
        Ok(out)
    }

    fn local_addrs(&mut self) -> Result<Vec<IpAddr>, TableError> {
        Ok(self.state().local.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// node-1 (InternalIP 172.18.0.2, gateway 10.244.1.1 on a bridge) runs
    /// x/a, x/b, x/c; node-2 runs x/r. x/b admits x/a on TCP 80 only; x/c's
    /// egress allows x/b on 80 and the node on 8080.
    const CLUSTER: &str = "
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDRs: [10.244.2.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.12}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.13}
---
apiVersion: v1
kind: Pod
metadata: {name: r, namespace: x, labels: {pod: r}}
spec: {nodeName: node-2}
status: {podIP: 10.244.2.11}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
  - {to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}
  - {to: [{ipBlock: {cidr: 172.18.0.2/32}}], ports: [{port: 8080}]}
";

    fn cluster(extra: &str) -> Cluster {
        crate::model::load::load_str("c.yaml", &format!("{CLUSTER}{extra}")).unwrap()
    }

    fn program(c: &Cluster) -> Program {
        crate::nft::compile(c, &crate::ir::resolve(c), "node-1")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `client:port -> dst:port` over TCP, `dst:port=backend:port` for a DNAT.
    fn tcp(spec: &str) -> Entry {
        let (from, to) = spec.split_once(" -> ").unwrap();
        let (to, backend) = match to.split_once('=') {
            Some((t, b)) => (t, Some(b)),
            None => (to, None),
        };
        let sock = |s: &str| -> (IpAddr, u16) {
            let a: std::net::SocketAddr = s.parse().unwrap();
            (a.ip(), a.port())
        };
        let ((c, cp), (d, dp)) = (sock(from), sock(to));
        let e = Entry::new(Tuple::ports(IPPROTO_TCP, c, cp, d, dp));
        match backend.map(sock) {
            Some((b, bp)) => e.dnat(b, bp),
            None => e,
        }
    }

    /// Run one cut of the table `entries` with `review` against `c`;
    /// return the entries left.
    fn check(c: &Cluster, review: Review, entries: &[&str], left: &[&str]) {
        let p = program(c);
        let mut t = FakeTable::with(&entries.iter().map(|s| tcp(s)).collect::<Vec<_>>());
        t.set_local(&[ip("10.244.1.1")]);
        let r = cut(&mut t, Enforced { cluster: c, node: "node-1", program: &p }, &review).unwrap();
        let expected: Vec<Entry> = left.iter().map(|s| tcp(s)).collect();
        assert_eq!(t.entries(), expected, "{review:?}");
        assert_eq!(r.deleted().deleted, (entries.len() - left.len()) as u64);
        assert_eq!(r.scanned, entries.len() as u64);
    }

    fn judge_all() -> Review {
        Review { judge: Scope::All, gone: BTreeSet::new() }
    }

    #[test]
    fn allowed_entries_stay_denied_ones_go() {
        // (entry, kept, why)
        let cases = [
            ("10.244.1.11:40000 -> 10.244.1.12:80", true, "a -> b on 80: b-in allows it"),
            ("10.244.1.11:40001 -> 10.244.1.12:81", false, "a -> b on 81: not b-in's port"),
            ("10.244.1.13:40000 -> 10.244.1.12:80", false, "c -> b: c-out allows it, b-in does not"),
            ("10.244.1.13:40001 -> 172.18.0.2:8080", true, "c -> the node on 8080: egress_local allows it"),
            ("10.244.1.13:40002 -> 172.18.0.2:9090", false, "c -> the node on 9090: denied at input"),
            ("10.244.1.13:40003 -> 10.244.2.11:80", false, "c -> r on node-2: denied at postrouting"),
            ("10.244.2.11:40000 -> 10.244.1.11:22", true, "r -> a, not isolated"),
            ("172.18.0.2:40000 -> 10.244.1.12:9999", true, "the node's own traffic to b"),
            ("10.244.1.1:40000 -> 10.244.1.12:8080", true, "the bridge gateway (kubelet probes) is the node's"),
            ("10.244.1.99:40000 -> 10.244.1.11:80", false, "no pod holds .99: fail closed"),
            ("192.0.2.1:40000 -> 198.51.100.1:443", true, "through the node, no pod on either end"),
        ];
        let c = cluster("");
        let entries: Vec<&str> = cases.iter().map(|(e, _, _)| *e).collect();
        let kept: Vec<&str> = cases.iter().filter(|(_, k, _)| *k).map(|(e, _, _)| *e).collect();
        check(&c, judge_all(), &entries, &kept);
        let p = program(&c);
        let j = Judge::new(Enforced { cluster: &c, node: "node-1", program: &p }, &[ip("10.244.1.1")]);
        for (e, kept, why) in cases {
            assert_eq!(j.allows(&tcp(e)), kept, "{e}: {why}");
        }
    }

    #[test]
    fn only_entries_of_reviewed_addresses_are_judged() {
        let c = cluster("");
        let entries = ["10.244.1.11:40001 -> 10.244.1.12:81", "10.244.1.13:40002 -> 10.244.2.11:80"];
        // Only c is reviewed: a -> b:81, though denied, is not looked at.
        let review = Review { judge: Scope::Addrs([ip("10.244.1.13")].into()), gone: BTreeSet::new() };
        check(&c, review, &entries, &["10.244.1.11:40001 -> 10.244.1.12:81"]);
        // b as backend counts as much as a client.
        let review = Review { judge: Scope::Addrs([ip("10.244.1.12")].into()), gone: BTreeSet::new() };
        check(&c, review, &entries, &["10.244.1.13:40002 -> 10.244.2.11:80"]);
    }

    #[test]
    fn a_natted_entry_is_judged_by_its_backend() {
        let c = cluster("");
        // a dials Services 10.96.0.10:80 (-> b:80, allowed) and 10.96.0.11:80
        // (-> b:8080, denied); c dials the node's Service address to the node.
        check(
            &c,
            judge_all(),
            &[
                "10.244.1.11:40000 -> 10.96.0.10:80=10.244.1.12:80",
                "10.244.1.11:40001 -> 10.96.0.11:80=10.244.1.12:8080",
                "10.244.1.13:40000 -> 10.96.0.12:80=172.18.0.2:8080",
                "10.244.1.13:40001 -> 10.96.0.13:80=172.18.0.2:9090",
            ],
            &["10.244.1.11:40000 -> 10.96.0.10:80=10.244.1.12:80", "10.244.1.13:40000 -> 10.96.0.12:80=172.18.0.2:8080"],
        );
    }

    #[test]
    fn udp_and_icmp_are_judged_too() {
        let c = cluster("");
        let p = program(&c);
        let a_to_b = |proto, port| Entry::new(Tuple::ports(proto, ip("10.244.1.11"), 40000, ip("10.244.1.12"), port));
        let ping = |from: &str| {
            Entry::new(Tuple { src: ip(from), dst: ip("10.244.1.12"), proto: IPPROTO_ICMP, l4: L4::Icmp { id: 7, ty: 8, code: 0 } })
        };
        let j = Judge::new(Enforced { cluster: &c, node: "node-1", program: &p }, &[]);
        // b-in's port 80 is TCP: UDP to 80 is denied; no ICMP from anyone.
        assert!(j.allows(&a_to_b(IPPROTO_TCP, 80)));
        assert!(!j.allows(&a_to_b(IPPROTO_UDP, 80)));
        assert!(!j.allows(&ping("10.244.1.11")));
        // a is not isolated: a ping to a passes.
        let to_a = Entry::new(Tuple { src: ip("10.244.1.12"), dst: ip("10.244.1.11"), proto: IPPROTO_ICMP, l4: L4::Icmp { id: 7, ty: 8, code: 0 } });
        assert!(j.allows(&to_a));
    }

    #[test]
    fn a_gone_pod_loses_everything_of_its_address() {
        // x/a is deleted; its address is on either side of entries, some of
        // which the program would allow (a's ingress was open).
        let before = cluster("");
        let after = crate::model::load::load_str("c.yaml", &CLUSTER.replace("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {pod: a}}\nspec: {nodeName: node-1}\nstatus: {podIP: 10.244.1.11}\n---\n", "")).unwrap();
        assert_eq!(after.pods.len(), before.pods.len() - 1);
        let review = Review { judge: Scope::default(), gone: gone(&before, &after) };
        assert_eq!(review.gone, [ip("10.244.1.11")].into());
        check(
            &after,
            review,
            &[
                "10.244.1.11:40000 -> 10.244.1.12:80",
                "10.244.2.11:40000 -> 10.244.1.11:22",
                "10.244.1.13:40000 -> 10.96.0.10:80=10.244.1.11:80",
                "10.244.1.13:40001 -> 10.96.0.10:80=10.244.1.12:80",
            ],
            &["10.244.1.13:40001 -> 10.96.0.10:80=10.244.1.12:80"],
        );
    }

    #[test]
    fn gone_is_by_pod_not_by_address() {
        let before = cluster("");
        let check = |after: &str, expected: &[&str]| {
            let after = crate::model::load::load_str("c.yaml", after).unwrap();
            let got: Vec<String> = gone(&before, &after).iter().map(ToString::to_string).collect();
            assert_eq!(got, expected);
        };
        check(CLUSTER, &[]);
        // Another pod took a's address in the same batch.
        check(&CLUSTER.replace("name: a, namespace: x", "name: a2, namespace: x"), &["10.244.1.11"]);
        // b's address changed; r (on node-2) finished.
        check(&CLUSTER.replace("podIP: 10.244.1.12", "podIP: 10.244.1.22"), &["10.244.1.12"]);
        check(&CLUSTER.replace("status: {podIP: 10.244.2.11}", "status: {podIP: 10.244.2.11, phase: Succeeded}"), &["10.244.2.11"]);
    }

    #[test]
    fn an_empty_review_touches_nothing() {
        let c = cluster("");
        let p = program(&c);
        let mut t = FakeTable::with(&[tcp("10.244.1.11:40001 -> 10.244.1.12:81")]);
        let r = cut(&mut t, Enforced { cluster: &c, node: "node-1", program: &p }, &Review::default()).unwrap();
        assert_eq!((r, t.dumps(), t.entries().len()), (CutReport::default(), 0, 1));
    }

    #[test]
    fn a_failed_cut_is_carried_into_the_next() {
        let c = cluster("");
        let p = Arc::new(program(&c));
        let t = FakeTable::with(&[tcp("10.244.1.11:40001 -> 10.244.1.12:81")]);
        let mut cutter = Cutter::new(Box::new(t.clone()));
        let changes = |scope: Scope| super::super::dataplane::Changes { node: "node-1".into(), scope, new: p.clone() };
        t.fail_next(1);
        assert!(cutter.after_sync(&c, BTreeSet::new(), &changes(Scope::All)).is_err());
        assert_eq!(t.entries().len(), 1);
        // Nothing changed since, but the first sync's review is still owed.
        let r = cutter.after_sync(&c, BTreeSet::new(), &changes(Scope::default())).unwrap();
        assert_eq!((r.denied, t.entries().len()), (1, 0));
        // Paid: the next one with nothing changed does not dump.
        cutter.after_sync(&c, BTreeSet::new(), &changes(Scope::default())).unwrap();
        assert_eq!(t.dumps(), 2);
    }

    #[test]
    fn carried_gone_addresses_taken_again_are_judged_not_cut() {
        let c = cluster("");
        let mut review = Review::default();
        review.absorb(Review { judge: Scope::default(), gone: [ip("10.244.1.11"), ip("10.244.1.77")].into() }, &c);
        assert_eq!(review, Review { judge: Scope::Addrs([ip("10.244.1.11")].into()), gone: [ip("10.244.1.77")].into() });
    }

    #[test]
    fn deletes_name_the_entry_not_just_its_tuple() {
        let mut t = FakeTable::default();
        let old = Entry { id: Some(1), ..tcp("10.244.1.11:40001 -> 10.244.1.12:81") };
        let newer = Entry { id: Some(2), ..old };
        t.insert(newer);
        let d = t.delete(&[old]).unwrap();
        assert_eq!((d.deleted, d.missing, t.entries().len()), (0, 1, 1));
    }
}
