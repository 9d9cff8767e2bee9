use std::collections::HashMap;
use std::sync::Mutex;

use super::HostState;
use crate::engine::bindings::HostError;
use crate::engine::bindings::steward::plugin::kv::Host;

/// Longest key and largest value a plugin may store.
const MAX_KEY: usize = 512;
const MAX_VALUE: usize = 1 << 20;

/// Where plugin key-value data lives; every key is scoped by plugin name so
/// plugins never see each other's data.
pub trait KeyValue: Send + Sync {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, plugin: &str, key: &str) -> Result<(), String>;
}

/// A process-local store, for `steward run` and tests.
#[derive(Default)]
pub struct MemoryKeyValue(Mutex<HashMap<(String, String), Vec<u8>>>);

impl KeyValue for MemoryKeyValue {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(&(plugin.to_string(), key.to_string()))
            .cloned())
    }
    fn set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .insert((plugin.to_string(), key.to_string()), value.to_vec());
        Ok(())
    }
    fn delete(&self, plugin: &str, key: &str) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .remove(&(plugin.to_string(), key.to_string()));
        Ok(())
    }
}

impl HostState {
    fn kv_allowed(&self, key: &str) -> Result<(), HostError> {
        if !self.plugin.grants.key_value {
            return Err(HostError::denied(format!(
                "the key-value store is not granted to plugin {}: set key_value = true in its manifest",
                self.plugin.name
            )));
        }
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(HostError::invalid(format!("keys are 1 to {MAX_KEY} bytes")));
        }
        Ok(())
    }
}

impl Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        self.kv_allowed(&key)?;
        let value = self
            .kv
            .get(&self.plugin.name, &key)
            .map_err(HostError::failed)?;
        if let Some(v) = &value {
            self.charge(v.len(), "a key-value read")?;
        }
        Ok(value)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        self.kv_allowed(&key)?;
        if value.len() > MAX_VALUE {
            return Err(HostError::limit(format!(
                "values are at most {MAX_VALUE} bytes"
            )));
        }
        self.charge(key.len() + value.len(), "a key-value write")?;
        self.kv
            .set(&self.plugin.name, &key, &value)
            .map_err(HostError::failed)
    }

    fn delete(&mut self, key: String) -> Result<(), HostError> {
        self.kv_allowed(&key)?;
        self.kv
            .delete(&self.plugin.name, &key)
            .map_err(HostError::failed)
    }
}
