//! Findings as text (rustc/ripgrep-style diagnostics), JSON, or SARIF 2.1.0
//! for code-scanning UIs. Renderers only format: deciding is `lint`'s job.

use std::fmt::Write;

use serde_json::{json, Value};

use super::{Finding, Severity, RULES};

/// `file:line:col: warning[id]: ns/name: field: message` and `= fix: ...`
/// per finding, then a summary line.
pub fn text(findings: &[Finding], policies: usize) -> String {
    let mut out = String::new();
    for f in findings {
        let _ = write!(out, "{}:{}:{}: {}[{}]: {}: ", f.file, f.line, f.column, f.severity, f.rule, f.object);
        if !f.field.is_empty() {
            let _ = write!(out, "{}: ", f.field);
        }
        let _ = writeln!(out, "{}", f.message);
        let _ = writeln!(out, "  = fix: {}", f.fix);
    }
    let _ = writeln!(out, "{} in {}", summary(findings), if policies == 1 { "1 policy".to_string() } else { format!("{policies} policies") });
    out
}

fn summary(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no findings".into();
    }
    let n = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    format!(
        "{} finding{} ({} error(s), {} warning(s), {} info)",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        n(Severity::Error),
        n(Severity::Warning),
        n(Severity::Info)
    )
}

/// `{"findings": [...], "summary": {...}}`.
pub fn json(findings: &[Finding], policies: usize) -> Value {
    let n = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    json!({
        "findings": findings,
        "summary": {
            "findings": findings.len(),
            "errors": n(Severity::Error),
            "warnings": n(Severity::Warning),
            "info": n(Severity::Info),
            "policies": policies,
        }
    })
}

/// A SARIF 2.1.0 log with one run: every rule of the catalogue in
/// `tool.driver.rules` (so a UI can show rules that did not fire, and
/// `ruleIndex` is stable), one result per finding.
pub fn sarif(findings: &[Finding]) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            let pitfalls = r.pitfalls.iter().map(|p| format!("pitfall-{p}")).collect::<Vec<_>>();
            json!({
                "id": r.id,
                "name": r.id,
                "shortDescription": {"text": r.summary},
                "fullDescription": {"text": r.help},
                "help": {"text": format!("{} See docs/lint.md#{}.", r.help, r.id)},
                "defaultConfiguration": {"level": r.severity.sarif_level()},
                "properties": {"tags": pitfalls},
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let index = RULES.iter().position(|r| r.id == f.rule);
            let field = if f.field.is_empty() { String::new() } else { format!("{}: ", f.field) };
            let mut artifact = json!({"uri": uri(&f.file)});
            if !f.file.starts_with('/') {
                artifact["uriBaseId"] = json!("%SRCROOT%");
            }
            json!({
                "ruleId": f.rule,
                "ruleIndex": index,
                "level": f.severity.sarif_level(),
                "message": {"text": format!("{} {}: {field}{} Fix: {}", f.kind, f.object, f.message, f.fix)},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": artifact,
                        "region": {"startLine": f.line, "startColumn": f.column},
                    },
                    "logicalLocations": [{"fullyQualifiedName": format!("{}/{}", f.kind, f.object), "kind": "object"}],
                }],
                "properties": {"fix": f.fix, "field": f.field},
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "netfence",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }]
    })
}

/// A file path as a URI reference: relative paths stay relative (to
/// `%SRCROOT%`), absolute ones become `file://` URIs; anything outside
/// RFC 3986's unreserved characters and `/` is percent-encoded.
fn uri(path: &str) -> String {
    let path = path.strip_prefix("./").unwrap_or(path);
    let mut out = String::new();
    if path.starts_with('/') {
        out.push_str("file://");
    }
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding() -> Finding {
        Finding {
            rule: "selects-no-pod",
            severity: Severity::Warning,
            kind: "NetworkPolicy",
            object: "x/p".into(),
            file: "./dir/my policies.yaml".into(),
            line: 5,
            column: 3,
            field: "spec.podSelector".into(),
            message: "selects nothing".into(),
            fix: "fix it".into(),
        }
    }

    #[test]
    fn text_is_diagnostic_style() {
        assert_eq!(
            text(&[finding()], 2),
            "./dir/my policies.yaml:5:3: warning[selects-no-pod]: x/p: spec.podSelector: selects nothing\n  = fix: fix it\n1 finding (0 error(s), 1 warning(s), 0 info) in 2 policies\n"
        );
        assert_eq!(text(&[], 1), "no findings in 1 policy\n");
    }

    #[test]
    fn sarif_uris_and_levels() {
        let s = sarif(&[finding()]);
        let loc = &s["runs"][0]["results"][0]["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uri"], "dir/my%20policies.yaml");
        assert_eq!(loc["region"]["startLine"], 5);
        assert_eq!(uri("/abs/a.yaml"), "file:///abs/a.yaml");
        assert_eq!(s["runs"][0]["results"][0]["level"], "warning");
        let rules = s["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), RULES.len());
        let idx = s["runs"][0]["results"][0]["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], "selects-no-pod");
    }
}
