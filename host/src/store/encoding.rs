//! How records are encoded: JSON, packed with LZ4 where that is smaller
//! (events, and records written in the packed form), and read back in
//! whichever form they were written.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Delivery, StoreError, codec};

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// The first byte of a packed record: LZ4 (block format) of the record's
/// JSON, after the JSON's length (u32, little-endian). JSON starts with
/// `{`, so a reader tells the two apart, and records written before
/// packing read as they were.
pub(super) const PACKED: u8 = 0x01;

/// The largest JSON a packed record may claim (a corrupt length must not
/// allocate gigabytes).
pub(super) const MAX_PACKED_JSON: usize = 256 << 20;

/// Events and deliveries, the records every acceptance and attempt writes:
/// their JSON packed with LZ4 when that is smaller. sled copies a leaf's
/// values whole on every split and consolidation, so smaller values are
/// less copying and less disk; LZ4 costs about a microsecond per record.
pub(super) fn encode_packed<T: Serialize>(value: &T) -> Vec<u8> {
    pack(encode(value))
}

/// `raw` packed (see [`PACKED`]) when that is smaller, else as it is: for
/// bytes that never start with [`PACKED`] themselves.
pub(super) fn pack(raw: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0; 5 + lz4_flex::block::get_maximum_output_size(raw.len())];
    out[0] = PACKED;
    out[1..5].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into(&raw, &mut out[5..]) {
        Ok(n) if 5 + n < raw.len() => {
            out.truncate(5 + n);
            out
        }
        _ => raw,
    }
}

/// A delivery from its record, in whichever form it was written.
pub(super) fn decode_delivery(key: &[u8], bytes: &[u8]) -> Result<Delivery, StoreError> {
    match bytes.first() {
        Some(&codec::DELIVERY_V1 | &codec::DELIVERY_V2) => codec::decode_delivery_v1(key, bytes),
        _ => decode(key, bytes),
    }
}

/// The tenant of a stored delivery, without decoding the rest of it.
pub(super) fn delivery_tenant(key: &[u8], bytes: &[u8]) -> Result<String, StoreError> {
    match bytes.first() {
        Some(&codec::DELIVERY_V1 | &codec::DELIVERY_V2) => codec::delivery_tenant_v1(key, bytes),
        _ => decode_delivery(key, bytes).map(|d| d.tenant_id),
    }
}

pub(super) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    };
    let unpacked;
    let json = match bytes.first() {
        Some(&PACKED) => {
            unpacked = unpack(bytes).map_err(corrupt)?;
            &unpacked[..]
        }
        Some(&codec::DELIVERY_V1 | &codec::DELIVERY_V2) => {
            return Err(corrupt(
                "a binary delivery record read as another kind of record".into(),
            ));
        }
        _ => bytes,
    };
    serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
}

/// The JSON of a packed record.
pub(super) fn unpack(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (len, packed) = match bytes.get(1..5) {
        Some(len) => (
            u32::from_le_bytes(len.try_into().unwrap()) as usize,
            &bytes[5..],
        ),
        None => return Err("a packed record shorter than its header".into()),
    };
    if len > MAX_PACKED_JSON {
        return Err(format!("a packed record claims {len} bytes"));
    }
    let json = lz4_flex::block::decompress(packed, len).map_err(|e| e.to_string())?;
    match json.len() == len {
        true => Ok(json),
        false => Err(format!(
            "a packed record of {} bytes, not {len}",
            json.len()
        )),
    }
}

#[cfg(test)]
mod packing_tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn packed_records_read_back_and_json_ones_still_read() {
        let value = serde_json::json!({"text": "hello ".repeat(100), "n": 1});
        let packed = encode_packed(&value);
        assert_eq!(packed[0], PACKED);
        assert!(packed.len() < 100, "{} bytes", packed.len());
        assert_eq!(decode::<Value>(b"k", &packed).unwrap(), value);
        // A record written before packing, and one LZ4 would not shrink.
        assert_eq!(decode::<Value>(b"k", &encode(&value)).unwrap(), value);
        let small = serde_json::json!({"a": 1});
        assert_eq!(encode_packed(&small), encode(&small));
    }

    #[test]
    fn a_damaged_packed_record_is_corrupt_not_a_panic() {
        let packed = encode_packed(&serde_json::json!({"text": "hello ".repeat(100)}));
        let mut huge = packed.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut flipped = packed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        for bad in [
            &packed[..3],
            &packed[..packed.len() - 4],
            &huge[..],
            &flipped[..],
        ] {
            match decode::<Value>(b"key", bad) {
                Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "key"),
                other => panic!("{other:?}"),
            }
        }
    }
}
