//! Prebuilt modules moving between machines (`mktarball --binaries-only`, `ldtarball`,
//! `install`), with the engine under test on one side and nothing on the other.
//!
//! The build machine is this one: ckms builds tests/fixtures/hello-dkms for bookworm's kernel
//! on the engine and writes a binaries-only tarball (signed modules, build records, dkms.conf).
//!
//! The other machine is a container, and an honest one: its image is assembled by ckms's own
//! image code from tests/fixtures/host-image/images/host.toml, i.e. the profile's base layer
//! (the bottom layer of every builder image: bash, coreutils, kmod, make, libc6-dev; no
//! compiler, which lives in the builder's toolchain layer; the profile's /usr/bin/cc link is
//! there, dangling) plus libssl3, the one library the ckms binary links beyond libc. The test
//! checks inside that no compiler runs or exists and that there are no kernel headers; the container runs without network and without any engine socket, so a ckms that
//! tried to reach an engine (exit 40) or a mirror (exit 30) would fail the test. The ckms binary
//! of this build goes in (the host is bookworm too, so its glibc fits), with the tarball and the
//! build machine's certificate (mok.pub, not the key). There ckms loads the tarball, refuses
//! the install while the certificate is missing, installs (signatures checked), runs depmod,
//! and `status` says installed; `build` is refused with dkms's words; then the same as `dkms`
//! with options before the verb and relative --dkmstree/--sourcetree/--installtree.
//!
//! Included by tests/modules_{podman,docker}.rs with the engine's env variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ckms::engine::Runner;

use crate::support::{ckms, engine_host, shared_cache, Outcome};

const KERNEL: &str = "6.1.0-56-amd64";
const ARCH: &str = "x86_64";

/// What the other machine does; each step's stdout, stderr and exit code land in out/.
const SCRIPT: &str = r#"
K=$1
cd /host
mkdir -p out
step() { local name=$1; shift; "$@" >"out/$name.out" 2>"out/$name.err"; echo $? >"out/$name.code"; }
# What this machine lacks.
step compiler bash -c 'command -v gcc cc c99 clang x86_64-linux-gnu-gcc-12; find / -xdev -type f \( -name "cc1*" -o -name "*gcc-[0-9]*" -o -name "clang*" \)'
step gcc gcc --version
step headers ls -d "/lib/modules/$K/build" "/usr/src/linux-headers-$K"
step doctor ./ckms doctor
# An installed kernel's module directory, as its package leaves it.
kernel_dir() { mkdir -p "$1/lib/modules/$K" && : >"$1/lib/modules/$K/modules.order" && : >"$1/lib/modules/$K/modules.builtin" && depmod -b "$1" -a "$K"; }
kernel_dir /host/root
C="--root /host/root"
step ldtarball ./ckms ldtarball hello.dkms.tar.gz $C
step status-loaded ./ckms status $C
step install-without-cert ./ckms install -m hello -v 1.0 -k "$K" $C
mkdir -p root/var/lib/ckms && cp farm-mok.pub root/var/lib/ckms/mok.pub
step install ./ckms install -m hello -v 1.0 -k "$K" $C
step status ./ckms status $C
step build ./ckms build hello/1.0 -k "$K" --force $C
# As dkms, relative trees.
ln -s ckms dkms
kernel_dir /host/dk
T="--dkmstree dk/var/lib/dkms --sourcetree dk/usr/src --installtree dk/lib/modules"
step dkms-ldtarball ./dkms ldtarball --archive=hello.dkms.tar.gz $T
mkdir -p dk/var/lib/dkms && cp farm-mok.pub dk/var/lib/dkms/mok.pub
step dkms-install ./dkms -m hello -v 1.0 -k "$K" install $T
step dkms-status ./dkms status -m hello $T
"#;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The build machine: hello built for KERNEL, and its binaries-only tarball.
fn build_machine(engine: &str, dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let root = dir.join("farm");
    let source = root.join("usr/src/hello-1.0");
    std::fs::create_dir_all(&source).unwrap();
    for f in ["dkms.conf", "Kbuild", "hello.c"] {
        std::fs::copy(fixture("hello-dkms").join(f), source.join(f)).unwrap();
    }
    let cache = shared_cache();
    let run = |args: &[&str]| -> Outcome {
        let mut all = vec!["--engine", engine, "--cache-dir", cache.to_str().unwrap()];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--root", root.to_str().unwrap()]);
        let run = ckms(all).run();
        run.expect_code(0);
        run
    };
    run(&["build", "hello/1.0", "-k", KERNEL]);
    let tarball = dir.join("hello.dkms.tar.gz");
    let made =
        run(&["mktarball", "hello/1.0", "-k", KERNEL, "--binaries-only", "--archive", tarball.to_str().unwrap()]);
    assert_eq!(made.stdout.trim(), format!("Tarball location: {}", tarball.display()), "{made}");
    let built = root.join(format!("var/lib/ckms/hello/1.0/{KERNEL}/{ARCH}/module/hello.ko"));
    let built = std::fs::read(&built).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
    (tarball, root.join("var/lib/ckms/mok.pub"), built)
}

fn file(path: &str, contents: &[u8], mode: u32, tar: &mut tar::Builder<Vec<u8>>) {
    let mut h = tar::Header::new_gnu();
    h.set_size(contents.len() as u64);
    h.set_mode(mode);
    tar.append_data(&mut h, path, contents).unwrap();
}

/// The other machine: the host image on the engine, SCRIPT run in it; what it left in out/,
/// root/ and dk/, by path.
async fn other_machine(engine: &str, tarball: &Path, cert: &Path) -> (BTreeMap<String, Vec<u8>>, String) {
    let api = ckms::engine::DockerApi::connect(engine, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{engine} does not answer: {e}"));
    let config = ckms::config::Config::load_from(&[], BTreeMap::new()).unwrap();
    let ctx = ckms::context::Context::of(
        config,
        ckms::profile::Catalog::load(&[fixture("host-image")]).unwrap(),
        ckms::cache::Cache::open(shared_cache()).unwrap(),
        std::sync::Arc::new(ckms::report::Silent),
        false,
    );
    let (profile, index, kernel) = ctx.find_kernel(KERNEL, None).await.unwrap_or_else(|e| panic!("{e}"));
    let recipe = ctx.catalog.recipe("host").unwrap();
    let plan = ckms::image::plan(ckms::image::Sources::native(profile, &index), recipe, &kernel, &[]).unwrap();
    let names: Vec<&str> = plan.packages().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"kmod") && names.contains(&"libssl3"), "{names:?}");
    let compiler_or_headers = regex::Regex::new(r"^(gcc|cpp|clang)(-\d+)?$|^linux-headers-").unwrap();
    assert!(!names.iter().any(|n| compiler_or_headers.is_match(n)), "{names:?}");
    let image = ckms::image::build(&ctx.cache, &api, profile, recipe, &plan, false, ctx.reporter())
        .await
        .unwrap_or_else(|e| panic!("building the host image: {e}"));

    let mut input = tar::Builder::new(Vec::new());
    let bin = std::fs::read(env!("CARGO_BIN_EXE_ckms")).unwrap();
    file("ckms", &bin, 0o755, &mut input);
    file("hello.dkms.tar.gz", &std::fs::read(tarball).unwrap(), 0o644, &mut input);
    file("farm-mok.pub", &std::fs::read(cert).unwrap(), 0o644, &mut input);
    let cmd = ["bash", "-c", SCRIPT, "run", KERNEL].map(str::to_string).to_vec();
    let mut spec = ckms::image::run_spec(
        recipe,
        &image.reference,
        cmd,
        Some(input.into_inner().unwrap().into()),
        Duration::from_secs(600),
    );
    spec.outputs = ["/host/out", "/host/root", "/host/dk"].map(str::to_string).to_vec();
    assert!(!spec.network, "the other machine has no network");
    let outcome = api.run(&spec).await.unwrap_or_else(|e| panic!("running the host image: {e}"));
    let log = String::from_utf8_lossy(&outcome.log).into_owned();
    assert_eq!(outcome.exit_code, 0, "the script failed:\n{log}");
    let mut files = BTreeMap::new();
    for (path, tar) in &outcome.outputs {
        let top = Path::new(path).file_name().unwrap().to_string_lossy().into_owned();
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = format!("{top}/{}", entry.path().unwrap().display());
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            files.insert(name, link.map(String::into_bytes).unwrap_or(bytes));
        }
    }
    (files, log)
}

/// One step of SCRIPT: (exit code, stdout, stderr).
fn step(files: &BTreeMap<String, Vec<u8>>, name: &str) -> (i32, String, String) {
    let text = |ext: &str| {
        let bytes = files.get(&format!("out/{name}.{ext}")).unwrap_or_else(|| panic!("no out/{name}.{ext}"));
        String::from_utf8_lossy(bytes).into_owned()
    };
    (text("code").trim().parse().unwrap(), text("out"), text("err"))
}

pub fn scenario(var: &str) {
    let started = Instant::now();
    let engine = engine_host(var);
    let _disk = crate::support::disk_shared();
    let dir = tempfile::Builder::new().prefix("ckms-binaries-").tempdir().unwrap();
    let (tarball, cert, built) = build_machine(&engine, dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (files, log) = runtime.block_on(other_machine(&engine, &tarball, &cert));
    let ok = |name: &str| {
        let (code, out, err) = step(&files, name);
        assert_eq!(code, 0, "{name} failed:\n{out}\n{err}");
        (out, err)
    };

    // Nothing to build with.
    let (_, out, _) = step(&files, "compiler");
    assert!(out.trim().is_empty(), "a compiler on the other machine: {out}");
    assert_ne!(step(&files, "gcc").0, 0, "gcc runs on the other machine");
    assert_ne!(step(&files, "headers").0, 0, "kernel headers on the other machine");
    assert_ne!(step(&files, "doctor").0, 0, "an engine on the other machine:\n{log}");

    // ldtarball: dkms's binaries-only stub (the dkms.conf alone) and the build.
    let (_, err) = ok("ldtarball");
    let stub = "root/var/lib/ckms/hello/1.0/source";
    assert!(files.contains_key(&format!("{stub}/dkms.conf")), "{err}");
    assert_eq!(files.keys().filter(|k| k.starts_with(&format!("{stub}/"))).count(), 1, "only the dkms.conf");
    assert_eq!(ok("status-loaded").0.trim(), format!("hello/1.0, {KERNEL}, {ARCH}: built"));

    // Signatures are checked as for any install: without the signing certificate, nothing.
    let (code, _, err) = step(&files, "install-without-cert");
    assert_eq!(code, 50, "{err}");
    assert!(err.contains("mok.pub") && err.contains("certificate"), "{err}");
    let installed = format!("root/lib/modules/{KERNEL}/updates/dkms/hello.ko");
    let (_, err) = ok("install");
    assert!(err.contains("Signature of hello.ko verified"), "{err}");
    assert!(files.get(&installed) == Some(&built), "the installed module is the one built on the other machine");
    let dep = String::from_utf8_lossy(&files[&format!("root/lib/modules/{KERNEL}/modules.dep")]).into_owned();
    assert!(dep.lines().any(|l| l == "updates/dkms/hello.ko:"), "depmod did not index it: {dep}");
    assert_eq!(ok("status").0.trim(), format!("hello/1.0, {KERNEL}, {ARCH}: installed"));
    let (code, _, err) = step(&files, "build");
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("does not appear to have module source located within it"), "{err}");

    // The same as `dkms`, with relative trees taken from the current directory.
    ok("dkms-ldtarball");
    ok("dkms-install");
    assert_eq!(ok("dkms-status").0.trim(), format!("hello/1.0, {KERNEL}, {ARCH}: installed"));
    let dep = String::from_utf8_lossy(&files[&format!("dk/lib/modules/{KERNEL}/modules.dep")]).into_owned();
    assert!(dep.lines().any(|l| l == "updates/dkms/hello.ko:"), "depmod did not index it: {dep}");
    let link = &files[&format!("dk/var/lib/dkms/hello/kernel-{KERNEL}-{ARCH}")];
    assert_eq!(String::from_utf8_lossy(link), format!("1.0/{KERNEL}/{ARCH}"));
    eprintln!("binaries-only across machines on {var}: {:.1} s", started.elapsed().as_secs_f64());
}
