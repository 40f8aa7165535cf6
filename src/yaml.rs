//! YAML documents that remember where every field came from.
//!
//! serde_yaml-style deserialisation forgets positions once a document is a
//! value, yet every error we report must name the file, the line and the field
//! path. So we parse once with yaml-rust2's event API, build a plain
//! `serde_json::Value` (what k8s-openapi deserialises from) and, beside it, an
//! index from field path (`spec.ingress[0].from[1]`, the same spelling
//! serde_path_to_error prints) to the line and column where that field starts.

use std::collections::HashMap;
use std::fmt;

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
    spans: HashMap<String, Pos>,
}

impl Doc {
    /// Where `path` starts, or the nearest enclosing field that we know of.
    /// Falls back to the document start so an error always has a line.
    pub fn pos(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.spans.get(p) {
                return *pos;
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
    pub fn sub(&self, path: &str, value: Value) -> Doc {
        let prefix_dot = format!("{path}.");
        let prefix_idx = format!("{path}[");
        let mut spans = HashMap::new();
        for (k, v) in &self.spans {
            if let Some(rest) = k.strip_prefix(&prefix_dot) {
                spans.insert(rest.to_string(), *v);
            } else if let Some(rest) = k.strip_prefix(&prefix_idx) {
                spans.insert(format!("[{rest}"), *v);
            }
        }
        Doc { value, start: self.pos(path), spans }
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
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        pos: Pos { line: e.marker().line(), col: e.marker().col() + 1 },
        message: e.info().to_string(),
    })?;
    if let Some(message) = builder.error {
        return Err(SyntaxError { pos: builder.error_pos, message });
    }
    Ok(builder.docs)
}

enum Frame {
    Seq { path: String, items: Vec<Value>, anchor: usize },
    Map { path: String, map: Map<String, Value>, key: Option<String>, anchor: usize },
}

#[derive(Default)]
struct Builder {
    docs: Vec<Doc>,
    stack: Vec<Frame>,
    spans: HashMap<String, Pos>,
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

impl Builder {
    /// The path of the node about to be produced, or `None` when the event
    /// is a mapping key.
    fn next_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { path, items, .. }) => Some(format!("{path}[{}]", items.len())),
            Some(Frame::Map { path, key: Some(k), .. }) => {
                Some(if path.is_empty() { k.clone() } else { format!("{path}.{k}") })
            }
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    fn fail(&mut self, pos: Pos, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
            self.error_pos = pos;
        }
    }

    /// Attach a finished node to its parent (or make it the document root).
    fn push_value(&mut self, v: Value, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, v.clone());
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

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(mark);
        match ev {
            Event::DocumentStart => {
                self.doc_start = Some(pos);
                self.spans.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                let value = self.root.take().unwrap_or(Value::Null);
                let start = self.doc_start.take().unwrap_or(pos);
                let spans = std::mem::take(&mut self.spans);
                self.docs.push(Doc { value, start, spans });
            }
            Event::Scalar(text, style, anchor, tag) => {
                // A scalar in key position is a mapping key, not a value.
                if let Some(Frame::Map { key: k @ None, path, .. }) = self.stack.last_mut() {
                    let full = if path.is_empty() { text.clone() } else { format!("{path}.{text}") };
                    // The parser marks a block mapping's start after its first
                    // key; the first key's position is where it really starts.
                    let start = self.spans.entry(path.clone()).or_insert(pos);
                    *start = (*start).min(pos);
                    if path.is_empty() {
                        let doc = self.doc_start.get_or_insert(pos);
                        *doc = (*doc).min(pos);
                    }
                    *k = Some(text);
                    self.spans.insert(full, pos);
                    return;
                }
                let path = self.next_path().unwrap_or_default();
                self.spans.entry(path).or_insert(pos);
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let v = if style == TScalarStyle::Plain && !is_str_tag {
                    plain_scalar(&text)
                } else {
                    Value::String(text)
                };
                self.push_value(v, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                if self.next_path().is_none() {
                    return self.fail(pos, "a sequence cannot be a mapping key".into());
                }
                let path = self.next_path().unwrap_or_default();
                self.spans.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Seq { path, items: Vec::new(), anchor });
            }
            Event::MappingStart(anchor, _) => {
                if self.next_path().is_none() {
                    return self.fail(pos, "a mapping cannot be a mapping key".into());
                }
                let path = self.next_path().unwrap_or_default();
                self.spans.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Map { path, map: Map::new(), key: None, anchor });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor, .. }) = self.stack.pop() {
                    self.push_value(Value::Array(items), anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { map, anchor, .. }) = self.stack.pop() {
                    self.push_value(Value::Object(map), anchor);
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
                self.push_value(v, 0);
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
