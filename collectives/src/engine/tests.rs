//! The driver's checks on incoming frames, with a transport that slips
//! foreign frames in front of the real ones.

use std::thread;

use crossbeam_channel::Receiver;

use super::*;
use crate::local::LocalHub;
use crate::transport::Consume;

/// Wraps a transport and delivers `inject` (header, payload) before the
/// first real frame.
struct Injecting {
    inner: Box<dyn Transport>,
    inject: Vec<(FrameHeader, Vec<u8>)>,
}

impl Transport for Injecting {
    unsafe fn send(
        &mut self,
        header: FrameHeader,
        data: *const u8,
        len: usize,
    ) -> Result<(), CollectiveError> {
        unsafe { self.inner.send(header, data, len) }
    }

    fn recv(
        &mut self,
        deadline: Instant,
        interrupt: &Receiver<u32>,
        consume: &mut Consume<'_>,
    ) -> Result<Delivery, CollectiveError> {
        if let Some((header, payload)) = self.inject.pop() {
            return consume(&header, &payload);
        }
        self.inner.recv(deadline, interrupt, consume)
    }

    fn finish(&mut self, deadline: Instant) -> Result<(), CollectiveError> {
        self.inner.finish(deadline)
    }

    fn abort(&mut self, notice: FrameHeader) {
        self.inner.abort(notice)
    }
}

/// Two engines of generation 3; rank 1 first sees `inject`.
fn pair(inject: Vec<(FrameHeader, Vec<u8>)>) -> (Engine, Engine) {
    let hub = LocalHub::new();
    let (_, t0) = hub.join_transport(3, &[0, 1], 0).unwrap();
    let (_, t1) = hub.join_transport(3, &[0, 1], 1).unwrap();
    let t1 = Box::new(Injecting { inner: t1, inject });
    let config = CommConfig {
        timeout: Duration::from_secs(2),
        ..CommConfig::default()
    };
    (
        Engine::new(0, 2, 3, t0, config.clone()),
        Engine::new(1, 2, 3, t1, config),
    )
}

fn all_reduce_pair(mut a: Engine, mut b: Engine) -> (Result<Vec<f32>, CollectiveError>, Engine) {
    thread::scope(|s| {
        let h = s.spawn(move || {
            let mut x = vec![1.0f32; 10];
            let _ = a.all_reduce(&mut x, ReduceOp::Sum);
        });
        let mut y = vec![2.0f32; 10];
        let r = b.all_reduce(&mut y, ReduceOp::Sum).map(|()| y);
        h.join().unwrap();
        (r, b)
    })
}

#[test]
fn older_generation_frames_are_dropped_and_counted() {
    let stale = FrameHeader::data(2, 0, 0, 20);
    let payload = bytemuck::cast_slice(&[1000.0f32; 5]).to_vec();
    let (a, b) = pair(vec![(stale, payload.clone()), (stale, payload)]);
    let (result, b) = all_reduce_pair(a, b);
    assert_eq!(result.unwrap(), vec![3.0; 10], "stale data never mixed in");
    assert_eq!(b.stats().stale_frames, 2);
}

#[test]
fn newer_generation_wrong_op_and_wrong_length_are_rejected() {
    let cases = [
        (FrameHeader::data(4, 0, 0, 20), 20),
        (FrameHeader::data(3, 7, 0, 20), 20),
        (FrameHeader::data(3, 0, 1, 20), 20),
        (FrameHeader::data(3, 0, 0, 8), 8),
    ];
    for (header, len) in cases {
        let (a, b) = pair(vec![(header, vec![0u8; len])]);
        let (result, mut b) = all_reduce_pair(a, b);
        assert!(
            matches!(result, Err(CollectiveError::BadFrame { rank: 0, .. })),
            "{header:?}: {result:?}"
        );
        // A communicator that saw a bad frame is aborted for good.
        assert!(matches!(
            b.barrier(),
            Err(CollectiveError::Aborted { generation: 3 })
        ));
    }
}

#[test]
fn abort_notice_names_the_lost_rank() {
    let notice = FrameHeader {
        generation: 3,
        op: 0,
        transfer: 0,
        kind: FrameKind::Abort,
        len: 0,
    };
    let (a, b) = pair(vec![(notice, Vec::new())]);
    let (result, _) = all_reduce_pair(a, b);
    assert!(matches!(result, Err(CollectiveError::PeerLost { rank: 0 })));
}

#[test]
fn misaligned_payloads_still_reduce() {
    let mut dst = vec![1.0f32; 4];
    let src: Vec<u8> = std::iter::once(0u8)
        .chain(
            bytemuck::cast_slice::<f32, u8>(&[1.0, 2.0, 3.0, 4.0])
                .iter()
                .copied(),
        )
        .collect();
    combine_bytes(
        Combine::Sum,
        Elem::F32,
        bytemuck::cast_slice_mut(&mut dst),
        &src[1..],
    );
    assert_eq!(dst, vec![2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn streaming_copy_matches_plain_copy_at_any_alignment_and_length() {
    let src: Vec<u8> = (0..(STREAM_COPY_MIN * 2 + 77))
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    for (offset, len) in [
        (0, STREAM_COPY_MIN),
        (1, STREAM_COPY_MIN + 63),
        (13, STREAM_COPY_MIN * 2),
        (5, 100),
    ] {
        let mut dst = vec![0u8; len + 32];
        copy_piece(&mut dst[offset..offset + len], &src[3..3 + len]);
        assert_eq!(&dst[offset..offset + len], &src[3..3 + len]);
        assert!(dst[..offset].iter().all(|&b| b == 0));
        assert!(dst[offset + len..].iter().all(|&b| b == 0));
    }
}
