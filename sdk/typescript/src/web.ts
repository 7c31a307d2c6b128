// @berth/sdk/web for browsers (and any runtime with fetch and streams): gRPC-web over fetch.
// It must not import @connectrpc/connect-node or any `node:` module.

import { createGrpcWebTransport, type GrpcWebTransportOptions } from "@connectrpc/connect-web";
import { bearerTokenInterceptor, createBerthClientFromTransport, type BerthClient, type BerthToken } from "./client.js";

export * from "./common.js";

/**
 * Options of {@link createBerthClient} in browsers: `baseUrl`, optionally `transport: "grpc-web"`
 * (the only transport a browser can speak to berth with), `token` (a bearer token, or a function
 * giving the current one, sent as the `authorization` header; berth's CORS allows it), and any
 * option of connect-web's `createGrpcWebTransport` (`interceptors`, `defaultTimeoutMs`, `fetch`,
 * ...). TLS is the browser's: an `https://` baseUrl needs a certificate the browser trusts.
 */
export type BerthWebClientOptions = { transport?: "grpc-web"; token?: BerthToken } & GrpcWebTransportOptions;

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
  const { transport, token, ...rest } = options;
  if (transport !== undefined && transport !== "grpc-web") {
    throw new Error(`@berth/sdk/web supports only the "grpc-web" transport, not ${JSON.stringify(transport)}`);
  }
  const interceptors = token === undefined ? rest.interceptors : [bearerTokenInterceptor(token), ...(rest.interceptors ?? [])];
  return createBerthClientFromTransport(createGrpcWebTransport({ ...rest, interceptors }));
}
