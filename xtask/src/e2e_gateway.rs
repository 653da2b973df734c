//! `cargo xtask e2e-gateway`: build every image, then create the cluster, load the images at
//! once, deploy, test, collect coverage, and tear down, in that strict order. Building before
//! the cluster exists is the point: a Kind node left idle during a long build is what broke
//! `kind load` in the old flow.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::{
    build_images::{self, Image},
    covdata_report::{self, Coverage},
    doctor::{self, Backend},
    flags::{self, Engine},
    project::{self, Service},
    ui::{self, Phase},
};

mod kind;
mod manifests;
mod podman;
mod process;

use kind::{cluster_exists, create_cluster, delete_cluster, kubectl, load_images};
use manifests::rendered_manifests;
use podman::{podman_exists, podman_pod, podman_pod_exists, remove_podman_pods, KUBE_NETWORK};
use process::{run_interruptible, run_step, run_teed, stop_group, Stream, RUNNING_GROUP};

/// Grace period for the services to flush coverage counters on SIGTERM.
const STOP_GRACE_SECONDS: u32 = 30;
const ROLLOUT_TIMEOUT: &str = "180s";
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Everything the phases share, decided once at the start.
struct Run {
    root: Utf8PathBuf,
    id: String,
    backend: Backend,
    engine: Engine,
    flags: flags::E2eGateway,
    ports: Vec<(Service, u16)>,
    logs_dir: Utf8PathBuf,
    kubeconfig: Utf8PathBuf,
    rendered_dir: Utf8PathBuf,
}

/// What the summary reports; filled in as the phases go.
#[derive(Default)]
struct Summary {
    backend: String,
    phases: Vec<(String, Duration)>,
    idle_gap: Option<Duration>,
    tests: Option<TestCounts>,
    coverage: Option<Coverage>,
    logs: Option<Utf8PathBuf>,
    error: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TestCounts {
    passed: usize,
    failed: usize,
    skipped: usize,
}

/// What exists, so teardown, diagnostics and coverage know what to act on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Deployed {
    /// A cluster (Kind) or pods (podman) of ours may exist.
    cluster: bool,
    /// The services were deployed, so they can be stopped for their coverage counters.
    services: bool,
    /// `podman kube play` created its default network for us (it did not exist before).
    kube_network: bool,
}

pub fn run(sh: &Shell, flags: &flags::E2eGateway) -> anyhow::Result<()> {
    let root = project::root();
    let (backend, reason) = doctor::resolve_cluster(flags.cluster);
    println!("cluster backend: {} ({reason})", backend.name());
    let engine = doctor::resolve_engine(flags.engine)?;
    install_interrupt_handler(match backend {
        Backend::Kind => format!(
            "KIND_EXPERIMENTAL_PROVIDER={} kind delete cluster --name {} --kubeconfig {}",
            engine.program(),
            flags.cluster_name,
            project::kubeconfig(&root, &flags.cluster_name)
        ),
        Backend::Podman => format!(
            "podman pod rm --force {}",
            project::SERVICES.map(podman_pod).join(" ")
        ),
    });
    let id = project::utc_timestamp(SystemTime::now());
    let xtask_dir = project::xtask_dir(&root);
    let mut ports = Vec::new();
    for service in project::SERVICES {
        ports.push((service, project::host_port(service)?));
    }
    let run = Run {
        logs_dir: xtask_dir.join("logs").join(&id),
        kubeconfig: project::kubeconfig(&root, &flags.cluster_name),
        rendered_dir: xtask_dir.join("rendered"),
        root,
        id,
        backend,
        engine,
        flags: flags.clone(),
        ports,
    };
    let mut summary = Summary {
        backend: backend.name().to_string(),
        ..Summary::default()
    };
    let mut deployed = Deployed::default();

    let outcome = pipeline(sh, &run, &mut summary, &mut deployed);
    // Teardown runs on success, failure and Ctrl-C alike.
    let teardown = timed(&mut summary, 9, "teardown", || {
        teardown(sh, &run, &deployed)
    });
    if let Err(err) = &outcome {
        summary.error = Some(format!("{err:#}"));
    } else if let Err(err) = &teardown {
        summary.error = Some(format!("{err:#}"));
    }

    let phase = Phase::start(10, "summary");
    let text = summary.render(&run);
    print!("{text}");
    let last_run = project::xtask_dir(&run.root).join("last-run.txt");
    let written = std::fs::create_dir_all(project::xtask_dir(&run.root))
        .and_then(|()| std::fs::write(&last_run, &text));
    if let Err(err) = &written {
        eprintln!("warning: writing {last_run} failed: {err}; the summary above is complete");
    }
    phase.finish(written.is_ok());
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
    summary: &mut Summary,
    deployed: &mut Deployed,
) -> anyhow::Result<()> {
    let reuse = timed(summary, 1, "preflight", || preflight(sh, run))?;

    let images = timed(summary, 2, "build images", || {
        prepare_coverdata(&run.root, run.flags.coverage)?;
        build_images::build(
            sh,
            &run.root,
            &build_images::Request {
                services: project::SERVICES.to_vec(),
                coverage: run.flags.coverage,
                build_mode: run.flags.build_mode,
                engine: run.engine,
                no_cache: false,
                archive: run.backend == Backend::Kind,
            },
        )
    })?;
    check_interrupted()?;

    let result = cluster_phases(sh, run, summary, deployed, &images, reuse);
    let interrupted = project::interrupted();
    // Diagnostics come before anything is scaled down or deleted.
    let mut diagnosed = false;
    if result.is_err() && deployed.cluster && !interrupted {
        diagnose(sh, run, summary);
        diagnosed = true;
    }
    if run.flags.coverage && deployed.services && !interrupted {
        match timed(summary, 8, "coverage", || collect_coverage(sh, run)) {
            Ok(coverage) => summary.coverage = Some(coverage),
            // A test failure stays the headline; the coverage problem is reported beside it.
            Err(err) if result.is_err() => eprintln!("warning: {err:#}"),
            Err(err) => {
                if !diagnosed && !project::interrupted() {
                    diagnose(sh, run, summary);
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
    summary: &mut Summary,
    deployed: &mut Deployed,
    images: &[Image],
    reuse: bool,
) -> anyhow::Result<()> {
    if run.backend == Backend::Kind {
        let ready_at = timed(summary, 3, "create cluster", || {
            create_cluster(sh, run, deployed, reuse)
        })?;
        let gap = timed(summary, 4, "load images", || {
            load_images(sh, run, images, deployed, ready_at)
        })?;
        summary.idle_gap = Some(gap);
    } else {
        timed(summary, 3, "create cluster", || {
            println!("    podman backend: no cluster to create");
            Ok(())
        })?;
        timed(summary, 4, "load images", || {
            println!("    podman backend: the images are already in podman's store");
            Ok(())
        })?;
    }
    check_interrupted()?;
    timed(summary, 5, "deploy", || deploy(sh, run, images, deployed))?;
    check_interrupted()?;
    let counts = timed(summary, 6, "test", || go_test(sh, run))?;
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

/// Phase 7; a failure to collect is a warning, never the reason the run failed.
fn diagnose(sh: &Shell, run: &Run, summary: &mut Summary) {
    match timed(summary, 7, "diagnostics", || diagnostics(sh, run)) {
        Ok(()) => {
            println!("    diagnostics written to {}", run.logs_dir);
            summary.logs = Some(run.logs_dir.clone());
        }
        Err(err) => eprintln!("warning: {err:#}"),
    }
}

/// Runs one numbered phase, recording its duration whether it succeeds or not.
fn timed<T>(
    summary: &mut Summary,
    number: usize,
    name: &'static str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let phase = Phase::start(number, name);
    let interrupted_before = project::interrupted();
    let result = f().map_err(|err| {
        // A step killed by the interrupt fails with a misleading error of its own; a step run
        // after it (teardown) keeps its real error.
        if !interrupted_before && project::interrupted() {
            anyhow::anyhow!("interrupted by a signal (Ctrl-C or SIGTERM)")
        } else {
            err
        }
    });
    let result = result.with_context(|| format!("phase {number} ({name}) failed"));
    let took = phase.finish(result.is_ok());
    summary.phases.push((format!("{number}. {name}"), took));
    result
}

/// `leftover` says how to remove what a skipped teardown leaves behind.
fn install_interrupt_handler(leftover: String) {
    static SIGNALS: AtomicUsize = AtomicUsize::new(0);
    // A second Ctrl-C means "stop now": say what may be left behind.
    let _ = ctrlc::set_handler(move || {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: stopping and tearing down (press Ctrl-C again to skip teardown)"
            );
            project::set_interrupted();
        } else {
            // The running step is in its own process group: the terminal's signal missed it.
            let group = RUNNING_GROUP.load(Ordering::SeqCst);
            if group != 0 {
                if let Ok(sh) = Shell::new() {
                    stop_group(&sh, group);
                }
            }
            eprintln!("teardown skipped: remove what is left with `{leftover}`");
            std::process::exit(1);
        }
    });
}

fn check_interrupted() -> anyhow::Result<()> {
    if project::interrupted() {
        bail!("interrupted by a signal (Ctrl-C or SIGTERM)");
    }
    Ok(())
}

/// Doctor's checks for this backend, then the earlier run's cluster or pods are cleared (they
/// hold our host ports, which are checked once they are gone). Returns whether an existing
/// cluster is kept for `--reuse-cluster`.
fn preflight(sh: &Shell, run: &Run) -> anyhow::Result<bool> {
    let kind = run.backend == Backend::Kind;
    let stale = match run.backend {
        // Errors here mean a missing tool, which the checks below report properly.
        Backend::Kind => {
            cluster_exists(&doctor::kind_shell(sh, run.engine), &run.flags.cluster_name)
                .unwrap_or(false)
        }
        Backend::Podman => project::SERVICES
            .iter()
            .any(|s| podman_pod_exists(sh, &podman_pod(*s)).unwrap_or(false)),
    };
    doctor::preflight(
        sh,
        &run.root,
        &doctor::Needs {
            engine: Some(run.engine),
            go: true,
            covdata: run.flags.coverage,
            kind,
            kubectl: kind,
            // An earlier run's cluster or pods hold our ports: checked once they are gone.
            ports: if stale {
                Vec::new()
            } else {
                run.ports.iter().map(|(_, port)| *port).collect()
            },
            disk: true,
            stale_cluster: kind.then(|| run.flags.cluster_name.clone()),
        },
    )?;
    if stale {
        clear_earlier_run(sh, run)
    } else {
        Ok(false)
    }
}

/// Removes what an earlier run left (a kept or interrupted cluster, pods), before this run
/// archives coverdata/: its services write their last counters when they stop. Returns whether
/// a cluster is kept for `--reuse-cluster`.
fn clear_earlier_run(sh: &Shell, run: &Run) -> anyhow::Result<bool> {
    match run.backend {
        Backend::Kind if run.flags.reuse_cluster => {
            println!(
                "    the cluster {} exists: it is reused if healthy, else recreated",
                run.flags.cluster_name
            );
            if run.flags.coverage {
                // Best effort: an unhealthy cluster is recreated anyway.
                if let Err(err) = stop_services(sh, run) {
                    println!("    could not stop its services ({err:#}): it will be checked next");
                }
            }
            return Ok(true);
        }
        Backend::Kind => {
            println!(
                "    deleting the stale cluster {} of an earlier run (--reuse-cluster keeps a healthy one)",
                run.flags.cluster_name
            );
            delete_cluster(&doctor::kind_shell(sh, run.engine), run)?;
        }
        Backend::Podman => {
            println!("    removing the pods of an earlier run");
            remove_podman_pods(sh, run)?;
        }
    }
    ensure_ports_free(run)?;
    Ok(false)
}

/// After removing a stale cluster or pods: our host ports must be free now.
fn ensure_ports_free(run: &Run) -> anyhow::Result<()> {
    for (service, port) in &run.ports {
        if std::net::TcpListener::bind(("127.0.0.1", *port)).is_err() {
            bail!(
                "port {port} ({}) is still in use after removing the earlier run: `cargo xtask doctor` shows who holds it; free it or set {}_HOST_PORT",
                service.name,
                service.name.to_uppercase()
            );
        }
    }
    Ok(())
}

/// Archives the previous coverage run and gives each service an empty, writable directory.
fn prepare_coverdata(root: &Utf8Path, coverage: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = project::coverdata_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
    if !coverage {
        return Ok(());
    }
    if let Some(archive) = covdata_report::archive_previous(root)? {
        println!("    previous coverage data archived to {archive}");
    }
    for service in project::SERVICES {
        let service_dir = dir.join(service.name);
        std::fs::create_dir_all(&service_dir).with_context(|| format!("creating {service_dir}"))?;
        // The services run as an unprivileged user and must be able to write here.
        std::fs::set_permissions(&service_dir, std::fs::Permissions::from_mode(0o777))
            .with_context(|| format!("making {service_dir} writable"))?;
    }
    Ok(())
}

// ---- Deploy ----------------------------------------------------------------------------------

fn deploy(sh: &Shell, run: &Run, images: &[Image], deployed: &mut Deployed) -> anyhow::Result<()> {
    let manifests = rendered_manifests(run, images)?;
    match run.backend {
        Backend::Kind => {
            deployed.services = true;
            for (_, manifest) in &manifests {
                run_step(
                    sh,
                    kubectl(sh, run).args(["apply", "-f", manifest.as_str()]),
                    "check the manifest and the cluster (`cargo xtask doctor`)",
                )?;
            }
            // Dependency order: gateway's readiness needs datastorage.
            for (service, _) in &manifests {
                let deployment = format!("deployment/{}", service.name);
                run_step(
                    sh,
                    kubectl(sh, run).args(["rollout", "status", &deployment, "--timeout", ROLLOUT_TIMEOUT]),
                    &format!("{} did not roll out within {ROLLOUT_TIMEOUT}: see the pod events and logs in the diagnostics", service.name),
                )?;
            }
        }
        Backend::Podman => {
            deployed.cluster = true;
            deployed.services = true;
            deployed.kube_network = !podman_exists(sh, "network", KUBE_NETWORK)?;
            // podman kube play would treat a directory entry named like an image as a build
            // context: run it from a directory of our own.
            let _dir = sh.push_dir(&run.rendered_dir);
            for (service, manifest) in &manifests {
                run_step(
                    sh,
                    cmd!(sh, "podman kube play {manifest}"),
                    &format!(
                        "{} could not be started: see its logs in the diagnostics",
                        service.name
                    ),
                )?;
            }
        }
    }
    for (service, port) in &run.ports {
        wait_ready(*service, *port)?;
    }
    Ok(())
}

/// Polls `GET /readyz` on the host port until it answers 200, bounded by READY_TIMEOUT.
fn wait_ready(service: Service, port: u16) -> anyhow::Result<()> {
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

// ---- Test ------------------------------------------------------------------------------------

/// Runs the Go E2E suite, streaming its output, and a copy as it arrives to the run's log
/// directory.
fn go_test(sh: &Shell, run: &Run) -> anyhow::Result<TestCounts> {
    std::fs::create_dir_all(&run.logs_dir).with_context(|| format!("creating {}", run.logs_dir))?;
    let log_path = run.logs_dir.join("go-test.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {log_path}"))?;
    let log = Mutex::new(log);
    let extra = &run.flags.go_test_args;
    let test = cmd!(
        sh,
        "go test -tags e2e -count=1 -v ./test/e2e/gateway/... {extra...}"
    )
    .env("GATEWAY_URL", service_url(run, "gateway"))
    .env("DATASTORAGE_URL", service_url(run, "datastorage"));
    let output = run_teed(sh, test, move |stream, line| {
        match stream {
            Stream::Stdout => println!("{line}"),
            Stream::Stderr => eprintln!("{line}"),
        }
        if let Ok(mut log) = log.lock() {
            let _ = writeln!(log, "{line}");
        }
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    let counts = count_tests(&lines);
    if !output.status.success() && counts.failed == 0 {
        let why = if stdout.contains("panic: test timed out") {
            "the suite hit `go test`'s -timeout (10m by default): find the hanging test in the log, or pass `-- -timeout 30m`"
        } else if stdout.contains("[build failed]") || stdout.contains("[setup failed]") {
            "the suite does not compile: fix test/e2e/gateway (`go vet -tags e2e ./test/e2e/...`)"
        } else {
            "it reported no test result"
        };
        bail!(
            "`go test` exited with {}: {why}; see the output above and {log_path}",
            output.status
        );
    }
    Ok(counts)
}

fn service_url(run: &Run, name: &str) -> String {
    let port = run
        .ports
        .iter()
        .find(|(s, _)| s.name == name)
        .map(|(_, p)| *p)
        .expect("every service has a port");
    format!("http://127.0.0.1:{port}")
}

/// Counts leaf tests: a test with subtests is counted through its subtests, so a failing
/// subtest is one failure, not two.
fn count_tests(lines: &[String]) -> TestCounts {
    let results: Vec<(&str, &str)> = lines
        .iter()
        .filter_map(|line| {
            let (status, rest) = line.trim_start().strip_prefix("--- ")?.split_once(": ")?;
            Some((status, rest.split_whitespace().next()?))
        })
        .collect();
    let mut counts = TestCounts::default();
    for (status, name) in &results {
        let has_subtests = results.iter().any(|(_, other)| {
            other.len() > name.len()
                && other.starts_with(name)
                && other[name.len()..].starts_with('/')
        });
        if has_subtests {
            continue;
        }
        match *status {
            "PASS" => counts.passed += 1,
            "FAIL" => counts.failed += 1,
            "SKIP" => counts.skipped += 1,
            _ => {}
        }
    }
    counts
}

impl TestCounts {
    fn line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

// ---- Diagnostics -----------------------------------------------------------------------------

/// Collects what explains a failure; a command that fails here is noted, not fatal.
fn diagnostics(sh: &Shell, run: &Run) -> anyhow::Result<()> {
    let dir = &run.logs_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    let mut notes = Vec::new();
    let mut save = |file: &str, result: xshell::Result<std::process::Output>| {
        let path = dir.join(file);
        let text = match result {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => format!("could not collect: {err}\n"),
        };
        if let Err(err) = std::fs::write(&path, text) {
            notes.push(format!("writing {path}: {err}"));
        }
    };
    match run.backend {
        Backend::Kind => {
            let kind_sh = doctor::kind_shell(sh, run.engine);
            let name = &run.flags.cluster_name;
            let kind_logs = dir.join("kind");
            save(
                "kind-export.txt",
                cmd!(kind_sh, "kind export logs {kind_logs} --name {name}")
                    .quiet()
                    .ignore_status()
                    .output(),
            );
            let k = |args: &[&str]| kubectl(sh, run).args(args).quiet().ignore_status().output();
            save(
                "pods.txt",
                k(&["get", "pods", "--all-namespaces", "-o", "wide"]),
            );
            save(
                "events.txt",
                k(&[
                    "get",
                    "events",
                    "--all-namespaces",
                    "--sort-by=.lastTimestamp",
                ]),
            );
            save("describe-pods.txt", k(&["describe", "pods"]));
            for service in project::SERVICES {
                let deployment = format!("deployment/{}", service.name);
                save(
                    &format!("{}.log", service.name),
                    k(&["logs", &deployment, "--all-containers", "--timestamps"]),
                );
            }
        }
        Backend::Podman => {
            for service in project::SERVICES {
                let pod = podman_pod(service);
                let container = format!("{pod}-{}", service.name);
                save(
                    &format!("{}.log", service.name),
                    cmd!(sh, "podman logs --timestamps {container}")
                        .quiet()
                        .ignore_status()
                        .output(),
                );
                save(
                    &format!("{pod}-inspect.json"),
                    cmd!(sh, "podman pod inspect {pod}")
                        .quiet()
                        .ignore_status()
                        .output(),
                );
            }
        }
    }
    for note in notes {
        eprintln!("warning: diagnostics: {note}");
    }
    Ok(())
}

// ---- Coverage --------------------------------------------------------------------------------

/// Stops the services gracefully (counters are only written on a normal exit), checks each
/// left counters, and reports.
fn collect_coverage(sh: &Shell, run: &Run) -> anyhow::Result<Coverage> {
    stop_services(sh, run)?;
    let dirs: Vec<Utf8PathBuf> = project::SERVICES
        .iter()
        .map(|s| project::coverdata_dir(&run.root).join(s.name))
        .collect();
    covdata_report::check_counters(&dirs)?;
    covdata_report::report(sh, &run.root, &dirs)
}

/// Stops the services gracefully and waits until they are gone: their counters are written
/// when they exit.
fn stop_services(sh: &Shell, run: &Run) -> anyhow::Result<()> {
    match run.backend {
        Backend::Kind => {
            let deployments: Vec<String> = project::SERVICES
                .iter()
                .map(|s| format!("deployment/{}", s.name))
                .collect();
            run_step(
                sh,
                kubectl(sh, run)
                    .arg("scale")
                    .args(&deployments)
                    .arg("--replicas=0"),
                "the services could not be scaled to zero, so their coverage counters are missing",
            )?;
            let selector = format!("app in ({})", project::SERVICES.map(|s| s.name).join(","));
            let timeout = format!("{}s", STOP_GRACE_SECONDS + 30);
            let wait = kubectl(sh, run).args([
                "wait",
                "--for=delete",
                "pod",
                "--selector",
                &selector,
                "--timeout",
                &timeout,
            ]);
            let shown = wait.to_string();
            let output = run_interruptible(sh, wait)?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            // kubectl fails when the pods are gone before it looks: that is the goal reached.
            if !output.status.success() && !stderr.contains("no matching resources found") {
                bail!(
                    "`{shown}` failed ({}):\n{}\nthe service pods were not gone within {timeout}: their counters may be incomplete",
                    output.status,
                    stderr.trim_end()
                );
            }
        }
        Backend::Podman => {
            let pods: Vec<String> = project::SERVICES.iter().map(|s| podman_pod(*s)).collect();
            let grace = STOP_GRACE_SECONDS.to_string();
            run_step(
                sh,
                cmd!(sh, "podman pod stop --time {grace} {pods...}"),
                "the pods could not be stopped, so their coverage counters may be missing",
            )?;
        }
    }
    Ok(())
}

// ---- Teardown --------------------------------------------------------------------------------

/// Idempotent, and runs after success, failure and interrupts alike. `--reuse-cluster` keeps
/// the cluster too: reusing it next time is the point of the flag.
fn teardown(sh: &Shell, run: &Run, deployed: &Deployed) -> anyhow::Result<()> {
    if !deployed.cluster {
        println!("    nothing to tear down");
        return Ok(());
    }
    if run.flags.keep_cluster || run.flags.reuse_cluster {
        print_kept(run, deployed);
        return Ok(());
    }
    match run.backend {
        Backend::Kind => {
            delete_cluster(&doctor::kind_shell(sh, run.engine), run)?;
            println!("    deleted the cluster {}", run.flags.cluster_name);
        }
        Backend::Podman => {
            remove_podman_pods(sh, run)?;
            println!("    removed the pods");
            // Only a network our run created; another user's pods may still need theirs.
            if deployed.kube_network && podman_exists(sh, "network", KUBE_NETWORK)? {
                cmd!(sh, "podman network rm {KUBE_NETWORK}")
                    .quiet()
                    .ignore_stdout()
                    .run()
                    .with_context(|| format!("removing the network {KUBE_NETWORK} failed: remove it with `podman network rm {KUBE_NETWORK}`"))?;
                println!("    removed the network {KUBE_NETWORK}");
            }
        }
    }
    Ok(())
}

fn print_kept(run: &Run, deployed: &Deployed) {
    let pods: Vec<String> = project::SERVICES.iter().map(|s| podman_pod(*s)).collect();
    let stopped = run.flags.coverage && deployed.services;
    match run.backend {
        Backend::Kind => {
            println!(
                "    keeping the cluster: export KUBECONFIG={}\n    delete it with: KIND_EXPERIMENTAL_PROVIDER={} kind delete cluster --name {} --kubeconfig {}",
                run.kubeconfig,
                run.engine.program(),
                run.flags.cluster_name,
                run.kubeconfig
            );
            if stopped {
                let deployments = project::SERVICES.map(|s| format!("deployment/{}", s.name));
                println!(
                    "    the services were scaled to zero to flush coverage; start them with: kubectl --kubeconfig {} scale {} --replicas=1",
                    run.kubeconfig,
                    deployments.join(" ")
                );
            }
        }
        Backend::Podman => {
            println!(
                "    keeping the pods: remove them with: podman pod rm --force {}",
                pods.join(" ")
            );
            if stopped {
                println!(
                    "    the pods were stopped to flush coverage; start them with: podman pod start {}",
                    pods.join(" ")
                );
            }
        }
    }
}

// ---- Summary ---------------------------------------------------------------------------------

impl Summary {
    fn render(&self, run: &Run) -> String {
        let mut out = String::new();
        let mut line =
            |label: &str, value: String| out.push_str(&format!("  {label:<24} {value}\n"));
        line("run", format!("{} ({} backend)", run.id, self.backend));
        for (name, took) in &self.phases {
            line(name, ui::seconds(*took));
        }
        if let Some(gap) = self.idle_gap {
            line(
                "idle gap",
                format!("{} ms (cluster ready to first load)", gap.as_millis()),
            );
        }
        match self.tests {
            Some(t) => line("tests", t.line()),
            None => line("tests", "not run".to_string()),
        }
        if let Some(coverage) = &self.coverage {
            for (service, pct) in &coverage.services {
                line(&format!("coverage {service}"), format!("{pct:.1}%"));
            }
            line("coverage total", format!("{:.1}%", coverage.total));
            line("coverage profile", coverage.profile.to_string());
        }
        if let Some(logs) = &self.logs {
            line("logs", logs.to_string());
        }
        match &self.error {
            None => line("result", "passed (exit 0)".to_string()),
            Some(err) => line(
                "result",
                format!("failed (exit 1): {}", err.lines().next().unwrap_or("")),
            ),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::manifests::{render, template_vars, without_services};
    use super::*;

    #[test]
    fn test_counts_are_leaf_tests() {
        let lines: Vec<String> = [
            "=== RUN   TestA",
            "--- PASS: TestA (0.00s)",
            "    --- PASS: TestA/sub (0.00s)",
            "--- FAIL: TestB (0.01s)",
            "--- SKIP: TestC (0.00s)",
            "--- FAIL: TestD (0.00s)",
            "    --- FAIL: TestD/bad_JSON (0.00s)",
            "    --- PASS: TestD/missing_alerts (0.00s)",
            "--- PASS: TestDx (0.00s)",
            "PASS: not a result line",
        ]
        .map(String::from)
        .to_vec();
        let counts = count_tests(&lines);
        // TestA and TestD count through their subtests; TestDx is not TestD's subtest.
        assert_eq!(
            counts,
            TestCounts {
                passed: 3,
                failed: 2,
                skipped: 1
            }
        );
        assert_eq!(counts.line(), "3 passed, 2 failed, 1 skipped");
    }

    #[test]
    fn render_replaces_tokens_and_rejects_unknown_ones() {
        let vars = vec![(
            "GATEWAY_IMAGE".to_string(),
            "localhost/gateway:e2e-abc".to_string(),
        )];
        let source = Utf8Path::new("gateway.yaml");
        assert_eq!(
            render(source, "image: ${GATEWAY_IMAGE}\n", &vars).unwrap(),
            "image: localhost/gateway:e2e-abc\n"
        );
        let err = render(source, "url: ${NOPE}\n", &vars)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gateway.yaml uses ${NOPE}"), "{err}");
        assert!(err.contains("GATEWAY_IMAGE"), "{err}");
    }

    #[test]
    fn services_are_dropped_for_podman() {
        let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gateway\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: gateway\n";
        let podman = without_services(manifest);
        assert!(podman.contains("kind: Deployment"));
        assert!(!podman.contains("kind: Service"));
    }

    fn sample_run() -> Run {
        Run {
            root: "/repo".into(),
            id: "2026-11-26T05-45-00Z".into(),
            backend: Backend::Kind,
            engine: Engine::Podman,
            flags: flags::E2eGateway {
                coverage: true,
                cluster: flags::ClusterBackend::Kind,
                keep_cluster: false,
                reuse_cluster: false,
                cluster_name: "gateway-e2e".into(),
                build_mode: flags::BuildMode::Host,
                engine: None,
                go_test_args: Vec::new(),
            },
            ports: vec![(project::SERVICES[0], 18081), (project::SERVICES[1], 18080)],
            logs_dir: "/repo/target/xtask/logs/x".into(),
            kubeconfig: "/repo/target/xtask/kubeconfig-gateway-e2e".into(),
            rendered_dir: "/repo/target/xtask/rendered".into(),
        }
    }

    #[test]
    fn summary_lists_phases_gap_tests_coverage_and_result() {
        let summary = Summary {
            backend: "kind".into(),
            phases: vec![
                ("1. preflight".into(), Duration::from_millis(300)),
                ("6. test".into(), Duration::from_millis(1500)),
            ],
            idle_gap: Some(Duration::from_millis(40)),
            tests: Some(TestCounts {
                passed: 12,
                failed: 1,
                skipped: 0,
            }),
            coverage: Some(Coverage {
                services: vec![("datastorage".into(), 69.5), ("gateway".into(), 74.04)],
                total: 74.6,
                profile: "/repo/target/coverage/e2e.out".into(),
            }),
            logs: Some("/repo/target/xtask/logs/x".into()),
            error: Some("phase 6 (test) failed: 1 E2E test(s) failed\nmore".into()),
        };
        let text = summary.render(&sample_run());
        let expected = [
            "  run                      2026-11-26T05-45-00Z (kind backend)",
            "  1. preflight             0.3s",
            "  6. test                  1.5s",
            "  idle gap                 40 ms (cluster ready to first load)",
            "  tests                    12 passed, 1 failed, 0 skipped",
            "  coverage datastorage     69.5%",
            "  coverage gateway         74.0%",
            "  coverage total           74.6%",
            "  coverage profile         /repo/target/coverage/e2e.out",
            "  logs                     /repo/target/xtask/logs/x",
            "  result                   failed (exit 1): phase 6 (test) failed: 1 E2E test(s) failed",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn kind_and_podman_render_different_addresses_from_one_template() {
        let mut run = sample_run();
        let kind = template_vars(&run, &[]);
        let get = |vars: &[(String, String)], k: &str| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(&kind, "COVERDATA_NODE_PATH"), "/coverdata");
        assert_eq!(get(&kind, "COVERDATA_HOST_PATH"), "/repo/coverdata");
        assert_eq!(get(&kind, "DATASTORAGE_URL"), "http://datastorage:8081");
        assert_eq!(get(&kind, "GATEWAY_HOST_PORT"), "18080");
        run.backend = Backend::Podman;
        let podman = template_vars(&run, &[]);
        assert_eq!(get(&podman, "COVERDATA_NODE_PATH"), "/repo/coverdata");
        assert_eq!(
            get(&podman, "DATASTORAGE_URL"),
            "http://host.containers.internal:18081"
        );
    }

    #[test]
    fn the_real_templates_render_for_both_backends() {
        let repo = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let infra = project::infrastructure_dir(repo);
        let images: Vec<Image> = project::SERVICES
            .iter()
            .map(|s| Image {
                service: *s,
                reference: format!("localhost/{}:e2e-0123456789ab", s.name),
                archive: None,
            })
            .collect();
        for backend in [Backend::Kind, Backend::Podman] {
            let mut run = sample_run();
            run.backend = backend;
            let vars = template_vars(&run, &images);
            for file in [
                "kind-gateway-config.yaml",
                "datastorage.yaml",
                "gateway.yaml",
            ] {
                let path = infra.join(file);
                let text = std::fs::read_to_string(&path).unwrap();
                let rendered = render(&path, &text, &vars).unwrap();
                assert!(!rendered.contains("${"), "{file}");
            }
            let gateway = render(
                &infra.join("gateway.yaml"),
                &std::fs::read_to_string(infra.join("gateway.yaml")).unwrap(),
                &vars,
            )
            .unwrap();
            assert!(gateway.contains("image: localhost/gateway:e2e-0123456789ab"));
            assert!(gateway.contains("hostPort: 18080"));
            assert!(gateway.contains("imagePullPolicy: IfNotPresent"));
        }
    }

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
