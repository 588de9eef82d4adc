//! Module configs, set the three ways Redis offers: `loadmodule /path/libdlock.so NAME VALUE
//! ...`, `dlock.NAME VALUE` lines in redis.conf, and `CONFIG SET/GET dlock.NAME` at run time.
//! Redis checks numeric ranges and booleans and replies with its own errors.

use std::ffi::{CStr, c_longlong};
use std::os::raw::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};

use rand::RngCore;
use redis_module::{RedisString, raw};

use crate::errors::ERR_CONFIG_TOKEN_LEAD;
use crate::server;
use crate::token::{CLOCK, NODE_IDS};

static MAX_OWNER_LENGTH: AtomicI64 = AtomicI64::new(256);
static MAX_TTL: AtomicI64 = AtomicI64::new(0);
static MAX_WAITERS: AtomicI64 = AtomicI64::new(0);
static EXPIRY_TIMERS: AtomicBool = AtomicBool::new(true);
/// -1: the id drawn at load (`RANDOM_NODE_ID`).
static NODE_ID: AtomicI64 = AtomicI64::new(-1);
static RANDOM_NODE_ID: AtomicU8 = AtomicU8::new(0);
static MAX_TOKEN_LEAD: AtomicI64 = AtomicI64::new(3_600_000);

/// The most `dlock.max-owner-length` can be set to.
pub const MAX_OWNER_LENGTH_LIMIT: usize = 65_536;

/// The longest owner id accepted, in bytes.
pub fn max_owner_length() -> usize {
    usize::try_from(MAX_OWNER_LENGTH.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
}

/// The longest lease accepted, in milliseconds; `None` for no limit.
pub fn max_ttl() -> Option<i64> {
    Some(MAX_TTL.load(Ordering::Relaxed)).filter(|m| *m > 0)
}

/// How many clients may wait for one lock; `None` for no limit.
pub fn max_waiters() -> Option<usize> {
    usize::try_from(MAX_WAITERS.load(Ordering::Relaxed))
        .ok()
        .filter(|m| *m > 0)
}

/// Whether a lock arms a timer at the lease ends that matter (otherwise a hand-over waits for
/// Redis to expire the key, and holds ending before their key wait for the next command).
pub fn expiry_timers() -> bool {
    EXPIRY_TIMERS.load(Ordering::Relaxed)
}

/// The node id `dlock.node-id` puts in tokens: the configured one, or the random one.
fn node_id_in_use() -> u8 {
    u8::try_from(NODE_ID.load(Ordering::Relaxed))
        .unwrap_or_else(|_| RANDOM_NODE_ID.load(Ordering::Relaxed))
}

/// The token clock keeps its own copy of its settings, so that token.rs stays plain Rust.
fn apply_node_id() {
    CLOCK.set_node(node_id_in_use());
}

fn apply_max_token_lead() {
    CLOCK.set_max_lead(MAX_TOKEN_LEAD.load(Ordering::Relaxed));
}

/// A lead the token clock already passes is refused rather than taken: the server would then
/// refuse its own tokens when it loads its files (`CONFIG SET` is not saved; a restart with
/// the lead of redis.conf meets the same check, said in the log with its remedy).
fn refuse_max_token_lead(ms: i64) -> Option<&'static str> {
    (!CLOCK.allows_lead(ms, server::now_ms())).then_some(ERR_CONFIG_TOKEN_LEAD)
}

struct Numeric {
    name: &'static CStr,
    value: &'static AtomicI64,
    default: i64,
    min: i64,
    max: i64,
    /// Run after every change, whoever makes it (load, redis.conf, CONFIG SET).
    apply: Option<fn()>,
    /// Why a value in range cannot be taken now, if it cannot.
    refuse: Option<fn(i64) -> Option<&'static str>>,
}

/// A static, not a const: Redis keeps a pointer to each entry as the config's private data.
static NUMERIC: [Numeric; 5] = [
    Numeric {
        name: c"max-owner-length",
        value: &MAX_OWNER_LENGTH,
        default: 256,
        min: 1,
        max: MAX_OWNER_LENGTH_LIMIT as i64,
        apply: None,
        refuse: None,
    },
    Numeric {
        name: c"max-ttl",
        value: &MAX_TTL,
        default: 0,
        min: 0,
        max: i64::MAX,
        apply: None,
        refuse: None,
    },
    Numeric {
        name: c"max-waiters",
        value: &MAX_WAITERS,
        default: 0,
        min: 0,
        max: i64::MAX,
        apply: None,
        refuse: None,
    },
    Numeric {
        name: c"node-id",
        value: &NODE_ID,
        default: -1,
        min: -1,
        max: NODE_IDS - 1,
        apply: Some(apply_node_id),
        refuse: None,
    },
    Numeric {
        name: c"max-token-lead",
        value: &MAX_TOKEN_LEAD,
        default: 3_600_000,
        min: 0,
        max: i64::MAX,
        apply: Some(apply_max_token_lead),
        refuse: Some(refuse_max_token_lead),
    },
];

const EXPIRY_TIMERS_NAME: &CStr = c"expiry-timers";

unsafe extern "C" fn get_numeric(_name: *const c_char, privdata: *mut c_void) -> c_longlong {
    match unsafe { privdata.cast::<Numeric>().as_ref() } {
        Some(config) => config.value.load(Ordering::Relaxed),
        None => 0,
    }
}

unsafe extern "C" fn set_numeric(
    _name: *const c_char,
    value: c_longlong,
    privdata: *mut c_void,
    err: *mut *mut raw::RedisModuleString,
) -> c_int {
    let Some(config) = (unsafe { privdata.cast::<Numeric>().as_ref() }) else {
        return raw::REDISMODULE_OK as c_int;
    };
    if let Some(why) = config.refuse.and_then(|refuse| refuse(value)) {
        // Redis copies the message into its reply and frees the string.
        if let (Some(create), false) = (unsafe { raw::RedisModule_CreateString }, err.is_null()) {
            unsafe { *err = create(std::ptr::null_mut(), why.as_ptr().cast(), why.len()) };
        }
        return raw::REDISMODULE_ERR as c_int;
    }
    config.store(value);
    raw::REDISMODULE_OK as c_int
}

impl Numeric {
    fn store(&self, value: i64) {
        self.value.store(value, Ordering::Relaxed);
        if let Some(apply) = self.apply {
            apply();
        }
    }
}

unsafe extern "C" fn get_bool(_name: *const c_char, privdata: *mut c_void) -> c_int {
    match unsafe { privdata.cast::<AtomicBool>().as_ref() } {
        Some(value) => c_int::from(value.load(Ordering::Relaxed)),
        None => 0,
    }
}

unsafe extern "C" fn set_bool(
    _name: *const c_char,
    value: c_int,
    privdata: *mut c_void,
    _err: *mut *mut raw::RedisModuleString,
) -> c_int {
    if let Some(target) = unsafe { privdata.cast::<AtomicBool>().as_ref() } {
        target.store(value != 0, Ordering::Relaxed);
    }
    raw::REDISMODULE_OK as c_int
}

/// `loadmodule` arguments as (name, value) defaults, with or without the `dlock.` prefix.
fn module_args(args: &[RedisString]) -> Result<Vec<(String, String)>, String> {
    if !args.len().is_multiple_of(2) {
        return Err("module arguments must be NAME VALUE pairs".into());
    }
    args.chunks(2)
        .map(|pair| match pair {
            [name, value] => {
                let name = name.to_string_lossy().to_ascii_lowercase();
                let name = name.strip_prefix("dlock.").unwrap_or(&name).to_string();
                let known = NUMERIC.iter().any(|n| n.name.to_bytes() == name.as_bytes())
                    || EXPIRY_TIMERS_NAME.to_bytes() == name.as_bytes();
                if known {
                    Ok((name, value.to_string_lossy()))
                } else {
                    Err(format!("unknown module argument '{name}'"))
                }
            }
            _ => Err("module arguments must be NAME VALUE pairs".into()),
        })
        .collect()
}

/// Register every config (defaults from the `loadmodule` arguments), then let Redis apply what
/// redis.conf says.
pub fn register(ctx: *mut raw::RedisModuleCtx, args: &[RedisString]) -> Result<(), String> {
    let given = module_args(args)?;
    let given_for = |name: &CStr| {
        given
            .iter()
            .find(|(n, _)| n.as_bytes() == name.to_bytes())
            .map(|(_, v)| v.as_str())
    };
    let register_numeric = unsafe { raw::RedisModule_RegisterNumericConfig };
    let register_bool = unsafe { raw::RedisModule_RegisterBoolConfig };
    let load = unsafe { raw::RedisModule_LoadConfigs };
    let (Some(register_numeric), Some(register_bool), Some(load)) =
        (register_numeric, register_bool, load)
    else {
        return Err("this server has no module config API (Redis 7.0 or newer needed)".into());
    };
    // Drawn even when an id is configured: `CONFIG SET dlock.node-id -1` may ask for it later.
    // The clock keeps only the low bits of this byte.
    let mut random = [0u8; 1];
    rand::rngs::OsRng
        .try_fill_bytes(&mut random)
        .map_err(|e| format!("no system random source for dlock.node-id: {e}"))?;
    let [random] = random;
    RANDOM_NODE_ID.store(random, Ordering::Relaxed);
    for config in &NUMERIC {
        let default = match given_for(config.name) {
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|v| (config.min..=config.max).contains(v))
                .ok_or_else(|| {
                    format!(
                        "{} must be an integer from {} to {}, not '{v}'",
                        config.name.to_string_lossy(),
                        config.min,
                        config.max
                    )
                })?,
            None => config.default,
        };
        config.store(default);
        let registered = unsafe {
            register_numeric(
                ctx,
                config.name.as_ptr(),
                default,
                raw::REDISMODULE_CONFIG_DEFAULT as c_uint,
                config.min,
                config.max,
                Some(get_numeric),
                Some(set_numeric),
                None,
                std::ptr::from_ref(config).cast_mut().cast(),
            )
        };
        if registered != raw::REDISMODULE_OK as c_int {
            return Err(format!(
                "cannot register config {}",
                config.name.to_string_lossy()
            ));
        }
    }
    let timers = match given_for(EXPIRY_TIMERS_NAME) {
        Some("yes") | None => true,
        Some("no") => false,
        Some(other) => return Err(format!("expiry-timers must be yes or no, not '{other}'")),
    };
    EXPIRY_TIMERS.store(timers, Ordering::Relaxed);
    let registered = unsafe {
        register_bool(
            ctx,
            EXPIRY_TIMERS_NAME.as_ptr(),
            c_int::from(timers),
            raw::REDISMODULE_CONFIG_DEFAULT as c_uint,
            Some(get_bool),
            Some(set_bool),
            None,
            std::ptr::from_ref(&EXPIRY_TIMERS).cast_mut().cast(),
        )
    };
    if registered != raw::REDISMODULE_OK as c_int {
        return Err("cannot register config expiry-timers".into());
    }
    if unsafe { load(ctx) } != raw::REDISMODULE_OK as c_int {
        return Err("redis.conf has an invalid dlock.* setting".into());
    }
    Ok(())
}
