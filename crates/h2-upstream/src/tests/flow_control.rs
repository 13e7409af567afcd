//! Flow control, stream limits and a socket the upstream stops reading, against an upstream
//! played frame by frame over loopback.

use std::future::poll_fn;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pachgate_h2_wire::{
    self as wire, ACK, DATA, END_HEADERS, END_STREAM, FRAME_HEADER, GOAWAY, HEADERS, PADDED, PING,
    PREFACE, RST_STREAM, SETTINGS, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE, WINDOW_UPDATE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Connection, Failure, HeaderLimits, Settings, StreamRef, MAX_QUEUED_OUT};

const PROTOCOL_ERROR: u32 = 0x1;
/// How long a peer waits for a frame it expects before the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

fn settings(stream_window: u32, connection_window: u32) -> Settings {
    Settings {
        stream_window,
        connection_window,
        write_batch: 1,
        keepalive: None,
        settings_timeout: Duration::from_secs(5),
        header_limits: HeaderLimits::default(),
    }
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The upstream's end of a loopback connection.
struct Peer {
    socket: TcpStream,
}

impl Peer {
    async fn write(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.unwrap();
    }

    async fn read_frame(&mut self) -> Frame {
        let mut head = [0u8; FRAME_HEADER];
        tokio::time::timeout(PATIENCE, self.socket.read_exact(&mut head))
            .await
            .expect("a frame from pachgate in time")
            .unwrap();
        let mut payload = vec![0u8; wire::frame_length(&head)];
        self.socket.read_exact(&mut payload).await.unwrap();
        Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        }
    }

    /// The next request's stream id (its HEADERS).
    async fn request(&mut self) -> u32 {
        loop {
            let frame = self.read_frame().await;
            if frame.kind == HEADERS {
                return frame.stream;
            }
        }
    }

    /// Sends a PING and returns every frame pachgate wrote before its answer: all it made
    /// of what came before the PING.
    async fn frames_until_pong(&mut self) -> Vec<Frame> {
        self.write(&frame(PING, 0, 0, b"pong-me!")).await;
        let mut frames = Vec::new();
        loop {
            let next = self.read_frame().await;
            if next.kind == PING && next.flags & ACK != 0 {
                return frames;
            }
            frames.push(next);
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    wire::put_frame_header(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// `:status: 200`, indexed.
fn head(stream: u32, end_stream: bool) -> BytesMut {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &[0x88])
}

fn trailers(stream: u32) -> BytesMut {
    let mut block = vec![0x00];
    wire::put_string(&mut block, b"grpc-status");
    wire::put_string(&mut block, b"0");
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
}

fn window_update(stream: u32, increment: u32) -> BytesMut {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// A connection over loopback whose upstream has sent `peer_settings` and acknowledged ours.
async fn connected(ours: Settings, peer_settings: &[(u16, u32)]) -> (Connection, Peer) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let (connection, driving) = Connection::start(Box::new(client), ours);
    tokio::spawn(driving);
    let mut peer = Peer { socket };
    let mut preface = [0u8; PREFACE.len()];
    peer.socket.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, PREFACE);
    let mut entries = Vec::new();
    for (id, value) in peer_settings {
        entries.extend_from_slice(&id.to_be_bytes());
        entries.extend_from_slice(&value.to_be_bytes());
    }
    let mut out = frame(SETTINGS, 0, 0, &entries);
    out.extend_from_slice(&frame(SETTINGS, ACK, 0, &[]));
    peer.write(&out).await;
    // Ours: SETTINGS, then (windows past the default) a connection WINDOW_UPDATE.
    while peer.read_frame().await.kind != SETTINGS {}
    // The upstream's SETTINGS are applied before the first stream opens (a PING answered
    // after them proves it).
    let _ = peer.frames_until_pong().await;
    (connection, peer)
}

fn request_head() -> http::request::Parts {
    http::Request::post("http://upstream/pkg.API/Call")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// Reads a response body whole: its data bytes and whether trailers came, or the error.
async fn read_body(stream: &mut StreamRef) -> Result<(usize, bool), crate::BodyError> {
    let (mut data, mut trailers) = (0, false);
    while let Some(frame) = poll_fn(|cx| stream.poll_body(cx)).await {
        let frame = frame?;
        if let Some(bytes) = frame.data_ref() {
            data += bytes.len();
        } else {
            trailers = frame.is_trailers();
        }
    }
    Ok((data, trailers))
}

/// Padding takes from a stream's window like data; an upstream that pads every frame must
/// get it back, or it stalls once it has padded a window's worth.
#[tokio::test]
async fn padded_data_is_credited_back_to_the_stream() {
    const WINDOW: u32 = 65_535;
    let (connection, mut peer) = connected(settings(WINDOW, 1 << 20), &[]).await;
    let mut stream = connection.open(&request_head(), true).await.unwrap();
    let id = peer.request().await;
    let reading = tokio::spawn(async move {
        poll_fn(|cx| stream.poll_response(cx)).await.unwrap();
        read_body(&mut stream).await.unwrap()
    });
    peer.write(&head(id, false)).await;
    // 10 bytes of data and 200 of padding a frame: 20,000 data bytes take 6 windows.
    let mut payload = vec![200u8];
    payload.extend_from_slice(&[b'd'; 10]);
    payload.extend_from_slice(&[0; 200]);
    let padded = frame(DATA, PADDED, id, &payload);
    let mut window = i64::from(WINDOW);
    for _ in 0..2_000 {
        while window < payload.len() as i64 {
            let credit = peer.read_frame().await;
            if credit.kind == WINDOW_UPDATE && credit.stream == id {
                window += i64::from(u32::from_be_bytes(credit.payload[..4].try_into().unwrap()));
            }
        }
        peer.write(&padded).await;
        window -= payload.len() as i64;
    }
    peer.write(&trailers(id)).await;
    assert_eq!(reading.await.unwrap(), (20_000, true));
}

/// RFC 9113 §6.9: WINDOW_UPDATE may arrive after the stream ended. One with a zero increment
/// after a complete response is ignored: no reset, and the trailers still reach the caller.
#[tokio::test]
async fn a_window_update_after_the_response_leaves_it_whole() {
    let (connection, mut peer) = connected(settings(65_535, 65_535), &[]).await;
    let mut stream = connection.open(&request_head(), true).await.unwrap();
    let id = peer.request().await;
    let mut out = head(id, false);
    out.extend_from_slice(&frame(DATA, 0, id, b"hi"));
    out.extend_from_slice(&trailers(id));
    out.extend_from_slice(&window_update(id, 0));
    peer.write(&out).await;
    let answered = peer.frames_until_pong().await;
    assert!(answered.iter().all(|f| f.kind != RST_STREAM));
    poll_fn(|cx| stream.poll_response(cx)).await.unwrap();
    assert_eq!(read_body(&mut stream).await.unwrap(), (2, true));
}

/// A zero WINDOW_UPDATE on a stream still sending is a stream error: one reset, and the run
/// of them after it answered with nothing (no output queued per frame the upstream sends).
#[tokio::test]
async fn zero_window_updates_reset_their_stream_once() {
    let (connection, mut peer) = connected(settings(65_535, 65_535), &[]).await;
    let mut stream = connection.open(&request_head(), false).await.unwrap();
    let id = peer.request().await;
    let mut out = head(id, false);
    for _ in 0..1_000 {
        out.extend_from_slice(&window_update(id, 0));
    }
    peer.write(&out).await;
    let resets: Vec<u32> = peer
        .frames_until_pong()
        .await
        .iter()
        .filter(|f| f.kind == RST_STREAM)
        .map(|f| u32::from_be_bytes(f.payload[..4].try_into().unwrap()))
        .collect();
    assert_eq!(resets, [PROTOCOL_ERROR]);
    poll_fn(|cx| stream.poll_response(cx)).await.unwrap();
    assert!(read_body(&mut stream).await.is_err());
}

/// An upstream that grants the largest windows and stops reading does not make pachgate
/// queue a client's upload: past MAX_QUEUED_OUT the body waits, and goes on whole once the
/// upstream reads again.
#[tokio::test]
async fn an_upload_to_an_upstream_that_stops_reading_waits_within_bounds() {
    const BODY: usize = 32 << 20;
    let (connection, mut peer) = connected(
        settings(65_535, 65_535),
        &[
            (SETTINGS_INITIAL_WINDOW_SIZE, 0x7fff_ffff),
            (SETTINGS_MAX_FRAME_SIZE, 16_777_215),
        ],
    )
    .await;
    peer.write(&window_update(0, 0x7fff_ffff - 65_535)).await;
    let mut stream = connection.open(&request_head(), false).await.unwrap();
    let id = peer.request().await;
    let sending = tokio::spawn(async move {
        let mut body = Bytes::from(vec![b'u'; BODY]);
        poll_fn(|cx| stream.poll_send(cx, &mut body, true))
            .await
            .unwrap();
        stream
    });
    // The kernel's buffers take a few MiB; the rest would have been pachgate's to hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !sending.is_finished(),
        "32 MiB queued for a peer that reads nothing"
    );
    let queued = connection.shared.lock().out.queued();
    assert!(queued <= MAX_QUEUED_OUT, "{queued} bytes queued");
    let mut received = 0;
    loop {
        let next = peer.read_frame().await;
        if next.kind == DATA && next.stream == id {
            received += next.payload.len();
            if next.flags & END_STREAM != 0 {
                break;
            }
        }
    }
    assert_eq!(received, BODY);
    let _stream = tokio::time::timeout(PATIENCE, sending)
        .await
        .expect("the upload ends")
        .unwrap();
}

/// Sends `bytes` of DATA on `stream` within the connection window the peer knows of
/// (`window`, topped up by WINDOW_UPDATEs read meanwhile), waiting at most `wait` for more
/// credit; the bytes it could send.
async fn send_within_window(
    peer: &mut Peer,
    window: &mut i64,
    stream: u32,
    bytes: usize,
    wait: Duration,
) -> usize {
    let mut sent = 0;
    while sent < bytes {
        let take = (bytes - sent).min(16_384).min((*window).max(0) as usize);
        if take == 0 {
            match tokio::time::timeout(wait, peer.read_frame()).await {
                Ok(credit) if credit.kind == WINDOW_UPDATE && credit.stream == 0 => {
                    *window +=
                        i64::from(u32::from_be_bytes(credit.payload[..4].try_into().unwrap()));
                }
                Ok(_) => {}
                Err(_) => return sent,
            }
            continue;
        }
        peer.write(&frame(DATA, 0, stream, &vec![b'r'; take])).await;
        *window -= take as i64;
        sent += take;
    }
    sent
}

/// Opens `count` streams and answers each with a head.
async fn open_answered(
    connection: &Connection,
    peer: &mut Peer,
    count: usize,
) -> Vec<(u32, StreamRef)> {
    let mut streams = Vec::new();
    for _ in 0..count {
        let stream = connection.open(&request_head(), true).await.unwrap();
        let id = peer.request().await;
        peer.write(&head(id, false)).await;
        streams.push((id, stream));
    }
    streams
}

/// Clients that stop reading hold their streams' windows, not the connection's: the worker's
/// other streams on the same upstream connection still get their data.
#[tokio::test]
async fn clients_that_stop_reading_do_not_stall_the_others() {
    const STREAM_WINDOW: u32 = 65_535;
    const CONNECTION_WINDOW: u32 = 2 * STREAM_WINDOW;
    let (connection, mut peer) = connected(settings(STREAM_WINDOW, CONNECTION_WINDOW), &[]).await;
    let mut streams = open_answered(&connection, &mut peer, 4).await;
    let (fast_id, mut fast) = streams.pop().unwrap();
    let mut window = i64::from(CONNECTION_WINDOW);
    // Three streams nobody reads, each given its whole window: more than the connection's.
    for (id, _) in &streams {
        let sent = send_within_window(
            &mut peer,
            &mut window,
            *id,
            STREAM_WINDOW as usize,
            PATIENCE,
        )
        .await;
        assert_eq!(sent, STREAM_WINDOW as usize);
    }
    let reading = tokio::spawn(async move {
        poll_fn(|cx| fast.poll_response(cx)).await.unwrap();
        read_body(&mut fast).await.unwrap()
    });
    let sent = send_within_window(&mut peer, &mut window, fast_id, 60_000, PATIENCE).await;
    assert_eq!(sent, 60_000);
    peer.write(&trailers(fast_id)).await;
    assert_eq!(reading.await.unwrap(), (60_000, true));
    drop(streams);
}

/// What unread streams may hold in all stays bounded: past twice the connection window,
/// the connection's credit comes back only as data is read.
#[tokio::test]
async fn what_unread_streams_hold_is_bounded() {
    const STREAM_WINDOW: u32 = 65_535;
    const CONNECTION_WINDOW: u32 = 2 * STREAM_WINDOW;
    let (connection, mut peer) = connected(settings(STREAM_WINDOW, CONNECTION_WINDOW), &[]).await;
    let mut streams = open_answered(&connection, &mut peer, 8).await;
    let mut window = i64::from(CONNECTION_WINDOW);
    let mut held = 0;
    for (id, _) in &streams {
        held += send_within_window(
            &mut peer,
            &mut window,
            *id,
            STREAM_WINDOW as usize,
            Duration::from_millis(300),
        )
        .await;
    }
    let bound = 3 * CONNECTION_WINDOW as usize;
    assert!(
        held > CONNECTION_WINDOW as usize,
        "credited as data arrived: {held}"
    );
    assert!(held <= bound, "{held} bytes held, past {bound}");
    // Reading one stream gives its credit back: the upstream may send more (on a stream
    // that is not full: past the bound, the last streams got nothing).
    let (_, mut first) = streams.remove(0);
    let reading = tokio::spawn(async move {
        poll_fn(|cx| first.poll_response(cx)).await.unwrap();
        // Its data, as far as it came; the stream is not ended.
        let mut data = 0;
        while data < STREAM_WINDOW as usize {
            match poll_fn(|cx| first.poll_body(cx)).await {
                Some(Ok(frame)) => data += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
        (data, first)
    });
    let (read, _first) = reading.await.unwrap();
    assert_eq!(read, STREAM_WINDOW as usize);
    let (last_id, _) = streams.last().unwrap();
    let more = send_within_window(&mut peer, &mut window, *last_id, 16_384, PATIENCE).await;
    assert_eq!(more, 16_384);
}

/// SETTINGS_MAX_CONCURRENT_STREAMS = 0 opens nothing: the request is refused at once,
/// unsent (another connection may take it), instead of waiting forever.
#[tokio::test]
async fn a_stream_limit_of_zero_refuses_at_once() {
    let (connection, _peer) = connected(
        settings(65_535, 65_535),
        &[(SETTINGS_MAX_CONCURRENT_STREAMS, 0)],
    )
    .await;
    let opened = tokio::time::timeout(PATIENCE, connection.open(&request_head(), true))
        .await
        .expect("an answer, not a wait");
    assert!(matches!(opened, Err(Failure::Refused)));
    assert!(!connection.is_open());
}

/// An upstream that keeps sending frames (so it seems alive) but reads nothing is found out
/// by the keepalive timer: output waiting with nothing written over two of its looks ends
/// the connection, and the upload waiting on it fails instead of hanging.
#[tokio::test]
async fn an_upstream_that_talks_but_never_reads_is_given_up() {
    let mut ours = settings(65_535, 65_535);
    ours.keepalive = Some((Duration::from_millis(200), Duration::from_millis(200)));
    let (connection, mut peer) =
        connected(ours, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0x7fff_ffff)]).await;
    peer.write(&window_update(0, 0x7fff_ffff - 65_535)).await;
    let mut stream = connection.open(&request_head(), false).await.unwrap();
    // More than the kernel's buffers and ours hold: the upstream never reads again.
    let sending = tokio::spawn(async move {
        let mut body = Bytes::from(vec![b'u'; 64 << 20]);
        poll_fn(|cx| stream.poll_send(cx, &mut body, true)).await
    });
    let talking = async {
        loop {
            // PRIORITY (type 2) on the stream: ignored, but a frame all the same.
            peer.write(&frame(0x2, 0, 1, &[0, 0, 0, 0, 16])).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let sent = tokio::select! {
        sent = tokio::time::timeout(PATIENCE, sending) => sent.expect("the upload ends").unwrap(),
        () = talking => unreachable!(),
    };
    assert!(sent.is_err(), "the upload failed with its connection");
    assert!(!connection.is_open());
}

/// A request waiting for a stream slot learns at once that the connection opens no more
/// streams when the upstream sends GOAWAY (or the connection is retired): it is refused,
/// unsent, and goes to another connection, instead of waiting for the open streams below
/// the GOAWAY's last id to end, which a long stream never does.
#[tokio::test]
async fn requests_waiting_for_a_stream_slot_are_refused_on_goaway() {
    /// The second request on a connection whose one stream slot is taken, in a task of its
    /// own: it runs again only when something wakes it.
    fn waiting_for_a_slot(
        connection: &std::sync::Arc<Connection>,
    ) -> tokio::task::JoinHandle<Result<(), Failure>> {
        let connection = connection.clone();
        tokio::spawn(async move { connection.open(&request_head(), true).await.map(drop) })
    }
    let (connection, mut peer) = connected(
        settings(65_535, 65_535),
        &[(SETTINGS_MAX_CONCURRENT_STREAMS, 1)],
    )
    .await;
    let connection = std::sync::Arc::new(connection);
    let _long = connection.open(&request_head(), true).await.unwrap();
    let mut waiting = waiting_for_a_slot(&connection);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut waiting)
            .await
            .is_err(),
        "the second request waits for the slot"
    );
    // GOAWAY(last stream 1, NO_ERROR): stream 1 goes on, nothing new opens.
    peer.write(&frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]))
        .await;
    let opened = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("refused at once, not left waiting");
    assert!(matches!(opened.unwrap(), Err(Failure::Refused)));

    let (connection, _peer) = connected(
        settings(65_535, 65_535),
        &[(SETTINGS_MAX_CONCURRENT_STREAMS, 1)],
    )
    .await;
    let connection = std::sync::Arc::new(connection);
    let _long = connection.open(&request_head(), true).await.unwrap();
    let mut waiting = waiting_for_a_slot(&connection);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut waiting)
            .await
            .is_err()
    );
    connection.retire();
    let opened = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("refused at once once retired");
    assert!(matches!(opened.unwrap(), Err(Failure::Refused)));
}

/// A GOAWAY whose last stream id is below a stream the upstream already answered cannot
/// mean that stream went unprocessed: a whole answer, still unread, is read whole (a
/// refusal would tell the proxy the request is safe to send again, and it would run
/// twice), and a partial one fails without being called a refusal.
#[tokio::test]
async fn goaway_below_an_answered_stream_does_not_refuse_it() {
    let (connection, mut peer) = connected(settings(65_535, 65_535), &[]).await;
    let mut whole = connection.open(&request_head(), true).await.unwrap();
    let whole_id = peer.request().await;
    let mut partial = connection.open(&request_head(), true).await.unwrap();
    let partial_id = peer.request().await;
    let mut answers = frame(HEADERS, END_HEADERS, whole_id, &head_with_lengths(8, &[]));
    answers.extend_from_slice(&frame(DATA, 0, whole_id, b"abc"));
    answers.extend_from_slice(&trailers(whole_id));
    answers.extend_from_slice(&frame(
        HEADERS,
        END_HEADERS,
        partial_id,
        &head_with_lengths(8, &[]),
    ));
    answers.extend_from_slice(&frame(DATA, 0, partial_id, b"ab"));
    // GOAWAY(last stream 0, NO_ERROR) before either answer is read.
    answers.extend_from_slice(&frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]));
    peer.write(&answers).await;
    peer.frames_until_pong().await;

    poll_fn(|cx| whole.poll_response(cx)).await.unwrap();
    let body = read_body(&mut whole).await;
    assert!(matches!(body, Ok((3, true))), "{body:?}");
    poll_fn(|cx| partial.poll_response(cx)).await.unwrap();
    let body = tokio::time::timeout(PATIENCE, read_body(&mut partial))
        .await
        .expect("the partial answer ends");
    let error = body.expect_err("no more of it was coming");
    assert!(
        !format!("{error:?}").contains("REFUSED_STREAM"),
        "{error:?}"
    );
}

/// A response head block: `:status` by its static index, then each content-length value.
fn head_with_lengths(status_index: u8, lengths: &[&str]) -> Vec<u8> {
    let mut block = vec![0x80 | status_index];
    for length in lengths {
        // Literal without indexing, name by static index 28 (content-length).
        block.extend_from_slice(&[0x0f, 0x0d]);
        wire::put_string(&mut block, length.as_bytes());
    }
    block
}

/// How a response that names a content-length went: whether the head arrived, the body
/// read whole (data bytes, trailers) unless it failed, and whether the stream was reset.
type Outcome = (bool, Option<(usize, bool)>, bool);

async fn answered_with_length(
    method: http::Method,
    block: &[u8],
    then: &[(&[u8], bool)],
    end_with_trailers: bool,
) -> Outcome {
    let (connection, mut peer) = connected(settings(65_535, 65_535), &[]).await;
    let mut request = request_head();
    request.method = method;
    let mut stream = connection.open(&request, true).await.unwrap();
    let id = peer.request().await;
    let head_ends = then.is_empty() && !end_with_trailers;
    let flags = END_HEADERS | if head_ends { END_STREAM } else { 0 };
    let mut out = frame(HEADERS, flags, id, block);
    for (data, end) in then {
        out.extend_from_slice(&frame(DATA, if *end { END_STREAM } else { 0 }, id, data));
    }
    if end_with_trailers {
        out.extend_from_slice(&trailers(id));
    }
    peer.write(&out).await;
    let reset = peer
        .frames_until_pong()
        .await
        .iter()
        .any(|f| f.kind == RST_STREAM && f.payload == PROTOCOL_ERROR.to_be_bytes());
    let head = poll_fn(|cx| stream.poll_response(cx)).await;
    let body = match head {
        Ok(_) => read_body(&mut stream).await.ok(),
        Err(_) => None,
    };
    (head.is_ok(), body, reset)
}

/// RFC 9113 §8.1.1: a response whose DATA does not add up to its content-length (or whose
/// content-length is not one number) is malformed; an intermediary must not pass it on,
/// and resets the stream with PROTOCOL_ERROR. Responses without a body (to HEAD, 204, 304)
/// may name the length of the body a GET would get.
#[tokio::test]
async fn a_response_must_add_up_to_its_content_length() {
    use http::Method;
    let ok = |length: usize, trailers: bool| (true, Some((length, trailers)), false);
    let five = head_with_lengths(8, &["5"]);
    /// Name, request method, head block, DATA frames (payload, END_STREAM), trailers after
    /// them, and what should come of it.
    type Case = (&'static str, Method, Vec<u8>, Frames, bool, Outcome);
    type Frames = Vec<(&'static [u8], bool)>;
    let cases: Vec<Case> = vec![
        (
            "exact, in two frames",
            Method::POST,
            five.clone(),
            vec![(b"ab", false), (b"cde", true)],
            false,
            ok(5, false),
        ),
        (
            "exact, then trailers",
            Method::POST,
            five.clone(),
            vec![(b"abcde", false)],
            true,
            ok(5, true),
        ),
        (
            "more DATA than named",
            Method::POST,
            five.clone(),
            vec![(&[b'x'; 100], true)],
            false,
            (true, None, true),
        ),
        (
            "less DATA than named",
            Method::POST,
            head_with_lengths(8, &["100"]),
            vec![(b"abcde", true)],
            false,
            (true, None, true),
        ),
        (
            "trailers before the length",
            Method::POST,
            five.clone(),
            vec![(b"ab", false)],
            true,
            (true, None, true),
        ),
        (
            "no DATA at all",
            Method::POST,
            five.clone(),
            vec![],
            false,
            (false, None, true),
        ),
        (
            "two different values",
            Method::POST,
            head_with_lengths(8, &["5", "6"]),
            vec![(b"abcde", true)],
            false,
            (false, None, true),
        ),
        (
            "not a number",
            Method::POST,
            head_with_lengths(8, &["5x"]),
            vec![(b"abcde", true)],
            false,
            (false, None, true),
        ),
        (
            // Spaces around a value are trimmed, as from any field.
            "a space after the number",
            Method::POST,
            head_with_lengths(8, &["5 "]),
            vec![(b"abcde", true)],
            false,
            ok(5, false),
        ),
        (
            "the same value twice",
            Method::POST,
            head_with_lengths(8, &["5", "5"]),
            vec![(b"abcde", true)],
            false,
            ok(5, false),
        ),
        (
            "HEAD's length, no body",
            Method::HEAD,
            head_with_lengths(8, &["100"]),
            vec![],
            false,
            ok(0, false),
        ),
        (
            "204 with a length",
            Method::POST,
            head_with_lengths(9, &["100"]),
            vec![],
            false,
            ok(0, false),
        ),
        (
            "304 with a length",
            Method::POST,
            head_with_lengths(11, &["100"]),
            vec![],
            false,
            ok(0, false),
        ),
        (
            "HEAD's response with DATA",
            Method::HEAD,
            head_with_lengths(8, &["100"]),
            vec![(b"abcde", true)],
            false,
            (true, None, true),
        ),
        (
            "HEAD's response with DATA and no length",
            Method::HEAD,
            head_with_lengths(8, &[]),
            vec![(b"abcde", true)],
            false,
            (true, None, true),
        ),
        (
            "204 with DATA and no length",
            Method::POST,
            head_with_lengths(9, &[]),
            vec![(b"abcde", true)],
            false,
            (true, None, true),
        ),
        (
            "a length past 64 bits",
            Method::POST,
            head_with_lengths(8, &["18446744073709551616"]),
            vec![(b"abcde", true)],
            false,
            (false, None, true),
        ),
        (
            "a tunnel's 200 with a length",
            Method::CONNECT,
            head_with_lengths(8, &["0"]),
            vec![(b"frames", true)],
            false,
            ok(6, false),
        ),
    ];
    for (name, method, block, then, trailers, expected) in cases {
        let seen = answered_with_length(method, &block, &then, trailers).await;
        assert_eq!(seen, expected, "{name}");
    }
}

/// The client leaves (the response's reader is dropped) while the request body's pump waits
/// for send window the upstream never grants: the stream is cancelled, what it held is
/// given back to the connection, and the pump ends, instead of the stream keeping its slot
/// and its unread data until the upstream gives up.
#[tokio::test]
async fn a_dropped_reader_cancels_the_stream_its_pump_still_holds() {
    let (connection, mut peer) = connected(
        settings(65_535, 1 << 20),
        &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)],
    )
    .await;
    let reader = connection.open(&request_head(), false).await.unwrap();
    let id = peer.request().await;
    let mut pump = reader.clone_ref();
    let pumping = tokio::spawn(async move {
        let mut body = Bytes::from_static(b"upload");
        poll_fn(|cx| pump.poll_send(cx, &mut body, false)).await
    });
    let mut out = head(id, false);
    out.extend_from_slice(&frame(DATA, 0, id, &[b'd'; 1000]));
    peer.write(&out).await;
    let _ = peer.frames_until_pong().await;
    assert_eq!(connection.shared.lock().buffered, 1000);

    drop(reader);
    let answered = peer.frames_until_pong().await;
    assert!(
        answered
            .iter()
            .any(|f| f.kind == RST_STREAM && f.stream == id && f.payload == 0x8u32.to_be_bytes()),
        "no RST_STREAM(CANCEL) for the abandoned stream"
    );
    assert_eq!(connection.shared.lock().buffered, 0);
    let pumped = tokio::time::timeout(PATIENCE, pumping)
        .await
        .expect("the pump ends once the stream is cancelled");
    assert!(pumped.unwrap().is_err());
    assert!(!connection.shared.lock().streams.contains_key(&id));
}

/// The connection error (GOAWAY's code) an upstream's bytes draw, sent after stream 1 is
/// open; `None` when the connection answers a PING after them instead.
async fn connection_error_after(bytes: &[u8]) -> Option<u32> {
    let (connection, mut peer) = connected(settings(65_535, 65_535), &[]).await;
    let _stream = connection.open(&request_head(), false).await.unwrap();
    assert_eq!(peer.request().await, 1);
    peer.write(bytes).await;
    peer.write(&frame(PING, 0, 0, b"survived")).await;
    loop {
        let next = peer.read_frame().await;
        if next.kind == GOAWAY {
            return Some(u32::from_be_bytes(next.payload[4..8].try_into().unwrap()));
        }
        if next.kind == PING && next.flags & ACK != 0 {
            return None;
        }
    }
}

/// Frames RFC 9113 makes connection errors are answered with GOAWAY and the code it names:
/// the upstream's mistakes are caught where they are made, not left for a stream to wait
/// on (an answer on the wrong stream id) or passed by.
#[tokio::test]
async fn frames_the_rfc_forbids_end_the_connection_with_its_code() {
    const PROTOCOL: Option<u32> = Some(0x1);
    const FRAME_SIZE: Option<u32> = Some(0x6);
    let setting = |id: u16, value: u32| {
        let mut entry = id.to_be_bytes().to_vec();
        entry.extend_from_slice(&value.to_be_bytes());
        frame(SETTINGS, 0, 0, &entry)
    };
    let cases: Vec<(&str, BytesMut, Option<u32>)> = vec![
        ("ENABLE_PUSH 1 from a server", setting(0x2, 1), PROTOCOL),
        ("ENABLE_PUSH 2", setting(0x2, 2), PROTOCOL),
        ("ENABLE_PUSH 0 (allowed)", setting(0x2, 0), None),
        (
            "a SETTINGS ACK with a payload",
            frame(SETTINGS, ACK, 0, &[0; 6]),
            FRAME_SIZE,
        ),
        (
            "RST_STREAM of five bytes",
            frame(RST_STREAM, 0, 1, &[0; 5]),
            FRAME_SIZE,
        ),
        ("PING on a stream", frame(PING, 0, 1, b"12345678"), PROTOCOL),
        ("GOAWAY on a stream", frame(GOAWAY, 0, 1, &[0; 8]), PROTOCOL),
        ("HEADERS on a stream never opened", head(3, true), PROTOCOL),
        (
            "DATA on an even stream",
            frame(DATA, END_STREAM, 2, b"x"),
            PROTOCOL,
        ),
        (
            "WINDOW_UPDATE on a stream never opened",
            window_update(5, 1),
            PROTOCOL,
        ),
        (
            "RST_STREAM on a stream never opened",
            frame(RST_STREAM, 0, 7, &[0; 4]),
            PROTOCOL,
        ),
        // PRIORITY may name any stream (RFC 9113 §5.1).
        (
            "PRIORITY on an idle stream",
            frame(0x2, 0, 9, &[0, 0, 0, 0, 16]),
            None,
        ),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(connection_error_after(&bytes).await, expected, "{name}");
    }
}

/// A response field RFC 9113 §8.2 makes malformed (TE) resets the stream: its head never
/// reaches the client. Whitespace at a value's ends, which the RFC also forbids but grpc-go
/// sends in a `grpc-message`, is trimmed instead.
#[tokio::test]
async fn malformed_response_fields_reset_the_stream() {
    let literal = |name: &[u8], value: &[u8]| {
        let mut block = vec![0x88, 0x00];
        wire::put_string(&mut block, name);
        wire::put_string(&mut block, value);
        block
    };
    for (name, block) in [
        ("te", literal(b"te", b"trailers")),
        ("a CR at the end", literal(b"x-a", b"v\r")),
    ] {
        let seen = answered_with_length(http::Method::POST, &block, &[(b"ok", true)], false).await;
        assert_eq!(seen, (false, None, true), "{name}");
    }

    let (connection, mut peer) = connected(settings(65_535, 65_535), &[]).await;
    let mut stream = connection.open(&request_head(), true).await.unwrap();
    let id = peer.request().await;
    let mut block = literal(b"x-a", b" v w\t");
    block.extend_from_slice(&literal(b"x-b", b"")[1..]);
    peer.write(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block))
        .await;
    let head = poll_fn(|cx| stream.poll_response(cx)).await.unwrap();
    assert_eq!(head.headers()["x-a"], "v w");
    assert_eq!(head.headers()["x-b"], "");
}

/// An upstream that pings as it reads a long upload (as gRPC servers' bandwidth probes do)
/// is no flood, however long the queue behind the acknowledgements stays: only those it
/// has not been sent count. Here 1,500 PINGs come while a 64 MiB upload keeps the queue
/// full.
#[tokio::test]
async fn pings_during_a_long_upload_are_no_flood() {
    let (connection, mut peer) = connected(
        settings(65_535, 65_535),
        &[(SETTINGS_INITIAL_WINDOW_SIZE, 0x7fff_ffff)],
    )
    .await;
    peer.write(&window_update(0, 0x7fff_ffff - 65_535)).await;
    let mut stream = connection.open(&request_head(), false).await.unwrap();
    let sending = tokio::spawn(async move {
        let mut body = Bytes::from(vec![b'u'; 64 << 20]);
        poll_fn(|cx| stream.poll_send(cx, &mut body, true)).await
    });
    let mut read = vec![0u8; 16 * 1024];
    for ping in 0..1500 {
        tokio::time::timeout(PATIENCE, peer.socket.read_exact(&mut read))
            .await
            .unwrap_or_else(|_| panic!("the upload stopped at PING {ping}"))
            .unwrap_or_else(|e| panic!("the connection ended at PING {ping}: {e}"));
        peer.write(&frame(PING, 0, 0, b"probing!")).await;
        // Slower than the upload is queued: the socket's buffers stay full, and so does
        // the queue behind them.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(connection.is_open());
    sending.abort();
}
