//! deploy/ against the code: every manifest parses into its k8s-openapi
//! type, the ClusterRole grants exactly what the watchers request, and the
//! DaemonSet runs the agent the way the code expects.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netfence::agent::{METRICS_PORT, WATCHED, WATCH_VERBS};
use netfence::model::load::parse_docs;

#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
}

fn load() -> Manifests {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut m = Manifests::default();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        for doc in parse_docs(&file, &text).unwrap() {
            let kind = doc.value["kind"].as_str().unwrap_or_default().to_string();
            fn typed<T: serde::de::DeserializeOwned>(file: &str, doc: &netfence::yaml::Doc) -> T {
                netfence::model::load::typed(file, doc).unwrap_or_else(|e| panic!("{e}"))
            }
            match kind.as_str() {
                "DaemonSet" => m.daemonsets.push(typed(&file, &doc)),
                "ServiceAccount" => m.accounts.push(typed(&file, &doc)),
                "ClusterRole" => m.roles.push(typed(&file, &doc)),
                "ClusterRoleBinding" => m.bindings.push(typed(&file, &doc)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    assert_eq!((m.daemonsets.len(), m.accounts.len(), m.roles.len(), m.bindings.len()), (1, 1, 1, 1));
    m
}

#[test]
fn rbac_grants_exactly_what_the_watchers_request() {
    let m = load();
    let mut granted = BTreeSet::new();
    for rule in m.roles[0].rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let needed: BTreeSet<_> = WATCHED
        .iter()
        .flat_map(|w| WATCH_VERBS.iter().map(|v| (w.group.to_string(), w.plural.to_string(), v.to_string())))
        .collect();
    assert_eq!(granted, needed);
}

#[test]
fn the_binding_ties_the_role_to_the_daemonsets_account() {
    let m = load();
    let (sa, role, binding, ds) = (&m.accounts[0], &m.roles[0], &m.bindings[0], &m.daemonsets[0]);
    assert_eq!((binding.role_ref.kind.as_str(), &binding.role_ref.name), ("ClusterRole", role.metadata.name.as_ref().unwrap()));
    let subjects = binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
}

#[test]
fn the_daemonset_runs_the_agent_as_the_code_expects() {
    let m = load();
    let ds = &m.daemonsets[0];
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    // Every node, whatever its taints.
    assert!(pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()));
    assert!(pod.volumes.is_none(), "no host paths needed");
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "agent");
    assert!(args.windows(2).any(|w| w == ["--node", "$(NODE_NAME)"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--established", "cut"]), "{args:?}");
    let env = c.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    let field = env.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"));
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(i32::from(METRICS_PORT)));
    }
    let caps = c.security_context.as_ref().and_then(|s| s.capabilities.as_ref()).unwrap();
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let res = c.resources.as_ref().unwrap();
    for key in ["cpu", "memory"] {
        assert!(res.requests.as_ref().unwrap().contains_key(key), "request {key}");
    }
    assert!(res.limits.as_ref().unwrap().contains_key("memory"));
}
