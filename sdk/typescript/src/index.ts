// @berth/sdk for Node.js: gRPC (HTTP/2) and gRPC-web transports over Node's http modules.
// Browsers use `@berth/sdk/web`, which never imports Node modules.

import { createGrpcTransport, createGrpcWebTransport, type GrpcTransportOptions, type GrpcWebTransportOptions } from "@connectrpc/connect-node";
import { createBerthClientFromTransport, type BerthClient } from "./client.js";

export * from "./common.js";

// connect-node's grpc-web options require `httpVersion`; berth makes it optional (default "1.1").
type OptionalHttpVersion<T> = T extends { httpVersion: infer V } ? Omit<T, "httpVersion"> & { httpVersion?: V } : T;

/** Options of {@link createBerthClient} for gRPC over HTTP/2 (h2c for `http://` URLs). */
export type BerthGrpcClientOptions = { transport: "grpc" } & GrpcTransportOptions;

/** Options of {@link createBerthClient} for gRPC-web, over HTTP/1.1 unless `httpVersion` says "2". */
export type BerthGrpcWebClientOptions = { transport: "grpc-web" } & OptionalHttpVersion<GrpcWebTransportOptions>;

/**
 * Options of {@link createBerthClient}: `baseUrl` (for example `http://127.0.0.1:50051`), the
 * `transport`, and any option of connect-node's `createGrpcTransport` / `createGrpcWebTransport`
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
 * ```
 */
export function createBerthClient(options: BerthClientOptions): BerthClient {
  switch (options.transport) {
    case "grpc": {
      const { transport: _, ...rest } = options;
      return createBerthClientFromTransport(createGrpcTransport(rest), { canStreamRequests: true });
    }
    case "grpc-web": {
      const { transport: _, httpVersion, ...rest } = options;
      return createBerthClientFromTransport(
        createGrpcWebTransport({ ...rest, httpVersion: httpVersion ?? "1.1" } as GrpcWebTransportOptions),
      );
    }
    default:
      throw new Error(`unknown berth transport ${JSON.stringify((options as { transport: unknown }).transport)}: use "grpc" or "grpc-web"`);
  }
}
