//! The drop log: one structured line for each packet a netfence rule
//! dropped on this node, naming what decided it, and drops counted per
//! policy in `/metrics`.
//!
//! The kernel does the selecting and the rate limiting (the log rules of
//! [`crate::nft::drop_log`]: one node-wide token bucket, optionally one
//! drop in N); this module only reads NFLOG messages over netlink
//! (netlink-packet-netfilter's nflog messages on a netlink-sys socket, the
//! crates the conntrack cut already uses) on a thread of its own, and
//! names them:
//! - the rule: the message's prefix is `CHAIN POSITION KIND`; the
//!   [`Origins`] of the program last committed turn it into the isolating
//!   policies (a default deny) or the kind of drop;
//! - the endpoints: addresses to pods (`ns/name`) and nodes (`node/NAME`)
//!   from the cluster last synced, indexed when a drop needs it and at
//!   most once a second, so a flood of drops during pod churn costs one
//!   index a second, not one per change.
//!
//! Only headers are copied out of the kernel (`COPY_RANGE` bytes). A reader
//! that falls behind loses messages (the socket overflows, ENOBUFS), never
//! packets: the drops happen in the kernel either way, and each drop rule's
//! counter counts all of them. Lost messages are counted
//! (`netfence_drop_log_lost_total`).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etherparse::{IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{config_request, ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{constants::NETLINK_NETFILTER, Socket};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::model::Cluster;
use crate::nft::counters::{Origin, Origins};
use crate::nft::drop_log::{self, DropLog, Prefix};

/// Bytes of each packet the kernel copies to us: IPv6 with a few extension
/// headers and the transport header fit.
const COPY_RANGE: u32 = 256;
/// Least time between two indexes of the cluster's addresses.
const REINDEX_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// `namespace/name`; empty for drops no policy decided.
    pub policy: String,
    /// `ingress`, `egress`, or empty (anti-spoofing comes before both).
    pub direction: String,
    /// `isolated`, `cluster` (a cluster policy's Deny), `invalid`,
    /// `fail-closed`, `antispoof`.
    pub kind: String,
}

/// One dropped packet, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub direction: String,
    pub kind: String,
    /// The isolating policies of a default deny, in order.
    pub policies: Vec<String>,
    pub src: IpAddr,
    pub src_name: Option<String>,
    pub dst: IpAddr,
    pub dst_name: Option<String>,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`, or the protocol number.
    pub protocol: String,
    pub dport: Option<u16>,
    /// What decided it, in `explain`'s words.
    pub reason: String,
}

impl Record {
    /// The log line: an event on target `netfence::drop` (one JSON object
    /// with `--log-format json`).
    pub fn emit(&self) {
        let name = |n: &Option<String>| n.clone().unwrap_or_default();
        tracing::info!(
            target: "netfence::drop",
            direction = %self.direction,
            src = %self.src,
            src_name = %name(&self.src_name),
            dst = %self.dst,
            dst_name = %name(&self.dst_name),
            protocol = %self.protocol,
            // Absent for protocols without ports (ICMP).
            dport = self.dport.map(u64::from),
            policies = %self.policies.join(","),
            kind = %self.kind,
            reason = %self.reason,
            "dropped"
        );
    }
}

/// What the log needs of the committed state, and the metrics it keeps.
/// Shared by the dataplane (origins), the reconcile loop (cluster) and the
/// reader thread.
pub struct DropLogger {
    cfg: DropLog,
    state: Mutex<State>,
    /// Only the reader uses it: indexing never holds up a sync.
    names: Mutex<Names>,
    dropped: Family<DropLabels, Counter>,
    lost: Counter,
}

#[derive(Default)]
struct State {
    /// Drop rules of the committed program by (chain, position).
    origins: BTreeMap<(String, usize), Origin>,
    cluster: Option<Arc<Cluster>>,
}

/// Addresses of `indexed` (a cluster older than the committed one by at
/// most `REINDEX_EVERY`).
#[derive(Default)]
struct Names {
    names: HashMap<IpAddr, String>,
    indexed: Option<(Arc<Cluster>, Instant)>,
}

impl std::fmt::Debug for DropLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropLogger").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl DropLogger {
    pub fn new(cfg: DropLog) -> Arc<DropLogger> {
        Arc::new(DropLogger {
            cfg,
            state: Mutex::default(),
            names: Mutex::default(),
            dropped: Family::default(),
            lost: Counter::default(),
        })
    }

    pub fn config(&self) -> &DropLog {
        &self.cfg
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "drops_logged",
            "Dropped packets the drop log named, per policy (each isolating policy of a default deny), direction and kind",
            self.dropped.clone(),
        );
        registry.register(
            "drop_log_lost",
            "Drop log messages lost because the reader fell behind (the packets were dropped and counted all the same)",
            self.lost.clone(),
        );
    }

    /// The program now in force: what its drop rules are.
    pub fn committed_program(&self, origins: &Origins) {
        let drops = origins
            .iter()
            .flat_map(|(chain, rules)| {
                rules.iter().enumerate().filter_map(move |(i, o)| Some(((chain.clone(), i), o.clone().filter(Origin::drops)?)))
            })
            .collect();
        self.lock().origins = drops;
    }

    /// The cluster the program in force was compiled from.
    pub fn committed_cluster(&self, cluster: Arc<Cluster>) {
        self.lock().cluster = Some(cluster);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Name one logged packet and count it; `None` for a message that is
    /// not ours or not an IP packet.
    pub fn record(&self, prefix: &str, packet: &[u8]) -> Option<Record> {
        let at = Prefix::parse(prefix)?;
        let pkt = Headers::parse(packet)?;
        let (origin, cluster) = {
            let st = self.lock();
            let origin = st.origins.get(&(at.chain.clone(), at.position)).filter(|o| drop_log::kind(o) == at.kind).cloned();
            (origin, st.cluster.clone())
        };
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.refresh(cluster);
        let (src_name, dst_name) = (names.names.get(&pkt.src).cloned(), names.names.get(&pkt.dst).cloned());
        drop(names);
        let direction = origin.as_ref().and_then(Origin::direction).map(|d| d.to_string()).unwrap_or_default();
        let (policies, reason) = match &origin {
            Some(Origin::Isolated { policies, dir }) => {
                (policies.clone(), format!("denied: isolated by {}, and no {dir} rule matches", policies.join(", ")))
            }
            Some(Origin::Cluster { policy, dir, rule, action }) => {
                (vec![policy.clone()], format!("denied by cluster policy {policy} {dir} rule {rule} ({action})"))
            }
            Some(Origin::Invalid { .. }) => (vec![], "dropped: part of no connection (ct state invalid)".into()),
            Some(Origin::FailClosed { .. }) => (vec![], "dropped: an address of the node's pod CIDRs that no programmed pod holds (fail closed)".into()),
            Some(Origin::Antispoof) => (vec![], "dropped: its source is not routed back through the interface it came in on (spoofed)".into()),
            Some(Origin::Allow { .. } | Origin::Hairpin { .. }) | None => (vec![], format!("dropped by {} rule {} ({}; the program has changed since)", at.chain, at.position, at.kind)),
        };
        let series = if policies.is_empty() { vec![String::new()] } else { policies.clone() };
        for policy in series {
            self.dropped.get_or_create(&DropLabels { policy, direction: direction.clone(), kind: at.kind.clone() }).inc();
        }
        Some(Record {
            direction,
            kind: at.kind,
            policies,
            src: pkt.src,
            src_name,
            dst: pkt.dst,
            dst_name,
            protocol: pkt.protocol,
            dport: pkt.dport,
            reason,
        })
    }

    /// Read the kernel's log of this namespace on a thread of its own. The
    /// socket is opened here, so a node where it cannot be fails at start.
    pub fn spawn(self: &Arc<Self>) -> io::Result<std::thread::JoinHandle<()>> {
        let mut reader = Reader::open(self.cfg.group)?;
        let me = self.clone();
        std::thread::Builder::new().name("drop-log".into()).spawn(move || loop {
            match reader.next() {
                Ok(messages) => {
                    for (prefix, packet) in messages {
                        match me.record(&prefix, &packet) {
                            Some(r) => r.emit(),
                            None => tracing::warn!(%prefix, len = packet.len(), head = ?&packet[..packet.len().min(48)], "a drop log message that is not ours"),
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    me.lost.inc();
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    tracing::error!(error = %e, "reading the drop log failed; retrying in a second");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
    }
}

impl Names {
    fn refresh(&mut self, cluster: Option<Arc<Cluster>>) {
        let Some(cluster) = cluster else { return };
        let fresh = match &self.indexed {
            Some((c, _)) if Arc::ptr_eq(c, &cluster) => true,
            Some((_, at)) => at.elapsed() < REINDEX_EVERY,
            None => false,
        };
        if fresh {
            return;
        }
        let mut names = HashMap::new();
        for n in cluster.nodes.values() {
            for ip in &n.internal_ips {
                names.insert(*ip, format!("node/{}", n.name));
            }
        }
        // A host-network pod shares its node's address: the node names it.
        for p in cluster.pods.iter().filter(|p| p.is_policy_pod()) {
            for ip in &p.ips {
                names.insert(*ip, p.key());
            }
        }
        self.names = names;
        self.indexed = Some((cluster, Instant::now()));
    }
}

/// What a log line says of a packet's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Headers {
    src: IpAddr,
    dst: IpAddr,
    protocol: String,
    dport: Option<u16>,
}

impl Headers {
    /// Lax: the kernel cut the packet at `COPY_RANGE` bytes.
    fn parse(packet: &[u8]) -> Option<Headers> {
        let sliced = LaxSlicedPacket::from_ip(packet).ok()?;
        let (src, dst, payload) = match sliced.net.as_ref()? {
            LaxNetSlice::Ipv4(v4) => (IpAddr::V4(v4.header().source_addr()), IpAddr::V4(v4.header().destination_addr()), v4.payload()),
            LaxNetSlice::Ipv6(v6) => (IpAddr::V6(v6.header().source_addr()), IpAddr::V6(v6.header().destination_addr()), v6.payload()),
            LaxNetSlice::Arp(_) => return None,
        };
        let (protocol, dport) = match (&sliced.transport, payload.ip_number) {
            (Some(TransportSlice::Tcp(t)), _) => ("TCP".to_string(), Some(t.destination_port())),
            (Some(TransportSlice::Udp(u)), _) => ("UDP".to_string(), Some(u.destination_port())),
            (Some(TransportSlice::Icmpv4(_)), _) => ("ICMP".to_string(), None),
            (Some(TransportSlice::Icmpv6(_)), _) => ("ICMPv6".to_string(), None),
            // SCTP's common header: source port, destination port.
            (None, IpNumber::SCTP) if !payload.fragmented => {
                ("SCTP".to_string(), payload.payload.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]])))
            }
            (_, n) => (n.0.to_string(), None),
        };
        Some(Headers { src, dst, protocol, dport })
    }
}

/// An NFLOG group of the calling thread's network namespace.
struct Reader {
    socket: Socket,
    buf: Vec<u8>,
}

impl Reader {
    fn open(group: u16) -> io::Result<Reader> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        // A recv never blocks for good: callers read for a bounded time.
        socket2::SockRef::from(&socket).set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut r = Reader { socket, buf: vec![0; 1 << 16] };
        // The kernel batches up to 100 messages or a second by default: a
        // drop is worth its line at once (the rate is bounded anyway).
        let config = vec![ConfigCmd::Bind.into(), ConfigMode::new_packet(COPY_RANGE).into(), ConfigNla::QThresh(1)];
        let bind = config_request(NetfilterProtoFamily::Unspec, group, config);
        r.request(bind).map_err(|e| io::Error::new(e.kind(), format!("binding NFLOG group {group} (is another program reading it?): {e}")))?;
        Ok(r)
    }

    /// Send a config request and wait for its acknowledgement.
    fn request(&mut self, mut msg: NetlinkMessage<NetfilterMessage>) -> io::Result<()> {
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[..n]).map_err(|e| io::Error::other(e.to_string()))?;
        match reply.payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(()),
                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
            },
            other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
        }
    }

    /// The next batch of logged packets: (prefix, packet from its IP header).
    fn next(&mut self) -> io::Result<Vec<(String, Vec<u8>)>> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let mut out = Vec::new();
        let mut at = 0;
        while at < n {
            let msg = match NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[at..n]) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "an NFLOG message that cannot be read");
                    break;
                }
            };
            let len = msg.header.length as usize;
            if let NetlinkPayload::InnerMessage(NetfilterMessage { inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)), .. }) =
                msg.payload
            {
                let prefix = nlas.iter().find_map(|a| match a {
                    PacketNla::Prefix(p) => Some(p.to_string_lossy().into_owned()),
                    _ => None,
                });
                let payload = nlas.into_iter().find_map(|a| match a {
                    PacketNla::Payload(p) => Some(p),
                    _ => None,
                });
                if let (Some(prefix), Some(payload)) = (prefix, payload) {
                    out.push((prefix, payload));
                }
            }
            if len == 0 {
                break;
            }
            at += len.next_multiple_of(4);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Direction;

    fn tcp_syn(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(src, dst, 64).tcp(40000, dport, 1, 1024).syn();
        let mut out = Vec::new();
        b.write(&mut out, &[]).expect("a packet");
        out
    }

    fn logger() -> Arc<DropLogger> {
        let cluster = crate::model::load::load_str(
            "t.yaml",
            "apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.244.1.11}
",
        )
        .expect("valid");
        let l = DropLogger::new(DropLog { mode: drop_log::Mode::Full, group: 3, per_second: 10 });
        let origins: Origins = [(
            "grp_ing_1".to_string(),
            vec![None, Some(Origin::Isolated { policies: vec!["y/deny".into(), "y/web".into()], dir: Direction::Ingress })],
        )]
        .into();
        l.committed_program(&origins);
        l.committed_cluster(Arc::new(cluster));
        l
    }

    #[test]
    fn a_default_deny_is_named_with_its_policies_and_counted_per_policy() {
        let l = logger();
        let r = l.record("grp_ing_1 1 isolated", &tcp_syn([10, 244, 1, 10], [10, 244, 1, 11], 80)).expect("ours");
        assert_eq!(r.direction, "ingress");
        assert_eq!(r.policies, ["y/deny", "y/web"]);
        assert_eq!((r.src_name.as_deref(), r.dst_name.as_deref()), (Some("x/a"), Some("y/b")));
        assert_eq!((r.protocol.as_str(), r.dport), ("TCP", Some(80)));
        assert_eq!(r.reason, "denied: isolated by y/deny, y/web, and no ingress rule matches");
        for policy in ["y/deny", "y/web"] {
            let labels = DropLabels { policy: policy.into(), direction: "ingress".into(), kind: "isolated".into() };
            assert_eq!(l.dropped.get_or_create(&labels).get(), 1);
        }
    }

    #[test]
    fn a_stale_or_foreign_prefix_is_still_named_by_what_it_says() {
        let l = logger();
        // The program changed: position 1 of another chain.
        let r = l.record("grp_ing_2 1 isolated", &tcp_syn([192, 168, 0, 1], [10, 244, 1, 11], 22)).expect("ours");
        assert!(r.policies.is_empty());
        assert!(r.reason.contains("changed since"), "{}", r.reason);
        assert_eq!(r.src_name.as_deref(), Some("node/n1"));
        assert_eq!(l.record("somebody else's prefix", &tcp_syn([1, 1, 1, 1], [2, 2, 2, 2], 1)), None);
        assert_eq!(l.record("grp_ing_1 1 isolated", &[0x45, 0]), None);
    }

    #[test]
    fn headers_of_every_protocol_even_cut_short() {
        let udp = {
            let mut out = Vec::new();
            etherparse::PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64).udp(1, 53).write(&mut out, &[0; 400]).expect("a packet");
            out
        };
        let h = Headers::parse(&udp[..COPY_RANGE as usize]).expect("cut at the copy range");
        assert_eq!((h.protocol.as_str(), h.dport), ("UDP", Some(53)));
        let mut sctp = tcp_syn([10, 0, 0, 1], [10, 0, 0, 2], 0);
        sctp.truncate(20);
        sctp[9] = 132;
        sctp[2..4].copy_from_slice(&(20u16 + 12).to_be_bytes());
        sctp.extend_from_slice(&[0x9c, 0x40, 0x0b, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0]);
        let h = Headers::parse(&sctp).expect("sctp");
        assert_eq!((h.protocol.as_str(), h.dport), ("SCTP", Some(3000)));
    }
}

/// The reader against the kernel, in a private network namespace.
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::netns::{self, Netns};
    use std::io::Write;

    #[test]
    fn reads_what_the_kernel_logs_up_to_the_limit() {
        if let Err(why) = netns::check_privileges() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let ns = Netns::create("nfdl").expect("a namespace");
        ns.ip_batch("link set lo up").expect("lo up");
        let rules = "table inet t {
  limit drop_log_5 { rate 5/second burst 5 packets; }
  chain c { type filter hook output priority 0; policy accept;
    udp dport 9999 limit name \"drop_log_5\" log prefix \"c 1 isolated\" group 1706
    udp dport 9999 drop
  }
}
";
        let mut nft = ns.command("nft").expect("nft").arg("-f").arg("-").stdin(std::process::Stdio::piped()).spawn().expect("nft");
        nft.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("write");
        assert!(nft.wait().expect("nft").success());
        let got = ns
            .run(|| {
                let mut r = Reader::open(1706).expect("bind");
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
                for _ in 0..100 {
                    let _ = sock.send_to(b"x", "127.0.0.1:9999");
                }
                let mut got = Vec::new();
                let start = Instant::now();
                // Each message at once (no batching): well before the
                // kernel's one-second flush.
                while start.elapsed() < Duration::from_millis(500) {
                    match r.next() {
                        Ok(m) => got.extend(m),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                got
            })
            .expect("in the namespace");
        assert!((5..=8).contains(&got.len()), "{} messages", got.len());
        for (prefix, packet) in &got {
            assert_eq!(prefix, "c 1 isolated");
            let h = Headers::parse(packet).expect("an IP packet");
            assert_eq!((h.protocol.as_str(), h.dport), ("UDP", Some(9999)));
        }
    }
}
