//! Label selectors, validated once at load time and matched many times.
//!
//! A `Selector` can only be built through [`Selector::from_k8s`], which rejects
//! what the API server rejects (unknown operators, `In` without values,
//! `Exists` with values, keys that are not qualified names, values that are
//! not label values), so matching itself cannot fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::ser::SerializeMap;
use serde::Serialize;

/// An object's labels, sorted by key. Interned ([`crate::intern`]): the
/// replicas of a workload share one allocation, and a clone is a reference
/// count. Read-only; [`Labels::with`] makes a changed copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<[(Box<str>, Box<str>)]>);

static LABEL_SETS: LazyLock<crate::intern::Pairs> = LazyLock::new(Default::default);

impl Labels {
    pub fn new() -> Labels {
        Labels::sorted(std::iter::empty())
    }

    /// From pairs sorted by key, without duplicate keys.
    fn sorted<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Labels {
        Labels(LABEL_SETS.intern(pairs))
    }

    /// From a map as Kubernetes objects carry labels.
    pub fn from_map(map: &BTreeMap<String, String>) -> Labels {
        Labels::sorted(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        self.into_iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|(k, _)| &**k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These labels with `key` set to `value`.
    pub fn with(&self, key: &str, value: &str) -> Labels {
        let mut map: BTreeMap<&str, &str> = self.iter().collect();
        map.insert(key, value);
        Labels::sorted(map.iter().map(|(k, v)| (*k, *v)))
    }
}

impl Default for Labels {
    fn default() -> Self {
        Labels::new()
    }
}

impl FromIterator<(String, String)> for Labels {
    /// A later value for a key replaces an earlier one, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Labels {
        Labels::from_map(&iter.into_iter().collect())
    }
}

type Pair = (Box<str>, Box<str>);

fn pair(p: &Pair) -> (&str, &str) {
    (&p.0, &p.1)
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, Pair>, fn(&'a Pair) -> (&'a str, &'a str)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(pair)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

/// A validated label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// What is wrong with a selector, and the field (relative to the selector)
/// where it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

impl Selector {
    pub fn from_k8s(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let match_labels = sel.match_labels.clone().unwrap_or_default();
        for (k, v) in &match_labels {
            check_label_key(k)
                .and_then(|()| check_label_value(v))
                .map_err(|m| SelectorError { field: format!("matchLabels.{k}"), message: m })?;
        }
        let mut match_expressions = Vec::new();
        for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
            let field = |f: &str| format!("matchExpressions[{i}].{f}");
            let operator = match req.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError {
                        field: field("operator"),
                        message: format!("unknown operator {other:?} (expected In, NotIn, Exists, DoesNotExist)"),
                    })
                }
            };
            let values: BTreeSet<String> = req.values.iter().flatten().cloned().collect();
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(SelectorError {
                        field: field("values"),
                        message: format!("operator {:?} needs at least one value", req.operator),
                    })
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(SelectorError {
                        field: field("values"),
                        message: format!("operator {:?} takes no values", req.operator),
                    })
                }
                _ => {}
            }
            check_label_key(&req.key).map_err(|m| SelectorError { field: field("key"), message: m })?;
            for (j, v) in req.values.iter().flatten().enumerate() {
                check_label_value(v).map_err(|m| SelectorError { field: field(&format!("values[{j}]")), message: m })?;
            }
            match_expressions.push(Requirement { key: req.key.clone(), operator, values });
        }
        Ok(Selector { match_labels, match_expressions })
    }

    /// The selector that matches exactly `key=value`.
    pub fn label(key: &str, value: &str) -> Selector {
        Selector { match_labels: [(key.to_string(), value.to_string())].into(), match_expressions: vec![] }
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.contains(v)),
            // As in Kubernetes: NotIn also matches objects without the key.
            Operator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters: a
/// label value, and the name part of a label key.
fn is_label_name(v: &str) -> bool {
    v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// A DNS-1123 subdomain: dot-separated labels of lower-case alphanumerics
/// and '-', each starting and ending alphanumeric, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label_part)
}

/// A DNS-1123 label: what namespace names are.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_label_part(s)
}

fn is_dns_label_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn check_label_value(v: &str) -> Result<(), String> {
    if is_label_name(v) {
        Ok(())
    } else {
        Err(format!("{v:?} is not a valid label value (at most 63 characters: alphanumerics, '-', '_', '.', starting and ending alphanumeric)"))
    }
}

/// A label key is a qualified name: `name` or `prefix/name`, the name as a
/// label value but not empty, the prefix a DNS subdomain.
pub fn check_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if !name.is_empty() && is_label_name(name) && prefix.is_none_or(is_dns_subdomain) {
        Ok(())
    } else {
        Err(format!(
            "{k:?} is not a valid label key (a name of at most 63 alphanumerics, '-', '_', '.', starting and ending alphanumeric, optionally after a DNS subdomain prefix and '/', as in app.kubernetes.io/name)"
        ))
    }
}

impl fmt::Display for Selector {
    /// kubectl's selector syntax: `app=web,tier in (a,b),!legacy`; `{}` for
    /// the empty selector, so an empty one is visible in explanations.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            let vals = r.values.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r.operator {
                Operator::In => format!("{} in ({vals})", r.key),
                Operator::NotIn => format!("{} notin ({vals})", r.key),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn sel(json: serde_json::Value) -> Result<Selector, SelectorError> {
        Selector::from_k8s(&serde_json::from_value::<LabelSelector>(json).unwrap())
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matching() {
        let cases: &[(serde_json::Value, &[(&str, &str)], bool)] = &[
            (serde_json::json!({}), &[], true),
            (serde_json::json!({"matchLabels": {"a": "1"}}), &[("a", "1"), ("b", "2")], true),
            (serde_json::json!({"matchLabels": {"a": "1"}}), &[("a", "2")], false),
            (serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}), &[("a", "2")], true),
            (serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}), &[], false),
            (serde_json::json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}), &[], true),
            (serde_json::json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}), &[("a", "1")], false),
            (serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]}), &[("a", "")], true),
            (serde_json::json!({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}), &[("a", "x")], false),
            (
                serde_json::json!({"matchLabels": {"b": "2"}, "matchExpressions": [{"key": "a", "operator": "Exists"}]}),
                &[("a", "1")],
                false,
            ),
        ];
        for (json, l, want) in cases {
            assert_eq!(sel(json.clone()).unwrap().matches(&labels(l)), *want, "{json} on {l:?}");
        }
    }

    #[test]
    fn invalid_selectors() {
        let cases = [
            (serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exist"}]}), "matchExpressions[0].operator"),
            (serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In"}]}), "matchExpressions[0].values"),
            (
                serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
                "matchExpressions[0].values",
            ),
            (serde_json::json!({"matchLabels": {"a": "has space"}}), "matchLabels.a"),
            (serde_json::json!({"matchLabels": {"has space": "a"}}), "matchLabels.has space"),
            (serde_json::json!({"matchExpressions": [{"key": "", "operator": "Exists"}]}), "matchExpressions[0].key"),
            (serde_json::json!({"matchExpressions": [{"key": "a/b/c", "operator": "Exists"}]}), "matchExpressions[0].key"),
            (
                serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "not ok"]}]}),
                "matchExpressions[0].values[1]",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(sel(json.clone()).unwrap_err().field, field, "{json}");
        }
    }

    #[test]
    fn label_keys() {
        let long_name = "a".repeat(63);
        let long_prefix = format!("{}/a", ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join("."));
        for ok in ["app", "app.kubernetes.io/name", "A_b.c-D", "9", "example.com/x", long_name.as_str(), long_prefix.as_str()] {
            assert_eq!(check_label_key(ok), Ok(()), "{ok}");
        }
        let too_long = "a".repeat(64);
        let prefix_too_long = format!("{}x/a", &long_prefix[..long_prefix.len() - 2]);
        for bad in ["", "-a", "a-", "a b", "/a", "a/", "a/b/c", "Example.com/a", "a_b.io/x", "é", too_long.as_str(), prefix_too_long.as_str()] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display() {
        let s = Selector::from_k8s(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["b".into(), "a".into()]),
            }]),
        })
        .unwrap();
        assert_eq!(s.to_string(), "app=web,tier notin (a,b)");
        assert_eq!(Selector::default().to_string(), "{}");
    }
}
