//! Versions of the WIT contract and of the runtime, and which ones are compatible.

/// The version of the `cairn:blueprint` WIT package this runtime implements.
pub const WIT_VERSION: &str = "0.1.0";

/// The WIT package whose interfaces this runtime provides.
pub(crate) const WIT_PACKAGE: &str = "cairn:blueprint";

/// This runtime's own version, compared with a blueprint's `min-runtime`.
pub(crate) const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A `major.minor.patch` version (pre-release and build suffixes are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Semver {
    /// The major version.
    pub major: u64,
    /// The minor version.
    pub minor: u64,
    /// The patch version.
    pub patch: u64,
}

impl Semver {
    /// `s` as a version, when it is one (a description's `version` is checked to be at load).
    pub fn parse(s: &str) -> Option<Semver> {
        let (major, minor, patch) = cairn_contract::version_parts(s)?;
        Some(Semver {
            major,
            minor,
            patch,
        })
    }

    /// Whether a component built against `theirs` runs on a host implementing `self`: the
    /// same major (for 0.x the same minor too), and not newer than ours.
    pub(crate) fn accepts(self, theirs: Semver) -> bool {
        if theirs.major != self.major {
            return false;
        }
        if self.major == 0 {
            theirs.minor == self.minor && theirs.patch <= self.patch
        } else {
            (theirs.minor, theirs.patch) <= (self.minor, self.patch)
        }
    }

    /// `0.1.0 to 0.1.2` or `1.0.0 to 1.4.0`: what [`Semver::accepts`] takes, for messages.
    pub(crate) fn accepted_range(self) -> String {
        let first = if self.major == 0 {
            format!("0.{}.0", self.minor)
        } else {
            format!("{}.0.0", self.major)
        };
        let ours = format!("{}.{}.{}", self.major, self.minor, self.patch);
        if first == ours {
            ours
        } else {
            format!("{first} to {ours}")
        }
    }
}

/// How versions `a` and `b` order by semantic versioning's precedence: by their numbers, then
/// a pre-release (`1.0.0-rc.1`) before its release, pre-releases by their dot-separated fields
/// (numbers by value and before words, a shorter run of equal fields first); build metadata
/// (`+…`) ignored. `None` when either is not a version.
pub fn version_order(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    let pre = |s: &str| -> Option<String> {
        let core = s.trim().split('+').next()?;
        core.split_once('-').map(|(_, p)| p.to_owned())
    };
    let by_numbers = Semver::parse(a)?.cmp(&Semver::parse(b)?);
    if by_numbers != Ordering::Equal {
        return Some(by_numbers);
    }
    Some(match (pre(a), pre(b)) {
        (None, None) => Ordering::Equal,
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(x), Some(y)) => {
            let field = |f: &str| f.parse::<u64>().map_err(|_| f.to_owned());
            let (xs, ys): (Vec<_>, Vec<_>) = (
                x.split('.').map(field).collect(),
                y.split('.').map(field).collect(),
            );
            // `Ok` (a number) orders before `Err` (a word), as the rule says.
            xs.cmp(&ys)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_releases_come_before_their_release() {
        use std::cmp::Ordering::*;
        for (a, b, order) in [
            ("1.0.0-rc.1", "1.0.0", Less),
            ("1.0.0", "1.0.0+build.7", Equal),
            ("1.0.0-alpha", "1.0.0-alpha.1", Less),
            ("1.0.0-alpha.1", "1.0.0-alpha.beta", Less),
            ("1.0.0-beta.2", "1.0.0-beta.11", Less),
            ("1.0.0-rc.1", "0.9.0", Greater),
        ] {
            assert_eq!(version_order(a, b), Some(order), "{a} against {b}");
        }
        assert_eq!(version_order("x", "1.0.0"), None);
    }

    #[test]
    fn versions_order_by_their_numbers() {
        let version_key = Semver::parse;
        assert!(version_key("0.10.0") > version_key("0.9.3"));
        assert_eq!(version_key("1.0"), version_key("1.0.0"));
        assert!(version_key("1.0.0-rc.1") == version_key("1.0.0"));
        assert!(version_key("2.0.0") > version_key("1.99.99"));
    }

    fn v(s: &str) -> Semver {
        Semver::parse(s).expect("valid version")
    }

    #[test]
    fn compatibility() {
        assert!(v("0.1.0").accepts(v("0.1.0")));
        assert!(!v("0.1.0").accepts(v("0.1.1")));
        assert!(!v("0.1.0").accepts(v("0.2.0")));
        assert!(!v("0.1.0").accepts(v("9.0.0")));
        assert!(v("1.3.0").accepts(v("1.2.9")));
        assert!(!v("1.3.0").accepts(v("1.4.0")));
        assert_eq!(v("0.1.0").accepted_range(), "0.1.0");
        assert_eq!(v("0.1.2").accepted_range(), "0.1.0 to 0.1.2");
        assert_eq!(v("1.4.0").accepted_range(), "1.0.0 to 1.4.0");
        assert_eq!(Semver::parse("1.2.3-rc.1"), Some(v("1.2.3")));
        assert_eq!(Semver::parse("x"), None);
    }
}
