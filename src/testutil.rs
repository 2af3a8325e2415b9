//! Helpers shared by unit tests.

use std::io::Read;

use crate::engine::{Input, Owner};

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

/// (path, owner, link target) of every entry of the inputs, in order.
pub fn input_entries(inputs: &[Input]) -> Vec<(String, Owner, Option<String>)> {
    let mut out = Vec::new();
    for i in inputs {
        let tar = i.tar().unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            out.push((e.path().unwrap().display().to_string().trim_end_matches('/').to_string(), i.owner, link));
        }
    }
    out
}
