//! Event-to-applied latency and memory of `netfence agent --source` on a
//! 10,000-pod cluster, measured on the real kernel in a private network
//! namespace (the agent's nft calls never touch the host's ruleset).
//!
//!     sudo cargo run --release --example agent_latency [-- --pods 10000 --runs 20]
//!     cargo run --release --example agent_latency -- --generate DIR   # the manifests only
//!
//! The cluster is generated here, deterministically: 100 nodes, 100
//! namespaces of 100 pods (one per node, three tiers), and four policies
//! per namespace (default deny, frontends from the team's namespaces,
//! backends from frontends, databases from backends), so node-0 holds 100
//! pods whose peer sets span the whole cluster. Manifests are one file per
//! namespace's pods, as a folder of exported manifests would be.
//!
//! Events, each measured `--runs` times:
//! - pod add: a file with one new pod on node-0, labelled like an existing
//!   local pod (so the sync is element operations only), then
//! - pod delete: that file removed;
//! - policy change: the port of one policy selecting a local pod, toggled
//!   (rule changes in one chain).
//!
//! For each: `e2e`, from the file's rename to the agent's commit (the
//! agent's `last_successful_sync_timestamp`), which includes the --source
//! poll (every `--poll-interval`) and reloading the whole folder; `agent`,
//! from the agent noticing the change to the commit (its
//! `event_to_applied` histogram, one event per run); `sync`, compile + diff
//! + `nft` (its `sync_duration{mode="delta"}`). The agent is this example
//! re-run as `agent_latency agent ...` (the same code as `netfence agent`),
//! so its memory is read from /proc/PID/status.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use netfence::agent::http;
use netfence::netns::{self, Netns};

const METRICS: &str = "127.0.0.1:9964";
const NODE: &str = "node-0";
const NODES: usize = 100;
const TIERS: [&str; 3] = ["frontend", "backend", "db"];

fn main() {
    // Re-run as the agent itself.
    if std::env::args().nth(1).as_deref() == Some("agent") {
        std::process::exit(netfence::cli::main());
    }
    let mut pods = 10_000usize;
    let mut runs = 20usize;
    let mut poll = "50ms".to_string();
    let mut generate_only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--pods" => pods = value().parse().unwrap_or_else(|_| usage("--pods N")),
            "--runs" => runs = value().parse().unwrap_or_else(|_| usage("--runs N")),
            "--poll-interval" => poll = value(),
            "--generate" => generate_only = Some(std::path::PathBuf::from(value())),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if pods > 25_000 {
        usage("--pods: at most 25000 (100 nodes, one /24 each)");
    }
    if let Some(dir) = generate_only {
        let written = std::fs::create_dir_all(&dir).map_err(anyhow::Error::from).and_then(|_| generate(&dir, pods));
        if let Err(e) = written {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED: {why}");
        std::process::exit(0);
    }
    if let Err(e) = measure(pods, runs, &poll) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn usage(why: &str) -> ! {
    eprintln!("{why}\nusage: agent_latency [--pods N] [--runs N] [--poll-interval DURATION]\n       agent_latency [--pods N] --generate DIR   (only write the manifests)");
    std::process::exit(2);
}

fn measure(pods: usize, runs: usize, poll: &str) -> anyhow::Result<()> {
    let folder = tempfile::tempdir()?;
    let generated = Instant::now();
    let namespaces = generate(folder.path(), pods)?;
    println!(
        "cluster: {pods} pods, {NODES} nodes, {namespaces} namespaces, {} policies, agent for {NODE}; --poll-interval {poll} (generated in {:.1?})",
        namespaces * 4,
        generated.elapsed()
    );
    let ns = Netns::create("nflat")?;
    ns.ip_batch("link set lo up\n")?;
    let log = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    let agent = Agent::start(&ns, folder.path(), poll, log.path())?;
    agent.wait(Duration::from_secs(300), |a| Ok(a.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false)))?;
    println!(
        "first full sync: ready {:.2?} after start ({} rules, {} sets, {} elements); memory {}",
        started.elapsed(),
        agent.metric("netfence_ruleset_rules")?,
        agent.metric("netfence_ruleset_sets")?,
        agent.metric("netfence_ruleset_elements")?,
        agent.memory()?
    );

    let mut add = Samples::default();
    let mut delete = Samples::default();
    let mut policy = Samples::default();
    for run in 0..runs {
        let pod = new_pod(run);
        let elements = agent.metric("netfence_ruleset_elements")?;
        add.push(agent.event(|| write(folder.path(), "zz-new-pod.yaml", &pod))?);
        let grown = agent.metric("netfence_ruleset_elements")? - elements;
        anyhow::ensure!(grown > 0.0, "the pod add added no element");
        if run == 0 {
            let out = ns.command("nft")?.args(["list", "ruleset"]).output()?;
            let ip = format!("10.64.0.{}", 200 + run);
            anyhow::ensure!(String::from_utf8_lossy(&out.stdout).contains(&ip), "{ip} is not in the kernel's ruleset");
        }
        delete.push(agent.event(|| Ok(std::fs::remove_file(folder.path().join("zz-new-pod.yaml"))?))?);
        anyhow::ensure!(agent.metric("netfence_ruleset_elements")? == elements, "the pod delete left elements");
        let port = if run % 2 == 0 { 8081 } else { 8080 };
        policy.push(agent.event(|| write(folder.path(), "policies-000.yaml", &policies(0, port)))?);
        if run % 10 == 9 {
            println!("memory after {} events: {}", 3 * (run + 1), agent.memory()?);
        }
    }
    anyhow::ensure!(agent.metric("netfence_apply_failures_total{mode=\"delta\"}")? == 0.0, "a delta failed; see the log");
    println!("\n{runs} runs each; milliseconds, min / median / p99 (nearest rank)");
    println!("{:<16} {:>28} {:>28} {:>28}", "event", "e2e (write -> committed)", "agent (noticed -> committed)", "sync (compile+diff+nft)");
    for (name, s) in [("pod add", &add), ("pod delete", &delete), ("policy change", &policy)] {
        println!("{name:<16} {:>28} {:>28} {:>28}", s.summary(|r| r.e2e), s.summary(|r| r.agent), s.summary(|r| r.sync));
    }
    let ops = |s: &Samples| {
        let (o, e) = (s.0.iter().map(|r| r.ops).sum::<f64>(), s.0.iter().map(|r| r.element_ops).sum::<f64>());
        format!("{:.1} ops/transaction ({:.1} element ops)", o / s.0.len() as f64, e / s.0.len() as f64)
    };
    println!("transactions: pod add {}; pod delete {}; policy change {}", ops(&add), ops(&delete), ops(&policy));
    println!("agent memory at the end: {}", agent.memory()?);
    drop(agent);
    if std::env::var_os("AGENT_LOG").is_some() {
        println!("--- agent log ---\n{}", std::fs::read_to_string(log.path())?);
    }
    Ok(())
}

/// One event's measurements, in seconds.
#[derive(Debug, Clone, Copy)]
struct Run {
    e2e: f64,
    agent: f64,
    sync: f64,
    ops: f64,
    element_ops: f64,
}

#[derive(Default)]
struct Samples(Vec<Run>);

impl Samples {
    fn push(&mut self, r: Run) {
        self.0.push(r)
    }

    fn summary(&self, field: impl Fn(&Run) -> f64) -> String {
        let mut v: Vec<f64> = self.0.iter().map(field).collect();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] * 1000.0;
        format!("{:.1} / {:.1} / {:.1}", v[0] * 1000.0, rank(0.5), rank(0.99))
    }
}

struct Agent<'a> {
    ns: &'a Netns,
    child: RefCell<Child>,
}

impl<'a> Agent<'a> {
    fn start(ns: &'a Netns, folder: &Path, poll: &str, log: &Path) -> anyhow::Result<Agent<'a>> {
        let child = ns
            .command(std::env::current_exe()?)?
            .args(["agent", "--node", NODE, "--metrics-addr", METRICS, "--poll-interval", poll])
            .arg("--source")
            .arg(folder)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        Ok(Agent { ns, child: RefCell::new(child) })
    }

    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr = METRICS.parse().expect("a socket address");
        self.ns.run(|| http::get_text_blocking(addr, path, Duration::from_secs(5)))?
    }

    /// A sample of /metrics; 0 when absent.
    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (_, text) = self.get("/metrics")?;
        let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
        Ok(value.map_or(Ok(0.0), str::parse)?)
    }

    fn wait(&self, bound: Duration, mut done: impl FnMut(&Self) -> anyhow::Result<bool>) -> anyhow::Result<()> {
        let start = Instant::now();
        while !done(self)? {
            if let Some(status) = self.child.borrow_mut().try_wait()? {
                anyhow::bail!("the agent exited: {status}");
            }
            anyhow::ensure!(start.elapsed() < bound, "no answer within {bound:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Cause one change with `change`, wait for the delta sync that
    /// applies it, and measure.
    fn event(&self, change: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Run> {
        let delta = "netfence_syncs_total{mode=\"delta\"}";
        let before = [
            self.metric(delta)?,
            self.metric("netfence_event_to_applied_seconds_sum")?,
            self.metric("netfence_sync_duration_seconds_sum{mode=\"delta\"}")?,
            self.metric("netfence_transaction_ops_sum")?,
            self.metric("netfence_transaction_element_ops_sum")?,
        ];
        // Let the agent's next poll start from a quiet folder.
        std::thread::sleep(Duration::from_millis(300));
        let written = SystemTime::now();
        change()?;
        self.wait(Duration::from_secs(60), |a| Ok(a.metric(delta)? > before[0]))?;
        let committed = self.metric("netfence_last_successful_sync_timestamp_seconds")?;
        let unix = written.duration_since(SystemTime::UNIX_EPOCH)?.as_secs_f64();
        anyhow::ensure!(self.metric(delta)? == before[0] + 1.0, "one change became several syncs");
        Ok(Run {
            e2e: committed - unix,
            agent: self.metric("netfence_event_to_applied_seconds_sum")? - before[1],
            sync: self.metric("netfence_sync_duration_seconds_sum{mode=\"delta\"}")? - before[2],
            ops: self.metric("netfence_transaction_ops_sum")? - before[3],
            element_ops: self.metric("netfence_transaction_element_ops_sum")? - before[4],
        })
    }

    /// VmRSS and VmHWM of the agent process.
    fn memory(&self) -> anyhow::Result<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.borrow().id()))?;
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
        };
        Ok(format!("VmRSS {}, VmHWM {}", field("VmRSS:"), field("VmHWM:")))
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join(name))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The generated cluster.

/// Pod `i` lives in namespace `i / 100` on node `i % 100`, tier `i % 3`,
/// address 10.64.<node>.<2 + i / 100 % 250> (one /24 per node).
fn pod(i: usize, name: &str, ip: &str) -> String {
    let (ns, node, tier) = (i / 100, i % NODES, TIERS[i % 3]);
    format!(
        "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: ns-{ns:03}, labels: {{app: app-{app}, tier: {tier}}}}}
spec:
  nodeName: node-{node}
  containers:
  - name: main
    image: registry.example/app:1
    ports: [{{name: http, containerPort: 8080, protocol: TCP}}]
status: {{phase: Running, podIP: {ip}}}
",
        app = i % 7
    )
}

fn pod_ip(i: usize) -> String {
    let (node, slot) = (i % NODES, i / NODES);
    format!("10.64.{}.{}", node % 256, 2 + slot % 250)
}

/// The four policies of namespace `ns`; `port` is the frontends' port.
fn policies(ns: usize, port: u16) -> String {
    let team = ns % 10;
    format!(
        "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny, namespace: ns-{ns:03}}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: frontend-from-team, namespace: ns-{ns:03}}}
spec:
  podSelector: {{matchLabels: {{tier: frontend}}}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{team: t{team}}}}}}}]
    ports: [{{port: {port}, protocol: TCP}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: backend-from-frontend, namespace: ns-{ns:03}}}
spec:
  podSelector: {{matchLabels: {{tier: backend}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{tier: frontend}}}}}}]
    ports: [{{port: http}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db-from-backend, namespace: ns-{ns:03}}}
spec:
  podSelector: {{matchLabels: {{tier: db}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{tier: backend}}}}}}]
    ports: [{{port: 5432, protocol: TCP}}]
"
    )
}

/// The pod of the `run`th add: on node-0 in ns-000, labelled like pod 0
/// (the namespace's pod on node-0), so it joins existing sets and groups.
fn new_pod(run: usize) -> String {
    pod(0, &format!("new-{run}"), &format!("10.64.0.{}", 200 + run % 50))
}

/// Write the cluster into `dir`; the number of namespaces.
fn generate(dir: &Path, pods: usize) -> anyhow::Result<usize> {
    let namespaces = pods.div_ceil(100);
    let mut text = String::new();
    for n in 0..NODES {
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nspec: {{podCIDRs: [10.64.{n}.0/24]}}\nstatus: {{addresses: [{{type: InternalIP, address: 172.20.{}.{}}}]}}\n",
            n / 250,
            1 + n % 250
        );
    }
    write(dir, "nodes.yaml", &text)?;
    text.clear();
    for ns in 0..namespaces {
        let env = if ns % 4 == 0 { "dev" } else { "prod" };
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns:03}, labels: {{team: t{}, env: {env}}}}}\n",
            ns % 10
        );
    }
    write(dir, "namespaces.yaml", &text)?;
    for ns in 0..namespaces {
        let text: String =
            (ns * 100..((ns + 1) * 100).min(pods)).map(|i| pod(i, &format!("pod-{i}"), &pod_ip(i))).collect();
        write(dir, &format!("pods-{ns:03}.yaml"), &text)?;
        write(dir, &format!("policies-{ns:03}.yaml"), &policies(ns, 8080))?;
    }
    Ok(namespaces)
}
