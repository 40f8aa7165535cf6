//! Transactions into the kernel: the only code that touches nftables.
//!
//! One trait, two implementations. [`NftKernel`] hands a transaction to
//! `nft` as one atomic batch in the current network namespace; [`FakeKernel`]
//! applies it atomically in memory with the kernel's refusals (a jump or
//! `@set` to something missing, a delete of something absent or still in
//! use), so most tests need no root. Either way a failed transaction leaves
//! the previous state exactly as it was, and the error says which operation
//! failed and why, as data the caller can branch on.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::nft::counters::{counts_from_json, RuleCount};
use crate::nft::program::{
    check_overlaps, element_fits, render_element, Action, AddrMatch, Chain, Element, Match, Program, ValidationError, Verdict,
};
use crate::nft::transaction::{Op, OpLine, Transaction};

pub trait Kernel {
    /// Apply `tx` atomically: all of it, or nothing and an error.
    fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError>;
    /// Names of the `inet` tables that exist: cheap (no contents), what a
    /// staged start needs to know which of our two tables is live.
    fn table_names(&mut self) -> Result<Vec<String>, ApplyError>;
}

/// Why the kernel refused an operation, as errno classes: what a caller can
/// act on (`NotFound` after a restart means our picture of the table is
/// stale, so rebuild it whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// ENOENT: the table, chain, set, map or element does not exist.
    NotFound,
    /// EEXIST: it exists with another declaration, or an element conflicts.
    Exists,
    /// EBUSY: still referenced, or a chain still has rules.
    Busy,
    /// ELOOP: jumps would loop.
    Loop,
    /// EINVAL/EOPNOTSUPP and everything else.
    Invalid,
}

impl Reason {
    /// Classify nft's error text (the strerror of the netlink error).
    pub(crate) fn from_message(m: &str) -> Reason {
        if m.contains("No such file or directory") {
            Reason::NotFound
        } else if m.contains("File exists") || m.contains("conflicting intervals") {
            Reason::Exists
        } else if m.contains("Device or resource busy") {
            Reason::Busy
        } else if m.contains("Too many levels of symbolic links") {
            Reason::Loop
        } else {
            Reason::Invalid
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::NotFound => "not found",
            Reason::Exists => "already exists or conflicts",
            Reason::Busy => "still in use",
            Reason::Loop => "jump loop",
            Reason::Invalid => "invalid",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot run {program:?}: {source} (is nftables installed?)")]
    NftMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The transaction was refused and nothing of it applied. `op` is the
    /// index of the failing operation when it could be located, `op_text`
    /// that operation as an `nft -f` line.
    #[error("{}", rejected(*.op, .op_text.as_deref(), *.reason, .message))]
    Rejected { op: Option<usize>, op_text: Option<String>, reason: Reason, message: String },
    #[error("talking to nft: {0}")]
    Io(#[from] std::io::Error),
    #[error("refused before reaching the kernel: {0}")]
    Invalid(#[from] ValidationError),
}

fn rejected(op: Option<usize>, text: Option<&str>, reason: Reason, message: &str) -> String {
    match (op, text) {
        (Some(i), Some(t)) => format!("operation {i} `{t}` refused ({reason}): {message}"),
        (Some(i), None) => format!("operation {i} refused ({reason}): {message}"),
        _ => format!("transaction refused ({reason}): {message}"),
    }
}

impl ApplyError {
    pub(crate) fn at(tx: &Transaction, i: usize, reason: Reason, message: impl Into<String>) -> ApplyError {
        ApplyError::Rejected {
            op: Some(i),
            op_text: tx.ops.get(i).map(|op| OpLine { table: &tx.table, op }.to_string()),
            reason,
            message: message.into(),
        }
    }

    /// The failing operation's index, when known.
    pub fn op(&self) -> Option<usize> {
        match self {
            ApplyError::Rejected { op, .. } => *op,
            _ => None,
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        match self {
            ApplyError::Rejected { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// The real kernel.

/// `nft` as a child process: one process, one netlink batch, per
/// transaction. The JSON form is what is sent (typed, no parsing
/// ambiguity); when nft refuses it, the same transaction is checked again in
/// its text form (`nft -c`, which commits nothing) because only that form
/// gets a `file:line` in nft's error, and line `i + 1` is operation `i`.
///
/// The `nftables` crate's `apply_ruleset` helper is not used: it lets nft's
/// stderr go to ours, so the refusal could be neither located nor
/// classified.
#[derive(Debug, Clone)]
pub struct NftKernel {
    /// The command that runs nft: `["nft"]`, or a prefix such as
    /// `["ip", "netns", "exec", NAME, "nft"]` for tests.
    argv: Vec<OsString>,
}

impl Default for NftKernel {
    fn default() -> Self {
        NftKernel { argv: vec!["nft".into()] }
    }
}

impl NftKernel {
    pub fn new() -> NftKernel {
        NftKernel::default()
    }

    /// Run nft through another command line (its last word is nft).
    pub fn with_command<I: IntoIterator<Item = S>, S: Into<OsString>>(argv: I) -> NftKernel {
        NftKernel { argv: argv.into_iter().map(Into::into).collect() }
    }

    /// nft inside the named network namespace (`ip netns exec`).
    pub fn in_netns(name: &str) -> NftKernel {
        NftKernel::with_command(["ip", "netns", "exec", name, "nft"])
    }

    /// Run nft with `args`, `input` on stdin; stdout on success.
    fn run(&self, args: &[&str], input: &str) -> Result<Result<String, String>, ApplyError> {
        let (prog, rest) = self.argv.split_first().expect("argv is never empty");
        let mut child = Command::new(prog)
            .args(rest)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ApplyError::NftMissing { program: prog.to_string_lossy().into_owned(), source: e })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A write error (nft died early) shows up in its exit status.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()))
        } else {
            Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()))
        }
    }

    /// The table as the kernel has it (`nft -j list table`), parsed back
    /// into a program. For verification only: at scale this is slow, so the
    /// sync path never calls it.
    pub fn read_table(&self, table: &str) -> Result<Option<Program>, ApplyError> {
        match self.run(&["-j", "list", "table", "inet", table], "")? {
            Ok(json) => {
                let v: serde_json::Value = serde_json::from_str(&json)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let p = crate::nft::json::program_from_json(&v)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                Ok(Some(p))
            }
            Err(e) if Reason::from_message(&e) == Reason::NotFound => Ok(None),
            Err(e) => Err(ApplyError::Rejected { op: None, op_text: None, reason: Reason::from_message(&e), message: first_error(&e) }),
        }
    }

    /// The counters of table `table`'s rules (`nft -j -t list table`: chains
    /// and rules, no set or map elements, so the cost grows with rules, not
    /// with pods). `Ok(None)` when the table does not exist.
    pub fn rule_counts(&self, table: &str) -> Result<Option<Vec<RuleCount>>, ApplyError> {
        match self.run(&["-j", "-t", "list", "table", "inet", table], "")? {
            Ok(json) => {
                let v: serde_json::Value = serde_json::from_str(&json)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let counts = counts_from_json(&v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                Ok(Some(counts))
            }
            Err(e) if Reason::from_message(&e) == Reason::NotFound => Ok(None),
            Err(e) => Err(ApplyError::Rejected { op: None, op_text: None, reason: Reason::from_message(&e), message: first_error(&e) }),
        }
    }

    /// Apply `tx` in nft's text form (`nft -f -`) rather than JSON: one
    /// transaction all the same, and a refusal names its line, hence its
    /// operation, from this one call.
    pub fn apply_text(&self, tx: &Transaction) -> Result<(), ApplyError> {
        if tx.is_empty() {
            return Ok(());
        }
        match self.run(&["-f", "-"], &tx.to_string())? {
            Ok(_) => Ok(()),
            Err(stderr) => Err(locate(tx, &stderr)),
        }
    }

    /// Whether nft accepts the transaction, without committing it
    /// (`nft -c -f -`, text form). Used to locate a refusal.
    pub fn check(&self, tx: &Transaction) -> Result<(), ApplyError> {
        match self.run(&["-c", "-f", "-"], &tx.to_string())? {
            Ok(_) => Ok(()),
            Err(stderr) => Err(locate(tx, &stderr)),
        }
    }
}

impl Kernel for NftKernel {
    fn table_names(&mut self) -> Result<Vec<String>, ApplyError> {
        match self.run(&["-j", "list", "tables", "inet"], "")? {
            Ok(json) => {
                let v: serde_json::Value = serde_json::from_str(&json)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let items = v["nftables"].as_array().cloned().unwrap_or_default();
                Ok(items.iter().filter_map(|i| i["table"]["name"].as_str().map(String::from)).collect())
            }
            Err(stderr) => Err(ApplyError::Rejected {
                op: None,
                op_text: None,
                reason: Reason::from_message(&stderr),
                message: first_error(&stderr),
            }),
        }
    }

    fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        if tx.is_empty() {
            return Ok(());
        }
        let json = crate::nft::json::transaction_to_json(tx).to_string();
        match self.run(&["-j", "-f", "-"], &json)? {
            Ok(_) => Ok(()),
            Err(stderr) => {
                tracing::debug!(%stderr, "nft refused a transaction; locating the operation");
                match self.check(tx) {
                    Err(located @ ApplyError::Rejected { op: Some(_), .. }) => Err(located),
                    _ => Err(ApplyError::Rejected {
                        op: None,
                        op_text: None,
                        reason: Reason::from_message(&stderr),
                        message: first_error(&stderr),
                    }),
                }
            }
        }
    }
}

/// The first `Error:` line of nft's stderr, without its location prefix.
fn first_error(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.split_once("Error: ").map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| stderr.trim().to_string())
}

/// `/dev/stdin:5:24-30: Error: ...`: line 5 is operation 4.
fn locate(tx: &Transaction, stderr: &str) -> ApplyError {
    let reason = Reason::from_message(stderr);
    let message = first_error(stderr);
    let line = stderr.lines().find(|l| l.contains("Error: ")).and_then(|l| l.split(':').nth(1)?.parse::<usize>().ok());
    match line {
        Some(n) if n >= 1 && n <= tx.len() => ApplyError::at(tx, n - 1, reason, message),
        _ => ApplyError::Rejected { op: None, op_text: None, reason, message },
    }
}

// ---------------------------------------------------------------------------
// The fake kernel.

/// Tables in memory, changed by transactions with the kernel's rules: all
/// or nothing, references checked at each operation, deletes of absent or
/// still-used objects refused.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    tables: BTreeMap<String, Program>,
    /// Transactions applied (empty ones count: the real kernel would have
    /// been called for them only if the caller did not skip them).
    pub applied: usize,
    fail_next: Option<Reason>,
    /// Rule handles by table and chain, in rule order, allocated as the
    /// kernel does (a new one for every rule added, never reused while the
    /// table lives), and the counters behind them.
    handles: BTreeMap<String, BTreeMap<String, Vec<u64>>>,
    next_handle: u64,
    counters: BTreeMap<u64, (u64, u64)>,
}

impl FakeKernel {
    /// A kernel that already holds `p`.
    pub fn with(p: Program) -> FakeKernel {
        let mut k = FakeKernel::default();
        let mut handles = BTreeMap::new();
        for (name, chain) in &p.chains {
            let h: Vec<u64> = (k.next_handle + 1..=k.next_handle + chain.rules.len() as u64).collect();
            k.next_handle += chain.rules.len() as u64;
            handles.insert(name.clone(), h);
        }
        k.handles.insert(p.table.clone(), handles);
        k.tables.insert(p.table.clone(), p);
        k
    }

    pub fn table(&self, name: &str) -> Option<&Program> {
        self.tables.get(name)
    }

    pub fn tables(&self) -> impl Iterator<Item = &Program> {
        self.tables.values()
    }

    /// Refuse the next transaction with `reason` (at its first operation),
    /// for testing what callers do when the kernel says no.
    pub fn fail_next(&mut self, reason: Reason) {
        self.fail_next = Some(reason);
    }

    /// Count `packets` (and `bytes`) on the rule at `position` of `chain`,
    /// as traffic would; false if there is no such rule.
    pub fn count(&mut self, table: &str, chain: &str, position: usize, packets: u64, bytes: u64) -> bool {
        let Some(&handle) = self.handles.get(table).and_then(|t| t.get(chain)).and_then(|c| c.get(position)) else {
            return false;
        };
        let c = self.counters.entry(handle).or_default();
        *c = (c.0 + packets, c.1 + bytes);
        true
    }

    /// [`NftKernel::rule_counts`] of the fake.
    pub fn rule_counts(&self, table: &str) -> Option<Vec<RuleCount>> {
        let p = self.tables.get(table)?;
        let handles = self.handles.get(table);
        let mut out = Vec::new();
        for (name, chain) in &p.chains {
            for (position, _) in chain.rules.iter().enumerate().filter(|(_, r)| r.counter) {
                let handle = handles.and_then(|t| t.get(name)).and_then(|c| c.get(position)).copied().unwrap_or_default();
                let (packets, bytes) = self.counters.get(&handle).copied().unwrap_or_default();
                out.push(RuleCount { chain: name.clone(), position, handle, packets, bytes });
            }
        }
        Some(out)
    }

    /// Follow an applied transaction's rule additions and removals.
    fn track_handles(&mut self, tx: &Transaction) {
        for op in &tx.ops {
            match op {
                Op::AddTable { table } => {
                    self.handles.entry(table.clone()).or_default();
                }
                Op::DeleteTable { table } => {
                    self.handles.remove(table);
                }
                Op::FlushChain { name } | Op::DeleteChain { name } => {
                    if let Some(t) = self.handles.get_mut(&tx.table) {
                        t.remove(name);
                    }
                }
                Op::AddRule { chain, .. } => {
                    self.next_handle += 1;
                    self.handles.entry(tx.table.clone()).or_default().entry(chain.clone()).or_default().push(self.next_handle);
                }
                _ => {}
            }
        }
        let live: std::collections::BTreeSet<u64> = self.handles.values().flat_map(|t| t.values().flatten().copied()).collect();
        self.counters.retain(|h, _| live.contains(h));
    }
}

impl Kernel for FakeKernel {
    fn table_names(&mut self) -> Result<Vec<String>, ApplyError> {
        Ok(self.tables.keys().cloned().collect())
    }

    fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        if let Some(reason) = self.fail_next.take() {
            return Err(ApplyError::at(tx, 0, reason, "injected failure"));
        }
        let mut tables = self.tables.clone();
        for (i, op) in tx.ops.iter().enumerate() {
            apply_op(&mut tables, &tx.table, op).map_err(|(reason, m)| ApplyError::at(tx, i, reason, m))?;
        }
        self.tables = tables;
        self.track_handles(tx);
        self.applied += 1;
        Ok(())
    }
}

type OpResult = Result<(), (Reason, String)>;

fn apply_op(tables: &mut BTreeMap<String, Program>, table: &str, op: &Op) -> OpResult {
    let missing = |what: &str, name: &str| Err((Reason::NotFound, format!("{what} {name:?} does not exist")));
    match op {
        Op::AddTable { table } => {
            tables.entry(table.clone()).or_insert_with(|| Program::new(table));
            return Ok(());
        }
        Op::DeleteTable { table } => {
            return match tables.remove(table) {
                Some(_) => Ok(()),
                None => missing("table", table),
            }
        }
        _ => {}
    }
    let Some(p) = tables.get_mut(table) else { return missing("table", table) };
    match op {
        Op::AddTable { .. } | Op::DeleteTable { .. } => unreachable!("handled above"),
        Op::AddSet { name, key, interval } => {
            if p.maps.contains_key(name) {
                return Err((Reason::Exists, format!("{name:?} is a map")));
            }
            match p.sets.get(name) {
                Some(s) if s.key == *key && s.interval == *interval => {}
                Some(_) => return Err((Reason::Exists, format!("set {name:?} exists with another type"))),
                None => p.add_set(crate::nft::Set { name: name.clone(), key: *key, interval: *interval, elements: Default::default() }),
            }
        }
        Op::DeleteSet { name } => {
            if !p.sets.contains_key(name) {
                return missing("set", name);
            }
            if let Some(c) = p.chains.values().find(|c| chain_uses_set(c, name)) {
                return Err((Reason::Busy, format!("set {name:?} is used by chain {:?}", c.name)));
            }
            p.sets.remove(name);
        }
        Op::AddMap { name, key } => {
            if p.sets.contains_key(name) {
                return Err((Reason::Exists, format!("{name:?} is a set")));
            }
            match p.maps.get(name) {
                Some(m) if m.key == *key => {}
                Some(_) => return Err((Reason::Exists, format!("map {name:?} exists with another type"))),
                None => p.add_map(crate::nft::Map { name: name.clone(), key: *key, elements: Default::default() }),
            }
        }
        Op::DeleteMap { name } => {
            if !p.maps.contains_key(name) {
                return missing("map", name);
            }
            let used = p.chains.values().find(|c| c.rules.iter().any(|r| matches!(&r.action, Action::Vmap { map, .. } if map == name)));
            if let Some(c) = used {
                return Err((Reason::Busy, format!("map {name:?} is used by chain {:?}", c.name)));
            }
            p.maps.remove(name);
        }
        Op::AddChain { name, base } => match p.chains.get(name) {
            Some(c) if c.base == *base => {}
            Some(_) => return Err((Reason::Exists, format!("chain {name:?} exists with another hook"))),
            None => p.add_chain(Chain { name: name.clone(), base: *base, rules: Vec::new() }),
        },
        Op::FlushChain { name } => match p.chains.get_mut(name) {
            Some(c) => c.rules.clear(),
            None => return missing("chain", name),
        },
        Op::AddLimit { limit } => match p.limits.get(&limit.name) {
            Some(l) if l == limit => {}
            Some(_) => return Err((Reason::Exists, format!("limit {:?} exists with another rate", limit.name))),
            None => p.add_limit(limit.clone()),
        },
        Op::DeleteLimit { name } => {
            if !p.limits.contains_key(name) {
                return missing("limit", name);
            }
            let named = |c: &&Chain| c.rules.iter().any(|r| r.matches.iter().any(|m| matches!(m, Match::Limit(l) if l == name)));
            if let Some(c) = p.chains.values().find(named) {
                return Err((Reason::Busy, format!("limit {name:?} is used by chain {:?}", c.name)));
            }
            p.limits.remove(name);
        }
        Op::DeleteChain { name } => {
            let Some(c) = p.chains.get(name) else { return missing("chain", name) };
            if !c.rules.is_empty() {
                return Err((Reason::Busy, format!("chain {name:?} still has rules")));
            }
            let jumped = p.chains.values().any(|c| p.jump_targets(c).any(|t| t == name))
                || p.maps.values().any(|m| m.elements.values().any(|v| *v == Verdict::Jump(name.clone())));
            if jumped {
                return Err((Reason::Busy, format!("chain {name:?} is still jumped to")));
            }
            p.chains.remove(name);
        }
        Op::AddRule { chain, rule } => {
            let Some(c) = p.chains.get(chain) else { return missing("chain", chain) };
            let at = c.rules.len();
            p.check_rule(c, at, rule).map_err(refusal)?;
            p.chains.get_mut(chain).expect("checked").rules.push(rule.clone());
            p.check_loops().map_err(refusal)?;
        }
        Op::AddElements { set, elements } => {
            let Some(s) = p.sets.get_mut(set) else { return missing("set", set) };
            if let Some(e) = elements.iter().find(|e| !element_fits(e, s.key, s.interval)) {
                return Err((Reason::Invalid, format!("{} does not fit set {set:?}", render_element(e))));
            }
            s.elements.extend(elements.iter().copied());
            if s.interval {
                check_overlaps(s).map_err(refusal)?;
            }
        }
        Op::DeleteElements { set, elements } => {
            let Some(s) = p.sets.get_mut(set) else { return missing("set", set) };
            for e in elements {
                if !s.elements.remove(e) {
                    return Err(missing_element(set, e));
                }
            }
        }
        Op::AddMapElements { map, elements } => {
            let Some(m) = p.maps.get(map) else { return missing("map", map) };
            for (k, v) in elements {
                if m.elements.get(k).is_some_and(|old| old != v) {
                    return Err((Reason::Exists, format!("map {map:?} already maps {}", render_element(k))));
                }
            }
            p.maps.get_mut(map).expect("checked").elements.extend(elements.iter().cloned());
            // The map's own checks (key types, jump targets, loops).
            p.validate().map_err(refusal)?;
        }
        Op::DeleteMapElements { map, keys } => {
            let Some(m) = p.maps.get_mut(map) else { return missing("map", map) };
            for k in keys {
                if m.elements.remove(k).is_none() {
                    return Err(missing_element(map, k));
                }
            }
        }
    }
    Ok(())
}

fn missing_element(set: &str, e: &Element) -> (Reason, String) {
    (Reason::NotFound, format!("{set:?} has no element {}", render_element(e)))
}

fn refusal(e: ValidationError) -> (Reason, String) {
    let reason = match &e {
        ValidationError::Dangling { .. } | ValidationError::DanglingMapJump { .. } => Reason::NotFound,
        ValidationError::Overlap { .. } => Reason::Exists,
        ValidationError::Loop { .. } => Reason::Loop,
        _ => Reason::Invalid,
    };
    (reason, e.to_string())
}

fn chain_uses_set(c: &Chain, name: &str) -> bool {
    c.rules.iter().flat_map(|r| &r.matches).any(|m| match m {
        Match::Addr { rhs: AddrMatch::Set(s), .. } | Match::NamedPort { set: s, .. } | Match::AddrPair { set: s, .. } => s == name,
        _ => false,
    })
}

// ---------------------------------------------------------------------------
// Bounded cold start.

/// The transactions that build `program` under its own table name while
/// `live` (another table, if any) keeps enforcing, none carrying more than
/// `batch` elements or rules, except the last, which is small whatever the
/// size of the program: it deletes `live` and adds the base chains of the
/// new table.
///
/// nftables cannot rename a table and a rule cannot refer to another
/// table's set, so a large table cannot be filled in batches under the name
/// of the one it replaces. It is filled under the other of two names the
/// agent owns, with its base chains (the only things netfilter runs) left
/// out until the end: until then it is never consulted, and a failure
/// half-way leaves `live` in force. `live` must be the table that enforces
/// now (`None` only when none does: the first transaction wipes
/// `program.table`); [`crate::nft::other_table`] names the staging one.
pub fn staged(program: &Program, live: Option<&str>, batch: usize) -> Vec<Transaction> {
    assert!(live != Some(program.table.as_str()), "the staging table must differ from the live one");
    let batch = batch.max(1);
    let table = &program.table;
    let mut out = Vec::new();
    let mut first = Transaction::new(table);
    // A leftover from an interrupted start is thrown away first.
    first.push(Op::AddTable { table: table.clone() });
    first.push(Op::DeleteTable { table: table.clone() });
    first.push(Op::AddTable { table: table.clone() });
    first.declare_all(program, |c| c.base.is_none());
    out.push(first);

    let mut body = Transaction::new(table);
    body.fill_all(program, |c| c.base.is_none());
    let mut cur = Transaction::new(table);
    let mut weight = 0;
    for op in split_ops(body.ops, batch) {
        if weight + op.weight() > batch && !cur.is_empty() {
            out.push(std::mem::replace(&mut cur, Transaction::new(table)));
            weight = 0;
        }
        weight += op.weight();
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }

    let mut last = Transaction::new(table);
    if let Some(live) = live {
        last.push(Op::DeleteTable { table: live.to_string() });
    }
    for c in program.chains.values().filter(|c| c.base.is_some()) {
        last.push(Op::AddChain { name: c.name.clone(), base: c.base });
        for r in &c.rules {
            last.push(Op::AddRule { chain: c.name.clone(), rule: r.clone() });
        }
    }
    out.push(last);
    out
}

/// Split element operations so that none carries more than `batch`.
fn split_ops(ops: Vec<Op>, batch: usize) -> Vec<Op> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::AddElements { set, elements } if elements.len() > batch => {
                out.extend(elements.chunks(batch).map(|c| Op::AddElements { set: set.clone(), elements: c.to_vec() }))
            }
            Op::AddMapElements { map, elements } if elements.len() > batch => {
                out.extend(elements.chunks(batch).map(|c| Op::AddMapElements { map: map.clone(), elements: c.to_vec() }))
            }
            op => out.push(op),
        }
    }
    out
}

/// Build `program` in bounded transactions (see [`staged`]). On failure the
/// half-built table is removed (best effort: it was never hooked) and the
/// error returned; `live` is untouched unless the last transaction went
/// through.
pub fn apply_staged(kernel: &mut dyn Kernel, program: &Program, live: Option<&str>, batch: usize) -> Result<(), ApplyError> {
    program.validate()?;
    for tx in staged(program, live, batch) {
        if let Err(e) = kernel.apply(&tx) {
            let mut cleanup = Transaction::new(&program.table);
            cleanup.push(Op::AddTable { table: program.table.clone() });
            cleanup.push(Op::DeleteTable { table: program.table.clone() });
            if let Err(c) = kernel.apply(&cleanup) {
                tracing::warn!(error = %c, table = %program.table, "could not remove the unhooked staging table");
            }
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;
    use crate::nft::diff::diff;
    use crate::nft::program::tests::{addr_set, chain, sample, saddr_in};
    use crate::nft::program::{KeyType, Rule, ALT_TABLE};

    fn check_refused(tx_lines: impl Fn(&mut Transaction), op: usize, reason: Reason) {
        let mut k = FakeKernel::with(sample());
        let mut tx = Transaction::new("netfence");
        tx_lines(&mut tx);
        let err = k.apply(&tx).expect_err("should be refused");
        assert_eq!((err.op(), err.reason()), (Some(op), Some(reason)), "{err}");
        assert_eq!(k.table("netfence"), Some(&sample()), "a refused transaction changes nothing");
    }

    #[test]
    fn fake_kernel_refuses_like_the_kernel() {
        let add_rule = |chain: &str, rule: Rule| Op::AddRule { chain: chain.into(), rule };
        check_refused(|t| t.push(add_rule("grp_a", Rule::verdict(vec![], Verdict::Jump("nope".into())))), 0, Reason::NotFound);
        check_refused(|t| t.push(add_rule("grp_a", Rule::verdict(vec![saddr_in("nope")], Verdict::Accept))), 0, Reason::NotFound);
        check_refused(|t| t.push(add_rule("nope", Rule::verdict(vec![], Verdict::Accept))), 0, Reason::NotFound);
        check_refused(
            |t| {
                t.push(Op::AddSet { name: "s".into(), key: KeyType::Addr(Family::IPv4), interval: false });
                t.push(add_rule("pol_a", Rule::verdict(vec![], Verdict::Jump("grp_a".into()))));
            },
            1,
            Reason::Loop,
        );
        check_refused(|t| t.push(Op::DeleteSet { name: "peer4_a".into() }), 0, Reason::Busy);
        check_refused(|t| t.push(Op::DeleteSet { name: "nope".into() }), 0, Reason::NotFound);
        check_refused(|t| t.push(Op::DeleteChain { name: "pol_a".into() }), 0, Reason::Busy);
        check_refused(
            |t| {
                t.push(Op::FlushChain { name: "pol_a".into() });
                t.push(Op::DeleteChain { name: "pol_a".into() });
            },
            1,
            Reason::Busy,
        );
        check_refused(|t| t.push(Op::DeleteMap { name: "ingress4".into() }), 0, Reason::Busy);
        check_refused(
            |t| t.push(Op::DeleteElements { set: "peer4_a".into(), elements: vec![Element::Addr("10.9.9.9".parse().unwrap())] }),
            0,
            Reason::NotFound,
        );
        check_refused(
            |t| {
                t.push(Op::AddMapElements { map: "ingress4".into(), elements: vec![(Element::Addr("10.9.9.9".parse().unwrap()), Verdict::Jump("ingress".into()))] })
            },
            0,
            Reason::Invalid,
        );
        check_refused(
            |t| t.push(Op::AddElements { set: "blk4_b".into(), elements: vec![Element::Net("10.1.0.0/16".parse().unwrap())] }),
            0,
            Reason::Exists,
        );
        check_refused(|t| t.push(Op::AddSet { name: "peer4_a".into(), key: KeyType::Addr(Family::IPv6), interval: false }), 0, Reason::Exists);
        check_refused(|t| t.push(Op::DeleteTable { table: "other".into() }), 0, Reason::NotFound);
    }

    #[test]
    fn staged_build_never_exposes_a_half_built_table() {
        let mut p = sample();
        let big: Vec<String> = (0..250).map(|i| format!("10.1.{}.{}", i / 200, i % 200)).collect();
        p.add_set(addr_set("peer4_big", Family::IPv4, &big.iter().map(String::as_str).collect::<Vec<_>>()));
        p.chains.get_mut("pol_a").unwrap().rules.push(Rule::verdict(vec![saddr_in("peer4_big")], Verdict::Accept));
        let mut target = p.clone();
        target.table = ALT_TABLE.into();
        let old = Program::new("netfence");
        let mut k = FakeKernel::with(old.clone());
        let txs = staged(&target, Some("netfence"), 100);
        assert!(txs.len() > 3, "{} transactions", txs.len());
        for (i, tx) in txs.iter().enumerate() {
            let weight: usize = tx.ops.iter().map(Op::weight).sum();
            let last = i == txs.len() - 1;
            assert!(weight <= 100 || i == 0, "transaction {i} carries {weight}");
            k.apply(tx).unwrap();
            if !last {
                // Nothing of the new table is hooked; the old one is in force.
                assert_eq!(k.table("netfence"), Some(&old));
                assert!(k.table(ALT_TABLE).unwrap().chains.values().all(|c| c.base.is_none()));
            }
        }
        let base_rules = target.chains["ingress"].rules.len();
        assert_eq!(txs.last().unwrap().len(), 1 + 1 + base_rules, "delete the old table, add the base chain and its rules");
        assert_eq!(k.table("netfence"), None);
        assert_eq!(k.table(ALT_TABLE), Some(&target));
        // From here on the new table is synced incrementally.
        assert!(diff(Some(&target), &target).is_empty());
    }

    #[test]
    fn staged_failure_keeps_the_live_table() {
        let mut k = FakeKernel::with(sample());
        let mut target = sample();
        target.table = ALT_TABLE.into();
        target.add_chain(chain("broken", vec![Rule::verdict(vec![saddr_in("missing")], Verdict::Accept)]));
        // Invalid programs never reach the kernel.
        assert!(matches!(apply_staged(&mut k, &target, Some("netfence"), 2), Err(ApplyError::Invalid(_))));
        target.chains.remove("broken");
        k.fail_next(Reason::Invalid);
        let before = k.applied;
        let e = apply_staged(&mut k, &target, Some("netfence"), 2).unwrap_err();
        assert_eq!(e.reason(), Some(Reason::Invalid));
        assert_eq!(k.applied, before + 1, "only the cleanup went through");
        assert_eq!(k.table("netfence"), Some(&sample()));
        assert_eq!(k.table(ALT_TABLE), None);
    }

    #[test]
    fn locates_the_failing_line() {
        let mut tx = Transaction::new("netfence");
        tx.push(Op::AddTable { table: "netfence".into() });
        tx.push(Op::FlushChain { name: "x".into() });
        let stderr = "/dev/stdin:2:1-30: Error: Could not process rule: No such file or directory\nflush chain inet netfence x\n^^^^\n";
        let e = locate(&tx, stderr);
        assert_eq!((e.op(), e.reason()), (Some(1), Some(Reason::NotFound)));
        assert_eq!(
            e.to_string(),
            "operation 1 `flush chain inet netfence x` refused (not found): Could not process rule: No such file or directory"
        );
    }
}
