//! The agent's Prometheus metrics and its readiness.
//!
//! One [`Metrics`] value per agent, shared by the index (invalid objects),
//! the sources (watch and load errors) and the reconcile loop (everything
//! about syncs). Rendering is the OpenMetrics text format, which Prometheus
//! scrapes natively.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::index::Kind;
use super::rule_counters::RuleCounters;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// `mode="delta"` or `mode="full"`: how a sync was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

/// Why a conntrack entry was cut: `denied` by the program in force, or its
/// pod is `gone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl ModeLabel {
    pub fn of(full: bool) -> ModeLabel {
        ModeLabel { mode: if full { "full" } else { "delta" } }
    }
}

/// Objects rejected by validation, per kind. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct InvalidObjects(Family<KindLabel, Counter>);

impl InvalidObjects {
    pub fn inc(&self, kind: Kind) {
        self.0.get_or_create(&KindLabel { kind: kind.name() }).inc();
    }
    pub fn get(&self, kind: Kind) -> u64 {
        self.0.get_or_create(&KindLabel { kind: kind.name() }).get()
    }
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms .. ~16 s: a delta is milliseconds, a full load at scale seconds.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Family<ModeLabel, Histogram, fn() -> Histogram>,
    pub event_to_applied: Histogram,
    pub transaction_ops: Histogram,
    pub transaction_element_ops: Histogram,
    pub syncs: Family<ModeLabel, Counter>,
    pub apply_failures: Family<ModeLabel, Counter>,
    pub rules: Gauge,
    pub sets: Gauge,
    pub elements: Gauge,
    pub last_success: Gauge<f64, AtomicU64>,
    pub ready_gauge: Gauge,
    pub invalid_objects: InvalidObjects,
    pub watch_errors: Family<KindLabel, Counter>,
    /// Per watched kind, once the API server answered: 1 served, 0 not
    /// installed (a CRD kind; retried periodically).
    pub kind_available: Family<KindLabel, Gauge>,
    pub source_errors: Counter,
    pub conntrack_examined: Counter,
    pub conntrack_cut: Family<ReasonLabel, Counter>,
    pub conntrack_errors: Counter,
    pub conntrack_duration: Histogram,
    /// 1 while a precondition fails, by reason ([`super::precondition`]).
    pub precondition_failed: Family<ReasonLabel, Gauge>,
    /// Egress rules of cluster policies in force with `domainNames` peers
    /// (which match nothing: host names resolve only at run time).
    pub domain_name_rules: Gauge,
    /// Per-rule counters, read from the kernel on scrape.
    rule_counters: Option<std::sync::Arc<RuleCounters>>,
    /// The last sync succeeded (and there was one).
    synced: AtomicBool,
    /// What fails of the node's preconditions, as messages.
    preconditions: Mutex<Vec<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("netfence"),
            sync_duration: Family::new_with_constructor(seconds_histogram),
            event_to_applied: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            transaction_ops: Histogram::new(exponential_buckets(1.0, 4.0, 11)),
            transaction_element_ops: Histogram::new(exponential_buckets(1.0, 4.0, 11)),
            syncs: Family::default(),
            apply_failures: Family::default(),
            rules: Gauge::default(),
            sets: Gauge::default(),
            elements: Gauge::default(),
            last_success: Gauge::default(),
            ready_gauge: Gauge::default(),
            invalid_objects: InvalidObjects::default(),
            watch_errors: Family::default(),
            kind_available: Family::default(),
            source_errors: Counter::default(),
            conntrack_examined: Counter::default(),
            conntrack_cut: Family::default(),
            conntrack_errors: Counter::default(),
            conntrack_duration: seconds_histogram(),
            precondition_failed: Family::default(),
            domain_name_rules: Gauge::default(),
            rule_counters: None,
            synced: AtomicBool::new(false),
            preconditions: Mutex::new(Vec::new()),
        };
        for reason in super::precondition::REASONS {
            m.precondition_failed.get_or_create(&ReasonLabel { reason }).set(0);
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register_with_unit(
            "sync_duration",
            "Time to apply one sync to the dataplane, by mode",
            Unit::Seconds,
            self.sync_duration.clone(),
        );
        r.register_with_unit(
            "event_to_applied",
            "Time from the first cluster change of a batch to the sync that applied it",
            Unit::Seconds,
            self.event_to_applied.clone(),
        );
        r.register("transaction_ops", "Operations in one applied transaction", self.transaction_ops.clone());
        r.register(
            "transaction_element_ops",
            "Set element additions and deletions in one applied transaction",
            self.transaction_element_ops.clone(),
        );
        r.register("syncs", "Successful syncs, by mode", self.syncs.clone());
        r.register("apply_failures", "Failed syncs, by mode (a failed delta falls back to full)", self.apply_failures.clone());
        r.register("ruleset_rules", "Rules in the applied ruleset", self.rules.clone());
        r.register("ruleset_sets", "Sets in the applied ruleset", self.sets.clone());
        r.register("ruleset_elements", "Set elements in the applied ruleset", self.elements.clone());
        r.register_with_unit(
            "last_successful_sync_timestamp",
            "Unix time of the last successful sync",
            Unit::Seconds,
            self.last_success.clone(),
        );
        r.register("ready", "1 after the first successful sync while the last sync succeeded and every precondition holds", self.ready_gauge.clone());
        r.register(
            "precondition_failed",
            "1 while a precondition of enforcement fails, by reason (e.g. bridged pod traffic bypassing the hooks without br_netfilter); the rules stay applied",
            self.precondition_failed.clone(),
        );
        r.register(
            "cluster_policy_domain_name_rules",
            "Egress rules of the cluster policies in force with domainNames peers: those peers match nothing (host names resolve only at run time, which netfence does not do); the rest of each rule is enforced",
            self.domain_name_rules.clone(),
        );
        r.register("invalid_objects", "Objects skipped because they failed validation, by kind", self.invalid_objects.0.clone());
        r.register("watch_errors", "Errors from the API watchers, by kind (each is retried with backoff)", self.watch_errors.clone());
        r.register(
            "watch_kind_available",
            "Per watched kind, once the API server answered its list: 1 served, 0 its CRD is not installed (treated as no objects, retried)",
            self.kind_available.clone(),
        );
        r.register("source_load_errors", "Files of the --source folder that failed to load, each version once (its last valid objects are kept), and failures to list the folder", self.source_errors.clone());
        r.register(
            "conntrack_examined_entries",
            "Conntrack entries judged against the program in force, or found with the address of a pod gone",
            self.conntrack_examined.clone(),
        );
        r.register(
            "conntrack_cut_entries",
            "Conntrack entries deleted, by reason: denied by the program in force, or their pod gone",
            self.conntrack_cut.clone(),
        );
        r.register(
            "conntrack_errors",
            "Failed conntrack dumps or deletions (the ruleset was applied; what they missed is looked at again with the next sync)",
            self.conntrack_errors.clone(),
        );
        r.register_with_unit(
            "conntrack_cut_duration",
            "Time to dump, judge and delete after one sync",
            Unit::Seconds,
            self.conntrack_duration.clone(),
        );
        self
    }

    /// Serve `counters` too (refreshed by the `/metrics` handler).
    /// Register more series (the drop log's).
    pub fn register_with(&mut self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry);
    }

    pub fn attach_rule_counters(&mut self, counters: std::sync::Arc<RuleCounters>) {
        counters.register(&mut self.registry);
        self.rule_counters = Some(counters);
    }

    pub fn rule_counters(&self) -> Option<std::sync::Arc<RuleCounters>> {
        self.rule_counters.clone()
    }

    pub fn set_available(&self, kind: Kind, available: bool) {
        self.kind_available.get_or_create(&KindLabel { kind: kind.name() }).set(i64::from(available));
    }

    /// Whether the last sync succeeded.
    pub fn set_ready(&self, synced: bool) {
        self.synced.store(synced, Ordering::Relaxed);
        self.ready_gauge.set(i64::from(self.is_ready()));
    }

    /// True after the first successful sync and while the last one succeeded.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// The preconditions that fail now (none: all hold).
    pub fn set_precondition_failures(&self, failures: &[super::precondition::Failure]) {
        for reason in super::precondition::REASONS {
            let failed = failures.iter().any(|f| f.reason == reason);
            self.precondition_failed.get_or_create(&ReasonLabel { reason }).set(i64::from(failed));
        }
        *self.preconditions.lock().unwrap_or_else(|e| e.into_inner()) = failures.iter().map(|f| f.message.clone()).collect();
        self.ready_gauge.set(i64::from(self.is_ready()));
    }

    /// Ready: synced, and every precondition holds.
    pub fn is_ready(&self) -> bool {
        self.is_synced() && self.preconditions.lock().map(|p| p.is_empty()).unwrap_or(false)
    }

    /// Why not ready, one line per reason (empty when ready).
    pub fn unready_reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.is_synced() {
            out.push("no successful sync yet, or the last sync failed".to_string());
        }
        out.extend(self.preconditions.lock().map(|p| p.clone()).unwrap_or_default());
        out
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn renders_every_metric_in_openmetrics_text() {
        let m = Metrics::new();
        m.sync_duration.get_or_create(&ModeLabel::of(true)).observe(0.012);
        m.event_to_applied.observe(0.07);
        m.transaction_ops.observe(3.0);
        m.apply_failures.get_or_create(&ModeLabel::of(false)).inc();
        m.sets.set(4);
        m.elements.set(1200);
        m.rules.set(17);
        m.last_success.set(1_700_000_000.5);
        m.invalid_objects.inc(Kind::NetworkPolicy);
        m.conntrack_examined.inc_by(10);
        m.conntrack_cut.get_or_create(&ReasonLabel { reason: "denied" }).inc_by(3);
        m.conntrack_errors.inc();
        m.conntrack_duration.observe(0.003);
        m.set_ready(true);
        let text = m.render();
        let cases = [
            ("netfence_sync_duration_seconds_count{mode=\"full\"}", "1"),
            ("netfence_sync_duration_seconds_bucket{le=\"0.016\",mode=\"full\"}", "1"),
            ("netfence_event_to_applied_seconds_count", "1"),
            ("netfence_transaction_ops_bucket{le=\"4.0\"}", "1"),
            ("netfence_apply_failures_total{mode=\"delta\"}", "1"),
            ("netfence_ruleset_sets", "4"),
            ("netfence_ruleset_elements", "1200"),
            ("netfence_ruleset_rules", "17"),
            ("netfence_last_successful_sync_timestamp_seconds", "1700000000.5"),
            ("netfence_invalid_objects_total{kind=\"NetworkPolicy\"}", "1"),
            ("netfence_ready", "1"),
            ("netfence_conntrack_examined_entries_total", "10"),
            ("netfence_conntrack_cut_entries_total{reason=\"denied\"}", "3"),
            ("netfence_conntrack_errors_total", "1"),
            ("netfence_conntrack_cut_duration_seconds_count", "1"),
        ];
        for (name, value) in cases {
            let l = line(&text, &format!("{name} ")).unwrap_or_else(|| panic!("{name} missing in\n{text}"));
            assert_eq!(l, format!("{name} {value}"), "{text}");
        }
        assert!(text.contains("# TYPE netfence_sync_duration_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
