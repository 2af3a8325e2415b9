//! Evaluating a dkms.conf in the sandbox.

use std::time::Duration;

use super::BuildError;
use crate::conf::{self, EvalContext, RawConf};
use crate::engine::{first_file, Runner};
use crate::image::run_spec;
use crate::profile::Recipe;

/// Where ckms's own files go inside the build volume.
const CKMS_DIR: &str = "ckms";
/// A dkms.conf that takes longer than this to evaluate is broken (or hostile).
const EVAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Evaluates `conf` (the bytes of a dkms.conf) in `image` with dkms's variables from `ctx`
/// (its `conf_path` and `override_dir` are replaced by where the files are uploaded), then the
/// `overrides` (file name, bytes: /etc/dkms/<m>[-<v>[-<kver>[-<arch>]]].conf) that apply.
/// `origin` names the file in errors.
pub async fn evaluate_conf(
    engine: &dyn Runner,
    recipe: &Recipe,
    image: &str,
    conf: &[u8],
    overrides: &[(String, Vec<u8>)],
    ctx: &EvalContext,
    origin: &str,
) -> Result<RawConf, BuildError> {
    let dir = format!("{}/{CKMS_DIR}", recipe.config.workdir.trim_end_matches('/'));
    let ctx = EvalContext {
        conf_path: format!("{dir}/dkms.conf"),
        override_dir: (!overrides.is_empty()).then(|| format!("{dir}/overrides")),
        ..ctx.clone()
    };
    let mut files: Vec<(String, &[u8])> =
        vec![("dkms.conf".into(), conf), ("eval.sh".into(), conf::eval_script().as_bytes())];
    files.extend(overrides.iter().map(|(name, bytes)| (format!("overrides/{name}"), bytes.as_slice())));
    let input = input_tar(&files).map_err(BuildError::Input)?;
    // stdout to a file: the log interleaves stdout with stderr, where the conf's own output goes.
    let cmd = vec!["bash".into(), "-c".into(), format!("bash {dir}/eval.sh >{dir}/conf.json")];
    let mut spec = run_spec(recipe, image, cmd, Some(input.into()), EVAL_TIMEOUT);
    spec.env.extend(conf::eval_env(&ctx));
    spec.outputs = vec![format!("{dir}/conf.json")];
    let outcome = engine.run(&spec).await?;
    let json = outcome.outputs.first().map(|(_, tar)| first_file(tar)).transpose().map_err(BuildError::Input)?;
    let status = if outcome.timed_out { 124 } else { i32::try_from(outcome.exit_code).unwrap_or(1) };
    Ok(conf::from_output(status, json.as_deref().unwrap_or_default(), &outcome.log, origin)?)
}

fn input_tar(files: &[(String, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    super::append_files(&mut b, CKMS_DIR, &["overrides"], files)?;
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{code, Diagnose};
    use crate::engine::fake::{Call, FakeEngine};
    use crate::engine::RunOutcome;
    use crate::profile::Catalog;

    fn ctx() -> EvalContext {
        EvalContext {
            conf_path: String::new(),
            override_dir: None,
            kernelver: "6.1.0-56-amd64".into(),
            arch: "x86_64".into(),
            kernel_source_dir: "/lib/modules/6.1.0-56-amd64/build".into(),
            dkms_tree: "/var/lib/dkms".into(),
            source_tree: "/usr/src".into(),
            install_tree: "/lib/modules".into(),
            module: "m".into(),
            module_version: "1".into(),
        }
    }

    fn one_file_tar(name: &str, bytes: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, bytes).unwrap();
        b.into_inner().unwrap()
    }

    #[tokio::test]
    async fn the_conf_runs_in_the_sandbox_and_its_json_comes_back() {
        let recipe = Catalog::load(&[]).unwrap().recipe("builder").unwrap().clone();
        let engine = FakeEngine::new();
        let json = r#"{"context":{},"directives":{"PACKAGE_NAME":{"0":"m"}}}"#;
        engine.push_run(Ok(RunOutcome {
            exit_code: 0,
            timed_out: false,
            log: b"a line the conf printed\n".to_vec(),
            outputs: vec![("/build/ckms/conf.json".into(), one_file_tar("conf.json", json.as_bytes()))],
        }));
        let raw =
            evaluate_conf(&engine, &recipe, "img", b"PACKAGE_NAME=m\n", &[], &ctx(), "m/dkms.conf").await.unwrap();
        assert_eq!(raw.nonempty("PACKAGE_NAME"), Some("m"));
        let Some(Call::Run(spec)) = engine.calls().into_iter().last() else { panic!("no run") };
        assert!(!spec.network, "no network for a dkms.conf");
        assert_ne!(spec.user.split(':').next(), Some("0"), "never root");
        assert!(spec.env.contains(&"ckms_conf=/build/ckms/dkms.conf".to_string()), "{:?}", spec.env);
        assert!(spec.env.contains(&"kernelver=6.1.0-56-amd64".to_string()));
    }

    #[tokio::test]
    async fn a_failing_conf_is_a_conf_error_with_the_bash_message() {
        let recipe = Catalog::load(&[]).unwrap().recipe("builder").unwrap().clone();
        let engine = FakeEngine::new();
        engine.push_run(Ok(RunOutcome {
            exit_code: 4,
            timed_out: false,
            log: b"dkms.conf: line 3: syntax error near unexpected token `fi'\n".to_vec(),
            outputs: vec![],
        }));
        let err = evaluate_conf(&engine, &recipe, "img", b"fi\n", &[], &ctx(), "m/dkms.conf").await.unwrap_err();
        assert_eq!(err.exit_code(), code::BAD_CONF);
        assert!(err.to_string().contains("syntax error") || format!("{err:?}").contains("syntax error"), "{err}");
    }
}
