"""Video inputs: the per-image flow's tools run frame by frame, with tracking, fail-closed.

A video is **one unit per task**: one input, one manifest record, one output,
exactly like an image, so it shards, checkpoints, settles and publishes through
the same drivers (:func:`airflow_privacy.core.flow.steps_for` picks the video
steps from the record's ``kind``). It is not split into segments because
tracking needs the frames in order (a track that crosses a segment boundary
would lose its hold and its confirmation), because a verified video must be the
bytes that are published (joining verified segments re-muxes them into new
bytes that were never verified), and because quarantine is all-or-nothing per
video anyway. Memory stays bounded whatever the length: frames are decoded,
anonymized, encoded and verified one at a time (``container``); only the
compressed input and output bytes are held whole. Parallelism comes from the
shards (many videos), not from within one.

* ``formats``   which names are videos, and what they are published as (mp4)
* ``container`` probing, frame-by-frame decoding, H.264 encoding, lossless remux (PyAV)
* ``tracks``    ByteTrack over per-frame detections; confirmation per track; per-frame plan
* ``steps``     the flow's steps for a video: probe, find, anonymize, verify
"""
