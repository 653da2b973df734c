//! One live run per cluster name on this machine. Pods, networks and clusters are named after
//! `--cluster-name`, so two runs of one name would remove each other's services; the lock makes
//! the second wait for nobody and say who holds the name instead. It is the one file the xtask
//! writes outside the project: it must be seen by every checkout on the machine.

use std::{fs::File, io::Write, time::SystemTime};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

use crate::project;

/// Held while the run lives; the kernel releases it when the process exits, even on a crash.
pub struct Lock {
    _file: File,
}

/// Where the lock of `name` lives: the system's temporary directory, shared by every checkout.
pub fn path(name: &str) -> Utf8PathBuf {
    let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap_or_else(|_| "/tmp".into());
    dir.join(format!("xtask-e2e-{name}.lock"))
}

/// Takes the lock of `name` for this run of the checkout at `root`, or says who holds it.
pub fn acquire(name: &str, root: &Utf8Path) -> anyhow::Result<Lock> {
    let path = path(name);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| {
            format!("opening the lock {path}: make it writable for this user, or remove it (no run holds a lock file it cannot open)")
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "a run that is just starting".to_string()
            } else {
                holder.replace('\n', ", ")
            };
            bail!(
                "another e2e-gateway run is using the cluster name {name} ({holder}; lock {path}): \
                 wait for it to finish, or run beside it with `--cluster-name <another name>` and \
                 free ports in GATEWAY_HOST_PORT and DATASTORAGE_HOST_PORT"
            );
        }
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("locking {path}"))
        }
    }
    let since = project::utc_timestamp(SystemTime::now());
    let holder = format!(
        "pid {}\ncheckout {root}\nsince {since}\n",
        std::process::id()
    );
    file.set_len(0)
        .and_then(|()| file.write_all(holder.as_bytes()))
        .with_context(|| format!("writing {path}"))?;
    Ok(Lock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_details_until_it_lets_go() {
        let name = format!("lock-test-{}", std::process::id());
        let first = acquire(&name, Utf8Path::new("/checkout/a")).unwrap();
        let err = acquire(&name, Utf8Path::new("/checkout/b"))
            .err()
            .expect("the name is taken")
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
        let again = acquire(&name, Utf8Path::new("/checkout/b")).unwrap();
        let text = std::fs::read_to_string(path(&name)).unwrap();
        assert!(text.contains("checkout /checkout/b\n"), "{text}");
        drop(again);
        std::fs::remove_file(path(&name)).unwrap();
    }
}
