//! `DLOCK.GUARD lockkey token command [arg ...]`: a fenced write inside Redis.
//!
//! `command` runs only while `lockkey` has a live hold with `token`, in the same atomic step
//! as that check. It runs through `RedisModule_Call` as the calling user (ACL applies), in the
//! caller's protocol, refused under `maxmemory` if it needs memory, and is replicated as
//! itself (as Redis rewrites it: `SPOP` reaches replicas as `SREM`); its reply goes back
//! unchanged. Its keys are declared through the getkeys API next to the lock's, so ACL key
//! patterns and cluster routing (`CROSSSLOT`) see all of them.
//!
//! Commands that could block, or that cannot run inside another command (Redis's `noscript`
//! flag: `MULTI`, `WATCH`, `SUBSCRIBE`, ...), are refused, and so is a guard inside a guard
//! (each level would copy the arguments and recurse through the server). The flags come from `COMMAND INFO`
//! the first time a command is guarded and are kept until a module is loaded or unloaded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::rc::Rc;
use std::slice;

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue, raw};

use super::{Arg, parse_token};
use crate::errors::{
    ERR_FENCE_NOT_HELD, ERR_FENCE_STALE, ERR_FENCE_UNKNOWN, ERR_GUARD_CALL, ERR_GUARD_NESTED,
    err_guard_blocking, err_guard_noperm, err_guard_noscript,
};
use crate::key::LockKey;
use crate::local;
use crate::lock::FenceError;
use crate::metrics;
use crate::server;

/// `RedisModule_Call` flags: replicate (`!`), run as the caller's user (`C`), errors as
/// replies (`E`), the caller's protocol (`0`), respect `maxmemory` (`M`), argv vector (`v`).
const CALL_FLAGS: &CStr = c"!CE0Mv";

struct GuardArgs<'a> {
    key: &'a Arg,
    token: i64,
    /// The command's name and arguments.
    command: &'a [Arg],
}

impl<'a> GuardArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, token, command @ ..] = args else {
            return Err(RedisError::WrongArity);
        };
        if command.is_empty() {
            return Err(RedisError::WrongArity);
        }
        Ok(GuardArgs {
            key,
            token: parse_token(token)?,
            command,
        })
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let raw_ctx = ctx.get_raw();
    if is_keys_request(raw_ctx) {
        declare_keys(raw_ctx, args);
        return Ok(RedisValue::NoReply);
    }
    let args = GuardArgs::parse(args)?;
    let callee = Callee::resolve(raw_ctx, args.command)?;
    {
        let mut key = LockKey::open_read(ctx, args.key);
        let fence = match key.lock()? {
            Some(lock) => lock.fence(args.token, server::now_ms()),
            None => Err(FenceError::NotHeld),
        };
        if let Err(refusal) = fence {
            metrics::GUARDS_REFUSED.incr();
            return Err(RedisError::Str(match refusal {
                FenceError::NotHeld => ERR_FENCE_NOT_HELD,
                FenceError::Stale => ERR_FENCE_STALE,
                FenceError::Unknown => ERR_FENCE_UNKNOWN,
            }));
        }
        // The key closes here: the command may touch the lock's key itself.
    }
    metrics::GUARDS.incr();
    call(
        raw_ctx,
        callee.name(),
        args.command.get(1..).unwrap_or_default(),
    )
}

/// Run `name` with `args` and pass its reply (or error) through unchanged.
fn call(ctx: *mut raw::RedisModuleCtx, name: &CStr, args: &[Arg]) -> RedisResult {
    let api = unsafe {
        (
            raw::RedisModule_Call,
            raw::RedisModule_ReplyWithCallReply,
            raw::RedisModule_FreeCallReply,
        )
    };
    let (Some(call), Some(reply_with), Some(free)) = api else {
        return Err(RedisError::Str(ERR_GUARD_CALL));
    };
    // `Arg` is a transparent pointer to a RedisModuleString, so the slice is an argv.
    let argv = args
        .as_ptr()
        .cast_mut()
        .cast::<*mut raw::RedisModuleString>();
    let reply = unsafe { call(ctx, name.as_ptr(), CALL_FLAGS.as_ptr(), argv, args.len()) };
    if reply.is_null() {
        return Err(RedisError::Str(ERR_GUARD_CALL));
    }
    let error = error_text(reply).map(|text| in_redis_words(ctx, name, text));
    if error.is_none() {
        unsafe { reply_with(ctx, reply) };
    }
    unsafe { free(reply) };
    match error {
        Some(text) => Err(RedisError::String(text)),
        None => Ok(RedisValue::NoReply),
    }
}

/// Redis 7.0's `RedisModule_Call` reports a command the user may not run with a text of its
/// own; later servers say what Redis says to the client itself. Give every server's callers
/// the later text, so ACL failures read (and match) the same everywhere.
const ACL_FAILED_7_0: &str = "ERR acl verification failed, can't run this command or subcommand.";

fn in_redis_words(ctx: *mut raw::RedisModuleCtx, name: &CStr, text: String) -> String {
    if text != ACL_FAILED_7_0 {
        return text;
    }
    let user = match unsafe { raw::RedisModule_GetCurrentUserName } {
        Some(get) => RedisString::from_redis_module_string(ctx, unsafe { get(ctx) }),
        None => return text,
    };
    let command = name.to_string_lossy().to_ascii_lowercase();
    err_guard_noperm(&user.to_string_lossy(), &command)
}

/// The text of an error reply, made safe to send. Errors the server builds for a called
/// command may quote its arguments raw ("unknown subcommand '...'"): passed through as they
/// are, a CR or LF in an argument would break the client's protocol stream, and other bytes
/// outside printable ASCII break clients that read errors as UTF-8. Those become `?`.
fn error_text(reply: *mut raw::RedisModuleCallReply) -> Option<String> {
    let kind = unsafe { raw::RedisModule_CallReplyType }?;
    if unsafe { kind(reply) } != raw::REDISMODULE_REPLY_ERROR as c_int {
        return None;
    }
    let text = string(reply).unwrap_or_default();
    let text = text
        .iter()
        .map(|&b| match b {
            b' '..=b'~' => char::from(b),
            _ => '?',
        })
        .collect();
    Some(text)
}

fn is_keys_request(ctx: *mut raw::RedisModuleCtx) -> bool {
    match unsafe { raw::RedisModule_IsKeysPositionRequest } {
        Some(is_request) => (unsafe { is_request(ctx) }) != 0,
        None => false,
    }
}

/// Answer `COMMAND GETKEYS`, ACL and cluster routing: the lock's key, then the command's keys
/// with the flags the command declares for them.
fn declare_keys(ctx: *mut raw::RedisModuleCtx, args: &[Arg]) {
    let api = unsafe {
        (
            raw::RedisModule_KeyAtPosWithFlags,
            raw::RedisModule_GetCommandKeysWithFlags,
            raw::RedisModule_Free,
        )
    };
    let (Some(key_at), Some(command_keys), Some(free)) = api else {
        return;
    };
    let lock_flags = raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS;
    unsafe { key_at(ctx, 1, lock_flags as c_int) };
    let Some(command) = args.get(3..).filter(|c| !c.is_empty()) else {
        return;
    };
    // Guards do not nest (refused when run); asking for a nested guard's keys would recurse
    // through this function once per level.
    if command
        .first()
        .is_some_and(|name| name.as_bytes().eq_ignore_ascii_case(b"dlock.guard"))
    {
        return;
    }
    let Ok(argc) = c_int::try_from(command.len()) else {
        return;
    };
    let argv = command
        .as_ptr()
        .cast_mut()
        .cast::<*mut raw::RedisModuleString>();
    let mut count: c_int = 0;
    let mut flags: *mut c_int = std::ptr::null_mut();
    let positions = unsafe { command_keys(ctx, argv, argc, &mut count, &mut flags) };
    if positions.is_null() {
        return;
    }
    let count = usize::try_from(count).unwrap_or(0);
    let positions_of = unsafe { slice::from_raw_parts(positions, count) };
    let flags_of = if flags.is_null() {
        &[]
    } else {
        unsafe { slice::from_raw_parts(flags, count) }
    };
    for (i, position) in positions_of.iter().enumerate() {
        // Positions count from the command's name, which is argument 3 of DLOCK.GUARD.
        if let Some(position) = position.checked_add(3) {
            unsafe { key_at(ctx, position, flags_of.get(i).copied().unwrap_or(0)) };
        }
    }
    unsafe {
        free(positions.cast());
        if !flags.is_null() {
            free(flags.cast());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Runs,
    Blocking,
    NoScript,
    /// A command with subcommands (`CLIENT`, `OBJECT`): the subcommand decides.
    Container,
}

/// What `COMMAND INFO` says about one command or subcommand.
struct Known {
    /// The name to call: the command's as the client wrote it (so a `rename-command`d name
    /// works), also for a subcommand.
    call_name: CString,
    /// Redis's full name, `get` or `client|kill`, for error messages.
    full_name: String,
    kind: Kind,
}

thread_local! {
    /// Known commands by the lowercase name clients call them by (`get`, `client|kill`).
    /// Bounded by the server's command table: only names `COMMAND INFO` knows are kept.
    static KNOWN: RefCell<HashMap<Box<[u8]>, Rc<Known>>> = RefCell::default();
}

fn lookup(full_name: &[u8]) -> Option<Rc<Known>> {
    local::with(&KNOWN, |known| known.get(full_name).cloned())
}

/// The command to run, or why it may not.
enum Callee {
    Known(Rc<Known>),
    /// A name the server does not know: calling it gets the server's own error.
    Unknown(CString),
}

impl Callee {
    fn resolve(ctx: *mut raw::RedisModuleCtx, command: &[Arg]) -> Result<Callee, RedisError> {
        let [name, rest @ ..] = command else {
            return Err(RedisError::WrongArity);
        };
        let lower = name.as_bytes().to_ascii_lowercase();
        if lower == b"dlock.guard" {
            return Err(RedisError::Str(ERR_GUARD_NESTED));
        }
        let known = lookup(&lower).or_else(|| {
            learn(ctx, name);
            lookup(&lower)
        });
        let known = match (known, rest.first()) {
            (Some(container), Some(sub)) if container.kind == Kind::Container => {
                let mut full = lower;
                full.push(b'|');
                full.extend(sub.as_bytes().iter().map(u8::to_ascii_lowercase));
                Some(lookup(&full).unwrap_or(container))
            }
            (known, _) => known,
        };
        match known {
            Some(k) if k.kind == Kind::Blocking => {
                Err(RedisError::String(err_guard_blocking(&k.full_name)))
            }
            Some(k) if k.kind == Kind::NoScript => {
                Err(RedisError::String(err_guard_noscript(&k.full_name)))
            }
            Some(k) => Ok(Callee::Known(k)),
            None => CString::new(name.as_bytes())
                .map(Callee::Unknown)
                .map_err(|_| RedisError::Str(ERR_GUARD_CALL)),
        }
    }

    fn name(&self) -> &CStr {
        match self {
            Callee::Known(known) => &known.call_name,
            Callee::Unknown(name) => name,
        }
    }
}

/// Ask `COMMAND INFO` about `name` and remember it with its subcommands.
fn learn(ctx: *mut raw::RedisModuleCtx, name: &Arg) {
    let (Some(call), Some(free)) =
        (unsafe { (raw::RedisModule_Call, raw::RedisModule_FreeCallReply) })
    else {
        return;
    };
    let reply = unsafe {
        call(
            ctx,
            c"COMMAND".as_ptr(),
            c"cs".as_ptr(),
            c"INFO".as_ptr(),
            name.raw(),
        )
    };
    if reply.is_null() {
        return;
    }
    let asked = name.as_bytes().to_ascii_lowercase();
    if let (Some(entry), Ok(call_name)) = (element(reply, 0), CString::new(asked.clone())) {
        remember(entry, asked, &call_name);
    }
    unsafe { free(reply) };
}

/// Record one `COMMAND INFO` entry — `[name, arity, flags, first, last, step, acl
/// categories, tips, key specs, subcommands]` — under `called`, the name a client calls it
/// by, and its subcommands under `called|sub`.
fn remember(entry: *mut raw::RedisModuleCallReply, called: Vec<u8>, call_name: &CString) {
    let Some(full_name) = element(entry, 0).and_then(string) else {
        return;
    };
    let full_name = full_name.to_ascii_lowercase();
    let flags = elements(element(entry, 2));
    let has_flag = |flag: &[u8]| flags.iter().any(|f| string(*f) == Some(flag));
    let subcommands = elements(element(entry, 9));
    let kind = if !subcommands.is_empty() {
        Kind::Container
    } else if has_flag(b"blocking") {
        Kind::Blocking
    } else if has_flag(b"noscript") {
        Kind::NoScript
    } else {
        Kind::Runs
    };
    for subcommand in &subcommands {
        let Some(sub) = element(*subcommand, 0).and_then(string) else {
            continue;
        };
        let sub = sub.rsplit(|b| *b == b'|').next().unwrap_or_default();
        let mut sub_called = called.clone();
        sub_called.push(b'|');
        sub_called.extend(sub.iter().map(u8::to_ascii_lowercase));
        remember(*subcommand, sub_called, call_name);
    }
    let known = Known {
        call_name: call_name.clone(),
        full_name: String::from_utf8_lossy(&full_name).into_owned(),
        kind,
    };
    local::with(&KNOWN, |k| {
        k.insert(called.into_boxed_slice(), Rc::new(known))
    });
}

fn element(
    reply: *mut raw::RedisModuleCallReply,
    index: usize,
) -> Option<*mut raw::RedisModuleCallReply> {
    let (Some(kind), Some(length), Some(at)) = (unsafe {
        (
            raw::RedisModule_CallReplyType,
            raw::RedisModule_CallReplyLength,
            raw::RedisModule_CallReplyArrayElement,
        )
    }) else {
        return None;
    };
    if unsafe { kind(reply) } != raw::REDISMODULE_REPLY_ARRAY as c_int
        || unsafe { length(reply) } <= index
    {
        return None;
    }
    let element = unsafe { at(reply, index) };
    (!element.is_null()).then_some(element)
}

fn elements(reply: Option<*mut raw::RedisModuleCallReply>) -> Vec<*mut raw::RedisModuleCallReply> {
    let Some(reply) = reply else {
        return Vec::new();
    };
    let length = match unsafe { raw::RedisModule_CallReplyLength } {
        Some(length) => unsafe { length(reply) },
        None => 0,
    };
    (0..length).filter_map(|i| element(reply, i)).collect()
}

fn string<'a>(reply: *mut raw::RedisModuleCallReply) -> Option<&'a [u8]> {
    let string_ptr = unsafe { raw::RedisModule_CallReplyStringPtr }?;
    let mut len = 0;
    let ptr: *const c_char = unsafe { string_ptr(reply, &mut len) };
    (!ptr.is_null()).then(|| unsafe { slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// Forget what `COMMAND INFO` said when a module is loaded or unloaded: its commands come or
/// go.
pub fn subscribe(ctx: *mut raw::RedisModuleCtx) -> Result<(), &'static str> {
    crate::server::subscribe_event(
        ctx,
        raw::REDISMODULE_EVENT_MODULE_CHANGE,
        Some(on_module_change),
        "cannot subscribe to module events",
    )
}

extern "C" fn on_module_change(
    _ctx: *mut raw::RedisModuleCtx,
    _event: raw::RedisModuleEvent,
    _subevent: u64,
    _data: *mut std::os::raw::c_void,
) {
    local::with(&KNOWN, HashMap::clear);
}
