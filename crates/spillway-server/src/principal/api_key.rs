//! API keys: the key's SHA-256, as lowercase hex, looked up in the tenant catalog the policy
//! carries (`Catalog::api_key`). The key is never logged or kept; only its digest is compared,
//! through a hash table, so timing tells nothing about keys it does not match.

use super::{Principal, Reason};
use sha2::{Digest, Sha256};
use spillway_core::catalog::Catalog;

/// The longest key read; longer values are refused unread.
pub const MAX_KEY: usize = 512;

/// The principal an API key stands for, or `unknown_api_key`.
pub fn identify(key: &str, catalog: &Catalog) -> Result<Principal, Reason> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Reason::Malformed);
    }
    let digest = hex(&Sha256::digest(key.as_bytes()));
    let found = catalog.api_key(&digest).ok_or(Reason::UnknownApiKey)?;
    Ok(Principal {
        tenant: Some(found.tenant.into()),
        user: found.user.map(Into::into),
        tier: found.tier.map(Into::into),
    })
}

/// Lowercase hex, as the catalog stores digests.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn digests_are_lowercase_hex() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
