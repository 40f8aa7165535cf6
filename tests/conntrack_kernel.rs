//! Cutting connections for real: the agent (in-process, on a `--source`
//! folder, with the real nftables dataplane and the netlink conntrack
//! table) enforces a node namespace that routes between three pod
//! namespaces, with kube-proxy played by a DNAT table. Real TCP and UDP
//! connections are open when a policy change arrives: the denied ones lose
//! their conntrack entry and their next packet is dropped; the allowed ones,
//! a Service's NAT included, keep their entry (same id) and keep working.
//! Then a pod goes away, and every connection of its address with it.
//!
//! ```text
//!  pod-a: 10.244.1.11 (x/a)   pod-b: 10.244.1.12 (x/b)   pod-c: 10.244.1.13 (x/c)
//!  node: va, vb, vc (routes to the pods), lo 172.18.0.2 (InternalIP) and 10.244.1.1
//!        Services (nat prerouting): 10.96.0.10:80 -> c:8080, 10.96.0.11:80 -> b:8080
//! ```
//!
//! Needs root, ip and nft; skipped with a notice otherwise. Everything runs
//! inside namespaces it creates (removed on drop, panic and signals).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netfence::agent::conntrack::{Entry, IPPROTO_TCP, IPPROTO_UDP};
use netfence::agent::{self, Established, NetlinkTable, NftDataplane, ReconcileConfig, Running, Source, Table};
use netfence::apply::NftKernel;
use netfence::netns::{self, Netns};

const CLUSTER: &str = "
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.12}
";

const POD_C: &str = "
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.13}
";

/// The change: x/a may reach only x/c (TCP 80 and 8080, UDP 53), and
/// nothing may reach x/b. A Service address is in no rule: what a has
/// open through a Service lives or dies by its backend.
const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-c-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: c}}}]
    ports: [{port: 80}, {port: 8080}, {port: 53, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
";

/// kube-proxy's part: DNAT in prerouting, as its iptables and nftables modes do.
const SERVICES: &str = "
table ip kube {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.13:8080
        ip daddr 10.96.0.11 tcp dport 80 dnat to 10.244.1.12:8080
    }
}
";

/// How long anything may take to show.
const BOUND: Duration = Duration::from_secs(10);
/// How long a dropped packet is waited for.
const SILENCE: Duration = Duration::from_millis(1500);

struct Lab {
    node: Netns,
    pods: Vec<Netns>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
    }
}

const POD_IPS: [&str; 3] = ["10.244.1.11", "10.244.1.12", "10.244.1.13"];

impl Lab {
    fn new() -> Lab {
        let node = Netns::create("nfct").expect("node namespace");
        let pods = Netns::create_many("nfct", 3).expect("pod namespaces");
        let mut script = String::from("link set lo up\naddr add 172.18.0.2/32 dev lo\naddr add 10.244.1.1/32 dev lo\naddr add 10.96.0.10/32 dev lo\naddr add 10.96.0.11/32 dev lo\n");
        for (i, (pod, ip)) in pods.iter().zip(POD_IPS).enumerate() {
            let dev = format!("v{i}");
            script.push_str(&format!("link add {dev} type veth peer name eth0 netns {}\nlink set {dev} up\nroute add {ip}/32 dev {dev} src 10.244.1.1\n", pod.name()));
        }
        node.ip_batch(&script).expect("wire the node");
        for (pod, ip) in pods.iter().zip(POD_IPS) {
            pod.ip_batch(&format!(
                "link set lo up\nlink set eth0 up\naddr add {ip}/32 dev eth0\nroute add 10.244.1.1/32 dev eth0\nroute add default via 10.244.1.1 dev eth0\n"
            ))
            .expect("wire a pod");
        }
        node.sysctl(&[("net/ipv4/ip_forward", "1")]).expect("forwarding");
        nft(&node, SERVICES);
        let stop = Arc::new(AtomicBool::new(false));
        let mut lab = Lab { node, pods, stop, servers: Vec::new() };
        // Echo servers: TCP on 80 and 8080, UDP on 53, in b and c.
        for i in [1, 2] {
            for port in [80, 8080] {
                let addr: SocketAddr = format!("{}:{port}", POD_IPS[i]).parse().unwrap();
                let l = lab.pods[i].run(move || TcpListener::bind(addr)).unwrap().expect("listen");
                lab.servers.push(tcp_echo(l, lab.stop.clone()));
            }
            let addr: SocketAddr = format!("{}:53", POD_IPS[i]).parse().unwrap();
            let u = lab.pods[i].run(move || UdpSocket::bind(addr)).unwrap().expect("bind udp");
            lab.servers.push(udp_echo(u, lab.stop.clone()));
        }
        lab
    }

    fn pod_a(&self) -> &Netns {
        &self.pods[0]
    }

    /// A connection from x/a, as a socket of pod-a's namespace.
    fn tcp(&self, to: &str) -> TcpStream {
        let to: SocketAddr = to.parse().unwrap();
        let s = self.pod_a().run(move || TcpStream::connect_timeout(&to, BOUND)).unwrap().unwrap_or_else(|e| panic!("connect {to}: {e}"));
        s.set_read_timeout(Some(SILENCE)).unwrap();
        s
    }

    fn udp(&self, to: &str) -> UdpSocket {
        let to: SocketAddr = to.parse().unwrap();
        let s = self.pod_a().run(move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind("10.244.1.11:0")?;
            s.connect(to)?;
            Ok(s)
        });
        let s = s.unwrap().unwrap_or_else(|e| panic!("udp {to}: {e}"));
        s.set_read_timeout(Some(SILENCE)).unwrap();
        s
    }

    /// The node's conntrack entries.
    fn entries(&self) -> Vec<Entry> {
        let mut t = self.node.run(NetlinkTable::open).unwrap().expect("open the node's conntrack table");
        let mut out = Vec::new();
        t.dump(&mut |e| out.push(e)).expect("dump");
        out
    }
}

fn nft(ns: &Netns, script: &str) {
    let mut child = ns
        .command("nft")
        .unwrap()
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
}

fn tcp_echo(l: TcpListener, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut conns: Vec<JoinHandle<()>> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let stop = stop.clone();
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                    conns.push(std::thread::spawn(move || {
                        let mut buf = [0u8; 256];
                        while !stop.load(Ordering::Relaxed) {
                            match c.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    let _ = c.write_all(&buf[..n]);
                                }
                                Err(_) => continue,
                            }
                        }
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        conns.into_iter().for_each(|c| drop(c.join()));
    })
}

fn udp_echo(u: UdpSocket, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    u.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        }
    })
}

/// Does `msg` come back on this connection?
fn echoes(s: &mut TcpStream, msg: &str) -> bool {
    if s.write_all(msg.as_bytes()).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg.as_bytes()
}

fn udp_echoes(s: &UdpSocket, msg: &str) -> bool {
    let _ = s.send(msg.as_bytes());
    let mut buf = [0u8; 256];
    matches!(s.recv(&mut buf), Ok(n) if &buf[..n] == msg.as_bytes())
}

/// The entry of a connection from x/a's local port `sport`.
fn entry_of(entries: &[Entry], proto: u8, sport: u16) -> Option<Entry> {
    let a: IpAddr = POD_IPS[0].parse().unwrap();
    entries.iter().copied().find(|e| {
        e.orig.src == a && e.orig.proto == proto && matches!(e.orig.l4, netfence::agent::conntrack::L4::Ports { sport: s, .. } if s == sport)
    })
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !ok() {
        assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    // Written whole, then renamed: the folder source never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn start_agent(lab: &Lab, dir: &Path) -> Running {
    start_agent_with(lab, dir, NftDataplane::new("node-1", Box::new(NftKernel::in_netns(lab.node.name()))), ReconcileConfig::default()).await
}

async fn start_agent_with(lab: &Lab, dir: &Path, dataplane: NftDataplane, reconcile: ReconcileConfig) -> Running {
    let table = lab.node.run(NetlinkTable::open).unwrap().expect("open the node's conntrack table");
    let config = agent::Config {
        node: "node-1".into(),
        source: Source::Folder { dir: dir.to_path_buf(), poll: Duration::from_millis(50) },
        reconcile: ReconcileConfig { established: Established::Cut, ..reconcile },
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        rule_counters: None,
        drop_log: None,
        precondition_interval: None,
        absent_kind_retry: agent::ABSENT_KIND_RETRY,
    };
    agent::start(config, Box::new(dataplane), Some(Box::new(table) as Box<dyn Table>)).await.expect("start the agent")
}

fn metric(running: &Running, name: &str) -> u64 {
    let text = running.metrics.render();
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_cuts_the_connections_it_denies() {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED a_policy_change_cuts_the_connections_it_denies: {why}");
        return;
    }
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cluster.yaml", CLUSTER);
    write(dir.path(), "c.yaml", POD_C);
    let running = start_agent(&lab, dir.path()).await;
    wait_until("the first sync", || running.is_ready());

    // Open under no policy: everything is allowed.
    let mut to_b = lab.tcp("10.244.1.12:80");
    let mut to_c = lab.tcp("10.244.1.13:80");
    let mut svc_c = lab.tcp("10.96.0.10:80");
    let mut svc_b = lab.tcp("10.96.0.11:80");
    let udp_b = lab.udp("10.244.1.12:53");
    let udp_c = lab.udp("10.244.1.13:53");
    for (s, name) in [(&mut to_b, "a -> b"), (&mut to_c, "a -> c"), (&mut svc_c, "a -> svc -> c"), (&mut svc_b, "a -> svc -> b")] {
        assert!(echoes(s, "hello"), "{name} before the change");
    }
    assert!(udp_echoes(&udp_b, "hello") && udp_echoes(&udp_c, "hello"), "UDP before the change");
    let port = |s: &TcpStream| s.local_addr().unwrap().port();
    let uport = |s: &UdpSocket| s.local_addr().unwrap().port();
    let before = lab.entries();
    let svc_c_entry = entry_of(&before, IPPROTO_TCP, port(&svc_c)).expect("the Service connection's entry");
    assert_eq!(svc_c_entry.backend(), "10.244.1.13".parse::<IpAddr>().unwrap(), "DNATed to c: {svc_c_entry:?}");

    // The change.
    write(dir.path(), "policies.yaml", POLICIES);
    let cut = [(IPPROTO_TCP, port(&to_b)), (IPPROTO_TCP, port(&svc_b)), (IPPROTO_UDP, uport(&udp_b))];
    wait_until("the denied connections' entries are deleted", || {
        let now = lab.entries();
        cut.iter().all(|(p, sp)| entry_of(&now, *p, *sp).is_none())
    });
    // The allowed ones kept their very entries: the same ids, the Service's
    // NAT binding untouched.
    let now = lab.entries();
    for (proto, sport, name) in [(IPPROTO_TCP, port(&to_c), "a -> c"), (IPPROTO_TCP, port(&svc_c), "a -> svc -> c"), (IPPROTO_UDP, uport(&udp_c), "udp a -> c")] {
        let (was, is) = (entry_of(&before, proto, sport), entry_of(&now, proto, sport));
        assert!(was.is_some() && was == is, "{name}: the entry changed: {was:?} -> {is:?}");
    }
    assert!(metric(&running, "netfence_conntrack_cut_entries_total{reason=\"denied\"}") >= 3);
    // Their next packets: the denied dropped, the allowed through.
    assert!(!echoes(&mut to_b, "after"), "a -> b goes on after the change");
    assert!(!echoes(&mut svc_b, "after"), "a -> svc -> b goes on after the change");
    assert!(!udp_echoes(&udp_b, "after"), "udp a -> b goes on after the change");
    assert!(echoes(&mut to_c, "after"), "a -> c was cut");
    assert!(echoes(&mut svc_c, "after"), "a -> svc -> c was cut");
    assert!(udp_echoes(&udp_c, "after"), "udp a -> c was cut");

    // c goes away: everything of its address goes with it, allowed or not.
    std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
    wait_until("c's entries are deleted", || {
        let now = lab.entries();
        let c: IpAddr = POD_IPS[2].parse().unwrap();
        now.iter().all(|e| e.backend() != c && e.client() != c)
    });
    assert!(metric(&running, "netfence_conntrack_cut_entries_total{reason=\"gone\"}") >= 3);
    assert!(!echoes(&mut to_c, "gone"), "a -> c goes on after c is gone");
    assert_eq!(metric(&running, "netfence_conntrack_errors_total"), 0);
    running.stop().await.unwrap();
}

/// Full syncs of a program too large for one transaction are built under
/// the other table name and switched to in one transaction (issue: a
/// staged swap must neither drop allowed connections nor let a denied one
/// through). Here every full sync is staged and one runs every 200 ms:
/// connections open across many swaps keep their entries and their
/// packets; after a policy change the denied ones are cut and stay cut
/// through later swaps, and a new denied connection cannot open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_full_syncs_keep_allowed_connections_and_no_denied_one() {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED staged_full_syncs_keep_allowed_connections_and_no_denied_one: {why}");
        return;
    }
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cluster.yaml", CLUSTER);
    write(dir.path(), "c.yaml", POD_C);
    let dataplane = NftDataplane::new("node-1", Box::new(NftKernel::in_netns(lab.node.name()))).with_staged_above(0);
    let reconcile = ReconcileConfig { resync: Duration::from_millis(200), ..Default::default() };
    let running = start_agent_with(&lab, dir.path(), dataplane, reconcile).await;
    wait_until("the first sync", || running.is_ready());
    let full = |r: &Running| metric(r, "netfence_syncs_total{mode=\"full\"}");

    let mut to_b = lab.tcp("10.244.1.12:80");
    let mut to_c = lab.tcp("10.244.1.13:80");
    let udp_c = lab.udp("10.244.1.13:53");
    let port = |s: &TcpStream| s.local_addr().unwrap().port();
    let before = lab.entries();
    let swaps = full(&running);
    wait_until("three staged swaps", || full(&running) >= swaps + 3);
    assert!(echoes(&mut to_b, "across swaps") && echoes(&mut to_c, "across swaps"), "an allowed connection broke");
    assert!(udp_echoes(&udp_c, "across swaps"), "an allowed UDP flow broke");
    let now = lab.entries();
    for s in [&to_b, &to_c] {
        let (was, is) = (entry_of(&before, IPPROTO_TCP, port(s)), entry_of(&now, IPPROTO_TCP, port(s)));
        assert!(was.is_some() && was == is, "a swap changed an entry: {was:?} -> {is:?}");
    }

    write(dir.path(), "policies.yaml", POLICIES);
    wait_until("the denied connection's entry is deleted", || entry_of(&lab.entries(), IPPROTO_TCP, port(&to_b)).is_none());
    let swaps = full(&running);
    wait_until("three more staged swaps", || full(&running) >= swaps + 3);
    assert!(!echoes(&mut to_b, "after"), "a -> b goes on across staged swaps");
    assert!(echoes(&mut to_c, "after") && udp_echoes(&udp_c, "after"), "a -> c was cut by a swap");
    let refused = lab.pod_a().run(|| TcpStream::connect_timeout(&"10.244.1.12:80".parse().unwrap(), Duration::from_millis(500)));
    assert!(!matches!(refused, Ok(Ok(_))), "a new connection to b opened during staged swaps");
    assert_eq!(metric(&running, "netfence_apply_failures_total{mode=\"full\"}"), 0);
    running.stop().await.unwrap();
}

/// The benchmark's measure (docs/benchmarks.md) on a small table, so it
/// cannot rot: a tenth of the entries judged after the change, all of them
/// denied and deleted, every entry judged on a first sync.
#[test]
fn the_cut_benchmark_runs() {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED the_cut_benchmark_runs: {why}");
        return;
    }
    let m = netfence::bench::conntrack::measure(1000, 1).expect("measure");
    assert_eq!((m.entries, m.examined, m.denied), (1000, 100, 100));
    assert!(netfence::bench::conntrack::render(&[m]).contains("| 1000 |"));
}
