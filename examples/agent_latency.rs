//! Event-to-applied latency and memory of `netfence agent` on a generated
//! 10,000-pod cluster, fed through the API server (kube-rs watchers on the
//! in-process fake API server) and through `--source DIR`, side by side in
//! one run, on the real kernel in private network namespaces (the agent's
//! nft calls never touch the host's ruleset).
//!
//!     sudo cargo run --release --example agent_latency [-- --size medium --runs 20 --poll-interval 50ms]
//!
//! The cluster is `netfence gen --size medium` (10k pods, 100 nodes, 1k
//! namespaces, 1k policies; see `crate::gen`). The agent runs for the node
//! of the first pod (by namespace and name) that a policy isolates, so that
//! changes around it reach its chains.
//!
//! Events, each measured `--runs` times:
//! - pod add: one more replica of that pod (same namespace, labels, ports
//!   and node, a free address), so the sync is element operations only;
//! - pod delete: that replica deleted;
//! - policy change: the port of a policy selecting that pod, toggled (a
//!   rule change in one chain).
//!
//! For each: `e2e`, from the change (the API object applied, or the file
//! renamed into the folder) to the agent's commit (its
//! `last_successful_sync_timestamp`); for the folder this includes the poll
//! (every `--poll-interval`) and reloading the whole folder. `agent`, from
//! the agent's index changing to the commit (its `event_to_applied`
//! histogram, one event per run; no debounce: an idle agent syncs at once).
//! `sync`, compile + diff + `nft` (its `sync_duration{mode="delta"}`). The
//! agent is this example re-run as `agent_latency agent ...` (the same code
//! as `netfence agent`), so its memory is read from /proc/PID/status.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use netfence::agent::fake_api::FakeApi;
use netfence::agent::{Key, Kind};
use netfence::bench::agent::AgentProcess;
use netfence::gen::{Plan, Size};
use netfence::model::load::{manifest_files, parse_docs};
use netfence::model::{load_paths, Pod};
use netfence::netns::{self, Netns};
use serde_json::{json, Value};

fn main() {
    // Re-run as the agent itself.
    if std::env::args().nth(1).as_deref() == Some("agent") {
        std::process::exit(netfence::cli::main());
    }
    let mut size = Size::Medium;
    let mut runs = 20usize;
    let mut poll = "50ms".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--size" => size = Size::parse(&value()).unwrap_or_else(|e| usage(&e)),
            "--runs" => runs = value().parse().unwrap_or_else(|_| usage("--runs N")),
            "--poll-interval" => poll = value(),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if runs == 0 {
        usage("--runs: at least 1");
    }
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED: {why}");
        std::process::exit(0);
    }
    if let Err(e) = measure(size, runs, &poll) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn usage(why: &str) -> ! {
    eprintln!("{why}\nusage: agent_latency [--size small|medium|large] [--runs N] [--poll-interval DURATION]");
    std::process::exit(2);
}

fn measure(size: Size, runs: usize, poll: &str) -> anyhow::Result<()> {
    let folder = tempfile::tempdir()?;
    let spec = size.spec(1);
    let written = Plan::new(spec)?.write_dir(folder.path())?;
    let events = Events::new(folder.path())?;
    println!(
        "cluster: {} ({} pods, {} nodes, {} namespaces, {} policies)\nagent for {} ({} pods there); events around {} (selected by {} policies)",
        spec.command(),
        written.pods,
        written.nodes,
        written.namespaces,
        written.policies,
        events.node,
        events.node_pods,
        events.template.key(),
        events.selected_by,
    );
    let mut tables = Vec::new();
    for source in [Source::Api, Source::Folder] {
        let ns = Netns::create("nflat")?;
        ns.ip_batch("link set lo up\n")?;
        let feed = match source {
            Source::Api => Feed::api(&ns, folder.path())?,
            Source::Folder => Feed::Folder(folder.path().to_path_buf()),
        };
        let name = match source {
            Source::Api => "api watch".to_string(),
            Source::Folder => format!("--source (poll {poll})"),
        };
        println!("\n{name}:");
        tables.push((name, measure_feed(&ns, &feed, &events, runs, poll)?));
    }
    println!("\n{runs} runs each; milliseconds, min / median / p99 (nearest rank)");
    println!("{:<36} {:>26} {:>26} {:>24}", "", "e2e (change -> committed)", "agent (index -> committed)", "sync (compile+diff+nft)");
    for (feed, table) in &tables {
        for (event, s) in table {
            let row = format!("{feed}: {event}");
            println!("{row:<36} {:>26} {:>26} {:>24}", s.summary(|r| r.e2e), s.summary(|r| r.agent), s.summary(|r| r.sync));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Api,
    Folder,
}

/// Run one agent on `feed` through the events; the samples per event.
fn measure_feed(ns: &Netns, feed: &Feed, events: &Events, runs: usize, poll: &str) -> anyhow::Result<Vec<(&'static str, Samples)>> {
    feed.put(POLICY_FILE, &events.policy(8080))?;
    let log = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    let agent = AgentProcess::start(ns, &std::env::current_exe()?, &events.node, &feed.args(poll), log.path())?;
    agent.wait(Duration::from_secs(300), |a| Ok(a.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false)))?;
    println!(
        "first full sync: ready {:.2?} after start ({} rules, {} sets, {} elements); memory {}",
        started.elapsed(),
        agent.metric("netfence_ruleset_rules")?,
        agent.metric("netfence_ruleset_sets")?,
        agent.metric("netfence_ruleset_elements")?,
        memory(&agent)?
    );
    let (mut add, mut delete, mut policy) = (Samples::default(), Samples::default(), Samples::default());
    for run in 0..runs {
        let (pod, ip) = events.pod(run);
        let elements = agent.metric("netfence_ruleset_elements")?;
        add.push(event(&agent, || feed.put(POD_FILE, &pod))?);
        anyhow::ensure!(agent.metric("netfence_ruleset_elements")? > elements, "the pod add added no element");
        if run == 0 {
            let out = ns.command("nft")?.args(["list", "ruleset"]).output()?;
            anyhow::ensure!(String::from_utf8_lossy(&out.stdout).contains(&ip.to_string()), "{ip} is not in the kernel's ruleset");
        }
        delete.push(event(&agent, || feed.remove(POD_FILE, &pod))?);
        anyhow::ensure!(agent.metric("netfence_ruleset_elements")? == elements, "the pod delete left elements");
        let port = if run % 2 == 0 { 8081 } else { 8080 };
        policy.push(event(&agent, || feed.put(POLICY_FILE, &events.policy(port)))?);
        if run % 10 == 9 {
            println!("memory after {} events: {}", 3 * (run + 1), memory(&agent)?);
        }
    }
    anyhow::ensure!(agent.metric("netfence_apply_failures_total{mode=\"delta\"}")? == 0.0, "a delta failed; see the log");
    let ops = |s: &Samples| {
        let (o, e) = (s.0.iter().map(|r| r.ops).sum::<f64>(), s.0.iter().map(|r| r.element_ops).sum::<f64>());
        format!("{:.1} ops ({:.1} element ops)", o / s.0.len() as f64, e / s.0.len() as f64)
    };
    println!("transactions: pod add {}; pod delete {}; policy change {}", ops(&add), ops(&delete), ops(&policy));
    drop(agent);
    if std::env::var_os("AGENT_LOG").is_some() {
        println!("--- agent log ---\n{}", std::fs::read_to_string(log.path())?);
    }
    Ok(vec![("pod add", add), ("pod delete", delete), ("policy change", policy)])
}

/// Where the agent learns the cluster from, and how an event is made there.
enum Feed {
    Folder(PathBuf),
    /// The fake API server listens inside the agent's namespace; fields
    /// drop in order, the server before its runtime.
    Api { api: FakeApi, kubeconfig: tempfile::NamedTempFile, _runtime: tokio::runtime::Runtime },
}

impl Feed {
    /// A fake API server inside `ns` holding every object of `folder`.
    fn api(ns: &Netns, folder: &Path) -> anyhow::Result<Feed> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        // Bound on a thread inside the namespace, so the socket is there.
        let api = ns.run(|| runtime.block_on(FakeApi::start()))??;
        let watched = ["Namespace", "Node", "Pod", "NetworkPolicy"];
        for file in manifest_files(folder)? {
            let text = std::fs::read_to_string(&file)?;
            for doc in parse_docs(&file.display().to_string(), &text)? {
                if doc.value.get("kind").and_then(Value::as_str).is_some_and(|k| watched.contains(&k)) {
                    api.apply(&doc.value);
                }
            }
        }
        let mut kubeconfig = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(
            &mut kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
                api.url()
            )
            .as_bytes(),
        )?;
        Ok(Feed::Api { api, kubeconfig, _runtime: runtime })
    }

    fn args(&self, poll: &str) -> Vec<OsString> {
        match self {
            Feed::Folder(dir) => vec!["--source".into(), dir.into(), "--poll-interval".into(), poll.into()],
            Feed::Api { kubeconfig, .. } => vec!["--kubeconfig".into(), kubeconfig.path().into()],
        }
    }

    /// Create or replace `obj` (kept in `file` in a folder).
    fn put(&self, file: &str, obj: &Value) -> anyhow::Result<()> {
        match self {
            Feed::Folder(dir) => write(dir, file, &obj.to_string()),
            Feed::Api { api, .. } => {
                api.apply(obj);
                Ok(())
            }
        }
    }

    fn remove(&self, file: &str, obj: &Value) -> anyhow::Result<()> {
        match self {
            Feed::Folder(dir) => Ok(std::fs::remove_file(dir.join(file))?),
            Feed::Api { api, .. } => {
                let kind = match obj["kind"].as_str() {
                    Some("Pod") => Kind::Pod,
                    _ => Kind::NetworkPolicy,
                };
                let meta = &obj["metadata"];
                let key = Key::namespaced(meta["namespace"].as_str().unwrap_or_default(), meta["name"].as_str().unwrap_or_default());
                anyhow::ensure!(api.delete(kind, &key), "{key} was not there to delete");
                Ok(())
            }
        }
    }
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

/// Cause one change with `change`, wait for the delta sync that applies
/// it, and measure.
fn event(agent: &AgentProcess, change: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Run> {
    let delta = "netfence_syncs_total{mode=\"delta\"}";
    let before = [
        agent.metric(delta)?,
        agent.metric("netfence_event_to_applied_seconds_sum")?,
        agent.metric("netfence_sync_duration_seconds_sum{mode=\"delta\"}")?,
        agent.metric("netfence_transaction_ops_sum")?,
        agent.metric("netfence_transaction_element_ops_sum")?,
    ];
    // Let the agent's next poll start from a quiet folder.
    std::thread::sleep(Duration::from_millis(300));
    let written = SystemTime::now();
    change()?;
    agent.wait(Duration::from_secs(60), |a| Ok(a.metric(delta)? > before[0]))?;
    let committed = agent.metric("netfence_last_successful_sync_timestamp_seconds")?;
    let unix = written.duration_since(SystemTime::UNIX_EPOCH)?.as_secs_f64();
    anyhow::ensure!(agent.metric(delta)? == before[0] + 1.0, "one change became several syncs");
    Ok(Run {
        e2e: committed - unix,
        agent: agent.metric("netfence_event_to_applied_seconds_sum")? - before[1],
        sync: agent.metric("netfence_sync_duration_seconds_sum{mode=\"delta\"}")? - before[2],
        ops: agent.metric("netfence_transaction_ops_sum")? - before[3],
        element_ops: agent.metric("netfence_transaction_element_ops_sum")? - before[4],
    })
}

/// VmRSS and VmHWM of the agent process.
fn memory(agent: &AgentProcess) -> anyhow::Result<String> {
    let (rss, hwm) = agent.memory()?;
    Ok(format!("VmRSS {rss} kB, VmHWM {hwm} kB"))
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join(name))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The events.

const POD_FILE: &str = "zz-latency-pod.json";
const POLICY_FILE: &str = "zz-latency-policy.json";

/// What the events are made of, chosen from the generated cluster.
struct Events {
    node: String,
    node_pods: usize,
    /// The pod whose replicas come and go, and whose policy changes.
    template: Pod,
    /// How many of the generated policies select it.
    selected_by: usize,
    /// Addresses in its node's podCIDR that no pod uses.
    free: Vec<IpAddr>,
}

impl Events {
    fn new(folder: &Path) -> anyhow::Result<Events> {
        let cluster = load_paths(&[folder])?.0;
        let ir = netfence::ir::resolve(&cluster);
        let (id, template) = cluster
            .pods
            .iter()
            .enumerate()
            .find(|(id, p)| p.is_policy_pod() && p.node.is_some() && !ir.selecting[*id].is_empty())
            .context("no pod is isolated by a policy")?;
        let node = template.node.clone().unwrap_or_default();
        let cidr = cluster.nodes.get(&node).and_then(|n| n.pod_cidrs.first()).context("the node has no podCIDR")?;
        let used: HashSet<IpAddr> = cluster.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        let free: Vec<IpAddr> = cidr.hosts().filter(|ip| !used.contains(ip)).skip(1).take(50).collect();
        anyhow::ensure!(!free.is_empty(), "no free address in {cidr}");
        let node_pods = cluster.pods.iter().filter(|p| p.node.as_deref() == Some(node.as_str()) && p.takes_part()).count();
        let selected_by = ir.selecting[id].len();
        Ok(Events { node, node_pods, template: (**template).clone(), selected_by, free })
    }

    /// The `run`th replica of the template, and its address.
    fn pod(&self, run: usize) -> (Value, IpAddr) {
        let t = &self.template;
        let ip = self.free[run % self.free.len()];
        let ports: Vec<Value> = t
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol.to_string()}))
            .collect();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("{}-latency-{run}", t.name), "namespace": t.namespace, "labels": t.labels},
            "spec": {"nodeName": t.node, "containers": [{"name": "main", "image": "registry.example/app:1", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
        });
        (pod, ip)
    }

    /// A policy selecting the template's labels, admitting its namespace on `port`.
    fn policy(&self, port: u16) -> Value {
        let t = &self.template;
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "latency-probe", "namespace": t.namespace},
            "spec": {
                "podSelector": {"matchLabels": t.labels},
                "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": port, "protocol": "TCP"}]}],
            },
        })
    }
}
