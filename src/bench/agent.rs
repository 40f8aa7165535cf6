//! The agent end to end on a generated cluster: `netfence agent` as a child
//! process (so its memory is its own), watching the in-process fake API
//! server that holds every object of the cluster, applying into the kernel
//! of a scratch network namespace. Measured: the resident memory once the
//! first sync is done, and the event-to-applied latency of single events,
//! one at a time (a replica of a pod on the agent's node added, then
//! deleted, alternately), each from the API object written to the agent's
//! commit (its `last_successful_sync_timestamp`, so polling adds nothing).
//!
//! Effects: one scratch network namespace (`nfb<pid>-<n>`) and a kubeconfig
//! in a temporary file, both removed when done (also on failure); the
//! agent process is killed and reaped.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde_json::{json, Value};

use crate::agent::fake_api::FakeApi;
use crate::agent::{http, Key, Kind};
use crate::model::load::{manifest_files, parse_docs};
use crate::model::{Cluster, Pod};
use crate::netns::Netns;

/// What to run.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The `netfence` binary to run as the agent.
    pub exe: PathBuf,
    /// Events to time.
    pub events: usize,
}

#[derive(Debug, Clone)]
pub struct AgentReport {
    pub node: String,
    /// From start to ready (every kind listed, first full sync applied).
    pub first_sync: Duration,
    /// VmRSS and VmHWM of the agent once ready, in kB.
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// VmRSS after the events.
    pub rss_after_kb: u64,
    /// Event to applied, seconds, in event order.
    pub latencies: Vec<f64>,
    /// Delta syncs the events took (one each when every event is applied
    /// before the next is made).
    pub syncs: u64,
}

impl AgentReport {
    /// The `q` quantile (nearest rank) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Duration::from_secs_f64(v[rank - 1].max(0.0))
    }
}

/// The agent's metrics address inside its namespace.
const METRICS: &str = "127.0.0.1:9964";

/// Run the agent for `node` on the manifests in `dir` (the generated
/// `cluster`), with events around `template`, a policy pod on `node`.
pub fn run(dir: &Path, cluster: &Cluster, node: &str, template: &Pod, opts: &AgentOptions) -> anyhow::Result<AgentReport> {
    let free = free_addresses(cluster, node, 4).context("no free address in the node's podCIDR")?;
    let ns = Netns::create("nfb")?;
    ns.ip_batch("link set lo up\n")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // Bound on a thread inside the namespace, so the socket is there.
    let api = ns.run(|| runtime.block_on(FakeApi::start()))??;
    let watched = ["Namespace", "Node", "Pod", "NetworkPolicy"];
    for file in manifest_files(dir)? {
        let text = std::fs::read_to_string(&file)?;
        for doc in parse_docs(&file.display().to_string(), &text)? {
            if doc.value.get("kind").and_then(Value::as_str).is_some_and(|k| watched.contains(&k)) {
                api.apply(&doc.value);
            }
        }
    }
    let kubeconfig = tempfile_in_tmp("kubeconfig")?;
    std::fs::write(
        &kubeconfig.0,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            api.url()
        ),
    )?;
    let log = tempfile_in_tmp("agent-log")?;
    let started = Instant::now();
    let agent = AgentProcess::start(&ns, &opts.exe, node, &["--kubeconfig".into(), kubeconfig.0.clone().into()], &log.0)?;
    let ready = agent.wait(Duration::from_secs(900), |a| Ok(a.get("/readyz").is_ok_and(|(s, _)| s == 200)));
    if let Err(e) = ready {
        let tail = std::fs::read_to_string(&log.0).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(10).collect();
        anyhow::bail!("the agent never got ready: {e}; its log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    let first_sync = started.elapsed();
    let (rss_kb, hwm_kb) = agent.memory()?;

    let delta = "netfence_syncs_total{mode=\"delta\"}";
    let syncs_before = agent.metric(delta)?;
    let mut latencies = Vec::with_capacity(opts.events);
    for i in 0..opts.events {
        let (pod, key) = replica(template, free[(i / 2) % free.len()], i / 2);
        let before = agent.metric(delta)?;
        let written = SystemTime::now();
        if i % 2 == 0 {
            api.apply(&pod);
        } else {
            anyhow::ensure!(api.delete(Kind::Pod, &key), "{key} was not there to delete");
        }
        agent.wait(Duration::from_secs(120), |a| Ok(a.metric(delta)? > before))?;
        let committed = agent.metric("netfence_last_successful_sync_timestamp_seconds")?;
        let unix = written.duration_since(SystemTime::UNIX_EPOCH)?.as_secs_f64();
        latencies.push(committed - unix);
    }
    let syncs = (agent.metric(delta)? - syncs_before) as u64;
    anyhow::ensure!(agent.metric("netfence_apply_failures_total{mode=\"delta\"}")? == 0.0, "a delta failed; see the agent's log");
    let (rss_after_kb, _) = agent.memory()?;
    Ok(AgentReport { node: node.to_string(), first_sync, rss_kb, hwm_kb, rss_after_kb, latencies, syncs })
}

/// The `n`th replica of `template` at `ip`, and its key.
fn replica(template: &Pod, ip: IpAddr, n: usize) -> (Value, Key) {
    let t = template;
    let name = format!("{}-bench-{n}", t.name);
    let ports: Vec<Value> =
        t.ports.iter().map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol.to_string()})).collect();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": t.namespace, "labels": t.labels},
        "spec": {"nodeName": t.node, "containers": [{"name": "main", "image": "registry.example/app:1", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
    });
    (pod, Key::namespaced(&t.namespace, &name))
}

/// Addresses of `node`'s podCIDR that no pod holds.
fn free_addresses(c: &Cluster, node: &str, n: usize) -> Option<Vec<IpAddr>> {
    let cidr = c.nodes.get(node)?.pod_cidrs.first()?;
    let used: std::collections::HashSet<IpAddr> = c.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
    let free: Vec<IpAddr> = cidr.hosts().filter(|ip| !used.contains(ip)).skip(1).take(n).collect();
    (!free.is_empty()).then_some(free)
}

/// A file under the temporary folder, removed on drop.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in_tmp(what: &str) -> anyhow::Result<TempPath> {
    let p = std::env::temp_dir().join(format!("netfence-bench-{}-{what}", std::process::id()));
    std::fs::write(&p, "").with_context(|| format!("creating {}", p.display()))?;
    Ok(TempPath(p))
}

/// `netfence agent` as a child process inside a namespace, serving on that
/// namespace's loopback; killed and reaped on drop. Also what
/// examples/agent_latency.rs measures with.
pub struct AgentProcess<'a> {
    ns: &'a Netns,
    child: std::cell::RefCell<Child>,
}

impl<'a> AgentProcess<'a> {
    /// `exe agent --node NODE` with `source` (`--kubeconfig PATH` or
    /// `--source DIR ...`), its log in `log`.
    pub fn start(ns: &'a Netns, exe: &Path, node: &str, source: &[OsString], log: &Path) -> anyhow::Result<AgentProcess<'a>> {
        let args: Vec<OsString> = vec!["agent".into(), "--node".into(), node.into(), "--metrics-addr".into(), METRICS.into()];
        let child = ns
            .command(exe)?
            .args(args)
            .args(source)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {} agent", exe.display()))?;
        Ok(AgentProcess { ns, child: std::cell::RefCell::new(child) })
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr: SocketAddr = METRICS.parse().expect("a socket address");
        self.ns.run(|| http::get_text_blocking(addr, path, Duration::from_secs(5)))?
    }

    /// A sample of /metrics; 0 when absent.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (_, text) = self.get("/metrics")?;
        let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
        Ok(value.map_or(Ok(0.0), str::parse)?)
    }

    /// Poll `done` until it holds; an error if the agent exits or `bound` passes.
    pub fn wait(&self, bound: Duration, mut done: impl FnMut(&Self) -> anyhow::Result<bool>) -> anyhow::Result<()> {
        let start = Instant::now();
        while !done(self)? {
            if let Some(status) = self.child.borrow_mut().try_wait()? {
                anyhow::bail!("the agent exited: {status}");
            }
            anyhow::ensure!(start.elapsed() < bound, "no answer within {bound:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// (VmRSS, VmHWM) of the agent, kB.
    pub fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.borrow().id()))?;
        let field = |name: &str| -> u64 {
            let v = status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default();
            v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }
}

impl Drop for AgentProcess<'_> {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}
