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
    if let Some(archive) = archive_previous(root)? {
        println!("    previous coverage data archived to {archive}");
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

/// A path as the user should see it: relative to the project root when below it.
pub fn display(root: &Utf8Path, path: &Utf8Path) -> String {
    path.strip_prefix(root)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| path.to_string())
}

/// How many archived runs `archive_previous` keeps.
const KEEP_ARCHIVES: usize = 5;

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
    let (finished, lost): (Vec<&str>, Vec<&str>) = metas
        .iter()
        .partition(|hash| counters.iter().any(|c| c.split('.').next() == Some(**hash)));
    if lost.is_empty() {
        return None;
    }
    let files = lost
        .iter()
        .map(|h| format!("covmeta.{h}"))
        .collect::<Vec<_>>()
        .join(", ");
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
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    // `unpack` refuses entries that would land outside `dest`.
    tar::Archive::new(reader).unpack(dest).with_context(|| {
        format!(
            "extracting {archive}: it is damaged, or not a .tar.gz (or .tar) of coverage \
             directories as `{PRODUCER}` writes them to coverdata/archive/"
        )
    })
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
pub fn archives(dir: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
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
        assert!(
            empty.contains("no coverage data") && empty.contains(PRODUCER),
            "{empty}"
        );
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
}
