//! Forged packets: what an attacker with `CAP_NET_RAW` in a pod, on a node or
//! outside the cluster can put on the wire, for the adversarial suite
//! (tests/adversarial.rs), which sends them with [`super::raw`] and checks
//! that none crosses a policy that denies it.
//!
//! Every attack is one [`Kind`] of packet (TCP with any flag set, SCTP
//! chunks, ICMP and ICMPv6 types, fragments, IPv4 options, IPv6 extension
//! headers, other protocols) built for one [`Shot`]: addresses (the source
//! may be spoofed), ports and an id. Each carries its id as a [`Marker`]
//! in its payload, repeated at every 8-byte-aligned offset of the transport
//! payload: fragment boundaries are multiples of 8 bytes, also when a
//! router reassembles and fragments again, so every fragment with payload
//! holds a whole copy, and a capture can tell which attack arrived.
//!
//! [`Kind::when_allowed`] says what a policy that allows the flow must let
//! through: the packet itself when it opens a flow, otherwise (a segment of
//! no connection, an error about no flow, a fragment that never completes)
//! a legitimate [`Counterpart`] that a stateful filter lets through.
//!
//! Pure: bytes in, bytes out. Headers are etherparse's, so that field
//! layouts and checksums are a well-tested library's, not ours; SCTP is
//! [`super::sctp`]'s.

use std::fmt;
use std::net::IpAddr;

use etherparse::checksum::Sum16BitWords;
use etherparse::{
    IpFragOffset, IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header, TcpHeader, UdpHeader,
};

use super::sctp;
use crate::model::Family;

/// The bytes that tell a captured packet's attack: a fixed prefix and the
/// attack's id.
pub type Marker = [u8; 8];

pub fn marker(id: u32) -> Marker {
    let id = id.to_be_bytes();
    [0xa7, 0x7a, b'n', b'f', id[0], id[1], id[2], id[3]]
}

/// Whether `bytes` hold `marker` anywhere.
pub fn contains(bytes: &[u8], marker: &Marker) -> bool {
    bytes.windows(marker.len()).any(|w| w == marker)
}

/// TCP flags, as in the header's 13th byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}
use flags::*;

/// IP protocol 253, reserved for experiments (RFC 3692): a protocol no
/// policy names and no kernel handles.
pub const EXPERIMENTAL: u8 = 253;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DESTINATION_OPTIONS: u8 = 60;
/// Copies of the marker in a payload.
const COPIES: usize = 4;
const TTL: u8 = 64;
/// Neighbour discovery is sent with hop limit 255 (RFC 4861), so that a
/// receiver can tell it never crossed a router.
const ND_HOP_LIMIT: u8 = 255;

/// Fragments of a UDP datagram (IPv4 fragmentation, or IPv6's fragment
/// header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// The first fragment alone: it names the ports, the rest never comes.
    First,
    /// A later fragment alone: no ports, nothing to judge it by.
    Later,
    /// First and later fragment: a whole datagram.
    Complete,
    /// A first fragment to the open port (a decoy, no marker), then a later
    /// one overlapping it that carries the payload.
    Overlapping,
    /// IPv6 only: a fragment header with offset 0 and no more fragments
    /// (RFC 6946), the whole datagram in one packet.
    Atomic,
}

/// IPv6 extension headers before the transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    HopByHop,
    DestinationOptions,
    /// Routing header type 0 (deprecated by RFC 5095) with no segment left:
    /// only its final destination processes it, and accepts it.
    Routing0,
    /// Hop-by-hop, destination options, routing type 0 and an atomic
    /// fragment header, in that order.
    Chain,
}

/// What an attack sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP segment with these flags and a payload.
    Tcp(u8),
    Udp,
    /// An SCTP packet of one chunk of this type.
    Sctp(u8),
    /// An ICMP message (ICMPv6 in IPv6) of this type with the body its type
    /// calls for: an error quotes a UDP datagram from the target to the
    /// attacker, neighbour discovery goes with hop limit 255.
    Icmp(u8),
    /// A packet of another IP protocol.
    Protocol(u8),
    Fragments(Frag),
    /// A TCP SYN in two fragments, the first of only 8 bytes: ports, but no
    /// flags.
    TinyFirstFragment,
    /// A UDP datagram with IPv4 options (record route).
    Ipv4Options,
    /// IPv6 extension headers before a UDP datagram.
    Ipv6Ext(Ext),
    /// IPv6 hop-by-hop options before a TCP ACK: flags one header further.
    HopByHopAck,
}

/// What must arrive when policy allows the flow an attack belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAllowed {
    /// The attack itself: it is a flow's first packet.
    Arrives,
    /// A stateful filter may drop the attack even then (it opens nothing or
    /// belongs to no flow); this must arrive instead, proving that the
    /// silence of the denied run is the policy's.
    Instead(Counterpart),
}

/// Legitimate traffic that stands in for an attack a stateful filter drops
/// even when policy allows its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counterpart {
    /// A real TCP connection from the attacker to the attacked port,
    /// carrying the marker as data.
    TcpConnection,
    /// The ICMP error the attacker's kernel sends back for a UDP datagram
    /// the target sent to a closed port: related to that flow.
    IcmpErrorOfFlow,
    /// The attacker's echo reply to a ping from the target.
    EchoReplyOfPing,
    /// Another attack of the catalogue that opens a flow of the same
    /// protocol.
    Attack(Kind),
}

/// Addresses, ports and id of one packet to forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shot {
    /// The source written into the header: the attacker's, or the one it
    /// claims.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    /// The attacked port.
    pub dport: u16,
    /// A port that a policy may allow while it denies `dport`: the decoy
    /// first fragment of [`Frag::Overlapping`] names it.
    pub open_port: u16,
    /// The attack's id: its marker, and the IP identification, fragment id,
    /// ICMP id, SCTP tag and sequence numbers derived from it.
    pub id: u32,
}

impl Shot {
    pub fn marker(&self) -> Marker {
        marker(self.id)
    }

    fn family(&self) -> Family {
        Family::of(&self.src)
    }
}

/// Every attack that exists in `family`, in a fixed order.
pub fn catalogue(family: Family) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = [
        SYN,
        SYN | ECE | CWR,
        ACK,
        PSH | ACK,
        RST,
        RST | ACK,
        FIN,
        FIN | ACK,
        SYN | ACK,
        0,
        SYN | FIN,
        SYN | RST,
        FIN | PSH | URG,
        0xff,
        URG,
    ]
    .into_iter()
    .map(Kind::Tcp)
    .collect();
    kinds.push(Kind::Udp);
    kinds.extend(
        [
            sctp::INIT,
            sctp::DATA,
            sctp::INIT_ACK,
            sctp::HEARTBEAT,
            sctp::ABORT,
            sctp::SHUTDOWN,
            sctp::SHUTDOWN_ACK,
            sctp::ERROR,
            sctp::COOKIE_ECHO,
            sctp::COOKIE_ACK,
            sctp::SHUTDOWN_COMPLETE,
        ]
        .map(Kind::Sctp),
    );
    let icmp: &[u8] = match family {
        // echo reply, unreachable, source quench, redirect, echo request,
        // router advertisement, time exceeded, parameter problem, timestamp,
        // unassigned
        Family::IPv4 => &[0, 3, 4, 5, 8, 9, 11, 12, 13, 42],
        // unreachable, too big, time exceeded, parameter problem, echo
        // request and reply, router solicitation and advertisement,
        // neighbour solicitation and advertisement, redirect, MLDv2 report,
        // private experimentation
        Family::IPv6 => &[1, 2, 3, 4, 128, 129, 133, 134, 135, 136, 137, 143, 200],
    };
    kinds.extend(icmp.iter().map(|&t| Kind::Icmp(t)));
    kinds.push(Kind::Protocol(EXPERIMENTAL));
    kinds.extend([Frag::First, Frag::Later, Frag::Complete, Frag::Overlapping].map(Kind::Fragments));
    kinds.push(Kind::TinyFirstFragment);
    match family {
        Family::IPv4 => kinds.push(Kind::Ipv4Options),
        Family::IPv6 => {
            kinds.push(Kind::Fragments(Frag::Atomic));
            kinds.extend([Ext::HopByHop, Ext::DestinationOptions, Ext::Routing0, Ext::Chain].map(Kind::Ipv6Ext));
            kinds.push(Kind::HopByHopAck);
        }
    }
    kinds
}

impl Kind {
    /// The IP protocol of the flow this attack claims to belong to.
    pub fn protocol(&self, family: Family) -> u8 {
        match self {
            Kind::Tcp(_) | Kind::TinyFirstFragment | Kind::HopByHopAck => TCP,
            Kind::Udp | Kind::Fragments(_) | Kind::Ipv4Options | Kind::Ipv6Ext(_) => UDP,
            Kind::Sctp(_) => SCTP,
            Kind::Icmp(_) => icmp_protocol(family),
            Kind::Protocol(p) => *p,
        }
    }

    /// What must arrive when policy allows the attack's flow.
    pub fn when_allowed(&self, family: Family) -> WhenAllowed {
        use Counterpart::*;
        use WhenAllowed::*;
        let echo_request = Kind::Icmp(echo_request(family));
        match *self {
            // A SYN opens a connection whatever else it says about
            // congestion; one with FIN or RST opens nothing.
            Kind::Tcp(f) if f & !(ECE | CWR | PSH) == SYN => Arrives,
            Kind::Tcp(_) | Kind::HopByHopAck => Instead(TcpConnection),
            // RFC 7112: an IPv6 first fragment must hold the whole header
            // chain, transport header included; reassembly (conntrack's
            // and the kernel's) discards one that does not.
            Kind::TinyFirstFragment if family == Family::IPv6 => Instead(TcpConnection),
            Kind::Udp | Kind::Protocol(_) | Kind::Ipv4Options | Kind::Ipv6Ext(_) | Kind::TinyFirstFragment => Arrives,
            Kind::Sctp(sctp::INIT) => Arrives,
            Kind::Sctp(_) => Instead(Attack(Kind::Sctp(sctp::INIT))),
            Kind::Fragments(Frag::Complete | Frag::Atomic) => Arrives,
            Kind::Fragments(_) => Instead(Attack(Kind::Fragments(Frag::Complete))),
            Kind::Icmp(t) => match icmp_class(family, t) {
                IcmpClass::Request => Arrives,
                IcmpClass::EchoReply => Instead(EchoReplyOfPing),
                IcmpClass::Error => Instead(IcmpErrorOfFlow),
                IcmpClass::Other => Instead(Attack(echo_request)),
            },
        }
    }

    /// The IP datagrams to send, in order, with their IP headers: what a
    /// raw socket with `IP_HDRINCL` (or IPv6's `IPPROTO_RAW`) puts on the
    /// wire as it is.
    pub fn build(&self, shot: &Shot) -> Vec<Vec<u8>> {
        let family = shot.family();
        let m = shot.marker();
        let ip = |proto, l4: &[u8]| datagram(shot, &[], proto, l4, None);
        match *self {
            Kind::Tcp(f) => vec![ip(TCP, &tcp(shot, f, &marked(&m, 20)))],
            Kind::Udp => vec![ip(UDP, &udp(shot, shot.dport, &marked(&m, 8)))],
            Kind::Sctp(chunk) => vec![ip(SCTP, &sctp_packet(shot, chunk))],
            Kind::Icmp(t) => {
                let hop_limit = if family == Family::IPv6 && (133..=137).contains(&t) { ND_HOP_LIMIT } else { TTL };
                vec![datagram(shot, &[], icmp_protocol(family), &icmp_message(shot, t), Some(hop_limit))]
            }
            Kind::Protocol(p) => vec![ip(p, &marked(&m, 0))],
            Kind::Fragments(frag) => fragments(shot, frag),
            Kind::TinyFirstFragment => {
                let segment = tcp(shot, SYN, &marked(&m, 20));
                split(shot, TCP, &[(0, &segment[..8]), (8, &segment[8..])])
            }
            Kind::Ipv4Options => {
                // Record route with room for two addresses, then end of
                // options: 12 bytes, a multiple of 4 as the header needs.
                let options = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                vec![ipv4(shot, UDP, &options, 0, false, &udp(shot, shot.dport, &marked(&m, 8)))]
            }
            Kind::Ipv6Ext(ext) => {
                let headers: &[Header] = match ext {
                    Ext::HopByHop => &[Header::HopByHop],
                    Ext::DestinationOptions => &[Header::DestinationOptions],
                    Ext::Routing0 => &[Header::Routing0],
                    Ext::Chain => &[
                        Header::HopByHop,
                        Header::DestinationOptions,
                        Header::Routing0,
                        Header::Fragment { offset: 0, more: false },
                    ],
                };
                vec![datagram(shot, headers, UDP, &udp(shot, shot.dport, &marked(&m, 8)), None)]
            }
            Kind::HopByHopAck => vec![datagram(shot, &[Header::HopByHop], TCP, &tcp(shot, ACK, &marked(&m, 20)), None)],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Tcp(0) => write!(f, "TCP no flags"),
            Kind::Tcp(bits) => {
                let names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
                let set: Vec<&str> = (0..8).filter(|i| bits & (1 << i) != 0).map(|i| names[i]).collect();
                write!(f, "TCP {}", set.join("+"))
            }
            Kind::Udp => write!(f, "UDP"),
            Kind::Sctp(c) => write!(f, "SCTP {}", sctp_name(*c)),
            Kind::Icmp(t) => write!(f, "ICMP type {t}"),
            Kind::Protocol(p) => write!(f, "IP protocol {p}"),
            Kind::Fragments(frag) => write!(f, "fragments: {frag:?}"),
            Kind::TinyFirstFragment => write!(f, "TCP SYN, 8-byte first fragment"),
            Kind::Ipv4Options => write!(f, "UDP with IPv4 options"),
            Kind::Ipv6Ext(ext) => write!(f, "UDP after extension headers: {ext:?}"),
            Kind::HopByHopAck => write!(f, "TCP ACK after hop-by-hop options"),
        }
    }
}

/// A UDP datagram from the target to a closed port of the attacker (9,
/// discard): its ICMP error is [`Counterpart::IcmpErrorOfFlow`]. `shot`
/// is seen from the target (`src` the target).
pub fn udp_to_closed_port(shot: &Shot) -> Vec<u8> {
    datagram(shot, &[], UDP, &udp(shot, 9, &marked(&shot.marker(), 8)), None)
}

/// An echo request from the target to the attacker: its reply is
/// [`Counterpart::EchoReplyOfPing`].
pub fn echo_request_datagram(shot: &Shot) -> Vec<u8> {
    Kind::Icmp(echo_request(shot.family())).build(shot).remove(0)
}

fn echo_request(family: Family) -> u8 {
    match family {
        Family::IPv4 => 8,
        Family::IPv6 => 128,
    }
}

fn icmp_protocol(family: Family) -> u8 {
    match family {
        Family::IPv4 => ICMP,
        Family::IPv6 => ICMPV6,
    }
}

enum IcmpClass {
    /// Opens a flow (conntrack's `valid_new`): echo, timestamp.
    Request,
    EchoReply,
    /// Carries a packet it is about.
    Error,
    Other,
}

fn icmp_class(family: Family, t: u8) -> IcmpClass {
    match (family, t) {
        (Family::IPv4, 8 | 13) | (Family::IPv6, 128) => IcmpClass::Request,
        (Family::IPv4, 0) | (Family::IPv6, 129) => IcmpClass::EchoReply,
        (Family::IPv4, 3 | 4 | 5 | 11 | 12) | (Family::IPv6, 1..=4) => IcmpClass::Error,
        _ => IcmpClass::Other,
    }
}

fn sctp_name(chunk: u8) -> String {
    match chunk {
        sctp::DATA => "DATA".into(),
        sctp::INIT => "INIT".into(),
        sctp::INIT_ACK => "INIT ACK".into(),
        sctp::HEARTBEAT => "HEARTBEAT".into(),
        sctp::ABORT => "ABORT".into(),
        sctp::SHUTDOWN => "SHUTDOWN".into(),
        sctp::SHUTDOWN_ACK => "SHUTDOWN ACK".into(),
        sctp::ERROR => "ERROR".into(),
        sctp::COOKIE_ECHO => "COOKIE ECHO".into(),
        sctp::COOKIE_ACK => "COOKIE ACK".into(),
        sctp::SHUTDOWN_COMPLETE => "SHUTDOWN COMPLETE".into(),
        c => format!("chunk {c}"),
    }
}

/// A payload after a transport header of `header_len` bytes: zeros up to
/// the next multiple of 8, then [`COPIES`] markers.
fn marked(m: &Marker, header_len: usize) -> Vec<u8> {
    let mut p = vec![0; header_len.next_multiple_of(8) - header_len];
    for _ in 0..COPIES {
        p.extend_from_slice(m);
    }
    p
}

fn tcp(shot: &Shot, bits: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = TcpHeader::new(shot.sport, shot.dport, shot.id.wrapping_mul(2_654_435_761), 64240);
    h.fin = bits & FIN != 0;
    h.syn = bits & SYN != 0;
    h.rst = bits & RST != 0;
    h.psh = bits & PSH != 0;
    h.ack = bits & ACK != 0;
    h.urg = bits & URG != 0;
    h.ece = bits & ECE != 0;
    h.cwr = bits & CWR != 0;
    if h.ack {
        h.acknowledgment_number = shot.id.wrapping_mul(40_503);
    }
    h.checksum = match (shot.src, shot.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
        _ => unreachable!("a shot's addresses share a family"),
    }
    .expect("a small segment");
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn udp(shot: &Shot, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("a small datagram");
    let mut h = UdpHeader { source_port: shot.sport, destination_port: dport, length: len, checksum: 0 };
    h.checksum = match (shot.src, shot.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
        _ => unreachable!("a shot's addresses share a family"),
    }
    .expect("a small datagram");
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// One chunk of `chunk`'s type with a value shaped like that type's, the
/// marker inside. The INIT alone carries verification tag 0, as it must.
fn sctp_packet(shot: &Shot, chunk: u8) -> Vec<u8> {
    let m = shot.marker();
    let tag = shot.id | 1;
    // An unrecognised parameter whose type says "skip it" (RFC 9260 3.2.1).
    let mut marker_param = vec![0x80, 0x42, 0, 4 + 8 * COPIES as u8];
    marker_param.extend(marked(&m, 0));
    let (vtag, value) = match chunk {
        sctp::INIT => (0, sctp::init_body(tag, &marker_param)),
        sctp::INIT_ACK => {
            // The mandatory state cookie holds the marker.
            let mut cookie = vec![0, 7, 0, 4 + 8 * COPIES as u8];
            cookie.extend(marked(&m, 0));
            (tag, sctp::init_body(tag, &cookie))
        }
        sctp::DATA => {
            // TSN, stream, stream sequence number, payload protocol id.
            let mut v = tag.to_be_bytes().to_vec();
            v.extend_from_slice(&[0; 8]);
            v.extend(marked(&m, 0));
            (tag, v)
        }
        // Heartbeat information parameter.
        sctp::HEARTBEAT => (tag, [&[0, 1, 0, 4 + 8 * COPIES as u8][..], &marked(&m, 0)].concat()),
        sctp::SHUTDOWN => (tag, [&tag.to_be_bytes()[..], &marked(&m, 0)].concat()),
        _ => (tag, marked(&m, 0)),
    };
    sctp::chunk(shot.sport, shot.dport, vtag, chunk, 0, &value)
}

/// An ICMP or ICMPv6 message of type `t`: header, then a body shaped like
/// that type's (errors quote a datagram from the target to the attacker),
/// the marker in it.
fn icmp_message(shot: &Shot, t: u8) -> Vec<u8> {
    let m = shot.marker();
    let family = shot.family();
    let id = (shot.id as u16).to_be_bytes();
    let seq = ((shot.id >> 16) as u16).to_be_bytes();
    let mut rest = [0u8; 4];
    let body = match icmp_class(family, t) {
        IcmpClass::Request | IcmpClass::EchoReply => {
            rest = [id[0], id[1], seq[0], seq[1]];
            marked(&m, 8)
        }
        IcmpClass::Error => {
            match (family, t) {
                // The gateway to use instead: the attacker.
                (Family::IPv4, 5) => {
                    if let IpAddr::V4(a) = shot.src {
                        rest = a.octets();
                    }
                }
                // The pointer to the faulty byte.
                (Family::IPv4, 12) => rest[0] = 8,
                (Family::IPv6, 4) => rest[3] = 8,
                // The MTU of the next hop.
                (Family::IPv6, 2) => rest = 1280u32.to_be_bytes(),
                _ => {}
            }
            let reversed = Shot { src: shot.dst, dst: shot.src, sport: shot.dport, dport: shot.sport, ..*shot };
            datagram(&reversed, &[], UDP, &udp(&reversed, shot.sport, &marked(&m, 8)), None)
        }
        IcmpClass::Other => match (family, t) {
            // Router advertisement: addresses, entry size, lifetime.
            (Family::IPv4, 9) => {
                rest = [1, 2, 0, 30];
                marked(&m, 8)
            }
            // Router advertisement: reachable time and retransmit timer.
            (Family::IPv6, 134) => [&[0u8; 8][..], &marked(&m, 0)].concat(),
            // Neighbour solicitation and advertisement: target address.
            (Family::IPv6, 135 | 136) => [&ip_octets(shot.dst)[..], &marked(&m, 0)].concat(),
            // Redirect: target and destination.
            (Family::IPv6, 137) => [&ip_octets(shot.dst)[..], &ip_octets(shot.dst), &marked(&m, 0)].concat(),
            _ => marked(&m, 8),
        },
    };
    let code = match (family, t) {
        (Family::IPv4, 3) => 3,     // port unreachable
        (Family::IPv6, 1) => 4,     // port unreachable
        (Family::IPv4, 5) => 1,     // redirect for the host
        _ => 0,
    };
    let mut msg = vec![t, code, 0, 0];
    msg.extend_from_slice(&rest);
    msg.extend(body);
    let sum = match (shot.src, shot.dst) {
        (IpAddr::V4(_), _) => Sum16BitWords::new().add_slice(&msg),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // After the IPv6 pseudo-header (RFC 4443 2.3).
            let len = u32::try_from(msg.len()).expect("a small message");
            Sum16BitWords::new()
                .add_16bytes(s.octets())
                .add_16bytes(d.octets())
                .add_4bytes(len.to_be_bytes())
                .add_4bytes([0, 0, 0, ICMPV6])
                .add_slice(&msg)
        }
        _ => unreachable!("a shot's addresses share a family"),
    };
    msg[2..4].copy_from_slice(&checksum_bytes(sum));
    msg
}

/// The checksum field's bytes for a sum over the packet's bytes:
/// etherparse adds 16-bit words in native byte order, so its result goes
/// back in native order.
fn checksum_bytes(sum: Sum16BitWords) -> [u8; 2] {
    sum.ones_complement().to_ne_bytes()
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A UDP datagram to the attacked port, as fragments.
fn fragments(shot: &Shot, frag: Frag) -> Vec<Vec<u8>> {
    let m = shot.marker();
    // 8 bytes of header, 32 of markers: fragments at 16 carry two, the
    // first (header and one marker) one.
    let whole = udp(shot, shot.dport, &marked(&m, 8));
    match frag {
        Frag::First => split(shot, UDP, &[(0, &whole[..16])]),
        Frag::Later => split(shot, UDP, &[(16, &whole[16..])]),
        Frag::Complete => split(shot, UDP, &[(0, &whole[..16]), (16, &whole[16..])]),
        Frag::Overlapping => {
            let mut decoy = udp(shot, shot.open_port, &[0; 8]);
            decoy.truncate(16);
            split(shot, UDP, &[(0, &decoy), (8, &whole[8..])])
        }
        Frag::Atomic => vec![datagram(shot, &[Header::Fragment { offset: 0, more: false }], UDP, &whole, None)],
    }
}

/// Datagrams carrying `pieces` (byte offset, bytes) of one transport
/// packet as fragments; the last piece has "more fragments" clear.
fn split(shot: &Shot, proto: u8, pieces: &[(usize, &[u8])]) -> Vec<Vec<u8>> {
    pieces
        .iter()
        .enumerate()
        .map(|(i, &(offset, bytes))| {
            let more = i + 1 < pieces.len() || pieces.len() == 1 && offset == 0;
            let units = u16::try_from(offset / 8).expect("offsets are small multiples of 8");
            match shot.family() {
                Family::IPv4 => ipv4(shot, proto, &[], units, more, bytes),
                Family::IPv6 => datagram(shot, &[Header::Fragment { offset: units, more }], proto, bytes, None),
            }
        })
        .collect()
}

/// An IPv6 extension header.
#[derive(Debug, Clone, Copy)]
enum Header {
    /// With one PadN option filling it to 8 bytes.
    HopByHop,
    DestinationOptions,
    /// Type 0, no segment left, the source as the one address.
    Routing0,
    /// Offset in 8-byte units.
    Fragment { offset: u16, more: bool },
}

impl Header {
    fn number(&self) -> u8 {
        match self {
            Header::HopByHop => HOP_BY_HOP,
            Header::DestinationOptions => DESTINATION_OPTIONS,
            Header::Routing0 => ROUTING,
            Header::Fragment { .. } => FRAGMENT,
        }
    }

    fn encode(&self, shot: &Shot, next: u8) -> Vec<u8> {
        match *self {
            // PadN with 4 bytes of padding fills the 6 bytes after the
            // first two.
            Header::HopByHop | Header::DestinationOptions => vec![next, 0, 1, 4, 0, 0, 0, 0],
            Header::Routing0 => [&[next, 2, 0, 0, 0, 0, 0, 0][..], &ip_octets(shot.src)].concat(),
            Header::Fragment { offset, more } => {
                let offset = IpFragOffset::try_new(offset).expect("a small offset");
                Ipv6FragmentHeader::new(IpNumber(next), offset, more, shot.id).to_bytes().to_vec()
            }
        }
    }
}

/// One unfragmented IP datagram carrying `payload` of protocol `proto`;
/// IPv6 puts `headers` between (IPv4 has none). `hop_limit`: the TTL or
/// hop limit, [`TTL`] if `None`.
fn datagram(shot: &Shot, headers: &[Header], proto: u8, payload: &[u8], hop_limit: Option<u8>) -> Vec<u8> {
    match (shot.src, shot.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let mut d = ipv4(shot, proto, &[], 0, false, payload);
            d[8] = hop_limit.unwrap_or(TTL);
            let sum = Sum16BitWords::new().add_slice(&d[..10]).add_slice(&d[12..20]);
            d[10..12].copy_from_slice(&checksum_bytes(sum));
            d
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut exts = Vec::new();
            for (i, h) in headers.iter().enumerate() {
                let next = headers.get(i + 1).map_or(proto, Header::number);
                exts.extend(h.encode(shot, next));
            }
            let header = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::try_new(shot.id & 0xf_ffff).expect("20 bits"),
                payload_length: u16::try_from(exts.len() + payload.len()).expect("a small datagram"),
                next_header: IpNumber(headers.first().map_or(proto, Header::number)),
                hop_limit: hop_limit.unwrap_or(TTL),
                source: s.octets(),
                destination: d.octets(),
            };
            [&header.to_bytes()[..], &exts, payload].concat()
        }
        _ => unreachable!("a shot's addresses share a family"),
    }
}

/// An IPv4 datagram (or fragment, at `offset` 8-byte units) with `options`.
fn ipv4(shot: &Shot, proto: u8, options: &[u8], offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (shot.src, shot.dst) else { unreachable!("an IPv4 shot") };
    let len = u16::try_from(payload.len()).expect("a small datagram");
    let mut h = Ipv4Header::new(len, TTL, IpNumber(proto), s.octets(), d.octets()).expect("a small datagram");
    h.options = Ipv4Options::try_from(options).expect("options are a multiple of 4 bytes, at most 40");
    // Never 0, which the kernel would replace with one of its own.
    h.identification = (shot.id as u16) | 0x8000;
    h.dont_fragment = false;
    h.fragment_offset = IpFragOffset::try_new(offset).expect("a small offset");
    h.more_fragments = more;
    h.total_len = u16::try_from(h.header_len() + payload.len()).expect("a small datagram");
    h.header_checksum = h.calc_header_checksum();
    [&h.to_bytes()[..], payload].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071, written out: a second opinion on every checksum.
    fn sum(chunks: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = chunks.concat();
        let mut acc: u32 = bytes.chunks(2).map(|w| u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0))).sum();
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// The transport packet of an unfragmented datagram without extension
    /// headers: (protocol, source, destination, bytes).
    fn parts(d: &[u8]) -> (u8, Vec<u8>, Vec<u8>, &[u8]) {
        match d[0] >> 4 {
            4 => {
                let ihl = usize::from(d[0] & 0xf) * 4;
                assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len(), "total length");
                assert_eq!(sum(&[&d[..ihl]]), 0, "IPv4 header checksum");
                (d[9], d[12..16].to_vec(), d[16..20].to_vec(), &d[ihl..])
            }
            6 => {
                assert_eq!(usize::from(u16::from_be_bytes([d[4], d[5]])), d.len() - 40, "payload length");
                (d[6], d[8..24].to_vec(), d[24..40].to_vec(), &d[40..])
            }
            v => panic!("IP version {v}"),
        }
    }

    /// A transport checksum over the pseudo-header sums to zero.
    fn transport_checksum_ok(d: &[u8]) -> bool {
        let (proto, src, dst, l4) = parts(d);
        let len = (l4.len() as u32).to_be_bytes();
        match (proto, src.len()) {
            // No checksum to check.
            (EXPERIMENTAL, _) => true,
            (ICMP, _) => sum(&[l4]) == 0,
            (SCTP, _) => super::sctp::parse(l4).is_some(),
            (_, 4) => sum(&[&src, &dst, &[0, proto], &len[2..], l4]) == 0,
            _ => sum(&[&src, &dst, &len, &[0, 0, 0, proto], l4]) == 0,
        }
    }

    fn shot(src: &str, dst: &str) -> Shot {
        Shot { src: src.parse().unwrap(), dst: dst.parse().unwrap(), sport: 40000, dport: 81, open_port: 80, id: 0x0102_0304 }
    }

    fn v4() -> Shot {
        shot("10.0.0.1", "10.0.0.2")
    }

    fn v6() -> Shot {
        shot("fd00::1", "fd00::2")
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn markers_fill_aligned_payload() {
        let m = marker(7);
        assert_eq!(hex(&m), "a77a6e6600000007");
        let p = marked(&m, 20);
        assert_eq!(p.len(), 4 + 8 * COPIES);
        assert!((0..COPIES).all(|i| p[4 + 8 * i..12 + 8 * i] == m));
        assert!(contains(&[&[1, 2][..], &m, &[3]].concat(), &m));
        assert!(!contains(&m[1..], &m));
    }

    #[test]
    fn every_unfragmented_attack_has_valid_checksums_and_its_marker() {
        for s in [v4(), v6()] {
            for kind in catalogue(s.family()) {
                let datagrams = kind.build(&s);
                assert!(datagrams.iter().any(|d| contains(d, &s.marker())), "{kind}: no marker");
                let plain = datagrams.len() == 1 && d_is_plain(&datagrams[0]);
                if plain {
                    assert!(transport_checksum_ok(&datagrams[0]), "{kind} {:?}: bad checksum", s.family());
                }
            }
        }
    }

    /// No IPv6 extension header, no IPv4 fragment offset or flag.
    fn d_is_plain(d: &[u8]) -> bool {
        match d[0] >> 4 {
            4 => u16::from_be_bytes([d[6], d[7]]) & 0x3fff == 0,
            _ => ![HOP_BY_HOP, ROUTING, FRAGMENT, DESTINATION_OPTIONS].contains(&d[6]),
        }
    }

    #[test]
    fn tcp_segments_carry_exactly_their_flags() {
        let check = |bits: u8, expected: &str| {
            let d = &Kind::Tcp(bits).build(&v4())[0];
            assert_eq!(d[20 + 13], bits, "{expected}");
            assert_eq!(Kind::Tcp(bits).to_string(), expected);
            // Ports, then data offset 5 words.
            assert_eq!(hex(&d[20..24]), "9c400051");
            assert_eq!(d[20 + 12], 0x50);
        };
        check(SYN, "TCP SYN");
        check(PSH | ACK, "TCP PSH+ACK");
        check(0, "TCP no flags");
        check(0xff, "TCP FIN+SYN+RST+PSH+ACK+URG+ECE+CWR");
    }

    #[test]
    fn ipv4_fragments_reassemble_to_the_datagram() {
        let s = v4();
        let whole = &Kind::Udp.build(&s)[0];
        let frags = Kind::Fragments(Frag::Complete).build(&s);
        let flags_offset = |d: &[u8]| u16::from_be_bytes([d[6], d[7]]);
        assert_eq!(frags.iter().map(|d| flags_offset(d)).collect::<Vec<_>>(), [0x2000, 2]);
        let mut payload = frags[0][20..].to_vec();
        payload.extend_from_slice(&frags[1][20..]);
        assert_eq!(payload, whole[20..]);
        // Both fragments: one id, valid header checksums, a marker each.
        assert!(frags.iter().all(|d| d[4..6] == frags[0][4..6] && sum(&[&d[..20]]) == 0 && contains(d, &s.marker())));
        let first = Kind::Fragments(Frag::First).build(&s);
        assert_eq!((first.len(), flags_offset(&first[0])), (1, 0x2000));
        let overlap = Kind::Fragments(Frag::Overlapping).build(&s);
        assert_eq!(flags_offset(&overlap[1]), 1, "overlaps the first fragment's last 8 bytes");
        assert_eq!(hex(&overlap[0][22..24]), "0050", "the decoy names the open port");
        assert!(!contains(&overlap[0], &s.marker()));
        let tiny = Kind::TinyFirstFragment.build(&s);
        assert_eq!((tiny[0].len(), flags_offset(&tiny[1])), (28, 1));
    }

    #[test]
    fn ipv6_extension_headers_chain_to_the_transport() {
        let s = v6();
        let d = &Kind::Ipv6Ext(Ext::Chain).build(&s)[0];
        // Hop-by-hop → destination options → routing → fragment → UDP.
        assert_eq!(d[6], HOP_BY_HOP);
        assert_eq!((d[40], d[48], d[56], d[56 + 24]), (DESTINATION_OPTIONS, ROUTING, FRAGMENT, UDP));
        assert_eq!(&d[56 + 2..56 + 4], &[0, 0], "routing type 0, no segment left");
        let udp_at = 56 + 24 + 8;
        assert_eq!(d.len() - udp_at, 8 + 8 * COPIES);
        let udp_sum = sum(&[&d[8..24], &d[24..40], &(40u32).to_be_bytes(), &[0, 0, 0, UDP], &d[udp_at..]]);
        assert_eq!(udp_sum, 0);
        let frags = Kind::Fragments(Frag::Complete).build(&s);
        // Fragment headers: UDP next, offsets 0 (more) and 2 units.
        assert_eq!(hex(&frags[0][40..48]), "1100000101020304");
        assert_eq!(hex(&frags[1][40..48]), "1100001001020304");
    }

    #[test]
    fn icmp_errors_quote_a_datagram_from_the_target() {
        let s = v4();
        let d = &Kind::Icmp(3).build(&s)[0];
        assert_eq!((d[20], d[21]), (3, 3));
        let quoted = &d[28..];
        assert_eq!((&quoted[12..16], &quoted[16..20]), (&d[16..20], &d[12..16]));
        assert!(transport_checksum_ok(d));
        let s = v6();
        let na = &Kind::Icmp(136).build(&s)[0];
        assert_eq!((na[7], na[40]), (255, 136), "hop limit 255");
        assert_eq!(&na[48..64], &na[24..40], "target address");
    }

    #[test]
    fn sctp_init_alone_has_tag_zero() {
        let s = v4();
        let init = &Kind::Sctp(sctp::INIT).build(&s)[0][20..];
        let p = sctp::parse(init).unwrap();
        assert_eq!((p.vtag, p.chunk, p.initiate_tag), (0, sctp::INIT, Some(s.id | 1)));
        let data = sctp::parse(&Kind::Sctp(sctp::DATA).build(&s)[0][20..]).unwrap();
        assert_eq!((data.vtag, data.chunk), (s.id | 1, sctp::DATA));
    }

    #[test]
    fn counterparts_are_attacks_that_arrive() {
        for family in [Family::IPv4, Family::IPv6] {
            let kinds = catalogue(family);
            for kind in &kinds {
                if let WhenAllowed::Instead(Counterpart::Attack(other)) = kind.when_allowed(family) {
                    assert!(kinds.contains(&other), "{kind}: {other} is not in the catalogue");
                    assert_eq!(other.when_allowed(family), WhenAllowed::Arrives, "{kind}: {other}");
                }
            }
            let arrives = kinds.iter().filter(|k| k.when_allowed(family) == WhenAllowed::Arrives).count();
            assert!(arrives >= 8, "{family}: {arrives}");
        }
        assert_eq!(Kind::Tcp(SYN | ECE | CWR).when_allowed(Family::IPv4), WhenAllowed::Arrives);
        assert_eq!(Kind::Tcp(SYN | FIN).when_allowed(Family::IPv4), WhenAllowed::Instead(Counterpart::TcpConnection));
        assert_eq!(Kind::Icmp(136).when_allowed(Family::IPv6), WhenAllowed::Instead(Counterpart::Attack(Kind::Icmp(128))));
        assert_eq!(Kind::TinyFirstFragment.when_allowed(Family::IPv4), WhenAllowed::Arrives);
        assert_eq!(Kind::TinyFirstFragment.when_allowed(Family::IPv6), WhenAllowed::Instead(Counterpart::TcpConnection));
    }
}
