//! Module compression, chosen like the target kernel's own modules so that modprobe and
//! the kernel's in-kernel decompressor accept ours: the kernel config says which one.

use std::io::{self, Read, Write};

/// How a kernel's modules are compressed (`.ko`, `.ko.gz`, `.ko.xz`, `.ko.zst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

/// Every file name ending a module can have, longest first so that matching stops at the
/// most specific one.
pub const MODULE_SUFFIXES: [&str; 4] = [".ko.zst", ".ko.gz", ".ko.xz", ".ko"];

impl Compression {
    /// From the text of the kernel's `config-<kver>`. Debian bookworm's 6.1 kernels set none
    /// of these (uncompressed modules); trixie's and sid's set `CONFIG_MODULE_COMPRESS_XZ=y`.
    pub fn from_kernel_config(config_text: &str) -> Compression {
        for line in config_text.lines().map(str::trim) {
            match line {
                "CONFIG_MODULE_COMPRESS_GZIP=y" => return Compression::Gzip,
                "CONFIG_MODULE_COMPRESS_XZ=y" => return Compression::Xz,
                "CONFIG_MODULE_COMPRESS_ZSTD=y" => return Compression::Zstd,
                _ => {}
            }
        }
        Compression::None
    }

    /// What follows `.ko` in a module's file name.
    pub fn suffix(&self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
        }
    }

    /// Splits a module file name into its name and compression: `"a.ko.xz"` gives
    /// `("a", Xz)`; `None` when it is not a module's file name.
    pub fn split_file_name(file_name: &str) -> Option<(&str, Compression)> {
        let (stem, rest) = file_name.rsplit_once(".ko").filter(|(stem, _)| !stem.is_empty())?;
        let c = [Compression::None, Compression::Gzip, Compression::Xz, Compression::Zstd]
            .into_iter()
            .find(|c| c.suffix() == rest)?;
        Some((stem, c))
    }

    pub fn compress(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                // dkms uses `gzip -9`; flate2 writes no file name and mtime 0, so the output
                // depends on the input only.
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                enc.write_all(data)?;
                enc.finish()
            }
            Compression::Xz => {
                // The kernel's xz decoder only knows CRC32 (a CRC64 module does not load), and
                // its own modules_install uses a 1 MiB dictionary to bound decoder memory.
                let mut opts = liblzma::stream::LzmaOptions::new_preset(6).map_err(io::Error::other)?;
                opts.dict_size(1 << 20);
                let mut filters = liblzma::stream::Filters::new();
                filters.lzma2(&opts);
                let stream = liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::Crc32)
                    .map_err(io::Error::other)?;
                let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                enc.write_all(data)?;
                enc.finish()
            }
            Compression::Zstd => {
                // ruzstd's frames declare their window size, which the kernel's decoder needs
                // to size its workspace.
                Ok(ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest))
            }
        }
    }

    /// The reverse of [`Compression::compress`]: a module's bytes as the kernel sees them
    /// (signatures are made and checked over those).
    pub fn decompress(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Compression::None => out.extend_from_slice(data),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
            }
            Compression::Xz => {
                liblzma::read::XzDecoder::new(data).read_to_end(&mut out)?;
            }
            Compression::Zstd => {
                ruzstd::decoding::StreamingDecoder::new(data).map_err(io::Error::other)?.read_to_end(&mut out)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Something module-like: repetitive, with some noise, larger than one zstd block.
    fn sample() -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        for i in 0u32..60_000 {
            v.extend_from_slice(&(i.wrapping_mul(2_654_435_761) >> 24).to_le_bytes()[..1]);
            if i % 7 == 0 {
                v.extend_from_slice(b"init_module\0");
            }
        }
        v
    }

    #[test]
    fn the_kernel_config_decides() {
        assert_eq!(
            Compression::from_kernel_config("CONFIG_MODULES=y\n# CONFIG_MODULE_COMPRESS is not set\n"),
            Compression::None
        );
        assert_eq!(
            Compression::from_kernel_config("CONFIG_MODULE_COMPRESS=y\r\nCONFIG_MODULE_COMPRESS_XZ=y\r\n"),
            Compression::Xz
        );
        assert_eq!(Compression::from_kernel_config("CONFIG_MODULE_COMPRESS_GZIP=y"), Compression::Gzip);
        assert_eq!(Compression::from_kernel_config("CONFIG_MODULE_COMPRESS_ZSTD=y\n"), Compression::Zstd);
        assert_eq!(Compression::from_kernel_config("# CONFIG_MODULE_COMPRESS_XZ is not set\n"), Compression::None);
    }

    #[test]
    fn file_names() {
        assert_eq!(Compression::split_file_name("v4l2loopback.ko.xz"), Some(("v4l2loopback", Compression::Xz)));
        assert_eq!(Compression::split_file_name("a.ko"), Some(("a", Compression::None)));
        assert_eq!(Compression::split_file_name("a.ko.zst"), Some(("a", Compression::Zstd)));
        assert_eq!(Compression::split_file_name("a.ko.bz2"), None);
        assert_eq!(Compression::split_file_name("a.o"), None);
        assert_eq!(Compression::split_file_name(".ko"), None);
        for c in [Compression::None, Compression::Gzip, Compression::Xz, Compression::Zstd] {
            assert!(MODULE_SUFFIXES.contains(&format!(".ko{}", c.suffix()).as_str()));
        }
    }

    #[test]
    fn decompress_reverses_compress() {
        let data = sample();
        for c in [Compression::None, Compression::Gzip, Compression::Xz, Compression::Zstd] {
            assert_eq!(c.decompress(&c.compress(&data).unwrap()).unwrap(), data, "{c:?}");
        }
        assert!(Compression::Xz.decompress(b"not xz").is_err());
    }

    #[test]
    fn none_is_identity() {
        assert_eq!(Compression::None.compress(b"abc").unwrap(), b"abc");
    }

    #[test]
    fn gzip_round_trips() {
        let data = sample();
        let z = Compression::Gzip.compress(&data).unwrap();
        assert!(z.len() < data.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn xz_round_trips_with_crc32() {
        let data = sample();
        let z = Compression::Xz.compress(&data).unwrap();
        assert_eq!(&z[..6], b"\xfd7zXZ\0");
        // Stream flags: byte 6 reserved, byte 7 the check type; 0x01 is CRC32 (0x04 CRC64).
        assert_eq!(z[6], 0);
        assert_eq!(z[7], 0x01, "xz check must be CRC32 for the kernel to load the module");
        // The stream footer repeats the flags just before its magic "YZ".
        assert_eq!(&z[z.len() - 4..z.len() - 2], &[0, 0x01]);
        let mut out = Vec::new();
        liblzma::read::XzDecoder::new(&z[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_round_trips_and_declares_its_window() {
        let data = sample();
        let z = Compression::Zstd.compress(&data).unwrap();
        assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        // Frame header descriptor: Single_Segment_flag (bit 5) clear means a window
        // descriptor follows, which the kernel's decoder reads to size its workspace.
        assert_eq!(z[4] & 0x20, 0);
        let window_log = 10 + (z[5] >> 3);
        assert!(window_log <= 23, "window 2^{window_log} is more than the kernel wants to allocate");
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&z[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
