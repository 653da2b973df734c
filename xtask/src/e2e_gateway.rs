//! `cargo xtask e2e-gateway`: build every image, then create the cluster, load the images at
//! once, deploy, test, collect coverage, and tear down, in that strict order. Building before
//! the cluster exists is the point: a Kind node left idle during a long build is what broke
//! `kind load` in the old flow. The cluster backend (`crate::cluster`) does the work of each
//! phase; this file only says the order.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant, SystemTime},
};

use anyhow::bail;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use crate::{
    build_images::{self, Image},
    cluster::{self, Cluster, Settings},
    cmd::{self, check_interrupted, CmdError},
    covdata_report::{self, Coverage},
    coverdata, doctor, engine, flags,
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
    let services = Services::from_env()?;
    let mut cluster = cluster::pick(&flags.target, &root, services)?;
    cmd::set_leftover(cluster.remove_command());
    // Sortable by time, and apart from a run of another cluster name in the same second.
    let id = format!("{}-{}", project::utc_timestamp(SystemTime::now()), flags.target.cluster_name);
    let logs = project::xtask_dir(&root).join("logs");
    prune_logs(&logs, LOGS_KEPT - 1);
    let run = Run {
        logs_dir: logs.join(&id),
        settings: cluster.settings().clone(),
        flags: flags.clone(),
    };
    let mut summary = Summary { id, backend: cluster.name(), ..Summary::default() };

    // Held until the end, teardown included: see lock.rs.
    let mut lock = None;
    let outcome = pipeline(sh, &run, cluster.as_mut(), &mut summary, &mut lock);
    // Teardown runs on success, failure and Ctrl-C alike; `--reuse-cluster` keeps the cluster
    // too: reusing it next time is the point of the flag.
    let keep = flags.keep_cluster || flags.reuse_cluster || flags.keep_namespace;
    // What the run wrote there (the test log, diagnostics), if anything.
    if run.logs_dir.is_dir() {
        summary.logs = Some(run.logs_dir.clone());
    }
    let teardown = summary.phase(Phase::Teardown, || {
        if !cluster.exists() {
            println!("    nothing to tear down");
            return Ok(());
        }
        cluster.teardown(sh, keep)
    });
    // The next coverage run archives this data under its outcome; passed runs are kept longer.
    if flags.coverage {
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

    let banner = Phase::Summary.banner();
    if let Err(err) = ui::append_step_summary(&summary.markdown()) {
        eprintln!("warning: {err:#}");
    }
    let text = summary.render();
    print!("{text}");
    let last_run = project::xtask_dir(&root).join("last-run.txt");
    let written = std::fs::create_dir_all(project::xtask_dir(&root))
        .and_then(|()| std::fs::write(&last_run, &text));
    if let Err(err) = &written {
        eprintln!("warning: writing {last_run} failed: {err}; the summary above is complete");
    }
    banner.finish(written.is_ok());
    if let (Err(_), Err(err)) = (&outcome, &teardown) {
        eprintln!("error: {err:#}");
    }
    if let (true, Some(err)) = (ui::github_actions(), &summary.error) {
        // The failed phase and its fix on the run's page, outside the folded groups.
        let (title, rest) = err.split_once(": ").unwrap_or(("e2e-gateway failed", err));
        let mut message = rest.lines().next().unwrap_or("").to_string();
        for line in [&summary.cause, &summary.fix].into_iter().flatten() {
            message.push('\n');
            message.push_str(line);
        }
        println!("{}", ui::error_annotation(title, &message));
    }
    // The fix goes last, under the error it is for.
    let with_fix = |err: anyhow::Error| match &summary.fix {
        Some(fix) => anyhow::anyhow!("{err:#}\nfix: {fix}"),
        None => err,
    };
    outcome.map_err(with_fix)?;
    teardown.map_err(with_fix)
}

/// Removes all but the newest `keep` run folders (their names start with the time). Best
/// effort: a folder that cannot be removed is left, with a warning.
fn prune_logs(logs: &Utf8Path, keep: usize) {
    let Ok(entries) = logs.read_dir_utf8() else {
        return;
    };
    let mut runs: Vec<Utf8PathBuf> = entries
        .flatten()
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
    let interrupted = cmd::interrupted();
    // Diagnostics come before anything is scaled down or deleted.
    let diagnose = |summary: &mut Summary, cluster: &dyn Cluster| {
        if let Err(err) = summary.phase(Phase::Diagnostics, || diagnostics(sh, run, cluster)) {
            eprintln!("warning: {err:#}");
        }
    };
    let diagnosed = result.is_err() && cluster.exists() && !interrupted;
    if diagnosed {
        diagnose(summary, cluster);
    }
    if run.flags.coverage && cluster.deployed() && !interrupted {
        match summary.phase(Phase::Coverage, || coverage(sh, run, cluster)) {
            Ok(coverage) => summary.coverage = Some(coverage),
            // A test failure stays the headline; the coverage problem is reported beside it.
            Err(err) if result.is_err() => eprintln!("warning: {err:#}"),
            Err(err) => {
                if !diagnosed && !cmd::interrupted() {
                    diagnose(summary, cluster);
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
    summary.phase(Phase::Deploy, || deploy(sh, run, cluster, images))?;
    check_interrupted()?;
    let mut report = None;
    let result = summary.phase(Phase::Test, || {
        let tests =
            gotest::run(sh, &run.settings.services, &run.flags.go_test_args, &run.logs_dir)?;
        println!("{}", tests.line());
        let judged = judge(&tests, &run.logs_dir);
        report = Some(tests);
        judged
    });
    summary.tests = report;
    result
}

/// A test phase succeeds only when tests ran and none failed.
fn judge(tests: &gotest::TestReport, logs_dir: &Utf8Path) -> anyhow::Result<()> {
    if tests.interrupted {
        bail!("interrupted by a signal (Ctrl-C or SIGTERM)");
    }
    if tests.failed > 0 {
        bail!(
            "{} E2E test(s) failed ({}): see the output above and {}",
            tests.failed,
            tests.failed_names.join(", "),
            logs_dir.join("go-test.log")
        );
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
    let lock = lock::acquire(&run.settings.name, &run.settings.root, run.flags.coverage)?;
    // An error here means a missing tool, which the checks below report properly.
    let leftover = cluster.leftover(sh).unwrap_or(None);
    let ports = run.settings.services.all().to_vec();
    let mut needs = doctor::Needs {
        covdata: run.flags.coverage,
        // Held by the earlier run until it is cleared: checked below.
        ports: if leftover.is_some() { Vec::new() } else { ports.clone() },
        disk: true,
        ..doctor::Needs::default()
    };
    cluster.needs(&mut needs);
    doctor::preflight(sh, &run.settings.root, &needs, cluster.checks(sh))?;
    let Some(what) = leftover else {
        return Ok(lock);
    };
    println!("    {what}");
    let kept = cluster.clear_leftover(sh, run.flags.reuse_cluster, run.flags.coverage)?;
    if !kept {
        for service in ports {
            let check = doctor::check_port(service);
            if !check.is_ok() {
                bail!(
                    "port {} ({}) is still in use after removing the earlier run: {}",
                    service.host_port,
                    service.name,
                    check.hint
                );
            }
        }
    }
    Ok(lock)
}

/// Phase 2: every image, before any cluster exists (cache hits cost nothing).
fn build(sh: &Shell, run: &Run, cluster: &dyn Cluster) -> anyhow::Result<Vec<Image>> {
    let services = run.settings.services.all();
    if run.flags.coverage {
        coverdata::prepare(&run.settings.root, &services)?;
    }
    build_images::build(
        sh,
        &run.settings.root,
        &build_images::Request {
            services: services.to_vec(),
            coverage: run.flags.coverage,
            build_mode: run.flags.build_mode,
            engine: run.settings.engine,
            no_cache: false,
            archive: cluster.needs_archives(),
            registry: run.settings.registry.clone(),
        },
    )
}

/// Phase 5: the manifests with the built images, then `/readyz` on every host port.
fn deploy(
    sh: &Shell,
    run: &Run,
    cluster: &mut dyn Cluster,
    images: &[Image],
) -> anyhow::Result<()> {
    let manifests = cluster::manifests(cluster, &run.settings, images)?;
    cluster.deploy(sh, &manifests)?;
    for service in run.settings.services.all() {
        wait_ready(service)?;
    }
    Ok(())
}

/// Polls `GET /readyz` on the host port until it answers 200, bounded by READY_TIMEOUT.
fn wait_ready(service: Service) -> anyhow::Result<()> {
    let port = service.host_port;
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < READY_TIMEOUT {
        check_interrupted()?;
        match http_status(port, "/readyz") {
            Ok(200) => {
                println!(
                    "    {} ready on 127.0.0.1:{port} after {}",
                    service.name,
                    ui::seconds(started.elapsed())
                );
                return Ok(());
            }
            Ok(code) => last = format!("HTTP {code}"),
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "{} did not become ready: http://127.0.0.1:{port}/readyz still answered `{last}` after {}s; its logs are in the diagnostics",
        service.name,
        READY_TIMEOUT.as_secs()
    )
}

fn http_status(port: u16, path: &str) -> std::io::Result<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    parse_status_line(&String::from_utf8_lossy(&head[..n]))
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

fn parse_status_line(head: &str) -> Option<u16> {
    let mut words = head.split_whitespace();
    let version = words.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Phase 7, on any failure once a cluster exists; a failure to collect is a warning, never the
/// reason the run failed.
fn diagnostics(sh: &Shell, run: &Run, cluster: &dyn Cluster) -> anyhow::Result<()> {
    if cluster.diagnostics(sh, &run.logs_dir)? {
        println!("    diagnostics written to {}", run.logs_dir);
    }
    Ok(())
}

/// Phase 8: the services stop gracefully (counters are only written on a normal exit), each
/// must have left counters, then the report.
fn coverage(sh: &Shell, run: &Run, cluster: &mut dyn Cluster) -> anyhow::Result<Coverage> {
    cluster.stop_services(sh)?;
    let root = &run.settings.root;
    let dirs: Vec<Utf8PathBuf> = run
        .settings
        .services
        .all()
        .iter()
        .map(|s| project::coverdata_dir(root).join(s.name))
        .collect();
    coverdata::check_counters(&dirs)?;
    covdata_report::report(sh, root, &dirs)
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

    #[test]
    fn status_line_is_parsed() {
        assert_eq!(parse_status_line("HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.1 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
    }
}
