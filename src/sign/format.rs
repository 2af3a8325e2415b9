//! The bytes the kernel appends to a signed module (scripts/sign-file, module_signature.h):
//! the module, a DER CMS SignedData, a 12-byte `struct module_signature`, the magic string.
//! Pure byte handling: building, finding and removing that trailer.

/// What ends every signed module.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";

/// `sizeof(struct module_signature)`.
pub const INFO_LEN: usize = 12;

/// `id_type` of a PKCS#7/CMS signature, the only kind the kernel accepts.
pub const PKEY_ID_PKCS7: u8 = 2;

/// The 12 bytes after the CMS blob: algo, hash, id_type, signer_len, key_id_len (all 0 but
/// id_type for PKCS#7: the CMS says everything), 3 bytes of padding, the CMS length (big-endian).
pub fn trailer(sig_len: u32) -> [u8; INFO_LEN] {
    let mut t = [0u8; INFO_LEN];
    t[2] = PKEY_ID_PKCS7;
    t[8..].copy_from_slice(&sig_len.to_be_bytes());
    t
}

/// A signed module split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed<'a> {
    /// The module as it was before signing.
    pub module: &'a [u8],
    /// The DER CMS SignedData.
    pub cms: &'a [u8],
}

/// Why a module's trailer is not one the kernel would accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// `id_type` is not PKCS#7 (the kernel refuses anything else).
    IdType(u8),
    /// The fields the kernel wants zero for PKCS#7 are not.
    Fields,
    /// The signature length points before the start of the file.
    Length { sig_len: u32, available: usize },
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::IdType(t) => write!(f, "signature id_type {t}, not PKCS#7 ({PKEY_ID_PKCS7})"),
            Malformed::Fields => write!(f, "algo, hash, signer_len or key_id_len is not 0 (as PKCS#7 needs)"),
            Malformed::Length { sig_len, available } => {
                write!(f, "the trailer declares a {sig_len}-byte signature but only {available} bytes precede it")
            }
        }
    }
}

/// Splits `data` into module and signature; `Ok(None)` when it is not signed (no magic).
/// Checks the trailer the way the kernel's `mod_check_sig` does.
pub fn parse(data: &[u8]) -> Result<Option<Signed<'_>>, Malformed> {
    let Some(body) = data.strip_suffix(MAGIC) else { return Ok(None) };
    let Some(info_at) = body.len().checked_sub(INFO_LEN) else {
        return Err(Malformed::Length { sig_len: 0, available: body.len() });
    };
    let info = &body[info_at..];
    if info[2] != PKEY_ID_PKCS7 {
        return Err(Malformed::IdType(info[2]));
    }
    if info[0] != 0 || info[1] != 0 || info[3] != 0 || info[4] != 0 {
        return Err(Malformed::Fields);
    }
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]);
    let rest = &body[..info_at];
    let cms_at = rest
        .len()
        .checked_sub(sig_len as usize)
        .filter(|_| sig_len > 0)
        .ok_or(Malformed::Length { sig_len, available: rest.len() })?;
    Ok(Some(Signed { module: &rest[..cms_at], cms: &rest[cms_at..] }))
}

/// `data` without its signatures: signing again must replace a signature, never add a second
/// one (the kernel reads only the last, and sign-file would append blindly).
pub fn strip(data: &[u8]) -> Result<&[u8], Malformed> {
    let mut module = data;
    while let Some(signed) = parse(module)? {
        module = signed.module;
    }
    Ok(module)
}

/// `module` followed by `cms` and the trailer, as sign-file writes it.
pub fn append(module: &[u8], cms: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(module.len() + cms.len() + INFO_LEN + MAGIC.len());
    out.extend_from_slice(module);
    out.extend_from_slice(cms);
    // A CMS blob over 4 GiB cannot occur (it holds one RSA signature), so the cast keeps it.
    out.extend_from_slice(&trailer(cms.len() as u32));
    out.extend_from_slice(MAGIC);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_is_the_kernels_struct() {
        assert_eq!(trailer(0x0102), [0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(MAGIC.len(), 28);
    }

    #[test]
    fn append_then_parse_round_trips() {
        let signed = append(b"\x7fELF module", b"CMS-BLOB");
        assert!(signed.ends_with(MAGIC));
        let parts = parse(&signed).unwrap().unwrap();
        assert_eq!(parts, Signed { module: b"\x7fELF module", cms: b"CMS-BLOB" });
    }

    #[test]
    fn unsigned_is_none_and_strip_is_identity() {
        assert_eq!(parse(b"\x7fELF"), Ok(None));
        assert_eq!(strip(b"\x7fELF"), Ok(&b"\x7fELF"[..]));
    }

    #[test]
    fn strip_removes_every_signature() {
        let twice = append(&append(b"mod", b"first"), b"second");
        assert_eq!(strip(&twice), Ok(&b"mod"[..]));
    }

    #[test]
    fn broken_trailers_are_refused() {
        let mut bad = append(b"mod", b"sig");
        let at = bad.len() - MAGIC.len() - INFO_LEN;
        bad[at + 2] = 1;
        assert_eq!(parse(&bad), Err(Malformed::IdType(1)));
        bad[at + 2] = 2;
        bad[at] = 1;
        assert_eq!(parse(&bad), Err(Malformed::Fields));
        let mut long = append(b"mod", b"sig");
        let n = long.len();
        long[n - MAGIC.len() - 1] = 200;
        assert!(matches!(parse(&long), Err(Malformed::Length { sig_len: 200, .. })));
        assert!(matches!(parse(MAGIC), Err(Malformed::Length { .. })));
    }
}
