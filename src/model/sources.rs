//! Where the objects of a cluster read from files came from.
//!
//! The model keeps only what judging flows needs (a policy's file and line),
//! so the agent's cache stays small. Lint needs more: the line and column of
//! the very field that is wrong, whether a list was written empty or left
//! out (the model cannot tell `from: []` from no `from`), objects the model
//! folds away (a second policy of the same name) and which kinds the input
//! held at all (a selector "matching no namespace" means nothing when no
//! Namespace was given). The loader records that here on request
//! ([`super::load::ClusterBuilder::keep_sources`]); nothing else reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::cluster_policy::ClusterKind;
use crate::yaml::{Doc, Pos};

/// A point in a source file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: Arc<str>,
    pub pos: Pos,
}

/// One NetworkPolicy as written: its document with every field's position.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub file: Arc<str>,
    pub doc: Doc,
}

impl PolicySource {
    /// Where `path` (a field path such as `spec.ingress[0].from[1]`) starts,
    /// or its nearest written ancestor.
    pub fn locate(&self, path: &str) -> Location {
        Location { file: self.file.clone(), pos: self.doc.pos(path) }
    }

    /// The written value at a dotted field path (`spec.egress`,
    /// `spec.ingress[0].ports[1].protocol`), `None` when it was left out.
    pub fn value(&self, path: &str) -> Option<&Value> {
        let mut v = &self.doc.value;
        for part in path.split('.') {
            let (key, indices) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                v = v.get(key)?;
            }
            for idx in indices.split('[').filter(|s| !s.is_empty()) {
                let n: usize = idx.strip_suffix(']')?.parse().ok()?;
                v = v.get(n)?;
            }
        }
        (!v.is_null()).then_some(v)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Every NetworkPolicy document by (namespace, name), in reading order:
    /// more than one means the input defines that name more than once.
    pub policies: HashMap<(String, String), Vec<PolicySource>>,
    /// Every cluster policy document (ClusterNetworkPolicy, ANP, BANP) by
    /// (kind, name), in reading order, as for NetworkPolicies: lint names
    /// the very rule field of a cluster policy too.
    pub cluster_policies: HashMap<(ClusterKind, String), Vec<PolicySource>>,
    /// Where each Pod's document starts, by (namespace, name).
    pub pods: HashMap<(String, String), Location>,
    /// How many objects of each `kind` were read (ignored kinds included).
    pub kinds: BTreeMap<String, usize>,
}

impl Sources {
    /// The first document of a policy: the one the model holds.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<&PolicySource> {
        self.policies.get(&(namespace.to_string(), name.to_string())).and_then(|v| v.first())
    }

    /// The first document of a cluster policy: the one the model holds.
    pub fn cluster_policy(&self, kind: ClusterKind, name: &str) -> Option<&PolicySource> {
        self.cluster_policies.get(&(kind, name.to_string())).and_then(|v| v.first())
    }

    /// Add what a later file recorded, keeping reading order: its
    /// policies come after ours, a pod already seen keeps its first place.
    pub fn extend(&mut self, later: Sources) {
        for (k, v) in later.policies {
            self.policies.entry(k).or_default().extend(v);
        }
        for (k, v) in later.cluster_policies {
            self.cluster_policies.entry(k).or_default().extend(v);
        }
        for (k, at) in later.pods {
            self.pods.entry(k).or_insert(at);
        }
        for (k, n) in later.kinds {
            *self.kinds.entry(k).or_default() += n;
        }
    }

    pub fn has_kind(&self, kind: &str) -> bool {
        self.kinds.get(kind).is_some_and(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_values_by_path() {
        let docs = crate::yaml::parse("spec:\n  egress: []\n  ingress:\n  - ports:\n    - port: 53\n    - {port: 53, protocol: UDP}\n").unwrap();
        let s = PolicySource { file: "p.yaml".into(), doc: docs[0].clone() };
        assert_eq!(s.value("spec.egress"), Some(&serde_json::json!([])));
        assert_eq!(s.value("spec.ingress[0].ports[0].protocol"), None);
        assert_eq!(s.value("spec.ingress[0].ports[1].protocol"), Some(&serde_json::json!("UDP")));
        assert_eq!(s.value("spec.ingress[3]"), None);
        assert_eq!(s.locate("spec.ingress[0].ports[1]").pos, Pos { line: 6, col: 7 });
    }
}
