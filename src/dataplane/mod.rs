//! `netfence test --dataplane`: verdicts proven with real packets through
//! real nftables, in network namespaces shaped like the cluster.
//!
//! [`Dataplane::build`] lays the cluster out as namespaces ([`topology`]),
//! checks that every pod is reachable before any ruleset exists (so a
//! denied probe later means the ruleset denied it, never a wiring fault),
//! then hands each node's namespace to the caller's `install` step.
//! [`Dataplane::probe_all`] sends packets for a list of flows ([`probe`]).
//! Dropping the dataplane removes every namespace, and with them every link
//! and ruleset; see [`crate::netns`] for panics and signals.
//!
//! Invariant: nothing here touches the host namespace's links, addresses,
//! routes or ruleset; the install step runs inside node namespaces only.

pub mod attack;
pub mod backend;
pub mod kube_proxy;
pub mod probe;
pub mod raw;
pub mod sctp;
pub mod topology;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

pub use crate::eval::Endpoint;
use crate::model::{Cluster, Family, Protocol};
use crate::netns::Netns;
pub use backend::DataplaneBackend;
pub use topology::Cni;
use topology::{Place, Topology};

/// One flow to try with real packets. Endpoints are the reference
/// evaluator's, parsed from the test format by [`Endpoint::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub from: Endpoint,
    pub to: Endpoint,
    pub family: Family,
    pub protocol: Protocol,
    pub port: u16,
    /// Set when the client does not send to `to` itself but through a
    /// Service, which kube-proxy's table ([`Dataplane::install_kube_proxy`])
    /// translates to `to`:`port` (the backend, where the listener is).
    pub via: Option<ProbeVia>,
}

/// Where a probe through a Service is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeVia {
    /// The ClusterIP and Service port, or a node's address and a nodePort.
    pub addr: SocketAddr,
    /// `false`: the Service has no backend for this probe, which must not
    /// be answered; no listener is opened and `to` is not used.
    pub backend: bool,
}

/// What the packets said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The answer came back: the flow and its replies got through.
    pub allowed: bool,
    /// How: `answered in 0.3ms`, or each attempt's failure
    /// (`no answer within 400ms`, `refused`, ...).
    pub detail: String,
    pub elapsed: Duration,
}

/// How hard to try.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// How long one attempt waits for its answer: a denied flow costs
    /// `attempts * timeout`.
    pub timeout: Duration,
    /// Attempts before a flow counts as denied; more than one keeps a lost
    /// packet from passing for a denial.
    pub attempts: u32,
    /// Probes in flight at once.
    pub parallel: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions { timeout: Duration::from_millis(400), attempts: 2, parallel: 128 }
    }
}

/// How long the wiring check may wait for links to come up.
pub const WIRING_DEADLINE: Duration = Duration::from_secs(5);

/// Where the time of [`Dataplane::build`] went.
#[derive(Debug, Clone, Default)]
pub struct BuildTimings {
    pub namespaces: usize,
    pub topology: Duration,
    pub self_check: Duration,
    /// Rounds of the wiring check until every link carried traffic.
    pub self_check_rounds: u32,
    pub install: Duration,
}

/// The cluster as network namespaces, with each node's ruleset installed.
#[derive(Debug)]
pub struct Dataplane {
    topology: Topology,
    pub options: ProbeOptions,
    pub timings: BuildTimings,
    /// Listeners bind the probed ports: one probe run at a time.
    probing: Mutex<()>,
}

impl Dataplane {
    /// Build the namespaces for `cluster`, with `externals` (every IP
    /// literal a test's expectations name) in the outside namespace, check
    /// the wiring, then call `install(node_name, node_namespace)` once per
    /// node to load its ruleset (e.g. `|node, ns| ns.run(|| kernel.apply(&tx[node]))?`).
    pub fn build<F>(cluster: &Cluster, externals: &[IpAddr], install: F) -> anyhow::Result<Dataplane>
    where
        F: FnMut(&str, &Netns) -> anyhow::Result<()>,
    {
        Dataplane::build_with(cluster, externals, Cni::Routed, install)
    }

    /// [`Dataplane::build`] with pods wired the way `cni` says.
    pub fn build_with<F>(cluster: &Cluster, externals: &[IpAddr], cni: Cni, install: F) -> anyhow::Result<Dataplane>
    where
        F: FnMut(&str, &Netns) -> anyhow::Result<()>,
    {
        let plan = topology::plan(cluster, externals, cni).context("cannot lay the cluster out as network namespaces")?;
        let topology = Topology::build(plan).context("cannot build the dataplane's network namespaces")?;
        let timings =
            BuildTimings { namespaces: topology.plan.roles.len(), topology: topology.build_time, ..Default::default() };
        let mut dp = Dataplane { topology, options: ProbeOptions::default(), timings, probing: Mutex::new(()) };
        let start = Instant::now();
        dp.self_check()?;
        dp.timings.self_check = start.elapsed();
        let start = Instant::now();
        dp.install(install)?;
        dp.timings.install = start.elapsed();
        Ok(dp)
    }

    /// Call `install` for every node's namespace, in node name order. Only
    /// once, before any probe: conntrack would let flows probed under an
    /// earlier ruleset pass as established under a later one.
    fn install<F>(&self, mut install: F) -> anyhow::Result<()>
    where
        F: FnMut(&str, &Netns) -> anyhow::Result<()>,
    {
        for (node, ns) in self.topology.plan.nodes() {
            install(node, self.topology.netns(ns)).with_context(|| format!("cannot install the ruleset of node {node}"))?;
        }
        Ok(())
    }

    /// Probe every flow, in parallel; results in the order of `specs`.
    /// `Err`: a spec names what the dataplane does not have, or probing
    /// itself failed; never a verdict.
    pub fn probe_all(&self, specs: &[ProbeSpec]) -> anyhow::Result<Vec<ProbeResult>> {
        self.probe_with(specs, &self.options)
    }

    /// [`Dataplane::probe_all`] with other options: e.g. one quick attempt
    /// when polling for a change, where a late answer must not hide when it
    /// happened.
    pub fn probe_with(&self, specs: &[ProbeSpec], options: &ProbeOptions) -> anyhow::Result<Vec<ProbeResult>> {
        let flows = specs
            .iter()
            .map(|spec| self.flow(spec).map_err(|e| anyhow::anyhow!("cannot probe {}: {e}", self.describe(spec))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let _one_at_a_time = self.probing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        probe::run(&flows, options)
    }

    /// A spec as the test format would write it: `x/a -> node/node-1 80/TCP IPv4`,
    /// and through a Service `x/a -> 10.96.0.10:80 -> x/b 8080/TCP IPv4`.
    pub fn describe(&self, spec: &ProbeSpec) -> String {
        let plan = &self.topology.plan;
        let via = match spec.via {
            Some(ProbeVia { addr, backend: true }) => format!("{addr} -> "),
            Some(ProbeVia { addr, backend: false }) => return format!("{} -> {addr} (no backend) {} {}", plan.name(&spec.from), spec.protocol, spec.family),
            None => String::new(),
        };
        format!("{} -> {via}{} {}/{} {}", plan.name(&spec.from), plan.name(&spec.to), spec.port, spec.protocol, spec.family)
    }

    /// Replace every node's kube-proxy tables ([`kube_proxy`]) with the
    /// Services of `cluster`, each port sent to the backend `pins` name:
    /// one `nft -f` transaction per node, inside the node's namespace.
    /// Called between probe rounds; netfence's own table is not touched.
    pub fn install_kube_proxy(&self, cluster: &Cluster, pins: &kube_proxy::Pins) -> anyhow::Result<()> {
        for (node, ns) in self.topology.plan.nodes() {
            let script = kube_proxy::replace_script(cluster, node, pins);
            topology::nft_script(self.topology.netns(ns), &script)
                .with_context(|| format!("cannot install kube-proxy's table on node {node}"))?;
        }
        Ok(())
    }

    /// Why this wiring cannot probe a flow, if it cannot
    /// ([`topology::Plan::cannot_probe`]).
    pub fn cannot_probe(&self, spec: &ProbeSpec) -> Option<String> {
        self.topology.plan.cannot_probe(&spec.from, &spec.to, spec.family)
    }

    /// Why this wiring cannot carry a flow through a Service as the test
    /// format judges it, if it cannot ([`topology::Plan::cannot_probe_service`]).
    pub fn cannot_probe_service(&self, client: &Endpoint, entry_node: Option<&str>, backend_node: Option<&str>, source_nat: bool, family: Family) -> Option<String> {
        self.topology.plan.cannot_probe_service(client, entry_node, backend_node, source_nat, family)
    }

    /// The namespace of a node, for installing or inspecting its ruleset.
    pub fn node_netns(&self, node: &str) -> Option<&Netns> {
        self.topology.plan.node_ns(node).map(|ns| self.topology.netns(ns))
    }

    /// The namespace an endpoint lives in and its address in `family`: for
    /// tests that send their own packets ([`attack`], [`raw`]).
    pub fn locate(&self, endpoint: &Endpoint, family: Family) -> Result<(&Netns, IpAddr), String> {
        let Place { ns, ip } = self.topology.plan.locate(endpoint, family)?;
        Ok((self.topology.netns(ns), ip))
    }

    /// Every namespace this dataplane made.
    pub fn netns_names(&self) -> Vec<String> {
        self.topology.names().map(str::to_string).collect()
    }

    fn flow(&self, spec: &ProbeSpec) -> Result<probe::Flow<'_>, String> {
        if spec.port == 0 {
            return Err("port 0 cannot be probed".into());
        }
        let plan = &self.topology.plan;
        let Place { ns: src, ip: src_ip } = plan.locate(&spec.from, spec.family)?;
        let listen = spec.via.is_none_or(|v| v.backend);
        // Without a backend nothing listens: `to` is not located.
        let Place { ns: dst, ip: dst_ip } = if listen { plan.locate(&spec.to, spec.family)? } else { Place { ns: src, ip: src_ip } };
        if let Some(via) = spec.via {
            if Family::of(&via.addr.ip()) != spec.family {
                return Err(format!("{} is not an {} address", via.addr.ip(), spec.family));
            }
        }
        Ok(probe::Flow {
            src: self.topology.netns(src),
            src_ip,
            dst: self.topology.netns(dst),
            dst_ip,
            protocol: spec.protocol,
            port: spec.port,
            via: spec.via.map(|v| v.addr),
            listen,
        })
    }

    /// Before any ruleset: every pod answers a node other than its own (or
    /// its own, with one node) and the outside, and each node answers the
    /// next one, in every family they share. Exercises every link and route.
    ///
    /// Links come up asynchronously: the kernel applies a veth's carrier
    /// change to a bridge port later, under load up to a second later, and a
    /// neighbour lookup that went unanswered meanwhile is retried on its own
    /// clock. So failing checks are retried, quickly, until
    /// [`WIRING_DEADLINE`]; what still fails then is a wiring fault.
    fn self_check(&mut self) -> anyhow::Result<()> {
        let quick = ProbeOptions { timeout: Duration::from_millis(200), attempts: 1, ..self.options.clone() };
        let deadline = Instant::now() + WIRING_DEADLINE;
        let mut pending = self.topology.plan.wiring_checks();
        loop {
            self.timings.self_check_rounds += 1;
            let results = self.probe_with(&pending, &quick)?;
            let failed: Vec<(ProbeSpec, ProbeResult)> =
                pending.into_iter().zip(results).filter(|(_, r)| !r.allowed).collect();
            if failed.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let failed: Vec<String> = failed.iter().map(|(s, r)| format!("{}: {}", self.describe(s), r.detail)).collect();
                anyhow::bail!(
                    "the dataplane's wiring is broken before any ruleset was installed (a netfence bug):\n  {}",
                    failed.join("\n  ")
                )
            }
            pending = failed.into_iter().map(|(s, _)| s).collect();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
