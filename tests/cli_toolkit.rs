//! End to end: the operators' toolkit commands on the demo cluster, run as
//! the built binary (`graph`, `who-can-reach`, `reach-from`, `diff
//! --format`, `completions`), and the binary run as the kubectl plugin
//! `kubectl-netfence` through a symlink.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(exe: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run netfence");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn netfence(args: &[&str]) -> (i32, String, String) {
    run(Path::new(env!("CARGO_BIN_EXE_netfence")), args)
}

const DEMO: [&str; 4] = ["-f", "fixtures/demo/cluster.yaml", "-f", "fixtures/demo/policies"];

fn with_demo<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = args[..1].to_vec();
    v.extend(DEMO);
    v.extend(&args[1..]);
    v
}

/// Whitespace-collapsed lines, so column widths do not matter.
fn lines(text: &str) -> Vec<String> {
    text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

#[test]
fn graph_prints_table_dot_and_json() {
    let (code, out, err) = netfence(&with_demo(&["graph"]));
    assert_eq!(code, 0, "{err}");
    let got = lines(&out);
    assert_eq!(got[0], "6 workloads (8 pods), 18 edges");
    for want in [
        "shop/* kube-system/coredns 53/TCP, 53/UDP IPv4 shop/allow-dns[0] open",
        "shop/cart shop/db 5432/TCP IPv4 shop/cart-to-db[0] shop/db-from-cart[0]",
        "monitoring/prometheus-0 shop/db 9187/TCP IPv4 open shop/allow-prometheus-scrape[0]",
        "outside shop/frontend 8080/TCP IPv4 - shop/frontend-from-anywhere[0]",
    ] {
        assert!(got.iter().any(|l| l == want), "missing {want:?} in\n{out}");
    }

    let (code, out, _) = netfence(&with_demo(&["graph", "-o", "dot", "--namespace", "shop", "--port", "5432"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("digraph allow {"), "{out}");
    // One family only: the label says which.
    assert!(out.contains("label=\"5432/TCP (IPv4)\""), "{out}");
    assert!(!out.contains("9187"), "--port keeps only 5432: {out}");

    let (code, out, _) = netfence(&with_demo(&["graph", "-o", "json", "--pod", "shop/db-0"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let db = v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "shop/db").expect("shop/db node");
    assert_eq!(db["kind"], "workload");
    assert_eq!(db["owner"], serde_json::json!({"kind": "StatefulSet", "name": "db"}));
    assert_eq!(db["pods"], serde_json::json!(["shop/db-0"]));
    assert_eq!(db["ingress_isolated"], true);
    let edge = v["edges"].as_array().unwrap().iter().find(|e| e["from"] == "shop/cart" && e["to"] == "shop/db").expect("cart -> db");
    assert_eq!(
        edge,
        &serde_json::json!({"from": "shop/cart", "to": "shop/db", "families": ["IPv4"],
            "ports": [{"protocol": "TCP", "first": 5432, "last": 5432}],
            "egress": {"open": false, "rules": [{"policy": "shop/cart-to-db", "rule": 0}]},
            "ingress": {"open": false, "rules": [{"policy": "shop/db-from-cart", "rule": 0}]}})
    );
    // Every edge of a --pod view touches the pod's workload or namespace.
    for e in v["edges"].as_array().unwrap() {
        let ends = [e["from"].as_str().unwrap(), e["to"].as_str().unwrap()];
        assert!(ends.iter().any(|s| *s == "shop/db" || *s == "shop/*"), "{e}");
    }
}

#[test]
fn graph_refuses_unknown_namespaces_and_non_policy_pods() {
    let (code, _, err) = netfence(&with_demo(&["graph", "--namespace", "nope"]));
    assert_eq!(code, 2);
    assert!(err.contains("--namespace nope: no such namespace"), "{err}");
    let (code, _, err) = netfence(&with_demo(&["graph", "--pod", "shop/nope"]));
    assert_eq!(code, 2);
    assert!(err.contains("no pod \"shop/nope\""), "{err}");
    let special = ["-f", "fixtures/clusters/special.yaml"];
    let (code, _, err) = netfence(&[&["graph"], &special[..], &["--pod", "x/host"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("x/host is a host-network pod: no policy applies to it"), "{err}");
    let (code, _, err) = netfence(&[&["reach-from"], &special[..], &["x/pending"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("takes no part in policy"), "{err}");
    let (code, _, err) = netfence(&["who-can-reach", "-f", "fixtures/clusters/special.yaml", "node/node-1"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a pod"), "{err}");
}

#[test]
fn who_can_reach_and_reach_from() {
    let (code, out, err) = netfence(&with_demo(&["who-can-reach", "shop/db-0", "--port", "5432", "--protocol", "tcp"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        lines(&out),
        [
            "who can reach shop/db-0 (workload shop/db) on 5432/TCP:",
            "FROM PODS PORTS FAMILIES EGRESS INGRESS",
            "shop/cart 1 5432/TCP IPv4 shop/cart-to-db[0] shop/db-from-cart[0]",
            "node/shop-worker2 - 5432/TCP IPv4 - a node's own address may always reach the pods on that node",
            "2 entries: 1 pods, 1 address ranges or nodes",
        ]
    );
    let (code, out, _) = netfence(&with_demo(&["who-can-reach", "shop/frontend-6d8f7c9b5-k2xqz", "-o", "json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["query"], "who-can-reach");
    assert_eq!(v["workload"], "shop/frontend");
    let outside = v["entries"].as_array().unwrap().iter().find(|e| e["id"] == "outside").expect("outside");
    assert_eq!(outside["kind"], "outside");
    assert_eq!(outside["ports"], serde_json::json!([{"protocol": "TCP", "first": 8080, "last": 8080}]));
    assert_eq!(outside["egress"], serde_json::Value::Null);

    let (code, out, _) = netfence(&with_demo(&["reach-from", "shop/cart-5b7d9c8f4-h7tmn"]));
    assert_eq!(code, 0);
    let got = lines(&out);
    assert!(got.contains(&"shop/db 1 5432/TCP IPv4 shop/cart-to-db[0] shop/db-from-cart[0]".to_string()), "{out}");
    assert!(got.contains(&"kube-system/coredns 2 53/TCP, 53/UDP IPv4 shop/allow-dns[0] open".to_string()), "{out}");
    assert!(!out.contains("outside"), "cart reaches no outside address: {out}");
}

/// The demo's policies with `40-db.yaml` (db takes cart on 5432) removed.
fn policies_without_db() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/policies");
    for e in std::fs::read_dir(&src).unwrap() {
        let p: PathBuf = e.unwrap().path();
        if p.file_name().unwrap() != "40-db.yaml" {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

#[test]
fn diff_formats() {
    let after = policies_without_db();
    let after = after.path().to_str().unwrap();
    let base = ["diff", "-f", "fixtures/demo/cluster.yaml", "--before", "fixtures/demo/policies", "--after", after];
    let with = |extra: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(extra.iter().copied()).collect() };

    let (code, out, err) = netfence(&with(&[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "closes shop/cart-5b7d9c8f4-h7tmn -> shop/db-0 5432/TCP IPv4\n0 opened, 1 closed\n");
    let (code, _, _) = netfence(&with(&["--exit-code"]));
    assert_eq!(code, 1);

    let (code, md, _) = netfence(&with(&["--format", "markdown"]));
    assert_eq!(code, 0);
    let want_start = "**netfence diff**: opens flows for 0 pod pairs and closes flows for 1 pod pair; 0 pods newly isolated, 0 no longer isolated; 1 policy made redundant.\n";
    assert!(md.starts_with(want_start), "{md}");
    assert!(md.contains("| `shop/cart` | `shop/db` | 5432/TCP | IPv4 | 1 |"), "{md}");
    // The cart's egress rule to the db now only allows what the db refuses;
    // located in the tree after the change, which the review is about.
    assert!(md.contains(&format!("- `shop/cart-to-db` ({after}/30-backends.yaml:")), "{md}");

    // -o json (the old spelling) and --format json: the grouped report.
    for flag in ["-o", "--format"] {
        let (code, out, _) = netfence(&with(&[flag, "json"]));
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["summary"]["closed_pod_pairs"], 1);
        assert_eq!(v["closed"][0]["from"], "shop/cart");
        assert_eq!(v["redundant"][0]["policy"], "shop/cart-to-db");
        assert_eq!(v["redundant"][0]["new"], false);
    }
}

/// An Admin-tier ClusterNetworkPolicy that denies every ingress to the db
/// on 5432: `diff` shows the flow it closes (exactly as removing the db's
/// NetworkPolicy does), in every format; the graph commands refuse it.
#[test]
fn diff_judges_cluster_policies() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/policies");
    for e in std::fs::read_dir(&src).unwrap() {
        let p: PathBuf = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let cnp = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: freeze-db}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {statefulset.kubernetes.io/pod-name: db-0}}}}\n  ingress:\n  - {name: no-postgres, action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 5432}}}]}\n";
    std::fs::write(dir.path().join("90-freeze-db.yaml"), cnp).unwrap();
    let after = dir.path().to_str().unwrap();
    let base = ["diff", "-f", "fixtures/demo/cluster.yaml", "--before", "fixtures/demo/policies", "--after", after];
    let (code, out, err) = netfence(&base);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "closes shop/cart-5b7d9c8f4-h7tmn -> shop/db-0 5432/TCP IPv4\n0 opened, 1 closed\n");
    // Removing it (before and after swapped) opens the flow again.
    let back = ["diff", "-f", "fixtures/demo/cluster.yaml", "--before", after, "--after", "fixtures/demo/policies", "--format", "json"];
    let (code, out, err) = netfence(&back);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["summary"]["opened_pod_pairs"].clone(), v["opened"][0]["to"].clone()), (serde_json::json!(1), serde_json::json!("shop/db")));
    let (code, md, _) = netfence(&base.iter().copied().chain(["--format", "markdown"]).collect::<Vec<_>>());
    assert_eq!(code, 0);
    assert!(md.contains("| `shop/cart` | `shop/db` | 5432/TCP | IPv4 | 1 |"), "{md}");

    for cmd in [&["graph", "-f", "fixtures/demo/cluster.yaml", "-f", after][..], &["who-can-reach", "-f", "fixtures/demo/cluster.yaml", "-f", after, "shop/db-0"]] {
        let (code, _, err) = netfence(cmd);
        assert_eq!(code, 2, "{cmd:?}");
        assert!(err.contains("does not model cluster-scoped policies yet (ClusterNetworkPolicy \"freeze-db\""), "{err}");
        assert!(err.contains("netfence diff"), "{err}");
    }
}

#[test]
fn completions_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, out, err) = netfence(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for sub in ["explain", "graph", "who-can-reach", "reach-from", "diff", "completions"] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let (code, out, _) = netfence(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("complete -F _netfence") && out.contains("--namespace"), "{}", &out[..out.len().min(400)]);
    let (code, _, err) = netfence(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}

/// kubectl runs `kubectl-netfence` (found on PATH) with the arguments after
/// `kubectl netfence`: the same binary under that name must work and say
/// `kubectl netfence` in its usage.
#[test]
fn runs_as_the_kubectl_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-netfence");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_netfence"), &plugin).unwrap();

    let (code, out, _) = run(&plugin, &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: kubectl netfence <COMMAND>"), "{out}");
    let (code, out, _) = run(&plugin, &["explain", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: kubectl netfence explain"), "{out}");
    let (code, _, err) = run(&plugin, &["explain", "--bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("Usage: kubectl netfence explain"), "{err}");

    // `kubectl netfence explain ...` does what `netfence explain ...` does.
    let args = with_demo(&["explain", "--from", "shop/cart-5b7d9c8f4-h7tmn", "--to", "shop/db-0", "--port", "5432"]);
    let (code, plugin_out, _) = run(&plugin, &args);
    let (code2, direct_out, _) = netfence(&args);
    assert_eq!((code, code2), (0, 0));
    assert_eq!(plugin_out, direct_out);
    let (code, out, _) = run(&plugin, &with_demo(&["who-can-reach", "shop/db-0", "--port", "5432"]));
    assert_eq!(code, 0);
    assert!(out.contains("shop/cart"), "{out}");

    // Its completions are for the command the shell sees: kubectl-netfence.
    let (code, out, _) = run(&plugin, &["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("kubectl-netfence"), "{}", &out[..out.len().min(400)]);

    // And as plain netfence the name stays netfence.
    let (_, out, _) = netfence(&["--help"]);
    assert!(out.contains("Usage: netfence <COMMAND>"), "{out}");
}
