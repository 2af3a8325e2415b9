//! Module signing verbs: `sign`, `verify-signature`, `generate-mok`, `mok enroll`.

use std::path::{Path, PathBuf};

use super::error::Error;
use ckms::context::Context;
use ckms::sign::{self, KeyPaths, Origin};

use super::Output;

/// Where the key pair is: --key/--cert, else the usual places (docs/signing.md).
#[derive(clap::Args, Debug, Default)]
pub struct KeyArgs {
    /// Private key (PEM); default: framework.conf's mok_signing_key, dkms's or ckms's mok.key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Certificate (DER or PEM); default: framework.conf's mok_certificate, dkms's or ckms's mok.pub.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The module; .ko.xz/.ko.zst/.ko.gz are decompressed, signed and compressed again.
    file: PathBuf,
    #[command(flatten)]
    keys: KeyArgs,
    /// Hash algorithm (the kernel's CONFIG_MODULE_SIG_HASH).
    #[arg(long, default_value = "sha256")]
    hash: String,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The module (.ko, or compressed).
    file: PathBuf,
    /// Certificate to check against; default: the one ckms signs with.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Replace an existing pair (the new certificate must be enrolled again).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(clap::Subcommand)]
pub enum MokCommand {
    /// Print (or with --run, run) the `mokutil --import` that enrolls the certificate at next boot.
    Enroll {
        /// Run mokutil now (it asks for a one-time password).
        #[arg(long)]
        run: bool,
        /// The certificate to enroll; default: the one ckms signs with.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
    },
}

fn key_paths(ctx: &Context, keys: &KeyArgs) -> KeyPaths {
    ctx.config.key_locations(&ctx.config.dkms_tree()).resolve(keys.key.as_deref(), keys.cert.as_deref())
}

pub fn sign(ctx: &Context, out: &Output, args: SignArgs) -> Result<i32, Error> {
    let paths = key_paths(ctx, &args.keys);
    let signer = sign::signer(&paths, sign::pin().as_deref(), ctx.reporter())?;
    sign::sign_file(&args.file, &signer, &args.hash)?;
    #[derive(serde::Serialize)]
    struct Signed<'a> {
        file: &'a Path,
        hash: &'a str,
        key: String,
        cert: &'a Path,
        cert_sha256: String,
    }
    let done = Signed {
        file: &args.file,
        hash: &args.hash,
        key: paths.key_shown(),
        cert: &paths.cert,
        cert_sha256: signer.fingerprint(),
    };
    out.result(&done, || {
        format!(
            "Signed {} ({}, key {}, certificate {})\n",
            done.file.display(),
            done.hash,
            done.key,
            done.cert.display()
        )
    });
    Ok(0)
}

pub fn verify_signature(ctx: &Context, out: &Output, args: VerifyArgs) -> Result<i32, Error> {
    let cert_path = args.cert.unwrap_or_else(|| key_paths(ctx, &KeyArgs::default()).cert);
    let cert = sign::keys::load_cert(&cert_path)?;
    let (module, _) = sign::read_module(&args.file)?;
    let v = sign::verify(&module, &cert, &args.file, &cert_path)?;
    out.result(&v, || {
        format!(
            "{}: valid signature by {}, verified with {} (SHA-256 {})\n",
            args.file.display(),
            v.signer,
            cert_path.display(),
            v.cert_sha256
        )
    });
    Ok(0)
}

pub fn generate_mok(ctx: &Context, out: &Output, args: GenerateArgs) -> Result<i32, Error> {
    let own = ctx.config.key_locations(&ctx.config.dkms_tree());
    let in_use = own.resolve(None, None);
    // Without --key/--cert the pair goes to ckms's own place, never over dkms's or a configured one.
    let paths = KeyPaths {
        key: args.keys.key.unwrap_or_else(|| own.own_dir.join(sign::keys::KEY_FILE)),
        cert: args.keys.cert.unwrap_or_else(|| own.own_dir.join(sign::keys::CERT_FILE)),
        origin: Origin::Own,
    };
    let made = sign::keys::generate(&paths, args.force)?;
    if in_use.key != paths.key || in_use.cert != paths.cert {
        ctx.reporter().warn(format!(
            "builds sign with {} and {} (found first), not with the pair just made",
            in_use.key.display(),
            in_use.cert.display()
        ));
    }
    #[derive(serde::Serialize)]
    struct Made<'a> {
        key: &'a Path,
        cert: &'a Path,
        cert_sha256: String,
    }
    let done = Made { key: &paths.key, cert: &paths.cert, cert_sha256: made.fingerprint() };
    out.result(&done, || {
        format!(
            "Created the signing key {} (mode 0600) and certificate {} (SHA-256 {}).\n\
             Next: `ckms mok enroll` to enroll the certificate for Secure Boot.\n",
            done.key.display(),
            done.cert.display(),
            done.cert_sha256
        )
    });
    Ok(0)
}

pub fn mok(ctx: &Context, out: &Output, cmd: MokCommand) -> Result<i32, Error> {
    let MokCommand::Enroll { run, cert } = cmd;
    let cert = cert.unwrap_or_else(|| key_paths(ctx, &KeyArgs::default()).cert);
    let command = sign::keys::enroll_command(&cert).join(" ");
    if run {
        sign::keys::enroll(&cert)?;
    } else {
        // A certificate that would not load is reported now, not after the reboot.
        sign::keys::load_cert(&cert)?;
    }
    #[derive(serde::Serialize)]
    struct Enroll<'a> {
        command: &'a str,
        ran: bool,
        next: String,
    }
    let next = sign::keys::enroll_instructions(&cert);
    let done = Enroll { command: &command, ran: run, next };
    out.result(&done, || {
        let what = if run { "Requested the enrollment with" } else { "Run as root:" };
        format!("{what}\n  {}\n{}\n", done.command, done.next)
    });
    Ok(0)
}
