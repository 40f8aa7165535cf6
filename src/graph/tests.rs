use super::*;

fn build(text: &str) -> (Cluster, AllowGraph) {
    let c = crate::model::load::load_str("t.yaml", text).unwrap();
    let ir = crate::ir::resolve(&c);
    let g = AllowGraph::build(&c, &ir);
    (c, g)
}

/// The table's rows, whitespace collapsed: `FROM TO PORTS FAMILIES EGRESS INGRESS`.
fn rows(c: &Cluster, g: &AllowGraph, filter: &render::Filter) -> Vec<String> {
    g.view(filter).render_table(c).lines().skip(2).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

fn check(text: &str, want: &[&str]) {
    let (c, g) = build(text);
    assert_eq!(rows(&c, &g, &render::Filter::default()), want, "{text}");
}

fn pod(ns: &str, name: &str, labels: &str, ips: &[&str]) -> String {
    let list: Vec<String> = ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
    let first = ips.first().copied().unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: \"{}\", podIPs: [{}]}}\n---\n",
        first,
        list.join(", ")
    )
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n")
}

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n---\n";

fn shop() -> String {
    NODE.to_string() + &pod("x", "web-h-aaaaa", "app: web, pod-template-hash: h", &["10.0.0.1"])
        + &pod("x", "web-h-bbbbb", "app: web, pod-template-hash: h", &["10.0.0.2"])
        + &pod("x", "db-0", "app: db, statefulset.kubernetes.io/pod-name: db-0", &["10.0.0.3"])
        + &pod("y", "c", "app: client", &["10.0.1.1"])
        + &policy(
            "x",
            "db-in",
            "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}, {from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}], ports: [{port: 5432}]}]}",
        )
        + &policy(
            "x",
            "web-out",
            "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432}]}, {ports: [{port: 53, protocol: UDP}]}]}",
        )
}

#[test]
fn edges_intersect_both_sides_and_name_their_rules() {
    check(
        &shop(),
        &[
            "*/open-egress x/web any IPv4 open open",
            "*/open-egress y/c any IPv4 open open",
            "192.168.0.0/16 except 192.168.1.0/24 x/db 5432/TCP IPv4 - x/db-in[1]",
            "outside x/web any IPv4 - open",
            "outside y/c any IPv4 - open",
            "x/db */open-ingress any IPv4 open open",
            "x/db outside any IPv4 open -",
            "x/web outside 53/UDP IPv4 x/web-out[1] -",
            // Egress allows 5432/TCP and 53/UDP toward db; db's ingress only 5432/TCP.
            "x/web x/db 5432/TCP IPv4 x/web-out[0] x/db-in[0]",
            // Between the two web pods, and to the client: only the peerless DNS rule.
            "x/web x/web 53/UDP IPv4 x/web-out[1] open",
            "x/web y/c 53/UDP IPv4 x/web-out[1] open",
            "y/c */open-ingress any IPv4 open open",
            "y/c outside any IPv4 open -",
        ],
    );
}

#[test]
fn identical_edges_of_a_whole_namespace_collapse() {
    let two = pod("z", "a", "", &["10.0.2.1"]) + &pod("z", "b", "", &["10.0.2.2"]);
    check(
        &two,
        &[
            "*/open-egress z/* any IPv4 open open",
            "outside z/* any IPv4 - open",
            "z/* */open-ingress any IPv4 open open",
            "z/* outside any IPv4 open -",
        ],
    );
    // Different families are different edges: nothing collapses.
    let mixed = pod("z", "a", "", &["10.0.2.1", "fd00::1"]) + &pod("z", "b", "", &["10.0.2.2"]);
    check(
        &mixed,
        &[
            "*/open-egress z/a any IPv4,IPv6 open open",
            "*/open-egress z/b any IPv4 open open",
            "outside z/a any IPv4,IPv6 - open",
            "outside z/b any IPv4 - open",
            "z/a */open-ingress any IPv4,IPv6 open open",
            "z/a outside any IPv4,IPv6 open -",
            "z/b */open-ingress any IPv4 open open",
            "z/b outside any IPv4 open -",
        ],
    );
}

#[test]
fn ip_blocks_match_pod_addresses_per_family() {
    // b admits 10.0.0.0/24, which holds a's and its own IPv4 addresses but not their IPv6 ones.
    let text = pod("x", "a", "", &["10.0.0.1", "fd00::1"])
        + &pod("x", "b", "app: b", &["10.0.0.2", "fd00::2"])
        + &policy("x", "p", "{podSelector: {matchLabels: {app: b}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24}}]}]}");
    check(
        &text,
        &[
            "*/open-egress x/a any IPv4,IPv6 open open",
            "10.0.0.0/24 x/b any IPv4 - x/p[0]",
            "outside x/a any IPv4,IPv6 - open",
            "x/* */open-ingress any IPv4,IPv6 open open",
            "x/* outside any IPv4,IPv6 open -",
            // Both pods (a, and another pod like b) reach b in IPv4 only.
            "x/* x/b any IPv4 open x/p[0]",
        ],
    );
}

#[test]
fn filters_narrow_by_namespace_pod_and_port() {
    let (c, g) = build(&shop());
    let ns = render::Filter { namespaces: vec!["y".into()], ..Default::default() };
    assert_eq!(
        rows(&c, &g, &ns),
        [
            "*/open-egress y/c any IPv4 open open",
            "outside y/c any IPv4 - open",
            "x/web y/c 53/UDP IPv4 x/web-out[1] open",
            "y/c */open-ingress any IPv4 open open",
            "y/c outside any IPv4 open -",
        ]
    );
    let db = render::Filter { pod: c.pod("x", "db-0"), ports: Some(PortSet::range(Protocol::Tcp, 5432, 5432)), ..Default::default() };
    assert_eq!(
        rows(&c, &g, &db),
        [
            "192.168.0.0/16 except 192.168.1.0/24 x/db 5432/TCP IPv4 - x/db-in[1]",
            "x/db */open-ingress 5432/TCP IPv4 open open",
            "x/db outside 5432/TCP IPv4 open -",
            "x/web x/db 5432/TCP IPv4 x/web-out[0] x/db-in[0]",
        ]
    );
    // A workload nothing reaches, and that reaches nothing, still shows as a node.
    let (c, g) = build(&(pod("x", "db-0", "", &["10.0.0.3"]) + &policy("x", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}")));
    let v = g.view(&render::Filter { pod: c.pod("x", "db-0"), ..Default::default() });
    assert!(v.edges.is_empty());
    assert_eq!(v.nodes.iter().map(|&i| g.graph[i].id.as_str()).collect::<Vec<_>>(), ["x/db-0"]);
}

#[test]
fn queries_list_sources_and_destinations() {
    let (c, g) = build(&shop());
    let ir = crate::ir::resolve(&c);
    let sides = sides::Sides::new(&c, &ir);
    let db = c.pod("x", "db-0").unwrap();
    let r = query::who_can_reach(&g, &c, &sides, db, None).unwrap();
    let text = render::render_reach(&r);
    let got: Vec<String> = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        got,
        [
            "who can reach x/db-0 (workload x/db):",
            "FROM PODS PORTS FAMILIES EGRESS INGRESS",
            "x/web 2 5432/TCP IPv4 x/web-out[0] x/db-in[0]",
            "192.168.0.0/16 except 192.168.1.0/24 - 5432/TCP IPv4 - x/db-in[1]",
            "node/n1 - any IPv4 - a node's own address may always reach the pods on that node",
            "3 entries: 2 pods, 2 address ranges or nodes",
        ]
    );
    let web = c.pod("x", "web-h-aaaaa").unwrap();
    let only = PortSet::range(Protocol::Udp, 53, 53);
    let r = query::reach_from(&g, &c, &sides, web, Some(&only)).unwrap();
    let ids: Vec<(&str, Option<usize>, String)> = r.entries.iter().map(|e| (e.id.as_str(), e.pods, e.ports.to_string())).collect();
    // The other web pod counts once (the queried one is not its own destination).
    assert_eq!(ids, [("x/web", Some(1), "53/UDP".to_string()), ("y/c", Some(1), "53/UDP".into()), ("outside", None, "53/UDP".into())]);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["entries"][0]["egress"], serde_json::json!({"open": false, "rules": [{"policy": "x/web-out", "rule": 1}]}));
    assert_eq!(json["only"], serde_json::json!([{"protocol": "UDP", "first": 53, "last": 53}]));
}

#[test]
fn same_input_same_graph() {
    let (c, g) = build(&shop());
    let (c2, g2) = build(&shop());
    let f = render::Filter::default();
    assert_eq!(g.view(&f).render_dot(&c), g2.view(&f).render_dot(&c2));
    assert_eq!(g.view(&f).to_json(&c), g2.view(&f).to_json(&c2));
}
