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

/// A tar of regular files (name, bytes), mode 0644.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *bytes).unwrap();
    }
    b.into_inner().unwrap()
}
