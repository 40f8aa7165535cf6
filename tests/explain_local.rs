//! Endpoint-local resolution (`ir::Local`, what `explain` uses) must give
//! exactly the verdicts and traces of the whole cluster's IR: the explain
//! JSON of both is compared byte for byte on every check of the conformance
//! suite and on seeded random flows over the small scale fixture.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netfence::eval::{evaluate, Endpoint, Flow};
use netfence::gen::Rng;
use netfence::ir::{self, Ir, Local, PeerIr};
use netfence::model::{Cluster, Direction, PortRef, Protocol};
use netfence::policytest::{self, service, PolicyTest};

/// The explain JSON of `flow` through the whole IR and through `Local`;
/// `None` when the flow cannot be judged (both must agree on that too).
fn both(c: &Cluster, ir: &Ir, flow: &Flow) -> (Option<String>, Option<String>) {
    let json = |v: Result<netfence::eval::FlowVerdict, _>| {
        v.ok().map(|v| serde_json::to_string_pretty(&netfence::explain::report(c, flow, &v)).unwrap())
    };
    (json(evaluate(c, ir, flow)), json(evaluate(c, &Local::new(c), flow)))
}

fn describe(c: &Cluster, f: &Flow) -> String {
    format!("{} -> {} {}/{} {:?}", f.src.display(c), f.dst.display(c), f.port, f.protocol, f.family)
}

#[test]
fn local_resolution_explains_every_suite_check_identically() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = policytest::collect(&[root.join("policy-tests"), root.join("policy-tests-failing")]).unwrap();
    let (mut checks, mut denied, mut empty_peers, mut via_checks) = (0, 0, 0, 0);
    for file in &files {
        let test = PolicyTest::load(file).unwrap_or_else(|e| panic!("{e}"));
        let c = &test.cluster;
        let ir = ir::resolve(c);
        for ch in policytest::checks(&test).unwrap_or_else(|e| panic!("{e}")) {
            // Through a Service: the report explain prints, both ways.
            if let Some(via) = &ch.via {
                let json = |v| serde_json::to_string_pretty(&service::explain(c, &ch.flow, via, &v)).unwrap();
                let full = json(service::evaluate(c, &ir, &ch.flow, via, ch.family));
                let local = json(service::evaluate(c, &Local::new(c), &ch.flow, via, ch.family));
                assert_eq!(full, local, "{}:{}: {}", file.display(), ch.line, policytest::describe(c, &ch));
                via_checks += 1;
            }
            // Both the check's one family and every family at once.
            for flow in [Flow { family: Some(ch.family), ..ch.flow.clone() }, ch.flow.clone()] {
                let (full, local) = both(c, &ir, &flow);
                assert_eq!(full, local, "{}:{}: {}", file.display(), ch.line, describe(c, &flow));
                denied += full.as_ref().is_some_and(|j| j.contains("\"reason\": \"denied\"")) as usize;
                empty_peers += full.is_some_and(|j| j.contains("matches no pod")) as usize;
                checks += 1;
            }
        }
    }
    assert!(checks > 2000, "only {checks} flows compared");
    assert!(via_checks > 50, "only {via_checks} checks through a Service compared");
    assert!(denied > 300, "only {denied} flows with a denied side: misses are barely covered");
    assert!(empty_peers > 0, "no miss on a peer that matches no pod");
}

#[test]
fn local_resolution_explains_random_flows_identically() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/scale/small");
    let (c, _) = netfence::model::load_paths(&[dir]).unwrap();
    let ir = ir::resolve(&c);
    let pods: Vec<usize> = (0..c.pods.len()).filter(|&i| c.pods[i].takes_part()).collect();
    let nodes: Vec<&str> = c.nodes.keys().map(String::as_str).collect();
    let outside: Vec<IpAddr> = ["192.0.2.1", "198.51.100.7", "10.0.0.1", "172.16.5.5", "8.8.8.8"].iter().map(|s| s.parse().unwrap()).collect();
    let mut rng = Rng::new(7, 1);
    let endpoint = |rng: &mut Rng| match rng.below(10) {
        0 => Endpoint::Node(rng.pick(&nodes).to_string()),
        1 => Endpoint::Ip(rng.pick(&outside)),
        _ => Endpoint::Pod(rng.pick(&pods)),
    };
    let (mut compared, mut allowed_by_rule) = (0, 0);
    for i in 0..4000 {
        let mut src = endpoint(&mut rng);
        let dst = endpoint(&mut rng);
        let mut protocol = rng.pick(&Protocol::ALL);
        let mut port = match &dst {
            Endpoint::Pod(d) if !c.pods[*d].ports.is_empty() && rng.percent(70) => c.pods[*d].ports[rng.below(c.pods[*d].ports.len())].port,
            _ => rng.pick(&[53, 80, 443, 8080, 9090, 5432]),
        };
        // Half the flows come from a peer of a rule isolating the
        // destination, on a port of that rule, so rules match as often as
        // they miss.
        if let (true, Endpoint::Pod(d)) = (i % 2 == 0, &dst) {
            let rules: Vec<(usize, usize)> = ir.selecting[*d]
                .iter()
                .flat_map(|&p| (0..ir.policies[p].rules(Direction::Ingress).len()).map(move |r| (p, r)))
                .collect();
            if !rules.is_empty() {
                let (p, r) = rules[rng.below(rules.len())];
                let rule = &ir.policies[p].rules(Direction::Ingress)[r];
                let peers: Vec<usize> = rule
                    .peers
                    .iter()
                    .flatten()
                    .flat_map(|p| match p {
                        PeerIr::Pods(ids) => ids.iter().copied().collect::<Vec<_>>(),
                        PeerIr::IpBlock { .. } => vec![],
                    })
                    .collect();
                if !peers.is_empty() {
                    src = Endpoint::Pod(rng.pick(&peers));
                }
                if !rule.ports.is_empty() {
                    let spec = &rule.ports[rng.below(rule.ports.len())];
                    protocol = spec.protocol;
                    port = match &spec.port {
                        None => port,
                        Some(PortRef::Number(n)) => *n + rng.below(usize::from(spec.end_port.unwrap_or(*n) - n) + 1) as u16,
                        Some(PortRef::Named(name)) => c.pods[*d].named_port(name, protocol).unwrap_or(port),
                    };
                }
            }
        }
        let flow = Flow { src, dst, protocol, port, family: None };
        let (full, local) = both(&c, &ir, &flow);
        assert_eq!(full, local, "flow {i}: {}", describe(&c, &flow));
        allowed_by_rule += full.as_ref().is_some_and(|j| j.contains("\"reason\": \"allowed\"")) as usize;
        compared += full.is_some() as usize;
    }
    assert!(compared > 3000, "only {compared} flows could be judged");
    assert!(allowed_by_rule > 200, "only {allowed_by_rule} flows allowed by a rule: matches are barely covered");
}
