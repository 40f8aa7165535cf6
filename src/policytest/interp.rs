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
//! [`super::in_pod_cidr`]).

use std::collections::BTreeMap;

use super::{in_pod_cidr, Backend, Check, PolicyTest};
use crate::ir::Ir;
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
                interp::flow_verdict(&test.cluster, &|n| programs.get(n), &ch.flow, ch.family)
                    .map(|t| Ok(t.allowed))
                    .ok_or_else(|| anyhow::anyhow!("line {}: no {} address", ch.line, ch.family))
            })
            .collect()
    }
}
