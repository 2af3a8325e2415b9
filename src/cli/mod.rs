//! Command-line interface: clap definitions, dispatch, and how results and errors are printed.
//! Everything that does work lives in the library; this only translates.

mod docs;
mod error;
mod farm;
mod farm_build;
mod farm_follow;
mod farm_follow_kube;
mod farm_kube;
mod farm_kube_follow;
mod farm_progress;
mod farm_publish;
mod farm_run;
mod gate;
mod image;
mod kernels;
mod packages;
mod registry;
mod sign;
mod system;
mod verbs;

use clap::{CommandFactory, Parser, Subcommand};
use std::sync::Arc;

use ckms::config::Config;
use ckms::context::Context;
use ckms::report::{Human, JsonLines, Reporter, Voice};
use error::Error;

/// Where every command's --help lists the options all commands take.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "ckms",
    version,
    about = "Containerized Kernel Module Support: dkms-compatible module builds in rootless, sandboxed containers"
)]
pub struct Cli {
    /// Print events and results as JSON lines.
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,
    /// Print only warnings and errors.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    quiet: bool,
    /// Where downloads, indexes and layers are cached.
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL)]
    cache_dir: Option<std::path::PathBuf>,
    /// Container engine endpoint (unix:///path.sock or tcp://host:port).
    #[arg(long, global = true, value_name = "HOST", help_heading = GLOBAL)]
    engine: Option<String>,
    /// Ask the mirrors for fresh repository indexes even if the cached ones are recent.
    #[arg(long, global = true, help_heading = GLOBAL)]
    refresh: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the kernels the profiles' repositories offer (release, version, compiler).
    Kernels(kernels::Args),
    /// List the packages the profiles' repositories offer (name, version, suite; --json: Depends, URL, SHA-256).
    Packages(packages::Args),
    /// The prebuild farm: a module × kernel matrix built in parallel into a store keyed by inputs.
    #[command(subcommand)]
    Farm(farm::Command),
    /// The kernel hooks' gate: no kernel becomes the default before its modules are ready.
    #[command(subcommand)]
    Gate(gate::Command),
    /// Whether the configured caches hold this host's modules for a kernel, signed and proven
    /// to load (exit 0), or not (exit 1); nothing is built or installed.
    Ready(gate::ReadyArgs),
    /// Builder images: build, list, remove, prune.
    #[command(subcommand)]
    Image(image::Command),
    /// List the distro profiles.
    Profiles,
    /// Check the container engine and settings; print each problem with its fix.
    Doctor,
    /// Sign a module for Secure Boot, like the kernel's scripts/sign-file.
    Sign(sign::SignArgs),
    /// Check a module's signature against a certificate; name the signer and hash.
    VerifySignature(sign::VerifyArgs),
    /// Make a module signing key and certificate (the Machine Owner Key).
    #[command(alias = "generate_mok")]
    GenerateMok(sign::GenerateArgs),
    /// The Machine Owner Key: enroll it for Secure Boot.
    #[command(subcommand)]
    Mok(sign::MokCommand),
    #[command(flatten)]
    Verb(Box<verbs::Verb>),
    /// Write the man pages and shell completions of ckms and dkms under DIR, laid out as
    /// /usr/share (for packaging).
    #[command(hide = true)]
    GenerateDocs { dir: std::path::PathBuf },
}

pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    // Installed as `dkms` too (a symlink): then the command line is dkms's.
    let as_dkms = args.first().and_then(|a| std::path::Path::new(a).file_name()).is_some_and(|n| n == "dkms");
    let voice = match as_dkms {
        true => Voice::Dkms { verbose: args.iter().any(|a| a == "--verbose") },
        false => Voice::Ckms,
    };
    let cli = Cli::parse_from(if as_dkms { verbs::dkms_argv(args, &Cli::command()) } else { args });
    let report: Arc<dyn Reporter> = if cli.json { Arc::new(JsonLines) } else { Arc::new(Human::new(cli.quiet, voice)) };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error! cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli, report, voice)) {
        Ok(code) => code,
        Err(e) => {
            if as_dkms {
                // dkms sets every error off with an empty line.
                eprintln!();
            }
            eprintln!("Error! {e}");
            if let Some(hint) = e.hint() {
                eprintln!("{hint}");
            }
            e.exit_code()
        }
    }
}

async fn run(cli: Cli, report: Arc<dyn Reporter>, voice: Voice) -> Result<i32, Error> {
    // Packaging time: no settings read, no cache made.
    if let Command::GenerateDocs { dir } = &cli.command {
        return docs::generate(&Output { json: cli.json, dkms: false }, dir);
    }
    let mut config = Config::load()?;
    if let Some(dir) = cli.cache_dir {
        config.cache_dir = Some(dir);
    }
    if let Some(host) = cli.engine {
        config.engine.host = Some(host);
    }
    let mut ctx = Context::new(config, report, cli.refresh)?;
    ctx.as_dkms = voice != Voice::Ckms;
    let out = Output { json: cli.json, dkms: voice != Voice::Ckms };
    let done = match cli.command {
        Command::Kernels(args) => kernels::run(&ctx, &out, args).await,
        Command::Packages(args) => packages::run(&ctx, &out, args).await,
        Command::Image(cmd) => image::run(&ctx, &out, cmd).await,
        Command::Gate(cmd) => gate::run(&ctx, &out, cmd).await,
        Command::Ready(args) => gate::ready(&ctx, &out, args).await,
        Command::Farm(cmd) => farm::run(&ctx, &out, cmd).await,
        Command::Profiles => system::profiles(&ctx, &out),
        Command::Doctor => system::doctor(&ctx, &out).await,
        Command::Sign(args) => sign::sign(&ctx, &out, args),
        Command::VerifySignature(args) => sign::verify_signature(&ctx, &out, args),
        Command::GenerateMok(args) => sign::generate_mok(&ctx, &out, args),
        Command::Mok(cmd) => sign::mok(&ctx, &out, cmd),
        Command::Verb(verb) => verbs::run(&ctx, &out, *verb).await,
        Command::GenerateDocs { dir } => docs::generate(&out, &dir),
    };
    match done {
        // As dkms, a failure is said in the words of the host's dkms release.
        Err(e) if voice != Voice::Ckms && !cli.json => {
            eprintln!("{}", ctx.dialect().error(e.dkms().as_ref(), &e.to_string(), e.hint().as_deref()));
            Ok(e.exit_code())
        }
        done => done,
    }
}

/// How results reach stdout: a table for people, one JSON object for machines.
pub struct Output {
    json: bool,
    /// Called as `dkms`: outcomes dkms treats as failures are failures (a re-add).
    dkms: bool,
}

impl Output {
    /// Prints `value` as JSON (one line), or `human` otherwise.
    pub fn result<T: serde::Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            let doc = serde_json::json!({ "event": "result", "result": value });
            ckms::report::outln(doc);
        } else {
            let text = human();
            if !text.is_empty() {
                ckms::report::outln(text.trim_end());
            }
        }
    }
}
