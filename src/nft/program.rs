//! Our own restricted nftables AST: exactly the objects and expressions
//! netfence emits, as plain data.
//!
//! Keeping the program as data (rather than text) is what lets one value be
//! rendered two ways (the `nft -f` script in [`fmt::Display`], the JSON in
//! [`super::json`]), interpreted packet by packet ([`super::interp`]) and
//! diffed against the last committed one ([`super::diff`]). Everything is
//! ordered (`BTreeMap`/`BTreeSet`, or a `Vec` in a defined order) so that
//! rendering is deterministic.
//!
//! The subset is deliberately small: a construct that is not here cannot be
//! emitted, so the interpreter and the diff never meet anything they do not
//! understand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Family, Protocol};

/// The one table netfence owns. Nothing else in the ruleset is read,
/// flushed or touched.
pub const TABLE: &str = "netfence";

/// The second name netfence owns: nftables cannot rename a table, so a
/// large cold start is built under whichever of the two is not live, then
/// switched to in one small transaction ([`crate::apply::staged`]).
pub const ALT_TABLE: &str = "netfence-b";

/// The table to stage a rebuild in while `live` enforces.
pub fn other_table(live: &str) -> &'static str {
    if live == TABLE {
        ALT_TABLE
    } else {
        TABLE
    }
}

/// The longest comment nft keeps on a rule (`NFTNL_UDATA_COMMENT_MAXLEN`
/// is 128 bytes with its terminating NUL).
pub const MAX_COMMENT: usize = 127;

/// The longest object name we emit. The kernel allows 255 since 4.14;
/// staying well below keeps `nft list` readable and leaves room for the
/// staging suffix of a bounded cold start.
pub const MAX_NAME: usize = 96;

/// An `inet` table: its sets, verdict maps and chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub table: String,
    pub sets: BTreeMap<String, Set>,
    pub maps: BTreeMap<String, Map>,
    pub chains: BTreeMap<String, Chain>,
    /// Named token buckets (`limit NAME { ... }`): one budget shared by every
    /// rule naming it, so many rules cannot add up to many budgets.
    pub limits: BTreeMap<String, Limit>,
}

/// A named token bucket in packets per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub name: String,
    pub per_second: u32,
    pub burst: u32,
}

impl Default for Program {
    fn default() -> Self {
        Program::new(TABLE)
    }
}

/// What a set or map is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// `ipv4_addr` / `ipv6_addr`.
    Addr(Family),
    /// `ipv4_addr . inet_proto . inet_service`: a pod address with one of its
    /// container ports, for named ports.
    AddrProtoPort(Family),
    /// `ipv4_addr . ipv4_addr`: a source and a destination together (a
    /// local pod paired with itself, for hairpin traffic).
    AddrPair(Family),
}

impl KeyType {
    pub fn family(self) -> Family {
        match self {
            KeyType::Addr(f) | KeyType::AddrProtoPort(f) | KeyType::AddrPair(f) => f,
        }
    }
}

/// One set or map key. Hash sets hold `Addr` (or `AddrProtoPort`), interval
/// sets hold `Net`; [`Program::validate`] checks the pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Addr(IpAddr),
    Net(IpNet),
    AddrProtoPort(IpAddr, Protocol, u16),
    /// `saddr . daddr`.
    AddrPair(IpAddr, IpAddr),
}

impl Element {
    pub fn family(&self) -> Family {
        match self {
            Element::Addr(ip) | Element::AddrProtoPort(ip, _, _) | Element::AddrPair(ip, _) => Family::of(ip),
            Element::Net(n) => Family::of_net(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: KeyType,
    /// `flags interval`: elements are prefixes. Kept small: an incremental
    /// change to an interval set costs time proportional to its size.
    pub interval: bool,
    pub elements: BTreeSet<Element>,
}

impl Set {
    pub fn of(name: String, key: KeyType, interval: bool, elements: BTreeSet<Element>) -> Set {
        Set { name, key, interval, elements }
    }

    /// The declaration without its elements: what `add set` carries and
    /// what must be equal for a set to be updated in place.
    pub fn same_declaration(&self, other: &Set) -> bool {
        self.name == other.name && self.key == other.key && self.interval == other.interval
    }
}

/// A verdict map (`type ipv4_addr : verdict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    pub name: String,
    pub key: KeyType,
    pub elements: BTreeMap<Element, Verdict>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
    /// Back to the calling chain's next rule (a cluster policy's Pass).
    Return,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `Some` for a base chain, hooked into netfilter.
    pub base: Option<BaseHook>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseHook {
    pub hook: Hook,
    pub priority: i32,
    pub policy: ChainPolicy,
}

/// The netfilter hooks of the `inet` family, in the order a forwarded
/// packet meets the ones it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub const ALL: [Hook; 5] = [Hook::Prerouting, Hook::Input, Hook::Forward, Hook::Output, Hook::Postrouting];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    /// The standard priority name nft prints for chains on this hook, and
    /// its value: base chain priorities render relative to it
    /// (`dstnat + 10`), as `nft list` does.
    fn standard_priority(self, priority: i32) -> (&'static str, i32) {
        match self {
            Hook::Prerouting if priority <= priority::RAW + 10 => ("raw", priority::RAW),
            Hook::Prerouting => ("dstnat", -100),
            Hook::Postrouting => ("srcnat", 100),
            _ => ("filter", 0),
        }
    }
}

/// Well-known base chain priorities (`nft(8)`, "STANDARD PRIORITY NAMES").
pub mod priority {
    pub const RAW: i32 = -300;
    pub const DSTNAT: i32 = -100;
    pub const FILTER: i32 = 0;
    pub const SRCNAT: i32 = 100;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainPolicy {
    Accept,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// All must match (in order) for the action to run.
    pub matches: Vec<Match>,
    pub counter: bool,
    pub action: Action,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Rule {
        Rule { matches, counter: false, action, comment: None }
    }
    pub fn verdict(matches: Vec<Match>, v: Verdict) -> Rule {
        Rule::new(matches, Action::Verdict(v))
    }
    pub fn counted(mut self, comment: impl Into<String>) -> Rule {
        self.counter = true;
        self.comment = Some(comment.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Verdict(Verdict),
    /// `ip daddr vmap @map`: no element, no verdict (the next rule runs).
    Vmap { family: Family, field: AddrField, map: String },
    /// `log prefix "..." group N`: a copy of the packet to NFLOG group `group`
    /// (read by the agent's drop log), no verdict (the next rule runs).
    Log { prefix: String, group: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrField {
    Saddr,
    Daddr,
}

impl AddrField {
    pub fn name(self) -> &'static str {
        match self {
            AddrField::Saddr => "saddr",
            AddrField::Daddr => "daddr",
        }
    }
}

/// Conntrack states, in the order of their bits (the order nft prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    Invalid,
    Established,
    Related,
    New,
    Untracked,
}

impl CtState {
    pub const ALL: [CtState; 5] = [CtState::Invalid, CtState::Established, CtState::Related, CtState::New, CtState::Untracked];
    pub fn name(self) -> &'static str {
        match self {
            CtState::Invalid => "invalid",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::New => "new",
            CtState::Untracked => "untracked",
        }
    }
}

/// The ICMPv6 types netfence matches: neighbour discovery, which is never
/// policed (a pod that cannot resolve its neighbours has no network at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Icmpv6Type {
    NdRouterSolicit = 133,
    NdRouterAdvert = 134,
    NdNeighborSolicit = 135,
    NdNeighborAdvert = 136,
}

impl Icmpv6Type {
    pub const ND: [Icmpv6Type; 4] =
        [Icmpv6Type::NdRouterSolicit, Icmpv6Type::NdRouterAdvert, Icmpv6Type::NdNeighborSolicit, Icmpv6Type::NdNeighborAdvert];
    pub fn name(self) -> &'static str {
        match self {
            Icmpv6Type::NdRouterSolicit => "nd-router-solicit",
            Icmpv6Type::NdRouterAdvert => "nd-router-advert",
            Icmpv6Type::NdNeighborSolicit => "nd-neighbor-solicit",
            Icmpv6Type::NdNeighborAdvert => "nd-neighbor-advert",
        }
    }
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// An inclusive destination port range; `lo == hi` for a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

/// The right-hand side of an address match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrMatch {
    /// `@name`
    Set(String),
    /// A literal prefix, or an anonymous set of them (`{ a, b }`).
    Nets(BTreeSet<IpNet>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `ct state established,related`
    CtState(BTreeSet<CtState>),
    /// `ip saddr @set`, `ip6 daddr != @set`, `ip saddr 10.0.0.0/8`
    Addr { family: Family, field: AddrField, negate: bool, rhs: AddrMatch },
    /// `meta l4proto tcp` without a port; `tcp dport 80` or `tcp dport
    /// 80-81` with one (the same bytecode as `meta l4proto tcp th dport
    /// 80`, and the form `nft list` prints, so read-back compares equal).
    Proto { proto: Protocol, dport: Option<PortRange> },
    /// `ip daddr . meta l4proto . th dport @set`: a named port, resolved per
    /// destination pod.
    NamedPort { family: Family, set: String },
    /// `ip saddr . ip daddr @set`: the source and destination together, in
    /// a set of pairs (a local pod with itself: hairpin traffic).
    AddrPair { family: Family, set: String },
    /// `icmpv6 type { ... }`
    Icmpv6Type(BTreeSet<Icmpv6Type>),
    /// `meta nfproto ipv4`
    NfProto(Family),
    /// `fib saddr type local` (`!= local` when negated): the source is one
    /// of this node's own addresses, on any interface (the lookup names no
    /// device, so it works on every hook, postrouting included, and for
    /// packets the node itself sent). By address, never by socket owner: a
    /// pod's address lives in the pod's namespace and is never local here.
    FibSaddrLocal { negate: bool },
    /// `fib saddr . iif oif missing`: no route back to the source leaves
    /// through the interface the packet came in on (strict reverse-path
    /// filtering). True for a pod claiming an address that is not its own,
    /// and for a node's own address arriving from outside (the lookup
    /// finds a local route, which counts as missing); loopback is always
    /// its own way back.
    NoRouteBack,
    /// `ip6 hoplimit 255`: sent on this link, routed by no one (what makes
    /// neighbour discovery valid, RFC 4861; a forwarded packet has 254 or
    /// less here).
    Ip6HopLimit255,
    /// `numgen random mod N 0`: one packet in N, at random.
    OneIn(u32),
    /// `limit name "NAME"`: while the named token bucket has tokens.
    Limit(String),
}

/// Why a program would be refused by the kernel (or would not mean what it
/// says). Callers branch on the kind, so it is an enum, not a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{what} {name:?}: name is not an nft identifier of at most {MAX_NAME} characters (letters, digits, '_', '-', '.', starting with a letter)")]
    BadName { what: &'static str, name: String },
    #[error("{what} {key:?} is stored under the name {name:?}")]
    NameMismatch { what: &'static str, key: String, name: String },
    #[error("chain {chain:?} rule {rule}: {what} {target:?} does not exist")]
    Dangling { chain: String, rule: usize, what: &'static str, target: String },
    #[error("map {map:?}: element {element} jumps to missing chain {target:?}")]
    DanglingMapJump { map: String, element: String, target: String },
    #[error("{from}: jump to base chain {target:?}")]
    JumpToBase { from: String, target: String },
    #[error("chain {chain:?} rule {rule}: {message}")]
    TypeMismatch { chain: String, rule: usize, message: String },
    #[error("{what} {name:?}: element {element} does not fit its key type {key}")]
    BadElement { what: &'static str, name: String, element: String, key: String },
    #[error("set {set:?}: elements {a} and {b} overlap (the kernel refuses overlapping intervals)")]
    Overlap { set: String, a: String, b: String },
    #[error("chain {chain:?} rule {rule}: comment longer than {MAX_COMMENT} bytes or containing '\"'")]
    BadComment { chain: String, rule: usize },
    #[error("chains jump in a loop through {chain:?}")]
    Loop { chain: String },
    #[error("chain {chain:?} rule {rule}: an empty match list ({what})")]
    EmptyMatch { chain: String, rule: usize, what: &'static str },
    #[error("chain {chain:?} rule {rule}: log prefix longer than {MAX_LOG_PREFIX} bytes or containing '\"'")]
    BadLogPrefix { chain: String, rule: usize },
    #[error("chain {chain:?} rule {rule}: {what}")]
    BadSample { chain: String, rule: usize, what: &'static str },
}

/// The longest log prefix the kernel keeps (`NF_LOG_PREFIXLEN` is 128 with
/// the terminating NUL).
pub const MAX_LOG_PREFIX: usize = 127;

impl Program {
    pub fn new(table: &str) -> Program {
        Program {
            table: table.to_string(),
            sets: BTreeMap::new(),
            maps: BTreeMap::new(),
            chains: BTreeMap::new(),
            limits: BTreeMap::new(),
        }
    }

    pub fn add_set(&mut self, set: Set) {
        self.sets.insert(set.name.clone(), set);
    }
    pub fn add_map(&mut self, map: Map) {
        self.maps.insert(map.name.clone(), map);
    }
    pub fn add_chain(&mut self, chain: Chain) {
        self.chains.insert(chain.name.clone(), chain);
    }
    pub fn add_limit(&mut self, limit: Limit) {
        self.limits.insert(limit.name.clone(), limit);
    }

    /// Base chains on `hook`, in the order netfilter runs them (priority,
    /// then name: the kernel's order among equal priorities is registration
    /// order, which we never rely on).
    pub fn base_chains(&self, hook: Hook) -> Vec<&Chain> {
        let mut v: Vec<&Chain> = self.chains.values().filter(|c| c.base.is_some_and(|b| b.hook == hook)).collect();
        v.sort_by_key(|c| (c.base.map(|b| b.priority), &c.name));
        v
    }

    /// Total number of rules: the measure that must not grow with pods.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// Check everything the kernel would refuse, and the things it would
    /// accept but that would make the program mean something else (an
    /// element of the wrong family in a set is silently never matched).
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_name("table", &self.table)?;
        for (k, s) in &self.sets {
            check_name("set", &s.name)?;
            if *k != s.name {
                return Err(ValidationError::NameMismatch { what: "set", key: k.clone(), name: s.name.clone() });
            }
            for e in &s.elements {
                if !element_fits(e, s.key, s.interval) {
                    return Err(bad_element("set", &s.name, e, s.key));
                }
            }
            if s.interval {
                check_overlaps(s)?;
            }
        }
        for (k, m) in &self.maps {
            check_name("map", &m.name)?;
            if self.sets.contains_key(k) {
                // Sets and maps share one namespace in a table.
                return Err(ValidationError::BadName { what: "map (also a set)", name: k.clone() });
            }
            if *k != m.name {
                return Err(ValidationError::NameMismatch { what: "map", key: k.clone(), name: m.name.clone() });
            }
            for (e, v) in &m.elements {
                if !element_fits(e, m.key, false) {
                    return Err(bad_element("map", &m.name, e, m.key));
                }
                if let Verdict::Jump(t) = v {
                    match self.chains.get(t) {
                        None => {
                            return Err(ValidationError::DanglingMapJump {
                                map: m.name.clone(),
                                element: render_element(e),
                                target: t.clone(),
                            })
                        }
                        Some(c) if c.base.is_some() => {
                            return Err(ValidationError::JumpToBase { from: format!("map {:?}", m.name), target: t.clone() })
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        for (k, l) in &self.limits {
            check_name("limit", &l.name)?;
            if *k != l.name {
                return Err(ValidationError::NameMismatch { what: "limit", key: k.clone(), name: l.name.clone() });
            }
        }
        for (k, c) in &self.chains {
            check_name("chain", &c.name)?;
            if *k != c.name {
                return Err(ValidationError::NameMismatch { what: "chain", key: k.clone(), name: c.name.clone() });
            }
            for (i, r) in c.rules.iter().enumerate() {
                self.check_rule(c, i, r)?;
            }
        }
        self.check_loops()
    }

    pub(crate) fn check_rule(&self, c: &Chain, i: usize, r: &Rule) -> Result<(), ValidationError> {
        let mismatch = |message: String| ValidationError::TypeMismatch { chain: c.name.clone(), rule: i, message };
        let dangling = |what: &'static str, target: &str| ValidationError::Dangling {
            chain: c.name.clone(),
            rule: i,
            what,
            target: target.to_string(),
        };
        if r.comment.as_ref().is_some_and(|t| t.len() > MAX_COMMENT || t.contains('"')) {
            return Err(ValidationError::BadComment { chain: c.name.clone(), rule: i });
        }
        for m in &r.matches {
            match m {
                Match::Addr { family, rhs: AddrMatch::Set(name), .. } => {
                    let s = self.sets.get(name).ok_or_else(|| dangling("set", name))?;
                    if s.key != KeyType::Addr(*family) {
                        return Err(mismatch(format!("{} address matched against set {name:?} of {}", family, key_type_name(s.key))));
                    }
                }
                Match::Addr { family, rhs: AddrMatch::Nets(nets), .. } => {
                    if nets.is_empty() {
                        return Err(ValidationError::EmptyMatch { chain: c.name.clone(), rule: i, what: "addresses" });
                    }
                    if let Some(n) = nets.iter().find(|n| Family::of_net(n) != *family) {
                        return Err(mismatch(format!("{n} in a {family} address match")));
                    }
                }
                Match::NamedPort { family, set } => {
                    let s = self.sets.get(set).ok_or_else(|| dangling("set", set))?;
                    if s.key != KeyType::AddrProtoPort(*family) || s.interval {
                        return Err(mismatch(format!("named port match on set {set:?} of {}", key_type_name(s.key))));
                    }
                }
                Match::AddrPair { family, set } => {
                    let s = self.sets.get(set).ok_or_else(|| dangling("set", set))?;
                    if s.key != KeyType::AddrPair(*family) || s.interval {
                        return Err(mismatch(format!("address pair match on set {set:?} of {}", key_type_name(s.key))));
                    }
                }
                Match::CtState(s) if s.is_empty() => {
                    return Err(ValidationError::EmptyMatch { chain: c.name.clone(), rule: i, what: "ct states" })
                }
                Match::Icmpv6Type(s) if s.is_empty() => {
                    return Err(ValidationError::EmptyMatch { chain: c.name.clone(), rule: i, what: "icmpv6 types" })
                }
                Match::Proto { dport: Some(r), .. } if r.lo > r.hi => {
                    return Err(mismatch(format!("port range {}-{} is empty", r.lo, r.hi)))
                }
                Match::Limit(name) if !self.limits.contains_key(name) => return Err(dangling("limit", name)),
                Match::OneIn(0) => {
                    return Err(ValidationError::BadSample { chain: c.name.clone(), rule: i, what: "one packet in 0" })
                }
                _ => {}
            }
        }
        match &r.action {
            Action::Verdict(Verdict::Jump(t)) => match self.chains.get(t) {
                None => return Err(dangling("chain", t)),
                Some(tc) if tc.base.is_some() => {
                    return Err(ValidationError::JumpToBase { from: format!("chain {:?} rule {i}", c.name), target: t.clone() })
                }
                Some(_) => {}
            },
            Action::Vmap { family, map, .. } => {
                let m = self.maps.get(map).ok_or_else(|| dangling("map", map))?;
                if m.key != KeyType::Addr(*family) {
                    return Err(mismatch(format!("{family} address looked up in map {map:?} of {}", key_type_name(m.key))));
                }
            }
            Action::Log { prefix, .. } if prefix.len() > MAX_LOG_PREFIX || prefix.contains('"') => {
                return Err(ValidationError::BadLogPrefix { chain: c.name.clone(), rule: i })
            }
            Action::Verdict(_) | Action::Log { .. } => {}
        }
        Ok(())
    }

    /// Every chain a chain can jump to, through rules or verdict maps.
    pub fn jump_targets<'a>(&'a self, c: &'a Chain) -> impl Iterator<Item = &'a str> + 'a {
        c.rules.iter().flat_map(move |r| -> Vec<&'a str> {
            match &r.action {
                Action::Verdict(Verdict::Jump(t)) => vec![t.as_str()],
                Action::Vmap { map, .. } => self
                    .maps
                    .get(map)
                    .into_iter()
                    .flat_map(|m| m.elements.values())
                    .filter_map(|v| if let Verdict::Jump(t) = v { Some(t.as_str()) } else { None })
                    .collect(),
                Action::Verdict(_) | Action::Log { .. } => vec![],
            }
        })
    }

    /// The kernel refuses jump loops (ELOOP); find one before it does.
    pub(crate) fn check_loops(&self) -> Result<(), ValidationError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Unseen,
            Open,
            Done,
        }
        let mut marks: BTreeMap<&str, Mark> = self.chains.keys().map(|k| (k.as_str(), Mark::Unseen)).collect();
        // Iterative DFS: a deep jump chain must not overflow our stack.
        for start in self.chains.keys() {
            if marks[start.as_str()] != Mark::Unseen {
                continue;
            }
            let mut stack: Vec<(&str, Vec<&str>)> = vec![(start, self.jump_targets(&self.chains[start]).collect())];
            marks.insert(start, Mark::Open);
            while let Some((node, pending)) = stack.last_mut() {
                let node: &str = node;
                match pending.pop() {
                    Some(next) => match marks.get(next).copied() {
                        Some(Mark::Open) => return Err(ValidationError::Loop { chain: next.to_string() }),
                        Some(Mark::Unseen) => {
                            marks.insert(next, Mark::Open);
                            let targets = self.jump_targets(&self.chains[next]).collect();
                            stack.push((next, targets));
                        }
                        _ => {}
                    },
                    None => {
                        marks.insert(node, Mark::Done);
                        stack.pop();
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), ValidationError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(ValidationError::BadName { what, name: name.to_string() })
    }
}

/// What nft's scanner takes as a bare identifier, minus `/` (which would
/// read as a prefix length in some positions), within [`MAX_NAME`].
pub fn is_identifier(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

pub(crate) fn element_fits(e: &Element, key: KeyType, interval: bool) -> bool {
    match (e, key) {
        (Element::Addr(ip), KeyType::Addr(f)) => !interval && Family::of(ip) == f,
        (Element::Net(n), KeyType::Addr(f)) => interval && Family::of_net(n) == f && n.trunc() == *n,
        (Element::AddrProtoPort(ip, _, _), KeyType::AddrProtoPort(f)) => !interval && Family::of(ip) == f,
        (Element::AddrPair(a, b), KeyType::AddrPair(f)) => !interval && Family::of(a) == f && Family::of(b) == f,
        _ => false,
    }
}

fn bad_element(what: &'static str, name: &str, e: &Element, key: KeyType) -> ValidationError {
    ValidationError::BadElement {
        what,
        name: name.to_string(),
        element: render_element(e),
        key: key_type_name(key).to_string(),
    }
}

pub(crate) fn check_overlaps(s: &Set) -> Result<(), ValidationError> {
    // Sorted by (network, prefix length): a prefix that contains later ones
    // sorts first, so comparing neighbours finds every overlap.
    let nets: Vec<IpNet> = s.elements.iter().filter_map(|e| if let Element::Net(n) = e { Some(*n) } else { None }).collect();
    for w in nets.windows(2) {
        if w[0].contains(&w[1].network()) || w[1].contains(&w[0].network()) {
            return Err(ValidationError::Overlap { set: s.name.clone(), a: w[0].to_string(), b: w[1].to_string() });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Text rendering: the exact `nft -f` script.

pub fn key_type_name(k: KeyType) -> &'static str {
    match k {
        KeyType::Addr(Family::IPv4) => "ipv4_addr",
        KeyType::Addr(Family::IPv6) => "ipv6_addr",
        KeyType::AddrProtoPort(Family::IPv4) => "ipv4_addr . inet_proto . inet_service",
        KeyType::AddrProtoPort(Family::IPv6) => "ipv6_addr . inet_proto . inet_service",
        KeyType::AddrPair(Family::IPv4) => "ipv4_addr . ipv4_addr",
        KeyType::AddrPair(Family::IPv6) => "ipv6_addr . ipv6_addr",
    }
}

/// `ip` or `ip6`: the payload protocol of an address field.
pub fn ip_proto(f: Family) -> &'static str {
    match f {
        Family::IPv4 => "ip",
        Family::IPv6 => "ip6",
    }
}

pub fn nfproto_name(f: Family) -> &'static str {
    match f {
        Family::IPv4 => "ipv4",
        Family::IPv6 => "ipv6",
    }
}

/// A prefix as nft prints it: a host prefix as a bare address.
pub fn render_net(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

pub fn render_element(e: &Element) -> String {
    match e {
        Element::Addr(ip) => ip.to_string(),
        Element::Net(n) => render_net(n),
        Element::AddrProtoPort(ip, p, port) => format!("{ip} . {} . {port}", p.nft_name()),
        Element::AddrPair(a, b) => format!("{a} . {b}"),
    }
}

/// `{ a, b }` (nft refuses an empty `{ }`: callers skip empty lists).
pub fn braced<I: IntoIterator<Item = String>>(items: I) -> String {
    format!("{{ {} }}", items.into_iter().collect::<Vec<_>>().join(", "))
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Return => f.write_str("return"),
        }
    }
}

impl fmt::Display for BaseHook {
    /// `type filter hook postrouting priority srcnat - 10; policy accept;`
    /// nft 1.0.6 names a priority only within 10 of the hook's standard
    /// one and prints any other as a number (`priority 110`): so do we.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, base) = self.hook.standard_priority(self.priority);
        let off = self.priority - base;
        let prio = match off {
            0 => name.to_string(),
            1..=10 => format!("{name} + {off}"),
            -10..=-1 => format!("{name} - {}", -off),
            _ => self.priority.to_string(),
        };
        let policy = match self.policy {
            ChainPolicy::Accept => "accept",
            ChainPolicy::Drop => "drop",
        };
        write!(f, "type filter hook {} priority {prio}; policy {policy};", self.hook.name())
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::CtState(s) => {
                write!(f, "ct state {}", s.iter().map(|s| s.name()).collect::<Vec<_>>().join(","))
            }
            Match::Addr { family, field, negate, rhs } => {
                write!(f, "{} {} ", ip_proto(*family), field.name())?;
                if *negate {
                    f.write_str("!= ")?;
                }
                match rhs {
                    AddrMatch::Set(s) => write!(f, "@{s}"),
                    AddrMatch::Nets(nets) if nets.len() == 1 => f.write_str(&render_net(nets.first().expect("len 1"))),
                    AddrMatch::Nets(nets) => f.write_str(&braced(nets.iter().map(render_net))),
                }
            }
            Match::Proto { proto, dport: None } => write!(f, "meta l4proto {}", proto.nft_name()),
            Match::Proto { proto, dport: Some(r) } if r.lo == r.hi => write!(f, "{} dport {}", proto.nft_name(), r.lo),
            Match::Proto { proto, dport: Some(r) } => write!(f, "{} dport {}-{}", proto.nft_name(), r.lo, r.hi),
            Match::NamedPort { family, set } => write!(f, "{} daddr . meta l4proto . th dport @{set}", ip_proto(*family)),
            Match::AddrPair { family, set } => write!(f, "{p} saddr . {p} daddr @{set}", p = ip_proto(*family)),
            Match::Icmpv6Type(types) if types.len() == 1 => {
                write!(f, "icmpv6 type {}", types.first().expect("len 1").name())
            }
            Match::Icmpv6Type(types) => write!(f, "icmpv6 type {}", braced(types.iter().map(|t| t.name().to_string()))),
            Match::NfProto(fam) => write!(f, "meta nfproto {}", nfproto_name(*fam)),
            Match::FibSaddrLocal { negate } => write!(f, "fib saddr type {}local", if *negate { "!= " } else { "" }),
            Match::NoRouteBack => f.write_str("fib saddr . iif oif missing"),
            Match::Ip6HopLimit255 => f.write_str("ip6 hoplimit 255"),
            Match::OneIn(n) => write!(f, "numgen random mod {n} 0"),
            Match::Limit(name) => write!(f, "limit name \"{name}\""),
        }
    }
}

impl fmt::Display for Rule {
    /// The rule as it follows `add rule inet netfence CHAIN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        if self.counter {
            f.write_str("counter ")?;
        }
        match &self.action {
            Action::Verdict(v) => write!(f, "{v}")?,
            Action::Vmap { family, field, map } => write!(f, "{} {} vmap @{map}", ip_proto(*family), field.name())?,
            Action::Log { prefix, group } => write!(f, "log prefix \"{prefix}\" group {group}")?,
        }
        if let Some(c) = &self.comment {
            write!(f, " comment \"{c}\"")?;
        }
        Ok(())
    }
}

/// `rate 100/second burst 100 packets`, as nft lists it.
pub fn limit_spec(l: &Limit) -> String {
    format!("rate {}/second burst {} packets", l.per_second, l.burst)
}

pub fn map_element(e: &Element, v: &Verdict) -> String {
    format!("{} : {v}", render_element(e))
}

impl fmt::Display for Program {
    /// The `table inet netfence { ... }` block, in nft's own layout.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table inet {} {{", self.table)?;
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            if !std::mem::take(&mut first) {
                writeln!(f)?;
            }
            Ok(())
        };
        for l in self.limits.values() {
            sep(f)?;
            writeln!(f, "\tlimit {} {{", l.name)?;
            writeln!(f, "\t\t{}", limit_spec(l))?;
            writeln!(f, "\t}}")?;
        }
        for s in self.sets.values() {
            sep(f)?;
            writeln!(f, "\tset {} {{", s.name)?;
            writeln!(f, "\t\ttype {}", key_type_name(s.key))?;
            if s.interval {
                writeln!(f, "\t\tflags interval")?;
            }
            if !s.elements.is_empty() {
                writeln!(f, "\t\telements = {}", braced(s.elements.iter().map(render_element)))?;
            }
            writeln!(f, "\t}}")?;
        }
        for m in self.maps.values() {
            sep(f)?;
            writeln!(f, "\tmap {} {{", m.name)?;
            writeln!(f, "\t\ttype {} : verdict", key_type_name(m.key))?;
            if !m.elements.is_empty() {
                writeln!(f, "\t\telements = {}", braced(m.elements.iter().map(|(e, v)| map_element(e, v))))?;
            }
            writeln!(f, "\t}}")?;
        }
        for c in self.chains.values() {
            sep(f)?;
            writeln!(f, "\tchain {} {{", c.name)?;
            if let Some(b) = &c.base {
                writeln!(f, "\t\t{b}")?;
            }
            for r in &c.rules {
                writeln!(f, "\t\t{r}")?;
            }
            writeln!(f, "\t}}")?;
        }
        writeln!(f, "}}")
    }
}

impl Program {
    /// The `nft -f` script that creates this table when it does not exist
    /// (see [`super::diff`] for replacing one that does).
    pub fn render_text(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn v4(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }
    pub fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    pub fn addr_set(name: &str, family: Family, ips: &[&str]) -> Set {
        Set {
            name: name.into(),
            key: KeyType::Addr(family),
            interval: false,
            elements: ips.iter().map(|s| Element::Addr(v4(s))).collect(),
        }
    }

    pub fn saddr_in(set: &str) -> Match {
        Match::Addr { family: Family::IPv4, field: AddrField::Saddr, negate: false, rhs: AddrMatch::Set(set.into()) }
    }

    pub fn chain(name: &str, rules: Vec<Rule>) -> Chain {
        Chain { name: name.into(), base: None, rules }
    }

    /// A small program using every construct.
    pub fn sample() -> Program {
        let mut p = Program::default();
        p.add_set(addr_set("peer4_a", Family::IPv4, &["10.244.1.11", "10.244.2.11"]));
        p.add_set(Set {
            name: "blk4_b".into(),
            key: KeyType::Addr(Family::IPv4),
            interval: true,
            elements: [Element::Net(net("10.0.0.0/8")), Element::Net(net("192.168.1.5/32"))].into(),
        });
        p.add_set(Set {
            name: "np4_tcp_http".into(),
            key: KeyType::AddrProtoPort(Family::IPv4),
            interval: false,
            elements: [Element::AddrProtoPort(v4("10.244.1.11"), Protocol::Tcp, 8080)].into(),
        });
        p.add_map(Map {
            name: "ingress4".into(),
            key: KeyType::Addr(Family::IPv4),
            elements: [
                (Element::Addr(v4("10.244.1.11")), Verdict::Jump("grp_a".into())),
                (Element::Addr(v4("10.244.1.12")), Verdict::Accept),
            ]
            .into(),
        });
        p.add_chain(chain("grp_a", vec![Rule::verdict(vec![], Verdict::Jump("pol_a".into())), Rule::verdict(vec![], Verdict::Drop)]));
        p.add_chain(chain(
            "pol_a",
            vec![
                Rule::verdict(
                    vec![saddr_in("peer4_a"), Match::Proto { proto: Protocol::Tcp, dport: Some(PortRange { lo: 80, hi: 81 }) }],
                    Verdict::Accept,
                )
                .counted("x/a ingress rule 0 peer 0 port 0"),
                Rule::verdict(
                    vec![
                        saddr_in("blk4_b"),
                        Match::Addr {
                            family: Family::IPv4,
                            field: AddrField::Saddr,
                            negate: true,
                            rhs: AddrMatch::Nets([net("10.1.0.0/16"), net("10.2.0.1/32")].into()),
                        },
                    ],
                    Verdict::Accept,
                ),
                Rule::verdict(vec![Match::NamedPort { family: Family::IPv4, set: "np4_tcp_http".into() }], Verdict::Accept),
                Rule::verdict(vec![Match::Proto { proto: Protocol::Sctp, dport: None }], Verdict::Accept),
            ],
        ));
        p.add_chain(Chain {
            name: "ingress".into(),
            base: Some(BaseHook { hook: Hook::Postrouting, priority: priority::SRCNAT - 10, policy: ChainPolicy::Accept }),
            rules: vec![
                Rule::verdict(vec![Match::CtState([CtState::Established, CtState::Related].into())], Verdict::Accept),
                Rule::verdict(vec![Match::Icmpv6Type(Icmpv6Type::ND.into())], Verdict::Accept),
                Rule::verdict(vec![Match::FibSaddrLocal { negate: false }], Verdict::Accept),
                Rule::verdict(vec![Match::CtState([CtState::Invalid].into())], Verdict::Drop),
                Rule::new(vec![], Action::Vmap { family: Family::IPv4, field: AddrField::Daddr, map: "ingress4".into() }),
                Rule::verdict(
                    vec![
                        Match::Addr {
                            family: Family::IPv4,
                            field: AddrField::Daddr,
                            negate: false,
                            rhs: AddrMatch::Nets([net("10.244.1.0/24")].into()),
                        },
                        Match::FibSaddrLocal { negate: true },
                    ],
                    Verdict::Drop,
                ),
            ],
        });
        p
    }

    #[test]
    fn renders_nft_script() {
        let want = "table inet netfence {
\tset blk4_b {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/8, 192.168.1.5 }
\t}

\tset np4_tcp_http {
\t\ttype ipv4_addr . inet_proto . inet_service
\t\telements = { 10.244.1.11 . tcp . 8080 }
\t}

\tset peer4_a {
\t\ttype ipv4_addr
\t\telements = { 10.244.1.11, 10.244.2.11 }
\t}

\tmap ingress4 {
\t\ttype ipv4_addr : verdict
\t\telements = { 10.244.1.11 : jump grp_a, 10.244.1.12 : accept }
\t}

\tchain grp_a {
\t\tjump pol_a
\t\tdrop
\t}

\tchain ingress {
\t\ttype filter hook postrouting priority srcnat - 10; policy accept;
\t\tct state established,related accept
\t\ticmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
\t\tfib saddr type local accept
\t\tct state invalid drop
\t\tip daddr vmap @ingress4
\t\tip daddr 10.244.1.0/24 fib saddr type != local drop
\t}

\tchain pol_a {
\t\tip saddr @peer4_a tcp dport 80-81 counter accept comment \"x/a ingress rule 0 peer 0 port 0\"
\t\tip saddr @blk4_b ip saddr != { 10.1.0.0/16, 10.2.0.1 } accept
\t\tip daddr . meta l4proto . th dport @np4_tcp_http accept
\t\tmeta l4proto sctp accept
\t}
}
";
        assert_eq!(sample().to_string(), want);
        sample().validate().unwrap();
    }

    #[test]
    fn validation_finds_what_the_kernel_refuses() {
        fn check(edit: impl Fn(&mut Program), want: &str) {
            let mut p = sample();
            edit(&mut p);
            let got = p.validate().expect_err(want).to_string();
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
        check(|p| p.chains.get_mut("grp_a").unwrap().rules[0].action = Action::Verdict(Verdict::Jump("nope".into())), "chain \"nope\" does not exist");
        check(|p| drop(p.sets.remove("peer4_a")), "set \"peer4_a\" does not exist");
        check(|p| drop(p.sets.remove("np4_tcp_http")), "set \"np4_tcp_http\" does not exist");
        check(|p| drop(p.maps.remove("ingress4")), "map \"ingress4\" does not exist");
        check(|p| drop(p.chains.remove("grp_a")), "jumps to missing chain \"grp_a\"");
        check(|p| p.chains.get_mut("pol_a").unwrap().rules.push(Rule::verdict(vec![], Verdict::Jump("grp_a".into()))), "loop");
        check(|p| p.chains.get_mut("grp_a").unwrap().rules[0].action = Action::Verdict(Verdict::Jump("ingress".into())), "base chain");
        check(|p| { p.sets.get_mut("peer4_a").unwrap().elements.insert(Element::Addr(v4("fd00::1"))); }, "does not fit");
        check(|p| { p.sets.get_mut("peer4_a").unwrap().elements.insert(Element::Net(net("10.0.0.0/8"))); }, "does not fit");
        check(|p| { p.sets.get_mut("blk4_b").unwrap().elements.insert(Element::Net(net("10.1.0.0/16"))); }, "overlap");
        check(|p| p.sets.get_mut("peer4_a").unwrap().key = KeyType::Addr(Family::IPv6), "set \"peer4_a\"");
        check(|p| p.chains.get_mut("pol_a").unwrap().rules[0].comment = Some("x".repeat(200)), "comment");
        check(|p| p.table = "1abc".into(), "not an nft identifier");
        check(|p| p.add_set(addr_set("ingress4", Family::IPv4, &[])), "also a set");
        check(|p| p.table = "a".repeat(MAX_NAME + 1), "not an nft identifier");
        let pairs = |elements: BTreeSet<Element>| Set { name: "hairpin4".into(), key: KeyType::AddrPair(Family::IPv4), interval: false, elements };
        check(|p| p.add_set(pairs([Element::AddrPair(v4("10.0.0.1"), v4("fd00::1"))].into())), "does not fit");
        check(|p| p.add_set(pairs([Element::Addr(v4("10.0.0.1"))].into())), "does not fit");
        check(
            |p| p.chains.get_mut("pol_a").unwrap().rules[0].matches.push(Match::AddrPair { family: Family::IPv4, set: "peer4_a".into() }),
            "address pair match on set \"peer4_a\"",
        );
        check(|p| p.chains.get_mut("pol_a").unwrap().rules[0].matches.push(Match::AddrPair { family: Family::IPv4, set: "nope".into() }), "does not exist");
        check(
            |p| p.chains.get_mut("pol_a").unwrap().rules[0].matches.push(Match::CtState(BTreeSet::new())),
            "empty match list",
        );
    }
}
