//! Validation the API server applies to Leases and ConfigMaps: object names, labels,
//! annotations, field types and sizes (apimachinery `validation`, `ValidateObjectMeta`,
//! `ValidateConfigMap`, `ValidateLease`).

use serde_json::{Map, Value};

use crate::resource::Resource;
use crate::status::ApiError;

/// Total size limit of all annotation keys and values (`TotalAnnotationSizeLimitB`).
pub const ANNOTATIONS_LIMIT: usize = 256 * 1024;
/// Total size limit of a ConfigMap's `data` and `binaryData` (`MaxSecretSize`, shared).
pub const CONFIGMAP_LIMIT: usize = 1024 * 1024;

fn alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 subdomain: at most 253 characters of `[a-z0-9.-]`, starting and ending with
/// an alphanumeric character. Lease and ConfigMap names must be one.
pub fn dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters long".into());
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.chars().all(|c| alnum(c) || c == '-')
            && label.starts_with(alnum)
            && label.ends_with(alnum)
    });
    if !ok {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

fn qualified_name_part(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 63 {
        return Err("name part must be 1 to 63 characters long".into());
    }
    if !name.chars().all(ok_char)
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name part.
pub fn label_key(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            dns_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
            qualified_name_part(name)
        }
        None => qualified_name_part(key),
    }
}

/// A label value: empty, or at most 63 characters like a key's name part.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    qualified_name_part(value).map_err(|e| e.replace("name part", "value"))
}

fn invalid(resource: Resource, name: &str, field: &str, message: String) -> ApiError {
    ApiError::invalid(resource, name, format!("{field}: Invalid value: {message}"))
}

fn string_map<'a>(
    resource: Resource,
    obj: &'a Value,
    pointer: &str,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match obj.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_string()) {
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled: {field}[{k:?}] must be a string",
                    resource.kind(),
                    resource.version()
                )));
            }
            Ok(Some(map))
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled: {field} must be an object of strings",
            resource.kind(),
            resource.version()
        ))),
    }
}

/// Checks `metadata` and the resource's own fields of an object about to be stored.
pub fn object(resource: Resource, obj: &Value) -> Result<(), ApiError> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    dns_subdomain(name).map_err(|e| invalid(resource, name, "metadata.name", format!("{name:?}: {e}")))?;
    if let Some(labels) = string_map(resource, obj, "/metadata/labels", "metadata.labels")? {
        for (k, v) in labels {
            label_key(k).map_err(|e| invalid(resource, name, "metadata.labels", format!("{k:?}: {e}")))?;
            let v = v.as_str().unwrap_or_default();
            label_value(v)
                .map_err(|e| invalid(resource, name, &format!("metadata.labels[{k}]"), format!("{v:?}: {e}")))?;
        }
    }
    if let Some(annotations) = string_map(resource, obj, "/metadata/annotations", "metadata.annotations")? {
        let mut total = 0;
        for (k, v) in annotations {
            label_key(k).map_err(|e| invalid(resource, name, "metadata.annotations", format!("{k:?}: {e}")))?;
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_LIMIT {
            return Err(ApiError::invalid(
                resource,
                name,
                format!("metadata.annotations: Too long: must have at most {ANNOTATIONS_LIMIT} bytes"),
            ));
        }
    }
    match resource {
        Resource::Lease => lease_spec(obj),
        Resource::ConfigMap => config_map(name, obj),
    }
}

fn lease_spec(obj: &Value) -> Result<(), ApiError> {
    let bad = |field: &str, what: &str| {
        ApiError::bad_request(format!(
            "Lease in version \"v1\" cannot be handled as a Lease: spec.{field}: expected {what}"
        ))
    };
    let Some(spec) = obj.get("spec") else { return Ok(()) };
    if spec.is_null() {
        return Ok(());
    }
    let Some(spec) = spec.as_object() else { return Err(bad("", "an object")) };
    for (field, value) in spec {
        if value.is_null() {
            continue;
        }
        match field.as_str() {
            "holderIdentity" | "preferredHolder" | "strategy" if !value.is_string() => {
                return Err(bad(field, "a string"));
            }
            "leaseDurationSeconds" | "leaseTransitions"
                if value.as_i64().and_then(|n| i32::try_from(n).ok()).is_none() =>
            {
                return Err(bad(field, "a 32-bit integer"));
            }
            "acquireTime" | "renewTime" => {
                let text = value.as_str().ok_or_else(|| bad(field, "a string"))?;
                micro_time(text)
                    .map_err(|e| bad(field, &format!("a MicroTime (RFC 3339 with 6 fractional digits): {e}")))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// client-go parses MicroTime with Go's `RFC3339Micro` layout, `2006-01-02T15:04:05.000000Z07:00`.
pub fn micro_time(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date_time = digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && at(10, b'T')
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19);
    if !date_time {
        return Err(format!("{text:?} does not start with YYYY-MM-DDTHH:MM:SS"));
    }
    if !(at(19, b'.') && digits(20..26)) || b.get(26).is_some_and(u8::is_ascii_digit) {
        return Err(format!("{text:?} does not have exactly 6 fractional digits"));
    }
    let zone = &text[26..];
    let offset = zone.len() == 6
        && (zone.starts_with('+') || zone.starts_with('-'))
        && zone.as_bytes()[3] == b':'
        && zone[1..3].bytes().chain(zone[4..6].bytes()).all(|c| c.is_ascii_digit());
    if zone != "Z" && !offset {
        return Err(format!("{text:?} has no valid zone (Z or +HH:MM)"));
    }
    Ok(())
}

fn config_map(name: &str, obj: &Value) -> Result<(), ApiError> {
    let r = Resource::ConfigMap;
    let mut total = 0;
    for field in ["data", "binaryData"] {
        if let Some(map) = string_map(r, obj, &format!("/{field}"), field)? {
            for (k, v) in map {
                let key_ok = !k.is_empty()
                    && k.len() <= 253
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !key_ok {
                    return Err(invalid(
                        r,
                        name,
                        field,
                        format!("{k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                    ));
                }
                total += v.as_str().map_or(0, str::len);
            }
        }
    }
    if total > CONFIGMAP_LIMIT {
        return Err(ApiError::invalid(r, name, format!("[]: Too long: must have at most {CONFIGMAP_LIMIT} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1123() {
        assert!(dns_subdomain("pg-leader").is_ok());
        assert!(dns_subdomain("a.b-c").is_ok());
        for bad in ["", "Pg", "-a", "a-", "a_b", "a..b", &"a".repeat(254)] {
            assert!(dns_subdomain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key("leasehold.io/scope").is_ok());
        assert!(label_key("app").is_ok());
        assert!(label_key("a/b/c").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("My_Value.1").is_ok());
        assert!(label_value(&"v".repeat(64)).is_err());
        assert!(label_value("a b").is_err());
    }

    #[test]
    fn micro_time_needs_six_fractional_digits() {
        assert!(micro_time("2024-05-01T10:20:30.123456Z").is_ok());
        assert!(micro_time("2024-05-01T10:20:30.123456+02:00").is_ok());
        assert!(micro_time("2024-05-01T10:20:30Z").is_err());
        assert!(micro_time("2024-05-01T10:20:30.123Z").is_err());
        assert!(micro_time("2024-05-01T10:20:30.1234567Z").is_err());
        assert!(micro_time("2024-05-01 10:20:30.123456Z").is_err());
    }
}
