//! Tenant scope: the optional `(app, tenant)` pair a job, run or event belongs to.

use serde::{Deserialize, Serialize};

/// Which application and tenant a piece of work belongs to. Both parts are optional; an empty
/// scope means "not multi-tenant". A job carries its scope into its handler's context, and work a
/// run or cron entry enqueues inherits the scope of its parent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    /// The application (the Go library's "app").
    pub app: Option<String>,
    /// The tenant within the application (the Go library's "org").
    pub tenant: Option<String>,
}

impl Scope {
    /// A scope of one tenant of one application.
    pub fn new(app: impl Into<String>, tenant: impl Into<String>) -> Self {
        Self { app: Some(app.into()), tenant: Some(tenant.into()) }
    }

    /// Whether neither part is set.
    pub fn is_empty(&self) -> bool {
        self.app.is_none() && self.tenant.is_none()
    }
}
