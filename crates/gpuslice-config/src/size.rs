//! Memory sizes as people write them: `8GiB`, `512MiB`, `1000m`, `8g`, `1.5GiB`, `4GB`.
//!
//! Single letters (`k`, `m`, `g`, `t`, any case) and the IEC suffixes (`KiB`, `Ki`, ...)
//! are powers of 1024, as vgpu-controller and HAMi-core read them. The SI suffixes
//! `KB`, `MB`, `GB`, `TB` are powers of 1000, as Kubernetes reads `G`. A bare number is
//! bytes. [`parse_size`] rejects zero (a limit of nothing is almost always a mistake);
//! [`parse_bytes`] accepts it. This is the one size parser of the workspace: the fakes
//! and the test probe read their sizes with it too.

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing was given.
    #[error("the value is empty")]
    Empty,
    /// The number part is missing or malformed.
    #[error("expected a number followed by an optional unit such as GiB, MiB, g or m")]
    BadNumber,
    /// The unit is unknown.
    #[error("unknown unit {0:?} (use B, KiB, MiB, GiB, TiB, k, m, g, t, KB, MB, GB or TB)")]
    BadUnit(String),
    /// Too large for 64 bits.
    #[error("the size is too large")]
    Overflow,
    /// Zero bytes.
    #[error("the size must be greater than zero")]
    Zero,
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

/// Parses a size in bytes; zero is rejected (a limit of nothing is a mistake).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    match parse_bytes(text)? {
        0 => Err(SizeError::Zero),
        bytes => Ok(bytes),
    }
}

/// Parses a size in bytes, zero included: for settings where nothing is meaningful
/// (the fakes' `FAKE_CUDA_CONTEXT_BYTES=0`, a probe's script).
pub fn parse_bytes(text: &str) -> Result<u64, SizeError> {
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
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
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
        // At most 9 digits (checked above), so the exponent fits and the fraction of the
        // multiplier is below the multiplier itself.
        let exponent = u32::try_from(frac_part.len()).map_err(|_| SizeError::BadNumber)?;
        let scale = 10u64.pow(exponent);
        let frac = (u128::from(digits) * u128::from(multiplier)) / u128::from(scale);
        let frac = u64::try_from(frac).map_err(|_| SizeError::Overflow)?;
        bytes = bytes.checked_add(frac).ok_or(SizeError::Overflow)?;
    }
    Ok(bytes)
}

const IEC_UNITS: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// Formats a byte count exactly, with the largest IEC unit that divides it, so that
/// [`parse_size`] gives the same number back.
pub fn format_size(bytes: u64) -> String {
    for (name, unit) in IEC_UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}")
}

/// Formats a byte count for people: exact where a unit divides it, else two decimals.
pub fn human_size(bytes: u64) -> String {
    for (name, unit) in IEC_UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    if bytes >= 1 << 30 {
        format!("{:.2}GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.2}MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_spellings() {
        assert_eq!(parse_size("1000m"), Ok(1000 << 20));
        assert_eq!(parse_size("8g"), Ok(8 << 30));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("8Gi"), Ok(8 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("0"), Err(SizeError::Zero));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("0GiB"), Ok(0));
        assert_eq!(parse_bytes("2m"), Ok(2 << 20));
        assert!(matches!(
            parse_bytes("5 parsecs"),
            Err(SizeError::BadUnit(_))
        ));
        assert_eq!(parse_size("0GiB"), Err(SizeError::Zero));
        assert!(matches!(parse_size("4GB-oops"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("lots"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("-1"), Err(SizeError::BadUnit(_))));
        assert_eq!(parse_size("."), Err(SizeError::BadNumber));
        assert_eq!(parse_size("1.2.3g"), Err(SizeError::BadNumber));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::Overflow));
        assert_eq!(parse_size("20000000000T"), Err(SizeError::Overflow));
    }

    #[test]
    fn formats_exact_units() {
        assert_eq!(format_size(8 << 30), "8GiB");
        assert_eq!(format_size(1000 << 20), "1000MiB");
        assert_eq!(format_size(3 << 29), "1536MiB");
        assert_eq!(format_size(5), "5");
        assert_eq!(parse_size(&format_size(123_456_789)), Ok(123_456_789));
        assert_eq!(human_size(123_456_789), "117.74MiB");
    }
}
