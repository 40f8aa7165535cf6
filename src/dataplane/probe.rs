//! Real packets: listeners in destination namespaces, probes from sources.
//!
//! Every socket is created by a worker thread that stays in the right
//! namespace ([`Netns::worker`]) and keeps that namespace for life, so all
//! the I/O then runs on one tokio current-thread runtime: no thread per
//! listener or per probe, and thousands of probes in flight cost little. A probe counts as allowed only when the answer came back, so the
//! return path is proven too:
//! - TCP: connect, send a token, read the listener's acknowledgement of it;
//! - UDP: the same as a datagram exchange;
//! - SCTP: a raw INIT out, the listener's raw INIT ACK back ([`sctp`]).
//!
//! Listeners bind the destination address itself (not a wildcard), so that
//! replies leave from the address the probe targeted even in namespaces
//! with many addresses (a node, the outside).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use super::sctp;
use super::{ProbeOptions, ProbeResult};
use crate::model::Protocol;
use crate::netns::{Netns, Worker};

const IPPROTO_SCTP: i32 = 132;
/// How long a listener waits for a connected client's token.
const CLIENT_PATIENCE: Duration = Duration::from_secs(2);

/// One flow to try, resolved to namespaces and addresses.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    pub src: &'a Netns,
    pub src_ip: IpAddr,
    pub dst: &'a Netns,
    pub dst_ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// Where the client sends when not to `dst_ip`:`port` (a Service
    /// address, translated by the node on the way).
    pub via: Option<SocketAddr>,
    /// Whether a listener is opened at `dst_ip`:`port` (not for a Service
    /// without a backend).
    pub listen: bool,
}

/// Probe every flow, listeners up first and gone after. `Err` means the
/// probing itself failed (a socket could not be made), never that traffic
/// was refused.
pub fn run(flows: &[Flow<'_>], options: &ProbeOptions) -> anyhow::Result<Vec<ProbeResult>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let work = || runtime.block_on(probe_all(flows, options));
    // block_on panics on a thread that already drives a runtime.
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(work).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    } else {
        work()
    }
    // Dropping the runtime ends the listener tasks and closes their sockets.
}

async fn probe_all(flows: &[Flow<'_>], options: &ProbeOptions) -> anyhow::Result<Vec<ProbeResult>> {
    let workers = Workers::start(flows)?;
    start_listeners(flows, &workers).await?;
    // Unordered: a slow denied probe must not hold a slot while the ones
    // behind it finish.
    let mut results: Vec<(usize, ProbeResult)> = futures::stream::iter(flows.iter().enumerate())
        .map(|(i, flow)| {
            let workers = &workers;
            async move { probe(flow, workers, options).await.map(|r| (i, r)) }
        })
        .buffer_unordered(options.parallel.max(1))
        .try_collect()
        .await?;
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

/// Which listeners a destination namespace needs: SCTP listens per
/// address (one raw socket sees every port), TCP and UDP per port.
#[derive(Default)]
struct Wanted {
    streams: BTreeSet<(Protocol, IpAddr, u16)>,
    sctp: BTreeMap<IpAddr, BTreeSet<u16>>,
}

enum Opened {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    Sctp(Socket, BTreeSet<u16>),
}

/// A thread in each namespace the flows touch, making its sockets.
struct Workers<'a> {
    by_name: BTreeMap<&'a str, Worker>,
}

impl<'a> Workers<'a> {
    fn start(flows: &[Flow<'a>]) -> io::Result<Workers<'a>> {
        let mut by_name = BTreeMap::new();
        for ns in flows.iter().flat_map(|f| [f.src, f.dst]) {
            if !by_name.contains_key(ns.name()) {
                by_name.insert(ns.name(), ns.worker()?);
            }
        }
        Ok(Workers { by_name })
    }

    /// Run `make` inside `ns`.
    async fn make<T: Send + 'static>(
        &self,
        ns: &Netns,
        make: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let gone = || io::Error::other(format!("the socket thread of {} is gone", ns.name()));
        let worker = self.by_name.get(ns.name()).ok_or_else(gone)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        worker.submit(move || {
            let _ = tx.send(make());
        });
        rx.await.map_err(|_| gone())?
    }
}

async fn start_listeners(flows: &[Flow<'_>], workers: &Workers<'_>) -> anyhow::Result<()> {
    let mut wanted: BTreeMap<&str, (&Netns, Wanted)> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.listen) {
        let (_, w) = wanted.entry(f.dst.name()).or_insert_with(|| (f.dst, Wanted::default()));
        match f.protocol {
            Protocol::Sctp => {
                w.sctp.entry(f.dst_ip).or_default().insert(f.port);
            }
            p => {
                w.streams.insert((p, f.dst_ip, f.port));
            }
        }
    }
    for (name, (ns, w)) in wanted {
        let opened = workers.make(ns, move || open_listeners(&w)).await.map_err(|e| anyhow::anyhow!("cannot listen in {name}: {e}"))?;
        for socket in opened {
            match socket {
                Opened::Tcp(l) => {
                    tokio::spawn(serve_tcp(TcpListener::from_std(l)?));
                }
                Opened::Udp(u) => {
                    tokio::spawn(serve_udp(UdpSocket::from_std(u)?));
                }
                Opened::Sctp(raw, ports) => {
                    tokio::spawn(serve_sctp(register(raw)?, ports));
                }
            }
        }
    }
    Ok(())
}

/// Listeners for what `w` asks, retried for a while when a port is still
/// held: sockets of an earlier probe run in the same namespace (its runtime
/// just dropped) can hold a port for a moment after they are closed.
fn open_listeners(w: &Wanted) -> io::Result<Vec<Opened>> {
    let mut tries = 0;
    loop {
        match open_listeners_once(w) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 40 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn open_listeners_once(w: &Wanted) -> io::Result<Vec<Opened>> {
    let mut out = Vec::new();
    for &(protocol, ip, port) in &w.streams {
        let addr = SocketAddr::new(ip, port);
        let opened = match protocol {
            Protocol::Tcp => {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(socket2::Protocol::TCP))?;
                s.set_reuse_address(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Opened::Tcp(nonblocking(s)?.into())
            }
            _ => Opened::Udp(bound(addr, Type::DGRAM, socket2::Protocol::UDP)?.into()),
        };
        out.push(opened);
    }
    for (ip, ports) in &w.sctp {
        out.push(Opened::Sctp(raw_sctp(*ip)?, ports.clone()));
    }
    Ok(out)
}

async fn serve_tcp(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(tokio::time::timeout(CLIENT_PATIENCE, acknowledge(stream)));
            }
            Err(_) => pause().await,
        }
    }
}

async fn acknowledge(mut stream: TcpStream) -> io::Result<()> {
    let (reader, mut writer) = stream.split();
    let mut token = String::new();
    BufReader::new(reader).take(256).read_line(&mut token).await?;
    writer.write_all(ack(token.trim_end()).as_bytes()).await
}

async fn serve_udp(socket: UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let token = String::from_utf8_lossy(&buf[..n]);
                let _ = socket.send_to(ack(token.trim_end()).as_bytes(), peer).await;
            }
            Err(_) => pause().await,
        }
    }
}

async fn serve_sctp(socket: AsyncFd<Socket>, ports: BTreeSet<u16>) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, peer)) = socket.async_io(Interest::READABLE, |s| recv_from(s, &mut buf)).await else {
            pause().await;
            continue;
        };
        let Some(init) = sctp_payload(&peer, &buf[..n]).and_then(sctp::parse) else { continue };
        if !ports.contains(&init.dst_port) {
            continue;
        }
        if let Some(reply) = sctp::init_ack(&init, next_id()) {
            let _ = socket.async_io(Interest::WRITABLE, |s| s.send_to(&reply, &peer)).await;
        }
    }
}

/// A listener that errs (out of file descriptors, say) retries shortly
/// rather than spinning.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn ack(token: &str) -> String {
    format!("ack {token}\n")
}

/// Try a flow up to `options.attempts` times; allowed on the first answer.
async fn probe(flow: &Flow<'_>, workers: &Workers<'_>, options: &ProbeOptions) -> io::Result<ProbeResult> {
    let start = Instant::now();
    let mut failures = Vec::new();
    for _ in 0..options.attempts.max(1) {
        let t = Instant::now();
        match tokio::time::timeout(options.timeout, attempt(flow, workers)).await {
            Ok(Ok(Ok(()))) => {
                let mut detail = format!("answered in {:.1?}", t.elapsed());
                if !failures.is_empty() {
                    detail.push_str(&format!(" after {}", failures.join("; ")));
                }
                return Ok(ProbeResult { allowed: true, detail, elapsed: start.elapsed() });
            }
            Ok(Ok(Err(why))) => failures.push(why),
            Ok(Err(setup)) => return Err(setup),
            Err(_) => failures.push(format!("no answer within {:?}", options.timeout)),
        }
    }
    let detail = match failures.as_slice() {
        [first, rest @ ..] if rest.iter().all(|f| f == first) && !rest.is_empty() => {
            format!("{first} ({} attempts)", failures.len())
        }
        _ => failures.join("; "),
    };
    Ok(ProbeResult { allowed: false, detail, elapsed: start.elapsed() })
}

/// One exchange. The outer error: the probe could not be set up. The
/// inner one: the network did not let it through, and how.
async fn attempt(flow: &Flow<'_>, workers: &Workers<'_>) -> io::Result<Result<(), String>> {
    let dst = flow.via.unwrap_or(SocketAddr::new(flow.dst_ip, flow.port));
    let src = SocketAddr::new(flow.src_ip, 0);
    let token = format!("netfence-probe-{}", next_id());
    let outcome = match flow.protocol {
        Protocol::Tcp => {
            let socket = workers.make(flow.src, move || bound(src, Type::STREAM, socket2::Protocol::TCP)).await?;
            let socket = TcpSocket::from_std_stream(socket.into());
            tcp_exchange(socket, dst, &token).await
        }
        Protocol::Udp => {
            let socket = workers.make(flow.src, move || bound(src, Type::DGRAM, socket2::Protocol::UDP)).await?;
            let socket = UdpSocket::from_std(socket.into())?;
            udp_exchange(socket, dst, &token).await
        }
        Protocol::Sctp => {
            let src_ip = flow.src_ip;
            let socket = register(workers.make(flow.src, move || raw_sctp(src_ip)).await?)?;
            return Ok(sctp_exchange(socket, dst).await.map_err(describe));
        }
    };
    Ok(match outcome {
        Ok(reply) if reply == ack(&token) => Ok(()),
        Ok(reply) => Err(format!("unexpected answer {reply:?}")),
        Err(e) => Err(describe(e)),
    })
}

async fn tcp_exchange(socket: TcpSocket, dst: SocketAddr, token: &str) -> io::Result<String> {
    let mut stream = socket.connect(dst).await?;
    stream.write_all(format!("{token}\n").as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(stream).take(256).read_line(&mut reply).await?;
    Ok(reply)
}

async fn udp_exchange(socket: UdpSocket, dst: SocketAddr, token: &str) -> io::Result<String> {
    socket.connect(dst).await?;
    socket.send(token.as_bytes()).await?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Send an INIT and wait for the INIT ACK tagged with its initiate tag.
async fn sctp_exchange(socket: AsyncFd<Socket>, dst: SocketAddr) -> io::Result<()> {
    let id = next_id();
    let tag = id.wrapping_mul(0x9e37_79b1).max(1);
    // Ephemeral ports; unique per probe with the tag.
    let src_port = 32768 + (id % 28000) as u16;
    let init = sctp::init(src_port, dst.port(), tag);
    let to = SockAddr::from(SocketAddr::new(dst.ip(), 0));
    socket.async_io(Interest::WRITABLE, |s| s.send_to(&init, &to)).await?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.async_io(Interest::READABLE, |s| recv_from(s, &mut buf)).await?;
        let Some(p) = sctp_payload(&from, &buf[..n]).and_then(sctp::parse) else { continue };
        let ours = p.src_port == dst.port() && p.dst_port == src_port && p.vtag == tag;
        match p.chunk {
            sctp::INIT_ACK if ours => return Ok(()),
            sctp::ABORT if ours => return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "ABORT")),
            _ => {}
        }
    }
}

/// What a failed exchange says about the network.
fn describe(e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::EPERM) => "dropped on the way out (EPERM)".into(),
        Some(libc::EHOSTUNREACH) => "host unreachable".into(),
        Some(libc::ENETUNREACH) => "network unreachable".into(),
        _ => e.to_string(),
    }
}

/// Ids for probe tokens, SCTP tags and ports: unique within the process.
fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A non-blocking socket bound to `addr` (port 0: any).
fn bound(addr: SocketAddr, ty: Type, protocol: socket2::Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    s.bind(&addr.into())?;
    nonblocking(s)
}

/// A raw SCTP socket bound to `ip`: it receives every SCTP packet to `ip`
/// and sends from it.
fn raw_sctp(ip: IpAddr) -> io::Result<Socket> {
    bound(SocketAddr::new(ip, 0), Type::RAW, socket2::Protocol::from(IPPROTO_SCTP))
}

/// Hand a raw socket to the runtime.
fn register(s: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the Socket owns its descriptor, which stays open until the
    // AsyncFd drops the Socket.
    unsafe { AsyncFd::register(s) }.map_err(|e| io::Error::other(e.to_string()))
}

fn nonblocking(s: Socket) -> io::Result<Socket> {
    s.set_nonblocking(true)?;
    Ok(s)
}

fn recv_from(s: &Socket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: initialised bytes are valid MaybeUninit<u8>, and recv_from
    // only ever writes initialised bytes into the buffer.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    s.recv_from(uninit)
}

/// Raw IPv4 sockets receive the IP header too; IPv6 ones do not.
fn sctp_payload<'b>(from: &SockAddr, packet: &'b [u8]) -> Option<&'b [u8]> {
    if from.is_ipv4() {
        sctp::strip_ipv4_header(packet)
    } else {
        Some(packet)
    }
}
