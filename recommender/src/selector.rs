//! Label selectors (`matchLabels` + `matchExpressions`), compiled and validated once.
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use thiserror::Error;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error(
        "field `{field}.operator`: unknown operator `{operator}` (expected In, NotIn, Exists or DoesNotExist)"
    )]
    BadOperator { field: String, operator: String },
    #[error("field `{field}.values`: operator {operator} needs at least one value")]
    MissingValues { field: String, operator: String },
    #[error("field `{field}.values`: operator {operator} takes no values")]
    UnexpectedValues { field: String, operator: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // NotIn also matches objects without the key (Kubernetes semantics).
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A compiled selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn everything() -> Self {
        Self::default()
    }

    /// Compiles `selector`; `field` is its path in the object, for error messages.
    pub fn compile(selector: &LabelSelector, field: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let field = format!("{field}.matchExpressions[{i}]");
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            let req = match expr.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(SelectorError::MissingValues {
                            field,
                            operator: expr.operator.clone(),
                        });
                    }
                    if expr.operator == "In" {
                        Requirement::In(key, values)
                    } else {
                        Requirement::NotIn(key, values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(SelectorError::UnexpectedValues {
                            field,
                            operator: expr.operator.clone(),
                        });
                    }
                    if expr.operator == "Exists" {
                        Requirement::Exists(key)
                    } else {
                        Requirement::DoesNotExist(key)
                    }
                }
                other => {
                    return Err(SelectorError::BadOperator {
                        field,
                        operator: other.to_string(),
                    });
                }
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The `key=value` pairs this selector requires (for suggestions and lint).
    pub fn equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.requirements.iter().filter_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let none = labels(&[]);
        let s = |k, op, v: &[&str]| Selector::compile(&expr(k, op, v), "s").unwrap();
        assert!(s("app", "In", &["web", "db"]).matches(&l));
        assert!(!s("app", "In", &["db"]).matches(&l));
        assert!(s("app", "NotIn", &["db"]).matches(&l));
        assert!(
            s("app", "NotIn", &["db"]).matches(&none),
            "NotIn matches a missing key"
        );
        assert!(!s("app", "NotIn", &["web"]).matches(&l));
        assert!(s("tier", "Exists", &[]).matches(&l));
        assert!(!s("tier", "Exists", &[]).matches(&none));
        assert!(s("tier", "DoesNotExist", &[]).matches(&none));
        assert!(!s("tier", "DoesNotExist", &[]).matches(&l));
        assert!(Selector::everything().matches(&none));
    }

    #[test]
    fn bad_operator_names_the_field() {
        let err =
            Selector::compile(&expr("app", "Equals", &["x"]), "spec.podSelector").unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `spec.podSelector.matchExpressions[0].operator`: unknown operator `Equals` (expected In, NotIn, Exists or DoesNotExist)"
        );
        assert!(Selector::compile(&expr("app", "In", &[]), "s").is_err());
        assert!(Selector::compile(&expr("app", "Exists", &["x"]), "s").is_err());
    }
}
