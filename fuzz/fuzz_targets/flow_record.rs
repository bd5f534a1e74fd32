//! Flow records as other programs hand them to flowpol: JSON lines (the
//! `flows -o json` and HTTP API contract, read back by `--cluster`) and the
//! stored columns (addresses, labels, endpoint kinds). Decoding must fail
//! cleanly, and whatever decodes must encode back to the same record.
#![no_main]

use flowpol::store::codec;
use flowpol_recommender::flow::FlowRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = serde_json::from_slice::<FlowRecord>(data) {
        let text = serde_json::to_string(&record).expect("a decoded record encodes");
        let again: FlowRecord = serde_json::from_str(&text).expect("an encoded record decodes");
        assert_eq!(record, again);
    }
    if let Some(ip) = codec::ip_from_db(data) {
        assert_eq!(codec::ip_from_db(&codec::ip_to_db(&ip)), Some(ip));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(labels) = codec::labels_from_db(Some(text)) {
            let stored = codec::labels_to_db(&labels);
            assert_eq!(codec::labels_from_db(stored.as_deref()).ok(), Some(labels));
        }
        let _ = codec::kind_from_db(text);
    }
});
