//! `netfence lint -f snap.yaml [-f policies/]`

use std::path::PathBuf;


#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders (cluster snapshot and policies); repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: super::Output,
}

/// Exit status: 0 no warnings, 1 warnings, 2 bad input.
pub fn run(args: Args) -> i32 {
    let cluster = match super::load(&args.files) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let ir = crate::ir::resolve(&cluster);
    let warnings = crate::lint::lint(&cluster, &ir);
    match args.output {
        super::Output::Json => println!("{}", serde_json::to_string_pretty(&warnings).unwrap_or_default()),
        super::Output::Text => {
            for w in &warnings {
                println!("{w}");
            }
            println!("{} warning(s) in {} policies", warnings.len(), cluster.policies.len());
        }
    }
    i32::from(!warnings.is_empty())
}
