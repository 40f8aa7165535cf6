//! Helpers for tests that touch nftables: a private network namespace per
//! test, removed on drop (also when the test fails), and the skip rule.

#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace named `nfx<pid>_<n>`, deleted on drop. Its nftables
/// ruleset is its own: nothing a test does there touches the machine's.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace, or `None` (with a notice on stderr) when this
    /// machine cannot run kernel tests: not root, or `ip`/`nft` missing.
    pub fn new(test: &str) -> Option<Netns> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED {test}: needs root (network namespaces)");
            return None;
        }
        for tool in [&["nft", "--version"][..], &["ip", "-V"][..]] {
            if !Command::new(tool[0]).args(&tool[1..]).output().is_ok_and(|o| o.status.success()) {
                eprintln!("SKIPPED {test}: `{}` is not installed", tool[0]);
                return None;
            }
        }
        let name = format!("nfx{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("run ip");
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        Some(Netns { name })
    }

    /// Run `nft ARGS` in the namespace with `stdin`; (success, stdout+stderr).
    pub fn nft(&self, args: &[&str], stdin: &str) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Representative clusters: (name, manifests relative to the crate root,
/// node). The golden programs are tests/golden/<name>.nft.
pub const CASES: &[(&str, &[&str], &str)] = &[
    ("standard-no-policies", &["fixtures/clusters/standard.yaml"], "node-1"),
    ("standard-mix-node-1", &["fixtures/clusters/standard.yaml", "tests/golden/policies/mix.yaml"], "node-1"),
    ("standard-mix-node-2", &["fixtures/clusters/standard.yaml", "tests/golden/policies/mix.yaml"], "node-2"),
    ("dualstack-node-1", &["fixtures/clusters/dualstack.yaml", "tests/golden/policies/dualstack.yaml"], "node-1"),
    ("special-node-1", &["fixtures/clusters/special.yaml", "tests/golden/policies/special.yaml"], "node-1"),
    ("demo-shop-worker", &["fixtures/demo/cluster.yaml", "fixtures/demo/policies"], "shop-worker"),
    ("dualstack-cluster-policies-node-1", &["fixtures/clusters/dualstack.yaml", "tests/golden/policies/cluster.yaml"], "node-1"),
];

pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Load manifests (paths relative to the crate root) into a cluster.
pub fn load(files: &[&str]) -> netfence::model::Cluster {
    load_with(files, "")
}

/// Load manifests, plus the objects of the YAML text `extra`.
pub fn load_with(files: &[&str], extra: &str) -> netfence::model::Cluster {
    let mut b = netfence::model::load::ClusterBuilder::new();
    for f in files {
        b.add_path(&root().join(f)).unwrap_or_else(|e| panic!("{e}"));
    }
    b.add_text("extra.yaml", extra).unwrap_or_else(|e| panic!("{e}"));
    b.finish().0
}

/// Compile `node`'s program from manifests.
pub fn compile(files: &[&str], node: &str) -> netfence::nft::Program {
    compile_with(files, "", node)
}

pub fn compile_with(files: &[&str], extra: &str, node: &str) -> netfence::nft::Program {
    let c = load_with(files, extra);
    netfence::nft::compile(&c, &netfence::ir::resolve(&c), node)
}
