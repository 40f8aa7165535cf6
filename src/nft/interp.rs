//! Evaluate a packet through a [`Program`] as the kernel would, for the
//! subset we emit: base chains by hook and priority, jump and return, verdict
//! maps, hash and interval sets, concatenations, negation, accept and drop
//! (counters and comments change nothing).
//!
//! It is the compiler's second opinion: `netfence test` runs every flow of a
//! policy test through the programs of the nodes it crosses and checks the
//! result against the reference evaluator ([`crate::eval`]).

use std::net::IpAddr;

use super::program::*;
use crate::eval::{Endpoint, Flow};
use crate::model::{Cluster, Family, Protocol};

/// The transport of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Port { proto: Protocol, dport: u16 },
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
    pub ct: CtState,
}

impl Packet {
    /// The first packet of a connection.
    pub fn new(src: IpAddr, dst: IpAddr, proto: Protocol, dport: u16) -> Packet {
        Packet { src, dst, l4: L4::Port { proto, dport }, ct: CtState::New }
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

/// Run `pkt` through every base chain of `p` on `hook`, in priority order:
/// a drop anywhere drops it; an accept ends only its own chain.
pub fn eval_hook(p: &Program, hook: Hook, pkt: &Packet) -> Evaluation {
    let mut path = Vec::new();
    let mut last = Decision::NoChain;
    for chain in p.base_chains(hook) {
        let (accepted, decision) = match run(p, chain, pkt, &mut path, 0) {
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

fn run(p: &Program, chain: &Chain, pkt: &Packet, path: &mut Vec<String>, depth: usize) -> Outcome {
    for (i, rule) in chain.rules.iter().enumerate() {
        if !rule.matches.iter().all(|m| matches(p, m, pkt)) {
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
                if let Outcome::Verdict(a, d) = run(p, next, pkt, path, depth + 1) {
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

fn matches(p: &Program, m: &Match, pkt: &Packet) -> bool {
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
            L4::Port { proto: pp, dport: d } => pp == *proto && dport.is_none_or(|r| r.contains(d)),
            _ => false,
        },
        Match::NamedPort { family, set } => match pkt.l4 {
            L4::Port { proto, dport } if pkt.family() == *family => {
                p.sets.get(set).is_some_and(|s| s.elements.contains(&Element::AddrProtoPort(pkt.dst, proto, dport)))
            }
            _ => false,
        },
        Match::Icmpv6Type(types) => match pkt.l4 {
            L4::Icmpv6 { ty } => pkt.family() == Family::IPv6 && types.iter().any(|t| t.code() == ty),
            _ => false,
        },
        Match::NfProto(f) => pkt.family() == *f,
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
    pub allowed: bool,
    pub hops: Vec<HopVerdict>,
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

/// The hooks a connection's first packet crosses from `src` to `dst`.
///
/// A pod's packets enter its node at prerouting; the node's own (and a
/// host-network pod's) leave through output; every packet to a pod leaves
/// the pod's node through postrouting; a packet between nodes also enters
/// the second node at prerouting. Traffic from a pod to its own address
/// never leaves the pod.
///
/// An IP endpoint is outside the cluster (the policy test format's
/// definition): its side is not judged and the model does not follow the
/// packet beyond the pod's node. (An IP literal inside a node's pod CIDR
/// that no running pod holds would, on the wire, reach that node and be
/// dropped by its fail-closed rule; with no pod there, nothing could
/// answer it either way.)
pub fn hops(cluster: &Cluster, src: &Endpoint, dst: &Endpoint) -> Vec<Hop> {
    let hop = |node: &str, hook| Hop { node: node.to_string(), hook };
    let (s, d) = (place(cluster, src), place(cluster, dst));
    if src == dst && s.as_ref().is_some_and(|(_, pod)| *pod) {
        return vec![];
    }
    let mut out = Vec::new();
    match &s {
        Some((n, true)) => out.push(hop(n, Hook::Prerouting)),
        Some((n, false)) => out.push(hop(n, Hook::Output)),
        None => {}
    }
    let to_pod = matches!(&d, Some((_, true)));
    match (&s, &d) {
        (Some((a, _)), Some((b, _))) if a != b => {
            out.push(hop(a, Hook::Postrouting));
            out.push(hop(b, Hook::Prerouting));
            out.push(hop(b, if to_pod { Hook::Postrouting } else { Hook::Input }));
        }
        (Some((a, _)), Some(_)) => out.push(hop(a, if to_pod { Hook::Postrouting } else { Hook::Input })),
        (None, Some((b, _))) => {
            out.push(hop(b, Hook::Prerouting));
            out.push(hop(b, if to_pod { Hook::Postrouting } else { Hook::Input }));
        }
        (_, None) => {}
    }
    out
}

/// Run `flow`'s first packet in `family` through the programs of the
/// nodes it crosses (`programs` gives a node's program). `None` when an
/// endpoint has no address in `family`.
pub fn flow_verdict<'p>(
    cluster: &Cluster,
    programs: &dyn Fn(&str) -> Option<&'p Program>,
    flow: &Flow,
    family: Family,
) -> Option<FlowTrace> {
    let packet = Packet::new(flow.src.ip(cluster, family)?, flow.dst.ip(cluster, family)?, flow.protocol, flow.port);
    let hops: Vec<HopVerdict> = hops(cluster, &flow.src, &flow.dst)
        .into_iter()
        .map(|hop| {
            let eval = programs(&hop.node).map(|p| eval_hook(p, hop.hook, &packet));
            HopVerdict { hop, eval }
        })
        .collect();
    let allowed = hops.iter().all(|h| h.eval.as_ref().is_none_or(|e| e.accepted));
    Some(FlowTrace { packet, allowed, hops })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::program::tests::{sample, v4};

    fn tcp(src: &str, dst: &str, port: u16) -> Packet {
        Packet::new(v4(src), v4(dst), Protocol::Tcp, port)
    }

    /// Check the verdict at postrouting, and the rule that gave it.
    fn check(p: &Program, pkt: Packet, accepted: bool, decided_at: &str) {
        let e = eval_hook(p, Hook::Postrouting, &pkt);
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
        check(&p, tcp("10.9.9.9", "10.244.1.12", 80), true, "ingress[3]");
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
        check(&p, Packet { l4: L4::Port { proto: Protocol::Udp, dport: 8080 }, ..tcp("172.16.0.1", "10.244.1.11", 8080) }, false, "grp_a[1]");
        check(&p, Packet { l4: L4::Port { proto: Protocol::Sctp, dport: 1 }, ..tcp("172.16.0.1", "10.244.1.11", 1) }, true, "pol_a[3]");
        // Unprogrammed address in the pod CIDR: fail closed.
        check(&p, tcp("10.244.2.11", "10.244.1.99", 80), false, "ingress[4]");
        // Conntrack and neighbour discovery come first.
        check(&p, Packet { ct: CtState::Established, ..tcp("10.1.2.3", "10.244.1.11", 9) }, true, "ingress[0]");
        check(&p, Packet { ct: CtState::Invalid, ..tcp("10.1.2.3", "10.244.1.11", 9) }, false, "ingress[2]");
        let nd = Packet { src: "fe80::1".parse().unwrap(), dst: "fe80::2".parse().unwrap(), l4: L4::Icmpv6 { ty: 135 }, ct: CtState::Invalid };
        check(&p, nd, true, "ingress[1]");
        check(&p, Packet { l4: L4::Icmpv6 { ty: 128 }, ..nd }, false, "ingress[2]");
        // No chain on the hook.
        assert_eq!(eval_hook(&p, Hook::Input, &tcp("1.1.1.1", "10.244.1.11", 1)).decision, Decision::NoChain);
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
        check(&p, Packet { l4: L4::Port { proto: Protocol::Udp, dport: 1 }, ..tcp("1.1.1.1", "2.2.2.2", 1) }, false, "b[0]");
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
        check("x/a", "x/c", "node-1:prerouting node-1:postrouting");
        check("x/a", "x/b", "node-1:prerouting node-1:postrouting node-2:prerouting node-2:postrouting");
        check("x/a", "node/node-1", "node-1:prerouting node-1:input");
        check("x/a", "node/node-2", "node-1:prerouting node-1:postrouting node-2:prerouting node-2:input");
        check("x/a", "192.0.2.1", "node-1:prerouting");
        check("192.0.2.1", "x/b", "node-2:prerouting node-2:postrouting");
        check("node/node-1", "x/a", "node-1:output node-1:postrouting");
        check("x/h", "x/a", "node-2:output node-2:postrouting node-1:prerouting node-1:postrouting");
        check("node/node-2", "192.0.2.1", "node-2:output");
    }
}
