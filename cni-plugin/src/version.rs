//! CNI spec versions: the ones this plugin speaks, and their order.

use crate::error::{CniError, code};

/// Versions this plugin accepts in `cniVersion` and reports on VERSION.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// What it answers in when the input names no version.
pub const LATEST: &str = "1.1.0";

/// `major.minor.patch` as numbers, for ordering; `None` if malformed.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let parsed = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(parsed)
}

/// Checks that `v` is one of [`SUPPORTED`].
pub fn check(v: &str) -> Result<(), CniError> {
    if SUPPORTED.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(code::INCOMPATIBLE_VERSION, format!("incompatible CNI version {v:?}"))
            .with_details(format!("vswitch-cni supports {}", SUPPORTED.join(", "))))
    }
}

/// `v >= other`; malformed versions compare as oldest.
pub fn at_least(v: &str, other: &str) -> bool {
    parse(v) >= parse(other)
}

/// The highest version in both lists.
pub fn best_common<'a>(ours: &[&'a str], theirs: &[String]) -> Option<&'a str> {
    ours.iter().filter(|v| theirs.iter().any(|t| t == *v)).max_by_key(|v| parse(v)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_and_negotiation() {
        assert!(at_least("1.1.0", "1.0.0") && at_least("0.4.0", "0.4.0") && !at_least("0.3.1", "0.4.0"));
        assert!(!at_least("bogus", "0.1.0"));
        assert_eq!(parse("1.2.3.4"), None);
        assert_eq!(best_common(SUPPORTED, &["0.4.0".into(), "1.0.0".into(), "0.2.0".into()]), Some("1.0.0"));
        assert_eq!(best_common(SUPPORTED, &["0.2.0".into()]), None);
        assert!(check("1.1.0").is_ok());
        assert_eq!(check("2.0.0").unwrap_err().code, code::INCOMPATIBLE_VERSION);
    }
}
