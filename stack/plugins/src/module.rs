//! Compiling and checking a proxy-wasm module, once, off the data path.

use std::sync::{Arc, OnceLock};

use wasmtime::{Config, Engine, ExternType, FuncType, InstancePre, Linker, Module, ValType};

use crate::host::{self, Host};
use crate::stubs;

/// Resource limits of every instance of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginLimits {
    /// Linear memory per instance, in bytes (a `memory.grow` past it traps).
    pub memory_bytes: usize,
    /// Fuel (about one unit per wasm instruction) for one callback,
    /// including the host calls and `malloc` calls it makes.
    pub fuel_per_call: u64,
    /// Fuel for starting an instance: `_initialize`/`_start`, the root
    /// context, `proxy_on_vm_start` and `proxy_on_configure`.
    pub fuel_per_start: u64,
    /// Table elements per instance.
    pub table_elements: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 32 << 20,
            // A header filter runs a few thousand instructions; 10 M is a
            // few milliseconds of compiled wasm, a ceiling, not a budget.
            fuel_per_call: 10_000_000,
            fuel_per_start: 200_000_000,
            table_elements: 100_000,
        }
    }
}

/// Why a module cannot be used as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("wasmtime engine: {0}")]
    Engine(String),
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error("not a proxy-wasm module: it does not export `{0}`")]
    MissingExport(&'static str),
    #[error("proxy-wasm ABI {0} is not supported (this host runs 0.2.0 and 0.2.1)")]
    UnsupportedAbi(&'static str),
    #[error("export `{name}` has type {found}, proxy-wasm expects {expected}")]
    ExportType {
        name: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("the module imports what this host does not provide: {}", .0.join(", "))]
    UnknownImports(Vec<String>),
    #[error("the module's imports do not match the host's functions: {0}")]
    Link(String),
}

/// A compiled, checked proxy-wasm module: cheap to clone, shared by every
/// worker; instances are made from it without compiling again.
#[derive(Clone)]
pub struct PluginModule {
    pub(crate) inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub(crate) engine: Engine,
    pub(crate) pre: InstancePre<Host>,
    pub(crate) limits: PluginLimits,
    pub(crate) abi: &'static str,
}

impl std::fmt::Debug for PluginModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginModule")
            .field("abi", &self.inner.abi)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

/// Callbacks this host calls, with the types ABI 0.2.x gives them.
pub(crate) const CALLBACKS: &[(&str, &str)] = &[
    ("_initialize", "()->()"),
    ("_start", "()->()"),
    ("malloc", "(i32)->(i32)"),
    ("proxy_on_memory_allocate", "(i32)->(i32)"),
    ("proxy_on_context_create", "(i32,i32)->()"),
    ("proxy_on_vm_start", "(i32,i32)->(i32)"),
    ("proxy_on_configure", "(i32,i32)->(i32)"),
    ("proxy_on_tick", "(i32)->()"),
    ("proxy_on_request_headers", "(i32,i32,i32)->(i32)"),
    ("proxy_on_request_body", "(i32,i32,i32)->(i32)"),
    ("proxy_on_request_trailers", "(i32,i32)->(i32)"),
    ("proxy_on_response_headers", "(i32,i32,i32)->(i32)"),
    ("proxy_on_response_body", "(i32,i32,i32)->(i32)"),
    ("proxy_on_response_trailers", "(i32,i32)->(i32)"),
    ("proxy_on_done", "(i32)->(i32)"),
    ("proxy_on_log", "(i32)->()"),
    ("proxy_on_delete", "(i32)->()"),
];

/// One engine for the process: fuel metering on, nothing else beyond the
/// defaults. Fuel rather than epochs: it needs no timer thread (the crate
/// keeps no clock), it is deterministic (the same guest work stops at the
/// same point on a busy 2-core CI machine as on an idle one), and a
/// proxy-wasm callback is short, so its per-block cost is small next to
/// the host calls. Epoch interruption would be cheaper per instruction; it
/// can come later behind the same `PluginLimits` if the bench asks.
fn engine() -> Result<&'static Engine, CompileError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.consume_fuel(true);
            Engine::new(&config).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| CompileError::Engine(e.clone()))
}

impl PluginModule {
    /// Compiles `bytes` (a binary module) and checks it against the ABI:
    /// the exports proxy-wasm needs, the callback types, and every import
    /// (host functions, documented stubs; anything else is an error naming
    /// it). Slow (milliseconds to seconds): call it when a snapshot is built.
    pub fn compile(bytes: &[u8], limits: &PluginLimits) -> Result<Self, CompileError> {
        let engine = engine()?;
        let module =
            Module::new(engine, bytes).map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
        let abi = check_exports(&module)?;

        let mut linker = Linker::new(engine);
        let implemented =
            host::define(&mut linker).map_err(|e| CompileError::Link(e.to_string()))?;
        let mut unknown = Vec::new();
        let mut stubbed: Vec<(String, String)> = Vec::new();
        for import in module.imports() {
            let (m, n) = (import.module(), import.name());
            let ExternType::Func(ty) = import.ty() else {
                unknown.push(format!("{m}::{n} (not a function)"));
                continue;
            };
            if m == "env" && implemented.contains(&n) {
                continue;
            }
            if stubbed.iter().any(|(sm, sn)| sm == m && sn == n) {
                continue;
            }
            match stubs::kind(m, n) {
                Some(kind) => {
                    stubs::define(&mut linker, m, n, ty, kind)
                        .map_err(|e| CompileError::Link(format!("{e:#}")))?;
                    stubbed.push((m.to_owned(), n.to_owned()));
                }
                None => unknown.push(format!("{m}::{n}")),
            }
        }
        if !unknown.is_empty() {
            return Err(CompileError::UnknownImports(unknown));
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| CompileError::Link(format!("{e:#}")))?;
        Ok(Self {
            inner: Arc::new(ModuleInner {
                engine: engine.clone(),
                pre,
                limits: limits.clone(),
                abi,
            }),
        })
    }

    /// The ABI version the module declares ("0.2.0" or "0.2.1").
    pub fn abi_version(&self) -> &'static str {
        self.inner.abi
    }

    /// The limits its instances get.
    pub fn limits(&self) -> &PluginLimits {
        &self.inner.limits
    }
}

fn check_exports(module: &Module) -> Result<&'static str, CompileError> {
    let has = |name: &str| module.get_export(name).is_some();
    let abi = if has("proxy_abi_version_0_2_1") {
        "0.2.1"
    } else if has("proxy_abi_version_0_2_0") {
        "0.2.0"
    } else if has("proxy_abi_version_0_1_0") {
        return Err(CompileError::UnsupportedAbi("0.1.0"));
    } else {
        return Err(CompileError::MissingExport("proxy_abi_version_0_2_1"));
    };
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if !m.is_64() => {}
        _ => return Err(CompileError::MissingExport("memory")),
    }
    if !has("proxy_on_context_create") {
        return Err(CompileError::MissingExport("proxy_on_context_create"));
    }
    if !has("malloc") && !has("proxy_on_memory_allocate") {
        return Err(CompileError::MissingExport(
            "malloc (or proxy_on_memory_allocate)",
        ));
    }
    for &(name, expected) in CALLBACKS {
        match module.get_export(name) {
            None => {}
            Some(ExternType::Func(ft)) if func_sig(&ft) == expected => {}
            Some(ExternType::Func(ft)) => {
                return Err(CompileError::ExportType {
                    name,
                    expected,
                    found: func_sig(&ft),
                });
            }
            Some(_) => {
                return Err(CompileError::ExportType {
                    name,
                    expected,
                    found: "a non-function".into(),
                });
            }
        }
    }
    Ok(abi)
}

/// `(i32,i64)->(i32)`, the notation of [`CALLBACKS`].
pub(crate) fn func_sig(ft: &FuncType) -> String {
    let list = |it: &mut dyn Iterator<Item = ValType>| {
        it.map(|t| t.to_string()).collect::<Vec<_>>().join(",")
    };
    format!(
        "({})->({})",
        list(&mut ft.params()),
        list(&mut ft.results())
    )
}
