//! What kube-proxy's nftables mode installs on a node, from the model's
//! Services, so the dataplane harness can send real packets through real
//! Service translation next to netfence's own table.
//!
//! The shape follows kubernetes' `pkg/proxy/nftables/proxier.go` (tables
//! `ip kube-proxy` and `ip6 kube-proxy`, chain and map names, hashed chain
//! names, rules in knftables' `add` form): `nat-prerouting` and
//! `nat-output` (dstnat) jump to `services`, which dispatches through the
//! `service-ips` / `service-nodeports` verdict maps to per-Service-port
//! chains (`service-` cluster policy, `local-` local policy, `external-`
//! NodePort and load balancer traffic) and per-endpoint chains (hairpin
//! `ip saddr <endpoint> jump mark-for-masquerade`, then DNAT);
//! `nat-postrouting` (srcnat) masquerades what was marked; `filter-*`
//! reject or drop connections to Service ports without endpoints. Not
//! modelled: LoadBalancer source ranges (`firewall-*`), externalIPs and
//! session affinity, which the model does not read, and the drop of
//! unallocated ClusterIPs (the harness knows no Service CIDR).
//!
//! One deliberate difference: kube-proxy picks an endpoint at random per
//! connection (`numgen random mod N`). A probe must know which backend it
//! reaches, so every Service port is **pinned** ([`Pins`]): per install it
//! is rendered as if the Service had exactly one endpoint, the chosen one
//! (`numgen random mod 1`, which is what kube-proxy writes for one
//! endpoint), or none. Probes of different backends of one port are made
//! in different rounds, each with its own install.
//!
//! Pure: the text depends only on the cluster, the node and the pins.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::service::{Backend, Service, ServicePort};
use crate::model::{Cluster, Family, Node, Protocol};

/// The table's name, in both families.
pub const TABLE: &str = "kube-proxy";
/// kube-proxy's default `--masquerade-bit` 14.
const MASQ_MARK: &str = "0x4000";

/// One Service port in one family: what a pin is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PinKey {
    /// `ns/name`.
    pub service: String,
    /// The Service port (not the nodePort, not the target port).
    pub port: u16,
    pub protocol: Protocol,
    pub family: Family,
}

/// Which backend each Service port sends to in one install: `Some` the
/// only endpoint, `None` no endpoint at all. A port without a pin sends to
/// its first backend (lowest address), so installs are deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins(BTreeMap<PinKey, Option<Backend>>);

impl Pins {
    /// Pin `key` to `backend`; `false` (and no change) when it is already
    /// pinned elsewhere: that check needs another round.
    pub fn pin(&mut self, key: PinKey, backend: Option<Backend>) -> bool {
        match self.0.get(&key) {
            Some(old) => same_backend(old.as_ref(), backend.as_ref()),
            None => {
                self.0.insert(key, backend);
                true
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The endpoints `port` has in this install.
    fn endpoints(&self, cluster: &Cluster, svc: &Service, port: &ServicePort, family: Family) -> Vec<Backend> {
        let key = PinKey { service: svc.key(), port: port.port, protocol: port.protocol, family };
        match self.0.get(&key) {
            Some(pinned) => pinned.iter().cloned().collect(),
            None => svc.backends(cluster, port, family).into_iter().take(1).collect(),
        }
    }
}

fn same_backend(a: Option<&Backend>, b: Option<&Backend>) -> bool {
    a.map(|b| (b.ip, b.port)) == b.map(|b| (b.ip, b.port))
}

/// The script that replaces node `node`'s kube-proxy tables in one
/// transaction (`nft -f`): each table is created if missing, deleted, and
/// written again, so a reinstall between probe rounds never shows a
/// half-written table, nor keeps a chain of the last round.
pub fn replace_script(cluster: &Cluster, node: &str, pins: &Pins) -> String {
    let Some(n) = cluster.nodes.get(node) else { return String::new() };
    let mut out = String::new();
    for family in families(n) {
        let ip = ip_keyword(family);
        let _ = writeln!(out, "add table {ip} {TABLE}\ndelete table {ip} {TABLE}");
    }
    out + &ruleset(cluster, node, pins)
}

/// kube-proxy's tables for node `node`: one per family the node has an
/// InternalIP in (its NodePort address), in knftables' `add` form.
pub fn ruleset(cluster: &Cluster, node: &str, pins: &Pins) -> String {
    let Some(n) = cluster.nodes.get(node) else { return String::new() };
    families(n).map(|family| table(cluster, n, family, pins)).collect::<Vec<_>>().join("\n")
}

fn families(node: &Node) -> impl Iterator<Item = Family> + '_ {
    [Family::IPv4, Family::IPv6].into_iter().filter(|f| node.ip(*f).is_some())
}

fn ip_keyword(family: Family) -> &'static str {
    match family {
        Family::IPv4 => "ip",
        Family::IPv6 => "ip6",
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// kube-proxy's `hashAndTruncate`: the first 8 characters of the base32
/// SHA-256 of the name, a dash, the name (never longer than 240 here:
/// names are DNS labels).
fn hashed(name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    // 8 characters of 5 bits: the first 40 bits.
    let bits = digest.as_ref()[..5].iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    let prefix: String = (0..8).rev().map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char).collect();
    format!("{prefix}-{name}")
}

/// `ns/name/tcp/portname`, the base of a Service port's chain names.
fn port_base(svc: &Service, port: &ServicePort) -> String {
    format!("{}/{}/{}/{}", svc.namespace, svc.name, proto(port.protocol), port.name.as_deref().unwrap_or(""))
}

fn endpoint_chain(svc: &Service, port: &ServicePort, ep: &Backend) -> String {
    // Colons are not allowed in chain names: IPv6 addresses use dots.
    let ip = ep.ip.to_string().replace(':', ".");
    format!("endpoint-{}", hashed(&format!("{}__{ip}/{}", port_base(svc, port), ep.port)))
}

fn dnat_target(ep: &Backend) -> String {
    match ep.ip {
        IpAddr::V4(ip) => format!("{ip}:{}", ep.port),
        IpAddr::V6(ip) => format!("[{ip}]:{}", ep.port),
    }
}

/// A set of prefixes as nft writes a match operand: one as is, more in braces.
fn operand(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

/// `add` commands of one table, in order: objects before what refers to them.
struct Tx {
    prefix: String,
    objects: String,
    chains: Vec<String>,
    rules: String,
    elements: String,
}

impl Tx {
    fn chain(&mut self, name: &str, spec: &str) {
        if self.chains.iter().any(|c| c == name) {
            return;
        }
        self.chains.push(name.to_string());
        let _ = writeln!(self.objects, "add chain {} {name}{spec}", self.prefix);
    }
    fn rule(&mut self, chain: &str, rule: &str) {
        let _ = writeln!(self.rules, "add rule {} {chain} {rule}", self.prefix);
    }
    fn element(&mut self, map: &str, element: &str) {
        let _ = writeln!(self.elements, "add element {} {map} {{ {element} }}", self.prefix);
    }
}

fn table(cluster: &Cluster, node: &Node, family: Family, pins: &Pins) -> String {
    let ip = ip_keyword(family);
    let addr = match family {
        Family::IPv4 => "ipv4_addr",
        Family::IPv6 => "ipv6_addr",
    };
    let mut tx = Tx {
        prefix: format!("{ip} {TABLE}"),
        objects: String::new(),
        chains: Vec::new(),
        rules: String::new(),
        elements: String::new(),
    };
    let p = tx.prefix.clone();
    let _ = writeln!(tx.objects, "add table {p} {{ comment \"rules for kube-proxy\" ; }}");
    let _ = writeln!(tx.objects, "add set {p} cluster-ips {{ type {addr} ; comment \"Active ClusterIPs\" ; }}");
    let _ = writeln!(tx.objects, "add set {p} nodeport-ips {{ type {addr} ; comment \"IPs that accept NodePort traffic\" ; }}");
    let _ = writeln!(tx.objects, "add map {p} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}");
    let _ = writeln!(tx.objects, "add map {p} no-endpoint-services {{ type {addr} . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}");
    let _ = writeln!(tx.objects, "add map {p} service-ips {{ type {addr} . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}");
    let _ = writeln!(tx.objects, "add map {p} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}");
    for (name, spec) in [
        ("cluster-ips-check", ""),
        ("filter-forward", " { type filter hook forward priority 0 ; }"),
        ("filter-input", " { type filter hook input priority 0 ; }"),
        ("filter-output", " { type filter hook output priority 0 ; }"),
        ("mark-for-masquerade", ""),
        ("masquerading", ""),
        ("nat-output", " { type nat hook output priority -100 ; }"),
        ("nat-postrouting", " { type nat hook postrouting priority 100 ; }"),
        ("nat-prerouting", " { type nat hook prerouting priority -100 ; }"),
        ("nodeport-endpoints-check", ""),
        ("reject-chain", " { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }"),
        ("services", ""),
        ("service-endpoints-check", ""),
    ] {
        tx.chain(name, spec);
    }
    for (chain, rule) in [
        ("cluster-ips-check", format!("{ip} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"")),
        ("filter-forward", "ct state new jump service-endpoints-check".into()),
        ("filter-forward", "ct state new jump cluster-ips-check".into()),
        ("filter-input", "ct state new jump nodeport-endpoints-check".into()),
        ("filter-input", "ct state new jump service-endpoints-check".into()),
        ("filter-output", "ct state new jump service-endpoints-check".into()),
        ("filter-output", "ct state new jump cluster-ips-check".into()),
        ("mark-for-masquerade", format!("mark set mark or {MASQ_MARK}")),
        ("masquerading", format!("mark and {MASQ_MARK} == 0 return")),
        ("masquerading", format!("mark set mark xor {MASQ_MARK}")),
        ("masquerading", "masquerade fully-random".into()),
        ("nat-output", "jump services".into()),
        ("nat-postrouting", "jump masquerading".into()),
        ("nat-prerouting", "jump services".into()),
        ("nodeport-endpoints-check", format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")),
        ("reject-chain", "reject".into()),
        ("services", format!("{ip} daddr . meta l4proto . th dport vmap @service-ips")),
        ("services", format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")),
        ("service-endpoints-check", format!("{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services")),
    ] {
        tx.rule(chain, &rule);
    }
    if let Some(node_ip) = node.ip(family) {
        tx.element("nodeport-ips", &node_ip.to_string());
    }
    // kube-proxy's --detect-local-mode ClusterCIDR: the pod CIDRs.
    let cluster_cidrs: Vec<String> = cluster
        .nodes
        .values()
        .flat_map(|n| &n.pod_cidrs)
        .filter(|c| Family::of_net(c) == family)
        .map(|c| c.trunc().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for svc in &cluster.services {
        let Some(cluster_ip) = svc.cluster_ip(family) else { continue };
        for port in &svc.ports {
            service_port(&mut tx, cluster, node, family, pins, &cluster_cidrs, svc, cluster_ip, port);
        }
    }
    tx.objects + &tx.rules + &tx.elements
}

/// One Service port, as `syncProxyRules` writes it.
#[allow(clippy::too_many_arguments)]
fn service_port(
    tx: &mut Tx,
    cluster: &Cluster,
    node: &Node,
    family: Family,
    pins: &Pins,
    cluster_cidrs: &[String],
    svc: &Service,
    cluster_ip: IpAddr,
    port: &ServicePort,
) {
    let ip = ip_keyword(family);
    let base = port_base(svc, port);
    let cluster_chain = format!("service-{}", hashed(&base));
    let local_chain = format!("local-{}", hashed(&base));
    let external_chain = format!("external-{}", hashed(&base));
    let comment = format!("\"{}/{}:{}\"", svc.namespace, svc.name, port.name.as_deref().unwrap_or(""));
    let l4 = proto(port.protocol);

    let endpoints = pins.endpoints(cluster, svc, port, family);
    let local: Vec<Backend> = endpoints.iter().filter(|e| e.node.as_deref() == Some(node.name.as_str())).cloned().collect();
    let lb_ips: Vec<IpAddr> = svc.load_balancer_ips.iter().copied().filter(|a| Family::of(a) == family).collect();
    let externally = port.node_port.is_some() || !lb_ips.is_empty();
    let uses_cluster = !endpoints.is_empty() && (!svc.internal_local || externally);
    let uses_local = !local.is_empty() && (svc.internal_local || (svc.external_local && externally));
    let internal_chain = if svc.internal_local { &local_chain } else { &cluster_chain };
    let external_policy_chain = if svc.external_local { &local_chain } else { &cluster_chain };
    let has_endpoints = !endpoints.is_empty();
    let has_internal = if svc.internal_local { !local.is_empty() } else { has_endpoints };
    let has_external = if svc.external_local { !local.is_empty() } else { has_endpoints };
    let uses_external = has_endpoints && externally;
    let detect_local = (!cluster_cidrs.is_empty()).then(|| operand(cluster_cidrs));

    for (uses, chain, eps) in [(uses_cluster, &cluster_chain, &endpoints), (uses_local, &local_chain, &local)] {
        if !uses {
            continue;
        }
        tx.chain(chain, "");
        if chain == internal_chain {
            // Off-cluster traffic to the ClusterIP is masqueraded.
            if let Some(cidrs) = &detect_local {
                tx.rule(chain, &format!("{ip} daddr {cluster_ip} {ip} saddr != {cidrs} jump mark-for-masquerade"));
            }
        }
        let targets: Vec<String> = eps.iter().enumerate().map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(svc, port, ep))).collect();
        tx.rule(chain, &format!("numgen random mod {} vmap {{ {} }}", eps.len(), targets.join(" , ")));
    }
    if uses_external {
        tx.chain(&external_chain, "");
        if svc.external_local {
            if let Some(cidrs) = &detect_local {
                tx.rule(&external_chain, &format!("{ip} saddr {cidrs} goto {cluster_chain} comment \"short-circuit pod traffic\""));
            }
            tx.rule(&external_chain, "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"");
            tx.rule(&external_chain, &format!("fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""));
        } else {
            tx.rule(&external_chain, "jump mark-for-masquerade");
        }
        if has_external {
            tx.rule(&external_chain, &format!("goto {external_policy_chain}"));
        }
    }
    for ep in endpoints.iter().filter(|ep| uses_cluster || local.contains(ep)) {
        let chain = endpoint_chain(svc, port, ep);
        tx.chain(&chain, "");
        // Hairpin: a backend reaching itself is masqueraded, so its own
        // answer comes back through the node and is un-NATed.
        tx.rule(&chain, &format!("{ip} saddr {} jump mark-for-masquerade", ep.ip));
        tx.rule(&chain, &format!("meta l4proto {l4} dnat to {}", dnat_target(ep)));
    }

    tx.element("cluster-ips", &cluster_ip.to_string());
    if has_internal {
        tx.element("service-ips", &format!("{cluster_ip} . {l4} . {} : goto {internal_chain}", port.port));
    } else {
        let verdict = if has_endpoints { "drop" } else { "goto reject-chain" };
        tx.element("no-endpoint-services", &format!("{cluster_ip} . {l4} . {} comment {comment} : {verdict}", port.port));
    }
    if uses_external {
        for lb in &lb_ips {
            tx.element("service-ips", &format!("{lb} . {l4} . {} : goto {external_chain}", port.port));
        }
        if let Some(np) = port.node_port {
            tx.element("service-nodeports", &format!("{l4} . {np} : goto {external_chain}"));
        }
    }
    if externally && !has_external {
        let verdict = if has_endpoints { "drop" } else { "goto reject-chain" };
        if let Some(np) = port.node_port {
            tx.element("no-endpoint-nodeports", &format!("{l4} . {np} comment {comment} : {verdict}"));
        }
        for lb in &lb_ips {
            tx.element("no-endpoint-services", &format!("{lb} . {l4} . {} comment {comment} : {verdict}", port.port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "
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
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: n1}
status: {phase: Running, podIPs: [{ip: 10.0.1.5}, {ip: 'fd00:1::5'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec: {nodeName: n2}
status: {phase: Running, podIPs: [{ip: 10.0.2.5}]}
";

    fn cluster(services: &str) -> Cluster {
        crate::model::load::load_str("t.yaml", &format!("{CLUSTER}{services}")).unwrap()
    }

    fn service(name: &str, spec: &str) -> String {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n")
    }

    /// What the cluster's Services add to the fixed part: every line
    /// naming a chain of namespace x, and every element but the node's
    /// NodePort address.
    fn service_lines(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("-x/") || (l.starts_with("add element") && !l.contains("nodeport-ips")))
            .map(str::to_string)
            .collect()
    }

    /// The IPv4 table without what the Services add.
    fn fixed_part(text: &str) -> String {
        let lines: Vec<&str> = text
            .lines()
            .take_while(|l| !l.is_empty())
            .filter(|l| !l.contains("-x/") && (!l.starts_with("add element") || l.contains("nodeport-ips")))
            .collect();
        lines.join("\n")
    }

    #[test]
    fn chain_names_are_kube_proxys() {
        // From proxier_test.go's TestOverallNFTablesRules.
        assert_eq!(hashed("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(hashed("ns1/svc1/tcp/p80__10.180.0.1/80"), "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
    }

    #[test]
    fn a_cluster_ip_service_on_a_node() {
        let c = cluster(&service("web", "{clusterIPs: [10.96.0.10, 'fd00:96::10'], ipFamilies: [IPv4, IPv6], selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}"));
        let text = ruleset(&c, "n1", &Pins::default());
        // The fixed part, once per family.
        assert_eq!(
            fixed_part(&text),
            r#"add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add element ip kube-proxy nodeport-ips { 172.18.0.2 }
"#
            .trim_end()
        );
        // Unpinned: the first backend; pinned: the chosen one, per family.
        let svc_chain = format!("service-{}", hashed("x/web/tcp/http"));
        assert!(text.contains(&format!("add rule ip kube-proxy {svc_chain} ip daddr 10.96.0.10 ip saddr != {{ 10.0.1.0/24, 10.0.2.0/24 }} jump mark-for-masquerade\n")), "{text}");
        assert!(text.contains(&format!("goto endpoint-{} }}\n", hashed("x/web/tcp/http__10.0.1.5/8080"))), "{text}");
        let b = c.service("x", "web").unwrap().backends(&c, &c.services[0].ports[0], Family::IPv4)[1].clone();
        let mut pins = Pins::default();
        let key = PinKey { service: "x/web".into(), port: 80, protocol: Protocol::Tcp, family: Family::IPv4 };
        assert!(pins.pin(key.clone(), Some(b.clone())));
        assert!(pins.pin(key.clone(), Some(b)));
        assert!(!pins.pin(key, None), "a second backend of one port needs another round");
        let text = ruleset(&c, "n1", &pins);
        let lines = service_lines(&text);
        let ep = format!("endpoint-{}", hashed("x/web/tcp/http__10.0.2.5/8080"));
        let ep6 = format!("endpoint-{}", hashed("x/web/tcp/http__fd00.1..5/8080"));
        assert_eq!(
            lines,
            [
                format!("add chain ip kube-proxy {svc_chain}"),
                format!("add chain ip kube-proxy {ep}"),
                format!("add rule ip kube-proxy {svc_chain} ip daddr 10.96.0.10 ip saddr != {{ 10.0.1.0/24, 10.0.2.0/24 }} jump mark-for-masquerade"),
                format!("add rule ip kube-proxy {svc_chain} numgen random mod 1 vmap {{ 0 : goto {ep} }}"),
                format!("add rule ip kube-proxy {ep} ip saddr 10.0.2.5 jump mark-for-masquerade"),
                format!("add rule ip kube-proxy {ep} meta l4proto tcp dnat to 10.0.2.5:8080"),
                "add element ip kube-proxy cluster-ips { 10.96.0.10 }".to_string(),
                format!("add element ip kube-proxy service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc_chain} }}"),
                format!("add chain ip6 kube-proxy {svc_chain}"),
                format!("add chain ip6 kube-proxy {ep6}"),
                format!("add rule ip6 kube-proxy {svc_chain} ip6 daddr fd00:96::10 ip6 saddr != fd00:1::/64 jump mark-for-masquerade"),
                format!("add rule ip6 kube-proxy {svc_chain} numgen random mod 1 vmap {{ 0 : goto {ep6} }}"),
                format!("add rule ip6 kube-proxy {ep6} ip6 saddr fd00:1::5 jump mark-for-masquerade"),
                format!("add rule ip6 kube-proxy {ep6} meta l4proto tcp dnat to [fd00:1::5]:8080"),
                "add element ip6 kube-proxy cluster-ips { fd00:96::10 }".to_string(),
                format!("add element ip6 kube-proxy service-ips {{ fd00:96::10 . tcp . 80 : goto {svc_chain} }}"),
            ]
        );
        // n2 has no IPv6 InternalIP: one table.
        assert!(!ruleset(&c, "n2", &pins).contains("ip6"));
        assert_eq!(
            replace_script(&c, "n2", &pins).lines().take(3).collect::<Vec<_>>(),
            ["add table ip kube-proxy", "delete table ip kube-proxy", "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }"]
        );
    }

    #[test]
    fn node_ports_with_each_external_traffic_policy() {
        let spec = |policy: &str| {
            format!("{{type: NodePort, clusterIP: 10.96.0.11, selector: {{app: web}}, externalTrafficPolicy: {policy}, ports: [{{port: 80, nodePort: 30080}}]}}")
        };
        let check = |policy: &str, node: &str, pin: Option<usize>, expected: &[&str]| {
            let c = cluster(&service("np", &spec(policy)));
            let mut pins = Pins::default();
            if let Some(i) = pin {
                let b = c.services[0].backends(&c, &c.services[0].ports[0], Family::IPv4)[i].clone();
                pins.pin(PinKey { service: "x/np".into(), port: 80, protocol: Protocol::Tcp, family: Family::IPv4 }, Some(b));
            }
            let text = ruleset(&c, node, &pins);
            let lines: Vec<String> = service_lines(&text)
                .into_iter()
                .filter(|l| l.starts_with("add rule ip kube-proxy external") || l.contains("nodeport"))
                .map(|l| l.replace("add rule ip kube-proxy ", "").replace("add element ip kube-proxy ", ""))
                .collect();
            assert_eq!(lines, expected, "{policy} on {node} pinned to {pin:?}:\n{text}");
        };
        let ext = format!("external-{}", hashed("x/np/tcp/"));
        let svc = format!("service-{}", hashed("x/np/tcp/"));
        let local = format!("local-{}", hashed("x/np/tcp/"));
        // Cluster: masquerade, then any backend.
        check("Cluster", "n1", None, &[
            &format!("{ext} jump mark-for-masquerade"),
            &format!("{ext} goto {svc}"),
            &format!("service-nodeports {{ tcp . 30080 : goto {ext} }}"),
        ]);
        // Local: pods and the node itself short-circuit to the cluster
        // chain, the rest only to a backend on this node...
        let local_rules = [
            format!("{ext} ip saddr {{ 10.0.1.0/24, 10.0.2.0/24 }} goto {svc} comment \"short-circuit pod traffic\""),
            format!("{ext} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""),
            format!("{ext} fib saddr type local goto {svc} comment \"short-circuit local traffic\""),
        ];
        let mut expected: Vec<String> = local_rules.to_vec();
        expected.push(format!("{ext} goto {local}"));
        expected.push(format!("service-nodeports {{ tcp . 30080 : goto {ext} }}"));
        check("Local", "n1", Some(0), &expected.iter().map(String::as_str).collect::<Vec<_>>());
        // ...and a node without one drops it.
        let mut expected: Vec<String> = local_rules.to_vec();
        expected.push(format!("service-nodeports {{ tcp . 30080 : goto {ext} }}"));
        expected.push("no-endpoint-nodeports { tcp . 30080 comment \"x/np:\" : drop }".into());
        check("Local", "n2", Some(0), &expected.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn a_port_without_endpoints_is_rejected() {
        let c = cluster(&service("none", "{type: NodePort, clusterIP: 10.96.0.12, selector: {app: nothing}, ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053}]}"));
        let lines = service_lines(&ruleset(&c, "n2", &Pins::default()));
        assert_eq!(
            lines,
            [
                "add element ip kube-proxy cluster-ips { 10.96.0.12 }",
                "add element ip kube-proxy no-endpoint-services { 10.96.0.12 . udp . 53 comment \"x/none:dns\" : goto reject-chain }",
                "add element ip kube-proxy no-endpoint-nodeports { udp . 30053 comment \"x/none:dns\" : goto reject-chain }",
            ]
        );
        // A pin to no backend makes a Service with endpoints look the same.
        let c = cluster(&service("web", "{clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}"));
        let mut pins = Pins::default();
        pins.pin(PinKey { service: "x/web".into(), port: 80, protocol: Protocol::Tcp, family: Family::IPv4 }, None);
        assert_eq!(
            service_lines(&ruleset(&c, "n1", &pins)),
            [
                "add element ip kube-proxy cluster-ips { 10.96.0.10 }",
                "add element ip kube-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 comment \"x/web:\" : goto reject-chain }",
            ]
        );
    }

    #[test]
    fn internal_traffic_policy_local_uses_only_this_nodes_backends() {
        let c = cluster(&service("web", "{clusterIP: 10.96.0.10, selector: {app: web}, internalTrafficPolicy: Local, ports: [{port: 80}]}"));
        let n1 = service_lines(&ruleset(&c, "n1", &Pins::default()));
        let local = format!("add element ip kube-proxy service-ips {{ 10.96.0.10 . tcp . 80 : goto local-{} }}", hashed("x/web/tcp/"));
        assert!(n1.contains(&local), "{n1:#?}");
        // The first backend (10.0.1.5) runs on n1: n2 has none and drops.
        let n2 = service_lines(&ruleset(&c, "n2", &Pins::default()));
        assert_eq!(
            n2,
            [
                "add element ip kube-proxy cluster-ips { 10.96.0.10 }",
                "add element ip kube-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 comment \"x/web:\" : drop }",
            ]
        );
    }

    #[test]
    fn output_is_deterministic_and_headless_services_take_no_part() {
        let c = cluster(&(service("web", "{clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}") + &service("headless", "{clusterIP: None, selector: {app: web}, ports: [{port: 80}]}")));
        let a = ruleset(&c, "n1", &Pins::default());
        assert_eq!(a, ruleset(&c, "n1", &Pins::default()));
        assert!(!a.contains("headless"));
        assert_eq!(ruleset(&c, "n9", &Pins::default()), "");
    }
}
