//! `netfence graph -f snap.yaml [--namespace NS] [--pod ns/pod] [--port N] [-o table|dot|json]`
//!
//! The cluster's allow graph ([`crate::graph`]), whole or narrowed. Also
//! home of what `who-can-reach` and `reach-from` share: loading, the
//! graph, resolving the queried pod.

use std::path::PathBuf;
use std::time::Instant;

use crate::eval::Endpoint;
use crate::graph::render::Filter;
use crate::graph::{AllowGraph, PortSet};
use crate::ir::Ir;
use crate::model::{Cluster, PodId, Protocol};

#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders (cluster snapshot and policies); repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Keep only edges with an end in this namespace (a workload of it, or all of it); repeatable.
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    /// Keep only edges with an end standing for this pod (`ns/pod`): its workload or its namespace.
    #[arg(long)]
    pub pod: Option<String>,
    /// Keep only this destination port of every edge (edges without it go).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Keep only this protocol (TCP, UDP or SCTP); with --port, that port of it.
    #[arg(long, value_parser = super::explain::parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Output format: an aligned table, Graphviz DOT, or JSON (README documents it).
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Dot,
    Json,
}

/// Load the manifests and build the graph, timing both (`NETFENCE_LOG=info`).
pub(super) fn load_graph(files: &[PathBuf]) -> Result<(Cluster, Ir, AllowGraph), i32> {
    let t = Instant::now();
    let cluster = super::load(files)?;
    super::refuse_cluster_policies(&cluster, "the allow graph and its queries")?;
    let loaded = t.elapsed();
    let ir = crate::ir::resolve(&cluster);
    let g = AllowGraph::build(&cluster, &ir);
    tracing::info!(
        pods = cluster.pods.len(),
        workloads = g.workloads.list.len(),
        edges = g.graph.edge_count(),
        "loaded in {loaded:?}, graph built in {:?}",
        t.elapsed() - loaded
    );
    Ok((cluster, ir, g))
}

/// The policy pod a query or filter names, or the message saying why not.
pub(super) fn policy_pod(cluster: &Cluster, s: &str) -> Result<PodId, String> {
    match Endpoint::parse(cluster, s) {
        Ok(Endpoint::Pod(id)) if cluster.pods[id].is_policy_pod() => Ok(id),
        Ok(Endpoint::Pod(_)) => Err(format!(
            "{s} is a host-network pod: no policy applies to it (it is its node's address; ask about a pod with its own network)"
        )),
        Ok(_) => Err(format!("{s:?} is not a pod (expected ns/pod)")),
        Err(e) => Err(e.to_string()),
    }
}

/// Exit status: 0 printed, 2 bad input (unreadable manifests, unknown namespace or pod).
pub fn run(args: Args) -> i32 {
    let (cluster, _ir, g) = match load_graph(&args.files) {
        Ok(x) => x,
        Err(code) => return code,
    };
    for ns in &args.namespaces {
        if !cluster.namespaces.contains_key(ns) {
            eprintln!("error: --namespace {ns}: no such namespace in the manifests");
            return 2;
        }
    }
    let pod = match args.pod.as_deref().map(|p| policy_pod(&cluster, p)) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => {
            eprintln!("error: --pod: {e}");
            return 2;
        }
    };
    let filter = Filter { namespaces: args.namespaces.clone(), pod, ports: PortSet::select(args.port, args.protocol) };
    let view = g.view(&filter);
    match args.output {
        Format::Table => super::emit(&view.render_table(&cluster)),
        Format::Dot => super::emit(&view.render_dot(&cluster)),
        Format::Json => super::emit(&(serde_json::to_string_pretty(&view.to_json(&cluster)).unwrap_or_default() + "\n")),
    }
    0
}

/// What `who-can-reach` and `reach-from` take.
#[derive(clap::Args)]
pub struct QueryArgs {
    /// Manifest files or folders (cluster snapshot and policies); repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// The pod asked about: `ns/pod`.
    pub pod: String,
    /// Only this destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only this protocol (TCP, UDP or SCTP); default: all three.
    #[arg(long, value_parser = super::explain::parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: super::Output,
}

/// Run `who-can-reach` (`incoming`) or `reach-from`. Exit status: 0
/// answered, 2 bad input (unreadable manifests, not a policy pod).
pub(super) fn run_query(args: QueryArgs, incoming: bool) -> i32 {
    let (cluster, ir, g) = match load_graph(&args.files) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let pod = match policy_pod(&cluster, &args.pod) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let only = PortSet::select(args.port, args.protocol);
    let sides = crate::graph::sides::Sides::new(&cluster, &ir);
    let t = Instant::now();
    let answer = if incoming {
        crate::graph::query::who_can_reach(&g, &cluster, &sides, pod, only.as_ref())
    } else {
        crate::graph::query::reach_from(&g, &cluster, &sides, pod, only.as_ref())
    };
    tracing::info!("answered in {:?}", t.elapsed());
    let Some(answer) = answer else {
        eprintln!("error: {} is in no workload", args.pod);
        return 2;
    };
    match args.output {
        super::Output::Json => super::emit(&(serde_json::to_string_pretty(&answer).unwrap_or_default() + "\n")),
        super::Output::Text => super::emit(&crate::graph::render::render_reach(&answer)),
    }
    0
}
