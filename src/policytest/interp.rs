//! The nftables interpreter as a test backend: the second opinion every
//! `netfence test` run gets for free.
//!
//! Each node's program is compiled once per test; each check is then judged
//! packet by packet on the hooks the flow crosses (source node, destination
//! node). The runner reports any disagreement with the reference evaluator
//! as an engine bug, so the programs the agent installs are proven to say
//! what `explain` says, on every expectation of every test.
//!
//! One reading is the test format's, not the kernel's: an IP endpoint is
//! outside the cluster, yet an IP literal may fall inside a node's pod CIDR
//! (a finished pod's old address). The node closes such an address
//! whatever the policies say, until a pod is programmed there: a safety
//! net, not policy, on which the reference evaluator has no opinion. So a
//! check with an IP endpoint is judged on the programs without their
//! fail-closed rules ([`without_fail_closed`]); every other check, on the
//! programs the agent installs.

use std::collections::BTreeMap;

use super::{Backend, Check, PolicyTest};
use crate::ir::Ir;
use crate::eval::Endpoint;
use crate::nft::{compile_all, interp, without_fail_closed, Program};

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
        let open: BTreeMap<String, Program> = programs.iter().map(|(n, p)| (n.clone(), without_fail_closed(p))).collect();
        checks
            .iter()
            .map(|ch| {
                let outside = matches!(ch.flow.src, Endpoint::Ip(_)) || matches!(ch.flow.dst, Endpoint::Ip(_));
                let programs = if outside { &open } else { &programs };
                interp::flow_verdict(&test.cluster, &|n| programs.get(n), &ch.flow, ch.family)
                    .map(|t| Ok(t.allowed))
                    .ok_or_else(|| anyhow::anyhow!("line {}: no {} address", ch.line, ch.family))
            })
            .collect()
    }
}
