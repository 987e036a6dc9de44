//! What the memory hooks share: the page size charges are rounded to, and the one way a
//! hook body gets the slice (or passes through, or refuses).

/// What one physical allocation costs at least: device memory comes in 2 MiB pages.
pub const PAGE: u64 = 2 << 20;

/// `x` rounded up to a multiple of `to` (saturating).
pub fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to).saturating_mul(to)
}

/// Runs a hook body with the slice, or passes straight through / refuses.
macro_rules! with_slice {
    (|$s:ident| $body:expr, else $pass:expr) => {
        match $crate::process::access() {
            $crate::process::Access::PassThrough => $pass,
            $crate::process::Access::Refuse(code) => code,
            $crate::process::Access::Slice($s) => $body,
        }
    };
}
pub(crate) use with_slice;
