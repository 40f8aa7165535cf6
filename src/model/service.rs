//! Services and EndpointSlices: what kube-proxy translates before any
//! policy sees a packet (docs/policy-test-format-services.md).
//!
//! Policies never name a Service, so nothing compiled for a node depends on
//! these objects; they exist for the judges (`test`, `explain`, `lint`) and
//! for the dataplane harness, which installs kube-proxy's translation from
//! them. Validated as the API server validates them, like every other kind,
//! so a backend lookup cannot meet a malformed port or address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use super::convert::{check_name, check_port_name, err, parse_ip, parse_port_number, parse_protocol, FieldError, Name};
use super::{Cluster, Family, Origin, PodId, Protocol};
use crate::selector::Labels;

/// `spec.type`; ExternalName Services are not read (they translate no
/// address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// NodePort and LoadBalancer Services open their nodePorts on every node.
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    #[serde(skip)]
    pub origin: Origin,
    pub type_: ServiceType,
    /// One per family, in `spec.clusterIPs` order; empty for a headless
    /// Service (`None`), whose clients reach pod addresses directly.
    pub cluster_ips: Vec<IpAddr>,
    /// `None`: no selector (endpoints come only from EndpointSlices).
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
    /// `externalTrafficPolicy: Local`: NodePort traffic only to the entry
    /// node's own backends, the client's address kept.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: ClusterIP traffic only to the
    /// client's node's own backends.
    pub internal_local: bool,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Named(String),
}

impl std::fmt::Display for TargetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Named(s) => f.write_str(s),
        }
    }
}

/// An EndpointSlice of one Service (label `kubernetes.io/service-name`),
/// in one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub family: Family,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`, absent meaning ready.
    pub ready: bool,
    /// `conditions.serving`, absent meaning `ready`.
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
    /// `targetRef` when it names a Pod.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: Option<u16>,
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One backend of a Service port in one family: where kube-proxy's DNAT
/// sends the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    /// The pod holding `ip`, when one does (by `targetRef` or address).
    pub pod: Option<PodId>,
    /// The node the backend runs on (`nodeName`, or the pod's node).
    pub node: Option<String>,
}

impl Service {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn cluster_ip(&self, family: Family) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(|ip| Family::of(ip) == family)
    }

    /// The Service port a client names: its `port` and protocol.
    pub fn port(&self, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port && p.protocol == protocol)
    }

    /// The Service port opened on every node at `node_port`.
    pub fn node_port(&self, node_port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.node_port == Some(node_port) && p.protocol == protocol)
    }

    /// Every backend of `port` in `family`, sorted by address, as kube-proxy
    /// programs them: from the Service's EndpointSlices when it has any
    /// (ready endpoints; when none is ready, the serving terminating ones),
    /// else from its selector over the running pods of its namespace (a
    /// named `targetPort` resolved on each pod; a pod that does not declare
    /// it is left out, as the endpoints controller leaves it out). Traffic
    /// policies are not applied here: the caller knows the client and the
    /// entry node.
    pub fn backends(&self, cluster: &Cluster, port: &ServicePort, family: Family) -> Vec<Backend> {
        let slices: Vec<&EndpointSlice> = cluster
            .endpoint_slices
            .iter()
            .filter(|s| s.namespace == self.namespace && s.service == self.name)
            .collect();
        let mut out = if !slices.is_empty() {
            self.slice_backends(cluster, &slices, port, family)
        } else {
            self.selector_backends(cluster, port, family)
        };
        out.sort_by_key(|b| (b.ip, b.port));
        out.dedup_by_key(|b| (b.ip, b.port));
        out
    }

    fn slice_backends(&self, cluster: &Cluster, slices: &[&EndpointSlice], port: &ServicePort, family: Family) -> Vec<Backend> {
        let mut all = Vec::new();
        for s in slices.iter().filter(|s| s.family == family) {
            // The slice port of the Service port's name (both unnamed for a
            // single-port Service) and protocol.
            let Some(p) = s.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol).and_then(|p| p.port) else {
                continue;
            };
            for e in &s.endpoints {
                all.push((e, p));
            }
        }
        let ready: Vec<_> = all.iter().filter(|(e, _)| e.ready).collect();
        let chosen: Vec<_> = if ready.is_empty() {
            all.iter().filter(|(e, _)| e.serving && e.terminating).collect()
        } else {
            ready
        };
        chosen
            .into_iter()
            .flat_map(|(e, p)| {
                e.addresses.iter().filter(move |ip| Family::of(ip) == family).map(move |&ip| {
                    let pod = e
                        .pod
                        .as_deref()
                        .and_then(|n| cluster.pod(&self.namespace, n))
                        .filter(|&id| cluster.pods[id].ips.contains(&ip))
                        .or_else(|| cluster.pod_by_ip(ip));
                    let node = e.node.clone().or_else(|| pod.and_then(|id| cluster.pods[id].node.clone()));
                    Backend { ip, port: *p, pod, node }
                })
            })
            .collect()
    }

    fn selector_backends(&self, cluster: &Cluster, port: &ServicePort, family: Family) -> Vec<Backend> {
        let Some(selector) = &self.selector else { return Vec::new() };
        cluster
            .pods_in(&self.namespace)
            .filter(|&id| {
                let pod = &cluster.pods[id];
                pod.takes_part() && matches!(pod.phase.as_deref(), None | Some("Running")) && selector_matches(selector, &pod.labels)
            })
            .filter_map(|id| {
                let pod = &cluster.pods[id];
                let ip = pod.ip(family)?;
                let port = match &port.target {
                    TargetPort::Number(n) => *n,
                    TargetPort::Named(name) => pod.named_port(name, port.protocol)?,
                };
                Some(Backend { ip, port, pod: Some(id), node: pod.node.clone() })
            })
            .collect()
    }
}

/// A Service selector is equality on every key (an empty one selects
/// nothing: the API treats it as "no selector").
fn selector_matches(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v.as_str()))
}

/// A Service as the API server validates it. ExternalName Services give
/// `Ok(None)`: they translate nothing.
pub fn convert_service(svc: &K8sService, origin: Origin) -> Result<Option<Service>, FieldError> {
    let Some(name) = svc.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return err("metadata.name", "a Service needs a name");
    };
    check_name(&name, "metadata.name", Name::Label)?;
    let namespace = svc.metadata.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string());
    check_name(&namespace, "metadata.namespace", Name::Label)?;
    let Some(spec) = &svc.spec else { return err("spec", "a Service needs a spec") };
    let type_ = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(None),
        Some(other) => {
            return err("spec.type", format!("unknown Service type {other:?} (expected ClusterIP, NodePort, LoadBalancer or ExternalName)"))
        }
    };

    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let listed: Vec<(String, &String)> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().enumerate().map(|(i, s)| (format!("spec.clusterIPs[{i}]"), s)).collect(),
        _ => spec.cluster_ip.iter().map(|s| ("spec.clusterIP".to_string(), s)).collect(),
    };
    if let (Some(one), Some(list)) = (&spec.cluster_ip, &spec.cluster_ips) {
        if !one.is_empty() && list.first().is_some_and(|first| first != one) {
            return err("spec.clusterIPs[0]", format!("{:?} must equal spec.clusterIP {one:?}", list[0]));
        }
    }
    let headless = listed.iter().any(|(_, s)| s.as_str() == "None");
    if !headless {
        for (path, s) in &listed {
            if s.is_empty() {
                continue;
            }
            let ip = parse_ip(s, path)?;
            if let Some(other) = cluster_ips.iter().find(|o| Family::of(o) == Family::of(&ip)) {
                return err(path.as_str(), format!("{ip} is a second {} ClusterIP besides {other} (at most one per family)", Family::of(&ip)));
            }
            cluster_ips.push(ip);
        }
    } else if listed.len() > 1 {
        return err("spec.clusterIPs", "a headless Service has the single ClusterIP None");
    }
    if let Some(families) = &spec.ip_families {
        for (i, f) in families.iter().enumerate() {
            let fam = match f.as_str() {
                "IPv4" => Family::IPv4,
                "IPv6" => Family::IPv6,
                _ => return err(format!("spec.ipFamilies[{i}]"), format!("unknown family {f:?} (expected IPv4 or IPv6)")),
            };
            if let Some(ip) = cluster_ips.get(i) {
                if Family::of(ip) != fam {
                    return err(format!("spec.ipFamilies[{i}]"), format!("{f} does not match ClusterIP {ip}"));
                }
            }
        }
    }

    let mut ports: Vec<ServicePort> = Vec::new();
    let list = spec.ports.as_deref().unwrap_or_default();
    for (i, p) in list.iter().enumerate() {
        let path = |f: &str| format!("spec.ports[{i}].{f}");
        let protocol = parse_protocol(p.protocol.as_deref(), &path("protocol"))?;
        let port = parse_port_number(p.port, &path("port"))?;
        if let Some(n) = &p.name {
            check_name(n, &path("name"), Name::Label)?;
        }
        if list.len() > 1 && p.name.as_deref().unwrap_or("").is_empty() {
            return err(path("name"), "a Service with more than one port must name every port");
        }
        let target = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(0)) => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(parse_port_number(*n, &path("targetPort"))?),
            Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
            Some(IntOrString::String(s)) => {
                check_port_name(s, &path("targetPort"))?;
                TargetPort::Named(s.clone())
            }
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(_) if !type_.has_node_ports() => {
                return err(path("nodePort"), "only NodePort and LoadBalancer Services have node ports");
            }
            Some(n) => Some(parse_port_number(n, &path("nodePort"))?),
        };
        let prior = |q: &ServicePort| q.protocol == protocol;
        if let Some(j) = ports.iter().position(|q| prior(q) && q.port == port) {
            return err(path("port"), format!("{port}/{protocol} is already spec.ports[{j}]"));
        }
        if let (Some(n), Some(j)) = (node_port, ports.iter().position(|q| prior(q) && q.node_port == node_port)) {
            return err(path("nodePort"), format!("nodePort {n}/{protocol} is already spec.ports[{j}]'s"));
        }
        if let Some(n) = &p.name {
            if let Some(j) = ports.iter().position(|q| q.name.as_deref() == Some(n.as_str())) {
                return err(path("name"), format!("port name {n:?} is already spec.ports[{j}]'s"));
            }
        }
        ports.push(ServicePort { name: p.name.clone().filter(|n| !n.is_empty()), protocol, port, target, node_port });
    }

    let policy = |field: &str, v: Option<&str>| match v {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => err(format!("spec.{field}"), format!("unknown traffic policy {other:?} (expected Cluster or Local)")),
    };
    let external_local = policy("externalTrafficPolicy", spec.external_traffic_policy.as_deref())?;
    if external_local && !type_.has_node_ports() {
        return err("spec.externalTrafficPolicy", "Local applies only to NodePort and LoadBalancer Services");
    }
    let internal_local = policy("internalTrafficPolicy", spec.internal_traffic_policy.as_deref())?;

    let mut load_balancer_ips = Vec::new();
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(ip) = &ing.ip {
            load_balancer_ips.push(parse_ip(ip, &format!("status.loadBalancer.ingress[{i}].ip"))?);
        }
    }

    let selector = spec.selector.clone().filter(|s| !s.is_empty());
    if let Some(sel) = &selector {
        for (k, v) in sel {
            crate::selector::check_label_key(k)
                .and_then(|()| crate::selector::check_label_value(v))
                .map_err(|m| FieldError { path: format!("spec.selector.{k}"), message: m })?;
        }
    }
    Ok(Some(Service {
        namespace,
        name,
        origin,
        type_,
        cluster_ips,
        selector,
        ports,
        external_local,
        internal_local,
        load_balancer_ips,
    }))
}

/// An EndpointSlice as the API server validates it. FQDN slices and slices
/// without the service-name label give `Ok(None)`: kube-proxy ignores them.
pub fn convert_endpoint_slice(s: &K8sEndpointSlice) -> Result<Option<EndpointSlice>, FieldError> {
    let Some(name) = s.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return err("metadata.name", "an EndpointSlice needs a name");
    };
    check_name(&name, "metadata.name", Name::Subdomain)?;
    let namespace = s.metadata.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string());
    check_name(&namespace, "metadata.namespace", Name::Label)?;
    let family = match s.address_type.as_str() {
        "IPv4" => Family::IPv4,
        "IPv6" => Family::IPv6,
        "FQDN" => return Ok(None),
        other => return err("addressType", format!("unknown addressType {other:?} (expected IPv4, IPv6 or FQDN)")),
    };
    let Some(service) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned() else { return Ok(None) };
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            let path = format!("endpoints[{i}].addresses[{j}]");
            let ip = parse_ip(a, &path)?;
            if Family::of(&ip) != family {
                return err(path, format!("{ip} is not an {family} address (addressType {family})"));
            }
            addresses.push(ip);
        }
        let c = e.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let pod = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name.clone());
        endpoints.push(SliceEndpoint {
            addresses,
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(ready),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            node: e.node_name.clone().filter(|n| !n.is_empty()),
            pod,
        });
    }
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let path = |f: &str| format!("ports[{i}].{f}");
        let port = p.port.map(|n| parse_port_number(n, &path("port"))).transpose()?;
        ports.push(SlicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            protocol: parse_protocol(p.protocol.as_deref(), &path("protocol"))?,
            port,
        });
    }
    Ok(Some(EndpointSlice { namespace, name, service, family, endpoints, ports }))
}

#[cfg(test)]
mod tests {
    use crate::model::load::load_str;
    use crate::model::Family;

    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: pg, containerPort: 5433}]}]}
status: {podIP: 10.244.1.10, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIP: 10.244.2.10, phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: pg}, {name: raw, port: 80, targetPort: 8080}]
";

    #[test]
    fn selector_backends_resolve_named_target_ports_per_pod() {
        let c = load_str("t.yaml", PODS).unwrap();
        let svc = &c.services[0];
        let pg = svc.port(5432, crate::model::Protocol::Tcp).unwrap();
        let b = svc.backends(&c, pg, Family::IPv4);
        // db-1 does not declare `pg`: not a backend, as the endpoints controller decides.
        assert_eq!(b.iter().map(|b| (b.ip.to_string(), b.port)).collect::<Vec<_>>(), vec![("10.244.1.10".to_string(), 5433)]);
        let raw = svc.port(80, crate::model::Protocol::Tcp).unwrap();
        assert_eq!(svc.backends(&c, raw, Family::IPv4).len(), 2);
        assert!(svc.backends(&c, raw, Family::IPv6).is_empty());
    }

    #[test]
    fn endpoint_slices_replace_the_selector_and_fall_back_to_serving_terminating() {
        let text = format!(
            "{PODS}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db-abc, namespace: shop, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
ports: [{{name: raw, port: 9090}}]
endpoints:
- {{addresses: [10.244.2.10], conditions: {{ready: false, serving: true, terminating: true}}, nodeName: n2, targetRef: {{kind: Pod, name: db-1}}}}
"
        );
        let c = load_str("t.yaml", &text).unwrap();
        let svc = &c.services[0];
        let raw = svc.port(80, crate::model::Protocol::Tcp).unwrap();
        let b = svc.backends(&c, raw, Family::IPv4);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].port, b[0].node.as_deref(), b[0].pod.map(|p| c.pods[p].name.as_str())), (9090, Some("n2"), Some("db-1")));
        // No slice port named pg: no backend for it.
        assert!(svc.backends(&c, svc.port(5432, crate::model::Protocol::Tcp).unwrap(), Family::IPv4).is_empty());
    }

    #[test]
    fn invalid_services_name_the_field() {
        let bad = |spec: &str| {
            let t = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: x}}\nspec: {spec}\n");
            load_str("s.yaml", &t).unwrap_err().to_string()
        };
        assert!(bad("{ports: [{port: 0}]}").contains("spec.ports[0].port: port 0 is out of range"));
        assert!(bad("{clusterIP: 10.0.0.300}").contains("spec.clusterIP"));
        assert!(bad("{ports: [{port: 80, nodePort: 30000}]}").contains("spec.ports[0].nodePort: only NodePort"));
        assert!(bad("{ports: [{name: a, port: 80}, {port: 81}]}").contains("spec.ports[1].name"));
        assert!(bad("{type: Nope}").contains("spec.type"));
        assert!(bad("{ports: [{port: 80, targetPort: Bad_Name}]}").contains("spec.ports[0].targetPort"));
        assert!(bad("{externalTrafficPolicy: Local}").contains("spec.externalTrafficPolicy"));
        assert!(bad("{ports: [{name: a, port: 80}, {name: b, port: 80}]}").contains("spec.ports[1].port: 80/TCP is already"));
    }
}
