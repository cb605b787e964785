//! What every Customs process shares at run time.
//!
//! - [`supervisor`]: every task a component spawns is tracked, told when
//!   the process shuts down, and given until a drain deadline to finish.
//! - [`trace_context`]: W3C trace context on the internal calls, so one
//!   pull is one trace across peer, gateway and upstream.
//! - [`secret`]: a token type that is redacted wherever it is printed.

pub mod secret;
pub mod supervisor;
pub mod trace_context;

pub use secret::Secret;
pub use supervisor::{DEFAULT_DRAIN, Supervisor, spawn};
