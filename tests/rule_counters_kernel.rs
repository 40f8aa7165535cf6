//! Per-rule counters from a real kernel: the agent's dataplane applies a
//! node's program inside a network namespace of the test's dataplane, real
//! probes cross it, and the counters read back with `nft -j -t list table`
//! land in the series of the policy rule that allowed and of the policy
//! whose isolation denied. Needs root; prints SKIPPED without it.

use std::sync::Arc;
use std::time::Duration;

use netfence::agent::dataplane::Dataplane as _;
use netfence::agent::rule_counters::RuleCounters;
use netfence::agent::NftDataplane;
use netfence::apply::NftKernel;
use netfence::dataplane::{Dataplane, Endpoint, ProbeOptions, ProbeSpec};
use netfence::model::load::ClusterBuilder;
use netfence::model::{Family, Protocol};
use netfence::netns;
use prometheus_client::registry::Registry;

/// x/a (node-1) admits TCP 80 from x/c only; x/b is denied.
const POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: c}}}]
    ports: [{port: 80, protocol: TCP}]
";

fn value(text: &str, metric: &str, policy: &str, direction: &str, rule: &str) -> u64 {
    let want = format!("{metric}{{policy=\"{policy}\",direction=\"{direction}\",rule=\"{rule}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&want)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn counters_name_the_rule_that_allowed_and_the_policy_that_denied() {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut b = ClusterBuilder::new();
    b.add_path(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/clusters/standard.yaml"))).unwrap();
    b.add_text("policy.yaml", POLICY).unwrap();
    let (cluster, _) = b.finish();
    let selected = cluster.pods.iter().filter(|p| p.namespace == "x" && p.labels.get("pod") == Some("a")).count();
    assert_eq!(selected, 1, "the fixture's x/a carries label pod=a");

    let mut node1 = None;
    let dp = Dataplane::build(&cluster, &[], |node, ns| {
        if node == "node-1" {
            node1 = Some(ns.name().to_string());
        }
        Ok(())
    })
    .unwrap();
    let ns = node1.expect("node-1 has a namespace");
    let counters = Arc::new(RuleCounters::new(Box::new(NftKernel::in_netns(&ns)), Duration::ZERO, 100));
    let mut agent_dp = NftDataplane::new("node-1", Box::new(NftKernel::in_netns(&ns))).with_rule_counters(counters.clone());
    agent_dp.sync(&cluster, true).unwrap();
    let mut registry = Registry::with_prefix("netfence");
    counters.register(&mut registry);

    let ep = |s: &str| Endpoint::parse(&cluster, s).unwrap();
    let probe = |from: &str| ProbeSpec { from: ep(from), to: ep("x/a"), family: Family::IPv4, protocol: Protocol::Tcp, port: 80, via: None };
    let options = ProbeOptions { timeout: Duration::from_millis(400), attempts: 1, parallel: 2 };
    let results = dp.probe_with(&[probe("x/c"), probe("x/b")], &options).unwrap();
    assert!(results[0].allowed, "x/c -> x/a:80 {}", results[0].detail);
    assert!(!results[1].allowed, "x/b -> x/a:80 {}", results[1].detail);

    counters.refresh();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let allowed = value(&text, "netfence_rule_packets_total", "x/a-from-c", "ingress", "0");
    let denied = value(&text, "netfence_rule_packets_total", "x/a-from-c", "ingress", "isolated");
    // One new connection is one packet through the judging chain: its
    // replies and the rest of it pass on conntrack's word first.
    assert_eq!(allowed, 1, "{text}");
    assert!(denied >= 1, "the denied SYN (and any retransmission) counts: {text}");
    assert!(value(&text, "netfence_rule_bytes_total", "x/a-from-c", "ingress", "0") >= 40, "{text}");
    assert_eq!(value(&text, "netfence_rule_counter_reads_total", "", "", ""), 0);
    assert!(text.contains("netfence_rule_counter_reads_total 1"), "{text}");
    let names = dp.netns_names();
    drop(dp);
    assert!(names.iter().all(|n| !netns::exists(n)), "namespaces left behind");
}
