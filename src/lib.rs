//! dlock: distributed locks as native Redis commands.
//!
//! This file is the registration table: every command with its flags, key positions and ACL
//! category, and the load-time checks. Command bodies live in `commands/`, the lock's rules in
//! `lock.rs`, the fencing-token clock in `token.rs`, persistence in `datatype.rs`.

// A panic inside a module takes the whole server down: no path a client reaches may unwrap,
// index unchecked or overflow.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::panic, clippy::arithmetic_side_effects)
)]

mod commands;
mod datatype;
mod errors;
mod key;
mod lock;
mod token;

use rand::RngCore;
use redis_module::{AclCategory, Context, RedisString, Status, redis_module};

/// `MODULE LIST` shows this as the module's version: major * 10000 + minor * 100 + patch.
const MODULE_VERSION: i32 = 100;

fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    if let Err(reason) = datatype::register(ctx.get_raw()) {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    // Prove the OS random source works now, so generated owner ids cannot fail later.
    let mut probe = [0u8; 16];
    if let Err(e) = rand::rngs::OsRng.try_fill_bytes(&mut probe) {
        ctx.log_warning(&format!("dlock: cannot load: no system random source: {e}"));
        return Status::Err;
    }
    ctx.set_module_options(
        redis_module::ModuleOptions::HANDLE_IO_ERRORS
            | redis_module::ModuleOptions::NO_IMPLICIT_SIGNAL_MODIFIED,
    );
    Status::Ok
}

#[cfg(not(test))]
type Allocator = redis_module::alloc::RedisAlloc;
// Unit tests run without a server, so without the server's allocator.
#[cfg(test)]
type Allocator = std::alloc::System;

#[cfg(not(test))]
const ALLOCATOR: Allocator = redis_module::alloc::RedisAlloc;
#[cfg(test)]
const ALLOCATOR: Allocator = std::alloc::System;

redis_module! {
    name: "dlock",
    version: MODULE_VERSION,
    allocator: (Allocator, ALLOCATOR),
    data_types: [],
    acl_categories: ["dlock",],
    init: init,
    commands: [
        ["dlock.acquire", commands::acquire::run, "write deny-oom fast", 1, 1, 1, "", "dlock"],
        ["dlock.release", commands::release::run, "write fast", 1, 1, 1, "", "dlock"],
        ["dlock.extend", commands::extend::run, "write fast", 1, 1, 1, "", "dlock"],
        ["dlock.info", commands::info::run, "readonly fast", 1, 1, 1, "", "dlock"],
        ["dlock.apply", commands::apply::run, "write fast", 1, 1, 1, "", "dlock"],
    ],
}
