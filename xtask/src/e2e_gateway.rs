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

use anyhow::{bail, Context};
use camino::Utf8PathBuf;
use xshell::Shell;

use crate::{
    build_images::{self, Image},
    cluster::{self, Cluster, Settings},
    cmd::{self, check_interrupted},
    covdata_report::{self, Coverage},
    coverdata, doctor, engine, flags,
    project::{self, Service, Services},
    ui,
};

mod gotest;
mod summary;

use summary::{Phase, Summary};

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Everything the phases share, decided once at the start.
struct Run {
    settings: Settings,
    flags: flags::E2eGateway,
    logs_dir: Utf8PathBuf,
}

pub fn run(sh: &Shell, flags: &flags::E2eGateway) -> anyhow::Result<()> {
    let root = project::root();
    let settings = Settings {
        root: root.clone(),
        name: flags.cluster_name.clone(),
        engine: engine::resolve(flags.engine)?,
        services: Services::from_env()?,
    };
    let mut cluster = cluster::pick(flags.cluster, settings.clone());
    cmd::set_leftover(cluster.remove_command());
    let id = project::utc_timestamp(SystemTime::now());
    let run = Run {
        logs_dir: project::xtask_dir(&root).join("logs").join(&id),
        settings,
        flags: flags.clone(),
    };
    let mut summary = Summary {
        id,
        backend: cluster.name(),
        ..Summary::default()
    };

    let outcome = pipeline(sh, &run, cluster.as_mut(), &mut summary);
    // Teardown runs on success, failure and Ctrl-C alike; `--reuse-cluster` keeps the cluster
    // too: reusing it next time is the point of the flag.
    let keep = flags.keep_cluster || flags.reuse_cluster;
    let teardown = summary.phase(Phase::Teardown, || cluster.teardown(sh, keep));
    // The next coverage run archives this data under its outcome; passed runs are kept longer.
    if flags.coverage {
        if let Err(err) = coverdata::record_outcome(&root, outcome.is_ok()) {
            eprintln!("warning: {err:#}");
        }
    }
    if let Err(err) = outcome.as_ref().and(teardown.as_ref()) {
        summary.error = Some(format!("{err:#}"));
    }

    let banner = Phase::Summary.banner();
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
    outcome?;
    teardown
}

/// Phases 1 to 8. Returns Err on any failure, including failed tests.
fn pipeline(
    sh: &Shell,
    run: &Run,
    cluster: &mut dyn Cluster,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    summary.phase(Phase::Preflight, || preflight(sh, run, cluster))?;
    let images = summary.phase(Phase::BuildImages, || build(sh, run, cluster))?;
    check_interrupted()?;

    let result = cluster_phases(sh, run, cluster, summary, &images);
    let interrupted = cmd::interrupted();
    // Diagnostics come before anything is scaled down or deleted.
    let diagnose = |summary: &mut Summary, cluster: &dyn Cluster| match summary
        .phase(Phase::Diagnostics, || diagnostics(sh, run, cluster))
    {
        Ok(()) => summary.logs = Some(run.logs_dir.clone()),
        Err(err) => eprintln!("warning: {err:#}"),
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
    let counts = summary.phase(Phase::Test, || {
        gotest::run(
            sh,
            &run.settings.services,
            &run.flags.go_test_args,
            &run.logs_dir,
        )
    })?;
    summary.tests = Some(counts);
    println!("{}", counts.line());
    if counts.failed > 0 {
        bail!(
            "{} E2E test(s) failed: see the output above and {}",
            counts.failed,
            run.logs_dir.join("go-test.log")
        );
    }
    if counts.passed == 0 {
        bail!("no E2E test ran: check the `go test` arguments after `--`");
    }
    Ok(())
}

/// Phase 1: doctor's checks for this backend, then what an earlier run left is cleared (it
/// holds our host ports, which are checked once it is gone), before the build phase archives
/// coverdata/: its services write their last counters when they stop.
fn preflight(sh: &Shell, run: &Run, cluster: &mut dyn Cluster) -> anyhow::Result<()> {
    // An error here means a missing tool, which the checks below report properly.
    let leftover = cluster.leftover(sh).unwrap_or(None);
    let ports = run.settings.services.all().to_vec();
    let mut needs = doctor::Needs {
        engine: Some(run.settings.engine),
        go: true,
        covdata: run.flags.coverage,
        // Held by the earlier run until it is cleared: checked below.
        ports: if leftover.is_some() {
            Vec::new()
        } else {
            ports.clone()
        },
        disk: true,
        ..doctor::Needs::default()
    };
    cluster.needs(&mut needs);
    doctor::preflight(sh, &run.settings.root, &needs)?;
    let Some(what) = leftover else {
        return Ok(());
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
                    check.hint()
                );
            }
        }
    }
    Ok(())
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
    std::fs::create_dir_all(&run.logs_dir)
        .with_context(|| format!("creating {}: make target/ writable", run.logs_dir))?;
    cluster.diagnostics(sh, &run.logs_dir)?;
    println!("    diagnostics written to {}", run.logs_dir);
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
    fn status_line_is_parsed() {
        assert_eq!(parse_status_line("HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
    }
}
