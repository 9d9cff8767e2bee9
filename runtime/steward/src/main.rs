//! The `steward` binary: parses the command line and hands over to
//! [`cli`]. Errors reach the user as one line that says what to do next.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator spent about a sixth of the server's time under load
/// (malloc/free contention across the runtime's threads); mimalloc's
/// thread-local heaps avoid that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
