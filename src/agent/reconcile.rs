//! The reconcile loop: from "the cluster changed" to "the node enforces it".
//!
//! No fixed wait: when the loop is idle, a change is applied at once (its
//! latency is one sync). Changes that arrive while a sync runs are not
//! queued: the sources update the index in place and set one flag, so the
//! next sync, started as soon as the running one ends, applies all of them
//! together. A burst of any size therefore costs a few syncs (one per sync
//! it overlaps) and no memory beyond the index itself. An optional quiet
//! period (`debounce`, bounded by `max_delay`) trades latency for fewer
//! syncs on clusters that churn faster than a sync.
//!
//! A delta sync takes from the index only the objects changed since the
//! last take and hands them to the [`Dataplane`]; a full sync (or a
//! dataplane that cannot take changes alone) takes a snapshot of the
//! index, which shares its pods and policies. The fallback ladder: try a delta; if it fails, apply the
//! whole ruleset; if that fails too, keep the last good ruleset (the
//! dataplane's transactions are atomic), report unready, and retry with a
//! full apply after an exponential, capped backoff. A full apply also
//! happens on start (adopting and atomically replacing whatever an earlier
//! run left) and every `resync` to repair drift. With `--established cut`,
//! each successful sync is followed by a cut of the connections the program
//! now in force denies ([`super::conntrack`]), before the next sync; a
//! failed cut is counted and logged and does not make the agent unready
//! (the ruleset is applied).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::conntrack::{Cutter, Table, World};
use super::dataplane::{Changes, Dataplane, SyncError, SyncReport};
use super::index::Change;
use super::metrics::{Metrics, ModeLabel, ReasonLabel};
use super::{Established, Store, Taken};
use crate::model::Cluster;

#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Quiet period after the last change before syncing; zero: sync at
    /// once, coalescing only what arrives while a sync runs.
    pub debounce: Duration,
    /// Upper bound on how long a steady stream of changes can delay a sync
    /// (with a non-zero `debounce`).
    pub max_delay: Duration,
    /// Period of the full resync that repairs drift.
    pub resync: Duration,
    /// First retry delay after a failed sync; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub established: Established,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            debounce: Duration::ZERO,
            max_delay: Duration::from_millis(500),
            resync: Duration::from_secs(300),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            established: Established::Keep,
        }
    }
}

/// "Something changed": fired by the sources, awaited by the loop. Keeps the
/// time of the first change not yet taken, for the event-to-applied latency.
/// A flag, not a queue: any number of changes between two syncs is one
/// `Instant` and one stored permit.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<TriggerInner>);

#[derive(Debug, Default)]
struct TriggerInner {
    since: Mutex<Option<Instant>>,
    notify: Notify,
}

impl Trigger {
    pub fn fire(&self) {
        let mut since = self.0.since.lock().unwrap_or_else(|e| e.into_inner());
        since.get_or_insert_with(Instant::now);
        self.0.notify.notify_one();
    }

    /// When the oldest change not yet taken happened.
    pub fn take(&self) -> Option<Instant> {
        self.0.since.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub async fn fired(&self) {
        self.0.notify.notified().await
    }
}

/// Debounce with a bound: due `debounce` after the last event, but no later
/// than `max_delay` after the first.
#[derive(Debug, Clone)]
pub struct Coalescer {
    debounce: Duration,
    max_delay: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Coalescer {
    pub fn new(debounce: Duration, max_delay: Duration) -> Coalescer {
        Coalescer { debounce, max_delay, first: None, last: None }
    }

    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    pub fn due(&self) -> Option<Instant> {
        Some((self.last? + self.debounce).min(self.first? + self.max_delay))
    }

    pub fn clear(&mut self) {
        self.first = None;
        self.last = None;
    }
}

/// Exponential backoff without jitter: the dataplane is local, so there is
/// no shared server for many agents to stampede.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, next: base }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

pub(crate) struct Reconciler {
    cfg: ReconcileConfig,
    dataplane: Option<Box<dyn Dataplane>>,
    /// `Some` with `--established cut`; taken while a cut runs.
    cutter: Option<Cutter>,
    /// Addresses pods held and no longer hold, in changes taken since the
    /// last successful sync: what its cut must cut.
    unsynced_gone: BTreeSet<IpAddr>,
    store: Store,
    metrics: Arc<Metrics>,
    coalescer: Coalescer,
    backoff: Backoff,
    /// Set while failing: no sync before then, and a full one at then.
    retry_at: Option<Instant>,
    next_resync: Option<Instant>,
    /// The next sync must be full (start, or after a failure).
    need_full: bool,
    /// First change not yet applied (kept across failed attempts).
    pending_since: Option<Instant>,
    /// Names drops after the cluster in force.
    drop_log: Option<Arc<super::drop_log::DropLogger>>,
    /// The `domainNames` notices of the cluster in force: each is logged
    /// when it appears, not on every sync.
    notices: std::collections::BTreeSet<String>,
}

impl Reconciler {
    pub(crate) fn new(
        cfg: ReconcileConfig,
        dataplane: Box<dyn Dataplane>,
        conntrack: Option<Box<dyn Table>>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Reconciler {
        let cutter = conntrack.filter(|_| cfg.established == Established::Cut).map(Cutter::new);
        Reconciler {
            cutter,
            unsynced_gone: BTreeSet::new(),
            coalescer: Coalescer::new(cfg.debounce, cfg.max_delay),
            backoff: Backoff::new(cfg.retry_base, cfg.retry_max),
            cfg,
            dataplane: Some(dataplane),
            store,
            metrics,
            retry_at: None,
            next_resync: None,
            need_full: true,
            pending_since: None,
            drop_log: None,
            notices: Default::default(),
        }
    }

    pub(crate) fn with_drop_log(mut self, drop_log: Option<Arc<super::drop_log::DropLogger>>) -> Reconciler {
        self.drop_log = drop_log;
        self
    }

    /// Runs until `shutdown` resolves; an in-flight sync is finished first.
    /// Returns an error only if the dataplane panicked.
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let trigger = self.store.trigger().clone();
        loop {
            let wake = self.wake_at();
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                _ = trigger.fired() => self.coalescer.event(Instant::now()),
                _ = sleep_until(wake) => self.tick(Instant::now()).await?,
            }
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        if !self.store.is_listed() {
            return None;
        }
        // While failing, changes and resyncs wait for the retry: a broken
        // kernel under a storm of events must not turn into a hot loop.
        if self.retry_at.is_some() {
            return self.retry_at;
        }
        [self.coalescer.due(), self.next_resync].into_iter().flatten().min()
    }

    async fn tick(&mut self, now: Instant) -> anyhow::Result<()> {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        let (run, full) = match self.retry_at {
            Some(retry) => (retry <= now, true),
            None => {
                let resync = due(self.next_resync);
                (resync || due(self.coalescer.due()), resync)
            }
        };
        if !run {
            return Ok(());
        }
        self.coalescer.clear();
        let full = self.need_full || full;
        // A wake-up whose change an earlier snapshot already took (the
        // trigger keeps one permit) finds nothing to do and syncs nothing.
        let force = full || self.pending_since.is_some();
        // A delta takes only the objects changed (the dataplane applies
        // them one by one); a full sync, or a dataplane that compiles
        // deltas from whole clusters, a snapshot too.
        let snapshot = full || !self.dataplane.as_ref().is_some_and(|d| d.takes_changes());
        let Some(taken) = self.take(force, snapshot).await? else { return Ok(()) };
        self.sync(taken, full).await
    }

    /// Take from the store (off the async threads when it is a snapshot:
    /// one at 100k pods is not free), keeping when the oldest change
    /// happened and the addresses that went away.
    async fn take(&mut self, force: bool, snapshot: bool) -> anyhow::Result<Option<Taken>> {
        let store = self.store.clone();
        let taken = if snapshot {
            tokio::task::spawn_blocking(move || store.take(force, true))
                .await
                .map_err(|e| anyhow::anyhow!("taking a snapshot panicked: {e}"))?
        } else {
            store.take(force, false)
        };
        if let Some(t) = &taken {
            self.pending_since = self.pending_since.or(t.since);
            self.unsynced_gone.extend(t.gone.iter().copied());
        }
        Ok(taken)
    }

    /// The fallback ladder: delta, then full, then keep the last good
    /// ruleset and retry later.
    async fn sync(&mut self, taken: Taken, full: bool) -> anyhow::Result<()> {
        let mut full = full;
        let mut cluster = taken.cluster.map(Arc::new);
        let cluster_policies = taken.cluster_policies;
        let mut result = match &cluster {
            Some(c) => Some(self.attempt(c, full).await?),
            None => self.attempt_changes(taken.changes).await?,
        };
        if result.is_none() {
            // The dataplane cannot take these changes alone: a snapshot.
            let c = Arc::new(self.take(true, true).await?.and_then(|t| t.cluster).unwrap_or_default());
            result = Some(self.attempt(&c, false).await?);
            cluster = Some(c);
        }
        let mut result = result.expect("attempted above");
        if let (Err(e), false) = (&result, full) {
            tracing::warn!(error = %e, "delta sync failed; applying the full ruleset");
            full = true;
            let c = match cluster.take() {
                Some(c) => c,
                None => Arc::new(self.take(true, true).await?.and_then(|t| t.cluster).unwrap_or_default()),
            };
            result = self.attempt(&c, true).await?;
            cluster = Some(c);
        }
        let now = Instant::now();
        match result {
            Ok(report) => {
                self.succeeded(&report, full, now);
                match (&cluster, &cluster_policies) {
                    (Some(c), _) => self.notice_unenforceable(&c.cluster_policies),
                    (None, Some(policies)) => self.notice_unenforceable(policies),
                    (None, None) => {}
                }
                if let Some(d) = &self.drop_log {
                    // Names for the drop log (off by default): a snapshot
                    // shares the index's pods.
                    let c = match &cluster {
                        Some(c) => c.clone(),
                        None => Arc::new(self.store.snapshot().unwrap_or_default()),
                    };
                    d.committed_cluster(c);
                }
                let gone = std::mem::take(&mut self.unsynced_gone);
                if let Some(changes) = report.changes {
                    self.cut(cluster, gone, changes).await?;
                }
            }
            Err(e) => {
                self.need_full = true;
                let delay = self.backoff.next_delay();
                self.retry_at = Some(now + delay);
                self.metrics.set_ready(false);
                tracing::error!(error = %e, retry_in = ?delay, "sync failed; the last good ruleset stays in place");
            }
        }
        Ok(())
    }

    /// A delta from the objects changed alone; `None` when the dataplane
    /// cannot take it (nothing was applied).
    async fn attempt_changes(&mut self, changes: Vec<Change>) -> anyhow::Result<Option<Result<SyncReport, SyncError>>> {
        let (result, took) = self.on_dataplane(move |d| d.sync_changes(&changes)).await?;
        if let Some(r) = &result {
            self.observe(r, took, false);
        }
        Ok(result)
    }

    async fn attempt(&mut self, cluster: &Arc<Cluster>, full: bool) -> anyhow::Result<Result<SyncReport, SyncError>> {
        let cluster = cluster.clone();
        let (result, took) = self
            .on_dataplane(move |d| {
                let result = d.sync(&cluster, full);
                if full {
                    // On the thread that allocated it: mimalloc purges a
                    // thread's freed pages only when that thread allocates
                    // again, and a blocking thread may sleep for minutes.
                    release_free_memory();
                }
                result
            })
            .await?;
        self.observe(&result, took, full);
        Ok(result)
    }

    /// Run `f` on the dataplane on the blocking pool: (its result, how long
    /// it took).
    async fn on_dataplane<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Box<dyn Dataplane>) -> T + Send + 'static,
    ) -> anyhow::Result<(T, std::time::Duration)> {
        let mut dataplane = self.dataplane.take().expect("the dataplane is put back after every call");
        let started = std::time::Instant::now();
        let (dataplane, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut dataplane);
            (dataplane, out)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the dataplane panicked: {e}"))?;
        self.dataplane = Some(dataplane);
        Ok((out, started.elapsed()))
    }

    /// A sync attempt's duration or failure, by mode.
    fn observe(&self, result: &Result<SyncReport, SyncError>, took: std::time::Duration, full: bool) {
        let mode = ModeLabel::of(full);
        match result {
            Ok(_) => self.metrics.sync_duration.get_or_create(&mode).observe(took.as_secs_f64()),
            Err(_) => {
                self.metrics.apply_failures.get_or_create(&mode).inc();
            }
        }
    }

    /// Warn once per cluster policy with `domainNames` peers while it is
    /// in force (what they cannot match, see
    /// [`crate::model::cluster_policy::ClusterPolicy::domain_names_notice`]),
    /// and count its rules in a gauge.
    fn notice_unenforceable(&mut self, policies: &[crate::model::ClusterPolicy]) {
        let now: std::collections::BTreeSet<String> = policies.iter().filter_map(|p| p.domain_names_notice()).collect();
        for n in now.difference(&self.notices) {
            tracing::warn!("{n}");
        }
        let rules: usize = policies.iter().map(|p| p.domain_name_rules().len()).sum();
        self.metrics.domain_name_rules.set(rules as i64);
        self.notices = now;
    }

    fn succeeded(&mut self, r: &SyncReport, full: bool, now: Instant) {
        let m = &self.metrics;
        m.syncs.get_or_create(&ModeLabel::of(full)).inc();
        m.transaction_ops.observe(r.ops as f64);
        m.transaction_element_ops.observe(r.element_ops as f64);
        m.rules.set(r.rules as i64);
        m.sets.set(r.sets as i64);
        m.elements.set(r.elements as i64);
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        m.last_success.set(unix.as_secs_f64());
        if let Some(since) = self.pending_since.take() {
            m.event_to_applied.observe(now.saturating_duration_since(since).as_secs_f64());
        }
        if !m.is_synced() {
            tracing::info!("first successful sync since start or failure");
        }
        m.set_ready(true);
        self.need_full = false;
        self.retry_at = None;
        self.backoff.reset();
        if full {
            self.next_resync = Some(now + self.cfg.resync);
        }
        tracing::info!(full, ops = r.ops, element_ops = r.element_ops, rules = r.rules, sets = r.sets, elements = r.elements, "synced");
    }
}

impl Reconciler {
    /// Cut what the program a sync put in force denies. Runs on the
    /// blocking pool; the next sync waits for it, so a cut never judges
    /// against a program that is no longer in force.
    /// `cluster`: what the sync compiled, when it took a snapshot; else the
    /// index says (as of the sync's take) whom the judged addresses are.
    async fn cut(&mut self, cluster: Option<Arc<Cluster>>, gone: BTreeSet<IpAddr>, changes: Changes) -> anyhow::Result<()> {
        let Some(mut cutter) = self.cutter.take() else { return Ok(()) };
        let started = std::time::Instant::now();
        let store = self.store.clone();
        let (cutter, result) = tokio::task::spawn_blocking(move || {
            let r = match &cluster {
                Some(c) => cutter.after_sync(&**c, gone, &changes),
                None => cutter.after_sync(&Synced(store), gone, &changes),
            };
            (cutter, r)
        })
        .await
        .map_err(|e| anyhow::anyhow!("cutting connections panicked: {e}"))?;
        self.cutter = Some(cutter);
        let elapsed = started.elapsed();
        let m = &self.metrics;
        match result {
            Ok(r) => {
                m.conntrack_duration.observe(elapsed.as_secs_f64());
                m.conntrack_examined.inc_by(r.examined);
                m.conntrack_cut.get_or_create(&ReasonLabel { reason: "denied" }).inc_by(r.cut_denied.deleted);
                m.conntrack_cut.get_or_create(&ReasonLabel { reason: "gone" }).inc_by(r.cut_gone.deleted);
                let d = &r.deleted();
                if d.failed > 0 {
                    m.conntrack_errors.inc_by(d.failed);
                    tracing::warn!(failed = d.failed, error = d.first_error.as_deref().unwrap_or(""), "some connections the policy denies could not be cut; retried with the next sync");
                }
                if r.to_cut() > 0 {
                    tracing::info!(
                        examined = r.examined,
                        denied = r.denied,
                        gone = r.gone,
                        deleted = d.deleted,
                        already_closed = d.missing,
                        failed = d.failed,
                        entries = r.scanned,
                        ms = elapsed.as_millis() as u64,
                        "cut connections the policy in force denies"
                    );
                } else {
                    tracing::debug!(examined = r.examined, entries = r.scanned, ms = elapsed.as_millis() as u64, "no connection to cut");
                }
            }
            Err(e) => {
                m.conntrack_errors.inc();
                tracing::warn!(error = %e, "cannot cut the connections the policy denies; they continue until the next sync retries");
            }
        }
        Ok(())
    }
}

/// The cluster as of the index's last take (what the program in force was
/// compiled from), as much of it as a cut asks for.
struct Synced(Store);

impl World for Synced {
    fn holding(&self, addrs: &BTreeSet<IpAddr>) -> std::borrow::Cow<'_, Cluster> {
        std::borrow::Cow::Owned(self.0.with_index(|ix| ix.synced_pods_holding(addrs)))
    }
}

// mimalloc's own entry point, in the library libmimalloc-sys builds (its
// Rust declaration needs a feature with a dependency we do not carry).
extern "C" {
    fn mi_collect(force: bool);
}

/// Hand freed heap pages back to the system. A full sync builds the whole
/// program, its transaction and the IR beside the cluster, several times
/// what the agent keeps; without this the freed pages would stay resident.
/// Both allocators: the binary's (mimalloc) and the tests' (glibc).
fn release_free_memory() {
    // SAFETY: mi_collect only frees what mimalloc's heaps no longer use
    // (nothing when it is not the allocator); malloc_trim only returns
    // free heap memory to the system.
    unsafe {
        mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::dataplane::FakeDataplane;
    use crate::agent::Index;
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    /// A cluster without the network-policy-api CRDs: those kinds listed empty.
    fn no_crds(ix: &mut Index) -> bool {
        use crate::agent::index::Kind as K;
        [K::ClusterNetworkPolicy, K::AdminNetworkPolicy, K::BaselineAdminNetworkPolicy].into_iter().fold(false, |c, k| ix.absent(k) | c)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn coalescer_debounces_with_a_bound() {
        let t0 = Instant::now();
        // (event offsets in ms) -> due offset in ms
        let check = |events: &[u64], expected: Option<u64>| {
            let mut c = Coalescer::new(50 * MS, 200 * MS);
            for e in events {
                c.event(t0 + Duration::from_millis(*e));
            }
            assert_eq!(c.due().map(|d| (d - t0).as_millis() as u64), expected, "{events:?}");
        };
        check(&[], None);
        check(&[0], Some(50));
        check(&[0, 10, 40], Some(90));
        check(&[0, 60, 120, 180], Some(200));
        check(&[5, 300], Some(205));
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS);
    }

    fn pod(name: &str, ip: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "x"}, "status": {"podIP": ip}})).unwrap()
    }

    struct Harness {
        store: Store,
        dp: FakeDataplane,
        metrics: Arc<Metrics>,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Harness {
        fn start(cfg: ReconcileConfig) -> Harness {
            let metrics = Arc::new(Metrics::new());
            let store = Store::new(Index::new(metrics.invalid_objects.clone()));
            let dp = FakeDataplane::default();
            let r = Reconciler::new(cfg, Box::new(dp.clone()), None, store.clone(), metrics.clone());
            let (stop, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(r.run(async move {
                let _ = rx.await;
            }));
            Harness { store, dp, metrics, stop, task }
        }

        fn list_all(&self, pods: &[Pod]) {
            self.store.update(|ix| {
                no_crds(ix) | ix.reset::<Namespace>([]) | ix.reset::<Node>([]) | ix.reset::<NetworkPolicy>([]) | ix.reset(pods)
            });
        }

        fn apply(&self, p: Pod) {
            self.store.update(|ix| ix.apply(&p));
        }

        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    fn cfg() -> ReconcileConfig {
        ReconcileConfig {
            debounce: 50 * MS,
            max_delay: 500 * MS,
            resync: Duration::from_secs(300),
            retry_base: 100 * MS,
            retry_max: 1000 * MS,
            established: Established::Keep,
        }
    }

    async fn advance(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_sync_until_every_kind_is_listed_then_a_full_one() {
        let h = Harness::start(cfg());
        h.apply(pod("a", "10.0.0.1"));
        h.store.update(|ix| no_crds(ix) | ix.reset::<Namespace>([]) | ix.reset::<Node>([]) | ix.reset::<NetworkPolicy>([]));
        advance(1000).await;
        assert!(h.dp.history().is_empty());
        assert!(!h.metrics.is_ready());
        h.store.update(|ix| ix.reset(&[pod("a", "10.0.0.1")]));
        advance(100).await;
        assert_eq!(h.dp.history(), ["full"]);
        assert!(h.metrics.is_ready());
        h.stop().await;
    }

    fn immediate() -> ReconcileConfig {
        ReconcileConfig { debounce: Duration::ZERO, ..cfg() }
    }

    /// Let the loop run (in real time: a held sync is on another thread)
    /// until `done`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..5000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn the_default_is_no_fixed_wait() {
        assert_eq!(ReconcileConfig::default().debounce, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_change_is_applied_at_once() {
        let h = Harness::start(immediate());
        h.list_all(&[]);
        advance(100).await;
        for i in 0..3 {
            let t = Instant::now();
            h.apply(pod(&format!("p{i}"), &format!("10.0.0.{i}")));
            advance(1000).await;
            let last = h.dp.records().pop().unwrap();
            assert_eq!((last.at - t, last.cluster.pods.len()), (Duration::ZERO, i + 1), "change {i}");
        }
        assert_eq!(h.dp.history(), ["full", "delta", "delta", "delta"]);
        // One observation per sync, of zero virtual time each.
        let text = h.metrics.render();
        assert!(text.contains("netfence_event_to_applied_seconds_count 4"), "{text}");
        assert!(text.contains("netfence_event_to_applied_seconds_sum 0.0"), "{text}");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_during_a_sync_is_one_more_sync() {
        let h = Harness::start(immediate());
        h.list_all(&[]);
        advance(100).await;
        let gate = h.dp.hold_next();
        h.apply(pod("first", "10.0.9.1"));
        until("the first change's sync to start", || gate.entered()).await;
        // 1,000 events while it runs: 100 pods, each updated ten times.
        for round in 0..10 {
            for i in 0..100 {
                h.apply(pod(&format!("p{i}"), &format!("10.{round}.0.{i}")));
            }
        }
        gate.open();
        until("the burst's sync", || h.dp.history().len() == 3).await;
        advance(1000).await;
        assert_eq!(h.dp.history(), ["full", "delta", "delta"]);
        let records = h.dp.records();
        assert_eq!(records[1].cluster.pods.len(), 1, "the held sync saw only the first change");
        let last = &records[2].cluster;
        assert_eq!(last.pods.len(), 101);
        // The last version of each pod, not a queue of its versions.
        let p7 = last.pods.iter().find(|p| p.name == "p7").unwrap();
        assert_eq!(p7.ips, ["10.9.0.7".parse::<std::net::IpAddr>().unwrap()]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn coalescing_keeps_the_ladder_and_the_first_list_rule() {
        let h = Harness::start(immediate());
        h.apply(pod("a", "10.0.0.1"));
        advance(100).await;
        assert!(h.dp.history().is_empty(), "no sync before every kind is listed");
        h.list_all(&[pod("a", "10.0.0.1")]);
        advance(1).await;
        assert_eq!(h.dp.history(), ["full"]);
        // Both failing: retries back off (100, 200 ms) and changes wait for them.
        h.dp.fail_next(3);
        let t = Instant::now();
        h.apply(pod("b", "10.0.0.2"));
        advance(10).await;
        h.apply(pod("c", "10.0.0.3"));
        advance(1000).await;
        let times: Vec<u128> = h.dp.records().iter().skip(1).map(|r| (r.at - t).as_millis()).collect();
        assert_eq!(times, [0, 0, 100, 300]);
        assert_eq!(h.dp.history()[1..], ["delta!", "full!", "full!", "full"]);
        assert_eq!(h.dp.committed().unwrap().pods.len(), 3);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_delta_sync() {
        let h = Harness::start(cfg());
        h.list_all(&[]);
        advance(100).await;
        let start = Instant::now();
        for i in 0..10 {
            h.apply(pod(&format!("p{i}"), &format!("10.0.0.{i}")));
            advance(10).await;
        }
        advance(200).await;
        assert_eq!(h.dp.history(), ["full", "delta"]);
        let last = h.dp.records().pop().unwrap();
        assert_eq!(last.cluster.pods.len(), 10);
        // The last event was at +90ms, so the sync came debounce (50ms) later.
        assert_eq!((last.at - start).as_millis(), 140);
        // A no-op update triggers nothing.
        h.apply(pod("p1", "10.0.0.1"));
        advance(200).await;
        assert_eq!(h.dp.history().len(), 2);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_still_syncs_within_max_delay() {
        let h = Harness::start(cfg());
        h.list_all(&[]);
        advance(100).await;
        let start = Instant::now();
        for i in 0..100 {
            h.apply(pod(&format!("p{i}"), &format!("10.0.1.{i}")));
            advance(20).await;
        }
        let times: Vec<u128> = h.dp.records().iter().skip(1).map(|r| (r.at - start).as_millis()).collect();
        // Each batch starts with the first change after the previous sync.
        assert_eq!(times, [500, 1020, 1540]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_ladder_delta_then_full_then_backoff() {
        let h = Harness::start(cfg());
        h.list_all(&[]);
        advance(100).await;
        // A failed delta falls back to full at once.
        h.dp.fail_next_deltas(1);
        h.apply(pod("a", "10.0.0.1"));
        advance(100).await;
        assert_eq!(h.dp.history(), ["full", "delta!", "full"]);
        assert!(h.metrics.is_ready());
        // Both failing: unready, the last good cluster stays, full retries
        // back off 100, 200, 400 ms.
        h.dp.fail_next(4);
        let t = Instant::now();
        h.apply(pod("b", "10.0.0.2"));
        advance(60).await;
        assert!(!h.metrics.is_ready());
        assert_eq!(h.dp.committed().unwrap().pods.len(), 1);
        advance(1000).await;
        let times: Vec<u128> = h.dp.records().iter().skip(3).map(|r| (r.at - t).as_millis()).collect();
        assert_eq!(times, [50, 50, 150, 350, 750]);
        assert_eq!(h.dp.history()[3..], ["delta!", "full!", "full!", "full!", "full"]);
        assert!(h.metrics.is_ready());
        assert_eq!(h.dp.committed().unwrap().pods.len(), 2);
        let text = h.metrics.render();
        assert!(text.contains("netfence_apply_failures_total{mode=\"delta\"} 2"), "{text}");
        assert!(text.contains("netfence_apply_failures_total{mode=\"full\"} 3"), "{text}");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn changes_wait_for_the_retry_while_failing() {
        let h = Harness::start(cfg());
        h.list_all(&[]);
        advance(100).await;
        h.dp.fail_next(2);
        h.apply(pod("a", "10.0.0.1"));
        advance(60).await; // delta! full! at +50; retry due at +150
        for i in 0..5 {
            h.apply(pod(&format!("b{i}"), &format!("10.0.2.{i}")));
            advance(10).await;
        }
        advance(1000).await;
        assert_eq!(h.dp.history(), ["full", "delta!", "full!", "full"]);
        assert_eq!(h.dp.committed().unwrap().pods.len(), 6);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_full_resync() {
        let h = Harness::start(ReconcileConfig { resync: Duration::from_secs(60), ..cfg() });
        h.list_all(&[]);
        advance(100).await;
        advance(30_000).await;
        h.apply(pod("a", "10.0.0.1"));
        advance(100_000).await;
        assert_eq!(h.dp.history(), ["full", "delta", "full", "full"]);
        h.stop().await;
    }

    // -----------------------------------------------------------------------
    // Cutting connections: the real dataplane on an in-memory kernel, and an
    // in-memory conntrack table.

    mod cut {
        use super::*;
        use crate::agent::conntrack::{Entry, FakeTable, Tuple, IPPROTO_TCP};
        use crate::agent::NftDataplane;
        use crate::agent::index::{Key, Kind};
        use crate::apply::FakeKernel;

        fn node() -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.0.1.0/24"]},
                "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}))
            .unwrap()
        }

        fn pod_on_n1(name: &str, ip: &str) -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "x", "labels": {"app": name}},
                "spec": {"nodeName": "n1"}, "status": {"podIP": ip}}))
            .unwrap()
        }

        /// Nothing may reach x/b.
        fn deny_b() -> NetworkPolicy {
            serde_json::from_value(json!({"metadata": {"name": "deny-b", "namespace": "x"},
                "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}}))
            .unwrap()
        }

        fn tcp(from: &str, to: &str, port: u16) -> Entry {
            Entry::new(Tuple::ports(IPPROTO_TCP, from.parse().unwrap(), 40000, to.parse().unwrap(), port))
        }

        struct Cut {
            store: Store,
            table: FakeTable,
            metrics: Arc<Metrics>,
            stop: tokio::sync::oneshot::Sender<()>,
            task: tokio::task::JoinHandle<anyhow::Result<()>>,
        }

        impl Cut {
            fn start(established: Established, entries: &[Entry]) -> Cut {
                let metrics = Arc::new(Metrics::new());
                let store = Store::new(Index::new(metrics.invalid_objects.clone()));
                let table = FakeTable::with(entries);
                let dp = NftDataplane::new("n1", Box::new(FakeKernel::default()));
                let cfg = ReconcileConfig { established, ..cfg() };
                let r = Reconciler::new(cfg, Box::new(dp), Some(Box::new(table.clone())), store.clone(), metrics.clone());
                let (stop, rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(r.run(async move {
                    let _ = rx.await;
                }));
                store.update(|ix| {
                    no_crds(ix)
                        | ix.reset::<Namespace>([])
                        | ix.reset(&[node()])
                        | ix.reset::<NetworkPolicy>([])
                        | ix.reset(&[pod_on_n1("a", "10.0.1.1"), pod_on_n1("b", "10.0.1.2")])
                });
                Cut { store, table, metrics, stop, task }
            }

            /// Let a sync, and the cut after it, happen.
            async fn settle(&self) {
                for _ in 0..20 {
                    advance(10).await;
                    tokio::task::yield_now().await;
                }
            }

            fn left(&self) -> Vec<Entry> {
                self.table.entries()
            }

            fn metric(&self, name: &str) -> String {
                let text = self.metrics.render();
                text.lines().find(|l| l.starts_with(&format!("{name} "))).map(|l| l[name.len() + 1..].to_string()).unwrap_or_default()
            }

            async fn stop(self) {
                self.stop.send(()).unwrap();
                self.task.await.unwrap().unwrap();
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_policy_change_cuts_what_it_denies_and_a_gone_pod_everything() {
            let (a_to_b, b_to_a, stray) = (tcp("10.0.1.1", "10.0.1.2", 80), tcp("10.0.1.2", "10.0.1.1", 80), tcp("10.0.1.99", "10.0.1.1", 80));
            let h = Cut::start(Established::Cut, &[a_to_b, b_to_a, stray]);
            h.settle().await;
            // The first sync judges every entry: .99 is no pod (fail closed).
            assert_eq!(h.left(), [a_to_b, b_to_a]);
            // Nothing may reach b now: a -> b goes, b -> a stays.
            h.store.update(|ix| ix.apply(&deny_b()));
            h.settle().await;
            assert_eq!(h.left(), [b_to_a]);
            assert_eq!(h.metric("netfence_conntrack_cut_entries_total{reason=\"denied\"}"), "2");
            // A pod on another node, which changes no verdict here, dumps nothing.
            let dumps = h.table.dumps();
            let remote: Pod = serde_json::from_value(json!({"metadata": {"name": "r", "namespace": "x"},
                "spec": {"nodeName": "n2"}, "status": {"podIP": "10.0.2.5"}}))
            .unwrap();
            h.store.update(|ix| ix.apply(&remote));
            h.settle().await;
            assert_eq!(h.table.dumps(), dumps);
            // a goes away: so does everything of its address, allowed or not.
            h.store.update(|ix| ix.delete(Kind::Pod, &Key { namespace: Some("x".into()), name: "a".into() }));
            h.settle().await;
            assert_eq!(h.left(), []);
            assert_eq!(h.metric("netfence_conntrack_cut_entries_total{reason=\"gone\"}"), "1");
            assert_eq!(h.metric("netfence_conntrack_errors_total"), "0");
            h.stop().await;
        }

        #[tokio::test(start_paused = true)]
        async fn keep_cuts_nothing() {
            let entries = [tcp("10.0.1.1", "10.0.1.2", 80), tcp("10.0.1.99", "10.0.1.1", 80)];
            let h = Cut::start(Established::Keep, &entries);
            h.settle().await;
            h.store.update(|ix| ix.apply(&deny_b()));
            h.settle().await;
            h.store.update(|ix| ix.delete(Kind::Pod, &Key { namespace: Some("x".into()), name: "a".into() }));
            h.settle().await;
            assert!(h.metrics.is_ready());
            assert_eq!((h.left(), h.table.dumps()), (entries.to_vec(), 0));
            h.stop().await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_failed_cut_keeps_the_sync_and_is_retried_with_the_next() {
            let a_to_b = tcp("10.0.1.1", "10.0.1.2", 80);
            let h = Cut::start(Established::Cut, &[a_to_b]);
            h.settle().await;
            h.table.fail_next(1);
            h.store.update(|ix| ix.apply(&deny_b()));
            h.settle().await;
            // Applied and ready, the failure counted; the entry still there.
            assert!(h.metrics.is_ready());
            assert_eq!(h.metric("netfence_conntrack_errors_total"), "1");
            assert_eq!(h.left(), [a_to_b]);
            // The next sync, whatever it changes, finishes the job.
            h.store.update(|ix| ix.apply(&pod_on_n1("c", "10.0.1.3")));
            h.settle().await;
            assert_eq!(h.left(), []);
            h.stop().await;
        }
    }
}
