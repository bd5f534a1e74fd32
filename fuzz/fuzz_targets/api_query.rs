//! `/api/v1/flows` query strings: parsing must answer with an error (a 400),
//! never panic, and a parsed filter written back as parameters (what the
//! `--cluster` client sends to each agent) must parse to the same query.
#![no_main]

use chrono::{TimeZone, Utc};
use flowpol::serve::filter::{FlowFilter, encode, parse_query_string};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(params) = parse_query_string(text) else {
        return;
    };
    let Ok(filter) = FlowFilter::from_params(&params) else {
        return;
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
    let sent: Vec<String> = filter
        .to_params(now)
        .into_iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(&v)))
        .collect();
    let again = parse_query_string(&sent.join("&")).expect("our own query string parses");
    let again = FlowFilter::from_params(&again).expect("our own parameters are valid");
    // FlowQuery has no PartialEq; its Debug form shows every field.
    assert_eq!(
        format!("{:?}", again.to_query(now)),
        format!("{:?}", filter.to_query(now))
    );
});
