//! Several suites in one call. Every image of every suite is built first, before any cluster
//! exists; then each suite is a run of its own (`xtask e2e <suite>`, a process with its own
//! cluster, lock and log folder, whose build finds every image built), one after another, or
//! `--jobs` side by side with their names and host ports kept apart. One table at the end.

use std::{
    sync::{mpsc, Mutex},
    time::{Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use super::Options;
use crate::{
    build_images,
    cmd::{self, step},
    project::{self, write_file},
    suite::{Component, Suite},
    ui,
};

/// Set for a suite's run: where it leaves its summary for the table.
pub const RESULT_VARIABLE: &str = "XTASK_SUITE_RESULT";

/// One suite's run: its cluster name, the host ports moved apart from the others', and where
/// its summary and (side by side) its output go.
struct Plan {
    suite: String,
    name: String,
    env: Vec<(String, String)>,
    result: Utf8PathBuf,
    output: Utf8PathBuf,
}

pub fn run(sh: &Shell, flags: &Options, suites: &[Suite]) -> Result<()> {
    let root = project::root();
    let started = Instant::now();
    let id = project::utc_timestamp(SystemTime::now());
    let dir = project::xtask_dir(&root).join("suites").join(&id);
    println!("{}", ui::bold("==> building the images of every suite, before any cluster exists"));
    build_all(sh, &root, flags, suites)?;
    let plans = plan(flags, suites, &dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {dir}: {}", project::WRITABLE_TARGET))?;
    let exe = std::env::current_exe().context(
        "finding the xtask's own binary to run each suite: run it through `cargo xtask`",
    )?;
    let exe = Utf8PathBuf::from_path_buf(exe)
        .map_err(|p| anyhow::anyhow!("{} is not UTF-8: use a UTF-8 path", p.display()))?;
    // A shell per run: runs side by side are on threads of their own.
    let run_one = |plan: &Plan| -> bool {
        let Ok(sh) = Shell::new() else { return false };
        sh.change_dir(&root);
        let args = child_args(flags, &plan.suite, &plan.name);
        let env = plan.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let child = cmd!(sh, "{exe} {args...}").envs(env).env(RESULT_VARIABLE, &plan.result);
        let child = match flags.jobs {
            1 => step(child).echo(),
            _ => step(child).log(&plan.output),
        };
        child.output().is_ok_and(|out| out.success())
    };
    let passed: Vec<bool> = match flags.jobs {
        1 => plans
            .iter()
            .map(|plan| {
                println!(
                    "{}",
                    ui::bold(&format!("==> suite {} (cluster {})", plan.suite, plan.name))
                );
                cmd::check_interrupted().is_ok() && run_one(plan)
            })
            .collect(),
        jobs => side_by_side(&plans, jobs, &run_one),
    };
    let table = table(&plans, &passed, started.elapsed().as_secs_f64());
    print!("{table}");
    let last_run = project::xtask_dir(&root).join("last-run.txt");
    if let Err(err) = std::fs::write(&last_run, &table) {
        eprintln!(
            "warning: writing {last_run} failed ({err}): the table above is complete; {}",
            project::WRITABLE_TARGET
        );
    }
    let failed: Vec<&str> =
        plans.iter().zip(&passed).filter(|(_, ok)| !**ok).map(|(p, _)| p.suite.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} suites failed ({}): each one's summary and logs are named in the table above",
            failed.len(),
            plans.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Every suite's services and third-party images, each once (a service two suites deploy is
/// one image): what each suite's own build then finds.
fn build_all(sh: &Shell, root: &Utf8Path, flags: &Options, suites: &[Suite]) -> Result<()> {
    let mut services: Vec<Component> = Vec::new();
    let mut images: Vec<&Component> = Vec::new();
    for suite in suites {
        for component in &suite.components {
            match component.build() {
                Some(build) => match services.iter().find(|s| s.name == component.name) {
                    Some(known) if known.build() != Some(build) => bail!(
                        "{}: {} is built differently than in another suite (package or Dockerfile): a service is one image; build it the same way in every suite, or name them apart",
                        suite.file, component.name
                    ),
                    Some(_) => {}
                    None => services.push(component.clone()),
                },
                None if images.iter().any(|i| i.source == component.source) => {}
                None => images.push(component),
            }
        }
    }
    let request = build_images::Request {
        services,
        coverage: flags.coverage,
        build_mode: flags.build_mode,
        engine: flags.target.engine,
        no_cache: false,
        archive: false,
        registry: flags.target.registry.clone(),
    };
    build_images::build(sh, root, &request)?;
    build_images::third_party(sh, root, &request, &images)?;
    Ok(())
}

/// Each suite's cluster name (`<name>-<suite>` under `--cluster-name`, else its own) and, when
/// suites run side by side, its host ports: one another suite's run already uses moves to a
/// free port (through `<NAME>_HOST_PORT`, which the run reads).
fn plan(flags: &Options, suites: &[Suite], dir: &Utf8Path) -> Vec<Plan> {
    let mut taken: Vec<u16> = Vec::new();
    suites
        .iter()
        .map(|suite| {
            let name = match &flags.target.cluster_name {
                Some(name) => format!("{name}-{}", suite.name),
                None => format!("{}-e2e", suite.name),
            };
            let mut env = Vec::new();
            for component in &suite.components {
                let mut port = component.host_port;
                if flags.jobs > 1 && taken.contains(&port) {
                    let free =
                        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
                    port = free.map_or(port, |a| a.port());
                    env.push((component.variable("HOST_PORT"), port.to_string()));
                }
                taken.push(port);
            }
            let (result, output) = (
                dir.join(format!("{}.summary", suite.name)),
                dir.join(format!("{}.out", suite.name)),
            );
            Plan { suite: suite.name.clone(), name, env, result, output }
        })
        .collect()
}

/// The command line of one suite's run: the flags of this one, its cluster name, its runner's
/// arguments.
fn child_args(flags: &Options, suite: &str, name: &str) -> Vec<String> {
    let target = &flags.target;
    let mut args: Vec<String> =
        vec!["e2e".into(), suite.into(), "--cluster-name".into(), name.into()];
    args.extend(["--cluster".into(), target.cluster.name().into()]);
    args.extend(["--build-mode".into(), flags.build_mode.as_str().into()]);
    let switches = [
        (flags.coverage, "--coverage"),
        (flags.keep_cluster, "--keep-cluster"),
        (flags.reuse_cluster, "--reuse-cluster"),
        (flags.keep_namespace, "--keep-namespace"),
    ];
    args.extend(switches.into_iter().filter(|(on, _)| *on).map(|(_, flag)| flag.to_string()));
    let values = [
        ("--engine", target.engine.map(|e| e.program().to_string())),
        ("--node-image", target.node_image.clone()),
        ("--registry", target.registry.as_ref().map(|r| r.to_string())),
        ("--kubeconfig", target.access.kubeconfig.as_ref().map(|k| k.to_string())),
        ("--context", target.access.context.clone()),
    ];
    for (flag, value) in values {
        args.extend(value.into_iter().flat_map(|v| [flag.to_string(), v]));
    }
    if target.registry.as_ref().is_some_and(|r| r.insecure) {
        args.push("--registry-insecure".into());
    }
    if !flags.test_args.is_empty() {
        args.push("--".into());
        args.extend(flags.test_args.iter().cloned());
    }
    args
}

/// Up to `jobs` suites at a time, each on a thread of its own; says as each starts and ends.
fn side_by_side(
    plans: &[Plan],
    jobs: usize,
    run_one: &(dyn Fn(&Plan) -> bool + Sync),
) -> Vec<bool> {
    let next = Mutex::new(0usize);
    let (done, results) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(plans.len()) {
            let done = done.clone();
            let next = &next;
            scope.spawn(move || loop {
                let index = {
                    let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                    let index = *next;
                    *next += 1;
                    index
                };
                let Some(plan) = plans.get(index) else { break };
                if cmd::interrupted() {
                    let _ = done.send((index, false));
                    continue;
                }
                println!(
                    "    {}: started on the cluster {}, output in {}",
                    plan.suite, plan.name, plan.output
                );
                let passed = run_one(plan);
                println!("    {}: {}", plan.suite, if passed { "passed" } else { "failed" });
                let _ = done.send((index, passed));
            });
        }
    });
    drop(done);
    let mut passed = vec![false; plans.len()];
    for (index, ok) in results {
        passed[index] = ok;
    }
    passed
}

/// The table of every suite's run, from the summaries they left: result, phases, tests,
/// coverage, and where the rest is.
fn table(plans: &[Plan], passed: &[bool], seconds: f64) -> String {
    const PHASES: [&str; 7] = [
        "2. build images",
        "3. create cluster",
        "4. load images",
        "5. deploy",
        "6. test",
        "8. coverage",
        "9. teardown",
    ];
    let mut out = format!(
        "{:<14} {:<7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}  {:<34} {}\n",
        "suite",
        "result",
        "build",
        "create",
        "load",
        "deploy",
        "test",
        "coverage",
        "teardown",
        "tests",
        "coverage"
    );
    for (plan, ok) in plans.iter().zip(passed) {
        let summary = std::fs::read_to_string(&plan.result).unwrap_or_default();
        let row = |label: &str| {
            summary.lines().find_map(|line| {
                let line = line.trim_start();
                let rest = line.strip_prefix(label)?;
                rest.starts_with("  ").then(|| rest.trim().to_string())
            })
        };
        let cells: Vec<String> = PHASES.iter().map(|p| row(p).unwrap_or("-".into())).collect();
        let result = if *ok { "passed" } else { "failed" };
        let tests = row("tests").unwrap_or("-".into());
        let coverage = row("coverage total").unwrap_or("-".into());
        out += &format!("{:<14} {result:<7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}  {tests:<34} {coverage}\n", plan.suite, cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]);
    }
    for plan in plans {
        let summary = std::fs::read_to_string(&plan.result).unwrap_or_default();
        let logs = summary
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("logs").map(|r| r.trim().to_string()));
        match logs {
            Some(logs) => out += &format!("{}: summary {}, logs {logs}\n", plan.suite, plan.result),
            None if plan.result.exists() => {
                out += &format!("{}: summary {}\n", plan.suite, plan.result)
            }
            None => {
                out += &format!(
                    "{}: ended before its summary (see its output above or in {})\n",
                    plan.suite, plan.output
                )
            }
        }
    }
    out + &format!("{} suites in {seconds:.1}s\n", plans.len())
}

/// Writes the summary of one suite's run where the call for several asked for it (see
/// `RESULT_VARIABLE`); best effort: the table says when it is missing.
pub fn leave_result(text: &str) {
    let Ok(path) = std::env::var(RESULT_VARIABLE) else { return };
    let path = Utf8PathBuf::from(path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    if let Err(err) = write_file(dir, name, text) {
        eprintln!("warning: {err:#}");
    }
}
