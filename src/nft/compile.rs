//! From the resolved policies to one node's nftables program.
//!
//! Pure: no I/O, no clock, no environment; the same cluster gives a
//! byte-identical program, and object names derive from content (a policy's
//! namespace/name, a selector's definition), never from iteration order.
//!
//! Layout, in the one table `inet netfence`:
//!
//! - Three base chains, all `policy accept`, so that traffic netfence does
//!   not police is left exactly as it was ([`BASES`]):
//!
//!   | chain          | hook        | priority          | judges                                    |
//!   |----------------|-------------|-------------------|-------------------------------------------|
//!   | `egress`       | postrouting | srcnat - 10 (90)  | local pod -> anything routed on           |
//!   | `ingress`      | postrouting | srcnat - 5 (95)   | anything -> local pod                     |
//!   | `egress_local` | input       | 110               | local pod -> this node (its own addresses)|
//!
//!   Egress is judged where every Service proxy has already rewritten the
//!   destination and SNAT has not yet run. kube-proxy's iptables and
//!   nftables modes DNAT in prerouting, so a chain there would do for them;
//!   IPVS rewrites at input (ip_vs's scheduling hook is input priority 99,
//!   after its reply hook at 98), then re-sends the packet through output
//!   and postrouting, so a prerouting chain would see the ClusterIP and deny
//!   egress to every Service. Postrouting before SNAT (100) sees every
//!   packet a local pod sends that is routed on: to a pod here or elsewhere,
//!   outside, or re-sent by IPVS. What is delivered to the node itself never
//!   reaches postrouting: `egress_local` judges it at input after IPVS
//!   (a Service backed by a host-network pod is rewritten to a node address
//!   at 99 and delivered, not re-sent). A `nat` chain on input that SNATs
//!   (priority 100) would run before it; kube-proxy has none.
//!
//!   Ingress is judged at postrouting too, before SNAT (the original
//!   source), whether the packet was forwarded, re-sent by IPVS (which
//!   skips FORWARD) or sent by the node. Egress and ingress are two chains
//!   at distinct priorities, not one: an `accept` ends only its own base
//!   chain, so each direction keeps plain `accept` verdicts and neither can
//!   skip the other; in one chain the egress verdicts would have to become
//!   `return`s. Distinct priorities give the order (egress first, as the
//!   packet leaves its source before it reaches its destination), which
//!   the kernel leaves undefined among equal ones.
//! - Each judging base chain first lets conntrack answer what it can
//!   (see "Stateful" below) and lets IPv6 neighbour discovery through,
//!   then dispatches on the local pod's address through a verdict map
//!   (`@ingress4`, `@egress6`, ..., the egress maps shared by both egress
//!   chains): `accept` for a pod not isolated in that direction, `jump` to
//!   its group chain otherwise. An address in the node's pod CIDRs that is
//!   in no map is dropped: a pod the agent has not programmed yet is
//!   closed, not open.
//! - Traffic from the node itself is told by address: `fib saddr type
//!   local`, the source is one of the node's own addresses. Ingress accepts
//!   it before the dispatch (kubelet probes, which on a bridge CNI come
//!   from the bridge's address inside the pod CIDR, not from an
//!   InternalIP); the egress chains exempt it from failing closed (that
//!   same bridge address is in the pod CIDR but is no pod). A pod's address
//!   lives in the pod's own namespace, so no pod, local or remote, is ever
//!   local to the node. Trusting an address is safe only because of the
//!   `antispoof` chain below: no packet that claims one of the node's
//!   addresses gets in from outside.
//! - Cluster-scoped policies (ClusterNetworkPolicy, ANP, BANP) are one
//!   chain per tier and direction, `cnp_ing_admin`, `cnp_egr_baseline`,
//!   ...: in judging order, one rule per (policy, rule, peer, protocol,
//!   family), `<local pod in the subject's set> <peer in a set>
//!   <proto/port>` and the action's verdict: Accept `accept`, Deny `drop`,
//!   Pass `return` in the Admin tier (on to the dispatch: nftables has no
//!   two-level return, hence one chain per tier) and `accept` in the
//!   Baseline tier (on to the default, which allows). The Admin chain is
//!   jumped to from each judging base chain just before the dispatch
//!   (after the node's own traffic is accepted on ingress, so kubelet
//!   probes stay exempt; `egress_local` jumps to it too, so egress to the
//!   node itself is judged); falling off it continues to the dispatch.
//!   The Baseline chain ends in `accept` and is where the dispatch sends a
//!   pod no NetworkPolicy isolates (the map's element is `jump
//!   cnp_<dir>_baseline` instead of `accept`). Subjects are sets of local
//!   pods; `pods`/`namespaces` peers sets of every policy pod's address,
//!   `nodes` peers sets of node addresses (InternalIP and ExternalIP),
//!   `networks` small interval sets; named ports use the `addr . proto .
//!   port` sets, one rule per protocol. Without cluster policies in a
//!   tier and direction, nothing of this exists and the program is what
//!   it was.
//! - A group chain per distinct list of isolating policies: it accepts
//!   hairpin traffic (below), jumps to each policy's rule chain in order,
//!   then drops. Chains grow with policies, never with pods.
//! - A rule chain per policy and direction: one rule per (rule, peer, port),
//!   counted, with a comment naming its source, accepting. Selector peers
//!   are hash sets of pod addresses named from the selector's definition and
//!   shared by every rule using it; ipBlocks are small interval sets; named
//!   ports are `daddr . l4proto . dport` sets of the pods declaring the
//!   name: on egress every pod of the cluster (`np4_tcp_http`), on ingress
//!   only this node's (`npl4_tcp_http`), as an ingress packet's
//!   destination is always a local pod. A rule without ports matches every protocol (ICMP, GRE, ...), as
//!   Kubernetes says; a rule with ports only those protocols and ports.
//!   Pod churn changes set and map elements only.
//!
//! Stateful. Every judging base chain begins `ct state established,related
//! accept; ct state invalid drop`: the replies of a connection a policy
//! allowed, and ICMP errors about it, pass on conntrack's word; what
//! conntrack cannot place in any connection (a TCP segment with flags no
//! connection can start with, an ICMP error or echo reply about nothing,
//! an SCTP chunk out of turn) is dropped; everything else is new and is
//! judged by the policies, whatever its protocol, flags or ICMP type.
//! Conntrack reassembles fragments before any of this, so only whole
//! packets are judged. No other shortcut exists: nothing is accepted for
//! its TCP flags, ICMP type or fragment offset. Conntrack costs netfence
//! nothing extra on a Kubernetes node: kube-proxy (iptables, nftables and
//! IPVS modes) and CNI masquerading already track every connection of the
//! node's network namespace (docs/benchmarks.md measures against that
//! baseline). Connections a policy change no longer allows are cut by the
//! agent (`--established cut`); this program alone would let them run on.
//!
//! Hairpin. A pod reaching itself through its own Service (kube-proxy
//! rewrites the ClusterIP to the pod, the packet leaves the pod through its
//! interface and is routed back into it) is allowed by the NetworkPolicy
//! tier whatever policies isolate the pod: "a pod cannot block access to
//! itself" (docs/policy-test-format-services.md, point 5). Both judging
//! chains on postrouting run before kube-proxy's masquerade (srcnat 100),
//! so both see the pod as source and destination. Two sets, `hairpin4`
//! (`ipv4_addr . ipv4_addr`) and `hairpin6`, hold every local pod's
//! address paired with itself, and every group chain (reached only when
//! the pod is isolated in that direction) begins `ip saddr . ip daddr
//! @hairpin4 counter accept` (and the `ip6` one): one lookup of the
//! concatenation, elements per pod, never rules. The sets are declared on
//! every node, empty without local pods, so pods coming and going change
//! elements only. Cluster policies still judge it: the Admin tier runs
//! before the dispatch, and a pod no NetworkPolicy isolates goes to the
//! Baseline tier as before (its dispatch never reaches a group chain).
//! What it cannot open: an element matches only a packet whose source and
//! destination are both one local pod's address. A pod sending to its own
//! address directly never leaves its namespace; any other packet claiming
//! a local pod's address as its source must come in through that pod's
//! interface, or anti-spoofing (below) drops it at prerouting: another
//! pod forging it, the network claiming it: a packet claiming P's address
//! towards P from any interface but P's own. So on a routed CNI only the
//! pod itself can produce a pair, and what it reaches is itself. On a
//! bridge CNI, where anti-spoofing cannot tell two pods of one bridge
//! apart (below), a pod that forges a neighbour's address can already pass
//! whatever admits that neighbour; the exemption adds the neighbour
//! itself to that: a forged packet from P to P gets into P (one way: the
//! answer goes to P itself, and an IPv4 packet arriving with P's own
//! address as its source is dropped by P's kernel as a martian unless
//! `accept_local` is on).
//!
//! Anti-spoofing. A base chain on prerouting at raw - 10 (before conntrack
//! and any DNAT, so a forged packet never creates or matches state) drops
//! every packet whose source address is not routed back through the
//! interface it came in on: `fib saddr . iif oif missing` (strict
//! reverse-path filtering; IPv6 neighbour discovery, which never leaves
//! its link, is exempt). On a routed CNI (a /32 and /128 route per pod
//! through its own interface: Calico, Cilium's routed modes, the test
//! harness) that stops a pod claiming another pod's address, its node's
//! (a local address is never a way back) or an outside one, and the
//! network claiming a local pod's. What it cannot stop: a host on the
//! node network claiming a remote node's pod address (nothing at L3 tells
//! it from that node; only the network can, e.g. an encrypted or
//! authenticated pod network), and, on a CNI that puts a node's pods on
//! one Linux bridge, one pod claiming another's address on the same
//! bridge (the route back is the bridge for both; that takes a per-port
//! check at L2). Strict reverse-path filtering also drops traffic of
//! asymmetric routes (arriving on one interface, routed back through
//! another), which a node that routes pod traffic must not have.
//! Bridged pod traffic (br_netfilter) reaches this chain with the bridge as
//! its input interface, so the check holds for it (the whole suite passes
//! on `--cni bridge`). On Flannel's vxlan backend one asymmetry is real: a
//! packet a node sends from its InternalIP to another node's pod arrives
//! through the VXLAN device, whose route back it is not, and is dropped;
//! Flannel's own traffic leaves from the VTEP address and passes (the
//! harness does not probe such flows on `--cni vxlan`).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::counters::{Origin, Origins};
use super::program::*;
use crate::ir::{Ir, PeerIr, PeerKey};
use crate::model::cluster_policy::{Action as CnpAction, ClusterPeer, ClusterPort, Subject, Tier};
use crate::model::{Cluster, ClusterPolicy, Direction, Family, Peer, PodId, Policy, PolicyId, PortRef, PortSpec, Protocol};
use crate::selector::Selector;

/// A base chain: where, and in which direction, local pods are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    pub name: &'static str,
    pub dir: Direction,
    pub hook: Hook,
    pub priority: i32,
}

/// Local pods' egress to anything routed on: after every DNAT (IPVS's
/// included), before SNAT.
pub const EGRESS: Base = Base { name: "egress", dir: Direction::Egress, hook: Hook::Postrouting, priority: priority::SRCNAT - 10 };
/// Local pods' egress to the node itself: after IPVS's input hooks (98,
/// 99), which would otherwise show it the Service address.
pub const EGRESS_LOCAL: Base = Base { name: "egress_local", dir: Direction::Egress, hook: Hook::Input, priority: 110 };
/// Ingress to local pods: after egress on the same hook, before SNAT.
pub const INGRESS: Base = Base { name: "ingress", dir: Direction::Ingress, hook: Hook::Postrouting, priority: priority::SRCNAT - 5 };
/// Every base chain that judges a direction.
pub const BASES: [Base; 3] = [INGRESS, EGRESS, EGRESS_LOCAL];

/// The anti-spoofing chain: on prerouting before conntrack (-200) and
/// every DNAT, so a forged packet neither creates nor matches state.
pub const ANTISPOOF: &str = "antispoof";
pub const ANTISPOOF_PRIORITY: i32 = priority::RAW - 10;

// The order on postrouting: egress, then ingress, both before SNAT; egress
// to the node after IPVS's input hooks (ip_vs_out 98, ip_vs_in 99); the
// anti-spoofing check before conntrack (-200).
const _: () = assert!(EGRESS.priority < INGRESS.priority && INGRESS.priority < priority::SRCNAT);
const _: () = assert!(EGRESS_LOCAL.priority > priority::SRCNAT - 1);
const _: () = assert!(ANTISPOOF_PRIORITY < -200);

/// The node a pod runs on; `""` for a pod without `spec.nodeName` (a
/// hand-written snapshot may leave it out): such pods share one pseudo-node,
/// so their policies are still compiled and can be checked.
pub fn node_of(pod: &crate::model::Pod) -> &str {
    pod.node.as_deref().unwrap_or("")
}

/// The program for `node`: its local pods' isolation, the rules of the
/// policies isolating them, and the address sets those rules need.
pub fn compile(cluster: &Cluster, ir: &Ir, node: &str) -> Program {
    compile_with_origins(cluster, ir, node).0
}

/// [`compile`], with what each counted rule measures (for the agent's
/// per-rule metrics; the program is the same).
pub fn compile_with_origins(cluster: &Cluster, ir: &Ir, node: &str) -> (Program, Origins) {
    let mut c = Compiler { cluster, ir, node, p: Program::default(), names: Names::default(), origins: Origins::new() };
    let local: Vec<PodId> = cluster
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_policy_pod() && node_of(p) == node)
        .map(|(id, _)| id)
        .collect();
    for f in FAMILIES {
        let pairs = local.iter().filter_map(|&id| cluster.pods[id].ip(f)).map(|ip| Element::AddrPair(ip, ip)).collect();
        c.p.add_set(Set::of(hairpin_set_name(f), KeyType::AddrPair(f), false, pairs));
    }
    let node = cluster.nodes.get(node);
    for dir in Direction::BOTH {
        c.direction(dir, &local, node);
    }
    c.antispoof();
    (c.p, c.origins)
}

/// The program of every node, by name: the cluster's nodes and any node a
/// pod names (see [`node_of`]).
pub fn compile_all(cluster: &Cluster, ir: &Ir) -> BTreeMap<String, Program> {
    let names: BTreeSet<&str> =
        cluster.nodes.keys().map(String::as_str).chain(cluster.pods.iter().filter(|p| p.is_policy_pod()).map(|p| node_of(p))).collect();
    names.into_iter().map(|n| (n.to_string(), compile(cluster, ir, n))).collect()
}

struct Compiler<'a> {
    cluster: &'a Cluster,
    ir: &'a Ir,
    node: &'a str,
    p: Program,
    names: Names,
    origins: Origins,
}

pub(crate) const FAMILIES: [Family; 2] = [Family::IPv4, Family::IPv6];

fn fam_digit(f: Family) -> &'static str {
    match f {
        Family::IPv4 => "4",
        Family::IPv6 => "6",
    }
}

fn dir_prefix(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "ing",
        Direction::Egress => "egr",
    }
}

/// The address field that names the local pod in `dir`, and the peer's.
fn fields(dir: Direction) -> (AddrField, AddrField) {
    match dir {
        Direction::Ingress => (AddrField::Daddr, AddrField::Saddr),
        Direction::Egress => (AddrField::Saddr, AddrField::Daddr),
    }
}

fn addr_match(family: Family, field: AddrField, negate: bool, rhs: AddrMatch) -> Match {
    Match::Addr { family, field, negate, rhs }
}

fn nets_of(ips: impl IntoIterator<Item = IpNet>, family: Family) -> BTreeSet<IpNet> {
    ips.into_iter().filter(|n| Family::of_net(n) == family).collect()
}

/// Rules with what each counted one measures (see [`Origins`]).
pub(crate) type Rules = Vec<(Rule, Option<Origin>)>;

/// The dispatch map of `dir` in family `f` (`ingress4`, `egress6`, ...).
pub(crate) fn map_name(dir: Direction, f: Family) -> String {
    format!("{}{}", dir.field(), fam_digit(f))
}

/// The rules of the base chains of `dir` (see [`BASES`]): conntrack, the
/// dispatch through the maps of [`map_name`], failing closed for the
/// node's pod CIDRs. They read no pod: only the node.
pub(crate) fn base_rules(dir: Direction, node: Option<&crate::model::Node>, admin: Option<&str>) -> Rules {
    let (pod_field, _) = fields(dir);
    // Most packets belong to a connection already: conntrack first.
    let mut rules = vec![
        (Rule::verdict(vec![Match::CtState([CtState::Established, CtState::Related].into())], Verdict::Accept), None),
        (
            Rule::verdict(vec![Match::CtState([CtState::Invalid].into())], Verdict::Drop)
                .counted(format!("{dir}: invalid, part of no connection")),
            Some(Origin::Invalid { dir }),
        ),
        (nd_accept(vec![Match::Ip6HopLimit255]), None),
    ];
    if dir == Direction::Ingress {
        // The node's own traffic (kubelet probes), before the dispatch
        // would judge it by the destination pod's policies.
        rules.push((Rule::verdict(vec![Match::FibSaddrLocal { negate: false }], Verdict::Accept), None));
    }
    // Cluster policies' Admin tier, before the NetworkPolicy dispatch.
    if let Some(admin) = admin {
        rules.push((Rule::verdict(vec![], Verdict::Jump(admin.to_string())), None));
    }
    // Dispatch: one map per family, one element per local pod address.
    for f in FAMILIES {
        rules.push((Rule::new(vec![], Action::Vmap { family: f, field: pod_field, map: map_name(dir, f) }), None));
    }
    for f in FAMILIES {
        let cidrs = nets_of(node.into_iter().flat_map(|n| n.pod_cidrs.iter().copied()), f);
        if !cidrs.is_empty() {
            let mut m = vec![addr_match(f, pod_field, false, AddrMatch::Nets(cidrs))];
            if dir == Direction::Egress {
                // A bridge CNI gives the node an address in its pod
                // CIDR: the node's own packets from it are no pod's.
                m.push(Match::FibSaddrLocal { negate: true });
            }
            let rule = Rule::verdict(m, Verdict::Drop).counted(format!("{dir}: fail closed, pod address not programmed"));
            rules.push((rule, Some(Origin::FailClosed { dir })));
        }
    }
    rules
}

/// Split `rules` into a chain and its origins, added to both.
pub(crate) fn add_chain(p: &mut Program, origins: &mut Origins, name: String, base: Option<BaseHook>, rules: Rules) {
    let (rules, o): (Vec<Rule>, Vec<Option<Origin>>) = rules.into_iter().unzip();
    origins.insert(name.clone(), o);
    p.add_chain(Chain { name, base, rules });
}

/// The base hook of base chain `b`.
pub(crate) fn base_hook(b: &Base) -> BaseHook {
    BaseHook { hook: b.hook, priority: b.priority, policy: ChainPolicy::Accept }
}

/// The name of the group chain of pods isolated in `dir` by exactly the
/// policies `keys` (`namespace/name`, in policy order).
pub(crate) fn group_name(dir: Direction, keys: &[String]) -> String {
    // `grp_` cannot begin a policy chain's name (those begin `ing_` or
    // `egr_`), so no policy can be named into a group's chain.
    format!("grp_{}_{}", dir_prefix(dir), short_hash(&keys.join("\n")))
}

/// The set of every local pod's address in family `f` paired with itself
/// (`hairpin4`, `hairpin6`): declared on every node, empty without local
/// pods, so that pods coming and going change its elements only.
pub(crate) fn hairpin_set_name(f: Family) -> String {
    format!("hairpin{}", fam_digit(f))
}

/// The rules of a group chain: the hairpin exemption (a pod reaching
/// itself through a Service; see the module doc, "Hairpin"), a jump to each
/// policy's rule chain (`None` for a policy without rules in `dir`), in
/// order, then the drop.
pub(crate) fn group_rules(dir: Direction, keys: &[String], chains: impl IntoIterator<Item = Option<String>>) -> Rules {
    let mut rules: Rules = FAMILIES
        .into_iter()
        .map(|f| {
            let m = Match::AddrPair { family: f, set: hairpin_set_name(f) };
            let rule = Rule::verdict(vec![m], Verdict::Accept).counted(format!("{dir}: hairpin, a pod reaching itself through a Service"));
            (rule, Some(Origin::Hairpin { dir }))
        })
        .collect();
    rules.extend(chains.into_iter().flatten().map(|c| (Rule::verdict(vec![], Verdict::Jump(c)), None)));
    let deny = Rule::verdict(vec![], Verdict::Drop).counted(comment(&keys.join(","), &format!(" {dir}: isolated, no rule allowed")));
    rules.push((deny, Some(Origin::Isolated { policies: keys.to_vec(), dir })));
    rules
}

/// The name of `policy`'s rule chain in `dir`.
pub(crate) fn policy_chain_name(dir: Direction, policy: &Policy) -> String {
    chain_name(&format!("{}_{}_{}", dir_prefix(dir), policy.namespace, policy.name))
}

/// What fills a set a rule chain reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fill {
    /// The addresses in `family` of the pods selector peer `key` means
    /// (peer `peer` of rule `rule` of the chain's policy and direction).
    Pods { family: Family, key: PeerKey, rule: usize, peer: usize },
    /// Fixed prefixes: an ipBlock's CIDR or its excepts.
    Nets(BTreeSet<Element>),
    /// `addr . proto . port` of every policy pod declaring `name`/`proto`;
    /// with `local`, of this node's pods only: an ingress rule's named port
    /// is read on the packet's destination, which on ingress is always a
    /// local pod, so the rest of the cluster would only be dead weight
    /// (most of a busy node's elements at 100k pods).
    NamedPort { family: Family, proto: Protocol, name: String, local: bool },
    /// The addresses in `family` of the policy pods cluster-policy selector
    /// `key` means (a subject, or a `namespaces`/`pods` peer); with
    /// `local`, of this node's pods only (a subject: the rules read it on
    /// the local pod's side).
    Selected { family: Family, key: PeerKey, local: bool },
    /// The addresses in `family` (InternalIP, ExternalIP) of the nodes
    /// `selector` matches: a cluster policy's `nodes` peer.
    Nodes { family: Family, selector: Selector },
}

/// A set a rule chain reads: its declaration, and what fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetRef {
    pub name: String,
    pub key: KeyType,
    pub interval: bool,
    /// What the name was derived from: one name, one definition.
    pub def: String,
    pub fill: Fill,
}

/// A policy's rule chain in one direction, before its sets are filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyChain {
    pub name: String,
    pub rules: Rules,
    /// Every set the rules read, in order of first use, each once.
    pub sets: Vec<SetRef>,
}

/// The rule chain of `policy` in `dir`: one rule per rule × peer × port
/// (× family where it matters); `None` when it has no rules (the policy
/// only isolates). Reads the policy alone: who a selector peer means is a
/// set's elements, never a rule.
pub(crate) fn policy_chain(names: &mut Names, dir: Direction, policy: &Policy) -> Option<PolicyChain> {
    let model_rules = policy.rules(dir);
    if model_rules.is_empty() {
        return None;
    }
    let mut b = ChainBuilder { names, sets: Vec::new() };
    let key = policy.key();
    let mut rules = Vec::new();
    for (ri, rule) in model_rules.iter().enumerate() {
        // `None`: the rule has no peers (every peer) or no ports (every port).
        let peers: Vec<Option<(usize, &Peer)>> =
            if rule.peers.is_empty() { vec![None] } else { rule.peers.iter().enumerate().map(Some).collect() };
        let ports: Vec<Option<(usize, &PortSpec)>> =
            if rule.ports.is_empty() { vec![None] } else { rule.ports.iter().enumerate().map(Some).collect() };
        for peer in &peers {
            for port in &ports {
                let mut text = format!(" {dir} rule {ri}");
                if let Some((i, _)) = peer {
                    text.push_str(&format!(" peer {i}"));
                }
                if let Some((i, _)) = port {
                    text.push_str(&format!(" port {i}"));
                }
                let c = comment(&key, &text);
                for matches in b.rule_matches(dir, &policy.namespace, ri, *peer, port.map(|(_, p)| p)) {
                    let origin = Origin::Allow { policy: key.clone(), dir, rule: ri };
                    rules.push((Rule::verdict(matches, Verdict::Accept).counted(c.clone()), Some(origin)));
                }
            }
        }
    }
    Some(PolicyChain { name: policy_chain_name(dir, policy), rules, sets: b.sets })
}

/// The name of cluster-policy `tier`'s chain in `dir` (`cnp_ing_admin`, ...).
pub(crate) fn tier_chain_name(tier: Tier, dir: Direction) -> String {
    format!("cnp_{}_{}", dir_prefix(dir), if tier == Tier::Admin { "admin" } else { "baseline" })
}

/// The chain of cluster-policy `tier` for `dir`, from `policies` in judging
/// order (those of other tiers are skipped): one rule per (policy, rule,
/// peer, protocol, family), matching the local pod against the policy's
/// subject set and the peer against a set; Accept is `accept`, Deny `drop`,
/// Pass `return` in the Admin tier (on to the NetworkPolicy dispatch) and
/// `accept` in the Baseline tier (on to the default, which allows). The
/// Baseline chain ends in `accept` (it is reached only for pods no
/// NetworkPolicy isolates); falling off the Admin chain goes on to the
/// dispatch. `None` when no policy of the tier has rules in `dir`: the
/// program is then what it was without cluster policies. Reads the
/// policies alone, as [`policy_chain`] does: pods, namespaces and nodes
/// are set elements, so the incremental engine rebuilds a tier chain only
/// when a cluster policy changes.
pub(crate) fn tier_chain<'a>(
    names: &mut Names,
    tier: Tier,
    dir: Direction,
    policies: impl IntoIterator<Item = &'a ClusterPolicy>,
) -> Option<PolicyChain> {
    let policies: Vec<&ClusterPolicy> = policies.into_iter().filter(|p| p.tier == tier && !p.rules(dir).is_empty()).collect();
    if policies.is_empty() {
        return None;
    }
    let mut b = ChainBuilder { names, sets: Vec::new() };
    let (pod_field, peer_field) = fields(dir);
    let mut rules: Rules = Vec::new();
    for policy in policies {
        let key = policy.key();
        for (ri, rule) in policy.rules(dir).iter().enumerate() {
            let verdict = match (rule.action, tier) {
                (CnpAction::Accept, _) | (CnpAction::Pass, Tier::Baseline) => Verdict::Accept,
                (CnpAction::Deny, _) => Verdict::Drop,
                (CnpAction::Pass, Tier::Admin) => Verdict::Return,
            };
            let ports: Vec<Option<(usize, &ClusterPort)>> =
                if rule.ports.is_empty() { vec![None] } else { rule.ports.iter().enumerate().map(Some).collect() };
            for (peer_i, peer) in rule.peers.iter().enumerate() {
                for f in FAMILIES {
                    let Some(peer_match) = b.cluster_peer_match(f, peer_field, peer) else { continue };
                    let subj = b.subject_set(f, &policy.subject);
                    for port in &ports {
                        let mut text = format!(" {dir} rule {ri} peer {peer_i}");
                        if let Some((i, _)) = port {
                            text.push_str(&format!(" port {i}"));
                        }
                        text.push_str(&format!(" {}", rule.action));
                        let c = comment(&format!("{tier} {key}"), &text);
                        let port_matches: Vec<Option<Match>> = match port {
                            None => vec![None],
                            Some((_, ClusterPort::Range { protocol, start, end })) => {
                                vec![Some(Match::Proto { proto: *protocol, dport: Some(PortRange { lo: *start, hi: *end }) })]
                            }
                            // Declared with any protocol: one rule per protocol's set,
                            // the same sets a NetworkPolicy rule's named port uses.
                            Some((_, ClusterPort::Named(n))) => Protocol::ALL
                                .into_iter()
                                .map(|proto| {
                                    let set = b.named_port_set(f, n, proto, dir == Direction::Ingress);
                                    Some(Match::NamedPort { family: f, set })
                                })
                                .collect(),
                        };
                        for pm in port_matches {
                            let mut m = vec![addr_match(f, pod_field, false, AddrMatch::Set(subj.clone()))];
                            m.extend(peer_match.iter().cloned());
                            m.extend(pm);
                            let origin = Origin::Cluster { policy: key.clone(), dir, rule: ri, action: rule.action };
                            rules.push((Rule::verdict(m, verdict.clone()).counted(c.clone()), Some(origin)));
                        }
                    }
                }
            }
        }
    }
    if tier == Tier::Baseline {
        rules.push((Rule::verdict(vec![], Verdict::Accept), None));
    }
    Some(PolicyChain { name: tier_chain_name(tier, dir), rules, sets: b.sets })
}

/// Who a cluster policy's subject means, as a selector peer's key (always
/// with a namespaceSelector): the same scoping.
fn subject_key(subject: &Subject) -> PeerKey {
    match subject {
        Subject::Namespaces(n) => PeerKey::new("", &Some(n.clone()), &None),
        Subject::Pods { namespaces, pods } => PeerKey::new("", &Some(namespaces.clone()), &Some(pods.clone())),
    }
}

/// Whether `pod` can give an element to a [`Fill::Selected`] set of
/// `node` (given its selectors mean it).
pub(crate) fn selected_member(pod: &crate::model::Pod, local: bool, node: &str) -> bool {
    pod.is_policy_pod() && (!local || node_of(pod) == node)
}

/// The elements node `n` gives a [`Fill::Nodes`] set.
pub(crate) fn node_elements<'n>(n: &'n crate::model::Node, f: Family, selector: &'n Selector) -> impl Iterator<Item = Element> + 'n {
    let matched = selector.matches(&n.labels);
    n.addresses.iter().filter(move |ip| matched && Family::of(ip) == f).map(|ip| Element::Addr(*ip))
}

struct ChainBuilder<'n> {
    names: &'n mut Names,
    sets: Vec<SetRef>,
}

impl ChainBuilder<'_> {
    fn set(&mut self, name: String, key: KeyType, interval: bool, def: String, fill: Fill) -> String {
        if !self.sets.iter().any(|s| s.name == name) {
            self.sets.push(SetRef { name: name.clone(), key, interval, def, fill });
        }
        name
    }

    /// The match lists (one per family where the family matters) for one
    /// (peer, port) of rule `ri`.
    fn rule_matches(&mut self, dir: Direction, policy_ns: &str, ri: usize, peer: Option<(usize, &Peer)>, port: Option<&PortSpec>) -> Vec<Vec<Match>> {
        let (_, peer_field) = fields(dir);
        let named = matches!(port, Some(PortSpec { port: Some(PortRef::Named(_)), .. }));
        // Families this (peer, port) needs a rule in: an ipBlock is one
        // family; a selector, or a named port (its set is per family), both.
        // Otherwise one rule without an address matches both.
        let families: Vec<Option<Family>> = match peer {
            Some((_, Peer::IpBlock { cidr, .. })) => vec![Some(Family::of_net(cidr))],
            Some((_, Peer::Pods { .. })) => FAMILIES.map(Some).to_vec(),
            None if named => FAMILIES.map(Some).to_vec(),
            None => vec![None],
        };
        let mut out = Vec::new();
        for family in families {
            let mut m = Vec::new();
            match (peer, family) {
                (Some((pi, Peer::Pods { namespaces, pods })), Some(f)) => {
                    let set = self.pod_set(f, policy_ns, namespaces.as_ref(), pods.as_ref(), ri, pi);
                    m.push(addr_match(f, peer_field, false, AddrMatch::Set(set)));
                }
                (Some((_, Peer::IpBlock { cidr, except })), Some(f)) => {
                    let (block, except) = self.block_sets(f, cidr, except);
                    m.push(addr_match(f, peer_field, false, AddrMatch::Set(block)));
                    if let Some(x) = except {
                        m.push(addr_match(f, peer_field, true, AddrMatch::Set(x)));
                    }
                }
                _ => {}
            }
            if let Some(spec) = port {
                m.push(self.port_match(spec, family, dir == Direction::Ingress));
            }
            out.push(m);
        }
        out
    }

    fn port_match(&mut self, spec: &PortSpec, family: Option<Family>, local: bool) -> Match {
        match (&spec.port, family) {
            (None, _) => Match::Proto { proto: spec.protocol, dport: None },
            (Some(PortRef::Number(p)), _) => {
                Match::Proto { proto: spec.protocol, dport: Some(PortRange { lo: *p, hi: spec.end_port.unwrap_or(*p) }) }
            }
            (Some(PortRef::Named(n)), Some(f)) => Match::NamedPort { family: f, set: self.named_port_set(f, n, spec.protocol, local) },
            (Some(PortRef::Named(_)), None) => unreachable!("named ports are compiled per family"),
        }
    }

    /// The set of addresses of the pods a selector peer means, named from
    /// the peer's definition so every rule using it shares it.
    fn pod_set(&mut self, f: Family, policy_ns: &str, namespaces: Option<&Selector>, pods: Option<&Selector>, rule: usize, peer: usize) -> String {
        // Canonical form: an absent podSelector means every pod, like an
        // empty one; expressions in a fixed order.
        let canon = |s: Option<&Selector>| {
            s.map(|s| {
                let mut s = s.clone();
                s.match_expressions.sort();
                s
            })
        };
        let def = serde_json::json!({
            "namespace": namespaces.is_none().then_some(policy_ns),
            "namespaceSelector": canon(namespaces),
            "podSelector": canon(pods).unwrap_or_default(),
        })
        .to_string();
        let name = self.names.hashed(&format!("pod{}", fam_digit(f)), &def);
        let key = PeerKey::new(policy_ns, &namespaces.cloned(), &pods.cloned());
        self.set(name, KeyType::Addr(f), false, def, Fill::Pods { family: f, key, rule, peer })
    }

    /// The interval set of an ipBlock's CIDR, and of its excepts (if any)
    /// in the same family. Excepts are aggregated: the kernel refuses
    /// overlapping intervals, and `except` may list nested prefixes.
    fn block_sets(&mut self, f: Family, cidr: &IpNet, except: &[IpNet]) -> (String, Option<String>) {
        let mut interval_set = |prefix: &str, nets: Vec<IpNet>| -> String {
            let def = nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            let name = self.names.hashed(prefix, &def);
            let elements = nets.into_iter().map(Element::Net).collect();
            self.set(name, KeyType::Addr(f), true, def, Fill::Nets(elements))
        };
        let block = interval_set(&format!("blk{}", fam_digit(f)), vec![*cidr]);
        let except: Vec<IpNet> = except.iter().filter(|e| Family::of_net(e) == f).copied().collect();
        let except = (!except.is_empty()).then(|| interval_set(&format!("exc{}", fam_digit(f)), IpNet::aggregate(&except)));
        (block, except)
    }

    /// `addr . proto . port` of every policy pod declaring `name`/`proto`
    /// (with `local`, of this node's pods: see [`Fill::NamedPort`]).
    fn named_port_set(&mut self, f: Family, name: &str, proto: Protocol, local: bool) -> String {
        let set_name = named_port_set_name(f, name, proto, local);
        let def = set_name.clone();
        self.set(set_name, KeyType::AddrProtoPort(f), false, def, Fill::NamedPort { family: f, proto, name: name.to_string(), local })
    }

    /// The local pods of a cluster policy's subject in family `f`, as a
    /// hash set named from the subject's definition.
    fn subject_set(&mut self, f: Family, subject: &Subject) -> String {
        let def = serde_json::json!({"subject": subject}).to_string();
        let name = self.names.hashed(&format!("subj{}", fam_digit(f)), &def);
        self.set(name, KeyType::Addr(f), false, def, Fill::Selected { family: f, key: subject_key(subject), local: true })
    }

    /// The matches of one cluster policy peer in family `f`; `None` when it
    /// can match nothing there (networks of the other family, domainNames).
    fn cluster_peer_match(&mut self, f: Family, field: AddrField, peer: &ClusterPeer) -> Option<Vec<Match>> {
        let def = serde_json::json!({"peer": peer}).to_string();
        let selected = |namespaces: &Selector, pods: Option<&Selector>| Fill::Selected {
            family: f,
            key: PeerKey::new("", &Some(namespaces.clone()), &pods.cloned()),
            local: false,
        };
        let (prefix, interval, fill) = match peer {
            ClusterPeer::Namespaces(n) => ("cpod", false, selected(n, None)),
            ClusterPeer::Pods { namespaces, pods } => ("cpod", false, selected(namespaces, Some(pods))),
            ClusterPeer::Nodes(sel) => ("cnode", false, Fill::Nodes { family: f, selector: sel.clone() }),
            ClusterPeer::Networks(nets) => {
                let nets: Vec<IpNet> = nets.iter().filter(|n| Family::of_net(n) == f).copied().collect();
                if nets.is_empty() {
                    return None;
                }
                ("cnet", true, Fill::Nets(IpNet::aggregate(&nets).into_iter().map(Element::Net).collect()))
            }
            ClusterPeer::DomainNames(_) => return None,
        };
        let name = self.names.hashed(&format!("{prefix}{}", fam_digit(f)), &def);
        let name = self.set(name, KeyType::Addr(f), interval, def, fill);
        Some(vec![addr_match(f, field, false, AddrMatch::Set(name))])
    }
}

/// `np4_tcp_http`, or `npl4_tcp_http` for the set of this node's pods only.
fn named_port_set_name(f: Family, name: &str, proto: Protocol, local: bool) -> String {
    format!("np{}{}_{}_{}", if local { "l" } else { "" }, fam_digit(f), proto.nft_name(), name)
}

/// Whether `pod` gives elements to a named-port set of `node`.
pub(crate) fn named_port_member(pod: &crate::model::Pod, local: bool, node: &str) -> bool {
    pod.is_policy_pod() && (!local || node_of(pod) == node)
}

/// The element a policy pod contributes to a named-port set, if any.
pub(crate) fn named_port_element(pod: &crate::model::Pod, f: Family, proto: Protocol, name: &str) -> Option<Element> {
    Some(Element::AddrProtoPort(pod.ip(f)?, proto, pod.named_port(name, proto)?))
}

impl Compiler<'_> {
    /// Add a chain and record what its counted rules measure.
    fn add_chain(&mut self, name: String, base: Option<BaseHook>, rules: Rules) {
        add_chain(&mut self.p, &mut self.origins, name, base, rules);
    }

    /// The base chains of `dir` (see [`BASES`]) and its dispatch maps.
    fn direction(&mut self, dir: Direction, local: &[PodId], node: Option<&crate::model::Node>) {
        // Cluster policies: the Admin tier before the NetworkPolicy
        // dispatch; the Baseline tier where the dispatch says "not isolated".
        let admin = self.tier_chain(Tier::Admin, dir);
        let not_isolated = match self.tier_chain(Tier::Baseline, dir) {
            Some(baseline) => Verdict::Jump(baseline),
            None => Verdict::Accept,
        };
        let mut maps: BTreeMap<Family, Map> =
            FAMILIES.into_iter().map(|f| (f, Map { name: map_name(dir, f), key: KeyType::Addr(f), elements: BTreeMap::new() })).collect();
        for &pod in local {
            let isolating: Vec<PolicyId> =
                self.ir.selecting[pod].iter().copied().filter(|&p| self.cluster.policies[p].isolates(dir)).collect();
            let verdict = if isolating.is_empty() { not_isolated.clone() } else { Verdict::Jump(self.group(dir, &isolating)) };
            for ip in &self.cluster.pods[pod].ips {
                if let Some(m) = maps.get_mut(&Family::of(ip)) {
                    m.elements.insert(Element::Addr(*ip), verdict.clone());
                }
            }
        }
        for m in maps.into_values() {
            self.p.add_map(m);
        }
        let rules = base_rules(dir, node, admin.as_deref());
        for b in BASES.iter().filter(|b| b.dir == dir) {
            self.add_chain(b.name.to_string(), Some(base_hook(b)), rules.clone());
        }
    }

    /// The group chain for pods isolated in `dir` by exactly `policies`.
    fn group(&mut self, dir: Direction, policies: &[PolicyId]) -> String {
        let keys: Vec<String> = policies.iter().map(|&p| self.cluster.policies[p].key()).collect();
        let name = group_name(dir, &keys);
        if self.p.chains.contains_key(&name) {
            return name;
        }
        let chains: Vec<Option<String>> = policies.iter().map(|&pol| self.policy_chain(dir, pol)).collect();
        self.add_chain(name.clone(), None, group_rules(dir, &keys, chains));
        name
    }

    /// The chain of cluster-policy `tier` for `dir` ([`tier_chain`]), its
    /// sets filled from the cluster.
    fn tier_chain(&mut self, tier: Tier, dir: Direction) -> Option<String> {
        let cluster = self.cluster;
        let chain = tier_chain(&mut self.names, tier, dir, &cluster.cluster_policies)?;
        for s in chain.sets {
            if !self.p.sets.contains_key(&s.name) {
                let elements = self.cluster_fill(&s.fill);
                self.p.add_set(Set::of(s.name, s.key, s.interval, elements));
            }
        }
        self.add_chain(chain.name.clone(), None, chain.rules);
        Some(chain.name)
    }

    /// The elements of a set whose fill reads the cluster directly (not
    /// the IR: [`Fill::Pods`] is filled by [`Compiler::policy_chain`]).
    fn cluster_fill(&self, fill: &Fill) -> BTreeSet<Element> {
        let cluster = self.cluster;
        match fill {
            Fill::Pods { .. } => BTreeSet::new(),
            Fill::Selected { family, key, local } => cluster
                .pods
                .iter()
                .filter(|p| selected_member(p, *local, self.node) && key.contains(cluster, p))
                .filter_map(|p| p.ip(*family))
                .map(Element::Addr)
                .collect(),
            Fill::Nodes { family, selector } => cluster.nodes.values().flat_map(|n| node_elements(n, *family, selector)).collect(),
            Fill::Nets(nets) => nets.clone(),
            Fill::NamedPort { family, proto, name, local } => self.named_port_elements(*family, *proto, name, *local),
        }
    }

    fn named_port_elements(&self, f: Family, proto: Protocol, name: &str, local: bool) -> BTreeSet<Element> {
        let members = self.cluster.pods.iter().filter(|p| named_port_member(p, local, self.node));
        members.filter_map(|p| named_port_element(p, f, proto, name)).collect()
    }

    /// The anti-spoofing chain (see the module doc, "Anti-spoofing").
    fn antispoof(&mut self) {
        let (rules, base) = antispoof();
        self.add_chain(ANTISPOOF.to_string(), Some(base), rules);
    }

    /// The rule chain of policy `pol` in `dir`, its sets filled from the
    /// IR; `None` when it has no rules (the policy only isolates).
    fn policy_chain(&mut self, dir: Direction, pol: PolicyId) -> Option<String> {
        let policy = &self.cluster.policies[pol];
        let name = policy_chain_name(dir, policy);
        if self.p.chains.contains_key(&name) {
            return Some(name);
        }
        let chain = policy_chain(&mut self.names, dir, policy)?;
        for s in chain.sets {
            if self.p.sets.contains_key(&s.name) {
                continue;
            }
            let elements = match &s.fill {
                Fill::Pods { family, rule, peer, .. } => {
                    let ids = self.ir.policies[pol].rules(dir).get(*rule).and_then(|r| r.peers.as_ref()?.get(*peer));
                    match ids {
                        Some(PeerIr::Pods(ids)) => ids.iter().filter_map(|&id| self.cluster.pods[id].ip(*family)).map(Element::Addr).collect(),
                        _ => BTreeSet::new(),
                    }
                }
                other => self.cluster_fill(other),
            };
            self.p.add_set(Set::of(s.name, s.key, s.interval, elements));
        }
        self.add_chain(chain.name.clone(), None, chain.rules);
        Some(chain.name)
    }
}

/// The anti-spoofing chain's rules and hook (see the module doc,
/// "Anti-spoofing"): the same on every node.
pub(crate) fn antispoof() -> (Rules, BaseHook) {
    let link: [IpNet; 2] = ["fe80::/10".parse().expect("a prefix"), "ff00::/8".parse().expect("a prefix")];
    let mut rules: Rules = link
        .into_iter()
        .map(|n| (nd_accept(vec![addr_match(Family::IPv6, AddrField::Daddr, false, AddrMatch::Nets([n].into()))]), None))
        .collect();
    rules.push((
        Rule::verdict(vec![Match::NoRouteBack], Verdict::Drop).counted("antispoof: source not routed back through its interface"),
        Some(Origin::Antispoof),
    ));
    (rules, BaseHook { hook: Hook::Prerouting, priority: ANTISPOOF_PRIORITY, policy: ChainPolicy::Accept })
}

/// IPv6 neighbour discovery on its own link is never policed (a pod that
/// cannot resolve its neighbours has no network at all); `also` keeps it to
/// the link: hop limit 255 where a forwarded copy would be judged, link-local
/// and multicast destinations before the reverse-path check. Untracked by
/// conntrack, it would otherwise cross isolation to any address.
fn nd_accept(also: Vec<Match>) -> Rule {
    let mut m = vec![Match::Icmpv6Type(Icmpv6Type::ND.into())];
    m.extend(also);
    Rule::verdict(m, Verdict::Accept)
}

/// A rule comment `key` + `rest`, the key shortened to fit nft's limit.
fn comment(key: &str, rest: &str) -> String {
    let room = MAX_COMMENT.saturating_sub(rest.len());
    if key.len() <= room {
        format!("{key}{rest}")
    } else {
        let mut cut = room.saturating_sub(3);
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...{rest}", &key[..cut])
    }
}

/// The first 12 hex digits of the SHA-256 of `s`: stable across versions
/// and platforms (unlike `std`'s hashers).
fn short_hash(s: &str) -> String {
    full_hash(s)[..12].to_string()
}

fn full_hash(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Names derived from content, with the (astronomically unlikely) collision
/// of two short hashes detected rather than merging two different sets.
#[derive(Default)]
pub(crate) struct Names {
    taken: BTreeMap<String, String>,
    /// Some name had to fall back to the full hash: which of the two
    /// definitions got the short name depends on the order they were met.
    pub collided: bool,
}

impl Names {
    fn hashed(&mut self, prefix: &str, definition: &str) -> String {
        let name = format!("{prefix}_{}", short_hash(definition));
        match self.taken.get(&name) {
            Some(d) if d != definition => {
                self.collided = true;
                format!("{prefix}_{}", full_hash(definition))
            }
            _ => {
                self.taken.insert(name.clone(), definition.to_string());
                name
            }
        }
    }
}

/// A readable chain name, shortened with a hash when too long.
fn chain_name(readable: &str) -> String {
    if readable.len() <= MAX_NAME && is_identifier(readable) {
        return readable.to_string();
    }
    let mut cut = MAX_NAME - 13;
    while !readable.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{}", &readable[..cut], short_hash(readable))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::load::ClusterBuilder;

    pub(crate) fn cluster(extra: &str) -> Cluster {
        let mut b = ClusterBuilder::new();
        b.add_path(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/clusters/standard.yaml"))).unwrap();
        if !extra.is_empty() {
            b.add_text("extra.yaml", extra).unwrap();
        }
        b.finish().0
    }

    fn np(ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    fn node1(extra: &str) -> Program {
        let c = cluster(extra);
        let p = compile(&c, &crate::ir::resolve(&c), "node-1");
        p.validate().unwrap_or_else(|e| panic!("{e}\n{p}"));
        p
    }

    /// The hairpin exemption at the top of every group chain of `dir`.
    fn hairpin(dir: &str) -> String {
        format!(
            "ip saddr . ip daddr @hairpin4 counter accept comment \"{dir}: hairpin, a pod reaching itself through a Service\"
ip6 saddr . ip6 daddr @hairpin6 counter accept comment \"{dir}: hairpin, a pod reaching itself through a Service\"
"
        )
    }

    fn chain_text(p: &Program, name: &str) -> String {
        p.chains[name].rules.iter().map(|r| format!("{r}\n")).collect()
    }

    #[test]
    fn no_policies_accepts_every_local_pod() {
        let p = node1("");
        let head = |dir: &str| format!("ct state established,related accept
ct state invalid counter drop comment \"{dir}: invalid, part of no connection\"
icmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} ip6 hoplimit 255 accept
");
        assert_eq!(
            chain_text(&p, "ingress"),
            format!(
                "{}fib saddr type local accept
ip daddr vmap @ingress4
ip6 daddr vmap @ingress6
ip daddr 10.244.1.0/24 counter drop comment \"ingress: fail closed, pod address not programmed\"
",
                head("ingress")
            )
        );
        let egress = format!(
            "{}ip saddr vmap @egress4
ip6 saddr vmap @egress6
ip saddr 10.244.1.0/24 fib saddr type != local counter drop comment \"egress: fail closed, pod address not programmed\"
",
            head("egress")
        );
        assert_eq!(chain_text(&p, "egress"), egress);
        assert_eq!(chain_text(&p, "egress_local"), egress, "both egress hooks judge alike");
        // x/a, x/c, y/a, y/c, z/a, z/c: the pods of node-1.
        assert_eq!(p.maps["ingress4"].elements.len(), 6);
        assert!(p.maps["ingress4"].elements.values().all(|v| *v == Verdict::Accept));
        assert_eq!(p.maps.len(), 4, "the egress maps are shared by both egress hooks");
        assert_eq!(p.chains.len(), 4, "three judging chains and antispoof");
        assert_eq!(
            chain_text(&p, ANTISPOOF),
            "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 daddr fe80::/10 accept
icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 daddr ff00::/8 accept
fib saddr . iif oif missing counter drop comment \"antispoof: source not routed back through its interface\"
"
        );
    }

    /// Where each direction is judged, and in which order on a shared hook.
    #[test]
    fn base_chains_hooks_and_priorities() {
        let p = node1("");
        let bases: Vec<String> = Hook::ALL
            .into_iter()
            .flat_map(|h| p.base_chains(h))
            .map(|c| format!("{} {}", c.name, c.base.expect("a base chain")))
            .collect();
        assert_eq!(
            bases,
            [
                "antispoof type filter hook prerouting priority raw - 10; policy accept;",
                "egress_local type filter hook input priority 110; policy accept;",
                "egress type filter hook postrouting priority srcnat - 10; policy accept;",
                "ingress type filter hook postrouting priority srcnat - 5; policy accept;",
            ]
        );
    }

    #[test]
    fn rules_peers_and_ports() {
        let p = node1(&np(
            "x",
            "web",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [
               {from: [{podSelector: {matchLabels: {pod: b}}}, {ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.0/28, 192.0.2.0/25]}}],
                ports: [{port: 80}, {port: 81, endPort: 90, protocol: UDP}, {port: serve-80-tcp}, {protocol: SCTP}]},
               {}]}",
        ));
        let grp = match &p.maps["ingress4"].elements[&Element::Addr("10.244.1.11".parse().unwrap())] {
            Verdict::Jump(g) => g.clone(),
            v => panic!("{v:?}"),
        };
        assert_eq!(
            chain_text(&p, &grp),
            format!(
                "{}jump ing_x_web
counter drop comment \"x/web ingress: isolated, no rule allowed\"
",
                hairpin("ingress")
            )
        );
        let pod4 = p.sets.keys().find(|k| k.starts_with("pod4_")).unwrap().clone();
        let pod6 = p.sets.keys().find(|k| k.starts_with("pod6_")).unwrap().clone();
        let blk = p.sets.keys().find(|k| k.starts_with("blk4_")).unwrap().clone();
        let exc = p.sets.keys().find(|k| k.starts_with("exc4_")).unwrap().clone();
        let want = "ip saddr @POD4 tcp dport 80 counter accept comment \"x/web ingress rule 0 peer 0 port 0\"
ip6 saddr @POD6 tcp dport 80 counter accept comment \"x/web ingress rule 0 peer 0 port 0\"
ip saddr @POD4 udp dport 81-90 counter accept comment \"x/web ingress rule 0 peer 0 port 1\"
ip6 saddr @POD6 udp dport 81-90 counter accept comment \"x/web ingress rule 0 peer 0 port 1\"
ip saddr @POD4 ip daddr . meta l4proto . th dport @npl4_tcp_serve-80-tcp counter accept comment \"x/web ingress rule 0 peer 0 port 2\"
ip6 saddr @POD6 ip6 daddr . meta l4proto . th dport @npl6_tcp_serve-80-tcp counter accept comment \"x/web ingress rule 0 peer 0 port 2\"
ip saddr @POD4 meta l4proto sctp counter accept comment \"x/web ingress rule 0 peer 0 port 3\"
ip6 saddr @POD6 meta l4proto sctp counter accept comment \"x/web ingress rule 0 peer 0 port 3\"
ip saddr @BLK ip saddr != @EXC tcp dport 80 counter accept comment \"x/web ingress rule 0 peer 1 port 0\"
ip saddr @BLK ip saddr != @EXC udp dport 81-90 counter accept comment \"x/web ingress rule 0 peer 1 port 1\"
ip saddr @BLK ip saddr != @EXC ip daddr . meta l4proto . th dport @npl4_tcp_serve-80-tcp counter accept comment \"x/web ingress rule 0 peer 1 port 2\"
ip saddr @BLK ip saddr != @EXC meta l4proto sctp counter accept comment \"x/web ingress rule 0 peer 1 port 3\"
counter accept comment \"x/web ingress rule 1\"
"
        .replace("POD4", &pod4)
        .replace("POD6", &pod6)
        .replace("BLK", &blk)
        .replace("EXC", &exc);
        assert_eq!(chain_text(&p, "ing_x_web"), want);
        let elems = |s: &str| p.sets[s].elements.iter().map(render_element).collect::<Vec<_>>().join(" ");
        assert_eq!(elems(&pod4), "10.244.2.11");
        assert_eq!(elems(&pod6), "");
        assert_eq!(elems(&exc), "192.0.2.0/25", "nested excepts aggregated");
        assert_eq!(elems("npl4_tcp_serve-80-tcp").matches(". tcp . 80").count(), 6, "the 6 pods of node-1 among the 9 declaring the name");
    }

    #[test]
    fn groups_follow_the_list_of_isolating_policies() {
        let p = node1(&format!(
            "{}{}{}",
            np("x", "deny", "{podSelector: {}}"),
            np("x", "allow-a", "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}"),
            np("y", "deny-out", "{podSelector: {}, policyTypes: [Egress]}"),
        ));
        let v = |m: &str, ip: &str| p.maps[m].elements[&Element::Addr(ip.parse().unwrap())].clone();
        let (xa, xc) = (v("ingress4", "10.244.1.11"), v("ingress4", "10.244.1.12"));
        assert_ne!(xa, xc, "x/a is isolated by both x policies, x/c by deny only");
        assert_eq!(v("ingress4", "10.244.1.21"), Verdict::Accept);
        assert_eq!(v("egress4", "10.244.1.11"), Verdict::Accept);
        let Verdict::Jump(ya) = v("egress4", "10.244.1.21") else { panic!() };
        assert_eq!(v("egress4", "10.244.1.22"), Verdict::Jump(ya.clone()), "same group, same chain");
        assert_eq!(chain_text(&p, &ya), format!("{}counter drop comment \"y/deny-out egress: isolated, no rule allowed\"\n", hairpin("egress")));
        let Verdict::Jump(xa) = xa else { panic!() };
        assert_eq!(
            chain_text(&p, &xa),
            format!("{}jump ing_x_allow-a\ncounter drop comment \"x/allow-a,x/deny ingress: isolated, no rule allowed\"\n", hairpin("ingress"))
        );
    }

    #[test]
    fn selector_sets_are_shared_and_named_by_definition() {
        let same = "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}";
        let p = node1(&format!("{}{}", np("x", "one", same), np("x", "two", same)));
        assert_eq!(p.sets.keys().filter(|k| k.starts_with("pod")).count(), 2, "one set per family: {:?}", p.sets.keys());
        // The same selector in another namespace means other pods.
        let p = node1(&format!("{}{}", np("x", "one", same), np("y", "two", same)));
        assert_eq!(p.sets.keys().filter(|k| k.starts_with("pod")).count(), 4);
    }

    #[test]
    fn long_names_and_comments_fit() {
        let long = "p".repeat(200);
        let p = node1(&np("x", &long, "{podSelector: {}, ingress: [{}]}"));
        let chain = p.chains.keys().find(|k| k.starts_with("ing_x_p")).unwrap();
        assert!(chain.len() <= MAX_NAME, "{chain}");
        let c = p.chains[chain].rules[0].comment.clone().unwrap();
        assert!(c.len() <= MAX_COMMENT && c.ends_with("... ingress rule 0"), "{c}");
    }

    #[test]
    fn comments_stay_within_limits() {
        assert_eq!(comment("x/web", " ingress rule 0"), "x/web ingress rule 0");
        let c = comment(&"n".repeat(300), " egress rule 1 peer 2 port 3");
        assert_eq!(c.len(), MAX_COMMENT);
    }

    /// Cluster policies of both tiers with every kind of peer and protocol.
    const CNPS: &str = "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {action: Pass, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: new}}}}], protocols: [{destinationNamedPort: serve-80-tcp}]}
  - {action: Deny, to: [{nodes: {}}, {networks: [192.0.2.0/24, 2001:db8::/64]}]}
  ingress:
  - {action: Accept, from: [{namespaces: {matchLabels: {ns: z}}}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 81}}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 1
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: new}}}}
  ingress:
  - {action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}
  - {action: Pass, from: [{namespaces: {}}]}
";

    /// The tiers are chains of their own, jumped to before the dispatch
    /// (Admin) and from it for pods no NetworkPolicy isolates (Baseline);
    /// Pass returns in the Admin tier and accepts in the Baseline tier.
    #[test]
    fn cluster_policy_tiers() {
        let p = node1(CNPS);
        let ingress = chain_text(&p, "ingress");
        assert!(ingress.contains("fib saddr type local accept\njump cnp_ing_admin\n"), "{ingress}");
        assert!(chain_text(&p, "egress_local").contains("jump cnp_egr_admin"));
        let admin = chain_text(&p, "cnp_egr_admin");
        assert!(admin.contains("return") && admin.contains("drop") && !admin.contains("accept"), "{admin}");
        let baseline = chain_text(&p, "cnp_ing_baseline");
        assert!(baseline.ends_with("accept\n") && baseline.contains("drop"), "{baseline}");
        // Not isolated by NetworkPolicies: on to the Baseline tier.
        assert!(p.maps["ingress4"].elements.values().all(|v| *v == Verdict::Jump("cnp_ing_baseline".into())));
        assert!(p.maps["egress4"].elements.values().all(|v| *v == Verdict::Accept));
        // No cluster policy: the program as before.
        assert!(!node1("").chains.keys().any(|c| c.starts_with("cnp_")));
    }

    /// Hairpin: every local pod's address paired with itself, per family,
    /// in sets declared on every node (empty without local pods), read by
    /// one rule per family at the top of every group chain, so that NPs
    /// never block a pod reaching itself through its Service; other nodes'
    /// pods, host-network pods and non-running pods give no pair.
    #[test]
    fn hairpin_pairs_and_rules() {
        let extra = format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: h, namespace: x}}\nspec: {{nodeName: node-1, hostNetwork: true}}\nstatus: {{podIP: 172.18.0.2}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: d6, namespace: x, labels: {{pod: d}}}}\nspec: {{nodeName: node-1}}\nstatus: {{podIP: 10.244.1.99, podIPs: [{{ip: 10.244.1.99}}, {{ip: 'fd00:1::99'}}]}}\n",
            np("x", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}")
        );
        let p = node1(&extra);
        let pairs = |f: &str| p.sets[f].elements.iter().map(render_element).collect::<Vec<_>>().join(" ");
        let local: BTreeSet<std::net::IpAddr> =
            cluster(&extra).pods.iter().filter(|q| q.is_policy_pod() && node_of(q) == "node-1").filter_map(|q| q.ip(Family::IPv4)).collect();
        assert_eq!(local.len(), 7, "x/a, x/c, y/a, y/c, z/a, z/c and x/d6");
        assert_eq!(pairs("hairpin4"), local.iter().map(|ip| format!("{ip} . {ip}")).collect::<Vec<_>>().join(" "));
        assert!(pairs("hairpin4").contains("10.244.1.99 . 10.244.1.99") && !pairs("hairpin4").contains("172.18.0.2"));
        assert_eq!(pairs("hairpin6"), "fd00:1::99 . fd00:1::99");
        assert_eq!(p.sets["hairpin4"].key, KeyType::AddrPair(Family::IPv4));
        let groups: Vec<&Chain> = p.chains.values().filter(|c| c.name.starts_with("grp_")).collect();
        assert_eq!(groups.len(), 2);
        for g in groups {
            let dir = if g.name.starts_with("grp_ing") { "ingress" } else { "egress" };
            assert!(chain_text(&p, &g.name).starts_with(&hairpin(dir)), "{}", chain_text(&p, &g.name));
        }
        // No other chain reads them: a pod not isolated is accepted anyway,
        // and the cluster-policy tiers judge hairpin traffic as any other.
        for c in p.chains.values().filter(|c| !c.name.starts_with("grp_")) {
            assert!(!c.rules.iter().flat_map(|r| &r.matches).any(|m| matches!(m, Match::AddrPair { .. })), "{}", c.name);
        }
        // A node without pods declares them empty.
        let c = cluster("");
        let empty = compile(&c, &crate::ir::resolve(&c), "node-9");
        assert!(empty.sets["hairpin4"].elements.is_empty() && empty.sets["hairpin6"].elements.is_empty());
        empty.validate().unwrap();
    }

    /// Pod churn changes elements only: the promise that keeps a sync in
    /// milliseconds at any scale.
    #[test]
    fn pod_churn_is_element_operations_only() {
        use crate::apply::{FakeKernel, Kernel};
        let policies = format!(
            "{}{}{CNPS}",
            np("x", "web", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: serve-80-tcp}]}]}"),
            np("y", "out", "{podSelector: {}, egress: [{to: [{namespaceSelector: {}}]}]}"),
        );
        let pod = |ns: &str, name: &str, label: &str, node: &str, ip: &str| {
            format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {label}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, ports: [{{name: serve-80-tcp, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {ip}}}\n")
        };
        let before = node1(&policies);
        let cases = [
            pod("x", "a2", "a", "node-1", "10.244.1.50"),  // local, selected by x/web
            pod("x", "b2", "b", "node-2", "10.244.2.50"),  // remote, a peer of x/web
            pod("y", "n", "new", "node-1", "10.244.1.51"), // local, isolated by y/out
            pod("z", "n", "new", "node-1", "10.244.1.52"), // local, not isolated
        ];
        for extra in cases {
            let after = node1(&format!("{policies}{extra}"));
            assert_eq!(after.rule_count(), before.rule_count());
            let tx = crate::nft::diff(Some(&before), &after);
            assert!(!tx.is_empty() && tx.only_elements(), "{extra}\n{tx}");
            let mut k = FakeKernel::with(before.clone());
            k.apply(&tx).unwrap();
            assert_eq!(k.table(TABLE), Some(&after));
            // And back: the pod is deleted.
            let back = crate::nft::diff(Some(&after), &before);
            assert!(back.only_elements(), "{back}");
        }
    }

    /// Stateful, with no shortcut: every judging chain lets conntrack
    /// answer first, and nothing else is accepted for its TCP flags, ICMP
    /// type or fragment offset, on any node, isolated pods or not.
    /// Every counted rule has an origin and no other rule has one; the
    /// origin agrees with the rule's verdict and its comment.
    #[test]
    fn origins_follow_counted_rules() {
        let c = cluster(&np("x", "web", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}, {from: [{ipBlock: {cidr: 192.0.2.0/24}}]}]}"));
        let (p, origins) = compile_with_origins(&c, &crate::ir::resolve(&c), "node-1");
        assert_eq!(p, compile(&c, &crate::ir::resolve(&c), "node-1"));
        assert_eq!(origins.keys().collect::<Vec<_>>(), p.chains.keys().collect::<Vec<_>>());
        let mut kinds = std::collections::HashSet::new();
        for (name, chain) in &p.chains {
            assert_eq!(origins[name].len(), chain.rules.len(), "{name}");
            for (rule, origin) in chain.rules.iter().zip(&origins[name]) {
                assert_eq!(rule.counter, origin.is_some(), "{name}: {rule:?}");
                let Some(o) = origin else { continue };
                let drops = rule.action == Action::Verdict(Verdict::Drop);
                assert_eq!(o.drops(), drops, "{name}: {rule:?}");
                if let Origin::Allow { policy, rule: ri, dir } = o {
                    let want = format!("{policy} {dir} rule {ri}");
                    assert!(rule.comment.as_deref().is_some_and(|c| c.starts_with(&want)), "{name}: {rule:?} {o:?}");
                }
                kinds.insert(std::mem::discriminant(o));
            }
        }
        assert_eq!(kinds.len(), 6, "allow, isolated, invalid, fail closed, antispoof and hairpin all appear");
    }

    #[test]
    fn conntrack_first_and_no_stateless_shortcut() {
        for program in [node1(""), node1(&np("x", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}")), node1(CNPS)] {
            for b in BASES {
                let rules = &program.chains[b.name].rules;
                assert_eq!(rules[0].matches, [Match::CtState([CtState::Established, CtState::Related].into())]);
                assert_eq!((&rules[1].matches, &rules[1].action), (&vec![Match::CtState([CtState::Invalid].into())], &Action::Verdict(Verdict::Drop)));
            }
            for chain in program.chains.values() {
                for r in &chain.rules {
                    let accepts = r.action == Action::Verdict(Verdict::Accept);
                    // The only ICMP anything accepts is neighbour discovery.
                    for m in &r.matches {
                        if let Match::Icmpv6Type(types) = m {
                            assert!(accepts && types.iter().all(|t| Icmpv6Type::ND.contains(t)), "{}: {r}", chain.name);
                        }
                    }
                }
            }
        }
    }
}
