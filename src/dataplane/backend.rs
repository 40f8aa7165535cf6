//! `netfence test --dataplane`: real packets as the policy test runner's
//! second opinion ([`crate::policytest::Backend`]).
//!
//! Per test: a dataplane for the test's cluster (with the test's IP
//! literals as the outside), each node's ruleset installed by the caller's
//! step, every check probed once. The install step is a parameter so that
//! this module does not depend on how rulesets are compiled or applied.

use std::net::IpAddr;

use super::{Cni, Dataplane, Endpoint, ProbeOptions, ProbeSpec};
use crate::ir::Ir;
use crate::model::Cluster;
use crate::netns::Netns;
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
        let externals: Vec<IpAddr> = checks
            .iter()
            .flat_map(|c| [&c.flow.src, &c.flow.dst])
            .filter_map(|e| match e {
                Endpoint::Ip(ip) => Some(*ip),
                _ => None,
            })
            .collect();
        let install = &mut self.install;
        let mut dp = Dataplane::build_with(cluster, &externals, self.cni, |node, ns| install(cluster, ir, node, ns))?;
        dp.options = self.options.clone();
        let specs: Vec<ProbeSpec> = checks
            .iter()
            .map(|c| ProbeSpec {
                from: c.flow.src.clone(),
                to: c.flow.dst.clone(),
                family: c.family,
                protocol: c.flow.protocol,
                port: c.flow.port,
            })
            .collect();
        // An outside host cannot hold an address of a node's pod CIDR; some
        // wirings cannot carry some flows.
        let mut out: Vec<Option<Result<bool, String>>> = checks
            .iter()
            .zip(&specs)
            .map(|(c, s)| {
                let via = c.via.is_some().then(|| "through a Service: kube-proxy's translation is not installed in this harness".to_string());
                via.or_else(|| in_pod_cidr(cluster, c)).or_else(|| dp.cannot_probe(s)).map(Err)
            })
            .collect();
        let probe: Vec<ProbeSpec> = specs.iter().zip(&out).filter(|(_, o)| o.is_none()).map(|(s, _)| s.clone()).collect();
        let mut results = dp.probe_all(&probe)?.into_iter();
        for o in out.iter_mut().filter(|o| o.is_none()) {
            *o = results.next().map(|r| Ok(r.allowed));
        }
        Ok(out.into_iter().map(|o| o.unwrap_or_else(|| Err("not probed".into()))).collect())
    }
}
