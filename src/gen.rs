//! Scale fixtures: seeded, realistic clusters as Kubernetes YAML, for
//! benchmarks and for tests at sizes nobody writes by hand.
//!
//! Determinism is the point: the same [`Spec`] gives byte-identical output
//! on every machine and every future build, so fixtures can be checked in
//! and regenerated, and benchmark numbers compared across commits. That is
//! why the generator carries its own splitmix64 ([`Rng`]) instead of using
//! `rand`: `StdRng` is documented as not value-stable across rand releases,
//! and rand_chacha (which is) would be a dependency for ten lines of code.
//! The layout, the pods and the policies draw from independent streams, so
//! asking for more policies leaves the pods as they were, and vice versa.
//!
//! What "realistic" means here, and why each part is there:
//! - namespaces labelled `team`/`env`, plus kube-system (CoreDNS,
//!   host-network kube-proxy), monitoring (Prometheus) and ingress-nginx,
//!   because real policies select them;
//! - workloads of a few replicas, sized with a heavy tail across namespaces:
//!   Deployments (pods share a `pod-template-hash`, some mid-rollout with two
//!   hashes and versions), StatefulSets for data stores, finished Jobs (which
//!   take no part in policy), a few Pending pods without an address;
//! - labels `app`/`tier`/`team`/`version`, named container ports (`http`,
//!   `metrics`, `grpc`, `dns`, ...) whose numbers differ between workloads,
//!   so named ports really resolve per pod;
//! - every pod address inside its node's podCIDR (a /24 per node up to 253
//!   pods per node, larger blocks beyond, all inside 10.128.0.0/9);
//! - policies mixing default-deny ingress and egress, DNS egress to
//!   kube-system/kube-dns on 53 UDP and TCP, pod and namespace selectors,
//!   matchExpressions (In, NotIn, Exists), named ports, port ranges
//!   (`endPort`) and ipBlocks with `except`.
//!
//! Invariants: planning is pure; the only I/O is writing to the `Write` or
//! directory handed in. Pod addresses are unique; names are unique per
//! namespace; the output loads with [`crate::model::load_paths`].

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{json, Map, Value};

/// How big a cluster to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub pods: usize,
    pub nodes: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub seed: u64,
}

/// The named sizes benchmarks and fixtures use. Each step multiplies
/// everything by ten: 100 pods per node, 10 per namespace, one policy per
/// namespace on average (real clusters put them where the pods are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size {
    Small,
    Medium,
    Large,
    Xlarge,
}

impl Size {
    pub const ALL: [Size; 4] = [Size::Small, Size::Medium, Size::Large, Size::Xlarge];

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
            Size::Xlarge => "xlarge",
        }
    }

    pub fn parse(s: &str) -> Result<Size, String> {
        Size::ALL
            .into_iter()
            .find(|z| z.name() == s)
            .ok_or_else(|| format!("unknown size {s:?} (expected small, medium, large or xlarge)"))
    }

    pub fn spec(self, seed: u64) -> Spec {
        let (pods, nodes, namespaces, policies) = match self {
            Size::Small => (1_000, 10, 100, 100),
            Size::Medium => (10_000, 100, 1_000, 1_000),
            Size::Large => (100_000, 1_000, 10_000, 10_000),
            Size::Xlarge => (1_000_000, 10_000, 100_000, 100_000),
        };
        Spec { pods, nodes, namespaces, policies, seed }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A spec that cannot be generated, naming the flag at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct SpecError {
    pub flag: &'static str,
    pub message: String,
}

impl Spec {
    /// Reject what cannot be generated; otherwise the prefix length of
    /// each node's podCIDR.
    pub fn check(&self) -> Result<u8, SpecError> {
        let bad = |flag, message: String| Err(SpecError { flag, message });
        if self.namespaces < PLATFORM_NAMESPACES + 1 {
            return bad("namespaces", format!("{} is too few: the cluster needs kube-system, monitoring, ingress-nginx and at least one application namespace", self.namespaces));
        }
        if self.nodes == 0 {
            return bad("nodes", "a cluster needs at least one node".into());
        }
        if self.pods < 10 {
            return bad("pods", format!("{} is too few: the platform alone runs 5 pods; ask for at least 10", self.pods));
        }
        // The smallest block, and at least the customary /24, that holds the
        // average load besides network, bridge and broadcast addresses:
        // /24 up to 253 pods per node. Placement is random, but a full node
        // passes pods on to the next, so the total capacity is what counts.
        let per_node = self.pods.div_ceil(self.nodes);
        let host_bits: u32 = (usize::BITS - (per_node + 3 - 1).leading_zeros()).max(8);
        if host_bits > 16 {
            return bad("pods", format!("{} pods on {} nodes is {per_node} per node; at most 65,533 fit a node's /16: add nodes", self.pods, self.nodes));
        }
        if (self.nodes as u128) << host_bits > 1u128 << POD_POOL_BITS {
            return bad("nodes", format!("{} nodes with a /{} each do not fit in the pod pool 10.128.0.0/9", self.nodes, 32 - host_bits));
        }
        Ok((32 - host_bits) as u8)
    }

    /// The command that regenerates this spec; written at the top of every file.
    pub fn command(&self) -> String {
        format!(
            "netfence gen --pods {} --nodes {} --namespaces {} --policies {} --seed {}",
            self.pods, self.nodes, self.namespaces, self.policies, self.seed
        )
    }
}

/// splitmix64 (Steele, Lea and Flood, 2014): tiny, fast, and defined by its
/// algorithm, so its output can never change under us.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Stream `stream` of `seed`: independent sequences from one seed.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40
    /// for the sizes used here). `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// `n` characters of Kubernetes' safe alphabet (no vowels, no 0/1/3),
    /// as in pod-template-hash and generated name suffixes.
    fn token(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..n).map(|_| ALPHABET[self.below(ALPHABET.len())] as char).collect()
    }
}

// Independent random streams; see the module comment.
const STREAM_LAYOUT: u64 = 1;
const STREAM_PODS: u64 = 2;
const STREAM_POLICIES: u64 = 3;

const TEAMS: &[&str] = &[
    "payments", "search", "identity", "growth", "ads", "billing", "catalog", "checkout", "data", "ml",
    "messaging", "media", "maps", "mobile", "web", "security", "support", "analytics", "logistics", "risk",
];
const PRODUCTS: &[&str] = &[
    "orders", "cart", "ledger", "feeds", "profiles", "inventory", "invoices", "chat", "images", "routes",
    "reviews", "pricing", "shipping", "notify", "reports", "loyalty", "fraud", "auth", "wallet", "recs",
    "audit", "events", "sessions", "tax",
];
/// Environments and their weights in percent.
const ENVS: &[(&str, usize)] = &[("prod", 40), ("staging", 30), ("dev", 30)];
const PRIVATE_RANGES: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
/// Where node addresses live (`ipBlock`s that mean "the nodes" use it).
const NODE_NETWORK: &str = "172.16.0.0/16";
/// The pool podCIDRs are carved from: 10.128.0.0/9.
const POD_POOL: u32 = 0x0A80_0000;
const POD_POOL_BITS: u32 = 23;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Frontend,
    Backend,
    Data,
    Batch,
    /// Platform components: their labels are their own (`k8s-app`, ...).
    System,
}

impl Tier {
    fn label(self) -> &'static str {
        match self {
            Tier::Frontend => "frontend",
            Tier::Backend => "backend",
            Tier::Data => "data",
            Tier::Batch => "batch",
            Tier::System => "system",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    StatefulSet,
    Job,
    DaemonSet,
}

#[derive(Debug, Clone, Copy)]
struct Port {
    name: &'static str,
    number: u16,
    protocol: &'static str,
}

const fn tcp(name: &'static str, number: u16) -> Port {
    Port { name, number, protocol: "TCP" }
}

/// A kind of workload: what it is called, how it runs, what it listens on.
#[derive(Debug)]
struct Archetype {
    name: &'static str,
    tier: Tier,
    kind: Kind,
    image: &'static str,
    ports: &'static [Port],
    /// Fixed labels for platform components; application workloads get
    /// app/tier/team/version instead.
    labels: &'static [(&'static str, &'static str)],
}

const fn app(name: &'static str, tier: Tier, kind: Kind, image: &'static str, ports: &'static [Port]) -> Archetype {
    Archetype { name, tier, kind, image, ports, labels: &[] }
}

const FRONTENDS: &[Archetype] = &[
    app("web", Tier::Frontend, Kind::Deployment, "nginx:1.27", &[tcp("http", 8080), tcp("metrics", 9113)]),
    app("ui", Tier::Frontend, Kind::Deployment, "node:22-alpine", &[tcp("http", 3000), tcp("metrics", 9090)]),
    app("gateway", Tier::Frontend, Kind::Deployment, "envoyproxy/envoy:v1.31", &[tcp("http", 8080), tcp("https", 8443), tcp("metrics", 9901)]),
    app("bff", Tier::Frontend, Kind::Deployment, "node:22-alpine", &[tcp("http", 80), tcp("metrics", 9090)]),
];
const BACKENDS: &[Archetype] = &[
    app("api", Tier::Backend, Kind::Deployment, "eclipse-temurin:21", &[tcp("http", 8080), tcp("grpc", 50051), tcp("metrics", 9090)]),
    app("svc", Tier::Backend, Kind::Deployment, "golang:1.23", &[tcp("grpc", 9000), tcp("http", 8081), tcp("metrics", 9090)]),
    app("worker", Tier::Backend, Kind::Deployment, "python:3.12", &[tcp("metrics", 8000)]),
    app("consumer", Tier::Backend, Kind::Deployment, "golang:1.23", &[tcp("http", 8080), tcp("metrics", 9090)]),
];
const DATA: &[Archetype] = &[
    app("postgres", Tier::Data, Kind::StatefulSet, "postgres:16", &[tcp("postgres", 5432), tcp("metrics", 9187)]),
    app("redis", Tier::Data, Kind::StatefulSet, "redis:7.4", &[tcp("redis", 6379), tcp("metrics", 9121)]),
    app("kafka", Tier::Data, Kind::StatefulSet, "apache/kafka:3.8", &[tcp("kafka", 9092), tcp("kafka-internal", 9093), tcp("kafka-ctrl", 9094), tcp("metrics", 9308)]),
    app("elasticsearch", Tier::Data, Kind::StatefulSet, "elasticsearch:8.15", &[tcp("http", 9200), tcp("transport", 9300)]),
    app("mongodb", Tier::Data, Kind::StatefulSet, "mongo:8.0", &[tcp("mongodb", 27017)]),
];
const BATCH: &[Archetype] = &[
    app("report", Tier::Batch, Kind::Job, "python:3.12", &[]),
    app("migrate", Tier::Batch, Kind::Job, "flyway/flyway:10", &[]),
    app("backup", Tier::Batch, Kind::Job, "restic/restic:0.17", &[]),
];

const fn system(
    name: &'static str,
    kind: Kind,
    image: &'static str,
    ports: &'static [Port],
    labels: &'static [(&'static str, &'static str)],
) -> Archetype {
    Archetype { name, tier: Tier::System, kind, image, ports, labels }
}

const COREDNS: Archetype = system(
    "coredns",
    Kind::Deployment,
    "registry.k8s.io/coredns/coredns:v1.11.3",
    &[Port { name: "dns", number: 53, protocol: "UDP" }, tcp("dns-tcp", 53), tcp("metrics", 9153)],
    &[("k8s-app", "kube-dns")],
);
const KUBE_PROXY: Archetype =
    system("kube-proxy", Kind::DaemonSet, "registry.k8s.io/kube-proxy:v1.33.0", &[], &[("k8s-app", "kube-proxy")]);
const PROMETHEUS: Archetype = system(
    "prometheus",
    Kind::StatefulSet,
    "quay.io/prometheus/prometheus:v2.54.1",
    &[tcp("web", 9090)],
    &[("app", "prometheus"), ("app.kubernetes.io/name", "prometheus")],
);
const INGRESS_NGINX: Archetype = system(
    "ingress-nginx-controller",
    Kind::Deployment,
    "registry.k8s.io/ingress-nginx/controller:v1.11.2",
    &[tcp("http", 80), tcp("https", 443), tcp("metrics", 10254)],
    &[("app.kubernetes.io/name", "ingress-nginx"), ("app.kubernetes.io/component", "controller")],
);

/// Platform namespaces, always the first three.
const KUBE_SYSTEM: usize = 0;
const MONITORING: usize = 1;
const INGRESS: usize = 2;
const PLATFORM_NAMESPACES: usize = 3;

#[derive(Debug)]
struct NsPlan {
    name: String,
    team: &'static str,
    env: &'static str,
    labels: Vec<(&'static str, &'static str)>,
    /// Relative share of the application pods (heavy-tailed).
    weight: usize,
    workloads: Vec<usize>,
    pods: usize,
}

#[derive(Debug)]
struct NodePlan {
    name: String,
    ip: Ipv4Addr,
    cidr_base: u32,
    zone: &'static str,
}

#[derive(Debug)]
struct Workload {
    ns: usize,
    name: String,
    arch: &'static Archetype,
    replicas: usize,
    version: usize,
    /// pod-template-hash, controller-revision-hash, or a Job's schedule id.
    hash: String,
    /// A Deployment mid-rollout: replicas from `.0` on run the new template
    /// (hash `.1`, the next version).
    rollout: Option<(usize, String)>,
}

/// The layout of a generated cluster: everything but the pods' own
/// details and the policies, which are streamed from it.
#[derive(Debug)]
pub struct Plan {
    pub spec: Spec,
    /// Prefix length of each node's podCIDR.
    pub node_prefix: u8,
    /// Chunk sizes of directory output; see [`PODS_PER_FILE`].
    pub pods_per_file: usize,
    pub policies_per_file: usize,
    namespaces: Vec<NsPlan>,
    nodes: Vec<NodePlan>,
    workloads: Vec<Workload>,
}

impl Plan {
    pub fn new(spec: Spec) -> Result<Plan, SpecError> {
        let host_bits = 32 - u32::from(spec.check()?);
        let mut rng = Rng::new(spec.seed, STREAM_LAYOUT);
        let namespaces = plan_namespaces(&spec, &mut rng);
        let width = (spec.nodes - 1).max(1).ilog10() as usize + 1;
        let nodes = (0..spec.nodes)
            .map(|i| NodePlan {
                name: format!("node-{i:0width$}"),
                ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 10)) + i as u32),
                cidr_base: POD_POOL + ((i as u32) << host_bits),
                zone: ["zone-a", "zone-b", "zone-c"][i % 3],
            })
            .collect();
        let mut plan = Plan {
            spec,
            node_prefix: (32 - host_bits) as u8,
            pods_per_file: PODS_PER_FILE,
            policies_per_file: POLICIES_PER_FILE,
            namespaces,
            nodes,
            workloads: Vec::new(),
        };
        plan.plan_workloads(&mut rng);
        Ok(plan)
    }

    fn plan_workloads(&mut self, rng: &mut Rng) {
        let mut budget = self.spec.pods;
        let mut names: HashSet<(usize, String)> = HashSet::new();
        let mut add = |plan: &mut Plan, rng: &mut Rng, ns: usize, arch: &'static Archetype, base: String, replicas: usize| {
            let mut name = base.clone();
            let mut n = 2;
            while !names.insert((ns, name.clone())) {
                name = format!("{base}-{n}");
                n += 1;
            }
            let hash = match arch.kind {
                Kind::Job => (28_000_000 + rng.below(1_000_000)).to_string(),
                _ => rng.token(10),
            };
            let rollout = (arch.kind == Kind::Deployment && replicas >= 2 && rng.percent(8))
                .then(|| (replicas / 2, rng.token(10)));
            let id = plan.workloads.len();
            plan.workloads.push(Workload { ns, name, arch, replicas, version: 1 + rng.below(3), hash, rollout });
            plan.namespaces[ns].workloads.push(id);
            plan.namespaces[ns].pods += replicas;
        };
        // The platform: kube-proxy on every node only when the cluster has
        // room for it (small custom clusters skip it).
        add(self, rng, KUBE_SYSTEM, &COREDNS, COREDNS.name.into(), 2);
        add(self, rng, MONITORING, &PROMETHEUS, "prometheus-k8s".into(), 1);
        add(self, rng, INGRESS, &INGRESS_NGINX, INGRESS_NGINX.name.into(), 2);
        budget -= 5;
        if budget >= 20 * self.spec.nodes {
            add(self, rng, KUBE_SYSTEM, &KUBE_PROXY, KUBE_PROXY.name.into(), self.spec.nodes);
            budget -= self.spec.nodes;
        }
        // Every application namespace gets one workload while pods last,
        // then the rest go by weight, so big namespaces get big.
        let apps: Vec<usize> = (PLATFORM_NAMESPACES..self.namespaces.len()).collect();
        let cumulative = cumulative(apps.iter().map(|&i| self.namespaces[i].weight));
        let mut first = apps.iter();
        while budget > 0 {
            let ns = match first.next() {
                Some(&ns) => ns,
                None => apps[pick_weighted(rng, &cumulative)],
            };
            let (arch, replicas) = match rng.below(100) {
                0..20 => (&FRONTENDS[rng.below(FRONTENDS.len())], rng.pick(&[1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 8, 12])),
                20..70 => (&BACKENDS[rng.below(BACKENDS.len())], rng.pick(&[1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 8, 12])),
                70..90 => (&DATA[rng.below(DATA.len())], rng.pick(&[1, 3, 3, 5])),
                _ => (&BATCH[rng.below(BATCH.len())], rng.pick(&[1, 1, 1, 2])),
            };
            let name = if arch.tier == Tier::Data && rng.percent(50) {
                arch.name.to_string()
            } else {
                format!("{}-{}", rng.pick(PRODUCTS), arch.name)
            };
            let replicas = replicas.min(budget);
            add(self, rng, ns, arch, name, replicas);
            budget -= replicas;
        }
    }

    /// Visit every pod as a manifest, in a fixed order.
    fn pods(&self, mut visit: impl FnMut(Value) -> io::Result<()>) -> io::Result<()> {
        let mut rng = Rng::new(self.spec.seed, STREAM_PODS);
        let capacity = (1usize << (32 - self.node_prefix)) - 3;
        // Next free host number per node: .0 is the network, .1 the bridge.
        let mut used = vec![0usize; self.nodes.len()];
        for w in &self.workloads {
            let ns = &self.namespaces[w.ns];
            for r in 0..w.replicas {
                let new = w.rollout.as_ref().filter(|(from, _)| r >= *from);
                let (hash, version) = match new {
                    Some((_, h)) => (h.as_str(), w.version + 1),
                    None => (w.hash.as_str(), w.version),
                };
                let (name, mut labels) = match w.arch.kind {
                    Kind::Deployment => (format!("{}-{hash}-{}", w.name, rng.token(5)), vec![("pod-template-hash", hash.to_string())]),
                    Kind::StatefulSet => {
                        let name = format!("{}-{r}", w.name);
                        let labels = vec![
                            ("controller-revision-hash", format!("{}-{hash}", w.name)),
                            ("statefulset.kubernetes.io/pod-name", name.clone()),
                            ("apps.kubernetes.io/pod-index", r.to_string()),
                        ];
                        (name, labels)
                    }
                    Kind::Job => {
                        let job = format!("{}-{hash}", w.name);
                        (format!("{job}-{}", rng.token(5)), vec![("job-name", job.clone()), ("batch.kubernetes.io/job-name", job)])
                    }
                    Kind::DaemonSet => (
                        format!("{}-{}", w.name, rng.token(5)),
                        vec![("controller-revision-hash", hash.to_string()), ("pod-template-generation", "1".to_string())],
                    ),
                };
                if w.arch.labels.is_empty() {
                    labels.push(("app", w.name.clone()));
                    labels.push(("tier", w.arch.tier.label().to_string()));
                    labels.push(("team", ns.team.to_string()));
                    labels.push(("version", format!("v{version}")));
                } else {
                    labels.extend(w.arch.labels.iter().map(|&(k, v)| (k, v.to_string())));
                }
                let phase = match w.arch.kind {
                    Kind::Job if rng.percent(10) => "Failed",
                    Kind::Job => "Succeeded",
                    Kind::Deployment if w.arch.tier != Tier::System && rng.percent(1) => "Pending",
                    _ => "Running",
                };
                let host_network = w.arch.kind == Kind::DaemonSet;
                // Pending pods may not even be scheduled; they have no address.
                let node = match (host_network, phase) {
                    (true, _) => Some(r),
                    (false, "Pending") => rng.percent(50).then(|| rng.below(self.nodes.len())),
                    (false, _) => {
                        let mut n = rng.below(self.nodes.len());
                        while used[n] >= capacity {
                            n = (n + 1) % self.nodes.len();
                        }
                        Some(n)
                    }
                };
                let ip = match (node, host_network, phase) {
                    (Some(n), true, _) => Some(self.nodes[n].ip),
                    (Some(n), false, "Running" | "Succeeded" | "Failed") => {
                        used[n] += 1;
                        Some(Ipv4Addr::from(self.nodes[n].cidr_base + 1 + used[n] as u32))
                    }
                    _ => None,
                };
                let ports: Vec<Value> = w
                    .arch
                    .ports
                    .iter()
                    .map(|p| json!({"name": p.name, "containerPort": p.number, "protocol": p.protocol}))
                    .collect();
                let mut container = json!({"name": w.arch.name, "image": w.arch.image});
                if !ports.is_empty() {
                    container["ports"] = Value::Array(ports);
                }
                let mut spec = json!({"containers": [container]});
                if let Some(n) = node {
                    spec["nodeName"] = json!(self.nodes[n].name);
                }
                if host_network {
                    spec["hostNetwork"] = json!(true);
                }
                let mut status = json!({"phase": phase});
                if let Some(ip) = ip {
                    status["podIP"] = json!(ip.to_string());
                    status["podIPs"] = json!([{"ip": ip.to_string()}]);
                }
                let labels: Map<String, Value> = labels.into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect();
                visit(json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns.name, "labels": labels},
                    "spec": spec,
                    "status": status,
                }))?;
            }
        }
        Ok(())
    }

    /// Visit every policy as a manifest. Policies go to namespaces in
    /// proportion to their pods; within a namespace they come in the order
    /// teams write them: default deny, DNS, monitoring, ingress, then
    /// allow-rules per workload.
    fn policies(&self, mut visit: impl FnMut(Value) -> io::Result<()>) -> io::Result<()> {
        let mut rng = Rng::new(self.spec.seed, STREAM_POLICIES);
        let apps: Vec<usize> = (PLATFORM_NAMESPACES..self.namespaces.len()).filter(|&i| self.namespaces[i].pods > 0).collect();
        let cumulative = cumulative(apps.iter().map(|&i| self.namespaces[i].pods));
        let mut count = vec![0usize; self.namespaces.len()];
        for _ in 0..self.spec.policies {
            let ns_id = apps[pick_weighted(&mut rng, &cumulative)];
            let k = count[ns_id];
            count[ns_id] += 1;
            let ns = &self.namespaces[ns_id];
            // Namespace-wide policies on even slots up to 8, interleaved
            // with per-workload ones, so even a namespace with two policies
            // shows both kinds.
            let (name, spec) = match k {
                0 | 2 | 4 | 6 | 8 => namespace_policy(k / 2),
                _ => {
                    let j = if k < 9 { k / 2 } else { k - 5 };
                    let n = ns.workloads.len();
                    let wid = ns.workloads[j % n];
                    workload_policy(ns, &self.workloads[wid], wid + j / n, j / n, &mut rng)
                }
            };
            visit(json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns.name},
                "spec": spec,
            }))?;
        }
        Ok(())
    }
}

/// The `i`-th namespace-wide policy, in the order teams usually add them.
fn namespace_policy(i: usize) -> (String, Value) {
    let (name, spec) = match i {
        0 => ("default-deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
        1 => ("allow-dns", json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }],
        })),
        2 => ("default-deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]})),
        3 => ("allow-prometheus-scrape", json!({
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend", "backend", "data"]}]},
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                    "podSelector": {"matchLabels": {"app": "prometheus"}},
                }],
                "ports": [{"port": "metrics"}],
            }],
        })),
        _ => ("allow-ingress-controller", json!({
            "podSelector": {"matchLabels": {"tier": "frontend"}},
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
                }],
                "ports": [{"port": "http"}, {"port": "https"}],
            }],
        })),
    };
    (name.to_string(), spec)
}

fn plan_namespaces(spec: &Spec, rng: &mut Rng) -> Vec<NsPlan> {
    let platform = |name: &str, team: &'static str| NsPlan {
        name: name.to_string(),
        team,
        env: "prod",
        labels: if team.is_empty() { vec![] } else { vec![("team", team), ("env", "prod")] },
        weight: 0,
        workloads: Vec::new(),
        pods: 0,
    };
    let mut out = vec![platform("kube-system", ""), platform("monitoring", "platform"), platform("ingress-nginx", "platform")];
    let mut taken: HashSet<String> = out.iter().map(|n| n.name.clone()).collect();
    while out.len() < spec.namespaces {
        let team = rng.pick(TEAMS);
        let product = rng.pick(PRODUCTS);
        let env = ENVS[pick_weighted(rng, &cumulative(ENVS.iter().map(|e| e.1)))].0;
        let mut name = format!("{team}-{product}-{env}");
        let mut n = 2;
        while !taken.insert(name.clone()) {
            name = format!("{team}-{product}-{env}-{n}");
            n += 1;
        }
        let mut labels = vec![("team", team), ("env", env)];
        labels.push(("pod-security.kubernetes.io/enforce", if env == "prod" { "restricted" } else { "baseline" }));
        if rng.percent(20) {
            labels.push(("istio-injection", "enabled"));
        }
        // Roughly 1/x: a few namespaces hold most pods, as in real clusters.
        let weight = 1000 / (1 + rng.below(60));
        out.push(NsPlan { name, team, env, labels, weight, workloads: Vec::new(), pods: 0 });
    }
    out
}

/// An allow-policy for workload `w` from its tier's templates: template
/// `pick` (taken modulo), in round `round` (named with a suffix after the
/// first, should a namespace ask for more policies than it has templates).
fn workload_policy(ns: &NsPlan, w: &Workload, pick: usize, round: usize, rng: &mut Rng) -> (String, Value) {
    let me = json!({"matchLabels": {"app": w.name}});
    let outside = json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_RANGES}});
    let templates: &[&str] = match w.arch.tier {
        Tier::Frontend => &["allow-public", "allow-node-health", "egress-backends"],
        Tier::Backend => &["allow-callers", "allow-team", "egress-data", "egress-external", "allow-env"],
        Tier::Data => &["allow-backends", "allow-peers", "egress-backup"],
        Tier::Batch | Tier::System => &["egress-api", "egress-nodeports"],
    };
    let template = templates[pick % templates.len()];
    let name = match round / templates.len() {
        0 => format!("{}-{template}", w.name),
        r => format!("{}-{template}-{}", w.name, r + 1),
    };
    let ingress = |from: Value, ports: Value| json!({"podSelector": me, "ingress": [{"from": from, "ports": ports}]});
    let egress = |to: Value, ports: Value| {
        json!({"podSelector": me, "policyTypes": ["Egress"], "egress": [{"to": to, "ports": ports}]})
    };
    let spec = match template {
        "allow-public" => ingress(json!([outside]), json!([{"port": "http"}])),
        "allow-node-health" => ingress(json!([{"ipBlock": {"cidr": NODE_NETWORK}}]), json!([{"port": 8080, "endPort": 8089}])),
        "egress-backends" => egress(
            json!([{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend"]}]}}]),
            json!([{"port": "http"}, {"port": "grpc"}]),
        ),
        "allow-callers" => ingress(
            json!([{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend", "backend"]}]}}]),
            json!([{"port": "http"}, {"port": "grpc"}]),
        ),
        "allow-team" => ingress(
            json!([{
                "namespaceSelector": {"matchLabels": {"team": ns.team}},
                "podSelector": {"matchExpressions": [{"key": "version", "operator": "Exists"}]},
            }]),
            json!([{"port": "http"}]),
        ),
        "egress-data" => egress(
            json!([{"podSelector": {"matchLabels": {"tier": "data"}}}]),
            json!([{"port": 5432}, {"port": 6379}, {"port": 9092, "endPort": 9094}]),
        ),
        "egress-external" => egress(json!([outside]), json!([{"port": 443}])),
        "allow-env" => {
            // Production accepts production callers; other environments
            // accept anything that is not production.
            let (op, values) = if ns.env == "prod" { ("In", ["prod"]) } else { ("NotIn", ["prod"]) };
            ingress(
                json!([{"namespaceSelector": {"matchExpressions": [
                    {"key": "env", "operator": op, "values": values},
                    {"key": "team", "operator": "Exists"},
                ]}}]),
                json!([{"port": "http"}]),
            )
        }
        "allow-backends" => ingress(
            json!([
                {"podSelector": {"matchLabels": {"tier": "backend"}}},
                {"namespaceSelector": {"matchLabels": {"team": ns.team, "env": ns.env}}, "podSelector": {"matchLabels": {"tier": "backend"}}},
            ]),
            json!(w.arch.ports.iter().filter(|p| p.name != "metrics").map(|p| json!({"port": p.name})).collect::<Vec<_>>()),
        ),
        "allow-peers" => json!({"podSelector": me, "ingress": [{"from": [{"podSelector": me}]}]}),
        "egress-backup" => {
            // A backup subnet minus the part other tenants use.
            let net = 100 + rng.below(50);
            let block = json!({"cidr": format!("192.168.{net}.0/24"), "except": [format!("192.168.{net}.192/26")]});
            egress(json!([{"ipBlock": block}]), json!([{"port": 443}]))
        }
        "egress-api" => egress(
            json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "backend", "team": ns.team}}}]),
            json!([{"port": "http"}]),
        ),
        _ => egress(json!([{"ipBlock": {"cidr": NODE_NETWORK}}]), json!([{"protocol": "TCP", "port": 30000, "endPort": 32767}])),
    };
    (name, spec)
}

fn cumulative(weights: impl Iterator<Item = usize>) -> Vec<usize> {
    weights
        .scan(0, |sum, w| {
            *sum += w;
            Some(*sum)
        })
        .collect()
}

/// An index drawn with probability proportional to its weight.
fn pick_weighted(rng: &mut Rng, cumulative: &[usize]) -> usize {
    let x = rng.below(*cumulative.last().unwrap_or(&1));
    cumulative.partition_point(|&c| c <= x)
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub namespaces: usize,
    pub nodes: usize,
    pub pods: usize,
    pub policies: usize,
    pub files: usize,
    pub bytes: u64,
}

/// Pods and policies go in numbered chunks in a directory, so no one file
/// is too big to open, diff or load (the loader parses a file at a time).
pub const PODS_PER_FILE: usize = 10_000;
pub const POLICIES_PER_FILE: usize = 5_000;

/// Where the manifests go: one stream, or a directory of files.
enum Sink<'a> {
    Stream { w: &'a mut dyn Write },
    Dir { dir: &'a Path, file: Option<BufWriter<File>> },
}

impl Sink<'_> {
    /// Start file `name` (in a directory) or just carry on (in a stream).
    fn file(&mut self, name: &str, header: &str, summary: &mut Summary) -> io::Result<()> {
        match self {
            Sink::Stream { .. } if summary.files > 0 => return Ok(()),
            Sink::Stream { w } => w.write_all(header.as_bytes())?,
            Sink::Dir { dir, file } => {
                if let Some(mut f) = file.take() {
                    f.flush()?;
                }
                let mut f = BufWriter::with_capacity(1 << 16, File::create(dir.join(name))?);
                f.write_all(header.as_bytes())?;
                *file = Some(f);
            }
        }
        summary.files += 1;
        summary.bytes += header.len() as u64;
        Ok(())
    }

    fn doc(&mut self, v: &Value, buf: &mut String, summary: &mut Summary) -> io::Result<()> {
        buf.clear();
        buf.push_str("---\n");
        yaml_map(buf, v, 0, false);
        summary.bytes += buf.len() as u64;
        match self {
            Sink::Stream { w, .. } => w.write_all(buf.as_bytes()),
            Sink::Dir { file: Some(f), .. } => f.write_all(buf.as_bytes()),
            Sink::Dir { file: None, .. } => Err(io::Error::other("no file started")),
        }
    }

    /// Document number `index` of a kind written `per_file` to a file
    /// (`<kind>-NNNN.yaml`): starts the next file when one is full.
    fn chunked_doc(
        &mut self,
        (kind, index, per_file): (&str, usize, usize),
        header: &str,
        v: &Value,
        buf: &mut String,
        summary: &mut Summary,
    ) -> io::Result<()> {
        let per_file = per_file.max(1);
        if index % per_file == 0 {
            self.file(&format!("{kind}-{:04}.yaml", index / per_file), header, summary)?;
        }
        self.doc(v, buf, summary)
    }

    fn finish(&mut self) -> io::Result<()> {
        match self {
            Sink::Stream { w, .. } => w.flush(),
            Sink::Dir { file, .. } => file.take().map_or(Ok(()), |mut f| f.flush()),
        }
    }
}

impl Plan {
    /// Write everything as one multi-document YAML stream.
    pub fn write_stream(&self, w: &mut dyn Write) -> io::Result<Summary> {
        self.write(Sink::Stream { w })
    }

    /// Write into `dir`: nodes.yaml, namespaces.yaml, pods-NNNN.yaml,
    /// policies-NNNN.yaml. Files from an earlier run are replaced, and a
    /// directory holding anything else is refused rather than mixed into.
    pub fn write_dir(&self, dir: &Path) -> io::Result<Summary> {
        fs::create_dir_all(dir)?;
        let ours = |name: &str| {
            name == "nodes.yaml"
                || name == "namespaces.yaml"
                || ["pods-", "policies-"].iter().any(|p| {
                    name.strip_prefix(p)
                        .and_then(|n| n.strip_suffix(".yaml"))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
        };
        let mut stale = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !ours(&name) {
                return Err(io::Error::other(format!(
                    "refusing to write into {}: it holds {name:?}, which netfence gen did not write (choose an empty or new directory)",
                    dir.display()
                )));
            }
            stale.push(entry.path());
        }
        for p in stale {
            fs::remove_file(p)?;
        }
        self.write(Sink::Dir { dir, file: None })
    }

    fn write(&self, mut sink: Sink) -> io::Result<Summary> {
        let header = format!("# Generated by `{}`: regenerate rather than edit.\n", self.spec.command());
        let mut s = Summary::default();
        let mut buf = String::with_capacity(4096);
        sink.file("nodes.yaml", &header, &mut s)?;
        for n in &self.nodes {
            let cidr = format!("{}/{}", Ipv4Addr::from(n.cidr_base), self.node_prefix);
            let node = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name, "topology.kubernetes.io/zone": n.zone}},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                "status": {"addresses": [{"type": "InternalIP", "address": n.ip.to_string()}, {"type": "Hostname", "address": n.name}]},
            });
            sink.doc(&node, &mut buf, &mut s)?;
            s.nodes += 1;
        }
        sink.file("namespaces.yaml", &header, &mut s)?;
        for ns in &self.namespaces {
            let labels: Map<String, Value> = ns.labels.iter().map(|&(k, v)| (k.to_string(), json!(v))).collect();
            let mut meta = json!({"name": ns.name});
            if !labels.is_empty() {
                meta["labels"] = Value::Object(labels);
            }
            sink.doc(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}), &mut buf, &mut s)?;
            s.namespaces += 1;
        }
        self.pods(|pod| {
            sink.chunked_doc(("pods", s.pods, self.pods_per_file), &header, &pod, &mut buf, &mut s)?;
            s.pods += 1;
            Ok(())
        })?;
        self.policies(|policy| {
            sink.chunked_doc(("policies", s.policies, self.policies_per_file), &header, &policy, &mut buf, &mut s)?;
            s.policies += 1;
            Ok(())
        })?;
        sink.finish()?;
        Ok(s)
    }
}

// A small YAML emitter for the JSON values above. It writes kubectl's
// layout (block style, sequences at their key's indent, keys in the map's
// order: sorted, as serde_json's default map keeps them) but puts short
// mappings and sequences of scalars on one line in flow style, which halves
// the size of pod manifests and keeps them readable. yaml-rust2's emitter
// has no flow style for leaves. It appends to one reused buffer, without
// allocating per node: at 100k pods allocation was most of the time.

/// Emit the entries of mapping `v` at `indent`. With `inline_first`, the
/// first entry continues the current line (after a sequence's "- ").
fn yaml_map(out: &mut String, v: &Value, indent: usize, inline_first: bool) {
    let Value::Object(map) = v else { return yaml_scalar(out, v) };
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 || !inline_first {
            out.extend(std::iter::repeat_n(' ', indent));
        }
        out.push_str(k);
        out.push(':');
        yaml_value(out, v, indent);
    }
}

/// Emit `v` as the value of a key at `indent`, starting right after the colon.
fn yaml_value(out: &mut String, v: &Value, indent: usize) {
    out.push(' ');
    if flow(out, v) {
        out.push('\n');
        return;
    }
    out.pop();
    out.push('\n');
    match v {
        Value::Object(_) => yaml_map(out, v, indent + 2, false),
        Value::Array(items) => {
            for item in items {
                out.extend(std::iter::repeat_n(' ', indent));
                out.push_str("- ");
                if flow(out, item) {
                    out.push('\n');
                } else {
                    yaml_map(out, item, indent + 2, true);
                }
            }
        }
        _ => unreachable!("scalars always flow"),
    }
}

/// Append the one-line form of a scalar, or of a short collection of
/// scalars; append nothing and return false for anything else.
fn flow(out: &mut String, v: &Value) -> bool {
    let nested = |v: &Value| v.is_object() || v.is_array();
    let start = out.len();
    match v {
        Value::Object(map) if map.values().any(nested) => return false,
        Value::Array(items) if items.iter().any(nested) => return false,
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { "" });
                out.push_str(k);
                out.push_str(": ");
                yaml_scalar(out, v);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { "" });
                yaml_scalar(out, v);
            }
            out.push(']');
        }
        _ => {
            yaml_scalar(out, v);
            return true;
        }
    }
    if out.len() - start > 100 {
        out.truncate(start);
        return false;
    }
    true
}

/// Strings go unquoted only when no YAML reader could take them for anything
/// but a string; the rest are JSON-quoted, which is valid YAML.
fn yaml_scalar(out: &mut String, v: &Value) {
    const SPECIAL: [&str; 9] = ["true", "false", "yes", "no", "on", "off", "null", "y", "n"];
    match v {
        Value::String(s) => {
            let plain = s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
                && !SPECIAL.iter().any(|w| s.eq_ignore_ascii_case(w))
                && s.parse::<f64>().is_err();
            if plain {
                out.push_str(s);
            } else {
                out.push_str(&serde_json::to_string(s).unwrap_or_default());
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cluster, Peer, PortRef};
    use crate::selector::Operator;

    fn spec(pods: usize, nodes: usize, namespaces: usize, policies: usize) -> Spec {
        Spec { pods, nodes, namespaces, policies, seed: 7 }
    }

    fn generate(spec: Spec) -> String {
        let mut out = Vec::new();
        Plan::new(spec).unwrap().write_stream(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn load(text: &str) -> Cluster {
        let mut b = crate::model::load::ClusterBuilder::new();
        b.add_text("gen.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        b.finish().0
    }

    #[test]
    fn splitmix64_is_the_published_sequence() {
        // Reference outputs of splitmix64 seeded with 0: if these change,
        // every checked-in fixture changes with them.
        let mut r = Rng(0);
        assert_eq!([r.next_u64(), r.next_u64()], [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4]);
    }

    #[test]
    fn output_is_deterministic_and_streams_are_independent() {
        let a = generate(spec(300, 3, 12, 40));
        assert_eq!(a, generate(spec(300, 3, 12, 40)));
        assert_ne!(a, generate(Spec { seed: 8, ..spec(300, 3, 12, 40) }));
        // More policies, same pods.
        let pods = |c: &Cluster| c.pods.clone();
        assert_eq!(pods(&load(&a)), pods(&load(&generate(spec(300, 3, 12, 90)))));
    }

    #[test]
    fn generated_cluster_loads_with_exact_counts() {
        for s in [spec(10, 1, 4, 0), spec(1000, 10, 100, 100), spec(2000, 2, 5, 300), spec(500, 40, 300, 7)] {
            let c = load(&generate(s));
            assert_eq!((c.pods.len(), c.nodes.len(), c.namespaces.len(), c.policies.len()), (s.pods, s.nodes, s.namespaces, s.policies), "{s:?}");
        }
    }

    #[test]
    fn pods_live_inside_their_nodes_cidr_with_unique_addresses() {
        for s in [spec(1000, 10, 100, 0), spec(3000, 2, 8, 0)] {
            let c = load(&generate(s));
            let mut seen = HashSet::new();
            for p in c.pods.iter().filter(|p| !p.ips.is_empty() && !p.host_network) {
                let node = &c.nodes[p.node.as_ref().unwrap()];
                assert!(node.pod_cidrs[0].contains(&p.ips[0]), "{} {:?} not in {}", p.key(), p.ips, node.pod_cidrs[0]);
                assert!(seen.insert(p.ips[0]), "{} reuses {}", p.key(), p.ips[0]);
            }
            assert!(seen.len() * 100 >= s.pods * 90, "most pods have an address");
        }
    }

    #[test]
    fn cidr_sizes_fit_the_load() {
        let check = |pods, nodes, prefix| assert_eq!(spec(pods, nodes, 10, 0).check(), Ok(prefix), "{pods}/{nodes}");
        check(1_000, 10, 24);
        check(100_000, 1_000, 24);
        check(1_000_000, 10_000, 24);
        check(253_000, 1_000, 24);
        check(254_000, 1_000, 23);
        check(100_000, 10, 18);
        let fails = |s: Spec, flag| assert_eq!(s.check().map_err(|e| e.flag), Err(flag), "{s:?}");
        fails(spec(1_000_000, 10, 10, 0), "pods");
        fails(spec(100, 1, 3, 0), "namespaces");
        fails(spec(100, 0, 5, 0), "nodes");
        fails(spec(5, 1, 5, 0), "pods");
        fails(spec(10_000_000, 40_000, 5, 0), "nodes");
    }

    #[test]
    fn small_preset_has_every_policy_feature() {
        let c = load(&generate(Size::Small.spec(1)));
        let pols = &c.policies;
        let has = |what: &str, f: &dyn Fn(&crate::model::Policy) -> bool| assert!(pols.iter().any(|p| f(p)), "no policy with {what}");
        let rules = |p: &crate::model::Policy| p.ingress.iter().chain(&p.egress).cloned().collect::<Vec<_>>();
        let peers = |p: &crate::model::Policy| rules(p).into_iter().flat_map(|r| r.peers).collect::<Vec<_>>();
        let ports = |p: &crate::model::Policy| rules(p).into_iter().flat_map(|r| r.ports).collect::<Vec<_>>();
        has("default-deny ingress", &|p| p.pod_selector.is_empty() && p.types.ingress && p.ingress.is_empty());
        has("default-deny egress", &|p| p.types.egress && !p.types.ingress && p.egress.is_empty());
        has("DNS egress", &|p| {
            ports(p).iter().any(|s| s.protocol == crate::model::Protocol::Udp && s.port == Some(PortRef::Number(53)))
        });
        has("a named port", &|p| ports(p).iter().any(|s| matches!(s.port, Some(PortRef::Named(_)))));
        has("a port range", &|p| ports(p).iter().any(|s| s.end_port.is_some()));
        has("an ipBlock with except", &|p| peers(p).iter().any(|x| matches!(x, Peer::IpBlock { except, .. } if !except.is_empty())));
        has("a namespace selector", &|p| peers(p).iter().any(|x| matches!(x, Peer::Pods { namespaces: Some(_), .. })));
        has("a pod selector", &|p| peers(p).iter().any(|x| matches!(x, Peer::Pods { namespaces: None, pods: Some(_) })));
        for op in [Operator::In, Operator::NotIn, Operator::Exists] {
            has(&format!("{op:?}"), &|p| {
                let sels = peers(p).into_iter().flat_map(|x| match x {
                    Peer::Pods { namespaces, pods } => [namespaces, pods].into_iter().flatten().collect(),
                    Peer::IpBlock { .. } => vec![],
                });
                sels.chain([p.pod_selector.clone()]).any(|s| s.match_expressions.iter().any(|r| r.operator == op))
            });
        }
        // The workloads look like deployments: replicas share a hash.
        let hashes: HashSet<&str> = c.pods.iter().filter_map(|p| p.labels.get("pod-template-hash")).collect();
        let deployed = c.pods.iter().filter(|p| p.labels.contains_key("pod-template-hash")).count();
        assert!(deployed > 2 * hashes.len(), "{deployed} pods, {} hashes", hashes.len());
        assert!(c.pods.iter().any(|p| !p.takes_part()) && c.pods.iter().any(|p| p.host_network));
    }

    #[test]
    fn directory_output_loads_like_the_stream_and_refuses_foreign_files() {
        let dir = std::env::temp_dir().join(format!("nf-gen-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut plan = Plan::new(spec(210, 4, 10, 51)).unwrap();
        (plan.pods_per_file, plan.policies_per_file) = (100, 50);
        let s = plan.write_dir(&dir).unwrap();
        assert_eq!(s.files, 7); // nodes, namespaces, 3 pod chunks, 2 policy chunks
        plan.write_dir(&dir).unwrap(); // rewriting our own files is fine
        let (from_dir, _) = crate::model::load_paths(&[&dir]).unwrap();
        let mut text = Vec::new();
        plan.write_stream(&mut text).unwrap();
        let from_stream = load(std::str::from_utf8(&text).unwrap());
        assert_eq!(from_dir.pods, from_stream.pods);
        assert_eq!(from_dir.namespaces, from_stream.namespaces);
        assert_eq!(from_dir.policies.len(), from_stream.policies.len());
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        let e = plan.write_dir(&dir).unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scalars_are_quoted_when_yaml_would_misread_them() {
        let check = |s: &str, want: &str| {
            let mut out = String::new();
            yaml_scalar(&mut out, &json!(s));
            assert_eq!(out, want, "{s:?}");
        };
        check("web", "web");
        check("kubernetes.io/metadata.name", "kubernetes.io/metadata.name");
        check("10.0.0.1", "\"10.0.0.1\"");
        check("2456789245", "\"2456789245\"");
        check("yes", "\"yes\"");
        check("inf", "\"inf\"");
        check("nginx:1.27", "\"nginx:1.27\"");
        check("", "\"\"");
    }
}
