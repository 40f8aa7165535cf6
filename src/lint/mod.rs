//! Lint: NetworkPolicies (and cluster policies) that very likely do not do what their author
//! meant, judged against the cluster they run in.
//!
//! The API server accepts every policy linted here; what makes each a
//! mistake is the cluster: a selector that matches no pod of the dump but
//! would in another namespace, DNS egress judged against the DNS pods that
//! really run (and the port they really listen on), a named port that no
//! destination declares, an ipBlock over the pods' own addresses. Where the
//! question is "would this flow be allowed", the answer comes from
//! [`crate::eval`], so lint never disagrees with `explain` or `test`.
//!
//! The rules live in one file per family (`selectors`, `shape`, `ports`,
//! `ipblock`, `reach`, `cluster`, `service`); [`RULES`] is the catalogue (docs/lint.md explains
//! each with its evidence, `fixtures/lint/<id>/` shows each firing and
//! fixed). Rule ids are a public interface: never renamed or reused.
//!
//! Invariants: pure (no I/O; the caller loads, [`render`] formats); findings
//! come out in a deterministic order; nothing here changes a verdict.

mod cluster;
mod ipblock;
mod ports;
mod reach;
pub mod render;
mod selectors;
mod service;
mod shape;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use serde::Serialize;

use crate::ir::Ir;
use crate::model::sources::Location;
use crate::model::{Cluster, PodId, PolicyId, Sources};
use crate::selector::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Part of a policy provably has no effect, or the input contradicts itself.
    Error,
    /// Very likely not what was meant.
    Warning,
    /// Worth knowing: behaviour that surprises, or differs between CNIs.
    Info,
}

impl Severity {
    /// SARIF's `level` (2.1.0 §3.27.10).
    pub fn sarif_level(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "note",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One rule of the catalogue.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    /// Stable id (kebab-case), what `--disable` and SARIF's `ruleId` take.
    pub id: &'static str,
    pub severity: Severity,
    /// Numbers of the pitfalls (shared/lint-pitfalls.md) the rule catches.
    pub pitfalls: &'static [u8],
    /// What it catches, one line.
    pub summary: &'static str,
    /// Why it matters and the usual fix, a few sentences.
    pub help: &'static str,
}

/// Every rule, in catalogue order (docs/lint.md follows it).
pub static RULES: &[&Rule] = &[
    &selectors::SELECTS_NO_POD,
    &selectors::PEER_SELECTS_NO_POD,
    &selectors::POD_SELECTOR_IN_OTHER_NAMESPACE,
    &selectors::UNKNOWN_LABEL_KEY,
    &selectors::SPLIT_NAMESPACE_POD_PEER,
    &selectors::NAMESPACE_SELECTOR_MATCHES_ALL,
    &selectors::EPHEMERAL_LABEL,
    &selectors::NOT_IN_MATCHES_MISSING_KEY,
    &selectors::HOST_NETWORK_POD_SELECTED,
    &shape::RULES_IGNORED,
    &shape::EMPTY_EGRESS_NOT_ISOLATED,
    &shape::EMPTY_LIST_MEANS_ALL,
    &shape::ALLOW_ALL_RULE,
    &shape::REDUNDANT_RULE,
    &shape::DUPLICATE_NAME,
    &ports::NAMED_PORT_NOT_DECLARED,
    &ports::PORT_PROTOCOL_DEFAULTS_TO_TCP,
    &ports::EPHEMERAL_PORT_RANGE,
    &ipblock::IP_BLOCK_COVERS_PODS,
    &ipblock::IP_BLOCK_COVERS_NODES,
    &ipblock::IP_BLOCK_ANY_INCLUDES_CLUSTER,
    &ipblock::IP_BLOCK_SINGLE_FAMILY,
    &ipblock::EXCEPT_COVERS_CIDR,
    &reach::EGRESS_WITHOUT_DNS,
    &reach::OTHER_SIDE_DENIES,
    &reach::NO_ENFORCING_CNI,
    &cluster::EQUAL_PRIORITY_OVERLAP,
    &cluster::BASELINE_PASS,
    &cluster::SHADOWED_DENY,
    &service::SERVICE_PORT_NOT_TARGET_PORT,
    &service::IP_BLOCK_ON_CLUSTER_IP,
    &service::CLIENT_IP_BLOCK_BEHIND_SNAT,
];

pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|r| r.id == id)
}

/// Which rules run.
#[derive(Debug, Clone, Default)]
pub struct Config {
    disabled: BTreeSet<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lint rule {0:?} (known: {known})", known = RULES.iter().map(|r| r.id).collect::<Vec<_>>().join(", "))]
pub struct UnknownRule(pub String);

impl Config {
    pub fn disable(&mut self, id: &str) -> Result<(), UnknownRule> {
        let r = rule(id).ok_or_else(|| UnknownRule(id.to_string()))?;
        self.disabled.insert(r.id);
        Ok(())
    }
    pub fn enabled(&self, r: &Rule) -> bool {
        !self.disabled.contains(r.id)
    }
}

/// One finding: a rule, the object and field it is about, what is wrong and
/// how to fix it. Its JSON is `netfence lint --format json`'s (README).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    /// `NetworkPolicy`, `Pod`, or a cluster policy's kind
    /// (`ClusterNetworkPolicy`, `AdminNetworkPolicy`, `BaselineAdminNetworkPolicy`).
    pub kind: &'static str,
    /// `namespace/name`.
    pub object: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Field path inside the object (`spec.ingress[0].from[1].podSelector`),
    /// empty when the finding is about the whole object.
    pub field: String,
    pub message: String,
    pub fix: String,
}

/// Lint every policy of `cluster` (resolved as `ir`). `sources` gives field
/// positions and what was written (from
/// [`crate::model::load_paths_with_sources`]); without them findings point at
/// the object's line and rules that need to know what was written are
/// skipped.
pub fn lint(cluster: &Cluster, ir: &Ir, sources: &Sources, config: &Config) -> Vec<Finding> {
    let mut cx = Ctx::new(cluster, ir, sources, config);
    selectors::check(&mut cx);
    shape::check(&mut cx);
    ports::check(&mut cx);
    ipblock::check(&mut cx);
    reach::check(&mut cx);
    cluster::check(&mut cx);
    service::check(&mut cx);
    let mut out = cx.out;
    out.sort_by(|a, b| {
        (&a.file, a.line, a.column, a.rule, &a.object, &a.message).cmp(&(&b.file, b.line, b.column, b.rule, &b.object, &b.message))
    });
    out.dedup();
    out
}

/// What every rule family reads, and where findings go.
pub(crate) struct Ctx<'a> {
    pub cluster: &'a Cluster,
    pub ir: &'a Ir,
    pub sources: &'a Sources,
    config: &'a Config,
    out: Vec<Finding>,
    /// Every pod of a namespace (host-network and finished ones too), by id.
    pub pods_by_ns: HashMap<&'a str, Vec<PodId>>,
    /// Every policy pod by label (key, value), in any namespace, and the
    /// answers per distinct selector: what keeps "would this selector match
    /// pods elsewhere?" cheap at 100k pods (thousands of policies share a
    /// handful of selectors).
    by_label: HashMap<(&'a str, &'a str), Vec<PodId>>,
    matched: RefCell<HashMap<Selector, Arc<Matched<'a>>>>,
    /// Namespaces per distinct namespace selector.
    ns_matched: RefCell<HashMap<Selector, Arc<Vec<&'a str>>>>,
    /// Host-network pods that take part: few, so scanned.
    pub host_pods: Vec<PodId>,
    /// Policy pods' addresses, sorted: ipBlock questions are range lookups.
    pod_ips: Vec<(IpAddr, PodId)>,
    /// Cluster-context rules about pods only speak when the input has pods,
    /// and those about namespace labels only when it has Namespaces:
    /// `lint -f policies/` alone must not call every selector empty.
    pub has_pods: bool,
    pub has_namespaces: bool,
}

impl<'a> Ctx<'a> {
    fn new(cluster: &'a Cluster, ir: &'a Ir, sources: &'a Sources, config: &'a Config) -> Ctx<'a> {
        let mut pods_by_ns: HashMap<&str, Vec<PodId>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str), Vec<PodId>> = HashMap::new();
        let mut pod_ips = Vec::new();
        let mut host_pods = Vec::new();
        for (id, p) in cluster.pods.iter().enumerate() {
            pods_by_ns.entry(&p.namespace).or_default().push(id);
            if p.is_policy_pod() {
                for (k, v) in &p.labels {
                    by_label.entry((k, v)).or_default().push(id);
                }
                pod_ips.extend(p.ips.iter().map(|ip| (*ip, id)));
            } else if p.host_network && p.takes_part() {
                host_pods.push(id);
            }
        }
        pod_ips.sort_unstable();
        Ctx {
            cluster,
            ir,
            sources,
            config,
            out: Vec::new(),
            pods_by_ns,
            by_label,
            matched: Default::default(),
            ns_matched: Default::default(),
            host_pods,
            pod_ips,
            has_pods: !cluster.pods.is_empty(),
            has_namespaces: sources.has_kind("Namespace"),
        }
    }

    pub fn on(&self, r: &Rule) -> bool {
        self.config.enabled(r)
    }

    /// Policy pods (taking part, own network namespace) of namespace `ns`.
    pub fn policy_pods_in(&self, ns: &str) -> impl Iterator<Item = PodId> + '_ {
        self.pods_by_ns.get(ns).into_iter().flatten().copied().filter(|&id| self.cluster.pods[id].is_policy_pod())
    }

    /// The policy pods (any namespace) whose labels `sel` matches, counted
    /// per namespace. Candidates come from the label index (matchLabels, or
    /// the values of an `In`), the smallest list first.
    pub fn policy_pods_matching(&self, sel: &Selector) -> Arc<Matched<'a>> {
        if let Some(hit) = self.matched.borrow().get(sel) {
            return hit.clone();
        }
        let cluster = self.cluster;
        let list = |k: &str, v: &str| -> Vec<PodId> { self.by_label.get(&(k, v)).cloned().unwrap_or_default() };
        let mut options: Vec<Vec<PodId>> = sel.match_labels.iter().map(|(k, v)| list(k, v)).collect();
        for r in sel.match_expressions.iter().filter(|r| r.operator == crate::selector::Operator::In) {
            let mut ids: Vec<PodId> = r.values.iter().flat_map(|v| list(&r.key, v)).collect();
            ids.sort_unstable();
            options.push(ids);
        }
        let candidates = match options.into_iter().min_by_key(Vec::len) {
            Some(ids) => ids,
            None => (0..cluster.pods.len()).filter(|&p| cluster.pods[p].is_policy_pod()).collect(),
        };
        let pods: Vec<PodId> = candidates.into_iter().filter(|&p| sel.matches(&cluster.pods[p].labels)).collect();
        let mut by_ns: BTreeMap<&'a str, usize> = BTreeMap::new();
        for &p in &pods {
            *by_ns.entry(cluster.pods[p].namespace.as_str()).or_default() += 1;
        }
        let m = Arc::new(Matched { pods, by_ns });
        self.matched.borrow_mut().insert(sel.clone(), m.clone());
        m
    }

    /// Names of the namespaces `sel` matches, in name order.
    pub fn namespaces_matching(&self, sel: &Selector) -> Arc<Vec<&'a str>> {
        if let Some(hit) = self.ns_matched.borrow().get(sel) {
            return hit.clone();
        }
        let names: Vec<&'a str> =
            self.cluster.namespaces.values().filter(|n| sel.matches(&n.labels)).map(|n| n.name.as_str()).collect();
        let names = Arc::new(names);
        self.ns_matched.borrow_mut().insert(sel.clone(), names.clone());
        names
    }

    /// Policy pods' addresses inside `cidr` and outside every `except`, in
    /// address order, found by range lookups.
    pub fn pod_ips_in(&self, cidr: &IpNet, except: &[IpNet]) -> Vec<(PodId, IpAddr)> {
        let span = |net: &IpNet| {
            let lo = self.pod_ips.partition_point(|(ip, _)| *ip < net.network());
            let hi = self.pod_ips.partition_point(|(ip, _)| *ip <= net.broadcast());
            (lo, hi)
        };
        let (lo, hi) = span(cidr);
        let mut out = Vec::new();
        let mut pos = lo;
        // Aggregated excepts are disjoint and sorted: keep what lies between.
        for e in IpNet::aggregate(&except.to_vec()) {
            let (elo, ehi) = span(&e);
            out.extend(self.pod_ips[pos..elo.max(pos)].iter().map(|(ip, p)| (*p, *ip)));
            pos = pos.max(ehi);
        }
        out.extend(self.pod_ips[pos..hi.max(pos)].iter().map(|(ip, p)| (*p, *ip)));
        out
    }

    /// Where `field` of policy `pid` was written; without sources, the
    /// policy's own line.
    fn policy_location(&self, pid: PolicyId, field: &str) -> Location {
        let pol = &self.cluster.policies[pid];
        match self.sources.policy(&pol.namespace, &pol.name) {
            Some(s) => s.locate(field),
            None => Location {
                file: pol.origin.file.clone(),
                pos: crate::yaml::Pos { line: pol.origin.line.unwrap_or(1), col: 1 },
            },
        }
    }

    /// Report `rule` about `field` of policy `pid`.
    pub fn policy(&mut self, rule: &'static Rule, pid: PolicyId, field: String, message: String, fix: String) {
        if !self.on(rule) {
            return;
        }
        let at = self.policy_location(pid, &field);
        let object = self.cluster.policies[pid].key();
        self.push(rule, "NetworkPolicy", object, at, field, message, fix);
    }

    /// Report `rule` about `field` of cluster policy `index` (in
    /// `Cluster::cluster_policies`); without sources, the policy's own line.
    pub fn cluster_policy(&mut self, rule: &'static Rule, index: usize, field: String, message: String, fix: String) {
        if !self.on(rule) {
            return;
        }
        let p = &self.cluster.cluster_policies[index];
        let at = match self.sources.cluster_policy(p.kind, &p.name) {
            Some(s) => s.locate(&field),
            None => Location { file: p.origin.file.clone(), pos: crate::yaml::Pos { line: p.origin.line.unwrap_or(1), col: 1 } },
        };
        self.push(rule, p.kind.name(), p.key(), at, field, message, fix);
    }

    /// Report `rule` about a pod (its document's first line).
    pub fn pod(&mut self, rule: &'static Rule, pod: PodId, message: String, fix: String) {
        if !self.on(rule) {
            return;
        }
        let p = &self.cluster.pods[pod];
        let at = self.sources.pods.get(&(p.namespace.clone(), p.name.clone())).cloned().unwrap_or(Location {
            file: "-".into(),
            pos: crate::yaml::Pos { line: 1, col: 1 },
        });
        self.push(rule, "Pod", p.key(), at, String::new(), message, fix);
    }

    /// Report `rule` at an explicit location (a second document of a policy).
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        rule: &'static Rule,
        kind: &'static str,
        object: String,
        at: Location,
        field: String,
        message: String,
        fix: String,
    ) {
        self.out.push(Finding {
            rule: rule.id,
            severity: rule.severity,
            kind,
            object,
            file: at.file.to_string(),
            line: at.pos.line,
            column: at.pos.col,
            field,
            message,
            fix,
        });
    }
}

/// The policy pods a selector matches, in any namespace.
pub(crate) struct Matched<'a> {
    pub pods: Vec<PodId>,
    pub by_ns: BTreeMap<&'a str, usize>,
}

/// `ns/a, ns/b, ns/c and 4 more`: a few names from a list, for messages that
/// must stay one line. Only the names shown are built (lists can hold
/// thousands of pods).
pub(crate) fn some_names<I>(names: I) -> String
where
    I: IntoIterator<Item = String>,
    I::IntoIter: ExactSizeIterator,
{
    const SHOWN: usize = 3;
    let mut it = names.into_iter();
    let total = it.len();
    let mut s = it.by_ref().take(SHOWN).collect::<Vec<_>>().join(", ");
    if total > SHOWN {
        s.push_str(&format!(" and {} more", total - SHOWN));
    }
    s
}

/// `1 pod` / `3 pods`, `1 node address` / `2 node addresses`.
pub(crate) fn count(n: usize, what: &str) -> String {
    match (n, what.ends_with('s')) {
        (1, _) => format!("1 {what}"),
        (_, true) => format!("{n} {what}es"),
        (_, false) => format!("{n} {what}s"),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! `check(yaml, expected)`: the rules of a family on a small cluster.

    use super::*;

    /// Lint `yaml` (documents of one file, `t.yaml`) and return
    /// `(rule, line:col)` of every finding.
    pub fn findings(yaml: &str) -> Vec<(String, String)> {
        let mut b = crate::model::load::ClusterBuilder::new().keep_sources();
        b.add_text("t.yaml", yaml).unwrap();
        let (c, _, s) = b.finish_with_sources();
        let ir = crate::ir::resolve(&c);
        lint(&c, &ir, &s, &Config::default()).into_iter().map(|f| (f.rule.to_string(), format!("{}:{}", f.line, f.column))).collect()
    }

    /// The ids of the rules that fire on `yaml`, in finding order.
    pub fn rules(yaml: &str) -> Vec<String> {
        findings(yaml).into_iter().map(|(r, _)| r).collect()
    }

    /// Pods x/a (10.0.0.1, app=a), x/b (10.0.0.2, app=b, port http 8080),
    /// y/w (10.0.1.2, app=web) and CoreDNS in kube-system (10.0.2.2, 53/UDP),
    /// namespaces labelled team=<name>, one node; then `more` documents.
    pub fn cluster(more: &str) -> String {
        format!(
            "apiVersion: v1
kind: Node
metadata: {{name: n1}}
spec: {{podCIDRs: [10.0.0.0/16]}}
status: {{addresses: [{{type: InternalIP, address: 172.18.0.2}}]}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: x, labels: {{team: x}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: y, labels: {{team: y}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Pod
metadata: {{name: a, namespace: x, labels: {{app: a}}}}
spec: {{nodeName: n1, containers: [{{name: c}}]}}
status: {{podIP: 10.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b, namespace: x, labels: {{app: b}}}}
spec: {{nodeName: n1, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}
status: {{podIP: 10.0.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: w, namespace: y, labels: {{app: web}}}}
spec: {{nodeName: n1, containers: [{{name: c}}]}}
status: {{podIP: 10.0.1.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec: {{nodeName: n1, containers: [{{name: c, ports: [{{name: dns, containerPort: 53, protocol: UDP}}, {{name: dns-tcp, containerPort: 53}}]}}]}}
status: {{podIP: 10.0.2.2}}
---
{more}"
        )
    }

    /// A NetworkPolicy `p` in namespace x with `spec` (flow YAML).
    pub fn np(spec: &str) -> String {
        np_in("x", "p", spec)
    }

    pub fn np_in(ns: &str, name: &str, spec: &str) -> String {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n")
    }

    /// Assert the rules that fire on a policy `spec` in namespace x.
    #[track_caller]
    pub fn check(spec: &str, expected: &[&str]) {
        let got = rules(&cluster(&np(spec)));
        assert_eq!(got, expected, "spec: {spec}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_ids_are_unique_kebab_case_and_documented() {
        let mut seen = BTreeSet::new();
        for r in RULES {
            assert!(seen.insert(r.id), "duplicate id {}", r.id);
            assert!(r.id.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{}", r.id);
            assert!(!r.summary.is_empty() && !r.help.is_empty() && !r.pitfalls.is_empty(), "{}", r.id);
        }
    }

    #[test]
    fn disabling_unknown_rules_lists_the_known_ones() {
        let mut c = Config::default();
        c.disable("egress-without-dns").unwrap();
        assert!(!c.enabled(&reach::EGRESS_WITHOUT_DNS));
        let e = c.disable("nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("selects-no-pod") && e.contains("egress-without-dns"), "{e}");
    }

    #[test]
    fn counts() {
        assert_eq!((count(1, "pod"), count(2, "pod"), count(2, "node address")), ("1 pod".into(), "2 pods".into(), "2 node addresses".into()));
        assert_eq!(some_names((0..5).map(|i| i.to_string())), "0, 1, 2 and 2 more");
    }

    #[test]
    fn pod_addresses_in_blocks_by_range_lookup() {
        let mut b = crate::model::load::ClusterBuilder::new().keep_sources();
        b.add_text("t.yaml", &testing::cluster("")).unwrap();
        let (c, _, s) = b.finish_with_sources();
        let ir = crate::ir::resolve(&c);
        let config = Config::default();
        let cx = Ctx::new(&c, &ir, &s, &config);
        let ips = |cidr: &str, except: &[&str]| -> Vec<String> {
            let except: Vec<IpNet> = except.iter().map(|e| e.parse().unwrap()).collect();
            cx.pod_ips_in(&cidr.parse().unwrap(), &except).into_iter().map(|(_, ip)| ip.to_string()).collect()
        };
        assert_eq!(ips("10.0.0.0/16", &[]), ["10.0.0.1", "10.0.0.2", "10.0.1.2", "10.0.2.2"]);
        assert_eq!(ips("10.0.0.0/16", &["10.0.0.0/30", "10.0.0.0/31", "10.0.2.0/24"]), ["10.0.1.2"]);
        assert_eq!(ips("0.0.0.0/0", &["10.0.0.2/32"]), ["10.0.0.1", "10.0.1.2", "10.0.2.2"]);
        assert_eq!(ips("::/0", &[]), Vec::<String>::new());
        let matching = |yaml: &str| {
            let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector = serde_json::from_str(yaml).unwrap();
            let m = cx.policy_pods_matching(&Selector::from_k8s(&sel).unwrap());
            (m.pods.len(), m.by_ns.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        };
        assert_eq!(matching(r#"{"matchLabels": {"app": "a"}}"#), (1, "x=1".into()));
        assert_eq!(matching(r#"{}"#), (4, "kube-system=1,x=2,y=1".into()));
        assert_eq!(matching(r#"{"matchLabels": {"app": "zz"}}"#), (0, "".into()));
        assert_eq!(matching(r#"{"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "web"]}]}"#), (2, "x=1,y=1".into()));
        assert_eq!(matching(r#"{"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}"#), (3, "kube-system=1,x=1,y=1".into()));
    }

    #[test]
    fn positions_point_at_the_field_inside_a_list() {
        // `kubectl get ... -o yaml` wraps everything in a kind: List.
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: p, namespace: x}\n  spec:\n    podSelector: {}\n    ingress:\n    - from:\n      - podSelector:\n          matchLabels: {app: web}\n";
        assert_eq!(testing::findings(&testing::cluster(list)), [("pod-selector-in-other-namespace".to_string(), "53:9".to_string())]);
        assert_eq!(testing::cluster("").lines().count(), 42);
    }

    #[test]
    fn a_clean_cluster_has_no_findings() {
        testing::check("{podSelector: {}}", &[]);
        testing::check("{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]}", &[]);
    }
}
