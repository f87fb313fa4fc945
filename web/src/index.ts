// @tetherrpc/tether: the tether.v1 client for browsers and Node.
export { TetherClient, SUBPROTOCOL } from "./client.js";
export type { CallOptions, ClientOptions, MethodInfo, RawStream, WebSocketConstructor } from "./client.js";
export { createClient, methodInfo } from "./typed.js";
export type { BidiStream, Client } from "./typed.js";
export { Code, codeName, codeOf, TetherError } from "./errors.js";
export type { ErrorDetail } from "./errors.js";
export { Metadata, isPortableKey } from "./metadata.js";
export type { MetadataInit } from "./metadata.js";
export { CLOSE_CLIENT_PROTOCOL_ERROR } from "./conn.js";
export type { WebSocketLike } from "./conn.js";
