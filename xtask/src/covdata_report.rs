//! `cargo xtask covdata-report`: turns what the instrumented services wrote into `coverdata/`
//! into numbers. `go tool covdata textfmt` reads the data; this module counts the statements of
//! the profile it writes (no sources needed), checks the sources here against the build, runs
//! `go tool cover -html` and `go test` when asked, and explains the tools' failures.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::{
    cmd::step,
    coverdata::{self, check_counters, display, PRODUCER},
    doctor, flags, project, ui,
};

/// Where container builds put the source; the text profile names files below them when a
/// package was built outside module mode, and `go tool cover` cannot resolve such paths here.
const BUILD_PREFIXES: [&str; 3] = ["/opt/app-root/src/", "/workspace/", "/src/"];

/// The fix for a failed write below target/.
const WRITABLE_TARGET: &str = "make target/ writable and check free space (`df -h target`)";

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
        if self.total == 0 {
            return 0.0;
        }
        100.0 * self.covered as f64 / self.total as f64
    }
}

type Pos = (u32, u32);

/// The blocks of a text profile, each once, and whether it ran: `go test` lists a block once
/// per test binary, and two builds of changed source list different blocks of one file.
/// Key: (file, start, end, statements).
type Blocks = BTreeMap<(String, Pos, Pos, u32), bool>;

/// What the merged E2E report found, beyond what e2e-gateway's summary shows.
struct Report {
    coverage: Coverage,
    stmts: Stmts,
    blocks: Blocks,
    /// Files of the data that are not in this checkout.
    missing: Vec<String>,
}

pub fn run(sh: &Shell, flags: &flags::CovdataReport) -> anyhow::Result<()> {
    let root = project::root();
    doctor::preflight(
        sh,
        &root,
        &doctor::Needs { engine: None, covdata: true, ..doctor::Needs::default() },
        Vec::new(),
    )?;
    let dirs = if let Some(archive) = &flags.from_archive {
        if archive.as_str().is_empty() {
            bail!("--from-archive was given an empty path: name an archive, e.g. one in coverdata/archive/");
        }
        let archive = project::absolute(archive)?;
        let dirs = dirs_from_archive(&root, &archive)?;
        println!("reading {}", display(&root, &archive));
        dirs
    } else if !flags.inputs.is_empty() {
        if flags.inputs.iter().any(|d| d.as_str().is_empty()) {
            bail!("-i was given an empty path: name a coverage directory, e.g. `-i coverdata/gateway`, or leave -i out to read every service under coverdata/");
        }
        flags.inputs.iter().map(|d| project::absolute(d)).collect::<anyhow::Result<_>>()?
    } else {
        default_dirs(&root)?
    };

    let e2e = report_e2e(sh, &root, &dirs)?;

    let with_unit = if flags.with_unit { Some(with_unit(sh, &root, &e2e)?) } else { None };

    if flags.html && !e2e.missing.is_empty() {
        eprintln!(
            "warning: no HTML written: its source files are not in this checkout (see above)"
        );
    } else if flags.html {
        let html = root.join("target/coverage/e2e.html");
        let profile = &e2e.coverage.profile;
        go_output(
            "go tool cover -html",
            &display(&root, profile),
            cmd!(sh, "go tool cover -html={profile} -o {html}"),
        )?;
        println!("wrote {}", display(&root, &html));
    }

    // The gate applies to what the user asked to measure: combined when unit tests are included.
    let (gated, gated_name, gated_profile) = match with_unit {
        Some((_, combined)) => {
            (combined, "combined (unit + E2E)", root.join("target/coverage/combined.out"))
        }
        None => (e2e.stmts, "E2E", e2e.coverage.profile.clone()),
    };

    ui::append_step_summary(&markdown_summary(
        &e2e.coverage,
        with_unit.map(|(unit, combined)| (unit.percent(), combined.percent())),
        flags.min.map(|m| (m, gated.percent())),
    ))?;

    if let Some(min) = flags.min {
        let (measured, required) = distinct_percents(gated.percent(), min);
        let of = format!("{} of {} statements", gated.covered, gated.total);
        if gated.percent() < min {
            bail!(
                "{gated_name} coverage {measured}% ({of}) is below the required {required}% (--min): \
                 test the uncovered code (see {}) or lower --min",
                display(&root, &gated_profile)
            );
        }
        println!("{gated_name} coverage {measured}% ({of}) meets the required {required}%");
    }
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

/// Prints the per-service and per-package table and the totals, writes target/coverage/e2e.out.
pub fn report(sh: &Shell, root: &Utf8Path, dirs: &[Utf8PathBuf]) -> anyhow::Result<Coverage> {
    Ok(report_e2e(sh, root, dirs)?.coverage)
}

/// The numbers come from the coverage data alone (`covdata textfmt`, which needs no sources):
/// statements per block, summed per package and in total. Only the HTML needs the sources.
fn report_e2e(sh: &Shell, root: &Utf8Path, dirs: &[Utf8PathBuf]) -> anyhow::Result<Report> {
    if dirs.is_empty() {
        bail!("no coverage directories given: produce coverage data with `{PRODUCER}`");
    }
    check_counters(dirs)?;
    let module = project::go_module(root)?;
    let out_dir = root.join("target/coverage");
    fs::create_dir_all(out_dir.join("services")).with_context(|| {
        format!("creating {out_dir} for the coverage profiles: {WRITABLE_TARGET}")
    })?;

    let mut rows = Vec::new();
    let mut services = Vec::new();
    for dir in dirs {
        let name = service_name(dir);
        let profile = out_dir.join(format!("services/{name}.out"));
        let blocks = profile_blocks(sh, root, &module, std::slice::from_ref(dir), &profile)?;
        for (package, stmts) in per_package(&blocks) {
            rows.push((name.clone(), package, stmts));
        }
        let total = count(&blocks, |_| true);
        rows.push((name.clone(), "(total)".to_string(), total));
        services.push((name, total.percent()));
    }

    let profile = out_dir.join("e2e.out");
    let blocks = profile_blocks(sh, root, &module, dirs, &profile)?;
    let stmts = count(&blocks, |_| true);
    rows.push(("all services".to_string(), "(merged total)".to_string(), stmts));
    let missing = missing_sources(root, &module, &blocks);
    let changed = changed_sources(sh, root, &module, &blocks);

    print!("{}", table(&rows));
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
    Ok(Report {
        coverage: Coverage { services, total: stmts.percent(), profile },
        stmts,
        blocks,
        missing,
    })
}

/// Every directory directly under `coverdata/` except `archive/`: one GOCOVERDIR per service.
fn default_dirs(root: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let coverdata = project::coverdata_dir(root);
    let dirs = coverdata::service_dirs(&coverdata)?;
    if dirs.is_empty() {
        let mut message = format!(
            "no coverage data in {}: produce it with `{PRODUCER}`",
            display(root, &coverdata)
        );
        if let Some(latest) = coverdata::archives(&coverdata.join("archive"))?.pop() {
            message.push_str(&format!(
                ", or report an archived run with `cargo xtask covdata-report --from-archive {}`",
                display(root, &latest)
            ));
        }
        bail!(message);
    }
    Ok(dirs)
}

fn service_name(dir: &Utf8Path) -> String {
    dir.file_name().unwrap_or(dir.as_str()).to_string()
}

/// `covdata textfmt` of `dirs` into `profile`, rewritten so `go tool cover` resolves it here,
/// checked for mixed builds, and its blocks.
fn profile_blocks(
    sh: &Shell,
    root: &Utf8Path,
    module: &str,
    dirs: &[Utf8PathBuf],
    profile: &Utf8Path,
) -> anyhow::Result<Blocks> {
    let shown: Vec<String> = dirs.iter().map(|d| display(root, d)).collect();
    let shown = shown.join(" ");
    let inputs = join_dirs(dirs)?;
    go_output(
        "go tool covdata textfmt",
        &shown,
        cmd!(sh, "go tool covdata textfmt -i {inputs} -o {profile}"),
    )?;
    let text = fs::read_to_string(profile).with_context(|| {
        format!(
            "reading the profile {profile} that `go tool covdata textfmt` wrote: {WRITABLE_TARGET}"
        )
    })?;
    let text = rewrite_paths(&text, module, root);
    fs::write(profile, &text)
        .with_context(|| format!("rewriting the source paths in {profile}: {WRITABLE_TARGET}"))?;
    let blocks = parse_profile(&text);
    check_one_build(&blocks, &shown)?;
    Ok(blocks)
}

fn check_one_build(blocks: &Blocks, shown: &str) -> anyhow::Result<()> {
    let mixed = overlapping_files(blocks);
    if !mixed.is_empty() {
        bail!(
            "{shown}: the data comes from more than one build of changed source ({} {} blocks that do not match): \
             the numbers would be wrong; start clean with `rm -rf {shown}` or a fresh `{PRODUCER}` \
             (which archives the old data first)",
            mixed.join(", "),
            if mixed.len() == 1 { "has" } else { "have" },
        );
    }
    Ok(())
}

/// Where a file of the profile (`<module>/<path>`) is in this checkout, if it is.
fn local_source(root: &Utf8Path, module: &str, file: &str) -> Option<Utf8PathBuf> {
    let rest = file.strip_prefix(module)?.strip_prefix('/')?;
    Some(root.join(rest)).filter(|path| path.is_file())
}

/// The data's files that are not in this checkout: outside `module`, or gone.
fn missing_sources(root: &Utf8Path, module: &str, blocks: &Blocks) -> Vec<String> {
    let mut files: Vec<String> = blocks.keys().map(|k| k.0.clone()).collect();
    files.dedup();
    files.retain(|file| local_source(root, module, file).is_none());
    files
}

/// The data's files that are here but changed since the build. A meta-data file holds each
/// function's blocks (lines, columns, statements) but no hash of the source, so each file is
/// instrumented as it is now (`go tool cover -var`, the same block rules as `go build -cover`)
/// and its blocks are compared with the data's.
fn changed_sources(sh: &Shell, root: &Utf8Path, module: &str, blocks: &Blocks) -> Vec<String> {
    let mut by_file: BTreeMap<&str, Vec<(Pos, Pos, u32)>> = BTreeMap::new();
    for (file, start, end, n) in blocks.keys() {
        by_file.entry(file).or_default().push((*start, *end, *n));
    }
    let files: Vec<_> = by_file
        .into_iter()
        .filter_map(|(file, data)| Some((file, local_source(root, module, file)?, data)))
        .collect();
    let mut changed = Vec::new();
    // A few at a time: each is a short `go tool cover` run.
    for chunk in files.chunks(8) {
        let running: Vec<_> = chunk
            .iter()
            .map(|(_, path, _)| {
                step(cmd!(sh, "go tool cover -mode=set -var=GoCover {path}")).spawn()
            })
            .collect();
        for ((file, _, data), run) in chunk.iter().zip(running) {
            let now = run.wait().ok().and_then(|out| cover_blocks(&out.stdout));
            if now.as_ref() != Some(data) {
                changed.push(file.to_string());
            }
        }
    }
    changed
}

/// The blocks in `go tool cover -var`'s output, sorted: its `Pos` array holds start line, end
/// line and (start column | end column << 16) per block, its `NumStmt` array the statements.
fn cover_blocks(instrumented: &str) -> Option<Vec<(Pos, Pos, u32)>> {
    let pos = literal_numbers(instrumented, "Pos:")?;
    let stmts = literal_numbers(instrumented, "NumStmt:")?;
    if pos.len() != 3 * stmts.len() {
        return None;
    }
    let mut blocks: Vec<_> = pos
        .chunks(3)
        .zip(stmts)
        .map(|(p, n)| ((p[0], p[2] & 0xffff), (p[1], p[2] >> 16), n))
        .collect();
    blocks.sort();
    Some(blocks)
}

/// The numbers of the composite literal on the lines after `label`, up to its `}`.
fn literal_numbers(text: &str, label: &str) -> Option<Vec<u32>> {
    let start = text.find(label)?;
    let body = &text[start..];
    let body = &body[body.find('\n')? + 1..];
    let body = &body[..body.find('}')?];
    body.lines()
        .flat_map(|line| line.split("//").next().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .map(|word| match word.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => word.parse().ok(),
        })
        .collect()
}

/// `covdata` takes several input directories as one comma-separated argument.
fn join_dirs(dirs: &[Utf8PathBuf]) -> anyhow::Result<String> {
    if let Some(dir) = dirs.iter().find(|d| d.as_str().contains(',')) {
        bail!(
            "{dir} contains a comma, which `go tool covdata -i` cannot take: rename the directory"
        );
    }
    Ok(dirs.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(","))
}

/// Runs a `go` command quietly and returns its stdout; on failure, its stderr with an
/// explanation of what it means.
fn go_output(what: &str, subject: &str, cmd: xshell::Cmd<'_>) -> anyhow::Result<String> {
    let output = step(cmd).output()?;
    if !output.success() {
        let stderr = &output.stderr;
        // covdata prefixes its messages with "error: " twice; main adds one of its own.
        let message = stderr.trim().trim_start_matches("error: ");
        bail!("{what} failed for {subject}: {message}\n{}", explain_go_error(stderr, subject));
    }
    Ok(output.stdout)
}

/// Turns the go tools' error messages into what happened and what to do.
fn explain_go_error(stderr: &str, subject: &str) -> String {
    if stderr.contains("counter mode clash") {
        format!(
            "the data comes from binaries built with different -covermode values (e.g. set and atomic), \
             which cannot be combined: start clean with `rm -rf {subject}` or a fresh `{PRODUCER}` \
             (which archives the old data first)"
        )
    } else if stderr.contains("reading counter data file")
        || stderr.contains("decoding meta-file")
        || stderr.contains("EOF")
        || stderr.contains("magic")
    {
        format!(
            "a coverage file is truncated or corrupt (a process killed while writing, a full disk, a partial copy): \
             remove the named file or the directory (`rm -rf {subject}`) and produce fresh data with `{PRODUCER}`"
        )
    } else if stderr.contains("can't find") || stderr.contains("no required module provides") {
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
    for line in profile.lines().filter(|l| !l.starts_with("mode:")) {
        let Some((file, rest)) = line.rsplit_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let block = (|| {
            let (start, end) = words.next()?.split_once(',')?;
            let stmts: u32 = words.next()?.parse().ok()?;
            let count: u64 = words.next()?.parse().ok()?;
            Some(((file.to_string(), pos(start)?, pos(end)?, stmts), count > 0))
        })();
        if let Some((key, ran)) = block {
            *blocks.entry(key).or_default() |= ran;
        }
    }
    blocks
}

/// `8.12` -> (8, 12).
fn pos(text: &str) -> Option<Pos> {
    let (line, col) = text.split_once('.')?;
    Some((line.parse().ok()?, col.parse().ok()?))
}

/// The statements of the blocks whose file `keep` accepts.
fn count(blocks: &Blocks, keep: impl Fn(&str) -> bool) -> Stmts {
    let mut stmts = Stmts::default();
    for ((file, _, _, n), ran) in blocks {
        if keep(file) {
            stmts.total += u64::from(*n);
            stmts.covered += if *ran { u64::from(*n) } else { 0 };
        }
    }
    stmts
}

/// A file's package: its import path without the file name.
fn package_of(file: &str) -> &str {
    file.rsplit_once('/').map_or(file, |(dir, _)| dir)
}

fn packages(blocks: &Blocks) -> BTreeSet<&str> {
    blocks.keys().map(|k| package_of(&k.0)).collect()
}

fn per_package(blocks: &Blocks) -> BTreeMap<String, Stmts> {
    let mut packages: BTreeMap<String, Stmts> = BTreeMap::new();
    for package in blocks.keys().map(|k| package_of(&k.0)) {
        if !packages.contains_key(package) {
            let stmts = count(blocks, |file| package_of(file) == package);
            packages.insert(package.to_string(), stmts);
        }
    }
    packages
}

/// Rewrites absolute source paths (the project root on this host, or a build container's
/// source directory) to import paths of `module`, so `go tool cover` finds the files here.
fn rewrite_paths(profile: &str, module: &str, root: &Utf8Path) -> String {
    let root_prefix = format!("{}/", root.as_str().trim_end_matches('/'));
    let mut out = String::with_capacity(profile.len());
    for line in profile.lines() {
        let rest = std::iter::once(root_prefix.as_str())
            .chain(BUILD_PREFIXES)
            .find_map(|prefix| line.strip_prefix(prefix));
        match rest {
            Some(rest) if line.starts_with('/') => {
                out.push_str(module);
                out.push('/');
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Files whose blocks partially overlap: the profile mixes two versions of the source (a
/// directory holding runs of an older build). One build never produces overlapping blocks.
fn overlapping_files(blocks: &Blocks) -> Vec<String> {
    let mut mixed: Vec<String> = Vec::new();
    let mut last: Option<(&str, Pos)> = None;
    // Sorted by file, then start: a block starting before the previous ones ended overlaps.
    for (file, start, end, _) in blocks.keys() {
        match last {
            Some((f, end_so_far)) if f == file => {
                if *start < end_so_far && mixed.last() != Some(file) {
                    mixed.push(file.clone());
                }
                last = Some((file, end_so_far.max(*end)));
            }
            _ => last = Some((file, *end)),
        }
    }
    mixed
}

/// The terminal table: one row per (service, package) and the totals.
fn table(rows: &[(String, String, Stmts)]) -> String {
    let service_width = rows.iter().map(|r| r.0.len()).chain(["service".len()]).max().unwrap_or(0);
    let package_width = rows.iter().map(|r| r.1.len()).chain(["package".len()]).max().unwrap_or(0);
    let mut out = format!(
        "{:service_width$}  {:package_width$}  {:>8}  statements\n",
        "service", "package", "coverage"
    );
    for (service, package, stmts) in rows {
        let (pct, covered, total) = (stmts.percent(), stmts.covered, stmts.total);
        out.push_str(&format!(
            "{service:service_width$}  {package:package_width$}  {pct:>7.1}%  {covered} of {total}\n"
        ));
    }
    out
}

fn side_by_side(unit: Stmts, e2e: Stmts, combined: Stmts) -> String {
    let mut out = format!("{:10}  {:>10}  {:>10}  {:>10}\n", "", "unit", "e2e", "combined");
    out.push_str(&format!("{:10}", "total"));
    for stmts in [unit, e2e, combined] {
        out.push_str(&format!("  {:>9.1}%", stmts.percent()));
    }
    out.push_str(&format!("\n{:10}", "statements"));
    for stmts in [unit, e2e, combined] {
        out.push_str(&format!("  {:>10}", format!("{} of {}", stmts.covered, stmts.total)));
    }
    out.push('\n');
    out
}

/// The Markdown appended to `GITHUB_STEP_SUMMARY`. `gate` is (required, measured).
pub fn markdown_summary(
    e2e: &Coverage,
    with_unit: Option<(f64, f64)>,
    gate: Option<(f64, f64)>,
) -> String {
    let mut out = String::from("### Coverage\n\n| service | coverage |\n| --- | ---: |\n");
    for (name, pct) in &e2e.services {
        out.push_str(&format!("| {name} | {pct:.1}% |\n"));
    }
    out.push_str(&format!("| **all services (merged)** | **{:.1}%** |\n\n", e2e.total));
    if let Some((unit, combined)) = with_unit {
        out.push_str("| | unit | e2e | combined |\n| --- | ---: | ---: | ---: |\n");
        out.push_str(&format!("| total | {unit:.1}% | {:.1}% | {combined:.1}% |\n\n", e2e.total));
    }
    if let Some((min, measured)) = gate {
        let verdict = if measured < min { "not met" } else { "met" };
        out.push_str(&format!("Required: {min:.1}%, measured {measured:.1}%: {verdict}.\n\n"));
    }
    out
}

/// Runs the Go unit tests with coverage of exactly the E2E build's packages into
/// `target/coverage/unit.out` and returns its blocks. `-coverprofile` (Go >= 1.22) lists the
/// packages without tests too (the `cmd/` mains), with their statements not run;
/// `-test.gocoverdir` would leave them out.
fn unit_blocks(sh: &Shell, root: &Utf8Path, e2e: &Blocks) -> anyhow::Result<Blocks> {
    let module = project::go_module(root)?;
    let coverpkg = packages(e2e).into_iter().collect::<Vec<_>>().join(",");
    let profile = root.join("target/coverage/unit.out");
    step(cmd!(sh, "go test -covermode=atomic -coverpkg={coverpkg} -coverprofile={profile} ./..."))
        .echo()
        .hint("fix the unit tests, or report without --with-unit")
        .run()
        .context("go unit tests failed")?;
    let text = fs::read_to_string(&profile).with_context(|| {
        format!("reading the profile {profile} that `go test` wrote: {WRITABLE_TARGET}")
    })?;
    Ok(parse_profile(&rewrite_paths(&text, &module, root)))
}

/// Unit, E2E and combined statements over one set, the blocks of the E2E build's packages, and
/// the combined blocks. Unit blocks of other packages are left out.
fn same_statements(e2e: &Blocks, unit: &Blocks) -> ([Stmts; 3], Blocks) {
    let packages = packages(e2e);
    let mut combined = e2e.clone();
    for (key, ran) in unit {
        if packages.contains(package_of(&key.0)) {
            *combined.entry(key.clone()).or_default() |= ran;
        }
    }
    let ran_in = |blocks: &Blocks| -> Blocks {
        let ran = |key| blocks.get(key).copied().unwrap_or(false);
        combined.keys().map(|key| (key.clone(), ran(key))).collect()
    };
    let all = |blocks: &Blocks| count(blocks, |_| true);
    let stmts = [all(&ran_in(unit)), all(&ran_in(e2e)), all(&combined)];
    (stmts, combined)
}

/// Unit tests with coverage, and the unit, E2E and combined columns over the same statements;
/// writes `target/coverage/combined.out`. Returns (unit, combined).
fn with_unit(sh: &Shell, root: &Utf8Path, e2e: &Report) -> anyhow::Result<(Stmts, Stmts)> {
    if let Some(file) = e2e.missing.first() {
        bail!("--with-unit runs this checkout's unit tests, but the E2E data is of other sources ({file} is not here): drop --with-unit, or run it in the checkout the binaries were built from");
    }
    let unit = unit_blocks(sh, root, &e2e.blocks)?;
    let ([unit, e2e_stmts, combined], blocks) = same_statements(&e2e.blocks, &unit);
    let mixed = overlapping_files(&blocks);
    if !mixed.is_empty() {
        bail!(
            "the E2E data and the unit tests ran different versions of {}: the combined numbers would be wrong; \
             produce fresh E2E data with `{PRODUCER}`",
            mixed.join(", ")
        );
    }
    let profile = root.join("target/coverage/combined.out");
    let mut text = String::from("mode: set\n");
    for ((file, (l0, c0), (l1, c1), n), ran) in &blocks {
        text.push_str(&format!("{file}:{l0}.{c0},{l1}.{c1} {n} {}\n", u8::from(*ran)));
    }
    fs::write(&profile, text).with_context(|| format!("writing {profile}: {WRITABLE_TARGET}"))?;
    let packages = packages(&blocks);
    println!(
        "\nover the same {} statements, those of the E2E build's {} packages:",
        combined.total,
        packages.len()
    );
    print!("{}", side_by_side(unit, e2e_stmts, combined));
    Ok((unit, combined))
}

/// Extracts an archived run into `target/coverage/from-archive/<name>/` and returns its
/// service directories.
fn dirs_from_archive(root: &Utf8Path, archive: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let archives = display(root, &project::coverdata_dir(root).join("archive"));
    if archive.is_dir() {
        bail!(
            "{archive} is a directory: --from-archive takes an archive (a .tar.gz written by \
             `{PRODUCER}`, in {archives}); read a directory of coverage data with `-i {archive}`"
        );
    }
    if !archive.is_file() {
        bail!("archive {archive} not found: the archived runs are in {archives}");
    }
    let name =
        archive.file_name().unwrap_or("archive").trim_end_matches(".gz").trim_end_matches(".tar");
    let dest = root.join("target/coverage/from-archive").join(name);
    recreate_dir(&dest)?;
    coverdata::extract(archive, &dest)?;
    let dirs = coverdata::service_dirs(&dest)?;
    if dirs.is_empty() {
        bail!("archive {archive} holds no service directories: it was not made by `{PRODUCER}`");
    }
    Ok(dirs)
}

fn recreate_dir(dir: &Utf8Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| {
                format!("clearing {dir} (scratch output): remove it by hand with `rm -rf {dir}`")
            })
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {dir}: {WRITABLE_TARGET}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `go tool covdata textfmt` on a directory with runs of two builds: `lib.go` changed
    /// between them (captured).
    const TWO_BUILDS: &str = "mode: atomic\n\
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
        example.com/covx/lib/lib.go:18.19,22.2 3 0\n";

    /// One build with closures, a goroutine, defer and switch: blocks touch but never overlap
    /// (captured), and the same blocks repeated as a merge of two binaries prints them.
    const ONE_BUILD: &str = "mode: atomic\n\
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
        assert_eq!(count(&blocks, |_| true), stmts(3, 6));
        assert_eq!(
            per_package(&blocks).into_iter().collect::<Vec<_>>(),
            [
                ("example.com/m/cmd/app".to_string(), stmts(1, 1)),
                ("example.com/m/lib".to_string(), stmts(2, 5)),
            ]
        );
        assert_eq!(stmts(0, 0).percent(), 0.0);
    }

    #[test]
    fn files_outside_the_module_or_gone_are_missing_sources() {
        let root = scratch("sources");
        fs::create_dir_all(root.join("lib")).unwrap();
        fs::write(root.join("lib/a.go"), "package lib\n").unwrap();
        let blocks = parse_profile(
            "mode: set\n\
            example.com/m/lib/a.go:1.1,2.2 1 1\n\
            example.com/m/lib/gone.go:1.1,2.2 1 1\n\
            example.com/other/lib/a.go:1.1,2.2 1 1\n\
            example.com/mod/lib/a.go:1.1,2.2 1 1\n",
        );
        assert_eq!(
            missing_sources(&root, "example.com/m", &blocks),
            ["example.com/m/lib/gone.go", "example.com/mod/lib/a.go", "example.com/other/lib/a.go"]
        );
        fs::remove_dir_all(root).unwrap();
    }

    /// `go tool cover -mode=set -var=GoCover lib.go` (Go 1.26) on the `Classify`/`Unused` file
    /// whose blocks `ONE_FILE` lists, as `covdata textfmt` writes them.
    const INSTRUMENTED: &str = "var GoCover = struct {\n\
        \tCount     [6]uint32\n\tPos       [3 * 6]uint32\n\tNumStmt   [6]uint16\n} {\n\
        \tPos: [3 * 6]uint32{\n\
        \t\t4, 5, 0xb001d, // [0]\n\t\t8, 8, 0xc0002, // [1]\n\t\t11, 11, 0x130002, // [2]\n\
        \t\t5, 7, 0x3000b, // [3]\n\t\t8, 10, 0x3000c, // [4]\n\t\t15, 19, 0x20013, // [5]\n\
        \t},\n\
        \tNumStmt: [6]uint16{\n\
        \t\t1, // 0\n\t\t1, // 1\n\t\t1, // 2\n\t\t1, // 3\n\t\t1, // 4\n\t\t3, // 5\n\
        \t},\n}\n";

    const ONE_FILE: &str = "mode: set\n\
        example.com/covtest/lib/lib.go:4.29,5.11 1 1\n\
        example.com/covtest/lib/lib.go:5.11,7.3 1 0\n\
        example.com/covtest/lib/lib.go:8.2,8.12 1 1\n\
        example.com/covtest/lib/lib.go:8.12,10.3 1 1\n\
        example.com/covtest/lib/lib.go:11.2,11.19 1 0\n\
        example.com/covtest/lib/lib.go:15.19,19.2 3 0\n";

    #[test]
    fn instrumenting_the_same_source_gives_the_blocks_of_the_data() {
        let data: Vec<_> =
            parse_profile(ONE_FILE).into_keys().map(|(_, start, end, n)| (start, end, n)).collect();
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
        assert_eq!(overlapping(TWO_BUILDS), vec!["example.com/covx/lib/lib.go".to_string()]);
        assert_eq!(overlapping(ONE_BUILD), Vec::<String>::new());
        // Same range, different statement count: also two versions of the file.
        let changed = "mode: set\na.go:1.1,3.2 2 1\na.go:1.1,3.2 3 0\nb.go:1.1,2.2 1 0\n";
        assert_eq!(overlapping(changed), vec!["a.go".to_string()]);
    }

    /// A fresh directory below the system temp dir, unique per test and process.
    fn scratch(name: &str) -> Utf8PathBuf {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .unwrap()
            .join(format!("xtask-covdata-{}-{name}", std::process::id()));
        recreate_dir(&dir).unwrap();
        dir
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
        let root = scratch("no-archive");
        let err = format!("{:#}", dirs_from_archive(&root, &root.join("nope.tar.gz")).unwrap_err());
        assert!(
            err.contains("nope.tar.gz not found") && err.contains("coverdata/archive"),
            "{err}"
        );
        fs::remove_dir_all(root).unwrap();
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
        .assert_eq(&side_by_side(stmts(2, 8), stmts(6, 11), stmts(7, 11)));
        let cov = Coverage {
            services: vec![("gateway".to_string(), 44.4), ("datastorage".to_string(), 70.0)],
            total: 60.0,
            profile: "target/coverage/e2e.out".into(),
        };
        expect_test::expect![[r#"
            ### Coverage

            | service | coverage |
            | --- | ---: |
            | gateway | 44.4% |
            | datastorage | 70.0% |
            | **all services (merged)** | **60.0%** |

            | | unit | e2e | combined |
            | --- | ---: | ---: | ---: |
            | total | 25.0% | 60.0% | 63.6% |

            Required: 65.0%, measured 63.6%: not met.

        "#]]
        .assert_eq(&markdown_summary(&cov, Some((25.0, 63.6)), Some((65.0, 63.6))));
        assert!(!markdown_summary(&cov, None, None).contains("unit"));
    }
}
