//! `coverdata/`, where the instrumented services write their counters: prepared before a
//! coverage run (the previous run's data archived, never silently deleted), and checked after
//! it (every service left counters).

use std::{collections::BTreeMap, fs, time::SystemTime};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

use crate::project::{self, Service};

/// The command that produces coverage data, named in every "no data" message.
pub const PRODUCER: &str = "cargo xtask e2e-gateway --coverage";

/// Archives the previous coverage run and gives each service an empty, writable directory.
pub fn prepare(root: &Utf8Path, services: &[Service]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = project::coverdata_dir(root);
    fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
    let (archive, left) = archive_previous(root)?;
    if let Some(archive) = archive {
        println!("    previous coverage data archived to {}", display(root, &archive));
    }
    if !left.is_empty() {
        println!(
            "    left in place in {} (not written by the services): {}",
            display(root, &dir),
            left.join(", ")
        );
    }
    for service in services {
        let service_dir = dir.join(service.name);
        fs::create_dir_all(&service_dir).with_context(|| format!("creating {service_dir}"))?;
        // The services run as an unprivileged user and must be able to write here.
        fs::set_permissions(&service_dir, fs::Permissions::from_mode(0o777))
            .with_context(|| format!("making {service_dir} writable"))?;
    }
    Ok(())
}

/// Records whether the coverage run that wrote coverdata/ passed; the next run names the
/// archive of this data after it, and keeps passed runs longer than failed ones.
pub fn record_outcome(root: &Utf8Path, passed: bool) -> anyhow::Result<()> {
    let path = project::coverdata_dir(root).join(OUTCOME_FILE);
    let outcome = if passed { PASSED } else { FAILED };
    fs::write(&path, format!("{outcome}\n")).map_err(|err| {
        io_error(
            format!("recording the run's outcome in {path}"),
            err,
            &project::coverdata_dir(root),
        )
    })
}

/// A path as the user should see it: relative to the project root when below it.
pub fn display(root: &Utf8Path, path: &Utf8Path) -> String {
    path.strip_prefix(root).map(|p| p.to_string()).unwrap_or_else(|_| path.to_string())
}

/// How many archived runs `archive_previous` keeps: the newest passed ones, and fewer of the
/// others (failed, or of unknown outcome), so failed runs never push a passed one out.
const KEEP_PASSED: usize = 5;
const KEEP_OTHERS: usize = 3;

/// Where `record_outcome` leaves the outcome of the run whose data is in coverdata/, and the
/// outcomes an archive name carries (`<time>.<outcome>.tar.gz`). Archives named before outcomes
/// were recorded (`<time>.tar.gz`) count as passed; data without a recorded outcome (the run was
/// stopped hard) is archived as unknown.
const OUTCOME_FILE: &str = ".outcome";
const PASSED: &str = "passed";
const FAILED: &str = "failed";
const UNKNOWN: &str = "unknown";

/// Files in `coverdata/` that belong to the repository, not to a run: never archived or removed.
const TRACKED: [&str; 1] = ["README.md"];

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
                problems.push(format!("{dir}: does not exist: produce it with `{PRODUCER}`"));
                continue;
            }
            Err(err) => {
                problems.push(format!("{dir}: cannot be read ({err}): fix its permissions"));
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
    bail!("coverage data is missing or incomplete:\n  {}", problems.join("\n  "))
}

/// What is wrong with a GOCOVERDIR holding these file names, if anything. Counter files are
/// named `covcounters.<meta hash>.<pid>.<nanos>`, so each meta-data file can be matched to the
/// runs that finished.
fn counter_problem(names: &[String]) -> Option<String> {
    let metas: Vec<&str> = names.iter().filter_map(|n| n.strip_prefix("covmeta.")).collect();
    let counters: Vec<&str> = names.iter().filter_map(|n| n.strip_prefix("covcounters.")).collect();
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
    let (finished, lost): (Vec<&str>, Vec<&str>) =
        metas.iter().partition(|hash| counters.iter().any(|c| c.split('.').next() == Some(**hash)));
    if lost.is_empty() {
        return None;
    }
    let files = lost.iter().map(|h| format!("covmeta.{h}")).collect::<Vec<_>>().join(", ");
    if finished.is_empty() {
        return Some(format!(
            "{files} but no covcounters.* for it: the process never exited normally (killed, or still running): \
             stop it gracefully so the counters are written"
        ));
    }
    // The runs that finished here are of another build: the lone meta-data file is left from a
    // different binary (an older image, a copy), not from this run's processes.
    Some(format!(
        "{files} has no covcounters.*, while the runs that finished here are of another build \
         (covmeta.{}): it is data of a different build, not of a process of this run; \
         remove it, or start clean with a fresh `{PRODUCER}` (which archives the old data first)",
        finished.join(", covmeta.")
    ))
}

/// The service directories of a coverdata/-like directory: its run entries that are directories.
pub fn service_dirs(parent: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut dirs = top_level_entries(parent)?;
    dirs.retain(|entry| entry.is_dir());
    Ok(dirs)
}

pub fn listing_error(dir: &Utf8Path) -> String {
    format!("listing {dir}: check that it is readable (`ls -ld {dir}`)")
}

/// Extracts a `.tar.gz` (what `archive_previous` writes) or a plain `.tar` into `dest`.
pub fn extract(archive: &Utf8Path, dest: &Utf8Path) -> anyhow::Result<()> {
    use std::io::{Read, Seek};
    let opening = || format!("opening {archive}: check that it is readable");
    let mut file = fs::File::open(archive).with_context(opening)?;
    let mut magic = [0; 2];
    let gzipped = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    file.rewind().with_context(opening)?;
    let reader: Box<dyn Read> =
        if gzipped { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
    // `unpack` refuses entries that would land outside `dest`.
    tar::Archive::new(reader).unpack(dest).with_context(|| {
        format!(
            "extracting {archive}: it is damaged, or not a .tar.gz (or .tar) of coverage \
             directories as `{PRODUCER}` writes them to coverdata/archive/"
        )
    })
}

/// Archives the previous run's data, the `covmeta.*` and `covcounters.*` files directly in
/// each `coverdata/<service>/`, into `coverdata/archive/<UTC time>.<outcome>.tar.gz`, prunes
/// the old archives, then removes the archived files. Everything else (a file of the user's,
/// a FIFO, a directory of their own) stays where it is and is returned, relative to coverdata/.
/// Nothing is deleted before the archive is written, read back and renamed into place.
pub fn archive_previous(root: &Utf8Path) -> anyhow::Result<(Option<Utf8PathBuf>, Vec<String>)> {
    let coverdata = project::coverdata_dir(root);
    let (files, left) = sort_out(&coverdata)?;
    let outcome_file = coverdata.join(OUTCOME_FILE);
    if files.is_empty() {
        let _ = fs::remove_file(&outcome_file);
        return Ok((None, left));
    }
    let outcome = match fs::read_to_string(&outcome_file) {
        Ok(text) if text.trim() == PASSED => PASSED,
        Ok(text) if text.trim() == FAILED => FAILED,
        _ => UNKNOWN,
    };
    let archive_dir = coverdata.join("archive");
    let stamp = project::utc_timestamp(SystemTime::now());
    let mut archive = archive_dir.join(format!("{stamp}.{outcome}.tar.gz"));
    let mut n = 2;
    while archive.exists() {
        archive = archive_dir.join(format!("{stamp}-{n}.{outcome}.tar.gz"));
        n += 1;
    }
    let partial =
        archive_dir.join(format!(".{}.partial", archive.file_name().unwrap_or("archive")));
    let written = fs::create_dir_all(&archive_dir)
        .map_err(|err| io_error(format!("creating {archive_dir}"), err, &coverdata))
        .and_then(|()| {
            write_archive(&coverdata, &files, &partial)
                .map_err(|err| io_error(format!("writing {partial}"), err, &archive_dir))
        })
        .and_then(|()| verify_archive(&partial, &files));
    if let Err(err) = written {
        let _ = fs::remove_file(&partial);
        return Err(err.context(format!(
            "archiving the previous coverage data into {archive} (nothing was deleted)"
        )));
    }
    fs::rename(&partial, &archive).map_err(|err| {
        io_error(
            format!("renaming {partial} to {archive} (nothing was deleted)"),
            err,
            &archive_dir,
        )
    })?;

    for old in prune(&archives(&archive_dir)?) {
        fs::remove_file(old).map_err(|err| {
            io_error(
                format!("removing the old archive {old} (the newest {KEEP_PASSED} passed and {KEEP_OTHERS} other runs are kept)"),
                err,
                &archive_dir,
            )
        })?;
    }
    for (rel, _) in &files {
        let path = coverdata.join(rel);
        let dir = path.parent().unwrap_or(&coverdata);
        fs::remove_file(&path).map_err(|err| {
            io_error(format!("removing {path} after archiving it into {archive}"), err, dir)
        })?;
        // A service directory emptied by the removal goes too (prepare makes it anew).
        let _ = fs::remove_dir(dir);
    }
    let _ = fs::remove_file(&outcome_file);
    Ok((Some(archive), left))
}

/// A failed file operation: the step, the cause and the fix for that cause. `dir` is the
/// directory whose permissions or disk the operation needed.
fn io_error(step: String, err: std::io::Error, dir: &Utf8Path) -> anyhow::Error {
    use std::io::ErrorKind::*;
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

/// Top-level entries of `coverdata/` that belong to a run.
fn top_level_entries(coverdata: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut entries = listing(coverdata, |name| {
        name != "archive" && !name.starts_with('.') && !TRACKED.contains(&name)
    })?;
    entries.sort();
    Ok(entries)
}

/// The entries of `dir` whose names `keep` accepts; none when `dir` does not exist.
fn listing(dir: &Utf8Path, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let list = match dir.read_dir_utf8() {
        Ok(list) => list,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| listing_error(dir)),
    };
    let mut entries = Vec::new();
    for entry in list {
        let entry = entry.with_context(|| listing_error(dir))?;
        if keep(entry.file_name()) {
            entries.push(entry.into_path());
        }
    }
    Ok(entries)
}

/// What the services wrote, as (path relative to coverdata/, size): the regular files named
/// `covmeta.*` or `covcounters.*` directly in a directory directly under coverdata/. And the
/// rest, which is not theirs, relative to coverdata/.
#[allow(clippy::type_complexity)]
fn sort_out(coverdata: &Utf8Path) -> anyhow::Result<(Vec<(Utf8PathBuf, u64)>, Vec<String>)> {
    let (mut files, mut left) = (Vec::new(), Vec::new());
    let rel = |path: &Utf8Path| path.strip_prefix(coverdata).unwrap_or(path).to_path_buf();
    for entry in top_level_entries(coverdata)? {
        let is_dir = entry.symlink_metadata().is_ok_and(|m| m.is_dir());
        if !is_dir {
            left.push(leftover(&rel(&entry), &entry));
            continue;
        }
        let mut items: Vec<_> = entry
            .read_dir_utf8()
            .with_context(|| listing_error(&entry))?
            .map(|item| item.map(|i| i.into_path()))
            .collect::<Result<_, _>>()
            .with_context(|| listing_error(&entry))?;
        items.sort();
        for path in items {
            let name = path.file_name().unwrap_or("");
            let meta = path.symlink_metadata();
            let theirs = name.starts_with("covmeta.") || name.starts_with("covcounters.");
            match meta {
                Ok(meta) if theirs && meta.is_file() => files.push((rel(&path), meta.len())),
                _ => left.push(leftover(&rel(&path), &path)),
            }
        }
    }
    Ok((files, left))
}

/// How a path left in coverdata/ is named: directories with a slash, anything that is not a
/// regular file (a FIFO, a socket, a link) says so.
fn leftover(rel: &Utf8Path, path: &Utf8Path) -> String {
    match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => format!("{rel}/"),
        Ok(meta) if meta.is_file() => rel.to_string(),
        _ => format!("{rel} (not a regular file)"),
    }
}

fn write_archive(
    coverdata: &Utf8Path,
    files: &[(Utf8PathBuf, u64)],
    dest: &Utf8Path,
) -> std::io::Result<()> {
    let file = fs::File::create(dest)?;
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::default()));
    for (rel, _) in files {
        builder.append_path_with_name(coverdata.join(rel), rel)?;
    }
    builder.into_inner()?.finish()?.sync_all()
}

/// Reads the archive back: every file must be in it with its size.
fn verify_archive(archive: &Utf8Path, files: &[(Utf8PathBuf, u64)]) -> anyhow::Result<()> {
    let file = fs::File::open(archive).with_context(|| format!("opening {archive}"))?;
    let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = BTreeMap::new();
    for entry in reader.entries().with_context(|| format!("reading back {archive}"))? {
        let entry = entry.with_context(|| format!("reading back {archive}"))?;
        let path = entry.path().with_context(|| format!("reading back {archive}"))?.into_owned();
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

/// The archives in `dir`, oldest first. Names start with a timestamp, so their order is the
/// time order; comparing the time parts puts `<stamp>` before `<stamp>-2`.
pub fn archives(dir: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut list = listing(dir, |name| name.ends_with(".tar.gz") && !name.starts_with('.'))?;
    list.sort_by(|a, b| time_and_outcome(a).cmp(&time_and_outcome(b)));
    Ok(list)
}

/// `<time>.<outcome>.tar.gz` -> (time, outcome); `<time>.tar.gz`, named before outcomes were
/// recorded, -> (time, passed).
fn time_and_outcome(path: &Utf8Path) -> (&str, &str) {
    let stem = path.file_name().unwrap_or("").trim_end_matches(".tar.gz");
    match stem.rsplit_once('.') {
        Some((time, outcome)) if [PASSED, FAILED, UNKNOWN].contains(&outcome) => (time, outcome),
        _ => (stem, PASSED),
    }
}

/// The archives to delete (`sorted` is oldest first): all but the newest `KEEP_PASSED` passed
/// runs and the newest `KEEP_OTHERS` others.
fn prune<'a>(sorted: &'a [Utf8PathBuf]) -> Vec<&'a Utf8PathBuf> {
    let (passed, others): (Vec<&Utf8PathBuf>, Vec<_>) =
        sorted.iter().partition(|a| time_and_outcome(a).1 == PASSED);
    let old = |list: Vec<&'a Utf8PathBuf>, keep: usize| {
        let n = list.len().saturating_sub(keep);
        list.into_iter().take(n)
    };
    old(passed, KEEP_PASSED).chain(old(others, KEEP_OTHERS)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory below the system temp dir, unique per test and process.
    fn scratch(name: &str) -> Utf8PathBuf {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .unwrap()
            .join(format!("xtask-covdata-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(path: &Utf8Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counter_files_are_matched_to_their_meta_data_file() {
        assert_eq!(counter_problem(&names(&["covmeta.aa", "covcounters.aa.12.345"])), None);
        let killed = counter_problem(&names(&["covmeta.aa"])).unwrap();
        assert!(killed.contains("covmeta.aa but no covcounters.*"), "{killed}");
        assert!(killed.contains(
            "the process never exited normally (killed, or still running): stop it gracefully so the counters are written"
        ));
        // Beside finished runs of another build, a lone meta-data file is of a different build.
        let other_build =
            counter_problem(&names(&["covmeta.aa", "covcounters.aa.1.2", "covmeta.bb"])).unwrap();
        assert_eq!(
            other_build,
            "covmeta.bb has no covcounters.*, while the runs that finished here are of another build \
             (covmeta.aa): it is data of a different build, not of a process of this run; remove it, \
             or start clean with a fresh `cargo xtask e2e-gateway --coverage` (which archives the old \
             data first)"
        );
        let empty = counter_problem(&names(&[".keep"])).unwrap();
        assert!(empty.contains("no coverage data") && empty.contains(PRODUCER), "{empty}");
        let no_meta = counter_problem(&names(&["covcounters.aa.1.2"])).unwrap();
        assert!(no_meta.contains("no covmeta.*"), "{no_meta}");
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
        assert!(err.contains(&format!("{tmp}/empty: no coverage data")), "{err}");
        assert!(
            err.contains(&format!("{tmp}/missing: does not exist: produce it with `{PRODUCER}`")),
            "{err}"
        );
        assert!(check_counters(&dirs[..1]).is_ok());
        fs::remove_dir_all(tmp).unwrap();
    }

    #[test]
    fn archives_sort_by_time_and_failed_runs_never_push_passed_ones_out() {
        let tmp = scratch("sort");
        let mut names = names(&[
            "2023-12-31T23-59-59Z.tar.gz", // before outcomes were recorded: passed
            "2024-01-02T00-00-00Z.failed.tar.gz",
            "2024-01-02T00-00-00Z-2.passed.tar.gz",
            "2024-01-01T00-00-00Z.unknown.tar.gz",
            "notes.txt",
            ".2024-01-03T00-00-00Z.tar.gz.partial",
        ]);
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
        touch(&coverdata.join(".gitkeep"), "");
        touch(&coverdata.join("README.md"), "tracked");
        touch(&coverdata.join("gateway/covmeta.aa"), "meta-a");
        touch(&coverdata.join("gateway/covcounters.aa.1.2"), "counters-a");
        touch(&coverdata.join("gateway/notes.txt"), "mine");
        touch(&coverdata.join("datastorage/covmeta.bb"), "meta-b");
        touch(&coverdata.join("datastorage/covcounters.bb.3.4"), "counters-b");
        touch(&coverdata.join("datastorage/nested/covcounters.bb.5.6"), "nested");
        touch(&coverdata.join("loose.txt"), "loose");
        let fifo = coverdata.join("gateway/covcounters.aa.7.8");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo {fifo}");
        for day in 1..=6 {
            touch(&coverdata.join(format!("archive/2020-01-0{day}T00-00-00Z.tar.gz")), "old");
        }
        record_outcome(&root, true).unwrap();
        let before = tree(&coverdata);

        let (archive, left) = archive_previous(&root).unwrap();
        let archive = archive.expect("there was data to archive");

        assert!(archive.starts_with(coverdata.join("archive")));
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
        assert_eq!(kept.last(), Some(&archive));

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
        assert_eq!(archive_previous(&root).unwrap().0, None);
        touch(&coverdata.join("gateway/covmeta.cc"), "meta-c");
        let unknown = archive_previous(&root).unwrap().0.unwrap();
        assert!(unknown.as_str().ends_with(".unknown.tar.gz"), "{unknown}");
        touch(&coverdata.join("gateway/covmeta.dd"), "meta-d");
        record_outcome(&root, false).unwrap();
        let failed = archive_previous(&root).unwrap().0.unwrap();
        assert!(failed.as_str().ends_with(".failed.tar.gz"), "{failed}");
        touch(&coverdata.join("gateway/covmeta.ee"), "meta-e");
        let again = archive_previous(&root).unwrap().0.unwrap();
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
        let err = format!("{:#}", archive_previous(&root).unwrap_err());
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
