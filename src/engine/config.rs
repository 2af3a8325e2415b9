//! Pure builders for what `run` sends to the engine, so the sandbox settings are unit-tested
//! without an engine.

use super::{EngineError, EngineKind, RunSpec};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::artifact::walk_dir;

/// What an engine enforces, decided once from its info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineCaps {
    pub kind: EngineKind,
    pub rootless: bool,
    /// Memory, pids and CPU limits through cgroups. Rootless Podman on cgroup v1 cannot set
    /// them (it refuses or warns "Resource limits are not supported and ignored"), so they are
    /// dropped there and RLIMIT_NPROC stands in against fork bombs.
    pub cgroup_limits: bool,
}

impl EngineCaps {
    pub fn new(kind: EngineKind, rootless: bool, cgroup_version: Option<&str>) -> Self {
        let v1 = !matches!(cgroup_version, Some("2") | Some("v2"));
        EngineCaps { kind, rootless, cgroup_limits: !(rootless && v1) }
    }
}

/// RLIMIT_NPROC when the pids cgroup limit is unavailable and the caller set none.
pub const DEFAULT_NPROC: i64 = 4096;

/// Label put on every container ckms creates, so leftovers can be found and removed.
pub const RUN_LABEL: &str = "io.ckms.run";

/// The most container output (stdout and stderr) the engine keeps on the host's disk. The
/// build's own output goes to make.log in its volume; what reaches the engine's log file is
/// ckms's messages, unless a hostile build writes there on purpose (e.g. to /proc/1/fd/1).
pub const LOG_MAX_BYTES: u64 = 8 << 20;

/// Size of the tmpfs on /var/tmp and /run. Rootless Podman mounts both (with --read-only)
/// at half the host's RAM; memory that no cgroup limits there.
const SMALL_TMPFS_BYTES: i64 = 16 << 20;

/// Parses a numeric "uid[:gid]" and refuses root: builds never run as root, even in a user
/// namespace, and the scratch directory is chowned to these ids.
pub fn parse_user(user: &str) -> Result<(u32, u32), EngineError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let bad = || EngineError::BadSpec(format!("user {user:?} must be numeric \"uid[:gid]\" and not root"));
    let uid: u32 = u.parse().map_err(|_| bad())?;
    let gid: u32 = match g {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => uid,
    };
    if uid == 0 || gid == 0 {
        return Err(bad());
    }
    Ok((uid, gid))
}

/// The container configuration for `spec` on an engine with `caps`.
pub fn container_config(spec: &RunSpec, caps: &EngineCaps) -> ContainerCreateBody {
    let l = &spec.limits;
    let (memory, pids, nano_cpus) =
        if caps.cgroup_limits { (l.memory_bytes, l.pids, l.nano_cpus) } else { (None, None, None) };
    // With a pids cgroup the nproc rlimit is left alone: on rootful Docker, uid 1000 in the
    // container is uid 1000 on the host, whose other processes would count against it.
    let ulimits = (!caps.cgroup_limits).then(|| {
        let n = l.pids.unwrap_or(DEFAULT_NPROC);
        vec![ResourcesUlimits { name: Some("nproc".into()), soft: Some(n), hard: Some(n) }]
    });
    let host_config = HostConfig {
        network_mode: (!spec.network).then(|| "none".to_string()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([
            ("/tmp".to_string(), format!("rw,nosuid,nodev,size={},mode=1777", l.tmpfs_bytes)),
            ("/var/tmp".to_string(), format!("rw,nosuid,nodev,size={SMALL_TMPFS_BYTES},mode=1777")),
            ("/run".to_string(), format!("rw,nosuid,nodev,size={SMALL_TMPFS_BYTES},mode=755")),
        ])),
        // The command is PID 1, which the build (same uid) cannot kill: ckms's build driver
        // keeps its disk watchdog there. A daemon configured with "init": true would put
        // docker-init in that place.
        init: Some(false),
        // The engine writes the container's output to a file on the host: bounded, or a
        // build printing without end fills the host's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some(match caps.kind {
                // Kubernetes: no container config is made for replayed runs.
                super::EngineKind::Docker | super::EngineKind::Kubernetes => "json-file".into(),
                super::EngineKind::Podman => "k8s-file".into(),
            }),
            config: Some(match caps.kind {
                super::EngineKind::Docker | super::EngineKind::Kubernetes => HashMap::from([
                    ("max-size".to_string(), LOG_MAX_BYTES.to_string()),
                    ("max-file".to_string(), "1".to_string()),
                ]),
                super::EngineKind::Podman => HashMap::from([("max-size".to_string(), LOG_MAX_BYTES.to_string())]),
            }),
        }),
        memory,
        // Equal to memory: no swap on top of the limit.
        memory_swap: memory,
        pids_limit: pids,
        nano_cpus,
        ulimits: ulimits.clone(),
        privileged: Some(false),
        ..Default::default()
    };
    let cmd = match &ulimits {
        // Podman 4's compat API drops HostConfig.Ulimits when rootless (fixed in 5.5), so the
        // limit is also set by a shell before the build command runs.
        Some(u) => {
            let n = u[0].hard.unwrap_or(DEFAULT_NPROC);
            let mut c = vec!["/bin/sh".to_string(), "-c".to_string(), nproc_wrapper(n), "ckms-run".to_string()];
            c.extend(spec.cmd.iter().cloned());
            c
        }
        None => spec.cmd.clone(),
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(cmd),
        // The image's entrypoint would run before our command; ckms images have none anyway.
        entrypoint: Some(vec![]),
        env: Some(spec.env.clone()),
        user: Some(spec.user.clone()),
        working_dir: Some(spec.workdir.clone()),
        // Anonymous volumes: fresh per container, writable despite the read-only rootfs,
        // and removed with the container (remove v=true).
        volumes: Some(std::iter::once(&spec.scratch).chain(spec.volumes.iter().map(|v| &v.path)).cloned().collect()),
        labels: Some(HashMap::from([(RUN_LABEL.to_string(), "1".to_string())])),
        network_disabled: (!spec.network).then_some(true),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// `sh -c` script: lower RLIMIT_NPROC (bash/busybox `-u`, dash `-p`) or refuse to run, then
/// exec the build command given as arguments.
fn nproc_wrapper(n: i64) -> String {
    format!(
        "ulimit -u {n} 2>/dev/null || ulimit -p {n} 2>/dev/null || \
         {{ echo 'ckms: cannot limit the number of processes' >&2; exit 125; }}; exec \"$@\""
    )
}

/// The tar uploaded into a volume before start: a "." entry owned by the build user (engines
/// create the volume root-owned; extracting "." chowns it on both Docker and Podman), then the
/// caller's inputs, each entry owned as its input says: by that user (the build can write next
/// to its sources) or by uid 0 (it can read, not change). A path already written is skipped:
/// the first input naming a directory decides its owner. A relative link that leaves the volume
/// (a packaged source's `README.gz -> ../../share/doc/...`) is made absolute from `at`, the
/// volume's path: it means the same in the container, and Docker refuses the relative form.
pub fn input_tar<W: std::io::Write>(
    inputs: &[super::Input],
    at: &str,
    uid: u32,
    gid: u32,
    out: W,
) -> std::io::Result<W> {
    let mut out = tar::Builder::new(out);
    // Named "/", not "./": Docker skips a "." entry for an existing directory, but applies
    // the owner of a "/" entry to the destination itself; Podman accepts either.
    let mut root = tar::Header::new_gnu();
    root.as_old_mut().name[0] = b'/';
    root.set_entry_type(tar::EntryType::Directory);
    root.set_mode(0o755);
    root.set_uid(uid.into());
    root.set_gid(gid.into());
    root.set_size(0);
    root.set_mtime(0);
    root.set_cksum();
    out.append(&root, std::io::empty())?;
    let mut seen = std::collections::HashSet::new();
    for input in inputs {
        let owner = match input.owner {
            super::Owner::User => (uid, gid),
            super::Owner::Root => (0, 0),
        };
        let mut put = |header: &mut tar::Header, path: &Path, link: Option<&Path>, data: &mut dyn std::io::Read| {
            header.set_uid(owner.0.into());
            header.set_gid(owner.1.into());
            let key: PathBuf = path.components().filter(|c| *c != std::path::Component::CurDir).collect();
            if !seen.insert(key.clone()) {
                return Ok(());
            }
            match link {
                Some(target) => {
                    let target = escaping_link(at, &key, target).unwrap_or_else(|| target.to_path_buf());
                    out.append_link(header, path, &target)
                }
                None => out.append_data(header, path, data),
            }
        };
        match &input.content {
            super::Content::Tar(tar) => {
                for entry in tar::Archive::new(&tar[..]).entries()? {
                    let mut entry = entry?;
                    let mut header = entry.header().clone();
                    // Long names and link targets come from PAX/GNU extensions, not the header.
                    let path = entry.path()?.into_owned();
                    let link = entry.link_name()?.map(|l| l.into_owned());
                    put(&mut header, &path, link.as_deref(), &mut entry)?;
                }
            }
            super::Content::Dir { path: dir, prefix } => {
                walk_dir(dir, prefix, &mut put).map_err(std::io::Error::other)?;
            }
        }
    }
    out.into_inner()
}

/// Rewrites a tar the engine returned for `requested` so that entry paths are relative to
/// that directory, whichever engine made it: Docker names entries `<basename>/...`, Podman
/// names the directory `/` and its entries `/...`. The directory's own entry is dropped; a
/// requested file comes back as one entry named by its base name.
pub fn output_tar(raw: &[u8], requested: &str) -> std::io::Result<Vec<u8>> {
    let base = std::path::Path::new(requested).file_name().map(|b| b.to_os_string()).unwrap_or_default();
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(raw);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = path.components().peekable();
        match parts.peek() {
            Some(std::path::Component::RootDir) => {
                parts.next();
            }
            Some(std::path::Component::Normal(first)) if *first == base => {
                parts.next();
            }
            _ => {}
        }
        let mut rel: std::path::PathBuf = parts.collect();
        if rel.as_os_str().is_empty() {
            if entry.header().entry_type().is_dir() {
                continue;
            }
            rel = base.clone().into();
        }
        let mut header = entry.header().clone();
        match entry.link_name()? {
            Some(target) => {
                let target = target.into_owned();
                out.append_link(&mut header, &rel, &target)?;
            }
            None => out.append_data(&mut header, &rel, &mut entry)?,
        }
    }
    out.into_inner()
}

/// The contents of the first regular file in a tar.
pub fn first_file(tar: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut out)?;
            return Ok(out);
        }
    }
    Ok(Vec::new())
}

/// `target` made absolute when the relative link at `path` (in the volume at `at`) points above
/// the volume's root; None when it stays inside or is absolute already.
fn escaping_link(at: &str, path: &Path, target: &Path) -> Option<PathBuf> {
    use std::path::Component;
    if target.is_absolute() {
        return None;
    }
    let mut depth = path.components().count().saturating_sub(1) as isize;
    let mut escapes = false;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        escapes |= depth < 0;
    }
    if !escapes {
        return None;
    }
    let mut resolved = PathBuf::from(at);
    for c in path.parent().into_iter().flat_map(Path::components).chain(target.components()) {
        match c {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(n) => resolved.push(n),
            _ => {}
        }
    }
    Some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Input, Limits, Volume};

    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    fn raw_tar(paths: &[&str]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for p in paths {
            let mut h = tar::Header::new_gnu();
            let dir = p.ends_with('/');
            h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
            h.set_size(0);
            h.as_old_mut().name[..p.len()].copy_from_slice(p.as_bytes());
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn outputs_are_rebased_for_both_engines() {
        let docker = raw_tar(&["build/", "build/m/", "build/m/a.ko"]);
        let podman = raw_tar(&["/", "/m/", "/m/a.ko"]);
        assert_eq!(names(&output_tar(&docker, "/build").unwrap()), ["m", "m/a.ko"]);
        assert_eq!(names(&output_tar(&podman, "/build").unwrap()), ["m", "m/a.ko"]);
        assert_eq!(names(&output_tar(&raw_tar(&["a.ko"]), "/build/m/a.ko").unwrap()), ["a.ko"]);
    }
    use std::time::Duration;

    fn spec() -> RunSpec {
        RunSpec {
            image: "localhost/ckms/builder:1".into(),
            cmd: vec!["make".into()],
            env: vec!["A=1".into()],
            user: "1000:1000".into(),
            workdir: "/build/src".into(),
            scratch: "/build".into(),
            input: vec![],
            volumes: vec![],
            outputs: vec![],
            limits: Limits {
                memory_bytes: Some(1 << 30),
                pids: Some(512),
                nano_cpus: Some(2_000_000_000),
                tmpfs_bytes: 1 << 20,
                timeout: Duration::from_secs(5),
            },
            network: false,
            follow: None,
        }
    }

    const FULL: EngineCaps = EngineCaps { kind: EngineKind::Docker, rootless: false, cgroup_limits: true };

    #[test]
    fn sandbox_settings() {
        let c = container_config(&spec(), &FULL);
        let h = c.host_config.clone().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(c.network_disabled, Some(true));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.privileged, Some(false));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.working_dir.as_deref(), Some("/build/src"));
        assert_eq!(c.volumes, Some(vec!["/build".to_string()]));
        let mut s = spec();
        s.volumes.push(Volume { path: "/usr/src".into(), input: vec![] });
        assert_eq!(container_config(&s, &FULL).volumes, Some(vec!["/build".to_string(), "/usr/src".to_string()]));
        let tmpfs = h.tmpfs.unwrap();
        let tmp = &tmpfs["/tmp"];
        assert!(tmp.contains("size=1048576") && tmp.contains("mode=1777"), "{tmp}");
        // Podman's own tmpfs there would be half the host's RAM.
        assert!(tmpfs["/var/tmp"].contains("size=16777216"), "{tmpfs:?}");
        assert!(tmpfs["/run"].contains("mode=755"), "{tmpfs:?}");
        assert_eq!(h.init, Some(false), "the command is PID 1");
        let log = h.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.unwrap()["max-size"], LOG_MAX_BYTES.to_string());
    }

    #[test]
    fn network_when_asked() {
        let mut s = spec();
        s.network = true;
        let c = container_config(&s, &FULL);
        assert_eq!(c.host_config.unwrap().network_mode, None);
        assert_eq!(c.network_disabled, None);
    }

    #[test]
    fn limits_present_with_cgroups() {
        let h = container_config(&spec(), &FULL).host_config.unwrap();
        assert_eq!(h.memory, Some(1 << 30));
        assert_eq!(h.memory_swap, Some(1 << 30));
        assert_eq!(h.pids_limit, Some(512));
        assert_eq!(h.nano_cpus, Some(2_000_000_000));
        assert_eq!(h.ulimits, None);
        assert_eq!(container_config(&spec(), &FULL).cmd, Some(vec!["make".to_string()]));
    }

    #[test]
    fn limits_dropped_on_rootless_cgroup_v1_with_nproc_fallback() {
        let caps = EngineCaps::new(EngineKind::Podman, true, Some("1"));
        assert!(!caps.cgroup_limits);
        let h = container_config(&spec(), &caps).host_config.unwrap();
        assert_eq!((h.memory, h.pids_limit, h.nano_cpus), (None, None, None));
        let u = &h.ulimits.unwrap()[0];
        assert_eq!((u.name.as_deref(), u.soft, u.hard), (Some("nproc"), Some(512), Some(512)));
    }

    #[test]
    fn caps_from_info() {
        assert!(EngineCaps::new(EngineKind::Podman, true, Some("2")).cgroup_limits);
        assert!(EngineCaps::new(EngineKind::Docker, false, Some("1")).cgroup_limits);
        assert!(!EngineCaps::new(EngineKind::Podman, true, None).cgroup_limits);
    }

    #[test]
    fn user_must_be_numeric_and_not_root() {
        assert_eq!(parse_user("1000:1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        for bad in ["0", "0:0", "1000:0", "root", "builder:1000", ""] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn input_tar_chowns_root_and_entries() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_uid(0);
        b.append_data(&mut h, "src/a.c", &b"x\n"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "src/link", "a.c").unwrap();
        let input = b.into_inner().unwrap();

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "other/b.c", &b"y"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "./src/a.c", &b"z"[..]).unwrap();
        let theirs = b.into_inner().unwrap();

        let inputs = [Input::user(input), Input::root(theirs)];
        let out = input_tar(&inputs, "/usr/src", 1000, 1001, Vec::new()).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let entries: Vec<_> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (e.path().unwrap().display().to_string(), h.uid().unwrap(), h.gid().unwrap())
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("/".to_string(), 1000, 1001),
                ("src/a.c".to_string(), 1000, 1001),
                ("src/link".to_string(), 1000, 1001),
                ("other/b.c".to_string(), 0, 0),
            ],
            "root-owned inputs stay root's; a path already written keeps its first owner"
        );
    }

    #[test]
    fn links_leaving_the_volume_become_absolute() {
        let esc = |path: &str, target: &str| escaping_link("/usr/src", Path::new(path), Path::new(target));
        assert_eq!(
            esc("m-1/README.gz", "../../share/doc/m/README.gz"),
            Some(PathBuf::from("/usr/share/doc/m/README.gz"))
        );
        assert_eq!(esc("m-1/a/link", "../b.c"), None, "inside the volume: left as it is");
        assert_eq!(esc("m-1/link", "../other-2/x.h"), None, "a sibling's file: still inside");
        assert_eq!(esc("m-1/link", "/etc/x"), None, "absolute already");
        assert_eq!(esc("m-1/a/link", "../../../x"), Some(PathBuf::from("/usr/x")));
        assert_eq!(esc("m-1/a/link", "b/../../../../x"), Some(PathBuf::from("/usr/x")), "escapes midway");
    }
}
