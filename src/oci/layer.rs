//! A layer tar written by ckms's layer writer (deterministic: GNU tar, mtime 0, sorted by the
//! caller), ready to be put into an image archive.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::OciError;
use crate::image::archive::ArchiveLayer;
use crate::image::layer::{FsRules, LayerError, LayerWriter};

/// A layer tar at `path`, filled by `fill`.
pub fn layer(
    path: PathBuf,
    fill: impl FnOnce(&mut LayerWriter<File>) -> Result<(), LayerError>,
) -> Result<ArchiveLayer, OciError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(OciError::io(parent))?;
    }
    let file = File::create(&path).map_err(OciError::io(&path))?;
    let mut w = LayerWriter::new(file, FsRules::default());
    fill(&mut w).map_err(layer_err(&path))?;
    let (_, digest) = w.finish().map_err(layer_err(&path))?;
    Ok(ArchiveLayer { path, digest })
}

fn layer_err(path: &Path) -> impl Fn(LayerError) -> OciError + '_ {
    move |e| OciError::Image { tag: path.display().to_string(), message: e.to_string() }
}
