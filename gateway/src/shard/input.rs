//! A connection's read buffer: how much each read asks for, what the
//! buffer keeps between reads, and the read itself (cancel-safe). A quiet
//! car holds no buffer, and a car that stalls in a packet about what it
//! sent.

use std::io;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt};

use super::Shard;
#[cfg(doc)]
use super::socket::CarSocket;

/// Bytes asked for when the car has been quiet: the buffer is held while
/// the read waits, and most connections wait most of the time. A small
/// packet arrives whole in the next read, once its fixed header says how
/// many bytes it needs.
pub(super) const READ_IDLE: usize = 32;
/// Bytes asked for while reads come back full (a busy car).
pub(super) const READ_BUSY: usize = 4096;
/// Most bytes read at once for a large partial packet.
const READ_MAX: usize = 64 * 1024;
/// A partial packet's buffer grows by at most what it holds per read, and
/// by at least this: a car that begins a large packet and stalls holds
/// about what it sent (and at most this more), not the declared length;
/// a packet of up to this size still arrives in one more read.
const GROW_FLOOR: usize = 1024;

/// Gives back what `input`'s buffer holds beyond its bytes: all of it
/// when it is empty (a quiet car holds no buffer), and the rest of a
/// larger buffer when it is over twice what a partial packet needs. A
/// busy car's buffer may stay at [`READ_BUSY`], as its next read comes
/// soon; any other's at most twice its bytes or [`GROW_FLOOR`], so that a
/// car that stalls in a packet holds about what it sent, whatever size of
/// read brought it.
pub(super) fn fit(input: &mut BytesMut, busy: bool) {
    let floor = if busy { READ_BUSY } else { GROW_FLOOR };
    if input.is_empty() {
        *input = BytesMut::new();
    } else if input.capacity() > 2 * input.len().max(floor) {
        *input = BytesMut::from(&input[..]);
    }
}

/// How many bytes the next read asks for: the rest of a frame (but at
/// most what the buffer holds already, or [`GROW_FLOOR`], so that a large
/// packet's buffer grows with what arrives) plus a little more. A
/// read that fills that too shows the car sending faster than one packet
/// per read, so reads grow to [`READ_BUSY`] until one comes back short. A
/// car that publishes now and then thus never holds more than
/// [`READ_IDLE`] bytes while it is quiet, nor takes [`READ_BUSY`] bytes
/// even briefly (short-lived 4 KiB buffers cost 34 bytes per connection in
/// heap fragmentation in the `idle_memory` test).
pub(super) fn read_size(shard: &Shard, input: &BytesMut, busy: bool) -> usize {
    match shard.decoder.frame_length(input) {
        Ok(Some(frame)) if frame > input.len() => {
            let more = if busy { READ_BUSY } else { READ_IDLE };
            let rest = (frame - input.len()).min(input.len().max(GROW_FLOOR));
            (rest + more).min(READ_MAX)
        }
        _ if busy => READ_BUSY,
        _ => READ_IDLE,
    }
}

/// Reads up to `want` bytes onto the end of `input`.
///
/// Cancel-safe: the read races the connection's control block and is
/// dropped when that wins (a downlink message to write, a deadline).
/// `input` then keeps exactly what it had: the streams read here
/// ([`CarSocket`], and rustls over it) take bytes only in a read that
/// completes, and the room made for the read is cut back when the future
/// is dropped.
pub(super) async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    input: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    /// Cuts the zero-filled room for the read back to what was read, also
    /// when the read future is dropped before it completes.
    struct Room<'a> {
        input: &'a mut BytesMut,
        keep: usize,
    }
    impl Drop for Room<'_> {
        fn drop(&mut self) {
            self.input.truncate(self.keep);
        }
    }
    let start = input.len();
    input.resize(start + want, 0);
    let mut room = Room { input, keep: start };
    let result = match room.input.get_mut(start..) {
        Some(tail) => stream.read(tail).await,
        None => Ok(0),
    };
    room.keep = start + *result.as_ref().unwrap_or(&0);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::pin::pin;
    use std::task::Poll;

    use futures_lite::future;

    use super::*;

    /// A stalled packet's first bytes keep about their own size, whatever
    /// read brought them; a busy car keeps its read buffer, and a quiet
    /// one none.
    #[test]
    fn a_stalled_packet_keeps_about_what_it_sent() {
        let mut input = BytesMut::zeroed(READ_BUSY);
        input.truncate(100);
        fit(&mut input, false);
        assert!(input.capacity() <= 2 * GROW_FLOOR, "{}", input.capacity());
        assert_eq!(&input[..], &[0; 100][..]);

        let mut busy = BytesMut::zeroed(READ_BUSY);
        busy.truncate(100);
        fit(&mut busy, true);
        assert_eq!(busy.capacity(), READ_BUSY);

        let mut large = BytesMut::zeroed(5 * GROW_FLOOR);
        large.truncate(3 * GROW_FLOOR);
        fit(&mut large, false);
        assert_eq!(large.capacity(), 5 * GROW_FLOOR, "within twice its bytes");

        busy.clear();
        fit(&mut busy, true);
        assert_eq!(busy.capacity(), 0);
    }

    /// A socket with nothing to read yet.
    struct Quiet;

    impl AsyncRead for Quiet {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    #[test]
    fn a_read_dropped_for_the_control_block_leaves_the_input_as_it_was() {
        let mut input = BytesMut::from(&b"\x30\x05ab"[..]);
        let mut quiet = Quiet;
        {
            let read = read_some(&mut quiet, &mut input, 4096);
            assert!(future::block_on(future::poll_once(pin!(read))).is_none());
        }
        // No zero-filled room is left behind for the decoder to choke on.
        assert_eq!(&input[..], b"\x30\x05ab");
        let mut rest: &[u8] = b"cde";
        assert_eq!(
            future::block_on(read_some(&mut rest, &mut input, 4096)).unwrap(),
            3
        );
        assert_eq!(&input[..], b"\x30\x05abcde");
    }
}
