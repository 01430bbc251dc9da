//! Object names, labels and annotations of one scope.
//!
//! Every scope owns Leases named `<prefix><scope>-leader`, `<prefix><scope>-<control key>`
//! (`-config`, `-failover`, `-sync`, `-initialize`, `-history`, `-status`) and
//! `<prefix><scope>-member-<member>`, all labelled `leasehold.io/scope=<scope>` and
//! `app.kubernetes.io/managed-by=leasehold`, so one label-selected list reads the whole scope.

use std::collections::BTreeMap;
use std::fmt::Write;

use leasehold::{ControlKey, DcsError};

/// Prefix of leasehold's label and annotation keys.
pub const LABEL_DOMAIN: &str = "leasehold.io/";
/// Label: the scope an object belongs to.
pub const SCOPE_LABEL: &str = "leasehold.io/scope";
/// Label: what the object is (`leader`, `member`, `control`).
pub const ROLE_LABEL: &str = "leasehold.io/role";
/// Label: the standard "managed by" label.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Annotation on the leader Lease: the [`LeaderRecord`](leasehold::LeaderRecord) JSON.
pub const LEADER_ANNOTATION: &str = "leasehold.io/leader";
/// Annotation on a member Lease: the [`MemberRecord`](leasehold::MemberRecord) JSON.
pub const MEMBER_ANNOTATION: &str = "leasehold.io/member";
/// Annotation on a control-key Lease: the record JSON.
pub const VALUE_ANNOTATION: &str = "leasehold.io/value";
/// Annotation on the leader Lease: the fencing epoch of the current (or last) acquisition;
/// on the epoch counter Lease: the greatest epoch handed out in the scope.
pub const EPOCH_ANNOTATION: &str = "leasehold.io/epoch";

const MEMBER_INFIX: &str = "member-";

/// A DNS-1123 label (namespace names): at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns_label(name: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters long".into());
    }
    if !name.chars().all(|c| alnum(c) || c == '-') || !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err(
            "must consist of lowercase letters, digits and '-', starting and ending with a letter or digit".into()
        );
    }
    Ok(())
}

/// A label key: optional DNS subdomain prefix and `/`, then 1 to 63 of `[A-Za-z0-9-_.]`.
pub fn label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let ok = !prefix.is_empty() && prefix.len() <= 253 && prefix.split('.').all(|l| dns_label(l).is_ok());
            if !ok {
                return Err(format!("prefix {prefix:?} is not a DNS subdomain"));
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("name part is empty".into());
    }
    label_value(name)
}

/// A label value: empty, or 1 to 63 of `[A-Za-z0-9-_.]` with alphanumeric ends.
pub fn label_value(value: &str) -> Result<(), String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err("must be at most 63 of [A-Za-z0-9-_.], starting and ending with a letter or digit".into())
    }
}

/// Encodes a member name into a DNS-safe object-name part: names that already are lowercase
/// letters, digits and single dashes are kept; anything else becomes `x--<hex of the bytes>`,
/// which a kept name can never look like (it has a double dash).
pub fn encode_member(name: &str) -> String {
    let plain = dns_label(name).is_ok() && !name.contains("--");
    if plain {
        return name.to_string();
    }
    let mut out = String::from("x--");
    for b in name.as_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What an object of a scope is, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectRole {
    /// The leader Lease.
    Leader,
    /// A member Lease; carries the encoded member name.
    Member(String),
    /// A control-key Lease.
    Control(ControlKey),
}

/// The names and labels of one scope's objects.
#[derive(Clone, Debug)]
pub struct ScopeNames {
    scope: String,
    base: String,
    labels: BTreeMap<String, String>,
}

impl ScopeNames {
    /// Names for `scope`. The scope must be usable both in object names and as a label value:
    /// a DNS-1123 label (at most 63 lowercase letters, digits and `-`).
    pub fn new(prefix: &str, scope: &str, extra_labels: &BTreeMap<String, String>) -> Result<Self, DcsError> {
        dns_label(scope).map_err(|e| {
            DcsError::fatal(format!(
                "scope name {scope:?} cannot be used on Kubernetes: it {e} (it becomes part of object names and the {SCOPE_LABEL} label)"
            ))
        })?;
        let mut labels = extra_labels.clone();
        labels.insert(MANAGED_BY.into(), "leasehold".into());
        labels.insert(SCOPE_LABEL.into(), scope.into());
        Ok(ScopeNames { scope: scope.to_string(), base: format!("{prefix}{scope}-"), labels })
    }

    /// `<prefix><scope>-leader`.
    pub fn leader(&self) -> String {
        format!("{}leader", self.base)
    }

    /// `<prefix><scope>-epoch`: the scope's epoch counter, which outlives the leader Lease.
    pub fn epoch_counter(&self) -> String {
        format!("{}epoch", self.base)
    }

    /// `<prefix><scope>-<key>`.
    pub fn control(&self, key: ControlKey) -> String {
        format!("{}{}", self.base, key.name())
    }

    /// `<prefix><scope>-member-<encoded name>`; an error if it would exceed 253 characters.
    pub fn member(&self, member: &str) -> Result<String, DcsError> {
        let name = format!("{}{MEMBER_INFIX}{}", self.base, encode_member(member));
        if name.len() > 253 {
            return Err(DcsError::fatal(format!(
                "member name {member:?} is too long for a Kubernetes object name ({} > 253 characters as {name:?})",
                name.len()
            )));
        }
        Ok(name)
    }

    /// What the object called `name` is, if it belongs to this scope.
    pub fn role_of(&self, name: &str) -> Option<ObjectRole> {
        let rest = name.strip_prefix(&self.base)?;
        if rest == "leader" {
            return Some(ObjectRole::Leader);
        }
        if let Some(m) = rest.strip_prefix(MEMBER_INFIX) {
            return (!m.is_empty()).then(|| ObjectRole::Member(m.to_string()));
        }
        ControlKey::from_name(rest).map(ObjectRole::Control)
    }

    /// The labels of an object with `role` (`leader`, `member`, `control`).
    pub fn labels(&self, role: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(ROLE_LABEL.into(), role.into());
        labels
    }

    /// The label selector that lists exactly this scope's objects.
    pub fn selector(&self) -> String {
        format!("{MANAGED_BY}=leasehold,{SCOPE_LABEL}={}", self.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_roles() {
        let n = ScopeNames::new("p-", "pg", &BTreeMap::new()).unwrap();
        assert_eq!(n.leader(), "p-pg-leader");
        assert_eq!(n.role_of("p-pg-leader"), Some(ObjectRole::Leader));
        assert_eq!(n.role_of(&n.control(ControlKey::Sync)), Some(ObjectRole::Control(ControlKey::Sync)));
        assert_eq!(n.role_of(&n.member("n1").unwrap()), Some(ObjectRole::Member("n1".into())));
        assert_eq!(n.role_of("p-pg-other"), None);
        assert_eq!(n.role_of(&n.epoch_counter()), None, "the counter is no record");
        assert_eq!(n.role_of("p-pg2-leader"), None);
        assert!(n.selector().contains("leasehold.io/scope=pg"));
    }

    #[test]
    fn member_names_are_encoded_without_collisions() {
        assert_eq!(encode_member("node-1"), "node-1");
        assert_eq!(encode_member("Node_1"), "x--4e6f64655f31");
        assert_ne!(encode_member("a--b"), "a--b", "a double dash is reserved for encoded names");
        assert!(encode_member("ü").starts_with("x--"));
        let n = ScopeNames::new("", "pg", &BTreeMap::new()).unwrap();
        assert!(n.member(&"m".repeat(300)).unwrap_err().is_fatal());
    }

    #[test]
    fn scopes_must_be_dns_labels() {
        for bad in ["PG", "pg_1", "", "-pg", &"s".repeat(64)] {
            assert!(ScopeNames::new("", bad, &BTreeMap::new()).unwrap_err().is_fatal(), "{bad:?}");
        }
    }
}
