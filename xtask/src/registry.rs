//! `--registry`: the images go through a registry instead of from this machine's store, so a
//! cluster elsewhere (or a Kind node) pulls them, and a tag already there is neither built nor
//! pushed again: the content-hash tag says the image is the same.

use std::{io::ErrorKind, num::NonZeroU16, time::Duration};

use anyhow::{bail, Context};
use xshell::{cmd, Shell};

use crate::{
    cmd::{step, CmdError, Output, Step},
    engine::{self, Engine},
    http,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// `host[:port]`
    pub host: String,
    /// Path below the host, without slashes at either end; may be empty.
    pub prefix: String,
    /// Plain HTTP (a registry on localhost, say): no TLS, no certificate checks.
    pub insecure: bool,
}

/// `HOST[:PORT][/PREFIX]`, as `--registry` takes it.
impl std::fmt::Display for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix.is_empty() {
            true => write!(f, "{}", self.host),
            false => write!(f, "{}/{}", self.host, self.prefix),
        }
    }
}

/// The label every image we build carries: its content tag's `<svc>:e2e-<hash>`, so that an
/// image in a registry shows what it was built from, whoever pushed it.
pub const CONTENT_LABEL: &str = "e2e.xtask/content";

/// What an image in the registry must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// One of ours: its `CONTENT_LABEL` is this.
    Content(String),
    /// A third-party image (it has no label of ours): the same image ID as the engine's
    /// `reference`.
    Id { reference: String, id: String },
}

/// The manifests a registry may hold for a tag: an image or an index, OCI or docker.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

impl Registry {
    /// `HOST[:PORT][/PREFIX]`, as `--registry` and `E2E_REGISTRY` take it.
    pub fn parse(value: &str, insecure: bool) -> Result<Registry, String> {
        if value.contains("://") {
            return Err(format!(
                "`{value}`: give the registry without a scheme, e.g. `127.0.0.1:5000/e2e`; add --registry-insecure for plain HTTP"
            ));
        }
        let (host, prefix) = value.split_once('/').unwrap_or((value, ""));
        let prefix = prefix.trim_matches('/');
        let (name, port) = host.split_once(':').unwrap_or((host, ""));
        let only = |s: &str, more: &str| {
            s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || more.contains(c))
        };
        let port_ok = port.is_empty() || port.parse::<NonZeroU16>().is_ok();
        let host_ok = !name.is_empty() && only(&name.to_ascii_lowercase(), ".-") && port_ok;
        if !host_ok || !only(prefix, "._-/") {
            return Err(format!("`{value}` is not HOST[:PORT][/PREFIX] (a host name or address, a port from 1 to 65535, a lowercase path)"));
        }
        Ok(Registry { host: host.to_string(), prefix: prefix.to_string(), insecure })
    }

    /// `localhost/<svc>:e2e-<hash>` in this registry: `HOST/PREFIX/<svc>:e2e-<hash>` (a
    /// third-party `docker.io/library/x:1` is `HOST/PREFIX/docker.io/library/x:1`).
    pub fn reference(&self, local: &str) -> String {
        let prefix =
            if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        format!("{}/{prefix}{}", self.host, local.trim_start_matches("localhost/"))
    }

    /// The host part of the name the manifests use, as a node sees it; loopback means this
    /// machine.
    pub fn is_loopback(&self) -> bool {
        let name = self.host.split(':').next().unwrap_or("");
        name == "localhost" || name.starts_with("127.")
    }

    /// `--tls-verify=false` for a plain-HTTP registry (podman's flag).
    pub fn tls_args(&self) -> Option<&'static str> {
        self.insecure.then_some("--tls-verify=false")
    }

    /// Whether the registry has `local` already. A plain-HTTP registry is asked directly
    /// (podman 4.3's `manifest inspect` cannot skip TLS); others through the engine, with its
    /// credentials. A registry that does not answer in time is an error: the push after it would
    /// wait for it too. Any other failure (refused, no permission) is `false`: the push then
    /// says why.
    pub fn has(&self, sh: &Shell, engine: Engine, local: &str) -> anyhow::Result<bool> {
        let (program, reference) = (engine.program(), self.reference(local));
        let limit = transfer_limit()?.min(CHECK_LIMIT);
        if self.insecure {
            return self.head_manifest(&reference, limit);
        }
        let inspect = step(cmd!(sh, "{program} manifest inspect {reference}"));
        match self.run_bounded(inspect, limit, false) {
            Ok(_) => Ok(true),
            Err(err) if err.is_timeout() || err.is_interrupt() => Err(err.into()),
            Err(_) => Ok(false),
        }
    }

    fn head_manifest(&self, reference: &str, limit: Duration) -> anyhow::Result<bool> {
        let path = reference.strip_prefix(&format!("{}/", self.host)).unwrap_or(reference);
        let (repository, tag) = path.rsplit_once(':').unwrap_or((path, "latest"));
        let head = format!("HEAD /v2/{repository}/manifests/{tag}");
        let accept = format!("Accept: {MANIFEST_TYPES}\r\n");
        match http::request(&self.host, &head, &accept, limit) {
            Ok(response) => Ok(response.code == 200),
            Err(err) if err.kind() == ErrorKind::TimedOut => {
                let (host, secs) = (&self.host, limit.as_secs_f64());
                let fix = check_it_runs(host, self.insecure);
                bail!("the registry {host} stopped answering: it took the connection but sent no answer to `{head}` within {secs} s; {fix}")
            }
            Err(_) => Ok(false),
        }
    }

    /// Pushes the local image `local` under its name here, which it returns. A registry that
    /// refuses (authentication, TLS, not reachable) fails with its own words and what to do;
    /// one that stops answering, once the time limit passes, with that.
    pub fn push(&self, sh: &Shell, engine: Engine, local: &str) -> anyhow::Result<String> {
        let remote = self.reference(local);
        let (tls, limit) = (self.tls_args(), transfer_limit()?);
        let refused = |err: CmdError| self.refused(engine, err);
        let pushed = match engine {
            Engine::Podman => {
                let push = step(cmd!(sh, "podman push {tls...} {local} {remote}"));
                self.run_bounded(push, limit, true).map_err(refused)
            }
            // docker pushes a tag of its own name.
            Engine::Docker => step(cmd!(sh, "docker tag {local} {remote}")).run().and_then(|_| {
                let push = step(cmd!(sh, "docker push {remote}"));
                self.run_bounded(push, limit, true).map_err(refused)
            }),
        };
        pushed.with_context(|| format!("pushing {local} to {remote} failed"))?;
        Ok(remote)
    }

    /// Pulls `reference` (a name in this registry) into the engine's store, within the time
    /// limit: `podman kube play` would pull it with none.
    pub fn pull(&self, sh: &Shell, engine: Engine, reference: &str) -> anyhow::Result<()> {
        let (program, host) = (engine.program(), &self.host);
        // docker takes plain HTTP from a registry on loopback without being told.
        let tls = if engine == Engine::Podman { self.tls_args() } else { None };
        let hint = format!("check that {host} answers and has {reference} (it was pushed or found there in phase 2): `{program} pull {reference}` shows the same; log in with `{program} login {host}` where it needs it");
        let pull = step(cmd!(sh, "{program} pull {tls...} {reference}")).hint(hint);
        self.run_bounded(pull, transfer_limit()?, true)
            .map_err(|err| self.refused(engine, err))
            .with_context(|| format!("pulling {reference} from {host} failed"))?;
        Ok(())
    }

    /// Refuses `remote` (this registry's name of an image we use) unless it is what `expected`
    /// says: the tag alone proves nothing, as anyone may push anything under it (another
    /// service's image was deployed, and reported as this one's coverage). The image is pulled
    /// into the engine's store to read it: neither podman 4.3 nor docker reads an image's
    /// configuration from a registry without it, and a registry with TLS is read the same way.
    pub fn verify(
        &self,
        sh: &Shell,
        engine: Engine,
        remote: &str,
        expected: &Expected,
    ) -> anyhow::Result<()> {
        self.pull(sh, engine, remote)?;
        let program = engine.program();
        let (id, content) =
            engine::label(sh, engine, remote, CONTENT_LABEL)?.with_context(|| {
                format!(
                    "{remote} was pulled but `{program} image inspect` does not find it: {}",
                    engine::answers(engine)
                )
            })?;
        let fix = format!("delete that tag in the registry {self} (or push the right image under it), or use another --registry prefix");
        match expected {
            Expected::Content(ours) if content.as_deref() == Some(ours) => Ok(()),
            Expected::Content(ours) => {
                let held = match content {
                    Some(other) => format!("an image labelled {CONTENT_LABEL}={other}"),
                    None => format!("an image without the label {CONTENT_LABEL} (not built by this xtask, or by one older than the label)"),
                };
                bail!("the registry's {remote} is not the image it should be: it holds {held}, not {ours}; {fix}")
            }
            Expected::Id { id: ours, .. } if *ours == id => Ok(()),
            Expected::Id { reference, id: ours } => bail!(
                "the registry's {remote} is not the image it should be: it holds the image {id}, while {program}'s {reference} is {ours}; {fix}"
            ),
        }
    }

    /// A push or pull the registry refused, with the fix for why, read from what the engine
    /// said: nothing listening, TLS, credentials. A time limit's error keeps its own fix, and one
    /// we cannot tell keeps the caller's.
    fn refused(&self, engine: Engine, err: CmdError) -> CmdError {
        if err.is_timeout() || err.is_interrupt() {
            return err;
        }
        match refusal_fix(self, engine, &format!("{}\n{}", err.stderr, err.stdout)) {
            Some(fix) => err.with_hint(fix),
            None => {
                let (program, host) = (engine.program(), &self.host);
                let plain = match self.insecure {
                    true => String::new(),
                    false => ", add --registry-insecure for a plain-HTTP registry".into(),
                };
                let fix = format!("check that {host} answers and takes pushes: log in with `{program} login {host}`{plain}, or check its certificate");
                match err.hint().is_empty() {
                    true => err.with_hint(fix),
                    false => err,
                }
            }
        }
    }

    /// Runs `step`, which talks to the registry, for `limit` at most; past it, the error says
    /// that the registry stopped answering and what to do (for a push or pull, a `transfer`:
    /// also how to give it more time).
    fn run_bounded(&self, step: Step, limit: Duration, transfer: bool) -> Result<Output, CmdError> {
        let (host, default) = (&self.host, TRANSFER_LIMIT.as_secs());
        let more = match transfer {
            true => format!("; on a slow link raise the time limit of each push and pull with E2E_REGISTRY_TIMEOUT=SECONDS (default {default})"),
            false => String::new(),
        };
        let fix = check_it_runs(host, self.insecure);
        step.timeout(limit).run().map_err(|err| match err.is_timeout() {
            true => err.with_hint(format!("the registry {host} stopped answering: {fix}{more}")),
            false => err,
        })
    }
}

/// A tag check is a single small request: a registry that answers at all answers it at once.
const CHECK_LIMIT: Duration = Duration::from_secs(10);
/// A push or pull of one image, unless `E2E_REGISTRY_TIMEOUT` says otherwise.
const TRANSFER_LIMIT: Duration = Duration::from_secs(300);

/// How long a push or pull may take: `E2E_REGISTRY_TIMEOUT` seconds, else `TRANSFER_LIMIT`. A
/// tag check takes `CHECK_LIMIT` at most, less when this is less.
pub fn transfer_limit() -> anyhow::Result<Duration> {
    let Some(value) = std::env::var("E2E_REGISTRY_TIMEOUT").ok().filter(|v| !v.is_empty()) else {
        return Ok(TRANSFER_LIMIT);
    };
    match value.parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => bail!("E2E_REGISTRY_TIMEOUT={value} is not a number of seconds: set it to a whole number above 0 (default {}), or unset it", TRANSFER_LIMIT.as_secs()),
    }
}

/// What to do about a registry that refused a push or pull, from what the engine said
/// (podman 4.3's and docker's words); `None` when it says nothing we know. --registry-insecure
/// is suggested only where it was not given and TLS failed.
fn refusal_fix(registry: &Registry, engine: Engine, said: &str) -> Option<String> {
    let (program, host) = (engine.program(), &registry.host);
    let tls = ["tls:", "x509:", "certificate", "server gave HTTP response to HTTPS client"];
    let fix = if said.contains("connection refused") {
        format!("the registry {host} refused the connection: nothing listens at that address and port; start the registry, or check the address and port given to --registry")
    } else if said.contains("no such host") {
        let name = host.split(':').next().unwrap_or(host);
        format!("{name} does not resolve to an address: check the host name given to --registry")
    } else if tls.iter().any(|t| said.contains(t)) {
        let ca = match engine {
            Engine::Podman => format!("/etc/containers/certs.d/{host}/ca.crt"),
            Engine::Docker => format!("/etc/docker/certs.d/{host}/ca.crt"),
        };
        match (registry.insecure, engine) {
            (false, _) => format!("{program} could not speak TLS with {host}: a registry that serves plain HTTP needs --registry-insecure; one whose certificate is not trusted needs its CA certificate in {ca}"),
            // docker's own settings say which registries it talks to without TLS.
            (true, Engine::Docker) => format!("docker talks TLS to {host} whatever --registry-insecure says: add it to `insecure-registries` in the daemon's /etc/docker/daemon.json and restart the daemon"),
            (true, Engine::Podman) => return None,
        }
    } else if ["unauthorized", "authentication required", "denied"].iter().any(|w| said.contains(w))
    {
        format!("the registry {host} wants credentials that may push there: log in with `{program} login {host}`")
    } else {
        return None;
    };
    Some(fix)
}

/// What to do about a registry at `host` that stopped answering.
fn check_it_runs(host: &str, insecure: bool) -> String {
    let scheme = if insecure { "http" } else { "https" };
    format!("check that it runs and is not stopped or overloaded (`curl {scheme}://{host}/v2/` answers at once when it is well), then rerun")
}

/// An image reference as registries and engines take it: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`,
/// the path lowercase.
pub fn image_reference(value: &str) -> Result<String, String> {
    let bad = || {
        format!("`{value}` is not an image reference ([HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. kindest/node:v1.32.3)")
    };
    let (name, digest) = value.split_once('@').unwrap_or((value, ""));
    let digest_ok = digest.is_empty()
        || digest.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo.chars().all(|c| c.is_ascii_alphanumeric())
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
    // A colon after the last slash starts the tag; one before it is the registry's port.
    let (path, tag) = match name.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, tag),
        _ => (name, ""),
    };
    let tag_ok = tag.len() <= 128
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !tag.starts_with(['.', '-'])
        && (!tag.is_empty() || !name.ends_with(':'));
    let mut parts: Vec<&str> = path.split('/').collect();
    let host = parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost");
    if host {
        let (host_name, port) = parts[0].split_once(':').unwrap_or((parts[0], ""));
        let host_ok = !host_name.is_empty()
            && host_name.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            && (port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0));
        if !host_ok {
            return Err(bad());
        }
        parts.remove(0);
    }
    let component_ok = |c: &&str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if !(digest_ok && tag_ok && parts.iter().all(component_ok)) {
        return Err(bad());
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_are_checked() {
        for good in [
            "kindest/node:v1.32.3",
            "localhost/kindest-node-offline:v1.32.3",
            "kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5",
            "mirror.local:5000/kindest/node:v1.35.0",
            "127.0.0.1:5000/node",
            "postgres",
        ] {
            assert_eq!(image_reference(good).as_deref(), Ok(good));
        }
        for bad in [
            "NOT A/valid::image",
            "Kindest/node:v1",
            "node:",
            "node:v1 x",
            "host:0/node",
            "a//b",
            "node@sha256:xyz",
            "",
        ] {
            let err = image_reference(bad).unwrap_err();
            assert!(err.contains("is not an image reference"), "{bad}: {err}");
        }
    }

    #[test]
    fn registry_names_are_parsed_and_images_renamed() {
        let r = Registry::parse("127.0.0.1:5000/e2e/ci", true).unwrap();
        assert_eq!((r.host.as_str(), r.prefix.as_str()), ("127.0.0.1:5000", "e2e/ci"));
        assert_eq!(
            r.reference("localhost/gateway:e2e-0123456789ab"),
            "127.0.0.1:5000/e2e/ci/gateway:e2e-0123456789ab"
        );
        assert!(r.is_loopback());
        let plain = Registry::parse("registry.example.com", false).unwrap();
        assert_eq!(
            plain.reference("localhost/gateway:e2e-1"),
            "registry.example.com/gateway:e2e-1"
        );
        assert!(!plain.is_loopback());
        assert!(plain.tls_args().is_none());
        for bad in ["http://127.0.0.1:5000", "host:0", "host:x", "Host/UPPER", ":5000"] {
            assert!(Registry::parse(bad, false).is_err(), "{bad}");
        }
        assert!(Registry::parse("http://r:1", false).unwrap_err().contains("without a scheme"));
    }

    /// podman 4.3's words, as it printed them here, for a port nothing listens on (with and
    /// without --tls-verify=false) and for a plain-HTTP server asked for TLS.
    #[test]
    fn a_refused_push_gets_the_fix_for_why() {
        let plain = Registry::parse("127.0.0.1:5999/e2e", true).unwrap();
        let tls = Registry::parse("127.0.0.1:5999/e2e", false).unwrap();
        let refused = |scheme: &str| {
            format!("Error: trying to reuse blob sha256:cd7192b2 at destination: pinging container registry 127.0.0.1:5999: Get \"{scheme}://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused")
        };
        for (registry, said) in [(&plain, refused("http")), (&tls, refused("https"))] {
            let fix = refusal_fix(registry, Engine::Podman, &said).unwrap();
            assert_eq!(fix, "the registry 127.0.0.1:5999 refused the connection: nothing listens at that address and port; start the registry, or check the address and port given to --registry");
        }
        let handshake = "Error: trying to reuse blob sha256:cd7192b2 at destination: pinging container registry 127.0.0.1:5998: Get \"https://127.0.0.1:5998/v2/\": tls: first record does not look like a TLS handshake";
        let fix = refusal_fix(&tls, Engine::Podman, handshake).unwrap();
        assert!(
            fix.contains("a registry that serves plain HTTP needs --registry-insecure"),
            "{fix}"
        );
        assert!(fix.ends_with("/etc/containers/certs.d/127.0.0.1:5999/ca.crt"), "{fix}");
        // Given already: not suggested again (podman then does not speak TLS at all).
        assert_eq!(refusal_fix(&plain, Engine::Podman, handshake), None);
        let docker =
            refusal_fix(&plain, Engine::Docker, "http: server gave HTTP response to HTTPS client")
                .unwrap();
        assert!(docker.contains("`insecure-registries`"), "{docker}");
        let auth =
            refusal_fix(&tls, Engine::Podman, "unauthorized: authentication required").unwrap();
        assert!(auth.ends_with("log in with `podman login 127.0.0.1:5999`"), "{auth}");
        assert_eq!(refusal_fix(&tls, Engine::Podman, "Error: something else"), None);
    }

    /// A registry that takes the connection and never answers (a stopped process) is an error
    /// that names it, once the limit passes: before, the check said "not there" after 10 s
    /// and the push that followed waited for ever.
    #[test]
    fn a_tag_check_on_a_registry_that_never_answers_says_it_stopped_answering() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = silent.local_addr().unwrap().to_string();
        let registry = Registry::parse(&format!("{host}/e2e"), true).unwrap();
        let reference = registry.reference("localhost/gateway:e2e-0123456789ab");
        let err = registry.head_manifest(&reference, Duration::from_millis(200)).unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            format!("the registry {host} stopped answering: it took the connection but sent no answer to `HEAD /v2/e2e/gateway/manifests/e2e-0123456789ab` within 0.2 s; check that it runs and is not stopped or overloaded (`curl http://{host}/v2/` answers at once when it is well), then rerun")
        );
        // Refused is no answer either way: the push says why, in the registry's words.
        drop(silent);
        assert!(!registry.head_manifest(&reference, Duration::from_millis(200)).unwrap());
    }
}
