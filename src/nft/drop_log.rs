//! Logging the packets netfence drops, in the kernel, for the agent's drop
//! log (`crate::agent::drop_log`).
//!
//! A pass over a compiled program, not a part of the compiler: every rule
//! whose [`Origin`] drops (a default deny, `ct state invalid`, failing
//! closed, anti-spoofing, and whatever drops later kinds of rules bring)
//! gets a log rule right before it with the same matches, so exactly the
//! packets that rule drops are logged, with nothing to keep in step. Off,
//! the program is untouched (byte-identical to [`super::compile`]'s).
//!
//! The log rule never decides: its action is `log` (no verdict), and the
//! drop stays a rule of its own. Putting the rate limit on the drop rule
//! instead would let every packet over the limit fall through to the
//! chain's `accept` policy.
//!
//! Rate. Every log rule takes its tokens from one named limit, so a flood
//! costs the node at most `per_second` messages whatever it hits (per-rule
//! limits would add up over the hundreds of group chains of a busy node).
//! What is over the limit is still dropped and still counted by the drop
//! rule's counter (`netfence_rule_packets_total`); only its log line is
//! lost. `Sampled` logs one drop in N at random before the limit, so a
//! steady stream of drops is represented without one flow using up the
//! budget.
//!
//! The prefix names the drop rule: `CHAIN POSITION KIND`, which the agent
//! turns back into policies with the [`Origins`] of the program it
//! committed (the kind is there for a line that arrives after the program
//! changed, and for people reading `nft list`).

use std::collections::BTreeSet;

use super::counters::{Origin, Origins};
use super::program::{Action, Limit, Match, Program, Rule};
use super::{Op, Transaction};

/// Which drops are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// One drop in `one_in`, at random.
    Sampled { one_in: u32 },
    /// Every drop (up to the rate).
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropLog {
    pub mode: Mode,
    /// The NFLOG group the agent reads.
    pub group: u16,
    /// Most log messages per second for the whole node.
    pub per_second: u32,
}

impl DropLog {
    pub const OFF: DropLog = DropLog { mode: Mode::Off, group: 0, per_second: 0 };
}

/// The kind of drop, as the prefix and the metrics name it.
pub fn kind(origin: &Origin) -> &'static str {
    match origin {
        Origin::Isolated { .. } => "isolated",
        Origin::Invalid { .. } => "invalid",
        Origin::FailClosed { .. } => "fail-closed",
        Origin::Antispoof => "antispoof",
        Origin::Cluster { .. } => "cluster",
        Origin::Allow { .. } => "allow",
        Origin::Hairpin { .. } => "hairpin",
    }
}

/// Where a logged packet was dropped, read back from its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    pub chain: String,
    pub position: usize,
    pub kind: String,
}

impl Prefix {
    pub fn parse(s: &str) -> Option<Prefix> {
        let mut parts = s.split(' ');
        let chain = parts.next()?.to_string();
        let position = parts.next()?.parse().ok()?;
        let kind = parts.next()?.to_string();
        parts.next().is_none().then_some(Prefix { chain, position, kind })
    }
}

/// Add the log rules of `cfg` to `p` (and their places to `origins`: they
/// count nothing).
pub fn instrument(p: &mut Program, origins: &mut Origins, cfg: &DropLog) {
    let sample = match cfg.mode {
        Mode::Off => return,
        Mode::Sampled { one_in } => Some(Match::OneIn(one_in.max(1))),
        Mode::Full => None,
    };
    // Named for its rate: a changed rate is a new object, never a
    // redeclared one.
    let limit = Limit { name: format!("drop_log_{}", cfg.per_second), per_second: cfg.per_second, burst: cfg.per_second };
    let mut any = false;
    for (name, chain) in p.chains.iter_mut() {
        let Some(kinds) = origins.get_mut(name) else { continue };
        let mut rules = Vec::with_capacity(chain.rules.len() + 1);
        let mut places = Vec::with_capacity(kinds.len() + 1);
        for (rule, origin) in std::mem::take(&mut chain.rules).into_iter().zip(std::mem::take(kinds)) {
            if let Some(o) = origin.as_ref().filter(|o| o.drops()) {
                let mut matches = rule.matches.clone();
                matches.extend(sample.clone());
                matches.push(Match::Limit(limit.name.clone()));
                // The drop rule lands one place further on.
                let prefix = format!("{name} {} {}", rules.len() + 1, kind(o));
                rules.push(Rule::new(matches, Action::Log { prefix, group: cfg.group }));
                places.push(None);
                any = true;
            }
            rules.push(rule);
            places.push(origin);
        }
        chain.rules = rules;
        *kinds = places;
    }
    if any {
        p.add_limit(limit);
    }
}

/// `tx`, which takes the kernel from one program to another before
/// [`instrument`], made to take it between the two programs instrumented
/// (`instrumented` is the second): the rules added to a chain become that
/// chain's instrumented rules. Exact because a transaction rebuilds a
/// chain whole (flush or create, then every rule; [`super::diff`] and the
/// incremental engine alike) and a chain's log rules depend on that chain
/// alone; elements, sets and maps are untouched by logging.
pub fn instrument_transaction(tx: Transaction, instrumented: &Program) -> Transaction {
    let mut out = Transaction::new(&tx.table);
    let mut rebuilt = BTreeSet::new();
    for op in tx.ops {
        match op {
            Op::AddRule { chain, .. } => {
                if rebuilt.insert(chain.clone()) {
                    for rule in instrumented.chains.get(&chain).map(|c| c.rules.as_slice()).unwrap_or_default() {
                        out.push(Op::AddRule { chain: chain.clone(), rule: rule.clone() });
                    }
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::program::Verdict;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.244.1.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;

    fn compiled() -> (Program, Origins) {
        let cluster = crate::model::load::load_str("t.yaml", CLUSTER).expect("valid cluster");
        let ir = crate::ir::resolve(&cluster);
        crate::nft::compile_with_origins(&cluster, &ir, "n1")
    }

    #[test]
    fn off_changes_nothing() {
        let (mut p, mut o) = compiled();
        let (before, before_o) = (p.clone(), o.clone());
        instrument(&mut p, &mut o, &DropLog::OFF);
        assert_eq!((p, o), (before, before_o));
    }

    #[test]
    fn every_drop_is_logged_first_under_one_limit() {
        let (mut p, mut o) = compiled();
        let drops_before: usize = o.values().flatten().flatten().filter(|x| x.drops()).count();
        let cfg = DropLog { mode: Mode::Sampled { one_in: 10 }, group: 7, per_second: 50 };
        instrument(&mut p, &mut o, &cfg);
        p.validate().expect("still valid");
        assert_eq!(p.limits.keys().collect::<Vec<_>>(), ["drop_log_50"]);
        let mut logged = 0;
        for (name, chain) in &p.chains {
            assert_eq!(chain.rules.len(), o[name].len(), "{name}: origins keep their places");
            for (i, r) in chain.rules.iter().enumerate() {
                if let Action::Log { prefix, group } = &r.action {
                    logged += 1;
                    assert_eq!(*group, 7);
                    let next = &chain.rules[i + 1];
                    assert_eq!(next.action, Action::Verdict(Verdict::Drop), "{name}[{i}] logs for the drop after it");
                    let mut want = next.matches.clone();
                    want.push(Match::OneIn(10));
                    want.push(Match::Limit("drop_log_50".into()));
                    assert_eq!(r.matches, want);
                    let at = Prefix::parse(prefix).expect("our prefix");
                    assert_eq!((at.chain.as_str(), at.position), (name.as_str(), i + 1));
                    let origin = o[name][i + 1].as_ref().expect("the drop is counted");
                    assert_eq!(at.kind, kind(origin));
                    assert!(o[name][i].is_none());
                }
            }
        }
        assert_eq!(logged, drops_before);
        assert!(logged >= 5, "isolated (2), invalid (3), fail closed (3), antispoof: {logged}");
    }

    /// A policy change's transaction, instrumented, takes the kernel
    /// between the instrumented programs.
    #[test]
    fn transactions_instrumented_land_on_the_instrumented_program() {
        use crate::apply::{FakeKernel, Kernel};
        let cfg = DropLog { mode: Mode::Full, group: 1, per_second: 10 };
        let logged = |(mut p, mut o): (Program, Origins)| {
            instrument(&mut p, &mut o, &cfg);
            p
        };
        let (before, before_o) = compiled();
        let allow = "\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n";
        let cluster = crate::model::load::load_str("t.yaml", &(CLUSTER.to_string() + allow)).expect("valid");
        let after = crate::nft::compile_with_origins(&cluster, &crate::ir::resolve(&cluster), "n1");
        let tx = crate::nft::diff(Some(&before), &after.0);
        let (before, after) = (logged((before, before_o)), logged(after));
        let mut k = FakeKernel::with(before);
        k.apply(&instrument_transaction(tx, &after)).expect("applies");
        assert_eq!(k.table(&after.table), Some(&after));
    }

    #[test]
    fn prefixes_are_read_back_exactly() {
        assert_eq!(
            Prefix::parse("grp_ing_0a1b 2 isolated"),
            Some(Prefix { chain: "grp_ing_0a1b".into(), position: 2, kind: "isolated".into() })
        );
        assert_eq!(Prefix::parse("grp 2"), None);
        assert_eq!(Prefix::parse("grp x isolated"), None);
        assert_eq!(Prefix::parse("a 1 b c"), None);
    }
}
