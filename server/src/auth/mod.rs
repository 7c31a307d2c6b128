//! Who may call what: bearer tokens (`authorization: Bearer berth_…`) declared in a tokens file,
//! their scopes (admin, or read / write on workspaces named by id or label selector), the
//! per-peer failure limit, the TLS certificate, and their reloading.
//!
//! The check every RPC passes is split in two: `api/auth.rs` (a tower layer) authenticates each
//! call and puts its [`Principal`] and the [`Access`] its method needs into the request; each
//! handler then asks `api/authorize.rs` about the workspace it is about, once its id is known.

pub mod authenticator;
pub mod failures;
pub mod reload;
pub mod scope;
pub mod tls;
pub mod token;
pub mod tokens_file;

pub use authenticator::{Authenticator, Rejection};
pub use scope::{Access, Principal, Scope};
