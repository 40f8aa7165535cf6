//! Per-rule counters in `/metrics`: `netfence_rule_packets_total` and
//! `netfence_rule_bytes_total` by `policy`, `direction` and `rule`.
//!
//! How they are read, and why it never slows a sync:
//!
//! - On scrape, not on the sync path: the `/metrics` handler calls
//!   [`RuleCounters::refresh`] on a blocking thread, and a refresh reads the
//!   kernel at most once per `min_interval` (10 s by default); scrapes in
//!   between serve the last values.
//! - The read is the terse listing of the live table (`nft -j -t list
//!   table inet netfence`: chains and rules with their counters, no set or
//!   map elements), so it costs in rules, which grow with policies, not
//!   with pods; `../shared/nft-facts.md` explains why listing elements at
//!   scale takes seconds.
//! - What a counter means comes from the compiled program: the dataplane
//!   publishes the [`Origins`] of what it committed (by chain and rule
//!   position), and a read is matched to them by chain and position. A
//!   generation number that is odd while a sync applies makes a read that
//!   overlapped a sync count for nothing (its positions may be the other
//!   program's); the next scrape reads again.
//! - Counters only go up: each kernel rule (by handle, unique while the
//!   table lives) is remembered with the values last read, and only the
//!   difference is added. A rule a sync rewrote is a new handle starting
//!   at zero; a full sync replaces the table, and its handles start over,
//!   so what was remembered is forgotten then. Packets counted between the
//!   last read and a rewrite are lost (never counted twice).
//! - Bounded cardinality: one series per (policy, direction, rule index)
//!   plus one per drop kind, whatever the peers, ports, families or pods;
//!   series of policies no longer in the program are removed; past
//!   `max_series` new ones go to `policy="(other)"`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::apply::{FakeKernel, NftKernel};
use crate::nft::counters::{Origins, RuleCount, Series};

/// Where the counters come from: the kernel, or a fake.
pub trait CounterSource: Send {
    /// The counted rules of `table`, in chain order; `None` if the table
    /// does not exist.
    fn read(&mut self, table: &str) -> anyhow::Result<Option<Vec<RuleCount>>>;
}

impl CounterSource for NftKernel {
    fn read(&mut self, table: &str) -> anyhow::Result<Option<Vec<RuleCount>>> {
        Ok(self.rule_counts(table)?)
    }
}

impl CounterSource for Arc<Mutex<FakeKernel>> {
    fn read(&mut self, table: &str) -> anyhow::Result<Option<Vec<RuleCount>>> {
        Ok(self.lock().unwrap_or_else(|p| p.into_inner()).rule_counts(table))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RuleLabel {
    pub policy: String,
    pub direction: String,
    pub rule: String,
}

impl From<&Series> for RuleLabel {
    fn from(s: &Series) -> Self {
        RuleLabel { policy: s.policy.clone(), direction: s.direction.clone(), rule: s.rule.clone() }
    }
}

/// The series past the cap all add to.
const OTHER: &str = "(other)";

/// What the dataplane committed: the live table and its counted rules' origins.
#[derive(Debug, Clone)]
struct Published {
    table: String,
    origins: Arc<Origins>,
    /// Changes when a sync replaced the table (its handles start over).
    epoch: u64,
}

#[derive(Debug, Default)]
struct State {
    last_read: Option<Instant>,
    epoch: u64,
    /// Values last read, by (chain, handle).
    seen: HashMap<(String, u64), (u64, u64)>,
    /// Series that exist in the families.
    series: BTreeSet<Series>,
}

pub struct RuleCounters {
    source: Mutex<Box<dyn CounterSource>>,
    /// Odd while a sync applies; every sync moves it on by two.
    generation: AtomicU64,
    published: Mutex<Option<Published>>,
    state: Mutex<State>,
    min_interval: Duration,
    max_series: usize,
    packets: Family<RuleLabel, Counter>,
    bytes: Family<RuleLabel, Counter>,
    reads: Counter,
    read_errors: Counter,
}

impl std::fmt::Debug for RuleCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleCounters").field("min_interval", &self.min_interval).field("max_series", &self.max_series).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RuleCounters {
    /// Default time between two reads of the kernel.
    pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
    /// Default cap on series per metric.
    pub const MAX_SERIES: usize = 5000;

    pub fn new(source: Box<dyn CounterSource>, min_interval: Duration, max_series: usize) -> RuleCounters {
        RuleCounters {
            source: Mutex::new(source),
            generation: AtomicU64::new(0),
            published: Mutex::new(None),
            state: Mutex::new(State::default()),
            min_interval,
            max_series: max_series.max(1),
            packets: Family::default(),
            bytes: Family::default(),
            reads: Counter::default(),
            read_errors: Counter::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "rule_packets",
            "Packets counted by netfence's rules, by policy (namespace/name; empty for drops no policy makes), direction and rule (its index in the policy's list, or isolated, invalid, fail-closed, antispoof, hairpin); a default deny counts under each isolating policy",
            self.packets.clone(),
        );
        r.register("rule_bytes", "Bytes counted by netfence's rules, labelled as netfence_rule_packets", self.bytes.clone());
        r.register("rule_counter_reads", "Reads of the live table's rule counters (at most one per interval, on scrape)", self.reads.clone());
        r.register("rule_counter_read_errors", "Failed reads of the rule counters (the last values are served)", self.read_errors.clone());
    }

    /// A sync is about to change the kernel.
    pub fn syncing(&self) {
        self.step(1);
    }

    /// Move the generation on to the next odd (`parity` 1) or even (0) value.
    fn step(&self, parity: u64) {
        let _ = self.generation.fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| Some(if (g + 1) % 2 == parity { g + 1 } else { g + 2 }));
    }

    /// The sync ended: `Some((table, origins, replaced))` when it committed
    /// (`replaced`: the whole table was rebuilt), `None` when it failed and
    /// the kernel kept what it had.
    pub fn synced(&self, committed: Option<(&str, Origins, bool)>) {
        if let Some((table, origins, replaced)) = committed {
            let mut p = lock(&self.published);
            let epoch = p.as_ref().map_or(0, |p| p.epoch) + u64::from(replaced || p.as_ref().is_some_and(|p| p.table != table));
            *p = Some(Published { table: table.to_string(), origins: Arc::new(origins), epoch });
        }
        self.step(0);
    }

    /// Read the kernel's counters into the metrics, unless the last read is
    /// younger than `min_interval`. Blocking (runs nft): call it from a
    /// blocking thread.
    pub fn refresh(&self) {
        let mut st = lock(&self.state);
        let now = Instant::now();
        if st.last_read.is_some_and(|t| now.duration_since(t) < self.min_interval) {
            return;
        }
        let before = self.generation.load(Ordering::Acquire);
        if before % 2 == 1 {
            return;
        }
        let Some(published) = lock(&self.published).clone() else { return };
        st.last_read = Some(now);
        self.reads.inc();
        let read = lock(&self.source).read(&published.table);
        if self.generation.load(Ordering::Acquire) != before {
            return;
        }
        let counts = match read {
            Ok(Some(c)) => c,
            Ok(None) => Vec::new(),
            Err(e) => {
                self.read_errors.inc();
                tracing::warn!(error = %e, "cannot read the rule counters; the last values are served");
                return;
            }
        };
        self.add(&mut st, &published, counts);
    }

    fn add(&self, st: &mut State, published: &Published, counts: Vec<RuleCount>) {
        if published.epoch != st.epoch {
            st.seen.clear();
            st.epoch = published.epoch;
        }
        // Series of the program in force: the others go.
        let current: BTreeSet<Series> = published.origins.values().flatten().flatten().flat_map(|o| o.series()).collect();
        let gone: Vec<Series> = st.series.iter().filter(|s| !current.contains(s) && s.policy != OTHER).cloned().collect();
        for s in gone {
            let label = RuleLabel::from(&s);
            self.packets.remove(&label);
            self.bytes.remove(&label);
            st.series.remove(&s);
        }
        let mut seen = HashMap::with_capacity(counts.len());
        for c in counts {
            let Some(Some(origin)) = published.origins.get(&c.chain).and_then(|v| v.get(c.position)) else { continue };
            let key = (c.chain, c.handle);
            let (p0, b0) = st.seen.get(&key).copied().unwrap_or((0, 0));
            // Lower than last read: a counter that started over.
            let (dp, db) = if c.packets >= p0 && c.bytes >= b0 { (c.packets - p0, c.bytes - b0) } else { (c.packets, c.bytes) };
            seen.insert(key, (c.packets, c.bytes));
            for s in origin.series() {
                let s = self.admit(st, s);
                let label = RuleLabel::from(&s);
                self.packets.get_or_create(&label).inc_by(dp);
                self.bytes.get_or_create(&label).inc_by(db);
            }
        }
        st.seen = seen;
    }

    /// The series to count under: `s`, or the overflow one past the cap.
    fn admit(&self, st: &mut State, s: Series) -> Series {
        if st.series.contains(&s) {
            return s;
        }
        if st.series.len() >= self.max_series {
            let other = Series { policy: OTHER.into(), direction: s.direction, rule: OTHER.into() };
            st.series.insert(other.clone());
            return other;
        }
        st.series.insert(s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::dataplane::Dataplane;
    use crate::agent::NftDataplane;
    use crate::apply::Kernel;
    use crate::model::load::load_str;
    use crate::nft::counters::Origin;
    use crate::nft::Transaction;

    struct Shared(Arc<Mutex<FakeKernel>>);
    impl Kernel for Shared {
        fn apply(&mut self, tx: &Transaction) -> Result<(), crate::apply::ApplyError> {
            lock(&self.0).apply(tx)
        }
        fn table_names(&mut self) -> Result<Vec<String>, crate::apply::ApplyError> {
            lock(&self.0).table_names()
        }
    }

    const CLUSTER: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.1.0/24]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.244.1.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.244.1.11}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}, {port: 443}]
  - from: [{ipBlock: {cidr: 192.0.2.0/24}}]
";

    struct Harness {
        kernel: Arc<Mutex<FakeKernel>>,
        dp: NftDataplane,
        counters: Arc<RuleCounters>,
        registry: Registry,
    }

    impl Harness {
        fn new(max_series: usize) -> Harness {
            let kernel = Arc::new(Mutex::new(FakeKernel::default()));
            let counters = Arc::new(RuleCounters::new(Box::new(kernel.clone()), Duration::ZERO, max_series));
            let dp = NftDataplane::new("n1", Box::new(Shared(kernel.clone()))).with_rule_counters(counters.clone());
            let mut registry = Registry::with_prefix("netfence");
            counters.register(&mut registry);
            Harness { kernel, dp, counters, registry }
        }

        fn sync(&mut self, yaml: &str, full: bool) {
            let cluster = load_str("cluster.yaml", yaml).unwrap();
            self.dp.sync(&cluster, full).unwrap();
        }

        /// Count `packets` on every rule whose origin is `want`; how many
        /// rules that was.
        fn hit(&self, want: &Origin, packets: u64) -> u64 {
            let published = lock(&self.counters.published).clone().unwrap();
            let mut k = lock(&self.kernel);
            let mut hits = 0;
            for (chain, list) in published.origins.iter() {
                for (i, o) in list.iter().enumerate() {
                    if o.as_ref() == Some(want) {
                        assert!(k.count(&published.table, chain, i, packets, packets * 100));
                        hits += 1;
                    }
                }
            }
            assert!(hits > 0, "no rule for {want:?}");
            hits
        }

        fn render(&self) -> String {
            self.counters.refresh();
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
            out
        }
    }

    fn value(text: &str, metric: &str, policy: &str, direction: &str, rule: &str) -> Option<u64> {
        let want = format!("{metric}{{policy=\"{policy}\",direction=\"{direction}\",rule=\"{rule}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&want)).map(|v| v.parse().unwrap())
    }

    #[test]
    fn counters_by_policy_direction_and_rule_from_the_compiled_program() {
        let mut h = Harness::new(100);
        h.sync(CLUSTER, true);
        let allow0 = Origin::Allow { policy: "x/web".into(), dir: crate::model::Direction::Ingress, rule: 0 };
        // Rule 0 is several nft rules (two ports, each family): one series.
        let rules = h.hit(&allow0, 2);
        assert!(rules >= 2);
        h.hit(&Origin::Isolated { policies: vec!["x/web".into()], dir: crate::model::Direction::Ingress }, 3);
        h.hit(&Origin::Antispoof, 1);
        let text = h.render();
        assert_eq!(value(&text, "netfence_rule_packets_total", "x/web", "ingress", "0"), Some(2 * rules), "{text}");
        assert_eq!(value(&text, "netfence_rule_bytes_total", "x/web", "ingress", "0"), Some(200 * rules), "{text}");
        assert_eq!(value(&text, "netfence_rule_packets_total", "x/web", "ingress", "1"), Some(0), "{text}");
        assert_eq!(value(&text, "netfence_rule_packets_total", "x/web", "ingress", "isolated"), Some(3), "{text}");
        assert_eq!(value(&text, "netfence_rule_packets_total", "", "", "antispoof"), Some(1), "{text}");
        assert_eq!(value(&text, "netfence_rule_packets_total", "", "egress", "fail-closed"), Some(0), "{text}");
        // Bounded: one series per policy rule and drop kind, not per nft rule.
        let series = text.lines().filter(|l| l.starts_with("netfence_rule_packets_total{")).count();
        // x/web's rules 0, 1 and isolated; invalid and fail-closed per
        // direction; antispoof; hairpin (ingress: x/web isolates ingress).
        assert_eq!(series, 3 + 2 * 2 + 1 + 1, "{text}");

        // Reading again adds only what is new.
        h.hit(&allow0, 1);
        let text = h.render();
        assert_eq!(value(&text, "netfence_rule_packets_total", "x/web", "ingress", "0"), Some(3 * rules), "{text}");
        assert_eq!(value(&text, "netfence_rule_packets_total", "x/web", "ingress", "isolated"), Some(3), "{text}");
    }

    #[test]
    fn counters_never_go_down_across_syncs_and_follow_removed_policies() {
        let mut h = Harness::new(100);
        h.sync(CLUSTER, true);
        let allow0 = Origin::Allow { policy: "x/web".into(), dir: crate::model::Direction::Ingress, rule: 0 };
        let rules = h.hit(&allow0, 5);
        assert_eq!(value(&h.render(), "netfence_rule_packets_total", "x/web", "ingress", "0"), Some(5 * rules));
        // A full sync rebuilds the table: new rules, counters from zero.
        h.sync(CLUSTER, true);
        h.hit(&allow0, 1);
        assert_eq!(value(&h.render(), "netfence_rule_packets_total", "x/web", "ingress", "0"), Some(6 * rules));
        // A delta that rewrites the policy's chain (a port more): new
        // rules from zero, nothing counted twice.
        let more = CLUSTER.replace("[{port: 80}, {port: 443}]", "[{port: 80}, {port: 443}, {port: 8443}]");
        h.sync(&more, false);
        assert_eq!(value(&h.render(), "netfence_rule_packets_total", "x/web", "ingress", "0"), Some(6 * rules));
        let more_rules = h.hit(&allow0, 1);
        assert!(more_rules > rules);
        assert_eq!(value(&h.render(), "netfence_rule_packets_total", "x/web", "ingress", "0"), Some(6 * rules + more_rules));
        // The policy gone: its series go.
        let gone = CLUSTER.split("---\napiVersion: networking.k8s.io/v1").next().unwrap().to_string();
        h.sync(&gone, false);
        let text = h.render();
        assert_eq!(value(&text, "netfence_rule_packets_total", "x/web", "ingress", "0"), None, "{text}");
        assert!(value(&text, "netfence_rule_packets_total", "", "ingress", "invalid").is_some(), "{text}");
    }

    #[test]
    fn reads_overlapping_a_sync_count_nothing_and_failed_syncs_keep_the_program() {
        let mut h = Harness::new(100);
        h.sync(CLUSTER, true);
        h.counters.syncing();
        h.hit(&Origin::Antispoof, 1);
        assert_eq!(value(&h.render(), "netfence_rule_packets_total", "", "", "antispoof"), None);
        h.counters.synced(None);
        assert_eq!(value(&h.render(), "netfence_rule_packets_total", "", "", "antispoof"), Some(1));
        lock(&h.kernel).fail_next(crate::apply::Reason::Invalid);
        let more = CLUSTER.replace("[{port: 80}, {port: 443}]", "[{port: 80}, {port: 443}, {port: 8443}]");
        assert!(h.dp.sync(&load_str("cluster.yaml", &more).unwrap(), false).is_err());
        h.hit(&Origin::Antispoof, 1);
        assert_eq!(value(&h.render(), "netfence_rule_packets_total", "", "", "antispoof"), Some(2));
    }

    #[test]
    fn series_past_the_cap_go_to_other() {
        let mut h = Harness::new(3);
        h.sync(CLUSTER, true);
        h.hit(&Origin::Antispoof, 1);
        let text = h.render();
        let series = text.lines().filter(|l| l.starts_with("netfence_rule_packets_total{")).count();
        assert!(series <= 3 + 2, "{text}");
        assert!(text.contains("policy=\"(other)\""), "{text}");
    }

    #[test]
    fn reads_are_rate_limited() {
        let kernel = Arc::new(Mutex::new(FakeKernel::default()));
        let counters = RuleCounters::new(Box::new(kernel), Duration::from_secs(3600), 10);
        counters.synced(Some(("netfence", Origins::new(), true)));
        counters.refresh();
        counters.refresh();
        assert_eq!(counters.reads.get(), 1);
    }
}
