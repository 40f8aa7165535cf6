//! The real kernel, each test in a network namespace of its own: nft
//! accepts every generated program, applies our JSON, lists back exactly
//! what we compiled, applies diffs atomically, and refuses bad
//! transactions without changing anything. Needs root and nft; skipped with
//! a notice otherwise.

mod common;

use common::{compile, Netns, CASES};
use netfence::apply::{apply_staged, ApplyError, Kernel, NftKernel, Reason};
use netfence::nft::{diff, Element, Op, Program, Rule, Transaction, Verdict, ALT_TABLE};

/// Apply, then read back and compare: the kernel holds what we think.
fn apply_and_verify(k: &mut NftKernel, tx: &Transaction, want: &Program) {
    k.apply(tx).unwrap_or_else(|e| panic!("{e}\n{tx}"));
    let back = k.read_table(&want.table).unwrap().expect("the table exists");
    assert_eq!(&back, want, "listed back:\n{back}\nwanted:\n{want}");
    assert!(diff(Some(&back), want).is_empty());
}

#[test]
fn nft_accepts_every_generated_program() {
    let Some(ns) = Netns::new("nft_accepts_every_generated_program") else { return };
    for (name, files, node) in CASES {
        let p = compile(files, node);
        let (ok, out) = ns.nft(&["-c", "-f", "-"], &p.to_string());
        assert!(ok, "{name}: nft -c refused the text form:\n{out}");
        let (ok, out) = ns.nft(&["-j", "-c", "-f", "-"], &p.to_json().to_string());
        assert!(ok, "{name}: nft -c refused the JSON form:\n{out}");
    }
}

#[test]
fn applied_programs_list_back_identical() {
    let Some(ns) = Netns::new("applied_programs_list_back_identical") else { return };
    let mut k = NftKernel::in_netns(&ns.name);
    for (_, files, node) in CASES {
        let p = compile(files, node);
        // Each replaces the previous one whole.
        apply_and_verify(&mut k, &diff(None, &p), &p);
    }
}

#[test]
fn diffs_apply_incrementally() {
    let Some(ns) = Netns::new("diffs_apply_incrementally") else { return };
    let mut k = NftKernel::in_netns(&ns.name);
    let base = ["fixtures/clusters/standard.yaml", "tests/golden/policies/mix.yaml"];
    let old = compile(&base, "node-1");
    apply_and_verify(&mut k, &diff(None, &old), &old);

    // A new pod on node-1 matching existing selectors: elements only.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x, labels: {pod: a}}\nspec: {nodeName: node-1, containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}]}]}\nstatus: {podIP: 10.244.1.13}\n";
    let with_pod = common::compile_with(&base, pod, "node-1");
    let tx = diff(Some(&old), &with_pod);
    assert!(tx.only_elements() && !tx.is_empty(), "a pod add changed more than elements:\n{tx}");
    assert!(tx.to_string().contains("hairpin4"), "a local pod's hairpin pair is among them:\n{tx}");
    apply_and_verify(&mut k, &tx, &with_pod);

    // A policy change: chains rebuilt, sets added and removed.
    let other = compile(&["fixtures/clusters/standard.yaml", "tests/golden/policies/special.yaml"], "node-1");
    apply_and_verify(&mut k, &diff(Some(&with_pod), &other), &other);
    apply_and_verify(&mut k, &diff(Some(&other), &old), &old);
}

/// A node still holding the previous hook layout (egress at prerouting
/// dstnat+10, ingress at srcnat-10 accepting the node's InternalIPs), read
/// back, moves to the current one in one transaction: base chains whose
/// hook or priority changed are deleted and re-added atomically.
#[test]
fn the_previous_hook_layout_upgrades_in_place() {
    use netfence::model::Family;
    use netfence::nft::{AddrField, AddrMatch, BaseHook, ChainPolicy, Hook, Match};
    let Some(ns) = Netns::new("the_previous_hook_layout_upgrades_in_place") else { return };
    let mut k = NftKernel::in_netns(&ns.name);
    let new = compile(&["fixtures/clusters/standard.yaml", "tests/golden/policies/mix.yaml"], "node-1");
    let mut old = new.clone();
    old.chains.remove("egress_local");
    let egress = old.chains.get_mut("egress").unwrap();
    egress.base = Some(BaseHook { hook: Hook::Prerouting, priority: -90, policy: ChainPolicy::Accept });
    for r in &mut egress.rules {
        r.matches.retain(|m| !matches!(m, Match::FibSaddrLocal { .. }));
    }
    let ingress = old.chains.get_mut("ingress").unwrap();
    ingress.base = Some(BaseHook { hook: Hook::Postrouting, priority: 90, policy: ChainPolicy::Accept });
    let node_ips = AddrMatch::Nets(["172.18.0.2/32".parse().unwrap()].into());
    let local = ingress.rules.iter().position(|r| r.matches == [Match::FibSaddrLocal { negate: false }]).expect("the node's own traffic");
    ingress.rules[local].matches = vec![Match::Addr { family: Family::IPv4, field: AddrField::Saddr, negate: false, rhs: node_ips }];
    apply_and_verify(&mut k, &diff(None, &old), &old);
    let back = k.read_table(&old.table).unwrap().unwrap();
    apply_and_verify(&mut k, &diff(Some(&back), &new), &new);
}

#[test]
fn refused_transactions_change_nothing_and_say_where() {
    let Some(ns) = Netns::new("refused_transactions_change_nothing_and_say_where") else { return };
    let mut k = NftKernel::in_netns(&ns.name);
    let p = compile(&["fixtures/clusters/standard.yaml", "tests/golden/policies/mix.yaml"], "node-1");
    apply_and_verify(&mut k, &diff(None, &p), &p);

    let mut tx = Transaction::new(&p.table);
    let set = p.sets.keys().next().unwrap().clone();
    tx.push(Op::AddElements { set, elements: vec![Element::Addr("10.9.9.9".parse().unwrap())] });
    tx.push(Op::AddRule { chain: "ing_x_web".into(), rule: Rule::verdict(vec![], Verdict::Jump("no_such_chain".into())) });
    let e = k.apply(&tx).unwrap_err();
    assert!(matches!(e, ApplyError::Rejected { op: Some(1), reason: Reason::NotFound, .. }), "{e}");
    assert!(e.to_string().contains("jump no_such_chain"), "{e}");
    let back = k.read_table(&p.table).unwrap().unwrap();
    assert_eq!(back, p, "the element of operation 0 must not have been added");
    // The text form: as atomic, and located from the one call.
    let e = k.apply_text(&tx).unwrap_err();
    assert!(matches!(e, ApplyError::Rejected { op: Some(1), reason: Reason::NotFound, .. }), "{e}");
    assert_eq!(k.read_table(&p.table).unwrap().unwrap(), p, "text form: operation 0 must not have been applied");
    tx.ops.pop();
    k.apply_text(&tx).unwrap_or_else(|e| panic!("{e}\n{tx}"));
    k.apply(&diff(Some(&k.read_table(&p.table).unwrap().unwrap()), &p)).unwrap();
    assert_eq!(k.read_table(&p.table).unwrap().unwrap(), p);

    let mut tx = Transaction::new(&p.table);
    tx.push(Op::DeleteSet { name: p.sets.keys().find(|s| s.starts_with("pod4")).unwrap().clone() });
    let e = k.apply(&tx).unwrap_err();
    assert_eq!((e.op(), e.reason()), (Some(0), Some(Reason::Busy)), "{e}");
}

#[test]
fn staged_cold_start_switches_tables_atomically() {
    let Some(ns) = Netns::new("staged_cold_start_switches_tables_atomically") else { return };
    let mut k = NftKernel::in_netns(&ns.name);
    let old = compile(&["fixtures/clusters/standard.yaml"], "node-1");
    apply_and_verify(&mut k, &diff(None, &old), &old);
    let mut new = compile(&["fixtures/clusters/standard.yaml", "tests/golden/policies/mix.yaml"], "node-1");
    new.table = ALT_TABLE.into();
    apply_staged(&mut k, &new, Some(&old.table), 3).unwrap();
    assert_eq!(k.read_table("netfence").unwrap(), None);
    assert_eq!(k.read_table(ALT_TABLE).unwrap().as_ref(), Some(&new));
}

#[test]
fn missing_nft_is_its_own_error() {
    let mut k = NftKernel::with_command(["/nonexistent/nft"]);
    let mut tx = Transaction::new("netfence");
    tx.push(Op::AddTable { table: "netfence".into() });
    assert!(matches!(k.apply(&tx), Err(ApplyError::NftMissing { .. })));
}

/// The kept-open `nft -i` applies deltas as atomically as `nft -f`, locates
/// a refusal from the caret, keeps working after one, and agrees with
/// what is listed back.
#[test]
fn session_applies_small_transactions_atomically() {
    use netfence::apply_session::SessionKernel;
    let Some(ns) = Netns::new("session_applies_small_transactions_atomically") else { return };
    let argv: Vec<std::ffi::OsString> = ["ip", "netns", "exec", ns.name.as_str(), "nft"].iter().map(Into::into).collect();
    let mut session = SessionKernel::new(argv);
    let reader = NftKernel::in_netns(&ns.name);
    let base = ["fixtures/clusters/standard.yaml", "tests/golden/policies/mix.yaml"];
    let old = compile(&base, "node-1");
    session.apply(&diff(None, &old)).unwrap();
    assert_eq!(reader.read_table(&old.table).unwrap().as_ref(), Some(&old));

    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x, labels: {pod: a}}\nspec: {nodeName: node-1, containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}]}]}\nstatus: {podIP: 10.244.1.13}\n";
    let with_pod = common::compile_with(&base, pod, "node-1");
    let tx = diff(Some(&old), &with_pod);
    session.apply(&tx).unwrap();
    assert_eq!(reader.read_table(&old.table).unwrap().as_ref(), Some(&with_pod));

    // A good op then a bad one: nothing of it lands, the bad op is named.
    let set = with_pod.sets.keys().next().expect("a set").clone();
    let mut bad = Transaction::new(&with_pod.table);
    bad.push(Op::AddElements { set: set.clone(), elements: vec![Element::Addr("10.244.1.200".parse().unwrap())] });
    bad.push(Op::DeleteElements { set: "no_such_set".into(), elements: vec![Element::Addr("10.244.1.201".parse().unwrap())] });
    let err = session.apply(&bad).unwrap_err();
    assert_eq!(err.op(), Some(1), "{err}");
    assert_eq!(err.reason(), Some(Reason::NotFound), "{err}");
    assert_eq!(reader.read_table(&old.table).unwrap().as_ref(), Some(&with_pod), "a refused batch changed the table");

    // The same session goes on.
    session.apply(&diff(Some(&with_pod), &old)).unwrap();
    assert_eq!(reader.read_table(&old.table).unwrap().as_ref(), Some(&old));
}

/// The drop log's rules (a named limit, `numgen`, `log group`) as the
/// kernel takes them: applied, listed back identical, switched between
/// modes and rates and back off by diffs.
#[test]
fn drop_log_rules_apply_list_back_and_switch_off() {
    use netfence::nft::drop_log::{instrument, DropLog, Mode};
    let Some(ns) = Netns::new("drop_log_rules_apply") else { return };
    let mut k = NftKernel::in_netns(&ns.name);
    let files = ["fixtures/clusters/standard.yaml", "tests/golden/policies/mix.yaml"];
    let logged = |cfg: DropLog| {
        let cluster = netfence::model::load_paths(&files).unwrap().0;
        let ir = netfence::ir::resolve(&cluster);
        let (mut p, mut origins) = netfence::nft::compile_with_origins(&cluster, &ir, "node-1");
        instrument(&mut p, &mut origins, &cfg);
        p.validate().unwrap();
        p
    };
    let off = compile(&files, "node-1");
    let sampled = logged(DropLog { mode: Mode::Sampled { one_in: 100 }, group: 1706, per_second: 100 });
    let full = logged(DropLog { mode: Mode::Full, group: 1706, per_second: 20 });
    assert_eq!(logged(DropLog::OFF), off);
    apply_and_verify(&mut k, &diff(None, &off), &off);
    apply_and_verify(&mut k, &diff(Some(&off), &sampled), &sampled);
    apply_and_verify(&mut k, &diff(Some(&sampled), &full), &full);
    apply_and_verify(&mut k, &diff(Some(&full), &off), &off);
}
