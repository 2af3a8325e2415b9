//! The key pair the farm signs with: the one `ckms build` would use on this host, unless the
//! command line names one.

use std::path::Path;
use std::sync::Arc;

use super::exec::Signing;
use super::FarmError;
use crate::context::Context;
use crate::sign;
use crate::tree::Roots;

/// The key pair the farm signs with (as `build` would on this host), made now if it is
/// ckms's own and missing, so that parallel builds never race to make it.
pub fn signing(ctx: &Context, given: Option<(&Path, &Path)>) -> Result<Option<Signing>, FarmError> {
    if !ctx.config.sign_enabled() {
        return Ok(None);
    }
    let (key, cert): (Option<&Path>, Option<&Path>) = given.unzip();
    let keys = ctx.config.key_locations(&Roots::system().dkms_tree).resolve(key, cert);
    let signer = sign::signer(&keys, sign::pin().as_deref(), ctx.reporter())?;
    let subject = sign::keys::load_cert(&keys.cert).ok().and_then(|c| sign::keys::common_name(&c)).unwrap_or_default();
    Ok(Some(Signing { fingerprint: signer.fingerprint(), signer: Arc::new(signer), subject }))
}
