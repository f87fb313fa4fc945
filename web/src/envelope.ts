// Hand-written codecs of the tether.v1 envelope messages
// (proto/tether/v1/tether.proto), so that the runtime needs only
// @bufbuild/protobuf's wire encoding, not its reflection.
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Code, type ErrorDetail, TetherError } from "./errors.js";
import { Metadata } from "./metadata.js";

/** Encodes tether.v1.Open. */
export function encodeOpen(procedure: string, md: Metadata, timeoutMicros: number): Uint8Array {
  const w = new BinaryWriter();
  w.tag(1, WireType.LengthDelimited).string(procedure);
  writeMetadata(w, 2, md);
  if (timeoutMicros > 0) w.tag(3, WireType.Varint).uint64(timeoutMicros);
  return w.finish();
}

/** Encodes tether.v1.Reset{status{code, message}}. */
export function encodeReset(code: Code, message: string): Uint8Array {
  const w = new BinaryWriter();
  w.tag(1, WireType.LengthDelimited).fork();
  if (code !== 0) w.tag(1, WireType.Varint).int32(code);
  if (message) w.tag(2, WireType.LengthDelimited).string(message);
  w.join();
  return w.finish();
}

function writeMetadata(w: BinaryWriter, field: number, md: Metadata): void {
  for (const [k, vs] of md.entries()) {
    w.tag(field, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).string(k);
    for (const v of vs) w.tag(2, WireType.LengthDelimited).string(v);
    w.join();
  }
}

/**
 * The cost of a metadata-carrying payload (docs/PROTOCOL.md, section 9):
 * its encoded size plus 32 bytes per entry and per value (an entry without
 * values counts as one).
 */
export function headerCost(payloadLen: number, md: Metadata): number {
  let n = payloadLen;
  for (const [, vs] of md.entries()) n += 32 + 32 * Math.max(1, vs.length);
  return n;
}

/** The status of an END or RESET: ok, or the error. */
export interface Status {
  code: Code;
  message: string;
  details: ErrorDetail[];
}

function readMetadataEntry(r: BinaryReader, md: Metadata, counter: { n: number }): void {
  const end = r.uint32() + r.pos;
  let key = "";
  const values: string[] = [];
  while (r.pos < end) {
    const [f, wt] = r.tag();
    if (f === 1 && wt === WireType.LengthDelimited) key = r.string();
    else if (f === 2 && wt === WireType.LengthDelimited) values.push(r.string());
    else r.skip(wt);
  }
  if (values.length === 0) values.push("");
  counter.n += 32 + 32 * values.length;
  for (const v of values) md.append(key, v);
}

function readStatus(r: BinaryReader): Status {
  const end = r.uint32() + r.pos;
  const st: Status = { code: Code.OK, message: "", details: [] };
  while (r.pos < end) {
    const [f, wt] = r.tag();
    if (f === 1 && wt === WireType.Varint) st.code = r.int32();
    else if (f === 2 && wt === WireType.LengthDelimited) st.message = r.string();
    else if (f === 3 && wt === WireType.LengthDelimited) {
      const dend = r.uint32() + r.pos;
      const d: ErrorDetail = { typeUrl: "", value: new Uint8Array(0) };
      while (r.pos < dend) {
        const [g, gt] = r.tag();
        if (g === 1 && gt === WireType.LengthDelimited) d.typeUrl = r.string();
        else if (g === 2 && gt === WireType.LengthDelimited) d.value = r.bytes().slice();
        else r.skip(gt);
      }
      st.details.push(d);
    } else r.skip(wt);
  }
  return st;
}

/** Decodes tether.v1.Headers; cost is the payload's cost (section 9). */
export function decodeHeaders(b: Uint8Array): { md: Metadata; cost: number } {
  const r = new BinaryReader(b);
  const md = new Metadata();
  const c = { n: b.length };
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === 1 && wt === WireType.LengthDelimited) readMetadataEntry(r, md, c);
    else r.skip(wt);
  }
  return { md, cost: c.n };
}

/** Decodes tether.v1.End. */
export function decodeEnd(b: Uint8Array): { status: Status; trailers: Metadata; cost: number } {
  const r = new BinaryReader(b);
  const trailers = new Metadata();
  let status: Status = { code: Code.OK, message: "", details: [] };
  const c = { n: b.length };
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === 1 && wt === WireType.LengthDelimited) status = readStatus(r);
    else if (f === 2 && wt === WireType.LengthDelimited) readMetadataEntry(r, trailers, c);
    else r.skip(wt);
  }
  return { status, trailers, cost: c.n };
}

/** Decodes tether.v1.Reset into the error it stands for. */
export function decodeReset(b: Uint8Array): TetherError {
  const r = new BinaryReader(b);
  let status: Status = { code: Code.OK, message: "", details: [] };
  let unprocessed = false;
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === 1 && wt === WireType.LengthDelimited) status = readStatus(r);
    else if (f === 2 && wt === WireType.Varint) unprocessed = r.bool();
    else r.skip(wt);
  }
  if (status.code === Code.OK) return new TetherError(Code.Canceled, "tether: stream reset by peer", { unprocessed });
  return new TetherError(status.code, status.message, { details: status.details, unprocessed });
}

/** Decodes tether.v1.GoAway. */
export function decodeGoAway(b: Uint8Array): { lastStreamId: number; code: Code; message: string } {
  const r = new BinaryReader(b);
  const g = { lastStreamId: 0, code: Code.OK as Code, message: "" };
  while (r.pos < r.len) {
    const [f, wt] = r.tag();
    if (f === 1 && wt === WireType.Varint) g.lastStreamId = r.uint32();
    else if (f === 2 && wt === WireType.Varint) g.code = r.int32();
    else if (f === 3 && wt === WireType.LengthDelimited) g.message = r.string();
    else r.skip(wt);
  }
  return g;
}
