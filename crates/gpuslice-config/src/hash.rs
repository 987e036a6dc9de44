//! The one hash gpuslice uses to name things after their contents: 64-bit FNV-1a (the
//! `fnv` crate), for the ledger file named after an environment's slice settings and
//! for the compute gate's per-slice tag taken from the ledger file's identity.
//!
//! Its values are stored in file names and shared memory, so they must not change
//! between builds: the tests pin a few.

use std::hash::Hasher;

/// FNV-1a of the concatenation of `parts`.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    for part in parts {
        hasher.write(part);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a written out from its definition (offset basis and prime), byte by byte.
    fn by_definition(bytes: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    #[test]
    fn is_fnv1a_of_the_concatenation() {
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a(&[b"foo", b"bar"]), fnv1a(&[b"foobar"]));
        let dev = 0x803u64.to_ne_bytes();
        let ino = 123_456u64.to_ne_bytes();
        let joined: Vec<u8> = dev.iter().chain(ino.iter()).copied().collect();
        assert_eq!(fnv1a(&[&dev, &ino]), by_definition(&joined));
    }
}
