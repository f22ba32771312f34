//! Feeds arbitrary bytes to every decoder of the wire protocol: `ClientFrame::decode`,
//! `ServerFrame::decode`, `Envelope::decode` and `Cursor` parsing. None may panic, and
//! whatever decodes must encode and decode again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewire_protocol::{ClientFrame, Cursor, Envelope, RawAppEvent, ServerFrame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = ClientFrame::decode(text) {
        let again = ClientFrame::decode(&frame.encode()).expect("an encoded frame decodes");
        assert_eq!(again, frame);
    }
    if let Ok(frame) = ServerFrame::<RawAppEvent>::decode(text) {
        let again =
            ServerFrame::<RawAppEvent>::decode(&frame.encode()).expect("an encoded frame decodes");
        assert_eq!(again, frame);
    }
    if let Ok(env) = Envelope::<RawAppEvent>::decode(text) {
        let again =
            Envelope::<RawAppEvent>::decode(&env.encode()).expect("an encoded envelope decodes");
        assert_eq!(again, env);
    }
    if let Ok(cursor) = text.parse::<Cursor>() {
        // Parsing keeps the order of the pairs, so printing gives back the input.
        assert_eq!(cursor.to_string(), text);
    }
});
