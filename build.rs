// Embeds profiles/*.toml, profiles/dkms/*.toml and images/*.toml so that the binary works on its own; files in the
// configured profile directories still take precedence (see src/profile.rs).
use std::{env, fs, path::Path};

fn embed(dir: &str, name: &str, out: &mut String) {
    let mut names: Vec<_> =
        fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    names.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "toml"));
    names.sort();
    out.push_str(&format!("pub const {name}: &[(&str, &str)] = &[\n"));
    for p in names {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        // Relative to the crate, not this script's checkout: worktrees may share a target dir.
        let rel = format!("/{dir}/{stem}.toml");
        out.push_str(&format!("    ({stem:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {rel:?}))),\n"));
    }
    out.push_str("];\n");
    println!("cargo:rerun-if-changed={dir}");
}

fn main() {
    let mut out = String::new();
    embed("profiles", "PROFILES", &mut out);
    embed("profiles/dkms", "DIALECTS", &mut out);
    embed("images", "IMAGES", &mut out);
    let dest = Path::new(&env::var("OUT_DIR").unwrap_or_default()).join("embedded.rs");
    if let Err(e) = fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
