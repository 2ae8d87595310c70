//! ed25519 batch verification for signatures that share keys.
//!
//! One equation checks a whole batch, as ed25519-dalek's `verify_batch` does: with a random
//! 128-bit `z_i` per signature and `h_i = SHA-512(R_i || A_i || M_i)`,
//!
//! ```text
//!   [-Σ z_i·s_i] B  +  Σ [z_i] R_i  +  Σ_keys [Σ_{i signed by A} z_i·h_i] A  =  identity
//! ```
//!
//! ed25519-dalek gives every signature its own `A` term: `2n + 1` points in the multiscalar
//! multiplication. The events of a transaction are signed by one or two server keys, so their
//! coefficients are summed per key here, leaving `n + k + 1` points (about half the work, and
//! the multiplication is most of a batch's cost). ed25519-dalek has no grouped form, so this is
//! written on curve25519-dalek's public API; the checks are dalek's: `s` canonical, `R` a point,
//! the equation without the cofactor. A batch that fails says nothing about which signature is
//! bad: callers check each one then.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

/// Whether every `signatures[i]` is a signature of `messages[i]` by `keys[i]` (false for an
/// empty batch, for slices of different lengths, and when no randomness could be had).
pub fn verify_grouped(messages: &[&[u8]], signatures: &[Signature], keys: &[VerifyingKey]) -> bool {
    let n = signatures.len();
    if n == 0 || messages.len() != n || keys.len() != n {
        return false;
    }
    let mut random = vec![0u8; 16 * n];
    if getrandom::fill(&mut random).is_err() {
        return false;
    }
    // Points: B, then each R_i, then each distinct key; scalars in the same order.
    let mut scalars = Vec::with_capacity(n + 3);
    let mut points = Vec::with_capacity(n + 3);
    scalars.push(Scalar::ZERO);
    points.push(ED25519_BASEPOINT_POINT);
    let mut base = Scalar::ZERO;
    // Each distinct key: its bytes, its summed coefficient, its point.
    let mut key_terms: Vec<(&[u8; 32], Scalar, EdwardsPoint)> = Vec::new();
    for (i, ((message, signature), key)) in messages.iter().zip(signatures).zip(keys).enumerate() {
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))
        else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(*signature.r_bytes()).decompress() else {
            return false;
        };
        let mut hasher = Sha512::new();
        hasher.update(signature.r_bytes());
        hasher.update(key.as_bytes());
        hasher.update(message);
        let h = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
        let mut z_bytes = [0u8; 16];
        z_bytes.copy_from_slice(&random[16 * i..16 * (i + 1)]);
        let z = Scalar::from(u128::from_le_bytes(z_bytes));
        base += z * s;
        scalars.push(z);
        points.push(r);
        match key_terms
            .iter_mut()
            .find(|(bytes, _, _)| *bytes == key.as_bytes())
        {
            Some((_, coefficient, _)) => *coefficient += z * h,
            None => key_terms.push((key.as_bytes(), z * h, key.to_edwards())),
        }
    }
    scalars[0] = -base;
    for (_, coefficient, point) in key_terms {
        scalars.push(coefficient);
        points.push(point);
    }
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// `count` messages signed by keys taken in turn from `signers`.
    fn batch(
        signers: &[SigningKey],
        count: usize,
    ) -> (Vec<Vec<u8>>, Vec<Signature>, Vec<VerifyingKey>) {
        let messages: Vec<Vec<u8>> = (0..count)
            .map(|i| format!("event {i}").into_bytes())
            .collect();
        let signatures = messages
            .iter()
            .enumerate()
            .map(|(i, m)| signers[i % signers.len()].sign(m))
            .collect();
        let keys = (0..count)
            .map(|i| signers[i % signers.len()].verifying_key())
            .collect();
        (messages, signatures, keys)
    }

    fn both(messages: &[Vec<u8>], signatures: &[Signature], keys: &[VerifyingKey]) -> (bool, bool) {
        let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        (
            verify_grouped(&messages, signatures, keys),
            ed25519_dalek::verify_batch(&messages, signatures, keys).is_ok(),
        )
    }

    #[test]
    fn good_batches_pass_as_with_dalek() {
        for signers in [
            vec![key(1)],
            vec![key(1), key(2)],
            (1..=7).map(key).collect(),
        ] {
            for count in [1, 2, 50] {
                let (m, s, k) = batch(&signers, count);
                assert_eq!(
                    both(&m, &s, &k),
                    (true, true),
                    "{} keys, {count}",
                    signers.len()
                );
            }
        }
    }

    #[test]
    fn one_bad_signature_fails_the_batch() {
        let signers = [key(1), key(2)];
        let (messages, signatures, keys) = batch(&signers, 20);
        for victim in [0, 7, 19] {
            // The message changed.
            let mut m = messages.clone();
            m[victim].push(b'!');
            assert_eq!(both(&m, &signatures, &keys), (false, false));
            // A bit of s or of R flipped.
            for byte in [3, 40] {
                let mut s = signatures.clone();
                let mut bytes = s[victim].to_bytes();
                bytes[byte] ^= 1;
                s[victim] = Signature::from_bytes(&bytes);
                assert!(
                    !both(&messages, &s, &keys).0,
                    "byte {byte} of signature {victim}"
                );
            }
            // Signed by the other key.
            let mut k = keys.clone();
            k[victim] = signers[(victim + 1) % 2].verifying_key();
            assert_eq!(both(&messages, &signatures, &k), (false, false));
            // Another event's signature.
            let mut s = signatures.clone();
            s.swap(victim, (victim + 2) % 20);
            assert_eq!(both(&messages, &s, &keys), (false, false));
        }
    }

    #[test]
    fn a_non_canonical_s_fails() {
        let (messages, mut signatures, keys) = batch(&[key(3)], 3);
        // s + l: the same point equation, but not the canonical encoding.
        let mut bytes = signatures[1].to_bytes();
        let mut s = [0u8; 32];
        s.copy_from_slice(&bytes[32..]);
        // l, the order of the base point, little-endian.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(s[i]) + u16::from(l[i]) + carry;
            s[i] = sum as u8;
            carry = sum >> 8;
        }
        bytes[32..].copy_from_slice(&s);
        signatures[1] = Signature::from_bytes(&bytes);
        assert_eq!(both(&messages, &signatures, &keys), (false, false));
    }

    #[test]
    fn empty_and_uneven_batches_fail() {
        assert!(!verify_grouped(&[], &[], &[]));
        let (messages, signatures, keys) = batch(&[key(4)], 2);
        let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        assert!(!verify_grouped(&messages[..1], &signatures, &keys));
    }
}
