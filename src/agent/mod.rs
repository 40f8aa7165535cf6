//! The per-node agent: keeps this node's nftables in step with the cluster.
//!
//! The shape is kube-runtime's and linkerd2's: a synchronous [`index`] of
//! validated model objects, updated by plain functions, wrapped in a thin
//! async shell. Two [`source`]s feed the index — kube-rs watchers on the API
//! server, or a folder of manifests for tests and air-gapped use — and the
//! [`reconcile`] loop coalesces bursts of changes, snapshots the index and
//! hands the cluster to a [`Dataplane`], which turns it into one atomic
//! nftables transaction. The dataplane is a trait so the agent is complete
//! and tested without the kernel; the nftables implementation lives with
//! `nft`/`apply` and is plugged in by the CLI.
//!
//! Invariants, stated as absences:
//! - no sync happens before every watched kind has been listed once, so the
//!   first ruleset is never computed from a partial cluster (a CRD kind the
//!   API server answers `404` for counts as listed, empty: a cluster
//!   without the network-policy-api CRDs has no such policies);
//! - a failed sync never removes rules: the dataplane's transactions are
//!   atomic, so the last good ruleset stays until a later sync succeeds;
//! - the index never holds an invalid object: one that fails validation is
//!   logged with its field path, counted, and skipped (an update that turns
//!   an object invalid keeps its last valid version);
//! - nothing in this module lists the nftables table back: the dataplane
//!   keeps what it committed in memory.
//!
//! When a policy change takes effect: the ruleset is stateful (each judging
//! chain accepts established connections first), so a change applies to
//! every new connection at once. Connections already open are cut when the
//! new program denies them (`--established cut`, the default): after each
//! applied sync the conntrack entries whose verdict may have changed are
//! judged one by one against the program now in force and the denied ones
//! deleted, and every entry of a pod that went away goes with it
//! ([`conntrack`]). With `--established keep` they carry on until they
//! close. A failure to cut is counted and logged, never fails the sync.

pub mod conntrack;
pub mod dataplane;
pub mod drop_log;
pub mod fake_api;
pub mod http;
pub mod index;
pub mod metrics;
pub mod rule_counters;
pub mod nftables;
pub mod precondition;
pub mod reconcile;
pub mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::model::Cluster;

pub use index::{Change, Index, Key, Kind, Watched};
pub use metrics::Metrics;
pub use conntrack::{FakeTable, NetlinkTable, Table};
pub use dataplane::{Changes, Dataplane, DryRun, FakeDataplane, SyncError, SyncReport};
pub use nftables::NftDataplane;
pub use reconcile::ReconcileConfig;

/// A Kubernetes resource the agent lists and watches. The watchers, the fake
/// API server and the RBAC test all read [`WATCHED`], so the ClusterRole in
/// deploy/ is checked against what the code actually requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedResource {
    pub kind: Kind,
    /// API group; "" is the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// A CustomResourceDefinition's kind, which a cluster may not have
    /// installed: a `404` for its list means "no such objects", not an
    /// error, and is asked again every [`Config::absent_kind_retry`].
    pub crd: bool,
}

impl WatchedResource {
    /// The collection path across all namespaces, as the watchers request it.
    pub fn path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}/{}", self.version, self.plural)
        } else {
            format!("/apis/{}/{}/{}", self.group, self.version, self.plural)
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn core(kind: Kind, plural: &'static str, namespaced: bool) -> WatchedResource {
    WatchedResource { kind, group: "", version: "v1", plural, namespaced, crd: false }
}

/// A cluster-policy kind of network-policy-api, from its type in [`index`].
const fn crd<K: index::CrdKind>() -> WatchedResource {
    WatchedResource {
        kind: Kind::of_cluster(K::KIND),
        group: index::CRD_GROUP,
        version: K::VERSION,
        plural: K::PLURAL,
        namespaced: false,
        crd: true,
    }
}

pub const WATCHED: [WatchedResource; 7] = [
    core(Kind::Namespace, "namespaces", false),
    core(Kind::Node, "nodes", false),
    core(Kind::Pod, "pods", true),
    WatchedResource {
        kind: Kind::NetworkPolicy,
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        namespaced: true,
        crd: false,
    },
    crd::<index::Cnp>(),
    crd::<index::Anp>(),
    crd::<index::Banp>(),
];

/// The verbs the watchers use: kube-runtime's watcher lists, then watches.
/// The agent never reads single objects or writes anything, so `get` and
/// every write verb are deliberately absent from its ClusterRole.
pub const WATCH_VERBS: [&str; 2] = ["list", "watch"];

/// How often a kind whose CRD is not installed is asked for again.
pub const ABSENT_KIND_RETRY: Duration = Duration::from_secs(30);

/// The default port of /healthz, /readyz and /metrics; the DaemonSet's
/// probes point at it.
pub const METRICS_PORT: u16 = 9964;

pub fn watched(kind: Kind) -> &'static WatchedResource {
    WATCHED.iter().find(|w| w.kind == kind).expect("every kind is watched")
}

/// Where the agent learns the cluster from.
#[derive(Clone)]
pub enum Source {
    /// The API server, in-cluster or through a kubeconfig file.
    Kube { kubeconfig: Option<PathBuf> },
    /// An already-built client (tests point it at the fake API server).
    Client(kube::Client),
    /// A folder of manifests, reloaded when its files change.
    Folder { dir: PathBuf, poll: Duration },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kube { kubeconfig } => f.debug_struct("Kube").field("kubeconfig", kubeconfig).finish(),
            Source::Client(_) => f.write_str("Client"),
            Source::Folder { dir, poll } => f.debug_struct("Folder").field("dir", dir).field("poll", poll).finish(),
        }
    }
}

/// What to do with connections established before a policy change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Established {
    /// Leave them alone: they carry on under the rules that admitted them.
    /// The library's default, which needs no conntrack table; the CLI's is
    /// `Cut`.
    #[default]
    Keep,
    /// Delete the conntrack entries the new program denies.
    Cut,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The node this agent enforces for (for logs; the dataplane is built for it).
    pub node: String,
    pub source: Source,
    pub reconcile: ReconcileConfig,
    /// Where /healthz, /readyz and /metrics are served; port 0 picks one.
    pub metrics_addr: SocketAddr,
    /// Per-rule counters to serve in /metrics (the dataplane publishes to
    /// the same value).
    pub rule_counters: Option<Arc<rule_counters::RuleCounters>>,
    /// The drop log (the dataplane adds its rules and tells it their
    /// meaning; here it is read and told the cluster in force).
    pub drop_log: Option<Arc<drop_log::DropLogger>>,
    /// How often to check the node's preconditions ([`precondition`]: a
    /// bridge carrying pods needs br_netfilter); None: never (tests whose
    /// agent does not run in a node's namespace).
    pub precondition_interval: Option<Duration>,
    /// How often the watchers ask again for a kind whose CRD is not
    /// installed ([`ABSENT_KIND_RETRY`]; tests shorten it).
    pub absent_kind_retry: Duration,
}

/// The index shared by the sources (writers) and the reconcile loop
/// (reader), plus the trigger that tells the loop something changed.
#[derive(Clone)]
pub struct Store {
    index: Arc<Mutex<Index>>,
    trigger: reconcile::Trigger,
}

impl Store {
    pub fn new(index: Index) -> Store {
        Store { index: Arc::new(Mutex::new(index)), trigger: reconcile::Trigger::default() }
    }

    /// Run one index operation; fire the trigger when it changed what a
    /// snapshot would return (including completing the first listing).
    pub fn update(&self, op: impl FnOnce(&mut Index) -> bool) -> bool {
        let mut index = self.lock();
        let was_listed = index.is_listed();
        let changed = op(&mut index) || index.is_listed() != was_listed;
        // Fired under the lock, so a snapshot taken with
        // [`Store::take_snapshot`] has seen exactly the changes it took.
        if changed {
            self.trigger.fire();
        }
        changed
    }

    /// The cluster to enforce, or None until every kind was listed once.
    pub fn snapshot(&self) -> Option<Cluster> {
        let index = self.lock();
        index.is_listed().then(|| index.snapshot())
    }

    /// Take the pending changes (the objects changed since the last take)
    /// and, with `snapshot`, the whole cluster they lead to, atomically: a
    /// change is either taken here or still pending for the next take. The
    /// time is that of the oldest change taken. `None` until every kind was
    /// listed once, or when nothing was pending and not `force`.
    pub fn take(&self, force: bool, snapshot: bool) -> Option<Taken> {
        let mut index = self.lock();
        if !index.is_listed() {
            return None;
        }
        let since = self.trigger.take();
        if !force && since.is_none() {
            return None;
        }
        if snapshot {
            let gone = index.take_gone();
            return Some(Taken { since, changes: Vec::new(), gone, cluster: Some(index.snapshot()), cluster_policies: None });
        }
        let changes = index.take_changes();
        let gone = conntrack::gone_in(&changes);
        let cluster_policies = changes.iter().any(|c| c.kind.is_cluster_policy()).then(|| index.cluster_policies());
        Some(Taken { since, changes, gone, cluster: None, cluster_policies })
    }

    pub fn is_listed(&self) -> bool {
        self.lock().is_listed()
    }

    /// Read the index without taking a snapshot.
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.lock())
    }

    pub fn trigger(&self) -> &reconcile::Trigger {
        &self.trigger
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // Index operations cannot leave it half-updated, so a panic in
        // another holder does not make its content unusable.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one sync takes from the index ([`Store::take`]).
#[derive(Debug, Default)]
pub struct Taken {
    /// When the oldest change taken happened.
    pub since: Option<tokio::time::Instant>,
    /// The objects changed since the last take: what a delta applies
    /// (empty with a snapshot).
    pub changes: Vec<index::Change>,
    /// Addresses pods held at the last take and no longer hold.
    pub gone: std::collections::BTreeSet<std::net::IpAddr>,
    /// The whole cluster, when asked for (a full sync, or a dataplane
    /// that compiles deltas from whole clusters).
    pub cluster: Option<Cluster>,
    /// Without the whole cluster, when a cluster policy changed: those in
    /// force after the changes (what the reconciler's `domainNames`
    /// notices read; a delta no longer takes a snapshot for them).
    pub cluster_policies: Option<Vec<crate::model::ClusterPolicy>>,
}

/// A started agent: its tasks run until [`Running::stop`].
pub struct Running {
    /// The bound address of the metrics/health server.
    pub metrics_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    shutdown: tokio::sync::watch::Sender<bool>,
    reconcile: JoinHandle<anyhow::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn is_ready(&self) -> bool {
        self.metrics.is_ready()
    }

    /// Stop the sources and the server, let an in-flight sync finish, and
    /// return the reconcile loop's error if it died.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let result = self.reconcile.await.context("reconcile loop panicked")?;
        for t in self.tasks {
            t.abort();
        }
        result
    }

    /// Wait until the reconcile loop ends by itself (it only does on a
    /// fatal error) or `signal` resolves, then stop.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.reconcile => {
                for t in self.tasks { t.abort(); }
                return r.context("reconcile loop panicked")?;
            }
            _ = signal => {}
        }
        self.stop().await
    }
}

/// Start the agent: the metrics server, the sources and the reconcile loop.
/// `conntrack` is required when `config.reconcile.established` is `Cut`.
pub async fn start(config: Config, dataplane: Box<dyn Dataplane>, conntrack: Option<Box<dyn Table>>) -> anyhow::Result<Running> {
    if config.reconcile.established == Established::Cut && conntrack.is_none() {
        anyhow::bail!("--established cut needs the conntrack table");
    }
    let mut metrics = Metrics::new();
    if let Some(counters) = &config.rule_counters {
        metrics.attach_rule_counters(counters.clone());
    }
    if let Some(d) = &config.drop_log {
        metrics.register_with(|r| d.register(r));
        d.spawn().context("--drop-log reads the kernel's NFLOG messages over netlink (CAP_NET_ADMIN)")?;
    }
    let metrics = Arc::new(metrics);
    let store = Store::new(Index::new(metrics.invalid_objects.clone()));
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);

    let (metrics_addr, server) = http::serve(config.metrics_addr, metrics.clone())
        .await
        .with_context(|| format!("cannot serve metrics on {}", config.metrics_addr))?;
    let sources = match source::spawn(&config.source, &store, &metrics, config.absent_kind_retry).await {
        Ok(tasks) => tasks,
        Err(e) => {
            server.abort();
            return Err(e);
        }
    };
    let mut tasks = vec![server];
    tasks.extend(sources);
    if let Some(interval) = config.precondition_interval {
        tasks.push(precondition::spawn(config.node.clone(), store.clone(), metrics.clone(), interval));
    }
    tracing::info!(node = %config.node, %metrics_addr, "agent started");

    let reconciler = reconcile::Reconciler::new(config.reconcile, dataplane, conntrack, store.clone(), metrics.clone())
        .with_drop_log(config.drop_log.clone());
    let mut rx = shutdown_rx;
    let reconcile = tokio::spawn(reconciler.run(async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }));
    Ok(Running { metrics_addr, metrics, store, shutdown, reconcile, tasks })
}
