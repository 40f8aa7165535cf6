//! A transaction: the list of operations that takes the kernel's table from
//! one program to the next, applied atomically (one netlink batch).
//!
//! Operations are data, in the spirit of knftables: they can be counted,
//! inspected by tests ("a pod add is only element operations"), printed as
//! the exact `nft -f` script (`Display`, one operation per line so that nft's
//! `file:line` error points at the operation) and rendered as libnftables
//! JSON ([`super::json`]).

use std::fmt;

use super::program::{
    braced, limit_spec, map_element, render_element, BaseHook, Element, KeyType, Limit, Program, Rule, Verdict,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Tables are named in their operations: the last transaction of a
    /// staged cold start deletes one table and hooks another.
    AddTable { table: String },
    DeleteTable { table: String },
    AddSet { name: String, key: KeyType, interval: bool },
    DeleteSet { name: String },
    AddMap { name: String, key: KeyType },
    DeleteMap { name: String },
    AddLimit { limit: Limit },
    DeleteLimit { name: String },
    AddChain { name: String, base: Option<BaseHook> },
    FlushChain { name: String },
    DeleteChain { name: String },
    AddRule { chain: String, rule: Rule },
    AddElements { set: String, elements: Vec<Element> },
    DeleteElements { set: String, elements: Vec<Element> },
    AddMapElements { map: String, elements: Vec<(Element, Verdict)> },
    DeleteMapElements { map: String, keys: Vec<Element> },
}

impl Op {
    /// Adds or deletes set or map elements: the only kind of operation pod
    /// churn should cause.
    pub fn is_element_op(&self) -> bool {
        matches!(
            self,
            Op::AddElements { .. } | Op::DeleteElements { .. } | Op::AddMapElements { .. } | Op::DeleteMapElements { .. }
        )
    }

    /// How many elements (or rules) the operation carries: what a bounded
    /// transaction counts.
    pub fn weight(&self) -> usize {
        match self {
            Op::AddElements { elements, .. } | Op::DeleteElements { elements, .. } => elements.len(),
            Op::AddMapElements { elements, .. } => elements.len(),
            Op::DeleteMapElements { keys, .. } => keys.len(),
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    pub table: String,
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn new(table: &str) -> Transaction {
        Transaction { table: table.to_string(), ops: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Append `op`; an element operation without elements is dropped
    /// (nft refuses an empty `{ }`, and it would change nothing).
    pub fn push(&mut self, op: Op) {
        if op.is_element_op() && op.weight() == 0 {
            return;
        }
        self.ops.push(op);
    }

    /// The operations that create `p` in a table that does not exist yet:
    /// declarations first (so every reference resolves whatever the order
    /// of names), then elements, then rules.
    pub fn create(p: &Program) -> Transaction {
        let mut tx = Transaction::new(&p.table);
        tx.push(Op::AddTable { table: p.table.clone() });
        tx.declare_all(p, |_| true);
        tx.fill_all(p, |_| true);
        tx
    }

    /// Declarations of the sets, maps and chains of `p` (chains for which
    /// `chains` holds).
    pub(crate) fn declare_all(&mut self, p: &Program, chains: impl Fn(&super::Chain) -> bool) {
        for l in p.limits.values() {
            self.push(Op::AddLimit { limit: l.clone() });
        }
        for s in p.sets.values() {
            self.push(Op::AddSet { name: s.name.clone(), key: s.key, interval: s.interval });
        }
        for m in p.maps.values() {
            self.push(Op::AddMap { name: m.name.clone(), key: m.key });
        }
        for c in p.chains.values().filter(|c| chains(c)) {
            self.push(Op::AddChain { name: c.name.clone(), base: c.base });
        }
    }

    /// Elements of every set and map, then the rules of the chains for
    /// which `chains` holds.
    pub(crate) fn fill_all(&mut self, p: &Program, chains: impl Fn(&super::Chain) -> bool) {
        for s in p.sets.values().filter(|s| !s.elements.is_empty()) {
            self.push(Op::AddElements { set: s.name.clone(), elements: s.elements.iter().copied().collect() });
        }
        for m in p.maps.values().filter(|m| !m.elements.is_empty()) {
            self.push(Op::AddMapElements {
                map: m.name.clone(),
                elements: m.elements.iter().map(|(k, v)| (*k, v.clone())).collect(),
            });
        }
        for c in p.chains.values().filter(|c| chains(c)) {
            for r in &c.rules {
                self.push(Op::AddRule { chain: c.name.clone(), rule: r.clone() });
            }
        }
    }

    /// Only set and map element operations (the promise for pod churn).
    pub fn only_elements(&self) -> bool {
        self.ops.iter().all(Op::is_element_op)
    }
}

/// One operation as a line of an `nft -f` script.
pub struct OpLine<'a> {
    pub table: &'a str,
    pub op: &'a Op,
}

impl fmt::Display for OpLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.table;
        match self.op {
            Op::AddTable { table } => write!(f, "add table inet {table}"),
            Op::DeleteTable { table } => write!(f, "delete table inet {table}"),
            Op::AddSet { name, key, interval } => {
                let flags = if *interval { " flags interval;" } else { "" };
                write!(f, "add set inet {t} {name} {{ type {};{flags} }}", super::program::key_type_name(*key))
            }
            Op::DeleteSet { name } => write!(f, "delete set inet {t} {name}"),
            Op::AddMap { name, key } => {
                write!(f, "add map inet {t} {name} {{ type {} : verdict; }}", super::program::key_type_name(*key))
            }
            Op::DeleteMap { name } => write!(f, "delete map inet {t} {name}"),
            Op::AddLimit { limit } => write!(f, "add limit inet {t} {} {{ {}; }}", limit.name, limit_spec(limit)),
            Op::DeleteLimit { name } => write!(f, "delete limit inet {t} {name}"),
            Op::AddChain { name, base: None } => write!(f, "add chain inet {t} {name}"),
            Op::AddChain { name, base: Some(b) } => write!(f, "add chain inet {t} {name} {{ {b} }}"),
            Op::FlushChain { name } => write!(f, "flush chain inet {t} {name}"),
            Op::DeleteChain { name } => write!(f, "delete chain inet {t} {name}"),
            Op::AddRule { chain, rule } => write!(f, "add rule inet {t} {chain} {rule}"),
            Op::AddElements { set, elements } => {
                write!(f, "add element inet {t} {set} {}", braced(elements.iter().map(render_element)))
            }
            Op::DeleteElements { set, elements } => {
                write!(f, "delete element inet {t} {set} {}", braced(elements.iter().map(render_element)))
            }
            Op::AddMapElements { map, elements } => {
                write!(f, "add element inet {t} {map} {}", braced(elements.iter().map(|(k, v)| map_element(k, v))))
            }
            Op::DeleteMapElements { map, keys } => {
                write!(f, "delete element inet {t} {map} {}", braced(keys.iter().map(render_element)))
            }
        }
    }
}

impl fmt::Display for Transaction {
    /// The `nft -f` script: line `i + 1` is operation `i`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            writeln!(f, "{}", OpLine { table: &self.table, op })?;
        }
        Ok(())
    }
}
