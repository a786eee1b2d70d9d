//! The emulator's data and switches: actions, work items, issued tokens, rate-limit windows, faults and
//! counters.

use crate::atomic::AtomicU64;
use http::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The endpoints the emulator serves, for [`Emulator::requests`](super::Emulator::requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /oauth/token`.
    Token,
    /// `GET /api/v2/integrations/actions`.
    ListActions,
    /// `GET /api/v2/integrations/actions/categories`.
    ListCategories,
    /// `POST /api/v2/integrations/actions`.
    CreateAction,
    /// `GET /api/v2/integrations/actions/{id}`.
    GetAction,
    /// `POST /api/v2/integrations/actions/{id}/execute`.
    ExecuteAction,
    /// `POST /api/v2/integrations/actions/{id}/test`.
    TestAction,
    /// `PATCH /api/v2/integrations/actions/{id}`.
    UpdateAction,
    /// `DELETE /api/v2/integrations/actions/{id}`.
    DeleteAction,
    /// `POST /api/v2/taskmanagement/workitems/query`.
    QueryWorkitems,
    /// Anything else (answered 404).
    Other,
}

impl Endpoint {
    pub(crate) const ALL: [Endpoint; 11] = [
        Endpoint::Token,
        Endpoint::ListActions,
        Endpoint::ListCategories,
        Endpoint::CreateAction,
        Endpoint::GetAction,
        Endpoint::ExecuteAction,
        Endpoint::TestAction,
        Endpoint::UpdateAction,
        Endpoint::DeleteAction,
        Endpoint::QueryWorkitems,
        Endpoint::Other,
    ];

    fn index(self) -> usize {
        Endpoint::ALL
            .iter()
            .position(|e| *e == self)
            .unwrap_or(Endpoint::ALL.len() - 1)
    }
}

/// A fault to inject: the next `times` API requests (optionally only those whose path and query contain
/// `matching`) are answered with `status` and the Genesys error body, after the bearer check.
#[derive(Debug, Clone)]
pub struct Fault {
    pub(crate) status: StatusCode,
    pub(crate) times: u32,
    pub(crate) retry_after: Option<u64>,
    pub(crate) matching: Option<String>,
}

impl Fault {
    /// Answers `status`; once unless [`times`](Self::times) says otherwise. A `429` carries `Retry-After: 1`
    /// unless [`retry_after`](Self::retry_after) says otherwise.
    #[must_use]
    pub fn status(status: StatusCode) -> Self {
        Fault {
            status,
            times: 1,
            retry_after: (status == StatusCode::TOO_MANY_REQUESTS).then_some(1),
            matching: None,
        }
    }

    /// For this many requests (`u32::MAX`: for ever).
    #[must_use]
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    /// With this `Retry-After` (seconds).
    #[must_use]
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Only for requests whose path and query contain `needle` (e.g. `pageNumber=2`).
    #[must_use]
    pub fn matching(mut self, needle: impl Into<String>) -> Self {
        self.matching = Some(needle.into());
        self
    }
}

pub(crate) struct TokenInfo {
    pub(crate) expires_at: Instant,
    pub(crate) window_start: Instant,
    pub(crate) window_count: u32,
}

/// Everything behind the emulator's lock.
pub(crate) struct Data {
    pub(crate) actions: Vec<Value>,
    pub(crate) workitems: Vec<Value>,
    pub(crate) tokens: HashMap<String, TokenInfo>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) token_lifetime: Duration,
    pub(crate) reject_next_token: bool,
    pub(crate) repeat_pages: bool,
    pub(crate) execute_latency: Duration,
    pub(crate) rate_limit: u32,
    pub(crate) issued: u64,
}

impl Data {
    /// Takes one use of the first fault that applies to `target`.
    pub(crate) fn take_fault(&mut self, target: &str) -> Option<Fault> {
        let index = self.faults.iter().position(|f| {
            f.times > 0
                && f.matching
                    .as_deref()
                    .is_none_or(|needle| target.contains(needle))
        })?;
        let fault = &mut self.faults[index];
        if fault.times != u32::MAX {
            fault.times -= 1;
        }
        let taken = fault.clone();
        if self.faults[index].times == 0 {
            self.faults.remove(index);
        }
        Some(taken)
    }
}

#[derive(Default)]
pub(crate) struct Counters([AtomicU64; Endpoint::ALL.len()]);

impl Counters {
    pub(crate) fn bump(&self, endpoint: Endpoint) {
        self.0[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, endpoint: Endpoint) -> u64 {
        self.0[endpoint.index()].load(Ordering::Relaxed)
    }
}

/// The default actions: 60 `order_lookup_NN` (category `Orders`), 15 `customer_profile_NN` (`CRM`) and 5
/// `ticket_create_NN` (`Helpdesk`).
pub(crate) fn default_actions() -> Vec<Value> {
    let groups = [
        ("order_lookup", "Orders", 60),
        ("customer_profile", "CRM", 15),
        ("ticket_create", "Helpdesk", 5),
    ];
    let mut actions = Vec::new();
    for (prefix, category, count) in groups {
        for i in 1..=count {
            let n = actions.len() + 1;
            let id = format!("a1b2c3d4-0000-4000-8000-{n:012x}");
            actions.push(json!({
                "id": id,
                "name": format!("{prefix}_{i:02}"),
                "category": category,
                "integrationId": format!("i0000000-0000-4000-8000-{:012x}", category.len()),
                "secure": false,
                "version": 1,
                "contract": {"input": {"inputSchema": {"type": "object"}}, "output": {"successSchema": {"type": "object"}}},
                "selfUri": format!("/api/v2/integrations/actions/{id}"),
            }));
        }
    }
    actions
}

/// 57 work items for the cursor listing.
pub(crate) fn default_workitems() -> Vec<Value> {
    (1..=57)
        .map(|i| json!({"id": format!("w0000000-0000-4000-8000-{i:012x}"), "name": format!("workitem {i}")}))
        .collect()
}
