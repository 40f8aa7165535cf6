//! `netfence diff -f cluster.yaml --before old/ --after new/ [--format text|json|markdown]`

use std::path::PathBuf;

use crate::impact;
use crate::model::load_paths;

#[derive(clap::Args)]
pub struct Args {
    /// Manifests common to both sides (the cluster snapshot); repeatable.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Policies (files or folders) before the change; repeatable.
    #[arg(long, required = true)]
    pub before: Vec<PathBuf>,
    /// Policies (files or folders) after the change; repeatable.
    #[arg(long, required = true)]
    pub after: Vec<PathBuf>,
    /// Output: one line per pod pair and port range (text), the grouped review report
    /// as JSON, or as Markdown for a pull-request comment.
    #[arg(short = 'o', long = "format", visible_alias = "output", value_enum, default_value = "text")]
    pub format: Format,
    /// Exit with status 1 when some flow changes verdict (like `git diff --exit-code`).
    #[arg(long)]
    pub exit_code: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

/// Exit status: 0 (1 with --exit-code when a flow changes), 2 bad input.
pub fn run(args: Args) -> i32 {
    let load = |side: &[PathBuf]| {
        let paths: Vec<PathBuf> = args.files.iter().chain(side).cloned().collect();
        load_paths(&paths).map(|(c, _)| c)
    };
    let (before, after) = match (load(&args.before), load(&args.after)) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for c in [&before, &after] {
        super::warn_unenforceable(c, &mut seen);
    }
    let t = std::time::Instant::now();
    let (ib, ia) = (crate::ir::resolve(&before), crate::ir::resolve(&after));
    let found = impact::impact((&before, &ib), (&after, &ia));
    tracing::info!(groups = found.groups.len(), "compared in {:?}", t.elapsed());
    match args.format {
        Format::Text => super::emit(&impact::render_text(&impact::pod_changes(&found, &after))),
        Format::Json => {
            super::emit(&(serde_json::to_string_pretty(&impact::report(&found)).unwrap_or_default() + "\n"));
        }
        Format::Markdown => super::emit(&impact::render_markdown(&impact::report(&found))),
    }
    i32::from(args.exit_code && !found.changes.is_empty())
}
