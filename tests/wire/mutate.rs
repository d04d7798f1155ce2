//! Mutations of encoded protobuf messages: blind ones (bit flips,
//! truncation, random bytes) and ones that know the wire format, which
//! rewrite a field of a message or of a message nested in it, so that
//! values reach the server's checks instead of failing to decode.

use rand::{Rng, RngCore, rngs::StdRng, seq::IndexedRandom};

/// Varints that sit on the edges of every integer type.
const EDGE_VALUES: &[u64] = &[
    0,
    1,
    127,
    128,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
    999_999_999,
    1_000_000_000,
    315_576_000_000,
    253_402_300_800,
];

/// One field of a message as it was encoded.
#[derive(Clone, Debug)]
struct Field {
    number: u64,
    value: Value,
}

#[derive(Clone, Debug)]
enum Value {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(Vec<u8>),
    Fixed32([u8; 4]),
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The fields of `bytes`, if it parses as a message.
fn parse(bytes: &[u8]) -> Option<Vec<Field>> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let number = key >> 3;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(bytes, &mut at)?),
            1 => Value::Fixed64(bytes.get(at..at + 8)?.try_into().ok()?),
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                let value = bytes.get(at..at.checked_add(len)?)?.to_vec();
                at += len;
                Value::Bytes(value)
            }
            5 => Value::Fixed32(bytes.get(at..at + 4)?.try_into().ok()?),
            _ => return None,
        };
        if matches!(value, Value::Fixed64(_)) {
            at += 8;
        } else if matches!(value, Value::Fixed32(_)) {
            at += 4;
        }
        if number == 0 {
            return None;
        }
        fields.push(Field { number, value });
    }
    Some(fields)
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        let wire_type = match field.value {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        };
        write_varint(&mut out, field.number << 3 | wire_type);
        match &field.value {
            Value::Varint(value) => write_varint(&mut out, *value),
            Value::Fixed64(bytes) => out.extend_from_slice(bytes),
            Value::Bytes(bytes) => {
                write_varint(&mut out, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
            Value::Fixed32(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// A random string of the kinds that break parsers.
fn nasty_string(rng: &mut StdRng) -> Vec<u8> {
    let choices: &[&[u8]] = &[
        b"",
        b"\0",
        b"*",
        b"..",
        b"v1.",
        b"v1.ffffffffffffffff.00000000000000000000000000000001",
        b"00000000000000000000000000000000",
        b"ffffffffffffffffffffffffffffffff",
        b"00000000000000000000000000000001.18446744073709551615.ffffffffffffffffffffffffffffffff",
        b"\xff\xfe",
        "\u{202e}ü\u{1F600}".as_bytes(),
        b"echo",
        b"remote",
        b"sleep",
        b"fail",
    ];
    match rng.random_range(0..4) {
        0 => vec![b'a'; rng.random_range(0..70_000)],
        1 => {
            let mut bytes = vec![0; rng.random_range(0..64)];
            rng.fill_bytes(&mut bytes);
            bytes
        }
        _ => choices.choose(rng).expect("choices").to_vec(),
    }
}

/// Rewrites one field somewhere in the message tree of `bytes` (at most
/// `depth` levels down); `None` when `bytes` is not a message.
fn mutate_field(bytes: &[u8], rng: &mut StdRng, depth: u32) -> Option<Vec<u8>> {
    let mut fields = parse(bytes)?;
    if fields.is_empty() || rng.random_ratio(1, 6) {
        // Add a field, known or not.
        let number = if rng.random_bool(0.7) {
            rng.random_range(1..20)
        } else {
            rng.random_range(1..(1 << 29))
        };
        let value = match rng.random_range(0..3) {
            0 => Value::Varint(*EDGE_VALUES.choose(rng).expect("values")),
            1 => Value::Bytes(nasty_string(rng)),
            _ => Value::Fixed32(rng.random()),
        };
        fields.push(Field { number, value });
        return Some(encode(&fields));
    }
    let index = rng.random_range(0..fields.len());
    match rng.random_range(0..10) {
        0 => {
            fields.remove(index);
        }
        1 => {
            // Repeated (or a second copy of a singular field).
            let copy = fields[index].clone();
            for _ in 0..rng.random_range(1..50) {
                fields.push(copy.clone());
            }
        }
        _ => {
            let field = &mut fields[index];
            field.value = match &field.value {
                Value::Varint(_) => Value::Varint(if rng.random_bool(0.8) {
                    *EDGE_VALUES.choose(rng).expect("values")
                } else {
                    rng.random()
                }),
                Value::Fixed64(_) => {
                    let choices = [f64::NAN, f64::INFINITY, -1.0, 1e308, -0.0, 101.0];
                    Value::Fixed64(choices.choose(rng).expect("floats").to_le_bytes())
                }
                Value::Fixed32(_) => {
                    let choices = [f32::NAN, f32::NEG_INFINITY, -1.0, 100.000_01, 1e38];
                    Value::Fixed32(choices.choose(rng).expect("floats").to_le_bytes())
                }
                Value::Bytes(inner) => {
                    let nested = (depth > 0 && rng.random_bool(0.6))
                        .then(|| mutate_field(inner, rng, depth - 1))
                        .flatten();
                    Value::Bytes(nested.unwrap_or_else(|| nasty_string(rng)))
                }
            };
        }
    }
    Some(encode(&fields))
}

/// A mutation of a valid encoded request, sometimes several stacked.
pub fn mutate(valid: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        bytes = match rng.random_range(0..10) {
            0 => {
                // Bit flips.
                for _ in 0..rng.random_range(1..8) {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.random_range(0..8);
                }
                bytes
            }
            1 => {
                bytes.truncate(rng.random_range(0..=bytes.len()));
                bytes
            }
            2 => {
                let mut tail = vec![0; rng.random_range(1..32)];
                rng.fill_bytes(&mut tail);
                bytes.extend_from_slice(&tail);
                bytes
            }
            3 => {
                let mut random = vec![0; rng.random_range(0..256)];
                rng.fill_bytes(&mut random);
                random
            }
            _ => mutate_field(&bytes, rng, 4).unwrap_or(bytes),
        };
    }
    bytes
}
