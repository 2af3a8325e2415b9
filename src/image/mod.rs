//! Image assembly: package contents into layers ([`layer`]), layers into an archive the
//! container engines load ([`archive`]).

pub mod archive;
pub mod layer;
