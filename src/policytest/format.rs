//! The policy test format (v1), as `../shared/policy-test-format.md`
//! defines it. This is a public interface: users' CI keeps files in it, so
//! it only changes compatibly, and unknown fields are rejected (a typo like
//! `expcet:` must not silently pass a test with no expectations).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::model::load::{decode, parse_docs, typed, ClusterBuilder, LoadError};
use crate::model::{Cluster, Family, Protocol};
use crate::yaml::{Doc, Pos};

/// A parsed test: its cluster is loaded, its expectations are checked for
/// shape (endpoints are resolved later, against the cluster).
#[derive(Debug)]
pub struct PolicyTest {
    pub file: PathBuf,
    pub name: String,
    /// Where `name` is: names are unique within a run.
    pub name_pos: Pos,
    pub description: Option<String>,
    pub cluster: Cluster,
    pub notices: Vec<String>,
    pub expectations: Vec<Expectation>,
}

#[derive(Debug, Clone)]
pub enum Expectation {
    Flow(FlowExpectation),
    Table(Table),
}

/// Where in the test file something is: for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line(pub usize);

/// A field of the test file, for errors found once the cluster is known
/// (an unknown pod, a family an endpoint lacks): `file:line:col: path: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub pos: Pos,
    pub path: String,
}

impl At {
    pub fn error(&self, file: &str, e: &dyn std::fmt::Display) -> String {
        format!("{file}:{}: {}: {e}", self.pos, self.path)
    }
}

#[derive(Debug, Clone)]
pub struct FlowExpectation {
    pub line: Line,
    /// The expectation, its `from`, `to` and (if written) `family`.
    pub at: At,
    pub from_at: At,
    pub to_at: At,
    pub family_at: Option<At>,
    /// Where `port` is: a port a Service does not have is an error there.
    pub port_at: At,
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub family: Option<Family>,
    pub allow: bool,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub line: Line,
    pub at: At,
    /// Each column endpoint in the header.
    pub columns_at: Vec<At>,
    pub family_at: Option<At>,
    pub port: u16,
    pub protocol: Protocol,
    pub family: Option<Family>,
    pub corner: String,
    pub columns: Vec<String>,
    pub rows: Vec<TableRow>,
}

#[derive(Debug, Clone)]
pub struct TableRow {
    pub line: Line,
    /// The row endpoint, and each cell.
    pub at: At,
    pub cells_at: Vec<At>,
    pub endpoint: String,
    /// `Some(true)` allowed (`.`), `Some(false)` denied (`X`), `None` not checked (`?`).
    pub cells: Vec<Option<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    cluster: Option<OneOrMany>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    objects: Vec<Value>,
    expect: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    from: String,
    to: String,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    family: Option<String>,
    verdict: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    family: Option<String>,
    matrix: String,
}

impl PolicyTest {
    /// Read and load one test file. Every problem is a [`LoadError`] naming
    /// the file (the test's or a manifest's), the line and the field.
    pub fn load(path: &Path) -> Result<PolicyTest, LoadError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| LoadError::new(&file, None, "", format!("cannot read: {e}")))?;
        PolicyTest::from_text(path, decode(&file, &bytes)?)
    }

    /// A test held as text, as if read from `path` (which relative
    /// `cluster` and `resources` paths are resolved against).
    pub fn from_text(path: &Path, text: &str) -> Result<PolicyTest, LoadError> {
        let file = path.display().to_string();
        let docs = parse_docs(&file, text)?;
        let [doc] = docs.as_slice() else {
            let (pos, what) = match docs.get(1) {
                Some(second) => (second.start, format!("found {} (the second starts here)", docs.len())),
                None => (Pos::default(), "found none".to_string()),
            };
            return Err(LoadError::new(&file, Some(pos), "", format!("a policy test is one YAML document, {what}")));
        };
        let raw: RawTest = typed(&file, doc)?;
        let source: Vec<&str> = text.split('\n').collect();
        let err = |path: &str, msg: String| LoadError::at(&file, doc, path, msg);

        let base = path.parent().unwrap_or(Path::new("."));
        let mut builder = ClusterBuilder::new();
        let clusters = match raw.cluster {
            None => vec![],
            Some(OneOrMany::One(c)) => vec![c],
            Some(OneOrMany::Many(c)) => c,
        };
        for (field, list) in [("cluster", &clusters), ("resources", &raw.resources)] {
            for (i, rel) in list.iter().enumerate() {
                let p = base.join(rel);
                if !p.exists() {
                    let at = if field == "cluster" && list.len() == 1 { field.to_string() } else { format!("{field}[{i}]") };
                    return Err(err(&at, format!("{} does not exist (paths are relative to the test file)", p.display())));
                }
                builder.add_path(&p)?;
            }
        }
        for (i, obj) in raw.objects.iter().enumerate() {
            let sub = doc.sub(&format!("objects[{i}]"), obj.clone());
            builder.add_doc(&file, &sub)?;
        }
        let (cluster, notices) = builder.finish();

        if raw.expect.is_empty() {
            return Err(err("expect", "a test needs at least one expectation".into()));
        }
        let mut expectations = Vec::new();
        for (i, e) in raw.expect.iter().enumerate() {
            expectations.push(expectation(&file, &source, doc, &format!("expect[{i}]"), e)?);
        }
        Ok(PolicyTest {
            file: path.to_path_buf(),
            name: raw.name,
            name_pos: doc.pos("name"),
            description: raw.description,
            cluster,
            notices,
            expectations,
        })
    }
}

/// No packet carries port 0 to a service, and Kubernetes ports start at 1.
const PORT_ZERO: &str = "port 0 is out of range (expected 1 to 65535)";

fn expectation(file: &str, source: &[&str], doc: &Doc, path: &str, v: &Value) -> Result<Expectation, LoadError> {
    let sub = doc.sub(path, v.clone());
    let line = Line(doc.pos(path).line);
    let full = |field: &str| if field.is_empty() { path.to_string() } else { format!("{path}.{field}") };
    let at = |field: &str| At { pos: doc.pos(&full(field)), path: full(field) };
    let err = |field: &str, msg: String| LoadError::at(file, doc, &full(field), msg);
    let located = |e: LoadError| LoadError { path: if e.path.is_empty() { path.to_string() } else { format!("{path}.{}", e.path) }, ..e };
    if let Some(table) = v.get("table") {
        if v.as_object().is_some_and(|o| o.len() > 1) {
            return Err(err("", "a table expectation has only the key `table`".into()));
        }
        let tsub = sub.sub("table", table.clone());
        let raw: RawTable = typed(file, &tsub).map_err(|e| located(LoadError { path: format!("table.{}", e.path).trim_end_matches('.').to_string(), ..e }))?;
        if raw.port == 0 {
            return Err(err("table.port", PORT_ZERO.into()));
        }
        let protocol = protocol(raw.protocol.as_deref()).map_err(|m| err("table.protocol", m))?;
        let family = family(raw.family.as_deref()).map_err(|m| err("table.family", m))?;
        let matrix = Matrix::new(source, at("table.matrix"), &raw.matrix);
        let mut lines = matrix.lines.iter().filter(|l| !l.tokens.is_empty());
        let Some(header) = lines.next() else { return Err(err("table.matrix", "the matrix is empty".into())) };
        let corner = header.tokens[0].0.clone();
        let columns: Vec<String> = header.tokens[1..].iter().map(|t| t.0.clone()).collect();
        let columns_at: Vec<At> = header.tokens[1..].iter().map(|t| t.1.clone()).collect();
        if columns.is_empty() {
            return Err(err("table.matrix", "the header names no column endpoints".into()));
        }
        let mut rows = Vec::new();
        for l in lines {
            let (endpoint, row_at) = l.tokens[0].clone();
            let symbols = &l.tokens[1..];
            let bad = |at: &At, msg: String| LoadError::new(file, Some(at.pos), &at.path, msg);
            if symbols.len() != columns.len() {
                let last = symbols.last().map_or(&row_at, |t| &t.1);
                return Err(bad(last, format!("row {endpoint} has {} cells, the header has {} columns", symbols.len(), columns.len())));
            }
            let cells = symbols
                .iter()
                .map(|(s, at)| match s.as_str() {
                    "." => Ok(Some(true)),
                    "X" => Ok(Some(false)),
                    "?" => Ok(None),
                    other => Err(bad(at, format!("row {endpoint}: unknown cell {other:?} (expected . allowed, X denied, ? not checked)"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let cells_at = symbols.iter().map(|t| t.1.clone()).collect();
            rows.push(TableRow { line: Line(row_at.pos.line), at: row_at, cells_at, endpoint, cells });
        }
        if rows.is_empty() {
            return Err(err("table.matrix", "the matrix has a header but no rows".into()));
        }
        let family_at = family.map(|_| at("table.family"));
        return Ok(Expectation::Table(Table { line, at: at(""), columns_at, family_at, port: raw.port, protocol, family, corner, columns, rows }));
    }
    let raw: RawFlow = typed(file, &sub).map_err(located)?;
    let allow = match raw.verdict.as_str() {
        "allow" => true,
        "deny" => false,
        other => return Err(err("verdict", format!("unknown verdict {other:?} (expected allow or deny)"))),
    };
    if raw.port == 0 {
        return Err(err("port", PORT_ZERO.into()));
    }
    let family = family(raw.family.as_deref()).map_err(|m| err("family", m))?;
    Ok(Expectation::Flow(FlowExpectation {
        line,
        at: at(""),
        from_at: at("from"),
        to_at: at("to"),
        family_at: family.map(|_| at("family")),
        port_at: at("port"),
        from: raw.from,
        to: raw.to,
        port: raw.port,
        protocol: protocol(raw.protocol.as_deref()).map_err(|m| err("protocol", m))?,
        family,
        allow,
    }))
}

/// A matrix split into tokens, each with where it is in the file.
struct Matrix {
    lines: Vec<MatrixLine>,
}

struct MatrixLine {
    tokens: Vec<(String, At)>,
}

impl Matrix {
    /// Tokens are located in `source` when the matrix is a literal block
    /// (`matrix: |`, the usual way): content line n is file line
    /// `matrix + 1 + n`, which is checked against the file's text. A matrix
    /// written any other way (quoted, folded) locates every token at the
    /// `matrix` field.
    fn new(source: &[&str], matrix: At, text: &str) -> Matrix {
        let content: Vec<&str> = text.lines().collect();
        let first = matrix.pos.line + 1;
        let literal = content.iter().enumerate().all(|(n, l)| {
            source.get(first + n - 1).is_some_and(|s| s.trim_end_matches('\r').ends_with(l.trim_end_matches('\r')))
        });
        let lines = content
            .iter()
            .enumerate()
            .map(|(n, l)| {
                let tokens = tokens(l)
                    .map(|(offset, t)| {
                        let pos = if literal {
                            let s = source[first + n - 1].trim_end_matches('\r');
                            let indent = s.chars().count() - l.trim_end_matches('\r').chars().count();
                            Pos { line: first + n, col: indent + l[..offset].chars().count() + 1 }
                        } else {
                            matrix.pos
                        };
                        (t.to_string(), At { pos, path: matrix.path.clone() })
                    })
                    .collect();
                MatrixLine { tokens }
            })
            .collect();
        Matrix { lines }
    }
}

/// Whitespace-separated tokens with their byte offsets.
fn tokens(l: &str) -> impl Iterator<Item = (usize, &str)> {
    l.split_whitespace().map(move |t| (t.as_ptr() as usize - l.as_ptr() as usize, t))
}

fn protocol(s: Option<&str>) -> Result<Protocol, String> {
    match s {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s).ok_or_else(|| format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)")),
    }
}

fn family(s: Option<&str>) -> Result<Option<Family>, String> {
    match s {
        None => Ok(None),
        Some("IPv4") => Ok(Some(Family::IPv4)),
        Some("IPv6") => Ok(Some(Family::IPv6)),
        Some(other) => Err(format!("unknown family {other:?} (expected IPv4 or IPv6)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Load `text` as policy-tests/t.yaml and run it: the first error, with
    /// the repository's path taken off.
    fn error_of(text: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("policy-tests/t.yaml");
        let e = match PolicyTest::from_text(&path, text) {
            Err(e) => e.to_string(),
            Ok(t) => {
                let ir = crate::ir::resolve(&t.cluster);
                crate::policytest::run_test(&t, &ir, &mut []).err().unwrap_or_else(|| "no error".into())
            }
        };
        e.replace(&format!("{}/", root.display()), "")
    }

    const HEAD: &str = "name: t\ncluster: ../fixtures/clusters/standard.yaml\nexpect:\n";

    #[test]
    fn every_error_names_line_column_and_field() {
        let cases = [
            ("- {from: x/a, to: x/zz, port: 80, verdict: allow}\n", "4:15: expect[0].to: no pod \"x/zz\" in the cluster"),
            ("- from: x/a\n  to: x/b\n  port: 80\n  family: IPv6\n  verdict: allow\n", "7:3: expect[0].family: x/a has no IPv6 address"),
            // Matrix tokens are located in a literal block...
            ("- table:\n    port: 80\n    matrix: |\n      -    x/a  x/q\n      x/a  .    .\n", "7:17: expect[0].table.matrix: no pod \"x/q\""),
            ("- table:\n    port: 0\n    matrix: |\n      -    x/a  x/b\n      x/a  .    .\n", "5:5: expect[0].table.port: port 0 is out of range"),
            ("- table:\n    port: 80\n    matrix: |\n      -    x/a  x/b\n      x/a  .    O\n", "8:17: expect[0].table.matrix: row x/a: unknown cell \"O\""),
            ("- table:\n    port: 80\n    matrix: |\n      -    x/a  x/b\n      x/a  .\n", "8:12: expect[0].table.matrix: row x/a has 1 cells"),
            // ... and at the field when the matrix is written another way.
            ("- table: {port: 80, matrix: \"-  x/a\\nx/zz .\"}\n", "4:21: expect[0].table.matrix: no pod \"x/zz\""),
            ("- {from: x/a, to: x/b, port: 80, verdict: allow}\n---\nname: u\n", "5:1: a policy test is one YAML document, found 2 (the second starts here)"),
        ];
        for (expect, want) in cases {
            let got = error_of(&format!("{HEAD}{expect}"));
            assert!(got.starts_with(&format!("policy-tests/t.yaml:{want}")), "{expect}\n got: {got}\nwant: {want}");
        }
        assert_eq!(error_of("# nothing\n"), "policy-tests/t.yaml:1:1: a policy test is one YAML document, found none");
    }
}
