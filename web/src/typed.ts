// Typed clients from protobuf-es service descriptors: createClient(EchoService, client)
// gives client.say({ text }), for await (const m of client.countdown({ count })),
// client.collect(requests) and client.chat().
import {
  create, fromBinary, toBinary,
  type DescMessage, type DescMethod, type DescMethodBiDiStreaming, type DescMethodClientStreaming,
  type DescMethodServerStreaming, type DescMethodUnary, type DescService, type MessageInitShape, type MessageShape,
} from "@bufbuild/protobuf";
import type { CallOptions, MethodInfo, RawStream, TetherClient } from "./client.js";
import type { Metadata } from "./metadata.js";

/** A bidirectional stream of typed messages. */
export interface BidiStream<I extends DescMessage, O extends DescMessage> extends AsyncIterable<MessageShape<O>> {
  /** Sends one request (waits for flow-control credit). */
  send(req: MessageInitShape<I>): Promise<void>;
  /** Half-closes: the server's receive sees the end of requests. */
  closeSend(): Promise<void>;
  /** The next response, or null at the end. */
  receive(): Promise<MessageShape<O> | null>;
  /** Resolves with the response headers. */
  header(): Promise<Metadata>;
  /** The trailers, once the stream has ended. */
  trailer(): Metadata | undefined;
  /** Cancels the stream (RESET canceled) unless it has ended. */
  cancel(): void;
}

/** The typed client of a service. */
export type Client<S extends DescService> = {
  [P in keyof S["method"]]:
    S["method"][P] extends DescMethodUnary<infer I, infer O> ? (req: MessageInitShape<I>, opts?: CallOptions) => Promise<MessageShape<O>>
    : S["method"][P] extends DescMethodServerStreaming<infer I, infer O> ? (req: MessageInitShape<I>, opts?: CallOptions) => AsyncIterable<MessageShape<O>>
    : S["method"][P] extends DescMethodClientStreaming<infer I, infer O> ? (reqs: AsyncIterable<MessageInitShape<I>> | Iterable<MessageInitShape<I>>, opts?: CallOptions) => Promise<MessageShape<O>>
    : S["method"][P] extends DescMethodBiDiStreaming<infer I, infer O> ? (opts?: CallOptions) => BidiStream<I, O>
    : never;
};

/** What the client needs to know about a method, from its descriptor. */
export function methodInfo(m: DescMethod): MethodInfo {
  return { procedure: `/${m.parent.typeName}/${m.name}`, kind: m.methodKind, idempotency: m.idempotency };
}

function encoder<I extends DescMessage>(schema: I): (init: MessageInitShape<I>) => Uint8Array {
  return (init) => toBinary(schema, create(schema, init));
}

async function* encodeAll<I extends DescMessage>(schema: I, reqs: AsyncIterable<MessageInitShape<I>> | Iterable<MessageInitShape<I>>): AsyncGenerator<Uint8Array> {
  const enc = encoder(schema);
  for await (const r of reqs) yield enc(r as MessageInitShape<I>);
}

/** Creates the typed client of service over a TetherClient. */
export function createClient<S extends DescService>(service: S, client: TetherClient): Client<S> {
  const out: Record<string, unknown> = {};
  for (const m of service.methods) {
    const info = methodInfo(m);
    const enc = encoder(m.input);
    const dec = (b: Uint8Array) => fromBinary(m.output, b);
    switch (m.methodKind) {
      case "unary":
        out[m.localName] = async (req: MessageInitShape<DescMessage>, opts?: CallOptions) => dec(await client.unary(info, enc(req), opts));
        break;
      case "server_streaming":
        out[m.localName] = (req: MessageInitShape<DescMessage>, opts?: CallOptions) => ({
          async *[Symbol.asyncIterator]() {
            for await (const b of client.serverStream(info, enc(req), opts)) yield dec(b);
          },
        });
        break;
      case "client_streaming":
        out[m.localName] = async (reqs: AsyncIterable<MessageInitShape<DescMessage>>, opts?: CallOptions) =>
          dec(await client.clientStream(info, encodeAll(m.input, reqs), opts));
        break;
      case "bidi_streaming":
        out[m.localName] = (opts?: CallOptions) => bidi(client.stream(info, opts), enc, dec);
        break;
    }
  }
  return out as Client<S>;
}

function bidi<I extends DescMessage, O extends DescMessage>(
  raw: Promise<RawStream>,
  enc: (m: MessageInitShape<I>) => Uint8Array,
  dec: (b: Uint8Array) => MessageShape<O>,
): BidiStream<I, O> {
  let s: RawStream | undefined;
  raw.then((r) => (s = r), () => {});
  const receive = async () => {
    const b = await (await raw).receive();
    return b === null ? null : dec(b);
  };
  return {
    send: async (req) => (await raw).send(enc(req)),
    closeSend: async () => (await raw).closeSend(),
    receive,
    header: async () => (await raw).header(),
    trailer: () => s?.trailer(),
    cancel: () => {
      raw.then((r) => r.cancel(), () => {});
    },
    async *[Symbol.asyncIterator]() {
      let done = false;
      try {
        for (let m = await receive(); m !== null; m = await receive()) yield m;
        done = true;
      } finally {
        if (!done) (await raw.catch(() => undefined))?.cancel();
      }
    },
  };
}
