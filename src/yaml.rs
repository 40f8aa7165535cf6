//! YAML documents that remember where every field came from.
//!
//! serde_yaml-style deserialisation forgets positions once a document is a
//! value, yet every error we report must name the file, the line and the field
//! path. So we parse with yaml-rust2's event API, build a plain
//! `serde_json::Value` (what k8s-openapi deserialises from) and a tree of
//! positions shaped like the value, looked up by field path
//! (`spec.ingress[0].from[1]`, the same spelling serde_path_to_error prints).
//!
//! The tree is built only when something asks for a position (an error, or
//! lint's [`crate::model::sources`]): the stream's text is then parsed again,
//! recording it, once for all its documents. Valid manifests never need
//! positions, and building them for every field cost about as much as the
//! parse. Only the start of each document and of each item of its top-level
//! sequences (`items[3]` of a `kind: List`) is kept on the first pass.
//!
//! Input is hostile until proven otherwise, so the parser bounds what a
//! small file can cost: nesting depth ([`MAX_DEPTH`]; deeper documents
//! would overflow the stack of whatever walks the value), alias expansion
//! (a "billion laughs" document is refused, not expanded), and positions
//! are kept per node, never as a path string per node (which costs depth ×
//! nodes). Duplicate keys are refused, as Kubernetes' strict decoding does,
//! rather than silently keeping one of them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deeper nesting is refused. Real manifests nest about ten levels (a CRD
/// schema a few dozen); the limit keeps every recursive walk of the value
/// (serde, clone, drop) far from the end of a 2 MiB thread stack.
pub const MAX_DEPTH: usize = 256;

/// Aliases may add this many nodes to a stream, plus [`ALIAS_RATIO`] per
/// node written out: anchors for shared label maps are fine, exponential
/// expansion is not.
pub const ALIAS_BASE: usize = 10_000;
pub const ALIAS_RATIO: usize = 10;

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

impl Default for Pos {
    fn default() -> Self {
        Pos { line: 1, col: 1 }
    }
}

/// Where each node of a stream starts: one entry per node, children by
/// index. A mapping entry's node starts at its key.
#[derive(Debug, Default)]
struct Spans {
    nodes: Vec<SpanNode>,
}

#[derive(Debug)]
struct SpanNode {
    pos: Pos,
    kids: Kids,
}

#[derive(Debug)]
enum Kids {
    Leaf,
    Map(Vec<(String, usize)>),
    Seq(Vec<usize>),
}

/// A stream's text and, once asked for, the positions of all its nodes.
#[derive(Debug)]
struct Source {
    text: Arc<str>,
    recorded: OnceLock<Recorded>,
}

/// Positions of a whole stream: every node, and each document's root.
#[derive(Debug, Default)]
struct Recorded {
    spans: Spans,
    roots: Vec<Option<usize>>,
}

impl Source {
    fn recorded(&self) -> &Recorded {
        self.recorded.get_or_init(|| {
            // The text parsed once already; a second pass that records stops
            // where the first did, after every document handed out.
            let mut b = Builder::new(true);
            let _ = drive(&self.text, &mut b, |_| {});
            Recorded { spans: std::mem::take(&mut b.spans), roots: std::mem::take(&mut b.roots) }
        })
    }
}

/// One YAML document: its value and where each of its fields starts.
#[derive(Debug, Clone)]
pub struct Doc {
    pub value: Value,
    pub start: Pos,
    source: Arc<Source>,
    /// Which document of the stream.
    index: usize,
    /// Where this (sub-)document sits in its document: "" for a whole
    /// document, `items[3]` for a list item.
    prefix: String,
    /// Start of each item of the document's top-level sequences, by path.
    items: Option<Arc<HashMap<String, Pos>>>,
}

impl Doc {
    /// Where `path` starts, or the nearest enclosing field that we know of.
    /// Falls back to the document start so an error always has a line.
    pub fn pos(&self, path: &str) -> Pos {
        self.find(path).1
    }

    /// The node `path` names, if known all the way down, and the position
    /// of the deepest node on the way.
    fn find(&self, path: &str) -> (Option<usize>, Pos) {
        let rec = self.source.recorded();
        let Some(mut node) = rec.roots.get(self.index).copied().flatten() else { return (None, self.start) };
        let spans = &rec.spans;
        let mut at = spans.nodes[node].pos;
        let full = join(&self.prefix, path);
        let mut rest = full.as_str();
        let mut top = true;
        while !rest.is_empty() {
            let next = match &spans.nodes[node].kids {
                Kids::Seq(items) => rest.strip_prefix('[').and_then(|r| r.split_once(']')).and_then(|(i, tail)| {
                    let child = i.parse::<usize>().ok().and_then(|i| items.get(i))?;
                    Some((*child, tail))
                }),
                Kids::Map(entries) => {
                    // Keys may hold `.` and `[` (`app.kubernetes.io/name`):
                    // take the longest key the path continues from.
                    let r = if top { rest } else { rest.strip_prefix('.').unwrap_or("\0") };
                    entries
                        .iter()
                        .filter(|(k, _)| r.strip_prefix(k.as_str()).is_some_and(|t| t.is_empty() || t.starts_with(['.', '['])))
                        .max_by_key(|(k, _)| k.len())
                        .map(|(k, child)| (*child, &r[k.len()..]))
                }
                Kids::Leaf => None,
            };
            let Some((child, tail)) = next else { return (None, at) };
            node = child;
            at = spans.nodes[node].pos;
            rest = tail;
            top = false;
        }
        (Some(node), at)
    }

    /// A sub-document: `value` is the node at `path` and positions are
    /// re-rooted there. Used for `kind: List` items and inline test objects,
    /// so their errors still point at the right line of the outer file.
    /// Costs nothing per field: the positions are shared, and an item of a
    /// top-level sequence knows its start without them.
    pub fn sub(&self, path: &str, value: Value) -> Doc {
        let prefix = join(&self.prefix, path);
        let start = self.items.as_ref().and_then(|i| i.get(&prefix).copied()).unwrap_or_else(|| self.pos(path));
        Doc { value, start, source: self.source.clone(), index: self.index, prefix, items: None }
    }
}

/// `prefix` then `path`, as one field path.
fn join(prefix: &str, path: &str) -> String {
    let mut p = prefix.to_string();
    if !path.is_empty() {
        push_seg(&mut p, path);
    }
    p
}

/// A YAML syntax error, or a document netfence refuses to build (duplicate
/// keys, too deep, too many aliases), with its position and, when it is
/// about a field, the field's path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SyntaxError {
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

/// Parse a multi-document YAML stream.
pub fn parse(text: &str) -> Result<Vec<Doc>, SyntaxError> {
    let mut docs = Vec::new();
    parse_each(text, |d| docs.push(d))?;
    Ok(docs)
}

/// Parse a multi-document YAML stream, handing each document to `f` as soon
/// as it is complete, so a large file's values need not all be in memory at
/// once. An error anywhere is the error, after `f` saw the documents before
/// it.
pub fn parse_each(text: &str, mut f: impl FnMut(Doc)) -> Result<(), SyntaxError> {
    let source = Arc::new(Source { text: text.into(), recorded: OnceLock::new() });
    let mut b = Builder::new(false);
    let mut index = 0;
    let r = drive(text, &mut b, |d| {
        let items = (!d.items.is_empty()).then(|| Arc::new(d.items));
        f(Doc { value: d.value, start: d.start, source: source.clone(), index, prefix: String::new(), items });
        index += 1;
    });
    match r {
        // A refused document (duplicate key, merge of a non-mapping) names
        // the field and the first key's position: those come from the
        // recording pass, which refuses the same thing at the same event.
        Err(first) if b.refused => {
            let mut rb = Builder::new(true);
            match drive(text, &mut rb, |_| {}) {
                Err(e) => Err(e),
                Ok(()) => Err(first),
            }
        }
        r => r,
    }
}

/// Run `b` over `text`, handing finished documents to `f`.
fn drive(text: &str, b: &mut Builder, mut f: impl FnMut(Built)) -> Result<(), SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    b.lines = lone_cr_lines(text);
    // Events one at a time: yaml-rust2's `load` recurses once per nesting
    // level, which a deep enough document turns into a stack overflow.
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| SyntaxError {
            pos: clamp(text, pos_of(b.lines.as_deref(), *e.marker())),
            path: String::new(),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let end = ev == Event::StreamEnd;
        b.on_event(ev, mark);
        if let Some((pos, path, message)) = b.error.take() {
            return Err(SyntaxError { pos: clamp(text, pos), path, message });
        }
        if let Some(d) = b.done.take() {
            f(d);
        }
        if end {
            return Ok(());
        }
    }
}

/// A position inside `text`: the scanner reports the end of input one line
/// past the last.
fn clamp(text: &str, pos: Pos) -> Pos {
    let lines: Vec<&str> = text.split('\n').collect();
    let line = pos.line.clamp(1, lines.len());
    let len = lines[line - 1].trim_end_matches('\r').chars().count();
    let col = if line < pos.line { len + 1 } else { pos.col.clamp(1, len + 1) };
    Pos { line, col }
}

/// A node being built: its span, start, value so far, anchor, nodes it
/// holds (for the alias budget) and how its parent names it (for error
/// paths).
struct Frame {
    span: usize,
    start: Pos,
    anchor: usize,
    count: usize,
    seg: String,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Value>),
    Map {
        map: Map<String, Value>,
        /// The key whose value comes next: its text and position, or `<<`.
        key: Option<(String, Pos)>,
        merge_next: bool,
        merges: Vec<Value>,
    },
}

/// A document as the builder hands it out.
struct Built {
    value: Value,
    start: Pos,
    /// Start of each item of the top-level sequences (not when recording).
    items: HashMap<String, Pos>,
}

/// Builds documents from events. Recording, it also builds `spans` (every
/// node's position) and names fields in errors; otherwise it keeps only
/// what loading needs and leaves positions to a recording pass.
struct Builder {
    record: bool,
    /// See [`pos_of`]: set by [`drive`] for a text with a lone `\r`.
    lines: Option<Vec<usize>>,
    /// `error` is about a field, which only a recording pass names.
    refused: bool,
    done: Option<Built>,
    roots: Vec<Option<usize>>,
    items: HashMap<String, Pos>,
    stack: Vec<Frame>,
    spans: Spans,
    doc_start: Option<Pos>,
    root: Option<(Value, usize, Pos)>,
    /// Anchor id -> (value, nodes in it), for the current document.
    anchors: HashMap<usize, (Value, usize)>,
    written: usize,
    expanded: usize,
    error: Option<(Pos, String, String)>,
}

/// Where a scanner mark is, as `file:line:col` readers count: lines end at
/// `\n` only. The scanner also ends a line at a lone `\r`, so for a text
/// that has one, `lines` holds the char index where each `\n` line starts
/// and the mark's char index is placed by it.
fn pos_of(lines: Option<&[usize]>, m: Marker) -> Pos {
    match lines {
        None => Pos { line: m.line(), col: m.col() + 1 },
        Some(starts) => {
            let line = starts.partition_point(|&s| s <= m.index()).max(1);
            Pos { line, col: m.index() - starts[line - 1] + 1 }
        }
    }
}

/// The `\n` line starts of `text` (char indices), if it has a `\r` that
/// does not end a `\r\n`; else `None` (the scanner's count is right).
fn lone_cr_lines(text: &str) -> Option<Vec<usize>> {
    let b = text.as_bytes();
    if !b.iter().enumerate().any(|(i, &c)| c == b'\r' && b.get(i + 1) != Some(&b'\n')) {
        return None;
    }
    let mut starts = vec![0];
    starts.extend(text.chars().enumerate().filter(|(_, c)| *c == '\n').map(|(i, _)| i + 1));
    Some(starts)
}

impl Builder {
    fn new(record: bool) -> Builder {
        Builder {
            record,
            lines: None,
            refused: false,
            done: None,
            roots: Vec::new(),
            items: HashMap::new(),
            stack: Vec::new(),
            spans: Spans::default(),
            doc_start: None,
            root: None,
            anchors: HashMap::new(),
            written: 0,
            expanded: 0,
            error: None,
        }
    }

    fn fail(&mut self, pos: Pos, message: String) {
        if self.error.is_none() {
            let path = if self.record { self.path() } else { String::new() };
            self.error = Some((pos, path, message));
            self.refused = !self.record;
        }
    }

    /// The field path of the node about to be produced (recording only:
    /// without it frames do not keep their names).
    fn path(&self) -> String {
        let mut p = String::new();
        for f in &self.stack[1.min(self.stack.len())..] {
            push_seg(&mut p, &f.seg);
        }
        if let Some(f) = self.stack.last() {
            match &f.kind {
                FrameKind::Seq(items) => p.push_str(&format!("[{}]", items.len())),
                FrameKind::Map { key: Some((k, _)), .. } => push_seg(&mut p, k),
                FrameKind::Map { key: None, .. } => {}
            }
        }
        p
    }

    /// A new span for the node about to be produced, attached to its parent
    /// (recording only), its name in the parent (recording only) and where
    /// it starts: a mapping value starts at its key.
    fn open(&mut self, pos: Pos) -> (usize, String, Pos) {
        let id = self.spans.nodes.len();
        let (at, seg) = match self.stack.last() {
            Some(Frame { kind: FrameKind::Map { key: Some((k, kpos)), .. }, .. }) => {
                (*kpos, if self.record { k.clone() } else { String::new() })
            }
            Some(Frame { kind: FrameKind::Seq(items), .. }) => {
                (pos, if self.record { format!("[{}]", items.len()) } else { String::new() })
            }
            _ => (pos, String::new()),
        };
        if !self.record {
            return (usize::MAX, seg, at);
        }
        self.spans.nodes.push(SpanNode { pos: at, kids: Kids::Leaf });
        if let Some(f) = self.stack.last() {
            let parent = f.span;
            match &mut self.spans.nodes[parent].kids {
                Kids::Map(entries) => entries.push((seg.clone(), id)),
                Kids::Seq(items) => items.push(id),
                Kids::Leaf => {}
            }
        }
        (id, seg, at)
    }

    /// Attach a finished node that starts at `start` to its parent (or make
    /// it the document root).
    fn push_value(&mut self, v: Value, anchor: usize, count: usize, span: usize, start: Pos) {
        if anchor != 0 {
            self.anchors.insert(anchor, (v.clone(), count));
        }
        // An item of a top-level sequence (`items[3]`): its start is kept
        // without recording, for `kind: List`.
        if let (false, [Frame { kind: FrameKind::Map { key: Some((k, _)), .. }, .. }, Frame { kind: FrameKind::Seq(items), .. }]) =
            (self.record, self.stack.as_slice())
        {
            self.items.insert(format!("{k}[{}]", items.len()), start);
        }
        match self.stack.last_mut() {
            None => self.root = Some((v, span, start)),
            Some(f) => {
                f.count += count;
                match &mut f.kind {
                    FrameKind::Seq(items) => items.push(v),
                    FrameKind::Map { map, key, merge_next, merges } => {
                        if std::mem::take(merge_next) {
                            merges.push(v);
                        } else if let Some((k, _)) = key.take() {
                            map.insert(k, v);
                        }
                        *key = None;
                    }
                }
            }
        }
    }

    /// A scalar (or alias) in key position: the key of the next entry.
    fn key(&mut self, text: String, pos: Pos, merge: bool) {
        let Some(Frame { span, start, kind: FrameKind::Map { map, key, merge_next, .. }, .. }) = self.stack.last_mut() else { return };
        // The parser marks a block mapping's start after its first key; the
        // first key's position is where it really starts.
        *start = (*start).min(pos);
        let span = *span;
        if let Some(n) = self.spans.nodes.get_mut(span) {
            n.pos = n.pos.min(pos);
        }
        if merge {
            *merge_next = true;
            *key = Some((text, pos));
            return;
        }
        if map.contains_key(&text) {
            let first = match self.spans.nodes.get(span).map(|n| &n.kids) {
                Some(Kids::Map(entries)) => entries.iter().find(|(k, _)| *k == text).map(|(_, id)| self.spans.nodes[*id].pos),
                _ => None,
            };
            let at = first.map(|p| format!(" (first at line {}, column {})", p.line, p.col)).unwrap_or_default();
            *key = Some((text.clone(), pos));
            return self.fail(pos, format!("duplicate key {text:?}{at}; a key may appear once in a mapping"));
        }
        *key = Some((text, pos));
    }

    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(self.lines.as_deref(), mark);
        let in_key = matches!(self.stack.last(), Some(Frame { kind: FrameKind::Map { key: None, .. }, .. }));
        match ev {
            Event::DocumentStart => {
                self.doc_start = Some(pos);
                self.root = None;
                self.anchors.clear();
            }
            Event::DocumentEnd => {
                let start = self.doc_start.take().unwrap_or(pos);
                let (value, root, start) = match self.root.take() {
                    Some((v, span, at)) => (v, (span != usize::MAX).then_some(span), start.min(at)),
                    None => (Value::Null, None, start),
                };
                if self.record {
                    self.roots.push(root);
                }
                let items = std::mem::take(&mut self.items);
                self.done = Some(Built { value, start, items });
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.written += 1;
                if in_key {
                    let merge = text == "<<" && style == TScalarStyle::Plain && tag.is_none();
                    return self.key(text, pos, merge);
                }
                let (span, _, at) = self.open(pos);
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let v = if style == TScalarStyle::Plain && !is_str_tag { plain_scalar(&text) } else { Value::String(text) };
                self.push_value(v, anchor, 1, span, at);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.written += 1;
                let is_seq = matches!(ev, Event::SequenceStart(..));
                if in_key {
                    let what = if is_seq { "sequence" } else { "mapping" };
                    return self.fail(pos, format!("a {what} cannot be a mapping key"));
                }
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(pos, format!("nested deeper than {MAX_DEPTH} levels (netfence's limit)"));
                }
                let (span, seg, start) = self.open(pos);
                if let Some(n) = self.spans.nodes.get_mut(span) {
                    n.kids = if is_seq { Kids::Seq(Vec::new()) } else { Kids::Map(Vec::new()) };
                }
                let kind = if is_seq {
                    FrameKind::Seq(Vec::new())
                } else {
                    FrameKind::Map { map: Map::new(), key: None, merge_next: false, merges: Vec::new() }
                };
                self.stack.push(Frame { span, start, anchor, count: 1, seg, kind });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Frame { start, kind: FrameKind::Map { merges, .. }, .. }) = self.stack.last() {
                    let sources = merges.iter().flat_map(|m| m.as_array().map_or(std::slice::from_ref(m), Vec::as_slice));
                    if sources.clone().any(|m| !m.is_object()) {
                        let at = *start;
                        return self.fail(at, "`<<` merges mappings: its value must be a mapping or a list of them".into());
                    }
                }
                let Some(f) = self.stack.pop() else { return };
                let v = match f.kind {
                    FrameKind::Seq(items) => Value::Array(items),
                    FrameKind::Map { mut map, merges, .. } => {
                        // YAML 1.1 merge keys (`<<: *defaults`), which
                        // Kubernetes' YAML decoder honours: keys written in
                        // the mapping win, then earlier sources.
                        for m in &merges {
                            for src in m.as_array().map_or(std::slice::from_ref(m), Vec::as_slice) {
                                for (k, v) in src.as_object().into_iter().flatten() {
                                    map.entry(k.clone()).or_insert_with(|| v.clone());
                                }
                            }
                        }
                        Value::Object(map)
                    }
                };
                self.push_value(v, f.anchor, f.count, f.span, f.start);
            }
            Event::Alias(id) => {
                let Some((v, count)) = self.anchors.get(&id).cloned() else {
                    return self.fail(pos, "alias to an anchor of another document (anchors are per document)".into());
                };
                self.expanded += count;
                let budget = ALIAS_BASE + ALIAS_RATIO * self.written;
                if self.expanded > budget {
                    return self.fail(
                        pos,
                        format!("aliases expand this stream to over {budget} nodes (a \"billion laughs\" document?): write the repeated part out"),
                    );
                }
                if in_key {
                    let text = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    return self.key(text, pos, false);
                }
                let (span, _, at) = self.open(pos);
                self.push_value(v, 0, count, span, at);
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

fn push_seg(p: &mut String, seg: &str) {
    if !p.is_empty() && !seg.starts_with('[') {
        p.push('.');
    }
    p.push_str(seg);
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
    fn a_lone_carriage_return_does_not_end_a_line() {
        // The scanner ends a line at a lone CR; `file:line:col` readers do not.
        let docs = parse("#c\n\r \nkind: x\nspec:\n  a: {b c: 1}\n").unwrap();
        assert_eq!(docs[0].pos("spec.a.b c"), Pos { line: 5, col: 7 });
        let e = parse("a: 1\rb: [").unwrap_err();
        assert_eq!(e.pos.line, 1, "{e}");
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

    fn check_err(text: &str, at: (usize, usize), path: &str, msg: &str) {
        let e = parse(text).unwrap_err();
        assert_eq!(((e.pos.line, e.pos.col), e.path.as_str()), (at, path), "{e}");
        assert!(e.message.contains(msg), "{e}");
    }

    /// "Billion laughs": nine levels of ten aliases would be 10^9 nodes.
    #[test]
    fn alias_expansion_is_bounded() {
        let mut bomb = String::from("l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n");
        for i in 1..=9 {
            bomb.push_str(&format!("l{i}: &l{i} [{}]\n", vec![format!("*l{}", i - 1); 10].join(", ")));
        }
        // Refused at the alias that crosses the budget: the ninth of l3 (10,000
        // + 10 per node written; l0 to l2 and eight aliases of l2 fit).
        check_err(&bomb, (4, 50), "l3[8]", "billion laughs");
        // Sharing a label map among many objects is what aliases are for.
        let mut shared = String::from("labels: &l {app: web, tier: front}\npods:\n");
        for i in 0..3000 {
            shared.push_str(&format!("- {{name: p{i}, labels: *l}}\n"));
        }
        let docs = parse(&shared).unwrap();
        assert_eq!(docs[0].value["pods"][2999]["labels"]["tier"], "front");
    }

    #[test]
    fn nesting_is_bounded_and_never_overflows_the_stack() {
        let deep = |n: usize| format!("a:\n{}x\n", "- ".repeat(n));
        // `a` plus MAX_DEPTH - 1 sequences: as deep as allowed.
        assert!(parse(&deep(MAX_DEPTH - 1)).is_ok());
        check_err(&deep(MAX_DEPTH), (2, 2 * MAX_DEPTH - 1), &format!("a{}", "[0]".repeat(MAX_DEPTH - 1)), "deeper than 256");
        // Far deeper, in block and flow style: refused, not a stack overflow.
        assert!(parse(&deep(200_000)).is_err());
        assert!(parse(&format!("a: {}{}\n", "[".repeat(200_000), "]".repeat(200_000))).is_err());
    }

    #[test]
    fn duplicate_keys_are_refused() {
        check_err("kind: Namespace\nmetadata:\n  name: x\n  name: y\n", (4, 3), "metadata.name", "duplicate key \"name\" (first at line 3, column 3)");
        check_err("metadata: {name: x, name: y}\n", (1, 21), "metadata.name", "duplicate key");
        check_err("items:\n- a: 1\n  a: 2\n", (3, 3), "items[0].a", "duplicate key");
        // The same key in different mappings or documents is fine.
        assert!(parse("a: {k: 1}\nb: {k: 2}\n---\na: 3\n").is_ok());
    }

    #[test]
    fn merge_keys() {
        let docs = parse("base: &b {app: web, tier: a}\nlabels:\n  <<: *b\n  tier: b\nboth:\n  <<: [*b, {x: y}]\n").unwrap();
        assert_eq!(docs[0].value["labels"], serde_json::json!({"app": "web", "tier": "b"}));
        assert_eq!(docs[0].value["both"], serde_json::json!({"app": "web", "tier": "a", "x": "y"}));
        // A quoted "<<" is an ordinary key.
        assert_eq!(parse("\"<<\": 1\n").unwrap()[0].value, serde_json::json!({"<<": 1}));
        check_err("a:\n  <<: [1]\n", (1, 1), "a", "`<<` merges mappings");
    }

    #[test]
    fn aliases_do_not_cross_documents() {
        check_err("a: &x 1\n---\nb: *x\n", (3, 4), "b", "another document");
    }

    #[test]
    fn errors_at_the_end_of_input_stay_inside_the_text() {
        for text in [":\n!", "a: [1,", "a: \"x", "a: [1,\n", "a: {b: 1\n\n"] {
            let e = parse(text).unwrap_err();
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(e.pos.line <= lines.len() && e.pos.col <= lines[e.pos.line - 1].chars().count() + 1, "{text:?}: {e}");
        }
    }

    #[test]
    fn keys_with_dots_and_brackets() {
        let text = "matchLabels:\n  app.kubernetes.io/name: web\n  a[0]: x\n  a: {b: 1}\n";
        check_pos(text, "matchLabels.app.kubernetes.io/name", 2, 3);
        check_pos(text, "matchLabels.a[0]", 3, 3);
        check_pos(text, "matchLabels.a.b", 4, 7);
        check_pos(text, "matchLabels.nope.deeper", 1, 1);
    }

    /// Sub-documents share their positions: a `kind: List` of n items costs
    /// O(n), where copying each item's positions out cost O(n²) (a 4000-pod
    /// `kubectl get -o yaml` took 107 s to load).
    #[test]
    fn sub_documents_share_positions() {
        let mut text = String::from("items:\n");
        for i in 0..20_000 {
            text.push_str(&format!("- {{name: p{i}, labels: {{app: a}}}}\n"));
        }
        let docs = parse(&text).unwrap();
        let items = docs[0].value["items"].as_array().unwrap();
        for (i, item) in items.iter().enumerate() {
            let sub = docs[0].sub(&format!("items[{i}]"), item.clone());
            assert!(Arc::ptr_eq(&sub.source, &docs[0].source));
            assert_eq!(sub.pos("labels.app"), Pos { line: i + 2, col: 22 + i.to_string().len() });
        }
        assert_eq!(docs[0].sub("items[20000]", Value::Null).pos("x"), Pos { line: 1, col: 1 });
    }
}
