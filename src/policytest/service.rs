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

use crate::model::service::Backend;
use crate::model::Protocol;

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
    /// why.
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
