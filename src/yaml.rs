//! YAML documents that remember where every field came from.
//!
//! serde_yaml-style deserialisation forgets positions once a document is a
//! value, yet every error we report must name the file, the line and the field
//! path. So we parse with yaml-rust2's event API and build a plain
//! `serde_json::Value` (what k8s-openapi deserialises from); the index from
//! field path (`spec.ingress[0].from[1]`, the same spelling
//! serde_path_to_error prints) to the line and column where that field starts
//! is built only when an error asks for a position, by parsing the text
//! again. Recording a path for every field of every document cost more than
//! the parse itself, for positions that valid manifests never need.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One YAML document: its value and where each of its fields starts.
#[derive(Debug, Clone)]
pub struct Doc {
    pub value: Value,
    pub start: Pos,
    spans: Spans,
    /// Start of each item of the root's sequences (`items[3]`), kept while
    /// parsing: a `kind: List`'s items need their lines, not every position.
    items: Option<Arc<HashMap<String, Pos>>>,
}

/// Where a document's fields start, found when first asked.
#[derive(Debug, Clone)]
struct Spans {
    source: Arc<Source>,
    /// Which document of the stream.
    index: usize,
    /// The path of this (sub-)document inside that document: "" for a
    /// whole document, `items[3]` for a list item.
    prefix: String,
}

/// A YAML stream's text, and every document's field positions once
/// computed.
#[derive(Debug)]
struct Source {
    text: Arc<str>,
    spans: OnceLock<Vec<HashMap<String, Pos>>>,
}

impl Spans {
    fn get(&self, path: &str) -> Option<Pos> {
        let all = self.source.spans.get_or_init(|| record_spans(&self.source.text));
        all.get(self.index)?.get(&join(&self.prefix, path)).copied()
    }
}

impl Doc {
    /// Where `path` starts, or the nearest enclosing field that we know of.
    /// Falls back to the document start so an error always has a line.
    pub fn pos(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.spans.get(p) {
                return pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.start,
            }
        }
    }

    /// A sub-document: `value` is the node at `path` and positions are
    /// re-rooted there. Used for `kind: List` items and inline test objects,
    /// so their errors still point at the right line of the outer file.
    /// Items of the root's sequences (`items[3]`) know their start without
    /// computing every position.
    pub fn sub(&self, path: &str, value: Value) -> Doc {
        let spans = Spans { source: self.spans.source.clone(), index: self.spans.index, prefix: join(&self.spans.prefix, path) };
        let start = self.items.as_ref().and_then(|i| i.get(&spans.prefix).copied()).unwrap_or_else(|| self.pos(path));
        Doc { value, start, spans, items: None }
    }
}

/// `prefix` then `path`, as one field path.
fn join(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_string()
    } else if path.is_empty() {
        prefix.to_string()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

/// A YAML syntax error, with its position.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parse a multi-document YAML stream.
pub fn parse(text: &str) -> Result<Vec<Doc>, SyntaxError> {
    let mut docs = Vec::new();
    parse_each(text, |d| docs.push(d))?;
    Ok(docs)
}

/// Parse a multi-document YAML stream, handing each document to `f` as
/// soon as it is complete, so a large file's values are never all in
/// memory. A syntax error anywhere is an error, after `f` saw the documents
/// before it.
pub fn parse_each(text: &str, mut f: impl FnMut(Doc)) -> Result<(), SyntaxError> {
    let source = Arc::new(Source { text: text.into(), spans: OnceLock::new() });
    let mut index = 0;
    let mut builder = Builder::new(false, |d: Built| {
        let spans = Spans { source: source.clone(), index, prefix: String::new() };
        index += 1;
        f(Doc { value: d.value, start: d.start, spans, items: (!d.items.is_empty()).then(|| Arc::new(d.items)) })
    });
    run(text, &mut builder)
}

fn run<F: FnMut(Built)>(text: &str, builder: &mut Builder<F>) -> Result<(), SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    parser.load(builder, true).map_err(|e| SyntaxError {
        pos: Pos { line: e.marker().line(), col: e.marker().col() + 1 },
        message: e.info().to_string(),
    })?;
    match builder.error.take() {
        Some(message) => Err(SyntaxError { pos: builder.error_pos, message }),
        None => Ok(()),
    }
}

/// Every document's field positions: the text parsed again, recording them.
/// Only errors get here, and the text parsed once already, so it parses.
fn record_spans(text: &str) -> Vec<HashMap<String, Pos>> {
    let mut all = Vec::new();
    let _ = run(text, &mut Builder::new(true, |d: Built| all.push(d.spans)));
    all
}

enum Frame {
    Seq { path: String, items: Vec<Value>, anchor: usize, start: Pos },
    Map { path: String, map: Map<String, Value>, key: Option<String>, anchor: usize, start: Pos },
}

/// A document as the builder leaves it.
struct Built {
    value: Value,
    start: Pos,
    /// Every field's position (when recording).
    spans: HashMap<String, Pos>,
    /// Start of each item of the root's sequences (when not recording).
    items: HashMap<String, Pos>,
}

struct Builder<F> {
    /// Record every field's path and position (slow; for errors).
    record: bool,
    /// Where finished documents go.
    sink: F,
    stack: Vec<Frame>,
    spans: HashMap<String, Pos>,
    items: HashMap<String, Pos>,
    doc_start: Option<Pos>,
    root: Option<Value>,
    anchors: HashMap<usize, Value>,
    error: Option<String>,
    error_pos: Pos,
}

impl Default for Pos {
    fn default() -> Self {
        Pos { line: 1, col: 1 }
    }
}

fn pos_of(m: Marker) -> Pos {
    Pos { line: m.line(), col: m.col() + 1 }
}

impl<F: FnMut(Built)> Builder<F> {
    fn new(record: bool, sink: F) -> Builder<F> {
        Builder {
            record,
            sink,
            stack: Vec::new(),
            spans: HashMap::new(),
            items: HashMap::new(),
            doc_start: None,
            root: None,
            anchors: HashMap::new(),
            error: None,
            error_pos: Pos::default(),
        }
    }

    /// Is the next event a mapping key?
    fn at_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    /// The path of the node about to be produced (not a mapping key); empty
    /// when not recording.
    fn next_path(&self) -> String {
        if !self.record {
            return String::new();
        }
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { path, items, .. }) => format!("{path}[{}]", items.len()),
            Some(Frame::Map { path, key, .. }) => {
                let k = key.as_deref().unwrap_or_default();
                if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                }
            }
        }
    }

    fn fail(&mut self, pos: Pos, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
            self.error_pos = pos;
        }
    }

    /// Attach a finished node that started at `start` to its parent (or
    /// make it the document root).
    fn push_value(&mut self, v: Value, anchor: usize, start: Pos) {
        if anchor != 0 {
            self.anchors.insert(anchor, v.clone());
        }
        // An item of a sequence of the root mapping (`items[3]`): its start
        // is kept even when not recording, for `kind: List`.
        if let (false, [Frame::Map { key: Some(k), .. }, Frame::Seq { items, .. }]) = (self.record, self.stack.as_slice()) {
            self.items.insert(format!("{k}[{}]", items.len()), start);
        }
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Frame::Seq { items, .. }) => items.push(v),
            Some(Frame::Map { map, key, .. }) => {
                if let Some(k) = key.take() {
                    map.insert(k, v);
                }
            }
        }
    }
}

impl<F: FnMut(Built)> MarkedEventReceiver for Builder<F> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(mark);
        match ev {
            Event::DocumentStart => {
                self.doc_start = Some(pos);
                self.spans.clear();
                self.items.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                let value = self.root.take().unwrap_or(Value::Null);
                let start = self.doc_start.take().unwrap_or(pos);
                let spans = std::mem::take(&mut self.spans);
                let items = std::mem::take(&mut self.items);
                if self.error.is_none() {
                    (self.sink)(Built { value, start, spans, items });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                // A scalar in key position is a mapping key, not a value.
                if self.at_key() {
                    let root = self.stack.len() == 1;
                    let record = self.record;
                    let Some(Frame::Map { key, path, start, .. }) = self.stack.last_mut() else { return };
                    // The parser marks a block mapping's start after its first
                    // key; the first key's position is where it really starts.
                    *start = (*start).min(pos);
                    if root {
                        let doc = self.doc_start.get_or_insert(pos);
                        *doc = (*doc).min(pos);
                    }
                    if record {
                        let full = if path.is_empty() { text.clone() } else { format!("{path}.{text}") };
                        let at = self.spans.entry(path.clone()).or_insert(pos);
                        *at = (*at).min(pos);
                        self.spans.insert(full, pos);
                    }
                    *key = Some(text);
                    return;
                }
                if self.record {
                    self.spans.entry(self.next_path()).or_insert(pos);
                }
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let v = if style == TScalarStyle::Plain && !is_str_tag {
                    plain_scalar(&text)
                } else {
                    Value::String(text)
                };
                self.push_value(v, anchor, pos);
            }
            Event::SequenceStart(anchor, _) => {
                if self.at_key() {
                    return self.fail(pos, "a sequence cannot be a mapping key".into());
                }
                let path = self.next_path();
                if self.record {
                    self.spans.entry(path.clone()).or_insert(pos);
                }
                self.stack.push(Frame::Seq { path, items: Vec::new(), anchor, start: pos });
            }
            Event::MappingStart(anchor, _) => {
                if self.at_key() {
                    return self.fail(pos, "a mapping cannot be a mapping key".into());
                }
                let path = self.next_path();
                if self.record {
                    self.spans.entry(path.clone()).or_insert(pos);
                }
                self.stack.push(Frame::Map { path, map: Map::new(), key: None, anchor, start: pos });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor, start, .. }) = self.stack.pop() {
                    self.push_value(Value::Array(items), anchor, start);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { map, anchor, start, .. }) = self.stack.pop() {
                    self.push_value(Value::Object(map), anchor, start);
                }
            }
            Event::Alias(id) => {
                let v = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                if let Some(Frame::Map { key: k @ None, .. }) = self.stack.last_mut() {
                    *k = Some(match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    });
                    return;
                }
                self.push_value(v, 0, pos);
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// Resolve a plain scalar with the YAML 1.2 core schema, as Kubernetes'
/// YAML decoder does for the values that matter to us (null, bools, numbers).
fn plain_scalar(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Number(i.into());
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Number(i.into());
        }
    }
    let looks_numeric = s.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'+' || b == b'.');
    if looks_numeric && s.bytes().any(|b| b.is_ascii_digit()) {
        if let Ok(f) = s.parse::<f64>() {
            if let Some(n) = Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_pos(text: &str, path: &str, line: usize, col: usize) {
        let docs = parse(text).unwrap();
        assert_eq!(docs[0].pos(path), Pos { line, col }, "path {path}");
    }

    #[test]
    fn values_and_scalars() {
        let docs = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: [x, 2.5]\nf: 10.0.0.0/8\n").unwrap();
        assert_eq!(
            docs[0].value,
            serde_json::json!({"a": 1, "b": "1", "c": true, "d": null, "e": ["x", 2.5], "f": "10.0.0.0/8"})
        );
    }

    #[test]
    fn positions_of_fields() {
        let text = "kind: NetworkPolicy\nspec:\n  ingress:\n  - from:\n    - podSelector: {}\n      namespaceSelector:\n        matchLabels: {a: b}\n";
        check_pos(text, "kind", 1, 1);
        check_pos(text, "spec.ingress", 3, 3);
        check_pos(text, "spec.ingress[0].from[0].podSelector", 5, 7);
        check_pos(text, "spec.ingress[0].from[0].namespaceSelector.matchLabels.a", 7, 23);
        // An unknown deeper path falls back to its nearest known ancestor.
        check_pos(text, "spec.ingress[0].from[0].ipBlock.cidr", 5, 7);
    }

    #[test]
    fn multi_documents_and_sub() {
        let docs = parse("a: 1\n---\nitems:\n- x: 1\n- x: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        let items = docs[1].value["items"].clone();
        let sub = docs[1].sub("items[1]", items[1].clone());
        assert_eq!(sub.pos("x"), Pos { line: 5, col: 3 });
    }

    #[test]
    fn syntax_error_has_line() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err}");
    }

    #[test]
    fn anchors_and_aliases() {
        let docs = parse("a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(docs[0].value["b"], serde_json::json!({"k": "v"}));
    }
}
