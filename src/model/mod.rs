//! The cluster model: what compilation needs to know of a cluster, and nothing
//! more.
//!
//! Kubernetes objects are deserialised into k8s-openapi types at the edge
//! ([`load`]) and immediately validated into these types, so everything
//! downstream works on data that is known to be well formed: selectors have
//! valid operators, CIDRs parse and are masked, ports are in range, protocols
//! are one of TCP/UDP/SCTP. The model is also what the agent caches per
//! object, which keeps its memory small.
//!
//! Invariant: a [`Cluster`] is always sorted (namespaces, nodes by name; pods
//! and policies by namespace/name), so iteration order never depends on input
//! order and compiled output is deterministic.

pub mod cluster_policy;
pub mod convert;
pub mod load;
pub mod service;
pub mod sources;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::selector::{Labels, Selector};
use crate::yaml::Pos;

pub use load::{load_paths, load_paths_with_sources, LoadError};
pub use sources::Sources;

/// Where an object was read from, for messages that point back at it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: Option<usize>,
}

impl Origin {
    pub fn new(file: &str, pos: Option<Pos>) -> Origin {
        Origin { file: file.into(), line: pos.map(|p| p.line) }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file),
            None => write!(f, "{}", self.file),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The lower-case name nftables uses (`meta l4proto tcp`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Family {
    IPv4,
    IPv6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::IPv4
        } else {
            Family::IPv6
        }
    }
    pub fn of_net(net: &IpNet) -> Family {
        Family::of(&net.addr())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    /// Includes `kubernetes.io/metadata.name`, which the API server always sets.
    pub labels: Labels,
}

impl Namespace {
    pub fn new(name: &str, labels: Labels) -> Namespace {
        Namespace { name: name.to_string(), labels: labels.with(NAMESPACE_NAME_LABEL, name) }
    }
}

pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

static PORT_LISTS: std::sync::LazyLock<crate::intern::Slices<ContainerPort>> = std::sync::LazyLock::new(Default::default);

/// The shared list equal to `ports` (sorted, without duplicates).
pub fn container_ports(mut ports: Vec<ContainerPort>) -> Arc<[ContainerPort]> {
    ports.sort();
    ports.dedup();
    PORT_LISTS.intern(ports)
}

/// A container port as declared in the pod spec: what named ports resolve to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: Option<String>,
    pub host_network: bool,
    /// status.podIPs (or status.podIP), at most one per family.
    pub ips: Vec<IpAddr>,
    /// Sorted, without duplicates; interned, as labels are (a workload's
    /// replicas share one list).
    pub ports: Arc<[ContainerPort]>,
    pub phase: Option<String>,
}

impl Pod {
    /// Pods without an address, or that have finished, take no part in
    /// policy: they are neither selected nor matched as peers.
    pub fn takes_part(&self) -> bool {
        !self.ips.is_empty() && !matches!(self.phase.as_deref(), Some("Succeeded") | Some("Failed"))
    }

    /// Selected by policies and matched by pod selectors: a pod that takes
    /// part and has its own network namespace. Host-network pods are their
    /// node as far as policy is concerned.
    pub fn is_policy_pod(&self) -> bool {
        self.takes_part() && !self.host_network
    }

    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| Family::of(ip) == family)
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Resolve a named port on this pod: name and protocol must both match.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports.iter().find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol).map(|p| p.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    /// `metadata.labels`: what a cluster policy's `nodes` peer selects on.
    pub labels: Labels,
    pub internal_ips: Vec<IpAddr>,
    /// ExternalIP addresses: a `nodes` peer means them too, and traffic
    /// from them to the node's own pods is the node's.
    pub external_ips: Vec<IpAddr>,
    /// Every address: InternalIP, then ExternalIP (one slice for those
    /// that borrow the node's addresses).
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
}

impl Node {
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.internal_ips.iter().copied().find(|ip| Family::of(ip) == family)
    }

    pub fn has_address(&self, ip: IpAddr) -> bool {
        self.addresses.contains(&ip)
    }
}

/// A validated NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    #[serde(skip)]
    pub origin: Origin,
    pub pod_selector: Selector,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Effective policyTypes, after Kubernetes' defaulting.
    pub types: PolicyTypes,
    /// True when `policyTypes` was written out rather than defaulted; lets
    /// explain and lint say which.
    pub types_explicit: bool,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
    pub fn isolates(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.types.ingress,
            Direction::Egress => self.types.egress,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];
    /// The rule list's field name in the policy spec.
    pub fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
    /// The peer list's field name in a rule.
    pub fn peer_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// One ingress or egress rule. An empty `peers` matches every peer (the
/// field was missing or empty); an empty `ports` matches every port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` in one peer: both must match.
    /// `namespaces: None` means the policy's own namespace; `pods: None` means
    /// every pod of the selected namespaces.
    Pods { namespaces: Option<Selector>, pods: Option<Selector> },
    /// `cidr` is masked to its network; every `except` lies inside it.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// `None`: every port of `protocol`.
    pub port: Option<PortRef>,
    /// Only with a numeric port; `end_port >= port`.
    pub end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Named(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.port, self.end_port) {
            (None, _) => write!(f, "any/{}", self.protocol),
            (Some(PortRef::Number(p)), Some(e)) => write!(f, "{p}-{e}/{}", self.protocol),
            (Some(PortRef::Number(p)), None) => write!(f, "{p}/{}", self.protocol),
            (Some(PortRef::Named(n)), _) => write!(f, "{n}/{}", self.protocol),
        }
    }
}

/// Everything policy compilation reads: a snapshot of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub nodes: BTreeMap<String, Node>,
    pub pods: Vec<std::sync::Arc<Pod>>,
    pub policies: Vec<std::sync::Arc<Policy>>,
    /// Cluster-scoped policies (ClusterNetworkPolicy, ANP, BANP) in the
    /// order they are judged ([`ClusterPolicy::order_key`]).
    pub cluster_policies: Vec<ClusterPolicy>,
    /// Services (sorted by namespace/name) and EndpointSlices (by
    /// namespace/name): what kube-proxy translates. Nothing compiled for a
    /// node reads them; the judges and the dataplane harness do.
    pub services: Vec<std::sync::Arc<Service>>,
    pub endpoint_slices: Vec<EndpointSlice>,
}

pub use cluster_policy::ClusterPolicy;
pub use service::{EndpointSlice, Service};

/// Index of a pod in `Cluster::pods`.
pub type PodId = usize;
/// Index of a policy in `Cluster::policies`.
pub type PolicyId = usize;

impl Cluster {
    /// Restore the sort invariant after objects were added in any order,
    /// and give every pod's namespace a Namespace (a snapshot taken without
    /// namespaces still has the implicit name label to select on).
    pub fn normalize(&mut self) {
        self.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.pods.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        self.policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.policies.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        self.cluster_policies.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        self.cluster_policies.dedup_by(|a, b| a.kind == b.kind && a.name == b.name);
        self.cluster_policies.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        self.services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.services.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        self.endpoint_slices.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.endpoint_slices.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        let missing: Vec<String> = self
            .pods
            .iter()
            .map(|p| &p.namespace)
            .chain(self.policies.iter().map(|p| &p.namespace))
            .filter(|ns| !self.namespaces.contains_key(*ns))
            .cloned()
            .collect();
        for ns in missing {
            self.namespaces.insert(ns.clone(), Namespace::new(&ns, Labels::new()));
        }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
            .ok()
    }

    /// The pods of namespace `ns` (a range: pods are sorted by namespace).
    pub fn pods_in(&self, ns: &str) -> std::ops::Range<PodId> {
        let start = self.pods.partition_point(|p| p.namespace.as_str() < ns);
        start..start + self.pods[start..].partition_point(|p| p.namespace == ns)
    }

    /// The policies of namespace `ns` (a range: policies are sorted by namespace).
    pub fn policies_in(&self, ns: &str) -> std::ops::Range<PolicyId> {
        let start = self.policies.partition_point(|p| p.namespace.as_str() < ns);
        start..start + self.policies[start..].partition_point(|p| p.namespace == ns)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .binary_search_by(|s| (s.namespace.as_str(), s.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| &*self.services[i])
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns).map(|n| &n.labels)
    }

    /// The node one of whose addresses (InternalIP or ExternalIP) is `ip`.
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.nodes.values().find(|n| n.has_address(ip))
    }

    /// The policy pod (not host-network, taking part) that owns `ip`.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<PodId> {
        self.pods.iter().position(|p| p.is_policy_pod() && p.ips.contains(&ip))
    }
}
