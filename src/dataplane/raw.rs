//! Raw sockets for the adversarial suite: sending forged IP datagrams
//! ([`super::attack`]) as they are, and seeing what reached a namespace.
//!
//! Every socket here must be made by a thread inside the namespace it is
//! for ([`crate::netns::Netns::run`]); it stays there for life, whichever
//! thread reads it later.
//!
//! Where a capture sees packets matters: it must see only what crossed the
//! node's filter.
//! - [`Capture::link`] is a packet socket on an interface: for a pod (or the
//!   outside), whatever its `eth0` receives has left the node through every
//!   postrouting chain. Only frames addressed to this host count
//!   (`PACKET_HOST`): a bridge floods unknown destinations to every port.
//! - [`Capture::local`] is a raw IP socket per protocol: the kernel hands
//!   such sockets a copy of a packet only on local delivery, after every
//!   input hook (`ip_local_deliver_finish`), so on a node it sees what the
//!   node's `input` chains let in. A packet socket there would see frames
//!   before prerouting, i.e. before the filter.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::model::Family;

/// Receive buffer of every capture: generous, so that nothing is lost while
/// attacks are sent before anything is read.
const RECEIVE_BUFFER: usize = 8 << 20;
/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): a packet socket skips what its
/// host sends.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Sends IP datagrams with the headers they already have (`IPPROTO_RAW`
/// implies `IP_HDRINCL` in IPv4 and `IPV6_HDRINCL` in IPv6): any source,
/// any flags, fragments as they are. The kernel routes each by its
/// destination and fills in only IPv4's total length and header checksum.
pub struct Sender {
    v4: Socket,
    v6: Socket,
}

impl Sender {
    /// Call inside the sending namespace.
    pub fn open() -> io::Result<Sender> {
        let raw = |domain| Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)));
        Ok(Sender { v4: raw(Domain::IPV4)?, v6: raw(Domain::IPV6)? })
    }

    pub fn send(&self, datagram: &[u8]) -> io::Result<()> {
        let (socket, dst) = match datagram.first().map(|b| b >> 4) {
            Some(4) if datagram.len() >= 20 => {
                let d: [u8; 4] = datagram[16..20].try_into().map_err(io::Error::other)?;
                (&self.v4, IpAddr::V4(Ipv4Addr::from(d)))
            }
            Some(6) if datagram.len() >= 40 => {
                let d: [u8; 16] = datagram[24..40].try_into().map_err(io::Error::other)?;
                (&self.v6, IpAddr::V6(Ipv6Addr::from(d)))
            }
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an IP datagram")),
        };
        let sent = socket.send_to(datagram, &SockAddr::from(SocketAddr::new(dst, 0)))?;
        if sent != datagram.len() {
            return Err(io::Error::other(format!("sent {sent} of {} bytes", datagram.len())));
        }
        Ok(())
    }
}

/// One packet a capture received.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The packet's source address.
    pub src: IpAddr,
    /// The IP protocol of `l4`: the transport, or the first extension
    /// header a raw IPv6 socket of that protocol was handed.
    pub proto: u8,
    /// From the transport header on (for a fragment past the first, from
    /// wherever it starts).
    pub l4: Vec<u8>,
}

impl Frame {
    /// Source and destination ports of a TCP, UDP or SCTP packet.
    pub fn ports(&self) -> Option<(u16, u16)> {
        matches!(self.proto, 6 | 17 | 132).then_some(())?;
        let p = self.l4.get(..4)?;
        Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
    }
}

enum Source {
    /// A packet socket: IPv4 and IPv6 packets with their headers.
    Link(Socket),
    /// A raw IP socket of one protocol: IPv4 with the header, IPv6 without.
    Local(Family, u8, Socket),
}

/// Sockets that keep, until drained, every packet that reached a namespace
/// (see the module doc for which).
pub struct Capture {
    sources: Vec<Source>,
}

impl Capture {
    /// A packet socket on interface `ifname`, incoming frames only. Call
    /// inside the namespace.
    pub fn link(ifname: &str) -> io::Result<Capture> {
        let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::c_int::from(all)) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        setsockopt(&socket, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
        setsockopt(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER as libc::c_int)?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = i32::try_from(index).map_err(io::Error::other)?;
        // SAFETY: addr is a valid sockaddr_ll of the length given.
        let bound = unsafe {
            libc::bind(socket.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, size_of::<libc::sockaddr_ll>() as u32)
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.set_nonblocking(true)?;
        Ok(Capture { sources: vec![Source::Link(socket)] })
    }

    /// Raw IP sockets for each of `protocols` in each family. Call inside
    /// the namespace.
    pub fn local(protocols4: &[u8], protocols6: &[u8]) -> io::Result<Capture> {
        let mut sources = Vec::new();
        let families = [(Family::IPv4, Domain::IPV4, protocols4), (Family::IPv6, Domain::IPV6, protocols6)];
        for (family, domain, protocols) in families {
            for &p in protocols {
                let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(p))))?;
                setsockopt(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER as libc::c_int)?;
                s.set_nonblocking(true)?;
                sources.push(Source::Local(family, p, s));
            }
        }
        Ok(Capture { sources })
    }

    /// Everything received so far.
    pub fn drain(&self) -> io::Result<Vec<Frame>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        for source in &self.sources {
            loop {
                let received = match source {
                    Source::Link(s) => recv_link(s, &mut buf)?,
                    Source::Local(family, proto, s) => recv_local(*family, *proto, s, &mut buf)?,
                };
                match received {
                    Received::Frame(f) => frames.push(f),
                    Received::Skipped => {}
                    Received::Empty => break,
                }
            }
        }
        Ok(frames)
    }

    /// Packets a packet socket had to drop for want of buffer since the
    /// last call: a capture that lost packets proves nothing.
    pub fn drops(&self) -> io::Result<u32> {
        let mut drops = 0;
        for source in &self.sources {
            if let Source::Link(s) = source {
                let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
                let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
                // SAFETY: stats is a valid tpacket_stats of the length given.
                let r = unsafe {
                    libc::getsockopt(
                        s.as_raw_fd(),
                        libc::SOL_PACKET,
                        libc::PACKET_STATISTICS,
                        &mut stats as *mut _ as *mut libc::c_void,
                        &mut len,
                    )
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                drops += stats.tp_drops;
            }
        }
        Ok(drops)
    }
}

enum Received {
    Frame(Frame),
    /// Not addressed to this host, or not IP.
    Skipped,
    Empty,
}

fn recv_link(s: &Socket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and from are valid for the lengths given.
    let n = unsafe {
        libc::recvfrom(
            s.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
            &mut from as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(Received::Empty) } else { Err(e) };
    }
    if from.sll_pkttype != libc::PACKET_HOST {
        return Ok(Received::Skipped);
    }
    let packet = &buf[..n as usize];
    Ok(parse_ip(packet).map_or(Received::Skipped, Received::Frame))
}

fn recv_local(family: Family, proto: u8, s: &Socket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: initialised bytes are valid MaybeUninit<u8>, and recv_from
    // only ever writes initialised bytes into the buffer.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let (n, from) = match s.recv_from(uninit) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Empty),
        Err(e) => return Err(e),
    };
    let packet = &buf[..n];
    Ok(match family {
        // Raw IPv4 sockets receive the IP header too.
        Family::IPv4 => parse_ip(packet).map_or(Received::Skipped, Received::Frame),
        Family::IPv6 => match from.as_socket() {
            Some(addr) => Received::Frame(Frame { src: addr.ip(), proto, l4: packet.to_vec() }),
            None => Received::Skipped,
        },
    })
}

/// An IP packet's source, protocol and what follows its header (IPv6
/// extension headers included: the kernel's own answers carry none).
fn parse_ip(p: &[u8]) -> Option<Frame> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            Some(Frame { src: IpAddr::from(src), proto: *p.get(9)?, l4: p.get(ihl..)?.to_vec() })
        }
        6 => {
            let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            Some(Frame { src: IpAddr::from(src), proto: *p.get(6)?, l4: p.get(40..)?.to_vec() })
        }
        _ => None,
    }
}

fn setsockopt(s: &Socket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: value is a valid c_int of the length given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_headers_are_parsed_to_source_protocol_and_transport() {
        let mut v4 = vec![0u8; 24];
        v4[0] = 0x45;
        v4[9] = 6;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[20..24].copy_from_slice(&[0, 81, 0x9c, 0x40]);
        let f = parse_ip(&v4).unwrap();
        assert_eq!((f.src, f.proto, f.ports()), ("10.0.0.1".parse().unwrap(), 6, Some((81, 40000))));
        let mut v6 = vec![0u8; 44];
        v6[0] = 0x60;
        v6[6] = 58;
        v6[23] = 1;
        let f = parse_ip(&v6).unwrap();
        assert_eq!((f.src, f.proto, f.ports(), f.l4.len()), ("::1".parse().unwrap(), 58, None, 4));
        assert!(parse_ip(&[0x45, 0]).is_none());
        assert!(parse_ip(&[]).is_none());
    }
}
