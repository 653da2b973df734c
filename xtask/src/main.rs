//! `cargo xtask`: parses the command line and dispatches to one module per task.

mod build_images;
mod check;
mod cluster;
mod cmd;
mod covdata_report;
mod coverdata;
mod doctor;
mod e2e;
mod engine;
mod flags;
mod http;
mod lint_dockerfiles;
mod lock;
mod manifests;
mod project;
mod registry;
mod suite;
mod ui;

use std::process::ExitCode;

use flags::Task;
use xshell::Shell;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|arg| arg == cmd::REAPER_TASK) {
        return cmd::reap();
    }
    let task = match flags::parse(std::env::args_os().skip(1).collect()) {
        Ok(task) => task,
        Err(usage) => {
            eprintln!("error: {usage}");
            return ExitCode::from(2);
        }
    };
    let result = run(task);
    cmd::remove_go_tmpdir();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    cmd::install_signal_handler();
    let sh = Shell::new()?;
    sh.change_dir(project::root());
    match task {
        Task::Help(text) => {
            print!("{text}");
            Ok(())
        }
        Task::BuildImages(request, services) => build_images::run(&sh, request, &services),
        Task::Doctor(flags) => doctor::run(&sh, &flags),
        Task::E2e(flags) => e2e::run(&sh, &flags),
        Task::CovdataReport(flags) => covdata_report::run(&sh, &flags),
        Task::LintDockerfiles(flags) => lint_dockerfiles::run(&sh, &flags),
    }
}
