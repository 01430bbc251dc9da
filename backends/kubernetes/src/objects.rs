//! Reading and building the Lease objects: client-go's fields for the holder, leasehold's
//! records in annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use leasehold::{Epoch, LeaderRecord, LeaderView, Record, Version};

use crate::names::{LEADER_ANNOTATION, MEMBER_ANNOTATION, VALUE_ANNOTATION};

/// The wall clock, written to `acquireTime`/`renewTime` for people and client-go tools. It
/// never decides anything here: expiry is judged on the observer's monotonic clock.
pub(crate) fn wall_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// The object's resourceVersion.
pub(crate) fn rv(lease: &Lease) -> &str {
    lease.metadata.resource_version.as_deref().unwrap_or_default()
}

/// The object's name.
pub(crate) fn name(lease: &Lease) -> &str {
    lease.metadata.name.as_deref().unwrap_or_default()
}

/// `spec.holderIdentity`, if set and not empty.
pub(crate) fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).filter(|h| !h.is_empty())
}

/// `spec.leaseTransitions`, negative values read as 0.
pub(crate) fn transitions(lease: &Lease) -> u64 {
    lease.spec.as_ref().and_then(|s| s.lease_transitions).map_or(0, |t| u64::try_from(t).unwrap_or(0))
}

/// How long an observer must see the object unchanged before treating its holder as gone:
/// the longer of the record's `leaseDurationSeconds` and our own ttl, so neither a holder
/// with a longer duration nor a record with a bogus one is cut short.
pub(crate) fn hold_duration(lease: &Lease, own_ttl: Duration) -> Duration {
    let declared = lease.spec.as_ref().and_then(|s| s.lease_duration_seconds).unwrap_or(0);
    Duration::from_secs(u64::try_from(declared).unwrap_or(0)).max(own_ttl)
}

/// An annotation's value.
pub(crate) fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// The bytes to decode as the leader record of a held lease. Our annotation counts only if
/// it names the current holder: a client-go elector that took the lease over leaves our
/// annotation behind, and that record must not be attributed to the new holder.
pub(crate) fn leader_bytes(lease: &Lease) -> Option<Vec<u8>> {
    let holder = holder(lease)?;
    let text = annotation(lease, LEADER_ANNOTATION);
    let names_holder = text
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .is_some_and(|v| v.get("member").and_then(serde_json::Value::as_str) == Some(holder));
    match text {
        Some(t) if names_holder => Some(t.as_bytes().to_vec()),
        // Reported as a problem: held, but not by a leasehold member we can describe.
        _ => Some(
            serde_json::json!({"member": holder, "error": "held without a leasehold record (client-go or another tool)"})
                .to_string()
                .into_bytes(),
        ),
    }
}

/// The decoded leader of a held lease, or `None` if free or not decodable.
pub(crate) fn leader_view(lease: &Lease) -> Option<LeaderView> {
    let bytes = leader_bytes(lease)?;
    let record = LeaderRecord::decode(name(lease), &bytes).ok()?;
    Some(LeaderView { record, epoch: Epoch(transitions(lease)), version: Version::opaque(rv(lease)) })
}

/// Whether `lease` is still exactly the acquisition `record` at `epoch`.
pub(crate) fn held_as(lease: &Lease, record: &LeaderRecord, epoch: Epoch) -> bool {
    leader_view(lease).is_some_and(|v| v.record == *record && v.epoch == epoch)
}

/// The record bytes of a member or control Lease (empty, so reported, when missing).
pub(crate) fn record_bytes(lease: &Lease, key: &str) -> Vec<u8> {
    annotation(lease, key).unwrap_or_default().as_bytes().to_vec()
}

/// What about an object matters to readers; renewals that change only `renewTime` and the
/// resourceVersion keep it, so watches do not wake on every heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    holder: Option<String>,
    transitions: u64,
    leader: Option<String>,
    member: Option<String>,
    value: Option<String>,
}

impl Fingerprint {
    pub(crate) fn of(lease: &Lease) -> Self {
        Fingerprint {
            holder: holder(lease).map(str::to_string),
            transitions: transitions(lease),
            leader: annotation(lease, LEADER_ANNOTATION).map(str::to_string),
            member: annotation(lease, MEMBER_ANNOTATION).map(str::to_string),
            value: annotation(lease, VALUE_ANNOTATION).map(str::to_string),
        }
    }
}

/// A fresh Lease object.
pub(crate) fn new_lease(
    name: String,
    namespace: &str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    spec: LeaseSpec,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    }
}

/// Sets our labels (keeping others) and one annotation (`None` removes it) on `lease`.
pub(crate) fn stamp(lease: &mut Lease, labels: &BTreeMap<String, String>, key: &str, value: Option<String>) {
    let l = lease.metadata.labels.get_or_insert_with(BTreeMap::new);
    l.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let a = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match value {
        Some(v) => {
            a.insert(key.to_string(), v);
        }
        None => {
            a.remove(key);
        }
    }
}

/// `leaseDurationSeconds` for `ttl` (validated to fit when the options were checked).
pub(crate) fn duration_secs(ttl: Duration) -> i32 {
    i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, annotation: Option<&str>) -> Lease {
        let mut annotations = BTreeMap::new();
        if let Some(a) = annotation {
            annotations.insert(LEADER_ANNOTATION.to_string(), a.to_string());
        }
        let spec = LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_transitions: Some(4),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        let mut l = new_lease("pg-leader".into(), "ns", BTreeMap::new(), annotations, spec);
        l.metadata.resource_version = Some("9".into());
        l
    }

    #[test]
    fn a_record_counts_only_for_its_own_holder() {
        let ours = r#"{"member":"a","token":"t"}"#;
        let view = leader_view(&lease(Some("a"), Some(ours))).unwrap();
        assert_eq!((view.record.member.as_str(), view.epoch, view.version), ("a", Epoch(4), Version::opaque("9")));
        assert!(leader_view(&lease(Some("b"), Some(ours))).is_none(), "client-go holder b took over");
        assert!(leader_bytes(&lease(Some("b"), Some(ours))).is_some(), "still held: reported, not free");
        assert!(leader_view(&lease(None, Some(ours))).is_none());
        assert!(leader_bytes(&lease(Some(""), None)).is_none(), "empty holder is free");
        assert!(leader_view(&lease(Some("a"), Some("{garbage"))).is_none());
    }

    #[test]
    fn durations_never_shrink_below_our_ttl() {
        let l = lease(Some("a"), None);
        assert_eq!(hold_duration(&l, Duration::from_secs(10)), Duration::from_secs(15));
        assert_eq!(hold_duration(&l, Duration::from_secs(30)), Duration::from_secs(30));
        let mut bogus = l.clone();
        bogus.spec.as_mut().unwrap().lease_duration_seconds = Some(-5);
        assert_eq!(hold_duration(&bogus, Duration::from_secs(10)), Duration::from_secs(10));
    }

    #[test]
    fn fingerprints_ignore_renewals() {
        let a = lease(Some("a"), Some("{}"));
        let mut renewed = a.clone();
        renewed.spec.as_mut().unwrap().renew_time = Some(wall_now());
        renewed.metadata.resource_version = Some("10".into());
        assert_eq!(Fingerprint::of(&a), Fingerprint::of(&renewed));
        renewed.spec.as_mut().unwrap().holder_identity = Some("b".into());
        assert_ne!(Fingerprint::of(&a), Fingerprint::of(&renewed));
    }
}
