//! `netfence bench --smoke` keeps working: every stage runs on a tiny
//! generated cluster, the pod-add delta stays element-only, and the kernel
//! measures (applies, and traffic through the packet path) run in scratch
//! network namespaces when this machine allows (root and nft), leaving none
//! behind.

use netfence::bench::{self, Options};

#[test]
fn smoke_run_measures_every_stage() {
    let mut out = Vec::new();
    let mut opts = Options::smoke();
    opts.agent = Some(bench::agent::AgentOptions { exe: env!("CARGO_BIN_EXE_netfence").into(), events: 4 });
    let (ok, reports) = bench::run(&opts, &mut out).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ok, "the smoke size has no targets to fail");
    let text = String::from_utf8(out).unwrap();
    let [r] = reports.as_slice() else { panic!("one size, got {}", reports.len()) };
    assert!(text.contains("### smoke: 300 pods"), "{text}");
    assert!(r.program.rules > 0 && r.program.elements > 0, "{text}");
    let names: Vec<&str> = r.deltas.iter().map(|d| d.what).collect();
    assert_eq!(names, ["pod added", "pod relabelled", "policy changed"], "{text}");
    let add = &r.deltas[0];
    assert!(add.only_elements && add.ops > 0, "a pod add must change set elements only:\n{text}");
    assert!(r.deltas.iter().all(|d| d.ops > 0), "every change reaches the node's program:\n{text}");
    assert!(r.deltas.iter().all(|d| d.incremental_exact), "the incremental engine gives the full path's transactions:\n{text}");
    let names: Vec<&str> = r.cluster_policy_deltas.iter().map(|d| d.what).collect();
    assert_eq!(names, ["pod added", "cluster policy changed"], "{text}");
    assert!(r.cluster_policy_deltas.iter().all(|d| d.exact && d.ops > 0), "with cluster policies in force, the engine gives the full path's transactions:\n{text}");
    assert!(r.cluster_policy_deltas[0].only_elements, "a pod add under cluster policies changes set elements only:\n{text}");
    assert!(text.contains("| pod added, 10 cluster policies: incremental |"), "{text}");
    assert!(!text.contains("a netfence bug"), "{text}");
    match r.full_apply {
        Some(_) => {
            assert!(r.deltas.iter().all(|d| d.apply.is_some()), "{text}");
            let p = r.packet.as_ref().expect("the smoke run measures the packet path");
            let names: Vec<&str> = p.results.iter().map(|x| x.name).collect();
            assert_eq!(names, ["no ruleset", "kube-proxy NAT", "netfence + kube-proxy NAT", "linear + kube-proxy NAT"], "{text}");
            assert!(p.results.iter().all(|x| x.throughput.0 > 0.0 && x.connections_per_s.0 > 0.0), "{text}");
            let a = r.agent.as_ref().expect("the smoke run runs the agent");
            assert_eq!((a.latencies.len(), a.syncs), (4, 4), "one delta sync per event:\n{text}");
            assert!(a.rss_kb > 0 && a.latencies.iter().all(|l| *l >= 0.0), "{text}");
            assert!(text.contains("| agent: event to applied |"), "{text}");
        }
        None => assert!(r.notes.iter().any(|n| n.contains("kernel measures skipped")), "{text}"),
    }
    let netns = std::process::Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let prefix = format!("nfb{}-", std::process::id());
    assert!(!String::from_utf8_lossy(&netns).contains(&prefix), "a scratch namespace was left behind");
}
