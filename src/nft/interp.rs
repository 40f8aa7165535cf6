//! Evaluate a packet through a [`Program`] as the kernel would, for the
//! subset we emit: base chains by hook and priority, jump and return, verdict
//! maps, hash and interval sets, concatenations, negation, accept and drop
//! (counters and comments change nothing), `ct state`, `fib saddr type
//! local`, answered from the node's own addresses ([`Host`]), and `fib
//! saddr . iif oif missing`, answered from where the packet came in
//! ([`Iif`]) and where the node routes its source.
//!
//! A connection is its first packet there and, when that got through, its
//! reply back ([`flow_verdict`]), with each node's connection tracking
//! ([`Conntrack`]) deciding the `ct state` each packet carries, as the
//! kernel's does: the first packet is new, its reply established where the
//! first packet was let through, and a packet no connection could begin
//! with (an ICMP error or echo reply about nothing) invalid.
//!
//! It is the compiler's second opinion: `netfence test` runs every flow of a
//! policy test through the programs of the nodes it crosses and checks the
//! result against the reference evaluator ([`crate::eval`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::program::*;
use crate::eval::{Endpoint, Flow};
use crate::model::{Cluster, Family, Protocol};

/// The transport of a packet. Conntrack reassembles fragments before any
/// rule runs, so every packet the rules see is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Port { proto: Protocol, sport: u16, dport: u16 },
    Icmp { ty: u8 },
    Icmpv6 { ty: u8 },
    /// Any other IP protocol number (GRE, ...).
    Other(u8),
}

impl L4 {
    /// Whether conntrack lets a packet with no connection behind it begin
    /// one (`ct state new`) rather than calling it invalid: ICMP errors and
    /// echo replies relate to a connection or to nothing.
    fn can_begin(self) -> bool {
        match self {
            L4::Icmp { ty } => !matches!(ty, 0 | 3 | 4 | 5 | 11 | 12 | 14 | 16 | 18),
            L4::Icmpv6 { ty } => ty >= 128 && ty != 129,
            L4::Port { .. } | L4::Other(_) => true,
        }
    }
}

/// Where a packet came into the node, as `fib saddr . iif` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iif {
    /// Sent by the node itself (output), or looped back to it.
    Local,
    /// The network: another node, the outside.
    Wire,
    /// A local pod's interface, whose routes lead to these addresses.
    Pod { v4: Option<IpAddr>, v6: Option<IpAddr> },
}

/// What the rules can see of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// What a `ct state` match sees: set by [`Conntrack::state`] on each
    /// node the packet crosses.
    pub ct: CtState,
    pub iif: Iif,
    /// IPv6 hop limit (TTL) as the rules see it; 255 only for a packet
    /// that crossed no router, as neighbour discovery must.
    pub hop_limit: u8,
}

/// The source port of every connection the model follows: an ephemeral one.
pub const EPHEMERAL_PORT: u16 = 40000;

impl Packet {
    /// The first packet of a connection, from the wire.
    pub fn new(src: IpAddr, dst: IpAddr, proto: Protocol, dport: u16) -> Packet {
        Packet { src, dst, l4: L4::Port { proto, sport: EPHEMERAL_PORT, dport }, ct: CtState::New, iif: Iif::Wire, hop_limit: 64 }
    }

    /// The answer to this packet: the other way round.
    pub fn reply(&self) -> Packet {
        let l4 = match self.l4 {
            L4::Port { proto, sport, dport } => L4::Port { proto, sport: dport, dport: sport },
            L4::Icmp { ty: 8 } => L4::Icmp { ty: 0 },
            L4::Icmpv6 { ty: 128 } => L4::Icmpv6 { ty: 129 },
            other => other,
        };
        Packet { src: self.dst, dst: self.src, l4, ct: CtState::Established, iif: Iif::Wire, hop_limit: self.hop_limit }
    }

    pub fn family(&self) -> Family {
        Family::of(&self.src)
    }
}

/// One node's connection tracking, as far as the model needs it: the
/// connections whose first packet this node let through (conntrack
/// confirms an entry only when its packet leaves the last hook). Time does
/// not pass in the model, so nothing expires.
#[derive(Debug, Default)]
pub struct Conntrack {
    /// Original-direction tuples, and whether a reply has been seen.
    confirmed: RefCell<BTreeMap<(IpAddr, IpAddr, L4Key), bool>>,
}

/// A packet's transport as conntrack keys it (a reply's ports swapped).
type L4Key = (u8, u16, u16);

fn original(pkt: &Packet) -> (IpAddr, IpAddr, L4Key) {
    (pkt.src, pkt.dst, l4_key(pkt.l4))
}

fn reversed(pkt: &Packet) -> (IpAddr, IpAddr, L4Key) {
    let (p, s, d) = l4_key(pkt.l4);
    (pkt.dst, pkt.src, (p, d, s))
}

fn l4_key(l4: L4) -> L4Key {
    match l4 {
        L4::Port { proto, sport, dport } => (proto.number(), sport, dport),
        L4::Icmp { .. } => (1, 0, 0),
        L4::Icmpv6 { .. } => (58, 0, 0),
        L4::Other(n) => (n, 0, 0),
    }
}

impl Conntrack {
    /// The state the kernel gives `pkt` on this node.
    pub fn state(&self, pkt: &Packet) -> CtState {
        let t = self.confirmed.borrow();
        match (t.get(&original(pkt)), t.get(&reversed(pkt))) {
            // A reply, or the original direction once a reply was seen.
            (_, Some(_)) | (Some(true), _) => CtState::Established,
            // Still waiting for its first reply.
            (Some(false), _) => CtState::New,
            (None, None) if pkt.l4.can_begin() => CtState::New,
            (None, None) => CtState::Invalid,
        }
    }

    /// `pkt` left the node's last hook: a new connection is confirmed, a
    /// reply marks its connection as answered.
    pub fn confirm(&self, pkt: &Packet) {
        let mut t = self.confirmed.borrow_mut();
        if let Some(replied) = t.get_mut(&reversed(pkt)) {
            *replied = true;
        } else if pkt.l4.can_begin() {
            t.entry(original(pkt)).or_insert(false);
        }
    }
}

/// The rule (or chain policy) that settled a packet's fate at one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A rule's verdict, or the verdict a map element gave it.
    Rule { chain: String, rule: usize, comment: Option<String> },
    /// The base chain ran out of rules: its policy.
    Policy { chain: String },
    /// No base chain on this hook.
    NoChain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub accepted: bool,
    pub decision: Decision,
    /// Every rule that matched on the way, as `chain[index]`: the path
    /// through jumps and maps.
    pub path: Vec<String>,
}

enum Outcome {
    Verdict(bool, Decision),
    Return,
}

/// One node as its rules see it: its program, its own addresses (what
/// `fib saddr type local` looks up) and, for reverse-path lookups, its
/// local pods' addresses (routed through their own interfaces; anything
/// else not local is routed through the wire). The model knows a node's
/// addresses as its InternalIPs, which its host-network pods share; a
/// bridge CNI's gateway address is the kernel's business only (see
/// tests/nft_hooks.rs).
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    pub program: &'a Program,
    pub addrs: &'a [IpAddr],
    /// The cluster and node name whose local pods are routed here.
    pub pods: Option<(&'a Cluster, &'a str)>,
}

impl<'a> Host<'a> {
    /// `node`'s program `p`, with the node's addresses and pods from `cluster`.
    pub fn of(cluster: &'a Cluster, node: &'a str, p: &'a Program) -> Host<'a> {
        let addrs = cluster.nodes.get(node).map(|n| n.addresses.as_slice()).unwrap_or_default();
        Host { program: p, addrs, pods: Some((cluster, node)) }
    }

    /// Where the node routes packets to `ip`, the way `fib` looks it up.
    fn route(&self, ip: IpAddr) -> Route {
        if self.addrs.contains(&ip) {
            return Route::Local;
        }
        let local_pod = self.pods.is_some_and(|(c, node)| {
            c.pods.iter().any(|p| p.is_policy_pod() && super::compile::node_of(p) == node && p.ips.contains(&ip))
        });
        if local_pod {
            Route::Pod(ip)
        } else {
            Route::Wire
        }
    }

    /// `fib saddr . iif oif missing`: no route back to the source through
    /// the interface the packet came in on.
    fn no_route_back(&self, pkt: &Packet) -> bool {
        match (pkt.iif, self.route(pkt.src)) {
            (Iif::Local, _) => false,
            (Iif::Wire, Route::Wire) => false,
            (Iif::Pod { v4, v6 }, Route::Pod(ip)) => Some(ip) != v4 && Some(ip) != v6,
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// One of the node's own addresses: never a way back for a packet
    /// that came in (the kernel's lookup finds a local route).
    Local,
    Pod(IpAddr),
    Wire,
}

/// Run `pkt` through every base chain of `host`'s program on `hook`, in
/// priority order: a drop anywhere drops it; an accept ends only its own
/// chain (each base chain is a hook function of its own).
pub fn eval_hook(host: Host<'_>, hook: Hook, pkt: &Packet) -> Evaluation {
    let mut path = Vec::new();
    let mut last = Decision::NoChain;
    for chain in host.program.base_chains(hook) {
        let (accepted, decision) = match run(host, chain, pkt, &mut path, 0) {
            Outcome::Verdict(a, d) => (a, d),
            Outcome::Return => {
                let policy = chain.base.map(|b| b.policy) == Some(ChainPolicy::Accept);
                (policy, Decision::Policy { chain: chain.name.clone() })
            }
        };
        if !accepted {
            return Evaluation { accepted, decision, path };
        }
        last = decision;
    }
    Evaluation { accepted: true, decision: last, path }
}

/// The kernel's jump stack is 16 deep; validated programs have no loops,
/// so this only guards against an unvalidated one.
const MAX_DEPTH: usize = 16;

fn run(host: Host<'_>, chain: &Chain, pkt: &Packet, path: &mut Vec<String>, depth: usize) -> Outcome {
    let p = host.program;
    for (i, rule) in chain.rules.iter().enumerate() {
        if !rule.matches.iter().all(|m| matches(host, m, pkt)) {
            continue;
        }
        let verdict = match &rule.action {
            Action::Verdict(v) => v,
            Action::Vmap { family, field, map } => {
                let found = (pkt.family() == *family)
                    .then(|| p.maps.get(map)?.elements.get(&Element::Addr(addr(pkt, *field))))
                    .flatten();
                match found {
                    Some(v) => v,
                    None => continue,
                }
            }
            // Logging decides nothing: the next rule runs.
            Action::Log { .. } => continue,
        };
        path.push(format!("{}[{i}]", chain.name));
        let here = || Decision::Rule { chain: chain.name.clone(), rule: i, comment: rule.comment.clone() };
        match verdict {
            Verdict::Accept => return Outcome::Verdict(true, here()),
            Verdict::Drop => return Outcome::Verdict(false, here()),
            Verdict::Return => return Outcome::Return,
            Verdict::Jump(target) => {
                let Some(next) = p.chains.get(target).filter(|_| depth < MAX_DEPTH) else {
                    return Outcome::Verdict(false, here());
                };
                if let Outcome::Verdict(a, d) = run(host, next, pkt, path, depth + 1) {
                    return Outcome::Verdict(a, d);
                }
            }
        }
    }
    Outcome::Return
}

fn addr(pkt: &Packet, field: AddrField) -> IpAddr {
    match field {
        AddrField::Saddr => pkt.src,
        AddrField::Daddr => pkt.dst,
    }
}

fn in_set(set: Option<&Set>, ip: IpAddr) -> bool {
    let Some(s) = set else { return false };
    if s.interval {
        s.elements.iter().any(|e| matches!(e, Element::Net(n) if n.contains(&ip)))
    } else {
        s.elements.contains(&Element::Addr(ip))
    }
}

fn matches(host: Host<'_>, m: &Match, pkt: &Packet) -> bool {
    let p = host.program;
    match m {
        Match::CtState(states) => states.contains(&pkt.ct),
        // `ip saddr` carries an implicit `meta nfproto ipv4`: an IPv6
        // packet matches neither `ip saddr X` nor `ip saddr != X`.
        Match::Addr { family, field, negate, rhs } => {
            if pkt.family() != *family {
                return false;
            }
            let ip = addr(pkt, *field);
            let inside = match rhs {
                AddrMatch::Set(name) => in_set(p.sets.get(name), ip),
                AddrMatch::Nets(nets) => nets.iter().any(|n| n.contains(&ip)),
            };
            inside != *negate
        }
        Match::Proto { proto, dport } => match pkt.l4 {
            L4::Port { proto: pp, dport: d, .. } => pp == *proto && dport.is_none_or(|r| r.contains(d)),
            _ => false,
        },
        Match::NamedPort { family, set } => match pkt.l4 {
            L4::Port { proto, dport, .. } if pkt.family() == *family => {
                p.sets.get(set).is_some_and(|s| s.elements.contains(&Element::AddrProtoPort(pkt.dst, proto, dport)))
            }
            _ => false,
        },
        // One lookup of the concatenation: both fields at once, exactly.
        Match::AddrPair { family, set } => {
            pkt.family() == *family && p.sets.get(set).is_some_and(|s| s.elements.contains(&Element::AddrPair(pkt.src, pkt.dst)))
        }
        Match::Icmpv6Type(types) => match pkt.l4 {
            L4::Icmpv6 { ty } => pkt.family() == Family::IPv6 && types.iter().any(|t| t.code() == ty),
            _ => false,
        },
        Match::NfProto(f) => pkt.family() == *f,
        Match::FibSaddrLocal { negate } => host.addrs.contains(&pkt.src) != *negate,
        Match::NoRouteBack => host.no_route_back(pkt),
        Match::Ip6HopLimit255 => pkt.family() == Family::IPv6 && pkt.hop_limit == 255,
        // Chance and rate only ever guard a log rule, which decides nothing
        // (`nft::droplog`): taking them as matching changes no verdict.
        Match::OneIn(_) | Match::Limit(_) => true,
    }
}

// ---------------------------------------------------------------------------
// Flows across nodes.

/// One netfilter hook on one node that a packet passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub node: String,
    pub hook: Hook,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopVerdict {
    pub hop: Hop,
    /// `None`: the node has no program (the hop enforces nothing).
    pub eval: Option<Evaluation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTrace {
    pub packet: Packet,
    /// The first packet and its reply both got through.
    pub allowed: bool,
    pub hops: Vec<HopVerdict>,
    /// The reply's way back; empty when the first packet was dropped.
    pub reply: Vec<HopVerdict>,
}

/// Where an endpoint sits: the node whose hooks its packets cross, and
/// whether it is a policy pod (which has a side to judge).
fn place(cluster: &Cluster, e: &Endpoint) -> Option<(String, bool)> {
    match e {
        Endpoint::Pod(id) => {
            let pod = &cluster.pods[*id];
            Some((super::compile::node_of(pod).to_string(), pod.is_policy_pod()))
        }
        Endpoint::Node(n) | Endpoint::NodeAddr(n, _) => Some((n.clone(), false)),
        Endpoint::Ip(_) => None,
    }
}

/// The hooks a connection's first packet crosses from `src` to `dst`, in
/// order, exactly as the kernel runs them (with no Service address in
/// between: a test names pods and nodes, not Services).
///
/// - A packet enters a node at prerouting: from a local pod's interface,
///   from the wire, or back through loopback when the node sent it to one
///   of its own addresses. Then it is either delivered to the node (input)
///   or routed on (forward, postrouting), to a local pod or out of the node.
/// - The node's own packets (and a host-network pod's) start at output and
///   always leave through postrouting, even to the node itself (loopback,
///   then prerouting and input again).
/// - Traffic from a pod to its own address never leaves the pod (through
///   its Service it does: [`hops_via_service`]).
///
/// So pod -> pod on one node is `prerouting forward postrouting`; between
/// nodes that, then the same on the second node; pod -> its node is
/// `prerouting input`; node -> local pod is `output postrouting`.
///
/// An IP endpoint is outside the cluster (the policy test format's
/// definition): it has no node, so the model follows the packet only
/// through the pod's (or node's) side. An IP literal inside a node's pod
/// CIDR that no running pod holds is closed by that node's fail-closed
/// rules when the packet crosses it, as in the kernel; with no pod there,
/// nothing could answer it either way (see [`crate::policytest::interp`]).
pub fn hops(cluster: &Cluster, src: &Endpoint, dst: &Endpoint) -> Vec<Hop> {
    let hop = |node: &str, hook| Hop { node: node.to_string(), hook };
    let (s, d) = (place(cluster, src), place(cluster, dst));
    if src == dst && s.as_ref().is_some_and(|(_, pod)| *pod) {
        return vec![];
    }
    let mut out = Vec::new();
    // The node the packet enters next at prerouting, if any.
    let mut enters: Option<&str> = match (&s, &d) {
        (Some((n, true)), _) => Some(n),
        (Some((n, false)), _) => {
            out.push(hop(n, Hook::Output));
            out.push(hop(n, Hook::Postrouting));
            match &d {
                Some((m, true)) if m == n => None,
                Some((m, _)) => Some(m),
                None => None,
            }
        }
        (None, Some((m, _))) => Some(m),
        (None, None) => None,
    };
    while let Some(n) = enters {
        out.push(hop(n, Hook::Prerouting));
        match &d {
            Some((m, false)) if m == n => {
                out.push(hop(n, Hook::Input));
                enters = None;
            }
            _ => {
                out.push(hop(n, Hook::Forward));
                out.push(hop(n, Hook::Postrouting));
                enters = d.as_ref().map(|(m, _)| m.as_str()).filter(|m| *m != n);
            }
        }
    }
    out
}

/// The hooks a connection's first packet crosses from `src` to `dst`
/// when the client sends to a Service that kube-proxy rewrites (DNAT) to
/// `dst` before anything judges it: those of [`hops`], except that a pod
/// reaching itself this way (hairpin) leaves through its own interface and
/// comes back, crossing its node's `prerouting forward postrouting` with
/// itself as both source and destination (kube-proxy's masquerade, which
/// lets the pod accept it, runs after every judging chain).
pub fn hops_via_service(cluster: &Cluster, src: &Endpoint, dst: &Endpoint) -> Vec<Hop> {
    match (src, dst) {
        (Endpoint::Pod(a), Endpoint::Pod(b)) if a == b && cluster.pods[*a].is_policy_pod() => {
            let node = super::compile::node_of(&cluster.pods[*a]);
            [Hook::Prerouting, Hook::Forward, Hook::Postrouting].into_iter().map(|hook| Hop { node: node.to_string(), hook }).collect()
        }
        _ => hops(cluster, src, dst),
    }
}

/// Which hooks a flow crosses: [`hops`], or [`hops_via_service`].
type Hops = fn(&Cluster, &Endpoint, &Endpoint) -> Vec<Hop>;

/// Where a packet from `e` comes into the first node it meets at
/// prerouting: a pod through its own interface, anything else off the wire
/// (a node's own packets start at output, and loop back as [`Iif::Local`]).
fn first_iif(cluster: &Cluster, e: &Endpoint) -> Iif {
    match e {
        Endpoint::Pod(id) => {
            let pod = &cluster.pods[*id];
            Iif::Pod { v4: pod.ip(Family::IPv4), v6: pod.ip(Family::IPv6) }
        }
        Endpoint::Node(_) | Endpoint::NodeAddr(..) => Iif::Local,
        Endpoint::Ip(_) => Iif::Wire,
    }
}

/// Each hop of `hops(from, to)` with `pkt` as it is there: entering a
/// node at prerouting through the first endpoint's interface, loopback
/// (after the same node's output) or the wire.
fn hop_steps(cluster: &Cluster, from: &Endpoint, to: &Endpoint, mut pkt: Packet, hops: Hops) -> Vec<(Hop, Packet)> {
    let path = hops(cluster, from, to);
    let mut out = Vec::with_capacity(path.len());
    for (i, hop) in path.iter().enumerate() {
        if hop.hook == Hook::Prerouting {
            pkt.iif = match i.checked_sub(1).map(|j| &path[j]) {
                None => first_iif(cluster, from),
                Some(prev) if prev.node == hop.node => Iif::Local,
                Some(_) => Iif::Wire,
            };
        }
        out.push((hop.clone(), pkt));
    }
    out
}

/// Run a connection: its first packet through `there` (each hop with the
/// packet as that node sees it), then, if it got through, its reply
/// through `back()`, each node's conntrack deciding the state each packet
/// carries there.
fn run_connection<'p>(
    cluster: &Cluster,
    programs: &dyn Fn(&str) -> Option<&'p Program>,
    packet: Packet,
    there: Vec<(Hop, Packet)>,
    back: impl FnOnce() -> Vec<(Hop, Packet)>,
) -> FlowTrace {
    let tracks: BTreeMap<String, Conntrack> = there.iter().map(|(h, _)| (h.node.clone(), Conntrack::default())).collect();
    let run = |steps: Vec<(Hop, Packet)>| -> Vec<HopVerdict> {
        let mut out: Vec<HopVerdict> = Vec::with_capacity(steps.len());
        let mut dropped = false;
        for (i, (hop, pkt)) in steps.iter().enumerate() {
            let Some(ct) = tracks.get(&hop.node) else { continue };
            let pkt = Packet { ct: ct.state(pkt), ..*pkt };
            let eval = programs(&hop.node).map(|p| eval_hook(Host::of(cluster, &hop.node, p), hop.hook, &pkt));
            dropped |= eval.as_ref().is_some_and(|e| !e.accepted);
            // Conntrack confirms a connection when its packet leaves the
            // node's last hook (postrouting, or input when delivered).
            let leaves = steps.get(i + 1).is_none_or(|(next, _)| next.node != hop.node || next.hook == Hook::Prerouting);
            if leaves && !dropped {
                ct.confirm(&pkt);
            }
            out.push(HopVerdict { hop: hop.clone(), eval });
        }
        out
    };
    let passed = |hops: &[HopVerdict]| hops.iter().all(|h| h.eval.as_ref().is_none_or(|e| e.accepted));
    let hops = run(there);
    let reply = if passed(&hops) { run(back()) } else { Vec::new() };
    let allowed = passed(&hops) && passed(&reply);
    FlowTrace { packet, allowed, hops, reply }
}

/// Run `flow`'s first packet in `family` through the programs of the
/// nodes it crosses (`programs` gives a node's program), then, if it got
/// through, its reply back, each node's conntrack deciding the state each
/// packet carries there. `None` when an endpoint has no address in `family`.
pub fn flow_verdict<'p>(
    cluster: &Cluster,
    programs: &dyn Fn(&str) -> Option<&'p Program>,
    flow: &Flow,
    family: Family,
) -> Option<FlowTrace> {
    flow_verdict_on(cluster, programs, flow, family, hops)
}

/// [`flow_verdict`] for a connection through a Service rewritten to
/// `flow.dst` (`flow.port` being the backend's port): the hooks of
/// [`hops_via_service`], so a pod reaching itself (hairpin) is judged by
/// its node on the way out and back in.
pub fn flow_verdict_via_service<'p>(
    cluster: &Cluster,
    programs: &dyn Fn(&str) -> Option<&'p Program>,
    flow: &Flow,
    family: Family,
) -> Option<FlowTrace> {
    flow_verdict_on(cluster, programs, flow, family, hops_via_service)
}

fn flow_verdict_on<'p>(
    cluster: &Cluster,
    programs: &dyn Fn(&str) -> Option<&'p Program>,
    flow: &Flow,
    family: Family,
    hops: Hops,
) -> Option<FlowTrace> {
    let packet = Packet::new(flow.src.ip(cluster, family)?, flow.dst.ip(cluster, family)?, flow.protocol, flow.port);
    let there = hop_steps(cluster, &flow.src, &flow.dst, packet, hops);
    Some(run_connection(cluster, programs, packet, there, || hop_steps(cluster, &flow.dst, &flow.src, packet.reply(), hops)))
}

/// A connection through kube-proxy's translation (a Service): DNAT to
/// `backend` where the Service address is caught, and maybe a masquerade
/// on the way out of the entry node. Service-agnostic on purpose: the
/// caller says what was translated where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    pub client: Endpoint,
    pub backend: Endpoint,
    pub protocol: Protocol,
    pub backend_port: u16,
    /// NodePort traffic: the entry node, the address and the nodePort the
    /// client sends to. `None`: a ClusterIP, caught on the client's node.
    pub node_port: Option<(String, IpAddr, u16)>,
    /// The source after the entry node's masquerade (applied after every
    /// judging chain there, before the packet leaves for another node).
    pub source_nat: Option<IpAddr>,
}

/// How a packet comes into a node and where it goes from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrive {
    /// Sent by the node itself (or a host-network pod): output.
    Origin,
    /// From a local pod's interface, or off the wire: prerouting.
    In(Iif),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Delivered to the node itself: input.
    Host,
    /// Routed on, to a local pod (its interface) or the wire: postrouting.
    Out(Option<Iif>),
}

/// One node's part of a translated connection: the packet as that node's
/// rules see it (after any DNAT there, before its masquerade).
struct Segment {
    node: String,
    arrive: Arrive,
    leave: Leave,
    pkt: Packet,
}

impl Segment {
    fn steps(&self) -> Vec<(Hop, Packet)> {
        let hop = |hook| Hop { node: self.node.clone(), hook };
        let with = |iif| Packet { iif, ..self.pkt };
        let mut out = Vec::new();
        match self.arrive {
            Arrive::Origin => {
                out.push((hop(Hook::Output), self.pkt));
                out.push((hop(Hook::Postrouting), self.pkt));
                if self.leave == Leave::Host {
                    out.push((hop(Hook::Prerouting), with(Iif::Local)));
                    out.push((hop(Hook::Input), with(Iif::Local)));
                }
            }
            Arrive::In(iif) => {
                out.push((hop(Hook::Prerouting), with(iif)));
                match self.leave {
                    Leave::Host => out.push((hop(Hook::Input), with(iif))),
                    Leave::Out(_) => {
                        out.push((hop(Hook::Forward), with(iif)));
                        out.push((hop(Hook::Postrouting), with(iif)));
                    }
                }
            }
        }
        out
    }

    /// The same node's part of the reply: the other way round.
    fn reply(&self) -> Segment {
        let arrive = match self.leave {
            Leave::Host => Arrive::Origin,
            Leave::Out(pod) => Arrive::In(pod.unwrap_or(Iif::Wire)),
        };
        let leave = match self.arrive {
            Arrive::Origin => Leave::Host,
            Arrive::In(Iif::Wire) | Arrive::In(Iif::Local) => Leave::Out(None),
            Arrive::In(pod) => Leave::Out(Some(pod)),
        };
        Segment { node: self.node.clone(), arrive, leave, pkt: self.pkt.reply() }
    }
}

/// A connection through a Service, node by node as the packets really go:
/// the client's node (its egress sees the backend if the translation
/// happened there, else the entry node at the nodePort), the entry node
/// (DNAT, judging, then the masquerade), the backend's node (its ingress
/// sees the client or the masqueraded source); a pod that is its own
/// backend (hairpin) leaves and re-enters through its node's hooks with
/// its own address as source and destination. Then the reply back, each
/// node answering the connection as it saw it. `None` when an endpoint has
/// no address in `family`.
pub fn path_verdict<'p>(cluster: &Cluster, programs: &dyn Fn(&str) -> Option<&'p Program>, t: &Translated, family: Family) -> Option<FlowTrace> {
    let client_ip = t.client.ip(cluster, family)?;
    let backend_ip = t.backend.ip(cluster, family)?;
    let to_backend = Packet::new(client_ip, backend_ip, t.protocol, t.backend_port);
    let iif_of = |e: &Endpoint| match first_iif(cluster, e) {
        Iif::Local => None,
        iif => Some(iif),
    };
    let client = place(cluster, &t.client);
    let backend = place(cluster, &t.backend);
    // Where the backend is delivered, on its node.
    let deliver = match &backend {
        Some((_, true)) => Leave::Out(iif_of(&t.backend)),
        Some((_, false)) => Leave::Host,
        None => Leave::Out(None),
    };
    let backend_node = backend.as_ref().map(|(n, _)| n.clone());
    let arrive_from_client = match &client {
        Some((_, true)) => Arrive::In(first_iif(cluster, &t.client)),
        Some((_, false)) => Arrive::Origin,
        None => Arrive::In(Iif::Wire),
    };
    let mut segments: Vec<Segment> = Vec::new();
    // The node that translates: the entry node, or the client's for a ClusterIP.
    let (translator, arrive) = match (&t.node_port, &client) {
        (None, Some((c, _))) => (c.clone(), arrive_from_client),
        (None, None) => return None,
        (Some((e, _, _)), Some((c, _))) if c == e => (e.clone(), arrive_from_client),
        (Some((e, ip, port)), client) => {
            if let Some((c, _)) = client {
                let pkt = Packet::new(client_ip, *ip, t.protocol, *port);
                segments.push(Segment { node: c.clone(), arrive: arrive_from_client, leave: Leave::Out(None), pkt });
            }
            (e.clone(), Arrive::In(Iif::Wire))
        }
    };
    let local = backend_node.as_deref() == Some(translator.as_str());
    let leave = if local { deliver } else { Leave::Out(None) };
    segments.push(Segment { node: translator, arrive, leave, pkt: to_backend });
    if let (false, Some(b)) = (local, backend_node) {
        let pkt = Packet { src: t.source_nat.unwrap_or(client_ip), ..to_backend };
        segments.push(Segment { node: b, arrive: Arrive::In(Iif::Wire), leave: deliver, pkt });
    }
    let there: Vec<(Hop, Packet)> = segments.iter().flat_map(Segment::steps).collect();
    let first = there.first().map_or(to_backend, |(_, p)| *p);
    Some(run_connection(cluster, programs, first, there, || segments.iter().rev().flat_map(|s| s.reply().steps()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::program::tests::{sample, v4};

    fn tcp(src: &str, dst: &str, port: u16) -> Packet {
        Packet::new(v4(src), v4(dst), Protocol::Tcp, port)
    }

    /// The node's own address, in every test host.
    const NODE_ADDRS: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(172, 18, 0, 2))];

    fn host(p: &Program) -> Host<'_> {
        Host { program: p, addrs: NODE_ADDRS, pods: None }
    }

    /// Check the verdict at postrouting, and the rule that gave it.
    fn check(p: &Program, pkt: Packet, accepted: bool, decided_at: &str) {
        let e = eval_hook(host(p), Hook::Postrouting, &pkt);
        let at = match &e.decision {
            Decision::Rule { chain, rule, .. } => format!("{chain}[{rule}]"),
            Decision::Policy { chain } => format!("{chain} policy"),
            Decision::NoChain => "no chain".into(),
        };
        assert_eq!((e.accepted, at.as_str()), (accepted, decided_at), "{pkt:?}: path {:?}", e.path);
    }

    #[test]
    fn sample_program() {
        let p = sample();
        // Not a local pod, outside the pod CIDR: the chain runs out.
        check(&p, tcp("10.244.2.11", "192.0.2.1", 80), true, "ingress policy");
        // A local pod without isolation: the map accepts.
        check(&p, tcp("10.9.9.9", "10.244.1.12", 80), true, "ingress[4]");
        // The node's own address, by address: before any isolation.
        check(&p, tcp("172.18.0.2", "10.244.1.11", 82), true, "ingress[2]");
        check(&p, tcp("172.18.0.2", "10.244.1.99", 82), true, "ingress[2]");
        // Isolated: jumps to grp_a, then pol_a.
        check(&p, tcp("10.244.2.11", "10.244.1.11", 80), true, "pol_a[0]");
        check(&p, tcp("172.16.0.1", "10.244.1.11", 82), false, "grp_a[1]");
        // ipBlock with except, as an anonymous set.
        check(&p, tcp("10.3.0.1", "10.244.1.11", 9), true, "pol_a[1]");
        check(&p, tcp("10.1.2.3", "10.244.1.11", 9), false, "grp_a[1]");
        check(&p, tcp("10.2.0.1", "10.244.1.11", 9), false, "grp_a[1]");
        check(&p, tcp("192.168.1.5", "10.244.1.11", 9), true, "pol_a[1]");
        // Named port: the concatenation with the destination.
        check(&p, tcp("172.16.0.1", "10.244.1.11", 8080), true, "pol_a[2]");
        check(&p, Packet { l4: L4::Port { proto: Protocol::Udp, sport: EPHEMERAL_PORT, dport: 8080 }, ..tcp("172.16.0.1", "10.244.1.11", 8080) }, false, "grp_a[1]");
        check(&p, Packet { l4: L4::Port { proto: Protocol::Sctp, sport: EPHEMERAL_PORT, dport: 1 }, ..tcp("172.16.0.1", "10.244.1.11", 1) }, true, "pol_a[3]");
        // Unprogrammed address in the pod CIDR: fail closed.
        check(&p, tcp("10.244.2.11", "10.244.1.99", 80), false, "ingress[5]");
        // Conntrack and neighbour discovery come first.
        check(&p, Packet { ct: CtState::Established, ..tcp("10.1.2.3", "10.244.1.11", 9) }, true, "ingress[0]");
        check(&p, Packet { ct: CtState::Invalid, ..tcp("10.1.2.3", "10.244.1.11", 9) }, false, "ingress[3]");
        let nd = Packet { src: "fe80::1".parse().unwrap(), dst: "fe80::2".parse().unwrap(), l4: L4::Icmpv6 { ty: 135 }, ct: CtState::Invalid, ..tcp("10.0.0.1", "10.0.0.2", 1) };
        check(&p, nd, true, "ingress[1]");
        check(&p, Packet { l4: L4::Icmpv6 { ty: 128 }, ..nd }, false, "ingress[3]");
        // No chain on the hook.
        assert_eq!(eval_hook(host(&p), Hook::Input, &tcp("1.1.1.1", "10.244.1.11", 1)).decision, Decision::NoChain);
    }

    #[test]
    fn family_dependency_and_negation() {
        let mut p = Program::default();
        let neg = |family| Match::Addr {
            family,
            field: AddrField::Saddr,
            negate: true,
            rhs: AddrMatch::Nets(["10.0.0.0/8".parse().unwrap()].into()),
        };
        p.add_chain(Chain {
            name: "c".into(),
            base: Some(BaseHook { hook: Hook::Postrouting, priority: 0, policy: ChainPolicy::Drop }),
            rules: vec![Rule::verdict(vec![neg(Family::IPv4)], Verdict::Accept)],
        });
        check(&p, tcp("192.0.2.1", "192.0.2.2", 1), true, "c[0]");
        check(&p, tcp("10.0.0.1", "192.0.2.2", 1), false, "c policy");
        // `ip saddr != 10.0.0.0/8` does not match IPv6 packets at all.
        let v6 = Packet::new("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap(), Protocol::Tcp, 1);
        check(&p, v6, false, "c policy");
    }

    #[test]
    fn every_base_chain_on_the_hook_runs() {
        let mut p = Program::default();
        let base = |name: &str, priority, rules| Chain {
            name: name.into(),
            base: Some(BaseHook { hook: Hook::Postrouting, priority, policy: ChainPolicy::Accept }),
            rules,
        };
        p.add_chain(base("a", -5, vec![Rule::verdict(vec![], Verdict::Accept)]));
        p.add_chain(base("b", 5, vec![Rule::verdict(vec![Match::Proto { proto: Protocol::Udp, dport: None }], Verdict::Drop)]));
        check(&p, tcp("1.1.1.1", "2.2.2.2", 1), true, "b policy");
        check(&p, Packet { l4: L4::Port { proto: Protocol::Udp, sport: EPHEMERAL_PORT, dport: 1 }, ..tcp("1.1.1.1", "2.2.2.2", 1) }, false, "b[0]");
    }

    #[test]
    fn hops_follow_the_packet() {
        let c = crate::nft::compile::tests::cluster(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {nodeName: node-2, hostNetwork: true}\nstatus: {podIP: 172.18.0.3}\n",
        );
        let e = |s: &str| Endpoint::parse(&c, s).unwrap();
        let check = |from: &str, to: &str, want: &str| {
            let got: Vec<String> = hops(&c, &e(from), &e(to)).iter().map(|h| format!("{}:{}", h.node, h.hook.name())).collect();
            assert_eq!(got.join(" "), want, "{from} -> {to}");
        };
        check("x/a", "x/a", "");
        check("x/a", "x/c", "node-1:prerouting node-1:forward node-1:postrouting");
        check("x/a", "x/b", "node-1:prerouting node-1:forward node-1:postrouting node-2:prerouting node-2:forward node-2:postrouting");
        check("x/a", "node/node-1", "node-1:prerouting node-1:input");
        check("x/a", "node/node-2", "node-1:prerouting node-1:forward node-1:postrouting node-2:prerouting node-2:input");
        check("x/a", "192.0.2.1", "node-1:prerouting node-1:forward node-1:postrouting");
        check("192.0.2.1", "x/b", "node-2:prerouting node-2:forward node-2:postrouting");
        check("192.0.2.1", "node/node-1", "node-1:prerouting node-1:input");
        check("node/node-1", "x/a", "node-1:output node-1:postrouting");
        check("node/node-1", "x/b", "node-1:output node-1:postrouting node-2:prerouting node-2:forward node-2:postrouting");
        check("node/node-1", "node/node-1", "node-1:output node-1:postrouting node-1:prerouting node-1:input");
        check("node/node-1", "node/node-2", "node-1:output node-1:postrouting node-2:prerouting node-2:input");
        check("x/h", "x/a", "node-2:output node-2:postrouting node-1:prerouting node-1:forward node-1:postrouting");
        check("x/h", "node/node-2", "node-2:output node-2:postrouting node-2:prerouting node-2:input");
        check("node/node-2", "192.0.2.1", "node-2:output node-2:postrouting");
    }

    /// Which node, hook and chain settle a flow: each direction is judged
    /// once, on the hook where the kernel would judge it, and the node's own
    /// addresses (not a remote node's, not a pod's) pass ingress.
    #[test]
    fn flows_are_judged_where_the_kernel_judges_them() {
        let np = |name: &str, spec: &str| {
            format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n")
        };
        let c = crate::nft::compile::tests::cluster(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: h, namespace: y}}\nspec: {{nodeName: node-2, hostNetwork: true}}\nstatus: {{podIP: 172.18.0.3}}\n{}{}",
            np("a-in", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}"),
            np("c-out", "{podSelector: {matchLabels: {pod: c}}, policyTypes: [Egress]}"),
        ));
        let programs = crate::nft::compile_all(&c, &crate::ir::resolve(&c));
        let check = |from: &str, to: &str, want: &str| {
            let flow = Flow {
                src: Endpoint::parse(&c, from).unwrap(),
                dst: Endpoint::parse(&c, to).unwrap(),
                protocol: Protocol::Tcp,
                port: 80,
                family: None,
            };
            let t = flow_verdict(&c, &|n| programs.get(n), &flow, Family::IPv4).unwrap();
            // The first hop that dropped it, or "allowed".
            let got = t.hops.iter().find(|h| h.eval.as_ref().is_some_and(|e| !e.accepted)).map_or("allowed".to_string(), |h| {
                let Some(Evaluation { decision: Decision::Rule { comment: Some(c), .. }, .. }) = &h.eval else { panic!("{h:?}") };
                format!("{}:{} {c}", h.hop.node, h.hop.hook.name())
            });
            assert_eq!(got, want, "{from} -> {to}: {t:#?}");
            assert_eq!(t.allowed, want == "allowed");
        };
        // x/a (node-1) isolated for ingress, x/c (node-1) for egress.
        check("x/b", "x/a", "node-1:postrouting x/a-in ingress: isolated, no rule allowed");
        check("x/c", "x/a", "node-1:postrouting x/c-out egress: isolated, no rule allowed");
        check("y/a", "x/a", "node-1:postrouting x/a-in ingress: isolated, no rule allowed");
        check("x/c", "x/b", "node-1:postrouting x/c-out egress: isolated, no rule allowed");
        check("x/c", "node/node-1", "node-1:input x/c-out egress: isolated, no rule allowed");
        check("x/c", "node/node-2", "node-1:postrouting x/c-out egress: isolated, no rule allowed");
        check("x/c", "192.0.2.1", "node-1:postrouting x/c-out egress: isolated, no rule allowed");
        check("192.0.2.1", "x/a", "node-1:postrouting x/a-in ingress: isolated, no rule allowed");
        check("node/node-1", "x/a", "allowed");
        check("node/node-2", "x/a", "node-1:postrouting x/a-in ingress: isolated, no rule allowed");
        check("y/h", "x/a", "node-1:postrouting x/a-in ingress: isolated, no rule allowed");
        check("x/a", "x/c", "allowed");
        check("x/a", "node/node-1", "allowed");
    }

    /// A connection is its first packet and its reply: the reply gets
    /// into a pod isolated both ways on conntrack's word (established
    /// where the first packet was let through), whatever its protocol; the
    /// same packet with no connection behind it is new, and judged.
    #[test]
    fn replies_pass_on_conntrack_state() {
        let np = |name: &str, spec: &str| {
            format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n")
        };
        // x/a (node-1) and x/b (node-2) isolated both ways; a may reach b
        // on 53 and 80, whatever the protocol; nothing may reach a.
        let c = crate::nft::compile::tests::cluster(&format!(
            "{}{}",
            np("a-out", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 53, protocol: UDP}, {port: 80}, {port: 80, protocol: SCTP}]}]}"),
            np("b-in", "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress, Egress], ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]}"),
        ));
        let programs = crate::nft::compile_all(&c, &crate::ir::resolve(&c));
        let flow = |from: &str, to: &str, protocol, port| Flow {
            src: Endpoint::parse(&c, from).unwrap(),
            dst: Endpoint::parse(&c, to).unwrap(),
            protocol,
            port,
            family: None,
        };
        for (proto, port) in [(Protocol::Udp, 53), (Protocol::Tcp, 80), (Protocol::Sctp, 80)] {
            let t = flow_verdict(&c, &|n| programs.get(n), &flow("x/a", "x/b", proto, port), Family::IPv4).unwrap();
            assert!(t.allowed && !t.reply.is_empty(), "{proto:?}: {t:#?}");
            // The reply was let through by the conntrack rule on both nodes.
            for h in t.reply.iter().filter(|h| matches!(h.hop.hook, Hook::Postrouting | Hook::Input)) {
                let Some(Evaluation { decision: Decision::Rule { rule: 0, .. }, .. }) = &h.eval else { panic!("{h:#?}") };
            }
            let back = flow_verdict(&c, &|n| programs.get(n), &flow("x/b", "x/a", proto, port), Family::IPv4).unwrap();
            assert!(!back.allowed && back.reply.is_empty(), "{proto:?} the other way is a new flow");
        }
        // A packet that looks like a reply, with no connection behind it.
        let p = &programs["node-1"];
        let fake = Packet { l4: L4::Port { proto: Protocol::Udp, sport: 53, dport: EPHEMERAL_PORT }, ..tcp("10.244.2.11", "10.244.1.11", 0) };
        let fake = Packet { ct: Conntrack::default().state(&fake), ..fake };
        assert_eq!(fake.ct, CtState::New);
        assert!(!eval_hook(Host::of(&c, "node-1", p), Hook::Postrouting, &fake).accepted);
    }

    /// What conntrack cannot place in a connection is invalid and dropped,
    /// for every pod; a new ICMP flow is judged like any other protocol.
    #[test]
    fn invalid_is_dropped_and_icmp_is_judged() {
        let c = crate::nft::compile::tests::cluster(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}\n",
        );
        let programs = crate::nft::compile_all(&c, &crate::ir::resolve(&c));
        let p = &programs["node-1"];
        let verdict = |pkt: Packet| {
            let pkt = Packet { ct: Conntrack::default().state(&pkt), ..pkt };
            eval_hook(Host::of(&c, "node-1", p), Hook::Postrouting, &pkt).accepted
        };
        // x/a (10.244.1.11) is isolated; x/c (10.244.1.12) is not.
        for (dst, isolated) in [("10.244.1.11", true), ("10.244.1.12", false)] {
            let icmp = |ty| Packet { l4: L4::Icmp { ty }, ..tcp("10.244.2.21", dst, 0) };
            assert!(!verdict(icmp(3)), "an unreachable about nothing, to {dst}");
            assert!(!verdict(icmp(0)), "an echo reply to no request, to {dst}");
            assert!(!verdict(icmp(11)), "a time-exceeded about nothing, to {dst}");
            assert_eq!(verdict(icmp(8)), !isolated, "an echo request is a new flow, judged, to {dst}");
        }
        // x/b may reach x/a with any protocol: the rule has no ports.
        let from_b = |l4| Packet { l4, ..tcp("10.244.2.11", "10.244.1.11", 0) };
        assert!(verdict(from_b(L4::Icmp { ty: 8 })));
        assert!(verdict(from_b(L4::Other(47))), "GRE");
    }

    /// Hairpin: a pod isolated both ways, whose rules do not admit itself,
    /// reaches itself through its Service (out through its node and back:
    /// both judging chains see it as source and destination), while another
    /// pod's packets to it are still judged; only the exact pair matches.
    #[test]
    fn hairpin_through_a_service_is_allowed() {
        let c = crate::nft::compile::tests::cluster(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 81}]}], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 81}]}]}\n",
        );
        let programs = crate::nft::compile_all(&c, &crate::ir::resolve(&c));
        let flow = |from: &str, to: &str, port| Flow {
            src: Endpoint::parse(&c, from).unwrap(),
            dst: Endpoint::parse(&c, to).unwrap(),
            protocol: Protocol::Tcp,
            port,
            family: None,
        };
        let via = |f: &Flow| flow_verdict_via_service(&c, &|n| programs.get(n), f, Family::IPv4).unwrap();
        let t = via(&flow("x/a", "x/a", 80));
        let hooks: Vec<String> = t.hops.iter().map(|h| format!("{}:{}", h.hop.node, h.hop.hook.name())).collect();
        assert_eq!(hooks.join(" "), "node-1:prerouting node-1:forward node-1:postrouting");
        assert!(t.allowed, "{t:#?}");
        let by: Vec<&str> = t.hops[2].eval.as_ref().unwrap().path.iter().map(String::as_str).collect();
        assert_eq!(by.iter().filter(|p| p.starts_with("grp_") && p.ends_with("[0]")).count(), 2, "egress and ingress hairpin rules: {by:?}");
        // Another local pod, and the same pod of another namespace: judged.
        assert!(!via(&flow("x/c", "x/a", 80)).allowed);
        assert!(!via(&flow("y/a", "x/a", 80)).allowed);
        assert!(!via(&flow("x/a", "x/c", 80)).allowed, "a's egress to another pod");
        assert!(via(&flow("x/b", "x/a", 81)).allowed, "what the rules admit still passes");
        // Directly to its own address the packet never leaves the pod.
        assert!(flow_verdict(&c, &|n| programs.get(n), &flow("x/a", "x/a", 80), Family::IPv4).unwrap().hops.is_empty());
        // A forged pair: x/c claiming x/a's address is stopped by
        // anti-spoofing before any hairpin rule could see it.
        let xa = v4("10.244.1.11");
        let forged = Packet { iif: Iif::Pod { v4: Some(v4("10.244.1.12")), v6: None }, ..Packet::new(xa, xa, Protocol::Tcp, 80) };
        assert!(!eval_hook(Host::of(&c, "node-1", &programs["node-1"]), Hook::Prerouting, &forged).accepted);
        // The lookup is of the pair, not of each address: a's address with
        // any other is not a hairpin.
        let p = &programs["node-1"];
        let host = Host::of(&c, "node-1", p);
        assert!(eval_hook(host, Hook::Postrouting, &Packet::new(xa, xa, Protocol::Tcp, 80)).accepted);
        assert!(!eval_hook(host, Hook::Postrouting, &Packet::new(xa, v4("10.244.1.12"), Protocol::Tcp, 80)).accepted);
        assert!(!eval_hook(host, Hook::Postrouting, &Packet::new(v4("10.244.1.12"), xa, Protocol::Tcp, 80)).accepted);
    }

    /// The anti-spoofing chain: a packet whose source is not routed back
    /// through the interface it came in on is dropped at prerouting.
    #[test]
    fn antispoof_needs_a_route_back() {
        let c = crate::nft::compile::tests::cluster("");
        let programs = crate::nft::compile_all(&c, &crate::ir::resolve(&c));
        let p = &programs["node-1"];
        let xa = Iif::Pod { v4: Some(v4("10.244.1.11")), v6: None };
        let verdict = |src: &str, iif: Iif| {
            let src: IpAddr = src.parse().unwrap();
            let dst = if src.is_ipv4() { v4("10.244.2.11") } else { "fe80::2".parse().unwrap() };
            eval_hook(Host::of(&c, "node-1", p), Hook::Prerouting, &Packet { iif, ..Packet::new(src, dst, Protocol::Udp, 53) }).accepted
        };
        assert!(verdict("10.244.1.11", xa), "its own address");
        assert!(!verdict("10.244.1.12", xa), "another local pod's");
        assert!(!verdict("10.244.2.21", xa), "a remote pod's");
        assert!(!verdict("172.18.0.2", xa), "its node's");
        assert!(!verdict("192.0.2.1", xa), "an outside address");
        assert!(!verdict("10.244.1.11", Iif::Wire), "the wire claiming a local pod");
        assert!(verdict("10.244.2.21", Iif::Wire), "a remote pod, from the wire");
        assert!(!verdict("172.18.0.2", Iif::Wire), "the wire claiming the node");
        assert!(verdict("172.18.0.2", Iif::Local), "the node itself, looped back");
        let nd = Packet { l4: L4::Icmpv6 { ty: 135 }, iif: xa, hop_limit: 255, ..Packet::new("fe80::1".parse().unwrap(), "fe80::2".parse().unwrap(), Protocol::Udp, 0) };
        assert!(eval_hook(Host::of(&c, "node-1", p), Hook::Prerouting, &nd).accepted, "neighbour discovery");
    }

    /// A connection through a Service, node by node: the hops, the source
    /// each node's rules see, and the verdict a masquerade changes.
    #[test]
    fn translated_paths_follow_kube_proxy() {
        let c = crate::nft::compile::tests::cluster(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-from-node-1, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{ipBlock: {cidr: 172.18.0.2/32}}]}]}\n",
        );
        let programs = crate::nft::compile_all(&c, &crate::ir::resolve(&c));
        let e = |s: &str| Endpoint::parse(&c, s).unwrap();
        let path = |client: &str, backend: &str, node_port: Option<(&str, &str)>, nat: Option<&str>| {
            let t = Translated {
                client: e(client),
                backend: e(backend),
                protocol: Protocol::Tcp,
                backend_port: 80,
                node_port: node_port.map(|(n, ip)| (n.to_string(), v4(ip), 30080)),
                source_nat: nat.map(v4),
            };
            let trace = path_verdict(&c, &|n| programs.get(n), &t, Family::IPv4).unwrap();
            let hops: Vec<String> = trace.hops.iter().map(|h| format!("{}:{}", h.hop.node, h.hop.hook.name())).collect();
            (hops.join(" "), trace.allowed)
        };
        let n1_n2 = "node-1:prerouting node-1:forward node-1:postrouting node-2:prerouting node-2:forward node-2:postrouting";
        // ClusterIP: translated on the client's node; x/b sees x/a and denies.
        assert_eq!(path("x/a", "x/b", None, None), (n1_n2.to_string(), false));
        // Hairpin: out of the pod and back through its node's hooks.
        assert_eq!(path("x/a", "x/a", None, None), ("node-1:prerouting node-1:forward node-1:postrouting".to_string(), true));
        // A node's own ClusterIP traffic starts at output.
        assert_eq!(path("node/node-1", "x/c", None, None), ("node-1:output node-1:postrouting".to_string(), true));
        // NodePort through node-1, masqueraded: x/b sees node-1 and admits it.
        assert_eq!(path("192.0.2.1", "x/b", Some(("node-1", "172.18.0.2")), Some("172.18.0.2")), (n1_n2.to_string(), true));
        assert_eq!(path("192.0.2.1", "x/b", Some(("node-1", "172.18.0.2")), None), (n1_n2.to_string(), false));
        // A pod to another node's nodePort: its node, the entry node, the backend's.
        let (hops, _) = path("x/c", "x/b", Some(("node-2", "172.18.0.3")), None);
        assert_eq!(hops, n1_n2);
        let (hops, _) = path("x/b", "x/c", Some(("node-2", "172.18.0.3")), Some("172.18.0.3"));
        assert_eq!(hops, "node-2:prerouting node-2:forward node-2:postrouting node-1:prerouting node-1:forward node-1:postrouting");
    }
}
