// @berth/sdk/web for browsers (and any runtime with fetch and streams): gRPC-web over fetch.
// It must not import @connectrpc/connect-node or any `node:` module.

import { createGrpcWebTransport, type GrpcWebTransportOptions } from "@connectrpc/connect-web";
import { createBerthClientFromTransport, type BerthClient } from "./client.js";

export * from "./common.js";

/**
 * Options of {@link createBerthClient} in browsers: `baseUrl`, optionally `transport: "grpc-web"`
 * (the only transport a browser can speak to berth with), and any option of connect-web's
 * `createGrpcWebTransport` (`interceptors`, `defaultTimeoutMs`, `fetch`, ...).
 */
export type BerthWebClientOptions = { transport?: "grpc-web" } & GrpcWebTransportOptions;

/**
 * Creates clients of berth's WorkspaceService (`workspaces`), FilesystemService (`files`) and
 * ProcessService (`processes`) over gRPC-web (binary format). Berth must allow the page's origin
 * (it serves grpc-web and CORS on its gRPC port).
 *
 * ```ts
 * import { createBerthClient } from "@berth/sdk/web";
 * const berth = createBerthClient({ baseUrl: "http://127.0.0.1:50051" });
 * ```
 */
export function createBerthClient(options: BerthWebClientOptions): BerthClient {
  const { transport, ...rest } = options;
  if (transport !== undefined && transport !== "grpc-web") {
    throw new Error(`@berth/sdk/web supports only the "grpc-web" transport, not ${JSON.stringify(transport)}`);
  }
  return createBerthClientFromTransport(createGrpcWebTransport(rest));
}
