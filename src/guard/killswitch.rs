//! The kill switch's in-memory state: which tenants and which keys are frozen right now.
//!
//! Responsible for answering "is this call frozen, and by whom?" on every request, for
//! loading the state from the store's active freezes at start, and for applying each new
//! freeze or unfreeze event as it is recorded (locally or by another instance).
//!
//! It must not record anything or talk to the store: the caller records the event first and
//! then applies it here, so the state never runs ahead of the evidence. The common case —
//! nothing frozen anywhere — costs one atomic load and takes no lock.

use super::{read, write};
use crate::domain::{FreezeAction, FreezeEvent, KeyId, TenantId, Timestamp};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a freeze applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeScope {
    Tenant,
    Key,
}

/// Why a call is frozen: the freeze event that is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrozenBy {
    pub scope: FreezeScope,
    pub reason: String,
    pub actor: String,
    pub at: Timestamp,
}

#[derive(Debug, Default)]
struct TenantFreezes {
    tenant: Option<FrozenBy>,
    keys: HashMap<KeyId, FrozenBy>,
}

impl TenantFreezes {
    fn count(&self) -> usize {
        usize::from(self.tenant.is_some()) + self.keys.len()
    }
}

/// The frozen state of one tenant, for the status endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TenantFreezeStatus {
    pub tenant: Option<FrozenBy>,
    /// Frozen keys, ordered by key id.
    pub keys: Vec<(KeyId, FrozenBy)>,
}

/// Every freeze in force, ordered by tenant id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KillSwitchSnapshot {
    pub tenants: Vec<(TenantId, TenantFreezeStatus)>,
}

impl KillSwitchSnapshot {
    pub fn tenant(&self, id: &TenantId) -> Option<&TenantFreezeStatus> {
        self.tenants.iter().find(|(t, _)| t == id).map(|(_, s)| s)
    }
}

#[derive(Debug, Default)]
pub struct KillSwitch {
    /// How many freezes are in force; zero lets `check` return without locking.
    frozen: AtomicUsize,
    state: RwLock<HashMap<TenantId, TenantFreezes>>,
}

impl KillSwitch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the whole state with `events` (the store's active freezes, or a full
    /// reload after a lost notification channel). Events are applied in time order.
    pub fn load(&self, events: &[FreezeEvent]) {
        let mut sorted: Vec<&FreezeEvent> = events.iter().collect();
        sorted.sort_by_key(|e| e.at);
        let mut state = write(&self.state);
        state.clear();
        for e in sorted {
            apply_to(&mut state, e);
        }
        self.frozen.store(total(&state), Ordering::Release);
    }

    /// Applies one freeze or unfreeze, already recorded by the caller. Events for a target
    /// are expected in the order they were recorded; the latest one applied wins.
    pub fn apply(&self, event: &FreezeEvent) {
        let mut state = write(&self.state);
        apply_to(&mut state, event);
        self.frozen.store(total(&state), Ordering::Release);
    }

    /// The freeze that stops a call by `key` of `tenant`, if any; a tenant freeze takes
    /// precedence over a key freeze.
    pub fn check(&self, tenant: &TenantId, key: &KeyId) -> Option<FrozenBy> {
        if self.frozen.load(Ordering::Acquire) == 0 {
            return None;
        }
        let state = read(&self.state);
        let t = state.get(tenant)?;
        t.tenant.clone().or_else(|| t.keys.get(key).cloned())
    }

    /// Whether anything at all is frozen.
    pub fn any_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire) > 0
    }

    /// One tenant's freezes.
    pub fn tenant_status(&self, tenant: &TenantId) -> TenantFreezeStatus {
        if !self.any_frozen() {
            return TenantFreezeStatus::default();
        }
        read(&self.state)
            .get(tenant)
            .map(status_of)
            .unwrap_or_default()
    }

    /// Every freeze in force.
    pub fn snapshot(&self) -> KillSwitchSnapshot {
        let state = read(&self.state);
        let mut tenants: Vec<_> = state
            .iter()
            .map(|(t, f)| (t.clone(), status_of(f)))
            .collect();
        tenants.sort_by(|a, b| a.0.cmp(&b.0));
        KillSwitchSnapshot { tenants }
    }
}

fn status_of(f: &TenantFreezes) -> TenantFreezeStatus {
    let mut keys: Vec<_> = f.keys.iter().map(|(k, b)| (k.clone(), b.clone())).collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    TenantFreezeStatus {
        tenant: f.tenant.clone(),
        keys,
    }
}

fn total(state: &HashMap<TenantId, TenantFreezes>) -> usize {
    state.values().map(TenantFreezes::count).sum()
}

fn apply_to(state: &mut HashMap<TenantId, TenantFreezes>, e: &FreezeEvent) {
    let by = |scope| FrozenBy {
        scope,
        reason: e.reason.clone(),
        actor: e.actor.clone(),
        at: e.at,
    };
    match e.action {
        FreezeAction::Freeze => {
            let entry = state.entry(e.tenant_id.clone()).or_default();
            match &e.key_id {
                None => entry.tenant = Some(by(FreezeScope::Tenant)),
                Some(k) => {
                    entry.keys.insert(k.clone(), by(FreezeScope::Key));
                }
            }
        }
        FreezeAction::Unfreeze => {
            let Some(entry) = state.get_mut(&e.tenant_id) else {
                return;
            };
            match &e.key_id {
                None => entry.tenant = None,
                Some(k) => {
                    entry.keys.remove(k);
                }
            }
            if entry.count() == 0 {
                state.remove(&e.tenant_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FreezeId;

    fn event(t: &TenantId, k: Option<&KeyId>, action: FreezeAction, at: i64) -> FreezeEvent {
        FreezeEvent {
            id: FreezeId::generate(),
            tenant_id: t.clone(),
            key_id: k.cloned(),
            action,
            actor: "user:usr_1".into(),
            reason: format!("{} at {at}", action.as_str()),
            at: Timestamp::from_millis(at),
        }
    }

    #[test]
    fn nothing_is_frozen_at_first() {
        let ks = KillSwitch::new();
        assert!(!ks.any_frozen());
        assert_eq!(ks.check(&TenantId::generate(), &KeyId::generate()), None);
        assert_eq!(ks.snapshot(), KillSwitchSnapshot::default());
    }

    #[test]
    fn a_frozen_tenant_stops_every_key_and_says_who_and_why() {
        let ks = KillSwitch::new();
        let (t, other) = (TenantId::generate(), TenantId::generate());
        ks.apply(&event(&t, None, FreezeAction::Freeze, 5));
        let by = ks.check(&t, &KeyId::generate()).unwrap();
        assert_eq!(by.scope, FreezeScope::Tenant);
        assert_eq!(by.actor, "user:usr_1");
        assert_eq!(by.reason, "freeze at 5");
        assert_eq!(by.at, Timestamp::from_millis(5));
        assert_eq!(ks.check(&other, &KeyId::generate()), None);
    }

    #[test]
    fn a_frozen_key_stops_only_that_key() {
        let ks = KillSwitch::new();
        let (t, k, k2) = (TenantId::generate(), KeyId::generate(), KeyId::generate());
        ks.apply(&event(&t, Some(&k), FreezeAction::Freeze, 1));
        assert_eq!(ks.check(&t, &k).unwrap().scope, FreezeScope::Key);
        assert_eq!(ks.check(&t, &k2), None);
        // The same key id under another tenant is another target.
        assert_eq!(ks.check(&TenantId::generate(), &k), None);
    }

    #[test]
    fn unfreezing_lifts_the_freeze_and_the_fast_path_returns() {
        let ks = KillSwitch::new();
        let (t, k) = (TenantId::generate(), KeyId::generate());
        ks.apply(&event(&t, None, FreezeAction::Freeze, 1));
        ks.apply(&event(&t, Some(&k), FreezeAction::Freeze, 2));
        ks.apply(&event(&t, None, FreezeAction::Unfreeze, 3));
        assert_eq!(ks.check(&t, &k).unwrap().scope, FreezeScope::Key);
        ks.apply(&event(&t, Some(&k), FreezeAction::Unfreeze, 4));
        assert_eq!(ks.check(&t, &k), None);
        assert!(!ks.any_frozen());
        // Unfreezing what is not frozen is harmless.
        ks.apply(&event(&t, None, FreezeAction::Unfreeze, 5));
        assert!(!ks.any_frozen());
    }

    #[test]
    fn load_replaces_the_state_in_time_order() {
        let ks = KillSwitch::new();
        let (t, t2, k) = (
            TenantId::generate(),
            TenantId::generate(),
            KeyId::generate(),
        );
        ks.apply(&event(&t2, None, FreezeAction::Freeze, 1));
        ks.load(&[
            event(&t, Some(&k), FreezeAction::Freeze, 20),
            event(&t, None, FreezeAction::Unfreeze, 15),
            event(&t, None, FreezeAction::Freeze, 10),
        ]);
        assert_eq!(ks.check(&t2, &k), None, "load replaces the earlier state");
        assert_eq!(
            ks.check(&t, &KeyId::generate()),
            None,
            "the later unfreeze wins"
        );
        assert_eq!(ks.check(&t, &k).unwrap().scope, FreezeScope::Key);
    }

    #[test]
    fn the_snapshot_lists_frozen_tenants_and_keys() {
        let ks = KillSwitch::new();
        let (t, k) = (TenantId::generate(), KeyId::generate());
        ks.apply(&event(&t, None, FreezeAction::Freeze, 1));
        ks.apply(&event(&t, Some(&k), FreezeAction::Freeze, 2));
        let snap = ks.snapshot();
        let status = snap.tenant(&t).unwrap();
        assert!(status.tenant.is_some());
        assert_eq!(status.keys.len(), 1);
        assert_eq!(status.keys[0].0, k);
        assert_eq!(&ks.tenant_status(&t), status);
        assert_eq!(
            ks.tenant_status(&TenantId::generate()),
            TenantFreezeStatus::default()
        );
    }
}
