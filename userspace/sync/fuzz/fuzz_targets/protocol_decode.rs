//! Every message of the gateway–hub protocol decoded from the same bytes: never a panic, and
//! whatever decodes encodes to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tollgate_sync::bundle::{Bundle, SignedBundle};
use tollgate_sync::protocol::{
    self, BundleReport, EnrollRequest, EnrollResponse, Health, PollRequest, PollResponse,
    UploadAck, UploadBatch, UploadRecord,
};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    if let Ok(message) = protocol::decode::<T>(data) {
        let again = protocol::encode(&message);
        let back = protocol::decode::<T>(&again).expect("an encoded message decodes");
        assert_eq!(back, message);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<EnrollRequest>(data);
    round_trip::<EnrollResponse>(data);
    round_trip::<PollRequest>(data);
    round_trip::<PollResponse>(data);
    round_trip::<Health>(data);
    round_trip::<BundleReport>(data);
    round_trip::<UploadBatch>(data);
    round_trip::<UploadRecord>(data);
    round_trip::<UploadAck>(data);
    round_trip::<SignedBundle>(data);
    round_trip::<Bundle>(data);
});
