//! Benchmarks at scale: every stage from manifests to the kernel, on
//! generated clusters ([`crate::gen`]), measured side by side in one run.
//!
//! Absolute times depend on the machine (and on who else is using it), so
//! each size's table also gives ratios measured in the same run (a pod-add
//! delta against a full apply, compile time per pod, ...) that carry over
//! between machines, and every timing is the min and median of several runs.
//!
//! What is measured for one size, in order:
//! generate and load the manifests (once each: they are the slow, boring
//! part), resolve the IR, compile the busiest node's program, apply it whole
//! into a scratch network namespace, then three realistic changes (a pod
//! added, a pod relabelled, a policy changed): their delta's size, the time
//! to recompute it and the time to apply it; then one flow's evaluation and
//! explanation, and the process's peak memory.
//!
//! With `packet`, the packet path too: throughput and new connections per
//! second between two pods through the node, with no ruleset, conntrack
//! alone, netfence's program and a linear expansion of it ([`packet`]).
//!
//! Effects: a scratch directory for the manifests and scratch network
//! namespaces for nft and traffic (`nfb<pid>-<n>`), all removed when the size
//! is done, also when it fails. Nothing touches the machine's own ruleset,
//! interfaces or addresses.

pub mod agent;
pub mod conntrack;
pub mod packet;

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::apply::{Kernel, NftKernel};
use crate::eval::{evaluate, Endpoint, Flow};
use crate::gen::{Plan, Size, Spec};
use crate::ir::{self, Ir};
use crate::model::{Cluster, Direction, Peer, Pod, Policy, PodId, PortRef, PortSpec, Protocol, Rule};
use crate::netns::Netns;
use crate::nft::incremental::Incremental;
use crate::nft::{self, compile::node_of, Op, Program, Transaction};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// (label, spec) per size, run in this order.
    pub sizes: Vec<(String, Spec)>,
    /// Runs per timed measure (min and median are reported).
    pub runs: usize,
    /// Apply into a scratch network namespace (needs root and nft).
    pub kernel: bool,
    /// Also measure the packet path (needs the kernel measures).
    pub packet: Option<packet::PacketOptions>,
    /// Also run the agent on the fake API server (needs the kernel measures).
    pub agent: Option<agent::AgentOptions>,
}

impl Options {
    pub fn for_sizes(sizes: &[Size], runs: usize, seed: u64) -> Options {
        Options { sizes: sizes.iter().map(|s| (s.name().to_string(), s.spec(seed))).collect(), runs, kernel: true, packet: None, agent: None }
    }

    /// A run small enough for CI (seconds, debug build included) that still
    /// exercises every stage, so the benchmark cannot rot unnoticed.
    pub fn smoke() -> Options {
        let spec = Spec { pods: 300, nodes: 3, namespaces: 20, policies: 60, seed: 1 };
        let packet = packet::PacketOptions { duration: Duration::from_millis(200), runs: 1 };
        Options { sizes: vec![("smoke".to_string(), spec)], runs: 3, kernel: true, packet: Some(packet), agent: None }
    }
}

/// Min and median of a measure's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub min: Duration,
    pub median: Duration,
    pub runs: usize,
}

impl Timing {
    fn of(mut samples: Vec<Duration>) -> Timing {
        samples.sort();
        let runs = samples.len();
        Timing { min: samples[0], median: samples[(runs - 1) / 2], runs }
    }
}

/// Run `f` `runs` times (at least once); its timing and last result.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Timing, T) {
    let mut samples = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let out = f();
        samples.push(start.elapsed());
        last = Some(out);
    }
    (Timing::of(samples), last.expect("ran at least once"))
}

/// What one change costs.
#[derive(Debug, Clone)]
pub struct Delta {
    pub what: &'static str,
    /// The object changed, for the reader.
    pub subject: String,
    pub ops: usize,
    /// Elements added or removed (the weight of element operations).
    pub elements: usize,
    pub only_elements: bool,
    /// Resolve, compile and diff again after the change.
    pub compute: Timing,
    /// The change given to the incremental engine, and its commit.
    pub incremental: Timing,
    /// Did the engine's transaction equal the full path's?
    pub incremental_exact: bool,
    /// What the agent's delta sync computes: the changed object through
    /// the engine, the commit, and the conntrack cut's scope read from the
    /// transaction (the program is shared, not copied).
    pub agent_delta: Timing,
    /// Of which the cut's scope.
    pub agent_scope: Timing,
    /// Through `nft -j -f -` (JSON).
    pub apply: Option<Timing>,
    /// The same transaction through `nft -f -` (text), interleaved with
    /// the JSON runs so both see the same machine.
    /// The same delta through a fresh `nft -j -f` per transaction.
    pub apply_spawn: Option<Timing>,
}

/// A change through the incremental engine with cluster policies in force
/// ([`bench_cluster_policies`]): informational, beside the targets' rows.
#[derive(Debug, Clone)]
pub struct ClusterPolicyDelta {
    pub what: &'static str,
    /// The object changed, for the reader.
    pub subject: String,
    /// The change given to the engine, and its commit.
    pub incremental: Timing,
    /// Did the engine's transaction equal the full path's?
    pub exact: bool,
    pub ops: usize,
    pub only_elements: bool,
}

/// The size of a compiled program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramSize {
    pub chains: usize,
    pub rules: usize,
    pub sets: usize,
    pub maps: usize,
    /// Set and map elements together.
    pub elements: usize,
}

impl ProgramSize {
    pub fn of(p: &Program) -> ProgramSize {
        ProgramSize {
            chains: p.chains.len(),
            rules: p.rule_count(),
            sets: p.sets.len(),
            maps: p.maps.len(),
            elements: p.sets.values().map(|s| s.elements.len()).sum::<usize>()
                + p.maps.values().map(|m| m.elements.len()).sum::<usize>(),
        }
    }
}

/// Everything measured for one size.
#[derive(Debug, Clone)]
pub struct SizeReport {
    pub label: String,
    pub spec: Spec,
    pub generate: Duration,
    pub manifest_bytes: u64,
    pub load: Timing,
    /// CPU time of the fastest load (all threads): what a busy machine
    /// does not hide (wall equal to CPU means one core did the work).
    pub load_cpu: Duration,
    pub resolve: Timing,
    pub node: String,
    pub local_pods: usize,
    pub compile: Timing,
    /// Building the incremental engine for the node (one run).
    pub incremental_build: Duration,
    pub program: ProgramSize,
    /// `None` when the kernel part was skipped; see `notes`.
    pub full_apply: Option<Timing>,
    pub deltas: Vec<Delta>,
    /// A pod added and a cluster policy changed, with ten cluster policies
    /// in force.
    pub cluster_policy_deltas: Vec<ClusterPolicyDelta>,
    pub flow: String,
    pub eval: Timing,
    /// Endpoint parsing, resolve, evaluation and rendering: `explain` after load.
    pub explain: Timing,
    pub packet: Option<packet::PacketReport>,
    pub agent: Option<agent::AgentReport>,
    /// The biggest sets of the program: (name, elements).
    pub largest_sets: Vec<(String, usize)>,
    pub memory: Memory,
    pub notes: Vec<String>,
}

/// Resident memory of the process (kB), from /proc/self/status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Before this size: what earlier sizes left behind.
    pub before_kb: Option<u64>,
    /// Peak while generating and loading the manifests.
    pub load_peak_kb: Option<u64>,
    /// Once loaded: the cluster alone.
    pub cluster_kb: Option<u64>,
    /// Peak while resolving and compiling, the loaded cluster included:
    /// what an agent holding the cluster needs.
    pub compile_peak_kb: Option<u64>,
}

/// A target of the issue, checked where a size matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub target: String,
    pub measured: String,
    /// `None`: could not be measured in this run (see the notes).
    pub pass: Option<bool>,
    /// Measured at a size the target is not for: shown, never failing the run.
    pub indicative: Option<&'static str>,
}

impl Check {
    /// Whether this check fails the run.
    pub fn fails(&self) -> bool {
        self.pass == Some(false) && self.indicative.is_none()
    }
}

/// Measure one size. Progress goes to stderr.
pub fn run_size(label: &str, spec: Spec, opts: &Options) -> anyhow::Result<SizeReport> {
    let runs = opts.runs.max(1);
    let base_rss_kb = reset_peak_memory();
    let mut notes = Vec::new();

    eprintln!("[{label}] generating {} pods, {} policies", spec.pods, spec.policies);
    let dir = ScratchDir::new(label)?;
    let start = Instant::now();
    let plan = Plan::new(spec)?;
    let summary = plan.write_dir(&dir.0).with_context(|| format!("writing {}", dir.0.display()))?;
    let generate = start.elapsed();
    drop(plan);

    eprintln!("[{label}] loading");
    // Not `time`: it keeps the last result while making the next, and two
    // clusters at once would double the peak memory reported below.
    let mut loads = Vec::new();
    let mut load_cpu = Duration::MAX;
    let mut cluster = None;
    for _ in 0..runs {
        drop(cluster.take());
        let (start, cpu) = (Instant::now(), cpu_time());
        cluster = Some(crate::model::load_paths(&[&dir.0])?.0);
        loads.push(start.elapsed());
        load_cpu = load_cpu.min(cpu_time().saturating_sub(cpu));
    }
    let (load, cluster) = (Timing::of(loads), cluster.context("loaded at least once")?);
    let load_peak_kb = memory_kb("VmHWM");

    // From here on the peak is what the agent would need: the cluster it
    // holds, the IR and a program.
    let cluster_rss_kb = reset_peak_memory();
    eprintln!("[{label}] resolving");
    let (resolve, ir) = time(runs, || ir::resolve(&cluster));
    let node = busiest_node(&cluster).context("the cluster has no node with pods")?;
    let local_pods = cluster.pods.iter().filter(|p| p.is_policy_pod() && node_of(p) == node).count();
    eprintln!("[{label}] compiling {node}");
    let (compile, program) = time(runs, || nft::compile(&cluster, &ir, &node));
    program.validate().context("the compiled program is invalid (a netfence bug)")?;
    let compile_peak_kb = memory_kb("VmHWM");

    let mut ns = None;
    let mut full_apply = None;
    if !opts.kernel {
        notes.push("kernel measures skipped: --no-kernel".to_string());
    } else if let Err(why) = kernel_available() {
        notes.push(format!("kernel measures skipped: {why}"));
    } else {
        eprintln!("[{label}] applying into a scratch network namespace");
        let scratch = scratch_netns()?;
        full_apply = Some(scratch.run(|| apply_full(&program, runs))??);
        ns = Some(scratch);
    }

    eprintln!("[{label}] building the incremental engine");
    let rss_before_engine = memory_kb("VmRSS");
    let start = Instant::now();
    let mut engine = Incremental::new(&cluster, &node);
    let incremental_build = start.elapsed();
    if let (Some(before), Some(after)) = (rss_before_engine, memory_kb("VmRSS")) {
        notes.push(format!(
            "the incremental engine: VmRSS {} before building it, {} after (+{}; freed memory reused makes this a lower bound)",
            mb(before),
            mb(after),
            mb(after.saturating_sub(before))
        ));
    }
    if engine.program() != &program {
        notes.push("the incremental engine's program differs from the full compile (a netfence bug)".to_string());
    }

    // One change at a time: each is a whole changed cluster.
    let mut deltas = Vec::new();
    for change in Change::ALL {
        let Some((subject, changed, (object, before))) = change.apply(&cluster, &ir, &node) else {
            notes.push(format!("{}: no candidate on {node}", change.name()));
            continue;
        };
        eprintln!("[{label}] {}", change.name());
        let (compute, (new, tx)) = time(runs, || {
            let ir = ir::resolve(&changed);
            let new = nft::compile(&changed, &ir, &node);
            let tx = nft::diff(Some(&program), &new);
            (new, tx)
        });
        let mut incremental_exact = true;
        let (mut agent_samples, mut scope_samples) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let start = Instant::now();
            object.send(&mut engine);
            let got = engine.commit(nft::TABLE);
            let scoping = Instant::now();
            let scope = got.as_ref().map(|t| crate::agent::nftables::affected_by(t, engine.program()));
            let shared = engine.program_shared();
            scope_samples.push(scoping.elapsed());
            agent_samples.push(start.elapsed());
            incremental_exact &= got.as_ref() == Some(&tx) && *shared == new && scope.is_some();
            drop(shared);
            before.send(&mut engine);
            engine.commit(nft::TABLE);
        }
        drop(changed);
        // The same change as the agent's engine sees it: one object, then
        // the commit; taken back (untimed) after each run.
        let mut samples = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            object.send(&mut engine);
            let got = engine.commit(nft::TABLE);
            samples.push(start.elapsed());
            incremental_exact &= got.as_ref() == Some(&tx);
            before.send(&mut engine);
            engine.commit(nft::TABLE);
        }
        if !incremental_exact {
            notes.push(format!("{}: the incremental transaction differs from the full path's (a netfence bug)", change.name()));
        }
        let (apply, apply_spawn) = match &ns {
            Some(scratch) if !tx.is_empty() => {
                let (session, spawn) = scratch.run(|| apply_delta(&program, &new, &tx, runs))??;
                (Some(session), Some(spawn))
            }
            _ => (None, None),
        };
        if tx.is_empty() {
            notes.push(format!("{}: {subject} changes nothing in {node}'s program", change.name()));
        }
        deltas.push(Delta {
            what: change.name(),
            subject,
            ops: tx.len(),
            elements: tx.ops.iter().filter(|o| o.is_element_op()).map(Op::weight).sum(),
            only_elements: tx.only_elements(),
            compute,
            incremental: Timing::of(samples),
            incremental_exact,
            agent_delta: Timing::of(agent_samples),
            agent_scope: Timing::of(scope_samples),
            apply,
            apply_spawn,
        });
    }
    drop(ns);
    drop(engine);
    eprintln!("[{label}] changes with cluster policies in force");
    let cluster_policy_deltas = cluster_policy_deltas(&cluster, &ir, &node, runs, &mut notes);
    let mut packet_report = None;
    if let (Some(popts), Some(_)) = (opts.packet, full_apply) {
        eprintln!("[{label}] packet path");
        packet_report = Some(packet::run(&cluster, &ir, &node, &program, popts).context("packet path")?);
    } else if opts.packet.is_some() {
        notes.push("packet path skipped: it needs the kernel measures".to_string());
    }

    eprintln!("[{label}] evaluating one flow");
    let (flow, flow_text) = sample_flow(&cluster, &ir, &node).context("no pod to evaluate a flow between")?;
    let (eval, _) = time(runs, || evaluate(&cluster, &ir, &flow));
    let (src, dst) = (flow.src.display(&cluster), flow.dst.display(&cluster));
    let (explain, explained) = time(runs, || -> anyhow::Result<String> {
        let flow = Flow {
            src: Endpoint::parse(&cluster, &src)?,
            dst: Endpoint::parse(&cluster, &dst)?,
            protocol: flow.protocol,
            port: flow.port,
            family: None,
        };
        let verdict = evaluate(&cluster, &ir::Local::new(&cluster), &flow)?;
        Ok(crate::explain::render_text(&crate::explain::report(&cluster, &flow, &verdict)))
    });
    explained.context("explaining the sample flow")?;

    let mut agent_report = None;
    match (&opts.agent, full_apply) {
        (Some(aopts), Some(_)) => {
            eprintln!("[{label}] the agent on the fake API server, {} events", aopts.events);
            let template = busiest_pod(&cluster, &ir, &node).context("no pod to make events around")?;
            // The agent is one measure among many: when it cannot run, the
            // others still stand, and its targets say "not measured" with why.
            match agent::run(&dir.0, &cluster, &node, &cluster.pods[template], aopts) {
                Ok(report) => agent_report = Some(report),
                Err(e) => notes.push(format!("agent not measured: {e:#}")),
            }
        }
        (Some(_), None) => notes.push("agent skipped: it needs the kernel measures".to_string()),
        (None, _) => {}
    }
    drop(dir);

    Ok(SizeReport {
        label: label.to_string(),
        spec,
        generate,
        manifest_bytes: summary.bytes,
        load,
        load_cpu,
        resolve,
        node,
        local_pods,
        compile,
        incremental_build,
        program: ProgramSize::of(&program),
        full_apply,
        deltas,
        cluster_policy_deltas,
        flow: flow_text,
        eval,
        explain,
        packet: packet_report,
        agent: agent_report,
        largest_sets: largest_sets(&program, 2),
        memory: Memory { before_kb: base_rss_kb, load_peak_kb, cluster_kb: cluster_rss_kb, compile_peak_kb },
        notes,
    })
}

/// Apply `program` whole `runs` times into an empty table, with nft
/// started directly (as the agent does) from inside the scratch namespace.
/// Leaves the program applied.
fn apply_full(program: &Program, runs: usize) -> anyhow::Result<Timing> {
    let mut k = NftKernel::new();
    let mut drop_table = Transaction::new(&program.table);
    drop_table.push(Op::DeleteTable { table: program.table.clone() });
    let full = nft::diff(None, program);
    let mut samples = Vec::new();
    for i in 0..runs {
        if i > 0 {
            k.apply(&drop_table).context("deleting the table between runs")?;
        }
        let start = Instant::now();
        k.apply(&full).context("applying the full program")?;
        samples.push(start.elapsed());
    }
    Ok(Timing::of(samples))
}

/// Apply `tx` (from `program`, which is applied, to `new`) `runs` times
/// through the agent's kept-open `nft -i` session and `runs` times through
/// a fresh `nft -j -f` each, interleaved and alternating which goes first,
/// each followed, untimed, by its reverse: `program` stays applied.
/// Returns (session, spawn).
fn apply_delta(program: &Program, new: &Program, tx: &Transaction, runs: usize) -> anyhow::Result<(Timing, Timing)> {
    let mut spawn = NftKernel::new();
    let mut session = crate::apply_session::SessionKernel::new(vec!["nft".into()]);
    let back = nft::diff(Some(new), program);
    // Start the session outside the timing, as a running agent has it.
    session.apply(tx).context("starting the nft session")?;
    spawn.apply(&back).context("reverting a delta")?;
    let (mut kept, mut fresh) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for use_session in [i % 2 == 1, i % 2 == 0] {
            let start = Instant::now();
            if use_session {
                session.apply(tx).context("applying a delta (session)")?;
                kept.push(start.elapsed());
            } else {
                spawn.apply(tx).context("applying a delta")?;
                fresh.push(start.elapsed());
            }
            spawn.apply(&back).context("reverting a delta")?;
        }
    }
    Ok((Timing::of(kept), Timing::of(fresh)))
}

fn largest_sets(p: &Program, n: usize) -> Vec<(String, usize)> {
    let mut sets: Vec<(String, usize)> = p.sets.values().map(|s| (s.name.clone(), s.elements.len())).collect();
    sets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sets.truncate(n);
    sets
}

/// The node with the most policy pods (ties: the first by name): the worst
/// case for compile and apply.
fn busiest_node(c: &Cluster) -> Option<String> {
    let mut count = std::collections::BTreeMap::<&str, usize>::new();
    for p in c.pods.iter().filter(|p| p.is_policy_pod() && p.node.is_some()) {
        *count.entry(node_of(p)).or_default() += 1;
    }
    let max = count.values().copied().max()?;
    count.into_iter().find(|&(_, n)| n == max).map(|(n, _)| n.to_string())
}

/// The pod on `node` that the most policies select, among Deployment
/// replicas (the pods that come and go) and preferring one that a policy
/// selects by its `app` label (so relabelling it changes something): the
/// most expensive pod to change.
fn busiest_pod(c: &Cluster, ir: &Ir, node: &str) -> Option<PodId> {
    (0..c.pods.len())
        .filter(|&id| {
            let p = &c.pods[id];
            p.is_policy_pod() && node_of(p) == node && p.labels.contains_key("pod-template-hash") && p.labels.contains_key("app")
        })
        .max_by_key(|&id| {
            let policies = &ir.selecting[id];
            let by_app = policies.iter().any(|&p| c.policies[p].pod_selector.match_labels.contains_key("app"));
            (by_app, policies.len(), std::cmp::Reverse(id))
        })
}

/// Changes an agent sees all day, made to the busiest pod of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Another replica of it, scheduled on the same node.
    PodAdded,
    /// Taken out of its service for debugging (`kubectl label pod P
    /// app=<app>-debug --overwrite`): it leaves its app's selectors.
    PodRelabelled,
    /// A policy isolating it opens a port to a partner network.
    PolicyChanged,
}

impl Change {
    pub const ALL: [Change; 3] = [Change::PodAdded, Change::PodRelabelled, Change::PolicyChanged];

    pub fn name(self) -> &'static str {
        match self {
            Change::PodAdded => "pod added",
            Change::PodRelabelled => "pod relabelled",
            Change::PolicyChanged => "policy changed",
        }
    }

    /// The changed cluster, what changed, and the changed object with its
    /// version before, or `None` when `node` has no pod (or policy) to
    /// change.
    fn apply(self, c: &Cluster, ir: &Ir, node: &str) -> Option<(String, Cluster, (Object, Object))> {
        let id = busiest_pod(c, ir, node)?;
        let pod = &c.pods[id];
        let mut changed = c.clone();
        let objects;
        let subject = match self {
            Change::PodAdded => {
                let ip = free_address(c, node)?;
                let mut added = Pod::clone(pod);
                let stem = pod.name.rsplit_once('-').map_or(pod.name.as_str(), |(s, _)| s);
                added.name = format!("{stem}-bench");
                added.ips = vec![ip];
                let name = added.name.clone();
                objects = (Object::Pod(pod.namespace.clone(), name.clone(), Some(added.clone())), Object::Pod(pod.namespace.clone(), name, None));
                changed.pods.push(Arc::new(added));
                changed.normalize();
                format!("{}/{stem}-bench ({ip})", pod.namespace)
            }
            Change::PodRelabelled => {
                let app = format!("{}-debug", pod.labels.get("app")?);
                Arc::make_mut(&mut changed.pods[id]).labels = pod.labels.with("app", &app);
                let (ns, name) = (pod.namespace.clone(), pod.name.clone());
                objects = (Object::Pod(ns.clone(), name.clone(), Some(Pod::clone(&changed.pods[id]))), Object::Pod(ns, name, Some(Pod::clone(pod))));
                format!("{} app={app}", pod.key())
            }
            Change::PolicyChanged => {
                let pid = ir.selecting[id].iter().copied().find(|&p| c.policies[p].isolates(Direction::Ingress))?;
                let policy = Arc::make_mut(&mut changed.policies[pid]);
                policy.ingress.push(Rule {
                    peers: vec![Peer::IpBlock { cidr: "192.0.2.0/24".parse().expect("a valid CIDR"), except: vec![] }],
                    ports: vec![PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Number(8443)), end_port: None }],
                });
                objects = (Object::Policy(policy.clone()), Object::Policy(Policy::clone(&c.policies[pid])));
                format!("{} +ingress from 192.0.2.0/24 to 8443/TCP", policy.key())
            }
        };
        Some((subject, changed, objects))
    }
}

/// One object as the agent's index hands it on: a pod (deleted: `None`)
/// or a policy.
#[derive(Debug, Clone)]
enum Object {
    Pod(String, String, Option<crate::model::Pod>),
    Policy(crate::model::Policy),
}

impl Object {
    fn send(&self, e: &mut Incremental) {
        match self {
            Object::Pod(ns, name, pod) => e.set_pod(ns, name, pod.clone()),
            Object::Policy(p) => e.set_policy(&p.namespace, &p.name, Some(p.clone())),
        }
    }
}

/// Ten ClusterNetworkPolicies, seven Admin and three Baseline, each with
/// a subject of whole namespaces by their `env` label (half the cluster or
/// all of it) and every action and kind of peer: what a cluster with a few
/// guardrails holds. Each gives its tier chain a few rules and its sets
/// elements from most pods.
pub fn bench_cluster_policies() -> Vec<crate::model::ClusterPolicy> {
    use crate::model::cluster_policy::{Action, ClusterKind, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Subject, Tier};
    use crate::selector::{Operator, Requirement, Selector};
    let env = |operator, values: &[&str]| Selector {
        match_labels: Default::default(),
        match_expressions: vec![Requirement { key: "env".to_string(), operator, values: values.iter().map(|v| v.to_string()).collect() }],
    };
    (0..10u32)
        .map(|i| {
            let action = [Action::Accept, Action::Deny, Action::Pass][i as usize % 3];
            let subject = if i % 2 == 0 { Subject::Namespaces(env(Operator::In, &["prod"])) } else { Subject::Namespaces(env(Operator::Exists, &[])) };
            let from = vec![
                ClusterPeer::Namespaces(env(Operator::NotIn, &["prod"])),
                ClusterPeer::Pods { namespaces: Selector::default(), pods: Selector { match_labels: [("tier".to_string(), "frontend".to_string())].into(), ..Selector::default() } },
            ];
            let to = vec![ClusterPeer::Nodes(Selector::default()), ClusterPeer::Networks(vec!["192.0.2.0/24".parse().expect("a CIDR"), "2001:db8::/32".parse().expect("a CIDR")])];
            ClusterPolicy {
                kind: ClusterKind::ClusterNetworkPolicy,
                name: format!("bench-{i}"),
                origin: Default::default(),
                tier: if i < 7 { Tier::Admin } else { Tier::Baseline },
                priority: i,
                subject,
                ingress: vec![ClusterRule {
                    name: None,
                    action,
                    peers: from,
                    ports: vec![ClusterPort::Named("http".to_string()), ClusterPort::Range { protocol: Protocol::Tcp, start: 8000, end: 8100 }],
                }],
                egress: vec![ClusterRule { name: None, action, peers: to, ports: vec![ClusterPort::Range { protocol: Protocol::Tcp, start: 10250, end: 10250 }] }],
            }
        })
        .collect()
}

/// A pod added and a cluster policy changed through the incremental engine
/// with [`bench_cluster_policies`] in force, each checked against the full
/// path's transaction.
fn cluster_policy_deltas(cluster: &Cluster, ir: &Ir, node: &str, runs: usize, notes: &mut Vec<String>) -> Vec<ClusterPolicyDelta> {
    let mut c = cluster.clone();
    c.cluster_policies = bench_cluster_policies();
    c.normalize();
    // Cluster policies take no part in the IR: `ir` is this cluster's too.
    let program = nft::compile(&c, ir, node);
    let mut engine = Incremental::new(&c, node);
    if engine.program() != &program {
        notes.push("with cluster policies: the incremental engine's program differs from the full compile (a netfence bug)".to_string());
    }
    let mut measure = |what: &'static str, subject: String, new: &Program, forward: &dyn Fn(&mut Incremental), back: &dyn Fn(&mut Incremental)| {
        let tx = nft::diff(Some(&program), new);
        let (mut samples, mut exact) = (Vec::new(), true);
        for _ in 0..runs {
            let start = Instant::now();
            forward(&mut engine);
            let got = engine.commit(nft::TABLE);
            samples.push(start.elapsed());
            exact &= got.as_ref() == Some(&tx);
            back(&mut engine);
            engine.commit(nft::TABLE);
        }
        if !exact {
            notes.push(format!("{what} (cluster policies): the incremental transaction differs from the full path's (a netfence bug)"));
        }
        ClusterPolicyDelta { what, subject, incremental: Timing::of(samples), exact, ops: tx.len(), only_elements: tx.only_elements() }
    };
    let mut out = Vec::new();
    if let Some((subject, changed, (object, before))) = Change::PodAdded.apply(&c, ir, node) {
        let new = nft::compile(&changed, &ir::resolve(&changed), node);
        drop(changed);
        out.push(measure("pod added", subject, &new, &|e| object.send(e), &|e| before.send(e)));
    }
    if let Some(old) = c.cluster_policies.iter().find(|p| p.name == "bench-0").cloned() {
        // It opens one more port to its peers.
        let mut policy = old.clone();
        if let Some(rule) = policy.ingress.first_mut() {
            rule.ports.push(crate::model::cluster_policy::ClusterPort::Range { protocol: Protocol::Udp, start: 53, end: 53 });
        }
        let mut changed = c.clone();
        changed.cluster_policies.retain(|p| p.name != old.name);
        changed.cluster_policies.push(policy.clone());
        changed.normalize();
        let new = nft::compile(&changed, ir, node);
        drop(changed);
        let subject = format!("{} opens 53/UDP", old.name);
        let (kind, name) = (old.kind, old.name.clone());
        let forward = |e: &mut Incremental| e.set_cluster_policy(kind, &name, Some(policy.clone()));
        let back = |e: &mut Incremental| e.set_cluster_policy(kind, &name, Some(old.clone()));
        out.push(measure("cluster policy changed", subject, &new, &forward, &back));
    }
    out
}

/// The highest unused address of `node`'s first pod CIDR.
fn free_address(c: &Cluster, node: &str) -> Option<IpAddr> {
    let cidr = *c.nodes.get(node)?.pod_cidrs.first()?;
    let used: std::collections::HashSet<IpAddr> = c.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
    let hosts: Vec<IpAddr> = cidr.hosts().collect();
    hosts.into_iter().rev().skip(1).find(|ip| !used.contains(ip))
}

/// A flow into the busiest pod from a pod of another namespace, on its
/// `http` port: the question `explain` is asked most.
fn sample_flow(c: &Cluster, ir: &Ir, node: &str) -> Option<(Flow, String)> {
    let dst = busiest_pod(c, ir, node)?;
    let d = &c.pods[dst];
    let src = c.pods.iter().position(|p| p.is_policy_pod() && p.namespace != d.namespace && p.namespace != "kube-system")?;
    let port = d.named_port("http", Protocol::Tcp).or_else(|| d.ports.first().map(|p| p.port)).unwrap_or(80);
    let flow = Flow { src: Endpoint::Pod(src), dst: Endpoint::Pod(dst), protocol: Protocol::Tcp, port, family: None };
    let text = format!("{} -> {}:{port}/TCP", c.pods[src].key(), d.key());
    Some((flow, text))
}

// ---------------------------------------------------------------------------
// Effects: scratch directory, scratch network namespace, memory.

struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(label: &str) -> anyhow::Result<ScratchDir> {
        let p = std::env::temp_dir().join(format!("netfence-bench-{}-{label}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn kernel_available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root to create a network namespace".to_string());
    }
    for tool in ["nft", "ip"] {
        let ok = Command::new(tool).arg(if tool == "nft" { "--version" } else { "-V" }).output().is_ok_and(|o| o.status.success());
        if !ok {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

/// A scratch network namespace (`nfb<pid>-<n>`): removed on drop, on panic
/// and on Ctrl-C ([`crate::netns`]), taking its nftables tables with it.
fn scratch_netns() -> anyhow::Result<Netns> {
    Netns::create("nfb")
}

/// User and system CPU time of this process so far, every thread included.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A field of /proc/self/status in kB (`VmHWM`, `VmRSS`).
fn memory_kb(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Give freed memory back and restart the peak-RSS counter, so each size's
/// peak is its own (writing 5 to clear_refs resets VmHWM, Linux ≥ 4.0).
/// The resident memory left over from earlier sizes is returned.
fn reset_peak_memory() -> Option<u64> {
    // SAFETY: malloc_trim only returns free heap memory to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    fs::write("/proc/self/clear_refs", "5").ok()?;
    memory_kb("VmRSS")
}

// ---------------------------------------------------------------------------
// Targets and ratios.

fn mb(kb: u64) -> String {
    format!("{:.0} MB", kb as f64 / 1024.0)
}

/// The targets that apply to `r` (matched by pod and policy count).
pub fn checks(r: &SizeReport) -> Vec<Check> {
    let mut out = Vec::new();
    let (pods, policies) = (r.spec.pods, r.spec.policies);
    let below = |target: &str, d: Duration, limit: Duration| Check {
        target: target.to_string(),
        measured: format!("median {}", fmt_duration(d)),
        pass: Some(d < limit),
        indicative: None,
    };
    if (pods, policies) == (10_000, 1_000) {
        out.push(below("compile one node < 200 ms", r.compile.median, Duration::from_millis(200)));
        let add = r.deltas.iter().find(|d| d.what == "pod added");
        out.push(Check {
            target: "pod add: element operations only".to_string(),
            measured: add.map_or("no pod added".to_string(), |d| format!("{} ops, {} elements", d.ops, d.elements)),
            pass: add.map(|d| d.only_elements),
            indicative: None,
        });
        let speedup = add.and_then(|d| Some(r.full_apply?.median.as_secs_f64() / d.apply?.median.as_secs_f64()));
        out.push(Check {
            target: "pod add apply ≥ 50× faster than full apply".to_string(),
            measured: speedup.map_or("not measured".to_string(), |s| format!("{s:.0}×")),
            pass: speedup.map(|s| s >= 50.0),
            indicative: None,
        });
        out.push(below("explain one flow < 100 ms", r.explain.median, Duration::from_millis(100)));
    }
    // Recompute (not apply) through the incremental engine: for the
    // busiest node at 100k pods / 10k policies; elsewhere indicative.
    let large = (pods, policies) == (100_000, 10_000);
    for (what, target, limit) in [("pod added", "incremental pod add < 5 ms", 5), ("policy changed", "incremental policy change < 10 ms", 10)] {
        let d = r.deltas.iter().find(|d| d.what == what);
        out.push(Check {
            target: target.to_string(),
            measured: d.map_or(format!("no {what} on the node"), |d| {
                let same = if d.incremental_exact { "same transaction as the full path" } else { "transaction DIFFERS from the full path" };
                format!("median {} (min {}); {same}", fmt_duration(d.incremental.median), fmt_duration(d.incremental.min))
            }),
            pass: d.map(|d| d.incremental_exact && d.incremental.median < Duration::from_millis(limit)),
            indicative: (!large).then_some("the target is for 100k pods / 10k policies (large)"),
        });
    }
    if large {
        out.push(below("compile one node < 3 s", r.compile.median, Duration::from_secs(3)));
        out.push(below("explain at 100k < 10 ms", r.explain.median, Duration::from_millis(10)));
        let agent = r.agent.as_ref();
        out.push(Check {
            target: "agent memory at 100k < 200 MB".to_string(),
            measured: agent.map_or("not measured".to_string(), |a| format!("VmRSS {} after the first sync", mb(a.rss_kb))),
            pass: agent.map(|a| a.rss_kb < 200 * 1024),
            indicative: None,
        });
        out.push(Check {
            target: "event to applied p99 < 20 ms".to_string(),
            measured: agent.map_or("not measured".to_string(), |a| {
                format!("p99 {} of {} events ({} syncs)", fmt_duration(a.quantile(0.99)), a.latencies.len(), a.syncs)
            }),
            pass: agent.filter(|a| !a.latencies.is_empty()).map(|a| a.quantile(0.99) < Duration::from_millis(20)),
            indicative: None,
        });
        out.push(Check {
            target: "load 100k pods < 2 s".to_string(),
            measured: format!(
                "median {} (min {}, {} runs; CPU {})",
                fmt_duration(r.load.median),
                fmt_duration(r.load.min),
                r.load.runs,
                fmt_duration(r.load_cpu)
            ),
            pass: Some(r.load.median < Duration::from_secs(2)),
            indicative: None,
        });
        let peak = r.memory.compile_peak_kb;
        out.push(Check {
            target: "peak memory of resolve + compile (cluster included) < 500 MB".to_string(),
            measured: peak.map_or("not measured".to_string(), mb),
            pass: peak.map(|k| k < 500 * 1024),
            indicative: None,
        });
    }
    out.extend(packet_checks(r));
    out
}

/// The packet-path targets, against a node as Kubernetes runs it
/// (kube-proxy's NAT table, conntrack on): they are for 10k policies (the
/// 100k-pod size); at other sizes they are shown as indicative.
fn packet_checks(r: &SizeReport) -> Vec<Check> {
    let Some((throughput, conns)) = r.packet.as_ref().and_then(|p| p.ratio(packet::NETFENCE, packet::KUBE_PROXY)) else {
        return Vec::new();
    };
    let indicative = (r.spec.policies != 10_000).then_some("the target is for 10k policies (large)");
    let check = |what: &str, ratio: f64, min: f64| Check {
        target: format!("10k policies: {what} ≥ {min:.2} of kube-proxy's node"),
        measured: format!("{ratio:.2} (medians)"),
        pass: Some(ratio >= min),
        indicative,
    };
    vec![check("established-flow throughput", throughput, 0.98), check("new connections/s", conns, 0.95)]
}

/// Ratios measured in one run: they hold across machines where absolute
/// times do not.
pub fn ratios(r: &SizeReport) -> Vec<(String, String)> {
    let secs = |d: Duration| d.as_secs_f64();
    let mut out = Vec::new();
    if let Some(full) = r.full_apply {
        for d in &r.deltas {
            if let Some(a) = d.apply {
                out.push((format!("full apply / {} apply", d.what), format!("{:.0}×", secs(full.median) / secs(a.median))));
            }
            if let (Some(a), Some(t)) = (d.apply, d.apply_spawn) {
                out.push((
                    format!("{} apply, one nft process ÷ session (min, median)", d.what),
                    format!("{:.2}, {:.2}", secs(t.min) / secs(a.min), secs(t.median) / secs(a.median)),
                ));
            }
        }
        if r.program.elements > 0 {
            out.push(("full apply per element".to_string(), format!("{:.1} µs", secs(full.median) * 1e6 / r.program.elements as f64)));
        }
    }
    for d in &r.deltas {
        out.push((format!("{}: full recompute ÷ incremental (medians)", d.what), format!("{:.0}×", secs(d.compute.median) / secs(d.incremental.median).max(1e-9))));
    }
    let per = |d: Duration, n: usize| format!("{:.2} µs", secs(d) * 1e6 / n.max(1) as f64);
    out.push(("compile per pod in the cluster".to_string(), per(r.compile.median, r.spec.pods)));
    out.push(("compile per pod on the node".to_string(), per(r.compile.median, r.local_pods)));
    out.push(("resolve per policy".to_string(), per(r.resolve.median, r.spec.policies)));
    out.push(("load per pod".to_string(), per(r.load.median, r.spec.pods)));
    out.push(("compile / resolve".to_string(), format!("{:.2}", secs(r.compile.median) / secs(r.resolve.median))));
    out.push(("rules per policy".to_string(), format!("{:.2}", r.program.rules as f64 / r.spec.policies.max(1) as f64)));
    out
}

// ---------------------------------------------------------------------------
// Rendering.

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.01 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.3} ms", s * 1e3)
    }
}

/// One size as a Markdown table (measures, then ratios, then targets).
pub fn render(r: &SizeReport) -> String {
    let mut s = String::new();
    let sp = &r.spec;
    let _ = writeln!(
        s,
        "### {}: {} pods, {} nodes, {} namespaces, {} policies (seed {}, {} runs)\n",
        r.label, sp.pods, sp.nodes, sp.namespaces, sp.policies, sp.seed, r.resolve.runs
    );
    let _ = writeln!(s, "| measure | min | median | detail |\n|---|---|---|---|");
    let mut row = |name: &str, t: Option<Timing>, detail: String| {
        let (min, med) = t.map_or(("–".to_string(), "–".to_string()), |t| (fmt_duration(t.min), fmt_duration(t.median)));
        let _ = writeln!(s, "| {name} | {min} | {med} | {detail} |");
    };
    let once = |d: Duration| Some(Timing { min: d, median: d, runs: 1 });
    row("generate manifests", once(r.generate), format!("{:.1} MB, one run", r.manifest_bytes as f64 / 1e6));
    row("load manifests", Some(r.load), format!("YAML → validated cluster; {} CPU (fastest run)", fmt_duration(r.load_cpu)));
    row("resolve (IR)", Some(r.resolve), "all policies".to_string());
    row(&format!("compile {}", r.node), Some(r.compile), format!("{} pods on the node", r.local_pods));
    row("incremental engine: build", once(r.incremental_build), "nft::incremental for the node from the cluster, one run".to_string());
    let p = r.program;
    let largest: Vec<String> = r.largest_sets.iter().map(|(n, e)| format!("{n} {e}")).collect();
    row(
        "program size",
        None,
        format!(
            "{} chains, {} rules, {} sets, {} maps, {} elements (largest sets: {})",
            p.chains,
            p.rules,
            p.sets,
            p.maps,
            p.elements,
            largest.join(", ")
        ),
    );
    row("full apply (nft, scratch netns)", r.full_apply, "empty table → program, one transaction".to_string());
    for d in &r.deltas {
        row(&format!("{}: recompute", d.what), Some(d.compute), format!("{}: resolve + compile + diff", d.subject));
        let same = if d.incremental_exact { "the full path's transaction" } else { "DIFFERS from the full path's transaction" };
        row(&format!("{}: incremental", d.what), Some(d.incremental), format!("the object to nft::incremental + commit: {same}"));
        row(
            &format!("{}: agent's delta compute", d.what),
            Some(d.agent_delta),
            format!("the changed object through the engine, commit, the cut's scope from the transaction (the scope: median {}); no snapshot, no copy", fmt_duration(d.agent_scope.median)),
        );
        let kind = if d.only_elements { "element ops only" } else { "includes chain/rule/set ops" };
        row(&format!("{}: apply", d.what), d.apply, format!("{} ops, {} elements, {kind}; the agent's kept-open nft -i", d.ops, d.elements));
        row(&format!("{}: apply, new nft", d.what), d.apply_spawn, "the same through a fresh nft -j -f, interleaved".to_string());
    }
    for d in &r.cluster_policy_deltas {
        let same = if d.exact { "the full path's transaction" } else { "DIFFERS from the full path's transaction" };
        let kind = if d.only_elements { "element ops only" } else { "includes chain/rule/set ops" };
        row(
            &format!("{}, 10 cluster policies: incremental", d.what),
            Some(d.incremental),
            format!("{}: the object to nft::incremental + commit, {} ops, {kind}: {same}", d.subject, d.ops),
        );
    }
    row("eval one flow", Some(r.eval), r.flow.clone());
    row("explain one flow", Some(r.explain), "parse endpoints + resolve what they touch + eval + render".to_string());
    if let Some(a) = &r.agent {
        let q = |x| fmt_duration(a.quantile(x));
        let _ = writeln!(
            s,
            "| agent: event to applied | {} | {} | p99 {}, max {}; {} single events (pod added / deleted on {}), {} delta syncs; fake API server, nft in a scratch netns |",
            q(0.0),
            q(0.5),
            q(0.99),
            q(1.0),
            a.latencies.len(),
            a.node,
            a.syncs
        );
        let _ = writeln!(
            s,
            "| agent: memory (VmRSS) | | | {} after the first sync ({} to get there, peak {}); {} after the events |",
            mb(a.rss_kb),
            fmt_duration(a.first_sync),
            mb(a.hwm_kb),
            mb(a.rss_after_kb)
        );
    }
    let m = r.memory;
    let kb = |k: Option<u64>| k.map_or("?".to_string(), mb);
    let _ = writeln!(
        s,
        "| memory (VmHWM, VmRSS) | | | peak {} loading; {} once loaded; peak {} resolving + compiling; {} before this size |",
        kb(m.load_peak_kb),
        kb(m.cluster_kb),
        kb(m.compile_peak_kb),
        kb(m.before_kb)
    );
    let _ = writeln!(s, "\n| ratio | value |\n|---|---|");
    for (k, v) in ratios(r) {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    if let Some(p) = &r.packet {
        s.push_str(&packet::render(p));
    }
    let checks = checks(r);
    if !checks.is_empty() {
        let _ = writeln!(s, "\n| target | measured | result |\n|---|---|---|");
        for c in checks {
            let verdict = match c.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "not measured",
            };
            match c.indicative {
                Some(why) => {
                    let _ = writeln!(s, "| {} | {} | {verdict} (indicative: {why}) |", c.target, c.measured);
                }
                None => {
                    let _ = writeln!(s, "| {} | {} | {verdict} |", c.target, c.measured);
                }
            }
        }
    }
    for n in &r.notes {
        let _ = writeln!(s, "\nNote: {n}");
    }
    s
}

/// How each measure grew from one size to the next, against the growth of
/// the cluster: near 1 means linear.
pub fn render_scaling(reports: &[SizeReport]) -> String {
    let mut s = String::new();
    if reports.len() < 2 {
        return s;
    }
    let _ = writeln!(s, "### scaling: growth of each measure ÷ growth in pods (1.0 = linear)\n");
    let mut header = "| measure |".to_string();
    for w in reports.windows(2) {
        header.push_str(&format!(" {} → {} |", w[0].label, w[1].label));
    }
    let _ = writeln!(s, "{header}\n|---|{}", "---|".repeat(reports.len() - 1));
    type Measure = fn(&SizeReport) -> Option<f64>;
    let measures: [(&str, Measure); 6] = [
        ("load", |r| Some(r.load.median.as_secs_f64())),
        ("resolve", |r| Some(r.resolve.median.as_secs_f64())),
        ("compile one node", |r| Some(r.compile.median.as_secs_f64())),
        ("full apply", |r| r.full_apply.map(|t| t.median.as_secs_f64())),
        ("eval one flow", |r| Some(r.eval.median.as_secs_f64())),
        ("explain one flow", |r| Some(r.explain.median.as_secs_f64())),
    ];
    for (name, f) in measures {
        let mut line = format!("| {name} |");
        for w in reports.windows(2) {
            let growth = w[1].spec.pods as f64 / w[0].spec.pods as f64;
            match (f(&w[0]), f(&w[1])) {
                (Some(a), Some(b)) if a > 0.0 => line.push_str(&format!(" {:.2} |", b / a / growth)),
                _ => line.push_str(" – |"),
            }
        }
        let _ = writeln!(s, "{line}");
    }
    s
}

/// Run every size of `opts`, printing each table as it completes. Ok(true)
/// when every checked target passed.
pub fn run(opts: &Options, out: &mut dyn std::io::Write) -> anyhow::Result<(bool, Vec<SizeReport>)> {
    let mut reports = Vec::new();
    let mut ok = true;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(out, "netfence bench: {cores} cores available, {} build\n", if cfg!(debug_assertions) { "debug" } else { "release" })?;
    for (label, spec) in &opts.sizes {
        let r = run_size(label, *spec, opts).with_context(|| format!("size {label}"))?;
        ok &= !checks(&r).iter().any(Check::fails);
        writeln!(out, "{}", render(&r))?;
        reports.push(r);
    }
    let scaling = render_scaling(&reports);
    if !scaling.is_empty() {
        writeln!(out, "{scaling}")?;
    }
    Ok((ok, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_is_min_and_median() {
        let ms = Duration::from_millis;
        let check = |samples: &[u64], min, median| {
            let t = Timing::of(samples.iter().map(|&m| ms(m)).collect());
            assert_eq!((t.min, t.median), (ms(min), ms(median)), "{samples:?}");
        };
        check(&[5], 5, 5);
        check(&[9, 1, 5], 1, 5);
        check(&[4, 1, 3, 2], 1, 2);
    }

    #[test]
    fn durations_print_in_readable_units() {
        for (d, want) in [
            (Duration::from_micros(420), "0.420 ms"),
            (Duration::from_micros(12_340), "12.3 ms"),
            (Duration::from_millis(2_310), "2.31 s"),
        ] {
            assert_eq!(fmt_duration(d), want);
        }
    }

    #[test]
    fn memory_fields_are_read_from_proc() {
        assert!(memory_kb("VmRSS").is_some_and(|k| k > 0));
        assert!(memory_kb("VmNoSuchField").is_none());
    }
}
