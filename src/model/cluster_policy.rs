//! Cluster-scoped policies: ClusterNetworkPolicy (`policy.networking.k8s.io/
//! v1alpha2`, network-policy-api v0.2.0) and the AdminNetworkPolicy /
//! BaselineAdminNetworkPolicy (`v1alpha1`) that it replaced and that some
//! distributions still ship.
//!
//! Our own serde types of the wire format (`wire`), deliberately plain: no
//! CRD client machinery is needed to read them, and the agent lists them
//! with the same types. Each is validated here as the CRDs validate it
//! (enums, priority 0-1000, exactly one of peers/subjects/ports, list
//! lengths, port ranges, named ports not with networks or nodes peers) into
//! one model, [`ClusterPolicy`], whatever its kind: an ANP is an Admin-tier
//! policy after every Admin CNP of its priority, the BANP the Baseline
//! tier's last policy ([`ClusterPolicy::order_key`]).

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use super::convert::{check_port_name, parse_cidr, selector, FieldError};
use super::{Origin, Protocol};
use crate::selector::Selector;

/// Policy tiers in the order they decide a direction (the NetworkPolicy
/// tier sits between them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Tier {
    Admin,
    Baseline,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// Which API object a cluster policy was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ClusterKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl ClusterKind {
    pub fn name(self) -> &'static str {
        match self {
            ClusterKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ClusterKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ClusterKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
    /// Short prefix for names in messages and nft objects: CNPs go by their
    /// name alone, the older kinds are marked.
    pub fn prefix(self) -> &'static str {
        match self {
            ClusterKind::ClusterNetworkPolicy => "",
            ClusterKind::AdminNetworkPolicy => "anp:",
            ClusterKind::BaselineAdminNetworkPolicy => "banp:",
        }
    }
}

/// What a matching rule does. ANP's `Allow` is read as `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The pods a cluster policy applies to (never host-network pods).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    /// Every pod of the matching namespaces.
    Namespaces(Selector),
    /// Pods matching `pods` in namespaces matching `namespaces`.
    Pods { namespaces: Selector, pods: Selector },
}

/// One peer of a cluster policy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ClusterPeer {
    /// Every (non-host-network) pod of the matching namespaces.
    Namespaces(Selector),
    Pods { namespaces: Selector, pods: Selector },
    /// Egress only: the addresses (InternalIP, ExternalIP) of matching nodes.
    Nodes(Selector),
    /// Egress only: any address in these CIDRs (masked), pods' included.
    Networks(Vec<IpNet>),
    /// Egress only: cannot be judged offline; matches nothing (noticed).
    DomainNames(Vec<String>),
}

/// One protocol entry of a rule; a rule without any matches every protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ClusterPort {
    /// `protocol` on destination ports `start..=end` (`start == end` for a number).
    Range { protocol: Protocol, start: u16, end: u16 },
    /// A container port name on the destination pod (with whichever
    /// protocol it is declared).
    Named(String),
}

impl std::fmt::Display for ClusterPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterPort::Range { protocol, start, end } if start == end => write!(f, "{start}/{protocol}"),
            ClusterPort::Range { protocol, start, end } => write!(f, "{start}-{end}/{protocol}"),
            ClusterPort::Named(name) => write!(f, "named port {name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRule {
    /// The rule's `name` (optional in the API).
    pub name: Option<String>,
    pub action: Action,
    /// Never empty (the API requires at least one).
    pub peers: Vec<ClusterPeer>,
    /// Empty: every protocol and port.
    pub ports: Vec<ClusterPort>,
}

/// A validated cluster-scoped policy of any kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterPolicy {
    pub kind: ClusterKind,
    pub name: String,
    #[serde(skip)]
    pub origin: Origin,
    pub tier: Tier,
    /// 0-1000, lower first. The BANP has none (0).
    pub priority: u32,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    /// The order policies are judged in: by tier; within it CNPs before the
    /// older kinds (ANPs after every Admin CNP, the BANP after every
    /// Baseline CNP), then by priority, then by name (equal priorities have
    /// no order in Kubernetes; lint warns when they overlap).
    pub fn order_key(&self) -> (Tier, bool, u32, &str) {
        (self.tier, self.kind != ClusterKind::ClusterNetworkPolicy, self.priority, &self.name)
    }

    /// How messages name it: `name`, `anp:name`, `banp:default`.
    pub fn key(&self) -> String {
        format!("{}{}", self.kind.prefix(), self.name)
    }

    pub fn rules(&self, dir: super::Direction) -> &[ClusterRule] {
        match dir {
            super::Direction::Ingress => &self.ingress,
            super::Direction::Egress => &self.egress,
        }
    }

    /// The egress rules with a `domainNames` peer (only egress has them).
    pub fn domain_name_rules(&self) -> Vec<usize> {
        let has = |r: &ClusterRule| r.peers.iter().any(|p| matches!(p, ClusterPeer::DomainNames(_)));
        self.egress.iter().enumerate().filter(|(_, r)| has(r)).map(|(i, _)| i).collect()
    }

    /// What every command that judges or enforces this policy says, once,
    /// when it has `domainNames` peers: a host name's addresses come from
    /// DNS answers at run time, which manifests do not have, so those peers
    /// match nothing (as the policy test format says), in `test`, `explain`,
    /// `diff` and in the kernel alike. Never a silent allow or deny: the
    /// rule's other peers still apply, and traffic the peer would have
    /// matched goes on to the next rule and tier.
    pub fn domain_names_notice(&self) -> Option<String> {
        let rules = self.domain_name_rules();
        if rules.is_empty() {
            return None;
        }
        let list = rules.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        Some(format!(
            "{}: {} {:?} egress rule{} {list}: domainNames peers cannot be enforced from manifests (host names resolve only at run time) and match nothing here: traffic to those hosts goes on to the next rule and tier",
            self.origin,
            self.kind.name(),
            self.name,
            if rules.len() == 1 { "" } else { "s" }
        ))
    }
}

/// The serde types of the three kinds, as written. Unknown fields are
/// ignored (the API server prunes them); what is missing or mistyped is
/// checked in [`convert`].
pub mod wire {
    use super::*;

    /// `metadata`, `spec` of any of the three kinds: their specs share one
    /// shape closely enough that one type reads all three (fields of one
    /// kind written in another are refused by [`super::convert`]).
    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct Object {
        #[serde(default)]
        pub metadata: ObjectMeta,
        pub spec: Option<Spec>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct Spec {
        pub tier: Option<String>,
        pub priority: Option<i64>,
        pub subject: Option<SubjectW>,
        pub ingress: Option<Vec<RuleW>>,
        pub egress: Option<Vec<RuleW>>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct SubjectW {
        pub namespaces: Option<LabelSelector>,
        pub pods: Option<NamespacedPod>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct NamespacedPod {
        pub namespace_selector: Option<LabelSelector>,
        pub pod_selector: Option<LabelSelector>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct RuleW {
        pub name: Option<String>,
        pub action: Option<String>,
        pub from: Option<Vec<PeerW>>,
        pub to: Option<Vec<PeerW>>,
        /// CNP (v1alpha2).
        pub protocols: Option<Vec<ProtocolW>>,
        /// ANP/BANP (v1alpha1).
        pub ports: Option<Vec<AnpPortW>>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PeerW {
        pub namespaces: Option<LabelSelector>,
        pub pods: Option<NamespacedPod>,
        pub nodes: Option<LabelSelector>,
        pub networks: Option<Vec<String>>,
        pub domain_names: Option<Vec<String>>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ProtocolW {
        pub tcp: Option<ProtoPortsW>,
        pub udp: Option<ProtoPortsW>,
        pub sctp: Option<ProtoPortsW>,
        pub destination_named_port: Option<String>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ProtoPortsW {
        pub destination_port: Option<PortW>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct PortW {
        pub number: Option<i64>,
        pub range: Option<RangeW>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct RangeW {
        pub protocol: Option<String>,
        pub start: Option<i64>,
        pub end: Option<i64>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct AnpPortW {
        pub port_number: Option<AnpNumberW>,
        pub named_port: Option<String>,
        pub port_range: Option<RangeW>,
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct AnpNumberW {
        pub protocol: Option<String>,
        pub port: Option<i64>,
    }
}

use wire::*;

fn err<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { path: path.into(), message: message.into() })
}

/// Limits of the CRDs: v1alpha2 allows 25 rules per direction and 25 peers
/// or protocols per rule, v1alpha1 100.
fn limit(kind: ClusterKind) -> usize {
    match kind {
        ClusterKind::ClusterNetworkPolicy => 25,
        _ => 100,
    }
}

/// Validate one object of `kind` into the model.
pub fn convert(kind: ClusterKind, obj: &Object, origin: Origin) -> Result<ClusterPolicy, FieldError> {
    let Some(name) = obj.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return err("metadata.name", format!("a {} needs a name", kind.name()));
    };
    if !crate::selector::is_dns_subdomain(&name) {
        return err("metadata.name", format!("{name:?} is not a valid name (a DNS subdomain)"));
    }
    if kind == ClusterKind::BaselineAdminNetworkPolicy && name != "default" {
        return err("metadata.name", format!("a BaselineAdminNetworkPolicy must be named \"default\" (there is one per cluster), not {name:?}"));
    }
    let Some(spec) = &obj.spec else { return err("spec", format!("a {} needs a spec", kind.name())) };
    let tier = match kind {
        ClusterKind::AdminNetworkPolicy => Tier::Admin,
        ClusterKind::BaselineAdminNetworkPolicy => Tier::Baseline,
        ClusterKind::ClusterNetworkPolicy => match spec.tier.as_deref() {
            Some("Admin") => Tier::Admin,
            Some("Baseline") => Tier::Baseline,
            Some(other) => return err("spec.tier", format!("unknown tier {other:?} (expected Admin or Baseline)")),
            None => return err("spec.tier", "spec.tier is required (Admin or Baseline)"),
        },
    };
    if kind != ClusterKind::ClusterNetworkPolicy && spec.tier.is_some() {
        return err("spec.tier", format!("a {} has no tier (only ClusterNetworkPolicy does)", kind.name()));
    }
    let priority = match (kind, spec.priority) {
        (ClusterKind::BaselineAdminNetworkPolicy, None) => 0,
        (ClusterKind::BaselineAdminNetworkPolicy, Some(_)) => {
            return err("spec.priority", "a BaselineAdminNetworkPolicy has no priority")
        }
        (_, None) => return err("spec.priority", "spec.priority is required (0 to 1000)"),
        (_, Some(p)) => match u32::try_from(p) {
            Ok(p) if p <= 1000 => p,
            _ => return err("spec.priority", format!("priority {p} is out of range (expected 0 to 1000)")),
        },
    };
    let Some(subject) = &spec.subject else { return err("spec.subject", "spec.subject is required") };
    let subject = convert_subject(kind, subject, "spec.subject")?;
    let mut out = ClusterPolicy { kind, name, origin, tier, priority, subject, ingress: Vec::new(), egress: Vec::new() };
    for (dir, rules) in [(super::Direction::Ingress, &spec.ingress), (super::Direction::Egress, &spec.egress)] {
        let rules = rules.as_deref().unwrap_or_default();
        let path = format!("spec.{}", dir.field());
        if rules.len() > limit(kind) {
            return err(path, format!("{} rules, more than the {} allowed", rules.len(), limit(kind)));
        }
        for (i, r) in rules.iter().enumerate() {
            let rule = convert_rule(kind, tier, dir, r, &format!("{path}[{i}]"))?;
            match dir {
                super::Direction::Ingress => out.ingress.push(rule),
                super::Direction::Egress => out.egress.push(rule),
            }
        }
    }
    Ok(out)
}

/// The field names of the subject and the `pods` peer differ between API
/// versions only in the v1alpha1 `namespaces`/`pods`; both are read the same.
fn convert_subject(_kind: ClusterKind, s: &SubjectW, path: &str) -> Result<Subject, FieldError> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(Subject::Namespaces(selector(ns, &format!("{path}.namespaces"))?)),
        (None, Some(p)) => {
            let (namespaces, pods) = namespaced_pod(p, &format!("{path}.pods"))?;
            Ok(Subject::Pods { namespaces, pods })
        }
        _ => err(path, "a subject must set exactly one of namespaces or pods"),
    }
}

fn namespaced_pod(p: &NamespacedPod, path: &str) -> Result<(Selector, Selector), FieldError> {
    let namespaces = match &p.namespace_selector {
        Some(s) => selector(s, &format!("{path}.namespaceSelector"))?,
        None => Selector::default(),
    };
    let Some(pods) = &p.pod_selector else { return err(format!("{path}.podSelector"), "podSelector is required") };
    Ok((namespaces, selector(pods, &format!("{path}.podSelector"))?))
}

fn convert_rule(
    kind: ClusterKind,
    tier: Tier,
    dir: super::Direction,
    r: &RuleW,
    path: &str,
) -> Result<ClusterRule, FieldError> {
    if let Some(n) = &r.name {
        if n.chars().count() > 100 {
            return err(format!("{path}.name"), "a rule name is at most 100 characters");
        }
    }
    let action = match (kind, r.action.as_deref()) {
        (_, None) => return err(format!("{path}.action"), "action is required"),
        (ClusterKind::ClusterNetworkPolicy, Some("Accept")) => Action::Accept,
        (ClusterKind::ClusterNetworkPolicy, Some("Deny")) => Action::Deny,
        (ClusterKind::ClusterNetworkPolicy, Some("Pass")) => Action::Pass,
        (ClusterKind::AdminNetworkPolicy, Some("Allow")) => Action::Accept,
        (ClusterKind::AdminNetworkPolicy, Some("Deny")) => Action::Deny,
        (ClusterKind::AdminNetworkPolicy, Some("Pass")) => Action::Pass,
        (ClusterKind::BaselineAdminNetworkPolicy, Some("Allow")) => Action::Accept,
        (ClusterKind::BaselineAdminNetworkPolicy, Some("Deny")) => Action::Deny,
        (k, Some(other)) => {
            let expected = match k {
                ClusterKind::ClusterNetworkPolicy => "Accept, Deny or Pass",
                ClusterKind::AdminNetworkPolicy => "Allow, Deny or Pass",
                ClusterKind::BaselineAdminNetworkPolicy => "Allow or Deny",
            };
            return err(format!("{path}.action"), format!("unknown action {other:?} (expected {expected})"));
        }
    };
    let _ = tier;
    let (field, wrong, peers) = match dir {
        super::Direction::Ingress => ("from", ("to", &r.to), &r.from),
        super::Direction::Egress => ("to", ("from", &r.from), &r.to),
    };
    if wrong.1.is_some() {
        return err(format!("{path}.{}", wrong.0), format!("an {dir} rule takes `{field}`, not `{}`", wrong.0));
    }
    let peers_w = peers.as_deref().unwrap_or_default();
    if peers_w.is_empty() {
        return err(format!("{path}.{field}"), format!("`{field}` is required and needs at least one peer"));
    }
    if peers_w.len() > limit(kind) {
        return err(format!("{path}.{field}"), format!("{} peers, more than the {} allowed", peers_w.len(), limit(kind)));
    }
    let mut peers = Vec::new();
    for (i, p) in peers_w.iter().enumerate() {
        peers.push(convert_peer(dir, p, &format!("{path}.{field}[{i}]"))?);
    }
    let mut ports = Vec::new();
    match kind {
        ClusterKind::ClusterNetworkPolicy => {
            if r.ports.is_some() {
                return err(format!("{path}.ports"), "a ClusterNetworkPolicy rule takes `protocols`, not `ports` (that is AdminNetworkPolicy's field)");
            }
            if let Some(list) = &r.protocols {
                let ppath = format!("{path}.protocols");
                if list.is_empty() || list.len() > limit(kind) {
                    return err(ppath, format!("protocols needs 1 to {} entries when set", limit(kind)));
                }
                for (i, p) in list.iter().enumerate() {
                    ports.push(convert_protocol(p, &format!("{ppath}[{i}]"))?);
                }
            }
        }
        _ => {
            if r.protocols.is_some() {
                return err(format!("{path}.protocols"), format!("a {} rule takes `ports`, not `protocols`", kind.name()));
            }
            if let Some(list) = &r.ports {
                let ppath = format!("{path}.ports");
                if list.is_empty() || list.len() > limit(kind) {
                    return err(ppath, format!("ports needs 1 to {} entries when set", limit(kind)));
                }
                for (i, p) in list.iter().enumerate() {
                    ports.push(convert_anp_port(p, &format!("{ppath}[{i}]"))?);
                }
            }
        }
    }
    // The CRD's rule: named ports exist only on pods.
    if let Some(i) = ports.iter().position(|p| matches!(p, ClusterPort::Named(_))) {
        if let Some(j) = peers.iter().position(|p| matches!(p, ClusterPeer::Nodes(_) | ClusterPeer::Networks(_) | ClusterPeer::DomainNames(_))) {
            let pfield = if kind == ClusterKind::ClusterNetworkPolicy { "protocols" } else { "ports" };
            return err(
                format!("{path}.{pfield}[{i}]"),
                format!("a named port cannot be used with the networks/nodes/domainNames peer {field}[{j}] (only pods have named ports)"),
            );
        }
    }
    Ok(ClusterRule { name: r.name.clone().filter(|n| !n.is_empty()), action, peers, ports })
}

fn convert_peer(dir: super::Direction, p: &PeerW, path: &str) -> Result<ClusterPeer, FieldError> {
    let set = [p.namespaces.is_some(), p.pods.is_some(), p.nodes.is_some(), p.networks.is_some(), p.domain_names.is_some()];
    let fields = match dir {
        super::Direction::Ingress => "namespaces or pods",
        super::Direction::Egress => "namespaces, pods, nodes, networks or domainNames",
    };
    if set.iter().filter(|s| **s).count() != 1 {
        return err(path, format!("a peer must set exactly one of {fields}"));
    }
    let egress_only = |f: &str| -> Result<(), FieldError> {
        if dir == super::Direction::Ingress {
            return err(format!("{path}.{f}"), format!("`{f}` is an egress peer only (ingress peers are namespaces or pods)"));
        }
        Ok(())
    };
    if let Some(s) = &p.namespaces {
        return Ok(ClusterPeer::Namespaces(selector(s, &format!("{path}.namespaces"))?));
    }
    if let Some(np) = &p.pods {
        let (namespaces, pods) = namespaced_pod(np, &format!("{path}.pods"))?;
        return Ok(ClusterPeer::Pods { namespaces, pods });
    }
    if let Some(s) = &p.nodes {
        egress_only("nodes")?;
        return Ok(ClusterPeer::Nodes(selector(s, &format!("{path}.nodes"))?));
    }
    if let Some(list) = &p.networks {
        egress_only("networks")?;
        if list.is_empty() || list.len() > 25 {
            return err(format!("{path}.networks"), "networks needs 1 to 25 CIDRs");
        }
        let mut nets = Vec::new();
        for (i, c) in list.iter().enumerate() {
            nets.push(parse_cidr(c, &format!("{path}.networks[{i}]"))?);
        }
        nets.sort();
        nets.dedup();
        return Ok(ClusterPeer::Networks(nets));
    }
    let list = p.domain_names.clone().unwrap_or_default();
    egress_only("domainNames")?;
    if list.is_empty() || list.len() > 25 {
        return err(format!("{path}.domainNames"), "domainNames needs 1 to 25 names");
    }
    Ok(ClusterPeer::DomainNames(list))
}

fn protocol(s: Option<&str>, path: &str) -> Result<Protocol, FieldError> {
    match s {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s).map_or_else(|| err(path, format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)")), Ok),
    }
}

fn port_number(n: Option<i64>, path: &str) -> Result<u16, FieldError> {
    match n.map(u16::try_from) {
        Some(Ok(p)) if p >= 1 => Ok(p),
        Some(_) => err(path, format!("port {} is out of range (expected 1 to 65535)", n.unwrap_or_default())),
        None => err(path, "a port number is required"),
    }
}

fn range(protocol: Protocol, r: &RangeW, path: &str) -> Result<ClusterPort, FieldError> {
    let start = port_number(r.start, &format!("{path}.start"))?;
    let end = port_number(r.end, &format!("{path}.end"))?;
    if start >= end {
        return err(format!("{path}.end"), format!("range start {start} must be less than end {end}"));
    }
    Ok(ClusterPort::Range { protocol, start, end })
}

fn convert_protocol(p: &ProtocolW, path: &str) -> Result<ClusterPort, FieldError> {
    let set = [p.tcp.is_some(), p.udp.is_some(), p.sctp.is_some(), p.destination_named_port.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        return err(path, "a protocol must set exactly one of tcp, udp, sctp or destinationNamedPort");
    }
    if let Some(n) = &p.destination_named_port {
        check_port_name(n, &format!("{path}.destinationNamedPort"))?;
        return Ok(ClusterPort::Named(n.clone()));
    }
    let (proto, field, ports) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(t), _, _) => (Protocol::Tcp, "tcp", t),
        (_, Some(u), _) => (Protocol::Udp, "udp", u),
        (_, _, Some(s)) => (Protocol::Sctp, "sctp", s),
        _ => return err(path, "a protocol must set exactly one of tcp, udp, sctp or destinationNamedPort"),
    };
    let ppath = format!("{path}.{field}.destinationPort");
    let Some(port) = &ports.destination_port else {
        return err(format!("{path}.{field}"), format!("{field} needs destinationPort (a number or a range)"));
    };
    match (port.number, &port.range) {
        (Some(n), None) => {
            let n = port_number(Some(n), &format!("{ppath}.number"))?;
            Ok(ClusterPort::Range { protocol: proto, start: n, end: n })
        }
        (None, Some(r)) => {
            if r.protocol.is_some() {
                return err(format!("{ppath}.range.protocol"), "a range takes its protocol from tcp/udp/sctp");
            }
            range(proto, r, &format!("{ppath}.range"))
        }
        _ => err(ppath, "destinationPort must set exactly one of number or range"),
    }
}

fn convert_anp_port(p: &AnpPortW, path: &str) -> Result<ClusterPort, FieldError> {
    let set = [p.port_number.is_some(), p.named_port.is_some(), p.port_range.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        return err(path, "a port must set exactly one of portNumber, namedPort or portRange");
    }
    if let Some(n) = &p.port_number {
        let proto = protocol(n.protocol.as_deref(), &format!("{path}.portNumber.protocol"))?;
        let port = port_number(n.port, &format!("{path}.portNumber.port"))?;
        return Ok(ClusterPort::Range { protocol: proto, start: port, end: port });
    }
    if let Some(n) = &p.named_port {
        check_port_name(n, &format!("{path}.namedPort"))?;
        return Ok(ClusterPort::Named(n.clone()));
    }
    let r = p.port_range.clone().unwrap_or_default();
    let proto = protocol(r.protocol.as_deref(), &format!("{path}.portRange.protocol"))?;
    range(proto, &r, &format!("{path}.portRange"))
}

/// Does this rule's port list match `protocol`/`port` on destination `dst`?
/// Named ports resolve on the destination pod, any protocol it declares
/// the name with; they never match a destination that is not a policy pod.
pub fn ports_match(ports: &[ClusterPort], dst: Option<&super::Pod>, protocol: Protocol, port: u16) -> Option<Option<usize>> {
    if ports.is_empty() {
        return Some(None);
    }
    ports
        .iter()
        .position(|p| match p {
            ClusterPort::Range { protocol: pr, start, end } => *pr == protocol && (*start..=*end).contains(&port),
            ClusterPort::Named(name) => dst.and_then(|d| d.named_port(name, protocol)) == Some(port),
        })
        .map(Some)
}

/// Namespace and pod selectors of a subject or peer against pod `pod`.
fn selects_pod(c: &super::Cluster, namespaces: &Selector, pods: Option<&Selector>, pod: super::PodId) -> bool {
    let p = &c.pods[pod];
    c.namespace_labels(&p.namespace).is_some_and(|l| namespaces.matches(l)) && pods.is_none_or(|s| s.matches(&p.labels))
}

impl Subject {
    /// Does this subject select policy pod `pod`? (Host-network pods are
    /// never subjects: callers pass policy pods only.)
    pub fn selects(&self, c: &super::Cluster, pod: super::PodId) -> bool {
        match self {
            Subject::Namespaces(n) => selects_pod(c, n, None, pod),
            Subject::Pods { namespaces, pods } => selects_pod(c, namespaces, Some(pods), pod),
        }
    }
}

impl ClusterPeer {
    /// Is policy pod `pod` among the pods a `namespaces` or `pods` peer
    /// means? False for the other kinds of peer, which match addresses.
    pub fn has_pod(&self, c: &super::Cluster, pod: super::PodId) -> bool {
        match self {
            ClusterPeer::Namespaces(n) => selects_pod(c, n, None, pod),
            ClusterPeer::Pods { namespaces, pods } => selects_pod(c, namespaces, Some(pods), pod),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cnp(spec: serde_json::Value) -> Result<ClusterPolicy, FieldError> {
        let obj: Object = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap();
        convert(ClusterKind::ClusterNetworkPolicy, &obj, Origin::default())
    }

    fn base() -> serde_json::Value {
        json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}})
    }

    fn with(extra: serde_json::Value) -> serde_json::Value {
        let mut b = base();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    }

    #[test]
    fn valid_cnp_reads_every_peer_and_protocol() {
        let p = cnp(with(json!({"egress": [{"name": "r", "action": "Deny", "to": [
            {"namespaces": {"matchLabels": {"a": "b"}}},
            {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}},
            {"nodes": {}}, {"networks": ["10.0.0.7/8"]}],
            "protocols": [{"tcp": {"destinationPort": {"number": 80}}}, {"udp": {"destinationPort": {"range": {"start": 1, "end": 9}}}}]}]})))
        .unwrap();
        assert_eq!(p.egress[0].peers.len(), 4);
        assert_eq!(p.egress[0].peers[3], ClusterPeer::Networks(vec!["10.0.0.0/8".parse().unwrap()]));
        assert_eq!(p.egress[0].ports[1], ClusterPort::Range { protocol: Protocol::Udp, start: 1, end: 9 });
    }

    #[test]
    fn invalid_cnps_name_the_field() {
        let peer = json!([{"namespaces": {}}]);
        let cases = [
            (json!({"priority": 1, "subject": {"namespaces": {}}}), "spec.tier", "required"),
            (json!({"tier": "admin", "priority": 1, "subject": {"namespaces": {}}}), "spec.tier", "unknown tier"),
            (json!({"tier": "Admin", "priority": 1001, "subject": {"namespaces": {}}}), "spec.priority", "out of range"),
            (json!({"tier": "Admin", "priority": -1, "subject": {"namespaces": {}}}), "spec.priority", "out of range"),
            (json!({"tier": "Admin", "priority": 1, "subject": {}}), "spec.subject", "exactly one"),
            (json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}, "pods": {"podSelector": {}}}}), "spec.subject", "exactly one"),
            (with(json!({"ingress": [{"action": "Allow", "from": peer}]})), "spec.ingress[0].action", "unknown action"),
            (with(json!({"ingress": [{"action": "Accept"}]})), "spec.ingress[0].from", "at least one"),
            (with(json!({"ingress": [{"action": "Accept", "from": [{}]}]})), "spec.ingress[0].from[0]", "exactly one"),
            (with(json!({"ingress": [{"action": "Accept", "from": [{"networks": ["10.0.0.0/8"]}]}]})), "spec.ingress[0].from[0].networks", "egress peer only"),
            (with(json!({"egress": [{"action": "Accept", "to": [{"networks": ["10.0.0.0/33"]}]}]})), "spec.egress[0].to[0].networks[0]", "10.0.0.0/33"),
            (with(json!({"egress": [{"action": "Accept", "to": peer, "protocols": [{"tcp": {}}]}]})), "spec.egress[0].protocols[0].tcp", "destinationPort"),
            (with(json!({"egress": [{"action": "Accept", "to": peer, "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}]})), "spec.egress[0].protocols[0].tcp.destinationPort.number", "out of range"),
            (with(json!({"egress": [{"action": "Accept", "to": peer, "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}]}]})), "spec.egress[0].protocols[0].tcp.destinationPort.range.end", "less than"),
            (with(json!({"egress": [{"action": "Accept", "to": peer, "protocols": [{"tcp": {"destinationPort": {"number": 1}}, "udp": {"destinationPort": {"number": 1}}}]}]})), "spec.egress[0].protocols[0]", "exactly one"),
            (with(json!({"egress": [{"action": "Accept", "to": [{"nodes": {}}], "protocols": [{"destinationNamedPort": "http"}]}]})), "spec.egress[0].protocols[0]", "named port"),
            (with(json!({"ingress": (0..26).map(|_| json!({"action": "Deny", "from": peer})).collect::<Vec<_>>()})), "spec.ingress", "25"),
            (with(json!({"ingress": [{"action": "Deny", "from": (0..26).map(|_| json!({"namespaces": {}})).collect::<Vec<_>>()}]})), "spec.ingress[0].from", "25"),
        ];
        for (spec, path, msg) in cases {
            let e = cnp(spec.clone()).unwrap_err();
            assert_eq!(e.path, path, "{spec}: {e}");
            assert!(e.message.contains(msg), "{spec}: {}", e.message);
        }
    }

    #[test]
    fn domain_names_are_noticed_once_per_policy() {
        let p = cnp(with(json!({"egress": [
            {"action": "Accept", "to": [{"domainNames": ["example.com"]}, {"namespaces": {}}]},
            {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]},
            {"action": "Deny", "to": [{"domainNames": ["*.example.org"]}]}]})))
        .unwrap();
        assert_eq!(p.domain_name_rules(), [0, 2]);
        let n = p.domain_names_notice().unwrap();
        assert!(n.contains("ClusterNetworkPolicy \"p\" egress rules 0, 2: domainNames peers cannot be enforced"), "{n}");
        assert!(n.contains("match nothing here"), "{n}");
        assert_eq!(cnp(base()).unwrap().domain_names_notice(), None);
    }

    #[test]
    fn anp_and_banp() {
        let obj: Object = serde_json::from_value(json!({"metadata": {"name": "a"}, "spec": {"priority": 3, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {}}},
            "egress": [{"action": "Allow", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}], "ports": [{"portNumber": {"protocol": "UDP", "port": 53}}, {"namedPort": "dns"}, {"portRange": {"start": 1, "end": 2}}]}]}}))
        .unwrap();
        let p = convert(ClusterKind::AdminNetworkPolicy, &obj, Origin::default()).unwrap();
        assert_eq!((p.tier, p.egress[0].action, p.egress[0].ports.len()), (Tier::Admin, Action::Accept, 3));
        let obj: Object = serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"subject": {"namespaces": {}}}})).unwrap();
        let e = convert(ClusterKind::BaselineAdminNetworkPolicy, &obj, Origin::default()).unwrap_err();
        assert_eq!(e.path, "metadata.name");
        let obj: Object = serde_json::from_value(json!({"metadata": {"name": "default"}, "spec": {"subject": {"namespaces": {}}, "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}})).unwrap();
        let e = convert(ClusterKind::BaselineAdminNetworkPolicy, &obj, Origin::default()).unwrap_err();
        assert_eq!(e.path, "spec.ingress[0].action");
    }
}
