// The frame codec of tether.v1 (docs/PROTOCOL.md, sections 2-4): a 10-byte
// header (type, flags, stream id, length; big-endian) and a payload. A
// WebSocket message carries one or more whole frames.

/** Frame types (docs/PROTOCOL.md, section 4). */
export const FrameType = {
  Open: 1,
  Headers: 2,
  Message: 3,
  HalfClose: 4,
  End: 5,
  Reset: 6,
  Window: 7,
  Ping: 8,
  GoAway: 9,
} as const;

/** The MORE flag of MESSAGE: another fragment of this message follows. */
export const FLAG_MORE = 0x1;
/** The ACK flag of PING. */
export const FLAG_ACK = 0x1;
/** Length of a frame header. */
export const HEADER_LEN = 10;
/** Largest frame payload. */
export const MAX_PAYLOAD = 65536;
/** Largest WebSocket message a peer may send. */
export const MAX_WS_MESSAGE = 1 << 20;
/** Credit each side of a new stream starts with, in each direction. */
export const INITIAL_WINDOW = 65536;
/** Credit a MESSAGE frame costs on top of its payload. */
export const FRAME_OVERHEAD = 16;
/** Largest stream id. */
export const MAX_STREAM_ID = 2 ** 31 - 1;
/** Largest send credit. */
export const MAX_CREDIT = 2 ** 31 - 1;

/** One frame; payload is a view into the message it arrived in. */
export interface Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Uint8Array;
}

/** A violation of the protocol by the peer: the connection is closed. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super("tether: protocol error: " + message);
    this.name = "ProtocolError";
  }
}

const typeNames = ["0", "OPEN", "HEADERS", "MESSAGE", "HALF_CLOSE", "END", "RESET", "WINDOW", "PING", "GOAWAY"];

/** The name of a frame type, for messages. */
export function typeName(t: number): string {
  return typeNames[t] ?? `type ${t}`;
}

/** Encodes one frame. */
export function encodeFrame(type: number, flags: number, streamId: number, payload?: Uint8Array): Uint8Array {
  const n = payload ? payload.length : 0;
  const b = new Uint8Array(HEADER_LEN + n);
  b[0] = type;
  b[1] = flags;
  const v = new DataView(b.buffer);
  v.setUint32(2, streamId);
  v.setUint32(6, n);
  if (payload) b.set(payload, HEADER_LEN);
  return b;
}

/** Encodes a WINDOW frame granting n bytes. */
export function encodeWindow(streamId: number, n: number): Uint8Array {
  const p = new Uint8Array(4);
  new DataView(p.buffer).setUint32(0, n);
  return encodeFrame(FrameType.Window, 0, streamId, p);
}

/**
 * Parses the frames of one WebSocket message, validating each as
 * docs/PROTOCOL.md section 4 (step 1) says. Throws ProtocolError.
 */
export function parseFrames(msg: Uint8Array): Frame[] {
  const frames: Frame[] = [];
  const v = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
  let off = 0;
  while (off < msg.length) {
    if (msg.length - off < HEADER_LEN) throw new ProtocolError("truncated frame header");
    const type = msg[off];
    const flags = msg[off + 1];
    const streamId = v.getUint32(off + 2);
    const len = v.getUint32(off + 6);
    if (len > MAX_PAYLOAD) throw new ProtocolError(`frame payload of ${len} bytes`);
    if (msg.length - off - HEADER_LEN < len) throw new ProtocolError("truncated frame payload");
    const payload = msg.subarray(off + HEADER_LEN, off + HEADER_LEN + len);
    off += HEADER_LEN + len;
    if (type >= FrameType.Open && type <= FrameType.GoAway) {
      const conn = type === FrameType.Ping || type === FrameType.GoAway;
      const name = typeName(type);
      if (conn && streamId !== 0) throw new ProtocolError(`${name} on stream ${streamId}`);
      if (!conn && streamId === 0) throw new ProtocolError(`${name} on stream 0`);
      const allowed = type === FrameType.Message ? FLAG_MORE : type === FrameType.Ping ? FLAG_ACK : 0;
      if (flags & ~allowed) throw new ProtocolError(`${name} with flags ${flags}`);
      if (type === FrameType.Ping && len !== 8) throw new ProtocolError(`PING of ${len} bytes`);
      if (type === FrameType.Window && len !== 4) throw new ProtocolError(`WINDOW of ${len} bytes`);
      if (type === FrameType.HalfClose && len !== 0) throw new ProtocolError(`HALF_CLOSE of ${len} bytes`);
    }
    frames.push({ type, flags, streamId, payload });
  }
  return frames;
}
