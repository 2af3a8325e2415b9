//! Keys held in a PKCS#11 token (`mok_signing_key="pkcs11:..."`, RFC 7512 URIs), reached as the
//! kernel's `scripts/sign-file` reaches them on OpenSSL 3: through OpenSSL's `pkcs11` provider and
//! its store, the PIN from `KBUILD_SIGN_PIN`. The key never leaves the token: OpenSSL hands the
//! provider the digest to sign.
//!
//! Unlike sign-file, the providers are loaded into a library context of ckms's own rather than
//! the process-wide one: a software token (SoftHSM2) computes with the process-wide context, and
//! with the pkcs11 provider in it would call itself back and deadlock (pkcs11-provider#634).

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::lib_ctx::{LibCtx, LibCtxRef};
use openssl::pkey::{PKey, Private};
use openssl::provider::Provider;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::OnceLock;

use super::first_reason;

/// The scheme that makes a key name a token URI rather than a file.
pub const SCHEME: &str = "pkcs11:";

/// `OSSL_STORE_INFO_PKEY` in openssl/store.h.
const STORE_INFO_PKEY: c_int = 4;
/// `UIT_PROMPT` and `UIT_VERIFY` in openssl/ui.h: the requests a PIN answers.
const UIT_PROMPT: c_int = 1;
const UIT_VERIFY: c_int = 2;

// openssl-sys binds neither the store nor the UI calls sign-file uses.
extern "C" {
    fn OSSL_STORE_open_ex(
        uri: *const c_char,
        libctx: *mut openssl_sys::OSSL_LIB_CTX,
        propq: *const c_char,
        ui_method: *const c_void,
        ui_data: *mut c_void,
        params: *const c_void,
        post_process: *const c_void,
        post_process_data: *mut c_void,
    ) -> *mut c_void;
    fn OSSL_STORE_load(ctx: *mut c_void) -> *mut c_void;
    fn OSSL_STORE_eof(ctx: *mut c_void) -> c_int;
    fn OSSL_STORE_close(ctx: *mut c_void) -> c_int;
    fn OSSL_STORE_INFO_get_type(info: *const c_void) -> c_int;
    fn OSSL_STORE_INFO_get1_PKEY(info: *const c_void) -> *mut openssl_sys::EVP_PKEY;
    fn OSSL_STORE_INFO_free(info: *mut c_void);
    fn UI_create_method(name: *const c_char) -> *mut c_void;
    fn UI_method_set_reader(method: *mut c_void, reader: extern "C" fn(*mut c_void, *mut c_void) -> c_int) -> c_int;
    fn UI_set_default_method(method: *const c_void);
    fn UI_get0_user_data(ui: *mut c_void) -> *mut c_void;
    fn UI_get_string_type(uis: *mut c_void) -> c_int;
    fn UI_set_result(ui: *mut c_void, uis: *mut c_void, result: *const c_char) -> c_int;
}

/// The token URI `key` names, if it names one.
pub fn uri(key: &std::path::Path) -> Option<&str> {
    key.to_str().filter(|k| k.starts_with(SCHEME))
}

/// `uri` with a `pin-value` attribute's value hidden, for messages.
pub fn shown(uri: &str) -> String {
    const PIN: &str = "pin-value=";
    let Some(at) = uri.find(PIN).map(|at| at + PIN.len()) else { return uri.to_string() };
    let end = uri[at..].find([';', '&', '?']).map_or(uri.len(), |e| at + e);
    format!("{}***{}", &uri[..at], &uri[end..])
}

/// A private key in a token, with the library context whose provider holds it. Field order is
/// drop order: the key before the providers, the providers before their context.
pub struct TokenKey {
    pub pkey: PKey<Private>,
    _providers: [Provider; 2],
    ctx: LibCtx,
}

impl TokenKey {
    /// Opens the first private key `uri` names; `pin` logs in (as `KBUILD_SIGN_PIN` does for
    /// sign-file). Never prompts: without a PIN a token that needs one refuses.
    pub fn open(uri: &str, pin: Option<&str>) -> Result<TokenKey, String> {
        let ctx = LibCtx::new().map_err(|e| first_reason(&e))?;
        let pkcs11 = Provider::try_load(Some(&ctx), "pkcs11", true).map_err(|e| {
            format!("OpenSSL's pkcs11 provider does not load ({}): is pkcs11-provider installed?", first_reason(&e))
        })?;
        let default = Provider::try_load(Some(&ctx), "default", true).map_err(|e| first_reason(&e))?;
        let pkey = load(&ctx, uri, pin)?;
        Ok(TokenKey { pkey, _providers: [pkcs11, default], ctx })
    }

    /// The library context signing with this key must use.
    pub fn ctx(&self) -> &LibCtxRef {
        &self.ctx
    }
}

fn load(ctx: &LibCtxRef, uri: &str, pin: Option<&str>) -> Result<PKey<Private>, String> {
    let c_uri = CString::new(uri).map_err(|_| "the URI holds a NUL byte".to_string())?;
    let pin = pin.map(CString::new).transpose().map_err(|_| "the PIN holds a NUL byte".to_string())?;
    let pin_ptr = pin.as_ref().map_or(std::ptr::null_mut(), |p| p.as_ptr() as *mut c_void);
    let ui = ui_method()?;
    // SAFETY: every pointer is live for the call; NULLs are allowed for propq, params, post_process.
    let store = unsafe {
        OSSL_STORE_open_ex(
            c_uri.as_ptr(),
            ctx.as_ptr(),
            std::ptr::null(),
            ui,
            pin_ptr,
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null_mut(),
        )
    };
    if store.is_null() {
        return Err(openssl_reason("the token does not open"));
    }
    let mut found = None;
    // SAFETY: `store` is open until the close below; each info is freed once after use.
    unsafe {
        while found.is_none() && OSSL_STORE_eof(store) == 0 {
            let info = OSSL_STORE_load(store);
            if info.is_null() {
                // An object the store could not decode; sign-file skips it too.
                let _ = openssl::error::ErrorStack::get();
                continue;
            }
            if OSSL_STORE_INFO_get_type(info) == STORE_INFO_PKEY {
                let pkey = OSSL_STORE_INFO_get1_PKEY(info);
                if !pkey.is_null() {
                    found = Some(PKey::from_ptr(pkey));
                }
            }
            OSSL_STORE_INFO_free(info);
        }
        OSSL_STORE_close(store);
    }
    found.ok_or_else(|| match pin {
        None => "no private key there; if the token needs a PIN, set KBUILD_SIGN_PIN".into(),
        Some(_) => "no private key there, or the PIN in KBUILD_SIGN_PIN is wrong".into(),
    })
}

/// The process's UI method: it answers a PIN request with the PIN it is given and never prompts
/// (it has a reader and no writer, so nothing is shown and no terminal is read). It is also made
/// OpenSSL's default, because the pkcs11 provider falls back to a prompt of its own, on the
/// default method, when the store's callback has no PIN: ckms never prompts (a farm has no
/// terminal), it fails and says to set KBUILD_SIGN_PIN. Made once, kept for the process.
fn ui_method() -> Result<*mut c_void, String> {
    static METHOD: OnceLock<usize> = OnceLock::new();
    let method = *METHOD.get_or_init(|| {
        // SAFETY: the name is a static C string; the method lives as long as the process.
        unsafe {
            let method = UI_create_method(c"ckms PIN from KBUILD_SIGN_PIN".as_ptr());
            if method.is_null() || UI_method_set_reader(method, read_pin) != 0 {
                return 0;
            }
            UI_set_default_method(method);
            method as usize
        }
    });
    match method {
        0 => Err("OpenSSL could not make a PIN callback".into()),
        m => Ok(m as *mut c_void),
    }
}

/// The reader: answers a prompt with the PIN the user data points at (a C string), and fails
/// when there is none.
extern "C" fn read_pin(ui: *mut c_void, uis: *mut c_void) -> c_int {
    // SAFETY: OpenSSL passes live UI and UI_STRING objects; the user data is NULL or the PIN's
    // CString, alive while the store is open.
    unsafe {
        if !matches!(UI_get_string_type(uis), UIT_PROMPT | UIT_VERIFY) {
            return 1;
        }
        let pin = UI_get0_user_data(ui) as *const c_char;
        if pin.is_null() || UI_set_result(ui, uis, pin) != 0 {
            return -1;
        }
    }
    1
}

fn openssl_reason(what: &str) -> String {
    let errors = openssl::error::ErrorStack::get();
    match errors.errors().first() {
        Some(_) => format!("{what}: {}", first_reason(&errors)),
        None => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn uris_are_told_from_files_and_pins_are_hidden() {
        assert_eq!(uri(Path::new("pkcs11:token=a;object=b")), Some("pkcs11:token=a;object=b"));
        assert_eq!(uri(Path::new("/etc/mok.key")), None);
        assert_eq!(uri(Path::new("./pkcs11:x")), None);
        assert_eq!(shown("pkcs11:token=a;object=b?pin-value=1234"), "pkcs11:token=a;object=b?pin-value=***");
        assert_eq!(shown("pkcs11:object=b;pin-value=1;type=private"), "pkcs11:object=b;pin-value=***;type=private");
        assert_eq!(shown("pkcs11:object=b"), "pkcs11:object=b");
    }

    #[test]
    fn a_missing_provider_or_token_is_an_error_not_a_prompt() {
        // Whatever is installed here, a token that does not exist yields no key and no prompt.
        let err = TokenKey::open("pkcs11:token=ckms-no-such-token;object=none", None).err();
        assert!(err.is_some());
    }
}
