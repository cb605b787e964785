//! What every Customs process shares at run time.
//!
//! - [`supervisor`]: every task a component spawns is tracked, told when
//!   the process shuts down, and given until a drain deadline to finish.

pub mod supervisor;

pub use supervisor::{DEFAULT_DRAIN, Supervisor};
