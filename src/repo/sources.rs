//! The host's apt configuration: where its mirrors are (sources.list, sources.list.d) and
//! whether it checks Valid-Until (apt.conf, apt.conf.d). ckms never hard-codes a mirror; it
//! takes them from here or from its own config.

use std::path::{Path, PathBuf};

use super::RepoError;

#[derive(Debug, Clone, PartialEq)]
pub struct AptSource {
    /// `deb`, `deb-src`.
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// A keyring path, a fingerprint list, or an inline armored key, as written.
    pub signed_by: Option<String>,
    pub enabled: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.to_path_buf(), source }
}

/// Reads `sources.list`, then `sources.list.d/*.list` and `*.sources` in name order (as apt
/// does). Other files (`*.disabled`, `*.save`, ...) are ignored, like apt ignores them.
pub fn read_host_sources(etc_apt: &Path) -> Result<Vec<AptSource>, RepoError> {
    let mut out = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.is_file() {
        let text = std::fs::read_to_string(&main).map_err(io(&main))?;
        out.extend(parse_one_line(&text, &main)?);
    }
    let dir = etc_apt.join("sources.list.d");
    for path in sorted_files(&dir)? {
        match path.extension().and_then(|e| e.to_str()) {
            Some("list") => {
                let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                out.extend(parse_one_line(&text, &path)?);
            }
            Some("sources") => {
                let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                out.extend(parse_deb822(&text, &path)?);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Regular files of `dir` sorted by name; a missing directory is empty.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, RepoError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut files = Vec::new();
    for e in entries {
        let path = e.map_err(io(dir))?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `deb [signed-by=/k.gpg arch=amd64] http://host/debian bookworm main contrib`
pub fn parse_one_line(text: &str, path: &Path) -> Result<Vec<AptSource>, RepoError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad =
            |detail: &str| RepoError::Sources { path: path.to_path_buf(), line: n + 1, detail: detail.to_string() };
        let (ty, mut rest) = line.split_once(char::is_whitespace).ok_or_else(|| bad("incomplete entry"))?;
        if ty != "deb" && ty != "deb-src" {
            return Err(bad(&format!("unknown type {ty:?}")));
        }
        let mut signed_by = None;
        rest = rest.trim_start();
        if let Some(opts) = rest.strip_prefix('[') {
            let close = opts.find(']').ok_or_else(|| bad("unclosed '['"))?;
            for opt in opts[..close].split_whitespace() {
                if let Some((k, v)) = opt.split_once('=') {
                    if k.eq_ignore_ascii_case("signed-by") {
                        signed_by = Some(v.to_string());
                    }
                }
            }
            rest = &opts[close + 1..];
        }
        let mut words = rest.split_whitespace();
        let uri = words.next().ok_or_else(|| bad("no URI"))?;
        let suite = words.next().ok_or_else(|| bad("no suite"))?;
        out.push(AptSource {
            types: vec![ty.to_string()],
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            signed_by,
            enabled: true,
        });
    }
    Ok(out)
}

/// deb822 `.sources`: paragraphs of `Field: value` with indented continuation lines.
pub fn parse_deb822(text: &str, path: &Path) -> Result<Vec<AptSource>, RepoError> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut start = 1;
    let lines: Vec<&str> = text.lines().chain(std::iter::once("")).collect();
    for (n, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !fields.is_empty() {
                out.push(paragraph(std::mem::take(&mut fields), path, start)?);
            }
            start = n + 2;
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some(last) = fields.last_mut() else {
                return Err(RepoError::Sources {
                    path: path.to_path_buf(),
                    line: n + 1,
                    detail: "continuation line without a field".into(),
                });
            };
            // " ." stands for an empty line (inline Signed-By keys use it).
            let cont = line.trim();
            last.1.push('\n');
            last.1.push_str(if cont == "." { "" } else { cont });
            continue;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| RepoError::Sources {
            path: path.to_path_buf(),
            line: n + 1,
            detail: format!("not a field: {line:?}"),
        })?;
        fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok(out)
}

fn paragraph(fields: Vec<(String, String)>, path: &Path, line: usize) -> Result<AptSource, RepoError> {
    let get = |k: &str| fields.iter().rev().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let list =
        |k: &str| get(k).map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>()).unwrap_or_default();
    let src = AptSource {
        types: list("types"),
        uris: list("uris"),
        suites: list("suites"),
        components: list("components"),
        signed_by: get("signed-by").map(|s| s.trim().to_string()),
        enabled: !matches!(get("enabled").map(|v| v.to_ascii_lowercase()).as_deref(), Some("no" | "false" | "0")),
    };
    if src.enabled && (src.types.is_empty() || src.uris.is_empty() || src.suites.is_empty()) {
        return Err(RepoError::Sources {
            path: path.to_path_buf(),
            line,
            detail: "entry needs Types, URIs and Suites".into(),
        });
    }
    Ok(src)
}

/// `Acquire::Check-Valid-Until` from apt.conf and apt.conf.d/* (later files win), if set.
pub fn host_check_valid_until(etc_apt: &Path) -> Option<bool> {
    let mut files = vec![etc_apt.join("apt.conf")];
    files.extend(sorted_files(&etc_apt.join("apt.conf.d")).unwrap_or_default().into_iter().filter(|p| {
        // apt reads only names made of [A-Za-z0-9_.-], with no extension or ".conf".
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                && (!n.contains('.') || n.ends_with(".conf"))
        })
    }));
    let mut result = None;
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            for (key, value) in apt_conf_assignments(&text) {
                if key.eq_ignore_ascii_case("Acquire::Check-Valid-Until") {
                    match value.to_ascii_lowercase().as_str() {
                        "false" | "no" | "0" | "off" | "without" => result = Some(false),
                        "true" | "yes" | "1" | "on" | "with" => result = Some(true),
                        _ => {}
                    }
                }
            }
        }
    }
    result
}

/// Flattens apt.conf syntax (`A::B "v";`, `A { B "v"; };`, comments) into (`A::B`, `v`) pairs.
pub fn apt_conf_assignments(text: &str) -> Vec<(String, String)> {
    #[derive(Debug, PartialEq)]
    enum Tok {
        Word(String),
        Str(String),
        Open,
        Close,
        Semi,
    }
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '{' => toks.push(Tok::Open),
            '}' => toks.push(Tok::Close),
            ';' => toks.push(Tok::Semi),
            '"' => {
                let mut s = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    s.push(c);
                }
                toks.push(Tok::Str(s));
            }
            '#' => {
                // Comments and #include/#clear directives: skipped to end of line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            c => {
                let mut w = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"') {
                        break;
                    }
                    w.push(n);
                    chars.next();
                }
                toks.push(Tok::Word(w));
            }
        }
    }
    let mut out = Vec::new();
    let mut scope: Vec<String> = Vec::new();
    let mut key: Option<String> = None;
    for t in toks {
        match t {
            Tok::Word(w) if key.is_none() => key = Some(w),
            Tok::Word(v) | Tok::Str(v) => {
                if let Some(k) = key.take() {
                    let full = scope.iter().chain(std::iter::once(&k)).cloned().collect::<Vec<_>>().join("::");
                    out.push((full, v));
                }
            }
            Tok::Open => scope.push(key.take().unwrap_or_default()),
            Tok::Close => {
                scope.pop();
                key = None;
            }
            Tok::Semi => key = None,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_entries() {
        let text = "# comment\n\
            deb http://m.invalid/debian bookworm main contrib # trailing\n\
            deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://m.invalid/x stable main\n\
            deb-src http://m.invalid/debian bookworm main\n\n";
        let s = parse_one_line(text, Path::new("sources.list")).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].uris, ["http://m.invalid/debian"]);
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[1].signed_by.as_deref(), Some("/usr/share/keyrings/x.gpg"));
        assert_eq!(s[1].suites, ["stable"]);
        assert_eq!(s[2].types, ["deb-src"]);
        let err = parse_one_line("deb\n", Path::new("bad.list")).unwrap_err();
        assert!(err.to_string().contains("bad.list:1"));
    }

    #[test]
    fn deb822_entries() {
        let text = "Types: deb\n\
            # http://snapshot.invalid/archive\n\
            URIs: http://m.invalid/debian\n\
            Suites: bookworm bookworm-updates\n\
            Components: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
            \n\
            Types: deb deb-src\n\
            URIs: http://m.invalid/debian-security\n\
            Suites: bookworm-security\n\
            Components: main\n\
            Enabled: no\n\
            Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n -----END PGP PUBLIC KEY BLOCK-----\n";
        let s = parse_deb822(text, Path::new("debian.sources")).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert!(s[0].enabled);
        assert_eq!(s[1].types, ["deb", "deb-src"]);
        assert!(!s[1].enabled);
        assert!(s[1].signed_by.as_deref().unwrap().starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nabc"));
    }

    #[test]
    fn directory_reading_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sources.list.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(dir.path().join("sources.list"), "deb http://a.invalid/debian sid main\n").unwrap();
        std::fs::write(d.join("b.list"), "deb http://b.invalid/debian sid main\n").unwrap();
        std::fs::write(d.join("c.sources"), "Types: deb\nURIs: http://c.invalid/\nSuites: sid\nComponents: main\n")
            .unwrap();
        std::fs::write(d.join("x.list.disabled-by-farm"), "deb http://x.invalid/ sid main\n").unwrap();
        std::fs::write(d.join("y.sources.disabled-by-farm"), "garbage").unwrap();
        let s = read_host_sources(dir.path()).unwrap();
        let uris: Vec<_> = s.iter().map(|s| s.uris[0].as_str()).collect();
        assert_eq!(uris, ["http://a.invalid/debian", "http://b.invalid/debian", "http://c.invalid/"]);
        assert!(read_host_sources(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn apt_conf_check_valid_until() {
        let a = apt_conf_assignments("Acquire::Check-Valid-Until \"false\";\nAcquire::Check-Date \"false\";");
        assert_eq!(a[0], ("Acquire::Check-Valid-Until".to_string(), "false".to_string()));
        let nested = apt_conf_assignments(
            "// comment\nAcquire {\n  Check-Valid-Until \"false\"; /* c */\n  http { Proxy \"http://p.invalid:3128\"; };\n};\n# x\nAPT::Get::Assume-Yes \"true\";",
        );
        assert!(nested.contains(&("Acquire::Check-Valid-Until".to_string(), "false".to_string())));
        assert!(nested.contains(&("Acquire::http::Proxy".to_string(), "http://p.invalid:3128".to_string())));
        assert!(nested.contains(&("APT::Get::Assume-Yes".to_string(), "true".to_string())));

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(host_check_valid_until(dir.path()), None);
        let d = dir.path().join("apt.conf.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("10a"), "Acquire { Check-Valid-Until \"true\"; };").unwrap();
        assert_eq!(host_check_valid_until(dir.path()), Some(true));
        std::fs::write(d.join("99b"), "acquire::check-valid-until \"false\";").unwrap();
        assert_eq!(host_check_valid_until(dir.path()), Some(false));
        // Files apt ignores do not count.
        std::fs::write(d.join("99z.disabled"), "Acquire::Check-Valid-Until \"true\";").unwrap();
        assert_eq!(host_check_valid_until(dir.path()), Some(false));
    }
}
