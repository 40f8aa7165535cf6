//! Every lint rule on its fixture (fixtures/lint/<id>/): `bad.yaml` fires
//! exactly that rule, at the positions its `# expect: LINE:COL ...` header
//! names; `fixed.yaml` fires nothing. Both are judged against
//! fixtures/lint/cluster.yaml. Then the CLI: formats (SARIF's shape
//! checked), `--disable`, exit statuses, and no false positive on the demo.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use netfence::lint::{self, Config, RULES};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lint_files(files: &[PathBuf]) -> Vec<lint::Finding> {
    let (cluster, _, sources) = netfence::model::load_paths_with_sources(files).unwrap_or_else(|e| panic!("{e}"));
    let ir = netfence::ir::resolve(&cluster);
    lint::lint(&cluster, &ir, &sources, &Config::default())
}

fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/lint"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// `# expect: 12:9 30:7` → {"12:9", "30:7"}.
fn expected(bad: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(bad).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("# expect:")).unwrap_or_else(|| panic!("{}: no `# expect:` line", bad.display()));
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn every_rule_fires_on_its_bad_fixture_and_not_on_its_fixed_one() {
    let cluster = root().join("fixtures/lint/cluster.yaml");
    let dirs = fixture_dirs();
    let names: BTreeSet<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let ids: BTreeSet<String> = RULES.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(names, ids, "one fixture folder per rule, named by its id");
    let mut failures = Vec::new();
    for dir in &dirs {
        let id = dir.file_name().unwrap().to_string_lossy().into_owned();
        let bad = dir.join("bad.yaml");
        let found = lint_files(&[cluster.clone(), bad.clone()]);
        let rules: BTreeSet<&str> = found.iter().map(|f| f.rule).collect();
        let at: BTreeSet<String> = found.iter().map(|f| format!("{}:{}", f.line, f.column)).collect();
        if rules != BTreeSet::from([id.as_str()]) || at != expected(&bad) || found.iter().any(|f| !f.file.ends_with("bad.yaml")) {
            failures.push(format!("{id}/bad.yaml: expected only {id} at {:?}, got {found:#?}", expected(&bad)));
        }
        let fixed = lint_files(&[cluster.clone(), dir.join("fixed.yaml")]);
        if !fixed.is_empty() {
            failures.push(format!("{id}/fixed.yaml: expected no finding, got {fixed:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn docs_describe_every_rule() {
    let doc = std::fs::read_to_string(root().join("docs/lint.md")).unwrap();
    for r in RULES {
        assert!(doc.contains(&format!("### `{}`", r.id)), "docs/lint.md has no section for {}", r.id);
        assert!(doc.contains(&format!("fixtures/lint/{}/", r.id)), "docs/lint.md does not point at the fixture of {}", r.id);
    }
}

#[test]
fn the_scale_fixture_lints_deterministically() {
    let medium = [root().join("fixtures/scale/medium")];
    let start = std::time::Instant::now();
    let a = lint_files(&medium);
    let took = start.elapsed();
    println!("lint of fixtures/scale/medium (load included): {took:?}, {} findings", a.len());
    assert!(!a.is_empty(), "the generated cluster has known mistakes (named ports nobody declares, namespaces without DNS)");
    assert_eq!(a, lint_files(&medium));
}

fn netfence(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netfence")).args(args).current_dir(root()).output().expect("run netfence");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_demo_is_clean() {
    let (code, out, err) = netfence(&["lint", "-f", "fixtures/demo/cluster.yaml", "-f", "fixtures/demo/policies"]);
    assert_eq!((code, out.as_str()), (0, "no findings in 8 policies\n"), "{err}");
}

const BAD: [&str; 5] = ["lint", "-f", "fixtures/lint/cluster.yaml", "-f", "fixtures/lint/egress-without-dns/bad.yaml"];

#[test]
fn text_output_is_a_located_diagnostic_with_a_fix() {
    let (code, out, _) = netfence(&BAD);
    assert_eq!(code, 1, "{out}");
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("fixtures/lint/egress-without-dns/bad.yaml:13:3: warning[egress-without-dns]: shop/frontend-egress: spec.policyTypes: "),
        "{out}"
    );
    assert!(lines.next().unwrap_or_default().starts_with("  = fix: allow egress to"), "{out}");
    assert_eq!(lines.next(), Some("1 finding (0 error(s), 1 warning(s), 0 info) in 1 policy"));
}

#[test]
fn disable_silences_a_rule_and_rejects_unknown_ids() {
    let mut args = BAD.to_vec();
    args.extend(["--disable", "egress-without-dns"]);
    let (code, out, err) = netfence(&args);
    assert_eq!((code, out.as_str()), (0, "no findings in 1 policy\n"), "{err}");
    let mut args = BAD.to_vec();
    args.extend(["--disable", "egress-without-dsn"]);
    let (code, out, err) = netfence(&args);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("unknown lint rule \"egress-without-dsn\"") && err.contains("egress-without-dns, other-side-denies"), "{err}");
}

#[test]
fn invalid_input_exits_2() {
    let (code, _, err) = netfence(&["lint", "-f", "fixtures/invalid/bad-cidr.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad-cidr.yaml:"), "{err}");
}

#[test]
fn json_output() {
    let mut args = BAD.to_vec();
    args.extend(["--format", "json"]);
    let (code, out, _) = netfence(&args);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = &v["findings"][0];
    assert_eq!((f["rule"].as_str(), f["severity"].as_str(), f["line"].as_u64(), f["column"].as_u64()), (Some("egress-without-dns"), Some("warning"), Some(13), Some(3)));
    assert_eq!((f["kind"].as_str(), f["object"].as_str()), (Some("NetworkPolicy"), Some("shop/frontend-egress")));
    assert!(f["fix"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(v["summary"]["warnings"], 1);
}

/// The parts of SARIF 2.1.0 that code-scanning UIs require, checked field
/// by field (the schema's required properties and the types they take).
#[test]
fn sarif_output_has_the_required_shape() {
    let mut args = BAD.to_vec();
    args.extend(["--format", "sarif"]);
    let (code, out, _) = netfence(&args);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert!(v["$schema"].as_str().is_some_and(|s| s.contains("sarif-2.1.0")));
    let runs = v["runs"].as_array().expect("runs is an array");
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "netfence");
    let rules = driver["rules"].as_array().expect("tool.driver.rules");
    assert_eq!(rules.len(), RULES.len());
    for r in rules {
        assert!(r["id"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        assert!(r["shortDescription"]["text"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        assert!(r["help"]["text"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        assert!(matches!(r["defaultConfiguration"]["level"].as_str(), Some("error" | "warning" | "note")), "{r}");
    }
    let results = runs[0]["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    for res in results {
        let id = res["ruleId"].as_str().expect("ruleId");
        let idx = res["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rules[idx]["id"], id);
        assert!(matches!(res["level"].as_str(), Some("error" | "warning" | "note")));
        assert!(res["message"]["text"].as_str().is_some_and(|s| s.contains("shop/frontend-egress")));
        let loc = &res["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uri"], "fixtures/lint/egress-without-dns/bad.yaml");
        assert!(loc["region"]["startLine"].as_u64().is_some_and(|l| l >= 1));
        assert!(loc["region"]["startColumn"].as_u64().is_some_and(|c| c >= 1));
    }
}
