//! ckms: Containerized Kernel Module Support.
//!
//! The library behind the `ckms` binary. One module per responsibility:
//! - [`profile`]: distro knowledge (suites, package sets, kernel naming), read from `profiles/`;
//! - [`config`]: user settings (mirrors, engine, cache) from files and the environment;
//! - [`context`]: what one invocation shares (settings, profiles, cache, reporter) and the steps every
//!   command takes (a profile's index, a kernel, an engine connection);
//! - [`repo`]: the distro's package repository: signed indexes, dependency closure, downloads;
//! - [`cache`]: the content-addressed store every download and layer goes through;
//! - [`deb`]: reading `.deb` packages;
//! - [`source`]: module sources from Debian packages (.deb, repository, dpkg database) and their Depends;
//! - [`kernel`]: which kernels a profile's repository offers;
//! - [`image`]: assembling builder images (layers, OCI archive) and loading them into an engine;
//! - [`engine`]: container engines (Docker, Podman) behind small traits (`Images`, `Runner`, `Engine`);
//! - [`artifact`]: what comes back from a container, untrusted: unpacked as regular files only, inside
//!   the destination, size-limited;
//! - [`confine`]: files named from across a trust boundary (a pod's result, a store's record) read
//!   only as plain relative paths inside their directory, regular files only, bounded;
//! - [`conf`]: dkms.conf semantics: evaluated by bash in the sandbox, resolved per kernel here;
//! - [`build`]: sandboxed runs in builder images: dkms.conf evaluation, the build, module scripts;
//! - [`pair`]: one (module, kernel, arch) pair, the core the features share: its inputs and key, its
//!   build in the sandbox (realisation), and its substitution by key;
//! - [`tree`]: dkms's on-disk layout (sources, built and installed modules) and `status`;
//! - [`lifecycle`]: dkms's verbs (add, build, install, ...) over the tree, the builds and the installs;
//! - [`makelog`]: a failed build's make.log read for its first compiler or linker error;
//! - [`install`]: putting built modules into the host's /lib/modules and taking them out again;
//! - [`sign`]: module signatures for Secure Boot, made on the host in the kernel's format;
//! - [`verify`]: proof of load: the target kernel booted in a sandboxed VM, the built modules loaded;
//! - [`farm`]: the prebuild farm: sources × kernels evaluated into keyed pairs, set against a store,
//!   built in parallel, reported;
//! - [`kube`]: the farm scaled out on Kubernetes: Indexed Jobs rendered, their results collected;
//! - [`publish`]: a farm store's modules as hosts consume them: a signed apt repository, system
//!   extensions, a binary cache, KMM images;
//! - [`prebuilt`]: the host side of a farm's binary cache: the pair's key computed here, the signed
//!   index checked, the entry fetched and installed as a local build would be;
//! - [`oci`]: OCI images leaving ckms (KMM's, the farm's pods'): layers, pushes to a registry, tags;
//! - [`k8s`]: Kubernetes objects as text: object names and YAML, for `kube` and `publish`'s KMM `Module`;
//! - [`report`]: progress and events for people or machines;
//! - [`diagnose`]: what every error tells besides its message: the exit code and a hint (imports
//!   nothing: the bottom of the graph);
//! - [`error`]: `Usage`, a bad command line or setting (every module's own errors are its enum).

pub mod artifact;
pub mod build;
pub mod cache;
pub mod conf;
pub mod config;
pub mod confine;
pub mod context;
pub mod deb;
pub mod diagnose;
pub mod dialect;
pub mod engine;
pub mod error;
pub mod farm;
pub mod framework;
pub mod gate;
pub mod image;
pub mod install;
pub mod k8s;
pub mod kernel;
pub mod kube;
pub mod lifecycle;
pub mod lockfile;
pub mod makelog;
pub mod oci;
pub mod pair;
pub mod prebuilt;
pub mod profile;
pub mod publish;
pub mod repo;
pub mod report;
pub mod sign;
pub mod source;
#[cfg(test)]
mod testutil;
pub mod tree;
pub mod verify;
