//! `cargo xtask e2e-gateway`: build every image, then create the cluster, load the images at
//! once, deploy, test, collect coverage, and tear down, in that strict order. Building before
//! the cluster exists is the point: a Kind node left idle during a long build is what broke
//! `kind load` in the old flow. The cluster backend (`crate::cluster`) does the work of each
//! phase; this file only says the order.

use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use crate::{
    build_images::{self, Image},
    cluster::{self, Cluster, Settings},
    cmd::{self, check_interrupted, CmdError},
    covdata_report::{self, Coverage},
    coverdata, doctor, engine, flags, http,
    lock::{self, Lock},
    project::{self, Service, Services},
    ui,
};

mod gotest;
mod summary;

use summary::{Phase, Summary};

const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Run folders kept in target/xtask/logs/, this run's included.
const LOGS_KEPT: usize = 20;

/// Everything the phases share, decided once at the start.
struct Run {
    settings: Settings,
    flags: flags::E2eGateway,
    logs_dir: Utf8PathBuf,
}

pub fn run(sh: &Shell, flags: &flags::E2eGateway) -> anyhow::Result<()> {
    let root = project::root();
    let mut cluster = cluster::pick(sh, &flags.target, &root, Services::from_env()?)?;
    cmd::set_leftover(cluster.remove_command());
    // Sortable by time, and apart from a run of another cluster name in the same second.
    let id = format!("{}-{}", project::utc_timestamp(SystemTime::now()), flags.target.cluster_name);
    let logs = project::xtask_dir(&root).join("logs");
    prune_logs(&logs, LOGS_KEPT - 1);
    let settings = cluster.settings().clone();
    let run = Run { logs_dir: logs.join(&id), settings, flags: flags.clone() };
    let mut summary = Summary { id, backend: cluster.name(), ..Summary::default() };
    summary.start(&project::xtask_dir(&root));

    // Held until the end, teardown included: see lock.rs.
    let mut lock = None;
    let outcome = pipeline(sh, &run, cluster.as_mut(), &mut summary, &mut lock);
    // Teardown runs on success, failure and Ctrl-C alike; `--reuse-cluster` keeps the cluster
    // too: reusing it next time is the point of the flag.
    let keep = flags.keep_cluster || flags.reuse_cluster || flags.keep_namespace;
    // What the run wrote there (the test log, diagnostics), if anything.
    summary.logs = run.logs_dir.is_dir().then(|| run.logs_dir.clone());
    let teardown = summary.phase(Phase::Teardown, || {
        if !cluster.state().exists {
            println!("    nothing to tear down");
            return Ok(());
        }
        cluster.teardown(sh, keep)
    });
    // The next coverage run archives this data under its outcome; passed runs are kept longer.
    // The outcome is that of the run whose services wrote the data: a run that never started
    // them (it could not archive the data before it, say) leaves that run's outcome alone.
    if flags.coverage && cluster.state().deployed {
        if let Err(err) = coverdata::record_outcome(&root, outcome.is_ok()) {
            eprintln!("warning: {err:#}");
        }
    }
    if let Err(err) = outcome.as_ref().and(teardown.as_ref()) {
        let text = format!("{err:#}");
        summary.cause =
            err.chain().find_map(|e| e.downcast_ref::<CmdError>()).map(CmdError::one_line);
        summary.fix = engine::known_fix(&text, &root);
        summary.error = Some(text);
    }
    summary.finish(&project::xtask_dir(&root));
    if let (Err(_), Err(err)) = (&outcome, &teardown) {
        eprintln!("error: {err:#}");
    }
    if let (true, Some(err)) = (ui::github_actions(), &summary.error) {
        // The failed phase and its fix on the run's page, outside the folded groups.
        let (title, rest) = err.split_once(": ").unwrap_or(("e2e-gateway failed", err));
        let lines =
            rest.lines().take(1).chain(summary.cause.as_deref()).chain(summary.fix.as_deref());
        println!("{}", ui::error_annotation(title, &lines.collect::<Vec<_>>().join("\n")));
    }
    // The fix goes last, under the error it is for.
    outcome.and(teardown).map_err(|err| match &summary.fix {
        Some(fix) => anyhow::anyhow!("{err:#}\nfix: {fix}"),
        None => err,
    })
}

/// Removes all but the newest `keep` run folders (their names start with the time). Best
/// effort: a folder that cannot be removed is left, with a warning.
fn prune_logs(logs: &Utf8Path, keep: usize) {
    let entries = logs.read_dir_utf8().into_iter().flatten().flatten();
    let mut runs: Vec<Utf8PathBuf> = entries
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.into_path())
        .collect();
    runs.sort();
    for old in &runs[..runs.len().saturating_sub(keep)] {
        if let Err(err) = std::fs::remove_dir_all(old) {
            eprintln!("warning: removing the old run logs {old} failed: {err}; remove it by hand");
        }
    }
}

/// Phases 1 to 8. Returns Err on any failure, including failed tests.
fn pipeline(
    sh: &Shell,
    run: &Run,
    cluster: &mut dyn Cluster,
    summary: &mut Summary,
    lock: &mut Option<Lock>,
) -> anyhow::Result<()> {
    *lock = Some(summary.phase(Phase::Preflight, || preflight(sh, run, cluster))?);
    let images = summary.phase(Phase::BuildImages, || build(sh, run, cluster))?;
    check_interrupted()?;

    let result = cluster_phases(sh, run, cluster, summary, &images);
    // Diagnostics come before anything is scaled down or deleted.
    let interrupted = cmd::interrupted();
    if result.is_err() && cluster.state().exists && !interrupted {
        diagnostics(sh, run, cluster, summary);
    }
    if run.flags.coverage && cluster.state().deployed && !interrupted {
        match summary.phase(Phase::Coverage, || coverage(sh, run, cluster)) {
            Ok(coverage) => summary.coverage = Some(coverage),
            // A test failure stays the headline; the coverage problem is reported beside it.
            Err(err) if result.is_err() => eprintln!("warning: {err:#}"),
            Err(err) => {
                if !cmd::interrupted() {
                    diagnostics(sh, run, cluster, summary);
                }
                return Err(err);
            }
        }
    }
    result
}

/// Phases 3 to 6: the cluster, the images in it, the services, the tests.
fn cluster_phases(
    sh: &Shell,
    run: &Run,
    cluster: &mut dyn Cluster,
    summary: &mut Summary,
    images: &[Image],
) -> anyhow::Result<()> {
    summary.phase(Phase::CreateCluster, || cluster.create(sh))?;
    summary.idle_gap = summary.phase(Phase::LoadImages, || cluster.load(sh, images))?;
    check_interrupted()?;
    summary.phase(Phase::Deploy, || {
        cluster.deploy(sh, images)?;
        run.settings.services.all().into_iter().try_for_each(wait_ready)
    })?;
    check_interrupted()?;
    let mut report = None;
    let result = summary.phase(Phase::Test, || {
        let (services, args) = (&run.settings.services, &run.flags.go_test_args);
        let tests = report.insert(gotest::run(sh, services, args, &run.logs_dir)?);
        println!("{}", tests.line());
        judge(tests, &run.logs_dir)
    });
    summary.tests = report;
    result
}

/// A test phase succeeds only when tests ran and none failed.
fn judge(tests: &gotest::TestReport, logs_dir: &Utf8Path) -> anyhow::Result<()> {
    if tests.interrupted {
        bail!("interrupted by a signal (Ctrl-C or SIGTERM)");
    }
    let (failed, log) = (&tests.failed_names, logs_dir.join("go-test.log"));
    let (count, names) = (failed.len(), failed.join(", "));
    if let Some(timeout) = tests.timeout.as_ref().filter(|t| !t.running.is_empty()) {
        let (running, after) = (timeout.running.join(", "), &timeout.after);
        bail!("{count} E2E test(s) failed ({names}): {running} hit `go test`'s -timeout ({after}): find where it hangs in the goroutine stacks in {log}, or pass `-- -timeout 30m`");
    }
    if !failed.is_empty() {
        bail!("{count} E2E test(s) failed ({names}): see the output above and {log}");
    }
    if let Some(error) = &tests.error {
        bail!("{error}");
    }
    if tests.passed == 0 {
        bail!("no E2E test ran: check the `go test` arguments after `--`");
    }
    Ok(())
}

/// Phase 1: the cluster name is ours alone (no live run uses it), doctor's checks for this
/// backend, then what an earlier run left is cleared (it holds our host ports, which are
/// checked once it is gone), before the build phase archives coverdata/: its services write
/// their last counters when they stop.
fn preflight(sh: &Shell, run: &Run, cluster: &mut dyn Cluster) -> anyhow::Result<Lock> {
    let (settings, flags) = (&run.settings, &run.flags);
    let lock = lock::acquire(&settings.name, &settings.root, flags.coverage)?;
    // An error here means a missing tool, which the checks below report properly.
    let leftover = cluster.leftover(sh).unwrap_or(None);
    let ports = settings.services.all();
    let mut needs = doctor::Needs {
        covdata: flags.coverage,
        buildkit: flags.build_mode == flags::BuildMode::Container,
        // Held by the earlier run until it is cleared: checked below.
        ports: if leftover.is_none() { ports.to_vec() } else { Vec::new() },
        disk: true,
        ..doctor::Needs::default()
    };
    let checks = cluster.preflight(sh, &mut needs);
    doctor::preflight(sh, &settings.root, &needs, checks)?;
    let Some(what) = leftover else {
        return Ok(lock);
    };
    println!("    {what}");
    if !cluster.clear_leftover(sh, flags.reuse_cluster, flags.coverage)? {
        let taken = ports.into_iter().map(|s| (s, doctor::check_port(s))).find(|(_, c)| !c.is_ok());
        if let Some((service, check)) = taken {
            let (port, name, hint) = (service.host_port, service.name, &check.hint);
            bail!("port {port} ({name}) is still in use after removing the earlier run: {hint}");
        }
    }
    Ok(lock)
}

/// Phase 2: every image, before any cluster exists (cache hits cost nothing).
fn build(sh: &Shell, run: &Run, cluster: &dyn Cluster) -> anyhow::Result<Vec<Image>> {
    let (settings, coverage) = (&run.settings, run.flags.coverage);
    let services = settings.services.all().to_vec();
    if coverage {
        coverdata::prepare(&settings.root, &services)?;
        // The report of the data just archived: this run's replaces it in phase 8, if it gets there.
        covdata_report::remove_outputs(&settings.root)?;
    }
    let request = flags::BuildImages {
        services: Vec::new(), // none named: all of them
        coverage,
        build_mode: run.flags.build_mode,
        engine: Some(settings.engine),
        no_cache: false,
        archive: cluster.needs_archives(),
        registry: settings.registry.clone(),
    };
    build_images::build(sh, &settings.root, &request)
}

/// Phase 5's end: polls `GET /readyz` on the host port until it answers 200, bounded by
/// READY_TIMEOUT.
fn wait_ready(service: Service) -> anyhow::Result<()> {
    let (name, port, started) = (service.name, service.host_port, Instant::now());
    let mut last = String::from("no answer yet");
    while started.elapsed() < READY_TIMEOUT {
        check_interrupted()?;
        let host = format!("127.0.0.1:{port}");
        match http::request(&host, "GET /readyz", "", Duration::from_secs(2)) {
            Ok(response) if response.code == 200 => {
                let took = ui::seconds(started.elapsed());
                println!("    {name} ready on 127.0.0.1:{port} after {took}");
                return Ok(());
            }
            Ok(response) => last = format!("HTTP {}", response.code),
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = READY_TIMEOUT.as_secs();
    bail!("{name} did not become ready: http://127.0.0.1:{port}/readyz still answered `{last}` after {secs}s; its logs are in the diagnostics")
}

/// Phase 7, on any failure once a cluster exists; a failure to collect is a warning, never the
/// reason the run failed.
fn diagnostics(sh: &Shell, run: &Run, cluster: &dyn Cluster, summary: &mut Summary) {
    let collected = summary.phase(Phase::Diagnostics, || {
        if cluster.diagnostics(sh, &run.logs_dir)? {
            println!("    diagnostics written to {}", run.logs_dir);
        }
        Ok(())
    });
    if let Err(err) = collected {
        eprintln!("warning: {err:#}");
    }
}

/// Phase 8: the services stop gracefully (counters are only written on a normal exit), each
/// must have left counters, then the report.
fn coverage(sh: &Shell, run: &Run, cluster: &mut dyn Cluster) -> anyhow::Result<Coverage> {
    cluster.stop_services(sh)?;
    let root = &run.settings.root;
    let services = run.settings.services.all();
    coverdata::check_started(root, &services)?;
    let dirs = services.map(|s| project::coverdata_dir(root).join(s.name)).to_vec();
    Ok(covdata_report::report(sh, root, &dirs)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_run_folders_are_kept() {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .unwrap()
            .join(format!("xtask-prune-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for day in 1..=5 {
            std::fs::create_dir_all(dir.join(format!("2026-01-0{day}T00-00-00Z-gateway-e2e")))
                .unwrap();
        }
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        prune_logs(&dir, 2);
        let mut left: Vec<String> =
            dir.read_dir_utf8().unwrap().map(|e| e.unwrap().file_name().to_string()).collect();
        left.sort();
        assert_eq!(
            left,
            ["2026-01-04T00-00-00Z-gateway-e2e", "2026-01-05T00-00-00Z-gateway-e2e", "notes.txt"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
