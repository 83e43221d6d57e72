//! flocon: share pacman package caches across a LAN, verified against the local sync dbs.
//! The modules, in the order a request meets them: see README.md's layout table and
//! docs/DESIGN.md for the why.

// Every `unsafe` block lives in sys.rs, each with its safety note.
#![deny(unsafe_code)]

#[macro_use]
pub mod log;

pub mod auth;
pub mod chunk;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod dbload;
pub mod discovery;
pub mod env;
pub mod eventloop;
pub mod fetch;
pub mod front;
pub mod guard;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod outbuf;
pub mod peers;
pub mod policy;
pub mod protocol;
pub mod resolver;
pub mod server;
pub mod sig;
pub mod stager;
pub mod status;
pub mod syncdb;
#[allow(unsafe_code)]
pub mod sys;
pub mod transfer;
pub mod xorshift;
