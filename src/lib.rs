//! flocon: share pacman package caches across a LAN, verified against the local sync dbs.
//! The modules, in the order a request meets them: see README.md's layout table and
//! docs/DESIGN.md for the why.

// Every `unsafe` block lives in sys.rs, each with its safety note.
#![deny(unsafe_code)]
// Modules are pub(crate) except what main.rs and tests/ use: dead items show up.
#![warn(unreachable_pub)]

#[macro_use]
pub mod log;

pub mod auth;
pub(crate) mod chunk;
pub mod cli;
pub mod config;
pub(crate) mod conn;
pub(crate) mod conns;
pub mod daemon;
pub(crate) mod dbload;
#[allow(dead_code)]
pub(crate) mod digest;
// Files other branches are rewriting now keep their dead items until those land (then
// delete them and these allows): discovery.rs `static_peers`; front.rs `Wait::Dns::port`,
// `Front::waiting`; peers.rs (only their tests use
// `next_announce_delay`, `next_expiry`, `len`s, `records`, `query`, `deadline`,
// `can_decide`; nothing uses `own_instance`, two `is_empty`s, `id`, `name`); server.rs
// `CacheDirs::missing`.
#[allow(dead_code)]
pub(crate) mod discovery;
pub(crate) mod env;
pub(crate) mod eventloop;
pub(crate) mod fetch;
// front.rs keeps its `pub` items (its own branch is rewriting it) until that lands
#[allow(unreachable_pub, dead_code)]
pub(crate) mod front;
pub(crate) mod front_loop;
pub(crate) mod guard;
pub(crate) mod http;
pub(crate) mod listen;
pub(crate) mod metrics;
pub(crate) mod names;
pub(crate) mod notify;
pub(crate) mod outbuf;
pub mod pacman_conf;
#[allow(dead_code)]
pub(crate) mod peers;
pub(crate) mod policy;
pub mod protocol;
pub(crate) mod rescan;
pub(crate) mod resolver;
#[allow(dead_code)]
pub(crate) mod server;
pub(crate) mod sig;
pub(crate) mod stager;
pub(crate) mod status;
pub(crate) mod syncdb;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub(crate) mod transfer;
pub(crate) mod upstream;
pub(crate) mod url;
pub mod xorshift;
