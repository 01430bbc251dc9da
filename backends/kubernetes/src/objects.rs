//! Reading and building the Lease objects: client-go's fields for the holder, leasehold's
//! records in annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use leasehold::{Epoch, LeaderRecord, LeaderView, Record, Version};

use crate::names::{EPOCH_ANNOTATION, LEADER_ANNOTATION, MEMBER_ANNOTATION, VALUE_ANNOTATION};

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

/// When the API server last wrote the object, by its own clock: the newest `time` among
/// `metadata.managedFields` (whole seconds; the server sets them on every write). `None`
/// when the server keeps no managed fields.
pub(crate) fn last_written(lease: &Lease) -> Option<k8s_openapi::jiff::Timestamp> {
    lease.metadata.managed_fields.iter().flatten().filter_map(|f| f.time.as_ref().map(|t| t.0)).max()
}

/// How long ago, by the API server's clock, the object was last written, given the server's
/// clock at the read (`Date`, whole seconds). Both stamps are truncated to the second, so
/// the true age exceeds the result minus one second; one more second covers clock offsets
/// between the API servers of a highly available control plane. `None` when unknown.
pub(crate) fn server_age(lease: &Lease, server_now: Option<k8s_openapi::jiff::Timestamp>) -> Option<Duration> {
    let (now, written) = (server_now?, last_written(lease)?);
    let secs = now.as_second().checked_sub(written.as_second())?;
    Some(Duration::from_secs(u64::try_from(secs).ok()?.saturating_sub(2)))
}

/// An annotation's value.
pub(crate) fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// The fencing epoch in the `leasehold.io/epoch` annotation (leader and counter Leases).
pub(crate) fn epoch_annotation(lease: &Lease) -> Option<u64> {
    annotation(lease, EPOCH_ANNOTATION).and_then(|t| t.trim().parse().ok())
}

/// Who our leader annotation names: `Some(Some(member))` when it is a JSON object with a
/// `member` string, `Some(None)` when it is there but unreadable (garbage), `None` when absent.
fn annotated_member(lease: &Lease) -> Option<Option<String>> {
    let text = annotation(lease, LEADER_ANNOTATION)?;
    let value = serde_json::from_str::<serde_json::Value>(text).ok();
    Some(value.and_then(|v| v.get("member").and_then(serde_json::Value::as_str).map(str::to_string)))
}

/// Whether our leader annotation describes the current holder. A client-go elector that
/// took the Lease over leaves our annotation behind; that record must not be attributed to
/// the new holder.
fn ours(lease: &Lease) -> bool {
    holder(lease).is_some_and(|h| annotated_member(lease) == Some(Some(h.to_string())))
}

/// The bytes to decode as the leader record of a held lease, and its epoch.
///
/// A holder without a leasehold record (a client-go elector, another tool) is a foreign
/// holder: a valid record naming `holderIdentity`, with a token derived from the
/// acquisition (`foreign:<leaseTransitions>:<acquireTime>`, stable while it holds) and epoch
/// 0 (it takes part in no fencing of ours). It is respected like any holder, never garbage.
pub(crate) fn leader_entry(lease: &Lease) -> Option<(Vec<u8>, Epoch)> {
    let holder = holder(lease)?;
    let annotated = annotated_member(lease);
    if ours(lease) || annotated == Some(None) {
        // Ours, or garbage in our annotation: decoded as it is (garbage is reported).
        let text = annotation(lease, LEADER_ANNOTATION).unwrap_or_default();
        // Garbage in the epoch annotation reads as epoch 0: the next acquisition still
        // counts up from the counter Lease.
        return Some((text.as_bytes().to_vec(), Epoch(epoch_annotation(lease).unwrap_or(0))));
    }
    let acquired = lease.spec.as_ref().and_then(|s| s.acquire_time.as_ref()).map(|t| t.0.to_string());
    let record = LeaderRecord {
        member: holder.to_string(),
        token: format!("foreign:{}:{}", transitions(lease), acquired.unwrap_or_default()),
        api_url: None,
        conn_url: None,
    };
    Some((record.encode(), Epoch(0)))
}

/// The decoded leader of a held lease, or `None` if free or not decodable.
pub(crate) fn leader_view(lease: &Lease) -> Option<LeaderView> {
    let (bytes, epoch) = leader_entry(lease)?;
    let record = LeaderRecord::decode(name(lease), &bytes).ok()?;
    Some(LeaderView { record, epoch, version: Version::opaque(rv(lease)) })
}

/// Whether `lease` is still exactly the acquisition `record` at `epoch`.
pub(crate) fn held_as(lease: &Lease, record: &LeaderRecord, epoch: Epoch) -> bool {
    ours(lease) && leader_view(lease).is_some_and(|v| v.record == *record && v.epoch == epoch)
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

/// A JSON merge patch (RFC 7386) that turns the stored object into `lease`, conditional on
/// the stored object being at resourceVersion `rv`: the API server answers 409 Conflict when
/// it is not and 404 when the object does not exist. This is the compare-and-set; a PUT
/// (replace) cannot be one, because a real API server *creates* a missing Lease on PUT, even
/// with a resourceVersion in the body. The patch names our labels, our annotations (null
/// removes one) and every client-go spec field (null clears it); anything else on the
/// object, such as another tool's annotations, is left alone.
pub(crate) fn merge_patch(lease: &Lease, rv: &str) -> serde_json::Value {
    let mut annotations = serde_json::Map::new();
    for key in [LEADER_ANNOTATION, MEMBER_ANNOTATION, VALUE_ANNOTATION, EPOCH_ANNOTATION] {
        annotations.insert(key.to_string(), serde_json::Value::Null);
    }
    for (k, v) in lease.metadata.annotations.iter().flatten() {
        annotations.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let spec = lease.spec.clone().unwrap_or_default();
    serde_json::json!({
        "metadata": {
            "resourceVersion": rv,
            "labels": lease.metadata.labels,
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": spec.holder_identity,
            "leaseDurationSeconds": spec.lease_duration_seconds,
            "acquireTime": spec.acquire_time,
            "renewTime": spec.renew_time,
            "leaseTransitions": spec.lease_transitions,
        },
    })
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
        let mut with_epoch = lease(Some("a"), Some(ours));
        with_epoch.metadata.annotations.as_mut().unwrap().insert(EPOCH_ANNOTATION.into(), "12".into());
        let view = leader_view(&with_epoch).unwrap();
        assert_eq!((view.record.member.as_str(), view.epoch, view.version), ("a", Epoch(12), Version::opaque("9")));
        let record = LeaderRecord { member: "a".into(), token: "t".into(), api_url: None, conn_url: None };
        assert!(held_as(&with_epoch, &record, Epoch(12)));
        assert!(!held_as(&with_epoch, &record, Epoch(4)), "leaseTransitions is not the epoch");

        let foreign = leader_view(&lease(Some("b"), Some(ours))).expect("client-go holder b is a holder");
        assert_eq!((foreign.record.member.as_str(), foreign.epoch), ("b", Epoch(0)));
        assert!(foreign.record.token.starts_with("foreign:4:"), "{:?}", foreign.record);
        assert!(!held_as(&lease(Some("b"), Some(ours)), &foreign.record, Epoch(0)), "never ours");
        assert_eq!(leader_view(&lease(Some("b"), None)).unwrap().record.member, "b", "no annotation at all");
        assert!(leader_view(&lease(None, Some(ours))).is_none());
        assert!(leader_entry(&lease(Some(""), None)).is_none(), "empty holder is free");
        assert!(leader_view(&lease(Some("a"), Some("{garbage"))).is_none(), "garbage is no holder");
        assert!(leader_entry(&lease(Some("a"), Some("{garbage"))).is_some(), "but it is reported");
    }

    #[test]
    fn merge_patches_carry_the_condition_and_clear_what_is_gone() {
        let mut l = lease(None, None);
        l.metadata.annotations.as_mut().unwrap().insert("other.io/x".into(), "y".into());
        let patch = merge_patch(&l, "41");
        assert_eq!(patch["metadata"]["resourceVersion"], "41");
        assert!(patch["spec"]["holderIdentity"].is_null(), "a cleared holder is sent as null: {patch}");
        assert!(patch["metadata"]["annotations"][LEADER_ANNOTATION].is_null());
        assert_eq!(patch["metadata"]["annotations"]["other.io/x"], "y");
        assert_eq!(patch["spec"]["leaseTransitions"], 4);
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
