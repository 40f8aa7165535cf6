//! End to end: the `netfence` binary on our conformance suite, on tests
//! that must fail, and on invalid inputs that must be rejected with a
//! located error.

use std::path::Path;
use std::process::Command;

fn netfence(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netfence"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run netfence");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn conformance_suite_passes() {
    let (code, out, err) = netfence(&["test", "policy-tests/"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let count = out.lines().find(|l| l.ends_with("checks")).unwrap_or_default();
    let tests: usize = count.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(tests >= 60, "only {tests} policy tests: {count}");
}

#[test]
fn failing_tests_exit_1_with_explanations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy-tests-failing");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let (code, out, err) = netfence(&["test", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{}: {out}{err}", path.display());
        assert!(out.contains("expected") && out.contains("isolated") || out.contains("allowed"), "{out}");
        let (code, json, _) = netfence(&["test", "-o", "json", path.to_str().unwrap()]);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["summary"]["failed"], 1, "{json}");
        assert!(!v["tests"][0]["failures"][0]["explanations"].as_array().unwrap().is_empty(), "{json}");
        n += 1;
    }
    assert!(n >= 3);
}

/// Every file in fixtures/invalid/ names the error it must produce:
/// `# expect-error: SUBSTRING` and `# expect-line: N`.
#[test]
fn invalid_inputs_are_rejected_with_file_line_and_field() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/invalid");
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(|s| s.trim().to_string());
        let want = header("# expect-error:").unwrap_or_else(|| panic!("{}: no expect-error header", path.display()));
        let line = header("# expect-line:");
        let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().to_str().unwrap().to_string();
        // A file with a `name:` is a policy test; anything else is manifests.
        let is_test = text.lines().any(|l| l.starts_with("name:"));
        let (code, out, err) = if is_test {
            netfence(&["test", &rel])
        } else {
            netfence(&["explain", "-f", &rel, "--from", "1.1.1.1", "--to", "2.2.2.2", "--port", "80"])
        };
        let all = format!("{out}{err}");
        assert_eq!(code, 2, "{rel}: {all}");
        assert!(all.contains(&want), "{rel}: error does not mention {want:?}:\n{all}");
        assert!(all.contains(&rel), "{rel}: error does not name the file:\n{all}");
        if let Some(line) = line {
            assert!(all.contains(&format!("{rel}:{line}:")), "{rel}: error not at line {line}:\n{all}");
        }
        assert!(!all.contains("panicked"), "{all}");
        n += 1;
    }
    assert!(n >= 15, "only {n} invalid fixtures");
}

#[test]
fn explain_names_policy_rule_and_exit_status() {
    let (code, out, _) = netfence(&[
        "explain", "-f", "fixtures/clusters/standard.yaml", "-f", "policy-tests-failing/wrong-flow-verdict.yaml",
        "--from", "y/a", "--to", "x/a", "--port", "80",
    ]);
    // The failing test file is not a manifest: it must be rejected, not half-read.
    assert_eq!(code, 2, "{out}");
}

/// The tiers' walk reads in order, naming the deciding cluster policy rule.
#[test]
fn explain_walks_the_tiers() {
    let (code, out, err) = netfence(&[
        "explain", "-f", "fixtures/clusters/dualstack.yaml", "-f", "tests/golden/policies/cluster.yaml",
        "--from", "x/a", "--to", "y/b", "--port", "80",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let want = "ingress of y/b: Admin: no match → NetworkPolicy: not isolated → Baseline: banp:default (priority 0) ingress rule 0 Deny — peer 0 namespaces ns=x, any protocol";
    assert!(out.contains(want), "{out}");
    let (code, out, _) = netfence(&[
        "explain", "-f", "fixtures/clusters/dualstack.yaml", "-f", "tests/golden/policies/cluster.yaml",
        "--from", "y/a", "--to", "x/a", "--port", "80", "-o", "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ingress = &v["families"][0]["ingress"];
    assert_eq!(ingress["tiers"][0]["outcome"], "pass", "{ingress:#}");
    assert_eq!(ingress["tiers"][0]["rule"]["name"], "pass-y", "{ingress:#}");
    assert_eq!(ingress["reason"], "not_isolated", "{ingress:#}");
}

/// Through a Service: one report per backend, the translation first; the
/// JSON is an array of reports with `via`; bad Service input exits 2.
#[test]
fn explain_through_a_service() {
    let f = "fixtures/clusters/services.yaml";
    let (code, out, err) = netfence(&["explain", "-f", f, "--from", "203.0.113.7", "--to", "node/node-1", "--port", "30080"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nodePort node-1 172.18.0.2:30080/TCP (svc shop/web-np) -> shop/web-2 10.244.2.10:8081 (DNAT)"), "{out}");
    assert!(out.contains("source 203.0.113.7 -> 172.18.0.2 (masquerade, entry node node-1)"), "{out}");
    let (code, out, _) = netfence(&["explain", "-f", f, "--from", "client/c1", "--to", "svc/shop/web", "--port", "80", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reports = v.as_array().unwrap();
    assert_eq!(reports.len(), 4, "two backends, two families: {out}");
    let via = &reports[1]["families"][0]["via"];
    assert_eq!((via["service"].as_str(), via["backend"].as_str(), via["backend_port"].as_u64()), (Some("shop/web"), Some("shop/web-2"), Some(8081)), "{via:#}");
    assert!(via["source_nat"].is_null(), "{via:#}");
    let (code, _, err) = netfence(&["explain", "-f", f, "--from", "client/c1", "--to", "svc/shop/db", "--port", "80"]);
    assert_eq!(code, 2);
    assert!(err.contains("--port 80: 80/TCP is not a port of Service shop/db"), "{err}");
    // A plain flow's JSON is one report, without `via`.
    let (_, out, _) = netfence(&["explain", "-f", f, "--from", "client/c1", "--to", "shop/web-1", "--port", "8080", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.is_object() && v["families"][0].get("via").is_none(), "{out}");
}
