//! Hostile input: a fuzz harness over everything that reads user input.
//!
//! Targets (one test each): `manifests` (the YAML loader: `ClusterBuilder`,
//! multi-document, `kind: List`), `fields` (generated label selectors,
//! ipBlock CIDRs, ports, names, labels and addresses in otherwise valid
//! manifests), `policy_tests` (the policy test format and the runner's front
//! end), `agent_objects` (the JSON objects a watcher hands the agent's
//! index), `hostile` (alias bombs, deep nesting, huge lists and other
//! hand-made cases, every one every run) and `regressions` (every input
//! saved in tests/fuzz-regressions/).
//!
//! Oracles, for every input: no panic; no hang (each case has a deadline);
//! bounded memory (see `fuzz::run_one`); every rejection of a manifest or a
//! test file is located, `<file>:<line>:<col>: <field.path>: <message>`,
//! or `<file>:<line>:<col>: <message>` for the text or a document as a
//! whole (YAML syntax, not UTF-8, a second document), at a line and column
//! inside that file (only an I/O error about a file a test names, `cannot
//! read`, has no position); an object the agent refuses names a field path
//! of that object; every accepted cluster keeps the model's invariants and
//! goes through `ir::resolve`, `nft::compile` + `validate()`, the reference
//! evaluator, explain, lint and the allow graph, and the nftables
//! interpreter agrees with the reference (except for pods inside another
//! node's pod CIDR, see `foreign_cidr_pods`). Generated inputs add two: an
//! input with no fault must be accepted, one with a fault must be rejected
//! at that field; and the error's line and column are where the generator
//! wrote the field.
//!
//! Budget: NETFENCE_FUZZ_SECS per target (default 10; CI runs two targets
//! at a time), or NETFENCE_FUZZ_CASES cases; NETFENCE_FUZZ_SEED (a number
//! or `random`); NETFENCE_FUZZ_REPLAY=<saved input> runs one input;
//! NETFENCE_FUZZ_OUT (default target/tmp/fuzz) receives failing inputs,
//! shrunk, with a header naming their target.

#[path = "common/fuzz.rs"]
mod fuzz;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fuzz::{Case, Config, Expect, Fault, Outcome, Pool, Rng, Style};
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netfence::agent::index::{Index, Watched};
use netfence::eval::{evaluate, Endpoint, Flow};
use netfence::model::convert::check_port_name;
use netfence::model::load::{decode, ClusterBuilder, LoadError};
use netfence::model::{Cluster, Family, Peer, PortRef, Protocol, Sources, NAMESPACE_NAME_LABEL};
use netfence::policytest::format::PolicyTest;
use netfence::policytest::interp::InterpBackend;
use netfence::policytest::Backend;
use netfence::{explain, graph, ir, lint, nft};
use serde_json::{json, Map, Value};

#[global_allocator]
static ALLOC: fuzz::CountingAlloc = fuzz::CountingAlloc;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ------------------------------------------------------------- corpus ----

struct Corpus {
    /// Manifest files: (path relative to the repository, bytes, documents).
    manifests: Vec<(String, Vec<u8>, Vec<Value>)>,
    /// Policy test files: (relative path, bytes, document).
    tests: Vec<(String, Vec<u8>, Value)>,
    /// Every subtree of every manifest, for transplanting.
    pool: Pool,
    /// Objects of the kinds the agent watches.
    objects: Vec<Value>,
    /// Endpoints the tests name, for mutating expectations.
    endpoints: Vec<String>,
}

fn files_under(rel: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(Path::new(ROOT).join(rel)) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let r = p.strip_prefix(ROOT).unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            files_under(&r, out);
        } else if r.ends_with(".yaml") {
            out.push(r);
        }
    }
}

fn corpus() -> &'static Corpus {
    static C: OnceLock<Corpus> = OnceLock::new();
    C.get_or_init(|| {
        let mut manifest_files = Vec::new();
        for d in ["fixtures/clusters", "fixtures/demo/policies", "fixtures/invalid/manifests", "tests/golden/policies", "deploy"] {
            files_under(d, &mut manifest_files);
        }
        manifest_files.push("fixtures/demo/cluster.yaml".into());
        let mut test_files = Vec::new();
        for d in ["policy-tests", "policy-tests-failing"] {
            files_under(d, &mut test_files);
        }
        let mut invalid = Vec::new();
        files_under("fixtures/invalid", &mut invalid);
        test_files.extend(invalid.into_iter().filter(|f| !f.contains("/manifests/")));
        test_files.push("fixtures/demo/tests.yaml".into());

        let parse = |bytes: &[u8]| -> Vec<Value> {
            std::str::from_utf8(bytes).ok().and_then(|t| netfence::yaml::parse(t).ok()).map(|d| d.into_iter().map(|d| d.value).collect()).unwrap_or_default()
        };
        let mut pool = Pool::default();
        let mut objects = Vec::new();
        let mut manifests = Vec::new();
        for f in manifest_files {
            let bytes = std::fs::read(Path::new(ROOT).join(&f)).unwrap();
            let docs = parse(&bytes);
            for d in &docs {
                pool.add(d);
                collect_objects(d, &mut objects);
            }
            manifests.push((f, bytes, docs));
        }
        let mut tests = Vec::new();
        let mut endpoints = std::collections::BTreeSet::new();
        for f in test_files {
            let bytes = std::fs::read(Path::new(ROOT).join(&f)).unwrap();
            let Some(doc) = parse(&bytes).into_iter().next() else { continue };
            for o in doc.get("objects").and_then(Value::as_array).into_iter().flatten() {
                pool.add(o);
                collect_objects(o, &mut objects);
            }
            for e in doc.get("expect").and_then(Value::as_array).into_iter().flatten() {
                for k in ["from", "to"] {
                    if let Some(s) = e.get(k).and_then(Value::as_str) {
                        endpoints.insert(s.to_string());
                    }
                }
            }
            tests.push((f, bytes, doc));
        }
        assert!(manifests.len() >= 8 && tests.len() >= 60, "corpus too small: {} manifests, {} tests", manifests.len(), tests.len());
        Corpus { manifests, tests, pool, objects, endpoints: endpoints.into_iter().collect() }
    })
}

fn collect_objects(v: &Value, out: &mut Vec<Value>) {
    match v.get("kind").and_then(Value::as_str) {
        Some("Namespace" | "Node" | "Pod" | "NetworkPolicy") => out.push(v.clone()),
        Some(k) if k.ends_with("List") => {
            for i in v.get("items").and_then(Value::as_array).into_iter().flatten() {
                collect_objects(i, out);
            }
        }
        _ => {}
    }
}

// ------------------------------------------------------------ oracles ----

/// `Err` is an oracle violation, its first word the kind of failure.
type Verdict = Result<Outcome, String>;

fn lines_of(text: &str) -> Vec<&str> {
    text.split('\n').collect()
}

/// A rejection must be `<file>:<line>:<col>: [<path>: ]<message>` with the
/// position inside `text` (the file's content).
fn check_located(e: &LoadError, file: &str, text: &str) -> Result<(), String> {
    let shown = e.to_string();
    if e.file != file {
        return Err(format!("misfiled {} | error names {:?}, the input is {file:?}: {shown}", fuzz::shape(&e.message), e.file));
    }
    let Some(pos) = e.pos else { return Err(format!("unlocated {} | no line and column: {shown}", fuzz::shape(&e.message))) };
    let lines = lines_of(text);
    let in_bounds = pos.line >= 1
        && pos.line <= lines.len()
        && pos.col >= 1
        && pos.col <= lines[pos.line - 1].chars().count() + 1;
    if !in_bounds {
        return Err(format!("out-of-bounds {} | {}:{} is outside the file ({} lines): {shown}", fuzz::shape(&e.message), pos.line, pos.col, lines.len()));
    }
    if e.message.trim().is_empty() {
        return Err(format!("empty-message | {shown}"));
    }
    let want = format!("{file}:{}:{}: ", pos.line, pos.col);
    if !shown.starts_with(&want) {
        return Err(format!("format | {shown:?} does not start with {want:?}"));
    }
    Ok(())
}

/// The same for a message that is only a string (`run_test`'s errors).
fn check_located_str(msg: &str, file: &str, text: &str) -> Result<(), String> {
    let Some(rest) = msg.strip_prefix(&format!("{file}:")) else {
        return Err(format!("unlocated {} | {msg:?} does not start with {file:?}", fuzz::shape(msg)));
    };
    let mut parts = rest.splitn(3, ':');
    let line = parts.next().and_then(|l| l.parse::<usize>().ok());
    let col = parts.next().and_then(|c| c.parse::<usize>().ok());
    let (Some(line), Some(col)) = (line, col) else { return Err(format!("unlocated {} | no line and column: {msg:?}", fuzz::shape(msg))) };
    let lines = lines_of(text);
    if line == 0 || line > lines.len() || col == 0 || col > lines[line - 1].chars().count() + 1 {
        return Err(format!("out-of-bounds {} | {line}:{col} is outside the file: {msg}", fuzz::shape(msg)));
    }
    if !parts.next().is_some_and(|m| m.starts_with(' ') && !m.trim().is_empty()) {
        return Err(format!("format | {msg:?}"));
    }
    Ok(())
}

/// The position the generator recorded for `path`, or for its nearest
/// recorded ancestor (as the loader falls back).
fn expected_pos(positions: &HashMap<String, (usize, usize)>, path: &str) -> Option<(usize, usize)> {
    let mut p = path;
    loop {
        if let Some(at) = positions.get(p) {
            return Some(*at);
        }
        p = &p[..p.rfind(['.', '['])?];
    }
}

fn under(path: &str, fault: &str) -> bool {
    path == fault || path.strip_prefix(fault).is_some_and(|r| r.starts_with('.') || r.starts_with('['))
}

/// The generator's oracles: faults rejected at their field, the rest accepted.
fn check_expectation(expect: &Expect, result: &Result<(), LoadError>) -> Result<(), String> {
    match (&expect.fault, result) {
        (None, Ok(())) => Ok(()),
        (None, Err(e)) => Err(format!("rejected-valid {} | input without a fault was rejected: {e}", fuzz::shape(&e.message))),
        (Some(f), Ok(())) => Err(format!("accepted-invalid {} | {} at {} was accepted", f.what, f.what, f.path)),
        (Some(f), Err(e)) => {
            if !under(&e.path, &f.path) {
                return Err(format!("wrong-field {} | {} at {} was reported at {:?}: {e}", f.what, f.what, f.path, e.path));
            }
            let want = expected_pos(&expect.positions, &e.path);
            let got = e.pos.map(|p| (p.line, p.col));
            if want.is_some() && want != got {
                return Err(format!("wrong-position {} | {} at {} written at {:?}, reported at {:?}: {e}", f.what, f.what, f.path, want, got));
            }
            Ok(())
        }
    }
}

/// What the model promises downstream code (ARCHITECTURE.md, model/mod.rs).
fn check_invariants(c: &Cluster) -> Result<(), String> {
    let bad = |m: String| Err(format!("invariant | {m}"));
    let pod_keys: Vec<(&str, &str)> = c.pods.iter().map(|p| (p.namespace.as_str(), p.name.as_str())).collect();
    if !pod_keys.windows(2).all(|w| w[0] < w[1]) {
        return bad("pods not sorted and unique by namespace/name".into());
    }
    let pol_keys: Vec<(&str, &str)> = c.policies.iter().map(|p| (p.namespace.as_str(), p.name.as_str())).collect();
    if !pol_keys.windows(2).all(|w| w[0] < w[1]) {
        return bad("policies not sorted and unique by namespace/name".into());
    }
    for (name, ns) in &c.namespaces {
        if ns.labels.get(NAMESPACE_NAME_LABEL) != Some(name) {
            return bad(format!("namespace {name:?} lacks its {NAMESPACE_NAME_LABEL} label"));
        }
    }
    for p in &c.pods {
        if !c.namespaces.contains_key(&p.namespace) {
            return bad(format!("pod {} in a namespace the cluster lacks", p.key()));
        }
        for f in [Family::IPv4, Family::IPv6] {
            if p.ips.iter().filter(|ip| Family::of(ip) == f).count() > 1 {
                return bad(format!("pod {} has more than one {f} address: {:?}", p.key(), p.ips));
            }
        }
        for cp in p.ports.iter() {
            if cp.port == 0 || cp.name.as_deref().is_some_and(|n| check_port_name(n, "").is_err()) {
                return bad(format!("pod {} has container port {cp:?}", p.key()));
            }
        }
    }
    for n in c.nodes.values() {
        if n.pod_cidrs.iter().any(|c| c.trunc() != *c) {
            return bad(format!("node {} has an unmasked pod CIDR", n.name));
        }
    }
    for pol in &c.policies {
        for rule in pol.ingress.iter().chain(&pol.egress) {
            for peer in &rule.peers {
                if let Peer::IpBlock { cidr, except } = peer {
                    if cidr.trunc() != *cidr {
                        return bad(format!("{}: unmasked cidr {cidr}", pol.key()));
                    }
                    for e in except {
                        if e.trunc() != *e || !cidr.contains(e) || e.prefix_len() <= cidr.prefix_len() {
                            return bad(format!("{}: except {e} not strictly inside {cidr}", pol.key()));
                        }
                    }
                }
            }
            for port in &rule.ports {
                match (&port.port, port.end_port) {
                    (Some(PortRef::Number(0)), _) => return bad(format!("{}: port 0", pol.key())),
                    (Some(PortRef::Number(p)), Some(e)) if e < *p => return bad(format!("{}: endPort {e} < port {p}", pol.key())),
                    (Some(PortRef::Named(_)) | None, Some(_)) => return bad(format!("{}: endPort without a numeric port", pol.key())),
                    (Some(PortRef::Named(n)), _) if check_port_name(n, "").is_err() => return bad(format!("{}: port name {n:?}", pol.key())),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// An accepted cluster must go through every later stage, and the
/// nftables programs must say what the reference says.
fn downstream(c: &Cluster, sources: &Sources) -> Result<(), String> {
    check_invariants(c)?;
    let ir = ir::resolve(c);
    let programs = nft::compile_all(c, &ir);
    for (node, p) in &programs {
        p.validate().map_err(|e| format!("invalid-program | node {node:?}: {e}"))?;
        let _ = p.to_string();
        let _ = nft::json::transaction_to_json(&nft::diff(None, p));
        // The agent's incremental engine, built from the same cluster or
        // brought to it from an empty one object by object (cluster
        // policies included), is the full compile (or says it cannot be).
        let engine = nft::incremental::Incremental::new(c, node);
        if engine.is_exact() && engine.program() != p {
            return Err(format!("incremental | node {node:?}: the engine's program differs from the full compile"));
        }
        let mut stepped = nft::incremental::Incremental::new(&Cluster::default(), node);
        stepped.update_to(c);
        if stepped.is_exact() && stepped.program() != p {
            return Err(format!("incremental | node {node:?}: the engine brought to the cluster change by change differs from the full compile"));
        }
    }
    let _ = lint::lint(c, &ir, sources, &lint::Config::default());
    let g = graph::AllowGraph::build(c, &ir);
    let view = g.view(&graph::render::Filter::default());
    let _ = (view.render_dot(c), view.render_table(c), view.to_json(c));

    // A few flows: pods that take part, a node, and outside addresses.
    let mut ends: Vec<Endpoint> = c.pods.iter().enumerate().filter(|(_, p)| p.takes_part()).map(|(i, _)| Endpoint::Pod(i)).take(4).collect();
    if let Some(n) = c.nodes.values().find(|n| !n.internal_ips.is_empty()) {
        ends.push(Endpoint::Node(n.name.clone()));
    }
    for ip in ["192.0.2.1", "2001:db8::1", "10.244.1.77"] {
        if let Ok(e) = Endpoint::parse(c, ip) {
            ends.push(e);
        }
    }
    let in_pod_cidr = |e: &Endpoint| matches!(e, Endpoint::Ip(ip) if c.nodes.values().any(|n| n.pod_cidrs.iter().any(|p| p.contains(ip))));
    let mut foreign = foreign_cidr_pods(c);
    foreign.extend(shared_address_pods(c));
    // Node addresses a pod or another node also claims (see shared_address_pods).
    let shared_node_ips: Vec<std::net::IpAddr> = c
        .nodes
        .values()
        .flat_map(|n| n.internal_ips.iter().copied())
        .filter(|ip| {
            let owners: Vec<&str> = c.nodes.values().filter(|n| n.internal_ips.contains(ip)).map(|n| n.name.as_str()).collect();
            owners.len() > 1 || c.pods.iter().any(|p| p.ips.contains(ip) && (!p.host_network || p.node.as_deref() != owners.first().copied()))
        })
        .collect();
    for (i, src) in ends.iter().enumerate() {
        for dst in ends.iter().skip(i.saturating_sub(1)).take(3) {
            for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53), (Protocol::Sctp, 65535)] {
                let flow = Flow { src: src.clone(), dst: dst.clone(), protocol, port, family: None };
                let Ok(families) = flow.families(c) else { continue };
                for family in families {
                    let one = Flow { family: Some(family), ..flow.clone() };
                    let v = evaluate(c, &ir, &one).map_err(|e| format!("eval-error | {e} for a flow whose families resolved"))?;
                    let _ = explain::render_text(&explain::report(c, &one, &v));
                    let exempt = |e: &Endpoint| {
                        in_pod_cidr(e)
                            || matches!(e, Endpoint::Pod(p) if foreign.contains(p))
                            || matches!(e, Endpoint::Node(n) if c.nodes[n].internal_ips.iter().any(|ip| shared_node_ips.contains(ip)))
                    };
                    if exempt(src) || exempt(dst) {
                        continue;
                    }
                    if let Some(t) = nft::interp::flow_verdict(c, &|n| programs.get(n), &flow, family) {
                        if t.allowed != v.allowed {
                            return Err(format!(
                                "engine | the nftables interpreter says {} for {} -> {} {port}/{protocol} {family}, the reference says {}",
                                t.allowed,
                                src.display(c),
                                dst.display(c),
                                v.allowed
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Pods with an address inside the pod CIDR of a node they do not run on.
/// That node fails closed for addresses of its CIDR that none of its pods
/// holds, so it drops their traffic where the reference (which knows no
/// pod CIDRs) allows it. Kubernetes does not forbid this (Calico-style IPAM
/// ignores `spec.podCIDRs`); whether netfence should is an open question
/// for compile.rs, so the engine oracle leaves these pods out.
fn foreign_cidr_pods(c: &Cluster) -> Vec<usize> {
    c.pods
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            c.nodes.values().any(|n| Some(n.name.as_str()) != p.node.as_deref() && p.ips.iter().any(|ip| n.pod_cidrs.iter().any(|net| net.contains(ip))))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Pods holding an address another pod holds too. The loader refuses
/// them; the agent's index does not (a live cluster reuses an address
/// before the old pod's deletion reaches the watch), so only the
/// `agent_objects` target meets them. The reference judges pods by
/// identity, the program by address, which then names two pods with
/// different policies: the engine oracle leaves these pods out.
/// The same goes for a pod (not host-network) holding a node's address,
/// and for whatever sits at an address two nodes claim.
fn shared_address_pods(c: &Cluster) -> Vec<usize> {
    let mut holders: HashMap<std::net::IpAddr, Vec<usize>> = HashMap::new();
    for (i, p) in c.pods.iter().enumerate() {
        for ip in &p.ips {
            holders.entry(*ip).or_default().push(i);
        }
    }
    let mut nodes: HashMap<std::net::IpAddr, Vec<&str>> = HashMap::new();
    for n in c.nodes.values() {
        for ip in &n.internal_ips {
            nodes.entry(*ip).or_default().push(&n.name);
        }
    }
    // A host-network pod is its node's address; at another node's, it is nowhere.
    let ambiguous = |ip: &std::net::IpAddr, pods: &[usize]| match nodes.get(ip) {
        None => pods.len() > 1,
        Some(names) => {
            names.len() > 1 || pods.iter().any(|&i| !c.pods[i].host_network || c.pods[i].node.as_deref() != Some(names[0]))
        }
    };
    let mut out: Vec<usize> = holders.into_iter().filter(|(ip, v)| ambiguous(ip, v)).flat_map(|(_, v)| v).collect();
    out.sort_unstable();
    out.dedup();
    out
}

// ------------------------------------------------------ manifests ----

fn exec_manifests(case: &Case) -> Verdict {
    let file = case.path.as_str();
    let text = match decode(file, &case.bytes) {
        Ok(t) => t,
        Err(e) => {
            check_located(&e, file, &String::from_utf8_lossy(&case.bytes))?;
            return Ok(Outcome::Rejected(e.to_string()));
        }
    };
    let mut b = ClusterBuilder::new().keep_sources();
    let r = b.add_text(file, text);
    if let Some(exp) = &case.expect {
        check_expectation(exp, &r)?;
    }
    if let Err(e) = r {
        check_located(&e, file, text)?;
        return Ok(Outcome::Rejected(e.to_string()));
    }
    let (cluster, _notices, sources) = b.finish_with_sources();
    // Same text, same cluster (a sample: loading twice costs).
    if case.bytes.len() % 4 == 0 {
        let again = netfence::model::load::load_str(file, text).map_err(|e| format!("nondeterministic | second load failed: {e}"))?;
        if again != cluster {
            return Err("nondeterministic | the same text loaded twice gave different clusters".into());
        }
    }
    downstream(&cluster, &sources)?;
    Ok(Outcome::Accepted)
}

/// Documents rearranged: wrapped in a `kind: List` (or typed list),
/// unwrapped, duplicated, emptied, re-kinded.
fn mutate_docs(docs: &mut Vec<Value>, rng: &mut Rng) {
    match rng.below(7) {
        0 if !docs.is_empty() => {
            let kind = *rng.pick(&["List", "List", "PodList", "NamespaceList", "NetworkPolicyList", "NodeList", "ConfigMapList"]);
            let items: Vec<Value> = docs.drain(..).collect();
            docs.push(json!({"apiVersion": "v1", "kind": kind, "items": items}));
        }
        1 => {
            let mut out = Vec::new();
            for d in docs.drain(..) {
                match d.get("items").and_then(Value::as_array) {
                    Some(items) => out.extend(items.iter().cloned()),
                    None => out.push(d),
                }
            }
            *docs = out;
        }
        2 if !docs.is_empty() => {
            let i = rng.below(docs.len());
            let d = docs[i].clone();
            docs.insert(i, d);
        }
        3 => {
            let i = rng.below(docs.len() + 1);
            docs.insert(i, if rng.chance(1, 2) { Value::Null } else { fuzz::hostile_scalar(rng) });
        }
        4 if !docs.is_empty() => {
            let i = rng.below(docs.len());
            if let Value::Object(m) = &mut docs[i] {
                let k = *rng.pick(&["Namespace", "Pod", "Node", "NetworkPolicy", "List", "Service", "", "networkpolicy"]);
                m.insert("kind".into(), json!(k));
            }
        }
        5 if !docs.is_empty() => {
            // A List nested in a List.
            let i = rng.below(docs.len());
            let d = docs[i].take();
            docs[i] = json!({"kind": "List", "items": [{"kind": "List", "items": [d]}]});
        }
        _ => {
            let i = rng.below(docs.len().max(1));
            if let Some(d) = docs.get_mut(i) {
                if let Value::Object(m) = d {
                    m.remove(*rng.pick(&["apiVersion", "kind", "metadata", "spec", "status"]));
                }
            }
        }
    }
}

fn random_style(rng: &mut Rng) -> Style {
    *rng.pick(&[Style::Block, Style::Mixed, Style::Mixed, Style::Json])
}

fn gen_manifests(rng: &mut Rng) -> Case {
    let c = corpus();
    let (name, bytes, docs) = rng.pick(&c.manifests);
    let (_, other, _) = rng.pick(&c.manifests);
    let path = format!("fuzz/{}", name.replace('/', "_"));
    let mode = rng.below(10);
    let mut bytes = if mode < 4 {
        bytes.clone()
    } else {
        let mut docs = docs.clone();
        for _ in 0..rng.range(1, 3) {
            if !docs.is_empty() && rng.chance(3, 4) {
                let i = rng.below(docs.len());
                fuzz::mutate_tree(&mut docs[i], &c.pool, rng);
            } else {
                mutate_docs(&mut docs, rng);
            }
        }
        fuzz::emit(&docs, random_style(rng), rng).text.into_bytes()
    };
    let byte_mutations = match mode {
        0..=3 => rng.range(1, 4),
        9 => rng.range(1, 2),
        _ => 0,
    };
    for _ in 0..byte_mutations {
        fuzz::mutate_bytes(&mut bytes, other, rng);
    }
    Case { path, bytes, expect: None }
}

// ---------------------------------------------------------- fields ----

/// A generated manifest set with at most one fault, and what is known
/// about it. Each generator returns a valid value, or (when asked) an
/// invalid one and the description of its fault.
struct FieldGen<'a> {
    rng: &'a mut Rng,
    /// Still to place: the fault (described) goes to the first generator
    /// that draws it.
    fault_left: bool,
    fault: Option<(String, String)>,
}

const VOCAB_KEYS: &[&str] = &["app", "tier", "team", "app.kubernetes.io/name", "example.com/role", "k8s.io/x_y.z"];
const VOCAB_VALUES: &[&str] = &["web", "db", "api", "", "a.b-c_d", "A1"];

impl FieldGen<'_> {
    /// Should this element carry the fault? Decided once per element.
    fn faulty(&mut self, path: &str, what: &str) -> bool {
        if self.fault_left && self.rng.chance(1, 6) {
            self.fault_left = false;
            self.fault = Some((path.to_string(), what.to_string()));
            return true;
        }
        false
    }

    fn name_part(&mut self, max: usize) -> String {
        // [A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?
        let alnum = b"abcxyzABCXYZ0189";
        let mid = b"abcXYZ019-_.";
        let n = self.rng.range(1, max);
        (0..n)
            .map(|i| if i == 0 || i == n - 1 { *self.rng.pick(alnum) as char } else { *self.rng.pick(mid) as char })
            .collect()
    }

    fn dns_label(&mut self, max: usize) -> String {
        let n = self.rng.range(1, max);
        (0..n).map(|i| if i == 0 || i == n - 1 { *self.rng.pick(b"abz09") as char } else { *self.rng.pick(b"abz09-") as char }).collect()
    }

    fn dns_subdomain(&mut self, max: usize) -> String {
        let mut s = self.dns_label(20.min(max));
        while self.rng.chance(1, 3) && s.len() + 2 < max {
            let room = (max - s.len() - 1).min(20);
            let l = self.dns_label(room);
            s = format!("{s}.{l}");
        }
        s
    }

    fn label_key(&mut self, path: &str) -> String {
        if self.faulty(path, "invalid label key") {
            let long = "a".repeat(64);
            let long_prefix = format!("{}/x", "a".repeat(254));
            return self
                .rng
                .pick(&["", "-a", "a-", "a b", "a/b/c", "/a", "a.io/", "Example.com/a", "é", "a\"b", long.as_str(), long_prefix.as_str(), "a_.io/x"])
                .to_string();
        }
        match self.rng.below(4) {
            0 => self.rng.pick(VOCAB_KEYS).to_string(),
            1 => self.name_part(63),
            2 => {
                let prefix = self.dns_subdomain(253);
                let name = self.name_part(63);
                format!("{prefix}/{name}")
            }
            _ => self.name_part(8),
        }
    }

    fn label_value(&mut self, path: &str) -> String {
        if self.faulty(path, "invalid label value") {
            let long = "v".repeat(64);
            return self.rng.pick(&["-a", "a-", "a b", "a/b", "é", "a\"", long.as_str(), ".a", "a\n"]).to_string();
        }
        match self.rng.below(3) {
            0 => self.rng.pick(VOCAB_VALUES).to_string(),
            1 => String::new(),
            _ => self.name_part(63),
        }
    }

    fn labels(&mut self, path: &str) -> Value {
        let mut m = Map::new();
        for _ in 0..self.rng.below(4) {
            let had_fault = self.fault_left;
            let k = self.label_key(path);
            let p = format!("{path}.{k}");
            // A fault in the key is reported at the key's path.
            if self.fault.as_ref().is_some_and(|(fp, w)| fp == path && w.contains("key")) {
                self.fault = Some((p.clone(), "invalid label key".into()));
            }
            let v = self.label_value(&p);
            // A key drawn twice: the faulty entry must be the one that stays.
            if had_fault && !self.fault_left {
                m.insert(k, json!(v));
            } else {
                m.entry(k).or_insert(json!(v));
            }
        }
        Value::Object(m)
    }

    fn selector(&mut self, path: &str) -> Value {
        let mut s = Map::new();
        if self.rng.chance(2, 3) {
            let l = self.labels(&format!("{path}.matchLabels"));
            s.insert("matchLabels".into(), l);
        }
        if self.rng.chance(1, 2) {
            let mut exprs = Vec::new();
            for i in 0..self.rng.range(1, 3) {
                let p = format!("{path}.matchExpressions[{i}]");
                let key = self.label_key(&format!("{p}.key"));
                if self.fault.as_ref().is_some_and(|(fp, _)| *fp == format!("{p}.key")) {
                    self.fault = Some((p.clone(), "invalid label key".into()));
                }
                let mut op = *self.rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
                let mut values: Option<Vec<String>> = match op {
                    "In" | "NotIn" => Some((0..self.rng.range(1, 3)).map(|_| self.label_value(&p)).collect()),
                    _ => self.rng.chance(1, 3).then(Vec::new),
                };
                if self.faulty(&p, "invalid requirement") {
                    match self.rng.below(3) {
                        0 => op = *self.rng.pick(&["in", "Exist", "", "Equals", "NotIn ", "doesnotexist"]),
                        1 if matches!(op, "In" | "NotIn") => values = self.rng.pick(&[None, Some(vec![])]).clone(),
                        _ => {
                            op = *self.rng.pick(&["Exists", "DoesNotExist"]);
                            values = Some(vec!["x".into()]);
                        }
                    }
                }
                let mut r = Map::from_iter([("key".to_string(), json!(key)), ("operator".to_string(), json!(op))]);
                if let Some(v) = values {
                    r.insert("values".into(), json!(v));
                }
                exprs.push(Value::Object(r));
            }
            s.insert("matchExpressions".into(), Value::Array(exprs));
        }
        Value::Object(s)
    }

    fn ip(&mut self, v6: bool) -> String {
        let r = &mut *self.rng;
        if v6 {
            match r.below(3) {
                0 => format!("2001:db8:{:x}::{:x}", r.below(0x10000), r.below(0x10000)),
                1 => format!("fd00::{:x}:{:x}", r.below(0x10000), r.below(0x10000)),
                _ => (0..8).map(|_| format!("{:x}", r.below(0x10000))).collect::<Vec<_>>().join(":"),
            }
        } else {
            format!("{}.{}.{}.{}", r.range(1, 223), r.below(256), r.below(256), r.below(256))
        }
    }

    /// (cidr, v6, prefix) valid, or a fault.
    fn cidr(&mut self, path: &str) -> (String, Option<(bool, ipnet::IpNet)>) {
        if self.faulty(path, "invalid CIDR") {
            let c = self
                .rng
                .pick(&["10.0.0.0/33", "2001:db8::/129", "10.0.0.0/-1", "10.0.0.0", "10.0.0.0/", "10.0.0.0/8/8", "256.0.0.0/8", "fe80::1%eth0/64", "garbage", "", " 10.0.0.0/8", "10.0.0.0/8 ", "10.0.0.0/ 8", "::ffff:10.0.0.0/129"])
                .to_string();
            return (c, None);
        }
        let v6 = self.rng.chance(1, 3);
        let max = if v6 { 128 } else { 32 };
        let any = self.rng.range(0, max);
        let prefix = *self.rng.pick(&[0, max, max / 2, any, 8.min(max), max - 1]);
        let text = if self.rng.chance(1, 10) {
            if v6 { "::/0".to_string() } else { "0.0.0.0/0".to_string() }
        } else {
            let ip = self.ip(v6);
            format!("{ip}/{prefix}")
        };
        let net: ipnet::IpNet = text.parse().unwrap();
        (text, Some((v6, net.trunc())))
    }

    fn peer(&mut self, path: &str) -> Value {
        if self.faulty(path, "invalid peer") {
            return if self.rng.chance(1, 2) { json!({}) } else { json!({"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}) };
        }
        if self.rng.chance(1, 3) {
            let (cidr, net) = self.cidr(&format!("{path}.ipBlock.cidr"));
            let mut b = Map::from_iter([("cidr".to_string(), json!(cidr))]);
            if let Some((v6, net)) = net {
                let max = if v6 { 128 } else { 32 };
                let mut except = Vec::new();
                for j in 0..self.rng.below(3) {
                    let ep = format!("{path}.ipBlock.except[{j}]");
                    if self.faulty(&ep, "invalid except") {
                        let bad = match self.rng.below(3) {
                            0 => net.to_string(),
                            1 => if v6 { "10.0.0.0/8".into() } else { "2001:db8::/64".into() },
                            _ => "garbage/8".into(),
                        };
                        except.push(json!(bad));
                        continue;
                    }
                    if net.prefix_len() >= max {
                        break;
                    }
                    let len = self.rng.range(net.prefix_len() as usize + 1, max as usize) as u8;
                    let sub = net.subnets(len).ok().and_then(|mut s| s.next());
                    if let Some(s) = sub {
                        except.push(json!(s.to_string()));
                    }
                }
                if !except.is_empty() {
                    b.insert("except".into(), Value::Array(except));
                }
            }
            return json!({"ipBlock": b});
        }
        let mut p = Map::new();
        let both = self.rng.below(3);
        if both != 1 {
            let s = self.selector(&format!("{path}.podSelector"));
            p.insert("podSelector".into(), s);
        }
        if both != 0 {
            let s = self.selector(&format!("{path}.namespaceSelector"));
            p.insert("namespaceSelector".into(), s);
        }
        Value::Object(p)
    }

    fn port_name(&mut self) -> String {
        self.rng.pick(&["http", "dns", "serve-80", "a1", "metrics", "abcdefghijklmno"]).to_string()
    }

    fn policy_port(&mut self, path: &str) -> Value {
        let mut p = Map::new();
        if self.faulty(path, "invalid port") {
            match self.rng.below(6) {
                0 => p.insert("port".into(), json!(*self.rng.pick(&[0i64, 65536, -1, 2147483648, 99999999999]))),
                1 => p.insert("port".into(), json!(*self.rng.pick(&["HTTP", "abcdefghijklmnop", "a--b", "-a", "80", "", "a_b"]))),
                2 => {
                    p.insert("port".into(), json!(90));
                    p.insert("endPort".into(), json!(*self.rng.pick(&[80, 65536, 0])))
                }
                3 => {
                    p.insert("port".into(), json!("http"));
                    p.insert("endPort".into(), json!(90))
                }
                4 => p.insert("endPort".into(), json!(90)),
                _ => p.insert("protocol".into(), json!(*self.rng.pick(&["tcp", "ICMP", "", "TCP ", "ALL"]))),
            };
            return Value::Object(p);
        }
        if self.rng.chance(2, 3) {
            p.insert("protocol".into(), json!(*self.rng.pick(&["TCP", "UDP", "SCTP"])));
        }
        match self.rng.below(4) {
            0 => {}
            1 => {
                let n = self.port_name();
                p.insert("port".into(), json!(n));
            }
            2 => {
                let port = *self.rng.pick(&[1u32, 80, 443, 65535, 1024]);
                p.insert("port".into(), json!(port));
                let end = self.rng.range(port as usize, 65535);
                p.insert("endPort".into(), json!(end));
            }
            _ => {
                let port = *self.rng.pick(&[1u32, 53, 80, 8080, 65535]);
                p.insert("port".into(), json!(port));
            }
        }
        Value::Object(p)
    }

    fn rule(&mut self, path: &str, peer_field: &str) -> Value {
        let mut r = Map::new();
        if self.rng.chance(2, 3) {
            let peers: Vec<Value> = (0..self.rng.range(0, 3)).map(|i| self.peer(&format!("{path}.{peer_field}[{i}]"))).collect();
            r.insert(peer_field.into(), Value::Array(peers));
        }
        if self.rng.chance(2, 3) {
            let ports: Vec<Value> = (0..self.rng.range(0, 3)).map(|i| self.policy_port(&format!("{path}.ports[{i}]"))).collect();
            r.insert("ports".into(), Value::Array(ports));
        }
        Value::Object(r)
    }

    fn name(&mut self, path: &str, label_only: bool) -> String {
        if self.faulty(path, "invalid name") {
            let long = "n".repeat(254);
            let long_label = "n".repeat(64);
            let pick = *self.rng.pick(&["Upper", "a_b", "a/b", "a\"b", "a b", "-a", "a-", "a..b", "é", long.as_str(), long_label.as_str(), "a.b"]);
            // A dot is fine in a subdomain, not in a namespace name.
            if pick == "a.b" && !label_only || pick == long_label && !label_only {
                return "Upper".into();
            }
            return pick.to_string();
        }
        if label_only {
            self.dns_label(63)
        } else {
            self.dns_subdomain(253)
        }
    }

    /// `labels_read`: netfence reads (and so validates) the labels of
    /// namespaces, nodes and pods, not those of policies.
    fn metadata(&mut self, name: &str, namespace: Option<&str>, labels_read: bool) -> Value {
        let mut m = Map::from_iter([("name".to_string(), json!(name))]);
        if let Some(ns) = namespace {
            m.insert("namespace".into(), json!(ns));
        }
        let fault_left = self.fault_left;
        self.fault_left = fault_left && labels_read;
        let l = self.labels("metadata.labels");
        self.fault_left &= fault_left;
        m.insert("labels".into(), l);
        Value::Object(m)
    }
}

/// One manifest set: namespaces, a node, pods and a policy, each field
/// from the generators above, at most one of them faulty.
fn gen_fields(rng: &mut Rng) -> Case {
    let want_fault = rng.chance(2, 3);
    let mut g = FieldGen { rng, fault_left: want_fault, fault: None };
    let mut docs: Vec<Value> = Vec::new();
    // (document index, fault path) of the fault, once placed.
    let mut fault_doc: Option<(usize, String, String)> = None;
    let mut take_fault = |g: &mut FieldGen, doc: usize| {
        if let Some((p, w)) = g.fault.take() {
            fault_doc = Some((doc, p, w));
        }
    };

    let namespaces: Vec<String> = (0..g.rng.range(1, 3)).map(|i| format!("ns{i}")).collect();
    for ns in &namespaces {
        let n = if g.rng.chance(1, 3) { g.name("metadata.name", true) } else { ns.clone() };
        let meta = g.metadata(&n, None, true);
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}));
        take_fault(&mut g, docs.len() - 1);
    }

    // A node with addresses and pod CIDRs.
    let node = g.name("metadata.name", false);
    let mut addresses = vec![json!({"type": "InternalIP", "address": g.ip(false)})];
    if g.rng.chance(1, 3) {
        addresses.push(json!({"type": "InternalIP", "address": g.ip(true)}));
    }
    if g.faulty("status.addresses[0].address", "invalid node address") {
        addresses[0] = json!({"type": "InternalIP", "address": *g.rng.pick(&["10.0.0.300", "", "fe80::1%eth0", "node-1"])});
    }
    let mut cidrs = Vec::new();
    for i in 0..g.rng.range(0, 2) {
        let (c, _) = g.cidr(&format!("spec.podCIDRs[{i}]"));
        cidrs.push(json!(c));
    }
    let meta = g.metadata(&node, None, true);
    docs.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": {"podCIDRs": cidrs}, "status": {"addresses": addresses}}));
    take_fault(&mut g, docs.len() - 1);

    // Pods.
    for i in 0..g.rng.range(1, 4) {
        let ns = g.rng.pick(&namespaces).clone();
        let name = if g.rng.chance(1, 3) { g.name("metadata.name", false) } else { format!("pod-{i}") };
        let meta = g.metadata(&name, Some(&ns), true);
        let mut ports = Vec::new();
        for p in 0..g.rng.range(0, 3) {
            let path = format!("spec.containers[0].ports[{p}]");
            let mut cp = Map::from_iter([("containerPort".to_string(), json!(*g.rng.pick(&[1, 80, 53, 8080, 65535])))]);
            if g.rng.chance(1, 2) {
                let n = g.port_name();
                cp.insert("name".into(), json!(n));
            }
            if g.rng.chance(1, 2) {
                cp.insert("protocol".into(), json!(*g.rng.pick(&["TCP", "UDP", "SCTP"])));
            }
            if g.faulty(&path, "invalid container port") {
                match g.rng.below(3) {
                    0 => cp.insert("containerPort".into(), json!(*g.rng.pick(&[0, 65536, -80]))),
                    1 => cp.insert("name".into(), json!(*g.rng.pick(&["HTTP", "a--b", "80", "abcdefghijklmnop"]))),
                    _ => cp.insert("protocol".into(), json!(*g.rng.pick(&["ICMP", "tcp"]))),
                };
            }
            ports.push(Value::Object(cp));
        }
        let v4 = format!("10.244.{}.{}", i, g.rng.range(2, 250));
        let mut ips = vec![json!({"ip": v4})];
        if g.rng.chance(1, 3) {
            ips.push(json!({"ip": format!("fd00::{i}:{:x}", g.rng.range(2, 250))}));
        }
        if g.faulty("status.podIPs", "invalid pod IPs") {
            match g.rng.below(3) {
                0 => ips[0] = json!({"ip": *g.rng.pick(&["10.244.0.300", "", "pod", "fe80::1%eth0"])}),
                1 => ips.push(json!({"ip": format!("10.245.{i}.9")})),
                _ => {
                    ips.push(json!({"ip": "fd00::1:1"}));
                    ips.push(json!({"ip": "fd00::1:2"}));
                }
            }
        }
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIPs": ips}});
        if g.rng.chance(1, 2) {
            pod["status"]["podIP"] = pod["status"]["podIPs"][0]["ip"].clone();
        }
        docs.push(pod);
        take_fault(&mut g, docs.len() - 1);
    }

    // The policy.
    let ns = g.rng.pick(&namespaces).clone();
    let name = g.name("metadata.name", false);
    let meta = g.metadata(&name, Some(&ns), false);
    let mut spec = Map::new();
    let ps = g.selector("spec.podSelector");
    spec.insert("podSelector".into(), ps);
    if g.rng.chance(3, 4) {
        let rules: Vec<Value> = (0..g.rng.range(0, 3)).map(|i| g.rule(&format!("spec.ingress[{i}]"), "from")).collect();
        spec.insert("ingress".into(), Value::Array(rules));
    }
    if g.rng.chance(1, 2) {
        let rules: Vec<Value> = (0..g.rng.range(0, 3)).map(|i| g.rule(&format!("spec.egress[{i}]"), "to")).collect();
        spec.insert("egress".into(), Value::Array(rules));
    }
    if g.rng.chance(1, 2) {
        let mut types = vec![json!(*g.rng.pick(&["Ingress", "Egress"]))];
        if g.rng.chance(1, 2) {
            types.push(json!("Egress"));
        }
        if g.faulty("spec.policyTypes[0]", "invalid policy type") {
            types[0] = json!(*g.rng.pick(&["ingress", "Both", ""]));
        }
        spec.insert("policyTypes".into(), Value::Array(types));
    }
    docs.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}));
    take_fault(&mut g, docs.len() - 1);

    // Wrap everything in a List sometimes: positions then come through the
    // item's sub-document.
    let rng = g.rng;
    let wrap = rng.chance(1, 4);
    let emitted_docs = if wrap { vec![json!({"apiVersion": "v1", "kind": "List", "items": docs})] } else { docs };
    let emitted = emit_with_positions(&emitted_docs, wrap, rng);
    let fault = fault_doc.as_ref().map(|(_, p, w)| Fault { path: p.clone(), what: w.clone() });
    let positions = fault_doc.as_ref().map(|(d, _, _)| emitted.1[*d].clone()).unwrap_or_default();
    Case { path: "fuzz/fields.yaml".into(), bytes: emitted.0.into_bytes(), expect: Some(Expect { positions, fault }) }
}

/// Block-style YAML and, per object, where its fields start (for a List,
/// the paths of each item re-rooted at the item, as errors name them).
fn emit_with_positions(docs: &[Value], wrapped: bool, rng: &mut Rng) -> (String, Vec<HashMap<String, (usize, usize)>>) {
    let mut text = String::new();
    let mut per_doc = Vec::new();
    for d in docs {
        let e = fuzz::emit(std::slice::from_ref(d), Style::Block, rng);
        if !text.is_empty() && !e.text.starts_with("---") {
            text.push_str("---\n");
        }
        let offset = text.matches('\n').count();
        let shifted: HashMap<String, (usize, usize)> = e.positions.into_iter().map(|(k, (l, c))| (k, (l + offset, c))).collect();
        text.push_str(&e.text);
        if !wrapped {
            per_doc.push(shifted);
            continue;
        }
        for i in 0..d.get("items").and_then(Value::as_array).map_or(0, Vec::len) {
            let prefix = format!("items[{i}]");
            let item = shifted
                .iter()
                .filter_map(|(k, v)| {
                    let rest = k.strip_prefix(&prefix)?;
                    let rest = match rest.strip_prefix('.') {
                        Some(r) => r,
                        None if rest.is_empty() || rest.starts_with('[') => rest,
                        None => return None, // items[1] vs items[10]
                    };
                    Some((rest.to_string(), *v))
                })
                .collect();
            per_doc.push(item);
        }
    }
    (text, per_doc)
}

// ---------------------------------------------------- policy tests ----

/// A copy of the corpus the policy tests resolve their relative paths in,
/// so no mutated path can reach outside it.
fn sandbox() -> &'static PathBuf {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let dir = Config::from_env().out.join("sandbox");
        let _ = std::fs::remove_dir_all(&dir);
        let c = corpus();
        let mut files: Vec<&String> = c.tests.iter().map(|t| &t.0).chain(c.manifests.iter().map(|m| &m.0)).collect();
        let mut extra = Vec::new();
        files_under("fixtures/policies", &mut extra);
        files.extend(extra.iter());
        for f in files {
            let to = dir.join(f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(Path::new(ROOT).join(f), &to).unwrap();
        }
        dir
    })
}

/// Relative paths a test may name, and only those inside the sandbox.
fn stays_inside(test_rel: &str, text: &str) -> bool {
    let Ok(docs) = netfence::yaml::parse(text) else { return true };
    let Some(doc) = docs.first() else { return true };
    let mut named: Vec<&str> = Vec::new();
    for k in ["cluster", "resources"] {
        match doc.value.get(k) {
            Some(Value::String(s)) => named.push(s),
            Some(Value::Array(a)) => named.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    let base = Path::new(test_rel).parent().unwrap_or(Path::new(""));
    named.iter().all(|p| {
        let mut depth: i64 = base.components().count() as i64;
        if Path::new(p).is_absolute() {
            return false;
        }
        for c in Path::new(p).components() {
            match c {
                std::path::Component::ParentDir => depth -= 1,
                std::path::Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return false;
            }
        }
        // The sandbox root holds every test and fixture: a test naming it
        // loads all of them, which is slow rather than wrong.
        depth >= 1
    })
}

fn exec_policy_test(case: &Case) -> Verdict {
    let dir = sandbox();
    let path = dir.join(&case.path);
    let file = path.display().to_string();
    let text = match decode(&file, &case.bytes) {
        Ok(t) => t,
        Err(e) => {
            check_located(&e, &file, &String::from_utf8_lossy(&case.bytes))?;
            return Ok(Outcome::Rejected(e.to_string()));
        }
    };
    if !stays_inside(&case.path, text) {
        return Ok(Outcome::Skipped("names a path outside the corpus"));
    }
    let test = match PolicyTest::from_text(&path, text) {
        Ok(t) => t,
        Err(e) => {
            // The error may be in a manifest the test names.
            let other = if e.file == file { text.to_string() } else { std::fs::read_to_string(&e.file).unwrap_or_default() };
            let at = if e.file == file { file.as_str() } else { e.file.as_str() };
            if e.pos.is_none() && e.path.is_empty() && e.message.starts_with("cannot read") {
                // An I/O error about a file the test names: no text to point into.
                return Ok(Outcome::Rejected(e.to_string()));
            }
            check_located(&e, at, &other)?;
            return Ok(Outcome::Rejected(e.to_string()));
        }
    };
    let ir = ir::resolve(&test.cluster);
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(InterpBackend)];
    match netfence::policytest::run_test(&test, &ir, &mut backends) {
        Err(msg) => {
            check_located_str(&msg, &file, text)?;
            Ok(Outcome::Rejected(msg))
        }
        Ok(r) => {
            if let Some(f) = r.failures.iter().find(|f| f.kind == "engine") {
                // See foreign_cidr_pods: a known disagreement, not a new one.
                if foreign_cidr_pods(&test.cluster).is_empty() && shared_address_pods(&test.cluster).is_empty() {
                    return Err(format!("engine | {}", f.message));
                }
            }
            let _ = netfence::policytest::render_text(std::slice::from_ref(&r), true);
            let _ = serde_json::to_string(&r).map_err(|e| format!("json | {e}"))?;
            check_invariants(&test.cluster)?;
            Ok(Outcome::Accepted)
        }
    }
}

/// Mutations that know the test format: endpoints, matrices, paths.
fn mutate_test(doc: &mut Value, rng: &mut Rng) {
    let c = corpus();
    let endpoint = |rng: &mut Rng| -> String {
        match rng.below(4) {
            0 | 1 => rng.pick(&c.endpoints).clone(),
            2 => rng.pick(&["node/", "node/node-1", "x/", "/a", "a/b/c", "", "10.0.0.300", "::1", "0.0.0.0", "x/a ", "X/A", "192.0.2.1"]).to_string(),
            _ => format!("{}/{}", rng.pick(&["x", "y", "z", "default"]), rng.pick(&["a", "b", "c", "zz"])),
        }
    };
    let Some(expect) = doc.get_mut("expect").and_then(Value::as_array_mut) else { return };
    if expect.is_empty() {
        return;
    }
    let i = rng.below(expect.len());
    let e = &mut expect[i];
    if let Some(Value::String(m)) = e.get_mut("table").and_then(|t| t.get_mut("matrix")) {
        let mut lines: Vec<String> = m.lines().map(String::from).collect();
        match rng.below(5) {
            0 if !lines.is_empty() => {
                let l = rng.below(lines.len());
                let mut cells: Vec<String> = lines[l].split_whitespace().map(String::from).collect();
                if !cells.is_empty() {
                    let k = rng.below(cells.len());
                    cells[k] = rng.pick(&[".", "X", "?", "x", "!", "", "..", "O"]).to_string();
                }
                lines[l] = cells.join("  ");
            }
            1 if !lines.is_empty() => {
                let l = rng.below(lines.len());
                lines.remove(l);
            }
            2 if !lines.is_empty() => {
                let l = rng.below(lines.len());
                let mut cells: Vec<String> = lines[l].split_whitespace().map(String::from).collect();
                if !cells.is_empty() {
                    cells[0] = endpoint(rng);
                }
                lines[l] = cells.join(" ");
            }
            3 => lines.push(format!("{} . X ?", endpoint(rng))),
            _ => {
                let l = rng.below(lines.len().max(1));
                lines.insert(l, String::new());
            }
        }
        *m = lines.join("\n") + "\n";
        return;
    }
    if let Value::Object(o) = e {
        match rng.below(5) {
            0 => {
                o.insert((*rng.pick(&["from", "to"])).into(), json!(endpoint(rng)));
            }
            1 => {
                o.insert("family".into(), json!(*rng.pick(&["IPv4", "IPv6", "ipv4", "IPv5"])));
            }
            2 => {
                o.insert("protocol".into(), json!(*rng.pick(&["TCP", "UDP", "SCTP", "tcp", "ICMP"])));
            }
            3 => {
                o.insert("verdict".into(), json!(*rng.pick(&["allow", "deny", "Allow", "drop"])));
            }
            _ => {
                o.insert("port".into(), fuzz::hostile_scalar(rng));
            }
        }
    }
}

fn gen_policy_test(rng: &mut Rng) -> Case {
    let c = corpus();
    let (name, bytes, doc) = rng.pick(&c.tests);
    let (_, other, _) = rng.pick(&c.tests);
    let mode = rng.below(10);
    let mut bytes = if mode < 4 {
        bytes.clone()
    } else {
        let mut doc = doc.clone();
        for _ in 0..rng.range(1, 3) {
            match rng.below(4) {
                0 | 1 => mutate_test(&mut doc, rng),
                2 => fuzz::mutate_tree(&mut doc, &c.pool, rng),
                _ => {
                    // Point `cluster`/`resources` at other corpus files, folders or nothing.
                    let to = rng.pick(&c.manifests).0.clone();
                    let depth = Path::new(name).components().count() - 1;
                    let rel = format!("{}{}", "../".repeat(depth), to);
                    let target = *rng.pick(&[rel.as_str(), "missing.yaml", ".", "../fixtures/clusters", ""]);
                    if let Value::Object(o) = &mut doc {
                        let k = *rng.pick(&["cluster", "resources"]);
                        o.insert(k.into(), if k == "resources" { json!([target]) } else { json!(target) });
                    }
                }
            }
        }
        let mut docs = vec![doc];
        if rng.chance(1, 20) {
            docs.push(json!({"name": "second"}));
        }
        fuzz::emit(&docs, random_style(rng), rng).text.into_bytes()
    };
    let n = match mode {
        0..=3 => rng.range(1, 3),
        9 => 1,
        _ => 0,
    };
    for _ in 0..n {
        fuzz::mutate_bytes(&mut bytes, other, rng);
    }
    Case { path: name.clone(), bytes, expect: None }
}

// --------------------------------------------------- agent objects ----

/// A path into `v` names an existing field, or a missing field of an
/// existing object; never an index past a list's end or a key of a scalar.
fn path_names_a_field(v: &Value, path: &str) -> bool {
    let mut cur = Some(v);
    let mut rest = path;
    let mut missing = 0;
    while !rest.is_empty() {
        let (seg, tail) = if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            (&rest[..end + 2.min(rest.len() - end)], r.get(end + 1..).unwrap_or(""))
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            (&r[..end], &r[end..])
        };
        let mut tail = tail;
        cur = match (cur, seg.strip_prefix('[')) {
            (Some(Value::Array(a)), Some(idx)) => {
                let i: usize = idx.trim_end_matches(']').parse().unwrap_or(usize::MAX);
                if i >= a.len() {
                    return false;
                }
                a.get(i)
            }
            (Some(Value::Object(m)), None) => {
                // Keys may hold dots (`kubernetes.io/metadata.name`): the
                // longest key the path continues from.
                let r = rest.strip_prefix('.').unwrap_or(rest);
                match m.keys().filter(|k| r.strip_prefix(k.as_str()).is_some_and(|t| t.is_empty() || t.starts_with(['.', '[']))).max_by_key(|k| k.len()) {
                    Some(k) => {
                        tail = &r[k.len()..];
                        m.get(k)
                    }
                    None => None,
                }
            }
            (None, None) => None,
            (Some(Value::Null), None) => None,
            _ => return false,
        };
        if cur.is_none() {
            missing += 1;
        }
        rest = tail;
    }
    missing <= 2
}

fn typed<K: serde::de::DeserializeOwned>(v: &Value) -> Result<K, String> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| format!("decode {}: {}", e.path(), e.inner()))
}

/// One object through validation and the index, the way a watcher would:
/// `Ok(None)` accepted, `Ok(Some(why))` refused.
fn agent_apply(ix: &mut Index, v: &Value) -> Result<Option<String>, String> {
    fn one<K: Watched>(ix: &mut Index, v: &Value) -> Result<Option<String>, String> {
        let obj: K = match typed(v) {
            Ok(o) => o,
            // kube's decoder would refuse it before the index sees it.
            Err(e) => return Ok(Some(e)),
        };
        let refused = match obj.to_entry() {
            Ok(_) => None,
            Err(e) if e.path.is_empty() || !path_names_a_field(v, &e.path) => {
                return Err(format!("unlocated {} | {} rejected at {:?}, which names no field of the object: {}", fuzz::shape(&e.message), K::KIND, e.path, e.message));
            }
            Err(e) => Some(format!("{}: {e}", K::KIND)),
        };
        // A missed change is a missed sync; a spurious one (a namespace that
        // the snapshot already implied) only costs a sync.
        let before = ix.snapshot();
        let changed = ix.apply(&obj);
        if !changed && ix.snapshot() != before {
            return Err(format!("index | apply of a {} said unchanged, the snapshot changed", K::KIND));
        }
        Ok(refused)
    }
    match v.get("kind").and_then(Value::as_str) {
        Some("Namespace") => one::<K8sNamespace>(ix, v),
        Some("Node") => one::<K8sNode>(ix, v),
        Some("Pod") => one::<K8sPod>(ix, v),
        Some("NetworkPolicy") => one::<NetworkPolicy>(ix, v),
        // A watcher of one kind decodes whatever arrives as that kind.
        _ => Ok(one::<K8sPod>(ix, v)?.or(one::<NetworkPolicy>(ix, v)?)),
    }
}

fn exec_agent(case: &Case) -> Verdict {
    let Ok(Value::Array(objects)) = serde_json::from_slice::<Value>(&case.bytes) else {
        return Ok(Outcome::Skipped("not a JSON list (the watcher's decoder refuses it)"));
    };
    let mut ix = Index::default();
    let mut refused = Vec::new();
    for o in &objects {
        refused.extend(agent_apply(&mut ix, o)?);
    }
    // A relist of the pods as they are now.
    let pods: Vec<K8sPod> = objects.iter().filter(|o| o["kind"] == "Pod").filter_map(|o| typed(o).ok()).collect();
    ix.reset(&pods);
    let snap = ix.snapshot();
    downstream(&snap, &Sources::default())?;
    Ok(match refused.first() {
        None => Outcome::Accepted,
        Some(why) => Outcome::Rejected(why.clone()),
    })
}

fn gen_agent(rng: &mut Rng) -> Case {
    let c = corpus();
    let mut objects: Vec<Value> = (0..rng.range(1, 4)).map(|_| rng.pick(&c.objects).clone()).collect();
    for _ in 0..rng.range(1, 3) {
        let i = rng.below(objects.len());
        fuzz::mutate_tree(&mut objects[i], &c.pool, rng);
    }
    let mut bytes = serde_json::to_vec_pretty(&objects).unwrap();
    if rng.chance(1, 4) {
        fuzz::mutate_bytes(&mut bytes, &[], rng);
    }
    Case { path: "agent/events.json".into(), bytes, expect: None }
}

// ------------------------------------------------------ hostile ----

fn hostile_cases() -> Vec<(&'static str, Case)> {
    let m = |name: &str, text: String| ("manifests", Case { path: format!("fuzz/{name}.yaml"), bytes: text.into_bytes(), expect: None });
    let mut v = Vec::new();
    for (levels, fanout) in [(3, 10), (6, 10), (9, 10), (30, 2), (60, 2)] {
        v.push(m(&format!("alias-bomb-{levels}x{fanout}"), fuzz::alias_bomb(levels, fanout, false)));
        v.push(m(&format!("alias-bomb-map-{levels}x{fanout}"), fuzz::alias_bomb(levels, fanout, true)));
    }
    // An alias bomb used where a field is read.
    let mut b = fuzz::alias_bomb(9, 10, false);
    b = b.replace("metadata: {name: bomb}\n", "");
    b.push_str("metadata:\n  name: bomb\n  labels: *l9\n");
    v.push(m("alias-bomb-in-labels", b));
    for depth in [100, 255, 256, 257, 1000, 10_000, 100_000] {
        for kind in 0..3 {
            v.push(m(&format!("deep-{depth}-{kind}"), fuzz::deep_nesting(depth, kind)));
        }
    }
    // Lists of Lists.
    let mut nested = "apiVersion: v1\nkind: Namespace\nmetadata: {name: inner}\n".to_string();
    for _ in 0..150 {
        let body: String = nested.lines().map(|l| format!("  {l}\n")).collect();
        nested = format!("kind: List\nitems:\n-\n{body}");
    }
    v.push(m("nested-lists-150", nested));
    // Big but honest inputs must stay fast: kubectl's output of a large cluster is one List.
    let mut list = String::from("apiVersion: v1\nkind: List\nitems:\n");
    // 5,000 pods: before positions were shared this took minutes (O(n²)).
    for i in 0..5_000 {
        list.push_str(&format!("- apiVersion: v1\n  kind: Pod\n  metadata: {{name: p{i}, namespace: ns{}, labels: {{app: a{}}}}}\n  status: {{podIP: 10.{}.{}.{}}}\n", i % 50, i % 7, i / 65536, (i / 256) % 256, i % 256));
    }
    v.push(m("list-5000-pods", list));
    let docs: String = (0..20_000).map(|i| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: n{i}}}\n")).collect();
    v.push(m("documents-20000", docs));
    let keys: String = (0..100_000).map(|i| format!("  k{i}: v\n")).collect();
    v.push(m("labels-100000", format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: many\n  labels:\n{keys}")));
    v.push(m("long-scalar", format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{}\"}}\n", "n".repeat(5_000_000))));
    v.push(m("long-key", format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n{}: 1\n", "k".repeat(1_000_000))));
    v.push(m("duplicate-kind", "apiVersion: v1\nkind: Namespace\nkind: Pod\nmetadata: {name: x}\nstatus: {podIP: 10.0.0.1}\n".into()));
    v.push(m("duplicate-name", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  name: y\n".into()));
    v.push(m("duplicate-in-flow", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, name: y}\n".into()));
    v.push(m("nul", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x\0}\n".into()));
    v.push(m("bom", "\u{feff}apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n".into()));
    v.push(m("crlf", "apiVersion: v1\r\nkind: Namespace\r\nmetadata:\r\n  name: x\r\n".into()));
    v.push(m("tab-indent", "apiVersion: v1\nkind: Namespace\nmetadata:\n\tname: x\n".into()));
    v.push(m("merge-key", "apiVersion: v1\nkind: Namespace\nbase: &b {name: x}\nmetadata:\n  <<: *b\n".into()));
    v.push(m("unknown-alias", "apiVersion: v1\nkind: Namespace\nmetadata: *nope\n".into()));
    v.push(m("alias-as-key", "apiVersion: v1\nkind: Namespace\nk: &k name\nmetadata: {*k : x}\n".into()));
    v.push(m("empty", String::new()));
    v.push(m("only-separators", "---\n---\n...\n---\n".into()));
    v.push(m("scalar-doc", "just a string\n".into()));
    v.push(m("sequence-doc", "- a\n- b\n".into()));
    v.push(m("tags", "!!map {apiVersion: !!str v1, kind: !Namespace Namespace, metadata: !!map {name: !!binary eA==}}\n".into()));
    v.push(m("directives", "%YAML 1.2\n%TAG ! tag:x,2000:\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n".into()));
    let mut bad_utf8 = b"apiVersion: v1\nkind: Namespace\nmetadata: {name: x\xff\xfe}\n".to_vec();
    v.push(("manifests", Case { path: "fuzz/bad-utf8.yaml".into(), bytes: std::mem::take(&mut bad_utf8), expect: None }));
    // The policy test format.
    let t = |name: &str, text: String| ("policy_tests", Case { path: format!("policy-tests/basics/{name}.yaml"), bytes: text.into_bytes(), expect: None });
    let head = "name: t\ncluster: ../../fixtures/clusters/standard.yaml\n";
    v.push(t("two-docs", format!("{head}expect: [{{from: x/a, to: x/b, port: 80, verdict: allow}}]\n---\nname: u\n")));
    v.push(t("no-docs", "# nothing\n".into()));
    v.push(t("duplicate-expect", format!("{head}expect: [{{from: x/a, to: x/b, port: 80, verdict: allow}}]\nexpect: [{{from: x/a, to: x/b, port: 80, verdict: deny}}]\n")));
    v.push(t("matrix-quoted", format!("{head}expect:\n- table: {{port: 80, matrix: \"-  x/a x/b\\nx/a . .\\nx/zz . .\\n\"}}\n")));
    v.push(t("matrix-folded", format!("{head}expect:\n- table:\n    port: 80\n    matrix: >\n      - x/a x/b\n\n      x/a . .\n\n      x/q . X\n")));
    v.push(t("matrix-bad-column", format!("{head}expect:\n- table:\n    port: 80\n    matrix: |\n      -    x/a  x/nope\n      x/a  .    .\n")));
    v.push(t("matrix-no-family", format!("name: t\ncluster: ../../fixtures/clusters/dualstack.yaml\nexpect:\n- table:\n    port: 80\n    family: IPv6\n    matrix: |\n      -    192.0.2.1\n      192.0.2.2  .\n")));
    v.push(t("flow-missing-family", format!("{head}expect:\n- {{from: x/a, to: x/b, port: 80, family: IPv6, verdict: allow}}\n")));
    v.push(t("deep-objects", format!("{head}objects:\n{}x\nexpect: [{{from: x/a, to: x/b, port: 80, verdict: allow}}]\n", "- ".repeat(50_000))));
    v.push(t("alias-bomb-objects", format!("{head}{}\nexpect: *l9\n", fuzz::alias_bomb(9, 10, false).lines().skip(3).collect::<Vec<_>>().join("\n"))));
    v
}

// ------------------------------------------------------- runners ----

fn exec_for(target: &str) -> fuzz::Exec {
    match target {
        "manifests" | "fields" => Arc::new(exec_manifests),
        "policy_tests" => Arc::new(exec_policy_test),
        "agent_objects" => Arc::new(exec_agent),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// NETFENCE_FUZZ_REPLAY: `Some(ran)` when a replay was asked for (and run
/// if it is this target's).
fn replay(target: &str, cfg: &Config) -> Option<()> {
    let file = cfg.replay.as_ref()?;
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("NETFENCE_FUZZ_REPLAY={}: {e}", file.display()));
    let (t, path, bytes) = fuzz::parse_saved(&bytes).unwrap_or_else(|| ("manifests".into(), file.display().to_string(), bytes));
    let t = if t == "fields" { "manifests".to_string() } else { t };
    if t != target {
        return Some(());
    }
    fuzz::install_panic_hook();
    let case = Case { path, bytes, expect: None };
    let exec = exec_for(&t);
    let r = std::thread::Builder::new().name("fuzz-replay".into()).spawn(move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec(&case))) {
        Ok(r) => r,
        Err(_) => Err("panic (message above)".into()),
    });
    let r = r.unwrap().join().unwrap();
    eprintln!("replay {} as {t}: {r:?}", file.display());
    assert!(r.is_ok(), "replay failed: {r:?}");
    Some(())
}

fn fuzz_target(target: &'static str, gen: fuzz::Gen) {
    let cfg = Config::from_env();
    if replay(target, &cfg).is_some() {
        return;
    }
    let exec = exec_for(if target == "fields" { "manifests" } else { target });
    let mut stats = fuzz::run(target, &cfg, gen, exec.clone());
    let report = fuzz::save_failures(target, &cfg, &exec, &mut stats);
    let summary = stats.summary(target, cfg.seed);
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{summary}\n").as_bytes());
    if std::env::var_os("NETFENCE_FUZZ_KINDS").is_some() {
        for (k, n) in &stats.kinds {
            eprintln!("  {n:7} {k}");
        }
    }
    assert!(stats.cases > 0, "{summary}");
    assert!(stats.failures.is_empty(), "{summary}{report}");
}

#[test]
fn manifests() {
    fuzz_target("manifests", Arc::new(gen_manifests));
}

#[test]
fn fields() {
    fuzz_target("fields", Arc::new(gen_fields));
}

#[test]
fn policy_tests() {
    let _ = sandbox();
    fuzz_target("policy_tests", Arc::new(gen_policy_test));
}

#[test]
fn agent_objects() {
    fuzz_target("agent_objects", Arc::new(gen_agent));
}

/// Every hand-made hostile case, every run.
#[test]
fn hostile() {
    let cfg = Config::from_env();
    if cfg.replay.is_some() {
        return;
    }
    let _ = sandbox();
    let cases = Arc::new(hostile_cases());
    let n = cases.len() as u64;
    let mut failures = String::new();
    for target in ["manifests", "policy_tests"] {
        let mine: Arc<Vec<Case>> = Arc::new(cases.iter().filter(|(t, _)| *t == target).map(|(_, c)| c.clone()).collect());
        let count = mine.len() as u64;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gen: fuzz::Gen = Arc::new(move |_rng: &mut Rng| mine[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % mine.len()].clone());
        // A few big inputs (megabytes): a longer deadline, still far below
        // what quadratic loading or an expanded alias bomb would take.
        let cfg = Config { cases: Some(count), deadline: cfg.deadline * 5, ..cfg.clone() };
        let exec = exec_for(target);
        let mut stats = fuzz::run("hostile", &cfg, gen, exec.clone());
        failures.push_str(&fuzz::save_failures("hostile", &cfg, &exec, &mut stats));
        eprintln!("{}", stats.summary(&format!("hostile/{target}"), cfg.seed));
        if std::env::var_os("NETFENCE_FUZZ_KINDS").is_some() {
            for (k, n) in &stats.kinds {
                eprintln!("  {n:7} {k}");
            }
        }
    }
    assert!(n >= 40);
    assert!(failures.is_empty(), "{failures}");
}

/// Inputs that once broke an oracle, shrunk and kept (tests/fuzz-regressions/).
#[test]
fn regressions() {
    let cfg = Config::from_env();
    if cfg.replay.is_some() {
        return;
    }
    let dir = Path::new(ROOT).join("tests/fuzz-regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e != "md")).collect())
        .unwrap_or_default();
    files.sort();
    assert!(files.len() >= 5, "{}: only {} inputs", dir.display(), files.len());
    fuzz::install_panic_hook();
    let _ = sandbox();
    let mut bad = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let (target, path, bytes) = fuzz::parse_saved(&bytes).unwrap_or_else(|| panic!("{}: no #fuzz header", f.display()));
        let target = if target == "fields" || target == "hostile" { "manifests".to_string() } else { target };
        let exec = exec_for(&target);
        let case = Case { path, bytes, expect: None };
        let r = std::thread::Builder::new().name("fuzz-regression".into()).spawn(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec(&case))));
        match r.unwrap().join().unwrap() {
            Ok(Ok(_)) => {}
            Ok(Err(v)) => bad.push(format!("{}: {v}", f.display())),
            Err(_) => bad.push(format!("{}: panicked", f.display())),
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn emitter_positions_match_the_loader() {
    // The generator's location oracle is only as good as the emitter's
    // positions: check them against the parser on a fixed document.
    let mut rng = Rng::new(7);
    let doc = json!({"a": [1, {"b": "x y", "c": []}, [2, 3]], "d": {"e.f/g": {"h": null}}, "-k": "v"});
    let e = fuzz::emit(std::slice::from_ref(&doc), Style::Block, &mut rng);
    let parsed = netfence::yaml::parse(&e.text).unwrap();
    assert_eq!(parsed[0].value, doc, "{}", e.text);
    let mut checked = 0;
    for (path, (line, col)) in &e.positions {
        let p = parsed[0].pos(path);
        assert_eq!((p.line, p.col), (*line, *col), "{path} in\n{}", e.text);
        checked += 1;
    }
    assert!(checked >= 12, "{checked}");
}
