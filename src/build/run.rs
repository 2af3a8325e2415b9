//! One sandboxed build: the source goes in as a tar, `driver.sh` evaluates the conf, asks the
//! host for the plan and runs the steps dkms would; make.log and the stripped modules come
//! back as a tar.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Mutex;

use super::BuildError;
use crate::artifact;
use crate::conf::{self, BuildPlan, ConfError, EvalContext, RawConf};
use crate::engine::{Content, Exchange, LogSink, RunOutcome, Runner};
use crate::image::layer::Relocation;
use crate::image::run_spec;
use crate::profile::Recipe;

use super::inputs::{Sibling, CONTAINER_SOURCES, CONTAINER_TREE};

/// ckms's files in the tree's volume (the driver, the results).
const CKMS_DIR: &str = ".ckms";

/// What one sandboxed build runs: the recipe and image, the source and its conf, the limits.
pub struct BuildSpec<'a> {
    pub recipe: &'a Recipe,
    pub image: &'a str,
    /// The module's source on the host (`<source_tree>/<m>-<v>`).
    pub source: &'a Path,
    /// The other modules the build sees (read-only), as a dkms host shows every added module;
    /// an input of the build like its source.
    pub siblings: &'a [Sibling],
    /// Where the image keeps what its packages put in /usr/src (the profile's
    /// `[[filesystem.relocate]]`): linked back into the build's own /usr/src.
    pub image_sources: Option<&'a str>,
    /// The dkms.conf's bytes, the /etc/dkms overrides that apply (name, bytes), and the
    /// conf's name for messages.
    pub conf: &'a [u8],
    pub overrides: &'a [(String, Vec<u8>)],
    pub origin: &'a str,
    /// dkms's variables as the container sees them (kernelver, arch, dkms_tree, ...).
    pub vars: &'a EvalContext,
    pub jobs: u32,
    pub timeout: Duration,
    /// The most disk space the build may use; past it the build is stopped.
    pub space_bytes: i64,
    /// Memory and process limits of the container (where the engine can enforce them).
    pub memory_bytes: i64,
    pub pids: i64,
    /// Streams make's output as it runs (`--verbose`).
    pub follow: Option<LogSink>,
}

/// Decides, on the host while the container waits, what to build from the evaluated conf:
/// Some(plan) to build, None to stop (the resolver keeps its reasons: a skip, an error, ...).
pub type Resolver<'a> = dyn Fn(Result<RawConf, ConfError>) -> Option<Box<BuildPlan>> + Send + Sync + 'a;

/// How a build went.
#[derive(Debug)]
pub enum Ran {
    Built {
        plan: Box<BuildPlan>,
        built: Built,
    },
    /// The resolver said stop; nothing was built.
    Stopped,
}

/// The driver's exit statuses (see driver.sh).
pub mod status {
    pub const BAD_CONF: i64 = 8;
    pub const PATCH_FAILED: i64 = 6;
    pub const MODULE_MISSING: i64 = 7;
    pub const MAKE_FAILED: i64 = 10;
    pub const MODULE_IS_LINK: i64 = 17;
    pub const SPACE_EXCEEDED: i64 = 34;
}

/// What came back from a build, unpacked into a host directory.
#[derive(Debug)]
pub struct Built {
    /// The container's exit status: 0 built, else one of [`status`].
    pub status: i64,
    pub timed_out: bool,
    /// The build wrote more than its space limit and was stopped.
    pub space_exceeded: bool,
    /// What the build returned that was not accepted (links, devices, paths climbing out),
    /// and why; left out, never followed.
    pub refused: Vec<(String, &'static str)>,
    /// The driver's own output (script messages, not make's).
    pub log: Vec<u8>,
    /// make.log, if the build got that far.
    pub make_log: Option<PathBuf>,
    /// How long make ran, as the driver measured it (a statistic: the build could forge it).
    pub make_seconds: Option<f64>,
    /// The stripped modules, one per planned module that was built.
    pub modules: Vec<PathBuf>,
}

/// Builds `job` in ONE container: `driver.sh` evaluates the dkms.conf with bash, hands the
/// directives to the host (an engine exchange), where `resolve` decides for the kernel; the
/// driver then runs what was decided. Results are unpacked into `dest` (a fresh host dir).
pub async fn run_build(
    engine: &dyn Runner,
    job: &BuildSpec<'_>,
    resolve: &Resolver<'_>,
    dest: &Path,
) -> Result<Ran, BuildError> {
    let (m, v) = (&job.vars.module, &job.vars.module_version);
    let build_dir = format!("{CONTAINER_TREE}/{m}/{v}/build");
    let ckms_dir = format!("{CONTAINER_TREE}/{CKMS_DIR}");
    let (tree, sources) = super::inputs::layout(m, v, job.source, &job.vars.kernelver, &job.vars.arch, job.siblings)?;
    let mut input = tar::Builder::new(Vec::new());
    let mut files: Vec<(String, &[u8])> = vec![
        ("driver.sh".into(), super::DRIVER.as_bytes()),
        ("eval.sh".into(), conf::eval_script().as_bytes()),
        ("dkms.conf".into(), job.conf),
    ];
    files.extend(job.overrides.iter().map(|(n, b)| (format!("overrides/{n}"), b.as_slice())));
    // plan/ exists from the start: Docker uploads only into a directory that exists.
    super::append_files(&mut input, CKMS_DIR, &["overrides", "plan"], &files).map_err(BuildError::Input)?;
    let input = input.into_inner().map_err(BuildError::Input)?;

    let cmd = vec!["bash".into(), format!("{ckms_dir}/driver.sh")];
    let mut spec = run_spec(job.recipe, job.image, cmd, Some(input.into()), job.timeout);
    spec.input.extend(tree);
    spec.volumes = vec![sources];
    spec.scratch = CONTAINER_TREE.to_string();
    spec.workdir = build_dir.clone();
    spec.limits.memory_bytes = Some(job.memory_bytes);
    spec.limits.pids = Some(job.pids);
    spec.follow = job.follow.clone();
    spec.outputs = vec![format!("{ckms_dir}/out")];
    let vars = EvalContext {
        conf_path: format!("{ckms_dir}/dkms.conf"),
        override_dir: (!job.overrides.is_empty()).then(|| format!("{ckms_dir}/overrides")),
        ..job.vars.clone()
    };
    spec.env.extend(conf::eval_env(&vars));
    for (name, value) in [
        ("ckms_dir", ckms_dir.clone()),
        ("ckms_build_dir", build_dir.clone()),
        ("ckms_source", super::inputs::sources_path(m, v)),
        ("ckms_volumes", format!("{CONTAINER_TREE} {CONTAINER_SOURCES}")),
        ("ckms_image_sources", job.image_sources.unwrap_or_default().to_string()),
        (
            "ckms_image_sources_link",
            job.image_sources
                .map(|to| {
                    let r = Relocation::new(CONTAINER_SOURCES, to);
                    r.link_target("").trim_end_matches('/').to_string()
                })
                .unwrap_or_default(),
        ),
        ("ckms_out", format!("{ckms_dir}/out")),
        ("ckms_space_kib", (job.space_bytes / 1024).to_string()),
        ("ckms_verbose", if job.follow.is_some() { "1" } else { "" }.to_string()),
    ] {
        spec.env.push(format!("{name}={value}"));
    }

    // The host's half of the exchange: the conf's directives in, the plan (or "abort") out.
    let decided: Mutex<Option<Option<Box<BuildPlan>>>> = Mutex::new(None);
    let answer = |json: &[u8]| -> Vec<(String, Vec<u8>)> {
        let plan = resolve(conf::from_output(0, json, b"", job.origin));
        let reply = match &plan {
            Some(plan) => plan_files(plan, job),
            None => vec![("abort".to_string(), Vec::new())],
        };
        if let Ok(mut d) = decided.lock() {
            *d = Some(plan);
        }
        reply
    };
    let exchange = Exchange { request: format!("{ckms_dir}/conf.json"), reply_dir: format!("{ckms_dir}/plan") };
    let outcome = engine.run_exchange(&spec, &exchange, &answer).await?;
    let mut written = Vec::new();
    let mut refused = Vec::new();
    for (_, tar) in &outcome.outputs {
        let unpacked = artifact::unpack_lenient(&tar[..], dest, 0, crate::engine::MAX_OUTPUT)?;
        written.extend(unpacked.written);
        refused.extend(unpacked.refused);
    }
    let decided = decided.into_inner().ok().flatten();
    let plan = match decided {
        Some(Some(plan)) => plan,
        Some(None) => return Ok(Ran::Stopped),
        None => {
            // No question was asked: bash could not evaluate the conf (or the run died first).
            let stderr = std::fs::read(dest.join("eval.err")).unwrap_or_default();
            let status = if outcome.timed_out { 124 } else { i32::try_from(outcome.exit_code).unwrap_or(1) };
            let status = if status == 0 { 1 } else { status };
            return Err(conf::from_output(status, b"", &[stderr, outcome.log.clone()].concat(), job.origin)
                .err()
                .map_or(BuildError::Input(std::io::Error::other("the build container stopped early")), Into::into));
        }
    };
    let make_log = written.iter().find(|p| p.as_os_str() == "make.log").map(|p| dest.join(p));
    // The driver is the container's PID 1: its exit status is not the build's to forge.
    let space_exceeded = !outcome.timed_out && outcome.exit_code == status::SPACE_EXCEEDED;
    // Only the modules the plan names count; anything else a Makefile slipped in is ignored.
    let wanted: Vec<PathBuf> =
        plan.modules.iter().map(|m| Path::new("modules").join(format!("{}.ko", m.built_name))).collect();
    let modules = written.iter().filter(|p| wanted.contains(p)).map(|p| dest.join(p)).collect();
    let built = Built {
        status: outcome.exit_code,
        timed_out: outcome.timed_out,
        space_exceeded,
        refused,
        log: outcome.log,
        make_log,
        make_seconds: std::fs::read_to_string(dest.join("make.us"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map(|us| us as f64 / 1e6),
        modules,
    };
    Ok(Ran::Built { plan, built })
}

/// The plan as files for the driver, one value per file (no quoting to get wrong); `ready`
/// comes last because the driver waits for it.
fn plan_files(plan: &BuildPlan, job: &BuildSpec<'_>) -> Vec<(String, Vec<u8>)> {
    let modules: String = plan
        .modules
        .iter()
        .map(|m| {
            let dir = if m.built_location.is_empty() { String::new() } else { format!("{}/", m.built_location) };
            format!("{dir}{}.ko\t{}\n", m.built_name, if m.strip { "yes" } else { "no" })
        })
        .collect();
    let header = format!(
        "DKMS make.log for {}-{} for kernel {} ({})",
        plan.package_name, plan.package_version, plan.kernel_release, job.vars.arch
    );
    let hooks = &plan.hooks;
    [
        ("make", plan.make_command(job.jobs)),
        ("patches", plan.patches.join("\n")),
        ("post_add", hooks.post_add.clone().unwrap_or_default()),
        ("pre_build", hooks.pre_build.clone().unwrap_or_default()),
        ("post_build", hooks.post_build.clone().unwrap_or_default()),
        ("modules", modules),
        ("header", header),
        ("ready", String::new()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.into_bytes()))
    .collect()
}

/// How long a module's install-time script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs one of a module's scripts (PRE_INSTALL, POST_INSTALL, POST_REMOVE) the way dkms does
/// (from the source directory, with its arguments, skipped with a warning if not executable),
/// but sandboxed in `image`: it sees a copy of the source and `vars`, never the host.
pub async fn run_script(
    engine: &dyn Runner,
    recipe: &Recipe,
    image: &str,
    source: &Path,
    vars: Vec<(String, String)>,
    script: &str,
) -> Result<RunOutcome, BuildError> {
    let scratch = recipe.config.workdir.trim_end_matches('/').to_string();
    let input = Content::dir(source, "source");
    let body = format!(
        "run={scratch}/source/$1; if [[ -x ${{run%% *}} ]]; then cd {scratch}/source && exec $run; \
         else echo \"Warning: the script is not executable: $1\" >&2; fi"
    );
    let cmd = vec!["bash".into(), "-c".into(), body, "ckms-script".into(), script.to_string()];
    let mut spec = run_spec(recipe, image, cmd, Some(input), SCRIPT_TIMEOUT);
    spec.outputs = vec![];
    spec.env.extend(vars.into_iter().map(|(k, v)| format!("{k}={v}")));
    Ok(engine.run(&spec).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::{DestPolicy, KernelFacts, Resolved};
    use crate::diagnose::{code, Diagnose};
    use crate::engine::fake::{Call, FakeEngine};
    use crate::engine::Owner;
    use crate::profile::Catalog;
    use crate::sign::{keys, Locations};
    use crate::testutil::{input_entries, tar_of};

    fn vars() -> EvalContext {
        EvalContext {
            conf_path: String::new(),
            override_dir: None,
            kernelver: "6.1.0-56-amd64".into(),
            arch: "x86_64".into(),
            kernel_source_dir: "/lib/modules/6.1.0-56-amd64/build".into(),
            dkms_tree: CONTAINER_TREE.into(),
            source_tree: "/usr/src".into(),
            install_tree: "/lib/modules".into(),
            module: "hello".into(),
            module_version: "1".into(),
        }
    }

    const CONF_JSON: &str = r#"{"context":{"kernel_source_dir":"/k","dkms_tree":"/var/lib/dkms"},
        "directives":{"PACKAGE_NAME":{"0":"hello"},"PACKAGE_VERSION":{"0":"1"},"BUILT_MODULE_NAME":{"0":"hello"}}}"#;

    fn resolver(raw: Result<RawConf, ConfError>) -> Option<Box<BuildPlan>> {
        let facts = KernelFacts { release: "6.1.0-56-amd64".into(), arch: "x86_64".into(), config: None };
        match conf::resolve(&raw.ok()?, &facts, &DestPolicy::Override("/updates/dkms".into())).ok()? {
            Resolved::Build(plan) => Some(plan),
            Resolved::Skipped { .. } => None,
        }
    }

    async fn run(engine: &FakeEngine, resolve: &Resolver<'_>) -> (Result<Ran, BuildError>, tempfile::TempDir) {
        let recipe = Catalog::load(&[]).unwrap().recipe("builder").unwrap().clone();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("hello.c"), "int x;").unwrap();
        let v = vars();
        let job = BuildSpec {
            recipe: &recipe,
            image: "img",
            source: src.path(),
            siblings: &[],
            image_sources: Some("/usr/ckms-src"),
            conf: b"PACKAGE_NAME=hello\n",
            overrides: &[],
            origin: "hello/dkms.conf",
            vars: &v,
            jobs: 3,
            timeout: Duration::from_secs(60),
            space_bytes: 64 << 20,
            memory_bytes: 1 << 30,
            pids: 512,
            follow: None,
        };
        let dest = tempfile::tempdir().unwrap();
        (run_build(engine, &job, resolve, dest.path()).await, dest)
    }

    #[tokio::test]
    async fn one_container_evaluates_asks_the_host_and_builds() {
        let engine = FakeEngine::new();
        engine.push_request(CONF_JSON);
        let out = tar_of(&[("make.log", b"ok\n"), ("modules/hello.ko", b"\x7fELF"), ("modules/extra.ko", b"x")]);
        engine.push_run(Ok(RunOutcome {
            exit_code: 0,
            timed_out: false,
            log: vec![],
            outputs: vec![("/var/lib/dkms/.ckms/out".into(), out)],
        }));
        let (ran, dest) = run(&engine, &resolver).await;
        let Ran::Built { plan, built } = ran.unwrap() else { panic!("not built") };
        assert_eq!(plan.modules[0].built_name, "hello");
        assert_eq!(built.modules, vec![dest.path().join("modules/hello.ko")], "only planned modules count");
        let calls = engine.calls();
        let Some(Call::Reply(files)) = calls.iter().find(|c| matches!(c, Call::Reply(_))) else { panic!("no reply") };
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.last(), Some(&"ready"), "ready comes last: the driver waits for it");
        let make = &files.iter().find(|(n, _)| n == "make").unwrap().1;
        assert!(String::from_utf8_lossy(make)
            .starts_with("make -j3 KERNELRELEASE=6.1.0-56-amd64 -C /k M=/var/lib/dkms/hello/1/build"));
        let Some(Call::Run(spec)) = calls.iter().find(|c| matches!(c, Call::Run(_))) else { panic!("no run") };
        assert_eq!(spec.scratch, CONTAINER_TREE);
        assert_eq!(spec.workdir, "/var/lib/dkms/hello/1/build");
        assert!(!spec.network);
        assert!(spec.env.contains(&"ckms_conf=/var/lib/dkms/.ckms/dkms.conf".to_string()));
        for var in [
            "ckms_source=/usr/src/hello-1",
            "ckms_volumes=/var/lib/dkms /usr/src",
            "ckms_image_sources=/usr/ckms-src",
            "ckms_image_sources_link=../ckms-src",
        ] {
            assert!(spec.env.contains(&var.to_string()), "{var}: {:?}", spec.env);
        }
        // The source goes in once, to /usr/src, as the build user's; the driver copies it to build/.
        assert_eq!(spec.volumes.len(), 1);
        assert_eq!(spec.volumes[0].path, "/usr/src");
        let sources = input_entries(&spec.volumes[0].input);
        assert_eq!(sources[1], ("hello-1/hello.c".to_string(), Owner::User, None));
        let tree = input_entries(&spec.input);
        assert!(tree.iter().all(|(p, _, _)| !p.ends_with("hello.c")), "{tree:?}");
        assert!(tree.contains(&("hello/1/source".into(), Owner::User, Some("/usr/src/hello-1".into()))));
    }

    /// Signing happens on the host after the build: the key pair next to the tree (where
    /// ckms keeps its own) must not reach the container in any form.
    #[tokio::test]
    async fn the_signing_key_never_enters_the_container() {
        let host = tempfile::tempdir().unwrap();
        let loc = Locations {
            conf_dir: host.path().join("etc/dkms"),
            dkms_dir: host.path().join("var/lib/dkms"),
            own_dir: host.path().join("var/lib/ckms"),
            kernel: None,
        };
        let paths = loc.resolve(None, None);
        let signer = keys::generate(&paths, false).unwrap();
        let source = host.path().join("var/lib/ckms/hello/1/source");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("hello.c"), "int x;").unwrap();
        std::fs::write(source.join("dkms.conf"), "PACKAGE_NAME=hello\n").unwrap();

        let engine = FakeEngine::new();
        engine.push_request(CONF_JSON);
        let out = tar_of(&[("make.log", b"ok\n"), ("modules/hello.ko", b"\x7fELF")]);
        engine.push_run(Ok(RunOutcome {
            exit_code: 0,
            timed_out: false,
            log: vec![],
            outputs: vec![("/var/lib/dkms/.ckms/out".into(), out)],
        }));
        let recipe = Catalog::load(&[]).unwrap().recipe("builder").unwrap().clone();
        let v = vars();
        let job = BuildSpec {
            recipe: &recipe,
            image: "img",
            source: &source,
            siblings: &[],
            image_sources: Some("/usr/ckms-src"),
            conf: b"PACKAGE_NAME=hello\n",
            overrides: &[],
            origin: "hello/dkms.conf",
            vars: &v,
            jobs: 1,
            timeout: Duration::from_secs(60),
            space_bytes: 64 << 20,
            memory_bytes: 1 << 30,
            pids: 512,
            follow: None,
        };
        let dest = host.path().join("var/lib/ckms/hello/.ckms-build-x/out");
        assert!(matches!(run_build(&engine, &job, &resolver, &dest).await.unwrap(), Ran::Built { .. }));

        let pem = std::fs::read(&paths.key).unwrap();
        let der = signer.key.pkey().private_key_to_der().unwrap();
        // A line of the PEM's base64 is enough to recognise the key inside any encoding.
        let line = pem.split(|b| *b == b'\n').nth(3).unwrap().to_vec();
        let key_path = paths.key.display().to_string().into_bytes();
        let needles: [(&str, &[u8]); 5] =
            [("PEM", &pem), ("DER", &der), ("a PEM line", &line), ("its path", &key_path), ("its name", b"mok.key")];
        let mut seen = Vec::new();
        for call in engine.calls() {
            match call {
                Call::Run(spec) => {
                    let volumes = spec.input.iter().chain(spec.volumes.iter().flat_map(|v| &v.input));
                    seen.extend(volumes.map(|i| i.tar().unwrap().into_owned()));
                    seen.push(spec.env.join("\n").into_bytes());
                    seen.push(spec.cmd.join("\n").into_bytes());
                }
                Call::Reply(files) => {
                    seen.extend(files.into_iter().map(|(name, bytes)| [name.into_bytes(), bytes].concat()))
                }
                _ => {}
            }
        }
        assert!(seen.iter().any(|s| s.windows(5).any(|w| w == b"int x")), "the source was uploaded");
        for (what, needle) in needles {
            assert!(
                !seen.iter().any(|s| s.windows(needle.len()).any(|w| w == needle)),
                "the key's {what} reached the container"
            );
        }
    }

    #[tokio::test]
    async fn a_resolver_that_stops_makes_the_driver_abort() {
        let engine = FakeEngine::new();
        engine.push_request(CONF_JSON);
        let (ran, _dest) = run(&engine, &|_| None).await;
        assert!(matches!(ran.unwrap(), Ran::Stopped));
        let replied = engine.calls().into_iter().find_map(|c| match c {
            Call::Reply(files) => Some(files),
            _ => None,
        });
        assert_eq!(replied.unwrap()[0].0, "abort");
    }

    #[tokio::test]
    async fn a_conf_bash_cannot_evaluate_is_a_conf_error() {
        let engine = FakeEngine::new();
        let out = tar_of(&[("eval.err", b"dkms.conf: line 2: syntax error near `fi'\n")]);
        engine.push_run(Ok(RunOutcome {
            exit_code: 8,
            timed_out: false,
            log: vec![],
            outputs: vec![("/var/lib/dkms/.ckms/out".into(), out)],
        }));
        let (ran, _dest) = run(&engine, &resolver).await;
        let err = ran.unwrap_err();
        assert_eq!(Diagnose::exit_code(&err), code::BAD_CONF);
        assert!(err.to_string().contains("syntax error"), "{err}");
    }
}
