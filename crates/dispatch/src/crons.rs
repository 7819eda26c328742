//! The dispatcher's cron calls: the client that registers and manages entries. Entries fire on
//! the cluster's leader (`DispatcherBuilder::cron`, `DispatcherBuilder::cluster`).

use dispatch_core::Result;

use crate::Dispatcher;

impl Dispatcher {
    /// The cron client: register, list, enable, disable, delete and trigger entries. Entries
    /// fire on the cluster's leader (a dispatcher with
    /// [`cluster`](crate::DispatcherBuilder::cluster) on a store that keeps cron entries runs
    /// the scheduler while it leads, whichever process registered them). Fails with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the store keeps no
    /// cron entries.
    pub fn cron(&self) -> Result<dispatch_cron::Cron> {
        self.services.cron()
    }
}
