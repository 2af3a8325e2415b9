//! `ckms farm publish`: its options, and the run (follow runs it the same way).

use std::path::PathBuf;

use super::error::Error;
use ckms::context::Context;
use ckms::publish::{signer::ModuleCert, sysext::Filesystem, Format};

use super::registry::RegistryArgs;
use super::Output;

#[derive(clap::Args)]
pub struct PublishArgs {
    /// The store directory `farm build` wrote.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// What to write: apt, sysext, cache or kmm.
    #[arg(long, value_name = "FORMAT", value_parser = |s: &str| s.parse::<Format>())]
    format: Format,
    /// Where (replaced whole, atomically; default: <store>/publish/<format>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The farm's OpenPGP secret key (armored, no passphrase): signs the apt repository or the cache's index.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The certificate modules are signed with now (default: the one `farm build` signs with on
    /// this host): no module signed by another is published; cache: published for hosts.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// kmm: push the images to this registry (host[:port]) over the OCI distribution API.
    #[arg(long, value_name = "HOST")]
    registry: Option<String>,
    #[command(flatten)]
    registry_access: RegistryArgs,
    /// kmm: the images' repository; each is tagged <REF>:<kver> (default localhost/ckms/<name>).
    #[arg(long, value_name = "REF")]
    repository: Option<String>,
    /// kmm: load the images into the engine too.
    #[arg(long)]
    load: bool,
    /// Only this module (repeatable; default: every built module).
    #[arg(short = 'm', long = "module", value_name = "MODULE")]
    modules: Vec<String>,
    /// Only this kernel release (repeatable; default: every kernel).
    #[arg(short = 'k', long = "kernel", value_name = "KVER")]
    kernels: Vec<String>,
    /// Publish the other pairs when entries are damaged, leaving those out (each is named);
    /// without it a damaged entry stops publishing (exit 35).
    #[arg(long)]
    skip_damaged: bool,
    /// sysext: one image per kernel, NAME-<kernel>.raw, holding every selected module
    /// (default: one image per module and kernel). kmm: the images' and the Module's name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// sysext: the image's file system: erofs or squashfs.
    #[arg(long, value_name = "FS", default_value = "erofs", value_parser = |s: &str| s.parse::<Filesystem>())]
    filesystem: Filesystem,
    /// sysext: the target's os-release ID (default: the kernel's profile's).
    #[arg(long, value_name = "ID")]
    os_id: Option<String>,
    /// sysext: the target's os-release VERSION_ID (default: the kernel's profile's).
    #[arg(long, value_name = "VERSION")]
    os_version_id: Option<String>,
    /// sysext: match the host's SYSEXT_LEVEL instead of VERSION_ID.
    #[arg(long, value_name = "LEVEL", conflicts_with = "os_version_id")]
    sysext_level: Option<String>,
    /// sysext: the target's systemd architecture name (default: the profile's, e.g. x86-64).
    #[arg(long, value_name = "ARCH")]
    os_architecture: Option<String>,
}

/// A `farm publish` command line, from one of follow's `[[publish]]` tables.
#[derive(clap::Parser)]
#[command(name = "farm publish", no_binary_name = true)]
struct PublishLine {
    #[command(flatten)]
    args: PublishArgs,
}

pub(super) fn parse_publish(argv: &[String]) -> Result<PublishArgs, clap::Error> {
    <PublishLine as clap::Parser>::try_parse_from(argv).map(|l| l.args)
}

impl PublishArgs {
    pub(super) fn out(&self) -> Option<&std::path::Path> {
        self.out.as_deref()
    }
}

pub(super) async fn publish(ctx: &Context, out: &Output, args: PublishArgs) -> Result<i32, Error> {
    let registry = args.registry.map(|host| args.registry_access.registry(host)).transpose()?;
    let module_cert = ModuleCert::configured(ctx, args.cert.as_deref())?;
    let req = ckms::publish::Request {
        module_cert,
        store: args.store,
        format: args.format,
        out: args.out,
        key: args.key,
        registry,
        repository: args.repository,
        load: args.load,
        skip_damaged: args.skip_damaged,
        modules: args.modules,
        kernels: args.kernels,
        name: args.name,
        filesystem: args.filesystem,
        os: ckms::publish::OsOverride {
            id: args.os_id,
            version_id: args.os_version_id,
            sysext_level: args.sysext_level,
            architecture: args.os_architecture,
        },
    };
    let published = match req.format {
        Format::Kmm if req.load => {
            let conn = ctx.image_engine().await?;
            ckms::publish::kmm::publish(&req, ctx, Some(conn.engine.as_ref())).await?
        }
        Format::Kmm => ckms::publish::kmm::publish(&req, ctx, None).await?,
        _ => ckms::publish::publish(&req, &ctx.catalog)?,
    };
    out.result(&published, || {
        let mut text: String =
            published.files.iter().map(|f| format!("{}\n", published.out.join(f).display())).collect();
        text += &format!(
            "{} file(s) written to {} ({})\n",
            published.files.len(),
            published.out.display(),
            published.format
        );
        text + &published.notes.iter().map(|n| format!("{n}\n")).collect::<String>()
    });
    Ok(0)
}
