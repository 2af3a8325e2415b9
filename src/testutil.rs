//! Helpers shared by unit tests.

use std::io::Read;

/// (path, contents) of every entry of a tar, in order.
pub fn tar_entries(tar: impl Read) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut contents = Vec::new();
            e.read_to_end(&mut contents).unwrap();
            (e.path().unwrap().display().to_string(), contents)
        })
        .collect()
}
