//! ckms: Containerized Kernel Module Support.
//!
//! The library behind the `ckms` binary. One module per responsibility:
//! - [`profile`]: distro knowledge (suites, package sets, kernel naming), read from `profiles/`;
//! - [`build`]: sandboxed runs in builder images: dkms.conf evaluation, the build, module scripts;
//! - [`conf`]: dkms.conf semantics: evaluated by bash in the sandbox, resolved per kernel here;
//! - [`config`]: user settings (mirrors, engine, cache) from files and the environment;
//! - [`repo`]: the distro's package repository: signed indexes, dependency closure, downloads;
//! - [`cache`]: the content-addressed store every download and layer goes through;
//! - [`deb`]: reading `.deb` packages;
//! - [`source`]: module sources from Debian packages (.deb, repository, dpkg database) and their Depends;
//! - [`kernel`]: which kernels a profile's repository offers;
//! - [`image`]: assembling builder images (layers, OCI archive) and loading them into an engine;
//! - [`engine`]: container engines (Docker, Podman) behind one small trait;
//! - [`tree`]: dkms's on-disk layout (sources, built and installed modules) and `status`;
//! - [`lifecycle`]: dkms's verbs (add, build, install, ...) over the tree, the builds and the installs;
//! - [`install`]: putting built modules into the host's /lib/modules and taking them out again;
//! - [`sign`]: module signatures for Secure Boot, made on the host in the kernel's format;
//! - [`kube`]: the farm scaled out on Kubernetes: Indexed Jobs rendered, their results collected;
//! - [`publish`]: a farm store's modules as hosts consume them: a signed apt repository, system extensions;
//! - [`oci`]: OCI images leaving ckms (KMM's, the farm's pods'): layers, pushes to a registry, tags;
//! - [`k8s`]: Kubernetes objects as text: object names and YAML, for `kube` and `publish`'s KMM `Module`;
//! - [`report`]: progress and events for people or machines.

pub mod artifact;
pub mod build;
pub mod cache;
pub mod conf;
pub mod config;
pub mod context;
pub mod deb;
pub mod diagnose;
pub mod engine;
pub mod error;
pub mod farm;
pub mod image;
pub mod install;
pub mod k8s;
pub mod kernel;
pub mod kube;
pub mod lifecycle;
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
