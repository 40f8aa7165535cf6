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
    pub roles: Vec<Role>,
    pub veths: Vec<Veth>,
    /// Per namespace, sysctls to set before any of its links exist, so that
    /// its `default` settings apply to them.
    pub sysctls: Vec<Vec<(&'static str, &'static str)>>,
    /// Per namespace, the `ip -batch` script that configures it once its
    /// veths exist.
    pub scripts: Vec<String>,
    nodes: BTreeMap<String, NodeInfo>,
    pod_nss: Vec<PodNs>,
    /// Where every pod that takes part is found (host-network ones in their
    /// node's namespace).
    pods: BTreeMap<PodId, PodPlace>,
    /// Every pod's ns/name, by id, for messages.
    pod_keys: Vec<String>,
    outside: Vec<IpAddr>,
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
        };
        let mut specs = Vec::new();
        for pod in &self.pod_nss {
            for family in pod.ips.iter().map(Family::of) {
                let remote = self.nodes.iter().find(|(name, n)| **name != pod.node && n.internal_ip(family).is_some());
                let node = remote.map_or(&pod.node, |(name, _)| name);
                specs.push(check(Endpoint::Node(node.clone()), &Endpoint::Pod(pod.id), family));
                if let Some(ip) = self.outside.iter().find(|ip| Family::of(ip) == family) {
                    specs.push(check(Endpoint::Ip(*ip), &Endpoint::Pod(pod.id), family));
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
pub fn plan(cluster: &Cluster, externals: &[IpAddr]) -> anyhow::Result<Plan> {
    let mut roles = vec![Role::Fabric];
    let mut nodes = BTreeMap::new();
    for node in cluster.nodes.values() {
        let info = NodeInfo {
            ns: roles.len(),
            internal_ips: node.internal_ips.clone(),
            // ExternalIPs too: an IP literal may name the node at one.
            addrs: node.addresses.clone(),
            prefixes: node.pod_cidrs.clone(),
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
                node.prefixes.push(IpNet::from(*ip));
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
        if !outside.contains(ip) && !nodes.values().any(|n| n.addrs.contains(ip)) {
            outside.push(*ip);
        }
    }
    if !outside.is_empty() {
        roles.push(Role::Outside);
    }

    let mut plan = Plan {
        veths: Vec::new(),
        sysctls: Vec::new(),
        scripts: vec![String::new(); roles.len()],
        roles,
        nodes,
        pod_nss,
        pods,
        pod_keys: cluster.pods.iter().map(|p| p.key()).collect(),
        outside,
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

    for (name, node) in &plan.nodes {
        let mut s = Script::default();
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
        for other in &others {
            for net in &other.prefixes {
                if let Some(gateway) = other.internal_ip(Family::of_net(net)) {
                    s.route(*net, Some(gateway), "eth0", src(&net.addr()));
                }
            }
        }
        for (k, pod) in plan.pod_nss.iter().enumerate().filter(|(_, p)| p.node == *name) {
            let veth = format!("p{k}");
            s.up(&veth);
            s.addr(IpAddr::V4(GATEWAY4), &veth);
            s.line(format!("addr add {GATEWAY6}/64 dev {veth} nodad"));
            for ip in &pod.ips {
                s.route(IpNet::from(*ip), None, &veth, src(ip));
            }
            plan.veths.push(Veth { a: pod.ns, a_name: "eth0".into(), b: node.ns, b_name: veth });
            plan.scripts[pod.ns] = pod_script(&pod.ips);
        }
        plan.scripts[node.ns] = s.text;
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
    plan.sysctls = plan
        .roles
        .iter()
        .map(|role| match role {
            Role::Node(_) => common.iter().chain(&forwarding).copied().collect(),
            _ => common.to_vec(),
        })
        .collect();
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
            let jobs: Vec<_> =
                netns.iter().zip(&plan.scripts).skip(1).map(|(ns, script)| s.spawn(move || ns.ip_batch(script))).collect();
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
        let externals: Vec<IpAddr> = externals.iter().map(|ip| ip.parse().unwrap()).collect();
        plan(&cluster(pods), &externals)
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
        out + &veth_script(&plan.veths, &names)
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
