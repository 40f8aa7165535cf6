//! `netfence gen`: write a seeded, realistic cluster of a given size as
//! Kubernetes manifests, for benchmarks and scale tests (see [`crate::gen`]).

use std::path::PathBuf;
use std::time::Instant;

use crate::gen::{Plan, Size, Spec};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Preset size: small (1k pods, 10 nodes, 100 namespaces, 100 policies),
    /// medium (10k/100/1k/1k), large (100k/1k/10k/10k) or xlarge
    /// (1M/10k/100k/100k). The flags below override its numbers one by one.
    #[arg(long, default_value = "small", value_parser = Size::parse)]
    pub size: Size,
    /// Number of pods, platform pods (CoreDNS, kube-proxy, ...) included.
    #[arg(long)]
    pub pods: Option<usize>,
    /// Number of nodes; each gets a podCIDR sized for its share of pods.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Number of namespaces, kube-system, monitoring and ingress-nginx included (at least 4).
    #[arg(long)]
    pub namespaces: Option<usize>,
    /// Number of NetworkPolicies.
    #[arg(long)]
    pub policies: Option<usize>,
    /// Seed of the generator: the same seed and sizes give byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write: a file ending in .yaml or .yml, or else a directory
    /// (nodes.yaml, namespaces.yaml, then pods and policies in numbered
    /// chunks). Standard output when omitted.
    #[arg(short, long, value_name = "DIR|FILE")]
    pub output: Option<PathBuf>,
}

impl Args {
    pub fn spec(&self) -> Spec {
        let base = self.size.spec(self.seed);
        Spec {
            pods: self.pods.unwrap_or(base.pods),
            nodes: self.nodes.unwrap_or(base.nodes),
            namespaces: self.namespaces.unwrap_or(base.namespaces),
            policies: self.policies.unwrap_or(base.policies),
            seed: self.seed,
        }
    }
}

/// Exit 0 when written, 2 on a spec that cannot be generated or an I/O error.
pub fn run(args: Args) -> i32 {
    let spec = args.spec();
    let start = Instant::now();
    let plan = match Plan::new(spec) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("netfence gen: {e}");
            return 2;
        }
    };
    let is_file = |p: &PathBuf| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let (written, target) = match &args.output {
        None => {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            (plan.write_stream(&mut out), "standard output".to_string())
        }
        Some(p) if is_file(p) => {
            let written = std::fs::File::create(p).and_then(|f| {
                let mut out = std::io::BufWriter::with_capacity(1 << 16, f);
                plan.write_stream(&mut out)
            });
            (written, p.display().to_string())
        }
        Some(dir) => (plan.write_dir(dir), dir.display().to_string()),
    };
    match written {
        Ok(s) => {
            eprintln!(
                "netfence gen: {} pods, {} nodes, {} namespaces, {} policies ({} files, {:.1} MB) to {target} in {:.2} s",
                s.pods,
                s.nodes,
                s.namespaces,
                s.policies,
                s.files,
                s.bytes as f64 / 1e6,
                start.elapsed().as_secs_f64()
            );
            0
        }
        Err(e) => {
            eprintln!("netfence gen: cannot write {target}: {e}");
            2
        }
    }
}
