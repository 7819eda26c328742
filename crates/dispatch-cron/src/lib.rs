//! x
mod plan;
mod schedule;
pub use plan::*;
pub use schedule::Schedule;
