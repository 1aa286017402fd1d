//! Webhook signatures as Stripe makes them: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "{t}.{body}">`.
//! The API checks Stripe's (`Stripe-Signature`) with [`verify`]; the notifications processor signs
//! its own deliveries to storefronts (`Kassa-Signature`) with [`signature_header`], so a receiver
//! checks them with the code it already has for Stripe's.

use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How far a signature's timestamp may be from now, in seconds.
pub const TOLERANCE_SECONDS: i64 = 300;

/// Why a signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No usable `t=` and `v1=` in the header.
    Malformed,
    /// The timestamp is too far from now (a replay, or a clock far off).
    Stale,
    /// No `v1` signature matches.
    Mismatch,
}

/// Most `v1` signatures of one header that are checked.
const MAX_SIGNATURES: usize = 8;

/// Checks a signature header (`t=…,v1=…`) for `body` at `now` (Unix seconds).
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // abs_diff: any two i64s (a timestamp of i64::MIN included) without overflow.
    if now.abs_diff(timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    // Stripe sends one signature a secret (two while a secret rolls): a header with thousands
    // does not buy thousands of HMACs.
    for signature in signatures.into_iter().take(MAX_SIGNATURES) {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&signature).is_ok() {
            return Ok(()); // constant-time comparison
        }
    }
    Err(SignatureError::Mismatch)
}

/// A signature header for `body` signed at `timestamp`, as Stripe sends `Stripe-Signature` (and
/// kassa sends `Kassa-Signature` on its own webhooks).
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}
