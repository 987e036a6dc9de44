//! Kubernetes resource quantities (`8Gi`, `30`, `1536Mi`, `12e6`) as whole numbers: what
//! the scheduler writes in a claim's `consumedCapacity`, and what the ResourceSlice
//! publishes.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that is not a whole, non-negative number this driver understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a whole non-negative quantity (like 8Gi, 512Mi, 30 or 12e6)")]
pub struct QuantityError(pub String);

/// The value of `text` (`8Gi`, `1536Mi`, `30`, `2k`, `12e6`), refusing fractions,
/// negative values and overflow.
pub fn parse(text: &str) -> Result<u64, QuantityError> {
    let bad = || QuantityError(text.to_string());
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(bad());
    }
    let value: u64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        exp if exp.starts_with(['e', 'E']) => {
            let power: u32 = exp[1..].parse().map_err(|_| bad())?;
            10u64.checked_pow(power).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    value.checked_mul(multiplier).ok_or_else(bad)
}

/// The value of `quantity` (see [`parse`]).
pub fn value(quantity: &Quantity) -> Result<u64, QuantityError> {
    parse(&quantity.0)
}

/// `bytes` as a quantity, in the largest binary unit that divides it (`8Gi`, `1536Mi`).
pub fn bytes(bytes: u64) -> Quantity {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return Quantity(format!("{}{suffix}", bytes / unit));
        }
    }
    Quantity(bytes.to_string())
}

/// A plain count as a quantity (`30`).
pub fn count(n: u64) -> Quantity {
    Quantity(n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_scheduler_writes() {
        assert_eq!(parse("8Gi"), Ok(8 << 30));
        assert_eq!(parse("1536Mi"), Ok(1536 << 20));
        assert_eq!(parse("30"), Ok(30));
        assert_eq!(parse("2k"), Ok(2000));
        assert_eq!(parse("12e6"), Ok(12_000_000));
        for bad in [
            "",
            "Gi",
            "-1",
            "1.5Gi",
            "500m",
            "8GiB",
            "99999999999Ei",
            "1e40",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for n in [0, 1, 255 << 20, 8 << 30, 141_000_000_000, 3 << 40] {
            assert_eq!(value(&bytes(n)), Ok(n));
        }
        assert_eq!(bytes(8 << 30).0, "8Gi");
        assert_eq!(bytes(1536 << 20).0, "1536Mi");
    }
}
