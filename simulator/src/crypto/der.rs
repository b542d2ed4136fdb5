//! The little DER the crypto module needs by hand: OCTET STRING wrapping (`CKA_EC_POINT`), OBJECT
//! IDENTIFIER checks (`CKA_EC_PARAMS`) and the DigestInfo prefixes of PKCS #1 v1.5.
//!
//! Parsing is strict DER (definite, minimal lengths) and never panics on any input.

use super::Hash;

/// The tag of an OCTET STRING.
const OCTET_STRING: u8 = 0x04;
/// The tag of an OBJECT IDENTIFIER.
const OID: u8 = 0x06;

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8); // < 0x80: fits
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let n = bytes.len() - skip;
        out.push(0x80 | n as u8); // n <= 8
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Encodes `tag || length || content`.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 10);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// Splits one DER element off the front of `input`: `(tag, content, rest)`.
pub(crate) fn parse_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers are not used here
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > std::mem::size_of::<usize>() || rest.len() < n {
            return None; // indefinite or absurd length
        }
        let (len_bytes, rest) = rest.split_at(n);
        if len_bytes[0] == 0 {
            return None; // not minimal
        }
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return None; // not minimal
        }
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// Wraps bytes in a DER OCTET STRING.
pub(crate) fn octet_string(content: &[u8]) -> Vec<u8> {
    tlv(OCTET_STRING, content)
}

/// The content of `input` if it is exactly one DER OCTET STRING.
pub(crate) fn parse_octet_string(input: &[u8]) -> Option<&[u8]> {
    match parse_tlv(input)? {
        (OCTET_STRING, content, []) => Some(content),
        _ => None,
    }
}

/// The content of `input` if it is exactly one well-formed DER OBJECT IDENTIFIER.
pub(crate) fn parse_oid(input: &[u8]) -> Option<&[u8]> {
    match parse_tlv(input)? {
        (OID, content, []) if oid_content_ok(content) => Some(content),
        _ => None,
    }
}

/// Whether `content` is a valid OID body: non-empty, each arc minimally encoded and terminated.
fn oid_content_ok(content: &[u8]) -> bool {
    let Some(last) = content.last() else {
        return false;
    };
    if last & 0x80 != 0 {
        return false; // the last arc is unterminated
    }
    let mut arc_start = true;
    for &b in content {
        if arc_start && b == 0x80 {
            return false; // leading 0x80 is a non-minimal arc
        }
        arc_start = b & 0x80 == 0;
    }
    true
}

/// The DER DigestInfo prefix for `hash` (the member contract's, shared with a vendor-module
/// member that signs a DigestInfo with `CKM_RSA_PKCS`).
pub(crate) fn digest_info_prefix(hash: Hash) -> &'static [u8] {
    hash.digest_info_prefix()
}

/// If `data` is a standard DigestInfo, its hash and digest.
pub(crate) fn split_digest_info(data: &[u8]) -> Option<(Hash, &[u8])> {
    Hash::ALL.into_iter().find_map(|h| {
        let digest = data.strip_prefix(digest_info_prefix(h))?;
        (digest.len() == h.len()).then_some((h, digest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_string_round_trip() {
        for len in [0usize, 1, 65, 127, 128, 255, 256, 70_000] {
            let content = vec![0xabu8; len];
            let der = octet_string(&content);
            assert_eq!(parse_octet_string(&der), Some(content.as_slice()));
        }
    }

    #[test]
    fn rejects_bad_der() {
        assert_eq!(parse_tlv(&[]), None);
        assert_eq!(parse_tlv(&[0x04]), None);
        assert_eq!(parse_tlv(&[0x04, 0x05, 1, 2]), None);
        assert_eq!(parse_tlv(&[0x04, 0x80]), None); // indefinite
        assert_eq!(parse_tlv(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]), None); // non-minimal
        assert_eq!(parse_tlv(&[0x04, 0x82, 0x00, 0x80]), None); // non-minimal
        assert_eq!(parse_tlv(&[0x04, 0x89, 1, 1, 1, 1, 1, 1, 1, 1, 1]), None);
        assert_eq!(parse_octet_string(&[0x04, 0x01, 0xaa, 0x00]), None); // trailing
        assert_eq!(parse_oid(&[0x06, 0x00]), None);
        assert_eq!(parse_oid(&[0x06, 0x01, 0x81]), None);
        assert_eq!(parse_oid(&[0x06, 0x02, 0x80, 0x01]), None);
        assert!(parse_oid(&[0x06, 0x03, 0x2b, 0x65, 0x70]).is_some());
    }

    #[test]
    fn digest_info_prefixes_have_consistent_lengths() {
        for h in Hash::ALL {
            let p = digest_info_prefix(h);
            assert_eq!(usize::from(p[1]) + 2, p.len() + h.len());
            assert_eq!(usize::from(p[p.len() - 1]), h.len());
            let mut di = p.to_vec();
            di.extend(std::iter::repeat_n(7u8, h.len()));
            assert_eq!(
                split_digest_info(&di).map(|(h, d)| (h, d.len())),
                Some((h, h.len()))
            );
            di.push(0);
            assert_eq!(split_digest_info(&di), None);
        }
    }
}
