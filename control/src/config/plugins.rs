//! `[[plugins]]`: proxy-wasm modules, compiled and tried once when the
//! snapshot is built (a module that does not load, or rejects its
//! configuration, refuses the file); listeners name them.

use ferrogate_proxy::plugin_phase::AttachedPlugin;
use ferrogate_proxy::plugins::{
    FailureKind, Now, Plugin, PluginConfig, PluginInstance, PluginLimits, PluginModule,
};

use std::sync::Mutex;

use super::*;

/// `fuel_per_call` bounds. The top is 10^9, not more: guest code runs on
/// the worker thread that serves every other connection it owns, and a
/// billion instructions is already on the order of a second of stall.
const MIN_FUEL: u64 = 1000;
const MAX_FUEL: u64 = 1_000_000_000;

/// What makes two compiles the same plugin: the module's bytes, its
/// configuration and its limits.
#[derive(PartialEq)]
struct PluginKey {
    wasm: Vec<u8>,
    config: PluginConfig,
    limits: PluginLimits,
}

/// The plugins of recent compiles, by what they were made from. A reload
/// that leaves a plugin as it was hands the engine the same [`Plugin`], so
/// every worker keeps its instance (and the requests in flight their
/// contexts) instead of starting a new one; a changed plugin is a new
/// `Plugin`, and workers retire the old instances once their contexts end.
static LAST: Mutex<Vec<(PluginKey, Plugin)>> = Mutex::new(Vec::new());

/// How many compiled plugins [`LAST`] keeps beyond the last compile's.
const KEEP_COMPILED: usize = 16;

pub(super) fn check_plugins(
    cfg: &FileConfig,
    rep: &mut Reporter<'_>,
) -> Vec<(String, AttachedPlugin)> {
    let mut out: Vec<(String, AttachedPlugin)> = Vec::new();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let mut kept: Vec<(PluginKey, Plugin)> = Vec::new();
    let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
    for (i, p) in cfg.plugins.iter().enumerate() {
        let field = format!("plugins[{i}]");
        let name = p.name.get_ref();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            rep.at(
                p.name.span(),
                format!("{field}.name"),
                "must be letters, digits, `-`, `_` or `.` (it names the plugin in logs and metrics)",
            );
            continue;
        }
        if out.iter().any(|(n, _)| n == name) {
            rep.at(
                p.name.span(),
                format!("{field}.name"),
                format!("duplicate plugin {name:?}"),
            );
            continue;
        }
        let mut limits = PluginLimits::default();
        if let Some(mb) = &p.memory_mb {
            if !(1..=4096).contains(mb.get_ref()) {
                rep.at(
                    mb.span(),
                    format!("{field}.memory_mb"),
                    "must be 1..=4096 MiB",
                );
                continue;
            }
            limits.memory_bytes = (*mb.get_ref() as usize) << 20;
        }
        if let Some(fuel) = &p.fuel_per_call {
            if !(MIN_FUEL..=MAX_FUEL).contains(fuel.get_ref()) {
                rep.at(
                    fuel.span(),
                    format!("{field}.fuel_per_call"),
                    format!(
                        "must be {MIN_FUEL}..={MAX_FUEL} (a call runs on the worker that serves \
                         every other connection; {MAX_FUEL} is already around a second of guest code)"
                    ),
                );
                continue;
            }
            limits.fuel_per_call = *fuel.get_ref();
        }
        let path = base.join(p.wasm.get_ref());
        rep.uses(&path);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                rep.at(
                    p.wasm.span(),
                    format!("{field}.wasm"),
                    format!("{}: {e}", path.display()),
                );
                continue;
            }
        };
        let configuration = p
            .configuration
            .as_ref()
            .map(|c| c.get_ref().clone().into_bytes());
        let config = PluginConfig {
            name: name.clone(),
            root_id: p.root_id.clone(),
            vm_id: p.vm_id.clone(),
            configuration: configuration.unwrap_or_default(),
            vm_configuration: Vec::new(),
        };
        let key = PluginKey {
            wasm: bytes,
            config,
            limits,
        };
        // Compiled and started before, unchanged: the same plugin.
        if let Some(plugin) = last
            .iter()
            .chain(kept.iter())
            .find(|(k, _)| *k == key)
            .map(|(_, p)| p.clone())
        {
            kept.push((key, plugin.clone()));
            out.push((
                name.clone(),
                AttachedPlugin {
                    plugin,
                    fail_open: p.fail_open,
                },
            ));
            continue;
        }
        let module = match PluginModule::compile(&key.wasm, &key.limits) {
            Ok(m) => m,
            Err(e) => {
                rep.at(
                    p.wasm.span(),
                    format!("{field}.wasm"),
                    format!("{}: {e}", path.display()),
                );
                continue;
            }
        };
        let plugin = Plugin::new(module, key.config.clone());
        // A trial start: a plugin that traps at start or refuses its
        // configuration is refused here, before any worker runs it.
        if let Err(e) = PluginInstance::new(&plugin, Now::default()) {
            // Only a refusal from `proxy_on_configure` is the
            // configuration's doing; a trap, fuel, memory or ABI failure
            // (or `proxy_on_vm_start` saying no) is the module's.
            let refused_configuration =
                e.kind == FailureKind::Rejected && e.reason.contains("proxy_on_configure");
            match &p.configuration {
                Some(c) if refused_configuration => rep.at(
                    c.span(),
                    format!("{field}.configuration"),
                    format!("plugin {name:?} rejected its configuration: {e}"),
                ),
                _ => rep.at(
                    p.wasm.span(),
                    format!("{field}.wasm"),
                    format!("plugin {name:?} did not start: {e}"),
                ),
            }
            continue;
        }
        kept.push((key, plugin.clone()));
        out.push((
            name.clone(),
            AttachedPlugin {
                plugin,
                fail_open: p.fail_open,
            },
        ));
    }
    // This compile's first, then the most recent others (a `validate` of
    // another file between two applies must not cost the running plugins
    // their instances), bounded: a plugin no longer configured does not
    // keep its compiled code alive for long.
    let older = std::mem::take(&mut *last);
    for (k, p) in older {
        if kept.len() >= KEEP_COMPILED {
            break;
        }
        if !kept.iter().any(|(kk, _)| *kk == k) {
            kept.push((k, p));
        }
    }
    *last = kept;
    out
}

/// A listener's `plugins`, by name, in order.
pub(super) fn listener_plugins(
    i: usize,
    l: &ListenerSection,
    is_http: bool,
    plugins: &[(String, AttachedPlugin)],
    rep: &mut Reporter<'_>,
) -> Vec<AttachedPlugin> {
    if !is_http {
        for (k, name) in l.plugins.iter().enumerate() {
            let field = format!("listeners[{i}].plugins[{k}]");
            rep.at(name.span(), field, "only HTTP listeners run plugins");
        }
        return Vec::new();
    }
    named_plugins(&format!("listeners[{i}]"), &l.plugins, &[], plugins, rep)
}

/// A route's `plugins` (`field`: the route's), by name, in order; none on
/// a route that answers itself (no origin phase) or of a listener that is
/// not HTTP, nor one its listener runs already.
pub(super) fn route_plugins(
    field: &str,
    r: &RouteSection,
    l: &ListenerSection,
    is_http: bool,
    plugins: &[(String, AttachedPlugin)],
    rep: &mut Reporter<'_>,
) -> Vec<AttachedPlugin> {
    let refuse = if !is_http {
        Some("only HTTP listeners' routes run plugins")
    } else if r.respond.is_some() {
        Some(
            "a route's plugins run at the origin phases: this route responds itself (name them on its listener)",
        )
    } else {
        None
    };
    if let Some(why) = refuse {
        for (k, name) in r.plugins.iter().enumerate() {
            rep.at(name.span(), format!("{field}.plugins[{k}]"), why);
        }
        return Vec::new();
    }
    named_plugins(field, &r.plugins, &l.plugins, plugins, rep)
}

/// `names` (the `plugins` of `owner`) resolved in order; a name given
/// twice, also in `outer` (the listener's, for a route), or not a
/// `[[plugins]]` is reported at its own `owner.plugins[k]`.
fn named_plugins(
    owner: &str,
    names: &[Spanned<String>],
    outer: &[Spanned<String>],
    plugins: &[(String, AttachedPlugin)],
    rep: &mut Reporter<'_>,
) -> Vec<AttachedPlugin> {
    let mut out = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let field = format!("{owner}.plugins[{k}]");
        if names[..k].iter().any(|n| n.get_ref() == name.get_ref()) {
            rep.at(
                name.span(),
                field,
                format!(
                    "plugin {:?} is named twice (each plugin runs once per request)",
                    name.get_ref()
                ),
            );
            continue;
        }
        if outer.iter().any(|n| n.get_ref() == name.get_ref()) {
            rep.at(
                name.span(),
                field,
                format!(
                    "plugin {:?} is on the listener too (each plugin runs once per request)",
                    name.get_ref()
                ),
            );
            continue;
        }
        match plugins.iter().find(|(n, _)| n == name.get_ref()) {
            Some((_, p)) => out.push(p.clone()),
            None => rep.at(
                name.span(),
                field,
                format!("no [[plugins]] named {:?}", name.get_ref()),
            ),
        }
    }
    out
}
