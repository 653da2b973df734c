//! `cargo xtask e2e-gateway`: build every image, then create the cluster, load the images at
//! once, deploy, test, collect coverage, and tear down, in that strict order. Building before
//! the cluster exists is the point: a Kind node left idle during a long build is what broke
//! `kind load` in the old flow.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
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

/// Grace period for the services to flush coverage counters on SIGTERM.
const STOP_GRACE_SECONDS: u32 = 30;
const ROLLOUT_TIMEOUT: &str = "180s";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Kind cluster creation is retried at most this many times, and only on these errors.
const CREATE_RETRIES: usize = 2;
const TRANSIENT_CREATE_ERRORS: &[&str] = &[
    "OCI runtime",
    "container state improper",
    "could not find a log line that matches",
];

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

/// What exists and must be torn down.
#[derive(Debug, Default, PartialEq, Eq)]
struct Deployed {
    cluster: bool,
}

pub fn run(sh: &Shell, flags: &flags::E2eGateway) -> anyhow::Result<()> {
    let root = project::root();
    let (backend, reason) = doctor::resolve_cluster(flags.cluster);
    println!("cluster backend: {} ({reason})", backend.name());
    let engine = doctor::resolve_engine(flags.engine)?;
    install_interrupt_handler(match backend {
        Backend::Kind => format!(
            "KIND_EXPERIMENTAL_PROVIDER={} kind delete cluster --name {}",
            engine.program(),
            flags.cluster_name
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
        kubeconfig: xtask_dir.join(format!("kubeconfig-{}", flags.cluster_name)),
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
    std::fs::create_dir_all(project::xtask_dir(&run.root))?;
    std::fs::write(&last_run, &text).with_context(|| format!("writing {last_run}"))?;
    phase.finish(true);
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
    timed(summary, 1, "preflight", || preflight(sh, run))?;

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

    if run.backend == Backend::Kind {
        let ready_at = timed(summary, 3, "create cluster", || {
            create_cluster(sh, run, deployed)
        })?;
        let gap = timed(summary, 4, "load images", || {
            load_images(sh, run, &images, deployed, ready_at)
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

    // From here on a failure is worth diagnostics, taken before anything is scaled down.
    let deployed_and_tested = timed(summary, 5, "deploy", || deploy(sh, run, &images, deployed))
        .and_then(|()| {
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
        });
    if deployed_and_tested.is_err() && !project::interrupted() {
        timed(summary, 7, "diagnostics", || diagnostics(sh, run))?;
        summary.logs = Some(run.logs_dir.clone());
        println!("    diagnostics written to {}", run.logs_dir);
    }
    if run.flags.coverage && !project::interrupted() {
        let coverage = timed(summary, 8, "coverage", || collect_coverage(sh, run));
        match (coverage, &deployed_and_tested) {
            (Ok(coverage), _) => summary.coverage = Some(coverage),
            // The test failure is the headline; a coverage failure after it is reported too.
            (Err(err), Err(_)) => eprintln!("warning: coverage: {err:#}"),
            (Err(err), Ok(())) => return Err(err),
        }
    }
    deployed_and_tested
}

/// Runs one numbered phase, recording its duration whether it succeeds or not.
fn timed<T>(
    summary: &mut Summary,
    number: usize,
    name: &'static str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let phase = Phase::start(number, name);
    let result = f().with_context(|| format!("phase {number} ({name}) failed"));
    let took = phase.finish(result.is_ok());
    summary.phases.push((format!("{number}. {name}"), took));
    result
}

/// `leftover` says how to remove what a skipped teardown leaves behind.
fn install_interrupt_handler(leftover: String) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SIGNALS: AtomicUsize = AtomicUsize::new(0);
    // A second Ctrl-C means "stop now": say what may be left behind.
    let _ = ctrlc::set_handler(move || {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: stopping and tearing down (press Ctrl-C again to skip teardown)"
            );
            project::set_interrupted();
        } else {
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

fn preflight(sh: &Shell, run: &Run) -> anyhow::Result<()> {
    let kind = run.backend == Backend::Kind;
    let report = doctor::preflight(
        sh,
        &run.root,
        &doctor::Needs {
            engine: Some(run.engine),
            go: true,
            covdata: run.flags.coverage,
            kind,
            kubectl: kind,
            // A cluster being reused keeps its ports.
            ports: if kind && run.flags.reuse_cluster {
                Vec::new()
            } else {
                run.ports.iter().map(|(_, port)| *port).collect()
            },
            disk: true,
            stale_cluster: kind.then(|| run.flags.cluster_name.clone()),
        },
    )?;
    if report.stale_cluster_found && !run.flags.reuse_cluster {
        println!(
            "    a cluster named {} exists from an earlier run: it will be deleted and recreated (--reuse-cluster keeps a healthy one)",
            run.flags.cluster_name
        );
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

// ---- Kind ------------------------------------------------------------------------------------

/// A shell whose every command carries the Kind provider variable.
fn kind_shell(sh: &Shell, engine: Engine) -> Shell {
    let kind_sh = sh.clone();
    if let Some((key, value)) = doctor::kind_provider_env(engine) {
        kind_sh.set_var(key, value);
    }
    kind_sh
}

fn node_container(run: &Run) -> String {
    format!("{}-control-plane", run.flags.cluster_name)
}

/// Creates the cluster (or reuses a healthy one) and returns when it became ready.
fn create_cluster(sh: &Shell, run: &Run, deployed: &mut Deployed) -> anyhow::Result<Instant> {
    let kind_sh = kind_shell(sh, run.engine);
    let name = &run.flags.cluster_name;
    let exists = cluster_exists(&kind_sh, name)?;
    if exists && run.flags.reuse_cluster {
        if node_state(sh, run)? == "running" && api_answers(&kind_sh, run)? {
            println!("    reusing the running cluster {name}");
            deployed.cluster = true;
            return Ok(Instant::now());
        }
        println!("    the cluster {name} is not healthy: recreating it");
    }
    if exists {
        println!("    deleting the stale cluster {name}");
        delete_cluster(&kind_sh, run)?;
    }
    let config = render_kind_config(run)?;
    let kubeconfig = &run.kubeconfig;
    for attempt in 0..=CREATE_RETRIES {
        deployed.cluster = true;
        let output = cmd!(
            kind_sh,
            "kind create cluster --name {name} --config {config} --kubeconfig {kubeconfig}"
        )
        .quiet()
        .ignore_status()
        .output()
        .context(
            "running `kind create cluster` failed: is kind installed? (`cargo xtask doctor`)",
        )?;
        if output.status.success() {
            return Ok(Instant::now());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        check_interrupted()?;
        let transient = TRANSIENT_CREATE_ERRORS.iter().any(|e| stderr.contains(e));
        if !transient || attempt == CREATE_RETRIES {
            bail!(
                "`kind create cluster --name {name}` failed{}; kind said:\n{}\nrun `cargo xtask doctor`, then retry",
                if transient { format!(" {} times", attempt + 1) } else { String::new() },
                stderr.trim_end()
            );
        }
        println!(
            "    transient container runtime error, deleting and retrying ({}/{CREATE_RETRIES})",
            attempt + 1
        );
        delete_cluster(&kind_sh, run)?;
    }
    unreachable!("the loop returns or bails on its last attempt")
}

fn cluster_exists(kind_sh: &Shell, name: &str) -> anyhow::Result<bool> {
    let clusters = cmd!(kind_sh, "kind get clusters")
        .quiet()
        .ignore_stderr()
        .read()
        .context("`kind get clusters` failed: run `cargo xtask doctor`")?;
    Ok(clusters.lines().any(|l| l.trim() == name))
}

/// Idempotent: kind succeeds when there is no such cluster. The kubeconfig is ours, so the
/// user's ~/.kube/config is never edited.
fn delete_cluster(kind_sh: &Shell, run: &Run) -> anyhow::Result<()> {
    let name = &run.flags.cluster_name;
    let kubeconfig = &run.kubeconfig;
    cmd!(
        kind_sh,
        "kind delete cluster --name {name} --kubeconfig {kubeconfig}"
    )
    .quiet()
    .run()
    .with_context(|| {
        format!(
            "`kind delete cluster --name {name}` failed: delete it by hand and check `{} ps -a`",
            run.engine.program()
        )
    })
}

/// The node container's state as the engine reports it (`running`, `exited`, ...).
fn node_state(sh: &Shell, run: &Run) -> anyhow::Result<String> {
    let program = run.engine.program();
    let node = node_container(run);
    let format = "{{.State.Status}}";
    let output = cmd!(sh, "{program} inspect --format {format} {node}")
        .quiet()
        .ignore_status()
        .output()?;
    if !output.status.success() {
        return Ok("missing".to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn api_answers(kind_sh: &Shell, run: &Run) -> anyhow::Result<bool> {
    let name = &run.flags.cluster_name;
    let kubeconfig = &run.kubeconfig;
    let exported = cmd!(
        kind_sh,
        "kind export kubeconfig --name {name} --kubeconfig {kubeconfig}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    if !exported.status.success() {
        return Ok(false);
    }
    let readyz = cmd!(
        kind_sh,
        "kubectl --kubeconfig {kubeconfig} get --raw /readyz"
    )
    .quiet()
    .ignore_status()
    .output()?;
    Ok(readyz.status.success())
}

/// Checks the node is running, then loads every archive; returns the idle gap between the
/// cluster becoming ready and the first load starting.
fn load_images(
    sh: &Shell,
    run: &Run,
    images: &[Image],
    deployed: &mut Deployed,
    mut ready_at: Instant,
) -> anyhow::Result<Duration> {
    let kind_sh = kind_shell(sh, run.engine);
    let name = &run.flags.cluster_name;
    let node = node_container(run);
    let state = node_state(sh, run)?;
    if state != "running" {
        println!(
            "    the Kind node container {node} is {state}, not running: images cannot be loaded into a stopped node (the \"container state improper\" failure); recreating the cluster once"
        );
        delete_cluster(&kind_sh, run)?;
        ready_at = create_cluster(sh, run, deployed)?;
        let state = node_state(sh, run)?;
        if state != "running" {
            bail!(
                "the Kind node container {node} is {state} again after recreating the cluster: check `{} logs {node}`, free memory and disk (`cargo xtask doctor`), then retry",
                run.engine.program()
            );
        }
    }
    let gap = ready_at.elapsed();
    println!(
        "    idle gap (cluster ready to first load): {}",
        ui::seconds(gap)
    );
    for image in images {
        let archive = image.archive.as_ref().with_context(|| {
            format!(
                "no image archive for {}: this is a bug in the build phase",
                image.service.name
            )
        })?;
        let output = cmd!(kind_sh, "kind load image-archive {archive} --name {name}")
            .quiet()
            .ignore_status()
            .output()
            .context("running `kind load image-archive` failed")?;
        if !output.status.success() {
            bail!(
                "`kind load image-archive {archive} --name {name}` failed for {}; kind said:\n{}\ncheck that the node {node} is running (`{} ps -a`)",
                image.service.name,
                String::from_utf8_lossy(&output.stderr).trim_end(),
                run.engine.program()
            );
        }
        println!("    loaded {}", image.reference);
    }
    Ok(gap)
}

fn render_kind_config(run: &Run) -> anyhow::Result<Utf8PathBuf> {
    let source = project::infrastructure_dir(&run.root).join("kind-gateway-config.yaml");
    let text = std::fs::read_to_string(&source).with_context(|| format!("reading {source}"))?;
    let rendered = render(&source, &text, &template_vars(run, &[]))?;
    write_rendered(run, "kind-gateway-config.yaml", &rendered)
}

// ---- Deploy ----------------------------------------------------------------------------------

/// Values of the `${NAME}` tokens in test/infrastructure/.
fn template_vars(run: &Run, images: &[Image]) -> Vec<(String, String)> {
    let host_path = project::coverdata_dir(&run.root).to_string();
    let node_path = match run.backend {
        // The Kind config mounts the host's coverdata/ at /coverdata in the node.
        Backend::Kind => "/coverdata".to_string(),
        Backend::Podman => host_path.clone(),
    };
    let mut vars = vec![
        ("COVERDATA_HOST_PATH".to_string(), host_path),
        ("COVERDATA_NODE_PATH".to_string(), node_path),
    ];
    for (service, port) in &run.ports {
        vars.push((
            format!("{}_HOST_PORT", service.name.to_uppercase()),
            port.to_string(),
        ));
    }
    let datastorage_port = project::SERVICES[0].container_port;
    let datastorage_url = match run.backend {
        Backend::Kind => format!("http://datastorage:{datastorage_port}"),
        // podman kube play has no Service DNS: the gateway reaches datastorage via its host port.
        Backend::Podman => format!("http://host.containers.internal:{}", run.ports[0].1),
    };
    vars.push(("DATASTORAGE_URL".to_string(), datastorage_url));
    for image in images {
        vars.push((
            format!("{}_IMAGE", image.service.name.to_uppercase()),
            image.reference.clone(),
        ));
    }
    vars
}

/// Replaces `${NAME}` tokens; a token nobody provides is an error, not an empty string.
fn render(source: &Utf8Path, text: &str, vars: &[(String, String)]) -> anyhow::Result<String> {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(start) = out.find("${") {
        let token: String = out[start..].chars().take_while(|c| *c != '}').collect();
        let known: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "{source} uses {token}}}, which the xtask does not provide: use one of {}",
            known.join(", ")
        );
    }
    Ok(out)
}

/// Drops the documents of a kind `podman kube play` does not run (Services).
fn without_services(manifest: &str) -> String {
    manifest
        .split("\n---")
        .filter(|doc| !doc.lines().any(|l| l.trim() == "kind: Service"))
        .collect::<Vec<_>>()
        .join("\n---")
}

fn write_rendered(run: &Run, name: &str, text: &str) -> anyhow::Result<Utf8PathBuf> {
    std::fs::create_dir_all(&run.rendered_dir)
        .with_context(|| format!("creating {}", run.rendered_dir))?;
    let path = run.rendered_dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
    Ok(path)
}

fn rendered_manifests(run: &Run, images: &[Image]) -> anyhow::Result<Vec<(Service, Utf8PathBuf)>> {
    let vars = template_vars(run, images);
    let mut manifests = Vec::new();
    for service in project::SERVICES {
        let source = project::infrastructure_dir(&run.root).join(format!("{}.yaml", service.name));
        let text = std::fs::read_to_string(&source).with_context(|| format!("reading {source}"))?;
        let mut rendered = render(&source, &text, &vars)?;
        if run.backend == Backend::Podman {
            rendered = without_services(&rendered);
        }
        manifests.push((
            service,
            write_rendered(run, &format!("{}.yaml", service.name), &rendered)?,
        ));
    }
    Ok(manifests)
}

/// Podman names the pod of a one-replica Deployment `<name>-pod-0`, its containers
/// `<pod>-<container>`.
fn podman_pod(service: Service) -> String {
    format!("{}-pod-0", service.name)
}

fn deploy(sh: &Shell, run: &Run, images: &[Image], deployed: &mut Deployed) -> anyhow::Result<()> {
    let manifests = rendered_manifests(run, images)?;
    match run.backend {
        Backend::Kind => {
            let kubeconfig = &run.kubeconfig;
            for (_, manifest) in &manifests {
                cmd!(sh, "kubectl --kubeconfig {kubeconfig} apply -f {manifest}")
                    .quiet()
                    .ignore_stdout()
                    .run()
                    .with_context(|| format!("`kubectl apply -f {manifest}` failed"))?;
            }
            // Dependency order: gateway's readiness needs datastorage.
            for (service, _) in &manifests {
                let deployment = format!("deployment/{}", service.name);
                cmd!(sh, "kubectl --kubeconfig {kubeconfig} rollout status {deployment} --timeout {ROLLOUT_TIMEOUT}")
                    .quiet()
                    .ignore_stdout()
                    .run()
                    .with_context(|| format!("{} did not roll out within {ROLLOUT_TIMEOUT}: see the pod events in the diagnostics", service.name))?;
            }
        }
        Backend::Podman => {
            remove_podman_pods(sh, run, &manifests)?;
            deployed.cluster = true;
            // podman kube play would treat a directory entry named like an image as a build
            // context: run it from a directory of our own.
            let _dir = sh.push_dir(&run.rendered_dir);
            for (service, manifest) in &manifests {
                let output = cmd!(sh, "podman kube play {manifest}")
                    .quiet()
                    .ignore_status()
                    .output()
                    .context("running `podman kube play` failed")?;
                if !output.status.success() {
                    bail!(
                        "`podman kube play {manifest}` failed for {}; podman said:\n{}",
                        service.name,
                        String::from_utf8_lossy(&output.stderr).trim_end()
                    );
                }
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

/// Runs the Go E2E suite, streaming its output and a copy to the run's log directory.
fn go_test(sh: &Shell, run: &Run) -> anyhow::Result<TestCounts> {
    std::fs::create_dir_all(&run.logs_dir).with_context(|| format!("creating {}", run.logs_dir))?;
    let log_path = run.logs_dir.join("go-test.log");
    let mut log =
        std::fs::File::create(&log_path).with_context(|| format!("creating {log_path}"))?;
    let extra = &run.flags.go_test_args;
    let mut command = Command::from(
        cmd!(
            sh,
            "go test -tags e2e -count=1 -v ./test/e2e/gateway/... {extra...}"
        )
        .env("GATEWAY_URL", service_url(run, "gateway"))
        .env("DATASTORAGE_URL", service_url(run, "datastorage")),
    );
    // Its own process group, so an interrupt can stop `go test` and the test binary it runs.
    let mut child = command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `go test` failed: is Go installed? (`cargo xtask doctor`)")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    // Read on a thread so the main thread can notice an interrupt and stop the child.
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            lines.push(line);
        }
        lines
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if project::interrupted() {
            let group = format!("-{}", child.id());
            let _ = cmd!(sh, "kill -TERM -- {group}")
                .quiet()
                .ignore_stderr()
                .run();
            let _ = child.wait();
            bail!("interrupted during the tests");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines = reader.join().expect("the output reader does not panic");
    for line in &lines {
        writeln!(log, "{line}")?;
    }
    let counts = count_tests(&lines);
    if !status.success() && counts.failed == 0 {
        bail!("`go test` exited with {status} before reporting results: see the output above (a compile error in test/e2e?)");
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

fn count_tests(lines: &[String]) -> TestCounts {
    let mut counts = TestCounts::default();
    for line in lines {
        match line.trim_start().split(':').next() {
            Some("--- PASS") => counts.passed += 1,
            Some("--- FAIL") => counts.failed += 1,
            Some("--- SKIP") => counts.skipped += 1,
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
            let kind_sh = kind_shell(sh, run.engine);
            let name = &run.flags.cluster_name;
            let kind_logs = dir.join("kind");
            save(
                "kind-export.txt",
                cmd!(kind_sh, "kind export logs {kind_logs} --name {name}")
                    .quiet()
                    .ignore_status()
                    .output(),
            );
            let kubeconfig = &run.kubeconfig;
            let k = |args: &[&str]| {
                cmd!(sh, "kubectl --kubeconfig {kubeconfig} {args...}")
                    .quiet()
                    .ignore_status()
                    .output()
            };
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
    match run.backend {
        Backend::Kind => {
            let kubeconfig = &run.kubeconfig;
            let deployments: Vec<String> = project::SERVICES
                .iter()
                .map(|s| format!("deployment/{}", s.name))
                .collect();
            cmd!(
                sh,
                "kubectl --kubeconfig {kubeconfig} scale {deployments...} --replicas=0"
            )
            .quiet()
            .ignore_stdout()
            .run()
            .context("scaling the services to zero failed; the coverage counters may be missing")?;
            let selector = format!("app in ({})", project::SERVICES.map(|s| s.name).join(","));
            let timeout = format!("{}s", STOP_GRACE_SECONDS + 30);
            cmd!(sh, "kubectl --kubeconfig {kubeconfig} wait --for=delete pod --selector {selector} --timeout {timeout}")
                .quiet()
                .ignore_stdout()
                .run()
                .with_context(|| format!("the service pods were not gone within {timeout}: their counters may be incomplete"))?;
        }
        Backend::Podman => {
            let pods: Vec<String> = project::SERVICES.iter().map(|s| podman_pod(*s)).collect();
            let grace = STOP_GRACE_SECONDS.to_string();
            // Captured: podman 4.3 logs harmless systemd healthcheck errors on stop here.
            let output = cmd!(sh, "podman pod stop --time {grace} {pods...}")
                .quiet()
                .ignore_status()
                .output()?;
            if !output.status.success() {
                bail!(
                    "`podman pod stop` failed, so the coverage counters may be missing; podman said:\n{}",
                    String::from_utf8_lossy(&output.stderr).trim_end()
                );
            }
        }
    }
    let dirs: Vec<Utf8PathBuf> = project::SERVICES
        .iter()
        .map(|s| project::coverdata_dir(&run.root).join(s.name))
        .collect();
    covdata_report::check_counters(&dirs)?;
    covdata_report::report(sh, &run.root, &dirs)
}

// ---- Teardown --------------------------------------------------------------------------------

fn teardown(sh: &Shell, run: &Run, deployed: &Deployed) -> anyhow::Result<()> {
    if !deployed.cluster {
        println!("    nothing to tear down");
        return Ok(());
    }
    if run.flags.keep_cluster {
        match run.backend {
            Backend::Kind => println!(
                "    keeping the cluster: export KUBECONFIG={}\n    delete it with: KIND_EXPERIMENTAL_PROVIDER={} kind delete cluster --name {} --kubeconfig {}",
                run.kubeconfig,
                run.engine.program(),
                run.flags.cluster_name,
                run.kubeconfig
            ),
            Backend::Podman => println!(
                "    keeping the pods: remove them with: podman kube down {}",
                run.rendered_dir.join("<service>.yaml")
            ),
        }
        return Ok(());
    }
    match run.backend {
        Backend::Kind => {
            // `kind delete cluster` succeeds when there is nothing to delete: no check needed.
            delete_cluster(&kind_shell(sh, run.engine), run)?;
            println!("    deleted the cluster {}", run.flags.cluster_name);
        }
        Backend::Podman => {
            let manifests: Vec<(Service, Utf8PathBuf)> = project::SERVICES
                .iter()
                .map(|s| (*s, run.rendered_dir.join(format!("{}.yaml", s.name))))
                .collect();
            remove_podman_pods(sh, run, &manifests)?;
            println!("    removed the pods");
        }
    }
    Ok(())
}

/// `podman kube down` every manifest whose pod exists, then check nothing of ours is left.
/// Idempotent: safe before a deploy (stale pods) and after it.
fn remove_podman_pods(
    sh: &Shell,
    run: &Run,
    manifests: &[(Service, Utf8PathBuf)],
) -> anyhow::Result<()> {
    let _dir = sh.push_dir(&run.rendered_dir);
    for (service, manifest) in manifests {
        let pod = podman_pod(*service);
        if !podman_pod_exists(sh, &pod)? {
            continue;
        }
        // A graceful stop first: `kube down` alone gives no grace period.
        let grace = STOP_GRACE_SECONDS.to_string();
        let _ = cmd!(sh, "podman pod stop --time {grace} {pod}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        let downed = manifest.exists()
            && cmd!(sh, "podman kube down {manifest}")
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run()
                .is_ok();
        if !downed {
            cmd!(sh, "podman pod rm --force {pod}")
                .quiet()
                .ignore_stdout()
                .run()
                .with_context(|| format!("removing the pod {pod} failed: remove it with `podman pod rm --force {pod}`"))?;
        }
        if podman_pod_exists(sh, &pod)? {
            bail!("the pod {pod} is still there after `podman kube down`: remove it with `podman pod rm --force {pod}`");
        }
    }
    Ok(())
}

fn podman_pod_exists(sh: &Shell, pod: &str) -> anyhow::Result<bool> {
    let output = cmd!(sh, "podman pod exists {pod}")
        .quiet()
        .ignore_status()
        .output()
        .context("running `podman pod exists` failed")?;
    Ok(output.status.success())
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
                format!("{} (cluster ready to first load)", ui::seconds(gap)),
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
    use super::*;

    #[test]
    fn test_counts_include_subtests() {
        let lines: Vec<String> = [
            "=== RUN   TestA",
            "--- PASS: TestA (0.00s)",
            "    --- PASS: TestA/sub (0.00s)",
            "--- FAIL: TestB (0.01s)",
            "--- SKIP: TestC (0.00s)",
            "PASS: not a result line",
        ]
        .map(String::from)
        .to_vec();
        let counts = count_tests(&lines);
        assert_eq!(
            counts,
            TestCounts {
                passed: 2,
                failed: 1,
                skipped: 1
            }
        );
        assert_eq!(counts.line(), "2 passed, 1 failed, 1 skipped");
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
            "  idle gap                 0.0s (cluster ready to first load)",
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
