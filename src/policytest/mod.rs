//! `netfence test`: run policy tests (`../shared/policy-test-format.md`).
//!
//! Every expectation is expanded into checks (one flow in one family) and
//! judged by the reference evaluator ([`crate::eval`]), the same code path
//! `explain` uses. Further [`Backend`]s (the nftables interpreter, real
//! packets in `--dataplane` mode) give second opinions on the same checks;
//! a backend that disagrees with the reference is an engine bug and fails
//! the run, whatever the expectation said.

pub mod format;
pub mod interp;
pub mod service;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::eval::{evaluate, Endpoint, Flow};
use crate::explain;
use crate::ir::{self, Ir};
use crate::model::load::LoadError;
use crate::model::{Cluster, Family};
pub use format::{Expectation, PolicyTest};

/// One flow in one family.
#[derive(Debug, Clone)]
pub struct Check {
    pub flow: Flow,
    pub family: Family,
    /// Line of the expectation (or table row) in the test file.
    pub line: usize,
    /// The expectation (or table cell), for errors.
    pub at: format::At,
    pub expected: Option<bool>,
    /// Set when the check goes through a Service: `flow` is then the
    /// client-to-backend flow after kube-proxy's DNAT.
    pub via: Option<service::Via>,
}

/// A second opinion on a test's checks, judged in one batch so a backend
/// can set up once per test (compile programs, build namespaces).
pub trait Backend {
    fn name(&self) -> &'static str;
    /// One verdict per check, in order: `Ok(allowed)`, or `Err(why)` when
    /// this backend cannot judge that check faithfully (e.g. real packets
    /// cannot come from an "outside" host that has an address of a node's
    /// pod CIDR). Unjudged checks are counted and reported, never passed
    /// silently.
    fn verdicts(&mut self, test: &PolicyTest, ir: &Ir, checks: &[Check]) -> anyhow::Result<Vec<Result<bool, String>>>;
}

#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub file: String,
    pub name: String,
    pub checks: usize,
    pub passed: bool,
    /// Set when the test could not be run: invalid input (exit status 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub failures: Vec<Failure>,
    /// Checks a backend could not judge, with why (`dataplane: x/a -> ...: why`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unjudged: Vec<String>,
    /// Where the test's `name` is, for the error about a name used twice.
    #[serde(skip)]
    pub name_pos: Option<crate::yaml::Pos>,
    /// What of the test's policies cannot be judged from manifests
    /// (`domainNames` peers), one line per policy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub line: usize,
    /// `flow`, `table`, or `engine` (a backend disagreed with the reference).
    pub kind: &'static str,
    pub message: String,
    /// The explanation of the actual verdict of each wrong flow.
    pub explanations: Vec<explain::Report>,
    /// For tables: the table re-drawn with wrong cells marked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// Why a check cannot be judged by an engine that enforces, if it cannot:
/// an IP literal inside a node's pod CIDR is an "outside" address to the
/// test format, yet the node owns that range and drops traffic to and from
/// addresses in it that no programmed pod holds (fail closed: the pod may be
/// starting). The reference has no opinion on that safety net, so the
/// enforcing engines (interpreter, real packets) report such checks as not
/// judged instead of disagreeing.
pub fn in_pod_cidr(cluster: &Cluster, check: &Check) -> Option<String> {
    [&check.flow.src, &check.flow.dst].into_iter().find_map(|e| {
        let Endpoint::Ip(ip) = e else { return None };
        let node = cluster.nodes.values().find(|n| n.pod_cidrs.iter().any(|c| c.contains(ip)))?;
        Some(format!(
            "{ip} is inside node {}'s pod CIDR, where the node drops addresses no programmed pod holds (fail closed)",
            node.name
        ))
    })
}

/// Every `*.yaml` test under the given files and folders, sorted.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                let entries = std::fs::read_dir(&dir).map_err(|e| {
                    LoadError::new(&dir.display().to_string(), None, "", format!("cannot read folder: {e}"))
                })?;
                for e in entries.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                        out.push(path);
                    }
                }
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(LoadError::new(&p.display().to_string(), None, "", "no such file or folder"));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Run one test file with the reference and the given backends.
pub fn run_file(path: &Path, backends: &mut [Box<dyn Backend>]) -> TestResult {
    let file = path.display().to_string();
    let invalid = |name: String, e: String| TestResult {
        file: file.clone(),
        name,
        checks: 0,
        passed: false,
        error: Some(e),
        failures: vec![],
        unjudged: vec![],
        name_pos: None,
        notices: vec![],
    };
    let test = match PolicyTest::load(path) {
        Ok(t) => t,
        Err(e) => return invalid(String::new(), e.to_string()),
    };
    let ir = ir::resolve(&test.cluster);
    let notices = test.cluster.cluster_policies.iter().filter_map(|p| p.domain_names_notice()).collect();
    match run_test(&test, &ir, backends) {
        Ok(r) => r,
        Err(e) => TestResult { notices, ..invalid(test.name.clone(), e) },
    }
    .with_name_pos(test.name_pos)
}

impl TestResult {
    fn with_name_pos(self, pos: crate::yaml::Pos) -> TestResult {
        TestResult { name_pos: Some(pos), ..self }
    }
}

/// A test's expectations as checks (one flow in one family), in order.
/// `Err` is invalid input in an expectation (an unknown pod, a family an
/// endpoint lacks), already located.
pub fn checks(test: &PolicyTest) -> Result<Vec<Check>, String> {
    Ok(expand(test)?.0)
}

/// Judge a loaded test. `Err` is invalid input in an expectation (an
/// unknown pod, a family an endpoint lacks), located as
/// `file:line:col: expect[i].field: what`.
pub fn run_test(test: &PolicyTest, ir: &Ir, backends: &mut [Box<dyn Backend>]) -> Result<TestResult, String> {
    let c = &test.cluster;
    let file = test.file.display().to_string();
    let (checks, tables) = expand(test)?;

    // The reference verdicts, with their traces for explanations.
    let reference: Vec<bool> =
        checks.iter().map(|ch| judge(c, ir, ch).map(|v| v.allowed).map_err(|e| ch.at.error(&file, &e))).collect::<Result<_, _>>()?;

    let mut failures = Vec::new();
    let mut unjudged = Vec::new();
    for b in backends.iter_mut() {
        // Not bad input but an engine failure: it names the file only.
        let verdicts = b.verdicts(test, ir, &checks).map_err(|e| format!("{file}: {} backend failed: {e:#}", b.name()))?;
        for ((ch, want), got) in checks.iter().zip(&reference).zip(&verdicts) {
            let got = match got {
                Ok(g) => g,
                Err(why) => {
                    unjudged.push(format!("{}: {} {} not judged: {why}", b.name(), describe(c, ch), ch.family));
                    continue;
                }
            };
            if want != got {
                failures.push(Failure {
                    line: ch.line,
                    kind: "engine",
                    message: format!(
                        "ENGINE BUG: {} says {} for {} {}, the reference evaluator says {}",
                        b.name(),
                        word(*got),
                        describe(c, ch),
                        ch.family,
                        word(*want)
                    ),
                    explanations: vec![explain_one(c, ir, ch)],
                    table: None,
                });
            }
        }
    }

    let in_table = |i: usize| tables.iter().any(|(_, _, r)| r.contains(&i));
    for (i, ch) in checks.iter().enumerate() {
        if in_table(i) {
            continue;
        }
        if let Some(exp) = ch.expected.filter(|e| *e != reference[i]) {
            failures.push(Failure {
                line: ch.line,
                kind: "flow",
                message: format!("{} {}: expected {}, got {}", describe(c, ch), ch.family, word(exp), word(reference[i])),
                explanations: vec![explain_one(c, ir, ch)],
                table: None,
            });
        }
    }
    for (_, t, range) in &tables {
        let wrong: Vec<usize> = range.clone().filter(|&i| checks[i].expected.is_some_and(|e| e != reference[i])).collect();
        if wrong.is_empty() {
            continue;
        }
        failures.push(Failure {
            line: t.line.0,
            kind: "table",
            message: format!(
                "table {}/{}{}: {} of {} checks wrong",
                t.port,
                t.protocol,
                t.family.map(|f| format!(" {f}")).unwrap_or_default(),
                wrong.len(),
                range.len()
            ),
            explanations: wrong.iter().map(|&i| explain_one(c, ir, &checks[i])).collect(),
            table: Some(draw_table(c, t, &checks[range.clone()], &reference[range.clone()])),
        });
    }
    failures.sort_by_key(|f| f.line);
    Ok(TestResult {
        file,
        name: test.name.clone(),
        checks: checks.len(),
        passed: failures.is_empty(),
        error: None,
        failures,
        unjudged,
        name_pos: Some(test.name_pos),
        notices: test.cluster.cluster_policies.iter().filter_map(|p| p.domain_names_notice()).collect(),
    })
}

/// Which checks a table owns: (expectation index, table, range of checks).
type Tables<'t> = Vec<(usize, &'t format::Table, std::ops::Range<usize>)>;

/// Expand expectations into checks; remember which checks a table owns.
fn expand(test: &PolicyTest) -> Result<(Vec<Check>, Tables<'_>), String> {
    let c = &test.cluster;
    let file = test.file.display().to_string();
    let endpoint = |s: &str, at: &format::At| Endpoint::parse(c, s).map_err(|e| at.error(&file, &e));
    let dest = |s: &str, at: &format::At| match service::parse_service(c, s) {
        Some(svc) => svc.map(Dest::Service).map_err(|e| at.error(&file, &e)),
        None => endpoint(s, at).map(Dest::Endpoint),
    };

    let mut checks: Vec<Check> = Vec::new();
    let mut tables: Tables<'_> = Vec::new();
    for (i, e) in test.expectations.iter().enumerate() {
        match e {
            Expectation::Flow(f) => {
                let src = endpoint(&f.from, &f.from_at)?;
                let dst = dest(&f.to, &f.to_at)?;
                let at = |field: service::Field| match field {
                    service::Field::From => &f.from_at,
                    service::Field::To => &f.to_at,
                    service::Field::Port => &f.port_at,
                    service::Field::Family => f.family_at.as_ref().unwrap_or(&f.at),
                };
                let made = one_flow(c, src, &dst, f.protocol, f.port, f.family).map_err(|e| at(e.field).error(&file, &e.message))?;
                for (family, flow, via) in made {
                    checks.push(Check { flow, family, line: f.line.0, at: f.at.clone(), expected: Some(f.allow), via });
                }
            }
            Expectation::Table(t) => {
                let start = checks.len();
                let cols = t.columns.iter().zip(&t.columns_at).map(|(s, at)| dest(s, at)).collect::<Result<Vec<_>, _>>()?;
                for row in &t.rows {
                    let src = endpoint(&row.endpoint, &row.at)?;
                    for ((col, cell), cell_at) in cols.iter().zip(&row.cells).zip(&row.cells_at) {
                        let made = match one_flow(c, src.clone(), col, t.protocol, t.port, t.family) {
                            Ok(m) => m,
                            // A table over mixed single-stack pods has cells with no
                            // common family: with `?` they are simply not checked.
                            Err(_) if cell.is_none() => continue,
                            Err(e) => return Err(cell_at.error(&file, &e.message)),
                        };
                        for (family, flow, via) in made {
                            checks.push(Check { flow, family, line: row.line.0, at: cell_at.clone(), expected: *cell, via });
                        }
                    }
                }
                tables.push((i, t, start..checks.len()));
            }
        }
    }
    Ok((checks, tables))
}

/// A destination as written: an endpoint, or `svc/NS/NAME`.
enum Dest<'c> {
    Endpoint(Endpoint),
    Service(&'c crate::model::service::Service),
}

/// The checks of one flow: per family, the flow itself, or through a
/// Service one check per backend (a node at a nodePort is NodePort
/// traffic).
fn one_flow(
    c: &Cluster,
    src: Endpoint,
    dst: &Dest<'_>,
    protocol: crate::model::Protocol,
    port: u16,
    family: Option<Family>,
) -> Result<Vec<(Family, Flow, Option<service::Via>)>, service::ViaError> {
    let through = |target, written: Option<&Endpoint>| {
        service::expand(c, &src, written, target, protocol, port, family)
            .map(|v| v.into_iter().map(|t| (t.family, t.flow, Some(t.via))).collect())
    };
    match dst {
        Dest::Service(svc) => through(service::Target::ClusterIp(svc), None),
        Dest::Endpoint(d) => {
            if let Some(target) = service::node_port_target(c, d, protocol, port) {
                return through(target, Some(d));
            }
            let flow = Flow { src: src.clone(), dst: d.clone(), protocol, port, family };
            let families = flow.families(c).map_err(|e| service::ViaError {
                // Located at `family` when written, else at the expectation.
                field: service::Field::Family,
                message: e.to_string(),
            })?;
            Ok(families.into_iter().map(|f| (f, flow.clone(), None)).collect())
        }
    }
}

/// The reference verdict of one check, with its trace.
pub fn judge<R: crate::ir::Resolution + ?Sized>(c: &Cluster, ir: &R, ch: &Check) -> Result<crate::eval::FamilyVerdict, crate::eval::EndpointError> {
    match &ch.via {
        Some(via) => Ok(service::evaluate(c, ir, &ch.flow, via, ch.family)),
        None => {
            let one = Flow { family: Some(ch.family), ..ch.flow.clone() };
            let v = evaluate(c, ir, &one)?;
            v.families.into_iter().next().ok_or(crate::eval::EndpointError::MissingFamily { endpoint: one.src.display(c), family: ch.family })
        }
    }
}

fn word(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

/// A check in words; through a Service, naming the backend.
pub fn describe(c: &Cluster, ch: &Check) -> String {
    let f = &ch.flow;
    match &ch.via {
        Some(via) => via.describe(c, f),
        None => format!("{} -> {} {}/{}", f.src.display(c), f.dst.display(c), f.port, f.protocol),
    }
}

/// The destination a check's expectation wrote (`svc/NS/NAME` for a
/// check through a Service, not its backend).
fn written_dst(c: &Cluster, ch: &Check) -> String {
    match &ch.via {
        Some(via) => via.written_to(c),
        None => ch.flow.dst.display(c),
    }
}

fn explain_one(c: &Cluster, ir: &Ir, ch: &Check) -> explain::Report {
    if let Some(via) = &ch.via {
        return service::explain(c, &ch.flow, via, &service::evaluate(c, ir, &ch.flow, via, ch.family));
    }
    let one = Flow { family: Some(ch.family), ..ch.flow.clone() };
    // The check's family was validated when it was expanded.
    match evaluate(c, ir, &one) {
        Ok(v) => explain::report(c, &one, &v),
        Err(_) => explain::Report {
            from: one.src.display(c),
            to: one.dst.display(c),
            protocol: one.protocol,
            port: one.port,
            allowed: false,
            families: vec![],
        },
    }
}

/// The table as written, each wrong cell shown as `!` + the actual symbol.
fn draw_table(c: &Cluster, t: &format::Table, checks: &[Check], actual: &[bool]) -> String {
    let sym = |a: bool| if a { "." } else { "X" };
    let width = t.columns.iter().chain(t.rows.iter().map(|r| &r.endpoint)).map(|s| s.len()).max().unwrap_or(1).max(3);
    let mut out = format!("{:width$}", t.corner);
    for col in &t.columns {
        out.push_str(&format!(" {col:>width$}"));
    }
    out.push('\n');
    for row in &t.rows {
        out.push_str(&format!("{:width$}", row.endpoint));
        for (ci, col) in t.columns.iter().enumerate() {
            let cell: Vec<(usize, &Check)> = checks
                .iter()
                .enumerate()
                .filter(|(_, ch)| ch.flow.src.display(c) == normalize(c, &row.endpoint) && written_dst(c, ch) == normalize(c, col))
                .collect();
            let expected = row.cells[ci];
            let text = match expected {
                None => "?".to_string(),
                Some(e) => {
                    let wrong: Vec<String> = cell
                        .iter()
                        .filter(|(i, _)| actual[*i] != e)
                        .map(|(i, ch)| {
                            let backend = ch.via.as_ref().and_then(|v| v.backend.as_ref()).map(|b| format!("@{}", b.ip)).unwrap_or_default();
                            if cell.len() > 1 {
                                format!("{}{}{backend}", sym(actual[*i]), ch.family.to_string().trim_start_matches("IP"))
                            } else {
                                sym(actual[*i]).to_string()
                            }
                        })
                        .collect();
                    if wrong.is_empty() {
                        sym(e).to_string()
                    } else {
                        format!("!{}", wrong.join("/"))
                    }
                }
            };
            out.push_str(&format!(" {text:>width$}"));
        }
        out.push('\n');
    }
    out.push_str("(. allowed, X denied, !S: expected the other, got S)\n");
    out
}

/// Endpoints as `Endpoint::display` prints them (an IP naming a node is `node/NAME`).
fn normalize(c: &Cluster, s: &str) -> String {
    Endpoint::parse(c, s).map(|e| e.display(c)).unwrap_or_else(|_| s.to_string())
}

/// Render results as text. Returns the text; the summary line is last.
pub fn render_text(results: &[TestResult], verbose: bool) -> String {
    let mut out = String::new();
    for r in results {
        if let Some(e) = &r.error {
            out.push_str(&format!("ERROR {}\n  {e}\n", if r.name.is_empty() { &r.file } else { &r.name }));
            continue;
        }
        if r.passed {
            if verbose {
                out.push_str(&format!("ok    {} ({}, {} checks)\n", r.name, r.file, r.checks));
            }
            for u in &r.unjudged {
                out.push_str(&format!("note  {}: {u}\n", r.name));
            }
            continue;
        }
        out.push_str(&format!("FAIL  {} ({})\n", r.name, r.file));
        for f in &r.failures {
            out.push_str(&format!("  {}:{}: {}\n", r.file, f.line, f.message));
            if let Some(t) = &f.table {
                for l in t.lines() {
                    out.push_str(&format!("      {l}\n"));
                }
            }
            for e in &f.explanations {
                for l in explain::render_text(e).lines() {
                    out.push_str(&format!("      {l}\n"));
                }
            }
        }
    }
    let (passed, failed, errors) = summary(results);
    let checks: usize = results.iter().map(|r| r.checks).sum();
    out.push_str(&format!("\n{} tests, {checks} checks\n", results.len()));
    if errors > 0 {
        out.push_str(&format!("{errors} invalid\n"));
    }
    out.push_str(&format!("{passed} passed, {failed} failed\n"));
    out
}

/// (passed, failed, invalid)
pub fn summary(results: &[TestResult]) -> (usize, usize, usize) {
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    let passed = results.iter().filter(|r| r.passed).count();
    (passed, results.len() - passed - errors, errors)
}

/// The exit status the format defines: 2 invalid input, 1 a miss, 0 all held.
pub fn exit_status(results: &[TestResult]) -> i32 {
    match summary(results) {
        (_, _, e) if e > 0 => 2,
        (_, f, _) if f > 0 => 1,
        _ => 0,
    }
}

/// Names must be unique within a run.
pub fn check_unique_names(results: &mut [TestResult]) {
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for r in results.iter_mut() {
        if r.error.is_some() || r.name.is_empty() {
            continue;
        }
        if let Some(first) = seen.get(&r.name) {
            let at = r.name_pos.map(|p| format!(":{p}")).unwrap_or_default();
            r.error = Some(format!("{}{at}: name: test name {:?} is already used by {first} (names are unique within a run)", r.file, r.name));
            r.passed = false;
        } else {
            seen.insert(r.name.clone(), r.file.clone());
        }
    }
}
