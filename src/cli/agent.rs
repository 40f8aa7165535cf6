//! `netfence agent`: the per-node enforcement agent (see `crate::agent`).
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM, Ctrl-C), 1 when the agent
//! died at run time, 2 for bad flags or an environment it cannot start in
//! (no kubeconfig, metrics port taken, no conntrack table to cut with). A
//! removed flag such as `--conntrack` is refused like any unknown one, so a
//! stale DaemonSet fails loudly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::agent::drop_log::DropLogger;
use crate::agent::rule_counters::RuleCounters;
use crate::agent::{self, Dataplane, DryRun, Established, NetlinkTable, ReconcileConfig, Source, Table};
use crate::apply::NftKernel;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Name of the node this agent enforces for. In the DaemonSet it comes
    /// from the downward API (`--node $(NODE_NAME)`).
    #[arg(long, value_name = "NAME")]
    pub node: String,

    /// Kubeconfig to reach the API server with. Without it (and without
    /// --source) the agent uses its pod's service account.
    #[arg(long, value_name = "PATH", conflicts_with = "source")]
    pub kubeconfig: Option<PathBuf>,

    /// Read the cluster from a folder of manifests (*.yaml, *.yml, *.json,
    /// recursively) instead of the API server, reading a file again when it
    /// changes. A file that fails to load keeps its last valid objects and
    /// the error is logged with file:line; nothing is enforced until every
    /// file has loaded once.
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,

    /// How often --source checks its folder's files for changes (identity,
    /// size and times, following symlinks).
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Period of the full resync, which reapplies the whole ruleset to repair
    /// drift (someone else changing our table).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Quiet period after a cluster change before syncing. The default, 0,
    /// applies a change at once when the agent is idle; changes arriving
    /// while a sync runs are applied together by the next one either way,
    /// so a burst costs a few transactions without any wait.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub debounce: Duration,

    /// Longest a steady stream of changes may delay a sync (with --debounce).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub max_delay: Duration,

    /// Longest wait between retries after failed syncs (the delay starts at
    /// 500ms and doubles). Meanwhile the last good ruleset stays applied and
    /// /readyz reports unready.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_retry_delay: Duration,

    /// Connections open when a policy change denies them: `cut` (after each
    /// change, the conntrack entries the new rules deny are deleted, judged
    /// one by one after NAT, so allowed connections and their Service NAT
    /// are untouched; the entries of a pod that went away go with it) or
    /// `keep` (they carry on until they close; only new connections follow
    /// the change). `cut` talks to the kernel's conntrack over netlink
    /// (NET_ADMIN) and fails at start without it.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = EstablishedArg::Cut)]
    pub established: EstablishedArg,

    /// Address serving /healthz, /readyz and /metrics (Prometheus).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], agent::METRICS_PORT)))]
    pub metrics_addr: SocketAddr,

    /// Least time between two reads of the rule counters for /metrics
    /// (`nft -j -t list table`, on scrape, never on the sync path); scrapes
    /// in between serve the last values.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rule_counters_interval: Duration,

    /// Most `netfence_rule_packets_total` series (one per policy, direction
    /// and rule); past it, new ones add to `policy="(other)"`.
    #[arg(long, value_name = "N", default_value_t = RuleCounters::MAX_SERIES)]
    pub rule_counters_max_series: usize,

    /// Log the packets netfence drops, one line each naming the source and
    /// destination (pod or node), protocol, port, direction and what
    /// decided it (the isolating policies of a default deny, in `explain`'s
    /// words), and count them per policy in /metrics: `off`, `sampled` (one
    /// drop in --drop-log-sample, at random) or `full`. The kernel selects
    /// and rate-limits (--drop-log-rate for the whole node), so a flood of
    /// denied packets costs the node at most that many messages a second;
    /// every drop is still counted by the per-rule counters. Read over
    /// NFLOG (netlink, in-process; CAP_NET_ADMIN).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = DropLogArg::Off)]
    pub drop_log: DropLogArg,

    /// With `--drop-log sampled`: log one drop in N.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub drop_log_sample: u32,

    /// Most drop log lines per second for the whole node.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub drop_log_rate: u32,

    /// The NFLOG group the drop log uses (one reader per group and node).
    #[arg(long, value_name = "GROUP", default_value_t = 1706)]
    pub drop_log_group: u16,

    /// Log format: human-readable `text`, or one JSON object per line.
    /// Verbosity follows NETFENCE_LOG (default `info`, e.g. `netfence=debug`).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How often to check the node's preconditions: a Linux bridge carrying
    /// pod addresses (bridge CNIs, Flannel) needs br_netfilter with
    /// net.bridge.bridge-nf-call-iptables/-ip6tables = 1, or same-node pod
    /// traffic bypasses every rule. A failure makes /readyz 503 with the
    /// reason and sets netfence_precondition_failed{reason}; the rules stay
    /// applied. 0s: never check.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub precondition_interval: Duration,

    /// Watch and log what would be enforced, but never touch nftables or
    /// conntrack: for trying the agent on a cluster.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EstablishedArg {
    Keep,
    Cut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DropLogArg {
    Off,
    Sampled,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Args {
    /// `None` when off (or a dry run, which touches no nftables).
    pub fn drop_log(&self) -> Option<crate::nft::drop_log::DropLog> {
        use crate::nft::drop_log::{DropLog, Mode};
        let mode = match (self.drop_log, self.dry_run) {
            (DropLogArg::Off, _) | (_, true) => return None,
            (DropLogArg::Sampled, false) => Mode::Sampled { one_in: self.drop_log_sample },
            (DropLogArg::Full, false) => Mode::Full,
        };
        Some(DropLog { mode, group: self.drop_log_group, per_second: self.drop_log_rate })
    }

    pub fn config(&self) -> agent::Config {
        let source = match (&self.source, &self.kubeconfig) {
            (Some(dir), _) => Source::Folder { dir: dir.clone(), poll: self.poll_interval },
            (None, kubeconfig) => Source::Kube { kubeconfig: kubeconfig.clone() },
        };
        agent::Config {
            node: self.node.clone(),
            source,
            reconcile: ReconcileConfig {
                debounce: self.debounce,
                max_delay: self.max_delay,
                resync: self.resync_interval,
                retry_max: self.max_retry_delay,
                established: match (self.established, self.dry_run) {
                    (EstablishedArg::Cut, false) => Established::Cut,
                    _ => Established::Keep,
                },
                ..ReconcileConfig::default()
            },
            metrics_addr: self.metrics_addr,
            rule_counters: None,
            drop_log: None,
            precondition_interval: Some(self.precondition_interval).filter(|d| !d.is_zero()),
            absent_kind_retry: agent::ABSENT_KIND_RETRY,
        }
    }
}

/// The dataplane the agent drives. The nftables one (compile, diff, apply
/// through `apply::Kernel`) is plugged in here.
fn dataplane(
    args: &Args,
    counters: Option<Arc<RuleCounters>>,
    drop_log: Option<Arc<DropLogger>>,
) -> anyhow::Result<Box<dyn Dataplane>> {
    if args.dry_run {
        return Ok(Box::new(DryRun));
    }
    // Deltas through one kept-open `nft -i`: pod churn then costs the
    // kernel's work, not a process start per event (`apply_session`).
    let kernel = crate::apply_session::SessionKernel::new(vec!["nft".into()]);
    let mut dp = crate::agent::NftDataplane::new(&args.node, Box::new(kernel));
    if let Some(c) = counters {
        dp = dp.with_rule_counters(c);
    }
    if let Some(d) = drop_log {
        dp = dp.with_drop_log(d);
    }
    Ok(Box::new(dp))
}

/// The conntrack table `cut` deletes from: the host's, through netlink,
/// checked at start so a node where it cannot work fails loudly.
fn conntrack(args: &Args) -> anyhow::Result<Option<Box<dyn Table>>> {
    if args.config().reconcile.established == Established::Keep {
        return Ok(None);
    }
    let table = NetlinkTable::open().context("--established cut (the default) deletes conntrack entries over netlink")?;
    Ok(Some(Box::new(table)))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETFENCE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A subscriber may already be installed (tests); keep it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn run(args: Args) -> i32 {
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    runtime.block_on(async {
        let started = async {
            // Read through a plain `nft` of its own: the sync path's session
            // is never borrowed by a scrape.
            let counters = (!args.dry_run).then(|| {
                Arc::new(RuleCounters::new(Box::new(NftKernel::new()), args.rule_counters_interval, args.rule_counters_max_series))
            });
            let drop_log = args.drop_log().map(DropLogger::new);
            let dataplane = dataplane(&args, counters.clone(), drop_log.clone())?;
            let conntrack = conntrack(&args)?;
            let config = agent::Config { rule_counters: counters, drop_log, ..args.config() };
            agent::start(config, dataplane, conntrack).await
        };
        let running = match started.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot start the agent: {e:#}");
                return 2;
            }
        };
        match running.run_until(shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("agent stopped");
                0
            }
            Err(e) => {
                tracing::error!("agent failed: {e:#}");
                1
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, String> {
        let argv = std::iter::once("agent").chain(argv.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.args).map_err(|e| e.kind().to_string())
    }

    #[test]
    fn defaults() {
        let a = parse(&["--node", "n1"]).unwrap();
        let c = a.config();
        assert!(matches!(c.source, Source::Kube { kubeconfig: None }));
        assert_eq!(c.reconcile.resync, Duration::from_secs(300));
        assert_eq!(c.reconcile.debounce, Duration::ZERO);
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9964");
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(c.reconcile.established, Established::Cut);
    }

    #[test]
    fn flags() {
        let a = parse(&["--node", "n1", "--source", "/tmp/x", "--poll-interval", "1s", "--resync-interval", "1m30s", "--established", "keep"])
            .unwrap();
        let c = a.config();
        assert!(matches!(&c.source, Source::Folder { dir, poll } if dir.to_str() == Some("/tmp/x") && *poll == Duration::from_secs(1)));
        assert_eq!(c.reconcile.resync, Duration::from_secs(90));
        assert_eq!(c.reconcile.established, Established::Keep);
        assert!(conntrack(&a).unwrap().is_none(), "keep needs no table");
        // A dry run touches no conntrack either.
        let a = parse(&["--node", "n1", "--dry-run"]).unwrap();
        assert_eq!(a.config().reconcile.established, Established::Keep);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert!(parse(&["--node", "n1", "--log-format", "xml"]).is_err());
        assert!(parse(&["--node", "n1", "--established", "drop"]).is_err());
        assert!(parse(&["--node", "n1", "--resync-interval", "soon"]).is_err());
        assert!(parse(&["--node", "n1", "--source", "d", "--kubeconfig", "k"]).is_err());
    }

    #[test]
    fn removed_flags_are_refused() {
        // A DaemonSet still passing them must fail loudly, not run with a
        // behaviour it did not ask for.
        let unknown = clap::error::ErrorKind::UnknownArgument.to_string();
        let check = |argv: &[&str]| assert_eq!(parse(argv).err(), Some(unknown.clone()), "{argv:?}");
        check(&["--node", "n1", "--conntrack", "/usr/sbin/conntrack"]);
    }
}
