//! Tests of [`JobStore`](dispatch_core::JobStore): enqueue, claim, finish, leases (heartbeat,
//! rescue, fencing), cancel, unique keys and lookups.

mod cancel;
mod claim;
mod enqueue;
mod finish;
mod lease;
mod lookup;
mod unique;

pub use cancel::*;
pub use claim::*;
pub use enqueue::*;
pub use finish::*;
pub use lease::*;
pub use lookup::*;
pub use unique::*;
