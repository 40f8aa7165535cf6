//! What each counted rule of a program measures, and the counters read
//! back from the kernel.
//!
//! The compiler records an [`Origin`] for every rule it counts, by chain and
//! position ([`Origins`]), as it builds the program: the meaning of a
//! counter comes from the compiled program itself, never from parsing rule
//! comments back (a comment is shortened to fit nft's 127 bytes and is for
//! people). The kernel's side ([`counts_from_json`]) is the terse listing of
//! the table (`nft -j -t list table`: chains and rules with their counters,
//! no set or map elements), in chain order, which is the order the program
//! gave the rules.
//!
//! [`Series`] is what a counter is reported under: a policy, a direction
//! and a rule of that policy (or the kind of drop), so the number of series
//! grows with policies and their rules, never with pods, peers or ports.

use std::collections::BTreeMap;

use crate::model::Direction;

/// Why a counted rule is in the program.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Rule `rule` (its index in the policy's ingress or egress list) of
    /// `policy` (`namespace/name`): the rule accepts.
    Allow { policy: String, dir: Direction, rule: usize },
    /// The drop after every isolating policy of a pod (`namespace/name`, in
    /// order) found no rule that allows: the default deny.
    Isolated { policies: Vec<String>, dir: Direction },
    /// `ct state invalid drop`: a packet conntrack places in no connection.
    Invalid { dir: Direction },
    /// An address in the node's pod CIDRs that no map knows: failing closed.
    FailClosed { dir: Direction },
    /// A source not routed back through its interface.
    Antispoof,
    /// A local pod reaching itself through a Service (hairpin), which no
    /// NetworkPolicy can block: accepted at the top of a group chain.
    Hairpin { dir: Direction },
    /// Rule `rule` of cluster policy `policy` (its key: `name`, `anp:name`,
    /// `banp:default`) in `dir`, whose action is `action`.
    Cluster { policy: String, dir: Direction, rule: usize, action: crate::model::cluster_policy::Action },
}

impl Origin {
    /// Whether the rule drops.
    pub fn drops(&self) -> bool {
        match self {
            Origin::Allow { .. } | Origin::Hairpin { .. } => false,
            Origin::Cluster { action, .. } => *action == crate::model::cluster_policy::Action::Deny,
            _ => true,
        }
    }

    /// The direction it judges (`None` for anti-spoofing, which comes first).
    pub fn direction(&self) -> Option<Direction> {
        match self {
            Origin::Allow { dir, .. }
            | Origin::Isolated { dir, .. }
            | Origin::Invalid { dir }
            | Origin::FailClosed { dir }
            | Origin::Hairpin { dir }
            | Origin::Cluster { dir, .. } => Some(*dir),
            Origin::Antispoof => None,
        }
    }

    /// The series this rule's counter adds to. A default deny is a decision
    /// of all the isolating policies together, so it adds to the
    /// `isolated` series of each of them: per policy it reads "packets this
    /// policy's isolation dropped"; summed over policies it counts a packet
    /// once per isolating policy.
    pub fn series(&self) -> Vec<Series> {
        let dir = self.direction().map(|d| d.to_string()).unwrap_or_default();
        let one = |policy: &str, rule: String| Series { policy: policy.to_string(), direction: dir.clone(), rule };
        match self {
            Origin::Allow { policy, rule, .. } | Origin::Cluster { policy, rule, .. } => vec![one(policy, rule.to_string())],
            Origin::Isolated { policies, .. } => policies.iter().map(|p| one(p, "isolated".into())).collect(),
            Origin::Invalid { .. } => vec![one("", "invalid".into())],
            Origin::FailClosed { .. } => vec![one("", "fail-closed".into())],
            Origin::Antispoof => vec![one("", "antispoof".into())],
            Origin::Hairpin { .. } => vec![one("", "hairpin".into())],
        }
    }
}

/// The origin of every rule of a program, by chain name and position
/// (`None` for a rule without a counter).
pub type Origins = BTreeMap<String, Vec<Option<Origin>>>;

/// One metrics series: `policy` is `namespace/name` (empty for drops that
/// belong to no policy), `rule` the rule's index in the policy's list for
/// `direction`, or `isolated`, `invalid`, `fail-closed`, `antispoof`,
/// `hairpin`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub policy: String,
    pub direction: String,
    pub rule: String,
}

/// One counted rule as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCount {
    pub chain: String,
    /// Position in its chain (0-based), among all its rules.
    pub position: usize,
    /// The kernel's handle: unique within the table while it exists, so a
    /// rule rewritten by a sync is a new rule with a new counter.
    pub handle: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// The counters of `nft -j [-t] list table inet NAME`, in chain order.
/// Rules without a counter are skipped but still take a position.
pub fn counts_from_json(v: &serde_json::Value) -> Result<Vec<RuleCount>, String> {
    let items = v["nftables"].as_array().ok_or("no \"nftables\" array")?;
    let mut positions: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for item in items {
        let Some(rule) = item.get("rule") else { continue };
        let chain = rule["chain"].as_str().ok_or("a rule without its chain")?;
        let position = positions.entry(chain).or_default();
        let at = *position;
        *position += 1;
        let handle = rule["handle"].as_u64().ok_or_else(|| format!("chain {chain:?} rule {at}: no handle"))?;
        let exprs = rule["expr"].as_array().ok_or_else(|| format!("chain {chain:?} rule {at}: no expressions"))?;
        if let Some(c) = exprs.iter().find_map(|e| e.get("counter")) {
            let n = |k: &str| c[k].as_u64().ok_or_else(|| format!("chain {chain:?} rule {at}: counter without {k}"));
            out.push(RuleCount { chain: chain.to_string(), position: at, handle, packets: n("packets")?, bytes: n("bytes")? });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_chain_order_with_positions() {
        let v = serde_json::json!({"nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"table": {"family": "inet", "name": "netfence", "handle": 1}},
            {"chain": {"family": "inet", "table": "netfence", "name": "ingress", "handle": 2}},
            {"rule": {"family": "inet", "table": "netfence", "chain": "ingress", "handle": 5,
                "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "netfence", "chain": "ingress", "handle": 6,
                "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"drop": null}], "comment": "x"}},
            {"rule": {"family": "inet", "table": "netfence", "chain": "grp", "handle": 9,
                "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
        ]});
        let got = counts_from_json(&v).unwrap();
        assert_eq!(
            got,
            vec![
                RuleCount { chain: "ingress".into(), position: 1, handle: 6, packets: 3, bytes: 180 },
                RuleCount { chain: "grp".into(), position: 0, handle: 9, packets: 0, bytes: 0 },
            ]
        );
        assert!(counts_from_json(&serde_json::json!({})).is_err());
        let no_handle = serde_json::json!({"nftables": [{"rule": {"chain": "c", "expr": []}}]});
        assert_eq!(counts_from_json(&no_handle).unwrap_err(), "chain \"c\" rule 0: no handle");
    }

    #[test]
    fn series_per_policy_rule_and_drop_kind() {
        let check = |o: Origin, want: &[(&str, &str, &str)]| {
            let got: Vec<(String, String, String)> = o.series().into_iter().map(|s| (s.policy, s.direction, s.rule)).collect();
            let want: Vec<(String, String, String)> = want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
            assert_eq!(got, want, "{o:?}");
        };
        check(Origin::Allow { policy: "x/web".into(), dir: Direction::Ingress, rule: 2 }, &[("x/web", "ingress", "2")]);
        check(
            Origin::Isolated { policies: vec!["x/a".into(), "x/b".into()], dir: Direction::Egress },
            &[("x/a", "egress", "isolated"), ("x/b", "egress", "isolated")],
        );
        check(Origin::Invalid { dir: Direction::Ingress }, &[("", "ingress", "invalid")]);
        check(Origin::FailClosed { dir: Direction::Egress }, &[("", "egress", "fail-closed")]);
        check(Origin::Antispoof, &[("", "", "antispoof")]);
        check(Origin::Hairpin { dir: Direction::Ingress }, &[("", "ingress", "hairpin")]);
        assert!(!Origin::Hairpin { dir: Direction::Egress }.drops());
        assert!(!Origin::Allow { policy: "x/web".into(), dir: Direction::Ingress, rule: 0 }.drops());
        assert!(Origin::Antispoof.drops());
    }
}
