//! `steward validate FILE...`: every error as FILE:LINE:COL: field: message.
//! Sub-workflow steps are checked against the other files given and the
//! workflows in the configured folders.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use steward::config::Config;
use steward::plugins::declared_names;
use steward::workflow::{Workflow, check_links, load_dir, load_file};

pub fn validate(files: &[PathBuf], config: &Config) -> anyhow::Result<ExitCode> {
    let plugins = declared_names(config)?;
    let mut failed = false;
    let mut valid: Vec<(PathBuf, Arc<Workflow>)> = Vec::new();
    for file in files {
        match load_file(file, &plugins) {
            Ok(w) => valid.push((file.clone(), Arc::new(w))),
            Err(errors) => {
                failed = true;
                eprintln!("{errors}");
            }
        }
    }
    // What sub-workflow steps may name: the files given first, then the
    // configured folders' workflows.
    let mut known: Vec<Arc<Workflow>> = valid.iter().map(|(_, w)| w.clone()).collect();
    for dir in config.workflows.iter().filter(|d| d.is_dir()) {
        for w in load_dir(dir, &plugins)
            .unwrap_or_default()
            .into_iter()
            .flatten()
        {
            if !known
                .iter()
                .any(|k| k.name == w.name && k.version == w.version)
            {
                known.push(Arc::new(w));
            }
        }
    }
    let find = |name: &str, version: Option<u32>| {
        known
            .iter()
            .filter(|w| w.name == name && version.is_none_or(|v| v == w.version))
            .max_by_key(|w| w.version)
            .cloned()
    };
    for (file, w) in &valid {
        let problems = check_links(w, &find);
        if !problems.is_empty() {
            failed = true;
            for problem in problems {
                eprintln!("{problem}");
            }
            continue;
        }
        let steps = w.all_steps().len();
        println!(
            "{}: ok (workflow {} version {}, {steps} steps)",
            file.display(),
            w.name,
            w.version
        );
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
