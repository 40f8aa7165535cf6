//! The policy IR: every policy resolved against a cluster snapshot.
//!
//! Resolution turns selectors into sorted pod lists once, so that both the
//! reference evaluator ([`crate::eval`]) and the nftables compiler work from
//! the same resolved sets and cannot disagree about who a selector means.
//! Everything keeps its provenance as indices (policy, direction, rule, peer,
//! port) into the cluster's sorted policies, which is what explanations and
//! nft rule comments print.
//!
//! [`Local`] answers the same questions for the pods one flow is about,
//! computing only what the evaluator asks (the policies selecting them,
//! whether a peer means them), for `explain` at any cluster size. Both
//! implement [`Resolution`], and both read who a selector peer means from
//! one definition, [`PeerKey`].
//!
//! Invariants: `resolve` is pure and deterministic; pod lists are sorted and
//! contain only policy pods (taking part, not host-network); [`Local`] and
//! [`Ir`] give the evaluator the same answers (tested on every check of the
//! conformance suite and on random flows, tests/explain_local.rs).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::{Cluster, Direction, Peer, Pod, PodId, Policy, PolicyId, PortSpec};
use crate::selector::{Labels, Selector};

/// What the reference evaluator needs to know about resolved selectors.
pub trait Resolution {
    /// The policies whose podSelector selects `pod`, in policy order,
    /// whatever their types; empty for a pod that is not a policy pod.
    fn selecting(&self, pod: PodId) -> Cow<'_, [PolicyId]>;
    /// Is `pod` among the pods that selector peer `peer` of `rule` means?
    /// False for an ipBlock peer.
    fn peer_has(&self, rule: RuleRef, peer: usize, pod: PodId) -> bool;
    /// Does selector peer `peer` of `rule` mean no pod at all? False for an
    /// ipBlock peer.
    fn peer_is_empty(&self, rule: RuleRef, peer: usize) -> bool;
}

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

impl Ir {
    fn pod_peer(&self, rule: RuleRef, peer: usize) -> Option<&[PodId]> {
        let peers = self.policies.get(rule.policy)?.rules(rule.direction).get(rule.rule)?.peers.as_ref()?;
        match peers.get(peer)? {
            PeerIr::Pods(ids) => Some(ids),
            PeerIr::IpBlock { .. } => None,
        }
    }
}

impl Resolution for Ir {
    fn selecting(&self, pod: PodId) -> Cow<'_, [PolicyId]> {
        Cow::Borrowed(&self.selecting[pod])
    }

    fn peer_has(&self, rule: RuleRef, peer: usize, pod: PodId) -> bool {
        self.pod_peer(rule, peer).is_some_and(|ids| ids.binary_search(&pod).is_ok())
    }

    fn peer_is_empty(&self, rule: RuleRef, peer: usize) -> bool {
        self.pod_peer(rule, peer).is_some_and(<[PodId]>::is_empty)
    }
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

/// Who a selector peer means, whatever policy it sits in: Kubernetes'
/// scoping in one place. Resolution shares pod lists between peers with the
/// same key, and [`Local`] asks it about one pod at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// The policy's namespace when the peer has no namespaceSelector.
    own_namespace: Option<String>,
    namespaces: Option<Selector>,
    pods: Option<Selector>,
}

impl PeerKey {
    /// The key of a selector peer of a policy in `policy_ns`.
    pub fn new(policy_ns: &str, namespaces: &Option<Selector>, pods: &Option<Selector>) -> PeerKey {
        PeerKey {
            own_namespace: namespaces.is_none().then(|| policy_ns.to_string()),
            namespaces: namespaces.clone(),
            pods: pods.clone(),
        }
    }

    /// `None` for an ipBlock peer.
    pub fn of(policy_ns: &str, peer: &Peer) -> Option<PeerKey> {
        match peer {
            Peer::IpBlock { .. } => None,
            Peer::Pods { namespaces, pods } => Some(PeerKey::new(policy_ns, namespaces, pods)),
        }
    }

    /// The namespaces the peer reaches into, in name order.
    fn scope<'a>(&self, cluster: &'a Cluster, namespaces: &NamespaceMatches<'a>) -> Arc<Vec<&'a str>> {
        match (&self.own_namespace, &self.namespaces) {
            (Some(own), _) => Arc::new(cluster.namespaces.get_key_value(own.as_str()).map(|(n, _)| n.as_str()).into_iter().collect()),
            (None, Some(sel)) => namespaces.matching(cluster, sel),
            // Not built: a peer without a namespaceSelector has its own.
            (None, None) => Arc::new(Vec::new()),
        }
    }

    fn pod_selector(&self) -> Cow<'_, Selector> {
        self.pods.as_ref().map_or_else(|| Cow::Owned(Selector::default()), Cow::Borrowed)
    }

    /// Does the peer mean `pod`? The question resolution answers for every
    /// pod at once, asked of one.
    pub fn contains(&self, cluster: &Cluster, pod: &Pod) -> bool {
        self.reaches(&pod.namespace, cluster.namespace_labels(&pod.namespace)) && self.selects_in_scope(pod)
    }

    /// Does the peer reach into namespace `ns`, whose labels are `labels`
    /// (`None`: no such namespace)?
    pub fn reaches(&self, ns: &str, labels: Option<&Labels>) -> bool {
        match (&self.own_namespace, &self.namespaces) {
            (Some(own), _) => own == ns,
            (None, Some(sel)) => labels.is_some_and(|l| sel.matches(l)),
            (None, None) => false,
        }
    }

    /// The namespace the peer is confined to when it has no
    /// namespaceSelector.
    pub fn own_namespace(&self) -> Option<&str> {
        self.own_namespace.as_deref()
    }

    /// Does the peer mean `pod`, given that it reaches the pod's namespace?
    pub fn selects_in_scope(&self, pod: &Pod) -> bool {
        selects(&pod.namespace, &self.pod_selector(), pod)
    }
}

/// Does `policy`'s podSelector select `pod`? Only policy pods of its
/// namespace are selected.
pub fn policy_selects(policy: &Policy, pod: &Pod) -> bool {
    selects(&policy.namespace, &policy.pod_selector, pod)
}

/// Does a selector of namespace `ns` (a policy's podSelector, or a peer's
/// podSelector within `ns`) select `pod`? Only policy pods are selected.
fn selects(ns: &str, sel: &Selector, pod: &Pod) -> bool {
    pod.is_policy_pod() && pod.namespace == ns && sel.matches(&pod.labels)
}

fn resolve_peer<'a>(
    cluster: &'a Cluster,
    index: &Index<'a>,
    cache: &mut HashMap<PeerKey, Arc<Vec<PodId>>>,
    policy_ns: &str,
    peer: &Peer,
) -> PeerIr {
    let key = match peer {
        Peer::IpBlock { cidr, except } => return PeerIr::IpBlock { cidr: *cidr, except: except.clone() },
        Peer::Pods { namespaces, pods } => PeerKey::new(policy_ns, namespaces, pods),
    };
    let ids = cache.entry(key).or_insert_with_key(|k| {
        let pod_sel = k.pod_selector();
        let mut ids: Vec<PodId> =
            k.scope(cluster, &index.namespaces).iter().flat_map(|ns| index.select(cluster, ns, &pod_sel)).collect();
        ids.sort_unstable();
        Arc::new(ids)
    });
    PeerIr::Pods(ids.clone())
}

/// Namespace selectors repeat across policies (team=a, env=prod): match
/// each distinct one against the namespaces once.
#[derive(Default)]
struct NamespaceMatches<'a>(RefCell<HashMap<Selector, Arc<Vec<&'a str>>>>);

impl<'a> NamespaceMatches<'a> {
    /// Names of the namespaces `sel` matches, in name order.
    fn matching(&self, cluster: &'a Cluster, sel: &Selector) -> Arc<Vec<&'a str>> {
        if let Some(hit) = self.0.borrow().get(sel) {
            return hit.clone();
        }
        let names: Vec<&str> =
            cluster.namespaces.values().filter(|n| sel.matches(&n.labels)).map(|n| n.name.as_str()).collect();
        let names = Arc::new(names);
        self.0.borrow_mut().insert(sel.clone(), names.clone());
        names
    }
}

/// Lookup structures that keep resolution near-linear at 100k pods: pods by
/// namespace, and by (namespace, label, value) for selectors with
/// matchLabels.
struct Index<'a> {
    by_ns: HashMap<&'a str, Vec<PodId>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<PodId>>,
    namespaces: NamespaceMatches<'a>,
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
        Index { by_ns, by_label, namespaces: NamespaceMatches::default() }
    }

    /// Policy pods of namespace `ns` that `sel` matches, sorted.
    fn select(&self, cluster: &Cluster, ns: &str, sel: &Selector) -> Vec<PodId> {
        let candidates = sel
            .match_labels
            .iter()
            .map(|(k, v)| self.by_label.get(&(ns, k.as_str(), v.as_str())).map_or(&[][..], Vec::as_slice))
            .min_by_key(|l| l.len())
            .unwrap_or_else(|| self.by_ns.get(ns).map_or(&[][..], Vec::as_slice));
        candidates.iter().copied().filter(|&id| selects(ns, sel, &cluster.pods[id])).collect()
    }
}

/// Endpoint-local resolution: the answers [`Ir`] gives, computed only for
/// what the evaluator asks about one flow, without resolving the cluster.
/// Selecting policies come from the pod's namespace (policies are sorted by
/// namespace), peer membership from [`PeerKey::contains`], and whether a
/// peer is empty (only asked to word a miss) from a scan of its scope that
/// stops at the first pod, cached per key. What `explain` uses: at 100k pods
/// it answers in milliseconds where [`resolve`] takes most of a second.
pub struct Local<'a> {
    cluster: &'a Cluster,
    namespaces: NamespaceMatches<'a>,
    empty: RefCell<HashMap<PeerKey, bool>>,
}

impl<'a> Local<'a> {
    pub fn new(cluster: &'a Cluster) -> Local<'a> {
        Local { cluster, namespaces: NamespaceMatches::default(), empty: RefCell::default() }
    }

    fn key(&self, rule: RuleRef, peer: usize) -> Option<PeerKey> {
        let policy: &Policy = self.cluster.policies.get(rule.policy)?;
        PeerKey::of(&policy.namespace, policy.rules(rule.direction).get(rule.rule)?.peers.get(peer)?)
    }
}

impl Resolution for Local<'_> {
    fn selecting(&self, pod: PodId) -> Cow<'_, [PolicyId]> {
        let c = self.cluster;
        let p = &c.pods[pod];
        let ids = c.policies_in(&p.namespace).filter(|&id| selects(&p.namespace, &c.policies[id].pod_selector, p));
        Cow::Owned(ids.collect())
    }

    fn peer_has(&self, rule: RuleRef, peer: usize, pod: PodId) -> bool {
        self.key(rule, peer).is_some_and(|k| k.contains(self.cluster, &self.cluster.pods[pod]))
    }

    fn peer_is_empty(&self, rule: RuleRef, peer: usize) -> bool {
        let Some(key) = self.key(rule, peer) else { return false };
        if let Some(&hit) = self.empty.borrow().get(&key) {
            return hit;
        }
        let c = self.cluster;
        let sel = key.pod_selector();
        let empty = !key
            .scope(c, &self.namespaces)
            .iter()
            .any(|ns| c.pods_in(ns).any(|id| selects(ns, &sel, &c.pods[id])));
        self.empty.borrow_mut().insert(key, empty);
        empty
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

    /// Every question the evaluator can ask, for every pod, rule and peer:
    /// the local answers are the IR's.
    #[test]
    fn local_answers_every_question_as_the_ir_does() {
        let policy = |name: &str, ns: &str, spec: &str| {
            format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
        };
        let text = [
            PODS.to_string(),
            policy("all", "x", "{podSelector: {}}"),
            policy("a", "y", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: x}}}]}]}"),
            policy("none", "x", "{podSelector: {matchLabels: {pod: zz}}, egress: [{to: [{podSelector: {matchLabels: {pod: zz}}}, {namespaceSelector: {}, podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}}]}]}"),
            policy("mixed", "y", "{podSelector: {matchExpressions: [{key: pod, operator: Exists}]}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}, {namespaceSelector: {matchLabels: {ns: nowhere}}}, {namespaceSelector: {}, podSelector: {}}]}]}"),
        ]
        .concat();
        let c = cluster(&text);
        let (ir, local) = (resolve(&c), Local::new(&c));
        let mut asked = 0;
        for pod in 0..c.pods.len() {
            assert_eq!(local.selecting(pod), ir.selecting(pod), "{}", c.pods[pod].key());
        }
        for (policy, p) in c.policies.iter().enumerate() {
            for direction in Direction::BOTH {
                for (rule, r) in p.rules(direction).iter().enumerate() {
                    let at = RuleRef { policy, direction, rule };
                    for peer in 0..r.peers.len() {
                        assert_eq!(local.peer_is_empty(at, peer), ir.peer_is_empty(at, peer), "{} {at} peer {peer}", p.key());
                        for pod in 0..c.pods.len() {
                            asked += 1;
                            let (l, i) = (local.peer_has(at, peer, pod), ir.peer_has(at, peer, pod));
                            assert_eq!(l, i, "{} {at} peer {peer} has {}", p.key(), c.pods[pod].key());
                        }
                    }
                }
            }
        }
        assert_eq!(asked, 7 * c.pods.len());
        assert!(ir.peer_is_empty(RuleRef { policy: 1, direction: Direction::Egress, rule: 0 }, 0), "an empty peer is covered");
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
