//! `cargo xtask covdata-report`: turns what the instrumented services wrote into `coverdata/`
//! into numbers. `go tool covdata textfmt` reads the data; this module counts the statements of
//! the profile it writes (no sources needed), checks the sources here against the build, runs
//! `go tool cover -html` and `go test` when asked, and explains the tools' failures.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
};

use anyhow::{bail, ensure, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::{
    check,
    cmd::step,
    coverdata::{self, display, PRODUCER},
    project::{self, WRITABLE_TARGET},
    ui,
};

/// What the report writes in target/coverage/. A report removes all of it first, so what is
/// there afterwards is its own: an earlier run's page or per-service profile beside a new
/// `e2e.out` would show other numbers.
const OUTPUTS: [&str; 5] = ["e2e.out", "e2e.html", "services", "unit.out", "combined.out"];

/// Where container builds put the source; the text profile names files below them when a
/// package was built outside module mode, and `go tool cover` cannot resolve such paths here.
const BUILD_PREFIXES: [&str; 3] = ["/opt/app-root/src/", "/workspace/", "/src/"];

pub struct Coverage {
    /// Statement coverage per service directory, in the order the directories were given.
    pub services: Vec<(String, f64)>,
    /// Statement coverage of all services merged.
    pub total: f64,
    /// The merged text profile, `target/coverage/e2e.out`.
    pub profile: Utf8PathBuf,
}

/// Covered and total statements.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Stmts {
    covered: u64,
    total: u64,
}

impl Stmts {
    fn percent(self) -> f64 {
        100.0 * self.covered as f64 / self.total.max(1) as f64
    }
}

type Pos = (u32, u32);

/// The blocks of a text profile, each once, and whether it ran: `go test` lists a block once
/// per test binary, and two builds of changed source list different blocks of one file.
/// Key: (file, start, end, statements).
type Blocks = BTreeMap<(String, Pos, Pos, u32), bool>;

/// `cargo xtask covdata-report`'s flags.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// `-i`: coverage directories, read instead of the suites' data.
    pub inputs: Vec<Utf8PathBuf>,
    /// `--suite`: these suites' data (none, and no archive: every suite's).
    pub suites: Vec<String>,
    /// Archived runs, merged with the suites' data named.
    pub from_archive: Vec<Utf8PathBuf>,
    pub html: bool,
    /// Fail below this merged statement total, in percent.
    pub min: Option<f64>,
    pub with_unit: bool,
}

pub fn run(sh: &Shell, flags: &Options) -> Result<()> {
    let root = project::root();
    let needs = check::Needs { covdata: true, ..Default::default() };
    check::preflight(sh, &root, &needs, Vec::new())?;
    if flags.inputs.iter().chain(&flags.from_archive).any(|d| d.as_str().is_empty()) {
        bail!("an empty path was given to -i or --from-archive: name a coverage directory (`-i coverdata/<suite>/<service>`) or an archive (`coverdata/<suite>/archive/...`)");
    }
    let dirs = match flags.inputs.is_empty() {
        false => flags.inputs.iter().map(|d| project::absolute(d)).collect::<Result<_>>()?,
        true => {
            let mut dirs = match (flags.suites.is_empty(), flags.from_archive.is_empty()) {
                (true, false) => Vec::new(),
                _ => suites_data(&root, &flags.suites)?,
            };
            for archive in &flags.from_archive {
                dirs.extend(dirs_from_archive(sh, &root, &project::absolute(archive)?)?);
            }
            dirs
        }
    };
    let out_dir = root.join("target/coverage");
    let (coverage, blocks, missing) = report(sh, &root, &dirs, &out_dir)?;
    if let (true, Some(file)) = (flags.with_unit, missing.first()) {
        bail!("--with-unit runs this checkout's unit tests, but the E2E data is of other sources ({file} is not here): drop --with-unit, or run it in the checkout the binaries were built from");
    }
    let with_unit = flags.with_unit.then(|| with_unit(sh, &root, &blocks)).transpose()?;
    if flags.html && !missing.is_empty() {
        eprintln!(
            "warning: no HTML written: its source files are not in this checkout (see above)"
        );
    } else if flags.html {
        let (profile, html) = (&coverage.profile, out_dir.join("e2e.html"));
        let cover = cmd!(sh, "go tool cover -html={profile} -o {html}");
        go_output("go tool cover -html", &display(&root, profile), cover)?;
        println!("wrote {}", display(&root, &html));
    }

    // The gate applies to what the user asked to measure: combined when unit tests are included.
    let (gated, gated_name, gated_profile) = match with_unit {
        Some((_, combined)) => (combined, "combined (unit + E2E)", "combined.out"),
        None => (count(&blocks), "E2E", "e2e.out"),
    };
    let unit_percents = with_unit.map(|(unit, combined)| (unit.percent(), combined.percent()));
    ui::append_step_summary(&markdown_summary(&coverage, unit_percents, flags.min))?;
    let Some(min) = flags.min else { return Ok(()) };
    let (measured, required) = distinct_percents(gated.percent(), min);
    let of = format!("{} of {} statements", gated.covered, gated.total);
    ensure!(
        gated.percent() >= min,
        "{gated_name} coverage {measured}% ({of}) is below the required {required}% (--min): \
         test the uncovered code (see target/coverage/{gated_profile}) or lower --min"
    );
    println!("{gated_name} coverage {measured}% ({of}) meets the required {required}%");
    Ok(())
}

/// Two percentages with as many decimals (one at least) as it takes to tell them apart.
fn distinct_percents(a: f64, b: f64) -> (String, String) {
    let mut decimals = 1;
    while decimals < 6 && a != b && format!("{a:.decimals$}") == format!("{b:.decimals$}") {
        decimals += 1;
    }
    (format!("{a:.decimals$}"), format!("{b:.decimals$}"))
}

/// Prints the per-service and per-package table and the totals, writes `out_dir`/e2e.out (and
/// each service's own profile in `out_dir`/services/). A service is every directory of its
/// name (`coverdata/<suite>/<service>/` of several suites or runs): merged. The numbers come
/// from the coverage data alone (`covdata textfmt`, which needs no sources): statements per
/// block, summed per package and in total. Only the HTML needs the sources. Returns the merged
/// blocks too, and the files of the data that are not in this checkout.
pub fn report(
    sh: &Shell,
    root: &Utf8Path,
    dirs: &[Utf8PathBuf],
    out_dir: &Utf8Path,
) -> Result<(Coverage, Blocks, Vec<String>)> {
    remove_outputs(out_dir)?;
    coverdata::check_counters(dirs)?;
    let module = project::go_module(root)?;
    fs::create_dir_all(out_dir.join("services")).with_context(|| {
        format!("creating {out_dir} for the coverage profiles: {WRITABLE_TARGET}")
    })?;
    // `covdata textfmt` of `dirs` into `profile`, rewritten so `go tool cover` resolves it
    // here, checked for mixed builds, and its blocks.
    let textfmt = |dirs: &[Utf8PathBuf], profile: &Utf8Path| -> Result<Blocks> {
        // `covdata` takes several input directories as one comma-separated argument.
        if let Some(dir) = dirs.iter().find(|d| d.as_str().contains(',')) {
            bail!("{dir} contains a comma, which `go tool covdata -i` cannot take: rename the directory");
        }
        let inputs = dirs.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(",");
        let shown = dirs.iter().map(|d| display(root, d)).collect::<Vec<_>>().join(" ");
        let textfmt = cmd!(sh, "go tool covdata textfmt -i {inputs} -o {profile}");
        go_output("go tool covdata textfmt", &shown, textfmt)?;
        let blocks = read_profile(root, &module, profile, "go tool covdata textfmt")?;
        let mixed = overlapping_files(&blocks);
        ensure!(
            mixed.is_empty(),
            "{shown}: the data comes from more than one build of changed source ({} {} blocks that do not match): \
             the numbers would be wrong; start clean with `rm -rf {shown}` or a fresh `{PRODUCER}` \
             (which archives the old data first)",
            mixed.join(", "),
            if mixed.len() == 1 { "has" } else { "have" },
        );
        Ok(blocks)
    };
    let mut by_service: Vec<(String, Vec<Utf8PathBuf>)> = Vec::new();
    for dir in dirs {
        let name = dir.file_name().unwrap_or(dir.as_str()).to_string();
        match by_service.iter_mut().find(|(n, _)| *n == name) {
            Some((_, of)) => of.push(dir.clone()),
            None => by_service.push((name, vec![dir.clone()])),
        }
    }
    let (mut rows, mut services) = (Vec::new(), Vec::new());
    for (name, of) in by_service {
        let blocks = textfmt(&of, &out_dir.join(format!("services/{name}.out")))?;
        rows.extend(
            per_package(&blocks).into_iter().map(|(p, s)| (name.clone(), p.to_string(), s)),
        );
        rows.push((name.clone(), "(total)".to_string(), count(&blocks)));
        services.push((name, count(&blocks).percent()));
    }
    let profile = out_dir.join("e2e.out");
    let blocks = textfmt(dirs, &profile)?;
    rows.push(("all services".to_string(), "(merged total)".to_string(), count(&blocks)));
    print!("{}", table(&rows));
    // The data's files that are here, and those that are not (outside `module`, or gone).
    let files: BTreeSet<&str> = blocks.keys().map(|k| k.0.as_str()).collect();
    let local = |file: &str| local_source(root, &module, file);
    let here: Vec<_> = files.iter().filter_map(|file| Some((*file, local(file)?))).collect();
    let missing: Vec<String> =
        files.iter().filter(|f| local(f).is_none()).map(|f| f.to_string()).collect();
    let changed = changed_sources(sh, &blocks, &here);
    if !changed.is_empty() {
        println!(
            "sources: changed since the build: {} (their blocks differ from the data's): the numbers \
             above come from the data and stand, but e2e.out and the HTML put the build's blocks on \
             today's lines; report from the checkout the binaries were built from",
            changed.join(", ")
        );
    }
    if let Some(first) = missing.first() {
        println!(
            "sources: {} of the data's files are not in this checkout of {module} (e.g. {first}): \
             the numbers above come from the coverage data alone; e2e.out names files that do not \
             resolve here and no HTML can be written; for those, run covdata-report in the checkout \
             the binaries were built from",
            missing.len()
        );
    }
    println!("wrote {}", display(root, &profile));
    Ok((Coverage { services, total: count(&blocks).percent(), profile }, blocks, missing))
}

/// Removes what an earlier report wrote in `out_dir` (see `OUTPUTS`): before a report, and when
/// a coverage run archives the data it was made of.
pub fn remove_outputs(out_dir: &Utf8Path) -> Result<()> {
    for output in OUTPUTS.map(|name| out_dir.join(name)) {
        let removed = match output.symlink_metadata() {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&output),
            Ok(_) => fs::remove_file(&output),
            Err(_) => Ok(()),
        };
        removed.with_context(|| {
            format!("removing {output}, an earlier report's output: {WRITABLE_TARGET}")
        })?;
    }
    Ok(())
}

/// The service directories of the suites' data, `coverdata/<suite>/<service>/` (one GOCOVERDIR
/// each): of `suites`, or of every suite with data when none is named.
fn suites_data(root: &Utf8Path, suites: &[String]) -> Result<Vec<Utf8PathBuf>> {
    let coverdata = project::coverdata_dir(root);
    let shown = display(root, &coverdata);
    let named: Vec<Utf8PathBuf> = match suites.is_empty() {
        true => coverdata::service_dirs(&coverdata)?,
        false => suites.iter().map(|s| coverdata.join(s)).collect(),
    };
    let mut dirs = Vec::new();
    for suite in &named {
        let of_suite = match suite.is_dir() {
            true => coverdata::service_dirs(suite)?,
            false => Vec::new(),
        };
        if of_suite.is_empty() && !suites.is_empty() {
            let mut message = format!(
                "no coverage data of the suite {} in {}: produce it with `{PRODUCER}`",
                suite.file_name().unwrap_or_default(),
                display(root, suite)
            );
            if let Some(latest) = coverdata::archives(&suite.join("archive"))?.pop() {
                message += &format!(
                    ", or report an archived run with `--from-archive {}`",
                    display(root, &latest)
                );
            }
            bail!(message);
        }
        dirs.extend(of_suite);
    }
    if dirs.is_empty() {
        let archives: Vec<Utf8PathBuf> = named
            .iter()
            .flat_map(|s| coverdata::archives(&s.join("archive")).unwrap_or_default())
            .collect();
        let mut message = format!("no coverage data in {shown}: produce it with `{PRODUCER}`");
        if let Some(latest) = archives.iter().max_by_key(|a| a.file_name()) {
            message += &format!(
                ", or report an archived run with `cargo xtask covdata-report --from-archive {}`",
                display(root, latest)
            );
        }
        bail!(message);
    }
    Ok(dirs)
}

/// The profile `tool` wrote, its paths rewritten so `go tool cover` resolves them here (and
/// saved so), as blocks.
fn read_profile(root: &Utf8Path, module: &str, profile: &Utf8Path, tool: &str) -> Result<Blocks> {
    let text = fs::read_to_string(profile).with_context(|| {
        format!("reading the profile {profile} that `{tool}` wrote: {WRITABLE_TARGET}")
    })?;
    let text = rewrite_paths(&text, module, root);
    fs::write(profile, &text)
        .with_context(|| format!("rewriting the source paths in {profile}: {WRITABLE_TARGET}"))?;
    Ok(parse_profile(&text))
}

/// Where a file of the profile (`<module>/<path>`) is in this checkout, if it is.
fn local_source(root: &Utf8Path, module: &str, file: &str) -> Option<Utf8PathBuf> {
    Some(root.join(file.strip_prefix(module)?.strip_prefix('/')?)).filter(|p| p.is_file())
}

/// The data's files (with their paths here) that changed since the build. A meta-data file
/// holds each function's blocks (lines, columns, statements) but no hash of the source, so each
/// file is instrumented as it is now (`go tool cover -var`, the same block rules as `go build
/// -cover`) and its blocks are compared with the data's.
fn changed_sources(sh: &Shell, blocks: &Blocks, here: &[(&str, Utf8PathBuf)]) -> Vec<String> {
    let mut changed = Vec::new();
    // A few at a time: each is a short `go tool cover` run.
    for chunk in here.chunks(8) {
        let running: Vec<_> = chunk
            .iter()
            .map(|(_, path)| step(cmd!(sh, "go tool cover -mode=set -var=GoCover {path}")).spawn())
            .collect();
        for ((file, _), run) in chunk.iter().zip(running) {
            let data: Vec<_> =
                blocks.keys().filter(|k| k.0 == *file).map(|k| (k.1, k.2, k.3)).collect();
            if run.wait().ok().and_then(|out| cover_blocks(&out.stdout)) != Some(data) {
                changed.push(file.to_string());
            }
        }
    }
    changed
}

/// The blocks in `go tool cover -var`'s output, sorted: its `Pos` array holds start line, end
/// line and (start column | end column << 16) per block, its `NumStmt` array the statements.
fn cover_blocks(instrumented: &str) -> Option<Vec<(Pos, Pos, u32)>> {
    // The numbers of the composite literal on the lines after `label`, up to its `}`.
    let numbers = |label: &str| -> Option<Vec<u32>> {
        let body = instrumented.split_once(label)?.1.split_once('\n')?.1.split_once('}')?.0;
        body.lines()
            .flat_map(|line| line.split("//").next().unwrap_or("").split(','))
            .map(str::trim)
            .filter(|word| !word.is_empty())
            .map(|w| w.strip_prefix("0x").map_or(w.parse(), |h| u32::from_str_radix(h, 16)).ok())
            .collect()
    };
    let (pos, stmts) = (numbers("Pos:")?, numbers("NumStmt:")?);
    if pos.len() != 3 * stmts.len() {
        return None;
    }
    let blocks =
        pos.chunks(3).zip(stmts).map(|(p, n)| ((p[0], p[2] & 0xffff), (p[1], p[2] >> 16), n));
    let mut blocks: Vec<_> = blocks.collect();
    blocks.sort();
    Some(blocks)
}

/// Runs a `go` command quietly; on failure, its stderr with an explanation of what it means.
fn go_output(what: &str, subject: &str, cmd: xshell::Cmd<'_>) -> Result<()> {
    let output = step(cmd).output()?;
    // covdata prefixes its messages with "error: " twice; main adds one of its own.
    let message = output.stderr.trim().trim_start_matches("error: ");
    let explained = explain_go_error(&output.stderr, subject);
    ensure!(output.success(), "{what} failed for {subject}: {message}\n{explained}");
    Ok(())
}

/// Turns the go tools' error messages into what happened and what to do.
fn explain_go_error(stderr: &str, subject: &str) -> String {
    let says = |words: &[&str]| words.iter().any(|w| stderr.contains(w));
    if says(&["counter mode clash"]) {
        format!(
            "the data comes from binaries built with different -covermode values (e.g. set and atomic), \
             which cannot be combined: start clean with `rm -rf {subject}` or a fresh `{PRODUCER}` \
             (which archives the old data first)"
        )
    } else if says(&["reading counter data file", "decoding meta-file", "EOF", "magic"]) {
        format!(
            "a coverage file is truncated or corrupt (a process killed while writing, a full disk, a partial copy): \
             remove the named file or the directory (`rm -rf {subject}`) and produce fresh data with `{PRODUCER}`"
        )
    } else if says(&["can't find", "no required module provides"]) {
        "the profile names packages or files this checkout does not have: report it from the checkout \
         the binaries were built from, or start clean"
            .to_string()
    } else {
        format!("produce fresh data with `{PRODUCER}` and retry")
    }
}

/// Parses a text profile: `file.go:8.12,10.3 1 0` lines after the `mode:` line.
fn parse_profile(profile: &str) -> Blocks {
    let mut blocks = Blocks::new();
    for (file, rest) in profile.lines().filter_map(|line| line.rsplit_once(':')) {
        let numbers: Result<Vec<u32>, _> = rest.split(['.', ',', ' ']).map(str::parse).collect();
        if let Ok([l0, c0, l1, c1, n, count]) = numbers.as_deref() {
            *blocks.entry((file.to_string(), (*l0, *c0), (*l1, *c1), *n)).or_default() |=
                *count > 0;
        }
    }
    blocks
}

/// The statements of the blocks.
fn count(blocks: &Blocks) -> Stmts {
    let total = blocks.keys().map(|k| u64::from(k.3)).sum();
    let covered = blocks.iter().filter(|(_, ran)| **ran).map(|(k, _)| u64::from(k.3)).sum();
    Stmts { covered, total }
}

/// A file's package: its import path without the file name.
fn package_of(file: &str) -> &str {
    file.rsplit_once('/').map_or(file, |(dir, _)| dir)
}

fn per_package(blocks: &Blocks) -> BTreeMap<&str, Stmts> {
    let mut packages: BTreeMap<&str, Stmts> = BTreeMap::new();
    for ((file, _, _, n), ran) in blocks {
        let stmts = packages.entry(package_of(file)).or_default();
        stmts.total += u64::from(*n);
        stmts.covered += if *ran { u64::from(*n) } else { 0 };
    }
    packages
}

/// Rewrites absolute source paths (the project root on this host, or a build container's
/// source directory) to import paths of `module`, so `go tool cover` finds the files here.
fn rewrite_paths(profile: &str, module: &str, root: &Utf8Path) -> String {
    let root_prefix = format!("{}/", root.as_str().trim_end_matches('/'));
    let prefixes = [root_prefix.as_str()].into_iter().chain(BUILD_PREFIXES);
    let rewrite = |line: &str| match prefixes.clone().find_map(|p| line.strip_prefix(p)) {
        Some(rest) if line.starts_with('/') => format!("{module}/{rest}\n"),
        _ => format!("{line}\n"),
    };
    profile.lines().map(rewrite).collect()
}

/// Files whose blocks partially overlap: the profile mixes two versions of the source (a
/// directory holding runs of an older build). One build never produces overlapping blocks.
/// Sorted by file and start, a block that overlaps any before it overlaps the one just before.
fn overlapping_files(blocks: &Blocks) -> Vec<String> {
    let keys: Vec<_> = blocks.keys().collect();
    let mut mixed: Vec<String> = keys
        .windows(2)
        .filter(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2)
        .map(|w| w[1].0.clone())
        .collect();
    mixed.dedup();
    mixed
}

/// The terminal table: one row per (service, package) and the totals.
fn table(rows: &[(String, String, Stmts)]) -> String {
    let service_width = rows.iter().map(|r| r.0.len()).fold("service".len(), usize::max);
    let package_width = rows.iter().map(|r| r.1.len()).fold("package".len(), usize::max);
    let line = |service: &str, package: &str, [coverage, statements]: [String; 2]| {
        format!("{service:service_width$}  {package:package_width$}  {coverage:>8}  {statements}\n")
    };
    let body: String =
        rows.iter().map(|(svc, package, stmts)| line(svc, package, cells(*stmts))).collect();
    line("service", "package", ["coverage".into(), "statements".into()]) + &body
}

/// A `Stmts` as the tables show it: the percentage, and covered of total.
fn cells(stmts: Stmts) -> [String; 2] {
    [format!("{:.1}%", stmts.percent()), format!("{} of {}", stmts.covered, stmts.total)]
}

fn side_by_side(columns: [Stmts; 3]) -> String {
    let percents: String = columns.iter().map(|s| format!("  {:>10}", cells(*s)[0])).collect();
    let counts: String = columns.iter().map(|s| format!("  {:>10}", cells(*s)[1])).collect();
    format!(
        "{:10}  {:>10}  {:>10}  {:>10}\n{:10}{percents}\n{:10}{counts}\n",
        "", "unit", "e2e", "combined", "total", "statements"
    )
}

/// The Markdown appended to `GITHUB_STEP_SUMMARY`; `--min` gates the combined total when there
/// is one.
pub fn markdown_summary(e2e: &Coverage, with_unit: Option<(f64, f64)>, min: Option<f64>) -> String {
    let mut out = String::from("### Coverage\n\n| service | coverage |\n| --- | ---: |\n");
    for (name, pct) in &e2e.services {
        out.push_str(&format!("| {name} | {pct:.1}% |\n"));
    }
    out.push_str(&format!("| **all services (merged)** | **{:.1}%** |\n\n", e2e.total));
    if let Some((unit, combined)) = with_unit {
        out.push_str("| | unit | e2e | combined |\n| --- | ---: | ---: | ---: |\n");
        out.push_str(&format!("| total | {unit:.1}% | {:.1}% | {combined:.1}% |\n\n", e2e.total));
    }
    if let Some(min) = min {
        let measured = with_unit.map_or(e2e.total, |(_, combined)| combined);
        let verdict = if measured < min { "not met" } else { "met" };
        out.push_str(&format!("Required: {min:.1}%, measured {measured:.1}%: {verdict}.\n\n"));
    }
    out
}

/// Unit tests with coverage of exactly the E2E build's packages into `target/coverage/unit.out`,
/// and the unit, E2E and combined columns over the same statements; writes
/// `target/coverage/combined.out`. Returns (unit, combined). `-coverprofile` (Go >= 1.22) lists
/// the packages without tests too (the `cmd/` mains), with their statements not run;
/// `-test.gocoverdir` would leave them out.
fn with_unit(sh: &Shell, root: &Utf8Path, e2e: &Blocks) -> Result<(Stmts, Stmts)> {
    let coverpkg = per_package(e2e).into_keys().collect::<Vec<_>>().join(",");
    let profile = root.join("target/coverage/unit.out");
    step(cmd!(sh, "go test -covermode=atomic -coverpkg={coverpkg} -coverprofile={profile} ./..."))
        .echo()
        .hint("fix the unit tests, or report without --with-unit")
        .run()
        .context("go unit tests failed")?;
    let unit = read_profile(root, &project::go_module(root)?, &profile, "go test")?;
    let (columns, blocks) = same_statements(e2e, &unit);
    let mixed = overlapping_files(&blocks);
    ensure!(
        mixed.is_empty(),
        "the E2E data and the unit tests ran different versions of {}: the combined numbers would be wrong; \
         produce fresh E2E data with `{PRODUCER}`",
        mixed.join(", ")
    );
    let profile = root.join("target/coverage/combined.out");
    let mut text = String::from("mode: set\n");
    for ((file, (l0, c0), (l1, c1), n), ran) in &blocks {
        text.push_str(&format!("{file}:{l0}.{c0},{l1}.{c1} {n} {}\n", u8::from(*ran)));
    }
    fs::write(&profile, text).with_context(|| format!("writing {profile}: {WRITABLE_TARGET}"))?;
    let (statements, packages) = (columns[2].total, per_package(&blocks).len());
    println!(
        "\nover the same {statements} statements, those of the E2E build's {packages} packages:"
    );
    print!("{}", side_by_side(columns));
    Ok((columns[0], columns[2]))
}

/// Unit, E2E and combined statements over one set, the blocks of the E2E build's packages, and
/// the combined blocks. Unit blocks of other packages are left out.
fn same_statements(e2e: &Blocks, unit: &Blocks) -> ([Stmts; 3], Blocks) {
    let packages = per_package(e2e);
    let mut combined = e2e.clone();
    for (key, ran) in unit.iter().filter(|(key, _)| packages.contains_key(package_of(&key.0))) {
        *combined.entry(key.clone()).or_default() |= ran;
    }
    let ran_in = |blocks: &Blocks| {
        count(&combined.keys().map(|k| (k.clone(), blocks.get(k) == Some(&true))).collect())
    };
    ([ran_in(unit), ran_in(e2e), count(&combined)], combined)
}

/// Extracts an archived run into `target/coverage/from-archive/<suite>-<name>/` and returns its
/// service directories.
fn dirs_from_archive(sh: &Shell, root: &Utf8Path, archive: &Utf8Path) -> Result<Vec<Utf8PathBuf>> {
    let archives = display(root, &project::coverdata_dir(root).join("<suite>/archive"));
    ensure!(
        !archive.is_dir(),
        "{archive} is a directory: --from-archive takes an archive (a .tar.gz written by \
         `{PRODUCER}`, in {archives}); read a directory of coverage data with `-i {archive}`"
    );
    ensure!(archive.is_file(), "archive {archive} not found: the archived runs are in {archives}");
    let name =
        archive.file_name().unwrap_or("archive").trim_end_matches(".gz").trim_end_matches(".tar");
    // An archive is `coverdata/<suite>/archive/<time>.<outcome>.tar.gz`: its suite makes the
    // name unique among archives of several suites.
    let in_archive_dir = archive.parent().filter(|dir| dir.file_name() == Some("archive"));
    let suite = in_archive_dir.and_then(|dir| dir.parent()).and_then(|s| s.file_name());
    let name = suite.map_or(name.to_string(), |suite| format!("{suite}-{name}"));
    let dest = root.join("target/coverage/from-archive").join(name);
    sh.remove_path(&dest).with_context(|| {
        format!("clearing {dest} (scratch output): remove it by hand with `rm -rf {dest}`")
    })?;
    fs::create_dir_all(&dest).with_context(|| format!("creating {dest}: {WRITABLE_TARGET}"))?;
    let extracted = coverdata::extract(archive, &dest).and_then(|()| {
        let dirs = coverdata::service_dirs(&dest)?;
        ensure!(
            !dirs.is_empty(),
            "archive {archive} holds no service directories: it was not made by `{PRODUCER}`"
        );
        Ok(dirs)
    });
    match &extracted {
        Ok(_) => println!("reading {}", display(root, archive)),
        // What a rejected archive left is no run's data: none of it stays.
        Err(_) => drop(sh.remove_path(&dest)),
    }
    extracted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `go tool covdata textfmt` (captured) on a directory with runs of two builds, where
    /// `lib.go` changed between them, and of a build with closures, a goroutine, defer and
    /// switch, whose blocks touch but never overlap (and the same blocks repeated, as a merge of
    /// two binaries prints them).
    const PROFILE: &str = "mode: atomic\n\
        example.com/covx/cmd/app/main.go:10.13,12.2 1 2\n\
        example.com/covx/lib/lib.go:4.29,5.11 1 2\n\
        example.com/covx/lib/lib.go:5.11,7.3 1 0\n\
        example.com/covx/lib/lib.go:8.2,8.12 1 2\n\
        example.com/covx/lib/lib.go:8.12,9.13 1 0\n\
        example.com/covx/lib/lib.go:8.12,10.3 1 0\n\
        example.com/covx/lib/lib.go:9.13,11.4 1 0\n\
        example.com/covx/lib/lib.go:11.2,11.19 1 1\n\
        example.com/covx/lib/lib.go:12.3,12.16 1 0\n\
        example.com/covx/lib/lib.go:14.2,14.19 1 1\n\
        example.com/covx/lib/lib.go:15.19,19.2 3 0\n\
        example.com/covx/lib/lib.go:18.19,22.2 3 0\n\
        example.com/covx/clos/clos.go:5.21,9.25 4 1\n\
        example.com/covx/clos/clos.go:9.25,11.18 2 3\n\
        example.com/covx/clos/clos.go:11.18,11.73 4 3\n\
        example.com/covx/clos/clos.go:13.2,13.23 1 1\n\
        example.com/covx/clos/clos.go:13.23,14.12 1 1\n\
        example.com/covx/clos/clos.go:14.12,16.4 1 1\n\
        example.com/covx/clos/clos.go:17.3,17.11 1 0\n\
        example.com/covx/clos/clos.go:19.2,19.15 1 1\n\
        example.com/covx/clos/clos.go:19.15,19.26 1 1\n\
        example.com/covx/clos/clos.go:20.2,21.24 2 1\n\
        example.com/covx/clos/clos.go:22.14,23.11 1 0\n\
        example.com/covx/clos/clos.go:24.10,25.21 1 1\n\
        example.com/covx/clos/clos.go:25.21,25.37 1 1\n\
        example.com/covx/clos/clos.go:5.21,9.25 4 1\n";

    #[test]
    fn profiles_count_each_block_once_per_package_and_in_total() {
        // `go test` lists a block once per test binary: it ran if any of them ran it.
        let profile = "mode: atomic\n\
            example.com/m/lib/a.go:1.1,2.2 2 0\n\
            example.com/m/lib/a.go:3.1,4.2 3 0\n\
            example.com/m/lib/a.go:1.1,2.2 2 5\n\
            example.com/m/cmd/app/main.go:1.1,2.2 1 1\n\
            not a block\n";
        let blocks = parse_profile(profile);
        assert_eq!(blocks.len(), 3);
        let stmts = |covered, total| Stmts { covered, total };
        assert_eq!(count(&blocks), stmts(3, 6));
        assert_eq!(
            per_package(&blocks).into_iter().collect::<Vec<_>>(),
            [("example.com/m/cmd/app", stmts(1, 1)), ("example.com/m/lib", stmts(2, 5))]
        );
        assert_eq!(stmts(0, 0).percent(), 0.0);
    }

    #[test]
    fn files_outside_the_module_or_gone_are_not_here_and_others_are_compared() {
        let root = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .unwrap()
            .join(format!("xtask-covdata-report-{}", std::process::id()));
        fs::create_dir_all(root.join("lib")).unwrap();
        fs::write(root.join("lib/a.go"), "package lib\n").unwrap();
        let here = |file| local_source(&root, "example.com/m", file);
        assert_eq!(here("example.com/m/lib/a.go"), Some(root.join("lib/a.go")));
        for not_here in ["example.com/m/lib/gone.go", "example.com/mod/lib/a.go", "other/lib/a.go"]
        {
            assert_eq!(here(not_here), None, "{not_here}");
        }
        // No blocks of `go tool cover` (or no go at all) match these: changed.
        let blocks = parse_profile("mode: set\nexample.com/m/lib/a.go:1.1,2.2 1 1\n");
        let files = [("example.com/m/lib/a.go", root.join("lib/a.go"))];
        let changed = changed_sources(&Shell::new().unwrap(), &blocks, &files);
        assert_eq!(changed, ["example.com/m/lib/a.go"]);
        fs::remove_dir_all(root).unwrap();
    }

    /// `go tool cover -mode=set -var=GoCover lib.go` (Go 1.26) on the `Classify`/`Unused` file
    /// of the first build in `PROFILE`.
    const INSTRUMENTED: &str = "var GoCover = struct {\n\
        \tCount     [6]uint32\n\tPos       [3 * 6]uint32\n\tNumStmt   [6]uint16\n} {\n\
        \tPos: [3 * 6]uint32{\n\
        \t\t4, 5, 0xb001d, // [0]\n\t\t8, 8, 0xc0002, // [1]\n\t\t11, 11, 0x130002, // [2]\n\
        \t\t5, 7, 0x3000b, // [3]\n\t\t8, 10, 0x3000c, // [4]\n\t\t15, 19, 0x20013, // [5]\n\
        \t},\n\
        \tNumStmt: [6]uint16{\n\
        \t\t1, // 0\n\t\t1, // 1\n\t\t1, // 2\n\t\t1, // 3\n\t\t1, // 4\n\t\t3, // 5\n\
        \t},\n}\n";

    #[test]
    fn instrumenting_the_same_source_gives_the_blocks_of_the_data() {
        let data = vec![
            ((4, 29), (5, 11), 1),
            ((5, 11), (7, 3), 1),
            ((8, 2), (8, 12), 1),
            ((8, 12), (10, 3), 1),
            ((11, 2), (11, 19), 1),
            ((15, 19), (19, 2), 3),
        ];
        assert_eq!(cover_blocks(INSTRUMENTED), Some(data));
        let shifted = INSTRUMENTED.replace("15, 19,", "16, 20,");
        assert_ne!(cover_blocks(&shifted), cover_blocks(INSTRUMENTED));
        assert_eq!(cover_blocks("package lib\n"), None);
    }

    #[test]
    fn unit_e2e_and_combined_share_the_e2e_builds_statements() {
        let e2e = parse_profile(
            "mode: atomic\n\
            m/cmd/app/main.go:1.1,2.2 1 1\n\
            m/lib/a.go:1.1,2.2 2 0\n\
            m/lib/a.go:3.1,4.2 3 1\n",
        );
        // No block of cmd/app (a package without tests); testutil is not in the E2E build.
        let unit = parse_profile(
            "mode: atomic\n\
            m/lib/a.go:1.1,2.2 2 4\n\
            m/lib/a.go:3.1,4.2 3 0\n\
            m/testutil/t.go:1.1,2.2 7 1\n",
        );
        let ([unit, e2e, combined], blocks) = same_statements(&e2e, &unit);
        let stmts = |covered, total| Stmts { covered, total };
        assert_eq!([unit, e2e, combined], [stmts(2, 6), stmts(4, 6), stmts(6, 6)]);
        assert!(blocks.keys().all(|k| !k.0.contains("testutil")));
    }

    #[test]
    fn percentages_get_the_decimals_that_tell_them_apart() {
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(distinct_percents(74.6, 74.61), pair("74.60", "74.61"));
        assert_eq!(distinct_percents(74.6, 74.6), pair("74.6", "74.6"));
        assert_eq!(distinct_percents(50.0, 60.0), pair("50.0", "60.0"));
        assert_eq!(distinct_percents(100.0 * 2.0 / 3.0, 66.667), pair("66.6667", "66.6670"));
    }

    #[test]
    fn build_container_and_host_paths_become_import_paths() {
        let root = Utf8Path::new("/home/dev/repo");
        let profile = "mode: atomic\n\
            /opt/app-root/src/cmd/gateway/main.go:10.13,12.2 1 1\n\
            /home/dev/repo/internal/store/store.go:4.29,5.11 1 0\n\
            example.com/gateway-e2e/internal/api/api.go:1.1,2.2 1 0\n\
            /usr/lib/other.go:1.1,2.2 1 0\n";
        assert_eq!(
            rewrite_paths(profile, "example.com/gateway-e2e", root),
            "mode: atomic\n\
            example.com/gateway-e2e/cmd/gateway/main.go:10.13,12.2 1 1\n\
            example.com/gateway-e2e/internal/store/store.go:4.29,5.11 1 0\n\
            example.com/gateway-e2e/internal/api/api.go:1.1,2.2 1 0\n\
            /usr/lib/other.go:1.1,2.2 1 0\n"
        );
    }

    #[test]
    fn blocks_of_two_builds_overlap_and_one_build_does_not() {
        let overlapping = |profile| overlapping_files(&parse_profile(profile));
        assert_eq!(overlapping(PROFILE), ["example.com/covx/lib/lib.go"]);
        // Same range, different statement count: also two versions of the file.
        let changed = "mode: set\na.go:1.1,3.2 2 1\na.go:1.1,3.2 3 0\nb.go:1.1,2.2 1 0\n";
        assert_eq!(overlapping(changed), vec!["a.go".to_string()]);
    }

    #[test]
    fn go_errors_are_explained() {
        let clash = "error: counter mode clash while reading meta-data file /d/covmeta.f2: previous file had set, new file has atomic";
        assert!(
            explain_go_error(clash, "coverdata/gateway").contains("different -covermode values")
        );
        assert!(explain_go_error(clash, "coverdata/gateway").contains("`rm -rf coverdata/gateway`"));
        for corrupt in [
            "error: error: reading counter data file /d/covcounters.f2.1.2: unexpected EOF",
            "error: error: decoding meta-file /d/covmeta.f2: invalid meta-data file magic string",
        ] {
            assert!(
                explain_go_error(corrupt, "coverdata/x").contains("truncated or corrupt"),
                "{corrupt}"
            );
        }
        let module = "cover: no required module provides package example.com/other/cmd: go.mod file not found";
        assert!(explain_go_error(module, "x").contains("checkout"));
        assert!(explain_go_error("something else", "x").contains(PRODUCER));
    }

    #[test]
    fn a_missing_archive_says_where_the_archives_are() {
        let root = Utf8Path::new("/nonexistent/repo");
        let sh = Shell::new().unwrap();
        let err =
            format!("{:#}", dirs_from_archive(&sh, root, &root.join("nope.tar.gz")).unwrap_err());
        assert_eq!(
            err,
            "archive /nonexistent/repo/nope.tar.gz not found: the archived runs are in coverdata/<suite>/archive"
        );
    }

    #[test]
    fn tables_show_every_number() {
        let stmts = |covered, total| Stmts { covered, total };
        let rows = vec![
            ("gateway".to_string(), "example.com/m/cmd/gateway".to_string(), stmts(3, 3)),
            ("gateway".to_string(), "(total)".to_string(), stmts(4, 9)),
        ];
        expect_test::expect![[r#"
            service  package                    coverage  statements
            gateway  example.com/m/cmd/gateway    100.0%  3 of 3
            gateway  (total)                       44.4%  4 of 9
        "#]]
        .assert_eq(&table(&rows));
        expect_test::expect![[r#"
                              unit         e2e    combined
            total            25.0%       54.5%       63.6%
            statements      2 of 8     6 of 11     7 of 11
        "#]]
        .assert_eq(&side_by_side([stmts(2, 8), stmts(6, 11), stmts(7, 11)]));
        let cov = Coverage {
            services: vec![("gateway".to_string(), 44.4), ("datastorage".to_string(), 70.0)],
            total: 60.0,
            profile: "target/coverage/e2e.out".into(),
        };
        // The services' table is snapshot in e2e_gateway/summary.rs; here what the report adds.
        let md = markdown_summary(&cov, Some((25.0, 63.6)), Some(65.0));
        assert!(md.contains("| datastorage | 70.0% |\n| **all services (merged)** | **60.0%** |"));
        expect_test::expect![[r#"
            | | unit | e2e | combined |
            | --- | ---: | ---: | ---: |
            | total | 25.0% | 60.0% | 63.6% |

            Required: 65.0%, measured 63.6%: not met.

        "#]]
        .assert_eq(&md[md.find("| | unit").unwrap()..]);
        assert!(!markdown_summary(&cov, None, None).contains("unit"));
        let e2e_gate = markdown_summary(&cov, None, Some(60.0));
        assert!(e2e_gate.ends_with("Required: 60.0%, measured 60.0%: met.\n\n"), "{e2e_gate}");
    }
}
