//! `cargo xtask e2e <suite>...` (and the `e2e-gateway` alias of flags.rs): build every image, then
//! create the cluster, load the images at once, deploy, test, collect coverage, and tear down,
//! in that strict order. Building before the cluster exists is the point: a Kind node left idle
//! during a long build is what broke `kind load` in the old flow. The cluster backend
//! (`crate::cluster`) does the work of each phase; this file only says the order. Several
//! suites: `e2e/several.rs`.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use crate::{
    build_images::{self, BuildMode, Image},
    check::{self, Needs},
    cluster::{self, Clear, Cluster, Diagnose, Leftover, Preflight, Settings, Target},
    cmd::{self, check_interrupted, CmdError},
    covdata_report::{self, Coverage},
    coverdata, engine, http,
    lock::{self, Lock},
    manifests, project,
    suite::{self, Component, Ready, Suite},
    ui,
};

mod runner;
mod several;
mod summary;

use summary::{Phase, Summary};

/// `cargo xtask e2e`'s flags, its suites, and the arguments after `--`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The suites to run, by name.
    pub suites: Vec<String>,
    /// `--list`: say which suites there are instead.
    pub list: bool,
    /// How many suites run side by side.
    pub jobs: usize,
    pub coverage: bool,
    pub target: Target,
    pub keep_cluster: bool,
    pub reuse_cluster: bool,
    pub build_mode: BuildMode,
    /// `--cluster existing`: keep the run's namespace afterwards.
    pub keep_namespace: bool,
    /// For the suite's runner (`go test`, ginkgo).
    pub test_args: Vec<String>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Run folders kept in target/xtask/logs/, this run's included.
const LOGS_KEPT: usize = 20;

pub fn run(sh: &Shell, flags: &Options) -> Result<()> {
    let root = project::root();
    if flags.list {
        print!("{}", suite::list(&suite::all(&root)?));
        return Ok(());
    }
    let env = |name: &str| std::env::var(name).ok();
    let suites: Vec<Suite> = flags
        .suites
        .iter()
        .map(|name| suite::load(&root, name)?.with_host_ports(env))
        .collect::<Result<_>>()?;
    match &suites[..] {
        [] => bail!("no suite named: name one or more (`cargo xtask e2e --list` lists them)"),
        [one] => run_suite(sh, flags, one.clone()),
        several => several::run(sh, flags, several),
    }
}

/// The phases of one suite's run, in the order they run. Phases 1 to 6 stop at the first
/// failure; 7 to 10 run after one too. The run's state is its own: what exists (in the teardown
/// guard) and whether any service started.
fn run_suite(sh: &Shell, flags: &Options, suite: Suite) -> Result<()> {
    let root = project::root();
    let suite_name = suite.name.clone();
    let name = flags.target.cluster_name.clone().unwrap_or(format!("{suite_name}-e2e"));
    let (settings, cluster) = cluster::pick(sh, &flags.target, &name, &root, suite)?;
    println!("cluster backend: {} ({})", settings.backend.name(), settings.why);
    cmd::set_leftover(cluster.remove_command());
    // Sortable by time, and apart from a run of another cluster name in the same second.
    let id = format!("{}-{}", project::utc_timestamp(SystemTime::now()), settings.name);
    let logs = project::xtask_dir(&root).join("logs");
    prune_logs(&logs, LOGS_KEPT - 1);
    let logs_dir = logs.join(&id);
    let summary =
        Summary { id, suite: suite_name, backend: settings.backend.name(), ..Summary::default() };
    let mut run = Run::new(summary);
    run.summary.start(&project::xtask_dir(&root));
    // Declared before the cluster's guard, so dropped after it: the name is ours through the
    // teardown, whatever ends the run.
    let _lock: Option<Lock>;
    // `--reuse-cluster` keeps the cluster too: reusing it next time is the point of the flag.
    let keep = flags.keep_cluster || flags.reuse_cluster || flags.keep_namespace;
    let mut cluster = Teardown { cluster, sh: sh.clone(), keep, exists: false, done: false };
    let mut started = false;
    let suite = &settings.suite;

    // 1. The name's lock, the checks, what an earlier run left.
    let preflight = run.phase(Phase::Preflight, || preflight(sh, &settings, flags, &mut cluster));
    let (lock, archives) = preflight.unzip();
    _lock = lock;
    // 2. Every image, before any cluster exists.
    let build = || build(sh, &settings, flags, archives.unwrap_or_default());
    let images = run.phase(Phase::BuildImages, build).unwrap_or_default();
    // 3. The cluster, and 4. the images in it, at once.
    run.phase(Phase::CreateCluster, || {
        cluster.exists = true;
        cluster.create(sh)
    });
    run.summary.idle_gap = run.phase(Phase::LoadImages, || cluster.load(sh, &images)).flatten();
    // 5. Everything the suite deploys, in dependency order, each ready.
    run.phase(Phase::Deploy, || {
        let deployed = cluster.deploy(sh, &images);
        started = deployed.as_ref().map_or_else(|err| err.started, |()| true);
        deployed.map_err(|err| err.error)?;
        suite.components.iter().try_for_each(wait_ready)
    });
    // 6. The suite's tests, told where each component is and how to restart it.
    let mut tests = None;
    run.phase(Phase::Test, || {
        let env = test_env(suite, cluster.cluster.as_ref());
        let report = tests.insert(runner::run(sh, suite, &env, &flags.test_args, &logs_dir)?);
        println!("{}", report.line());
        judge(report, &logs_dir)
    });
    run.summary.tests = tests;

    // 7. What explains a failure, and before a coverage run stops its services, their logs:
    // before anything is stopped or deleted (not after Ctrl-C).
    let diagnose = match run.failure {
        Some(_) => Some(Diagnose::Failure),
        None => (flags.coverage && started).then_some(Diagnose::BeforeStopping),
    };
    if let (Some(what), true, false) = (diagnose, cluster.exists, cmd::interrupted()) {
        let collected = run.summary.phase(Phase::Diagnostics, || {
            if cluster.diagnostics(sh, &logs_dir, what)? {
                println!("    diagnostics written to {logs_dir}");
            }
            Ok(())
        });
        if let Err(err) = collected {
            eprintln!("warning: {err:#}");
        }
    }
    // 8. The services stop gracefully and their counters are reported; a test failure stays
    // the headline.
    if flags.coverage && started && !cmd::interrupted() {
        let report = || coverage(sh, &settings, &mut cluster);
        run.summary.coverage = run.after_failure(Phase::Coverage, "warning", report);
    }
    // 9. After success, failure and Ctrl-C alike.
    run.after_failure(Phase::Teardown, "error", || cluster.tear_down());
    // The next coverage run archives this data under its outcome; passed runs are kept longer.
    // The outcome is that of the run whose services wrote the data: a run that never started
    // them (it could not archive the data before it, say) leaves that run's outcome alone.
    if flags.coverage && started {
        let data = project::suite_coverdata(&root, &suite.name);
        if let Err(err) = coverdata::record_outcome(&data, run.failure.is_none()) {
            eprintln!("warning: {err:#}");
        }
    }
    // 10. The summary.
    run.summary.logs = logs_dir.is_dir().then(|| logs_dir.clone());
    run.finish(&root)
}

/// What the tests are told: where each component is on this machine (`<NAME>_URL`,
/// `<NAME>_ADDR`), and how to restart it where the backend can (`<NAME>_RESTART_COMMAND`, the
/// command's words as a JSON array).
fn test_env(suite: &Suite, cluster: &dyn Cluster) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for c in &suite.components {
        env.push((c.variable("URL"), format!("http://127.0.0.1:{}", c.host_port)));
        env.push((c.variable("ADDR"), format!("127.0.0.1:{}", c.host_port)));
        if let Some(command) = cluster.restart_command(c) {
            let words: Vec<String> = command.iter().map(|w| json_string(w)).collect();
            env.push((c.variable("RESTART_COMMAND"), format!("[{}]", words.join(","))));
        }
    }
    env
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            c if (c as u32) < 0x20 => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out + "\""
}

/// The cluster, torn down when the run ends: by phase 9, or when it is dropped before that (a
/// panic), so nothing is left behind either way. Whether something of ours may exist is the
/// pipeline's to know: it says so when it creates (or keeps) the cluster.
struct Teardown {
    cluster: Box<dyn Cluster>,
    sh: Shell,
    keep: bool,
    exists: bool,
    done: bool,
}

impl Teardown {
    fn tear_down(&mut self) -> Result<()> {
        self.done = true;
        if !self.exists {
            println!("    nothing to tear down");
            return Ok(());
        }
        self.cluster.teardown(&self.sh, self.keep)
    }
}

impl std::ops::Deref for Teardown {
    type Target = dyn Cluster;
    fn deref(&self) -> &Self::Target {
        self.cluster.as_ref()
    }
}

impl std::ops::DerefMut for Teardown {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.cluster.as_mut()
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.done && self.exists {
            if let Err(err) = self.cluster.teardown(&self.sh, self.keep) {
                eprintln!("error: tearing down after the run stopped early failed: {err:#}\nremove it with: {}", self.cluster.remove_command());
            }
        }
    }
}

/// The summary, and the run's first failure.
struct Run {
    summary: Summary,
    failure: Option<anyhow::Error>,
}

impl Run {
    fn new(summary: Summary) -> Run {
        Run { summary, failure: None }
    }

    /// Runs `phase` unless an earlier phase failed or the run was interrupted; its value, or
    /// None when it did not run or failed (its failure is the run's).
    fn phase<T>(&mut self, phase: Phase, f: impl FnOnce() -> Result<T>) -> Option<T> {
        if self.failure.is_none() {
            self.failure = cmd::check_interrupted().err();
        }
        if self.failure.is_some() {
            return None;
        }
        self.summary.phase(phase, f).map_err(|err| self.failure = Some(err)).ok()
    }

    /// Runs `phase` whatever happened before: its failure is the run's if the run has none yet,
    /// else printed as a `level` line beside it.
    fn after_failure<T>(
        &mut self,
        phase: Phase,
        level: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Option<T> {
        match self.summary.phase(phase, f) {
            Ok(value) => Some(value),
            Err(err) if self.failure.is_none() => {
                self.failure = Some(err);
                None
            }
            Err(err) => {
                eprintln!("{level}: {err:#}");
                None
            }
        }
    }

    /// Phase 10: the summary, the failure's cause and fix (also as a GitHub Actions
    /// annotation), and the run's result. Each text is printed once: the summary's `result` says
    /// what the run was doing (the failed phase and the contexts above the failed command),
    /// `cause` the command, how it ended and the last line it printed, `fix` what to do (for
    /// errors we know, else the command's own hint); the error after it only what the summary
    /// leaves out (the lines the command printed before its last, or the error's further lines).
    fn finish(mut self, root: &Utf8Path) -> Result<()> {
        // What only the error says: a header and its lines.
        let mut more: Option<(String, Vec<String>)> = None;
        if let Some(err) = &self.failure {
            let is_command = |e: &&(dyn std::error::Error + 'static)| e.is::<CmdError>();
            let command = err.chain().find_map(|e| e.downcast_ref::<CmdError>());
            let doing: Vec<String> =
                err.chain().take_while(|e| !is_command(e)).map(|e| e.to_string()).collect();
            let doing = doing.join(": ");
            more = match command {
                Some(command) => {
                    let program = command.command.split_whitespace().next().unwrap_or("it");
                    let header = format!("before the line the cause quotes, `{program}` printed");
                    Some((header, command.earlier_lines()))
                }
                None => Some((
                    "the result goes on".into(),
                    doing.lines().skip(1).map(str::to_string).collect(),
                )),
            };
            self.summary.cause = command.map(CmdError::one_line);
            let hint = command.map(CmdError::hint).filter(|hint| !hint.is_empty());
            self.summary.fix =
                engine::known_fix(&format!("{err:#}"), root).or(hint.map(str::to_string));
            self.summary.error = Some(doing);
        }
        self.summary.finish(&project::xtask_dir(root));
        several::leave_result(&self.summary.render());
        if let (true, Some(err)) = (ui::github_actions(), &self.summary.error) {
            // The failed phase and its fix on the run's page, outside the folded groups.
            let (title, rest) = err.split_once(": ").unwrap_or(("e2e failed", err));
            let (cause, fix) = (self.summary.cause.as_deref(), self.summary.fix.as_deref());
            let lines = rest.lines().take(1).chain(cause).chain(fix);
            println!("{}", ui::error_annotation(title, &lines.collect::<Vec<_>>().join("\n")));
        }
        let Some(err) = self.failure else { return Ok(()) };
        // The outermost context: `phase 3 (create cluster) failed`.
        let failed = err.to_string();
        // An error of ours ends with its fix; a command's only when we know one.
        let fixed = self.summary.fix.is_some() || self.summary.cause.is_none();
        let what = if fixed { "why and what to do" } else { "why" };
        let summary = format!("the summary above says {what} (also in target/xtask/last-run.txt)");
        match more.filter(|(_, lines)| !lines.is_empty()) {
            Some((header, lines)) => {
                let indent = |line: &String| match line.trim().is_empty() {
                    true => "\n".to_string(),
                    false => format!("    {line}\n"),
                };
                let lines: String = lines.iter().map(indent).collect();
                bail!("{failed}; {header}:\n{lines}{summary}")
            }
            None => bail!("{failed}: {summary}"),
        }
    }
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

/// A test phase succeeds only when tests ran and none failed.
fn judge(tests: &runner::TestReport, logs_dir: &Utf8Path) -> Result<()> {
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
        bail!("no E2E test ran: check the arguments after `--` (a `-run` or label filter that matches nothing?)");
    }
    Ok(())
}

/// Phase 1: the cluster name is ours alone (no live run uses it), the checks for this backend,
/// then what an earlier run left is cleared (it holds our host ports, which are checked once it
/// is gone), before the build phase archives coverdata/: its services write their last
/// counters when they stop. Returns the lock and whether the build saves image archives.
fn preflight(
    sh: &Shell,
    settings: &Settings,
    flags: &Options,
    cluster: &mut Teardown,
) -> Result<(Lock, bool)> {
    let suite = &settings.suite.name;
    let lock = lock::acquire(&settings.name, &settings.root, flags.coverage.then_some(suite))?;
    // An error here means a missing tool, which the checks below report properly.
    let leftover = cluster.leftover(sh).unwrap_or(Leftover::Nothing);
    // Not ours to remove, and in the way of what the run creates: stop before anything starts.
    if let Leftover::Foreign { what, fix } = &leftover {
        bail!("{what}: {fix}");
    }
    let Preflight { needs, mut checks, archives } = cluster.preflight(sh);
    // A broken manifest fails here, before anything is built or created.
    checks.push(manifests::check(&settings.root, &settings.suite));
    let container = flags.build_mode == BuildMode::Container;
    let mut writes = settings.writes(flags.coverage);
    writes.extend(needs.writes.iter().cloned());
    let needs = Needs {
        writes,
        covdata: flags.coverage,
        buildkit: container,
        dockerfiles: container,
        disk: true,
        // Held by the earlier run until it is cleared: checked below.
        ports: if leftover == Leftover::Nothing { needs.ports.clone() } else { Vec::new() },
        ..needs
    };
    check::preflight(sh, &settings.root, &needs, checks)?;
    let Leftover::Stale(what) = leftover else {
        return Ok((lock, archives));
    };
    println!("    {what}");
    let how = if flags.reuse_cluster { Clear::ReuseIfHealthy } else { Clear::Remove };
    if cluster.clear_leftover(sh, how)? == Clear::Reused {
        cluster.exists = true;
        // Its services write their last counters before coverdata/ is archived.
        if flags.coverage {
            if let Err(err) = cluster.flush_coverage(sh) {
                println!("    could not stop its services: {err:#}");
            }
        }
        return Ok((lock, archives));
    }
    let components = &settings.suite.components;
    let taken = components.iter().map(|c| (c, check::check_port(sh, c))).find(|(_, c)| !c.is_ok());
    if let Some((component, check)) = taken {
        let (port, name, hint) = (component.host_port, &component.name, &check.hint);
        bail!("port {port} ({name}) is still in use after removing the earlier run: {hint}");
    }
    Ok((lock, archives))
}

/// Phase 2: every image, before any cluster exists (cache hits cost nothing): the services of
/// ours, built, and the third-party images, pulled when missing.
fn build(sh: &Shell, settings: &Settings, flags: &Options, archive: bool) -> Result<Vec<Image>> {
    let (root, suite, coverage) = (&settings.root, &settings.suite, flags.coverage);
    if coverage {
        let covered: Vec<&str> =
            suite.components.iter().filter(|c| c.covered()).map(|c| c.name.as_str()).collect();
        coverdata::prepare(root, &project::suite_coverdata(root, &suite.name), &covered)?;
        // The report of the data just archived: this run's replaces it in phase 8, if it gets there.
        covdata_report::remove_outputs(&coverage_out(root, suite))?;
    }
    let request = build_images::Request {
        services: suite.services().cloned().collect(),
        coverage,
        build_mode: flags.build_mode,
        engine: Some(settings.engine),
        no_cache: false,
        archive,
        registry: settings.registry.clone(),
    };
    let mut images = build_images::build(sh, root, &request)?;
    let third_party: Vec<&Component> =
        suite.components.iter().filter(|c| c.build().is_none()).collect();
    images.extend(build_images::third_party(sh, root, &request, &third_party)?);
    Ok(images)
}

/// Phase 5's end: polls a component on its host port until it is ready (`GET <path>` answers
/// 200, or the port takes a connection), bounded by READY_TIMEOUT.
fn wait_ready(component: &Component) -> Result<()> {
    let (name, port, started) = (&component.name, component.host_port, Instant::now());
    let host = format!("127.0.0.1:{port}");
    let mut last = String::from("no answer yet");
    while started.elapsed() < READY_TIMEOUT {
        check_interrupted()?;
        let answer = match &component.ready {
            Ready::Http(path) => {
                let response =
                    http::request(&host, &format!("GET {path}"), "", Duration::from_secs(2));
                response.map(|r| (r.code == 200).then_some(()).ok_or(format!("HTTP {}", r.code)))
            }
            Ready::Tcp => std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_secs(2),
            )
            .map(|_| Ok(())),
        };
        match answer {
            Ok(Ok(())) => {
                let took = ui::seconds(started.elapsed());
                println!("    {name} ready on {host} after {took}");
                return Ok(());
            }
            Ok(Err(status)) => last = status,
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (secs, what) = match &component.ready {
        Ready::Http(path) => {
            (READY_TIMEOUT.as_secs(), format!("http://{host}{path} still answered"))
        }
        Ready::Tcp => (READY_TIMEOUT.as_secs(), format!("{host} still said")),
    };
    bail!("{name} did not become ready: {what} `{last}` after {secs}s; its logs are in the diagnostics")
}

/// Where phase 8 writes a suite's coverage report: `target/coverage/<suite>/`.
fn coverage_out(root: &Utf8Path, suite: &Suite) -> Utf8PathBuf {
    root.join("target/coverage").join(&suite.name)
}

/// Phase 8: the counters of the services built with coverage into `coverdata/<suite>/` (stopped
/// gracefully, or fetched), each must have left counters, then the report.
fn coverage(sh: &Shell, settings: &Settings, cluster: &mut Teardown) -> Result<Coverage> {
    cluster.flush_coverage(sh)?;
    let (root, suite) = (&settings.root, &settings.suite);
    let data = project::suite_coverdata(root, &suite.name);
    let covered: Vec<&str> =
        suite.components.iter().filter(|c| c.covered()).map(|c| c.name.as_str()).collect();
    coverdata::check_started(root, &data, &covered)?;
    let dirs: Vec<Utf8PathBuf> = covered.iter().map(|name| data.join(name)).collect();
    Ok(covdata_report::report(sh, root, &dirs, &coverage_out(root, suite))?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_commands_are_json_arrays_of_strings() {
        assert_eq!(json_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(json_string("line\nbreak"), r#""line\u000abreak""#);
    }

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
