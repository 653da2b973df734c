//! One live run per cluster name on this machine. Pods, networks and clusters are named after
//! `--cluster-name`, so two runs of one name would remove each other's services; the lock makes
//! the second wait for nobody and say who holds the name instead. It is the one file the xtask
//! writes outside the project: it must be seen by every checkout on the machine.

use std::{
    fs::{File, TryLockError},
    io::Write,
    time::SystemTime,
};

use sha2::Digest;

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

use crate::project;

/// Held while the run lives; the kernel releases it when the process exits, even on a crash.
pub type Lock = Vec<File>;

/// Where the lock of `name` lives: the system's temporary directory, shared by every checkout.
pub fn path(name: &str) -> Utf8PathBuf {
    let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap_or_else(|_| "/tmp".into());
    dir.join(format!("xtask-e2e-{name}.lock"))
}

/// Takes the lock of the cluster `name` for this run of the checkout at `root`, and with
/// `coverage` the checkout's `coverdata/` too (its services write there whatever their cluster
/// name); or says who holds what.
pub fn acquire(name: &str, root: &Utf8Path, coverage: bool) -> anyhow::Result<Lock> {
    let what = format!("another e2e-gateway run is using the cluster name {name}");
    let fix = "wait for it to finish, or run beside it with `--cluster-name <another name>` and free ports in GATEWAY_HOST_PORT and DATASTORAGE_HOST_PORT";
    let mut files = vec![take(&path(name), root, &what, fix)?];
    if coverage {
        let checkout = &project::hex(&sha2::Sha256::digest(root.as_str()))[..12];
        let what = format!(
            "another `e2e-gateway --coverage` run of this checkout is writing {root}/coverdata"
        );
        let fix = "wait for it to finish, or run this one without --coverage or from another clone";
        files.push(take(&path(&format!("coverdata-{checkout}")), root, &what, fix)?);
    }
    Ok(files)
}

/// Locks the file at `path` and writes who holds it; when another holds it, says `what` that
/// means, who it is, and the `fix`.
fn take(path: &Utf8Path, root: &Utf8Path, what: &str, fix: &str) -> anyhow::Result<File> {
    let opening = || {
        format!("opening the lock {path}: make it writable for this user, or remove it (no run holds a lock file it cannot open)")
    };
    let mut file = File::options().create(true).append(true).open(path).with_context(opening)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "a run that is just starting".to_string(),
                holder => holder.replace('\n', ", "),
            };
            bail!("{what} ({holder}; lock {path}): {fix}");
        }
        Err(TryLockError::Error(err)) => {
            let locking = || {
                format!("locking {path}: check that the temporary directory supports file locks, or point TMPDIR at one that does")
            };
            return Err(err).with_context(locking);
        }
    }
    let since = project::utc_timestamp(SystemTime::now());
    let holder = format!("pid {}\ncheckout {root}\nsince {since}\n", std::process::id());
    file.set_len(0).and_then(|()| file.write_all(holder.as_bytes())).with_context(|| {
        format!("writing who holds {path}: check free space in the temporary directory")
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_details_until_it_lets_go() {
        let name = format!("lock-test-{}", std::process::id());
        let first = acquire(&name, Utf8Path::new("/checkout/a"), false).unwrap();
        let err = acquire(&name, Utf8Path::new("/checkout/b"), false)
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
        let again = acquire(&name, Utf8Path::new("/checkout/b"), false).unwrap();
        let text = std::fs::read_to_string(path(&name)).unwrap();
        assert!(text.contains("checkout /checkout/b\n"), "{text}");
        drop(again);
        std::fs::remove_file(path(&name)).unwrap();
    }

    #[test]
    fn coverage_runs_of_one_checkout_under_two_names_are_refused_too() {
        let root = format!("/checkout/{}", std::process::id());
        let root = Utf8Path::new(&root);
        let (a, b) =
            (format!("lock-a-{}", std::process::id()), format!("lock-b-{}", std::process::id()));
        let first = acquire(&a, root, true).unwrap();
        let err = acquire(&b, root, true).expect_err("coverdata/ is taken").to_string();
        assert!(
            err.contains(&format!("run of this checkout is writing {root}/coverdata (pid ")),
            "{err}"
        );
        // Without coverage the other name is free.
        let plain = acquire(&b, root, false).unwrap();
        drop((first, plain));
        let checkout = &project::hex(&sha2::Sha256::digest(root.as_str()))[..12];
        for name in [a, b, format!("coverdata-{checkout}")] {
            std::fs::remove_file(path(&name)).unwrap();
        }
    }
}
