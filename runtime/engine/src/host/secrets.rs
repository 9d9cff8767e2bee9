use super::HostState;
use crate::bindings::HostError;
use crate::bindings::steward::plugin::secrets::Host;

impl Host for HostState {
    fn get(&mut self, name: String) -> Result<String, HostError> {
        if !self.plugin.grants.has_secret(&name) {
            return Err(HostError::denied(format!(
                "secret {name} is not granted to plugin {}: list it in the plugin's manifest and under \
                 [plugins.{}] secrets in steward.toml",
                self.plugin.name, self.plugin.name
            )));
        }
        let value = self
            .secrets
            .get(&name)
            .ok_or_else(|| HostError::denied(format!("secret {name} is not defined in [secrets]")))?
            .to_string();
        self.charge(value.len(), "a secret")?;
        Ok(value)
    }
}
