//! The Store API on real SQLite files: round trips, merging, filters,
//! paging and retention.
#[path = "store_support/mod.rs"]
mod support;

use chrono::Duration;
use flowpol::store::{CaptureLoss, FlowCursor, FlowOrder, FlowQuery, Retention, Store};
use flowpol_recommender::flow::{EndpointKind, Protocol, TcpFlags, Verdict, WorkloadRef};
use support::{bare, full_record, pod, t};

fn db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    (dir, path)
}

#[tokio::test]
async fn every_field_round_trips() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    let mut v4 = full_record();
    v4.protocol = Protocol::Other(47);
    let mut icmp = bare("10.0.0.1", 8, "10.0.0.2", 0, t("2026-11-21T10:00:01Z"));
    icmp.protocol = Protocol::Icmpv6;
    icmp.src.kind = Some(EndpointKind::Node);
    icmp.dst.kind = Some(EndpointKind::External);
    icmp.packets = u64::from(u32::MAX) * 4;
    let written = vec![full_record(), v4, icmp];
    store.write_flows(&written).await.unwrap();
    store.close().await;

    let store = Store::open_read_only(&path).await.unwrap();
    let read = store.query_flows(&FlowQuery::default()).await.unwrap();
    assert_eq!(read, written);
}

#[tokio::test]
async fn a_database_is_created_reopened_and_keeps_its_rows() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    store.write_flows(&[full_record()]).await.unwrap();
    store.close().await;
    let store = Store::open(&path).await.unwrap();
    store.write_flows(&[full_record()]).await.unwrap();
    assert_eq!(store.count_rows().await.unwrap(), 2);
    assert!(store.schema_version() >= 1);
}

#[tokio::test]
async fn merged_flows_sum_counters_across_intervals() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    let base = t("2026-11-21T10:00:00Z");
    for i in 0..3 {
        let mut f = full_record();
        f.verdict = Verdict::Forwarded;
        f.drop_reason = None;
        f.packets = 10 + i;
        f.bytes = 1000 * (i + 1);
        f.reply_packets = i;
        f.reply_bytes = 7;
        f.first_seen = base + Duration::seconds(5 * i as i64);
        f.last_seen = f.first_seen + Duration::seconds(4);
        f.tcp_flags = TcpFlags([TcpFlags::SYN, TcpFlags::SYN_ACK, TcpFlags::FIN][i as usize]);
        f.connections = 100 * i;
        store.write_flows(&[f]).await.unwrap();
    }
    // Another flow (other source port) stays separate.
    let mut other = full_record();
    other.src.port = 50000;
    store.write_flows(&[other.clone()]).await.unwrap();

    let merged = store
        .query_flows_merged(&FlowQuery::default())
        .await
        .unwrap();
    assert_eq!(merged.len(), 2, "{merged:#?}");
    let m = merged
        .iter()
        .find(|f| f.src.port == 43122 && f.verdict == Verdict::Forwarded)
        .unwrap();
    assert_eq!(m.packets, 10 + 11 + 12);
    assert_eq!(m.bytes, 6000);
    assert_eq!(m.reply_packets, 3);
    assert_eq!(m.reply_bytes, 21);
    assert_eq!(m.connections, 100 + 200);
    assert_eq!(m.first_seen, base);
    assert_eq!(m.last_seen, base + Duration::seconds(14));
    assert_eq!(
        m.tcp_flags,
        TcpFlags(TcpFlags::SYN | TcpFlags::SYN_ACK | TcpFlags::FIN)
    );
    assert_eq!(m.src, full_record().src);
    assert_eq!(m.dst, full_record().dst);
    let o = merged.iter().find(|f| f.src.port == 50000).unwrap();
    assert_eq!(o, &other);
    // The raw rows are still one per interval.
    assert_eq!(
        store
            .query_flows(&FlowQuery::default())
            .await
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn filters_select_by_time_verdict_namespace_workload_and_protocol() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    let early = t("2026-11-21T09:00:00Z");
    let late = t("2026-11-21T11:00:00Z");

    let mut a = bare("10.0.0.1", 1000, "10.0.0.2", 53, early);
    a.src = pod("10.0.0.1", 1000, "web", "frontend");
    let mut b = bare("10.0.0.3", 1001, "10.0.0.4", 80, late);
    b.dst = pod("10.0.0.4", 80, "shop", "api");
    b.protocol = Protocol::Tcp;
    b.verdict = Verdict::Dropped;
    b.drop_reason = Some("NETFILTER_DROP".into());
    let mut c = bare("10.0.0.5", 1002, "10.0.0.6", 443, late);
    c.protocol = Protocol::Tcp;
    c.verdict = Verdict::Unanswered;
    let mut d = bare("10.0.0.7", 1003, "10.0.0.8", 80, late);
    d.src = pod("10.0.0.7", 1003, "shop", "frontend");
    store
        .write_flows(&[a.clone(), b.clone(), c.clone(), d.clone()])
        .await
        .unwrap();

    let q = |f: FlowQuery| {
        let store = store.clone();
        async move { store.query_flows(&f).await.unwrap() }
    };
    assert_eq!(
        q(FlowQuery {
            since: Some(t("2026-11-21T10:00:00Z")),
            ..Default::default()
        })
        .await,
        vec![b.clone(), c.clone(), d.clone()]
    );
    assert_eq!(
        q(FlowQuery {
            until: Some(t("2026-11-21T10:00:00Z")),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        q(FlowQuery {
            verdict: Some(Verdict::Dropped),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    assert_eq!(
        q(FlowQuery {
            verdict: Some(Verdict::Unanswered),
            ..Default::default()
        })
        .await,
        vec![c.clone()]
    );
    assert_eq!(
        q(FlowQuery {
            namespace: Some("shop".into()),
            ..Default::default()
        })
        .await,
        vec![b.clone(), d.clone()]
    );
    let frontend = WorkloadRef {
        kind: "Deployment".into(),
        name: "frontend".into(),
    };
    assert_eq!(
        q(FlowQuery {
            workload: Some(frontend.clone()),
            ..Default::default()
        })
        .await,
        vec![a.clone(), d.clone()]
    );
    assert_eq!(
        q(FlowQuery {
            workload: Some(frontend),
            namespace: Some("web".into()),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        q(FlowQuery {
            protocol: Some(Protocol::Udp),
            ..Default::default()
        })
        .await,
        vec![a.clone(), d.clone()]
    );
    assert_eq!(
        q(FlowQuery {
            namespace: Some("nowhere".into()),
            ..Default::default()
        })
        .await,
        vec![]
    );
}

#[tokio::test]
async fn pages_follow_a_stable_cursor_forward_and_backward() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    let base = t("2026-11-21T10:00:00Z");
    let all: Vec<_> = (0..25)
        .map(|i| {
            bare(
                "10.0.0.1",
                1000 + i,
                "10.0.0.2",
                80,
                base + Duration::seconds(i.into()),
            )
        })
        .collect();
    store.write_flows(&all[..10]).await.unwrap();
    store.write_flows(&all[10..]).await.unwrap();

    let mut seen = Vec::new();
    let mut q = FlowQuery {
        limit: Some(10),
        ..Default::default()
    };
    loop {
        let page = store.query_flow_page(&q).await.unwrap();
        seen.extend(page.flows.iter().map(|s| s.record.clone()));
        match page.next {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, all);

    // Following: a cursor taken now sees exactly what is written later.
    let last = store
        .query_flow_page(&FlowQuery {
            order: FlowOrder::NewestFirst,
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let cursor = FlowCursor(last.flows[0].id);
    let later = bare("10.9.9.9", 9, "10.0.0.2", 80, base);
    store
        .write_flows(std::slice::from_ref(&later))
        .await
        .unwrap();
    let news = store
        .query_flows(&FlowQuery {
            after: Some(cursor),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(news, vec![later]);

    let newest = store
        .query_flows(&FlowQuery {
            order: FlowOrder::NewestFirst,
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest[0].src.ip.to_string(), "10.9.9.9");
    assert_eq!(newest[1], all[24]);
}

#[tokio::test]
async fn retention_by_age_removes_exactly_the_old_rows() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    let now = t("2026-11-21T12:00:00Z");
    let old: Vec<_> = (0..12_000)
        .map(|i| {
            bare(
                "10.0.0.1",
                (i % 60_000) as u16,
                "10.0.0.2",
                80,
                now - Duration::hours(3),
            )
        })
        .collect();
    let recent: Vec<_> = (0..7)
        .map(|i| bare("10.0.0.3", i, "10.0.0.4", 80, now - Duration::minutes(30)))
        .collect();
    store.write_flows(&old).await.unwrap();
    store.write_flows(&recent).await.unwrap();
    // One interval holding both old and recent rows loses only the old ones.
    let mixed_recent = bare("10.0.0.5", 5, "10.0.0.6", 80, now - Duration::minutes(5));
    let mixed_old = bare("10.0.0.5", 6, "10.0.0.6", 80, now - Duration::hours(2));
    store
        .write_flows(&[mixed_old, mixed_recent.clone()])
        .await
        .unwrap();
    let mut recent = recent;
    recent.push(mixed_recent);
    store
        .write_drain(
            &[],
            &[CaptureLoss {
                counter: "flow_map_full".into(),
                delta: 3,
            }],
            now - Duration::hours(3),
            None,
        )
        .await
        .unwrap();

    let report = store
        .prune(
            &Retention {
                max_age: Some(std::time::Duration::from_secs(3600)),
                max_size_bytes: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(report.rows_deleted_by_age, 12_001);
    assert_eq!(report.rows_deleted_by_size, 0);
    assert_eq!(
        store.query_flows(&FlowQuery::default()).await.unwrap(),
        recent
    );
    assert!(store.capture_losses(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn retention_by_size_removes_the_oldest_rows_until_under_the_limit() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    let now = t("2026-11-21T12:00:00Z");
    for batch in 0..10 {
        let rows: Vec<_> = (0..5_000)
            .map(|i| {
                let mut f = full_record();
                f.src.port = i as u16;
                f.first_seen = now - Duration::minutes(100 - batch);
                f.last_seen = f.first_seen;
                f
            })
            .collect();
        store.write_flows(&rows).await.unwrap();
    }
    let before = store.used_bytes().await.unwrap();
    let limit = before / 2;
    let report = store
        .prune(
            &Retention {
                max_age: None,
                max_size_bytes: Some(limit),
            },
            now,
        )
        .await
        .unwrap();
    assert!(report.rows_deleted_by_size > 0);
    assert!(report.used_bytes <= limit, "{report:?} limit {limit}");
    let left = store.query_flows(&FlowQuery::default()).await.unwrap();
    assert_eq!(left.len() as u64, 50_000 - report.rows_deleted_by_size);
    // What is left is the newest rows.
    let newest = now - Duration::minutes(91);
    assert_eq!(left.last().unwrap().first_seen, newest);
    assert!(left.iter().all(|f| f.first_seen >= left[0].first_seen));
    // The file itself shrank: freed pages went back to the file system.
    store.close().await;
}

#[tokio::test]
async fn capture_losses_are_summed_per_counter() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    let at = t("2026-11-21T12:00:00Z");
    for d in [2, 3] {
        store
            .write_drain(
                &[full_record()],
                &[
                    CaptureLoss {
                        counter: "flow_map_full".into(),
                        delta: d,
                    },
                    CaptureLoss {
                        counter: "unparsable".into(),
                        delta: 0,
                    },
                ],
                at,
                Some("node-a"),
            )
            .await
            .unwrap();
    }
    let totals = store.capture_losses(Some(at)).await.unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0].counter, "flow_map_full");
    assert_eq!(totals[0].total, 5);
    assert!(
        store
            .capture_losses(Some(at + Duration::seconds(1)))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Ids of every stored row, oldest first.
async fn stored_ids(store: &Store) -> Vec<i64> {
    store
        .query_flow_page(&FlowQuery::default())
        .await
        .unwrap()
        .flows
        .iter()
        .map(|f| f.id)
        .collect()
}

#[tokio::test]
async fn flow_ids_are_never_reused_even_after_the_table_was_emptied() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    store
        .write_flows(&[full_record(), full_record()])
        .await
        .unwrap();
    assert_eq!(stored_ids(&store).await, vec![1, 2]);
    // What retention does when every row is old.
    sqlx::query("DELETE FROM flows")
        .execute(store.pool())
        .await
        .unwrap();
    store.write_flows(&[full_record()]).await.unwrap();
    store.close().await;
    let store = Store::open(&path).await.unwrap();
    store.write_flows(&[full_record()]).await.unwrap();
    assert_eq!(stored_ids(&store).await, vec![3, 4]);
}

#[tokio::test]
async fn a_failed_write_hands_out_its_ids_again() {
    let (_dir, path) = db();
    let store = Store::open(&path).await.unwrap();
    store.write_flows(&[full_record()]).await.unwrap();
    // A trigger refusing the second row makes the whole transaction fail;
    // nothing of it stays, not even the ids it had handed out.
    sqlx::query(
        "CREATE TRIGGER refuse_port_9 BEFORE INSERT ON flows WHEN NEW.src_port = 9 \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let mut refused = full_record();
    refused.src.port = 9;
    assert!(store.write_flows(&[full_record(), refused]).await.is_err());
    store.write_flows(&[full_record()]).await.unwrap();
    assert_eq!(stored_ids(&store).await, vec![1, 2]);
}

#[tokio::test]
async fn a_database_of_schema_3_is_migrated_keeping_its_rows_and_ids() {
    use sqlx::Connection;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    let (_dir, path) = db();
    {
        // The layout before migration 4: flows with AUTOINCREMENT.
        let mut conn = SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::query(&format!(
            "PRAGMA application_id = {}",
            flowpol::store::APPLICATION_ID
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        let schema_3 = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(
                flowpol::store::MIGRATOR
                    .iter()
                    .filter(|m| m.version <= 3)
                    .cloned()
                    .collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        schema_3.run(&mut conn).await.unwrap();
        for (port, verdict) in [(1, "forwarded"), (2, "dropped"), (3, "unanswered")] {
            sqlx::query(
                "INSERT INTO flows (first_seen_ns, last_seen_ns, protocol, src_ip, src_port, \
                 dst_ip, dst_port, packets, bytes, reply_packets, reply_bytes, verdict, \
                 tcp_flags) VALUES (1, 2, 6, x'0a000001', ?, x'0a000002', 80, 3, 4, 5, 6, ?, 1)",
            )
            .bind(port)
            .bind(verdict)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        // AUTOINCREMENT remembers id 3 after its row is gone.
        sqlx::query("DELETE FROM flows WHERE id = 3")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = Store::open(&path).await.unwrap();
    assert!(store.schema_version() >= 4);
    let before = store.query_flow_page(&FlowQuery::default()).await.unwrap();
    let ports: Vec<(i64, u16, Verdict)> = before
        .flows
        .iter()
        .map(|f| (f.id, f.record.src.port, f.record.verdict))
        .collect();
    assert_eq!(
        ports,
        vec![(1, 1, Verdict::Forwarded), (2, 2, Verdict::Dropped)]
    );
    assert_eq!(before.flows[0].record.packets, 3);
    assert_eq!(before.flows[0].record.reply_bytes, 6);
    store.write_flows(&[full_record()]).await.unwrap();
    assert_eq!(stored_ids(&store).await, vec![1, 2, 4]);
    // The schema's CHECK still refuses a verdict it does not know.
    let bad = sqlx::query(
        "INSERT INTO flows (first_seen_ns, last_seen_ns, protocol, src_ip, src_port, dst_ip, \
         dst_port, packets, bytes, reply_packets, reply_bytes, verdict, tcp_flags) \
         VALUES (1, 2, 6, x'0a000001', 1, x'0a000002', 80, 1, 1, 1, 1, 'maybe', 0)",
    )
    .execute(store.pool())
    .await;
    assert!(bad.is_err(), "{bad:?}");
}
