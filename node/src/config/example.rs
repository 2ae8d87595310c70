//! The commented example configuration, generated from the doc comments of [`super::Config`]
//! (through its JSON Schema) and the values of `Config::default()`.
//!
//! `examples/unitas.toml` is this output; `unitas init` writes the same text with the data
//! directory and first territory filled in.

use serde_json::Value;

use super::Config;

/// Sections in the order an operator reads them; any section not listed follows in schema order.
const SECTION_ORDER: &[&str] = &[
    "server",
    "storage",
    "federation",
    "registration",
    "rooms",
    "rate_limits",
    "media",
    "log",
];

/// What `unitas init` fills in; `None` renders the generic example.
#[derive(Debug, Clone, Default)]
pub struct InitValues {
    /// `server.data_dir`
    pub data_dir: Option<String>,
    /// The first territory: code, server name, key file.
    pub territory: Option<(String, String, String)>,
}

/// Renders the fully commented configuration file.
pub fn render(values: &InitValues) -> String {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(Value::Null);
    let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    let mut out = String::new();
    out.push_str(
        "# Unitas node configuration.\n\
         #\n\
         # Every key is listed with its documentation and default. Lines starting with `#key =`\n\
         # show the default and are not in force; remove the `#` to change a value.\n\
         # Precedence: defaults < this file < environment (UNITAS__SECTION__KEY=value, e.g.\n\
         # UNITAS__SERVER__LISTEN=0.0.0.0:8008) < command-line flags (unitas run --help).\n\
         # Check a file with `unitas config check FILE`.\n",
    );

    let top = &schema["properties"];
    let mut sections: Vec<&str> = SECTION_ORDER.to_vec();
    if let Some(props) = top.as_object() {
        for name in props.keys() {
            if !sections.contains(&name.as_str()) && name != "territory" {
                sections.push(name);
            }
        }
    }
    for section in sections {
        let Some(section_schema) = resolve(&schema, &top[section]) else {
            continue;
        };
        out.push('\n');
        comment(&mut out, describe(&top[section]).unwrap_or(section), "");
        out.push_str(&format!("[{section}]\n"));
        let Some(props) = section_schema["properties"].as_object() else {
            continue;
        };
        for (key, prop) in props {
            out.push('\n');
            if let Some(doc) = describe(prop) {
                comment(&mut out, doc, "");
            }
            let default = &defaults[section][key];
            let set = match (section, key.as_str(), &values.data_dir) {
                ("server", "data_dir", Some(dir)) => Some(toml_value(&Value::from(dir.as_str()))),
                _ => None,
            };
            match (set, default) {
                (Some(value), _) => out.push_str(&format!("{key} = {value}\n")),
                (None, Value::Null) => out.push_str(&format!("# Default: unset.\n#{key} =\n")),
                (None, value) => out.push_str(&format!("#{key} = {}\n", toml_value(value))),
            }
        }
    }

    out.push('\n');
    if let Some(doc) = describe(&top["territory"]) {
        comment(&mut out, doc, "");
    }
    let territory_schema = resolve(&schema, &top["territory"]["items"]);
    let fields = territory_schema.and_then(|s| s["properties"].as_object());
    match &values.territory {
        Some((code, server_name, key_file)) => {
            out.push_str("[[territory]]\n");
            let set = [
                ("code", code),
                ("server_name", server_name),
                ("signing_key_file", key_file),
            ];
            for (key, prop) in fields.into_iter().flatten() {
                if let Some(doc) = describe(prop) {
                    comment(&mut out, doc, "");
                }
                match set.iter().find(|(k, _)| k == key) {
                    Some((_, value)) => {
                        out.push_str(&format!(
                            "{key} = {}\n",
                            toml_value(&Value::from(value.as_str()))
                        ));
                    }
                    None => out.push_str(&format!("#{key} =\n")),
                }
            }
        }
        None => {
            out.push_str("#[[territory]]\n");
            let example = [
                ("code", "\"DK\""),
                ("server_name", "\"dk.unitas.example\""),
                ("name", "\"Denmark\""),
            ];
            for (key, prop) in fields.into_iter().flatten() {
                if let Some(doc) = describe(prop) {
                    comment(&mut out, doc, "");
                }
                match example.iter().find(|(k, _)| k == key) {
                    Some((_, value)) => out.push_str(&format!("#{key} = {value}\n")),
                    None => out.push_str(&format!("#{key} =\n")),
                }
            }
        }
    }
    out
}

/// Follows a `$ref` into `$defs`.
fn resolve<'a>(schema: &'a Value, node: &'a Value) -> Option<&'a Value> {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.rsplit('/').next()?;
            schema.get("$defs")?.get(name)
        }
        None if node.is_object() => Some(node),
        None => None,
    }
}

fn describe(node: &Value) -> Option<&str> {
    node.get("description").and_then(Value::as_str)
}

/// Writes `text` as `# ` comment lines wrapped at 98 columns.
fn comment(out: &mut String, text: &str, indent: &str) {
    for paragraph in text.split("\n\n") {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && indent.len() + 2 + line.len() + 1 + word.len() > 98 {
                out.push_str(&format!("{indent}# {line}\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            out.push_str(&format!("{indent}# {line}\n"));
        }
    }
}

/// A JSON value as an inline TOML value.
fn toml_value(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => toml::Value::String(s.clone()).to_string(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
    }
}
