//! Tests of [`JobStore`](dispatch_core::JobStore): enqueue, claim, finish, leases (heartbeat,
//! rescue, fencing), cancel, unique keys, lookups and push wake-ups.

mod cancel;
mod claim;
mod enqueue;
mod finish;
mod lease;
mod lookup;
mod unique;
mod wake;

pub use cancel::*;
pub use claim::*;
pub use enqueue::*;
pub use finish::*;
pub use lease::*;
pub use lookup::*;
pub use unique::*;
pub use wake::*;
