//! Evaluate a packet through a [`Program`] as the kernel would, for the
//! subset we emit: base chains by hook and priority, jump and return, verdict
//! maps, hash and interval sets, concatenations, negation, accept and drop
//! (counters and comments change nothing), TCP flags, fragments, `fib saddr
//! type local`, answered from the node's own addresses ([`Host`]), and the
//! flow sets the packet path fills (`update @set`), kept per node in a
//! [`Flows`] for as long as one connection is followed.
//!
//! A connection is its first packet there and, when that got through, its
//! reply back ([`flow_verdict`]): netfence keeps no conntrack state, so a
//! reply is judged by rules of its own.
//!
//! It is the compiler's second opinion: `netfence test` runs every flow of a
//! policy test through the programs of the nodes it crosses and checks the
//! result against the reference evaluator ([`crate::eval`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::program::*;
use crate::eval::{Endpoint, Flow};
use crate::model::{Cluster, Family, Protocol};

/// The transport of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Port { proto: Protocol, sport: u16, dport: u16 },
    Icmp { ty: u8 },
    Icmpv6 { ty: u8 },
    /// Any other IP protocol number (ICMP, GRE, ...).
    Other(u8),
}

/// What the rules can see of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// What a `ct state` match sees (netfence's programs have none).
    pub ct: CtState,
    /// A TCP segment that opens a connection: SYN without ACK.
    pub opening: bool,
    /// A fragment after the first (no transport header).
    pub later_fragment: bool,
}

/// The source port of every connection the model follows: an ephemeral one.
pub const EPHEMERAL_PORT: u16 = 40000;

impl Packet {
    /// The first packet of a connection.
    pub fn new(src: IpAddr, dst: IpAddr, proto: Protocol, dport: u16) -> Packet {
        Packet {
            src,
            dst,
            l4: L4::Port { proto, sport: EPHEMERAL_PORT, dport },
            ct: CtState::New,
            opening: true,
            later_fragment: false,
        }
    }

    /// The answer to this packet: the other way round, and for TCP a SYN
    /// ACK (or any later segment), never an opening one.
    pub fn reply(&self) -> Packet {
        let l4 = match self.l4 {
            L4::Port { proto, sport, dport } => L4::Port { proto, sport: dport, dport: sport },
            other => other,
        };
        Packet { src: self.dst, dst: self.src, l4, ct: CtState::Established, opening: false, later_fragment: false }
    }

    pub fn family(&self) -> Family {
        Family::of(&self.src)
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

/// One node as its rules see it: its program, and its own addresses (what
/// `fib saddr type local` looks up). The model knows a node's addresses as
/// its InternalIPs, which its host-network pods share; a bridge CNI's
/// gateway address is the kernel's business only (see tests/nft_hooks.rs).
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    pub program: &'a Program,
    pub addrs: &'a [IpAddr],
    /// What the node's flow sets hold; `None`: empty, and updates are lost.
    pub flows: Option<&'a Flows>,
}

/// The elements the packet path added to a node's dynamic sets: (set,
/// source, protocol, source port, destination, destination port). Time does
/// not pass in the model, so nothing expires.
pub type Flows = RefCell<BTreeSet<(String, IpAddr, Protocol, u16, IpAddr, u16)>>;

impl<'a> Host<'a> {
    /// `node`'s program `p`, with the node's addresses from `cluster`.
    pub fn of(cluster: &'a Cluster, node: &str, p: &'a Program) -> Host<'a> {
        Host { program: p, addrs: cluster.nodes.get(node).map(|n| n.internal_ips.as_slice()).unwrap_or_default(), flows: None }
    }

    pub fn with_flows(self, flows: &'a Flows) -> Host<'a> {
        Host { flows: Some(flows), ..self }
    }
}

/// The packet's flow as a flow set keys it, or its reply's.
fn flow_of(set: &str, pkt: &Packet, reversed: bool) -> Option<(String, IpAddr, Protocol, u16, IpAddr, u16)> {
    let L4::Port { proto, sport, dport } = pkt.l4 else { return None };
    Some(if reversed {
        (set.to_string(), pkt.dst, proto, dport, pkt.src, sport)
    } else {
        (set.to_string(), pkt.src, proto, sport, pkt.dst, dport)
    })
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
            Action::Remember { family, set, reversed, then } => {
                // `ip saddr` in the key carries `meta nfproto ipv4`: the
                // other family's packets do not get here.
                if pkt.family() != *family {
                    continue;
                }
                if let (Some(flows), Some(key)) = (host.flows, flow_of(set, pkt, *reversed)) {
                    flows.borrow_mut().insert(key);
                }
                match then {
                    Some(v) => v,
                    None => continue,
                }
            }
        };
        path.push(format!("{}[{i}]", chain.name));
        let here = || Decision::Rule { chain: chain.name.clone(), rule: i, comment: rule.comment.clone() };
        match verdict {
            Verdict::Accept => return Outcome::Verdict(true, here()),
            Verdict::Drop => return Outcome::Verdict(false, here()),
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
            // A later fragment has a protocol but no ports.
            L4::Port { proto: pp, dport: d, .. } => pp == *proto && dport.is_none_or(|r| !pkt.later_fragment && r.contains(d)),
            _ => false,
        },
        Match::NamedPort { family, set } => match pkt.l4 {
            L4::Port { proto, dport, .. } if pkt.family() == *family && !pkt.later_fragment => {
                p.sets.get(set).is_some_and(|s| s.elements.contains(&Element::AddrProtoPort(pkt.dst, proto, dport)))
            }
            _ => false,
        },
        Match::Icmpv6Type(types) => match pkt.l4 {
            L4::Icmpv6 { ty } => pkt.family() == Family::IPv6 && types.iter().any(|t| t.code() == ty),
            _ => false,
        },
        Match::IcmpType(types) => match pkt.l4 {
            L4::Icmp { ty } => pkt.family() == Family::IPv4 && types.iter().any(|t| t.code() == ty),
            _ => false,
        },
        Match::TcpNotOpening => matches!(pkt.l4, L4::Port { proto: Protocol::Tcp, .. }) && !pkt.opening && !pkt.later_fragment,
        Match::LaterFragment(f) => pkt.family() == *f && pkt.later_fragment,
        Match::L4Protos(ps) => matches!(pkt.l4, L4::Port { proto, .. } if ps.contains(&proto)),
        Match::Flow { family, set } => {
            pkt.family() == *family
                && !pkt.later_fragment
                && host.flows.zip(flow_of(set, pkt, false)).is_some_and(|(flows, key)| flows.borrow().contains(&key))
        }
        Match::NfProto(f) => pkt.family() == *f,
        Match::FibSaddrLocal { negate } => host.addrs.contains(&pkt.src) != *negate,
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
        Endpoint::Node(n) => Some((n.clone(), false)),
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
/// - Traffic from a pod to its own address never leaves the pod.
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

/// Run `flow`'s first packet in `family` through the programs of the
/// nodes it crosses (`programs` gives a node's program), then, if it got
/// through, its reply back, with what the first packet left in the nodes'
/// flow sets. `None` when an endpoint has no address in `family`.
pub fn flow_verdict<'p>(
    cluster: &Cluster,
    programs: &dyn Fn(&str) -> Option<&'p Program>,
    flow: &Flow,
    family: Family,
) -> Option<FlowTrace> {
    let packet = Packet::new(flow.src.ip(cluster, family)?, flow.dst.ip(cluster, family)?, flow.protocol, flow.port);
    let mut flows: BTreeMap<String, Flows> = BTreeMap::new();
    let mut run = |pkt: &Packet, from: &Endpoint, to: &Endpoint| -> Vec<HopVerdict> {
        hops(cluster, from, to)
            .into_iter()
            .map(|hop| {
                let eval = programs(&hop.node).map(|p| {
                    let node_flows = flows.entry(hop.node.clone()).or_default();
                    eval_hook(Host::of(cluster, &hop.node, p).with_flows(node_flows), hop.hook, pkt)
                });
                HopVerdict { hop, eval }
            })
            .collect()
    };
    let passed = |hops: &[HopVerdict]| hops.iter().all(|h| h.eval.as_ref().is_none_or(|e| e.accepted));
    let hops = run(&packet, &flow.src, &flow.dst);
    let reply = if passed(&hops) { run(&packet.reply(), &flow.dst, &flow.src) } else { Vec::new() };
    let allowed = passed(&hops) && passed(&reply);
    Some(FlowTrace { packet, allowed, hops, reply })
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
        Host { program: p, addrs: NODE_ADDRS, flows: None }
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

    /// A connection is its first packet and its reply: with no conntrack,
    /// a UDP or SCTP reply into an isolated pod gets in only because the
    /// first packet left its flow in the node's flow set; TCP's needs none.
    #[test]
    fn replies_come_back_through_the_flow_set() {
        let np = |name: &str, spec: &str| {
            format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n")
        };
        // x/a (node-1) and x/c (node-1) isolated both ways; a may reach c
        // on 53 and 80, whatever the protocol; nothing may reach a.
        let c = crate::nft::compile::tests::cluster(&format!(
            "{}{}",
            np("a-out", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], egress: [{to: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 53, protocol: UDP}, {port: 80}, {port: 80, protocol: SCTP}]}]}"),
            np("c-in", "{podSelector: {matchLabels: {pod: c}}, policyTypes: [Ingress, Egress], ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]}"),
        ));
        let mut programs = crate::nft::compile_all(&c, &crate::ir::resolve(&c));
        let flow = |from: &str, to: &str, protocol, port| Flow {
            src: Endpoint::parse(&c, from).unwrap(),
            dst: Endpoint::parse(&c, to).unwrap(),
            protocol,
            port,
            family: None,
        };
        let cases = [(Protocol::Udp, 53), (Protocol::Tcp, 80), (Protocol::Sctp, 80)];
        for (proto, port) in cases {
            let t = flow_verdict(&c, &|n| programs.get(n), &flow("x/a", "x/c", proto, port), Family::IPv4).unwrap();
            assert!(t.allowed && !t.reply.is_empty(), "{proto:?}: {t:#?}");
            let back = flow_verdict(&c, &|n| programs.get(n), &flow("x/c", "x/a", proto, port), Family::IPv4).unwrap();
            assert!(!back.allowed && back.reply.is_empty(), "{proto:?} the other way is a new flow");
        }
        // Without the record chain the first packets still get through, but
        // UDP and SCTP replies do not; TCP's do.
        programs.get_mut("node-1").unwrap().chains.get_mut(crate::nft::compile::RECORD).unwrap().rules.clear();
        for (proto, port) in cases {
            let t = flow_verdict(&c, &|n| programs.get(n), &flow("x/a", "x/c", proto, port), Family::IPv4).unwrap();
            let first = t.hops.iter().all(|h| h.eval.as_ref().is_none_or(|e| e.accepted));
            assert!(first, "{proto:?}");
            assert_eq!(t.allowed, proto == Protocol::Tcp, "{proto:?}: {t:#?}");
        }
    }

    /// What conntrack used to relate to a flow passes isolated pods: ICMP
    /// errors and echo replies, and fragments after the first; an echo
    /// request, a first fragment and a new flow are still judged.
    #[test]
    fn icmp_replies_and_later_fragments_pass_isolated_pods() {
        let c = crate::nft::compile::tests::cluster(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
        );
        let programs = crate::nft::compile_all(&c, &crate::ir::resolve(&c));
        let p = &programs["node-1"];
        let verdict = |pkt: Packet| eval_hook(Host::of(&c, "node-1", p), Hook::Postrouting, &pkt).accepted;
        // x/a (10.244.1.11) is isolated both ways on node-1.
        let to_xa = tcp("10.244.2.21", "10.244.1.11", 80);
        let icmp = |ty| Packet { l4: L4::Icmp { ty }, ..to_xa };
        assert!(verdict(icmp(IcmpType::DestinationUnreachable.code())));
        assert!(verdict(icmp(IcmpType::EchoReply.code())));
        assert!(!verdict(icmp(8)), "an echo request is a new flow");
        let udp = Packet { l4: L4::Port { proto: Protocol::Udp, sport: 53, dport: EPHEMERAL_PORT }, opening: false, ..to_xa };
        assert!(!verdict(udp), "a UDP packet with no flow behind it");
        assert!(verdict(Packet { later_fragment: true, ..udp }), "a later fragment: its first was judged");
        assert!(verdict(Packet { opening: false, ..to_xa }), "a TCP segment that opens nothing");
        assert!(!verdict(to_xa), "a SYN");
        let from_xa = Packet { src: to_xa.dst, dst: to_xa.src, ..to_xa };
        assert!(!verdict(from_xa) && verdict(Packet { opening: false, ..from_xa }));
    }
}
