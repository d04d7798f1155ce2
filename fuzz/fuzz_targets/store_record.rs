//! The embedded store's record decoder, fed what a damaged or hostile
//! file could hold: MessagePack records (versions 2 to 4) and JSON ones
//! (version 1). It never panics, and whatever it accepts is a record the
//! store can index and write again, that reads back as the same record,
//! and that the wire can show.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use vow_server::fuzzing::{Columns, decode_record, encode_record, task_to_proto};

fuzz_target!(|data: &[u8]| {
    let Ok(task) = decode_record(data) else {
        return;
    };
    // Compared as encodings: a NaN progress is not equal to itself.
    let encoded = encode_record(&task).expect("a decoded record encodes");
    let decoded = decode_record(&encoded).expect("an encoded record decodes");
    assert_eq!(
        encode_record(&decoded).expect("encodes again"),
        encoded,
        "a record changed through the store"
    );
    // Version 1's JSON form reads back as the same record too, but for
    // floats JSON cannot hold.
    let finite = task.progress.as_ref().is_none_or(|p| p.percent.is_finite())
        && task.retry.backoff_multiplier.is_finite()
        && task.retry.jitter.is_finite();
    if finite && let Ok(json) = serde_json::to_vec(&task) {
        // serde_json stops at 128 levels of nesting, MessagePack does not:
        // version 1 could not hold such a record in the first place.
        match decode_record(&json) {
            Ok(from_json) => assert_eq!(encode_record(&from_json).expect("encodes"), encoded),
            Err(error) if error.to_string().contains("recursion limit") => {}
            Err(error) => panic!("a JSON record does not decode: {error}"),
        }
    }
    let columns = Columns::of(&task).expect("a decoded record has columns");
    assert_eq!(columns.record, encoded);
    let _ = task_to_proto(&task).encode_to_vec();
});
