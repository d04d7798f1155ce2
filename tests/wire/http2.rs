//! Broken and hostile HTTP/2, written frame by frame on a raw socket: bad
//! prefaces, random and malformed frames, invalid settings, floods of
//! SETTINGS, PING, CONTINUATION and RST_STREAM, flow-control window
//! abuse. Each attack is bounded in bytes and time and ends by closing
//! the socket.

use std::time::Duration;

use rand::{Rng, RngCore, rngs::StdRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// How long an attack may take, writes and reads together.
const ATTACK_BOUND: Duration = Duration::from_secs(10);

/// The attacks, by name (for the report).
pub const ATTACKS: &[&str] = &[
    "bad preface",
    "random frames",
    "invalid settings",
    "settings flood",
    "ping flood",
    "continuation flood",
    "huge header",
    "window overflow",
    "rapid reset",
    "zero window",
    "stream misuse",
    "frame length lie",
];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hpack_integer(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, no Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    hpack_integer(out, 0, 7, name.len());
    out.extend_from_slice(name);
    hpack_integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// The header block of a gRPC call of `path`, plus `extra` headers.
fn request_block(path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        hpack_literal(&mut block, name, value);
    }
    block
}

fn grpc_message(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// Writes `bytes` in chunks, giving up quietly when vowd closes the
/// connection (as it should) or stops reading.
async fn write_all(socket: &mut TcpStream, bytes: &[u8]) -> bool {
    for chunk in bytes.chunks(64 * 1024) {
        match tokio::time::timeout(Duration::from_secs(2), socket.write_all(chunk)).await {
            Ok(Ok(())) => {}
            _ => return false,
        }
    }
    true
}

/// Reads whatever vowd answers, for at most `bound`.
async fn drain(socket: &mut TcpStream, bound: Duration) -> usize {
    let mut buffer = vec![0; 64 * 1024];
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + bound;
    while let Ok(Ok(read)) = tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
        if read == 0 {
            break;
        }
        total += read;
    }
    total
}

/// The attack bytes after the preface and an empty SETTINGS.
fn attack_bytes(attack: usize, rng: &mut StdRng, list_body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match ATTACKS[attack] {
        "random frames" => {
            for _ in 0..rng.random_range(1..200) {
                let mut payload = vec![0; rng.random_range(0..64)];
                rng.fill_bytes(&mut payload);
                let kind = rng.random_range(0..12u8);
                let stream = if rng.random_bool(0.5) {
                    rng.random_range(0..8)
                } else {
                    rng.random()
                };
                out.extend(frame(kind, rng.random(), stream, &payload));
            }
        }
        "invalid settings" => {
            let pairs: &[&[(u16, u32)]] = &[
                &[(2, 2)],           // ENABLE_PUSH other than 0 or 1
                &[(4, 0x8000_0000)], // INITIAL_WINDOW_SIZE over 2^31-1
                &[(5, 1)],           // MAX_FRAME_SIZE under 16384
                &[(5, 0x0100_0000)], // MAX_FRAME_SIZE over 2^24-1
                &[(0xbeef, 7), (1, 0), (3, 0)],
                &[(6, u32::MAX), (1, u32::MAX)],
            ];
            out.extend(settings(pairs[rng.random_range(0..pairs.len())]));
            // A SETTINGS frame whose length is not a multiple of 6.
            out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0]));
        }
        "settings flood" => {
            for _ in 0..20_000 {
                out.extend(settings(&[(4, 65_535)]));
            }
        }
        "ping flood" => {
            for index in 0..50_000u64 {
                out.extend(frame(PING, 0, 0, &index.to_be_bytes()));
            }
        }
        "continuation flood" => {
            out.extend(frame(
                HEADERS,
                0,
                1,
                &request_block("/vow.v1.TaskService/ListKinds", &[]),
            ));
            let mut chunk = Vec::new();
            hpack_literal(&mut chunk, b"x-flood", &vec![b'a'; 16_000]);
            for _ in 0..512 {
                out.extend(frame(CONTINUATION, 0, 1, &chunk));
            }
        }
        "huge header" => {
            let value = vec![b'h'; 1 << 20];
            let block = request_block(
                "/vow.v1.TaskService/ListKinds",
                &[(b"x-huge".as_slice(), value.as_slice())],
            );
            let mut chunks = block.chunks(16_384).peekable();
            let first = chunks.next().expect("a block");
            out.extend(frame(HEADERS, 0, 1, first));
            while let Some(chunk) = chunks.next() {
                let flags = if chunks.peek().is_none() {
                    END_HEADERS
                } else {
                    0
                };
                out.extend(frame(CONTINUATION, flags, 1, chunk));
            }
            out.extend(frame(DATA, END_STREAM, 1, &grpc_message(&[])));
        }
        "window overflow" => {
            let block = request_block("/vow.v1.TaskService/ListKinds", &[]);
            out.extend(frame(HEADERS, END_HEADERS, 1, &block));
            out.extend(frame(WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes()));
            out.extend(frame(WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes()));
            out.extend(frame(WINDOW_UPDATE, 0, 3, &0u32.to_be_bytes()));
            out.extend(frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()));
            out.extend(frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()));
            out.extend(frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()));
        }
        "rapid reset" => {
            let block = request_block(
                "/vow.v1.TaskService/Await",
                &[(b"grpc-timeout".as_slice(), b"1S".as_slice())],
            );
            for index in 0..5_000u32 {
                let stream = 1 + 2 * index;
                out.extend(frame(HEADERS, END_HEADERS, stream, &block));
                out.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
            }
        }
        "zero window" => {
            // vowd may not send a byte of any answer: every answer waits.
            out.extend(settings(&[(4, 0)]));
            let block = request_block("/vow.v1.TaskService/List", &[]);
            for index in 0..500u32 {
                let stream = 1 + 2 * index;
                out.extend(frame(HEADERS, END_HEADERS, stream, &block));
                out.extend(frame(DATA, END_STREAM, stream, &grpc_message(list_body)));
            }
        }
        "stream misuse" => {
            let block = request_block("/vow.v1.TaskService/ListKinds", &[]);
            out.extend(frame(DATA, 0, 0, b"data on stream 0"));
            out.extend(frame(HEADERS, END_HEADERS, 2, &block)); // even: server-initiated
            out.extend(frame(HEADERS, END_HEADERS, 9, &block));
            out.extend(frame(HEADERS, END_HEADERS, 7, &block)); // ids must increase
            out.extend(frame(DATA, 0, 11, b"data before headers"));
            out.extend(frame(PRIORITY, 0, 13, &[0, 0, 0, 13, 16])); // depends on itself
            out.extend(frame(RST_STREAM, 0, 0, &[0, 0, 0, 1]));
            out.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]));
            out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 15, &[0xff; 32])); // bad HPACK
        }
        "frame length lie" => {
            let mut header = frame(DATA, 0, 1, &[]);
            header[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
            out.extend(header);
            out.extend(vec![0; 1024]);
        }
        other => unreachable!("no bytes for {other}"),
    }
    out
}

/// Runs attack number `attack` on a new connection to `address`.
pub async fn attack(address: &str, attack: usize, rng: &mut StdRng, list_body: &[u8]) {
    let Ok(Ok(mut socket)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address)).await
    else {
        panic!("cannot connect to vowd for {:?}", ATTACKS[attack]);
    };
    let bytes = if ATTACKS[attack] == "bad preface" {
        let choices: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &PREFACE[..10],
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
            &[0x16, 0x03, 0x01, 0x00, 0x2f], // a TLS hello on a plaintext port
        ];
        let mut bytes = choices[rng.random_range(0..choices.len())].to_vec();
        if rng.random_bool(0.5) {
            let mut tail = vec![0; rng.random_range(0..512)];
            rng.fill_bytes(&mut tail);
            bytes.extend(tail);
        }
        bytes
    } else {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings(&[]));
        bytes.extend(attack_bytes(attack, rng, list_body));
        bytes
    };
    let _ = tokio::time::timeout(ATTACK_BOUND, async {
        if write_all(&mut socket, &bytes).await {
            drain(&mut socket, Duration::from_millis(300)).await;
        }
    })
    .await;
}
