//! Kernel selectors: which kernels a farm builds for.
//!
//! - an exact release (`6.1.0-56-amd64`);
//! - `@PROFILE`: every kernel the profile's repository offers;
//! - `@PROFILE:latest`, `@PROFILE:latest=N`: the newest N of each series (6.1, 6.12) and flavour
//!   (amd64, cloud-amd64, rt-amd64);
//! - anything else is a regular expression matched against every release offered.

use regex::Regex;
use std::collections::BTreeMap;

use super::FarmError;
use crate::kernel::{self, Kernel};
use crate::repo::version;

/// One parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Release(String),
    Profile { profile: String, latest: Option<usize> },
    Pattern(String),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, FarmError> {
        let bad = |message: String| FarmError::Selector { selector: text.to_string(), message };
        if let Some(rest) = text.strip_prefix('@') {
            let (profile, latest) = match rest.split_once(':') {
                None => (rest, None),
                Some((p, "latest")) => (p, Some(1)),
                Some((p, spec)) => {
                    let n = spec
                        .strip_prefix("latest=")
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad(format!("{spec:?} is neither `latest` nor `latest=N` (N ≥ 1)")))?;
                    (p, Some(n))
                }
            };
            if profile.is_empty() {
                return Err(bad("no profile named after @".into()));
            }
            return Ok(Selector::Profile { profile: profile.to_string(), latest });
        }
        if text.is_empty() {
            return Err(bad("empty".into()));
        }
        // Releases hold '.' and '+', which are regex syntax too: a plain release (as `uname -r`
        // prints it) is taken literally; anything with other syntax is a pattern.
        if text.chars().all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c)) {
            return Ok(Selector::Release(text.to_string()));
        }
        Regex::new(text).map_err(|e| bad(format!("not a regular expression: {e}")))?;
        Ok(Selector::Pattern(text.to_string()))
    }

    /// The profile this selector is confined to, if any (so only its index need be read).
    pub fn profile(&self) -> Option<&str> {
        match self {
            Selector::Profile { profile, .. } => Some(profile),
            _ => None,
        }
    }
}

/// A kernel's series (`6.1`) and flavour (`amd64`, `cloud-amd64`, `rt-amd64`).
pub fn series_and_flavour(release: &str) -> (String, String) {
    let series: String = release.split('.').take(2).collect::<Vec<_>>().join(".");
    // The flavour follows the ABI part: `6.1.0-56-amd64`, `6.12.117+deb13-cloud-amd64`.
    let tail = release.split_once('+').map_or(release, |(_, t)| t);
    let flavour = tail
        .split('-')
        .skip_while(|part| part.chars().next().is_some_and(|c| c.is_ascii_digit()) || part.starts_with("deb"))
        .collect::<Vec<_>>()
        .join("-");
    (series, flavour)
}

/// The kernels `selectors` name among `offered` (every profile's, oldest first per profile),
/// in the order first selected, each once. A selector that matches nothing is an error, with
/// the closest releases offered.
pub fn select(selectors: &[Selector], offered: &[Kernel], profiles: &[&str]) -> Result<Vec<Kernel>, FarmError> {
    let mut out: Vec<Kernel> = Vec::new();
    for sel in selectors {
        let picked: Vec<&Kernel> = match sel {
            Selector::Release(r) => offered.iter().filter(|k| &k.release == r).take(1).collect(),
            Selector::Pattern(p) => {
                let re =
                    Regex::new(p).map_err(|e| FarmError::Selector { selector: p.clone(), message: e.to_string() })?;
                offered.iter().filter(|k| re.is_match(&k.release)).collect()
            }
            Selector::Profile { profile, latest } => {
                if !profiles.contains(&profile.as_str()) {
                    return Err(FarmError::Selector {
                        selector: format!("@{profile}"),
                        message: format!("no such profile (profiles: {})", profiles.join(", ")),
                    });
                }
                let of_profile = offered.iter().filter(|k| &k.profile == profile);
                match latest {
                    None => of_profile.collect(),
                    Some(n) => newest_per_series(of_profile, *n),
                }
            }
        };
        if picked.is_empty() {
            let shown = match sel {
                Selector::Release(r) | Selector::Pattern(r) => r.clone(),
                Selector::Profile { profile, .. } => format!("@{profile}"),
            };
            let releases: Vec<String> = offered.iter().map(|k| k.release.clone()).collect();
            let closest = kernel::closest(&shown, &releases, 3);
            return Err(FarmError::NoKernel { selector: shown, closest });
        }
        for k in picked {
            if !out.iter().any(|o| o.release == k.release) {
                out.push(k.clone());
            }
        }
    }
    Ok(out)
}

/// The newest `n` kernels of each (series, flavour), oldest first within the result.
fn newest_per_series<'a>(kernels: impl Iterator<Item = &'a Kernel>, n: usize) -> Vec<&'a Kernel> {
    let mut groups: BTreeMap<(String, String), Vec<&Kernel>> = BTreeMap::new();
    for k in kernels {
        groups.entry(series_and_flavour(&k.release)).or_default().push(k);
    }
    let mut out: Vec<&Kernel> = Vec::new();
    for (_, mut ks) in groups {
        ks.sort_by(|a, b| version::compare(&a.version, &b.version));
        let skip = ks.len().saturating_sub(n);
        out.extend(ks.into_iter().skip(skip));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(release: &str, version: &str, profile: &str) -> Kernel {
        Kernel {
            release: release.into(),
            profile: profile.into(),
            headers_package: format!("linux-headers-{release}"),
            version: version.into(),
            compiler: Some("gcc-12".into()),
            suite: "bookworm".into(),
        }
    }

    fn offered() -> Vec<Kernel> {
        vec![
            k("6.1.0-55-amd64", "6.1.191-1", "debian-bookworm"),
            k("6.1.0-56-amd64", "6.1.192-1", "debian-bookworm"),
            k("6.1.0-56-cloud-amd64", "6.1.192-1", "debian-bookworm"),
            k("6.12.110+deb12-amd64", "6.12.110-1~deb12u1", "debian-bookworm"),
            k("6.12.117+deb12-amd64", "6.12.117-1~deb12u1", "debian-bookworm"),
            k("6.12.117+deb13-amd64", "6.12.117-1", "debian-trixie"),
        ]
    }

    fn releases(ks: &[Kernel]) -> Vec<&str> {
        ks.iter().map(|k| k.release.as_str()).collect()
    }

    const PROFILES: &[&str] = &["debian-bookworm", "debian-trixie"];

    #[test]
    fn selectors_parse() {
        assert_eq!(Selector::parse("6.1.0-56-amd64").unwrap(), Selector::Release("6.1.0-56-amd64".into()));
        assert_eq!(Selector::parse("6.12.117+deb13-amd64").unwrap(), Selector::Release("6.12.117+deb13-amd64".into()));
        assert_eq!(Selector::parse("^6\\.12\\..*").unwrap(), Selector::Pattern("^6\\.12\\..*".into()));
        assert_eq!(
            Selector::parse("@debian-bookworm:latest=2").unwrap(),
            Selector::Profile { profile: "debian-bookworm".into(), latest: Some(2) }
        );
        assert_eq!(
            Selector::parse("@debian-trixie").unwrap(),
            Selector::Profile { profile: "debian-trixie".into(), latest: None }
        );
        for bad in ["@", "@p:newest", "@p:latest=0", "(", ""] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn series_and_flavours() {
        assert_eq!(series_and_flavour("6.1.0-56-amd64"), ("6.1".into(), "amd64".into()));
        assert_eq!(series_and_flavour("6.1.0-56-rt-amd64"), ("6.1".into(), "rt-amd64".into()));
        assert_eq!(series_and_flavour("6.12.117+deb13-cloud-amd64"), ("6.12".into(), "cloud-amd64".into()));
        assert_eq!(series_and_flavour("7.2.13+deb14-amd64"), ("7.2".into(), "amd64".into()));
    }

    #[test]
    fn latest_is_per_series_and_flavour() {
        let sel = [Selector::parse("@debian-bookworm:latest").unwrap()];
        let got = select(&sel, &offered(), PROFILES).unwrap();
        assert_eq!(releases(&got), ["6.1.0-56-amd64", "6.1.0-56-cloud-amd64", "6.12.117+deb12-amd64"]);
        let sel = [Selector::parse("@debian-bookworm:latest=2").unwrap()];
        assert_eq!(select(&sel, &offered(), PROFILES).unwrap().len(), 5);
    }

    #[test]
    fn selectors_combine_without_repeats_and_unknown_ones_fail() {
        let sel: Vec<Selector> = ["6.1.0-56-amd64", "^6\\.1\\.0-56-", "@debian-trixie"]
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect();
        let got = select(&sel, &offered(), PROFILES).unwrap();
        assert_eq!(releases(&got), ["6.1.0-56-amd64", "6.1.0-56-cloud-amd64", "6.12.117+deb13-amd64"]);

        let unknown = [Selector::parse("6.1.0-99-amd64").unwrap()];
        let err = select(&unknown, &offered(), PROFILES).unwrap_err();
        assert!(matches!(&err, FarmError::NoKernel { closest, .. } if !closest.is_empty()), "{err}");
        let no_profile = [Selector::parse("@fedora").unwrap()];
        assert!(matches!(select(&no_profile, &offered(), PROFILES), Err(FarmError::Selector { .. })));
    }
}
