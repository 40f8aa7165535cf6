//! The conntrack table through ctnetlink, in-process.
//!
//! Messages are netlink-packet-netfilter's typed conntrack messages (the
//! rust-netlink project); the socket is netlink-sys's plain blocking one.
//! What that crate does not type is encoded here: the ICMP parts of a tuple,
//! CTA_ID and CTA_ZONE, and the one rtnetlink request that lists the node's
//! own addresses.
//!
//! Deletions and insertions go in batches: many requests in one datagram,
//! each acknowledged, so a thousand entries cost a few system calls, not a
//! process each. A batch is sized so that its acknowledgements fit the
//! socket's receive buffer (an overflowing one loses them).

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, DefaultNla, ErrorBuffer, NetlinkBuffer, NLMSG_DONE, NLMSG_ERROR, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NlasIterator, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Status, Tuple as NlTuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
#[cfg(test)]
use {netlink_packet_core::Nla, netlink_packet_netfilter::NetfilterMessageInner};
use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};
use netlink_sys::{Socket, SocketAddr};

use super::{Deleted, Entry, L4, Table, TableError, Tuple, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP};

// include/uapi/linux/netfilter/nfnetlink_conntrack.h
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
/// The message type of a dumped entry: (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW.
const CT_NEW: u16 = 1 << 8;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// include/uapi/linux/netfilter/nf_conntrack_tcp.h
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;

// include/uapi/linux/rtnetlink.h, if_addr.h
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// Requests per datagram. Each acknowledgement takes about a kilobyte of
/// the receive buffer (the skb's true size), which defaults to 208 KiB.
const BATCH: usize = 128;
/// A dump datagram is at most 32 KiB plus a page; room to spare.
const RECV_BUF: usize = 64 * 1024;
/// How long the kernel may take to answer before the call fails.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The conntrack table of the network namespace this was opened in.
pub struct NetlinkTable {
    ct: Socket,
    route: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for NetlinkTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkTable").field("seq", &self.seq).finish()
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> TableError {
    move |source| TableError::Io { what, source }
}

fn decode_err(what: &'static str) -> impl FnOnce(DecodeError) -> TableError {
    move |e| TableError::Decode { what, message: e.to_string() }
}

fn open_socket(protocol: isize, what: &'static str) -> Result<Socket, TableError> {
    let mut s = Socket::new(protocol).map_err(io_err(what))?;
    s.bind_auto().map_err(io_err(what))?;
    s.connect(&SocketAddr::new(0, 0)).map_err(io_err(what))?;
    socket2::SockRef::from(&s).set_read_timeout(Some(TIMEOUT)).map_err(io_err(what))?;
    // Short acknowledgements: the error code and our header, not our request back.
    s.set_cap_ack(true).map_err(io_err(what))?;
    Ok(s)
}

impl NetlinkTable {
    /// Open the table of the calling thread's network namespace (sockets
    /// stay in the namespace they were made in, whichever thread uses them
    /// later), and check that the kernel lets us read and change it: a
    /// lookup of an entry that cannot exist must say "no such entry", not
    /// "not permitted" (CAP_NET_ADMIN) or "no such subsystem".
    pub fn open() -> Result<NetlinkTable, TableError> {
        let mut t = NetlinkTable {
            ct: open_socket(NETLINK_NETFILTER, "open a ctnetlink socket")?,
            route: open_socket(NETLINK_ROUTE, "open an rtnetlink socket")?,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        };
        let probe = Tuple::ports(IPPROTO_TCP, IpAddr::from([0, 0, 0, 0]), 0, IpAddr::from([0, 0, 0, 0]), 0);
        let get = request(family(&probe.src), ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(&probe))]));
        let codes = t.batch("probe conntrack", vec![get], 0)?;
        match codes.first().copied().unwrap_or(0) {
            0 => Ok(t),
            e if e == -libc::ENOENT => Ok(t),
            e => Err(TableError::Refused { what: "use ctnetlink (it needs CAP_NET_ADMIN and nf_conntrack_netlink)", source: io::Error::from_raw_os_error(-e) }),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Create entries, each with `timeout` seconds to live; TCP ones as
    /// established. For tests and the benchmark, which fill a scratch
    /// namespace's table.
    pub fn insert(&mut self, entries: &[Entry], timeout: u32) -> Result<Deleted, TableError> {
        let msgs: Vec<_> = entries.iter().map(|e| request(family(&e.orig.src), new_message(e, timeout))).collect();
        let codes = self.batch("insert conntrack entries", msgs, NLM_F_CREATE | NLM_F_EXCL)?;
        Ok(tally(&codes, "insert"))
    }

    /// Send `msgs` in batches, each request acknowledged; the kernel's
    /// answer for each, in order (0, or a negative errno).
    fn batch(&mut self, what: &'static str, msgs: Vec<NetfilterMessage>, flags: u16) -> Result<Vec<i32>, TableError> {
        let mut codes = Vec::with_capacity(msgs.len());
        for chunk in msgs.chunks(BATCH) {
            let first = self.seq.wrapping_add(1);
            let mut out = Vec::new();
            for m in chunk {
                let seq = self.next_seq();
                out.extend(serialize(m.clone(), NLM_F_REQUEST | NLM_F_ACK | flags, seq));
            }
            self.ct.send(&out, 0).map_err(io_err(what))?;
            let mut answers: Vec<Option<i32>> = vec![None; chunk.len()];
            let mut pending = chunk.len();
            while pending > 0 {
                self.buf.clear();
                self.ct.recv(&mut self.buf, 0).map_err(io_err(what))?;
                for msg in messages::<NetfilterMessage>(&self.buf) {
                    let msg = msg.map_err(decode_err(what))?;
                    // Anything else is left over from an earlier call that failed half-way.
                    let i = msg.header.sequence_number.wrapping_sub(first) as usize;
                    if let (NetlinkPayload::Error(e), Some(slot @ None)) = (msg.payload, answers.get_mut(i)) {
                        *slot = Some(e.raw_code());
                        pending -= 1;
                    }
                }
            }
            codes.extend(answers.into_iter().map(|a| a.unwrap_or(0)));
        }
        Ok(codes)
    }

    /// How many entries the table holds, without decoding them: the
    /// kernel's side of a dump (for the benchmark's split).
    pub fn count(&mut self) -> Result<u64, TableError> {
        let mut n = 0;
        self.dump_raw(&mut |_| n += 1)?;
        Ok(n)
    }

    /// Dump both families; `visit` gets each entry's message payload
    /// (after the netlink header). Entries are read straight from the
    /// datagrams: a dump of 100k entries is 100k messages, and decoding only
    /// the attributes a cut needs, without allocating, is most of its cost
    /// on our side.
    fn dump_raw(&mut self, visit: &mut dyn FnMut(&[u8])) -> Result<(), TableError> {
        const WHAT: &str = "dump conntrack";
        let seq = self.next_seq();
        // AF_UNSPEC: both families in one dump.
        let req = request(NetfilterProtoFamily::Unspec, ConntrackMessage::Get(vec![]));
        self.ct.send(&serialize(req, NLM_F_REQUEST | NLM_F_DUMP, seq), 0).map_err(io_err(WHAT))?;
        loop {
            self.buf.clear();
            self.ct.recv(&mut self.buf, 0).map_err(io_err(WHAT))?;
            let mut rest: &[u8] = &self.buf;
            while !rest.is_empty() {
                let msg = NetlinkBuffer::new_checked(rest).map_err(decode_err(WHAT))?;
                let len = msg.length() as usize;
                if msg.sequence_number() == seq {
                    match msg.message_type() {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let e = ErrorBuffer::new_checked(msg.payload()).map_err(decode_err(WHAT))?;
                            if let Some(code) = e.code() {
                                return Err(TableError::Refused { what: WHAT, source: io::Error::from_raw_os_error(-code.get()) });
                            }
                        }
                        CT_NEW => visit(msg.payload()),
                        _ => {}
                    }
                }
                rest = rest.get(len.max(4).next_multiple_of(4)..).unwrap_or(&[]);
            }
        }
    }

    fn addresses(&mut self) -> Result<Vec<IpAddr>, TableError> {
        const WHAT: &str = "list the node's addresses";
        let seq = self.next_seq();
        let req = serialize_route(AddrMessage::Request, NLM_F_REQUEST | NLM_F_DUMP, seq);
        self.route.send(&req, 0).map_err(io_err(WHAT))?;
        let mut out = Vec::new();
        loop {
            self.buf.clear();
            self.route.recv(&mut self.buf, 0).map_err(io_err(WHAT))?;
            for msg in messages::<AddrMessage>(&self.buf) {
                let msg = msg.map_err(decode_err(WHAT))?;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(TableError::Refused { what: WHAT, source: e.to_io() }),
                    NetlinkPayload::InnerMessage(AddrMessage::Addr(Some(ip))) => out.push(ip),
                    _ => {}
                }
            }
        }
    }
}

/// Count the answers to a batch.
fn tally(codes: &[i32], what: &str) -> Deleted {
    let mut d = Deleted::default();
    for &c in codes {
        match c {
            0 => d.deleted += 1,
            e if e == -libc::ENOENT => d.missing += 1,
            e => {
                d.failed += 1;
                d.first_error.get_or_insert_with(|| format!("{what}: {}", io::Error::from_raw_os_error(-e)));
            }
        }
    }
    d
}

impl Table for NetlinkTable {
    fn dump(&mut self, visit: &mut dyn FnMut(Entry)) -> Result<u64, TableError> {
        let mut n = 0;
        self.dump_raw(&mut |payload| {
            if let Some(e) = decode_entry(payload) {
                n += 1;
                visit(e);
            }
        })?;
        Ok(n)
    }

    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted, TableError> {
        let msgs: Vec<_> = entries.iter().map(|e| request(family(&e.orig.src), delete_message(e))).collect();
        let codes = self.batch("delete conntrack entries", msgs, 0)?;
        Ok(tally(&codes, "delete"))
    }

    fn local_addrs(&mut self) -> Result<Vec<IpAddr>, TableError> {
        self.addresses()
    }
}

// ---------------------------------------------------------------------------
// Encoding and decoding: pure, tested below.

fn family(ip: &IpAddr) -> NetfilterProtoFamily {
    match ip {
        IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
        IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
    }
}

fn request(family: NetfilterProtoFamily, m: ConntrackMessage) -> NetfilterMessage {
    // nfgenmsg: NFNETLINK_V0, resource id 0.
    NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), m)
}

fn serialize<T: NetlinkSerializable>(inner: T, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn serialize_route(m: AddrMessage, flags: u16, seq: u32) -> Vec<u8> {
    serialize(m, flags, seq)
}

/// The netlink messages of one datagram.
fn messages<T: NetlinkDeserializable>(mut buf: &[u8]) -> impl Iterator<Item = Result<NetlinkMessage<T>, DecodeError>> + '_ {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let len = match NetlinkBuffer::new_checked(buf) {
            Ok(b) => b.length() as usize,
            Err(e) => {
                buf = &[];
                return Some(Err(e));
            }
        };
        let msg = NetlinkMessage::<T>::deserialize(buf);
        // Messages are 4-byte aligned; a zero length would never advance.
        let next = (len.max(1) + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
        Some(msg)
    })
}

/// A tuple as CTA_TUPLE_ORIG / CTA_TUPLE_REPLY carry it.
fn tuple_attrs(t: &Tuple) -> Vec<NlTuple> {
    let mut proto = vec![ProtoTuple::Protocol(t.proto.into())];
    match t.l4 {
        L4::Ports { sport, dport } => {
            proto.push(ProtoTuple::SourcePort(sport));
            proto.push(ProtoTuple::DestinationPort(dport));
        }
        L4::Icmp { id, ty, code } => {
            let (k_id, k_ty, k_code) = if t.proto == IPPROTO_ICMPV6 {
                (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE)
            } else {
                (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            };
            proto.push(ProtoTuple::Other(DefaultNla::new(k_id, id.to_be_bytes().to_vec())));
            proto.push(ProtoTuple::Other(DefaultNla::new(k_ty, vec![ty])));
            proto.push(ProtoTuple::Other(DefaultNla::new(k_code, vec![code])));
        }
        L4::None => {}
    }
    vec![NlTuple::Ip(vec![IPTuple::SourceAddress(t.src), IPTuple::DestinationAddress(t.dst)]), NlTuple::Proto(proto)]
}

fn zone_and_id(e: &Entry) -> Vec<ConntrackAttribute> {
    let mut out = Vec::new();
    if e.zone != 0 {
        out.push(ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, e.zone.to_be_bytes().to_vec())));
    }
    if let Some(id) = e.id {
        out.push(ConntrackAttribute::Other(DefaultNla::new(CTA_ID, id.to_be_bytes().to_vec())));
    }
    out
}

/// Delete one entry: its original tuple, its zone, and its id when known
/// (so a newer entry that reuses the tuple is not deleted instead).
fn delete_message(e: &Entry) -> ConntrackMessage {
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(&e.orig))];
    attrs.extend(zone_and_id(e));
    ConntrackMessage::Delete(attrs)
}

/// Create one entry (no id: the kernel picks it).
fn new_message(e: &Entry, timeout: u32) -> ConntrackMessage {
    let mut attrs = vec![
        ConntrackAttribute::CtaTupleOrig(tuple_attrs(&e.orig)),
        ConntrackAttribute::CtaTupleReply(tuple_attrs(&e.reply)),
        ConntrackAttribute::CtaTimeout(timeout),
        // The kernel marks a created entry confirmed before it applies the
        // status it is given, and refuses (EBUSY) a status that would clear it.
        ConntrackAttribute::CtaStatus(Status::Confirmed | Status::SeenReply | Status::Assured),
    ];
    if e.orig.proto == IPPROTO_TCP {
        attrs.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(TCP_CONNTRACK_ESTABLISHED)])]));
    }
    attrs.extend(zone_and_id(&Entry { id: None, ..*e }));
    ConntrackMessage::New(attrs)
}

/// The value of an attribute the crate leaves untyped.
#[cfg(test)]
fn value(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

/// The crate's reading of a tuple: the reference [`decode_tuple`] is
/// tested against.
#[cfg(test)]
fn parse_tuple(attrs: &[NlTuple]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut sport, mut dport) = (None, None);
    let (mut id, mut ty, mut code) = (None, None, None);
    for a in attrs {
        match a {
            NlTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NlTuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => dport = Some(*n),
                        ProtoTuple::Other(nla) => {
                            let v = value(nla);
                            match nla.kind() & NLA_TYPE_MASK {
                                CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => id = be16(&v),
                                CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => ty = v.first().copied(),
                                CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => code = v.first().copied(),
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let proto = proto?;
    let l4 = match (sport, dport, ty) {
        (Some(sport), Some(dport), _) => L4::Ports { sport, dport },
        (_, _, Some(ty)) if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 => {
            L4::Icmp { id: id.unwrap_or(0), ty, code: code.unwrap_or(0) }
        }
        _ => L4::None,
    };
    Some(Tuple { src: src?, dst: dst?, proto, l4 })
}

/// The crate's reading of an entry; `None` for one without both tuples.
#[cfg(test)]
fn parse_entry(attrs: &[ConntrackAttribute]) -> Option<Entry> {
    let (mut orig, mut reply, mut zone, mut id) = (None, None, 0, None);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = parse_tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = parse_tuple(t),
            ConntrackAttribute::Other(nla) => {
                let v = value(nla);
                match nla.kind() & NLA_TYPE_MASK {
                    CTA_ZONE => zone = be16(&v).unwrap_or(0),
                    CTA_ID => id = v.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Some(Entry { orig: orig?, reply: reply?, zone, id })
}

/// An entry straight from a dump message's payload (nfgenmsg, then the
/// attributes), reading only the tuples, the id and the zone: what
/// [`parse_entry`] reads through the crate's types, without an allocation
/// (tested to agree with it). `None` for a message without both tuples.
fn decode_entry(payload: &[u8]) -> Option<Entry> {
    let (mut orig, mut reply, mut zone, mut id) = (None, None, 0, None);
    for nla in NlasIterator::new(payload.get(4..)?) {
        let nla = nla.ok()?;
        match nla.kind() {
            CTA_TUPLE_ORIG => orig = decode_tuple(nla.value()),
            CTA_TUPLE_REPLY => reply = decode_tuple(nla.value()),
            CTA_ZONE => zone = be16(nla.value()).unwrap_or(0),
            CTA_ID => id = nla.value().get(..4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
            _ => {}
        }
    }
    Some(Entry { orig: orig?, reply: reply?, zone, id })
}

fn decode_tuple(v: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut sport, mut dport) = (None, None);
    let (mut id, mut ty, mut code) = (None, None, None);
    for nla in NlasIterator::new(v) {
        let nla = nla.ok()?;
        match nla.kind() {
            CTA_TUPLE_IP => {
                for a in NlasIterator::new(nla.value()) {
                    let a = a.ok()?;
                    let ip = netlink_packet_core::parse_ip(a.value()).ok();
                    match a.kind() {
                        1 | 3 => src = ip, // CTA_IP_V4_SRC, CTA_IP_V6_SRC
                        2 | 4 => dst = ip, // CTA_IP_V4_DST, CTA_IP_V6_DST
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in NlasIterator::new(nla.value()) {
                    let a = a.ok()?;
                    let v = a.value();
                    match a.kind() {
                        CTA_PROTO_NUM => proto = v.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = be16(v),
                        CTA_PROTO_DST_PORT => dport = be16(v),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => id = be16(v),
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => ty = v.first().copied(),
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => code = v.first().copied(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let proto = proto?;
    let l4 = match (sport, dport, ty) {
        (Some(sport), Some(dport), _) => L4::Ports { sport, dport },
        (_, _, Some(ty)) if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 => L4::Icmp { id: id.unwrap_or(0), ty, code: code.unwrap_or(0) },
        _ => L4::None,
    };
    Some(Tuple { src: src?, dst: dst?, proto, l4 })
}

/// The one rtnetlink exchange we need: RTM_GETADDR for every family, and
/// the address each RTM_NEWADDR answer carries (IFA_LOCAL, or IFA_ADDRESS
/// when there is no IFA_LOCAL: IPv6 and point-to-point links differ there).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AddrMessage {
    Request,
    Addr(Option<IpAddr>),
    Other,
}

/// `struct ifaddrmsg`: family, prefix length, flags, scope, interface index.
const IFADDRMSG_LEN: usize = 8;

impl NetlinkSerializable for AddrMessage {
    fn message_type(&self) -> u16 {
        RTM_GETADDR
    }
    fn buffer_len(&self) -> usize {
        IFADDRMSG_LEN
    }
    fn serialize(&self, buffer: &mut [u8]) {
        // AF_UNSPEC, and zeros: every address of every interface.
        buffer[..IFADDRMSG_LEN].fill(0);
    }
}

impl NetlinkDeserializable for AddrMessage {
    type Error = DecodeError;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        if header.message_type != RTM_NEWADDR {
            return Ok(AddrMessage::Other);
        }
        let attrs = payload.get(IFADDRMSG_LEN..).ok_or_else(|| DecodeError::buffer_too_small(payload.len(), IFADDRMSG_LEN))?;
        let (mut local, mut address) = (None, None);
        for nla in NlasIterator::new(attrs) {
            let nla = nla?;
            let ip = || netlink_packet_core::parse_ip(nla.value()).ok();
            match nla.kind() & NLA_TYPE_MASK {
                IFA_LOCAL => local = ip(),
                IFA_ADDRESS => address = ip(),
                _ => {}
            }
        }
        Ok(AddrMessage::Addr(local.or(address)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// An entry survives its trip through the crate's encoder and parser,
    /// as a dump would bring it back.
    #[test]
    fn entries_round_trip() {
        let check = |e: Entry| {
            let m = new_message(&Entry { id: None, ..e }, 30);
            let bytes = serialize(request(family(&e.orig.src), m), NLM_F_REQUEST, 1);
            let back = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).unwrap();
            let NetlinkPayload::InnerMessage(NetfilterMessage { inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)), header, .. }) = back.payload else {
                panic!("{back:?}")
            };
            assert_eq!(header.family, family(&e.orig.src));
            let mut attrs = attrs;
            if let Some(id) = e.id {
                attrs.push(ConntrackAttribute::Other(DefaultNla::new(CTA_ID, id.to_be_bytes().to_vec())));
            }
            assert_eq!(parse_entry(&attrs), Some(e));
            // The dump's decoder agrees with the crate's parser, on the same bytes.
            let bytes = serialize(request(family(&e.orig.src), ConntrackMessage::New(attrs)), NLM_F_REQUEST, 1);
            let msg = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
            assert_eq!(msg.message_type(), CT_NEW);
            assert_eq!(decode_entry(msg.payload()), Some(e));
        };
        check(Entry::new(Tuple::ports(IPPROTO_TCP, ip("10.0.0.1"), 40000, ip("10.96.0.10"), 80)).dnat(ip("10.0.0.2"), 8080));
        check(Entry { zone: 7, id: Some(0xdead_beef), ..Entry::new(Tuple::ports(17, ip("fd00::1"), 5353, ip("fd00::2"), 53)) });
        check(Entry::new(Tuple { src: ip("10.0.0.1"), dst: ip("10.0.0.2"), proto: IPPROTO_ICMP, l4: L4::Icmp { id: 0x1234, ty: 8, code: 0 } }));
        check(Entry::new(Tuple { src: ip("fd00::1"), dst: ip("fd00::2"), proto: IPPROTO_ICMPV6, l4: L4::Icmp { id: 9, ty: 128, code: 0 } }));
        check(Entry::new(Tuple { src: ip("10.0.0.1"), dst: ip("10.0.0.2"), proto: 47, l4: L4::None }).snat(ip("172.18.0.2")));
    }

    /// The delete request, byte for byte as ctnetlink expects it
    /// (nfnetlink_conntrack.h): nlmsghdr, nfgenmsg, then the nested tuple.
    #[test]
    fn delete_request_bytes() {
        let mut e = Entry::new(Tuple::ports(IPPROTO_TCP, ip("10.0.0.1"), 0x9c40, ip("10.0.0.2"), 80));
        e.id = Some(0x0102_0304);
        let bytes = serialize(request(family(&e.orig.src), delete_message(&e)), NLM_F_REQUEST | NLM_F_ACK, 9);
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            // nlmsghdr: length 80, type (CTNETLINK << 8) | DELETE, flags REQUEST|ACK, seq 9, port 0
            80, 0, 0, 0,  0x02, 0x01,  0x05, 0,  9, 0, 0, 0,  0, 0, 0, 0,
            // nfgenmsg: AF_INET, version 0, res_id 0
            2, 0, 0, 0,
            // CTA_TUPLE_ORIG (nested), 52 bytes
            52, 0, 0x01, 0x80,
              // CTA_TUPLE_IP (nested): CTA_IP_V4_SRC, CTA_IP_V4_DST
              20, 0, 0x01, 0x80,  8, 0, 1, 0, 10, 0, 0, 1,  8, 0, 2, 0, 10, 0, 0, 2,
              // CTA_TUPLE_PROTO (nested): num 6, sport 40000, dport 80 (big endian), each padded to 8
              28, 0, 0x02, 0x80,  5, 0, 1, 0, 6, 0, 0, 0,  6, 0, 2, 0, 0x9c, 0x40, 0, 0,  6, 0, 3, 0, 0, 80, 0, 0,
            // CTA_ID, big endian
            8, 0, 12, 0,  1, 2, 3, 4,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut buf = Vec::new();
        for seq in 1..=3 {
            buf.extend(serialize(request(NetfilterProtoFamily::IPv4, ConntrackMessage::Get(vec![])), NLM_F_REQUEST, seq));
        }
        let seqs: Vec<u32> = messages::<NetfilterMessage>(&buf).map(|m| m.unwrap().header.sequence_number).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(messages::<NetfilterMessage>(&buf[..10]).next().unwrap().is_err(), "a truncated datagram is an error");
    }

    #[test]
    fn address_answers() {
        // RTM_NEWADDR for 10.244.1.1/24 with IFA_ADDRESS and IFA_LOCAL, then one for fd00::1 with IFA_ADDRESS only.
        let newaddr = |family: u8, attrs: &[(u16, &[u8])]| {
            let mut payload = vec![family, 24, 0, 0, 1, 0, 0, 0];
            for (kind, v) in attrs {
                let len = 4 + v.len();
                payload.extend((len as u16).to_ne_bytes());
                payload.extend(kind.to_ne_bytes());
                payload.extend(*v);
                payload.resize(payload.len().next_multiple_of(4), 0);
            }
            let mut h = NetlinkHeader::default();
            h.message_type = RTM_NEWADDR;
            AddrMessage::deserialize(&h, &payload).unwrap()
        };
        let v6 = "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        assert_eq!(newaddr(2, &[(IFA_ADDRESS, &[10, 244, 1, 255]), (IFA_LOCAL, &[10, 244, 1, 1])]), AddrMessage::Addr(Some(ip("10.244.1.1"))));
        assert_eq!(newaddr(10, &[(IFA_ADDRESS, &v6)]), AddrMessage::Addr(Some(ip("fd00::1"))));
        // The request: nlmsghdr and a zeroed ifaddrmsg (AF_UNSPEC).
        let request = serialize_route(AddrMessage::Request, NLM_F_REQUEST | NLM_F_DUMP, 5);
        assert_eq!(request.len(), 24);
        assert_eq!(&request[4..8], &[RTM_GETADDR.to_ne_bytes(), (NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes()].concat()[..]);
        assert_eq!(&request[16..], &[0; 8]);
    }

    #[test]
    fn answers_are_counted() {
        let d = tally(&[0, 0, -libc::ENOENT, -libc::EPERM, -libc::EBUSY], "delete");
        assert_eq!((d.deleted, d.missing, d.failed), (2, 1, 2));
        assert_eq!(d.first_error.as_deref(), Some("delete: Operation not permitted (os error 1)"));
    }
}
