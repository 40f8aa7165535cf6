//! The agent's kube-rs watchers against the in-process fake API server:
//! real list/watch HTTP, real JSON, kube-runtime's real recovery logic.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, WatchEvent, WatchParams};
use netfence::agent::fake_api::FakeApi;
use netfence::agent::{self, http, FakeDataplane, Key, Kind, NftDataplane, Running, Source};
use netfence::apply::{ApplyError, FakeKernel, Kernel};
use netfence::nft::Transaction;
use netfence::model::Cluster;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(20);

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 80}]}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn policy(ns: &str, name: &str, port: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
           "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}})
}

/// An agent for node n1 watching the fake.
fn config(fake: &FakeApi, absent_kind_retry: Duration) -> agent::Config {
    agent::Config {
        node: "n1".into(),
        source: Source::Client(fake.client()),
        reconcile: Default::default(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        rule_counters: None,
        drop_log: None,
        precondition_interval: None,
        absent_kind_retry,
    }
}

/// A small cluster in the fake, and an agent with a fake dataplane watching it.
async fn setup(fake: &FakeApi) -> (Running, FakeDataplane) {
    setup_with(fake, 1).await
}

async fn setup_with(fake: &FakeApi, pods: usize) -> (Running, FakeDataplane) {
    fake.apply(&namespace("x", json!({"team": "a"})));
    fake.apply(&node("n1", "192.168.0.1"));
    fake.apply(&pod("x", "a", "10.0.0.1"));
    fake.apply(&policy("x", "p", json!(80)));
    let dp = FakeDataplane::default();
    let running = agent::start(config(fake, agent::ABSENT_KIND_RETRY), Box::new(dp.clone()), None).await.unwrap();
    dp.wait_committed(CONVERGE, |c| c.pods.len() == pods && c.policies.len() == 1).await.unwrap();
    wait_until(|| fake.watchers() == agent::WATCHED.len() && running.is_ready()).await;
    (running, dp)
}

async fn wait_until(ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pod_ips(c: &Cluster) -> Vec<String> {
    c.pods.iter().map(|p| format!("{}={}", p.name, p.ips.first().map(|i| i.to_string()).unwrap_or_default())).collect()
}

fn ns_label(c: &Cluster, ns: &str, key: &str) -> Option<String> {
    c.namespaces.get(ns).and_then(|n| n.labels.get(key).map(str::to_string))
}

#[tokio::test]
async fn initial_list_then_add_modify_delete_converge() {
    let fake = FakeApi::start().await.unwrap();
    let (running, dp) = setup(&fake).await;
    let first = dp.committed().unwrap();
    assert_eq!(pod_ips(&first), ["a=10.0.0.1"]);
    assert_eq!(ns_label(&first, "x", "team").as_deref(), Some("a"));
    assert_eq!(first.nodes["n1"].internal_ips[0].to_string(), "192.168.0.1");
    assert_eq!(first.pods[0].ports[0].name.as_deref(), Some("http"));
    assert_eq!(dp.history(), ["full"]);
    assert_eq!(http::get_text(running.metrics_addr, "/readyz").await.unwrap().0, 200);

    fake.apply(&pod("x", "b", "10.0.0.2"));
    fake.apply(&pod("x", "a", "10.0.0.9"));
    fake.delete(Kind::NetworkPolicy, &Key::namespaced("x", "p"));
    fake.apply(&namespace("x", json!({"team": "b"})));
    let c = dp
        .wait_committed(CONVERGE, |c| {
            pod_ips(c) == ["a=10.0.0.9", "b=10.0.0.2"] && c.policies.is_empty() && ns_label(c, "x", "team").as_deref() == Some("b")
        })
        .await
        .unwrap();
    assert_eq!(c.pods.len(), 2);
    assert!(dp.history()[1..].iter().all(|m| *m == "delta"), "{:?}", dp.history());
    for kind in Kind::ALL {
        assert_eq!(fake.served(kind).lists, 1, "{kind}: one list, then watching");
    }
    let (_, metrics) = http::get_text(running.metrics_addr, "/metrics").await.unwrap();
    assert!(metrics.contains("netfence_syncs_total{mode=\"full\"} 1"), "{metrics}");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_large_initial_list_is_paged() {
    let fake = FakeApi::start().await.unwrap();
    for i in 0..1100 {
        fake.apply(&pod("big", &format!("p{i:04}"), &format!("10.1.{}.{}", i / 250, i % 250)));
    }
    let (running, dp) = setup_with(&fake, 1101).await;
    let c = dp.committed().unwrap();
    assert_eq!(c.pods.iter().filter(|p| p.namespace == "big").count(), 1100);
    // One relist whose continuations (kube-runtime pages by 500) are not counted.
    assert_eq!(fake.served(Kind::Pod).lists, 1);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_bookmark_lets_a_resumed_watch_skip_the_relist() {
    let fake = FakeApi::start().await.unwrap();
    let (running, dp) = setup(&fake).await;
    // Pod events move the global resourceVersion past what the namespace
    // watcher has seen; compaction then makes its position too old.
    for i in 0..3 {
        fake.apply(&pod("x", &format!("b{i}"), &format!("10.0.1.{i}")));
    }
    dp.wait_committed(CONVERGE, |c| c.pods.len() == 4).await.unwrap();
    fake.compact();
    let rv = fake.bookmark();
    fake.disconnect();
    wait_until(|| fake.served(Kind::Namespace).watches == 2).await;
    let ns = fake.served(Kind::Namespace);
    assert_eq!(ns.watch_versions[1], rv.to_string(), "resumed from the bookmark");
    assert_eq!((ns.lists, ns.gone), (1, 0));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn gone_after_an_outage_relists_and_converges() {
    let fake = FakeApi::start().await.unwrap();
    let (running, dp) = setup(&fake).await;
    // While the server is away, things change and history is compacted:
    // the watchers' resourceVersions are too old, so they must relist.
    fake.pause();
    fake.apply(&namespace("x", json!({"team": "c"})));
    fake.delete(Kind::Pod, &Key::namespaced("x", "a"));
    fake.apply(&pod("x", "z", "10.0.0.26"));
    fake.compact();
    fake.resume();
    dp.wait_committed(CONVERGE, |c| pod_ips(c) == ["z=10.0.0.26"] && ns_label(c, "x", "team").as_deref() == Some("c"))
        .await
        .unwrap();
    for kind in [Kind::Namespace, Kind::Pod] {
        let s = fake.served(kind);
        assert!(s.gone >= 1 && s.lists >= 2, "{kind}: {s:?}");
    }
    // A relist is a reset: the deleted pod is gone, not left behind.
    assert!(running.is_ready());
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_resumes_without_a_relist() {
    let fake = FakeApi::start().await.unwrap();
    let (running, dp) = setup(&fake).await;
    fake.abort_connections();
    fake.apply(&pod("x", "b", "10.0.0.2"));
    dp.wait_committed(CONVERGE, |c| c.pods.len() == 2).await.unwrap();
    wait_until(|| fake.watchers() == agent::WATCHED.len()).await;
    fake.apply(&pod("x", "c", "10.0.0.3"));
    dp.wait_committed(CONVERGE, |c| c.pods.len() == 3).await.unwrap();
    let s = fake.served(Kind::Pod);
    assert_eq!(s.lists, 1, "{s:?}");
    assert!(s.watches >= 2, "{s:?}");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_objects_are_skipped_and_counted() {
    let fake = FakeApi::start().await.unwrap();
    let (running, dp) = setup(&fake).await;
    fake.apply(&policy("x", "bad", json!("Not_A_Port_Name")));
    fake.apply(&pod("x", "b", "10.0.0.2"));
    let c = dp.wait_committed(CONVERGE, |c| c.pods.len() == 2).await.unwrap();
    assert_eq!(c.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["p"]);
    let (_, metrics) = http::get_text(running.metrics_addr, "/metrics").await.unwrap();
    assert!(metrics.contains("netfence_invalid_objects_total{kind=\"NetworkPolicy\"} 1"), "{metrics}");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_410_gone() {
    let fake = FakeApi::start().await.unwrap();
    fake.apply(&pod("x", "a", "10.0.0.1"));
    fake.apply(&pod("x", "a", "10.0.0.2"));
    let api: Api<Pod> = Api::all(fake.client());
    // Before compaction, a watch replays what happened after its version.
    let events: Vec<WatchEvent<Pod>> = {
        let stream = api.watch(&WatchParams::default().timeout(1), "1").await.unwrap();
        stream.take(1).try_collect().await.unwrap()
    };
    assert!(matches!(&events[0], WatchEvent::Modified(p) if p.metadata.resource_version.as_deref() == Some("2")));
    fake.compact();
    let mut stream = api.watch(&WatchParams::default(), "1").await.unwrap().boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(e.message.starts_with("too old resource version"), "{}", e.message);
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "the stream ends after the error");
    let list = api.list(&Default::default()).await.unwrap();
    assert_eq!(list.metadata.resource_version.as_deref(), Some("2"));
}

#[tokio::test]
async fn answers_discovery() {
    let fake = FakeApi::start().await.unwrap();
    let client = fake.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let group = kube::discovery::group(&client, "networking.k8s.io").await.unwrap();
    let (res, _) = group.recommended_kind("NetworkPolicy").unwrap();
    assert_eq!(res.plural, "networkpolicies");
    let core = kube::discovery::Discovery::new(client).run().await.unwrap();
    assert!(core.has_group(""), "core group discovered");
}

// ---------------------------------------------------------------------------
// Cluster-scoped policies: watched like the other kinds, applied as deltas
// by the real dataplane (on an in-memory kernel); a CRD not installed is no
// error.

/// Admin tier: deny ingress to every pod from namespaces labelled `team`.
fn cnp(name: &str, team: &str) -> Value {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
           "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                    "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": team}}}]}]}})
}

fn anp(name: &str) -> Value {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": name},
           "spec": {"priority": 3, "subject": {"namespaces": {}},
                    "egress": [{"name": "deny-all", "action": "Deny", "to": [{"namespaces": {}}]}]}})
}

/// An in-memory kernel the test can look into while the agent owns it.
#[derive(Clone, Default)]
struct SharedKernel(std::sync::Arc<std::sync::Mutex<FakeKernel>>);

impl Kernel for SharedKernel {
    fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        self.0.lock().unwrap().apply(tx)
    }
    fn table_names(&mut self) -> Result<Vec<String>, ApplyError> {
        self.0.lock().unwrap().table_names()
    }
}

impl SharedKernel {
    /// The chains of our table in the kernel, sorted.
    fn chains(&self) -> Vec<String> {
        let k = self.0.lock().unwrap();
        k.table(netfence::nft::TABLE).map(|p| p.chains.keys().cloned().collect()).unwrap_or_default()
    }

    fn rule_text(&self, chain: &str) -> String {
        let k = self.0.lock().unwrap();
        let c = k.table(netfence::nft::TABLE).and_then(|p| p.chains.get(chain).cloned());
        c.map(|c| format!("{c:?}")).unwrap_or_default()
    }
}

async fn start_nft(fake: &FakeApi, retry: Duration) -> (Running, SharedKernel) {
    fake.apply(&namespace("x", json!({"team": "a"})));
    fake.apply(&namespace("y", json!({"team": "b"})));
    fake.apply(&node("n1", "192.168.0.1"));
    fake.apply(&pod("x", "a", "10.0.0.1"));
    let kernel = SharedKernel::default();
    let dp = NftDataplane::new("n1", Box::new(kernel.clone()));
    let running = agent::start(config(fake, retry), Box::new(dp), None).await.unwrap();
    (running, kernel)
}

async fn metric(running: &Running, line_start: &str) -> Option<String> {
    let (_, text) = http::get_text(running.metrics_addr, "/metrics").await.unwrap();
    text.lines().find(|l| l.starts_with(line_start)).map(|l| l[line_start.len()..].trim().to_string())
}

async fn wait_metric(running: &Running, line_start: &str, value: &str) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let got = metric(running, line_start).await;
        if got.as_deref() == Some(value) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{line_start}: {got:?}, want {value}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn has_cnp_chain(chains: &[String]) -> bool {
    chains.iter().any(|c| c.starts_with("cnp_"))
}

#[tokio::test]
async fn a_cluster_network_policy_added_changed_and_deleted_is_applied_as_a_delta() {
    let fake = FakeApi::start().await.unwrap();
    let (running, kernel) = start_nft(&fake, agent::ABSENT_KIND_RETRY).await;
    wait_until(|| running.is_ready() && fake.watchers() == agent::WATCHED.len()).await;
    assert!(!has_cnp_chain(&kernel.chains()), "{:?}", kernel.chains());
    for kind in ["ClusterNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy"] {
        assert_eq!(metric(&running, &format!("netfence_watch_kind_available{{kind=\"{kind}\"}}")).await.as_deref(), Some("1"));
    }

    // Added: the Admin ingress chain appears, by a delta.
    fake.apply(&cnp("deny-team-b", "b"));
    wait_until(|| kernel.chains().iter().any(|c| c == "cnp_ing_admin")).await;
    let before = kernel.rule_text("cnp_ing_admin");
    assert_eq!(metric(&running, "netfence_syncs_total{mode=\"full\"}").await.as_deref(), Some("1"));
    wait_metric(&running, "netfence_syncs_total{mode=\"delta\"}", "1").await;

    // Changed: the chain's rules follow the new selector, by a delta.
    fake.apply(&cnp("deny-team-b", "c"));
    wait_until(|| kernel.rule_text("cnp_ing_admin") != before && !kernel.rule_text("cnp_ing_admin").is_empty()).await;
    wait_metric(&running, "netfence_syncs_total{mode=\"delta\"}", "2").await;

    // Deleted: the cluster-policy chains go, by a delta.
    fake.delete(Kind::ClusterNetworkPolicy, &Key::cluster("deny-team-b"));
    wait_until(|| !has_cnp_chain(&kernel.chains())).await;
    wait_metric(&running, "netfence_syncs_total{mode=\"delta\"}", "3").await;
    assert_eq!(metric(&running, "netfence_syncs_total{mode=\"full\"}").await.as_deref(), Some("1"), "never a full resync");

    // An invalid one is counted and skipped; the agent carries on.
    let mut bad = cnp("bad", "b");
    bad["spec"]["priority"] = json!(5000);
    fake.apply(&bad);
    wait_metric(&running, "netfence_invalid_objects_total{kind=\"ClusterNetworkPolicy\"}", "1").await;
    assert!(running.is_ready() && !has_cnp_chain(&kernel.chains()));
    assert_eq!(fake.served(Kind::ClusterNetworkPolicy).lists, 1, "one list, then watching");

    // One with a domainNames peer, by a delta: counted while in force.
    let mut dns = cnp("to-hosts", "b");
    dns["spec"]["egress"] = json!([{"action": "Accept", "to": [{"domainNames": ["example.com"]}, {"namespaces": {}}]}]);
    fake.apply(&dns);
    wait_metric(&running, "netfence_cluster_policy_domain_name_rules", "1").await;
    fake.delete(Kind::ClusterNetworkPolicy, &Key::cluster("to-hosts"));
    wait_metric(&running, "netfence_cluster_policy_domain_name_rules", "0").await;
    assert_eq!(metric(&running, "netfence_syncs_total{mode=\"full\"}").await.as_deref(), Some("1"), "never a full resync");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn an_absent_crd_is_no_error_and_is_watched_once_installed() {
    let fake = FakeApi::start().await.unwrap();
    fake.uninstall(Kind::AdminNetworkPolicy);
    fake.uninstall(Kind::BaselineAdminNetworkPolicy);
    let (running, kernel) = start_nft(&fake, Duration::from_millis(200)).await;
    // Ready without them: the first sync did not wait for the absent kinds.
    wait_until(|| running.is_ready()).await;
    let available = |kind: &str| format!("netfence_watch_kind_available{{kind=\"{kind}\"}}");
    wait_metric(&running, &available("AdminNetworkPolicy"), "0").await;
    wait_metric(&running, &available("BaselineAdminNetworkPolicy"), "0").await;
    wait_metric(&running, &available("ClusterNetworkPolicy"), "1").await;
    assert_eq!(metric(&running, "netfence_watch_errors_total{kind=\"AdminNetworkPolicy\"}").await, None, "not an error");
    assert_eq!(http::get_text(running.metrics_addr, "/readyz").await.unwrap().0, 200);
    // Asked again periodically.
    wait_until(|| fake.served(Kind::AdminNetworkPolicy).not_found >= 3).await;

    // Installed later: listed, watched, its policies enforced.
    fake.install(Kind::AdminNetworkPolicy);
    wait_metric(&running, &available("AdminNetworkPolicy"), "1").await;
    fake.apply(&anp("no-egress"));
    wait_until(|| kernel.chains().iter().any(|c| c == "cnp_egr_admin")).await;
    assert!(fake.served(Kind::AdminNetworkPolicy).watches >= 1);
    assert_eq!(metric(&running, "netfence_syncs_total{mode=\"full\"}").await.as_deref(), Some("1"));

    // Removed again: its objects go with it, and it is reported absent.
    fake.uninstall(Kind::AdminNetworkPolicy);
    wait_until(|| !has_cnp_chain(&kernel.chains())).await;
    wait_metric(&running, &available("AdminNetworkPolicy"), "0").await;
    assert!(running.is_ready());
    running.stop().await.unwrap();
}

#[tokio::test]
async fn discovery_leaves_out_what_is_not_installed() {
    let fake = FakeApi::start().await.unwrap();
    fake.uninstall(Kind::AdminNetworkPolicy);
    let client = fake.client();
    let group = kube::discovery::group(&client, "policy.networking.k8s.io").await.unwrap();
    assert_eq!(group.preferred_version_or_latest(), "v1alpha2");
    let kinds: Vec<String> = group.resources_by_stability().into_iter().map(|(r, _)| r.kind).collect();
    assert!(kinds.contains(&"ClusterNetworkPolicy".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"BaselineAdminNetworkPolicy".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"AdminNetworkPolicy".to_string()), "{kinds:?}");
}
