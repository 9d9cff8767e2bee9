//! `notify`: `{channel, text, title?, lines?, url?}` → `{delivered, channel,
//! status}`. Posts a message to a chat channel the operator configured:
//!
//! ```toml
//! [plugins.notify]
//! allowed_hosts = ["https://hooks.slack.com"]
//! [plugins.notify.channels]
//! it-managers = "https://hooks.slack.com/services/T0/B0/XYZ"       # Slack
//! major-incident = { url = "https://acme.webhook.office.com/...", format = "teams" }
//! audit = { url = "https://audit.example.com/events", format = "json" }
//! ```
//!
//! Workflows name channels, never URLs, so a workflow cannot post anywhere
//! the operator did not set up. `url` in the input is a link shown with the
//! message (e.g. the ticket). The step's idempotency key goes along as
//! `Idempotency-Key`; 408, 429 and 5xx answers are retryable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use steward_sdk::{Context, Error, config, http};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    channel: String,
    text: String,
    title: Option<String>,
    #[serde(default)]
    lines: Vec<Value>,
    url: Option<String>,
}

#[derive(Serialize)]
struct Output {
    delivered: bool,
    channel: String,
    status: u16,
}

/// How a channel's webhook wants its messages.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    Slack,
    Teams,
    Json,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChannelSetting {
    Url(String),
    Full { url: String, format: Option<Format> },
}

impl ChannelSetting {
    fn resolve(self) -> (String, Format) {
        match self {
            ChannelSetting::Url(url) => {
                let format = guess_format(&url);
                (url, format)
            }
            ChannelSetting::Full { url, format } => {
                let format = format.unwrap_or_else(|| guess_format(&url));
                (url, format)
            }
        }
    }
}

/// Teams webhooks live on Microsoft hosts; everything else speaks Slack's
/// `{"text"}`, which most chat tools accept.
fn guess_format(url: &str) -> Format {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("");
    if host.ends_with("webhook.office.com") || host.ends_with("logic.azure.com") {
        Format::Teams
    } else {
        Format::Slack
    }
}

fn handle(ctx: &Context, input: Input) -> Result<Output, Error> {
    let mut channels: BTreeMap<String, ChannelSetting> =
        config::get("channels")?.unwrap_or_default();
    let Some(setting) = channels.remove(&input.channel) else {
        let known: Vec<&String> = channels.keys().collect();
        return Err(Error::fatal(format!(
            "channel {:?} is not configured: add it under [plugins.notify.channels] in steward.toml{}",
            input.channel,
            if known.is_empty() {
                String::new()
            } else {
                format!(" (configured: {})", known.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "))
            }
        ))
        .with_code("unknown-channel"));
    };
    if input.text.trim().is_empty() {
        return Err(Error::fatal("text must not be empty").with_code("invalid-input"));
    }
    let (url, format) = setting.resolve();
    let payload = payload(format, ctx, &input);
    let request = http::Request {
        method: "POST".into(),
        url: url.clone(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Idempotency-Key".into(), ctx.idempotency_key.clone()),
        ],
        body: Some(payload.to_string().into_bytes()),
        timeout_ms: None,
    };
    let response = http::send(&request)?;
    let status = response.status;
    if !(200..300).contains(&status) {
        let mut body = String::from_utf8_lossy(&response.body).into_owned();
        body.truncate(200);
        let message = format!("channel {} answered {status}: {body}", input.channel);
        let error = if status == 408 || status == 429 || status >= 500 {
            Error::retryable(message)
        } else {
            Error::fatal(message)
        };
        return Err(error.with_code(format!("http-{status}")));
    }
    Ok(Output {
        delivered: true,
        channel: input.channel,
        status,
    })
}

fn line_text(line: &Value) -> String {
    match line {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The message as one block of text: title, text, bullet lines, link.
fn plain_text(input: &Input, bold: (&str, &str)) -> String {
    let mut text = String::new();
    if let Some(title) = &input.title {
        text.push_str(&format!("{}{title}{}\n", bold.0, bold.1));
    }
    text.push_str(&input.text);
    for line in &input.lines {
        text.push_str(&format!("\n• {}", line_text(line)));
    }
    if let Some(url) = &input.url {
        text.push('\n');
        text.push_str(url);
    }
    text
}

fn payload(format: Format, ctx: &Context, input: &Input) -> Value {
    match format {
        Format::Slack => json!({ "text": plain_text(input, ("*", "*")) }),
        Format::Teams => {
            let mut body = Vec::new();
            if let Some(title) = &input.title {
                body.push(json!({"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true}));
            }
            body.push(json!({"type": "TextBlock", "text": input.text, "wrap": true}));
            for line in &input.lines {
                body.push(json!({"type": "TextBlock", "text": format!("• {}", line_text(line)), "wrap": true, "spacing": "None"}));
            }
            let mut card = json!({
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            });
            if let Some(url) = &input.url {
                card["actions"] = json!([{"type": "Action.OpenUrl", "title": "Open", "url": url}]);
            }
            json!({
                "type": "message",
                "text": plain_text(input, ("**", "**")),
                "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
            })
        }
        Format::Json => json!({
            "channel": input.channel,
            "title": input.title,
            "text": input.text,
            "lines": input.lines,
            "url": input.url,
            "run_id": ctx.run_id,
            "workflow": ctx.workflow,
            "step_id": ctx.step_id,
        }),
    }
}

steward_sdk::plugin!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::for_tests("p1-incident", "page")
    }

    fn input() -> Input {
        serde_json::from_value(json!({
            "channel": "it-managers",
            "title": "P1 INC0010001",
            "text": "VPN is down",
            "lines": ["impact: all staff", 3],
            "url": "https://acme.service-now.com/incident.do?sys_id=1"
        }))
        .unwrap()
    }

    #[test]
    fn slack_gets_one_text_with_title_lines_and_link() {
        let p = payload(Format::Slack, &ctx(), &input());
        assert_eq!(
            p["text"],
            "*P1 INC0010001*\nVPN is down\n• impact: all staff\n• 3\nhttps://acme.service-now.com/incident.do?sys_id=1"
        );
    }

    #[test]
    fn teams_gets_an_adaptive_card_and_a_text_fallback() {
        let p = payload(Format::Teams, &ctx(), &input());
        let card = &p["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["body"][1]["text"], "VPN is down");
        assert_eq!(
            card["actions"][0]["url"],
            "https://acme.service-now.com/incident.do?sys_id=1"
        );
        assert!(p["text"].as_str().unwrap().starts_with("**P1 INC0010001**"));
    }

    #[test]
    fn json_carries_the_run() {
        let p = payload(Format::Json, &ctx(), &input());
        assert_eq!(p["run_id"], "r1");
        assert_eq!(p["lines"][1], 3);
    }

    #[test]
    fn formats_follow_the_setting_or_the_host() {
        let url = |u: &str| ChannelSetting::Url(u.into()).resolve().1;
        assert_eq!(url("https://hooks.slack.com/services/x"), Format::Slack);
        assert_eq!(
            url("https://acme.webhook.office.com/webhookb2/x"),
            Format::Teams
        );
        assert_eq!(url("http://127.0.0.1:9100/chat/ops"), Format::Slack);
        let full: ChannelSetting =
            serde_json::from_value(json!({"url": "http://x/y", "format": "json"})).unwrap();
        assert_eq!(full.resolve().1, Format::Json);
        assert!(
            serde_json::from_value::<ChannelSetting>(json!({"url": "http://x", "format": "fax"}))
                .is_err()
        );
    }
}
