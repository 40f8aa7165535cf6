//! From k8s-openapi objects to the validated model.
//!
//! Each conversion validates what the API server would validate, so bad
//! manifests are rejected here, with the field path, instead of turning into
//! surprising verdicts later. The same functions serve the file loader and
//! the agent's watchers: a cluster read from YAML and one watched from the
//! API are the same model.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

/// A validation error at a field path relative to the object's root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

pub(crate) fn err<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { path: path.into(), message: message.into() })
}

pub fn namespace(ns: &K8sNamespace) -> Result<Namespace, FieldError> {
    let name = ns.metadata.name.clone().filter(|n| !n.is_empty());
    let Some(name) = name else { return err("metadata.name", "a Namespace needs a name") };
    check_name(&name, "metadata.name", Name::Label)?;
    Ok(Namespace::new(&name, labels(&ns.metadata)?))
}

pub fn node(node: &K8sNode) -> Result<Node, FieldError> {
    let Some(name) = node.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return err("metadata.name", "a Node needs a name");
    };
    check_name(&name, "metadata.name", Name::Subdomain)?;
    let labels = labels(&node.metadata)?;
    let mut internal_ips = Vec::new();
    let mut external_ips = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        let list = match a.type_.as_str() {
            "InternalIP" => &mut internal_ips,
            "ExternalIP" => &mut external_ips,
            _ => continue,
        };
        let ip = parse_ip(&a.address, &format!("status.addresses[{i}].address"))?;
        if !list.contains(&ip) {
            list.push(ip);
        }
    }
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if cidrs.is_empty() {
        cidrs.extend(spec.and_then(|s| s.pod_cidr.clone()));
    }
    let mut pod_cidrs = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        pod_cidrs.push(parse_cidr(c, &format!("spec.podCIDRs[{i}]"))?);
    }
    let addresses = internal_ips.iter().chain(&external_ips).copied().collect();
    Ok(Node { name, labels, internal_ips, external_ips, addresses, pod_cidrs })
}

pub fn pod(pod: &K8sPod) -> Result<Pod, FieldError> {
    let Some(name) = pod.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return err("metadata.name", "a Pod needs a name");
    };
    check_name(&name, "metadata.name", Name::Subdomain)?;
    // An empty namespace is the default one, as kubectl reads it.
    let namespace = pod.metadata.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string());
    check_name(&namespace, "metadata.namespace", Name::Label)?;
    let labels = labels(&pod.metadata)?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    // At most one address per family, as the API server allows: the model,
    // the compiler and the evaluator all take a pod's address in a family.
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut add = |ip: IpAddr, path: String, front: bool| {
        if ips.contains(&ip) {
            return Ok(());
        }
        if let Some(other) = ips.iter().find(|o| Family::of(o) == Family::of(&ip)) {
            return err(path, format!("{ip} is a second {} address besides {other} (a pod has at most one address per family)", Family::of(&ip)));
        }
        if front {
            ips.insert(0, ip);
        } else {
            ips.push(ip);
        }
        Ok(())
    };
    if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()) {
        for (i, p) in list.iter().enumerate() {
            let path = format!("status.podIPs[{i}].ip");
            add(parse_ip(&p.ip, &path)?, path, false)?;
        }
    }
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).filter(|s| !s.is_empty()) {
        add(parse_ip(ip, "status.podIP")?, "status.podIP".into(), true)?;
    }
    let node = spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
    if let Some(n) = &node {
        check_name(n, "spec.nodeName", Name::Subdomain)?;
    }
    let mut ports = Vec::new();
    for (ci, c) in spec.map(|s| s.containers.as_slice()).unwrap_or_default().iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let path = |f: &str| format!("spec.containers[{ci}].ports[{pi}].{f}");
            let protocol = parse_protocol(p.protocol.as_deref(), &path("protocol"))?;
            let port = parse_port_number(p.container_port, &path("containerPort"))?;
            if let Some(n) = &p.name {
                check_port_name(n, &path("name"))?;
            }
            ports.push(ContainerPort { name: p.name.clone(), port, protocol });
        }
    }
    Ok(Pod {
        namespace,
        name,
        labels,
        node,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips,
        ports: container_ports(ports),
        phase: status.and_then(|s| s.phase.clone()),
    })
}

pub fn policy(np: &NetworkPolicy, origin: Origin) -> Result<Policy, FieldError> {
    let Some(name) = np.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return err("metadata.name", "a NetworkPolicy needs a name");
    };
    let Some(namespace) = np.metadata.namespace.clone().filter(|n| !n.is_empty()) else {
        return err("metadata.namespace", format!("NetworkPolicy {name:?} has no namespace (policies are namespaced: set metadata.namespace)"));
    };
    check_name(&name, "metadata.name", Name::Subdomain)?;
    check_name(&namespace, "metadata.namespace", Name::Label)?;
    let Some(spec) = np.spec.as_ref() else { return err("spec", "a NetworkPolicy needs a spec") };
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(s, "spec.podSelector")?,
        None => Selector::default(),
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let path = format!("spec.ingress[{i}]");
        ingress.push(rule(r.from.as_deref(), r.ports.as_deref(), &path, "from")?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let path = format!("spec.egress[{i}]");
        egress.push(rule(r.to.as_deref(), r.ports.as_deref(), &path, "to")?);
    }
    let written = spec.policy_types.as_ref().filter(|t| !t.is_empty());
    let types = match written {
        // Kubernetes' defaulting: Ingress always, Egress when there are egress rules.
        None => PolicyTypes { ingress: true, egress: !egress.is_empty() },
        Some(list) => {
            let mut t = PolicyTypes { ingress: false, egress: false };
            for (i, s) in list.iter().enumerate() {
                match s.as_str() {
                    "Ingress" => t.ingress = true,
                    "Egress" => t.egress = true,
                    other => {
                        return err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                        )
                    }
                }
            }
            t
        }
    };
    Ok(Policy {
        namespace,
        name,
        origin,
        pod_selector,
        ingress,
        egress,
        types,
        types_explicit: written.is_some(),
    })
}

fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    path: &str,
    peer_field: &str,
) -> Result<Rule, FieldError> {
    let mut out = Rule { peers: Vec::new(), ports: Vec::new() };
    for (i, p) in peers.unwrap_or_default().iter().enumerate() {
        out.peers.push(peer(p, &format!("{path}.{peer_field}[{i}]"))?);
    }
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        out.ports.push(port(p, &format!("{path}.ports[{i}]"))?);
    }
    Ok(out)
}

fn peer(p: &NetworkPolicyPeer, path: &str) -> Result<Peer, FieldError> {
    let has_selector = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match (&p.ip_block, has_selector) {
        (Some(_), true) => err(
            path,
            "a peer takes either ipBlock or podSelector/namespaceSelector, not both (write them as two peers)",
        ),
        (None, false) => err(path, "a peer must set one of podSelector, namespaceSelector or ipBlock"),
        (None, true) => Ok(Peer::Pods {
            namespaces: p
                .namespace_selector
                .as_ref()
                .map(|s| selector(s, &format!("{path}.namespaceSelector")))
                .transpose()?,
            pods: p.pod_selector.as_ref().map(|s| selector(s, &format!("{path}.podSelector"))).transpose()?,
        }),
        (Some(b), false) => {
            let cidr = parse_cidr(&b.cidr, &format!("{path}.ipBlock.cidr"))?;
            let mut except = Vec::new();
            for (i, e) in b.except.iter().flatten().enumerate() {
                let epath = format!("{path}.ipBlock.except[{i}]");
                let net = parse_cidr(e, &epath)?;
                if Family::of_net(&net) != Family::of_net(&cidr) {
                    return err(epath, format!("except {e:?} is not of the same address family as cidr {:?}", b.cidr));
                }
                if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
                    return err(epath, format!("except {e:?} must be strictly inside cidr {cidr}"));
                }
                except.push(net);
            }
            except.sort();
            except.dedup();
            Ok(Peer::IpBlock { cidr, except })
        }
    }
}

fn port(p: &NetworkPolicyPort, path: &str) -> Result<PortSpec, FieldError> {
    let protocol = parse_protocol(p.protocol.as_deref(), &format!("{path}.protocol"))?;
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(parse_port_number(*n, &format!("{path}.port"))?)),
        Some(IntOrString::String(s)) => {
            check_port_name(s, &format!("{path}.port"))?;
            Some(PortRef::Named(s.clone()))
        }
    };
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(e), Some(PortRef::Number(start))) => {
            let e = parse_port_number(e, &format!("{path}.endPort"))?;
            if e < *start {
                return err(format!("{path}.endPort"), format!("endPort {e} is less than port {start}"));
            }
            Some(e)
        }
        (Some(_), Some(PortRef::Named(n))) => {
            return err(format!("{path}.endPort"), format!("endPort cannot be used with the named port {n:?}"))
        }
        (Some(_), None) => return err(format!("{path}.endPort"), "endPort needs a numeric port"),
    };
    Ok(PortSpec { protocol, port, end_port })
}

pub fn selector(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    path: &str,
) -> Result<Selector, FieldError> {
    Selector::from_k8s(s).map_err(|e| FieldError { path: format!("{path}.{}", e.field), message: e.message })
}

/// What the API server requires of a name: namespaces are DNS labels,
/// pods, nodes and policies DNS subdomains. Names end up in nft rule
/// comments and in `ns/pod` endpoints, so this also keeps out `"` and `/`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Name {
    Label,
    Subdomain,
}

pub(crate) fn check_name(s: &str, path: &str, kind: Name) -> Result<(), FieldError> {
    match kind {
        Name::Label if !crate::selector::is_dns_label(s) => err(
            path,
            format!("{s:?} is not a valid name (a DNS label: at most 63 lower-case letters, digits and '-', starting and ending alphanumeric)"),
        ),
        Name::Subdomain if !crate::selector::is_dns_subdomain(s) => err(
            path,
            format!("{s:?} is not a valid name (a DNS subdomain: at most 253 lower-case letters, digits, '-' and '.', each part starting and ending alphanumeric)"),
        ),
        _ => Ok(()),
    }
}

/// `metadata.labels`, checked as the API server checks them.
pub(crate) fn labels(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<Labels, FieldError> {
    let Some(labels) = &meta.labels else { return Ok(Labels::default()) };
    for (k, v) in labels {
        crate::selector::check_label_key(k)
            .and_then(|()| crate::selector::check_label_value(v))
            .map_err(|m| FieldError { path: format!("metadata.labels.{k}"), message: m })?;
    }
    Ok(Labels::from_map(labels))
}

pub(crate) fn parse_protocol(s: Option<&str>, path: &str) -> Result<Protocol, FieldError> {
    match s {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s)
            .map_or_else(|| err(path, format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)")), Ok),
    }
}

pub(crate) fn parse_port_number(n: i32, path: &str) -> Result<u16, FieldError> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => err(path, format!("port {n} is out of range (expected 1 to 65535)")),
    }
}

pub(crate) fn parse_ip(s: &str, path: &str) -> Result<IpAddr, FieldError> {
    IpAddr::from_str(s).or_else(|_| err(path, format!("{s:?} is not an IP address")))
}

/// Host bits are accepted and masked, as the API server accepts them.
pub fn parse_cidr(s: &str, path: &str) -> Result<IpNet, FieldError> {
    match IpNet::from_str(s) {
        Ok(n) => Ok(n.trunc()),
        Err(_) => err(path, format!("{s:?} is not a valid CIDR (expected e.g. 10.0.0.0/16 or 2001:db8::/64)")),
    }
}

/// IANA_SVC_NAME: 1–15 characters, lower-case letters, digits and '-', at
/// least one letter, no '-' at either end or twice in a row.
pub fn check_port_name(s: &str, path: &str) -> Result<(), FieldError> {
    let ok = (1..=15).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        err(
            path,
            format!(
                "{s:?} is not a valid port name (IANA_SVC_NAME: 1-15 lower-case letters, digits and '-', at least one letter, no leading, trailing or double '-')"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(spec: serde_json::Value) -> Result<Policy, FieldError> {
        let obj = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"}, "spec": spec,
        });
        policy(&serde_json::from_value(obj).unwrap(), Origin::default())
    }

    #[test]
    fn policy_types_defaulting() {
        let cases = [
            (serde_json::json!({"podSelector": {}}), (true, false)),
            (serde_json::json!({"podSelector": {}, "egress": []}), (true, false)),
            (serde_json::json!({"podSelector": {}, "egress": [{}]}), (true, true)),
            (serde_json::json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}), (false, true)),
            (serde_json::json!({"podSelector": {}, "ingress": [{}], "policyTypes": ["Egress"]}), (false, true)),
        ];
        for (spec, (i, e)) in cases {
            let p = np(spec.clone()).unwrap();
            assert_eq!((p.types.ingress, p.types.egress), (i, e), "{spec}");
        }
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let cases = [
            (serde_json::json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}), "spec.ingress[0].ports[0].protocol", "ICMP"),
            (serde_json::json!({"ingress": [{"ports": [{"port": 0}]}]}), "spec.ingress[0].ports[0].port", "out of range"),
            (serde_json::json!({"ingress": [{"ports": [{"port": "Serve_80"}]}]}), "spec.ingress[0].ports[0].port", "port name"),
            (serde_json::json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}), "spec.ingress[0].ports[0].endPort", "named port"),
            (serde_json::json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}), "spec.ingress[0].ports[0].endPort", "less than"),
            (serde_json::json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}), "spec.egress[0].to[0].ipBlock.cidr", "10.0.0.0/33"),
            (
                serde_json::json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
                "strictly inside",
            ),
            (serde_json::json!({"ingress": [{"from": [{}]}]}), "spec.ingress[0].from[0]", "must set one"),
            (
                serde_json::json!({"ingress": [{"from": [{"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}]}]}),
                "spec.ingress[0].from[0]",
                "not both",
            ),
            (
                serde_json::json!({"ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exist"}]}}]}]}),
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
                "unknown operator",
            ),
            (serde_json::json!({"policyTypes": ["ingress"]}), "spec.policyTypes[0]", "Ingress or Egress"),
        ];
        for (spec, path, msg) in cases {
            let e = np(spec.clone()).unwrap_err();
            assert_eq!(e.path, path, "{spec}");
            assert!(e.message.contains(msg), "{spec}: {}", e.message);
        }
    }

    fn pod_json(v: serde_json::Value) -> Result<Pod, FieldError> {
        pod(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn invalid_pods_and_namespaces_name_the_field() {
        let cases = [
            (serde_json::json!({"metadata": {"name": "A"}}), "metadata.name", "DNS subdomain"),
            (serde_json::json!({"metadata": {"name": "a\"b"}}), "metadata.name", "not a valid name"),
            (serde_json::json!({"metadata": {"name": "a", "namespace": "x.y"}}), "metadata.namespace", "DNS label"),
            (serde_json::json!({"metadata": {"name": "a", "labels": {"-a": "b"}}}), "metadata.labels.-a", "label key"),
            (serde_json::json!({"metadata": {"name": "a", "labels": {"a": "b c"}}}), "metadata.labels.a", "label value"),
            (serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [], "nodeName": "Node_1"}}), "spec.nodeName", "not a valid name"),
            (
                serde_json::json!({"metadata": {"name": "a"}, "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}}),
                "status.podIPs[1].ip",
                "at most one address per family",
            ),
            (
                serde_json::json!({"metadata": {"name": "a"}, "status": {"podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.1"}]}}),
                "status.podIP",
                "second IPv4 address besides 10.0.0.1",
            ),
        ];
        for (json, path, msg) in cases {
            let e = pod_json(json.clone()).unwrap_err();
            assert_eq!(e.path, path, "{json}");
            assert!(e.message.contains(msg), "{json}: {}", e.message);
        }
        let e = namespace(&serde_json::from_value(serde_json::json!({"metadata": {"name": "a.b"}})).unwrap()).unwrap_err();
        assert_eq!(e.path, "metadata.name");
        // Dual stack, and the podIP repeated in podIPs, are fine; an empty namespace is "default".
        let p = pod_json(serde_json::json!({"metadata": {"name": "a.b-1", "namespace": ""},
            "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}}))
        .unwrap();
        assert_eq!((p.namespace.as_str(), p.ips.len()), ("default", 2));
    }

    #[test]
    fn cidr_host_bits_are_masked() {
        let p = np(serde_json::json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.244.1.11/16"}}]}]})).unwrap();
        assert_eq!(p.egress[0].peers[0], Peer::IpBlock { cidr: "10.244.0.0/16".parse().unwrap(), except: vec![] });
    }

    #[test]
    fn port_names() {
        for ok in ["http", "serve-80-tcp", "a1", "metrics"] {
            check_port_name(ok, "p").unwrap();
        }
        for bad in ["", "80", "Serve", "a_b", "-a", "a-", "a--b", "abcdefghijklmnop"] {
            assert!(check_port_name(bad, "p").is_err(), "{bad:?}");
        }
    }
}
