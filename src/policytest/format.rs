//! The policy test format (v1), as `../shared/policy-test-format.md`
//! defines it. This is a public interface: users' CI keeps files in it, so
//! it only changes compatibly, and unknown fields are rejected (a typo like
//! `expcet:` must not silently pass a test with no expectations).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::model::load::{decode, parse_docs, typed, ClusterBuilder, LoadError};
use crate::model::{Cluster, Family, Protocol};
use crate::yaml::Doc;

/// A parsed test: its cluster is loaded, its expectations are checked for
/// shape (endpoints are resolved later, against the cluster).
#[derive(Debug)]
pub struct PolicyTest {
    pub file: PathBuf,
    pub name: String,
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

#[derive(Debug, Clone)]
pub struct FlowExpectation {
    pub line: Line,
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
            return Err(LoadError::new(&file, None, "", format!("a policy test is one YAML document, found {}", docs.len())));
        };
        let raw: RawTest = typed(&file, doc)?;
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
            expectations.push(expectation(&file, doc, &format!("expect[{i}]"), e)?);
        }
        Ok(PolicyTest { file: path.to_path_buf(), name: raw.name, description: raw.description, cluster, notices, expectations })
    }
}

fn expectation(file: &str, doc: &Doc, path: &str, v: &Value) -> Result<Expectation, LoadError> {
    let sub = doc.sub(path, v.clone());
    let line = Line(doc.pos(path).line);
    let err = |field: &str, msg: String| {
        let full = if field.is_empty() { path.to_string() } else { format!("{path}.{field}") };
        LoadError::at(file, doc, &full, msg)
    };
    let located = |e: LoadError| LoadError { path: if e.path.is_empty() { path.to_string() } else { format!("{path}.{}", e.path) }, ..e };
    if let Some(table) = v.get("table") {
        if v.as_object().is_some_and(|o| o.len() > 1) {
            return Err(err("", "a table expectation has only the key `table`".into()));
        }
        let tsub = sub.sub("table", table.clone());
        let raw: RawTable = typed(file, &tsub).map_err(|e| located(LoadError { path: format!("table.{}", e.path).trim_end_matches('.').to_string(), ..e }))?;
        let protocol = protocol(raw.protocol.as_deref()).map_err(|m| err("table.protocol", m))?;
        let family = family(raw.family.as_deref()).map_err(|m| err("table.family", m))?;
        let matrix_line = doc.pos(&format!("{path}.table.matrix")).line;
        let mut lines = raw.matrix.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else { return Err(err("table.matrix", "the matrix is empty".into())) };
        let mut head = header.split_whitespace();
        let corner = head.next().unwrap_or("-").to_string();
        let columns: Vec<String> = head.map(String::from).collect();
        if columns.is_empty() {
            return Err(err("table.matrix", "the header names no column endpoints".into()));
        }
        let mut rows = Vec::new();
        for (n, l) in lines {
            // A block scalar starts on the line after `matrix: |`.
            let row_line = Line(matrix_line + 1 + n);
            let mut cells = l.split_whitespace();
            let endpoint = cells.next().unwrap_or_default().to_string();
            let symbols: Vec<&str> = cells.collect();
            let bad = |msg: String| LoadError::new(file, Some(crate::yaml::Pos { line: row_line.0, col: 1 }), &format!("{path}.table.matrix"), msg);
            if symbols.len() != columns.len() {
                return Err(bad(format!("row {endpoint} has {} cells, the header has {} columns", symbols.len(), columns.len())));
            }
            let cells = symbols
                .iter()
                .map(|s| match *s {
                    "." => Ok(Some(true)),
                    "X" => Ok(Some(false)),
                    "?" => Ok(None),
                    other => Err(bad(format!("row {endpoint}: unknown cell {other:?} (expected . allowed, X denied, ? not checked)"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(TableRow { line: row_line, endpoint, cells });
        }
        if rows.is_empty() {
            return Err(err("table.matrix", "the matrix has a header but no rows".into()));
        }
        return Ok(Expectation::Table(Table { line, port: raw.port, protocol, family, corner, columns, rows }));
    }
    let raw: RawFlow = typed(file, &sub).map_err(located)?;
    let allow = match raw.verdict.as_str() {
        "allow" => true,
        "deny" => false,
        other => return Err(err("verdict", format!("unknown verdict {other:?} (expected allow or deny)"))),
    };
    if raw.port == 0 {
        return Err(err("port", "port 0 is out of range (expected 1 to 65535)".into()));
    }
    Ok(Expectation::Flow(FlowExpectation {
        line,
        from: raw.from,
        to: raw.to,
        port: raw.port,
        protocol: protocol(raw.protocol.as_deref()).map_err(|m| err("protocol", m))?,
        family: family(raw.family.as_deref()).map_err(|m| err("family", m))?,
        allow,
    }))
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
