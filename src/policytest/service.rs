//! Checks through a Service (docs/policy-test-format-services.md): which
//! backend a check is about and what kube-proxy does on the way.
//!
//! A check through a Service is one client-to-backend flow: `Check::flow`
//! is the flow the backend's side judges (destination the backend, port
//! the backend port) and `Check::via` says how it got there, so the
//! reference, the interpreter and real packets judge the same translated
//! flow, and reports can name the Service, the backend and any source NAT.

use std::net::IpAddr;

use serde::Serialize;

use crate::eval::{self, Endpoint, FamilyVerdict, Flow};
use crate::ir::Resolution;
use crate::model::service::{Backend, Service};
use crate::model::{Cluster, Family, Protocol};

/// How a check's traffic reaches its backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Via {
    /// `ns/name` of the Service.
    pub service: String,
    /// Where the client sends: the ClusterIP, or the entry node's address
    /// for NodePort traffic.
    pub entry: Entry,
    /// The port the client sends to (the Service port, or the nodePort).
    pub port: u16,
    pub protocol: Protocol,
    /// The backend kube-proxy sends this check's connection to; `None`
    /// when the Service has no backend for this client (none at all, or
    /// none the traffic policy leaves): the check is a deny, and `why` says
    /// why. `why` with a backend: the connection cannot be set up through
    /// that backend whatever policy says (a deny too).
    pub backend: Option<Backend>,
    pub why: Option<String>,
    /// The source the backend's ingress sees when kube-proxy masquerades
    /// (NodePort with `externalTrafficPolicy: Cluster` to a backend on
    /// another node): the entry node's InternalIP in the check's family.
    pub source_nat: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    ClusterIp { ip: IpAddr },
    NodePort { node: String, ip: IpAddr },
}

impl Entry {
    pub fn ip(&self) -> IpAddr {
        match self {
            Entry::ClusterIp { ip } | Entry::NodePort { ip, .. } => *ip,
        }
    }
}

/// A destination through a Service, as a test or `explain` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'c> {
    /// `svc/NS/NAME`: the Service's ClusterIP, at a Service port.
    ClusterIp(&'c Service),
    /// A node (`node/NAME` or one of its addresses) at a nodePort of a
    /// NodePort or LoadBalancer Service: the node is the entry node.
    NodePort(&'c Service),
}

/// Which field of the expectation an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    From,
    To,
    Port,
    Family,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaError {
    pub field: Field,
    pub message: String,
}

fn fail<T>(field: Field, message: String) -> Result<T, ViaError> {
    Err(ViaError { field, message })
}

/// `svc/NS/NAME` as a Service with a ClusterIP; `None` when `s` does not
/// start with `svc/` (it is some other endpoint).
pub fn parse_service<'c>(cluster: &'c Cluster, s: &str) -> Option<Result<&'c Service, String>> {
    let rest = s.strip_prefix("svc/")?;
    let Some((ns, name)) = rest.split_once('/').filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/')) else {
        return Some(Err(format!("{s:?} is not a Service (expected svc/NAMESPACE/NAME)")));
    };
    let Some(svc) = cluster.service(ns, name) else { return Some(Err(format!("no Service \"{ns}/{name}\" in the cluster"))) };
    if svc.cluster_ips.is_empty() {
        return Some(Err(format!(
            "Service {ns}/{name} has no ClusterIP (headless, clusterIP: None, or none written): a headless Service's clients reach the pods' own addresses, so name the pods; else write spec.clusterIP"
        )));
    }
    Some(Ok(svc))
}

/// The NodePort Service a flow to `dst` at `port`/`protocol` reaches, if
/// `dst` is a node (by name or address) and the port is some NodePort or
/// LoadBalancer Service's nodePort.
pub fn node_port_target<'c>(cluster: &'c Cluster, dst: &Endpoint, protocol: Protocol, port: u16) -> Option<Target<'c>> {
    if !matches!(dst, Endpoint::Node(_) | Endpoint::NodeAddr(..)) {
        return None;
    }
    cluster
        .services
        .iter()
        .find(|s| s.type_.has_node_ports() && s.node_port(port, protocol).is_some())
        .map(|s| Target::NodePort(s))
}

/// One check through a Service: the client-to-backend flow (`flow.dst`
/// the backend, `flow.port` the backend port; with no backend, the
/// address the client sent to) and how it got there.
#[derive(Debug, Clone)]
pub struct Through {
    pub family: Family,
    pub flow: Flow,
    pub via: Via,
}

/// The node whose hooks a client's packets leave through.
fn client_node(cluster: &Cluster, client: &Endpoint) -> Option<String> {
    match client {
        Endpoint::Pod(id) => cluster.pods[*id].node.clone(),
        Endpoint::Node(n) | Endpoint::NodeAddr(n, _) => Some(n.clone()),
        Endpoint::Ip(_) => None,
    }
}

/// The endpoint a backend is: its pod, a node at that address, or an
/// address outside the cluster (an EndpointSlice may name anything).
pub fn backend_endpoint(cluster: &Cluster, b: &Backend) -> Endpoint {
    if let Some(id) = b.pod.filter(|&id| cluster.pods[id].takes_part()) {
        return Endpoint::Pod(id);
    }
    match cluster.node_by_ip(b.ip) {
        Some(n) => Endpoint::NodeAddr(n.name.clone(), b.ip),
        None => Endpoint::Ip(b.ip),
    }
}

fn ports_of(svc: &Service, node_ports: bool) -> String {
    let list: Vec<String> = svc
        .ports
        .iter()
        .filter_map(|p| {
            let port = if node_ports { p.node_port? } else { p.port };
            Some(match &p.name {
                Some(n) => format!("{port}/{} ({n})", p.protocol),
                None => format!("{port}/{}", p.protocol),
            })
        })
        .collect();
    list.join(", ")
}

/// Every check a flow from `client` to `target` at `port`/`protocol` makes
/// (docs/policy-test-format-services.md): per family, one per backend the
/// traffic policy leaves, or one with no backend. `dst` is the endpoint
/// written (the entry node, for NodePort traffic).
pub fn expand(
    cluster: &Cluster,
    client: &Endpoint,
    dst: Option<&Endpoint>,
    target: Target<'_>,
    protocol: Protocol,
    port: u16,
    family: Option<Family>,
) -> Result<Vec<Through>, ViaError> {
    let client_text = client.display(cluster);
    let (svc, sp, entry_node) = match target {
        Target::ClusterIp(svc) => {
            if let Endpoint::Ip(ip) = client {
                return fail(
                    Field::From,
                    format!(
                        "{ip} is outside the cluster, where ClusterIP {} of Service {} is not routed: write the NodePort flow (to node/NAME at a nodePort)",
                        svc.cluster_ips[0],
                        svc.key()
                    ),
                );
            }
            let Some(sp) = svc.port(port, protocol) else {
                return fail(Field::Port, format!("{port}/{protocol} is not a port of Service {} (its ports: {})", svc.key(), ports_of(svc, false)));
            };
            (svc, sp, None)
        }
        Target::NodePort(svc) => {
            let Some(node) = dst.and_then(|d| client_node(cluster, d)) else {
                return fail(Field::To, "NodePort traffic goes to a node".into());
            };
            let Some(sp) = svc.node_port(port, protocol) else {
                return fail(Field::Port, format!("{port}/{protocol} is not a nodePort of Service {} (its nodePorts: {})", svc.key(), ports_of(svc, true)));
            };
            (svc, sp, Some(node))
        }
    };
    // NodePort traffic exists in the Service's families (those of its
    // ClusterIPs; every family when none is written).
    let served = |f: Family| svc.cluster_ips.is_empty() || svc.cluster_ip(f).is_some();
    let entry_ip = |f: Family| match (&entry_node, dst) {
        (Some(_), Some(d)) => d.ip(cluster, f).filter(|_| served(f)),
        _ => svc.cluster_ip(f),
    };
    let entry_text = || match dst {
        Some(d) if entry_node.is_some() => d.display(cluster),
        _ => format!("Service {}", svc.key()),
    };
    let families: Vec<Family> = match family {
        Some(f) => {
            if client.ip(cluster, f).is_none() {
                return fail(Field::Family, format!("{client_text} has no {f} address"));
            }
            if entry_ip(f).is_none() {
                let what = match entry_node {
                    Some(_) if served(f) => format!("{} has no {f} address", entry_text()),
                    _ => format!("Service {} has no {f} ClusterIP", svc.key()),
                };
                return fail(Field::Family, what);
            }
            vec![f]
        }
        None => {
            let fams: Vec<Family> =
                [Family::IPv4, Family::IPv6].into_iter().filter(|&f| client.ip(cluster, f).is_some() && entry_ip(f).is_some()).collect();
            if fams.is_empty() {
                return fail(Field::Family, format!("{client_text} and {} share no address family", entry_text()));
            }
            fams
        }
    };

    let from_node = client_node(cluster, client);
    // kube-proxy's `ip saddr <cluster CIDR>`: a pod with its own address.
    let from_pod = matches!(client, Endpoint::Pod(id) if cluster.pods[*id].is_policy_pod());
    let mut out = Vec::new();
    for f in families {
        let Some(eip) = entry_ip(f) else { continue };
        let entry = match &entry_node {
            Some(n) => Entry::NodePort { node: n.clone(), ip: eip },
            None => Entry::ClusterIp { ip: eip },
        };
        let all = svc.backends(cluster, sp, f);
        let total = all.len();
        // Which backends the traffic policy leaves, whether kube-proxy
        // masquerades towards other nodes, and why none may be left.
        let (backends, masquerade, why_none): (Vec<Backend>, bool, String) = match &entry_node {
            None if svc.internal_local => {
                let here = from_node.clone().unwrap_or_default();
                let why = format!("internalTrafficPolicy Local: none of its {total} backends runs on {here}, the client's node");
                (all.into_iter().filter(|b| b.node.as_deref() == Some(here.as_str())).collect(), false, why)
            }
            None => (all, false, String::new()),
            Some(e) => {
                // kube-proxy short-circuits `Local` for pods (any node's)
                // and for the entry node itself: treated as Cluster.
                let own = !from_pod && from_node.as_deref() == Some(e.as_str());
                if svc.external_local && !from_pod && !own {
                    let why = format!("externalTrafficPolicy Local: none of its {total} backends runs on {e}, the entry node");
                    (all.into_iter().filter(|b| b.node.as_deref() == Some(e.as_str())).collect(), false, why)
                } else {
                    // Cluster masquerades all of it; Local's short-circuit
                    // only the entry node's own traffic.
                    (all, !svc.external_local || own, String::new())
                }
            }
        };
        let why_none = if total == 0 {
            format!("Service {} has no {f} backend for port {}/{}", svc.key(), sp.port, sp.protocol)
        } else {
            why_none
        };
        if backends.is_empty() {
            let dst = match (&entry_node, dst) {
                (Some(_), Some(d)) => d.clone(),
                _ => Endpoint::Ip(eip),
            };
            out.push(Through {
                family: f,
                flow: Flow { src: client.clone(), dst, protocol, port, family: Some(f) },
                via: Via { service: svc.key(), entry, port, protocol, backend: None, why: Some(why_none), source_nat: None },
            });
            continue;
        }
        for b in backends {
            let source_nat = match &entry_node {
                Some(e) if masquerade && b.node.as_deref() != Some(e.as_str()) => {
                    cluster.nodes.get(e).and_then(|n| n.ip(f)).or(Some(eip))
                }
                _ => None,
            };
            // A pod short-circuited past `Local` through another node's
            // nodePort is not masqueraded: a backend off the entry node
            // answers the pod directly, never through the entry node that
            // translated the connection, so it cannot be set up.
            let why = match &entry_node {
                Some(e) if svc.external_local && from_pod && from_node.as_deref() != Some(e.as_str()) && b.node.as_deref() != Some(e.as_str()) => Some(format!(
                    "externalTrafficPolicy Local, pod traffic: kube-proxy sends it to backend {} on another node than {e} without a masquerade, so the backend answers the pod directly and the connection cannot be set up",
                    std::net::SocketAddr::new(b.ip, b.port)
                )),
                _ => None,
            };
            out.push(Through {
                family: f,
                flow: Flow { src: client.clone(), dst: backend_endpoint(cluster, &b), protocol, port: b.port, family: Some(f) },
                via: Via { service: svc.key(), entry: entry.clone(), port, protocol, backend: Some(b), why, source_nat },
            });
        }
    }
    Ok(out)
}

impl Via {
    /// Whether the client's own node translates the connection (so its
    /// egress sees the backend): always for a ClusterIP, and for NodePort
    /// traffic when the client is on the entry node. A nodePort of another
    /// node is translated only when the packet arrives there.
    pub fn translated_at_client(&self, cluster: &Cluster, client: &Endpoint) -> bool {
        match &self.entry {
            Entry::ClusterIp { .. } => true,
            Entry::NodePort { node, .. } => client_node(cluster, client).as_deref() == Some(node.as_str()),
        }
    }

    /// The client is its own backend.
    pub fn hairpin(&self, flow: &Flow) -> bool {
        self.backend.is_some() && matches!(flow.src, Endpoint::Pod(_)) && flow.src == flow.dst
    }

    fn entry_endpoint(&self) -> Endpoint {
        match &self.entry {
            Entry::ClusterIp { ip } => Endpoint::Ip(*ip),
            Entry::NodePort { node, ip } => Endpoint::NodeAddr(node.clone(), *ip),
        }
    }

    /// What each side judges, for [`crate::eval::evaluate_sides`]: the
    /// client's egress (to the backend at its port after a DNAT on the
    /// client's node, else to the entry node at the nodePort) and the
    /// backend's ingress (from the client, or from the entry node's
    /// address after a masquerade). `flow` is the check's flow.
    pub fn views(&self, cluster: &Cluster, flow: &Flow) -> (Flow, Flow) {
        let egress = if self.backend.is_some() && self.translated_at_client(cluster, &flow.src) {
            flow.clone()
        } else {
            Flow { dst: self.entry_endpoint(), port: self.port, ..flow.clone() }
        };
        let src = match (&self.entry, self.source_nat) {
            (Entry::NodePort { node, .. }, Some(ip)) => Endpoint::NodeAddr(node.clone(), ip),
            _ => flow.src.clone(),
        };
        (egress, Flow { src, ..flow.clone() })
    }

    /// How `explain` shows this translation.
    pub fn report(&self, cluster: &Cluster, flow: &Flow, family: Family) -> crate::explain::ViaReport {
        let (egress, _) = self.views(cluster, flow);
        let (entry, entry_node) = match &self.entry {
            Entry::ClusterIp { .. } => ("cluster_ip", None),
            Entry::NodePort { node, .. } => ("node_port", Some(node.clone())),
        };
        let b = self.backend.as_ref();
        crate::explain::ViaReport {
            service: self.service.clone(),
            entry,
            entry_node,
            entry_ip: self.entry.ip(),
            port: self.port,
            protocol: self.protocol,
            backend: b.map(|_| flow.dst.display(cluster)),
            backend_ip: b.map(|b| b.ip),
            backend_port: b.map(|b| b.port),
            source_nat: self.source_nat,
            egress_sees: (b.is_some() && egress.dst != flow.dst).then(|| egress.dst.ip(cluster, family)).flatten(),
            hairpin: self.hairpin(flow),
            why: self.why.clone(),
        }
    }

    /// How a report names the destination the client wrote.
    pub fn written_to(&self, cluster: &Cluster) -> String {
        match &self.entry {
            Entry::ClusterIp { .. } => format!("svc/{}", self.service),
            Entry::NodePort { .. } => self.entry_endpoint().display(cluster),
        }
    }

    /// `x/a -> svc/x/web 80/TCP via x/b 10.244.2.11:8080` (or `via no backend`).
    pub fn describe(&self, cluster: &Cluster, flow: &Flow) -> String {
        let via = match &self.backend {
            Some(b) => {
                let nat = self.source_nat.map(|ip| format!(", masqueraded to {ip}")).unwrap_or_default();
                format!("via {} {}{nat}", flow.dst.display(cluster), std::net::SocketAddr::new(b.ip, b.port))
            }
            None => "via no backend".to_string(),
        };
        format!("{} -> {} {}/{} {via}", flow.src.display(cluster), self.written_to(cluster), self.port, self.protocol)
    }
}

/// The reference verdict of a check through a Service.
pub fn evaluate<R: Resolution + ?Sized>(cluster: &Cluster, ir: &R, flow: &Flow, via: &Via, family: Family) -> FamilyVerdict {
    let (egress, ingress) = via.views(cluster, flow);
    match (&via.backend, &via.why) {
        (Some(_), None) => eval::evaluate_sides(cluster, ir, &egress, &ingress, family),
        (_, why) => eval::evaluate_no_backend(cluster, ir, &egress, family, why.as_deref().unwrap_or("no backend")),
    }
}

/// The explanation of a check through a Service (one family, one backend).
pub fn explain(cluster: &Cluster, flow: &Flow, via: &Via, v: &FamilyVerdict) -> crate::explain::Report {
    let ingress_of = match &via.backend {
        Some(_) => flow.dst.display(cluster),
        None => via.written_to(cluster),
    };
    crate::explain::report_via(cluster, flow.src.display(cluster), via.written_to(cluster), via.port, &ingress_of, v, via.report(cluster, flow, v.family))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(extra: &str) -> Cluster {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let base = std::fs::read_to_string(root.join("fixtures/clusters/services.yaml")).unwrap();
        crate::model::load::load_str("services.yaml", &format!("{base}---\n{extra}")).unwrap()
    }

    /// Expand `from -> to` at TCP `port` (`to` a `svc/` or a node at a
    /// nodePort): one line per check, `family backend ip:port`, then what
    /// egress sees when it is not the backend (`egress=`), `unreachable`
    /// when the connection cannot be set up through that backend, then the
    /// masquerade (`nat=`), or `no backend: why`.
    fn expansion(c: &Cluster, from: &str, to: &str, port: u16) -> Result<String, String> {
        let src = Endpoint::parse(c, from).unwrap();
        let (target, dst) = match parse_service(c, to) {
            Some(s) => (Target::ClusterIp(s?), None),
            None => {
                let d = Endpoint::parse(c, to).unwrap();
                (node_port_target(c, &d, Protocol::Tcp, port).ok_or("not a nodePort")?, Some(d))
            }
        };
        let out = expand(c, &src, dst.as_ref(), target, Protocol::Tcp, port, None).map_err(|e| format!("{:?}: {}", e.field, e.message))?;
        let lines: Vec<String> = out
            .iter()
            .map(|t| {
                let v = &t.via;
                let Some(b) = &v.backend else { return format!("{} no backend: {}", t.family, v.why.as_deref().unwrap_or("")) };
                let (egress, _) = v.views(c, &t.flow);
                let mut s = format!("{} {} {}:{}", t.family, t.flow.dst.display(c), b.ip, b.port);
                if egress.dst != t.flow.dst {
                    s.push_str(&format!(" egress={}:{}", egress.dst.display(c), egress.port));
                }
                if v.why.is_some() {
                    s.push_str(" unreachable");
                }
                if let Some(nat) = v.source_nat {
                    s.push_str(&format!(" nat={nat}"));
                }
                s
            })
            .collect();
        Ok(lines.join("\n"))
    }

    fn check(from: &str, to: &str, port: u16, want: &str) {
        let c = cluster("");
        assert_eq!(expansion(&c, from, to, port).unwrap_or_else(|e| e), want.trim(), "{from} -> {to}:{port}");
    }

    #[test]
    fn cluster_ip_every_backend_per_family_at_its_target_port() {
        check(
            "client/c3",
            "svc/shop/web",
            80,
            "IPv4 shop/web-1 10.244.1.10:8080\nIPv4 shop/web-2 10.244.2.10:8081\nIPv6 shop/web-1 fd00:10:244:1::10:8080\nIPv6 shop/web-2 fd00:10:244:2::10:8081",
        );
        // Single-stack Service: IPv4 only, whatever the client has.
        check("client/c1", "svc/shop/db", 5432, "IPv4 shop/db-0 10.244.2.20:5432");
        // A node as client: the same backends.
        check("node/node-3", "svc/shop/db", 5432, "IPv4 shop/db-0 10.244.2.20:5432");
    }

    #[test]
    fn internal_traffic_policy_local_keeps_the_clients_node() {
        check("client/c1", "svc/shop/web-itp", 80, "IPv4 shop/web-1 10.244.1.10:8080");
        check("client/c2", "svc/shop/web-itp", 80, "IPv4 shop/web-2 10.244.2.10:8081");
        check("client/c3", "svc/shop/web-itp", 80, "IPv4 no backend: internalTrafficPolicy Local: none of its 2 backends runs on node-3, the client's node");
        check("client/c1", "svc/shop/empty", 80, "IPv4 no backend: Service shop/empty has no IPv4 backend for port 80/TCP");
    }

    #[test]
    fn node_port_cluster_masquerades_towards_other_nodes() {
        // Outside client: web-1 on the entry node sees it; web-2 sees node-1.
        check(
            "203.0.113.7",
            "node/node-1",
            30080,
            "IPv4 shop/web-1 10.244.1.10:8080 egress=node/node-1:30080\nIPv4 shop/web-2 10.244.2.10:8081 egress=node/node-1:30080 nat=172.18.0.2",
        );
        // A pod on the entry node: translated there, so egress sees the backends.
        check("client/c1", "node/node-1", 30080, "IPv4 shop/web-1 10.244.1.10:8080\nIPv4 shop/web-2 10.244.2.10:8081 nat=172.18.0.2");
        // A pod elsewhere: egress sees the entry node at the nodePort.
        check(
            "client/c3",
            "172.18.0.3",
            30080,
            "IPv4 shop/web-1 10.244.1.10:8080 egress=node/node-2:30080 nat=172.18.0.3\nIPv4 shop/web-2 10.244.2.10:8081 egress=node/node-2:30080",
        );
    }

    #[test]
    fn node_port_local_and_kube_proxys_short_circuits() {
        // Outside and other nodes: the entry node's backends only, client kept.
        check("203.0.113.7", "node/node-2", 30081, "IPv4 shop/web-2 10.244.2.10:8081 egress=node/node-2:30081");
        check("node/node-3", "node/node-1", 30081, "IPv4 shop/web-1 10.244.1.10:8080 egress=node/node-1:30081");
        check("203.0.113.7", "node/node-3", 30081, "IPv4 no backend: externalTrafficPolicy Local: none of its 2 backends runs on node-3, the entry node");
        // Pods: every backend, not masqueraded.
        check(
            "client/c3",
            "node/node-3",
            30081,
            "IPv4 shop/web-1 10.244.1.10:8080\nIPv4 shop/web-2 10.244.2.10:8081",
        );
        check(
            "client/c2",
            "node/node-1",
            30081,
            "IPv4 shop/web-1 10.244.1.10:8080 egress=node/node-1:30081\nIPv4 shop/web-2 10.244.2.10:8081 egress=node/node-1:30081 unreachable",
        );
        // The entry node's own traffic: every backend, masqueraded.
        check("node/node-1", "node/node-1", 30081, "IPv4 shop/web-1 10.244.1.10:8080\nIPv4 shop/web-2 10.244.2.10:8081 nat=172.18.0.2");
    }

    #[test]
    fn invalid_inputs_say_what_to_write() {
        check("client/c1", "svc/shop/db", 80, "Port: 80/TCP is not a port of Service shop/db (its ports: 5432/TCP (pg))");
        check(
            "203.0.113.7",
            "svc/shop/web",
            80,
            "From: 203.0.113.7 is outside the cluster, where ClusterIP 10.96.0.10 of Service shop/web is not routed: write the NodePort flow (to node/NAME at a nodePort)",
        );
        check("client/c1", "svc/shop/nope", 80, "no Service \"shop/nope\" in the cluster");
        check("client/c1", "svc/shop", 80, "\"svc/shop\" is not a Service (expected svc/NAMESPACE/NAME)");
        let headless = expansion(&cluster(""), "client/c1", "svc/shop/headless", 80).unwrap_err();
        assert!(headless.starts_with("Service shop/headless has no ClusterIP (headless"), "{headless}");
        let c = cluster("");
        let src = Endpoint::parse(&c, "client/c1").unwrap();
        let db = parse_service(&c, "svc/shop/db").unwrap().unwrap();
        let e = expand(&c, &src, None, Target::ClusterIp(db), Protocol::Tcp, 5432, Some(Family::IPv6)).unwrap_err();
        assert_eq!((e.field, e.message.as_str()), (Field::Family, "Service shop/db has no IPv6 ClusterIP"));
    }

    /// The reference through a Service, and explain's text for it.
    #[test]
    fn hairpin_and_masquerade_in_the_reference_and_explain() {
        let c = cluster(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: closed, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
        );
        let ir = crate::ir::resolve(&c);
        let text = |from: &str, to: &str, port: u16| -> Vec<String> {
            let src = Endpoint::parse(&c, from).unwrap();
            let (target, dst) = match parse_service(&c, to) {
                Some(s) => (Target::ClusterIp(s.unwrap()), None),
                None => {
                    let d = Endpoint::parse(&c, to).unwrap();
                    (node_port_target(&c, &d, Protocol::Tcp, port).unwrap(), Some(d))
                }
            };
            expand(&c, &src, dst.as_ref(), target, Protocol::Tcp, port, Some(Family::IPv4))
                .unwrap()
                .iter()
                .map(|t| crate::explain::render_text(&explain(&c, &t.flow, &t.via, &evaluate(&c, &ir, &t.flow, &t.via, t.family))))
                .collect()
        };
        let hairpin = text("shop/web-1", "svc/shop/web-itp", 80);
        assert_eq!(
            hairpin.join(""),
            "shop/web-1 -> svc/shop/web-itp 80/TCP: ALLOWED
  svc shop/web-itp:80/TCP 10.96.0.13 -> shop/web-1 10.244.1.10:8080 (DNAT, hairpin: the client is the backend)
  IPv4 10.244.1.10 -> 10.244.1.10: allowed
    egress of shop/web-1: hairpin: shop/web-1 reaches itself through a Service, which its NetworkPolicies cannot block
    ingress of shop/web-1: hairpin: shop/web-1 reaches itself through a Service, which its NetworkPolicies cannot block
"
        );
        let np = text("203.0.113.7", "node/node-1", 30080);
        // The policy's line depends on the fixture's length.
        let at = np[1].find("services.yaml:").map_or(0, |i| i + "services.yaml:".len());
        let np1 = format!("{}N{}", &np[1][..at], np[1][at..].trim_start_matches(|ch: char| ch.is_ascii_digit()));
        assert_eq!(
            np1,
            "203.0.113.7 -> node/node-1 30080/TCP: DENIED
  nodePort node-1 172.18.0.2:30080/TCP (svc shop/web-np) -> shop/web-2 10.244.2.10:8081 (DNAT)
  egress sees 172.18.0.2:30080 (translated only on arrival at node-1)
  source 203.0.113.7 -> 172.18.0.2 (masquerade, entry node node-1)
  IPv4 203.0.113.7 -> 10.244.2.10: denied
    egress of 203.0.113.7: not policed: 203.0.113.7 is an address outside the cluster, and policies only apply to pods
    ingress of shop/web-2: denied: isolated by shop/closed, which has no ingress rules (default deny)
      isolated by shop/closed at services.yaml:N (no ingress rules)
"
        );
        let none = text("client/c3", "svc/shop/web-itp", 80);
        assert!(none[0].contains("-> no backend: internalTrafficPolicy Local") && none[0].contains("ingress of svc/shop/web-itp: denied: internalTrafficPolicy"), "{}", none[0]);
    }
}
