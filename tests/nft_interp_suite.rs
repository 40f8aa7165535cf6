//! The nftables programs, run packet by packet through the interpreter,
//! must agree with the reference evaluator on every check of the
//! conformance suite (policy-tests/): a disagreement is a compiler bug.

use std::path::PathBuf;

use netfence::policytest::{self, interp::InterpBackend, Backend};

#[test]
fn interpreter_agrees_with_the_reference_on_the_suite() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy-tests");
    let files = policytest::collect(&[root]).unwrap();
    assert!(files.len() >= 60, "only {} policy tests", files.len());
    let mut checks = 0;
    let mut bad = Vec::new();
    for f in &files {
        let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(InterpBackend)];
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
