//! flocon: share pacman package caches across a LAN, verified against the local sync dbs.
//! The modules, in the order a request meets them: see README.md's layout table and
//! docs/DESIGN.md for the why.

#[macro_use]
pub mod log;

pub mod auth;
pub mod chunk;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod dbload;
pub mod discovery;
pub mod eventloop;
pub mod fetch;
pub mod guard;
pub mod http;
pub mod outbuf;
pub mod peers;
pub mod policy;
pub mod protocol;
pub mod resolver;
pub mod route;
pub mod server;
pub mod sig;
pub mod stager;
pub mod syncdb;
pub mod sys;
pub mod transfer;
pub mod xorshift;
