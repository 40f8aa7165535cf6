//! `--source DIR` end to end: the agent on a folder of manifests, with the
//! fake dataplane standing in for nftables.

use std::path::Path;
use std::time::Duration;

use netfence::agent::{self, http, FakeDataplane, Running, Source};

const BOUND: Duration = Duration::from_secs(10);

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nstatus: {podIP: 10.0.0.1}\n";

fn policy(port: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: {port}\n"
    )
}

async fn start(dir: &Path) -> (Running, FakeDataplane) {
    let dp = FakeDataplane::default();
    let config = agent::Config {
        node: "n1".into(),
        source: Source::Folder { dir: dir.to_path_buf(), poll: Duration::from_millis(50) },
        reconcile: Default::default(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        rule_counters: None,
        drop_log: None,
        precondition_interval: None,
        absent_kind_retry: agent::ABSENT_KIND_RETRY,
    };
    (agent::start(config, Box::new(dp.clone()), None).await.unwrap(), dp)
}

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, as editors and ConfigMap updates do, so no poll
    // sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn ports(c: &netfence::model::Cluster) -> Vec<String> {
    c.policies.iter().flat_map(|p| p.ingress.iter().flat_map(|r| r.ports.iter().map(|p| p.to_string()))).collect()
}

async fn metric(running: &Running, name: &str) -> String {
    let (_, text) = http::get_text(running.metrics_addr, "/metrics").await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or("").to_string()
}

#[tokio::test]
async fn a_policy_written_to_the_folder_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ns.yaml", NAMESPACE);
    write(dir.path(), "pod.yaml", POD);
    let (running, dp) = start(dir.path()).await;
    dp.wait_committed(BOUND, |c| c.pods.len() == 1 && c.policies.is_empty()).await.unwrap();

    write(dir.path(), "policy.yaml", &policy("80"));
    let c = dp.wait_committed(BOUND, |c| !c.policies.is_empty()).await.unwrap();
    assert_eq!(ports(&c), ["80/TCP"]);
    write(dir.path(), "policy.yaml", &policy("8080"));
    dp.wait_committed(BOUND, |c| ports(c) == ["8080/TCP"]).await.unwrap();
    std::fs::remove_file(dir.path().join("policy.yaml")).unwrap();
    dp.wait_committed(BOUND, |c| c.policies.is_empty()).await.unwrap();
    assert_eq!(dp.history(), ["full", "delta", "delta", "delta"]);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_broken_file_keeps_its_last_valid_objects() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ns.yaml", NAMESPACE);
    write(dir.path(), "policy.yaml", &policy("80"));
    let (running, dp) = start(dir.path()).await;
    dp.wait_committed(BOUND, |c| ports(c) == ["80/TCP"]).await.unwrap();

    write(dir.path(), "policy.yaml", &policy("0"));
    let deadline = tokio::time::Instant::now() + BOUND;
    while metric(&running, "netfence_source_load_errors_total").await != "1" {
        assert!(tokio::time::Instant::now() < deadline, "the broken file was never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dp.history(), ["full"], "nothing synced from a broken file");
    assert_eq!(ports(&dp.committed().unwrap()), ["80/TCP"]);
    assert_eq!(http::get_text(running.metrics_addr, "/readyz").await.unwrap().0, 200);

    // An unrelated change while it is still broken applies, with the
    // broken file's last valid version; the error is not reported again.
    write(dir.path(), "pod.yaml", POD);
    let c = dp.wait_committed(BOUND, |c| c.pods.len() == 1).await.unwrap();
    assert_eq!(ports(&c), ["80/TCP"]);
    assert_eq!(metric(&running, "netfence_source_load_errors_total").await, "1");

    write(dir.path(), "policy.yaml", &policy("81"));
    let c = dp.wait_committed(BOUND, |c| ports(c) == ["81/TCP"]).await.unwrap();
    assert_eq!(c.pods.len(), 1);
    assert_eq!(dp.history(), ["full", "delta", "delta"]);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn not_ready_until_the_folder_first_loads() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.yaml", "kind: Pod\nmetadata: {name: [\n");
    let (running, dp) = start(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(dp.history().is_empty());
    assert_eq!(http::get_text(running.metrics_addr, "/readyz").await.unwrap().0, 503);
    write(dir.path(), "bad.yaml", POD);
    dp.wait_committed(BOUND, |c| c.pods.len() == 1).await.unwrap();
    running.stop().await.unwrap();
}
