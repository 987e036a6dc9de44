//! Byte sizes as the fakes' environment variables write them: `80GiB`, `512MiB`, `2m`, `1024`.
//!
//! Single letters (`k`, `m`, `g`, `t`, any case) and the IEC suffixes (`KiB`, `Ki`, ...) are
//! powers of 1024; `KB`, `MB`, `GB`, `TB` are powers of 1000; a bare number is bytes. Unlike
//! gpuslice's own parser, zero is accepted (`FAKE_CUDA_CONTEXT_BYTES=0` is a useful setting).

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing was given.
    #[error("the value is empty")]
    Empty,
    /// The number part is missing or malformed.
    #[error("expected a number followed by an optional unit such as GiB or MiB")]
    BadNumber,
    /// The unit is unknown.
    #[error("unknown unit {0:?}")]
    BadUnit(String),
    /// Too large for 64 bits.
    #[error("the size is too large")]
    Overflow,
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    const K: u64 = 1024;
    Some(match unit {
        "" | "b" | "B" => 1,
        "k" | "K" | "Ki" | "KiB" | "kib" | "KIB" => K,
        "m" | "M" | "Mi" | "MiB" | "mib" | "MIB" => K * K,
        "g" | "G" | "Gi" | "GiB" | "gib" | "GIB" => K * K * K,
        "t" | "T" | "Ti" | "TiB" | "tib" | "TIB" => K * K * K * K,
        "KB" | "kB" | "kb" => 1000,
        "MB" | "mb" => 1000 * 1000,
        "GB" | "gb" => 1000 * 1000 * 1000,
        "TB" | "tb" => 1000 * 1000 * 1000 * 1000,
        _ => return None,
    })
}

/// Parses a size in bytes (`80GiB`, `1.5g`, `4096`).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let multiplier = unit_multiplier(unit).ok_or_else(|| SizeError::BadUnit(unit.to_string()))?;
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(SizeError::BadNumber);
    }
    if frac_part.contains('.') || frac_part.len() > 9 {
        return Err(SizeError::BadNumber);
    }
    let int: u64 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| SizeError::Overflow)?
    };
    let mut bytes = int.checked_mul(multiplier).ok_or(SizeError::Overflow)?;
    if !frac_part.is_empty() {
        let digits: u64 = frac_part.parse().map_err(|_| SizeError::BadNumber)?;
        let scale = 10u128.pow(frac_part.len() as u32);
        let frac = u128::from(digits) * u128::from(multiplier) / scale;
        let frac = u64::try_from(frac).map_err(|_| SizeError::Overflow)?;
        bytes = bytes.checked_add(frac).ok_or(SizeError::Overflow)?;
    }
    Ok(bytes)
}

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
