//! One live run per cluster name on this machine. Pods, networks and clusters are named after
//! `--cluster-name`, so two runs of one name would remove each other's services; the lock makes
//! the second wait for nobody and say who holds the name instead. It is the one file the xtask
//! writes outside the project: it must be seen by every checkout on the machine. Released, it is
//! removed (a run that crashed leaves it, and the next run of the name takes it over).

use std::{
    fs::{File, TryLockError},
    io::Write,
    os::unix::fs::MetadataExt,
    time::SystemTime,
};

use sha2::Digest;

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

use crate::project;

/// The label that ties what a run creates (the podman backend's pods and network) to its
/// cluster name, whose lock says whether that run is still alive.
pub const LABEL: &str = "e2e.xtask/cluster";

/// Held while the run lives; the kernel releases it when the process exits, even on a crash.
/// Dropped, it removes its files.
#[derive(Debug)]
pub struct Lock {
    _held: Vec<Held>,
}

/// One locked file, removed when dropped.
#[derive(Debug)]
struct Held {
    path: Utf8PathBuf,
    _file: File,
}

impl Drop for Held {
    /// Removed while still locked (the file is closed after this): a run that opened it
    /// meanwhile gets the lock once we close it, and then finds that the path no longer names
    /// the file it locked (see `take`).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What to do when a live run holds the cluster name.
pub const RUN_BESIDE: &str = "wait for it to finish, or run beside it with `--cluster-name <another name>` and other free host ports (`<NAME>_HOST_PORT`)";

/// Where the lock of `name` lives: the system's temporary directory, shared by every checkout.
pub fn path(name: &str) -> Utf8PathBuf {
    let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap_or_else(|_| "/tmp".into());
    dir.join(format!("xtask-e2e-{name}.lock"))
}

/// Takes the lock of the cluster `name` for this run of the checkout at `root`, and with
/// `coverage` (a suite's name) that suite's `coverdata/<suite>/` too (its services write there
/// whatever their cluster name); or says who holds what.
pub fn acquire(name: &str, root: &Utf8Path, coverage: Option<&str>) -> anyhow::Result<Lock> {
    let what = format!("another e2e run is using the cluster name {name}");
    let mut files = vec![take(&path(name), root, &what, RUN_BESIDE)?];
    if let Some(suite) = coverage {
        let checkout = &project::hex(&sha2::Sha256::digest(root.as_str()))[..12];
        let what =
            format!("another `e2e {suite} --coverage` run of this checkout is writing {root}/coverdata/{suite}");
        let fix = "wait for it to finish, or run this one without --coverage or from another clone";
        files.push(take(&path(&format!("coverdata-{checkout}-{suite}")), root, &what, fix)?);
    }
    Ok(Lock { _held: files })
}

/// Who holds the cluster name `name` (`pid .., checkout .., since ..`), if a live run does.
/// Only looks: it takes a shared lock for an instant, so a run starting in that very instant
/// is refused as if the name were taken (it says so; rerun it).
pub fn holder(name: &str) -> Option<String> {
    let path = path(name);
    // A live run's file is there: it is removed only as its run lets go.
    let file = File::open(&path).ok()?;
    match file.try_lock_shared() {
        Err(TryLockError::WouldBlock) => Some(written_holder(&path)),
        // Free (a crashed run's file), or a file that cannot be locked: nobody to name.
        _ => None,
    }
}

/// Whose something is, by the value of its `LABEL` (None: it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No e2e run made it (or an xtask from before the label).
    Unknown,
    /// The run of this cluster name lives: what it has is never touched.
    Live { name: String, holder: String },
    /// The run of this cluster name is over.
    Gone { name: String },
}

pub fn owner(label: Option<&str>) -> Owner {
    let Some(name) = label.filter(|l| !l.is_empty()) else {
        return Owner::Unknown;
    };
    let name = name.to_string();
    match holder(&name) {
        Some(holder) => Owner::Live { name, holder },
        None => Owner::Gone { name },
    }
}

/// Said after what it owns: "the pod P {owner}".
impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Unknown => {
                write!(f, "has no label {LABEL} (an e2e run labels everything it creates)")
            }
            Owner::Live { name, holder } => {
                write!(f, "belongs to the live e2e run of the cluster name {name} ({holder})")
            }
            Owner::Gone { name } => {
                write!(f, "was left by an e2e run of the cluster name {name}, which is over")
            }
        }
    }
}

/// What the holder of the lock at `path` wrote of itself, on one line.
fn written_holder(path: &Utf8Path) -> String {
    let holder = std::fs::read_to_string(path).unwrap_or_default();
    match holder.trim() {
        "" => "a run that is just starting".to_string(),
        holder => holder.replace('\n', ", "),
    }
}

/// Locks the file at `path` and writes who holds it; when another holds it, says `what` that
/// means, who it is, and the `fix`.
fn take(path: &Utf8Path, root: &Utf8Path, what: &str, fix: &str) -> anyhow::Result<Held> {
    let opening = || {
        format!("opening the lock {path}: make it writable for this user, or remove it (no run holds a lock file it cannot open)")
    };
    // Again when the holder we waited for removed the file between our opening and locking it.
    for _ in 0..10 {
        let file = File::options().create(true).append(true).open(path).with_context(opening)?;
        if let Some(mut file) = lock_opened(path, file, what, fix)? {
            let since = project::utc_timestamp(SystemTime::now());
            let holder = format!("pid {}\ncheckout {root}\nsince {since}\n", std::process::id());
            file.set_len(0).and_then(|()| file.write_all(holder.as_bytes())).with_context(
                || format!("writing who holds {path}: check free space in the temporary directory"),
            )?;
            return Ok(Held { path: path.to_path_buf(), _file: file });
        }
    }
    bail!("locking {path}: the file keeps being removed and created again; check what removes files in the temporary directory")
}

/// Locks `file`, opened at `path`; `None` when `path` no longer names it: its last holder
/// removed it after we opened it, so a run that opens `path` now would lock another file.
fn lock_opened(path: &Utf8Path, file: File, what: &str, fix: &str) -> anyhow::Result<Option<File>> {
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = written_holder(path);
            bail!("{what} ({holder}; lock {path}): {fix}");
        }
        Err(TryLockError::Error(err)) => {
            let locking = || {
                format!("locking {path}: check that the temporary directory supports file locks, or point TMPDIR at one that does")
            };
            return Err(err).with_context(locking);
        }
    }
    let now = std::fs::metadata(path).ok();
    let locked = file.metadata().ok();
    let same = |(now, locked): (std::fs::Metadata, std::fs::Metadata)| {
        (now.dev(), now.ino()) == (locked.dev(), locked.ino())
    };
    Ok(now.zip(locked).is_some_and(same).then_some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_details_until_it_lets_go() {
        let name = format!("lock-test-{}", std::process::id());
        let first = acquire(&name, Utf8Path::new("/checkout/a"), None).unwrap();
        let err = acquire(&name, Utf8Path::new("/checkout/b"), None)
            .expect_err("the name is taken")
            .to_string();
        assert!(
            err.contains(&format!(
                "is using the cluster name {name} (pid {}, checkout /checkout/a, since ",
                std::process::id()
            )),
            "{err}"
        );
        assert!(err.contains("--cluster-name <another name>"), "{err}");
        drop(first);
        let again = acquire(&name, Utf8Path::new("/checkout/b"), None).unwrap();
        let text = std::fs::read_to_string(path(&name)).unwrap();
        assert!(text.contains("checkout /checkout/b\n"), "{text}");
        drop(again);
        assert!(!path(&name).exists(), "a released lock's file is removed");
    }

    /// The race of removing a released lock file: a second run opened the file before the
    /// first removed it and let go; it then locks a file no path names, and a third run would
    /// create and lock a new one beside it. The second sees that, and opens the path again.
    #[test]
    fn a_lock_file_removed_after_it_was_opened_is_not_taken() {
        let name = format!("lock-race-{}", std::process::id());
        let first = acquire(&name, Utf8Path::new("/checkout/a"), None).unwrap();
        let opened_before = File::options().append(true).open(path(&name)).unwrap();
        drop(first);
        let (what, fix) = ("taken", "wait");
        let stale = lock_opened(&path(&name), opened_before, what, fix).unwrap();
        assert!(stale.is_none(), "a file that the path no longer names was taken");
        // `take` opens the path again: a new file, which is taken, and named by the path.
        let second = acquire(&name, Utf8Path::new("/checkout/b"), None).unwrap();
        let opened_now = File::options().append(true).open(path(&name)).unwrap();
        let err = lock_opened(&path(&name), opened_now, what, fix).unwrap_err().to_string();
        assert!(err.starts_with("taken (pid "), "{err}");
        drop(second);
        assert!(!path(&name).exists());
    }

    #[test]
    fn a_live_holder_is_named_and_a_released_or_crashed_one_is_not() {
        let name = format!("lock-holder-{}", std::process::id());
        assert_eq!(holder(&name), None, "no file, no holder");
        let held = acquire(&name, Utf8Path::new("/checkout/a"), None).unwrap();
        let found = holder(&name).expect("a live holder");
        assert!(
            found.starts_with(&format!("pid {}, checkout /checkout/a, since ", std::process::id())),
            "{found}"
        );
        // Looking took nothing: the holder still holds it, alone.
        assert!(acquire(&name, Utf8Path::new("/checkout/b"), None).is_err());
        drop(held);
        assert_eq!(holder(&name), None);
        // A crashed run leaves its file unlocked.
        std::fs::write(path(&name), "pid 1\ncheckout /gone\n").unwrap();
        assert_eq!(holder(&name), None);
        std::fs::remove_file(path(&name)).unwrap();
    }

    #[test]
    fn coverage_runs_of_one_checkout_under_two_names_are_refused_too() {
        let root = format!("/checkout/{}", std::process::id());
        let root = Utf8Path::new(&root);
        let (a, b) =
            (format!("lock-a-{}", std::process::id()), format!("lock-b-{}", std::process::id()));
        let first = acquire(&a, root, Some("s")).unwrap();
        let err = acquire(&b, root, Some("s")).expect_err("coverdata/s is taken").to_string();
        assert!(
            err.contains(&format!("run of this checkout is writing {root}/coverdata/s (pid ")),
            "{err}"
        );
        // Without coverage, or for another suite, the other name is free.
        let plain = acquire(&b, root, None).unwrap();
        drop(plain);
        let other = acquire(&b, root, Some("t")).unwrap();
        drop((first, other));
        let checkout = &project::hex(&sha2::Sha256::digest(root.as_str()))[..12];
        for name in [a, b, format!("coverdata-{checkout}-s"), format!("coverdata-{checkout}-t")] {
            assert!(!path(&name).exists(), "{name} was left");
        }
    }
}
