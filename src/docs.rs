//! What `COMMAND DOCS` and `COMMAND INFO` say about each command: summary, version,
//! complexity, arity, the key spec (with read/write flags for ACL selectors and cluster
//! routing) and the arguments (for redis-cli hints and client generators).

use std::ffi::CStr;
use std::os::raw::c_int;
use std::ptr;

use redis_module::raw;

const SINCE: &CStr = c"0.1.0";

#[derive(Clone, Copy)]
pub enum ArgKind {
    Key,
    String,
    Integer,
    UnixTimeMs,
    /// A keyword alone (`SESSION`).
    PureToken,
}

pub struct Arg {
    pub name: &'static CStr,
    pub kind: ArgKind,
    /// The keyword before an optional argument (`WAIT timeout_ms`).
    pub token: Option<&'static CStr>,
    pub summary: &'static CStr,
    /// Optional and may repeat (`arg ...`).
    pub multiple: bool,
}

/// Where keys are, in `REDISMODULE_KSPEC_BS_INDEX` / `REDISMODULE_KSPEC_FK_RANGE` terms.
pub struct KeySpec {
    /// `REDISMODULE_CMD_KEY_*` flags.
    pub flags: u32,
    /// The argument the first key is at.
    pub begin: c_int,
    /// The last key relative to the first: 0 for one key, -1 for every argument to the end.
    pub last: c_int,
}

/// One key, the first argument.
const fn first_key(flags: u32) -> [KeySpec; 1] {
    [KeySpec {
        flags,
        begin: 1,
        last: 0,
    }]
}

pub struct Doc {
    pub summary: &'static CStr,
    pub complexity: &'static CStr,
    /// Redis's convention: N exactly N arguments (command name included), -N at least N.
    pub arity: c_int,
    pub key_specs: &'static [KeySpec],
    pub args: &'static [Arg],
}

const fn arg(name: &'static CStr, kind: ArgKind, summary: &'static CStr) -> Arg {
    Arg {
        name,
        kind,
        token: None,
        summary,
        multiple: false,
    }
}

/// An owner that must hold the lock for the command to act.
const HOLDER: Arg = arg(c"owner", ArgKind::String, c"The owner that holds the lock.");

const LOG_N: &CStr = c"O(log N) where N is the number of holders of the key.";

const KEY: Arg = arg(c"key", ArgKind::Key, c"The lock's key.");
const OWNER: Arg = arg(
    c"owner",
    ArgKind::String,
    c"Who holds the lock: any bytes, or * for a server-generated id.",
);
const TTL: Arg = arg(
    c"ttl_ms",
    ArgKind::Integer,
    c"Lease length in milliseconds.",
);

const RW_UPDATE: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE;
const RO_ACCESS: u32 = raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS;

pub const ACQUIRE: Doc = Doc {
    summary: c"Takes a lock (exclusive or shared) or semaphore permits for an owner with a lease, returning a fencing token; optionally waits in line.",
    complexity: c"O(log N) where N is the number of holders of the key, plus O(log N) for each hold whose lease ended that it removes.",
    arity: -4,
    key_specs: &first_key(RW_UPDATE),
    args: &[
        KEY,
        OWNER,
        TTL,
        Arg {
            name: c"timeout_ms",
            kind: ArgKind::Integer,
            token: Some(c"WAIT"),
            summary: c"Block until granted or this many milliseconds pass (0: forever).",
            multiple: false,
        },
        Arg {
            name: c"session",
            kind: ArgKind::PureToken,
            token: Some(c"SESSION"),
            summary: c"End the hold when this connection closes.",
            multiple: false,
        },
        Arg {
            name: c"shared",
            kind: ArgKind::PureToken,
            token: Some(c"SHARED"),
            summary: c"A shared (read) hold: any number at once, none with an exclusive one.",
            multiple: false,
        },
        Arg {
            name: c"limit",
            kind: ArgKind::Integer,
            token: Some(c"SEMAPHORE"),
            summary: c"Permits of a counting semaphore of this many permits.",
            multiple: false,
        },
        Arg {
            name: c"permits",
            kind: ArgKind::Integer,
            token: Some(c"PERMITS"),
            summary: c"How many permits to take (default 1).",
            multiple: false,
        },
    ],
};

pub const RELEASE: Doc = Doc {
    summary: c"Gives back one hold of a lock; at zero holds the lock is freed or handed to the first waiter.",
    complexity: c"O(log N) where N is the number of holders of the key; each waiter it lets in is then granted in O(log N).",
    arity: 3,
    key_specs: &first_key(raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_DELETE),
    args: &[KEY, HOLDER],
};

pub const EXTEND: Doc = Doc {
    summary: c"Sets the lease of a lock held by the owner to a new length from now.",
    complexity: LOG_N,
    arity: 4,
    key_specs: &first_key(RW_UPDATE),
    args: &[KEY, HOLDER, TTL],
};

pub const FENCE: Doc = Doc {
    summary: c"Raises the fencing token of a lock held by the owner, and this server's token clock, to at least the given token (for quorum locks across servers); replies the hold's token after, or nil when the owner does not hold the lock.",
    complexity: LOG_N,
    arity: 4,
    key_specs: &first_key(RW_UPDATE),
    args: &[
        KEY,
        HOLDER,
        arg(c"token", ArgKind::Integer, c"The token to raise the hold's token to: the highest a quorum of servers granted."),
    ],
};

pub const INFO: Doc = Doc {
    summary: c"Returns a lock's owner, fencing token, lease left, hold count, waiters, mode, its first holders by token (16 unless HOLDERS says otherwise) and how many holders it has.",
    complexity: c"O(log N + K) where N is the number of holders of the key and K the number listed: 16 by default, N with HOLDERS 0.",
    arity: -2,
    key_specs: &first_key(RO_ACCESS),
    args: &[
        KEY,
        Arg {
            name: c"count",
            kind: ArgKind::Integer,
            token: Some(c"HOLDERS"),
            summary: c"List at most this many holders (default 16); 0 lists them all.",
            multiple: false,
        },
        Arg {
            name: c"token",
            kind: ArgKind::Integer,
            token: Some(c"AFTER"),
            summary: c"List only holders with a newer token than this one (the last one of the previous page).",
            multiple: false,
        },
    ],
};

pub const GUARD: Doc = Doc {
    summary: c"Runs a command only while a lock is held with the given fencing token, atomically with the check.",
    complexity: c"O(log N) where N is the number of holders of the lock, plus the complexity of the command.",
    arity: -4,
    key_specs: &[
        KeySpec {
            flags: RO_ACCESS,
            begin: 1,
            last: 0,
        },
        // The command's own keys, found through the getkeys API with their real flags; RW
        // is the conservative default for readers of the spec alone.
        KeySpec {
            flags: raw::REDISMODULE_CMD_KEY_RW
                | raw::REDISMODULE_CMD_KEY_INCOMPLETE
                | raw::REDISMODULE_CMD_KEY_VARIABLE_FLAGS,
            begin: 4,
            last: -1,
        },
    ],
    args: &[
        arg(c"lockkey", ArgKind::Key, c"The lock that fences the command."),
        arg(
            c"token",
            ArgKind::Integer,
            c"The fencing token the lock must be held with.",
        ),
        arg(c"command", ArgKind::String, c"The command to run."),
        Arg {
            name: c"arg",
            kind: ArgKind::String,
            token: None,
            summary: c"The command's arguments.",
            multiple: true,
        },
    ],
};

pub const APPLY: Doc = Doc {
    summary: c"Internal: sets one hold of a lock as a master decided it, or with HOLDS n \
               (owner token holds lease_end_ms mode_code)... n holds at once (a rewritten AOF); \
               replication and AOF only.",
    complexity: c"O(log N) per hold set, where N is the number of the lock's holders.",
    arity: -6,
    key_specs: &first_key(RW_UPDATE),
    args: &[
        KEY,
        arg(c"owner", ArgKind::String, c"The hold's owner."),
        arg(c"token", ArgKind::Integer, c"The hold's fencing token."),
        arg(
            c"holds",
            ArgKind::Integer,
            c"The hold count; 0 removes the hold.",
        ),
        arg(
            c"lease_end_ms",
            ArgKind::UnixTimeMs,
            c"When the lease ends, Unix milliseconds.",
        ),
        Arg {
            name: c"shared",
            kind: ArgKind::PureToken,
            token: Some(c"SHARED"),
            summary: c"A shared hold.",
            multiple: false,
        },
        Arg {
            name: c"limit",
            kind: ArgKind::Integer,
            token: Some(c"SEMAPHORE"),
            summary: c"A semaphore hold, of a semaphore with this limit.",
            multiple: false,
        },
    ],
};

fn arg_type(kind: ArgKind) -> raw::RedisModuleCommandArgType {
    match kind {
        ArgKind::Key => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY,
        ArgKind::String => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING,
        ArgKind::Integer => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
        ArgKind::UnixTimeMs => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_UNIX_TIME,
        ArgKind::PureToken => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PURE_TOKEN,
    }
}

fn c(s: &CStr) -> *const std::os::raw::c_char {
    s.as_ptr()
}

/// Attach `doc` to the registered `command`. Redis copies everything it is given.
pub fn set(command: *mut raw::RedisModuleCommand, doc: &Doc) -> Result<(), &'static str> {
    let set_info = unsafe { raw::RedisModule_SetCommandInfo }.ok_or("no SetCommandInfo API")?;
    let version = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: size_of::<raw::RedisModuleCommandArg>(),
    };
    let mut key_specs: Vec<raw::RedisModuleCommandKeySpec> = doc
        .key_specs
        .iter()
        .map(|spec| raw::RedisModuleCommandKeySpec {
            notes: ptr::null(),
            flags: u64::from(spec.flags),
            begin_search_type: raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX,
            bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
                index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 {
                    pos: spec.begin,
                },
            },
            find_keys_type: raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
            fk: raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
                range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
                    lastkey: spec.last,
                    keystep: 1,
                    limit: 0,
                },
            },
        })
        .collect();
    // Both arrays end with a zeroed entry.
    key_specs.push(unsafe { std::mem::zeroed() });
    let mut args: Vec<raw::RedisModuleCommandArg> = doc
        .args
        .iter()
        .map(|a| raw::RedisModuleCommandArg {
            name: c(a.name),
            type_: arg_type(a.kind),
            key_spec_index: if matches!(a.kind, ArgKind::Key) {
                0
            } else {
                -1
            },
            token: a.token.map_or(ptr::null(), c),
            summary: c(a.summary),
            since: ptr::null(),
            flags: if a.multiple {
                (raw::REDISMODULE_CMD_ARG_OPTIONAL | raw::REDISMODULE_CMD_ARG_MULTIPLE) as c_int
            } else if a.token.is_some() {
                raw::REDISMODULE_CMD_ARG_OPTIONAL as c_int
            } else {
                raw::REDISMODULE_CMD_ARG_NONE as c_int
            },
            deprecated_since: ptr::null(),
            subargs: ptr::null_mut(),
            display_text: ptr::null(),
        })
        .collect();
    args.push(unsafe { std::mem::zeroed() });
    let info = raw::RedisModuleCommandInfo {
        version: &version,
        summary: c(doc.summary),
        complexity: c(doc.complexity),
        since: c(SINCE),
        history: ptr::null_mut(),
        tips: ptr::null(),
        arity: doc.arity,
        key_specs: key_specs.as_mut_ptr(),
        args: args.as_mut_ptr(),
    };
    if unsafe { set_info(command, &info) } != raw::REDISMODULE_OK as c_int {
        return Err("the server rejected the command docs");
    }
    Ok(())
}
