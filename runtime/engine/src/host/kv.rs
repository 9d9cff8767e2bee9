use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use super::HostState;
use crate::bindings::HostError;
use crate::bindings::steward::plugin::kv::Host;

/// Longest key and largest value a plugin may store.
const MAX_KEY: usize = 512;
const MAX_VALUE: usize = 1 << 20;

/// What a [`KeyValue`] operation answers: a future, so a call waiting on
/// the database can still be dropped at its deadline.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where plugin key-value data lives; every key is scoped by plugin name so
/// plugins never see each other's data.
pub trait KeyValue: Send + Sync {
    fn get<'a>(&'a self, plugin: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;
    fn set<'a>(&'a self, plugin: &'a str, key: &'a str, value: &'a [u8]) -> KvFuture<'a, ()>;
    fn delete<'a>(&'a self, plugin: &'a str, key: &'a str) -> KvFuture<'a, ()>;
}

/// A process-local store, for `steward run` and tests.
#[derive(Default)]
pub struct MemoryKeyValue(Mutex<HashMap<(String, String), Vec<u8>>>);

impl KeyValue for MemoryKeyValue {
    fn get<'a>(&'a self, plugin: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        let value = self
            .0
            .lock()
            .unwrap()
            .get(&(plugin.to_string(), key.to_string()))
            .cloned();
        Box::pin(std::future::ready(Ok(value)))
    }
    fn set<'a>(&'a self, plugin: &'a str, key: &'a str, value: &'a [u8]) -> KvFuture<'a, ()> {
        self.0
            .lock()
            .unwrap()
            .insert((plugin.to_string(), key.to_string()), value.to_vec());
        Box::pin(std::future::ready(Ok(())))
    }
    fn delete<'a>(&'a self, plugin: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        self.0
            .lock()
            .unwrap()
            .remove(&(plugin.to_string(), key.to_string()));
        Box::pin(std::future::ready(Ok(())))
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
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        self.kv_allowed(&key)?;
        let value = self
            .kv
            .get(&self.plugin.name, &key)
            .await
            .map_err(HostError::failed)?;
        if let Some(v) = &value {
            self.charge(v.len(), "a key-value read")?;
        }
        Ok(value)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        self.kv_allowed(&key)?;
        if value.len() > MAX_VALUE {
            return Err(HostError::limit(format!(
                "values are at most {MAX_VALUE} bytes"
            )));
        }
        self.charge(key.len() + value.len(), "a key-value write")?;
        self.kv
            .set(&self.plugin.name, &key, &value)
            .await
            .map_err(HostError::failed)
    }

    async fn delete(&mut self, key: String) -> Result<(), HostError> {
        self.kv_allowed(&key)?;
        self.kv
            .delete(&self.plugin.name, &key)
            .await
            .map_err(HostError::failed)
    }
}
