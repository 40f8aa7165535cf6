//! The agent for real: the `netfence` binary runs `agent --source DIR`
//! inside each node's network namespace of a dataplane shaped like
//! fixtures/clusters/standard.yaml, and real packets say what it enforces.
//!
//! The dataplane is built with no ruleset at all; everything the probes see
//! was installed by the agents. The folder holds one file per manifest, so
//! a test adds a pod or a policy, or relabels a pod, by writing one file.
//! Needs root; without it each test prints why it skipped. An agent's log
//! is printed when its test fails, or always with `NETFENCE_E2E_LOGS=1`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use netfence::agent::http;
use netfence::dataplane::{Dataplane, Endpoint, ProbeOptions, ProbeSpec};
use netfence::eval::{self, Flow};
use netfence::model::{load_paths, Cluster, Family, Protocol};
use netfence::netns::{self, Netns};

/// How long any change may take to show in packets or endpoints.
const BOUND: Duration = Duration::from_secs(5);
/// Each agent serves on the loopback of its own node namespace.
const METRICS: &str = "127.0.0.1:9964";

/// One dataplane at a time: two cores, and probe timeouts should measure
/// the network, not the scheduler.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------
// Manifests: the standard cluster, one file per object.

/// y/a admits only pods labelled `role: client` from its namespace
/// (y/b at start): enforced by node-1's ingress.
const POLICY_Y_A: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-clients, namespace: \"y\"}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]
";

/// z/b may talk only within z: enforced by node-2's egress.
const POLICY_Z_B: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-egress-in-z, namespace: z}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}]}]
";

/// Nothing may enter namespace x.
const DENY_X: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// The fixture split into (file name, manifest), plus the two policies.
/// y/b carries `role: client`.
fn manifests() -> Vec<(String, String)> {
    let path = format!("{}/fixtures/clusters/standard.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut files: Vec<(String, String)> = text
        .split("\n---\n")
        .filter(|doc| doc.contains("kind: "))
        .map(|doc| {
            let field = |prefix: &str| {
                doc.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().trim_matches('"').to_lowercase())
            };
            let kind = field("kind: ").unwrap();
            let name = field("  name: ").unwrap();
            let file = match field("  namespace: ") {
                Some(ns) => format!("{kind}-{ns}-{name}.yaml"),
                None => format!("{kind}-{name}.yaml"),
            };
            (file, format!("{doc}\n"))
        })
        .collect();
    let (_, y_b) = files.iter_mut().find(|(f, _)| f == "pod-y-b.yaml").unwrap();
    *y_b = with_client_role(y_b);
    files.push(("policy-y-a.yaml".into(), POLICY_Y_A.into()));
    files.push(("policy-z-b.yaml".into(), POLICY_Z_B.into()));
    assert_eq!(files.len(), 2 + 3 + 9 + 2, "{:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());
    files
}

fn with_client_role(pod: &str) -> String {
    assert!(pod.contains("\n  labels:\n"), "{pod}");
    pod.replacen("\n  labels:\n", "\n  labels:\n    role: client\n", 1)
}

/// Write then rename, as editors and ConfigMap updates do, so that no
/// poll sees half a file.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

// ---------------------------------------------------------------------------
// The dataplane and the folder.

struct Setup {
    /// The whole topology: every pod of the fixture has a namespace and
    /// listeners, whether or not the folder names it yet.
    cluster: Cluster,
    /// The agents' --source.
    folder: tempfile::TempDir,
    /// Agent logs and fake tools; outside the folder, which the agents poll.
    scratch: tempfile::TempDir,
    manifests: Vec<(String, String)>,
    dp: Dataplane,
    _serial: MutexGuard<'static, ()>,
}

/// A dataplane with no ruleset and a folder holding every manifest but
/// those in `held_back`; `None` (with a notice) without root.
fn setup(held_back: &[&str]) -> Option<Setup> {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let manifests = manifests();
    let folder = tempfile::tempdir().unwrap();
    for (name, text) in &manifests {
        write(folder.path(), name, text);
    }
    let cluster = load_paths(&[folder.path()]).unwrap().0;
    for name in held_back {
        std::fs::remove_file(folder.path().join(name)).unwrap();
    }
    let dp = Dataplane::build(&cluster, &[], |_, _| Ok(())).unwrap();
    Some(Setup { cluster, folder, scratch: tempfile::tempdir().unwrap(), manifests, dp, _serial: serial })
}

impl Setup {
    fn manifest(&self, name: &str) -> &str {
        &self.manifests.iter().find(|(f, _)| f == name).unwrap().1
    }

    fn write(&self, name: &str, text: &str) {
        write(self.folder.path(), name, text)
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.folder.path().join(name)).unwrap();
    }

    fn ns(&self, node: &str) -> &Netns {
        self.dp.node_netns(node).unwrap()
    }

    /// Start the agent of `node`; with `path`, its PATH (for a fake nft).
    fn agent(&self, node: &str, path: Option<&Path>) -> Agent<'_> {
        Agent::start(self, node, path, &[])
    }

    /// Both nodes' agents, once ready.
    fn agents(&self) -> [Agent<'_>; 2] {
        let agents = [self.agent("node-1", None), self.agent("node-2", None)];
        for a in &agents {
            a.wait_ready();
        }
        agents
    }

    /// A TCP flow to port 80 over IPv4, endpoints as the test format writes them.
    fn spec(&self, from: &str, to: &str) -> ProbeSpec {
        let e = |s| Endpoint::parse(&self.cluster, s).unwrap();
        ProbeSpec { from: e(from), to: e(to), family: Family::IPv4, protocol: Protocol::Tcp, port: 80, via: None }
    }

    fn allowed(&self, flows: &[(&str, &str)]) -> Vec<bool> {
        let specs: Vec<ProbeSpec> = flows.iter().map(|(f, t)| self.spec(f, t)).collect();
        self.dp.probe_all(&specs).unwrap().into_iter().map(|r| r.allowed).collect()
    }

    /// Each flow's verdict in packets, checked against `expected`.
    fn check(&self, cases: &[(&str, &str, bool)]) {
        let flows: Vec<(&str, &str)> = cases.iter().map(|(f, t, _)| (*f, *t)).collect();
        let got = self.allowed(&flows);
        let wrong: Vec<String> = cases
            .iter()
            .zip(got)
            .filter(|((_, _, want), got)| want != got)
            .map(|((f, t, want), _)| format!("{f} -> {t}: expected {}", if *want { "allowed" } else { "denied" }))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Probe `from -> to` until its verdict is `want`; how long after
    /// `since` the probe that saw it was sent. Polls with one quick attempt,
    /// so that a retry cannot hide when the change happened; a denial is
    /// confirmed with the usual attempts.
    fn wait_verdict(&self, from: &str, to: &str, want: bool, since: Instant) -> Duration {
        let spec = [self.spec(from, to)];
        let quick = ProbeOptions { timeout: Duration::from_millis(100), attempts: 1, ..self.dp.options.clone() };
        loop {
            let sent = since.elapsed();
            if self.dp.probe_with(&spec, &quick).unwrap()[0].allowed == want
                && (want || !self.dp.probe_all(&spec).unwrap()[0].allowed)
            {
                return sent;
            }
            assert!(since.elapsed() < BOUND, "{from} -> {to} still not {}", if want { "allowed" } else { "denied" });
        }
    }

    /// Every ordered pair of the folder's pods, in packets, against the
    /// reference evaluator's verdict on the folder's cluster.
    fn check_matrix(&self) {
        let folder = load_paths(&[self.folder.path()]).unwrap().0;
        let ir = netfence::ir::resolve(&folder);
        let pods: Vec<String> = folder.pods.iter().filter(|p| p.takes_part()).map(|p| p.key()).collect();
        let mut cases = Vec::new();
        for from in &pods {
            for to in pods.iter().filter(|to| *to != from) {
                let e = |s| Endpoint::parse(&folder, s).unwrap();
                let flow = Flow { src: e(from), dst: e(to), protocol: Protocol::Tcp, port: 80, family: Some(Family::IPv4) };
                cases.push((from.as_str(), to.as_str(), eval::evaluate(&folder, &ir, &flow).unwrap().allowed));
            }
        }
        assert_eq!(cases.len(), pods.len() * (pods.len() - 1));
        assert!(cases.iter().any(|c| c.2) && cases.iter().any(|c| !c.2), "the policies should allow some and deny some");
        self.check(&cases);
    }
}

// ---------------------------------------------------------------------------
// The agent process.

/// A running `netfence agent` in a node's namespace, killed on drop.
struct Agent<'a> {
    node: String,
    ns: &'a Netns,
    child: Child,
    log: PathBuf,
}

impl<'a> Agent<'a> {
    fn start(s: &'a Setup, node: &str, path: Option<&Path>, extra: &[&str]) -> Agent<'a> {
        let ns = s.ns(node);
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let log = s.scratch.path().join(format!("{node}-{}.log", STARTED.fetch_add(1, Ordering::Relaxed)));
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_netfence")).unwrap();
        cmd.args(["agent", "--node", node, "--metrics-addr", METRICS])
            .arg("--source")
            .arg(s.folder.path())
            .args(["--poll-interval", "100ms", "--max-retry-delay", "1s"])
            .args(extra)
            .env("NETFENCE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        // SAFETY: prctl is async-signal-safe. If the test process dies
        // without unwinding, the agent goes with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        Agent { node: node.to_string(), ns, child, log }
    }

    /// `GET path` on the agent's server, from inside its namespace.
    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.ns.run(|| http::get_text_blocking(METRICS.parse().unwrap(), path, Duration::from_secs(2)))?
    }

    fn status(&self, path: &str) -> Option<u16> {
        self.get(path).ok().map(|(status, _)| status)
    }

    /// Wait until /readyz answers `status`; how long that took.
    fn wait_status(&self, status: u16) -> Duration {
        let start = Instant::now();
        loop {
            if self.status("/readyz") == Some(status) {
                return start.elapsed();
            }
            assert!(start.elapsed() < BOUND, "{}: /readyz never answered {status}\n{}", self.node, self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&self) -> Duration {
        self.wait_status(200)
    }

    /// A sample of /metrics, e.g. `netfence_syncs_total{mode="delta"}`; 0 when absent.
    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").unwrap();
        let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
        value.map_or(0.0, |v| v.parse().unwrap())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kill the agent's kept-open `nft -i` (its child process): with the
    /// binary broken too, every later nft call fails, as when nft crashes.
    fn kill_nft_session(&self) {
        let me = self.child.id().to_string();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // pid (comm) state ppid ...
            let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
            if rest.split_whitespace().nth(1) == Some(me.as_str()) {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("NETFENCE_E2E_LOGS").is_some() {
            eprintln!("--- log of the {} agent ---\n{}", self.node, self.log_text());
        }
    }
}

/// What the transactions of an agent contained so far.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Transactions {
    delta_syncs: f64,
    ops: f64,
    element_ops: f64,
}

impl Transactions {
    fn of(a: &Agent) -> Transactions {
        Transactions {
            delta_syncs: a.metric("netfence_syncs_total{mode=\"delta\"}"),
            ops: a.metric("netfence_transaction_ops_sum"),
            element_ops: a.metric("netfence_transaction_element_ops_sum"),
        }
    }

    /// Wait for `a`'s next delta sync after `self`; what it (and any other
    /// sync since) added.
    fn next(self, a: &Agent) -> Transactions {
        let start = Instant::now();
        loop {
            let now = Transactions::of(a);
            if now.delta_syncs > self.delta_syncs {
                return Transactions {
                    delta_syncs: now.delta_syncs - self.delta_syncs,
                    ops: now.ops - self.ops,
                    element_ops: now.element_ops - self.element_ops,
                };
            }
            assert!(start.elapsed() < BOUND, "{}: no delta sync\n{}", a.node, a.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------

#[test]
fn policies_written_to_the_folder_are_enforced_within_a_bound() {
    let Some(s) = setup(&[]) else { return };
    let start = Instant::now();
    let agents = s.agents();
    eprintln!("agents ready {:?} after start", start.elapsed());
    s.check_matrix();

    let written = Instant::now();
    s.write("policy-x-deny.yaml", DENY_X);
    let denied = s.wait_verdict("x/b", "x/a", false, written);
    s.check_matrix();

    let removed = Instant::now();
    s.remove("policy-x-deny.yaml");
    let allowed = s.wait_verdict("x/b", "x/a", true, removed);
    s.check_matrix();
    eprintln!("policy added -> denied in packets within {denied:?}; removed -> allowed within {allowed:?}");
    for a in &agents {
        assert_eq!(a.metric("netfence_apply_failures_total{mode=\"delta\"}"), 0.0, "{}", a.log_text());
        assert_eq!(a.metric("netfence_syncs_total{mode=\"full\"}"), 1.0);
    }
}

/// Admin tier: nothing from y enters x, x/a may not reach z/b.
const CNP_ADMIN: &str = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: x-guard}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: \"y\"}}}]}]
  egress: [{action: Deny, to: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}}]}]
";

/// Baseline tier: nothing from z enters pods no NetworkPolicy isolates.
const CNP_BASELINE: &str = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-z}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}]
";

/// Cluster policies written at run time are enforced in packets (against
/// the reference on every pair), as deltas, and go away when removed.
#[test]
fn cluster_policies_written_at_run_time_are_enforced() {
    let Some(s) = setup(&[]) else { return };
    let agents = s.agents();
    s.check_matrix();
    let written = Instant::now();
    s.write("cnp-admin.yaml", CNP_ADMIN);
    let admin = s.wait_verdict("y/b", "x/a", false, written);
    s.check_matrix();
    let written = Instant::now();
    s.write("cnp-baseline.yaml", CNP_BASELINE);
    let baseline = s.wait_verdict("z/a", "y/b", false, written);
    s.check_matrix();
    s.remove("cnp-admin.yaml");
    s.remove("cnp-baseline.yaml");
    let removed = Instant::now();
    s.wait_verdict("y/b", "x/a", true, removed);
    s.wait_verdict("z/a", "y/b", true, removed);
    s.check_matrix();
    eprintln!("Admin CNP denied in packets within {admin:?}, Baseline CNP within {baseline:?}");
    for a in &agents {
        assert_eq!(a.metric("netfence_apply_failures_total{mode=\"delta\"}"), 0.0, "{}", a.log_text());
        assert_eq!(a.metric("netfence_syncs_total{mode=\"full\"}"), 1.0, "every change a delta");
    }
}

#[test]
fn a_new_pod_or_a_relabel_is_element_operations_only() {
    let Some(s) = setup(&["pod-z-c.yaml"]) else { return };
    let [node1, node2] = s.agents();
    // Not in the folder yet: node-1 fails closed for an address in its pod
    // CIDR it was not told about, both ways.
    s.check(&[("x/a", "z/c", false), ("z/c", "x/a", false), ("x/b", "z/c", false)]);

    let before = [Transactions::of(&node1), Transactions::of(&node2)];
    let written = Instant::now();
    s.write("pod-z-c.yaml", s.manifest("pod-z-c.yaml"));
    let allowed = s.wait_verdict("x/a", "z/c", true, written);
    eprintln!("pod added -> reachable in packets within {allowed:?}");
    for (a, before) in [&node1, &node2].into_iter().zip(before) {
        let added = before.next(a);
        assert!(added.ops == added.element_ops, "{}: {added:?}\n{}", a.node, a.log_text());
    }
    assert!(Transactions::of(&node1).element_ops > before[0].element_ops, "node-1 added the pod's elements");
    s.check_matrix();

    // y/c becomes a client of y/a: one element in the peers' set.
    let before = Transactions::of(&node1);
    s.check(&[("y/c", "y/a", false)]);
    let written = Instant::now();
    s.write("pod-y-c.yaml", &with_client_role(s.manifest("pod-y-c.yaml")));
    let allowed = s.wait_verdict("y/c", "y/a", true, written);
    eprintln!("pod relabelled -> allowed in packets within {allowed:?}");
    let added = before.next(&node1);
    assert!(added.ops == added.element_ops && added.ops > 0.0, "{added:?}\n{}", node1.log_text());
    s.check_matrix();
}

/// An `nft` on the agent's PATH that fails or runs the real one.
struct FakeNft {
    dir: PathBuf,
}

impl FakeNft {
    fn new(s: &Setup) -> FakeNft {
        let dir = s.scratch.path().join("bin");
        std::fs::create_dir(&dir).unwrap();
        let fake = FakeNft { dir };
        fake.set(true);
        fake
    }

    fn set(&self, works: bool) {
        use std::os::unix::fs::PermissionsExt;
        let body = if works { "exec /usr/sbin/nft \"$@\"" } else { "echo 'Error: nft is broken for this test' >&2; exit 1" };
        let tmp = self.dir.join(".nft.tmp");
        std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(tmp, self.dir.join("nft")).unwrap();
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.dir.display()))
    }
}

#[test]
fn a_failing_nft_keeps_the_old_rules_and_recovers() {
    let Some(s) = setup(&[]) else { return };
    let nft = FakeNft::new(&s);
    let node1 = s.agent("node-1", Some(&nft.path()));
    let node2 = s.agent("node-2", None);
    node1.wait_ready();
    node2.wait_ready();
    let old = [("x/b", "x/a", true), ("x/b", "y/a", false), ("y/b", "y/a", true)];
    let new = [("x/b", "x/a", false), ("x/b", "y/a", true), ("y/b", "y/a", true)];
    s.check(&old);

    nft.set(false);
    node1.kill_nft_session();
    s.write("policy-x-deny.yaml", DENY_X);
    s.remove("policy-y-a.yaml");
    let unready = node1.wait_status(503);
    eprintln!("nft failing -> /readyz 503 after {unready:?}");
    assert_eq!(node1.status("/healthz"), Some(200));
    assert!(node1.metric("netfence_apply_failures_total{mode=\"full\"}") >= 1.0, "{}", node1.log_text());
    s.check(&old);
    // Retries (1 s apart at most) keep failing and change nothing.
    std::thread::sleep(Duration::from_millis(1200));
    s.check(&old);
    assert_eq!(node1.status("/readyz"), Some(503));

    nft.set(true);
    let ready = node1.wait_ready();
    eprintln!("nft back -> ready again after {ready:?}");
    s.check(&new);
    s.check_matrix();
    assert!(node1.log_text().contains("the last good ruleset stays in place"), "{}", node1.log_text());
}

#[test]
fn killing_and_restarting_the_agents_never_changes_a_verdict() {
    let Some(s) = setup(&[]) else { return };
    let mut agents = s.agents();
    // Enforced by node-1's ingress and node-2's egress.
    let cases = [("y/b", "y/a", true), ("x/b", "y/a", false), ("z/b", "z/a", true), ("z/b", "x/a", false)];
    let flows: Vec<(&str, &str)> = cases.iter().map(|(f, t, _)| (*f, *t)).collect();
    let expected: Vec<bool> = cases.iter().map(|c| c.2).collect();
    s.check(&cases);

    // Rounds of probes (each ~0.8 s: denied flows wait out their attempts)
    // run throughout; the main thread paces itself on completed rounds.
    let stop = AtomicBool::new(false);
    let rounds: Mutex<Vec<(Instant, Vec<bool>)>> = Mutex::new(Vec::new());
    let done_since = |t: Instant| rounds.lock().unwrap().iter().filter(|(sent, _)| *sent >= t).count();
    let wait_rounds = |t: Instant, n: usize| {
        let start = Instant::now();
        while done_since(t) < n {
            assert!(start.elapsed() < BOUND * 2, "the probe rounds stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (killed, ready) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let got = s.allowed(&flows);
                rounds.lock().unwrap().push((sent, got));
            }
        });
        let started = Instant::now();
        wait_rounds(started, 1);
        let killed = Instant::now();
        for a in &mut agents {
            a.child.kill().unwrap(); // SIGKILL: no chance to clean up
            a.child.wait().unwrap();
        }
        // A while with no agent at all: the rules stay in the kernel.
        wait_rounds(killed, 1);
        agents = [s.agent("node-1", None), s.agent("node-2", None)];
        for a in &agents {
            a.wait_ready();
        }
        let ready = Instant::now();
        wait_rounds(ready, 2);
        stop.store(true, Ordering::Relaxed);
        (killed, ready)
    });

    let rounds = rounds.into_inner().unwrap();
    let wrong: Vec<String> = rounds
        .iter()
        .filter(|(_, got)| *got != expected)
        .map(|(sent, got)| format!("{:?} after the kill: {got:?}", sent.saturating_duration_since(killed)))
        .collect();
    assert!(wrong.is_empty(), "expected {expected:?} in every round:\n{wrong:#?}");
    let during = rounds.iter().filter(|(sent, _)| *sent >= killed && *sent <= ready).count();
    eprintln!("{} probe rounds, {during} sent between the kill and ready again ({:?})", rounds.len(), ready - killed);
    assert!(during >= 1);

    // The restart adopted the table: one full sync, and ours is the only table.
    for a in &agents {
        assert_eq!(a.metric("netfence_syncs_total{mode=\"full\"}"), 1.0);
        let out = a.ns.command("nft").unwrap().args(["list", "tables"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "table inet netfence\n", "{}", a.node);
    }
    s.check_matrix();
}

#[test]
fn a_denied_probe_is_logged_once_naming_its_policy_and_an_allowed_one_not_at_all() {
    let Some(s) = setup(&[]) else { return };
    let flags = ["--drop-log", "full", "--drop-log-rate", "5", "--log-format", "json"];
    let agents = [Agent::start(&s, "node-1", None, &flags), Agent::start(&s, "node-2", None, &flags)];
    for a in &agents {
        a.wait_ready();
    }
    // The policy arrives as a delta: its rules, log rules included, come
    // from the incremental engine.
    let written = Instant::now();
    s.write("policy-x-deny.yaml", DENY_X);
    s.wait_verdict("x/b", "x/a", false, written);
    assert_eq!(agents[0].metric("netfence_syncs_total{mode=\"full\"}"), 1.0, "the policy was not a delta");
    let drops = |a: &Agent| -> Vec<serde_json::Value> {
        a.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "netfence::drop")
            .collect()
    };
    let all = || agents.iter().flat_map(drops).collect::<Vec<_>>();
    let counted = r#"netfence_drops_logged_total{policy="x/deny-ingress",direction="ingress",kind="isolated"}"#;
    // The bucket refills (5 a second) and the waiting's lines are in.
    std::thread::sleep(Duration::from_millis(1500));
    let (seen, counted_before) = (all().len(), agents[0].metric(counted));

    // One SYN each: a single attempt, shorter than TCP's first retransmission.
    let once = ProbeOptions { timeout: Duration::from_millis(400), attempts: 1, ..s.dp.options.clone() };
    assert!(s.dp.probe_with(&[s.spec("y/b", "y/a")], &once).unwrap()[0].allowed, "y/b is a client of y/a");
    assert!(!s.dp.probe_with(&[s.spec("x/b", "x/a")], &once).unwrap()[0].allowed, "nothing enters x");
    let start = Instant::now();
    while all().len() == seen {
        assert!(start.elapsed() < BOUND, "no drop logged\n{}\n{}", agents[0].log_text(), agents[1].log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Anything late would have arrived by now.
    std::thread::sleep(Duration::from_millis(500));
    let lines = all().split_off(seen);
    assert_eq!(lines.len(), 1, "exactly one line, for the denied SYN and none for the allowed flow: {lines:#?}");
    let l = &lines[0];
    let field = |k: &str| l[k].as_str().unwrap_or_default().to_string();
    assert_eq!(
        [field("direction"), field("src_name"), field("dst_name"), field("protocol"), field("policies"), field("kind")],
        ["ingress", "x/b", "x/a", "TCP", "x/deny-ingress", "isolated"].map(String::from),
        "{l}"
    );
    assert_eq!(l["dport"], 80, "{l}");
    assert_eq!(field("reason"), "denied: isolated by x/deny-ingress, and no ingress rule matches");
    assert!(drops(&agents[1]).is_empty(), "x/a lives on node-1, which judged it");
    assert_eq!(agents[0].metric(counted), counted_before + 1.0, "{}", agents[0].get("/metrics").unwrap().1);

    // A flood: 100 denied datagrams in a moment. The kernel's bucket (5 a
    // second, as many in a burst) lets only a few lines through.
    let udp = ProbeSpec { protocol: Protocol::Udp, ..s.spec("x/b", "x/a") };
    let flood = ProbeOptions { timeout: Duration::from_millis(200), attempts: 1, parallel: 100 };
    let seen = all().len();
    let started = Instant::now();
    assert!(s.dp.probe_with(&vec![udp; 100], &flood).unwrap().iter().all(|r| !r.allowed));
    std::thread::sleep(Duration::from_millis(500));
    let logged = all().len() - seen;
    let most = 5 + (5.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!((1..=most).contains(&logged), "{logged} lines for 100 drops in {:?}, at most {most}", started.elapsed());
    eprintln!("flood: 100 drops, {logged} lines in {:?}", started.elapsed());
}
