//! The policy IR: every policy resolved against a cluster snapshot.
//!
//! Resolution turns selectors into sorted pod lists once, so that both the
//! reference evaluator ([`crate::eval`]) and the nftables compiler work from
//! the same resolved sets and cannot disagree about who a selector means.
//! Everything keeps its provenance as indices (policy, direction, rule, peer,
//! port) into the cluster's sorted policies, which is what explanations and
//! nft rule comments print.
//!
//! Invariants: `resolve` is pure and deterministic; pod lists are sorted and
//! contain only policy pods (taking part, not host-network).

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::{Cluster, Direction, Peer, PodId, PolicyId, PortSpec};
use crate::selector::Selector;

#[derive(Debug, Clone, Default)]
pub struct Ir {
    /// Parallel to `Cluster::policies`.
    pub policies: Vec<PolicyIr>,
    /// For each pod (parallel to `Cluster::pods`): the policies whose
    /// podSelector selects it, in policy order, whatever their types.
    pub selecting: Vec<Vec<PolicyId>>,
}

#[derive(Debug, Clone, Default)]
pub struct PolicyIr {
    pub selected: Vec<PodId>,
    pub ingress: Vec<RuleIr>,
    pub egress: Vec<RuleIr>,
}

impl PolicyIr {
    pub fn rules(&self, dir: Direction) -> &[RuleIr] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuleIr {
    /// `None`: the rule has no peers and so matches every peer.
    pub peers: Option<Vec<PeerIr>>,
    /// Empty: every port. Named ports stay names here: they resolve per
    /// destination pod, see [`crate::eval::port_matches`].
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIr {
    /// The policy pods a selector peer means. Shared between peers with the
    /// same (scope, selectors) key.
    Pods(Arc<Vec<PodId>>),
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

/// Where a rule comes from; what explanations and nft comments name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RuleRef {
    pub policy: PolicyId,
    pub direction: Direction,
    pub rule: usize,
}

/// Resolve every policy of `cluster`.
pub fn resolve(cluster: &Cluster) -> Ir {
    let index = Index::new(cluster);
    let mut cache: HashMap<PeerKey, Arc<Vec<PodId>>> = HashMap::new();
    let mut selecting = vec![Vec::new(); cluster.pods.len()];
    let mut policies = Vec::with_capacity(cluster.policies.len());
    for (pid, pol) in cluster.policies.iter().enumerate() {
        let selected = index.select(cluster, &pol.namespace, &pol.pod_selector);
        for &pod in &selected {
            selecting[pod].push(pid);
        }
        let mut rules = |dir: Direction| -> Vec<RuleIr> {
            pol.rules(dir)
                .iter()
                .map(|r| RuleIr {
                    peers: (!r.peers.is_empty()).then(|| {
                        r.peers.iter().map(|p| resolve_peer(cluster, &index, &mut cache, &pol.namespace, p)).collect()
                    }),
                    ports: r.ports.clone(),
                })
                .collect()
        };
        let ingress = rules(Direction::Ingress);
        let egress = rules(Direction::Egress);
        policies.push(PolicyIr { selected, ingress, egress });
    }
    Ir { policies, selecting }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeerKey {
    /// The policy's namespace when the peer has no namespaceSelector.
    own_namespace: Option<String>,
    namespaces: Option<Selector>,
    pods: Option<Selector>,
}

fn resolve_peer<'a>(
    cluster: &'a Cluster,
    index: &Index<'a>,
    cache: &mut HashMap<PeerKey, Arc<Vec<PodId>>>,
    policy_ns: &str,
    peer: &Peer,
) -> PeerIr {
    match peer {
        Peer::IpBlock { cidr, except } => PeerIr::IpBlock { cidr: *cidr, except: except.clone() },
        Peer::Pods { namespaces, pods } => {
            let key = PeerKey {
                own_namespace: namespaces.is_none().then(|| policy_ns.to_string()),
                namespaces: namespaces.clone(),
                pods: pods.clone(),
            };
            let ids = cache.entry(key).or_insert_with_key(|k| {
                let all = Selector::default();
                let pod_sel = k.pods.as_ref().unwrap_or(&all);
                let mut ids = match (&k.own_namespace, &k.namespaces) {
                    (Some(ns), _) => index.select(cluster, ns, pod_sel),
                    (None, Some(ns_sel)) => index
                        .namespaces(cluster, ns_sel)
                        .iter()
                        .flat_map(|ns| index.select(cluster, ns, pod_sel))
                        .collect(),
                    (None, None) => Vec::new(),
                };
                ids.sort_unstable();
                Arc::new(ids)
            });
            PeerIr::Pods(ids.clone())
        }
    }
}

/// Lookup structures that keep resolution near-linear at 100k pods: pods by
/// namespace, and by (namespace, label, value) for selectors with
/// matchLabels.
struct Index<'a> {
    by_ns: HashMap<&'a str, Vec<PodId>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<PodId>>,
    /// Namespace selectors repeat across policies (team=a, env=prod): match
    /// each distinct one against the namespaces once.
    ns_cache: std::cell::RefCell<HashMap<Selector, Arc<Vec<&'a str>>>>,
}

impl<'a> Index<'a> {
    fn new(cluster: &'a Cluster) -> Index<'a> {
        let mut by_ns: HashMap<&str, Vec<PodId>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str, &str), Vec<PodId>> = HashMap::new();
        for (id, pod) in cluster.pods.iter().enumerate() {
            if !pod.is_policy_pod() {
                continue;
            }
            by_ns.entry(&pod.namespace).or_default().push(id);
            for (k, v) in &pod.labels {
                by_label.entry((&pod.namespace, k, v)).or_default().push(id);
            }
        }
        Index { by_ns, by_label, ns_cache: Default::default() }
    }

    /// Names of the namespaces `sel` matches, in name order.
    fn namespaces(&self, cluster: &'a Cluster, sel: &Selector) -> Arc<Vec<&'a str>> {
        if let Some(hit) = self.ns_cache.borrow().get(sel) {
            return hit.clone();
        }
        let names: Vec<&str> =
            cluster.namespaces.values().filter(|n| sel.matches(&n.labels)).map(|n| n.name.as_str()).collect();
        let names = Arc::new(names);
        self.ns_cache.borrow_mut().insert(sel.clone(), names.clone());
        names
    }

    /// Policy pods of namespace `ns` that `sel` matches, sorted.
    fn select(&self, cluster: &Cluster, ns: &str, sel: &Selector) -> Vec<PodId> {
        let candidates = sel
            .match_labels
            .iter()
            .map(|(k, v)| self.by_label.get(&(ns, k.as_str(), v.as_str())).map_or(&[][..], Vec::as_slice))
            .min_by_key(|l| l.len())
            .unwrap_or_else(|| self.by_ns.get(ns).map_or(&[][..], Vec::as_slice));
        candidates.iter().copied().filter(|&id| sel.matches(&cluster.pods[id].labels)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(text: &str) -> Cluster {
        crate::model::load::load_str("t.yaml", text).unwrap()
    }

    const PODS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {pod: a}}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: y, labels: {pod: a}}
spec: {hostNetwork: true}
status: {podIP: 172.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: y, labels: {pod: a}}
status: {podIP: 10.0.0.9, phase: Succeeded}
";

    fn names(c: &Cluster, ids: &[PodId]) -> Vec<String> {
        ids.iter().map(|&i| c.pods[i].key()).collect()
    }

    fn check_peers(peer_yaml: &str, want: &[&str]) {
        let text = format!(
            "{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  ingress:\n  - from:\n    - {peer_yaml}\n"
        );
        let c = cluster(&text);
        let ir = resolve(&c);
        let Some(PeerIr::Pods(ids)) = ir.policies[0].ingress[0].peers.as_ref().map(|p| p[0].clone()) else {
            panic!("not a pod peer")
        };
        assert_eq!(names(&c, &ids), want, "{peer_yaml}");
    }

    #[test]
    fn peers_resolve_with_kubernetes_scoping() {
        check_peers("podSelector: {matchLabels: {pod: a}}", &["x/a"]);
        check_peers("podSelector: {}", &["x/a", "x/b"]);
        check_peers("namespaceSelector: {}", &["x/a", "x/b", "y/a"]);
        check_peers("namespaceSelector: {matchLabels: {ns: y}}", &["y/a"]);
        check_peers("{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}", &["x/a", "y/a"]);
        check_peers("namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}", &["y/a"]);
        check_peers("podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}", &["x/b"]);
    }

    #[test]
    fn selection_skips_host_network_and_finished_pods() {
        let text = format!("{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: y}}\nspec: {{podSelector: {{}}}}\n");
        let c = cluster(&text);
        let ir = resolve(&c);
        assert_eq!(names(&c, &ir.policies[0].selected), ["y/a"]);
        assert_eq!(ir.selecting[c.pod("y", "a").unwrap()], vec![0]);
    }
}
