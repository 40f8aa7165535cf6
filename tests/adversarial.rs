//! The adversarial suite: packets forged as an attacker with `CAP_NET_RAW`
//! would forge them, sent with raw sockets through the programs
//! `netfence compile` emits, installed with real nftables in network
//! namespaces wired like a cluster (src/dataplane/topology.rs). The test
//! fails if any payload arrives where policy denies it.
//!
//! The cluster is fixtures/clusters/adversarial.yaml (dual-stack, two
//! nodes, an outside host 192.0.2.10 / 2001:db8::10). Cases, each in IPv4
//! and IPv6, each under three policies ("deny" allows nothing, "port"
//! allows TCP/UDP/SCTP 80 while the attacks aim at 81, "allow" allows
//! everything):
//! - out of a pod under egress isolation (eg-deny, eg-port, eg-allow on
//!   node-1) to a pod on another node, a pod on the same node, the outside
//!   host, and the pod's own node (judged at input, `egress_local`);
//! - into a pod under ingress isolation (in-deny, in-port, in-allow on
//!   node-1) from a pod on the same node, a pod on another node, another
//!   node itself, and the outside host.
//!
//! IPv6 neighbour discovery between an egress-isolated pod and its own node
//! is not an attack: it never leaves their link, and the node needs it to
//! reach the pod at all. Forwarded anywhere else it is one.
//!
//! The attacks of each case (src/dataplane/attack.rs builds them):
//! - TCP segments with payload and each flag set: SYN, SYN+ECE+CWR, ACK,
//!   PSH+ACK, RST, RST+ACK, FIN, FIN+ACK, SYN+ACK, none, SYN+FIN, SYN+RST,
//!   FIN+PSH+URG, all eight, URG;
//! - UDP; packets of another IP protocol (253);
//! - SCTP packets of one chunk each: INIT, DATA, INIT ACK, HEARTBEAT,
//!   ABORT, SHUTDOWN, SHUTDOWN ACK, ERROR, COOKIE ECHO, COOKIE ACK,
//!   SHUTDOWN COMPLETE;
//! - ICMP echo reply, destination unreachable, source quench, redirect,
//!   echo request, router advertisement, time exceeded, parameter problem,
//!   timestamp, an unassigned type; ICMPv6 destination unreachable, packet
//!   too big, time exceeded, parameter problem, echo request and reply,
//!   router solicitation and advertisement, neighbour solicitation and
//!   advertisement, redirect, MLDv2 report, a private type (errors quote a
//!   datagram from the target to the attacker; neighbour discovery goes with
//!   hop limit 255 and a global destination);
//! - fragments of a UDP datagram: the first alone, a later one alone, both,
//!   a decoy first fragment to the open port 80 overlapped by a later one
//!   carrying the payload, and in IPv6 an atomic fragment; a TCP SYN whose
//!   first fragment is 8 bytes (ports, no flags);
//! - UDP with IPv4 options (record route); UDP after IPv6 hop-by-hop,
//!   destination options, routing type 0, and all of them plus a fragment
//!   header; a TCP ACK after hop-by-hop options.
//!
//! Spoofed sources, each in both families, against in-spoof (which allows
//! UDP 81 from friend, peer2 and the outside host) or peer2 (no policy):
//! a pod claiming a pod of its node, a pod of another node, the outside
//! host or its node; the outside host claiming a pod of the node or the
//! node; a pod on node-2 claiming a pod of node-1; an egress-isolated pod
//! claiming an unisolated pod, its node or the outside host to escape
//! egress isolation; in IPv6 also a neighbour advertisement with a global
//! destination from a pod claiming another pod and from the outside host
//! claiming a local pod (anti-spoofing exempts neighbour discovery, which
//! must not become a way around it). Not among them, because no node can stop it: the
//! outside host claiming a pod of *another* node (node-1 routes node-2's
//! pods through the very interface the forged packet comes in on); keeping
//! such packets off the node network is the network's job.
//!
//! What is seen where (src/dataplane/raw.rs): a pod's or the outside's
//! namespace captures every frame its `eth0` receives (what crossed the
//! node's filter); a node captures with raw IP sockets, which get packets
//! only after the input hook. Each attack's payload carries a marker of its
//! own. The attacker's namespace also captures, and an answer of the
//! target (a reset, an ICMP error or echo reply quoting the marker, a
//! SYN-ACK) counts as a leak too.
//!
//! Every attack also runs under the policy that allows it, so that seeing
//! nothing proves something: a flow's first packet (a SYN, UDP, an SCTP
//! INIT, an echo or timestamp request, a whole fragmented datagram, ...)
//! must then arrive, and SYNs and echo requests must be answered. What a
//! stateful filter drops even when policy allows the flow (a segment of no
//! connection, an ICMP error about no flow, a fragment that never
//! completes or, in IPv6, lacks the transport header (RFC 7112), an SCTP
//! chunk outside an association) is not asserted in the
//! allowed run; a legitimate counterpart must arrive instead (a real TCP
//! connection carrying the marker, the ICMP error of a real UDP flow, the
//! echo reply of a real ping, the INIT, the whole datagram). Each spoofed
//! packet runs with the policy allowing the claimed peer, and the same
//! packet from the true source must arrive.
//!
//! `NETFENCE_ADVERSARIAL_VERBOSE=1` lists those allowed-flow attacks the
//! filter dropped. Everything is sent first, then captured in one window. Needs root;
//! without it the test says SKIPPED. Every namespace is its own
//! (`nf<pid>-<n>`) and is gone at the end, as the host's ruleset is
//! untouched (both asserted).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use netfence::apply::{Kernel, NftKernel};
use netfence::dataplane::attack::{self, Kind, Marker, Shot, WhenAllowed};
use netfence::dataplane::raw::{Capture, Frame, Sender};
use netfence::dataplane::{Dataplane, Endpoint, ProbeSpec};
use netfence::eval::{self, Flow};
use netfence::ir::{self, Ir};
use netfence::model::load::load_paths;
use netfence::model::{Cluster, Family, Protocol};
use netfence::netns::{self, Netns};

const CLUSTER: &str = "fixtures/clusters/adversarial.yaml";
const OUTSIDE4: &str = "192.0.2.10";
const OUTSIDE6: &str = "2001:db8::10";
/// The port every attack aims at; "port" policies allow only [`OPEN_PORT`].
const ATTACKED_PORT: u16 = 81;
const OPEN_PORT: u16 = 80;
/// How long the captures wait after the last packet was sent. Everything
/// here crosses at most three namespaces over veths: far less is needed.
const WINDOW: Duration = Duration::from_millis(300);
/// Attacks' source ports are `SPORT_BASE + id`: one of their own each, so
/// that a reset or an answer names its attack.
const SPORT_BASE: u16 = 20000;
/// The protocols a node's raw sockets receive: every transport and IPv6
/// header the attacks use.
const LOCAL4: &[u8] = &[1, 6, 17, 132, attack::EXPERIMENTAL];
const LOCAL6: &[u8] = &[6, 17, 43, 44, 58, 60, 132, attack::EXPERIMENTAL];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Deny,
    Port,
    Allow,
}

/// An attacker and a target, the policy in force between them.
#[derive(Debug, Clone, Copy)]
struct Case {
    attacker: &'static str,
    target: &'static str,
    policy: Policy,
}

fn cases() -> Vec<Case> {
    let egress = [(Policy::Deny, "x/eg-deny"), (Policy::Port, "x/eg-port"), (Policy::Allow, "x/eg-allow")];
    let ingress = [(Policy::Deny, "x/in-deny"), (Policy::Port, "x/in-port"), (Policy::Allow, "x/in-allow")];
    let mut cases = Vec::new();
    for (policy, attacker) in egress {
        for target in ["x/peer2", "x/peer1", "outside", "node/node-1"] {
            cases.push(Case { attacker, target, policy });
        }
    }
    for (policy, target) in ingress {
        for attacker in ["x/peer1", "x/peer2", "node/node-2", "outside"] {
            cases.push(Case { attacker, target, policy });
        }
    }
    cases
}

/// A forged source: `attacker` sends `kind` as `claims` to `target`, which
/// the policies let `claims` reach.
struct Spoof {
    attacker: &'static str,
    claims: &'static str,
    target: &'static str,
    kind: Kind,
}

/// A neighbour advertisement (IPv6 only) with a global destination: the
/// anti-spoofing chain exempts neighbour discovery, which must not make it
/// a way around it.
const NA: Kind = Kind::Icmp(136);

const SPOOFS: &[Spoof] = &[
    Spoof { attacker: "x/peer1", claims: "x/friend", target: "x/in-spoof", kind: Kind::Udp },
    Spoof { attacker: "x/peer1", claims: "x/peer2", target: "x/in-spoof", kind: Kind::Udp },
    Spoof { attacker: "x/peer1", claims: "outside", target: "x/in-spoof", kind: Kind::Udp },
    Spoof { attacker: "x/peer1", claims: "node/node-1", target: "x/in-spoof", kind: Kind::Udp },
    Spoof { attacker: "outside", claims: "x/friend", target: "x/in-spoof", kind: Kind::Udp },
    Spoof { attacker: "outside", claims: "node/node-1", target: "x/in-spoof", kind: Kind::Udp },
    Spoof { attacker: "x/peer2", claims: "x/friend", target: "x/in-spoof", kind: Kind::Udp },
    Spoof { attacker: "x/eg-deny", claims: "x/peer1", target: "x/peer2", kind: Kind::Udp },
    Spoof { attacker: "x/eg-deny", claims: "node/node-1", target: "x/peer2", kind: Kind::Udp },
    Spoof { attacker: "x/eg-deny", claims: "outside", target: "x/peer2", kind: Kind::Udp },
    Spoof { attacker: "x/eg-deny", claims: "x/peer1", target: "x/peer2", kind: NA },
    Spoof { attacker: "x/peer1", claims: "x/friend", target: "x/in-allow", kind: NA },
    Spoof { attacker: "outside", claims: "x/friend", target: "x/in-allow", kind: NA },
];

/// What must become of something sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Policy denies it: it must not arrive, nor be answered.
    Denied,
    /// It must arrive (and, if `answered`, its answer come back).
    Arrives { answered: bool },
    /// Under a policy allowing its flow, stateful filtering may drop it
    /// (see the module doc): reported, not asserted; its counterpart is.
    Either,
}

/// Where the target's answers to an attack would show up.
struct Answer {
    ns: String,
    from: IpAddr,
    sport: u16,
    dport: u16,
}

/// One thing to send and what must become of it.
struct Sent {
    what: String,
    /// The namespace that sends it.
    from: String,
    datagrams: Vec<Vec<u8>>,
    /// Instead of datagrams: a real TCP connection from this address to
    /// this socket, carrying the marker.
    connect: Option<(IpAddr, SocketAddr)>,
    marker: Marker,
    /// The namespace it must, or must not, reach.
    target: String,
    answer: Option<Answer>,
    expect: Expect,
}

/// Everything to send, and the namespaces and listeners it needs.
struct Plan<'a> {
    sent: Vec<Sent>,
    netns: BTreeMap<String, &'a Netns>,
    nodes: BTreeSet<String>,
    /// (namespace, address) that listen on TCP [`ATTACKED_PORT`].
    listeners: BTreeSet<(String, IpAddr)>,
}

fn endpoint(cluster: &Cluster, name: &str, family: Family) -> Endpoint {
    match (name, family) {
        ("outside", Family::IPv4) => Endpoint::Ip(ip(OUTSIDE4)),
        ("outside", Family::IPv6) => Endpoint::Ip(ip(OUTSIDE6)),
        _ => Endpoint::parse(cluster, name).unwrap_or_else(|e| panic!("{name}: {e:?}")),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

impl<'a> Plan<'a> {
    fn new(dp: &'a Dataplane) -> Plan<'a> {
        let nodes = ["node-1", "node-2"].iter().map(|n| dp.node_netns(n).unwrap().name().to_string()).collect();
        Plan { sent: Vec::new(), netns: BTreeMap::new(), nodes, listeners: BTreeSet::new() }
    }

    /// The namespace and address of `name` in `family`.
    fn place(&mut self, dp: &'a Dataplane, cluster: &Cluster, name: &str, family: Family) -> (String, IpAddr) {
        let (ns, addr) = dp.locate(&endpoint(cluster, name, family), family).unwrap_or_else(|e| panic!("{name}: {e}"));
        self.netns.insert(ns.name().to_string(), ns);
        (ns.name().to_string(), addr)
    }

    fn next_shot(&self, src: IpAddr, dst: IpAddr) -> Shot {
        let id = u32::try_from(self.sent.len() + 1).unwrap();
        let sport = SPORT_BASE + u16::try_from(id).unwrap();
        Shot { src, dst, sport, dport: ATTACKED_PORT, open_port: OPEN_PORT, id }
    }

    fn case(&mut self, dp: &'a Dataplane, cluster: &Cluster, case: Case, family: Family) {
        let (a_ns, a_ip) = self.place(dp, cluster, case.attacker, family);
        let (t_ns, t_ip) = self.place(dp, cluster, case.target, family);
        self.listeners.insert((t_ns.clone(), t_ip));
        let label = format!("{} -> {} {family} [{:?}]", case.attacker, case.target, case.policy);
        // Every egress attacker runs on node-1.
        let own_node = case.target == "node/node-1";
        for kind in attack::catalogue(family) {
            let shot = self.next_shot(a_ip, t_ip);
            let expect = match (case.policy, kind.when_allowed(family)) {
                // Neighbour discovery between a pod and its own node stays on
                // their link and is below policy: without it the node could
                // not even resolve the pod to deliver its replies.
                _ if own_node && is_neighbour_discovery(kind, family) => Expect::Either,
                (Policy::Deny | Policy::Port, _) => Expect::Denied,
                (Policy::Allow, WhenAllowed::Arrives) => Expect::Arrives { answered: is_answered_request(kind) },
                // Its counterpart, below or in the catalogue, is asserted.
                (Policy::Allow, WhenAllowed::Instead(_)) => Expect::Either,
            };
            let answer = Answer { ns: a_ns.clone(), from: t_ip, sport: shot.sport, dport: shot.dport };
            self.sent.push(Sent {
                what: format!("{label}: {kind}"),
                from: a_ns.clone(),
                datagrams: kind.build(&shot),
                connect: None,
                marker: shot.marker(),
                target: t_ns.clone(),
                answer: Some(answer),
                expect,
            });
        }
        if case.policy != Policy::Allow {
            return;
        }
        // The legitimate counterparts (attack::Counterpart) of what
        // stateful filtering may drop even when policy allows the flow;
        // Counterpart::Attack ones are attacks of the catalogue above.
        let arrives = Expect::Arrives { answered: false };
        let shot = self.next_shot(a_ip, t_ip);
        self.sent.push(Sent {
            what: format!("{label}: counterpart: a TCP connection carrying the payload"),
            from: a_ns.clone(),
            datagrams: Vec::new(),
            connect: Some((a_ip, SocketAddr::new(t_ip, ATTACKED_PORT))),
            marker: shot.marker(),
            target: t_ns.clone(),
            answer: None,
            expect: arrives,
        });
        // Seen from the target: it sends, the attacker's kernel answers.
        let shot = self.next_shot(t_ip, a_ip);
        self.sent.push(Sent {
            what: format!("{label}: counterpart: the ICMP error of a UDP flow from the target"),
            from: t_ns.clone(),
            datagrams: vec![attack::udp_to_closed_port(&shot)],
            connect: None,
            marker: shot.marker(),
            target: t_ns.clone(),
            answer: None,
            expect: arrives,
        });
        let shot = self.next_shot(t_ip, a_ip);
        self.sent.push(Sent {
            what: format!("{label}: counterpart: the echo reply to a ping from the target"),
            from: t_ns.clone(),
            datagrams: vec![attack::echo_request_datagram(&shot)],
            connect: None,
            marker: shot.marker(),
            target: t_ns,
            answer: None,
            expect: arrives,
        });
    }

    fn spoof(&mut self, dp: &'a Dataplane, cluster: &Cluster, spoof: &Spoof, family: Family) {
        if !attack::catalogue(family).contains(&spoof.kind) {
            return;
        }
        let (a_ns, _) = self.place(dp, cluster, spoof.attacker, family);
        let (c_ns, c_ip) = self.place(dp, cluster, spoof.claims, family);
        let (t_ns, t_ip) = self.place(dp, cluster, spoof.target, family);
        let (kind, label) = (spoof.kind, format!("{} as {} -> {} {family}", spoof.attacker, spoof.claims, spoof.target));
        let control = format!("spoofing control: {} -> {} {family}: {kind}", spoof.claims, spoof.target);
        for (from, what, expect) in [
            (a_ns, format!("spoofed: {label}: {kind}"), Expect::Denied),
            (c_ns, control, Expect::Arrives { answered: false }),
        ] {
            let shot = self.next_shot(c_ip, t_ip);
            self.sent.push(Sent {
                what,
                from,
                datagrams: kind.build(&shot),
                connect: None,
                marker: shot.marker(),
                target: t_ns.clone(),
                answer: None,
                expect,
            });
        }
    }
}

/// Requests whose answer proves the forged packet valid end to end: a
/// SYN's SYN-ACK from the listener, an echo request's reply (ICMPv6 ones
/// are dropped by the kernel on a bad checksum).
fn is_answered_request(kind: Kind) -> bool {
    matches!(kind, Kind::Tcp(attack::flags::SYN) | Kind::Icmp(8 | 128))
}

/// Router and neighbour solicitation and advertisement: what every judging
/// chain lets through for a pod and its node.
fn is_neighbour_discovery(kind: Kind, family: Family) -> bool {
    family == Family::IPv6 && matches!(kind, Kind::Icmp(133..=136))
}

/// What the captures saw, by namespace.
type Seen = BTreeMap<String, Vec<Frame>>;

/// Send everything, wait, read every capture.
fn run(plan: &Plan<'_>) -> (Seen, Vec<String>, Duration) {
    let needed: BTreeSet<&String> = plan.sent.iter().flat_map(|s| [Some(&s.target), s.answer.as_ref().map(|a| &a.ns)]).flatten().collect();
    let captures: BTreeMap<&String, Capture> = needed
        .into_iter()
        .map(|name| {
            let node = plan.nodes.contains(name);
            let capture = plan.netns[name]
                .run(|| if node { Capture::local(LOCAL4, LOCAL6) } else { Capture::link("eth0") })
                .and_then(|c| c)
                .unwrap_or_else(|e| panic!("cannot capture in {name}: {e}"));
            (name, capture)
        })
        .collect();
    let _listeners: Vec<TcpListener> = plan
        .listeners
        .iter()
        .map(|(ns, addr)| {
            plan.netns[ns]
                .run(|| TcpListener::bind(SocketAddr::new(*addr, ATTACKED_PORT)))
                .and_then(|l| l)
                .unwrap_or_else(|e| panic!("cannot listen on {addr} in {ns}: {e}"))
        })
        .collect();

    let start = Instant::now();
    let mut by_source: BTreeMap<&String, Vec<&Sent>> = BTreeMap::new();
    for s in &plan.sent {
        by_source.entry(&s.from).or_default().push(s);
    }
    let notes: Vec<String> = std::thread::scope(|scope| {
        let jobs: Vec<_> = by_source
            .iter()
            .map(|(name, sent)| {
                let ns = plan.netns[*name];
                scope.spawn(move || ns.run(|| send_all(sent)).unwrap_or_else(|e| panic!("cannot enter {name}: {e}")))
            })
            .collect();
        jobs.into_iter().flat_map(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let sending = start.elapsed();
    std::thread::sleep(WINDOW);
    let mut seen = Seen::new();
    for (name, capture) in &captures {
        let drops = capture.drops().unwrap();
        assert_eq!(drops, 0, "the capture in {name} lost packets: it proves nothing");
        seen.insert(name.to_string(), capture.drain().unwrap());
    }
    (seen, notes, sending)
}

/// Send from inside the source namespace: every forged datagram first,
/// then the TCP connections. What the sender's own node refuses to send and
/// a connection that fails are notes (their payload then does not arrive,
/// which the checks judge).
fn send_all(sent: &[&Sent]) -> Vec<String> {
    let sender = Sender::open().expect("a raw socket");
    let mut notes = Vec::new();
    for s in sent {
        for d in &s.datagrams {
            match sender.send(d) {
                Ok(()) => {}
                // The sender's own filter dropped it on the way out (a
                // node's output and postrouting hooks, where netfence's
                // chains drop what conntrack calls invalid): it never left,
                // which the checks see as not arriving.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    notes.push(format!("{}: dropped on the way out (EPERM)", s.what));
                }
                Err(e) => panic!("{}: cannot send: {e}", s.what),
            }
        }
    }
    for s in sent {
        let Some((src, dst)) = s.connect else { continue };
        let connected = (|| -> std::io::Result<()> {
            let socket = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(src, 0).into())?;
            socket.connect_timeout(&dst.into(), Duration::from_secs(1))?;
            let mut stream = std::net::TcpStream::from(socket);
            stream.write_all(&s.marker.repeat(4))?;
            stream.flush()
        })();
        if let Err(e) = connected {
            notes.push(format!("{}: {e}", s.what));
        }
    }
    notes
}

fn arrived(seen: &Seen, s: &Sent) -> bool {
    seen[&s.target].iter().any(|f| attack::contains(&f.l4, &s.marker))
}

fn answered(seen: &Seen, s: &Sent) -> bool {
    let Some(a) = &s.answer else { return false };
    seen[&a.ns].iter().any(|f| {
        f.src == a.from && (attack::contains(&f.l4, &s.marker) || f.proto == 6 && f.ports() == Some((a.dport, a.sport)))
    })
}

/// Neighbour discovery still works once the programs are in (the
/// dataplane's wiring check resolved every neighbour before): with every
/// neighbour cache flushed, each node reaches its pods and the other node,
/// and the outside host reaches a pod on each node, in both families. The
/// attacks then go out over resolved neighbours, none queued behind a
/// resolution.
fn neighbours_resolve_under_the_programs(dp: &Dataplane, cluster: &Cluster) {
    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    let names: Vec<&str> = pods.iter().map(String::as_str).chain(["node/node-1", "node/node-2", "outside"]).collect();
    let mut flushed = BTreeSet::new();
    for family in [Family::IPv4, Family::IPv6] {
        for name in &names {
            let (ns, _) = dp.locate(&endpoint(cluster, name, family), family).unwrap();
            if flushed.insert(ns.name().to_string()) {
                let out = ns.command("ip").unwrap().args(["neigh", "flush", "all"]).output().unwrap();
                assert!(out.status.success(), "ip neigh flush in {}: {}", ns.name(), String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    let mut specs = Vec::new();
    for family in [Family::IPv4, Family::IPv6] {
        let spec = |from: &str, to: &str| ProbeSpec {
            from: endpoint(cluster, from, family),
            to: endpoint(cluster, to, family),
            family,
            protocol: Protocol::Tcp,
            port: OPEN_PORT,
            via: None,
        };
        for pod in cluster.pods.iter().filter(|p| p.node.as_deref() == Some("node-1")) {
            specs.push(spec("node/node-1", &pod.key()));
        }
        specs.extend([
            spec("node/node-2", "x/peer2"),
            spec("node/node-1", "node/node-2"),
            spec("node/node-2", "node/node-1"),
            spec("outside", "x/peer2"),
            spec("outside", "x/in-allow"),
        ]);
    }
    let results = dp.probe_all(&specs).unwrap();
    let failed: Vec<String> =
        specs.iter().zip(&results).filter(|(_, r)| !r.allowed).map(|(s, r)| format!("{}: {}", dp.describe(s), r.detail)).collect();
    assert!(failed.is_empty(), "with the programs in, neighbours no longer resolve:\n{}", failed.join("\n"));
}

/// The fixture means what the cases say, by the reference evaluator.
fn check_reference(cluster: &Cluster, ir: &Ir) {
    let allowed = |from: &str, to: &str, protocol, port, family| {
        let flow = Flow {
            src: endpoint(cluster, from, family),
            dst: endpoint(cluster, to, family),
            protocol,
            port,
            family: Some(family),
        };
        eval::evaluate(cluster, ir, &flow).unwrap().allowed
    };
    for family in [Family::IPv4, Family::IPv6] {
        for c in cases() {
            for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                let attacked = allowed(c.attacker, c.target, protocol, ATTACKED_PORT, family);
                let open = allowed(c.attacker, c.target, protocol, OPEN_PORT, family);
                let expected = match c.policy {
                    Policy::Deny => (false, false),
                    Policy::Port => (false, true),
                    Policy::Allow => (true, true),
                };
                assert_eq!((attacked, open), expected, "{c:?} {protocol} {family}");
            }
        }
        for s in SPOOFS {
            assert!(allowed(s.claims, s.target, Protocol::Udp, ATTACKED_PORT, family), "{} -> {}", s.claims, s.target);
        }
    }
}

fn host_tables() -> String {
    let out = Command::new("nft").args(["list", "tables"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn forged_packets_cross_no_policy_that_denies_them() {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let start = Instant::now();
    let path = format!("{}/{CLUSTER}", env!("CARGO_MANIFEST_DIR"));
    let cluster = load_paths(&[path]).unwrap().0;
    let ir = ir::resolve(&cluster);
    check_reference(&cluster, &ir);
    let host_tables_before = host_tables();

    let dp = Dataplane::build(&cluster, &[ip(OUTSIDE4), ip(OUTSIDE6)], |node, ns| {
        let program = netfence::nft::compile(&cluster, &ir, node);
        ns.run(|| NftKernel::new().apply(&netfence::nft::diff(None, &program)))??;
        Ok(())
    })
    .unwrap();
    let built = start.elapsed();
    let names = dp.netns_names();
    let prefix = format!("nf{}-", std::process::id());
    assert!(names.iter().all(|n| n.starts_with(&prefix)), "{names:?}");

    neighbours_resolve_under_the_programs(&dp, &cluster);

    let mut plan = Plan::new(&dp);
    for family in [Family::IPv4, Family::IPv6] {
        for case in cases() {
            plan.case(&dp, &cluster, case, family);
        }
        for spoof in SPOOFS {
            plan.spoof(&dp, &cluster, spoof, family);
        }
    }
    let (seen, notes, sending) = run(&plan);

    let mut leaks = Vec::new();
    let mut misses = Vec::new();
    let mut dropped_when_allowed = Vec::new();
    for s in &plan.sent {
        let (arrived, answered) = (arrived(&seen, s), answered(&seen, s));
        match s.expect {
            Expect::Denied if arrived || answered => {
                let how = match (arrived, answered) {
                    (true, true) => "arrived, and the target answered",
                    (true, false) => "arrived",
                    _ => "the target answered",
                };
                leaks.push(format!("{}: {how}", s.what));
            }
            Expect::Arrives { .. } if !arrived => misses.push(format!("{}: did not arrive", s.what)),
            Expect::Arrives { answered: true } if !answered => misses.push(format!("{}: was not answered", s.what)),
            Expect::Either if !arrived => dropped_when_allowed.push(s.what.clone()),
            _ => {}
        }
    }
    let denied = plan.sent.iter().filter(|s| s.expect == Expect::Denied).count();
    let sends = plan.sent.len();
    let captured: usize = seen.values().map(Vec::len).sum();
    drop(plan);
    drop(dp);
    let listed = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    let left: Vec<&String> = names.iter().filter(|n| netns::exists(n) || listed.split_whitespace().any(|w| w == *n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_eq!(host_tables(), host_tables_before, "the host's ruleset changed");

    eprintln!(
        "{sends} sends, {denied} denied by policy: {} leaked; {} allowed ones missing; {} attacks on allowed flows \
         dropped by the filter (as stateful filtering may); {captured} packets captured; built in {built:.1?}, \
         sent in {sending:.1?}, {:.1?} in all",
        leaks.len(),
        misses.len(),
        dropped_when_allowed.len(),
        start.elapsed()
    );
    let refused = notes.iter().filter(|n| n.ends_with("(EPERM)")).count();
    eprintln!("{refused} sends dropped on the way out by the sender's own node (netfence there: invalid)");
    for n in notes.iter().filter(|n| !n.ends_with("(EPERM)")) {
        eprintln!("note: {n}");
    }
    if std::env::var_os("NETFENCE_ADVERSARIAL_VERBOSE").is_some() {
        for what in &dropped_when_allowed {
            eprintln!("dropped although policy allows the flow: {what}");
        }
    }
    assert!(
        leaks.is_empty() && misses.is_empty(),
        "{} leaks where policy denies:\n{}\n\n{} misses where policy allows:\n{}",
        leaks.len(),
        leaks.join("\n"),
        misses.len(),
        misses.join("\n")
    );
}
