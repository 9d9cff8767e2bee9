//! The engine's `kv` capability backed by the store, so a plugin's
//! key-value data is as durable as the runs that wrote it. Neither the
//! engine nor the store knows the other; this adapter joins them.

use steward_store::Store;

/// Plugin key-value data in the store, for the engine's `kv` capability.
pub struct StoreKeyValue {
    store: Store,
}

impl StoreKeyValue {
    pub fn new(store: Store) -> StoreKeyValue {
        StoreKeyValue { store }
    }
}

impl steward_engine::KeyValue for StoreKeyValue {
    fn get<'a>(
        &'a self,
        plugin: &'a str,
        key: &'a str,
    ) -> steward_engine::KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            self.store
                .kv_get(plugin, key)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn set<'a>(
        &'a self,
        plugin: &'a str,
        key: &'a str,
        value: &'a [u8],
    ) -> steward_engine::KvFuture<'a, ()> {
        Box::pin(async move {
            self.store
                .kv_set(plugin, key, value)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn delete<'a>(&'a self, plugin: &'a str, key: &'a str) -> steward_engine::KvFuture<'a, ()> {
        Box::pin(async move {
            self.store
                .kv_delete(plugin, key)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
