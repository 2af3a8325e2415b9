use super::error::Error;
use ckms::context::Context;
use ckms::engine;

use super::Output;
use ckms::report::table;

pub fn profiles(ctx: &Context, out: &Output) -> Result<i32, Error> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        name: &'a str,
        description: &'a str,
        arch: &'a str,
        suites: Vec<&'a str>,
    }
    let rows: Vec<Row> = ctx
        .catalog
        .profiles
        .iter()
        .map(|p| Row {
            name: &p.name,
            description: &p.description,
            arch: &p.arch,
            suites: p.suites.iter().map(|s| s.suite.as_str()).collect(),
        })
        .collect();
    out.result(&rows, || {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| vec![r.name.to_string(), r.arch.to_string(), r.suites.join(" "), r.description.to_string()])
            .collect();
        table(&["PROFILE", "ARCH", "SUITES", "DESCRIPTION"], &cells)
    });
    Ok(0)
}

/// Exit code 0 when every check passes, 1 otherwise (like `podman system check`).
pub async fn doctor(ctx: &Context, out: &Output) -> Result<i32, Error> {
    let checks = engine::doctor::doctor(&ctx.config.engine_settings()).await;
    out.result(&checks, || {
        checks
            .iter()
            .map(|c| {
                let mark = if c.ok { "ok " } else { "FAIL" };
                let fix = c.fix.as_deref().map(|f| format!("\n      fix: {f}")).unwrap_or_default();
                format!("[{mark}] {}: {}{fix}\n", c.name, c.detail)
            })
            .collect()
    });
    Ok(if checks.iter().all(|c| c.ok) { 0 } else { 1 })
}
