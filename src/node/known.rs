//! [`Known`]: a value the node has learnt or announced, or not yet.

/// The last value the node saw or told the driver, or `Unknown` before the first one (and
/// after something made it worth telling again). It replaces an `Option<Option<T>>`, whose
/// two `None`s meant different things.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) enum Known<T> {
    /// Nothing seen or told yet; the next value counts as a change.
    #[default]
    Unknown,
    /// The last value.
    Value(T),
}

impl<T: PartialEq> Known<T> {
    /// Whether the last value is `value` (never while `Unknown`).
    pub(super) fn is(&self, value: &T) -> bool {
        matches!(self, Known::Value(v) if v == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_matches_nothing_not_even_none() {
        let mut k: Known<Option<&str>> = Known::Unknown;
        assert!(!k.is(&None));
        k = Known::Value(None);
        assert!(k.is(&None));
        assert!(!k.is(&Some("a")));
    }
}
