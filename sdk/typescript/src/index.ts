// @berth/sdk for Node.js: gRPC (HTTP/2) and gRPC-web transports over Node's http modules.
// Browsers use `@berth/sdk/web`, which never imports Node modules.

import { createGrpcTransport, createGrpcWebTransport, type GrpcTransportOptions, type GrpcWebTransportOptions } from "@connectrpc/connect-node";
import { bearerTokenInterceptor, createBerthClientFromTransport, type BerthClient, type BerthToken } from "./client.js";

export * from "./common.js";

// connect-node's grpc-web options require `httpVersion`; berth makes it optional (default "1.1").
type OptionalHttpVersion<T> = T extends { httpVersion: infer V } ? Omit<T, "httpVersion"> & { httpVersion?: V } : T;

/**
 * Authentication and TLS settings of {@link createBerthClient}.
 */
export interface BerthSecurityOptions {
  /** Bearer token sent with every call (`berth token create` makes them), or a function giving it. */
  token?: BerthToken;
  /**
   * PEM CA certificate(s) to trust for an `https://` baseUrl, instead of Node's default CAs (for
   * a server whose certificate a private CA signed). Added to `nodeOptions.ca`.
   */
  ca?: string | Buffer | Array<string | Buffer>;
}

/** Options of {@link createBerthClient} for gRPC over HTTP/2 (h2c for `http://`, TLS for `https://` URLs). */
export type BerthGrpcClientOptions = { transport: "grpc" } & BerthSecurityOptions & GrpcTransportOptions;

/** Options of {@link createBerthClient} for gRPC-web, over HTTP/1.1 unless `httpVersion` says "2". */
export type BerthGrpcWebClientOptions = { transport: "grpc-web" } & BerthSecurityOptions &
  OptionalHttpVersion<GrpcWebTransportOptions>;

/**
 * Options of {@link createBerthClient}: `baseUrl` (for example `http://127.0.0.1:50051` or
 * `https://berth.internal:50051`), the `transport`, `token` and `ca` ({@link BerthSecurityOptions}),
 * and any option of connect-node's `createGrpcTransport` / `createGrpcWebTransport`
 * (`interceptors`, `defaultTimeoutMs`, `nodeOptions`, ...).
 */
export type BerthClientOptions = BerthGrpcClientOptions | BerthGrpcWebClientOptions;

/**
 * Creates clients of berth's WorkspaceService (`workspaces`), FilesystemService (`files`) and
 * ProcessService (`processes`) for Node.js.
 *
 * ```ts
 * const berth = createBerthClient({ baseUrl: "http://127.0.0.1:50051", transport: "grpc" });
 * const { workspace } = await berth.workspaces.getWorkspace({ workspaceId: "bot-1" });
 *
 * // A berth with tokens and TLS from a private CA:
 * const secure = createBerthClient({
 *   baseUrl: "https://berth.internal:50051",
 *   transport: "grpc",
 *   token: process.env.BERTH_TOKEN,
 *   ca: readFileSync("/etc/berth/ca.pem"),
 * });
 * ```
 */
export function createBerthClient(options: BerthClientOptions): BerthClient {
  switch (options.transport) {
    case "grpc": {
      const { transport: _, token, ca, ...rest } = options;
      const secured = secure(rest, token, ca);
      return createBerthClientFromTransport(createGrpcTransport(secured), { canStreamRequests: true });
    }
    case "grpc-web": {
      const { transport: _, httpVersion, token, ca, ...rest } = options;
      const secured = secure(rest, token, ca);
      return createBerthClientFromTransport(
        createGrpcWebTransport({ ...secured, httpVersion: httpVersion ?? "1.1" } as GrpcWebTransportOptions),
      );
    }
    default:
      throw new Error(`unknown berth transport ${JSON.stringify((options as { transport: unknown }).transport)}: use "grpc" or "grpc-web"`);
  }
}

/** Transport options with the token's interceptor first and the CA in the Node options. */
function secure<T extends { interceptors?: GrpcTransportOptions["interceptors"]; nodeOptions?: object }>(
  options: T,
  token: BerthToken | undefined,
  ca: BerthSecurityOptions["ca"],
): T {
  const interceptors = token === undefined ? options.interceptors : [bearerTokenInterceptor(token), ...(options.interceptors ?? [])];
  const nodeOptions = ca === undefined ? options.nodeOptions : { ...options.nodeOptions, ca };
  return { ...options, interceptors, nodeOptions };
}
