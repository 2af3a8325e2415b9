//! Debian version comparison, following dpkg's `verrevcmp` exactly: versions are
//! `[epoch:]upstream[-revision]`, compared part by part; within a part, runs of non-digits are
//! compared character-wise (`~` before the end of the string, letters before other characters)
//! and runs of digits numerically.

use std::cmp::Ordering;

use super::Op;

/// Splits `[epoch:]upstream[-revision]` into its three parts (epoch 0 when absent).
fn split(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        // dpkg only takes the epoch when it is all digits; otherwise the colon is part of upstream.
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    match rest.rfind('-') {
        Some(i) => (epoch, &rest[..i], &rest[i + 1..]),
        None => (epoch, rest, ""),
    }
}

/// dpkg's character weight for the non-digit part: `~` < end < letters < everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, compared with dpkg's weights (a missing character weighs 0).
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        // Digit run, compared numerically without overflow: skip leading zeros, then the
        // longer run is bigger, else the first differing digit decides.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        let sj = j;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        match da.len().cmp(&db.len()).then_with(|| da.cmp(db)) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    Ordering::Equal
}

/// Compares two Debian versions the way dpkg does.
pub fn compare(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| verrevcmp(ua, ub)).then_with(|| verrevcmp(ra, rb))
}

/// True when `version` satisfies `op reference` (e.g. `>= 2.0`).
pub fn satisfies(version: &str, op: &Op, reference: &str) -> bool {
    let c = compare(version, reference);
    match op {
        Op::Lt => c == Ordering::Less,
        Op::Le => c != Ordering::Greater,
        Op::Eq => c == Ordering::Equal,
        Op::Ge => c != Ordering::Less,
        Op::Gt => c == Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[track_caller]
    fn check(a: &str, b: &str, want: Ordering) {
        assert_eq!(compare(a, b), want, "{a} vs {b}");
        assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
    }

    #[test]
    fn tilde_sorts_first() {
        check("1.0~rc1", "1.0", Less);
        check("1.0~rc1", "1.0~rc2", Less);
        check("1.0~~", "1.0~", Less);
        check("1.0~", "1.0", Less);
        check("6.12.117-1~deb12u1", "6.12.117-1", Less);
        check("1.0~rc1-1", "1.0-1", Less);
    }

    #[test]
    fn epochs_win() {
        check("1:0.1", "9.9", Greater);
        check("2:1.0", "1:9.0", Greater);
        check("0:1.0", "1.0", Equal);
    }

    #[test]
    fn letters_before_non_letters() {
        check("1.0a", "1.0+", Less);
        check("1.0a", "1.0.", Less);
        check("1.0+", "1.0.", Less);
        check("1.0", "1.0a", Less);
        check("1.0a", "1.0b", Less);
        check("1.0Z", "1.0a", Less);
    }

    #[test]
    fn numbers_compare_numerically() {
        check("1.10", "1.9", Greater);
        check("1.002", "1.2", Equal);
        check("10", "9", Greater);
        check("1.0", "1.0.0", Less);
        check("99999999999999999999999", "99999999999999999999998", Greater);
    }

    #[test]
    fn revisions() {
        check("1.0-1", "1.0-2", Less);
        check("1.0-1", "1.0", Greater);
        check("1.0-10", "1.0-9", Greater);
        check("1.0-1+deb12u1", "1.0-1", Greater);
        check("6.1.192-2", "6.1.192-1", Greater);
        check("2.36-9+deb12u10", "2.36-9+deb12u9", Greater);
        // Only the last hyphen separates the revision.
        check("1.0-beta-1", "1.0-beta-2", Less);
    }

    #[test]
    fn real_world() {
        check("12.2.0-14+deb12u1", "12.2.0-14", Greater);
        check("7.2.13-1", "7.2.13~rc1-1", Greater);
        check("1:2.38.1-5+deb12u3", "2.40-1", Greater);
        check("6.1.0-56", "6.1.0-6", Greater);
    }

    #[test]
    fn satisfies_ops() {
        assert!(satisfies("1.0", &Op::Ge, "1.0"));
        assert!(satisfies("1.1", &Op::Gt, "1.0"));
        assert!(!satisfies("1.0", &Op::Gt, "1.0"));
        assert!(satisfies("1.0~rc1", &Op::Lt, "1.0"));
        assert!(satisfies("1.0", &Op::Le, "1.0"));
        assert!(satisfies("0:1.0", &Op::Eq, "1.0"));
        assert!(!satisfies("1.0-1", &Op::Eq, "1.0"));
    }
}
