//! Failures injected into [`MemoryDcs`](super::MemoryDcs) calls.

use std::collections::VecDeque;

use crate::error::DcsError;

/// Which [`Dcs`](crate::Dcs) method a call is, for [`Fault`] rules that target one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DcsCall {
    /// [`Dcs::load`](crate::Dcs::load)
    Load,
    /// [`Dcs::acquire`](crate::Dcs::acquire)
    Acquire,
    /// [`Dcs::renew`](crate::Dcs::renew)
    Renew,
    /// [`Dcs::release`](crate::Dcs::release)
    Release,
    /// [`Dcs::publish_member`](crate::Dcs::publish_member)
    PublishMember,
    /// [`Dcs::write_control`](crate::Dcs::write_control)
    WriteControl,
    /// [`Dcs::delete_control`](crate::Dcs::delete_control)
    DeleteControl,
    /// [`Dcs::watch`](crate::Dcs::watch)
    Watch,
}

/// How an injected failure behaves, one per [`DcsError`] class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Not applied; [`DcsError::Unavailable`].
    Unavailable,
    /// Not applied (the request was lost on the way); [`DcsError::OutcomeUnknown`].
    RequestLost,
    /// Applied, then the reply was lost; [`DcsError::OutcomeUnknown`].
    ReplyLost,
    /// Not applied; [`DcsError::LeaseLost`] (the session itself is left alone).
    LeaseLost,
    /// Not applied; [`DcsError::Fatal`].
    Fatal,
}

impl Fault {
    /// Whether the request reaches the store before failing.
    pub fn applies(self) -> bool {
        self == Fault::ReplyLost
    }

    /// The error the caller sees.
    pub fn error(self, call: DcsCall) -> DcsError {
        match self {
            Fault::Unavailable => DcsError::unavailable(format!("injected: {call:?} not applied")),
            Fault::RequestLost => DcsError::unknown(format!("injected: {call:?} request lost")),
            Fault::ReplyLost => DcsError::unknown(format!("injected: {call:?} applied, reply lost")),
            Fault::LeaseLost => DcsError::lease_lost(format!("injected: {call:?} lease lost")),
            Fault::Fatal => DcsError::fatal(format!("injected: {call:?} fatal")),
        }
    }
}

/// Pending rules: the first one that matches a call fires and counts down.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    rules: VecDeque<Rule>,
}

#[derive(Debug)]
struct Rule {
    only: Option<DcsCall>,
    remaining: u32,
    fault: Fault,
}

impl FaultPlan {
    pub(crate) fn add(&mut self, only: Option<DcsCall>, calls: u32, fault: Fault) {
        if calls > 0 {
            self.rules.push_back(Rule { only, remaining: calls, fault });
        }
    }

    /// The fault to inject into this call, if any.
    pub(crate) fn take(&mut self, call: DcsCall) -> Option<Fault> {
        let i = self.rules.iter().position(|r| r.only.is_none_or(|c| c == call))?;
        let rule = &mut self.rules[i];
        rule.remaining -= 1;
        let fault = rule.fault;
        if rule.remaining == 0 {
            self.rules.remove(i);
        }
        Some(fault)
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fire_in_order_and_count_down() {
        let mut plan = FaultPlan::default();
        plan.add(Some(DcsCall::Renew), 2, Fault::ReplyLost);
        plan.add(None, 1, Fault::Unavailable);
        plan.add(None, 0, Fault::Fatal);
        assert_eq!(plan.take(DcsCall::Load), Some(Fault::Unavailable));
        assert_eq!(plan.take(DcsCall::Load), None);
        assert_eq!(plan.take(DcsCall::Renew), Some(Fault::ReplyLost));
        assert_eq!(plan.take(DcsCall::Renew), Some(Fault::ReplyLost));
        assert_eq!(plan.take(DcsCall::Renew), None);
        assert!(Fault::ReplyLost.applies() && !Fault::RequestLost.applies());
        assert!(Fault::RequestLost.error(DcsCall::Acquire).is_outcome_unknown());
        assert!(Fault::LeaseLost.error(DcsCall::Renew).is_lease_lost());
    }
}
