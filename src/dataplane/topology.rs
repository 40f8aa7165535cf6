//! The cluster as network namespaces, wired like a routed CNI.
//!
//! ```text
//!  pod ns ──veth── node ns ──veth──┐
//!  pod ns ──veth──┘  (nftables)     ├── fabric ns (bridge br0)
//!  pod ns ──veth── node ns ──veth──┤
//!                     outside ns ──┘  (the external IPs of the test)
//! ```
//!
//! Each node namespace forwards between its pods' veths and the fabric, so
//! every flow a NetworkPolicy governs crosses the node's nftables hooks as
//! on a real node: pod to pod through `forward`, node to pod through
//! `output`, pod to node through `input`. A pod namespace holds the pod's
//! addresses as /32 and /128 on `eth0` and a default route to a gateway
//! address that every pod veth of the node carries (169.254.1.1 and
//! fe80::1, as Calico does), so no address is spent on links. Nodes reach
//! each other's InternalIPs on-link over the bridge, and each other's pods
//! through the owner's InternalIP. Host-network pods are their node's
//! namespace.
//!
//! That is [`Cni::Routed`]. Two other wirings put each node's pods on one
//! Linux bridge, as most CNIs outside Calico and Cilium do:
//!
//! - [`Cni::Bridge`] (the reference `bridge` plugin, kubenet): per node a
//!   bridge `cni0` holding the first address of each pod CIDR (the pods'
//!   gateway), the pods' veths as its ports, each pod with its address in
//!   the pod CIDR's prefix and a default route via the gateway. Same-node
//!   pod-to-pod traffic is bridged, never routed: it meets the inet hooks
//!   only through br_netfilter, whose `bridge-nf-call-ip{,6}tables`
//!   sysctls are set in each node namespace (per namespace since Linux
//!   5.3; the `br_netfilter` module must be loaded). Other nodes' pod
//!   CIDRs are routed via their InternalIPs over the fabric.
//! - [`Cni::Vxlan`] (Flannel's vxlan backend): the bridge, plus a VXLAN
//!   device per family (`flannel.1` over IPv4, `flannel-v6.1` over IPv6,
//!   VNI 1, port 8472, no learning) holding the pod CIDR's network address
//!   as /32 or /128; other nodes' pod CIDRs are routed through it via their
//!   VTEP address, with static neighbour and forwarding entries, as
//!   flanneld writes them. Like Flannel's `--ip-masq`, a node masquerades
//!   what its pods send outside the cluster's pod CIDRs (a table `flannel`
//!   of its own, after netfence's judging chains). A node's own address
//!   reaches another node's pods only through the VXLAN device, where
//!   anti-spoofing expects that address on the fabric: such flows are not
//!   probed ([`Plan::cannot_probe`]).
//!
//! [`plan`] is pure: it turns a cluster into namespaces, veths and `ip
//! -batch` scripts, and rejects clusters that cannot be wired. [`Topology`]
//! carries a plan out with one `ip` process per namespace, plus two.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ipnet::IpNet;

use super::{Endpoint, ProbeSpec};
use crate::model::{Cluster, Family, PodId, Protocol};
use crate::netns::Netns;

/// Index of a namespace in a [`Plan`].
pub type NsId = usize;

/// The prefix of every namespace a dataplane creates.
pub const NETNS_PREFIX: &str = "nf";
/// The pods' gateway, on every pod veth of a node.
const GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const FABRIC: NsId = 0;
/// The port the wiring checks probe (echo).
const WIRING_CHECK_PORT: u16 = 7;

/// How pods are wired to their node (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cni {
    /// A /32 and /128 route per pod through its own veth (Calico-like).
    #[default]
    Routed,
    /// A Linux bridge per node with the pods on it, br_netfilter on.
    Bridge,
    /// The bridge, plus VXLAN between nodes (Flannel's vxlan backend).
    Vxlan,
}

impl Cni {
    pub const ALL: [Cni; 3] = [Cni::Routed, Cni::Bridge, Cni::Vxlan];

    pub fn name(self) -> &'static str {
        match self {
            Cni::Routed => "routed",
            Cni::Bridge => "bridge",
            Cni::Vxlan => "vxlan",
        }
    }

    fn bridged(self) -> bool {
        self != Cni::Routed
    }
}

/// The bridge of a node's pods.
const BRIDGE: &str = "cni0";
/// Flannel's VXLAN port, VNI and device names.
const VXLAN_PORT: u16 = 8472;
const VXLAN4: &str = "flannel.1";
const VXLAN6: &str = "flannel-v6.1";

/// What a namespace stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Fabric,
    Node(String),
    Pod(PodId),
    Outside,
}

/// A veth pair, each end named within its own namespace: names never
/// depend on pod or namespace names, so they always fit in 15 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub a: NsId,
    pub a_name: String,
    pub b: NsId,
    pub b_name: String,
}

/// Where an endpoint lives and the address it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub ns: NsId,
    pub ip: IpAddr,
}

#[derive(Debug, Clone)]
struct NodeInfo {
    ns: NsId,
    internal_ips: Vec<IpAddr>,
    /// InternalIPs, then host-network pods' other addresses.
    addrs: Vec<IpAddr>,
    /// What the other namespaces route to this node: its pod CIDRs, and
    /// its pods' addresses that lie outside them.
    prefixes: Vec<IpNet>,
    pod_cidrs: Vec<IpNet>,
}

impl NodeInfo {
    fn internal_ip(&self, family: Family) -> Option<IpAddr> {
        self.internal_ips.iter().copied().find(|ip| Family::of(ip) == family)
    }
}

/// A pod with a namespace of its own.
#[derive(Debug, Clone)]
struct PodNs {
    id: PodId,
    ns: NsId,
    node: String,
    ips: Vec<IpAddr>,
}

/// Everything needed to build the namespaces, as data.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cni: Cni,
    pub roles: Vec<Role>,
    pub veths: Vec<Veth>,
    /// Per namespace, sysctls to set before any of its links exist, so that
    /// its `default` settings apply to them.
    pub sysctls: Vec<Vec<(&'static str, &'static str)>>,
    /// Per namespace, the `ip -batch` script that configures it once its
    /// veths exist.
    pub scripts: Vec<String>,
    /// Per namespace, a `bridge -batch` script run after its `ip` script
    /// (VXLAN forwarding entries).
    pub bridge_scripts: Vec<String>,
    /// Per namespace, an `nft -f` script run after its `ip` script, before
    /// any ruleset of the test (the CNI's own masquerading).
    pub nft_scripts: Vec<String>,
    nodes: BTreeMap<String, NodeInfo>,
    pod_nss: Vec<PodNs>,
    /// Where every pod that takes part is found (host-network ones in their
    /// node's namespace).
    pods: BTreeMap<PodId, PodPlace>,
    /// Every pod's ns/name, by id, for messages.
    pod_keys: Vec<String>,
    outside: Vec<IpAddr>,
    /// Every Service's ClusterIPs: each node routes them out of its fabric
    /// link, as a real node's default route does, so that a node's own
    /// connections to them reach the output hook where kube-proxy
    /// translates them, and one to a Service without endpoints meets its
    /// reject (nothing answers there).
    service_ips: Vec<IpAddr>,
    /// The pods that back a Service: on a bridge their ports are in
    /// hairpin mode, as kubelet's `--hairpin-mode hairpin-veth` sets them,
    /// so a pod reaching itself through its Service gets its packets back
    /// out of the port they came in by.
    backends: std::collections::BTreeSet<PodId>,
}

/// A pod's namespace and addresses.
#[derive(Debug, Clone)]
struct PodPlace {
    ns: NsId,
    ips: Vec<IpAddr>,
}

impl Plan {
    pub fn node_ns(&self, node: &str) -> Option<NsId> {
        self.nodes.get(node).map(|n| n.ns)
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&str, NsId)> {
        self.nodes.iter().map(|(name, n)| (name.as_str(), n.ns))
    }

    /// The pods with a namespace of their own, and its id.
    pub fn pod_namespaces(&self) -> impl Iterator<Item = (PodId, NsId)> + '_ {
        self.roles.iter().enumerate().filter_map(|(ns, r)| match r {
            Role::Pod(id) => Some((*id, ns)),
            _ => None,
        })
    }

    pub fn outside(&self) -> &[IpAddr] {
        &self.outside
    }

    /// Flows that must get through before any ruleset exists: every pod
    /// from a node other than its own (its own when there is one node) and
    /// from the outside, and each node from the next, in every family.
    /// Together they take every route and both directions of it.
    pub fn wiring_checks(&self) -> Vec<ProbeSpec> {
        let check = |from: Endpoint, to: &Endpoint, family| ProbeSpec {
            from,
            to: to.clone(),
            family,
            protocol: Protocol::Tcp,
            port: WIRING_CHECK_PORT,
            via: None,
        };
        let mut specs = Vec::new();
        for pod in &self.pod_nss {
            for family in pod.ips.iter().map(Family::of) {
                let remote = self.nodes.iter().find(|(name, n)| **name != pod.node && n.internal_ip(family).is_some());
                let node = remote.map_or(&pod.node, |(name, _)| name);
                specs.push(check(Endpoint::Node(node.clone()), &Endpoint::Pod(pod.id), family));
                // On a bridge an outside host cannot hold an address of a
                // pod CIDR: the pods would look for it on their bridge.
                let in_pod_cidr = |ip: &IpAddr| self.cni.bridged() && self.nodes.values().any(|n| n.pod_cidrs.iter().any(|c| c.contains(ip)));
                if let Some(ip) = self.outside.iter().find(|ip| Family::of(ip) == family && !in_pod_cidr(ip)) {
                    specs.push(check(Endpoint::Ip(*ip), &Endpoint::Pod(pod.id), family));
                }
            }
        }
        // On a bridge, same-node pods talk at L2: each pod from the next
        // pod of its node.
        for (k, pod) in self.pod_nss.iter().enumerate().filter(|_| self.cni.bridged()) {
            let next = self.pod_nss.iter().cycle().skip(k + 1).take(self.pod_nss.len() - 1).find(|p| p.node == pod.node);
            for family in pod.ips.iter().map(Family::of) {
                if let Some(next) = next.filter(|n| n.ips.iter().any(|ip| Family::of(ip) == family)) {
                    specs.push(check(Endpoint::Pod(next.id), &Endpoint::Pod(pod.id), family));
                }
            }
        }
        let names: Vec<&String> = self.nodes.keys().collect();
        for (i, name) in names.iter().enumerate().filter(|_| names.len() > 1) {
            let next = names[(i + 1) % names.len()];
            for family in self.nodes[next].internal_ips.iter().map(Family::of) {
                if self.nodes[*name].internal_ip(family).is_some() {
                    specs.push(check(Endpoint::Node((*name).clone()), &Endpoint::Node(next.clone()), family));
                }
            }
        }
        specs
    }

    /// Why a flow cannot be probed on this wiring, if it cannot: on
    /// [`Cni::Vxlan`], a node's own address to another node's pod travels
    /// through the VXLAN device, where the destination node's
    /// anti-spoofing (strict reverse path) expects that address only on
    /// the fabric. Flannel's nodes send it from their VTEP address instead,
    /// which the test format cannot name.
    pub fn cannot_probe(&self, from: &Endpoint, to: &Endpoint, family: Family) -> Option<String> {
        if self.cni != Cni::Vxlan {
            return None;
        }
        let src = self.locate(from, family).ok()?;
        let dst = self.locate(to, family).ok()?;
        let node_of = |ns: NsId| self.nodes.iter().find(|(_, n)| n.ns == ns).map(|(name, _)| name.as_str());
        let src_node = node_of(src.ns)?;
        let pod = self.pod_nss.iter().find(|p| p.ns == dst.ns)?;
        (pod.node != src_node).then(|| {
            format!(
                "on --cni vxlan, node {src_node}'s address {} reaches pods of node {} only through the VXLAN device, where strict anti-spoofing drops it (Flannel sends from the VTEP address)",
                src.ip, pod.node
            )
        })
    }

    /// Why this wiring cannot carry a flow through a Service the way the
    /// test format judges it, if it cannot. On [`Cni::Vxlan`]:
    /// - NodePort traffic masqueraded to a backend on another node leaves
    ///   the entry node through the VXLAN device, so masquerade picks the
    ///   VTEP address (the device's own), not the InternalIP the backend's
    ///   ingress is judged against;
    /// - a pod's NodePort traffic to another node is masqueraded by
    ///   Flannel on its own node (a node address lies outside the pod
    ///   CIDRs), so a backend there sees the pod's node, not the pod.
    pub fn cannot_probe_service(&self, client: &Endpoint, entry_node: Option<&str>, backend_node: Option<&str>, source_nat: bool, family: Family) -> Option<String> {
        if self.cni != Cni::Vxlan {
            return None;
        }
        let entry = entry_node?;
        if source_nat && backend_node != Some(entry) {
            return Some(format!(
                "on --cni vxlan, node {entry} masquerades NodePort traffic to another node's backend through the VXLAN device, from its VTEP address, not its InternalIP (Flannel's source selection)"
            ));
        }
        let src = self.locate(client, family).ok()?;
        let pod = self.pod_nss.iter().find(|p| p.ns == src.ns)?;
        (pod.node != entry).then(|| {
            format!(
                "on --cni vxlan, Flannel masquerades pod {}'s traffic to node {entry}'s address on node {}, so the backend sees that node, not the pod",
                self.name(client),
                pod.node
            )
        })
    }

    /// An endpoint as the test format writes it.
    pub fn name(&self, endpoint: &Endpoint) -> String {
        match endpoint {
            Endpoint::Pod(id) => self.pod_keys.get(*id).cloned().unwrap_or_else(|| format!("pod #{id}")),
            Endpoint::Node(name) => format!("node/{name}"),
            Endpoint::NodeAddr(_, ip) | Endpoint::Ip(ip) => ip.to_string(),
        }
    }

    /// The namespace and address an endpoint uses in `family`.
    pub fn locate(&self, endpoint: &Endpoint, family: Family) -> Result<Place, String> {
        let in_family = |ips: &[IpAddr]| ips.iter().copied().find(|ip| Family::of(ip) == family);
        match endpoint {
            Endpoint::Pod(id) => {
                let key = self.pod_keys.get(*id).ok_or_else(|| format!("no pod #{id} in the cluster"))?;
                let pod = self.pods.get(id).ok_or_else(|| format!("pod {key} takes no part in the cluster"))?;
                let ip = in_family(&pod.ips).ok_or_else(|| format!("pod {key} has no {family} address"))?;
                Ok(Place { ns: pod.ns, ip })
            }
            Endpoint::Node(name) => {
                let node = self.nodes.get(name).ok_or_else(|| format!("no node {name} in the cluster"))?;
                let ip = node.internal_ip(family).ok_or_else(|| format!("node {name} has no {family} InternalIP"))?;
                Ok(Place { ns: node.ns, ip })
            }
            Endpoint::NodeAddr(_, ip) | Endpoint::Ip(ip) => {
                if Family::of(ip) != family {
                    return Err(format!("{ip} is not an {family} address"));
                }
                if let Some(node) = self.nodes.values().find(|n| n.addrs.contains(ip)) {
                    Ok(Place { ns: node.ns, ip: *ip })
                } else if self.outside.contains(ip) {
                    Ok(Place { ns: self.roles.len() - 1, ip: *ip })
                } else {
                    Err(format!("{ip} is not among the external addresses the dataplane was built with"))
                }
            }
        }
    }
}

/// Lay out the namespaces for `cluster`, with `externals` (the outside
/// addresses a test's expectations name) in the outside namespace.
///
/// Errors name what cannot be wired: a pod on no known node, two pods with
/// one address, a pod whose node has no InternalIP of the pod's family.
///
/// With a bridge ([`Cni::Bridge`], [`Cni::Vxlan`]) every pod address must
/// lie in a pod CIDR of its node and be neither its gateway (the CIDR's
/// first address) nor its network address (the VTEP's).
pub fn plan(cluster: &Cluster, externals: &[IpAddr], cni: Cni) -> anyhow::Result<Plan> {
    let mut roles = vec![Role::Fabric];
    let mut nodes = BTreeMap::new();
    for node in cluster.nodes.values() {
        let info = NodeInfo {
            ns: roles.len(),
            internal_ips: node.internal_ips.clone(),
            // ExternalIPs too: an IP literal may name the node at one.
            addrs: node.addresses.clone(),
            prefixes: node.pod_cidrs.clone(),
            pod_cidrs: node.pod_cidrs.clone(),
        };
        nodes.insert(node.name.clone(), info);
        roles.push(Role::Node(node.name.clone()));
    }

    let mut pods = BTreeMap::new();
    let mut pod_nss = Vec::new();
    let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (id, pod) in cluster.pods.iter().enumerate().filter(|(_, p)| p.takes_part()) {
        let key = pod.key();
        let node_name = pod
            .node
            .as_deref()
            .with_context(|| format!("pod {key} has no spec.nodeName: the dataplane cannot place it"))?;
        let node = nodes
            .get_mut(node_name)
            .with_context(|| format!("pod {key} runs on node {node_name}, which is not in the cluster"))?;
        if pod.host_network {
            for ip in &pod.ips {
                if !node.addrs.contains(ip) {
                    node.addrs.push(*ip);
                }
            }
            pods.insert(id, PodPlace { ns: node.ns, ips: pod.ips.clone() });
            continue;
        }
        for ip in &pod.ips {
            let family = Family::of(ip);
            if node.internal_ip(family).is_none() {
                bail!("pod {key} has an {family} address, but its node {node_name} has no {family} InternalIP to route it through");
            }
            if let Some(other) = owner.insert(*ip, key.clone()) {
                bail!("pods {other} and {key} both have address {ip}");
            }
            if !node.prefixes.iter().any(|net| net.contains(ip)) {
                if cni.bridged() {
                    bail!("pod {key} has address {ip}, outside the pod CIDRs of its node {node_name}: a bridge CNI cannot wire it (--cni routed can)");
                }
                node.prefixes.push(IpNet::from(*ip));
            }
            if cni.bridged() && reserved(&node.pod_cidrs).contains(ip) {
                bail!("pod {key} has address {ip}, which --cni {} gives node {node_name} (its pods' gateway, or its VTEP)", cni.name());
            }
        }
        let ns = roles.len();
        pods.insert(id, PodPlace { ns, ips: pod.ips.clone() });
        pod_nss.push(PodNs { id, ns, node: node_name.to_string(), ips: pod.ips.clone() });
        roles.push(Role::Pod(id));
    }
    for (name, node) in &nodes {
        if let Some(ip) = node.addrs.iter().find(|ip| owner.contains_key(ip)) {
            bail!("pod {} has address {ip}, which belongs to node {name}", owner[ip]);
        }
    }

    let mut outside: Vec<IpAddr> = Vec::new();
    for ip in externals {
        if let Some(pod) = owner.get(ip) {
            bail!("external address {ip} is pod {pod}'s address");
        }
        if *ip == IpAddr::V4(GATEWAY4) || *ip == IpAddr::V6(GATEWAY6) {
            bail!("external address {ip} is the pods' gateway address in the dataplane");
        }
        if cni.bridged() && nodes.values().any(|n| reserved(&n.pod_cidrs).contains(ip)) {
            bail!("external address {ip} is a node's gateway or VTEP address on --cni {}", cni.name());
        }
        if !outside.contains(ip) && !nodes.values().any(|n| n.addrs.contains(ip)) {
            outside.push(*ip);
        }
    }
    if !outside.is_empty() {
        roles.push(Role::Outside);
    }

    let mut plan = Plan {
        cni,
        veths: Vec::new(),
        sysctls: Vec::new(),
        scripts: vec![String::new(); roles.len()],
        bridge_scripts: vec![String::new(); roles.len()],
        nft_scripts: vec![String::new(); roles.len()],
        roles,
        nodes,
        pod_nss,
        pods,
        pod_keys: cluster.pods.iter().map(|p| p.key()).collect(),
        outside,
        service_ips: cluster
            .services
            .iter()
            .flat_map(|s| s.cluster_ips.iter().copied())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        backends: cluster
            .services
            .iter()
            .flat_map(|s| s.ports.iter().flat_map(move |p| [Family::IPv4, Family::IPv6].map(|f| s.backends(cluster, p, f))))
            .flatten()
            .filter_map(|b| b.pod)
            .collect(),
    };
    wire(&mut plan);
    Ok(plan)
}

/// Veths, sysctls and scripts for a plan whose namespaces are laid out.
fn wire(plan: &mut Plan) {
    let mut fabric = Script::default();
    fabric.line("link add br0 type bridge mcast_snooping 0".into());
    fabric.up("br0");
    let mut ports = Vec::new();
    for (i, node) in plan.nodes.values().enumerate() {
        ports.push((node.ns, format!("n{i}")));
    }
    if let Some(outside) = plan.roles.iter().position(|r| *r == Role::Outside) {
        ports.push((outside, "out".to_string()));
        plan.scripts[outside] = outside_script(plan);
    }
    for (ns, port) in ports {
        fabric.line(format!("link set {port} master br0"));
        fabric.up(&port);
        plan.veths.push(Veth { a: ns, a_name: "eth0".into(), b: FABRIC, b_name: port });
    }
    plan.scripts[FABRIC] = fabric.text;

    let cluster_cidrs: Vec<IpNet> = plan.nodes.values().flat_map(|n| n.pod_cidrs.iter().copied()).collect();
    for (name, node) in &plan.nodes {
        let mut s = Script::default();
        let mut fdb = Script::default();
        s.up("lo");
        s.up("eth0");
        for ip in &node.addrs {
            s.addr(*ip, "eth0");
        }
        let src = |ip: &IpAddr| node.internal_ip(Family::of(ip));
        let others: Vec<&NodeInfo> = plan.nodes.iter().filter(|(other, _)| *other != name).map(|(_, n)| n).collect();
        for ip in others.iter().flat_map(|n| &n.addrs).chain(&plan.outside) {
            s.route(IpNet::from(*ip), None, "eth0", src(ip));
        }
        for ip in plan.service_ips.iter().filter(|ip| src(ip).is_some()) {
            s.route(IpNet::from(*ip), None, "eth0", src(ip));
        }
        if plan.cni == Cni::Vxlan {
            for family in [Family::IPv4, Family::IPv6] {
                if let Some((local, vtep)) = vxlan_end(node, family) {
                    let dev = vxlan_dev(family);
                    s.line(format!("link add {dev} type vxlan id 1 local {local} dev eth0 dstport {VXLAN_PORT} nolearning"));
                    s.line(format!("link set {dev} address {}", vtep_mac(node.ns, family)));
                    s.addr(vtep, dev);
                    s.up(dev);
                }
            }
        }
        for other in &others {
            for net in &other.prefixes {
                let family = Family::of_net(net);
                let tunnel = plan.cni == Cni::Vxlan && vxlan_end(node, family).is_some();
                match vxlan_end(other, family).filter(|_| tunnel) {
                    // Flannel: the route via the other node's VTEP address
                    // on the VXLAN device, that address's MAC, and where
                    // to send frames for that MAC.
                    Some((remote, vtep)) => {
                        let dev = vxlan_dev(family);
                        s.route(*net, Some(vtep), dev, None);
                        let mac = vtep_mac(other.ns, family);
                        if !s.text.contains(&format!("neigh add {vtep} ")) {
                            s.line(format!("neigh add {vtep} lladdr {mac} dev {dev} nud permanent"));
                            fdb.line(format!("fdb append {mac} dev {dev} dst {remote} self permanent"));
                        }
                    }
                    None => {
                        if let Some(gateway) = other.internal_ip(family) {
                            s.route(*net, Some(gateway), "eth0", src(&net.addr()));
                        }
                    }
                }
            }
        }
        if plan.cni.bridged() {
            s.line(format!("link add {BRIDGE} type bridge mcast_snooping 0"));
            s.up(BRIDGE);
            for net in &node.pod_cidrs {
                let nodad = if net.addr().is_ipv6() { " nodad" } else { "" };
                s.line(format!("addr add {}/{} dev {BRIDGE}{nodad}", gateway(net), net.prefix_len()));
            }
        }
        for (k, pod) in plan.pod_nss.iter().enumerate().filter(|(_, p)| p.node == *name) {
            let veth = format!("p{k}");
            if plan.cni.bridged() {
                s.line(format!("link set {veth} master {BRIDGE}"));
                if plan.backends.contains(&pod.id) {
                    s.line(format!("link set {veth} type bridge_slave hairpin on"));
                }
                s.up(&veth);
                plan.scripts[pod.ns] = bridged_pod_script(&pod.ips, &node.pod_cidrs);
            } else {
                s.up(&veth);
                s.addr(IpAddr::V4(GATEWAY4), &veth);
                s.line(format!("addr add {GATEWAY6}/64 dev {veth} nodad"));
                for ip in &pod.ips {
                    s.route(IpNet::from(*ip), None, &veth, src(ip));
                }
                plan.scripts[pod.ns] = pod_script(&pod.ips);
            }
            plan.veths.push(Veth { a: pod.ns, a_name: "eth0".into(), b: node.ns, b_name: veth });
        }
        plan.scripts[node.ns] = s.text;
        plan.bridge_scripts[node.ns] = fdb.text;
        if plan.cni == Cni::Vxlan {
            plan.nft_scripts[node.ns] = masquerade_script(&cluster_cidrs);
        }
    }

    let common = [
        ("net/ipv6/conf/all/accept_dad", "0"),
        ("net/ipv6/conf/default/accept_dad", "0"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
    ];
    let forwarding = [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv6/conf/all/forwarding", "1"),
        ("net/ipv6/conf/default/forwarding", "1"),
    ];
    // Bridged pod traffic meets the inet hooks only with these on.
    let br_netfilter = [("net/bridge/bridge-nf-call-iptables", "1"), ("net/bridge/bridge-nf-call-ip6tables", "1")];
    let bridged = plan.cni.bridged();
    plan.sysctls = plan
        .roles
        .iter()
        .map(|role| match role {
            Role::Node(_) if bridged => common.iter().chain(&forwarding).chain(&br_netfilter).copied().collect(),
            Role::Node(_) => common.iter().chain(&forwarding).copied().collect(),
            _ => common.to_vec(),
        })
        .collect();
}

/// A pod CIDR's gateway on the bridge: its first address.
fn gateway(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_add(1))),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(1))),
    }
}

/// The addresses a bridge CNI takes from each pod CIDR: the gateway, and
/// the network address (Flannel's VTEP address).
fn reserved(cidrs: &[IpNet]) -> Vec<IpAddr> {
    cidrs.iter().flat_map(|net| [gateway(net), net.network()]).collect()
}

fn vxlan_dev(family: Family) -> &'static str {
    match family {
        Family::IPv4 => VXLAN4,
        Family::IPv6 => VXLAN6,
    }
}

/// A node's VXLAN endpoint in `family`: its InternalIP (the underlay) and
/// its VTEP address (its first pod CIDR's network address), when it has both.
fn vxlan_end(node: &NodeInfo, family: Family) -> Option<(IpAddr, IpAddr)> {
    let local = node.internal_ip(family)?;
    let net = node.pod_cidrs.iter().find(|net| Family::of_net(net) == family)?;
    Some((local, net.network()))
}

/// A fixed, locally administered MAC per node and family (flanneld picks
/// one at random and publishes it; fixed keeps the plan pure).
fn vtep_mac(ns: NsId, family: Family) -> String {
    let f = if family == Family::IPv4 { 4 } else { 6 };
    format!("02:6e:66:{:02x}:{:02x}:{f:02x}", (ns >> 8) & 0xff, ns & 0xff)
}

/// Flannel's `--ip-masq`: what pods send outside the cluster's pod CIDRs
/// leaves with the node's address. Its own table, at srcnat: after
/// netfence's judging chains (srcnat - 10 and - 5), which see the pod.
fn masquerade_script(cluster: &[IpNet]) -> String {
    let mut rules = String::new();
    for (family, ip, multicast) in [(Family::IPv4, "ip", "224.0.0.0/4"), (Family::IPv6, "ip6", "ff00::/8")] {
        let nets: Vec<String> = cluster.iter().filter(|n| Family::of_net(n) == family).map(IpNet::to_string).collect();
        if nets.is_empty() {
            continue;
        }
        let set = format!("{{ {} }}", nets.join(", "));
        rules.push_str(&format!("    {ip} saddr {set} {ip} daddr {set} return\n"));
        rules.push_str(&format!("    {ip} saddr {set} {ip} daddr != {multicast} masquerade\n"));
    }
    format!("table inet flannel {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{rules}  }}\n}}\n")
}

/// A pod on a bridge: its address in its pod CIDR's prefix, and a default
/// route via that CIDR's gateway.
fn bridged_pod_script(ips: &[IpAddr], cidrs: &[IpNet]) -> String {
    let mut s = Script::default();
    s.up("lo");
    s.up("eth0");
    for ip in ips {
        // The plan only admits pods inside a pod CIDR of their node.
        let Some(net) = cidrs.iter().find(|net| net.contains(ip)) else { continue };
        let nodad = if ip.is_ipv6() { " nodad" } else { "" };
        s.line(format!("addr add {ip}/{} dev eth0{nodad}", net.prefix_len()));
        let default = if ip.is_ipv6() { "::/0" } else { "0.0.0.0/0" };
        s.line(format!("route add {default} via {} dev eth0", gateway(net)));
    }
    s.text
}

fn pod_script(ips: &[IpAddr]) -> String {
    let mut s = Script::default();
    s.up("lo");
    s.up("eth0");
    for ip in ips {
        s.addr(*ip, "eth0");
    }
    for ip in ips {
        match ip {
            IpAddr::V4(_) => s.line(format!("route add 0.0.0.0/0 via {GATEWAY4} dev eth0 onlink")),
            IpAddr::V6(_) => s.line(format!("route add ::/0 via {GATEWAY6} dev eth0")),
        }
    }
    s.text
}

fn outside_script(plan: &Plan) -> String {
    let mut s = Script::default();
    s.up("lo");
    s.up("eth0");
    for ip in &plan.outside {
        s.addr(*ip, "eth0");
    }
    let has = |f: Family| plan.outside.iter().any(|ip| Family::of(ip) == f);
    for node in plan.nodes.values() {
        for ip in node.addrs.iter().filter(|ip| has(Family::of(ip))) {
            s.route(IpNet::from(*ip), None, "eth0", None);
        }
        for net in node.prefixes.iter().filter(|net| has(Family::of_net(net))) {
            if let Some(gateway) = node.internal_ip(Family::of_net(net)) {
                s.route(*net, Some(gateway), "eth0", None);
            }
        }
    }
    s.text
}

/// A plan carried out: its namespaces exist until this is dropped.
#[derive(Debug)]
pub struct Topology {
    pub plan: Plan,
    netns: Vec<Netns>,
    pub build_time: Duration,
}

impl Topology {
    pub fn build(plan: Plan) -> anyhow::Result<Topology> {
        let start = Instant::now();
        let netns = Netns::create_many(NETNS_PREFIX, plan.roles.len())?;
        for (ns, sysctls) in netns.iter().zip(&plan.sysctls) {
            ns.sysctl(sysctls)?;
        }
        // Veths are made from inside the fabric namespace and name both
        // ends' namespaces: a slip lands in the fabric, never on the host.
        let names: Vec<&str> = netns.iter().map(Netns::name).collect();
        netns[FABRIC].ip_batch(&(veth_script(&plan.veths, &names) + &plan.scripts[FABRIC]))?;
        std::thread::scope(|s| {
            let jobs: Vec<_> = netns
                .iter()
                .enumerate()
                .skip(1)
                .map(|(id, ns)| {
                    let plan = &plan;
                    s.spawn(move || {
                        ns.ip_batch(&plan.scripts[id])?;
                        if !plan.bridge_scripts[id].is_empty() {
                            ns.bridge_batch(&plan.bridge_scripts[id])?;
                        }
                        if !plan.nft_scripts[id].is_empty() {
                            nft_script(ns, &plan.nft_scripts[id])?;
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            jobs.into_iter().try_for_each(|job| job.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })?;
        Ok(Topology { plan, netns, build_time: start.elapsed() })
    }

    pub fn netns(&self, id: NsId) -> &Netns {
        &self.netns[id]
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.netns.iter().map(Netns::name)
    }
}

/// `nft -f -` inside `ns`.
pub(crate) fn nft_script(ns: &Netns, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = ns.command("nft")?.args(["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().context("cannot run nft")?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().context("cannot wait for nft")?;
    if !out.status.success() {
        bail!("nft -f in {}: {}\n{script}", ns.name(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `ip -batch` lines creating `veths`, each end directly in its namespace.
fn veth_script(veths: &[Veth], names: &[&str]) -> String {
    veths
        .iter()
        .map(|v| {
            format!("link add name {} netns {} type veth peer name {} netns {}\n", v.a_name, names[v.a], v.b_name, names[v.b])
        })
        .collect()
}

/// An `ip -batch` script under construction.
#[derive(Default)]
struct Script {
    text: String,
}

impl Script {
    fn line(&mut self, line: String) {
        self.text.push_str(&line);
        self.text.push('\n');
    }

    fn up(&mut self, dev: &str) {
        self.line(format!("link set {dev} up"));
    }

    /// A host address; IPv6 ones skip duplicate address detection, which
    /// would keep them unusable for a second or more.
    fn addr(&mut self, ip: IpAddr, dev: &str) {
        let nodad = if ip.is_ipv6() { " nodad" } else { "" };
        self.line(format!("addr add {} dev {dev}{nodad}", IpNet::from(ip)));
    }

    /// `via` routes are `onlink`: gateways are reachable over the bridge
    /// without a covering subnet.
    fn route(&mut self, net: IpNet, via: Option<IpAddr>, dev: &str, src: Option<IpAddr>) {
        let mut line = format!("route add {net}");
        if let Some(gateway) = via {
            line.push_str(&format!(" via {gateway}"));
        }
        line.push_str(&format!(" dev {dev}"));
        if via.is_some() {
            line.push_str(" onlink");
        }
        if let Some(src) = src {
            line.push_str(&format!(" src {src}"));
        }
        self.line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.0.1.0/24, 'fd00:1::/64']}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: InternalIP, address: 'fd00:18::2'}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: [10.0.2.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}]}
";

    fn pod(name: &str, node: &str, ips: &[&str], extra: &str) -> String {
        let ips: Vec<String> = ips.iter().map(|ip| format!("{{ip: '{ip}'}}")).collect();
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\nspec: {{nodeName: {node}{extra}}}\nstatus: {{phase: Running, podIPs: [{}]}}\n",
            ips.join(", ")
        )
    }

    fn cluster(pods: &[String]) -> Cluster {
        crate::model::load::load_str("t.yaml", &format!("{NODES}{}", pods.concat())).unwrap()
    }

    fn plan_of(pods: &[String], externals: &[&str]) -> anyhow::Result<Plan> {
        plan_with(pods, externals, Cni::Routed)
    }

    fn plan_with(pods: &[String], externals: &[&str], cni: Cni) -> anyhow::Result<Plan> {
        let externals: Vec<IpAddr> = externals.iter().map(|ip| ip.parse().unwrap()).collect();
        plan(&cluster(pods), &externals, cni)
    }

    /// The whole plan as text: each namespace's role and script, then the veths.
    fn render(plan: &Plan) -> String {
        let mut out = String::new();
        for (ns, (role, script)) in plan.roles.iter().zip(&plan.scripts).enumerate() {
            out.push_str(&format!("{ns} {role:?}\n"));
            out.extend(script.lines().map(|l| format!("  {l}\n")));
        }
        let names: Vec<String> = (0..plan.roles.len()).map(|ns| format!("ns{ns}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for (ns, script) in plan.bridge_scripts.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            out.push_str(&format!("{ns} bridge\n"));
            out.extend(script.lines().map(|l| format!("  {l}\n")));
        }
        for (ns, script) in plan.nft_scripts.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            out.push_str(&format!("{ns} nft\n"));
            out.extend(script.lines().map(|l| format!("  {l}\n")));
        }
        out + &veth_script(&plan.veths, &names)
    }

    /// The lines of a rendered plan after `start`, up to `end`.
    fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
        text.split(start).nth(1).unwrap().split(end).next().unwrap()
    }

    /// Two pods on n1 (one dual-stack), one on n2.
    fn bridged_pods() -> [String; 3] {
        [pod("a", "n1", &["10.0.1.5", "fd00:1::5"], ""), pod("b", "n1", &["10.0.1.6"], ""), pod("c", "n2", &["10.0.2.5"], "")]
    }

    #[test]
    fn a_bridge_cni_puts_a_nodes_pods_on_one_bridge() {
        let plan = plan_with(&bridged_pods(), &[], Cni::Bridge).unwrap();
        let text = render(&plan);
        let node1 = section(&text, "1 Node(\"n1\")\n", "2 Node");
        assert_eq!(
            node1,
            "  link set lo up
  link set eth0 up
  addr add 172.18.0.2/32 dev eth0
  addr add fd00:18::2/128 dev eth0 nodad
  route add 172.18.0.3/32 dev eth0 src 172.18.0.2
  route add 10.0.2.0/24 via 172.18.0.3 dev eth0 onlink src 172.18.0.2
  link add cni0 type bridge mcast_snooping 0
  link set cni0 up
  addr add 10.0.1.1/24 dev cni0
  addr add fd00:1::1/64 dev cni0 nodad
  link set p0 master cni0
  link set p0 up
  link set p1 master cni0
  link set p1 up
"
        );
        let pod_a = section(&text, "3 Pod(0)\n", "4 Pod");
        assert_eq!(
            pod_a,
            "  link set lo up
  link set eth0 up
  addr add 10.0.1.5/24 dev eth0
  route add 0.0.0.0/0 via 10.0.1.1 dev eth0
  addr add fd00:1::5/64 dev eth0 nodad
  route add ::/0 via fd00:1::1 dev eth0
"
        );
        assert!(plan.sysctls[1].contains(&("net/bridge/bridge-nf-call-iptables", "1")));
        assert!(plan.sysctls[1].contains(&("net/bridge/bridge-nf-call-ip6tables", "1")));
        assert!(plan.sysctls[3].iter().all(|(k, _)| !k.starts_with("net/bridge")));
        assert!(plan.nft_scripts.iter().chain(&plan.bridge_scripts).all(String::is_empty));
        // Same-node pods are checked against each other before any ruleset.
        let name = |s: &ProbeSpec| format!("{} -> {} {}", plan.name(&s.from), plan.name(&s.to), s.family);
        let checks: Vec<String> = plan.wiring_checks().iter().map(name).filter(|c| !c.starts_with("node/")).collect();
        assert_eq!(checks, ["x/b -> x/a IPv4", "x/a -> x/b IPv4"]);
    }

    #[test]
    fn a_vxlan_cni_routes_other_nodes_pods_through_the_vtep() {
        let plan = plan_with(&bridged_pods(), &["192.0.2.10"], Cni::Vxlan).unwrap();
        let text = render(&plan);
        let node2 = section(&text, "2 Node(\"n2\")\n", "3 Pod");
        assert_eq!(
            node2,
            "  link set lo up
  link set eth0 up
  addr add 172.18.0.3/32 dev eth0
  route add 172.18.0.2/32 dev eth0 src 172.18.0.3
  route add fd00:18::2/128 dev eth0
  route add 192.0.2.10/32 dev eth0 src 172.18.0.3
  link add flannel.1 type vxlan id 1 local 172.18.0.3 dev eth0 dstport 8472 nolearning
  link set flannel.1 address 02:6e:66:00:02:04
  addr add 10.0.2.0/32 dev flannel.1
  link set flannel.1 up
  route add 10.0.1.0/24 via 10.0.1.0 dev flannel.1 onlink
  neigh add 10.0.1.0 lladdr 02:6e:66:00:01:04 dev flannel.1 nud permanent
  route add fd00:1::/64 via fd00:18::2 dev eth0 onlink
  link add cni0 type bridge mcast_snooping 0
  link set cni0 up
  addr add 10.0.2.1/24 dev cni0
  link set p2 master cni0
  link set p2 up
"
        );
        assert_eq!(
            section(&text, "6 Outside\n", "1 nft").split_once("1 bridge").unwrap().1,
            "
  fdb append 02:6e:66:00:02:04 dev flannel.1 dst 172.18.0.3 self permanent
2 bridge
  fdb append 02:6e:66:00:01:04 dev flannel.1 dst 172.18.0.2 self permanent
"
        );
        // Every node masquerades the same way.
        assert_eq!(plan.nft_scripts[1], plan.nft_scripts[2]);
        assert_eq!(
            plan.nft_scripts[1],
            "table inet flannel {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr { 10.0.1.0/24, 10.0.2.0/24 } ip daddr { 10.0.1.0/24, 10.0.2.0/24 } return
    ip saddr { 10.0.1.0/24, 10.0.2.0/24 } ip daddr != 224.0.0.0/4 masquerade
    ip6 saddr { fd00:1::/64 } ip6 daddr { fd00:1::/64 } return
    ip6 saddr { fd00:1::/64 } ip6 daddr != ff00::/8 masquerade
  }
}
"
        );
        // A node's own address to another node's pods is not probed; to
        // its own pods, and pods to other nodes, are.
        let reason = |from: Endpoint, to: Endpoint| plan.cannot_probe(&from, &to, Family::IPv4).is_some();
        assert!(reason(Endpoint::Node("n2".into()), Endpoint::Pod(0)));
        assert!(reason(Endpoint::Ip("172.18.0.2".parse().unwrap()), Endpoint::Pod(2)));
        assert!(!reason(Endpoint::Node("n1".into()), Endpoint::Pod(0)));
        assert!(!reason(Endpoint::Pod(0), Endpoint::Node("n2".into())));
        assert!(!reason(Endpoint::Ip("192.0.2.10".parse().unwrap()), Endpoint::Pod(0)));
        let routed = plan_of(&bridged_pods(), &[]).unwrap();
        assert!(routed.cannot_probe(&Endpoint::Node("n2".into()), &Endpoint::Pod(0), Family::IPv4).is_none());
    }

    #[test]
    fn services_add_routes_and_hairpin_ports() {
        let svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {type: NodePort, clusterIPs: [10.96.0.10, 'fd00:96::10'], ipFamilies: [IPv4, IPv6], selector: {app: web}, ports: [{port: 80, nodePort: 30080}]}\n";
        let pods = [pod("a", "n1", &["10.0.1.5", "fd00:1::5"], ""), pod("b", "n1", &["10.0.1.6"], "").replace("name: b,", "name: b, labels: {app: web},"), svc.to_string()];
        let plan = plan(&cluster(&pods), &[], Cni::Bridge).unwrap();
        let text = render(&plan);
        // Each node routes the ClusterIPs of its families out of the fabric.
        let node1 = section(&text, "1 Node(\"n1\")\n", "2 Node");
        assert!(node1.contains("  route add 10.96.0.10/32 dev eth0 src 172.18.0.2\n  route add fd00:96::10/128 dev eth0 src fd00:18::2\n"), "{node1}");
        let node2 = section(&text, "2 Node(\"n2\")\n", "3 Pod");
        assert!(node2.contains("route add 10.96.0.10/32 dev eth0 src 172.18.0.3\n") && !node2.contains("fd00:96::10"), "{node2}");
        // Only the backend's bridge port is in hairpin mode.
        assert!(node1.contains("  link set p1 master cni0\n  link set p1 type bridge_slave hairpin on\n"), "{node1}");
        assert_eq!(node1.matches("hairpin").count(), 1, "{node1}");
        // On vxlan, NodePort traffic masqueraded to another node, and a pod's
        // NodePort traffic to another node, cannot be carried as judged.
        let vx = plan_with(&pods, &[], Cni::Vxlan).unwrap();
        let why = |client: Endpoint, entry, backend, snat| vx.cannot_probe_service(&client, entry, backend, snat, Family::IPv4);
        assert!(why(Endpoint::Node("n2".into()), Some("n1"), Some("n2"), true).unwrap().contains("VTEP address"));
        assert!(why(Endpoint::Pod(0), Some("n2"), Some("n2"), false).unwrap().contains("Flannel masquerades pod x/a"));
        assert_eq!(why(Endpoint::Pod(0), Some("n1"), Some("n1"), true), None);
        assert_eq!(why(Endpoint::Pod(0), None, Some("n2"), false), None);
        assert_eq!(plan.cannot_probe_service(&Endpoint::Pod(0), Some("n2"), Some("n1"), true, Family::IPv4), None);
    }

    #[test]
    fn bridge_cnis_refuse_what_they_cannot_wire() {
        let check = |pods: &[String], externals: &[&str], expected: &str| {
            assert_eq!(plan_with(pods, externals, Cni::Vxlan).unwrap_err().to_string(), expected);
        };
        check(&[pod("b", "n2", &["10.9.9.9"], "")], &[], "pod x/b has address 10.9.9.9, outside the pod CIDRs of its node n2: a bridge CNI cannot wire it (--cni routed can)");
        check(&[pod("b", "n2", &["10.0.2.1"], "")], &[], "pod x/b has address 10.0.2.1, which --cni vxlan gives node n2 (its pods' gateway, or its VTEP)");
        check(&[], &["10.0.1.0"], "external address 10.0.1.0 is a node's gateway or VTEP address on --cni vxlan");
        // The routed wiring takes them all.
        assert!(plan_of(&[pod("b", "n2", &["10.0.2.1"], "")], &["10.0.1.0"]).is_ok());
    }

    #[test]
    fn a_small_cluster_is_wired_like_a_routed_cni() {
        let pods = [
            pod("a", "n1", &["10.0.1.5", "fd00:1::5"], ""),
            // Outside n2's pod CIDR: routed by its own /32.
            pod("b", "n2", &["10.9.9.9"], ""),
            pod("host", "n2", &["172.18.0.3"], ", hostNetwork: true"),
        ];
        let plan = plan_of(&pods, &["192.0.2.10", "172.18.0.3"]).unwrap();
        assert_eq!(
            render(&plan),
            "0 Fabric
  link add br0 type bridge mcast_snooping 0
  link set br0 up
  link set n0 master br0
  link set n0 up
  link set n1 master br0
  link set n1 up
  link set out master br0
  link set out up
1 Node(\"n1\")
  link set lo up
  link set eth0 up
  addr add 172.18.0.2/32 dev eth0
  addr add fd00:18::2/128 dev eth0 nodad
  route add 172.18.0.3/32 dev eth0 src 172.18.0.2
  route add 192.0.2.10/32 dev eth0 src 172.18.0.2
  route add 10.0.2.0/24 via 172.18.0.3 dev eth0 onlink src 172.18.0.2
  route add 10.9.9.9/32 via 172.18.0.3 dev eth0 onlink src 172.18.0.2
  link set p0 up
  addr add 169.254.1.1/32 dev p0
  addr add fe80::1/64 dev p0 nodad
  route add 10.0.1.5/32 dev p0 src 172.18.0.2
  route add fd00:1::5/128 dev p0 src fd00:18::2
2 Node(\"n2\")
  link set lo up
  link set eth0 up
  addr add 172.18.0.3/32 dev eth0
  route add 172.18.0.2/32 dev eth0 src 172.18.0.3
  route add fd00:18::2/128 dev eth0
  route add 192.0.2.10/32 dev eth0 src 172.18.0.3
  route add 10.0.1.0/24 via 172.18.0.2 dev eth0 onlink src 172.18.0.3
  route add fd00:1::/64 via fd00:18::2 dev eth0 onlink
  link set p1 up
  addr add 169.254.1.1/32 dev p1
  addr add fe80::1/64 dev p1 nodad
  route add 10.9.9.9/32 dev p1 src 172.18.0.3
3 Pod(0)
  link set lo up
  link set eth0 up
  addr add 10.0.1.5/32 dev eth0
  addr add fd00:1::5/128 dev eth0 nodad
  route add 0.0.0.0/0 via 169.254.1.1 dev eth0 onlink
  route add ::/0 via fe80::1 dev eth0
4 Pod(1)
  link set lo up
  link set eth0 up
  addr add 10.9.9.9/32 dev eth0
  route add 0.0.0.0/0 via 169.254.1.1 dev eth0 onlink
5 Outside
  link set lo up
  link set eth0 up
  addr add 192.0.2.10/32 dev eth0
  route add 172.18.0.2/32 dev eth0
  route add 10.0.1.0/24 via 172.18.0.2 dev eth0 onlink
  route add 172.18.0.3/32 dev eth0
  route add 10.0.2.0/24 via 172.18.0.3 dev eth0 onlink
  route add 10.9.9.9/32 via 172.18.0.3 dev eth0 onlink
link add name eth0 netns ns1 type veth peer name n0 netns ns0
link add name eth0 netns ns2 type veth peer name n1 netns ns0
link add name eth0 netns ns5 type veth peer name out netns ns0
link add name eth0 netns ns3 type veth peer name p0 netns ns1
link add name eth0 netns ns4 type veth peer name p1 netns ns2
"
        );
        assert_eq!(plan.sysctls[1].iter().filter(|(k, _)| k.contains("forward")).count(), 3);
        assert!(plan.sysctls[3].iter().all(|(k, _)| !k.contains("forward")));
    }

    #[test]
    fn endpoints_are_located() {
        let done = pod("done", "n1", &["10.0.1.6"], "").replace("Running", "Succeeded");
        let pods = [pod("a", "n1", &["10.0.1.5", "fd00:1::5"], ""), done, pod("host", "n2", &["172.18.0.3"], ", hostNetwork: true")];
        let plan = plan_of(&pods, &["192.0.2.10"]).unwrap();
        let check = |endpoint: Endpoint, family, expected: Result<(NsId, &str), &str>| {
            let got = plan.locate(&endpoint, family);
            let expected = expected.map(|(ns, ip)| Place { ns, ip: ip.parse().unwrap() }).map_err(str::to_string);
            assert_eq!(got, expected, "{} {family}", plan.name(&endpoint));
        };
        let ip = |s: &str| Endpoint::Ip(s.parse().unwrap());
        // Pods in name order: a, done, host.
        check(Endpoint::Pod(0), Family::IPv6, Ok((3, "fd00:1::5")));
        check(Endpoint::Pod(2), Family::IPv4, Ok((2, "172.18.0.3")));
        check(Endpoint::Node("n1".into()), Family::IPv6, Ok((1, "fd00:18::2")));
        check(ip("172.18.0.3"), Family::IPv4, Ok((2, "172.18.0.3")));
        check(ip("192.0.2.10"), Family::IPv4, Ok((4, "192.0.2.10")));
        check(Endpoint::Node("n2".into()), Family::IPv6, Err("node n2 has no IPv6 InternalIP"));
        check(Endpoint::Pod(2), Family::IPv6, Err("pod x/host has no IPv6 address"));
        check(ip("192.0.2.10"), Family::IPv6, Err("192.0.2.10 is not an IPv6 address"));
        check(ip("192.0.2.11"), Family::IPv4, Err("192.0.2.11 is not among the external addresses the dataplane was built with"));
        check(Endpoint::Pod(1), Family::IPv4, Err("pod x/done takes no part in the cluster"));
        check(Endpoint::Pod(3), Family::IPv4, Err("no pod #3 in the cluster"));
    }

    #[test]
    fn clusters_that_cannot_be_wired_are_rejected() {
        let check = |pods: &[String], externals: &[&str], expected: &str| {
            assert_eq!(plan_of(pods, externals).unwrap_err().to_string(), expected);
        };
        let a = pod("a", "n1", &["10.0.1.5"], "");
        check(&[pod("a", "n9", &["10.0.1.5"], "")], &[], "pod x/a runs on node n9, which is not in the cluster");
        // Two pods with one address never get here: the loader refuses them.
        check(&[pod("a", "n2", &["fd00:2::5"], "")], &[], "pod x/a has an IPv6 address, but its node n2 has no IPv6 InternalIP to route it through");
        check(&[pod("a", "n1", &["172.18.0.3"], "")], &[], "pod x/a has address 172.18.0.3, which belongs to node n2");
        check(std::slice::from_ref(&a), &["10.0.1.5"], "external address 10.0.1.5 is pod x/a's address");
        check(&[a], &["169.254.1.1"], "external address 169.254.1.1 is the pods' gateway address in the dataplane");
        let unplaced = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.1.5}\n";
        check(&[unplaced.to_string()], &[], "pod x/a has no spec.nodeName: the dataplane cannot place it");
    }

    #[test]
    fn wiring_checks_cross_the_fabric() {
        let pods = [pod("a", "n1", &["10.0.1.5", "fd00:1::5"], ""), pod("b", "n2", &["10.0.2.5"], "")];
        let plan = plan_of(&pods, &["192.0.2.10"]).unwrap();
        let name = |s: &ProbeSpec| format!("{} -> {} {}/{} {}", plan.name(&s.from), plan.name(&s.to), s.port, s.protocol, s.family);
        let specs: Vec<String> = plan.wiring_checks().iter().map(name).collect();
        assert_eq!(
            specs,
            [
                "node/n2 -> x/a 7/TCP IPv4",
                "192.0.2.10 -> x/a 7/TCP IPv4",
                // n2 has no IPv6: x/a's own node checks it.
                "node/n1 -> x/a 7/TCP IPv6",
                "node/n1 -> x/b 7/TCP IPv4",
                "192.0.2.10 -> x/b 7/TCP IPv4",
                "node/n1 -> node/n2 7/TCP IPv4",
                "node/n2 -> node/n1 7/TCP IPv4",
            ]
        );
    }
}
