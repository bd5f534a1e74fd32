//! `GET /api/v1/flows`: stored rows with cursor paging, merged flows, or
//! (`follow=true`) a stream of newline-delimited JSON flows as they are recorded.
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use flowpol_recommender::flow::FlowRecord;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::filter::{FilterError, FlowFilter, parse_query_string};
use super::{ApiState, DEFAULT_PAGE, MAX_PAGE, QUERY_TIMEOUT};
use crate::store::{FlowCursor, FlowOrder, FlowQuery};

/// The body of a query answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowsPage {
    pub flows: Vec<FlowRecord>,
    /// Pass as `cursor` for the next page; null at the end (or in merged mode).
    pub next_cursor: Option<String>,
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

fn flag(
    params: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<bool, FilterError> {
    match params.get(name).map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(FilterError {
            param: name.into(),
            detail: format!("{other:?} is not true or false"),
        }),
    }
}

pub async fn handler(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let params = match parse_query_string(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return bad_request(e.to_string()),
    };
    let filter = match FlowFilter::from_params(&params) {
        Ok(f) => f,
        Err(e) => return bad_request(e.to_string()),
    };
    let (follow, merged) = match (flag(&params, "follow"), flag(&params, "merged")) {
        (Ok(f), Ok(m)) => (f, m),
        (Err(e), _) | (_, Err(e)) => return bad_request(e.to_string()),
    };
    let limit = match params.get("limit") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
            _ => {
                return bad_request(format!(
                    "query parameter `limit`: {v:?} is not a number from 1 to {MAX_PAGE}"
                ));
            }
        },
    };
    let cursor = match params.get("cursor") {
        None => None,
        Some(v) => match v.parse::<FlowCursor>() {
            Ok(c) => Some(c),
            Err(e) => return bad_request(format!("query parameter `cursor`: {e}")),
        },
    };
    if follow {
        if merged || cursor.is_some() || limit.is_some() {
            return bad_request(
                "query parameter `follow`: cannot be combined with `merged`, `cursor` or `limit`"
                    .into(),
            );
        }
        return follow_stream(state, filter);
    }
    let Some(store) = state.store.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent runs without --db: it keeps no flows to query (follow=true still streams new ones)\n",
        )
            .into_response();
    };
    let now = Utc::now();
    let base = filter.to_query(now);
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(QUERY_TIMEOUT, async move {
        if merged {
            let mut flows = store
                .query_flows_merged(&FlowQuery {
                    limit: Some(limit.unwrap_or(DEFAULT_PAGE)),
                    order: FlowOrder::NewestFirst,
                    ..base
                })
                .await?;
            flows.sort_by_key(|f| f.first_seen);
            Ok(FlowsPage {
                flows,
                next_cursor: None,
            })
        } else {
            let page = store
                .query_flow_page(&FlowQuery {
                    limit: Some(limit.unwrap_or(DEFAULT_PAGE)),
                    after: cursor,
                    order: FlowOrder::OldestFirst,
                    ..base
                })
                .await?;
            Ok::<_, crate::store::StoreError>(FlowsPage {
                flows: page.flows.into_iter().map(|s| s.record).collect(),
                next_cursor: page.next.map(|c| c.to_string()),
            })
        }
    })
    .await;
    state.metrics.observe_query(started.elapsed());
    match answer {
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the query took longer than {} s; narrow it (since, namespace, limit)\n",
                QUERY_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "HTTP API: flow query failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
        Ok(Ok(page)) => match serde_json::to_vec(&page) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
    }
}

/// One JSON line per matching flow the agent records from now on, until the
/// client goes away or the agent shuts down.
fn follow_stream(state: ApiState, filter: FlowFilter) -> Response {
    let rx = state.live.subscribe();
    let shutdown = state.shutdown.clone();
    let metrics = state.metrics.clone();
    struct Follow {
        rx: tokio::sync::broadcast::Receiver<Arc<Vec<FlowRecord>>>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    }
    let stream = futures::stream::unfold(
        (Follow { rx, shutdown }, filter, metrics),
        |(mut f, filter, metrics)| async move {
            loop {
                if *f.shutdown.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    r = f.rx.recv() => r,
                    _ = f.shutdown.changed() => return None,
                };
                match next {
                    Ok(batch) => {
                        let now = Utc::now();
                        let mut lines = Vec::new();
                        for flow in batch.iter().filter(|r| filter.matches(r, now)) {
                            if serde_json::to_writer(&mut lines, flow).is_ok() {
                                lines.push(b'\n');
                            }
                        }
                        if lines.is_empty() {
                            continue;
                        }
                        return Some((
                            Ok::<_, Infallible>(Bytes::from(lines)),
                            (f, filter, metrics),
                        ));
                    }
                    Err(RecvError::Lagged(n)) => {
                        // A reader slower than the agent records loses the oldest batches.
                        metrics.follow_lagged(n);
                        tracing::warn!(skipped = n, "HTTP API: a follow client lagged behind");
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}
