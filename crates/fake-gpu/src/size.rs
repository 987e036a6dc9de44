//! Byte sizes as the fakes' environment variables write them: `80GiB`, `512MiB`, `2m`, `1024`.
//!
//! They are parsed by gpuslice-config's one size parser, zero accepted
//! ([`gpuslice_config::parse_bytes`]: `FAKE_CUDA_CONTEXT_BYTES=0` is a useful setting);
//! this module adds reading them from the environment and rounding to granules.

pub use gpuslice_config::size::{SizeError, parse_bytes as parse_size};

/// Reads a size from the environment variable `name`, falling back to `default` when the
/// variable is unset or malformed (a warning is printed for the latter).
pub fn env_size(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => match parse_size(&text) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("fake-gpu: ignoring {name}={text:?}: {e}");
                default
            }
        },
        Err(_) => default,
    }
}

/// Rounds `value` up to a multiple of `granule` (a granule of 0 leaves it unchanged);
/// saturates at the largest multiple instead of overflowing.
pub fn round_up(value: u64, granule: u64) -> u64 {
    if granule == 0 {
        return value;
    }
    match value.checked_add(granule - 1) {
        Some(v) => v / granule * granule,
        None => u64::MAX / granule * granule,
    }
}

/// Rounds `value` down to a multiple of `granule` (a granule of 0 leaves it unchanged).
pub fn round_down(value: u64, granule: u64) -> u64 {
    value.checked_div(granule).map_or(value, |q| q * granule)
}

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("80GiB"), Ok(80 * GIB));
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("2m"), Ok(2 * MIB));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1.5GiB"), Ok(3 * GIB / 2));
        assert_eq!(parse_size(" 4 GB "), Ok(4_000_000_000));
        assert_eq!(parse_size("1KB"), Ok(1000));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("GiB"), Err(SizeError::BadNumber));
        assert!(matches!(
            parse_size("5 parsecs"),
            Err(SizeError::BadUnit(_))
        ));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::Overflow));
        assert_eq!(parse_size("20000000000t"), Err(SizeError::Overflow));
        assert_eq!(parse_size("1.2.3"), Err(SizeError::BadNumber));
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(0, 2 * MIB), 0);
        assert_eq!(round_up(1, 2 * MIB), 2 * MIB);
        assert_eq!(round_up(2 * MIB, 2 * MIB), 2 * MIB);
        assert_eq!(round_up(2 * MIB + 1, 2 * MIB), 4 * MIB);
        assert_eq!(round_up(7, 0), 7);
        assert_eq!(round_up(u64::MAX, 512), u64::MAX / 512 * 512);
        assert_eq!(round_down(3 * MIB, 2 * MIB), 2 * MIB);
    }
}
