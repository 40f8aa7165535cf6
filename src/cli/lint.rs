//! `netfence lint -f snap.yaml [-f policies/] [--format text|json|sarif] [--disable ID]...`

use std::path::PathBuf;

use crate::lint::{self, render, Config};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `file:line:col: warning[id]: ...` diagnostics with a `= fix:` line.
    Text,
    /// One JSON document: findings and a summary.
    Json,
    /// SARIF 2.1.0, for code-scanning UIs (GitHub, GitLab, IDEs).
    Sarif,
}

#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders (cluster snapshot and policies); repeatable.
    /// With pods and namespaces in the input, rules judge selectors, ports
    /// and DNS against them; with policies alone, only the policies' shape.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', alias = "output", value_enum, default_value = "text")]
    pub format: Format,
    /// Do not run rule ID (repeatable); see docs/lint.md for the ids.
    #[arg(long = "disable", value_name = "ID")]
    pub disable: Vec<String>,
}

/// Exit status: 0 no findings, 1 findings, 2 bad input or unknown rule id.
pub fn run(args: Args) -> i32 {
    let mut config = Config::default();
    for id in &args.disable {
        if let Err(e) = config.disable(id) {
            eprintln!("error: --disable: {e}");
            return 2;
        }
    }
    let start = std::time::Instant::now();
    let (cluster, sources) = match crate::model::load_paths_with_sources(&args.files) {
        Ok((cluster, notices, sources)) => {
            for n in notices {
                tracing::info!("{n}");
            }
            (cluster, sources)
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let loaded = start.elapsed();
    let ir = crate::ir::resolve(&cluster);
    let resolved = start.elapsed();
    let findings = lint::lint(&cluster, &ir, &sources, &config);
    tracing::debug!(?loaded, resolve = ?(resolved - loaded), lint = ?(start.elapsed() - resolved), "lint timings");
    // Cluster policies are linted too, so the summary counts them.
    let policies = cluster.policies.len() + cluster.cluster_policies.len();
    match args.format {
        Format::Text => print!("{}", render::text(&findings, policies)),
        Format::Json => println!("{}", pretty(&render::json(&findings, policies))),
        Format::Sarif => println!("{}", pretty(&render::sarif(&findings))),
    }
    i32::from(!findings.is_empty())
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
