//! `steward validate FILE...`: every error as FILE:LINE:COL: field: message.

use std::path::PathBuf;
use std::process::ExitCode;

use steward::config::Config;
use steward::plugins::declared_names;
use steward::workflow::load_file;

pub fn validate(files: &[PathBuf], config: &Config) -> anyhow::Result<ExitCode> {
    let plugins = declared_names(config)?;
    let mut failed = false;
    for file in files {
        match load_file(file, &plugins) {
            Ok(w) => {
                let steps = w.all_steps().len();
                println!(
                    "{}: ok (workflow {} version {}, {steps} steps)",
                    file.display(),
                    w.name,
                    w.version
                );
            }
            Err(errors) => {
                failed = true;
                eprintln!("{errors}");
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
