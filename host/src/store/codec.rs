//! The binary form of a delivery record.
//!
//! A delivery is the record every acceptance writes and every attempt reads
//! and writes again. As JSON, even LZ4-packed, one was about 440 bytes:
//! field names, four times as RFC 3339 text, ids that LZ4 cannot shrink.
//! sled copies a leaf's values whole on every split and consolidation and
//! keeps the old copies in its log until a segment is cleaned, so those
//! bytes were paid several times over, on disk and in CPU. In postcard
//! (fields in a fixed order, lengths and integers as varints, times as
//! nanoseconds) the same record is about 190 bytes, and encoding or
//! decoding it is a copy of its strings.
//!
//! The first byte, [`DELIVERY_V1`], tells this form from the JSON records
//! written before it (which start with `{`) and packed ones (`PACKED`):
//! both still read. A change to the layout takes a new tag; the old one
//! keeps reading.

use std::borrow::Cow;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Delivery, DeliveryStatus, OrderSlot, StoreError, StoredRequest};
use crate::runtime::Header;
use crate::store::models::Attempt;

/// The first byte of a delivery in this form.
pub(super) const DELIVERY_V1: u8 = 0x02;
/// The first byte of an ordered delivery: the V1 layout, then its
/// [`OrderSlot`]. Unordered deliveries stay V1 (not a byte more).
pub(super) const DELIVERY_V2: u8 = 0x03;

#[derive(Serialize, Deserialize)]
struct OrderV1<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    seq: u64,
    block: bool,
}

#[derive(Serialize, Deserialize)]
struct DeliveryV1<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    tenant_id: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    subscription_id: Cow<'a, str>,
    status: u8,
    request: Option<RequestV1<'a>>,
    attempts: Vec<AttemptV1<'a>>,
    next_attempt_at: Option<i128>,
    last_error: Option<Cow<'a, str>>,
    created_at: i128,
    updated_at: i128,
}

#[derive(Serialize, Deserialize)]
struct RequestV1<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
    #[serde(borrow)]
    content_type: Cow<'a, str>,
    headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    event_name: Option<Cow<'a, str>>,
    body_from_event: bool,
}

#[derive(Serialize, Deserialize)]
struct AttemptV1<'a> {
    at: i128,
    status: Option<u16>,
    duration_ms: u64,
    response_body: Option<Cow<'a, str>>,
    error: Option<Cow<'a, str>>,
}

/// Stable numbers, not the enum's order: the layout must not move when
/// the enum does.
fn status_code(s: DeliveryStatus) -> u8 {
    match s {
        DeliveryStatus::Pending => 0,
        DeliveryStatus::Succeeded => 1,
        DeliveryStatus::Failed => 2,
        DeliveryStatus::Filtered => 3,
        DeliveryStatus::Held => 4,
        DeliveryStatus::Blocked => 5,
    }
}

fn status_of(code: u8) -> Option<DeliveryStatus> {
    Some(match code {
        0 => DeliveryStatus::Pending,
        1 => DeliveryStatus::Succeeded,
        2 => DeliveryStatus::Failed,
        3 => DeliveryStatus::Filtered,
        4 => DeliveryStatus::Held,
        5 => DeliveryStatus::Blocked,
        _ => return None,
    })
}

fn nanos(t: Timestamp) -> i128 {
    t.as_nanosecond()
}

fn borrowed(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

/// A delivery's record: [`DELIVERY_V1`], then the postcard.
pub(super) fn encode_delivery(d: &Delivery) -> Vec<u8> {
    let record = DeliveryV1 {
        id: Cow::Borrowed(&d.id),
        tenant_id: Cow::Borrowed(&d.tenant_id),
        event_id: Cow::Borrowed(&d.event_id),
        event_type: Cow::Borrowed(&d.event_type),
        subscription_id: Cow::Borrowed(&d.subscription_id),
        status: status_code(d.status),
        request: d.request.as_ref().map(|r| RequestV1 {
            body: Cow::Borrowed(&r.body),
            content_type: Cow::Borrowed(&r.content_type),
            headers: r
                .headers
                .iter()
                .map(|h| (Cow::Borrowed(&*h.name), Cow::Borrowed(&*h.value)))
                .collect(),
            event_name: borrowed(&r.event_name),
            body_from_event: r.body_from_event,
        }),
        attempts: d
            .attempts
            .iter()
            .map(|a| AttemptV1 {
                at: nanos(a.at),
                status: a.status,
                duration_ms: a.duration_ms,
                response_body: borrowed(&a.response_body),
                error: borrowed(&a.error),
            })
            .collect(),
        next_attempt_at: d.next_attempt_at.map(nanos),
        last_error: borrowed(&d.last_error),
        created_at: nanos(d.created_at),
        updated_at: nanos(d.updated_at),
    };
    let mut out = Vec::with_capacity(256);
    match &d.order {
        None => {
            out.push(DELIVERY_V1);
            postcard::to_extend(&record, out).expect("a delivery serializes")
        }
        Some(o) => {
            out.push(DELIVERY_V2);
            let out = postcard::to_extend(&record, out).expect("a delivery serializes");
            let order = OrderV1 {
                key: Cow::Borrowed(&o.key),
                seq: o.seq,
                block: o.block,
            };
            postcard::to_extend(&order, out).expect("an order slot serializes")
        }
    }
}

/// A delivery from its record in this form (`bytes` starts with
/// [`DELIVERY_V1`]).
/// The tenant of a binary delivery record: its second field, read
/// without decoding the others (postcard writes fields in order).
pub(super) fn delivery_tenant_v1(key: &[u8], bytes: &[u8]) -> Result<String, StoreError> {
    let (id_and_tenant, _): ((&str, &str), _) =
        postcard::take_from_bytes(&bytes[1..]).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            message: format!("binary delivery record: {e}"),
        })?;
    Ok(id_and_tenant.1.to_string())
}

pub(super) fn decode_delivery_v1(key: &[u8], bytes: &[u8]) -> Result<Delivery, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    };
    let (record, mut rest): (DeliveryV1, _) = postcard::take_from_bytes(&bytes[1..])
        .map_err(|e| corrupt(format!("binary delivery record: {e}")))?;
    let mut order = None;
    if bytes[0] == DELIVERY_V2 {
        let (o, after): (OrderV1, _) = postcard::take_from_bytes(rest)
            .map_err(|e| corrupt(format!("binary delivery record's order: {e}")))?;
        order = Some(OrderSlot {
            key: o.key.into_owned(),
            seq: o.seq,
            block: o.block,
        });
        rest = after;
    }
    if !rest.is_empty() {
        return Err(corrupt(format!(
            "binary delivery record: {} bytes after its end",
            rest.len()
        )));
    }
    let time = |n: i128| {
        Timestamp::from_nanosecond(n).map_err(|e| corrupt(format!("a time out of range: {e}")))
    };
    let owned = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
    Ok(Delivery {
        id: record.id.into_owned(),
        tenant_id: record.tenant_id.into_owned(),
        event_id: record.event_id.into_owned(),
        event_type: record.event_type.into_owned(),
        subscription_id: record.subscription_id.into_owned(),
        status: status_of(record.status)
            .ok_or_else(|| corrupt(format!("unknown status {}", record.status)))?,
        request: record.request.map(|r| StoredRequest {
            body: r.body.into_owned(),
            content_type: r.content_type.into_owned(),
            headers: r
                .headers
                .into_iter()
                .map(|(name, value)| Header {
                    name: name.into_owned(),
                    value: value.into_owned(),
                })
                .collect(),
            event_name: owned(r.event_name),
            body_from_event: r.body_from_event,
        }),
        attempts: record
            .attempts
            .into_iter()
            .map(|a| {
                Ok(Attempt {
                    at: time(a.at)?,
                    status: a.status,
                    duration_ms: a.duration_ms,
                    response_body: owned(a.response_body),
                    error: owned(a.error),
                })
            })
            .collect::<Result<_, StoreError>>()?,
        next_attempt_at: record.next_attempt_at.map(time).transpose()?,
        last_error: owned(record.last_error),
        created_at: time(record.created_at)?,
        updated_at: time(record.updated_at)?,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{decode_delivery, delivery_tenant, encode_packed};

    fn delivery() -> Delivery {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        Delivery {
            id: "dlv_01m862y602hp6xdbn3bbfa2cqa".into(),
            tenant_id: "ten_5x65pn7t1paf8zsg9j0".into(),
            event_id: "évt-1 \u{1F600}".into(),
            event_type: "message.created".into(),
            subscription_id: "sub_znztkqwh1dxf8x1wnt3".into(),
            status: DeliveryStatus::Pending,
            request: Some(StoredRequest {
                body: "{\"a\":\"\\u0000\"}".into(),
                content_type: "application/json".into(),
                headers: vec![Header {
                    name: "x-crm".into(),
                    value: "lead".into(),
                }],
                event_name: Some("chat.closed".into()),
                body_from_event: false,
            }),
            attempts: vec![
                Attempt {
                    at: at("2026-11-24T06:12:22.685016242Z"),
                    status: Some(503),
                    duration_ms: 12,
                    response_body: Some("busy".into()),
                    error: Some("HTTP 503".into()),
                },
                Attempt {
                    at: at("1970-01-01T00:00:00Z"),
                    status: None,
                    duration_ms: 0,
                    response_body: None,
                    error: None,
                },
            ],
            next_attempt_at: Some(at("2999-12-31T23:59:59.999999999Z")),
            last_error: Some("HTTP 503".into()),
            created_at: at("2026-11-24T06:12:22Z"),
            updated_at: at("2026-11-24T06:12:23.000000001Z"),
            order: None,
        }
    }

    #[test]
    fn an_ordered_delivery_keeps_its_slot_and_an_unordered_one_stays_v1() {
        let ordered = Delivery {
            status: DeliveryStatus::Blocked,
            order: Some(OrderSlot {
                key: "conv-7 \u{1F600}".into(),
                seq: 1 << 40,
                block: true,
            }),
            ..delivery()
        };
        let bytes = encode_delivery(&ordered);
        assert_eq!(bytes[0], DELIVERY_V2);
        assert_eq!(decode_delivery(b"k", &bytes).unwrap(), ordered);
        assert!(decode_delivery(b"k", &bytes[..bytes.len() - 1]).is_err());
        assert_eq!(encode_delivery(&delivery())[0], DELIVERY_V1);
    }

    #[test]
    fn a_delivery_reads_back_whole_and_smaller_than_packed_json() {
        let d = delivery();
        let bytes = encode_delivery(&d);
        assert_eq!(bytes[0], DELIVERY_V1);
        assert_eq!(decode_delivery(b"k", &bytes).unwrap(), d);
        assert!(
            bytes.len() * 2 < encode_packed(&d).len(),
            "{} bytes",
            bytes.len()
        );
        // Every status, and none of the optional parts.
        for status in [
            DeliveryStatus::Pending,
            DeliveryStatus::Succeeded,
            DeliveryStatus::Failed,
            DeliveryStatus::Filtered,
            DeliveryStatus::Held,
            DeliveryStatus::Blocked,
        ] {
            let bare = Delivery {
                status,
                request: None,
                attempts: Vec::new(),
                next_attempt_at: None,
                last_error: None,
                ..delivery()
            };
            assert_eq!(
                decode_delivery(b"k", &encode_delivery(&bare)).unwrap(),
                bare
            );
        }
    }

    #[test]
    fn a_deliverys_tenant_reads_alone_in_every_form() {
        let d = Delivery {
            tenant_id: "t \u{e9}\u{1F600}".into(),
            ..delivery()
        };
        let ordered = Delivery {
            order: Some(OrderSlot {
                key: "k".into(),
                seq: 1,
                block: false,
            }),
            ..d.clone()
        };
        for bytes in [
            encode_delivery(&d),
            encode_delivery(&ordered),
            encode_packed(&d),
            serde_json::to_vec(&d).unwrap(),
        ] {
            assert_eq!(delivery_tenant(b"k", &bytes).unwrap(), d.tenant_id);
        }
        let cut = encode_delivery(&d);
        assert!(delivery_tenant(b"k", &cut[..cut.len().min(8)]).is_err());
    }

    #[test]
    fn records_written_before_still_read() {
        let d = delivery();
        assert_eq!(decode_delivery(b"k", &encode_packed(&d)).unwrap(), d);
        let json = serde_json::to_vec(&d).unwrap();
        assert_eq!(decode_delivery(b"k", &json).unwrap(), d);
    }

    #[test]
    fn a_damaged_record_is_corrupt_not_a_panic() {
        let bytes = encode_delivery(&delivery());
        // The status byte follows the subscription id, the last of five strings.
        let sub = delivery().subscription_id;
        let at = bytes
            .windows(sub.len())
            .position(|w| w == sub.as_bytes())
            .expect("the subscription id")
            + sub.len();
        let mut status = bytes.clone();
        status[at] = 9;
        let mut trailing = bytes.clone();
        trailing.push(0);
        let mut time = bytes.clone();
        let last = time.len() - 1;
        time[last] = 0xff;
        for bad in [
            &bytes[..1],
            &bytes[..bytes.len() / 2],
            &status[..],
            &time[..],
            &trailing[..],
        ] {
            match decode_delivery(b"key", bad) {
                Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "key"),
                other => panic!("{other:?}"),
            }
        }
    }
}
