//! Label and field selectors, as the Kubernetes API documents them
//! (`concepts/overview/working-with-objects/labels`, `field-selectors`).

use std::collections::BTreeSet;

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`: also matches objects without the label.
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, BTreeSet<String>),
    /// `key notin (a,b)`: also matches objects without the label.
    NotIn(String, BTreeSet<String>),
    /// `key`: the label exists.
    Exists(String),
    /// `!key`: the label does not exist.
    DoesNotExist(String),
}

/// A parsed `labelSelector`: every requirement must hold (comma means AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses equality-based (`=`, `==`, `!=`) and set-based (`in`, `notin`, `key`, `!key`)
    /// requirements. An empty string selects everything.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether an object with these `metadata.labels` is selected.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside a `( ... )` value set.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0u32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| format!("unexpected ')' in label selector {text:?}"))?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unclosed '(' in label selector {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(check_key(key.trim())?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(check_key(k.trim())?, check_value(v.trim())?));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(check_key(k.trim())?, check_value(v.trim())?));
    }
    if let Some(open) = part.find('(') {
        let head = part[..open].trim();
        let rest = part[open + 1..].trim();
        let Some(inner) = rest.strip_suffix(')') else {
            return Err(format!("expected ')' at the end of {part:?}"));
        };
        let values = inner.split(',').map(|v| check_value(v.trim())).collect::<Result<BTreeSet<_>, _>>()?;
        let (key, op) =
            head.rsplit_once(char::is_whitespace).ok_or_else(|| format!("expected `key in (...)`, got {part:?}"))?;
        let key = check_key(key.trim())?;
        return match op {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            other => Err(format!("unknown set operator {other:?} in {part:?} (use in or notin)")),
        };
    }
    if part.contains(['<', '>']) {
        return Err(format!("numeric comparison in {part:?} is not supported by this emulator"));
    }
    Ok(Requirement::Exists(check_key(part)?))
}

fn check_key(key: &str) -> Result<String, String> {
    crate::validate::label_key(key).map_err(|e| format!("invalid label key {key:?}: {e}"))?;
    Ok(key.to_string())
}

fn check_value(value: &str) -> Result<String, String> {
    crate::validate::label_value(value).map_err(|e| format!("invalid label value {value:?}: {e}"))?;
    Ok(value.to_string())
}

/// A parsed `fieldSelector`. Only `metadata.name` and `metadata.namespace` are supported,
/// which is what the API server supports for Leases and ConfigMaps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `field=value`, `field==value` and `field!=value`, comma separated.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {part:?}: expected field=value"));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let key = field.trim_start_matches("metadata.");
            let actual = object.pointer(&format!("/metadata/{key}")).and_then(Value::as_str).unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn equality_and_set_requirements_follow_the_documented_semantics() {
        let l = labels(json!({"app": "pg", "tier": "db"}));
        let sel = |s: &str| LabelSelector::parse(s).unwrap();
        assert!(sel("app=pg").matches(Some(&l)));
        assert!(sel("app==pg,tier=db").matches(Some(&l)));
        assert!(!sel("app=pg,tier=web").matches(Some(&l)));
        assert!(sel("app!=web").matches(Some(&l)));
        assert!(sel("missing!=x").matches(Some(&l)), "!= selects objects without the label");
        assert!(sel("tier in (web, db)").matches(Some(&l)));
        assert!(!sel("tier in (web)").matches(Some(&l)));
        assert!(sel("tier notin (web)").matches(Some(&l)));
        assert!(sel("missing notin (web)").matches(Some(&l)));
        assert!(sel("app,!missing").matches(Some(&l)));
        assert!(!sel("!app").matches(Some(&l)));
        assert!(sel("").matches(None));
        assert!(!sel("app").matches(None));
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for bad in ["tier in (a", "tier in a)", "tier between (a)", "a>1", "Bad Key=x", "k=v v"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(FieldSelector::parse("spec.holderIdentity=x").is_err());
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn field_selectors_match_name_and_namespace() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}});
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&obj));
        assert!(FieldSelector::parse("metadata.name!=b,metadata.namespace==ns").unwrap().matches(&obj));
        assert!(!FieldSelector::parse("metadata.name=b").unwrap().matches(&obj));
    }
}
