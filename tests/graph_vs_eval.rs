//! The allow graph against the reference: random flows (seeded) in every
//! fixture cluster (the policy suite's clusters with each test's policies,
//! the demo, the 1k-pod scale fixture, a generated cluster dense in
//! policies), both families, all three protocols, pods, host-network pods,
//! nodes and outside addresses (inside and around every ipBlock). For each
//! flow `AllowGraph::allows` must equal `eval::evaluate`, and the
//! who-can-reach / reach-from answers must list exactly the pods and
//! addresses eval allows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use netfence::eval::{evaluate, Endpoint, Flow};
use netfence::gen::Rng;
use netfence::graph::query::{reach_from, who_can_reach, EntryKind};
use netfence::graph::sides::{Peer, Sides};
use netfence::graph::{AllowGraph, At, PortSet};
use netfence::ir::Ir;
use netfence::model::cluster_policy::{ClusterPeer, ClusterPort};
use netfence::model::{Cluster, Direction, Family, PortRef, Protocol};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

/// Addresses worth trying as outside endpoints: around every ipBlock edge
/// (first, last, just before and after, each except's first), some
/// random ones, none of them a pod's.
fn addresses(c: &Cluster, rng: &mut Rng) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap(), "8.8.8.8".parse().unwrap()];
    let step = |ip: IpAddr, d: i128| -> IpAddr {
        match ip {
            IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(((u32::from(v) as i128 + d).rem_euclid(1 << 32)) as u32)),
            IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from((u128::from(v) as i128 + d) as u128)),
        }
    };
    for pol in &c.policies {
        for rule in pol.ingress.iter().chain(&pol.egress) {
            for peer in &rule.peers {
                if let netfence::model::Peer::IpBlock { cidr, except } = peer {
                    for net in std::iter::once(cidr).chain(except) {
                        for ip in [net.network(), net.broadcast()] {
                            out.extend([ip, step(ip, -1), step(ip, 1)]);
                        }
                    }
                }
            }
        }
    }
    for pol in &c.cluster_policies {
        for rule in pol.ingress.iter().chain(&pol.egress) {
            for peer in &rule.peers {
                if let ClusterPeer::Networks(nets) = peer {
                    for net in nets {
                        for ip in [net.network(), net.broadcast()] {
                            out.extend([ip, step(ip, -1), step(ip, 1)]);
                        }
                    }
                }
            }
        }
    }
    for _ in 0..8 {
        out.push(IpAddr::from((rng.next_u64() as u32).to_be_bytes()));
        out.push(IpAddr::V6(Ipv6Addr::from((rng.next_u64() as u128) << 64 | rng.next_u64() as u128)));
    }
    for node in c.nodes.values() {
        out.extend(node.internal_ips.iter().map(|&ip| step(ip, 1)));
    }
    for p in c.pods.iter().filter(|p| p.is_policy_pod()) {
        out.extend(p.ips.iter().map(|&ip| step(ip, 1)));
    }
    out.sort();
    out.dedup();
    out.retain(|&ip| c.pod_by_ip(ip).is_none() && c.node_by_ip(ip).is_none());
    out
}

/// Ports where a verdict can change, plus a few random ones.
fn ports(c: &Cluster, rng: &mut Rng) -> Vec<u16> {
    let mut out = vec![1, 53, 80, 443, 5432, 65535];
    for pol in &c.policies {
        for rule in pol.ingress.iter().chain(&pol.egress) {
            for p in &rule.ports {
                if let Some(PortRef::Number(n)) = p.port {
                    let e = p.end_port.unwrap_or(n);
                    out.extend([n.saturating_sub(1).max(1), n, e, e.saturating_add(1)]);
                }
            }
        }
    }
    for pol in &c.cluster_policies {
        for rule in pol.ingress.iter().chain(&pol.egress) {
            for p in &rule.ports {
                if let ClusterPort::Range { start, end, .. } = *p {
                    out.extend([start.saturating_sub(1).max(1), start, end, end.saturating_add(1)]);
                }
            }
        }
    }
    for p in &c.pods {
        out.extend(p.ports.iter().map(|p| p.port));
    }
    for _ in 0..4 {
        out.push(1 + rng.below(65535) as u16);
    }
    out.sort();
    out.dedup();
    out
}

fn endpoints(c: &Cluster, rng: &mut Rng) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = (0..c.pods.len()).filter(|&i| c.pods[i].takes_part()).map(Endpoint::Pod).collect();
    out.extend(c.nodes.values().filter(|n| !n.internal_ips.is_empty()).map(|n| Endpoint::Node(n.name.clone())));
    out.extend(addresses(c, rng).into_iter().map(Endpoint::Ip));
    out
}

fn at(c: &Cluster, e: &Endpoint, family: Family) -> At {
    match e {
        Endpoint::Pod(id) if c.pods[*id].is_policy_pod() => At::Pod(*id),
        other => At::Addr(other.ip(c, family).expect("family checked")),
    }
}

struct Stats {
    flows: usize,
    allowed: usize,
}

/// `flows` random flows through both the graph and eval.
fn check_flows(name: &str, c: &Cluster, ir: &Ir, g: &AllowGraph, flows: usize, seed: u64, stats: &mut Stats) {
    let mut rng = Rng::new(seed, 1);
    let eps = endpoints(c, &mut rng);
    let ports = ports(c, &mut rng);
    let mut done = 0;
    let mut tries = 0;
    while done < flows && tries < flows * 4 {
        tries += 1;
        let src = eps[rng.below(eps.len())].clone();
        let dst = eps[rng.below(eps.len())].clone();
        let protocol = Protocol::ALL[rng.below(3)];
        let port = ports[rng.below(ports.len())];
        let flow = Flow { src: src.clone(), dst: dst.clone(), protocol, port, family: None };
        let Ok(verdict) = evaluate(c, ir, &flow) else { continue };
        for fv in &verdict.families {
            let got = g.allows(c, at(c, &src, fv.family), at(c, &dst, fv.family), protocol, port, fv.family);
            assert_eq!(
                got,
                fv.allowed,
                "{name}: {} -> {} {port}/{protocol} {}: graph says {got}, eval says {}",
                src.display(c),
                dst.display(c),
                fv.family,
                fv.allowed
            );
            stats.flows += 1;
            stats.allowed += usize::from(got);
        }
        done += 1;
    }
}

/// For random policy pods and ports: the query's entries allow exactly
/// what eval allows, from and to every pod and every tried address.
fn check_queries(name: &str, c: &Cluster, ir: &Ir, g: &AllowGraph, targets: usize, seed: u64) {
    let mut rng = Rng::new(seed, 2);
    let pods: Vec<usize> = (0..c.pods.len()).filter(|&i| c.pods[i].is_policy_pod()).collect();
    if pods.is_empty() {
        return;
    }
    let addrs = addresses(c, &mut rng);
    let ports = ports(c, &mut rng);
    let sides = Sides::new(c, ir);
    for _ in 0..targets {
        let target = pods[rng.below(pods.len())];
        let protocol = Protocol::ALL[rng.below(3)];
        let port = ports[rng.below(ports.len())];
        let only = PortSet::range(protocol, port, port);
        for ingress in [true, false] {
            let r = if ingress { who_can_reach(g, c, &sides, target, Some(&only)) } else { reach_from(g, c, &sides, target, Some(&only)) }
                .expect("a policy pod");
            let covers = |id: &str, family: Family| {
                r.entries.iter().any(|e| e.id == id && e.families.contains(&family) && e.ports.contains(protocol, port))
            };
            // Other pods: by their workload's or namespace's entry.
            for &p in pods.iter().filter(|&&p| p != target) {
                let (src, dst) = if ingress { (p, target) } else { (target, p) };
                let flow = Flow { src: Endpoint::Pod(src), dst: Endpoint::Pod(dst), protocol, port, family: None };
                let Ok(v) = evaluate(c, ir, &flow) else { continue };
                let w = &g.workloads.list[g.workloads.of_pod[p].unwrap()];
                for fv in &v.families {
                    let listed = covers(&w.id, fv.family) || covers(&format!("{}/*", w.namespace), fv.family);
                    assert_eq!(listed, fv.allowed, "{name}: {} {} {port}/{protocol} {}: {r:#?}", r.query, c.pods[p].key(), fv.family);
                }
            }
            // Addresses: by the outside, ipBlock or node entries holding them.
            let nodes: Vec<Endpoint> = c.nodes.keys().map(|n| Endpoint::Node(n.clone())).collect();
            for e in addrs.iter().map(|&a| Endpoint::Ip(a)).chain(nodes) {
                let (src, dst) = if ingress { (e.clone(), Endpoint::Pod(target)) } else { (Endpoint::Pod(target), e.clone()) };
                let flow = Flow { src, dst, protocol, port, family: None };
                let Ok(v) = evaluate(c, ir, &flow) else { continue };
                for fv in &v.families {
                    let ip = e.ip(c, fv.family).unwrap();
                    let listed = r.entries.iter().any(|x| {
                        x.families.contains(&fv.family)
                            && x.ports.contains(protocol, port)
                            && match x.kind {
                                EntryKind::Outside => true,
                                EntryKind::Ipblock => g.blocks.iter().any(|b| b.to_string() == x.id && b.contains(ip)),
                                EntryKind::Node => c.nodes.get(x.id.trim_start_matches("node/")).is_some_and(|n| n.internal_ips.contains(&ip)),
                                _ => false,
                            }
                    });
                    assert_eq!(listed, fv.allowed, "{name}: {} {} {port}/{protocol} {}: {r:#?}", r.query, e.display(c), fv.family);
                }
            }
        }
    }
}

fn check_cluster(name: &str, c: &Cluster, flows: usize, targets: usize, seed: u64, stats: &mut Stats) {
    let ir = netfence::ir::resolve(c);
    let g = AllowGraph::build(c, &ir);
    check_flows(name, c, &ir, &g, flows, seed, stats);
    check_queries(name, c, &ir, &g, targets, seed);
}

#[test]
fn graph_equals_eval_on_the_policy_suite() {
    let mut files = Vec::new();
    yaml_files(&root().join("policy-tests"), &mut files);
    yaml_files(&root().join("policy-tests-failing"), &mut files);
    let mut stats = Stats { flows: 0, allowed: 0 };
    for (i, f) in files.iter().enumerate() {
        let t = netfence::policytest::format::PolicyTest::load(f).unwrap_or_else(|e| panic!("{e}"));
        // The graph judges NetworkPolicies only (its commands refuse
        // cluster-scoped policies).
        if !t.cluster.cluster_policies.is_empty() {
            continue;
        }
        check_cluster(&f.display().to_string(), &t.cluster, 1500, 6, i as u64, &mut stats);
    }
    assert!(files.len() >= 80, "{} test files", files.len());
    // Both verdicts well represented, or the check proves little.
    assert!(stats.allowed > stats.flows / 20 && stats.allowed < stats.flows * 19 / 20, "{} of {} allowed", stats.allowed, stats.flows);
    println!("{} flow checks over {} clusters, {} allowed", stats.flows, files.len(), stats.allowed);
}

#[test]
fn graph_equals_eval_on_the_demo_and_scale_fixtures() {
    let demo = netfence::model::load_paths(&[root().join("fixtures/demo/cluster.yaml"), root().join("fixtures/demo/policies")]).unwrap().0;
    let small = netfence::model::load_paths(&[root().join("fixtures/scale/small")]).unwrap().0;
    let mut text = Vec::new();
    let spec = netfence::gen::Spec { pods: 400, nodes: 4, namespaces: 12, policies: 90, seed: 11 };
    netfence::gen::Plan::new(spec).unwrap().write_stream(&mut text).unwrap();
    let dense = netfence::model::load::load_str("gen.yaml", std::str::from_utf8(&text).unwrap()).unwrap();
    let mut stats = Stats { flows: 0, allowed: 0 };
    check_cluster("demo", &demo, 5000, 20, 1, &mut stats);
    check_cluster("scale/small", &small, 20000, 8, 2, &mut stats);
    check_cluster("gen dense", &dense, 20000, 12, 3, &mut stats);
    assert!(stats.allowed > stats.flows / 20 && stats.allowed < stats.flows * 19 / 20, "{} of {} allowed", stats.allowed, stats.flows);
    println!("{} flow checks, {} allowed", stats.flows, stats.allowed);
}

/// A flow's verdict from `Sides` alone (what `diff` compares).
fn sides_allow(c: &Cluster, sides: &Sides<'_>, src: At, dst: At, protocol: Protocol, port: u16, fam: Family) -> bool {
    match (src, dst) {
        (At::Pod(a), At::Pod(b)) if a == b => true,
        (At::Addr(_), At::Addr(_)) => true,
        (At::Addr(s), At::Pod(b)) => {
            netfence::graph::node_local(c, s, b) || sides.side_ports(b, Direction::Ingress, Peer::Addr(s), fam).contains(protocol, port)
        }
        (At::Pod(a), At::Addr(d)) => sides.side_ports(a, Direction::Egress, Peer::Addr(d), fam).contains(protocol, port),
        (At::Pod(a), At::Pod(b)) => sides.pair_ports(a, b, fam).contains(protocol, port),
    }
}

/// Random cluster policies over a generated cluster's own labels, CIDRs
/// around its pods' addresses, its ports and named ports: every tier,
/// action, peer kind and protocol form, equal priorities included.
fn random_cluster_policies(c: &Cluster, rng: &mut Rng, n: usize) -> String {
    let pods: Vec<&netfence::model::Pod> = c.pods.iter().filter(|p| p.is_policy_pod()).map(|p| &**p).collect();
    let label = |rng: &mut Rng, key: &str| -> Option<String> {
        let p = pods[rng.below(pods.len())];
        p.labels.get(key).map(|v| format!("{{matchLabels: {{{key}: {v:?}}}}}"))
    };
    let ns_sel = |rng: &mut Rng| -> String {
        match rng.below(4) {
            0 => "{}".into(),
            1 => format!("{{matchLabels: {{kubernetes.io/metadata.name: {}}}}}", pods[rng.below(pods.len())].namespace),
            _ => ["{matchLabels: {env: prod}}", "{matchLabels: {env: dev}}", "{matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}"][rng.below(3)].into(),
        }
    };
    let pod_sel = |rng: &mut Rng| -> String {
        let key = ["app", "tier", "version"][rng.below(3)];
        label(rng, key).unwrap_or_else(|| "{}".into())
    };
    let mut out = String::new();
    for k in 0..n {
        let tier = if rng.percent(60) { "Admin" } else { "Baseline" };
        let subject = if rng.percent(50) {
            format!("{{namespaces: {}}}", ns_sel(rng))
        } else {
            format!("{{pods: {{namespaceSelector: {}, podSelector: {}}}}}", ns_sel(rng), pod_sel(rng))
        };
        out += &format!(
            "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: rnd-{k}}}\nspec:\n  tier: {tier}\n  priority: {}\n  subject: {subject}\n",
            rng.below(3)
        );
        for dir in ["ingress", "egress"] {
            let rules = rng.below(4);
            if rules == 0 {
                continue;
            }
            out += &format!("  {dir}:\n");
            for _ in 0..rules {
                let action = ["Accept", "Deny", "Pass"][rng.below(3)];
                let mut peers = Vec::new();
                for _ in 0..1 + rng.below(2) {
                    let kinds = if dir == "egress" { 4 } else { 2 };
                    peers.push(match rng.below(kinds) {
                        0 => format!("{{namespaces: {}}}", ns_sel(rng)),
                        1 => format!("{{pods: {{namespaceSelector: {}, podSelector: {}}}}}", ns_sel(rng), pod_sel(rng)),
                        2 => {
                            let p = pods[rng.below(pods.len())];
                            let ip = p.ips[rng.below(p.ips.len())];
                            let len = match (ip.is_ipv4(), rng.below(3)) {
                                (true, 0) => 32,
                                (true, 1) => 28,
                                (true, _) => 0,
                                (false, 0) => 128,
                                (false, 1) => 124,
                                (false, _) => 0,
                            };
                            let net = ipnet::IpNet::new(ip, len).unwrap().trunc();
                            format!("{{networks: [{net}]}}")
                        }
                        _ => "{nodes: {}}".into(),
                    });
                }
                let to = if dir == "egress" { "to" } else { "from" };
                let protocols = match rng.below(5) {
                    0 | 1 => String::new(),
                    2 => format!(", protocols: [{{tcp: {{destinationPort: {{number: {}}}}}}}]", [80, 8080, 5432, 53][rng.below(4)]),
                    3 => format!(
                        ", protocols: [{{tcp: {{destinationPort: {{range: {{start: 1000, end: 9000}}}}}}}}, {{udp: {{destinationPort: {{number: 53}}}}}}]"
                    ),
                    _ if peers.iter().all(|p| p.starts_with("{namespaces") || p.starts_with("{pods")) => {
                        format!(", protocols: [{{destinationNamedPort: {}}}]", ["http", "metrics", "dns"][rng.below(3)])
                    }
                    _ => ", protocols: [{sctp: {destinationPort: {number: 9090}}}]".into(),
                };
                out += &format!("  - {{action: {action}, {to}: [{}]{protocols}}}\n", peers.join(", "));
            }
        }
    }
    out
}

/// Grouping under tiers: a generated cluster (workloads of many pods, dual
/// stack) with random cluster policies. Sides against eval on random flows,
/// and diff against its definition on random changes of both kinds.
#[test]
fn diff_and_sides_equal_eval_with_random_cluster_policies() {
    let mut rng = Rng::new(23, 6);
    let (mut changed, mut flows) = (0, 0);
    for round in 0..6u64 {
        let mut text = Vec::new();
        let spec = netfence::gen::Spec { pods: 60, nodes: 3, namespaces: 5, policies: 8, seed: 100 + round };
        netfence::gen::Plan::new(spec).unwrap().write_stream(&mut text).unwrap();
        let mut text = String::from_utf8(text).unwrap();
        let base = netfence::model::load::load_str("gen.yaml", &text).unwrap();
        text += &random_cluster_policies(&base, &mut rng, 6);
        let c = netfence::model::load::load_str("gen.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.cluster_policies.len(), 6);
        let ir = netfence::ir::resolve(&c);
        let sides = Sides::new(&c, &ir);
        let eps = endpoints(&c, &mut rng);
        let ports = ports(&c, &mut rng);
        for _ in 0..4000 {
            let (src, dst) = (eps[rng.below(eps.len())].clone(), eps[rng.below(eps.len())].clone());
            let (protocol, port) = (Protocol::ALL[rng.below(3)], ports[rng.below(ports.len())]);
            let flow = Flow { src: src.clone(), dst: dst.clone(), protocol, port, family: None };
            let Ok(v) = evaluate(&c, &ir, &flow) else { continue };
            for fv in &v.families {
                let got = sides_allow(&c, &sides, at(&c, &src, fv.family), at(&c, &dst, fv.family), protocol, port, fv.family);
                assert_eq!(got, fv.allowed, "round {round}: {} -> {} {port}/{protocol} {}\n{fv:#?}", src.display(&c), dst.display(&c), fv.family);
                flows += 1;
            }
        }
        for _ in 0..3 {
            let (b, a) = (some_policies(&c, &mut rng), some_policies(&c, &mut rng));
            let (ib, ia) = (netfence::ir::resolve(&b), netfence::ir::resolve(&a));
            let found = netfence::impact::impact((&b, &ib), (&a, &ia));
            let fast = netfence::impact::pod_changes(&found, &a);
            assert!(found.groups.len() < a.pods.len(), "workloads of several pods");
            assert_eq!(fast, netfence::impact::impact_by_eval((&b, &ib), (&a, &ia)), "round {round}");
            changed += usize::from(!fast.is_empty());
        }
    }
    assert!(changed >= 12, "only {changed} changes flipped a verdict");
    println!("{flows} flows, {changed} changes");
}

/// The tier-aware side computation (`Sides::pair_ports`, `side_ports`)
/// against eval, in every policy test cluster with cluster-scoped policies
/// and in random halves of their policies: pods, host-network pods, nodes
/// at each of their addresses (ExternalIP too), outside addresses around
/// every network, on every port that matters.
#[test]
fn sides_equal_eval_with_cluster_policies() {
    let mut files = Vec::new();
    yaml_files(&root().join("policy-tests"), &mut files);
    let mut rng = Rng::new(17, 5);
    let (mut checks, mut allowed, mut clusters) = (0usize, 0usize, 0usize);
    for f in &files {
        let t = netfence::policytest::format::PolicyTest::load(f).unwrap_or_else(|e| panic!("{e}"));
        if t.cluster.cluster_policies.is_empty() {
            continue;
        }
        let mut variants = vec![t.cluster.clone()];
        variants.extend((0..4).map(|_| some_policies(&t.cluster, &mut rng)));
        for c in &variants {
            clusters += 1;
            let ir = netfence::ir::resolve(c);
            let sides = Sides::new(c, &ir);
            let mut eps = endpoints(c, &mut rng);
            for n in c.nodes.values() {
                eps.extend(n.addresses.iter().map(|&ip| Endpoint::NodeAddr(n.name.clone(), ip)));
            }
            let ports = ports(c, &mut rng);
            for src in &eps {
                for dst in &eps {
                    for protocol in Protocol::ALL {
                        for &port in &ports {
                            let flow = Flow { src: src.clone(), dst: dst.clone(), protocol, port, family: None };
                            let Ok(v) = evaluate(c, &ir, &flow) else { continue };
                            for fv in &v.families {
                                let fam = fv.family;
                                let got = sides_allow(c, &sides, at(c, src, fam), at(c, dst, fam), protocol, port, fam);
                                assert_eq!(got, fv.allowed, "{}: {} -> {} {port}/{protocol} {fam}: sides say {got}, eval {fv:#?}", f.display(), src.display(c), dst.display(c));
                                checks += 1;
                                allowed += usize::from(got);
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(clusters >= 8 * 5, "{clusters} clusters");
    // Address-to-address flows are always allowed: both verdicts must
    // still be well represented.
    assert!(allowed > 10_000 && checks - allowed > 10_000, "{allowed} of {checks} allowed");
    println!("{checks} side checks over {clusters} clusters with cluster policies, {allowed} allowed");
}

/// The policies a random half of `c`'s, each kept with probability 1/2.
fn some_policies(c: &Cluster, rng: &mut Rng) -> Cluster {
    let mut out = c.clone();
    out.policies.retain(|_| rng.percent(50));
    out.cluster_policies.retain(|_| rng.percent(50));
    out
}

/// `diff`'s grouped comparison equals the definition (every pod pair and
/// port interval judged by eval) on random changes: two random subsets of
/// each policy test's policies as before and after.
#[test]
fn diff_equals_its_definition_on_random_changes() {
    let mut files = Vec::new();
    yaml_files(&root().join("policy-tests"), &mut files);
    let mut rng = Rng::new(5, 3);
    let (mut changed, mut with_cluster) = (0, 0);
    for f in &files {
        let t = netfence::policytest::format::PolicyTest::load(f).unwrap_or_else(|e| panic!("{e}"));
        // Clusters with cluster-scoped policies get more tries: fewer files.
        let tries = if t.cluster.cluster_policies.is_empty() { 2 } else { 12 };
        for _ in 0..tries {
            let (b, a) = (some_policies(&t.cluster, &mut rng), some_policies(&t.cluster, &mut rng));
            let (ib, ia) = (netfence::ir::resolve(&b), netfence::ir::resolve(&a));
            let found = netfence::impact::impact((&b, &ib), (&a, &ia));
            let fast = netfence::impact::pod_changes(&found, &a);
            assert_eq!(fast, netfence::impact::impact_by_eval((&b, &ib), (&a, &ia)), "{}", f.display());
            changed += usize::from(!fast.is_empty());
            with_cluster += usize::from(!fast.is_empty() && b.cluster_policies != a.cluster_policies);
        }
    }
    assert!(changed > files.len() / 2, "only {changed} changes flipped a verdict");
    assert!(with_cluster >= 30, "only {with_cluster} cluster-policy changes flipped a verdict");
}

/// Redundancy (exact, by port sets and address ranges) against brute
/// force: every policy of every policy test and of the demo, removed alone,
/// with eval on every flow between pods, nodes and the tried addresses, on
/// every port that matters.
#[test]
fn redundancy_equals_brute_force() {
    let mut files = Vec::new();
    yaml_files(&root().join("policy-tests"), &mut files);
    let mut clusters: Vec<(String, Cluster)> = files
        .iter()
        .map(|f| (f.display().to_string(), netfence::policytest::format::PolicyTest::load(f).unwrap().cluster))
        .collect();
    let demo = netfence::model::load_paths(&[root().join("fixtures/demo/cluster.yaml"), root().join("fixtures/demo/policies")]).unwrap().0;
    clusters.push(("demo".into(), demo));
    let (mut redundant, mut total) = (0, 0);
    for (name, c) in &clusters {
        let ir = netfence::ir::resolve(c);
        let exact = netfence::graph::redundant::Redundancy::new(c, &ir);
        let mut rng = Rng::new(9, 4);
        let eps = endpoints(c, &mut rng);
        let ports = ports(c, &mut rng);
        for p in 0..c.policies.len() {
            let mut without = c.clone();
            without.policies.remove(p);
            let iw = netfence::ir::resolve(&without);
            let pod = |e: &Endpoint| matches!(e, Endpoint::Pod(i) if c.pods[*i].is_policy_pod());
            let differs = eps.iter().filter(|s| pod(s) || eps.iter().any(pod)).any(|src| {
                eps.iter().filter(|d| pod(src) || pod(d)).any(|dst| {
                    Protocol::ALL.iter().any(|&protocol| {
                        ports.iter().any(|&port| {
                            let flow = Flow { src: src.clone(), dst: dst.clone(), protocol, port, family: None };
                            match (evaluate(c, &ir, &flow), evaluate(&without, &iw, &flow)) {
                                (Ok(x), Ok(y)) => x.families.iter().zip(&y.families).any(|(x, y)| x.allowed != y.allowed),
                                _ => false,
                            }
                        })
                    })
                })
            });
            assert_eq!(exact.is_redundant(p), !differs, "{name}: {}", c.policies[p].key());
            redundant += usize::from(!differs);
            total += 1;
        }
    }
    assert!(redundant > 0 && redundant < total, "{redundant} of {total} redundant");
    println!("{redundant} of {total} policies redundant");
}
