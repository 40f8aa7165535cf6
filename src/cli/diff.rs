//! `netfence diff -f cluster.yaml --before old/ --after new/`

use std::path::PathBuf;

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
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: super::Output,
    /// Exit with status 1 when some flow changes verdict (like `git diff --exit-code`).
    #[arg(long)]
    pub exit_code: bool,
}

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
    let (ib, ia) = (crate::ir::resolve(&before), crate::ir::resolve(&after));
    let changes = crate::impact::impact((&before, &ib), (&after, &ia));
    match args.output {
        super::Output::Json => println!("{}", serde_json::to_string_pretty(&changes).unwrap_or_default()),
        super::Output::Text => print!("{}", crate::impact::render_text(&changes)),
    }
    i32::from(args.exit_code && !changes.is_empty())
}
