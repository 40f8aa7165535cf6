//! `netfence test --dataplane`: real packets as the policy test runner's
//! second opinion ([`crate::policytest::Backend`]).
//!
//! Per test: a dataplane for the test's cluster (with the test's IP
//! literals as the outside), each node's ruleset installed by the caller's
//! step, every check probed once. The install step is a parameter so that
//! this module does not depend on how rulesets are compiled or applied.
//!
//! When the cluster has Services, every node also gets kube-proxy's table
//! ([`super::kube_proxy`]), and a check through a Service (`Check::via`)
//! is sent to the ClusterIP or node address the client uses, with the
//! Service port pinned to the check's backend. Checks that need different
//! backends of one Service port are probed in rounds, kube-proxy's table
//! (only it) replaced between rounds.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::kube_proxy::{PinKey, Pins};
use super::{Cni, Dataplane, Endpoint, ProbeOptions, ProbeSpec, ProbeVia};
use crate::ir::Ir;
use crate::model::Cluster;
use crate::netns::Netns;
use crate::policytest::service::{Entry, Via};
use crate::policytest::{in_pod_cidr, Backend, Check, PolicyTest};

/// Loads node `node`'s ruleset for `cluster` into its namespace, e.g.
/// `|c, ir, node, ns| { let p = nft::compile(c, ir, node); ns.run(|| kernel.apply(&p))? }`.
pub trait Install: FnMut(&Cluster, &Ir, &str, &Netns) -> anyhow::Result<()> {}
impl<F: FnMut(&Cluster, &Ir, &str, &Netns) -> anyhow::Result<()>> Install for F {}

pub struct DataplaneBackend<F> {
    install: F,
    pub options: ProbeOptions,
    /// How pods are wired to their nodes.
    pub cni: Cni,
}

impl<F: Install> DataplaneBackend<F> {
    pub fn new(install: F) -> Self {
        DataplaneBackend { install, options: ProbeOptions::default(), cni: Cni::Routed }
    }
}

impl<F: Install> Backend for DataplaneBackend<F> {
    fn name(&self) -> &'static str {
        "dataplane"
    }

    fn verdicts(&mut self, test: &PolicyTest, ir: &Ir, checks: &[Check]) -> anyhow::Result<Vec<Result<bool, String>>> {
        let cluster = &test.cluster;
        let install = &mut self.install;
        let mut dp = Dataplane::build_with(cluster, &externals(cluster, checks), self.cni, |node, ns| install(cluster, ir, node, ns))?;
        dp.options = self.options.clone();
        verdicts(&dp, cluster, checks)
    }
}

/// Every IP literal the checks name as a client or a destination: the
/// outside namespace's addresses. A Service's ClusterIP or entry address
/// is never one (nor the destination of a check through a Service without
/// a backend), or the outside would answer in kube-proxy's place.
pub fn externals(cluster: &Cluster, checks: &[Check]) -> Vec<IpAddr> {
    let services: BTreeSet<IpAddr> = cluster
        .services
        .iter()
        .flat_map(|s| s.cluster_ips.iter().copied())
        .chain(checks.iter().filter_map(|c| c.via.as_ref()).map(|v| v.entry.ip()))
        .collect();
    checks
        .iter()
        .flat_map(|c| {
            let dst = match &c.via {
                Some(v) if v.backend.is_none() => None,
                _ => Some(&c.flow.dst),
            };
            std::iter::once(&c.flow.src).chain(dst)
        })
        .filter_map(|e| match e {
            Endpoint::Ip(ip) if !services.contains(ip) => Some(*ip),
            _ => None,
        })
        .collect()
}

/// Probe `checks` on a built dataplane whose rulesets are installed:
/// through Services in rounds of pins when the cluster has Services.
/// `Err(why)` for a check this wiring cannot carry.
pub fn verdicts(dp: &Dataplane, cluster: &Cluster, checks: &[Check]) -> anyhow::Result<Vec<Result<bool, String>>> {
    let mut out: Vec<Option<Result<bool, String>>> = vec![None; checks.len()];
    let mut specs: Vec<Option<ProbeSpec>> = vec![None; checks.len()];
    // Per round, its pins and the checks it probes.
    let mut rounds: Vec<(Pins, Vec<usize>)> = vec![(Pins::default(), Vec::new())];
    for (i, c) in checks.iter().enumerate() {
        let spec = ProbeSpec {
            from: c.flow.src.clone(),
            to: c.flow.dst.clone(),
            family: c.family,
            protocol: c.flow.protocol,
            port: c.flow.port,
            via: None,
        };
        // An outside host cannot hold an address of a node's pod CIDR.
        if let Some(why) = in_pod_cidr(cluster, c) {
            out[i] = Some(Err(why));
            continue;
        }
        let Some(via) = &c.via else {
            if let Some(why) = dp.cannot_probe(&spec) {
                out[i] = Some(Err(why));
                continue;
            }
            specs[i] = Some(spec);
            rounds[0].1.push(i);
            continue;
        };
        let key = match pin_key(cluster, via, c) {
            Ok(key) => key,
            Err(why) => {
                out[i] = Some(Err(why));
                continue;
            }
        };
        let spec = ProbeSpec {
            // Without a backend nothing listens; `to` is unused.
            to: if via.backend.is_some() { spec.to.clone() } else { spec.from.clone() },
            via: Some(ProbeVia { addr: SocketAddr::new(via.entry.ip(), via.port), backend: via.backend.is_some() }),
            ..spec
        };
        let entry_node = match &via.entry {
            Entry::NodePort { node, .. } => Some(node.as_str()),
            Entry::ClusterIp { .. } => None,
        };
        let backend_node = via.backend.as_ref().and_then(|b| b.node.as_deref());
        let why = dp.cannot_probe_service(&c.flow.src, entry_node, backend_node, via.source_nat.is_some(), c.family).or_else(|| {
            // The client-to-backend leg itself, as for any flow.
            via.backend.as_ref().and_then(|_| dp.cannot_probe(&spec))
        });
        if let Some(why) = why {
            out[i] = Some(Err(why));
            continue;
        }
        specs[i] = Some(spec);
        // The first round whose pins agree with this check's backend.
        match rounds.iter_mut().position(|(pins, _)| pins.pin(key.clone(), via.backend.clone())) {
            Some(r) => rounds[r].1.push(i),
            None => {
                let mut pins = Pins::default();
                pins.pin(key, via.backend.clone());
                rounds.push((pins, vec![i]));
            }
        }
    }
    let services = !cluster.services.is_empty();
    for (pins, members) in rounds.iter().filter(|(_, m)| !m.is_empty()) {
        if services {
            dp.install_kube_proxy(cluster, pins)?;
        }
        let probe: Vec<ProbeSpec> = members.iter().filter_map(|&i| specs[i].clone()).collect();
        for (&i, r) in members.iter().zip(dp.probe_all(&probe)?) {
            out[i] = Some(Ok(r.allowed));
        }
    }
    Ok(out.into_iter().map(|o| o.unwrap_or_else(|| Err("not probed".into()))).collect())
}

/// The Service port a check through a Service pins: the Service port the
/// client names, or the one behind the nodePort.
fn pin_key(cluster: &Cluster, via: &Via, check: &Check) -> Result<PinKey, String> {
    let (ns, name) = via.service.split_once('/').ok_or_else(|| format!("{:?} is not namespace/name", via.service))?;
    let svc = cluster.service(ns, name).ok_or_else(|| format!("no Service {} in the cluster", via.service))?;
    let port = match via.entry {
        Entry::ClusterIp { .. } => svc.port(via.port, via.protocol),
        Entry::NodePort { .. } => svc.node_port(via.port, via.protocol),
    }
    .ok_or_else(|| format!("Service {} has no port {}/{}", via.service, via.port, via.protocol))?;
    Ok(PinKey { service: svc.key(), port: port.port, protocol: port.protocol, family: check.family })
}
