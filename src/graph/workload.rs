//! Workloads: pods grouped so that 10k pods stay readable, and so that
//! every pod of a group is interchangeable for policy.
//!
//! The model keeps no ownerReferences (the agent caches pods and needs
//! none), so the owner is derived from what the controllers write into
//! every pod: a `pod-template-hash` label and the `NAME-HASH-xxxxx` name of
//! a Deployment's pods; `statefulset.kubernetes.io/pod-name` and the
//! `NAME-ORDINAL` name of a StatefulSet's; `job-name`; a DaemonSet's
//! `controller-revision-hash` with `pod-template-generation` and its
//! `NAME-xxxxx` name. Anything else is its own owner (kind Pod). This is
//! what `kubectl get pods -o yaml` and `netfence gen` produce alike.
//!
//! Owner alone is not enough for correctness: pods of one owner can differ
//! in what policy sees (labels during a rollout, named ports, address
//! family, addresses inside or outside an ipBlock). So a group is an owner
//! plus a *policy signature*: the policies selecting the pod, the resolved
//! peer lists it is in, the ipBlocks holding its addresses, the numbers of
//! the named ports policies use, its families, and for cluster-scoped
//! policies the ones whose subject it is and the peers (pods, namespaces,
//! networks, nodes) that match it. Pods with equal
//! signatures get equal answers from [`crate::eval`] against every peer
//! (eval reads nothing else of a pod, except its node, which only matters
//! to that node's own address and is answered per pod). Labels that no
//! selector distinguishes (a StatefulSet pod's own name, a pod-template-hash
//! no policy names) do not split a group; labels that do, do.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::sides::{ip_blocks, IpBlock, Peer, Sides};
use crate::ir::{Ir, PeerIr};
use crate::model::cluster_policy::{ClusterPeer, ClusterPort};
use crate::model::{Cluster, Direction, Family, Pod, PodId, PolicyId, PortRef, Protocol};
use crate::selector::Labels;

pub type WorkloadId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum OwnerKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    Pod,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Owner {
    pub kind: OwnerKind,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// `namespace/owner`, with `#2`, `#3`... when an owner splits into
    /// several groups (or two owners of different kinds share a name).
    pub id: String,
    pub namespace: String,
    pub owner: Owner,
    /// Sorted; the first is the representative that policy is judged on.
    pub pods: Vec<PodId>,
    /// The labels every pod of the group carries.
    pub labels: Labels,
    pub families: Vec<Family>,
}

impl Workload {
    pub fn rep(&self) -> PodId {
        self.pods[0]
    }
}

#[derive(Debug, Clone, Default)]
pub struct Workloads {
    /// Sorted by id.
    pub list: Vec<Workload>,
    /// For each pod of the cluster: its workload, if it is a policy pod.
    pub of_pod: Vec<Option<WorkloadId>>,
    /// Workloads of each namespace, sorted.
    pub by_namespace: BTreeMap<String, Vec<WorkloadId>>,
}

/// What policy sees of a pod (see the module doc). Equal signatures (in one
/// namespace) mean interchangeable pods.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    selecting: Vec<PolicyId>,
    lists: Vec<u32>,
    blocks: Vec<u32>,
    named: Vec<Option<u16>>,
    families: [bool; 2],
    /// Cluster policies whose subject it is, then (numbered after them)
    /// the distinct cluster policy peers matching it, per family.
    cluster: Vec<u32>,
}

/// The signature of every policy pod (`None` for other pods).
pub fn signatures(cluster: &Cluster, ir: &Ir) -> Vec<Option<Signature>> {
    let isolating = |pid: usize, dir: Direction| cluster.policies[pid].isolates(dir);
    // Resolved peer lists are shared (Arc) between identical selectors: one id each.
    let mut list_ids: HashMap<*const Vec<PodId>, u32> = HashMap::new();
    let mut lists: Vec<&[PodId]> = Vec::new();
    let mut named: Vec<(String, Protocol)> = Vec::new();
    for (pid, pol) in ir.policies.iter().enumerate() {
        for dir in Direction::BOTH.into_iter().filter(|&d| isolating(pid, d)) {
            for rule in pol.rules(dir) {
                for peer in rule.peers.iter().flatten() {
                    if let PeerIr::Pods(ids) = peer {
                        list_ids.entry(std::sync::Arc::as_ptr(ids)).or_insert_with(|| {
                            lists.push(ids.as_slice());
                            lists.len() as u32 - 1
                        });
                    }
                }
                for p in &rule.ports {
                    if let Some(PortRef::Named(n)) = &p.port {
                        named.push((n.clone(), p.protocol));
                    }
                }
            }
        }
    }
    let mut cluster_peers: Vec<&ClusterPeer> = Vec::new();
    for cp in &cluster.cluster_policies {
        for rule in cp.ingress.iter().chain(&cp.egress) {
            cluster_peers.extend(&rule.peers);
            for p in &rule.ports {
                if let ClusterPort::Named(n) = p {
                    named.extend(Protocol::ALL.map(|proto| (n.clone(), proto)));
                }
            }
        }
    }
    cluster_peers.sort();
    cluster_peers.dedup();
    named.sort();
    named.dedup();
    let sides = Sides::new(cluster, ir);
    let n_cp = cluster.cluster_policies.len() as u32;
    let cluster_sig = |id: PodId| -> Vec<u32> {
        let subject = (0..n_cp).filter(|&i| cluster.cluster_policies[i as usize].subject.selects(cluster, id));
        // Per family: a networks peer may hold one pod's IPv4 address and
        // another's IPv6 one.
        let peers = (0..2 * cluster_peers.len() as u32).filter(|&k| {
            let family = if k % 2 == 0 { Family::IPv4 } else { Family::IPv6 };
            sides.cluster_peer_matches(cluster_peers[k as usize / 2], Peer::Pod(id), family)
        });
        subject.chain(peers.map(|k| n_cp + k)).collect()
    };
    let blocks: Vec<IpBlock> = ip_blocks(cluster, ir);
    let mut in_lists: Vec<Vec<u32>> = vec![Vec::new(); cluster.pods.len()];
    for (id, list) in lists.iter().enumerate() {
        for &p in *list {
            in_lists[p].push(id as u32);
        }
    }
    cluster
        .pods
        .iter()
        .enumerate()
        .map(|(id, pod)| {
            pod.is_policy_pod().then(|| Signature {
                selecting: ir.selecting[id].clone(),
                lists: std::mem::take(&mut in_lists[id]),
                blocks: (0..blocks.len() as u32)
                    .filter(|&b| pod.ips.iter().any(|&ip| blocks[b as usize].contains(ip)))
                    .collect(),
                named: named.iter().map(|(n, proto)| pod.named_port(n, *proto)).collect(),
                families: [pod.ip(Family::IPv4).is_some(), pod.ip(Family::IPv6).is_some()],
                cluster: if cluster.cluster_policies.is_empty() { Vec::new() } else { cluster_sig(id) },
            })
        })
        .collect()
}

/// The owner a pod's controller gives it (see the module doc).
pub fn owner(pod: &Pod) -> Owner {
    let label = |k: &str| pod.labels.get(k);
    let name = &pod.name;
    let strip_last = |s: &str| s.rsplit_once('-').map(|(a, _)| a.to_string());
    let found = if let Some(hash) = label("pod-template-hash") {
        name.find(&format!("-{hash}-")).map(|i| (OwnerKind::Deployment, name[..i].to_string()))
    } else if label("statefulset.kubernetes.io/pod-name") == Some(name) {
        name.rsplit_once('-')
            .filter(|(_, ord)| !ord.is_empty() && ord.bytes().all(|b| b.is_ascii_digit()))
            .map(|(s, _)| (OwnerKind::StatefulSet, s.to_string()))
    } else if let Some(job) = label("batch.kubernetes.io/job-name").or(label("job-name")) {
        Some((OwnerKind::Job, job.to_string()))
    } else if label("controller-revision-hash").is_some() && label("pod-template-generation").is_some() {
        strip_last(name).map(|d| (OwnerKind::DaemonSet, d))
    } else {
        None
    };
    let (kind, name) = found.unwrap_or((OwnerKind::Pod, name.clone()));
    Owner { kind, name }
}

/// Group the cluster's policy pods into workloads.
pub fn group(cluster: &Cluster, ir: &Ir) -> Workloads {
    let sigs = signatures(cluster, ir);
    let mut keyed: HashMap<(&str, Owner, &Signature), usize> = HashMap::new();
    let mut groups: Vec<(Owner, Vec<PodId>)> = Vec::new();
    for (id, sig) in sigs.iter().enumerate() {
        let Some(sig) = sig else { continue };
        let pod = &cluster.pods[id];
        let o = owner(pod);
        let g = *keyed.entry((pod.namespace.as_str(), o.clone(), sig)).or_insert_with(|| {
            groups.push((o, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(id);
    }
    // Pods are sorted by namespace/name, so each group's pods are too;
    // order groups by (namespace, owner name, kind, first pod) and number
    // the ones that would share an id.
    groups.sort_by(|a, b| {
        let (pa, pb) = (&cluster.pods[a.1[0]], &cluster.pods[b.1[0]]);
        (&pa.namespace, &a.0.name, a.0.kind, a.1[0]).cmp(&(&pb.namespace, &b.0.name, b.0.kind, b.1[0]))
    });
    let mut out = Workloads { of_pod: vec![None; cluster.pods.len()], ..Default::default() };
    let mut taken: HashMap<String, usize> = HashMap::new();
    for (owner, pods) in groups {
        let first = &cluster.pods[pods[0]];
        let base = format!("{}/{}", first.namespace, owner.name);
        let n = taken.entry(base.clone()).or_insert(0);
        *n += 1;
        let id = if *n == 1 { base } else { format!("{base}#{n}") };
        let labels: Labels = first
            .labels
            .iter()
            .filter(|(k, v)| pods[1..].iter().all(|&p| cluster.pods[p].labels.get(k) == Some(*v)))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let families = [Family::IPv4, Family::IPv6].into_iter().filter(|&f| first.ip(f).is_some()).collect();
        let wid = out.list.len();
        for &p in &pods {
            out.of_pod[p] = Some(wid);
        }
        out.by_namespace.entry(first.namespace.clone()).or_default().push(wid);
        out.list.push(Workload { id, namespace: first.namespace.clone(), owner, pods, labels, families });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: "x".into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            node: None,
            host_network: false,
            ips: vec![],
            ports: Vec::new().into(),
            phase: None,
        }
    }

    fn check_owner(name: &str, labels: &[(&str, &str)], kind: OwnerKind, want: &str) {
        assert_eq!(owner(&pod(name, labels)), Owner { kind, name: want.into() }, "{name} {labels:?}");
    }

    #[test]
    fn owners_come_from_controller_labels_and_names() {
        use OwnerKind::*;
        check_owner("frontend-6d8f7c9b5-k2xqz", &[("pod-template-hash", "6d8f7c9b5")], Deployment, "frontend");
        check_owner("my-app-v2-6d8f7c9b5-k2xqz", &[("pod-template-hash", "6d8f7c9b5")], Deployment, "my-app-v2");
        // A hash that is not in the name: the pod stands alone.
        check_owner("frontend", &[("pod-template-hash", "abc")], Pod, "frontend");
        check_owner("db-0", &[("statefulset.kubernetes.io/pod-name", "db-0")], StatefulSet, "db");
        check_owner("kafka-broker-12", &[("statefulset.kubernetes.io/pod-name", "kafka-broker-12")], StatefulSet, "kafka-broker");
        check_owner("db-0", &[], Pod, "db-0");
        check_owner("backup-28391-x7k2p", &[("job-name", "backup-28391")], Job, "backup-28391");
        check_owner("backup-1-x7k2p", &[("batch.kubernetes.io/job-name", "backup-1"), ("job-name", "other")], Job, "backup-1");
        check_owner(
            "kube-proxy-x7k2p",
            &[("controller-revision-hash", "5d4f"), ("pod-template-generation", "1")],
            DaemonSet,
            "kube-proxy",
        );
        check_owner("a", &[("app", "a")], Pod, "a");
    }

    /// `check(manifests, want)`: the workloads as `id: pod, pod` lines.
    fn check(text: &str, want: &[&str]) {
        let c = crate::model::load::load_str("t.yaml", text).unwrap();
        let ir = crate::ir::resolve(&c);
        let w = group(&c, &ir);
        let got: Vec<String> = w
            .list
            .iter()
            .map(|w| format!("{}: {}", w.id, w.pods.iter().map(|&p| c.pods[p].name.as_str()).collect::<Vec<_>>().join(", ")))
            .collect();
        assert_eq!(got, want, "{text}");
        for (i, wl) in w.list.iter().enumerate() {
            assert!(wl.pods.iter().all(|&p| w.of_pod[p] == Some(i)));
        }
    }

    fn deploy_pod(name: &str, hash: &str, extra: &str, ip: &str, ports: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{hash}-{name}, namespace: x, labels: {{app: web, pod-template-hash: {hash}{extra}}}}}\nspec: {{containers: [{{name: c, ports: [{ports}]}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
        )
    }

    const DB: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: db-0, namespace: x, labels: {app: db, statefulset.kubernetes.io/pod-name: db-0}}\nstatus: {podIP: 10.0.1.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db-1, namespace: x, labels: {app: db, statefulset.kubernetes.io/pod-name: db-1}}\nstatus: {podIP: 10.0.1.2}\n---\n";
    const HTTP: &str = "{name: http, containerPort: 8080}";

    #[test]
    fn groups_split_exactly_on_what_policy_sees() {
        let rollout = deploy_pod("aaaaa", "h1", "", "10.0.0.1", HTTP)
            + &deploy_pod("bbbbb", "h1", "", "10.0.0.2", HTTP)
            + &deploy_pod("ccccc", "h2", "", "10.0.0.3", HTTP);
        // No policy: a rollout's two hashes and a StatefulSet's pod names do not split.
        check(&format!("{rollout}{DB}"), &["x/db: db-0, db-1", "x/web: web-h1-aaaaa, web-h1-bbbbb, web-h2-ccccc"]);
        // A policy selecting one hash splits the rollout.
        let pol = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {pod-template-hash: h2}}}\n";
        check(&format!("{rollout}{pol}"), &["x/web: web-h1-aaaaa, web-h1-bbbbb", "x/web#2: web-h2-ccccc"]);
        // A peer list naming one pod splits it off; a selector on the name label does too.
        let pol = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {statefulset.kubernetes.io/pod-name: db-1}}}]}]}\n";
        check(&format!("{DB}{pol}"), &["x/db: db-0", "x/db#2: db-1"]);
        // A named port that policy uses, with another number on one pod, splits; one it does not use does not.
        let odd = deploy_pod("ddddd", "h1", "", "10.0.0.4", "{name: http, containerPort: 9090}");
        let named = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: http}]}]}\n";
        check(&format!("{rollout}{odd}"), &["x/web: web-h1-aaaaa, web-h1-bbbbb, web-h1-ddddd, web-h2-ccccc"]);
        check(&format!("{rollout}{odd}{named}"), &["x/web: web-h1-aaaaa, web-h1-bbbbb, web-h2-ccccc", "x/web#2: web-h1-ddddd"]);
        // An ipBlock that holds one pod's address and not the others' splits it off.
        let block = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.3/32]}}]}]}\n";
        check(&format!("{rollout}{block}"), &["x/web: web-h1-aaaaa, web-h1-bbbbb", "x/web#2: web-h2-ccccc"]);
        // Host-network, finished and address-less pods are in no workload.
        let others = "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {hostNetwork: true}\nstatus: {podIP: 172.18.0.2}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: done, namespace: x}\nstatus: {podIP: 10.0.9.9, phase: Succeeded}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: x}\n";
        check(others, &[]);
    }
}
