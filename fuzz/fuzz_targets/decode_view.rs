//! A whole scope as a backend reads it, with arbitrary bytes in every key: decoding reports
//! garbage and never panics; every problem corresponds to an absent record; decoding through
//! a [`DecodeCache`] warmed by another view (other bytes under the same keys) gives exactly
//! the fresh result, twice.
#![no_main]

use arbitrary::Arbitrary;
use leasehold::{ControlKey, DecodeCache, Epoch, RawEntry, RawView, Version};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    leader: Option<(Vec<u8>, u64)>,
    members: Vec<(String, Vec<u8>)>,
    control: Vec<(u8, Vec<u8>)>,
    /// Member entries of an earlier load, to warm the cache.
    earlier: Vec<(String, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let entry = |key: String, bytes: Vec<u8>, v: u64| RawEntry { key, bytes, version: Version::new(v) };
    let raw = RawView {
        revision: Some(Version::new(1)),
        leader: input.leader.map(|(b, e)| (entry("leader".into(), b, e), Epoch(e))),
        members: input.members.into_iter().enumerate().map(|(i, (k, b))| entry(k, b, i as u64)).collect(),
        control: input
            .control
            .into_iter()
            .map(|(k, b)| (ControlKey::ALL[k as usize % ControlKey::ALL.len()], entry("control".into(), b, 9)))
            .collect(),
    };
    let entries = raw.members.len() + raw.control.len() + usize::from(raw.leader.is_some());
    let mut cache = DecodeCache::default();
    let earlier: Vec<RawEntry> = input.earlier.into_iter().map(|(k, b)| entry(k, b, 7)).collect();
    let _ = RawView { members: earlier, ..raw.clone() }.decode_cached(&mut cache);
    let (first, second) = (raw.clone().decode_cached(&mut cache), raw.clone().decode_cached(&mut cache));
    let view = raw.decode();
    assert_eq!(first, view);
    assert_eq!(second, view);
    let decoded = view.members.len()
        + usize::from(view.leader.is_some())
        + [
            view.config.is_some(),
            view.failover.is_some(),
            view.sync.is_some(),
            view.initialize.is_some(),
            view.history.is_some(),
            view.status.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
    assert!(decoded + view.problems.len() <= entries);
});
