//! `cargo xtask covdata-report`: turns what the instrumented services wrote into `coverdata/`
//! into numbers. `go tool covdata` and `go tool cover` do the work; this module only runs them,
//! parses their text output and explains their failures. It also archives a previous run's data
//! (called by `e2e-gateway --coverage` before a new run).

use std::{collections::BTreeMap, fs, io::Write, time::SystemTime};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::{doctor, flags, project};

/// The command that produces coverage data, named in every "no data" message.
const PRODUCER: &str = "cargo xtask e2e-gateway --coverage";

/// How many archived runs `archive_previous` keeps.
const KEEP_ARCHIVES: usize = 5;

/// Where container builds put the source; the text profile names files below them when a
/// package was built outside module mode, and `go tool cover` cannot resolve such paths here.
const BUILD_PREFIXES: [&str; 3] = ["/opt/app-root/src/", "/workspace/", "/src/"];

/// The fix for a failed write below target/.
const WRITABLE_TARGET: &str = "make target/ writable and check free space (`df -h target`)";

/// Files in `coverdata/` that belong to the repository, not to a run: never archived or removed.
const TRACKED: [&str; 1] = ["README.md"];

pub struct Coverage {
    /// Statement coverage per service directory, in the order the directories were given.
    pub services: Vec<(String, f64)>,
    /// Statement coverage of all services merged.
    pub total: f64,
    /// The merged text profile, `target/coverage/e2e.out`.
    pub profile: Utf8PathBuf,
}

pub fn run(sh: &Shell, flags: &flags::CovdataReport) -> anyhow::Result<()> {
    let root = project::root();
    doctor::preflight(
        sh,
        &root,
        &doctor::Needs {
            engine: None,
            go: true,
            covdata: true,
            ..doctor::Needs::default()
        },
    )?;
    let dirs = if let Some(archive) = &flags.from_archive {
        let archive = project::absolute(archive)?;
        let dirs = dirs_from_archive(&root, &archive)?;
        println!("reading {}", display(&root, &archive));
        dirs
    } else if !flags.inputs.is_empty() {
        flags
            .inputs
            .iter()
            .map(|d| project::absolute(d))
            .collect::<anyhow::Result<_>>()?
    } else {
        default_dirs(&root)?
    };

    let e2e = report(sh, &root, &dirs)?;

    let with_unit = if flags.with_unit {
        let unit = unit_coverage(sh, &root)?;
        let combined = combined_coverage(sh, &root, &dirs)?;
        println!();
        print!("{}", side_by_side(unit, e2e.total, combined));
        Some((unit, combined))
    } else {
        None
    };

    if flags.html {
        let html = root.join("target/coverage/e2e.html");
        let profile = &e2e.profile;
        go_output(
            "go tool cover -html",
            &display(&root, profile),
            cmd!(sh, "go tool cover -html={profile} -o {html}"),
        )?;
        println!("wrote {}", display(&root, &html));
    }

    // The gate applies to what the user asked to measure: combined when unit tests are included.
    let (gated, gated_name, gated_profile) = match with_unit {
        Some((_, combined)) => (
            combined,
            "combined (unit + E2E)",
            root.join("target/coverage/combined.out"),
        ),
        None => (e2e.total, "E2E", e2e.profile.clone()),
    };

    if let Ok(path) = std::env::var("GITHUB_STEP_SUMMARY") {
        if !path.is_empty() {
            let text = markdown_summary(&e2e, with_unit, flags.min.map(|m| (m, gated)));
            let mut file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| step_summary_error(&path))?;
            file.write_all(text.as_bytes())
                .with_context(|| step_summary_error(&path))?;
        }
    }

    if let Some(min) = flags.min {
        if gated < min {
            bail!(
                "{gated_name} coverage {gated:.1}% is below the required {min:.1}% (--min): \
                 test the uncovered code (see {}) or lower --min",
                display(&root, &gated_profile)
            );
        }
        println!("{gated_name} coverage {gated:.1}% meets the required {min:.1}%");
    }
    Ok(())
}

fn step_summary_error(path: &str) -> String {
    format!("appending the coverage table to GITHUB_STEP_SUMMARY ({path}): point GITHUB_STEP_SUMMARY at a writable file, or unset it")
}

/// Prints the per-service and per-package table and the totals, writes target/coverage/e2e.out.
/// `sh` must be in the project root (main.rs puts it there): `go tool cover` resolves import
/// paths through the go.mod of its current directory.
pub fn report(sh: &Shell, root: &Utf8Path, dirs: &[Utf8PathBuf]) -> anyhow::Result<Coverage> {
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
        let shown = display(root, dir);
        let percent = go_output(
            "go tool covdata percent",
            &shown,
            cmd!(sh, "go tool covdata percent -i {dir}"),
        )?;
        for (package, pct) in parse_percent(&percent) {
            rows.push((name.clone(), package, pct));
        }
        let profile = out_dir.join(format!("services/{name}.out"));
        let total = profile_total(
            sh,
            root,
            &module,
            std::slice::from_ref(dir),
            &profile,
            &shown,
        )?;
        rows.push((name.clone(), "(total)".to_string(), total));
        services.push((name, total));
    }

    let profile = out_dir.join("e2e.out");
    let shown: Vec<String> = dirs.iter().map(|d| display(root, d)).collect();
    let total = profile_total(sh, root, &module, dirs, &profile, &shown.join(" "))?;
    rows.push((
        "all services".to_string(),
        "(merged total)".to_string(),
        total,
    ));

    print!("{}", table(&rows));
    println!("wrote {}", display(root, &profile));
    Ok(Coverage {
        services,
        total,
        profile,
    })
}

/// Errors when any dir has covmeta.* but no covcounters.* (or no data at all), naming every
/// such dir. A meta-data file is written when an instrumented process starts, its counters only
/// when it exits normally, so a meta-data file without counters means a lost run.
pub fn check_counters(dirs: &[Utf8PathBuf]) -> anyhow::Result<()> {
    let root = project::root();
    let mut problems = Vec::new();
    for path in dirs {
        let dir = display(&root, path);
        let names = match fs::read_dir(path) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect::<Vec<_>>(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                problems.push(format!(
                    "{dir}: does not exist: produce it with `{PRODUCER}`"
                ));
                continue;
            }
            Err(err) => {
                problems.push(format!(
                    "{dir}: cannot be read ({err}): fix its permissions"
                ));
                continue;
            }
        };
        if let Some(problem) = counter_problem(&names) {
            problems.push(format!("{dir}: {problem}"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "coverage data is missing or incomplete:\n  {}",
        problems.join("\n  ")
    )
}

/// What is wrong with a GOCOVERDIR holding these file names, if anything. Counter files are
/// named `covcounters.<meta hash>.<pid>.<nanos>`, so each meta-data file can be matched to the
/// runs that finished.
fn counter_problem(names: &[String]) -> Option<String> {
    let metas: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("covmeta."))
        .collect();
    let counters: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("covcounters."))
        .collect();
    if metas.is_empty() && counters.is_empty() {
        return Some(format!(
            "no coverage data (no covmeta.* or covcounters.* files): produce it with `{PRODUCER}`"
        ));
    }
    if metas.is_empty() {
        return Some(format!(
            "covcounters.* but no covmeta.* file: the directory is incomplete (copied in part?); \
             produce fresh data with `{PRODUCER}`"
        ));
    }
    let lost: Vec<&str> = metas
        .iter()
        .copied()
        .filter(|hash| !counters.iter().any(|c| c.split('.').next() == Some(hash)))
        .collect();
    if lost.is_empty() {
        return None;
    }
    let files = lost
        .iter()
        .map(|h| format!("covmeta.{h}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "{files} but no covcounters.* for it: the process never exited normally (killed, or still running): \
         stop it gracefully so the counters are written"
    ))
}

/// Every directory directly under `coverdata/` except `archive/`: one GOCOVERDIR per service.
fn default_dirs(root: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let coverdata = project::coverdata_dir(root);
    let dirs = service_dirs(&coverdata)?;
    if dirs.is_empty() {
        let mut message = format!(
            "no coverage data in {}: produce it with `{PRODUCER}`",
            display(root, &coverdata)
        );
        if let Some(latest) = archives(&coverdata.join("archive"))?.pop() {
            message.push_str(&format!(
                ", or report an archived run with `cargo xtask covdata-report --from-archive {}`",
                display(root, &latest)
            ));
        }
        bail!(message);
    }
    Ok(dirs)
}

/// The service directories of a coverdata/-like directory: its run entries that are directories.
fn service_dirs(parent: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut dirs = top_level_entries(parent)?;
    dirs.retain(|entry| entry.is_dir());
    Ok(dirs)
}

fn listing_error(dir: &Utf8Path) -> String {
    format!("listing {dir}: check that it is readable (`ls -ld {dir}`)")
}

fn service_name(dir: &Utf8Path) -> String {
    dir.file_name().unwrap_or(dir.as_str()).to_string()
}

/// `covdata textfmt` into `profile`, rewritten so `go tool cover` resolves it here, checked for
/// mixed builds, then the `total:` of `go tool cover -func`.
fn profile_total(
    sh: &Shell,
    root: &Utf8Path,
    module: &str,
    dirs: &[Utf8PathBuf],
    profile: &Utf8Path,
    shown: &str,
) -> anyhow::Result<f64> {
    let inputs = join_dirs(dirs)?;
    go_output(
        "go tool covdata textfmt",
        shown,
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
    let mixed = overlapping_files(&text);
    if !mixed.is_empty() {
        bail!(
            "{shown}: the data comes from more than one build of changed source ({} {} blocks that do not match): \
             the numbers would be wrong; start clean with `rm -rf {shown}` or a fresh `{PRODUCER}` \
             (which archives the old data first)",
            mixed.join(", "),
            if mixed.len() == 1 { "has" } else { "have" },
        );
    }
    let func = go_output(
        "go tool cover -func",
        shown,
        cmd!(sh, "go tool cover -func {profile}"),
    )?;
    parse_func_total(&func).with_context(|| {
        format!("`go tool cover -func {profile}` printed no `total:` line; its output was:\n{func}")
    })
}

/// `covdata` takes several input directories as one comma-separated argument.
fn join_dirs(dirs: &[Utf8PathBuf]) -> anyhow::Result<String> {
    if let Some(dir) = dirs.iter().find(|d| d.as_str().contains(',')) {
        bail!(
            "{dir} contains a comma, which `go tool covdata -i` cannot take: rename the directory"
        );
    }
    Ok(dirs
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(","))
}

/// Runs a `go` command quietly and returns its stdout; on failure, its stderr with an
/// explanation of what it means.
fn go_output(what: &str, subject: &str, cmd: xshell::Cmd<'_>) -> anyhow::Result<String> {
    let output = cmd.quiet().ignore_status().output().with_context(|| {
        format!("running {what}: is Go installed and on PATH? (`cargo xtask doctor` checks)")
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // covdata prefixes its messages with "error: " twice; main adds one of its own.
        let message = stderr.trim().trim_start_matches("error: ");
        bail!(
            "{what} failed for {subject}: {message}\n{}",
            explain_go_error(&stderr, subject)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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

/// Parses `go tool covdata percent`: `\t<package>\t\tcoverage: 37.5% of statements` lines.
/// A package without statements prints only its name and no newline, so the next package
/// follows on the same line: read the output as a stream of words.
fn parse_percent(text: &str) -> Vec<(String, f64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut packages = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words.get(i + 1) == Some(&"coverage:") {
            let pct = words
                .get(i + 2)
                .and_then(|w| w.strip_suffix('%'))
                .and_then(|w| w.parse().ok());
            if let Some(pct) = pct {
                packages.push((words[i].to_string(), pct));
                i += 5; // package, "coverage:", "N%", "of", "statements"
                continue;
            }
        }
        i += 1;
    }
    packages
}

/// The percentage on the `total:` line of `go tool cover -func`.
fn parse_func_total(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("total:"))?;
    line.split_whitespace()
        .last()?
        .strip_suffix('%')?
        .parse()
        .ok()
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
fn overlapping_files(profile: &str) -> Vec<String> {
    type Pos = (u32, u32);
    let mut blocks: BTreeMap<&str, Vec<(Pos, Pos, u32)>> = BTreeMap::new();
    for line in profile.lines().filter(|l| !l.starts_with("mode:")) {
        let Some((file, block)) = parse_block(line) else {
            continue;
        };
        blocks.entry(file).or_default().push(block);
    }
    let mut mixed = Vec::new();
    for (file, mut list) in blocks {
        list.sort();
        list.dedup();
        let mut end_so_far = (0, 0);
        for &(start, end, _) in &list {
            if start < end_so_far {
                mixed.push(file.to_string());
                break;
            }
            end_so_far = end_so_far.max(end);
        }
    }
    mixed
}

/// `file.go:8.12,10.3 1 0` -> ("file.go", ((8, 12), (10, 3), 1)).
#[allow(clippy::type_complexity)]
fn parse_block(line: &str) -> Option<(&str, ((u32, u32), (u32, u32), u32))> {
    let (file, rest) = line.rsplit_once(':')?;
    let mut words = rest.split_whitespace();
    let (start, end) = words.next()?.split_once(',')?;
    let stmts = words.next()?.parse().ok()?;
    let pos = |s: &str| -> Option<(u32, u32)> {
        let (line, col) = s.split_once('.')?;
        Some((line.parse().ok()?, col.parse().ok()?))
    };
    Some((file, (pos(start)?, pos(end)?, stmts)))
}

/// The terminal table: one row per (service, package) and the totals.
fn table(rows: &[(String, String, f64)]) -> String {
    let service_width = rows
        .iter()
        .map(|r| r.0.len())
        .chain(["service".len()])
        .max()
        .unwrap_or(0);
    let package_width = rows
        .iter()
        .map(|r| r.1.len())
        .chain(["package".len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:service_width$}  {:package_width$}  {:>8}\n",
        "service", "package", "coverage"
    );
    for (service, package, pct) in rows {
        out.push_str(&format!(
            "{service:service_width$}  {package:package_width$}  {pct:>7.1}%\n"
        ));
    }
    out
}

fn side_by_side(unit: f64, e2e: f64, combined: f64) -> String {
    format!(
        "{:8}  {:>8}  {:>8}  {:>8}\n{:8}  {:>7.1}%  {:>7.1}%  {:>7.1}%\n",
        "", "unit", "e2e", "combined", "total", unit, e2e, combined
    )
}

/// The Markdown appended to `GITHUB_STEP_SUMMARY`. `gate` is (required, measured).
fn markdown_summary(
    e2e: &Coverage,
    with_unit: Option<(f64, f64)>,
    gate: Option<(f64, f64)>,
) -> String {
    let mut out = String::from("### Coverage\n\n| service | coverage |\n| --- | ---: |\n");
    for (name, pct) in &e2e.services {
        out.push_str(&format!("| {name} | {pct:.1}% |\n"));
    }
    out.push_str(&format!(
        "| **all services (merged)** | **{:.1}%** |\n\n",
        e2e.total
    ));
    if let Some((unit, combined)) = with_unit {
        out.push_str("| | unit | e2e | combined |\n| --- | ---: | ---: | ---: |\n");
        out.push_str(&format!(
            "| total | {unit:.1}% | {:.1}% | {combined:.1}% |\n\n",
            e2e.total
        ));
    }
    if let Some((min, measured)) = gate {
        let verdict = if measured < min { "not met" } else { "met" };
        out.push_str(&format!(
            "Required: {min:.1}%, measured {measured:.1}%: {verdict}.\n\n"
        ));
    }
    out
}

/// Runs the Go unit tests with binary coverage into `target/coverage/unit` and returns their total.
fn unit_coverage(sh: &Shell, root: &Utf8Path) -> anyhow::Result<f64> {
    let module = project::go_module(root)?;
    let unit_dir = root.join("target/coverage/unit");
    recreate_dir(&unit_dir)?;
    let coverpkg = format!("{module}/...");
    cmd!(sh, "go test -cover -covermode=atomic -coverpkg={coverpkg} ./... -args -test.gocoverdir={unit_dir}")
        .run()
        .context("go unit tests failed (output above): fix them, or report without --with-unit")?;
    if has_no_meta(&unit_dir)? {
        bail!("the unit tests wrote no coverage data to {unit_dir}: the module has no tests; drop --with-unit");
    }
    let profile = root.join("target/coverage/unit.out");
    let shown = display(root, &unit_dir);
    profile_total(sh, root, &module, &[unit_dir], &profile, &shown)
}

fn has_no_meta(dir: &Utf8Path) -> anyhow::Result<bool> {
    let mut entries = dir.read_dir_utf8().with_context(|| listing_error(dir))?;
    Ok(!entries.any(|e| e.is_ok_and(|e| e.file_name().starts_with("covmeta."))))
}

/// `covdata merge` of the E2E directories and the unit data into `target/coverage/combined`
/// (a GOCOVERDIR that can be given to `-i` later), and its total.
fn combined_coverage(sh: &Shell, root: &Utf8Path, dirs: &[Utf8PathBuf]) -> anyhow::Result<f64> {
    let module = project::go_module(root)?;
    let combined = root.join("target/coverage/combined");
    recreate_dir(&combined)?;
    let mut all = dirs.to_vec();
    all.push(root.join("target/coverage/unit"));
    let inputs = join_dirs(&all)?;
    // Name the inputs, not the scratch output, in errors: the inputs are what a clean run fixes.
    let shown: Vec<String> = all.iter().map(|d| display(root, d)).collect();
    let shown = shown.join(" ");
    go_output(
        "go tool covdata merge",
        &shown,
        cmd!(sh, "go tool covdata merge -i {inputs} -o {combined}"),
    )?;
    let profile = root.join("target/coverage/combined.out");
    profile_total(sh, root, &module, &[combined], &profile, &shown)
}

/// Extracts an archived run into `target/coverage/from-archive/<name>/` and returns its
/// service directories.
fn dirs_from_archive(root: &Utf8Path, archive: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    if !archive.is_file() {
        bail!(
            "archive {archive} not found: the archived runs are in {}",
            display(root, &project::coverdata_dir(root).join("archive"))
        );
    }
    let name = archive
        .file_name()
        .unwrap_or("archive")
        .trim_end_matches(".tar.gz");
    let dest = root.join("target/coverage/from-archive").join(name);
    recreate_dir(&dest)?;
    extract(archive, &dest)?;
    let dirs = service_dirs(&dest)?;
    if dirs.is_empty() {
        bail!("archive {archive} holds no service directories: it was not made by `{PRODUCER}`");
    }
    Ok(dirs)
}

fn extract(archive: &Utf8Path, dest: &Utf8Path) -> anyhow::Result<()> {
    let file = fs::File::open(archive)
        .with_context(|| format!("opening {archive}: check that it is readable"))?;
    // `unpack` refuses entries that would land outside `dest`.
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dest)
        .with_context(|| format!("extracting {archive}: the archive is damaged"))
}

/// Archives the previous run's coverdata/ content (everything except coverdata/archive/,
/// dotfiles like .gitkeep and the tracked README.md) into coverdata/archive/<UTC timestamp>.tar.gz,
/// keeps the newest five archives, then removes what it archived. Returns None when there was
/// nothing to archive. Nothing is deleted before the archive is complete, read back and renamed
/// into place, and only the archived files (and directories left empty) are removed.
pub fn archive_previous(root: &Utf8Path) -> anyhow::Result<Option<Utf8PathBuf>> {
    let coverdata = project::coverdata_dir(root);
    let files = archivable_files(&coverdata)?;
    if files.is_empty() {
        return Ok(None);
    }
    let archive_dir = coverdata.join("archive");
    let stamp = project::utc_timestamp(SystemTime::now());
    let mut archive = archive_dir.join(format!("{stamp}.tar.gz"));
    let mut n = 2;
    while archive.exists() {
        archive = archive_dir.join(format!("{stamp}-{n}.tar.gz"));
        n += 1;
    }
    let partial = archive_dir.join(format!(
        ".{}.partial",
        archive.file_name().unwrap_or("archive")
    ));
    let written = fs::create_dir_all(&archive_dir)
        .with_context(|| format!("creating {archive_dir}"))
        .and_then(|()| write_archive(&coverdata, &files, &partial))
        .and_then(|()| verify_archive(&partial, &files));
    if let Err(err) = written {
        let _ = fs::remove_file(&partial);
        return Err(err.context(format!(
            "archiving the previous coverage data into {archive}: nothing was deleted; \
             free disk space or move {coverdata} away by hand"
        )));
    }
    fs::rename(&partial, &archive).with_context(|| {
        format!("renaming {partial} to {archive}: nothing was deleted; make {archive_dir} writable")
    })?;

    for old in prune(&archives(&archive_dir)?, KEEP_ARCHIVES) {
        fs::remove_file(old).with_context(|| {
            format!("removing the old archive {old} (only the newest {KEEP_ARCHIVES} are kept): make {archive_dir} writable, or remove it by hand")
        })?;
    }
    for (rel, _) in &files {
        let path = coverdata.join(rel);
        fs::remove_file(&path).with_context(|| {
            format!("removing {path} after archiving it into {archive}: make it writable, or remove it by hand")
        })?;
    }
    // Directories emptied by the removal go too; anything written meanwhile keeps its directory.
    for entry in top_level_entries(&coverdata)? {
        for dir in walkdir::WalkDir::new(&entry).contents_first(true) {
            let Ok(dir) = dir else { continue };
            if dir.file_type().is_dir() {
                let _ = fs::remove_dir(dir.path());
            }
        }
    }
    Ok(Some(archive))
}

/// Top-level entries of `coverdata/` that belong to a run.
fn top_level_entries(coverdata: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut entries = Vec::new();
    let list = match coverdata.read_dir_utf8() {
        Ok(list) => list,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
        Err(err) => return Err(err).with_context(|| listing_error(coverdata)),
    };
    for entry in list {
        let entry = entry.with_context(|| listing_error(coverdata))?;
        let name = entry.file_name();
        if name == "archive" || name.starts_with('.') || TRACKED.contains(&name) {
            continue;
        }
        entries.push(entry.into_path());
    }
    entries.sort();
    Ok(entries)
}

/// Every non-directory below the run's entries, as (path relative to coverdata/, size).
fn archivable_files(coverdata: &Utf8Path) -> anyhow::Result<Vec<(Utf8PathBuf, u64)>> {
    let mut files = Vec::new();
    for entry in top_level_entries(coverdata)? {
        for item in walkdir::WalkDir::new(&entry).sort_by_file_name() {
            let item = item.with_context(|| listing_error(&entry))?;
            if item.file_type().is_dir() {
                continue;
            }
            let path = Utf8Path::from_path(item.path())
                .with_context(|| format!("{} is not UTF-8: rename it", item.path().display()))?;
            let rel = path
                .strip_prefix(coverdata)
                .expect("walked below coverdata")
                .to_path_buf();
            // tar stores a symlink itself, with size 0.
            let size = if item.path_is_symlink() {
                0
            } else {
                item.metadata().map(|m| m.len()).with_context(|| {
                    format!("reading the size of {path}: check that it is readable")
                })?
            };
            files.push((rel, size));
        }
    }
    Ok(files)
}

fn write_archive(
    coverdata: &Utf8Path,
    files: &[(Utf8PathBuf, u64)],
    dest: &Utf8Path,
) -> anyhow::Result<()> {
    let file = fs::File::create(dest).with_context(|| format!("creating {dest}"))?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    builder.follow_symlinks(false);
    for (rel, _) in files {
        builder
            .append_path_with_name(coverdata.join(rel), rel)
            .with_context(|| format!("adding {rel} to {dest}"))?;
    }
    let file = builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .with_context(|| format!("writing {dest}"))?;
    file.sync_all().with_context(|| format!("writing {dest}"))
}

/// Reads the archive back: every file must be in it with its size.
fn verify_archive(archive: &Utf8Path, files: &[(Utf8PathBuf, u64)]) -> anyhow::Result<()> {
    let file = fs::File::open(archive).with_context(|| format!("opening {archive}"))?;
    let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = BTreeMap::new();
    for entry in reader
        .entries()
        .with_context(|| format!("reading back {archive}"))?
    {
        let entry = entry.with_context(|| format!("reading back {archive}"))?;
        let path = entry
            .path()
            .with_context(|| format!("reading back {archive}"))?
            .into_owned();
        found.insert(path, entry.size());
    }
    for (rel, size) in files {
        match found.get(rel.as_std_path()) {
            Some(s) if s == size => {}
            Some(s) => bail!("{archive} holds {rel} with {s} bytes instead of {size}"),
            None => bail!("{archive} lacks {rel}"),
        }
    }
    Ok(())
}

/// The archives in `dir`, oldest first. Names are timestamps, so their order is the time order;
/// comparing names without `.tar.gz` puts `<stamp>` before `<stamp>-2`.
fn archives(dir: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut list = Vec::new();
    let entries = match dir.read_dir_utf8() {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(list),
        Err(err) => return Err(err).with_context(|| listing_error(dir)),
    };
    for entry in entries {
        let entry = entry.with_context(|| listing_error(dir))?;
        let name = entry.file_name();
        if name.ends_with(".tar.gz") && !name.starts_with('.') {
            list.push(entry.into_path());
        }
    }
    list.sort_by(|a, b| stem(a).cmp(stem(b)));
    Ok(list)
}

fn stem(path: &Utf8Path) -> &str {
    path.file_name().unwrap_or("").trim_end_matches(".tar.gz")
}

/// The archives to delete so that the newest `keep` remain (`sorted` is oldest first).
fn prune(sorted: &[Utf8PathBuf], keep: usize) -> &[Utf8PathBuf] {
    &sorted[..sorted.len().saturating_sub(keep)]
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

/// A path as the user should see it: relative to the project root when below it.
fn display(root: &Utf8Path, path: &Utf8Path) -> String {
    path.strip_prefix(root)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `go tool covdata percent` (Go 1.26) on a program with a package without statements
    /// (`kinds`): its name is printed without a newline.
    const PERCENT: &str = "\texample.com/covx/cmd/app\t\tcoverage: 100.0% of statements\n\
        \texample.com/covx/kinds\t\t\texample.com/covx/lib\t\tcoverage: 37.5% of statements\n";

    /// `go tool cover -func` (Go 1.26).
    const FUNC: &str = "example.com/covx/cmd/app/main.go:11:\tmain\t\t100.0%\n\
        example.com/covx/lib/lib.go:4:\t\tClassify\t60.0%\n\
        example.com/covx/lib/lib.go:15:\t\tUnused\t\t0.0%\n\
        total:\t\t\t\t\t(statements)\t44.4%\n";

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
    fn percent_lines_become_packages_even_after_a_package_without_statements() {
        assert_eq!(
            parse_percent(PERCENT),
            vec![
                ("example.com/covx/cmd/app".to_string(), 100.0),
                ("example.com/covx/lib".to_string(), 37.5),
            ]
        );
        assert_eq!(parse_percent(""), vec![]);
    }

    #[test]
    fn func_total_is_read_from_the_total_line() {
        assert_eq!(parse_func_total(FUNC), Some(44.4));
        assert_eq!(parse_func_total("example.com/m/a.go:3:\tf\t100.0%\n"), None);
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
        assert_eq!(
            overlapping_files(TWO_BUILDS),
            vec!["example.com/covx/lib/lib.go".to_string()]
        );
        assert_eq!(overlapping_files(ONE_BUILD), Vec::<String>::new());
        // Same range, different statement count: also two versions of the file.
        let changed = "mode: set\na.go:1.1,3.2 2 1\na.go:1.1,3.2 3 0\n";
        assert_eq!(overlapping_files(changed), vec!["a.go".to_string()]);
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counter_files_are_matched_to_their_meta_data_file() {
        assert_eq!(
            counter_problem(&names(&["covmeta.aa", "covcounters.aa.12.345"])),
            None
        );
        let killed = counter_problem(&names(&["covmeta.aa"])).unwrap();
        assert!(
            killed.contains("covmeta.aa but no covcounters.*"),
            "{killed}"
        );
        assert!(killed.contains(
            "the process never exited normally (killed, or still running): stop it gracefully so the counters are written"
        ));
        // A finished run of one build does not hide a killed run of another.
        let one_lost =
            counter_problem(&names(&["covmeta.aa", "covcounters.aa.1.2", "covmeta.bb"])).unwrap();
        assert!(one_lost.starts_with("covmeta.bb but"), "{one_lost}");
        let empty = counter_problem(&names(&[".keep"])).unwrap();
        assert!(
            empty.contains("no coverage data") && empty.contains(PRODUCER),
            "{empty}"
        );
        let no_meta = counter_problem(&names(&["covcounters.aa.1.2"])).unwrap();
        assert!(no_meta.contains("no covmeta.*"), "{no_meta}");
    }

    /// A fresh directory below the system temp dir, unique per test and process.
    fn scratch(name: &str) -> Utf8PathBuf {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .unwrap()
            .join(format!("xtask-covdata-{}-{name}", std::process::id()));
        recreate_dir(&dir).unwrap();
        dir
    }

    fn touch(path: &Utf8Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn check_counters_names_every_bad_directory() {
        let tmp = scratch("check");
        touch(&tmp.join("good/covmeta.aa"), "m");
        touch(&tmp.join("good/covcounters.aa.1.2"), "c");
        touch(&tmp.join("killed/covmeta.bb"), "m");
        touch(&tmp.join("killed-too/covmeta.cc"), "m");
        fs::create_dir_all(tmp.join("empty")).unwrap();
        let dirs: Vec<Utf8PathBuf> = ["good", "killed", "empty", "missing", "killed-too"]
            .iter()
            .map(|d| tmp.join(d))
            .collect();
        let err = format!("{:#}", check_counters(&dirs).unwrap_err());
        assert!(!err.contains("good"), "{err}");
        for bad in ["killed", "killed-too"] {
            assert!(
                err.contains(&format!("{tmp}/{bad}: covmeta."))
                    && err.contains("never exited normally"),
                "{err}"
            );
        }
        assert!(
            err.contains(&format!("{tmp}/empty: no coverage data")),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "{tmp}/missing: does not exist: produce it with `{PRODUCER}`"
            )),
            "{err}"
        );
        assert!(check_counters(&dirs[..1]).is_ok());
        fs::remove_dir_all(tmp).unwrap();
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
    fn archives_sort_by_time_and_the_newest_five_are_kept() {
        let tmp = scratch("sort");
        for name in [
            "2024-01-02T00-00-00Z.tar.gz",
            "2023-12-31T23-59-59Z.tar.gz",
            "2024-01-02T00-00-00Z-2.tar.gz",
            "2024-01-01T00-00-00Z.tar.gz",
            "notes.txt",
            ".2024-01-03T00-00-00Z.tar.gz.partial",
        ] {
            touch(&tmp.join(name), "");
        }
        let list = archives(&tmp).unwrap();
        let names: Vec<&str> = list.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(
            names,
            [
                "2023-12-31T23-59-59Z.tar.gz",
                "2024-01-01T00-00-00Z.tar.gz",
                "2024-01-02T00-00-00Z.tar.gz",
                "2024-01-02T00-00-00Z-2.tar.gz",
            ]
        );
        assert_eq!(prune(&list, 2), &list[..2]);
        assert!(prune(&list, 5).is_empty());
        fs::remove_dir_all(tmp).unwrap();
    }

    fn tree(dir: &Utf8Path) -> BTreeMap<String, String> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let path = Utf8Path::from_path(e.path()).unwrap();
                let rel = path.strip_prefix(dir).unwrap().to_string();
                (
                    rel,
                    String::from_utf8_lossy(&fs::read(path).unwrap()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn archive_round_trip_keeps_five_and_leaves_only_what_is_not_a_run() {
        let root = scratch("archive");
        let coverdata = root.join("coverdata");
        touch(&coverdata.join(".gitkeep"), "");
        touch(&coverdata.join("README.md"), "tracked");
        touch(&coverdata.join("gateway/covmeta.aa"), "meta-a");
        touch(&coverdata.join("gateway/covcounters.aa.1.2"), "counters-a");
        touch(&coverdata.join("datastorage/covmeta.bb"), "meta-b");
        touch(
            &coverdata.join("datastorage/nested/covcounters.bb.3.4"),
            "counters-b",
        );
        touch(&coverdata.join("loose.txt"), "loose");
        fs::create_dir_all(coverdata.join("empty")).unwrap();
        let before = tree(&coverdata);
        for day in 1..=6 {
            touch(
                &coverdata.join(format!("archive/2020-01-0{day}T00-00-00Z.tar.gz")),
                "old",
            );
        }

        let archive = archive_previous(&root)
            .unwrap()
            .expect("there was data to archive");

        assert!(archive.starts_with(coverdata.join("archive")));
        let left = tree(&coverdata);
        let mut not_archived: Vec<&str> = left
            .keys()
            .map(|k| k.as_str())
            .filter(|k| !k.starts_with("archive/"))
            .collect();
        not_archived.sort();
        assert_eq!(not_archived, [".gitkeep", "README.md"]);
        for gone in ["gateway", "datastorage", "empty", "loose.txt"] {
            assert!(!coverdata.join(gone).exists(), "{gone} was not removed");
        }
        let kept: Vec<String> = archives(&coverdata.join("archive"))
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string())
            .collect();
        assert_eq!(kept.len(), KEEP_ARCHIVES, "{kept:?}");
        assert_eq!(kept[0], "2020-01-03T00-00-00Z.tar.gz");
        assert_eq!(kept.last().unwrap(), archive.file_name().unwrap());

        let out = root.join("extracted");
        fs::create_dir_all(&out).unwrap();
        extract(&archive, &out).unwrap();
        let mut expected = before.clone();
        expected.remove(".gitkeep");
        expected.remove("README.md");
        assert_eq!(tree(&out), expected);

        // Nothing left to archive, and a second run in the same second gets its own name.
        assert_eq!(archive_previous(&root).unwrap(), None);
        touch(&coverdata.join("gateway/covmeta.cc"), "meta-c");
        let second = archive_previous(&root).unwrap().unwrap();
        assert_ne!(second, archive);
        assert!(archive.exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn nothing_is_deleted_when_the_archive_cannot_be_written() {
        let root = scratch("archive-fails");
        let coverdata = root.join("coverdata");
        touch(&coverdata.join("gateway/covmeta.aa"), "meta-a");
        // A file where the archive directory should be makes the archive step fail.
        touch(&coverdata.join("archive"), "not a directory");
        let before = tree(&coverdata);
        let err = format!("{:#}", archive_previous(&root).unwrap_err());
        assert!(err.contains("nothing was deleted"), "{err}");
        assert_eq!(tree(&coverdata), before);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_missing_archive_says_where_the_archives_are() {
        let root = scratch("no-archive");
        let err = format!(
            "{:#}",
            dirs_from_archive(&root, &root.join("nope.tar.gz")).unwrap_err()
        );
        assert!(
            err.contains("nope.tar.gz not found") && err.contains("coverdata/archive"),
            "{err}"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn tables_show_every_number() {
        let rows = vec![
            (
                "gateway".to_string(),
                "example.com/m/cmd/gateway".to_string(),
                100.0,
            ),
            ("gateway".to_string(), "(total)".to_string(), 44.44),
        ];
        assert_eq!(
            table(&rows),
            "service  package                    coverage\n\
             gateway  example.com/m/cmd/gateway    100.0%\n\
             gateway  (total)                       44.4%\n"
        );
        let cov = Coverage {
            services: vec![
                ("gateway".to_string(), 44.4),
                ("datastorage".to_string(), 70.0),
            ],
            total: 60.0,
            profile: "target/coverage/e2e.out".into(),
        };
        let md = markdown_summary(&cov, Some((25.0, 63.6)), Some((65.0, 63.6)));
        assert!(
            md.contains("| gateway | 44.4% |\n| datastorage | 70.0% |\n"),
            "{md}"
        );
        assert!(
            md.contains("| **all services (merged)** | **60.0%** |"),
            "{md}"
        );
        assert!(md.contains("| total | 25.0% | 60.0% | 63.6% |"), "{md}");
        assert!(
            md.contains("Required: 65.0%, measured 63.6%: not met."),
            "{md}"
        );
        assert!(!markdown_summary(&cov, None, None).contains("unit"));
    }
}
