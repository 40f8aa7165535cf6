//! The smallest transaction from the committed program to the next one.
//!
//! The agent never reads the table back on the sync path (at scale a listing
//! takes seconds to minutes): it keeps the committed [`Program`] in memory
//! and diffs against it. Sets and maps change element by element (cheap at
//! any size for hash sets); a chain whose rules changed is rebuilt whole
//! (flush, re-add: chains are small and grow with policies, not pods);
//! objects are declared before anything refers to them and deleted only once
//! nothing does.

use std::collections::BTreeSet;

use super::program::{Action, AddrMatch, Chain, Match, Program};
use super::transaction::{Op, Transaction};

/// The transaction that takes the kernel from `old` (what was last
/// committed, `None` if unknown) to `new`.
///
/// With no known old state the table is replaced whole in one transaction:
/// `add table` (so the delete cannot fail), `delete table`, then everything
/// of `new`; nothing of a stale table survives, and no packet ever sees a
/// half-built one.
pub fn diff(old: Option<&Program>, new: &Program) -> Transaction {
    let old = match old {
        Some(o) if o.table == new.table => o,
        _ => return replace(new),
    };
    let mut tx = Transaction::new(&new.table);

    // What is replaced wholesale: removed, or re-declared with another type.
    let set_gone = |name: &str| new.sets.get(name).is_none_or(|s| !s.same_declaration(&old.sets[name]));
    let map_gone = |name: &str| new.maps.get(name).is_none_or(|m| m.key != old.maps[name].key);
    let chain_gone = |name: &str| new.chains.get(name).is_none_or(|c| c.base != old.chains[name].base);
    let sets_gone: BTreeSet<&str> = old.sets.keys().map(String::as_str).filter(|n| set_gone(n)).collect();
    let maps_gone: BTreeSet<&str> = old.maps.keys().map(String::as_str).filter(|n| map_gone(n)).collect();
    let chains_gone: BTreeSet<&str> = old.chains.keys().map(String::as_str).filter(|n| chain_gone(n)).collect();
    let limits_gone: BTreeSet<&str> =
        old.limits.keys().map(String::as_str).filter(|n| new.limits.get(*n) != old.limits.get(*n)).collect();

    // Chains kept under the same declaration whose rules must be re-added:
    // their rules changed, or they refer to a set or map being re-created
    // (the delete would fail while a rule still holds it).
    let rebuilt: BTreeSet<&str> = new
        .chains
        .values()
        .filter(|c| old.chains.contains_key(&c.name) && !chains_gone.contains(c.name.as_str()))
        .filter(|c| c.rules != old.chains[&c.name].rules || refers_to(c, &sets_gone, &maps_gone, &limits_gone))
        .map(|c| c.name.as_str())
        .collect();

    // 1. Drop every reference that is about to dangle.
    for name in rebuilt.iter().chain(chains_gone.iter()) {
        if !old.chains[*name].rules.is_empty() {
            tx.push(Op::FlushChain { name: name.to_string() });
        }
    }
    for (name, m) in &old.maps {
        if maps_gone.contains(name.as_str()) {
            continue;
        }
        let nm = &new.maps[name];
        let keys = m.elements.iter().filter(|(k, v)| nm.elements.get(*k) != Some(*v)).map(|(k, _)| *k).collect();
        tx.push(Op::DeleteMapElements { map: name.clone(), keys });
    }
    // Interval sets refuse an element overlapping a present one: delete
    // before adding.
    for (name, s) in &old.sets {
        if sets_gone.contains(name.as_str()) {
            continue;
        }
        let elements = s.elements.difference(&new.sets[name].elements).copied().collect();
        tx.push(Op::DeleteElements { set: name.clone(), elements });
    }

    // 2. Delete what is gone: maps first (their elements may jump to a
    // chain being deleted), then chains, then the sets nothing refers to.
    for name in &maps_gone {
        tx.push(Op::DeleteMap { name: name.to_string() });
    }
    for name in &chains_gone {
        tx.push(Op::DeleteChain { name: name.to_string() });
    }
    for name in &sets_gone {
        tx.push(Op::DeleteSet { name: name.to_string() });
    }

    // A limit whose rate changed is deleted and declared again (the chains
    // naming it are rebuilt, above).
    for name in &limits_gone {
        tx.push(Op::DeleteLimit { name: name.to_string() });
    }

    // 3. Declare what is new, fill it and the kept sets and maps, then add
    // the rules of new and rebuilt chains.
    for l in new.limits.values().filter(|l| old.limits.get(&l.name) != Some(*l)) {
        tx.push(Op::AddLimit { limit: (*l).clone() });
    }
    for s in new.sets.values().filter(|s| !old.sets.contains_key(&s.name) || sets_gone.contains(s.name.as_str())) {
        tx.push(Op::AddSet { name: s.name.clone(), key: s.key, interval: s.interval });
    }
    for m in new.maps.values().filter(|m| !old.maps.contains_key(&m.name) || maps_gone.contains(m.name.as_str())) {
        tx.push(Op::AddMap { name: m.name.clone(), key: m.key });
    }
    let fresh_chain = |c: &&Chain| !old.chains.contains_key(&c.name) || chains_gone.contains(c.name.as_str());
    for c in new.chains.values().filter(fresh_chain) {
        tx.push(Op::AddChain { name: c.name.clone(), base: c.base });
    }
    for s in new.sets.values() {
        let elements = match old.sets.get(&s.name) {
            Some(o) if !sets_gone.contains(s.name.as_str()) => s.elements.difference(&o.elements).copied().collect(),
            _ => s.elements.iter().copied().collect(),
        };
        tx.push(Op::AddElements { set: s.name.clone(), elements });
    }
    for m in new.maps.values() {
        let old_m = old.maps.get(&m.name).filter(|_| !maps_gone.contains(m.name.as_str()));
        let elements = m
            .elements
            .iter()
            .filter(|(k, v)| old_m.is_none_or(|o| o.elements.get(*k) != Some(*v)))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        tx.push(Op::AddMapElements { map: m.name.clone(), elements });
    }
    for c in new.chains.values().filter(|c| fresh_chain(c) || rebuilt.contains(c.name.as_str())) {
        for r in &c.rules {
            tx.push(Op::AddRule { chain: c.name.clone(), rule: r.clone() });
        }
    }
    tx
}

/// Replace the table whole, atomically.
pub fn replace(new: &Program) -> Transaction {
    let mut tx = Transaction::new(&new.table);
    tx.push(Op::AddTable { table: new.table.clone() });
    tx.push(Op::DeleteTable { table: new.table.clone() });
    tx.ops.extend(Transaction::create(new).ops);
    tx
}

fn refers_to(c: &Chain, sets: &BTreeSet<&str>, maps: &BTreeSet<&str>, limits: &BTreeSet<&str>) -> bool {
    c.rules.iter().any(|r| {
        let vmap = matches!(&r.action, Action::Vmap { map, .. } if maps.contains(map.as_str()));
        vmap || r.matches.iter().any(|m| match m {
            Match::Addr { rhs: AddrMatch::Set(s), .. } | Match::NamedPort { set: s, .. } | Match::AddrPair { set: s, .. } => sets.contains(s.as_str()),
            Match::Limit(l) => limits.contains(l.as_str()),
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Kernel;
    use crate::model::Family;
    use crate::nft::program::tests::{addr_set, chain, sample, saddr_in, v4};
    use crate::nft::program::{BaseHook, ChainPolicy, Element, Hook, Rule, Verdict};

    /// Apply `tx` to `old` in memory with the kernel's rules and return the
    /// result: the diff is correct when that equals `new`.
    fn roundtrip(old: &Program, new: &Program) -> Transaction {
        let tx = diff(Some(old), new);
        let mut k = crate::apply::FakeKernel::with(old.clone());
        k.apply(&tx).unwrap_or_else(|e| panic!("{e}\n{tx}"));
        assert_eq!(k.table(&new.table), Some(new), "after\n{tx}");
        tx
    }

    #[test]
    fn unchanged_is_empty() {
        assert!(diff(Some(&sample()), &sample()).is_empty());
    }

    #[test]
    fn no_old_state_replaces_the_table() {
        let tx = diff(None, &sample());
        assert_eq!(tx.ops[..2], [Op::AddTable { table: "netfence".into() }, Op::DeleteTable { table: "netfence".into() }]);
        let mut k = crate::apply::FakeKernel::default();
        k.apply(&tx).unwrap();
        assert_eq!(k.table("netfence"), Some(&sample()));
    }

    #[test]
    fn element_changes_are_element_ops() {
        let mut new = sample();
        let s = new.sets.get_mut("peer4_a").unwrap();
        s.elements.remove(&Element::Addr(v4("10.244.2.11")));
        s.elements.insert(Element::Addr(v4("10.244.2.12")));
        new.maps.get_mut("ingress4").unwrap().elements.insert(Element::Addr(v4("10.244.1.13")), Verdict::Jump("grp_a".into()));
        // A changed verdict is a delete and an add of the key.
        new.maps.get_mut("ingress4").unwrap().elements.insert(Element::Addr(v4("10.244.1.12")), Verdict::Drop);
        let tx = roundtrip(&sample(), &new);
        assert!(tx.only_elements(), "{tx}");
        assert_eq!(
            tx.to_string(),
            "delete element inet netfence ingress4 { 10.244.1.12 }
delete element inet netfence peer4_a { 10.244.2.11 }
add element inet netfence peer4_a { 10.244.2.12 }
add element inet netfence ingress4 { 10.244.1.12 : drop, 10.244.1.13 : jump grp_a }
"
        );
    }

    #[test]
    fn changed_chain_is_rebuilt_alone() {
        let mut new = sample();
        new.chains.get_mut("grp_a").unwrap().rules.insert(0, Rule::verdict(vec![saddr_in("peer4_a")], Verdict::Accept));
        let tx = roundtrip(&sample(), &new);
        assert_eq!(
            tx.to_string(),
            "flush chain inet netfence grp_a
add rule inet netfence grp_a ip saddr @peer4_a accept
add rule inet netfence grp_a jump pol_a
add rule inet netfence grp_a drop
"
        );
    }

    #[test]
    fn objects_come_and_go_in_a_valid_order() {
        // Remove the policy chain and its sets; add a new one in its place.
        let old = sample();
        let mut new = sample();
        new.chains.remove("pol_a");
        new.sets.remove("peer4_a");
        new.sets.remove("blk4_b");
        new.sets.remove("np4_tcp_http");
        new.add_set(addr_set("peer4_new", Family::IPv4, &["10.0.0.1"]));
        new.add_chain(chain("pol_new", vec![Rule::verdict(vec![saddr_in("peer4_new")], Verdict::Accept)]));
        new.chains.get_mut("grp_a").unwrap().rules[0] = Rule::verdict(vec![], Verdict::Jump("pol_new".into()));
        roundtrip(&old, &new);
        roundtrip(&new, &old);
    }

    #[test]
    fn redeclared_objects_are_recreated() {
        let old = sample();
        let mut new = sample();
        // Same name, other type: every rule holding it is rebuilt around
        // the delete and re-add.
        let s = new.sets.get_mut("peer4_a").unwrap();
        s.interval = true;
        s.elements = [Element::Net("10.244.0.0/16".parse().unwrap())].into();
        new.chains.get_mut("ingress").unwrap().base =
            Some(BaseHook { hook: Hook::Forward, priority: 0, policy: ChainPolicy::Drop });
        let tx = roundtrip(&old, &new);
        assert!(tx.ops.contains(&Op::DeleteSet { name: "peer4_a".into() }), "{tx}");
        roundtrip(&new, &old);
    }

    #[test]
    fn map_and_jump_targets_removed_together() {
        let old = sample();
        let mut new = sample();
        new.maps.remove("ingress4");
        new.chains.get_mut("ingress").unwrap().rules.retain(|r| !matches!(r.action, Action::Vmap { .. }));
        new.chains.remove("grp_a");
        roundtrip(&old, &new);
        roundtrip(&new, &old);
    }
}
