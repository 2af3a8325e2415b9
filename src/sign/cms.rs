//! The CMS SignedData the kernel wants, made and checked with OpenSSL exactly as
//! scripts/sign-file does (its OpenSSL 3 path), so that both give the same bytes.

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::lib_ctx::LibCtxRef;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::{X509Name, X509};
use std::os::raw::{c_int, c_uint, c_void};

// openssl-sys binds CMS_sign but not the calls sign-file makes to choose the digest and leave
// out signed attributes, nor the one that signs in a library context (a token's key lives in
// its own); libcrypto (linked by openssl-sys) has them.
extern "C" {
    /// CMS_sign in `libctx` (NULL: the process-wide one).
    fn CMS_sign_ex(
        signcert: *mut openssl_sys::X509,
        pkey: *mut openssl_sys::EVP_PKEY,
        certs: *mut c_void,
        data: *mut openssl_sys::BIO,
        flags: c_uint,
        libctx: *mut openssl_sys::OSSL_LIB_CTX,
        propq: *const std::os::raw::c_char,
    ) -> *mut openssl_sys::CMS_ContentInfo;
    /// Adds a signer; returns a `CMS_SignerInfo *` owned by `cms`, NULL on error.
    fn CMS_add1_signer(
        cms: *mut openssl_sys::CMS_ContentInfo,
        signer: *mut openssl_sys::X509,
        pk: *mut openssl_sys::EVP_PKEY,
        md: *const openssl_sys::EVP_MD,
        flags: c_uint,
    ) -> *mut c_void;
    /// Digests `data` and computes the signatures of a CMS_PARTIAL structure; 1 on success.
    fn CMS_final(
        cms: *mut openssl_sys::CMS_ContentInfo,
        data: *mut openssl_sys::BIO,
        dcont: *mut openssl_sys::BIO,
        flags: c_uint,
    ) -> c_int;
}

/// A read-only memory BIO over a slice, freed on drop.
struct MemBio<'a>(*mut openssl_sys::BIO, std::marker::PhantomData<&'a [u8]>);

impl<'a> MemBio<'a> {
    fn new(data: &'a [u8]) -> Result<MemBio<'a>, ErrorStack> {
        let len = c_int::try_from(data.len()).map_err(|_| ErrorStack::get())?;
        // SAFETY: the BIO reads `data` only while `self` lives, and the lifetime ties it to `data`.
        let bio = unsafe { openssl_sys::BIO_new_mem_buf(data.as_ptr() as *const c_void, len) };
        if bio.is_null() {
            return Err(ErrorStack::get());
        }
        Ok(MemBio(bio, std::marker::PhantomData))
    }
}

impl Drop for MemBio<'_> {
    fn drop(&mut self) {
        // SAFETY: created by BIO_new_mem_buf and freed once.
        unsafe { openssl_sys::BIO_free_all(self.0) };
    }
}

/// The DER CMS SignedData over `module`: detached, no certificates, no signed attributes,
/// the signer named by issuer and serial, `md` as the digest; computed in `ctx` (a token key's
/// library context) or the process-wide one.
pub fn sign(
    module: &[u8],
    key: &PKey<Private>,
    ctx: Option<&LibCtxRef>,
    cert: &X509,
    md: MessageDigest,
) -> Result<Vec<u8>, ErrorStack> {
    let flags =
        CMSOptions::CMS_NOCERTS | CMSOptions::PARTIAL | CMSOptions::BINARY | CMSOptions::DETACHED | CMSOptions::STREAM;
    let libctx = ctx.map_or(std::ptr::null_mut(), |c| c.as_ptr());
    // SAFETY: a PARTIAL CMS with no signer, data or certificates; the result is owned below.
    let cms = unsafe {
        {
            use std::ptr::{null, null_mut};
            CMS_sign_ex(null_mut(), null_mut(), null_mut(), null_mut(), flags.bits(), libctx, null())
        }
    };
    if cms.is_null() {
        return Err(ErrorStack::get());
    }
    // SAFETY: freshly made and owned by nothing else.
    let cms = unsafe { CmsContentInfo::from_ptr(cms) };
    let signer_flags = CMSOptions::CMS_NOCERTS | CMSOptions::BINARY | CMSOptions::NOSMIMECAP | CMSOptions::NOATTR;
    // SAFETY: every pointer comes from a live owned object; the SignerInfo returned belongs to `cms`.
    let signer =
        unsafe { CMS_add1_signer(cms.as_ptr(), cert.as_ptr(), key.as_ptr(), md.as_ptr(), signer_flags.bits()) };
    if signer.is_null() {
        return Err(ErrorStack::get());
    }
    let data = MemBio::new(module)?;
    let final_flags = CMSOptions::CMS_NOCERTS | CMSOptions::BINARY;
    // SAFETY: `cms` and the BIO are live; a NULL dcont is allowed.
    let ok = unsafe { CMS_final(cms.as_ptr(), data.0, std::ptr::null_mut(), final_flags.bits()) };
    if ok != 1 {
        return Err(ErrorStack::get());
    }
    cms.to_der()
}

/// Checks the detached signature `cms` over `module` with `cert` (no chain: the kernel trusts
/// keys, not chains).
pub fn verify(module: &[u8], cms: &[u8], cert: &X509) -> Result<(), ErrorStack> {
    let mut info = CmsContentInfo::from_der(cms)?;
    let mut certs = Stack::new()?;
    certs.push(cert.clone())?;
    let flags = CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::BINARY | CMSOptions::NOINTERN;
    info.verify(Some(&certs), None, Some(module), None, flags)
}

/// Who signed, as the CMS says (what `modinfo` shows as signer, sig_key, sig_hashalgo).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignerId {
    /// The issuer's common name (the whole name when it has none).
    pub signer: String,
    /// The certificate's serial number, colon-separated hex; empty when named by key id.
    pub serial: String,
    /// The subject key identifier, when the signer is named that way (sign-file -k).
    pub key_id: Option<String>,
    /// The digest algorithm, e.g. "sha256".
    pub hash: String,
    /// Signed attributes present (the kernel refuses modules with them).
    pub signed_attributes: bool,
}

impl std::fmt::Display for SignerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key_id {
            Some(id) => write!(f, "key id {id}, {}", self.hash),
            None => write!(f, "\"{}\" serial {}, {}", self.signer, self.serial, self.hash),
        }
    }
}

/// Reads the first SignerInfo of a DER ContentInfo. `None` when it is not the shape a module
/// signature has.
pub fn signer_id(cms: &[u8]) -> Option<SignerId> {
    let (content_info, _) = der::expect(cms, der::SEQUENCE)?;
    let (_oid, rest) = der::expect(content_info, der::OID)?;
    let (explicit, _) = der::expect(rest, 0xa0)?;
    let (signed_data, _) = der::expect(explicit, der::SEQUENCE)?;
    let (_version, rest) = der::expect(signed_data, der::INTEGER)?;
    let (_digests, rest) = der::expect(rest, der::SET)?;
    let (_encap, mut rest) = der::expect(rest, der::SEQUENCE)?;
    // Optional certificates [0] and CRLs [1] come before the signer infos.
    while let Some(optional) = der::next(rest).filter(|t| t.tag == 0xa0 || t.tag == 0xa1) {
        rest = optional.rest;
    }
    let (infos, _) = der::expect(rest, der::SET)?;
    let (info, _) = der::expect(infos, der::SEQUENCE)?;
    let (_version, rest) = der::expect(info, der::INTEGER)?;
    let sid = der::next(rest)?;
    let rest = sid.rest;
    let (signer, serial, key_id) = match sid.tag {
        der::SEQUENCE => {
            let (issuer_tlv, serial_tlv) = der::split_first(sid.content)?;
            let (serial, _) = der::expect(serial_tlv, der::INTEGER)?;
            (issuer_name(issuer_tlv), colon_hex(strip_leading_zero(serial)), None)
        }
        0x80 => (String::new(), String::new(), Some(colon_hex(sid.content))),
        _ => return None,
    };
    let (digest_alg, rest) = der::expect(rest, der::SEQUENCE)?;
    let (oid, _) = der::expect(digest_alg, der::OID)?;
    let signed_attributes = der::next(rest).is_some_and(|t| t.tag == 0xa0);
    Some(SignerId { signer, serial, key_id, hash: digest_name(oid), signed_attributes })
}

fn issuer_name(der_name: &[u8]) -> String {
    let Ok(name) = X509Name::from_der(der_name) else { return String::new() };
    let cn = name.entries_by_nid(openssl::nid::Nid::COMMONNAME).next();
    if let Some(Ok(cn)) = cn.map(|e| e.data().to_string()) {
        return cn;
    }
    name.entries()
        .filter_map(|e| Some(format!("{}={}", e.object().nid().short_name().ok()?, e.data().to_string().ok()?)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn strip_leading_zero(int: &[u8]) -> &[u8] {
    match int {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The digest algorithms a module signature may use, by the last bytes of their OID
/// (2.16.840.1.101.3.4.2.x), plus SHA-1.
fn digest_name(oid: &[u8]) -> String {
    const NIST: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
    let known = match oid {
        [0x2b, 0x0e, 0x03, 0x02, 0x1a] => Some("sha1"),
        [prefix @ .., last] if prefix == NIST => match last {
            1 => Some("sha256"),
            2 => Some("sha384"),
            3 => Some("sha512"),
            4 => Some("sha224"),
            8 => Some("sha3-256"),
            9 => Some("sha3-384"),
            10 => Some("sha3-512"),
            _ => None,
        },
        _ => None,
    };
    known.map_or_else(|| format!("unknown ({})", hex::encode(oid)), str::to_string)
}

/// Just enough DER to walk a SignedData: definite lengths, one-byte tags.
mod der {
    pub const INTEGER: u8 = 0x02;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;

    /// One tag-length-value and what follows it.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Tlv<'a> {
        pub tag: u8,
        pub content: &'a [u8],
        /// Tag and length included.
        pub whole: &'a [u8],
        pub rest: &'a [u8],
    }

    pub fn next(data: &[u8]) -> Option<Tlv<'_>> {
        let (&tag, rest) = data.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let header = data.len() - rest.len();
        Some(Tlv { tag, content: &rest[..len], whole: &data[..header + len], rest: &rest[len..] })
    }

    /// The content of the next TLV when its tag is `tag`, and what follows.
    pub fn expect(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let tlv = next(data)?;
        (tlv.tag == tag).then_some((tlv.content, tlv.rest))
    }

    /// The first TLV whole, and what follows.
    pub fn split_first(data: &[u8]) -> Option<(&[u8], &[u8])> {
        let tlv = next(data)?;
        Some((tlv.whole, tlv.rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_short_and_long() {
        let int = der::next(&[0x02, 0x01, 0x05, 0xff]).unwrap();
        assert_eq!((int.tag, int.content, int.whole, int.rest), (0x02, &[5u8][..], &[2u8, 1, 5][..], &[0xffu8][..]));
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend(std::iter::repeat_n(7u8, 0x80));
        let t = der::next(&long).unwrap();
        assert_eq!((t.tag, t.content.len(), t.rest.len()), (4, 0x80, 0));
        assert_eq!(der::next(&[0x30, 0x05, 0x00]), None, "truncated");
        assert_eq!(der::next(&[0x30, 0x80]), None, "indefinite lengths are not DER");
    }

    #[test]
    fn digest_oids() {
        assert_eq!(digest_name(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]), "sha256");
        assert_eq!(digest_name(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03]), "sha512");
        assert_eq!(digest_name(&[0x2b, 0x0e, 0x03, 0x02, 0x1a]), "sha1");
        assert!(digest_name(&[1, 2]).starts_with("unknown"));
    }

    #[test]
    fn serials_print_like_modinfo() {
        assert_eq!(colon_hex(strip_leading_zero(&[0x00, 0x9a, 0x01])), "9A:01");
        assert_eq!(colon_hex(strip_leading_zero(&[0x00])), "00");
    }
}
