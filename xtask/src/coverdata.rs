//! `coverdata/<suite>/`, where a suite's instrumented services write their counters: prepared
//! before a coverage run (the previous run's data archived, never silently deleted), and
//! checked after it (every service left counters).

use std::{collections::BTreeMap, fs, io, time::SystemTime};

use anyhow::{bail, ensure, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::project;

/// The command that produces coverage data, named in every "no data" message.
pub const PRODUCER: &str = "cargo xtask e2e <suite> --coverage";

/// How many archived runs `archive_previous` keeps: the newest passed ones, and fewer of the
/// others (failed, or of unknown outcome), so failed runs never push a passed one out.
const KEEP_PASSED: usize = 5;
const KEEP_OTHERS: usize = 3;

/// Where `record_outcome` leaves the outcome (`passed` or `failed`) of the run whose data is in
/// coverdata/; the next run names the archive of that data after it: `<time>.<outcome>.tar.gz`,
/// `unknown` when none was recorded (the run was stopped hard).
const OUTCOME_FILE: &str = ".outcome";
const OUTCOMES: [&str; 3] = ["passed", "failed", "unknown"];

/// Archives the previous coverage run of the suite whose data is in `dir` and gives each of
/// its `services` an empty, writable directory there.
pub fn prepare(root: &Utf8Path, dir: &Utf8Path, services: &[&str]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let left = archive_previous(root, dir)?;
    if !left.is_empty() {
        let left = left.join(", ");
        println!(
            "    left in place in {} (not written by the services): {left}",
            display(root, dir)
        );
    }
    for name in services {
        let service_dir = dir.join(name);
        // Not ours (archive_previous left it in place), and where the service must write.
        if service_dir.symlink_metadata().is_ok_and(|meta| !meta.is_dir()) {
            let shown = display(root, &service_dir);
            bail!("{shown} is not a directory, but the {name} service writes its coverage counters there: move it out of {} and rerun", display(root, dir));
        }
        fs::create_dir_all(&service_dir)
            .map_err(|err| io_error(format!("creating {service_dir}"), err, dir))?;
        // The services run as an unprivileged user and must be able to write here.
        fs::set_permissions(&service_dir, fs::Permissions::from_mode(0o777))
            .with_context(|| format!("making {service_dir} writable for the services: check its owner (`ls -ld {service_dir}`)"))?;
    }
    Ok(())
}

/// Records whether the coverage run that wrote `dir` passed: see `OUTCOME_FILE`.
pub fn record_outcome(dir: &Utf8Path, passed: bool) -> Result<()> {
    let path = dir.join(OUTCOME_FILE);
    let outcome = if passed { "passed\n" } else { "failed\n" };
    fs::write(&path, outcome)
        .map_err(|err| io_error(format!("recording the run's outcome in {path}"), err, dir))
}

/// After a run stopped its services: a service whose directory holds no `covmeta.*` never
/// started in this run (`prepare` emptied the directory, and a coverage build writes its
/// meta-data file as it starts), so it has no counters. Names each, and whose were written.
pub fn check_started(root: &Utf8Path, data: &Utf8Path, services: &[&str]) -> Result<()> {
    let dir = |service: &str| data.join(service);
    let holds = |service: &str, prefix: &str| {
        let names = entries(&dir(service), |name| name.starts_with(prefix));
        names.is_ok_and(|names| !names.is_empty())
    };
    let (started, never): (Vec<&str>, Vec<&str>) =
        services.iter().partition(|service| holds(service, "covmeta."));
    if never.is_empty() {
        return Ok(());
    }
    let shown = |list: &[&str]| list.join(", ");
    let written: Vec<&str> =
        started.into_iter().filter(|service| holds(service, "covcounters.")).collect();
    let written = match written.is_empty() {
        true => String::new(),
        false => format!("; the counters of {} were written", shown(&written)),
    };
    let dirs = never.iter().map(|s| display(root, &dir(s))).collect::<Vec<_>>().join(", ");
    let (it, holds) = if never.len() == 1 { ("it", "holds") } else { ("they", "hold") };
    bail!(
        "no coverage counters of {}: {it} never started in this run ({dirs} {holds} no \
         covmeta.*, which a coverage build writes as it starts){written}: find why in the deploy \
         phase's error and rerun",
        shown(&never)
    )
}

/// A path as the user should see it: relative to the project root when below it.
pub fn display(root: &Utf8Path, path: &Utf8Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string()
}

/// Errors when any dir has covmeta.* but no covcounters.* (or no data at all), naming every
/// such dir.
pub fn check_counters(dirs: &[Utf8PathBuf]) -> Result<()> {
    let root = project::root();
    let problems: Vec<String> = dirs
        .iter()
        .filter_map(|dir| Some(format!("{}: {}", display(&root, dir), counter_problem(dir)?)))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    bail!("coverage data is missing or incomplete:\n  {}", problems.join("\n  "))
}

/// What is wrong with a GOCOVERDIR, if anything. A meta-data file is written when an
/// instrumented process starts, its counters (`covcounters.<meta hash>.<pid>.<nanos>`) only when
/// it exits normally, so a meta-data file without counters means a lost run.
fn counter_problem(dir: &Utf8Path) -> Option<String> {
    let not_a_directory = "is not a directory: coverage data is a directory of covmeta.* and \
                           covcounters.* files (read an archive with `--from-archive`)";
    let names: Vec<String> = match dir.read_dir_utf8() {
        Ok(list) => list.filter_map(|e| Some(e.ok()?.file_name().to_string())).collect(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Some(format!("does not exist: produce it with `{PRODUCER}`"))
        }
        Err(err) if err.kind() == io::ErrorKind::NotADirectory => {
            return Some(not_a_directory.to_string())
        }
        Err(err) => return Some(format!("cannot be read ({err}): fix its permissions")),
    };
    let hashes = |prefix: &str| -> Vec<&str> {
        names.iter().filter_map(|n| n.strip_prefix(prefix)).collect()
    };
    let (metas, counters) = (hashes("covmeta."), hashes("covcounters."));
    if metas.is_empty() {
        let problem = if counters.is_empty() {
            "no coverage data (no covmeta.* or covcounters.* files): produce it with"
        } else {
            "covcounters.* but no covmeta.* file: the directory is incomplete (copied in part?); \
             produce fresh data with"
        };
        return Some(format!("{problem} `{PRODUCER}`"));
    }
    let (finished, lost): (Vec<&str>, Vec<&str>) =
        metas.iter().partition(|hash| counters.iter().any(|c| c.split('.').next() == Some(hash)));
    let files = lost.iter().map(|h| format!("covmeta.{h}")).collect::<Vec<_>>().join(", ");
    if lost.is_empty() {
        None
    } else if finished.is_empty() {
        Some(format!(
            "{files} but no covcounters.* for it: the process never exited normally (killed, or still running): \
             stop it gracefully so the counters are written"
        ))
    } else {
        // The runs that finished here are of another build: the lone meta-data file is left
        // from a different binary (an older image, a copy), not from this run's processes.
        Some(format!(
            "{files} has no covcounters.*, while the runs that finished here are of another build \
             (covmeta.{}): it is data of a different build, not of a process of this run; \
             remove it, or start clean with a fresh `{PRODUCER}` (which archives the old data first)",
            finished.join(", covmeta.")
        ))
    }
}

/// The entries of `dir` whose names `keep` accepts, sorted; none when `dir` does not exist.
fn entries(dir: &Utf8Path, keep: impl Fn(&str) -> bool) -> Result<Vec<Utf8PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let list = dir.read_dir_utf8().and_then(|l| l.map(|e| Ok(e?.into_path())).collect());
    let mut list: Vec<Utf8PathBuf> = list.map_err(|err| {
        let fix = match err.kind() {
            io::ErrorKind::NotADirectory => {
                format!("{dir} is a file where the xtask keeps a directory: move it away and rerun")
            }
            io::ErrorKind::PermissionDenied => {
                format!("make {dir} readable for this user (`ls -ld {dir}` shows owner and mode)")
            }
            _ => format!("check {dir} (`ls -ld {dir}`)"),
        };
        anyhow::anyhow!("listing {dir}: {err}: {fix}")
    })?;
    list.retain(|e| e.file_name().is_some_and(&keep));
    list.sort();
    Ok(list)
}

/// The entries of a coverdata/-like directory that belong to a run: not `archive/`, dot files
/// or the README.md the repository tracks there.
fn run_entries(dir: &Utf8Path) -> Result<Vec<Utf8PathBuf>> {
    entries(dir, |n| n != "archive" && n != "README.md" && !n.starts_with('.'))
}

/// The service directories of a coverdata/-like directory: its run entries that are directories.
pub fn service_dirs(dir: &Utf8Path) -> Result<Vec<Utf8PathBuf>> {
    Ok(run_entries(dir)?.into_iter().filter(|entry| entry.is_dir()).collect())
}

/// Archives the previous run's data, the `covmeta.*` and `covcounters.*` files directly in
/// each `<dir>/<service>/`, into `<dir>/archive/<UTC time>.<outcome>.tar.gz`, prunes
/// the old archives, then removes the archived files. Everything else (a file of the user's,
/// a FIFO, a directory of their own) stays where it is and is returned, relative to coverdata/.
/// Nothing is deleted before the archive is written, read back and renamed into place.
fn archive_previous(root: &Utf8Path, coverdata: &Utf8Path) -> Result<Vec<String>> {
    let (files, left) = sort_out(coverdata)?;
    let outcome_file = coverdata.join(OUTCOME_FILE);
    if files.is_empty() {
        let _ = fs::remove_file(&outcome_file);
        return Ok(left);
    }
    let recorded = fs::read_to_string(&outcome_file).unwrap_or_default();
    let outcome = match recorded.trim() {
        outcome @ ("passed" | "failed") => outcome,
        _ => "unknown",
    };
    let archive_dir = coverdata.join("archive");
    let stamp = project::utc_timestamp(SystemTime::now());
    let mut archive = archive_dir.join(format!("{stamp}.{outcome}.tar.gz"));
    let mut n = 2;
    while archive.exists() {
        archive = archive_dir.join(format!("{stamp}-{n}.{outcome}.tar.gz"));
        n += 1;
    }
    let partial = archive_dir.join(format!(".{}.partial", archive.file_name().unwrap_or("")));
    if let Err(err) = write_archive(coverdata, &files, &partial) {
        let _ = fs::remove_file(&partial);
        return Err(err.context(format!(
            "archiving the previous coverage data into {archive} (nothing was deleted)"
        )));
    }
    let step = format!("renaming {partial} to {archive} (nothing was deleted)");
    fs::rename(&partial, &archive).map_err(|err| io_error(step, err, &archive_dir))?;
    let kept = format!("the newest {KEEP_PASSED} passed and {KEEP_OTHERS} other runs are kept");
    for old in prune(&archives(&archive_dir)?) {
        let step = format!("removing the old archive {old} ({kept})");
        fs::remove_file(old).map_err(|err| io_error(step, err, &archive_dir))?;
    }
    for (rel, _) in &files {
        let path = coverdata.join(rel);
        let dir = path.parent().unwrap_or(coverdata);
        let step = format!("removing {path} after archiving it into {archive}");
        fs::remove_file(&path).map_err(|err| io_error(step, err, dir))?;
        // A service directory emptied by the removal goes too (prepare makes it anew).
        let _ = fs::remove_dir(dir);
    }
    let _ = fs::remove_file(&outcome_file);
    println!("    previous coverage data archived to {}", display(root, &archive));
    Ok(left)
}

/// A failed file operation: the step, the cause and the fix for that cause. `dir` is the
/// directory whose permissions or disk the operation needed.
fn io_error(step: String, err: io::Error, dir: &Utf8Path) -> anyhow::Error {
    use io::ErrorKind::*;
    let fix = match err.kind() {
        PermissionDenied | ReadOnlyFilesystem => {
            format!("make {dir} writable for this user (`ls -ld {dir}` shows owner and mode)")
        }
        StorageFull | QuotaExceeded => format!("free disk space (`df -h {dir}`)"),
        AlreadyExists | NotADirectory => format!("something else is in the way in {dir}: move it"),
        _ => format!("check {dir}"),
    };
    anyhow::anyhow!("{step}: {err}: {fix}")
}

/// What the services wrote, as (path relative to coverdata/, size): the regular files named
/// `covmeta.*` or `covcounters.*` directly in a directory directly under coverdata/. And the
/// rest, which is not theirs, relative to coverdata/: directories with a slash, and anything
/// that is not a regular file (a FIFO, a socket, a link) says so.
#[allow(clippy::type_complexity)]
fn sort_out(coverdata: &Utf8Path) -> Result<(Vec<(Utf8PathBuf, u64)>, Vec<String>)> {
    let (mut files, mut left) = (Vec::new(), Vec::new());
    for entry in run_entries(coverdata)? {
        let in_dir = entry.symlink_metadata().is_ok_and(|m| m.is_dir());
        for path in if in_dir { entries(&entry, |_| true)? } else { vec![entry] } {
            let rel = path.strip_prefix(coverdata).unwrap_or(&path).to_path_buf();
            let name = path.file_name().unwrap_or("");
            let theirs =
                in_dir && (name.starts_with("covmeta.") || name.starts_with("covcounters."));
            match path.symlink_metadata() {
                Ok(meta) if theirs && meta.is_file() => files.push((rel, meta.len())),
                Ok(meta) if meta.is_dir() => left.push(format!("{rel}/")),
                Ok(meta) if meta.is_file() => left.push(rel.to_string()),
                _ => left.push(format!("{rel} (not a regular file)")),
            }
        }
    }
    Ok((files, left))
}

/// Writes `files` (relative to `base`) into the gzipped tar `dest`, then reads it back:
/// every file must be in it with its size.
fn write_archive(base: &Utf8Path, files: &[(Utf8PathBuf, u64)], dest: &Utf8Path) -> Result<()> {
    let dir = dest.parent().unwrap_or(base);
    fs::create_dir_all(dir).map_err(|err| io_error(format!("creating {dir}"), err, base))?;
    let write = || -> io::Result<()> {
        let gz = flate2::write::GzEncoder::new(fs::File::create(dest)?, Default::default());
        let mut builder = tar::Builder::new(gz);
        for (rel, _) in files {
            builder.append_path_with_name(base.join(rel), rel)?;
        }
        builder.into_inner()?.finish()?.sync_all()
    };
    write().map_err(|err| io_error(format!("writing {dest}"), err, dir))?;
    let reading = || format!("reading back {dest}: free disk space (`df -h {dir}`) and rerun");
    let file = fs::File::open(dest).with_context(reading)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = BTreeMap::new();
    for entry in archive.entries().with_context(reading)? {
        let entry = entry.with_context(reading)?;
        found.insert(entry.path().with_context(reading)?.into_owned(), entry.size());
    }
    // Only a run still writing into coverdata/ (or a failing disk) makes the copy differ.
    let rerun = "stop whatever still writes into coverdata/ and rerun";
    for (rel, size) in files {
        let s =
            found.get(rel.as_std_path()).with_context(|| format!("{dest} lacks {rel}: {rerun}"))?;
        ensure!(s == size, "{dest} holds {rel} with {s} bytes instead of {size}: {rerun}");
    }
    Ok(())
}

/// The archives in `dir`, oldest first. Names start with a timestamp, so their order is the
/// time order; comparing the time parts puts `<stamp>` before `<stamp>-2`.
pub fn archives(dir: &Utf8Path) -> Result<Vec<Utf8PathBuf>> {
    let mut list = entries(dir, |n| n.ends_with(".tar.gz") && !n.starts_with('.'))?;
    list.sort_by(|a, b| time_and_outcome(a).cmp(&time_and_outcome(b)));
    Ok(list)
}

/// `<time>.<outcome>.tar.gz` -> (time, outcome); `<time>.tar.gz`, named before outcomes were
/// recorded, -> (time, passed).
fn time_and_outcome(path: &Utf8Path) -> (&str, &str) {
    let stem = path.file_name().unwrap_or("").trim_end_matches(".tar.gz");
    match stem.rsplit_once('.') {
        Some((time, outcome)) if OUTCOMES.contains(&outcome) => (time, outcome),
        _ => (stem, "passed"),
    }
}

/// The archives to delete (`sorted` is oldest first): all but the newest `KEEP_PASSED` passed
/// runs and the newest `KEEP_OTHERS` others.
fn prune(sorted: &[Utf8PathBuf]) -> Vec<&Utf8PathBuf> {
    let (passed, others): (Vec<_>, Vec<_>) =
        sorted.iter().partition(|a| time_and_outcome(a).1 == "passed");
    let old_passed = passed.len().saturating_sub(KEEP_PASSED);
    let old_others = others.len().saturating_sub(KEEP_OTHERS);
    passed[..old_passed].iter().chain(&others[..old_others]).copied().collect()
}

/// Extracts a `.tar.gz` (what `archive_previous` writes) or a plain `.tar` into `dest`.
pub fn extract(archive: &Utf8Path, dest: &Utf8Path) -> Result<()> {
    use io::BufRead;
    let opening = || format!("opening {archive}: check that it is readable");
    let mut file = io::BufReader::new(fs::File::open(archive).with_context(opening)?);
    let gzipped = file.fill_buf().with_context(opening)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn io::Read> =
        if gzipped { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
    // `unpack` refuses entries that would land outside `dest`.
    tar::Archive::new(reader).unpack(dest).with_context(|| {
        format!(
            "extracting {archive}: it is damaged, or not a .tar.gz (or .tar) of coverage \
             directories as `{PRODUCER}` writes them to coverdata/archive/"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory below the system temp dir, unique per test and process.
    fn scratch(name: &str) -> Utf8PathBuf {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .unwrap()
            .join(format!("xtask-coverdata-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(path: &Utf8Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn check_counters_matches_counter_files_to_meta_data_and_names_every_bad_directory() {
        let tmp = scratch("check");
        for (file, content) in [
            ("good/covmeta.aa", "m"),
            ("good/covcounters.aa.1.2", "c"),
            ("killed/covmeta.bb", "m"),
            ("other-build/covmeta.aa", "m"),
            ("other-build/covcounters.aa.1.2", "c"),
            ("other-build/covmeta.bb", "m"),
            ("no-meta/covcounters.aa.1.2", "c"),
            ("empty/.keep", ""),
            ("a-file", "mine"),
        ] {
            touch(&tmp.join(file), content);
        }
        let dirs: Vec<Utf8PathBuf> =
            ["good", "killed", "other-build", "no-meta", "empty", "missing", "a-file"]
                .iter()
                .map(|d| tmp.join(d))
                .collect();
        assert!(check_counters(&dirs[..1]).is_ok());
        let err = format!("{:#}", check_counters(&dirs).unwrap_err());
        expect_test::expect![[r#"
            coverage data is missing or incomplete:
              TMP/killed: covmeta.bb but no covcounters.* for it: the process never exited normally (killed, or still running): stop it gracefully so the counters are written
              TMP/other-build: covmeta.bb has no covcounters.*, while the runs that finished here are of another build (covmeta.aa): it is data of a different build, not of a process of this run; remove it, or start clean with a fresh `cargo xtask e2e <suite> --coverage` (which archives the old data first)
              TMP/no-meta: covcounters.* but no covmeta.* file: the directory is incomplete (copied in part?); produce fresh data with `cargo xtask e2e <suite> --coverage`
              TMP/empty: no coverage data (no covmeta.* or covcounters.* files): produce it with `cargo xtask e2e <suite> --coverage`
              TMP/missing: does not exist: produce it with `cargo xtask e2e <suite> --coverage`
              TMP/a-file: is not a directory: coverage data is a directory of covmeta.* and covcounters.* files (read an archive with `--from-archive`)"#]]
        .assert_eq(&err.replace(tmp.as_str(), "TMP"));
        fs::remove_dir_all(tmp).unwrap();
    }

    #[test]
    fn archives_sort_by_time_and_failed_runs_never_push_passed_ones_out() {
        let tmp = scratch("sort");
        let mut names: Vec<String> = [
            "2023-12-31T23-59-59Z.tar.gz", // before outcomes were recorded: passed
            "2024-01-02T00-00-00Z.failed.tar.gz",
            "2024-01-02T00-00-00Z-2.passed.tar.gz",
            "2024-01-01T00-00-00Z.unknown.tar.gz",
            "notes.txt",
            ".2024-01-03T00-00-00Z.tar.gz.partial",
        ]
        .map(String::from)
        .to_vec();
        names.extend((3..=9).map(|day| format!("2024-01-0{day}T00-00-00Z.failed.tar.gz")));
        for name in names {
            touch(&tmp.join(name), "");
        }
        let list = archives(&tmp).unwrap();
        let sorted: Vec<&str> = list.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(
            sorted[..4],
            [
                "2023-12-31T23-59-59Z.tar.gz",
                "2024-01-01T00-00-00Z.unknown.tar.gz",
                "2024-01-02T00-00-00Z.failed.tar.gz",
                "2024-01-02T00-00-00Z-2.passed.tar.gz",
            ]
        );
        assert_eq!(sorted.len(), 11);
        // Nine failed or unknown after two passed: the two passed stay, the newest three others.
        let pruned: Vec<&str> = prune(&list).iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(
            pruned,
            [
                "2024-01-01T00-00-00Z.unknown.tar.gz",
                "2024-01-02T00-00-00Z.failed.tar.gz",
                "2024-01-03T00-00-00Z.failed.tar.gz",
                "2024-01-04T00-00-00Z.failed.tar.gz",
                "2024-01-05T00-00-00Z.failed.tar.gz",
                "2024-01-06T00-00-00Z.failed.tar.gz",
            ]
        );
        fs::remove_dir_all(tmp).unwrap();
    }

    /// Every file below `dir` with its content, by path relative to `dir`.
    fn tree(dir: &Utf8Path) -> BTreeMap<String, String> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let path = Utf8Path::from_path(e.path()).unwrap();
                let rel = path.strip_prefix(dir).unwrap().to_string();
                (rel, String::from_utf8_lossy(&fs::read(path).unwrap()).into_owned())
            })
            .collect()
    }

    #[test]
    fn only_what_the_services_wrote_is_archived_and_removed_under_its_outcome() {
        let root = scratch("archive");
        let coverdata = root.join("coverdata");
        for (file, content) in [
            (".gitkeep", ""),
            ("README.md", "tracked"),
            ("gateway/covmeta.aa", "meta-a"),
            ("gateway/covcounters.aa.1.2", "counters-a"),
            ("gateway/notes.txt", "mine"),
            ("datastorage/covmeta.bb", "meta-b"),
            ("datastorage/covcounters.bb.3.4", "counters-b"),
            ("datastorage/nested/covcounters.bb.5.6", "nested"),
            ("loose.txt", "loose"),
        ] {
            touch(&coverdata.join(file), content);
        }
        let fifo = coverdata.join("gateway/covcounters.aa.7.8");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo {fifo}");
        for day in 1..=6 {
            touch(&coverdata.join(format!("archive/2020-01-0{day}T00-00-00Z.tar.gz")), "old");
        }
        record_outcome(&coverdata, true).unwrap();
        let before = tree(&coverdata);
        // Archives the data and returns what it left and the new archive, if any.
        let archive_once = || {
            let before = archives(&coverdata.join("archive")).unwrap();
            let left = archive_previous(&root, &coverdata).unwrap();
            let after = archives(&coverdata.join("archive")).unwrap();
            (left, after.into_iter().find(|a| !before.contains(a)))
        };

        let (left, archive) = archive_once();
        let archive = archive.expect("there was data to archive");
        assert!(archive.as_str().ends_with(".passed.tar.gz"), "{archive}");
        assert_eq!(
            left,
            [
                "datastorage/nested/",
                "gateway/covcounters.aa.7.8 (not a regular file)",
                "gateway/notes.txt",
                "loose.txt",
            ]
        );
        let not_archived: Vec<String> =
            tree(&coverdata).into_keys().filter(|k| !k.starts_with("archive/")).collect();
        assert_eq!(
            not_archived,
            [
                ".gitkeep",
                "README.md",
                "datastorage/nested/covcounters.bb.5.6",
                "gateway/notes.txt",
                "loose.txt"
            ]
        );
        assert!(fifo.symlink_metadata().is_ok(), "the FIFO stays");
        let kept = archives(&coverdata.join("archive")).unwrap();
        assert_eq!(kept.len(), KEEP_PASSED, "{kept:?}");
        assert_eq!(kept[0].file_name(), Some("2020-01-03T00-00-00Z.tar.gz"));
        assert!(kept.contains(&archive), "{kept:?}");

        let out = root.join("extracted");
        fs::create_dir_all(&out).unwrap();
        extract(&archive, &out).unwrap();
        let archived: Vec<(String, String)> = tree(&out).into_iter().collect();
        let expected: Vec<(String, String)> = before
            .into_iter()
            .filter(|(k, _)| k.contains("/cov") && !k.contains("nested"))
            .collect();
        assert_eq!(archived, expected);

        // Nothing left to archive; data without a recorded outcome is archived as unknown, and
        // a second run in the same second gets its own name.
        assert_eq!(archive_once().1, None);
        touch(&coverdata.join("gateway/covmeta.cc"), "meta-c");
        let unknown = archive_once().1.unwrap();
        assert!(unknown.as_str().ends_with(".unknown.tar.gz"), "{unknown}");
        touch(&coverdata.join("gateway/covmeta.dd"), "meta-d");
        record_outcome(&coverdata, false).unwrap();
        let failed = archive_once().1.unwrap();
        assert!(failed.as_str().ends_with(".failed.tar.gz"), "{failed}");
        touch(&coverdata.join("gateway/covmeta.ee"), "meta-e");
        let again = archive_once().1.unwrap();
        assert_ne!(again, unknown);
        assert!(archive.exists() && unknown.exists() && failed.exists());
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
        let err = format!("{:#}", archive_previous(&root, &coverdata).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "archiving the previous coverage data into {coverdata}/archive/"
            )) && err.contains(&format!(
                ".unknown.tar.gz (nothing was deleted): creating {coverdata}/archive: "
            )) && err.ends_with(&format!("something else is in the way in {coverdata}: move it")),
            "{err}"
        );
        assert_eq!(tree(&coverdata), before);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_named_with_the_fix_that_fixes_it() {
        let root = scratch("in-the-way");
        let coverdata = root.join("coverdata");
        touch(&coverdata.join("gateway"), "mine");
        let services = ["datastorage", "gateway"];
        let err = format!("{:#}", prepare(&root, &coverdata, &services).unwrap_err());
        assert_eq!(
            err,
            "coverdata/gateway is not a directory, but the gateway service writes its coverage \
             counters there: move it out of coverdata and rerun"
        );
        assert_eq!(fs::read_to_string(coverdata.join("gateway")).unwrap(), "mine");

        fs::remove_dir_all(&coverdata).unwrap();
        touch(&coverdata, "mine");
        let err = format!("{:#}", prepare(&root, &coverdata, &services).unwrap_err());
        assert_eq!(
            err,
            format!(
                "listing {coverdata}: Not a directory (os error 20): {coverdata} is a file where \
                 the xtask keeps a directory: move it away and rerun"
            )
        );
        assert_eq!(fs::read_to_string(&coverdata).unwrap(), "mine");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn file_errors_name_the_cause_and_its_fix() {
        use std::io::{Error, ErrorKind};
        let dir = Utf8Path::new("coverdata/archive");
        let message = |kind| format!("{}", io_error("writing x".into(), Error::from(kind), dir));
        assert_eq!(
            message(ErrorKind::PermissionDenied),
            "writing x: permission denied: make coverdata/archive writable for this user \
             (`ls -ld coverdata/archive` shows owner and mode)"
        );
        assert!(message(ErrorKind::ReadOnlyFilesystem).contains("make coverdata/archive writable"));
        assert!(message(ErrorKind::StorageFull)
            .ends_with("free disk space (`df -h coverdata/archive`)"));
        assert!(message(ErrorKind::Other).ends_with(": check coverdata/archive"));
    }
}
