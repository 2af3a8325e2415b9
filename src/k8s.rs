//! Kubernetes objects as text, for whoever writes them (`kube`'s Jobs, `publish::kmm`'s
//! `Module`): object [`name`]s and YAML ([`to_yaml`]).
//!
//! The objects are built as `serde_json::Value`s and rendered as YAML by [`to_yaml`]: their
//! shape is fixed and small, so ckms writes the YAML itself rather than depending on
//! serde_yaml, which its author no longer maintains. Every string is written as a JSON string,
//! which is a valid YAML double-quoted scalar, so no value (`${...}`, `6.1.0-56-amd64`, `""`)
//! can be read back as another type.

use serde_json::Value;

/// A Kubernetes object name (RFC 1123 label: lower case, digits, `-`).
pub fn name(name: &str) -> String {
    let mapped: String =
        name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    // Cut to a label's 63 characters before trimming: the cut may end on a `-`.
    let cut: String = mapped.trim_start_matches('-').chars().take(63).collect();
    let trimmed = cut.trim_end_matches('-');
    if trimmed.is_empty() {
        "ckms-modules".into()
    } else {
        trimmed.into()
    }
}

/// Block-style YAML of a JSON value; object keys keep their (sorted) order.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    block(value, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

fn key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()) {
        k.into()
    } else {
        Value::String(k.into()).to_string()
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                if is_block(val) {
                    out.push_str(&format!("{pad}{}:\n", key(k)));
                    block(val, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{}: {}\n", key(k), scalar(val)));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    // The item's first line goes after "- ", the rest indented under it.
                    let mut inner = String::new();
                    block(item, indent + 2, &mut inner);
                    out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_of_nested_objects_and_lists() {
        let v = json!({"a": {"b": [{"c": "x", "d": "${K}"}, "y"], "e": {}}, "f": ""});
        assert_eq!(to_yaml(&v), "a:\n  b:\n    - c: \"x\"\n      d: \"${K}\"\n    - \"y\"\n  e: {}\nf: \"\"\n");
    }

    #[test]
    fn names_become_kubernetes_names() {
        assert_eq!(name("tp_smapi"), "tp-smapi");
        assert_eq!(name("V4L2loopback"), "v4l2loopback");
        assert_eq!(name("__"), "ckms-modules");
        // A label ends with a letter or digit, also where the 63 characters are cut.
        assert_eq!(name(&format!("{}_x", "a".repeat(62))), "a".repeat(62));
        assert_eq!(name(&"b".repeat(70)), "b".repeat(63));
    }
}
