//! The agent's cluster index: what the watchers have seen, validated.
//!
//! Plain synchronous functions — [`Index::apply`], [`Index::delete`],
//! [`Index::reset`] — so the watchers' async shell stays thin and tests feed
//! events by hand. Objects are converted to the model as they arrive, so the
//! index holds only what compilation reads (labels, addresses, node,
//! container ports, phase), not whole k8s-openapi objects with their status
//! conditions and managed fields. Every operation says whether it changed
//! what [`Index::snapshot`] returns: a pod whose status conditions changed
//! but whose addresses did not causes no sync.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use super::metrics::InvalidObjects;
use crate::model::cluster_policy::{self, wire, ClusterKind};
use crate::model::convert::{self, FieldError};
use crate::model::{Cluster, ClusterPolicy, Namespace, Node, Origin, Pod, Policy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    NetworkPolicy,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

/// How many kinds there are (the index keeps one map per kind).
const KINDS: usize = 7;

impl Kind {
    pub const ALL: [Kind; KINDS] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::ClusterNetworkPolicy => ClusterKind::ClusterNetworkPolicy.name(),
            Kind::AdminNetworkPolicy => ClusterKind::AdminNetworkPolicy.name(),
            Kind::BaselineAdminNetworkPolicy => ClusterKind::BaselineAdminNetworkPolicy.name(),
        }
    }

    /// The index kind a cluster policy of `kind` is kept under.
    pub const fn of_cluster(kind: ClusterKind) -> Kind {
        match kind {
            ClusterKind::ClusterNetworkPolicy => Kind::ClusterNetworkPolicy,
            ClusterKind::AdminNetworkPolicy => Kind::AdminNetworkPolicy,
            ClusterKind::BaselineAdminNetworkPolicy => Kind::BaselineAdminNetworkPolicy,
        }
    }

    fn slot(self) -> usize {
        self as usize
    }

    /// Is it one of the cluster-scoped policy kinds?
    pub const fn is_cluster_policy(self) -> bool {
        matches!(self, Kind::ClusterNetworkPolicy | Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An object's identity: namespace (for namespaced kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: Option<String>,
    pub name: String,
}

impl Key {
    pub fn cluster(name: &str) -> Key {
        Key { namespace: None, name: name.to_string() }
    }

    pub fn namespaced(namespace: &str, name: &str) -> Key {
        Key { namespace: Some(namespace.to_string()), name: name.to_string() }
    }

    /// None for an object without a name, which the API server never sends.
    pub fn of(meta: &ObjectMeta) -> Option<Key> {
        let name = meta.name.clone().filter(|n| !n.is_empty())?;
        Some(Key { namespace: meta.namespace.clone().filter(|n| !n.is_empty()), name })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A validated object, as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Namespace(Namespace),
    /// Boxed, as cluster policies: an entry is as large as its largest
    /// kind, and 100k pods are entries too.
    Node(Box<Node>),
    /// Shared with the snapshots and the incremental engine.
    Pod(Arc<Pod>),
    /// Shared with the snapshots and the incremental engine.
    Policy(Arc<Policy>),
    ClusterPolicy(Box<ClusterPolicy>),
}

/// A k8s-openapi type the agent watches, with its conversion to the model.
pub trait Watched:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static
{
    const KIND: Kind;
    fn to_entry(&self) -> Result<Entry, FieldError>;
}

impl Watched for K8sNamespace {
    const KIND: Kind = Kind::Namespace;
    fn to_entry(&self) -> Result<Entry, FieldError> {
        convert::namespace(self).map(Entry::Namespace)
    }
}

impl Watched for K8sNode {
    const KIND: Kind = Kind::Node;
    fn to_entry(&self) -> Result<Entry, FieldError> {
        convert::node(self).map(|n| Entry::Node(Box::new(n)))
    }
}

impl Watched for K8sPod {
    const KIND: Kind = Kind::Pod;
    fn to_entry(&self) -> Result<Entry, FieldError> {
        convert::pod(self).map(|p| Entry::Pod(Arc::new(p)))
    }
}

impl Watched for NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    fn to_entry(&self) -> Result<Entry, FieldError> {
        // Policies from the API have no file; messages name the object.
        let name = Key::of(&self.metadata).map(|k| k.to_string()).unwrap_or_default();
        let origin = Origin { file: format!("networkpolicy/{name}").into(), line: None };
        convert::policy(self, origin).map(|p| Entry::Policy(Arc::new(p)))
    }
}

/// The API coordinates of one cluster-policy kind, for [`Crd`].
pub trait CrdKind: Clone + fmt::Debug + Send + Sync + 'static {
    const KIND: ClusterKind;
    const VERSION: &'static str;
    const PLURAL: &'static str;
}

/// The group of the three cluster-policy kinds (network-policy-api's CRDs).
pub const CRD_GROUP: &str = "policy.networking.k8s.io";

#[derive(Debug, Clone)]
pub struct Cnp;
#[derive(Debug, Clone)]
pub struct Anp;
#[derive(Debug, Clone)]
pub struct Banp;

impl CrdKind for Cnp {
    const KIND: ClusterKind = ClusterKind::ClusterNetworkPolicy;
    const VERSION: &'static str = "v1alpha2";
    const PLURAL: &'static str = "clusternetworkpolicies";
}

impl CrdKind for Anp {
    const KIND: ClusterKind = ClusterKind::AdminNetworkPolicy;
    const VERSION: &'static str = "v1alpha1";
    const PLURAL: &'static str = "adminnetworkpolicies";
}

impl CrdKind for Banp {
    const KIND: ClusterKind = ClusterKind::BaselineAdminNetworkPolicy;
    const VERSION: &'static str = "v1alpha1";
    const PLURAL: &'static str = "baselineadminnetworkpolicies";
}

/// A cluster policy as the watchers receive it: metadata typed, `spec`
/// kept as raw JSON. Reading the spec into the model's wire types happens
/// in [`Watched::to_entry`], object by object, so a spec we cannot read
/// (a field newer than ours, a type we disagree on) is one invalid object,
/// logged and counted, never a failed listing of the whole kind.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(bound = "")]
pub struct Crd<K: CrdKind> {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(skip)]
    kind: std::marker::PhantomData<K>,
}

impl<K: CrdKind> kube::Resource for Crd<K> {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        K::KIND.name().into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        CRD_GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        K::VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        K::PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<K: CrdKind> Watched for Crd<K> {
    const KIND: Kind = Kind::of_cluster(K::KIND);
    fn to_entry(&self) -> Result<Entry, FieldError> {
        let spec = match &self.spec {
            serde_json::Value::Null => None,
            v => Some(
                serde_json::from_value::<wire::Spec>(v.clone())
                    .map_err(|e| FieldError { path: "spec".into(), message: e.to_string() })?,
            ),
        };
        let obj = wire::Object { metadata: self.metadata.clone(), spec };
        // As for NetworkPolicies: no file, messages name the object.
        let name = self.metadata.name.clone().unwrap_or_default();
        let origin = Origin { file: format!("{}/{name}", K::KIND.name().to_lowercase()).into(), line: None };
        cluster_policy::convert(K::KIND, &obj, origin).map(|p| Entry::ClusterPolicy(Box::new(p)))
    }
}

/// An object passed through validation, ready for the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converted {
    Valid(Key, Entry),
    /// Failed validation (already logged and counted): the index keeps the
    /// object's last valid version, if it had one.
    Invalid(Key),
    /// No name, so nothing to key it by; never sent by an API server.
    Unnamed,
}

/// Validate an object for the index; an invalid one is logged with its
/// field path and counted.
pub fn convert<K: Watched>(obj: &K, invalid: &InvalidObjects) -> Converted {
    let Some(key) = Key::of(obj.meta()) else {
        tracing::warn!(kind = %K::KIND, path = "metadata.name", "object without a name skipped");
        invalid.inc(K::KIND);
        return Converted::Unnamed;
    };
    match obj.to_entry() {
        Ok(entry) => Converted::Valid(key, entry),
        Err(e) => {
            tracing::warn!(kind = %K::KIND, object = %key, path = %e.path, error = %e.message, "invalid object skipped");
            invalid.inc(K::KIND);
            Converted::Invalid(key)
        }
    }
}

/// One object changed since the last [`Index::take_changes`]: its value
/// then and now (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub key: Key,
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

#[derive(Debug, Default)]
pub struct Index {
    entries: [BTreeMap<Key, Entry>; KINDS],
    /// Per kind: the objects changed since the last take, with their value
    /// as of that take. What a delta sync applies, so it never walks the
    /// whole cluster; and what the program in force was compiled from,
    /// together with `entries` ([`Index::synced_pods_holding`]).
    changed: [BTreeMap<Key, Option<Entry>>; KINDS],
    /// Nothing is logged in `changed` before the first take: the first
    /// sync is a whole snapshot (and there were no pods before it).
    logging: bool,
    /// Per kind: has a full listing been seen (reset or replace)? A kind
    /// whose CRD is not installed counts as listed, empty
    /// ([`Index::absent`]).
    listed: [bool; KINDS],
    invalid: InvalidObjects,
}

impl Index {
    pub fn new(invalid: InvalidObjects) -> Index {
        Index { invalid, ..Index::default() }
    }

    /// The counter invalid objects are reported to, for converting outside
    /// the index (a relist buffers converted objects, not raw ones).
    pub fn invalid_objects(&self) -> &InvalidObjects {
        &self.invalid
    }

    /// An object was added or modified. An invalid new version keeps the
    /// last valid one: the API server validates too, so this is a
    /// disagreement about validation, and dropping the object could open
    /// traffic that an earlier version of a policy closed.
    pub fn apply<K: Watched>(&mut self, obj: &K) -> bool {
        match convert(obj, &self.invalid) {
            Converted::Valid(key, entry) => self.insert(K::KIND, key, entry),
            Converted::Invalid(_) | Converted::Unnamed => false,
        }
    }

    fn insert(&mut self, kind: Kind, key: Key, entry: Entry) -> bool {
        let map = &mut self.entries[kind.slot()];
        if map.get(&key) == Some(&entry) {
            return false;
        }
        let old = map.insert(key.clone(), entry);
        if self.logging {
            self.changed[kind.slot()].entry(key).or_insert(old);
        }
        true
    }

    pub fn delete(&mut self, kind: Kind, key: &Key) -> bool {
        let Some(old) = self.entries[kind.slot()].remove(key) else { return false };
        if self.logging {
            self.changed[kind.slot()].entry(key.clone()).or_insert(Some(old));
        }
        true
    }

    /// The objects changed since the last take (by key, each with its value
    /// then and now), and forget them: the caller now holds what the index
    /// holds. Costs what changed, not the cluster.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.logging = true;
        let mut out = Vec::new();
        for kind in Kind::ALL {
            for (key, before) in std::mem::take(&mut self.changed[kind.slot()]) {
                let after = self.entries[kind.slot()].get(&key).cloned();
                if before != after {
                    out.push(Change { kind, key, before, after });
                }
            }
        }
        out
    }

    /// [`Index::take_changes`] when a snapshot is taken too, which is all
    /// the changes a sync needs: only the addresses pods held at the last
    /// take and no longer hold (what a cut must cut; see
    /// `conntrack::gone_in`), without a list of every change.
    pub fn take_gone(&mut self) -> std::collections::BTreeSet<std::net::IpAddr> {
        self.logging = true;
        let mut out = std::collections::BTreeSet::new();
        for (key, before) in std::mem::take(&mut self.changed[Kind::Pod.slot()]) {
            let Some(Entry::Pod(was)) = before.filter(|e| matches!(e, Entry::Pod(p) if p.is_policy_pod())) else { continue };
            let now = match self.entries[Kind::Pod.slot()].get(&key) {
                Some(Entry::Pod(p)) if p.is_policy_pod() => p.ips.as_slice(),
                _ => &[],
            };
            out.extend(was.ips.iter().filter(|ip| !now.contains(ip)));
        }
        for kind in Kind::ALL {
            self.changed[kind.slot()].clear();
        }
        out
    }

    /// The pods holding any of `addrs` and every node, as of the last take
    /// (what the program in force was compiled from, whatever arrived
    /// since): enough of the cluster to place and judge connections
    /// between these addresses ([`super::conntrack`]). A scan of the pods,
    /// no copy of them.
    pub fn synced_pods_holding(&self, addrs: &std::collections::BTreeSet<std::net::IpAddr>) -> Cluster {
        let mut c = Cluster::default();
        let holds = |e: &Entry| matches!(e, Entry::Pod(p) if p.ips.iter().any(|ip| addrs.contains(ip)));
        let pods = &self.changed[Kind::Pod.slot()];
        let now = self.entries[Kind::Pod.slot()].iter().filter(|(k, _)| !pods.contains_key(*k)).map(|(_, e)| e);
        for e in now.chain(pods.values().flatten()).filter(|e| holds(e)) {
            if let Entry::Pod(p) = e {
                c.pods.push(p.clone());
            }
        }
        let nodes = &self.changed[Kind::Node.slot()];
        let now = self.entries[Kind::Node.slot()].iter().filter(|(k, _)| !nodes.contains_key(*k)).map(|(_, e)| e);
        for e in now.chain(nodes.values().flatten()) {
            if let Entry::Node(n) = e {
                c.nodes.insert(n.name.clone(), Node::clone(n));
            }
        }
        c.normalize();
        c
    }

    /// A relist: `objects` is now the whole of `kind`.
    pub fn reset<'a, K: Watched>(&mut self, objects: impl IntoIterator<Item = &'a K>) -> bool {
        let converted = objects.into_iter().map(|o| convert(o, &self.invalid)).collect();
        self.reset_converted(K::KIND, converted)
    }

    /// A relist of objects already passed through [`convert`] (the watchers
    /// convert as the listing streams in, so they never buffer whole
    /// k8s-openapi objects). Invalid ones keep their last valid version, as
    /// with [`Index::apply`].
    pub fn reset_converted(&mut self, kind: Kind, objects: Vec<Converted>) -> bool {
        let old = std::mem::take(&mut self.entries[kind.slot()]);
        let mut new = BTreeMap::new();
        for c in objects {
            match c {
                Converted::Valid(key, entry) => {
                    new.insert(key, entry);
                }
                Converted::Invalid(key) => {
                    if let Some(e) = old.get(&key) {
                        new.insert(key, e.clone());
                    }
                }
                Converted::Unnamed => {}
            }
        }
        let changed = new != old;
        if changed && self.logging {
            let log = &mut self.changed[kind.slot()];
            for (k, v) in &old {
                if new.get(k) != Some(v) {
                    log.entry(k.clone()).or_insert_with(|| Some(v.clone()));
                }
            }
            for k in new.keys().filter(|k| !old.contains_key(*k)) {
                log.entry(k.clone()).or_insert(None);
            }
        }
        self.entries[kind.slot()] = new;
        self.listed[kind.slot()] = true;
        changed
    }

    /// Replace everything with a cluster loaded elsewhere (the folder
    /// source), which counts as a listing of every kind.
    pub fn replace(&mut self, cluster: Cluster) -> bool {
        use Converted::Valid;
        let ns = cluster.namespaces.into_values().map(|n| Valid(Key::cluster(&n.name), Entry::Namespace(n)));
        let nodes = cluster.nodes.into_values().map(|n| Valid(Key::cluster(&n.name), Entry::Node(Box::new(n))));
        let pods = cluster.pods.into_iter().map(|p| Valid(Key::namespaced(&p.namespace, &p.name), Entry::Pod(p)));
        let pols =
            cluster.policies.into_iter().map(|p| Valid(Key::namespaced(&p.namespace, &p.name), Entry::Policy(p)));
        let mut changed = self.reset_converted(Kind::Namespace, ns.collect());
        changed |= self.reset_converted(Kind::Node, nodes.collect());
        changed |= self.reset_converted(Kind::Pod, pods.collect());
        changed |= self.reset_converted(Kind::NetworkPolicy, pols.collect());
        let mut cps: BTreeMap<Kind, Vec<Converted>> =
            [Kind::ClusterNetworkPolicy, Kind::AdminNetworkPolicy, Kind::BaselineAdminNetworkPolicy]
                .into_iter()
                .map(|k| (k, Vec::new()))
                .collect();
        for p in cluster.cluster_policies {
            let kind = Kind::of_cluster(p.kind);
            cps.entry(kind).or_default().push(Valid(Key::cluster(&p.name), Entry::ClusterPolicy(Box::new(p))));
        }
        for (kind, objects) in cps {
            changed |= self.reset_converted(kind, objects);
        }
        changed
    }

    /// The API server does not serve `kind` (its CRD is not installed, or
    /// was removed, which removes its objects): it is listed, and empty.
    pub fn absent(&mut self, kind: Kind) -> bool {
        self.reset_converted(kind, Vec::new())
    }

    /// Has every kind been listed at least once?
    pub fn is_listed(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    pub fn len(&self, kind: Kind) -> usize {
        self.entries[kind.slot()].len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(BTreeMap::is_empty)
    }

    /// A node, by name.
    pub fn node(&self, name: &str) -> Option<&crate::model::Node> {
        match self.entries[Kind::Node.slot()].get(&Key::cluster(name)) {
            Some(Entry::Node(n)) => Some(n),
            _ => None,
        }
    }

    /// The pods placed on a node (every phase).
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a crate::model::Pod> + 'a {
        self.entries[Kind::Pod.slot()].values().filter_map(move |e| match e {
            Entry::Pod(p) if p.node.as_deref() == Some(node) => Some(&**p),
            _ => None,
        })
    }

    /// The cluster policies held, in no particular order: what a delta
    /// that changed one leaves in force, without a snapshot.
    pub fn cluster_policies(&self) -> Vec<ClusterPolicy> {
        let kinds = Kind::ALL.into_iter().filter(|k| k.is_cluster_policy());
        kinds
            .flat_map(|k| self.entries[k.slot()].values())
            .filter_map(|e| match e {
                Entry::ClusterPolicy(p) => Some(ClusterPolicy::clone(p)),
                _ => None,
            })
            .collect()
    }

    pub fn snapshot(&self) -> Cluster {
        let mut c = Cluster::default();
        for entry in self.entries.iter().flat_map(BTreeMap::values) {
            match entry.clone() {
                Entry::Namespace(n) => {
                    c.namespaces.insert(n.name.clone(), n);
                }
                Entry::Node(n) => {
                    c.nodes.insert(n.name.clone(), *n);
                }
                Entry::Pod(p) => c.pods.push(p),
                Entry::Policy(p) => c.policies.push(p),
                Entry::ClusterPolicy(p) => c.cluster_policies.push(*p),
            }
        }
        c.normalize();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<K: Watched>(v: serde_json::Value) -> K {
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, ip: &str, labels: serde_json::Value) -> K8sPod {
        obj(json!({"metadata": {"name": name, "namespace": "x", "labels": labels}, "status": {"podIP": ip, "phase": "Running"}}))
    }

    fn policy(name: &str, port: serde_json::Value) -> NetworkPolicy {
        obj(json!({"metadata": {"name": name, "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}}))
    }

    fn pod_ips(index: &Index) -> Vec<String> {
        index.snapshot().pods.iter().map(|p| format!("{}={}", p.name, p.ips[0])).collect()
    }

    #[test]
    fn apply_delete_and_no_op_updates() {
        let mut ix = Index::default();
        assert!(ix.apply(&pod("b", "10.0.0.2", json!({}))));
        assert!(ix.apply(&pod("a", "10.0.0.1", json!({}))));
        assert_eq!(pod_ips(&ix), ["a=10.0.0.1", "b=10.0.0.2"]);
        // A status change that compilation does not read is not a change.
        let mut p = pod("a", "10.0.0.1", json!({}));
        p.status.as_mut().unwrap().message = Some("pulled image".into());
        assert!(!ix.apply(&p));
        assert!(ix.apply(&pod("a", "10.0.0.9", json!({}))));
        assert_eq!(pod_ips(&ix), ["a=10.0.0.9", "b=10.0.0.2"]);
        assert!(ix.delete(Kind::Pod, &Key::namespaced("x", "b")));
        assert!(!ix.delete(Kind::Pod, &Key::namespaced("x", "b")));
        assert_eq!(pod_ips(&ix), ["a=10.0.0.9"]);
        // The pod's namespace exists in the snapshot even before it is listed.
        assert!(ix.snapshot().namespaces.contains_key("x"));
    }

    #[test]
    fn changes_since_the_last_take_and_the_cluster_as_of_it() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut ix = Index::default();
        ix.apply(&pod("a", "10.0.0.1", json!({})));
        assert!(ix.take_changes().is_empty(), "nothing is logged before the first take");
        ix.apply(&pod("b", "10.0.0.2", json!({})));
        ix.apply(&pod("a", "10.0.0.9", json!({})));
        ix.apply(&pod("c", "10.0.0.3", json!({})));
        assert!(ix.delete(Kind::Pod, &Key::namespaced("x", "c")));
        // What the last take saw: a at its first address, no b.
        let synced = ix.synced_pods_holding(&[ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.9")].into());
        let got: Vec<String> = synced.pods.iter().map(|p| format!("{}={}", p.name, p.ips[0])).collect();
        assert_eq!(got, ["a=10.0.0.1"]);
        // c came and went: not a change.
        let got: Vec<(String, bool, bool)> = ix.take_changes().iter().map(|c| (c.key.to_string(), c.before.is_some(), c.after.is_some())).collect();
        assert_eq!(got, [("x/a".to_string(), true, true), ("x/b".to_string(), false, true)]);
        assert!(ix.take_changes().is_empty());
        assert!(ix.delete(Kind::Pod, &Key::namespaced("x", "b")));
        ix.apply(&pod("a", "10.0.0.5", json!({})));
        assert_eq!(ix.take_gone(), [ip("10.0.0.2"), ip("10.0.0.9")].into());
        assert!(ix.take_changes().is_empty());
    }

    #[test]
    fn reset_replaces_a_kind_and_marks_it_listed() {
        let mut ix = Index::default();
        ix.apply(&pod("gone", "10.0.0.1", json!({})));
        assert!(!ix.is_listed());
        let listing = [pod("a", "10.0.0.2", json!({})), pod("b", "10.0.0.3", json!({}))];
        assert!(ix.reset(&listing));
        assert_eq!(pod_ips(&ix), ["a=10.0.0.2", "b=10.0.0.3"]);
        assert!(!ix.reset(&listing), "the same listing again changes nothing");
        assert!(!ix.is_listed(), "pods alone are not the whole cluster");
        assert!(!ix.reset::<K8sNamespace>([]));
        assert!(!ix.reset::<K8sNode>([]));
        assert!(!ix.reset::<NetworkPolicy>([]));
        assert!(!ix.reset::<Crd<Cnp>>([]));
        assert!(!ix.is_listed(), "cluster policies are watched kinds too");
        assert!(!ix.absent(Kind::AdminNetworkPolicy));
        assert!(!ix.absent(Kind::BaselineAdminNetworkPolicy));
        assert!(ix.is_listed(), "a kind not installed counts as listed");
    }

    #[test]
    fn invalid_objects_are_counted_and_skipped() {
        let mut ix = Index::default();
        assert!(!ix.apply(&policy("bad", json!(0))));
        assert_eq!(ix.len(Kind::NetworkPolicy), 0);
        assert!(ix.apply(&policy("p", json!(80))));
        // An invalid update keeps the last valid version.
        assert!(!ix.apply(&policy("p", json!("Not_A_Name"))));
        assert_eq!(ix.snapshot().policies[0].ingress[0].ports[0].to_string(), "80/TCP");
        assert!(!ix.apply(&pod("x", "10.0.0.300", json!({}))));
        assert!(!ix.apply(&obj::<K8sNode>(json!({"metadata": {}}))));
        let counts: Vec<u64> = Kind::ALL.iter().map(|k| ix.invalid_objects().get(*k)).collect();
        assert_eq!(counts, [0, 1, 1, 2, 0, 0, 0]);
    }

    #[test]
    fn an_invalid_object_in_a_relist_keeps_its_last_valid_version() {
        let mut ix = Index::default();
        ix.apply(&policy("p", json!(80)));
        ix.apply(&policy("q", json!(81)));
        let listing = [policy("p", json!("Bad_Name")), policy("r", json!(82))];
        assert!(ix.reset(&listing));
        let names: Vec<String> = ix.snapshot().policies.iter().map(|p| p.key()).collect();
        assert_eq!(names, ["x/p", "x/r"]);
    }

    fn cnp(name: &str, priority: serde_json::Value) -> Crd<Cnp> {
        obj(json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name, "resourceVersion": "7"}, "status": {"conditions": []},
            "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}))
    }

    #[test]
    fn cluster_policies_are_validated_as_the_loader_does() {
        let mut ix = Index::default();
        assert!(ix.apply(&cnp("a", json!(5))));
        assert!(!ix.apply(&cnp("a", json!(5))), "the same policy again changes nothing");
        // Out of the CRD's range, and a type we cannot read: counted, skipped,
        // the last valid version kept.
        assert!(!ix.apply(&cnp("a", json!(1001))));
        assert!(!ix.apply(&cnp("b", json!("high"))));
        assert_eq!(ix.invalid_objects().get(Kind::ClusterNetworkPolicy), 2);
        let anp: Crd<Anp> = obj(json!({"metadata": {"name": "x"}, "spec": {"priority": 3, "subject": {"namespaces": {}},
            "egress": [{"name": "e", "action": "Allow", "to": [{"namespaces": {}}]}]}}));
        assert!(ix.apply(&anp));
        let got: Vec<(String, u32)> = ix.snapshot().cluster_policies.iter().map(|p| (p.key(), p.priority)).collect();
        assert_eq!(got, [("a".to_string(), 5), ("anp:x".to_string(), 3)]);
        // The same text through the loader gives the same policy.
        let text = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: a}\nspec: {tier: Admin, priority: 5, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}\n";
        let loaded = crate::model::load::load_str("f.yaml", text).unwrap();
        let (mut ours, theirs) = (ix.snapshot().cluster_policies[0].clone(), loaded.cluster_policies[0].clone());
        ours.origin = theirs.origin.clone();
        assert_eq!(ours, theirs);
        assert!(ix.delete(Kind::ClusterNetworkPolicy, &Key::cluster("a")));
        assert!(ix.absent(Kind::AdminNetworkPolicy), "a CRD removed takes its objects");
        assert!(ix.snapshot().cluster_policies.is_empty());
    }

    #[test]
    fn replace_loads_a_whole_cluster() {
        let mut b = crate::model::load::ClusterBuilder::new();
        b.add_text("c.yaml", "kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n")
            .unwrap();
        let (cluster, _) = b.finish();
        let mut ix = Index::default();
        assert!(ix.replace(cluster.clone()));
        assert!(ix.is_listed());
        assert_eq!(ix.snapshot().cluster_policies.len(), 1);
        assert_eq!(ix.snapshot(), cluster);
        assert!(!ix.replace(cluster));
        assert!(ix.replace(Cluster::default()));
        assert!(ix.is_empty());
    }
}
