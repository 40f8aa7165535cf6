//! The nftables interpreter as a test backend: the second opinion every
//! `netfence test` run gets for free.
//!
//! Each node's program is compiled once per test; each check is then judged
//! packet by packet on the hooks the flow crosses (source node, destination
//! node). The runner reports any disagreement with the reference evaluator
//! as an engine bug, so the programs the agent installs are proven to say
//! what `explain` says, on every expectation of every test.
//!
//! Checks with an IP literal inside a node's pod CIDR are not judged (see
//! [`super::in_pod_cidr`]). Checks through a Service are judged node by
//! node as kube-proxy sends the packets ([`interp::path_verdict`]); a
//! Service with no backend has no path (kube-proxy drops the connection
//! before any policy), so such a check is a deny.

use std::collections::BTreeMap;

use super::service::{self, Entry};
use super::{in_pod_cidr, Backend, Check, PolicyTest};
use crate::ir::Ir;
use crate::model::Cluster;
use crate::nft::{compile_all, interp, Program};

pub struct InterpBackend;

impl Backend for InterpBackend {
    fn name(&self) -> &'static str {
        "nft-interp"
    }

    fn verdicts(&mut self, test: &PolicyTest, ir: &Ir, checks: &[Check]) -> anyhow::Result<Vec<Result<bool, String>>> {
        let programs: BTreeMap<String, Program> = compile_all(&test.cluster, ir);
        for (node, p) in &programs {
            p.validate().map_err(|e| anyhow::anyhow!("the program of node {node} is invalid: {e}"))?;
        }
        checks
            .iter()
            .map(|ch| {
                if let Some(why) = in_pod_cidr(&test.cluster, ch) {
                    return Ok(Err(why));
                }
                if let Some(via) = &ch.via {
                    return through_service(&test.cluster, &programs, ch, via);
                }
                interp::flow_verdict(&test.cluster, &|n| programs.get(n), &ch.flow, ch.family)
                    .map(|t| Ok(t.allowed))
                    .ok_or_else(|| anyhow::anyhow!("line {}: no {} address", ch.line, ch.family))
            })
            .collect()
    }
}

/// A check through a Service, judged along the path its packets take.
fn through_service(
    cluster: &Cluster,
    programs: &BTreeMap<String, Program>,
    ch: &Check,
    via: &service::Via,
) -> anyhow::Result<Result<bool, String>> {
    // No backend, or one the connection cannot reach (`why`): no path.
    if via.backend.is_none() || via.why.is_some() {
        return Ok(Ok(false));
    }
    let t = interp::Translated {
        client: ch.flow.src.clone(),
        backend: ch.flow.dst.clone(),
        protocol: ch.flow.protocol,
        backend_port: ch.flow.port,
        node_port: match &via.entry {
            Entry::ClusterIp { .. } => None,
            Entry::NodePort { node, ip } => Some((node.clone(), *ip, via.port)),
        },
        source_nat: via.source_nat,
    };
    interp::path_verdict(cluster, &|n| programs.get(n), &t, ch.family)
        .map(|t| Ok(t.allowed))
        .ok_or_else(|| anyhow::anyhow!("line {}: no {} address", ch.line, ch.family))
}

