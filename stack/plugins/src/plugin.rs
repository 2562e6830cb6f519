//! A configured plugin: a module plus its name, configuration, and the
//! state its instances share.

use std::sync::Arc;

use crate::metrics::{MetricSample, Metrics, PluginStats, Stats};
use crate::module::PluginModule;
use crate::properties::Properties;
use crate::shared_data::SharedData;

/// How a plugin is configured (from the TOML, later).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginConfig {
    /// The plugin's name: in logs, metrics, the `plugin_name` property.
    pub name: String,
    /// The root id (`plugin_root_id` property): SDKs pick the root context
    /// registered under it (AssemblyScript's `registerRootContext(…, id)`).
    pub root_id: String,
    /// The VM id (`plugin_vm_id`).
    pub vm_id: String,
    /// Bytes `proxy_on_configure` reads (`PluginConfiguration` buffer).
    pub configuration: Vec<u8>,
    /// Bytes `proxy_on_vm_start` reads (`VmConfiguration` buffer).
    pub vm_configuration: Vec<u8>,
}

/// A configured plugin, shared (cheaply cloned) by every worker; each
/// worker makes its own [`crate::PluginInstance`] from it.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginShared>,
}

pub(crate) struct PluginShared {
    pub(crate) module: PluginModule,
    pub(crate) name: Arc<str>,
    pub(crate) configuration: Vec<u8>,
    pub(crate) vm_configuration: Vec<u8>,
    /// `plugin_name`, `plugin_root_id`, `plugin_vm_id`.
    pub(crate) props: Properties,
    pub(crate) shared: Arc<SharedData>,
    pub(crate) metrics: Metrics,
    pub(crate) stats: Stats,
}

impl Plugin {
    /// A plugin with a fresh shared-data store.
    pub fn new(module: PluginModule, config: PluginConfig) -> Self {
        Self::with_shared_data(module, config, Arc::default())
    }

    /// A plugin that keeps `shared` (to carry shared data over a reload).
    pub fn with_shared_data(
        module: PluginModule,
        config: PluginConfig,
        shared: Arc<SharedData>,
    ) -> Self {
        let mut props = Properties::new();
        props
            .set("plugin_name", config.name.as_bytes())
            .set("plugin_root_id", config.root_id.as_bytes())
            .set("plugin_vm_id", config.vm_id.as_bytes());
        Self {
            inner: Arc::new(PluginShared {
                module,
                name: config.name.into(),
                configuration: config.configuration,
                vm_configuration: config.vm_configuration,
                props,
                shared,
                metrics: Metrics::default(),
                stats: Stats::default(),
            }),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether both are the same configured plugin (one compile of one
    /// snapshot), not merely equal configurations.
    /// The linear-memory limit of each instance (`memory_mb`).
    pub fn memory_limit(&self) -> usize {
        self.inner.module.limits().memory_bytes
    }

    pub fn ptr_eq(&self, other: &Plugin) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The shared-data store (keep it for the next snapshot's plugin).
    pub fn shared_data(&self) -> &Arc<SharedData> {
        &self.inner.shared
    }

    /// The metrics the plugin defined, summed over its instances.
    pub fn metrics(&self) -> Vec<MetricSample> {
        self.inner.metrics.snapshot()
    }

    /// Failure counters, summed over its instances.
    pub fn stats(&self) -> PluginStats {
        self.inner.stats.read()
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.name)
            .finish()
    }
}
