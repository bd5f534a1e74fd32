//! Kubernetes label selectors (`app=web,tier!=db,env in (a,b),!legacy`) for flow
//! queries: parsed once, matched in SQL against the stored identities' labels
//! and in memory against live records.
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Requirements that must all hold (an empty selector selects every pod).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector `{selector}`: {detail}")]
pub struct SelectorError {
    pub selector: String,
    pub detail: String,
}

/// Label keys: an optional DNS-subdomain prefix and `/`, then a name of
/// alphanumerics, `-`, `_` and `.` (at most 63), starting and ending alphanumeric.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty()
            || p.len() > 253
            || !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'))
    {
        return false;
    }
    valid_value(name) && !name.is_empty()
}

/// Label values: empty, or up to 63 alphanumerics, `-`, `_`, `.`, starting and
/// ending alphanumeric.
fn valid_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced `)`".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let part = part.trim();
    if part.is_empty() {
        return Err("empty requirement (two commas in a row, or a trailing comma)".into());
    }
    let key_ok = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if valid_key(k) {
            Ok(k.to_string())
        } else {
            Err(format!("`{k}` is not a valid label key"))
        }
    };
    let value_ok = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if valid_value(v) {
            Ok(v.to_string())
        } else {
            Err(format!("`{v}` is not a valid label value"))
        }
    };
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_ok(k)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key_ok(k)?, value_ok(v)?));
    }
    if let Some((k, v)) = part.split_once("==") {
        return Ok(Requirement::Equals(key_ok(k)?, value_ok(v)?));
    }
    if let Some((k, v)) = part.split_once('=') {
        return Ok(Requirement::Equals(key_ok(k)?, value_ok(v)?));
    }
    // `key in (a,b)` / `key notin (a,b)`
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
            ("notin", l)
        } else if let Some(l) = rest.strip_prefix("in") {
            ("in", l)
        } else {
            return Err(format!(
                "`{part}`: expected `=`, `==`, `!=`, `in (...)` or `notin (...)` after the key"
            ));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("`{part}`: `{op}` needs a list in parentheses, e.g. (a,b)"))?;
        let values = inner
            .split(',')
            .map(value_ok)
            .collect::<Result<Vec<_>, _>>()?;
        if values.iter().all(String::is_empty) {
            return Err(format!("`{part}`: `{op}` needs at least one value"));
        }
        let key = key_ok(words[0])?;
        return Ok(if op == "in" {
            Requirement::In(key, values)
        } else {
            Requirement::NotIn(key, values)
        });
    }
    Ok(Requirement::Exists(key_ok(part)?))
}

impl FromStr for LabelSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |detail: String| SelectorError {
            selector: s.to_string(),
            detail,
        };
        if s.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let parts = split_top(s).map_err(err)?;
        let reqs = parts
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(LabelSelector(reqs))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl LabelSelector {
    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// The JSON path of a key in the stored labels object (keys are validated,
    /// so they hold no quote).
    pub(crate) fn json_path(key: &str) -> String {
        format!("$.\"{key}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s: LabelSelector =
            "app=web, tier!=db,env in (prod, staging),zone notin (a),team,!legacy,app.kubernetes.io/name==x"
                .parse()
                .unwrap();
        assert_eq!(s.0.len(), 7);
        assert_eq!(
            s.to_string(),
            "app=web,tier!=db,env in (prod,staging),zone notin (a),team,!legacy,app.kubernetes.io/name=x"
        );
        let l = labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "t"),
            ("app.kubernetes.io/name", "x"),
        ]);
        assert!(s.matches(&l));
        let mut l2 = l.clone();
        l2.insert("legacy".into(), "1".into());
        assert!(!s.matches(&l2));
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "app=",
            "=web",
            "app in web",
            "app in ()",
            "app=(x",
            "a b c",
            "app=web,,x=y",
            "app=we b",
            "bad key=1",
            "app=\"x\"",
        ] {
            let res = bad.parse::<LabelSelector>();
            // `app=` selects an empty value, which Kubernetes allows.
            if bad == "app=" {
                assert!(res.is_ok(), "{bad}");
                continue;
            }
            let err = res.expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
