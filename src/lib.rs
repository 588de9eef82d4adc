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

mod arg;
mod blocking;
mod commands;
mod config;
mod datatype;
mod docs;
mod errors;
mod hold;
mod holds;
mod key;
mod local;
mod lock;
mod metrics;
mod recovery;
mod replicate;
mod server;
mod session;
mod store;
mod timers;
mod token;
mod validate;

use std::ffi::CStr;
use std::os::raw::c_int;

use rand::RngCore;
use redis_module::{Context, RedisResult, RedisString, RedisValue, Status, raw, redis_module};

use commands::Arg;

/// `MODULE LIST` shows this as the module's version: major * 10000 + minor * 100 + patch.
const MODULE_VERSION: i32 = 100;

/// The ACL category every dlock command joins where the server supports module categories
/// (Redis 7.4+).
const ACL_CATEGORY: &CStr = c"dlock";

/// Turns a command body into the C entry point Redis calls: arguments are borrowed straight
/// from `argv` and the body's result becomes the reply.
macro_rules! entry {
    ($body:path) => {{
        extern "C" fn entry(
            ctx: *mut raw::RedisModuleCtx,
            argv: *mut *mut raw::RedisModuleString,
            argc: c_int,
        ) -> c_int {
            let context = Context::new(ctx);
            let args = unsafe { Arg::slice(argv, argc) };
            reply(&context, $body(&context, args))
        }
        entry
    }};
}

/// Send a command's result: an integer (a token, a count) or nil (a refusal) straight to the
/// client, anything else through the crate's general reply.
fn reply(ctx: &Context, result: RedisResult) -> c_int {
    let direct = unsafe {
        (
            raw::RedisModule_ReplyWithLongLong,
            raw::RedisModule_ReplyWithNull,
        )
    };
    match (result, direct) {
        (Ok(RedisValue::Integer(n)), (Some(reply), _)) => unsafe { reply(ctx.get_raw(), n) },
        (Ok(RedisValue::Null), (_, Some(reply))) => unsafe { reply(ctx.get_raw()) },
        (result, _) => ctx.reply(result) as c_int,
    }
}

type Entry =
    extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

struct Command {
    name: &'static CStr,
    entry: Entry,
    flags: &'static CStr,
    /// ACL categories on Redis 7.2+ (7.0 has no API to set them for module commands).
    acl: &'static CStr,
    doc: &'static docs::Doc,
}

/// Every command, its flags and categories. Each takes the lock's key as its first argument
/// (`DLOCK.GUARD` declares its command's keys through the getkeys API).
const COMMANDS: [Command; 7] = [
    Command {
        name: c"dlock.acquire",
        entry: entry!(commands::acquire::run),
        flags: c"write deny-oom fast",
        acl: c"write fast",
        doc: &docs::ACQUIRE,
    },
    Command {
        name: c"dlock.release",
        entry: entry!(commands::release::run),
        flags: c"write fast",
        acl: c"write fast",
        doc: &docs::RELEASE,
    },
    Command {
        name: c"dlock.extend",
        entry: entry!(commands::extend::run),
        flags: c"write fast",
        acl: c"write fast",
        doc: &docs::EXTEND,
    },
    Command {
        name: c"dlock.fence",
        entry: entry!(commands::fence::run),
        flags: c"write fast",
        acl: c"write fast",
        doc: &docs::FENCE,
    },
    Command {
        name: c"dlock.info",
        entry: entry!(commands::info::run),
        // Not `fast`: `HOLDERS 0` lists every holder, O(N), and Redis keeps `fast` for
        // commands that are O(1) or O(log N) whatever their arguments (as `XINFO STREAM`).
        flags: c"readonly",
        acl: c"read",
        doc: &docs::INFO,
    },
    Command {
        name: c"dlock.guard",
        entry: entry!(commands::guard::run),
        flags: c"write getkeys-api",
        acl: c"write",
        doc: &docs::GUARD,
    },
    Command {
        name: c"dlock.apply",
        entry: entry!(commands::apply::run),
        flags: c"write fast",
        acl: c"write fast",
        doc: &docs::APPLY,
    },
];

fn register_commands(ctx: &Context) -> Result<(), String> {
    let raw_ctx = ctx.get_raw();
    let create = unsafe { raw::RedisModule_CreateCommand }.ok_or("no CreateCommand API")?;
    let with_category = match unsafe { raw::RedisModule_AddACLCategory } {
        Some(add) => {
            (unsafe { add(raw_ctx, ACL_CATEGORY.as_ptr()) }) == raw::REDISMODULE_OK as c_int
        }
        None => false,
    };
    for command in &COMMANDS {
        let name = command.name.to_string_lossy();
        let created = unsafe {
            create(
                raw_ctx,
                command.name.as_ptr(),
                Some(command.entry),
                command.flags.as_ptr(),
                1,
                1,
                1,
            )
        };
        if created != raw::REDISMODULE_OK as c_int {
            return Err(format!("cannot create command {name}"));
        }
        let handle = match unsafe { raw::RedisModule_GetCommand } {
            Some(get) => unsafe { get(raw_ctx, command.name.as_ptr()) },
            None => std::ptr::null_mut(),
        };
        if handle.is_null() {
            return Err(format!("cannot find command {name}"));
        }
        docs::set(handle, command.doc).map_err(|e| format!("{name}: {e}"))?;
        if let Some(set) = unsafe { raw::RedisModule_SetCommandACLCategories } {
            let categories = if with_category {
                format!(
                    "{} {}",
                    command.acl.to_string_lossy(),
                    ACL_CATEGORY.to_string_lossy()
                )
            } else {
                command.acl.to_string_lossy().into_owned()
            };
            let categories = std::ffi::CString::new(categories).map_err(|e| e.to_string())?;
            if (unsafe { set(handle, categories.as_ptr()) }) != raw::REDISMODULE_OK as c_int {
                return Err(format!("cannot set the ACL categories of {name}"));
            }
        }
    }
    Ok(())
}

/// The oldest server dlock runs on: 7.0 brought module configs, command docs and key specs.
const MIN_SERVER_VERSION: c_int = 0x00_07_00_00;

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    let version = match unsafe { raw::RedisModule_GetServerVersion } {
        Some(version) => unsafe { version() },
        None => 0,
    };
    if version < MIN_SERVER_VERSION {
        ctx.log_warning(&format!(
            "dlock: cannot load: it needs Redis 7.0 or newer, and this server is {}.{}.{}",
            version >> 16,
            (version >> 8) & 0xff,
            version & 0xff
        ));
        return Status::Err;
    }
    if let Err(reason) = datatype::register(ctx.get_raw()) {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    if let Err(reason) = config::register(ctx.get_raw(), args) {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    if let Some(register_info) = unsafe { raw::RedisModule_RegisterInfoFunc } {
        unsafe { register_info(ctx.get_raw(), Some(metrics::info)) };
    }
    if let Err(reason) = replicate::init() {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    if let Err(reason) = register_commands(ctx) {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    if let Err(reason) = session::subscribe(ctx.get_raw()) {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    timers::init(blocking::on_due);
    if let Err(reason) = blocking::subscribe(ctx.get_raw()) {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    server::note_role(ctx.get_raw());
    if let Err(reason) = recovery::subscribe(ctx.get_raw()) {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    if let Err(reason) = commands::guard::subscribe(ctx.get_raw()) {
        ctx.log_warning(&format!("dlock: cannot load: {reason}"));
        return Status::Err;
    }
    // Prove the OS random source works now, so generated owner ids cannot fail later.
    let mut probe = [0u8; 16];
    if let Err(e) = rand::rngs::OsRng.try_fill_bytes(&mut probe) {
        ctx.log_warning(&format!("dlock: cannot load: no system random source: {e}"));
        return Status::Err;
    }
    if metrics::evictable() {
        ctx.log_warning(
            "dlock: the maxmemory policy can evict locks: an evicted lock is freed before its \
             lease ends and may be handed to a waiter. Use maxmemory-policy noeviction for the \
             keys' instance (README, Operations); INFO dlock counts evictions (dlock_evicted).",
        );
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
    init: init,
}
