//! One process's output: a ring of the last bytes (for replay on Connect) and a fan-out to every
//! attached client. Publishing never waits: each subscriber has an unbounded queue whose
//! unread bytes are counted, and a subscriber whose backlog passes its bound is dropped (it
//! may Connect again), so a slow client never blocks the other clients.
//!
//! The process is paced by its fastest client: the reader of its pipes pauses while every
//! subscriber has at least [`HIGH_WATER`] unread (the pipe then fills and the process waits on
//! its writes, as on a terminal). Without that, a client reading as fast as it can, but slower
//! than `cat` of a big file, would be dropped. A process nobody is attached to is never paused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};

/// Output kept per process for replay.
pub const RING_BYTES: usize = 256 << 10;
/// Unread output a subscriber may have queued before it is dropped.
pub const SUBSCRIBER_BACKLOG: usize = 4 << 20;
/// Unread bytes of the fastest subscriber at which the reader pauses.
pub const HIGH_WATER: usize = 1 << 20;
/// The most a Connect may ask to replay.
pub const MAX_REPLAY_BYTES: usize = 1 << 20;

/// Where output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    Pty,
}

/// Bytes of one stream, in the order the process wrote them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub stream: Stream,
    pub bytes: Bytes,
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// 128+n for a signal; -1 when unknown.
    pub code: i32,
    /// The signal that ended it; 0 for none.
    pub signal: i32,
    /// Why berth ended it, when it did; empty otherwise.
    pub error: String,
    pub time: OffsetDateTime,
}

impl Exit {
    /// An exit status as containerd reports it: above 128 (and at most 128+64) a signal.
    pub fn from_status(status: u32, error: String) -> Self {
        let code = i32::try_from(status).unwrap_or(-1);
        let signal = if (129..=128 + 64).contains(&code) { code - 128 } else { 0 };
        Self { code, signal, error, time: OffsetDateTime::now_utc() }
    }
}

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Data(Chunk),
    End(Exit),
    /// The subscriber fell more than [`SUBSCRIBER_BACKLOG`] bytes behind and was dropped.
    Overflow,
}

/// The last `capacity` bytes of output, as chunks.
#[derive(Debug)]
pub struct Ring {
    chunks: VecDeque<Chunk>,
    len: usize,
    capacity: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Self { chunks: VecDeque::new(), len: 0, capacity }
    }

    pub fn push(&mut self, chunk: Chunk) {
        self.len += chunk.bytes.len();
        self.chunks.push_back(chunk);
        while self.len > self.capacity {
            let excess = self.len - self.capacity;
            let front = self.chunks.front_mut().expect("a ring over capacity has chunks");
            if front.bytes.len() <= excess {
                self.len -= front.bytes.len();
                self.chunks.pop_front();
            } else {
                // Bytes::slice shares the buffer: no copy.
                front.bytes = front.bytes.slice(excess..);
                self.len -= excess;
            }
        }
    }

    /// The last `max` bytes (fewer when less was kept), oldest first.
    pub fn tail(&self, max: usize) -> Vec<Chunk> {
        let mut wanted = max.min(self.len);
        let mut tail = Vec::new();
        for chunk in self.chunks.iter().rev() {
            if wanted == 0 {
                break;
            }
            if chunk.bytes.len() <= wanted {
                wanted -= chunk.bytes.len();
                tail.push(chunk.clone());
            } else {
                tail.push(Chunk { stream: chunk.stream, bytes: chunk.bytes.slice(chunk.bytes.len() - wanted..) });
                wanted = 0;
            }
        }
        tail.reverse();
        tail
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }
}

struct Subscriber {
    sender: mpsc::UnboundedSender<Event>,
    backlog: Arc<AtomicUsize>,
}

impl Subscriber {
    /// Queues `event`; false when the subscriber is gone or just dropped for its backlog.
    fn send(&self, event: Event, limit: usize) -> bool {
        if let Event::Data(chunk) = &event {
            let len = chunk.bytes.len();
            if self.backlog.load(Ordering::Acquire) + len > limit {
                let _ = self.sender.send(Event::Overflow);
                return false;
            }
            self.backlog.fetch_add(len, Ordering::AcqRel);
        }
        self.sender.send(event).is_ok()
    }
}

struct State {
    ring: Ring,
    subscribers: Vec<Subscriber>,
    exit: Option<Exit>,
}

/// The output of one process.
pub struct Output {
    state: Mutex<State>,
    backlog_limit: usize,
    high_water: usize,
    /// Woken when a subscriber reads below the high water mark or goes away.
    drained: Arc<Notify>,
}

impl Output {
    pub fn new(ring_bytes: usize, backlog_limit: usize) -> Self {
        Self::with_high_water(ring_bytes, backlog_limit, HIGH_WATER)
    }

    pub fn with_high_water(ring_bytes: usize, backlog_limit: usize, high_water: usize) -> Self {
        Self {
            state: Mutex::new(State { ring: Ring::new(ring_bytes), subscribers: Vec::new(), exit: None }),
            backlog_limit,
            high_water,
            drained: Arc::new(Notify::new()),
        }
    }

    /// Whether the reader may read more: nobody is attached, or someone has caught up.
    pub fn accepts_more(&self) -> bool {
        let state = self.state.lock().expect("output state");
        state.subscribers.is_empty()
            || state.subscribers.iter().any(|subscriber| {
                subscriber.sender.is_closed() || subscriber.backlog.load(Ordering::Acquire) < self.high_water
            })
    }

    /// Resolves once [`Self::accepts_more`]; cancel-safe.
    pub async fn ready(&self) {
        loop {
            // Registered before looking, so a wake-up between the look and the wait is kept;
            // every waiter is woken (stdout and stderr wait at once).
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.accepts_more() {
                return;
            }
            drained.await;
        }
    }

    /// Hands a chunk to the ring and every subscriber, dropping those too far behind.
    pub fn publish(&self, chunk: Chunk) {
        let mut state = self.state.lock().expect("output state");
        let limit = self.backlog_limit;
        state.subscribers.retain(|subscriber| subscriber.send(Event::Data(chunk.clone()), limit));
        state.ring.push(chunk);
    }

    /// Records the exit and ends every subscription with it.
    pub fn finish(&self, exit: Exit) {
        let mut state = self.state.lock().expect("output state");
        for subscriber in state.subscribers.drain(..) {
            let _ = subscriber.sender.send(Event::End(exit.clone()));
        }
        state.exit = Some(exit);
    }

    /// The exit, once the process ended and all its output was published.
    pub fn exit(&self) -> Option<Exit> {
        self.state.lock().expect("output state").exit.clone()
    }

    /// Attaches a subscriber: first the last `replay` bytes, then everything published from now
    /// on, then the end. A process that already ended answers with its replay and its end.
    pub fn subscribe(&self, replay: usize) -> Subscription {
        let (sender, receiver) = mpsc::unbounded_channel();
        let subscriber = Subscriber { sender, backlog: Arc::new(AtomicUsize::new(0)) };
        let backlog = subscriber.backlog.clone();
        let mut state = self.state.lock().expect("output state");
        // The replay fits: it is at most the ring, far below the backlog bound.
        for chunk in state.ring.tail(replay) {
            subscriber.send(Event::Data(chunk), usize::MAX);
        }
        match &state.exit {
            Some(exit) => {
                let _ = subscriber.sender.send(Event::End(exit.clone()));
            }
            None => state.subscribers.push(subscriber),
        }
        Subscription { receiver, backlog, high_water: self.high_water, drained: self.drained.clone(), held: None }
    }

    #[cfg(test)]
    fn subscriber_count(&self) -> usize {
        self.state.lock().unwrap().subscribers.len()
    }
}

/// One client's view of a process's output.
pub struct Subscription {
    receiver: mpsc::UnboundedReceiver<Event>,
    backlog: Arc<AtomicUsize>,
    high_water: usize,
    drained: Arc<Notify>,
    /// An event taken while batching that did not fit the batch.
    held: Option<Event>,
}

impl Subscription {
    /// The next event; `None` after the end (or overflow).
    pub async fn next(&mut self) -> Option<Event> {
        let event = match self.held.take() {
            Some(event) => event,
            None => self.receiver.recv().await?,
        };
        if let Event::Data(chunk) = &event {
            self.consumed(chunk.bytes.len());
        }
        Some(event)
    }

    /// The next event, with the data chunks of the same stream already queued behind it merged
    /// into it, up to `max_bytes`. A FIFO read returns what the pipe holds at that moment (a few
    /// KiB under load); one message per read would cost a gRPC message each.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Option<Event> {
        let event = self.next().await?;
        let Event::Data(first) = event else {
            return Some(event);
        };
        let mut merged: Option<BytesMut> = None;
        let mut size = first.bytes.len();
        while size < max_bytes {
            let Ok(next) = self.receiver.try_recv() else {
                break;
            };
            match next {
                Event::Data(chunk) if chunk.stream == first.stream && size + chunk.bytes.len() <= max_bytes => {
                    self.consumed(chunk.bytes.len());
                    size += chunk.bytes.len();
                    merged.get_or_insert_with(|| BytesMut::from(&first.bytes[..])).extend_from_slice(&chunk.bytes);
                }
                other => {
                    self.held = Some(other);
                    break;
                }
            }
        }
        Some(Event::Data(match merged {
            Some(bytes) => Chunk { stream: first.stream, bytes: bytes.freeze() },
            None => first,
        }))
    }

    /// Takes `bytes` off the backlog, waking a reader paused for this client once it is back
    /// under the high-water mark.
    fn consumed(&self, bytes: usize) {
        let before = self.backlog.fetch_sub(bytes, Ordering::AcqRel);
        if before >= self.high_water && before - bytes < self.high_water {
            self.drained.notify_waiters();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The reader may be paused for this subscriber alone.
        self.receiver.close();
        self.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: Stream, text: &'static str) -> Chunk {
        Chunk { stream, bytes: Bytes::from_static(text.as_bytes()) }
    }

    fn text(chunks: &[Chunk]) -> String {
        chunks.iter().map(|chunk| String::from_utf8_lossy(&chunk.bytes).into_owned()).collect()
    }

    #[test]
    fn the_ring_keeps_the_last_bytes_across_chunk_boundaries() {
        let mut ring = Ring::new(8);
        ring.push(chunk(Stream::Stdout, "abcd"));
        ring.push(chunk(Stream::Stderr, "efgh"));
        ring.push(chunk(Stream::Stdout, "ijk"));
        assert_eq!(ring.len(), 8);
        assert_eq!(text(&ring.tail(100)), "defghijk");
        let tail = ring.tail(5);
        assert_eq!(text(&tail), "ghijk");
        assert_eq!(tail[0].stream, Stream::Stderr, "streams stay apart in the replay");
        assert!(ring.tail(0).is_empty());
    }

    #[tokio::test]
    async fn subscribers_get_replay_then_live_output_then_the_end() {
        let output = Output::new(RING_BYTES, SUBSCRIBER_BACKLOG);
        output.publish(chunk(Stream::Stdout, "before"));
        let mut late = output.subscribe(3);
        let mut none = output.subscribe(0);
        output.publish(chunk(Stream::Stderr, "after"));
        let exit = Exit::from_status(3, String::new());
        output.finish(exit.clone());
        assert_eq!(late.next().await, Some(Event::Data(chunk(Stream::Stdout, "ore"))));
        assert_eq!(late.next().await, Some(Event::Data(chunk(Stream::Stderr, "after"))));
        assert_eq!(late.next().await, Some(Event::End(exit.clone())));
        assert_eq!(late.next().await, None);
        assert_eq!(none.next().await, Some(Event::Data(chunk(Stream::Stderr, "after"))));
        // After the end, a new subscriber still learns the exit.
        let mut after_end = output.subscribe(5);
        assert_eq!(after_end.next().await, Some(Event::Data(chunk(Stream::Stderr, "after"))));
        assert_eq!(after_end.next().await, Some(Event::End(exit)));
    }

    #[tokio::test]
    async fn queued_chunks_of_one_stream_are_batched_up_to_the_limit_keeping_order() {
        let output = Output::new(RING_BYTES, SUBSCRIBER_BACKLOG);
        let mut subscription = output.subscribe(0);
        for text in ["ab", "cd", "ef", "gh"] {
            output.publish(chunk(Stream::Stdout, text));
        }
        output.publish(chunk(Stream::Stderr, "err"));
        output.publish(chunk(Stream::Stdout, "ij"));
        let exit = Exit::from_status(0, String::new());
        output.finish(exit.clone());
        assert_eq!(subscription.next_batch(6).await, Some(Event::Data(chunk(Stream::Stdout, "abcdef"))));
        assert_eq!(subscription.next_batch(6).await, Some(Event::Data(chunk(Stream::Stdout, "gh"))));
        assert_eq!(subscription.next_batch(6).await, Some(Event::Data(chunk(Stream::Stderr, "err"))));
        assert_eq!(subscription.next_batch(6).await, Some(Event::Data(chunk(Stream::Stdout, "ij"))));
        assert_eq!(subscription.next_batch(6).await, Some(Event::End(exit)));
        assert_eq!(subscription.next_batch(6).await, None);
        assert_eq!(subscription.backlog.load(Ordering::Acquire), 0, "every batched byte left the backlog");
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_dropped_while_a_fast_one_gets_everything() {
        let output = Output::new(16, 10);
        let mut slow = output.subscribe(0);
        let mut fast = output.subscribe(0);
        for _ in 0..4 {
            output.publish(chunk(Stream::Stdout, "abcd"));
            assert_eq!(fast.next().await, Some(Event::Data(chunk(Stream::Stdout, "abcd"))));
        }
        assert_eq!(output.subscriber_count(), 1, "the slow one is gone");
        assert_eq!(slow.next().await, Some(Event::Data(chunk(Stream::Stdout, "abcd"))));
        assert_eq!(slow.next().await, Some(Event::Data(chunk(Stream::Stdout, "abcd"))));
        assert_eq!(slow.next().await, Some(Event::Overflow));
        assert_eq!(slow.next().await, None);
    }

    #[tokio::test]
    async fn reading_frees_backlog() {
        let output = Output::new(16, 10);
        let mut reader = output.subscribe(0);
        for _ in 0..10 {
            output.publish(chunk(Stream::Stdout, "abcd"));
            assert!(matches!(reader.next().await, Some(Event::Data(_))));
        }
        assert_eq!(output.subscriber_count(), 1);
    }

    #[tokio::test]
    async fn the_reader_pauses_only_while_every_subscriber_is_behind() {
        let output = Output::with_high_water(16, 100, 8);
        assert!(output.accepts_more(), "nobody attached: never paused");
        let mut fast = output.subscribe(0);
        let slow = output.subscribe(0);
        output.publish(chunk(Stream::Stdout, "abcdefgh"));
        assert!(!output.accepts_more(), "both are 8 bytes behind");
        assert!(matches!(fast.next().await, Some(Event::Data(_))));
        assert!(output.accepts_more(), "the fast one caught up");
        tokio::time::timeout(std::time::Duration::from_secs(1), output.ready()).await.unwrap();
        output.publish(chunk(Stream::Stdout, "abcdefgh"));
        assert!(!output.accepts_more());
        let waiter = output.ready();
        drop(fast);
        drop(slow);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.expect("gone subscribers unpause");
    }

    #[tokio::test]
    async fn both_readers_wake_when_a_subscriber_catches_up() {
        let output = Arc::new(Output::with_high_water(16, 100, 8));
        let mut reader = output.subscribe(0);
        output.publish(chunk(Stream::Stdout, "abcdefgh"));
        // stdout's and stderr's reads wait at once.
        let waiters = tokio::spawn({
            let output = output.clone();
            async move { tokio::join!(output.ready(), output.ready()) }
        });
        tokio::task::yield_now().await;
        assert!(matches!(reader.next().await, Some(Event::Data(_))));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiters).await.expect("both woke").unwrap();
    }

    #[test]
    fn exit_statuses_above_128_are_signals() {
        assert_eq!(Exit::from_status(143, String::new()).signal, 15);
        assert_eq!(Exit::from_status(137, String::new()).code, 137);
        assert_eq!(Exit::from_status(3, String::new()).signal, 0);
        assert_eq!(Exit::from_status(255, String::new()).signal, 0);
    }
}
