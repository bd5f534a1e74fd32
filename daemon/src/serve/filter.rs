//! The flow filters of `flowpol flows` and `/api/v1/flows`, in one form: parsed
//! from query parameters (400 on bad input), turned into a store query, matched
//! against live records (follow mode), and written back as query parameters
//! (the `--cluster` client).
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flowpol_recommender::flow::{
    Endpoint, EndpointKind, FlowRecord, Protocol, Verdict, WorkloadRef,
};

use crate::cli::flows::{Since, parse_since};
use crate::store::{FlowQuery, LabelSelector};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter `{param}`: {detail}")]
pub struct FilterError {
    pub param: String,
    pub detail: String,
}

/// Which flows to return. Identity filters (namespace, workload, selector)
/// hold on the same end; either end may match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub since: Option<Since>,
    pub verdict: Option<Verdict>,
    pub namespace: Option<String>,
    pub workload: Option<WorkloadRef>,
    pub selector: Option<LabelSelector>,
    pub protocol: Option<Protocol>,
}

/// Parameter names `/api/v1/flows` accepts.
pub const PARAMS: [&str; 10] = [
    "since",
    "verdict",
    "namespace",
    "workload",
    "selector",
    "protocol",
    "limit",
    "cursor",
    "follow",
    "merged",
];

impl FlowFilter {
    /// Parses the filter parameters; other known parameters are left to the
    /// caller, unknown ones are refused (a typo must not widen a query).
    pub fn from_params(params: &HashMap<String, String>) -> Result<Self, FilterError> {
        let err = |param: &str, detail: String| FilterError {
            param: param.to_string(),
            detail,
        };
        for k in params.keys() {
            if !PARAMS.contains(&k.as_str()) {
                return Err(err(
                    k,
                    format!("unknown parameter (known: {})", PARAMS.join(", ")),
                ));
            }
        }
        let mut f = FlowFilter::default();
        if let Some(v) = params.get("since") {
            f.since = Some(parse_since(v).map_err(|e| err("since", e))?);
        }
        if let Some(v) = params.get("verdict") {
            f.verdict = Some(v.parse().map_err(|e| err("verdict", e))?);
        }
        if let Some(v) = params.get("namespace") {
            if v.is_empty() {
                return Err(err("namespace", "empty namespace".into()));
            }
            f.namespace = Some(v.clone());
        }
        if let Some(v) = params.get("workload") {
            f.workload = Some(v.parse().map_err(|e| err("workload", e))?);
        }
        if let Some(v) = params.get("selector") {
            f.selector = Some(
                v.parse::<LabelSelector>()
                    .map_err(|e| err("selector", e.to_string()))?,
            );
        }
        if let Some(v) = params.get("protocol") {
            f.protocol = Some(v.parse().map_err(
                |e: flowpol_recommender::flow::UnknownProtocol| err("protocol", e.to_string()),
            )?);
        }
        Ok(f)
    }

    /// The parameters that select the same flows (for a remote agent). A
    /// relative `since` is sent as the instant it names now, so every node
    /// answers for the same period.
    pub fn to_params(&self, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(s) = self.since {
            p.push(("since", s.instant(now).to_rfc3339()));
        }
        if let Some(v) = self.verdict {
            p.push(("verdict", v.to_string()));
        }
        if let Some(v) = &self.namespace {
            p.push(("namespace", v.clone()));
        }
        if let Some(v) = &self.workload {
            p.push(("workload", v.to_string()));
        }
        if let Some(v) = &self.selector {
            p.push(("selector", v.to_string()));
        }
        if let Some(v) = self.protocol {
            p.push(("protocol", v.to_string()));
        }
        p
    }

    pub fn to_query(&self, now: DateTime<Utc>) -> FlowQuery {
        FlowQuery {
            since: self.since.map(|s| s.instant(now)),
            verdict: self.verdict,
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            labels: self.selector.clone(),
            protocol: self.protocol,
            ..Default::default()
        }
    }

    /// The store query's semantics on one record (follow mode).
    pub fn matches(&self, f: &FlowRecord, now: DateTime<Utc>) -> bool {
        if let Some(s) = self.since
            && f.last_seen < s.instant(now)
        {
            return false;
        }
        if self.verdict.is_some_and(|v| v != f.verdict) {
            return false;
        }
        if self.protocol.is_some_and(|p| p != f.protocol) {
            return false;
        }
        if self.namespace.is_none() && self.workload.is_none() && self.selector.is_none() {
            return true;
        }
        self.end_matches(&f.src) || self.end_matches(&f.dst)
    }

    fn end_matches(&self, e: &Endpoint) -> bool {
        if let Some(ns) = &self.namespace
            && e.namespace.as_ref() != Some(ns)
        {
            return false;
        }
        if let Some(w) = &self.workload
            && e.workload.as_ref() != Some(w)
        {
            return false;
        }
        if let Some(sel) = &self.selector
            && (e.kind != Some(EndpointKind::Pod) || !sel.matches(&e.labels))
        {
            return false;
        }
        true
    }
}

/// Parses `name=value&...` (percent-decoded; `+` is a space).
pub fn parse_query_string(q: &str) -> Result<HashMap<String, String>, FilterError> {
    let mut out = HashMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k).ok_or_else(|| FilterError {
            param: k.to_string(),
            detail: "bad percent-encoding".into(),
        })?;
        let v = decode(v).ok_or_else(|| FilterError {
            param: k.clone(),
            detail: "bad percent-encoding in the value".into(),
        })?;
        if out.insert(k.clone(), v).is_some() {
            return Err(FilterError {
                param: k,
                detail: "given more than once".into(),
            });
        }
    }
    Ok(out)
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> HashMap<String, String> {
        parse_query_string(q).unwrap()
    }

    #[test]
    fn parses_and_round_trips() {
        let f = FlowFilter::from_params(&params(
            "namespace=shop&workload=Deployment%2Fapi&selector=app%3Dweb%2Ctier+in+(a%2Cb)&verdict=dropped&protocol=TCP&since=5m",
        ))
        .unwrap();
        assert_eq!(f.namespace.as_deref(), Some("shop"));
        assert_eq!(
            f.selector.as_ref().unwrap().to_string(),
            "app=web,tier in (a,b)"
        );
        let now = Utc::now();
        let q: Vec<String> = f
            .to_params(now)
            .into_iter()
            .map(|(k, v)| format!("{k}={}", encode(&v)))
            .collect();
        let back = FlowFilter::from_params(&params(&q.join("&"))).unwrap();
        assert_eq!(back.selector, f.selector);
        assert_eq!(back.workload, f.workload);
        assert_eq!(
            back.since.unwrap().instant(now).timestamp(),
            f.since.unwrap().instant(now).timestamp()
        );
    }

    #[test]
    fn bad_input_names_the_parameter() {
        for (q, param) in [
            ("selector=app%3D%3D%3D", "selector"),
            ("since=yesterday", "since"),
            ("verdict=maybe", "verdict"),
            ("protocol=XTP", "protocol"),
            ("namspace=shop", "namspace"),
            ("namespace=a&namespace=b", "namespace"),
        ] {
            let err = parse_query_string(q)
                .and_then(|p| FlowFilter::from_params(&p))
                .expect_err(q);
            assert_eq!(err.param, param, "{q}: {err}");
        }
    }
}
