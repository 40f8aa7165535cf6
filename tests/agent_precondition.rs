//! The agent's br_netfilter precondition, end to end: `netfence agent` in
//! node-1's namespace of a dataplane wired like a bridge CNI (pods on
//! `cni0`), enforcing a deny-all ingress in x. With
//! `net.bridge.bridge-nf-call-iptables=1` the same-node flow x/a -> x/c is
//! denied and the agent is ready. Set to 0 in that namespace, the flow gets
//! through (bridged traffic bypasses every hook: the rules are still
//! there) and the agent says so: /readyz 503 with the reason, the metric at
//! 1. Set back to 1, the flow is denied and the agent ready again. Needs
//! root; skipped with a notice otherwise.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use netfence::agent::http;
use netfence::dataplane::{Cni, Dataplane, Endpoint, ProbeSpec};
use netfence::model::{load_paths, Family, Protocol};
use netfence::netns::{self, Netns};

const METRICS: &str = "127.0.0.1:9964";
const BOUND: Duration = Duration::from_secs(10);

const DENY_X: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

fn get(ns: &Netns, path: &str) -> (u16, String) {
    ns.run(|| http::get_text_blocking(METRICS.parse().unwrap(), path, Duration::from_secs(2)))
        .unwrap()
        .unwrap_or((0, String::new()))
}

fn wait_for(what: &str, ns: &Netns, path: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let start = Instant::now();
    loop {
        let (status, body) = get(ns, path);
        if done(status, &body) {
            return (status, body);
        }
        assert!(start.elapsed() < BOUND, "{what}: {path} answered {status}\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bridged_traffic_without_br_netfilter_makes_the_agent_unready() {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    let standard = format!("{}/fixtures/clusters/standard.yaml", env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(standard, folder.path().join("cluster.yaml")).unwrap();
    std::fs::write(folder.path().join("deny.yaml"), DENY_X).unwrap();
    let cluster = load_paths(&[folder.path()]).unwrap().0;
    let dp = Dataplane::build_with(&cluster, &[], Cni::Bridge, |_, _| Ok(())).unwrap();
    let node = dp.node_netns("node-1").unwrap();

    let mut cmd = node.command(env!("CARGO_BIN_EXE_netfence")).unwrap();
    cmd.args(["agent", "--node", "node-1", "--metrics-addr", METRICS, "--established", "keep"])
        .arg("--source")
        .arg(folder.path())
        .args(["--precondition-interval", "100ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; the agent dies with the test.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut agent = cmd.spawn().unwrap();

    let pod = |name: &str| Endpoint::parse(&cluster, name).unwrap();
    let flow = [ProbeSpec { from: pod("x/a"), to: pod("x/c"), family: Family::IPv4, protocol: Protocol::Tcp, port: 80, via: None }];
    let allowed = || dp.probe_all(&flow).unwrap()[0].allowed;
    let set = |v: &str| node.sysctl(&[("net/bridge/bridge-nf-call-iptables", v)]).unwrap();
    let failed = "netfence_precondition_failed{reason=\"bridge_nf_call_iptables_off\"}";

    wait_for("ready", node, "/readyz", |s, _| s == 200);
    assert!(!allowed(), "x/a -> x/c (same node, bridged) must be denied with br_netfilter on");

    set("0");
    let (_, body) = wait_for("unready", node, "/readyz", |s, _| s == 503);
    assert!(body.contains("cni0 (10.244.1.1/24) carries IPv4 pod addresses but net.bridge.bridge-nf-call-iptables is 0"), "{body}");
    let (_, metrics) = get(node, "/metrics");
    assert!(metrics.contains(&format!("{failed} 1")), "{metrics}");
    assert!(metrics.contains("netfence_ready 0"), "{metrics}");
    assert!(allowed(), "without br_netfilter bridged traffic bypasses the rules: the reason the agent is unready");

    set("1");
    wait_for("ready again", node, "/readyz", |s, _| s == 200);
    let (_, metrics) = get(node, "/metrics");
    assert!(metrics.contains(&format!("{failed} 0")), "{metrics}");
    assert!(!allowed(), "denied again with br_netfilter on");

    agent.kill().unwrap();
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("precondition failed") && log.contains("preconditions hold again"), "{log}");
}
