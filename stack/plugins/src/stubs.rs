//! Imports this host accepts without implementing the feature behind them.
//!
//! The stub list (documented in the crate docs):
//! - `env`: the rest of proxy-wasm — `proxy_http_call`,
//!   `proxy_dispatch_http_call`, `proxy_grpc_call`, `proxy_grpc_stream`,
//!   `proxy_grpc_send`, `proxy_grpc_cancel`, `proxy_grpc_close`, the shared
//!   queue calls, `proxy_call_foreign_function`, `proxy_close_stream`,
//!   `proxy_done`, and 0.1.0's `proxy_get_configuration`,
//!   `proxy_continue_request`, `proxy_continue_response`: each returns
//!   `Unimplemented` (12) whatever signature the module gives it.
//!   `env.abort` (AssemblyScript's default abort) ends the call as a trap.
//! - `wasi_snapshot_preview1` and `wasi_unstable` (SDKs built for WASI
//!   import a few): `proc_exit` ends the call as a trap; `fd_write` to
//!   fd 1/2 goes to the log; `clock_time_get` answers the time the proxy
//!   passed in; `random_get` fills from a per-instance xorshift (not for
//!   secrets); `environ_*`/`args_*` report none; `sched_yield` succeeds;
//!   any other WASI function answers `ENOSYS` (52).

use wasmtime::{Caller, FuncType, Linker, Val};

use crate::abi::Status;
use crate::host::{Host, HostAbort, abi_err, slice, write_bytes, write_u32};
use crate::module::func_sig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StubKind {
    Unimplemented,
    Abort,
    Wasi(Wasi),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wasi {
    ProcExit,
    FdWrite,
    ClockTimeGet,
    RandomGet,
    SizesGet,
    Succeed,
    NoSys,
}

const ENV_UNIMPLEMENTED: &[&str] = &[
    "proxy_http_call",
    "proxy_dispatch_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_call_foreign_function",
    "proxy_close_stream",
    "proxy_done",
    "proxy_get_configuration",
    "proxy_continue_request",
    "proxy_continue_response",
];

/// WASI's `ENOSYS`.
const ERRNO_NOSYS: i32 = 52;

pub(crate) fn kind(module: &str, name: &str) -> Option<StubKind> {
    match module {
        "env" if ENV_UNIMPLEMENTED.contains(&name) => Some(StubKind::Unimplemented),
        "env" if name == "abort" => Some(StubKind::Abort),
        "wasi_snapshot_preview1" | "wasi_unstable" => Some(StubKind::Wasi(match name {
            "proc_exit" => Wasi::ProcExit,
            "fd_write" => Wasi::FdWrite,
            "clock_time_get" => Wasi::ClockTimeGet,
            "random_get" => Wasi::RandomGet,
            "environ_sizes_get" | "args_sizes_get" => Wasi::SizesGet,
            "environ_get" | "args_get" | "sched_yield" => Wasi::Succeed,
            _ => Wasi::NoSys,
        })),
        _ => None,
    }
}

/// The signature a WASI function must have for its stub to read its
/// arguments; `None` when any will do.
fn wasi_sig(w: Wasi) -> Option<&'static str> {
    match w {
        Wasi::ProcExit => Some("(i32)->()"),
        Wasi::FdWrite => Some("(i32,i32,i32,i32)->(i32)"),
        Wasi::ClockTimeGet => Some("(i32,i64,i32)->(i32)"),
        Wasi::RandomGet | Wasi::SizesGet => Some("(i32,i32)->(i32)"),
        Wasi::Succeed | Wasi::NoSys => None,
    }
}

/// Defines the stub `module::name` with the type the module imports.
pub(crate) fn define(
    l: &mut Linker<Host>,
    module: &str,
    name: &str,
    ty: FuncType,
    kind: StubKind,
) -> wasmtime::Result<()> {
    if let StubKind::Wasi(w) = kind
        && let Some(want) = wasi_sig(w)
        && func_sig(&ty) != want
    {
        return Err(wasmtime::Error::msg(format!(
            "import {module}::{name} has type {}, WASI gives it {want}",
            func_sig(&ty)
        )));
    }
    let what = format!("{module}::{name}");
    // Answer in whatever result types the import declares: an i32 status
    // first where there is one, zeros (or null references) elsewhere.
    let mut answer: Vec<Val> = Vec::new();
    for t in ty.results() {
        answer.push(Val::default_for_ty(&t).ok_or_else(|| {
            wasmtime::Error::msg(format!(
                "import {what} returns a {t}, which a stub cannot make"
            ))
        })?);
    }
    l.func_new(module, name, ty, move |mut c, params, results| {
        let status = match kind {
            StubKind::Unimplemented => Status::Unimplemented as i32,
            StubKind::Abort => {
                return Err(wasmtime::Error::new(HostAbort::Aborted(format!(
                    "{what} called"
                ))));
            }
            StubKind::Wasi(w) => wasi(&mut c, w, params)?,
        };
        for (i, (r, a)) in results.iter_mut().zip(&answer).enumerate() {
            *r = match a {
                Val::I32(_) if i == 0 => Val::I32(status),
                a => *a,
            };
        }
        Ok(())
    })?;
    Ok(())
}

/// Reads params as (i32 …); `wasi_sig` checked the types at compile time.
fn p32(params: &[Val], i: usize) -> wasmtime::Result<u32> {
    match params.get(i) {
        Some(Val::I32(v)) => Ok(*v as u32),
        _ => Err(abi_err("stub argument of the wrong type")),
    }
}

fn wasi(c: &mut Caller<'_, Host>, w: Wasi, params: &[Val]) -> wasmtime::Result<i32> {
    let mem = c
        .data()
        .memory
        .ok_or_else(|| abi_err("host call before the instance was ready"))?;
    match w {
        Wasi::ProcExit => Err(wasmtime::Error::new(
            HostAbort::Exit(p32(params, 0)? as i32),
        )),
        Wasi::FdWrite => {
            let (fd, iovs, n, nwritten) = (
                p32(params, 0)?,
                p32(params, 1)?,
                p32(params, 2)?,
                p32(params, 3)?,
            );
            let (data, host) = mem.data_and_store_mut(&mut *c);
            let mut text = Vec::new();
            for i in 0..n {
                let iov = slice(data, iovs.wrapping_add(i.wrapping_mul(8)), 8)?;
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                text.extend_from_slice(slice(data, ptr, len)?);
            }
            let msg = String::from_utf8_lossy(&text);
            let plugin = &*host.plugin.name;
            match fd {
                1 => {
                    tracing::info!(target: "ferrogate_plugins::guest", plugin, "{}", msg.trim_end())
                }
                2 => {
                    tracing::warn!(target: "ferrogate_plugins::guest", plugin, "{}", msg.trim_end())
                }
                _ => return Ok(8), // EBADF
            }
            write_u32(data, nwritten, text.len() as u32)?;
            Ok(0)
        }
        Wasi::ClockTimeGet => {
            let (id, out) = (p32(params, 0)?, p32(params, 2)?);
            let now = c.data().now;
            // Clock 0 is the wall clock; the others are monotonic.
            let v = if id == 0 {
                now.unix_nanos
            } else {
                now.monotonic_ms.saturating_mul(1_000_000)
            };
            write_bytes(mem.data_mut(&mut *c), out, &v.to_le_bytes())?;
            Ok(0)
        }
        Wasi::RandomGet => {
            let (ptr, len) = (p32(params, 0)?, p32(params, 1)?);
            let (data, host) = mem.data_and_store_mut(&mut *c);
            slice(data, ptr, len)?;
            let (p, n) = (ptr as usize, len as usize);
            for byte in data.iter_mut().skip(p).take(n) {
                let mut x = host.rng;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                host.rng = x;
                *byte = x as u8;
            }
            Ok(0)
        }
        Wasi::SizesGet => {
            let data = mem.data_mut(&mut *c);
            write_u32(data, p32(params, 0)?, 0)?;
            write_u32(data, p32(params, 1)?, 0)?;
            Ok(0)
        }
        Wasi::Succeed => Ok(0),
        Wasi::NoSys => Ok(ERRNO_NOSYS),
    }
}
