//! Command-line wiring: one file per subcommand, each with its clap `Args`
//! (a doc comment on every flag) and a `run` returning the exit status.
//! Exit statuses everywhere: 0 ok, 1 a check failed, 2 bad usage or input.

mod agent;
mod bench;
mod compile;
mod completions;
mod diff;
mod explain;
mod gen;
mod graph;
mod lint;
mod reach_from;
mod test;
mod who_can_reach;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Kubernetes NetworkPolicy enforcement on nftables.
#[derive(Parser)]
#[command(name = "netfence", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run policy tests (see policy-tests/ and the test format).
    Test(test::Args),
    /// Explain why a flow is allowed or denied.
    Explain(explain::Args),
    /// Run the per-node agent: watch the cluster, keep this node's nftables in step.
    Agent(agent::Args),
    /// Print the nftables program of one node.
    Compile(compile::Args),
    /// Warn about the classic NetworkPolicy mistakes.
    Lint(lint::Args),
    /// Show which flows between pods a policy change opens or closes.
    Diff(diff::Args),
    /// Write a seeded, realistic cluster of a given size as manifests.
    Gen(gen::Args),
    /// Measure compile, apply and explain at scale on generated clusters.
    Bench(bench::Args),
    /// Print the allow graph: workloads, namespaces, ipBlocks and outside, edges with ports and policies.
    Graph(graph::Args),
    /// List every source that may open a connection to a pod (both sides considered).
    WhoCanReach(who_can_reach::Args),
    /// List every destination a pod may open a connection to (both sides considered).
    ReachFrom(reach_from::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
}

/// The name people typed: `kubectl netfence` when kubectl runs us as its
/// plugin (it execs `kubectl-netfence` with the remaining arguments), so
/// usage lines and errors show what to type again.
fn bin_name() -> &'static str {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let file = std::path::Path::new(&argv0).file_name().and_then(|f| f.to_str()).unwrap_or_default();
    if file.strip_suffix(".exe").unwrap_or(file) == "kubectl-netfence" {
        "kubectl netfence"
    } else {
        "netfence"
    }
}

/// The clap command as this invocation presents it.
fn command() -> clap::Command {
    Cli::command().bin_name(bin_name())
}

pub fn main() -> i32 {
    let cli = match command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // The agent sets up its own logging (--log-format, default level info).
    let command = match cli.command {
        Command::Agent(a) => return agent::run(a),
        other => other,
    };
    init_logging();
    match command {
        Command::Agent(_) => unreachable!("dispatched above"),
        Command::Test(a) => test::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Compile(a) => compile::run(a),
        Command::Lint(a) => lint::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Gen(a) => gen::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Graph(a) => graph::run(a),
        Command::WhoCanReach(a) => who_can_reach::run(a),
        Command::ReachFrom(a) => reach_from::run(a),
        Command::Completions(a) => completions::run(a),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETFENCE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Output format shared by the subcommands that print reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Print a command's output. A reader that goes away early (`| head`) is
/// not an error worth a panic: the output simply stops.
pub(crate) fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Load manifests for a subcommand; on bad input print the located error
/// and return the exit status 2 to hand back.
pub(crate) fn load(files: &[std::path::PathBuf]) -> Result<crate::model::Cluster, i32> {
    match crate::model::load_paths(files) {
        Ok((cluster, notices)) => {
            for n in notices {
                tracing::info!("{n}");
            }
            warn_unenforceable(&cluster, &mut std::collections::BTreeSet::new());
            Ok(cluster)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(2)
        }
    }
}

/// Say once (per message in `seen`) what of the cluster's policies cannot
/// be judged from manifests: `domainNames` peers (see
/// [`crate::model::cluster_policy::ClusterPolicy::domain_names_notice`]).
/// A warning, so it shows without `NETFENCE_LOG`.
pub(crate) fn warn_unenforceable(cluster: &crate::model::Cluster, seen: &mut std::collections::BTreeSet<String>) {
    for n in cluster.cluster_policies.iter().filter_map(|p| p.domain_names_notice()) {
        if seen.insert(n.clone()) {
            eprintln!("warning: {n}");
        }
    }
}

/// The allow graph and its queries judge NetworkPolicies only: their
/// hubs (`*/open-egress`: "every port to every open workload") and address
/// nodes (`outside`: "what rules naming no peer allow") have no way to say
/// "except where an Admin rule denies" or "these networks, those nodes",
/// so on a cluster with cluster-scoped policies their answers would be
/// wrong, and they refuse it (exit 2) rather than answer. `diff`, `test`
/// and `explain` judge every tier.
pub(crate) fn refuse_cluster_policies(cluster: &crate::model::Cluster, what: &str) -> Result<(), i32> {
    if let Some(p) = cluster.cluster_policies.first() {
        eprintln!(
            "error: {what} does not model cluster-scoped policies yet ({} {:?} at {}, {} in all): use `netfence diff` (every tier), `netfence explain` or `netfence test`",
            p.kind.name(),
            p.name,
            p.origin,
            cluster.cluster_policies.len()
        );
        return Err(2);
    }
    Ok(())
}
