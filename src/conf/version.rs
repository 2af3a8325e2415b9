//! Version ordering as GNU `sort -V` does it (gnulib's filevercmp), because that is what dkms
//! compares kernel releases with for BUILD_EXCLUSIVE_KERNEL_MIN/_MAX: `6.1.0-56-amd64` sorts
//! after `6.1` (a longer release with the same prefix is newer), so `_MAX="6.1"` excludes it.

use std::cmp::Ordering;

/// Where a character sorts between digit runs: `~` before everything (even the end), letters
/// before other characters, the end of the string like a digit.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

/// Debian's verrevcmp, which filevercmp applies to the whole name.
fn verrevcmp(s: &[u8], t: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let digit = |v: &[u8], k: usize| v.get(k).is_some_and(u8::is_ascii_digit);
    while i < s.len() || j < t.len() {
        while (i < s.len() && !digit(s, i)) || (j < t.len() && !digit(t, j)) {
            let (a, b) = (order(s.get(i).copied()), order(t.get(j).copied()));
            if a != b {
                return a.cmp(&b);
            }
            i += 1;
            j += 1;
        }
        while s.get(i) == Some(&b'0') {
            i += 1;
        }
        while t.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(s, i) && digit(t, j) {
            if first_diff == Ordering::Equal {
                first_diff = s[i].cmp(&t[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(s, i) {
            return Ordering::Greater;
        }
        if digit(t, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// The length of `s` without a file suffix (`(\.[A-Za-z~][A-Za-z0-9~]*)*$`), which filevercmp
/// compares last.
fn without_suffix(s: &[u8]) -> usize {
    let mut end = s.len();
    let mut k = s.len();
    // Walk back over suffix characters; every '.' followed by a letter/~ that starts a run of
    // suffix characters reaching `end` extends the suffix.
    while k > 0 {
        let c = s[k - 1];
        if c.is_ascii_alphanumeric() || c == b'~' {
            k -= 1;
            continue;
        }
        if c == b'.' && s.get(k).is_some_and(|n| n.is_ascii_alphabetic() || *n == b'~') {
            k -= 1;
            end = k;
            continue;
        }
        break;
    }
    end
}

/// `sort -V` order of two version strings.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    match verrevcmp(&a[..without_suffix(a)], &b[..without_suffix(b)]) {
        Ordering::Equal => verrevcmp(a, b),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_sort_v() {
        use Ordering::*;
        assert_eq!(compare("6.1.0-56-amd64", "5.6"), Greater);
        assert_eq!(compare("6.1.0-56-amd64", "6.1"), Greater);
        assert_eq!(compare("6.1.0-56-amd64", "6.1.0-56-amd64"), Equal);
        assert_eq!(compare("6.1.0-9-amd64", "6.1.0-56-amd64"), Less);
        assert_eq!(compare("5.18", "5.4.0"), Greater);
        assert_eq!(compare("6.12", "6.2"), Greater);
        assert_eq!(compare("1.0~rc1", "1.0"), Less);
    }

    #[test]
    fn agrees_with_gnu_sort() {
        let list = ["6.1", "6.1.0-56-amd64", "5.6", "6.10.1", "6.1.0-9-amd64", "5.18.0-rc1", "4.19"];
        let Ok(out) = std::process::Command::new("sort")
            .arg("-V")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(list.join("\n").as_bytes())?;
                c.wait_with_output()
            })
        else {
            return; // no GNU sort on this host
        };
        let gnu: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        let mut ours: Vec<&str> = list.to_vec();
        ours.sort_by(|a, b| compare(a, b));
        assert_eq!(gnu, ours);
    }
}
