//! The dataplane as the policy test runner's second opinion: with a
//! ruleset that enforces the test's policy it agrees with the reference
//! evaluator on every check; with none, it disagrees exactly where the
//! reference denies. Needs root; without it each test says it skipped.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use netfence::dataplane::DataplaneBackend;
use netfence::ir::Ir;
use netfence::model::Cluster;
use netfence::netns::{self, Netns};
use netfence::policytest::{self, Backend, TestResult};

const DENY_ALL_INGRESS_X: &str = "policy-tests/basics/deny-all-ingress.yaml";

fn privileged() -> bool {
    netns::check_privileges().map_err(|why| eprintln!("SKIPPED: {why}")).is_ok()
}

fn run(test: &str, backend: impl Backend + 'static) -> TestResult {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(test);
    policytest::run_file(&path, &mut [Box::new(backend) as Box<dyn Backend>])
}

/// By hand what the test's policy means on each node: nothing new reaches
/// namespace x's pods through the node (the node's own address, which
/// reaches them through `output`, still does).
fn isolate_x_for_ingress(cluster: &Cluster, _: &Ir, node: &str, ns: &Netns) -> anyhow::Result<()> {
    let x_pods: Vec<String> = cluster
        .pods
        .iter()
        .filter(|p| p.namespace == "x" && p.is_policy_pod() && p.node.as_deref() == Some(node))
        .flat_map(|p| p.ips.iter().map(ToString::to_string))
        .collect();
    if x_pods.is_empty() {
        return Ok(());
    }
    let ruleset = format!(
        "table inet probe_test {{
            chain forward {{
                type filter hook forward priority 0; policy accept;
                ct state established,related accept
                ip daddr {{ {} }} drop
            }}
        }}",
        x_pods.join(", ")
    );
    let mut nft = ns.command("nft")?.args(["-f", "-"]).stdin(Stdio::piped()).spawn()?;
    nft.stdin.take().unwrap().write_all(ruleset.as_bytes())?;
    anyhow::ensure!(nft.wait()?.success(), "nft -f failed");
    Ok(())
}

#[test]
fn an_enforcing_ruleset_agrees_with_the_reference() {
    if !privileged() {
        return;
    }
    let result = run(DENY_ALL_INGRESS_X, DataplaneBackend::new(isolate_x_for_ingress));
    assert!(result.passed && result.error.is_none(), "{result:#?}");
    assert_eq!(result.checks, 2 * 81 + 2);
}

#[test]
fn without_a_ruleset_every_reference_denial_is_an_engine_failure() {
    if !privileged() {
        return;
    }
    let result = run(DENY_ALL_INGRESS_X, DataplaneBackend::new(|_, _, _, _| Ok(())));
    let engine: Vec<&str> =
        result.failures.iter().filter(|f| f.kind == "engine").map(|f| f.message.as_str()).collect();
    // Each table: 3 pods of x, each unreachable from the 8 other pods.
    assert_eq!(engine.len(), 2 * 3 * 8 + 1, "{engine:#?}");
    assert!(engine.iter().all(|m| m.contains("dataplane says allow")), "{engine:#?}");
}
