// Package wire is the replication stream's wire format, internal to
// replicate: the format is versioned on the wire, its Go API is not frozen.
//
// A stream starts with a header line naming the format and its version,
// Magic + " " + version + "\n", e.g. "resilmail-stream 3\n". Frames
// follow, each as
//
//	type    uint8   FrameChange, FrameHeartbeat, FrameError or FrameBody
//	length  uint32  payload length
//	crc     uint32  CRC-32C (Castagnoli) of type, length and payload
//	payload [length]byte
//
// with integers big-endian. A change frame's payload is the change's
// [resilmail.Change.MarshalBinary]; a heartbeat's is the primary's durable
// position and epoch as uvarints, then (from version 2) the primary's clock
// as int64 Unix nanoseconds; an error frame's is UTF-8 text; a body frame's
// (from version 3) is the body's SHA-256 digest followed by the body.
//
// A version 3 stream may carry a body frame before the change that appends
// it, so that the replica need not fetch small bodies separately, and ends
// every batch of changes with a heartbeat, so that the replica knows where
// to make what it received durable and acknowledge it (in version 2, where
// its read buffer runs empty). A primary writes version 3 only to a
// replica that asks for it, and version 2 otherwise.
//
// # Goroutines
//
// None: a [Writer] and a [Reader] each belong to one goroutine at a time.
package wire
