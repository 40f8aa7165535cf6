//! Just enough SCTP to prove a path without an SCTP stack.
//!
//! The kernel here has no SCTP sockets, so probes speak the first two steps
//! of the handshake over raw sockets: the client sends an INIT, the server
//! answers with an INIT ACK. Both are valid as conntrack sees them (the INIT
//! carries verification tag 0 and is alone in its packet; the INIT ACK is
//! tagged with the INIT's initiate tag), so a stateful ruleset treats the
//! INIT ACK as a reply of the association, exactly as it would a real one.

use crc::{Crc, CRC_32_ISCSI};

pub const DATA: u8 = 0;
pub const INIT: u8 = 1;
pub const INIT_ACK: u8 = 2;
pub const HEARTBEAT: u8 = 4;
pub const ABORT: u8 = 6;
pub const SHUTDOWN: u8 = 7;
pub const SHUTDOWN_ACK: u8 = 8;
pub const ERROR: u8 = 9;
pub const COOKIE_ECHO: u8 = 10;
pub const COOKIE_ACK: u8 = 11;
pub const SHUTDOWN_COMPLETE: u8 = 14;

/// SCTP's checksum is CRC-32C (RFC 4960 appendix B).
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
const COMMON_HEADER: usize = 12;
/// An INIT or INIT ACK chunk without parameters.
const INIT_CHUNK: usize = 20;
const A_RWND: u32 = 65536;
const STATE_COOKIE: u16 = 7;

/// The parts of an SCTP packet that identify a probe: its ports, its
/// verification tag, and its first chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src_port: u16,
    pub dst_port: u16,
    pub vtag: u32,
    pub chunk: u8,
    /// The initiate tag of an INIT or INIT ACK.
    pub initiate_tag: Option<u32>,
}

/// An INIT from `src_port` to `dst_port` whose initiate tag (and initial
/// TSN) is `tag`, which must not be 0.
pub fn init(src_port: u16, dst_port: u16, tag: u32) -> Vec<u8> {
    packet(src_port, dst_port, 0, INIT, 0, &init_body(tag, &[]))
}

/// An INIT or INIT ACK chunk's value (initiate tag `tag`, one stream each
/// way) followed by `params`, already encoded.
pub fn init_body(tag: u32, params: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + params.len());
    body.extend_from_slice(&tag.to_be_bytes());
    body.extend_from_slice(&A_RWND.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    body.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    body.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    body.extend_from_slice(params);
    body
}

/// A packet of one chunk of any type, with any flags and value (padded to
/// 4 bytes), and a valid checksum: what an attacker forges.
pub fn chunk(src_port: u16, dst_port: u16, vtag: u32, chunk: u8, flags: u8, value: &[u8]) -> Vec<u8> {
    packet(src_port, dst_port, vtag, chunk, flags, value)
}

/// The INIT ACK that answers `init`, announcing our own `tag`. It carries
/// the mandatory State Cookie, whose content nobody reads.
pub fn init_ack(init: &Packet, tag: u32) -> Option<Vec<u8>> {
    let peer_tag = init.initiate_tag.filter(|_| init.chunk == INIT)?;
    let mut cookie = Vec::with_capacity(12);
    cookie.extend_from_slice(&STATE_COOKIE.to_be_bytes());
    cookie.extend_from_slice(&12u16.to_be_bytes());
    cookie.extend_from_slice(&peer_tag.to_be_bytes());
    cookie.extend_from_slice(&tag.to_be_bytes());
    Some(packet(init.dst_port, init.src_port, peer_tag, INIT_ACK, 0, &init_body(tag, &cookie)))
}

/// Parse an SCTP packet (no IP header), rejecting it unless its checksum
/// is right.
pub fn parse(bytes: &[u8]) -> Option<Packet> {
    if bytes.len() < COMMON_HEADER + 4 {
        return None;
    }
    let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let stored = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if stored != checksum(bytes) {
        return None;
    }
    let chunk = bytes[COMMON_HEADER];
    let initiate_tag =
        (matches!(chunk, INIT | INIT_ACK) && bytes.len() >= COMMON_HEADER + INIT_CHUNK).then(|| u32_at(COMMON_HEADER + 4));
    Some(Packet { src_port: u16_at(0), dst_port: u16_at(2), vtag: u32_at(4), chunk, initiate_tag })
}

/// The SCTP payload of an IPv4 packet as a raw IPv4 socket receives it
/// (IPv6 raw sockets deliver the payload alone).
pub fn strip_ipv4_header(bytes: &[u8]) -> Option<&[u8]> {
    let header = usize::from(bytes.first()? & 0x0f) * 4;
    bytes.get(header..).filter(|_| header >= 20)
}

fn packet(src_port: u16, dst_port: u16, vtag: u32, chunk: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(COMMON_HEADER + 8 + body.len());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(chunk);
    p.push(flags);
    let len = u16::try_from(4 + body.len()).expect("chunks here are at most a few hundred bytes");
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(body);
    // The chunk length excludes the padding to 4 bytes (RFC 9260 3.2).
    p.resize(p.len().next_multiple_of(4), 0);
    let sum = checksum(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// CRC-32C of the packet with its checksum field taken as zero. It goes on
/// the wire least significant byte first, as Linux's `sctp_end_cksum` does.
fn checksum(p: &[u8]) -> u32 {
    let mut digest = CRC32C.digest();
    digest.update(&p[..8]);
    digest.update(&[0; 4]);
    digest.update(&p[12..]);
    digest.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn init_matches_an_independent_encoder() {
        // The same INIT as encoded by scapy:
        // SCTP(sport=40000, dport=80, tag=0)/SCTPChunkInit(init_tag=0x01020304,
        //   a_rwnd=65536, n_out_streams=1, n_in_streams=1, init_tsn=0x01020304)
        assert_eq!(
            hex(&init(40000, 80, 0x01020304)),
            "9c400050000000004f71aedc0100001401020304000100000001000101020304"
        );
    }

    #[test]
    fn init_ack_answers_the_init() {
        let i = parse(&init(40000, 80, 7)).unwrap();
        assert_eq!(i, Packet { src_port: 40000, dst_port: 80, vtag: 0, chunk: INIT, initiate_tag: Some(7) });
        let a = parse(&init_ack(&i, 9).unwrap()).unwrap();
        assert_eq!(a, Packet { src_port: 80, dst_port: 40000, vtag: 7, chunk: INIT_ACK, initiate_tag: Some(9) });
        assert_eq!(init_ack(&a, 3), None, "only an INIT is answered");
    }

    #[test]
    fn any_chunk_is_padded_and_checksummed() {
        let p = chunk(1, 2, 0xdeadbeef, DATA, 3, &[9; 5]);
        assert_eq!(p.len(), 12 + 4 + 8);
        assert_eq!(&p[12..16], &[DATA, 3, 0, 9]);
        assert_eq!(parse(&p).map(|p| (p.vtag, p.chunk)), Some((0xdeadbeef, DATA)));
    }

    #[test]
    fn damaged_packets_are_rejected() {
        let mut p = init(1, 2, 3);
        p[20] ^= 1;
        assert_eq!(parse(&p), None);
        assert_eq!(parse(&p[..10]), None);
    }

    #[test]
    fn ipv4_header_is_skipped_by_its_length() {
        let mut v4 = vec![0x46; 24];
        v4.extend_from_slice(&[1, 2]);
        assert_eq!(strip_ipv4_header(&v4), Some(&[1u8, 2][..]));
        assert_eq!(strip_ipv4_header(&[0x41, 0]), None);
        assert_eq!(strip_ipv4_header(&[]), None);
    }
}
