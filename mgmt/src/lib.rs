//! The management plane of a switchyard node: what admins, scripts and the web console
//! use to see and change the node.
//!
//! - [`model`]: the API's documents (nodes, sessions, targets, back-ends, volumes with
//!   their extent maps, changes, events), shaped around the cluster's concepts so the
//!   API stays the same when there are several nodes;
//! - [`node`]: [`NodeApi`], what a node must provide to be managed, and [`ApiError`];
//! - [`journal`]: [`Journal`], the event log and change records (with their states);
//! - [`server`]: the REST API (`/api/v1`), SSE event stream, Prometheus `/metrics` and
//!   the embedded web console, with bearer-token roles;
//! - [`client`] and [`cli`]: the blocking client and the admin commands of the
//!   `switchyard` binary.
//!
//! The API is documented in `mgmt/API.md`.
#![forbid(unsafe_code)]

pub mod cli;
mod cli_catalog;
mod cli_config;
pub mod client;
pub mod histogram;
pub mod journal;
pub mod model;
pub mod node;
pub mod server;

pub use axum::http::StatusCode;
pub use journal::Journal;
pub use node::{ApiError, NodeApi};
pub use server::{router, serve, AuthConfig, Role};
