//! The packet path: what a node's ruleset costs the traffic it polices.
//!
//! Two pods talk through a node, each in a network namespace of its own
//! (client, node, server; veth pairs, /32 routes and a link-local gateway as
//! Calico lays them out), with the node's program loaded in the node's
//! namespace. TCP throughput and new connections per second are measured
//! side by side with four setups, each in a topology of its own, measured
//! round-robin: no ruleset at all (the physical floor: no conntrack), a
//! node as Kubernetes runs it ([`KUBE_PROXY_NAT`]: kube-proxy's nftables
//! NAT table, which turns conntrack on for every connection of the node;
//! the targets' baseline), netfence's program on such a node, and the same
//! program linearised the way an iptables implementation without ipsets
//! would write it ([`linearize`]: one rule per set element), on such a node
//! too. Established traffic leaves every ruleset at its first rule, so
//! throughput should barely move; every new connection walks the policy,
//! which is where sets and a rule list part ways.
//!
//! The flow is real policy: a pod on another node that a local pod's
//! ingress policies allow, on the port they allow, picked as a rule list's
//! worst allowed case (see [`pick_flow`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ipnet::IpNet;

use crate::apply::{Kernel, NftKernel};
use crate::eval::{evaluate, Endpoint, Flow, SideReason};
use crate::ir::{Ir, PeerIr};
use crate::model::{Cluster, Family, PodId, PortRef, Protocol};
use crate::netns::Netns;
use crate::nft::compile::node_of;
use crate::nft::program::{
    Action, AddrField, AddrMatch, Chain, Element, Hook, Match, PortRange, Program, Rule, Verdict,
};
use crate::nft;

/// How long to push traffic for one measurement, and how many times.
#[derive(Debug, Clone, Copy)]
pub struct PacketOptions {
    pub duration: Duration,
    pub runs: usize,
}

/// One ruleset's results: rates are (median, best) over the runs.
#[derive(Debug, Clone)]
pub struct RulesetResult {
    pub name: &'static str,
    pub rules: usize,
    pub elements: usize,
    /// Bits per second.
    pub throughput: (f64, f64),
    pub connections_per_s: (f64, f64),
}

#[derive(Debug, Clone)]
pub struct PacketReport {
    pub flow: String,
    pub results: Vec<RulesetResult>,
}

/// The physical floor: no ruleset, no conntrack (no Kubernetes node is
/// like this).
pub const NO_RULESET: &str = "no ruleset";
/// The targets' baseline: a node as Kubernetes runs it, kube-proxy's NAT
/// table loaded and conntrack on.
pub const KUBE_PROXY: &str = "kube-proxy NAT";
pub const NETFENCE: &str = "netfence + kube-proxy NAT";
pub const LINEAR: &str = "linear + kube-proxy NAT";

impl PacketReport {
    fn get(&self, name: &str) -> Option<&RulesetResult> {
        self.results.iter().find(|x| x.name == name)
    }

    /// Median throughput and median new connections/s of `name` divided by
    /// those of `base`, measured in the same run.
    pub fn ratio(&self, name: &str, base: &str) -> Option<(f64, f64)> {
        let (x, b) = (self.get(name)?, self.get(base)?);
        let div = |v: f64, w: f64| if w > 0.0 { v / w } else { f64::NAN };
        Some((div(x.throughput.0, b.throughput.0), div(x.connections_per_s.0, b.connections_per_s.0)))
    }
}

/// What kube-proxy's nftables mode loads on every node, trimmed to what a
/// packet meets: NAT chains on prerouting, output and postrouting (which
/// turn conntrack on for the namespace, as its iptables and IPVS modes and
/// CNI masquerading do), the Services lookup every new connection makes
/// (a verdict map keyed by address, protocol and port, holding one
/// Service that this flow is not) and the masquerade mark check. The NAT
/// chains see only a connection's first packet; later ones are translated
/// by conntrack alone.
pub const KUBE_PROXY_NAT: &str = "table ip kube-proxy-bench {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.10 . udp . 53 : goto svc-dns }
	}
	chain svc-dns {
		meta l4proto udp dnat to 10.244.0.10:53
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
	chain nat-output {
		type nat hook output priority -100; policy accept;
		jump services
	}
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x4000 == 0 return
		meta mark set meta mark ^ 0x4000
		masquerade fully-random
	}
}
";

/// The flow to push: into a pod on `node` whose ingress is isolated, from
/// a remote IPv4 pod that its policies let in through the largest peer set
/// of the node, and from the member of that set with the highest address.
/// A set looks every member up alike; a rule list walks the set in address
/// order, so this is its worst allowed case, chosen on purpose.
fn pick_flow(c: &Cluster, ir: &Ir, node: &str) -> Option<(PodId, PodId, u16)> {
    let mut candidates: Vec<(usize, PodId, &[PodId], u16)> = Vec::new();
    for dst in (0..c.pods.len()).filter(|&id| c.pods[id].is_policy_pod() && node_of(&c.pods[id]) == node) {
        let d = &c.pods[dst];
        if d.ip(Family::IPv4).is_none() {
            continue;
        }
        for &pid in &ir.selecting[dst] {
            for (ri, rule) in ir.policies[pid].ingress.iter().enumerate() {
                let port = match c.policies[pid].ingress[ri].ports.iter().find(|p| p.protocol == Protocol::Tcp) {
                    None if rule.ports.is_empty() => Some(8080),
                    None => None,
                    Some(spec) => match &spec.port {
                        None => Some(8080),
                        Some(PortRef::Number(n)) => Some(*n),
                        Some(PortRef::Named(n)) => d.named_port(n, Protocol::Tcp),
                    },
                };
                let Some(port) = port else { continue };
                for peer in rule.peers.iter().flatten() {
                    if let PeerIr::Pods(ids) = peer {
                        candidates.push((ids.len(), dst, ids.as_slice(), port));
                    }
                }
            }
        }
    }
    candidates.sort_by_key(|&(n, dst, _, port)| (std::cmp::Reverse(n), dst, port));
    let by_address = |ids: &[PodId]| {
        let mut v: Vec<(Ipv4Addr, PodId)> = ids
            .iter()
            .filter_map(|&id| match c.pods[id].ip(Family::IPv4) {
                Some(IpAddr::V4(ip)) if node_of(&c.pods[id]) != node => Some((ip, id)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    for (_, dst, ids, port) in candidates {
        for (_, src) in by_address(ids).into_iter().rev() {
            let flow = Flow { src: Endpoint::Pod(src), dst: Endpoint::Pod(dst), protocol: Protocol::Tcp, port, family: Some(Family::IPv4) };
            let allowed = evaluate(c, ir, &flow).ok().is_some_and(|v| {
                let ing = &v.families[0].ingress;
                ing.allowed && matches!(ing.reason, SideReason::Allowed { .. })
            });
            if allowed {
                return Some((src, dst, port));
            }
        }
    }
    None
}

/// `p` without sets or maps: every rule that looks an address (or an
/// address, protocol and port) up in a set becomes a cascade of chains with
/// one rule per element, and every verdict map one rule per key, as
/// iptables without ipset would have it. Rules grow with the elements (a
/// sum over the rule's lookups, never a product). Named-port lookups keep
/// only the addresses the rule can see: the addresses of its own peer set
/// on the same field, or on the ingress path the node's local pods. Verdicts
/// are unchanged, which the tests check with the interpreter.
pub fn linearize(p: &Program) -> Program {
    let ingress_roots: Vec<&Chain> = p.base_chains(Hook::Postrouting);
    let local: BTreeSet<IpAddr> = ingress_roots
        .iter()
        .flat_map(|c| &c.rules)
        .filter_map(|r| match &r.action {
            Action::Vmap { map, .. } => p.maps.get(map),
            Action::Verdict(_) | Action::Log { .. } => None,
        })
        .flat_map(|m| m.elements.keys())
        .filter_map(|e| if let Element::Addr(ip) = e { Some(*ip) } else { None })
        .collect();
    let on_ingress = reachable(p, &ingress_roots);
    let mut out = Program::new(&p.table);
    out.limits = p.limits.clone();
    let mut extra = Vec::new();
    for c in p.chains.values() {
        let scope = on_ingress.contains(c.name.as_str()).then_some(&local);
        let rules = c.rules.iter().map(|r| expand(p, r, scope, &mut extra)).collect();
        out.add_chain(Chain { name: c.name.clone(), base: c.base, rules });
    }
    for c in extra {
        out.add_chain(c);
    }
    out
}

/// Chains reachable from `roots` through jumps and map verdicts.
fn reachable<'a>(p: &'a Program, roots: &[&'a Chain]) -> BTreeSet<&'a str> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&Chain> = roots.to_vec();
    while let Some(c) = todo.pop() {
        if !seen.insert(&c.name) {
            continue;
        }
        for r in &c.rules {
            let targets: Vec<&Verdict> = match &r.action {
                Action::Verdict(v) => vec![v],
                Action::Vmap { map, .. } => p.maps.get(map).map(|m| m.elements.values().collect()).unwrap_or_default(),
                Action::Log { .. } => vec![],
            };
            for v in targets {
                if let Verdict::Jump(t) = v {
                    todo.extend(p.chains.get(t));
                }
            }
        }
    }
    seen
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn addr(family: Family, field: AddrField, nets: impl IntoIterator<Item = IpNet>) -> Match {
    Match::Addr { family, field, negate: false, rhs: AddrMatch::Nets(nets.into_iter().collect()) }
}

fn net_of(e: &Element) -> Option<IpNet> {
    match e {
        Element::Addr(ip) => Some(host(*ip)),
        Element::Net(n) => Some(*n),
        Element::AddrProtoPort(..) | Element::AddrPair(..) => None,
    }
}

/// One rule of `p` as a rule of the linear program, adding the cascade
/// chains it needs to `extra`. `local`: the addresses a destination can
/// have here, on the ingress path.
fn expand(p: &Program, r: &Rule, local: Option<&BTreeSet<IpAddr>>, extra: &mut Vec<Chain>) -> Rule {
    let mut plain = Vec::new();
    // Each stage: the alternatives of one lookup.
    let mut stages: Vec<Vec<Vec<Match>>> = Vec::new();
    let daddrs: Option<BTreeSet<IpAddr>> = r.matches.iter().find_map(|m| match m {
        Match::Addr { field: AddrField::Daddr, negate: false, rhs: AddrMatch::Set(s), .. } => {
            Some(p.sets.get(s)?.elements.iter().filter_map(|e| if let Element::Addr(ip) = e { Some(*ip) } else { None }).collect())
        }
        _ => None,
    });
    for m in &r.matches {
        match m {
            Match::Addr { family, field, negate, rhs: AddrMatch::Set(name) } => {
                let nets: Vec<IpNet> = p.sets.get(name).map(|s| s.elements.iter().filter_map(net_of).collect()).unwrap_or_default();
                if *negate {
                    // Kept as one literal: iptables writes `! -s` lists too.
                    plain.push(Match::Addr { family: *family, field: *field, negate: true, rhs: AddrMatch::Nets(nets.into_iter().collect()) });
                } else {
                    stages.push(nets.into_iter().map(|n| vec![addr(*family, *field, [n])]).collect());
                }
            }
            Match::NamedPort { family, set } => {
                let visible = |ip: &IpAddr| daddrs.as_ref().or(local).is_none_or(|s| s.contains(ip));
                let elements = p.sets.get(set).map(|s| s.elements.iter().collect::<Vec<_>>()).unwrap_or_default();
                stages.push(
                    elements
                        .into_iter()
                        .filter_map(|e| match e {
                            Element::AddrProtoPort(ip, proto, port) if visible(ip) => Some(vec![
                                addr(*family, AddrField::Daddr, [host(*ip)]),
                                Match::Proto { proto: *proto, dport: Some(PortRange { lo: *port, hi: *port }) },
                            ]),
                            _ => None,
                        })
                        .collect(),
                );
            }
            // One rule per pair, as iptables would write a hairpin
            // exemption (`-s P -d P`).
            Match::AddrPair { family, set } => {
                let elements = p.sets.get(set).map(|s| s.elements.iter().collect::<Vec<_>>()).unwrap_or_default();
                stages.push(
                    elements
                        .into_iter()
                        .filter_map(|e| match e {
                            Element::AddrPair(a, b) => Some(vec![addr(*family, AddrField::Saddr, [host(*a)]), addr(*family, AddrField::Daddr, [host(*b)])]),
                            _ => None,
                        })
                        .collect(),
                );
            }
            other => plain.push(other.clone()),
        }
    }
    // The last stage carries the verdicts: the rule's own, or one per map key.
    let last: Vec<(Vec<Match>, Verdict)> = match &r.action {
        Action::Verdict(_) | Action::Log { .. } if stages.is_empty() => return Rule { matches: plain, ..r.clone() },
        Action::Log { .. } => return r.clone(),
        Action::Verdict(v) => stages.pop().unwrap_or_default().into_iter().map(|alt| (alt, v.clone())).collect(),
        Action::Vmap { family, field, map } => p
            .maps
            .get(map)
            .map(|m| {
                m.elements.iter().filter_map(|(k, v)| Some((vec![addr(*family, *field, [net_of(k)?])], v.clone()))).collect()
            })
            .unwrap_or_default(),
    };
    let name = |i: usize, extra: &Vec<Chain>| format!("lin{}_{i}", extra.len());
    let first = name(0, extra);
    let mut chains: Vec<Chain> = Vec::new();
    let depth = stages.len();
    for (i, alts) in stages.into_iter().enumerate() {
        let next = format!("lin{}_{}", extra.len(), i + 1);
        let rules = alts.into_iter().map(|alt| Rule::verdict(alt, Verdict::Jump(next.clone()))).collect();
        chains.push(Chain { name: name(i, extra), base: None, rules });
    }
    let rules = last.into_iter().map(|(alt, v)| Rule::verdict(alt, v)).collect();
    chains.push(Chain { name: name(depth, extra), base: None, rules });
    extra.extend(chains);
    Rule { matches: plain, counter: r.counter, action: Action::Verdict(Verdict::Jump(first)), comment: r.comment.clone() }
}

// ---------------------------------------------------------------------------
// The topology and the traffic.

/// client, node and server namespaces, wired as a CNI would.
struct Topology {
    client: Netns,
    node: Netns,
    server: Netns,
}

/// The gateway address every pod routes through (Calico's choice).
const GATEWAY: &str = "169.254.1.1";

impl Topology {
    fn new(src: Ipv4Addr, dst: Ipv4Addr) -> anyhow::Result<Topology> {
        let mut all = Netns::create_many("nfb", 3)?;
        let (server, node, client) = (all.pop().context("server")?, all.pop().context("node")?, all.pop().context("client")?);
        // Both ends of each veth are created inside their namespaces, from
        // the node's: nothing appears in the namespace we run in.
        for (pod, addr, peer) in [(&client, src, "vc"), (&server, dst, "vs")] {
            node.ip_batch(&format!(
                "link add {peer} type veth peer name eth0 netns {}\nlink set {peer} up\n\
                 addr add {GATEWAY}/32 dev {peer}\nroute add {addr}/32 dev {peer}\n",
                pod.name()
            ))?;
            pod.ip_batch(&format!(
                "link set lo up\nlink set eth0 up\naddr add {addr}/32 dev eth0\n\
                 route add {GATEWAY} dev eth0 scope link\nroute add default via {GATEWAY} dev eth0\n"
            ))?;
        }
        node.sysctl(&[("net/ipv4/ip_forward", "1"), ("net/ipv4/conf/all/rp_filter", "0")])?;
        Ok(Topology { client, node, server })
    }
}

/// Bits per second of one TCP stream from client to server for `d`.
fn throughput(t: &Topology, to: SocketAddr, d: Duration) -> anyhow::Result<f64> {
    let listener = t.server.run(|| TcpListener::bind(to))??;
    std::thread::scope(|s| {
        let reader = s.spawn(|| -> std::io::Result<u64> {
            let (mut conn, _) = accept_within(&listener, d + Duration::from_secs(5))?;
            let mut buf = vec![0u8; 1 << 17];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
            }
        });
        let sent = t.client.run(|| -> std::io::Result<Duration> {
            let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            let buf = vec![0x5au8; 1 << 17];
            let start = Instant::now();
            while start.elapsed() < d {
                conn.write_all(&buf)?;
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            Ok(start.elapsed())
        })??;
        let bytes = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??;
        Ok(bytes as f64 * 8.0 / sent.as_secs_f64())
    })
}

/// The next connection, or an error after `limit`: a client that could not
/// connect (a ruleset that drops the flow) must fail the run, not hang it.
fn accept_within(listener: &TcpListener, limit: Duration) -> std::io::Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    let got = loop {
        match listener.accept() {
            Ok(c) => break Ok(c),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => break Err(e),
        }
    };
    listener.set_nonblocking(false)?;
    let (conn, peer) = got?;
    conn.set_nonblocking(false)?;
    Ok((conn, peer))
}

/// New TCP connections per second (connect, then reset) for `d`.
fn connection_rate(t: &Topology, to: SocketAddr, d: Duration) -> anyhow::Result<f64> {
    let listener = t.server.run(|| TcpListener::bind(to))??;
    // A deep accept queue: on a busy machine the acceptor can fall behind,
    // and a full queue drops SYNs, which costs a second-long retransmit.
    // SAFETY: re-listening on a listening socket only changes its backlog.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::listen(listener.as_raw_fd(), 4096);
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                drop(conn);
            }
        });
        let made = t.client.run(|| -> std::io::Result<(u64, Duration)> {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < d {
                let conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                // Reset rather than close: no TIME_WAIT, so ports last.
                set_linger_zero(&conn);
                drop(conn);
                n += 1;
            }
            Ok((n, start.elapsed()))
        });
        stop.store(true, Ordering::Relaxed);
        // Wake the acceptor so it sees the flag: shutting a listening socket
        // down ends a blocked accept (with EINVAL), even when no connection
        // could get through.
        // SAFETY: a valid socket; shutdown only changes its state.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        let (n, took) = made??;
        Ok(n as f64 / took.as_secs_f64())
    })
}

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn median_and_best(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[(v.len() - 1) / 2], v[v.len() - 1])
}

/// Measure the four rulesets on the node's real flow.
pub fn run(c: &Cluster, ir: &Ir, node: &str, program: &Program, opts: PacketOptions) -> anyhow::Result<PacketReport> {
    let Some((src, dst, port)) = pick_flow(c, ir, node) else {
        bail!("no remote IPv4 pod that a pod-selector rule lets into an isolated pod on {node}");
    };
    let (Some(IpAddr::V4(src_ip)), Some(IpAddr::V4(dst_ip))) = (c.pods[src].ip(Family::IPv4), c.pods[dst].ip(Family::IPv4)) else {
        bail!("the chosen pods have no IPv4 address");
    };
    let flow = format!("{} ({src_ip}) -> {} ({dst_ip}):{port}/TCP", c.pods[src].key(), c.pods[dst].key());
    let linear = linearize(program);
    let to = SocketAddr::new(IpAddr::V4(dst_ip), port);
    // (name, kube-proxy's NAT table loaded, netfence's ruleset)
    let rulesets: [(&'static str, bool, Option<&Program>); 4] =
        [(NO_RULESET, false, None), (KUBE_PROXY, true, None), (NETFENCE, true, Some(program)), (LINEAR, true, Some(&linear))];
    // One topology per ruleset, each loaded once, measured round-robin: on
    // a shared machine the load drifts, and interleaving spreads the drift
    // over every ruleset alike instead of onto whichever ran last.
    let mut topos = Vec::new();
    for (name, nat, ruleset) in rulesets {
        let topo = Topology::new(src_ip, dst_ip)?;
        if nat {
            load_script(&topo.node, KUBE_PROXY_NAT).context("loading kube-proxy's NAT table")?;
        }
        if let Some(p) = ruleset {
            topo.node.run(|| NftKernel::new().apply(&nft::diff(None, p)).with_context(|| format!("loading the {name} ruleset")))??;
        }
        topos.push(topo);
    }
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); rulesets.len()];
    for _ in 0..opts.runs.max(1) {
        for (((name, ..), topo), (bits, conns)) in rulesets.iter().zip(&topos).zip(&mut samples) {
            bits.push(throughput(topo, to, opts.duration).with_context(|| format!("throughput with {name}"))?);
            conns.push(connection_rate(topo, to, opts.duration).with_context(|| format!("connections with {name}"))?);
        }
    }
    let mut results = Vec::new();
    for ((name, _, ruleset), (bits, conns)) in rulesets.into_iter().zip(samples) {
        let size = ruleset.map(super::ProgramSize::of).unwrap_or_default();
        results.push(RulesetResult {
            name,
            rules: size.rules,
            elements: size.elements,
            throughput: median_and_best(bits),
            connections_per_s: median_and_best(conns),
        });
    }
    Ok(PacketReport { flow, results })
}

/// Load an nft script into `ns`'s ruleset.
fn load_script(ns: &Netns, script: &str) -> anyhow::Result<()> {
    let mut child = ns.command("nft")?.args(["-f", "-"]).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
    child.stdin.take().context("nft's stdin")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The packet-path table: every ruleset against both baselines.
pub fn render(r: &PacketReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "\nPacket path, {} (median and best of the runs):\n", r.flow);
    let _ = writeln!(
        s,
        "| ruleset | rules | set elements | throughput | vs none | vs kube-proxy | new connections/s | vs none | vs kube-proxy |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for x in &r.results {
        let vs = |base: &str| r.ratio(x.name, base).map(|(t, c)| (format!("{t:.2}"), format!("{c:.2}")));
        let ((tn, cn), (tc, cc)) = (vs(NO_RULESET).unwrap_or_default(), vs(KUBE_PROXY).unwrap_or_default());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} / {:.2} Gbit/s | {tn} | {tc} | {:.0} / {:.0} | {cn} | {cc} |",
            x.name,
            x.rules,
            x.elements,
            x.throughput.0 / 1e9,
            x.throughput.1 / 1e9,
            x.connections_per_s.0,
            x.connections_per_s.1,
        );
    }
    if let (Some(none), Some(kp), Some(nf)) = (r.get(NO_RULESET), r.get(KUBE_PROXY), r.get(NETFENCE)) {
        // Time per new connection: what each layer adds to it.
        let per = |x: &RulesetResult| 1e6 / x.connections_per_s.0;
        let _ = writeln!(
            s,
            "\nPer new connection: {:.1} µs with no ruleset, kube-proxy's conntrack and NAT add {:.1} µs, netfence's rules {:.1} µs.",
            per(none),
            per(kp) - per(none),
            per(nf) - per(kp)
        );
    }
    s
}

/// For tests: every (src, dst, port) decided the same by two programs of a
/// node with addresses `addrs`, at both hooks; the first disagreement
/// otherwise.
pub fn first_disagreement(a: &Program, b: &Program, addrs: &[IpAddr], packets: &[(IpAddr, IpAddr, u16)]) -> Option<String> {
    use crate::nft::interp::{eval_hook, Host, Packet};
    let mut cache: BTreeMap<(IpAddr, IpAddr, u16), ()> = BTreeMap::new();
    for &(s, d, port) in packets {
        if cache.insert((s, d, port), ()).is_some() {
            continue;
        }
        let pkt = Packet::new(s, d, Protocol::Tcp, port);
        for hook in [Hook::Prerouting, Hook::Postrouting] {
            let host = |program| Host { program, addrs, pods: None };
            let (x, y) = (eval_hook(host(a), hook, &pkt).accepted, eval_hook(host(b), hook, &pkt).accepted);
            if x != y {
                return Some(format!("{s} -> {d}:{port} at {}: {x} vs {y}", hook.name()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{Plan, Spec};

    fn cluster(spec: Spec) -> Cluster {
        let mut text = Vec::new();
        Plan::new(spec).unwrap().write_stream(&mut text).unwrap();
        crate::model::load::load_str("gen.yaml", std::str::from_utf8(&text).unwrap()).unwrap()
    }

    #[test]
    fn linearized_programs_decide_like_the_original() {
        let c = cluster(Spec { pods: 200, nodes: 2, namespaces: 12, policies: 60, seed: 3 });
        let ir = crate::ir::resolve(&c);
        for node in c.nodes.keys() {
            let p = nft::compile(&c, &ir, node);
            let lin = linearize(&p);
            assert!(lin.sets.is_empty() && lin.maps.is_empty(), "{node}: sets or maps left");
            assert!(lin.rule_count() > p.rule_count(), "{node}: nothing was expanded");
            let ips: Vec<IpAddr> = c.pods.iter().filter_map(|p| p.ip(Family::IPv4)).step_by(3).collect();
            let mut packets = Vec::new();
            for &s in &ips {
                for &d in &ips {
                    for port in [53, 80, 443, 5432, 8080, 9090, 9092, 50051] {
                        packets.push((s, d, port));
                    }
                }
            }
            packets.push(("192.0.2.7".parse().unwrap(), ips[0], 8080));
            let addrs = &c.nodes[node].internal_ips;
            assert_eq!(first_disagreement(&p, &lin, addrs, &packets), None, "{node}");
            let accepted = |&&(s, d, port): &&(IpAddr, IpAddr, u16)| {
                let pkt = crate::nft::interp::Packet::new(s, d, Protocol::Tcp, port);
                crate::nft::interp::eval_hook(crate::nft::interp::Host::of(&c, node, &p), Hook::Postrouting, &pkt).accepted
            };
            let n = packets.iter().filter(accepted).count();
            assert!(n > 0 && n < packets.len(), "{node}: the sample must hold both verdicts ({n} of {} accepted)", packets.len());
        }
    }

    #[test]
    fn ratios_are_medians_against_a_baseline() {
        let r = |name, gbit: f64, conns: f64| RulesetResult {
            name,
            rules: 0,
            elements: 0,
            throughput: (gbit * 1e9, gbit * 2e9),
            connections_per_s: (conns, conns * 2.0),
        };
        let report = PacketReport {
            flow: String::new(),
            results: vec![r(NO_RULESET, 20.0, 30_000.0), r(KUBE_PROXY, 19.0, 27_000.0), r(NETFENCE, 19.0, 24_000.0)],
        };
        let check = |name, base, want: (f64, f64)| {
            let (t, c) = report.ratio(name, base).unwrap();
            assert!((t - want.0).abs() < 1e-9 && (c - want.1).abs() < 1e-9, "{name} vs {base}: {t}, {c}");
        };
        check(NETFENCE, NO_RULESET, (0.95, 0.8));
        check(NETFENCE, KUBE_PROXY, (1.0, 24.0 / 27.0));
        check(NO_RULESET, NO_RULESET, (1.0, 1.0));
        assert_eq!(report.ratio(LINEAR, NO_RULESET), None);
    }

    /// The baseline is what kube-proxy loads: NAT chains on the hooks it
    /// uses (which turn conntrack on), checked by nft itself when root.
    #[test]
    fn the_kube_proxy_baseline_is_nat_on_its_hooks() {
        for hook in ["hook prerouting priority dstnat", "hook output priority -100", "hook postrouting priority srcnat"] {
            assert!(KUBE_PROXY_NAT.contains(&format!("type nat {hook};")), "{hook}");
        }
        if crate::netns::check_privileges().is_err() {
            eprintln!("SKIPPED: nft -c of the kube-proxy baseline needs root");
            return;
        }
        let ns = Netns::create("nfbt").unwrap();
        load_script(&ns, KUBE_PROXY_NAT).unwrap();
    }

    #[test]
    fn a_flow_is_found_on_a_policed_node() {
        let c = cluster(Spec { pods: 300, nodes: 3, namespaces: 20, policies: 60, seed: 1 });
        let ir = crate::ir::resolve(&c);
        let node = super::super::busiest_node(&c).unwrap();
        let (src, dst, _) = pick_flow(&c, &ir, &node).expect("a flow");
        assert_ne!(node_of(&c.pods[src]), node);
        assert_eq!(node_of(&c.pods[dst]), node);
    }
}
