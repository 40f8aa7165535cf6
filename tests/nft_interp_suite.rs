//! The nftables programs, run packet by packet through the interpreter,
//! must agree with the reference evaluator on every check of the
//! conformance suite (policy-tests/): a disagreement is a compiler bug.

use std::collections::BTreeMap;
use std::path::PathBuf;

use netfence::ir::Ir;
use netfence::nft::{compile_all, interp, Program};
use netfence::policytest::{self, Backend, Check, PolicyTest};

/// The interpreter as a `netfence test` backend: compile every node's
/// program once per test, then judge each check on the nodes it crosses.
struct Interp;

impl Backend for Interp {
    fn name(&self) -> &'static str {
        "nft-interp"
    }

    fn verdicts(&mut self, test: &PolicyTest, ir: &Ir, checks: &[Check]) -> anyhow::Result<Vec<bool>> {
        let programs: BTreeMap<String, Program> = compile_all(&test.cluster, ir);
        for (node, p) in &programs {
            p.validate().map_err(|e| anyhow::anyhow!("node {node}: {e}"))?;
        }
        checks
            .iter()
            .map(|ch| {
                interp::flow_verdict(&test.cluster, &|n| programs.get(n), &ch.flow, ch.family)
                    .map(|t| t.allowed)
                    .ok_or_else(|| anyhow::anyhow!("line {}: no {} address", ch.line, ch.family))
            })
            .collect()
    }
}

#[test]
fn interpreter_agrees_with_the_reference_on_the_suite() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy-tests");
    let files = policytest::collect(&[root]).unwrap();
    assert!(files.len() >= 60, "only {} policy tests", files.len());
    let mut checks = 0;
    let mut bad = Vec::new();
    for f in &files {
        let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(Interp)];
        let r = policytest::run_file(f, &mut backends);
        checks += r.checks;
        if let Some(e) = &r.error {
            bad.push(format!("{}: {e}", r.file));
        }
        for fail in r.failures.iter().filter(|f| f.kind == "engine") {
            bad.push(format!("{}:{}: {}", r.file, fail.line, fail.message));
        }
    }
    assert!(bad.is_empty(), "{} disagreements in {checks} checks:\n{}", bad.len(), bad.join("\n"));
    assert!(checks > 1000, "only {checks} checks");
}
